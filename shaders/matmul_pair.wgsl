// matmul_pair.wgsl: a matrix product where each "unit" computes two weight rows against the same
// x and combines them in a pairwise epilogue, so the element-wise op that followed the products
// needs no dispatch of its own. Two modes (p.mode):
//   0 GLU:  unit u = row u of W_gate (w0) and row u of W_up (w1):
//           y[t, u] = act(gate) * up, act = SiLU (act 0) or GELU-tanh (act 1).
//   1 QKV:  the attention inputs of one layer: units are the rotation pairs of every Q head
//           (w0), then of every K head (w1), then adjacent pairs of every V head (w2). Q pairs are
//           rotated (RoPE, exactly as rope.wgsl) into y (n_tok, n_head * head_dim); K pairs are
//           rotated into k_cache row pos0 + t; V pairs are copied into v_cache row pos0 + t.
// The weights stay in their own GGUF buffers (no concatenated copy), each of its own type:
// DTYPE is a private variable set per row before decoding, and `wword` reads the buffer SEL.
// Like matmul.wgsl: WG invocations, TPR per unit (WG / TPR units per workgroup), a tile of up to
// TILE_N tokens; the optional RMSNorm of x folded in (flag bit 2: normw = vecs[0 .. cols]);
// optional biases (flag bit 0: vecs[bias_off + q_dim-concatenated row], QKV only).
// x: (n_tok, x_stride) from x_off; vecs: [norm weight (cols) | biases (q_dim + 2 kv_dim) | RoPE
// frequency factors (n_rot / 2)], offsets in Params.

const WG: u32 = 64u;
const TILE_MAX: u32 = 8u;
override TILE_N: u32 = 8u;
override TPR: u32 = 16u;

struct Params {
    mode: u32,
    units: u32,
    cols: u32,
    n_tok: u32,
    x_off: u32,
    x_stride: u32,
    total_wg: u32,
    // bit 0: biases; bit 2: RMSNorm x first
    flags: u32,
    eps: f32,
    act: u32,
    out_off: u32,
    out_stride: u32,
    dt0: u32,
    dt1: u32,
    dt2: u32,
    rb0: u32,
    rb1: u32,
    rb2: u32,
    bias_off: u32,
    freq_off: u32,
    n_head: u32,
    n_head_kv: u32,
    head_dim: u32,
    n_rot: u32,
    pos0: u32,
    neox: u32,
    has_freq: u32,
    rotate: u32,
    base: f32,
    pos_scale: f32,
    mscale: f32,
    _pad0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> w0: array<u32>;
@group(0) @binding(2) var<storage, read> w1: array<u32>;
@group(0) @binding(3) var<storage, read> w2: array<u32>;
@group(0) @binding(4) var<storage, read> x: array<f32>;
@group(0) @binding(5) var<storage, read> vecs: array<f32>;
@group(0) @binding(6) var<storage, read_write> y: array<f32>;
@group(0) @binding(7) var<storage, read_write> k_cache: array<kv_t>;
@group(0) @binding(8) var<storage, read_write> v_cache: array<kv_t>;

// The weight buffer (0, 1, 2) and its type, set before each row's piece is decoded.
var<private> SEL: u32;
var<private> DTYPE: u32;

fn wword(i: u32) -> u32 {
    switch SEL {
        case 0u: { return w0[i]; }
        case 1u: { return w1[i]; }
        default: { return w2[i]; }
    }
}

fn select_weight(s: u32) {
    SEL = s;
    switch s {
        case 0u: { DTYPE = p.dt0; }
        case 1u: { DTYPE = p.dt1; }
        default: { DTYPE = p.dt2; }
    }
}

fn row_bytes_of(s: u32) -> u32 {
    switch s {
        case 0u: { return p.rb0; }
        case 1u: { return p.rb1; }
        default: { return p.rb2; }
    }
}

// Partial sums: row a of token t of invocation i at t * WG + i, row b at (TILE_MAX + t) * WG + i.
var<workgroup> part: array<f32, 1024>; // 2 * WG * TILE_MAX
var<workgroup> nscale: array<f32, TILE_MAX>;

// What a unit computes: weight buffer `sel`, rows ra and rb, and for QKV the head, the rotation
// pair index j (for the frequency) and whether the pair turns.
struct Unit {
    sel_a: u32,
    sel_b: u32,
    ra: u32,
    rb: u32,
    seg: u32,
    j: u32,
    turns: bool,
}

fn unit_of(u: u32) -> Unit {
    var o: Unit;
    if (p.mode == 0u) {
        o.sel_a = 0u;
        o.sel_b = 1u;
        o.ra = u;
        o.rb = u;
        return o;
    }
    let half = p.head_dim / 2u;
    let nq = p.n_head * half;
    let nk = p.n_head_kv * half;
    var v = u;
    o.seg = 0u;
    if (u >= nq + nk) {
        o.seg = 2u;
        v = u - nq - nk;
    } else if (u >= nq) {
        o.seg = 1u;
        v = u - nq;
    }
    let h = v / half;
    let j = v % half;
    let half_rot = p.n_rot / 2u;
    var ia = 2u * j;
    var ib = 2u * j + 1u;
    o.turns = false;
    if (o.seg < 2u && j < half_rot && p.rotate != 0u) {
        o.turns = true;
        if (p.neox == 1u) {
            ia = j;
            ib = j + half_rot;
        }
    }
    o.sel_a = o.seg;
    o.sel_b = o.seg;
    o.ra = h * p.head_dim + ia;
    o.rb = h * p.head_dim + ib;
    o.j = j;
    return o;
}

fn glu_act(g: f32) -> f32 {
    if (p.act == 1u) {
        // 0.5 g (1 + tanh(sqrt(2/pi) (g + 0.044715 g^3))) as glu.wgsl.
        let t = clamp(0.7978846 * g * (1.0 + 0.044715 * g * g), -15.0, 15.0);
        return 0.5 * g * (1.0 + tanh(t));
    }
    return g / (1.0 + exp(-g));
}

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let id = linear_wg(wid, nwg);
    if (id >= p.total_wg) { return; }
    let units_per_wg = WG / TPR;
    let n_tiles = (p.n_tok + TILE_N - 1u) / TILE_N;
    let u = (id / n_tiles) * units_per_wg + lid / TPR;
    let lane = lid % TPR;
    let t0 = (id % n_tiles) * TILE_N;
    let nt = min(TILE_N, p.n_tok - t0);
    let valid = u < p.units;
    var n_pieces = (p.cols + 15u) / 16u;
    var un: Unit;
    if (valid) { un = unit_of(u); } else { n_pieces = 0u; }
    let off_a = un.ra * row_bytes_of(un.sel_a);
    let off_b = un.rb * row_bytes_of(un.sel_b);

