//! The settings drawer: the conversation's system prompt and the sampling settings, opened from
//! the header. A `<details>` element: its summary is the header button, its body the drawer
//! (docked on the right on wide screens, over the page on narrow ones). The context size is a
//! setting too: changing it (or opening a conversation with another) reloads the model.

use leptos::html::Details;
use leptos::prelude::*;

use crate::components::download_panel::DownloadState;
use crate::protocol::{max_context, GenSettings, MIN_N_CTX};
use crate::state::{Chat, Engine, Generating, Settings, DEFAULT_SYSTEM};

#[component]
pub fn SettingsDrawer() -> impl IntoView {
    let chat = expect_context::<Chat>();
    let s = expect_context::<Settings>().0;
    let details = NodeRef::<Details>::new();
    let close = move |_| {
        if let Some(d) = details.get_untracked() {
            d.set_open(false);
        }
    };
    let reset = move |_| {
        s.set(GenSettings::default());
        chat.conv.update(|c| c.system = DEFAULT_SYSTEM.into());
    };
    reload_on_context_change();
    view! {
        <details class="settings" node_ref=details>
            <summary class="icon-button" data-testid="settings-toggle" aria-label="Settings" title="Settings">"⚙"</summary>
            <div class="drawer" role="region" aria-label="Settings">
                <div class="drawer-head">
                    <h2>"Settings"</h2>
                    <button class="icon-button" data-testid="settings-close" aria-label="Close settings" on:click=close>"×"</button>
                </div>
                <label>"System prompt (this conversation)"
                    <textarea data-testid="system-prompt" rows="4" prop:value=move || chat.conv.get().system
                        on:input=move |ev| chat.conv.update(|c| c.system = event_target_value(&ev))></textarea>
                </label>
                <SamplingSettings/>
                <button class="secondary" data-testid="settings-reset" on:click=reset>"Reset to defaults"</button>
            </div>
        </details>
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
            <ContextSize/>
            <label>"Seed"<input type="number" min="0" data-testid="seed"
                prop:value=move || s.get().seed.to_string()
                on:change=move |ev| { if let Ok(v) = event_target_value(&ev).parse::<u64>() { s.update(|x| x.seed = v) } }/></label>
        </div>
    }
}

/// The context size: bounded by the loaded model's trained context and the memory its KV
/// cache may take ([`max_context`]).
#[component]
fn ContextSize() -> impl IntoView {
    let s = expect_context::<Settings>().0;
    let engine = expect_context::<Engine>();
    let generating = expect_context::<Generating>().0;
    let limits = move || {
        engine
            .loaded
            .get()
            .map(|l| max_context(l.n_ctx_train, l.kv_bytes_per_token))
    };
    let hint = move || match engine.loaded.get() {
        Some(l) => {
            let max = max_context(l.n_ctx_train, l.kv_bytes_per_token);
            let mib = (l.n_ctx as u64 * l.kv_bytes_per_token) as f64 / (1u64 << 20) as f64;
            format!(
                "Up to {max} for this model (trained on {}); now running with {} tokens ({mib:.0} MiB of cache). A change reloads the model.",
                l.n_ctx_train, l.n_ctx
            )
        }
        None => "Applies when a model is loaded.".to_string(),
    };
    view! {
        <label class="wide">"Context size (tokens)"
            <input type="number" min=MIN_N_CTX step="256" data-testid="context-size"
                max=move || limits().map(|m| m.to_string())
                aria-describedby="context-size-hint"
                disabled=move || generating.get()
                prop:value=move || s.get().n_ctx.to_string()
                on:change=move |ev| {
                    let max = limits().unwrap_or(usize::MAX);
                    match event_target_value(&ev).trim().parse::<usize>() {
                        Ok(v) => s.update(|x| x.n_ctx = v.clamp(MIN_N_CTX, max.max(MIN_N_CTX))),
                        // Not a number: show the value in use again.
                        Err(_) => s.update(|_| {}),
                    }
                }/>
            <span class="hint" id="context-size-hint" data-testid="context-size-hint">{hint}</span>
        </label>
    }
}

/// Reload the loaded model when the context size it should run with (the open conversation's,
/// within the model's bounds) differs from the one it runs with, once no reply is being
/// generated. One attempt per (model, size): a failed or clamped load is not retried.
fn reload_on_context_change() {
    let s = expect_context::<Settings>().0;
    let engine = expect_context::<Engine>();
    let generating = expect_context::<Generating>().0;
    let dl = expect_context::<DownloadState>();
    let want = Memo::new(move |_| s.with(|x| x.n_ctx));
    let tried = StoredValue::new(None::<(String, usize)>);
    Effect::new(move |_| {
        let n = want.get();
        if generating.get() {
            return;
        }
        let Some(l) = engine.loaded.get() else {
            return;
        };
        let target = n.min(max_context(l.n_ctx_train, l.kv_bytes_per_token));
        let attempt = (l.model_id.clone(), target);
        if target == l.n_ctx || tried.get_value().as_ref() == Some(&attempt) {
            return;
        }
        tried.set_value(Some(attempt));
        leptos::task::spawn_local(async move {
            dl.load(&l.model_id).await;
        });
    });
}
