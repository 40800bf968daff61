//! Every registered family against llama.cpp, on the tiny random-weight GGUFs of
//! `../shared/tiny` (`$SLM_TINY_DIR`): teacher-force each golden sequence and apply the criteria
//! of `../shared/tiny/README.md` at every position:
//! - our top-1 is inside llama.cpp's top-5,
//! - and equals llama.cpp's top-1 where its top-1/top-2 margin exceeds [`DECISIVE_MARGIN`];
//! - |Δlogit| ≤ [`MAX_ABS_LOGIT_DIFF`] on the ids both top-5 lists share;
//!
//! and the full logits of each sequence's last position (`<name>.golden.last_logits.npy`) within
//! [`MAX_ABS_LOGIT_DIFF`] everywhere. One test per backend, plus the f32 graph interpreter the
//! GPU is held to (`common::f32_graph`), so that reference is itself checked on every family.
//! Each prints one line per family and fails listing the violations (the first few of each
//! family); a registered family without a tiny model fails, and so does a missing tiny folder,
//! unless `SLM_SKIP_TINY=1`.
mod common;
use common::*;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use engine::backend::{self, cpu::CpuModel, BackendChoice, LoadedModel};
use engine::gguf::{FileSource, GgufFile, SharedSource};
use engine::model::{ForwardPass, Logits};
use engine::tensor::AlignedBytes;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Where llama.cpp's top-1/top-2 margin exceeds this, our top-1 must equal its top-1.
const DECISIVE_MARGIN: f32 = 1.0;
/// Largest allowed |our logit − llama.cpp's| on shared top-5 ids, and over the full last-position
/// vector.
const MAX_ABS_LOGIT_DIFF: f32 = 2.5;
/// The context llama.cpp ran with (Phi-3 picks its LongRoPE factors by it).
const N_CTX: usize = 256;
/// Violations listed per family before "… and N more".
const MAX_LISTED: usize = 5;

/// Teacher-forces one sequence from position 0: every position's logits, (n, n_vocab).
type Runner = Box<dyn FnMut(&[u32]) -> engine::Result<Vec<f32>>>;

/// A backend's runner: its model of the file, `forward(tokens, 0, Logits::All)`.
fn on_backend(choice: BackendChoice) -> impl Fn(&GgufFile, &FileSource) -> engine::Result<Runner> {
    move |g, src| {
        let (mut m, _) = backend::load(g, src, choice, N_CTX, 2)?;
        Ok(Box::new(move |tokens: &[u32]| {
            m.forward(tokens, 0, Logits::All).map(<[f32]>::to_vec)
        }))
    }
}

/// The tiny models' GGUF files in `dir`, sorted by name.
fn tiny_gguf_files(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "gguf"))
        .collect();
    files.sort();
    files
}

#[test]
fn tiny_families_cpu() {
    check_all("cpu", on_backend(BackendChoice::Cpu));
}

/// The GPU backend (Mesa lavapipe natively). `SLM_SKIP_GPU_TESTS=1` only on a machine without
/// any Vulkan driver.
#[test]
fn tiny_families_gpu() {
    if std::env::var("SLM_SKIP_GPU_TESTS").is_ok_and(|v| v == "1") {
        eprintln!("SLM_SKIP_GPU_TESTS=1: tiny families not run on the GPU");
        return;
    }
    check_all("gpu", on_backend(BackendChoice::Gpu));
}

