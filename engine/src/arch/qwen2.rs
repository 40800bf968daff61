//! `qwen2`: Qwen2 / Qwen2.5. The Llama block with biases on the q/k/v projections and NeoX RoPE
//! (llama.cpp `src/models/qwen2.cpp`).

use super::llama::{block, BlockOptions};
use super::{Family, Graph, Weights};
use crate::error::Result;
use crate::gguf::GgufFile;
use crate::model::{ModelConfig, RopeLayout};

pub const FAMILY: Family = Family {
    name: "qwen2",
    examples: "Qwen2.5 0.5B/1.5B/3B",
    configure,
    build,
};

fn configure(_g: &GgufFile, cfg: &mut ModelConfig) -> Result<()> {
    cfg.rope_layout = RopeLayout::Neox;
    Ok(())
}

fn build(cfg: &ModelConfig, _n_ctx: usize, w: &mut Weights<'_>, g: &mut Graph) -> Result<()> {
    block(
        cfg,
        w,
        g,
        BlockOptions {
            biases: true,
            qk_norm: false,
            freqs: None,
        },
    )
}
