//! `gemma3`: Gemma 3 text models (270M / 1B / 4B …).
//!
//! Per layer (Gemma Team 2025, "Gemma 3 Technical Report"; llama.cpp `src/models/gemma3.cpp`):
//! ```text
//! q, k, v = Wq·RMSNorm(x), Wk·RMSNorm(x), Wv·RMSNorm(x)
//! q, k    = RoPE(RMSNorm_head(q)), RoPE(RMSNorm_head(k))        per-head q/k norms, NeoX pairs
//! h       = x + RMSNorm(Wo · Attention(q, k, v))               post-attention norm
//! out     = h + RMSNorm(Wdown · (GELU_tanh(Wgate·RMSNorm(h)) ⊙ Wup·RMSNorm(h)))   post-FFN norm
//! ```
//! with `x₀ = √n_embd · token_embd[id]` and `logits = token_embd · RMSNorm(out)` (tied).
//! Five of every six layers attend to the last `sliding_window` positions only and rotate with
//! RoPE base 10 000 unscaled; the sixth is global with `rope.freq_base` and the metadata's RoPE
//! scaling. The GGUF norm weights already hold Gemma's `1 + w` (llama.cpp's converter adds it).
//! [`block`] is shared with Gemma 2.

use super::llama::{attention_inputs, feed_forward};
use super::{blk, Act, Epilogue, Family, Glu, Graph, Weights};
use crate::error::{Error, Result};
use crate::gguf::GgufFile;
use crate::model::config::{names, RopeSpec};
use crate::model::{ModelConfig, RopeLayout};

/// One global layer after every five sliding ones (llama.cpp `set_swa_pattern(6)`).
pub const SWA_PATTERN: usize = 6;
/// RoPE base of the sliding layers (llama.cpp `rope_freq_base_train_swa`; not in the GGUF).
pub const ROPE_BASE_SWA: f32 = 10_000.0;
/// Gemma 3 27B's layer count (llama.cpp tells the model size by it).
pub const LAYERS_27B: usize = 62;

pub const FAMILY: Family = Family {
    name: "gemma3",
    examples: "Gemma 3 270M/1B/4B",
    configure,
    build,
};

fn configure(g: &GgufFile, cfg: &mut ModelConfig) -> Result<()> {
    let _ = g;
    cfg.rope_layout = RopeLayout::Neox;
    if cfg.sliding_window == 0 {
        // llama.cpp builds such files (no SWA) differently.
        return Err(Error::metadata(
            "gemma3.attention.sliding_window",
            "gemma3 without a sliding window is not supported",
        ));
    }
    // 27B scales queries by (n_embd / n_head)^-1/2, the others by head_dim^-1/2 (llama.cpp
    // `f_attention_scale`, after gemma_pytorch config.py).
    let attn_scale = if cfg.n_layer == LAYERS_27B {
        1.0 / ((cfg.n_embd / cfg.n_head) as f32).sqrt()
    } else {
        1.0 / (cfg.head_dim as f32).sqrt()
    };
    let window = cfg.sliding_window;
    for (l, spec) in cfg.layers.iter_mut().enumerate() {
        spec.attn_scale = attn_scale;
        if l % SWA_PATTERN < SWA_PATTERN - 1 {
            spec.window = window;
            spec.rope = Some(RopeSpec {
                base: ROPE_BASE_SWA,
                pos_scale: 1.0,
                mscale: 1.0,
            });
        }
    }
    cfg.embd_scale = (cfg.n_embd as f32).sqrt();
    Ok(())
}

fn build(cfg: &ModelConfig, _n_ctx: usize, w: &mut Weights<'_>, g: &mut Graph) -> Result<()> {
    block(cfg, w, g, true)
}

/// The Gemma block: embeddings × `embd_scale`; per layer pre- and post-norms around attention
/// and a GeGLU feed-forward; `qk_norm` adds per-head q/k norms (Gemma 3). Attention windows,
/// scales and softcaps come from the layer specs, the final softcap from the config.
pub(super) fn block(
    cfg: &ModelConfig,
    w: &mut Weights<'_>,
    g: &mut Graph,
    qk_norm: bool,
) -> Result<()> {
    let embd = w.matrix(names::TOKEN_EMBD, cfg.n_vocab, cfg.n_embd)?;
    g.embed(embd, cfg.embd_scale);
    for l in 0..cfg.n_layer {
        attention_inputs(cfg, w, g, l, false, qk_norm)?;
        g.rope_store(l, None);
        g.attend(l);
        let wo = w.matrix(&blk(l, names::ATTN_OUTPUT), cfg.n_embd, cfg.q_dim())?;
        let post = w.vector(&blk(l, names::ATTN_POST_NORM), cfg.n_embd)?;
        g.linear(wo, None, Act::Att, Act::Proj, Epilogue::STORE);
        g.norm_add(Act::Proj, post, Act::X);

        let down = feed_forward(cfg, w, g, l, Glu::GeluTanh)?;
        let post = w.vector(&blk(l, names::FFN_POST_NORM), cfg.n_embd)?;
        g.linear(down, None, Act::Gate, Act::Proj, Epilogue::STORE);
        g.norm_add(Act::Proj, post, Act::X);
    }
    super::llama::head(cfg, w, g, embd)
}
