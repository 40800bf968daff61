//! GGUF (v2, v3) parser: header, metadata, tensor infos and tensor data, from one byte slice or
//! from a source made of chunks (the browser's IndexedDB chunks). Pure and bounds-checked: every
//! count, length and offset is checked against the bytes actually present and against a named
//! cap before anything is allocated for it.
//!
//! Format: llama.cpp `ggml/include/gguf.h`, `ggml/src/gguf.cpp` and `docs/gguf.md`.

use std::collections::HashMap;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::quant::{ggml_type_name, GgmlDType};
use crate::tensor::{AlignedBytes, TensorBytes};

/// The four magic bytes at the start of every GGUF file.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// Most tensors a file may declare.
pub const MAX_TENSORS: u64 = 1 << 16;
/// Most metadata key/value pairs a file may declare.
pub const MAX_METADATA_KV: u64 = 1 << 16;
/// Longest string (key, value or tensor name) in bytes.
pub const MAX_STRING_LEN: u64 = 1 << 24;
/// Longest metadata array (vocabularies have ~260k entries, merges ~500k). Arrays the engine
/// does not read are only walked, never stored ([`ArrayItems::Skipped`]).
pub const MAX_ARRAY_LEN: u64 = 1 << 24;
/// Most entries of a vocabulary array the engine stores (`tokenizer.ggml.tokens`, `.scores`,
/// `.token_type`); the largest real vocabularies have ~262k tokens.
pub const MAX_VOCAB_ARRAY: u64 = 1 << 20;
/// Most BPE merges the engine stores (`tokenizer.ggml.merges`; real files have up to ~500k).
pub const MAX_MERGES_ARRAY: u64 = 1 << 21;
/// Deepest nesting of arrays inside arrays.
pub const MAX_ARRAY_DEPTH: usize = 4;
/// Most dimensions a tensor may have (`GGML_MAX_DIMS`).
pub const MAX_DIMS: u32 = 4;
/// Largest `general.alignment` accepted.
pub const MAX_ALIGNMENT: u64 = 1 << 16;
/// Alignment of tensor data when `general.alignment` is absent (`GGUF_DEFAULT_ALIGNMENT`).
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Largest single tensor in bytes (wasm32 has a 4 GiB address space).
pub const MAX_TENSOR_BYTES: u64 = 1 << 32;

/// Random-access bytes: a slice, a file, or IndexedDB chunks.
pub trait ByteSource {
    /// Total length in bytes.
    fn len(&self) -> u64;
    /// Whether the source is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Fill `buf` with the bytes at `offset..offset + buf.len()`.
    ///
    /// Errors: [`Error::Truncated`] when the range passes the end, [`Error::Io`] on read failure.
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<()>;
    /// How many bytes from the start can be read: all of them, except for a [`Prefix`].
    fn readable(&self) -> u64 {
        self.len()
    }
    /// The bytes at `offset..offset + len` without copying them, when the source holds them in
    /// memory it can share ([`SharedSource`]); `None` otherwise (the caller reads a copy).
    fn lend(&self, offset: u64, len: u64) -> Option<TensorBytes> {
        let _ = (offset, len);
        None
    }
}

/// A sized handle on any [`ByteSource`] (slices included), so it can be passed as
/// `&dyn ByteSource`.
pub struct SourceRef<'a, S: ByteSource + ?Sized>(pub &'a S);

impl<S: ByteSource + ?Sized> ByteSource for SourceRef<'_, S> {
    fn len(&self) -> u64 {
        self.0.len()
    }
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.0.read_exact_at(offset, buf)
    }
    fn readable(&self) -> u64 {
        self.0.readable()
    }
    fn lend(&self, offset: u64, len: u64) -> Option<TensorBytes> {
        self.0.lend(offset, len)
    }
}

fn check_range(offset: u64, needed: u64, len: u64) -> Result<()> {
    match offset.checked_add(needed) {
        Some(end) if end <= len => Ok(()),
        _ => Err(Error::Truncated {
            offset,
            needed,
            len,
        }),
    }
}

impl ByteSource for [u8] {
    fn len(&self) -> u64 {
        <[u8]>::len(self) as u64
    }
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        check_range(offset, buf.len() as u64, ByteSource::len(self))?;
        let start = offset as usize;
        buf.copy_from_slice(&self[start..start + buf.len()]);
        Ok(())
    }
}

impl ByteSource for Vec<u8> {
    fn len(&self) -> u64 {
        self.as_slice().len() as u64
    }
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.as_slice().read_exact_at(offset, buf)
    }
}

/// A model file read once into memory, in segments (each one aligned buffer of at most
/// [`MAX_SEGMENT_BYTES`]: wasm32 cannot allocate 2 GiB at once), split at tensor starts so no
/// tensor straddles two ([`SharedSource::plan`]). The browser worker fills it straight from
/// IndexedDB's chunks. Tensors borrow their bytes from it ([`ByteSource::lend`]) instead of
/// copying them, so a CPU model holds the file once and nothing else of that size.
#[derive(Clone, Debug, Default)]
pub struct SharedSource {
    segments: Vec<Arc<AlignedBytes>>,
    /// File offset of each segment's first byte.
    starts: Vec<u64>,
    len: u64,
}

/// Largest segment of a [`SharedSource`] (a quarter of wasm32's address space).
pub const MAX_SEGMENT_BYTES: u64 = 1 << 30;

/// Tensors at offsets with this alignment are lent (the default GGUF alignment; weight blocks
/// need 2, f32 rows 4); others are copied into their own aligned buffer.
const LEND_ALIGN: u64 = 32;

