//! The engine's side of the Web Worker: loads the model from the IndexedDB chunks (never from
//! the network), then generates replies, posting each piece of text as it is decoded. Runs off
//! the page's thread, so the page never freezes.
//!
//! Backends: the CPU (wasm simd128) engine runs the engine's synchronous [`Session`]; the GPU
//! (WebGPU) engine cannot block on the web, so its loop here awaits `forward_async` and samples
//! with the same [`Sampler`]. A lost GPU is reported as `gpu_lost` (a failed generation) or as an
//! unsolicited `GpuLost` message (the device's `lost` promise, watched while idle), and the page
//! reloads the model on the CPU, keeping the conversation.
//!
//! `public/worker.js` records the `GPUAdapter` and `GPUDevice` that wgpu requests in
//! `self.__slm_gpu`: the adapter's info names it when wgpu finds no name (SwiftShader), and the
//! device's `lost` promise and `destroy()` (the `LoseGpu` test hook) need the JavaScript object,
//! which the engine does not expose.

use std::cell::{Cell, RefCell};
use std::ops::ControlFlow;
use std::sync::Arc;

use engine::backend::gpu;
use engine::chat_template::{ChatMessage, ChatTemplate};
use engine::generate::{GenerateParams, Session};
use engine::gguf::{ByteSource, ChunkedSource, GgufFile};
use engine::model::llama::CpuLlama;
use engine::model::{ForwardPass, Logits};
use engine::sampler::{Sampler, SamplerParams};
use engine::tokenizer::{StreamDecoder, Tokenizer};
use engine::Error;
use js_sys::{Atomics, Int32Array};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use web_sys::{DedicatedWorkerGlobalScope, MessageEvent};

use crate::catalog::StoredModel;
use crate::idb::Db;
use crate::js::{get, now_ms, PerfClock};
use crate::protocol::{FromWorker, GenSettings, ReplyStats, ToWorker, Turn};

enum Backend {
    Cpu(Session<CpuLlama>),
    Gpu {
        model: Box<gpu::GpuModel>,
        /// Tokens whose keys/values are in the GPU cache.
        cached: Vec<u32>,
    },
}

struct Loaded {
    backend: Backend,
    tok: Tokenizer,
    tmpl: ChatTemplate,
}

thread_local! {
    static LOADED: RefCell<Option<Loaded>> = const { RefCell::new(None) };
    /// `flag[0] != 0` asks the running generation to stop (a SharedArrayBuffer from the page).
    static STOP: RefCell<Option<Int32Array>> = const { RefCell::new(None) };
    /// The JavaScript `GPUDevice` of the loaded GPU model (for `LoseGpu`).
    static GPU_DEVICE: RefCell<Option<JsValue>> = const { RefCell::new(None) };
    /// Bumped on every load: a `lost` notification of an older device is ignored.
    static LOAD_SEQ: Cell<u64> = const { Cell::new(0) };
}

fn scope() -> DedicatedWorkerGlobalScope {
    js_sys::global().unchecked_into()
}

