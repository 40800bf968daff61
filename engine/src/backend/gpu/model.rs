//! [`GpuModel`]: the llama / qwen2 forward pass on the GPU, same math as `model::llama` on the
//! CPU. Every buffer, bind group and pipeline is made at load; a forward call only writes the
//! parameter arena and the token ids, records every layer into one command buffer, submits it
//! once and reads back either the logits or (decode with sampling) a single u32 token id.

use crate::error::{Error, Result};
use crate::gguf::{ByteSource, GgufFile};
use crate::model::config::names;
use crate::model::{ForwardPass, Logits, ModelConfig, RopeLayout};
use crate::quant::GgmlDType;

use super::arena::{dispatch, ParamArena};
use super::params::*;
use super::shaders::{Op, PipelineCache, PipelineKey};
use super::weights::{bind_group, GpuWeight};
use super::{Gpu, GpuSampling};

/// Most tokens one submission processes (prefill longer prompts in batches of this many).
pub const MAX_BATCH: usize = 64;
/// Largest head dimension the attention kernel holds in workgroup memory.
pub const MAX_HEAD_DIM: usize = 256;

/// One dispatch instance: its bind group (made at load) and its slot in the parameter arena.
struct Inst {
    bind: wgpu::BindGroup,
    slot: usize,
}

/// A matrix product instance: one dispatch per weight chunk.
struct MatOp {
    dtype: GgmlDType,
    cols: u32,
    row_bytes: u32,
    /// (instance, first row, rows) per chunk.
    chunks: Vec<(Inst, u32, u32)>,
    bias: bool,
}

struct Layer {
    attn_norm: Inst,
    q: MatOp,
    k: MatOp,
    v: MatOp,
    /// RoPE of Q and K fused with the KV-cache store.
    rope: Inst,
    /// Prefill attention, decode attention and its merge: one bind group, three pipelines.
    attn: Inst,
    o: MatOp,
    ffn_norm: Inst,
    gate: MatOp,
    up: MatOp,
    swiglu: Inst,
    down: MatOp,
}

/// Weights of one layer as uploaded (phase 1 of the load).
struct LayerWeights {
    attn_norm: wgpu::Buffer,
    q: GpuWeight,
    k: GpuWeight,
    v: GpuWeight,
    bq: Option<wgpu::Buffer>,
    bk: Option<wgpu::Buffer>,
    bv: Option<wgpu::Buffer>,
    o: GpuWeight,
    ffn_norm: wgpu::Buffer,
    gate: GpuWeight,
    up: GpuWeight,
    down: GpuWeight,
}

/// Activation and cache buffers, sized for `n_batch` tokens and `n_ctx` positions.
struct Buffers {
    /// (n_batch) u32 token ids.
    tokens: wgpu::Buffer,
    /// Residual stream: (n_batch, n_embd).
    x: wgpu::Buffer,
    /// Normed residual: (n_batch, n_embd).
    xn: wgpu::Buffer,
    /// Q before / after RoPE: (n_batch, q_dim).
    q_raw: wgpu::Buffer,
    q: wgpu::Buffer,
    /// K before RoPE, V before the cache store: (n_batch, kv_dim).
    k_raw: wgpu::Buffer,
    v_raw: wgpu::Buffer,
    /// Attention output: (n_batch, q_dim).
    attn: wgpu::Buffer,
    /// FFN gate (then SwiGLU output) and up: (n_batch, n_ff).
    gate: wgpu::Buffer,
    up: wgpu::Buffer,
    /// (n_batch, n_vocab).
    logits: wgpu::Buffer,
    /// Attention scratch: prefill scores (n_batch * n_head, n_ctx), or the decode chunks'
    /// partials (n_chunks * n_head, head_dim + 2).
    scores: wgpu::Buffer,
    /// Sampled token id (and padding): 2 u32.
    sampled: wgpu::Buffer,
    /// Per layer (n_ctx, kv_dim) of [`super::KvType`]: f16 with `shader-f16`, else f32.
    k_cache: Vec<wgpu::Buffer>,
    v_cache: Vec<wgpu::Buffer>,
    staging_logits: wgpu::Buffer,
    staging_token: wgpu::Buffer,
}

/// What a forward call ends with.
#[derive(Clone, Copy)]
enum Tail {
    Logits(Logits),
    Sample(GpuSampling),
}

