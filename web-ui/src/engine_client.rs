//! The page's handle on the engine worker: starts `worker.js` as a module worker, and turns the
//! worker's messages into awaitable results (load, generate) and streamed events (tokens, load
//! progress).

use std::cell::RefCell;
use std::rc::Rc;

use js_sys::Function;
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use web_sys::{MessageEvent, Worker, WorkerOptions, WorkerType};

use crate::js::{await_promise, deferred, err_text, set};
use crate::protocol::{FromWorker, GenSettings, ReplyStats, ToWorker, Turn};

/// What the worker reported after loading.
#[derive(Clone, Debug, PartialEq)]
pub struct LoadedInfo {
    pub model_id: String,
    pub backend: String,
    pub reason: String,
    /// The WebGPU adapter's name (empty on the CPU).
    pub adapter: String,
    pub n_ctx: usize,
    pub arch: String,
    pub load_ms: f64,
    /// Why the built-in chat format replaced the file's template (the user chose the fallback).
    pub template_fallback: Option<String>,
}

/// A failed worker request: `kind` as in [`FromWorker::Error`].
#[derive(Clone, Debug, PartialEq)]
pub struct WorkerError {
    pub kind: String,
    pub message: String,
}

struct Client {
    worker: Worker,
    /// The request in flight: resolve/reject of its promise and the final message.
    pending: Option<(Function, Function)>,
    result: Option<FromWorker>,
    ready: Option<js_sys::Promise>,
    on_event: Rc<dyn Fn(&FromWorker)>,
    _onmessage: Closure<dyn FnMut(MessageEvent)>,
}

thread_local! {
    static CLIENT: RefCell<Option<Client>> = const { RefCell::new(None) };
}

/// Start the worker. `on_event` sees every message (tokens, progress) as it arrives.
pub fn start(on_event: Rc<dyn Fn(&FromWorker)>) -> Result<(), String> {
    let opts = WorkerOptions::new();
    opts.set_type(WorkerType::Module);
    let worker = Worker::new_with_options("./worker.js", &opts).map_err(|e| err_text(&e))?;
    let (ready, ready_res, _) = deferred();
    let onmessage = Closure::<dyn FnMut(MessageEvent)>::new(move |e: MessageEvent| {
        let Ok(msg) = serde_wasm_bindgen::from_value::<FromWorker>(e.data()) else {
            return;
        };
        if matches!(msg, FromWorker::Ready) {
            let _ = ready_res.call0(&JsValue::NULL);
            return;
        }
        let (handler, done) = CLIENT.with(|c| {
            let c = c.borrow();
            let handler = c.as_ref().map(|c| c.on_event.clone());
            (
                handler,
                matches!(
                    msg,
                    FromWorker::Loaded { .. } | FromWorker::Done(_) | FromWorker::Error { .. }
                ),
            )
        });
        if let Some(h) = handler {
            h(&msg);
        }
        if done {
            let resolve = CLIENT.with(|c| {
                let mut c = c.borrow_mut();
                let c = c.as_mut()?;
                c.result = Some(msg);
                c.pending.take().map(|p| p.0)
            });
            if let Some(r) = resolve {
                let _ = r.call0(&JsValue::NULL);
            }
        }
    });
    worker.set_onmessage(Some(onmessage.as_ref().unchecked_ref()));
    let onerror = Closure::<dyn FnMut(JsValue)>::new(move |e: JsValue| {
        let msg = crate::js::get(&e, "message")
            .as_string()
            .unwrap_or_else(|| "the engine worker failed to start".into());
        let reject = CLIENT.with(|c| {
            c.borrow_mut().as_mut().and_then(|c| {
                c.result = Some(FromWorker::Error {
                    kind: "worker".into(),
                    message: msg.clone(),
                });
                c.pending.take().map(|p| p.0)
            })
        });
        if let Some(r) = reject {
            let _ = r.call0(&JsValue::NULL);
        }
    });
    worker.set_onerror(Some(onerror.as_ref().unchecked_ref()));
    onerror.forget();

    CLIENT.with(|c| {
        *c.borrow_mut() = Some(Client {
            worker,
            pending: None,
            result: None,
            ready: Some(ready),
            on_event,
            _onmessage: onmessage,
        })
    });
    Ok(())
}

