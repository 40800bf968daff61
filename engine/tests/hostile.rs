//! Model files and command lines an attacker would craft (`tools/hostile_models.py` writes them
//! from the SmolLM2 test model; none is committed): each must end within 10 s under a bounded
//! peak RSS (300 MB; 100 MB for the metadata-array bombs), with exit code 2 and exactly one
//! line on stderr naming the problem — or, where the file is acceptable (an out-of-range
//! special-token id, the explicit template fallback), run to the end.
//!
//! Peak RSS and wall time come from `/usr/bin/time` (Debian's `time`, installed by
//! `cargo xtask test`).
mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const TIME_LIMIT: Duration = Duration::from_secs(10);

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    secs: f64,
    rss_mb: f64,
}

/// Run `slm` under `/usr/bin/time`, killed past [`TIME_LIMIT`].
fn run_measured(args: &[std::ffi::OsString], tag: &str, dir: &Path) -> Run {
    let time_out = dir.join(format!("{tag}.time"));
    let mut child = Command::new("/usr/bin/time")
        .arg("-f")
        .arg("%M")
        .arg("-o")
        .arg(&time_out)
        .arg(env!("CARGO_BIN_EXE_slm"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run /usr/bin/time (apt-get install time)");
    let t0 = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if t0.elapsed() > TIME_LIMIT {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let out = child.wait_with_output().unwrap();
    let secs = t0.elapsed().as_secs_f64();
    // `time` runs slm as its child and exits with its status.
    let rss_kb: f64 = std::fs::read_to_string(&time_out)
        .ok()
        .and_then(|s| s.lines().last().and_then(|l| l.trim().parse().ok()))
        .unwrap_or(f64::INFINITY);
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        secs,
        rss_mb: rss_kb / 1024.0,
    }
}

#[derive(serde::Deserialize)]
struct Case {
    name: String,
    args: Vec<String>,
    code: i32,
    needle: String,
    max_rss_mb: f64,
}

fn out_dir() -> PathBuf {
    let d = repo_root()
        .join("target")
        .join(format!("hostile-models-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Check one run against its expectation; returns a failure description.
fn check(name: &str, r: &Run, code: i32, needle: &str, max_rss_mb: f64) -> Option<String> {
    let lines: Vec<&str> = r.stderr.lines().collect();
    let mut bad = vec![];
    if r.code != Some(code) {
        bad.push(format!("exit {:?}, want {code}", r.code));
    }
    if code == 2 && lines.len() != 1 {
        bad.push(format!("{} stderr lines, want 1", lines.len()));
    }
    if !r.stderr.to_lowercase().contains(&needle.to_lowercase()) {
        bad.push(format!("stderr lacks `{needle}`"));
    }
    if r.stderr.contains("panicked") {
        bad.push("panicked".into());
    }
    if r.secs >= TIME_LIMIT.as_secs_f64() {
        bad.push(format!("took {:.1} s", r.secs));
    }
    if r.rss_mb >= max_rss_mb {
        bad.push(format!("peak RSS {:.0} MB ≥ {max_rss_mb} MB", r.rss_mb));
    }
    (!bad.is_empty()).then(|| format!("{name}: {} — stderr: {}", bad.join(", "), r.stderr.trim()))
}

#[test]
fn crafted_files_and_arguments_are_refused_quickly_in_bounded_memory() {
    let model = model_path(SMOLLM2);
    let dir = out_dir();
    let script = repo_root().join("engine/tests/tools/hostile_models.py");
    let st = Command::new("python3")
        .arg(&script)
        .arg(&model)
        .arg(&dir)
        .status()
        .expect("python3 with the gguf package (cargo xtask test installs it)");
    assert!(st.success(), "{} failed", script.display());
    let cases: Vec<Case> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    assert!(cases.len() >= 35, "only {} cases", cases.len());

    let mut failures = vec![];
    let mut table = vec![];
    for c in &cases {
        let args: Vec<std::ffi::OsString> = c.args.iter().map(Into::into).collect();
        let r = run_measured(&args, &c.name, &dir);
        table.push(format!(
            "{:<34} exit {:>2}  {:>5.2} s  {:>5.0} MB  {}",
            c.name,
            r.code.unwrap_or(-1),
            r.secs,
            r.rss_mb,
            r.stderr.lines().next().unwrap_or("")
        ));
        if let Some(f) = check(&c.name, &r, c.code, &c.needle, c.max_rss_mb) {
            failures.push(f);
        }
        if c.name == "temperature_1e-39" {
            // Greedy: the same text as temperature 0.
            let mut greedy = args.clone();
            let t = greedy.iter().position(|a| a == "--temperature").unwrap();
            greedy[t + 1] = "0".into();
            let g = run_measured(&greedy, "greedy", &dir);
            assert_eq!(
                r.stdout, g.stdout,
                "a temperature of 1e-39 decodes greedily"
            );
        }
        if c.name == "template_fallback" {
            assert!(
                !r.stdout.trim().is_empty(),
                "the fallback chats: {}",
                r.stderr
            );
        }
    }
    // An argument that is not UTF-8 is named, not a panic.
    {
        use std::os::unix::ffi::OsStringExt;
        let m = model.as_os_str().to_owned();
        let args: Vec<std::ffi::OsString> = vec![
            "generate".into(),
            "--model".into(),
            m,
            "--prompt".into(),
            std::ffi::OsString::from_vec(vec![b'H', 0xff, b'i']),
        ];
        let r = run_measured(&args, "utf8", &dir);
        table.push(format!(
            "{:<34} exit {:>2}  {:>5.2} s  {:>5.0} MB  {}",
            "invalid_utf8_argument",
            r.code.unwrap_or(-1),
            r.secs,
            r.rss_mb,
            r.stderr.trim()
        ));
        if let Some(f) = check("invalid_utf8_argument", &r, 2, "not valid UTF-8", 300.0) {
            failures.push(f);
        }
    }
    eprintln!("{}", table.join("\n"));
    let _ = std::fs::remove_dir_all(&dir);
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}
