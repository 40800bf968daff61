//! One-shot runs of single kernels on host data: the parity tests and the `--backend auto`
//! self-test use them. Each call creates its buffers and bind groups (unlike the model, which
//! builds everything at load), submits once and reads the result back.

use bytemuck::Pod;

use crate::error::{Error, Result};
use crate::model::RopeLayout;
use crate::quant::GgmlDType;

use super::arena::{dispatch, ParamArena};
use super::model::MAX_HEAD_DIM;
use super::params::*;
use super::shaders::{KvType, Op};
use super::weights::{bind_group, GpuWeight};
use super::{Gpu, GpuSampling};

fn shape(op: &'static str, ok: bool, detail: impl FnOnce() -> String) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(Error::Shape {
            op,
            detail: detail(),
        })
    }
}

fn u32_of(op: &'static str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::Shape {
        op,
        detail: format!("{v} does not fit in u32"),
    })
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// One dispatch of a one-shot run: its parameter block, buffers and workgroup count.
struct Job<'a> {
    params: Vec<u8>,
    buffers: Vec<&'a wgpu::Buffer>,
    n_wg: u32,
}

impl Gpu {
    fn storage(&self, label: &str, data: &[u8]) -> Result<wgpu::Buffer> {
        self.ctx.buffer_init(
            label,
            data,
            wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
        )
    }

    fn f32_buf(&self, label: &str, data: &[f32]) -> Result<wgpu::Buffer> {
        self.storage(label, bytemuck::cast_slice(data))
    }

