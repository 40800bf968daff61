//! The frame's side of the host-page API: one `message` listener that checks each message's
//! origin against the allowed list, parses it ([`crate::api::parse`]) and answers only the window
//! that sent it, addressed to its origin (never `*`). Messages are handled in the order they
//! arrive; each request keeps its id, so several in flight are each answered once.
//!
//! In `chat` mode only `hello` is answered (the widget learns who embeds it); in `api` mode
//! `connect` downloads (once, into this browser's storage for this site) and loads a model,
//! `chat` runs a completion on the engine worker (streamed or not), `abort` stops one, and
//! `models.list` lists the catalog and what is stored.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

use js_sys::Function;
use leptos::prelude::*;
use serde_json::{json, Value};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use web_sys::MessageEvent;

use super::origins::{self, Allowed};
use super::{Embedder, Mode};
use crate::api::{self, ApiError, ChatRequest, Request};
use crate::catalog::{fetch_catalog, CatalogEntry};
use crate::download;
use crate::engine_client::{self, RequestId};
use crate::error::AppError;
use crate::js::get;

/// Where answers to one message go: the window that sent it, at its origin.
#[derive(Clone)]
struct Reply {
    target: JsValue,
    origin: String,
}

impl Reply {
    fn post(&self, text: &str) {
        if let Ok(f) = get(&self.target, "postMessage").dyn_into::<Function>() {
            let _ = f.call2(
                &self.target,
                &JsValue::from_str(text),
                &JsValue::from_str(&self.origin),
            );
        }
    }
    fn error(&self, id: u64, e: &ApiError) {
        self.post(&api::error_msg(id, e));
    }
}

/// A chat request between its arrival and its answer.
struct Flight {
    worker_id: RequestId,
    /// Its generate request was posted to the worker (an abort must then stop it there).
    posted: bool,
    aborted: bool,
}

struct State {
    mode: Mode,
    embedder: RwSignal<Embedder>,
    /// Messages not yet handled, in arrival order: (origin, source, data).
    queue: VecDeque<(String, JsValue, JsValue)>,
    pumping: bool,
    /// Model loaded by `connect` (api mode).
    model: Option<String>,
    /// The backend it runs on.
    backend: String,
    connecting: bool,
    flights: HashMap<u64, Flight>,
}

thread_local! {
    static STATE: RefCell<Option<State>> = const { RefCell::new(None) };
}

fn with<R>(f: impl FnOnce(&mut State) -> R) -> Option<R> {
    STATE.with(|s| s.borrow_mut().as_mut().map(f))
}

fn parent() -> Option<JsValue> {
    let w = web_sys::window()?;
    let p: JsValue = w.parent().ok().flatten()?.into();
    (!js_sys::Object::is(&p, &w.into())).then_some(p)
}

/// Listen for host messages and tell the parent page the frame is ready. `embedder` is set once
/// it is known whether the page that frames this one may.
pub fn install(mode: Mode, embedder: RwSignal<Embedder>) {
    STATE.with(|s| {
        *s.borrow_mut() = Some(State {
            mode,
            embedder,
            queue: VecDeque::new(),
            pumping: false,
            model: None,
            backend: String::new(),
            connecting: false,
            flights: HashMap::new(),
        })
    });
    let Some(win) = web_sys::window() else {
        return;
    };
    match parent() {
        // Opened on its own (not framed): the app's own origin.
        None => embedder.set(Embedder::Allowed),
        Some(p) => {
            // Where the browser names the framing pages, check them at once; elsewhere the
            // parent's `hello` (its origin is the browser's, not the host's word) decides.
            leptos::task::spawn_local(async move {
                let allowed = origins::allowed().await;
                if let Some(list) = origins::ancestor_origins() {
                    match list.iter().find(|o| !allowed.permits(o)) {
                        Some(o) => embedder.set(Embedder::Refused(o.clone())),
                        None if !list.is_empty() => embedder.set(Embedder::Allowed),
                        None => {}
                    }
                }
            });
            let onmessage = Closure::<dyn FnMut(MessageEvent)>::new(move |e: MessageEvent| {
                let source: JsValue = e.source().map(JsValue::from).unwrap_or(JsValue::NULL);
                let pump = with(|s| {
                    if s.queue.len() >= 4 * api::MAX_IN_FLIGHT {
                        return false;
                    }
                    s.queue.push_back((e.origin(), source, e.data()));
                    !std::mem::replace(&mut s.pumping, true)
                });
                if pump == Some(true) {
                    leptos::task::spawn_local(pump_queue());
                }
            });
            let _ =
                win.add_event_listener_with_callback("message", onmessage.as_ref().unchecked_ref());
            onmessage.forget();
            // Nothing secret: only that the frame listens.
            Reply {
                target: p,
                origin: "*".into(),
            }
            .post(&api::ready_msg());
        }
    }
}

