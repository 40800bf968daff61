//! `cargo xtask serve` and the browser tests: install the web toolchain (wasm32 target, trunk,
//! wasm-bindgen-cli, wasm-opt, and nightly with `rust-src` for the multi-threaded build), build
//! the app with Trunk into `dist/` plus the engine worker's multi-threaded and relaxed-SIMD builds
//! beside it (`web-ui-mt.js`, `web-ui-relaxed.js` and their `_bg.wasm`), copy the default model
//! next to it, and serve it with a small static
//! server that sends cross-origin isolation headers, a Content-Security-Policy limited to this origin and the catalog's model hosts, and honours
//! HTTP Range requests (download resume).

use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use crate::{models_dir, root, run, sha256_file, succeeds, Result};

/// Versions that must match Cargo.lock / TOOLCHAIN.md.
const TRUNK_VERSION: &str = "0.21.14";
/// The toolchain of the multi-threaded wasm build (`-Z build-std` needs nightly).
const NIGHTLY: &str = "nightly";
/// The multi-threaded build: atomics and a shared memory (imported, so the pool's Web Workers
/// instantiate the module on the same memory), up to 4 GiB as the single-threaded build, with
/// the thread-local storage symbols wasm-bindgen's thread setup uses exported. Its kernels use
/// relaxed SIMD's 8-bit dot product (`pmaddubsw` on x86); a browser without relaxed SIMD fails
/// to compile this module and `worker.js` runs the single-threaded (plain simd128) build.
const THREADED_RUSTFLAGS: &str = "-C target-feature=+atomics,+bulk-memory,+simd128,+relaxed-simd \
     -C link-arg=--shared-memory -C link-arg=--max-memory=4294967296 -C link-arg=--import-memory \
     -C link-arg=--export=__wasm_init_tls -C link-arg=--export=__tls_size \
     -C link-arg=--export=__tls_align -C link-arg=--export=__tls_base";
/// The default model, served from the app's own origin.
const DEFAULT_MODEL: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

fn cargo_bin(name: &str) -> PathBuf {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from(".cargo"));
    home.join("bin").join(name)
}

fn output(cmd: &mut Command) -> Option<String> {
    cmd.output().ok().filter(|o| o.status.success()).map(|o| {
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
    })
}

/// The `wasm-bindgen` version locked in Cargo.lock.
fn locked_wasm_bindgen() -> Result<String> {
    let lock = std::fs::read_to_string(root().join("Cargo.lock"))
        .map_err(|e| format!("Cargo.lock: {e}"))?;
    let mut lines = lock.lines();
    while let Some(l) = lines.next() {
        if l.trim() == "name = \"wasm-bindgen\"" {
            if let Some(v) = lines
                .next()
                .and_then(|v| v.trim().strip_prefix("version = \""))
            {
                return Ok(v.trim_end_matches('"').to_string());
            }
        }
    }
    Err("wasm-bindgen is not in Cargo.lock".into())
}

fn web_tests_dir() -> PathBuf {
    root().join("tests")
}

/// Install what building the app needs (each step skipped when already present).
pub fn setup_web_tools() -> Result {
    let installed =
        output(Command::new("rustup").args(["target", "list", "--installed"])).unwrap_or_default();
    if !installed.contains("wasm32-unknown-unknown") {
        run(Command::new("rustup").args(["target", "add", "wasm32-unknown-unknown"]))?;
    }
    let trunk_ok = output(Command::new(cargo_bin("trunk")).arg("--version"))
        .is_some_and(|v| v.contains(TRUNK_VERSION));
    if !trunk_ok {
        eprintln!("installing trunk {TRUNK_VERSION} (about 15 minutes on 2 cores, once)");
        run(Command::new("nice").args([
            "-n",
            "15",
            "cargo",
            "install",
            "trunk",
            "--version",
            TRUNK_VERSION,
            "--locked",
        ]))?;
    }
    let wb = locked_wasm_bindgen()?;
    let wb_ok = output(Command::new(cargo_bin("wasm-bindgen")).arg("--version"))
        .is_some_and(|v| v.contains(&wb));
    if !wb_ok {
        // Not --locked: the locked set wants a webpki-roots version this registry lacks.
        run(Command::new("nice").args([
            "-n",
            "15",
            "cargo",
            "install",
            "wasm-bindgen-cli",
            "--version",
            &wb,
        ]))?;
    }
    // Nightly, its std sources and wasm32 std, for the multi-threaded build.
    let nightly_ok = succeeds(Command::new("rustup").args(["run", NIGHTLY, "rustc", "-V"]));
    if !nightly_ok {
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            NIGHTLY,
            "--profile",
            "minimal",
        ]))?;
    }
    let components = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        NIGHTLY,
    ]))
    .unwrap_or_default();
    if !components.lines().any(|c| c.trim() == "rust-src") {
        run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", NIGHTLY]))?;
    }
    if !components.contains("rust-std-wasm32-unknown-unknown") {
        run(Command::new("rustup").args([
            "target",
            "add",
            "wasm32-unknown-unknown",
            "--toolchain",
            NIGHTLY,
        ]))?;
    }
    // wasm-opt (binaryen), the browser-test driver and axe-core from npm, into tests/node_modules.
    if !web_tests_dir().join("node_modules/.bin/wasm-opt").exists()
        || !web_tests_dir()
            .join("node_modules/playwright-core")
            .exists()
        || !web_tests_dir().join("node_modules/axe-core").exists()
    {
        run(Command::new("npm").current_dir(web_tests_dir()).args([
            "install",
            "--no-audit",
            "--no-fund",
        ]))?;
    }
    Ok(())
}

