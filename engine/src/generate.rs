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
    /// prefix `prompt` shares with the previous call. A blocking driver of [`Generation`].
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
        let n_ctx = self.model.n_ctx();
        let (mut gen, reuse) = Generation::begin(&mut self.cached, prompt, params, n_ctx, clock)?;
        let todo = &prompt[reuse..];
        let logits = self.model.forward(todo, reuse, Logits::Last)?;
        self.cached.extend_from_slice(todo);
        gen.prefilled(logits, clock);
        while let Step::Token { event, decode } = gen.step(tokenizer, clock) {
            if on_token(event).is_break() {
                gen.cancel();
                break;
            }
            let Some(id) = decode else { break };
            let pos = self.cached.len();
            let on_device = match gen.device_sampling() {
                Some((sp, random)) => self.model.decode_sample(id, pos, sp, random),
                None => None,
            };
            match on_device {
                Some(next) => gen.sampled(next?),
                None => {
                    let logits = self.model.forward(&[id], pos, Logits::Last)?;
                    gen.sample(logits);
                }
            }
            self.cached.push(id);
        }
        let (tail, stats) = gen.finish(clock);
        if !tail.is_empty() {
            let _ = on_token(TokenEvent {
                id: u32::MAX,
                text: &tail,
            });
        }
        Ok(stats)
    }
}

/// What [`Generation::step`] hands the driver.
#[derive(Debug)]
pub enum Step<'a> {
    /// A new token to stream. `decode: Some(id)` asks for the decode pass of `id` at the next
    /// cache position, its result given back through [`Generation::sample`] (logits) or
    /// [`Generation::sampled`] (an id sampled on the device); `None` means this was the last
    /// token.
    Token {
        event: TokenEvent<'a>,
        decode: Option<u32>,
    },
    /// Generation ended (end-of-generation token, or nothing pending).
    Done,
}

/// One reply's token-by-token state: sampler, history, streamed text, stop conditions and
/// timings, without the model. [`Session::generate`] drives it in a blocking loop; the browser
/// worker drives it across `await`s (GPU read-backs, yields that let a stop request in).
///
/// The driver's protocol: [`Generation::begin`] (plans the prefill against the KV cache) →
/// run the prefill → [`Generation::prefilled`] → repeat [`Generation::step`] and, when it asks,
/// the decode pass → [`Generation::finish`].
pub struct Generation {
    sampler: Sampler,
    history: Vec<u32>,
    decoder: StreamDecoder,
    /// Decoded text not yet streamed (held back while it could still become a stop string).
    pending: String,
    /// Bytes of `pending` handed out by the last step, dropped at the next.
    emitted: usize,
    /// The sampled token the next step hands out.
    next: Option<u32>,
    max_tokens: usize,
    stop_on_eog: bool,
    stop_strings: Vec<String>,
    n_prompt: usize,
    n_prefilled: usize,
    n_generated: usize,
    stop_reason: Option<StopReason>,
    t0: f64,
    t_prefill: f64,
    ttft_ms: f64,
}

impl Generation {
    /// Validate the request and plan its prefill against `cached` (the tokens whose keys/values
    /// the cache holds): the longest shared prefix is kept, except that the last prompt token is
    /// always recomputed for its logits. Truncates `cached` to that prefix and returns the
    /// generation plus `reuse`, the position where prefill starts; the driver then runs
    /// `prompt[reuse..]` at positions `reuse..` and appends those tokens to `cached`.
    ///
    /// Errors: [`Error::InvalidParam`] for an empty prompt or bad sampler values,
    /// [`Error::ContextFull`] when `prompt.len() + max_tokens > n_ctx` (before any work).
    pub fn begin(
        cached: &mut Vec<u32>,
        prompt: &[u32],
        params: &GenerateParams,
        n_ctx: usize,
        clock: &dyn Clock,
    ) -> Result<(Self, usize)> {
        let t0 = clock.now_ms();
        if prompt.is_empty() {
            return Err(Error::InvalidParam {
                name: "prompt",
                what: "is empty".into(),
            });
        }
        if prompt
            .len()
            .checked_add(params.max_tokens)
            .is_none_or(|total| total > n_ctx)
        {
            return Err(Error::ContextFull {
                n_prompt: prompt.len(),
                n_requested: params.max_tokens,
                n_ctx,
            });
        }
        let sampler = Sampler::new(params.sampler.clone())?;
        let common = cached
            .iter()
            .zip(prompt)
            .take_while(|(a, b)| a == b)
            .count();
        let reuse = common.min(prompt.len() - 1);
        cached.truncate(reuse);
        // Both are within n_ctx (checked above).
        let mut history = Vec::with_capacity(prompt.len() + params.max_tokens);
        history.extend_from_slice(prompt);
        let gen = Self {
            sampler,
            history,
            decoder: StreamDecoder::new(),
            pending: String::new(),
            emitted: 0,
            next: None,
            max_tokens: params.max_tokens,
            stop_on_eog: params.stop_on_eog,
            stop_strings: params.stop_strings.clone(),
            n_prompt: prompt.len(),
            n_prefilled: prompt.len() - reuse,
            n_generated: 0,
            stop_reason: None,
            t0,
            t_prefill: t0,
            ttft_ms: 0.0,
        };
        Ok((gen, reuse))
    }

