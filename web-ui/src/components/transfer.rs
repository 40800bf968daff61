//! Conversations in and out of the browser: export every conversation as JSON (imported back
//! by "Import"), or the open one as Markdown. Files are made in the page (a Blob download); no
//! request is sent.

use leptos::prelude::*;
use wasm_bindgen::JsCast;

use crate::js::{await_promise, err_text};
use crate::state::{Chat, Conversation, ErrorBanner};

/// The conversation as Markdown: the title, the system prompt, then each turn under a heading.
pub fn to_markdown(c: &Conversation) -> String {
    let mut out = format!("# {}\n\n", c.title);
    if !c.system.trim().is_empty() {
        out.push_str(&format!("> System: {}\n\n", c.system.trim()));
    }
    for m in &c.messages {
        let who = if m.role == "user" {
            "User"
        } else {
            "Assistant"
        };
        out.push_str(&format!("## {who}\n\n{}\n\n", m.content.trim()));
    }
    out
}

/// Conversations from an exported file: a list, or one conversation.
pub fn parse_export(text: &str) -> Result<Vec<Conversation>, String> {
    serde_json::from_str::<Vec<Conversation>>(text)
        .or_else(|_| serde_json::from_str::<Conversation>(text).map(|c| vec![c]))
        .map_err(|e| format!("not an slm conversation export ({e})"))
}

/// Offer `text` as a file download named `name`.
fn save_file(name: &str, mime: &str, text: &str) -> Result<(), String> {
    let parts = js_sys::Array::of1(&text.into());
    let opts = web_sys::BlobPropertyBag::new();
    opts.set_type(mime);
    let blob = web_sys::Blob::new_with_str_sequence_and_options(&parts, &opts)
        .map_err(|e| err_text(&e))?;
    let url = web_sys::Url::create_object_url_with_blob(&blob).map_err(|e| err_text(&e))?;
    let a: web_sys::HtmlAnchorElement = document()
        .create_element("a")
        .map_err(|e| err_text(&e))?
        .unchecked_into();
    a.set_href(&url);
    a.set_download(name);
    a.click();
    set_timeout(
        move || {
            let _ = web_sys::Url::revoke_object_url(&url);
        },
        std::time::Duration::from_secs(10),
    );
    Ok(())
}

#[component]
pub fn ConversationTransfer() -> impl IntoView {
    let chat = expect_context::<Chat>();
    let banner = expect_context::<ErrorBanner>();
    let export_json = move |_| {
        chat.persist();
        let all = chat.saved.get_untracked();
        match serde_json::to_string_pretty(&all) {
            Ok(s) => {
                if let Err(e) = save_file("slm-conversations.json", "application/json", &s) {
                    banner.show(format!("Export failed: {e}"));
                }
            }
            Err(e) => banner.show(format!("Export failed: {e}")),
        }
    };
    let export_md = move |_| {
        let c = chat.conv.get_untracked();
        let name: String = c
            .title
            .chars()
            .map(|ch| if ch.is_alphanumeric() { ch } else { '-' })
            .collect();
        if let Err(e) = save_file(&format!("{name}.md"), "text/markdown", &to_markdown(&c)) {
            banner.show(format!("Export failed: {e}"));
        }
    };
    let import = Action::new_local(move |f: &web_sys::File| {
        let f = f.clone();
        async move {
            let text = match await_promise(f.text()).await {
                Ok(t) => t.as_string().unwrap_or_default(),
                Err(e) => return banner.show(format!("Import failed: {}", err_text(&e))),
            };
            match parse_export(&text) {
                Ok(list) => chat.import(list),
                Err(e) => banner.show(format!("Import failed: {e}")),
            }
        }
    });
    let on_file = move |ev: leptos::ev::Event| {
        let input: Option<web_sys::HtmlInputElement> = ev.target().and_then(|t| t.dyn_into().ok());
        if let Some(i) = input {
            if let Some(f) = i.files().and_then(|l| l.get(0)) {
                import.dispatch_local(f);
            }
            i.set_value("");
        }
    };
    view! {
        <div class="transfer">
            <button class="secondary small" data-testid="export-json" title="All conversations as JSON" on:click=export_json>"Export"</button>
            <button class="secondary small" data-testid="export-md" title="This conversation as Markdown"
                disabled=move || chat.conv.with(|c| c.messages.is_empty()) on:click=export_md>"Markdown"</button>
            <label class="file-button" title="Conversations from an exported JSON file">"Import"
                <input type="file" accept=".json,application/json" data-testid="import-conversations" on:change=on_file/>
            </label>
        </div>
    }
}

#[cfg(test)]
mod tests {
    use super::{parse_export, to_markdown};
    use crate::state::{Conversation, Message};

    #[test]
    fn markdown_and_json_round_trip() {
        let c = Conversation {
            id: "c1".into(),
            title: "Sky".into(),
            system: "Be brief.".into(),
            messages: vec![
                Message {
                    role: "user".into(),
                    content: "Colour?".into(),
                    stats: None,
                },
                Message {
                    role: "assistant".into(),
                    content: "Blue.".into(),
                    stats: None,
                },
            ],
            updated: 1.0,
            settings: None,
        };
        let md = to_markdown(&c);
        assert!(
            md.starts_with(
                "# Sky\n\n> System: Be brief.\n\n## User\n\nColour?\n\n## Assistant\n\nBlue."
            ),
            "{md}"
        );
        let json = serde_json::to_string(&vec![c.clone()]).unwrap();
        assert_eq!(parse_export(&json).unwrap(), vec![c.clone()]);
        assert_eq!(
            parse_export(&serde_json::to_string(&c).unwrap()).unwrap(),
            vec![c]
        );
        assert!(parse_export("{}").is_err());
    }

    /// Reply stats survive export → import bit for bit (the browser flow compares them; serde_json
    /// without `float_roundtrip` reads 946.5800000000745 back as …744).
    #[test]
    fn reply_stats_round_trip_exactly() {
        let ttft = 946.5800000000745_f64;
        let c = Conversation {
            id: "c2".into(),
            title: "t".into(),
            system: String::new(),
            messages: vec![Message {
                role: "assistant".into(),
                content: "x".into(),
                stats: Some(crate::protocol::ReplyStats {
                    ttft_ms: ttft,
                    prefill_tok_s: 25.36193596109173,
                    ..Default::default()
                }),
            }],
            updated: 1795943838523.0,
            settings: None,
        };
        let back = parse_export(&serde_json::to_string(&vec![c.clone()]).unwrap()).unwrap();
        assert_eq!(back, vec![c]);
        let s = back[0].messages[0].stats.as_ref().unwrap();
        assert_eq!(s.ttft_ms.to_bits(), ttft.to_bits());
    }
}