/// PATH with cargo's bin and the npm tools first (Trunk finds wasm-bindgen and wasm-opt there).
fn tool_path() -> std::ffi::OsString {
    let mut parts = vec![cargo_bin(""), web_tests_dir().join("node_modules/.bin")];
    if let Some(p) = std::env::var_os("PATH") {
        parts.extend(std::env::split_paths(&p));
    }
    std::env::join_paths(parts).unwrap_or_default()
}

/// Build the release bundle into `dist/` and put the default model next to it.
pub fn build_web() -> Result {
    setup_web_tools()?;
    crate::fetch_models()?;
    run(Command::new("nice")
        .current_dir(root())
        .args(["-n", "15"])
        .arg(cargo_bin("trunk"))
        .args(["build", "--release"])
        .env("PATH", tool_path())
        .env("CARGO_TARGET_DIR", root().join("target-ui"))
        // The CPU engine's simd128 kernels.
        .env("RUSTFLAGS", "-C target-feature=+simd128"))?;
    let dist = root().join("dist");
    build_engine_worker(&dist, EngineBuild::Threaded)?;
    build_engine_worker(&dist, EngineBuild::Relaxed)?;
    place_default_model(&dist)?;
    for name in [
        "web-ui_bg.wasm",
        "web-ui-mt_bg.wasm",
        "web-ui-relaxed_bg.wasm",
    ] {
        if let Ok(m) = std::fs::metadata(dist.join(name)) {
            let gz = gzip_len(&dist.join(name)).unwrap_or(0);
            eprintln!("{name}: {} bytes ({gz} gzipped)", m.len());
        }
    }
    Ok(())
}

/// The engine worker's own builds beside Trunk's (which has the UI and plain simd128): the same
/// crate without its `ui` feature (the engine worker alone), bound with the locked wasm-bindgen
/// and shrunk with wasm-opt as Trunk does the other. `worker.js` loads the first that runs here.
#[derive(Clone, Copy)]
enum EngineBuild {
    /// `dist/web-ui-mt{.js,_bg.wasm}`: atomics, a shared memory and relaxed SIMD, std rebuilt for
    /// it (`-Z build-std`, nightly); for a cross-origin isolated page (the engine's pool threads
    /// then run on Web Workers). Cold: ~3 min 50 s of cargo plus ~1 min of wasm-bindgen and
    /// wasm-opt on 2 cores.
    Threaded,
    /// `dist/web-ui-relaxed{.js,_bg.wasm}`: single-threaded with relaxed SIMD (stable); for a page
    /// that is not isolated (the widget on a host page without COOP/COEP).
    Relaxed,
}

impl EngineBuild {
    fn name(self) -> &'static str {
        match self {
            EngineBuild::Threaded => "web-ui-mt",
            EngineBuild::Relaxed => "web-ui-relaxed",
        }
    }
}