/// A llama / qwen2 model with its KV cache on the GPU.
pub struct GpuModel {
    gpu: Gpu,
    cfg: ModelConfig,
    n_ctx: usize,
    n_batch: usize,
    bufs: Buffers,
    arena: ParamArena,
    embd: MatOp,
    layers: Vec<Layer>,
    out_norm: Inst,
    output: MatOp,
    sample: Inst,
    /// Keeps the weights alive (bind groups reference them).
    weights: Vec<GpuWeight>,
    /// Keeps the norm weights, biases and RoPE factors alive.
    _vectors: Vec<wgpu::Buffer>,
    freq_present: bool,
    logits: Vec<f32>,
    last_dispatches: usize,
}

fn u32_of(what: &'static str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::Shape {
        op: what,
        detail: format!("{v} does not fit in u32"),
    })
}

/// Read a weight matrix and upload it: one tensor in CPU memory at a time, dropped after the
/// upload. Checks its (rows, cols).
fn load_weight<S: ByteSource + ?Sized>(
    gpu: &Gpu,
    file: &GgufFile,
    src: &S,
    name: &str,
    rows: usize,
    cols: usize,
) -> Result<GpuWeight> {
    let info = file
        .tensor(name)
        .ok_or_else(|| Error::MissingTensor(name.to_string()))?;
    let (r, c) = info.rows_cols();
    if (r, c) != (rows, cols) {
        return Err(Error::Shape {
            op: "gpu load",
            detail: format!("`{name}` is {r}x{c}, expected {rows}x{cols}"),
        });
    }
    let bytes = file.read_tensor(src, info)?;
    GpuWeight::upload(&gpu.ctx, name, info.dtype, rows, cols, bytes.as_slice())
}

