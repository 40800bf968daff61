//! Gemma 3 decoder on the CPU (`gemma3`: Gemma 3 270M / 1B / 4B… text models).
//!
//! Per layer (Gemma Team 2025, "Gemma 3 Technical Report"; llama.cpp `src/models/gemma3.cpp`):
//! ```text
//! q, k, v = Wq·RMSNorm(x), Wk·RMSNorm(x), Wv·RMSNorm(x)
//! q, k    = RoPE(RMSNorm_head(q)), RoPE(RMSNorm_head(k))        per-head q/k norms, NeoX pairs
//! h       = x + RMSNorm(Wo · Attention(q, k, v))               post-attention norm
//! out     = h + RMSNorm(Wdown · (GELU_tanh(Wgate·RMSNorm(h)) ⊙ Wup·RMSNorm(h)))   post-FFN norm
//! ```
//! with `x₀ = √n_embd · token_embd[id]` and `logits = token_embd · RMSNorm(out)` (tied, no
//! soft-cap). Five of every six layers attend to the last `sliding_window` positions only and
//! rotate with RoPE base 10 000; the sixth is global with `rope.freq_base` (1e6) and the
//! metadata's RoPE scaling ([`ModelConfig::rope_of_layer`]).
//!
//! The GGUF norm weights already hold Gemma's `1 + w` (llama.cpp's converter adds the one), so
//! every norm here is the plain [`ops::rms_norm`]. Queries are scaled by
//! [`ModelConfig::attn_scale`] (`1/√head_dim` except for 27B). Weights stay in their GGUF block
//! layout, as in [`crate::model::llama`], whose loading helpers, scratch and KV cache this file
//! shares.

use crate::backend::cpu::ops;
use crate::error::{Error, Result};
use crate::gguf::{ByteSource, GgufFile};
use crate::model::config::names;
use crate::model::llama::{
    embed_tokens, linear, load_matrix, load_vector, rope_store_attend, CpuState,
};
use crate::model::{Arch, ForwardPass, Logits, ModelConfig};
use crate::tensor::QMatrix;

/// Weights of one Gemma 3 block. Shapes as (rows, cols) = (out, in).
pub struct Gemma3Layer {
    /// (n_embd)
    pub attn_norm: Vec<f32>,
    /// (q_dim, n_embd)
    pub wq: QMatrix,
    /// (kv_dim, n_embd)
    pub wk: QMatrix,
    /// (kv_dim, n_embd)
    pub wv: QMatrix,
    /// (head_dim), applied to every query head
    pub q_norm: Vec<f32>,
    /// (head_dim), applied to every key head
    pub k_norm: Vec<f32>,
    /// (n_embd, q_dim)
    pub wo: QMatrix,
    /// (n_embd)
    pub attn_post_norm: Vec<f32>,
    /// (n_embd)
    pub ffn_norm: Vec<f32>,
    /// (n_ff, n_embd)
    pub w_gate: QMatrix,
    /// (n_ff, n_embd)
    pub w_up: QMatrix,
    /// (n_embd, n_ff)
    pub w_down: QMatrix,
    /// (n_embd)
    pub ffn_post_norm: Vec<f32>,
}

/// All weights of a Gemma 3 model.
pub struct Gemma3Weights {
    /// (n_vocab, n_embd); also the output projection unless `output` is present.
    pub token_embd: QMatrix,
    /// (n_embd)
    pub output_norm: Vec<f32>,
    /// (n_vocab, n_embd); `None` when tied to `token_embd` (all released Gemma 3 GGUFs).
    pub output: Option<QMatrix>,
    pub layers: Vec<Gemma3Layer>,
}

