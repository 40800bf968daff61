//! Uniform parameter blocks of the kernels: `#[repr(C)]` mirrors of each WGSL `Params` struct
//! (field for field, all 4-byte scalars) and the workgroup counts of each dispatch.

use bytemuck::{Pod, Zeroable};

use super::shaders::PARAMS_BYTES;

/// matmul.wgsl `Params`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct MatParams {
    pub rows: u32,
    pub cols: u32,
    pub row_bytes: u32,
    pub n_tok: u32,
    pub x_off: u32,
    pub x_stride: u32,
    pub out_off: u32,
    pub out_stride: u32,
    pub bias_off: u32,
    /// [`MAT_BIAS`] | [`MAT_ACCUMULATE`].
    pub flags: u32,
    pub total_wg: u32,
    /// Epilogue: `softcap(scale · (W x + b))`.
    pub scale: f32,
    /// `c · tanh(v / c)` when > 0.
    pub softcap: f32,
    /// RMS ε of the folded norm ([`MAT_NORM`]).
    pub eps: f32,
    pub _pad: u32,
}

/// matmul flag: add `bias[bias_off + r]`.
pub const MAT_BIAS: u32 = 1;
/// matmul flag: `y += W x` instead of `y = W x` (fused residual add).
pub const MAT_ACCUMULATE: u32 = 2;
/// matmul flag: x is RMS-normalised (times the norm weight) first: the norm is folded into the
/// product.
pub const MAT_NORM: u32 = 4;
/// Invocations per workgroup of the matmul kernels (`WG` of matmul.wgsl).
pub const MATMUL_WG: u32 = 64;
/// Tokens per workgroup of the prefill matmul (`TILE_N` of [`super::shaders::Op::MatMul`]).
pub const MATMUL_TILE: u32 = 8;
/// Floats of matmul_pair.wgsl's `head_raw` (entry point `qkv_norm`): a token tile of
/// [`MATMUL_TILE`] heads of up to [`super::model::MAX_HEAD_DIM`].
pub const PAIR_HEAD_RAW: usize = 2048;
const _: () = assert!(MATMUL_TILE as usize * super::model::MAX_HEAD_DIM <= PAIR_HEAD_RAW);

impl MatParams {
    /// Workgroups: one per (block of 64 / tpr rows, token tile), where `tpr` is the number of
    /// invocations per row.
    pub fn workgroups(rows: u32, n_tok: u32, tile: u32, tpr: u32) -> u32 {
        rows.div_ceil(MATMUL_WG / tpr.clamp(1, MATMUL_WG)) * n_tok.div_ceil(tile)
    }
}

/// matmul_pair.wgsl `Params`: two weight rows per unit and a pairwise epilogue (the mode is
/// the entry point: `glu`, `qkv` or `qkv_norm`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct PairParams {
    /// GLU: n_ff; QKV: (n_head + 2 n_head_kv) · head_dim / 2 rotation pairs (with per-head
    /// norms, the Q and K ones are made head by head: see [`PairParams::qkv`]).
    pub units: u32,
    pub cols: u32,
    pub n_tok: u32,
    pub x_off: u32,
    pub x_stride: u32,
    pub total_wg: u32,
    /// [`MAT_BIAS`] | [`MAT_NORM`].
    pub flags: u32,
    pub eps: f32,
    /// GLU: 0 SiLU, 1 GELU-tanh.
    pub act: u32,
    /// GLU: y row offset and stride.
    pub out_off: u32,
    pub out_stride: u32,
    /// Bytes per row of w0 (w1: `row_bytes1`, w2: `row_bytes2`; `cols` columns each).
    pub row_bytes: u32,
    /// Offsets into `vecs` of the [Q | K | V] biases and of the RoPE factors.
    pub bias_off: u32,
    pub freq_off: u32,
    pub n_head: u32,
    pub n_head_kv: u32,
    pub head_dim: u32,
    pub n_rot: u32,
    pub pos0: u32,
    /// 0 adjacent, 1 NeoX.
    pub neox: u32,
    pub has_freq: u32,
    /// 0: a NoPE layer (K and V only stored, Q copied).
    pub rotate: u32,
    pub base: f32,
    pub pos_scale: f32,
    pub mscale: f32,
    /// Tokens per workgroup: 1 (decode) or [`MATMUL_TILE`] (prefill).
    pub tile: u32,
    pub row_bytes1: u32,
    pub row_bytes2: u32,
    /// `qkv_norm`: offset in `vecs` of the Q head-norm weight (head_dim; K's follows) and the
    /// head norms' ε.
    pub hnorm_off: u32,
    pub hnorm_eps: f32,
    pub _pad: [u32; 2],
}

impl PairParams {
    /// Workgroups: one per (block of 64 / tpr units, token tile).
    pub fn workgroups(units: u32, n_tok: u32, tile: u32, tpr: u32) -> u32 {
        MatParams::workgroups(units, n_tok, tile, tpr)
    }

