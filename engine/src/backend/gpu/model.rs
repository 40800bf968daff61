//! [`GpuModel`]: any family's [`Graph`] on the GPU. At load every op of the graph becomes one
//! kernel instance (one per weight chunk for matrix products) with its bind group and its slot
//! in the parameter arena; buffers, bind groups and pipelines are all made then. A forward call
//! only writes the parameter arena and the token ids, records the instances in graph order into
//! one command buffer, submits it once and reads back either the logits or (decode with
//! sampling) a single u32 token id.
//!
//! Graph activations map to GPU buffers; an op that rewrites its input in place on the CPU (the
//! per-head norm, RoPE) writes a second buffer of the same activation on the GPU and later ops
//! read that one (WebGPU forbids binding one buffer as both input and output). In the head
//! every activation but the logits is addressed from the first wanted row.

use crate::arch::{self, Act, Epilogue, Glu, Graph, Mat, Op as GraphOp, Vector, WeightStore};
use crate::error::{Error, Result};
use crate::gguf::{ByteSource, GgufFile, SourceRef};
use crate::model::{check_forward, ForwardPass, Logits, ModelConfig, RopeLayout};
use crate::quant::GgmlDType;
use crate::tensor::TensorBytes;

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

/// A graph op as recorded at load.
enum Step {
    Embed {
        m: MatOp,
        scale: f32,
    },
    /// Row norm (`heads` 0) or per-head norm over `heads` heads per row of width `n`.
    Norm {
        inst: Inst,
        n: u32,
        heads: u32,
        add: bool,
    },
    Linear {
        m: MatOp,
        x_width: u32,
        out_width: u32,
        out_is_logits: bool,
        epi: Epilogue,
        /// The RMSNorm before the product is folded into it ([`MAT_NORM`]).
        norm: bool,
    },
    Rope {
        inst: Inst,
        layer: usize,
        has_freq: bool,
    },
    Attend {
        inst: Inst,
        layer: usize,
    },
    Glu {
        inst: Inst,
        act: Glu,
    },
    /// Two weight rows per unit with a pairwise epilogue (matmul_pair.wgsl): gate and up with
    /// the GLU (`qkv` None: [`Op::PairGlu`]), or Q, K, V with RoPE and the KV store of layer
    /// `qkv` ([`Op::PairQkv`]; with per-head Q/K norms first, [`Op::PairQkvNorm`]).
    Pair {
        inst: Inst,
        /// The types of w0, w1, w2 (the pipeline's `DTYPE`, `DTYPE1`, `DTYPE2`; glu: gate, up,
        /// up) and their row bytes.
        dtypes: [GgmlDType; 3],
        row_bytes: [u32; 3],
        cols: u32,
        x_width: u32,
        /// GLU: n_ff.
        units: u32,
        act: Glu,
        norm: bool,
        qkv: Option<PairQkv>,
    },
}

/// The attention-input side of a [`Step::Pair`].
#[derive(Clone, Copy)]
struct PairQkv {
    layer: usize,
    bias: bool,
    has_freq: bool,
    /// Offset of the RoPE factors in the step's vector buffer.
    freq_off: u32,
    /// Per-head Q and K RMSNorms before RoPE ([`Op::PairQkvNorm`]): the offset of the Q norm
    /// weight in the step's vector buffer (K's follows).
    head_norm_off: Option<u32>,
}

/// Where a backend-neutral load puts weights on the GPU: matrices uploaded in their block
/// layout (the CPU bytes dropped right after), vectors as small f32 buffers.
struct GpuStore<'a> {
    gpu: &'a Gpu,
    mats: Vec<GpuWeight>,
    vecs: Vec<wgpu::Buffer>,
    /// CPU copies of the vectors (norm weights, biases, RoPE factors: a few KiB per layer), to
    /// pack the fused attention-input step's vector buffer at load.
    host_vecs: Vec<Vec<f32>>,
}

impl WeightStore for GpuStore<'_> {
    fn matrix(
        &mut self,
        name: &str,
        dtype: GgmlDType,
        rows: usize,
        cols: usize,
        bytes: TensorBytes,
    ) -> Result<Mat> {
        let w = GpuWeight::upload(&self.gpu.ctx, name, dtype, rows, cols, bytes.as_slice())?;
        self.gpu.ctx.check()?;
        self.mats.push(w);
        Ok(Mat(self.mats.len() - 1))
    }
    fn vector(&mut self, name: &str, v: Vec<f32>) -> Result<Vector> {
        let b = self.gpu.ctx.buffer_init(
            name,
            bytemuck::cast_slice(&v),
            wgpu::BufferUsages::STORAGE,
        )?;
        self.vecs.push(b);
        self.host_vecs.push(v);
        Ok(Vector(self.vecs.len() - 1))
    }
}

/// Activation and cache buffers, sized for `n_batch` tokens and `n_ctx` positions.
struct Buffers {
    /// (n_batch) u32 token ids.
    tokens: wgpu::Buffer,
    /// Per [`Act`] (index `act as usize`): the buffer and, for activations an op rewrites in
    /// place, a second one. (n_batch, width).
    acts: Vec<[Option<wgpu::Buffer>; 2]>,
    /// Attention scratch: prefill scores (n_batch * n_head, n_ctx), or the decode chunks'
    /// partials (n_chunks * n_head, head_dim + 2).
    scores: wgpu::Buffer,
    /// Sampled token id (and padding): 2 u32.
    sampled: wgpu::Buffer,
    /// The many-workgroup sampler's candidates: (gather workgroups × SAMPLE_TOPK_MAX, 2) u32.
    cand: wgpu::Buffer,
    /// Per layer (n_ctx, kv_dim) of [`super::KvType`]: f16 with `shader-f16`, else f32.
    k_cache: Vec<wgpu::Buffer>,
    v_cache: Vec<wgpu::Buffer>,
    staging_logits: wgpu::Buffer,
    /// Two, so a pipelined decode can have a step in flight while the previous id is read.
    staging_token: [wgpu::Buffer; 2],
    /// Bound where an optional input is absent.
    dummy: wgpu::Buffer,
    /// Bound where unused read-write bindings are (the K and V caches of a GLU pair step): two
    /// buffers, since browsers refuse one writable range bound twice in a bind group.
    dummy_rw: [wgpu::Buffer; 2],
}

/// What a forward call ends with.
#[derive(Clone, Copy)]
enum Tail {
    Logits(Logits),
    /// Sample on the GPU; the id is copied to staging buffer `.1`.
    Sample(GpuSampling, usize),
}

