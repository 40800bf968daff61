//! [`CpuModel`]: any family's [`Graph`] executed on the CPU, op by op, on every forward call.
//!
//! Weights stay in their GGUF block layout ([`QMatrix`]), borrowed from the file when it is held
//! in memory (the browser) rather than copied; activations are quantized once per
//! token and matrix for the dot products ([`PreparedActs`]), as llama.cpp does. Scratch buffers
//! grow only when a bigger batch arrives, so a decode step allocates nothing. The KV cache is
//! f32, per layer (n_ctx, kv_dim) for K and V, reserved at load and filled as positions are
//! written (memory follows the conversation), and keeps every position on every layer (sliding
//! layers read only their window), so a caller may rewind to any earlier position.

use crate::arch::{self, Act, Epilogue, Glu, Graph, Mat, Op, Vector, WeightStore};
use crate::error::{Error, Result};
use crate::gguf::{ByteSource, GgufFile, SourceRef};
use crate::memory;
use crate::model::{check_forward, ForwardPass, Logits, ModelConfig};
use crate::quant::{self, GgmlDType, PreparedActs};
use crate::tensor::{QMatrix, TensorBytes};

use super::matmul::OutPtr;
use super::{matmul, ops, CpuThreads};

/// Most tokens run through the layers at once during prefill (bounds scratch memory; a longer
/// prompt is processed in several batches).
pub const MAX_BATCH: usize = 64;

/// Prefill attention splits a batch's rows into this many parts per thread (taken as threads
/// come free, so a descheduled worker holds up less of the step).
const ATTN_PARTS_PER_THREAD: usize = 2;

/// Parts of a batch's attention rows, each with its own scores scratch: one without a pool.
fn attn_parts(threads: usize) -> usize {
    if threads > 1 {
        ATTN_PARTS_PER_THREAD * threads
    } else {
        1
    }
}

/// The weights a graph refers to, in CPU memory.
#[derive(Default)]
pub struct CpuWeights {
    pub mats: Vec<QMatrix>,
    pub vecs: Vec<Vec<f32>>,
}

impl WeightStore for CpuWeights {
    fn matrix(
        &mut self,
        name: &str,
        dtype: GgmlDType,
        rows: usize,
        cols: usize,
        bytes: TensorBytes,
    ) -> Result<Mat> {
        self.mats
            .push(QMatrix::new(name, dtype, rows, cols, bytes)?);
        Ok(Mat(self.mats.len() - 1))
    }
    fn vector(&mut self, _name: &str, v: Vec<f32>) -> Result<Vector> {
        self.vecs.push(v);
        Ok(Vector(self.vecs.len() - 1))
    }
}

impl CpuWeights {
    /// Matrix `m`.
    pub fn mat(&self, m: Mat) -> &QMatrix {
        &self.mats[m.0]
    }
    /// Vector `v`.
    pub fn vec(&self, v: Vector) -> &[f32] {
        &self.vecs[v.0]
    }
    /// Bytes of the matrices: (lent by the file held in memory, copied into their own buffers).
    pub fn matrix_bytes(&self) -> (usize, usize) {
        self.mats.iter().fold((0, 0), |(s, c), m| {
            if m.data.is_shared() {
                (s + m.data.len(), c)
            } else {
                (s, c + m.data.len())
            }
        })
    }
    /// Bytes of weight data held.
    pub fn size_bytes(&self) -> usize {
        self.mats.iter().map(|m| m.data.len()).sum::<usize>()
            + self.vecs.iter().map(|v| v.len() * 4).sum::<usize>()
    }
}

/// Activations of one batch of up to `cap` tokens.
#[derive(Default)]
struct Scratch {
    cap: usize,
    /// One per [`Act`] except `Logits` (index `act as usize`): (cap, width).
    bufs: [Vec<f32>; 9],
    /// (cap, widest activation): products that are added, not stored.
    tmp: Vec<f32>,
    /// Attention scores: [`attn_parts`] parts of (n_head / n_head_kv, n_ctx), one per part of
    /// a batch's rows.
    scores: Vec<f32>,
    /// One per token.
    acts: Vec<PreparedActs>,
}

