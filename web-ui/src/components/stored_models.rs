//! "Models on this device": what IndexedDB holds, with sizes, and delete.

use leptos::prelude::*;

use crate::catalog::fmt_bytes;
use crate::components::download_panel::DownloadState;
use crate::download;

#[component]
pub fn StoredModels() -> impl IntoView {
    let dl = expect_context::<DownloadState>();
    let list = LocalResource::new(move || {
        let _ = dl.store.0.get();
        download::stored_models()
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
                                        let state = if m.complete {
                                            format!("{} · verified by {}", fmt_bytes(m.size as f64), m.verified)
                                        } else {
                                            format!("partial: {} of {} (resumable)", fmt_bytes(m.bytes_done as f64), fmt_bytes(m.size as f64))
                                        };
                                        view! {
                                            <li data-model-id=m.id.clone()>
                                                <span class="name">{m.name.clone()}</span>
                                                <span class="size">{state}</span>
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
