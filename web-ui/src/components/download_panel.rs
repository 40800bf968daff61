//! The download button (which also loads an already stored model), the progress bar with
//! speed and time left, and cancel. Loading hands the stored model to the engine worker.

use std::cell::RefCell;

use leptos::prelude::*;
use web_sys::AbortController;

use crate::catalog::{fmt_bytes, CatalogEntry};
use crate::download::{self, Progress};
use crate::engine_client;
use crate::state::{
    BackendPref, Chat, Engine, ErrorBanner, Generating, KnownModels, SelectedModel, Settings,
    StoreVersion,
};

/// Download progress and the actions around storing and loading a model.
#[derive(Clone, Copy)]
pub struct DownloadState {
    pub progress: RwSignal<Option<Progress>>,
    pub store: StoreVersion,
    pub engine: Engine,
    pub banner: ErrorBanner,
    pub pref: BackendPref,
    /// The open conversation's settings: its context size is what a load asks for.
    pub settings: Settings,
}

impl DownloadState {
    /// Stored models changed.
    pub fn bump(&self) {
        self.store.0.update(|v| *v += 1);
    }

    /// Load stored model `id` in the worker on the preferred backend; errors go to the banner.
    pub async fn load(&self, id: &str) -> bool {
        self.load_with(id, false).await
    }

    /// [`DownloadState::load`]; `template_fallback`: the user chose the built-in chat format
    /// after the file's own template failed.
    pub async fn load_with(&self, id: &str, template_fallback: bool) -> bool {
        self.engine.loaded.set(None);
        let pref = self.pref.0.get_untracked();
        let progress = self.engine.load_progress;
        let n_ctx = self.settings.0.with_untracked(|s| s.n_ctx);
        let r = engine_client::load(id, &pref, n_ctx, template_fallback, move |phase, f| {
            progress.set(Some((phase.to_string(), f)))
        })
        .await;
        progress.set(None);
        match r {
            Ok(info) => {
                if let Some(why) = &info.template_fallback {
                    self.banner.show(format!(
                        "This model's own chat template failed ({why}); it runs with the built-in chat format instead."
                    ));
                }
                self.engine.loaded.set(Some(info));
                true
            }
            Err(e) if e.kind == "template" => {
                self.banner.offer_template_fallback(
                    format!(
                        "This model's chat template cannot be used: {}. You can load it with the built-in chat format instead; replies may be worse.",
                        e.message
                    ),
                    id,
                );
                false
            }
            Err(e) => {
                self.banner
                    .show(format!("The model could not be loaded: {}", e.message));
                false
            }
        }
    }
}

impl DownloadState {
    /// The GPU failed under the loaded model (`why`, from the worker): reload the model on the
    /// CPU and say so in plain words. The conversation is page state and stays as it is. Returns
    /// whether the model now runs on the CPU; false when no GPU model was loaded (nothing to do).
    pub async fn fallback_to_cpu(&self, why: &str) -> bool {
        self.engine.gpu_lost.set(None);
        let Some(id) = self
            .engine
            .loaded
            .get_untracked()
            .filter(|l| l.backend == "gpu")
            .map(|l| l.model_id)
        else {
            return false;
        };
        self.banner.show(format!(
            "The GPU stopped working ({why}). Moving the model to the CPU; your conversation is kept…"
        ));
        self.pref.0.set("cpu".into());
        if self.load(&id).await {
            self.banner.show(format!(
                "The GPU stopped working ({why}). The model now runs on the CPU (slower); your conversation is kept."
            ));
            true
        } else {
            false
        }
    }
}

thread_local! {
    static ABORT: RefCell<Option<AbortController>> = const { RefCell::new(None) };
}

/// Download (or resume) a catalog entry into IndexedDB, then load it: one action shared by the
/// sidebar's Download button, the model manager's cards and the first-run check.
#[derive(Clone, Copy)]
pub struct Downloader {
    pub run: Action<CatalogEntry, ()>,
}

impl Downloader {
    /// Create it over `dl` and provide it as context.
    pub fn provide(dl: DownloadState) {
        let banner = dl.banner;
        let run = Action::new_local(move |entry: &CatalogEntry| {
            let entry = entry.clone();
            async move {
                banner.clear();
                let Some(ctrl) = AbortController::new().ok() else {
                    banner.show("This browser cannot run downloads (no AbortController).");
                    return;
                };
                ABORT.with(|a| *a.borrow_mut() = Some(ctrl.clone()));
                let r =
                    download::download(&entry, &ctrl.signal(), &|p| dl.progress.set(Some(p))).await;
                ABORT.with(|a| *a.borrow_mut() = None);
                dl.bump();
                match r {
                    Ok(_) => {
                        dl.load(&entry.id).await;
                    }
                    Err(e) => banner.show(e.to_string()),
                }
            }
        });
        provide_context(Downloader { run });
    }

    /// Stop the running download; what was stored is kept and resumes with HTTP Range.
    pub fn pause() {
        ABORT.with(|a| {
            if let Some(c) = a.borrow().as_ref() {
                c.abort();
            }
        })
    }
}

/// Seconds as "12 s" / "3 min" ("—" when unknown).
pub fn fmt_secs(s: f64) -> String {
    if !s.is_finite() || s <= 0.0 {
        "—".into()
    } else if s < 90.0 {
        format!("{s:.0} s")
    } else {
        format!("{:.0} min", s / 60.0)
    }
}