async fn pump_queue() {
    let allowed = origins::allowed().await;
    while let Some((origin, source, data)) = with(|s| s.queue.pop_front()).flatten() {
        dispatch(&allowed, origin, source, data);
    }
    with(|s| s.pumping = false);
}

fn dispatch(allowed: &Allowed, origin: String, source: JsValue, data: JsValue) {
    if source.is_null() {
        return;
    }
    let from_parent = parent().is_some_and(|p| js_sys::Object::is(&p, &source));
    let reply = Reply {
        target: source,
        origin: origin.clone(),
    };
    let text = data.as_string();
    let id = text.as_deref().map_or(0, api::lenient_id);
    let Some((mode, embedder)) = with(|s| (s.mode, s.embedder)) else {
        return;
    };
    if !allowed.permits(&origin) {
        if from_parent {
            embedder.set(Embedder::Refused(origin.clone()));
        }
        return reply.error(
            id,
            &ApiError::new(
                "not_allowed",
                format!("{origin} is not allowed to use this slm app (its embed.json lists the sites that may)"),
            ),
        );
    }
    let Some(text) = text else {
        return reply.error(
            0,
            &ApiError::new("bad_request", "a message is a JSON string"),
        );
    };
    let (id, req) = match api::parse(&text) {
        Ok(r) => r,
        Err((id, e)) => return reply.error(id, &e),
    };
    if matches!(embedder.get_untracked(), Embedder::Refused(_)) {
        return reply.error(id, &ApiError::new("not_allowed", "not allowed here"));
    }
    match req {
        Request::Hello => {
            if from_parent && embedder.get_untracked() == Embedder::Checking {
                embedder.set(Embedder::Allowed);
            }
            let m = if mode == Mode::Api { "api" } else { "chat" };
            reply.post(&api::result_msg(id, json!({ "app": "slm", "mode": m })));
        }
        _ if mode == Mode::Chat => reply.error(
            id,
            &ApiError::new(
                "bad_request",
                "this frame is the chat widget; the API is SLM.connect()",
            ),
        ),
        Request::Abort { target } => abort(target),
        Request::ModelsList => leptos::task::spawn_local(async move {
            match models_list().await {
                Ok(v) => reply.post(&api::result_msg(id, v)),
                Err(e) => reply.error(id, &e),
            }
        }),
        Request::Connect { model, backend } => {
            if with(|s| std::mem::replace(&mut s.connecting, true)) == Some(true) {
                return reply.error(id, &ApiError::new("busy", "a connect is already running"));
            }
            leptos::task::spawn_local(async move {
                let r = connect(id, &model, &backend, &reply).await;
                with(|s| s.connecting = false);
                match r {
                    Ok(v) => reply.post(&api::result_msg(id, v)),
                    Err(e) => reply.error(id, &e),
                }
            })
        }
        Request::Chat(c) => {
            let dup = with(|s| s.flights.contains_key(&id)).unwrap_or(true);
            let full = with(|s| s.flights.len() >= api::MAX_IN_FLIGHT).unwrap_or(true);
            if dup || full {
                let why = if dup {
                    "a request with this id is already running"
                } else {
                    "too many requests in flight"
                };
                return reply.error(id, &ApiError::new("busy", why));
            }
            let worker_id = RequestId::next();
            with(|s| {
                s.flights.insert(
                    id,
                    Flight {
                        worker_id,
                        posted: false,
                        aborted: false,
                    },
                )
            });
            leptos::task::spawn_local(async move {
                let r = chat(id, worker_id, c, &reply).await;
                with(|s| s.flights.remove(&id));
                match r {
                    Ok(v) => reply.post(&api::result_msg(id, v)),
                    Err(e) => reply.error(id, &e),
                }
            })
        }
    }
}

/// Abort chat request `target`: before it reached the worker it never starts; in the worker it
/// ends at the next token (or, still queued there, is dropped); either way it answers `aborted`.
fn abort(target: u64) {
    let stop = with(|s| {
        let f = s.flights.get_mut(&target)?;
        f.aborted = true;
        f.posted.then_some(f.worker_id)
    })
    .flatten();
    if let Some(w) = stop {
        engine_client::stop(Some(w));
    }
}

