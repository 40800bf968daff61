//! The generation loop: prefill the prompt as one batch, then decode one token at a time,
//! sampling, streaming text, and stopping on end-of-generation ids, stop strings, the token
//! limit or cancellation. A [`Session`] keeps the KV cache between turns and re-runs only the
//! part of a new prompt that differs from what the cache already holds.

use std::ops::ControlFlow;

use crate::error::{Error, Result};
use crate::model::{ForwardPass, Logits};
use crate::sampler::{Sampler, SamplerParams};
use crate::tokenizer::{StreamDecoder, Tokenizer};

/// Milliseconds from some fixed origin. Natively [`StdClock`]; in the browser
/// `performance.now()` (std's `Instant` panics on wasm32-unknown-unknown).
pub trait Clock {
    fn now_ms(&self) -> f64;
}

/// [`Clock`] over `std::time::Instant` (native only).
#[cfg(not(target_arch = "wasm32"))]
#[derive(Clone, Copy, Debug)]
pub struct StdClock(std::time::Instant);

#[cfg(not(target_arch = "wasm32"))]
impl Default for StdClock {
    fn default() -> Self {
        Self(std::time::Instant::now())
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl Clock for StdClock {
    fn now_ms(&self) -> f64 {
        self.0.elapsed().as_secs_f64() * 1e3
    }
}

/// What to generate.
#[derive(Clone, Debug)]
pub struct GenerateParams {
    /// Most new tokens.
    pub max_tokens: usize,
    pub sampler: SamplerParams,
    /// Stop when the text contains one of these (the stop string itself is not emitted).
    pub stop_strings: Vec<String>,
    /// Stop on the model's end-of-generation ids (off only for reference comparisons).
    pub stop_on_eog: bool,
}

impl Default for GenerateParams {
    fn default() -> Self {
        Self {
            max_tokens: 256,
            sampler: SamplerParams::default(),
            stop_strings: Vec::new(),
            stop_on_eog: true,
        }
    }
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The model produced an end-of-generation token.
    Eog,
    /// `max_tokens` reached.
    MaxTokens,
    /// A stop string appeared.
    StopString,
    /// The token callback asked to stop.
    Cancelled,
}

impl StopReason {
    /// Lower-case name for JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::Eog => "eog",
            StopReason::MaxTokens => "max_tokens",
            StopReason::StopString => "stop_string",
            StopReason::Cancelled => "cancelled",
        }
    }
}

/// Counts and timings of one generation. Times in milliseconds.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerationStats {
    /// Prompt tokens (including any reused from the cache).
    pub n_prompt: usize,
    /// Prompt tokens actually run through the model (the rest came from the KV cache).
    pub n_prefilled: usize,
    pub n_generated: usize,
    pub stop_reason: StopReason,
    /// From the call to the first generated token.
    pub ttft_ms: f64,
    pub prefill_ms: f64,
    pub decode_ms: f64,
}

impl GenerationStats {
    /// Prefill speed in tokens/s.
    pub fn prefill_tok_s(&self) -> f64 {
        rate(self.n_prefilled, self.prefill_ms)
    }
    /// Decode speed in tokens/s (tokens after the first, over the time after the first).
    pub fn decode_tok_s(&self) -> f64 {
        rate(self.n_generated.saturating_sub(1), self.decode_ms)
    }
}

fn rate(n: usize, ms: f64) -> f64 {
    if ms > 0.0 {
        n as f64 * 1e3 / ms
    } else {
        0.0
    }
}

/// One generated token as streamed to the caller: its id and the new complete UTF-8 text it
/// finished (may be empty while a multi-byte character or a possible stop string is pending).
#[derive(Clone, Copy, Debug)]
pub struct TokenEvent<'a> {
    pub id: u32,
    pub text: &'a str,
}

/// A model plus the tokens its KV cache holds, for multi-turn chat without re-running the shared
/// prefix.
pub struct Session<M: ForwardPass> {
    pub model: M,
    /// Tokens whose keys/values are in the cache, in order (positions 0..len).
    cached: Vec<u32>,
}

impl<M: ForwardPass> Session<M> {
    pub fn new(model: M) -> Self {
        Self {
            model,
            cached: Vec::new(),
        }
    }

    /// Forget the cache (e.g. new chat).
    pub fn reset(&mut self) {
        self.cached.clear();
    }

    /// Tokens the cache holds.
    pub fn cached_tokens(&self) -> &[u32] {
        &self.cached
    }

