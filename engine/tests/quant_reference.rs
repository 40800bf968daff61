//! Dequantization checked against an independent implementation: fixtures written by
//! `engine/tests/tools/quant_refs.py` from the `gguf` Python package's numpy dequantizer, for
//! random blocks of every weight type and for the first rows of real tensors of the bundled
//! models. Also checks `vec_dot` on those real rows against the float reference.
#![cfg(not(target_arch = "wasm32"))]

use std::path::{Path, PathBuf};

use engine::quant::{self, GgmlDType, PreparedActs};

/// Dequantization must match the numpy reference to within this relative error per element
/// (both compute `d * q` / `d * q - m` in f32 in the same order, so it is exact in practice).
const DEQUANT_REL_TOL: f32 = 1e-6;

/// `vec_dot` on real rows vs the float reference: at most half an activation quantization step
/// per element (`Σ |w_i| · step_i / 2`), plus f32 rounding relative to `Σ |w_i x_i|`.
const ACT_HALF_STEP: f64 = 0.5;
const FLOAT_REL_TOL: f64 = 1e-5;

const GENERATE: &str =
    "pip install gguf numpy && python3 engine/tests/tools/quant_refs.py target/quant-refs";

fn refs_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("SLM_QUANT_REFS") {
        return PathBuf::from(d);
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("target")
        .join("quant-refs")
}

struct Case {
    name: String,
    dtype: GgmlDType,
    rows: usize,
    cols: usize,
    data: Vec<u8>,
    expected: Vec<f32>,
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}

fn load_case(path: &Path) -> Case {
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        &b[..8],
        b"QREF\x01\x00\x00\x00",
        "{}: bad magic",
        path.display()
    );
    let id = u32_at(&b, 8);
    let dtype = GgmlDType::from_ggml_id(id)
        .unwrap_or_else(|| panic!("{}: unknown type id {id}", path.display()));
    let (rows, cols) = (u32_at(&b, 12) as usize, u32_at(&b, 16) as usize);
    let name_len = u32_at(&b, 20) as usize;
    let name = String::from_utf8(b[24..24 + name_len].to_vec()).unwrap();
    let row_bytes = dtype.row_bytes(cols).expect("cols fit the block size");
    let data_start = 24 + name_len;
    let exp_start = data_start + rows * row_bytes;
    assert_eq!(b.len(), exp_start + rows * cols * 4, "{name}: file size");
    let expected = b[exp_start..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    Case {
        name,
        dtype,
        rows,
        cols,
        data: b[data_start..exp_start].to_vec(),
        expected,
    }
}

fn load_all() -> Vec<Case> {
    let dir = refs_dir();
    let manifest = dir.join("MANIFEST.txt");
    let list = std::fs::read_to_string(&manifest).unwrap_or_else(|e| {
        panic!(
            "quantization reference fixtures not found ({}: {e}).\nGenerate them with:\n    {GENERATE}\n(or point SLM_QUANT_REFS at a directory holding them)",
            manifest.display()
        )
    });
    list.lines()
        .filter(|l| !l.is_empty())
        .map(|n| load_case(&dir.join(format!("{n}.qref"))))
        .collect()
}

/// Copy `bytes` to an address that is 2-byte but not 4-byte aligned (the weakest alignment
/// weight rows are promised), returning the buffer and the offset of the copy.
fn two_aligned(bytes: &[u8]) -> (Vec<u64>, usize) {
    let mut buf = vec![0u64; bytes.len() / 8 + 2];
    let b: &mut [u8] = bytemuck::cast_slice_mut(&mut buf);
    b[2..2 + bytes.len()].copy_from_slice(bytes);
    (buf, 2)
}

fn row_of(buf: &[u64], off: usize, len: usize) -> &[u8] {
    &bytemuck::cast_slice::<u64, u8>(buf)[off..off + len]
}

#[test]
fn fixtures_cover_every_weight_type_and_the_real_models() {
    let cases = load_all();
    for t in GgmlDType::WEIGHT_TYPES {
        let name = format!("random_{t}");
        assert!(
            cases.iter().any(|c| c.name == name && c.dtype == t),
            "missing fixture {name}; regenerate with: {GENERATE}"
        );
    }
    let real = [
        ("smollm2__", GgmlDType::Q4_1),
        ("smollm2__", GgmlDType::Q8_0),
        ("smollm2__", GgmlDType::F32),
        ("gemma3__", GgmlDType::Q5_0),
        ("gemma3__", GgmlDType::Q4K),
        ("gemma3__", GgmlDType::Q6K),
        ("gemma3__", GgmlDType::Q8_0),
    ];
    for (prefix, t) in real {
        assert!(
            cases
                .iter()
                .any(|c| c.name.starts_with(prefix) && c.dtype == t),
            "missing real-tensor fixture {prefix}* of type {t}; regenerate with: {GENERATE}"
        );
    }
}