/// Post `msg` and wait for the worker's final answer to it.
async fn request(msg: &ToWorker) -> Result<FromWorker, WorkerError> {
    let ready = CLIENT.with(|c| c.borrow_mut().as_mut().and_then(|c| c.ready.take()));
    if let Some(r) = ready {
        let _ = await_promise(r).await;
    }
    let (p, res, rej) = deferred();
    let ser = serde_wasm_bindgen::Serializer::json_compatible();
    let v = serde::Serialize::serialize(msg, &ser).map_err(|e| WorkerError {
        kind: "protocol".into(),
        message: e.to_string(),
    })?;
    CLIENT.with(|c| {
        let mut c = c.borrow_mut();
        let c = c.as_mut().ok_or_else(|| WorkerError {
            kind: "worker".into(),
            message: "the engine worker is not running".into(),
        })?;
        c.result = None;
        c.pending = Some((res, rej));
        c.worker.post_message(&v).map_err(|e| WorkerError {
            kind: "worker".into(),
            message: err_text(&e),
        })
    })?;
    let _ = await_promise(p).await;
    let r = CLIENT.with(|c| c.borrow_mut().as_mut().and_then(|c| c.result.take()));
    match r {
        Some(FromWorker::Error { kind, message }) => Err(WorkerError { kind, message }),
        Some(m) => Ok(m),
        None => Err(WorkerError {
            kind: "worker".into(),
            message: "the engine worker gave no answer".into(),
        }),
    }
}

/// Load a stored model in the worker; `template_fallback`: use the built-in chat format if the
/// file's template fails.
pub async fn load(
    model_id: &str,
    backend: &str,
    n_ctx: usize,
    template_fallback: bool,
) -> Result<LoadedInfo, WorkerError> {
    match request(&ToWorker::Load {
        model_id: model_id.into(),
        backend: backend.into(),
        n_ctx,
        template_fallback,
    })
    .await?
    {
        FromWorker::Loaded {
            backend,
            reason,
            adapter,
            n_ctx,
            arch,
            load_ms,
            template_fallback,
        } => Ok(LoadedInfo {
            model_id: model_id.into(),
            backend,
            reason,
            adapter,
            n_ctx,
            arch,
            load_ms,
            template_fallback,
        }),
        other => Err(WorkerError {
            kind: "protocol".into(),
            message: format!("unexpected answer {other:?}"),
        }),
    }
}

/// Generate a reply; text arrives through `on_event` as [`FromWorker::Token`].
pub async fn generate(turns: Vec<Turn>, settings: GenSettings) -> Result<ReplyStats, WorkerError> {
    match request(&ToWorker::Generate { turns, settings }).await? {
        FromWorker::Done(s) => Ok(s),
        other => Err(WorkerError {
            kind: "protocol".into(),
            message: format!("unexpected answer {other:?}"),
        }),
    }
}

/// Ask the running generation to stop (takes effect at the next token).
pub fn stop() {
    post_only(&ToWorker::Stop);
}

/// Post a message that gets no answer.
fn post_only(msg: &ToWorker) {
    let ser = serde_wasm_bindgen::Serializer::json_compatible();
    if let Ok(v) = serde::Serialize::serialize(msg, &ser) {
        CLIENT.with(|c| {
            if let Some(c) = c.borrow().as_ref() {
                let _ = c.worker.post_message(&v);
            }
        });
    }
}

/// Forget the KV cache (new chat).
pub fn reset() {
    post_only(&ToWorker::Reset);
}

/// Test hook: destroy the worker's WebGPU device, as a driver reset would (the page then moves
/// the model to the CPU). Installed as `window.__slm_test.loseGpu()` by [`install_test_hooks`].
pub fn lose_gpu() {
    post_only(&ToWorker::LoseGpu);
}

/// `window.__slm_test = { loseGpu }`: lets the browser tests simulate a lost GPU device. Harmless
/// in production: it only does what a driver reset does, and the app recovers on the CPU.
pub fn install_test_hooks() {
    let hooks = js_sys::Object::new();
    let lose = Closure::<dyn Fn()>::new(lose_gpu);
    set(&hooks, "loseGpu", lose.as_ref());
    lose.forget();
    set(&js_sys::global(), "__slm_test", &hooks);
}
