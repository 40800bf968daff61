//! Sampling the next token from logits: greedy, repetition penalty, top-k, top-p (nucleus,
//! Holtzman et al. 2019), min-p, temperature, with a seeded RNG so the same seed gives the same
//! text. Order follows llama.cpp's default chain (`common/sampling.cpp`): penalties → top-k →
//! top-p → min-p → temperature → draw.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::error::{Error, Result};

/// Temperatures below this are greedy: `1 / T` would overflow to infinity (below ~3e-39) and
/// the draw would be from NaN probabilities; long before that, the distribution is an argmax.
pub const MIN_TEMPERATURE: f32 = 1e-4;

/// Largest top-k with which the GPU samples with min-p (its many-workgroup sampler's candidate
/// limit, `SAMPLE_TOPK_MAX`).
pub const DEVICE_MIN_P_TOP_K: usize = 64;

/// Sampling settings. `temperature < MIN_TEMPERATURE` means greedy (argmax of the penalised
/// logits).
#[derive(Clone, Debug, PartialEq)]
pub struct SamplerParams {
    pub temperature: f32,
    /// Keep the k most likely tokens; 0 = off.
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches p; 1.0 = off.
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` × the most likely one; 0.0 = off.
    pub min_p: f32,
    /// Divide positive (multiply negative) logits of recent tokens by this; 1.0 = off.
    pub repeat_penalty: f32,
    /// How many recent tokens the penalty looks at.
    pub repeat_last_n: usize,
    pub seed: u64,
}

impl Default for SamplerParams {
    fn default() -> Self {
        Self {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: 0,
        }
    }
}

impl SamplerParams {
    /// Greedy decoding (what the llama.cpp goldens use).
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            ..Self::default()
        }
    }

    /// Check ranges. Errors: [`Error::InvalidParam`].
    pub fn validate(&self) -> Result<()> {
        let bad = |name, what: String| Err(Error::InvalidParam { name, what });
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return bad("temperature", format!("{} must be ≥ 0", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", format!("{} must be in (0, 1]", self.top_p));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad("min_p", format!("{} must be in [0, 1]", self.min_p));
        }
        if !self.repeat_penalty.is_finite() || self.repeat_penalty <= 0.0 {
            return bad(
                "repeat_penalty",
                format!("{} must be > 0", self.repeat_penalty),
            );
        }
        Ok(())
    }
}

/// A sampler with its RNG and reusable candidate buffer (no allocation per token once warm).
pub struct Sampler {
    params: SamplerParams,
    rng: SmallRng,
    /// (token id, logit → probability) candidates.
    cand: Vec<(u32, f32)>,
    /// Distinct recent tokens for the repetition penalty.
    recent: Vec<u32>,
}

impl Sampler {
    /// Errors: [`Error::InvalidParam`].
    pub fn new(mut params: SamplerParams) -> Result<Self> {
        params.validate()?;
        if params.temperature < MIN_TEMPERATURE {
            params.temperature = 0.0;
        }
        let rng = SmallRng::seed_from_u64(params.seed);
        Ok(Self {
            params,
            rng,
            cand: Vec::new(),
            recent: Vec::new(),
        })
    }

    /// The settings.
    pub fn params(&self) -> &SamplerParams {
        &self.params
    }

    /// Whether a device sampler gives the same distribution: no repetition penalty, and min-p
    /// only with greedy decoding or top-k in 1..=[`DEVICE_MIN_P_TOP_K`] (the GPU's many-workgroup
    /// sampler, which runs this chain in this order; the one-workgroup one has no min-p).
    pub fn device_compatible(&self) -> bool {
        let p = &self.params;
        p.repeat_penalty == 1.0
            && (p.temperature <= 0.0
                || p.min_p == 0.0
                || (1..=DEVICE_MIN_P_TOP_K).contains(&p.top_k))
    }

    /// A uniform draw in [0, 1) from this sampler's RNG (for a device sampler).
    pub fn draw(&mut self) -> f32 {
        self.rng.random()
    }

    /// Pick the next token from `logits` (n_vocab), given the tokens so far (`history`, for the
    /// repetition penalty). Draws one uniform value from the RNG unless greedy.
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        let r = if self.params.temperature <= 0.0 {
            0.0
        } else {
            self.rng.random()
        };
        self.sample_with(logits, history, r)
    }

    /// [`Sampler::sample`] with the uniform draw `r` in [0, 1) given (what a device sampler is
    /// compared with for the same draw).
    pub fn sample_with(&mut self, logits: &[f32], history: &[u32], r: f32) -> u32 {
        let p = &self.params;
        self.cand.clear();
        self.cand
            .extend(logits.iter().enumerate().map(|(i, &l)| (i as u32, l)));
        if p.repeat_penalty != 1.0 {
            // Each distinct recent token is penalised once, as in llama.cpp.
            self.recent.clear();
            self.recent
                .extend_from_slice(&history[history.len().saturating_sub(p.repeat_last_n)..]);
            self.recent.sort_unstable();
            self.recent.dedup();
            for &t in &self.recent {
                if let Some(c) = self.cand.get_mut(t as usize) {
                    c.1 = if c.1 > 0.0 {
                        c.1 / p.repeat_penalty
                    } else {
                        c.1 * p.repeat_penalty
                    };
                }
            }
        }
        if p.temperature <= 0.0 {
            return argmax_cand(&self.cand);
        }

        // Top-k: keep the k largest, sorted descending.
        let by_logit = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1);
        let k = if p.top_k == 0 {
            self.cand.len()
        } else {
            p.top_k.min(self.cand.len())
        };
        if k < self.cand.len() {
            self.cand.select_nth_unstable_by(k - 1, by_logit);
            self.cand.truncate(k);
        }
        self.cand.sort_unstable_by(by_logit);

        // Probabilities at temperature 1 for the top-p / min-p cut-offs.
        softmax_cand(&mut self.cand, 1.0);
        if p.top_p < 1.0 {
            let mut cum = 0.0;
            let mut keep = self.cand.len();
            for (i, c) in self.cand.iter().enumerate() {
                cum += c.1;
                if cum >= p.top_p {
                    keep = i + 1;
                    break;
                }
            }
            self.cand.truncate(keep);
        }
        if p.min_p > 0.0 {
            let floor = self.cand[0].1 * p.min_p;
            let keep = self.cand.iter().take_while(|c| c.1 >= floor).count().max(1);
            self.cand.truncate(keep);
        }

        // Temperature on the survivors: p_i^(1/T) renormalised equals softmax(logit_i / T).
        let inv_t = 1.0 / p.temperature;
        for c in self.cand.iter_mut() {
            c.1 = c.1.max(f32::MIN_POSITIVE).ln() * inv_t;
        }
        softmax_cand(&mut self.cand, 1.0);
        let mut cum = 0.0;
        for c in &self.cand {
            cum += c.1;
            if r < cum {
                return c.0;
            }
        }
        self.cand.last().map_or(0, |c| c.0)
    }
}

fn argmax_cand(c: &[(u32, f32)]) -> u32 {
    let mut best = 0;
    for i in 1..c.len() {
        if c[i].1 > c[best].1 {
            best = i;
        }
    }
    c.get(best).map_or(0, |c| c.0)
}

fn softmax_cand(c: &mut [(u32, f32)], scale: f32) {
    let max = c.iter().map(|c| c.1).fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for x in c.iter_mut() {
        x.1 = ((x.1 - max) * scale).exp();
        sum += x.1;
    }
    for x in c.iter_mut() {
        x.1 /= sum;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        (0..100).map(|i| ((i * 37 % 100) as f32) * 0.1).collect()
    }

    #[test]
    fn greedy_is_argmax_and_penalty_changes_it() {
        let l = logits();
        let best = crate::backend::cpu::ops::argmax(&l);
        let mut s = Sampler::new(SamplerParams::greedy()).unwrap();
        assert_eq!(s.sample(&l, &[]), best);
        let mut s = Sampler::new(SamplerParams {
            repeat_penalty: 100.0,
            ..SamplerParams::greedy()
        })
        .unwrap();
        assert_ne!(s.sample(&l, &[best, best]), best);
    }

    #[test]
    fn same_seed_same_tokens_and_top_k_one_is_greedy() {
        let l = logits();
        let run = |seed| {
            let mut s = Sampler::new(SamplerParams {
                temperature: 1.5,
                top_k: 0,
                top_p: 1.0,
                min_p: 0.0,
                seed,
                ..Default::default()
            })
            .unwrap();
            (0..50).map(|_| s.sample(&l, &[])).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
        let mut s = Sampler::new(SamplerParams {
            temperature: 2.0,
            top_k: 1,
            ..Default::default()
        })
        .unwrap();
        let best = crate::backend::cpu::ops::argmax(&l);
        assert!((0..20).all(|_| s.sample(&l, &[]) == best));
    }

    #[test]
    fn top_p_and_min_p_restrict_the_support() {
        // One dominant token (p ≈ 0.9) and many small ones.
        let mut l = vec![0.0f32; 50];
        l[3] = 6.0;
        let mut s = Sampler::new(SamplerParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.5,
            min_p: 0.0,
            ..Default::default()
        })
        .unwrap();
        assert!((0..50).all(|_| s.sample(&l, &[]) == 3));
        let mut s = Sampler::new(SamplerParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.2,
            ..Default::default()
        })
        .unwrap();
        assert!((0..50).all(|_| s.sample(&l, &[]) == 3));
        let mut s = Sampler::new(SamplerParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed: 1,
            ..Default::default()
        })
        .unwrap();
        assert!((0..200).any(|_| s.sample(&l, &[]) != 3));
    }

    #[test]
    fn tiny_temperatures_are_greedy() {
        let l = logits();
        let best = crate::backend::cpu::ops::argmax(&l);
        for t in [1e-39f32, 1e-30, 1e-6] {
            let mut s = Sampler::new(SamplerParams {
                temperature: t,
                ..Default::default()
            })
            .unwrap();
            assert_eq!(s.params().temperature, 0.0);
            assert!((0..20).all(|_| s.sample(&l, &[]) == best), "T = {t}");
        }
    }

    #[test]
    fn invalid_params_are_rejected() {
        assert!(Sampler::new(SamplerParams {
            top_p: 0.0,
            ..Default::default()
        })
        .is_err());
        assert!(Sampler::new(SamplerParams {
            temperature: -1.0,
            ..Default::default()
        })
        .is_err());
        assert!(Sampler::new(SamplerParams {
            repeat_penalty: 0.0,
            ..Default::default()
        })
        .is_err());
    }
}