/// Where a decode step's token id comes from.
#[derive(Clone, Copy, PartialEq)]
enum Input<'a> {
    /// Written from the host.
    Host(&'a [u32]),
    /// The id the previous step sampled, still in its GPU buffer (pipelined decode).
    Sampled,
}

/// A model of any registered family with its KV cache on the GPU.
pub struct GpuModel {
    gpu: Gpu,
    cfg: ModelConfig,
    n_ctx: usize,
    n_batch: usize,
    bufs: Buffers,
    arena: ParamArena,
    layers: Vec<Step>,
    head: Vec<Step>,
    /// Samplers: one workgroup (sample.wgsl); gather and pick (sample_topk.wgsl).
    sample: [Inst; 3],
    /// Keeps the weights alive (bind groups reference them).
    weights: Vec<GpuWeight>,
    /// Keeps the norm weights, biases and RoPE factors alive (as loaded, and packed for the
    /// fused steps).
    _vectors: (Vec<wgpu::Buffer>, Vec<wgpu::Buffer>),
    logits: Vec<f32>,
    /// Pipelined decode steps submitted and not yet read: (staging buffer, submission).
    in_flight: std::collections::VecDeque<(usize, wgpu::SubmissionIndex)>,
    /// Staging buffer of the next decode step.
    next_staging: usize,
    /// Whether the `sampled` buffer holds the id of the last step (a decode step sampled it).
    sampled_current: bool,
    last_dispatches: usize,
    /// Bytes of weights one decode step reads.
    bytes_per_token: u64,
}

fn u32_of(what: &'static str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::Shape {
        op: what,
        detail: format!("{v} does not fit in u32"),
    })
}

/// Whether the GPU backend can run `cfg` (every registered family; heads up to
/// [`MAX_HEAD_DIM`]). Checked before a device is started, so `auto` falls back early.
///
/// Errors: [`Error::GpuLimits`] for a head dimension the attention kernels cannot hold.
pub fn ensure_supported(cfg: &ModelConfig) -> Result<()> {
    if cfg.head_dim > MAX_HEAD_DIM {
        return Err(Error::GpuLimits {
            limit: "attention head dimension",
            needed: cfg.head_dim as u64,
            available: MAX_HEAD_DIM as u64,
        });
    }
    Ok(())
}

/// Arena slots the compiled graph needs: one per instance, one per weight chunk.
fn count_slots(graph: &Graph, mats: &[GpuWeight]) -> usize {
    graph
        .layers
        .iter()
        .chain(&graph.head)
        .map(|op| match op {
            GraphOp::Embed { table: m, .. } | GraphOp::Linear { w: m, .. } => {
                mats[m.0].chunks.len()
            }
            _ => 1,
        })
        .sum::<usize>()
        + 3 // the samplers: one workgroup; gather and pick
}

/// Builds the instances of a graph: tracks which buffer holds each activation now.
struct Compiler<'a> {
    ctx: &'a super::context::GpuContext,
    pipes: &'a mut PipelineCache,
    arena: &'a ParamArena,
    bufs: &'a Buffers,
    mats: &'a [GpuWeight],
    vecs: &'a [wgpu::Buffer],
    host_vecs: &'a [Vec<f32>],
    /// Vector buffers packed at load for fused steps (kept alive by the model).
    packed: Vec<wgpu::Buffer>,
    cfg: &'a ModelConfig,
    /// Current buffer (0 or 1) of each activation.
    cur: [usize; Act::ALL.len()],
    next_slot: usize,
    /// A row norm folded into the products that read its output: (normed activation, its
    /// source, the norm weight).
    folded: Option<(Act, Act, Vector)>,
}

/// Whether the row norm writing `out` can be folded into the products that read it: every op
/// in `rest` that reads `out` before it is written again is a plain [`GraphOp::Linear`] (no
/// accumulate into `out`), and the norm's source is not rewritten meanwhile.
fn foldable<'g>(out: Act, src: Act, rest: impl Iterator<Item = &'g GraphOp>) -> bool {
    let (mut readers, mut src_rewritten) = (0, false);
    for op in rest {
        if op.reads().contains(&out) {
            match op {
                // A reader after the source changed would see the new source.
                GraphOp::Linear { x, .. } if *x == out && !src_rewritten => readers += 1,
                _ => return false,
            }
        }
        let writes = op.writes();
        if writes.contains(&out) {
            break;
        }
        src_rewritten |= writes.contains(&src);
    }
    readers > 0
}

