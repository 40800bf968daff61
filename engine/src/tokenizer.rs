//! Tokenizer built from the GGUF's own vocabulary (`tokenizer.ggml.*`), matching llama.cpp
//! (`src/llama-vocab.cpp`) token for token.
//!
//! - `gpt2` (byte-level BPE): the `tokenizers` crate's BPE model with the file's merges, behind
//!   the pre-tokenizer regexes llama.cpp uses for the file's `tokenizer.ggml.pre`.
//! - `llama` (SentencePiece with scores and byte fallback): llama.cpp's SPM algorithm (merge the
//!   adjacent pair whose concatenation is the highest-scoring vocabulary entry, leftmost first;
//!   symbols that never became a token fall back to `<0xAB>` byte tokens), implemented here
//!   directly so that scores, ties and unknown characters behave exactly as in llama.cpp.
//!
//! Both share llama.cpp's special-token partition: before the model sees the text, user-defined
//! tokens (always) and control tokens (only with `parse_special`) are cut out of it, longest
//! token first.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use tokenizers::models::bpe::{Vocab as HfVocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{
    Model, OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer, SplitDelimiterBehavior,
};

use crate::error::{Error, Result};
use crate::gguf::{GgufFile, MetaValue};

// Token attributes, the same bits as llama.cpp's `llama_token_attr`.
const ATTR_UNKNOWN: u32 = 1 << 0;
const ATTR_UNUSED: u32 = 1 << 1;
const ATTR_NORMAL: u32 = 1 << 2;
const ATTR_CONTROL: u32 = 1 << 3;
const ATTR_USER_DEFINED: u32 = 1 << 4;
const ATTR_BYTE: u32 = 1 << 5;

/// Most tokens a vocabulary may have (guards against absurd metadata).
const MAX_VOCAB: usize = 1 << 22;

/// SentencePiece's escaped space, U+2581.
const SPM_SPACE: &str = "\u{2581}";

/// Which algorithm turns a text fragment into tokens.
enum Model_ {
    /// SentencePiece (`tokenizer.ggml.model = llama`).
    Spm,
    /// Byte-level BPE (`tokenizer.ggml.model = gpt2`).
    Bpe(Box<BpeModel>),
}

/// The `tokenizers` pieces of a byte-level BPE tokenizer.
struct BpeModel {
    /// Regex splits applied in order (llama.cpp's `regex_exprs`), each isolating its matches.
    splits: Vec<Split>,
    /// Maps the bytes of each piece to GPT-2's printable characters.
    byte_level: ByteLevel,
    model: BPE,
}

/// One vocabulary entry; its text is `Vocab::buf[start..end]`.
#[derive(Clone, Copy)]
struct TokenData {
    start: u32,
    end: u32,
    score: f32,
    attr: u32,
}

/// The vocabulary: all token texts in one buffer, plus an open-addressing hash index from text
/// to id (cheaper to build for 262k tokens than a `HashMap<String, u32>`).
struct Vocab {
    buf: String,
    data: Vec<TokenData>,
    /// Token ids, `u32::MAX` for empty slots; the length is a power of two.
    slots: Vec<u32>,
}

fn hash_text(s: &[u8]) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let mut h = (s.len() as u64).wrapping_mul(K);
    let mut chunks = s.chunks_exact(8);
    for c in &mut chunks {
        let v = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        h = (h.rotate_left(5) ^ v).wrapping_mul(K);
    }
    let rem = chunks.remainder();
    if !rem.is_empty() {
        let mut b = [0u8; 8];
        b[..rem.len()].copy_from_slice(rem);
        h = (h.rotate_left(5) ^ u64::from_le_bytes(b)).wrapping_mul(K);
    }
    h ^= h >> 29;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^ (h >> 32)
}

impl Vocab {
    fn with_capacity(n: usize, bytes: usize) -> Self {
        let slots = (2 * n).next_power_of_two().max(16);
        Vocab {
            buf: String::with_capacity(bytes),
            data: Vec::with_capacity(n),
            slots: vec![u32::MAX; slots],
        }
    }

    fn len(&self) -> usize {
        self.data.len()
    }

    fn text(&self, id: u32) -> &str {
        let t = &self.data[id as usize];
        &self.buf[t.start as usize..t.end as usize]
    }

    fn get(&self, s: &str) -> Option<u32> {
        let mask = self.slots.len() - 1;
        let mut i = hash_text(s.as_bytes()) as usize & mask;
        loop {
            let id = self.slots[i];
            if id == u32::MAX {
                return None;
            }
            if self.text(id) == s {
                return Some(id);
            }
            i = (i + 1) & mask;
        }
    }