fn build_engine_worker(dist: &Path, build: EngineBuild) -> Result {
    let name = build.name();
    let target = root().join(match build {
        EngineBuild::Threaded => "target-ui-mt",
        EngineBuild::Relaxed => "target-ui-relaxed",
    });
    let started = std::time::Instant::now();
    let mut cargo = Command::new("nice");
    cargo.current_dir(root()).args(["-n", "15"]);
    match build {
        EngineBuild::Threaded => {
            cargo
                .args(["rustup", "run", NIGHTLY, "cargo", "build", "--release"])
                .args(["-Z", "build-std=std,panic_abort"])
                .env(
                    "RUSTFLAGS",
                    THREADED_RUSTFLAGS
                        .split_whitespace()
                        .collect::<Vec<_>>()
                        .join(" "),
                )
                // Set by the stable cargo that runs xtask; the nightly build must pick its own.
                .env_remove("RUSTC")
                .env_remove("RUSTDOC")
                .env_remove("RUSTUP_TOOLCHAIN")
                .env_remove("CARGO");
        }
        EngineBuild::Relaxed => {
            cargo
                .arg(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
                .args(["build", "--release"])
                .env("RUSTFLAGS", "-C target-feature=+simd128,+relaxed-simd");
        }
    }
    cargo
        .args([
            "-p",
            "web-ui",
            "--bin",
            "web-ui",
            "--target",
            "wasm32-unknown-unknown",
        ])
        // The engine worker alone: no Leptos or Markdown crates to compile (the page always
        // runs Trunk's build).
        .arg("--no-default-features")
        .env("CARGO_TARGET_DIR", &target)
        // No line tables: wasm-bindgen drops them anyway, and generating them costs build time.
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false");
    run(&mut cargo)?;
    let wasm = target.join("wasm32-unknown-unknown/release/web-ui.wasm");
    run(Command::new(cargo_bin("wasm-bindgen"))
        .args([
            "--target",
            "web",
            "--no-typescript",
            "--out-name",
            name,
            "--out-dir",
        ])
        .arg(dist)
        .arg(&wasm))?;
    let bg = dist.join(format!("{name}_bg.wasm"));
    let opt = dist.join(format!("{name}_bg.opt.wasm"));
    let mut wasm_opt = Command::new(web_tests_dir().join("node_modules/.bin/wasm-opt"));
    wasm_opt.args([
        "-Oz",
        "--enable-simd",
        "--enable-relaxed-simd",
        "--enable-bulk-memory",
    ]);
    if let EngineBuild::Threaded = build {
        wasm_opt.arg("--enable-threads");
    }
    run(wasm_opt
        .args([
            "--enable-sign-ext",
            "--enable-mutable-globals",
            "--enable-nontrapping-float-to-int",
        ])
        .args(["--enable-reference-types", "--enable-multivalue"])
        .arg(&bg)
        .arg("-o")
        .arg(&opt))?;
    std::fs::rename(&opt, &bg).map_err(|e| format!("{}: {e}", bg.display()))?;
    eprintln!("{name} build: {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Put the default model under `dir/models/` (a hard link when possible, else a copy).
pub fn place_default_model(dir: &Path) -> Result {
    let models = dir.join("models");
    std::fs::create_dir_all(&models).map_err(|e| format!("{}: {e}", models.display()))?;
    let src = models_dir().join(DEFAULT_MODEL);
    let dst = models.join(DEFAULT_MODEL);
    let same = std::fs::metadata(&dst).ok().map(|m| m.len())
        == std::fs::metadata(&src).ok().map(|m| m.len());
    if !same {
        let _ = std::fs::remove_file(&dst);
        if std::fs::hard_link(&src, &dst).is_err() {
            std::fs::copy(&src, &dst).map_err(|e| format!("copy {}: {e}", src.display()))?;
        }
    }
    Ok(())
}

fn gzip_len(p: &Path) -> Option<u64> {
    let o = Command::new("gzip")
        .args(["-9", "-c"])
        .arg(p)
        .output()
        .ok()?;
    Some(o.stdout.len() as u64)
}

/// `cargo xtask serve [--port N] [--no-build] [--test-hooks] [--embed-origins URL,URL]`: build,
/// then serve on 127.0.0.1 until interrupted. `--embed-origins` adds host origins allowed to embed
/// the widget (to those of `public/embed.json`). `--test-hooks` serves as the browser tests see it (request log at
/// `/__log`, `?cut=N`, `?slow=N`, `?isolation=off`, a Hub stand-in), for running `node tests/e2e.mjs` by hand with
/// `SLM_URL`.
pub fn serve(args: &[String]) -> Result {
    let mut port: u16 = 8080;
    let mut hooks = false;
    let mut embed: Vec<String> = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--port" => {
                port = it
                    .next()
                    .and_then(|p| p.parse().ok())
                    .ok_or("--port needs a number from 1 to 65535")?
            }
            "--no-build" => {}
            "--test-hooks" => hooks = true,
            "--embed-origins" => {
                let list = it.next().ok_or("--embed-origins needs URL,URL (origins such as https://wiki.example.com)")?;
                embed.extend(list.split(',').filter(|o| !o.trim().is_empty()).map(String::from));
            }
            other => return Err(format!("serve: unknown argument `{other}` (usage: cargo xtask serve [--port N] [--no-build] [--test-hooks] [--embed-origins URL,URL])")),
        }
    }
    if !args.iter().any(|a| a == "--no-build") {
        build_web()?;
    }
    let server = Server::new(root().join("dist"), hooks)?.with_embed_origins(&embed)?;
    let listener = TcpListener::bind(("127.0.0.1", port))
        .map_err(|e| format!("cannot listen on 127.0.0.1:{port}: {e}"))?;
    eprintln!(
        "serving {} on http://127.0.0.1:{port}/",
        server.dir.display()
    );
    server.run(listener);
    Ok(())
}