impl SharedSource {
    /// The whole of `bytes` as one segment (tests, small files).
    pub fn from_vec(bytes: AlignedBytes) -> Self {
        Self::from_segments(vec![Arc::new(bytes)])
    }

    /// Consecutive segments, in file order (as [`SharedSource::plan`] sized them).
    pub fn from_segments(segments: Vec<Arc<AlignedBytes>>) -> Self {
        let mut starts = Vec::with_capacity(segments.len());
        let mut len = 0u64;
        for s in &segments {
            starts.push(len);
            len = len.saturating_add(s.len() as u64);
        }
        Self {
            segments,
            starts,
            len,
        }
    }

    /// Segment lengths for a file of `len` bytes whose header is `g`: each at most `max` bytes,
    /// cut only where a tensor starts, so every tensor lies in one segment (and starts aligned
    /// in it: segments are 64-aligned, tensor offsets multiples of the file's alignment).
    ///
    /// Errors: [`Error::TooLarge`] when one tensor, or the bytes between two cuts that cannot
    /// be split (the header, a gap, the trailing bytes), is larger than `max`.
    pub fn plan(g: &GgufFile, len: u64, max: u64) -> Result<Vec<u64>> {
        let too_large = |what: String, needed: u64| Error::TooLarge {
            what,
            needed,
            allowed: max,
        };
        let mut tensors: Vec<(u64, u64)> = g
            .tensors
            .iter()
            .map(|t| (g.data_offset.saturating_add(t.offset), t.size))
            .collect();
        tensors.sort_unstable();
        let (mut sizes, mut seg_start, mut last_end) = (Vec::new(), 0u64, 0u64);
        for (start, size) in tensors {
            if size > max {
                return Err(too_large(format!("the tensor at byte {start}"), size));
            }
            let end = start.saturating_add(size);
            // Sorted: `start >= seg_start`, which is an earlier tensor's start (or 0).
            if end - seg_start > max {
                if start - seg_start > max {
                    let what = format!("the bytes before byte {start}");
                    return Err(too_large(what, start - seg_start));
                }
                sizes.push(start - seg_start);
                seg_start = start;
            }
            last_end = last_end.max(end);
        }
        let len = len.max(last_end);
        if len - seg_start > max {
            if last_end > seg_start {
                sizes.push(last_end - seg_start);
            }
            seg_start = last_end;
            if len - seg_start > max {
                let what = "the bytes after the last tensor".to_string();
                return Err(too_large(what, len - seg_start));
            }
        }
        if len > seg_start {
            sizes.push(len - seg_start);
        }
        Ok(sizes)
    }

    fn segment_of(&self, offset: u64) -> usize {
        self.starts
            .partition_point(|&s| s <= offset)
            .saturating_sub(1)
    }
}

impl ByteSource for SharedSource {
    fn len(&self) -> u64 {
        self.len
    }
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        check_range(offset, buf.len() as u64, self.len)?;
        let (mut i, mut pos, mut written) = (self.segment_of(offset), offset, 0);
        while written < buf.len() {
            let seg = self.segments[i].as_slice();
            let within = (pos - self.starts[i]) as usize;
            let n = (seg.len() - within).min(buf.len() - written);
            buf[written..written + n].copy_from_slice(&seg[within..within + n]);
            written += n;
            pos += n as u64;
            i += 1;
        }
        Ok(())
    }
    fn lend(&self, offset: u64, len: u64) -> Option<TensorBytes> {
        let i = self.segment_of(offset);
        let within = offset.checked_sub(*self.starts.get(i)?)?;
        if !within.is_multiple_of(LEND_ALIGN) {
            return None;
        }
        TensorBytes::shared(
            self.segments[i].clone(),
            usize::try_from(within).ok()?,
            usize::try_from(len).ok()?,
        )
    }
}

/// The first bytes of a file whose full length is known: enough to parse its header
/// ([`GgufFile::parse`] checks tensor ranges against the full length). Reading past the prefix
/// fails with [`Error::Truncated`], which says more of the file is needed.
pub struct Prefix<'a> {
    pub bytes: &'a [u8],
    pub len: u64,
}

impl ByteSource for Prefix<'_> {
    fn len(&self) -> u64 {
        self.len
    }
    fn readable(&self) -> u64 {
        self.bytes.len() as u64
    }
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        check_range(offset, buf.len() as u64, self.len)?;
        check_range(offset, buf.len() as u64, self.bytes.len() as u64)?;
        self.bytes.read_exact_at(offset, buf)
    }
}

/// A file on disk read with positioned reads (native only).
#[cfg(not(target_arch = "wasm32"))]
#[derive(Debug)]
pub struct FileSource {
    file: std::fs::File,
    len: u64,
}

#[cfg(not(target_arch = "wasm32"))]
impl FileSource {
    /// Open `path`. Errors: [`Error::Io`].
    pub fn open(path: impl AsRef<std::path::Path>) -> Result<Self> {
        let file = std::fs::File::open(path)?;
        let len = file.metadata()?.len();
        Ok(Self { file, len })
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl ByteSource for FileSource {
    fn len(&self) -> u64 {
        self.len
    }
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        check_range(offset, buf.len() as u64, self.len)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::FileExt;
            self.file.read_exact_at(buf, offset)?;
        }
        #[cfg(not(unix))]
        {
            use std::io::{Read, Seek, SeekFrom};
            let mut f = &self.file;
            f.seek(SeekFrom::Start(offset))?;
            f.read_exact(buf)?;
        }
        Ok(())
    }
}

