//! A short speed probe of the CPU path, run before any model is downloaded: how many bytes of
//! quantized weights per second this machine's decode kernel (SIMD where available, the one
//! [`crate::quant::vec_dot`] picks) streams through. Decode reads every weight once per token,
//! so a model of `w` weight bytes decodes at about `throughput / w` tokens per second on one
//! thread (the app shows that as the expected speed before a download).

use crate::generate::Clock;
use crate::quant::{self, GgmlDType, PreparedActs, QK_K};
use crate::tensor::AlignedBytes;

/// Columns of the probe matrix: the hidden size of a 1B-class model.
const COLS: usize = 2048;
/// Rows: 16 MiB of Q4_K weights (144 bytes per 256 weights), more than most caches, so the
/// figure includes the trip from memory as a real decode does.
const ROWS: usize = 16 * 1024 * 1024 / (COLS / QK_K * 144);

/// What [`cpu_weight_throughput`] measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CpuProbe {
    /// Weight bytes per second through the Q4_K dot product (one thread).
    pub bytes_per_s: f64,
    /// Wall time the probe took, in ms.
    pub elapsed_ms: f64,
}

impl CpuProbe {
    /// Expected decode speed (tokens/s, one thread) of a model whose decode reads
    /// `weight_bytes` per token; `None` for an empty model.
    pub fn expected_tok_s(&self, weight_bytes: u64) -> Option<f64> {
        (weight_bytes > 0).then(|| self.bytes_per_s / weight_bytes as f64)
    }
}

/// Stream Q4_K rows of a 16 MiB synthetic matrix through the decode dot product until
/// `budget_ms` has passed (at least one full pass over the matrix); the rate of the fastest
/// pass. Allocates 16 MiB for the
/// duration; deterministic contents (finite f16 scales), so nothing depends on the machine but
/// the time.
pub fn cpu_weight_throughput(clock: &dyn Clock, budget_ms: f64) -> CpuProbe {
    let block = 144;
    let row_bytes = COLS / QK_K * block;
    let mut w = AlignedBytes::zeroed(ROWS * row_bytes);
    let mut seed = 0x9e37_79b9_u32;
    for (i, b) in w.as_mut_slice().iter_mut().enumerate() {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        *b = match i % block {
            // d and dmin: f16 1/1024, finite.
            0 | 2 => 0x00,
            1 | 3 => 0x14,
            _ => seed as u8,
        };
    }
    let x: Vec<f32> = (0..COLS).map(|i| ((i % 7) as f32 - 3.0) * 0.25).collect();
    let mut acts = PreparedActs::new();
    acts.prepare(GgmlDType::Q4K, &x);
    let data = w.as_slice();
    // The best full pass counts: the first passes of a fresh wasm module run in the baseline
    // compiler until the optimising tier takes over, and a busy machine slows single passes.
    let t0 = clock.now_ms();
    let mut best_ms = f64::INFINITY;
    let mut sink = 0.0f32;
    loop {
        let p0 = clock.now_ms();
        for r in 0..ROWS {
            sink += quant::vec_dot(
                GgmlDType::Q4K,
                &data[r * row_bytes..(r + 1) * row_bytes],
                &acts,
            );
        }
        let now = clock.now_ms();
        best_ms = best_ms.min(now - p0);
        if now - t0 >= budget_ms {
            break;
        }
    }
    std::hint::black_box(sink);
    let elapsed_ms = clock.now_ms() - t0;
    CpuProbe {
        bytes_per_s: (ROWS * row_bytes) as f64 / (best_ms.max(1e-3) / 1e3),
        elapsed_ms,
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;
    use crate::generate::StdClock;

    #[test]
    fn probe_measures_a_plausible_rate_within_its_budget() {
        let p = cpu_weight_throughput(&StdClock::default(), 100.0);
        assert!(p.elapsed_ms >= 100.0 && p.elapsed_ms < 5_000.0, "{p:?}");
        // Anything that decodes at all streams more than 50 MB/s and less than 1 TB/s.
        assert!(p.bytes_per_s > 5e7 && p.bytes_per_s < 1e12, "{p:?}");
        let t = p.expected_tok_s(98_000_000).unwrap();
        assert!((t - p.bytes_per_s / 98e6).abs() < 1e-9);
        assert_eq!(p.expected_tok_s(0), None);
    }
}
