// sample_topk.wgsl: the decode step's sampler spread over many workgroups, for greedy decoding
// and top-k in 1..=KMAX (the usual settings; top-k off or larger takes sample.wgsl). Two entry
// points, one dispatch each:
//   gather: workgroup g takes logits [g * slice, (g + 1) * slice) and writes its kc largest in
//           the order (value descending, index ascending) to cand[g * KMAX ..], kc = 1 when
//           greedy, else min(top_k, KMAX); a slot with nothing left holds index NONE.
//   pick:   one workgroup takes the kc largest of all groups' candidates in the same order, then
//           runs the chain of engine/src/sampler.rs on them, in that (descending) order:
//           softmax at temperature 1, top-p cut, min-p cut, temperature, and the inverse-CDF draw
//           of `random`; greedy takes the first. out[0]: the token id.
// Each selection round finds the best item below the previous round's pick (a strict total
// order, so nothing needs marking); an invocation rescans its items only when it held the pick.
// cand: 2 u32 per candidate (f32 bits, token index).

const WG: u32 = 256u;
const KMAX: u32 = 64u;
const NONE: u32 = 0xffffffffu;

struct Params {
    n_vocab: u32,
    logits_off: u32,
    top_k: u32,
    // gather workgroups; each takes ceil(n_vocab / n_groups) logits
    n_groups: u32,
    temperature: f32,
    top_p: f32,
    random: f32,
    min_p: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
// gather: the logits (f32 bits); pick: the candidates.
@group(0) @binding(1) var<storage, read> src: array<u32>;
// gather: the candidates; pick: out[0], the token id.
@group(0) @binding(2) var<storage, read_write> dst: array<u32>;

var<workgroup> red_v: array<f32, WG>;
var<workgroup> red_i: array<u32, WG>;
// The picks so far, in order (pick: then their probabilities).
var<workgroup> sel_v: array<f32, KMAX>;
var<workgroup> sel_i: array<u32, KMAX>;

// (v, i) comes before (bv, bi): larger value, then lower index.
fn before(v: f32, i: u32, bv: f32, bi: u32) -> bool {
    return v > bv || (v == bv && i < bi);
}

// Candidates kept per group.
fn kc() -> u32 {
    if (p.temperature <= 0.0) { return 1u; }
    return min(p.top_k, KMAX);
}

struct Item {
    v: f32,
    i: u32,
}

// Item j of this invocation's set: gather, logit j of group g's slice; pick, candidate j of
// all groups' first kc. NaN logits read as NEG_INF.
fn item(gather: bool, g: u32, j: u32) -> Item {
    var it: Item;
    it.i = NONE;
    it.v = NEG_INF;
    if (gather) {
        let slice = (p.n_vocab + p.n_groups - 1u) / p.n_groups;
        let t = g * slice + j;
        if (j < slice && t < p.n_vocab) {
            let v = bitcast<f32>(src[p.logits_off + t]);
            it.v = select(v, NEG_INF, v != v);
            it.i = t;
        }
    } else {
        let k = kc();
        if (j < p.n_groups * k) {
            let c = (j / k) * KMAX + j % k;
            it.v = bitcast<f32>(src[2u * c]);
            it.i = src[2u * c + 1u];
        }
    }
    return it;
}

// The best of this invocation's items that come after (bv, bi) (all when bi is NONE and bv is
// +inf-like); `n` items in the set, invocation lid owns lid, lid + WG, ...
fn best_after(gather: bool, g: u32, n: u32, lid: u32, bv: f32, bi: u32, first: bool) -> Item {
    var b: Item;
    b.v = NEG_INF;
    b.i = NONE;
    for (var j = lid; j < n; j += WG) {
        let it = item(gather, g, j);
        if (it.i == NONE) { continue; }
        let after = first || before(bv, bi, it.v, it.i);
        if (after && (b.i == NONE || before(it.v, it.i, b.v, b.i))) { b = it; }
    }
    return b;
}

// Select the kc first items of the set into sel_v / sel_i (NONE where the set ran out).
fn select_top(gather: bool, g: u32, n: u32, lid: u32) {
    let k = kc();
    var mine = best_after(gather, g, n, lid, 0.0, NONE, true);
    for (var r = 0u; r < k; r++) {
        red_v[lid] = mine.v;
        red_i[lid] = mine.i;
        for (var s = WG / 2u; s > 0u; s = s >> 1u) {
            workgroupBarrier();
            if (lid < s) {
                let ov = red_v[lid + s];
                let oi = red_i[lid + s];
                if (oi != NONE && (red_i[lid] == NONE || before(ov, oi, red_v[lid], red_i[lid]))) {
                    red_v[lid] = ov;
                    red_i[lid] = oi;
                }
            }
        }
        workgroupBarrier();
        let wv = red_v[0];
        let wi = red_i[0];
        if (lid == 0u) {
            sel_v[r] = wv;
            sel_i[r] = wi;
        }
        // Only the invocation that held the pick looks for its next best.
        if (wi != NONE && mine.i == wi) {
            mine = best_after(gather, g, n, lid, wv, wi, false);
        }
        workgroupBarrier();
    }
}

@compute @workgroup_size(WG)
fn gather(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let g = linear_wg(wid, nwg);
    if (g >= p.n_groups) { return; }
    let slice = (p.n_vocab + p.n_groups - 1u) / p.n_groups;
    select_top(true, g, slice, lid);
    workgroupBarrier();
    let k = kc();
    if (lid < k) {
        let c = g * KMAX + lid;
        dst[2u * c] = bitcast<u32>(sel_v[lid]);
        dst[2u * c + 1u] = sel_i[lid];
    }
}

@compute @workgroup_size(WG)
fn pick(@builtin(local_invocation_index) lid: u32) {
    let k = kc();
    select_top(false, 0u, p.n_groups * k, lid);
    workgroupBarrier();
    if (lid != 0u) { return; }
    var n = 0u;
    for (var r = 0u; r < k; r++) {
        if (sel_i[r] != NONE) { n = r + 1u; }
    }
    if (n == 0u) {
        dst[0] = 0u;
        return;
    }
    if (p.temperature <= 0.0) {
        dst[0] = sel_i[0];
        return;
    }
    // Probabilities at temperature 1 (sel_v becomes them).
    let mx = sel_v[0];
    var z = 0.0;
    for (var r = 0u; r < n; r++) {
        let e = exp(sel_v[r] - mx);
        sel_v[r] = e;
        z += e;
    }
    for (var r = 0u; r < n; r++) { sel_v[r] = sel_v[r] / z; }
    // Top-p: the smallest prefix whose mass reaches top_p.
    var keep = n;
    if (p.top_p < 1.0) {
        var cum = 0.0;
        for (var r = 0u; r < n; r++) {
            cum += sel_v[r];
            if (cum >= p.top_p) {
                keep = r + 1u;
                break;
            }
        }
    }
    // Min-p: those at least min_p times the first (at least one).
    if (p.min_p > 0.0) {
        let floor = sel_v[0] * p.min_p;
        var m = 0u;
        for (var r = 0u; r < keep; r++) {
            if (sel_v[r] >= floor) { m = r + 1u; } else { break; }
        }
        keep = max(m, 1u);
    }
    // Temperature on the survivors: softmax(ln(p) / T), then the draw in this order.
    let inv_t = 1.0 / p.temperature;
    var lmx = NEG_INF;
    for (var r = 0u; r < keep; r++) {
        let l = log(max(sel_v[r], 1.17549435e-38)) * inv_t;
        sel_v[r] = l;
        lmx = max(lmx, l);
    }
    z = 0.0;
    for (var r = 0u; r < keep; r++) {
        let e = exp(sel_v[r] - lmx);
        sel_v[r] = e;
        z += e;
    }
    var cum = 0.0;
    for (var r = 0u; r < keep; r++) {
        cum += sel_v[r] / z;
        if (p.random < cum) {
            dst[0] = sel_i[r];
            return;
        }
    }
    dst[0] = sel_i[keep - 1u];
}
