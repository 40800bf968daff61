//! `vec_dot` parity: the fast path of this machine (AVX2 natively, simd128 under wasm32) and the
//! portable integer path against the float reference `vec_dot_ref`, for every weight type, on
//! random blocks and activations of several lengths and distributions.
//!
//! Native: `cargo test -p slm-engine --test quant_parity`.
//! wasm32 (simd128, Node): `RUSTFLAGS="-C target-feature=+simd128"
//! CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner
//! cargo test -p slm-engine --target wasm32-unknown-unknown --test quant_parity`.
//!
//! An `#[ignore]`d micro-benchmark (`quant_dot_speed`) prints ns/row and GB/s natively.

use engine::quant::{self, ActFormat, GgmlDType, PreparedActs};
use half::f16;

/// Activations are rounded to the nearest multiple of their block's step `max |x| / 127`, so
/// each is off by at most half a step and the quantized dot differs from the float dot by at
/// most `Σ |w_i| · step_i / 2`.
const ACT_HALF_STEP: f64 = 0.5;
/// f32 rounding (accumulation order, FMA), relative to `Σ |w_i x_i| + Σ |w_i| step_i`.
const FLOAT_REL_TOL: f64 = 1e-5;
/// For Gaussian activations the quantization error relative to `Σ |w_i x_i|` stays below this:
/// the worst case is `(E max|x| / 127 / 2) / E|x|` ≈ (2.9σ / 254) / 0.8σ ≈ 1.4% for 256-element
/// blocks (2.1σ / 254 / 0.8σ ≈ 1.0% for 32-element blocks); random signs make it far smaller.
const DOT_REL_TOL: f64 = 0.02;
/// The fast path computes the same integer sums as the portable path; they may differ only by
/// f32 rounding, relative to `Σ |w_i| (|x_i| + step_i)`.
const FAST_VS_PORTABLE_REL_TOL: f64 = 1e-5;

#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test;

/// splitmix64: deterministic test data without extra dependencies (also on wasm32).
struct Rng(u64);
impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f32 {
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }
    fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }
}

/// Byte offsets of the f16 scale fields inside one block (ggml-common.h layouts).
fn scale_offsets(t: GgmlDType) -> &'static [usize] {
    match t {
        GgmlDType::Q4_0 | GgmlDType::Q5_0 | GgmlDType::Q8_0 => &[0],
        GgmlDType::Q4_1 | GgmlDType::Q5_1 | GgmlDType::Q4K | GgmlDType::Q5K => &[0, 2],
        GgmlDType::Q2K => &[80, 82],
        GgmlDType::Q3K => &[108],
        GgmlDType::Q6K => &[208],
        _ => &[],
    }
}

/// A random finite f16 scale: log-uniform magnitude in [1e-4, 2), random sign, 5% subnormal.
fn random_scale(rng: &mut Rng) -> f16 {
    let sign = if rng.byte() & 1 == 0 { 1.0 } else { -1.0 };
    if rng.uniform() < 0.05 {
        let m = 1 + (rng.next_u64() % 1023) as u16;
        let bits = m | if sign < 0.0 { 0x8000 } else { 0 };
        return f16::from_bits(bits);
    }
    let mag = (1e-4f64.ln() + rng.uniform() * (2f64.ln() - 1e-4f64.ln())).exp();
    f16::from_f64(sign * mag)
}

/// A random row of `n` elements of `t`, in a `u16` buffer (2-byte aligned like GGUF rows).
fn random_row(rng: &mut Rng, t: GgmlDType, n: usize) -> Vec<u16> {
    let bytes_len = t.row_bytes(n).unwrap();
    let mut buf = vec![0u16; bytes_len / 2];
    let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut buf);
    match t {
        GgmlDType::F32 => {
            for (c, _) in bytes.chunks_exact_mut(4).zip(0..n) {
                c.copy_from_slice(&rng.normal().to_le_bytes());
            }
        }
        GgmlDType::F16 => {
            for c in bytes.chunks_exact_mut(2) {
                c.copy_from_slice(&f16::from_f32(rng.normal()).to_le_bytes());
            }
        }
        GgmlDType::BF16 => {
            for c in bytes.chunks_exact_mut(2) {
                c.copy_from_slice(&half::bf16::from_f32(rng.normal()).to_le_bytes());
            }
        }
        _ => {
            for b in bytes.iter_mut() {
                *b = rng.byte();
            }
            for block in bytes.chunks_exact_mut(t.type_size()) {
                for &o in scale_offsets(t) {
                    block[o..o + 2].copy_from_slice(&random_scale(rng).to_le_bytes());
                }
            }
        }
    }
    buf
}

