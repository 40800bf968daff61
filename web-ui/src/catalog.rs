//! The model catalog (`public/models.json`) and the record kept in IndexedDB for each model that
//! is being or has been stored on this device.

use serde::{Deserialize, Serialize};
use wasm_bindgen::JsCast;

use crate::error::AppError;
use crate::js::{await_promise, err_text};

/// One catalog entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CatalogEntry {
    pub id: String,
    pub name: String,
    pub family: String,
    pub parameters: String,
    pub quant: String,
    /// Exact size in bytes when known (checked after download); else taken from the server.
    pub size: Option<u64>,
    /// Approximate size for display when `size` is unknown.
    #[serde(default)]
    pub size_label: Option<String>,
    pub license: String,
    /// Absolute, or relative to the app's origin.
    pub url: String,
    /// Lower-case hex; `None` = verified by size only.
    pub sha256: Option<String>,
    pub supported: bool,
    /// Backends this model's family and tensor types run on (`"cpu"`, `"gpu"`).
    #[serde(default)]
    pub backends: Vec<String>,
    #[serde(default)]
    pub note: Option<String>,
    #[serde(default)]
    pub default: bool,
}

impl CatalogEntry {
    /// Size text for the UI.
    pub fn size_text(&self) -> String {
        match (self.size, &self.size_label) {
            (Some(n), _) => fmt_bytes(n as f64),
            (None, Some(l)) => l.clone(),
            (None, None) => "unknown size".into(),
        }
    }

    /// Bytes: the exact size, else the approximate one of `size_label` ("about 386 MB",
    /// "about 1.8 GB"; decimal units as [`fmt_bytes`] writes them).
    pub fn approx_bytes(&self) -> Option<u64> {
        if let Some(n) = self.size {
            return Some(n);
        }
        let label = self.size_label.as_deref()?;
        let mut it = label.trim_start_matches("about").split_whitespace();
        let v: f64 = it.next()?.parse().ok()?;
        let unit = match it.next()? {
            "KB" => 1e3,
            "MB" => 1e6,
            "GB" => 1e9,
            "TB" => 1e12,
            _ => return None,
        };
        let n = v * unit;
        (n.is_finite() && n > 0.0).then_some(n as u64)
    }

    /// An entry for a model added by URL (optionally with its expected sha256).
    pub fn from_url(url: &str, sha256: Option<String>) -> CatalogEntry {
        let file = url
            .split('?')
            .next()
            .unwrap_or(url)
            .rsplit('/')
            .next()
            .unwrap_or(url)
            .to_string();
        CatalogEntry {
            id: format!("url:{}", short_hash(url)),
            name: file,
            family: "unknown (read from the file)".into(),
            parameters: "?".into(),
            quant: "?".into(),
            size: None,
            size_label: None,
            license: "see the model's page".into(),
            url: url.to_string(),
            sha256,
            supported: true,
            backends: Vec::new(),
            note: Some("added by URL".into()),
            default: false,
        }
    }
}

impl CatalogEntry {
    /// An entry for a model found in storage but not in the catalog (a URL added or a file
    /// imported in an earlier visit).
    pub fn from_stored(rec: &StoredModel) -> CatalogEntry {
        let mut e = CatalogEntry::from_url(&rec.name, rec.sha256.clone());
        e.id = rec.id.clone();
        e.name = rec.name.clone();
        e.url = rec.url.clone();
        e.size = Some(rec.size);
        e.note = Some(if rec.is_local_file() {
            "imported from a local file".into()
        } else {
            "stored on this device".into()
        });
        e
    }
}

impl StoredModel {
    /// Imported from a file picked by the user rather than downloaded.
    pub fn is_local_file(&self) -> bool {
        self.id.starts_with("file:")
    }
}

/// A short stable id from text (first 12 hex digits of its sha256).
pub fn short_hash(s: &str) -> String {
    use sha2::Digest;
    let h = sha2::Sha256::digest(s.as_bytes());
    h.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

/// `1.5 MB`-style text (decimal units, as storage estimates are).
pub fn fmt_bytes(n: f64) -> String {
    const U: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut v = n;
    let mut i = 0;
    while v >= 1000.0 && i + 1 < U.len() {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 {
        format!("{v:.0} {}", U[i])
    } else {
        format!("{v:.1} {}", U[i])
    }
}

/// What IndexedDB holds about a model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredModel {
    pub id: String,
    pub name: String,
    pub url: String,
    /// Total size in bytes (known once the server answered).
    pub size: u64,
    pub sha256: Option<String>,
    pub chunk_size: u32,
    /// Full chunks stored, in order.
    pub n_chunks: u32,
    /// Bytes stored (sum of stored chunks).
    pub bytes_done: u64,
    /// All bytes stored and verified: only then is the model usable.
    pub complete: bool,
    /// How it was verified: `sha256` or `size`.
    pub verified: String,
}

/// Fetch and parse `models.json`.
pub async fn fetch_catalog() -> Result<Vec<CatalogEntry>, AppError> {
    #[derive(Deserialize)]
    struct File {
        models: Vec<CatalogEntry>,
    }
    let win = web_sys::window().ok_or_else(|| AppError::Other("no window".into()))?;
    let resp = await_promise(win.fetch_with_str("models.json"))
        .await
        .map_err(|e| AppError::Network(err_text(&e)))?;
    let resp: web_sys::Response = resp.unchecked_into();
    if !resp.ok() {
        return Err(AppError::Network(format!(
            "models.json: HTTP {}",
            resp.status()
        )));
    }
    let text = await_promise(resp.text().map_err(|e| AppError::Network(err_text(&e)))?)
        .await
        .map_err(|e| AppError::Network(err_text(&e)))?
        .as_string()
        .unwrap_or_default();
    let f: File = serde_json::from_str(&text)
        .map_err(|e| AppError::Other(format!("models.json is invalid: {e}")))?;
    Ok(f.models)
}
