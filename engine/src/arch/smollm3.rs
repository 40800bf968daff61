//! `smollm3`: SmolLM3. The Llama block where every fourth layer (`(l + 1) % 4 == 0`) has no
//! RoPE at all ("NoPE"); llama.cpp hard-codes the interval (`n_no_rope_layer_step = 4`, no GGUF
//! key; `src/models/smollm3.cpp`).

use super::llama::{block, BlockOptions};
use super::{Family, Graph, Weights};
use crate::error::Result;
use crate::gguf::GgufFile;
use crate::model::{ModelConfig, RopeLayout};

/// Every this-many-th layer skips RoPE (llama.cpp `n_no_rope_layer_step`).
pub const NO_ROPE_LAYER_STEP: usize = 4;

pub const FAMILY: Family = Family {
    name: "smollm3",
    examples: "SmolLM3-3B",
    configure,
    build,
};

fn configure(_g: &GgufFile, cfg: &mut ModelConfig) -> Result<()> {
    cfg.rope_layout = RopeLayout::Adjacent;
    for (l, spec) in cfg.layers.iter_mut().enumerate() {
        if (l + 1) % NO_ROPE_LAYER_STEP == 0 {
            spec.rope = None;
        }
    }
    Ok(())
}

fn build(cfg: &ModelConfig, _n_ctx: usize, w: &mut Weights<'_>, g: &mut Graph) -> Result<()> {
    block(
        cfg,
        w,
        g,
        BlockOptions {
            biases: false,
            qk_norm: false,
            freqs: None,
        },
    )
}