/// The browser's load path: the file read once into memory ([`SharedSource`], segments filled
/// from the IndexedDB chunks), its tensors lent to the CPU model instead of copied. Every family must
/// borrow every matrix (none copied; only the small f32 vectors are converted) and give the
/// same logits as a load from the file.
#[test]
fn tiny_families_borrow_their_weights_from_the_file_in_memory() {
    let dir = tiny_dir();
    if !dir.is_dir() && std::env::var("SLM_SKIP_TINY").is_ok_and(|v| v == "1") {
        eprintln!("SLM_SKIP_TINY=1: no tiny folder at {}", dir.display());
        return;
    }
    let files = tiny_gguf_files(&dir);
    assert!(
        files.len() >= 8,
        "{} tiny models in {}",
        files.len(),
        dir.display()
    );
    for path in &files {
        let bytes = std::fs::read(path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let g = GgufFile::parse(bytes.as_slice()).unwrap();
        let (mut whole, _) =
            backend::load(&g, bytes.as_slice(), BackendChoice::Cpu, 64, 1).unwrap();
        // In segments of about a third of the file, cut at tensor starts as the worker does
        // for files over wasm32's largest allocation.
        let largest = g.tensors.iter().map(|t| t.size).max().unwrap_or(0);
        let max = (bytes.len() as u64 / 3).max(largest).max(g.data_offset);
        let sizes = SharedSource::plan(&g, bytes.len() as u64, max).unwrap();
        assert!(sizes.len() >= 2, "{name}: {sizes:?}");
        let mut at = 0;
        let segments = sizes
            .iter()
            .map(|&n| {
                let seg = AlignedBytes::from_slice(&bytes[at..at + n as usize]);
                at += n as usize;
                Arc::new(seg)
            })
            .collect();
        let src = SharedSource::from_segments(segments);
        let (mut lent, _) = backend::load(&g, &src, BackendChoice::Cpu, 64, 1)
            .unwrap_or_else(|e| panic!("{name}: load from memory: {e}"));
        let LoadedModel::Cpu(m) = &lent else {
            panic!("{name}: not on the CPU")
        };
        let (shared, copied) = m.weight_bytes();
        eprintln!("{name}: {shared} bytes of matrices lent, {copied} copied");
        assert_eq!(copied, 0, "{name}: matrices copied out of the file");
        assert!(shared > 0 && shared <= bytes.len(), "{name}: {shared}");
        let tokens = [1u32, 5, 9, 2];
        let a = whole.forward(&tokens, 0, Logits::All).unwrap().to_vec();
        let b = lent.forward(&tokens, 0, Logits::All).unwrap().to_vec();
        assert_eq!(a, b, "{name}: same logits");
    }
}

/// The f32 interpreter of the graph (dequantized weights, f32 activations, f16 KV cache as
/// llama.cpp's) under the same criteria: the reference `gpu_model` holds the GPU to is right
/// for every family, not only for the two real models.
#[test]
fn tiny_families_f32_reference() {
    use common::f32_graph::{reference_forward, KvStore};
    check_all("f32 reference", |g, src| {
        let m = CpuModel::load(g, src, N_CTX, 1)?;
        Ok(Box::new(move |tokens: &[u32]| {
            Ok(reference_forward(
                m.config(),
                m.graph(),
                m.weights(),
                tokens,
                KvStore::F16,
            ))
        }))
    });
}

/// Run every `*.gguf` of the tiny folder through `load`'s runner, print one line per family
/// and fail with every violation, or when a registered family has no tiny model.
fn check_all(label: &str, load: impl Fn(&GgufFile, &FileSource) -> engine::Result<Runner>) {
    let dir = tiny_dir();
    if !dir.is_dir() {
        if std::env::var("SLM_SKIP_TINY").is_ok_and(|v| v == "1") {
            eprintln!(
                "SLM_SKIP_TINY=1: no tiny folder at {}, not checked",
                dir.display()
            );
            return;
        }
        panic!(
            "no tiny models at {} (set SLM_TINY_DIR, or SLM_SKIP_TINY=1 to skip)",
            dir.display()
        );
    }
    let files = tiny_gguf_files(&dir);
    let t0 = std::time::Instant::now();
    let mut failures: Vec<String> = Vec::new();
    let mut covered = BTreeSet::new();
    for path in &files {
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let r = check_family(path, &load);
        if let Some(arch) = &r.arch {
            covered.insert(arch.clone());
        }
        let verdict = if r.violations.is_empty() {
            "PASS".to_string()
        } else {
            format!("FAIL ({} violations)", r.violations.len())
        };
        eprintln!("{label} {name:20} {verdict:22} {}", r.summary);
        let n = r.violations.len();
        failures.extend(
            r.violations
                .into_iter()
                .take(MAX_LISTED)
                .map(|v| format!("{name}: {v}")),
        );
        if n > MAX_LISTED {
            failures.push(format!("{name}: … and {} more", n - MAX_LISTED));
        }
    }
    for f in engine::arch::FAMILIES {
        if !covered.contains(f.name) {
            failures.push(format!(
                "family `{}` has no tiny model in {}",
                f.name,
                dir.display()
            ));
        }
    }
    eprintln!(
        "{label}: {} tiny models in {:.1} s",
        files.len(),
        t0.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "{label}: tiny families differ from llama.cpp:\n  {}",
        failures.join("\n  ")
    );
}

/// What one tiny model gave.
struct FamilyResult {
    /// `architecture` of its golden, once read.
    arch: Option<String>,
    /// Worst |Δ|, top-1 agreement.
    summary: String,
    violations: Vec<String>,
}

impl FamilyResult {
    fn failed(arch: Option<String>, why: String) -> Self {
        Self {
            arch,
            summary: why.clone(),
            violations: vec![why],
        }
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn check_family(
    path: &Path,
    load: &impl Fn(&GgufFile, &FileSource) -> engine::Result<Runner>,
) -> FamilyResult {
    let golden_path = path.with_extension("golden.json");
    let gold: Value = match std::fs::read_to_string(&golden_path) {
        Ok(t) => serde_json::from_str(&t).unwrap(),
        Err(e) => return FamilyResult::failed(None, format!("{}: {e}", golden_path.display())),
    };
    let arch = gold["architecture"].as_str().map(str::to_string);
    let bytes = std::fs::read(path).unwrap();
    let want_sha = gold["file_sha256"].as_str().unwrap();
    if sha256_hex(&bytes) != want_sha {
        return FamilyResult::failed(
            arch,
            "stale golden: the model's sha256 differs from the golden's `file_sha256` (rerun \
             `tiny_models.py golden`)"
                .into(),
        );
    }
    drop(bytes);
    let src = FileSource::open(path).unwrap();
    let g = GgufFile::parse(&src).unwrap();
    let mut run = match load(&g, &src) {
        Ok(r) => r,
        Err(e) => return FamilyResult::failed(arch, format!("load: {e}")),
    };
    let n_vocab = gold["n_vocab"].as_u64().unwrap() as usize;
    let last = read_npy_f32(&path.with_extension("golden.last_logits.npy"));
    let shape: Vec<usize> = gold["last_logits_shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    assert_eq!(last.0, shape, "{}: .npy shape", path.display());
    let seqs = gold["sequences"].as_array().unwrap();
    assert_eq!(
        shape,
        [seqs.len(), n_vocab],
        "{}: last_logits_shape",
        path.display()
    );

    let mut v = Vec::new();
    let (mut positions, mut agree, mut decisive, mut decisive_ok) = (0, 0, 0, 0);
    let (mut worst, mut worst_last) = (0f32, 0f32);
    for (si, seq) in seqs.iter().enumerate() {
        let tokens: Vec<u32> = seq["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_u64().unwrap() as u32)
            .collect();
        let logits = match run(&tokens) {
            Ok(l) => l,
            Err(e) => {
                v.push(format!("seq{si}: forward: {e}"));
                continue;
            }
        };
        assert_eq!(logits.len(), tokens.len() * n_vocab, "seq{si}: logits");
        for p in seq["positions"].as_array().unwrap() {
            let i = p["pos"].as_u64().unwrap() as usize;
            let row = &logits[i * n_vocab..(i + 1) * n_vocab];
            let theirs: Vec<(u32, f32)> = p["top5"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| (e[0].as_u64().unwrap() as u32, e[1].as_f64().unwrap() as f32))
                .collect();
            let margin = p["margin"].as_f64().unwrap() as f32;
            let ours = top5(row);
            positions += 1;
            agree += usize::from(ours[0] == theirs[0].0);
            if !theirs.iter().any(|&(id, _)| id == ours[0]) {
                v.push(format!(
                    "seq{si} pos{i}: our top-1 {} is outside llama.cpp's top-5 {:?}",
                    ours[0],
                    theirs.iter().map(|t| t.0).collect::<Vec<_>>()
                ));
            }
            if margin > DECISIVE_MARGIN {
                decisive += 1;
                if ours[0] == theirs[0].0 {
                    decisive_ok += 1;
                } else {
                    v.push(format!(
                        "seq{si} pos{i}: top-1 {} != llama.cpp's {} (margin {margin:.2})",
                        ours[0], theirs[0].0
                    ));
                }
            }
            for &(id, want) in theirs.iter().filter(|(id, _)| ours.contains(id)) {
                let d = (row[id as usize] - want).abs();
                worst = worst.max(d);
                if d > MAX_ABS_LOGIT_DIFF {
                    v.push(format!(
                        "seq{si} pos{i}: |Δlogit| {d:.3} for id {id} (llama.cpp {want:.3}, ours {:.3})",
                        row[id as usize]
                    ));
                }
            }
        }
        // The full vector at the last position.
        let n = tokens.len();
        let ours = &logits[(n - 1) * n_vocab..n * n_vocab];
        let want = &last.1[si * n_vocab..(si + 1) * n_vocab];
        let (at, d) = ours
            .iter()
            .zip(want)
            .map(|(a, b)| (a - b).abs())
            .enumerate()
            .fold((0, 0f32), |m, (j, d)| if d > m.1 { (j, d) } else { m });
        worst_last = worst_last.max(d);
        if d > MAX_ABS_LOGIT_DIFF {
            v.push(format!(
                "seq{si} last position: max |Δlogit| {d:.3} over the vocabulary (id {at}: \
                 llama.cpp {:.3}, ours {:.3})",
                want[at], ours[at]
            ));
        }
    }
    FamilyResult {
        summary: format!(
            "{:8} worst top-5 |Δ| {worst:.3}, last-position max |Δ| {worst_last:.3}, \
             top-1 {agree}/{positions} (decisive {decisive_ok}/{decisive})",
            arch.as_deref().unwrap_or("?"),
        ),
        arch,
        violations: v,
    }
}

/// Ids of the five largest values, largest first (first index on ties).
fn top5(row: &[f32]) -> [u32; 5] {
    let mut idx: Vec<u32> = (0..row.len() as u32).collect();
    idx.sort_by(|&a, &b| row[b as usize].total_cmp(&row[a as usize]).then(a.cmp(&b)));
    [idx[0], idx[1], idx[2], idx[3], idx[4]]
}

/// A little-endian float32, C-order `.npy` file (format versions 1–3): (shape, values).
fn read_npy_f32(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        b.starts_with(b"\x93NUMPY"),
        "{}: not an .npy",
        path.display()
    );
    let (len, start) = match b[6] {
        1 => (u16::from_le_bytes([b[8], b[9]]) as usize, 10),
        2 | 3 => (u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize, 12),
        v => panic!("{}: .npy version {v}", path.display()),
    };
    let header = std::str::from_utf8(&b[start..start + len]).unwrap();
    assert!(
        header.contains("'descr': '<f4'") && header.contains("'fortran_order': False"),
        "{}: want little-endian f32 in C order, header {header}",
        path.display()
    );
    let dims = header
        .split("'shape': (")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .unwrap_or_else(|| panic!("{}: no shape in {header}", path.display()));
    let shape: Vec<usize> = dims
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| d.parse().unwrap())
        .collect();
    let data = &b[start + len..];
    let n: usize = shape.iter().product();
    assert_eq!(data.len(), n * 4, "{}: data of {shape:?}", path.display());
    let values = data
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    (shape, values)
}

/// Families whose layer is the plain pre-norm block (no per-head q/k norms, no post-norms):
/// their decode step must take at most [`MAX_DISPATCHES_PER_LAYER`] per layer plus
/// [`MAX_FIXED_DISPATCHES`] on the GPU.
const PLAIN_BLOCK_FAMILIES: [&str; 5] = ["llama", "qwen2", "phi3", "granite", "smollm3"];
/// Q/K/V + RoPE + KV store, attention, output projection, gate/up + GLU, down projection.
const MAX_DISPATCHES_PER_LAYER: usize = 5;
/// Embedding, output projection, the sampler's gather and pick.
const MAX_FIXED_DISPATCHES: usize = 4;
/// Families with per-head Q/K norms or post-norms: their decode dispatches per layer today
/// (the per-head norms with RoPE and the K store are in the Q|K|V product's epilogue, so
/// Qwen3 takes the plain block's 5; Gemma's post-norms each add a norm + residual dispatch), so
/// a regression fails.
const OTHER_FAMILY_MAX_PER_LAYER: [(&str, usize); 3] = [("qwen3", 5), ("gemma2", 7), ("gemma3", 7)];

/// Decode dispatches per token on the GPU for every tiny family, printed per family (the
/// structural figure of the WebGPU speed work), and bounded for the plain pre-norm families.
#[test]
fn tiny_families_gpu_dispatches_per_token() {
    if std::env::var("SLM_SKIP_GPU_TESTS").is_ok_and(|v| v == "1") {
        eprintln!("SLM_SKIP_GPU_TESTS=1: dispatch counts not checked");
        return;
    }
    let dir = tiny_dir();
    if !dir.is_dir() && std::env::var("SLM_SKIP_TINY").is_ok_and(|v| v == "1") {
        return;
    }
    let files = tiny_gguf_files(&dir);
    assert!(!files.is_empty(), "no tiny models in {}", dir.display());
    for path in &files {
        let src = FileSource::open(path).unwrap();
        let g = GgufFile::parse(&src).unwrap();
        let (m, _) = backend::load(&g, &src, BackendChoice::Gpu, N_CTX, 2).unwrap();
        let backend::LoadedModel::Gpu(m) = m else {
            panic!("{}: not loaded on the GPU", path.display());
        };
        let (arch, n_layer) = (m.config().arch, m.config().n_layer);
        let d = m.dispatches_per_token(0);
        eprintln!(
            "gpu dispatches per decode token: {arch:9} {d:4} ({n_layer} layers: {:.1} per layer + {MAX_FIXED_DISPATCHES} fixed)",
            d.saturating_sub(MAX_FIXED_DISPATCHES) as f64 / n_layer as f64
        );
        if let Some(&(_, per_layer)) = OTHER_FAMILY_MAX_PER_LAYER.iter().find(|f| f.0 == arch) {
            assert!(
                d <= per_layer * n_layer + MAX_FIXED_DISPATCHES,
                "{arch}: {d} dispatches for {n_layer} layers"
            );
        }
        if PLAIN_BLOCK_FAMILIES.contains(&arch) {
            // Also where a layer's Q, K, V differ in type (the tiny llama is Q4_K_M: some
            // layers' attn_v is Q6_K): the pair pipelines take a type per weight.
            assert!(
                d <= MAX_DISPATCHES_PER_LAYER * n_layer + MAX_FIXED_DISPATCHES,
                "{arch}: {d} dispatches for {n_layer} layers"
            );
        }
    }
}
