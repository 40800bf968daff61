//! GPU kernels against the CPU scalar references, natively (Mesa lavapipe in CI): every kernel,
//! every GPU weight type, shapes that are not multiples of the workgroup size, each run with the
//! optional features (when the adapter has them) and with the baseline forced, plus weight
//! splitting under an artificially small binding limit.
//!
//! No adapter is a failure, unless `SLM_SKIP_GPU_TESTS=1`.

use engine::backend::cpu::ops as cpu;
use engine::backend::gpu::{
    block_on, ops::RopeArgs, Gpu, GpuOptions, GpuSampling, GpuWeight, KvType, GPU_WEIGHT_TYPES,
};
use engine::model::RopeLayout;
use engine::quant::{self, GgmlDType};

/// matmul: |gpu - ref| ≤ MATMUL_RTOL · Σ|w·x| + ABS_TOL.
const MATMUL_RTOL: f32 = 1e-5;
/// Absolute floor for every comparison.
const ABS_TOL: f32 = 1e-5;
/// Embedding lookup: dequantization is exact in f32 up to this relative error.
const GET_ROWS_RTOL: f32 = 1e-6;
/// Element-wise ops, norms: relative tolerance.
const ELT_RTOL: f32 = 1e-5;
/// RoPE: GPU pow/sin/cos vs Rust's, at positions up to ~100.
const ROPE_TOL: f32 = 2e-4;
/// Attention outputs (softmax-weighted means of values of size ~1).
const ATTN_TOL: f32 = 1e-4;
/// One rounding to f16 (10 mantissa bits): relative error ≤ 2^-11, doubled for a value that
/// sits within ROPE_TOL of a rounding boundary.
const F16_RTOL: f32 = 1.0 / 1024.0;

fn skip() -> bool {
    std::env::var("SLM_SKIP_GPU_TESTS").is_ok_and(|v| v == "1")
}

/// The device with its optional features, then with the baseline forced; the matmul kernels
/// with the device's own threads-per-row choice (1 on CPU adapters), 16 and 4. Panics when there
/// is no adapter (unless SLM_SKIP_GPU_TESTS=1: then no devices and the test checks nothing).
fn gpus() -> Vec<(&'static str, Gpu)> {
    if skip() {
        return Vec::new();
    }
    let full = Gpu::new(&GpuOptions::default())
        .unwrap_or_else(|e| panic!("no GPU ({e}); set SLM_SKIP_GPU_TESTS=1 to skip GPU tests"));
    let base = Gpu::new(&GpuOptions {
        matmul_threads_per_row: Some(16),
        attn_decode_chunk: Some(64),
        ..GpuOptions::baseline()
    })
    .expect("baseline device");
    assert!(!base.info().subgroups && !base.info().f16);
    assert_eq!(base.pipes.kv_type(), KvType::F32);
    let tpr4 = Gpu::new(&GpuOptions {
        matmul_threads_per_row: Some(4),
        attn_decode_chunk: Some(33),
        ..GpuOptions::default()
    })
    .expect("device");
    eprintln!("GPU: {:?}", full.info());
    vec![
        ("features", full),
        ("baseline, 16 per row, decode chunk 64", base),
        ("features, 4 per row, decode chunk 33", tpr4),
    ]
}

/// xorshift64*: deterministic test data without a dependency.
struct Rng(u64);

impl Rng {
    fn next_u32(&mut self) -> u32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) as u32
    }
    /// Uniform in [-1, 1).
    fn f(&mut self) -> f32 {
        (self.next_u32() >> 8) as f32 / (1u32 << 23) as f32 - 1.0
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u32() as u8).collect()
    }
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.f()).collect()
    }
}

fn f16b(v: f32) -> [u8; 2] {
    half::f16::from_f32(v).to_le_bytes()
}

/// Random blocks of `dtype` with random quants and well-scaled f16 scale fields.
fn random_row(dtype: GgmlDType, cols: usize, rng: &mut Rng) -> Vec<u8> {
    let mut out = Vec::new();
    let nb = cols / dtype.block_size();
    let scale = |rng: &mut Rng| f16b(0.01 + 0.05 * rng.f().abs());
    match dtype {
        GgmlDType::F32 => {
            for _ in 0..cols {
                out.extend(rng.f().to_le_bytes());
            }
        }
        GgmlDType::F16 => {
            for _ in 0..cols {
                out.extend(f16b(rng.f()));
            }
        }
        GgmlDType::BF16 => {
            for _ in 0..cols {
                out.extend(half::bf16::from_f32(rng.f()).to_le_bytes());
            }
        }
        GgmlDType::Q4_0 | GgmlDType::Q8_0 => {
            for _ in 0..nb {
                out.extend(scale(rng));
                out.extend(rng.bytes(dtype.type_size() - 2));
            }
        }
        GgmlDType::Q4_1 => {
            for _ in 0..nb {
                out.extend(scale(rng));
                out.extend(f16b(0.1 * rng.f()));
                out.extend(rng.bytes(16));
            }
        }
        GgmlDType::Q5_0 => {
            for _ in 0..nb {
                out.extend(scale(rng));
                out.extend(rng.bytes(20));
            }
        }
        GgmlDType::Q5_1 => {
            for _ in 0..nb {
                out.extend(scale(rng));
                out.extend(f16b(0.1 * rng.f()));
                out.extend(rng.bytes(4 + 16));
            }
        }
        GgmlDType::Q2K => {
            for _ in 0..nb {
                out.extend(rng.bytes(16 + 64));
                out.extend(scale(rng));
                out.extend(f16b(0.01 * rng.f().abs()));
            }
        }
        GgmlDType::Q3K => {
            for _ in 0..nb {
                out.extend(rng.bytes(32 + 64 + 12));
                out.extend(f16b(0.002 + 0.005 * rng.f().abs()));
            }
        }
        GgmlDType::Q4K | GgmlDType::Q5K => {
            for _ in 0..nb {
                out.extend(scale(rng));
                out.extend(f16b(0.01 * rng.f().abs()));
                out.extend(rng.bytes(dtype.type_size() - 4));
            }
        }
        GgmlDType::Q6K => {
            for _ in 0..nb {
                out.extend(rng.bytes(128 + 64 + 16));
                out.extend(f16b(0.002 + 0.005 * rng.f().abs()));
            }
        }
        other => panic!("no generator for {other}"),
    }
    assert_eq!(out.len(), dtype.row_bytes(cols).unwrap());
    out
}

fn random_matrix(dtype: GgmlDType, rows: usize, cols: usize, rng: &mut Rng) -> Vec<u8> {
    (0..rows)
        .flat_map(|_| random_row(dtype, cols, rng))
        .collect()
}