    /// Append a token; `Err(previous id)` if the text is already present.
    fn push(&mut self, s: &str, score: f32, attr: u32) -> std::result::Result<u32, u32> {
        let id = self.data.len() as u32;
        let mask = self.slots.len() - 1;
        let mut i = hash_text(s.as_bytes()) as usize & mask;
        loop {
            let other = self.slots[i];
            if other == u32::MAX {
                break;
            }
            if self.text(other) == s {
                return Err(other);
            }
            i = (i + 1) & mask;
        }
        self.slots[i] = id;
        let start = self.buf.len() as u32;
        self.buf.push_str(s);
        self.data.push(TokenData {
            start,
            end: self.buf.len() as u32,
            score,
            attr,
        });
        Ok(id)
    }
}

/// A piece of the input after the special-token partition.
#[derive(Clone, Copy)]
enum Fragment {
    /// Byte range of raw text still to tokenize.
    Text(usize, usize),
    /// A special token cut out of the text.
    Token(u32),
}

/// A tokenizer for one model: encodes text to ids and decodes ids to text exactly as llama.cpp
/// does for the same GGUF.
pub struct Tokenizer {
    model: Model_,
    vocab: Vocab,
    /// Control, user-defined and unknown tokens, longest text first (llama.cpp's
    /// `cache_special_tokens`).
    special_cache: Vec<u32>,
    /// Token for each byte value: `<0xAB>` (SPM) or the byte-level character (BPE).
    byte_tokens: Vec<Option<u32>>,
    /// Byte-level BPE: GPT-2 character → byte.
    byte_decoder: HashMap<char, u8>,
    bos: Option<u32>,
    eos: Option<u32>,
    eog: Vec<u32>,
    add_bos: bool,
    add_eos: bool,
    add_space_prefix: bool,
    clean_spaces: bool,
    /// What was dropped or replaced while reading the metadata (special-token ids outside the
    /// vocabulary), for the caller to show.
    warnings: Vec<String>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field(
                "model",
                &match self.model {
                    Model_::Spm => "spm",
                    Model_::Bpe(_) => "bpe",
                },
            )
            .field("n_vocab", &self.vocab.len())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("eog", &self.eog)
            .field("add_bos", &self.add_bos)
            .finish()
    }
}

fn terr(what: impl Into<String>) -> Error {
    Error::Tokenizer(what.into())
}

/// GPT-2's byte ↔ printable character table: printable Latin-1 bytes map to themselves, the
/// others to U+0100 onwards in byte order.
fn gpt2_byte_chars() -> [char; 256] {
    let mut out = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..256u32 {
        let printable =
            (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        let c = if printable {
            b
        } else {
            let c = next;
            next += 1;
            c
        };
        out[b as usize] = char::from_u32(c).unwrap_or('\u{fffd}');
    }
    out
}

/// The pre-tokenizer regexes llama.cpp uses for `tokenizer.ggml.pre`, plus whether whole words
/// found in the vocabulary skip the merges (`ignore_merges`), whether decoding cleans spaces,
/// and the default `add_bos`.
struct PreConfig {
    regexes: &'static [&'static str],
    ignore_merges: bool,
    clean_spaces: bool,
    add_bos: bool,
}

const RE_GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
const RE_LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const RE_QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn pre_config(pre: &str) -> PreConfig {
    let cfg = |regexes, ignore_merges, clean_spaces, add_bos| PreConfig {
        regexes,
        ignore_merges,
        clean_spaces,
        add_bos,
    };
    match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" => cfg(&[RE_LLAMA3], true, true, true),
        "dbrx" | "smaug-bpe" => cfg(&[RE_LLAMA3], false, true, false),
        "smollm" | "command-r" => cfg(&[r"\p{N}", RE_GPT2], false, false, false),
        "starcoder" | "refact" | "codeshell" | "exaone" | "minerva-7b" => {
            cfg(&[r"\p{N}", RE_GPT2], false, true, false)
        }
        "qwen2" | "deepseek-r1-qwen" => cfg(&[RE_QWEN2], false, false, false),
        "stablelm2" | "megrez" => cfg(&[RE_QWEN2], false, true, false),
        "gpt-2" | "phi-2" | "mpt" | "olmo" | "jais" | "jina-es" | "jina-de" | "jina-v2-es"
        | "jina-v2-de" | "gigachat" | "exaone4" | "roberta-bpe" | "jina-v1-en" | "jina-v2-code" => {
            cfg(&[RE_GPT2], false, true, false)
        }
        "" | "default" => cfg(
            &[
                r"[\p{P}\$\+<=>\^~\|]+",
                RE_GPT2,
                r"\p{N}+",
                r"[0-9][0-9][0-9]",
            ],
            false,
            true,
            false,
        ),
        // Not in our table: GPT-2's regex is the closest general-purpose choice.
        _ => cfg(&[RE_GPT2], false, true, false),
    }
}

fn string_array<'a>(gguf: &'a GgufFile, key: &str) -> Result<Vec<&'a str>> {
    let a = gguf.get_array(key)?;
    match a.strings() {
        Some(it) => Ok(it.collect()),
        None => Err(Error::metadata(
            key,
            format!("is an array of {}, not of strings", a.elem.name()),
        )),
    }
}

