//! Plain f32 reference ops of the transformer block (RMSNorm, RoPE, softmax, SwiGLU, attention).
//! They are the CPU backend's implementation and the oracle the GPU kernels are tested against.

use crate::model::RopeLayout;
use crate::quant;
use crate::tensor::QMatrix;

/// RMSNorm (Zhang & Sennrich 2019): `out = x / sqrt(mean(x²) + eps) * weight`.
/// x, weight, out: (n_embd).
pub fn rms_norm(out: &mut [f32], x: &[f32], weight: &[f32], eps: f32) {
    let mean_sq = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let scale = 1.0 / (mean_sq + eps).sqrt();
    for ((o, &v), &w) in out.iter_mut().zip(x).zip(weight) {
        *o = v * scale * w;
    }
}

/// [`rms_norm`] of each of the first `n` rows of `x` into `out`; rows as wide as `weight`.
/// x, out: (≥ n, weight.len()).
pub fn rms_norm_rows(out: &mut [f32], x: &[f32], weight: &[f32], n: usize, eps: f32) {
    let width = weight.len();
    for (o, xi) in out[..n * width]
        .chunks_exact_mut(width)
        .zip(x[..n * width].chunks_exact(width))
    {
        rms_norm(o, xi, weight, eps);
    }
}

/// [`rms_norm`] in place: `x = x / sqrt(mean(x²) + eps) * weight`. x, weight: (n).
pub fn rms_norm_inplace(x: &mut [f32], weight: &[f32], eps: f32) {
    let mean_sq = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let scale = 1.0 / (mean_sq + eps).sqrt();
    for (v, &w) in x.iter_mut().zip(weight) {
        *v *= scale * w;
    }
}

/// Rotary position embedding (Su et al. 2021, RoFormer) of one position, in place.
/// x: (n_heads, head_dim); only the first `n_rot` dims of each head rotate.
/// Pair `i` (0..n_rot/2) turns by `pos * pos_scale * base^(-2i/n_rot) / freq_factors[i]`:
/// [`RopeLayout::Adjacent`] pairs (x[2i], x[2i+1]), [`RopeLayout::Neox`] pairs (x[i], x[i+n_rot/2]).
/// Follows llama.cpp `ggml_rope_ext` (ggml-cpu ops.cpp `rope_f32`).
#[allow(clippy::too_many_arguments)]
pub fn rope(
    x: &mut [f32],
    n_heads: usize,
    head_dim: usize,
    n_rot: usize,
    pos: usize,
    base: f32,
    pos_scale: f32,
    layout: RopeLayout,
    freq_factors: Option<&[f32]>,
) {
    rope_scaled(
        x,
        n_heads,
        head_dim,
        n_rot,
        pos,
        base,
        pos_scale,
        1.0,
        layout,
        freq_factors,
    )
}

/// [`rope`] with cos and sin multiplied by `mscale` (llama.cpp's `attn_factor`, Phi-3
/// LongRoPE).
#[allow(clippy::too_many_arguments)]
pub fn rope_scaled(
    x: &mut [f32],
    n_heads: usize,
    head_dim: usize,
    n_rot: usize,
    pos: usize,
    base: f32,
    pos_scale: f32,
    mscale: f32,
    layout: RopeLayout,
    freq_factors: Option<&[f32]>,
) {
    let half = n_rot / 2;
    let p = pos as f32 * pos_scale;
    for i in 0..half {
        let mut theta = p * base.powf(-2.0 * i as f32 / n_rot as f32);
        if let Some(ff) = freq_factors {
            theta /= ff[i];
        }
        let (sin, cos) = theta.sin_cos();
        let (sin, cos) = (sin * mscale, cos * mscale);
        for h in 0..n_heads {
            let head = &mut x[h * head_dim..(h + 1) * head_dim];
            let (a, b) = match layout {
                RopeLayout::Adjacent => (2 * i, 2 * i + 1),
                RopeLayout::Neox => (i, i + half),
            };
            let (x0, x1) = (head[a], head[b]);
            head[a] = x0 * cos - x1 * sin;
            head[b] = x0 * sin + x1 * cos;
        }
    }
}