/// Columns for a dtype: a few blocks, and for the float types a width that is not a multiple
/// of 16 (the kernel's piece size).
fn cols_for(dtype: GgmlDType) -> usize {
    match dtype.block_size() {
        1 => 100,
        32 => 96,
        _ => 512,
    }
}

fn dequant(dtype: GgmlDType, bytes: &[u8], rows: usize, cols: usize) -> Vec<f32> {
    let rb = dtype.row_bytes(cols).unwrap();
    let mut out = vec![0.0; rows * cols];
    for r in 0..rows {
        quant::dequantize_row(
            dtype,
            &bytes[r * rb..(r + 1) * rb],
            &mut out[r * cols..(r + 1) * cols],
        )
        .expect("scalar reference dequantize_row");
    }
    out
}

fn check_matmul(
    gpu: &mut Gpu,
    dtype: GgmlDType,
    rows: usize,
    cols: usize,
    n_tok: usize,
    seed: u64,
    bias: bool,
) {
    let mut rng = Rng(seed);
    let bytes = random_matrix(dtype, rows, cols, &mut rng);
    let x = rng.vec(n_tok * cols);
    let b = bias.then(|| rng.vec(rows));
    let w = GpuWeight::upload(&gpu.ctx, "w", dtype, rows, cols, &bytes).unwrap();
    let got = block_on(gpu.matmul(&w, &x, n_tok, b.as_deref())).unwrap();
    let wf = dequant(dtype, &bytes, rows, cols);
    for t in 0..n_tok {
        for r in 0..rows {
            let xr = &x[t * cols..(t + 1) * cols];
            let wr = &wf[r * cols..(r + 1) * cols];
            let mut want: f64 = wr.iter().zip(xr).map(|(a, b)| *a as f64 * *b as f64).sum();
            let mag: f32 = wr.iter().zip(xr).map(|(a, b)| (a * b).abs()).sum();
            if let Some(b) = &b {
                want += b[r] as f64;
            }
            let g = got[t * rows + r];
            let tol = MATMUL_RTOL * mag + ABS_TOL;
            assert!(
                (g - want as f32).abs() <= tol,
                "{dtype} {rows}x{cols} n_tok {n_tok}: y[{t},{r}] = {g}, want {want} (tol {tol})"
            );
        }
    }
}

#[test]
fn matvec_and_matmul_every_dtype() {
    for (mode, mut gpu) in gpus() {
        for (i, &dtype) in GPU_WEIGHT_TYPES.iter().enumerate() {
            let cols = cols_for(dtype);
            eprintln!("{mode}: {dtype}");
            check_matmul(&mut gpu, dtype, 67, cols, 1, 1 + i as u64, false);
            check_matmul(&mut gpu, dtype, 67, cols, 11, 100 + i as u64, i % 2 == 0);
        }
    }
}

#[test]
fn get_rows_every_dtype() {
    for (_, mut gpu) in gpus() {
        for (i, &dtype) in GPU_WEIGHT_TYPES.iter().enumerate() {
            let (rows, cols) = (37, cols_for(dtype));
            let mut rng = Rng(7 + i as u64);
            let bytes = random_matrix(dtype, rows, cols, &mut rng);
            let table = GpuWeight::upload(&gpu.ctx, "embd", dtype, rows, cols, &bytes).unwrap();
            let tokens = [3u32, 0, 36, 3, 17];
            let got = block_on(gpu.get_rows(&table, &tokens)).unwrap();
            let wf = dequant(dtype, &bytes, rows, cols);
            for (t, &tok) in tokens.iter().enumerate() {
                for c in 0..cols {
                    let (g, e) = (got[t * cols + c], wf[tok as usize * cols + c]);
                    assert!(
                        (g - e).abs() <= GET_ROWS_RTOL * e.abs() + ABS_TOL,
                        "{dtype}: row {tok} col {c}: {g} vs {e}"
                    );
                }
            }
            assert!(block_on(gpu.get_rows(&table, &[37])).is_err());
        }
    }
}

#[test]
fn weights_split_across_buffers_under_a_small_binding_limit() {
    if skip() {
        return;
    }
    let opts = GpuOptions {
        max_binding_cap: Some(4096),
        ..GpuOptions::default()
    };
    let mut gpu = Gpu::new(&opts).expect("GPU");
    assert_eq!(gpu.info().max_storage_binding, 4096);
    // Q3_K: 110-byte blocks, so every other block starts 2 bytes into a u32 word.
    for (i, dtype) in [
        GgmlDType::Q8_0,
        GgmlDType::Q4K,
        GgmlDType::Q3K,
        GgmlDType::F16,
    ]
    .into_iter()
    .enumerate()
    {
        let cols = cols_for(dtype);
        let rows = 150;
        let mut rng = Rng(99 + i as u64);
        let bytes = random_matrix(dtype, rows, cols, &mut rng);
        let w = GpuWeight::upload(&gpu.ctx, "w", dtype, rows, cols, &bytes).unwrap();
        assert!(w.chunks.len() > 2, "{dtype}: {} chunks", w.chunks.len());
        assert!(w.chunks.iter().all(|c| c.buffer.size() <= 4096));
        check_matmul(&mut gpu, dtype, rows, cols, 1, 5, true);
        check_matmul(&mut gpu, dtype, rows, cols, 9, 6, false);
        let tokens = [0u32, 149, 75, 14, 15];
        let got = block_on(gpu.get_rows(&w, &tokens)).unwrap();
        let wf = dequant(dtype, &bytes, rows, cols);
        for (t, &tok) in tokens.iter().enumerate() {
            assert_eq!(
                &got[t * cols..(t + 1) * cols],
                &wf[tok as usize * cols..(tok as usize + 1) * cols]
            );
        }
    }
}

fn assert_close(what: &str, got: &[f32], want: &[f32], rtol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, e)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - e).abs() <= rtol * e.abs() + ABS_TOL.max(rtol),
            "{what}[{i}]: {g} vs {e}"
        );
    }
}

#[test]
fn rms_norm_matches_cpu() {
    for (mode, mut gpu) in gpus() {
        let mut rng = Rng(3);
        let (rows, n) = (5, 203);
        let x: Vec<f32> = rng.vec(rows * n).iter().map(|v| v * 3.0).collect();
        let w = rng.vec(n);
        let got = block_on(gpu.rms_norm(&x, &w, 1e-5)).unwrap();
        let mut want = vec![0.0; rows * n];
        for r in 0..rows {
            cpu::rms_norm(
                &mut want[r * n..(r + 1) * n],
                &x[r * n..(r + 1) * n],
                &w,
                1e-5,
            );
        }
        assert_close(&format!("rms_norm {mode}"), &got, &want, ELT_RTOL);
    }
}

