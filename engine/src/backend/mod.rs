//! Compute backends: a closed enum over the CPU (native + wasm simd128) and GPU (wgpu) engines,
//! and the one place that chooses between them (`--backend cpu|gpu|auto` in the CLI, the same
//! logic in the browser app).

pub mod cpu;
pub mod gpu;

use crate::error::{Error, Result};
use crate::gguf::{ByteSource, GgufFile};
use crate::model::{ForwardPass, Logits, ModelConfig};
use crate::sampler::SamplerParams;
pub use cpu::CpuModel;

/// Which backend the caller asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendChoice {
    Cpu,
    Gpu,
    /// The GPU when an adapter exists and passes its self-test, else the CPU.
    Auto,
}

impl std::str::FromStr for BackendChoice {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "cpu" => Ok(Self::Cpu),
            "gpu" => Ok(Self::Gpu),
            "auto" => Ok(Self::Auto),
            other => Err(Error::InvalidParam {
                name: "backend",
                what: format!("`{other}` is not one of cpu, gpu, auto"),
            }),
        }
    }
}

/// A loaded model on one backend.
#[allow(clippy::large_enum_variant)] // one per loaded model, rarely moved
pub enum LoadedModel {
    Cpu(CpuModel),
    Gpu(Box<gpu::model::GpuModel>),
}

impl LoadedModel {
    /// Bytes of weights one decode step reads.
    pub fn weight_bytes_per_token(&self) -> u64 {
        match self {
            LoadedModel::Cpu(m) => m.weight_bytes_per_token(),
            LoadedModel::Gpu(m) => m.weight_bytes_per_token(),
        }
    }

    /// `"cpu"` or `"gpu"`.
    pub fn name(&self) -> &'static str {
        match self {
            LoadedModel::Cpu(_) => "cpu",
            LoadedModel::Gpu(_) => "gpu",
        }
    }
}

impl ForwardPass for LoadedModel {
    fn config(&self) -> &ModelConfig {
        match self {
            LoadedModel::Cpu(m) => m.config(),
            LoadedModel::Gpu(m) => m.config(),
        }
    }
    fn n_ctx(&self) -> usize {
        match self {
            LoadedModel::Cpu(m) => m.n_ctx(),
            LoadedModel::Gpu(m) => m.n_ctx(),
        }
    }
    fn forward(&mut self, tokens: &[u32], pos: usize, which: Logits) -> Result<&[f32]> {
        match self {
            LoadedModel::Cpu(m) => m.forward(tokens, pos, which),
            LoadedModel::Gpu(m) => m.forward(tokens, pos, which),
        }
    }
    fn decode_sample(
        &mut self,
        token: u32,
        pos: usize,
        params: &SamplerParams,
        random: f32,
    ) -> Option<Result<u32>> {
        match self {
            LoadedModel::Cpu(_) => None,
            #[cfg(not(target_arch = "wasm32"))]
            LoadedModel::Gpu(m) => {
                Some(m.decode_sample(token, pos, &gpu::GpuSampling::from_params(params, random)))
            }
            // The browser drives the GPU through the async API (`decode_sample_async`).
            #[cfg(target_arch = "wasm32")]
            LoadedModel::Gpu(_) => {
                let _ = (token, pos, params, random);
                None
            }
        }
    }
    fn decode_submit(
        &mut self,
        token: Option<u32>,
        pos: usize,
        params: &SamplerParams,
        random: f32,
    ) -> Option<Result<()>> {
        match self {
            LoadedModel::Cpu(_) => None,
            #[cfg(not(target_arch = "wasm32"))]
            LoadedModel::Gpu(m) => Some(m.decode_submit_blocking(
                token,
                pos,
                &gpu::GpuSampling::from_params(params, random),
            )),
            #[cfg(target_arch = "wasm32")]
            LoadedModel::Gpu(_) => {
                let _ = (token, pos, params, random);
                None
            }
        }
    }
    fn decode_collect(&mut self) -> Result<u32> {
        match self {
            #[cfg(not(target_arch = "wasm32"))]
            LoadedModel::Gpu(m) => m.decode_collect(),
            _ => Err(Error::InvalidParam {
                name: "decode_collect",
                what: "this backend has no pipelined decode".into(),
            }),
        }
    }
}

