//! GPU backend: the same llama/qwen2 forward pass as the CPU, as WGSL compute kernels run
//! through wgpu (Vulkan/Metal/DX12 natively, WebGPU in the browser), one submission per token.
//!
//! - [`context`]: adapter, device, limits, optional features, typed device errors, read-back.
//! - [`shaders`]: the WGSL sources (`shaders/*.wgsl`) and the pipeline cache.
//! - [`weights`]: weight tensors in GGUF block layout, split across buffers past the binding
//!   limit. [`params`] / [`arena`]: kernel parameter blocks.
//! - [`ops`]: one-shot kernel runs (tests, self-test). [`model`]: [`GpuModel`].
//!
//! See `README.md` in this folder for the memory layout and the per-token command stream.

pub mod arena;
pub mod context;
pub mod model;
pub mod ops;
pub mod params;
pub mod shaders;
pub mod weights;

pub use context::{GpuContext, GpuInfo, GpuOptions};
pub use model::GpuModel;
pub use shaders::{supports, KvType, Op, PipelineCache, PipelineKey, Variant, GPU_WEIGHT_TYPES};
pub use weights::GpuWeight;

use crate::error::{Error, Result};
use crate::quant::GgmlDType;

/// Storage buffers one kernel binds at most (rope.wgsl: q_raw, q, k_raw, v_raw, k cache, v cache,
/// RoPE factors); WebGPU guarantees 8.
pub const MIN_STORAGE_BUFFERS: u32 = 7;

/// A device with its pipeline cache: what every GPU op runs on.
pub struct Gpu {
    pub ctx: GpuContext,
    pub pipes: PipelineCache,
}

impl Gpu {
    /// Open the device. Errors: see [`GpuContext::new_async`].
    pub async fn new_async(opts: &GpuOptions) -> Result<Self> {
        let ctx = GpuContext::new_async(opts).await?;
        let pipes = PipelineCache::new(&ctx);
        Ok(Self { ctx, pipes })
    }

    /// Blocking [`Gpu::new_async`] (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn new(opts: &GpuOptions) -> Result<Self> {
        block_on(Self::new_async(opts))
    }

    /// Adapter and device facts.
    pub fn info(&self) -> &GpuInfo {
        &self.ctx.info
    }
}

/// Run a future to completion on the calling thread (native only: the web cannot block).
#[cfg(not(target_arch = "wasm32"))]
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    pollster::block_on(f)
}

/// How the decode step picks the next token on the GPU (llama.cpp order: top-k, top-p,
/// temperature, draw).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GpuSampling {
    /// ≤ 0: greedy (argmax).
    pub temperature: f32,
    /// Keep the k most likely tokens; 0 keeps all.
    pub top_k: u32,
    /// Keep the smallest most-likely set with this much probability; 1 keeps all.
    pub top_p: f32,
    /// Drop tokens less likely than this × the most likely one; 0 keeps all. Applied only
    /// where [`GpuSampling::parallel`] (the one-workgroup kernel has no min-p).
    pub min_p: f32,
    /// A uniform draw in [0, 1) from the caller's random generator.
    pub random: f32,
}

impl GpuSampling {
    /// The device sampler for the host sampler's settings `p` (temperature, top-k, top-p; see
    /// [`crate::sampler::Sampler::device_compatible`]) and the uniform draw `random` in [0, 1).
    pub fn from_params(p: &crate::sampler::SamplerParams, random: f32) -> Self {
        Self {
            temperature: p.temperature,
            top_k: p.top_k.min(u32::MAX as usize) as u32,
            top_p: p.top_p,
            min_p: p.min_p,
            random,
        }
    }

    /// Argmax.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            random: 0.0,
        }
    }

    /// Whether the decode step samples over many workgroups (sample_topk.wgsl: greedy, or
    /// top-k in 1..=[`params::SAMPLE_TOPK_MAX`], with min-p, and the draw in descending order
    /// exactly as [`crate::sampler::Sampler`]); otherwise one workgroup (sample.wgsl: the draw
    /// in index order, no min-p).
    pub fn parallel(&self) -> bool {
        self.temperature <= 0.0 || (1..=params::SAMPLE_TOPK_MAX).contains(&self.top_k)
    }

    /// Errors: [`Error::InvalidParam`] for a non-finite temperature, top_p outside (0, 1] or a
    /// draw outside [0, 1).
    pub fn validate(&self) -> Result<()> {
        if !self.temperature.is_finite() {
            return Err(Error::InvalidParam {
                name: "temperature",
                what: format!("{} is not finite", self.temperature),
            });
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::InvalidParam {
                name: "top_p",
                what: format!("{} is outside (0, 1]", self.top_p),
            });
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return Err(Error::InvalidParam {
                name: "min_p",
                what: format!("{} is outside [0, 1]", self.min_p),
            });
        }
        if !(0.0..1.0).contains(&self.random) {
            return Err(Error::InvalidParam {
                name: "random",
                what: format!("{} is outside [0, 1)", self.random),
            });
        }
        Ok(())
    }

    pub(crate) fn params(&self, n_vocab: u32, logits_off: u32) -> params::SampleParams {
        params::SampleParams {
            n_vocab,
            logits_off,
            top_k: self.top_k,
            n_groups: params::sample_groups(n_vocab),
            temperature: self.temperature,
            top_p: self.top_p,
            random: self.random,
            min_p: self.min_p,
        }
    }
}

