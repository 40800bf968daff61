//! What every backend's loaded model is: hyperparameters ([`config`], read only from metadata)
//! and the [`ForwardPass`] trait. The architectures themselves are in [`crate::arch`].
//!
//! [`ForwardPass`] is what every backend implements for a loaded model: the generation loop in
//! [`crate::generate`] drives it without knowing whether it runs on the CPU or the GPU.

pub mod config;

pub use config::{LayerSpec, ModelConfig, RopeLayout, RopeSpec};

use crate::error::Result;

/// Which logits a forward call returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    /// Only the last position's: (n_vocab).
    Last,
    /// Every position's: (n_tokens, n_vocab), row-major.
    All,
}

/// The checks every backend's forward call makes before touching anything: at least one token,
/// `pos + tokens.len() ≤ n_ctx`, every id below `n_vocab`.
///
/// Errors: [`crate::Error::Shape`], [`crate::Error::ContextFull`],
/// [`crate::Error::TokenOutOfRange`].
pub fn check_forward(tokens: &[u32], pos: usize, n_ctx: usize, n_vocab: usize) -> Result<()> {
    use crate::Error;
    if tokens.is_empty() {
        return Err(Error::Shape {
            op: "forward",
            detail: "no tokens".into(),
        });
    }
    if pos.checked_add(tokens.len()).is_none_or(|end| end > n_ctx) {
        return Err(Error::ContextFull {
            n_prompt: pos,
            n_requested: tokens.len(),
            n_ctx,
        });
    }
    if let Some(&id) = tokens.iter().find(|&&t| t as usize >= n_vocab) {
        return Err(Error::TokenOutOfRange { id, n_vocab });
    }
    Ok(())
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
