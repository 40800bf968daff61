//! Tokenizer built from the GGUF's own vocabulary (`tokenizer.ggml.*`) with the `tokenizers`
//! crate: `gpt2` byte-level BPE and `llama` SentencePiece (scores, byte fallback).
//! Behaviour matches llama.cpp `src/llama-vocab.cpp`.

use crate::error::{Error, Result};
use crate::gguf::GgufFile;

/// A tokenizer for one model.
pub struct Tokenizer {
    _private: (),
}

impl Tokenizer {
    /// Build from `tokenizer.ggml.model`, `.tokens`, `.scores`, `.token_type`, `.merges`,
    /// `.bos_token_id`, `.eos_token_id`, `.add_bos_token`, ...
    ///
    /// Errors: [`Error::Tokenizer`] for an unknown tokenizer model or inconsistent vocabulary.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        let _ = gguf;
        Err(Error::Tokenizer("not implemented".into()))
    }
}
