//! A weight row decoded once for a matrix–matrix product ([`super::gemm_row`]): the unsigned
//! integer codes of every element in element order, with the block and group scales the integer
//! sums need, so that a tile of tokens can reuse them without unpacking bits again.
//!
//! Value of element `i` (`u` its code):
//! - legacy types (32-element blocks `b`): `d[b] · u + off[b]` (`off` = `m`, `-8 d`, `-16 d`, 0);
//!   Q8_0 keeps signed codes (`signed = true`), the others are `0..32`;
//! - K-quants (256-element super-blocks `s`, 16-element groups `g`):
//!   `d[s] · sc[g] · u − dmin[s] · mn[g]` with `u < 64`, `sc`/`mn` small integers
//!   (Q4_K/Q5_K: 6-bit scale and min; Q6_K: `u = q + 32`, `mn = 32 sc`; Q3_K: `u = q + 4`,
//!   `mn = 4 sc`, dmin = d; Q2_K: 4-bit scale and min);
//! - float types: the f32 value.
//!
//! The formulas are those of llama.cpp `ggml-quants.c` `dequantize_row_*`, rearranged so the
//! offsets become one integer product with the activation sums (`ActBlockQ8::s`,
//! `BlockQ8K::bsums`).

use half::{bf16, f16};

use super::blocks::*;
use super::{GgmlDType, QK, QK_K};

/// Which arithmetic a [`DecodedRow`] needs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DecodedKind {
    /// Nothing decoded yet (or a type without a decoder).
    #[default]
    None,
    /// 32-element blocks with unsigned codes and an offset (Q4_0, Q4_1, Q5_0, Q5_1).
    Legacy,
    /// 32-element blocks with signed codes (Q8_0).
    LegacySigned,
    /// 256-element super-blocks with group scales and mins (Q2_K ... Q6_K).
    K,
    /// Plain f32 values (F32, F16, BF16).
    F32,
}

/// One weight row decoded for [`super::gemm_row`]. Buffers are reused: once warmed up to a row
/// length, [`decode`](Self::decode) does not allocate.
#[derive(Clone, Debug, Default)]
pub struct DecodedRow {
    /// The arithmetic the fields below are laid out for.
    pub kind: DecodedKind,
    /// Elements in the row.
    pub len: usize,
    /// Codes in element order (`len` bytes; unsigned below 64, or signed for Q8_0).
    pub codes: Vec<u8>,
    /// Per block (legacy) or super-block (K): the scale `d`.
    pub d: Vec<f32>,
    /// Legacy: per block the offset `off`. K: per super-block `dmin`.
    pub off: Vec<f32>,
    /// K: per 32-element chunk 16 i16 scales, lanes 0..8 the group of elements 0..16 and lanes
    /// 8..16 that of 16..32 (the layout `vpmaddwd` wants after `vpmaddubsw`).
    pub sc: Vec<[i16; 16]>,
    /// K: per super-block the 16 group mins `mn`.
    pub mn: Vec<[i16; 16]>,
    /// Float types: the values.
    pub f: Vec<f32>,
}

impl DecodedRow {
    /// Empty buffers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether `dtype` has a decoder (every weight type except the activation-only Q8_1/Q8_K).
    pub fn supports(dtype: GgmlDType) -> bool {
        !matches!(dtype, GgmlDType::Q8_1 | GgmlDType::Q8K)
    }

