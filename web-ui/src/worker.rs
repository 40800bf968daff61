//! The engine's side of the Web Worker: loads the model from the IndexedDB chunks (never from
//! the network), then generates replies, posting each piece of text as it is decoded. Runs off
//! the page's thread, so the page never freezes.
//!
//! One loop serves both backends: it drives the engine's [`Generation`] step by step, awaiting
//! each GPU pass (the web cannot block on the GPU; decode samples on the GPU so only the token
//! id is read back) and yielding to the worker's event loop between prefill slices and between
//! tokens, which is how a `Stop` message from the page gets in (no SharedArrayBuffer, so Stop
//! also works on a page that is not cross-origin isolated). A lost GPU is reported as
//! `gpu_lost` (a failed generation) or as an unsolicited `GpuLost` message (the device's `lost`
//! promise, watched while idle), and the page reloads the model on the CPU, keeping the
//! conversation.
//!
//! The CPU engine comes in two builds of this module: single-threaded, and multi-threaded
//! (atomics + shared memory + relaxed SIMD, built with nightly `-Z build-std`), which `worker.js`
//! picks when the page is cross-origin isolated and the browser compiles relaxed SIMD. In the multi-threaded one the engine's thread pool runs on Web
//! Workers (`public/pool-worker.js`) that instantiate this module on the same memory
//! ([`spawn_pool_thread`]).
//!
//! `public/worker.js` records the `GPUAdapter` and `GPUDevice` that wgpu requests in
//! `self.__slm_gpu`: the adapter's info names it when wgpu finds no name (SwiftShader), and the
//! device's `lost` promise and `destroy()` (the `LoseGpu` test hook) need the JavaScript object,
//! which the engine does not expose.

use std::cell::{Cell, RefCell};
use std::sync::Arc;

use engine::backend::{self, gpu, BackendChoice, GpuHooks, LoadedModel};
use engine::chat_template::{ChatMessage, ChatTemplate, TemplateLimits};
use engine::generate::{GenerateParams, Generation, Step};
use engine::gguf::{GgufFile, Prefix, SharedSource, MAX_SEGMENT_BYTES};
use engine::memory;
use engine::model::{ForwardPass, Logits};
use engine::sampler::SamplerParams;
use engine::tensor::AlignedBytes;
use engine::tokenizer::Tokenizer;
use engine::Error;
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use web_sys::{DedicatedWorkerGlobalScope, MessageChannel, MessageEvent};

use crate::catalog::StoredModel;
use crate::idb::Db;
use crate::js::{get, now_ms, PerfClock};
use crate::protocol::{Envelope, FromWorker, GenSettings, ReplyStats, ToWorker, Turn, UNSOLICITED};
use crate::queue::{RequestQueue, StopAction};

/// Prompt tokens per forward call during prefill; between slices the worker checks for Stop.
const PREFILL_SLICE: usize = 64;

struct Loaded {
    model: LoadedModel,
    /// Tokens whose keys/values the KV cache holds (positions 0..len), reused by the next reply
    /// for the prefix its prompt shares.
    cached: Vec<u32>,
    tok: Tokenizer,
    tmpl: ChatTemplate,
}

thread_local! {
    static LOADED: RefCell<Option<Loaded>> = const { RefCell::new(None) };
    /// Set by a `Stop` message (or a `Load`) for the running generation; cleared when a
    /// generation starts.
    static STOP: Cell<bool> = const { Cell::new(false) };
    /// Requests waiting, and the one being answered (whose id every `post` carries).
    static QUEUE: RefCell<RequestQueue> = RefCell::new(RequestQueue::default());
    /// The JavaScript `GPUDevice` of the loaded GPU model (for `LoseGpu`).
    static GPU_DEVICE: RefCell<Option<JsValue>> = const { RefCell::new(None) };
    /// Bumped on every load: a `lost` notification of an older device is ignored.
    static LOAD_SEQ: Cell<u64> = const { Cell::new(0) };
    /// Threads for the CPU engine, from `worker.js` (1 in the single-threaded build).
    static THREADS: Cell<usize> = const { Cell::new(1) };
}

/// This is the multi-threaded build (atomics, shared memory).
const THREADED: bool = cfg!(target_feature = "atomics");