/// Open the default GPU and run [`self_test`]: what `--backend auto` calls before choosing the
/// GPU. Errors: [`Error::GpuUnavailable`] when there is no adapter or the self-test fails.
pub async fn probe_async() -> Result<GpuInfo> {
    let mut gpu = Gpu::new_async(&GpuOptions::default()).await?;
    self_test(&mut gpu).await?;
    Ok(gpu.ctx.info.clone())
}

/// Blocking [`probe_async`] (native only).
#[cfg(not(target_arch = "wasm32"))]
pub fn probe() -> Result<GpuInfo> {
    block_on(probe_async())
}

/// A tiny matrix-vector product (an F32 and a Q8_0 matrix of 5 × 64) and a decode-attention
/// step over a 6-position KV cache (in the device's cache type, so an f16 cache is exercised
/// where the device has `shader-f16`), each against the same computation on the CPU.
/// Errors: [`Error::GpuUnavailable`] on a mismatch or a GPU failure.
pub async fn self_test(gpu: &mut Gpu) -> Result<()> {
    const ROWS: usize = 5;
    const COLS: usize = 64;
    let x: Vec<f32> = (0..COLS)
        .map(|i| ((i * 7 % 13) as f32 - 6.0) / 8.0)
        .collect();
    let wf: Vec<f32> = (0..ROWS * COLS)
        .map(|i| ((i * 11 % 17) as f32 - 8.0) / 16.0)
        .collect();
    // Q8_0: per 32 values an f16 scale 1/16 and int8 quants (i * 11 % 17 - 8).
    let mut q8 = Vec::with_capacity(ROWS * COLS / 32 * 34);
    for blk in wf.chunks(32) {
        q8.extend_from_slice(&half::f16::from_f32(1.0 / 16.0).to_le_bytes());
        q8.extend(blk.iter().map(|v| ((v * 16.0).round() as i8) as u8));
    }
    let want: Vec<f32> = wf
        .chunks(COLS)
        .map(|r| r.iter().zip(&x).map(|(a, b)| a * b).sum())
        .collect();
    let fail = |what: String| Error::GpuUnavailable(format!("self-test failed: {what}"));
    for (dtype, bytes) in [
        (
            GgmlDType::F32,
            bytemuck::cast_slice::<f32, u8>(&wf).to_vec(),
        ),
        (GgmlDType::Q8_0, q8),
    ] {
        let w = GpuWeight::upload(&gpu.ctx, "self-test", dtype, ROWS, COLS, &bytes)
            .map_err(|e| fail(e.to_string()))?;
        let got = gpu
            .matmul(&w, &x, 1, None)
            .await
            .map_err(|e| fail(e.to_string()))?;
        for (g, e) in got.iter().zip(&want) {
            if (g - e).abs() > 1e-3 * (1.0 + e.abs()) {
                return Err(fail(format!("{dtype} matvec gave {g}, expected {e}")));
            }
        }
    }
    // Decode attention: 4 heads over 2 KV heads of 8 dims, query at position 5.
    const N_KV: usize = 6;
    const HEADS: (usize, usize, usize) = (4, 2, 8);
    let (n_head, n_head_kv, hd) = HEADS;
    let val = |i: usize, m: usize| ((i * m % 23) as f32 - 11.0) / 16.0;
    let q: Vec<f32> = (0..n_head * hd).map(|i| val(i, 5)).collect();
    // Multiples of 1/16 below 1: exact in f16, so both cache types hold the same values.
    let k: Vec<f32> = (0..N_KV * n_head_kv * hd).map(|i| val(i, 7)).collect();
    let v: Vec<f32> = (0..N_KV * n_head_kv * hd).map(|i| val(i, 3)).collect();
    let got = gpu
        .attention(&q, &k, &v, 1, N_KV - 1, n_head, n_head_kv, hd)
        .await
        .map_err(|e| fail(e.to_string()))?;
    let mut want = vec![0f32; n_head * hd];
    let mut scores = vec![0f32; N_KV * n_head / n_head_kv];
    crate::backend::cpu::ops::attention(
        &mut want,
        &q,
        &k,
        &v,
        N_KV,
        n_head,
        n_head_kv,
        hd,
        &mut scores,
    );
    for (g, e) in got.iter().zip(&want) {
        if (g - e).abs() > 1e-3 * (1.0 + e.abs()) {
            return Err(fail(format!("attention gave {g}, expected {e}")));
        }
    }
    Ok(())
}
