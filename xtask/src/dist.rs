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
    // The widget's frame may be embedded by the origins of the deployed `embed.json`.
    let listed = std::fs::read_to_string(out.join("embed.json")).unwrap_or_default();
    let origins = crate::embed::origins_from_json(&listed)?;
    let embed_csp = crate::embed::frame_csp(&csp, &origins);
    write(&out.join("_headers"), &headers_file(&csp, &embed_csp))?;
    write(&out.join("nginx.conf"), &nginx_conf(&csp, &embed_csp))?;
    eprintln!(
        "dist: {} (serve it with any static server, e.g. `python3 -m http.server -d {}`)",
        out.display(),
        out.display()
    );
    Ok(())
}

/// `_headers` (Netlify / Cloudflare Pages): isolation everywhere; the app's CSP on its page and
/// the widget's (`frame-ancestors` = the allowed origins) on `embed.html`; `embed.js` and
/// `embed.json` readable from host pages. No header is set by two rules (those hosts would join
/// the values).
pub fn headers_file(csp: &str, embed_csp: &str) -> String {
    let public: String = crate::embed::PUBLIC
        .iter()
        .map(|(k, v)| format!("  {k}: {v}\n"))
        .collect();
    format!(
        "# Headers for hosts that read a _headers file (Netlify, Cloudflare Pages). Without\n\
         # them the service worker (sw.js) adds cross-origin isolation after one reload, and the\n\
         # widget (embed.html) cannot be framed by the origins of embed.json.\n\
         /*\n  Cross-Origin-Opener-Policy: same-origin\n  Cross-Origin-Embedder-Policy: require-corp\n\
         /\n  Content-Security-Policy: {csp}\n\
         /index.html\n  Content-Security-Policy: {csp}\n\
         /embed.html\n  Content-Security-Policy: {embed_csp}\n\
         /embed.js\n{public}\
         /embed.json\n{public}\
         /sw.js\n  Cache-Control: no-cache\n"
    )
}

/// An nginx snippet with the same headers (`add_header` in a `location` replaces the server's,
/// so each location repeats what it keeps).
pub fn nginx_conf(csp: &str, embed_csp: &str) -> String {
    let isolation = "add_header Cross-Origin-Opener-Policy \"same-origin\" always;\n    \
                     add_header Cross-Origin-Embedder-Policy \"require-corp\" always;\n    ";
    let public: String = crate::embed::PUBLIC
        .iter()
        .map(|(k, v)| format!("add_header {k} \"{v}\" always;\n    "))
        .collect();
    format!(
        "# Include inside the `server {{ }}` block whose root is this folder.\n\
         add_header Cross-Origin-Opener-Policy \"same-origin\" always;\n\
         add_header Cross-Origin-Embedder-Policy \"require-corp\" always;\n\
         add_header Cross-Origin-Resource-Policy \"same-origin\" always;\n\
         add_header Content-Security-Policy \"{csp}\" always;\n\
         # The widget's frame: only the origins of embed.json may embed it.\n\
         location = /embed.html {{\n    {isolation}add_header Content-Security-Policy \"{embed_csp}\" always;\n}}\n\
         # Loaded by host pages on other origins.\n\
         location ~ ^/embed\\.(js|json)$ {{\n    {isolation}{}\n}}\n\
         location = /sw.js {{\n    {isolation}add_header Cache-Control \"no-cache\" always;\n}}\n\
         types {{ text/html html; application/wasm wasm; application/json json; application/manifest+json webmanifest; text/javascript js; text/css css; image/svg+xml svg; }}\n",
        public.trim_end()
    )
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `_headers` rules as (path, [(name, value)]).
    fn rules(text: &str) -> Vec<(String, Vec<(String, String)>)> {
        let mut out: Vec<(String, Vec<(String, String)>)> = Vec::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        {
            if let Some(h) = line.strip_prefix("  ") {
                let (k, v) = h.split_once(": ").expect("a header line");
                out.last_mut()
                    .expect("a rule first")
                    .1
                    .push((k.into(), v.into()));
            } else {
                out.push((line.into(), Vec::new()));
            }
        }
        out
    }

    #[test]
    fn headers_let_the_allowed_origins_frame_the_widget() {
        let csp = "default-src 'self'; frame-ancestors 'none'";
        let embed = crate::embed::frame_csp(csp, &["https://wiki.example.com".to_string()]);
        let r = rules(&headers_file(csp, &embed));
        let get = |path: &str, name: &str| -> Vec<String> {
            // Every rule that matches `path` (Netlify's `/*` matches all), as the host joins them.
            r.iter()
                .filter(|(p, _)| p == path || p == "/*")
                .flat_map(|(_, hs)| hs.iter().filter(|(k, _)| k == name).map(|(_, v)| v.clone()))
                .collect()
        };
        assert_eq!(
            get("/embed.html", "Content-Security-Policy"),
            std::slice::from_ref(&embed)
        );
        assert!(
            embed.contains("frame-ancestors 'self' https://wiki.example.com"),
            "{embed}"
        );
        assert_eq!(get("/index.html", "Content-Security-Policy"), [csp]);
        assert_eq!(get("/", "Content-Security-Policy"), [csp]);
        assert_eq!(
            get("/embed.js", "Cross-Origin-Resource-Policy"),
            ["cross-origin"]
        );
        assert_eq!(get("/embed.json", "Access-Control-Allow-Origin"), ["*"]);
        assert_eq!(
            get("/app.wasm", "Cross-Origin-Embedder-Policy"),
            ["require-corp"]
        );
        for (path, _) in &r {
            for name in [
                "Content-Security-Policy",
                "Cross-Origin-Resource-Policy",
                "Cross-Origin-Embedder-Policy",
            ] {
                assert!(get(path, name).len() <= 1, "{name} set twice for {path}");
            }
        }
    }

    #[test]
    fn nginx_locations_keep_isolation_and_set_the_widget_csp() {
        let csp = "default-src 'self'; frame-ancestors 'none'";
        let embed = crate::embed::frame_csp(csp, &["https://wiki.example.com".to_string()]);
        let conf = nginx_conf(csp, &embed);
        let block = |start: &str| -> String {
            let i = conf.find(start).expect(start);
            conf[i..i + conf[i..].find('}').unwrap()].to_string()
        };
        let frame = block("location = /embed.html");
        assert!(
            frame.contains(&embed) && frame.contains("require-corp"),
            "{frame}"
        );
        let public = block("location ~ ^/embed");
        assert!(
            public.contains("\"cross-origin\"")
                && public.contains("Access-Control-Allow-Origin \"*\"")
        );
        assert!(public.contains("same-origin"), "COOP kept");
        assert_eq!(conf.matches("{").count(), conf.matches("}").count());
    }
}
