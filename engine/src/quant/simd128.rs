//! wasm32 `simd128` dot products on prepared activations (compiled only with
//! `-C target-feature=+simd128`). Same arithmetic as `scalar.rs`; simd128 has no u8×i8
//! multiply-add, so products are formed as i16 with `extmul`, summed in i16 while they cannot
//! overflow, then widened (`extadd_pairwise`) or scaled and widened at once (`i32x4.dot_i16x8`).
//! Kernels for the other types fall back to `scalar.rs`. Inspired by the wasm paths in llama.cpp
//! `ggml-cpu/arch/wasm/quants.c`.
//!
//! Built with `+relaxed-simd` as well (the app's multi-threaded build), the u8 × i8 products take
//! `i16x8.relaxed_dot_i8x16_i7x16_s` (x86 `pmaddubsw`) with the codes as the 7-bit operand, so
//! every result is defined by the spec and identical to the plain build's. Measured in headless
//! Chromium, same run (2026-11-30, SmolLM2-135M Q4_1, 1 thread): prefill 64–65 → 87–97 tok/s,
//! decode 39–40 → 44–47 tok/s.

use core::arch::wasm32::*;

use half::f16;

use super::blocks::*;
use super::{GgmlDType, PreparedActs};

/// Whether [`vec_dot`] has a kernel for `dtype`.
pub(crate) fn supports(dtype: GgmlDType) -> bool {
    matches!(
        dtype,
        GgmlDType::F32
            | GgmlDType::Q4_0
            | GgmlDType::Q4_1
            | GgmlDType::Q5_0
            | GgmlDType::Q5_1
            | GgmlDType::Q8_0
            | GgmlDType::Q4K
            | GgmlDType::Q5K
            | GgmlDType::Q6K
    )
}

/// simd128 dot product, or `None` when there is no kernel for `dtype`. Arguments were checked by
/// the caller (format and row length).
pub(crate) fn vec_dot(dtype: GgmlDType, row: &[u8], acts: &PreparedActs) -> Option<f32> {
    let mut out = [0f32];
    vec_dot_tile(dtype, row, std::slice::from_ref(acts), &mut out).then_some(out[0])
}

