//! The parser against the two real test models and their llama.cpp metadata dumps.
mod common;
use common::*;
use engine::gguf::{FileSource, GgufFile};

fn check(file: &str, key: &str) {
    let src = FileSource::open(model_path(file)).unwrap();
    let f = GgufFile::parse(&src).unwrap();
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(golden_dir().join(format!("{key}.gguf_meta.json"))).unwrap(),
    )
    .unwrap();
    let kv = meta["kv"].as_object().unwrap();
    assert!(f.metadata.len() >= kv.len());
    for (k, v) in kv {
        let ours = f.get(k).unwrap_or_else(|| panic!("missing key {k}"));
        if let Some(len) = v.get("len") {
            assert_eq!(
                ours.as_array().unwrap().len() as u64,
                len.as_u64().unwrap(),
                "{k}"
            );
        } else if let Some(s) = v.as_str() {
            assert_eq!(ours.as_str(), Some(s), "{k}");
        } else if let Some(n) = v.as_f64() {
            assert!(
                (ours.as_f64().unwrap() - n).abs() <= 1e-6 * n.abs().max(1.0),
                "{k}"
            );
        }
    }
    let tensors = meta["tensors"].as_array().unwrap();
    assert_eq!(f.tensors.len(), tensors.len());
    for t in tensors {
        let ours = f.tensor(t["name"].as_str().unwrap()).unwrap();
        let shape: Vec<u64> = t["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect();
        assert_eq!(ours.dims, shape, "{}", ours.name);
        assert_eq!(ours.size, t["n_bytes"].as_u64().unwrap(), "{}", ours.name);
        assert_eq!(
            ours.dtype.name().to_uppercase(),
            t["type"].as_str().unwrap().to_uppercase()
        );
    }
}

#[test]
fn smollm2_header_matches_llama_cpp_dump() {
    check(SMOLLM2, SMOLLM2_KEY);
}

#[test]
fn gemma3_header_matches_llama_cpp_dump() {
    check(GEMMA3, GEMMA3_KEY);
}

/// Gemma 3 270M's hyperparameters as llama.cpp derives them (`../shared/README.md`): head dim
/// 256 ≠ n_embd / n_head, sliding window 512 on five of every six layers (0-4, 6-10, 12-16)
/// with RoPE base 10 000, global layers 5, 11, 17 with base 1e6, √640 embedding scale, 1/√256
/// query scale on every layer, no softcaps.
#[test]
fn gemma3_config_from_metadata() {
    use engine::model::{RopeLayout, RopeSpec};
    let src = FileSource::open(model_path(GEMMA3)).unwrap();
    let c = engine::arch::config(&GgufFile::parse(&src).unwrap()).unwrap();
    assert_eq!(c.arch, "gemma3");
    assert_eq!(
        (
            c.n_embd,
            c.n_layer,
            c.n_head,
            c.n_head_kv,
            c.head_dim,
            c.n_ff
        ),
        (640, 18, 4, 1, 256, 2048)
    );
    assert_eq!((c.n_vocab, c.rope_layout), (262_144, RopeLayout::Neox));
    assert_eq!(c.sliding_window, 512);
    assert_eq!(c.layers.len(), c.n_layer);
    let rope = |base: f32| {
        Some(RopeSpec {
            base,
            pos_scale: 1.0,
            mscale: 1.0,
        })
    };
    for (l, spec) in c.layers.iter().enumerate() {
        let global = [5, 11, 17].contains(&l);
        assert_eq!(c.is_sliding(l), !global, "layer {l}");
        let (window, base) = if global {
            (0, 1_000_000.0)
        } else {
            (512, 10_000.0)
        };
        assert_eq!(spec.window, window, "layer {l}: window");
        assert_eq!(spec.rope, rope(base), "layer {l}: RoPE");
        assert!(
            (spec.attn_scale - 1.0 / 16.0).abs() < 1e-7,
            "layer {l}: attn_scale {}",
            spec.attn_scale
        );
        assert_eq!(spec.attn_softcap, 0.0, "layer {l}: softcap");
    }
    assert!((c.embd_scale - 640f32.sqrt()).abs() < 1e-6);
    assert_eq!(
        (c.final_softcap, c.logit_scale, c.residual_scale),
        (0.0, 1.0, 1.0)
    );
}