fn post(msg: &FromWorker) {
    let ser = serde_wasm_bindgen::Serializer::json_compatible();
    if let Ok(v) = serde::Serialize::serialize(msg, &ser) {
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
    STOP.with(|s| {
        s.borrow()
            .as_ref()
            .is_some_and(|f| Atomics::load(f, 0).unwrap_or(0) != 0)
    })
}

/// Called by `worker.js` once the module is initialised.
#[wasm_bindgen]
pub fn worker_main() {
    console_error_panic_hook::set_once();
    let on = Closure::<dyn FnMut(MessageEvent)>::new(|e: MessageEvent| {
        let data = e.data();
        if get(&data, "type").as_string().as_deref() == Some("init") {
            if let Ok(sab) = get(&data, "stop").dyn_into::<js_sys::SharedArrayBuffer>() {
                STOP.with(|s| *s.borrow_mut() = Some(Int32Array::new(&sab)));
            }
            return;
        }
        match serde_wasm_bindgen::from_value::<ToWorker>(data) {
            Ok(ToWorker::Load {
                model_id,
                backend,
                n_ctx,
            }) => wasm_bindgen_futures::spawn_local(async move {
                LOAD_SEQ.with(|s| s.set(s.get() + 1));
                GPU_DEVICE.with(|d| *d.borrow_mut() = None);
                LOADED.with(|l| *l.borrow_mut() = None);
                if let Err(e) = load(&model_id, &backend, n_ctx).await {
                    post_err("load", e);
                }
            }),
            Ok(ToWorker::Generate { turns, settings }) => {
                wasm_bindgen_futures::spawn_local(async move { generate(turns, settings).await })
            }
            Ok(ToWorker::LoseGpu) => lose_gpu(),
            Ok(ToWorker::Reset) => LOADED.with(|l| {
                if let Some(l) = l.borrow_mut().as_mut() {
                    match &mut l.backend {
                        Backend::Cpu(s) => s.reset(),
                        Backend::Gpu { cached, .. } => cached.clear(),
                    }
                }
            }),
            Err(e) => post_err("protocol", format!("bad message: {e}")),
        }
    });
    scope().set_onmessage(Some(on.as_ref().unchecked_ref()));
    on.forget();
    post(&FromWorker::Ready);
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
        post(&FromWorker::GpuLost {
            message: lost_text(&info),
        });
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

async fn load(model_id: &str, backend: &str, n_ctx: usize) -> Result<(), String> {
    let t0 = now_ms();
    let db = Db::open().await.map_err(|e| e.to_string())?;
    let rec: StoredModel = db
        .get_json::<StoredModel>(crate::idb::MODELS, model_id)
        .await
        .map_err(|e| e.to_string())?
        .filter(|r| r.complete)
        .ok_or_else(|| {
            "this model is not stored on this device yet: download it first".to_string()
        })?;
    let mut src = ChunkedSource::default();
    for i in 0..rec.n_chunks {
        let c = db.get_chunk(model_id, i).await.map_err(|e| e.to_string())?;
        src.push(Arc::from(c));
        progress(
            "reading from storage",
            (i + 1) as f64 / rec.n_chunks.max(1) as f64 * 0.5,
        );
    }
    if src.len() != rec.size {
        return Err(format!(
            "the stored model is incomplete ({} of {} bytes): delete it and download again",
            src.len(),
            rec.size
        ));
    }
    let g = GgufFile::parse(&src).map_err(|e| e.to_string())?;
    let arch = g.architecture().unwrap_or("?").to_string();
    let tok = Tokenizer::from_gguf(&g).map_err(|e| e.to_string())?;
    let tmpl = ChatTemplate::from_gguf(&g, &tok).map_err(|e| e.to_string())?;
    progress("building the model", 0.6);

    let reason;
    let mut adapter = String::new();
    let mut device = JsValue::UNDEFINED;
    let mut chosen: Option<Backend> = None;
    if backend != "cpu" {
        match load_gpu(&g, &src, n_ctx).await {
            Ok(GpuLoaded {
                model: m,
                adapter: name,
                device: dev,
            }) => {
                reason = format!("WebGPU adapter “{name}” passed the self-test");
                adapter = name;
                device = dev;
                chosen = Some(Backend::Gpu {
                    model: Box::new(m),
                    cached: Vec::new(),
                });
            }
            Err(e) if backend == "gpu" => return Err(format!("GPU backend failed: {e}")),
            Err(e) => reason = format!("GPU not used: {e}"),
        }
    } else {
        reason = "CPU requested".into();
    }
    let backend = match chosen {
        Some(b) => b,
        None => {
            let m = CpuLlama::load(&g, &src, n_ctx, 1).map_err(|e| e.to_string())?;
            Backend::Cpu(Session::new(m))
        }
    };
    drop(src);
    let (name, n_ctx) = match &backend {
        Backend::Cpu(s) => ("cpu", s.model.n_ctx()),
        Backend::Gpu { model, .. } => ("gpu", model.n_ctx()),
    };
    LOADED.with(|l| *l.borrow_mut() = Some(Loaded { backend, tok, tmpl }));
    if name == "gpu" && !device.is_undefined() {
        watch_device_lost(&device);
        GPU_DEVICE.with(|d| *d.borrow_mut() = Some(device));
    }
    post(&FromWorker::Loaded {
        backend: name.into(),
        reason,
        adapter,
        n_ctx,
        arch,
        load_ms: now_ms() - t0,
    });
    Ok(())
}

/// A model on the GPU, its adapter's name and its JavaScript `GPUDevice` (`undefined` when
/// `worker.js` could not record it).
struct GpuLoaded {
    model: gpu::GpuModel,
    adapter: String,
    device: JsValue,
}

async fn load_gpu<S: ByteSource + ?Sized>(
    g: &GgufFile,
    src: &S,
    n_ctx: usize,
) -> Result<GpuLoaded, Error> {
    if crate::js::global_get("navigator").is_undefined()
        || get(&crate::js::global_get("navigator"), "gpu").is_undefined()
    {
        return Err(Error::GpuUnavailable("this browser has no WebGPU".into()));
    }
    let mut dev = gpu::Gpu::new_async(&gpu::GpuOptions::default()).await?;
    // Recorded by worker.js's requestDevice wrapper, right after wgpu's request.
    let recorded = crate::js::global_get("__slm_gpu");
    let device = get(&recorded, "device");
    let adapter =
        crate::js::adapter_label_js(&dev.info().name, &get(&get(&recorded, "adapter"), "info"));
    gpu::self_test(&mut dev).await?;
    let model = gpu::GpuModel::load(dev, g, src, n_ctx)?;
    Ok(GpuLoaded {
        model,
        adapter,
        device,
    })
}

fn error_kind(e: &Error) -> &'static str {
    match e {
        Error::ContextFull { .. } => "context_full",
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

async fn run(l: &mut Loaded, turns: &[Turn], s: &GenSettings) -> Result<ReplyStats, Error> {
    let prompt = prompt_ids(l, turns)?;
    let params = GenerateParams {
        max_tokens: s.max_tokens,
        sampler: sampler_params(s),
        ..GenerateParams::default()
    };
    let Loaded { backend, tok, .. } = l;
    match backend {
        Backend::Cpu(session) => {
            let mut on_token = |ev: engine::generate::TokenEvent<'_>| {
                if !ev.text.is_empty() {
                    post(&FromWorker::Token {
                        text: ev.text.to_string(),
                    });
                }
                if stop_requested() {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            };
            let st = session.generate(tok, &prompt, &params, &PerfClock, &mut on_token)?;
            Ok(ReplyStats {
                n_prompt: st.n_prompt,
                n_prefilled: st.n_prefilled,
                n_generated: st.n_generated,
                stop_reason: st.stop_reason.as_str().into(),
                ttft_ms: st.ttft_ms,
                prefill_tok_s: st.prefill_tok_s(),
                decode_tok_s: st.decode_tok_s(),
                ctx_used: session.cached_tokens().len(),
                n_ctx: session.model.n_ctx(),
            })
        }
        Backend::Gpu { model, cached } => gpu_generate(model, cached, tok, &prompt, &params).await,
    }
}

/// [`Session::generate`]'s loop for the GPU, awaiting each forward pass.
async fn gpu_generate(
    model: &mut gpu::GpuModel,
    cached: &mut Vec<u32>,
    tok: &Tokenizer,
    prompt: &[u32],
    params: &GenerateParams,
) -> Result<ReplyStats, Error> {
    let n_ctx = model.n_ctx();
    if prompt.len() + params.max_tokens > n_ctx {
        return Err(Error::ContextFull {
            n_prompt: prompt.len(),
            n_requested: params.max_tokens,
            n_ctx,
        });
    }
    let t0 = now_ms();
    let mut sampler = Sampler::new(params.sampler.clone())?;
    let common = cached
        .iter()
        .zip(prompt)
        .take_while(|(a, b)| a == b)
        .count();
    let reuse = common.min(prompt.len().saturating_sub(1));
    cached.truncate(reuse);
    let todo = &prompt[reuse..];
    let mut history = prompt.to_vec();
    let logits = model.forward_async(todo, reuse, Logits::Last).await?;
    cached.extend_from_slice(todo);
    let t_prefill = now_ms();
    let mut next = sampler.sample(logits, &history);
    let mut decoder = StreamDecoder::new();
    let (mut n_gen, mut ttft, mut reason) = (0usize, 0.0, "max_tokens");
    while n_gen < params.max_tokens {
        let id = next;
        n_gen += 1;
        if n_gen == 1 {
            ttft = now_ms() - t0;
        }
        history.push(id);
        if tok.is_eog(id) {
            reason = "eog";
            break;
        }
        let text = decoder.push(tok, id);
        if !text.is_empty() {
            post(&FromWorker::Token { text });
        }
        if stop_requested() {
            reason = "cancelled";
            break;
        }
        if n_gen == params.max_tokens {
            break;
        }
        let logits = model
            .forward_async(&[id], cached.len(), Logits::Last)
            .await?;
        cached.push(id);
        next = sampler.sample(logits, &history);
    }
    let rest = decoder.flush();
    if !rest.is_empty() {
        post(&FromWorker::Token { text: rest });
    }
    let t_end = now_ms();
    let decode_ms = (t_end - t0 - ttft).max(1e-3);
    let prefill_ms = (t_prefill - t0).max(1e-3);
    Ok(ReplyStats {
        n_prompt: prompt.len(),
        n_prefilled: todo.len(),
        n_generated: n_gen,
        stop_reason: reason.into(),
        ttft_ms: ttft,
        prefill_tok_s: todo.len() as f64 * 1e3 / prefill_ms,
        decode_tok_s: n_gen.saturating_sub(1) as f64 * 1e3 / decode_ms,
        ctx_used: cached.len(),
        n_ctx,
    })
}
