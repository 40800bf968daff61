//! Fuzz the GGUF parser: any bytes, read whole or the browser's way (the header from growing
//! prefixes, then the file in segments cut at tensor starts), must give a header or a typed
//! error — never a panic, a hang or an allocation sized by an untrusted count.
#![no_main]

use std::sync::Arc;

use engine::gguf::{GgufFile, Prefix, SharedSource};
use engine::tensor::AlignedBytes;
use engine::Error;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let whole = GgufFile::parse_bytes(data);
    let len = data.len() as u64;
    // The first byte picks the chunk size the prefix grows by, as the worker's chunks do.
    let chunk = 1 + data.first().copied().unwrap_or(0) as usize;
    let mut have = 0;
    let from_prefix = loop {
        match GgufFile::parse(&Prefix {
            bytes: &data[..have],
            len,
        }) {
            Err(Error::Truncated { offset, needed, .. })
                if offset.saturating_add(needed) <= len && have < data.len() =>
            {
                have = (have + chunk).min(data.len());
            }
            r => break r,
        }
    };
    assert_eq!(whole.is_ok(), from_prefix.is_ok());
    let Ok(f) = whole else { return };
    // Segments of at most a size from the second byte (some files' tensors do not fit: a
    // typed error); every tensor reads the same as from the whole file.
    let max = 64 * (1 + data.get(1).copied().unwrap_or(0) as u64);
    if let Ok(sizes) = SharedSource::plan(&f, len, max) {
        assert_eq!(sizes.iter().sum::<u64>(), len);
        let mut at = 0;
        let segments = sizes
            .iter()
            .map(|&n| {
                assert!(n <= max);
                let s = AlignedBytes::from_slice(&data[at..at + n as usize]);
                at += n as usize;
                Arc::new(s)
            })
            .collect();
        let src = SharedSource::from_segments(segments);
        for t in &f.tensors {
            let a = f.read_tensor(data, t).expect("tensor inside the file");
            let b = f.read_tensor(&src, t).expect("tensor inside the file");
            assert_eq!(a.as_slice(), b.as_slice());
        }
    }
    if let Ok(cfg) = engine::arch::config(&f) {
        let _ = cfg.kv_dim();
    }
    let _ = engine::tokenizer::Tokenizer::from_gguf(&f);
});
