//! The engine's one error type: every failure a caller can act on, with the context (op, shapes,
//! dtype, byte offset) needed to say in plain words what went wrong.

use crate::quant::GgmlDType;

/// Result alias used throughout the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every error the engine returns. Variants are structured so a UI can map them to messages
/// and recovery actions (retry, re-download, fall back to the CPU) without parsing strings.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading the model bytes failed (file missing, I/O error, storage chunk missing).
    #[error("cannot read model data: {0}")]
    Io(#[from] std::io::Error),

    /// The bytes are not a GGUF file we can read: `what` names the field, `offset` the byte
    /// position where it was read.
    #[error("invalid GGUF at byte {offset}: {what}")]
    Gguf { offset: u64, what: String },

    /// The file ended before a field that its header promised.
    #[error("truncated GGUF: needed {needed} bytes at byte {offset} but the file has {len}")]
    Truncated { offset: u64, needed: u64, len: u64 },

    /// A GGUF version other than 2 or 3.
    #[error("unsupported GGUF version {0} (supported: 2, 3)")]
    UnsupportedVersion(u32),

    /// A required metadata key is missing or has the wrong type.
    #[error("metadata key `{key}`: {what}")]
    Metadata { key: String, what: String },

    /// The model's architecture (`general.architecture`) is not implemented.
    #[error("unsupported model architecture `{0}` (supported: {names})", names = family_names())]
    UnsupportedArchitecture(String),

    /// A tensor type id this engine does not implement.
    #[error("tensor `{tensor}` has unsupported type {dtype}")]
    UnsupportedDType { tensor: String, dtype: String },

    /// An operation received a dtype it has no kernel for.
    #[error("{op}: no kernel for dtype {dtype:?}")]
    OpDType { op: &'static str, dtype: GgmlDType },

    /// A tensor the architecture needs is missing.
    #[error("missing tensor `{0}`")]
    MissingTensor(String),

    /// Shapes that do not fit together.
    #[error("{op}: shape mismatch: {detail}")]
    Shape { op: &'static str, detail: String },

    /// The tokenizer metadata is unusable or tokenization failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),

    /// The chat template failed to parse or render; `limit` names the budget it broke, if that
    /// is why ([`crate::chat_template::TemplateLimits`]).
    #[error("chat template: {what}")]
    ChatTemplate {
        limit: Option<crate::chat_template::TemplateLimit>,
        what: String,
    },

    /// Prompt plus requested generation does not fit in the context window.
    #[error("the prompt has {n_prompt} tokens and {n_requested} more were requested, but the context holds {n_ctx}")]
    ContextFull {
        n_prompt: usize,
        n_requested: usize,
        n_ctx: usize,
    },

    /// A request (context length, prompt, batch) would need more memory than may be used:
    /// natively the memory available, on wasm32 its 4 GiB address space.
    #[error("{what} needs {} but only {} may be used", crate::memory::human_bytes(*needed), crate::memory::human_bytes(*allowed))]
    TooLarge {
        what: String,
        needed: u64,
        allowed: u64,
    },

    /// The allocator could not provide `needed` bytes for `what` (wasm32: what is left of the 4
    /// GiB address space after the model file).
    #[error("not enough memory for {what} ({}): use a shorter context or a smaller model", crate::memory::human_bytes(*needed))]
    OutOfMemory { what: String, needed: u64 },

    /// A token id outside the vocabulary.
    #[error("token id {id} is outside the vocabulary of {n_vocab}")]
    TokenOutOfRange { id: u32, n_vocab: usize },

    /// Invalid sampling or generation parameter.
    #[error("invalid parameter `{name}`: {what}")]
    InvalidParam { name: &'static str, what: String },

    /// No usable GPU adapter (no WebGPU, no Vulkan/Metal/DX12 driver) or its self-test failed;
    /// the caller should use the CPU backend.
    #[error("no usable GPU: {0}")]
    GpuUnavailable(String),

    /// The GPU device was lost (driver reset, tab backgrounded, out of memory); the caller may
    /// fall back to the CPU and keep its conversation.
    #[error("the GPU device was lost: {0}")]
    GpuDeviceLost(String),

    /// A GPU allocation failed.
    #[error("the GPU ran out of memory allocating {what} ({bytes} bytes)")]
    GpuOutOfMemory { what: String, bytes: u64 },

    /// The device limits are too small for this model.
    #[error("GPU limit `{limit}` is {available} but this model needs {needed}")]
    GpuLimits {
        limit: &'static str,
        needed: u64,
        available: u64,
    },

    /// Any other GPU failure (shader compilation, validation), with the op that failed.
    #[error("GPU {op}: {what}")]
    Gpu { op: &'static str, what: String },
}

impl Error {
    /// Shorthand for [`Error::Gguf`].
    pub fn gguf(offset: u64, what: impl Into<String>) -> Self {
        Error::Gguf {
            offset,
            what: what.into(),
        }
    }
    /// Shorthand for [`Error::Metadata`].
    pub fn metadata(key: &str, what: impl Into<String>) -> Self {
        Error::Metadata {
            key: key.to_string(),
            what: what.into(),
        }
    }
}

/// The registered families ([`crate::arch::FAMILIES`]), comma-separated.
fn family_names() -> String {
    crate::arch::FAMILIES
        .iter()
        .map(|f| f.name)
        .collect::<Vec<_>>()
        .join(", ")
}