/// What an f16 KV cache holds for `v`: f16-rounded on devices with `shader-f16`.
fn as_cached(gpu: &engine::backend::gpu::Gpu, v: &[f32]) -> Vec<f32> {
    if gpu.pipes.kv_type() == KvType::F16 {
        v.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect()
    } else {
        v.to_vec()
    }
}

#[test]
fn rope_fused_with_the_kv_store_both_layouts_with_and_without_freq_factors() {
    for (mode, mut gpu) in gpus() {
        let mut rng = Rng(4);
        let (n_tok, n_head, n_head_kv, head_dim) = (3, 6, 2, 24);
        let kv_f16 = gpu.pipes.kv_type() == KvType::F16;
        for (n_rot, layout, ff) in [
            (24, RopeLayout::Adjacent, false),
            (24, RopeLayout::Neox, false),
            (16, RopeLayout::Adjacent, true),
            (16, RopeLayout::Neox, true),
        ] {
            let q = rng.vec(n_tok * n_head * head_dim);
            let k = rng.vec(n_tok * n_head_kv * head_dim);
            let v = rng.vec(n_tok * n_head_kv * head_dim);
            let freq: Vec<f32> = (0..n_rot / 2).map(|i| 1.0 + i as f32 * 0.5).collect();
            let freq = ff.then_some(freq);
            let pos0 = 97;
            let (got_q, got_k, got_v) = block_on(gpu.rope_kv(
                &q,
                &k,
                &v,
                n_tok,
                n_head,
                n_head_kv,
                head_dim,
                n_rot,
                pos0,
                10000.0,
                0.5,
                layout,
                freq.as_deref(),
            ))
            .unwrap();
            let (mut want_q, mut want_k) = (q.clone(), k.clone());
            for (x, n_heads) in [(&mut want_q, n_head), (&mut want_k, n_head_kv)] {
                let w = n_heads * head_dim;
                for t in 0..n_tok {
                    cpu::rope(
                        &mut x[t * w..(t + 1) * w],
                        n_heads,
                        head_dim,
                        n_rot,
                        pos0 + t,
                        10000.0,
                        0.5,
                        layout,
                        freq.as_deref(),
                    );
                }
            }
            let what = format!("rope {mode} {layout:?} n_rot {n_rot} ff {ff}");
            // Cached values may also be rounded to f16 (one rounding, from a value within
            // ROPE_TOL of the reference).
            let cache_rtol = if kv_f16 { F16_RTOL } else { 0.0 };
            for (name, got, want, rtol) in [
                ("q", &got_q, &want_q, 0.0),
                ("k cache", &got_k, &want_k, cache_rtol),
            ] {
                assert_eq!(got.len(), want.len());
                for (i, (g, e)) in got.iter().zip(want.iter()).enumerate() {
                    assert!(
                        (g - e).abs() <= ROPE_TOL + rtol * e.abs(),
                        "{what} {name}: [{i}] {g} vs {e}"
                    );
                }
            }
            assert_eq!(got_v, as_cached(&gpu, &v), "{what}: v cache is a copy");
        }
    }
}

#[test]
fn attention_causal_gqa_prefill_and_split_decode() {
    for (mode, mut gpu) in gpus() {
        let mut rng = Rng(5);
        let (n_head, n_head_kv, head_dim) = (6, 2, 40);
        let kv_dim = n_head_kv * head_dim;
        let n_ctx = 300;
        let chunk = gpu.info().attn_decode_chunk as usize;
        // The reference sees the cache as the device stores it.
        let k = as_cached(&gpu, &rng.vec(n_ctx * kv_dim));
        let v = as_cached(&gpu, &rng.vec(n_ctx * kv_dim));
        // (pos0, n_tok): a prefill from 0, a prefill continuing a cache, then single-token
        // decodes: one position, one chunk exactly, one past a chunk, a partial last chunk.
        let mut cases = vec![(0, 13), (70, 9), (0, 1), (chunk - 1, 1), (chunk, 1)];
        cases.extend([(136, 1), (n_ctx - 1, 1)]);
        for (pos0, n_tok) in cases {
            let q: Vec<f32> = rng
                .vec(n_tok * n_head * head_dim)
                .iter()
                .map(|x| x * 2.0)
                .collect();
            let got = block_on(gpu.attention(&q, &k, &v, n_tok, pos0, n_head, n_head_kv, head_dim))
                .unwrap();
            let qd = n_head * head_dim;
            let mut want = vec![0.0; n_tok * qd];
            let mut scores = vec![0.0; n_ctx * n_head / n_head_kv];
            for t in 0..n_tok {
                cpu::attention(
                    &mut want[t * qd..(t + 1) * qd],
                    &q[t * qd..(t + 1) * qd],
                    &k,
                    &v,
                    pos0 + t + 1,
                    n_head,
                    n_head_kv,
                    head_dim,
                    &mut scores,
                );
            }
            for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g - e).abs() <= ATTN_TOL,
                    "attention {mode} (chunk {chunk}) pos0 {pos0} n_tok {n_tok}: [{i}] {g} vs {e}"
                );
            }
        }
    }
}

#[test]
fn swiglu_and_add_match_cpu() {
    for (mode, mut gpu) in gpus() {
        let mut rng = Rng(6);
        let n = 1000;
        let g: Vec<f32> = rng.vec(n).iter().map(|v| v * 6.0).collect();
        let u = rng.vec(n);
        let got = block_on(gpu.swiglu(&g, &u)).unwrap();
        let mut want = g.clone();
        cpu::swiglu(&mut want, &u);
        assert_close(&format!("swiglu {mode}"), &got, &want, ELT_RTOL);
        let got = block_on(gpu.add(&g, &u)).unwrap();
        let want: Vec<f32> = g.iter().zip(&u).map(|(a, b)| a + b).collect();
        assert_close(&format!("add {mode}"), &got, &want, ELT_RTOL);
    }
}