/// The static server.
#[derive(Clone)]
pub struct Server {
    dir: PathBuf,
    csp: String,
    /// Test mode: record request lines (served at `/__log`), honour `?cut=N` (drop a download
    /// after N bytes), `?slow=N` (N bytes/s) and `?isolation=off` (serve that response without COOP/COEP, as an
    /// embedding page that is not cross-origin isolated would be), and `/__deploy` (a new
    /// version of `sw.js` from then on).
    hooks: bool,
    log: Arc<Mutex<Vec<String>>>,
    /// Test mode: deploys simulated by `/__deploy` (each changes the bytes of `sw.js`, as a new
    /// build does, so the browser's update check finds a new service worker).
    deploys: Arc<std::sync::atomic::AtomicU64>,
    /// Host origins allowed to embed the widget (`embed.json` plus `--embed-origins`): the CSP
    /// `frame-ancestors` of `embed.html`, and the list `/embed.json` serves.
    embed_origins: Vec<String>,
}

/// Hosts in the catalog's model URLs, for `connect-src`.
fn model_hosts(dir: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(dir.join("models.json")).unwrap_or_default();
    let mut hosts: Vec<String> = Vec::new();
    for part in text.split("\"url\"").skip(1) {
        let Some(start) = part.find("https://") else {
            continue;
        };
        let rest = &part[start + 8..];
        let host: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '.' || *c == '-')
            .collect();
        if !host.is_empty() && !part[..start].contains('\n') {
            let origin = format!("https://{host}");
            if !hosts.contains(&origin) {
                hosts.push(origin);
            }
        }
    }
    // Hugging Face redirects file downloads to its CDN hosts.
    if hosts.iter().any(|h| h.ends_with("huggingface.co")) {
        for h in ["https://*.huggingface.co", "https://*.hf.co"] {
            hosts.push(h.to_string());
        }
    }
    hosts
}

