//! App state shared through Leptos contexts, one newtype per concern, and the conversation
//! model persisted in `localStorage`.

use gloo::storage::{LocalStorage, Storage};
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

/// Sampling settings and the system prompt for new replies.
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
}

pub const DEFAULT_SYSTEM: &str = "You are a helpful assistant.";

impl Conversation {
    pub fn new() -> Self {
        Conversation {
            id: format!("c{}", js_sys::Date::now() as u64),
            title: "New chat".into(),
            system: DEFAULT_SYSTEM.into(),
            messages: Vec::new(),
        }
    }
}

/// The open conversation, the reply being streamed, and the saved conversations.
#[derive(Clone, Copy)]
pub struct Chat {
    pub conv: RwSignal<Conversation>,
    /// Text of the reply being generated.
    pub streaming: RwSignal<Option<String>>,
    pub saved: RwSignal<Vec<Conversation>>,
}

const CHATS_KEY: &str = "slm.conversations";

impl Chat {
    pub fn load_saved() -> Vec<Conversation> {
        LocalStorage::get(CHATS_KEY).unwrap_or_default()
    }

    /// Save the open conversation (if it has messages) into the list and storage.
    pub fn persist(&self) {
        let c = self.conv.get_untracked();
        if c.messages.is_empty() {
            return;
        }
        self.saved
            .update(|v| match v.iter_mut().find(|x| x.id == c.id) {
                Some(x) => *x = c.clone(),
                None => v.insert(0, c.clone()),
            });
        let _ = LocalStorage::set(CHATS_KEY, self.saved.get_untracked());
    }

    pub fn delete(&self, id: &str) {
        self.saved.update(|v| v.retain(|x| x.id != id));
        let _ = LocalStorage::set(CHATS_KEY, self.saved.get_untracked());
        if self.conv.get_untracked().id == id {
            self.conv.set(Conversation::new());
        }
    }
}
