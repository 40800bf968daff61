// sample.wgsl: pick the next token from one row of logits on the GPU, so a decode step reads
// back a single u32. One workgroup of WG invocations.
//
// temperature <= 0: argmax (lowest index on ties). Otherwise, as llama.cpp's top-k → top-p →
// temperature → draw chain: keep the top_k largest logits (0 = all; the k-th value is found by
// bisection on the value, so ties at the boundary are all kept); of those keep the smallest
// most-probable set whose softmax mass (at temperature 1) reaches top_p (bisection on the
// weight threshold); weight the kept tokens w = exp((l - max) / temperature) and walk them in
// index order until the cumulative weight passes `random` * (kept weight).
// logits: (.., n_vocab) read from logits_off; out[0]: the token id.

const WG: u32 = 256u;
const BISECT_STEPS: u32 = 32u;

struct Params {
    n_vocab: u32,
    logits_off: u32,
    top_k: u32,
    _pad0: u32,
    temperature: f32,
    top_p: f32,
    random: f32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<u32>;

var<workgroup> seg: array<f32, WG>;
var<workgroup> kept_mass: f32;

fn logit(i: u32) -> f32 {
    return logits[p.logits_off + i];
}

// Whether token i survives the top-k cut `thr_l` (a logit) and the top-p cut `thr_w` (a
// temperature-1 weight exp(l - max); 0 keeps all).
fn kept(i: u32, mx: f32, thr_l: f32, thr_w: f32) -> bool {
    let l = logit(i);
    return l >= thr_l && (thr_w <= 0.0 || exp(l - mx) >= thr_w);
}

// Temperature-1 weight of token i if kept, else 0.
fn keep_weight(i: u32, mx: f32, thr_l: f32, thr_w: f32) -> f32 {
    return select(0.0, exp(logit(i) - mx), kept(i, mx, thr_l, thr_w));
}

// Draw weight exp((l - max) / temperature) of token i if kept, else 0.
fn draw_weight(i: u32, mx: f32, inv_t: f32, thr_l: f32, thr_w: f32) -> f32 {
    return select(0.0, exp((logit(i) - mx) * inv_t), kept(i, mx, thr_l, thr_w));
}

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) lid: u32) {
    let n = p.n_vocab;
    // Argmax: the largest value, then the lowest index holding it.
    var mx = NEG_INF;
    var mn = -NEG_INF;
    for (var i = lid; i < n; i += WG) {
        let l = logit(i);
        mx = max(mx, l);
        mn = min(mn, l);
    }
    mx = reduce_max(mx, lid);
    mn = -reduce_max(-mn, lid);
    var first = f32(n);
    for (var i = lid; i < n; i += WG) {
        if (logit(i) == mx) { first = min(first, f32(i)); }
    }
    let arg = u32(-reduce_max(-first, lid));
    if (p.temperature <= 0.0) {
        if (lid == 0u) { out[0] = arg; }
        return;
    }
    let inv_t = 1.0 / p.temperature;

    // Top-k: the largest threshold that still keeps at least k logits.
    var thr_l = NEG_INF;
    if (p.top_k > 0u && p.top_k < n) {
        var lo = mn;
        var hi = mx;
        for (var it = 0u; it < BISECT_STEPS; it++) {
            let mid = 0.5 * (lo + hi);
            var c = 0.0;
            for (var i = lid; i < n; i += WG) { c += select(0.0, 1.0, logit(i) >= mid); }
            c = reduce_sum(c, lid);
            if (c >= f32(p.top_k)) { lo = mid; } else { hi = mid; }
        }
        thr_l = lo;
    }

    // Top-p: the largest weight threshold whose kept mass still reaches top_p of the total.
    var thr_w = 0.0;
    if (p.top_p < 1.0) {
        var z = 0.0;
        for (var i = lid; i < n; i += WG) { z += keep_weight(i, mx, thr_l, 0.0); }
        z = reduce_sum(z, lid);
        var lo = 0.0;
        var hi = 1.0;
        for (var it = 0u; it < BISECT_STEPS; it++) {
            let mid = 0.5 * (lo + hi);
            var s = 0.0;
            for (var i = lid; i < n; i += WG) { s += keep_weight(i, mx, thr_l, mid); }
            s = reduce_sum(s, lid);
            if (s >= p.top_p * z) { lo = mid; } else { hi = mid; }
        }
        thr_w = lo;
    }

    // Inverse-CDF draw in index order: each invocation owns a contiguous segment.
    let per = (n + WG - 1u) / WG;
    let b = min(n, lid * per);
    let e = min(n, b + per);
    var s = 0.0;
    for (var i = b; i < e; i++) { s += draw_weight(i, mx, inv_t, thr_l, thr_w); }
    seg[lid] = s;
    workgroupBarrier();
    if (lid == 0u) {
        var acc = 0.0;
        for (var i = 0u; i < WG; i++) {
            let v = seg[i];
            seg[i] = acc;
            acc += v;
        }
        kept_mass = acc;
        out[0] = arg;
    }
    workgroupBarrier();
    storageBarrier();
    let target_mass = p.random * kept_mass;
    var acc = seg[lid];
    if (target_mass >= acc && target_mass < acc + s) {
        for (var i = b; i < e; i++) {
            let w = draw_weight(i, mx, inv_t, thr_l, thr_w);
            acc += w;
            if (w > 0.0 && target_mass < acc) {
                out[0] = i;
                break;
            }
        }
    }
}