/// Starts one thread of the engine's CPU pool: a module Web Worker (`pool-worker.js`) that
/// instantiates this module on the shared memory and calls [`pool_thread_entry`] with `f`.
#[cfg(target_feature = "atomics")]
fn spawn_pool_thread(f: Box<dyn FnOnce() + Send>) -> Result<(), String> {
    use web_sys::{Worker, WorkerOptions, WorkerType};
    let opts = WorkerOptions::new();
    opts.set_type(WorkerType::Module);
    opts.set_name("slm-cpu");
    let w = Worker::new_with_options("./pool-worker.js", &opts)
        .map_err(|e| format!("pool worker: {e:?}"))?;
    let ptr = Box::into_raw(Box::new(f));
    let msg = js_sys::Array::of3(
        &wasm_bindgen::module(),
        &wasm_bindgen::memory(),
        &JsValue::from(ptr as usize as u32),
    );
    if let Err(e) = w.post_message(&msg) {
        // SAFETY: the message did not go out, so nobody else owns `ptr`.
        drop(unsafe { Box::from_raw(ptr) });
        return Err(format!("pool worker: {e:?}"));
    }
    Ok(())
}

/// Runs a pool thread's closure in `pool-worker.js` (returns when the pool is dropped).
#[cfg(target_feature = "atomics")]
#[wasm_bindgen]
pub fn pool_thread_entry(ptr: u32) {
    // SAFETY: `ptr` is the `Box::into_raw` of `spawn_pool_thread`, sent to this worker only.
    let f = unsafe { Box::from_raw(ptr as usize as *mut Box<dyn FnOnce() + Send>) };
    f();
}

fn scope() -> DedicatedWorkerGlobalScope {
    js_sys::global().unchecked_into()
}

/// Post a message of the request being answered (progress, tokens, its answer).
fn post(msg: &FromWorker) {
    let id = QUEUE.with(|q| q.borrow().running()).unwrap_or(UNSOLICITED);
    post_to(id, msg);
}

fn post_to(id: u64, msg: &FromWorker) {
    let ser = serde_wasm_bindgen::Serializer::json_compatible();
    let env = Envelope { id, msg };
    if let Ok(v) = serde::Serialize::serialize(&env, &ser) {
        let _ = scope().post_message(&v);
    }
}

fn post_err(kind: &str, message: String) {
    post(&FromWorker::Error {
        kind: kind.into(),
        message,
    });
}

fn stop_requested() -> bool {
    STOP.with(|s| s.get())
}

/// Let the worker's event loop run queued messages (a `Stop` from the page) before going on.
/// A `MessageChannel` task, not `setTimeout(0)`, which browsers clamp to 4 ms when nested.
async fn yield_to_events() {
    let Ok(ch) = MessageChannel::new() else {
        return;
    };
    let port = ch.port1();
    let done = js_sys::Promise::new(&mut |resolve, _| port.set_onmessage(Some(&resolve)));
    let _ = ch.port2().post_message(&JsValue::NULL);
    let _ = crate::js::await_promise(done).await;
    port.set_onmessage(None);
}

/// Called by `worker.js` once the module is initialised, with the CPU engine's thread count
/// (`navigator.hardwareConcurrency` capped, or the page's `?threads=N`; used in the
/// multi-threaded build only).
#[wasm_bindgen]
pub fn worker_main(threads: u32) {
    console_error_panic_hook::set_once();
    #[cfg(target_feature = "atomics")]
    engine::backend::cpu::set_thread_spawner(spawn_pool_thread);
    THREADS.with(|t| {
        t.set(if THREADED {
            (threads as usize).max(1)
        } else {
            1
        })
    });
    let on = Closure::<dyn FnMut(MessageEvent)>::new(|e: MessageEvent| {
        let Envelope { id, msg } =
            match serde_wasm_bindgen::from_value::<Envelope<ToWorker>>(e.data()) {
                Ok(m) => m,
                Err(e) => {
                    // Without an id nobody is waiting for the answer; say it on the console.
                    web_sys::console::error_1(&format!("engine worker: bad message: {e}").into());
                    return;
                }
            };
        match msg {
            ToWorker::Stop { request } => match QUEUE.with(|q| q.borrow_mut().stop(request)) {
                StopAction::StopRunning => STOP.with(|s| s.set(true)),
                StopAction::Dropped(r) => post_to(
                    r,
                    &FromWorker::Error {
                        kind: "aborted".into(),
                        message: "the request was stopped before it started".into(),
                    },
                ),
                StopAction::Nothing => {}
            },
            ToWorker::LoseGpu => lose_gpu(),
            msg => {
                if QUEUE.with(|q| q.borrow_mut().push(id, msg)) {
                    STOP.with(|s| s.set(true));
                }
                pump();
            }
        }
    });
    scope().set_onmessage(Some(on.as_ref().unchecked_ref()));
    on.forget();
    post_to(UNSOLICITED, &FromWorker::Ready);
}

