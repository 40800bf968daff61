//! Portable integer dot products of weight blocks with prepared (quantized) activations, the
//! same arithmetic as llama.cpp's generic `ggml_vec_dot_*_q8_*` in `ggml-cpu/quants.c`: integer
//! sums inside a block, one float multiply-add per block. Used on targets without a SIMD path
//! and as the oracle the SIMD paths must match to float rounding.

use half::{bf16, f16};

use super::blocks::*;
use super::QK;

/// Dot of a little-endian f32 row with `x`.
pub(crate) fn dot_f32(row: &[u8], x: &[f32]) -> f32 {
    row.chunks_exact(4)
        .zip(x)
        .map(|(b, &v)| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) * v)
        .sum()
}

/// Dot of a little-endian f16 row with `x`.
pub(crate) fn dot_f16(row: &[u8], x: &[f32]) -> f32 {
    row.chunks_exact(2)
        .zip(x)
        .map(|(b, &v)| f16::from_le_bytes([b[0], b[1]]).to_f32() * v)
        .sum()
}

/// Dot of a little-endian bf16 row with `x`.
pub(crate) fn dot_bf16(row: &[u8], x: &[f32]) -> f32 {
    row.chunks_exact(2)
        .zip(x)
        .map(|(b, &v)| bf16::from_le_bytes([b[0], b[1]]).to_f32() * v)
        .sum()
}

pub(crate) fn dot_q4_0(w: &[BlockQ4_0], a: &[ActBlockQ8]) -> f32 {
    let mut sum = 0f32;
    for (b, y) in w.iter().zip(a) {
        let mut sumi = 0i32;
        for j in 0..QK / 2 {
            let lo = (b.qs[j] & 0x0F) as i32 - 8;
            let hi = (b.qs[j] >> 4) as i32 - 8;
            sumi += lo * y.qs[j] as i32 + hi * y.qs[j + QK / 2] as i32;
        }
        sum += b.d.to_f32() * y.d * sumi as f32;
    }
    sum
}

pub(crate) fn dot_q4_1(w: &[BlockQ4_1], a: &[ActBlockQ8]) -> f32 {
    let mut sum = 0f32;
    for (b, y) in w.iter().zip(a) {
        let mut sumi = 0i32;
        for j in 0..QK / 2 {
            let lo = (b.qs[j] & 0x0F) as i32;
            let hi = (b.qs[j] >> 4) as i32;
            sumi += lo * y.qs[j] as i32 + hi * y.qs[j + QK / 2] as i32;
        }
        // Σ (d q + m) x = d dy Σ q qy + m Σ x, with Σ x ≈ y.s.
        sum += b.d.to_f32() * y.d * sumi as f32 + b.m.to_f32() * y.s;
    }
    sum
}

/// Integer dot of one Q5 block's 5-bit values (0..32) with 32 activation quants.
#[inline]
fn q5_sumi(qs: &[u8; QK / 2], qh: [u8; 4], y: &[i8; QK]) -> i32 {
    let qh = u32::from_le_bytes(qh);
    let mut sumi = 0i32;
    for j in 0..QK / 2 {
        let lo = (qs[j] & 0x0F) as i32 | ((((qh >> j) & 1) as i32) << 4);
        let hi = (qs[j] >> 4) as i32 | ((((qh >> (j + QK / 2)) & 1) as i32) << 4);
        sumi += lo * y[j] as i32 + hi * y[j + QK / 2] as i32;
    }
    sumi
}

pub(crate) fn dot_q5_0(w: &[BlockQ5_0], a: &[ActBlockQ8]) -> f32 {
    let mut sum = 0f32;
    for (b, y) in w.iter().zip(a) {
        let sumi = q5_sumi(&b.qs, b.qh, &y.qs);
        let ysum: i32 = y.qs.iter().map(|&q| q as i32).sum();
        sum += b.d.to_f32() * y.d * (sumi - 16 * ysum) as f32;
    }
    sum
}

pub(crate) fn dot_q5_1(w: &[BlockQ5_1], a: &[ActBlockQ8]) -> f32 {
    let mut sum = 0f32;
    for (b, y) in w.iter().zip(a) {
        let sumi = q5_sumi(&b.qs, b.qh, &y.qs);
        sum += b.d.to_f32() * y.d * sumi as f32 + b.m.to_f32() * y.s;
    }
    sum
}

pub(crate) fn dot_q8_0(w: &[BlockQ8_0], a: &[ActBlockQ8]) -> f32 {
    let mut sum = 0f32;
    for (b, y) in w.iter().zip(a) {
        let sumi: i32 =
            b.qs.iter()
                .zip(&y.qs)
                .map(|(&p, &q)| p as i32 * q as i32)
                .sum();
        sum += b.d.to_f32() * y.d * sumi as f32;
    }
    sum
}