    /// Decode `row` (GGUF blocks of `dtype`, `n` elements, at least 2-byte aligned). Leaves
    /// `kind == None` when `dtype` has no decoder or `row` does not hold whole blocks of `n`
    /// elements.
    pub fn decode(&mut self, dtype: GgmlDType, row: &[u8], n: usize) {
        self.kind = DecodedKind::None;
        self.len = n;
        if !Self::supports(dtype) || dtype.row_bytes(n) != Some(row.len()) {
            return;
        }
        match dtype {
            GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 => {
                self.f.clear();
                match dtype {
                    GgmlDType::F32 => self.f.extend(
                        row.chunks_exact(4)
                            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                    ),
                    GgmlDType::F16 => self.f.extend(
                        row.chunks_exact(2)
                            .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()),
                    ),
                    _ => self.f.extend(
                        row.chunks_exact(2)
                            .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32()),
                    ),
                }
                self.kind = DecodedKind::F32;
                return;
            }
            _ => {}
        }
        self.codes.resize(n, 0);
        let Some(kind) = decode_blocks(self, dtype, row) else {
            return;
        };
        self.kind = kind;
    }

    /// Scalar reference: the f32 value of every element (`out.len() == self.len`), from the
    /// decoded form alone. Matches `dequantize_row` of the source row up to f32 rounding.
    pub fn dequantize(&self, out: &mut [f32]) {
        match self.kind {
            DecodedKind::None => out.fill(f32::NAN),
            DecodedKind::F32 => out.copy_from_slice(&self.f),
            DecodedKind::Legacy | DecodedKind::LegacySigned => {
                let signed = self.kind == DecodedKind::LegacySigned;
                for (b, o) in out.chunks_exact_mut(QK).enumerate() {
                    for (v, &c) in o.iter_mut().zip(&self.codes[QK * b..QK * (b + 1)]) {
                        let u = if signed { c as i8 as f32 } else { c as f32 };
                        *v = self.d[b] * u + self.off[b];
                    }
                }
            }
            DecodedKind::K => {
                for (s, o) in out.chunks_exact_mut(QK_K).enumerate() {
                    for (i, v) in o.iter_mut().enumerate() {
                        let g = i / 16;
                        let sc = self.sc[8 * s + g / 2][8 * (g % 2)] as f32;
                        let u = self.codes[QK_K * s + i] as f32;
                        *v = self.d[s] * sc * u - self.off[s] * self.mn[s][g] as f32;
                    }
                }
            }
        }
    }
}

/// Casts `row` to blocks of `B` (whole blocks, aligned), or `None`.
fn blocks_of<B: bytemuck::Pod>(row: &[u8]) -> Option<&[B]> {
    as_blocks(row)
}

/// Per-block scale/offset and K group vectors sized for `n_blocks`.
fn size(r: &mut DecodedRow, n_blocks: usize, k: bool) {
    r.d.resize(n_blocks, 0.0);
    r.off.resize(n_blocks, 0.0);
    if k {
        r.sc.resize(8 * n_blocks, [0; 16]);
        r.mn.resize(n_blocks, [0; 16]);
    }
}

/// Codes of a 16-byte nibble field: elements 0..16 low nibbles, 16..32 high nibbles.
#[inline(always)]
fn nibbles(qs: &[u8; 16], out: &mut [u8]) {
    let (lo, hi) = out.split_at_mut(16);
    for j in 0..16 {
        lo[j] = qs[j] & 0x0F;
        hi[j] = qs[j] >> 4;
    }
}

/// Adds the fifth bit of a Q5_0/Q5_1 block (bit `j` of `qh` for element `j`).
#[inline(always)]
fn fifth_bit(qh: [u8; 4], out: &mut [u8]) {
    let qh = u32::from_le_bytes(qh);
    for (j, c) in out.iter_mut().enumerate() {
        *c |= (((qh >> j) & 1) as u8) << 4;
    }
}

/// Scale vectors of one super-block from its 16 group scales.
#[inline(always)]
fn group_scales(sc16: [i16; 16], out: &mut [[i16; 16]]) {
    for (c, o) in out.iter_mut().enumerate() {
        o[..8].fill(sc16[2 * c]);
        o[8..].fill(sc16[2 * c + 1]);
    }
}

fn decode_blocks(r: &mut DecodedRow, dtype: GgmlDType, row: &[u8]) -> Option<DecodedKind> {
    let mut codes = std::mem::take(&mut r.codes);
    let kind = decode_into(r, dtype, row, &mut codes);
    r.codes = codes;
    kind
}

