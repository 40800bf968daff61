//! x86_64 AVX2 + FMA + F16C dot products on prepared activations, selected at run time.
//!
//! The integer core follows the idea of llama.cpp `ggml-cpu/arch/x86/quants.c`: unsigned weight
//! codes times signed int8 activations with `vpmaddubsw`, pairs widened with `vpmaddwd`, one
//! float FMA per block. Offsets (`-8`, `-16`, `-32`, `-4`, mins) are applied through the
//! activation sums instead of per element.

use std::arch::x86_64::*;
use std::sync::atomic::{AtomicU8, Ordering};

use half::f16;

use super::blocks::*;
use super::{GgmlDType, PreparedActs};

/// 0 = not yet detected, 1 = unavailable, 2 = available.
static DETECTED: AtomicU8 = AtomicU8::new(0);

/// Whether AVX2, FMA and F16C are available (detected once, then a relaxed load).
#[inline]
pub(crate) fn available() -> bool {
    match DETECTED.load(Ordering::Relaxed) {
        2 => true,
        1 => false,
        _ => {
            let ok = is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c");
            DETECTED.store(if ok { 2 } else { 1 }, Ordering::Relaxed);
            ok
        }
    }
}

/// Whether [`vec_dot`] has a kernel for `dtype`.
pub(crate) fn supports(dtype: GgmlDType) -> bool {
    !matches!(dtype, GgmlDType::Q8_1 | GgmlDType::Q8K)
}

/// AVX2 dot product, or `None` when there is no kernel for `dtype`. Arguments were checked by
/// the caller (format and row length).
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C ([`available`]).
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn vec_dot(dtype: GgmlDType, row: &[u8], acts: &PreparedActs) -> Option<f32> {
    let mut out = [0f32];
    vec_dot_tile(dtype, row, std::slice::from_ref(acts), &mut out).then_some(out[0])
}

/// Dot products of one weight row with up to [`TILE`](super::TILE) tokens: `out[t] = row ·
/// acts[t]`. Each block's codes (and scales) are unpacked once, in registers, and applied to
/// every token; each token's arithmetic is exactly that of a single-token call, so results do
/// not depend on how tokens are batched. `false` when there is no kernel for `dtype`.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C ([`available`]). Arguments were checked by the caller
/// (format and row length of every token, `out.len() == acts.len()`, 1..=TILE tokens).
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn vec_dot_tile(
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
        GgmlDType::F32 | GgmlDType::BF16 => {
            for (o, a) in out.iter_mut().zip(acts) {
                *o = if dtype == GgmlDType::F32 {
                    dot_f32(row, &a.x)
                } else {
                    dot_bf16(row, &a.x)
                };
            }
        }
        GgmlDType::F16 => match acts.len() {
            1 => out.copy_from_slice(&dot_f16::<1>(row, [&acts[0].x[..]])),
            2 => out.copy_from_slice(&dot_f16::<2>(row, std::array::from_fn(|t| &acts[t].x[..]))),
            3 => out.copy_from_slice(&dot_f16::<3>(row, std::array::from_fn(|t| &acts[t].x[..]))),
            4 => out.copy_from_slice(&dot_f16::<4>(row, std::array::from_fn(|t| &acts[t].x[..]))),
            n => unreachable!("tile of {n} tokens"),
        },
        GgmlDType::Q4_0 => legacy!(dot_q4_0),
        GgmlDType::Q4_1 => legacy!(dot_q4_1),
        GgmlDType::Q5_0 => legacy!(dot_q5_0),
        GgmlDType::Q5_1 => legacy!(dot_q5_1),
        GgmlDType::Q8_0 => legacy!(dot_q8_0),
        GgmlDType::Q2K => tile!(dot_q2k, q8k),
        GgmlDType::Q3K => tile!(dot_q3k, q8k),
        GgmlDType::Q4K => tile!(dot_q4k, q8k),
        GgmlDType::Q5K => tile!(dot_q5k, q8k),
        GgmlDType::Q6K => tile!(dot_q6k, q8k),
        GgmlDType::Q8_1 | GgmlDType::Q8K => return false,
    }
    true
}

