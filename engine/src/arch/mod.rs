//! Model architectures, each defined once: one file per family holds its hyperparameter quirks
//! ([`Family::configure`]) and its tensors and forward pass ([`Family::build`]), written
//! against the backend-neutral interface in [`graph`]. Both backends run every family.
//!
//! ```text
//! arch::<family>.rs ──► arch::graph (Graph, Op, Weights) ◄── backend::cpu / backend::gpu
//! ```
//!
//! Adding a family: a new file with `pub const FAMILY: Family = …` and a line in [`FAMILIES`].

pub mod gemma2;
pub mod gemma3;
pub mod granite;
pub mod graph;
pub mod llama;
pub mod phi3;
pub mod qwen2;
pub mod qwen3;
pub mod smollm3;
pub mod weights;

use crate::error::{Error, Result};
use crate::gguf::{ByteSource, GgufFile};
use crate::model::ModelConfig;

pub use graph::{Act, Epilogue, Glu, Graph, Mat, Op, Vector, WeightStore};
pub use weights::Weights;

/// What a backend needs to know about a family.
pub struct Family {
    /// `general.architecture`, also the metadata key prefix.
    pub name: &'static str,
    /// Models of this family people run (for messages and docs).
    pub examples: &'static str,
    /// Family-specific hyperparameters on top of [`ModelConfig::read_common`]: RoPE layout,
    /// per-layer windows, scales, softcaps.
    pub configure: fn(&GgufFile, &mut ModelConfig) -> Result<()>,
    /// Read the tensors through [`Weights`] and record the forward pass into [`Graph`].
    /// `n_ctx`: the KV cache's context (LongRoPE picks its factors by it).
    pub build: fn(&ModelConfig, usize, &mut Weights<'_>, &mut Graph) -> Result<()>,
}

/// Every family this engine runs.
pub const FAMILIES: &[&Family] = &[
    &llama::FAMILY,
    &qwen2::FAMILY,
    &qwen3::FAMILY,
    &gemma2::FAMILY,
    &gemma3::FAMILY,
    &phi3::FAMILY,
    &granite::FAMILY,
    &smollm3::FAMILY,
];

/// The family registered as `name`. Errors: [`Error::UnsupportedArchitecture`].
pub fn family(name: &str) -> Result<&'static Family> {
    FAMILIES
        .iter()
        .copied()
        .find(|f| f.name == name)
        .ok_or_else(|| Error::UnsupportedArchitecture(name.to_string()))
}

/// The model's hyperparameters: the common ones and its family's.
///
/// Errors: [`Error::UnsupportedArchitecture`], [`Error::Metadata`].
pub fn config(g: &GgufFile) -> Result<ModelConfig> {
    let f = family(g.architecture()?)?;
    let mut cfg = ModelConfig::read_common(g, f.name)?;
    (f.configure)(g, &mut cfg)?;
    Ok(cfg)
}

/// Load a model's weights into `store` and record its forward pass: the one entry point both
/// backends use. Returns the config and the graph.
///
/// Errors: those of [`config`], [`Error::MissingTensor`], [`Error::Shape`] (a tensor that
/// contradicts the metadata), [`Error::Metadata`] (tensors of layers past `block_count`),
/// I/O and the store's errors.
pub fn build(
    g: &GgufFile,
    src: &dyn ByteSource,
    n_ctx: usize,
    store: &mut dyn WeightStore,
) -> Result<(ModelConfig, Graph)> {
    let cfg = config(g)?;
    let f = family(cfg.arch)?;
    let mut w = Weights::new(g, src, store);
    let mut graph = Graph::new();
    (f.build)(&cfg, n_ctx, &mut w, &mut graph)?;
    w.finish(cfg.arch, cfg.n_layer)?;
    Ok((cfg, graph))
}

/// `blk.{layer}.{suffix}`.
pub fn blk(layer: usize, suffix: &str) -> String {
    crate::model::config::names::layer(layer, suffix)
}
