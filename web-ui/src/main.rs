//! Entry point of the browser app's wasm module. In the page, `main` mounts the Leptos app; in
//! the engine's Web Worker (`public/worker.js`) there is no `window`, so `main` returns and the
//! worker calls [`worker::worker_main`] instead.
//!
//! Without the `ui` feature the module is the engine worker alone (no Leptos, no page): that is
//! the multi-threaded build (atomics + shared memory), which only the engine's worker and its
//! pool threads run; the page always runs the single-threaded build with the UI.

// The worker-only build uses part of the shared modules (catalog, storage, protocol).
#![cfg_attr(not(feature = "ui"), allow(dead_code, unused_imports))]

#[cfg(feature = "ui")]
mod api;
#[cfg(feature = "ui")]
mod capabilities;
mod catalog;
#[cfg(feature = "ui")]
mod chat_store;
#[cfg(feature = "ui")]
mod components;
#[cfg(feature = "ui")]
mod device;
#[cfg(feature = "ui")]
mod download;
#[cfg(feature = "ui")]
mod embed;
#[cfg(feature = "ui")]
mod engine_client;
mod error;
#[cfg(feature = "ui")]
mod hub;
mod idb;
mod js;
#[cfg(feature = "ui")]
mod markdown;
mod protocol;
mod queue;
#[cfg(feature = "ui")]
mod state;
mod worker;

fn main() {
    console_error_panic_hook::set_once();
    #[cfg(feature = "ui")]
    if web_sys::window().is_some() {
        if embed::is_embed_page() {
            leptos::mount::mount_to_body(embed::EmbedApp);
        } else {
            leptos::mount::mount_to_body(components::app::App);
        }
    }
}