/// Activation distributions: Gaussian, heavy-tailed with outliers, blocks of zeros, large.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Dist {
    Normal,
    Outliers,
    SparseZeros,
    Large,
}

fn random_x(rng: &mut Rng, n: usize, dist: Dist) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let v = rng.normal();
            match dist {
                Dist::Normal => v,
                Dist::Outliers => {
                    if rng.uniform() < 0.02 {
                        v * 50.0
                    } else {
                        v
                    }
                }
                Dist::SparseZeros => {
                    if (i / 32) % 3 == 1 {
                        0.0
                    } else {
                        v
                    }
                }
                Dist::Large => v * 1e4,
            }
        })
        .collect()
}

fn lengths(t: GgmlDType) -> &'static [usize] {
    if t.block_size() == 256 {
        &[256, 768, 1536, 2560]
    } else {
        &[32, 64, 96, 576, 1536, 2080]
    }
}

/// `Σ |w_i| · step_i` for activations prepared for `t` (0 for float weights).
fn step_sum(t: GgmlDType, w: &[f32], x: &[f32]) -> f64 {
    let bs = match ActFormat::for_dtype(t) {
        Some(ActFormat::Q8) => 32,
        Some(ActFormat::Q8K) => 256,
        _ => return 0.0,
    };
    w.chunks(bs)
        .zip(x.chunks(bs))
        .map(|(wb, xb)| {
            let step = xb.iter().fold(0f32, |m, v| m.max(v.abs())) as f64 / 127.0;
            wb.iter().map(|v| v.abs() as f64).sum::<f64>() * step
        })
        .sum()
}