/// Dot products of one weight row with up to [`TILE`](super::TILE) tokens, each block's codes
/// unpacked once for all of them; every token's arithmetic is that of a single-token call (bit
/// for bit). `false` when there is no kernel for `dtype`. Arguments were checked by the caller
/// (formats, row length, `out.len() == acts.len()`, 1..=TILE tokens).
pub(crate) fn vec_dot_tile(
    dtype: GgmlDType,
    row: &[u8],
    acts: &[PreparedActs],
    out: &mut [f32],
) -> bool {
    macro_rules! tile {
        ($f:ident, $field:ident) => {
            match acts.len() {
                1 => tile!(@n 1, $f, $field),
                2 => tile!(@n 2, $f, $field),
                3 => tile!(@n 3, $f, $field),
                4 => tile!(@n 4, $f, $field),
                n => unreachable!("tile of {n} tokens"),
            }
        };
        (@n $n:literal, $f:ident, $field:ident) => {{
            let r: [f32; $n] = $f::<$n>(
                super::row_blocks(row),
                std::array::from_fn(|t| &acts[t].$field[..]),
            );
            out.copy_from_slice(&r);
        }};
    }
    macro_rules! legacy {
        ($f:ident) => {
            match acts.len() {
                1 => legacy!(@n 1, $f),
                2 => legacy!(@n 2, $f),
                3 => legacy!(@n 3, $f),
                4 => legacy!(@n 4, $f),
                n => unreachable!("tile of {n} tokens"),
            }
        };
        (@n $n:literal, $f:ident) => {{
            let r: [f32; $n] = $f::<$n>(super::row_blocks(row), std::array::from_fn(|t| &acts[t]));
            out.copy_from_slice(&r);
        }};
    }
    match dtype {
        GgmlDType::F32 => {
            for (o, a) in out.iter_mut().zip(acts) {
                *o = dot_f32(row, &a.x);
            }
        }
        GgmlDType::Q4_0 => legacy!(dot_q4_0),
        GgmlDType::Q4_1 => legacy!(dot_q4_1),
        GgmlDType::Q5_0 => legacy!(dot_q5_0),
        GgmlDType::Q5_1 => legacy!(dot_q5_1),
        GgmlDType::Q8_0 => legacy!(dot_q8_0),
        GgmlDType::Q4K => tile!(dot_q4k, q8k),
        GgmlDType::Q5K => tile!(dot_q5k, q8k),
        GgmlDType::Q6K => tile!(dot_q6k, q8k),
        _ => return false,
    }
    true
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// Branch-light f16 → f32: shift the magnitude into f32 position and rescale by 2^112 (exact for
/// normals and subnormals); infinities and NaNs are rebuilt explicitly.
#[inline(always)]
fn h2f(h: f16) -> f32 {
    let b = h.to_bits() as u32;
    let sign = (b & 0x8000) << 16;
    let mag = b & 0x7FFF;
    let v = if mag >= 0x7C00 {
        0x7F80_0000 | ((mag & 0x03FF) << 13)
    } else {
        (f32::from_bits(mag << 13) * f32::from_bits(0x7780_0000)).to_bits()
    };
    f32::from_bits(v | sign)
}

/// [`h2f`] of four f16s (their bits in the low halves of u32 lanes), bit for bit.
#[inline(always)]
fn h2f_x4(bits: v128) -> v128 {
    let sign = i32x4_shl(v128_and(bits, u32x4_splat(0x8000)), 16);
    let mag = v128_and(bits, u32x4_splat(0x7FFF));
    let finite = f32x4_mul(i32x4_shl(mag, 13), f32x4_splat(f32::from_bits(0x7780_0000)));
    let special = v128_or(
        u32x4_splat(0x7F80_0000),
        i32x4_shl(v128_and(mag, u32x4_splat(0x03FF)), 13),
    );
    let is_special = i32x4_ge(mag, u32x4_splat(0x7C00));
    v128_or(v128_bitselect(special, finite, is_special), sign)
}

/// The f16 scales of blocks `i..i + 4` as f32 lanes.
#[inline(always)]
fn scales_x4<B>(w: &[B], i: usize, bits: impl Fn(&B) -> f16 + Copy) -> v128 {
    let b = |j: usize| bits(&w[i + j]).to_bits() as u32;
    h2f_x4(u32x4(b(0), b(1), b(2), b(3)))
}

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

/// Σ u·y over 16 lanes as 8 i16 (pairwise-summed products; `|u·y|` pairs must fit i16), for
/// unsigned codes `u` < 128 and signed activations `y`. Which lanes are paired differs between
/// the two builds; every caller sums all 8 lanes with one weight (widening, or `i32x4.dot_i16x8`
/// with a splat scale), so the result is the same integer.
///
/// With `+relaxed-simd` (the multi-threaded build) one `i16x8.relaxed_dot_i8x16_i7x16_s`: `u`
/// is the 7-bit operand, so the result is defined (no implementation choice) and on x86 it is
/// one `pmaddubsw`, as the AVX2 kernels. Without it, two `extmul`s and an add.
#[inline(always)]
fn mul16(u: v128, y: v128) -> v128 {
    #[cfg(target_feature = "relaxed-simd")]
    {
        i16x8_relaxed_dot_i8x16_i7x16(y, u)
    }
    #[cfg(not(target_feature = "relaxed-simd"))]
    {
        mul16_signed(u, y)
    }
}

/// Σ w·y over 16 lanes as 8 i16 for signed `w` and `y` (`|w·y|` pairs must fit i16).
#[inline(always)]
fn mul16_signed(w: v128, y: v128) -> v128 {
    i16x8_add(i16x8_extmul_low_i8x16(w, y), i16x8_extmul_high_i8x16(w, y))
}

/// Byte `j` = 0xFF where bit `j + 16 * half` of `bits` is set.
#[inline(always)]
fn bits_to_bytes(bits: u32, upper: bool) -> v128 {
    let v = u32x4_splat(bits);
    let pick = if upper {
        u8x16(2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3)
    } else {
        u8x16(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1)
    };
    let mask = u8x16(1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128);
    i8x16_eq(v128_and(i8x16_swizzle(v, pick), mask), mask)
}

// ---------------------------------------------------------------------------------------------
// Float rows

fn dot_f32(row: &[u8], x: &[f32]) -> f32 {
    let n = x.len().min(row.len() / 4);
    let mut acc = [f32x4_splat(0.0); 4];
    let mut i = 0;
    while i + 16 <= n {
        for (k, a) in acc.iter_mut().enumerate() {
            let o = i + 4 * k;
            let w = load16(&row[4 * o..4 * o + 16]);
            *a = f32x4_add(*a, f32x4_mul(w, load16(&x[o..o + 4])));
        }
        i += 16;
    }
    let s = f32x4_add(f32x4_add(acc[0], acc[1]), f32x4_add(acc[2], acc[3]));
    let mut sum = hsum_f32(s);
    while i < n {
        let b = &row[4 * i..4 * i + 4];
        sum += f32::from_le_bytes([b[0], b[1], b[2], b[3]]) * x[i];
        i += 1;
    }
    sum
}

// ---------------------------------------------------------------------------------------------
// Legacy 32-element blocks: per block `d dy Σ u·qy + off · s` with unsigned codes `u` (< 32)
// and offset `off` (`m`, `-8 d`, `-16 d`).

/// Per block `d dy Σ u·qy + off · s`. In a tile of 2–4 tokens (prefill) blocks go 4 at a time:
/// their scales are converted in one vector ([`h2f_x4`]) and multiplied by each token's 4
/// contiguous `dy` (`q8_d`), and the offsets by the 4 `s` (`q8_s`), where a block at a time took
/// two scalar f16 conversions (Q4_1, Q5_1) or one, a multiply and a splat per token; each
/// block's integer sum is scaled by its lane of that vector. Every product and sum is the one
/// block by block computes, in the same order, so results do not depend on the tile size.
///
/// `d` gives a block's scale, `m` its minimum where `MIN` (Q4_1, Q5_1), else the offset is
/// `k · d` (`-8`, `-16`).
#[inline(always)]
fn legacy_loop<B, const N: usize, const MIN: bool>(
    w: &[B],
    a: [&PreparedActs; N],
    codes: impl Fn(&B) -> (v128, v128),
    d: impl Fn(&B) -> f16 + Copy,
    m: impl Fn(&B) -> f16 + Copy,
    k: f32,
) -> [f32; N] {
    if N == 1 {
        // A single token (decode) goes block by block: grouped, Q5_0 measured 1.1× slower there
        // and Q4_1 no faster (Node's V8, 2026-11-30); in a tile the groups are 1.2–1.5× faster.
        return legacy_blocks(w, std::array::from_fn(|t| &a[t].q8[..]), codes, |b| {
            let db = h2f(d(b));
            (db, if MIN { h2f(m(b)) } else { db * k })
        });
    }
    let nb = w.len();
    for y in a {
        assert!(y.q8.len() == nb && y.q8_d.len() == nb && y.q8_s.len() == nb);
    }
    let q8: [&[ActBlockQ8]; N] = std::array::from_fn(|t| &a[t].q8[..nb]);
    let qd: [&[f32]; N] = std::array::from_fn(|t| &a[t].q8_d[..nb]);
    let qs: [&[f32]; N] = std::array::from_fn(|t| &a[t].q8_s[..nb]);
    // Codes < 32: four products of at most 31·127 fit i16.
    let block_sum = |u0: v128, u1: v128, y: &ActBlockQ8| {
        let s16 = i16x8_add(
            mul16(u0, load16(&y.qs[..16])),
            mul16(u1, load16(&y.qs[16..])),
        );
        f32x4_convert_i32x4(i32x4_extadd_pairwise_i16x8(s16))
    };
    let mut acc = [f32x4_splat(0.0); N];
    let mut off_sum = [0f32; N];
    let mut i = 0;
    while i + 4 <= nb {
        let dv = scales_x4(w, i, d);
        let offv = if MIN {
            scales_x4(w, i, m)
        } else {
            f32x4_mul(dv, f32x4_splat(k))
        };
        let mut scale = [f32x4_splat(0.0); N];
        for t in 0..N {
            scale[t] = f32x4_mul(dv, load16(&qd[t][i..i + 4]));
            // Added in block order, as block by block: the same sum for any tile size.
            let o = f32x4_mul(offv, load16(&qs[t][i..i + 4]));
            off_sum[t] += f32x4_extract_lane::<0>(o);
            off_sum[t] += f32x4_extract_lane::<1>(o);
            off_sum[t] += f32x4_extract_lane::<2>(o);
            off_sum[t] += f32x4_extract_lane::<3>(o);
        }
        // Block j of the 4: its codes once, then every token's sum scaled by lane j.
        macro_rules! block {
            ($j:literal) => {{
                let (u0, u1) = codes(&w[i + $j]);
                for t in 0..N {
                    let s = block_sum(u0, u1, &q8[t][i + $j]);
                    let sc = i32x4_shuffle::<$j, $j, $j, $j>(scale[t], scale[t]);
                    acc[t] = f32x4_add(acc[t], f32x4_mul(s, sc));
                }
            }};
        }
        block!(0);
        block!(1);
        block!(2);
        block!(3);
        i += 4;
    }
    for (i, b) in w.iter().enumerate().skip(i) {
        let (u0, u1) = codes(b);
        let db = h2f(d(b));
        let off = if MIN { h2f(m(b)) } else { db * k };
        for t in 0..N {
            let y = &q8[t][i];
            let s = block_sum(u0, u1, y);
            acc[t] = f32x4_add(acc[t], f32x4_mul(s, f32x4_splat(db * y.d)));
            off_sum[t] += off * y.s;
        }
    }
    std::array::from_fn(|t| hsum_f32(acc[t]) + off_sum[t])
}

/// [`legacy_loop`] block by block; `d_off` gives a block's scale and offset.
#[inline(always)]
fn legacy_blocks<B, const N: usize>(
    w: &[B],
    a: [&[ActBlockQ8]; N],
    codes: impl Fn(&B) -> (v128, v128),
    d_off: impl Fn(&B) -> (f32, f32),
) -> [f32; N] {
    let mut acc = [f32x4_splat(0.0); N];
    let mut off_sum = [0f32; N];
    for (i, b) in w.iter().enumerate() {
        let (u0, u1) = codes(b);
        let (d, off) = d_off(b);
        for t in 0..N {
            let y = &a[t][i];
            // Codes < 32: four products of at most 31·127 fit i16.
            let s16 = i16x8_add(
                mul16(u0, load16(&y.qs[..16])),
                mul16(u1, load16(&y.qs[16..])),
            );
            let s = f32x4_convert_i32x4(i32x4_extadd_pairwise_i16x8(s16));
            acc[t] = f32x4_add(acc[t], f32x4_mul(s, f32x4_splat(d * y.d)));
            off_sum[t] += off * y.s;
        }
    }
    std::array::from_fn(|t| hsum_f32(acc[t]) + off_sum[t])
}

/// Low nibbles (elements 0..16) and high nibbles (16..32) of a legacy block.
#[inline(always)]
fn nibbles(qs: &[u8; 16]) -> (v128, v128) {
    let q = load16(&qs[..]);
    (v128_and(q, u8x16_splat(0x0F)), u8x16_shr(q, 4))
}

#[inline(always)]
fn q5_codes(qs: &[u8; 16], qh: [u8; 4]) -> (v128, v128) {
    let (lo, hi) = nibbles(qs);
    let bits = u32::from_le_bytes(qh);
    let b16 = u8x16_splat(0x10);
    (
        v128_or(lo, v128_and(bits_to_bytes(bits, false), b16)),
        v128_or(hi, v128_and(bits_to_bytes(bits, true), b16)),
    )
}

fn dot_q4_0<const N: usize>(w: &[BlockQ4_0], a: [&PreparedActs; N]) -> [f32; N] {
    legacy_loop::<_, N, false>(w, a, |b| nibbles(&b.qs), |b| b.d, |b| b.d, -8.0)
}

fn dot_q4_1<const N: usize>(w: &[BlockQ4_1], a: [&PreparedActs; N]) -> [f32; N] {
    legacy_loop::<_, N, true>(w, a, |b| nibbles(&b.qs), |b| b.d, |b| b.m, 0.0)
}

fn dot_q5_0<const N: usize>(w: &[BlockQ5_0], a: [&PreparedActs; N]) -> [f32; N] {
    legacy_loop::<_, N, false>(w, a, |b| q5_codes(&b.qs, b.qh), |b| b.d, |b| b.d, -16.0)
}

fn dot_q5_1<const N: usize>(w: &[BlockQ5_1], a: [&PreparedActs; N]) -> [f32; N] {
    legacy_loop::<_, N, true>(w, a, |b| q5_codes(&b.qs, b.qh), |b| b.d, |b| b.m, 0.0)
}

/// A Q8_0 block's `(|w0|, |w1|, w0 < 0, w1 < 0)` for the relaxed dot.
type Q8Abs = (v128, v128, v128, v128);

/// Σ w·y of one Q8_0 block (codes `w0`, `w1`) with one token's block, as 4 i32 lanes.
///
/// With relaxed SIMD: Σ w·y = Σ |w| · (y · sgn w) with |w| as the 7-bit operand, so a pair of
/// products (at most 2 · 127 · 127) fits i16. A block with a code of -128 (|w| = 0x80;
/// llama.cpp's quantizer writes ±127 at most) takes the exact signed path: for a 7-bit operand
/// with its top bit set the relaxed dot may answer either way, and V8's two compilers differ.
/// `abs` is `(|w0|, |w1|, w0 < 0, w1 < 0)` when no code is -128.
#[inline(always)]
fn q8_block_sum(w0: v128, w1: v128, abs: Option<Q8Abs>, y: &ActBlockQ8) -> v128 {
    let (y0, y1) = (load16(&y.qs[..16]), load16(&y.qs[16..]));
    #[cfg(target_feature = "relaxed-simd")]
    if let Some((u0, u1, neg0, neg1)) = abs {
        let s0 = v128_bitselect(i8x16_neg(y0), y0, neg0);
        let s1 = v128_bitselect(i8x16_neg(y1), y1, neg1);
        // Widened by `i32x4.dot_i16x8` with ones: LLVM folds an `extadd_pairwise` of the dot
        // into `i32x4.relaxed_dot_i8x16_i7x16_add`, which Node 20's baseline compiler (Liftoff)
        // gets wrong.
        let ones = i16x8_splat(1);
        return f32x4_convert_i32x4(i32x4_add(
            i32x4_dot_i16x8(i16x8_relaxed_dot_i8x16_i7x16(s0, u0), ones),
            i32x4_dot_i16x8(i16x8_relaxed_dot_i8x16_i7x16(s1, u1), ones),
        ));
    }
    #[cfg(not(target_feature = "relaxed-simd"))]
    let _ = abs;
    f32x4_convert_i32x4(q8_sum_signed(w0, w1, y0, y1))
}

/// A Q8_0 block's codes and, where relaxed SIMD runs and no code is -128, their magnitudes and
/// signs for [`q8_block_sum`].
#[inline(always)]
fn q8_codes(b: &BlockQ8_0) -> (v128, v128, Option<Q8Abs>) {
    let (w0, w1) = (load16(&b.qs[..16]), load16(&b.qs[16..]));
    #[cfg(target_feature = "relaxed-simd")]
    let abs = {
        let (u0, u1) = (i8x16_abs(w0), i8x16_abs(w1));
        (i8x16_bitmask(v128_or(u0, u1)) == 0).then(|| {
            let zero = i8x16_splat(0);
            (u0, u1, i8x16_lt(w0, zero), i8x16_lt(w1, zero))
        })
    };
    #[cfg(not(target_feature = "relaxed-simd"))]
    let abs = None;
    (w0, w1, abs)
}

/// Q8_0: for a single token (decode) 4 blocks' scales in one vector, as [`legacy_loop`] does for
/// a tile (Node's V8, 2026-11-30: 1.7–1.9× faster per row); a tile goes block by block, where
/// the grouped form measured 1.6× slower (register pressure). The same products in the same
/// order either way.
fn dot_q8_0<const N: usize>(w: &[BlockQ8_0], a: [&PreparedActs; N]) -> [f32; N] {
    let nb = w.len();
    for y in a {
        assert!(y.q8.len() == nb && y.q8_d.len() == nb);
    }
    let q8: [&[ActBlockQ8]; N] = std::array::from_fn(|t| &a[t].q8[..nb]);
    let qd: [&[f32]; N] = std::array::from_fn(|t| &a[t].q8_d[..nb]);
    let mut acc = [f32x4_splat(0.0); N];
    let mut i = 0;
    while N == 1 && i + 4 <= nb {
        let dv = scales_x4(w, i, |b| b.d);
        let mut scale = [f32x4_splat(0.0); N];
        for t in 0..N {
            scale[t] = f32x4_mul(dv, load16(&qd[t][i..i + 4]));
        }
        // Block j of the 4: its codes once, then every token's sum scaled by lane j.
        macro_rules! block {
            ($j:literal) => {{
                let (w0, w1, abs) = q8_codes(&w[i + $j]);
                for t in 0..N {
                    let s = q8_block_sum(w0, w1, abs, &q8[t][i + $j]);
                    let sc = i32x4_shuffle::<$j, $j, $j, $j>(scale[t], scale[t]);
                    acc[t] = f32x4_add(acc[t], f32x4_mul(s, sc));
                }
            }};
        }
        block!(0);
        block!(1);
        block!(2);
        block!(3);
        i += 4;
    }
    for (i, b) in w.iter().enumerate().skip(i) {
        let (w0, w1, abs) = q8_codes(b);
        let d = h2f(b.d);
        for t in 0..N {
            let y = &q8[t][i];
            let s = q8_block_sum(w0, w1, abs, y);
            acc[t] = f32x4_add(acc[t], f32x4_mul(s, f32x4_splat(d * y.d)));
        }
    }
    std::array::from_fn(|t| hsum_f32(acc[t]))
}

/// Σ w·y of a 32-element block of signed codes, as 4 i32 lanes. Products reach 128·127, so
/// only pairs are summed in i16.
#[inline(always)]
fn q8_sum_signed(w0: v128, w1: v128, y0: v128, y1: v128) -> v128 {
    i32x4_add(
        i32x4_extadd_pairwise_i16x8(mul16_signed(w0, y0)),
        i32x4_extadd_pairwise_i16x8(mul16_signed(w1, y1)),
    )
}

// ---------------------------------------------------------------------------------------------
// K-quants on Q8_K activations.

/// Σ over the 8 sub-blocks of `mn[s] · (bsums[2s] + bsums[2s + 1])`.
#[inline(always)]
fn k4_min_sum(mn: &[u8; 8], bsums: &[i16; 16]) -> i32 {
    let mut s = 0i32;
    for k in 0..8 {
        s += mn[k] as i32 * (bsums[2 * k] as i32 + bsums[2 * k + 1] as i32);
    }
    s
}

/// Shared Q4_K / Q5_K loop; `codes(b, i)` gives the 4 × 16 codes of sub-blocks `2i` (first two)
/// and `2i + 1` (last two), each < 32.
#[inline(always)]
fn k4_loop<B, const N: usize>(
    w: &[B],
    a: [&[BlockQ8K]; N],
    parts: impl Fn(&B) -> (f16, f16, &[u8; 12]),
    codes: impl Fn(&B, usize) -> [v128; 4],
) -> [f32; N] {
    let mut acc = [f32x4_splat(0.0); N];
    let mut min_sum = [0f32; N];
    for (k, b) in w.iter().enumerate() {
        let (d, dmin, scales) = parts(b);
        let (d, dmin) = (h2f(d), h2f(dmin));
        let (sc, mn) = unpack_k4_scales(scales);
        let mut isum = [i32x4_splat(0); N];
        for i in 0..4 {
            let [l0, l1, h0, h1] = codes(b, i);
            let (sc0, sc1) = (
                i16x8_splat(sc[2 * i] as i16),
                i16x8_splat(sc[2 * i + 1] as i16),
            );
            for t in 0..N {
                let yq = &a[t][k].qs[64 * i..64 * i + 64];
                let s_lo = i16x8_add(mul16(l0, load16(&yq[..16])), mul16(l1, load16(&yq[16..32])));
                let s_hi = i16x8_add(mul16(h0, load16(&yq[32..48])), mul16(h1, load16(&yq[48..])));
                isum[t] = i32x4_add(isum[t], i32x4_dot_i16x8(s_lo, sc0));
                isum[t] = i32x4_add(isum[t], i32x4_dot_i16x8(s_hi, sc1));
            }
        }
        for t in 0..N {
            let y = &a[t][k];
            let dy = y.d;
            acc[t] = f32x4_add(
                acc[t],
                f32x4_mul(f32x4_convert_i32x4(isum[t]), f32x4_splat(d * dy)),
            );
            min_sum[t] += dmin * dy * k4_min_sum(&mn, &y.bsums) as f32;
        }
    }
    std::array::from_fn(|t| hsum_f32(acc[t]) - min_sum[t])
}

fn dot_q4k<const N: usize>(w: &[BlockQ4K], a: [&[BlockQ8K]; N]) -> [f32; N] {
    let low4 = u8x16_splat(0x0F);
    k4_loop(
        w,
        a,
        |b| (b.d, b.dmin, &b.scales),
        |b, i| {
            let q0 = load16(&b.qs[32 * i..]);
            let q1 = load16(&b.qs[32 * i + 16..]);
            [
                v128_and(q0, low4),
                v128_and(q1, low4),
                u8x16_shr(q0, 4),
                u8x16_shr(q1, 4),
            ]
        },
    )
}

fn dot_q5k<const N: usize>(w: &[BlockQ5K], a: [&[BlockQ8K]; N]) -> [f32; N] {
    let low4 = u8x16_splat(0x0F);
    let bit4 = u8x16_splat(0x10);
    k4_loop(
        w,
        a,
        |b| (b.d, b.dmin, &b.scales),
        |b, i| {
            let q0 = load16(&b.qs[32 * i..]);
            let q1 = load16(&b.qs[32 * i + 16..]);
            let (qh0, qh1) = (load16(&b.qh[..16]), load16(&b.qh[16..]));
            // Bit 2i of qh[l] is bit 4 of sub-block 2i, bit 2i + 1 of sub-block 2i + 1.
            let hb = |qh: v128, s: u32| v128_and(u8x16_shl(u8x16_shr(qh, s), 4), bit4);
            let s = 2 * i as u32;
            [
                v128_or(v128_and(q0, low4), hb(qh0, s)),
                v128_or(v128_and(q1, low4), hb(qh1, s)),
                v128_or(u8x16_shr(q0, 4), hb(qh0, s + 1)),
                v128_or(u8x16_shr(q1, 4), hb(qh1, s + 1)),
            ]
        },
    )
}

fn dot_q6k<const N: usize>(w: &[BlockQ6K], a: [&[BlockQ8K]; N]) -> [f32; N] {
    let low4 = u8x16_splat(0x0F);
    let low2 = u8x16_splat(0x03);
    let mut acc = [f32x4_splat(0.0); N];
    for (i, b) in w.iter().enumerate() {
        // Codes u = q + 32 in 0..64: Σ q·qy = Σ u·qy - 32 Σ qy.
        let mut isum: [v128; N] = std::array::from_fn(|t| {
            let mut bias = 0i32;
            for (&sc, &bs) in b.scales.iter().zip(&a[t][i].bsums) {
                bias += sc as i32 * bs as i32;
            }
            i32x4(-32 * bias, 0, 0, 0)
        });
        for n in 0..2 {
            for h in 0..2 {
                let ql0 = load16(&b.ql[64 * n + 16 * h..]);
                let ql1 = load16(&b.ql[64 * n + 32 + 16 * h..]);
                let qh = load16(&b.qh[32 * n + 16 * h..]);
                let codes = [
                    v128_or(v128_and(ql0, low4), u8x16_shl(v128_and(qh, low2), 4)),
                    v128_or(
                        v128_and(ql1, low4),
                        u8x16_shl(v128_and(u8x16_shr(qh, 2), low2), 4),
                    ),
                    v128_or(
                        u8x16_shr(ql0, 4),
                        u8x16_shl(v128_and(u8x16_shr(qh, 4), low2), 4),
                    ),
                    v128_or(u8x16_shr(ql1, 4), u8x16_shl(u8x16_shr(qh, 6), 4)),
                ];
                for (k, &u) in codes.iter().enumerate() {
                    let e = 128 * n + 32 * k + 16 * h;
                    let sc = i16x8_splat(b.scales[e / 16] as i16);
                    for t in 0..N {
                        // Codes < 64: a pair of products fits i16.
                        let s16 = mul16(u, load16(&a[t][i].qs[e..e + 16]));
                        isum[t] = i32x4_add(isum[t], i32x4_dot_i16x8(s16, sc));
                    }
                }
            }
        }
        let d = h2f(b.d);
        for t in 0..N {
            acc[t] = f32x4_add(
                acc[t],
                f32x4_mul(f32x4_convert_i32x4(isum[t]), f32x4_splat(d * a[t][i].d)),
            );
        }
    }
    std::array::from_fn(|t| hsum_f32(acc[t]))
}