/// e^x within 3e-7 relative (2–3 ulp) for x in [-87, 88]; x is clamped to that range first
/// (e^-87 ≈ 1.6e-38, e^88 ≈ 1.7e38: no overflow, no subnormals), NaN stays NaN. Cody–Waite
/// reduction x = k·ln 2 + r (|r| ≤ ln 2 / 2, k rounded to nearest by the 1.5·2^23 trick),
/// e^r by its degree-6 Taylor polynomial, 2^k put in the exponent bits. Branch-free plain
/// arithmetic, so loops over it vectorise (AVX2, wasm simd128), where `f32::exp` is a libm call
/// per element.
#[inline(always)]
pub fn exp_fast(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const ROUND: f32 = 12_582_912.0; // 1.5 · 2^23
    let x = x.clamp(-87.0, 88.0);
    let k = (x * LOG2_E + ROUND) - ROUND;
    let r = (x - k * LN2_HI) - k * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    p * f32::from_bits(((k as i32 + 127) as u32) << 23)
}

/// Numerically stable softmax in place.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = exp_fast(*v - max);
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// SiLU(x) = x · σ(x).
#[inline]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + exp_fast(-x))
}

/// SwiGLU (Shazeer 2020): `gate = silu(gate) * up`. gate, up: (n_ff).
pub fn swiglu(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = silu(*g) * u;
    }
}

/// GELU, tanh approximation (Hendrycks & Gimpel 2016):
/// `0.5·x·(1 + tanh(u))`, u = √(2/π)·(x + 0.044715·x³), computed as the equal
/// `x / (1 + e^(-2u))` (one [`exp_fast`], no libm `tanh`).
#[inline]
pub fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    const COEF: f32 = 0.044_715;
    x / (1.0 + exp_fast(-2.0 * SQRT_2_OVER_PI * x * (1.0 + COEF * x * x)))
}

/// GeGLU (Shazeer 2020), as Gemma uses it: `gate = gelu_tanh(gate) * up`. gate, up: (n_ff).
pub fn geglu(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = gelu_tanh(*g) * u;
    }
}

/// `a += b`.
pub fn add_inplace(a: &mut [f32], b: &[f32]) {
    for (x, &y) in a.iter_mut().zip(b) {
        *x += y;
    }
}

/// Scaled dot-product attention of one query position over KV-cache rows `0..n_kv`, with
/// grouped-query attention (query head `h` reads KV head `h / (n_head / n_head_kv)`).
/// q, out: (n_head, head_dim); k_cache, v_cache: (≥ n_kv, n_head_kv * head_dim);
/// scores: scratch of ≥ (n_head / n_head_kv) · n_kv. Scale 1/√head_dim. Causality is the caller's: pass only the
/// positions this query may see.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    out: &mut [f32],
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    n_kv: usize,
    n_head: usize,
    n_head_kv: usize,
    head_dim: usize,
    scores: &mut [f32],
) {
    let scale = 1.0 / (head_dim as f32).sqrt();
    attention_range(
        out,
        q,
        k_cache,
        v_cache,
        0..n_kv,
        n_head,
        n_head_kv,
        head_dim,
        scale,
        0.0,
        scores,
    );
}