impl Scratch {
    fn ensure(&mut self, cfg: &ModelConfig, n_ctx: usize, n: usize, threads: usize) {
        if n <= self.cap {
            return;
        }
        let mut widest = 0;
        for (i, b) in self.bufs.iter_mut().enumerate() {
            let w = Act::ALL[i].width(cfg);
            widest = widest.max(w);
            b.resize(n * w, 0.0);
        }
        self.tmp.resize(n * widest, 0.0);
        let group = cfg.n_head / cfg.n_head_kv.max(1);
        self.scores.resize(attn_parts(threads) * group * n_ctx, 0.0);
        self.acts.resize_with(n, PreparedActs::new);
        self.cap = n;
    }
}

/// A model with its KV cache, running on the CPU.
pub struct CpuModel {
    cfg: ModelConfig,
    graph: Graph,
    w: CpuWeights,
    n_ctx: usize,
    threads: CpuThreads,
    /// Per layer (n_ctx, kv_dim) reserved; filled up to the furthest position written.
    k_cache: Vec<Vec<f32>>,
    v_cache: Vec<Vec<f32>>,
    s: Scratch,
    /// (n_positions, n_vocab) of the last call.
    logits: Vec<f32>,
}

impl CpuModel {
    /// Load any registered family's weights from `src` and allocate a KV cache of `n_ctx`
    /// positions (clamped to `1..=n_ctx_train`). `threads`: worker threads (0 = all cores;
    /// wasm: always 1).
    ///
    /// Errors: those of [`arch::build`]; [`Error::TooLarge`] when the weights, KV cache and
    /// scratch would need more memory than [`memory::allowed_bytes`] (checked before any of
    /// it is allocated).
    pub fn load<S: ByteSource + ?Sized>(
        g: &GgufFile,
        src: &S,
        n_ctx: usize,
        threads: usize,
    ) -> Result<Self> {
        Self::load_dyn(g, &SourceRef(src), n_ctx, threads)
    }

    /// [`CpuModel::load`] over a `dyn` source.
    pub fn load_dyn(
        g: &GgufFile,
        src: &dyn ByteSource,
        n_ctx: usize,
        threads: usize,
    ) -> Result<Self> {
        let cfg0 = arch::config(g)?;
        let n_ctx = n_ctx.clamp(1, cfg0.n_ctx_train.max(1));
        // Everything this model will hold, sized before anything is read: the weights (as in
        // the file), the KV cache and the scratch of a full batch.
        let allowed = memory::allowed_bytes();
        let what = format!("a context of {n_ctx} tokens");
        let kv = memory::checked_bytes(
            &what,
            &[
                2,
                cfg0.n_layer as u64,
                n_ctx as u64,
                cfg0.kv_dim() as u64,
                4,
            ],
            allowed,
        )?;
        let widest = Act::ALL.iter().map(|a| a.width(&cfg0)).max().unwrap_or(0);
        let scratch = memory::checked_bytes(
            &what,
            &[(MAX_BATCH as u64) * 11 + 1, widest.max(n_ctx) as u64, 4],
            allowed,
        )?;
        let weights: u64 = g.tensors.iter().map(|t| t.size).sum();
        memory::checked_bytes(
            &format!("{what} with {} of weights", memory::human_bytes(weights)),
            &[kv.saturating_add(scratch).saturating_add(weights)],
            allowed,
        )?;
        let mut w = CpuWeights::default();
        let (cfg, graph) = arch::build(g, src, n_ctx, &mut w)?;
        // Within the budget checked above (zeroed pages are mapped when first written).
        let kv_len = n_ctx * cfg.kv_dim();
        let cache = || {
            (0..cfg.n_layer)
                .map(|_| memory::try_reserved_f32(&format!("the KV cache of {what}"), kv_len))
                .collect::<Result<Vec<_>>>()
        };
        Ok(Self {
            k_cache: cache()?,
            v_cache: cache()?,
            cfg,
            graph,
            w,
            n_ctx,
            threads: CpuThreads::new(threads),
            s: Scratch::default(),
            logits: Vec::new(),
        })
    }

