//! One chat message: user text as text (with Edit: change the question and send it again),
//! assistant replies as sanitized Markdown (a reasoning model's `<think>` section collapsed)
//! with their time to first token and speeds on hover; Copy on every message. A finished
//! reply's code blocks are syntax-highlighted by `slmHighlight` (`public/boot.js`: highlight.js,
//! imported the first time a code block is shown).

use leptos::prelude::*;
use wasm_bindgen::JsCast;

use crate::js::{await_promise, get, global_get};
use crate::markdown::reply_html;
use crate::protocol::ReplyStats;

/// Put `text` on the clipboard; true when the browser took it.
pub async fn copy_text(text: String) -> bool {
    let clip = get(&global_get("navigator"), "clipboard");
    let Ok(f) = get(&clip, "writeText").dyn_into::<js_sys::Function>() else {
        return false;
    };
    match f.call1(&clip, &text.into()) {
        Ok(p) => match p.dyn_into::<js_sys::Promise>() {
            Ok(p) => await_promise(p).await.is_ok(),
            Err(_) => false,
        },
        Err(_) => false,
    }
}

/// Highlight the code blocks under `el` (page only; nothing happens where `slmHighlight` is
/// missing).
fn highlight(el: &web_sys::HtmlDivElement) {
    if let Ok(f) = global_get("slmHighlight").dyn_into::<js_sys::Function>() {
        let _ = f.call1(&wasm_bindgen::JsValue::NULL, el);
    }
}

/// A Copy button for `text` that says "Copied" for a moment.
#[component]
pub fn CopyButton(text: String) -> impl IntoView {
    let done = RwSignal::new(false);
    let copy = Action::new_local(move |t: &String| {
        let t = t.clone();
        async move {
            let ok = copy_text(t).await;
            done.set(ok);
            if ok {
                set_timeout(
                    move || done.set(false),
                    std::time::Duration::from_millis(1500),
                );
            }
        }
    });
    view! {
        <button class="icon-button small copy" data-testid="copy-button" title="Copy the message"
            on:click=move |_| { copy.dispatch(text.clone()); }>
            {move || if done.get() { "✓ Copied" } else { "Copy" }}
        </button>
    }
}

#[component]
pub fn MessageView(
    /// Position in the conversation (`usize::MAX` for the reply being streamed).
    index: usize,
    role: String,
    content: String,
    stats: Option<ReplyStats>,
    #[prop(optional)] streaming: bool,
    /// Edit-and-resend of a question: (index, new text).
    #[prop(optional)]
    on_edit: Option<Callback<(usize, String)>>,
    #[prop(optional, into)] can_edit: Signal<bool>,
) -> impl IntoView {
    if role == "assistant" {
        let html = reply_html(&content, streaming);
        let stats = stats.map(|s| {
            let backend = match (s.backend.as_str(), s.threads) {
                ("gpu", _) => " · WebGPU".to_string(),
                ("cpu", n) if n > 1 => format!(" · CPU ×{n}"),
                ("cpu", _) => " · CPU".to_string(),
                _ => String::new(),
            };
            let text = format!(
                "TTFT {:.0} ms · prefill {:.1} tok/s · decode {:.1} tok/s · {} tokens ({}){backend}",
                s.ttft_ms, s.prefill_tok_s, s.decode_tok_s, s.n_generated, s.stop_reason
            );
            (text, s.helped_chunks)
        });
        let body = NodeRef::<leptos::html::Div>::new();
        if !streaming && html.contains("<pre>") {
            Effect::new(move |_| {
                if let Some(el) = body.get() {
                    highlight(&el);
                }
            });
        }
        view! {
            <article class="msg assistant" class:streaming=streaming aria-label="Reply"
                aria-live=if streaming { Some("polite") } else { None }
                aria-busy=if streaming { Some("true") } else { None }>
                <div class="body" data-testid="assistant-message" node_ref=body inner_html=html></div>
                <div class="msg-meta">
                    {(!streaming).then(|| view! { <CopyButton text=content.clone()/> })}
                    {stats.map(|(s, helped)| view! { <span class="stats" data-testid="reply-stats" data-helped-chunks=helped>{s}</span> })}
                </div>
            </article>
        }
        .into_any()
    } else {
        let editing = RwSignal::new(false);
        let draft = RwSignal::new(content.clone());
        let original = content.clone();
        view! {
            <article class="msg user" aria-label="Your message">
                <Show when=move || editing.get() fallback={
                    let content = content.clone();
                    move || view! { <div class="body" data-testid="user-message">{content.clone()}</div> }
                }>
                    <textarea class="edit" data-testid="edit-input" aria-label="Edit your message" rows="3"
                        prop:value=move || draft.get() on:input=move |ev| draft.set(event_target_value(&ev))
                        on:keydown=move |ev: leptos::ev::KeyboardEvent| {
                            if ev.key() == "Enter" && !ev.shift_key() {
                                ev.prevent_default();
                                editing.set(false);
                                if let Some(cb) = on_edit { cb.run((index, draft.get_untracked())); }
                            } else if ev.key() == "Escape" {
                                ev.stop_propagation();
                                editing.set(false);
                            }
                        }></textarea>
                    <div class="edit-buttons">
                        <button class="primary" data-testid="edit-send" on:click=move |_| {
                            editing.set(false);
                            if let Some(cb) = on_edit { cb.run((index, draft.get_untracked())); }
                        }>"Send"</button>
                        <button class="secondary" data-testid="edit-cancel" on:click=move |_| editing.set(false)>"Cancel"</button>
                    </div>
                </Show>
                <div class="msg-meta">
                    <CopyButton text=original.clone()/>
                    {on_edit.is_some().then(|| {
                        let original = original.clone();
                        view! {
                            <button class="icon-button small" data-testid="edit-button" aria-label="Edit and resend" title="Edit and resend"
                                disabled=move || !can_edit.get()
                                on:click=move |_| { draft.set(original.clone()); editing.set(true); }>"Edit"</button>
                        }
                    })}
                </div>
            </article>
        }
        .into_any()
    }
}