/// Answer the queued requests one after the other, unless that is already under way.
fn pump() {
    if QUEUE.with(|q| q.borrow().busy()) {
        return;
    }
    let Some(first) = QUEUE.with(|q| q.borrow_mut().next()) else {
        return;
    };
    wasm_bindgen_futures::spawn_local(async move {
        let mut next = Some(first);
        while let Some((_, msg)) = next {
            answer(msg).await;
            next = QUEUE.with(|q| {
                let mut q = q.borrow_mut();
                q.finish();
                q.next()
            });
        }
    });
}

/// Answer one request (its id is the queue's running one, which `post` uses).
async fn answer(msg: ToWorker) {
    match msg {
        ToWorker::Load {
            model_id,
            backend,
            n_ctx,
            template_fallback,
        } => {
            LOAD_SEQ.with(|s| s.set(s.get() + 1));
            GPU_DEVICE.with(|d| *d.borrow_mut() = None);
            LOADED.with(|l| *l.borrow_mut() = None);
            if let Err((kind, e)) = load(&model_id, &backend, n_ctx, template_fallback).await {
                post_err(kind, e);
            }
        }
        ToWorker::Generate { turns, settings } => {
            STOP.with(|s| s.set(false));
            generate(turns, settings).await
        }
        ToWorker::Reset => LOADED.with(|l| {
            if let Some(l) = l.borrow_mut().as_mut() {
                l.cached.clear();
            }
        }),
        ToWorker::Probe { budget_ms } => {
            let budget = if budget_ms.is_finite() {
                budget_ms.clamp(10.0, 2000.0)
            } else {
                200.0
            };
            let p = engine::probe::cpu_weight_throughput(&PerfClock, budget);
            post(&FromWorker::Probed {
                cpu_bytes_per_s: p.bytes_per_s,
                elapsed_ms: p.elapsed_ms,
            });
        }
        ToWorker::Bench {
            n_prompt,
            n_gen,
            reps,
        } => {
            let Some(mut l) = LOADED.with(|l| l.borrow_mut().take()) else {
                post_err("generate", "no model is loaded".into());
                return;
            };
            let r = bench(&mut l, n_prompt, n_gen, reps).await;
            l.cached.clear();
            LOADED.with(|slot| *slot.borrow_mut() = Some(l));
            match r {
                Ok(b) => post(&b),
                Err(e) => post_err(error_kind(&e), e.to_string()),
            }
        }
        // Never queued.
        ToWorker::Stop { .. } | ToWorker::LoseGpu => {}
    }
}

