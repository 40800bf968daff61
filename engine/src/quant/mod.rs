//! Quantized tensor types: block layouts, scalar reference dequantization and dot products, and
//! the fast (x86 / wasm simd128) dot-product paths used by the CPU backend.
//!
//! Layouts and formulas follow llama.cpp `ggml/src/ggml-quants.c` and `ggml-common.h`.

pub mod dtype;

pub use dtype::{ggml_type_name, GgmlDType, QK, QK_K};

use crate::error::{Error, Result};

/// Scalar reference: dequantize one row of `dst.len()` elements stored as GGUF blocks of `dtype`
/// in `src` (`dtype.row_bytes(dst.len())` bytes, at least 2-byte aligned).
///
/// Errors: [`Error::Shape`] when `src`/`dst` lengths do not match the block layout.
pub fn dequantize_row(dtype: GgmlDType, src: &[u8], dst: &mut [f32]) -> Result<()> {
    let _ = (dtype, src, dst);
    Err(Error::OpDType {
        op: "dequantize_row",
        dtype,
    })
}

/// Activations `x` prepared for dot products against weight rows of one dtype: quantized to
/// Q8_0 / Q8_K blocks for the quantized types (as llama.cpp does), copied for float types.
/// Buffers are reused: once warmed up to a length, `prepare` does not allocate.
#[derive(Default, Clone, Debug)]
pub struct PreparedActs {
    /// Length of the activation vector.
    pub len: usize,
}

impl PreparedActs {
    /// Empty buffers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Prepare `x` (len k, a multiple of `dtype.block_size()`) for [`vec_dot`] against rows of
    /// `dtype`.
    pub fn prepare(&mut self, dtype: GgmlDType, x: &[f32]) {
        let _ = dtype;
        self.len = x.len();
    }
}

/// Fast dot product of one weight row (`row`: GGUF blocks of `dtype`, k elements) with
/// activations prepared for `dtype`. Uses simd128 on wasm32, AVX2 on x86_64 when available,
/// else a portable path.
pub fn vec_dot(dtype: GgmlDType, row: &[u8], acts: &PreparedActs) -> f32 {
    let _ = (dtype, row, acts);
    0.0
}