/// An optional numeric array (`scores`, `token_type`): its values, or an error naming the key
/// when present with another type.
fn value_array<'a>(gguf: &'a GgufFile, key: &str) -> Result<Option<&'a [MetaValue]>> {
    match gguf.get(key) {
        None => Ok(None),
        Some(v) => {
            let a = v
                .as_array()
                .ok_or_else(|| Error::metadata(key, "not an array"))?;
            a.values().map(Some).ok_or_else(|| {
                Error::metadata(
                    key,
                    format!("is an array of {}, not of numbers", a.elem.name()),
                )
            })
        }
    }
}

fn opt_bool(gguf: &GgufFile, key: &str) -> Option<bool> {
    gguf.get(key).and_then(MetaValue::as_bool)
}

impl Tokenizer {
    /// Build from `tokenizer.ggml.model`, `.tokens`, `.scores`, `.token_type`, `.merges`,
    /// `.bos_token_id`, `.eos_token_id`, `.add_bos_token`, ...
    ///
    /// Errors: [`Error::Tokenizer`] for an unknown tokenizer model or inconsistent vocabulary,
    /// [`Error::Metadata`] for missing or mistyped keys.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        let model_name = gguf.get_str("tokenizer.ggml.model")?;
        let pre = gguf
            .get("tokenizer.ggml.pre")
            .and_then(MetaValue::as_str)
            .unwrap_or("");
        let is_spm = match model_name {
            "llama" => true,
            "gpt2" => false,
            other => {
                return Err(terr(format!(
                    "unsupported tokenizer model `{other}` (supported: llama, gpt2)"
                )))
            }
        };

        // Vocabulary.
        let texts = string_array(gguf, "tokenizer.ggml.tokens")?;
        let n = texts.len();
        if n == 0 || n > MAX_VOCAB {
            return Err(terr(format!("vocabulary of {n} tokens")));
        }
        let scores = value_array(gguf, "tokenizer.ggml.scores")?;
        let types = value_array(gguf, "tokenizer.ggml.token_type")?;
        if scores.is_some_and(|s| s.len() < n) || types.is_some_and(|t| t.len() < n) {
            return Err(terr("scores or token types shorter than the vocabulary"));
        }
        let bytes: usize = texts.iter().map(|t| t.len()).sum();
        if bytes.saturating_add(16 * n) > u32::MAX as usize {
            return Err(terr("vocabulary text too large"));
        }
        let mut vocab = Vocab::with_capacity(n, bytes);
        for (i, t) in texts.iter().enumerate() {
            let empty;
            let text: &str = if t.is_empty() {
                empty = format!("[EMPTY_{i}]");
                &empty
            } else {
                t
            };
            let score = scores
                .and_then(|s| s[i].as_f64())
                .map(|v| v as f32)
                .unwrap_or(0.0);
            let attr = match types.map(|t| t[i].as_i64()) {
                None => ATTR_NORMAL,
                Some(Some(1)) => ATTR_NORMAL,
                Some(Some(2)) => ATTR_UNKNOWN,
                Some(Some(3)) => ATTR_CONTROL,
                Some(Some(4)) => ATTR_USER_DEFINED,
                Some(Some(5)) => ATTR_UNUSED,
                Some(Some(6)) => ATTR_BYTE,
                Some(_) => 0,
            };
            if let Err(prev) = vocab.push(text, score, attr) {
                return Err(terr(format!(
                    "duplicate token {text:?} with ids {prev} and {i}"
                )));
            }
        }

        // Model-type defaults, then metadata.
        let (mut bos, mut eos, unk): (Option<u32>, Option<u32>, Option<u32>) = if is_spm {
            (Some(1), Some(2), Some(0))
        } else {
            (Some(11), Some(11), None)
        };
        let pre_cfg = pre_config(pre);
        let mut add_bos = if is_spm { true } else { pre_cfg.add_bos };
        let mut add_space_prefix = is_spm;
        let clean_spaces = if is_spm { false } else { pre_cfg.clean_spaces };
        if let Some(v) = opt_bool(gguf, "tokenizer.ggml.add_space_prefix") {
            add_space_prefix = v;
        }
        let in_range = |id: Option<u32>| id.filter(|&i| (i as usize) < n);
        // A special-token id outside the vocabulary is dropped with a warning and the default
        // kept, as llama.cpp does (`bad special token`).
        let mut warnings = Vec::new();
        let mut read_id = |key: &str, default: Option<u32>| -> Option<u32> {
            match gguf.get(key).map(|v| (v.as_u64(), v)) {
                Some((Some(v), _)) if v < n as u64 => Some(v as u32),
                Some((id, v)) => {
                    let d = in_range(default);
                    let shown = id.map_or_else(|| format!("{v:?}"), |i| i.to_string());
                    warnings.push(format!(
                        "`{key}` = {shown} is not a token id of the {n}-token vocabulary; using {}",
                        d.map_or("none".to_string(), |d| d.to_string())
                    ));
                    d
                }
                None => in_range(default),
            }
        };
        bos = read_id("tokenizer.ggml.bos_token_id", bos);
        eos = read_id("tokenizer.ggml.eos_token_id", eos);
        let _unk = read_id("tokenizer.ggml.unknown_token_id", unk);
        let mut eot = read_id("tokenizer.ggml.eot_token_id", None);
        let mut eom = read_id("tokenizer.ggml.eom_token_id", None);
        let mut fim_pad = read_id("tokenizer.ggml.fim_pad_token_id", None);
        let mut fim_rep = read_id("tokenizer.ggml.fim_rep_token_id", None);
        let mut fim_sep = read_id("tokenizer.ggml.fim_sep_token_id", None);
        if let Some(v) = opt_bool(gguf, "tokenizer.ggml.add_bos_token") {
            add_bos = v;
        }
        let add_eos = opt_bool(gguf, "tokenizer.ggml.add_eos_token").unwrap_or(false);
        if add_bos && bos.is_none() {
            return Err(terr("add_bos_token is true but there is no BOS token"));
        }
        if add_eos && eos.is_none() {
            return Err(terr("add_eos_token is true but there is no EOS token"));
        }

