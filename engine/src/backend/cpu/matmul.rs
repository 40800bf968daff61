//! Quantized matrix products on the CPU: weights stay in GGUF block layout, activations are
//! quantized once per token ([`PreparedActs`]) and each weight row is streamed once per batch.
//! With several tokens (prefill) each row is decoded once ([`DecodedRow`]) and applied to all
//! of them by the tile kernels of [`quant::gemm_row`]; one token (decode) uses [`quant::vec_dot`].

use std::cell::RefCell;

use crate::quant::{self, DecodedRow, PreparedActs};
use crate::tensor::QMatrix;

/// Tokens from which a product decodes each weight row once and runs the tile kernels (below
/// it, the per-token dot products, which unpack the bits in registers, are as fast).
const GEMM_MIN_TOKENS: usize = 2;

/// Tokens per [`quant::gemm_row`] call (a stack buffer of results per row).
const GEMM_CHUNK: usize = 64;

thread_local! {
    /// Each thread's decoded-row buffer: sized on first use, then reused (no allocation per
    /// token or per call).
    static DECODED: RefCell<DecodedRow> = RefCell::new(DecodedRow::new());
}

/// The CPU worker threads. Natively a dedicated rayon pool (none for one thread, so decode pays
/// no synchronisation); in wasm always the calling thread.
pub struct CpuThreads {
    n: usize,
    #[cfg(not(target_arch = "wasm32"))]
    pool: Option<rayon::ThreadPool>,
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
            let pool = if n > 1 {
                rayon::ThreadPoolBuilder::new().num_threads(n).build().ok()
            } else {
                None
            };
            let n = if pool.is_some() { n } else { 1 };
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

/// Weight bytes × tokens below which a product runs on the calling thread: waking the pool
/// costs more than it saves on small matrices (measured on SmolLM2-135M decode, 2 cores).
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
    let gemm = n_tokens >= GEMM_MIN_TOKENS && DecodedRow::supports(w.dtype);
    let work = move |r0: usize, r1: usize| {
        let p = ptr;
        if gemm && DECODED.with(|d| gemm_rows(w, acts, r0, r1, &mut d.borrow_mut(), p)) {
            return;
        }
        for r in r0..r1 {
            let row = w.row(r);
            for (t, a) in acts.iter().enumerate() {
                let v = quant::vec_dot(w.dtype, row, a);
                // SAFETY: t * rows + r < out.len() and (t, r) pairs are disjoint across workers.
                unsafe { *p.0.add(t * rows + r) = v };
            }
        }
    };
    #[cfg(not(target_arch = "wasm32"))]
    if let Some(pool) = threads
        .pool
        .as_ref()
        .filter(|_| rows * w.row_bytes * n_tokens >= PARALLEL_MIN_BYTES)
    {
        use rayon::prelude::*;
        // Several chunks per thread balance uneven cores; multiples of 8 rows keep cache lines
        // of `out` mostly owned by one worker. Range iterators split by `join`, whose jobs live
        // on the stack: no heap allocation per call.
        let chunk = (rows / (threads.n * 4)).max(8).next_multiple_of(8);
        pool.install(|| {
            (0..rows.div_ceil(chunk))
                .into_par_iter()
                .for_each(|c| work(c * chunk, ((c + 1) * chunk).min(rows)));
        });
        return;
    }
    let _ = threads;
    work(0, rows);
}

/// Rows `r0..r1` of [`matmul`] through the tile kernels; `false` (nothing written) when the
/// activations do not match the decoded rows.
fn gemm_rows(
    w: &QMatrix,
    acts: &[PreparedActs],
    r0: usize,
    r1: usize,
    dec: &mut DecodedRow,
    p: OutPtr,
) -> bool {
    let rows = w.rows;
    let mut buf = [0f32; GEMM_CHUNK];
    for r in r0..r1 {
        dec.decode(w.dtype, w.row(r), w.cols);
        for (c, chunk) in acts.chunks(GEMM_CHUNK).enumerate() {
            let out = &mut buf[..chunk.len()];
            if !quant::gemm_row(dec, chunk, out) {
                debug_assert!(r == r0 && c == 0, "activations changed format mid-product");
                return false;
            }
            for (i, &v) in out.iter().enumerate() {
                let t = c * GEMM_CHUNK + i;
                // SAFETY: t * rows + r < out.len() and (t, r) pairs are disjoint across workers.
                unsafe { *p.0.add(t * rows + r) = v };
            }
        }
    }
    true
}
