//! `llama`: Llama 2/3.x, SmolLM2, TinyLlama, Mistral-style models.
//!
//! Per layer (Touvron et al. 2023, "LLaMA"; llama.cpp `src/models/llama.cpp`):
//! ```text
//! h   = x + Wo · Attention(RoPE(Wq·RMSNorm(x)), RoPE(Wk·RMSNorm(x)), Wv·RMSNorm(x))
//! out = h + Wdown · (SiLU(Wgate·RMSNorm(h)) ⊙ Wup·RMSNorm(h))
//! ```
//! then `logits = Wout · RMSNorm(out)` with `Wout = token_embd` when the embeddings are tied.
//! Llama 3.x scales RoPE per frequency with the `rope_freqs` tensor. The GGUF converter
//! permuted q/k so RoPE rotates adjacent pairs. [`block`] is the pre-norm block several
//! families share (Qwen2's biases, Qwen3's q/k norms, Granite's multipliers, SmolLM3's NoPE
//! layers are all options or per-layer values of it).

use super::{blk, Act, Epilogue, Family, Glu, Graph, Mat, Vector, Weights};
use crate::error::Result;
use crate::gguf::GgufFile;
use crate::model::config::names;
use crate::model::{ModelConfig, RopeLayout};

pub const FAMILY: Family = Family {
    name: "llama",
    examples: "SmolLM2, Llama 3.2, TinyLlama, Mistral",
    configure,
    build,
};

fn configure(_g: &GgufFile, cfg: &mut ModelConfig) -> Result<()> {
    cfg.rope_layout = RopeLayout::Adjacent;
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

/// What varies in the shared pre-norm block.
pub(super) struct BlockOptions {
    /// Optional q/k/v biases (`attn_{q,k,v}.bias`, Qwen2).
    pub biases: bool,
    /// Per-head RMSNorm of q and k before RoPE (`attn_{q,k}_norm`, Qwen3).
    pub qk_norm: bool,
    /// RoPE frequency factors shared by every layer.
    pub freqs: Option<Vector>,
}

/// Embedding (× [`ModelConfig::embd_scale`]), `n_layer` pre-norm blocks with SwiGLU (sub-block
/// outputs × [`ModelConfig::residual_scale`] before each residual add), then [`head`].
pub(super) fn block(
    cfg: &ModelConfig,
    w: &mut Weights<'_>,
    g: &mut Graph,
    o: BlockOptions,
) -> Result<()> {
    let embd = w.matrix(names::TOKEN_EMBD, cfg.n_vocab, cfg.n_embd)?;
    g.embed(embd, cfg.embd_scale);
    let residual = Epilogue::add_scaled(cfg.residual_scale);
    for l in 0..cfg.n_layer {
        attention_inputs(cfg, w, g, l, o.biases, o.qk_norm)?;
        g.rope_store(l, o.freqs);
        g.attend(l);
        let wo = w.matrix(&blk(l, names::ATTN_OUTPUT), cfg.n_embd, cfg.q_dim())?;
        g.linear(wo, None, Act::Att, Act::X, residual);
        let down = feed_forward(cfg, w, g, l, Glu::Silu)?;
        g.linear(down, None, Act::Gate, Act::X, residual);
    }
    head(cfg, w, g, embd)
}

/// Layer `l`'s attention inputs: `Xn = RMSNorm(X)`, then `Q, K, V = W·Xn (+ b)` with the
/// optional biases, and the optional per-head q/k norms. Shared by the pre-norm families.
pub(super) fn attention_inputs(
    cfg: &ModelConfig,
    w: &mut Weights<'_>,
    g: &mut Graph,
    l: usize,
    biases: bool,
    qk_norm: bool,
) -> Result<()> {
    let (n_embd, q_dim, kv_dim) = (cfg.n_embd, cfg.q_dim(), cfg.kv_dim());
    let n = |s: &str| blk(l, s);
    let attn_norm = w.vector(&n(names::ATTN_NORM), n_embd)?;
    let wq = w.matrix(&n(names::ATTN_Q), q_dim, n_embd)?;
    let wk = w.matrix(&n(names::ATTN_K), kv_dim, n_embd)?;
    let wv = w.matrix(&n(names::ATTN_V), kv_dim, n_embd)?;
    let (bq, bk, bv) = if biases {
        (
            w.opt_vector(&n(names::ATTN_Q_BIAS), q_dim)?,
            w.opt_vector(&n(names::ATTN_K_BIAS), kv_dim)?,
            w.opt_vector(&n(names::ATTN_V_BIAS), kv_dim)?,
        )
    } else {
        (None, None, None)
    };
    g.norm(Act::X, attn_norm, Act::Xn);
    g.linear(wq, bq, Act::Xn, Act::Q, Epilogue::STORE);
    g.linear(wk, bk, Act::Xn, Act::K, Epilogue::STORE);
    g.linear(wv, bv, Act::Xn, Act::V, Epilogue::STORE);
    if qk_norm {
        let qn = w.vector(&n(names::ATTN_Q_NORM), cfg.head_dim)?;
        let kn = w.vector(&n(names::ATTN_K_NORM), cfg.head_dim)?;
        g.head_norm(Act::Q, qn);
        g.head_norm(Act::K, kn);
    }
    Ok(())
}

/// Layer `l`'s gated feed-forward up to its down projection: `Xn = RMSNorm(X)`,
/// `Gate = act(Wgate·Xn) ⊙ Wup·Xn`. Returns `Wdown` (n_embd, n_ff) for the caller's epilogue.
pub(super) fn feed_forward(
    cfg: &ModelConfig,
    w: &mut Weights<'_>,
    g: &mut Graph,
    l: usize,
    act: Glu,
) -> Result<Mat> {
    let (n_embd, n_ff) = (cfg.n_embd, cfg.n_ff);
    let n = |s: &str| blk(l, s);
    let ffn_norm = w.vector(&n(names::FFN_NORM), n_embd)?;
    let gate = w.matrix(&n(names::FFN_GATE), n_ff, n_embd)?;
    let up = w.matrix(&n(names::FFN_UP), n_ff, n_embd)?;
    let down = w.matrix(&n(names::FFN_DOWN), n_embd, n_ff)?;
    g.norm(Act::X, ffn_norm, Act::Xn);
    g.linear(gate, None, Act::Xn, Act::Gate, Epilogue::STORE);
    g.linear(up, None, Act::Xn, Act::Up, Epilogue::STORE);
    g.glu(act);
    Ok(down)
}

/// The head every family shares: `logits = softcap(logit_scale · Wout · RMSNorm(x))` with
/// `Wout = output.weight`, or the embedding table `embd` when the file has none (tied).
pub(super) fn head(cfg: &ModelConfig, w: &mut Weights<'_>, g: &mut Graph, embd: Mat) -> Result<()> {
    let norm = w.vector(names::OUTPUT_NORM, cfg.n_embd)?;
    let out = w
        .opt_matrix(names::OUTPUT, cfg.n_vocab, cfg.n_embd)?
        .unwrap_or(embd);
    g.begin_head();
    g.norm(Act::X, norm, Act::Xn);
    g.linear(
        out,
        None,
        Act::Xn,
        Act::Logits,
        Epilogue {
            scale: cfg.logit_scale,
            softcap: cfg.final_softcap,
            accumulate: false,
        },
    );
    Ok(())
}