    let norm = (p.flags & 4u) != 0u;
    if (norm) {
        for (var t = 0u; t < nt; t++) {
            let xb = p.x_off + (t0 + t) * p.x_stride;
            var ss = 0.0;
            for (var i = lid; i < p.cols; i += WG) {
                let xv = x[xb + i];
                ss += xv * xv;
            }
            part[t * WG + lid] = ss;
        }
        for (var s = WG / 2u; s > 0u; s = s >> 1u) {
            workgroupBarrier();
            if (lid < s) {
                for (var t = 0u; t < nt; t++) { part[t * WG + lid] += part[t * WG + lid + s]; }
            }
        }
        workgroupBarrier();
        if (lid < nt) { nscale[lid] = inverseSqrt(part[lid * WG] / f32(p.cols) + p.eps); }
        workgroupBarrier();
    }

    var acc_a: array<f32, TILE_MAX>;
    var acc_b: array<f32, TILE_MAX>;
    for (var pc = lane; pc < n_pieces; pc += TPR) {
        var va: array<f32, 16>;
        var vb: array<f32, 16>;
        select_weight(un.sel_a);
        load_piece(off_a, pc, p.cols, &va);
        select_weight(un.sel_b);
        load_piece(off_b, pc, p.cols, &vb);
        let c0 = pc * 16u;
        let nc = min(16u, p.cols - c0);
        if (norm) {
            for (var i = 0u; i < nc; i++) {
                let g = vecs[c0 + i];
                va[i] *= g;
                vb[i] *= g;
            }
        }
        for (var t = 0u; t < nt; t++) {
            let xb = p.x_off + (t0 + t) * p.x_stride + c0;
            var sa = 0.0;
            var sb = 0.0;
            for (var i = 0u; i < nc; i++) {
                let xv = x[xb + i];
                sa += va[i] * xv;
                sb += vb[i] * xv;
            }
            acc_a[t] += sa;
            acc_b[t] += sb;
        }
    }
    if (TPR > 1u) {
        for (var t = 0u; t < nt; t++) {
            part[t * WG + lid] = acc_a[t];
            part[(TILE_MAX + t) * WG + lid] = acc_b[t];
        }
        for (var s = TPR / 2u; s > 0u; s = s >> 1u) {
            workgroupBarrier();
            if (lane < s) {
                for (var t = 0u; t < nt; t++) {
                    part[t * WG + lid] += part[t * WG + lid + s];
                    part[(TILE_MAX + t) * WG + lid] += part[(TILE_MAX + t) * WG + lid + s];
                }
            }
        }
        workgroupBarrier();
        for (var t = 0u; t < nt; t++) {
            acc_a[t] = part[t * WG + lid];
            acc_b[t] = part[(TILE_MAX + t) * WG + lid];
        }
    }
    if (!valid || lane != 0u) { return; }

    let q_dim = p.n_head * p.head_dim;
    let kv_dim = p.n_head_kv * p.head_dim;
    // Row index in the concatenated bias [Q | K | V].
    var bias_row = p.bias_off;
    if (un.seg == 1u) { bias_row += q_dim; }
    if (un.seg == 2u) { bias_row += q_dim + kv_dim; }
    for (var t = 0u; t < nt; t++) {
        var a = acc_a[t];
        var b = acc_b[t];
        if (norm) {
            a *= nscale[t];
            b *= nscale[t];
        }
        if ((p.flags & 1u) != 0u) {
            a += vecs[bias_row + un.ra];
            b += vecs[bias_row + un.rb];
        }
        let tok = t0 + t;
        if (p.mode == 0u) {
            y[p.out_off + tok * p.out_stride + u] = glu_act(a) * b;
            continue;
        }
        let pos = p.pos0 + tok;
        if (un.turns) {
            var theta = f32(pos) * p.pos_scale * pow(p.base, -2.0 * f32(un.j) / f32(p.n_rot));
            if (p.has_freq != 0u) { theta = theta / vecs[p.freq_off + un.j]; }
            let c = cos(theta) * p.mscale;
            let sn = sin(theta) * p.mscale;
            let a0 = a;
            a = a0 * c - b * sn;
            b = a0 * sn + b * c;
        }
        switch un.seg {
            case 0u: {
                y[tok * q_dim + un.ra] = a;
                y[tok * q_dim + un.rb] = b;
            }
            case 1u: {
                k_cache[pos * kv_dim + un.ra] = kv_t(a);
                k_cache[pos * kv_dim + un.rb] = kv_t(b);
            }
            default: {
                v_cache[pos * kv_dim + un.ra] = kv_t(a);
                v_cache[pos * kv_dim + un.rb] = kv_t(b);
            }
        }
    }
}
