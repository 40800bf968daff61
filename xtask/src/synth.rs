//! `cargo xtask synth-model --shape NAME --type TYPE --out PATH [--tokenizer GGUF] [--seed N]`:
//! a GGUF with the exact tensor names, shapes, types and metadata of a real model and random but
//! valid quantized blocks (finite, small scales), with the tokenizer of a test model. Speed does
//! not depend on the weights' values, so these stand in for files that cannot be downloaded here
//! (benchmarks at 1B scale, on the CPU and on a GPU machine without network); llama.cpp loads
//! them too. The tokenizer's vocabulary is padded with `<synth_pad_N>` tokens to the shape's
//! vocabulary (or the shape takes the donor's larger vocabulary), so tokenizer and embedding
//! agree.

use std::io::Write;
use std::path::{Path, PathBuf};

use engine::gguf::{FileSource, GgufFile, MetaValue};
use engine::quant::GgmlDType;

use crate::Result;

/// A real model's hyperparameters (from its GGUF metadata).
struct Shape {
    name: &'static str,
    arch: &'static str,
    n_embd: usize,
    n_layer: usize,
    n_head: usize,
    n_head_kv: usize,
    head_dim: usize,
    n_ff: usize,
    n_vocab: usize,
    n_ctx: usize,
    rope_base: f32,
    eps: f32,
    tied: bool,
}

const SHAPES: &[Shape] = &[
    Shape {
        name: "smollm2-135m",
        arch: "llama",
        n_embd: 576,
        n_layer: 30,
        n_head: 9,
        n_head_kv: 3,
        head_dim: 64,
        n_ff: 1536,
        n_vocab: 49152,
        n_ctx: 8192,
        rope_base: 100_000.0,
        eps: 1e-5,
        tied: true,
    },
    Shape {
        name: "llama-3.2-1b",
        arch: "llama",
        n_embd: 2048,
        n_layer: 16,
        n_head: 32,
        n_head_kv: 8,
        head_dim: 64,
        n_ff: 8192,
        n_vocab: 128_256,
        n_ctx: 131_072,
        rope_base: 500_000.0,
        eps: 1e-5,
        tied: true,
    },
    Shape {
        name: "qwen2.5-1.5b",
        arch: "qwen2",
        n_embd: 1536,
        n_layer: 28,
        n_head: 12,
        n_head_kv: 2,
        head_dim: 128,
        n_ff: 8960,
        n_vocab: 151_936,
        n_ctx: 32_768,
        rope_base: 1_000_000.0,
        eps: 1e-6,
        tied: true,
    },
    Shape {
        name: "gemma-3-1b",
        arch: "gemma3",
        n_embd: 1152,
        n_layer: 26,
        n_head: 4,
        n_head_kv: 1,
        head_dim: 256,
        n_ff: 6912,
        n_vocab: 262_144,
        n_ctx: 32_768,
        rope_base: 1_000_000.0,
        eps: 1e-6,
        tied: true,
    },
    Shape {
        name: "phi-3.5-mini",
        arch: "phi3",
        n_embd: 3072,
        n_layer: 32,
        n_head: 32,
        n_head_kv: 32,
        head_dim: 96,
        n_ff: 8192,
        n_vocab: 32_064,
        n_ctx: 131_072,
        rope_base: 10_000.0,
        eps: 1e-5,
        tied: false,
    },
];

/// A metadata value to write.
enum Kv {
    U32(u32),
    F32(f32),
    Str(String),
    /// Copied from the donor.
    Meta(MetaValue),
    /// An array copied from the donor (the parser stores only the arrays the engine reads).
    Array(Vec<MetaValue>),
}

/// xorshift64*: deterministic bytes without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
    /// A small positive f16 scale: 2^-10 .. 2^-7.
    fn scale(&mut self) -> [u8; 2] {
        let exp = 5 + (self.next() % 3) as u16; // biased exponent 5..7 → 2^-10 .. 2^-8
        let mant = (self.next() % 1024) as u16;
        ((exp << 10) | mant).to_le_bytes()
    }
}

/// Byte offsets of the f16 scale fields in one block of `t` (all others are free bits).
fn f16_fields(t: GgmlDType) -> &'static [usize] {
    match t {
        GgmlDType::Q4_0 | GgmlDType::Q5_0 | GgmlDType::Q8_0 => &[0],
        GgmlDType::Q4_1 | GgmlDType::Q5_1 | GgmlDType::Q4K | GgmlDType::Q5K => &[0, 2],
        GgmlDType::Q6K => &[208],
        GgmlDType::Q2K => &[80, 82],
        GgmlDType::Q3K => &[108],
        _ => &[],
    }
}

