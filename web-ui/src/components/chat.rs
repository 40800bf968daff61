//! The chat: saved conversations, system prompt, sampling settings, messages with the streaming
//! reply, the prompt box with send/stop/regenerate, and the context-usage meter.

use leptos::prelude::*;

use crate::components::download_panel::DownloadState;
use crate::components::message::MessageView;
use crate::engine_client;
use crate::protocol::{ReplyStats, Turn};
use crate::state::{Chat, Conversation, Engine, ErrorBanner, Message, Settings};

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
    let last_stats = RwSignal::new(None::<ReplyStats>);
    // The reply being regenerated: put back if its replacement fails.
    let replaced = RwSignal::new(None::<Message>);

    // Generate the assistant's reply to the conversation as it stands.
    let reply = Action::new_local(move |_: &()| async move {
        banner.clear();
        let mut retried = false;
        loop {
            chat.streaming.set(Some(String::new()));
            let r = engine_client::generate(
                turns(&chat.conv.get_untracked()),
                settings.get_untracked(),
            )
            .await;
            let text = chat.streaming.get_untracked().unwrap_or_default();
            chat.streaming.set(None);
            match r {
                Ok(stats) => {
                    replaced.set(None);
                    last_stats.set(Some(stats.clone()));
                    chat.conv.update(|c| {
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
    let new_chat = move |_| {
        if generating() {
            return;
        }
        chat.persist();
        chat.conv.set(Conversation::new());
        last_stats.set(None);
        engine_client::reset();
    };

    view! {
        <section class="chat">
            <div class="chat-top">
                <button data-testid="new-chat" on:click=new_chat>"New chat"</button>
                <button data-testid="regenerate-button" title="Replace the last reply with a new one" on:click=regenerate disabled=move || generating() || !ready()>"Regenerate"</button>
                <ContextMeter last_stats/>
            </div>
            <details class="settings">
                <summary>"System prompt and sampling"</summary>
                <label>"System prompt"
                    <textarea data-testid="system-prompt" prop:value=move || chat.conv.get().system
                        on:input=move |ev| chat.conv.update(|c| c.system = event_target_value(&ev))></textarea>
                </label>
                <SamplingSettings/>
            </details>
            <div class="messages" data-testid="messages">
                <For each=move || chat.conv.get().messages.into_iter().enumerate() key=message_key
                    children=move |(_, m)| view! { <MessageView role=m.role content=m.content stats=m.stats/> }/>
                {move || chat.streaming.get().map(|t| view! { <MessageView role="assistant".to_string() content=t stats=None streaming=true/> })}
            </div>
            <div class="composer">
                <textarea data-testid="prompt-input" placeholder=move || if ready() { "Ask something…" } else { "Download or load a model first" }
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
                    <button data-testid="send-button" disabled=move || !ready() on:click=move |_| send()>"Send"</button>
                }>
                    <button data-testid="stop-button" on:click=move |_| engine_client::stop()>"Stop"</button>
                </Show>
            </div>
            <SavedChats/>
        </section>
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

#[component]
fn SamplingSettings() -> impl IntoView {
    let s = expect_context::<Settings>().0;
    view! {
        <div class="sampling">
            <label>"Temperature"<input type="number" step="0.1" min="0" max="2" data-testid="temperature"
                prop:value=move || s.get().temperature.to_string()
                on:change=move |ev| { if let Ok(v) = event_target_value(&ev).parse::<f32>() { if v.is_finite() && v >= 0.0 { s.update(|x| x.temperature = v) } } }/></label>
            <label>"Top-k"<input type="number" min="0" data-testid="top-k"
                prop:value=move || s.get().top_k.to_string()
                on:change=move |ev| { if let Ok(v) = event_target_value(&ev).parse::<usize>() { s.update(|x| x.top_k = v) } }/></label>
            <label>"Top-p"<input type="number" step="0.05" min="0.05" max="1" data-testid="top-p"
                prop:value=move || s.get().top_p.to_string()
                on:change=move |ev| { if let Ok(v) = event_target_value(&ev).parse::<f32>() { if v > 0.0 && v <= 1.0 { s.update(|x| x.top_p = v) } } }/></label>
            <label>"Max tokens"<input type="number" min="1" max="2048" data-testid="max-tokens"
                prop:value=move || s.get().max_tokens.to_string()
                on:change=move |ev| { if let Ok(v) = event_target_value(&ev).parse::<usize>() { if v >= 1 { s.update(|x| x.max_tokens = v) } } }/></label>
            <label>"Seed"<input type="number" min="0" data-testid="seed"
                prop:value=move || s.get().seed.to_string()
                on:change=move |ev| { if let Ok(v) = event_target_value(&ev).parse::<u64>() { s.update(|x| x.seed = v) } }/></label>
        </div>
    }
}

/// Conversations kept in this browser: open or delete.
#[component]
fn SavedChats() -> impl IntoView {
    let chat = expect_context::<Chat>();
    view! {
        <details class="saved">
            <summary>"Saved conversations"</summary>
            <ul>
                <For each=move || chat.saved.get() key=|c| (c.id.clone(), c.messages.len()) children=move |c| {
                        let id = c.id.clone();
                        let conv = c.clone();
                        view! {
                            <li>
                                <button class="open" on:click=move |_| { chat.conv.set(conv.clone()); engine_client::reset(); }>{c.title.clone()}</button>
                                <button class="delete" on:click=move |_| chat.delete(&id)>"Delete"</button>
                            </li>
                        }
                    }/>
            </ul>
        </details>
    }
}