    /// Worker threads in use.
    pub fn threads(&self) -> usize {
        self.threads.count()
    }

    /// Matrix-product chunks computed by worker threads so far ([`CpuThreads::helped`]).
    pub fn helped(&self) -> usize {
        self.threads.helped()
    }

    /// The weights.
    pub fn weights(&self) -> &CpuWeights {
        &self.w
    }

    /// The forward pass being executed.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// Bytes of the weight matrices: (lent by a file held in memory, copied).
    pub fn weight_bytes(&self) -> (usize, usize) {
        self.w.matrix_bytes()
    }

    /// Bytes of weights one decode step reads ([`Graph::weight_bytes_per_token`]).
    pub fn weight_bytes_per_token(&self) -> u64 {
        self.graph.weight_bytes_per_token(|m| {
            let q = self.w.mat(m);
            (q.data.len() as u64, q.row_bytes as u64)
        })
    }
}

/// Two distinct activation buffers, the first shared, the second mutable.
fn pair(bufs: &mut [Vec<f32>; 9], a: Act, b: Act) -> (&[f32], &mut [f32]) {
    let (ia, ib) = (a as usize, b as usize);
    assert_ne!(ia, ib, "an op reads and writes {a:?}");
    if ia < ib {
        let (lo, hi) = bufs.split_at_mut(ib);
        (&lo[ia], &mut hi[0])
    } else {
        let (lo, hi) = bufs.split_at_mut(ia);
        (&hi[0], &mut lo[ib])
    }
}

/// Everything an op needs besides the scratch.
struct Exec<'a> {
    cfg: &'a ModelConfig,
    w: &'a CpuWeights,
    threads: &'a CpuThreads,
    k_cache: &'a mut [Vec<f32>],
    v_cache: &'a mut [Vec<f32>],
    tokens: &'a [u32],
    pos: usize,
}