fn decode_into(
    r: &mut DecodedRow,
    dtype: GgmlDType,
    row: &[u8],
    codes: &mut [u8],
) -> Option<DecodedKind> {
    use DecodedKind::{Legacy, LegacySigned, K};
    Some(match dtype {
        GgmlDType::Q4_0 => {
            let w: &[BlockQ4_0] = blocks_of(row)?;
            size(r, w.len(), false);
            for (i, (b, c)) in w.iter().zip(codes.chunks_exact_mut(QK)).enumerate() {
                nibbles(&b.qs, c);
                r.d[i] = b.d.to_f32();
                r.off[i] = -8.0 * r.d[i];
            }
            Legacy
        }
        GgmlDType::Q4_1 => {
            let w: &[BlockQ4_1] = blocks_of(row)?;
            size(r, w.len(), false);
            for (i, (b, c)) in w.iter().zip(codes.chunks_exact_mut(QK)).enumerate() {
                nibbles(&b.qs, c);
                r.d[i] = b.d.to_f32();
                r.off[i] = b.m.to_f32();
            }
            Legacy
        }
        GgmlDType::Q5_0 => {
            let w: &[BlockQ5_0] = blocks_of(row)?;
            size(r, w.len(), false);
            for (i, (b, c)) in w.iter().zip(codes.chunks_exact_mut(QK)).enumerate() {
                nibbles(&b.qs, c);
                fifth_bit(b.qh, c);
                r.d[i] = b.d.to_f32();
                r.off[i] = -16.0 * r.d[i];
            }
            Legacy
        }
        GgmlDType::Q5_1 => {
            let w: &[BlockQ5_1] = blocks_of(row)?;
            size(r, w.len(), false);
            for (i, (b, c)) in w.iter().zip(codes.chunks_exact_mut(QK)).enumerate() {
                nibbles(&b.qs, c);
                fifth_bit(b.qh, c);
                r.d[i] = b.d.to_f32();
                r.off[i] = b.m.to_f32();
            }
            Legacy
        }
        GgmlDType::Q8_0 => {
            let w: &[BlockQ8_0] = blocks_of(row)?;
            size(r, w.len(), false);
            for (i, (b, c)) in w.iter().zip(codes.chunks_exact_mut(QK)).enumerate() {
                c.copy_from_slice(bytemuck::cast_slice(&b.qs));
                r.d[i] = b.d.to_f32();
                r.off[i] = 0.0;
            }
            LegacySigned
        }
        GgmlDType::Q2K => {
            let w: &[BlockQ2K] = blocks_of(row)?;
            size(r, w.len(), true);
            for (s, (b, c)) in w.iter().zip(codes.chunks_exact_mut(QK_K)).enumerate() {
                for n in 0..2 {
                    for j in 0..4 {
                        for l in 0..32 {
                            c[128 * n + 32 * j + l] = (b.qs[32 * n + l] >> (2 * j)) & 3;
                        }
                    }
                }
                let mut sc = [0i16; 16];
                for g in 0..16 {
                    sc[g] = (b.scales[g] & 0x0F) as i16;
                    r.mn[s][g] = (b.scales[g] >> 4) as i16;
                }
                group_scales(sc, &mut r.sc[8 * s..8 * s + 8]);
                r.d[s] = b.d.to_f32();
                r.off[s] = b.dmin.to_f32();
            }
            K
        }
        GgmlDType::Q3K => {
            let w: &[BlockQ3K] = blocks_of(row)?;
            size(r, w.len(), true);
            for (s, (b, c)) in w.iter().zip(codes.chunks_exact_mut(QK_K)).enumerate() {
                // u = low + 4·hbit in 0..8; value = u − 4.
                for n in 0..2 {
                    for j in 0..4 {
                        for l in 0..32 {
                            let low = (b.qs[32 * n + l] >> (2 * j)) & 3;
                            let high = (b.hmask[l] >> (4 * n + j)) & 1;
                            c[128 * n + 32 * j + l] = low | (high << 2);
                        }
                    }
                }
                let scales = unpack_q3k_scales(&b.scales);
                let sc = scales.map(|v| v as i16);
                r.mn[s] = sc.map(|v| 4 * v);
                group_scales(sc, &mut r.sc[8 * s..8 * s + 8]);
                r.d[s] = b.d.to_f32();
                r.off[s] = r.d[s];
            }
            K
        }
        GgmlDType::Q4K => {
            let w: &[BlockQ4K] = blocks_of(row)?;
            size(r, w.len(), true);
            for (b, c) in w.iter().zip(codes.chunks_exact_mut(QK_K)) {
                k4_codes(&b.qs, None, c);
            }
            k_scales(r, w.iter().map(|b| (b.d, b.dmin, b.scales)));
            K
        }
        GgmlDType::Q5K => {
            let w: &[BlockQ5K] = blocks_of(row)?;
            size(r, w.len(), true);
            for (b, c) in w.iter().zip(codes.chunks_exact_mut(QK_K)) {
                k4_codes(&b.qs, Some(&b.qh), c);
            }
            k_scales(r, w.iter().map(|b| (b.d, b.dmin, b.scales)));
            K
        }
        GgmlDType::Q6K => {
            let w: &[BlockQ6K] = blocks_of(row)?;
            size(r, w.len(), true);
            for (s, (b, c)) in w.iter().zip(codes.chunks_exact_mut(QK_K)).enumerate() {
                // u = q + 32 in 0..64 (ggml: q = (ql | qh << 4) − 32).
                for n in 0..2 {
                    for k in 0..4 {
                        for l in 0..32 {
                            let low = (b.ql[64 * n + 32 * (k % 2) + l] >> (4 * (k / 2))) & 0x0F;
                            let high = (b.qh[32 * n + l] >> (2 * k)) & 3;
                            c[128 * n + 32 * k + l] = low | (high << 4);
                        }
                    }
                }
                let sc = b.scales.map(|v| v as i16);
                r.mn[s] = sc.map(|v| 32 * v);
                group_scales(sc, &mut r.sc[8 * s..8 * s + 8]);
                r.d[s] = b.d.to_f32();
                r.off[s] = r.d[s];
            }
            K
        }
        _ => return None,
    })
}

