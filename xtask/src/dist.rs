//! `cargo xtask dist [--out DIR] [--no-build]`: the app as a folder any static host serves
//! (nginx, GitHub Pages, an intranet file server). It holds the Trunk build (`dist/`), the
//! default model under `models/`, `_headers` (Netlify / Cloudflare Pages syntax) and
//! `nginx.conf` (a snippet) with the headers the app wants. Where a host cannot send them, the
//! app's service worker (`sw.js`) adds the cross-origin isolation headers itself.

use std::path::{Path, PathBuf};

use crate::{root, Result};

pub fn dist(args: &[String]) -> Result {
    let mut out = root().join("dist");
    let mut build = true;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--out" => out = PathBuf::from(it.next().ok_or("--out needs a folder")?),
            "--no-build" => build = false,
            other => {
                return Err(format!(
                    "dist: unknown argument `{other}` (usage: cargo xtask dist [--out DIR] [--no-build])"
                ))
            }
        }
    }
    if build {
        crate::serve::build_web()?;
    }
    let built = root().join("dist");
    if !built.join("index.html").exists() {
        return Err(format!(
            "{} has no index.html: build first",
            built.display()
        ));
    }
    let out = if out.is_relative() {
        std::env::current_dir()
            .map_err(|e| e.to_string())?
            .join(out)
    } else {
        out
    };
    if out != built {
        copy_tree(&built, &out)?;
    }
    crate::serve::place_default_model(&out)?;
    let csp = crate::serve::csp(&out);
    write(
        &out.join("_headers"),
        &format!(
            "# Headers for hosts that read a _headers file (Netlify, Cloudflare Pages). Without\n\
             # them the service worker (sw.js) adds cross-origin isolation after one reload.\n\
             /*\n  Cross-Origin-Opener-Policy: same-origin\n  Cross-Origin-Embedder-Policy: require-corp\n  \
             Cross-Origin-Resource-Policy: same-origin\n  Content-Security-Policy: {csp}\n\
             /sw.js\n  Cache-Control: no-cache\n"
        ),
    )?;
    write(
        &out.join("nginx.conf"),
        &format!(
            "# Include inside the `server {{ }}` block whose root is this folder.\n\
             add_header Cross-Origin-Opener-Policy \"same-origin\" always;\n\
             add_header Cross-Origin-Embedder-Policy \"require-corp\" always;\n\
             add_header Cross-Origin-Resource-Policy \"same-origin\" always;\n\
             add_header Content-Security-Policy \"{csp}\" always;\n\
             types {{ application/wasm wasm; application/manifest+json webmanifest; text/javascript js; }}\n"
        ),
    )?;
    eprintln!(
        "dist: {} (serve it with any static server, e.g. `python3 -m http.server -d {}`)",
        out.display(),
        out.display()
    );
    Ok(())
}

fn write(p: &Path, text: &str) -> Result {
    std::fs::write(p, text).map_err(|e| format!("{}: {e}", p.display()))
}

/// Copy `from` into `to` (created; files hard-linked when on the same disk, else copied).
fn copy_tree(from: &Path, to: &Path) -> Result {
    std::fs::create_dir_all(to).map_err(|e| format!("{}: {e}", to.display()))?;
    for entry in std::fs::read_dir(from).map_err(|e| format!("{}: {e}", from.display()))? {
        let entry = entry.map_err(|e| e.to_string())?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        if src.is_dir() {
            copy_tree(&src, &dst)?;
        } else {
            let _ = std::fs::remove_file(&dst);
            if std::fs::hard_link(&src, &dst).is_err() {
                std::fs::copy(&src, &dst).map_err(|e| format!("copy {}: {e}", src.display()))?;
            }
        }
    }
    Ok(())
}
