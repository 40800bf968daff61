// matmul_pair.wgsl: a matrix product where each "unit" computes two weight rows against the same
// x and combines them in a pairwise epilogue, so the element-wise op that followed the products
// needs no dispatch of its own. Three entry points, one per mode (a constant inside each, so the
// other modes' code is compiled out):
//   glu: unit u = row u of W_gate (w0) and row u of W_up (w1):
//        y[t, u] = act(gate) * up, act = SiLU (act 0) or GELU-tanh (act 1).
//   qkv: the attention inputs of one layer: units are the rotation pairs of every Q head
//        (w0), then of every K head (w1), then adjacent pairs of every V head (w2). Q pairs are
//        rotated (RoPE, exactly as rope.wgsl) into y (n_tok, n_head * head_dim); K pairs are
//        rotated into k_cache row pos0 + t; V pairs are copied into v_cache row pos0 + t.
//   qkv_norm: qkv with per-head Q/K RMSNorms before RoPE (Qwen3, Gemma 3; the norm needs the
//        whole head): workgroup g < n_head + n_head_kv of each token tile makes Q head g or K
//        head g - n_head: it loops over the head's adjacent row pairs (WG / TPR per pass),
//        keeping the raw head in workgroup memory (head_raw, only this entry point's: the
//        others keep their 4 KiB), reduces its Σx² per token, scales by 1 / rms and the norm
//        weight (vecs[hnorm_off ..] for Q, vecs[hnorm_off + head_dim ..] for K, ε hnorm_eps),
//        then turns (as rope.wgsl) and stores Q into y, K into its cache row. The V units
//        follow in the next workgroups, as in qkv.
// The weights stay in their own GGUF buffers (no concatenated copy), each of a type fixed per
// pipeline by an overridable constant, as in matmul.wgsl: w0 DTYPE, w1 DTYPE1, w2 DTYPE2 (a
// Q4_K_M layer's Q6_K attn_v gets its own; glu uses DTYPE and DTYPE1). All weights have `cols`
// columns; each buffer has its own row_bytes. quant.wgsl's buffer argument is a constant at each
// `dot2` call, so each call decodes one fixed type.
// Like matmul.wgsl: WG invocations, TPR per unit (WG / TPR units per workgroup), a tile of up to
// p.tile tokens (a parameter, not an override as in matmul.wgsl: one pipeline per mode and type
// serves decode and prefill, as each costs ~0.3 s (glu) / ~0.6 s (qkv) of CPU time to create on
// lavapipe); the optional RMSNorm of x folded in (flag bit 2: normw = vecs[0 .. cols]);
// optional biases (flag bit 0: vecs[bias_off + q_dim-concatenated row], qkv only).
// x: (n_tok, x_stride) from x_off; vecs: [norm weight (cols) | biases (q_dim + 2 kv_dim) | RoPE
// frequency factors (n_rot / 2) | Q norm weight (head_dim) | K norm weight (head_dim)],
// offsets in Params.

const WG: u32 = 64u;
const TILE_MAX: u32 = 8u;
override TPR: u32 = 16u;