/// The Content-Security-Policy for the app in `dir`: only the app's own scripts, and network
/// access to the app's origin and the catalog's model hosts.
pub fn csp(dir: &Path) -> String {
    let connect = std::iter::once("'self'".to_string())
        .chain(model_hosts(dir))
        .collect::<Vec<_>>()
        .join(" ");
    format!(
        "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; worker-src 'self'; \
         style-src 'self'; img-src 'self' data:; connect-src {connect}; object-src 'none'; \
         base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
}

impl Server {
    pub fn new(dir: PathBuf, hooks: bool) -> Result<Self> {
        if !dir.join("index.html").exists() {
            return Err(format!("{} has no index.html: build first", dir.display()));
        }
        let csp = csp(&dir);
        let listed = std::fs::read_to_string(dir.join("embed.json")).unwrap_or_default();
        let embed_origins = crate::embed::origins_from_json(&listed)?;
        Ok(Server {
            dir,
            csp,
            hooks,
            log: Arc::new(Mutex::new(Vec::new())),
            deploys: Arc::default(),
            embed_origins,
        })
    }

    /// Also allow `extra` host origins to embed the widget (each checked).
    pub fn with_embed_origins(mut self, extra: &[String]) -> Result<Self> {
        for o in extra {
            let o = crate::embed::check_origin(o)?;
            if !self.embed_origins.contains(&o) {
                self.embed_origins.push(o);
            }
        }
        Ok(self)
    }

    /// Accept connections forever, one thread each.
    pub fn run(self, listener: TcpListener) {
        for stream in listener.incoming().flatten() {
            let s = self.clone();
            std::thread::spawn(move || {
                let _ = s.handle(stream);
            });
        }
    }

    fn handle(&self, mut stream: TcpStream) -> std::io::Result<()> {
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut range: Option<String> = None;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.trim().eq_ignore_ascii_case("range") {
                    range = Some(v.trim().to_string());
                }
            }
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("");
        let target = parts.next().unwrap_or("/");
        if self.hooks && !target.starts_with("/__log") {
            if let Ok(mut l) = self.log.lock() {
                l.push(format!(
                    "{method} {target} range={}",
                    range.as_deref().unwrap_or("-")
                ));
            }
        }
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        if method != "GET" && method != "HEAD" {
            return self.respond(&mut stream, 405, "text/plain", b"method not allowed", &[]);
        }
        if self.hooks && path == "/__log" {
            let body = self.log.lock().map(|l| l.join("\n")).unwrap_or_default();
            return self.respond(&mut stream, 200, "text/plain", body.as_bytes(), &[]);
        }
        if self.hooks && path == "/__deploy" {
            use std::sync::atomic::Ordering;
            let n = self.deploys.fetch_add(1, Ordering::SeqCst) + 1;
            return self.respond(
                &mut stream,
                200,
                "text/plain",
                n.to_string().as_bytes(),
                &[],
            );
        }
        if self.hooks && path == "/sw.js" {
            let n = self.deploys.load(std::sync::atomic::Ordering::SeqCst);
            if n > 0 {
                let mut body = std::fs::read(self.dir.join("sw.js"))?;
                body.extend_from_slice(format!("\n// test deploy {n}\n").as_bytes());
                return self.respond(&mut stream, 200, "text/javascript", &body, &[]);
            }
        }
        if self.hooks {
            if let Some(listing) = self.hub_listing(path) {
                let body = listing?;
                return self.respond(&mut stream, 200, "application/json", body.as_bytes(), &[]);
            }
        }
        if path == "/embed.json" {
            let body = crate::embed::embed_json(&self.embed_origins);
            return self.respond(
                &mut stream,
                200,
                "application/json",
                body.as_bytes(),
                &crate::embed::PUBLIC,
            );
        }
        let hub_path = if self.hooks { hub_file(path) } else { None };
        let path = hub_path.as_deref().unwrap_or(path);
        let Some(file) = self.resolve(path) else {
            return self.respond(&mut stream, 404, "text/plain", b"not found", &[]);
        };
        let mut f = std::fs::File::open(&file)?;
        let len = f.metadata()?.len();
        let ctype = content_type(&file);
        let (status, start, end) = match range.as_deref().map(|r| parse_range(r, len)) {
            None => (200, 0, len),
            Some(Some((a, b))) => (206, a, b),
            Some(None) => {
                let cr = format!("bytes */{len}");
                return self.respond(
                    &mut stream,
                    416,
                    "text/plain",
                    b"range not satisfiable",
                    &[("Content-Range", &cr)],
                );
            }
        };
        let mut extra: Vec<(&str, String)> = vec![("Accept-Ranges", "bytes".into())];
        // The widget: embed.js is loaded by host pages (cross-origin), embed.html may be framed
        // by the allowed origins only.
        match path {
            "/embed.js" => extra.extend(
                crate::embed::PUBLIC
                    .iter()
                    .map(|(k, v)| (*k, v.to_string())),
            ),
            "/embed.html" => extra.push((
                "Content-Security-Policy",
                crate::embed::frame_csp(&self.csp, &self.embed_origins),
            )),
            _ => {}
        }
        if status == 206 {
            extra.push(("Content-Range", format!("bytes {start}-{}/{len}", end - 1)));
        }
        let extra_ref: Vec<(&str, &str)> = extra.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let isolate = !(self.hooks && query.split('&').any(|kv| kv == "isolation=off"));
        self.head(&mut stream, status, ctype, end - start, &extra_ref, isolate)?;
        if method == "HEAD" {
            return Ok(());
        }
        // Test hook: `?cut=N` drops the connection after N bytes of a request without Range.
        let cut = if self.hooks && range.is_none() {
            query
                .split('&')
                .find_map(|kv| kv.strip_prefix("cut="))
                .and_then(|n| n.parse::<u64>().ok())
        } else {
            None
        };
        // Test hook: `?slow=N` paces the body at N bytes/s (time to press Cancel).
        let pace = if self.hooks {
            query
                .split('&')
                .find_map(|kv| kv.strip_prefix("slow="))
                .and_then(|n| n.parse::<u64>().ok())
                .filter(|&n| n > 0)
        } else {
            None
        };
        f.seek(SeekFrom::Start(start))?;
        let mut left = end - start;
        if let Some(c) = cut {
            left = left.min(c);
        }
        let mut buf = vec![0u8; 256 << 10];
        while left > 0 {
            let want = left.min(buf.len() as u64) as usize;
            let n = f.read(&mut buf[..want])?;
            if n == 0 {
                break;
            }
            stream.write_all(&buf[..n])?;
            left -= n as u64;
            if let Some(bps) = pace {
                std::thread::sleep(std::time::Duration::from_secs_f64(n as f64 / bps as f64));
            }
        }
        if cut.is_some() {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
        Ok(())
    }

    /// Test hook, a stand-in for the Hugging Face Hub API: `/api/models/{owner}/{repo}/tree/{rev}`
    /// lists the `.gguf` files in `models/` with their Git LFS sha256 (all zeros when the repo's
    /// name starts with `Bad`, to test the rejection). `None` for other paths.
    fn hub_listing(&self, path: &str) -> Option<std::io::Result<String>> {
        let rest = path.strip_prefix("/api/models/")?;
        let [_owner, repo, "tree", _rev] = rest.split('/').collect::<Vec<_>>()[..] else {
            return None;
        };
        let bad = repo.starts_with("Bad");
        Some((|| {
            let mut entries = Vec::new();
            for e in std::fs::read_dir(self.dir.join("models"))? {
                let p = e?.path();
                if p.extension().is_none_or(|x| x != "gguf") {
                    continue;
                }
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                let size = p.metadata()?.len();
                let sha = if bad {
                    "0".repeat(64)
                } else {
                    sha256_file(&p).map_err(std::io::Error::other)?
                };
                entries.push(format!(
                    r#"{{"type":"file","path":"{name}","size":{size},"oid":"{}","lfs":{{"oid":"{sha}","size":{size},"pointerSize":134}}}}"#,
                    "0".repeat(40)
                ));
            }
            Ok(format!("[{}]", entries.join(",")))
        })())
    }

    fn resolve(&self, path: &str) -> Option<PathBuf> {
        let path = percent_decode(path)?;
        let rel = path.trim_start_matches('/');
        if rel
            .split('/')
            .any(|c| c == ".." || c.starts_with('.') && !c.is_empty())
            || rel.contains('\\')
        {
            return None;
        }
        let mut p = self.dir.join(rel);
        if p.is_dir() {
            p = p.join("index.html");
        }
        p.is_file().then_some(p)
    }

    fn head(
        &self,
        s: &mut TcpStream,
        status: u16,
        ctype: &str,
        len: u64,
        extra: &[(&str, &str)],
        isolate: bool,
    ) -> std::io::Result<()> {
        let reason = match status {
            200 => "OK",
            206 => "Partial Content",
            404 => "Not Found",
            405 => "Method Not Allowed",
            416 => "Range Not Satisfiable",
            _ => "Error",
        };
        let isolation = if isolate {
            "Cross-Origin-Opener-Policy: same-origin\r\nCross-Origin-Embedder-Policy: require-corp\r\n"
        } else {
            ""
        };
        // `extra` may replace the default CORP and CSP (the widget's files).
        let has = |k: &str| extra.iter().any(|(n, _)| n.eq_ignore_ascii_case(k));
        let corp = if has("Cross-Origin-Resource-Policy") {
            String::new()
        } else {
            "Cross-Origin-Resource-Policy: same-origin\r\n".to_string()
        };
        let csp = if has("Content-Security-Policy") {
            String::new()
        } else {
            format!("Content-Security-Policy: {}\r\n", self.csp)
        };
        let mut h = format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {len}\r\n\
             {isolation}{corp}{csp}\
             X-Content-Type-Options: nosniff\r\nReferrer-Policy: no-referrer\r\nCache-Control: no-cache\r\n\
             Connection: close\r\n"
        );
        for (k, v) in extra {
            h.push_str(&format!("{k}: {v}\r\n"));
        }
        h.push_str("\r\n");
        s.write_all(h.as_bytes())
    }

    fn respond(
        &self,
        s: &mut TcpStream,
        status: u16,
        ctype: &str,
        body: &[u8],
        extra: &[(&str, &str)],
    ) -> std::io::Result<()> {
        self.head(s, status, ctype, body.len() as u64, extra, true)?;
        s.write_all(body)
    }
}

