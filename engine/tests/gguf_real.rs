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
/// 256 ≠ n_embd / n_head, sliding window 512 with every 6th layer global, RoPE base 10 000 on
/// sliding layers and 1e6 on global ones, √640 embedding scale, 1/√256 query scale.
#[test]
fn gemma3_config_from_metadata() {
    use engine::model::{Arch, ModelConfig, RopeLayout};
    let src = FileSource::open(model_path(GEMMA3)).unwrap();
    let c = ModelConfig::from_gguf(&GgufFile::parse(&src).unwrap()).unwrap();
    assert_eq!(c.arch, Arch::Gemma3);
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
    let global: Vec<usize> = (0..c.n_layer).filter(|&l| !c.is_sliding(l)).collect();
    assert_eq!(global, [5, 11, 17]);
    assert_eq!(c.rope_of_layer(0), (10_000.0, 1.0));
    assert_eq!(c.rope_of_layer(5), (1_000_000.0, 1.0));
    assert!((c.embd_scale - 640f32.sqrt()).abs() < 1e-6);
    assert!((c.attn_scale - 1.0 / 16.0).abs() < 1e-7);
}
