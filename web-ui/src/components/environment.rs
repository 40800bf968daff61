//! What the browser offers before a download: storage quota and WebGPU (adapter and key limits),
//! or the CPU fallback.

use js_sys::{Function, Promise};
use leptos::prelude::*;
use wasm_bindgen::JsCast;

use crate::catalog::fmt_bytes;
use crate::download::{storage_estimate, storage_persisted};
use crate::js::{await_promise, get, global_get};
use crate::state::StoreVersion;

#[derive(Clone, Debug, PartialEq)]
struct EnvFacts {
    storage: Option<(f64, f64)>,
    persisted: Option<bool>,
    webgpu: Result<String, String>,
    isolated: bool,
}

async fn webgpu_info() -> Result<String, String> {
    let gpu = get(&global_get("navigator"), "gpu");
    if gpu.is_undefined() {
        return Err("this browser exposes no WebGPU".into());
    }
    let f: Function = get(&gpu, "requestAdapter")
        .dyn_into()
        .map_err(|_| "no requestAdapter".to_string())?;
    let p: Promise = f
        .call0(&gpu)
        .map_err(|e| crate::js::err_text(&e))?
        .dyn_into()
        .map_err(|_| "bad requestAdapter".to_string())?;
    let adapter = await_promise(p)
        .await
        .map_err(|e| crate::js::err_text(&e))?;
    if adapter.is_null() || adapter.is_undefined() {
        return Err("no WebGPU adapter".into());
    }
    let info = get(&adapter, "info");
    let s = |o: &wasm_bindgen::JsValue, k: &str| get(o, k).as_string().unwrap_or_default();
    let limits = get(&adapter, "limits");
    let n = |k: &str| get(&limits, k).as_f64().unwrap_or(0.0);
    let fallback = get(&info, "isFallbackAdapter")
        .as_bool()
        .or_else(|| get(&adapter, "isFallbackAdapter").as_bool())
        .unwrap_or(false);
    Ok(format!(
        "{} {} {}{} · max storage binding {} · max buffer {} · workgroup storage {} KiB",
        s(&info, "vendor"),
        s(&info, "architecture"),
        s(&info, "description"),
        if fallback {
            " (software fallback adapter)"
        } else {
            ""
        },
        fmt_bytes(n("maxStorageBufferBindingSize")),
        fmt_bytes(n("maxBufferSize")),
        n("maxComputeWorkgroupStorageSize") / 1024.0,
    ))
}

#[component]
pub fn EnvironmentInfo() -> impl IntoView {
    // Re-read when stored models change, so the figures follow downloads and deletions.
    let store = expect_context::<StoreVersion>().0;
    let facts = LocalResource::new(move || {
        let _ = store.get();
        async {
            EnvFacts {
                storage: storage_estimate().await,
                persisted: storage_persisted().await,
                webgpu: webgpu_info().await,
                isolated: global_get("crossOriginIsolated").as_bool().unwrap_or(false),
            }
        }
    });
    view! {
        <section class="panel env">
            <h2>"This device"</h2>
            <Transition fallback=|| view! { <p>"Checking storage and GPU…"</p> }>
                {move || Suspend::new(async move {
                    let f = facts.await;
                    let storage = match f.storage {
                        Some((used, quota)) => format!("Storage: {} used of about {} available to this site ({} free)", fmt_bytes(used), fmt_bytes(quota), fmt_bytes((quota - used).max(0.0))),
                        None => "Storage: the browser gives no estimate".to_string(),
                    };
                    let persisted = match f.persisted {
                        Some(true) => "Persistent storage: granted (the browser will not evict stored models on its own)",
                        Some(false) => "Persistent storage: not granted (the browser may evict stored models when space runs low; it is requested at each download)",
                        None => "Persistent storage: not supported by this browser",
                    };
                    let gpu = match f.webgpu {
                        Ok(s) => format!("WebGPU: {s}"),
                        Err(e) => format!("WebGPU: not available ({e}); the CPU engine (wasm SIMD) will be used"),
                    };
                    view! {
                        <p class="storage">{storage}</p>
                        <p class="persisted">{persisted}</p>
                        <p class="webgpu">{gpu}</p>
                        <p class="isolation">{if f.isolated { "Cross-origin isolated: yes" } else { "Cross-origin isolated: no" }}</p>
                    }
                })}
            </Transition>
        </section>
    }
}
