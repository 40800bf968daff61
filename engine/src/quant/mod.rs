//! Quantized tensor types: block layouts, scalar reference dequantization and dot products, and
//! the fast (x86 / wasm simd128) dot-product paths used by the CPU backend.
//!
//! Layouts and formulas follow llama.cpp `ggml/src/ggml-quants.c` and `ggml-common.h`.
//!
//! Three tiers, each checked against the one above it by the tests:
//! 1. [`dequantize_row`] / [`vec_dot_ref`]: float reference (`reference.rs`).
//! 2. [`vec_dot_portable`]: integer dot products on quantized activations ([`PreparedActs`]),
//!    the arithmetic llama.cpp uses (`scalar.rs`).
//! 3. [`vec_dot`]: the same arithmetic with AVX2+FMA+F16C on x86_64 (runtime-detected,
//!    `x86.rs`) or simd128 on wasm32 (compile-time, `simd128.rs`); portable elsewhere.

mod acts;
pub mod blocks;
pub mod dtype;
mod reference;
mod scalar;
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod simd128;
#[cfg(target_arch = "x86_64")]
mod x86;

pub use blocks::{
    ActBlockQ8, BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1,
    BlockQ6K, BlockQ8K, BlockQ8_0, BlockQ8_1,
};
pub use dtype::{ggml_type_name, GgmlDType, QK, QK_K};

use crate::error::Result;

/// Scalar reference: dequantize one row of `dst.len()` elements stored as GGUF blocks of `dtype`
/// in `src` (`dtype.row_bytes(dst.len())` bytes, at least 2-byte aligned).
///
/// Errors: [`crate::Error::Shape`] when `src`/`dst` lengths do not match the block layout (or
/// `src` is misaligned), [`crate::Error::OpDType`] for the activation-only types Q8_1 / Q8_K.
pub fn dequantize_row(dtype: GgmlDType, src: &[u8], dst: &mut [f32]) -> Result<()> {
    reference::dequantize_row(dtype, src, dst)
}

/// The float oracle: dequantize `row` (blocks of `dtype`, `x.len()` elements) with
/// [`dequantize_row`] and return `Σ w[i] x[i]`, accumulated in f64. Slow (allocates); for tests
/// and fallbacks.
///
/// Panics when `row` does not hold `x.len()` elements of `dtype` (see [`dequantize_row`]).
pub fn vec_dot_ref(dtype: GgmlDType, row: &[u8], x: &[f32]) -> f32 {
    reference::vec_dot_ref(dtype, row, x)
}

/// Tokens per tile of [`vec_dot_tile`].
pub const TILE: usize = 4;

/// How activations are stored for the dot products against one weight dtype. Weight dtypes with
/// the same format can share one [`PreparedActs`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ActFormat {
    /// Plain f32 copy (F32, F16, BF16 weights).
    F32,
    /// 32-element [`ActBlockQ8`] blocks (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 weights).
    Q8,
    /// 256-element [`BlockQ8K`] blocks (Q2_K ... Q6_K weights).
    Q8K,
}

impl ActFormat {
    /// The activation format used with weights of `dtype`; `None` for the activation-only types.
    pub const fn for_dtype(dtype: GgmlDType) -> Option<ActFormat> {
        match dtype {
            GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 => Some(ActFormat::F32),
            GgmlDType::Q4_0
            | GgmlDType::Q4_1
            | GgmlDType::Q5_0
            | GgmlDType::Q5_1
            | GgmlDType::Q8_0 => Some(ActFormat::Q8),
            GgmlDType::Q2K | GgmlDType::Q3K | GgmlDType::Q4K | GgmlDType::Q5K | GgmlDType::Q6K => {
                Some(ActFormat::Q8K)
            }
            GgmlDType::Q8_1 | GgmlDType::Q8K => None,
        }
    }
}