#[test]
fn dequantize_row_matches_gguf_numpy() {
    let cases = load_all();
    assert!(!cases.is_empty());
    for c in &cases {
        let row_bytes = c.dtype.row_bytes(c.cols).unwrap();
        let (buf, off) = two_aligned(&c.data);
        let mut out = vec![0f32; c.cols];
        let mut worst = 0f32;
        for r in 0..c.rows {
            let row = row_of(&buf, off + r * row_bytes, row_bytes);
            quant::dequantize_row(c.dtype, row, &mut out)
                .unwrap_or_else(|e| panic!("{}: {e}", c.name));
            let exp = &c.expected[r * c.cols..(r + 1) * c.cols];
            for (i, (&g, &e)) in out.iter().zip(exp).enumerate() {
                let err = (g - e).abs();
                assert!(
                    err <= DEQUANT_REL_TOL * e.abs(),
                    "{} ({}): row {r} element {i}: got {g}, numpy says {e}",
                    c.name,
                    c.dtype
                );
                if e != 0.0 {
                    worst = worst.max(err / e.abs());
                }
            }
        }
        println!(
            "{:40} {:5} max rel err {worst:.2e}",
            c.name,
            c.dtype.to_string()
        );
    }
}

#[test]
fn dequantize_row_rejects_wrong_lengths() {
    for t in GgmlDType::WEIGHT_TYPES {
        let n = t.block_size() * 4;
        let bytes = vec![0u16; t.row_bytes(n).unwrap()]; // zeros: finite everywhere
        let bytes: &[u8] = bytemuck::cast_slice(&bytes);
        let mut out = vec![0f32; n];
        quant::dequantize_row(t, &bytes[..t.row_bytes(n).unwrap()], &mut out).unwrap();
        let short = &bytes[..t.row_bytes(n).unwrap() - t.type_size()];
        assert!(
            matches!(
                quant::dequantize_row(t, short, &mut out),
                Err(engine::Error::Shape { .. })
            ),
            "{t}: short row accepted"
        );
        if t.block_size() > 1 {
            let mut odd = vec![0f32; n - 1];
            assert!(
                matches!(
                    quant::dequantize_row(t, bytes, &mut odd),
                    Err(engine::Error::Shape { .. })
                ),
                "{t}: partial block accepted"
            );
        }
    }
}

/// splitmix64: deterministic test data without extra dependencies.
struct Rng(u64);
impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn normal(&mut self) -> f32 {
        let u1 = ((self.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
        let u2 = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }
}

/// `Σ |w_i| · step_i / 2 · ACT_HALF_STEP⁻¹`-style bound for activations quantized in blocks of
/// `bs` with step `max |x| / 127` (no quantization for float weights).
fn quant_error_bound(dtype: GgmlDType, w: &[f32], x: &[f32]) -> f64 {
    let bs = match quant::ActFormat::for_dtype(dtype) {
        Some(quant::ActFormat::Q8) => 32,
        Some(quant::ActFormat::Q8K) => 256,
        _ => return 0.0,
    };
    let mut bound = 0f64;
    for (wb, xb) in w.chunks(bs).zip(x.chunks(bs)) {
        let step = xb.iter().fold(0f32, |m, v| m.max(v.abs())) as f64 / 127.0;
        bound += wb.iter().map(|v| v.abs() as f64).sum::<f64>() * step * ACT_HALF_STEP;
    }
    bound
}

#[test]
fn vec_dot_on_real_rows_matches_reference() {
    let cases = load_all();
    let mut rng = Rng(7);
    let mut acts = PreparedActs::new();
    for c in cases.iter().filter(|c| !c.name.starts_with("random_")) {
        let row_bytes = c.dtype.row_bytes(c.cols).unwrap();
        let (buf, off) = two_aligned(&c.data);
        let x: Vec<f32> = (0..c.cols).map(|_| rng.normal()).collect();
        acts.prepare(c.dtype, &x);
        for r in 0..c.rows {
            let row = row_of(&buf, off + r * row_bytes, row_bytes);
            let w = &c.expected[r * c.cols..(r + 1) * c.cols];
            let reference = quant::vec_dot_ref(c.dtype, row, &x) as f64;
            let abs_sum: f64 = w.iter().zip(&x).map(|(a, b)| (a * b).abs() as f64).sum();
            let tol = quant_error_bound(c.dtype, w, &x) + FLOAT_REL_TOL * abs_sum;
            for (path, got) in [
                ("fast", quant::vec_dot(c.dtype, row, &acts)),
                ("portable", quant::vec_dot_portable(c.dtype, row, &acts)),
            ] {
                let err = (got as f64 - reference).abs();
                assert!(
                    err <= tol,
                    "{} row {r} ({path} {}): got {got}, reference {reference}, err {err:.3e} > tol {tol:.3e}",
                    c.name,
                    quant::fast_path()
                );
            }
        }
    }
}
