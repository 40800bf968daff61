//! Light and dark themes: the system's `prefers-color-scheme` until the user picks one with the
//! toggle; the choice is kept in `localStorage` (`slm.theme`) and applied as `data-theme` on
//! `<html>` (`public/boot.js` applies it before the app starts, so nothing flashes).

use gloo::storage::{LocalStorage, Storage};
use leptos::prelude::*;

const THEME_KEY: &str = "slm.theme";

fn system_dark() -> bool {
    window()
        .match_media("(prefers-color-scheme: dark)")
        .ok()
        .flatten()
        .is_some_and(|m| m.matches())
}

fn apply(theme: &str) {
    if let Some(root) = document().document_element() {
        let _ = root.set_attribute("data-theme", theme);
    }
}

#[component]
pub fn ThemeToggle() -> impl IntoView {
    let stored: Option<String> = LocalStorage::get(THEME_KEY).ok();
    let dark = RwSignal::new(match stored.as_deref() {
        Some("dark") => true,
        Some("light") => false,
        _ => system_dark(),
    });
    if let Some(t) = &stored {
        apply(t);
    }
    let toggle = move |_| {
        let d = !dark.get_untracked();
        dark.set(d);
        let t = if d { "dark" } else { "light" };
        apply(t);
        let _ = LocalStorage::set(THEME_KEY, t);
    };
    view! {
        <button class="icon-button" data-testid="theme-toggle" on:click=toggle
            aria-label=move || if dark.get() { "Switch to the light theme" } else { "Switch to the dark theme" }
            aria-pressed=move || dark.get().to_string()>
            {move || if dark.get() { "☀" } else { "☾" }}
        </button>
    }
}
