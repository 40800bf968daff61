//! "Models on this device": what IndexedDB holds, with sizes; load a complete one (also models
//! that are not in the catalog: added by URL or imported from a file in an earlier visit), or
//! delete one.

use leptos::prelude::*;

use crate::catalog::{fmt_bytes, CatalogEntry, StoredModel};
use crate::components::download_panel::DownloadState;
use crate::download;
use crate::state::{KnownModels, SelectedModel};

#[component]
pub fn StoredModels() -> impl IntoView {
    let dl = expect_context::<DownloadState>();
    let list = LocalResource::new(move || {
        let _ = dl.store.0.get();
        download::stored_models()
    });
    let known = expect_context::<KnownModels>();
    let selected = expect_context::<SelectedModel>().0;
    let load = Action::new_local(move |rec: &StoredModel| {
        let rec = rec.clone();
        async move {
            dl.banner.clear();
            let e = known.find(&rec.id).unwrap_or_else(|| {
                let e = CatalogEntry::from_stored(&rec);
                known.add(e.clone());
                e
            });
            selected.set(Some(e));
            dl.load(&rec.id).await;
        }
    });
    let delete = Action::new_local(move |id: &String| {
        let id = id.clone();
        async move {
            if let Err(e) = download::delete_model(&id).await {
                dl.banner.show(e.to_string());
            }
            if dl
                .engine
                .loaded
                .get_untracked()
                .is_some_and(|l| l.model_id == id)
            {
                // The worker keeps its copy in memory until it loads another model.
            }
            dl.bump();
        }
    });
    view! {
        <section class="panel stored" data-testid="stored-models">
            <h2>"Models on this device"</h2>
            <Transition fallback=|| view! { <p>"Reading storage…"</p> }>
                <ErrorBoundary fallback=|errors| view! {
                    <p class="error">{move || errors.get().into_iter().map(|(_, e)| e.to_string()).collect::<Vec<_>>().join("; ")}</p>
                }>
                    {move || Suspend::new(async move {
                        list.await.map(|models| {
                            if models.is_empty() {
                                return view! { <p class="empty">"None yet."</p> }.into_any();
                            }
                            view! {
                                <ul>
                                    {models.into_iter().map(|m| {
                                        let id = m.id.clone();
                                        let rec = m.clone();
                                        let state = if m.complete && m.is_local_file() {
                                            format!("{} · imported from a local file", fmt_bytes(m.size as f64))
                                        } else if m.complete {
                                            format!("{} · verified by {}", fmt_bytes(m.size as f64), m.verified)
                                        } else {
                                            format!("partial: {} of {} (resumable)", fmt_bytes(m.bytes_done as f64), fmt_bytes(m.size as f64))
                                        };
                                        view! {
                                            <li data-model-id=m.id.clone() data-complete=m.complete.to_string()>
                                                <span class="name">{m.name.clone()}</span>
                                                <span class="size">{state}</span>
                                                {m.complete.then(|| view! {
                                                    <button data-testid="stored-load" disabled=move || load.pending().get()
                                                        on:click=move |_| { load.dispatch(rec.clone()); }>"Load"</button>
                                                })}
                                                <button class="delete" on:click=move |_| { delete.dispatch(id.clone()); }>"Delete"</button>
                                            </li>
                                        }
                                    }).collect_view()}
                                </ul>
                            }.into_any()
                        })
                    })}
                </ErrorBoundary>
            </Transition>
        </section>
    }
}
