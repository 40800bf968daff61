//! Compute backends: a closed enum over the CPU (native + wasm simd128) and GPU (wgpu) engines,
//! and the one place that chooses between them (`--backend cpu|gpu|auto` in the CLI, the same
//! logic in the browser app).

pub mod cpu;
pub mod gpu;

use crate::error::{Error, Result};
#[cfg(not(target_arch = "wasm32"))]
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
pub enum LoadedModel {
    Cpu(CpuModel),
    Gpu(Box<gpu::model::GpuModel>),
}

impl LoadedModel {
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
}

/// Load the model on the chosen backend (native: blocking). Returns the model and a sentence
/// saying which backend was taken and why.
///
/// Errors: the GPU errors when `Gpu` was asked for explicitly (for `gemma3`:
/// [`Error::GpuUnsupportedArchitecture`]); with `Auto` any GPU failure falls back to the CPU
/// (the reason is in the returned sentence).
#[cfg(not(target_arch = "wasm32"))]
pub fn load<S: ByteSource + ?Sized>(
    g: &GgufFile,
    src: &S,
    choice: BackendChoice,
    n_ctx: usize,
    threads: usize,
) -> Result<(LoadedModel, String)> {
    let load_gpu = || -> Result<(LoadedModel, String)> {
        // Refuse architectures the GPU backend lacks before starting a device.
        gpu::model::ensure_supported(&crate::arch::config(g)?)?;
        let mut dev = gpu::Gpu::new(&gpu::GpuOptions::default())?;
        gpu::block_on(gpu::self_test(&mut dev))?;
        let name = dev.info().name.clone();
        let m = gpu::model::GpuModel::load(dev, g, src, n_ctx)?;
        Ok((
            LoadedModel::Gpu(Box::new(m)),
            format!("adapter `{name}` passed the self-test"),
        ))
    };
    let load_cpu = |why: String| -> Result<(LoadedModel, String)> {
        Ok((
            LoadedModel::Cpu(CpuModel::load(g, src, n_ctx, threads)?),
            why,
        ))
    };
    match choice {
        BackendChoice::Cpu => load_cpu("requested".into()),
        BackendChoice::Gpu => load_gpu(),
        BackendChoice::Auto => match load_gpu() {
            Ok(m) => Ok(m),
            // Model-level errors are not the GPU's fault: report them as they are.
            Err(
                e @ (Error::UnsupportedArchitecture(_)
                | Error::MissingTensor(_)
                | Error::Metadata { .. }),
            ) => Err(e),
            Err(e) => load_cpu(format!("GPU not used: {e}")),
        },
    }
}
