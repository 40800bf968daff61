// glu.wgsl: gated linear unit (Shazeer 2020) in place: gate = act(gate) * up, act = SiLU
// (act 0, SwiGLU) or GELU with the tanh approximation (act 1, GeGLU). gate, up: (n).

const WG: u32 = 64u;

struct Params {
    n: u32,
    act: u32,
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
    var a: f32;
    if (p.act == 1u) {
        // 0.5 g (1 + tanh(sqrt(2/pi) (g + 0.044715 g^3))); tanh saturates for large |g|.
        let u = clamp(0.7978846 * g * (1.0 + 0.044715 * g * g), -15.0, 15.0);
        a = 0.5 * g * (1.0 + tanh(u));
    } else {
        a = g / (1.0 + exp(-g));
    }
    gate[i] = a * up[i];
}
