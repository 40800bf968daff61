//! The model catalog (`models.json`) as a select (in the header), the selected entry's facts,
//! and adding a model by URL (with an optional sha256) or from a local `.gguf` file.

use leptos::prelude::*;
use wasm_bindgen::JsCast;

use crate::catalog::{fetch_catalog, CatalogEntry};
use crate::components::download_panel::DownloadState;
use crate::state::{ErrorBanner, KnownModels, SelectedModel};

#[component]
pub fn ModelPicker() -> impl IntoView {
    let selected = expect_context::<SelectedModel>().0;
    let catalog = LocalResource::new(fetch_catalog);
    let known = expect_context::<KnownModels>();
    // Models added in this session (by URL, file, or from the stored-models list).
    let extra = known.extra;
    Effect::new(move |_| {
        if let Some(Ok(list)) = catalog.get() {
            known.catalog.set(list.clone());
            if selected.get_untracked().is_none() {
                selected.set(list.iter().find(|e| e.default).or(list.first()).cloned());
            }
        }
    });
    view! {
        <div class="picker">
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
                                <select data-testid="model-select" aria-label="Model" prop:value=move || selected.get().map(|e| e.id).unwrap_or_default() on:change=move |ev| {
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
        </div>
    }
}

/// Facts of the selected entry.
#[component]
pub fn ModelFacts() -> impl IntoView {
    let selected = expect_context::<SelectedModel>().0;
    move || {
        selected.get().map(|e| {
            let verify = match &e.sha256 {
                Some(h) => format!("sha256 {}…", &h[..h.len().min(16)]),
                None if crate::hub::HubFile::parse(&e.url).is_some() => {
                    "sha256 from the Hub's file listing at download time".to_string()
                }
                None => "no sha256 published: verified by size only".to_string(),
            };
            view! {
                <dl class="facts">
                    <dt>"Family"</dt><dd>{e.family.clone()}</dd>
                    <dt>"Parameters"</dt><dd>{e.parameters.clone()}</dd>
                    <dt>"Quantization"</dt><dd>{e.quant.clone()}</dd>
                    <dt>"Download size"</dt><dd class="size">{e.size_text()}</dd>
                    <dt>"License"</dt><dd>{e.license.clone()}</dd>
                    <dt>"Runs on"</dt><dd class="backends">{backends_text(&e.backends)}</dd>
                    <dt>"Check"</dt><dd class="verify">{verify}</dd>
                    <dt>"Source"</dt><dd class="url">{e.url.clone()}</dd>
                </dl>
                {e.note.clone().map(|n| view! { <p class="note">{n}</p> })}
            }
        })
    }
}

/// "WebGPU and CPU", "CPU only", …: which engines run this catalog entry.
fn backends_text(b: &[String]) -> String {
    let (cpu, gpu) = (b.iter().any(|x| x == "cpu"), b.iter().any(|x| x == "gpu"));
    match (gpu, cpu) {
        (true, true) => "WebGPU and CPU".into(),
        (true, false) => "WebGPU only".into(),
        (false, true) => "CPU only".into(),
        (false, false) => "read from the file when it loads".into(),
    }
}

/// Add a model by URL or pick a local file.
#[component]
pub fn AddModel() -> impl IntoView {
    let selected = expect_context::<SelectedModel>().0;
    let known = expect_context::<KnownModels>();
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
        known.add(e.clone());
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
                    let e = CatalogEntry::from_stored(&rec);
                    known.add(e.clone());
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
            import.dispatch_local(f);
        }
    };
    view! {
        <details class="add-model">
            <summary>"Add a model by URL or from a file"</summary>
            <label>"GGUF URL"<input type="url" data-testid="add-url" placeholder="https://huggingface.co/…/model.gguf" prop:value=move || url.get() on:input=move |ev| url.set(event_target_value(&ev))/></label>
            <label>"sha256 (optional: a Hugging Face file is checked against the sha256 the Hub lists)"<input type="text" data-testid="add-sha256" prop:value=move || sha.get() on:input=move |ev| sha.set(event_target_value(&ev))/></label>
            <button data-testid="add-url-button" on:click=add>"Add"</button>
            <p class="hint">"Only hosts allowed by this page's Content-Security-Policy can be downloaded from (this site and Hugging Face)."</p>
            <label>"Local .gguf file (stored in this browser, never uploaded)"<input type="file" accept=".gguf" data-testid="import-file" on:change=on_file/></label>
        </details>
    }
}