        // Auto-detect end-of-turn / FIM tokens by their text, as llama.cpp does, marking them
        // as control tokens.
        const EOT: &[&str] = &[
            "<|eot_id|>",
            "<|im_end|>",
            "<|end|>",
            "<end_of_turn>",
            "<|endoftext|>",
            "<|end_of_text|>",
            "<EOT>",
            "_<EOT>",
            "[EOT]",
            "<｜end▁of▁sentence｜>",
            "<end_of_utterance>",
        ];
        const FIM_PAD: &[&str] = &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"];
        const FIM_REP: &[&str] = &[
            "<|fim_repo|>",
            "<|repo_name|>",
            "<fim-repo>",
            "<REPO>",
            "<reponame>",
        ];
        const FIM_SEP: &[&str] = &["<|file_sep|>"];
        const EOG: &[&str] = &[
            "<|eot_id|>",
            "<|im_end|>",
            "<|end|>",
            "<|return|>",
            "<|call|>",
            "<|flush|>",
            "<|calls|>",
            "<end_of_turn>",
            "<|endoftext|>",
            "</s>",
            "<|eom_id|>",
            "<EOT>",
            "_<EOT>",
            "[EOT]",
            "[EOS]",
            "<|end_of_text|>",
            "<end_of_utterance>",
            "<eos>",
            "<turn|>",
            "<|tool_response>",
            "<｜end▁of▁sentence｜>",
            "[e~[",
        ];
        let detect = |slot: &mut Option<u32>, names: &[&str], vocab: &mut Vocab| {
            if slot.is_some() {
                return;
            }
            if let Some(id) = names.iter().find_map(|s| vocab.get(s)) {
                *slot = Some(id);
                vocab.data[id as usize].attr |= ATTR_CONTROL;
            }
        };
        detect(&mut eot, EOT, &mut vocab);
        detect(&mut eom, &["<|eom_id|>"], &mut vocab);
        detect(&mut fim_pad, FIM_PAD, &mut vocab);
        detect(&mut fim_rep, FIM_REP, &mut vocab);
        detect(&mut fim_sep, FIM_SEP, &mut vocab);

        // Control tokens whose text says "unused".
        for id in 0..n as u32 {
            if vocab.data[id as usize].attr & ATTR_CONTROL != 0 && vocab.text(id).contains("unused")
            {
                vocab.data[id as usize].attr |= ATTR_UNUSED;
            }
        }

        // End-of-generation set.
        let mut eog: Vec<u32> = [fim_pad, fim_rep, fim_sep].into_iter().flatten().collect();
        for name in EOG {
            if let Some(id) = vocab.get(name) {
                eog.push(id);
                vocab.data[id as usize].attr |= ATTR_CONTROL;
            }
        }
        for name in ["<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"] {
            if let Some(id) = vocab.get(name) {
                vocab.data[id as usize].attr = ATTR_USER_DEFINED;
            }
        }
        eog.extend([eos, eot, eom].into_iter().flatten());
        eog.sort_unstable();
        eog.dedup();
        let has = |eog: &[u32], vocab: &Vocab, s: &str| eog.iter().any(|&i| vocab.text(i) == s);
        let drop_end = has(&eog, &vocab, "<|end|>")
            && ((has(&eog, &vocab, "<|return|>") && has(&eog, &vocab, "<|call|>"))
                || ((has(&eog, &vocab, "<|call|>") || has(&eog, &vocab, "<|calls|>"))
                    && has(&eog, &vocab, "<|flush|>")));
        if drop_end {
            if let Some(end) = vocab.get("<|end|>") {
                eog.retain(|&i| i != end);
                vocab.data[end as usize].attr = ATTR_USER_DEFINED;
            }
        }
        if has(&eog, &vocab, "<|tool_response>") {
            if let Some(s) = vocab.get("</s>") {
                if eog.contains(&s) {
                    eog.retain(|&i| i != s);
                    vocab.data[s as usize].attr = ATTR_NORMAL;
                }
            }
        }

