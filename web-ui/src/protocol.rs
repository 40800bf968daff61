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
    /// Context size (tokens) the model runs with for this conversation: a change reloads the
    /// model. Capped by the model's trained context and [`max_context`].
    #[serde(default = "default_n_ctx")]
    pub n_ctx: usize,
}

/// The context size a conversation starts with.
pub const DEFAULT_N_CTX: usize = 2048;
/// The smallest context size offered.
pub const MIN_N_CTX: usize = 256;
/// Memory the KV cache may take: the wasm32 engine has a 4 GiB address space that the weights,
/// the file's chunks while loading and the scratch buffers share.
pub const KV_BUDGET_BYTES: u64 = 1 << 30;

fn default_n_ctx() -> usize {
    DEFAULT_N_CTX
}

/// The largest context a model allows here: its trained context, and what fits
/// [`KV_BUDGET_BYTES`] at `kv_bytes_per_token` (0 when unknown: no memory bound), rounded down
/// to a multiple of 256 and at least [`MIN_N_CTX`].
pub fn max_context(n_ctx_train: usize, kv_bytes_per_token: u64) -> usize {
    let by_memory = KV_BUDGET_BYTES
        .checked_div(kv_bytes_per_token)
        .map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX));
    let train = if n_ctx_train == 0 {
        usize::MAX
    } else {
        n_ctx_train
    };
    let m = train.min(by_memory);
    if m == usize::MAX {
        return DEFAULT_N_CTX;
    }
    (m / 256 * 256).max(MIN_N_CTX).min(train)
}

impl Default for GenSettings {
    fn default() -> Self {
        Self {
            temperature: 0.7,
            top_k: 40,
            top_p: 0.95,
            max_tokens: 256,
            seed: 0,
            n_ctx: DEFAULT_N_CTX,
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
    /// Benchmark the loaded model as llama-bench's pp/tg do (`cargo xtask bench --browser`):
    /// prefill `n_prompt` fixed tokens, then decode `n_gen` greedily (no stop), `reps` times;
    /// the medians. Bounded: `n_prompt + n_gen` within the context, `reps` ≤ 10. The KV cache
    /// is dropped afterwards. Answer: `Benched`.
    Bench {
        n_prompt: usize,
        n_gen: usize,
        reps: usize,
    },
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
                | FromWorker::Benched { .. }
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
        /// The context length the model was trained with.
        #[serde(default)]
        n_ctx_train: usize,
        /// KV-cache bytes one context position takes (f32 keys and values, every layer).
        #[serde(default)]
        kv_bytes_per_token: u64,
        arch: String,
        load_ms: f64,
        /// Set when the built-in chat format replaced the file's failing template: why.
        #[serde(default)]
        template_fallback: Option<String>,
        /// The worker runs the multi-threaded wasm build (shared memory and relaxed SIMD; the
        /// page is cross-origin isolated).
        #[serde(default)]
        threaded: bool,
        /// Threads the CPU engine computes with (1 in the single-threaded build; 0 on `gpu`).
        #[serde(default)]
        threads: usize,
        /// The CPU engine's dot-product kernels in this build: `"relaxed-simd"` or `"simd128"`.
        #[serde(default)]
        kernels: String,
    },
    /// The answer to `Probe`: weight bytes per second through the decode kernel, one thread.
    Probed {
        cpu_bytes_per_s: f64,
        elapsed_ms: f64,
    },
    /// The answer to `Bench`: median tokens per second.
    Benched {
        backend: String,
        /// Threads the CPU engine computes with (1 on the GPU).
        threads: usize,
        n_prompt: usize,
        n_gen: usize,
        prefill_tok_s: f64,
        decode_tok_s: f64,
        /// The engine worker's wasm linear memory after the run, in MiB (it never shrinks: the
        /// worker's peak).
        wasm_memory_mib: f64,
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
    /// `cpu` or `gpu`: the backend that computed the reply (empty in replies saved before it
    /// was recorded).
    #[serde(default)]
    pub backend: String,
    /// CPU threads that computed the reply (0 on the GPU and in replies saved before).
    #[serde(default)]
    pub threads: usize,
    /// Matrix-product chunks of this reply that the CPU pool's other threads computed (0 with
    /// one thread): shows that the threads take part.
    #[serde(default)]
    pub helped_chunks: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_bounds() {
        // SmolLM2-135M: 30 layers, 3 KV heads of 64: 46 080 bytes a position (f32 K and V).
        assert_eq!(max_context(8192, 46_080), 8192);
        // Bounded by memory: 1 GiB / 256 KiB = 4096.
        assert_eq!(max_context(131_072, 256 << 10), 4096);
        // Rounded down to 256, never below the minimum, never above the trained context.
        // 1 GiB / 300 000 = 3579 → 3328.
        assert_eq!(max_context(131_072, 300_000), 3328);
        assert_eq!(max_context(131_072, 1 << 30), MIN_N_CTX);
        assert_eq!(max_context(100, 1), 100);
        assert_eq!(max_context(0, 0), DEFAULT_N_CTX);
    }

    #[test]
    fn settings_saved_before_the_context_setting_get_the_default() {
        let s: GenSettings = serde_json::from_str(
            r#"{"temperature":0.5,"top_k":40,"top_p":0.9,"max_tokens":64,"seed":1}"#,
        )
        .unwrap();
        assert_eq!(s.n_ctx, DEFAULT_N_CTX);
    }
}