    /// Generate a continuation of `prompt` (token ids), calling `on_token` for every new token;
    /// returning `ControlFlow::Break` from it cancels. The KV cache is reused for the longest
    /// prefix `prompt` shares with the previous call.
    ///
    /// Errors: [`Error::ContextFull`] when `prompt.len() + max_tokens` exceeds the context (checked
    /// before any work), [`Error::InvalidParam`], and the model's errors.
    pub fn generate(
        &mut self,
        tokenizer: &Tokenizer,
        prompt: &[u32],
        params: &GenerateParams,
        clock: &dyn Clock,
        on_token: &mut dyn FnMut(TokenEvent<'_>) -> ControlFlow<()>,
    ) -> Result<GenerationStats> {
        let t0 = clock.now_ms();
        let n_ctx = self.model.n_ctx();
        if prompt.is_empty() {
            return Err(Error::InvalidParam {
                name: "prompt",
                what: "is empty".into(),
            });
        }
        if prompt.len() + params.max_tokens > n_ctx {
            return Err(Error::ContextFull {
                n_prompt: prompt.len(),
                n_requested: params.max_tokens,
                n_ctx,
            });
        }
        let mut sampler = Sampler::new(params.sampler.clone())?;

        // Reuse the cached prefix; always recompute at least the last prompt token so we have
        // its logits.
        let common = self
            .cached
            .iter()
            .zip(prompt)
            .take_while(|(a, b)| a == b)
            .count();
        let reuse = common.min(prompt.len() - 1);
        self.cached.truncate(reuse);
        let todo = &prompt[reuse..];
        let mut history: Vec<u32> = Vec::with_capacity(prompt.len() + params.max_tokens);
        history.extend_from_slice(prompt);

        let logits = self.model.forward(todo, reuse, Logits::Last)?;
        self.cached.extend_from_slice(todo);
        let t_prefill = clock.now_ms();

        let mut decoder = StreamDecoder::new();
        let mut pending = String::new();
        let mut n_generated = 0;
        let mut ttft_ms = 0.0;
        let mut stop_reason = StopReason::MaxTokens;
        let mut next = sampler.sample(logits, &history);
        while n_generated < params.max_tokens {
            let id = next;
            n_generated += 1;
            if n_generated == 1 {
                ttft_ms = clock.now_ms() - t0;
            }
            history.push(id);
            if params.stop_on_eog && tokenizer.is_eog(id) {
                stop_reason = StopReason::Eog;
                break;
            }
            pending.push_str(&decoder.push(tokenizer, id));
            let (emit, stop) = split_at_stop(&pending, &params.stop_strings);
            let flow = on_token(TokenEvent {
                id,
                text: &pending[..emit],
            });
            pending.drain(..emit);
            if stop {
                stop_reason = StopReason::StopString;
                break;
            }
            if flow.is_break() {
                stop_reason = StopReason::Cancelled;
                break;
            }
            if n_generated == params.max_tokens {
                break;
            }
            let pos = self.cached.len();
            let on_device = if sampler.device_compatible() {
                let random = sampler.draw();
                self.model.decode_sample(id, pos, sampler.params(), random)
            } else {
                None
            };
            next = match on_device {
                Some(r) => r?,
                None => {
                    let logits = self.model.forward(&[id], pos, Logits::Last)?;
                    sampler.sample(logits, &history)
                }
            };
            self.cached.push(id);
        }
        if stop_reason == StopReason::MaxTokens || stop_reason == StopReason::Eog {
            // Flush what was held back (partial stop-string prefix, incomplete bytes).
            pending.push_str(&decoder.flush());
            if !pending.is_empty() {
                let _ = on_token(TokenEvent {
                    id: u32::MAX,
                    text: &pending,
                });
            }
        }
        let t_end = clock.now_ms();
        Ok(GenerationStats {
            n_prompt: prompt.len(),
            n_prefilled: todo.len(),
            n_generated,
            stop_reason,
            ttft_ms,
            prefill_ms: t_prefill - t0,
            decode_ms: (t_end - t0 - ttft_ms).max(0.0),
        })
    }
}

/// How much of `text` can be emitted: `(n_bytes, stop)`. When a stop string occurs, emit up to
/// it and stop; else hold back the longest suffix that could still grow into a stop string.
fn split_at_stop(text: &str, stops: &[String]) -> (usize, bool) {
    let mut first: Option<usize> = None;
    for s in stops.iter().filter(|s| !s.is_empty()) {
        if let Some(i) = text.find(s.as_str()) {
            first = Some(first.map_or(i, |f| f.min(i)));
        }
    }
    if let Some(i) = first {
        return (i, true);
    }
    let mut hold = 0;
    for s in stops {
        for k in (1..s.len().min(text.len() + 1)).rev() {
            if s.is_char_boundary(k) && text.ends_with(&s[..k]) {
                hold = hold.max(k);
                break;
            }
        }
    }
    (text.len() - hold, false)
}

#[cfg(test)]
mod tests {
    use super::split_at_stop;

    #[test]
    fn stop_strings_cut_and_hold_back_prefixes() {
        let stops = vec!["</s>".to_string(), "User:".to_string()];
        assert_eq!(split_at_stop("hello", &stops), (5, false));
        assert_eq!(split_at_stop("hello </", &stops), (6, false));
        assert_eq!(split_at_stop("hello </s> more", &stops), (6, true));
        assert_eq!(split_at_stop("a Use", &stops), (2, false));
        assert_eq!(split_at_stop("a User: b", &stops), (2, true));
        assert_eq!(split_at_stop("héllo", &[]), ("héllo".len(), false));
    }
}