pub(crate) fn dot_q2k(w: &[BlockQ2K], a: &[BlockQ8K]) -> f32 {
    let mut sum = 0f32;
    for (b, y) in w.iter().zip(a) {
        let mut sumi = 0i32; // Σ_g sc_g Σ q·qy
        let mut summ = 0i32; // Σ_g m_g Σ qy
        for g in 0..16 {
            let (n, j, l0) = (g / 8, (g % 8) / 2, 16 * (g % 2));
            let mut s = 0i32;
            for l in l0..l0 + 16 {
                let q = ((b.qs[32 * n + l] >> (2 * j)) & 3) as i32;
                s += q * y.qs[128 * n + 32 * j + l] as i32;
            }
            sumi += (b.scales[g] & 0x0F) as i32 * s;
            summ += (b.scales[g] >> 4) as i32 * y.bsums[g] as i32;
        }
        sum += y.d * (b.d.to_f32() * sumi as f32 - b.dmin.to_f32() * summ as f32);
    }
    sum
}

pub(crate) fn dot_q3k(w: &[BlockQ3K], a: &[BlockQ8K]) -> f32 {
    let mut sum = 0f32;
    for (b, y) in w.iter().zip(a) {
        let scales = unpack_q3k_scales(&b.scales);
        let mut sumi = 0i32;
        for (g, &sc) in scales.iter().enumerate() {
            let (n, j, l0) = (g / 8, (g % 8) / 2, 16 * (g % 2));
            let mut s = 0i32;
            for l in l0..l0 + 16 {
                let low = ((b.qs[32 * n + l] >> (2 * j)) & 3) as i32;
                let high = (b.hmask[l] >> (4 * n + j)) & 1;
                let q = low - if high != 0 { 0 } else { 4 };
                s += q * y.qs[128 * n + 32 * j + l] as i32;
            }
            sumi += sc as i32 * s;
        }
        sum += y.d * b.d.to_f32() * sumi as f32;
    }
    sum
}

pub(crate) fn dot_q4k(w: &[BlockQ4K], a: &[BlockQ8K]) -> f32 {
    let mut sum = 0f32;
    for (b, y) in w.iter().zip(a) {
        let (sc, mn) = unpack_k4_scales(&b.scales);
        let mut sumi = 0i32;
        let mut summ = 0i32;
        for s in 0..8 {
            let mut t = 0i32;
            for l in 0..32 {
                let q = ((b.qs[32 * (s / 2) + l] >> (4 * (s % 2))) & 0x0F) as i32;
                t += q * y.qs[32 * s + l] as i32;
            }
            sumi += sc[s] as i32 * t;
            summ += mn[s] as i32 * (y.bsums[2 * s] as i32 + y.bsums[2 * s + 1] as i32);
        }
        sum += y.d * (b.d.to_f32() * sumi as f32 - b.dmin.to_f32() * summ as f32);
    }
    sum
}

pub(crate) fn dot_q5k(w: &[BlockQ5K], a: &[BlockQ8K]) -> f32 {
    let mut sum = 0f32;
    for (b, y) in w.iter().zip(a) {
        let (sc, mn) = unpack_k4_scales(&b.scales);
        let mut sumi = 0i32;
        let mut summ = 0i32;
        for s in 0..8 {
            let mut t = 0i32;
            for l in 0..32 {
                let low = ((b.qs[32 * (s / 2) + l] >> (4 * (s % 2))) & 0x0F) as i32;
                let high = ((b.qh[l] >> s) & 1) as i32;
                t += (low | (high << 4)) * y.qs[32 * s + l] as i32;
            }
            sumi += sc[s] as i32 * t;
            summ += mn[s] as i32 * (y.bsums[2 * s] as i32 + y.bsums[2 * s + 1] as i32);
        }
        sum += y.d * (b.d.to_f32() * sumi as f32 - b.dmin.to_f32() * summ as f32);
    }
    sum
}

pub(crate) fn dot_q6k(w: &[BlockQ6K], a: &[BlockQ8K]) -> f32 {
    let mut sum = 0f32;
    for (b, y) in w.iter().zip(a) {
        let mut sumi = 0i32;
        for (g, &sc) in b.scales.iter().enumerate() {
            let (n, k, l0) = (g / 8, (g % 8) / 2, 16 * (g % 2));
            let mut s = 0i32;
            for l in l0..l0 + 16 {
                let low = (b.ql[64 * n + 32 * (k % 2) + l] >> (4 * (k / 2))) & 0x0F;
                let high = (b.qh[32 * n + l] >> (2 * k)) & 3;
                let q = (low | (high << 4)) as i32 - 32;
                s += q * y.qs[128 * n + 32 * k + l] as i32;
            }
            sumi += sc as i32 * s;
        }
        sum += y.d * b.d.to_f32() * sumi as f32;
    }
    sum
}
