//! The token-by-token [`Generation`] driver (what the browser worker runs across `await`s)
//! against the blocking [`Session::generate`] on the real SmolLM2 model: same tokens and text
//! with a prefill split into slices, cancellation between tokens keeps a usable KV cache, stop
//! strings cut the reply.
mod common;
use common::*;
use std::ops::ControlFlow;

use engine::backend::{self, BackendChoice, LoadedModel};
use engine::generate::{GenerateParams, Generation, Session, StdClock, Step, StopReason};
use engine::gguf::{FileSource, GgufFile};
use engine::model::{ForwardPass, Logits};
use engine::sampler::SamplerParams;
use engine::tokenizer::Tokenizer;

const N_CTX: usize = 256;
const PROMPT: &str = "The three primary colors are";

fn setup() -> (LoadedModel, Tokenizer, Vec<u32>) {
    let src = FileSource::open(model_path(SMOLLM2)).unwrap();
    let g = GgufFile::parse(&src).unwrap();
    let tok = Tokenizer::from_gguf(&g).unwrap();
    let (model, _) = backend::load(&g, &src, BackendChoice::Cpu, N_CTX, 2).unwrap();
    let ids = tok.encode(PROMPT, true, false).unwrap();
    (model, tok, ids)
}

fn params(max_tokens: usize, stop: &[&str]) -> GenerateParams {
    GenerateParams {
        max_tokens,
        sampler: SamplerParams {
            temperature: 0.0,
            ..SamplerParams::default()
        },
        stop_strings: stop.iter().map(|s| s.to_string()).collect(),
        stop_on_eog: true,
    }
}

/// What one reply produced: ids, streamed text, stop reason, tokens prefilled.
#[derive(Debug, PartialEq)]
struct Reply {
    ids: Vec<u32>,
    text: String,
    reason: StopReason,
    n_prefilled: usize,
}

fn session_reply(
    s: &mut Session<LoadedModel>,
    tok: &Tokenizer,
    prompt: &[u32],
    p: &GenerateParams,
) -> Reply {
    let (mut ids, mut text) = (Vec::new(), String::new());
    let st = s
        .generate(tok, prompt, p, &StdClock::default(), &mut |ev| {
            if ev.id != u32::MAX {
                ids.push(ev.id);
            }
            text.push_str(ev.text);
            ControlFlow::Continue(())
        })
        .unwrap();
    Reply {
        ids,
        text,
        reason: st.stop_reason,
        n_prefilled: st.n_prefilled,
    }
}

/// Drive [`Generation`] by hand: prefill in slices of `slice` tokens, cancel after `cancel_after`
/// tokens (if given).
fn stepped_reply(
    model: &mut LoadedModel,
    cached: &mut Vec<u32>,
    tok: &Tokenizer,
    prompt: &[u32],
    p: &GenerateParams,
    slice: usize,
    cancel_after: Option<usize>,
) -> Reply {
    let clock = StdClock::default();
    let (mut gen, reuse) = Generation::begin(cached, prompt, p, model.n_ctx(), &clock).unwrap();
    assert_eq!(cached.len(), reuse);
    let mut last = Vec::new();
    for part in prompt[reuse..].chunks(slice) {
        last = model
            .forward(part, cached.len(), Logits::Last)
            .unwrap()
            .to_vec();
        cached.extend_from_slice(part);
    }
    gen.prefilled(&last, &clock);
    let (mut ids, mut text) = (Vec::new(), String::new());
    while let Step::Token { event, decode } = gen.step(tok, &clock) {
        ids.push(event.id);
        text.push_str(event.text);
        if cancel_after == Some(ids.len()) {
            gen.cancel();
            break;
        }
        let Some(id) = decode else { break };
        let logits = model.forward(&[id], cached.len(), Logits::Last).unwrap();
        gen.sample(logits);
        cached.push(id);
    }
    let (tail, st) = gen.finish(&clock);
    text.push_str(&tail);
    Reply {
        ids,
        text,
        reason: st.stop_reason,
        n_prefilled: st.n_prefilled,
    }
}

#[test]
fn stepped_generation_matches_the_session_loop() {
    let (model, tok, prompt) = setup();
    let p = params(16, &[]);
    let mut session = Session::new(model);
    let want = session_reply(&mut session, &tok, &prompt, &p);
    assert_eq!(want.ids.len(), 16, "{want:?}");
    assert_eq!(want.reason, StopReason::MaxTokens);
    assert!(!want.text.is_empty());

    let mut model = session.model;
    for slice in [1, 3, 64] {
        let mut cached = Vec::new();
        let got = stepped_reply(&mut model, &mut cached, &tok, &prompt, &p, slice, None);
        assert_eq!(got, want, "prefill slices of {slice}");
        // The cache holds the prompt and every generated token that was fed back.
        assert_eq!(cached.len(), prompt.len() + want.ids.len() - 1);
    }
}

#[test]
fn cancelling_keeps_a_consistent_cache() {
    let (mut model, tok, prompt) = setup();
    let p = params(16, &[]);
    let mut cached = Vec::new();
    let full = stepped_reply(&mut model, &mut cached, &tok, &prompt, &p, 64, None);

    let mut cached = Vec::new();
    let cut = stepped_reply(&mut model, &mut cached, &tok, &prompt, &p, 64, Some(5));
    assert_eq!(cut.reason, StopReason::Cancelled);
    assert_eq!(cut.ids, full.ids[..5]);
    assert!(full.text.starts_with(&cut.text), "{cut:?} vs {full:?}");
    // Four of the five tokens went through the model before the stop.
    assert_eq!(cached.len(), prompt.len() + 4);

    // The next reply reuses that cache: only the last prompt token is recomputed, and the
    // result is what a fresh run gives.
    let again = stepped_reply(&mut model, &mut cached, &tok, &prompt, &p, 64, None);
    assert_eq!(again.n_prefilled, 1);
    assert_eq!(again.ids, full.ids);
    assert_eq!(again.text, full.text);
}

#[test]
fn stop_strings_end_the_reply_before_them() {
    let (model, tok, prompt) = setup();
    let mut session = Session::new(model);
    let full = session_reply(&mut session, &tok, &prompt, &params(16, &[]));
    // A stop string from the middle of the reply.
    let words: Vec<&str> = full.text.split_whitespace().collect();
    assert!(words.len() >= 4, "{full:?}");
    let stop = words[2];
    let cut_at = full.text.find(stop).unwrap();
    let mut model = session.model;
    let mut cached = Vec::new();
    let got = stepped_reply(
        &mut model,
        &mut cached,
        &tok,
        &prompt,
        &params(16, &[stop]),
        64,
        None,
    );
    assert_eq!(got.reason, StopReason::StopString);
    assert_eq!(got.text, full.text[..cut_at], "stop string {stop:?}");
}

#[test]
fn zero_max_tokens_generates_nothing() {
    let (mut model, tok, prompt) = setup();
    let mut cached = Vec::new();
    let got = stepped_reply(
        &mut model,
        &mut cached,
        &tok,
        &prompt,
        &params(0, &[]),
        64,
        None,
    );
    assert_eq!(got.ids, Vec::<u32>::new());
    assert_eq!(got.reason, StopReason::MaxTokens);
    assert_eq!(cached.len(), prompt.len());
}
