//! AVX2 + FMA tile kernels of the prefill product (`gemm.rs`): one decoded weight row against
//! up to [`TILE`](super::gemm::TILE) tokens. Each 32-element piece of codes (and its scale
//! vector) is loaded once per tile and multiplied with every token's int8 activations by
//! `vpmaddubsw`/`vpmaddwd`, one accumulator per token, as in llama.cpp's
//! `ggml-cpu/arch/x86/quants.c` but with the bit unpacking done once per row.

use std::arch::x86_64::*;

use super::decoded::{DecodedKind, DecodedRow};
use super::{PreparedActs, QK, QK_K};

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn hsum_ps(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load256<T>(p: *const T) -> __m256i {
    _mm256_loadu_si256(p.cast())
}

/// `out[t]` for the tokens of `acts` (≤ TILE of them). Arguments were checked by the caller
/// (`gemm::compatible`, `out.len() == acts.len()`).
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (`x86::available`).
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn gemm_tile(dec: &DecodedRow, acts: &[PreparedActs], out: &mut [f32]) {
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

/// Legacy blocks: `Σ_b d dy Σ u·qy + off·s` per token. Signed codes (Q8_0) go through the sign
/// trick: `|w| × sign(y, w)` keeps `vpmaddubsw`'s unsigned operand.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn legacy<const N: usize, const SIGNED: bool>(
    dec: &DecodedRow,
    acts: &[PreparedActs],
    out: &mut [f32],
) {
    let ys: [&[super::ActBlockQ8]; N] = std::array::from_fn(|t| &acts[t].q8[..]);
    let nb = dec.d.len();
    for y in ys {
        assert_eq!(y.len(), nb);
    }
    assert!(dec.codes.len() >= nb * QK && dec.off.len() == nb);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); N];
    let mut off = [0f32; N];
    for b in 0..nb {
        let w = load256(dec.codes.as_ptr().add(QK * b));
        let wa = if SIGNED { _mm256_sign_epi8(w, w) } else { w };
        let (d, o) = (*dec.d.get_unchecked(b), *dec.off.get_unchecked(b));
        for t in 0..N {
            let y = ys[t].get_unchecked(b);
            let mut yq = load256(y.qs.as_ptr());
            if SIGNED {
                yq = _mm256_sign_epi8(yq, w);
            }
            let p = _mm256_madd_epi16(_mm256_maddubs_epi16(wa, yq), ones);
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * y.d), _mm256_cvtepi32_ps(p), acc[t]);
            if !SIGNED {
                off[t] += o * y.s;
            }
        }
    }
    for t in 0..N {
        out[t] = hsum_ps(acc[t]) + off[t];
    }
}

/// K-quant super-blocks: `Σ_s dy (d Σ_g sc_g Σ u·qy − dmin Σ_g mn_g bsums_g)` per token.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn kquant<const N: usize>(dec: &DecodedRow, acts: &[PreparedActs], out: &mut [f32]) {
    let ys: [&[super::BlockQ8K]; N] = std::array::from_fn(|t| &acts[t].q8k[..]);
    let ns = dec.d.len();
    for y in ys {
        assert_eq!(y.len(), ns);
    }
    assert!(
        dec.codes.len() >= ns * QK_K
            && dec.off.len() == ns
            && dec.sc.len() == 8 * ns
            && dec.mn.len() == ns
    );
    let mut acc = [_mm256_setzero_ps(); N];
    for s in 0..ns {
        let mut isum = [_mm256_setzero_si256(); N];
        for c in 0..8 {
            let w = load256(dec.codes.as_ptr().add(QK_K * s + 32 * c));
            let sc = load256(dec.sc.get_unchecked(8 * s + c).as_ptr());
            for t in 0..N {
                let yq = load256(ys[t].get_unchecked(s).qs.as_ptr().add(32 * c));
                let p = _mm256_madd_epi16(_mm256_maddubs_epi16(w, yq), sc);
                isum[t] = _mm256_add_epi32(isum[t], p);
            }
        }
        let mn = load256(dec.mn.get_unchecked(s).as_ptr());
        let (d, dmin) = (*dec.d.get_unchecked(s), *dec.off.get_unchecked(s));
        for t in 0..N {
            let y = ys[t].get_unchecked(s);
            let ms = _mm256_madd_epi16(mn, load256(y.bsums.as_ptr()));
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * y.d), _mm256_cvtepi32_ps(isum[t]), acc[t]);
            acc[t] = _mm256_fnmadd_ps(_mm256_set1_ps(dmin * y.d), _mm256_cvtepi32_ps(ms), acc[t]);
        }
    }
    for t in 0..N {
        out[t] = hsum_ps(acc[t]);
    }
}

/// Float rows: `Σ w·x` per token, 8 lanes at a time.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn float<const N: usize>(dec: &DecodedRow, acts: &[PreparedActs], out: &mut [f32]) {
    let xs: [&[f32]; N] = std::array::from_fn(|t| &acts[t].x[..]);
    let n = dec.f.len();
    for x in xs {
        assert_eq!(x.len(), n);
    }
    let w = dec.f.as_ptr();
    let mut acc = [_mm256_setzero_ps(); N];
    let mut i = 0;
    while i + 8 <= n {
        let wv = _mm256_loadu_ps(w.add(i));
        for t in 0..N {
            acc[t] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(xs[t].as_ptr().add(i)), acc[t]);
        }
        i += 8;
    }
    for t in 0..N {
        let mut s = hsum_ps(acc[t]);
        for j in i..n {
            s += dec.f[j] * xs[t][j];
        }
        out[t] = s;
    }
}
