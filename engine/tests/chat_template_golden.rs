//! Chat templates against llama.cpp's rendered prompts for both test models: the GGUF's own
//! template (SmolLM2), the reference HF template and the built-in fallback (Gemma 3, whose GGUF
//! has none), typed errors from `raise_exception`, and system messages.
mod common;
use common::*;
use engine::chat_template::{ChatMessage, ChatTemplate, CHATML_TEMPLATE, GEMMA_TEMPLATE};
use engine::gguf::{FileSource, GgufFile};
use engine::tokenizer::Tokenizer;
use engine::Error;
use serde_json::Value;

fn load(file: &str) -> (GgufFile, Tokenizer) {
    let src = FileSource::open(model_path(file)).unwrap();
    let gguf = GgufFile::parse(&src).unwrap();
    let tok = Tokenizer::from_gguf(&gguf).unwrap();
    (gguf, tok)
}

fn messages(v: &Value) -> Vec<ChatMessage> {
    serde_json::from_value(v.clone()).unwrap()
}

/// Render every chat case with `tmpl` and compare with the golden prompt; returns the count.
fn check(tmpl: &ChatTemplate, key: &str) -> usize {
    let g = golden(key);
    let mut n = 0;
    for case in g["cases"].as_array().unwrap() {
        if case["mode"].as_str() != Some("chat") {
            continue;
        }
        let (out, used) = tmpl
            .render_measured(&messages(&case["messages"]), true)
            .unwrap();
        assert_eq!(out, case["rendered_prompt"].as_str().unwrap(), "{key}");
        // Real templates stay far inside the budget.
        let l = tmpl.limits();
        assert!(
            used.fuel * 100 < l.fuel && used.bytes * 100 < l.max_bytes,
            "{key}: {used:?} of {l:?}"
        );
        eprintln!(
            "{key}: fuel {} bytes {} output {}",
            used.fuel, used.bytes, used.output
        );
        n += 1;
    }
    assert!(n >= 3, "{key}: only {n} chat cases");
    n
}

#[test]
fn smollm2_gguf_template_matches_llama_cpp() {
    let (gguf, tok) = load(SMOLLM2);
    let tmpl = ChatTemplate::from_gguf(&gguf, &tok).unwrap();
    let g = golden(SMOLLM2_KEY);
    assert_eq!(tmpl.source(), g["chat_template"].as_str().unwrap());
    let n = check(&tmpl, SMOLLM2_KEY);
    eprintln!("smollm2: {n} chat prompts match");

    // A system message replaces the default one.
    let out = tmpl
        .render(
            &[
                ChatMessage::new("system", "You are terse."),
                ChatMessage::new("user", "Hi"),
                ChatMessage::new("assistant", "Hello."),
                ChatMessage::new("user", "Bye"),
            ],
            true,
        )
        .unwrap();
    assert_eq!(
        out,
        "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n\
         <|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n\
         <|im_start|>assistant\n"
    );
    // And it tokenizes to control tokens, not text.
    let ids = tok.encode(&out, false, true).unwrap();
    assert_eq!(ids[0], tok.token_id("<|im_start|>").unwrap());
    assert_eq!(
        ids.iter()
            .filter(|&&i| Some(i) == tok.token_id("<|im_end|>"))
            .count(),
        4
    );
}

#[test]
fn gemma3_reference_and_builtin_templates_match_llama_cpp() {
    let (gguf, tok) = load(GEMMA3);
    let g = golden(GEMMA3_KEY);
    // The GGUF carries no template: the built-in Gemma one is used.
    assert!(gguf.get("tokenizer.chat_template").is_none());
    let builtin = ChatTemplate::from_gguf(&gguf, &tok).unwrap();
    assert_eq!(builtin.source(), GEMMA_TEMPLATE);
    let n = check(&builtin, GEMMA3_KEY);
    // The HF template the reference used gives the same text.
    let reference =
        ChatTemplate::from_source(g["chat_template"].as_str().unwrap(), "<bos>", "<eos>").unwrap();
    check(&reference, GEMMA3_KEY);
    eprintln!("gemma3: {n} chat prompts match (reference and built-in)");

    // System prompt folded into the first user turn, assistant shown as model; the two agree.
    let conv = [
        ChatMessage::new("system", "Answer in French."),
        ChatMessage::new("user", "  Hello  "),
        ChatMessage::new("assistant", "Bonjour"),
        ChatMessage::new("user", "Thanks"),
    ];
    let a = builtin.render(&conv, true).unwrap();
    assert_eq!(a, reference.render(&conv, true).unwrap());
    assert_eq!(
        a,
        "<bos><start_of_turn>user\nAnswer in French.\n\nHello<end_of_turn>\n\
         <start_of_turn>model\nBonjour<end_of_turn>\n<start_of_turn>user\nThanks<end_of_turn>\n\
         <start_of_turn>model\n"
    );
    assert_eq!(
        builtin.render(&conv, false).unwrap(),
        reference.render(&conv, false).unwrap()
    );
    // Tokenized as the reference does: a single BOS and turn markers as control tokens.
    let ids = tok.encode(&a, false, true).unwrap();
    assert_eq!(&ids[..2], &[2, 105]);
}

#[test]
fn chatml_fallback_for_other_architectures() {
    let tmpl = ChatTemplate::from_source(CHATML_TEMPLATE, "", "").unwrap();
    let out = tmpl
        .render(&[ChatMessage::new("user", "What is 2+2?")], true)
        .unwrap();
    assert_eq!(
        out,
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn raise_exception_gives_a_typed_error() {
    // The shape of HF templates that validate role alternation.
    let src = "{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}\
               {{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}\
               {% endif %}{{ m['content'] }}{% endfor %}";
    let tmpl = ChatTemplate::from_source(src, "<s>", "</s>").unwrap();
    assert_eq!(
        tmpl.render(&[ChatMessage::new("user", "a")], false)
            .unwrap(),
        "a"
    );
    let err = tmpl
        .render(
            &[ChatMessage::new("user", "a"), ChatMessage::new("user", "b")],
            false,
        )
        .unwrap_err();
    match err {
        Error::ChatTemplate { what: msg, .. } => {
            assert!(msg.contains("roles must alternate"), "{msg}")
        }
        other => panic!("expected a chat template error, got {other:?}"),
    }
    // Syntax errors and unknown methods are typed errors too.
    assert!(matches!(
        ChatTemplate::from_source("{% if %}", "", ""),
        Err(Error::ChatTemplate { .. })
    ));
    let bad = ChatTemplate::from_source("{{ messages[0].content.nope() }}", "", "").unwrap();
    assert!(matches!(
        bad.render(&[ChatMessage::new("user", "x")], false),
        Err(Error::ChatTemplate { .. })
    ));
}

#[test]
fn hf_style_helpers() {
    let src =
        "{{ bos_token }}{% for m in messages %}{{ m['role'] | upper }}:{{ m['content'].strip() }}|\
               {% endfor %}{{ eos_token }}{{ messages | tojson }}{{ strftime_now('%Y') | length }}";
    let tmpl = ChatTemplate::from_source(src, "<s>", "</s>").unwrap();
    let out = tmpl
        .render(&[ChatMessage::new("user", " é \"q\" ")], false)
        .unwrap();
    assert_eq!(
        out,
        "<s>USER:é \"q\"|</s>[{\"role\": \"user\", \"content\": \" é \\\"q\\\" \"}]4"
    );
}
