//! What `slm bench` and the browser's benchmark (`cargo xtask bench --browser`) share:
//! llama-bench's shape (prefill of a fixed prompt, then greedy decode of a fixed count, the
//! median of a few repetitions), so native and in-browser figures are comparable.

/// A fixed pseudo-random prompt of `n` token ids, each `< n_vocab` (`n_vocab` ≥ 1); the speed
/// does not depend on the ids.
pub fn prompt_ids(n: usize, n_vocab: usize) -> Vec<u32> {
    let v = n_vocab.max(1) as u64;
    (0..n as u64)
        .map(|i| ((i * 7919 + 13) % v) as u32)
        .collect()
}

/// Whether a prompt of `n_prompt` (≥ 1) tokens and `n_gen` more fit a context of `n_ctx`
/// (checked before anything is allocated from these numbers; no overflow).
pub fn fits(n_prompt: usize, n_gen: usize, n_ctx: usize) -> bool {
    n_prompt > 0 && n_prompt.checked_add(n_gen).is_some_and(|t| t <= n_ctx)
}

/// The median of `v` (sorted in place; the upper one of an even count); NaN when empty.
pub fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_ids_stay_in_the_vocabulary() {
        let p = prompt_ids(300, 49_152);
        assert_eq!(p.len(), 300);
        assert!(p.iter().all(|&t| t < 49_152));
        assert_eq!(prompt_ids(3, 10), [3, 2, 1]);
        assert!(prompt_ids(5, 0).iter().all(|&t| t == 0));
    }

    #[test]
    fn sizes_must_fit_the_context() {
        assert!(fits(128, 128, 256));
        assert!(!fits(128, 129, 256));
        assert!(!fits(0, 8, 256));
        assert!(!fits(usize::MAX, 2, usize::MAX));
    }

    #[test]
    fn median_of_three() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert!(median(&mut []).is_nan());
    }
}
