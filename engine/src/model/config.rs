//! Hyperparameters of a decoder-only transformer, read only from GGUF metadata
//! (`{arch}.block_count`, `{arch}.attention.head_count`, ...; llama.cpp `src/llama-model.cpp`).

use crate::error::{Error, Result};
use crate::gguf::GgufFile;

/// Caps on hyperparameters: anything larger is a corrupt file, not a small model.
pub const MAX_LAYERS: usize = 512;
pub const MAX_EMBD: usize = 1 << 16;
pub const MAX_HEADS: usize = 1 << 10;
pub const MAX_VOCAB: usize = 1 << 20;
pub const MAX_FF: usize = 1 << 18;
pub const MAX_CONTEXT: usize = 1 << 24;

/// How RoPE pairs up the dimensions of a head (llama.cpp `LLAMA_ROPE_TYPE_NORM` / `_NEOX`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RopeLayout {
    /// GGML "normal": rotate adjacent pairs (x[2i], x[2i+1]). Used by `llama` GGUFs, whose
    /// converter permuted the q/k weights into this order.
    Adjacent,
    /// GPT-NeoX: rotate (x[i], x[i + n_rot/2]). Used by `qwen2`, `gemma3`.
    Neox,
}

/// RoPE of one layer: pair `i` of position `p` turns by
/// `p · pos_scale · base^(-2i/n_rot) / freq_factor[i]`, and cos/sin are multiplied by `mscale`
/// (llama.cpp `ggml_rope_ext` with `ext_factor` 0: `attn_factor`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RopeSpec {
    pub base: f32,
    pub pos_scale: f32,
    pub mscale: f32,
}

/// Per-layer attention values, each from metadata (or llama.cpp's documented default where the
/// GGUF has no key): the one place both backends read them from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LayerSpec {
    /// RoPE of this layer; `None`: no rotary embedding at all (SmolLM3's NoPE layers).
    pub rope: Option<RopeSpec>,
    /// Sliding window: a query at position `p` sees positions `p - window + 1 ..= p`;
    /// 0 = every earlier position.
    pub window: usize,
    /// Queries are multiplied by this before `q·k` (`1/√head_dim` unless the family says
    /// otherwise).
    pub attn_scale: f32,
    /// Attention scores go through `softcap · tanh(s / softcap)` before the softmax; 0 = none.
    pub attn_softcap: f32,
}

/// Hyperparameters of one model. Shapes below use these names.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    /// `general.architecture`, as registered in [`crate::arch::FAMILIES`].
    pub arch: &'static str,
    pub n_vocab: usize,
    /// Context length the model was trained with.
    pub n_ctx_train: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads (GQA: `n_head % n_head_kv == 0`).
    pub n_head_kv: usize,
    /// Dimension of one head (`n_embd / n_head` unless `attention.key_length` says otherwise).
    pub head_dim: usize,
    /// Feed-forward hidden size.
    pub n_ff: usize,
    pub rms_eps: f32,
    /// RoPE θ base (`rope.freq_base`, default 10 000).
    pub rope_base: f32,
    /// Linear RoPE scaling: positions are multiplied by this (1 / `rope.scaling.factor`).
    pub rope_pos_scale: f32,
    /// Leading dimensions of each head that RoPE rotates (`rope.dimension_count`).
    pub n_rot: usize,
    pub rope_layout: RopeLayout,
    /// `attention.sliding_window` (0 when absent); which layers slide is the family's
    /// business ([`LayerSpec::window`]).
    pub sliding_window: usize,
    /// Input embeddings are multiplied by this (Gemma: `√n_embd`; Granite: `embedding_scale`).
    pub embd_scale: f32,
    /// Logits are multiplied by this (Granite: `1 / logit_scale`; else 1).
    pub logit_scale: f32,
    /// Final logits go through `softcap · tanh(l / softcap)`; 0 = none (Gemma 2).
    pub final_softcap: f32,
    /// Sub-block outputs are multiplied by this before each residual add (Granite).
    pub residual_scale: f32,
    /// One entry per layer.
    pub layers: Vec<LayerSpec>,
}