impl Compiler<'_> {
    fn buf(&self, a: Act) -> &wgpu::Buffer {
        self.bufs.acts[a as usize][self.cur[a as usize]]
            .as_ref()
            .expect("activation buffer allocated at load")
    }
    /// The other buffer of `a`, which becomes current.
    fn flip(&mut self, a: Act) -> &wgpu::Buffer {
        self.cur[a as usize] ^= 1;
        self.buf(a)
    }
    ///
    /// Errors: [`Error::Gpu`] when a buffer bound writable is bound again in the same group
    /// (browsers refuse such a bind group when it is used; native wgpu does not check).
    fn inst(&mut self, op: Op, buffers: &[&wgpu::Buffer]) -> Result<Inst> {
        for (i, (b, &rw)) in buffers.iter().zip(op.bindings()).enumerate() {
            if rw && buffers.iter().enumerate().any(|(j, o)| j != i && *o == *b) {
                return Err(Error::Gpu {
                    op: "bind group",
                    what: format!("{op:?}: writable binding {i} aliases another binding"),
                });
            }
        }
        let slot = self.next_slot;
        self.next_slot += 1;
        let layout = self.pipes.layout(self.ctx, op);
        Ok(Inst {
            bind: bind_group(
                self.ctx,
                layout,
                &self.arena.buffer,
                self.arena.offset(slot),
                buffers,
            ),
            slot,
        })
    }
    /// Build (once, at load) the pipelines of `ops` for weights of `dtype` (`F32` for the
    /// kernels that read no weights).
    fn need(&mut self, ops: &[Op], dtype: GgmlDType) -> Result<()> {
        for &op in ops {
            let key = self.pipes.key(op, dtype);
            self.pipes.prepare(self.ctx, key)?;
        }
        Ok(())
    }
    /// Build (once, at load) the pair pipeline `op` for weights of `dtypes` (w0, w1, w2).
    fn need_pair(&mut self, op: Op, dtypes: [GgmlDType; 3]) -> Result<()> {
        let key = self.pipes.key_pair(op, dtypes);
        self.pipes.prepare(self.ctx, key)
    }
    /// A product (`op` MatVec: recorded as MatVec for one token, MatMul for more) or an
    /// embedding lookup (`op` GetRows) over every chunk of `w`.
    #[allow(clippy::too_many_arguments)]
    fn mat(
        &mut self,
        op: Op,
        w: &GpuWeight,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
        bias: Option<&wgpu::Buffer>,
        norm: Option<&wgpu::Buffer>,
    ) -> Result<MatOp> {
        match op {
            Op::GetRows => self.need(&[Op::GetRows], w.dtype)?,
            _ => self.need(&[Op::MatVec, Op::MatMul], w.dtype)?,
        }
        let mut ch = Vec::with_capacity(w.chunks.len());
        for c in &w.chunks {
            let bufs: Vec<&wgpu::Buffer> = match op {
                Op::GetRows => vec![&c.buffer, x, y],
                _ => vec![
                    &c.buffer,
                    x,
                    y,
                    bias.unwrap_or(&self.bufs.dummy),
                    norm.unwrap_or(&self.bufs.dummy),
                ],
            };
            ch.push((
                self.inst(op, &bufs)?,
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
    }

    /// The step of `op`; `rest`: the ops after it (for folding a norm), `None` when `op` is
    /// folded into later steps.
    fn step<'g>(
        &mut self,
        op: &GraphOp,
        rest: impl Iterator<Item = &'g GraphOp>,
    ) -> Result<Option<Step>> {
        let (cfg, mats, vecs) = (self.cfg, self.mats, self.vecs);
        if let GraphOp::Norm {
            x,
            w,
            out,
            add: false,
        } = *op
        {
            if x != out && foldable(out, x, rest) {
                self.folded = Some((out, x, w));
                return Ok(None);
            }
        }
        let step = match *op {
            GraphOp::Embed { table, scale } => {
                let (tokens, x) = (self.bufs.tokens.clone(), self.buf(Act::X).clone());
                let m = self.mat(Op::GetRows, &mats[table.0], &tokens, &x, None, None)?;
                Step::Embed { m, scale }
            }
            GraphOp::Norm { x, w, out, add } => {
                let (xb, ob) = (self.buf(x).clone(), self.buf(out).clone());
                self.need(&[Op::RmsNorm], GgmlDType::F32)?;
                let inst = self.inst(Op::RmsNorm, &[&xb, &vecs[w.0], &ob])?;
                Step::Norm {
                    inst,
                    n: u32_of("gpu load", x.width(cfg))?,
                    heads: 0,
                    add,
                }
            }
            GraphOp::HeadNorm { x, w } => {
                let src = self.buf(x).clone();
                let dst = self.flip(x).clone();
                self.need(&[Op::RmsNorm], GgmlDType::F32)?;
                let inst = self.inst(Op::RmsNorm, &[&src, &vecs[w.0], &dst])?;
                Step::Norm {
                    inst,
                    n: u32_of("gpu load", cfg.head_dim)?,
                    heads: u32_of("gpu load", x.width(cfg) / cfg.head_dim)?,
                    add: false,
                }
            }
            GraphOp::Linear {
                w,
                bias,
                x,
                out,
                epi,
            } => {
                // Reading a folded norm's output: read its source and normalise in the product.
                let (src, norm) = match self.folded {
                    Some((normed, src, nw)) if normed == x => (src, Some(&vecs[nw.0])),
                    _ => (x, None),
                };
                let (xb, ob) = (self.buf(src).clone(), self.buf(out).clone());
                let bb = bias.map(|b| &vecs[b.0]);
                let m = self.mat(Op::MatVec, &mats[w.0], &xb, &ob, bb, norm)?;
                Step::Linear {
                    m,
                    x_width: u32_of("gpu load", src.width(cfg))?,
                    out_width: u32_of("gpu load", out.width(cfg))?,
                    out_is_logits: out == Act::Logits,
                    epi,
                    norm: norm.is_some(),
                }
            }
            GraphOp::RopeStore { layer, freqs } => {
                let q_in = self.buf(Act::Q).clone();
                let q_out = self.flip(Act::Q).clone();
                let (k, v) = (self.buf(Act::K).clone(), self.buf(Act::V).clone());
                let f = freqs
                    .map(|f| vecs[f.0].clone())
                    .unwrap_or_else(|| self.bufs.dummy.clone());
                let (kc, vc) = (
                    self.bufs.k_cache[layer].clone(),
                    self.bufs.v_cache[layer].clone(),
                );
                self.need(&[Op::Rope], GgmlDType::F32)?;
                let inst = self.inst(Op::Rope, &[&q_in, &q_out, &k, &v, &kc, &vc, &f])?;
                Step::Rope {
                    inst,
                    layer,
                    has_freq: freqs.is_some(),
                }
            }
            GraphOp::Attend { layer } => {
                let q = self.buf(Act::Q).clone();
                let att = self.buf(Act::Att).clone();
                let (kc, vc, sc) = (
                    self.bufs.k_cache[layer].clone(),
                    self.bufs.v_cache[layer].clone(),
                    self.bufs.scores.clone(),
                );
                let attention = [Op::Attention, Op::AttnDecode, Op::AttnCombine];
                self.need(&attention, GgmlDType::F32)?;
                let inst = self.inst(Op::Attention, &[&q, &kc, &vc, &sc, &att])?;
                Step::Attend { inst, layer }
            }
            GraphOp::Glu(act) => {
                let (g, u) = (self.buf(Act::Gate).clone(), self.buf(Act::Up).clone());
                self.need(&[Op::Glu], GgmlDType::F32)?;
                let inst = self.inst(Op::Glu, &[&g, &u])?;
                Step::Glu { inst, act }
            }
        };
        self.end_fold(std::slice::from_ref(op));
        Ok(Some(step))
    }

    /// A folded norm ends where its output or its source is written again.
    fn end_fold(&mut self, ops: &[GraphOp]) {
        if let Some((out, src, _)) = self.folded {
            if ops.iter().any(|op| {
                let w = op.writes();
                w.contains(&out) || w.contains(&src)
            }) {
                self.folded = None;
            }
        }
    }
}

/// Whether `a` is read by an op of `rest` before it is written again (a value a fused step
/// does not materialise must not be).
fn read_later<'g>(a: Act, rest: impl Iterator<Item = &'g GraphOp>) -> bool {
    for op in rest {
        if op.reads().contains(&a) {
            return true;
        }
        if op.writes().contains(&a) {
            return false;
        }
    }
    false
}