/// `rows` × `cols` random valid blocks of `t`.
fn random_tensor(t: GgmlDType, rows: usize, cols: usize, rng: &mut Rng) -> Result<Vec<u8>> {
    let row_bytes = t
        .row_bytes(cols)
        .ok_or_else(|| format!("{cols} columns do not fill {t:?} blocks"))?;
    let mut v = vec![0u8; rows * row_bytes];
    match t {
        GgmlDType::F32 => {
            for c in v.chunks_exact_mut(4) {
                let x = (rng.next() % 2001) as f32 / 1000.0 - 1.0;
                c.copy_from_slice(&(x * 0.02).to_le_bytes());
            }
        }
        GgmlDType::F16 => {
            for c in v.chunks_exact_mut(2) {
                c.copy_from_slice(&rng.scale());
            }
        }
        _ => {
            rng.fill(&mut v);
            let block = row_bytes / (cols / t.block_size());
            for b in v.chunks_exact_mut(block) {
                for &o in f16_fields(t) {
                    b[o..o + 2].copy_from_slice(&rng.scale());
                }
            }
        }
    }
    Ok(v)
}

/// The type of each weight under `ftype`, llama.cpp style: K-quants fall back to 32-element
/// types when the row is not a multiple of 256.
struct Types {
    main: GgmlDType,
    more: GgmlDType,
    out: GgmlDType,
}

impl Types {
    fn of(ftype: &str) -> Result<Self> {
        use GgmlDType::*;
        Ok(match ftype {
            "q4_k_m" => Types {
                main: Q4K,
                more: Q6K,
                out: Q6K,
            },
            "q4_0" => Types {
                main: Q4_0,
                more: Q4_0,
                out: Q8_0,
            },
            "q4_1" => Types {
                main: Q4_1,
                more: Q4_1,
                out: Q8_0,
            },
            "q8_0" => Types {
                main: Q8_0,
                more: Q8_0,
                out: Q8_0,
            },
            "f16" => Types {
                main: F16,
                more: F16,
                out: F16,
            },
            other => {
                return Err(format!(
                    "--type {other}: one of q4_k_m, q4_0, q4_1, q8_0, f16"
                ))
            }
        })
    }
    /// `t`, or its 32-element stand-in when `cols` is not a multiple of 256.
    fn fit(t: GgmlDType, cols: usize) -> GgmlDType {
        match t {
            GgmlDType::Q4K if !cols.is_multiple_of(256) => GgmlDType::Q5_0,
            GgmlDType::Q6K if !cols.is_multiple_of(256) => GgmlDType::Q8_0,
            t => t,
        }
    }
}

struct Tensor {
    name: String,
    /// GGML order: [cols, rows] or [len].
    dims: Vec<usize>,
    dtype: GgmlDType,
}

/// Every tensor of `s` with llama.cpp's names, in file order.
fn tensors(s: &Shape, ty: &Types) -> Vec<Tensor> {
    let (e, q, kv, ff) = (
        s.n_embd,
        s.n_head * s.head_dim,
        s.n_head_kv * s.head_dim,
        s.n_ff,
    );
    let mut out = Vec::new();
    let mut mat = |name: String, rows: usize, cols: usize, t: GgmlDType| {
        out.push(Tensor {
            name,
            dims: vec![cols, rows],
            dtype: Types::fit(t, cols),
        })
    };
    let embd_t = if s.tied { ty.out } else { ty.main };
    mat("token_embd.weight".into(), s.n_vocab, e, embd_t);
    if !s.tied {
        mat("output.weight".into(), s.n_vocab, e, ty.out);
    }
    let n = s.n_layer;
    for l in 0..n {
        let more = l < n / 8 || l >= 7 * n / 8 || (l.saturating_sub(n / 8)) % 3 == 2;
        let vt = if more { ty.more } else { ty.main };
        let b = |x: &str| format!("blk.{l}.{x}");
        if s.arch == "phi3" {
            mat(b("attn_qkv.weight"), q + 2 * kv, e, vt);
            mat(b("ffn_up.weight"), 2 * ff, e, ty.main);
        } else {
            mat(b("attn_q.weight"), q, e, ty.main);
            mat(b("attn_k.weight"), kv, e, ty.main);
            mat(b("attn_v.weight"), kv, e, vt);
            mat(b("ffn_gate.weight"), ff, e, ty.main);
            mat(b("ffn_up.weight"), ff, e, ty.main);
        }
        mat(b("attn_output.weight"), e, q, ty.main);
        mat(b("ffn_down.weight"), e, ff, vt);
    }
    let mut vec = |name: String, len: usize| {
        out.push(Tensor {
            name,
            dims: vec![len],
            dtype: GgmlDType::F32,
        })
    };
    vec("output_norm.weight".into(), e);
    if s.name == "llama-3.2-1b" {
        vec("rope_freqs.weight".into(), s.head_dim / 2);
    }
    if s.arch == "phi3" {
        vec("rope_factors_long.weight".into(), s.head_dim / 2);
        vec("rope_factors_short.weight".into(), s.head_dim / 2);
    }
    for l in 0..n {
        let b = |x: &str| format!("blk.{l}.{x}");
        vec(b("attn_norm.weight"), e);
        vec(b("ffn_norm.weight"), e);
        if s.arch == "qwen2" {
            vec(b("attn_q.bias"), q);
            vec(b("attn_k.bias"), kv);
            vec(b("attn_v.bias"), kv);
        }
        if s.arch == "gemma3" {
            vec(b("attn_q_norm.weight"), s.head_dim);
            vec(b("attn_k_norm.weight"), s.head_dim);
            vec(b("post_attention_norm.weight"), e);
            vec(b("post_ffw_norm.weight"), e);
        }
    }
    out
}

