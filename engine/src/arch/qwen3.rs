//! `qwen3`: Qwen3 dense models. The Llama block with a per-head RMSNorm of q and k before RoPE
//! (NeoX), no biases; `attention.key_length` may differ from `n_embd / n_head`
//! (llama.cpp `src/models/qwen3.cpp`).

use super::llama::{block, BlockOptions};
use super::{Family, Graph, Weights};
use crate::error::Result;
use crate::gguf::GgufFile;
use crate::model::{ModelConfig, RopeLayout};

pub const FAMILY: Family = Family {
    name: "qwen3",
    examples: "Qwen3 0.6B/1.7B/4B",
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
            biases: false,
            qk_norm: true,
            freqs: None,
        },
    )
}
