//! The tokenizer against llama.cpp's goldens for both test models: every tokenizer case in all
//! four (add_bos, special) combinations, pieces, round trips, chat/raw prompt ids, special ids
//! and streaming detokenization.
mod common;
use common::*;
use engine::gguf::{FileSource, GgufFile};
use engine::tokenizer::{StreamDecoder, Tokenizer};
use serde_json::Value;

fn load(file: &str) -> Tokenizer {
    let src = FileSource::open(model_path(file)).unwrap();
    let gguf = GgufFile::parse(&src).unwrap();
    let t0 = std::time::Instant::now();
    let tok = Tokenizer::from_gguf(&gguf).unwrap();
    eprintln!("{file}: tokenizer built in {:?}", t0.elapsed());
    tok
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// A golden piece: UTF-8 text in which bytes that are not valid UTF-8 on their own are written
/// as `\xAB`.
fn piece_bytes(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && b.get(i + 1) == Some(&b'x') && i + 4 <= b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 2..i + 4], 16) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

fn check_cases(file: &str, key: &str) {
    let tok = load(file);
    let g = golden(key);
    let cases = g["tokenizer_cases"].as_array().unwrap();
    let mut n = 0;
    for case in cases {
        let text = case["text"].as_str().unwrap();
        for add_bos in [false, true] {
            for special in [false, true] {
                let k = format!(
                    "add_bos={},special={}",
                    if add_bos { "True" } else { "False" },
                    if special { "True" } else { "False" }
                );
                let want = ids(&case[&k]);
                let got = tok.encode(text, add_bos, special).unwrap();
                assert_eq!(got, want, "{key}: {text:?} {k}");
                n += 1;
            }
        }
        let got = tok.encode(text, false, false).unwrap();
        if let Some(pieces) = case["pieces(add_bos=False,special=False)"].as_array() {
            assert_eq!(pieces.len(), got.len(), "{key}: {text:?} pieces");
            for (p, &id) in pieces.iter().zip(&got) {
                assert_eq!(
                    tok.token_bytes(id, false),
                    piece_bytes(p.as_str().unwrap()),
                    "{key}: {text:?} piece of {id}"
                );
            }
        }
        if case["roundtrip_ok"].as_bool() == Some(true) {
            assert_eq!(tok.decode(&got, false), text, "{key}: round trip");
        }
    }
    eprintln!("{key}: {n} tokenizer encodings match llama.cpp");
}

#[test]
fn smollm2_tokenizer_cases_match_llama_cpp() {
    check_cases(SMOLLM2, SMOLLM2_KEY);
}

#[test]
fn gemma3_tokenizer_cases_match_llama_cpp() {
    check_cases(GEMMA3, GEMMA3_KEY);
}

/// Chat prompts (which carry their own control tokens, `<bos>` included) are tokenized with
/// add_bos=false, special=true; raw completions with add_bos=true, special=true.
fn check_prompts(file: &str, key: &str) {
    let tok = load(file);
    let g = golden(key);
    for case in g["cases"].as_array().unwrap() {
        let prompt = case["rendered_prompt"].as_str().unwrap();
        let chat = case["mode"].as_str() == Some("chat");
        let got = tok.encode(prompt, !chat, true).unwrap();
        assert_eq!(got, ids(&case["prompt_ids"]), "{key}: {prompt:?}");
        // Decoding the prompt with special tokens gives back the rendered text (minus a BOS
        // that was added, not written).
        let text = tok.decode(&got, true);
        let bos = tok.token_text(tok.bos_id().unwrap()).unwrap();
        let expect = if !chat && tok.adds_bos() {
            format!("{bos}{prompt}")
        } else {
            prompt.to_string()
        };
        assert_eq!(text, expect);
        // Generated text decodes to the golden text.
        let gen = ids(&case["generated_ids_no_stop"]);
        assert_eq!(
            tok.decode(&gen, true),
            case["decoded_text_no_stop"].as_str().unwrap(),
            "{key}: generated text"
        );
    }
}

#[test]
fn smollm2_prompt_ids_match_llama_cpp() {
    check_prompts(SMOLLM2, SMOLLM2_KEY);
}

#[test]
fn gemma3_prompt_ids_match_llama_cpp() {
    check_prompts(GEMMA3, GEMMA3_KEY);
}

fn check_special_ids(file: &str, key: &str) {
    let tok = load(file);
    let g = golden(key);
    assert_eq!(tok.n_vocab() as u64, g["n_vocab"].as_u64().unwrap());
    assert_eq!(tok.bos_id(), Some(g["bos_id"].as_u64().unwrap() as u32));
    assert_eq!(tok.eos_id(), Some(g["eos_id"].as_u64().unwrap() as u32));
    let eog = ids(&g["eog_ids"]);
    assert_eq!(tok.eog_ids(), &eog[..]);
    for id in 0..tok.n_vocab() as u32 {
        assert_eq!(tok.is_eog(id), eog.contains(&id));
    }
    assert!(tok.is_eog(tok.eos_id().unwrap()));
}