    /// The prefill ran: `logits` (n_vocab) of the last prompt token. Samples the first token.
    pub fn prefilled(&mut self, logits: &[f32], clock: &dyn Clock) {
        self.t_prefill = clock.now_ms();
        self.sample(logits);
    }

    /// Hand out the pending token: checks the end conditions (end-of-generation id, stop
    /// strings, `max_tokens`) and decodes its text.
    pub fn step(&mut self, tokenizer: &Tokenizer, clock: &dyn Clock) -> Step<'_> {
        self.pending.drain(..self.emitted);
        self.emitted = 0;
        if self.n_generated >= self.max_tokens {
            self.stop_reason.get_or_insert(StopReason::MaxTokens);
            return Step::Done;
        }
        let Some(id) = (if self.stop_reason.is_none() {
            self.next.take()
        } else {
            None
        }) else {
            return Step::Done;
        };
        self.n_generated += 1;
        if self.n_generated == 1 {
            self.ttft_ms = clock.now_ms() - self.t0;
        }
        self.history.push(id);
        if self.stop_on_eog && tokenizer.is_eog(id) {
            self.stop_reason = Some(StopReason::Eog);
            return Step::Done;
        }
        self.pending.push_str(&self.decoder.push(tokenizer, id));
        let (emit, stop) = split_at_stop(&self.pending, &self.stop_strings);
        self.emitted = emit;
        let decode = if stop {
            self.stop_reason = Some(StopReason::StopString);
            None
        } else if self.n_generated >= self.max_tokens {
            self.stop_reason = Some(StopReason::MaxTokens);
            None
        } else {
            Some(id)
        };
        Step::Token {
            event: TokenEvent {
                id,
                text: &self.pending[..emit],
            },
            decode,
        }
    }

    /// Sampling on the device: `Some((params, a uniform draw in [0, 1)))` when the sampler's
    /// settings allow it (see [`Sampler::device_compatible`]); the driver then runs a
    /// decode-and-sample pass and reports its id with [`Generation::sampled`].
    pub fn device_sampling(&mut self) -> Option<(&SamplerParams, f32)> {
        if !self.sampler.device_compatible() {
            return None;
        }
        let random = self.sampler.draw();
        Some((self.sampler.params(), random))
    }

    /// The decode pass ran: pick the next token from its `logits` (n_vocab) on the host.
    pub fn sample(&mut self, logits: &[f32]) {
        self.next = Some(self.sampler.sample(logits, &self.history));
    }

    /// The decode pass ran and sampled `id` on the device.
    pub fn sampled(&mut self, id: u32) {
        self.next = Some(id);
    }

    /// Stop (e.g. the user pressed Stop). The text handed out so far stays the reply.
    pub fn cancel(&mut self) {
        if self.stop_reason.is_none() {
            self.stop_reason = Some(StopReason::Cancelled);
        }
        self.next = None;
    }

    /// End: the text still held back (incomplete UTF-8, a partial stop-string prefix), to stream
    /// unless generation was cancelled or cut by a stop string, and the counts and timings.
    pub fn finish(mut self, clock: &dyn Clock) -> (String, GenerationStats) {
        self.pending.drain(..self.emitted);
        let stop_reason = self.stop_reason.unwrap_or(StopReason::Cancelled);
        let tail = match stop_reason {
            StopReason::MaxTokens | StopReason::Eog => {
                self.pending.push_str(&self.decoder.flush());
                std::mem::take(&mut self.pending)
            }
            StopReason::StopString | StopReason::Cancelled => String::new(),
        };
        let t_end = clock.now_ms();
        let prefill_ms = if self.t_prefill > self.t0 {
            self.t_prefill - self.t0
        } else {
            t_end - self.t0
        };
        let stats = GenerationStats {
            n_prompt: self.n_prompt,
            n_prefilled: self.n_prefilled,
            n_generated: self.n_generated,
            stop_reason,
            ttft_ms: self.ttft_ms,
            prefill_ms,
            decode_ms: (t_end - self.t0 - self.ttft_ms).max(0.0),
        };
        (tail, stats)
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