/// [`ToWorker::Bench`]: llama-bench's pp/tg through the same calls a reply makes (the prompt in
/// one forward pass, then one greedy decode step per token).
async fn bench(
    l: &mut Loaded,
    n_prompt: usize,
    n_gen: usize,
    reps: usize,
) -> Result<FromWorker, Error> {
    let model = &mut l.model;
    if n_gen == 0
        || !engine::bench::fits(n_prompt, n_gen, model.n_ctx())
        || !(1..=10).contains(&reps)
    {
        return Err(Error::InvalidParam {
            name: "bench",
            what: format!(
                "prompt + generated tokens must be in 2..={} and repetitions in 1..=10",
                model.n_ctx()
            ),
        });
    }
    let prompt = engine::bench::prompt_ids(n_prompt, model.config().n_vocab);
    let greedy = SamplerParams::greedy();
    let (mut prefill, mut decode) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        let t = now_ms();
        let mut next = engine::backend::cpu::ops::argmax(forward_last(model, &prompt, 0).await?);
        prefill.push(n_prompt as f64 * 1e3 / (now_ms() - t));
        yield_to_events().await;
        let t = now_ms();
        for i in 0..n_gen {
            let pos = n_prompt + i;
            next = match model {
                LoadedModel::Gpu(m) => {
                    let s = gpu::GpuSampling::from_params(&greedy, 0.0);
                    m.decode_sample_async(next, pos, &s).await?
                }
                LoadedModel::Cpu(_) => {
                    engine::backend::cpu::ops::argmax(forward_last(model, &[next], pos).await?)
                }
            };
        }
        decode.push(n_gen as f64 * 1e3 / (now_ms() - t));
    }
    Ok(FromWorker::Benched {
        backend: model.name().into(),
        threads: match model {
            LoadedModel::Cpu(m) => m.threads(),
            LoadedModel::Gpu(_) => 1,
        },
        n_prompt,
        n_gen,
        prefill_tok_s: round2(engine::bench::median(&mut prefill)),
        decode_tok_s: round2(engine::bench::median(&mut decode)),
        wasm_memory_mib: round2(
            get(&get(&wasm_bindgen::memory(), "buffer"), "byteLength")
                .as_f64()
                .unwrap_or(0.0)
                / (1u64 << 20) as f64,
        ),
    })
}

/// The test hook: `GPUDevice.destroy()` on the loaded model's device, which resolves its `lost`
/// promise and makes every later GPU call fail, as a real device loss does.
fn lose_gpu() {
    let dev = GPU_DEVICE.with(|d| d.borrow().clone());
    if let Some(d) = dev {
        if let Ok(f) = get(&d, "destroy").dyn_into::<js_sys::Function>() {
            let _ = f.call0(&d);
        }
    }
}

/// Post `GpuLost` when `device.lost` resolves, unless another model was loaded since.
fn watch_device_lost(device: &JsValue) {
    let seq = LOAD_SEQ.with(|s| s.get());
    let Ok(lost) = get(device, "lost").dyn_into::<js_sys::Promise>() else {
        return;
    };
    let on_lost = Closure::once(move |info: JsValue| {
        if LOAD_SEQ.with(|s| s.get()) != seq {
            return;
        }
        post_to(
            UNSOLICITED,
            &FromWorker::GpuLost {
                message: lost_text(&info),
            },
        );
    });
    let _ = lost.then(&on_lost);
    // Called at most once, by the browser; the closure is leaked with the (dead) device.
    on_lost.forget();
}

/// Plain words for a `GPUDeviceLostInfo`.
fn lost_text(info: &JsValue) -> String {
    let reason = get(info, "reason").as_string().unwrap_or_default();
    let msg = get(info, "message").as_string().unwrap_or_default();
    match (reason.as_str(), msg.trim().trim_end_matches('.')) {
        ("destroyed", _) => "the GPU device was destroyed".to_string(),
        (_, "") => "the GPU device was lost".to_string(),
        (_, m) => format!("the GPU device was lost: {m}"),
    }
}

/// After a GPU call failed: the device's loss, in plain words, when its `lost` promise resolves
/// within a moment (a failed read-back usually comes just before the loss is reported).
async fn lost_soon() -> Option<String> {
    let dev = GPU_DEVICE.with(|d| d.borrow().clone())?;
    let lost = get(&dev, "lost").dyn_into::<js_sys::Promise>().ok()?;
    let timeout = js_sys::Promise::new(&mut |resolve, _| {
        let _ = scope().set_timeout_with_callback_and_timeout_and_arguments_0(&resolve, 200);
    });
    let first =
        crate::js::await_promise(js_sys::Promise::race(&js_sys::Array::of2(&lost, &timeout)))
            .await
            .ok()?;
    (!first.is_undefined()).then(|| lost_text(&first))
}

fn progress(phase: &str, fraction: f64) {
    post(&FromWorker::LoadProgress {
        phase: phase.into(),
        fraction,
    });
}

