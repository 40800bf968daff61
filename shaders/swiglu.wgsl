// swiglu.wgsl: SwiGLU (Shazeer 2020) in place: gate = silu(gate) * up. gate, up: (n).

const WG: u32 = 64u;

struct Params {
    n: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> gate: array<f32>;
@group(0) @binding(2) var<storage, read> up: array<f32>;

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = linear_wg(wid, nwg) * WG + lid;
    if (i >= p.n) { return; }
    let g = gate[i];
    gate[i] = g / (1.0 + exp(-g)) * up[i];
}