// ---------------------------------------------------------------------------------------------
// Helpers

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn hsum_ps(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// f16 → f32 with the F16C instruction.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn h2f(h: f16) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h.to_bits() as i32)))
}

/// 32 bytes from `p` (unaligned).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load256<T>(p: *const T) -> __m256i {
    _mm256_loadu_si256(p.cast())
}

/// Split 16 packed bytes into 32 nibbles: bytes 0..16 = low nibbles, 16..32 = high nibbles.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn nibbles32(qs: &[u8; 16]) -> __m256i {
    let x = _mm_loadu_si128(qs.as_ptr().cast());
    let both = _mm256_set_m128i(_mm_srli_epi16(x, 4), x);
    _mm256_and_si256(both, _mm256_set1_epi8(0x0F))
}

/// Byte `j` = 0xFF where bit `j` of `bits` is set, else 0.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn bits_to_bytes(bits: u32) -> __m256i {
    let v = _mm256_set1_epi32(bits as i32);
    #[rustfmt::skip]
    let pick = _mm256_setr_epi8(
        0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
        2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3,
    );
    let v = _mm256_shuffle_epi8(v, pick);
    let mask = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    _mm256_cmpeq_epi8(_mm256_and_si256(v, mask), mask)
}

/// Σ of u8 × i8 products, 8 lanes of i32 (`u` must be < 128 or pairs must not overflow i16).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_u8_i8(u: __m256i, s: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1))
}

/// Shuffle masks for [`scale_pair`]: for pair `k`, the low half repeats the bytes of i16 lane
/// `2k`, the high half those of lane `2k + 1`.
static SCALE_PAIR_MASKS: [[u8; 32]; 4] = {
    let mut m = [[0u8; 32]; 4];
    let mut k = 0;
    while k < 4 {
        let mut i = 0;
        while i < 32 {
            let lane = 2 * k + i / 16;
            m[k][i] = (2 * lane + i % 2) as u8;
            i += 1;
        }
        k += 1;
    }
    m
};

/// i16 scale vector for `vpmaddwd`: lanes 0..8 = `sc[2k]`, lanes 8..16 = `sc[2k + 1]`, from 8
/// i16 scales broadcast to both halves of `sc8`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scale_pair(sc8: __m256i, k: usize) -> __m256i {
    _mm256_shuffle_epi8(sc8, load256(SCALE_PAIR_MASKS[k & 3].as_ptr()))
}

/// 8 signed bytes → 8 i16 in both 128-bit halves.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn i8x8_to_i16_both(p: &[i8]) -> __m256i {
    debug_assert!(p.len() >= 8);
    let v = _mm_cvtepi8_epi16(_mm_loadl_epi64(p.as_ptr().cast()));
    _mm256_broadcastsi128_si256(v)
}

// ---------------------------------------------------------------------------------------------
// Float rows

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_f32(row: &[u8], x: &[f32]) -> f32 {
    let n = x.len().min(row.len() / 4);
    let (w, xp) = (row.as_ptr().cast::<f32>(), x.as_ptr());
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= n {
        for (k, a) in acc.iter_mut().enumerate() {
            let o = i + 8 * k;
            *a = _mm256_fmadd_ps(_mm256_loadu_ps(w.add(o)), _mm256_loadu_ps(xp.add(o)), *a);
        }
        i += 32;
    }
    while i + 8 <= n {
        acc[0] = _mm256_fmadd_ps(
            _mm256_loadu_ps(w.add(i)),
            _mm256_loadu_ps(xp.add(i)),
            acc[0],
        );
        i += 8;
    }
    let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let mut sum = hsum_ps(s);
    while i < n {
        sum += w.add(i).read_unaligned() * x[i];
        i += 1;
    }
    sum
}

