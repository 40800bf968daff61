//! `engine`: runs small quantized GGUF language models. No DOM dependencies; builds natively
//! (tests, benchmarks, the `slm` CLI) and for `wasm32-unknown-unknown` (the browser app).
//!
//! Data flow: bytes ([`gguf::ByteSource`]) → [`gguf::GgufFile`] → [`model::Model`] (weights kept
//! in GGUF block layout, [`quant`]) + [`tokenizer::Tokenizer`] + [`chat_template`] →
//! [`generate`] (prefill, decode, [`sampler`]) → token ids and text.

pub mod arch;
pub mod backend;
pub mod bench;
pub mod chat_template;
pub mod error;
pub mod generate;
pub mod gguf;
pub mod memory;
pub mod model;
pub mod probe;
pub mod quant;
pub mod sampler;
pub mod tensor;
pub mod tokenizer;

pub use error::{Error, Result};
