//! Entry point of the browser app's one wasm module. In the page, `main` mounts the Leptos app;
//! in the engine's Web Worker (`public/worker.js`) there is no `window`, so `main` returns and the
//! worker calls [`worker::worker_main`] instead.

mod api;
mod capabilities;
mod catalog;
mod chat_store;
mod components;
mod device;
mod download;
mod embed;
mod engine_client;
mod error;
mod hub;
mod idb;
mod js;
mod markdown;
mod protocol;
mod queue;
mod state;
mod worker;

fn main() {
    console_error_panic_hook::set_once();
    if web_sys::window().is_some() {
        if embed::is_embed_page() {
            leptos::mount::mount_to_body(embed::EmbedApp);
        } else {
            leptos::mount::mount_to_body(components::app::App);
        }
    }
}