    /// Run `jobs` of one kernel in one pass, then read `out_bytes` bytes of `out`.
    /// `dtypes`: the kernel's weight types (w0, w1, w2; [`PipelineCache::key_pair`]).
    async fn run(
        &mut self,
        op: Op,
        dtypes: [GgmlDType; 3],
        jobs: &[Job<'_>],
        out: &wgpu::Buffer,
        out_bytes: usize,
    ) -> Result<Vec<u8>> {
        let key = self.pipes.key_pair(op, dtypes);
        self.pipes.prepare(&self.ctx, key)?;
        let mut arena = ParamArena::new(&self.ctx, jobs.len())?;
        let mut binds = Vec::with_capacity(jobs.len());
        for (i, j) in jobs.iter().enumerate() {
            let mut block = [0u8; super::shaders::PARAMS_BYTES as usize];
            block[..j.params.len()].copy_from_slice(&j.params);
            arena.set(i, &block);
            let layout = self.pipes.layout(&self.ctx, op);
            binds.push(bind_group(
                &self.ctx,
                layout,
                &arena.buffer,
                arena.offset(i),
                &j.buffers,
            ));
        }
        arena.upload(&self.ctx, jobs.len());
        let mut enc = self
            .ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        {
            let pipeline = self.pipes.get(key)?;
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
            for (j, b) in jobs.iter().zip(&binds) {
                dispatch(&mut pass, pipeline, b, j.n_wg);
            }
        }
        self.ctx.queue.submit(Some(enc.finish()));
        self.read(out, out_bytes as u64).await
    }

    /// y = W x (+ bias) on the GPU. w: (rows, cols); x: (n_tok, cols); bias: (rows);
    /// returns y: (n_tok, rows). One token uses the decode kernel, more the prefill kernel.
    pub async fn matmul(
        &mut self,
        w: &GpuWeight,
        x: &[f32],
        n_tok: usize,
        bias: Option<&[f32]>,
    ) -> Result<Vec<f32>> {
        self.matmul_normed(w, x, n_tok, bias, None).await
    }

    /// [`Self::matmul`] of RMSNorm(x) ⊙ `norm.0` (ε `norm.1`) when `norm` is given: the norm
    /// folded into the product, as the model runs it. norm weight: (cols).
    pub async fn matmul_normed(
        &mut self,
        w: &GpuWeight,
        x: &[f32],
        n_tok: usize,
        bias: Option<&[f32]>,
        norm: Option<(&[f32], f32)>,
    ) -> Result<Vec<f32>> {
        const OP: &str = "gpu matmul";
        shape(OP, norm.is_none_or(|(nw, _)| nw.len() == w.cols), || {
            format!("norm weight must have {} values", w.cols)
        })?;
        shape(OP, x.len() == n_tok * w.cols && n_tok > 0, || {
            format!("x has {} values for {n_tok}x{}", x.len(), w.cols)
        })?;
        shape(OP, bias.is_none_or(|b| b.len() == w.rows), || {
            format!("bias must have {} values", w.rows)
        })?;
        let xb = self.f32_buf("x", x)?;
        let yb = self.f32_buf("y", &vec![0.0; n_tok * w.rows])?;
        let bb = self.f32_buf("bias", bias.unwrap_or(&[0.0]))?;
        let nb = self.f32_buf("norm", norm.map_or(&[0.0][..], |n| n.0))?;
        let (op, tile) = if n_tok == 1 {
            (Op::MatVec, 1)
        } else {
            (Op::MatMul, MATMUL_TILE)
        };
        let mut jobs = Vec::new();
        for c in &w.chunks {
            let tpr = self.ctx.info.matmul_threads_per_row;
            let total = MatParams::workgroups(u32_of(OP, c.rows)?, u32_of(OP, n_tok)?, tile, tpr);
            let p = MatParams {
                rows: u32_of(OP, c.rows)?,
                cols: u32_of(OP, w.cols)?,
                row_bytes: u32_of(OP, w.row_bytes)?,
                n_tok: n_tok as u32,
                x_off: 0,
                x_stride: w.cols as u32,
                out_off: u32_of(OP, c.row_begin)?,
                out_stride: u32_of(OP, w.rows)?,
                bias_off: c.row_begin as u32,
                flags: (if bias.is_some() { MAT_BIAS } else { 0 })
                    | (if norm.is_some() { MAT_NORM } else { 0 }),
                total_wg: total,
                scale: 1.0,
                softcap: 0.0,
                eps: norm.map_or(0.0, |n| n.1),
                _pad: 0,
            };
            jobs.push(Job {
                params: bytemuck::bytes_of(&p).to_vec(),
                buffers: vec![&c.buffer, &xb, &yb, &bb, &nb],
                n_wg: total,
            });
        }
        let out = self
            .run(op, [w.dtype; 3], &jobs, &yb, n_tok * w.rows * 4)
            .await?;
        Ok(f32s(&out))
    }

    /// Embedding lookup: rows `tokens` of `table` (rows, cols), dequantized; returns
    /// (tokens.len(), cols). Errors: [`Error::TokenOutOfRange`].
    pub async fn get_rows(&mut self, table: &GpuWeight, tokens: &[u32]) -> Result<Vec<f32>> {
        const OP: &str = "gpu get_rows";
        if let Some(&t) = tokens.iter().find(|&&t| t as usize >= table.rows) {
            return Err(Error::TokenOutOfRange {
                id: t,
                n_vocab: table.rows,
            });
        }
        let n = tokens.len();
        shape(OP, n > 0, || "no tokens".into())?;
        let tb = self.storage("tokens", bytemuck::cast_slice(tokens))?;
        let ob = self.f32_buf("out", &vec![0.0; n * table.cols])?;
        let pieces = table.cols.div_ceil(16);
        let mut jobs = Vec::new();
        for c in &table.chunks {
            let total = u32_of(OP, n * pieces)?;
            let p = GetRowsParams {
                cols: u32_of(OP, table.cols)?,
                row_bytes: u32_of(OP, table.row_bytes)?,
                n_tok: n as u32,
                row_begin: c.row_begin as u32,
                n_rows: c.rows as u32,
                total,
                scale: 1.0,
                _pad: 0,
            };
            jobs.push(Job {
                params: bytemuck::bytes_of(&p).to_vec(),
                buffers: vec![&c.buffer, &tb, &ob],
                n_wg: total.div_ceil(ELT_WG),
            });
        }
        let out = self
            .run(
                Op::GetRows,
                [table.dtype; 3],
                &jobs,
                &ob,
                n * table.cols * 4,
            )
            .await?;
        Ok(f32s(&out))
    }

    async fn simple<P: Pod>(
        &mut self,
        op: Op,
        p: &P,
        buffers: Vec<&wgpu::Buffer>,
        n_wg: u32,
        out: &wgpu::Buffer,
        out_len: usize,
    ) -> Result<Vec<f32>> {
        self.simple_typed(op, [GgmlDType::F32; 3], p, buffers, n_wg, out, out_len)
            .await
    }

    /// [`Gpu::simple`] with the pipeline of weight type `dtype`.
    #[allow(clippy::too_many_arguments)]
    async fn simple_typed<P: Pod>(
        &mut self,
        op: Op,
        dtypes: [GgmlDType; 3],
        p: &P,
        buffers: Vec<&wgpu::Buffer>,
        n_wg: u32,
        out: &wgpu::Buffer,
        out_len: usize,
    ) -> Result<Vec<f32>> {
        let jobs = [Job {
            params: bytemuck::bytes_of(p).to_vec(),
            buffers,
            n_wg,
        }];
        let out = self.run(op, dtypes, &jobs, out, out_len * 4).await?;
        Ok(f32s(&out))
    }

    /// RMSNorm of each row. x: (n_rows, n); w: (n); returns (n_rows, n).
    pub async fn rms_norm(&mut self, x: &[f32], w: &[f32], eps: f32) -> Result<Vec<f32>> {
        const OP: &str = "gpu rms_norm";
        let n = w.len();
        shape(
            OP,
            n > 0 && x.len().is_multiple_of(n) && !x.is_empty(),
            || format!("x has {} values for rows of {n}", x.len()),
        )?;
        let rows = x.len() / n;
        let (xb, wb) = (self.f32_buf("x", x)?, self.f32_buf("w", w)?);
        let ob = self.f32_buf("out", &vec![0.0; x.len()])?;
        let p = NormParams {
            n: u32_of(OP, n)?,
            row_begin: 0,
            n_rows: u32_of(OP, rows)?,
            eps,
            ..Default::default()
        };
        self.simple(
            Op::RmsNorm,
            &p,
            vec![&xb, &wb, &ob],
            rows as u32,
            &ob,
            x.len(),
        )
        .await
    }

    /// A KV-cache buffer holding `data` in the device's cache type.
    fn kv_buf(&self, label: &str, data: &[f32]) -> Result<wgpu::Buffer> {
        match self.pipes.kv_type() {
            KvType::F32 => self.f32_buf(label, data),
            KvType::F16 => {
                let h: Vec<half::f16> = data.iter().map(|&v| half::f16::from_f32(v)).collect();
                self.storage(label, bytemuck::cast_slice(&h))
            }
        }
    }

    /// Values `first .. first + n` of a KV-cache buffer, as f32.
    async fn read_kv(&self, buf: &wgpu::Buffer, first: usize, n: usize) -> Result<Vec<f32>> {
        let eb = self.pipes.kv_type().bytes();
        let bytes = self.read(buf, ((first + n) * eb) as u64).await?;
        let b = &bytes[first * eb..];
        Ok(match self.pipes.kv_type() {
            KvType::F32 => f32s(b),
            KvType::F16 => b
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
        })
    }

    /// The first `bytes` bytes of `buf`.
    async fn read(&self, buf: &wgpu::Buffer, bytes: u64) -> Result<Vec<u8>> {
        let copy = bytes.next_multiple_of(4).max(4);
        let staging = self.ctx.buffer(
            "staging",
            copy,
            wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        )?;
        let mut enc = self
            .ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        enc.copy_buffer_to_buffer(buf, 0, &staging, 0, copy);
        let mut out = vec![0u8; bytes as usize];
        self.ctx
            .submit_and_read(enc.finish(), &staging, &mut out)
            .await?;
        Ok(out)
    }

    /// The fused RoPE + KV-cache store of one layer for `n_tok` rows at positions `pos0 ..`:
    /// q: (n_tok, n_head * head_dim), k, v: (n_tok, n_head_kv * head_dim); freq: (n_rot / 2).
    /// Returns (rotated q, cache rows `pos0 ..` of K (rotated), of V), the cache rows as the
    /// cache holds them (rounded to f16 on an f16 cache).
    #[allow(clippy::too_many_arguments)]
    pub async fn rope_kv(
        &mut self,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        n_tok: usize,
        n_head: usize,
        n_head_kv: usize,
        head_dim: usize,
        n_rot: usize,
        pos0: usize,
        base: f32,
        pos_scale: f32,
        layout: RopeLayout,
        freq: Option<&[f32]>,
    ) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
        self.rope_kv_ext(
            q, k, v, n_tok, n_head, n_head_kv, head_dim, n_rot, pos0, base, pos_scale, layout,
            freq, 1.0, true,
        )
        .await
    }

