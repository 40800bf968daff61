//! Downloading a model into IndexedDB: streamed in [`CHUNK`]-byte records with HTTP Range
//! resume, hashed incrementally with `sha2`, and marked usable only after the hash (or, for
//! entries without one, the size) matched. Also: importing a local `.gguf` file the same way.

use js_sys::{Reflect, Uint8Array};
use sha2::{Digest, Sha256};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use web_sys::{AbortSignal, Headers, RequestInit, Response};

use crate::catalog::{CatalogEntry, StoredModel};
use crate::error::AppError;
use crate::idb::Db;
use crate::js::{await_promise, err_name, err_text, get, now_ms};

/// Bytes per IndexedDB record.
pub const CHUNK: usize = 8 << 20;

/// Where a download stands.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Progress {
    pub phase: &'static str,
    pub bytes: u64,
    pub total: u64,
    /// Bytes per second over this session of the download.
    pub speed: f64,
    /// Seconds left at that speed.
    pub eta_s: f64,
}

impl Progress {
    pub fn percent(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.bytes as f64 * 100.0 / self.total as f64
        }
    }
}

/// Call `navigator.storage.<method>()` and await its promise; `None` where the browser lacks it.
async fn storage_call(method: &str) -> Option<JsValue> {
    let storage = get(&crate::js::global_get("navigator"), "storage");
    let f: js_sys::Function = get(&storage, method).dyn_into().ok()?;
    let p: js_sys::Promise = f.call0(&storage).ok()?.dyn_into().ok()?;
    await_promise(p).await.ok()
}

/// `navigator.storage.estimate()`: (usage, quota) in bytes.
pub async fn storage_estimate() -> Option<(f64, f64)> {
    let est = storage_call("estimate").await?;
    Some((get(&est, "usage").as_f64()?, get(&est, "quota").as_f64()?))
}

/// Ask the browser not to evict our storage under pressure (`navigator.storage.persist()`).
pub async fn request_persistence() -> bool {
    storage_call("persist")
        .await
        .and_then(|v| v.as_bool())
        .unwrap_or(false)
}