/// F16 row against `N` tokens: each 16 weights converted once.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_f16<const N: usize>(row: &[u8], xs: [&[f32]; N]) -> [f32; N] {
    let mut n = row.len() / 2;
    for x in xs {
        n = n.min(x.len());
    }
    let w = row.as_ptr();
    let mut acc0 = [_mm256_setzero_ps(); N];
    let mut acc1 = [_mm256_setzero_ps(); N];
    let mut i = 0;
    while i + 16 <= n {
        let w0 = _mm256_cvtph_ps(_mm_loadu_si128(w.add(2 * i).cast()));
        let w1 = _mm256_cvtph_ps(_mm_loadu_si128(w.add(2 * i + 16).cast()));
        for t in 0..N {
            let xp = xs[t].as_ptr();
            acc0[t] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xp.add(i)), acc0[t]);
            acc1[t] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xp.add(i + 8)), acc1[t]);
        }
        i += 16;
    }
    let mut out = [0f32; N];
    for t in 0..N {
        let mut sum = hsum_ps(_mm256_add_ps(acc0[t], acc1[t]));
        for j in i..n {
            sum += f16::from_le_bytes([row[2 * j], row[2 * j + 1]]).to_f32() * xs[t][j];
        }
        out[t] = sum;
    }
    out
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_bf16(row: &[u8], x: &[f32]) -> f32 {
    let n = x.len().min(row.len() / 2);
    let (w, xp) = (row.as_ptr(), x.as_ptr());
    let mut acc = _mm256_setzero_ps();
    let mut i = 0;
    while i + 8 <= n {
        let h = _mm256_cvtepu16_epi32(_mm_loadu_si128(w.add(2 * i).cast()));
        let wf = _mm256_castsi256_ps(_mm256_slli_epi32(h, 16));
        acc = _mm256_fmadd_ps(wf, _mm256_loadu_ps(xp.add(i)), acc);
        i += 8;
    }
    let mut sum = hsum_ps(acc);
    while i < n {
        sum += half::bf16::from_le_bytes([row[2 * i], row[2 * i + 1]]).to_f32() * x[i];
        i += 1;
    }
    sum
}

// ---------------------------------------------------------------------------------------------
// Legacy 32-element blocks. Every kernel computes per block `d dy Σ u·qy + off · s` where `u` is
// the unsigned weight code and `off` its offset (`m`, `-8 d`, `-16 d`); `s = dy Σ qy`.

// `h2f_pair` and `legacy_dot_blocks!` read adjacent fields as one.
const _: () = {
    use std::mem::offset_of;
    assert!(offset_of!(BlockQ4_1, d) == 0 && offset_of!(BlockQ4_1, m) == 2);
    assert!(offset_of!(BlockQ5_1, d) == 0 && offset_of!(BlockQ5_1, m) == 2);
    assert!(offset_of!(ActBlockQ8, d) == 0 && offset_of!(ActBlockQ8, s) == 4);
};

/// `[d, m, 0, 0]` from the two f16 at the start of a Q4_1 / Q5_1 block (`d`, `m` adjacent).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn h2f_pair<B>(block: &B) -> __m128 {
    let bits = (block as *const B).cast::<i32>().read_unaligned();
    _mm_cvtph_ps(_mm_cvtsi32_si128(bits))
}

/// `[d, k·d, 0, 0]` for the symmetric types (`off = -8 d` or `-16 d`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn h2f_with_offset(d: f16, k: f32) -> __m128 {
    let d = _mm_cvtph_ps(_mm_cvtsi32_si128(d.to_bits() as i32));
    _mm_mul_ps(_mm_moveldup_ps(d), _mm_setr_ps(1.0, k, 0.0, 0.0))
}

