//! The page's handle on the engine worker: starts `worker.js` as a module worker, and turns the
//! worker's messages into awaitable results (load, generate) with their streamed events
//! (tokens, load progress). Every request has an id the worker echoes, so several may be in
//! flight (the worker queues them) and each answer reaches the caller that asked.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use js_sys::Function;
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use web_sys::{MessageEvent, Worker, WorkerOptions, WorkerType};

use crate::js::{await_promise, deferred, err_text, set};
use crate::protocol::{Envelope, FromWorker, GenSettings, ReplyStats, ToWorker, Turn, UNSOLICITED};

/// What the worker reported after loading.
#[derive(Clone, Debug, PartialEq)]
pub struct LoadedInfo {
    pub model_id: String,
    pub backend: String,
    pub reason: String,
    /// The WebGPU adapter's name (empty on the CPU).
    pub adapter: String,
    pub n_ctx: usize,
    pub n_ctx_train: usize,
    pub kv_bytes_per_token: u64,
    pub arch: String,
    pub load_ms: f64,
    /// Why the built-in chat format replaced the file's template (the user chose the fallback).
    pub template_fallback: Option<String>,
    /// The worker runs the multi-threaded wasm build.
    pub threaded: bool,
    /// CPU threads computing (0 on the GPU).
    pub threads: usize,
    /// The CPU kernels of the worker's build: `"relaxed-simd"` or `"simd128"`.
    pub kernels: String,
}

/// A failed worker request: `kind` as in [`FromWorker::Error`].
#[derive(Clone, Debug, PartialEq)]
pub struct WorkerError {
    pub kind: String,
    pub message: String,
}

/// What sees a request's progress and tokens.
type OnEvent = Rc<dyn Fn(&FromWorker)>;

/// A request waiting for its answer.
struct Pending {
    resolve: Function,
    /// Sees the request's progress and tokens as they arrive.
    on_event: Option<OnEvent>,
    /// The answer, once it came.
    answer: Option<FromWorker>,
}

struct Client {
    worker: Worker,
    next_id: u64,
    /// Requests in flight by id; several may wait at once (the worker queues them).
    pending: HashMap<u64, Pending>,
    ready: Option<js_sys::Promise>,
    /// Sees messages no request asked for (`GpuLost`).
    on_unsolicited: Rc<dyn Fn(&FromWorker)>,
    _onmessage: Closure<dyn FnMut(MessageEvent)>,
}

thread_local! {
    static CLIENT: RefCell<Option<Client>> = const { RefCell::new(None) };
}

/// A request's id, unique for the page's lifetime; also what [`stop`] names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestId(pub u64);

impl RequestId {
    /// A fresh id (never [`UNSOLICITED`]).
    pub fn next() -> Self {
        CLIENT.with(|c| {
            let mut c = c.borrow_mut();
            match c.as_mut() {
                Some(c) => {
                    c.next_id += 1;
                    RequestId(c.next_id)
                }
                None => RequestId(u64::MAX),
            }
        })
    }
}

/// `worker.js`, passing on the page's `?threads=N` (the CPU engine's thread count) and
/// `?simd=plain` (the plain simd128 build even where relaxed SIMD runs), for tests and benchmarks;
/// otherwise the worker picks its build and thread count itself.
fn worker_url() -> String {
    let search = web_sys::window()
        .and_then(|w| w.location().search().ok())
        .unwrap_or_default();
    let param = |name: &str| {
        search
            .trim_start_matches('?')
            .split('&')
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .map(str::to_string)
    };
    let mut query = Vec::new();
    if let Some(n) = param("threads").and_then(|t| t.parse::<u32>().ok()) {
        query.push(format!("threads={n}"));
    }
    if param("simd").as_deref() == Some("plain") {
        query.push("simd=plain".into());
    }
    if query.is_empty() {
        "./worker.js".into()
    } else {
        format!("./worker.js?{}", query.join("&"))
    }
}