/// A load failure: the error kind for the page (`load`, `template`) and its message.
type LoadError = (&'static str, String);

fn load_err(e: impl ToString) -> LoadError {
    ("load", e.to_string())
}

/// Bytes of f32 KV cache one position takes (K and V, every layer).
fn kv_bytes_per_token(cfg: &engine::model::ModelConfig) -> u64 {
    (cfg.n_layer as u64)
        .saturating_mul(cfg.n_head_kv as u64)
        .saturating_mul(cfg.head_dim as u64)
        .saturating_mul(2 * 4)
}

/// The header of stored model `model_id` (`size` bytes in `n_chunks` chunks), parsed from as
/// few leading chunks as it takes (the weights are read afterwards, into segments planned from
/// it).
async fn read_header(
    db: &Db,
    model_id: &str,
    size: u64,
    n_chunks: u32,
) -> Result<GgufFile, LoadError> {
    let mut head: Vec<u8> = Vec::new();
    let mut next = 0;
    loop {
        match GgufFile::parse(&Prefix {
            bytes: &head,
            len: size,
        }) {
            Ok(g) => return Ok(g),
            // Inside the file but past the chunks read so far: read on to where the parser
            // stopped, and at least double the prefix (each retry parses from the start, so a
            // header a hostile file stretches over a GiB costs a few parses, not hundreds).
            Err(Error::Truncated { offset, needed, .. })
                if offset.saturating_add(needed) <= size
                    && next < n_chunks
                    && (head.len() as u64) < MAX_SEGMENT_BYTES =>
            {
                let want = offset
                    .saturating_add(needed)
                    .max(2 * head.len() as u64)
                    .min(MAX_SEGMENT_BYTES);
                while (head.len() as u64) < want && next < n_chunks {
                    let a = db.chunk_array(model_id, next).await.map_err(load_err)?;
                    let at = head.len();
                    head.resize(at + a.length() as usize, 0);
                    a.copy_to(&mut head[at..]);
                    crate::idb::release(&a);
                    next += 1;
                }
            }
            Err(e) => return Err(load_err(e)),
        }
    }
}

/// Stored model `model_id` read into memory once: in segments of at most
/// [`MAX_SEGMENT_BYTES`] cut at tensor starts (wasm32 cannot allocate 2 GiB at once), each
/// chunk copied straight from IndexedDB's array into its place and freed.
async fn read_segments(
    db: &Db,
    model_id: &str,
    g: &GgufFile,
    size: u64,
    n_chunks: u32,
) -> Result<SharedSource, LoadError> {
    let sizes = SharedSource::plan(g, size, MAX_SEGMENT_BYTES).map_err(load_err)?;
    let mut segments = Vec::with_capacity(sizes.len());
    for &n in &sizes {
        segments.push(AlignedBytes::try_zeroed(n as usize).ok_or_else(|| {
            load_err(format!(
                "not enough memory left in this tab for the model file ({}): close other \
                 models' tabs or pick a smaller model",
                memory::human_bytes(size)
            ))
        })?);
    }
    let too_long =
        || load_err("the stored model is larger than its record: delete it and download again");
    let (mut seg, mut at, mut total) = (0, 0, 0u64);
    for i in 0..n_chunks {
        let a = db.chunk_array(model_id, i).await.map_err(load_err)?;
        let n = a.length();
        let mut from = 0;
        while from < n {
            let dst = segments.get_mut(seg).ok_or_else(too_long)?.as_mut_slice();
            if at == dst.len() {
                (seg, at) = (seg + 1, 0);
                continue;
            }
            let take = ((dst.len() - at) as u32).min(n - from);
            a.subarray(from, from + take)
                .copy_to(&mut dst[at..at + take as usize]);
            (from, at) = (from + take, at + take as usize);
        }
        crate::idb::release(&a);
        total += n as u64;
        progress(
            "reading from storage",
            (i + 1) as f64 / n_chunks.max(1) as f64 * 0.5,
        );
    }
    if total != size {
        return Err(load_err(format!(
            "the stored model is incomplete ({total} of {size} bytes): delete it and download again"
        )));
    }
    Ok(SharedSource::from_segments(
        segments.into_iter().map(Arc::new).collect(),
    ))
}

/// Load the stored model. The file is untrusted: parsing, the tokenizer, the chat template (a
/// sample conversation is rendered under the template's budget) and the weights all go through
/// the engine's checks, so a hostile file ends here as a plain error and the worker stays
/// usable.
async fn load(
    model_id: &str,
    backend: &str,
    n_ctx: usize,
    template_fallback: bool,
) -> Result<(), LoadError> {
    let t0 = now_ms();
    let db = Db::open().await.map_err(load_err)?;
    let rec: StoredModel = db
        .get_json::<StoredModel>(crate::idb::MODELS, model_id)
        .await
        .map_err(load_err)?
        .filter(|r| r.complete)
        .ok_or_else(|| {
            load_err("this model is not stored on this device yet: download it first")
        })?;
    // The file, read once into its final place: CPU weights borrow from it, the GPU uploads
    // from it, and nothing else of its size is ever held (memory ≈ 1× the file).
    let size = memory::checked_bytes("the model file", &[rec.size], memory::allowed_bytes())
        .map_err(load_err)?;
    let g = read_header(&db, model_id, size, rec.n_chunks).await?;
    let src = read_segments(&db, model_id, &g, size, rec.n_chunks).await?;
    let arch = g.architecture().unwrap_or("?").to_string();
    let cfg = engine::arch::config(&g).map_err(load_err)?;
    // Within the KV budget the settings offer (a context the model cannot hold next to its
    // weights in wasm32's 4 GiB is shortened here, not refused after the weights are read).
    let n_ctx = n_ctx.min(crate::protocol::max_context(
        cfg.n_ctx_train,
        kv_bytes_per_token(&cfg),
    ));
    let tok = Tokenizer::from_gguf(&g).map_err(load_err)?;
    let limits = TemplateLimits::for_context(n_ctx);
    let (tmpl, failed) =
        ChatTemplate::load(&g, &tok, limits, template_fallback).map_err(|e| match e {
            Error::ChatTemplate { .. } => ("template", e.to_string()),
            e => load_err(e),
        })?;
    let template_note = failed.map(|e| e.to_string());
    progress("building the model", 0.6);

    let choice = match backend {
        "cpu" => BackendChoice::Cpu,
        "gpu" => BackendChoice::Gpu,
        _ => BackendChoice::Auto,
    };
    let navigator = crate::js::global_get("navigator");
    let unavailable = (navigator.is_undefined() || get(&navigator, "gpu").is_undefined())
        .then(|| "this browser has no WebGPU".to_string());
    // Recorded by worker.js's requestDevice wrapper, right after wgpu's request.
    let mut recorded: Option<(String, JsValue)> = None;
    let mut on_device = |dev: &gpu::Gpu| {
        let r = crate::js::global_get("__slm_gpu");
        let adapter =
            crate::js::adapter_label_js(&dev.info().name, &get(&get(&r, "adapter"), "info"));
        recorded = Some((adapter, get(&r, "device")));
    };
    let hooks = GpuHooks {
        unavailable,
        on_device: Some(&mut on_device),
    };
    let threads = THREADS.with(|t| t.get());
    let (model, why) = backend::load_async(&g, &src, choice, n_ctx, threads, hooks)
        .await
        .map_err(|e| match choice {
            BackendChoice::Gpu => load_err(format!("GPU backend failed: {e}")),
            _ => load_err(e),
        })?;
    let (adapter, device) = recorded.unwrap_or_default();
    let reason = match &model {
        LoadedModel::Gpu(_) => format!("WebGPU adapter “{adapter}” passed the self-test"),
        LoadedModel::Cpu(_) if choice == BackendChoice::Cpu => "CPU requested".to_string(),
        LoadedModel::Cpu(_) => why,
    };
    drop(src);
    let (name, n_ctx) = (model.name(), model.n_ctx());
    let cpu_threads = match &model {
        LoadedModel::Cpu(m) => m.threads(),
        LoadedModel::Gpu(_) => 0,
    };
    let cfg = model.config();
    let n_ctx_train = cfg.n_ctx_train;
    let kv_bytes_per_token = kv_bytes_per_token(cfg);
    LOADED.with(|l| {
        *l.borrow_mut() = Some(Loaded {
            model,
            cached: Vec::new(),
            tok,
            tmpl,
        })
    });
    if name == "gpu" && !device.is_undefined() {
        watch_device_lost(&device);
        GPU_DEVICE.with(|d| *d.borrow_mut() = Some(device));
    }
    post(&FromWorker::Loaded {
        backend: name.into(),
        reason,
        adapter,
        n_ctx,
        n_ctx_train,
        kv_bytes_per_token,
        arch,
        load_ms: now_ms() - t0,
        template_fallback: template_note,
        threaded: THREADED,
        threads: cpu_threads,
        kernels: engine::quant::fast_path().into(),
    });
    Ok(())
}

fn error_kind(e: &Error) -> &'static str {
    match e {
        Error::ContextFull { .. } => "context_full",
        Error::ChatTemplate { .. } => "template",
        Error::GpuDeviceLost(_) | Error::Gpu { .. } | Error::GpuOutOfMemory { .. } => "gpu_lost",
        _ => "generate",
    }
}

