//! Whether a model fits this device, and which one to recommend, decided before any download
//! from what the browser tells: the storage estimate, `navigator.deviceMemory`, the WebGPU
//! adapter (software or not) and the CPU speed probe (`engine::probe`). Pure logic; the facts
//! are gathered by `capabilities.rs`.

use crate::catalog::{fmt_bytes, CatalogEntry};

/// The largest model the CPU path takes: a wasm32 heap is at most 4 GiB, and the KV cache,
/// scratch and the tokenizer need room beside the weights.
pub const CPU_MAX_MODEL_BYTES: f64 = 3.2e9;
/// Decode speed under which a reply feels slow to read (tokens/s): recommendations stay above.
pub const COMFORTABLE_TOK_S: f64 = 10.0;
/// The share of the probed weight rate a whole decode step reaches (attention, norms, the
/// embedding rows a file holds but a token does not read): measured in Chromium on this
/// project's test machine with SmolLM2-135M and Gemma-3-270M (see `probe_factor` below).
pub const PROBE_EFFICIENCY: f64 = 0.8;

/// The WebGPU adapter, when there is one.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GpuFacts {
    /// Vendor, architecture, description as the browser gives them.
    pub name: String,
    /// A software adapter (SwiftShader, WARP): it works, but slower than the CPU engine.
    pub fallback: bool,
    /// `shader-f16` is offered.
    pub f16: bool,
    /// `maxBufferSize` and `maxStorageBufferBindingSize`, bytes.
    pub max_buffer: f64,
    pub max_binding: f64,
}

/// What the browser tells about this device.
#[derive(Clone, Debug, PartialEq)]
pub struct DeviceFacts {
    /// (used, quota) bytes from `navigator.storage.estimate()`.
    pub storage: Option<(f64, f64)>,
    /// `navigator.deviceMemory` (GB; browsers round it and cap it at 8).
    pub device_memory_gb: Option<f64>,
    /// The WebGPU adapter, or why there is none.
    pub gpu: Result<GpuFacts, String>,
    /// `crossOriginIsolated`: threads and SharedArrayBuffer are available.
    pub isolated: bool,
    /// `navigator.hardwareConcurrency`.
    pub cores: usize,
    /// Weight bytes/s of the CPU decode kernel (one thread), from the speed probe.
    pub cpu_bytes_per_s: Option<f64>,
}

impl DeviceFacts {
    /// A hardware WebGPU adapter is there (a software one runs, but is no faster than the CPU).
    pub fn fast_gpu(&self) -> bool {
        self.gpu.as_ref().is_ok_and(|g| !g.fallback)
    }

    /// Free storage for this site, bytes.
    pub fn storage_free(&self) -> Option<f64> {
        self.storage.map(|(used, quota)| (quota - used).max(0.0))
    }
}

/// The verdict of [`fit`], from best to worst.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    Fits,
    /// Runs, but near a limit (storage, memory) or the size is unknown.
    Tight,
    TooLarge,
}

/// Whether one model fits, on which backend, and how fast it should decode.
#[derive(Clone, Debug, PartialEq)]
pub struct Fit {
    pub verdict: Verdict,
    /// `gpu` or `cpu`: what `auto` will most likely pick.
    pub backend: &'static str,
    /// Plain words: what limits it (empty when nothing does).
    pub why: Vec<String>,
    /// Expected decode tokens/s on the CPU path (one thread), from the probe; `None` when the
    /// probe has not run or the size is unknown.
    pub expected_tok_s: Option<f64>,
}

impl Fit {
    /// The badge text.
    pub fn label(&self) -> &'static str {
        match self.verdict {
            Verdict::Fits => "Fits this device",
            Verdict::Tight => "Might not fit",
            Verdict::TooLarge => "Too large for this device",
        }
    }
}

