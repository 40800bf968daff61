//! App state shared through Leptos contexts, one newtype per concern, and the conversation
//! model persisted in IndexedDB ([`crate::chat_store`]).

use leptos::prelude::*;
use serde::{Deserialize, Serialize};

use crate::catalog::CatalogEntry;
use crate::engine_client::LoadedInfo;
use crate::protocol::{GenSettings, ReplyStats};

/// The catalog entry the user picked (or added by URL / file).
#[derive(Clone, Copy)]
pub struct SelectedModel(pub RwSignal<Option<CatalogEntry>>);

/// The models the picker offers: the catalog (once fetched) and those added in this session by
/// URL, from a file, or from the stored-models list.
#[derive(Clone, Copy)]
pub struct KnownModels {
    pub catalog: RwSignal<Vec<CatalogEntry>>,
    pub extra: RwSignal<Vec<CatalogEntry>>,
}

impl KnownModels {
    /// The entry with `id`, if the picker offers it.
    pub fn find(&self, id: &str) -> Option<CatalogEntry> {
        self.catalog
            .with_untracked(|c| c.iter().find(|e| e.id == id).cloned())
            .or_else(|| {
                self.extra
                    .with_untracked(|x| x.iter().find(|e| e.id == id).cloned())
            })
    }

    /// Offer `e` in the picker (replacing an added entry with the same id).
    pub fn add(&self, e: CatalogEntry) {
        self.extra.update(|v| {
            v.retain(|x| x.id != e.id);
            v.push(e);
        });
    }
}

/// The one plain-language error shown in the banner, and the stored model whose chat template
/// failed, when the banner offers the built-in chat format for it.
#[derive(Clone, Copy)]
pub struct ErrorBanner(pub RwSignal<Option<String>>, pub RwSignal<Option<String>>);

impl ErrorBanner {
    pub fn show(&self, msg: impl Into<String>) {
        self.1.set(None);
        self.0.set(Some(msg.into()));
    }
    /// Show `msg` with a button that loads `model_id` with the built-in chat format.
    pub fn offer_template_fallback(&self, msg: impl Into<String>, model_id: &str) {
        self.0.set(Some(msg.into()));
        self.1.set(Some(model_id.to_string()));
    }
    pub fn clear(&self) {
        self.0.set(None);
        self.1.set(None);
    }
}

/// Sampling settings for new replies: the open conversation's (kept in it by the chat panel).
#[derive(Clone, Copy)]
pub struct Settings(pub RwSignal<GenSettings>);

/// `auto`, `cpu` or `gpu`: the user's backend choice.
#[derive(Clone, Copy)]
pub struct BackendPref(pub RwSignal<String>);

/// The model running in the worker, and the worker's load progress.
#[derive(Clone, Copy)]
pub struct Engine {
    pub loaded: RwSignal<Option<LoadedInfo>>,
    pub load_progress: RwSignal<Option<(String, f64)>>,
    /// Set when the worker reports that the loaded model's GPU device was lost; cleared when
    /// the page has moved the model to the CPU.
    pub gpu_lost: RwSignal<Option<String>>,
}

/// Bumped when stored models change, so the list re-reads IndexedDB.
#[derive(Clone, Copy)]
pub struct StoreVersion(pub RwSignal<u32>);

/// True while a reply is being generated (set by the chat panel).
#[derive(Clone, Copy)]
pub struct Generating(pub RwSignal<bool>);

/// One message of a conversation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
    #[serde(default)]
    pub stats: Option<ReplyStats>,
}

/// A conversation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Conversation {
    pub id: String,
    pub title: String,
    pub system: String,
    pub messages: Vec<Message>,
    /// When it last changed (ms since the epoch): the list shows the newest first.
    #[serde(default)]
    pub updated: f64,
    /// Its sampling settings (none in conversations saved before they were kept per
    /// conversation: those take the settings in use).
    #[serde(default)]
    pub settings: Option<GenSettings>,
}

pub const DEFAULT_SYSTEM: &str = "You are a helpful assistant.";

impl Conversation {
    pub fn new() -> Self {
        Conversation {
            id: format!("c{}", js_sys::Date::now() as u64),
            title: "New chat".into(),
            system: DEFAULT_SYSTEM.into(),
            messages: Vec::new(),
            updated: js_sys::Date::now(),
            settings: None,
        }
    }

    /// Whether the title or any message contains `q` (case-insensitive; empty matches all).
    pub fn matches(&self, q: &str) -> bool {
        let q = q.trim().to_lowercase();
        q.is_empty()
            || self.title.to_lowercase().contains(&q)
            || self
                .messages
                .iter()
                .any(|m| m.content.to_lowercase().contains(&q))
    }
}

/// The open conversation, the reply being streamed, and the saved conversations.
#[derive(Clone, Copy)]
pub struct Chat {
    pub conv: RwSignal<Conversation>,
    /// Text of the reply being generated.
    pub streaming: RwSignal<Option<String>>,
    pub saved: RwSignal<Vec<Conversation>>,
    /// Stats of the last finished reply (status chip, context meter).
    pub last_stats: RwSignal<Option<ReplyStats>>,
    /// The conversation deleted last, with its place in the list, until undone or replaced.
    pub deleted: RwSignal<Option<(usize, Conversation)>>,
}