/// A plain product `out = W·x`: (w, bias, x, out) when `op` is a [`GraphOp::Linear`] with the
/// [`Epilogue::STORE`] epilogue.
fn plain_linear(op: &GraphOp) -> Option<(Mat, Option<Vector>, Act, Act)> {
    match *op {
        GraphOp::Linear {
            w,
            bias,
            x,
            out,
            epi,
        } if epi == Epilogue::STORE => Some((w, bias, x, out)),
        _ => None,
    }
}

impl Compiler<'_> {
    /// A fused step for the ops at the start of `ops` (`rest`: `ops` then the head), and how
    /// many ops it covers, or `None` when no fusion applies:
    /// - `Linear(gate) → Gate, Linear(up) → Up, Glu` (same input, no bias, no epilogue): one
    ///   pair product with the GLU in its epilogue;
    /// - `Linear(q) → Q, Linear(k) → K, Linear(v) → V, RopeStore` (same input, optional
    ///   biases): one pair product with RoPE and the KV store in its epilogue;
    /// - the same with `HeadNorm(Q), HeadNorm(K)` before `RopeStore` (Qwen3, Gemma 3): one
    ///   pair product whose Q and K workgroups each make a whole head and normalise it before
    ///   RoPE and the store ([`Op::PairQkvNorm`]).
    ///
    /// Each weight must be in one buffer, all of one width (each of its own type: the pair
    /// pipelines are specialised to the types), and the unmaterialised activations (Up; K, V)
    /// must not be read later. The weights stay in their own buffers: nothing is concatenated.
    fn fuse<'g>(
        &mut self,
        ops: &[GraphOp],
        rest: impl Iterator<Item = &'g GraphOp> + Clone,
    ) -> Result<Option<(Step, usize)>> {
        let (cfg, mats) = (self.cfg, self.mats);
        let lin = |i: usize| ops.get(i).and_then(plain_linear);
        let single = |m: Mat| mats[m.0].chunks.len() == 1;
        let Some((w0, b0, x, out0)) = lin(0) else {
            return Ok(None);
        };
        let Some((w1, b1, x1, out1)) = lin(1) else {
            return Ok(None);
        };
        let cols = mats[w0.0].cols;
        // Each weight's type is a constant of the pair pipeline (a Q4_K_M layer's Q6_K attn_v
        // gets a pipeline of its own type triple).
        let same = |m: Mat| single(m) && mats[m.0].cols == cols;
        if x1 != x || !same(w0) || !same(w1) {
            return Ok(None);
        }
        let dt = |m: Mat| mats[m.0].dtype;
        let rbytes = |m: Mat| u32_of("gpu load", mats[m.0].row_bytes);
        let (src, norm) = match self.folded {
            Some((normed, src, nw)) if normed == x => (src, Some(nw)),
            _ => (x, None),
        };
        let cols32 = u32_of("gpu load", cols)?;
        let x_width = u32_of("gpu load", src.width(cfg))?;
        // Gate, up, GLU.
        if let (Act::Gate, Act::Up, Some(GraphOp::Glu(act))) = (out0, out1, ops.get(2)) {
            if b0.is_some()
                || b1.is_some()
                || mats[w0.0].rows != mats[w1.0].rows
                || read_later(Act::Up, rest.clone().skip(3))
            {
                return Ok(None);
            }
            let (xb, yb) = (self.buf(src).clone(), self.buf(Act::Gate).clone());
            let vb = norm.map_or(&self.bufs.dummy, |n| &self.vecs[n.0]).clone();
            let (g, u) = (
                mats[w0.0].chunks[0].buffer.clone(),
                mats[w1.0].chunks[0].buffer.clone(),
            );
            let [rk, rv] = self.bufs.dummy_rw.clone();
            let dtypes = [dt(w0), dt(w1), dt(w1)];
            let n_ops = 3;
            let row_bytes = [rbytes(w0)?, rbytes(w1)?, rbytes(w1)?];
            self.need_pair(Op::PairGlu, dtypes)?;
            let inst = self.inst(Op::PairGlu, &[&g, &u, &g, &xb, &vb, &yb, &rk, &rv])?;
            return Ok(Some((
                Step::Pair {
                    inst,
                    dtypes,
                    row_bytes,
                    cols: cols32,
                    x_width,
                    units: u32_of("gpu load", mats[w0.0].rows)?,
                    act: *act,
                    norm: norm.is_some(),
                    qkv: None,
                },
                n_ops,
            )));
        }
        // Q, K, V, RoPE + KV store.
        let Some((w2, b2, x2, out2)) = lin(2) else {
            return Ok(None);
        };
        // Per-head Q and K norms between the products and the RoPE + store.
        let head_norms = match (ops.get(3), ops.get(4)) {
            (
                Some(&GraphOp::HeadNorm { x: Act::Q, w: qn }),
                Some(&GraphOp::HeadNorm { x: Act::K, w: kn }),
            ) => Some((qn, kn)),
            _ => None,
        };
        let rope_at = if head_norms.is_some() { 5 } else { 3 };
        let Some(&GraphOp::RopeStore { layer, freqs }) = ops.get(rope_at) else {
            return Ok(None);
        };
        let (qd, kvd) = (cfg.q_dim(), cfg.kv_dim());
        if (out0, out1, out2) != (Act::Q, Act::K, Act::V)
            || x2 != x
            || !same(w2)
            || (mats[w0.0].rows, mats[w1.0].rows, mats[w2.0].rows) != (qd, kvd, kvd)
            || !cfg.head_dim.is_multiple_of(2)
            || read_later(Act::K, rest.clone().skip(rope_at + 1))
            || read_later(Act::V, rest.clone().skip(rope_at + 1))
        {
            return Ok(None);
        }
        // The step's vectors: [norm weight (cols) | Q, K, V biases | RoPE factors | Q head
        // norm | K head norm].
        let hv = self.host_vecs;
        let mut packed = norm.map_or(vec![0.0; cols], |n| hv[n.0].clone());
        let bias = b0.is_some() || b1.is_some() || b2.is_some();
        if bias {
            for (b, n) in [(b0, qd), (b1, kvd), (b2, kvd)] {
                match b {
                    Some(b) => packed.extend_from_slice(&hv[b.0]),
                    None => packed.extend(std::iter::repeat_n(0.0, n)),
                }
            }
        }
        let freq_off = u32_of("gpu load", packed.len())?;
        if let Some(f) = freqs {
            packed.extend_from_slice(&hv[f.0]);
        }
        let head_norm_off = match head_norms {
            Some((qn, kn)) => {
                let off = u32_of("gpu load", packed.len())?;
                packed.extend_from_slice(&hv[qn.0]);
                packed.extend_from_slice(&hv[kn.0]);
                Some(off)
            }
            None => None,
        };
        let vb = self.ctx.buffer_init(
            "pair vectors",
            bytemuck::cast_slice(&packed),
            wgpu::BufferUsages::STORAGE,
        )?;
        let (xb, qb) = (self.buf(src).clone(), self.buf(Act::Q).clone());
        let (kc, vc) = (
            self.bufs.k_cache[layer].clone(),
            self.bufs.v_cache[layer].clone(),
        );
        let ws = [w0, w1, w2].map(|m| mats[m.0].chunks[0].buffer.clone());
        let dtypes = [dt(w0), dt(w1), dt(w2)];
        let row_bytes = [rbytes(w0)?, rbytes(w1)?, rbytes(w2)?];
        let op = if head_norms.is_some() {
            Op::PairQkvNorm
        } else {
            Op::PairQkv
        };
        self.need_pair(op, dtypes)?;
        let inst = self.inst(op, &[&ws[0], &ws[1], &ws[2], &xb, &vb, &qb, &kc, &vc])?;
        self.packed.push(vb);
        let pair = Step::Pair {
            inst,
            dtypes,
            row_bytes,
            cols: cols32,
            x_width,
            units: 0,
            act: Glu::Silu,
            norm: norm.is_some(),
            qkv: Some(PairQkv {
                layer,
                bias,
                has_freq: freqs.is_some(),
                freq_off,
                head_norm_off,
            }),
        };
        Ok(Some((pair, rope_at + 1)))
    }
}

