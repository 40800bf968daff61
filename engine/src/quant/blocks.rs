//! GGML block structs: the in-memory layout of one block of each quantized type, as declared in
//! llama.cpp `ggml/src/ggml-common.h` (`block_q4_0`, ..., `block_q8_K`).
//!
//! Weight blocks have alignment <= 2 (scales are [`f16`], everything else bytes) so a weight row
//! that is only 2-byte aligned can be viewed in place with [`as_blocks`]. All multi-byte fields
//! are little-endian, which is the native order on every target this engine supports (x86_64,
//! aarch64, wasm32).

use bytemuck::{Pod, Zeroable};
use half::f16;

use super::{GgmlDType, QK, QK_K};

/// Q4_0: 32 weights `w = d * (q - 8)`, `q` a 4-bit nibble. Element `j < 16` is the low nibble of
/// `qs[j]`, element `j + 16` its high nibble (ggml `block_q4_0`).
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ4_0 {
    /// Block scale.
    pub d: f16,
    /// Packed nibbles.
    pub qs: [u8; QK / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ4_0>() == 2 + QK / 2);

/// Q4_1: 32 weights `w = d * q + m`, nibbles packed as in [`BlockQ4_0`] (ggml `block_q4_1`).
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ4_1 {
    /// Block scale.
    pub d: f16,
    /// Block minimum (offset).
    pub m: f16,
    /// Packed nibbles.
    pub qs: [u8; QK / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ4_1>() == 2 * 2 + QK / 2);

/// Q5_0: 32 weights `w = d * (q - 16)`, `q` = nibble (packed as in [`BlockQ4_0`]) plus a fifth
/// bit: bit `j` of the little-endian u32 `qh` is bit 4 of element `j` (ggml `block_q5_0`).
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ5_0 {
    /// Block scale.
    pub d: f16,
    /// Fifth bits, little-endian u32.
    pub qh: [u8; 4],
    /// Packed low nibbles.
    pub qs: [u8; QK / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ5_0>() == 2 + 4 + QK / 2);

/// Q5_1: 32 weights `w = d * q + m`, `q` 5-bit as in [`BlockQ5_0`] (ggml `block_q5_1`).
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ5_1 {
    /// Block scale.
    pub d: f16,
    /// Block minimum (offset).
    pub m: f16,
    /// Fifth bits, little-endian u32.
    pub qh: [u8; 4],
    /// Packed low nibbles.
    pub qs: [u8; QK / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ5_1>() == 2 * 2 + 4 + QK / 2);

/// Q8_0: 32 weights `w = d * q`, `q` a signed byte (ggml `block_q8_0`).
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ8_0 {
    /// Block scale.
    pub d: f16,
    /// Quants.
    pub qs: [i8; QK],
}
const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == 2 + QK);

/// Q8_1 (activation-only in ggml): 32 values `d * q` plus `s = d * Σ q` (ggml `block_q8_1`).
/// This engine prepares activations as [`ActBlockQ8`] instead (f32 scales); the struct is here
/// for layout completeness.
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ8_1 {
    /// Block scale.
    pub d: f16,
    /// `d * Σ qs`.
    pub s: f16,
    /// Quants.
    pub qs: [i8; QK],
}
const _: () = assert!(std::mem::size_of::<BlockQ8_1>() == 2 * 2 + QK);

/// Q2_K: 256 weights in 16 groups of 16. Group `g` has 4-bit scale `scales[g] & 15` and 4-bit
/// min `scales[g] >> 4`; `w = d * sc * q - dmin * m` with 2-bit `q` (ggml `block_q2_K`).
/// Element `128 n + 32 j + l` is bits `2j..2j+2` of `qs[32 n + l]`.
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ2K {
    /// Packed 4-bit scales (low) and mins (high), one byte per group of 16.
    pub scales: [u8; QK_K / 16],
    /// 2-bit quants.
    pub qs: [u8; QK_K / 4],
    /// Super-block scale for the scales.
    pub d: f16,
    /// Super-block scale for the mins.
    pub dmin: f16,
}
const _: () = assert!(std::mem::size_of::<BlockQ2K>() == QK_K / 16 + QK_K / 4 + 2 * 2);

/// Q3_K: 256 weights in 16 groups of 16, `w = d * (sc - 32) * (q - 4 * !hbit)` with 2-bit `q`
/// placed as in [`BlockQ2K`], a high bit from `hmask` (element `128 n + 32 j + l` uses bit
/// `4 n + j` of `hmask[l]`) and 6-bit scales packed in 12 bytes (ggml `block_q3_K`).
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ3K {
    /// High bits.
    pub hmask: [u8; QK_K / 8],
    /// Low 2 bits.
    pub qs: [u8; QK_K / 4],
    /// 16 packed 6-bit scales (see [`unpack_q3k_scales`]).
    pub scales: [u8; 12],
    /// Super-block scale.
    pub d: f16,
}
const _: () = assert!(std::mem::size_of::<BlockQ3K>() == QK_K / 8 + QK_K / 4 + 12 + 2);

/// Q4_K: 256 weights in 8 sub-blocks of 32, `w = d * sc * q - dmin * m` with 4-bit `q` and
/// 6-bit `sc`, `m` packed in 12 bytes (ggml `block_q4_K`). Sub-blocks `2i` and `2i + 1` are the
/// low and high nibbles of `qs[32 i .. 32 i + 32]`.
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ4K {
    /// Super-block scale for the scales.
    pub d: f16,
    /// Super-block scale for the mins.
    pub dmin: f16,
    /// Packed 6-bit scales and mins (see [`unpack_k4_scales`]).
    pub scales: [u8; 12],
    /// 4-bit quants.
    pub qs: [u8; QK_K / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ4K>() == 2 * 2 + 12 + QK_K / 2);

/// Q5_K: as [`BlockQ4K`] plus a fifth bit: element `32 s + l` of sub-block `s` uses bit `s` of
/// `qh[l]` (ggml `block_q5_K`).
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ5K {
    /// Super-block scale for the scales.
    pub d: f16,
    /// Super-block scale for the mins.
    pub dmin: f16,
    /// Packed 6-bit scales and mins (see [`unpack_k4_scales`]).
    pub scales: [u8; 12],
    /// Fifth bits.
    pub qh: [u8; QK_K / 8],
    /// Low 4 bits.
    pub qs: [u8; QK_K / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ5K>() == 2 * 2 + 12 + QK_K / 8 + QK_K / 2);

/// Q6_K: 256 weights in 16 groups of 16, `w = d * scales[g] * (q - 32)` with 6-bit `q`: low 4
/// bits in `ql`, high 2 bits in `qh` (ggml `block_q6_K`). In half `n` (128 elements), element
/// `32 k + l` takes nibble `k / 2` of `ql[64 n + 32 (k % 2) + l]` and bits `2k..2k+2` of
/// `qh[32 n + l]`.
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ6K {
    /// Low 4 bits.
    pub ql: [u8; QK_K / 2],
    /// High 2 bits.
    pub qh: [u8; QK_K / 4],
    /// Signed 8-bit group scales.
    pub scales: [i8; QK_K / 16],
    /// Super-block scale.
    pub d: f16,
}
const _: () = assert!(std::mem::size_of::<BlockQ6K>() == QK_K / 2 + QK_K / 4 + QK_K / 16 + 2);

/// Q8_K (activation-only): 256 values `d * qs` and the sums of each group of 16 `qs` (ggml
/// `block_q8_K`). Prepared activations for the K-quants.
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ8K {
    /// Scale.
    pub d: f32,
    /// Quants in `-127..=127`.
    pub qs: [i8; QK_K],
    /// `bsums[g] = Σ qs[16 g .. 16 g + 16]`.
    pub bsums: [i16; QK_K / 16],
}
const _: () = assert!(std::mem::size_of::<BlockQ8K>() == 4 + QK_K + QK_K / 16 * 2);

/// Prepared activations for the legacy 32-element types (Q4_0 ... Q8_0): ggml's Q8_1 with f32
/// instead of f16 scale and sum, so scale rounding adds no error. Values are `d * qs`,
/// `s = d * Σ qs`.
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[repr(C)]
pub struct ActBlockQ8 {
    /// Scale (`max |x| / 127`).
    pub d: f32,
    /// `d * Σ qs`.
    pub s: f32,
    /// Quants in `-127..=127`.
    pub qs: [i8; QK],
}
const _: () = assert!(std::mem::size_of::<ActBlockQ8>() == 4 + 4 + QK);

// Consistency with the dtype table and the weight-row alignment promise.
const _: () = {
    use std::mem::{align_of, size_of};
    assert!(size_of::<BlockQ4_0>() == GgmlDType::Q4_0.type_size());
    assert!(size_of::<BlockQ4_1>() == GgmlDType::Q4_1.type_size());
    assert!(size_of::<BlockQ5_0>() == GgmlDType::Q5_0.type_size());
    assert!(size_of::<BlockQ5_1>() == GgmlDType::Q5_1.type_size());
    assert!(size_of::<BlockQ8_0>() == GgmlDType::Q8_0.type_size());
    assert!(size_of::<BlockQ8_1>() == GgmlDType::Q8_1.type_size());
    assert!(size_of::<BlockQ2K>() == GgmlDType::Q2K.type_size());
    assert!(size_of::<BlockQ3K>() == GgmlDType::Q3K.type_size());
    assert!(size_of::<BlockQ4K>() == GgmlDType::Q4K.type_size());
    assert!(size_of::<BlockQ5K>() == GgmlDType::Q5K.type_size());
    assert!(size_of::<BlockQ6K>() == GgmlDType::Q6K.type_size());
    assert!(size_of::<BlockQ8K>() == GgmlDType::Q8K.type_size());
    assert!(align_of::<BlockQ4_0>() <= 2);
    assert!(align_of::<BlockQ4_1>() <= 2);
    assert!(align_of::<BlockQ5_0>() <= 2);
    assert!(align_of::<BlockQ5_1>() <= 2);
    assert!(align_of::<BlockQ8_0>() <= 2);
    assert!(align_of::<BlockQ2K>() <= 2);
    assert!(align_of::<BlockQ3K>() <= 2);
    assert!(align_of::<BlockQ4K>() <= 2);
    assert!(align_of::<BlockQ5K>() <= 2);
    assert!(align_of::<BlockQ6K>() <= 2);
};

/// View `bytes` as blocks of `B`, or `None` when the length is not a multiple of the block size
/// or the start is not aligned for `B` (weight blocks need 2-byte alignment).
pub fn as_blocks<B: Pod>(bytes: &[u8]) -> Option<&[B]> {
    bytemuck::try_cast_slice(bytes).ok()
}

/// Unpack the 12-byte Q4_K / Q5_K scale field into 8 scales and 8 mins, each 6 bits
/// (`get_scale_min_k4` in ggml-quants.c). Bytes 0..4 hold scales 0..4 (low 6 bits), bytes 4..8
/// mins 0..4; bytes 8..12 hold the low 4 bits of scale/min 4..8 (low/high nibble) whose top two
/// bits are the top bits of bytes 0..8.
#[inline]
pub fn unpack_k4_scales(s: &[u8; 12]) -> ([u8; 8], [u8; 8]) {
    let mut sc = [0u8; 8];
    let mut mn = [0u8; 8];
    for j in 0..4 {
        sc[j] = s[j] & 63;
        mn[j] = s[j + 4] & 63;
        sc[j + 4] = (s[j + 8] & 0x0F) | ((s[j] >> 6) << 4);
        mn[j + 4] = (s[j + 8] >> 4) | ((s[j + 4] >> 6) << 4);
    }
    (sc, mn)
}

/// Unpack the 12-byte Q3_K scale field into 16 signed scales (already minus 32). Scale `i` has
/// its low 4 bits in byte `i % 8` (low nibble for `i < 8`, high nibble otherwise) and its high 2
/// bits in byte `8 + i % 4` at bit position `2 * (i / 4)`.
#[inline]
pub fn unpack_q3k_scales(s: &[u8; 12]) -> [i8; 16] {
    // Work on 4 scales at a time as u32 words (little-endian byte order).
    let word = |o: usize| u32::from_le_bytes([s[o], s[o + 1], s[o + 2], s[o + 3]]);
    let (a0, a1, a2) = (word(0), word(4), word(8));
    const LOW4: u32 = 0x0F0F_0F0F;
    const LOW2: u32 = 0x0303_0303;
    let words = [
        (a0 & LOW4) | ((a2 & LOW2) << 4),
        (a1 & LOW4) | (((a2 >> 2) & LOW2) << 4),
        ((a0 >> 4) & LOW4) | (((a2 >> 4) & LOW2) << 4),
        ((a1 >> 4) & LOW4) | (((a2 >> 6) & LOW2) << 4),
    ];
    let mut out = [0i8; 16];
    for (o, w) in out.chunks_exact_mut(4).zip(words) {
        for (v, b) in o.iter_mut().zip(w.to_le_bytes()) {
            *v = b as i8 - 32;
        }
    }
    out
}