/// Reference of the GPU sampler's documented semantics: top-k, then top-p on temperature-1
/// probabilities, then a draw over temperature-scaled weights walked in index order.
fn sample_ref(logits: &[f32], s: &GpuSampling) -> u32 {
    if s.temperature <= 0.0 {
        return cpu::argmax(logits);
    }
    let mx = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    let k = if s.top_k == 0 {
        logits.len()
    } else {
        (s.top_k as usize).min(logits.len())
    };
    let mut keep = vec![false; logits.len()];
    let z: f64 = order[..k]
        .iter()
        .map(|&i| ((logits[i] - mx) as f64).exp())
        .sum();
    let mut acc = 0.0;
    for &i in &order[..k] {
        keep[i] = true;
        acc += ((logits[i] - mx) as f64).exp();
        if acc >= s.top_p as f64 * z {
            break;
        }
    }
    let w: Vec<f64> = (0..logits.len())
        .map(|i| {
            if keep[i] {
                (((logits[i] - mx) / s.temperature) as f64).exp()
            } else {
                0.0
            }
        })
        .collect();
    let total: f64 = w.iter().sum();
    let target = s.random as f64 * total;
    let mut acc = 0.0;
    for (i, wi) in w.iter().enumerate() {
        acc += wi;
        if *wi > 0.0 && target < acc {
            return i as u32;
        }
    }
    cpu::argmax(logits)
}

#[test]
fn sampling_on_the_gpu_matches_the_reference() {
    for (mode, mut gpu) in gpus() {
        let mut rng = Rng(8);
        let n_vocab = 1003;
        // Distinct logits so the top-k/top-p sets are unambiguous.
        let mut logits: Vec<f32> = (0..n_vocab).map(|i| i as f32 * 0.01).collect();
        for i in (1..n_vocab).rev() {
            let j = rng.next_u32() as usize % (i + 1);
            logits.swap(i, j);
        }
        // Argmax, with a tie resolved to the lowest index.
        let mut tied = logits.clone();
        tied[5] = 100.0;
        tied[900] = 100.0;
        assert_eq!(
            block_on(gpu.sample(&tied, &GpuSampling::greedy())).unwrap(),
            5,
            "{mode}"
        );
        assert_eq!(
            block_on(gpu.sample(&logits, &GpuSampling::greedy())).unwrap(),
            cpu::argmax(&logits),
            "{mode}"
        );
        // Top-k off or above 64: the one-workgroup kernel (index-order draw, no min-p).
        for (temperature, top_k, top_p) in [(1.0, 0, 1.0), (1.0, 0, 0.9), (0.9, 100, 0.8)] {
            for _ in 0..8 {
                let s = GpuSampling {
                    temperature,
                    top_k,
                    top_p,
                    min_p: 0.0,
                    random: (rng.next_u32() >> 8) as f32 / (1u32 << 24) as f32,
                };
                assert!(!s.parallel());
                let got = block_on(gpu.sample(&logits, &s)).unwrap();
                assert_eq!(got, sample_ref(&logits, &s), "{mode} {s:?}");
            }
        }
        let bad = GpuSampling {
            min_p: 1.5,
            ..GpuSampling::greedy()
        };
        assert!(block_on(gpu.sample(&logits, &bad)).is_err());
        let bad = GpuSampling {
            top_p: 0.0,
            ..GpuSampling::greedy()
        };
        assert!(block_on(gpu.sample(&logits, &bad)).is_err());
    }
}

/// The many-workgroup sampler (sample_topk.wgsl: greedy and top-k ≤ 64, with top-p, min-p
/// and temperature) picks what the host sampler (`Sampler::sample_with`) picks for the same
/// uniform draw: vocabularies of 1 to 3 gather workgroups and Gemma's 262,144 (128), logits of
/// a real model's spread, llama.cpp's default chain and edge settings, 40 draws each (Gemma's
/// size: the default chain, 8 draws; lavapipe is slow). A draw
/// within 1e-4 of a boundary of the host's cumulative distribution may fall either side (the
/// GPU's exp/log round differently); every other draw must agree. Greedy: ties to the lowest
/// index across workgroups.
#[test]
fn parallel_sampler_matches_the_host_sampler() {
    use engine::sampler::{Sampler, SamplerParams};
    for (mode, mut gpu) in gpus() {
        let mut rng = Rng(21);
        for n_vocab in [50, 2048, 4097, 262_144] {
            let logits: Vec<f32> = (0..n_vocab)
                .map(|_| 4.0 * (rng.next_u32() as f32 / u32::MAX as f32 - 0.5) * 3.0)
                .collect();
            // Greedy, with the maximum tied in the last and the first workgroup.
            let mut tied = logits.clone();
            tied[n_vocab - 1] = 50.0;
            tied[n_vocab / 3] = 50.0;
            let g = block_on(gpu.sample(&tied, &GpuSampling::greedy())).unwrap();
            assert_eq!(g as usize, n_vocab / 3, "{mode} n_vocab {n_vocab}");
            let g = block_on(gpu.sample(&logits, &GpuSampling::greedy())).unwrap();
            assert_eq!(g, cpu::argmax(&logits), "{mode} n_vocab {n_vocab}");
            for (temperature, top_k, top_p, min_p) in [
                (0.8, 40, 0.95, 0.05),
                (1.0, 64, 1.0, 0.0),
                (1.5, 1, 1.0, 0.0),
                (0.5, 10, 0.5, 0.0),
                (1.2, 50, 1.0, 0.2),
            ]
            .into_iter()
            .take(if n_vocab > 100_000 { 1 } else { 5 })
            {
                let params = SamplerParams {
                    temperature,
                    top_k,
                    top_p,
                    min_p,
                    ..SamplerParams::default()
                };
                let mut host = Sampler::new(params.clone()).unwrap();
                let mut mismatches = 0;
                let draws = if n_vocab > 100_000 { 8 } else { 40 };
                for d in 0..draws {
                    let r = (d as f32 + 0.5) / draws as f32;
                    let s = GpuSampling {
                        temperature,
                        top_k: top_k as u32,
                        top_p,
                        min_p,
                        random: r,
                    };
                    assert!(s.parallel());
                    let got = block_on(gpu.sample(&logits, &s)).unwrap();
                    let want = host.sample_with(&logits, &[], r);
                    if got != want {
                        let lo = host.sample_with(&logits, &[], (r - 1e-4).max(0.0));
                        let hi = host.sample_with(&logits, &[], (r + 1e-4).min(0.99999));
                        assert!(
                            lo != hi && (got == lo || got == hi),
                            "{mode} n_vocab {n_vocab} {params:?} r {r}: gpu {got}, host {want}"
                        );
                        mismatches += 1;
                    }
                }
                assert!(
                    mismatches <= 2,
                    "{mode} n_vocab {n_vocab}: {mismatches} near-ties"
                );
            }
        }
    }
}

#[test]
fn probe_reports_an_adapter_and_passes_the_self_test() {
    if skip() {
        return;
    }
    let info = engine::backend::gpu::probe().expect("probe");
    assert!(!info.name.is_empty());
    assert!(info.max_storage_binding >= 128 << 20);
}