/// The bytes at `offset..offset + len` of `src`: lent when it can ([`ByteSource::lend`]), else an
/// aligned copy.
///
/// Errors: [`Error::Truncated`] when the range passes the end, [`Error::Io`] on read failure.
pub fn read_range<S: ByteSource + ?Sized>(src: &S, offset: u64, len: u64) -> Result<TensorBytes> {
    check_range(offset, len, src.len())?;
    if let Some(b) = src.lend(offset, len) {
        return Ok(b);
    }
    let n = usize::try_from(len).map_err(|_| Error::TooLarge {
        what: "a tensor".into(),
        needed: len,
        allowed: usize::MAX as u64,
    })?;
    let mut out = AlignedBytes::zeroed(n);
    src.read_exact_at(offset, out.as_mut_slice())?;
    Ok(out.into())
}

/// Type tag of a metadata value (`enum gguf_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetaType {
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    F32,
    Bool,
    String,
    Array,
    U64,
    I64,
    F64,
}

impl MetaType {
    fn from_id(id: u32) -> Option<Self> {
        use MetaType::*;
        Some(match id {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    /// Smallest encoded size of one value of this type (strings and arrays: their length
    /// prefix), used to reject counts the remaining bytes cannot hold.
    fn min_size(self) -> u64 {
        use MetaType::*;
        match self {
            U8 | I8 | Bool => 1,
            U16 | I16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 | String => 8,
            Array => 12,
        }
    }
}

/// One metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    /// Elements all of one type (nested arrays allowed up to [`MAX_ARRAY_DEPTH`]).
    Array(MetaArray),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl MetaValue {
    /// The value as an unsigned integer, if it is a non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::U8(v) => Some(v as u64),
            MetaValue::U16(v) => Some(v as u64),
            MetaValue::U32(v) => Some(v as u64),
            MetaValue::U64(v) => Some(v),
            MetaValue::I8(v) => u64::try_from(v).ok(),
            MetaValue::I16(v) => u64::try_from(v).ok(),
            MetaValue::I32(v) => u64::try_from(v).ok(),
            MetaValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }
    /// The value as a signed integer of any width.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            MetaValue::I8(v) => Some(v as i64),
            MetaValue::I16(v) => Some(v as i64),
            MetaValue::I32(v) => Some(v as i64),
            MetaValue::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }
    /// The value as a float (floats of either width, or integers).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(v) => Some(v as f64),
            MetaValue::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }
    /// The value as a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::String(s) => Some(s),
            _ => None,
        }
    }
    /// The value as a bool.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetaValue::Bool(b) => Some(b),
            _ => None,
        }
    }
    /// An array value.
    pub fn as_array(&self) -> Option<&MetaArray> {
        match self {
            MetaValue::Array(a) => Some(a),
            _ => None,
        }
    }

    /// The type tag of this value.
    pub fn meta_type(&self) -> MetaType {
        match self {
            MetaValue::U8(_) => MetaType::U8,
            MetaValue::I8(_) => MetaType::I8,
            MetaValue::U16(_) => MetaType::U16,
            MetaValue::I16(_) => MetaType::I16,
            MetaValue::U32(_) => MetaType::U32,
            MetaValue::I32(_) => MetaType::I32,
            MetaValue::F32(_) => MetaType::F32,
            MetaValue::Bool(_) => MetaType::Bool,
            MetaValue::String(_) => MetaType::String,
            MetaValue::Array(_) => MetaType::Array,
            MetaValue::U64(_) => MetaType::U64,
            MetaValue::I64(_) => MetaType::I64,
            MetaValue::F64(_) => MetaType::F64,
        }
    }
}

impl MetaType {
    /// Lower-case name, for messages.
    pub fn name(self) -> &'static str {
        use MetaType::*;
        match self {
            U8 => "u8",
            I8 => "i8",
            U16 => "u16",
            I16 => "i16",
            U32 => "u32",
            I32 => "i32",
            F32 => "f32",
            Bool => "bool",
            String => "string",
            Array => "array",
            U64 => "u64",
            I64 => "i64",
            F64 => "f64",
        }
    }
}

/// A metadata array: its element type, length and where it lies in the file, and its items
/// only when the engine reads them. Memory stays proportional to what is used: an array bomb
/// of 64 MiB of `u8`s costs a few words, not 32 bytes per element.
#[derive(Clone, Debug, PartialEq)]
pub struct MetaArray {
    pub elem: MetaType,
    pub len: u64,
    /// Absolute byte range of the elements in the file.
    pub start: u64,
    pub end: u64,
    pub items: ArrayItems,
}

/// The stored items of a [`MetaArray`].
#[derive(Clone, Debug, PartialEq)]
pub enum ArrayItems {
    /// Not stored: the engine does not read this key (or its element type is not the one it
    /// reads), so it was only walked.
    Skipped,
    /// Strings, packed: item `i` is `buf[ends[i - 1]..ends[i]]`.
    Strings { buf: String, ends: Vec<usize> },
    /// Numbers or bools, one [`MetaValue`] each.
    Values(Vec<MetaValue>),
}

impl MetaArray {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len as usize
    }
    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// The elements as strings, when stored as such.
    pub fn strings(&self) -> Option<impl ExactSizeIterator<Item = &str> + '_> {
        match &self.items {
            ArrayItems::Strings { buf, ends } => Some((0..ends.len()).map(move |i| {
                let start = if i == 0 { 0 } else { ends[i - 1] };
                &buf[start..ends[i]]
            })),
            _ => None,
        }
    }
    /// The elements as values, when stored as such (numbers, bools).
    pub fn values(&self) -> Option<&[MetaValue]> {
        match &self.items {
            ArrayItems::Values(v) => Some(v),
            _ => None,
        }
    }
}

