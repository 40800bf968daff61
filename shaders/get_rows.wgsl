// get_rows.wgsl: embedding lookup out[t, :] = scale * dequant(table[tokens[t] - row_begin, :]) for the
// tokens that fall in this table chunk [row_begin, row_begin + n_rows). One invocation per
// (token, 16-element piece).
// table: (n_rows, cols) in `wq`; tokens: (n_tok); out: (n_tok, cols).

const WG: u32 = 64u;

struct Params {
    cols: u32,
    row_bytes: u32,
    n_tok: u32,
    row_begin: u32,
    n_rows: u32,
    total: u32,
    scale: f32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> wq: array<u32>;
@group(0) @binding(2) var<storage, read> tokens: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let gid = linear_wg(wid, nwg) * WG + lid;
    if (gid >= p.total) { return; }
    let n_pieces = (p.cols + 15u) / 16u;
    let t = gid / n_pieces;
    let pc = gid % n_pieces;
    let tok = tokens[t];
    if (tok < p.row_begin || tok - p.row_begin >= p.n_rows) { return; }
    var v: array<f32, 16>;
    load_piece((tok - p.row_begin) * p.row_bytes, pc, p.cols, &v);
    let c0 = pc * 16u;
    let nc = min(16u, p.cols - c0);
    for (var i = 0u; i < nc; i++) { out[t * p.cols + c0 + i] = v[i] * p.scale; }
}