fn metadata(s: &Shape, n_vocab: usize, donor: &GgufFile) -> Vec<(String, Kv)> {
    let a = s.arch;
    let k = |x: &str| format!("{a}.{x}");
    let mut kv = vec![
        ("general.architecture".to_string(), Kv::Str(a.into())),
        (
            "general.name".into(),
            Kv::Str(format!("synthetic {}", s.name)),
        ),
        (k("context_length"), Kv::U32(s.n_ctx as u32)),
        (k("embedding_length"), Kv::U32(s.n_embd as u32)),
        (k("block_count"), Kv::U32(s.n_layer as u32)),
        (k("feed_forward_length"), Kv::U32(s.n_ff as u32)),
        (k("attention.head_count"), Kv::U32(s.n_head as u32)),
        (k("attention.head_count_kv"), Kv::U32(s.n_head_kv as u32)),
        (k("attention.key_length"), Kv::U32(s.head_dim as u32)),
        (k("attention.value_length"), Kv::U32(s.head_dim as u32)),
        (k("attention.layer_norm_rms_epsilon"), Kv::F32(s.eps)),
        (k("rope.freq_base"), Kv::F32(s.rope_base)),
        (k("rope.dimension_count"), Kv::U32(s.head_dim as u32)),
        (k("vocab_size"), Kv::U32(n_vocab as u32)),
    ];
    if a == "gemma3" {
        kv.push((k("attention.sliding_window"), Kv::U32(512)));
    }
    if a == "phi3" {
        kv.push((k("rope.scaling.original_context_length"), Kv::U32(4096)));
        kv.push((k("rope.scaling.attn_factor"), Kv::F32(1.190_238)));
    }
    // The donor's tokenizer, its token arrays padded to n_vocab.
    for (key, v) in &donor.metadata {
        if !key.starts_with("tokenizer.") {
            continue;
        }
        let MetaValue::Array(a) = v else {
            kv.push((key.clone(), Kv::Meta(v.clone())));
            continue;
        };
        let mut values: Vec<MetaValue> = match (a.strings(), a.values()) {
            (Some(st), _) => st.map(|x| MetaValue::String(x.to_string())).collect(),
            (None, Some(v)) => v.to_vec(),
            // Walked, not stored: not one the engine reads, so not needed here either.
            _ => continue,
        };
        match key.as_str() {
            "tokenizer.ggml.tokens" => {
                for i in values.len()..n_vocab {
                    values.push(MetaValue::String(format!("<synth_pad_{i}>")));
                }
            }
            "tokenizer.ggml.scores" => {
                values.resize(n_vocab.max(values.len()), MetaValue::F32(0.0));
            }
            "tokenizer.ggml.token_type" => {
                values.resize(n_vocab.max(values.len()), MetaValue::I32(1));
            }
            _ => {}
        }
        kv.push((key.clone(), Kv::Array(values)));
    }
    kv
}

fn put_str(w: &mut Vec<u8>, s: &str) {
    w.extend((s.len() as u64).to_le_bytes());
    w.extend(s.as_bytes());
}