        // Special-token partition order: longest text first (ties by id).
        let mut special_cache: Vec<u32> = (0..n as u32)
            .filter(|&i| {
                vocab.data[i as usize].attr & (ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN) != 0
            })
            .collect();
        let tlen = |i: u32| {
            let t = vocab.data[i as usize];
            t.end - t.start
        };
        special_cache.sort_by(|&a, &b| tlen(b).cmp(&tlen(a)).then(a.cmp(&b)));

        // Byte tokens and the fragment model.
        let mut byte_tokens = vec![None; 256];
        let mut byte_decoder = HashMap::new();
        let model = if is_spm {
            for (b, slot) in byte_tokens.iter_mut().enumerate() {
                *slot = vocab.get(&format!("<0x{b:02X}>")).or_else(|| {
                    std::str::from_utf8(&[b as u8])
                        .ok()
                        .and_then(|s| vocab.get(s))
                });
            }
            Model_::Spm
        } else {
            let chars = gpt2_byte_chars();
            for (b, c) in chars.iter().enumerate() {
                byte_tokens[b] = vocab.get(c.encode_utf8(&mut [0u8; 4]));
                byte_decoder.insert(*c, b as u8);
            }
            Model_::Bpe(Box::new(build_bpe(gguf, &vocab, &pre_cfg)?))
        };

