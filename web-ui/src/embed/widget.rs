//! The chat widget in its frame: a bar with the title and backend, the first-run card (which
//! model, its size, where it is stored — each embedding site keeps its own copy — and the
//! download with progress, speed and time left, reusing the app's download panel), then the app's
//! chat panel. A model already stored for this site is loaded at once. The conversation stays in
//! this frame (the app's origin; the host page sees none of it) and is kept in this site's
//! storage under [`super::conversation_id`], so it continues after the host page reloads; "New
//! chat" clears it.

use leptos::prelude::*;

use super::{EmbedOptions, Embedder};
use crate::catalog::{fetch_catalog, CatalogEntry};
use crate::components::chat::ChatPanel;
use crate::components::download_panel::{provide_chat_contexts, DownloadPanel};
use crate::protocol::GenSettings;
use crate::state::{Chat, Conversation, Engine, ErrorBanner, Generating, SelectedModel, Settings};

#[component]
pub fn Widget(opts: EmbedOptions, embedder: RwSignal<Embedder>) -> impl IntoView {
    let banner = ErrorBanner(RwSignal::new(None), RwSignal::new(None));
    let engine = Engine {
        loaded: RwSignal::new(None),
        load_progress: RwSignal::new(None),
        gpu_lost: RwSignal::new(None),
    };
    let conv_id = super::conversation_id(&opts);
    let mut conv = Conversation::new();
    conv.id = conv_id.clone();
    conv.title = opts.title.clone();
    if let Some(s) = &opts.system {
        conv.system = s.clone();
    }
    let defaults = GenSettings::default();
    let settings = GenSettings {
        temperature: opts.temperature.unwrap_or(defaults.temperature),
        max_tokens: opts.max_tokens.unwrap_or(defaults.max_tokens),
        ..defaults
    };
    conv.settings = Some(settings.clone());
    let chat = Chat {
        conv: RwSignal::new(conv),
        streaming: RwSignal::new(None),
        saved: RwSignal::new(Vec::new()),
        last_stats: RwSignal::new(None),
        deleted: RwSignal::new(None),
    };
    let settings = Settings(RwSignal::new(settings));
    let dl = provide_chat_contexts(engine, banner, chat, settings);
    let selected = expect_context::<SelectedModel>();
    let generating = expect_context::<Generating>().0;
    crate::chat_store::on_error(move |m| banner.show(m));

    // The model: the one the host asked for, else the catalog's default. Stored already (for
    // this site): load it now.
    let wanted = opts.model.clone();
    let entry = LocalResource::new(move || {
        let wanted = wanted.clone();
        async move { pick(wanted).await }
    });
    let stored = RwSignal::new(false);
    // Where the browser blocks an embedded frame's storage (third-party cookies and storage
    // blocked), the model cannot be kept: say so, and offer the chat in its own tab.
    let storage_blocked = RwSignal::new(None::<String>);
    {
        let conv_id = conv_id.clone();
        leptos::task::spawn_local(async move {
            if let Err(e) = crate::idb::Db::open().await {
                storage_blocked.set(Some(e.to_string()));
                return;
            }
            // This configuration's earlier conversation on this site, unless a chat started.
            if let Ok(Some(saved)) = crate::chat_store::get(&conv_id).await {
                if chat.conv.with_untracked(|c| c.messages.is_empty()) {
                    chat.conv.update(|c| {
                        c.messages = saved.messages;
                        c.updated = saved.updated;
                    });
                }
            }
        });
    }
    let new_chat = {
        let conv_id = conv_id.clone();
        move |_| {
            if generating.get_untracked() {
                return;
            }
            chat.conv.update(|c| c.messages.clear());
            chat.last_stats.set(None);
            crate::chat_store::delete(&conv_id);
            crate::engine_client::reset();
        }
    };
    let own_tab = {
        let mut q = vec!["mode=chat".to_string()];
        if let Some(m) = &opts.model {
            q.push(format!("model={m}"));
        }
        format!("embed.html?{}", q.join("&"))
    };
    Effect::new(move |_| {
        if embedder.get() != Embedder::Allowed || storage_blocked.get().is_some() {
            return;
        }
        match entry.get() {
            Some(Ok(e)) => {
                if selected.0.get_untracked().is_some() {
                    return;
                }
                selected.0.set(Some(e.clone()));
                leptos::task::spawn_local(async move {
                    let have = crate::download::stored_complete(&e.id)
                        .await
                        .ok()
                        .flatten()
                        .is_some();
                    stored.set(have);
                    if have {
                        dl.load(&e.id).await;
                    }
                });
            }
            Some(Err(msg)) => banner.show(msg),
            None => {}
        }
    });

    let title = opts.title.clone();
    let backend = move || match engine.loaded.get() {
        Some(l) if l.backend == "gpu" => "WebGPU".to_string(),
        Some(_) => "CPU".to_string(),
        None => String::new(),
    };
    view! {
        <div class="embed">
            <header class="embed-bar">
                <h1 class="embed-title" data-testid="embed-title">{title}</h1>
                <span class="embed-backend" data-testid="backend-badge">{backend}</span>
                <button class="embed-new secondary" data-testid="embed-new-chat" title="Start a new conversation"
                    disabled=move || generating.get() || chat.conv.with(|c| c.messages.is_empty())
                    on:click=new_chat>"New chat"</button>
            </header>
            <Show when=move || banner.0.get().is_some()>
                <div class="error-banner" data-testid="error-banner" role="alert">
                    <span>{move || banner.0.get().unwrap_or_default()}</span>
                    <button class="dismiss" aria-label="Dismiss" on:click=move |_| banner.clear()>"×"</button>
                </div>
            </Show>
            {move || match embedder.get() {
                Embedder::Checking => view! { <p class="embed-note">"Starting…"</p> }.into_any(),
                Embedder::Refused(origin) => view! {
                    <div class="embed-refused" data-testid="embed-not-allowed" role="alert">
                        <p><strong>"Not allowed here."</strong></p>
                        <p>{format!("This chat is not enabled for {origin}. The site's administrator can add it to the app's embed.json.")}</p>
                    </div>
                }.into_any(),
                Embedder::Allowed if storage_blocked.get().is_some() => view! {
                    <div class="embed-refused" data-testid="embed-storage-blocked" role="alert">
                        <p><strong>"This browser blocks storage for chats embedded in other sites."</strong></p>
                        <p>"The model has to be stored in the browser before it can answer (third-party cookies and site data are blocked here; a site can avoid this by serving the chat from its own domain). "
                           <a href=own_tab.clone() target="_blank" rel="noopener">"Open the chat in its own tab"</a>
                           ", or allow site data for this chat's site in the browser's settings."</p>
                        <p class="embed-note">{move || storage_blocked.get().unwrap_or_default()}</p>
                    </div>
                }.into_any(),
                Embedder::Allowed => view! {
                    <Show when=move || engine.loaded.get().is_none()>
                        <FirstRun stored/>
                    </Show>
                    <ChatPanel/>
                }.into_any(),
            }}
        </div>
    }
}

