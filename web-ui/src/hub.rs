//! The sha256 of a Hugging Face Hub file, from the Hub's own listing, for models whose catalog
//! entry (or the person adding a URL) pins no hash.
//!
//! A Hub download URL has the shape `{origin}/{owner}/{repo}/resolve/{revision}/{path}`. The
//! Hub API lists the folder at `{origin}/api/models/{owner}/{repo}/tree/{revision}[/{dir}]`: one
//! entry per file, and files stored with Git LFS carry `lfs: {oid, size}`, where `oid` is the
//! sha256 of the content (the Git LFS pointer's `oid sha256:…`). The request goes to the host
//! the model is downloaded from, with no prompt or chat data; mirrors with the same API work too.

use serde::Deserialize;
use wasm_bindgen::JsCast;

use crate::js::{await_promise, err_text};

/// Longest path the parser accepts (a URL is user input).
const MAX_URL_LEN: usize = 2048;

/// A file on a Hugging Face Hub (or a mirror with its API).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubFile {
    /// `https://huggingface.co`.
    pub origin: String,
    /// `owner/name`.
    pub repo: String,
    /// Branch, tag or commit (as written in the URL).
    pub revision: String,
    /// Path of the file inside the repository.
    pub path: String,
}

/// One entry of the Hub's tree listing (only the fields used here).
#[derive(Clone, Debug, Deserialize)]
pub struct TreeEntry {
    pub path: String,
    #[serde(default)]
    pub lfs: Option<LfsInfo>,
}

/// Git LFS metadata of a listed file: `oid` is the sha256 of its content.
#[derive(Clone, Debug, Deserialize)]
pub struct LfsInfo {
    pub oid: String,
    pub size: u64,
}

impl HubFile {
    /// Parse an absolute `http(s)://host/owner/repo/resolve/revision/path` URL (query and
    /// fragment ignored). `None` for anything else.
    pub fn parse(url: &str) -> Option<HubFile> {
        if url.len() > MAX_URL_LEN {
            return None;
        }
        let url = url.split(['?', '#']).next()?;
        let (scheme, rest) = url.split_once("://")?;
        if scheme != "https" && scheme != "http" {
            return None;
        }
        let (host, path) = rest.split_once('/')?;
        let parts: Vec<&str> = path.split('/').collect();
        let [owner, name, "resolve", revision, file @ ..] = parts.as_slice() else {
            return None;
        };
        let mut segments = [*owner, *name, *revision]
            .into_iter()
            .chain(file.iter().copied());
        if host.is_empty()
            || file.is_empty()
            || segments.any(|s| s.is_empty() || s == "." || s == "..")
        {
            return None;
        }
        Some(HubFile {
            origin: format!("{scheme}://{host}"),
            repo: format!("{owner}/{name}"),
            revision: revision.to_string(),
            path: file.join("/"),
        })
    }

    /// The API URL listing the file's folder.
    pub fn tree_url(&self) -> String {
        let base = format!(
            "{}/api/models/{}/tree/{}",
            self.origin, self.repo, self.revision
        );
        match self.path.rsplit_once('/') {
            Some((dir, _)) => format!("{base}/{dir}"),
            None => base,
        }
    }

    /// This file's `(sha256, size)` in a tree listing; `None` when it is not listed or not an
    /// LFS file, or its oid is not a sha256.
    pub fn find_lfs(&self, listing: &[TreeEntry]) -> Option<(String, u64)> {
        let lfs = listing.iter().find(|e| e.path == self.path)?.lfs.as_ref()?;
        let oid = lfs.oid.to_ascii_lowercase();
        (oid.len() == 64 && oid.bytes().all(|b| b.is_ascii_hexdigit())).then_some((oid, lfs.size))
    }

    /// Ask the Hub for this file's `(sha256, size)`.
    ///
    /// Errors: plain text (network, HTTP status, a listing without this file as LFS); the caller
    /// then verifies by size only.
    pub async fn fetch_lfs(&self) -> Result<(String, u64), String> {
        let win = web_sys::window().ok_or("no window")?;
        let url = self.tree_url();
        let resp = await_promise(win.fetch_with_str(&url))
            .await
            .map_err(|e| err_text(&e))?;
        let resp: web_sys::Response = resp.unchecked_into();
        if !resp.ok() {
            return Err(format!("{url}: HTTP {}", resp.status()));
        }
        let json = await_promise(resp.json().map_err(|e| err_text(&e))?)
            .await
            .map_err(|e| err_text(&e))?;
        let listing: Vec<TreeEntry> =
            serde_wasm_bindgen::from_value(json).map_err(|e| format!("{url}: {e}"))?;
        self.find_lfs(&listing)
            .ok_or_else(|| format!("{url} lists no LFS sha256 for {}", self.path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hub_urls_and_nothing_else() {
        let f = HubFile::parse(
            "https://huggingface.co/Qwen/Qwen2.5-0.5B-Instruct-GGUF/resolve/main/qwen2.5-0.5b-instruct-q8_0.gguf?download=true",
        )
        .unwrap();
        assert_eq!(f.origin, "https://huggingface.co");
        assert_eq!(f.repo, "Qwen/Qwen2.5-0.5B-Instruct-GGUF");
        assert_eq!(f.revision, "main");
        assert_eq!(f.path, "qwen2.5-0.5b-instruct-q8_0.gguf");
        assert_eq!(
            f.tree_url(),
            "https://huggingface.co/api/models/Qwen/Qwen2.5-0.5B-Instruct-GGUF/tree/main"
        );
        let nested = HubFile::parse("http://127.0.0.1:8080/o/r/resolve/v1/sub/dir/m.gguf").unwrap();
        assert_eq!(nested.path, "sub/dir/m.gguf");
        assert_eq!(
            nested.tree_url(),
            "http://127.0.0.1:8080/api/models/o/r/tree/v1/sub/dir"
        );
        for bad in [
            "models/SmolLM2-135M-Instruct.Q4_1.gguf",
            "https://example.com/m.gguf",
            "https://huggingface.co/o/r/blob/main/m.gguf",
            "https://huggingface.co/o/r/resolve/main/",
            "https://huggingface.co/o/r/resolve/main/../m.gguf",
            "ftp://huggingface.co/o/r/resolve/main/m.gguf",
        ] {
            assert_eq!(HubFile::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn finds_the_lfs_sha256_of_the_file() {
        let f = HubFile::parse("https://huggingface.co/o/r/resolve/main/m.gguf").unwrap();
        let sha = "B179C9523D0E6A0F98A330C7562B682750A6F8C8C15E5BC70EA373728110DB53";
        let listing: Vec<TreeEntry> = serde_json::from_str(&format!(
            r#"[{{"type":"file","path":"README.md","size":10,"oid":"abc"}},
                {{"type":"file","path":"m.gguf","size":98362432,"oid":"def",
                  "lfs":{{"oid":"{sha}","size":98362432,"pointerSize":134}}}}]"#
        ))
        .unwrap();
        assert_eq!(
            f.find_lfs(&listing),
            Some((sha.to_ascii_lowercase(), 98362432))
        );
        let readme = HubFile::parse("https://huggingface.co/o/r/resolve/main/README.md").unwrap();
        assert_eq!(readme.find_lfs(&listing), None, "not an LFS file");
        let short: Vec<TreeEntry> =
            serde_json::from_str(r#"[{"path":"m.gguf","lfs":{"oid":"1234","size":1}}]"#).unwrap();
        assert_eq!(f.find_lfs(&short), None, "not a sha256");
    }
}
