//! CPU backend: quantized matrix products on prepared activations (threaded natively with a
//! spinning fork–join [`pool`](pool), single-threaded in wasm), and the f32 ops of [`ops`].

pub mod matmul;
pub mod model;
pub mod ops;
#[cfg(not(target_arch = "wasm32"))]
mod pool;

pub use matmul::{matmul, CpuThreads};
pub use model::{CpuModel, CpuWeights, MAX_BATCH};