/// Block-by-block loop over `N` tokens (rows whose block count is not a multiple of 8). `$codes` (an expression in `$b`, the weight block) gives
/// the 32 unsigned codes, `$d_off` the vector `[d, off, _, _]`, both computed once per block;
/// per token one multiply by `[dy, s, _, _]` (adjacent in [`ActBlockQ8`]) yields both the block
/// scale and the offset term. Two blocks per iteration keep two FMA chains in flight per token.
/// A macro rather than a closure-taking function so that everything inlines into the
/// `#[target_feature]` kernel.
macro_rules! legacy_dot_blocks {
    ($w:expr, $a:expr, |$b:ident| $codes:expr, $d_off:expr) => {{
        let (w, a): (_, [&PreparedActs; N]) = ($w, $a);
        let nb = w.len();
        for y in a {
            assert_eq!(y.q8.len(), nb, "activation blocks");
        }
        let mut acc = [[_mm256_setzero_ps(); 2]; N];
        let mut off = [[_mm_setzero_ps(); 2]; N];
        macro_rules! step {
            ($i:expr, $k:expr) => {{
                let $b = w.get_unchecked($i);
                let codes = $codes;
                let d_off = $d_off;
                for t in 0..N {
                    let y: &ActBlockQ8 = a[t].q8.get_unchecked($i);
                    let p = _mm256_cvtepi32_ps(dot_u8_i8(codes, load256(y.qs.as_ptr())));
                    let dy_s = _mm_castpd_ps(_mm_load_sd((y as *const ActBlockQ8).cast::<f64>()));
                    let ds = _mm_mul_ps(d_off, dy_s);
                    acc[t][$k] = _mm256_fmadd_ps(_mm256_broadcastss_ps(ds), p, acc[t][$k]);
                    off[t][$k] = _mm_add_ps(off[t][$k], ds);
                }
            }};
        }
        let mut i = 0;
        while i + 2 <= nb {
            step!(i, 0);
            step!(i + 1, 1);
            i += 2;
        }
        if i < nb {
            step!(i, 0);
        }
        let mut out = [0f32; N];
        for t in 0..N {
            let o = _mm_add_ps(off[t][0], off[t][1]);
            out[t] =
                hsum_ps(_mm256_add_ps(acc[t][0], acc[t][1])) + _mm_cvtss_f32(_mm_movehdup_ps(o));
        }
        out
    }};
}

