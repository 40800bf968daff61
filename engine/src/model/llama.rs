//! Llama-family decoder (llama, qwen2) on the CPU backend.