fn check_type(t: GgmlDType) {
    let mut rng = Rng(0x5EED ^ t.ggml_id() as u64);
    let mut acts = PreparedActs::new();
    let mut checked = 0;
    for &n in lengths(t) {
        for dist in [Dist::Normal, Dist::Outliers, Dist::SparseZeros, Dist::Large] {
            for _ in 0..3 {
                let buf = random_row(&mut rng, t, n);
                let row: &[u8] = bytemuck::cast_slice(&buf);
                let x = random_x(&mut rng, n, dist);
                let mut w = vec![0f32; n];
                quant::dequantize_row(t, row, &mut w).unwrap();
                acts.prepare(t, &x);
                assert!(acts.is_prepared_for(t));

                let reference = quant::vec_dot_ref(t, row, &x) as f64;
                let fast = quant::vec_dot(t, row, &acts) as f64;
                let portable = quant::vec_dot_portable(t, row, &acts) as f64;

                let abs_sum: f64 = w.iter().zip(&x).map(|(a, b)| (a * b).abs() as f64).sum();
                let steps = step_sum(t, &w, &x);
                let ctx = format!(
                    "{t} n={n} {dist:?}: ref {reference}, portable {portable}, fast({}) {fast}",
                    quant::fast_path()
                );

                // 1. Portable integer path vs float reference: activation quantization bound.
                let tol = steps * ACT_HALF_STEP + FLOAT_REL_TOL * (abs_sum + steps);
                let err = (portable - reference).abs();
                assert!(
                    err <= tol,
                    "{ctx}: |portable - ref| = {err:.3e} > {tol:.3e}"
                );
                if dist == Dist::Normal {
                    assert!(
                        err <= DOT_REL_TOL * abs_sum,
                        "{ctx}: |portable - ref| = {err:.3e} > {DOT_REL_TOL} Σ|wx| = {:.3e}",
                        DOT_REL_TOL * abs_sum
                    );
                }
                // 2. Fast path vs portable: same integer sums, float rounding only.
                let tol = FAST_VS_PORTABLE_REL_TOL * (abs_sum + steps);
                let err = (fast - portable).abs();
                assert!(
                    err <= tol,
                    "{ctx}: |fast - portable| = {err:.3e} > {tol:.3e}"
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 0);
}

/// The fast path really is in use where it should be (no silent fallback).
#[cfg_attr(not(target_arch = "wasm32"), test)]
#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test)]
fn fast_path_is_active() {
    #[cfg(target_arch = "x86_64")]
    {
        let cpu = std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c");
        assert_eq!(quant::fast_path() == "avx2", cpu);
        if cpu {
            for t in GgmlDType::WEIGHT_TYPES {
                assert!(quant::has_fast_kernel(t), "no AVX2 kernel for {t}");
            }
        }
    }
    #[cfg(target_arch = "wasm32")]
    {
        assert!(
            cfg!(target_feature = "simd128"),
            "build the wasm tests with RUSTFLAGS=\"-C target-feature=+simd128\""
        );
        let path = if cfg!(target_feature = "relaxed-simd") {
            "relaxed-simd"
        } else {
            "simd128"
        };
        assert_eq!(quant::fast_path(), path);
        use GgmlDType::*;
        for t in [F32, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4K, Q5K, Q6K] {
            assert!(quant::has_fast_kernel(t), "no simd128 kernel for {t}");
        }
    }
}

macro_rules! parity_tests {
    ($($name:ident => $t:ident),* $(,)?) => {$(
        #[cfg_attr(not(target_arch = "wasm32"), test)]
        #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test)]
        fn $name() {
            check_type(GgmlDType::$t);
        }
    )*};
}

parity_tests! {
    parity_f32 => F32,
    parity_f16 => F16,
    parity_bf16 => BF16,
    parity_q4_0 => Q4_0,
    parity_q4_1 => Q4_1,
    parity_q5_0 => Q5_0,
    parity_q5_1 => Q5_1,
    parity_q8_0 => Q8_0,
    parity_q2_k => Q2K,
    parity_q3_k => Q3K,
    parity_q4_k => Q4K,
    parity_q5_k => Q5K,
    parity_q6_k => Q6K,
}

/// [`quant::vec_dot_tile`] (the prefill product: each block unpacked once per tile of tokens)
/// against [`quant::vec_dot`] token by token: equal bit for bit, for tiles of every size and a
/// remainder, so a prompt gives the same logits however it is split into batches. The
/// single-token kernels themselves are checked against the scalar reference above.
fn check_tile(t: GgmlDType) {
    let mut rng = Rng(0x6E33 ^ t.ggml_id() as u64);
    let mut checked = 0;
    for &n in lengths(t) {
        let buf = random_row(&mut rng, t, n);
        let row: &[u8] = bytemuck::cast_slice(&buf);
        for n_tok in [1usize, 2, 3, 4, 5, 7, 9] {
            let dists = [Dist::Normal, Dist::Outliers, Dist::SparseZeros, Dist::Large];
            let acts: Vec<PreparedActs> = (0..n_tok)
                .map(|k| {
                    let mut a = PreparedActs::new();
                    a.prepare(t, &random_x(&mut rng, n, dists[k % 4]));
                    a
                })
                .collect();
            let mut tile = vec![f32::NAN; n_tok];
            quant::vec_dot_tile(t, row, &acts, &mut tile);
            for (k, a) in acts.iter().enumerate() {
                let one = quant::vec_dot(t, row, a);
                assert_eq!(
                    tile[k].to_bits(),
                    one.to_bits(),
                    "{t} n={n} tokens={n_tok} token {k}: tile {} vs vec_dot {one} ({})",
                    tile[k],
                    quant::fast_path()
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 0);
}

macro_rules! tile_tests {
    ($($name:ident => $t:ident),* $(,)?) => {$(
        #[cfg_attr(not(target_arch = "wasm32"), test)]
        #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test)]
        fn $name() {
            check_tile(GgmlDType::$t);
        }
    )*};
}

tile_tests! {
    tile_f32 => F32,
    tile_f16 => F16,
    tile_bf16 => BF16,
    tile_q4_0 => Q4_0,
    tile_q4_1 => Q4_1,
    tile_q5_0 => Q5_0,
    tile_q5_1 => Q5_1,
    tile_q8_0 => Q8_0,
    tile_q2_k => Q2K,
    tile_q3_k => Q3K,
    tile_q4_k => Q4K,
    tile_q5_k => Q5K,
    tile_q6_k => Q6K,
}

/// Edge values: Q8_0 weights of -128 against activations of ±max (the i16 pair-sum limit of
/// the u8×i8 multiply-add), and the all-ones / all-max codes of the other types.
#[cfg_attr(not(target_arch = "wasm32"), test)]
#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test)]
fn extreme_codes() {
    let mut acts = PreparedActs::new();
    for t in GgmlDType::WEIGHT_TYPES
        .into_iter()
        .filter(|t| t.is_quantized())
    {
        let n = t.block_size() * 2;
        for fill in [0x00u8, 0x80, 0xFF, 0x7F] {
            let mut buf = vec![0u16; t.row_bytes(n).unwrap() / 2];
            let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut buf);
            bytes.fill(fill);
            for block in bytes.chunks_exact_mut(t.type_size()) {
                for &o in scale_offsets(t) {
                    block[o..o + 2].copy_from_slice(&f16::from_f32(0.5).to_le_bytes());
                }
            }
            let row: &[u8] = bytemuck::cast_slice(&buf);
            for sign in [1.0f32, -1.0] {
                let x: Vec<f32> = (0..n)
                    .map(|i| sign * if i % 2 == 0 { 3.0 } else { -3.0 })
                    .collect();
                let x2: Vec<f32> = vec![sign * 3.0; n];
                for x in [x, x2] {
                    acts.prepare(t, &x);
                    let r = quant::vec_dot_ref(t, row, &x);
                    let p = quant::vec_dot_portable(t, row, &acts);
                    let f = quant::vec_dot(t, row, &acts);
                    // These activations quantize exactly (all |x| equal the block max).
                    let tol = 1e-4 * (1.0 + r.abs());
                    assert!(
                        (p - r).abs() <= tol,
                        "{t} fill {fill:#x}: portable {p} vs ref {r}"
                    );
                    assert!(
                        (f - r).abs() <= tol,
                        "{t} fill {fill:#x}: fast {f} vs ref {r}"
                    );
                }
            }
        }
    }
}

/// Micro-benchmark: `cargo test -p slm-engine --test quant_parity -- --ignored --nocapture
/// quant_dot_speed`. Prints ns per row for the fast and portable paths with the weights hot in
/// cache (compute cost) and streaming over 16 MiB (memory-bound), as weight GB/s too. Each figure
/// is the best of many short runs, so it stays meaningful on a busy machine.
#[cfg(not(target_arch = "wasm32"))]
#[test]
#[ignore]
fn quant_dot_speed() {
    use std::time::Instant;
    type DotFn = fn(GgmlDType, &[u8], &PreparedActs) -> f32;
    let mut rng = Rng(42);
    println!("fast path: {}", quant::fast_path());
    for (t, cols) in [
        (GgmlDType::Q4_1, 576),
        (GgmlDType::Q4_1, 1536),
        (GgmlDType::Q8_0, 576),
        (GgmlDType::Q8_0, 1536),
        (GgmlDType::Q4_0, 1536),
        (GgmlDType::Q5_0, 640),
        (GgmlDType::Q4K, 512),
        (GgmlDType::Q4K, 1536),
        (GgmlDType::Q5K, 1536),
        (GgmlDType::Q6K, 512),
        (GgmlDType::Q6K, 1536),
        (GgmlDType::Q2K, 1536),
        (GgmlDType::Q3K, 1536),
        (GgmlDType::F32, 576),
    ] {
        let row_bytes = t.row_bytes(cols).unwrap();
        let hot_rows = 64;
        let stream_rows = (16 << 20) / row_bytes;
        let mut data = vec![0u16; stream_rows * row_bytes / 2];
        for chunk in data.chunks_exact_mut(row_bytes / 2) {
            chunk.copy_from_slice(&random_row(&mut rng, t, cols));
        }
        let bytes: &[u8] = bytemuck::cast_slice(&data);
        let x = random_x(&mut rng, cols, Dist::Normal);
        let mut acts = PreparedActs::new();
        acts.prepare(t, &x);
        let mut line = format!("{:5} cols {cols:5}:", t.to_string());
        // Prefill: 4 tokens per row through the tile kernel, ns per row and token.
        {
            let tile: Vec<PreparedActs> = (0..quant::TILE).map(|_| acts.clone()).collect();
            let mut out = vec![0f32; quant::TILE];
            let mut best = f64::MAX;
            for _ in 0..2000 {
                let t0 = Instant::now();
                for r in bytes[..hot_rows * row_bytes].chunks_exact(row_bytes) {
                    quant::vec_dot_tile(t, r, &tile, &mut out);
                    std::hint::black_box(&out);
                }
                best = best.min(t0.elapsed().as_secs_f64());
            }
            line += &format!(
                "  tile: hot {:7.1} ns/row/token",
                best / (hot_rows * quant::TILE) as f64 * 1e9
            );
        }
        let paths: [(&str, DotFn); 2] = [
            ("fast", quant::vec_dot),
            ("portable", quant::vec_dot_portable),
        ];
        for (label, f) in paths {
            let mut sink = 0f32;
            let time = |rows: usize, reps: usize, sink: &mut f32| {
                let mut best = f64::MAX;
                for _ in 0..reps {
                    let t0 = Instant::now();
                    for r in bytes[..rows * row_bytes].chunks_exact(row_bytes) {
                        *sink += f(t, r, &acts);
                    }
                    best = best.min(t0.elapsed().as_secs_f64());
                }
                best / rows as f64
            };
            let hot = time(hot_rows, 2000, &mut sink);
            let stream = time(stream_rows, 5, &mut sink);
            std::hint::black_box(sink);
            line += &format!(
                "  {label}: hot {:7.1} ns/row ({:5.1} GB/s), stream {:7.1} ns/row ({:5.1} GB/s)",
                hot * 1e9,
                row_bytes as f64 / hot / 1e9,
                stream * 1e9,
                row_bytes as f64 / stream / 1e9
            );
        }
        println!("{line}");
    }
}
