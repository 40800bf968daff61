//! Messages between the page and the engine's Web Worker (serialized with serde-wasm-bindgen).

use serde::{Deserialize, Serialize};

/// One turn of the conversation as the chat template sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Turn {
    pub role: String,
    pub content: String,
}

/// Sampling and length settings of one reply.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GenSettings {
    pub temperature: f32,
    pub top_k: usize,
    pub top_p: f32,
    pub max_tokens: usize,
    pub seed: u64,
}

impl Default for GenSettings {
    fn default() -> Self {
        Self {
            temperature: 0.7,
            top_k: 40,
            top_p: 0.95,
            max_tokens: 256,
            seed: 0,
        }
    }
}

/// Page → worker.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToWorker {
    /// Load the model stored in IndexedDB under `model_id` on `backend` (`auto`, `cpu`, `gpu`).
    Load {
        model_id: String,
        backend: String,
        n_ctx: usize,
        /// Use the built-in chat format when the file's own template fails (the user chose
        /// it after a `template` error; never done silently).
        #[serde(default)]
        template_fallback: bool,
    },
    /// Generate the assistant's next turn.
    Generate {
        turns: Vec<Turn>,
        settings: GenSettings,
    },
    /// End a generation. `request: None` or the running request's id: it ends after the
    /// current token (or prefill slice), the reply so far is kept and `Done` reports
    /// `stop_reason: "cancelled"`. The id of a request still queued: it is dropped and answered
    /// with an `aborted` error. Gets no answer of its own.
    Stop {
        #[serde(default)]
        request: Option<u64>,
    },
    /// Drop the KV cache (new chat); queued behind the requests before it. No answer.
    Reset,
    /// Measure how fast this machine's CPU path streams quantized weights (for the expected
    /// speed before a download); runs about `budget_ms` (clamped to 10..=2000). Answer: `Probed`.
    Probe { budget_ms: f64 },
    /// Test hook (`window.__slm_test.loseGpu()`): destroy the WebGPU device the loaded model
    /// runs on, as a driver reset would. Does nothing when no GPU device exists.
    LoseGpu,
}

/// A message with the id of the request it belongs to. Page → worker: ids are chosen by the
/// page, unique and > 0; worker → page: every answer, progress and token carries the id of its
/// request, and [`UNSOLICITED`] marks messages no request asked for (`Ready`, `GpuLost`).
///
/// The worker answers requests one at a time in the order they arrive (a `Load` also ends the
/// running generation), so several requests in flight are queued, never lost, and each answer
/// reaches the request that asked.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Envelope<T> {
    pub id: u64,
    pub msg: T,
}

/// The id of worker messages no request asked for.
pub const UNSOLICITED: u64 = 0;

impl FromWorker {
    /// Whether this message is the last one of its request (its answer).
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            FromWorker::Loaded { .. }
                | FromWorker::Done(_)
                | FromWorker::Probed { .. }
                | FromWorker::Error { .. }
        )
    }
}

/// Worker → page.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FromWorker {
    /// The module is initialised and listening.
    Ready,
    /// Loading progress (0..1) with a short phase label.
    LoadProgress { phase: String, fraction: f64 },
    Loaded {
        /// `cpu` or `gpu`.
        backend: String,
        /// Why this backend (e.g. "requested", "no WebGPU adapter").
        reason: String,
        /// The WebGPU adapter's name (never empty on `gpu`; empty on `cpu`).
        #[serde(default)]
        adapter: String,
        n_ctx: usize,
        arch: String,
        load_ms: f64,
        /// Set when the built-in chat format replaced the file's failing template: why.
        #[serde(default)]
        template_fallback: Option<String>,
    },
    /// The answer to `Probe`: weight bytes per second through the decode kernel, one thread.
    Probed {
        cpu_bytes_per_s: f64,
        elapsed_ms: f64,
    },
    /// New reply text (may be empty while a character is incomplete).
    Token { text: String },
    /// The reply is finished.
    Done(ReplyStats),
    /// Unsolicited: the GPU device of the loaded model was lost (driver reset, test hook). The
    /// page moves the model to the CPU, keeping the conversation.
    GpuLost { message: String },
    /// A failure; `kind` lets the page choose a recovery (`context_full`, `gpu_lost`, `load`,
    /// `template` (the file's chat template failed: the page offers the built-in format),
    /// `generate`, `aborted` (stopped while still queued), `protocol`).
    Error { kind: String, message: String },
}

/// Counts and timings of one reply.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ReplyStats {
    pub n_prompt: usize,
    pub n_prefilled: usize,
    pub n_generated: usize,
    pub stop_reason: String,
    pub ttft_ms: f64,
    pub prefill_tok_s: f64,
    pub decode_tok_s: f64,
    /// Tokens the context holds after this reply, and its capacity.
    pub ctx_used: usize,
    pub n_ctx: usize,
}