    /// GLU mode: `y[t, r] = act(W_gate x_t)_r · (W_up x_t)_r` for n_ff = `units` rows;
    /// `row_bytes`: of gate and up; `act` 0 SiLU, 1 GELU-tanh; `eps`: the RMSNorm
    /// folded in (its weight at vecs[0 .. cols]).
    #[allow(clippy::too_many_arguments)]
    pub fn glu(
        units: u32,
        cols: u32,
        n_tok: u32,
        (x_off, x_stride): (u32, u32),
        (out_off, out_stride): (u32, u32),
        [row_bytes, row_bytes1]: [u32; 2],
        act: u32,
        eps: Option<f32>,
        (tile, tpr): (u32, u32),
    ) -> Self {
        let total_wg = Self::workgroups(units, n_tok, tile, tpr);
        PairParams {
            units,
            cols,
            n_tok,
            x_off,
            x_stride,
            total_wg,
            flags: if eps.is_some() { MAT_NORM } else { 0 },
            eps: eps.unwrap_or(0.0),
            act,
            out_off,
            out_stride,
            row_bytes,
            row_bytes1,
            tile,
            ..Default::default()
        }
    }

    /// QKV mode for the rows and RoPE of `r` (its n_tok, heads, pos0, rotation): `row_bytes`:
    /// of Wq, Wk, Wv (each of its own type, all `cols` wide); `eps`: the folded RMSNorm (weight at
    /// vecs[0 .. cols]); `bias`: the [Q | K | V] biases at vecs[cols ..]; the RoPE factors at
    /// vecs[freq_off ..] when `r.has_freq`; `head_norms`: (offset, ε) of per-head Q and K
    /// RMSNorms before RoPE (entry point `qkv_norm`: the Q weight at vecs[offset ..], K's
    /// head_dim after), which take one workgroup per (token tile, Q or K head), then
    /// workgroups of WG / tpr V pairs.
    #[allow(clippy::too_many_arguments)]
    pub fn qkv(
        r: &RopeParams,
        cols: u32,
        (x_off, x_stride): (u32, u32),
        [row_bytes, row_bytes1, row_bytes2]: [u32; 3],
        eps: Option<f32>,
        bias: bool,
        freq_off: u32,
        head_norms: Option<(u32, f32)>,
        (tile, tpr): (u32, u32),
    ) -> Self {
        let units = (r.n_head + 2 * r.n_head_kv) * r.head_dim / 2;
        let total_wg = match head_norms {
            None => Self::workgroups(units, r.n_tok, tile, tpr),
            Some(_) => {
                let v_units = r.n_head_kv * r.head_dim / 2;
                (r.n_head + r.n_head_kv) * r.n_tok.div_ceil(tile)
                    + Self::workgroups(v_units, r.n_tok, tile, tpr)
            }
        };
        let (hnorm_off, hnorm_eps) = head_norms.unwrap_or((0, 0.0));
        PairParams {
            units,
            cols,
            n_tok: r.n_tok,
            x_off,
            x_stride,
            total_wg,
            flags: (if eps.is_some() { MAT_NORM } else { 0 }) | (if bias { MAT_BIAS } else { 0 }),
            eps: eps.unwrap_or(0.0),
            row_bytes,
            bias_off: cols,
            freq_off,
            n_head: r.n_head,
            n_head_kv: r.n_head_kv,
            head_dim: r.head_dim,
            n_rot: r.n_rot,
            pos0: r.pos0,
            neox: r.neox,
            has_freq: r.has_freq,
            rotate: r.rotate,
            base: r.base,
            pos_scale: r.pos_scale,
            mscale: r.mscale,
            tile,
            row_bytes1,
            row_bytes2,
            hnorm_off,
            hnorm_eps,
            ..Default::default()
        }
    }
}

/// get_rows.wgsl `Params`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct GetRowsParams {
    pub cols: u32,
    pub row_bytes: u32,
    pub n_tok: u32,
    pub row_begin: u32,
    pub n_rows: u32,
    /// n_tok * ceil(cols / 16) invocations.
    pub total: u32,
    /// Rows are multiplied by this (Gemma's √n_embd, Granite's embedding scale).
    pub scale: f32,
    pub _pad: u32,
}

/// rms_norm.wgsl `Params`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct NormParams {
    pub n: u32,
    pub row_begin: u32,
    pub n_rows: u32,
    pub eps: f32,
    /// 1: `out += norm` (post-norm before a residual add).
    pub add: u32,
    pub _pad: [u32; 3],
}

/// rope.wgsl `Params` (RoPE of Q and K fused with the KV-cache store).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct RopeParams {
    pub n_head: u32,
    pub n_head_kv: u32,
    pub head_dim: u32,
    pub n_rot: u32,
    /// Position of the first row; its K and V go to cache row `pos0`.
    pub pos0: u32,
    pub n_tok: u32,
    /// 0 adjacent, 1 NeoX.
    pub neox: u32,
    pub has_freq: u32,
    pub q_stride: u32,
    pub kv_dim: u32,
    pub base: f32,
    pub pos_scale: f32,
    /// cos and sin are multiplied by this (llama.cpp `attn_factor`).
    pub mscale: f32,
    /// 0: no rotation (a NoPE layer), K and V are only stored.
    pub rotate: u32,
    pub _pad: [u32; 2],
}

