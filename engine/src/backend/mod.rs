//! Compute backends: a closed enum over the CPU (native + wasm simd128) and GPU (wgpu) engines.

pub mod cpu;