/// Shared block loop over `N` tokens, 8 blocks at a time (rows of a multiple of 8 blocks). `$codes` (an expression in `$b`, the
/// weight block) gives the 32 codes, unpacked once per block for all tokens. Per token the 8
/// blocks' i32 sums are reduced by a `vphaddd` tree into one vector (lane j = block j), so the
/// scales `d_w · d_y` and the offsets `off · s` of 8 blocks take one multiply and two FMAs
/// (as llama.cpp's repacked ×8 kernels apply 8 scales at once). `$d` / `$m` give a block's f16
/// scale and minimum bits, `$off` the offset vector from the scale vector `dv` and minimum
/// vector `mv` (`None` for Q8_0). `$signed`: codes are signed (Q8_0; sign trick). A macro so
/// that everything inlines into the `#[target_feature]` kernel.
macro_rules! legacy_dot {
    ($w:expr, $a:expr, $signed:expr, |$b:ident| $codes:expr, $d:expr, $m:expr,
     |$dv:ident, $mv:ident| $off:expr) => {{
        let (w, a): (_, [&PreparedActs; N]) = ($w, $a);
        let nb = w.len();
        for y in a {
            assert!(y.q8.len() == nb && y.q8_d.len() == nb && y.q8_s.len() == nb);
        }
        let mut acc = [_mm256_setzero_ps(); N];
        let mut g0 = 0;
        while g0 < nb {
            let cnt = (nb - g0).min(8);
            let mut half = [[_mm256_setzero_si256(); 4]; N];
            let mut prev = [_mm256_setzero_si256(); N];
            let mut dbits = [0u16; 8];
            let mut mbits = [0u16; 8];
            for j in 0..8 {
                if j < cnt {
                    let $b = w.get_unchecked(g0 + j);
                    dbits[j] = $d;
                    mbits[j] = $m;
                    let codes: __m256i = $codes;
                    let abs = if $signed {
                        _mm256_sign_epi8(codes, codes)
                    } else {
                        codes
                    };
                    for t in 0..N {
                        let mut yq = load256(a[t].q8.get_unchecked(g0 + j).qs.as_ptr());
                        if $signed {
                            yq = _mm256_sign_epi8(yq, codes);
                        }
                        let v = dot_u8_i8(abs, yq);
                        if j % 2 == 0 {
                            prev[t] = v;
                        } else {
                            half[t][j / 2] = _mm256_hadd_epi32(prev[t], v);
                        }
                    }
                } else {
                    for t in 0..N {
                        if j % 2 == 0 {
                            prev[t] = _mm256_setzero_si256();
                        } else {
                            half[t][j / 2] = _mm256_hadd_epi32(prev[t], _mm256_setzero_si256());
                        }
                    }
                }
            }
            let $dv = _mm256_cvtph_ps(_mm_loadu_si128(dbits.as_ptr().cast()));
            let $mv = _mm256_cvtph_ps(_mm_loadu_si128(mbits.as_ptr().cast()));
            let off: Option<__m256> = $off;
            for t in 0..N {
                let q0 = _mm256_hadd_epi32(half[t][0], half[t][1]);
                let q1 = _mm256_hadd_epi32(half[t][2], half[t][3]);
                let sum = _mm256_add_epi32(
                    _mm256_permute2x128_si256(q0, q1, 0x20),
                    _mm256_permute2x128_si256(q0, q1, 0x31),
                );
                let (dy, sy) = if cnt == 8 {
                    (
                        _mm256_loadu_ps(a[t].q8_d.as_ptr().add(g0)),
                        _mm256_loadu_ps(a[t].q8_s.as_ptr().add(g0)),
                    )
                } else {
                    let (mut d8, mut s8) = ([0f32; 8], [0f32; 8]);
                    d8[..cnt].copy_from_slice(&a[t].q8_d[g0..g0 + cnt]);
                    s8[..cnt].copy_from_slice(&a[t].q8_s[g0..g0 + cnt]);
                    (_mm256_loadu_ps(d8.as_ptr()), _mm256_loadu_ps(s8.as_ptr()))
                };
                let scale = _mm256_mul_ps($dv, dy);
                acc[t] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(sum), acc[t]);
                if let Some(o) = off {
                    acc[t] = _mm256_fmadd_ps(o, sy, acc[t]);
                }
            }
            g0 += 8;
        }
        let mut out = [0f32; N];
        for t in 0..N {
            out[t] = hsum_ps(acc[t]);
        }
        out
    }};
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q4_0<const N: usize>(w: &[BlockQ4_0], a: [&PreparedActs; N]) -> [f32; N] {
    // Rows of whole groups of 8 blocks take the 8-block reduction; others (e.g. 576 or 640
    // columns) go block by block, where padding a last partial group would cost more.
    if !w.len().is_multiple_of(8) {
        return legacy_dot_blocks!(w, a, |b| nibbles32(&b.qs), h2f_with_offset(b.d, -8.0));
    }
    legacy_dot!(
        w,
        a,
        false,
        |b| nibbles32(&b.qs),
        b.d.to_bits(),
        0,
        |dv, _mv| Some(_mm256_mul_ps(dv, _mm256_set1_ps(-8.0)))
    )
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q4_1<const N: usize>(w: &[BlockQ4_1], a: [&PreparedActs; N]) -> [f32; N] {
    // Rows of whole groups of 8 blocks take the 8-block reduction; others (e.g. 576 or 640
    // columns) go block by block, where padding a last partial group would cost more.
    if !w.len().is_multiple_of(8) {
        return legacy_dot_blocks!(w, a, |b| nibbles32(&b.qs), h2f_pair(b));
    }
    legacy_dot!(
        w,
        a,
        false,
        |b| nibbles32(&b.qs),
        b.d.to_bits(),
        b.m.to_bits(),
        |_dv, mv| Some(mv)
    )
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q5_codes(qs: &[u8; 16], qh: [u8; 4]) -> __m256i {
    let high = _mm256_and_si256(
        bits_to_bytes(u32::from_le_bytes(qh)),
        _mm256_set1_epi8(0x10),
    );
    _mm256_or_si256(nibbles32(qs), high)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q5_0<const N: usize>(w: &[BlockQ5_0], a: [&PreparedActs; N]) -> [f32; N] {
    // Rows of whole groups of 8 blocks take the 8-block reduction; others (e.g. 576 or 640
    // columns) go block by block, where padding a last partial group would cost more.
    if !w.len().is_multiple_of(8) {
        return legacy_dot_blocks!(w, a, |b| q5_codes(&b.qs, b.qh), h2f_with_offset(b.d, -16.0));
    }
    legacy_dot!(
        w,
        a,
        false,
        |b| q5_codes(&b.qs, b.qh),
        b.d.to_bits(),
        0,
        |dv, _mv| Some(_mm256_mul_ps(dv, _mm256_set1_ps(-16.0)))
    )
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q5_1<const N: usize>(w: &[BlockQ5_1], a: [&PreparedActs; N]) -> [f32; N] {
    // Rows of whole groups of 8 blocks take the 8-block reduction; others (e.g. 576 or 640
    // columns) go block by block, where padding a last partial group would cost more.
    if !w.len().is_multiple_of(8) {
        return legacy_dot_blocks!(w, a, |b| q5_codes(&b.qs, b.qh), h2f_pair(b));
    }
    legacy_dot!(
        w,
        a,
        false,
        |b| q5_codes(&b.qs, b.qh),
        b.d.to_bits(),
        b.m.to_bits(),
        |_dv, mv| Some(mv)
    )
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q8_0<const N: usize>(w: &[BlockQ8_0], a: [&PreparedActs; N]) -> [f32; N] {
    // Signed × signed via |w| × (sign(w) · y); |w| <= 128 and |y| <= 127 keep pairs in i16.
    legacy_dot!(
        w,
        a,
        true,
        |b| load256(b.qs.as_ptr()),
        b.d.to_bits(),
        0,
        |_dv, _mv| None
    )
}

// ---------------------------------------------------------------------------------------------
// K-quants on Q8_K activations: per super-block an i32 vector of scale-weighted integer sums,
// one FMA per super-block; min terms go through the activation group sums `bsums`. Codes and
// scales are unpacked once per super-block for all `N` tokens.

/// Checks that every token has one Q8_K block per weight super-block.
#[inline]
fn check_k<const N: usize>(nb: usize, a: &[&[BlockQ8K]; N]) {
    for y in a {
        assert_eq!(y.len(), nb, "activation blocks");
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q2k<const N: usize>(w: &[BlockQ2K], a: [&[BlockQ8K]; N]) -> [f32; N] {
    check_k(w.len(), &a);
    let mut acc = [_mm256_setzero_ps(); N];
    let mut acc_min = [_mm256_setzero_ps(); N];
    let low2 = _mm256_set1_epi8(3);
    for (i, b) in w.iter().enumerate() {
        // Group scales (low nibbles) and mins (high nibbles) as i16.
        let raw = _mm_loadu_si128(b.scales.as_ptr().cast());
        let sc = _mm_and_si128(raw, _mm_set1_epi8(0x0F));
        let mn = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(raw, 4), _mm_set1_epi8(0x0F)));
        let mut isum = [_mm256_setzero_si256(); N];
        let sc_lo = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(sc));
        let sc_hi = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(_mm_srli_si128(sc, 8)));
        for n in 0..2 {
            let sc8 = if n == 0 { sc_lo } else { sc_hi };
            let mut q = load256(b.qs.as_ptr().add(32 * n));
            for j in 0..4 {
                let codes = _mm256_and_si256(q, low2);
                let scv = scale_pair(sc8, j);
                for t in 0..N {
                    let yq = load256(a[t].get_unchecked(i).qs.as_ptr().add(128 * n + 32 * j));
                    let p = _mm256_maddubs_epi16(codes, yq);
                    isum[t] = _mm256_add_epi32(isum[t], _mm256_madd_epi16(p, scv));
                }
                q = _mm256_srli_epi16(q, 2);
            }
        }
        let (d, dmin) = (h2f(b.d), h2f(b.dmin));
        for t in 0..N {
            let y = a[t].get_unchecked(i);
            let mins = _mm256_madd_epi16(mn, load256(y.bsums.as_ptr()));
            let dy = y.d;
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * dy), _mm256_cvtepi32_ps(isum[t]), acc[t]);
            acc_min[t] = _mm256_fmadd_ps(
                _mm256_set1_ps(dmin * dy),
                _mm256_cvtepi32_ps(mins),
                acc_min[t],
            );
        }
    }
    let mut out = [0f32; N];
    for t in 0..N {
        out[t] = hsum_ps(_mm256_sub_ps(acc[t], acc_min[t]));
    }
    out
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q3k<const N: usize>(w: &[BlockQ3K], a: [&[BlockQ8K]; N]) -> [f32; N] {
    check_k(w.len(), &a);
    let mut acc = [_mm256_setzero_ps(); N];
    let low2 = _mm256_set1_epi8(3);
    let four = _mm256_set1_epi8(4);
    for (i, b) in w.iter().enumerate() {
        let scales = unpack_q3k_scales(&b.scales);
        // Codes u = low2 + 4·hbit in 0..8, value = u - 4: Σ value·qy = Σ u·qy - 4 Σ qy.
        let sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(scales.as_ptr().cast()));
        let mut isum = [_mm256_setzero_si256(); N];
        for t in 0..N {
            let bias = _mm256_madd_epi16(sc16, load256(a[t].get_unchecked(i).bsums.as_ptr()));
            isum[t] = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(bias, 2));
        }
        let hm = load256(b.hmask.as_ptr());
        for n in 0..2 {
            let sc8 = i8x8_to_i16_both(&scales[8 * n..]);
            let mut q = load256(b.qs.as_ptr().add(32 * n));
            for j in 0..4 {
                let bit = _mm256_set1_epi8((1u8 << (4 * n + j)) as i8);
                let high = _mm256_cmpeq_epi8(_mm256_and_si256(hm, bit), bit);
                let codes =
                    _mm256_or_si256(_mm256_and_si256(q, low2), _mm256_and_si256(high, four));
                let scv = scale_pair(sc8, j);
                for t in 0..N {
                    let yq = load256(a[t].get_unchecked(i).qs.as_ptr().add(128 * n + 32 * j));
                    let p = _mm256_maddubs_epi16(codes, yq);
                    isum[t] = _mm256_add_epi32(isum[t], _mm256_madd_epi16(p, scv));
                }
                q = _mm256_srli_epi16(q, 2);
            }
        }
        let d = h2f(b.d);
        for t in 0..N {
            let dy = a[t].get_unchecked(i).d;
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * dy), _mm256_cvtepi32_ps(isum[t]), acc[t]);
        }
    }
    let mut out = [0f32; N];
    for t in 0..N {
        out[t] = hsum_ps(acc[t]);
    }
    out
}

