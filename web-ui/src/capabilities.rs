//! Reading what this browser offers into [`DeviceFacts`]: storage estimate, device memory,
//! cores, cross-origin isolation, the WebGPU adapter (requested, never a device) and, on
//! request, the CPU speed probe in the engine worker.

use js_sys::{Function, Promise};
use wasm_bindgen::{JsCast, JsValue};

use crate::device::{DeviceFacts, GpuFacts};
use crate::download::storage_estimate;
use crate::js::{await_promise, err_text, get, global_get};

/// The WebGPU adapter's facts, or why there is none.
pub async fn gpu_facts() -> Result<GpuFacts, String> {
    let gpu = get(&global_get("navigator"), "gpu");
    if gpu.is_undefined() {
        return Err("this browser exposes no WebGPU".into());
    }
    let f: Function = get(&gpu, "requestAdapter")
        .dyn_into()
        .map_err(|_| "no requestAdapter".to_string())?;
    let p: Promise = f
        .call0(&gpu)
        .map_err(|e| err_text(&e))?
        .dyn_into()
        .map_err(|_| "bad requestAdapter".to_string())?;
    let adapter = await_promise(p).await.map_err(|e| err_text(&e))?;
    if adapter.is_null() || adapter.is_undefined() {
        return Err("no WebGPU adapter".into());
    }
    let info = get(&adapter, "info");
    let s = |o: &JsValue, k: &str| get(o, k).as_string().unwrap_or_default();
    let limits = get(&adapter, "limits");
    let n = |k: &str| get(&limits, k).as_f64().unwrap_or(0.0);
    let fallback = get(&info, "isFallbackAdapter")
        .as_bool()
        .or_else(|| get(&adapter, "isFallbackAdapter").as_bool())
        .unwrap_or(false);
    let features = get(&adapter, "features");
    let f16 = get(&features, "has")
        .dyn_into::<Function>()
        .ok()
        .and_then(|has| has.call1(&features, &"shader-f16".into()).ok())
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    let name = [
        s(&info, "vendor"),
        s(&info, "architecture"),
        s(&info, "description"),
    ]
    .into_iter()
    .filter(|p| !p.is_empty())
    .collect::<Vec<_>>()
    .join(" ");
    Ok(GpuFacts {
        name: if name.is_empty() {
            "unnamed adapter".into()
        } else {
            name
        },
        fallback,
        f16,
        max_buffer: n("maxBufferSize"),
        max_binding: n("maxStorageBufferBindingSize"),
    })
}

/// Everything but the speed probe (which needs the engine worker: [`with_probe`]).
pub async fn device_facts() -> DeviceFacts {
    let nav = global_get("navigator");
    DeviceFacts {
        storage: storage_estimate().await,
        device_memory_gb: get(&nav, "deviceMemory").as_f64(),
        gpu: gpu_facts().await,
        isolated: global_get("crossOriginIsolated").as_bool().unwrap_or(false),
        cores: get(&nav, "hardwareConcurrency")
            .as_f64()
            .map(|c| c.clamp(1.0, 1024.0) as usize)
            .unwrap_or(1),
        cpu_bytes_per_s: None,
    }
}

/// [`device_facts`] plus a 400 ms CPU speed probe in the engine worker (queued behind a reply
/// being generated; an error leaves the speed unknown).
pub async fn with_probe() -> DeviceFacts {
    let mut f = device_facts().await;
    f.cpu_bytes_per_s = crate::engine_client::probe(400.0).await.ok();
    f
}