    /// [`Self::rope_kv`] with cos/sin scaled by `mscale` and, when `rotate` is false, no
    /// rotation (a NoPE layer: Q copied, K and V only stored).
    #[allow(clippy::too_many_arguments)]
    pub async fn rope_kv_ext(
        &mut self,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        n_tok: usize,
        n_head: usize,
        n_head_kv: usize,
        head_dim: usize,
        n_rot: usize,
        pos0: usize,
        base: f32,
        pos_scale: f32,
        layout: RopeLayout,
        freq: Option<&[f32]>,
        mscale: f32,
        rotate: bool,
    ) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
        const OP: &str = "gpu rope";
        let (qd, kv_dim) = (n_head * head_dim, n_head_kv * head_dim);
        shape(
            OP,
            n_tok > 0
                && n_head_kv > 0
                && n_head_kv <= n_head
                && q.len() == n_tok * qd
                && k.len() == n_tok * kv_dim
                && v.len() == k.len(),
            || {
                format!(
                    "q {} k {} v {} values for {n_tok} rows",
                    q.len(),
                    k.len(),
                    v.len()
                )
            },
        )?;
        shape(
            OP,
            n_rot <= head_dim && n_rot.is_multiple_of(2) && head_dim.is_multiple_of(2),
            || format!("n_rot {n_rot}, head_dim {head_dim}"),
        )?;
        shape(OP, freq.is_none_or(|f| f.len() >= n_rot / 2), || {
            format!("freq factors need {} values", n_rot / 2)
        })?;
        let cache_len = (pos0 + n_tok) * kv_dim;
        let (qr, qo) = (
            self.f32_buf("q_raw", q)?,
            self.f32_buf("q", &vec![0.0; q.len()])?,
        );
        let (kr, vr) = (self.f32_buf("k_raw", k)?, self.f32_buf("v_raw", v)?);
        let kc = self.kv_buf("k_cache", &vec![0.0; cache_len])?;
        let vc = self.kv_buf("v_cache", &vec![0.0; cache_len])?;
        let fb = self.f32_buf("freq", freq.unwrap_or(&[1.0]))?;
        let p = RopeParams {
            n_head: n_head as u32,
            n_head_kv: n_head_kv as u32,
            head_dim: head_dim as u32,
            n_rot: n_rot as u32,
            pos0: u32_of(OP, pos0)?,
            n_tok: u32_of(OP, n_tok)?,
            neox: match layout {
                RopeLayout::Adjacent => 0,
                RopeLayout::Neox => 1,
            },
            has_freq: freq.is_some() as u32,
            q_stride: qd as u32,
            kv_dim: kv_dim as u32,
            base,
            pos_scale,
            mscale,
            rotate: rotate as u32,
            ..Default::default()
        };
        let q_rot = self
            .simple(
                Op::Rope,
                &p,
                vec![&qr, &qo, &kr, &vr, &kc, &vc, &fb],
                p.workgroups(),
                &qo,
                q.len(),
            )
            .await?;
        let first = pos0 * kv_dim;
        let n = n_tok * kv_dim;
        let k_rows = self.read_kv(&kc, first, n).await?;
        let v_rows = self.read_kv(&vc, first, n).await?;
        Ok((q_rot, k_rows, v_rows))
    }

    /// Causal GQA attention of `n_tok` queries at positions `pos0 ..` over cache rows
    /// `0 ..= pos0 + t`, with the kernels the model uses: the prefill kernel for several
    /// tokens, the split decode kernel (and its merge) for one. q: (n_tok, n_head * head_dim);
    /// k_cache, v_cache: (n_ctx, n_head_kv * head_dim) with n_ctx ≥ pos0 + n_tok, stored in the
    /// device's cache type (rounded to f16 on an f16 cache); returns (n_tok, n_head * head_dim).
    #[allow(clippy::too_many_arguments)]
    pub async fn attention(
        &mut self,
        q: &[f32],
        k_cache: &[f32],
        v_cache: &[f32],
        n_tok: usize,
        pos0: usize,
        n_head: usize,
        n_head_kv: usize,
        head_dim: usize,
    ) -> Result<Vec<f32>> {
        self.attention_ext(
            q, k_cache, v_cache, n_tok, pos0, n_head, n_head_kv, head_dim, 0, 0.0,
        )
        .await
    }

    /// [`Self::attention`] within a sliding `window` (0 = none) with scores soft-capped at
    /// `softcap` (0 = none).
    #[allow(clippy::too_many_arguments)]
    pub async fn attention_ext(
        &mut self,
        q: &[f32],
        k_cache: &[f32],
        v_cache: &[f32],
        n_tok: usize,
        pos0: usize,
        n_head: usize,
        n_head_kv: usize,
        head_dim: usize,
        window: usize,
        softcap: f32,
    ) -> Result<Vec<f32>> {
        const OP: &str = "gpu attention";
        let kv_dim = n_head_kv * head_dim;
        let qd = n_head * head_dim;
        shape(
            OP,
            n_tok > 0
                && q.len() == n_tok * qd
                && n_head_kv > 0
                && n_head.is_multiple_of(n_head_kv)
                && head_dim <= 256
                && k_cache.len() == v_cache.len()
                && k_cache.len().is_multiple_of(kv_dim)
                && k_cache.len() / kv_dim >= pos0 + n_tok,
            || format!("q {} values, cache {} values", q.len(), k_cache.len()),
        )?;
        let n_ctx = k_cache.len() / kv_dim;
        let chunk = self.ctx.info.attn_decode_chunk;
        let scratch = AttnParams::scratch_len(n_tok, n_ctx, n_head, head_dim, chunk);
        let qb = self.f32_buf("q", q)?;
        let kb = self.kv_buf("k", k_cache)?;
        let vb = self.kv_buf("v", v_cache)?;
        let sb = self.f32_buf("scores", &vec![0.0; scratch])?;
        let ob = self.f32_buf("out", &vec![0.0; q.len()])?;
        let p = AttnParams {
            n_head: n_head as u32,
            n_head_kv: n_head_kv as u32,
            head_dim: head_dim as u32,
            n_tok: n_tok as u32,
            pos0: u32_of(OP, pos0)?,
            kv_dim: kv_dim as u32,
            q_stride: qd as u32,
            n_ctx: u32_of(OP, n_ctx)?,
            scale: 1.0 / (head_dim as f32).sqrt(),
            softcap,
            window: u32_of(OP, window)?,
            ..Default::default()
        }
        .with_decode_chunk(chunk);
        let bufs = || vec![&qb, &kb, &vb, &sb, &ob];
        if n_tok > 1 {
            let n_wg = u32_of(OP, n_tok * n_head)?;
            return self
                .simple(Op::Attention, &p, bufs(), n_wg, &ob, q.len())
                .await;
        }
        let out = self
            .simple(
                Op::AttnDecode,
                &p,
                bufs(),
                p.n_head * p.n_chunks,
                &ob,
                q.len(),
            )
            .await?;
        if p.n_chunks == 1 {
            return Ok(out);
        }
        self.simple(Op::AttnCombine, &p, bufs(), p.n_head, &ob, q.len())
            .await
    }

    async fn eltwise(&mut self, op: Op, a: &[f32], b: &[f32], act: u32) -> Result<Vec<f32>> {
        shape("gpu eltwise", a.len() == b.len() && !a.is_empty(), || {
            format!("{} vs {} values", a.len(), b.len())
        })?;
        let ab = self.f32_buf("a", a)?;
        let bb = self.f32_buf("b", b)?;
        let p = EltParams {
            n: u32_of("gpu eltwise", a.len())?,
            act,
            _pad: [0; 2],
        };
        self.simple(op, &p, vec![&ab, &bb], p.n.div_ceil(ELT_WG), &ab, a.len())
            .await
    }

    /// SwiGLU: returns silu(gate) * up. gate, up: (n).
    pub async fn swiglu(&mut self, gate: &[f32], up: &[f32]) -> Result<Vec<f32>> {
        self.eltwise(Op::Glu, gate, up, 0).await
    }

    /// GeGLU: returns gelu_tanh(gate) * up. gate, up: (n).
    pub async fn geglu(&mut self, gate: &[f32], up: &[f32]) -> Result<Vec<f32>> {
        self.eltwise(Op::Glu, gate, up, 1).await
    }

    /// Residual add: returns a + b. a, b: (n).
    pub async fn add(&mut self, a: &[f32], b: &[f32]) -> Result<Vec<f32>> {
        self.eltwise(Op::Add, a, b, 0).await
    }

    /// Sample a token id from `logits` (n_vocab) as the decode step does.
    pub async fn sample(&mut self, logits: &[f32], s: &GpuSampling) -> Result<u32> {
        s.validate()?;
        shape("gpu sample", !logits.is_empty(), || "no logits".into())?;
        let lb = self.f32_buf("logits", logits)?;
        let ob = self.storage("token", &[0u8; 8])?;
        let p = s.params(u32_of("gpu sample", logits.len())?, 0);
        if s.parallel() {
            // Gather (read back and dropped: the pass only ends with a read), then pick.
            let cb = self.storage(
                "candidates",
                &vec![0u8; (p.n_groups * SAMPLE_TOPK_MAX * 8) as usize],
            )?;
            let gather = [Job {
                params: bytemuck::bytes_of(&p).to_vec(),
                buffers: vec![&lb, &cb],
                n_wg: p.n_groups,
            }];
            let f32s = [GgmlDType::F32; 3];
            self.run(Op::SampleGather, f32s, &gather, &cb, 8).await?;
            let pick = [Job {
                params: bytemuck::bytes_of(&p).to_vec(),
                buffers: vec![&cb, &ob],
                n_wg: 1,
            }];
            let out = self.run(Op::SamplePick, f32s, &pick, &ob, 4).await?;
            return Ok(u32::from_le_bytes([out[0], out[1], out[2], out[3]]));
        }
        let jobs = [Job {
            params: bytemuck::bytes_of(&p).to_vec(),
            buffers: vec![&lb, &ob],
            n_wg: 1,
        }];
        let out = self
            .run(Op::Sample, [GgmlDType::F32; 3], &jobs, &ob, 4)
            .await?;
        Ok(u32::from_le_bytes([out[0], out[1], out[2], out[3]]))
    }
}

