//! Llama-family decoder on the CPU: `llama` (Llama 2/3.x, SmolLM2, TinyLlama, Mistral) and
//! `qwen2` (q/k/v biases, NeoX RoPE).
//!
//! Per layer (Touvron et al. 2023, "LLaMA"; llama.cpp `src/models/llama.cpp`):
//! ```text
//! h   = x + Wo · Attention(RoPE(Wq·RMSNorm(x)), RoPE(Wk·RMSNorm(x)), Wv·RMSNorm(x))
//! out = h + Wdown · (SiLU(Wgate·RMSNorm(h)) ⊙ Wup·RMSNorm(h))
//! ```
//! then `logits = Wout · RMSNorm(out)` with `Wout = token_embd` when the embeddings are tied.
//! Weights stay in their GGUF block layout; activations are quantized per token for the dot
//! products ([`crate::quant::PreparedActs`]), as llama.cpp does.

use crate::backend::cpu::{matmul, ops, CpuThreads};
use crate::error::{Error, Result};
use crate::gguf::{ByteSource, GgufFile};
use crate::model::config::names;
use crate::model::{Arch, ForwardPass, Logits, ModelConfig};
use crate::quant::{self, PreparedActs};
use crate::tensor::QMatrix;

/// Most tokens run through the layers at once during prefill (bounds scratch memory; a longer
/// prompt is processed in several batches).
pub const MAX_BATCH: usize = 64;

/// Weights of one transformer block. Shapes as (rows, cols) = (out, in).
pub struct LayerWeights {
    /// (n_embd)
    pub attn_norm: Vec<f32>,
    /// (q_dim, n_embd)
    pub wq: QMatrix,
    /// (kv_dim, n_embd)
    pub wk: QMatrix,
    /// (kv_dim, n_embd)
    pub wv: QMatrix,
    /// qwen2 only: (q_dim), (kv_dim), (kv_dim)
    pub bq: Option<Vec<f32>>,
    pub bk: Option<Vec<f32>>,
    pub bv: Option<Vec<f32>>,
    /// (n_embd, q_dim)
    pub wo: QMatrix,
    /// (n_embd)
    pub ffn_norm: Vec<f32>,
    /// (n_ff, n_embd)
    pub w_gate: QMatrix,
    /// (n_ff, n_embd)
    pub w_up: QMatrix,
    /// (n_embd, n_ff)
    pub w_down: QMatrix,
}

/// All weights of a llama-family model.
pub struct LlamaWeights {
    /// (n_vocab, n_embd)
    pub token_embd: QMatrix,
    /// (n_embd)
    pub output_norm: Vec<f32>,
    /// (n_vocab, n_embd); `None` when tied to `token_embd`.
    pub output: Option<QMatrix>,
    /// Llama 3 RoPE frequency factors: (n_rot / 2).
    pub rope_freqs: Option<Vec<f32>>,
    pub layers: Vec<LayerWeights>,
}

/// Read a tensor as a quantized matrix, checking its shape: dims (cols, rows) = (ne0, ne1).
pub(crate) fn load_matrix<S: ByteSource + ?Sized>(
    g: &GgufFile,
    src: &S,
    name: &str,
    rows: usize,
    cols: usize,
) -> Result<QMatrix> {
    let info = g
        .tensor(name)
        .ok_or_else(|| Error::MissingTensor(name.to_string()))?;
    if info.dims.len() != 2 || info.dims[0] != cols as u64 || info.dims[1] != rows as u64 {
        return Err(Error::Shape {
            op: "load",
            detail: format!(
                "`{name}` has dims {:?}, expected [{cols}, {rows}]",
                info.dims
            ),
        });
    }
    QMatrix::new(name, info.dtype, rows, cols, g.read_tensor(src, info)?)
}

/// Read a 1-D tensor of `len` elements as f32.
pub(crate) fn load_vector<S: ByteSource + ?Sized>(
    g: &GgufFile,
    src: &S,
    name: &str,
    len: usize,
) -> Result<Vec<f32>> {
    let info = g
        .tensor(name)
        .ok_or_else(|| Error::MissingTensor(name.to_string()))?;
    if info.n_elements() != len as u64 {
        return Err(Error::Shape {
            op: "load",
            detail: format!("`{name}` has dims {:?}, expected [{len}]", info.dims),
        });
    }
    let bytes = g.read_tensor(src, info)?;
    let mut out = vec![0f32; len];
    quant::dequantize_row(info.dtype, bytes.as_slice(), &mut out)?;
    Ok(out)
}