/// The per-layer attention values the architectures need: a sliding window (Gemma) and a score
/// soft cap (Gemma 2), on the prefill kernel and the split decode kernel (window shorter and
/// longer than a decode chunk, so the visible range starts inside a chunk and spans several).
#[test]
fn attention_sliding_window_and_softcap_prefill_and_decode() {
    for (mode, mut gpu) in gpus() {
        let mut rng = Rng(15);
        let (n_head, n_head_kv, head_dim) = (4, 2, 32);
        let kv_dim = n_head_kv * head_dim;
        let chunk = gpu.info().attn_decode_chunk as usize;
        let n_ctx = chunk + 40;
        let k = as_cached(&gpu, &rng.vec(n_ctx * kv_dim));
        let v = as_cached(&gpu, &rng.vec(n_ctx * kv_dim));
        for (window, softcap) in [(7, 0.0), (0, 2.5), (chunk + 5, 1.5), (40, 0.0)] {
            for (pos0, n_tok) in [(0, 11), (50, 9), (3, 1), (chunk + 20, 1), (n_ctx - 1, 1)] {
                let q: Vec<f32> = rng
                    .vec(n_tok * n_head * head_dim)
                    .iter()
                    .map(|x| x * 3.0)
                    .collect();
                let got = block_on(gpu.attention_ext(
                    &q, &k, &v, n_tok, pos0, n_head, n_head_kv, head_dim, window, softcap,
                ))
                .unwrap();
                let qd = n_head * head_dim;
                let mut want = vec![0.0; n_tok * qd];
                let mut scores = vec![0.0; n_ctx * n_head / n_head_kv];
                for t in 0..n_tok {
                    let end = pos0 + t + 1;
                    let start = if window > 0 {
                        end.saturating_sub(window)
                    } else {
                        0
                    };
                    cpu::attention_range(
                        &mut want[t * qd..(t + 1) * qd],
                        &q[t * qd..(t + 1) * qd],
                        &k,
                        &v,
                        start..end,
                        n_head,
                        n_head_kv,
                        head_dim,
                        1.0 / (head_dim as f32).sqrt(),
                        softcap,
                        &mut scores,
                    );
                }
                let what = format!(
                    "attention {mode} window {window} softcap {softcap} pos0 {pos0} n {n_tok}"
                );
                for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                    assert!((g - e).abs() <= ATTN_TOL, "{what}[{i}]: {g} vs {e}");
                }
            }
        }
    }
}

/// RoPE with cos/sin scaled (Phi-3's attention factor) and a NoPE layer (SmolLM3): Q copied,
/// K and V only stored.
#[test]
fn rope_scaled_and_nope() {
    for (mode, mut gpu) in gpus() {
        let mut rng = Rng(16);
        let (n_tok, n_head, n_head_kv, head_dim, n_rot) = (3, 4, 2, 16, 16);
        let kv_f16 = gpu.pipes.kv_type() == KvType::F16;
        let cache_rtol = if kv_f16 { F16_RTOL } else { 0.0 };
        let q = rng.vec(n_tok * n_head * head_dim);
        let k = rng.vec(n_tok * n_head_kv * head_dim);
        let v = rng.vec(n_tok * n_head_kv * head_dim);
        let freq: Vec<f32> = (0..n_rot / 2).map(|i| 1.0 + i as f32 * 0.25).collect();
        for (rotate, mscale) in [(true, 1.2247), (false, 1.0)] {
            let pos0 = 41;
            let (got_q, got_k, got_v) = block_on(gpu.rope_kv_ext(
                &q,
                &k,
                &v,
                n_tok,
                n_head,
                n_head_kv,
                head_dim,
                n_rot,
                pos0,
                10000.0,
                1.0,
                RopeLayout::Neox,
                Some(&freq),
                mscale,
                rotate,
            ))
            .unwrap();
            let (mut want_q, mut want_k) = (q.clone(), k.clone());
            if rotate {
                for (x, n_heads) in [(&mut want_q, n_head), (&mut want_k, n_head_kv)] {
                    let w = n_heads * head_dim;
                    for t in 0..n_tok {
                        cpu::rope_scaled(
                            &mut x[t * w..(t + 1) * w],
                            n_heads,
                            head_dim,
                            n_rot,
                            pos0 + t,
                            10000.0,
                            1.0,
                            mscale,
                            RopeLayout::Neox,
                            Some(&freq),
                        );
                    }
                }
            }
            let what = format!("rope {mode} rotate {rotate} mscale {mscale}");
            for (name, got, want, rtol) in [
                ("q", &got_q, &want_q, 0.0),
                ("k cache", &got_k, &want_k, cache_rtol),
                ("v cache", &got_v, &v, cache_rtol),
            ] {
                for (i, (g, e)) in got.iter().zip(want.iter()).enumerate() {
                    assert!(
                        (g - e).abs() <= ROPE_TOL + rtol * e.abs(),
                        "{what} {name}[{i}]: {g} vs {e}"
                    );
                }
            }
        }
    }
}

/// GeGLU (Gemma's feed-forward): gelu_tanh(gate) · up, including large |gate| where tanh
/// saturates.
#[test]
fn geglu_matches_cpu() {
    for (mode, mut gpu) in gpus() {
        let mut rng = Rng(17);
        let n = 1001;
        let mut g: Vec<f32> = rng.vec(n).iter().map(|v| v * 6.0).collect();
        g[0] = 40.0;
        g[1] = -40.0;
        let u = rng.vec(n);
        let got = block_on(gpu.geglu(&g, &u)).unwrap();
        let mut want = g.clone();
        cpu::geglu(&mut want, &u);
        assert_close(&format!("geglu {mode}"), &got, &want, ELT_RTOL);
    }
}