        Ok(Tokenizer {
            model,
            vocab,
            special_cache,
            byte_tokens,
            byte_decoder,
            bos,
            eos,
            eog,
            add_bos,
            add_eos,
            add_space_prefix,
            clean_spaces,
            warnings,
        })
    }

    /// What was dropped or replaced while reading the metadata (e.g. a special-token id
    /// outside the vocabulary), one sentence each.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Tokenize `text` as `llama_tokenize(text, add_special = add_bos, parse_special)` does:
    /// `add_bos` adds BOS (and EOS) only where the GGUF says `add_bos_token` (`add_eos_token`);
    /// `parse_special` turns control-token text such as `<|im_start|>` into its id (user-defined
    /// tokens are always matched).
    ///
    /// Errors: [`Error::Tokenizer`] if the BPE model fails on a piece.
    pub fn encode(&self, text: &str, add_bos: bool, parse_special: bool) -> Result<Vec<u32>> {
        let fragments = self.partition(text, parse_special);
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if add_bos && self.add_bos {
            if let Some(b) = self.bos {
                out.push(b);
            }
        }
        match &self.model {
            Model_::Spm => {
                let mut prev_special = true;
                let mut buf = String::new();
                for f in fragments {
                    match f {
                        Fragment::Text(s, e) => {
                            buf.clear();
                            if self.add_space_prefix && prev_special {
                                buf.push_str(SPM_SPACE);
                            }
                            for c in text[s..e].chars() {
                                if c == ' ' {
                                    buf.push_str(SPM_SPACE);
                                } else {
                                    buf.push(c);
                                }
                            }
                            self.spm_tokenize(&buf, &mut out);
                            prev_special = false;
                        }
                        Fragment::Token(id) => {
                            out.push(id);
                            prev_special = true;
                        }
                    }
                }
            }
            Model_::Bpe(bpe) => {
                for f in fragments {
                    match f {
                        Fragment::Text(s, e) => self.bpe_tokenize(bpe, &text[s..e], &mut out)?,
                        Fragment::Token(id) => out.push(id),
                    }
                }
            }
        }
        if add_bos && self.add_eos {
            if let Some(e) = self.eos {
                out.push(e);
            }
        }
        Ok(out)
    }

    /// llama.cpp's `tokenizer_st_partition`: for each special token, longest first, split every
    /// remaining raw-text fragment at each of its occurrences.
    fn partition(&self, text: &str, parse_special: bool) -> Vec<Fragment> {
        if text.is_empty() {
            return Vec::new();
        }
        let mut frags = vec![Fragment::Text(0, text.len())];
        if self.special_cache.is_empty() {
            return frags;
        }
        // A token can only occur in a fragment if it occurs in the text: a cheap filter on
        // the bytes and byte pairs present avoids searching for thousands of absent tokens.
        let bytes = text.as_bytes();
        let mut first = [false; 256];
        let mut pairs = vec![0u64; 1024];
        for (i, &b) in bytes.iter().enumerate() {
            first[b as usize] = true;
            if let Some(&c) = bytes.get(i + 1) {
                let k = (b as usize) << 8 | c as usize;
                pairs[k >> 6] |= 1 << (k & 63);
            }
        }
        let mut next = Vec::new();
        for &id in &self.special_cache {
            if !parse_special
                && self.vocab.data[id as usize].attr & (ATTR_CONTROL | ATTR_UNKNOWN) != 0
            {
                continue;
            }
            let needle = self.vocab.text(id);
            let tb = needle.as_bytes();
            let maybe = match tb {
                [] => false,
                [b] => first[*b as usize],
                [b, c, ..] => {
                    let k = (*b as usize) << 8 | *c as usize;
                    pairs[k >> 6] & (1 << (k & 63)) != 0
                }
            };
            if !maybe || !text.contains(needle) {
                continue;
            }
            next.clear();
            let mut found = false;
            for &f in &frags {
                let Fragment::Text(mut s, e) = f else {
                    next.push(f);
                    continue;
                };
                while let Some(pos) = text[s..e].find(needle) {
                    found = true;
                    if pos > 0 {
                        next.push(Fragment::Text(s, s + pos));
                    }
                    next.push(Fragment::Token(id));
                    s += pos + tb.len();
                }
                if s < e {
                    next.push(Fragment::Text(s, e));
                }
            }
            if found {
                std::mem::swap(&mut frags, &mut next);
            }
        }
        frags
    }

    /// llama.cpp's SPM session on one (space-escaped) fragment.
    fn spm_tokenize(&self, text: &str, out: &mut Vec<u32>) {
        #[derive(Clone, Copy)]
        struct Sym {
            prev: isize,
            next: isize,
            start: usize,
            len: usize,
        }
        struct Bigram {
            score: f32,
            left: usize,
            right: usize,
            size: usize,
        }
        impl PartialEq for Bigram {
            fn eq(&self, o: &Self) -> bool {
                self.cmp(o) == Ordering::Equal
            }
        }
        impl Eq for Bigram {}
        impl PartialOrd for Bigram {
            fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
                Some(self.cmp(o))
            }
        }
        impl Ord for Bigram {
            // Max-heap: higher score first, then the leftmost pair.
            fn cmp(&self, o: &Self) -> Ordering {
                self.score
                    .total_cmp(&o.score)
                    .then_with(|| o.left.cmp(&self.left))
            }
        }

        let mut syms: Vec<Sym> = Vec::with_capacity(text.len());
        for (i, (start, c)) in text.char_indices().enumerate() {
            let len = c.len_utf8();
            syms.push(Sym {
                prev: i as isize - 1,
                next: if start + len == text.len() {
                    -1
                } else {
                    i as isize + 1
                },
                start,
                len,
            });
        }
        if syms.is_empty() {
            return;
        }
        let mut heap = BinaryHeap::new();
        let try_add = |heap: &mut BinaryHeap<Bigram>, syms: &[Sym], l: isize, r: isize| {
            if l < 0 || r < 0 {
                return;
            }
            let (ls, rs) = (syms[l as usize], syms[r as usize]);
            let piece = &text[ls.start..ls.start + ls.len + rs.len];
            if let Some(id) = self.vocab.get(piece) {
                heap.push(Bigram {
                    score: self.vocab.data[id as usize].score,
                    left: l as usize,
                    right: r as usize,
                    size: piece.len(),
                });
            }
        };
        for i in 1..syms.len() {
            try_add(&mut heap, &syms, i as isize - 1, i as isize);
        }
        while let Some(bg) = heap.pop() {
            let (l, r) = (syms[bg.left], syms[bg.right]);
            if l.len == 0 || r.len == 0 || l.len + r.len != bg.size {
                continue;
            }
            syms[bg.left].len += r.len;
            syms[bg.right].len = 0;
            syms[bg.left].next = r.next;
            if r.next >= 0 {
                syms[r.next as usize].prev = bg.left as isize;
            }
            let left = syms[bg.left];
            try_add(&mut heap, &syms, left.prev, bg.left as isize);
            try_add(&mut heap, &syms, bg.left as isize, left.next);
        }
        let mut i: isize = 0;
        while i >= 0 {
            let s = syms[i as usize];
            let piece = &text[s.start..s.start + s.len];
            if let Some(id) = self.vocab.get(piece) {
                out.push(id);
            } else {
                // Never merged and not a token: byte fallback.
                out.extend(piece.bytes().filter_map(|b| self.byte_tokens[b as usize]));
            }
            i = s.next;
        }
    }

    /// Pre-tokenize one raw fragment with the regexes, then BPE each piece.
    fn bpe_tokenize(&self, bpe: &BpeModel, text: &str, out: &mut Vec<u32>) -> Result<()> {
        let mut pre = PreTokenizedString::from(text);
        for s in &bpe.splits {
            s.pre_tokenize(&mut pre)
                .map_err(|e| terr(format!("pre-tokenizer: {e}")))?;
        }
        bpe.byte_level
            .pre_tokenize(&mut pre)
            .map_err(|e| terr(format!("byte-level pre-tokenizer: {e}")))?;
        for (piece, _, _) in pre.get_splits(OffsetReferential::Original, OffsetType::None) {
            if piece.is_empty() {
                continue;
            }
            let toks = bpe
                .model
                .tokenize(piece)
                .map_err(|e| terr(format!("BPE: {e}")))?;
            out.extend(toks.iter().map(|t| t.id));
        }
        Ok(())
    }

    /// Decode ids to text (llama.cpp's `llama_detokenize` with `remove_special = false`):
    /// control tokens are rendered only when `special`; invalid UTF-8 becomes U+FFFD. Ids outside
    /// the vocabulary are skipped.
    pub fn decode(&self, ids: &[u32], special: bool) -> String {
        let mut bytes = Vec::with_capacity(ids.len() * 4);
        let mut remove_space = self.add_space_prefix;
        for &id in ids {
            let piece = self.token_bytes(id, special);
            let piece = if remove_space {
                piece.strip_prefix(b" ").unwrap_or(&piece)
            } else {
                &piece
            };
            bytes.extend_from_slice(piece);
            remove_space = false;
        }
        if self.clean_spaces {
            bytes = clean_up_spaces(&bytes);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Raw bytes of one token's text: byte-level BPE characters mapped back to bytes,
    /// SentencePiece `▁` → space, `<0xAB>` byte tokens → that byte; control (and unknown) tokens
    /// → empty unless `special`; unused tokens and ids outside the vocabulary → empty.
    pub fn token_bytes(&self, id: u32, special: bool) -> Vec<u8> {
        let Some(&t) = self.vocab.data.get(id as usize) else {
            return Vec::new();
        };
        let text = self.vocab.text(id);
        let special_attr = ATTR_UNKNOWN | ATTR_CONTROL;
        if t.attr & special_attr != 0 && !special {
            return Vec::new();
        }
        if t.attr & (special_attr | ATTR_USER_DEFINED) != 0 {
            return text.as_bytes().to_vec();
        }
        if t.attr & ATTR_NORMAL != 0 {
            return match self.model {
                Model_::Spm => text.replace(SPM_SPACE, " ").into_bytes(),
                Model_::Bpe(_) => {
                    let mut out = Vec::with_capacity(text.len());
                    for c in text.chars() {
                        match self.byte_decoder.get(&c) {
                            Some(&b) => out.push(b),
                            None => {
                                let mut buf = [0u8; 4];
                                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                            }
                        }
                    }
                    out
                }
            };
        }
        if t.attr & ATTR_BYTE != 0 {
            let hex = text
                .strip_prefix("<0x")
                .and_then(|s| s.strip_suffix('>'))
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            return hex.map(|b| vec![b]).unwrap_or_default();
        }
        Vec::new()
    }

    /// Number of tokens in the vocabulary.
    pub fn n_vocab(&self) -> usize {
        self.vocab.len()
    }

    /// Beginning-of-sequence token.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    /// End-of-sequence token.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// End-of-generation ids as llama.cpp computes them (eos, eot, eom, FIM pad/repo/sep and
    /// control tokens such as `<|im_end|>`, `<end_of_turn>`, `<|endoftext|>`), ascending.
    pub fn eog_ids(&self) -> &[u32] {
        &self.eog
    }

    /// Whether `id` ends generation.
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.binary_search(&id).is_ok()
    }

    /// Whether `add_bos` in [`Tokenizer::encode`] actually adds a BOS for this model
    /// (`tokenizer.ggml.add_bos_token`).
    pub fn adds_bos(&self) -> bool {
        self.add_bos && self.bos.is_some()
    }

    /// Whether `id` is a control token (rendered only on request, e.g. `<|im_start|>`).
    pub fn is_control(&self, id: u32) -> bool {
        self.vocab
            .data
            .get(id as usize)
            .is_some_and(|t| t.attr & ATTR_CONTROL != 0)
    }

    /// The text of a token as stored in the vocabulary (for chat templates' `bos_token` /
    /// `eos_token`).
    pub fn token_text(&self, id: u32) -> Option<&str> {
        ((id as usize) < self.vocab.len()).then(|| self.vocab.text(id))
    }

    /// The id of a vocabulary entry with exactly this text.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.vocab.get(text)
    }
}