/// The RoPE of a one-shot [`Gpu::qkv_rope_kv`]: heads, rotated dimensions, position of the
/// first row, base, position scale, pair layout, frequency factors ((n_rot / 2)), cos/sin
/// scale, and whether it turns at all (false: a NoPE layer).
#[derive(Clone, Copy, Debug)]
pub struct RopeArgs<'a> {
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub n_rot: usize,
    pub pos0: usize,
    pub base: f32,
    pub pos_scale: f32,
    pub layout: RopeLayout,
    pub freq: Option<&'a [f32]>,
    pub mscale: f32,
    pub rotate: bool,
}

impl RopeArgs<'_> {
    /// rope.wgsl's parameters for `n_tok` rows (Q rows of n_head · head_dim; no per-head
    /// norms). Errors: [`Error::Shape`] for a value past u32 (named `op`).
    fn params(&self, op: &'static str, n_tok: usize) -> Result<RopeParams> {
        let r = self;
        Ok(RopeParams {
            n_head: u32_of(op, r.n_head)?,
            n_head_kv: u32_of(op, r.n_head_kv)?,
            head_dim: u32_of(op, r.head_dim)?,
            n_rot: u32_of(op, r.n_rot)?,
            pos0: u32_of(op, r.pos0)?,
            n_tok: u32_of(op, n_tok)?,
            neox: match r.layout {
                RopeLayout::Adjacent => 0,
                RopeLayout::Neox => 1,
            },
            has_freq: r.freq.is_some() as u32,
            q_stride: u32_of(op, r.n_head * r.head_dim)?,
            kv_dim: u32_of(op, r.n_head_kv * r.head_dim)?,
            base: r.base,
            pos_scale: r.pos_scale,
            mscale: r.mscale,
            rotate: r.rotate as u32,
            ..Default::default()
        })
    }
}

