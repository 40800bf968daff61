//! `phi3`: Phi-3 / Phi-3.5-mini / Phi-4-mini (llama.cpp `src/models/phi3.cpp`).
//!
//! The Llama block with fused tensors: `attn_qkv` holds the Q, K and V rows in that order and
//! `ffn_up` the gate rows then the up rows (split here at load, reading each part's bytes once).
//! RoPE is NeoX with LongRoPE: per-frequency factors `rope_factors_long` when the context
//! exceeds `rope.scaling.original_context_length`, else `rope_factors_short`, and cos/sin
//! scaled by `rope.scaling.attn_factor`. Phi's sliding window stays off, as in llama.cpp.

use super::{blk, Act, Epilogue, Family, Glu, Graph, Weights};
use crate::error::Result;
use crate::gguf::GgufFile;
use crate::model::config::{names, MAX_CONTEXT};
use crate::model::{ModelConfig, RopeLayout};

pub const FAMILY: Family = Family {
    name: "phi3",
    examples: "Phi-3.5-mini, Phi-4-mini",
    configure,
    build,
};

fn configure(g: &GgufFile, cfg: &mut ModelConfig) -> Result<()> {
    cfg.rope_layout = RopeLayout::Neox;
    if let Some(f) = cfg.opt_f32(g, "rope.scaling.attn_factor")? {
        for spec in cfg.layers.iter_mut() {
            if let Some(r) = spec.rope.as_mut() {
                r.mscale = f;
            }
        }
    }
    cfg.sliding_window = 0;
    cfg.layers.iter_mut().for_each(|s| s.window = 0);
    Ok(())
}

fn build(cfg: &ModelConfig, n_ctx: usize, w: &mut Weights<'_>, g: &mut Graph) -> Result<()> {
    let (n_embd, q_dim, kv_dim, n_ff) = (cfg.n_embd, cfg.q_dim(), cfg.kv_dim(), cfg.n_ff);
    // llama.cpp `get_rope_factors`: long factors once the context passes the original one.
    let key = "phi3.rope.scaling.original_context_length";
    let n_ctx_orig = match w.file().get(key) {
        Some(_) => w.file().get_usize(key, MAX_CONTEXT)?,
        None => cfg.n_ctx_train,
    };
    let factors = if n_ctx > n_ctx_orig {
        names::ROPE_FACTORS_LONG
    } else {
        names::ROPE_FACTORS_SHORT
    };
    let freqs = match w.opt_vector(names::ROPE_FREQS, cfg.n_rot / 2)? {
        Some(f) => Some(f),
        None => w.opt_vector(factors, cfg.n_rot / 2)?,
    };

    let embd = w.matrix(names::TOKEN_EMBD, cfg.n_vocab, n_embd)?;
    g.embed(embd, cfg.embd_scale);
    let qkv_rows = q_dim + 2 * kv_dim;
    for l in 0..cfg.n_layer {
        let n = |s: &str| blk(l, s);
        let attn_norm = w.vector(&n(names::ATTN_NORM), n_embd)?;
        g.norm(Act::X, attn_norm, Act::Xn);
        let (wq, wk, wv) = if w.has(&n(names::ATTN_QKV)) {
            let qkv = n(names::ATTN_QKV);
            (
                w.matrix_rows(&qkv, qkv_rows, 0, q_dim, n_embd)?,
                w.matrix_rows(&qkv, qkv_rows, q_dim, kv_dim, n_embd)?,
                w.matrix_rows(&qkv, qkv_rows, q_dim + kv_dim, kv_dim, n_embd)?,
            )
        } else {
            (
                w.matrix(&n(names::ATTN_Q), q_dim, n_embd)?,
                w.matrix(&n(names::ATTN_K), kv_dim, n_embd)?,
                w.matrix(&n(names::ATTN_V), kv_dim, n_embd)?,
            )
        };
        g.linear(wq, None, Act::Xn, Act::Q, Epilogue::STORE);
        g.linear(wk, None, Act::Xn, Act::K, Epilogue::STORE);
        g.linear(wv, None, Act::Xn, Act::V, Epilogue::STORE);
        g.rope_store(l, freqs);
        g.attend(l);
        let wo = w.matrix(&n(names::ATTN_OUTPUT), n_embd, q_dim)?;
        g.linear(wo, None, Act::Att, Act::X, Epilogue::ADD);

        let ffn_norm = w.vector(&n(names::FFN_NORM), n_embd)?;
        let up_name = n(names::FFN_UP);
        let (gate, up) = if w.has(&n(names::FFN_GATE)) {
            (
                w.matrix(&n(names::FFN_GATE), n_ff, n_embd)?,
                w.matrix(&up_name, n_ff, n_embd)?,
            )
        } else {
            (
                w.matrix_rows(&up_name, 2 * n_ff, 0, n_ff, n_embd)?,
                w.matrix_rows(&up_name, 2 * n_ff, n_ff, n_ff, n_embd)?,
            )
        };
        let down = w.matrix(&n(names::FFN_DOWN), n_embd, n_ff)?;
        g.norm(Act::X, ffn_norm, Act::Xn);
        g.linear(gate, None, Act::Xn, Act::Gate, Epilogue::STORE);
        g.linear(up, None, Act::Xn, Act::Up, Epilogue::STORE);
        g.glu(Glu::Silu);
        g.linear(down, None, Act::Gate, Act::X, Epilogue::ADD);
    }
    super::llama::head(cfg, w, g, embd)
}