struct Params {
    units: u32,
    cols: u32,
    n_tok: u32,
    x_off: u32,
    x_stride: u32,
    total_wg: u32,
    // bit 0: biases; bit 2: RMSNorm x first
    flags: u32,
    eps: f32,
    // glu: 0 SiLU, 1 GELU-tanh
    act: u32,
    out_off: u32,
    out_stride: u32,
    // row bytes of w0 (w1, w2: row_bytes1, row_bytes2 below)
    row_bytes: u32,
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
    // tokens per workgroup: 1 (decode) ..= TILE_MAX (prefill)
    tile: u32,
    row_bytes1: u32,
    row_bytes2: u32,
    // qkv_norm: offset of the Q norm weight in vecs (K's follows) and the head norms' ε
    hnorm_off: u32,
    hnorm_eps: f32,
    _pad0: u32,
    _pad1: u32,
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

override DTYPE: u32 = T_Q4_0;
override DTYPE1: u32 = T_Q4_0;
override DTYPE2: u32 = T_Q4_0;

// Word i of weight buffer b (0, 1, 2); b is a constant at every call once `dot2` is inlined, so
// the selects fold to one load and the other two are dead (a `switch` here doubled the
// pipeline's creation time on lavapipe; an unselected read past a shorter buffer's end would in
// any case be clamped by WebGPU's robust buffer access).
fn wword(b: u32, i: u32) -> u32 {
    return select(select(w2[i], w1[i], b == 1u), w0[i], b == 0u);
}
// Type of weight buffer b, folded the same way.
fn wtype(b: u32) -> u32 {
    return select(select(DTYPE2, DTYPE1, b == 1u), DTYPE, b == 0u);
}

const MODE_GLU: u32 = 0u;
const MODE_QKV: u32 = 1u;

// Partial sums: row a of token t of invocation i at t * WG + i, row b at (TILE_MAX + t) * WG + i.
var<workgroup> part: array<f32, 1024>; // 2 * WG * TILE_MAX
var<workgroup> nscale: array<f32, TILE_MAX>;
// qkv_norm: the raw head of token t at t * head_dim (head_dim ≤ 256, the model's
// MAX_HEAD_DIM), and its 1 / rms per token.
var<workgroup> head_raw: array<f32, 2048>; // TILE_MAX * 256
var<workgroup> hscale: array<f32, TILE_MAX>;

// What a unit computes: rows ra and rb (of w0 and w1 for glu; of w[seg] for qkv), and for qkv
// the rotation pair index j (for the frequency) and whether the pair turns.
struct Unit {
    ra: u32,
    rb: u32,
    seg: u32,
    j: u32,
    turns: bool,
}

fn unit_of(mode: u32, u: u32) -> Unit {
    var o: Unit;
    if (mode == MODE_GLU) {
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
    o.ra = h * p.head_dim + ia;
    o.rb = h * p.head_dim + ib;
    o.j = j;
    return o;
}

// cos and sin (times mscale) of rotation pair j (< n_rot / 2) at position pos, as rope.wgsl.
fn cos_sin(j: u32, pos: u32) -> vec2<f32> {
    var theta = f32(pos) * p.pos_scale * pow(p.base, -2.0 * f32(j) / f32(p.n_rot));
    if (p.has_freq != 0u) { theta = theta / vecs[p.freq_off + j]; }
    return vec2<f32>(cos(theta), sin(theta)) * p.mscale;
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
fn glu(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    pair(MODE_GLU, linear_wg(wid, nwg), lid);
}

@compute @workgroup_size(WG)
fn qkv(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    pair(MODE_QKV, linear_wg(wid, nwg), lid);
}

// qkv_norm: workgroup g < n_head + n_head_kv of a token tile makes Q head g or K head
// g - n_head in passes of WG / TPR adjacent row pairs into head_raw, then normalises, turns and
// stores it (`head_out`); the others make WG / TPR V pairs each, in one pass, as `qkv`. One
// `unit_sums` call site, so the pipeline holds one copy of the dot loop per weight buffer, as
// `qkv` (its creation time on lavapipe is mostly those copies).
@compute @workgroup_size(WG)
fn qkv_norm(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let id = linear_wg(wid, nwg);
    if (id >= p.total_wg) { return; }
    let n_tiles = (p.n_tok + p.tile - 1u) / p.tile;
    let g = id / n_tiles;
    let t0 = (id % n_tiles) * p.tile;
    let nt = min(p.tile, p.n_tok - t0);
    let norm = x_norm(t0, nt, lid);
    let hd = p.head_dim;
    let half = hd / 2u;
    let n_qk = p.n_head + p.n_head_kv;
    let is_head = g < n_qk;
    let is_k = g >= p.n_head;
    // The head within its segment (Q: g, K: g - n_head).
    let h = select(g, g - p.n_head, is_k);
    let upw = WG / TPR;
    var passes = 1u;
    if (is_head) { passes = (half + upw - 1u) / upw; }
    for (var k = 0u; k < passes; k++) {
        var un: Unit;
        var valid: bool;
        // Head: pair j of the head; V: unit u after every Q and K pair.
        let j = k * upw + lid / TPR;
        var u = 0u;
        if (is_head) {
            valid = j < half;
            un.seg = select(0u, 1u, is_k);
            un.ra = h * hd + 2u * j;
            un.rb = un.ra + 1u;
        } else {
            u = n_qk * half + (g - n_qk) * upw + lid / TPR;
            valid = u < p.units;
            if (valid) { un = unit_of(MODE_QKV, u); }
        }
        // Zeroed by hand each pass: WGSL zero-initialises a `var` declared in a loop body at
        // every iteration, but Chromium's WebGPU on SwiftShader kept the previous pass's sums
        // (the gemma3 browser flow on WebGPU; native Vulkan re-zeroes).
        var acc_a: array<f32, TILE_MAX>;
        var acc_b: array<f32, TILE_MAX>;
        for (var t = 0u; t < TILE_MAX; t++) {
            acc_a[t] = 0.0;
            acc_b[t] = 0.0;
        }
        unit_sums(MODE_QKV, un, valid, t0, nt, lid, norm, &acc_a, &acc_b);
        if (valid && lid % TPR == 0u) {
            if (is_head) {
                for (var t = 0u; t < nt; t++) {
                    head_raw[t * hd + 2u * j] = value(acc_a[t], t, un.seg, un.ra, norm);
                    head_raw[t * hd + 2u * j + 1u] = value(acc_b[t], t, un.seg, un.rb, norm);
                }
            } else {
                store(MODE_QKV, un, u, t0, nt, acc_a, acc_b, norm);
            }
        }
    }
    if (!is_head) { return; }
    head_out(h, is_k, t0, nt, lid);
}

// The rows and token tile one invocation multiplies.
struct Dot {
    off_a: u32,
    off_b: u32,
    lane: u32,
    n_pieces: u32,
    t0: u32,
    nt: u32,
    norm: bool,
}

// acc_a[t] += row a (buffer sa) · x[t'], acc_b[t] += row b (buffer sb) · x[t'] over this lane's
// pieces, x' normalised by the folded norm weight when d.norm (the 1 / rms factor comes later).
fn dot2(
    sa: u32,
    sb: u32,
    d: Dot,
    acc_a: ptr<function, array<f32, TILE_MAX>>,
    acc_b: ptr<function, array<f32, TILE_MAX>>,
) {
    for (var pc = d.lane; pc < d.n_pieces; pc += TPR) {
        var va: array<f32, 16>;
        var vb: array<f32, 16>;
        load_piece(sa, d.off_a, pc, p.cols, &va);
        load_piece(sb, d.off_b, pc, p.cols, &vb);
        // Only constant indices into va, vb (loops of 16, unrolled), so they stay in registers;
        // elements past `cols` (float types only) are 0 in va, vb and read as 0 from x.
        let c0 = pc * 16u;
        let nc = min(16u, p.cols - c0);
        if (d.norm) {
            for (var i = 0u; i < 16u; i++) {
                if (i < nc) {
                    let g = vecs[c0 + i];
                    va[i] *= g;
                    vb[i] *= g;
                }
            }
        }
        for (var t = 0u; t < d.nt; t++) {
            let xb = p.x_off + (d.t0 + t) * p.x_stride + c0;
            var s_a = 0.0;
            var s_b = 0.0;
            for (var i = 0u; i < 16u; i++) {
                var xv = 0.0;
                if (i < nc) { xv = x[xb + i]; }
                s_a += va[i] * xv;
                s_b += vb[i] * xv;
            }
            (*acc_a)[t] += s_a;
            (*acc_b)[t] += s_b;
        }
    }
}

// Σ over the WG invocations of part[t * WG + i] for t < nt, left in part[t * WG]. Call from
// uniform control flow.
fn sum_tokens(nt: u32, lid: u32) {
    for (var s = WG / 2u; s > 0u; s = s >> 1u) {
        workgroupBarrier();
        if (lid < s) {
            for (var t = 0u; t < nt; t++) { part[t * WG + lid] += part[t * WG + lid + s]; }
        }
    }
    workgroupBarrier();
}

// The two sums of unit `un` (when `valid`) for tokens t0 .. t0 + nt added into acc_a, acc_b
// (zero: each caller's fresh `var`), reduced over the unit's TPR lanes (every lane gets the
// totals). Call from uniform control flow.
fn unit_sums(
    mode: u32,
    un: Unit,
    valid: bool,
    t0: u32,
    nt: u32,
    lid: u32,
    norm: bool,
    acc_a: ptr<function, array<f32, TILE_MAX>>,
    acc_b: ptr<function, array<f32, TILE_MAX>>,
) {
    let lane = lid % TPR;
    let n_pieces = select(0u, (p.cols + 15u) / 16u, valid);
    // glu: row a of w0, row b of w1; qkv: both rows of w[seg].
    var rb_a = p.row_bytes;
    var rb_b = p.row_bytes1;
    if (mode == MODE_QKV) {
        rb_a = select(select(p.row_bytes2, p.row_bytes1, un.seg == 1u), p.row_bytes, un.seg == 0u);
        rb_b = rb_a;
    }
    // Each call's buffers are constants (once inlined), so `wword` reads one buffer and every
    // invocation of a qkv workgroup loops in the copy of its own segment.
    let d = Dot(un.ra * rb_a, un.rb * rb_b, lane, n_pieces, t0, nt, norm);
    if (mode == MODE_GLU) {
        dot2(0u, 1u, d, acc_a, acc_b);
    } else {
        switch un.seg {
            case 0u: { dot2(0u, 0u, d, acc_a, acc_b); }
            case 1u: { dot2(1u, 1u, d, acc_a, acc_b); }
            default: { dot2(2u, 2u, d, acc_a, acc_b); }
        }
    }
    if (TPR > 1u) {
        for (var t = 0u; t < nt; t++) {
            part[t * WG + lid] = (*acc_a)[t];
            part[(TILE_MAX + t) * WG + lid] = (*acc_b)[t];
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
            (*acc_a)[t] = part[t * WG + lid];
            (*acc_b)[t] = part[(TILE_MAX + t) * WG + lid];
        }
        // (Each lane reads back only its own slots: a next call may write them at once.)
    }
}

// Product value of row `row` (of the unit's segment) for tile token t: the folded norm's
// 1 / rms and the bias applied (qkv biases: vecs[bias_off + concatenated row]).
fn value(acc: f32, t: u32, seg: u32, row: u32, norm: bool) -> f32 {
    var a = acc;
    if (norm) { a *= nscale[t]; }
    if ((p.flags & 1u) != 0u) {
        let q_dim = p.n_head * p.head_dim;
        let kv_dim = p.n_head_kv * p.head_dim;
        var bias_row = p.bias_off + row;
        if (seg == 1u) { bias_row += q_dim; }
        if (seg == 2u) { bias_row += q_dim + kv_dim; }
        a += vecs[bias_row];
    }
    return a;
}

// qkv_norm, once head_raw holds the raw head (Q head h if !is_k, else K head h) of tokens
// t0 .. t0 + nt: its Σx² per token, x / rms ⊙ norm weight, RoPE, store. Call from uniform
// control flow.
fn head_out(h: u32, is_k: bool, t0: u32, nt: u32, lid: u32) {
    let hd = p.head_dim;
    let half = hd / 2u;
    workgroupBarrier();
    for (var t = 0u; t < nt; t++) {
        var ss = 0.0;
        for (var i = lid; i < hd; i += WG) {
            let v = head_raw[t * hd + i];
            ss += v * v;
        }
        part[t * WG + lid] = ss;
    }
    sum_tokens(nt, lid);
    if (lid < nt) { hscale[lid] = inverseSqrt(part[lid * WG] / f32(hd) + p.hnorm_eps); }
    workgroupBarrier();
    let wo = select(p.hnorm_off, p.hnorm_off + hd, is_k);
    let q_dim = p.n_head * hd;
    let kv_dim = p.n_head_kv * hd;
    let half_rot = p.n_rot / 2u;
    for (var t = 0u; t < nt; t++) {
        let tok = t0 + t;
        let pos = p.pos0 + tok;
        for (var j = lid; j < half; j += WG) {
            // Pair j as rope.wgsl: NeoX (j, j + n_rot / 2) or adjacent (2j, 2j + 1) pairs turn
            // below n_rot; adjacent pairs past n_rot (or in a NoPE layer) pass through.
            var ia = 2u * j;
            var ib = 2u * j + 1u;
            var cs = vec2<f32>(1.0, 0.0);
            if (j < half_rot && p.rotate != 0u) {
                if (p.neox == 1u) {
                    ia = j;
                    ib = j + half_rot;
                }
                cs = cos_sin(j, pos);
            }
            let x0 = head_raw[t * hd + ia] * hscale[t] * vecs[wo + ia];
            let x1 = head_raw[t * hd + ib] * hscale[t] * vecs[wo + ib];
            let y0 = x0 * cs.x - x1 * cs.y;
            let y1 = x0 * cs.y + x1 * cs.x;
            if (is_k) {
                let cb = pos * kv_dim + h * hd;
                k_cache[cb + ia] = kv_t(y0);
                k_cache[cb + ib] = kv_t(y1);
            } else {
                let qb = tok * q_dim + h * hd;
                y[qb + ia] = y0;
                y[qb + ib] = y1;
            }
        }
    }
}

// With the folded RMSNorm of x (flag bit 2): its 1 / rms per tile token into nscale. Returns
// whether the norm is folded. Call from uniform control flow.
fn x_norm(t0: u32, nt: u32, lid: u32) -> bool {
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
        sum_tokens(nt, lid);
        if (lid < nt) { nscale[lid] = inverseSqrt(part[lid * WG] / f32(p.cols) + p.eps); }
        workgroupBarrier();
    }
    return norm;
}

// The glu and qkv kernel; `mode` is a constant at both call sites. Workgroup `id` makes units
// (id / n_tiles) * (WG / TPR) .. for its token tile.
fn pair(mode: u32, id: u32, lid: u32) {
    if (id >= p.total_wg) { return; }
    let n_tiles = (p.n_tok + p.tile - 1u) / p.tile;
    let t0 = (id % n_tiles) * p.tile;
    let nt = min(p.tile, p.n_tok - t0);
    let norm = x_norm(t0, nt, lid);
    let u = (id / n_tiles) * (WG / TPR) + lid / TPR;
    let valid = u < p.units;
    var un: Unit;
    if (valid) { un = unit_of(mode, u); }
    var acc_a: array<f32, TILE_MAX>;
    var acc_b: array<f32, TILE_MAX>;
    unit_sums(mode, un, valid, t0, nt, lid, norm, &acc_a, &acc_b);
    if (!valid || lid % TPR != 0u) { return; }
    store(mode, un, u, t0, nt, acc_a, acc_b, norm);
}

// The epilogue of unit u (`un`) for tokens t0 .. t0 + nt from its two sums: glu: the gated
// value into y; qkv: the pair turned (Q, K) and stored into y, k_cache or v_cache.
fn store(
    mode: u32,
    un: Unit,
    u: u32,
    t0: u32,
    nt: u32,
    acc_a: array<f32, TILE_MAX>,
    acc_b: array<f32, TILE_MAX>,
    norm: bool,
) {
    let kv_dim = p.n_head_kv * p.head_dim;
    let q_dim = p.n_head * p.head_dim;
    for (var t = 0u; t < nt; t++) {
        var a = value(acc_a[t], t, un.seg, un.ra, norm);
        var b = value(acc_b[t], t, un.seg, un.rb, norm);
        let tok = t0 + t;
        if (mode == MODE_GLU) {
            y[p.out_off + tok * p.out_stride + u] = glu_act(a) * b;
            continue;
        }
        let pos = p.pos0 + tok;
        if (un.turns) {
            let cs = cos_sin(un.j, pos);
            let a0 = a;
            a = a0 * cs.x - b * cs.y;
            b = a0 * cs.y + b * cs.x;
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