/// Σ over the 8 sub-blocks of `mn[s] · (bsums[2s] + bsums[2s + 1])`.
#[inline]
fn k4_min_sum(mn: &[u8; 8], bsums: &[i16; 16]) -> i32 {
    let mut s = 0i32;
    for k in 0..8 {
        s += mn[k] as i32 * (bsums[2 * k] as i32 + bsums[2 * k + 1] as i32);
    }
    s
}

/// Q4_K (`Q5 = false`) and Q5_K (`Q5 = true`, fifth bits in `qh`) super-blocks.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_k4<const N: usize, const Q5: bool>(
    blocks: impl Iterator<Item = (f16, f16, [u8; 12], *const u8, *const u8)>,
    a: [&[BlockQ8K]; N],
) -> [f32; N] {
    let mut acc = [_mm256_setzero_ps(); N];
    let mut min_sum = [0f32; N];
    let low4 = _mm256_set1_epi8(0x0F);
    let bit4 = _mm256_set1_epi8(0x10);
    for (i, (d, dmin, scales, qs, qh)) in blocks.enumerate() {
        let (sc, mn) = unpack_k4_scales(&scales);
        let hq = if Q5 {
            load256(qh)
        } else {
            _mm256_setzero_si256()
        };
        let mut isum = [_mm256_setzero_si256(); N];
        for j in 0..4 {
            let q = load256(qs.add(32 * j));
            let mut lo = _mm256_and_si256(q, low4);
            let mut hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), low4);
            if Q5 {
                let m0 = _mm256_set1_epi8((1u8 << (2 * j)) as i8);
                let m1 = _mm256_set1_epi8((1u8 << (2 * j + 1)) as i8);
                let h0 = _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(hq, m0), m0), bit4);
                let h1 = _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(hq, m1), m1), bit4);
                lo = _mm256_or_si256(lo, h0);
                hi = _mm256_or_si256(hi, h1);
            }
            let sc0 = _mm256_set1_epi16(sc[2 * j] as i16);
            let sc1 = _mm256_set1_epi16(sc[2 * j + 1] as i16);
            for t in 0..N {
                let yq = a[t].get_unchecked(i).qs.as_ptr();
                let p0 = _mm256_maddubs_epi16(lo, load256(yq.add(64 * j)));
                let p1 = _mm256_maddubs_epi16(hi, load256(yq.add(64 * j + 32)));
                let s0 = _mm256_madd_epi16(p0, sc0);
                let s1 = _mm256_madd_epi16(p1, sc1);
                isum[t] = _mm256_add_epi32(isum[t], _mm256_add_epi32(s0, s1));
            }
        }
        let (d, dmin) = (h2f(d), h2f(dmin));
        for t in 0..N {
            let y = a[t].get_unchecked(i);
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * y.d), _mm256_cvtepi32_ps(isum[t]), acc[t]);
            min_sum[t] += dmin * y.d * k4_min_sum(&mn, &y.bsums) as f32;
        }
    }
    let mut out = [0f32; N];
    for t in 0..N {
        out[t] = hsum_ps(acc[t]) - min_sum[t];
    }
    out
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q4k<const N: usize>(w: &[BlockQ4K], a: [&[BlockQ8K]; N]) -> [f32; N] {
    check_k(w.len(), &a);
    let it = w
        .iter()
        .map(|b| (b.d, b.dmin, b.scales, b.qs.as_ptr(), std::ptr::null()));
    dot_k4::<N, false>(it, a)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q5k<const N: usize>(w: &[BlockQ5K], a: [&[BlockQ8K]; N]) -> [f32; N] {
    check_k(w.len(), &a);
    let it = w
        .iter()
        .map(|b| (b.d, b.dmin, b.scales, b.qs.as_ptr(), b.qh.as_ptr()));
    dot_k4::<N, true>(it, a)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q6k<const N: usize>(w: &[BlockQ6K], a: [&[BlockQ8K]; N]) -> [f32; N] {
    check_k(w.len(), &a);
    let mut acc = [_mm256_setzero_ps(); N];
    let low4 = _mm256_set1_epi8(0x0F);
    let m2 = _mm256_set1_epi8(0x03);
    let m4 = _mm256_set1_epi8(0x0C);
    let m6 = _mm256_set1_epi8(0x30);
    let m8 = _mm256_set1_epi8(0xC0u8 as i8);
    for (i, b) in w.iter().enumerate() {
        // Codes u = q + 32 in 0..64: Σ q·qy = Σ u·qy - 32 Σ qy.
        let sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(b.scales.as_ptr().cast()));
        let mut isum = [_mm256_setzero_si256(); N];
        for t in 0..N {
            let bias = _mm256_madd_epi16(sc16, load256(a[t].get_unchecked(i).bsums.as_ptr()));
            isum[t] = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(bias, 5));
        }
        for n in 0..2 {
            let sc8 = i8x8_to_i16_both(&b.scales[8 * n..]);
            let ql0 = load256(b.ql.as_ptr().add(64 * n));
            let ql1 = load256(b.ql.as_ptr().add(64 * n + 32));
            let qh = load256(b.qh.as_ptr().add(32 * n));
            let codes = [
                _mm256_or_si256(
                    _mm256_and_si256(ql0, low4),
                    _mm256_slli_epi16(_mm256_and_si256(qh, m2), 4),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(ql1, low4),
                    _mm256_slli_epi16(_mm256_and_si256(qh, m4), 2),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16(ql0, 4), low4),
                    _mm256_and_si256(qh, m6),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16(ql1, 4), low4),
                    _mm256_srli_epi16(_mm256_and_si256(qh, m8), 2),
                ),
            ];
            for (k, &u) in codes.iter().enumerate() {
                let scv = scale_pair(sc8, k);
                for t in 0..N {
                    let yq = load256(a[t].get_unchecked(i).qs.as_ptr().add(128 * n + 32 * k));
                    let p = _mm256_maddubs_epi16(u, yq);
                    isum[t] = _mm256_add_epi32(isum[t], _mm256_madd_epi16(p, scv));
                }
            }
        }
        let d = h2f(b.d);
        for t in 0..N {
            let dy = a[t].get_unchecked(i).d;
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * dy), _mm256_cvtepi32_ps(isum[t]), acc[t]);
        }
    }
    let mut out = [0f32; N];
    for t in 0..N {
        out[t] = hsum_ps(acc[t]);
    }
    out
}