/// Read a vector (norm weight, bias, RoPE factors) as f32 and upload it.
fn load_vec<S: ByteSource + ?Sized>(
    gpu: &Gpu,
    file: &GgufFile,
    src: &S,
    name: &str,
    n: usize,
) -> Result<wgpu::Buffer> {
    let info = file
        .tensor(name)
        .ok_or_else(|| Error::MissingTensor(name.to_string()))?;
    if info.n_elements() != n as u64 {
        return Err(Error::Shape {
            op: "gpu load",
            detail: format!("`{name}` has {} values, expected {n}", info.n_elements()),
        });
    }
    let bytes = file.read_tensor(src, info)?;
    let mut v = vec![0f32; n];
    match info.dtype {
        GgmlDType::F32 => {
            for (o, c) in v.iter_mut().zip(bytes.as_slice().chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        dt => crate::quant::dequantize_row(dt, bytes.as_slice(), &mut v)?,
    }
    gpu.ctx
        .buffer_init(name, bytemuck::cast_slice(&v), wgpu::BufferUsages::STORAGE)
}

fn load_opt_vec<S: ByteSource + ?Sized>(
    gpu: &Gpu,
    file: &GgufFile,
    src: &S,
    name: &str,
    n: usize,
) -> Result<Option<wgpu::Buffer>> {
    match file.tensor(name) {
        Some(_) => load_vec(gpu, file, src, name, n).map(Some),
        None => Ok(None),
    }
}

/// Hands out parameter slots while bind groups are made.
struct Slots {
    next: std::cell::Cell<usize>,
}

impl Slots {
    fn take(&self) -> usize {
        let s = self.next.get();
        self.next.set(s + 1);
        s
    }
}

/// Whether the GPU backend has a forward pass for `cfg`'s architecture (`llama`, `qwen2`).
///
/// Errors: [`Error::GpuUnsupportedArchitecture`] for `gemma3` (q/k norms, post-norms, GeGLU and
/// sliding-window layers have no kernels yet): the caller should use the CPU backend.
pub fn ensure_supported(cfg: &ModelConfig) -> Result<()> {
    match cfg.arch {
        "llama" | "qwen2" => Ok(()),
        other => Err(Error::GpuUnsupportedArchitecture(other.into())),
    }
}

impl GpuModel {
    /// Load a llama / qwen2 GGUF onto the GPU with a KV cache of `n_ctx` positions. Each
    /// weight goes from the file to the GPU in its block layout, one tensor at a time.
    ///
    /// Errors: [`Error::UnsupportedArchitecture`], [`Error::GpuUnsupportedArchitecture`],
    /// [`Error::MissingTensor`], [`Error::Shape`],
    /// [`Error::OpDType`] for a weight type without a GPU kernel, [`Error::GpuLimits`],
    /// [`Error::GpuOutOfMemory`], [`Error::Gpu`].
    pub fn load<S: ByteSource + ?Sized>(
        mut gpu: Gpu,
        file: &GgufFile,
        src: &S,
        n_ctx: usize,
    ) -> Result<Self> {
        let cfg = crate::arch::config(file)?;
        ensure_supported(&cfg)?;
        let (n_embd, q_dim, kv_dim, n_ff, n_vocab) =
            (cfg.n_embd, cfg.q_dim(), cfg.kv_dim(), cfg.n_ff, cfg.n_vocab);
        if n_ctx == 0 {
            return Err(Error::InvalidParam {
                name: "n_ctx",
                what: "must be at least 1".into(),
            });
        }
        if cfg.head_dim > MAX_HEAD_DIM {
            return Err(Error::GpuLimits {
                limit: "attention head dimension",
                needed: cfg.head_dim as u64,
                available: MAX_HEAD_DIM as u64,
            });
        }
        if cfg.n_head_kv == 0 || cfg.n_head % cfg.n_head_kv != 0 {
            return Err(Error::Shape {
                op: "gpu load",
                detail: format!("{} heads over {} KV heads", cfg.n_head, cfg.n_head_kv),
            });
        }
        // Activations are bound whole: keep each under the device's binding limit.
        let dev_max = gpu.ctx.device.limits().max_storage_buffer_binding_size;
        let kv_type = gpu.pipes.kv_type();
        let kv_bytes = (n_ctx * kv_dim * kv_type.bytes()) as u64;
        if kv_bytes > dev_max {
            return Err(Error::GpuLimits {
                limit: "maxStorageBufferBindingSize",
                needed: kv_bytes,
                available: dev_max,
            });
        }
        let per_token = (n_vocab.max(cfg.n_head * n_ctx).max(n_ff) * 4) as u64;
        let n_batch = (dev_max / per_token).min(MAX_BATCH as u64) as usize;
        if n_batch == 0 {
            return Err(Error::GpuLimits {
                limit: "maxStorageBufferBindingSize",
                needed: per_token,
                available: dev_max,
            });
        }

        // Phase 1: weights, one tensor at a time.
        let l = |i: usize, s: &str| names::layer(i, s);
        let token_embd = load_weight(&gpu, file, src, names::TOKEN_EMBD, n_vocab, n_embd)?;
        let output = match file.tensor(names::OUTPUT) {
            Some(_) => Some(load_weight(
                &gpu,
                file,
                src,
                names::OUTPUT,
                n_vocab,
                n_embd,
            )?),
            None => None,
        };
        let out_norm_w = load_vec(&gpu, file, src, names::OUTPUT_NORM, n_embd)?;
        let freq = load_opt_vec(&gpu, file, src, names::ROPE_FREQS, cfg.n_rot / 2)?;
        let mut lw = Vec::with_capacity(cfg.n_layer);
        for i in 0..cfg.n_layer {
            lw.push(LayerWeights {
                attn_norm: load_vec(&gpu, file, src, &l(i, names::ATTN_NORM), n_embd)?,
                q: load_weight(&gpu, file, src, &l(i, names::ATTN_Q), q_dim, n_embd)?,
                k: load_weight(&gpu, file, src, &l(i, names::ATTN_K), kv_dim, n_embd)?,
                v: load_weight(&gpu, file, src, &l(i, names::ATTN_V), kv_dim, n_embd)?,
                bq: load_opt_vec(&gpu, file, src, &l(i, names::ATTN_Q_BIAS), q_dim)?,
                bk: load_opt_vec(&gpu, file, src, &l(i, names::ATTN_K_BIAS), kv_dim)?,
                bv: load_opt_vec(&gpu, file, src, &l(i, names::ATTN_V_BIAS), kv_dim)?,
                o: load_weight(&gpu, file, src, &l(i, names::ATTN_OUTPUT), n_embd, q_dim)?,
                ffn_norm: load_vec(&gpu, file, src, &l(i, names::FFN_NORM), n_embd)?,
                gate: load_weight(&gpu, file, src, &l(i, names::FFN_GATE), n_ff, n_embd)?,
                up: load_weight(&gpu, file, src, &l(i, names::FFN_UP), n_ff, n_embd)?,
                down: load_weight(&gpu, file, src, &l(i, names::FFN_DOWN), n_embd, n_ff)?,
            });
        }

        // Activations and the KV cache.
        let ctx = &gpu.ctx;
        let st = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC;
        let f = |label: &str, n: usize| ctx.buffer(label, (n * 4) as u64, st);
        let kv = |label: &str| ctx.buffer(label, kv_bytes, st);
        let nb = n_batch;
        let chunk = ctx.info.attn_decode_chunk;
        let scratch = AttnParams::scratch_len(nb, n_ctx, cfg.n_head, cfg.head_dim, chunk);
        let bufs = Buffers {
            tokens: ctx.buffer(
                "tokens",
                (nb * 4) as u64,
                wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
            )?,
            x: f("x", nb * n_embd)?,
            xn: f("xn", nb * n_embd)?,
            q_raw: f("q_raw", nb * q_dim)?,
            q: f("q", nb * q_dim)?,
            k_raw: f("k_raw", nb * kv_dim)?,
            v_raw: f("v_raw", nb * kv_dim)?,
            attn: f("attn", nb * q_dim)?,
            gate: f("gate", nb * n_ff)?,
            up: f("up", nb * n_ff)?,
            logits: f("logits", nb * n_vocab)?,
            scores: f("scores", scratch)?,
            sampled: f("sampled", 2)?,
            k_cache: (0..cfg.n_layer)
                .map(|_| kv("k_cache"))
                .collect::<Result<_>>()?,
            v_cache: (0..cfg.n_layer)
                .map(|_| kv("v_cache"))
                .collect::<Result<_>>()?,
            staging_logits: ctx.buffer(
                "staging logits",
                (nb * n_vocab * 4) as u64,
                wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            )?,
            staging_token: ctx.buffer(
                "staging token",
                8,
                wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            )?,
        };
        let dummy = ctx.buffer_init("dummy", &1f32.to_le_bytes(), wgpu::BufferUsages::STORAGE)?;

        // Pipelines for every (op, dtype) this model uses.
        let mut dtypes: Vec<GgmlDType> = vec![token_embd.dtype];
        dtypes.extend(output.as_ref().map(|w| w.dtype));
        for w in &lw {
            dtypes.extend([w.q.dtype, w.k.dtype, w.v.dtype, w.o.dtype]);
            dtypes.extend([w.gate.dtype, w.up.dtype, w.down.dtype]);
        }
        dtypes.sort();
        dtypes.dedup();
        for &d in &dtypes {
            for op in [Op::MatVec, Op::MatMul] {
                let key = gpu.pipes.key(op, d);
                gpu.pipes.prepare(&gpu.ctx, key)?;
            }
        }
        let key = gpu.pipes.key(Op::GetRows, token_embd.dtype);
        gpu.pipes.prepare(&gpu.ctx, key)?;
        for op in [
            Op::RmsNorm,
            Op::Rope,
            Op::Attention,
            Op::AttnDecode,
            Op::AttnCombine,
            Op::SwiGlu,
            Op::Sample,
        ] {
            let key = gpu.pipes.key(op, GgmlDType::F32);
            gpu.pipes.prepare(&gpu.ctx, key)?;
        }

        // Phase 2: parameter arena and bind groups.
        let out_w = output.as_ref().unwrap_or(&token_embd);
        let chunks = |w: &GpuWeight| w.chunks.len();
        let per_layer: usize = lw
            .iter()
            .map(|w| {
                5 + chunks(&w.q)
                    + chunks(&w.k)
                    + chunks(&w.v)
                    + chunks(&w.o)
                    + chunks(&w.gate)
                    + chunks(&w.up)
                    + chunks(&w.down)
            })
            .sum();
        let n_slots = chunks(&token_embd) + per_layer + 2 + chunks(out_w);
        let arena = ParamArena::new(&gpu.ctx, n_slots)?;
        let slots = Slots {
            next: std::cell::Cell::new(0),
        };
        let pipes = &mut gpu.pipes;
        let ctx = &gpu.ctx;
        let inst = |pipes: &mut PipelineCache, op: Op, buffers: &[&wgpu::Buffer]| {
            let slot = slots.take();
            let layout = pipes.layout(ctx, op);
            Inst {
                bind: bind_group(ctx, layout, &arena.buffer, arena.offset(slot), buffers),
                slot,
            }
        };
        let mat = |pipes: &mut PipelineCache,
                   w: &GpuWeight,
                   x: &wgpu::Buffer,
                   y: &wgpu::Buffer,
                   bias: Option<&wgpu::Buffer>,
                   op: Op|
         -> Result<MatOp> {
            let mut ch = Vec::with_capacity(w.chunks.len());
            for c in &w.chunks {
                let bufs: Vec<&wgpu::Buffer> = match op {
                    Op::GetRows => vec![&c.buffer, x, y],
                    _ => vec![&c.buffer, x, y, bias.unwrap_or(&dummy)],
                };
                ch.push((
                    inst(pipes, op, &bufs),
                    u32_of("gpu load", c.row_begin)?,
                    u32_of("gpu load", c.rows)?,
                ));
            }
            Ok(MatOp {
                dtype: w.dtype,
                cols: u32_of("gpu load", w.cols)?,
                row_bytes: u32_of("gpu load", w.row_bytes)?,
                chunks: ch,
                bias: bias.is_some(),
            })
        };
        let b = &bufs;
        let embd = mat(pipes, &token_embd, &b.tokens, &b.x, None, Op::GetRows)?;
        let freq_buf = freq.as_ref().unwrap_or(&dummy);
        let mut layers = Vec::with_capacity(cfg.n_layer);
        for (i, w) in lw.iter().enumerate() {
            let (kc, vc) = (&b.k_cache[i], &b.v_cache[i]);
            let mv = Op::MatVec;
            layers.push(Layer {
                attn_norm: inst(pipes, Op::RmsNorm, &[&b.x, &w.attn_norm, &b.xn]),
                q: mat(pipes, &w.q, &b.xn, &b.q_raw, w.bq.as_ref(), mv)?,
                k: mat(pipes, &w.k, &b.xn, &b.k_raw, w.bk.as_ref(), mv)?,
                v: mat(pipes, &w.v, &b.xn, &b.v_raw, w.bv.as_ref(), mv)?,
                rope: inst(
                    pipes,
                    Op::Rope,
                    &[&b.q_raw, &b.q, &b.k_raw, &b.v_raw, kc, vc, freq_buf],
                ),
                attn: inst(pipes, Op::Attention, &[&b.q, kc, vc, &b.scores, &b.attn]),
                o: mat(pipes, &w.o, &b.attn, &b.x, None, mv)?,
                ffn_norm: inst(pipes, Op::RmsNorm, &[&b.x, &w.ffn_norm, &b.xn]),
                gate: mat(pipes, &w.gate, &b.xn, &b.gate, None, mv)?,
                up: mat(pipes, &w.up, &b.xn, &b.up, None, mv)?,
                swiglu: inst(pipes, Op::SwiGlu, &[&b.gate, &b.up]),
                down: mat(pipes, &w.down, &b.gate, &b.x, None, mv)?,
            });
        }
        let out_norm = inst(pipes, Op::RmsNorm, &[&b.x, &out_norm_w, &b.xn]);
        let output_op = mat(pipes, out_w, &b.xn, &b.logits, None, Op::MatVec)?;
        let sample = inst(pipes, Op::Sample, &[&b.logits, &b.sampled]);
        debug_assert_eq!(slots.next.get(), n_slots);
        gpu.ctx.check()?;

        let mut weights = vec![token_embd];
        weights.extend(output);
        let freq_present = freq.is_some();
        let mut small = vec![dummy, out_norm_w];
        small.extend(freq);
        for w in lw {
            weights.extend([w.q, w.k, w.v, w.o, w.gate, w.up, w.down]);
            small.extend([w.attn_norm, w.ffn_norm]);
            small.extend([w.bq, w.bk, w.bv].into_iter().flatten());
        }
        Ok(Self {
            gpu,
            cfg,
            n_ctx,
            n_batch,
            bufs,
            arena,
            embd,
            layers,
            out_norm,
            output: output_op,
            sample,
            weights,
            _vectors: small,
            freq_present,
            logits: Vec::new(),
            last_dispatches: 0,
        })
    }

    /// Adapter and device facts.
    pub fn gpu_info(&self) -> &super::GpuInfo {
        self.gpu.info()
    }

    /// Tokens per submission in prefill.
    pub fn n_batch(&self) -> usize {
        self.n_batch
    }

    /// Compute dispatches recorded for one decode step (one token at position `pos`, sampling
    /// on the GPU): the embedding lookup; per layer 12 (more when a weight is split across
    /// buffers), plus the attention merge once the cache is longer than one decode chunk
    /// ([`super::GpuInfo::attn_decode_chunk`] positions); the final norm, the output projection
    /// and the sampler.
    pub fn dispatches_per_token(&self, pos: usize) -> usize {
        let ch = |m: &MatOp| m.chunks.len();
        let merge = usize::from(pos + 1 > self.gpu.ctx.info.attn_decode_chunk as usize);
        let layers: usize = self
            .layers
            .iter()
            .map(|l| {
                5 + merge
                    + ch(&l.q)
                    + ch(&l.k)
                    + ch(&l.v)
                    + ch(&l.o)
                    + ch(&l.gate)
                    + ch(&l.up)
                    + ch(&l.down)
            })
            .sum();
        ch(&self.embd) + layers + 2 + ch(&self.output)
    }

    /// Dispatches recorded by the last forward / decode call (its last batch).
    pub fn last_dispatch_count(&self) -> usize {
        self.last_dispatches
    }

    /// Weight bytes on the GPU.
    pub fn weight_bytes(&self) -> u64 {
        self.weights.iter().map(|w| w.gpu_bytes()).sum()
    }

    fn check_tokens(&self, tokens: &[u32], pos: usize) -> Result<()> {
        if tokens.is_empty() {
            return Err(Error::Shape {
                op: "gpu forward",
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
        if let Some(&t) = tokens.iter().find(|&&t| t as usize >= self.cfg.n_vocab) {
            return Err(Error::TokenOutOfRange {
                id: t,
                n_vocab: self.cfg.n_vocab,
            });
        }
        Ok(())
    }

    /// Record one batch (`tokens` at positions `pos ..`) into one command buffer.
    fn encode(&mut self, tokens: &[u32], pos: usize, tail: Tail) -> Result<wgpu::CommandBuffer> {
        let c = &self.cfg;
        let n = tokens.len() as u32;
        let pos = u32_of("gpu forward", pos)?;
        let (n_embd, q_dim, kv_dim, n_ff) = (
            c.n_embd as u32,
            c.q_dim() as u32,
            c.kv_dim() as u32,
            c.n_ff as u32,
        );
        let n_vocab = c.n_vocab as u32;
        self.gpu
            .ctx
            .queue
            .write_buffer(&self.bufs.tokens, 0, bytemuck::cast_slice(tokens));
        let mut enc = self
            .gpu
            .ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("slm forward"),
            });
        let has_freq = self.freq_present;
        let mut r = Rec {
            pass: enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("slm layers"),
                timestamp_writes: None,
            }),
            arena: &mut self.arena,
            pipes: &self.gpu.pipes,
            tpr: self.gpu.ctx.info.matmul_threads_per_row,
            count: 0,
        };
        let eps = c.rms_eps;
        let norm = NormParams {
            n: n_embd,
            row_begin: 0,
            n_rows: n,
            eps,
        };
        let rp = RopeParams {
            n_head: c.n_head as u32,
            n_head_kv: c.n_head_kv as u32,
            head_dim: c.head_dim as u32,
            n_rot: c.n_rot as u32,
            pos0: pos,
            n_tok: n,
            neox: match c.rope_layout {
                RopeLayout::Adjacent => 0,
                RopeLayout::Neox => 1,
            },
            has_freq: has_freq as u32,
            q_stride: q_dim,
            kv_dim,
            base: c.rope_base,
            pos_scale: c.rope_pos_scale,
        };
        let ap = AttnParams {
            n_head: c.n_head as u32,
            n_head_kv: c.n_head_kv as u32,
            head_dim: c.head_dim as u32,
            n_tok: n,
            pos0: pos,
            kv_dim,
            q_stride: q_dim,
            n_ctx: self.n_ctx as u32,
            scale: 1.0 / (c.head_dim as f32).sqrt(),
            ..Default::default()
        }
        .with_decode_chunk(self.gpu.ctx.info.attn_decode_chunk);

        // Embedding lookup.
        let pieces = n_embd.div_ceil(16);
        for (inst, row_begin, rows) in &self.embd.chunks {
            let total = n * pieces;
            let p = GetRowsParams {
                cols: n_embd,
                row_bytes: self.embd.row_bytes,
                n_tok: n,
                row_begin: *row_begin,
                n_rows: *rows,
                total,
                _pad: [0; 2],
            };
            r.go(
                Op::GetRows,
                self.embd.dtype,
                inst,
                &p,
                total.div_ceil(ELT_WG),
            )?;
        }
        for l in &self.layers {
            // Attention block.
            r.go(Op::RmsNorm, GgmlDType::F32, &l.attn_norm, &norm, n)?;
            r.mat(&l.q, n, 0, n_embd, 0, q_dim, false)?;
            r.mat(&l.k, n, 0, n_embd, 0, kv_dim, false)?;
            r.mat(&l.v, n, 0, n_embd, 0, kv_dim, false)?;
            r.go(Op::Rope, GgmlDType::F32, &l.rope, &rp, rp.workgroups())?;
            if n == 1 {
                // Decode: one workgroup per (head, cache chunk), then the merge.
                let n_heads = ap.n_head;
                r.go(
                    Op::AttnDecode,
                    GgmlDType::F32,
                    &l.attn,
                    &ap,
                    n_heads * ap.n_chunks,
                )?;
                if ap.n_chunks > 1 {
                    r.go(Op::AttnCombine, GgmlDType::F32, &l.attn, &ap, n_heads)?;
                }
            } else {
                r.go(Op::Attention, GgmlDType::F32, &l.attn, &ap, n * ap.n_head)?;
            }
            r.mat(&l.o, n, 0, q_dim, 0, n_embd, true)?;
            // Feed-forward block.
            r.go(Op::RmsNorm, GgmlDType::F32, &l.ffn_norm, &norm, n)?;
            r.mat(&l.gate, n, 0, n_embd, 0, n_ff, false)?;
            r.mat(&l.up, n, 0, n_embd, 0, n_ff, false)?;
            let sw = EltParams {
                n: n * n_ff,
                _pad: [0; 3],
            };
            r.go(
                Op::SwiGlu,
                GgmlDType::F32,
                &l.swiglu,
                &sw,
                sw.n.div_ceil(ELT_WG),
            )?;
            r.mat(&l.down, n, 0, n_ff, 0, n_embd, true)?;
        }
        // Final norm and output projection: every row for Logits::All, else the last one.
        let all = matches!(tail, Tail::Logits(Logits::All));
        let (first, n_out) = if all { (0, n) } else { (n - 1, 1) };
        let fnorm = NormParams {
            n: n_embd,
            row_begin: first,
            n_rows: n_out,
            eps,
        };
        r.go(Op::RmsNorm, GgmlDType::F32, &self.out_norm, &fnorm, n_out)?;
        r.mat(
            &self.output,
            n_out,
            first * n_embd,
            n_embd,
            0,
            n_vocab,
            false,
        )?;
        if let Tail::Sample(s) = tail {
            let p = s.params(n_vocab, 0);
            r.go(Op::Sample, GgmlDType::F32, &self.sample, &p, 1)?;
        }
        let used = r.arena.slots();
        self.last_dispatches = r.count;
        drop(r);
        self.arena.upload(&self.gpu.ctx, used);
        match tail {
            Tail::Sample(_) => {
                enc.copy_buffer_to_buffer(&self.bufs.sampled, 0, &self.bufs.staging_token, 0, 4)
            }
            Tail::Logits(_) => {
                let bytes = (n_out * n_vocab * 4) as u64;
                enc.copy_buffer_to_buffer(&self.bufs.logits, 0, &self.bufs.staging_logits, 0, bytes)
            }
        }
        Ok(enc.finish())
    }
}

/// Records dispatches into the one compute pass of a forward call, writing each dispatch's
/// parameters into its arena slot.
struct Rec<'a> {
    pass: wgpu::ComputePass<'a>,
    arena: &'a mut ParamArena,
    pipes: &'a PipelineCache,
    /// Matmul invocations per weight row.
    tpr: u32,
    count: usize,
}

