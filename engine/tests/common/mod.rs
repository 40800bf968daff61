//! Shared helpers for integration tests: where the test models and llama.cpp goldens live.
#![allow(dead_code)]

use std::path::PathBuf;

pub mod f32_graph;

/// Repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Folder holding the test models: `$SLM_MODELS_DIR`, else `<repo>/models` (filled by
/// `cargo xtask fetch-models`).
pub fn models_dir() -> PathBuf {
    std::env::var_os("SLM_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("models"))
}

/// Folder of llama.cpp golden data: `$SLM_GOLDEN_DIR`, else `<repo>/../shared/golden`.
pub fn golden_dir() -> PathBuf {
    std::env::var_os("SLM_GOLDEN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("../shared/golden"))
}

/// Folder of the tiny random-weight models, one per family, with llama.cpp's logits:
/// `$SLM_TINY_DIR`, else `<repo>/../shared/tiny`.
pub fn tiny_dir() -> PathBuf {
    std::env::var_os("SLM_TINY_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("../shared/tiny"))
}

pub const SMOLLM2: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
pub const SMOLLM2_KEY: &str = "smollm2-135m-instruct-q4_1";
pub const GEMMA3: &str = "gemma-3-270m-q4_k_m.gguf";
pub const GEMMA3_KEY: &str = "gemma3-270m-q4_k_m";

/// Path of a test model; panics with the command to run when it is missing (tests must not pass
/// silently without their data).
pub fn model_path(file: &str) -> PathBuf {
    let p = models_dir().join(file);
    assert!(
        p.exists(),
        "missing test model {}: run `cargo xtask fetch-models`",
        p.display()
    );
    p
}

/// The golden JSON of a model key.
pub fn golden(key: &str) -> serde_json::Value {
    let p = golden_dir().join(format!("{key}.json"));
    let text = std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("cannot read golden {}: {e}", p.display()));
    serde_json::from_str(&text).unwrap()
}
