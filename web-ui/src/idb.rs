//! A small promise-based IndexedDB wrapper used by the page (downloads, conversations) and by
//! the worker (reading model chunks). Database `slm`, stores:
//! - `models`: model id → JSON [`crate::catalog::StoredModel`];
//! - `chunks`: `"{model id}#{index:06}"` → `Uint8Array` of up to [`crate::download::CHUNK`] bytes;
//! - `chats`: conversation id → JSON conversation.

use js_sys::{Array, Promise, Uint8Array};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use web_sys::{
    IdbDatabase, IdbFactory, IdbKeyRange, IdbOpenDbRequest, IdbRequest, IdbTransaction,
    IdbTransactionMode,
};

use crate::js::{await_promise, err_text, global_get};

pub const DB_NAME: &str = "slm";
const DB_VERSION: u32 = 1;
pub const MODELS: &str = "models";
pub const CHUNKS: &str = "chunks";
pub const CHATS: &str = "chats";

/// An IndexedDB failure: the DOMException name (`QuotaExceededError`, …) and its text.
#[derive(Clone, Debug)]
pub struct IdbError {
    pub name: String,
    pub message: String,
}

impl std::fmt::Display for IdbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.message)
    }
}

impl From<JsValue> for IdbError {
    fn from(v: JsValue) -> Self {
        IdbError {
            name: crate::js::err_name(&v),
            message: err_text(&v),
        }
    }
}

type R<T> = Result<T, IdbError>;

fn plain(msg: &str) -> IdbError {
    IdbError {
        name: "Error".into(),
        message: msg.into(),
    }
}

/// Key of chunk `index` of model `id`; zero-padded so keys sort in file order.
pub fn chunk_key(id: &str, index: u32) -> String {
    format!("{id}#{index:06}")
}

/// Resolve with the request's result on `success`, reject with its error on `error`.
async fn request(req: &IdbRequest) -> R<JsValue> {
    let r = req.clone();
    let mut handlers = Handlers::new(move || {
        r.set_onsuccess(None);
        r.set_onerror(None);
    });
    let p = Promise::new(&mut |resolve, reject| {
        let r = req.clone();
        let ok = Handler::new(move |_e: JsValue| {
            let _ = resolve.call1(&JsValue::NULL, &r.result().unwrap_or(JsValue::UNDEFINED));
        });
        let r = req.clone();
        let err = Handler::new(move |_e: JsValue| {
            let e = r
                .error()
                .ok()
                .flatten()
                .map(JsValue::from)
                .unwrap_or_else(|| JsValue::from_str("IndexedDB request failed"));
            let _ = reject.call1(&JsValue::NULL, &e);
        });
        req.set_onsuccess(Some(ok.as_ref().unchecked_ref()));
        req.set_onerror(Some(err.as_ref().unchecked_ref()));
        handlers.keep([ok, err]);
    });
    Ok(await_promise(p).await?)
}

/// An event handler.
type Handler = Closure<dyn FnMut(JsValue)>;

/// The handlers of one awaited request or transaction, owned by the Rust side: when the await
/// ends (or is cancelled) they are unset and dropped. `Closure::once_into_js` would leak every
/// handler that never runs (the error handler of a request that succeeded) together with what it
/// holds: the request, and so its result, a model chunk of megabytes.
struct Handlers {
    unset: Box<dyn Fn()>,
    kept: Vec<Handler>,
}

impl Handlers {
    fn new(unset: impl Fn() + 'static) -> Self {
        Self {
            unset: Box::new(unset),
            kept: Vec::new(),
        }
    }
    fn keep(&mut self, h: impl IntoIterator<Item = Handler>) {
        self.kept.extend(h);
    }
}

impl Drop for Handlers {
    fn drop(&mut self) {
        // Before `kept` is dropped: no handler may run once its closure is gone.
        (self.unset)();
    }
}