async fn generate(turns: Vec<Turn>, settings: GenSettings) {
    // Take the model out for the duration, so no RefCell borrow is held across an await.
    let Some(mut l) = LOADED.with(|l| l.borrow_mut().take()) else {
        post_err("generate", "no model is loaded".into());
        return;
    };
    let r = run(&mut l, &turns, &settings).await;
    LOADED.with(|slot| *slot.borrow_mut() = Some(l));
    match r {
        Ok(stats) => post(&FromWorker::Done(stats)),
        Err(e) if error_kind(&e) == "gpu_lost" => {
            let message = lost_soon().await.unwrap_or_else(|| e.to_string());
            post_err("gpu_lost", message);
        }
        Err(e) => post_err(error_kind(&e), e.to_string()),
    }
}

fn prompt_ids(l: &Loaded, turns: &[Turn]) -> Result<Vec<u32>, Error> {
    let msgs: Vec<ChatMessage> = turns
        .iter()
        .map(|t| ChatMessage::new(t.role.clone(), t.content.clone()))
        .collect();
    let text = l.tmpl.render(&msgs, true)?;
    let has_bos = l
        .tok
        .bos_id()
        .and_then(|b| l.tok.token_text(b))
        .is_some_and(|b| text.starts_with(b));
    l.tok.encode(&text, !has_bos, true)
}