impl Rec<'_> {
    fn go<P: bytemuck::Pod>(
        &mut self,
        op: Op,
        dtype: GgmlDType,
        inst: &Inst,
        p: &P,
        n_wg: u32,
    ) -> Result<()> {
        let key: PipelineKey = self.pipes.key(op, dtype);
        let pipeline = self.pipes.get(key)?;
        self.arena.set(inst.slot, p);
        dispatch(&mut self.pass, pipeline, &inst.bind, n_wg);
        self.count += 1;
        Ok(())
    }

    /// y (+)= W x for `n` tokens: x row t at x_off + t * x_stride, y row t at
    /// y_off + t * y_stride (+ the chunk's first row). One dispatch per weight chunk.
    #[allow(clippy::too_many_arguments)]
    fn mat(
        &mut self,
        m: &MatOp,
        n: u32,
        x_off: u32,
        x_stride: u32,
        y_off: u32,
        y_stride: u32,
        accumulate: bool,
    ) -> Result<()> {
        let (op, tile) = if n == 1 {
            (Op::MatVec, 1)
        } else {
            (Op::MatMul, MATMUL_TILE)
        };
        for (inst, row_begin, rows) in &m.chunks {
            let total = MatParams::workgroups(*rows, n, tile, self.tpr);
            let p = MatParams {
                rows: *rows,
                cols: m.cols,
                row_bytes: m.row_bytes,
                n_tok: n,
                x_off,
                x_stride,
                out_off: y_off + row_begin,
                out_stride: y_stride,
                bias_off: *row_begin,
                flags: (if m.bias { MAT_BIAS } else { 0 })
                    | (if accumulate { MAT_ACCUMULATE } else { 0 }),
                total_wg: total,
                _pad: 0,
            };
            self.go(op, m.dtype, inst, &p, total)?;
        }
        Ok(())
    }
}

