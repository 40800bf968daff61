//! `granite`: IBM Granite 3.x dense models. The Llama block with four multipliers from the
//! metadata (llama.cpp `src/models/granite.cpp`): embeddings × `embedding_scale`, each
//! sub-block's output × `residual_scale` before its residual add, attention scores ×
//! `attention.scale` (instead of `1/√head_dim`), logits ÷ `logit_scale`.

use super::llama::{block, BlockOptions};
use super::{Family, Graph, Weights};
use crate::error::{Error, Result};
use crate::gguf::GgufFile;
use crate::model::config::names;
use crate::model::{ModelConfig, RopeLayout};

pub const FAMILY: Family = Family {
    name: "granite",
    examples: "Granite 3.x 2B/8B",
    configure,
    build,
};

fn configure(g: &GgufFile, cfg: &mut ModelConfig) -> Result<()> {
    cfg.rope_layout = RopeLayout::Adjacent;
    if let Some(s) = cfg.opt_f32(g, "embedding_scale")? {
        cfg.embd_scale = s;
    }
    if let Some(s) = cfg.opt_f32(g, "residual_scale")? {
        cfg.residual_scale = s;
    }
    if let Some(s) = cfg.opt_f32(g, "attention.scale")? {
        // llama.cpp: 0 means "the default 1/√head_dim".
        if s != 0.0 {
            cfg.layers.iter_mut().for_each(|l| l.attn_scale = s);
        }
    }
    if let Some(s) = cfg.opt_f32(g, "logit_scale")? {
        if s == 0.0 {
            return Err(Error::metadata("granite.logit_scale", "0"));
        }
        cfg.logit_scale = 1.0 / s;
    }
    Ok(())
}

fn build(cfg: &ModelConfig, _n_ctx: usize, w: &mut Weights<'_>, g: &mut Graph) -> Result<()> {
    let freqs = w.opt_vector(names::ROPE_FREQS, cfg.n_rot / 2)?;
    block(
        cfg,
        w,
        g,
        BlockOptions {
            biases: false,
            qk_norm: false,
            freqs,
        },
    )
}
