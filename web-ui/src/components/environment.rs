//! What the browser offers before a download: storage quota and WebGPU (adapter and key limits),
//! or the CPU fallback.

use leptos::prelude::*;

use crate::capabilities::gpu_facts;
use crate::catalog::fmt_bytes;
use crate::device::GpuFacts;
use crate::download::{storage_estimate, storage_persisted};
use crate::js::global_get;
use crate::state::StoreVersion;

#[derive(Clone, Debug, PartialEq)]
struct EnvFacts {
    storage: Option<(f64, f64)>,
    persisted: Option<bool>,
    webgpu: Result<String, String>,
    isolated: bool,
}

/// The adapter in one line: name, and the limits that decide what runs.
pub fn gpu_line(g: &GpuFacts) -> String {
    format!(
        "{}{} · f16 {} · max storage binding {} · max buffer {}",
        g.name,
        if g.fallback {
            " (software fallback adapter)"
        } else {
            ""
        },
        if g.f16 { "yes" } else { "no" },
        fmt_bytes(g.max_binding),
        fmt_bytes(g.max_buffer),
    )
}

async fn webgpu_info() -> Result<String, String> {
    gpu_facts().await.map(|g| gpu_line(&g))
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
