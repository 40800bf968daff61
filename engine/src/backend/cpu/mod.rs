//! CPU backend: quantized matrix products on prepared activations (threaded with a spinning
//! fork–join [`pool`](pool): native threads, or Web Workers in the browser's multi-threaded wasm
//! build), and the f32 ops of [`ops`].

pub mod matmul;
pub mod model;
pub mod ops;
mod pool;

pub use matmul::{matmul, CpuThreads};
pub use model::{CpuModel, CpuWeights, MAX_BATCH};
pub use pool::{set_spawner as set_thread_spawner, Spawner};