fn load_optional_vector<S: ByteSource + ?Sized>(
    g: &GgufFile,
    src: &S,
    name: &str,
    len: usize,
) -> Result<Option<Vec<f32>>> {
    match g.tensor(name) {
        Some(_) => load_vector(g, src, name, len).map(Some),
        None => Ok(None),
    }
}

impl LlamaWeights {
    /// Read every weight of `cfg`'s architecture from `src`, one tensor at a time.
    ///
    /// Errors: [`Error::MissingTensor`], [`Error::Shape`], I/O errors of `src`.
    pub fn load<S: ByteSource + ?Sized>(cfg: &ModelConfig, g: &GgufFile, src: &S) -> Result<Self> {
        let (n_embd, q_dim, kv_dim, n_ff) = (cfg.n_embd, cfg.q_dim(), cfg.kv_dim(), cfg.n_ff);
        let token_embd = load_matrix(g, src, names::TOKEN_EMBD, cfg.n_vocab, n_embd)?;
        let output_norm = load_vector(g, src, names::OUTPUT_NORM, n_embd)?;
        let output = match g.tensor(names::OUTPUT) {
            Some(_) => Some(load_matrix(g, src, names::OUTPUT, cfg.n_vocab, n_embd)?),
            None => None,
        };
        let rope_freqs = load_optional_vector(g, src, names::ROPE_FREQS, cfg.n_rot / 2)?;
        let mut layers = Vec::with_capacity(cfg.n_layer);
        for l in 0..cfg.n_layer {
            let n = |s: &str| names::layer(l, s);
            layers.push(LayerWeights {
                attn_norm: load_vector(g, src, &n(names::ATTN_NORM), n_embd)?,
                wq: load_matrix(g, src, &n(names::ATTN_Q), q_dim, n_embd)?,
                wk: load_matrix(g, src, &n(names::ATTN_K), kv_dim, n_embd)?,
                wv: load_matrix(g, src, &n(names::ATTN_V), kv_dim, n_embd)?,
                bq: load_optional_vector(g, src, &n(names::ATTN_Q_BIAS), q_dim)?,
                bk: load_optional_vector(g, src, &n(names::ATTN_K_BIAS), kv_dim)?,
                bv: load_optional_vector(g, src, &n(names::ATTN_V_BIAS), kv_dim)?,
                wo: load_matrix(g, src, &n(names::ATTN_OUTPUT), n_embd, q_dim)?,
                ffn_norm: load_vector(g, src, &n(names::FFN_NORM), n_embd)?,
                w_gate: load_matrix(g, src, &n(names::FFN_GATE), n_ff, n_embd)?,
                w_up: load_matrix(g, src, &n(names::FFN_UP), n_ff, n_embd)?,
                w_down: load_matrix(g, src, &n(names::FFN_DOWN), n_embd, n_ff)?,
            });
        }
        Ok(Self {
            token_embd,
            output_norm,
            output,
            rope_freqs,
            layers,
        })
    }

    /// The output projection: `output.weight`, or `token_embd.weight` when tied.
    pub fn output(&self) -> &QMatrix {
        self.output.as_ref().unwrap_or(&self.token_embd)
    }

    /// Bytes of weight data held.
    pub fn size_bytes(&self) -> usize {
        let m = |q: &QMatrix| q.data.len();
        let v = |x: &Vec<f32>| x.len() * 4;
        let ov = |x: &Option<Vec<f32>>| x.as_ref().map_or(0, v);
        m(&self.token_embd)
            + v(&self.output_norm)
            + self.output.as_ref().map_or(0, m)
            + ov(&self.rope_freqs)
            + self
                .layers
                .iter()
                .map(|l| {
                    v(&l.attn_norm)
                        + v(&l.ffn_norm)
                        + ov(&l.bq)
                        + ov(&l.bk)
                        + ov(&l.bv)
                        + [&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down]
                            .into_iter()
                            .map(m)
                            .sum::<usize>()
                })
                .sum::<usize>()
    }
}

/// Keys and values of every layer for positions `0..n_ctx`: per layer (n_ctx, kv_dim) each.
pub(crate) struct KvCache {
    pub(crate) k: Vec<Vec<f32>>,
    pub(crate) v: Vec<Vec<f32>>,
}

impl KvCache {
    /// Zeroed cache of `n_ctx` positions for every layer of `cfg`.
    pub(crate) fn new(cfg: &ModelConfig, n_ctx: usize) -> Self {
        let kv_len = n_ctx * cfg.kv_dim();
        Self {
            k: (0..cfg.n_layer).map(|_| vec![0f32; kv_len]).collect(),
            v: (0..cfg.n_layer).map(|_| vec![0f32; kv_len]).collect(),
        }
    }
}

