//! The app shell: provides every context, starts the engine worker, and lays out a chat app:
//! the header (model picker, status chip, theme, settings drawer), the sidebar (conversations,
//! then the model and device panels), and the conversation.

use leptos::prelude::*;

use crate::components::chat::ChatPanel;
use crate::components::download_panel::{provide_chat_contexts, DownloadPanel, DownloadState};
use crate::components::environment::EnvironmentInfo;
use crate::components::model_manager::{self, ModelManager, ModelsButton};
use crate::components::model_picker::{AddModel, ModelFacts, ModelPicker};
use crate::components::settings::SettingsDrawer;
use crate::components::sidebar::{ConversationList, SidebarOpen, UndoToast};
use crate::components::stored_models::StoredModels;
use crate::components::theme::ThemeToggle;
use crate::engine_client;
use crate::protocol::GenSettings;
use crate::state::{Chat, Engine, ErrorBanner, Settings};

#[component]
pub fn App() -> impl IntoView {
    let banner = ErrorBanner(RwSignal::new(None), RwSignal::new(None));
    let engine = Engine {
        loaded: RwSignal::new(None),
        load_progress: RwSignal::new(None),
        gpu_lost: RwSignal::new(None),
    };
    let chat = Chat::new();
    let settings = Settings(RwSignal::new(GenSettings::default()));
    // A reload reopens the most recent saved conversation (read from IndexedDB).
    chat.load(settings, banner);
    let sidebar = SidebarOpen(RwSignal::new(false));
    provide_context(sidebar);
    provide_chat_contexts(engine, banner, chat, settings);
    model_manager::provide();
    engine_client::install_test_hooks();

    view! {
        <div class="app" class:sidebar-open=move || sidebar.0.get()>
            <header class="topbar">
                <button class="icon-button menu-button" data-testid="sidebar-toggle" aria-label="Conversations and models"
                    aria-expanded=move || sidebar.0.get().to_string() aria-controls="sidebar"
                    on:click=move |_| sidebar.0.update(|o| *o = !*o)>"☰"</button>
                <h1 class="brand" title="Private chat with small language models, computed in this browser">"slm"</h1>
                <ModelPicker/>
                <ModelsButton/>
                <StatusChip/>
                <ThemeToggle/>
                <SettingsDrawer/>
            </header>
            <Show when=move || banner.0.get().is_some()>
                <div class="error-banner" data-testid="error-banner" role="alert">
                    <span>{move || banner.0.get().unwrap_or_default()}</span>
                    <TemplateFallbackButton/>
                    <button class="dismiss" aria-label="Dismiss" on:click=move |_| banner.clear()>"×"</button>
                </div>
            </Show>
            <div class="layout">
                <nav id="sidebar" class="sidebar" data-testid="sidebar" aria-label="Conversations and models">
                    <ConversationList/>
                    <details class="models-panel" open>
                        <summary>"Model and device"</summary>
                        <ModelFacts/>
                        <DownloadPanel/>
                        <AddModel/>
                        <StoredModels/>
                        <EnvironmentInfo/>
                    </details>
                </nav>
                <div class="backdrop" data-testid="sidebar-backdrop" aria-hidden="true" on:click=move |_| sidebar.0.set(false)></div>
                <ChatPanel/>
            </div>
            <ModelManager/>
            <UndoToast/>
        </div>
    }
}

/// In the banner after a model's chat template failed: load that model with the built-in chat
/// format (the user's explicit choice; the app never falls back silently).
#[component]
fn TemplateFallbackButton() -> impl IntoView {
    let banner = expect_context::<ErrorBanner>();
    let dl = expect_context::<DownloadState>();
    let fallback = Action::new_local(move |id: &String| {
        let id = id.clone();
        async move {
            banner.clear();
            dl.load_with(&id, true).await;
        }
    });
    view! {
        <Show when=move || banner.1.get().is_some()>
            <button data-testid="template-fallback" disabled=move || fallback.pending().get()
                on:click=move |_| {
                    if let Some(id) = banner.1.get_untracked() {
                        fallback.dispatch(id);
                    }
                }>"Use the built-in chat format"</button>
        </Show>
    }
}

/// Which backend runs the model (hover: why) and the last reply's decode speed.
#[component]
fn StatusChip() -> impl IntoView {
    let engine = expect_context::<Engine>();
    let chat = expect_context::<Chat>();
    let text = move || match engine.loaded.get() {
        Some(l) if l.backend == "gpu" => format!("WebGPU · {}", l.adapter),
        Some(_) => "CPU (wasm SIMD)".to_string(),
        None => "no model loaded".to_string(),
    };
    let why = move || engine.loaded.get().map(|l| l.reason).unwrap_or_default();
    // The CPU engine's build and threads (multi-threaded only on a cross-origin isolated page, in
    // a browser with relaxed SIMD).
    let threads = move || {
        engine
            .loaded
            .get()
            .filter(|l| l.backend != "gpu")
            .map(|l| (l.threaded, l.threads, l.kernels))
    };
    let threads_view = move || {
        threads().map(|(threaded, n, kernels)| {
            let (build, title) = if threaded {
                (
                    "threads",
                    "multi-threaded wasm build (cross-origin isolated page, relaxed SIMD)",
                )
            } else {
                (
                    "single",
                    "single-threaded wasm build (the page is not cross-origin isolated, \
                     or this browser has no relaxed SIMD)",
                )
            };
            let label = if n == 1 { "1 thread".to_string() } else { format!("{n} threads") };
            view! {
                <span class="threads" data-testid="cpu-threads" data-threads=n data-build=build data-kernels=kernels.clone() title=format!("{title}; {kernels} kernels")>{label}</span>
            }
        })
    };
    let speed = move || {
        chat.last_stats
            .get()
            .map(|s| format!("{:.1} tok/s", s.decode_tok_s))
    };
    view! {
        <span class="status-chip" class:ready=move || engine.loaded.get().is_some() title=why>
            <span class="dot" aria-hidden="true"></span>
            <span class="badge" data-testid="backend-badge">{text}</span>
            {threads_view}
            {move || speed().map(|s| view! { <span class="speed" data-testid="status-speed">{s}</span> })}
        </span>
    }
}