/// GGUF type id of a metadata value.
fn type_id(v: &MetaValue) -> u32 {
    match v {
        MetaValue::U8(_) => 0,
        MetaValue::I8(_) => 1,
        MetaValue::U16(_) => 2,
        MetaValue::I16(_) => 3,
        MetaValue::U32(_) => 4,
        MetaValue::I32(_) => 5,
        MetaValue::F32(_) => 6,
        MetaValue::Bool(_) => 7,
        MetaValue::String(_) => 8,
        MetaValue::Array(_) => 9,
        MetaValue::U64(_) => 10,
        MetaValue::I64(_) => 11,
        MetaValue::F64(_) => 12,
    }
}

fn put_array(w: &mut Vec<u8>, values: &[MetaValue]) {
    // The element type of an empty array is irrelevant to readers; strings otherwise.
    let elem = values.first().map_or(8, type_id);
    w.extend(elem.to_le_bytes());
    w.extend((values.len() as u64).to_le_bytes());
    for x in values {
        put_value(w, x);
    }
}

fn put_value(w: &mut Vec<u8>, v: &MetaValue) {
    match v {
        MetaValue::U8(x) => w.push(*x),
        MetaValue::I8(x) => w.push(*x as u8),
        MetaValue::U16(x) => w.extend(x.to_le_bytes()),
        MetaValue::I16(x) => w.extend(x.to_le_bytes()),
        MetaValue::U32(x) => w.extend(x.to_le_bytes()),
        MetaValue::I32(x) => w.extend(x.to_le_bytes()),
        MetaValue::F32(x) => w.extend(x.to_le_bytes()),
        MetaValue::Bool(x) => w.push(*x as u8),
        MetaValue::String(s) => put_str(w, s),
        // Top-level arrays are written from `Kv::Array`.
        MetaValue::Array(_) => put_array(w, &[]),
        MetaValue::U64(x) => w.extend(x.to_le_bytes()),
        MetaValue::I64(x) => w.extend(x.to_le_bytes()),
        MetaValue::F64(x) => w.extend(x.to_le_bytes()),
    }
}

const ALIGN: usize = 32;

/// Write the synthetic model. Returns its size in bytes.
fn write(path: &Path, kv: &[(String, Kv)], ts: &[Tensor], seed: u64) -> Result<u64> {
    let mut h = Vec::new();
    h.extend(b"GGUF");
    h.extend(3u32.to_le_bytes());
    h.extend((ts.len() as u64).to_le_bytes());
    h.extend((kv.len() as u64).to_le_bytes());
    for (k, v) in kv {
        put_str(&mut h, k);
        match v {
            Kv::U32(x) => {
                h.extend(4u32.to_le_bytes());
                h.extend(x.to_le_bytes());
            }
            Kv::F32(x) => {
                h.extend(6u32.to_le_bytes());
                h.extend(x.to_le_bytes());
            }
            Kv::Str(s) => {
                h.extend(8u32.to_le_bytes());
                put_str(&mut h, s);
            }
            Kv::Meta(m) => {
                h.extend(type_id(m).to_le_bytes());
                put_value(&mut h, m);
            }
            Kv::Array(values) => {
                h.extend(9u32.to_le_bytes());
                put_array(&mut h, values);
            }
        }
    }
    let mut off = 0usize;
    let mut sizes = Vec::with_capacity(ts.len());
    for t in ts {
        put_str(&mut h, &t.name);
        h.extend((t.dims.len() as u32).to_le_bytes());
        for &d in &t.dims {
            h.extend((d as u64).to_le_bytes());
        }
        h.extend(t.dtype.ggml_id().to_le_bytes());
        h.extend((off as u64).to_le_bytes());
        let rows: usize = t.dims[1..].iter().product();
        let size = rows
            * t.dtype
                .row_bytes(t.dims[0])
                .ok_or_else(|| format!("{}: bad row", t.name))?;
        sizes.push(size);
        off = (off + size).next_multiple_of(ALIGN);
    }
    h.resize(h.len().next_multiple_of(ALIGN), 0);
    let f = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut w = std::io::BufWriter::with_capacity(1 << 22, f);
    let io = |e: std::io::Error| format!("{}: {e}", path.display());
    w.write_all(&h).map_err(io)?;
    let mut rng = Rng(seed | 1);
    let mut written = 0usize;
    for (t, size) in ts.iter().zip(sizes) {
        let data = if t.dims.len() == 1 {
            // Norm weights 1, biases 0, RoPE factors 1: a well-behaved forward pass.
            let one = if t.name.ends_with(".bias") {
                0.0f32
            } else {
                1.0
            };
            (0..t.dims[0]).flat_map(|_| one.to_le_bytes()).collect()
        } else {
            random_tensor(t.dtype, t.dims[1], t.dims[0], &mut rng)?
        };
        debug_assert_eq!(data.len(), size);
        w.write_all(&data).map_err(io)?;
        let pad = size.next_multiple_of(ALIGN) - size;
        w.write_all(&vec![0u8; pad]).map_err(io)?;
        written += size + pad;
    }
    w.flush().map_err(io)?;
    Ok((h.len() + written) as u64)
}