/// The arrays the engine reads, with the most entries it accepts and whether they hold strings;
/// every other array is walked and skipped.
fn stored_array(key: &str) -> Option<(u64, bool)> {
    match key {
        "tokenizer.ggml.tokens" => Some((MAX_VOCAB_ARRAY, true)),
        "tokenizer.ggml.merges" => Some((MAX_MERGES_ARRAY, true)),
        "tokenizer.ggml.scores" | "tokenizer.ggml.token_type" => Some((MAX_VOCAB_ARRAY, false)),
        _ => None,
    }
}

/// One tensor's header entry.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    /// e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// GGML order: `dims[0]` is the contiguous (innermost) dimension, e.g. (n_embd, n_vocab)
    /// for `token_embd.weight`.
    pub dims: Vec<u64>,
    pub dtype: GgmlDType,
    /// Offset from the start of the data section (a multiple of the alignment).
    pub offset: u64,
    /// Size in bytes.
    pub size: u64,
}

impl TensorInfo {
    /// Number of elements.
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
    /// (rows, cols) view of a matrix: cols = dims[0], rows = product of the others.
    pub fn rows_cols(&self) -> (usize, usize) {
        let cols = self.dims.first().copied().unwrap_or(1) as usize;
        let rows = self.dims.iter().skip(1).product::<u64>() as usize;
        (rows, cols)
    }
}

/// A parsed GGUF header: version, metadata and tensor infos. The tensor data stays in the
/// [`ByteSource`]; read one tensor at a time with [`GgufFile::read_tensor`].
#[derive(Clone, Debug)]
pub struct GgufFile {
    pub version: u32,
    /// Metadata in file order.
    pub metadata: Vec<(String, MetaValue)>,
    pub tensors: Vec<TensorInfo>,
    /// Absolute byte offset of the data section.
    pub data_offset: u64,
    pub alignment: u64,
    /// Total length of the source parsed.
    pub file_len: u64,
    meta_index: HashMap<String, usize>,
    tensor_index: HashMap<String, usize>,
}

/// Buffered sequential reader over a [`ByteSource`].
struct Reader<'a, S: ByteSource + ?Sized> {
    src: &'a S,
    len: u64,
    /// Absolute position of `buf[0]`.
    buf_start: u64,
    buf: Vec<u8>,
    /// Position within `buf`.
    at: usize,
}

const READ_WINDOW: usize = 1 << 16;

impl<'a, S: ByteSource + ?Sized> Reader<'a, S> {
    fn new(src: &'a S) -> Self {
        Self {
            src,
            len: src.len(),
            buf_start: 0,
            buf: Vec::new(),
            at: 0,
        }
    }

    fn pos(&self) -> u64 {
        self.buf_start + self.at as u64
    }

    fn remaining(&self) -> u64 {
        self.len - self.pos()
    }

    /// Borrow the next `n` bytes.
    fn take(&mut self, n: usize) -> Result<&[u8]> {
        let pos = self.pos();
        check_range(pos, n as u64, self.len)?;
        if self.at + n > self.buf.len() {
            // Not past what the source can read (a header prefix), unless `n` itself is.
            let readable = self.src.readable().saturating_sub(pos).max(n as u64);
            let want = (n.max(READ_WINDOW) as u64)
                .min(self.len - pos)
                .min(readable) as usize;
            self.buf.resize(want, 0);
            self.src.read_exact_at(pos, &mut self.buf)?;
            self.buf_start = pos;
            self.at = 0;
        }
        let s = &self.buf[self.at..self.at + n];
        self.at += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A count that must be at most `cap` and fit `count * min_elem` remaining bytes.
    fn count(&mut self, what: &str, cap: u64, min_elem: u64) -> Result<u64> {
        let at = self.pos();
        let n = self.u64()?;
        if n > cap {
            return Err(Error::gguf(
                at,
                format!("{what} count {n} exceeds the limit {cap}"),
            ));
        }
        if n.saturating_mul(min_elem) > self.remaining() {
            return Err(Error::gguf(
                at,
                format!(
                    "{what} count {n} needs more bytes than the {} left",
                    self.remaining()
                ),
            ));
        }
        Ok(n)
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let at = self.pos();
        let n = self.count(what, MAX_STRING_LEN, 1)?;
        let bytes = self.take(n as usize)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| Error::gguf(at, format!("{what} is not valid UTF-8")))
    }

    /// Skip `n` bytes.
    fn skip(&mut self, n: u64) -> Result<()> {
        let pos = self.pos();
        check_range(pos, n, self.len)?;
        let in_buf = (self.buf.len() - self.at) as u64;
        if n <= in_buf {
            self.at += n as usize;
        } else {
            self.buf_start = pos + n;
            self.buf.clear();
            self.at = 0;
        }
        Ok(())
    }

    /// Walk one value of type `ty` without storing it (strings and arrays are checked, not
    /// copied).
    fn skip_value(&mut self, ty: MetaType, depth: usize) -> Result<()> {
        match ty {
            MetaType::String => {
                let n = self.count("string value", MAX_STRING_LEN, 1)?;
                self.skip(n)
            }
            MetaType::Array => {
                let (elem, n) = self.array_header(depth)?;
                self.skip_items(elem, n, depth)
            }
            MetaType::Bool => self.value(ty, depth).map(|_| ()),
            _ => self.skip(ty.min_size()),
        }
    }

    fn skip_items(&mut self, elem: MetaType, n: u64, depth: usize) -> Result<()> {
        match elem {
            MetaType::String | MetaType::Array | MetaType::Bool => {
                for _ in 0..n {
                    self.skip_value(elem, depth + 1)?;
                }
                Ok(())
            }
            // `n * size` bytes are present (checked by `count`).
            _ => self.skip(n * elem.min_size()),
        }
    }