/// `bytes=a-b`, `bytes=a-`, `bytes=-n` → half-open `[start, end)`; `None` when unsatisfiable.
fn parse_range(r: &str, len: u64) -> Option<(u64, u64)> {
    let spec = r.strip_prefix("bytes=")?.split(',').next()?.trim();
    let (a, b) = spec.split_once('-')?;
    let (start, end) = if a.is_empty() {
        let n: u64 = b.parse().ok()?;
        (len.saturating_sub(n), len)
    } else {
        let start: u64 = a.parse().ok()?;
        let end = if b.is_empty() {
            len
        } else {
            b.parse::<u64>().ok()?.saturating_add(1).min(len)
        };
        (start, end)
    };
    (start < end && start < len).then_some((start, end))
}

/// Test hook: a Hub download path `/{owner}/{repo}/resolve/{rev}/{file}` is served from
/// `/models/{file}`.
fn hub_file(path: &str) -> Option<String> {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match parts[..] {
        [_owner, _repo, "resolve", _rev, file] if !file.is_empty() => {
            Some(format!("/models/{file}"))
        }
        _ => None,
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(h, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn content_type(p: &Path) -> &'static str {
    match p.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "wasm" => "application/wasm",
        "css" => "text/css; charset=utf-8",
        "json" => "application/json",
        "webmanifest" => "application/manifest+json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        _ => "application/octet-stream",
    }
}

/// The browser tests (`tests/e2e.mjs`): headless Chromium from Debian driven by playwright-core
/// against a test-mode server. Installs chromium and the npm packages when missing.
pub fn browser_tests() -> Result {
    if !Path::new("/usr/lib/chromium/chromium").exists() {
        run(Command::new("apt-get").args(["update", "-qq"]))?;
        run(Command::new("apt-get").args(["install", "-y", "-qq", "chromium", "chromium-driver"]))?;
    }
    build_web()?;
    let expect = expected_reply_prefix("SmolLM2-135M-Instruct.Q4_1.gguf")?;
    let expect_gemma3 = expected_reply_prefix("gemma-3-270m-q4_k_m.gguf")?;
    // The widget flows serve host pages from a second origin (`http://localhost:HOST_PORT`, no
    // COOP/COEP), which the app allows to embed it; `http://127.0.0.1:HOST_PORT` stays refused.
    let host_port = TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    let server = Server::new(root().join("dist"), true)?
        .with_embed_origins(&[format!("http://localhost:{host_port}")])?;
    let listener = TcpListener::bind(("127.0.0.1", 0)).map_err(|e| e.to_string())?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    std::thread::spawn(move || server.run(listener));
    let url = format!("http://127.0.0.1:{port}/");
    // Every flow that needs no WebGPU, on the wasm SIMD CPU engine (main flow with the WebGPU
    // flag on, others without): main, resume, checksum, xss, regenerate, stop, conversation,
    // hub, cancel, import, gemma3 (no WebGPU: auto takes the CPU), quota, widget, api.
    run(Command::new("node")
        .current_dir(web_tests_dir())
        .arg("e2e.mjs")
        .env("SLM_URL", &url)
        .env("SLM_HOST_PORT", host_port.to_string())
        .env("SLM_MODELS_DIR", models_dir())
        .env("SLM_E2E_EXPECT_PREFIX", &expect)
        .env("SLM_E2E_EXPECT_PREFIX_GEMMA3", &expect_gemma3)
        .env("SLM_E2E_SCREENSHOT", root().join("target/screenshot.png")))?;
    // On WebGPU (Chromium's SwiftShader adapter: slow, a few tokens): the main flow again,
    // Gemma 3 on the GPU, and a lost GPU device moving the conversation to the CPU.
    run(Command::new("node")
        .current_dir(web_tests_dir())
        .arg("e2e.mjs")
        .env("SLM_URL", &url)
        .env("SLM_MODELS_DIR", models_dir())
        .env("SLM_E2E_EXPECT_PREFIX", &expect)
        .env("SLM_E2E_EXPECT_PREFIX_GEMMA3", &expect_gemma3)
        .env("SLM_E2E_ONLY", "main,gemma3,gpulost")
        .env("SLM_E2E_BACKEND", "gpu"))
}

/// `cargo xtask bench --browser [--wllama]`: each model at each thread count through
/// `tests/bench.mjs` (headless Chromium, the app's worker, a fresh profile each) against a
/// test-mode server; with `--wllama`, `tests/bench-wllama.mjs` right after on the same file and
/// thread count, then a line with our figures over theirs.
pub fn bench_browser(models: &[PathBuf], threads: &[String], build: bool, wllama: bool) -> Result {
    if build {
        build_web()?;
    }
    let server = Server::new(root().join("dist"), true)?;
    let listener = TcpListener::bind(("127.0.0.1", 0)).map_err(|e| e.to_string())?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    std::thread::spawn(move || server.run(listener));
    let bench = |script: &str, model: &Path, t: &str| -> Result<serde_json::Value> {
        let out = Command::new("node")
            .current_dir(web_tests_dir())
            .arg(script)
            .env("SLM_URL", format!("http://127.0.0.1:{port}/"))
            .env("SLM_BENCH_MODEL", model)
            .env("SLM_BENCH_THREADS", t)
            .stderr(std::process::Stdio::inherit())
            .output()
            .map_err(|e| format!("node {script}: {e}"))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text
            .lines()
            .rev()
            .find(|l| l.starts_with('{'))
            .unwrap_or("");
        if !out.status.success() || line.is_empty() {
            return Err(format!("node {script} failed: {text}"));
        }
        println!("{line}");
        serde_json::from_str(line).map_err(|e| format!("{script} printed {line}: {e}"))
    };
    for m in models {
        let m = std::fs::canonicalize(m).map_err(|e| format!("{}: {e}", m.display()))?;
        for t in threads {
            let ours = bench("bench.mjs", &m, t)?;
            if !wllama {
                continue;
            }
            let theirs = bench("bench-wllama.mjs", &m, t)?;
            let ratio = |k: &str| {
                let (a, b) = (ours[k].as_f64(), theirs[k].as_f64());
                a.zip(b)
                    .filter(|(_, b)| *b > 0.0)
                    .map(|(a, b)| (a / b * 100.0).round() / 100.0)
            };
            println!(
                "{}",
                serde_json::json!({
                    "model": ours["model"],
                    "threads": t.parse::<usize>().unwrap_or(0),
                    "prefill_vs_wllama": ratio("prefill_tok_s"),
                    "decode_vs_wllama": ratio("decode_tok_s"),
                })
            );
        }
    }
    Ok(())
}

/// Characters of the native greedy reply the browser's reply must start with. The sky question
/// meets its first near-tie at character 42 (" shade" 21.51 vs "," 21.26 after "…a deep"), where
/// wasm simd128 and AVX2 summation order may legitimately pick differently.
const EXPECT_PREFIX_CHARS: usize = 40;

/// What `slm generate` prints at temperature 0 for the browser test's question, with the app's
/// default system prompt, cut to [`EXPECT_PREFIX_CHARS`].
fn expected_reply_prefix(model_file: &str) -> Result<String> {
    let model = crate::models_dir().join(model_file);
    let messages = r#"[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"What color is the sky on a clear day?"}]"#;
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(root())
        .args([
            "run",
            "--quiet",
            "--release",
            "--bin",
            "slm",
            "--",
            "generate",
            "--temperature",
            "0",
            "--max-tokens",
            "24",
            "--messages",
            messages,
            "--model",
        ])
        .arg(&model)
        .output()
        .map_err(|e| format!("slm generate: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "slm generate failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .trim()
        .chars()
        .take(EXPECT_PREFIX_CHARS)
        .collect())
}

/// Whether the browser tests can run here (Chromium present or installable); used by callers
/// that want to skip them.
#[allow(dead_code)]
pub fn browser_available() -> bool {
    Path::new("/usr/lib/chromium/chromium").exists()
        || succeeds(Command::new("apt-cache").args(["show", "chromium"]))
}

#[cfg(test)]
mod tests {
    use super::parse_range;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-", 10), Some((0, 10)));
        assert_eq!(parse_range("bytes=2-4", 10), Some((2, 5)));
        assert_eq!(parse_range("bytes=-3", 10), Some((7, 10)));
        assert_eq!(parse_range("bytes=10-", 10), None);
        assert_eq!(parse_range("bytes=5-100", 10), Some((5, 10)));
        assert_eq!(parse_range("items=1-2", 10), None);
    }
}
