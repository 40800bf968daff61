//! `gemma2`: Gemma 2 (2B / 9B / 27B). The Gemma block without q/k norms, plus tanh
//! soft-capping of the attention scores (`attn_logit_softcapping`) and of the final logits
//! (`final_logit_softcapping`); even layers slide over the last `sliding_window` positions,
//! odd layers are global; one RoPE base for all (llama.cpp `src/models/gemma2.cpp`,
//! `set_swa_pattern(2)`).

use super::gemma3::block;
use super::{Family, Graph, Weights};
use crate::error::Result;
use crate::gguf::GgufFile;
use crate::model::{ModelConfig, RopeLayout};

/// Every second layer is global (llama.cpp `set_swa_pattern(2)`).
pub const SWA_PATTERN: usize = 2;
/// Gemma 2 27B's layer count (llama.cpp tells the model size by it).
pub const LAYERS_27B: usize = 46;

pub const FAMILY: Family = Family {
    name: "gemma2",
    examples: "Gemma 2 2B/9B",
    configure,
    build,
};

fn configure(g: &GgufFile, cfg: &mut ModelConfig) -> Result<()> {
    cfg.rope_layout = RopeLayout::Neox;
    let attn_softcap = cfg.opt_f32(g, "attn_logit_softcapping")?.unwrap_or(0.0);
    cfg.final_softcap = cfg.opt_f32(g, "final_logit_softcapping")?.unwrap_or(0.0);
    let attn_scale = if cfg.n_layer == LAYERS_27B {
        1.0 / ((cfg.n_embd / cfg.n_head) as f32).sqrt()
    } else {
        1.0 / (cfg.head_dim as f32).sqrt()
    };
    let window = cfg.sliding_window;
    for (l, spec) in cfg.layers.iter_mut().enumerate() {
        spec.attn_scale = attn_scale;
        spec.attn_softcap = attn_softcap;
        if l % SWA_PATTERN < SWA_PATTERN - 1 {
            spec.window = window;
        }
    }
    cfg.embd_scale = (cfg.n_embd as f32).sqrt();
    Ok(())
}

fn build(cfg: &ModelConfig, _n_ctx: usize, w: &mut Weights<'_>, g: &mut Graph) -> Result<()> {
    block(cfg, w, g, false)
}