/// llama.cpp's `clean_spaces` passes over detokenized bytes: drop the space before `?!.,`,
/// collapse ` ' ` to `'`, and join ` 's`, ` 'm`, ` 're`, ` 've` to the preceding word.
fn clean_up_spaces(t: &[u8]) -> Vec<u8> {
    // Pass 1: " ?", " !", " .", " ,".
    let mut a: Vec<u8> = Vec::with_capacity(t.len());
    for (i, &x) in t.iter().enumerate() {
        if i > 0 && t[i - 1] == b' ' && matches!(x, b'?' | b'!' | b'.' | b',') {
            a.pop();
        }
        a.push(x);
    }
    // Pass 2: a single apostrophe between spaces; the space after it is blanked in place (as
    // llama.cpp does), so it no longer counts as a space for the next character.
    let mut b: Vec<u8> = Vec::with_capacity(a.len());
    let mut i = 0;
    while i < a.len() {
        let x = a[i];
        if i > 0 && x == b'\'' && i + 1 < a.len() && a[i - 1] == b' ' && a[i + 1] == b' ' {
            b.pop();
            b.push(x);
            a[i + 1] = 0;
            i += 2;
            continue;
        }
        b.push(x);
        i += 1;
    }
    // Pass 3: contractions.
    let mut c: Vec<u8> = Vec::with_capacity(b.len());
    for (i, &x) in b.iter().enumerate() {
        if i > 0 && b[i - 1] == b' ' && x == b'\'' && i + 1 < b.len() {
            let x1 = b[i + 1];
            let x2 = b.get(i + 2).copied();
            let join = matches!(x1, b's' | b'm')
                || (i + 2 < b.len() && matches!((x1, x2), (b'r', Some(b'e')) | (b'v', Some(b'e'))));
            if join {
                c.pop();
            }
        }
        c.push(x);
    }
    c
}