/// Activations of one batch of up to `cap` tokens. Grown on demand, never shrunk, so decode
/// (one token) allocates nothing after the first step.
#[derive(Default)]
pub(crate) struct Scratch {
    cap: usize,
    /// (n, n_embd) residual stream
    pub(crate) x: Vec<f32>,
    /// (n, n_embd) normalised input of a sub-block
    pub(crate) xb: Vec<f32>,
    /// (n, q_dim)
    pub(crate) q: Vec<f32>,
    /// (n, kv_dim)
    pub(crate) k: Vec<f32>,
    pub(crate) v: Vec<f32>,
    /// (n, q_dim) attention output
    pub(crate) att: Vec<f32>,
    /// (n, n_embd) projection output
    pub(crate) proj: Vec<f32>,
    /// (n, n_ff)
    pub(crate) gate: Vec<f32>,
    pub(crate) up: Vec<f32>,
    /// (n_ctx) attention scores of one head
    pub(crate) scores: Vec<f32>,
    /// one per token
    pub(crate) acts: Vec<PreparedActs>,
}

impl Scratch {
    pub(crate) fn ensure(&mut self, cfg: &ModelConfig, n_ctx: usize, n: usize) {
        if n <= self.cap {
            return;
        }
        let grow = |v: &mut Vec<f32>, len: usize| v.resize(len, 0.0);
        grow(&mut self.x, n * cfg.n_embd);
        grow(&mut self.xb, n * cfg.n_embd);
        grow(&mut self.q, n * cfg.q_dim());
        grow(&mut self.k, n * cfg.kv_dim());
        grow(&mut self.v, n * cfg.kv_dim());
        grow(&mut self.att, n * cfg.q_dim());
        grow(&mut self.proj, n * cfg.n_embd);
        grow(&mut self.gate, n * cfg.n_ff);
        grow(&mut self.up, n * cfg.n_ff);
        grow(&mut self.scores, n_ctx);
        self.acts.resize_with(n, PreparedActs::new);
        self.cap = n;
    }
}

/// `out[t] = x[t] · wᵀ (+ bias)` for the first `n` rows of x: (n, w.cols) → out: (n, w.rows).
pub(crate) fn linear(
    w: &QMatrix,
    bias: Option<&[f32]>,
    x: &[f32],
    n: usize,
    acts: &mut [PreparedActs],
    out: &mut [f32],
    threads: &CpuThreads,
) {
    let (rows, cols) = (w.rows, w.cols);
    for (a, xt) in acts[..n].iter_mut().zip(x.chunks_exact(cols)) {
        a.prepare(w.dtype, xt);
    }
    let out = &mut out[..n * rows];
    matmul(w, &acts[..n], out, threads);
    if let Some(b) = bias {
        for o in out.chunks_exact_mut(rows) {
            ops::add_inplace(o, b);
        }
    }
}

/// The attention core of layer `l` for a batch of `n` tokens at positions `pos..`: RoPE of
/// `s.q` and `s.k` per token with the layer's base and scale ([`ModelConfig::rope_of_layer`]) and
/// the Llama 3 frequency factors `freqs`, keys and values stored in the layer's cache, then
/// causal attention (on sliding layers at most `sliding_window` positions back) into `s.att`
/// with queries scaled by [`ModelConfig::attn_scale`]. Shared by every CPU decoder.
pub(crate) fn rope_store_attend(
    cfg: &ModelConfig,
    s: &mut Scratch,
    kv: &mut KvCache,
    l: usize,
    n: usize,
    pos: usize,
    freqs: Option<&[f32]>,
) {
    let (q_dim, kv_dim, hd) = (cfg.q_dim(), cfg.kv_dim(), cfg.head_dim);
    let (base, pos_scale) = cfg.rope_of_layer(l);
    let window = if cfg.is_sliding(l) {
        cfg.sliding_window
    } else {
        usize::MAX
    };
    let (kc, vc) = (&mut kv.k[l], &mut kv.v[l]);
    for t in 0..n {
        let p = pos + t;
        let rope = |x: &mut [f32], heads: usize| {
            ops::rope(
                x,
                heads,
                hd,
                cfg.n_rot,
                p,
                base,
                pos_scale,
                cfg.rope_layout,
                freqs,
            )
        };
        rope(&mut s.q[t * q_dim..(t + 1) * q_dim], cfg.n_head);
        rope(&mut s.k[t * kv_dim..(t + 1) * kv_dim], cfg.n_head_kv);
        kc[p * kv_dim..(p + 1) * kv_dim].copy_from_slice(&s.k[t * kv_dim..(t + 1) * kv_dim]);
        vc[p * kv_dim..(p + 1) * kv_dim].copy_from_slice(&s.v[t * kv_dim..(t + 1) * kv_dim]);
    }
    for t in 0..n {
        // Position p = pos + t sees cache rows max(0, p + 1 - window) ..= p.
        let end = pos + t + 1;
        ops::attention_range(
            &mut s.att[t * q_dim..(t + 1) * q_dim],
            &s.q[t * q_dim..(t + 1) * q_dim],
            kc,
            vc,
            end.saturating_sub(window)..end,
            cfg.n_head,
            cfg.n_head_kv,
            hd,
            cfg.attn_scale,
            &mut s.scores,
        );
    }
}

