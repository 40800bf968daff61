//! Aligned byte storage for tensor data (GGUF block layout, unchanged): owned, or a range of a
//! model file held once in memory ([`TensorBytes`]); and the quantized weight matrix type the
//! backends share.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::quant::GgmlDType;

/// Bytes aligned to 64 (a cache line and every SIMD width we use), backed by `u64` words so block
/// structs with `f16`/`u16`/`f32` fields can be viewed in place.
#[derive(Clone, Default)]
pub struct AlignedBytes {
    words: Vec<Align64>,
    len: usize,
}

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Align64([u8; 64]);

impl AlignedBytes {
    /// `len` zero bytes.
    pub fn zeroed(len: usize) -> Self {
        Self {
            words: vec![Align64([0; 64]); len.div_ceil(64)],
            len,
        }
    }
    /// `len` zero bytes, or `None` when the allocator cannot provide them (a model file too big
    /// for what is left of wasm32's address space is refused, not aborted on).
    pub fn try_zeroed(len: usize) -> Option<Self> {
        let n = len.div_ceil(64);
        let mut words = Vec::new();
        words.try_reserve_exact(n).ok()?;
        words.resize(n, Align64([0; 64]));
        Some(Self { words, len })
    }
    /// Copy of `bytes`.
    pub fn from_slice(bytes: &[u8]) -> Self {
        let mut s = Self::zeroed(bytes.len());
        s.as_mut_slice().copy_from_slice(bytes);
        s
    }
    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `words` holds at least `len` initialised bytes; u8 has alignment 1.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr().cast::<u8>(), self.len) }
    }
    /// The bytes, mutably.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and we hold `&mut self`.
        unsafe { std::slice::from_raw_parts_mut(self.words.as_mut_ptr().cast::<u8>(), self.len) }
    }
    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl std::fmt::Debug for AlignedBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AlignedBytes({} bytes)", self.len)
    }
}

/// The bytes of one tensor: its own copy, or a range of a buffer shared with other tensors (the
/// model file read once into memory, which the tensors then borrow instead of copying).
#[derive(Clone, Debug)]
pub enum TensorBytes {
    Owned(AlignedBytes),
    Shared {
        buf: Arc<AlignedBytes>,
        start: usize,
        len: usize,
    },
}

impl TensorBytes {
    /// Bytes `start .. start + len` of `buf`, or `None` when the range passes its end.
    pub fn shared(buf: Arc<AlignedBytes>, start: usize, len: usize) -> Option<Self> {
        (start.checked_add(len)? <= buf.len()).then_some(Self::Shared { buf, start, len })
    }
    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Self::Owned(b) => b.as_slice(),
            Self::Shared { buf, start, len } => &buf.as_slice()[*start..*start + *len],
        }
    }
    /// Length in bytes.
    pub fn len(&self) -> usize {
        match self {
            Self::Owned(b) => b.len(),
            Self::Shared { len, .. } => *len,
        }
    }
    /// Whether empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Whether the bytes are borrowed from a shared buffer.
    pub fn is_shared(&self) -> bool {
        matches!(self, Self::Shared { .. })
    }
}

impl From<AlignedBytes> for TensorBytes {
    fn from(b: AlignedBytes) -> Self {
        Self::Owned(b)
    }
}

/// A weight matrix kept in its GGUF block layout: `rows` rows of `cols` elements, row `r` at
/// bytes `r * row_bytes .. (r + 1) * row_bytes`. GGML dims (cols, rows) = (ne0, ne1).
#[derive(Clone, Debug)]
pub struct QMatrix {
    pub name: String,
    pub dtype: GgmlDType,
    pub rows: usize,
    pub cols: usize,
    pub row_bytes: usize,
    pub data: TensorBytes,
}

impl QMatrix {
    /// Wrap tensor bytes. Errors: [`Error::Shape`] when the byte count does not match.
    pub fn new(
        name: impl Into<String>,
        dtype: GgmlDType,
        rows: usize,
        cols: usize,
        data: impl Into<TensorBytes>,
    ) -> Result<Self> {
        let name = name.into();
        let data = data.into();
        let row_bytes = dtype.row_bytes(cols).ok_or_else(|| Error::Shape {
            op: "QMatrix::new",
            detail: format!("`{name}`: {cols} columns is not a multiple of the {dtype} block size"),
        })?;
        if rows.checked_mul(row_bytes) != Some(data.len()) {
            return Err(Error::Shape {
                op: "QMatrix::new",
                detail: format!(
                    "`{name}`: {rows}x{cols} {dtype} needs {} bytes, got {}",
                    rows.saturating_mul(row_bytes),
                    data.len()
                ),
            });
        }
        Ok(Self {
            name,
            dtype,
            rows,
            cols,
            row_bytes,
            data,
        })
    }

    /// The bytes of row `r`.
    pub fn row(&self, r: usize) -> &[u8] {
        &self.data.as_slice()[r * self.row_bytes..(r + 1) * self.row_bytes]
    }
}