impl GpuModel {
    /// Run `tokens` at positions `pos ..` (see [`ForwardPass::forward`]); batches of
    /// [`GpuModel::n_batch`] tokens, one submission each. Returns logits as selected by `which`:
    /// (n_vocab) or (tokens.len(), n_vocab).
    pub async fn forward_async(
        &mut self,
        tokens: &[u32],
        pos: usize,
        which: Logits,
    ) -> Result<&[f32]> {
        self.check_tokens(tokens, pos)?;
        let n_vocab = self.cfg.n_vocab;
        self.logits.clear();
        let n_batches = tokens.len().div_ceil(self.n_batch);
        for (bi, batch) in tokens.chunks(self.n_batch).enumerate() {
            let last = bi + 1 == n_batches;
            let bpos = pos + bi * self.n_batch;
            // Intermediate batches of a Logits::Last call only fill the KV cache; their
            // (one-row) logits are read back and dropped.
            let cmd = self.encode(batch, bpos, Tail::Logits(which))?;
            let rows = if which == Logits::All { batch.len() } else { 1 };
            let start = self.logits.len();
            self.logits.resize(start + rows * n_vocab, 0.0);
            let out = bytemuck::cast_slice_mut(&mut self.logits[start..]);
            self.gpu
                .ctx
                .submit_and_read(cmd, &self.bufs.staging_logits, out)
                .await?;
            if which == Logits::Last && !last {
                self.logits.truncate(start);
            }
        }
        Ok(&self.logits)
    }