/// What a CPU decoder holds besides its config and weights: KV cache, activations, logits.
pub(crate) struct CpuState {
    /// Context capacity in positions.
    pub(crate) n_ctx: usize,
    pub(crate) threads: CpuThreads,
    pub(crate) kv: KvCache,
    pub(crate) s: Scratch,
    /// (n_positions, n_vocab) of the last call
    logits: Vec<f32>,
}

impl CpuState {
    /// KV cache of `n_ctx` positions (clamped to `1..=n_ctx_train`), `threads` workers.
    pub(crate) fn new(cfg: &ModelConfig, n_ctx: usize, threads: usize) -> Self {
        let n_ctx = n_ctx.clamp(1, cfg.n_ctx_train.max(1));
        Self {
            n_ctx,
            threads: CpuThreads::new(threads),
            kv: KvCache::new(cfg, n_ctx),
            s: Scratch::default(),
            logits: Vec::new(),
        }
    }

    /// [`ForwardPass::forward`] of every CPU decoder: checks the context, runs `tokens` in
    /// batches of up to [`MAX_BATCH`] through `layers(state, batch, pos)` (which leaves the final
    /// normalised hidden states, (n, n_embd), in `s.xb`), and projects the rows `which` asks for
    /// with `output`: (n_vocab, n_embd).
    pub(crate) fn forward(
        &mut self,
        cfg: &ModelConfig,
        output: &QMatrix,
        tokens: &[u32],
        pos: usize,
        which: Logits,
        mut layers: impl FnMut(&mut Self, &[u32], usize) -> Result<()>,
    ) -> Result<&[f32]> {
        if tokens.is_empty() {
            return Err(Error::Shape {
                op: "forward",
                detail: "no tokens".into(),
            });
        }
        if pos + tokens.len() > self.n_ctx {
            return Err(Error::ContextFull {
                n_prompt: pos,
                n_requested: tokens.len(),
                n_ctx: self.n_ctx,
            });
        }
        let (n_vocab, n_embd) = (cfg.n_vocab, cfg.n_embd);
        let n_out = match which {
            Logits::Last => 1,
            Logits::All => tokens.len(),
        };
        if self.logits.len() < n_out * n_vocab {
            self.logits.resize(n_out * n_vocab, 0.0);
        }
        let mut done = 0;
        for batch in tokens.chunks(MAX_BATCH) {
            layers(self, batch, pos + done)?;
            let n = batch.len();
            // Rows of the batch whose logits are wanted.
            let (first, out_row) = match which {
                Logits::All => (0, done),
                Logits::Last if done + n == tokens.len() => (n - 1, 0),
                Logits::Last => (n, 0),
            };
            let m = n - first;
            if m > 0 {
                let out = &mut self.logits[out_row * n_vocab..(out_row + m) * n_vocab];
                let xb = &self.s.xb[first * n_embd..n * n_embd];
                linear(output, None, xb, m, &mut self.s.acts, out, &self.threads);
            }
            done += n;
        }
        Ok(&self.logits[..n_out * n_vocab])
    }
}

/// A llama-family model with its KV cache, running on the CPU.
pub struct CpuLlama {
    cfg: ModelConfig,
    w: LlamaWeights,
    st: CpuState,
}

impl CpuLlama {
    /// Load weights from `src` and allocate a KV cache of `n_ctx` positions (capped at the
    /// trained context). `threads`: worker threads (0 = all cores; wasm: always 1).
    ///
    /// Errors: [`Error::UnsupportedArchitecture`] (also for `gemma3`: see
    /// [`crate::model::CpuModel`]) and metadata errors from [`ModelConfig`], tensor errors from
    /// [`LlamaWeights::load`].
    pub fn load<S: ByteSource + ?Sized>(
        g: &GgufFile,
        src: &S,
        n_ctx: usize,
        threads: usize,
    ) -> Result<Self> {
        let cfg = ModelConfig::from_gguf(g)?;
        if !matches!(cfg.arch, Arch::Llama | Arch::Qwen2) {
            return Err(Error::UnsupportedArchitecture(format!(
                "{} (in the llama-family decoder)",
                cfg.arch.name()
            )));
        }
        let w = LlamaWeights::load(&cfg, g, src)?;
        Ok(Self::from_weights(cfg, w, n_ctx, threads))
    }