/// What the caller knows about the GPU before the loader tries it, and a hook for the device.
#[derive(Default)]
pub struct GpuHooks<'a> {
    /// Why this environment has no GPU at all, when known up front (a browser without
    /// WebGPU): the GPU is then not tried.
    pub unavailable: Option<String>,
    /// Called with the device as soon as it exists (the browser worker records its JavaScript
    /// `GPUDevice` there, to watch for its loss).
    pub on_device: Option<&'a mut dyn FnMut(&gpu::Gpu)>,
}

/// Errors that are the model file's fault, not the GPU's: `auto` reports them instead of
/// falling back (the CPU would refuse the file too).
fn is_model_error(e: &Error) -> bool {
    matches!(
        e,
        Error::UnsupportedArchitecture(_)
            | Error::MissingTensor(_)
            | Error::Metadata { .. }
            | Error::Gguf { .. }
            | Error::Truncated { .. }
    )
}

/// Load the model on the chosen backend: the one selection rule, used by the CLI (through
/// [`load`]) and by the browser worker. Returns the model and a sentence saying which backend
/// was taken and why.
///
/// - `Cpu`: the CPU with `threads` workers (0 = all cores; wasm: 1 unless the embedder
///   registered a thread spawner, [`cpu::set_thread_spawner`]).
/// - `Gpu`: the GPU or its error.
/// - `Auto`: the GPU when an adapter exists, its self-test passes and the model loads on it;
///   otherwise the CPU, the reason being the GPU's error. Errors that are the file's fault
///   (unsupported architecture, missing tensor, bad metadata, truncated file) are returned as
///   they are.
pub async fn load_async<S: ByteSource + ?Sized>(
    g: &GgufFile,
    src: &S,
    choice: BackendChoice,
    n_ctx: usize,
    threads: usize,
    hooks: GpuHooks<'_>,
) -> Result<(LoadedModel, String)> {
    let load_cpu = |why: String| -> Result<(LoadedModel, String)> {
        Ok((
            LoadedModel::Cpu(CpuModel::load(g, src, n_ctx, threads)?),
            why,
        ))
    };
    if choice == BackendChoice::Cpu {
        return load_cpu("requested".into());
    }
    let GpuHooks {
        unavailable,
        mut on_device,
    } = hooks;
    let gpu = async {
        if let Some(why) = unavailable {
            return Err(Error::GpuUnavailable(why));
        }
        // Refuse what the GPU backend cannot run before starting a device.
        gpu::model::ensure_supported(&crate::arch::config(g)?)?;
        let mut dev = gpu::Gpu::new_async(&gpu::GpuOptions::default()).await?;
        if let Some(f) = on_device.as_mut() {
            f(&dev);
        }
        gpu::self_test(&mut dev).await?;
        let name = dev.info().name.clone();
        let m = gpu::model::GpuModel::load(dev, g, src, n_ctx)?;
        Ok((
            LoadedModel::Gpu(Box::new(m)),
            format!("adapter `{name}` passed the self-test"),
        ))
    }
    .await;
    match (choice, gpu) {
        (_, Ok(m)) => Ok(m),
        (BackendChoice::Gpu, Err(e)) => Err(e),
        (_, Err(e)) if is_model_error(&e) => Err(e),
        (_, Err(e)) => load_cpu(format!("GPU not used: {e}")),
    }
}

/// Blocking [`load_async`] (native), without hooks.
///
/// Errors: as [`load_async`].
#[cfg(not(target_arch = "wasm32"))]
pub fn load<S: ByteSource + ?Sized>(
    g: &GgufFile,
    src: &S,
    choice: BackendChoice,
    n_ctx: usize,
    threads: usize,
) -> Result<(LoadedModel, String)> {
    gpu::block_on(load_async(
        g,
        src,
        choice,
        n_ctx,
        threads,
        GpuHooks::default(),
    ))
}
