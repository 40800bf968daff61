//! Quantized matrix products on the CPU: weights stay in GGUF block layout, activations are
//! quantized once per token ([`PreparedActs`]) and each weight row is streamed once per batch.
//! With several tokens (prefill) each weight block is unpacked once per tile of tokens
//! ([`quant::vec_dot_tile`]), with results identical to the one-token [`quant::vec_dot`].

use super::pool::Pool;
use crate::quant::{self, PreparedActs};
use crate::tensor::QMatrix;

/// Tokens per [`quant::vec_dot_tile`] call (a stack buffer of results per row).
const TILE_CHUNK: usize = 64;

/// The CPU worker threads: a [`Pool`] of spinning workers (none for one thread, so decode pays
/// no synchronisation). In wasm the pool's workers are Web Workers, in the multi-threaded build
/// only ([`super::set_thread_spawner`]); otherwise everything runs on the calling thread.
pub struct CpuThreads {
    n: usize,
    pool: Option<Pool>,
}

impl std::fmt::Debug for CpuThreads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CpuThreads({})", self.n)
    }
}

impl CpuThreads {
    /// `n` threads (0 = all available cores; 1 in wasm, which cannot tell). Fewer when threads
    /// cannot be started (wasm without a spawner: 1).
    pub fn new(n: usize) -> Self {
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

    /// Number of threads used.
    pub fn count(&self) -> usize {
        self.n
    }

    /// Runs `f(i)` for every `i in 0..n`: on the pool's threads and the caller, or on the
    /// caller alone when there is no pool. Returns when all are done.
    pub(crate) fn run(&self, n: usize, f: &(dyn Fn(usize) + Sync)) {
        match &self.pool {
            Some(pool) => pool.run(n, f),
            None => (0..n).for_each(f),
        }
    }

    /// Row chunks of all products so far that a worker thread (not the caller) computed: whether
    /// the workers take part (the browser shows it per reply).
    pub fn helped(&self) -> usize {
        self.pool.as_ref().map_or(0, Pool::helped)
    }
}

/// Weight bytes × tokens below which a product runs on the calling thread. With the spinning
/// pool a job starts within ~1 µs, so decode-sized products (SmolLM2's 576 × 576 Q4_1: 180 KiB)
/// pay. Measured on this 2-core machine at load ≈ 2 (2026-11-29, `slm bench`, 64-token prompt,
/// 128 tokens, medians of 3 interleaved rounds): 2-thread decode with this 64 KiB threshold
/// 1.22× the 1-thread speed for SmolLM2-135M Q4_1 and 1.37× for Gemma-3-270M Q4_K_M, where a
/// 1 MiB threshold (no decode product split) gave 0.89× and 1.08×. Under heavy load (7–13)
/// splitting them was 0.6×: a worker descheduled inside a job stalls the step.
const PARALLEL_MIN_BYTES: usize = 64 << 10;

/// Raw output pointer shared by workers that write disjoint elements.
#[derive(Clone, Copy)]
pub(crate) struct OutPtr(pub(crate) *mut f32);
// SAFETY: workers write disjoint indices (distinct weight rows; distinct attention rows and
// scores stretches) of one live `&mut [f32]`.
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
    if let Some(pool) = threads
        .pool
        .as_ref()
        .filter(|_| rows * w.row_bytes * n_tokens >= PARALLEL_MIN_BYTES)
    {
        // Several chunks per thread balance uneven cores (a busy machine); multiples of 8 rows
        // keep cache lines of `out` mostly owned by one worker.
        let chunk = (rows / (threads.n * 4)).max(8).next_multiple_of(8);
        let job = |c: usize| work(c * chunk, ((c + 1) * chunk).min(rows));
        if n_tokens == 1 {
            pool.run_short(rows.div_ceil(chunk), &job);
        } else {
            pool.run(rows.div_ceil(chunk), &job);
        }
        return;
    }
    work(0, rows);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::GgmlDType;
    use crate::tensor::AlignedBytes;

    /// Q8_0 weights (rows, cols) from a seed: scale 1/64, codes in -127..=127.
    fn q8_0(rows: usize, cols: usize, seed: u64) -> QMatrix {
        let row_bytes = GgmlDType::Q8_0.row_bytes(cols).unwrap();
        let mut bytes = vec![0u8; rows * row_bytes];
        let mut s = seed;
        let d = half::f16::from_f32(1.0 / 64.0).to_le_bytes();
        for block in bytes.chunks_mut(34) {
            block[..2].copy_from_slice(&d);
            for q in &mut block[2..] {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                *q = ((s >> 33) % 255) as u8 ^ 0x80;
            }
        }
        QMatrix::new(
            "w",
            GgmlDType::Q8_0,
            rows,
            cols,
            AlignedBytes::from_slice(&bytes),
        )
        .unwrap()
    }

    /// The products are bit for bit the same on 1 thread and on several, for decode (one
    /// token) and prefill (a tile batch), with matrices large enough to be split.
    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        let (rows, cols) = (4096, 256); // 4096 × 272 bytes: over PARALLEL_MIN_BYTES
        assert!(rows * GgmlDType::Q8_0.row_bytes(cols).unwrap() >= PARALLEL_MIN_BYTES);
        let w = q8_0(rows, cols, 7);
        let one = CpuThreads::new(1);
        let three = CpuThreads::new(3);
        for n_tokens in [1, 5] {
            let acts: Vec<PreparedActs> = (0..n_tokens)
                .map(|t| {
                    let x: Vec<f32> = (0..cols)
                        .map(|i| ((i * 7 + t * 13) % 17) as f32 * 0.1 - 0.8)
                        .collect();
                    let mut a = PreparedActs::new();
                    a.prepare(w.dtype, &x);
                    a
                })
                .collect();
            let mut a = vec![0f32; n_tokens * rows];
            let mut b = vec![1f32; n_tokens * rows];
            matmul(&w, &acts, &mut a, &one);
            for _ in 0..20 {
                matmul(&w, &acts, &mut b, &three);
                assert!(
                    a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
                    "{n_tokens} tokens: 3 threads differ from 1"
                );
            }
        }
        assert_eq!(one.helped(), 0);
    }
}
