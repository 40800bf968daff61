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

/// Architectures with a forward pass in this engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Arch {
    /// `llama`: Llama 2/3.x, SmolLM2, TinyLlama, Mistral.
    Llama,
    /// `qwen2`: Qwen2/2.5 (q/k/v projections carry biases).
    Qwen2,
}

impl Arch {
    /// Parse `general.architecture`. Errors: [`Error::UnsupportedArchitecture`].
    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "llama" => Ok(Arch::Llama),
            "qwen2" => Ok(Arch::Qwen2),
            other => Err(Error::UnsupportedArchitecture(other.to_string())),
        }
    }
    /// Metadata key prefix.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
        }
    }
}

/// How RoPE pairs up the dimensions of a head (llama.cpp `LLAMA_ROPE_TYPE_NORM` / `_NEOX`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RopeLayout {
    /// GGML "normal": rotate adjacent pairs (x[2i], x[2i+1]). Used by `llama` GGUFs, whose
    /// converter permuted the q/k weights into this order.
    Adjacent,
    /// GPT-NeoX: rotate (x[i], x[i + n_rot/2]). Used by `qwen2`, `gemma3`.
    Neox,
}

/// Hyperparameters of one model. Shapes below use these names.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub arch: Arch,
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
    /// RoPE θ base.
    pub rope_base: f32,
    /// Linear RoPE scaling: positions are multiplied by this (1 / `rope.scaling.factor`).
    pub rope_pos_scale: f32,
    /// Leading dimensions of each head that RoPE rotates (`rope.dimension_count`).
    pub n_rot: usize,
    pub rope_layout: RopeLayout,
}

impl ModelConfig {
    /// Read from metadata. Errors: [`Error::UnsupportedArchitecture`], [`Error::Metadata`] for a
    /// missing or inconsistent value.
    pub fn from_gguf(g: &GgufFile) -> Result<Self> {
        let arch = Arch::from_name(g.architecture()?)?;
        let p = arch.name();
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
        let rope_base = match g.get(&key("rope.freq_base")) {
            Some(_) => g.get_f32(&key("rope.freq_base"))?,
            None => 10_000.0,
        };
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
        let rope_layout = match arch {
            Arch::Llama => RopeLayout::Adjacent,
            Arch::Qwen2 => RopeLayout::Neox,
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
            rope_layout,
        })
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

/// GGUF tensor names of the `llama`/`qwen2` layout (llama.cpp `src/llama-arch.cpp`).
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
}
