//! [`Weights`]: how a family reads its tensors. Each read checks the tensor's shape against the
//! metadata, reads only its bytes from the [`ByteSource`] (one tensor in memory at a time, or
//! none when the source lends them) and hands them to the backend's [`WeightStore`]. It also remembers what was read, so a file with
//! tensors for layers past `block_count` is refused ([`Weights::finish`]).

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::gguf::{self, ByteSource, GgufFile, TensorInfo};
use crate::quant::{self, GgmlDType};

use super::graph::{Mat, Vector, WeightStore};

/// A family's view of the model file while it builds its graph.
pub struct Weights<'a> {
    g: &'a GgufFile,
    src: &'a dyn ByteSource,
    store: &'a mut dyn WeightStore,
    /// Matrices already read (tied embeddings ask for `token_embd` twice).
    mats: HashMap<String, Mat>,
}

impl<'a> Weights<'a> {
    /// Read tensors of `g` from `src` into `store`.
    pub fn new(g: &'a GgufFile, src: &'a dyn ByteSource, store: &'a mut dyn WeightStore) -> Self {
        Self {
            g,
            src,
            store,
            mats: HashMap::new(),
        }
    }

    /// The parsed header.
    pub fn file(&self) -> &GgufFile {
        self.g
    }

    /// Whether the file has tensor `name`.
    pub fn has(&self, name: &str) -> bool {
        self.g.tensor(name).is_some()
    }

    fn info(&self, name: &str) -> Result<&'a TensorInfo> {
        self.g
            .tensor(name)
            .ok_or_else(|| Error::MissingTensor(name.to_string()))
    }

    fn check_matrix(info: &TensorInfo, rows: usize, cols: usize) -> Result<()> {
        if info.dims.len() != 2 || info.dims[0] != cols as u64 || info.dims[1] != rows as u64 {
            return Err(Error::Shape {
                op: "load",
                detail: format!(
                    "`{}` has dims {:?}, expected [{cols}, {rows}]",
                    info.name, info.dims
                ),
            });
        }
        Ok(())
    }

    /// Matrix `name`: (rows, cols) = GGUF dims [cols, rows], kept in its block layout.
    /// Asking twice for one name gives the same [`Mat`].
    ///
    /// Errors: [`Error::MissingTensor`], [`Error::Shape`], I/O errors, the store's errors.
    pub fn matrix(&mut self, name: &str, rows: usize, cols: usize) -> Result<Mat> {
        if let Some(&m) = self.mats.get(name) {
            return Ok(m);
        }
        let info = self.info(name)?;
        Self::check_matrix(info, rows, cols)?;
        let bytes = self.g.read_tensor(self.src, info)?;
        let m = self.store.matrix(name, info.dtype, rows, cols, bytes)?;
        self.mats.insert(name.to_string(), m);
        Ok(m)
    }

    /// [`Weights::matrix`] when the file has `name`, else `None`.
    pub fn opt_matrix(&mut self, name: &str, rows: usize, cols: usize) -> Result<Option<Mat>> {
        if self.has(name) {
            self.matrix(name, rows, cols).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Rows `first .. first + rows` of matrix `name` of (total_rows, cols): one part of a fused
    /// tensor (Phi-3's `attn_qkv`, `ffn_up`). Only that part's bytes are read.
    ///
    /// Errors: as [`Weights::matrix`].
    pub fn matrix_rows(
        &mut self,
        name: &str,
        total_rows: usize,
        first: usize,
        rows: usize,
        cols: usize,
    ) -> Result<Mat> {
        let info = self.info(name)?;
        Self::check_matrix(info, total_rows, cols)?;
        let shape_err = || Error::Shape {
            op: "load",
            detail: format!("`{name}`: rows {first}+{rows} of {total_rows} x {cols}"),
        };
        let row_bytes = info.dtype.row_bytes(cols).ok_or_else(shape_err)?;
        let end = first.checked_add(rows).ok_or_else(shape_err)?;
        if end > total_rows {
            return Err(shape_err());
        }
        let len = rows.checked_mul(row_bytes).ok_or_else(shape_err)?;
        let off = (first as u64)
            .checked_mul(row_bytes as u64)
            .and_then(|o| o.checked_add(info.offset))
            .and_then(|o| o.checked_add(self.g.data_offset))
            .ok_or_else(shape_err)?;
        let bytes = gguf::read_range(self.src, off, len as u64)?;
        let part = format!("{name}[{first}..{end}]");
        self.store.matrix(&part, info.dtype, rows, cols, bytes)
    }

    /// Vector `name` of `len` elements as f32 (dequantized if stored quantized).
    ///
    /// Errors: [`Error::MissingTensor`], [`Error::Shape`], I/O errors.
    pub fn vector(&mut self, name: &str, len: usize) -> Result<Vector> {
        let info = self.info(name)?;
        if info.n_elements() != len as u64 {
            return Err(Error::Shape {
                op: "load",
                detail: format!("`{name}` has dims {:?}, expected [{len}]", info.dims),
            });
        }
        let bytes = self.g.read_tensor(self.src, info)?;
        let mut out = vec![0f32; len];
        match info.dtype {
            GgmlDType::F32 => {
                for (o, c) in out.iter_mut().zip(bytes.as_slice().chunks_exact(4)) {
                    *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
            dt => quant::dequantize_row(dt, bytes.as_slice(), &mut out)?,
        }
        self.store.vector(name, out)
    }

    /// [`Weights::vector`] when the file has `name`, else `None`.
    pub fn opt_vector(&mut self, name: &str, len: usize) -> Result<Option<Vector>> {
        if self.has(name) {
            self.vector(name, len).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Check the file has no layer tensors beyond `n_layer` (`blk.{i}.*` with `i >= n_layer`):
    /// a `block_count` smaller than the layers present would silently drop layers.
    ///
    /// Errors: [`Error::Metadata`] naming the first such tensor.
    pub fn finish(&self, arch: &str, n_layer: usize) -> Result<()> {
        for t in &self.g.tensors {
            let layer = t
                .name
                .strip_prefix("blk.")
                .and_then(|r| r.split('.').next())
                .and_then(|i| i.parse::<usize>().ok());
            if let Some(i) = layer {
                if i >= n_layer {
                    return Err(Error::metadata(
                        &format!("{arch}.block_count"),
                        format!("{n_layer} layers, but the file has tensor `{}`", t.name),
                    ));
                }
            }
        }
        Ok(())
    }
}
