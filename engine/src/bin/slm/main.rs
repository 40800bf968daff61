//! `slm`: the engine's command line, for checking it against references and measuring speed.
//!
//! ```text
//! slm tokenize --model M --text T [--add-bos] [--special]
//! slm logits   --model M --tokens 1,2,3 [--top 5] [--backend cpu|gpu|auto]
//! slm generate --model M (--prompt T | --messages JSON) [--max-tokens N] [--temperature T]
//!              [--top-k K] [--top-p P] [--min-p P] [--repeat-penalty R] [--seed S]
//!              [--stop S]... [--backend B] [--threads N] [--ctx N] [--json]
//! slm bench    --model M [--backend B] [--threads N] [--prompt-tokens 128] [--gen-tokens 128]
//! ```
//! Bad input (missing file, corrupt GGUF, unsupported model, over-long prompt) exits with code 2
//! and one line on stderr.

#[cfg(not(target_arch = "wasm32"))]
mod cli;

#[cfg(not(target_arch = "wasm32"))]
fn main() {
    cli::main();
}

/// The CLI reads files and blocks on the GPU: it exists only natively. This stub lets
/// `cargo test --target wasm32-unknown-unknown` build the package's binaries.
#[cfg(target_arch = "wasm32")]
fn main() {}