/// Activations `x` prepared for dot products against weight rows of one dtype: quantized to
/// Q8_0 / Q8_K blocks for the quantized types (as llama.cpp does), copied for float types.
/// Buffers are reused: once warmed up to a length, `prepare` does not allocate.
///
/// The legacy types use [`ActBlockQ8`] (ggml's Q8_1 with f32 scale and sum, so one format serves
/// Q4_0 ... Q8_0), the K-quants [`BlockQ8K`]. A copy of `x` is always kept, so a mismatched
/// dtype still gets a correct (slow) answer from [`vec_dot`].
#[derive(Default, Clone, Debug)]
pub struct PreparedActs {
    /// Length of the activation vector.
    pub len: usize,
    format: Option<ActFormat>,
    x: Vec<f32>,
    q8: Vec<ActBlockQ8>,
    /// `q8[b].d` and `q8[b].s` as arrays, so a kernel loads 8 blocks' scales at once.
    q8_d: Vec<f32>,
    q8_s: Vec<f32>,
    q8k: Vec<BlockQ8K>,
}

impl PreparedActs {
    /// Empty buffers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Prepare `x` (len k, a multiple of `dtype.block_size()`) for [`vec_dot`] against rows of
    /// `dtype`.
    pub fn prepare(&mut self, dtype: GgmlDType, x: &[f32]) {
        self.len = x.len();
        self.x.clear();
        self.x.extend_from_slice(x);
        let format = ActFormat::for_dtype(dtype);
        self.format = match format {
            Some(ActFormat::Q8) if x.len().is_multiple_of(QK) => {
                self.q8.resize(x.len() / QK, bytemuck::Zeroable::zeroed());
                acts::quantize_q8(x, &mut self.q8);
                self.q8_d.clear();
                self.q8_d.extend(self.q8.iter().map(|b| b.d));
                self.q8_s.clear();
                self.q8_s.extend(self.q8.iter().map(|b| b.s));
                format
            }
            Some(ActFormat::Q8K) if x.len().is_multiple_of(QK_K) => {
                self.q8k
                    .resize(x.len() / QK_K, bytemuck::Zeroable::zeroed());
                acts::quantize_q8k(x, &mut self.q8k);
                format
            }
            Some(ActFormat::F32) => format,
            // Not a whole number of blocks: no row can match; `vec_dot` reports it.
            _ => None,
        };
    }

    /// The format the current contents were prepared in (`None` before the first `prepare` or
    /// when the length was not a multiple of the block size).
    pub fn format(&self) -> Option<ActFormat> {
        self.format
    }

    /// Whether these activations can be used with [`vec_dot`] on rows of `dtype` at full speed.
    pub fn is_prepared_for(&self, dtype: GgmlDType) -> bool {
        self.format.is_some() && self.format == ActFormat::for_dtype(dtype)
    }

    /// The activations as given to [`prepare`](Self::prepare).
    pub fn x(&self) -> &[f32] {
        &self.x
    }

    /// The 32-element quantized blocks (empty unless prepared for a legacy type).
    pub fn q8_blocks(&self) -> &[ActBlockQ8] {
        if self.format == Some(ActFormat::Q8) {
            &self.q8
        } else {
            &[]
        }
    }

    /// The Q8_K blocks (empty unless prepared for a K-quant).
    pub fn q8k_blocks(&self) -> &[BlockQ8K] {
        if self.format == Some(ActFormat::Q8K) {
            &self.q8k
        } else {
            &[]
        }
    }
}

/// Which fast path [`vec_dot`] uses on this machine: `"avx2"` (x86_64 with AVX2, FMA and F16C),
/// `"simd128"` (wasm32 built with `+simd128`), `"relaxed-simd"` (with `+relaxed-simd` as well) or
/// `"portable"`.
pub fn fast_path() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if x86::available() {
            "avx2"
        } else {
            "portable"
        }
    }
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    {
        if cfg!(target_feature = "relaxed-simd") {
            "relaxed-simd"
        } else {
            "simd128"
        }
    }
    #[cfg(not(any(
        target_arch = "x86_64",
        all(target_arch = "wasm32", target_feature = "simd128")
    )))]
    {
        "portable"
    }
}