impl Gemma3Weights {
    /// Read every weight from `src`, one tensor at a time.
    ///
    /// Errors: [`Error::MissingTensor`], [`Error::Shape`], I/O errors of `src`.
    pub fn load<S: ByteSource + ?Sized>(cfg: &ModelConfig, g: &GgufFile, src: &S) -> Result<Self> {
        let (n_embd, q_dim, kv_dim, n_ff, hd) = (
            cfg.n_embd,
            cfg.q_dim(),
            cfg.kv_dim(),
            cfg.n_ff,
            cfg.head_dim,
        );
        let token_embd = load_matrix(g, src, names::TOKEN_EMBD, cfg.n_vocab, n_embd)?;
        let output_norm = load_vector(g, src, names::OUTPUT_NORM, n_embd)?;
        let output = match g.tensor(names::OUTPUT) {
            Some(_) => Some(load_matrix(g, src, names::OUTPUT, cfg.n_vocab, n_embd)?),
            None => None,
        };
        let mut layers = Vec::with_capacity(cfg.n_layer);
        for l in 0..cfg.n_layer {
            let n = |s: &str| names::layer(l, s);
            layers.push(Gemma3Layer {
                attn_norm: load_vector(g, src, &n(names::ATTN_NORM), n_embd)?,
                wq: load_matrix(g, src, &n(names::ATTN_Q), q_dim, n_embd)?,
                wk: load_matrix(g, src, &n(names::ATTN_K), kv_dim, n_embd)?,
                wv: load_matrix(g, src, &n(names::ATTN_V), kv_dim, n_embd)?,
                q_norm: load_vector(g, src, &n(names::ATTN_Q_NORM), hd)?,
                k_norm: load_vector(g, src, &n(names::ATTN_K_NORM), hd)?,
                wo: load_matrix(g, src, &n(names::ATTN_OUTPUT), n_embd, q_dim)?,
                attn_post_norm: load_vector(g, src, &n(names::ATTN_POST_NORM), n_embd)?,
                ffn_norm: load_vector(g, src, &n(names::FFN_NORM), n_embd)?,
                w_gate: load_matrix(g, src, &n(names::FFN_GATE), n_ff, n_embd)?,
                w_up: load_matrix(g, src, &n(names::FFN_UP), n_ff, n_embd)?,
                w_down: load_matrix(g, src, &n(names::FFN_DOWN), n_embd, n_ff)?,
                ffn_post_norm: load_vector(g, src, &n(names::FFN_POST_NORM), n_embd)?,
            });
        }
        Ok(Self {
            token_embd,
            output_norm,
            output,
            layers,
        })
    }

    /// The output projection: `output.weight`, or `token_embd.weight` when tied.
    pub fn output(&self) -> &QMatrix {
        self.output.as_ref().unwrap_or(&self.token_embd)
    }
}

/// A Gemma 3 model with its KV cache, running on the CPU.
///
/// The KV cache keeps every position for every layer (sliding layers included), so a caller may
/// rewind to any earlier position, as [`ForwardPass::forward`] allows; sliding layers only
/// read the last `sliding_window` rows of it.
pub struct CpuGemma3 {
    cfg: ModelConfig,
    w: Gemma3Weights,
    st: CpuState,
}

impl CpuGemma3 {
    /// Load weights from `src` and allocate a KV cache of `n_ctx` positions (capped at the
    /// trained context). `threads`: worker threads (0 = all cores; wasm: always 1).
    ///
    /// Errors: [`Error::UnsupportedArchitecture`] when the file is not `gemma3`, metadata errors
    /// from [`ModelConfig`], tensor errors from [`Gemma3Weights::load`].
    pub fn load<S: ByteSource + ?Sized>(
        g: &GgufFile,
        src: &S,
        n_ctx: usize,
        threads: usize,
    ) -> Result<Self> {
        let cfg = ModelConfig::from_gguf(g)?;
        if cfg.arch != Arch::Gemma3 {
            return Err(Error::UnsupportedArchitecture(format!(
                "{} (in the gemma3 decoder)",
                cfg.arch.name()
            )));
        }
        let w = Gemma3Weights::load(&cfg, g, src)?;
        let st = CpuState::new(&cfg, n_ctx, threads);
        Ok(Self { cfg, w, st })
    }

