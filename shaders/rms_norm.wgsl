// rms_norm.wgsl: RMSNorm (Zhang & Sennrich 2019) of rows row_begin .. row_begin + n_rows:
// out[t, :] = x[t, :] / sqrt(mean(x[t, :]^2) + eps) * w, or out[t, :] += ... when `add` (Gemma's
// post-norms before the residual add). One workgroup per row. Also the per-head q/k norms, with
// n = head_dim and one row per (token, head). x, out: (n_tok, n); w: (n).

const WG: u32 = 64u;

struct Params {
    n: u32,
    row_begin: u32,
    n_rows: u32,
    eps: f32,
    add: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = linear_wg(wid, nwg);
    if (row >= p.n_rows) { return; }
    let base = (p.row_begin + row) * p.n;
    var s = 0.0;
    for (var i = lid; i < p.n; i += WG) {
        let v = x[base + i];
        s += v * v;
    }
    let total = reduce_sum(s, lid);
    let scale = 1.0 / sqrt(total / f32(p.n) + p.eps);
    for (var i = lid; i < p.n; i += WG) {
        let v = x[base + i] * scale * w[i];
        if (p.add != 0u) { out[base + i] = out[base + i] + v; } else { out[base + i] = v; }
    }
}