impl Exec<'_> {
    /// Run `op` on `rows` rows; reads of [`Act::X`] start at row `x_row` (the head's first
    /// wanted row), everything else at row 0; [`Act::Logits`] is `logits`.
    fn run(
        &mut self,
        op: &Op,
        s: &mut Scratch,
        rows: usize,
        x_row: usize,
        logits: &mut [f32],
    ) -> Result<()> {
        let cfg = self.cfg;
        let eps = cfg.rms_eps;
        let off = |a: Act| if a == Act::X { x_row * cfg.n_embd } else { 0 };
        match *op {
            Op::Embed { table, scale } => {
                let t = self.w.mat(table);
                let x = &mut s.bufs[Act::X as usize];
                let n_embd = cfg.n_embd;
                for (i, &id) in self.tokens.iter().enumerate() {
                    if id as usize >= t.rows {
                        return Err(Error::TokenOutOfRange {
                            id,
                            n_vocab: t.rows,
                        });
                    }
                    let xt = &mut x[i * n_embd..(i + 1) * n_embd];
                    quant::dequantize_row(t.dtype, t.row(id as usize), xt)?;
                    if scale != 1.0 {
                        xt.iter_mut().for_each(|v| *v *= scale);
                    }
                }
            }
            Op::Norm { x, w, out, add } => {
                let wv = self.w.vec(w);
                let width = wv.len();
                let (xs, os) = pair(&mut s.bufs, x, out);
                let xs = &xs[off(x)..off(x) + rows * width];
                let os = &mut os[..rows * width];
                if add {
                    let tmp = &mut s.tmp[..width];
                    for (o, xi) in os.chunks_exact_mut(width).zip(xs.chunks_exact(width)) {
                        ops::rms_norm(tmp, xi, wv, eps);
                        ops::add_inplace(o, tmp);
                    }
                } else {
                    ops::rms_norm_rows(os, xs, wv, rows, eps);
                }
            }
            Op::HeadNorm { x, w } => {
                let wv = self.w.vec(w);
                let xs = &mut s.bufs[x as usize][..rows * x.width(cfg)];
                for head in xs.chunks_exact_mut(wv.len()) {
                    ops::rms_norm_inplace(head, wv, eps);
                }
            }
            Op::Linear {
                w,
                bias,
                x,
                out,
                epi,
            } => {
                let m = self.w.mat(w);
                let xs: &[f32] = &s.bufs[x as usize][off(x)..];
                for (a, xt) in s.acts[..rows].iter_mut().zip(xs.chunks_exact(m.cols)) {
                    a.prepare(m.dtype, xt);
                }
                let direct = !epi.accumulate;
                let dst: &mut [f32] = if !direct {
                    &mut s.tmp[..rows * m.rows]
                } else if out == Act::Logits {
                    &mut logits[..rows * m.rows]
                } else {
                    &mut s.bufs[out as usize][..rows * m.rows]
                };
                matmul(m, &s.acts[..rows], dst, self.threads);
                if let Some(b) = bias {
                    let b = self.w.vec(b);
                    dst.chunks_exact_mut(m.rows)
                        .for_each(|o| ops::add_inplace(o, b));
                }
                apply_epilogue(dst, &epi);
                if !direct {
                    let o = if out == Act::Logits {
                        &mut logits[..rows * m.rows]
                    } else {
                        &mut s.bufs[out as usize][off(out)..off(out) + rows * m.rows]
                    };
                    ops::add_inplace(o, &s.tmp[..rows * m.rows]);
                }
            }
            Op::RopeStore { layer, freqs } => {
                let (q_dim, kv_dim, hd) = (cfg.q_dim(), cfg.kv_dim(), cfg.head_dim);
                let spec = cfg.layers[layer];
                let freqs = freqs.map(|f| self.w.vec(f));
                let (kc, vc) = (&mut self.k_cache[layer], &mut self.v_cache[layer]);
                for t in 0..rows {
                    let p = self.pos + t;
                    if let Some(r) = spec.rope {
                        let rope = |x: &mut [f32], heads: usize| {
                            ops::rope_scaled(
                                x,
                                heads,
                                hd,
                                cfg.n_rot,
                                p,
                                r.base,
                                r.pos_scale,
                                r.mscale,
                                cfg.rope_layout,
                                freqs,
                            )
                        };
                        rope(
                            &mut s.bufs[Act::Q as usize][t * q_dim..(t + 1) * q_dim],
                            cfg.n_head,
                        );
                        rope(
                            &mut s.bufs[Act::K as usize][t * kv_dim..(t + 1) * kv_dim],
                            cfg.n_head_kv,
                        );
                    }
                    let row = p * kv_dim..(p + 1) * kv_dim;
                    kc[row.clone()]
                        .copy_from_slice(&s.bufs[Act::K as usize][t * kv_dim..(t + 1) * kv_dim]);
                    vc[row].copy_from_slice(&s.bufs[Act::V as usize][t * kv_dim..(t + 1) * kv_dim]);
                }
            }
            Op::Attend { layer } => {
                let q_dim = cfg.q_dim();
                let spec = cfg.layers[layer];
                let window = if spec.window > 0 {
                    spec.window
                } else {
                    usize::MAX
                };
                let (q, att) = pair(&mut s.bufs, Act::Q, Act::Att);
                let (kc, vc, pos) = (&self.k_cache[layer][..], &self.v_cache[layer][..], self.pos);
                // Row t (position p = pos + t) sees cache rows max(0, p + 1 - window) ..= p.
                let row = |t: usize, out: &mut [f32], scores: &mut [f32]| {
                    let end = pos + t + 1;
                    ops::attention_range(
                        out,
                        &q[t * q_dim..(t + 1) * q_dim],
                        kc,
                        vc,
                        end.saturating_sub(window)..end,
                        cfg.n_head,
                        cfg.n_head_kv,
                        cfg.head_dim,
                        spec.attn_scale,
                        spec.attn_softcap,
                        scores,
                    );
                };
                let parts = attn_parts(self.threads.count()).min(rows);
                if parts <= 1 {
                    for t in 0..rows {
                        row(t, &mut att[t * q_dim..(t + 1) * q_dim], &mut s.scores);
                    }
                } else {
                    // Prefill: part c takes rows c, c + parts, … (causal rows grow in cost, so
                    // interleaving balances them), each with its own stretch of `scores`.
                    let stride = s.scores.len() / parts;
                    let (ap, sp) = (OutPtr(att.as_mut_ptr()), OutPtr(s.scores.as_mut_ptr()));
                    self.threads.run(parts, &|c| {
                        let (ap, sp) = (ap, sp);
                        // SAFETY: `scores` holds `parts` stretches of `stride`; part c alone
                        // uses stretch c and writes rows t ≡ c (mod parts) of `att`
                        // (rows · q_dim long), so no two parts touch the same element.
                        let scores =
                            unsafe { std::slice::from_raw_parts_mut(sp.0.add(c * stride), stride) };
                        for t in (c..rows).step_by(parts) {
                            let out = unsafe {
                                std::slice::from_raw_parts_mut(ap.0.add(t * q_dim), q_dim)
                            };
                            row(t, out, scores);
                        }
                    });
                }
            }
            Op::Glu(act) => {
                let n = rows * cfg.n_ff;
                let (up, gate) = pair(&mut s.bufs, Act::Up, Act::Gate);
                match act {
                    Glu::Silu => ops::swiglu(&mut gate[..n], &up[..n]),
                    Glu::GeluTanh => ops::geglu(&mut gate[..n], &up[..n]),
                }
            }
        }
        Ok(())
    }
}

