//! An f32 interpreter of any family's [`Graph`]: the reference the GPU backend is held to.
//!
//! Weights are the CPU model's ([`CpuWeights`]), dequantized row by row with
//! [`engine::quant::dequantize_row`]; activations stay f32 (no Q8 activations, unlike the CPU
//! model and llama.cpp), products accumulate in f64, and the f32 ops of
//! [`engine::backend::cpu::ops`] do the rest. The whole sequence runs as one batch from
//! position 0, every op over every row, so nothing is shared with the CPU model's batching or
//! head-row selection.

use engine::arch::{Act, Glu, Graph, Op};
use engine::backend::cpu::{model::apply_epilogue, ops, CpuWeights};
use engine::model::ModelConfig;
use rayon::prelude::*;

/// How the reference stores its KV cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvStore {
    F32,
    /// Every value written to the cache rounded to f16, as on a GPU with `shader-f16`.
    F16,
}

/// `out = W · x` for every row of `x`, in f64: W (rows, cols) dequantized one row at a time.
/// x: (n, cols); returns (n, rows).
fn linear(w: &engine::tensor::QMatrix, x: &[f32], n: usize) -> Vec<f32> {
    let (rows, cols) = (w.rows, w.cols);
    assert_eq!(
        x.len(),
        n * cols,
        "`{}`: input of {} values",
        w.name,
        x.len()
    );
    // (rows, n): one output row per weight row, so the rows dequantize in parallel.
    let mut t = vec![0f32; rows * n];
    t.par_chunks_mut(n).enumerate().for_each_init(
        || vec![0f32; cols],
        |wr, (r, out)| {
            engine::quant::dequantize_row(w.dtype, w.row(r), wr).unwrap();
            for (o, xt) in out.iter_mut().zip(x.chunks_exact(cols)) {
                *o = wr
                    .iter()
                    .zip(xt)
                    .map(|(&a, &b)| a as f64 * b as f64)
                    .sum::<f64>() as f32;
            }
        },
    );
    let mut y = vec![0f32; n * rows];
    for (r, col) in t.chunks_exact(n).enumerate() {
        for (tok, &v) in col.iter().enumerate() {
            y[tok * rows + r] = v;
        }
    }
    y
}

/// Run `graph` over `tokens` at positions `0 .. tokens.len()`; returns every position's
/// logits: (tokens.len(), n_vocab).
pub fn reference_forward(
    cfg: &ModelConfig,
    graph: &Graph,
    w: &CpuWeights,
    tokens: &[u32],
    kv: KvStore,
) -> Vec<f32> {
    let n = tokens.len();
    let (q_dim, kv_dim, hd) = (cfg.q_dim(), cfg.kv_dim(), cfg.head_dim);
    // One buffer per activation: (n, width).
    let mut bufs: Vec<Vec<f32>> = Act::ALL
        .iter()
        .map(|a| vec![0f32; n * a.width(cfg)])
        .collect();
    // Per layer (n, kv_dim).
    let mut k_cache = vec![vec![0f32; n * kv_dim]; cfg.n_layer];
    let mut v_cache = vec![vec![0f32; n * kv_dim]; cfg.n_layer];
    let mut scores = vec![0f32; n * cfg.n_head / cfg.n_head_kv];
    let round = |v: &mut [f32]| {
        if kv == KvStore::F16 {
            v.iter_mut()
                .for_each(|x| *x = half::f16::from_f32(*x).to_f32());
        }
    };
    for op in graph.layers.iter().chain(&graph.head) {
        match *op {
            Op::Embed { table, scale } => {
                let t = w.mat(table);
                let x = &mut bufs[Act::X as usize];
                for (xt, &id) in x.chunks_exact_mut(cfg.n_embd).zip(tokens) {
                    engine::quant::dequantize_row(t.dtype, t.row(id as usize), xt).unwrap();
                    xt.iter_mut().for_each(|v| *v *= scale);
                }
            }
            Op::Norm { x, w: wv, out, add } => {
                let wv = w.vec(wv);
                let width = wv.len();
                let mut normed = vec![0f32; n * width];
                ops::rms_norm_rows(&mut normed, &bufs[x as usize], wv, n, cfg.rms_eps);
                let o = &mut bufs[out as usize];
                if add {
                    ops::add_inplace(o, &normed);
                } else {
                    o.copy_from_slice(&normed);
                }
            }
            Op::HeadNorm { x, w: wv } => {
                let wv = w.vec(wv);
                for head in bufs[x as usize].chunks_exact_mut(wv.len()) {
                    ops::rms_norm_inplace(head, wv, cfg.rms_eps);
                }
            }
            Op::Linear {
                w: m,
                bias,
                x,
                out,
                epi,
            } => {
                let m = w.mat(m);
                let mut y = linear(m, &bufs[x as usize], n);
                if let Some(b) = bias {
                    let b = w.vec(b);
                    y.chunks_exact_mut(m.rows)
                        .for_each(|row| ops::add_inplace(row, b));
                }
                apply_epilogue(&mut y, &epi);
                let o = &mut bufs[out as usize];
                if epi.accumulate {
                    ops::add_inplace(o, &y);
                } else {
                    o.copy_from_slice(&y);
                }
            }
            Op::RopeStore { layer, freqs } => {
                let freqs = freqs.map(|f| w.vec(f));
                for t in 0..n {
                    if let Some(r) = cfg.layers[layer].rope {
                        for (act, heads) in [(Act::Q, cfg.n_head), (Act::K, cfg.n_head_kv)] {
                            let width = heads * hd;
                            ops::rope_scaled(
                                &mut bufs[act as usize][t * width..(t + 1) * width],
                                heads,
                                hd,
                                cfg.n_rot,
                                t,
                                r.base,
                                r.pos_scale,
                                r.mscale,
                                cfg.rope_layout,
                                freqs,
                            );
                        }
                    }
                    let row = t * kv_dim..(t + 1) * kv_dim;
                    k_cache[layer][row.clone()]
                        .copy_from_slice(&bufs[Act::K as usize][row.clone()]);
                    v_cache[layer][row.clone()]
                        .copy_from_slice(&bufs[Act::V as usize][row.clone()]);
                    round(&mut k_cache[layer][row.clone()]);
                    round(&mut v_cache[layer][row]);
                }
            }
            Op::Attend { layer } => {
                let spec = cfg.layers[layer];
                let mut att = std::mem::take(&mut bufs[Act::Att as usize]);
                for t in 0..n {
                    // Causal, within the window: position t sees t + 1 - window ..= t.
                    let first = if spec.window > 0 {
                        (t + 1).saturating_sub(spec.window)
                    } else {
                        0
                    };
                    ops::attention_range(
                        &mut att[t * q_dim..(t + 1) * q_dim],
                        &bufs[Act::Q as usize][t * q_dim..(t + 1) * q_dim],
                        &k_cache[layer],
                        &v_cache[layer],
                        first..t + 1,
                        cfg.n_head,
                        cfg.n_head_kv,
                        hd,
                        spec.attn_scale,
                        spec.attn_softcap,
                        &mut scores,
                    );
                }
                bufs[Act::Att as usize] = att;
            }
            Op::Glu(act) => {
                let up = std::mem::take(&mut bufs[Act::Up as usize]);
                let gate = &mut bufs[Act::Gate as usize];
                match act {
                    Glu::Silu => ops::swiglu(gate, &up),
                    Glu::GeluTanh => ops::geglu(gate, &up),
                }
                bufs[Act::Up as usize] = up;
            }
        }
    }
    std::mem::take(&mut bufs[Act::Logits as usize])
}