    /// An array's element type and count.
    fn array_header(&mut self, depth: usize) -> Result<(MetaType, u64)> {
        let at = self.pos();
        if depth >= MAX_ARRAY_DEPTH {
            return Err(Error::gguf(
                at,
                format!("arrays nested deeper than {MAX_ARRAY_DEPTH}"),
            ));
        }
        let elem_id = self.u32()?;
        let elem = MetaType::from_id(elem_id)
            .ok_or_else(|| Error::gguf(at, format!("unknown array element type {elem_id}")))?;
        let n = self.count("array element", MAX_ARRAY_LEN, elem.min_size())?;
        Ok((elem, n))
    }

    /// A top-level array under `key`: stored when the engine reads that key, else walked.
    fn meta_array(&mut self, key: &str) -> Result<MetaArray> {
        let (elem, n) = self.array_header(0)?;
        let start = self.pos();
        let items = match stored_array(key) {
            Some((cap, strings))
                if strings == (elem == MetaType::String) && elem != MetaType::Array =>
            {
                if n > cap {
                    return Err(Error::gguf(
                        start,
                        format!("metadata `{key}` has {n} entries, over the limit {cap}"),
                    ));
                }
                if strings {
                    let mut buf = String::new();
                    let mut ends = Vec::with_capacity(n as usize);
                    for _ in 0..n {
                        let at = self.pos();
                        let len = self.count("string value", MAX_STRING_LEN, 1)?;
                        let bytes = self.take(len as usize)?;
                        let s = std::str::from_utf8(bytes).map_err(|_| {
                            Error::gguf(at, format!("`{key}` entry is not valid UTF-8"))
                        })?;
                        buf.push_str(s);
                        ends.push(buf.len());
                    }
                    ArrayItems::Strings { buf, ends }
                } else {
                    // `n * min_size` bytes are present, so this allocation is bounded by the
                    // file.
                    let mut values = Vec::with_capacity(n as usize);
                    for _ in 0..n {
                        values.push(self.value(elem, 1)?);
                    }
                    ArrayItems::Values(values)
                }
            }
            _ => {
                self.skip_items(elem, n, 0)?;
                ArrayItems::Skipped
            }
        };
        Ok(MetaArray {
            elem,
            len: n,
            start,
            end: self.pos(),
            items,
        })
    }

    fn value(&mut self, ty: MetaType, depth: usize) -> Result<MetaValue> {
        Ok(match ty {
            MetaType::U8 => MetaValue::U8(self.u8()?),
            MetaType::I8 => MetaValue::I8(self.u8()? as i8),
            MetaType::U16 => MetaValue::U16(self.u16()?),
            MetaType::I16 => MetaValue::I16(self.u16()? as i16),
            MetaType::U32 => MetaValue::U32(self.u32()?),
            MetaType::I32 => MetaValue::I32(self.u32()? as i32),
            MetaType::F32 => MetaValue::F32(f32::from_bits(self.u32()?)),
            MetaType::U64 => MetaValue::U64(self.u64()?),
            MetaType::I64 => MetaValue::I64(self.u64()? as i64),
            MetaType::F64 => MetaValue::F64(f64::from_bits(self.u64()?)),
            MetaType::Bool => {
                let at = self.pos();
                match self.u8()? {
                    0 => MetaValue::Bool(false),
                    1 => MetaValue::Bool(true),
                    b => {
                        return Err(Error::gguf(
                            at,
                            format!("bool value {b} is neither 0 nor 1"),
                        ))
                    }
                }
            }
            MetaType::String => MetaValue::String(self.string("string value")?),
            MetaType::Array => {
                // Arrays inside arrays are walked, never stored.
                let (elem, n) = self.array_header(depth)?;
                let start = self.pos();
                self.skip_items(elem, n, depth)?;
                MetaValue::Array(MetaArray {
                    elem,
                    len: n,
                    start,
                    end: self.pos(),
                    items: ArrayItems::Skipped,
                })
            }
        })
    }
}

impl GgufFile {
    /// Parse a whole file held in memory.
    pub fn parse_bytes(bytes: &[u8]) -> Result<Self> {
        Self::parse(bytes)
    }

    /// Parse the header, metadata and tensor infos of `src`, checking that every tensor lies
    /// inside the source.
    ///
    /// Errors: [`Error::Gguf`] (names the field and byte offset), [`Error::Truncated`],
    /// [`Error::UnsupportedVersion`], [`Error::UnsupportedDType`].
    pub fn parse<S: ByteSource + ?Sized>(src: &S) -> Result<Self> {
        let mut r = Reader::new(src);
        let magic = r.array::<4>()?;
        if magic != GGUF_MAGIC {
            return Err(Error::gguf(
                0,
                format!("bad magic {magic:02x?}: not a GGUF file (expected \"GGUF\")"),
            ));
        }
        let version = r.u32()?;
        if version == 1 {
            return Err(Error::UnsupportedVersion(1));
        }
        if version != 2 && version != 3 {
            if version.swap_bytes() == 2 || version.swap_bytes() == 3 {
                return Err(Error::gguf(4, "big-endian GGUF files are not supported"));
            }
            return Err(Error::UnsupportedVersion(version));
        }
        // Each tensor info takes at least 8 (name len) + 4 (n_dims) + 4 (type) + 8 (offset).
        let n_tensors = r.count("tensor", MAX_TENSORS, 24)?;
        // Each key/value takes at least 8 (key len) + 4 (type) + 1.
        let n_kv = r.count("metadata key/value", MAX_METADATA_KV, 13)?;

        let mut metadata = Vec::with_capacity(n_kv as usize);
        let mut meta_index = HashMap::with_capacity(n_kv as usize);
        for _ in 0..n_kv {
            let at = r.pos();
            let key = r.string("metadata key")?;
            let ty_at = r.pos();
            let ty_id = r.u32()?;
            let ty = MetaType::from_id(ty_id).ok_or_else(|| {
                Error::gguf(
                    ty_at,
                    format!("metadata `{key}` has unknown value type {ty_id}"),
                )
            })?;
            let value = match ty {
                MetaType::Array => MetaValue::Array(r.meta_array(&key)?),
                _ => r.value(ty, 0)?,
            };
            if meta_index.insert(key.clone(), metadata.len()).is_some() {
                return Err(Error::gguf(at, format!("duplicate metadata key `{key}`")));
            }
            metadata.push((key, value));
        }

        let alignment = match meta_index.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(&i) => {
                let v = &metadata[i].1;
                let a = v.as_u64().ok_or_else(|| {
                    Error::metadata(
                        "general.alignment",
                        format!("is a {}, not an unsigned integer", v.meta_type().name()),
                    )
                })?;
                if a == 0 || !a.is_power_of_two() || a > MAX_ALIGNMENT {
                    return Err(Error::metadata(
                        "general.alignment",
                        format!("{a} is not a power of two up to {MAX_ALIGNMENT}"),
                    ));
                }
                a
            }
        };