    /// One decode step: run `token` at `pos` and sample the next token on the GPU with `s`.
    /// Records every layer into one command buffer, submits it once and reads back only the
    /// sampled id (4 bytes). Nothing is created on the GPU per call.
    ///
    /// Errors: as [`ForwardPass::forward`], [`Error::InvalidParam`] for bad sampling values.
    pub async fn decode_sample_async(
        &mut self,
        token: u32,
        pos: usize,
        s: &GpuSampling,
    ) -> Result<u32> {
        s.validate()?;
        self.check_tokens(&[token], pos)?;
        let cmd = self.encode(&[token], pos, Tail::Sample(*s))?;
        let mut out = [0u8; 4];
        self.gpu
            .ctx
            .submit_and_read(cmd, &self.bufs.staging_token, &mut out)
            .await?;
        Ok(u32::from_le_bytes(out))
    }

    /// Blocking [`GpuModel::decode_sample_async`] (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn decode_sample(&mut self, token: u32, pos: usize, s: &GpuSampling) -> Result<u32> {
        super::block_on(self.decode_sample_async(token, pos, s))
    }
}

impl ForwardPass for GpuModel {
    fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    /// Natively blocks on the GPU. On the web a blocking wait is impossible: use
    /// [`GpuModel::forward_async`] there (this returns [`Error::Gpu`]).
    fn forward(&mut self, tokens: &[u32], pos: usize, which: Logits) -> Result<&[f32]> {
        #[cfg(not(target_arch = "wasm32"))]
        {
            super::block_on(self.forward_async(tokens, pos, which))
        }
        #[cfg(target_arch = "wasm32")]
        {
            let _ = (tokens, pos, which);
            Err(Error::Gpu {
                op: "forward",
                what: "the web cannot block on the GPU: use GpuModel::forward_async".into(),
            })
        }
    }
}