/// The model to offer: `wanted` from the catalog (or stored in this browser), else the default.
async fn pick(wanted: Option<String>) -> Result<CatalogEntry, String> {
    let list = fetch_catalog().await.map_err(|e| e.to_string())?;
    match wanted {
        Some(id) => match list.iter().find(|e| e.id == id) {
            Some(e) if e.supported => Ok(e.clone()),
            Some(_) => Err(format!("The model “{id}” is not supported yet.")),
            None => crate::download::stored_complete(&id)
                .await
                .ok()
                .flatten()
                .map(|r| CatalogEntry::from_stored(&r))
                .ok_or_else(|| format!("The model “{id}” is not in this app's catalog.")),
        },
        None => list
            .iter()
            .find(|e| e.default)
            .or(list.first())
            .cloned()
            .ok_or_else(|| "The app's catalog is empty.".to_string()),
    }
}

/// Before the first answer: which model, how big, where it goes; the download (or load) panel.
#[component]
fn FirstRun(stored: RwSignal<bool>) -> impl IntoView {
    let selected = expect_context::<SelectedModel>().0;
    view! {
        <section class="embed-first-run" data-testid="embed-first-run">
            {move || selected.get().map(|e| view! {
                <p class="embed-model">
                    <strong>{e.name.clone()}</strong>
                    {format!(" · {} · {}", e.quant, e.size_text())}
                </p>
            })}
            <Show when=move || !stored.get()>
                <p class="embed-storage" data-testid="embed-storage-note">
                    "The model is downloaded once and kept in this browser for this site only: "
                    "browsers keep each site's embedded storage apart, so every site that embeds this chat "
                    "stores its own copy. After that, answers are computed on this "
                    "device and nothing you type leaves it."
                </p>
            </Show>
            <DownloadPanel/>
        </section>
    }
}
