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
    /// `gemma3`: Gemma 3 text models (q/k norms, post-norms, GeGLU, sliding-window layers).
    /// CPU backend only.
    Gemma3,
}

impl Arch {
    /// Parse `general.architecture`. Errors: [`Error::UnsupportedArchitecture`].
    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "llama" => Ok(Arch::Llama),
            "qwen2" => Ok(Arch::Qwen2),
            "gemma3" => Ok(Arch::Gemma3),
            other => Err(Error::UnsupportedArchitecture(other.to_string())),
        }
    }
    /// Metadata key prefix.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Gemma3 => "gemma3",
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
    /// Sliding-window attention (`attention.sliding_window`): a sliding layer's query at
    /// position `p` sees only positions `p - sliding_window + 1 ..= p`. 0 = every layer global.
    pub sliding_window: usize,
    /// Every `swa_pattern`-th layer (index `% swa_pattern == swa_pattern - 1`) is global, the
    /// others slide (llama.cpp `set_swa_pattern`). 0 when `sliding_window` is 0.
    pub swa_pattern: usize,
    /// RoPE θ base of the sliding layers (their positions are never scaled).
    pub rope_base_swa: f32,
    /// Queries are multiplied by this before `q·k` (Gemma's `query_pre_attn_scalar^-1/2`;
    /// `1/√head_dim` for the other architectures).
    pub attn_scale: f32,
    /// Input embeddings are multiplied by this (Gemma: `√n_embd`; else 1).
    pub embd_scale: f32,
}

/// Gemma 3: one global layer after every five sliding ones (llama.cpp `llama-model.cpp`,
/// `LLM_ARCH_GEMMA3`: `set_swa_pattern(6)`).
pub const GEMMA3_SWA_PATTERN: usize = 6;
/// Gemma 3: RoPE base of the sliding layers (llama.cpp `rope_freq_base_train_swa`; the
/// GGUF carries only the global layers' base).
pub const GEMMA3_ROPE_BASE_SWA: f32 = 10_000.0;
/// Gemma 3 27B's layer count (llama.cpp identifies the model size by it).
pub const GEMMA3_27B_LAYERS: usize = 62;

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
            Arch::Qwen2 | Arch::Gemma3 => RopeLayout::Neox,
        };
        let (mut sliding_window, mut swa_pattern) = (0, 0);
        let (mut attn_scale, mut embd_scale) = (1.0 / (head_dim as f32).sqrt(), 1.0);
        if arch == Arch::Gemma3 {
            if g.get(&key("attention.sliding_window")).is_some() {
                sliding_window = g.get_usize(&key("attention.sliding_window"), MAX_CONTEXT)?;
            }
            if sliding_window == 0 {
                // llama.cpp builds such files (no SWA) with a final logit soft-cap this engine
                // does not implement.
                return Err(Error::metadata(
                    &key("attention.sliding_window"),
                    "gemma3 without a sliding window is not supported",
                ));
            }
            swa_pattern = GEMMA3_SWA_PATTERN;
            // Gemma 3 27B scales queries by (n_embd / n_head)^-1/2, the others by
            // head_dim^-1/2 (llama.cpp `f_attention_scale`, after gemma_pytorch config.py);
            // llama.cpp tells 27B by its 62 layers.
            if n_layer == GEMMA3_27B_LAYERS {
                attn_scale = 1.0 / ((n_embd / n_head) as f32).sqrt();
            }
            embd_scale = (n_embd as f32).sqrt();
        }
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
            sliding_window,
            swa_pattern,
            rope_base_swa: GEMMA3_ROPE_BASE_SWA,
            attn_scale,
            embd_scale,
        })
    }

    /// Whether layer `l` uses sliding-window attention.
    pub fn is_sliding(&self, l: usize) -> bool {
        self.sliding_window > 0
            && self.swa_pattern > 0
            && l % self.swa_pattern < self.swa_pattern - 1
    }

    /// RoPE (base, position scale) of layer `l`: sliding layers use [`Self::rope_base_swa`]
    /// unscaled, the others `rope.freq_base` and the linear scaling of the metadata.
    pub fn rope_of_layer(&self, l: usize) -> (f32, f32) {
        if self.is_sliding(l) {
            (self.rope_base_swa, 1.0)
        } else {
            (self.rope_base, self.rope_pos_scale)
        }
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
    /// Gemma 3: per-head RMSNorm weights of q and k, (head_dim) each.
    pub const ATTN_Q_NORM: &str = "attn_q_norm.weight";
    pub const ATTN_K_NORM: &str = "attn_k_norm.weight";
    /// Gemma 3: RMSNorm of the attention output before the residual add, (n_embd).
    pub const ATTN_POST_NORM: &str = "post_attention_norm.weight";
    /// Gemma 3: RMSNorm of the feed-forward output before the residual add, (n_embd).
    pub const FFN_POST_NORM: &str = "post_ffw_norm.weight";
}