/// [`attention`] over KV-cache rows `kv` only (a sliding window: `p + 1 - window .. p + 1`),
/// with the score scale given: `softmax(softcap(scale · q·k)) · v`, where
/// `softcap(s) = c · tanh(s / c)` when `softcap` c > 0 (Gemma 2) and the identity otherwise.
/// q, out: (n_head, head_dim); k_cache, v_cache: (≥ kv.end, n_head_kv * head_dim);
/// scores: scratch of ≥ (n_head / n_head_kv) · kv.len().
#[allow(clippy::too_many_arguments)]
pub fn attention_range(
    out: &mut [f32],
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    kv: std::ops::Range<usize>,
    n_head: usize,
    n_head_kv: usize,
    head_dim: usize,
    scale: f32,
    softcap: f32,
    scores: &mut [f32],
) {
    let kv_dim = n_head_kv * head_dim;
    let group = n_head / n_head_kv;
    let (first, n) = (kv.start, kv.len());
    if n == 0 {
        out[..n_head * head_dim].fill(0.0);
        return;
    }
    let scores = &mut scores[..group * n];
    // The `group` query heads of one KV head together: each K and V row is read once for all
    // of them (GQA), while every head's scores, softmax and sums are those of a head alone.
    for kvh in 0..n_head_kv {
        let heads = kvh * group * head_dim..(kvh + 1) * group * head_dim;
        let qs = &q[heads.clone()];
        for i in 0..n {
            let k = &k_cache[(first + i) * kv_dim + kvh * head_dim..][..head_dim];
            for (g, qh) in qs.chunks_exact(head_dim).enumerate() {
                scores[g * n + i] = dot(qh, k) * scale;
            }
        }
        for sg in scores.chunks_exact_mut(n) {
            if softcap > 0.0 {
                sg.iter_mut()
                    .for_each(|s| *s = softcap * (*s / softcap).tanh());
            }
            softmax(sg);
        }
        let os = &mut out[heads];
        os.fill(0.0);
        for i in 0..n {
            let v = &v_cache[(first + i) * kv_dim + kvh * head_dim..][..head_dim];
            for (g, oh) in os.chunks_exact_mut(head_dim).enumerate() {
                let p = scores[g * n + i];
                for (o, &vv) in oh.iter_mut().zip(v) {
                    *o += p * vv;
                }
            }
        }
    }
}