/// `v = softcap(scale · v)` in place (the accumulate part is the caller's).
pub fn apply_epilogue(v: &mut [f32], epi: &Epilogue) {
    if epi.scale != 1.0 {
        v.iter_mut().for_each(|x| *x *= epi.scale);
    }
    if epi.softcap > 0.0 {
        let c = epi.softcap;
        v.iter_mut().for_each(|x| *x = c * (*x / c).tanh());
    }
}

impl ForwardPass for CpuModel {
    fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    fn forward(&mut self, tokens: &[u32], pos: usize, which: Logits) -> Result<&[f32]> {
        check_forward(tokens, pos, self.n_ctx, self.cfg.n_vocab)?;
        let n_vocab = self.cfg.n_vocab;
        let n_out = match which {
            Logits::Last => 1,
            Logits::All => tokens.len(),
        };
        if self.logits.len() < n_out * n_vocab {
            let more = n_out * n_vocab - self.logits.len();
            self.logits
                .try_reserve_exact(more)
                .map_err(|_| Error::TooLarge {
                    what: format!("the logits of {n_out} positions"),
                    needed: (n_out * n_vocab * 4) as u64,
                    allowed: memory::allowed_bytes(),
                })?;
            self.logits.resize(n_out * n_vocab, 0.0);
        }
        // The KV cache's filled part grows with the positions written (within the capacity
        // reserved at load: no reallocation), so memory follows the conversation's length.
        let filled = (pos + tokens.len()) * self.cfg.kv_dim();
        for c in self.k_cache.iter_mut().chain(&mut self.v_cache) {
            if c.len() < filled {
                c.resize(filled, 0.0);
            }
        }
        let mut done = 0;
        for batch in tokens.chunks(MAX_BATCH) {
            let n = batch.len();
            self.s
                .ensure(&self.cfg, self.n_ctx, n, self.threads.count());
            let mut ex = Exec {
                cfg: &self.cfg,
                w: &self.w,
                threads: &self.threads,
                k_cache: &mut self.k_cache,
                v_cache: &mut self.v_cache,
                tokens: batch,
                pos: pos + done,
            };
            for op in &self.graph.layers {
                ex.run(op, &mut self.s, n, 0, &mut [])?;
            }
            // Rows of the batch whose logits are wanted.
            let (first, out_row) = match which {
                Logits::All => (0, done),
                Logits::Last if done + n == tokens.len() => (n - 1, 0),
                Logits::Last => (n, 0),
            };
            let m = n - first;
            if m > 0 {
                let out = &mut self.logits[out_row * n_vocab..(out_row + m) * n_vocab];
                for op in &self.graph.head {
                    ex.run(op, &mut self.s, m, first, out)?;
                }
            }
            done += n;
        }
        Ok(&self.logits[..n_out * n_vocab])
    }
}