    /// The weights.
    pub fn weights(&self) -> &Gemma3Weights {
        &self.w
    }

    /// Worker threads in use.
    pub fn threads(&self) -> usize {
        self.st.threads.count()
    }
}

/// Run one batch of `n <= MAX_BATCH` tokens at positions `pos..pos+n` through every layer,
/// leaving the final hidden states, normalised, in `st.s.xb`.
fn forward_batch(
    cfg: &ModelConfig,
    w: &Gemma3Weights,
    st: &mut CpuState,
    tokens: &[u32],
    pos: usize,
) -> Result<()> {
    let n = tokens.len();
    let (n_embd, q_dim, kv_dim, n_ff) = (cfg.n_embd, cfg.q_dim(), cfg.kv_dim(), cfg.n_ff);
    let eps = cfg.rms_eps;
    st.s.ensure(cfg, st.n_ctx, n);
    let s = &mut st.s;
    let th = &st.threads;

    // Token embeddings, scaled: x[t] = √n_embd · token_embd[tokens[t]].
    embed_tokens(cfg, &w.token_embd, tokens, &mut s.x)?;

    let norm_rows =
        |out: &mut [f32], x: &[f32], weight: &[f32]| ops::rms_norm_rows(out, x, weight, n, eps);
    // Per-head q/k norms, in place: every head (as wide as `weight`) of `x`.
    let norm_heads = |x: &mut [f32], weight: &[f32]| {
        for head in x.chunks_exact_mut(weight.len()) {
            ops::rms_norm_inplace(head, weight, eps);
        }
    };

    for (l, lw) in w.layers.iter().enumerate() {
        // Attention sub-block (RoPE base and window of layer `l`: see `rope_store_attend`).
        norm_rows(&mut s.xb, &s.x, &lw.attn_norm);
        linear(&lw.wq, None, &s.xb, n, &mut s.acts, &mut s.q, th);
        linear(&lw.wk, None, &s.xb, n, &mut s.acts, &mut s.k, th);
        linear(&lw.wv, None, &s.xb, n, &mut s.acts, &mut s.v, th);
        norm_heads(&mut s.q[..n * q_dim], &lw.q_norm);
        norm_heads(&mut s.k[..n * kv_dim], &lw.k_norm);
        rope_store_attend(cfg, s, &mut st.kv, l, n, pos, None);
        linear(&lw.wo, None, &s.att, n, &mut s.acts, &mut s.proj, th);
        norm_rows(&mut s.xb, &s.proj, &lw.attn_post_norm);
        ops::add_inplace(&mut s.x[..n * n_embd], &s.xb[..n * n_embd]);

        // Feed-forward sub-block (GeGLU).
        norm_rows(&mut s.xb, &s.x, &lw.ffn_norm);
        linear(&lw.w_gate, None, &s.xb, n, &mut s.acts, &mut s.gate, th);
        linear(&lw.w_up, None, &s.xb, n, &mut s.acts, &mut s.up, th);
        ops::geglu(&mut s.gate[..n * n_ff], &s.up[..n * n_ff]);
        linear(&lw.w_down, None, &s.gate, n, &mut s.acts, &mut s.proj, th);
        norm_rows(&mut s.xb, &s.proj, &lw.ffn_post_norm);
        ops::add_inplace(&mut s.x[..n * n_embd], &s.xb[..n * n_embd]);
    }

    norm_rows(&mut s.xb, &s.x, &w.output_norm);
    Ok(())
}

impl ForwardPass for CpuGemma3 {
    fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    fn n_ctx(&self) -> usize {
        self.st.n_ctx
    }

    fn forward(&mut self, tokens: &[u32], pos: usize, which: Logits) -> Result<&[f32]> {
        let (cfg, w) = (&self.cfg, &self.w);
        self.st
            .forward(cfg, w.output(), tokens, pos, which, |st, batch, p| {
                forward_batch(cfg, w, st, batch, p)
            })
    }
}