/// `cargo xtask synth-model …`.
pub fn synth_model(args: &[String]) -> Result {
    let usage = "usage: cargo xtask synth-model --shape NAME --type q4_k_m|q4_0|q4_1|q8_0|f16 --out PATH [--tokenizer GGUF] [--seed N]";
    let (mut shape, mut ftype, mut out) = (None, None, None);
    let mut donor = crate::root().join("../shared/tiny/tiny-llama-q4_k_m.gguf");
    let mut seed = 1u64;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{a} needs a value; {usage}"))
        };
        match a.as_str() {
            "--shape" => shape = Some(val()?),
            "--type" => ftype = Some(val()?),
            "--out" => out = Some(PathBuf::from(val()?)),
            "--tokenizer" => donor = PathBuf::from(val()?),
            "--seed" => {
                seed = val()?
                    .parse()
                    .map_err(|_| format!("--seed: a number; {usage}"))?
            }
            other => return Err(format!("unknown argument `{other}`; {usage}")),
        }
    }
    let names: Vec<&str> = SHAPES.iter().map(|s| s.name).collect();
    let shape = shape.ok_or(usage)?;
    let s = SHAPES
        .iter()
        .find(|s| s.name == shape)
        .ok_or_else(|| format!("--shape {shape}: one of {}", names.join(", ")))?;
    let ty = Types::of(&ftype.ok_or(usage)?)?;
    let out = out.ok_or(usage)?;
    let src = FileSource::open(&donor).map_err(|e| format!("{}: {e}", donor.display()))?;
    let g = GgufFile::parse(&src).map_err(|e| format!("{}: {e}", donor.display()))?;
    let n_donor = g
        .get_array("tokenizer.ggml.tokens")
        .map_err(|e| e.to_string())?
        .len();
    let n_vocab = s.n_vocab.max(n_donor);
    let shape_v = Shape { n_vocab, ..*s };
    let ts = tensors(&shape_v, &ty);
    let kv = metadata(&shape_v, n_vocab, &g);
    let t0 = std::time::Instant::now();
    let bytes = write(&out, &kv, &ts, seed)?;
    eprintln!(
        "{}: synthetic {} ({} tensors, vocabulary {n_vocab}), {:.1} MiB in {:.1} s",
        out.display(),
        s.name,
        ts.len(),
        bytes as f64 / (1 << 20) as f64,
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine::backend::cpu::CpuModel;
    use engine::model::{ForwardPass, Logits};

    /// Every shape's tensor list is what its family loads (names, shapes, the split fused
    /// tensors), and a small one runs to finite logits with the donor's tokenizer.
    #[test]
    fn synthetic_models_load_and_run() {
        let donor = crate::root().join("../shared/tiny/tiny-llama-q4_k_m.gguf");
        if !donor.exists() {
            panic!("{} missing (../shared/tiny)", donor.display());
        }
        let dir = std::env::temp_dir().join(format!("slm-synth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("smollm2.gguf");
        let args: Vec<String> = [
            "--shape",
            "smollm2-135m",
            "--type",
            "q4_k_m",
            "--out",
            out.to_str().unwrap(),
            "--tokenizer",
            donor.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        synth_model(&args).unwrap();
        let src = FileSource::open(&out).unwrap();
        let g = GgufFile::parse(&src).unwrap();
        let mut m = CpuModel::load(&g, &src, 64, 1).unwrap();
        let logits = m.forward(&[1, 2, 3], 0, Logits::Last).unwrap();
        assert_eq!(logits.len(), 49152);
        assert!(logits.iter().all(|v| v.is_finite()));
        let _ = std::fs::remove_dir_all(&dir);
        // The other shapes: metadata and tensor list agree with what the family reads.
        for s in SHAPES {
            let ts = tensors(s, &Types::of("q4_0").unwrap());
            assert!(
                ts.iter().any(|t| t.name == "token_embd.weight"),
                "{}",
                s.name
            );
            assert_eq!(ts.iter().any(|t| t.name == "output.weight"), !s.tied);
        }
    }
}