#[test]
fn smollm2_special_ids_match_llama_cpp() {
    check_special_ids(SMOLLM2, SMOLLM2_KEY);
    let tok = load(SMOLLM2);
    assert_eq!(tok.token_text(1), Some("<|im_start|>"));
    assert!(!tok.adds_bos());
}

#[test]
fn gemma3_special_ids_match_llama_cpp() {
    check_special_ids(GEMMA3, GEMMA3_KEY);
    let tok = load(GEMMA3);
    assert_eq!(tok.token_text(2), Some("<bos>"));
    assert_eq!(tok.token_text(106), Some("<end_of_turn>"));
    assert!(tok.adds_bos());
}

fn check_stream(file: &str, key: &str) {
    let tok = load(file);
    let g = golden(key);
    let mut n = 0;
    for case in g["tokenizer_cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        if text.is_ascii() {
            continue;
        }
        let ids = tok.encode(text, false, false).unwrap();
        let mut dec = StreamDecoder::new();
        let mut out = String::new();
        for &id in &ids {
            let part = dec.push(&tok, id);
            // Never a replacement character: every emitted char is a real one of the text.
            assert!(
                !part.contains('\u{fffd}'),
                "{key}: partial char in {part:?}"
            );
            assert!(text[out.len()..].starts_with(&part), "{key}: {part:?}");
            out.push_str(&part);
        }
        out.push_str(&dec.flush());
        assert_eq!(out, text, "{key}: streamed text");
        n += 1;
    }
    assert!(n >= 5);
    // Invalid and truncated bytes come out lossy, never stuck.
    let mut dec = StreamDecoder::new();
    let mut all = String::new();
    let bytes: Vec<u32> = ["\u{1F600}"]
        .iter()
        .flat_map(|s| tok.encode(s, false, false).unwrap())
        .collect();
    for &id in &bytes[..bytes.len() - 1] {
        all.push_str(&dec.push(&tok, id));
    }
    assert!(all.is_empty() || bytes.len() == 1);
    let rest = dec.flush();
    if bytes.len() > 1 {
        assert_eq!(rest, "\u{fffd}");
    }
}

#[test]
fn smollm2_stream_decoder_never_splits_a_char() {
    check_stream(SMOLLM2, SMOLLM2_KEY);
}

#[test]
fn gemma3_stream_decoder_never_splits_a_char() {
    check_stream(GEMMA3, GEMMA3_KEY);
}

#[test]
fn tokenizer_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Tokenizer>();
    check::<StreamDecoder>();
    check::<engine::chat_template::ChatTemplate>();
}

/// Arbitrary strings never panic and control tokens are only parsed on request.
#[test]
fn odd_inputs_do_not_panic() {
    for file in [SMOLLM2, GEMMA3] {
        let tok = load(file);
        let inputs = [
            "",
            "\0",
            "\u{feff}",
            "<",
            "<|im_start|",
            "<start_of_turn><start_of_turn>",
            "\r\n\r\n\t \u{a0}\u{2028}",
            "ab\u{301}c\u{200d}\u{fe0f}",
            "\u{10ffff}\u{e000}",
            "'''''s 've",
            "                                                                  ",
            "\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n",
        ];
        for s in inputs {
            for (a, b) in [(false, false), (true, true)] {
                let ids = tok.encode(s, a, b).unwrap();
                let _ = tok.decode(&ids, true);
                if !b && !s.contains('\0') {
                    // Without special parsing, text round-trips (byte fallback covers all).
                    assert_eq!(tok.decode(&ids, false), s, "{file}: {s:?}");
                }
            }
        }
        // Pseudo-random strings over a pool of awkward characters round-trip (not `▁`, which
        // SentencePiece decodes to a space, in llama.cpp too).
        let pool: Vec<char> =
            "aZ09 \t\n\r'’<>|_\u{a0}\u{3000}éß日本😀👍🏽\u{200d}\u{fe0f}\u{301}𝔘\u{ffff}\u{10ffff}"
                .chars()
                .collect();
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..300 {
            let mut s = String::new();
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            for _ in 0..(state % 40) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                s.push(pool[(state % pool.len() as u64) as usize]);
            }
            let ids = tok.encode(&s, false, false).unwrap();
            assert_eq!(tok.decode(&ids, false), s, "{file}: {s:?}");
            let mut dec = StreamDecoder::new();
            let mut out: String = ids.iter().map(|&i| dec.push(&tok, i)).collect();
            out.push_str(&dec.flush());
            assert_eq!(out, s, "{file}: streamed {s:?}");
        }
        let _ = tok.decode(&[u32::MAX, 0, 1, 2], true);
        assert!(tok.token_bytes(u32::MAX, true).is_empty());
        // Long input.
        let long = "The quick brown fox jumps over the lazy dog. 日本語 😀 ".repeat(300);
        let t0 = std::time::Instant::now();
        let ids = tok.encode(&long, true, true).unwrap();
        eprintln!(
            "{file}: {} chars → {} tokens in {:?}",
            long.len(),
            ids.len(),
            t0.elapsed()
        );
        assert_eq!(tok.decode(&ids, false).trim_end(), long.trim_end());
    }
}
