//! The conversation: messages with the streaming reply (auto-scrolled while the reader stays at
//! the bottom), edit-and-resend of a question, the prompt box with send/stop (Esc)/regenerate,
//! and the context-usage meter.

use leptos::html::Div;
use leptos::prelude::*;
use wasm_bindgen::JsCast;

use crate::components::download_panel::DownloadState;
use crate::components::first_run::FirstRun;
use crate::components::message::{copy_text, MessageView};
use crate::engine_client::{self, RequestId};
use crate::protocol::{ReplyStats, Turn};
use crate::state::{Chat, Conversation, Engine, ErrorBanner, Generating, Message, Settings};

fn turns(c: &Conversation) -> Vec<Turn> {
    let mut t = Vec::with_capacity(c.messages.len() + 1);
    if !c.system.trim().is_empty() {
        t.push(Turn {
            role: "system".into(),
            content: c.system.clone(),
        });
    }
    t.extend(c.messages.iter().map(|m| Turn {
        role: m.role.clone(),
        content: m.content.clone(),
    }));
    t
}

/// Identity of a shown message: a regenerated reply with the same text (temperature 0) still
/// gets a new view, with its own stats.
fn message_key((i, m): &(usize, Message)) -> (usize, String, usize, Option<u64>) {
    (
        *i,
        m.role.clone(),
        m.content.len(),
        m.stats
            .as_ref()
            .map(|s| s.ttft_ms.to_bits() ^ s.decode_tok_s.to_bits()),
    )
}

