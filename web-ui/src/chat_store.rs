//! The saved conversations in IndexedDB (database `slm`, store `chats`: conversation id → JSON
//! [`Conversation`]). Writes go through one queue, so they land in the order they were made
//! while the page goes on; conversations kept in `localStorage` by earlier versions
//! (`slm.conversations`) are moved here once, at the first start that finds them.
//!
//! `globalThis.__slm_chat_writes` is the number of writes not yet committed (the browser tests
//! wait for 0 before reading the store).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;

use gloo::storage::{LocalStorage, Storage};
use wasm_bindgen::JsValue;

use crate::idb::{Db, IdbError, CHATS};
use crate::state::Conversation;

/// Where conversations were kept before IndexedDB.
pub const LEGACY_KEY: &str = "slm.conversations";

/// Ids of the widget's conversations (`embed:…`, one per embedding configuration). They share
/// the store with the app's page when both run on one site, and the app's list leaves them out.
pub const EMBED_PREFIX: &str = "embed:";

type ErrorHook = Option<Rc<dyn Fn(String)>>;

enum Op {
    Put(Box<Conversation>),
    Delete(String),
}

thread_local! {
    static DB: RefCell<Option<Db>> = const { RefCell::new(None) };
    static QUEUE: RefCell<VecDeque<Op>> = const { RefCell::new(VecDeque::new()) };
    static IN_FLIGHT: Cell<bool> = const { Cell::new(false) };
    static ON_ERROR: RefCell<ErrorHook> = const { RefCell::new(None) };
}

/// Called with a plain sentence when a write fails (the banner shows it).
pub fn on_error(f: impl Fn(String) + 'static) {
    ON_ERROR.with(|e| *e.borrow_mut() = Some(Rc::new(f)));
}

fn report(msg: String) {
    web_sys::console::warn_1(&JsValue::from_str(&msg));
    if let Some(f) = ON_ERROR.with(|e| e.borrow().clone()) {
        f(msg);
    }
}

async fn db() -> Result<Db, IdbError> {
    if let Some(db) = DB.with(|d| d.borrow().clone()) {
        return Ok(db);
    }
    let db = Db::open().await?;
    DB.with(|d| *d.borrow_mut() = Some(db.clone()));
    Ok(db)
}

fn publish_pending() {
    let n = QUEUE.with(|q| q.borrow().len()) + usize::from(IN_FLIGHT.with(Cell::get));
    let _ = js_sys::Reflect::set(
        &js_sys::global(),
        &JsValue::from_str("__slm_chat_writes"),
        &JsValue::from_f64(n as f64),
    );
}

/// Store `c` (replacing the record with its id).
pub fn put(c: &Conversation) {
    enqueue(Op::Put(Box::new(c.clone())));
}

/// Delete conversation `id`.
pub fn delete(id: &str) {
    enqueue(Op::Delete(id.to_string()));
}

fn enqueue(op: Op) {
    QUEUE.with(|q| q.borrow_mut().push_back(op));
    let start = !IN_FLIGHT.with(|f| f.replace(true));
    publish_pending();
    if start {
        wasm_bindgen_futures::spawn_local(drain());
    }
}

async fn drain() {
    while let Some(op) = QUEUE.with(|q| q.borrow_mut().pop_front()) {
        let r = match db().await {
            Ok(db) => match &op {
                Op::Put(c) => db.put_json(CHATS, &c.id, c.as_ref()).await,
                Op::Delete(id) => db.delete(CHATS, id).await,
            },
            Err(e) => Err(e),
        };
        if let Err(e) = r {
            let what = match op {
                Op::Put(c) => format!("The conversation “{}” could not be saved", c.title),
                Op::Delete(_) => "A conversation could not be deleted".to_string(),
            };
            let why = if e.name == "QuotaExceededError" {
                "this site's storage is full".to_string()
            } else {
                e.message
            };
            report(format!("{what}: {why}."));
        }
        publish_pending();
    }
    IN_FLIGHT.with(|f| f.set(false));
    publish_pending();
}

/// Every saved conversation, newest first. Conversations still in `localStorage` are moved
/// into IndexedDB first (in one transaction; the old key is removed only once they are
/// stored). Unreadable records are skipped.
pub async fn load_all() -> Result<Vec<Conversation>, IdbError> {
    let db = db().await?;
    if let Ok(Some(text)) = LocalStorage::raw().get_item(LEGACY_KEY) {
        match serde_json::from_str::<Vec<Conversation>>(&text) {
            Ok(list) => {
                let items: Vec<(String, Conversation)> =
                    list.into_iter().map(|c| (c.id.clone(), c)).collect();
                db.put_json_many(CHATS, &items).await?;
                LocalStorage::delete(LEGACY_KEY);
            }
            // Left where it is: a later version may read it; nothing is lost.
            Err(e) => report(format!(
                "The conversations saved by an earlier version could not be read ({e})."
            )),
        }
    }
    let mut v: Vec<Conversation> = db.all_json(CHATS).await?;
    v.retain(|c| !c.id.starts_with(EMBED_PREFIX));
    sort_newest_first(&mut v);
    Ok(v)
}

/// The conversation stored under `id`, if any (an unreadable record counts as none).
pub async fn get(id: &str) -> Result<Option<Conversation>, IdbError> {
    Ok(db().await?.get_json(CHATS, id).await.unwrap_or(None))
}

/// Newest first (ties: by id, so the order is stable).
pub fn sort_newest_first(v: &mut [Conversation]) {
    v.sort_by(|a, b| {
        b.updated
            .total_cmp(&a.updated)
            .then_with(|| b.id.cmp(&a.id))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv(id: &str, updated: f64) -> Conversation {
        Conversation {
            id: id.into(),
            title: id.into(),
            system: String::new(),
            messages: Vec::new(),
            updated,
            settings: None,
        }
    }

    #[test]
    fn newest_first_with_a_stable_order_for_ties() {
        let mut v = vec![
            conv("a", 1.0),
            conv("c", 5.0),
            conv("b", 1.0),
            conv("d", 0.0),
        ];
        sort_newest_first(&mut v);
        let ids: Vec<&str> = v.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["c", "b", "a", "d"]);
    }

    #[test]
    fn legacy_conversations_parse_without_the_newer_fields() {
        // What localStorage held before `updated` and `settings` existed.
        let text =
            r#"[{"id":"c1","title":"t","system":"s","messages":[{"role":"user","content":"hi"}]}]"#;
        let v: Vec<Conversation> = serde_json::from_str(text).unwrap();
        assert_eq!(v[0].updated, 0.0);
        assert_eq!(v[0].settings, None);
        assert_eq!(v[0].messages[0].stats, None);
    }
}
