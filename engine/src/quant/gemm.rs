//! Matrix–matrix products for prefill: one weight row, decoded once ([`DecodedRow`]), against
//! the prepared activations of many tokens. The SIMD kernels (AVX2 in `x86_gemm.rs`, simd128 in
//! `simd128_gemm.rs`) take tokens in tiles of [`TILE`]: each 32-element piece of codes is loaded
//! once and multiplied with every token of the tile while it is in a register. The scalar
//! reference here is the oracle they are tested against; it computes the same integer sums as
//! `scalar.rs` (llama.cpp's `ggml_vec_dot_*`), with the offsets taken through the activation
//! sums.

use super::decoded::{DecodedKind, DecodedRow};
use super::{ActFormat, PreparedActs, QK, QK_K};

/// Tokens per SIMD tile.
pub const TILE: usize = 4;

/// Whether `acts` can be used with `dec`: same length, prepared in the format its kind needs.
pub(crate) fn compatible(dec: &DecodedRow, acts: &[PreparedActs]) -> bool {
    let want = match dec.kind {
        DecodedKind::None => return false,
        DecodedKind::Legacy | DecodedKind::LegacySigned => ActFormat::Q8,
        DecodedKind::K => ActFormat::Q8K,
        DecodedKind::F32 => ActFormat::F32,
    };
    acts.iter()
        .all(|a| a.len == dec.len && a.format() == Some(want))
}

/// Scalar reference of [`super::gemm_row`]: `out[t] = Σ_i w_i x_t,i` on the quantized
/// activations of every token `t`. Arguments were checked ([`compatible`]).
pub(crate) fn gemm_row_scalar(dec: &DecodedRow, acts: &[PreparedActs], out: &mut [f32]) {
    for (a, o) in acts.iter().zip(out.iter_mut()) {
        *o = match dec.kind {
            DecodedKind::None => f32::NAN,
            DecodedKind::F32 => dec.f.iter().zip(&a.x).map(|(w, x)| w * x).sum(),
            DecodedKind::Legacy | DecodedKind::LegacySigned => {
                let signed = dec.kind == DecodedKind::LegacySigned;
                let mut sum = 0f32;
                for (b, y) in a.q8.iter().enumerate() {
                    let codes = &dec.codes[QK * b..QK * (b + 1)];
                    let sumi: i32 = codes
                        .iter()
                        .zip(&y.qs)
                        .map(|(&c, &q)| {
                            let u = if signed { c as i8 as i32 } else { c as i32 };
                            u * q as i32
                        })
                        .sum();
                    sum += dec.d[b] * y.d * sumi as f32 + dec.off[b] * y.s;
                }
                sum
            }
            DecodedKind::K => {
                let mut sum = 0f32;
                for (s, y) in a.q8k.iter().enumerate() {
                    let mut isum = 0i32;
                    for c in 0..8 {
                        for l in 0..32 {
                            let u = dec.codes[QK_K * s + 32 * c + l] as i32;
                            let sc = dec.sc[8 * s + c][8 * (l / 16)] as i32;
                            isum += sc * u * y.qs[32 * c + l] as i32;
                        }
                    }
                    let msum: i32 = dec.mn[s]
                        .iter()
                        .zip(&y.bsums)
                        .map(|(&m, &b)| m as i32 * b as i32)
                        .sum();
                    sum += y.d * (dec.d[s] * isum as f32 - dec.off[s] * msum as f32);
                }
                sum
            }
        };
    }
}
