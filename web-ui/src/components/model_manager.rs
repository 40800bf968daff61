//! The model manager: the catalog as cards (family, parameters, quantization, size, licence,
//! backends), each judged against this device before any download ("fits this device", with
//! the expected speed from the CPU probe), with download progress, pause/resume, use and
//! delete. Opened from the header; the first-run check shows its recommended card.

use leptos::prelude::*;

use crate::capabilities;
use crate::catalog::{fmt_bytes, CatalogEntry, StoredModel};
use crate::components::download_panel::{fmt_secs, DownloadState, Downloader};
use crate::components::environment::gpu_line;
use crate::device::{fit, DeviceFacts, Verdict};
use crate::download;
use crate::state::{KnownModels, SelectedModel};

/// Whether the manager is open.
#[derive(Clone, Copy)]
pub struct ManagerOpen(pub RwSignal<bool>);

/// This device's facts with the CPU speed probe, read once per page (the probe runs 400 ms in
/// the engine worker) and again when stored models change (storage).
#[derive(Clone, Copy)]
pub struct DeviceCheck(pub LocalResource<DeviceFacts>);

/// What IndexedDB holds, re-read when it changes.
#[derive(Clone, Copy)]
pub struct StoredList(pub LocalResource<Vec<StoredModel>>);

/// Provide [`ManagerOpen`], [`DeviceCheck`] and [`StoredList`] (after `DownloadState`).
pub fn provide() {
    let dl = expect_context::<DownloadState>();
    provide_context(ManagerOpen(RwSignal::new(false)));
    let probe = LocalResource::new(|| async { capabilities::with_probe().await.cpu_bytes_per_s });
    provide_context(DeviceCheck(LocalResource::new(move || {
        let _ = dl.store.0.get();
        async move {
            let mut f = capabilities::device_facts().await;
            f.cpu_bytes_per_s = probe.await;
            f
        }
    })));
    provide_context(StoredList(LocalResource::new(move || {
        let _ = dl.store.0.get();
        async { download::stored_models().await.unwrap_or_default() }
    })));
}

/// The header button that opens the manager.
#[component]
pub fn ModelsButton() -> impl IntoView {
    let open = expect_context::<ManagerOpen>().0;
    view! {
        <button class="secondary models-button" data-testid="models-open" aria-haspopup="dialog"
            aria-expanded=move || open.get().to_string() title="Models: what fits this device, downloads, storage"
            on:click=move |_| open.update(|o| *o = !*o)>"Models"</button>
    }
}

/// The facts of this device in plain words, one line each (first run and the manager).
#[component]
pub fn DeviceSummary(facts: DeviceFacts) -> impl IntoView {
    let gpu = match &facts.gpu {
        Ok(g) if g.fallback => format!(
            "WebGPU: a software adapter ({}); the CPU engine is usually faster here",
            gpu_line(g)
        ),
        Ok(g) => format!("WebGPU: {}", gpu_line(g)),
        Err(e) => format!("WebGPU: not available ({e}); models run on the CPU engine (wasm SIMD)"),
    };
    let threads = if facts.isolated {
        format!("Cross-origin isolated: yes · {} cores", facts.cores)
    } else {
        format!(
            "Cross-origin isolated: no (one CPU thread) · {} cores",
            facts.cores
        )
    };
    let storage = match facts.storage_free() {
        Some(free) => format!("Storage: about {} free for this site", fmt_bytes(free)),
        None => "Storage: the browser gives no estimate".into(),
    };
    let memory = facts
        .device_memory_gb
        .map(|g| format!(" · device memory about {g} GB"))
        .unwrap_or_default();
    let speed = match facts.cpu_bytes_per_s {
        Some(r) => format!(
            "CPU speed probe: {}/s of quantized weights per thread{memory}",
            fmt_bytes(r)
        ),
        None => format!("CPU speed probe: not run{memory}"),
    };
    view! {
        <ul class="device-facts">
            <li data-testid="cap-webgpu">{gpu}</li>
            <li data-testid="cap-isolation">{threads}</li>
            <li data-testid="cap-storage">{storage}</li>
            <li data-testid="cap-speed">{speed}</li>
        </ul>
    }
}

