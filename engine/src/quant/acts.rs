//! Activation quantization for the integer dot products: 32-element blocks ([`ActBlockQ8`], as
//! ggml `quantize_row_q8_1`) for the legacy types and 256-element [`BlockQ8K`] blocks with group
//! sums (as ggml `quantize_row_q8_K`) for the K-quants. Both are symmetric: `d = max |x| / 127`,
//! `q = round(x / d)` (ties away from zero), so every element's error is at most `d / 2`.

use super::blocks::{ActBlockQ8, BlockQ8K};
use super::{QK, QK_K};

/// Scale and inverse scale for a block with largest magnitude `amax`.
#[inline]
fn scales(amax: f32) -> (f32, f32) {
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    (d, id)
}

#[inline]
fn quantize_one(v: f32, id: f32) -> i8 {
    // `as` saturates and maps NaN to 0; the clamp documents the range.
    (v * id).round().clamp(-127.0, 127.0) as i8
}

/// Quantize `x` (len `QK * out.len()`) into 32-element blocks with their sums.
pub(crate) fn quantize_q8(x: &[f32], out: &mut [ActBlockQ8]) {
    for (xb, b) in x.chunks_exact(QK).zip(out.iter_mut()) {
        let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
        let (d, id) = scales(amax);
        let mut sum = 0i32;
        for (q, &v) in b.qs.iter_mut().zip(xb) {
            *q = quantize_one(v, id);
            sum += *q as i32;
        }
        b.d = d;
        b.s = d * sum as f32;
    }
}

/// Quantize `x` (len `QK_K * out.len()`) into Q8_K blocks with their 16-element group sums.
pub(crate) fn quantize_q8k(x: &[f32], out: &mut [BlockQ8K]) {
    for (xb, b) in x.chunks_exact(QK_K).zip(out.iter_mut()) {
        let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
        let (d, id) = scales(amax);
        for (q, &v) in b.qs.iter_mut().zip(xb) {
            *q = quantize_one(v, id);
        }
        for (s, g) in b.bsums.iter_mut().zip(b.qs.chunks_exact(16)) {
            *s = g.iter().map(|&q| q as i16).sum();
        }
        b.d = d;
    }
}
