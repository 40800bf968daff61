//! Fuzz the GGUF parser: any bytes, read whole or as uneven chunks, must give a header or a typed
//! error — never a panic, a hang or an allocation sized by an untrusted count.
#![no_main]

use std::sync::Arc;

use engine::gguf::{ChunkedSource, GgufFile};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let whole = GgufFile::parse_bytes(data);
    // The first byte picks a chunk size, so chunk boundaries land everywhere.
    let chunk = 1 + data.first().copied().unwrap_or(0) as usize;
    let src = ChunkedSource::new(data.chunks(chunk).map(Arc::from));
    let chunked = GgufFile::parse(&src);
    assert_eq!(whole.is_ok(), chunked.is_ok());
    if let Ok(f) = whole {
        for t in &f.tensors {
            let a = f.read_tensor(data, t).expect("tensor inside the file");
            let b = f.read_tensor(&src, t).expect("tensor inside the file");
            assert_eq!(a.as_slice(), b.as_slice());
        }
        if let Ok(cfg) = engine::arch::config(&f) {
            let _ = cfg.kv_dim();
        }
        let _ = engine::tokenizer::Tokenizer::from_gguf(&f);
    }
});