/// Whether the browser granted persistent storage (`navigator.storage.persisted()`).
pub async fn storage_persisted() -> Option<bool> {
    storage_call("persisted").await?.as_bool()
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// Hash the chunks already stored (for a resume: `sha2` state cannot be saved).
async fn rehash(
    db: &Db,
    rec: &StoredModel,
    h: &mut Sha256,
    on: &dyn Fn(Progress),
) -> Result<(), AppError> {
    for i in 0..rec.n_chunks {
        let c = db.get_chunk(&rec.id, i).await?;
        h.update(&c);
        on(Progress {
            phase: "checking the stored part",
            bytes: (i as u64 + 1) * rec.chunk_size as u64,
            total: rec.size,
            ..Default::default()
        });
    }
    Ok(())
}

/// Appends bytes, writes full chunks, and finally verifies.
struct Sink {
    db: Db,
    rec: StoredModel,
    buf: Vec<u8>,
    h: Sha256,
}

impl Sink {
    async fn push(&mut self, mut data: &[u8]) -> Result<(), AppError> {
        while !data.is_empty() {
            let n = (CHUNK - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.buf.len() == CHUNK {
                self.flush().await?;
            }
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), AppError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.h.update(&self.buf);
        let mut next = self.rec.clone();
        next.n_chunks += 1;
        next.bytes_done += self.buf.len() as u64;
        self.db
            .put_chunk(&self.rec.id, self.rec.n_chunks, &self.buf, &next)
            .await
            .map_err(|e| match AppError::from(e) {
                AppError::Quota(_) => AppError::Quota(format!(
                    "the browser refused to store more after {} of {}",
                    crate::catalog::fmt_bytes(self.rec.bytes_done as f64),
                    crate::catalog::fmt_bytes(self.rec.size as f64)
                )),
                other => other,
            })?;
        self.rec = next;
        self.buf.clear();
        Ok(())
    }

    /// Flush, check size and hash; mark complete or discard everything.
    async fn finish(mut self) -> Result<StoredModel, AppError> {
        self.flush().await?;
        let got = hex(&self.h.finalize_reset());
        if self.rec.bytes_done != self.rec.size {
            let _ = self.db.delete_model(&self.rec.id).await;
            return Err(AppError::Network(format!(
                "got {} bytes but expected {}",
                self.rec.bytes_done, self.rec.size
            )));
        }
        match &self.rec.sha256 {
            Some(want) if !want.eq_ignore_ascii_case(&got) => {
                let _ = self.db.delete_model(&self.rec.id).await;
                return Err(AppError::Checksum {
                    expected: want.clone(),
                    got,
                });
            }
            Some(_) => self.rec.verified = "sha256".into(),
            None => {
                self.rec.verified = "size".into();
                self.rec.sha256 = Some(got);
            }
        }
        self.rec.complete = true;
        self.db
            .put_json(crate::idb::MODELS, &self.rec.id, &self.rec)
            .await?;
        Ok(self.rec)
    }
}

/// For a Hugging Face Hub file whose entry pins no sha256: the entry with the sha256 (and size)
/// the Hub lists for it, so the download is verified by hash rather than by size alone. `None`
/// (keep the entry) when a hash is pinned, a stored part of the same URL already carries one,
/// the URL is not a Hub file, or the Hub cannot be asked (then: size only, as before).
async fn with_hub_hash(
    entry: &CatalogEntry,
    existing: Option<&StoredModel>,
) -> Option<CatalogEntry> {
    if entry.sha256.is_some() {
        return None;
    }
    let mut e = entry.clone();
    if let Some(sha) = existing
        .filter(|r| r.url == entry.url)
        .and_then(|r| r.sha256.clone())
    {
        e.sha256 = Some(sha);
        return Some(e);
    }
    let file = crate::hub::HubFile::parse(&absolute_url(&entry.url))?;
    match file.fetch_lfs().await {
        Ok((sha, size)) => {
            e.sha256 = Some(sha);
            e.size = e.size.or(Some(size));
            Some(e)
        }
        Err(why) => {
            web_sys::console::warn_1(
                &format!("no sha256 from the Hub ({why}): verifying by size").into(),
            );
            None
        }
    }
}

/// `url` resolved against the page's address (catalog URLs may be relative).
fn absolute_url(url: &str) -> String {
    web_sys::window()
        .and_then(|w| w.location().href().ok())
        .and_then(|base| web_sys::Url::new_with_base(url, &base).ok())
        .map_or_else(|| url.to_string(), |u| u.href())
}

fn fresh_record(entry: &CatalogEntry, size: u64) -> StoredModel {
    StoredModel {
        id: entry.id.clone(),
        name: entry.name.clone(),
        url: entry.url.clone(),
        size,
        sha256: entry.sha256.clone(),
        chunk_size: CHUNK as u32,
        n_chunks: 0,
        bytes_done: 0,
        complete: false,
        verified: String::new(),
    }
}

/// The stored record of `id`, if complete (usable without the network).
pub async fn stored_complete(id: &str) -> Result<Option<StoredModel>, AppError> {
    let db = Db::open().await?;
    Ok(db
        .get_json::<StoredModel>(crate::idb::MODELS, id)
        .await?
        .filter(|r| r.complete))
}

/// `Err(Quota)` when the free storage (per `navigator.storage.estimate()`) cannot hold `need`
/// more bytes; `Ok` when it can or the browser gives no estimate.
async fn check_space(need: u64) -> Result<(), AppError> {
    if let Some((usage, quota)) = storage_estimate().await {
        if quota - usage < need as f64 {
            return Err(AppError::Quota(format!(
                "this model needs {}, about {} is free",
                crate::catalog::fmt_bytes(need as f64),
                crate::catalog::fmt_bytes((quota - usage).max(0.0))
            )));
        }
    }
    Ok(())
}

/// Download `entry` (or resume its stored part), reporting progress; `signal` cancels.
///
/// When storage runs out (before or during the download) every stored part of the model is
/// deleted: a part that cannot be completed would only hold the space, and it is never usable.
pub async fn download(
    entry: &CatalogEntry,
    signal: &AbortSignal,
    on: &dyn Fn(Progress),
) -> Result<StoredModel, AppError> {
    let r = download_inner(entry, signal, on).await;
    if matches!(r, Err(AppError::Quota(_))) {
        if let Ok(db) = Db::open().await {
            let _ = db.delete_model(&entry.id).await;
        }
    }
    r
}

async fn download_inner(
    entry: &CatalogEntry,
    signal: &AbortSignal,
    on: &dyn Fn(Progress),
) -> Result<StoredModel, AppError> {
    let db = Db::open().await?;
    let existing: Option<StoredModel> = db.get_json(crate::idb::MODELS, &entry.id).await?;
    if let Some(r) = &existing {
        if r.complete {
            return Ok(r.clone());
        }
    }
    request_persistence().await;
    let hub_checked;
    let entry = match with_hub_hash(entry, existing.as_ref()).await {
        Some(e) => {
            hub_checked = e;
            &hub_checked
        }
        None => entry,
    };
    // With the size known from the catalog, a download that cannot fit never starts.
    if let Some(size) = entry.size {
        let have = existing
            .as_ref()
            .filter(|r| r.url == entry.url)
            .map_or(0, |r| r.bytes_done);
        check_space(size.saturating_sub(have)).await?;
    }
    let mut h = Sha256::new();
    // Resume only a part stored from the same URL in whole chunks.
    let mut rec = match existing {
        Some(r)
            if r.url == entry.url
                && r.chunk_size as usize == CHUNK
                && r.bytes_done == r.n_chunks as u64 * CHUNK as u64
                && r.n_chunks > 0 =>
        {
            rehash(&db, &r, &mut h, on).await?;
            r
        }
        _ => {
            let r = fresh_record(entry, entry.size.unwrap_or(0));
            db.clear_chunks(&r.id, &r).await?;
            r
        }
    };
    let start = rec.bytes_done;

    let headers = Headers::new().map_err(|e| AppError::Other(err_text(&e)))?;
    if start > 0 {
        headers
            .set("Range", &format!("bytes={start}-"))
            .map_err(|e| AppError::Other(err_text(&e)))?;
    }
    let init = RequestInit::new();
    init.set_headers(&headers);
    init.set_signal(Some(signal));
    let win = web_sys::window().ok_or_else(|| AppError::Other("no window".into()))?;
    let resp = await_promise(win.fetch_with_str_and_init(&entry.url, &init))
        .await
        .map_err(|e| fetch_err(&e))?;
    let resp: Response = resp.unchecked_into();
    let status = resp.status();
    let content_len = resp
        .headers()
        .get("Content-Length")
        .ok()
        .flatten()
        .and_then(|s| s.parse::<u64>().ok());
    if status == 200 && start > 0 {
        // The server ignored the Range header: start over.
        h = Sha256::new();
        rec = fresh_record(entry, entry.size.unwrap_or(0));
        db.clear_chunks(&rec.id, &rec).await?;
    } else if status != 200 && status != 206 {
        return Err(AppError::Network(format!(
            "the server answered HTTP {status} for {}",
            entry.url
        )));
    }
    let start = rec.bytes_done;
    let total = entry
        .size
        .or_else(|| content_len.map(|n| n + start))
        .ok_or_else(|| AppError::Network("the server did not say how large the file is".into()))?;
    rec.size = total;

    let body = resp
        .body()
        .ok_or_else(|| AppError::Network("empty response".into()))?;
    // Plain message before anything is written when the quota cannot hold it.
    if let Err(e) = check_space(total.saturating_sub(start)).await {
        let _ = body.cancel();
        return Err(e);
    }
    let reader: web_sys::ReadableStreamDefaultReader = body.get_reader().unchecked_into();
    let mut sink = Sink {
        db: db.clone(),
        rec,
        buf: Vec::with_capacity(CHUNK),
        h,
    };
    let t0 = now_ms();
    let mut got: u64 = 0;
    let mut last_report = 0.0;
    loop {
        let chunk = await_promise(reader.read())
            .await
            .map_err(|e| fetch_err(&e))?;
        if Reflect::get(&chunk, &"done".into())
            .ok()
            .and_then(|v| v.as_bool())
            .unwrap_or(false)
        {
            break;
        }
        let value: Uint8Array = get(&chunk, "value").unchecked_into();
        let bytes = value.to_vec();
        got += bytes.len() as u64;
        if start + got > total {
            let _ = sink.db.delete_model(&entry.id).await;
            return Err(AppError::Network(format!(
                "the server sent more than the expected {total} bytes"
            )));
        }
        sink.push(&bytes).await?;
        let t = now_ms();
        if t - last_report > 100.0 || start + got == total {
            last_report = t;
            let secs = ((t - t0) / 1e3).max(1e-3);
            let speed = got as f64 / secs;
            on(Progress {
                phase: "downloading",
                bytes: start + got,
                total,
                speed,
                eta_s: if speed > 0.0 {
                    (total - start - got) as f64 / speed
                } else {
                    0.0
                },
            });
        }
    }
    on(Progress {
        phase: "verifying",
        bytes: total,
        total,
        ..Default::default()
    });
    sink.finish().await
}

fn fetch_err(e: &JsValue) -> AppError {
    if err_name(e) == "AbortError" {
        AppError::Cancelled
    } else {
        AppError::Network(err_text(e))
    }
}

/// Store a local `.gguf` file picked by the user (verified by size; its sha256 is recorded).
pub async fn import_file(
    file: &web_sys::File,
    on: &dyn Fn(Progress),
) -> Result<StoredModel, AppError> {
    let db = Db::open().await?;
    let name = file.name();
    let size = file.size() as u64;
    let entry = CatalogEntry {
        id: format!(
            "file:{}",
            crate::catalog::short_hash(&format!("{name}:{size}"))
        ),
        name: name.clone(),
        url: format!("local file {name}"),
        size: Some(size),
        sha256: None,
        ..CatalogEntry::from_url(&name, None)
    };
    let rec = fresh_record(&entry, size);
    db.clear_chunks(&rec.id, &rec).await?;
    let mut sink = Sink {
        db,
        rec,
        buf: Vec::with_capacity(CHUNK),
        h: Sha256::new(),
    };
    let mut off = 0u64;
    while off < size {
        let end = (off + CHUNK as u64).min(size);
        let blob = file
            .slice_with_f64_and_f64(off as f64, end as f64)
            .map_err(|e| AppError::Other(err_text(&e)))?;
        let buf = await_promise(blob.array_buffer())
            .await
            .map_err(|e| AppError::Other(err_text(&e)))?;
        sink.push(&Uint8Array::new(&buf).to_vec()).await?;
        off = end;
        on(Progress {
            phase: "importing",
            bytes: off,
            total: size,
            ..Default::default()
        });
    }
    sink.finish().await
}

/// Every model record in storage (complete or partial).
pub async fn stored_models() -> Result<Vec<StoredModel>, AppError> {
    let db = Db::open().await?;
    Ok(db.all_json(crate::idb::MODELS).await?)
}

/// Delete a stored model.
pub async fn delete_model(id: &str) -> Result<(), AppError> {
    Ok(Db::open().await?.delete_model(id).await?)
}