/// Judge `entry` on this device. `stored`: already in IndexedDB (needs no storage).
pub fn fit(entry: &CatalogEntry, stored: bool, f: &DeviceFacts) -> Fit {
    let on_gpu = f.fast_gpu() && entry.backends.iter().any(|b| b == "gpu");
    let backend = if on_gpu { "gpu" } else { "cpu" };
    let mut verdict = Verdict::Fits;
    let mut why = Vec::new();
    let mut worse = |v: Verdict, text: String, why: &mut Vec<String>| {
        verdict = verdict.max(v);
        why.push(text);
    };
    let Some(size) = entry.approx_bytes().map(|n| n as f64) else {
        worse(
            Verdict::Tight,
            "its size is unknown until the download starts".into(),
            &mut why,
        );
        return Fit {
            verdict,
            backend,
            why,
            expected_tok_s: None,
        };
    };
    if !stored {
        if let Some(free) = f.storage_free() {
            if size > free {
                worse(
                    Verdict::TooLarge,
                    format!(
                        "needs {} of storage, about {} is free",
                        fmt_bytes(size),
                        fmt_bytes(free)
                    ),
                    &mut why,
                );
            } else if size > 0.8 * free {
                worse(
                    Verdict::Tight,
                    format!("takes most of the {} of free storage", fmt_bytes(free)),
                    &mut why,
                );
            }
        }
    }
    if !on_gpu && size > CPU_MAX_MODEL_BYTES {
        worse(
            Verdict::TooLarge,
            format!(
                "{} is more than the CPU engine can hold in a browser tab (4 GiB of wasm memory)",
                fmt_bytes(size)
            ),
            &mut why,
        );
    }
    if let Some(gb) = f.device_memory_gb.filter(|g| g.is_finite() && *g > 0.0) {
        // Browsers report at most 8 GB: only a small figure says something.
        if size > 0.5 * gb * 1e9 && gb < 8.0 {
            worse(
                Verdict::Tight,
                format!("this device reports {gb} GB of memory"),
                &mut why,
            );
        }
    }
    if let Ok(g) = &f.gpu {
        if on_gpu && g.max_buffer > 0.0 && size > 16.0 * g.max_buffer {
            worse(
                Verdict::Tight,
                format!(
                    "large for this GPU (buffers up to {})",
                    fmt_bytes(g.max_buffer)
                ),
                &mut why,
            );
        }
    }
    let expected_tok_s = f
        .cpu_bytes_per_s
        .filter(|r| r.is_finite() && *r > 0.0)
        .map(|r| r * PROBE_EFFICIENCY / size);
    Fit {
        verdict,
        backend,
        why,
        expected_tok_s,
    }
}