/// RoPE parameters of layer `layer` for `n` rows at positions `pos ..`.
fn rope_params(c: &ModelConfig, layer: usize, n: u32, pos: u32, has_freq: bool) -> RopeParams {
    let spec = c.layers[layer];
    let (base, pos_scale, mscale, rotate) = match spec.rope {
        Some(r) => (r.base, r.pos_scale, r.mscale, 1),
        None => (1.0, 1.0, 1.0, 0),
    };
    RopeParams {
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
        q_stride: c.q_dim() as u32,
        kv_dim: c.kv_dim() as u32,
        base,
        pos_scale,
        mscale,
        rotate,
        ..Default::default()
    }
}

/// Activations some op of `graph` rewrites in place (they get a second buffer).
fn rewritten(graph: &Graph) -> Vec<Act> {
    let mut out = Vec::new();
    for op in graph.layers.iter().chain(&graph.head) {
        let a = match op {
            GraphOp::HeadNorm { x, .. } => Some(*x),
            GraphOp::RopeStore { .. } => Some(Act::Q),
            _ => None,
        };
        if let Some(a) = a {
            if !out.contains(&a) {
                out.push(a);
            }
        }
    }
    out
}

impl GpuModel {
    /// Load a GGUF of any registered family onto the GPU with a KV cache of `n_ctx` positions.
    /// Each weight goes from the file to the GPU in its block layout, one tensor at a time.
    ///
    /// Errors: [`Error::UnsupportedArchitecture`], [`Error::MissingTensor`], [`Error::Shape`],
    /// [`Error::Metadata`], [`Error::OpDType`] for a weight type without a GPU kernel,
    /// [`Error::GpuLimits`], [`Error::GpuOutOfMemory`], [`Error::Gpu`].
    pub fn load<S: ByteSource + ?Sized>(
        mut gpu: Gpu,
        file: &GgufFile,
        src: &S,
        n_ctx: usize,
    ) -> Result<Self> {
        let cfg0 = arch::config(file)?;
        ensure_supported(&cfg0)?;
        if n_ctx == 0 {
            return Err(Error::InvalidParam {
                name: "n_ctx",
                what: "must be at least 1".into(),
            });
        }
        let (n_ff, n_vocab) = (cfg0.n_ff, cfg0.n_vocab);
        // Activations are bound whole: keep each under the device's binding limit.
        let dev_max = gpu.ctx.device.limits().max_storage_buffer_binding_size;
        let kv_type = gpu.pipes.kv_type();
        let kv_bytes = (n_ctx as u64)
            .saturating_mul(cfg0.kv_dim() as u64)
            .saturating_mul(kv_type.bytes() as u64);
        if kv_bytes > dev_max {
            return Err(Error::GpuLimits {
                limit: "maxStorageBufferBindingSize",
                needed: kv_bytes,
                available: dev_max,
            });
        }
        let widest = Act::ALL.iter().map(|a| a.width(&cfg0)).max().unwrap_or(1);
        let per_token = (n_vocab
            .max(cfg0.n_head.saturating_mul(n_ctx))
            .max(n_ff)
            .max(widest) as u64)
            .saturating_mul(4);
        let n_batch = (dev_max / per_token).min(MAX_BATCH as u64) as usize;
        if n_batch == 0 {
            return Err(Error::GpuLimits {
                limit: "maxStorageBufferBindingSize",
                needed: per_token,
                available: dev_max,
            });
        }

        // Phase 1: weights, one tensor at a time, and the graph.
        let mut store = GpuStore {
            gpu: &gpu,
            mats: Vec::new(),
            vecs: Vec::new(),
            host_vecs: Vec::new(),
        };
        let (cfg, graph) = arch::build(file, &SourceRef(src), n_ctx, &mut store)?;
        let (mats, vecs, host_vecs) = (store.mats, store.vecs, store.host_vecs);
        let bytes_per_token = graph.weight_bytes_per_token(|m| {
            let w = &mats[m.0];
            ((w.rows * w.row_bytes) as u64, w.row_bytes as u64)
        });

        // Activations and the KV cache.
        let ctx = &gpu.ctx;
        let st = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC;
        let nb = n_batch;
        let twice = rewritten(&graph);
        let mut acts = Vec::with_capacity(Act::ALL.len());
        for a in Act::ALL {
            let width = a.width(&cfg);
            let size = (nb * width * 4) as u64;
            let first = ctx.buffer(&format!("{a:?}"), size, st)?;
            let second = if twice.contains(&a) {
                Some(ctx.buffer(&format!("{a:?} (2)"), size, st)?)
            } else {
                None
            };
            acts.push([Some(first), second]);
        }
        let chunk = ctx.info.attn_decode_chunk;
        let scratch = AttnParams::scratch_len(nb, n_ctx, cfg.n_head, cfg.head_dim, chunk);
        let kv = |label: &str| ctx.buffer(label, kv_bytes, st);
        let token_staging = || {
            ctx.buffer(
                "staging token",
                8,
                wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            )
        };
        let bufs = Buffers {
            tokens: ctx.buffer(
                "tokens",
                (nb * 4) as u64,
                wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
            )?,
            acts,
            scores: ctx.buffer("scores", (scratch * 4) as u64, st)?,
            sampled: ctx.buffer("sampled", 8, st)?,
            cand: ctx.buffer(
                "sample candidates",
                u64::from(sample_groups(u32_of("gpu load", cfg.n_vocab)?))
                    * u64::from(SAMPLE_TOPK_MAX)
                    * 8,
                st,
            )?,
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
            staging_token: [token_staging()?, token_staging()?],
            dummy: ctx.buffer_init("dummy", &1f32.to_le_bytes(), wgpu::BufferUsages::STORAGE)?,
            dummy_rw: [
                ctx.buffer("dummy k", 16, wgpu::BufferUsages::STORAGE)?,
                ctx.buffer("dummy v", 16, wgpu::BufferUsages::STORAGE)?,
            ],
        };

        // Pipelines are built as the steps that use them are recorded (below, `Compiler::need`):
        // only the (op, weight type) pairs this model runs are compiled, all at load.

        // Phase 2: parameter arena, bind groups, the recorded steps.
        let n_slots = count_slots(&graph, &mats);
        let arena = ParamArena::new(&gpu.ctx, n_slots)?;
        let mut c = Compiler {
            ctx: &gpu.ctx,
            pipes: &mut gpu.pipes,
            arena: &arena,
            bufs: &bufs,
            mats: &mats,
            vecs: &vecs,
            host_vecs: &host_vecs,
            packed: Vec::new(),
            cfg: &cfg,
            cur: [0; Act::ALL.len()],
            next_slot: 0,
            folded: None,
        };
        let mut layers = Vec::with_capacity(graph.layers.len());
        let mut i = 0;
        while i < graph.layers.len() {
            let ops = &graph.layers[i..];
            if let Some((step, used)) = c.fuse(ops, ops.iter().chain(&graph.head))? {
                c.end_fold(&ops[..used]);
                layers.push(step);
                i += used;
                continue;
            }
            let rest = graph.layers[i + 1..].iter().chain(&graph.head);
            layers.extend(c.step(&graph.layers[i], rest)?);
            i += 1;
        }
        let mut head = Vec::with_capacity(graph.head.len());
        for (i, op) in graph.head.iter().enumerate() {
            head.extend(c.step(op, graph.head[i + 1..].iter())?);
        }
        if !matches!(
            head.last(),
            Some(Step::Linear {
                out_is_logits: true,
                ..
            })
        ) {
            return Err(Error::Shape {
                op: "gpu load",
                detail: format!("the {} graph's head does not end in logits", cfg.arch),
            });
        }
        let logits_buf = c.buf(Act::Logits).clone();
        let sampled = bufs.sampled.clone();
        c.need(
            &[Op::Sample, Op::SampleGather, Op::SamplePick],
            GgmlDType::F32,
        )?;
        let cand = bufs.cand.clone();
        let sample = [
            c.inst(Op::Sample, &[&logits_buf, &sampled])?,
            c.inst(Op::SampleGather, &[&logits_buf, &cand])?,
            c.inst(Op::SamplePick, &[&cand, &sampled])?,
        ];
        debug_assert!(c.next_slot <= n_slots);
        let packed = std::mem::take(&mut c.packed);
        gpu.ctx.check()?;

        Ok(Self {
            gpu,
            cfg,
            n_ctx,
            n_batch,
            bufs,
            arena,
            layers,
            head,
            sample,
            weights: mats,
            _vectors: (vecs, packed),
            logits: Vec::new(),
            in_flight: Default::default(),
            next_staging: 0,
            sampled_current: false,
            last_dispatches: 0,
            bytes_per_token,
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
    /// on the GPU): one per graph op, one per weight chunk of each matrix product, the
    /// attention merge on layers whose visible cache spans more than one decode chunk
    /// ([`super::GpuInfo::attn_decode_chunk`] positions), and the sampler's two (greedy or
    /// top-k ≤ 64, [`GpuSampling::parallel`]; one otherwise).
    pub fn dispatches_per_token(&self, pos: usize) -> usize {
        let chunk = self.gpu.ctx.info.attn_decode_chunk as usize;
        let count = |s: &Step| match s {
            Step::Embed { m, .. } | Step::Linear { m, .. } => m.chunks.len(),
            Step::Attend { layer, .. } => {
                let w = self.cfg.layers[*layer].window;
                let visible = if w > 0 { (pos + 1).min(w) } else { pos + 1 };
                1 + usize::from(visible > chunk)
            }
            _ => 1,
        };
        self.layers
            .iter()
            .chain(&self.head)
            .map(count)
            .sum::<usize>()
            + 2
    }

    /// Dispatches recorded by the last forward / decode call (its last batch).
    pub fn last_dispatch_count(&self) -> usize {
        self.last_dispatches
    }

    /// Bytes of weights one decode step reads (every matrix product's weights, one embedding
    /// row): the numerator of the bandwidth floor.
    pub fn weight_bytes_per_token(&self) -> u64 {
        self.bytes_per_token
    }

    /// Weight bytes on the GPU.
    pub fn weight_bytes(&self) -> u64 {
        self.weights.iter().map(|w| w.gpu_bytes()).sum()
    }

    fn check_tokens(&self, tokens: &[u32], pos: usize) -> Result<()> {
        check_forward(tokens, pos, self.n_ctx, self.cfg.n_vocab)
    }

    /// Record one batch (`tokens` at positions `pos ..`) into one command buffer.
    fn encode(&mut self, input: Input<'_>, pos: usize, tail: Tail) -> Result<wgpu::CommandBuffer> {
        self.sampled_current = matches!(tail, Tail::Sample(..));
        let c = &self.cfg;
        let pos = u32_of("gpu forward", pos)?;
        let mut enc = self
            .gpu
            .ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("slm forward"),
            });
        let n = match input {
            Input::Host(tokens) => {
                self.gpu
                    .ctx
                    .queue
                    .write_buffer(&self.bufs.tokens, 0, bytemuck::cast_slice(tokens));
                tokens.len() as u32
            }
            Input::Sampled => {
                enc.copy_buffer_to_buffer(&self.bufs.sampled, 0, &self.bufs.tokens, 0, 4);
                1
            }
        };

        let mut r = Rec {
            pass: enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("slm layers"),
                timestamp_writes: None,
            }),
            arena: &mut self.arena,
            pipes: &self.gpu.pipes,
            tpr: self.gpu.ctx.info.matmul_threads_per_row,
            chunk: self.gpu.ctx.info.attn_decode_chunk,
            cfg: c,
            n_ctx: self.n_ctx as u32,
            count: 0,
        };
        for s in &self.layers {
            r.step(s, n, 0, pos)?;
        }
        // Final norm and output projection: every row for Logits::All, else the last one.
        let all = matches!(tail, Tail::Logits(Logits::All));
        let (first, n_out) = if all { (0, n) } else { (n - 1, 1) };
        for s in &self.head {
            r.step(s, n_out, first, pos)?;
        }
        let n_vocab = c.n_vocab as u32;
        if let Tail::Sample(s, _) = tail {
            let p = s.params(n_vocab, 0);
            let f32 = GgmlDType::F32;
            if s.parallel() {
                r.go(Op::SampleGather, f32, &self.sample[1], &p, p.n_groups)?;
                r.go(Op::SamplePick, f32, &self.sample[2], &p, 1)?;
            } else {
                r.go(Op::Sample, f32, &self.sample[0], &p, 1)?;
            }
        }
        let used = r.arena.slots();
        self.last_dispatches = r.count;
        drop(r);
        self.arena.upload(&self.gpu.ctx, used);
        match tail {
            Tail::Sample(_, slot) => enc.copy_buffer_to_buffer(
                &self.bufs.sampled,
                0,
                &self.bufs.staging_token[slot],
                0,
                4,
            ),
            Tail::Logits(_) => {
                let bytes = (n_out * n_vocab * 4) as u64;
                let logits = self.bufs.acts[Act::Logits as usize][0]
                    .as_ref()
                    .expect("logits buffer");
                enc.copy_buffer_to_buffer(logits, 0, &self.bufs.staging_logits, 0, bytes)
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
    /// Decode attention chunk.
    chunk: u32,
    cfg: &'a ModelConfig,
    n_ctx: u32,
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
        let key = self.pipes.key(op, dtype);
        self.go_key(key, inst, p, n_wg)
    }

    /// Record one dispatch of the pipeline of `key` (built at load).
    fn go_key<P: bytemuck::Pod>(
        &mut self,
        key: PipelineKey,
        inst: &Inst,
        p: &P,
        n_wg: u32,
    ) -> Result<()> {
        let pipeline = self.pipes.get(key)?;
        self.arena.set(inst.slot, p);
        dispatch(&mut self.pass, pipeline, &inst.bind, n_wg);
        self.count += 1;
        Ok(())
    }

    /// Record `s` for `n` rows starting at row `first` (0 except in the head) of a batch at
    /// positions `pos ..`.
    fn step(&mut self, s: &Step, n: u32, first: u32, pos: u32) -> Result<()> {
        let c = self.cfg;
        match s {
            Step::Embed { m, scale } => {
                let cols = m.cols;
                let pieces = cols.div_ceil(16);
                for (inst, row_begin, rows) in &m.chunks {
                    let total = n * pieces;
                    let p = GetRowsParams {
                        cols,
                        row_bytes: m.row_bytes,
                        n_tok: n,
                        row_begin: *row_begin,
                        n_rows: *rows,
                        total,
                        scale: *scale,
                        _pad: 0,
                    };
                    self.go(Op::GetRows, m.dtype, inst, &p, total.div_ceil(ELT_WG))?;
                }
            }
            Step::Norm {
                inst,
                n: width,
                heads,
                add,
            } => {
                let p = if *heads == 0 {
                    NormParams {
                        n: *width,
                        row_begin: first,
                        n_rows: n,
                        eps: c.rms_eps,
                        add: *add as u32,
                        _pad: [0; 3],
                    }
                } else {
                    NormParams {
                        n: *width,
                        row_begin: first * heads,
                        n_rows: n * heads,
                        eps: c.rms_eps,
                        add: *add as u32,
                        _pad: [0; 3],
                    }
                };
                self.go(Op::RmsNorm, GgmlDType::F32, inst, &p, p.n_rows)?;
            }
            Step::Linear {
                m,
                x_width,
                out_width,
                out_is_logits,
                epi,
                norm,
            } => {
                let (op, tile) = if n == 1 {
                    (Op::MatVec, 1)
                } else {
                    (Op::MatMul, MATMUL_TILE)
                };
                let out_row = if *out_is_logits { 0 } else { first };
                for (inst, row_begin, rows) in &m.chunks {
                    let total = MatParams::workgroups(*rows, n, tile, self.tpr);
                    let p = MatParams {
                        rows: *rows,
                        cols: m.cols,
                        row_bytes: m.row_bytes,
                        n_tok: n,
                        x_off: first * x_width,
                        x_stride: *x_width,
                        out_off: out_row * out_width + row_begin,
                        out_stride: *out_width,
                        bias_off: *row_begin,
                        flags: (if m.bias { MAT_BIAS } else { 0 })
                            | (if epi.accumulate { MAT_ACCUMULATE } else { 0 })
                            | (if *norm { MAT_NORM } else { 0 }),
                        total_wg: total,
                        scale: epi.scale,
                        softcap: epi.softcap,
                        eps: c.rms_eps,
                        _pad: 0,
                    };
                    self.go(op, m.dtype, inst, &p, total)?;
                }
            }
            Step::Rope {
                inst,
                layer,
                has_freq,
            } => {
                let p = rope_params(c, *layer, n, pos, *has_freq);
                self.go(Op::Rope, GgmlDType::F32, inst, &p, p.workgroups())?;
            }
            Step::Pair {
                inst,
                dtypes,
                row_bytes,
                cols,
                x_width,
                units,
                act,
                norm,
                qkv,
            } => {
                let op = match qkv {
                    None => Op::PairGlu,
                    Some(q) if q.head_norm_off.is_some() => Op::PairQkvNorm,
                    Some(_) => Op::PairQkv,
                };
                let tile = if n == 1 { 1 } else { MATMUL_TILE };
                let eps = norm.then_some(c.rms_eps);
                let x = (first * x_width, *x_width);
                let p = match qkv {
                    None => PairParams::glu(
                        *units,
                        *cols,
                        n,
                        x,
                        (first * units, *units),
                        [row_bytes[0], row_bytes[1]],
                        match act {
                            Glu::Silu => 0,
                            Glu::GeluTanh => 1,
                        },
                        eps,
                        (tile, self.tpr),
                    ),
                    Some(q) => PairParams::qkv(
                        &rope_params(c, q.layer, n, pos, q.has_freq),
                        *cols,
                        x,
                        *row_bytes,
                        eps,
                        q.bias,
                        q.freq_off,
                        q.head_norm_off.map(|off| (off, c.rms_eps)),
                        (tile, self.tpr),
                    ),
                };
                let key = self.pipes.key_pair(op, *dtypes);
                self.go_key(key, inst, &p, p.total_wg)?;
            }
            Step::Attend { inst, layer } => {
                let spec = c.layers[*layer];
                let ap = AttnParams {
                    n_head: c.n_head as u32,
                    n_head_kv: c.n_head_kv as u32,
                    head_dim: c.head_dim as u32,
                    n_tok: n,
                    pos0: pos,
                    kv_dim: c.kv_dim() as u32,
                    q_stride: c.q_dim() as u32,
                    n_ctx: self.n_ctx,
                    scale: spec.attn_scale,
                    softcap: spec.attn_softcap,
                    window: u32_of("gpu forward", spec.window)?,
                    ..Default::default()
                }
                .with_decode_chunk(self.chunk);
                if n == 1 {
                    // Decode: one workgroup per (head, cache chunk), then the merge.
                    let heads = ap.n_head;
                    self.go(
                        Op::AttnDecode,
                        GgmlDType::F32,
                        inst,
                        &ap,
                        heads * ap.n_chunks,
                    )?;
                    if ap.n_chunks > 1 {
                        self.go(Op::AttnCombine, GgmlDType::F32, inst, &ap, heads)?;
                    }
                } else {
                    self.go(Op::Attention, GgmlDType::F32, inst, &ap, n * ap.n_head)?;
                }
            }
            Step::Glu { inst, act } => {
                let p = EltParams {
                    n: n * c.n_ff as u32,
                    act: match act {
                        Glu::Silu => 0,
                        Glu::GeluTanh => 1,
                    },
                    _pad: [0; 2],
                };
                self.go(Op::Glu, GgmlDType::F32, inst, &p, p.n.div_ceil(ELT_WG))?;
            }
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
        self.drain().await?;
        let n_vocab = self.cfg.n_vocab;
        self.logits.clear();
        let n_batches = tokens.len().div_ceil(self.n_batch);
        for (bi, batch) in tokens.chunks(self.n_batch).enumerate() {
            let last = bi + 1 == n_batches;
            let bpos = pos + bi * self.n_batch;
            // Intermediate batches of a Logits::Last call only fill the KV cache; their
            // (one-row) logits are read back and dropped.
            let cmd = self.encode(Input::Host(batch), bpos, Tail::Logits(which))?;
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
        self.decode_submit(Some(token), pos, s).await?;
        self.decode_collect_async().await
    }

    /// Pipelined decode: encode and submit the decode-and-sample step of `token` at `pos`
    /// without waiting for it. `token` `None` takes the id the previous step sampled straight
    /// from its GPU buffer, so step n+1 can be submitted before step n's id is read back;
    /// [`GpuModel::decode_collect_async`] reads the ids in submission order. At most two steps
    /// are in flight (the caller keeps one ahead); a step with a host token, a forward call,
    /// drains (reads and drops) what is still in flight first.
    ///
    /// Errors: as [`GpuModel::decode_sample_async`]; [`Error::InvalidParam`] for `None` when
    /// no decode step ran just before, or with two steps already in flight.
    pub async fn decode_submit(
        &mut self,
        token: Option<u32>,
        pos: usize,
        s: &GpuSampling,
    ) -> Result<()> {
        s.validate()?;
        let input = match token {
            Some(ref t) => {
                self.check_tokens(std::slice::from_ref(t), pos)?;
                self.drain().await?;
                Input::Host(std::slice::from_ref(t))
            }
            None => {
                // The id on the device is within the vocabulary: the sampler wrote it.
                self.check_tokens(&[0], pos)?;
                if !self.sampled_current || self.in_flight.len() >= 2 {
                    return Err(Error::InvalidParam {
                        name: "token",
                        what: "no decode step to continue from (or two already in flight)".into(),
                    });
                }
                Input::Sampled
            }
        };
        let slot = self.next_staging;
        self.next_staging ^= 1;
        let cmd = self.encode(input, pos, Tail::Sample(*s, slot))?;
        let done = self.gpu.ctx.submit(cmd)?;
        self.in_flight.push_back((slot, done));
        Ok(())
    }

    /// The id sampled by the oldest step [`GpuModel::decode_submit`] submitted (waits for it:
    /// 4 bytes read back). Errors: [`Error::InvalidParam`] when none is in flight; GPU errors.
    pub async fn decode_collect_async(&mut self) -> Result<u32> {
        let Some((slot, done)) = self.in_flight.pop_front() else {
            return Err(Error::InvalidParam {
                name: "decode_collect",
                what: "no decode step in flight".into(),
            });
        };
        let mut out = [0u8; 4];
        self.gpu
            .ctx
            .read_after(done, &self.bufs.staging_token[slot], &mut out)
            .await?;
        Ok(u32::from_le_bytes(out))
    }

    /// Read and drop the steps still in flight (a speculative step after a stop).
    pub async fn drain(&mut self) -> Result<()> {
        while !self.in_flight.is_empty() {
            self.decode_collect_async().await?;
        }
        Ok(())
    }

    /// Decode steps submitted and not yet collected.
    pub fn steps_in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Blocking [`GpuModel::decode_sample_async`] (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn decode_sample(&mut self, token: u32, pos: usize, s: &GpuSampling) -> Result<u32> {
        super::block_on(self.decode_sample_async(token, pos, s))
    }

    /// Blocking [`GpuModel::decode_submit`] (native only; the submission itself never waits
    /// unless it drains an earlier step).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn decode_submit_blocking(
        &mut self,
        token: Option<u32>,
        pos: usize,
        s: &GpuSampling,
    ) -> Result<()> {
        super::block_on(self.decode_submit(token, pos, s))
    }

    /// Blocking [`GpuModel::decode_collect_async`] (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn decode_collect(&mut self) -> Result<u32> {
        super::block_on(self.decode_collect_async())
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
