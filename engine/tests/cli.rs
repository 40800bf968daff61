//! The `slm` command line: outputs against llama.cpp's goldens, and every kind of bad input
//! exiting with code 2 and one line on stderr (never a panic or a backtrace).
mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Steps where llama.cpp's top-1/top-2 margin is below this are near-ties; free-running greedy
/// text must agree only up to the first one.
const NEAR_TIE_MARGIN: f64 = 1.0;

fn slm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_slm"))
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("run slm")
}

fn smollm2() -> String {
    model_path(SMOLLM2).to_string_lossy().into_owned()
}

/// Exit code 2, exactly one line on stderr containing `needle` (case-insensitive), no panic.
fn assert_bad_input(out: &Output, needle: &str) {
    assert_bad_input_all(out, &[needle]);
}

/// Exit code 2, exactly one line on stderr containing every one of `needles`
/// (case-insensitive), no panic.
fn assert_bad_input_all(out: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| !l.starts_with("backend:")).collect();
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert_eq!(lines.len(), 1, "want one line, got: {err}");
    for needle in needles {
        assert!(
            lines[0].to_lowercase().contains(&needle.to_lowercase()),
            "`{}` lacks `{needle}`",
            lines[0]
        );
    }
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{err}"
    );
}

fn temp_file(name: &str, bytes: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("slm-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// Position just after the first occurrence of `needle` in `hay`.
fn after(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len())
        .position(|w| w == needle)
        .expect("needle present")
        + needle.len()
}

fn header_bytes() -> Vec<u8> {
    // The header (metadata + tensor infos) of SmolLM2 lies in its first 2 MiB.
    let mut b = std::fs::read(model_path(SMOLLM2)).unwrap();
    b.truncate(2 << 20);
    b
}

/// The SmolLM2 file with `patch` applied, written to the temp folder as `name` (distinct per
/// test: tests run in parallel).
fn full_model_with(name: &str, patch: impl FnOnce(&mut Vec<u8>)) -> PathBuf {
    let mut b = std::fs::read(model_path(SMOLLM2)).unwrap();
    patch(&mut b);
    temp_file(name, &b)
}

/// `generate` on the patched SmolLM2 file `name`, which is removed afterwards (98 MB each).
fn run_patched(name: &str, patch: impl FnOnce(&mut Vec<u8>)) -> Output {
    let p = full_model_with(name, patch);
    let out = run_on(&p, &[]);
    std::fs::remove_file(&p).unwrap();
    out
}

/// GGUF metadata value type id of u32 (`GGUF_TYPE_UINT32`).
const GGUF_TYPE_UINT32: u32 = 4;

/// Replace the u32 value of metadata key `key` (its string, then the u32 type, then the value);
/// returns the old value.
fn patch_u32_value(b: &mut [u8], key: &str, value: u32) -> u32 {
    let at = after(b, key.as_bytes());
    let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
    assert_eq!(u32_at(at), GGUF_TYPE_UINT32, "`{key}` is not a u32");
    let old = u32_at(at + 4);
    b[at + 4..at + 8].copy_from_slice(&value.to_le_bytes());
    old
}

fn run_on(path: &Path, extra: &[&str]) -> Output {
    let p = path.to_string_lossy();
    let mut args = vec![
        "generate",
        "--model",
        &p,
        "--prompt",
        "Hi",
        "--max-tokens",
        "2",
    ];
    args.extend_from_slice(extra);
    slm(&args)
}

#[test]
fn missing_file() {
    assert_bad_input(
        &run_on(Path::new("/nonexistent/model.gguf"), &[]),
        "cannot open model",
    );
}

#[test]
fn bad_magic() {
    let mut b = header_bytes();
    b[..4].copy_from_slice(b"GGML");
    assert_bad_input(&run_on(&temp_file("magic.gguf", &b), &[]), "magic");
}

#[test]
fn bad_version() {
    let mut b = header_bytes();
    b[4..8].copy_from_slice(&9u32.to_le_bytes());
    assert_bad_input(&run_on(&temp_file("version.gguf", &b), &[]), "version 9");
}

#[test]
fn absurd_counts() {
    let mut b = header_bytes();
    b[8..16].copy_from_slice(&(u64::MAX / 3).to_le_bytes());
    assert_bad_input(&run_on(&temp_file("count.gguf", &b), &[]), "tensor count");
    let mut b = header_bytes();
    // The first metadata key's length.
    b[24..32].copy_from_slice(&(1u64 << 50).to_le_bytes());
    assert_bad_input(
        &run_on(&temp_file("strlen.gguf", &b), &[]),
        "exceeds the limit",
    );
}

#[test]
fn truncated_file() {
    // Header intact, tensor data cut: the tensors point past the end.
    assert_bad_input(
        &run_on(&temp_file("truncated.gguf", &header_bytes()), &[]),
        "truncated",
    );
    // Cut inside the metadata.
    let b = &header_bytes()[..5000];
    assert_bad_input(&run_on(&temp_file("truncated2.gguf", b), &[]), "truncated");
}

#[test]
fn unsupported_architecture() {
    let out = run_patched("arch.gguf", |b| {
        // general.architecture's value: key, u32 type, u64 length, then "llama".
        let at = after(b, b"general.architecture") + 12;
        b[at..at + 5].copy_from_slice(b"mamba");
    });
    // The message names the architecture and what is supported instead (the registry).
    let mut needles = vec!["unsupported model architecture `mamba`"];
    needles.extend(engine::arch::FAMILIES.iter().map(|f| f.name));
    assert_bad_input_all(&out, &needles);
}

#[test]
fn unsupported_tensor_type() {
    let out = run_patched("type.gguf", |b| {
        // First tensor info: name, u32 n_dims (2), two u64 dims, then the u32 type.
        let at = after(b, b"token_embd.weight") + 4 + 16;
        b[at..at + 4].copy_from_slice(&16u32.to_le_bytes());
    });
    assert_bad_input(&out, "unsupported type iq2_xxs");
}

/// A tensor the family needs is absent (renamed to a name nothing reads, same length, so the
/// header layout stays valid).
#[test]
fn missing_tensor() {
    let out = run_patched("missing.gguf", |b| {
        let at = after(b, b"blk.3.attn_k.weight") - b"attn_k.weight".len();
        b[at..at + 6].copy_from_slice(b"attn_x");
    });
    assert_bad_input(&out, "missing tensor `blk.3.attn_k.weight`");
}

/// A tensor whose shape contradicts the metadata: `feed_forward_length` says 2048, the
/// feed-forward tensors are 1536 wide.
#[test]
fn tensor_shape_contradicts_metadata() {
    let out = run_patched("shape.gguf", |b| {
        assert_eq!(patch_u32_value(b, "llama.feed_forward_length", 2048), 1536);
    });
    assert_bad_input_all(
        &out,
        &[
            "shape mismatch",
            "`blk.0.ffn_gate.weight`",
            "[576, 1536]",
            "[576, 2048]",
        ],
    );
}

/// `block_count` 29 with tensors for 30 layers: refused (llama.cpp would silently drop the
/// last layer), naming the key and the first extra tensor.
#[test]
fn block_count_below_layers_in_file() {
    let out = run_patched("blocks.gguf", |b| {
        assert_eq!(patch_u32_value(b, "llama.block_count", 29), 30);
    });
    assert_bad_input_all(&out, &["llama.block_count", "29 layers", "`blk.29."]);
}

#[test]
fn prompt_longer_than_context() {
    let long = "word ".repeat(200);
    let m = smollm2();
    let out = slm(&[
        "generate",
        "--model",
        &m,
        "--prompt",
        &long,
        "--ctx",
        "64",
        "--max-tokens",
        "8",
    ]);
    assert_bad_input(&out, "context holds 64");
}

#[test]
fn bad_options() {
    let m = smollm2();
    assert_bad_input(
        &slm(&["generate", "--model", &m, "--prompt", "x", "--top-p", "7"]),
        "top_p",
    );
    assert_bad_input(
        &slm(&["generate", "--model", &m, "--prompt", "x", "--bogus", "1"]),
        "unknown option",
    );
    assert_bad_input(
        &slm(&["logits", "--model", &m, "--tokens", "1,x"]),
        "invalid token id",
    );
    assert_bad_input(
        &slm(&["logits", "--model", &m, "--tokens", "99999999"]),
        "outside the vocabulary",
    );
    assert_bad_input(&slm(&["frobnicate"]), "unknown subcommand");
}

#[test]
fn tokenize_matches_llama_cpp() {
    let gold = golden(SMOLLM2_KEY);
    let case = &gold["tokenizer_cases"][13];
    let text = case["text"].as_str().unwrap();
    let out = slm(&[
        "tokenize",
        "--model",
        &smollm2(),
        "--text",
        text,
        "--special",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ids: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ids, case["add_bos=False,special=True"]);
}

#[test]
fn logits_prints_one_line_per_position() {
    let out = slm(&[
        "logits",
        "--model",
        &smollm2(),
        "--tokens",
        "1,9690,198",
        "--top",
        "3",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[2]["pos"], 2);
    assert_eq!(lines[2]["top"].as_array().unwrap().len(), 3);
}

/// Free-running greedy chat generation equals llama.cpp's up to the first near-tie.
#[test]
fn generate_messages_greedy_matches_llama_cpp_prefix() {
    greedy_chat_matches_llama_cpp_prefix(SMOLLM2, SMOLLM2_KEY);
}

/// The same for Gemma 3 270M (CPU forward pass; a base model, so its chat answers are odd, but
/// they are llama.cpp's).
#[test]
fn gemma3_generate_messages_greedy_matches_llama_cpp_prefix() {
    greedy_chat_matches_llama_cpp_prefix(GEMMA3, GEMMA3_KEY);
}

/// Gemma 3 on `--backend gpu` prints what `--backend cpu` prints.
#[test]
fn gemma3_runs_on_the_gpu_as_on_the_cpu() {
    // One architecture definition, both backends: the same greedy tokens (no near-tie in the
    // first four for this prompt).
    let m = model_path(GEMMA3).to_string_lossy().into_owned();
    let gen = |backend: &str| {
        slm(&[
            "generate",
            "--model",
            &m,
            "--prompt",
            "The capital of France is",
            "--max-tokens",
            "4",
            "--temperature",
            "0",
            "--backend",
            backend,
            "--verbose",
        ])
    };
    let (cpu, gpu) = (gen("cpu"), gen("gpu"));
    let err = String::from_utf8_lossy(&gpu.stderr);
    assert!(cpu.status.success() && gpu.status.success(), "{err}");
    assert!(
        err.lines().any(|l| l.starts_with("backend: gpu")),
        "gemma3 runs on the GPU: {err}"
    );
    assert_eq!(
        String::from_utf8_lossy(&gpu.stdout),
        String::from_utf8_lossy(&cpu.stdout)
    );
}

fn greedy_chat_matches_llama_cpp_prefix(file: &str, key: &str) {
    let model = model_path(file).to_string_lossy().into_owned();
    let gold = golden(key);
    for case in gold["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["mode"] == "chat")
    {
        let messages = serde_json::to_string(&case["messages"]).unwrap();
        let out = slm(&[
            "generate",
            "--model",
            &model,
            "--messages",
            &messages,
            "--temperature",
            "0",
            "--max-tokens",
            "48",
            "--json",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let summary = lines.last().unwrap();
        assert_eq!(
            summary["n_prompt"], case["n_prompt"],
            "the chat template + tokenizer give llama.cpp's prompt"
        );
        for k in [
            "n_generated",
            "stop_reason",
            "ttft_ms",
            "prefill_tok_s",
            "decode_tok_s",
        ] {
            assert!(summary.get(k).is_some(), "summary lacks {k}");
        }
        let ours: Vec<u64> = lines[..lines.len() - 1]
            .iter()
            .filter_map(|l| l["id"].as_u64())
            .filter(|&id| id != u32::MAX as u64)
            .collect();
        let mut theirs: Vec<u64> = case["generated_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        // We stop on the end-of-generation id without emitting it.
        if case["stop_reason"] == "eog" {
            theirs.pop();
        }
        // Agreement is required up to (and including) the first near-tie step.
        let steps = case["top5_per_step"].as_array().unwrap();
        let first_tie = steps
            .iter()
            .position(|s| {
                s[0]["logit"].as_f64().unwrap() - s[1]["logit"].as_f64().unwrap() < NEAR_TIE_MARGIN
            })
            .unwrap_or(steps.len());
        let n = first_tie.min(theirs.len());
        assert!(ours.len() >= n, "generated {} tokens, need {n}", ours.len());
        assert_eq!(
            &ours[..n],
            &theirs[..n],
            "greedy prefix before the first near-tie (step {first_tie})"
        );
        // The text streamed equals the decoded golden text over that prefix.
        let text: String = lines[..lines.len() - 1]
            .iter()
            .map(|l| l["text"].as_str().unwrap())
            .collect();
        let gold_text = case["decoded_text"].as_str().unwrap();
        if n == theirs.len() {
            assert_eq!(text, gold_text);
        }
    }
}
