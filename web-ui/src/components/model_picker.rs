//! The model catalog (`models.json`) as a select with each entry's facts, plus adding a model by
//! URL (with an optional sha256) or from a local `.gguf` file.

use leptos::prelude::*;
use wasm_bindgen::JsCast;

use crate::catalog::{fetch_catalog, CatalogEntry};
use crate::components::download_panel::DownloadState;
use crate::state::{ErrorBanner, SelectedModel};

#[component]
pub fn ModelPicker() -> impl IntoView {
    let selected = expect_context::<SelectedModel>().0;
    let catalog = LocalResource::new(fetch_catalog);
    // Models added in this session (by URL).
    let extra = RwSignal::new(Vec::<CatalogEntry>::new());
    Effect::new(move |_| {
        if let Some(Ok(list)) = catalog.get() {
            if selected.get_untracked().is_none() {
                selected.set(list.iter().find(|e| e.default).or(list.first()).cloned());
            }
        }
    });
    view! {
        <section class="panel picker">
            <h2>"Model"</h2>
            <Transition fallback=|| view! { <p>"Loading the catalog…"</p> }>
                <ErrorBoundary fallback=|errors| view! {
                    <div class="error-banner" data-testid="error-banner">
                        {move || errors.get().into_iter().map(|(_, e)| e.to_string()).collect::<Vec<_>>().join("; ")}
                    </div>
                }>
                    {move || Suspend::new(async move {
                        catalog.await.map(|list| {
                            let list2 = list.clone();
                            view! {
                                <select data-testid="model-select" on:change=move |ev| {
                                    let id = event_target_value(&ev);
                                    let found = list2.iter().chain(extra.get_untracked().iter()).find(|e| e.id == id).cloned();
                                    selected.set(found);
                                }>
                                    {list.into_iter().chain(extra.get()).map(|e| {
                                        let is_sel = selected.get_untracked().is_some_and(|s| s.id == e.id);
                                        let label = format!("{} · {} · {}{}", e.name, e.quant, e.size_text(), if e.supported { "" } else { " (not supported yet)" });
                                        view! { <option value=e.id.clone() selected=is_sel disabled=!e.supported>{label}</option> }
                                    }).collect_view()}
                                </select>
                            }
                        })
                    })}
                </ErrorBoundary>
            </Transition>
            <ModelFacts/>
            <AddModel extra/>
        </section>
    }
}

/// Facts of the selected entry.
#[component]
fn ModelFacts() -> impl IntoView {
    let selected = expect_context::<SelectedModel>().0;
    move || {
        selected.get().map(|e| {
            let verify = match &e.sha256 {
                Some(h) => format!("sha256 {}…", &h[..h.len().min(16)]),
                None => "no sha256 published: verified by size only".to_string(),
            };
            view! {
                <dl class="facts">
                    <dt>"Family"</dt><dd>{e.family.clone()}</dd>
                    <dt>"Parameters"</dt><dd>{e.parameters.clone()}</dd>
                    <dt>"Quantization"</dt><dd>{e.quant.clone()}</dd>
                    <dt>"Download size"</dt><dd class="size">{e.size_text()}</dd>
                    <dt>"License"</dt><dd>{e.license.clone()}</dd>
                    <dt>"Check"</dt><dd class="verify">{verify}</dd>
                    <dt>"Source"</dt><dd class="url">{e.url.clone()}</dd>
                </dl>
                {e.note.clone().map(|n| view! { <p class="note">{n}</p> })}
            }
        })
    }
}

/// Add a model by URL or pick a local file.
#[component]
fn AddModel(extra: RwSignal<Vec<CatalogEntry>>) -> impl IntoView {
    let selected = expect_context::<SelectedModel>().0;
    let banner = expect_context::<ErrorBanner>();
    let url = RwSignal::new(String::new());
    let sha = RwSignal::new(String::new());
    let add = move |_| {
        let u = url.get_untracked().trim().to_string();
        if u.is_empty() {
            return;
        }
        let s = sha.get_untracked().trim().to_ascii_lowercase();
        let s = if s.is_empty() { None } else { Some(s) };
        if s.as_ref()
            .is_some_and(|h| h.len() != 64 || !h.chars().all(|c| c.is_ascii_hexdigit()))
        {
            banner.show("A sha256 is 64 hexadecimal digits.");
            return;
        }
        let e = CatalogEntry::from_url(&u, s);
        extra.update(|v| v.push(e.clone()));
        selected.set(Some(e));
    };
    let dl = expect_context::<DownloadState>();
    let import = Action::new_local(move |f: &web_sys::File| {
        let f = f.clone();
        async move {
            banner.clear();
            let r = crate::download::import_file(&f, &|p| dl.progress.set(Some(p))).await;
            dl.bump();
            match r {
                Ok(rec) => {
                    let mut e = CatalogEntry::from_url(&rec.name, None);
                    e.id = rec.id.clone();
                    e.url = rec.url.clone();
                    e.size = Some(rec.size);
                    e.note = Some("imported from a local file".into());
                    extra.update(|v| v.push(e.clone()));
                    selected.set(Some(e));
                    dl.load(&rec.id).await;
                }
                Err(e) => banner.show(e.to_string()),
            }
        }
    });
    let on_file = move |ev: leptos::ev::Event| {
        let input: Option<web_sys::HtmlInputElement> = ev.target().and_then(|t| t.dyn_into().ok());
        if let Some(f) = input.and_then(|i| i.files()).and_then(|l| l.get(0)) {
            import.dispatch(f);
        }
    };
    view! {
        <details class="add-model">
            <summary>"Add a model by URL or from a file"</summary>
            <label>"GGUF URL"<input type="url" data-testid="add-url" placeholder="https://huggingface.co/…/model.gguf" prop:value=move || url.get() on:input=move |ev| url.set(event_target_value(&ev))/></label>
            <label>"sha256 (optional)"<input type="text" data-testid="add-sha256" prop:value=move || sha.get() on:input=move |ev| sha.set(event_target_value(&ev))/></label>
            <button data-testid="add-url-button" on:click=add>"Add"</button>
            <p class="hint">"Only hosts allowed by this page's Content-Security-Policy can be downloaded from (this site and Hugging Face)."</p>
            <label>"Local .gguf file"<input type="file" accept=".gguf" data-testid="add-file" on:change=on_file/></label>
        </details>
    }
}
