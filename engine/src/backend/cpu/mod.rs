//! CPU backend: quantized matrix products on prepared activations (threaded natively with rayon,
//! single-threaded in wasm), and the f32 ops of [`ops`].

pub mod matmul;
pub mod model;
pub mod ops;

pub use matmul::{matmul, CpuThreads};
pub use model::{CpuModel, CpuWeights, MAX_BATCH};
