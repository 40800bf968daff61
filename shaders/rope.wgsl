// rope.wgsl: rotary position embedding (Su et al. 2021) fused with the KV-cache store, one
// dispatch per layer. For row t (position pos0 + t): the n_head query heads are rotated from
// q_raw into q; the first n_head_kv of those invocations also rotate K from k_raw straight into
// its cache row pos0 + t and copy V from v_raw into its cache row, both as the cache type kv_t
// (kv_f32.wgsl or kv_f16.wgsl). Pair i (< n_rot/2) turns by
// (pos * pos_scale) * base^(-2i/n_rot) / freq_factors[i]; neox = 0: adjacent pairs
// (x[2i], x[2i+1]) (GGML "normal", llama), neox = 1: NeoX pairs (x[i], x[i + n_rot/2]) (qwen2).
// cos and sin are multiplied by mscale (llama.cpp attn_factor); rotate = 0 copies Q and K
// unrotated (a NoPE layer). Dimensions n_rot .. head_dim are copied unchanged. One invocation per
// (token, head, pair).
// q_raw, q: (n_tok, q_stride); k_raw, v_raw: (n_tok, kv_dim); k_cache, v_cache: (n_ctx, kv_dim);
// freq: (n_rot/2) when has_freq. (A layer with per-head Q/K norms turns in matmul_pair.wgsl's
// `qkv_norm` epilogue instead, after the norms.)

const WG: u32 = 64u;

struct Params {
    n_head: u32,
    n_head_kv: u32,
    head_dim: u32,
    n_rot: u32,
    pos0: u32,
    n_tok: u32,
    neox: u32,
    has_freq: u32,
    q_stride: u32,
    kv_dim: u32,
    base: f32,
    pos_scale: f32,
    mscale: f32,
    rotate: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q_raw: array<f32>;
@group(0) @binding(2) var<storage, read_write> q: array<f32>;
@group(0) @binding(3) var<storage, read> k_raw: array<f32>;
@group(0) @binding(4) var<storage, read> v_raw: array<f32>;
@group(0) @binding(5) var<storage, read_write> k_cache: array<kv_t>;
@group(0) @binding(6) var<storage, read_write> v_cache: array<kv_t>;
@group(0) @binding(7) var<storage, read> freq: array<f32>;

// Pair j of a head at token t: the two element indices it turns and cos, sin (1, 0: passes
// through, past n_rot or in a NoPE layer).
struct Turn {
    ia: u32,
    ib: u32,
    c: f32,
    sn: f32,
}

fn turn_of(j: u32, t: u32) -> Turn {
    let half_rot = p.n_rot / 2u;
    var o: Turn;
    o.ia = 2u * j;
    o.ib = 2u * j + 1u;
    o.c = 1.0;
    o.sn = 0.0;
    if (j >= half_rot || p.rotate == 0u) {
        // Past n_rot (or NoPE): adjacent pairs after the rotated span, passed through.
        o.ia = select(p.n_rot + 2u * (j - half_rot), 2u * j, j < half_rot);
        o.ib = o.ia + 1u;
    } else {
        if (p.neox == 1u) {
            o.ia = j;
            o.ib = j + half_rot;
        }
        var theta = f32(p.pos0 + t) * p.pos_scale * pow(p.base, -2.0 * f32(j) / f32(p.n_rot));
        if (p.has_freq != 0u) { theta = theta / freq[j]; }
        o.c = cos(theta) * p.mscale;
        o.sn = sin(theta) * p.mscale;
    }
    return o;
}

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let half_dim = p.head_dim / 2u;
    let gid = linear_wg(wid, nwg) * WG + lid;
    if (gid >= p.n_tok * p.n_head * half_dim) { return; }
    let j = gid % half_dim;
    let h = (gid / half_dim) % p.n_head;
    let t = gid / (half_dim * p.n_head);
    // The pair (ia, ib) this invocation owns and its rotation; pairs past n_rot pass through.
    let o = turn_of(j, t);
    let ia = o.ia;
    let ib = o.ib;
    let c = o.c;
    let sn = o.sn;
    let qb = t * p.q_stride + h * p.head_dim;
    let q0 = q_raw[qb + ia];
    let q1 = q_raw[qb + ib];
    q[qb + ia] = q0 * c - q1 * sn;
    q[qb + ib] = q0 * sn + q1 * c;
    if (h >= p.n_head_kv) { return; }
    let kb = t * p.kv_dim + h * p.head_dim;
    let cb = (p.pos0 + t) * p.kv_dim + h * p.head_dim;
    let k0 = k_raw[kb + ia];
    let k1 = k_raw[kb + ib];
    k_cache[cb + ia] = kv_t(k0 * c - k1 * sn);
    k_cache[cb + ib] = kv_t(k0 * sn + k1 * c);
    v_cache[cb + 2u * j] = kv_t(v_raw[kb + 2u * j]);
    v_cache[cb + 2u * j + 1u] = kv_t(v_raw[kb + 2u * j + 1u]);
}