impl Chat {
    /// A new chat and no saved conversations yet ([`Chat::load`] reads them).
    pub fn new() -> Self {
        Chat {
            conv: RwSignal::new(Conversation::new()),
            streaming: RwSignal::new(None),
            saved: RwSignal::new(Vec::new()),
            last_stats: RwSignal::new(None),
            deleted: RwSignal::new(None),
        }
    }

    /// Read the saved conversations from IndexedDB (moving those of earlier versions out of
    /// `localStorage` first) and reopen the most recent one with its settings, unless a chat
    /// was already started. Storage failures go to the banner.
    pub fn load(&self, settings: Settings, banner: ErrorBanner) {
        crate::chat_store::on_error(move |m| banner.show(m));
        let chat = *self;
        leptos::task::spawn_local(async move {
            match crate::chat_store::load_all().await {
                Ok(list) => {
                    chat.saved.update(|v| {
                        // Anything saved while loading stays (it is newer).
                        for c in list {
                            if !v.iter().any(|x| x.id == c.id) {
                                v.push(c);
                            }
                        }
                        crate::chat_store::sort_newest_first(v);
                    });
                    let fresh = chat.conv.with_untracked(|c| c.messages.is_empty());
                    if let Some(first) = chat.saved.with_untracked(|v| v.first().cloned()) {
                        if fresh {
                            if let Some(s) = first.settings.clone() {
                                settings.0.set(s);
                            }
                            chat.conv.set(first);
                        }
                    }
                }
                Err(e) => banner.show(format!(
                    "Saved conversations could not be read from this browser's storage: {e}"
                )),
            }
        });
    }

    /// Save the open conversation (if it has messages and changed) at the top of the list and
    /// in storage.
    pub fn persist(&self) {
        let c = self.conv.get_untracked();
        let unchanged = self.saved.with_untracked(|v| {
            v.iter().any(|x| {
                x.id == c.id
                    && x.messages == c.messages
                    && x.system == c.system
                    && x.title == c.title
                    && x.settings == c.settings
            })
        });
        if c.messages.is_empty() || unchanged {
            return;
        }
        self.conv
            .update_untracked(|c| c.updated = js_sys::Date::now());
        let c = self.conv.get_untracked();
        self.saved.update(|v| {
            v.retain(|x| x.id != c.id);
            v.insert(0, c.clone());
        });
        crate::chat_store::put(&c);
    }

    /// Keep the open conversation's settings in its saved copy (its place in the list stays).
    pub fn store_settings(&self) {
        let c = self.conv.get_untracked();
        let mut changed = None;
        self.saved.update_untracked(|v| {
            if let Some(x) = v
                .iter_mut()
                .find(|x| x.id == c.id && x.settings != c.settings)
            {
                x.settings = c.settings.clone();
                changed = Some(x.clone());
            }
        });
        if let Some(x) = changed {
            crate::chat_store::put(&x);
        }
    }

    /// Open saved conversation `id` (the caller resets the engine's cache).
    pub fn open(&self, id: &str) {
        if let Some(c) = self
            .saved
            .with_untracked(|v| v.iter().find(|x| x.id == id).cloned())
        {
            self.conv.set(c);
            self.last_stats.set(None);
        }
    }

    /// Delete `id`; [`Chat::undo_delete`] puts it back.
    pub fn delete(&self, id: &str) {
        let mut removed = None;
        self.saved.update(|v| {
            if let Some(i) = v.iter().position(|x| x.id == id) {
                removed = Some((i, v.remove(i)));
            }
        });
        crate::chat_store::delete(id);
        if self.conv.get_untracked().id == id {
            self.conv.set(Conversation::new());
            self.last_stats.set(None);
        }
        self.deleted.set(removed);
    }

    pub fn undo_delete(&self) {
        if let Some((i, c)) = self.deleted.get_untracked() {
            self.deleted.set(None);
            crate::chat_store::put(&c);
            self.saved.update(|v| {
                let i = i.min(v.len());
                v.insert(i, c);
            });
        }
    }

    /// Add conversations from an export; one with the id of a saved one replaces it.
    pub fn import(&self, list: Vec<Conversation>) {
        self.saved.update(|v| {
            for c in list {
                crate::chat_store::put(&c);
                v.retain(|x| x.id != c.id);
                v.push(c);
            }
            crate::chat_store::sort_newest_first(v);
        });
    }

    pub fn rename(&self, id: &str, title: &str) {
        let title = title.trim();
        if title.is_empty() {
            return;
        }
        self.saved.update(|v| {
            if let Some(c) = v.iter_mut().find(|x| x.id == id) {
                c.title = title.to_string();
                crate::chat_store::put(c);
            }
        });
        if self.conv.get_untracked().id == id {
            self.conv.update(|c| c.title = title.to_string());
        }
    }
}