/// Resolve when the transaction commits; reject with its error when it fails or aborts (this is
/// where `QuotaExceededError` shows up).
async fn committed(tx: &IdbTransaction) -> R<()> {
    let t = tx.clone();
    let mut handlers = Handlers::new(move || {
        t.set_oncomplete(None);
        t.set_onerror(None);
        t.set_onabort(None);
    });
    let p = Promise::new(&mut |resolve, reject| {
        let ok = Handler::new(move |_e: JsValue| {
            let _ = resolve.call0(&JsValue::NULL);
        });
        let failed = |what: &'static str| {
            let (t, reject) = (tx.clone(), reject.clone());
            Handler::new(move |_e: JsValue| {
                let e = t
                    .error()
                    .map(JsValue::from)
                    .unwrap_or_else(|| JsValue::from_str(what));
                let _ = reject.call1(&JsValue::NULL, &e);
            })
        };
        let (fail, abort) = (
            failed("IndexedDB transaction failed"),
            failed("IndexedDB transaction aborted"),
        );
        tx.set_oncomplete(Some(ok.as_ref().unchecked_ref()));
        tx.set_onerror(Some(fail.as_ref().unchecked_ref()));
        tx.set_onabort(Some(abort.as_ref().unchecked_ref()));
        handlers.keep([ok, fail, abort]);
    });
    await_promise(p).await?;
    Ok(())
}

/// An open database handle.
#[derive(Clone)]
pub struct Db(IdbDatabase);

impl Db {
    /// Open (creating the stores on first use). Works in the page and in workers.
    pub async fn open() -> R<Db> {
        let f = global_get("indexedDB");
        if f.is_undefined() || f.is_null() {
            return Err(plain("this browser has no IndexedDB (private mode?)"));
        }
        let f: IdbFactory = f.unchecked_into();
        let req: IdbOpenDbRequest = f.open_with_u32(DB_NAME, DB_VERSION)?;
        let up = Closure::<dyn FnMut(JsValue)>::new(move |e: JsValue| {
            let target = crate::js::get(&e, "target");
            let db = crate::js::get(&target, "result");
            if let Ok(db) = db.dyn_into::<IdbDatabase>() {
                for s in [MODELS, CHUNKS, CHATS] {
                    let _ = db.create_object_store(s);
                }
            }
        });
        req.set_onupgradeneeded(Some(up.as_ref().unchecked_ref()));
        let db = request(&req).await;
        req.set_onupgradeneeded(None);
        drop(up);
        Ok(Db(db?.unchecked_into()))
    }

    fn tx(&self, stores: &[&str], mode: IdbTransactionMode) -> R<IdbTransaction> {
        let names = Array::new();
        for s in stores {
            names.push(&JsValue::from_str(s));
        }
        Ok(self
            .0
            .transaction_with_str_sequence_and_mode(&names, mode)?)
    }

    /// Value under `key`, or `None`.
    pub async fn get(&self, store: &str, key: &str) -> R<Option<JsValue>> {
        let tx = self.tx(&[store], IdbTransactionMode::Readonly)?;
        let v = request(&tx.object_store(store)?.get(&JsValue::from_str(key))?).await?;
        Ok(if v.is_undefined() { None } else { Some(v) })
    }