/// The model to suggest on first run: the largest that fits and, on the CPU path, decodes at a
/// comfortable speed ([`COMFORTABLE_TOK_S`]); on a hardware GPU the largest that fits up to
/// 2 GB; else the smallest that fits at all. `None` when nothing fits.
pub fn recommend<'a>(
    entries: &'a [CatalogEntry],
    stored: &[String],
    f: &DeviceFacts,
) -> Option<&'a CatalogEntry> {
    let judged: Vec<(&CatalogEntry, Fit, f64)> = entries
        .iter()
        .filter(|e| e.supported)
        .filter_map(|e| {
            let size = e.approx_bytes()? as f64;
            let fit = fit(e, stored.contains(&e.id), f);
            (fit.verdict == Verdict::Fits).then_some((e, fit, size))
        })
        .collect();
    let good = |(_, fit, size): &&(&CatalogEntry, Fit, f64)| {
        if fit.backend == "gpu" {
            *size <= 2e9
        } else {
            fit.expected_tok_s.is_some_and(|t| t >= COMFORTABLE_TOK_S)
        }
    };
    let by_size =
        |a: &&(&CatalogEntry, Fit, f64), b: &&(&CatalogEntry, Fit, f64)| a.2.total_cmp(&b.2);
    judged
        .iter()
        .filter(good)
        .max_by(by_size)
        .or_else(|| judged.iter().min_by(by_size))
        .map(|(e, _, _)| *e)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, size: Option<u64>, label: Option<&str>) -> CatalogEntry {
        CatalogEntry {
            id: id.into(),
            name: id.into(),
            family: "llama".into(),
            parameters: "1B".into(),
            quant: "Q4_K_M".into(),
            size,
            size_label: label.map(Into::into),
            license: "Apache-2.0".into(),
            url: format!("models/{id}.gguf"),
            sha256: None,
            supported: true,
            backends: vec!["cpu".into(), "gpu".into()],
            note: None,
            default: false,
        }
    }

    fn cpu_device(free: f64, rate: f64) -> DeviceFacts {
        DeviceFacts {
            storage: Some((0.0, free)),
            device_memory_gb: Some(8.0),
            gpu: Err("no WebGPU".into()),
            isolated: false,
            cores: 2,
            cpu_bytes_per_s: Some(rate),
        }
    }

    #[test]
    fn approximate_sizes_come_from_the_label() {
        assert_eq!(
            entry("a", None, Some("about 386 MB")).approx_bytes(),
            Some(386_000_000)
        );
        assert_eq!(
            entry("a", None, Some("about 1.8 GB")).approx_bytes(),
            Some(1_800_000_000)
        );
        assert_eq!(
            entry("a", Some(5), Some("about 1 GB")).approx_bytes(),
            Some(5)
        );
        assert_eq!(entry("a", None, Some("big")).approx_bytes(), None);
        assert_eq!(entry("a", None, Some("about -1 GB")).approx_bytes(), None);
        assert_eq!(entry("a", None, None).approx_bytes(), None);
    }

    #[test]
    fn storage_and_wasm_memory_decide_the_verdict() {
        let d = cpu_device(1e9, 4e9);
        let small = fit(&entry("s", Some(100_000_000), None), false, &d);
        assert_eq!((small.verdict, small.backend), (Verdict::Fits, "cpu"));
        assert!(small.why.is_empty());
        // 4e9 × 0.8 / 1e8 = 32 tok/s.
        assert!((small.expected_tok_s.unwrap() - 32.0).abs() < 1e-9);

        let tight = fit(&entry("t", Some(900_000_000), None), false, &d);
        assert_eq!(tight.verdict, Verdict::Tight, "{tight:?}");
        let big = fit(&entry("b", Some(2_000_000_000), None), false, &d);
        assert_eq!(big.verdict, Verdict::TooLarge);
        assert!(
            big.why[0].contains("needs 2.0 GB of storage, about 1.0 GB is free"),
            "{:?}",
            big.why
        );
        // Stored already: storage is no longer the question.
        assert_eq!(
            fit(&entry("b", Some(2_000_000_000), None), true, &d).verdict,
            Verdict::Fits
        );

        let huge = fit(
            &entry("h", Some(4_000_000_000), None),
            true,
            &cpu_device(1e12, 4e9),
        );
        assert_eq!(huge.verdict, Verdict::TooLarge);
        assert!(
            huge.why[0].contains("4 GiB of wasm memory"),
            "{:?}",
            huge.why
        );

        let unknown = fit(&entry("u", None, None), false, &d);
        assert_eq!(
            (unknown.verdict, unknown.expected_tok_s),
            (Verdict::Tight, None)
        );

        let mut low_mem = cpu_device(1e12, 4e9);
        low_mem.device_memory_gb = Some(2.0);
        assert_eq!(
            fit(&entry("m", Some(1_500_000_000), None), false, &low_mem).verdict,
            Verdict::Tight
        );
    }

    #[test]
    fn a_hardware_gpu_takes_models_past_the_wasm_limit() {
        let mut d = cpu_device(1e12, 4e9);
        d.gpu = Ok(GpuFacts {
            name: "NVIDIA".into(),
            max_buffer: 4e9,
            max_binding: 2e9,
            ..GpuFacts::default()
        });
        let f = fit(&entry("h", Some(4_000_000_000), None), false, &d);
        assert_eq!((f.verdict, f.backend), (Verdict::Fits, "gpu"));
        d.gpu = Ok(GpuFacts {
            fallback: true,
            ..GpuFacts::default()
        });
        assert_eq!(
            fit(&entry("h", Some(4_000_000_000), None), false, &d).backend,
            "cpu",
            "a software adapter is no faster"
        );
    }

    #[test]
    fn recommends_the_largest_comfortable_model() {
        let list = vec![
            entry("tiny", Some(100_000_000), None),
            entry("mid", None, Some("about 300 MB")),
            entry("big", None, Some("about 1.5 GB")),
            entry("unknown", None, None),
        ];
        // 4 GB/s × 0.8: tiny 32, mid 10.7, big 2.1 tok/s.
        assert_eq!(
            recommend(&list, &[], &cpu_device(1e11, 4e9)).map(|e| e.id.as_str()),
            Some("mid")
        );
        // A slow machine: nothing is comfortable; the smallest that fits.
        assert_eq!(
            recommend(&list, &[], &cpu_device(1e11, 1e8)).map(|e| e.id.as_str()),
            Some("tiny")
        );
        // Little storage: only what fits.
        assert_eq!(
            recommend(&list, &[], &cpu_device(2e8, 4e9)).map(|e| e.id.as_str()),
            Some("tiny")
        );
        assert_eq!(recommend(&list, &[], &cpu_device(1e7, 4e9)), None);
        let mut gpu = cpu_device(1e11, 4e9);
        gpu.gpu = Ok(GpuFacts::default());
        assert_eq!(
            recommend(&list, &[], &gpu).map(|e| e.id.as_str()),
            Some("big")
        );
    }
}
