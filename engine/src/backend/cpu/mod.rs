//! CPU backend: quantized matrix-vector/matrix products, norms, RoPE and attention in f32.
