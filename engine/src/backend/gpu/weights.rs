//! Weight tensors on the GPU, in their GGUF block layout, split by rows across several buffers
//! when a tensor is larger than the storage-binding limit; and the bind-group helper.

use crate::error::{Error, Result};
use crate::quant::GgmlDType;

use super::context::GpuContext;
use super::shaders::{supports, Op, PARAMS_BYTES};

/// Largest chunk in bytes regardless of the device: kernels address bytes with u32.
pub const MAX_CHUNK_BYTES: u64 = 1 << 31;

/// Rows `row_begin .. row_begin + rows` of a weight matrix, in one storage buffer.
#[derive(Debug)]
pub struct WeightChunk {
    pub buffer: wgpu::Buffer,
    pub row_begin: usize,
    pub rows: usize,
}

/// A weight matrix (rows, cols) on the GPU in GGUF block layout: row r of chunk c is at byte
/// `(r - c.row_begin) * row_bytes` of `c.buffer` — the bytes of the file, unchanged, each
/// chunk padded with zeros to a multiple of 4 bytes. Kernels read it as `array<u32>` and
/// extract fields by byte offset (see `shaders/quant.wgsl`).
#[derive(Debug)]
pub struct GpuWeight {
    pub name: String,
    pub dtype: GgmlDType,
    pub rows: usize,
    pub cols: usize,
    pub row_bytes: usize,
    pub chunks: Vec<WeightChunk>,
}

impl GpuWeight {
    /// Upload `bytes` (rows × row_bytes of `dtype`). Each chunk holds as many whole rows as fit
    /// in the device's storage-binding limit. Errors: [`Error::OpDType`] for a type without a
    /// kernel, [`Error::Shape`] when the byte count is wrong, [`Error::GpuLimits`] when one row
    /// does not fit a binding, [`Error::GpuOutOfMemory`].
    pub fn upload(
        ctx: &GpuContext,
        name: &str,
        dtype: GgmlDType,
        rows: usize,
        cols: usize,
        bytes: &[u8],
    ) -> Result<Self> {
        if !supports(Op::MatVec, dtype) {
            return Err(Error::OpDType {
                op: "gpu weight upload",
                dtype,
            });
        }
        let row_bytes = dtype.row_bytes(cols).ok_or_else(|| Error::Shape {
            op: "gpu weight upload",
            detail: format!("`{name}`: {cols} columns do not fill {dtype} blocks"),
        })?;
        if rows.checked_mul(row_bytes) != Some(bytes.len()) || rows == 0 {
            return Err(Error::Shape {
                op: "gpu weight upload",
                detail: format!(
                    "`{name}`: {rows}x{cols} {dtype} needs {} bytes, got {}",
                    rows.saturating_mul(row_bytes),
                    bytes.len()
                ),
            });
        }
        let limit = ctx.max_binding().min(MAX_CHUNK_BYTES);
        let rows_per_chunk = (limit / row_bytes as u64) as usize;
        if rows_per_chunk == 0 {
            return Err(Error::GpuLimits {
                limit: "maxStorageBufferBindingSize",
                needed: row_bytes as u64,
                available: limit,
            });
        }
        let usage = wgpu::BufferUsages::STORAGE;
        let mut chunks = Vec::with_capacity(rows.div_ceil(rows_per_chunk));
        let mut row_begin = 0;
        while row_begin < rows {
            let n = rows_per_chunk.min(rows - row_begin);
            let data = &bytes[row_begin * row_bytes..(row_begin + n) * row_bytes];
            let buffer = ctx.buffer_init(name, data, usage)?;
            chunks.push(WeightChunk {
                buffer,
                row_begin,
                rows: n,
            });
            row_begin += n;
        }
        Ok(Self {
            name: name.to_string(),
            dtype,
            rows,
            cols,
            row_bytes,
            chunks,
        })
    }

    /// Bytes on the GPU.
    pub fn gpu_bytes(&self) -> u64 {
        self.chunks.iter().map(|c| c.buffer.size()).sum()
    }
}

/// A bind group for `op`: binding 0 is `PARAMS_BYTES` of `params` at `params_offset`, then
/// `buffers` in the order of [`Op::bindings`], each bound whole.
pub fn bind_group(
    ctx: &GpuContext,
    layout: &wgpu::BindGroupLayout,
    params: &wgpu::Buffer,
    params_offset: u64,
    buffers: &[&wgpu::Buffer],
) -> wgpu::BindGroup {
    let mut entries = Vec::with_capacity(buffers.len() + 1);
    entries.push(wgpu::BindGroupEntry {
        binding: 0,
        resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: params,
            offset: params_offset,
            size: wgpu::BufferSize::new(PARAMS_BYTES),
        }),
    });
    for (i, b) in buffers.iter().enumerate() {
        entries.push(wgpu::BindGroupEntry {
            binding: i as u32 + 1,
            resource: b.as_entire_binding(),
        });
    }
    ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some("slm bind group"),
        layout,
        entries: &entries,
    })
}
