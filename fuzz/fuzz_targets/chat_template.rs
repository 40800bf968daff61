//! Fuzz the chat template path with its budget on: any template source and any conversation
//! must render or give a typed error — never a panic, a hang past the budget, or an allocation
//! sized by the template (libFuzzer's `-rss_limit_mb` and `-timeout` catch those).
#![no_main]

use engine::chat_template::{ChatMessage, ChatTemplate, TemplateLimits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    // `template \0 user message \0 assistant message ...`
    let mut parts = text.split('\0');
    let source = parts.next().unwrap_or("");
    let messages: Vec<ChatMessage> = parts
        .enumerate()
        .take(8)
        .map(|(i, c)| ChatMessage::new(if i % 2 == 0 { "user" } else { "assistant" }, c))
        .collect();
    let Ok(mut t) = ChatTemplate::from_source(source, "<s>", "</s>") else {
        return;
    };
    // The real limits, with less fuel so one input stays fast.
    t.set_limits(TemplateLimits {
        fuel: 200_000,
        ..TemplateLimits::for_context(4096)
    });
    if let Ok(out) = t.render(&messages, true) {
        assert!(out.len() <= t.limits().max_output, "output over its cap");
    }
});