fn sampler_params(s: &GenSettings) -> SamplerParams {
    SamplerParams {
        temperature: s.temperature,
        top_k: s.top_k,
        top_p: s.top_p,
        seed: s.seed,
        ..SamplerParams::default()
    }
}

/// Generate one reply: prefill in [`PREFILL_SLICE`]s, then decode token by token, posting text
/// as it is decoded and yielding between steps so a `Stop` message can end the reply.
async fn run(l: &mut Loaded, turns: &[Turn], s: &GenSettings) -> Result<ReplyStats, Error> {
    let prompt = prompt_ids(l, turns)?;
    let params = GenerateParams {
        max_tokens: s.max_tokens,
        sampler: sampler_params(s),
        ..GenerateParams::default()
    };
    let Loaded {
        model, cached, tok, ..
    } = l;
    let clock = PerfClock;
    let helped = |m: &LoadedModel| match m {
        LoadedModel::Cpu(c) => (c.threads(), c.helped()),
        LoadedModel::Gpu(_) => (0, 0),
    };
    let (threads, helped0) = helped(model);
    let (mut gen, reuse) = Generation::begin(cached, &prompt, &params, model.n_ctx(), &clock)?;
    let todo = &prompt[reuse..];
    let n_slices = todo.len().div_ceil(PREFILL_SLICE);
    for (i, slice) in todo.chunks(PREFILL_SLICE).enumerate() {
        if i > 0 {
            yield_to_events().await;
            if stop_requested() {
                gen.cancel();
                break;
            }
        }
        let logits = forward_last(model, slice, cached.len()).await?;
        if i + 1 == n_slices {
            gen.prefilled(logits, &clock);
        }
        cached.extend_from_slice(slice);
    }
    // Pipelined on the GPU: the step of the token `gen.step` hands out next is already submitted.
    let mut ahead = false;
    while let Step::Token { event, decode } = gen.step(tok, &clock) {
        if !event.text.is_empty() {
            post(&FromWorker::Token {
                text: event.text.to_string(),
            });
        }
        let Some(id) = decode else { break };
        yield_to_events().await;
        if stop_requested() {
            gen.cancel();
            break;
        }
        let pos = cached.len();
        if let LoadedModel::Gpu(m) = model {
            if let Some(next_ahead) = decode_ahead(m, &mut gen, id, pos, ahead).await? {
                ahead = next_ahead;
                cached.push(id);
                continue;
            }
        }
        decode_step(model, &mut gen, id, pos).await?;
        cached.push(id);
    }
    // The speculative step of a token past the stop (or a cancel): read and dropped; its K/V
    // row lies past the cached tokens.
    if let (true, LoadedModel::Gpu(m)) = (ahead, &mut *model) {
        m.decode_collect_async().await?;
    }
    let (tail, st) = gen.finish(&clock);
    if !tail.is_empty() {
        post(&FromWorker::Token { text: tail });
    }
    Ok(ReplyStats {
        n_prompt: st.n_prompt,
        n_prefilled: st.n_prefilled,
        n_generated: st.n_generated,
        stop_reason: st.stop_reason.as_str().into(),
        ttft_ms: round2(st.ttft_ms),
        prefill_tok_s: round2(st.prefill_tok_s()),
        decode_tok_s: round2(st.decode_tok_s()),
        ctx_used: cached.len(),
        n_ctx: model.n_ctx(),
        backend: model.name().into(),
        threads,
        helped_chunks: helped(model).1 - helped0,
    })
}

