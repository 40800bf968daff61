//! The parameter arena: one uniform buffer holding every dispatch's parameter block at its own
//! aligned slot. Bind groups point at fixed slots (made at load); each forward writes the blocks
//! on the CPU and uploads them with one `write_buffer` before its single submission.

use bytemuck::Pod;

use crate::error::Result;

use super::context::GpuContext;
use super::shaders::PARAMS_BYTES;

/// Uniform buffer of `slots` parameter blocks, each at a multiple of the device's uniform
/// offset alignment.
pub struct ParamArena {
    pub buffer: wgpu::Buffer,
    stride: u64,
    cpu: Vec<u8>,
    slots: usize,
}

impl ParamArena {
    /// Room for `slots` blocks. Errors: those of [`GpuContext::buffer`].
    pub fn new(ctx: &GpuContext, slots: usize) -> Result<Self> {
        let align = ctx.device.limits().min_uniform_buffer_offset_alignment as u64;
        let stride = PARAMS_BYTES.next_multiple_of(align.max(4));
        let size = stride * slots.max(1) as u64;
        let buffer = ctx.buffer(
            "params",
            size,
            wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        )?;
        Ok(Self {
            buffer,
            stride,
            cpu: vec![0; size as usize],
            slots,
        })
    }

    /// Number of slots.
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// Byte offset of `slot`.
    pub fn offset(&self, slot: usize) -> u64 {
        slot as u64 * self.stride
    }

    /// Store the block of `slot` (CPU side until [`ParamArena::upload`]).
    pub fn set<T: Pod>(&mut self, slot: usize, v: &T) {
        let b = bytemuck::bytes_of(v);
        let o = slot * self.stride as usize;
        self.cpu[o..o + b.len()].copy_from_slice(b);
    }

    /// Upload slots `0 .. used` to the GPU (queued before the next submission).
    pub fn upload(&self, ctx: &GpuContext, used: usize) {
        let n = (used.min(self.slots) * self.stride as usize).max(4);
        ctx.queue.write_buffer(&self.buffer, 0, &self.cpu[..n]);
    }
}

/// Record one dispatch of `n_wg` workgroups (spread over a 2D grid when needed).
pub fn dispatch(
    pass: &mut wgpu::ComputePass<'_>,
    pipeline: &wgpu::ComputePipeline,
    bind: &wgpu::BindGroup,
    n_wg: u32,
) {
    let (x, y) = GpuContext::grid(n_wg);
    pass.set_pipeline(pipeline);
    pass.set_bind_group(0, bind, &[]);
    pass.dispatch_workgroups(x, y, 1);
}