        let mut raw = Vec::with_capacity(n_tensors as usize);
        let mut tensor_index = HashMap::with_capacity(n_tensors as usize);
        for _ in 0..n_tensors {
            let at = r.pos();
            let name = r.string("tensor name")?;
            let dims_at = r.pos();
            let n_dims = r.u32()?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(Error::gguf(
                    dims_at,
                    format!("tensor `{name}` has {n_dims} dimensions (1..={MAX_DIMS} allowed)"),
                ));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(r.u64()?);
            }
            let ty_at = r.pos();
            let ty_id = r.u32()?;
            let offset = r.u64()?;
            let dtype = GgmlDType::from_ggml_id(ty_id).ok_or_else(|| Error::UnsupportedDType {
                tensor: name.clone(),
                dtype: format!("{} (ggml type {ty_id})", ggml_type_name(ty_id)),
            })?;
            let n_el = dims.iter().try_fold(
                1u64,
                |acc, &d| {
                    if d == 0 {
                        None
                    } else {
                        acc.checked_mul(d)
                    }
                },
            );
            let size = n_el
                .filter(|_| dims[0] % dtype.block_size() as u64 == 0)
                .and_then(|n| (n / dtype.block_size() as u64).checked_mul(dtype.type_size() as u64))
                .filter(|&s| s <= MAX_TENSOR_BYTES)
                .ok_or_else(|| {
                    Error::gguf(
                        ty_at,
                        format!(
                            "tensor `{name}` has invalid shape {dims:?} for {dtype} (zero, overflow, \
                             not a multiple of the block size {}, or over {MAX_TENSOR_BYTES} bytes)",
                            dtype.block_size()
                        ),
                    )
                })?;
            if offset % alignment != 0 {
                return Err(Error::gguf(
                    ty_at + 4,
                    format!("tensor `{name}` offset {offset} is not a multiple of {alignment}"),
                ));
            }
            if tensor_index.insert(name.clone(), raw.len()).is_some() {
                return Err(Error::gguf(at, format!("duplicate tensor `{name}`")));
            }
            raw.push(TensorInfo {
                name,
                dims,
                dtype,
                offset,
                size,
            });
        }

        let header_end = r.pos();
        let data_offset = header_end.div_ceil(alignment) * alignment;
        let file_len = src.len();
        for t in &raw {
            let start = data_offset.checked_add(t.offset);
            let end = start.and_then(|s| s.checked_add(t.size));
            match end {
                Some(end) if end <= file_len => {}
                _ => {
                    return Err(Error::Truncated {
                        offset: data_offset.saturating_add(t.offset),
                        needed: t.size,
                        len: file_len,
                    })
                }
            }
        }

        // No two tensors may share bytes (a crafted file could alias one weight onto another).
        let mut order: Vec<usize> = (0..raw.len()).collect();
        order.sort_by_key(|&i| raw[i].offset);
        for w in order.windows(2) {
            let (a, b) = (&raw[w[0]], &raw[w[1]]);
            if a.offset + a.size > b.offset {
                return Err(Error::gguf(
                    data_offset + b.offset,
                    format!(
                        "tensor `{}` (bytes {}..{} of the data) overlaps tensor `{}` (bytes {}..{})",
                        b.name,
                        b.offset,
                        b.offset + b.size,
                        a.name,
                        a.offset,
                        a.offset + a.size
                    ),
                ));
            }
        }

        Ok(Self {
            version,
            metadata,
            tensors: raw,
            data_offset,
            alignment,
            file_len,
            meta_index,
            tensor_index,
        })
    }

    /// The metadata value for `key`.
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.meta_index.get(key).map(|&i| &self.metadata[i].1)
    }

    /// A required unsigned integer. Errors: [`Error::Metadata`].
    pub fn get_u64(&self, key: &str) -> Result<u64> {
        self.get(key)
            .ok_or_else(|| Error::metadata(key, "missing"))?
            .as_u64()
            .ok_or_else(|| Error::metadata(key, "not a non-negative integer"))
    }

    /// A required unsigned integer that fits `usize`, at most `cap` (a guard against absurd
    /// hyperparameters). Errors: [`Error::Metadata`].
    pub fn get_usize(&self, key: &str, cap: usize) -> Result<usize> {
        let v = self.get_u64(key)?;
        if v > cap as u64 {
            return Err(Error::metadata(key, format!("{v} exceeds the limit {cap}")));
        }
        Ok(v as usize)
    }

    /// A required float. Errors: [`Error::Metadata`].
    pub fn get_f32(&self, key: &str) -> Result<f32> {
        self.get(key)
            .ok_or_else(|| Error::metadata(key, "missing"))?
            .as_f64()
            .map(|v| v as f32)
            .ok_or_else(|| Error::metadata(key, "not a number"))
    }

    /// A required string. Errors: [`Error::Metadata`].
    pub fn get_str(&self, key: &str) -> Result<&str> {
        self.get(key)
            .ok_or_else(|| Error::metadata(key, "missing"))?
            .as_str()
            .ok_or_else(|| Error::metadata(key, "not a string"))
    }

    /// A required array. Errors: [`Error::Metadata`].
    pub fn get_array(&self, key: &str) -> Result<&MetaArray> {
        self.get(key)
            .ok_or_else(|| Error::metadata(key, "missing"))?
            .as_array()
            .ok_or_else(|| Error::metadata(key, "not an array"))
    }

    /// `general.architecture`.
    pub fn architecture(&self) -> Result<&str> {
        self.get_str("general.architecture")
    }

    /// The tensor info named `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// One tensor's bytes (GGUF block layout, unchanged): lent by a source that holds the file in
    /// memory ([`SharedSource`]), else read into an aligned buffer.
    pub fn read_tensor<S: ByteSource + ?Sized>(
        &self,
        src: &S,
        info: &TensorInfo,
    ) -> Result<TensorBytes> {
        read_range(src, self.data_offset + info.offset, info.size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds small GGUF files for tests.
    #[derive(Default)]
    pub(crate) struct Builder {
        kv: Vec<u8>,
        n_kv: u64,
        tensors: Vec<(String, Vec<u64>, u32, Vec<u8>)>,
    }

    impl Builder {
        fn str(buf: &mut Vec<u8>, s: &str) {
            buf.extend((s.len() as u64).to_le_bytes());
            buf.extend(s.as_bytes());
        }
        pub fn kv_u32(mut self, k: &str, v: u32) -> Self {
            Self::str(&mut self.kv, k);
            self.kv.extend(4u32.to_le_bytes());
            self.kv.extend(v.to_le_bytes());
            self.n_kv += 1;
            self
        }
        pub fn kv_str(mut self, k: &str, v: &str) -> Self {
            Self::str(&mut self.kv, k);
            self.kv.extend(8u32.to_le_bytes());
            Self::str(&mut self.kv, v);
            self.n_kv += 1;
            self
        }
        pub fn kv_str_array(mut self, k: &str, v: &[&str]) -> Self {
            Self::str(&mut self.kv, k);
            self.kv.extend(9u32.to_le_bytes());
            self.kv.extend(8u32.to_le_bytes());
            self.kv.extend((v.len() as u64).to_le_bytes());
            for s in v {
                Self::str(&mut self.kv, s);
            }
            self.n_kv += 1;
            self
        }
        pub fn tensor(mut self, name: &str, dims: &[u64], ty: u32, data: Vec<u8>) -> Self {
            self.tensors.push((name.into(), dims.to_vec(), ty, data));
            self
        }
        pub fn build(self) -> Vec<u8> {
            let mut out = b"GGUF".to_vec();
            out.extend(3u32.to_le_bytes());
            out.extend((self.tensors.len() as u64).to_le_bytes());
            out.extend(self.n_kv.to_le_bytes());
            out.extend(&self.kv);
            let mut offset = 0u64;
            let mut offsets = vec![];
            for (name, dims, ty, data) in &self.tensors {
                Self::str(&mut out, name);
                out.extend((dims.len() as u32).to_le_bytes());
                for d in dims {
                    out.extend(d.to_le_bytes());
                }
                out.extend(ty.to_le_bytes());
                out.extend(offset.to_le_bytes());
                offsets.push(offset);
                offset = (offset + data.len() as u64).div_ceil(32) * 32;
            }
            while !out.len().is_multiple_of(32) {
                out.push(0);
            }
            let base = out.len();
            for ((_, _, _, data), off) in self.tensors.iter().zip(offsets) {
                out.resize(base + off as usize, 0);
                out.extend(data);
            }
            out
        }
    }

    fn sample() -> Vec<u8> {
        Builder::default()
            .kv_str("general.architecture", "llama")
            .kv_u32("llama.block_count", 2)
            .kv_str_array("tokenizer.ggml.tokens", &["a", "b", "c"])
            .tensor(
                "w",
                &[4, 2],
                0,
                (0..8).flat_map(|i| (i as f32).to_le_bytes()).collect(),
            )
            .tensor("v", &[32], 8, vec![1u8; 34])
            .build()
    }

    #[test]
    fn parses_builder_output_from_a_slice_and_shared_memory() {
        let bytes = sample();
        let f = GgufFile::parse_bytes(&bytes).unwrap();
        assert_eq!(f.version, 3);
        assert_eq!(f.architecture().unwrap(), "llama");
        assert_eq!(f.get_u64("llama.block_count").unwrap(), 2);
        let toks = f.get_array("tokenizer.ggml.tokens").unwrap();
        assert_eq!(toks.strings().unwrap().collect::<Vec<_>>(), ["a", "b", "c"]);
        let w = f.tensor("w").unwrap();
        assert_eq!(
            (w.dtype, w.rows_cols(), w.size),
            (GgmlDType::F32, (2, 4), 32)
        );
        let data = f.read_tensor(bytes.as_slice(), w).unwrap();
        assert_eq!(&data.as_slice()[4..8], &1f32.to_le_bytes());

        // Held in memory: the same tensors, lent rather than copied (the file's offsets are
        // 32-aligned), except at an offset the kernels could not view in place.
        let shared = SharedSource::from_vec(AlignedBytes::from_slice(&bytes));
        let g = GgufFile::parse(&shared).unwrap();
        assert_eq!(g.tensors, f.tensors);
        assert_eq!(g.metadata, f.metadata);
        for t in &g.tensors {
            let lent = g.read_tensor(&shared, t).unwrap();
            assert!(lent.is_shared(), "{} is lent", t.name);
            assert_eq!(lent.as_slice(), data_of(&f, &bytes, t));
        }
        let odd = read_range(&shared, g.data_offset + 1, 8).unwrap();
        assert!(!odd.is_shared());
        assert_eq!(odd.as_slice(), &bytes[g.data_offset as usize + 1..][..8]);
        assert!(matches!(
            read_range(&shared, bytes.len() as u64 - 4, 8),
            Err(Error::Truncated { .. })
        ));
    }

    /// The browser's path for a big file: the header parsed from a prefix, segments planned at
    /// tensor starts, every tensor lent from its segment.
    #[test]
    fn segments_split_at_tensor_starts_and_lend_every_tensor() {
        let mut b = Builder::default().kv_str("general.architecture", "llama");
        for i in 0..6u8 {
            // 100 f32 each: 400 bytes, padded to 416 in the file.
            b = b.tensor(&format!("t{i}"), &[100], 0, vec![i; 400]);
        }
        let bytes = b.build();
        let len = bytes.len() as u64;
        let f = GgufFile::parse_bytes(&bytes).unwrap();
        // The header alone: a prefix that ends before the data parses; one that ends inside
        // the header says it is truncated.
        let header = &bytes[..f.data_offset as usize];
        let g = GgufFile::parse(&Prefix { bytes: header, len }).unwrap();
        assert_eq!(g.tensors, f.tensors);
        let short = Prefix {
            bytes: &header[..20],
            len,
        };
        assert!(matches!(
            GgufFile::parse(&short),
            Err(Error::Truncated { .. })
        ));
        let max = f.data_offset + 416 * 2;
        let sizes = SharedSource::plan(&g, len, max).unwrap();
        assert_eq!(sizes.iter().sum::<u64>(), len);
        assert!(
            sizes.len() >= 3 && sizes.iter().all(|&s| s <= max),
            "{sizes:?}"
        );
        let mut at = 0usize;
        let segments = sizes
            .iter()
            .map(|&n| {
                let s = Arc::new(AlignedBytes::from_slice(&bytes[at..at + n as usize]));
                at += n as usize;
                s
            })
            .collect();
        let src = SharedSource::from_segments(segments);
        assert_eq!(src.len(), len);
        for t in &g.tensors {
            let lent = g.read_tensor(&src, t).unwrap();
            assert!(lent.is_shared(), "{} is lent", t.name);
            assert_eq!(lent.as_slice(), data_of(&f, &bytes, t));
        }
        // A read across a cut is stitched from both segments.
        let cut = sizes[0];
        let across = read_range(&src, cut - 3, 6).unwrap();
        assert_eq!(across.as_slice(), &bytes[cut as usize - 3..][..6]);
        // One tensor larger than a segment may be: refused, named.
        let e = SharedSource::plan(&g, len, 300).unwrap_err();
        assert!(matches!(e, Error::TooLarge { needed: 400, .. }), "{e}");
    }

    fn data_of<'a>(f: &GgufFile, bytes: &'a [u8], t: &TensorInfo) -> &'a [u8] {
        &bytes[(f.data_offset + t.offset) as usize..][..t.size as usize]
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let bytes = sample();
        for n in 0..bytes.len() {
            let e = GgufFile::parse_bytes(&bytes[..n]).unwrap_err();
            assert!(
                matches!(e, Error::Truncated { .. } | Error::Gguf { .. }),
                "cut at {n}: {e}"
            );
        }
    }

    #[test]
    fn bad_magic_version_and_counts_are_named() {
        let mut b = sample();
        b[0] = b'X';
        assert!(GgufFile::parse_bytes(&b)
            .unwrap_err()
            .to_string()
            .contains("magic"));

        let mut b = sample();
        b[4..8].copy_from_slice(&7u32.to_le_bytes());
        assert!(matches!(
            GgufFile::parse_bytes(&b),
            Err(Error::UnsupportedVersion(7))
        ));

        let mut b = sample();
        b[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        let e = GgufFile::parse_bytes(&b).unwrap_err().to_string();
        assert!(e.contains("tensor count"), "{e}");

        let mut b = sample();
        b[16..24].copy_from_slice(&1000u64.to_le_bytes());
        let e = GgufFile::parse_bytes(&b).unwrap_err().to_string();
        assert!(e.contains("metadata key/value count"), "{e}");

        // A string length far past the end of the file.
        let mut b = sample();
        b[24..32].copy_from_slice(&(1u64 << 40).to_le_bytes());
        let e = GgufFile::parse_bytes(&b).unwrap_err().to_string();
        assert!(e.contains("exceeds the limit"), "{e}");
    }

    #[test]
    fn unsupported_tensor_type_names_tensor_and_type() {
        let b = Builder::default()
            .tensor("blk.0.x", &[256], 16, vec![0; 66])
            .build();
        let e = GgufFile::parse_bytes(&b).unwrap_err();
        assert!(matches!(e, Error::UnsupportedDType { .. }));
        assert!(e.to_string().contains("iq2_xxs") && e.to_string().contains("blk.0.x"));
    }

    #[test]
    fn tensor_past_end_of_file_is_truncated() {
        let mut b = sample();
        b.truncate(b.len() - 1);
        assert!(matches!(
            GgufFile::parse_bytes(&b),
            Err(Error::Truncated { .. })
        ));
    }
}