/// f32 dot product (written so the compiler vectorizes it: 8 independent accumulators).
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = a.len() / 8;
    for c in 0..chunks {
        for j in 0..8 {
            acc[j] += a[c * 8 + j] * b[c * 8 + j];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for i in chunks * 8..a.len() {
        s += a[i] * b[i];
    }
    s
}

/// Scalar reference matrix-vector product: `out[r] = Σ_c dequant(w)[r, c] · x[c]`, each row by
/// [`quant::vec_dot_ref`]. w: (rows, cols); x: (cols); out: (rows).
///
/// Errors: [`crate::Error::Shape`] when `x` or `out` do not fit `w`.
pub fn matvec_ref(w: &QMatrix, x: &[f32], out: &mut [f32]) -> crate::Result<()> {
    if x.len() != w.cols || out.len() < w.rows {
        return Err(crate::Error::Shape {
            op: "matvec_ref",
            detail: format!(
                "w ({}, {}), x ({}), out ({})",
                w.rows,
                w.cols,
                x.len(),
                out.len()
            ),
        });
    }
    for (r, o) in out.iter_mut().enumerate().take(w.rows) {
        *o = quant::vec_dot_ref(w.dtype, w.row(r), x);
    }
    Ok(())
}

/// Index of the largest value (first on ties).
pub fn argmax(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rms_norm_unit_rms() {
        let x = [3.0, -4.0, 0.0, 1.0];
        let mut out = [0.0; 4];
        rms_norm(&mut out, &x, &[1.0; 4], 0.0);
        let rms = (out.iter().map(|v| v * v).sum::<f32>() / 4.0).sqrt();
        assert!((rms - 1.0).abs() < 1e-6);
    }

    #[test]
    fn rope_layouts_agree_up_to_permutation_and_preserve_norm() {
        let head_dim = 8;
        let x: Vec<f32> = (0..16).map(|i| (i as f32 * 0.37).sin()).collect();
        let mut a = x.clone();
        rope(
            &mut a,
            2,
            head_dim,
            head_dim,
            5,
            10000.0,
            1.0,
            RopeLayout::Adjacent,
            None,
        );
        // NeoX on the de-interleaved head equals adjacent on the interleaved head.
        let perm = |v: &[f32]| -> Vec<f32> {
            v.chunks(head_dim)
                .flat_map(|h| {
                    (0..head_dim / 2)
                        .map(|i| h[2 * i])
                        .chain((0..head_dim / 2).map(|i| h[2 * i + 1]))
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        let mut b = perm(&x);
        rope(
            &mut b,
            2,
            head_dim,
            head_dim,
            5,
            10000.0,
            1.0,
            RopeLayout::Neox,
            None,
        );
        for (u, v) in perm(&a).iter().zip(&b) {
            assert!((u - v).abs() < 1e-6);
        }
        let n0: f32 = x.iter().map(|v| v * v).sum();
        let n1: f32 = a.iter().map(|v| v * v).sum();
        assert!((n0 - n1).abs() < 1e-5);
        // Position 0 is the identity.
        let mut c = x.clone();
        rope(
            &mut c,
            2,
            head_dim,
            head_dim,
            0,
            10000.0,
            1.0,
            RopeLayout::Adjacent,
            None,
        );
        assert_eq!(c, x);
    }

    #[test]
    fn attention_with_one_key_returns_its_value_and_gqa_maps_heads() {
        // 2 query heads share 1 KV head.
        let (n_head, n_head_kv, hd) = (2, 1, 2);
        let q = [1.0, 0.0, 0.0, 1.0];
        let k = [1.0, 0.0, 0.0, 1.0];
        let v = [10.0, 20.0, 30.0, 40.0];
        let mut out = [0.0; 4];
        let mut scores = [0.0; 4];
        attention(&mut out, &q, &k, &v, 1, n_head, n_head_kv, hd, &mut scores);
        assert_eq!(out, [10.0, 20.0, 10.0, 20.0]);
        attention(&mut out, &q, &k, &v, 2, n_head, n_head_kv, hd, &mut scores);
        // Head 0 prefers key 0, head 1 key 1, with softmax weights e^(1/√2) : 1.
        let w = (1.0f32 / 2f32.sqrt()).exp();
        let p = w / (w + 1.0);
        assert!((out[0] - (p * 10.0 + (1.0 - p) * 30.0)).abs() < 1e-4);
        assert!((out[2] - ((1.0 - p) * 10.0 + p * 30.0)).abs() < 1e-4);
    }

    /// Plain per-head attention (the definition): scores, softcap, softmax, weighted V sum.
    #[allow(clippy::too_many_arguments)]
    fn attention_ref(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        kv: std::ops::Range<usize>,
        n_head: usize,
        n_head_kv: usize,
        hd: usize,
        scale: f32,
        softcap: f32,
    ) -> Vec<f32> {
        let kv_dim = n_head_kv * hd;
        let mut out = vec![0f32; n_head * hd];
        for h in 0..n_head {
            let kvh = h / (n_head / n_head_kv);
            let mut s: Vec<f32> = kv
                .clone()
                .map(|t| {
                    let mut d = 0f32;
                    for i in 0..hd {
                        d += q[h * hd + i] * k[t * kv_dim + kvh * hd + i];
                    }
                    let d = d * scale;
                    if softcap > 0.0 {
                        softcap * (d / softcap).tanh()
                    } else {
                        d
                    }
                })
                .collect();
            let m = s.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            s.iter_mut().for_each(|x| *x = (*x - m).exp());
            let sum: f32 = s.iter().sum();
            for (j, t) in kv.clone().enumerate() {
                for i in 0..hd {
                    out[h * hd + i] += s[j] / sum * v[t * kv_dim + kvh * hd + i];
                }
            }
        }
        out
    }

    #[test]
    fn grouped_attention_matches_the_per_head_definition() {
        // Groups of 1, 3 (SmolLM2) and 4 (Gemma 3), odd head dims, windows, softcap; 1e-5
        // relative to the largest |value| (the summation orders differ).
        for &(n_head, n_head_kv, hd, softcap) in &[
            (3, 3, 5, 0.0),
            (9, 3, 24, 0.0),
            (4, 1, 40, 0.0),
            (8, 2, 17, 50.0),
        ] {
            let n_ctx = 13;
            let val = |i: usize, m: f32| ((i as f32) * m).sin() * 1.5;
            let q: Vec<f32> = (0..n_head * hd).map(|i| val(i, 0.37)).collect();
            let k: Vec<f32> = (0..n_ctx * n_head_kv * hd).map(|i| val(i, 0.73)).collect();
            let v: Vec<f32> = (0..n_ctx * n_head_kv * hd).map(|i| val(i, 1.31)).collect();
            let scale = 1.0 / (hd as f32).sqrt();
            for kv in [0..1, 0..n_ctx, 4..11] {
                let mut got = vec![0f32; n_head * hd];
                let mut scores = vec![f32::NAN; n_head / n_head_kv * kv.len()];
                attention_range(
                    &mut got,
                    &q,
                    &k,
                    &v,
                    kv.clone(),
                    n_head,
                    n_head_kv,
                    hd,
                    scale,
                    softcap,
                    &mut scores,
                );
                let want = attention_ref(
                    &q,
                    &k,
                    &v,
                    kv.clone(),
                    n_head,
                    n_head_kv,
                    hd,
                    scale,
                    softcap,
                );
                let big = want.iter().fold(0f32, |a, &b| a.max(b.abs()));
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (g - w).abs() <= 1e-5 * big,
                        "heads {n_head}/{n_head_kv} hd {hd} kv {kv:?}: [{i}] {g} vs {w}"
                    );
                }
            }
        }
    }

    #[test]
    fn attention_range_is_attention_over_the_window() {
        // A window over rows 2..4 equals full attention over a cache holding only those rows.
        let (n_head, n_head_kv, hd) = (2, 1, 4);
        let row =
            |t: usize| -> Vec<f32> { (0..hd).map(|i| ((t * hd + i) as f32 * 0.7).sin()).collect() };
        let k: Vec<f32> = (0..4).flat_map(row).collect();
        let v: Vec<f32> = (0..4).flat_map(|t| row(t + 9)).collect();
        let q: Vec<f32> = (0..n_head * hd).map(|i| (i as f32 * 0.3).cos()).collect();
        let (mut a, mut b, mut scores) = ([0f32; 8], [0f32; 8], [0f32; 4]);
        let scale = 1.0 / (hd as f32).sqrt();
        attention_range(
            &mut a,
            &q,
            &k,
            &v,
            2..4,
            n_head,
            n_head_kv,
            hd,
            scale,
            0.0,
            &mut scores,
        );
        attention(
            &mut b,
            &q,
            &k[2 * hd..],
            &v[2 * hd..],
            2,
            n_head,
            n_head_kv,
            hd,
            &mut scores,
        );
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 1e-6);
        }
    }

    #[test]
    fn exp_fast_matches_exp() {
        // Every 1/1024 over the clamped range, plus the ends: 3e-7 relative (2–3 ulp).
        let mut worst = 0f64;
        for i in -87 * 1024..=88 * 1024 {
            let x = i as f32 / 1024.0;
            let want = (x as f64).exp();
            let rel = ((exp_fast(x) as f64 - want) / want).abs();
            worst = worst.max(rel);
        }
        assert!(worst <= 3e-7, "worst relative error {worst:e}");
        assert_eq!(exp_fast(0.0), 1.0);
        assert!(exp_fast(-1e30) > 0.0 && exp_fast(-1e30) < 2e-38);
        assert!(exp_fast(1e30).is_finite());
        assert!(exp_fast(f32::NAN).is_nan());
    }

    #[test]
    fn silu_and_gelu_match_their_definitions() {
        for i in -4000..=4000 {
            let x = i as f32 / 100.0;
            let xd = x as f64;
            let silu_want = xd / (1.0 + (-xd).exp());
            let u = (2.0 / std::f64::consts::PI).sqrt() * (xd + 0.044715 * xd * xd * xd);
            let gelu_want = 0.5 * xd * (1.0 + u.tanh());
            for (got, want) in [(silu(x), silu_want), (gelu_tanh(x), gelu_want)] {
                let err = (got as f64 - want).abs();
                assert!(err <= 1e-6 * want.abs().max(1e-3), "x {x}: {got} vs {want}");
            }
        }
    }

    #[test]
    fn gelu_tanh_known_values() {
        assert_eq!(gelu_tanh(0.0), 0.0);
        // torch.nn.functional.gelu(x, approximate="tanh") at 1 and -2.
        assert!((gelu_tanh(1.0) - 0.841_192).abs() < 1e-5);
        assert!((gelu_tanh(-2.0) - (-0.045_402_3)).abs() < 1e-5);
    }
}
