//! Quantized matrix products on the CPU: weights stay in GGUF block layout, activations are
//! quantized once per token ([`PreparedActs`]) and each weight row is streamed once per batch.
//! With several tokens (prefill) each weight block is unpacked once per tile of tokens
//! ([`quant::vec_dot_tile`]), with results identical to the one-token [`quant::vec_dot`].

#[cfg(not(target_arch = "wasm32"))]
use super::pool::Pool;
use crate::quant::{self, PreparedActs};
use crate::tensor::QMatrix;

/// Tokens per [`quant::vec_dot_tile`] call (a stack buffer of results per row).
const TILE_CHUNK: usize = 64;

/// The CPU worker threads. Natively a [`Pool`] of spinning workers (none for one thread, so
/// decode pays no synchronisation); in wasm always the calling thread.
pub struct CpuThreads {
    n: usize,
    #[cfg(not(target_arch = "wasm32"))]
    pool: Option<Pool>,
}

impl std::fmt::Debug for CpuThreads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CpuThreads({})", self.n)
    }
}

impl CpuThreads {
    /// `n` threads (0 = all available cores).
    pub fn new(n: usize) -> Self {
        #[cfg(not(target_arch = "wasm32"))]
        {
            let n = if n == 0 {
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(1)
            } else {
                n
            };
            let pool = if n > 1 { Pool::new(n) } else { None };
            let n = pool.as_ref().map_or(1, Pool::threads);
            Self { n, pool }
        }
        #[cfg(target_arch = "wasm32")]
        {
            let _ = n;
            Self { n: 1 }
        }
    }

    /// Number of threads used.
    pub fn count(&self) -> usize {
        self.n
    }
}

/// Weight bytes × tokens below which a product runs on the calling thread. With the spinning
/// pool a job starts within ~1 µs, so on an idle machine far smaller products (64 KiB, all of
/// SmolLM2's decode) should pay; but on this shared 2-core machine (load 7–13) splitting them
/// made 2-thread decode 0.6× the 1-thread speed (a worker descheduled inside a job stalls the
/// step), so decode-sized products stay on one thread until that is measured idle.
#[cfg(not(target_arch = "wasm32"))]
const PARALLEL_MIN_BYTES: usize = 1 << 20;

/// Raw output pointer shared by workers that write disjoint elements.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: workers write disjoint indices (distinct weight rows) of one live `&mut [f32]`.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// `out = x · wᵀ`: x: (n_tokens, cols) given as one [`PreparedActs`] per token (prepared for
/// `w.dtype`); w: (rows, cols); out: (n_tokens, rows) row-major.
pub fn matmul(w: &QMatrix, acts: &[PreparedActs], out: &mut [f32], threads: &CpuThreads) {
    let rows = w.rows;
    let n_tokens = acts.len();
    assert_eq!(out.len(), n_tokens * rows, "matmul output length");
    let ptr = OutPtr(out.as_mut_ptr());
    let work = move |r0: usize, r1: usize| {
        let p = ptr;
        let mut buf = [0f32; TILE_CHUNK];
        for r in r0..r1 {
            let row = w.row(r);
            if n_tokens == 1 {
                // SAFETY: r < out.len() and rows are disjoint across workers.
                unsafe { *p.0.add(r) = quant::vec_dot(w.dtype, row, &acts[0]) };
                continue;
            }
            for (c, chunk) in acts.chunks(TILE_CHUNK).enumerate() {
                let o = &mut buf[..chunk.len()];
                quant::vec_dot_tile(w.dtype, row, chunk, o);
                for (i, &v) in o.iter().enumerate() {
                    let t = c * TILE_CHUNK + i;
                    // SAFETY: t * rows + r < out.len() and (t, r) pairs are disjoint across
                    // workers.
                    unsafe { *p.0.add(t * rows + r) = v };
                }
            }
        }
    };
    #[cfg(not(target_arch = "wasm32"))]
    if let Some(pool) = threads
        .pool
        .as_ref()
        .filter(|_| rows * w.row_bytes * n_tokens >= PARALLEL_MIN_BYTES)
    {
        // Several chunks per thread balance uneven cores (a busy machine); multiples of 8 rows
        // keep cache lines of `out` mostly owned by one worker.
        let chunk = (rows / (threads.n * 4)).max(8).next_multiple_of(8);
        pool.run(rows.div_ceil(chunk), &|c| {
            work(c * chunk, ((c + 1) * chunk).min(rows))
        });
        return;
    }
    let _ = threads;
    work(0, rows);
}
