//! The first visit: what this browser can do, in plain words, and the model recommended for it
//! (`device::recommend`), one click to download it and start. Shown in the empty conversation
//! while no model is stored, until started or dismissed (`slm.first_run` in localStorage).

use leptos::prelude::*;

use crate::components::download_panel::Downloader;
use crate::components::model_manager::{DeviceCheck, DeviceSummary, StoredList};
use crate::device::{fit, recommend};
use crate::state::{KnownModels, SelectedModel};
use gloo::storage::{LocalStorage, Storage};

const KEY: &str = "slm.first_run";

/// Renders nothing where the page provides no device check (the embedded widget, whose model
/// the host page chose).
#[component]
pub fn FirstRun() -> impl IntoView {
    let done = RwSignal::new(LocalStorage::get::<String>(KEY).is_ok());
    let (Some(DeviceCheck(facts)), Some(StoredList(stored))) =
        (use_context::<DeviceCheck>(), use_context::<StoredList>())
    else {
        return ().into_any();
    };
    let known = expect_context::<KnownModels>();
    let selected = expect_context::<SelectedModel>().0;
    let Downloader { run } = expect_context::<Downloader>();
    let finish = move || {
        let _ = LocalStorage::set(KEY, "done");
        done.set(true);
    };
    view! {
        <Show when=move || !done.get()>
            <Transition fallback=|| view! { <p class="first-run">"Checking what this device can run…"</p> }>
                {move || Suspend::new(async move {
                    let f = facts.await;
                    let st = stored.await;
                    // Someone who already has a model needs no first-run advice.
                    if st.iter().any(|s| s.complete) {
                        return None;
                    }
                    let catalog = known.catalog.get();
                    let ids: Vec<String> = st.iter().filter(|s| s.complete).map(|s| s.id.clone()).collect();
                    let pick = recommend(&catalog, &ids, &f).cloned();
                    let advice = pick.map(|e| {
                        let fit = fit(&e, false, &f);
                        let speed = fit.expected_tok_s.map(|t| format!(", about {t:.0} tokens/s expected")).unwrap_or_default();
                        let text = format!("Recommended for this device: {} ({}, {}{speed}).", e.name, e.parameters, e.size_text());
                        view! {
                            <p data-testid="first-run-model" data-model-id=e.id.clone()>{text}</p>
                            <button class="primary" data-testid="first-run-start" disabled=move || run.pending().get()
                                on:click=move |_| {
                                    selected.set(Some(e.clone()));
                                    run.dispatch(e.clone());
                                    finish();
                                }>"Download and start"</button>
                        }
                        .into_any()
                    });
                    Some(view! {
                        <section class="first-run" data-testid="first-run" aria-label="What this device can run">
                            <h2>"This device"</h2>
                            <DeviceSummary facts=f/>
                            {advice.unwrap_or_else(|| view! {
                                <p data-testid="first-run-model">"No model in the catalog fits this device's free storage."</p>
                            }.into_any())}
                            <button class="secondary" data-testid="first-run-skip" on:click=move |_| finish()>"Not now"</button>
                        </section>
                    })
                })}
            </Transition>
        </Show>
    }
    .into_any()
}
