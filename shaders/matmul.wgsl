// matmul.wgsl: y[t, r] (+)= dot(W[r, :], x[t, :]) (+ bias[r]) for a quantized weight W in GGUF
// block layout. A workgroup of WG invocations handles WG / TPR weight rows for a tile of up to
// TILE_N tokens: TPR invocations share a row (each decodes every TPR-th 16-element piece once and
// uses it for every token of the tile), then their partial sums are added in workgroup memory
// (log2(TPR) barriers; none when TPR = 1). The decode (matrix-vector) pipeline is this kernel
// with TILE_N = 1; prefill uses TILE_N = 8. TPR = 16 suits GPUs; TPR = 1 (one row per
// invocation, no barriers) suits CPU-emulated adapters (lavapipe, SwiftShader).
//
// W: (rows, cols) in `wq`, row r at byte r * row_bytes; x: (n_tok, x_stride) from x_off;
// y: (n_tok, out_stride) from out_off; bias: (rows) from bias_off.
// Epilogue: s = softcap(scale * (W x + bias)), softcap(v) = c * tanh(v / c) when c > 0; then
// y = s, or y += s (flag bit 1: a fused residual add).
// Flag bit 2 folds the RMSNorm that precedes the product: x[t] is read as
// x[t] * normw / sqrt(mean(x[t]^2) + eps); every workgroup recomputes its tokens' sums of squares
// (cols values each: far less than the weight bytes it reads), so no separate norm dispatch and
// no normed copy of x.

const WG: u32 = 64u;
const TILE_MAX: u32 = 8u;
override TILE_N: u32 = 8u;
// Invocations per row: a power of two dividing WG.
override TPR: u32 = 16u;

struct Params {
    rows: u32,
    cols: u32,
    row_bytes: u32,
    n_tok: u32,
    x_off: u32,
    x_stride: u32,
    out_off: u32,
    out_stride: u32,
    bias_off: u32,
    // bit 0: add bias; bit 1: accumulate into y (fused residual add); bit 2: RMSNorm x first
    flags: u32,
    total_wg: u32,
    scale: f32,
    softcap: f32,
    eps: f32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> wq: array<u32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<storage, read> bias: array<f32>;
@group(0) @binding(5) var<storage, read> normw: array<f32>;

// Partial sums: token t of invocation i at t * WG + i.
var<workgroup> part: array<f32, 512>; // WG * TILE_MAX
// Folded RMSNorm: 1 / rms of each token of the tile.
var<workgroup> nscale: array<f32, TILE_MAX>;

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let id = linear_wg(wid, nwg);
    if (id >= p.total_wg) { return; }
    let rows_per_wg = WG / TPR;
    let n_tiles = (p.n_tok + TILE_N - 1u) / TILE_N;
    let r = (id / n_tiles) * rows_per_wg + lid / TPR;
    let lane = lid % TPR;
    let t0 = (id % n_tiles) * TILE_N;
    let nt = min(TILE_N, p.n_tok - t0);
    let valid = r < p.rows;
    let row_off = r * p.row_bytes;
    var n_pieces = (p.cols + 15u) / 16u;
    if (!valid) { n_pieces = 0u; }

    let norm = (p.flags & 4u) != 0u;
    if (norm) {
        // Every invocation of the workgroup sums a strided share of each token's squares.
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

    var acc: array<f32, TILE_MAX>;
    for (var pc = lane; pc < n_pieces; pc += TPR) {
        var v: array<f32, 16>;
        load_piece(row_off, pc, p.cols, &v);
        let c0 = pc * 16u;
        let nc = min(16u, p.cols - c0);
        if (norm) {
            for (var i = 0u; i < nc; i++) { v[i] *= normw[c0 + i]; }
        }
        for (var t = 0u; t < nt; t++) {
            let xb = p.x_off + (t0 + t) * p.x_stride + c0;
            var s = 0.0;
            if (nc == 16u) {
                for (var i = 0u; i < 16u; i++) { s += v[i] * x[xb + i]; }
            } else {
                for (var i = 0u; i < nc; i++) { s += v[i] * x[xb + i]; }
            }
            acc[t] += s;
        }
    }
    if (TPR > 1u) {
        for (var t = 0u; t < nt; t++) { part[t * WG + lid] = acc[t]; }
        for (var s = TPR / 2u; s > 0u; s = s >> 1u) {
            workgroupBarrier();
            if (lane < s) {
                for (var t = 0u; t < nt; t++) { part[t * WG + lid] += part[t * WG + lid + s]; }
            }
        }
        workgroupBarrier();
        for (var t = 0u; t < nt; t++) { acc[t] = part[t * WG + lid]; }
    }
    if (!valid || lane != 0u) { return; }
    if (norm) {
        for (var t = 0u; t < nt; t++) { acc[t] *= nscale[t]; }
    }
    var b = 0.0;
    if ((p.flags & 1u) != 0u) { b = bias[p.bias_off + r]; }
    for (var t = 0u; t < nt; t++) {
        let o = p.out_off + (t0 + t) * p.out_stride + r;
        var s = (acc[t] + b) * p.scale;
        if (p.softcap > 0.0) { s = p.softcap * tanh(clamp(s / p.softcap, -15.0, 15.0)); }
        if ((p.flags & 2u) != 0u) { y[o] = y[o] + s; } else { y[o] = s; }
    }
}