#[component]
pub fn DownloadPanel() -> impl IntoView {
    let selected = expect_context::<SelectedModel>().0;
    let dl = expect_context::<DownloadState>();
    let engine = dl.engine;
    let pref = dl.pref;

    // Whether the selected model is already stored (re-read when storage changes).
    let stored = LocalResource::new(move || {
        let id = selected.get().map(|e| e.id);
        let _ = dl.store.0.get();
        async move {
            match id {
                Some(id) => download::stored_complete(&id)
                    .await
                    .ok()
                    .flatten()
                    .is_some(),
                None => false,
            }
        }
    });

    let Downloader { run } = expect_context::<Downloader>();
    let cancel = move |_| Downloader::pause();
    let busy = move || run.pending().get();
    let label = move || {
        if busy() {
            "Working…"
        } else if stored.get().unwrap_or(false) {
            "Load model"
        } else {
            "Download"
        }
    };
    let disabled = move || busy() || selected.get().is_none_or(|e| !e.supported);
    let on_backend = move |ev| {
        pref.0.set(event_target_value(&ev));
        // Reload a loaded model on the new choice.
        if let Some(l) = engine.loaded.get_untracked() {
            let id = l.model_id.clone();
            leptos::task::spawn_local(async move {
                dl.load(&id).await;
            });
        }
    };

    view! {
        <section class="panel download">
            <label class="backend-choice">"Backend "
                <select data-testid="backend-select" on:change=on_backend prop:value=move || pref.0.get()>
                    <option value="auto" selected=true>"Auto (WebGPU if it passes its self-test)"</option>
                    <option value="cpu">"CPU (wasm SIMD)"</option>
                    <option value="gpu">"WebGPU"</option>
                </select>
            </label>
            <div class="buttons">
                <button data-testid="download-button" disabled=disabled on:click=move |_| {
                    if let Some(e) = selected.get_untracked() {
                        run.dispatch(e);
                    }
                }>{label}</button>
                <Show when=busy>
                    <button data-testid="cancel-button" on:click=cancel>"Cancel"</button>
                </Show>
            </div>
            {move || dl.progress.get().map(|p| {
                let pct = p.percent();
                let text = if p.phase == "downloading" {
                    format!("{} of {} ({pct:.0}%) · {}/s · {} left", fmt_bytes(p.bytes as f64), fmt_bytes(p.total as f64), fmt_bytes(p.speed), fmt_secs(p.eta_s))
                } else {
                    format!("{}: {} of {} ({pct:.0}%)", p.phase, fmt_bytes(p.bytes as f64), fmt_bytes(p.total as f64))
                };
                view! {
                    <div class="progress">
                        <progress data-testid="download-progress" max="100" value=format!("{pct:.1}") data-phase=p.phase></progress>
                        <span class="progress-text">{text}</span>
                    </div>
                }
            })}
            {move || engine.load_progress.get().map(|(phase, f)| view! {
                <div class="progress">
                    <progress max="100" value=format!("{:.0}", f * 100.0)></progress>
                    <span class="progress-text">{format!("Loading: {phase}")}</span>
                </div>
            })}
            {move || engine.loaded.get().map(|l| view! {
                <p class="loaded" data-testid="model-ready" data-model-id=l.model_id.clone()>{format!("Ready: {} on {} in {:.1} s — {}", l.arch, l.backend.to_uppercase(), l.load_ms / 1e3, l.reason)}</p>
            })}
        </section>
    }
}

/// The contexts every page that chats needs (the app and the embedded widget): the engine's
/// state, the banner, the conversation and its settings, the catalog, the download state and
/// its [`Downloader`]; then starts the engine worker, whose unsolicited `GpuLost` goes to
/// `engine.gpu_lost`. Returns the download state.
pub fn provide_chat_contexts(
    engine: Engine,
    banner: ErrorBanner,
    chat: Chat,
    settings: Settings,
) -> DownloadState {
    provide_context(Generating(RwSignal::new(false)));
    provide_context(SelectedModel(RwSignal::new(None)));
    provide_context(KnownModels {
        catalog: RwSignal::new(Vec::new()),
        extra: RwSignal::new(Vec::new()),
    });
    provide_context(banner);
    provide_context(settings);
    provide_context(engine);
    provide_context(chat);
    let store = StoreVersion(RwSignal::new(0));
    let pref = BackendPref(RwSignal::new("auto".to_string()));
    provide_context(store);
    provide_context(pref);
    let dl = DownloadState {
        progress: RwSignal::new(None),
        store,
        engine,
        banner,
        pref,
        settings,
    };
    provide_context(dl);
    Downloader::provide(dl);
    let on_unsolicited: std::rc::Rc<dyn Fn(&crate::protocol::FromWorker)> =
        std::rc::Rc::new(move |m: &crate::protocol::FromWorker| {
            if let crate::protocol::FromWorker::GpuLost { message } = m {
                engine.gpu_lost.set(Some(message.clone()))
            }
        });
    if let Err(e) = engine_client::start(on_unsolicited) {
        banner.show(format!("The engine worker could not start: {e}"));
    }
    dl
}