impl ModelConfig {
    /// The hyperparameters every family shares, read from `{prefix}.*` metadata, with every
    /// layer global, RoPE'd with `rope.freq_base` and the linear scaling of the metadata, and
    /// queries scaled by `1/√head_dim`. Families adjust the rest ([`crate::arch::Family`]).
    ///
    /// Errors: [`Error::Metadata`] for a missing, absurd or inconsistent value.
    pub fn read_common(g: &GgufFile, arch: &'static str) -> Result<Self> {
        let p = arch;
        let key = |k: &str| format!("{p}.{k}");
        let n_embd = g.get_usize(&key("embedding_length"), MAX_EMBD)?;
        let n_layer = g.get_usize(&key("block_count"), MAX_LAYERS)?;
        let n_head = g.get_usize(&key("attention.head_count"), MAX_HEADS)?;
        let n_head_kv = match g.get(&key("attention.head_count_kv")) {
            Some(_) => g.get_usize(&key("attention.head_count_kv"), MAX_HEADS)?,
            None => n_head,
        };
        let n_ff = g.get_usize(&key("feed_forward_length"), MAX_FF)?;
        let n_ctx_train = g.get_usize(&key("context_length"), MAX_CONTEXT)?;
        let n_tokens = g
            .get("tokenizer.ggml.tokens")
            .and_then(|v| v.as_array())
            .map(|a| a.len());
        let n_vocab = match g.get(&key("vocab_size")) {
            Some(_) => g.get_usize(&key("vocab_size"), MAX_VOCAB)?,
            None => g.get_array("tokenizer.ggml.tokens")?.len(),
        };
        if n_vocab == 0 || n_vocab > MAX_VOCAB {
            return Err(Error::metadata(
                "tokenizer.ggml.tokens",
                format!("vocabulary of {n_vocab}"),
            ));
        }
        // The tokenizer, the embedding and the output projection must agree on the vocabulary:
        // llama.cpp creates `token_embd` as (n_embd, n_tokens) and refuses any other shape, so
        // no padding is accepted here either. (A smaller vocabulary would stream the ids past
        // its end as empty text.)
        if let Some(nt) = n_tokens.filter(|&nt| nt != n_vocab) {
            return Err(Error::metadata(
                "tokenizer.ggml.tokens",
                format!("{nt} tokens, but `{}` is {n_vocab}", key("vocab_size")),
            ));
        }
        if let Some(t) = g.tensor(names::TOKEN_EMBD) {
            let rows = t.dims.get(1).copied().unwrap_or(1);
            if rows != n_vocab as u64 {
                return Err(Error::metadata(
                    "tokenizer.ggml.tokens",
                    format!(
                        "a vocabulary of {n_vocab} tokens, but `{}` has {rows} rows",
                        names::TOKEN_EMBD
                    ),
                ));
            }
        }
        if n_layer == 0 || n_embd == 0 || n_ff == 0 {
            return Err(Error::metadata(
                &key("block_count"),
                format!("{n_layer} layers of width {n_embd}, feed-forward {n_ff}"),
            ));
        }
        if n_head == 0 || n_head_kv == 0 || n_head % n_head_kv != 0 {
            return Err(Error::metadata(
                &key("attention.head_count_kv"),
                format!("{n_head} query heads are not a multiple of {n_head_kv} KV heads"),
            ));
        }
        let head_dim = match g.get(&key("attention.key_length")) {
            Some(_) => g.get_usize(&key("attention.key_length"), MAX_EMBD)?,
            None => n_embd / n_head,
        };
        if head_dim == 0 || head_dim % 2 != 0 {
            return Err(Error::metadata(
                &key("attention.key_length"),
                format!("head dim {head_dim}"),
            ));
        }
        if g.get(&key("attention.value_length")).is_some() {
            let v = g.get_usize(&key("attention.value_length"), MAX_EMBD)?;
            if v != head_dim {
                return Err(Error::metadata(
                    &key("attention.value_length"),
                    format!("value length {v} differs from key length {head_dim}"),
                ));
            }
        }
        let n_rot = match g.get(&key("rope.dimension_count")) {
            Some(_) => g.get_usize(&key("rope.dimension_count"), MAX_EMBD)?,
            None => head_dim,
        };
        if n_rot > head_dim || n_rot % 2 != 0 {
            return Err(Error::metadata(
                &key("rope.dimension_count"),
                format!("{n_rot} rotary dims for head dim {head_dim}"),
            ));
        }
        let rms_eps = g.get_f32(&key("attention.layer_norm_rms_epsilon"))?;
        if !(rms_eps.is_finite() && rms_eps > 0.0) {
            return Err(Error::metadata(
                &key("attention.layer_norm_rms_epsilon"),
                format!("{rms_eps} is not a finite positive number"),
            ));
        }
        let rope_base = match g.get(&key("rope.freq_base")) {
            Some(_) => g.get_f32(&key("rope.freq_base"))?,
            None => 10_000.0,
        };
        if !(rope_base.is_finite() && rope_base > 0.0) {
            return Err(Error::metadata(
                &key("rope.freq_base"),
                format!("{rope_base} is not a finite positive number"),
            ));
        }
        let rope_pos_scale = match g.get(&key("rope.scaling.type")).and_then(|v| v.as_str()) {
            Some("linear") => {
                let f = g.get_f32(&key("rope.scaling.factor"))?;
                if !(f > 0.0 && f.is_finite()) {
                    return Err(Error::metadata(&key("rope.scaling.factor"), format!("{f}")));
                }
                1.0 / f
            }
            None | Some("none") => 1.0,
            Some(other) => {
                return Err(Error::metadata(
                    &key("rope.scaling.type"),
                    format!("RoPE scaling `{other}` is not supported"),
                ))
            }
        };
        let sliding_window = match g.get(&key("attention.sliding_window")) {
            Some(_) => g.get_usize(&key("attention.sliding_window"), MAX_CONTEXT)?,
            None => 0,
        };
        let spec = LayerSpec {
            rope: Some(RopeSpec {
                base: rope_base,
                pos_scale: rope_pos_scale,
                mscale: 1.0,
            }),
            window: 0,
            attn_scale: 1.0 / (head_dim as f32).sqrt(),
            attn_softcap: 0.0,
        };
        Ok(Self {
            arch,
            n_vocab,
            n_ctx_train,
            n_embd,
            n_layer,
            n_head,
            n_head_kv,
            head_dim,
            n_ff,
            rms_eps,
            rope_base,
            rope_pos_scale,
            n_rot,
            rope_layout: RopeLayout::Adjacent,
            sliding_window,
            embd_scale: 1.0,
            logit_scale: 1.0,
            final_softcap: 0.0,
            residual_scale: 1.0,
            layers: vec![spec; n_layer],
        })
    }