/// The RMSNorm folded into the matrix product (flag MAT_NORM): `W · (RMSNorm(x) ⊙ g)` against
/// the CPU reference norm then product, decode and prefill tiles (11 tokens: a partial tile),
/// every GPU weight type, every device setup.
#[test]
fn matmul_with_folded_rms_norm() {
    for (mode, mut gpu) in gpus() {
        for (i, &dtype) in GPU_WEIGHT_TYPES.iter().enumerate() {
            let (rows, cols) = (67, cols_for(dtype));
            for n_tok in [1, 11] {
                let mut rng = Rng(900 + i as u64 + n_tok as u64);
                let bytes = random_matrix(dtype, rows, cols, &mut rng);
                let x: Vec<f32> = rng.vec(n_tok * cols).iter().map(|v| v * 3.0).collect();
                let g: Vec<f32> = rng.vec(cols).iter().map(|v| 1.0 + 0.5 * v).collect();
                let eps = 1e-5;
                let w = GpuWeight::upload(&gpu.ctx, "w", dtype, rows, cols, &bytes).unwrap();
                let got =
                    block_on(gpu.matmul_normed(&w, &x, n_tok, None, Some((&g, eps)))).unwrap();
                let wf = dequant(dtype, &bytes, rows, cols);
                let mut xn = vec![0.0; x.len()];
                cpu::rms_norm_rows(&mut xn, &x, &g, n_tok, eps);
                for t in 0..n_tok {
                    let xr = &xn[t * cols..(t + 1) * cols];
                    for r in 0..rows {
                        let wr = &wf[r * cols..(r + 1) * cols];
                        let want: f64 = wr.iter().zip(xr).map(|(a, b)| *a as f64 * *b as f64).sum();
                        let mag: f32 = wr.iter().zip(xr).map(|(a, b)| (a * b).abs()).sum();
                        let gv = got[t * rows + r];
                        let tol = MATMUL_RTOL * mag + ABS_TOL;
                        assert!(
                            (gv - want as f32).abs() <= tol,
                            "{mode} {dtype} n_tok {n_tok}: y[{t},{r}] = {gv}, want {want} (tol {tol})"
                        );
                    }
                }
            }
        }
    }
}

/// Pair kernels: the product's own error (as [`MATMUL_RTOL`]) carried through the epilogue.
/// GLU: |d(act(g)·u)| ≤ max|act'|·|u|·e_g + |act(g)|·e_u with max|act'| < GLU_SLOPE for SiLU
/// and GELU-tanh.
const GLU_SLOPE: f32 = 1.2;

/// Rows of W·x' in f64 (x' = RMSNorm(x) ⊙ g when `norm`), and Σ|w·x'| per row: (n_tok, rows).
fn products(
    wf: &[f32],
    rows: usize,
    cols: usize,
    x: &[f32],
    n_tok: usize,
    norm: Option<(&[f32], f32)>,
) -> (Vec<f32>, Vec<f32>) {
    let mut xn = x.to_vec();
    if let Some((g, eps)) = norm {
        cpu::rms_norm_rows(&mut xn, x, g, n_tok, eps);
    }
    let (mut y, mut mag) = (vec![0.0; n_tok * rows], vec![0.0; n_tok * rows]);
    for t in 0..n_tok {
        let xr = &xn[t * cols..(t + 1) * cols];
        for r in 0..rows {
            let wr = &wf[r * cols..(r + 1) * cols];
            let s: f64 = wr.iter().zip(xr).map(|(a, b)| *a as f64 * *b as f64).sum();
            y[t * rows + r] = s as f32;
            mag[t * rows + r] = wr.iter().zip(xr).map(|(a, b)| (a * b).abs()).sum();
        }
    }
    (y, mag)
}

/// Columns for a pair test of weight types `ds`: not a multiple of 64 (the workgroup), a
/// multiple of every block (100 for the float types, 96 for 32-blocks, 512 for K-quants).
fn pair_cols(ds: &[GgmlDType]) -> usize {
    match ds.iter().map(|d| d.block_size()).max() {
        Some(256) => 512,
        Some(1) => 100,
        _ => 96,
    }
}

/// Every other case of the pair tests mixes weight types (as llama.cpp's Q4_K_M files do: a
/// Q6_K attn_v beside Q4_K attn_q and attn_k): the type `k` places after `d` in the list.
fn other_type(i: usize, k: usize) -> GgmlDType {
    GPU_WEIGHT_TYPES[(i + k) % GPU_WEIGHT_TYPES.len()]
}

/// Gate and up products with the GLU in their epilogue (matmul_pair.wgsl, entry point `glu`,
/// specialised to the gate's and the up's types) against the scalar references (dequantize,
/// f64 products, `cpu::swiglu` / `cpu::geglu`): every GPU weight type as the gate's, the up of
/// the same type or (every other type) of another, 67 rows, decode and an 11-token
/// prefill (a partial tile), with and without the folded RMSNorm, both activations, every device
/// setup (subgroups and f16 on and off, 1 / 16 / 4 invocations per row).
#[test]
fn glu_fused_into_the_gate_up_product() {
    for (mode, mut gpu) in gpus() {
        for (gi, d) in GPU_WEIGHT_TYPES.into_iter().enumerate() {
            let (dg, du) = (d, if gi % 2 == 1 { other_type(gi, 4) } else { d });
            let cols = pair_cols(&[dg, du]);
            let rows = 67;
            // Two of the four (n_tok, norm, act) combinations per type, all four over two types.
            let combos = [
                (1, true, 0u32),
                (11, false, 1),
                (1, false, 1),
                (11, true, 0),
            ];
            for &(n_tok, normed, act) in &combos[2 * (gi % 2)..2 * (gi % 2) + 2] {
                let mut rng = Rng(1300 + 10 * gi as u64 + n_tok as u64 + act as u64);
                let gb = random_matrix(dg, rows, cols, &mut rng);
                let ub = random_matrix(du, rows, cols, &mut rng);
                let x: Vec<f32> = rng.vec(n_tok * cols).iter().map(|v| v * 3.0).collect();
                let nw: Vec<f32> = rng.vec(cols).iter().map(|v| 1.0 + 0.5 * v).collect();
                let norm = normed.then_some((&nw[..], 1e-5f32));
                let gw = GpuWeight::upload(&gpu.ctx, "gate", dg, rows, cols, &gb).unwrap();
                let uw = GpuWeight::upload(&gpu.ctx, "up", du, rows, cols, &ub).unwrap();
                let got = block_on(gpu.glu_pair(&gw, &uw, &x, n_tok, norm, act)).unwrap();
                let (g, gm) = products(&dequant(dg, &gb, rows, cols), rows, cols, &x, n_tok, norm);
                let (u, um) = products(&dequant(du, &ub, rows, cols), rows, cols, &x, n_tok, norm);
                let mut want = g.clone();
                if act == 0 {
                    cpu::swiglu(&mut want, &u);
                } else {
                    cpu::geglu(&mut want, &u);
                }
                for i in 0..want.len() {
                    let (eg, eu) = (MATMUL_RTOL * gm[i] + ABS_TOL, MATMUL_RTOL * um[i] + ABS_TOL);
                    let a = (want[i] / u[i]).abs();
                    let tol = GLU_SLOPE * u[i].abs() * eg + a * eu + ABS_TOL;
                    assert!(
                        (got[i] - want[i]).abs() <= tol,
                        "{mode} {dg}/{du} n_tok {n_tok} norm {normed} act {act}: [{i}] {} vs {} (tol {tol})",
                        got[i],
                        want[i]
                    );
                }
            }
        }
    }
}