    /// Wrap already loaded weights.
    pub fn from_weights(cfg: ModelConfig, w: LlamaWeights, n_ctx: usize, threads: usize) -> Self {
        let st = CpuState::new(&cfg, n_ctx, threads);
        Self { cfg, w, st }
    }

    /// The weights.
    pub fn weights(&self) -> &LlamaWeights {
        &self.w
    }

    /// Worker threads in use.
    pub fn threads(&self) -> usize {
        self.st.threads.count()
    }
}

/// Token embeddings: `x[t] = embd_scale · token_embd[tokens[t]]` (the scale is 1 except for
/// Gemma's √n_embd); x: (tokens.len(), n_embd), the first rows of the scratch.
///
/// Errors: [`Error::TokenOutOfRange`], dequantization errors.
pub(crate) fn embed_tokens(
    cfg: &ModelConfig,
    token_embd: &QMatrix,
    tokens: &[u32],
    x: &mut [f32],
) -> Result<()> {
    let n_embd = cfg.n_embd;
    for (t, &id) in tokens.iter().enumerate() {
        if id as usize >= cfg.n_vocab {
            return Err(Error::TokenOutOfRange {
                id,
                n_vocab: cfg.n_vocab,
            });
        }
        let xt = &mut x[t * n_embd..(t + 1) * n_embd];
        quant::dequantize_row(token_embd.dtype, token_embd.row(id as usize), xt)?;
        if cfg.embd_scale != 1.0 {
            xt.iter_mut().for_each(|v| *v *= cfg.embd_scale);
        }
    }
    Ok(())
}

/// Run one batch of `n <= MAX_BATCH` tokens at positions `pos..pos+n` through every layer,
/// leaving the final hidden states, normalised, in `st.s.xb`.
fn forward_batch(
    cfg: &ModelConfig,
    w: &LlamaWeights,
    st: &mut CpuState,
    tokens: &[u32],
    pos: usize,
) -> Result<()> {
    let n = tokens.len();
    let (n_embd, n_ff) = (cfg.n_embd, cfg.n_ff);
    st.s.ensure(cfg, st.n_ctx, n);
    let s = &mut st.s;
    let th = &st.threads;

    embed_tokens(cfg, &w.token_embd, tokens, &mut s.x)?;

    for (l, lw) in w.layers.iter().enumerate() {
        // Attention sub-block.
        ops::rms_norm_rows(&mut s.xb, &s.x, &lw.attn_norm, n, cfg.rms_eps);
        linear(
            &lw.wq,
            lw.bq.as_deref(),
            &s.xb,
            n,
            &mut s.acts,
            &mut s.q,
            th,
        );
        linear(
            &lw.wk,
            lw.bk.as_deref(),
            &s.xb,
            n,
            &mut s.acts,
            &mut s.k,
            th,
        );
        linear(
            &lw.wv,
            lw.bv.as_deref(),
            &s.xb,
            n,
            &mut s.acts,
            &mut s.v,
            th,
        );
        rope_store_attend(cfg, s, &mut st.kv, l, n, pos, w.rope_freqs.as_deref());
        linear(&lw.wo, None, &s.att, n, &mut s.acts, &mut s.proj, th);
        ops::add_inplace(&mut s.x[..n * n_embd], &s.proj[..n * n_embd]);

        // Feed-forward sub-block (SwiGLU).
        ops::rms_norm_rows(&mut s.xb, &s.x, &lw.ffn_norm, n, cfg.rms_eps);
        linear(&lw.w_gate, None, &s.xb, n, &mut s.acts, &mut s.gate, th);
        linear(&lw.w_up, None, &s.xb, n, &mut s.acts, &mut s.up, th);
        ops::swiglu(&mut s.gate[..n * n_ff], &s.up[..n * n_ff]);
        linear(&lw.w_down, None, &s.gate, n, &mut s.acts, &mut s.proj, th);
        ops::add_inplace(&mut s.x[..n * n_embd], &s.proj[..n * n_embd]);
    }

    ops::rms_norm_rows(&mut s.xb, &s.x, &w.output_norm, n, cfg.rms_eps);
    Ok(())
}

impl ForwardPass for CpuLlama {
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
