//! The settings drawer: the conversation's system prompt and the sampling settings, opened from
//! the header. A `<details>` element: its summary is the header button, its body the drawer
//! (docked on the right on wide screens, over the page on narrow ones).

use leptos::html::Details;
use leptos::prelude::*;

use crate::protocol::GenSettings;
use crate::state::{Chat, Settings, DEFAULT_SYSTEM};

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
            <label>"Seed"<input type="number" min="0" data-testid="seed"
                prop:value=move || s.get().seed.to_string()
                on:change=move |ev| { if let Ok(v) = event_target_value(&ev).parse::<u64>() { s.update(|x| x.seed = v) } }/></label>
        </div>
    }
}