    /// An optional f32 key `{arch}.{k}`: `None` when absent; an error when present but not a
    /// finite number.
    pub fn opt_f32(&self, g: &GgufFile, k: &str) -> Result<Option<f32>> {
        let key = format!("{}.{k}", self.arch);
        match g.get(&key) {
            None => Ok(None),
            Some(_) => {
                let v = g.get_f32(&key)?;
                if v.is_finite() {
                    Ok(Some(v))
                } else {
                    Err(Error::metadata(&key, format!("{v} is not finite")))
                }
            }
        }
    }

    /// Whether layer `l` uses sliding-window attention.
    pub fn is_sliding(&self, l: usize) -> bool {
        self.layers.get(l).is_some_and(|s| s.window > 0)
    }

    /// Width of the K (and V) projection output: `n_head_kv * head_dim`.
    pub fn kv_dim(&self) -> usize {
        self.n_head_kv * self.head_dim
    }
    /// Width of the Q projection output: `n_head * head_dim`.
    pub fn q_dim(&self) -> usize {
        self.n_head * self.head_dim
    }
}

/// GGUF tensor names (llama.cpp `src/llama-arch.cpp`) the families use (llama.cpp `src/llama-arch.cpp`).
pub mod names {
    pub const TOKEN_EMBD: &str = "token_embd.weight";
    pub const OUTPUT_NORM: &str = "output_norm.weight";
    /// Absent when the embeddings are tied: `token_embd` then serves as the output projection.
    pub const OUTPUT: &str = "output.weight";
    /// Llama 3 per-dimension RoPE frequency factors (optional).
    pub const ROPE_FREQS: &str = "rope_freqs.weight";

    /// `blk.{layer}.{suffix}`, e.g. `blk.0.attn_q.weight`.
    pub fn layer(layer: usize, suffix: &str) -> String {
        format!("blk.{layer}.{suffix}")
    }
    pub const ATTN_NORM: &str = "attn_norm.weight";
    pub const ATTN_Q: &str = "attn_q.weight";
    pub const ATTN_K: &str = "attn_k.weight";
    pub const ATTN_V: &str = "attn_v.weight";
    pub const ATTN_Q_BIAS: &str = "attn_q.bias";
    pub const ATTN_K_BIAS: &str = "attn_k.bias";
    pub const ATTN_V_BIAS: &str = "attn_v.bias";
    pub const ATTN_OUTPUT: &str = "attn_output.weight";
    pub const FFN_NORM: &str = "ffn_norm.weight";
    pub const FFN_GATE: &str = "ffn_gate.weight";
    pub const FFN_UP: &str = "ffn_up.weight";
    pub const FFN_DOWN: &str = "ffn_down.weight";
    /// Gemma 3: per-head RMSNorm weights of q and k, (head_dim) each.
    pub const ATTN_Q_NORM: &str = "attn_q_norm.weight";
    pub const ATTN_K_NORM: &str = "attn_k_norm.weight";
    /// Gemma 3: RMSNorm of the attention output before the residual add, (n_embd).
    pub const ATTN_POST_NORM: &str = "post_attention_norm.weight";
    /// Gemma 2/3: RMSNorm of the feed-forward output before the residual add, (n_embd).
    pub const FFN_POST_NORM: &str = "post_ffw_norm.weight";
    /// Phi-3: Q, K and V projections as one (q_dim + 2·kv_dim, n_embd) matrix.
    pub const ATTN_QKV: &str = "attn_qkv.weight";
    /// Phi-3 LongRoPE frequency factors, (n_rot / 2) each: `long` past the original context.
    pub const ROPE_FACTORS_LONG: &str = "rope_factors_long.weight";
    pub const ROPE_FACTORS_SHORT: &str = "rope_factors_short.weight";
}
