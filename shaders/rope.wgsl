// rope.wgsl: rotary position embedding (Su et al. 2021) of n_tok rows at positions pos0 + t,
// reading `src` and writing `dst` (dst row t at dst_off + t * dst_stride: the K projection is
// rotated straight into its KV-cache rows). Pair i (< n_rot/2) turns by
// (pos * pos_scale) * base^(-2i/n_rot) / freq_factors[i]; neox = 0: adjacent pairs
// (x[2i], x[2i+1]) (GGML "normal", llama), neox = 1: NeoX pairs (x[i], x[i + n_rot/2]) (qwen2).
// Dimensions n_rot .. head_dim are copied unchanged. One invocation per (token, head, pair).
// src: (n_tok, src_stride); dst: (.., dst_stride); freq: (n_rot/2) when has_freq.

const WG: u32 = 64u;

struct Params {
    n_heads: u32,
    head_dim: u32,
    n_rot: u32,
    pos0: u32,
    n_tok: u32,
    neox: u32,
    has_freq: u32,
    src_stride: u32,
    dst_off: u32,
    dst_stride: u32,
    base: f32,
    pos_scale: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;
@group(0) @binding(3) var<storage, read> freq: array<f32>;

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let half_dim = p.head_dim / 2u;
    let gid = linear_wg(wid, nwg) * WG + lid;
    if (gid >= p.n_tok * p.n_heads * half_dim) { return; }
    let j = gid % half_dim;
    let h = (gid / half_dim) % p.n_heads;
    let t = gid / (half_dim * p.n_heads);
    let s = t * p.src_stride + h * p.head_dim;
    let d = p.dst_off + t * p.dst_stride + h * p.head_dim;
    let half_rot = p.n_rot / 2u;
    if (j >= half_rot) {
        let a = p.n_rot + 2u * (j - half_rot);
        dst[d + a] = src[s + a];
        dst[d + a + 1u] = src[s + a + 1u];
        return;
    }
    var ia = 2u * j;
    var ib = 2u * j + 1u;
    if (p.neox == 1u) {
        ia = j;
        ib = j + half_rot;
    }
    var theta = f32(p.pos0 + t) * p.pos_scale * pow(p.base, -2.0 * f32(j) / f32(p.n_rot));
    if (p.has_freq != 0u) { theta = theta / freq[j]; }
    let c = cos(theta);
    let sn = sin(theta);
    let x0 = src[s + ia];
    let x1 = src[s + ib];
    dst[d + ia] = x0 * c - x1 * sn;
    dst[d + ib] = x0 * sn + x1 * c;
}