/// Whether [`vec_dot`] has a SIMD kernel for `dtype` on this machine (otherwise it runs the
/// portable integer path).
pub fn has_fast_kernel(dtype: GgmlDType) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        x86::available() && x86::supports(dtype)
    }
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    {
        simd128::supports(dtype)
    }
    #[cfg(not(any(
        target_arch = "x86_64",
        all(target_arch = "wasm32", target_feature = "simd128")
    )))]
    {
        let _ = dtype;
        false
    }
}

/// View a weight row as blocks. Rows are promised 2-byte aligned with a whole number of blocks
/// (checked by the caller), so failure is a caller bug.
#[inline]
fn row_blocks<B: bytemuck::Pod>(row: &[u8]) -> &[B] {
    match blocks::as_blocks(row) {
        Some(b) => b,
        None => panic!(
            "vec_dot: weight row at {:p} ({} bytes) is not {}-byte aligned",
            row.as_ptr(),
            row.len(),
            std::mem::align_of::<B>()
        ),
    }
}

/// Shared argument checks; `false` means "use the reference fallback".
#[inline]
fn check(dtype: GgmlDType, row: &[u8], acts: &PreparedActs) -> bool {
    if !acts.is_prepared_for(dtype) {
        debug_assert!(
            false,
            "vec_dot: activations prepared as {:?} used with {dtype} weights",
            acts.format
        );
        return false;
    }
    // Whole blocks of `dtype` in the activations (a multiply, not a division, per call).
    let n_blocks = match acts.format {
        Some(ActFormat::Q8) => acts.q8.len(),
        Some(ActFormat::Q8K) => acts.q8k.len(),
        _ => acts.len,
    };
    assert!(
        n_blocks * dtype.type_size() == row.len(),
        "vec_dot: a {dtype} row of {} bytes does not hold {} elements",
        row.len(),
        acts.len
    );
    true
}

/// Fast dot product of one weight row (`row`: GGUF blocks of `dtype`, k elements) with
/// activations prepared for `dtype`. Uses simd128 on wasm32, AVX2 on x86_64 when available,
/// else a portable path.
///
/// Panics when `row` does not hold `acts.len` elements of `dtype`. Activations prepared for a
/// different [`ActFormat`] give the reference result (slowly; a debug assertion flags it).
pub fn vec_dot(dtype: GgmlDType, row: &[u8], acts: &PreparedActs) -> f32 {
    if !check(dtype, row, acts) {
        return reference::vec_dot_ref(dtype, row, &acts.x);
    }
    #[cfg(target_arch = "x86_64")]
    if x86::available() {
        // SAFETY: AVX2, FMA and F16C were detected at run time.
        if let Some(v) = unsafe { x86::vec_dot(dtype, row, acts) } {
            return v;
        }
    }
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    if let Some(v) = simd128::vec_dot(dtype, row, acts) {
        return v;
    }
    portable(dtype, row, acts)
}

/// Dot products of one weight row with several tokens (prefill): `out[t] = vec_dot(dtype, row,
/// &acts[t])` for every `t`, bit for bit, so results never depend on how a prompt is split
/// into batches. Where this machine has a tile kernel (AVX2, simd128) tokens go in tiles of
/// [`TILE`]:
/// each weight block is unpacked once, in registers, and applied to every token of the tile.
///
/// Panics when `out.len() != acts.len()` or a row does not hold `acts[t].len` elements of
/// `dtype` (as [`vec_dot`]).
pub fn vec_dot_tile(dtype: GgmlDType, row: &[u8], acts: &[PreparedActs], out: &mut [f32]) {
    assert_eq!(out.len(), acts.len(), "vec_dot_tile output length");
    #[cfg(target_arch = "x86_64")]
    if x86::available() && acts.iter().all(|a| check(dtype, row, a)) {
        for (a, o) in acts.chunks(TILE).zip(out.chunks_mut(TILE)) {
            // SAFETY: AVX2, FMA and F16C were detected at run time; arguments were checked.
            if !unsafe { x86::vec_dot_tile(dtype, row, a, o) } {
                for (a, o) in a.iter().zip(o.iter_mut()) {
                    *o = vec_dot(dtype, row, a);
                }
            }
        }
        return;
    }
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    if acts.iter().all(|a| check(dtype, row, a)) {
        for (a, o) in acts.chunks(TILE).zip(out.chunks_mut(TILE)) {
            if !simd128::vec_dot_tile(dtype, row, a, o) {
                for (a, o) in a.iter().zip(o.iter_mut()) {
                    *o = vec_dot(dtype, row, a);
                }
            }
        }
        return;
    }
    for (a, o) in acts.iter().zip(out.iter_mut()) {
        *o = vec_dot(dtype, row, a);
    }
}