#[component]
pub fn ChatPanel() -> impl IntoView {
    let chat = expect_context::<Chat>();
    let engine = expect_context::<Engine>();
    let banner = expect_context::<ErrorBanner>();
    let settings = expect_context::<Settings>().0;
    let dl = expect_context::<DownloadState>();
    let input = RwSignal::new(String::new());
    let last_stats = chat.last_stats;
    // The reply being regenerated: put back if its replacement fails.
    let replaced = RwSignal::new(None::<Message>);
    // The worker request of the reply being generated (what Stop names).
    let running = StoredValue::new(None::<RequestId>);
    let stop = move || engine_client::stop(running.get_value());

    // Generate the assistant's reply to the conversation as it stands.
    let reply = Action::new_local(move |_: &()| async move {
        banner.clear();
        let mut retried = false;
        loop {
            chat.streaming.set(Some(String::new()));
            let id = RequestId::next();
            running.set_value(Some(id));
            let streaming = chat.streaming;
            let r = engine_client::generate(
                id,
                turns(&chat.conv.get_untracked()),
                settings.get_untracked(),
                move |text| streaming.update(|s| s.get_or_insert_with(String::new).push_str(text)),
            )
            .await;
            running.set_value(None);
            let text = chat.streaming.get_untracked().unwrap_or_default();
            chat.streaming.set(None);
            match r {
                Ok(stats) => {
                    replaced.set(None);
                    last_stats.set(Some(stats.clone()));
                    chat.conv.update(|c| {
                        c.settings = Some(settings.get_untracked());
                        c.messages.push(Message {
                            role: "assistant".into(),
                            content: text,
                            stats: Some(stats),
                        })
                    });
                    chat.persist();
                }
                Err(e)
                    if e.kind == "gpu_lost"
                        && !retried
                        && engine
                            .loaded
                            .get_untracked()
                            .is_some_and(|l| l.backend == "gpu") =>
                {
                    // Keep the conversation, move to the CPU, answer again (the text streamed
                    // so far is dropped: the CPU starts the reply over). The device's own
                    // `lost` message, when it came, says more than the failed call.
                    let why = engine.gpu_lost.get_untracked().unwrap_or(e.message);
                    if dl.fallback_to_cpu(&why).await {
                        retried = true;
                        continue;
                    }
                }
                Err(e) if e.kind == "context_full" => banner.show(format!(
                    "This conversation no longer fits in the model's context window ({}). Start a new chat, or lower “max tokens”.",
                    e.message
                )),
                Err(e) => banner.show(format!("Generation failed: {}", e.message)),
            }
            break;
        }
        if let Some(old) = replaced.get_untracked() {
            // The new reply failed: keep the one it was meant to replace.
            replaced.set(None);
            chat.conv.update(|c| c.messages.push(old));
        }
    });
    let generating = move || reply.pending().get();
    let ready = move || engine.loaded.get().is_some();

    // The worker saw the GPU device go away while no reply was running (a reply in flight
    // fails with `gpu_lost` and recovers above): move the model to the CPU now, so the badge
    // says so and the next message is answered.
    Effect::new(move |_| {
        if let Some(why) = engine.gpu_lost.get() {
            if !generating() {
                leptos::task::spawn_local(async move {
                    dl.fallback_to_cpu(&why).await;
                });
            }
        }
    });

    let send = move || {
        let text = input.get_untracked().trim().to_string();
        if text.is_empty() || generating() || !ready() {
            return;
        }
        input.set(String::new());
        chat.conv.update(|c| {
            if c.messages.is_empty() {
                c.title = text.chars().take(40).collect();
            }
            c.messages.push(Message {
                role: "user".into(),
                content: text,
                stats: None,
            });
        });
        reply.dispatch(());
    };
    let regenerate = move |_| {
        if generating() || !ready() {
            return;
        }
        let mut had = false;
        chat.conv.update(|c| {
            if c.messages.last().is_some_and(|m| m.role == "assistant") {
                replaced.set(c.messages.pop());
                had = true;
            }
        });
        if had
            || chat
                .conv
                .get_untracked()
                .messages
                .last()
                .is_some_and(|m| m.role == "user")
        {
            reply.dispatch(());
        }
    };
    // Edit question `i` and send it again: the turns after it are dropped (the conversation
    // forks there) and the engine's cache starts over.
    let edit = Callback::new(move |(i, text): (usize, String)| {
        let text = text.trim().to_string();
        if text.is_empty() || generating() || !ready() {
            return;
        }
        chat.conv.update(|c| {
            c.messages.truncate(i);
            if i == 0 {
                c.title = text.chars().take(40).collect();
            }
            c.messages.push(Message {
                role: "user".into(),
                content: text,
                stats: None,
            });
        });
        engine_client::reset();
        reply.dispatch(());
    });

    // The settings belong to the open conversation: a change is kept in it (and stored when
    // the conversation is), and opening one brings its settings back (the sidebar does that).
    if let Some(s) = chat.conv.with_untracked(|c| c.settings.clone()) {
        settings.set(s);
    }
    Effect::new(move |_| {
        let s = settings.get();
        chat.conv.update_untracked(|c| c.settings = Some(s));
        chat.store_settings();
    });

    let gen_flag = expect_context::<Generating>().0;
    Effect::new(move |_| gen_flag.set(generating()));
    // Esc stops the reply being generated, wherever the focus is.
    let esc = window_event_listener(leptos::ev::keydown, move |ev| {
        if ev.key() == "Escape" && gen_flag.get_untracked() {
            ev.prevent_default();
            stop();
        }
    });
    on_cleanup(move || esc.remove());

    // Follow the streaming reply while the reader is at the bottom; scrolling up stops that.
    // A scroll up that happened since the last automatic scroll counts even when its scroll
    // event has not been handled yet (tokens can arrive first).
    let list = NodeRef::<Div>::new();
    let stick = RwSignal::new(true);
    let last_auto = StoredValue::new(0i32);
    Effect::new(move |_| {
        chat.streaming.track();
        chat.conv.track();
        if let Some(el) = list.get_untracked() {
            let gap = el.scroll_height() - el.scroll_top() - el.client_height();
            if el.scroll_top() + 8 < last_auto.get_value() && gap >= 48 {
                stick.set(false);
            }
            if stick.get_untracked() {
                el.set_scroll_top(el.scroll_height());
                last_auto.set_value(el.scroll_top());
            }
        }
    });
    let on_scroll = move |_| {
        if let Some(el) = list.get_untracked() {
            let at_bottom = el.scroll_height() - el.scroll_top() - el.client_height() < 48;
            if at_bottom {
                last_auto.set_value(el.scroll_top());
            }
            stick.set(at_bottom);
        }
    };

    // A code block's Copy button (the reply's HTML is rendered from Markdown, so one listener
    // here serves every block).
    let copy_code = move |ev: leptos::ev::MouseEvent| {
        let Some(btn) = ev
            .target()
            .and_then(|t| t.dyn_into::<web_sys::Element>().ok())
            .and_then(|t| t.closest(".code-copy").ok().flatten())
        else {
            return;
        };
        let code = btn
            .parent_element()
            .and_then(|p| p.query_selector("pre").ok().flatten())
            .and_then(|p| p.text_content())
            .unwrap_or_default();
        leptos::task::spawn_local(async move {
            if copy_text(code).await {
                btn.set_text_content(Some("Copied"));
            }
        });
    };

    view! {
        <main class="chat" aria-label="Conversation">
            <div class="chat-top">
                <h2 class="conv-title" data-testid="conv-title">{move || chat.conv.get().title}</h2>
                <ContextMeter last_stats/>
                <button class="secondary" data-testid="regenerate-button" title="Replace the last reply with a new one" on:click=regenerate disabled=move || generating() || !ready()>"↻ Regenerate"</button>
            </div>
            <div class="messages" data-testid="messages" node_ref=list on:scroll=on_scroll on:click=copy_code>
                <Show when=move || chat.conv.with(|c| c.messages.is_empty()) && chat.streaming.with(|s| s.is_none())>
                    <div class="empty-state">
                        <p class="big">"Private chat, computed in this browser."</p>
                        <p class="hint">{move || if ready() { "Ask something below. Nothing you type leaves this device." } else { "Pick a model at the top, then download or load it under “Model and device” (☰ on small screens), or open “Models” to see what fits this device." }}</p>
                        <Show when=move || !ready()><FirstRun/></Show>
                    </div>
                </Show>
                <For each=move || chat.conv.get().messages.into_iter().enumerate() key=message_key
                    children=move |(i, m)| view! { <MessageView index=i role=m.role content=m.content stats=m.stats on_edit=edit can_edit=Signal::derive(move || ready() && !generating())/> }/>
                {move || chat.streaming.get().map(|t| view! { <MessageView index=usize::MAX role="assistant".to_string() content=t stats=None streaming=true/> })}
            </div>
            <div class="composer">
                <textarea data-testid="prompt-input" aria-label="Message (Enter sends, Shift+Enter starts a new line)" title="Enter sends, Shift+Enter starts a new line" rows="1" placeholder=move || if ready() { "Ask something…" } else { "Download or load a model first" }
                    disabled=move || !ready() || generating()
                    prop:value=move || input.get()
                    on:input=move |ev| input.set(event_target_value(&ev))
                    on:keydown=move |ev: leptos::ev::KeyboardEvent| {
                        if ev.key() == "Enter" && !ev.shift_key() {
                            ev.prevent_default();
                            send();
                        }
                    }></textarea>
                <Show when=generating fallback=move || view! {
                    <button class="primary" data-testid="send-button" disabled=move || !ready() on:click=move |_| send()>"Send"</button>
                }>
                    <button class="danger" data-testid="stop-button" title="Stop (Esc)" on:click=move |_| stop()>"Stop"</button>
                </Show>
            </div>
        </main>
    }
}

/// Tokens the context holds after the last reply, out of its capacity.
#[component]
fn ContextMeter(last_stats: RwSignal<Option<ReplyStats>>) -> impl IntoView {
    move || {
        last_stats.get().map(|s| {
            let pct = s.ctx_used as f64 * 100.0 / s.n_ctx.max(1) as f64;
            view! {
                <span class="ctx" data-testid="context-meter">
                    <meter min="0" max="100" value=format!("{pct:.0}") high="85"></meter>
                    {format!(" context {} / {} tokens", s.ctx_used, s.n_ctx)}
                </span>
            }
        })
    }
}
