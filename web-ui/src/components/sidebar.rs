//! The conversation list in the sidebar: new chat, search by text, open, rename, delete with an
//! Undo toast, export and import. On narrow screens the sidebar slides over the page ([`SidebarOpen`]).

use leptos::prelude::*;

use crate::components::transfer::ConversationTransfer;
use crate::engine_client;
use crate::state::{Chat, Conversation, Generating, Settings};

/// Whether the slide-over sidebar is open (narrow screens).
#[derive(Clone, Copy)]
pub struct SidebarOpen(pub RwSignal<bool>);

#[component]
pub fn ConversationList() -> impl IntoView {
    let chat = expect_context::<Chat>();
    let sidebar = expect_context::<SidebarOpen>().0;
    let generating = expect_context::<Generating>().0;
    let settings = expect_context::<Settings>().0;
    let query = RwSignal::new(String::new());
    let renaming = RwSignal::new(None::<String>);
    let new_chat = move |_| {
        if generating.get_untracked() {
            return;
        }
        chat.persist();
        let mut c = Conversation::new();
        c.settings = Some(settings.get_untracked());
        chat.conv.set(c);
        chat.last_stats.set(None);
        engine_client::reset();
        sidebar.set(false);
    };
    let shown = move || {
        let q = query.get();
        chat.saved
            .get()
            .into_iter()
            .filter(|c| c.matches(&q))
            .collect::<Vec<_>>()
    };
    view! {
        <section class="conversations">
            <div class="sidebar-head">
                <button class="primary new-chat" data-testid="new-chat" on:click=new_chat>"+ New chat"</button>
                <button class="icon-button sidebar-close" data-testid="sidebar-close" aria-label="Close the sidebar"
                    on:click=move |_| sidebar.set(false)>"×"</button>
            </div>
            <input type="search" class="search" data-testid="conv-search" placeholder="Search conversations"
                aria-label="Search conversations" prop:value=move || query.get()
                on:input=move |ev| query.set(event_target_value(&ev))/>
            <ul class="conv-list" data-testid="conv-list">
                <For each=shown key=|c| (c.id.clone(), c.title.clone(), c.messages.len()) children=move |c| {
                    let id = c.id.clone();
                    let (id_open, id_ren, id_del, id_commit, id_cur) = (id.clone(), id.clone(), id.clone(), id.clone(), id.clone());
                    let title = c.title.clone();
                    let is_renaming = move || renaming.get().as_deref() == Some(id.as_str());
                    let commit = move |v: String| {
                        chat.rename(&id_commit, &v);
                        renaming.set(None);
                    };
                    view! {
                        <li class="conv-item" data-testid="conv-item" class:active=move || chat.conv.with(|x| x.id == id_cur)>
                            <Show when=is_renaming fallback={
                                let title = title.clone();
                                let id_open = id_open.clone();
                                move || {
                                    let id_open = id_open.clone();
                                    view! {
                                        <button class="conv-open" data-testid="conv-open" title=title.clone() on:click=move |_| {
                                            if generating.get_untracked() { return; }
                                            chat.persist();
                                            chat.open(&id_open);
                                            if let Some(s) = chat.conv.with_untracked(|c| c.settings.clone()) {
                                                settings.set(s);
                                            }
                                            engine_client::reset();
                                            sidebar.set(false);
                                        }>{title.clone()}</button>
                                    }
                                }
                            }>
                                <input class="rename" data-testid="conv-rename-input" aria-label="New title" value=title.clone()
                                    autofocus=true
                                    on:keydown={
                                        let commit = commit.clone();
                                        move |ev: leptos::ev::KeyboardEvent| match ev.key().as_str() {
                                            "Enter" => commit(event_target_value(&ev)),
                                            "Escape" => renaming.set(None),
                                            _ => {}
                                        }
                                    }
                                    on:blur={
                                        let commit = commit.clone();
                                        move |ev| commit(event_target_value(&ev))
                                    }/>
                            </Show>
                            <button class="icon-button small" data-testid="conv-rename" aria-label="Rename" title="Rename"
                                on:click={ let id = id_ren.clone(); move |_| renaming.set(Some(id.clone())) }>"✎"</button>
                            <button class="icon-button small delete" data-testid="conv-delete" aria-label="Delete" title="Delete"
                                on:click={ let id = id_del.clone(); move |_| {
                                    if generating.get_untracked() && chat.conv.with_untracked(|c| c.id == id) { return; }
                                    chat.delete(&id)
                                } }>"✕"</button>
                        </li>
                    }
                }/>
            </ul>
            <Show when=move || chat.saved.with(|v| v.is_empty())>
                <p class="hint">"Your conversations appear here. They stay in this browser."</p>
            </Show>
            <ConversationTransfer/>
        </section>
    }
}

/// "Conversation deleted · Undo", for a few seconds after a delete.
#[component]
pub fn UndoToast() -> impl IntoView {
    let chat = expect_context::<Chat>();
    // Hide the toast 8 s after the delete it belongs to.
    Effect::new(move |_| {
        if let Some((_, c)) = chat.deleted.get() {
            let id = c.id.clone();
            set_timeout(
                move || {
                    if chat
                        .deleted
                        .get_untracked()
                        .is_some_and(|(_, c)| c.id == id)
                    {
                        chat.deleted.set(None);
                    }
                },
                std::time::Duration::from_secs(8),
            );
        }
    });
    view! {
        <div class="toast-region" role="status" aria-live="polite">
            {move || chat.deleted.get().map(|(_, c)| view! {
                <div class="toast" data-testid="undo-toast">
                    <span>{format!("Deleted “{}”", c.title)}</span>
                    <button class="secondary" data-testid="undo-button" on:click=move |_| chat.undo_delete()>"Undo"</button>
                </div>
            })}
        </div>
    }
}
