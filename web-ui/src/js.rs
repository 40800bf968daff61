//! Small JavaScript helpers shared by the page and the worker: the global scope (window or
//! worker), `performance.now()` as the engine's clock, error text, one-shot promises.

use js_sys::{Function, Promise, Reflect};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;

/// `globalThis[name]`, or `undefined`.
pub fn global_get(name: &str) -> JsValue {
    Reflect::get(&js_sys::global(), &JsValue::from_str(name)).unwrap_or(JsValue::UNDEFINED)
}

/// `obj[key]`, or `undefined`.
pub fn get(obj: &JsValue, key: &str) -> JsValue {
    Reflect::get(obj, &JsValue::from_str(key)).unwrap_or(JsValue::UNDEFINED)
}

/// `obj[key] = value` (ignoring failures on frozen objects).
pub fn set(obj: &JsValue, key: &str, value: &JsValue) {
    let _ = Reflect::set(obj, &JsValue::from_str(key), value);
}

/// Milliseconds from `performance.now()` (works in the page and in workers).
pub fn now_ms() -> f64 {
    let perf = global_get("performance");
    get(&perf, "now")
        .dyn_into::<Function>()
        .ok()
        .and_then(|f| f.call0(&perf).ok())
        .and_then(|v| v.as_f64())
        .unwrap_or(0.0)
}

/// The engine's clock in the browser (`std::time::Instant` panics on wasm32).
pub struct PerfClock;

impl engine::generate::Clock for PerfClock {
    fn now_ms(&self) -> f64 {
        now_ms()
    }
}

/// Plain text of a thrown JavaScript value: `Name: message` for errors and DOMExceptions.
pub fn err_text(v: &JsValue) -> String {
    if let Some(s) = v.as_string() {
        return s;
    }
    let name = get(v, "name").as_string();
    let message = get(v, "message").as_string();
    match (name, message) {
        (Some(n), Some(m)) => format!("{n}: {m}"),
        (None, Some(m)) => m,
        (Some(n), None) => n,
        _ => format!("{v:?}"),
    }
}

/// The `name` of a thrown error (e.g. `QuotaExceededError`, `AbortError`), if any.
pub fn err_name(v: &JsValue) -> String {
    get(v, "name").as_string().unwrap_or_default()
}

/// Await a JavaScript promise, mapping a rejection to its value.
pub async fn await_promise(p: Promise) -> Result<JsValue, JsValue> {
    wasm_bindgen_futures::JsFuture::from(p).await
}

/// A promise plus its `resolve`/`reject` functions: a one-shot channel from callbacks to async code.
pub fn deferred() -> (Promise, Function, Function) {
    let mut slots: Option<(Function, Function)> = None;
    let p = Promise::new(&mut |res, rej| slots = Some((res, rej)));
    let (res, rej) =
        slots.unwrap_or_else(|| (Function::new_no_args(""), Function::new_no_args("")));
    (p, res, rej)
}

/// A readable name for a WebGPU adapter, never empty: its description, else vendor and
/// architecture (Chromium's SwiftShader leaves the description empty), else its device, else
/// "unnamed adapter".
pub fn adapter_label(description: &str, vendor: &str, architecture: &str, device: &str) -> String {
    let description = description.trim();
    if !description.is_empty() {
        return description.to_string();
    }
    let va = format!("{} {}", vendor.trim(), architecture.trim());
    let va = va.trim();
    if !va.is_empty() {
        return va.to_string();
    }
    match device.trim() {
        "" => "unnamed adapter".to_string(),
        d => d.to_string(),
    }
}

/// [`adapter_label`] of a JavaScript `GPUAdapterInfo` (or `undefined`), preferring `name` when
/// wgpu already found one.
pub fn adapter_label_js(name: &str, info: &JsValue) -> String {
    let s = |k: &str| get(info, k).as_string().unwrap_or_default();
    if !name.trim().is_empty() {
        return name.trim().to_string();
    }
    adapter_label(
        &s("description"),
        &s("vendor"),
        &s("architecture"),
        &s("device"),
    )
}

#[cfg(test)]
mod tests {
    use super::adapter_label;

    #[test]
    fn adapter_label_is_never_empty() {
        assert_eq!(
            adapter_label("NVIDIA RTX", "nvidia", "ampere", ""),
            "NVIDIA RTX"
        );
        assert_eq!(
            adapter_label("", "google", "swiftshader", ""),
            "google swiftshader"
        );
        assert_eq!(adapter_label(" ", "", "swiftshader", ""), "swiftshader");
        assert_eq!(adapter_label("", "", "", "0x1234"), "0x1234");
        assert_eq!(adapter_label("", " ", "", ""), "unnamed adapter");
    }
}