impl RopeParams {
    /// Workgroups of [`ELT_WG`]: one invocation per (token, query head, pair).
    pub fn workgroups(&self) -> u32 {
        (self.n_tok * self.n_head * self.head_dim / 2).div_ceil(ELT_WG)
    }
}

/// attention.wgsl / attention_decode.wgsl `Params`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct AttnParams {
    pub n_head: u32,
    pub n_head_kv: u32,
    pub head_dim: u32,
    pub n_tok: u32,
    pub pos0: u32,
    pub kv_dim: u32,
    pub q_stride: u32,
    pub n_ctx: u32,
    pub scale: f32,
    /// Decode: cache positions per workgroup (≤ [`ATTN_MAX_CHUNK`]).
    pub chunk: u32,
    /// Decode: ceil(visible positions / chunk).
    pub n_chunks: u32,
    /// Score soft cap (0 = none).
    pub softcap: f32,
    /// Sliding window in positions (0 = none).
    pub window: u32,
    pub _pad: [u32; 3],
}

/// Largest decode chunk (`MAX_CHUNK` of attention_decode.wgsl).
pub const ATTN_MAX_CHUNK: u32 = 256;

impl AttnParams {
    /// Set the decode split for a query at `pos0` with chunks of `chunk` positions (call after
    /// setting `window`).
    pub fn with_decode_chunk(mut self, chunk: u32) -> Self {
        self.chunk = chunk.clamp(1, ATTN_MAX_CHUNK);
        self.n_chunks = self.visible(self.pos0).div_ceil(self.chunk);
        self
    }

    /// Cache positions a query at `pos` sees: `pos + 1`, or `window` once past it
    /// (attn_io.wgsl `first_visible`).
    pub fn visible(&self, pos: u32) -> u32 {
        if self.window > 0 {
            (pos + 1).min(self.window)
        } else {
            pos + 1
        }
    }

    /// Floats of the attention scratch for `n_tok` tokens and `n_ctx` positions: the larger of
    /// the prefill scores (n_tok * n_head, n_ctx) and the decode partials
    /// (n_chunks * n_head, head_dim + 2).
    pub fn scratch_len(
        n_tok: usize,
        n_ctx: usize,
        n_head: usize,
        head_dim: usize,
        chunk: u32,
    ) -> usize {
        let decode =
            n_ctx.div_ceil(chunk.clamp(1, ATTN_MAX_CHUNK) as usize) * n_head * (head_dim + 2);
        (n_tok * n_head * n_ctx).max(decode)
    }
}

/// glu.wgsl / add.wgsl `Params`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct EltParams {
    pub n: u32,
    /// glu.wgsl: 0 SiLU (SwiGLU), 1 GELU-tanh (GeGLU).
    pub act: u32,
    pub _pad: [u32; 2],
}

/// sample.wgsl and sample_topk.wgsl `Params`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct SampleParams {
    pub n_vocab: u32,
    pub logits_off: u32,
    pub top_k: u32,
    /// sample_topk.wgsl: gather workgroups ([`sample_groups`]).
    pub n_groups: u32,
    pub temperature: f32,
    pub top_p: f32,
    pub random: f32,
    /// sample_topk.wgsl only (sample.wgsl has no min-p).
    pub min_p: f32,
}

/// Candidates sample_topk.wgsl keeps per gather workgroup: its top-k limit (`KMAX`).
pub const SAMPLE_TOPK_MAX: u32 = crate::sampler::DEVICE_MIN_P_TOP_K as u32;
/// Logits per sample_topk.wgsl gather workgroup (at most: 8 per invocation).
pub const SAMPLE_SLICE: u32 = 2048;

/// Gather workgroups of sample_topk.wgsl for `n_vocab` logits.
pub fn sample_groups(n_vocab: u32) -> u32 {
    n_vocab.div_ceil(SAMPLE_SLICE).max(1)
}

/// Invocations per workgroup of the element-wise kernels (get_rows, rope, swiglu, add).
pub const ELT_WG: u32 = 64;

const _: () = {
    assert!(std::mem::size_of::<MatParams>() as u64 <= PARAMS_BYTES);
    assert!(std::mem::size_of::<PairParams>() as u64 <= PARAMS_BYTES);
    assert!(std::mem::size_of::<GetRowsParams>() as u64 <= PARAMS_BYTES);
    assert!(std::mem::size_of::<RopeParams>() as u64 <= PARAMS_BYTES);
    assert!(std::mem::size_of::<AttnParams>() as u64 <= PARAMS_BYTES);
    assert!(std::mem::size_of::<SampleParams>() as u64 <= PARAMS_BYTES);
    assert!(std::mem::size_of::<NormParams>() as u64 <= PARAMS_BYTES);
    assert!(std::mem::size_of::<EltParams>() as u64 <= PARAMS_BYTES);
};
