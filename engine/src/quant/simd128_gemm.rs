//! wasm32 simd128 tile kernels of the prefill product (`gemm.rs`): one decoded weight row
//! against up to [`TILE`](super::gemm::TILE) tokens, each 16-code piece loaded once per tile.
//! Products are formed as i16 with `extmul` (simd128 has no u8×i8 multiply-add), then widened
//! (`extadd_pairwise`) or scaled and widened at once (`i32x4.dot_i16x8`), as in `simd128.rs`.

use core::arch::wasm32::*;

use super::decoded::{DecodedKind, DecodedRow};
use super::{PreparedActs, QK, QK_K};

/// 16 bytes starting at `p[0]`.
#[inline(always)]
fn load16<T: bytemuck::Pod>(p: &[T]) -> v128 {
    let bytes: &[u8] = bytemuck::cast_slice(p);
    assert!(bytes.len() >= 16);
    // SAFETY: at least 16 readable bytes; v128_load has no alignment requirement.
    unsafe { v128_load(bytes.as_ptr().cast()) }
}

#[inline(always)]
fn hsum_f32(v: v128) -> f32 {
    f32x4_extract_lane::<0>(v)
        + f32x4_extract_lane::<1>(v)
        + f32x4_extract_lane::<2>(v)
        + f32x4_extract_lane::<3>(v)
}

/// Σ u·y over 16 lanes as 8 i16 (pairwise-summed products; pairs must fit i16).
#[inline(always)]
fn mul16(u: v128, y: v128) -> v128 {
    i16x8_add(i16x8_extmul_low_i8x16(u, y), i16x8_extmul_high_i8x16(u, y))
}

/// `out[t]` for the tokens of `acts` (≤ TILE of them). Arguments were checked by the caller
/// (`gemm::compatible`, `out.len() == acts.len()`).
pub(crate) fn gemm_tile(dec: &DecodedRow, acts: &[PreparedActs], out: &mut [f32]) {
    macro_rules! dispatch {
        ($f:ident $(, $c:expr)?) => {
            match acts.len() {
                1 => $f::<1 $(, $c)?>(dec, acts, out),
                2 => $f::<2 $(, $c)?>(dec, acts, out),
                3 => $f::<3 $(, $c)?>(dec, acts, out),
                4 => $f::<4 $(, $c)?>(dec, acts, out),
                _ => unreachable!("tile of {} tokens", acts.len()),
            }
        };
    }
    match dec.kind {
        DecodedKind::Legacy => dispatch!(legacy, false),
        DecodedKind::LegacySigned => dispatch!(legacy, true),
        DecodedKind::K => dispatch!(kquant),
        DecodedKind::F32 => dispatch!(float),
        DecodedKind::None => out.fill(f32::NAN),
    }
}

/// Legacy blocks: `Σ_b d dy Σ u·qy + off·s` per token. Unsigned codes (< 32) sum four products
/// per i16 lane; signed Q8_0 codes only two (|w·y| ≤ 128·127).
#[inline(always)]
fn legacy<const N: usize, const SIGNED: bool>(
    dec: &DecodedRow,
    acts: &[PreparedActs],
    out: &mut [f32],
) {
    let ys: [&[super::ActBlockQ8]; N] = std::array::from_fn(|t| &acts[t].q8[..]);
    let nb = dec.d.len();
    let mut acc = [f32x4_splat(0.0); N];
    let mut off = [0f32; N];
    for b in 0..nb {
        let codes = &dec.codes[QK * b..QK * (b + 1)];
        let (w0, w1) = (load16(&codes[..16]), load16(&codes[16..]));
        let (d, o) = (dec.d[b], dec.off[b]);
        for t in 0..N {
            let y = &ys[t][b];
            let (p0, p1) = (
                mul16(w0, load16(&y.qs[..16])),
                mul16(w1, load16(&y.qs[16..])),
            );
            let s = if SIGNED {
                i32x4_add(
                    i32x4_extadd_pairwise_i16x8(p0),
                    i32x4_extadd_pairwise_i16x8(p1),
                )
            } else {
                i32x4_extadd_pairwise_i16x8(i16x8_add(p0, p1))
            };
            let s = f32x4_convert_i32x4(s);
            acc[t] = f32x4_add(acc[t], f32x4_mul(s, f32x4_splat(d * y.d)));
            if !SIGNED {
                off[t] += o * y.s;
            }
        }
    }
    for t in 0..N {
        out[t] = hsum_f32(acc[t]) + off[t];
    }
}