    /// JSON text under `key`, parsed.
    pub async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        store: &str,
        key: &str,
    ) -> R<Option<T>> {
        match self.get(store, key).await? {
            Some(v) => {
                let s = v
                    .as_string()
                    .ok_or_else(|| plain("stored record is not text"))?;
                serde_json::from_str(&s)
                    .map(Some)
                    .map_err(|e| plain(&format!("stored record is unreadable: {e}")))
            }
            None => Ok(None),
        }
    }

    /// Every value of `store` parsed as JSON (unreadable ones skipped).
    pub async fn all_json<T: serde::de::DeserializeOwned>(&self, store: &str) -> R<Vec<T>> {
        let tx = self.tx(&[store], IdbTransactionMode::Readonly)?;
        let all = request(&tx.object_store(store)?.get_all()?).await?;
        let arr: Array = all.unchecked_into();
        Ok(arr
            .iter()
            .filter_map(|v| v.as_string())
            .filter_map(|s| serde_json::from_str(&s).ok())
            .collect())
    }

    /// Store `value` as JSON text under `key`.
    pub async fn put_json<T: serde::Serialize>(&self, store: &str, key: &str, value: &T) -> R<()> {
        let s = serde_json::to_string(value).map_err(|e| plain(&e.to_string()))?;
        let tx = self.tx(&[store], IdbTransactionMode::Readwrite)?;
        tx.object_store(store)?
            .put_with_key(&JsValue::from_str(&s), &JsValue::from_str(key))?;
        committed(&tx).await
    }

    /// Store each `(key, value)` as JSON text in one transaction (all or none).
    pub async fn put_json_many<T: serde::Serialize>(
        &self,
        store: &str,
        items: &[(String, T)],
    ) -> R<()> {
        let tx = self.tx(&[store], IdbTransactionMode::Readwrite)?;
        let os = tx.object_store(store)?;
        for (k, v) in items {
            let s = serde_json::to_string(v).map_err(|e| plain(&e.to_string()))?;
            os.put_with_key(&JsValue::from_str(&s), &JsValue::from_str(k))?;
        }
        committed(&tx).await
    }

    /// Delete the record under `key` (nothing when there is none).
    pub async fn delete(&self, store: &str, key: &str) -> R<()> {
        let tx = self.tx(&[store], IdbTransactionMode::Readwrite)?;
        tx.object_store(store)?.delete(&JsValue::from_str(key))?;
        committed(&tx).await
    }

    /// Write one model chunk and its updated model record in one transaction, so a record never
    /// claims a chunk that is not stored.
    pub async fn put_chunk<T: serde::Serialize>(
        &self,
        id: &str,
        index: u32,
        bytes: &[u8],
        record: &T,
    ) -> R<()> {
        let s = serde_json::to_string(record).map_err(|e| plain(&e.to_string()))?;
        let tx = self.tx(&[CHUNKS, MODELS], IdbTransactionMode::Readwrite)?;
        let data = Uint8Array::from(bytes);
        tx.object_store(CHUNKS)?
            .put_with_key(&data, &JsValue::from_str(&chunk_key(id, index)))?;
        tx.object_store(MODELS)?
            .put_with_key(&JsValue::from_str(&s), &JsValue::from_str(id))?;
        committed(&tx).await
    }

    /// Chunk `index` of model `id`, copied into wasm memory.
    pub async fn get_chunk(&self, id: &str, index: u32) -> R<Vec<u8>> {
        let a = self.chunk_array(id, index).await?;
        let bytes = a.to_vec();
        release(&a);
        Ok(bytes)
    }

    /// Chunk `index` of model `id` as the array IndexedDB gave (no copy): the worker copies it
    /// into its final place, then frees it with [`release`].
    pub async fn chunk_array(&self, id: &str, index: u32) -> R<Uint8Array> {
        match self.get(CHUNKS, &chunk_key(id, index)).await? {
            Some(v) => Ok(v.unchecked_into()),
            None => Err(plain(&format!(
                "chunk {index} of the model is missing from storage"
            ))),
        }
    }

    /// Delete a model: its record and every chunk.
    pub async fn delete_model(&self, id: &str) -> R<()> {
        let tx = self.tx(&[CHUNKS, MODELS], IdbTransactionMode::Readwrite)?;
        let range = IdbKeyRange::bound(
            &JsValue::from_str(&format!("{id}#")),
            &JsValue::from_str(&format!("{id}#~")),
        )?;
        tx.object_store(CHUNKS)?.delete(&range)?;
        tx.object_store(MODELS)?.delete(&JsValue::from_str(id))?;
        committed(&tx).await
    }

    /// Delete every chunk of a model but keep (and overwrite) its record.
    pub async fn clear_chunks<T: serde::Serialize>(&self, id: &str, record: &T) -> R<()> {
        let s = serde_json::to_string(record).map_err(|e| plain(&e.to_string()))?;
        let tx = self.tx(&[CHUNKS, MODELS], IdbTransactionMode::Readwrite)?;
        let range = IdbKeyRange::bound(
            &JsValue::from_str(&format!("{id}#")),
            &JsValue::from_str(&format!("{id}#~")),
        )?;
        tx.object_store(CHUNKS)?.delete(&range)?;
        tx.object_store(MODELS)?
            .put_with_key(&JsValue::from_str(&s), &JsValue::from_str(id))?;
        committed(&tx).await
    }
}

/// Free `a`'s memory now rather than at the next garbage collection: `ArrayBuffer.transfer(0)`
/// detaches it and drops its bytes (Chromium 114+, Firefox 122+, Safari 17.4+; elsewhere the
/// collector frees it later). A model's chunks would otherwise pile up next to the copy in wasm
/// memory until the collector runs: up to the whole file twice.
pub fn release(a: &Uint8Array) {
    let buf = a.buffer();
    if let Ok(f) = js_sys::Reflect::get(&buf, &JsValue::from_str("transfer")) {
        if let Some(f) = f.dyn_ref::<js_sys::Function>() {
            let _ = f.call1(&buf, &JsValue::from_f64(0.0));
        }
    }
}
