//! Fuzz tokenizer construction from GGUF metadata: the input becomes a vocabulary (tokens,
//! scores, types), merges and special-token ids in a well-formed GGUF, so the fuzzer explores
//! what a file can say rather than the parser's framing. Building must give a tokenizer or a
//! typed error; a built tokenizer must encode and decode any text without panicking.
#![no_main]

use engine::gguf::GgufFile;
use engine::tokenizer::Tokenizer;
use libfuzzer_sys::fuzz_target;

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s);
}

fn kv_header(out: &mut Vec<u8>, key: &str, ty: u32) {
    put_str(out, key.as_bytes());
    out.extend(ty.to_le_bytes());
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    // Sections separated by 0xff: tokens (split at 0x00), merges (split at 0x00), ids.
    let mut sections = rest.split(|&b| b == 0xff);
    let tokens: Vec<&[u8]> = sections
        .next()
        .unwrap_or(&[])
        .split(|&b| b == 0)
        .take(4096)
        .collect();
    let merges: Vec<&[u8]> = sections
        .next()
        .unwrap_or(&[])
        .split(|&b| b == 0)
        .take(4096)
        .collect();
    let ids = sections.next().unwrap_or(&[]);
    let id = |i: usize| ids.get(i).map_or(0u32, |&b| b as u32);

    let mut kv = Vec::new();
    let mut n_kv = 0u64;
    kv_header(&mut kv, "tokenizer.ggml.model", 8);
    put_str(&mut kv, if flags & 1 == 0 { b"llama" } else { b"gpt2" });
    n_kv += 1;
    kv_header(&mut kv, "tokenizer.ggml.tokens", 9);
    kv.extend(8u32.to_le_bytes());
    kv.extend((tokens.len() as u64).to_le_bytes());
    for t in &tokens {
        put_str(&mut kv, t);
    }
    n_kv += 1;
    if flags & 2 != 0 {
        kv_header(&mut kv, "tokenizer.ggml.scores", 9);
        kv.extend(6u32.to_le_bytes());
        kv.extend((tokens.len() as u64).to_le_bytes());
        for (i, t) in tokens.iter().enumerate() {
            kv.extend((-(i as f32) * t.len() as f32).to_le_bytes());
        }
        n_kv += 1;
    }
    if flags & 4 != 0 {
        kv_header(&mut kv, "tokenizer.ggml.token_type", 9);
        kv.extend(5u32.to_le_bytes());
        kv.extend((tokens.len() as u64).to_le_bytes());
        for t in &tokens {
            kv.extend((t.first().map_or(1, |&b| (b % 7) as i32)).to_le_bytes());
        }
        n_kv += 1;
    }
    if flags & 8 != 0 {
        kv_header(&mut kv, "tokenizer.ggml.merges", 9);
        kv.extend(8u32.to_le_bytes());
        kv.extend((merges.len() as u64).to_le_bytes());
        for m in &merges {
            put_str(&mut kv, m);
        }
        n_kv += 1;
    }
    for (i, key) in [
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.eot_token_id",
    ]
    .iter()
    .enumerate()
    {
        if flags & (16 << i) != 0 {
            kv_header(&mut kv, key, 4);
            kv.extend((id(i) * 37).to_le_bytes());
            n_kv += 1;
        }
    }
    if flags & 128 != 0 {
        kv_header(&mut kv, "tokenizer.ggml.add_bos_token", 7);
        kv.push(id(3) as u8 & 1);
        n_kv += 1;
    }
    let mut file = b"GGUF".to_vec();
    file.extend(3u32.to_le_bytes());
    file.extend(0u64.to_le_bytes());
    file.extend(n_kv.to_le_bytes());
    file.extend(kv);

    let Ok(g) = GgufFile::parse_bytes(&file) else {
        return;
    };
    let Ok(tok) = Tokenizer::from_gguf(&g) else {
        return;
    };
    let text = String::from_utf8_lossy(ids);
    if let Ok(enc) = tok.encode(&text, true, flags & 1 != 0) {
        for &t in &enc {
            assert!(
                (t as usize) < tok.n_vocab(),
                "id {t} outside the vocabulary"
            );
        }
        let _ = tok.decode(&enc, true);
    }
});
