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