async fn chat(
    id: u64,
    worker_id: RequestId,
    c: ChatRequest,
    reply: &Reply,
) -> Result<Value, ApiError> {
    let model = with(|s| s.model.clone()).flatten().ok_or_else(|| {
        ApiError::new(
            "not_connected",
            "no model is loaded: call SLM.connect({ model }) first",
        )
    })?;
    let aborted = with(|s| {
        let f = s.flights.get_mut(&id)?;
        f.posted = !f.aborted;
        Some(f.aborted)
    })
    .flatten()
    .unwrap_or(true);
    if aborted {
        return Err(ApiError::new("aborted", "the request was aborted"));
    }
    let (turns, settings) = c.to_engine();
    let text = Rc::new(RefCell::new(String::new()));
    let (t, r) = (text.clone(), reply.clone());
    let stream = c.stream;
    let stats = engine_client::generate(worker_id, turns, settings, move |piece| {
        t.borrow_mut().push_str(piece);
        if stream && !piece.is_empty() {
            r.post(&api::chunk_msg(id, piece));
        }
    })
    .await
    .map_err(|e| ApiError::new(api::worker_error_code(&e.kind), e.message))?;
    let finish = api::finish_reason(&stats.stop_reason)?;
    let content = text.borrow().clone();
    Ok(json!({
        "model": model,
        "content": content,
        "finish_reason": finish,
        "usage": {
            "prompt_tokens": stats.n_prompt,
            "completion_tokens": stats.n_generated,
            "total_tokens": stats.n_prompt + stats.n_generated,
        },
        "stats": {
            "ttft_ms": stats.ttft_ms,
            "prefill_tok_s": stats.prefill_tok_s,
            "decode_tok_s": stats.decode_tok_s,
        },
    }))
}

fn app_error(e: AppError) -> ApiError {
    match e {
        AppError::Quota(_) => ApiError::new("storage_full", e.to_string()),
        AppError::Storage(_) => ApiError::new("storage_unavailable", e.to_string()),
        _ => ApiError::new("download_failed", e.to_string()),
    }
}

/// The catalog entry (or stored model) with `id`.
async fn find_entry(id: &str) -> Result<CatalogEntry, ApiError> {
    let catalog = fetch_catalog().await.unwrap_or_default();
    if let Some(e) = catalog.into_iter().find(|e| e.id == id) {
        return Ok(e);
    }
    download::stored_models()
        .await
        .unwrap_or_default()
        .into_iter()
        .find(|r| r.id == id && r.complete)
        .map(|r| CatalogEntry::from_stored(&r))
        .ok_or_else(|| {
            ApiError::new(
                "model_not_found",
                format!("`{id}` is neither in this app's catalog nor stored in this browser"),
            )
        })
}

async fn connect(id: u64, model: &str, backend: &str, reply: &Reply) -> Result<Value, ApiError> {
    let entry = find_entry(model).await?;
    if !entry.supported {
        return Err(ApiError::new(
            "model_not_found",
            format!("`{model}` is not supported yet"),
        ));
    }
    let stored = download::stored_complete(model).await.map_err(app_error)?;
    if stored.is_none() {
        let ctrl = web_sys::AbortController::new()
            .map_err(|_| ApiError::new("download_failed", "no AbortController"))?;
        // One progress message per 0.5 % (and per phase), not per network read.
        let last = Cell::new((String::new(), -1.0f64));
        let r = reply.clone();
        let on = move |p: download::Progress| {
            let pct = p.percent();
            let (ph, prev) = last.take();
            if ph != p.phase || pct - prev >= 0.5 || pct >= 100.0 {
                r.post(&api::progress_msg(
                    id,
                    p.phase,
                    p.bytes as f64,
                    p.total as f64,
                ));
                last.set((p.phase.to_string(), pct));
            } else {
                last.set((ph, prev));
            }
        };
        download::download(&entry, &ctrl.signal(), &on)
            .await
            .map_err(app_error)?;
    }
    let loaded = with(|s| s.model.clone()).flatten();
    if loaded.as_deref() != Some(model) {
        with(|s| s.model = None);
        let r = reply.clone();
        let info = engine_client::load(
            model,
            backend,
            crate::protocol::GenSettings::default().n_ctx,
            false,
            move |phase, f| {
                r.post(&api::progress_msg(
                    id,
                    &format!("loading: {phase}"),
                    f * 100.0,
                    100.0,
                ))
            },
        )
        .await
        .map_err(|e| ApiError::new(api::worker_error_code(&e.kind), e.message))?;
        with(|s| {
            s.model = Some(model.to_string());
            s.backend = info.backend;
        });
    }
    let backend = with(|s| s.backend.clone()).unwrap_or_default();
    Ok(json!({ "model": model, "backend": backend }))
}

async fn models_list() -> Result<Value, ApiError> {
    let catalog = fetch_catalog().await.unwrap_or_default();
    let stored = download::stored_models().await.unwrap_or_default();
    let is_stored = |id: &str| stored.iter().any(|r| r.id == id && r.complete);
    let mut data: Vec<Value> = catalog
        .iter()
        .map(|e| {
            json!({
                "id": e.id, "object": "model", "owned_by": "slm", "name": e.name,
                "size": e.size, "supported": e.supported, "stored": is_stored(&e.id),
            })
        })
        .collect();
    for r in stored
        .iter()
        .filter(|r| r.complete && !catalog.iter().any(|e| e.id == r.id))
    {
        data.push(json!({
            "id": r.id, "object": "model", "owned_by": "slm", "name": r.name,
            "size": r.size, "supported": true, "stored": true,
        }));
    }
    Ok(json!({ "object": "list", "data": data }))
}
