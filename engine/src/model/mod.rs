//! Model architectures. Each file reads like its paper; hyperparameters come only from metadata.
//!
//! [`ForwardPass`] is what every backend implements for a loaded model: the generation loop in
//! [`crate::generate`] drives it without knowing whether it runs on the CPU or the GPU.

pub mod config;
pub mod gemma3;
pub mod llama;

pub use config::{Arch, ModelConfig, RopeLayout};

use crate::error::Result;
use crate::gguf::{ByteSource, GgufFile};
use gemma3::CpuGemma3;
use llama::CpuLlama;

/// Which logits a forward call returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    /// Only the last position's: (n_vocab).
    Last,
    /// Every position's: (n_tokens, n_vocab), row-major.
    All,
}

/// A loaded model with its KV cache on some backend.
pub trait ForwardPass {
    /// Hyperparameters.
    fn config(&self) -> &ModelConfig;

    /// Context capacity of the KV cache in tokens.
    fn n_ctx(&self) -> usize;

    /// Run `tokens` at positions `pos .. pos + tokens.len()` (prefill when more than one, decode
    /// when one), writing their keys/values into the KV cache; positions `>= pos` already in the
    /// cache are overwritten. Returns logits as selected by `which`.
    ///
    /// Errors: [`crate::Error::ContextFull`] past `n_ctx`, [`crate::Error::TokenOutOfRange`],
    /// backend errors (e.g. GPU device lost).
    fn forward(&mut self, tokens: &[u32], pos: usize, which: Logits) -> Result<&[f32]>;

    /// One decode step that also picks the next token on the device, so only its id is read
    /// back (GPU). `random` is a uniform draw in [0, 1) for the sampler. `None` when this backend
    /// samples on the host (the caller then uses [`ForwardPass::forward`] and
    /// [`crate::sampler::Sampler`]) or cannot honour `params` (min-p, repetition penalty).
    fn decode_sample(
        &mut self,
        _token: u32,
        _pos: usize,
        _params: &crate::sampler::SamplerParams,
        _random: f32,
    ) -> Option<Result<u32>> {
        None
    }
}

/// A model on the CPU backend: one decoder per architecture family, chosen by
/// `general.architecture` (a closed enum, no `Box<dyn>` on the hot path).
pub enum CpuModel {
    /// `llama`, `qwen2`.
    Llama(CpuLlama),
    /// `gemma3`.
    Gemma3(CpuGemma3),
}

impl CpuModel {
    /// Load the decoder of the file's architecture with a KV cache of `n_ctx` positions.
    /// `threads`: worker threads (0 = all cores; wasm: always 1).
    ///
    /// Errors: [`crate::Error::UnsupportedArchitecture`], metadata and tensor errors of the
    /// chosen decoder's `load`.
    pub fn load<S: ByteSource + ?Sized>(
        g: &GgufFile,
        src: &S,
        n_ctx: usize,
        threads: usize,
    ) -> Result<Self> {
        match Arch::from_name(g.architecture()?)? {
            Arch::Llama | Arch::Qwen2 => CpuLlama::load(g, src, n_ctx, threads).map(Self::Llama),
            Arch::Gemma3 => CpuGemma3::load(g, src, n_ctx, threads).map(Self::Gemma3),
        }
    }

    /// Worker threads in use.
    pub fn threads(&self) -> usize {
        match self {
            Self::Llama(m) => m.threads(),
            Self::Gemma3(m) => m.threads(),
        }
    }
}

impl ForwardPass for CpuModel {
    fn config(&self) -> &ModelConfig {
        match self {
            Self::Llama(m) => m.config(),
            Self::Gemma3(m) => m.config(),
        }
    }
    fn n_ctx(&self) -> usize {
        match self {
            Self::Llama(m) => m.n_ctx(),
            Self::Gemma3(m) => m.n_ctx(),
        }
    }
    fn forward(&mut self, tokens: &[u32], pos: usize, which: Logits) -> Result<&[f32]> {
        match self {
            Self::Llama(m) => m.forward(tokens, pos, which),
            Self::Gemma3(m) => m.forward(tokens, pos, which),
        }
    }
}