/// One catalog entry as a card, judged on this device.
#[component]
pub fn ModelCard(
    entry: CatalogEntry,
    facts: DeviceFacts,
    stored: Option<StoredModel>,
) -> impl IntoView {
    let Downloader { run } = expect_context::<Downloader>();
    let dl = expect_context::<DownloadState>();
    let selected = expect_context::<SelectedModel>().0;
    let complete = stored.as_ref().is_some_and(|s| s.complete);
    let f = fit(&entry, complete, &facts);
    let verdict_class = match f.verdict {
        Verdict::Fits => "fit-badge fits",
        Verdict::Tight => "fit-badge tight",
        Verdict::TooLarge => "fit-badge too-large",
    };
    let backends = match (
        entry.backends.iter().any(|b| b == "gpu"),
        entry.backends.iter().any(|b| b == "cpu"),
    ) {
        (true, true) => "WebGPU and CPU",
        (true, false) => "WebGPU only",
        (false, true) => "CPU only",
        _ => "not supported yet",
    };
    let speed = f.expected_tok_s.map(|t| {
        let gpu = if f.backend == "gpu" {
            "; on this WebGPU adapter usually faster"
        } else {
            ""
        };
        format!("Expected: about {t:.0} tokens/s on the CPU (one thread){gpu}")
    });
    let state = match &stored {
        Some(s) if s.complete => "Stored on this device".to_string(),
        Some(s) => format!(
            "Partly downloaded: {} of {} (resumable)",
            fmt_bytes(s.bytes_done as f64),
            fmt_bytes(s.size as f64)
        ),
        None => String::new(),
    };
    let action = match &stored {
        Some(s) if s.complete => "Use",
        Some(_) => "Resume download",
        None => "Download and use",
    };
    let id = entry.id.clone();
    let mine = {
        let id = id.clone();
        move || run.pending().get() && selected.get().is_some_and(|s| s.id == id)
    };
    let mine2 = mine.clone();
    let e2 = entry.clone();
    let del_id = id.clone();
    let delete = Action::new_local(move |id: &String| {
        let id = id.clone();
        async move {
            if let Err(e) = download::delete_model(&id).await {
                dl.banner.show(e.to_string());
            }
            dl.bump();
        }
    });
    let usable = entry.supported && f.verdict != Verdict::TooLarge;
    view! {
        <article class="model-card" data-testid="model-card" data-model-id=id.clone() data-verdict=format!("{:?}", f.verdict)>
            <h3>{entry.name.clone()}</h3>
            <p class="meta">{format!("{} · {} parameters · {} · {}", entry.family, entry.parameters, entry.quant, entry.size_text())}</p>
            <p class="meta">{format!("Licence {} · runs on {backends}", entry.license)}</p>
            <p class=verdict_class data-testid="fit-badge">{f.label()}</p>
            {(!f.why.is_empty()).then(|| view! { <p class="why" data-testid="fit-why">{f.why.join("; ")}</p> })}
            {speed.map(|s| view! { <p class="expected" data-testid="expected-speed">{s}</p> })}
            {(!state.is_empty()).then(|| view! { <p class="stored-state">{state.clone()}</p> })}
            {move || mine().then(|| dl.progress.get().map(|p| {
                let pct = if p.total > 0 { p.bytes as f64 * 100.0 / p.total as f64 } else { 0.0 };
                view! {
                    <div class="progress" data-testid="card-progress">
                        <progress max="100" value=format!("{pct:.1}")></progress>
                        <span class="progress-text">{format!("{} of {} · {}/s · {} left", fmt_bytes(p.bytes as f64), fmt_bytes(p.total as f64), fmt_bytes(p.speed), fmt_secs(p.eta_s))}</span>
                    </div>
                }
            })).flatten()}
            <div class="buttons">
                <Show when=mine2 fallback=move || {
                    let e = e2.clone();
                    view! {
                        <button class="primary" data-testid="card-use" disabled=move || !usable || run.pending().get()
                            on:click=move |_| {
                                selected.set(Some(e.clone()));
                                run.dispatch(e.clone());
                            }>{action}</button>
                    }
                }>
                    <button data-testid="card-pause" on:click=move |_| Downloader::pause()>"Pause"</button>
                </Show>
                {stored.is_some().then(|| view! {
                    <button class="delete" data-testid="card-delete" disabled=move || delete.pending().get() || run.pending().get()
                        on:click=move |_| { delete.dispatch(del_id.clone()); }>"Delete"</button>
                })}
            </div>
        </article>
    }
}

/// The manager panel: device summary and every known model as a card.
#[component]
pub fn ModelManager() -> impl IntoView {
    let open = expect_context::<ManagerOpen>().0;
    let DeviceCheck(facts) = expect_context::<DeviceCheck>();
    let StoredList(stored) = expect_context::<StoredList>();
    let known = expect_context::<KnownModels>();
    view! {
        <Show when=move || open.get()>
            <section class="model-manager" role="dialog" aria-label="Models" data-testid="model-manager">
                <header>
                    <h2>"Models"</h2>
                    <button class="icon-button" data-testid="models-close" aria-label="Close" on:click=move |_| open.set(false)>"×"</button>
                </header>
                <Transition fallback=|| view! { <p>"Checking this device (storage, GPU, a short CPU speed test)…"</p> }>
                    {move || Suspend::new(async move {
                        let f = facts.await;
                        let st = stored.await;
                        let entries: Vec<CatalogEntry> = known.catalog.get().into_iter().chain(known.extra.get()).collect();
                        view! {
                            <DeviceSummary facts=f.clone()/>
                            <div class="cards">
                                {entries.into_iter().map(|e| {
                                    let s = st.iter().find(|s| s.id == e.id).cloned();
                                    view! { <ModelCard entry=e facts=f.clone() stored=s/> }
                                }).collect_view()}
                            </div>
                        }
                    })}
                </Transition>
            </section>
        </Show>
    }
}
