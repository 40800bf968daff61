//! The embeddable widget (`embed.html`, framed by `public/embed.js` on host pages): its options
//! (from the frame's URL, which the host page writes: untrusted, bounded), the origins allowed to
//! embed it (`embed.json`), and its two modes: `chat` (the chat panel, [`widget::Widget`]) and
//! `api` (no UI: answers `SLM.connect` calls, [`bridge`]).

pub mod bridge;
pub mod origins;
pub mod widget;

use leptos::prelude::*;

use crate::js::{get, global_get};

/// Longest title shown in the widget's bar.
pub const MAX_TITLE: usize = 80;
/// Longest system prompt taken from the frame's URL.
pub const MAX_SYSTEM_PROMPT: usize = 4000;

/// Whether this page is the widget's (`<body data-slm="embed">`, i.e. `embed.html`).
pub fn is_embed_page() -> bool {
    web_sys::window()
        .and_then(|w| w.document())
        .and_then(|d| d.body())
        .and_then(|b| b.get_attribute("data-slm"))
        .is_some_and(|v| v == "embed")
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mode {
    Chat,
    Api,
}

/// The widget's options, read from the frame's query string.
#[derive(Clone, Debug, PartialEq)]
pub struct EmbedOptions {
    pub mode: Mode,
    /// Catalog id of the model to offer (`None`: the catalog's default).
    pub model: Option<String>,
    pub title: String,
    pub system: Option<String>,
    pub temperature: Option<f32>,
    pub max_tokens: Option<usize>,
}

impl EmbedOptions {
    /// Options from a query string (`?mode=chat&model=…`); values that fail their check are
    /// dropped (the default applies), never passed on.
    pub fn from_query(q: &str) -> Self {
        let mut o = EmbedOptions {
            mode: Mode::Chat,
            model: None,
            title: "Private assistant".into(),
            system: None,
            temperature: None,
            max_tokens: None,
        };
        for (k, v) in parse_query(q) {
            match k.as_str() {
                "mode" if v == "api" => o.mode = Mode::Api,
                "model" if crate::api::check_model_id(&v).is_ok() => o.model = Some(v),
                "title" if !v.trim().is_empty() => {
                    o.title = v.trim().chars().take(MAX_TITLE).collect()
                }
                "system" => o.system = Some(v.chars().take(MAX_SYSTEM_PROMPT).collect()),
                "temperature" => {
                    o.temperature = v
                        .parse::<f32>()
                        .ok()
                        .filter(|t| t.is_finite() && (0.0..=2.0).contains(t))
                }
                "max_tokens" => {
                    o.max_tokens = v
                        .parse::<usize>()
                        .ok()
                        .filter(|n| (1..=crate::api::MAX_MAX_TOKENS).contains(n))
                }
                _ => {}
            }
        }
        o
    }

    fn from_location() -> Self {
        let search = get(&global_get("location"), "search")
            .as_string()
            .unwrap_or_default();
        Self::from_query(&search)
    }
}

/// The id the widget keeps its conversation under: one per embedding configuration (model,
/// title, system prompt) on each site, so a host page's launcher and its inline chat, or two
/// assistants with different prompts, keep separate conversations.
pub fn conversation_id(o: &EmbedOptions) -> String {
    // FNV-1a (64 bit) over the three fields, 0-separated.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let model = o.model.as_deref().unwrap_or("default");
    let system = o.system.as_deref().unwrap_or("");
    for part in [model, o.title.as_str(), system] {
        for b in part.bytes().chain([0]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{}{model}:{h:016x}", crate::chat_store::EMBED_PREFIX)
}

/// `a=1&b=x%20y` → pairs, percent- and `+`-decoded; at most 32 pairs of 8 KiB.
pub fn parse_query(q: &str) -> Vec<(String, String)> {
    let q = q.strip_prefix('?').unwrap_or(q);
    q.split('&')
        .filter(|p| !p.is_empty() && p.len() <= 8192)
        .take(32)
        .filter_map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            Some((decode(k)?, decode(v)?))
        })
        .collect()
}

fn decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' => {
                let h = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(h, 16).ok()?);
                i += 3;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Whether the page that embeds this frame may: not yet known, allowed, or refused (its origin).
#[derive(Clone, Debug, PartialEq)]
pub enum Embedder {
    Checking,
    Allowed,
    Refused(String),
}

/// The widget page: the chat panel, or the API bridge alone.
#[component]
pub fn EmbedApp() -> impl IntoView {
    let opts = EmbedOptions::from_location();
    let embedder = RwSignal::new(Embedder::Checking);
    bridge::install(opts.mode, embedder);
    match opts.mode {
        Mode::Api => {
            if let Err(e) = crate::engine_client::start(std::rc::Rc::new(|_| {})) {
                web_sys::console::error_1(&e.into());
            }
            view! {
                <p class="embed-api" data-testid="embed-api">"slm API frame: answers the page that embeds it."</p>
            }
            .into_any()
        }
        Mode::Chat => view! { <widget::Widget opts embedder/> }.into_any(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_checked() {
        let o = EmbedOptions::from_query(
            "?mode=api&model=smollm2-135m-instruct-q4_1&title=Ask+the+wiki&temperature=0&max_tokens=48&system=Be%20brief.",
        );
        assert_eq!(o.mode, Mode::Api);
        assert_eq!(o.model.as_deref(), Some("smollm2-135m-instruct-q4_1"));
        assert_eq!(o.title, "Ask the wiki");
        assert_eq!(o.temperature, Some(0.0));
        assert_eq!(o.max_tokens, Some(48));
        assert_eq!(o.system.as_deref(), Some("Be brief."));
        let bad = EmbedOptions::from_query(
            "model=%3Cimg%3E&temperature=NaN&max_tokens=999999&mode=other&title=%E2%82",
        );
        assert_eq!(bad.mode, Mode::Chat);
        assert_eq!(bad.model, None);
        assert_eq!(bad.temperature, None);
        assert_eq!(bad.max_tokens, None);
        assert_eq!(bad.title, "Private assistant");
        let long = EmbedOptions::from_query(&format!("title={}", "x".repeat(500)));
        assert_eq!(long.title.len(), MAX_TITLE);
    }

    #[test]
    fn conversation_ids_follow_the_configuration() {
        let a = EmbedOptions::from_query("model=smollm2-135m-instruct-q4_1&title=Ask");
        let id = conversation_id(&a);
        assert!(id.starts_with("embed:smollm2-135m-instruct-q4_1:"), "{id}");
        assert_eq!(id, conversation_id(&a.clone()), "stable");
        let b =
            EmbedOptions::from_query("model=smollm2-135m-instruct-q4_1&title=Ask&system=Be+brief.");
        let c = EmbedOptions::from_query("model=smollm2-135m-instruct-q4_1&title=Inline");
        assert_ne!(
            id,
            conversation_id(&b),
            "another system prompt: another conversation"
        );
        assert_ne!(
            id,
            conversation_id(&c),
            "another title: another conversation"
        );
        // The separator keeps ("ab", "") apart from ("a", "b").
        let d = EmbedOptions::from_query("title=ab");
        let e = EmbedOptions::from_query("title=a&system=b");
        assert_ne!(conversation_id(&d), conversation_id(&e));
    }
}