/// Types and row bytes of the three weights of one pair product (`ws[2]` is `ws[1]` for the
/// GLU): each in one buffer, all of one width; each of its own type (a constant of the
/// pipeline). Errors: [`Error::Shape`].
fn pair_weights(op: &'static str, ws: [&GpuWeight; 3]) -> Result<([GgmlDType; 3], [u32; 3])> {
    shape(op, ws.iter().all(|w| w.chunks.len() == 1), || {
        "the pair kernels need each weight in one buffer".into()
    })?;
    shape(op, ws.iter().all(|w| w.cols == ws[0].cols), || {
        "the pair kernels need weights of one width".into()
    })?;
    let rb = |w: &GpuWeight| u32_of(op, w.row_bytes);
    Ok((ws.map(|w| w.dtype), [rb(ws[0])?, rb(ws[1])?, rb(ws[2])?]))
}

impl Gpu {
    /// Gate and up products with the GLU in their epilogue (matmul_pair.wgsl, GLU mode), as
    /// the model runs them: returns act(W_gate x') ⊙ (W_up x'), (n_tok, rows), where x' is x or
    /// RMSNorm(x) ⊙ `norm.0` (ε `norm.1`); act: 0 SiLU, 1 GELU-tanh. gate, up: (rows, cols);
    /// x: (n_tok, cols). Errors: [`Error::Shape`] (also for a weight split across buffers, or
    /// gate and up of different types).
    pub async fn glu_pair(
        &mut self,
        gate: &GpuWeight,
        up: &GpuWeight,
        x: &[f32],
        n_tok: usize,
        norm: Option<(&[f32], f32)>,
        act: u32,
    ) -> Result<Vec<f32>> {
        const OP: &str = "gpu glu pair";
        let (rows, cols) = (gate.rows, gate.cols);
        shape(OP, up.rows == rows && up.cols == cols, || {
            format!("gate {rows}x{cols}, up {}x{}", up.rows, up.cols)
        })?;
        shape(OP, x.len() == n_tok * cols && n_tok > 0, || {
            format!("x has {} values for {n_tok}x{cols}", x.len())
        })?;
        shape(OP, norm.is_none_or(|(nw, _)| nw.len() == cols), || {
            format!("norm weight must have {cols} values")
        })?;
        let (dtypes, row_bytes) = pair_weights(OP, [gate, up, up])?;
        let xb = self.f32_buf("x", x)?;
        let yb = self.f32_buf("y", &vec![0.0; n_tok * rows])?;
        let vb = self.f32_buf("vecs", norm.map_or(&[0.0][..], |n| n.0))?;
        let rk = self.storage("unused k cache", &[0u8; 16])?;
        let rv = self.storage("unused v cache", &[0u8; 16])?;
        let (op, tile) = (Op::PairGlu, if n_tok == 1 { 1 } else { MATMUL_TILE });
        let (rows32, cols32) = (u32_of(OP, rows)?, u32_of(OP, cols)?);
        let p = PairParams::glu(
            rows32,
            cols32,
            u32_of(OP, n_tok)?,
            (0, cols32),
            (0, rows32),
            [row_bytes[0], row_bytes[1]],
            act,
            norm.map(|n| n.1),
            (tile, self.ctx.info.matmul_threads_per_row),
        );
        let bufs = vec![
            &gate.chunks[0].buffer,
            &up.chunks[0].buffer,
            &gate.chunks[0].buffer,
            &xb,
            &vb,
            &yb,
            &rk,
            &rv,
        ];
        self.simple_typed(op, dtypes, &p, bufs, p.total_wg, &yb, n_tok * rows)
            .await
    }