/// K-quant super-blocks: `Σ_s dy (d Σ_g sc_g Σ u·qy − dmin Σ_g mn_g bsums_g)` per token.
#[inline(always)]
fn kquant<const N: usize>(dec: &DecodedRow, acts: &[PreparedActs], out: &mut [f32]) {
    let ys: [&[super::BlockQ8K]; N] = std::array::from_fn(|t| &acts[t].q8k[..]);
    let ns = dec.d.len();
    let mut acc = [f32x4_splat(0.0); N];
    for s in 0..ns {
        let mut isum = [i32x4_splat(0); N];
        for c in 0..8 {
            let codes = &dec.codes[QK_K * s + 32 * c..QK_K * s + 32 * (c + 1)];
            let (w0, w1) = (load16(&codes[..16]), load16(&codes[16..]));
            // Lanes 0..8 hold the scale of elements 0..16, lanes 8..16 that of 16..32.
            let scv = &dec.sc[8 * s + c];
            let (sc0, sc1) = (load16(&scv[..8]), load16(&scv[8..]));
            for t in 0..N {
                let yq = &ys[t][s].qs[32 * c..32 * (c + 1)];
                // Codes < 64: two products per lane stay below 2·63·127.
                let p0 = i32x4_dot_i16x8(mul16(w0, load16(&yq[..16])), sc0);
                let p1 = i32x4_dot_i16x8(mul16(w1, load16(&yq[16..])), sc1);
                isum[t] = i32x4_add(isum[t], i32x4_add(p0, p1));
            }
        }
        let mn = &dec.mn[s];
        let (mn0, mn1) = (load16(&mn[..8]), load16(&mn[8..]));
        let (d, dmin) = (dec.d[s], dec.off[s]);
        for t in 0..N {
            let y = &ys[t][s];
            let ms = i32x4_add(
                i32x4_dot_i16x8(mn0, load16(&y.bsums[..8])),
                i32x4_dot_i16x8(mn1, load16(&y.bsums[8..])),
            );
            let v = f32x4_sub(
                f32x4_mul(f32x4_convert_i32x4(isum[t]), f32x4_splat(d * y.d)),
                f32x4_mul(f32x4_convert_i32x4(ms), f32x4_splat(dmin * y.d)),
            );
            acc[t] = f32x4_add(acc[t], v);
        }
    }
    for t in 0..N {
        out[t] = hsum_f32(acc[t]);
    }
}

/// Float rows: `Σ w·x` per token, 4 lanes at a time.
#[inline(always)]
fn float<const N: usize>(dec: &DecodedRow, acts: &[PreparedActs], out: &mut [f32]) {
    let xs: [&[f32]; N] = std::array::from_fn(|t| &acts[t].x[..]);
    let n = dec.f.len();
    let mut acc = [f32x4_splat(0.0); N];
    let mut i = 0;
    while i + 4 <= n {
        let w = load16(&dec.f[i..i + 4]);
        for t in 0..N {
            acc[t] = f32x4_add(acc[t], f32x4_mul(w, load16(&xs[t][i..i + 4])));
        }
        i += 4;
    }
    for t in 0..N {
        let mut s = hsum_f32(acc[t]);
        for j in i..n {
            s += dec.f[j] * xs[t][j];
        }
        out[t] = s;
    }
}
