// common.wgsl: declarations shared by every kernel (prepended by backend/gpu/shaders.rs).
// GGML type ids as in ggml.h `enum ggml_type` (the `DTYPE` override of the weight kernels).

const T_F32: u32 = 0u;
const T_F16: u32 = 1u;
const T_Q4_0: u32 = 2u;
const T_Q4_1: u32 = 3u;
const T_Q5_0: u32 = 6u;
const T_Q5_1: u32 = 7u;
const T_Q8_0: u32 = 8u;
const T_Q2_K: u32 = 10u;
const T_Q3_K: u32 = 11u;
const T_Q4_K: u32 = 12u;
const T_Q5_K: u32 = 13u;
const T_Q6_K: u32 = 14u;
const T_BF16: u32 = 30u;

const NEG_INF: f32 = -3.0e38;

// Linear workgroup id of a 2D dispatch (x, y): the host splits counts above
// maxComputeWorkgroupsPerDimension into rows of `num_workgroups.x`.
fn linear_wg(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.y * nwg.x + wid.x;
}

// Sign-extend the low byte of `b`.
fn i8_of(b: u32) -> f32 {
    return f32((i32(b << 24u)) >> 24u);
}

// Byte `i` (0..3) of word `w`.
fn byte_of(w: u32, i: u32) -> u32 {
    return (w >> (i * 8u)) & 0xffu;
}