/// The portable integer path of [`vec_dot`], callable on any machine (the oracle for the SIMD
/// kernels). Same contract as [`vec_dot`].
pub fn vec_dot_portable(dtype: GgmlDType, row: &[u8], acts: &PreparedActs) -> f32 {
    if !check(dtype, row, acts) {
        return reference::vec_dot_ref(dtype, row, &acts.x);
    }
    portable(dtype, row, acts)
}

fn portable(dtype: GgmlDType, row: &[u8], acts: &PreparedActs) -> f32 {
    let (x, q8, q8k) = (&acts.x[..], &acts.q8[..], &acts.q8k[..]);
    match dtype {
        GgmlDType::F32 => scalar::dot_f32(row, x),
        GgmlDType::F16 => scalar::dot_f16(row, x),
        GgmlDType::BF16 => scalar::dot_bf16(row, x),
        GgmlDType::Q4_0 => scalar::dot_q4_0(row_blocks(row), q8),
        GgmlDType::Q4_1 => scalar::dot_q4_1(row_blocks(row), q8),
        GgmlDType::Q5_0 => scalar::dot_q5_0(row_blocks(row), q8),
        GgmlDType::Q5_1 => scalar::dot_q5_1(row_blocks(row), q8),
        GgmlDType::Q8_0 => scalar::dot_q8_0(row_blocks(row), q8),
        GgmlDType::Q2K => scalar::dot_q2k(row_blocks(row), q8k),
        GgmlDType::Q3K => scalar::dot_q3k(row_blocks(row), q8k),
        GgmlDType::Q4K => scalar::dot_q4k(row_blocks(row), q8k),
        GgmlDType::Q5K => scalar::dot_q5k(row_blocks(row), q8k),
        GgmlDType::Q6K => scalar::dot_q6k(row_blocks(row), q8k),
        // `check` rejects these (no activation format).
        GgmlDType::Q8_1 | GgmlDType::Q8K => reference::vec_dot_ref(dtype, row, x),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prepare_reuses_buffers() {
        let x: Vec<f32> = (0..512).map(|i| (i as f32 * 0.37).sin()).collect();
        let mut a = PreparedActs::new();
        a.prepare(GgmlDType::Q4K, &x);
        a.prepare(GgmlDType::Q4_0, &x);
        a.prepare(GgmlDType::F32, &x);
        let ptrs = (a.x.as_ptr(), a.q8.as_ptr(), a.q8k.as_ptr());
        for t in [GgmlDType::Q4K, GgmlDType::Q8_0, GgmlDType::F16] {
            a.prepare(t, &x);
            assert_eq!(ptrs, (a.x.as_ptr(), a.q8.as_ptr(), a.q8k.as_ptr()));
            assert!(a.is_prepared_for(t));
        }
        a.prepare(GgmlDType::Q8_0, &x[..256]);
        assert_eq!(a.q8_blocks().len(), 8);
        assert_eq!(ptrs.1, a.q8.as_ptr());
    }

    #[test]
    fn mismatched_length_is_rejected() {
        assert!(dequantize_row(GgmlDType::Q4_0, &[0u8; 18], &mut [0f32; 64]).is_err());
        assert!(dequantize_row(GgmlDType::Q4_0, &[0u8; 18], &mut [0f32; 31]).is_err());
        assert!(dequantize_row(GgmlDType::F32, &[0u8; 7], &mut [0f32; 2]).is_err());
        assert!(dequantize_row(GgmlDType::Q8K, &[0u8; 292], &mut [0f32; 256]).is_err());
    }
}