/// Start the worker. `on_unsolicited` sees the messages no request asked for (a lost GPU).
pub fn start(on_unsolicited: Rc<dyn Fn(&FromWorker)>) -> Result<(), String> {
    let opts = WorkerOptions::new();
    opts.set_type(WorkerType::Module);
    let worker = Worker::new_with_options(&worker_url(), &opts).map_err(|e| err_text(&e))?;
    let (ready, ready_res, _) = deferred();
    let onmessage = Closure::<dyn FnMut(MessageEvent)>::new(move |e: MessageEvent| {
        let Ok(Envelope { id, msg }) =
            serde_wasm_bindgen::from_value::<Envelope<FromWorker>>(e.data())
        else {
            return;
        };
        if id == UNSOLICITED {
            if matches!(msg, FromWorker::Ready) {
                let _ = ready_res.call0(&JsValue::NULL);
                return;
            }
            let h = CLIENT.with(|c| c.borrow().as_ref().map(|c| c.on_unsolicited.clone()));
            if let Some(h) = h {
                h(&msg);
            }
            return;
        }
        if msg.is_final() {
            let resolve = CLIENT.with(|c| {
                let mut c = c.borrow_mut();
                let p = c.as_mut()?.pending.get_mut(&id)?;
                p.answer = Some(msg);
                Some(p.resolve.clone())
            });
            if let Some(r) = resolve {
                let _ = r.call0(&JsValue::NULL);
            }
        } else {
            // Called outside the borrow: the handler may start requests of its own.
            let h = CLIENT.with(|c| {
                c.borrow()
                    .as_ref()
                    .and_then(|c| c.pending.get(&id)?.on_event.clone())
            });
            if let Some(h) = h {
                h(&msg);
            }
        }
    });
    worker.set_onmessage(Some(onmessage.as_ref().unchecked_ref()));
    // The worker died (failed to start, or a panic escaped): every request in flight fails
    // with that message instead of waiting for ever.
    let onerror = Closure::<dyn FnMut(JsValue)>::new(move |e: JsValue| {
        let msg = crate::js::get(&e, "message")
            .as_string()
            .unwrap_or_else(|| "the engine worker failed".into());
        let waiting: Vec<Function> = CLIENT.with(|c| {
            let mut c = c.borrow_mut();
            let Some(c) = c.as_mut() else {
                return Vec::new();
            };
            c.pending
                .values_mut()
                .filter(|p| p.answer.is_none())
                .map(|p| {
                    p.answer = Some(FromWorker::Error {
                        kind: "worker".into(),
                        message: msg.clone(),
                    });
                    p.resolve.clone()
                })
                .collect()
        });
        for r in waiting {
            let _ = r.call0(&JsValue::NULL);
        }
    });
    worker.set_onerror(Some(onerror.as_ref().unchecked_ref()));
    onerror.forget();

    CLIENT.with(|c| {
        *c.borrow_mut() = Some(Client {
            worker,
            next_id: UNSOLICITED,
            pending: HashMap::new(),
            ready: Some(ready),
            on_unsolicited,
            _onmessage: onmessage,
        })
    });
    Ok(())
}

fn worker_gone() -> WorkerError {
    WorkerError {
        kind: "worker".into(),
        message: "the engine worker is not running".into(),
    }
}