    /// Q, K, V products with RoPE and the KV-cache store in their epilogue (matmul_pair.wgsl,
    /// QKV mode), as the model runs them. wq: (n_head * head_dim, cols), wk, wv:
    /// (n_head_kv * head_dim, cols); x: (n_tok, cols), optionally RMS-normalised first with
    /// `norm`; bias: the concatenated [Q | K | V] biases; `head_norms`: per-head RMSNorms of Q
    /// and K before RoPE (weights (head_dim) each, ε; entry point `qkv_norm`, Qwen3 / Gemma 3,
    /// head_dim ≤ [`MAX_HEAD_DIM`]). Returns (rotated q (n_tok, q_dim), cache rows `pos0 ..` of
    /// K (rotated) and of V, as the cache holds them).
    /// Errors: [`Error::Shape`] (also for weights split across buffers or of different types).
    #[allow(clippy::too_many_arguments)]
    pub async fn qkv_rope_kv(
        &mut self,
        wq: &GpuWeight,
        wk: &GpuWeight,
        wv: &GpuWeight,
        x: &[f32],
        n_tok: usize,
        norm: Option<(&[f32], f32)>,
        bias: Option<&[f32]>,
        head_norms: Option<(&[f32], &[f32], f32)>,
        r: &RopeArgs<'_>,
    ) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
        const OP: &str = "gpu qkv pair";
        let cols = wq.cols;
        let (qd, kv_dim) = (r.n_head * r.head_dim, r.n_head_kv * r.head_dim);
        shape(
            OP,
            wq.rows == qd
                && wk.rows == kv_dim
                && wv.rows == kv_dim
                && wk.cols == cols
                && wv.cols == cols
                && r.n_head_kv > 0
                && r.n_head.is_multiple_of(r.n_head_kv),
            || format!("q {}x{cols}, k {}, v {} rows", wq.rows, wk.rows, wv.rows),
        )?;
        shape(OP, x.len() == n_tok * cols && n_tok > 0, || {
            format!("x has {} values for {n_tok}x{cols}", x.len())
        })?;
        shape(
            OP,
            r.n_rot <= r.head_dim && r.n_rot.is_multiple_of(2) && r.head_dim.is_multiple_of(2),
            || format!("n_rot {}, head_dim {}", r.n_rot, r.head_dim),
        )?;
        shape(OP, norm.is_none_or(|(nw, _)| nw.len() == cols), || {
            format!("norm weight must have {cols} values")
        })?;
        shape(OP, bias.is_none_or(|b| b.len() == qd + 2 * kv_dim), || {
            format!("bias must have {} values", qd + 2 * kv_dim)
        })?;
        shape(OP, r.freq.is_none_or(|f| f.len() >= r.n_rot / 2), || {
            format!("freq factors need {} values", r.n_rot / 2)
        })?;
        shape(
            OP,
            head_norms.is_none_or(|(qn, kn, _)| {
                qn.len() == r.head_dim && kn.len() == r.head_dim && r.head_dim <= MAX_HEAD_DIM
            }),
            || {
                format!(
                    "head norms need {} values (head_dim ≤ {MAX_HEAD_DIM})",
                    r.head_dim
                )
            },
        )?;
        let (dtypes, row_bytes) = pair_weights(OP, [wq, wk, wv])?;
        // vecs: [norm weight (cols) | biases | RoPE factors | Q head norm | K head norm].
        let mut vecs = norm.map_or(vec![0.0; cols], |n| n.0.to_vec());
        vecs.extend_from_slice(bias.unwrap_or(&[]));
        let freq_off = u32_of(OP, vecs.len())?;
        vecs.extend_from_slice(r.freq.unwrap_or(&[]));
        let head_norm_off = u32_of(OP, vecs.len())?;
        if let Some((qn, kn, _)) = head_norms {
            vecs.extend_from_slice(qn);
            vecs.extend_from_slice(kn);
        }
        let xb = self.f32_buf("x", x)?;
        let vb = self.f32_buf("vecs", &vecs)?;
        let qo = self.f32_buf("q", &vec![0.0; n_tok * qd])?;
        let cache_len = (r.pos0 + n_tok) * kv_dim;
        let kc = self.kv_buf("k_cache", &vec![0.0; cache_len])?;
        let vc = self.kv_buf("v_cache", &vec![0.0; cache_len])?;
        let rope = r.params(OP, n_tok)?;
        let op = match head_norms {
            Some(_) => Op::PairQkvNorm,
            None => Op::PairQkv,
        };
        let tile = if n_tok == 1 { 1 } else { MATMUL_TILE };
        let cols32 = u32_of(OP, cols)?;
        let p = PairParams::qkv(
            &rope,
            cols32,
            (0, cols32),
            row_bytes,
            norm.map(|n| n.1),
            bias.is_some(),
            freq_off,
            head_norms.map(|(_, _, eps)| (head_norm_off, eps)),
            (tile, self.ctx.info.matmul_threads_per_row),
        );
        let bufs = vec![
            &wq.chunks[0].buffer,
            &wk.chunks[0].buffer,
            &wv.chunks[0].buffer,
            &xb,
            &vb,
            &qo,
            &kc,
            &vc,
        ];
        let q = self
            .simple_typed(op, dtypes, &p, bufs, p.total_wg, &qo, n_tok * qd)
            .await?;
        let first = r.pos0 * kv_dim;
        let k_rows = self.read_kv(&kc, first, n_tok * kv_dim).await?;
        let v_rows = self.read_kv(&vc, first, n_tok * kv_dim).await?;
        Ok((q, k_rows, v_rows))
    }
}