/// Q, K, V products with RoPE and the KV store in their epilogue (matmul_pair.wgsl, entry point
/// `qkv`, specialised to the three weights' types) against the scalar references (dequantize,
/// f64 products, biases, `cpu::rope_scaled`): every GPU weight type as Q's, with K and V of the
/// same type, V of another (the Q4_K_M pattern) or all three different, 6 query heads over 2 KV heads
/// of 24, decode at position 97 and an 11-token prefill, both pair layouts, partial rotation
/// with frequency factors, a scaled and a NoPE layer, with and without the folded norm and
/// biases (five setups, cycled over the types), every device setup.
#[test]
fn qkv_product_fused_with_rope_and_the_kv_store() {
    for (mode, mut gpu) in gpus() {
        let (n_head, n_head_kv, head_dim) = (6, 2, 24);
        let (qd, kvd) = (n_head * head_dim, n_head_kv * head_dim);
        let kv_f16 = gpu.pipes.kv_type() == KvType::F16;
        let cases = [
            // (n_tok, pos0, n_rot, layout, freq, mscale, rotate, norm, bias)
            (
                1,
                97,
                24,
                RopeLayout::Adjacent,
                false,
                1.0,
                true,
                true,
                false,
            ),
            (11, 5, 24, RopeLayout::Neox, false, 1.0, true, false, true),
            (1, 40, 16, RopeLayout::Adjacent, true, 1.0, true, true, true),
            (11, 0, 16, RopeLayout::Neox, true, 1.2, true, true, false),
            (1, 12, 24, RopeLayout::Neox, false, 1.0, false, true, true),
        ];
        for (ci, d) in GPU_WEIGHT_TYPES.into_iter().enumerate() {
            let (n_tok, pos0, n_rot, layout, ff, mscale, rotate, normed, biased) =
                cases[ci % cases.len()];
            let dt = match ci % 4 {
                1 => [d, d, other_type(ci, 9)],
                3 => [d, other_type(ci, 4), other_type(ci, 9)],
                _ => [d; 3],
            };
            let cols = pair_cols(&dt);
            let mut rng = Rng(1500 + ci as u64);
            let rows = [qd, kvd, kvd];
            let bytes: Vec<Vec<u8>> = (0..3)
                .map(|i| random_matrix(dt[i], rows[i], cols, &mut rng))
                .collect();
            let x: Vec<f32> = rng.vec(n_tok * cols).iter().map(|v| v * 3.0).collect();
            let nw: Vec<f32> = rng.vec(cols).iter().map(|v| 1.0 + 0.5 * v).collect();
            let bias = biased.then(|| rng.vec(qd + 2 * kvd));
            let freq: Vec<f32> = (0..n_rot / 2).map(|i| 1.0 + i as f32 * 0.5).collect();
            let freq = ff.then_some(&freq[..]);
            let norm = normed.then_some((&nw[..], 1e-5f32));
            let ws: Vec<GpuWeight> = (0..3)
                .map(|i| GpuWeight::upload(&gpu.ctx, "w", dt[i], rows[i], cols, &bytes[i]).unwrap())
                .collect();
            let r = RopeArgs {
                n_head,
                n_head_kv,
                head_dim,
                n_rot,
                pos0,
                base: 10000.0,
                pos_scale: 0.5,
                layout,
                freq,
                mscale,
                rotate,
            };
            let (gq, gk, gv) = block_on(gpu.qkv_rope_kv(
                &ws[0],
                &ws[1],
                &ws[2],
                &x,
                n_tok,
                norm,
                bias.as_deref(),
                None,
                &r,
            ))
            .unwrap();
            // Reference: products (+ bias), then RoPE of q and k per token.
            let mut want = Vec::new();
            let mut mags = Vec::new();
            let mut boff = 0;
            for i in 0..3 {
                let (mut y, m) = products(
                    &dequant(dt[i], &bytes[i], rows[i], cols),
                    rows[i],
                    cols,
                    &x,
                    n_tok,
                    norm,
                );
                if let Some(b) = &bias {
                    for t in 0..n_tok {
                        for j in 0..rows[i] {
                            y[t * rows[i] + j] += b[boff + j];
                        }
                    }
                }
                boff += rows[i];
                if i < 2 && rotate {
                    let heads = rows[i] / head_dim;
                    for t in 0..n_tok {
                        cpu::rope_scaled(
                            &mut y[t * rows[i]..(t + 1) * rows[i]],
                            heads,
                            head_dim,
                            n_rot,
                            pos0 + t,
                            10000.0,
                            0.5,
                            mscale,
                            layout,
                            freq,
                        );
                    }
                }
                want.push(y);
                mags.push(m);
            }
            let what = format!("{mode} case {ci} {dt:?} n_tok {n_tok} {layout:?}");
            for (name, got, i, cached) in [
                ("q", &gq, 0, false),
                ("k", &gk, 1, true),
                ("v", &gv, 2, true),
            ] {
                let rtol = if cached && kv_f16 { F16_RTOL } else { 0.0 };
                let max_mag = mags[i].iter().cloned().fold(0.0, f32::max);
                for (j, (g, e)) in got.iter().zip(&want[i]).enumerate() {
                    // A rotated value mixes two products: either's error, plus RoPE's own.
                    let tol = 2.0 * mscale * (MATMUL_RTOL * max_mag + ABS_TOL)
                        + ROPE_TOL
                        + rtol * e.abs();
                    assert!(
                        (g - e).abs() <= tol,
                        "{what} {name}[{j}]: {g} vs {e} (tol {tol})"
                    );
                }
            }
        }
    }
}