/// `x` to two decimals: enough for a stats line, and stored and exported conversations read back
/// exactly even with serde_json's default (not always exact) float parsing.
fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Run `tokens` at positions `pos..` and return the last position's logits (n_vocab); the GPU
/// is awaited, the CPU runs synchronously.
async fn forward_last<'m>(
    model: &'m mut LoadedModel,
    tokens: &[u32],
    pos: usize,
) -> Result<&'m [f32], Error> {
    match model {
        LoadedModel::Cpu(m) => m.forward(tokens, pos, Logits::Last),
        LoadedModel::Gpu(m) => m.forward_async(tokens, pos, Logits::Last).await,
    }
}

/// One pipelined GPU decode step of `id` at `pos` (as `engine::generate::Session::generate`
/// natively): submits it unless `ahead` (already submitted, continuing from the id still in its
/// GPU buffer), submits the next token's step when one may follow, then reads `id`'s sampled
/// id (4 bytes) into `gen`. So the GPU computes token n+1 while token n's id is read back and
/// streamed; the tokens are those of the unpipelined loop (the same steps with the same
/// draws). Returns whether the next step is in flight, or `None` when these settings sample on
/// the host (nothing submitted).
async fn decode_ahead(
    m: &mut gpu::GpuModel,
    gen: &mut Generation,
    id: u32,
    pos: usize,
    ahead: bool,
) -> Result<Option<bool>, Error> {
    if !ahead {
        let Some((sp, random)) = gen.device_sampling() else {
            return Ok(None);
        };
        let s = gpu::GpuSampling::from_params(sp, random);
        m.decode_submit(Some(id), pos, &s).await?;
    }
    let mut next_ahead = false;
    if gen.may_decode_after_next() && pos + 1 < m.n_ctx() {
        if let Some((sp, random)) = gen.device_sampling() {
            let s = gpu::GpuSampling::from_params(sp, random);
            m.decode_submit(None, pos + 1, &s).await?;
            next_ahead = true;
        }
    }
    let next = m.decode_collect_async().await?;
    gen.sampled(next);
    Ok(Some(next_ahead))
}

/// The decode pass of `id` at `pos`, handing the next token to `gen`: sampled on the GPU (only
/// the id is read back) when the settings allow it, else from the logits on the host.
async fn decode_step(
    model: &mut LoadedModel,
    gen: &mut Generation,
    id: u32,
    pos: usize,
) -> Result<(), Error> {
    if let LoadedModel::Gpu(m) = model {
        if let Some((sp, random)) = gen.device_sampling() {
            let s = gpu::GpuSampling::from_params(sp, random);
            gen.sampled(m.decode_sample_async(id, pos, &s).await?);
            return Ok(());
        }
    }
    let logits = forward_last(model, &[id], pos).await?;
    gen.sample(logits);
    Ok(())
}