/// Codes of a Q4_K / Q5_K super-block: sub-block `s` (32 elements) is the low (even `s`) or
/// high (odd `s`) nibbles of bytes `32 (s/2) ..`, plus bit `s` of `qh[l]` as the fifth bit.
#[inline(always)]
fn k4_codes(qs: &[u8; QK_K / 2], qh: Option<&[u8; QK_K / 8]>, c: &mut [u8]) {
    for i in 0..4 {
        for l in 0..32 {
            c[64 * i + l] = qs[32 * i + l] & 0x0F;
            c[64 * i + 32 + l] = qs[32 * i + l] >> 4;
        }
    }
    if let Some(qh) = qh {
        for s in 0..8 {
            for l in 0..32 {
                c[32 * s + l] |= ((qh[l] >> s) & 1) << 4;
            }
        }
    }
}

/// Scales and mins of Q4_K / Q5_K super-blocks (one 6-bit scale and min per 32 elements).
fn k_scales(r: &mut DecodedRow, blocks: impl Iterator<Item = (f16, f16, [u8; 12])>) {
    for (s, (d, dmin, scales)) in blocks.enumerate() {
        let (sc, mn) = unpack_k4_scales(&scales);
        let mut sc16 = [0i16; 16];
        for g in 0..16 {
            sc16[g] = sc[g / 2] as i16;
            r.mn[s][g] = mn[g / 2] as i16;
        }
        group_scales(sc16, &mut r.sc[8 * s..8 * s + 8]);
        r.d[s] = d.to_f32();
        r.off[s] = dmin.to_f32();
    }
}