/// Post `msg` as request `id` and wait for the worker's answer to it; `on_event` sees its
/// progress and tokens.
async fn request(
    id: RequestId,
    msg: ToWorker,
    on_event: Option<OnEvent>,
) -> Result<FromWorker, WorkerError> {
    // Every request waits for the worker's `Ready`: one posted while the worker's module is
    // still starting would reach no handler and be lost (a JS promise may be awaited any
    // number of times).
    let ready = CLIENT.with(|c| c.borrow().as_ref().and_then(|c| c.ready.clone()));
    if let Some(r) = ready {
        let _ = await_promise(r).await;
    }
    let (p, resolve, _) = deferred();
    let ser = serde_wasm_bindgen::Serializer::json_compatible();
    let env = Envelope { id: id.0, msg };
    let v = serde::Serialize::serialize(&env, &ser).map_err(|e| WorkerError {
        kind: "protocol".into(),
        message: e.to_string(),
    })?;
    CLIENT.with(|c| {
        let mut c = c.borrow_mut();
        let c = c.as_mut().ok_or_else(worker_gone)?;
        c.pending.insert(
            id.0,
            Pending {
                resolve,
                on_event,
                answer: None,
            },
        );
        c.worker.post_message(&v).map_err(|e| {
            c.pending.remove(&id.0);
            WorkerError {
                kind: "worker".into(),
                message: err_text(&e),
            }
        })
    })?;
    let _ = await_promise(p).await;
    let r = CLIENT.with(|c| {
        c.borrow_mut()
            .as_mut()
            .and_then(|c| c.pending.remove(&id.0))
            .and_then(|p| p.answer)
    });
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
/// `on_progress(phase, fraction 0..1)` sees the load's progress.
pub async fn load(
    model_id: &str,
    backend: &str,
    n_ctx: usize,
    template_fallback: bool,
    on_progress: impl Fn(&str, f64) + 'static,
) -> Result<LoadedInfo, WorkerError> {
    let on_event: Rc<dyn Fn(&FromWorker)> = Rc::new(move |m: &FromWorker| {
        if let FromWorker::LoadProgress { phase, fraction } = m {
            on_progress(phase, *fraction)
        }
    });
    let msg = ToWorker::Load {
        model_id: model_id.into(),
        backend: backend.into(),
        n_ctx,
        template_fallback,
    };
    match request(RequestId::next(), msg, Some(on_event)).await? {
        FromWorker::Loaded {
            backend,
            reason,
            adapter,
            n_ctx,
            n_ctx_train,
            kv_bytes_per_token,
            arch,
            load_ms,
            template_fallback,
            threaded,
            threads,
            kernels,
        } => Ok(LoadedInfo {
            model_id: model_id.into(),
            backend,
            reason,
            adapter,
            n_ctx,
            n_ctx_train,
            kv_bytes_per_token,
            arch,
            load_ms,
            template_fallback,
            threaded,
            threads,
            kernels,
        }),
        other => Err(WorkerError {
            kind: "protocol".into(),
            message: format!("unexpected answer {other:?}"),
        }),
    }
}

/// Generate a reply as request `id` (what [`stop`] names); its text arrives in pieces through
/// `on_text`. Requests sent while another runs wait their turn.
pub async fn generate(
    id: RequestId,
    turns: Vec<Turn>,
    settings: GenSettings,
    on_text: impl Fn(&str) + 'static,
) -> Result<ReplyStats, WorkerError> {
    let on_event: Rc<dyn Fn(&FromWorker)> = Rc::new(move |m: &FromWorker| {
        if let FromWorker::Token { text } = m {
            on_text(text)
        }
    });
    match request(id, ToWorker::Generate { turns, settings }, Some(on_event)).await? {
        FromWorker::Done(s) => Ok(s),
        other => Err(WorkerError {
            kind: "protocol".into(),
            message: format!("unexpected answer {other:?}"),
        }),
    }
}

/// The CPU speed probe (about `budget_ms`): weight bytes per second through the decode kernel
/// on one thread.
pub async fn probe(budget_ms: f64) -> Result<f64, WorkerError> {
    match request(RequestId::next(), ToWorker::Probe { budget_ms }, None).await? {
        FromWorker::Probed {
            cpu_bytes_per_s, ..
        } => Ok(cpu_bytes_per_s),
        other => Err(WorkerError {
            kind: "protocol".into(),
            message: format!("unexpected answer {other:?}"),
        }),
    }
}

/// Benchmark the loaded model ([`ToWorker::Bench`]); the answer is `FromWorker::Benched`.
pub async fn bench(n_prompt: usize, n_gen: usize, reps: usize) -> Result<FromWorker, WorkerError> {
    match request(
        RequestId::next(),
        ToWorker::Bench {
            n_prompt,
            n_gen,
            reps,
        },
        None,
    )
    .await?
    {
        b @ FromWorker::Benched { .. } => Ok(b),
        other => Err(WorkerError {
            kind: "protocol".into(),
            message: format!("unexpected answer {other:?}"),
        }),
    }
}

/// Stop generation `request` (`None`: whichever runs): a running one ends at the next token
/// with its text so far; a queued one fails with kind `aborted`.
pub fn stop(request: Option<RequestId>) {
    post_only(ToWorker::Stop {
        request: request.map(|r| r.0),
    });
}

/// Post a message that gets no answer.
fn post_only(msg: ToWorker) {
    let ser = serde_wasm_bindgen::Serializer::json_compatible();
    let env = Envelope {
        id: RequestId::next().0,
        msg,
    };
    let Ok(v) = serde::Serialize::serialize(&env, &ser) else {
        return;
    };
    // After the worker's `Ready`, like every request (in order: promise reactions run first in,
    // first out).
    let ready = CLIENT.with(|c| c.borrow().as_ref().and_then(|c| c.ready.clone()));
    wasm_bindgen_futures::spawn_local(async move {
        if let Some(r) = ready {
            let _ = await_promise(r).await;
        }
        CLIENT.with(|c| {
            if let Some(c) = c.borrow().as_ref() {
                let _ = c.worker.post_message(&v);
            }
        });
    });
}

/// Forget the KV cache (new chat).
pub fn reset() {
    post_only(ToWorker::Reset);
}

/// Test hook: destroy the worker's WebGPU device, as a driver reset would (the page then moves
/// the model to the CPU). Installed as `window.__slm_test.loseGpu()` by [`install_test_hooks`].
pub fn lose_gpu() {
    post_only(ToWorker::LoseGpu);
}

/// `window.__slm_test = { loseGpu, bench }`: lets the browser tests simulate a lost GPU device,
/// and `cargo xtask bench --browser` time the loaded model (`bench(n_prompt, n_gen, reps)` → a
/// promise of `Benched`'s fields). Harmless in production: a driver reset does the first, and
/// the second only computes.
pub fn install_test_hooks() {
    let hooks = js_sys::Object::new();
    let lose = Closure::<dyn Fn()>::new(lose_gpu);
    set(&hooks, "loseGpu", lose.as_ref());
    lose.forget();
    let bench =
        Closure::<dyn Fn(f64, f64, f64) -> js_sys::Promise>::new(|p: f64, g: f64, r: f64| {
            wasm_bindgen_futures::future_to_promise(async move {
                let count = |x: f64| {
                    if x.is_finite() && x >= 0.0 {
                        x as usize
                    } else {
                        0
                    }
                };
                let ser = serde_wasm_bindgen::Serializer::json_compatible();
                match bench(count(p), count(g), count(r)).await {
                    Ok(b) => serde::Serialize::serialize(&b, &ser)
                        .map_err(|e| JsValue::from_str(&e.to_string())),
                    Err(e) => Err(JsValue::from_str(&format!("{}: {}", e.kind, e.message))),
                }
            })
        });
    set(&hooks, "bench", bench.as_ref());
    bench.forget();
    set(&js_sys::global(), "__slm_test", &hooks);
}