/// Q, K, V products with per-head Q/K RMSNorms, RoPE and the KV store in their epilogue
/// (matmul_pair.wgsl, entry point `qkv_norm`: Qwen3, Gemma 3) against the scalar references
/// (dequantize, f64 products, biases, `cpu::rms_norm` per head, `cpu::rope_scaled`): 4 query
/// heads over 2 KV heads of 24 and of 256 (more pairs than the workgroup's 64 invocations, a
/// workgroup's whole head memory at 8 tokens), both pair layouts, partial rotation with
/// frequency factors, a NoPE layer, decode at positions 40 / 97 and 5- and 11-token prefills
/// (a partial tile), with and without the folded norm and biases, V of another type or all
/// three different, every device setup.
#[test]
fn qkv_product_fused_with_per_head_qk_norms() {
    for (mode, mut gpu) in gpus() {
        let (n_head, n_head_kv) = (4, 2);
        let kv_f16 = gpu.pipes.kv_type() == KvType::F16;
        let cases = [
            // (n_tok, pos0, head_dim, n_rot, layout, freq, rotate, norm, bias, dtypes)
            (
                1,
                40,
                24,
                24,
                RopeLayout::Neox,
                false,
                true,
                true,
                false,
                [GgmlDType::Q5K, GgmlDType::Q5K, GgmlDType::Q6K],
            ),
            (
                5,
                3,
                24,
                16,
                RopeLayout::Adjacent,
                true,
                true,
                false,
                true,
                [GgmlDType::Q8_0; 3],
            ),
            (
                8,
                0,
                256,
                256,
                RopeLayout::Neox,
                false,
                true,
                true,
                false,
                [GgmlDType::Q5_0, GgmlDType::Q4_1, GgmlDType::F16],
            ),
            (
                1,
                9,
                24,
                24,
                RopeLayout::Neox,
                false,
                false,
                true,
                true,
                [GgmlDType::F32, GgmlDType::F32, GgmlDType::BF16],
            ),
            (
                11,
                97,
                256,
                128,
                RopeLayout::Adjacent,
                true,
                true,
                true,
                true,
                [GgmlDType::Q4K, GgmlDType::Q4K, GgmlDType::Q6K],
            ),
            (
                1,
                97,
                256,
                256,
                RopeLayout::Adjacent,
                false,
                true,
                false,
                false,
                [GgmlDType::Q4_0; 3],
            ),
        ];
        for (ci, &(n_tok, pos0, head_dim, n_rot, layout, ff, rotate, normed, biased, dt)) in
            cases.iter().enumerate()
        {
            let (qd, kvd) = (n_head * head_dim, n_head_kv * head_dim);
            let cols = pair_cols(&dt);
            let mut rng = Rng(1700 + ci as u64);
            let rows = [qd, kvd, kvd];
            let bytes: Vec<Vec<u8>> = (0..3)
                .map(|i| random_matrix(dt[i], rows[i], cols, &mut rng))
                .collect();
            let x: Vec<f32> = rng.vec(n_tok * cols).iter().map(|v| v * 3.0).collect();
            let nw: Vec<f32> = rng.vec(cols).iter().map(|v| 1.0 + 0.5 * v).collect();
            let bias = biased.then(|| rng.vec(qd + 2 * kvd));
            let qn: Vec<f32> = rng.vec(head_dim).iter().map(|v| 1.0 + v).collect();
            let kn: Vec<f32> = rng.vec(head_dim).iter().map(|v| 1.0 + v).collect();
            let freq: Vec<f32> = (0..n_rot / 2).map(|i| 1.0 + i as f32 * 0.25).collect();
            let freq = ff.then_some(&freq[..]);
            let norm = normed.then_some((&nw[..], 1e-5f32));
            let eps = 1e-6;
            let ws: Vec<GpuWeight> = (0..3)
                .map(|i| GpuWeight::upload(&gpu.ctx, "w", dt[i], rows[i], cols, &bytes[i]).unwrap())
                .collect();
            let r = RopeArgs {
                n_head,
                n_head_kv,
                head_dim,
                n_rot,
                pos0,
                base: 10000.0,
                pos_scale: 1.0,
                layout,
                freq,
                mscale: 1.0,
                rotate,
            };
            let (gq, gk, gv) = block_on(gpu.qkv_rope_kv(
                &ws[0],
                &ws[1],
                &ws[2],
                &x,
                n_tok,
                norm,
                bias.as_deref(),
                Some((&qn, &kn, eps)),
                &r,
            ))
            .unwrap();
            let what = format!("{mode} case {ci} {dt:?} n_tok {n_tok} head_dim {head_dim}");
            let mut boff = 0;
            for (i, (name, got)) in [("q", &gq), ("k", &gk), ("v", &gv)].into_iter().enumerate() {
                // Reference: product (+ bias); for q and k the head norm, then RoPE per token.
                let (mut raw, mag) = products(
                    &dequant(dt[i], &bytes[i], rows[i], cols),
                    rows[i],
                    cols,
                    &x,
                    n_tok,
                    norm,
                );
                if let Some(b) = &bias {
                    for row in raw.chunks_exact_mut(rows[i]) {
                        for (v, bj) in row.iter_mut().zip(&b[boff..]) {
                            *v += bj;
                        }
                    }
                }
                boff += rows[i];
                let e_prod = MATMUL_RTOL * mag.iter().cloned().fold(0.0, f32::max) + ABS_TOL;
                let rtol = if i > 0 && kv_f16 { F16_RTOL } else { 0.0 };
                if i == 2 {
                    for (j, (g, e)) in got.iter().zip(&raw).enumerate() {
                        let tol = e_prod + rtol * e.abs();
                        assert!(
                            (g - e).abs() <= tol,
                            "{what} v[{j}]: {g} vs {e} (tol {tol})"
                        );
                    }
                    continue;
                }
                let w = if i == 0 { &qn } else { &kn };
                let heads = rows[i] / head_dim;
                let mut want = vec![0.0; raw.len()];
                for (o, xi) in want
                    .chunks_exact_mut(head_dim)
                    .zip(raw.chunks_exact(head_dim))
                {
                    cpu::rms_norm(o, xi, w, eps);
                }
                if rotate {
                    for t in 0..n_tok {
                        cpu::rope_scaled(
                            &mut want[t * rows[i]..(t + 1) * rows[i]],
                            heads,
                            head_dim,
                            n_rot,
                            pos0 + t,
                            10000.0,
                            1.0,
                            1.0,
                            layout,
                            freq,
                        );
                    }
                }
                let w_max = w.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                for (hi, (gh, (eh, xh))) in got
                    .chunks_exact(head_dim)
                    .zip(want.chunks_exact(head_dim).zip(raw.chunks_exact(head_dim)))
                    .enumerate()
                {
                    // The product's error δ ≤ e_prod moves x / rms ⊙ w by ≤ s·w_max·δ·(1 +
                    // s·max|x|) (s = 1 / rms, its own change included); a rotated value mixes
                    // two; then RoPE's own error.
                    let ss: f32 = xh.iter().map(|v| v * v).sum();
                    let s = 1.0 / (ss / head_dim as f32 + eps).sqrt();
                    let x_max = xh.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                    let e_norm = s * w_max * e_prod * (1.0 + s * x_max);
                    for (j, (g, e)) in gh.iter().zip(eh).enumerate() {
                        let tol = 2.0 * e_norm + ROPE_TOL * (1.0 + e.abs()) + rtol * e.abs();
                        assert!(
                            (g - e).abs() <= tol,
                            "{what} {layout:?} rotate {rotate} {name} head {hi} [{j}]: {g} vs {e} (tol {tol})"
                        );
                    }
                }
            }
        }
    }
}
