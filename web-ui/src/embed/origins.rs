//! The origins allowed to embed the widget and call its API: the app's own origin, and those
//! listed in `embed.json` (`{"allowed_origins": ["https://wiki.example.com", …]}`, `"*"` for
//! any). The server sends the same list as the CSP `frame-ancestors` of `embed.html`; the frame
//! checks every message's `event.origin` against it as well.

use std::cell::RefCell;
use std::rc::Rc;

use serde::Deserialize;
use wasm_bindgen::JsCast;

use crate::js::{await_promise, get, global_get};

/// Most origins read from `embed.json`.
pub const MAX_ORIGINS: usize = 256;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Allowed {
    pub origins: Vec<String>,
    /// `"*"` was listed.
    pub any: bool,
    /// This page's own origin (always allowed).
    pub own: String,
}

impl Allowed {
    /// From `embed.json`'s text; an unreadable file allows only the app's own origin.
    pub fn from_json(text: &str, own: &str) -> Self {
        #[derive(Deserialize)]
        struct File {
            allowed_origins: Vec<String>,
        }
        let list = serde_json::from_str::<File>(text)
            .map(|f| f.allowed_origins)
            .unwrap_or_default();
        let list: Vec<String> = list
            .into_iter()
            .take(MAX_ORIGINS)
            .map(|o| o.trim().trim_end_matches('/').to_string())
            .collect();
        Allowed {
            any: list.iter().any(|o| o == "*"),
            origins: list.into_iter().filter(|o| o != "*").collect(),
            own: own.to_string(),
        }
    }

    pub fn permits(&self, origin: &str) -> bool {
        origin == self.own || self.any || self.origins.iter().any(|o| o == origin)
    }
}

thread_local! {
    static CACHE: RefCell<Option<Rc<Allowed>>> = const { RefCell::new(None) };
}

/// This page's origin.
pub fn own_origin() -> String {
    get(&global_get("location"), "origin")
        .as_string()
        .unwrap_or_default()
}

/// The allowed origins (fetched from `embed.json` once per page).
pub async fn allowed() -> Rc<Allowed> {
    if let Some(a) = CACHE.with(|c| c.borrow().clone()) {
        return a;
    }
    let text = fetch_text("embed.json").await.unwrap_or_default();
    let a = Rc::new(Allowed::from_json(&text, &own_origin()));
    CACHE.with(|c| *c.borrow_mut() = Some(a.clone()));
    a
}

async fn fetch_text(url: &str) -> Option<String> {
    let win = web_sys::window()?;
    let resp: web_sys::Response = await_promise(win.fetch_with_str(url))
        .await
        .ok()?
        .dyn_into()
        .ok()?;
    if !resp.ok() {
        return None;
    }
    await_promise(resp.text().ok()?).await.ok()?.as_string()
}

/// The origins of the pages that frame this one, outermost last (`location.ancestorOrigins`),
/// where the browser tells them (Chromium, Safari); `None` elsewhere.
pub fn ancestor_origins() -> Option<Vec<String>> {
    let list = get(&global_get("location"), "ancestorOrigins");
    if list.is_undefined() || list.is_null() {
        return None;
    }
    let n = get(&list, "length").as_f64()? as u32;
    Some(
        (0..n.min(64))
            .filter_map(|i| get(&list, &i.to_string()).as_string())
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::Allowed;

    #[test]
    fn allowed_origins() {
        let a = Allowed::from_json(
            r#"{"allowed_origins":["http://localhost:8105/"," https://wiki.example.com"]}"#,
            "http://127.0.0.1:8104",
        );
        assert!(a.permits("http://localhost:8105"));
        assert!(a.permits("https://wiki.example.com"));
        assert!(a.permits("http://127.0.0.1:8104"));
        assert!(!a.permits("http://127.0.0.1:8105"));
        assert!(!a.permits("null"));
        let none = Allowed::from_json("garbage", "https://app");
        assert!(none.permits("https://app") && !none.permits("https://other"));
        assert!(Allowed::from_json(r#"{"allowed_origins":["*"]}"#, "x").permits("https://any"));
    }
}