/// The byte-level BPE model from `tokenizer.ggml.merges`.
fn build_bpe(gguf: &GgufFile, vocab: &Vocab, cfg: &PreConfig) -> Result<BpeModel> {
    let merges_raw = string_array(gguf, "tokenizer.ggml.merges")?;
    let mut seen = std::collections::HashSet::with_capacity(merges_raw.len());
    let mut merges = Vec::with_capacity(merges_raw.len());
    let mut joined = String::new();
    for m in merges_raw {
        // llama.cpp splits at the first space after the first byte.
        let Some(pos) = m.bytes().skip(1).position(|b| b == b' ').map(|p| p + 1) else {
            continue;
        };
        let (a, b) = (&m[..pos], &m[pos + 1..]);
        // The BPE model needs both halves and their concatenation in the vocabulary; llama.cpp
        // keeps the first rank of a repeated pair.
        let (Some(ia), Some(ib)) = (vocab.get(a), vocab.get(b)) else {
            continue;
        };
        joined.clear();
        joined.push_str(a);
        joined.push_str(b);
        if vocab.get(&joined).is_none() || !seen.insert((ia, ib)) {
            continue;
        }
        merges.push((a.to_string(), b.to_string()));
    }
    let hf_vocab: HfVocab = (0..vocab.len() as u32)
        .map(|i| (vocab.text(i).to_string(), i))
        .collect();
    let model = BPE::builder()
        .vocab_and_merges(hf_vocab, merges)
        .ignore_merges(cfg.ignore_merges)
        .build()
        .map_err(|e| terr(format!("BPE model: {e}")))?;
    let splits = cfg
        .regexes
        .iter()
        .map(|r| {
            Split::new(
                SplitPattern::Regex((*r).to_string()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| terr(format!("pre-tokenizer regex {r:?}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(BpeModel {
        splits,
        byte_level: ByteLevel::new(false, false, false),
        model,
    })
}

/// Streaming detokenizer: feed ids one at a time and get back only complete UTF-8 (never a
/// broken character); bytes that can never become valid UTF-8 come out as U+FFFD.
/// [`StreamDecoder::flush`] returns what remains (lossy).
#[derive(Debug, Default, Clone)]
pub struct StreamDecoder {
    pending: Vec<u8>,
    special: bool,
}

impl StreamDecoder {
    /// A decoder that drops control tokens (as a chat UI wants).
    pub fn new() -> Self {
        Self::default()
    }

    /// A decoder that renders control tokens' text too when `special`.
    pub fn with_special(special: bool) -> Self {
        StreamDecoder {
            pending: Vec::new(),
            special,
        }
    }

    /// Add one token; returns the text that became complete (possibly empty).
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> String {
        self.pending
            .extend_from_slice(&tok.token_bytes(id, self.special));
        let mut out = String::new();
        let mut start = 0;
        loop {
            match std::str::from_utf8(&self.pending[start..]) {
                Ok(s) => {
                    out.push_str(s);
                    start = self.pending.len();
                    break;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // `valid` bytes were just checked to be UTF-8.
                    out.push_str(
                        std::str::from_utf8(&self.pending[start..start + valid]).unwrap_or(""),
                    );
                    start += valid;
                    match e.error_len() {
                        // An invalid sequence: it can never complete.
                        Some(n) => {
                            out.push('\u{fffd}');
                            start += n;
                        }
                        // An incomplete character at the end: wait for more bytes.
                        None => break,
                    }
                }
            }
        }
        self.pending.drain(..start);
        out
    }

    /// Whatever is left (an incomplete character becomes U+FFFD); resets the decoder.
    pub fn flush(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpt2_byte_table_is_a_bijection() {
        let chars = gpt2_byte_chars();
        let set: std::collections::HashSet<char> = chars.iter().copied().collect();
        assert_eq!(set.len(), 256);
        assert_eq!(chars[b' ' as usize], 'Ġ');
        assert_eq!(chars[b'\n' as usize], 'Ċ');
        assert_eq!(chars[b'a' as usize], 'a');
    }

    #[test]
    fn clean_spaces_matches_llama_cpp() {
        let f = |s: &str| String::from_utf8(clean_up_spaces(s.as_bytes())).unwrap();
        assert_eq!(f("Hello , world !"), "Hello, world!");
        assert_eq!(f("it ' s"), "it's");
        assert_eq!(f("I 'm here , they 've gone"), "I'm here, they've gone");
        assert_eq!(f("don 't"), "don 't");
        assert_eq!(f(""), "");
    }
}
