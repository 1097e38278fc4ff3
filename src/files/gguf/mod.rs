//! A pure-Rust reader of GGUF headers: metadata and tensor infos (versions 2 and 3), without
//! FFI and without reading tensor data.
//!
//! Every count and length is checked against the bytes left in the file before anything is
//! allocated, so a hostile file (an array length of 2^60, a string longer than the file) is
//! an [`Error::NotGguf`] rather than an out-of-memory abort, and nothing here panics.

use std::collections::BTreeMap;
use std::io::{BufReader, Read, Seek};
use std::path::Path;

use crate::error::{Error, Result};

mod writer;
pub use writer::{Generator, Writer};

/// Arrays longer than this are summarised (type and length) instead of kept, unless
/// [`ReadOptions::max_array_len`] says otherwise: a vocabulary of 262k strings is not needed
/// to list a model.
pub const DEFAULT_MAX_ARRAY_LEN: u64 = 4096;

/// How much of a file to keep.
#[derive(Debug, Clone, Copy)]
pub struct ReadOptions {
    /// Arrays with more elements are kept as [`Value::Array`] with `values: None`.
    pub max_array_len: u64,
    /// Check that every tensor's data lies inside the file (catches truncated downloads;
    /// default true). Off, a header alone parses.
    pub check_tensor_bounds: bool,
}

impl Default for ReadOptions {
    fn default() -> Self {
        ReadOptions { max_array_len: DEFAULT_MAX_ARRAY_LEN, check_tensor_bounds: true }
    }
}

impl ReadOptions {
    /// Parse the header only: no check of tensor data against the file size.
    pub fn header_only() -> Self {
        ReadOptions { check_tensor_bounds: false, ..Default::default() }
    }
}

/// The element type of a metadata value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum ValueType {
    /// `u8`.
    U8,
    /// `i8`.
    I8,
    /// `u16`.
    U16,
    /// `i16`.
    I16,
    /// `u32`.
    U32,
    /// `i32`.
    I32,
    /// `f32`.
    F32,
    /// `bool`.
    Bool,
    /// A UTF-8 string.
    String,
    /// An array.
    Array,
    /// `u64`.
    U64,
    /// `i64`.
    I64,
    /// `f64`.
    F64,
}

impl ValueType {
    fn from_u32(v: u32) -> Option<Self> {
        use ValueType::*;
        Some(match v {
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

    /// Bytes of a fixed-size value (strings and arrays: their smallest encoding).
    fn min_size(self) -> u64 {
        use ValueType::*;
        match self {
            U8 | I8 | Bool => 1,
            U16 | I16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 | String => 8,
            Array => 12,
        }
    }
}

/// A metadata value.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(untagged)]
pub enum Value {
    /// Unsigned integer (u8, u16, u32, u64).
    UInt(u64),
    /// Signed integer (i8, i16, i32, i64).
    Int(i64),
    /// Float (f32, f64).
    Float(f64),
    /// Boolean.
    Bool(bool),
    /// String (invalid UTF-8 replaced by U+FFFD).
    String(String),
    /// Array; `values` is `None` when it was longer than [`ReadOptions::max_array_len`].
    Array {
        /// Element type.
        elem: ValueType,
        /// Number of elements.
        len: u64,
        /// The elements, when kept.
        values: Option<Vec<Value>>,
    },
}

impl Value {
    /// As an unsigned integer (non-negative signed values too).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::UInt(v) => Some(v),
            Value::Int(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }
    /// As a float (integers too).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::Float(v) => Some(v),
            Value::UInt(v) => Some(v as f64),
            Value::Int(v) => Some(v as f64),
            _ => None,
        }
    }
    /// As a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }
    /// A short display form (arrays as `[type; len]`).
    pub fn display(&self, max_chars: usize) -> String {
        let s = match self {
            Value::UInt(v) => v.to_string(),
            Value::Int(v) => v.to_string(),
            Value::Float(v) => v.to_string(),
            Value::Bool(v) => v.to_string(),
            Value::String(s) => s.clone(),
            Value::Array { elem, len, .. } => format!("[{elem:?}; {len}]"),
        };
        if s.chars().count() > max_chars {
            let mut t: String = s.chars().take(max_chars).collect();
            t.push('…');
            t
        } else {
            s
        }
    }
}

/// One tensor's description.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TensorInfo {
    /// Name, e.g. `blk.3.attn_q.weight`.
    pub name: String,
    /// Dimensions (innermost first).
    pub dims: Vec<u64>,
    /// ggml type id.
    pub ggml_type: u32,
    /// Offset of its data from the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    /// Number of elements.
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d)).unwrap_or(u64::MAX)
    }
    /// Bytes of data, when the type is known.
    pub fn n_bytes(&self) -> Option<u64> {
        let (block, size) = ggml_type_block(self.ggml_type)?;
        let n = self.n_elements();
        n.checked_div(block)?.checked_mul(size)
    }
    /// The layer index for `blk.N.` tensors.
    pub fn layer(&self) -> Option<u32> {
        self.name.strip_prefix("blk.")?.split('.').next()?.parse().ok()
    }
}

/// The ggml types GGUF files use: (type id, name, elements per block, bytes per block). The
/// one table both [`ggml_type_block`] and [`ggml_type_name`] read.
const GGML_TYPES: &[(u32, &str, u64, u64)] = &[
    (0, "F32", 1, 4),
    (1, "F16", 1, 2),
    (2, "Q4_0", 32, 18),
    (3, "Q4_1", 32, 20),
    (6, "Q5_0", 32, 22),
    (7, "Q5_1", 32, 24),
    (8, "Q8_0", 32, 34),
    (9, "Q8_1", 32, 36),
    (10, "Q2_K", 256, 84),
    (11, "Q3_K", 256, 110),
    (12, "Q4_K", 256, 144),
    (13, "Q5_K", 256, 176),
    (14, "Q6_K", 256, 210),
    (15, "Q8_K", 256, 292),
    (16, "IQ2_XXS", 256, 66),
    (17, "IQ2_XS", 256, 74),
    (18, "IQ3_XXS", 256, 98),
    (19, "IQ1_S", 256, 50),
    (20, "IQ4_NL", 32, 18),
    (21, "IQ3_S", 256, 110),
    (22, "IQ2_S", 256, 82),
    (23, "IQ4_XS", 256, 136),
    (24, "I8", 1, 1),
    (25, "I16", 1, 2),
    (26, "I32", 1, 4),
    (27, "I64", 1, 8),
    (28, "F64", 1, 8),
    (29, "IQ1_M", 256, 56),
    (30, "BF16", 1, 2),
    (34, "TQ1_0", 256, 54),
    (35, "TQ2_0", 256, 66),
    (39, "MXFP4", 32, 17),
];

fn ggml_type(t: u32) -> Option<&'static (u32, &'static str, u64, u64)> {
    GGML_TYPES.iter().find(|e| e.0 == t)
}

/// (elements per block, bytes per block) of a ggml type id, for the types GGUF files use.
pub fn ggml_type_block(t: u32) -> Option<(u64, u64)> {
    ggml_type(t).map(|&(_, _, block, size)| (block, size))
}

/// The name of a ggml type id (`Q4_K`, `F16`, ...).
pub fn ggml_type_name(t: u32) -> &'static str {
    ggml_type(t).map_or("unknown", |e| e.1)
}

/// A parsed GGUF header.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct GgufFile {
    /// Format version (2 or 3).
    pub version: u32,
    /// Metadata in file order.
    pub metadata: Vec<(String, Value)>,
    /// The type each metadata value was written with, in the same order (a [`Value`] keeps
    /// f32 and f64 alike, llama.cpp's readers do not).
    pub value_types: Vec<ValueType>,
    /// Tensor descriptions in file order.
    pub tensors: Vec<TensorInfo>,
    /// Byte offset where tensor data starts.
    pub data_offset: u64,
    /// Byte offset where the metadata ends (and the tensor table starts).
    pub metadata_end: u64,
    /// File size in bytes.
    pub file_size: u64,
}

impl GgufFile {
    /// Reads the header of the file at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile> {
        Self::open_with(path, ReadOptions::default())
    }

    /// Reads the header with explicit options.
    pub fn open_with(path: impl AsRef<Path>, opts: ReadOptions) -> Result<GgufFile> {
        read_file(path.as_ref(), |r| parse(r, opts))
    }

    /// Parses a header from bytes (the whole file or at least its header).
    pub fn from_bytes(bytes: &[u8], opts: ReadOptions) -> std::result::Result<GgufFile, String> {
        let mut r = Reader { inner: bytes, pos: 0, len: bytes.len() as u64 };
        parse(&mut r, opts).map_err(|e| match e {
            ParseError::Io(e) => e.to_string(),
            ParseError::Bad(s) => s,
        })
    }

    /// The type a metadata value was written with.
    pub fn value_type(&self, key: &str) -> Option<ValueType> {
        self.metadata.iter().position(|(k, _)| k == key).and_then(|i| self.value_types.get(i).copied())
    }

    /// A metadata value by key.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// A string value.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key)?.as_str()
    }

    /// An integer value.
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key)?.as_u64()
    }

    /// `general.architecture`.
    pub fn architecture(&self) -> Option<&str> {
        self.get_str("general.architecture")
    }

    /// `{architecture}.{suffix}` as an integer, e.g. `arch_u64("block_count")`.
    pub fn arch_u64(&self, suffix: &str) -> Option<u64> {
        let arch = self.architecture()?;
        self.get_u64(&format!("{arch}.{suffix}"))
    }

    /// Total bytes of tensor data (tensors of unknown type not counted).
    pub fn tensor_bytes(&self) -> u64 {
        self.tensors.iter().filter_map(|t| t.n_bytes()).sum()
    }

    /// Number of parameters (elements of all tensors).
    pub fn n_params(&self) -> u64 {
        self.tensors.iter().map(|t| t.n_elements()).fold(0u64, |a, b| a.saturating_add(b))
    }
}

enum ParseError {
    Io(std::io::Error),
    Bad(String),
}

impl From<std::io::Error> for ParseError {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            ParseError::Bad("truncated header".into())
        } else {
            ParseError::Io(e)
        }
    }
}

fn bad<T>(msg: impl Into<String>) -> std::result::Result<T, ParseError> {
    Err(ParseError::Bad(msg.into()))
}

struct Reader<R> {
    inner: R,
    pos: u64,
    len: u64,
}

impl<R: Read> Reader<R> {
    fn remaining(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }

    fn bytes<const N: usize>(&mut self) -> std::result::Result<[u8; N], ParseError> {
        if self.remaining() < N as u64 {
            return bad(format!("truncated at byte {}", self.pos));
        }
        let mut b = [0u8; N];
        self.inner.read_exact(&mut b)?;
        self.pos += N as u64;
        Ok(b)
    }

    fn u32(&mut self) -> std::result::Result<u32, ParseError> {
        Ok(u32::from_le_bytes(self.bytes()?))
    }

    fn u64(&mut self) -> std::result::Result<u64, ParseError> {
        Ok(u64::from_le_bytes(self.bytes()?))
    }

    /// Reads `n` raw bytes, refusing lengths past the end of the file before allocating.
    fn raw(&mut self, n: u64, what: &str) -> std::result::Result<Vec<u8>, ParseError> {
        if n > self.remaining() {
            return bad(format!("{what} of {n} bytes at byte {} runs past the end of the file", self.pos));
        }
        let mut v = vec![0u8; n as usize];
        self.inner.read_exact(&mut v)?;
        self.pos += n;
        Ok(v)
    }

    fn skip(&mut self, n: u64, what: &str) -> std::result::Result<(), ParseError> {
        if n > self.remaining() {
            return bad(format!("{what} of {n} bytes at byte {} runs past the end of the file", self.pos));
        }
        let copied = std::io::copy(&mut (&mut self.inner).take(n), &mut std::io::sink())?;
        if copied != n {
            return bad("truncated header");
        }
        self.pos += n;
        Ok(())
    }

    fn string(&mut self, what: &str) -> std::result::Result<Vec<u8>, ParseError> {
        let n = self.u64()?;
        self.raw(n, what)
    }

    fn value(&mut self, t: ValueType, opts: ReadOptions, depth: u32) -> std::result::Result<Value, ParseError> {
        Ok(match t {
            ValueType::U8 => Value::UInt(self.bytes::<1>()?[0] as u64),
            ValueType::I8 => Value::Int(self.bytes::<1>()?[0] as i8 as i64),
            ValueType::U16 => Value::UInt(u16::from_le_bytes(self.bytes()?) as u64),
            ValueType::I16 => Value::Int(i16::from_le_bytes(self.bytes()?) as i64),
            ValueType::U32 => Value::UInt(self.u32()? as u64),
            ValueType::I32 => Value::Int(i32::from_le_bytes(self.bytes()?) as i64),
            ValueType::F32 => Value::Float(f32::from_le_bytes(self.bytes()?) as f64),
            ValueType::Bool => match self.bytes::<1>()?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return bad(format!("bool value {b} at byte {}", self.pos - 1)),
            },
            ValueType::U64 => Value::UInt(self.u64()?),
            ValueType::I64 => Value::Int(i64::from_le_bytes(self.bytes()?)),
            ValueType::F64 => Value::Float(f64::from_le_bytes(self.bytes()?)),
            ValueType::String => Value::String(String::from_utf8_lossy(&self.string("string")?).into_owned()),
            ValueType::Array => {
                if depth > 2 {
                    return bad("arrays nested deeper than 2 levels");
                }
                let raw_elem = self.u32()?;
                let elem = ValueType::from_u32(raw_elem)
                    .ok_or_else(|| ParseError::Bad(format!("unknown array element type {raw_elem}")))?;
                let len = self.u64()?;
                // Every element takes at least `min_size` bytes: a length the file cannot
                // hold is refused before anything is allocated.
                if len.checked_mul(elem.min_size()).is_none_or(|n| n > self.remaining()) {
                    return bad(format!("array of {len} {elem:?} at byte {} does not fit the file", self.pos));
                }
                if len <= opts.max_array_len {
                    let mut values = Vec::with_capacity(len as usize);
                    for _ in 0..len {
                        values.push(self.value(elem, opts, depth + 1)?);
                    }
                    Value::Array { elem, len, values: Some(values) }
                } else {
                    match elem {
                        ValueType::String => {
                            for _ in 0..len {
                                let n = self.u64()?;
                                self.skip(n, "string")?;
                            }
                        }
                        ValueType::Array => {
                            for _ in 0..len {
                                self.value(
                                    ValueType::Array,
                                    ReadOptions { max_array_len: 0, check_tensor_bounds: false },
                                    depth + 1,
                                )?;
                            }
                        }
                        fixed => self.skip(len * fixed.min_size(), "array")?,
                    }
                    Value::Array { elem, len, values: None }
                }
            }
        })
    }
}

/// The raw bytes of each string of the string-array metadata `key` (at most `max_len` of them),
/// without the UTF-8 repair [`Value::String`] makes: for checks that must compare texts the way
/// llama.cpp does (byte for byte). `Ok(None)` when the key is absent or not a string array.
pub fn string_array_bytes(path: impl AsRef<Path>, key: &str, max_len: u64) -> Result<Option<Vec<Vec<u8>>>> {
    let skip = ReadOptions { max_array_len: 0, check_tensor_bounds: false };
    read_file(path.as_ref(), |r| {
        if &r.bytes::<4>()? != b"GGUF" {
            return bad("not a GGUF file");
        }
        let _version = r.u32()?;
        let _n_tensors = r.u64()?;
        let n_kv = r.u64()?;
        for _ in 0..n_kv {
            let k = r.string("key")?;
            let raw_type = r.u32()?;
            let t = ValueType::from_u32(raw_type).ok_or_else(|| ParseError::Bad(format!("unknown type {raw_type}")))?;
            if k != key.as_bytes() || t != ValueType::Array {
                r.value(t, skip, 0)?;
                continue;
            }
            let elem = r.u32()?;
            let n = r.u64()?;
            if ValueType::from_u32(elem) != Some(ValueType::String) || n > max_len || n > r.remaining() / 8 {
                return Ok(None);
            }
            let mut out = Vec::with_capacity(n as usize);
            for _ in 0..n {
                out.push(r.string("string")?);
            }
            return Ok(Some(out));
        }
        Ok(None)
    })
}

/// Opens `path` and runs `read` over a buffered reader of it; parse failures become
/// [`Error::Io`] or [`Error::NotGguf`] naming the file.
fn read_file<T>(
    path: &Path,
    read: impl FnOnce(&mut Reader<BufReader<std::fs::File>>) -> std::result::Result<T, ParseError>,
) -> Result<T> {
    let io = |source| Error::Io { path: path.to_path_buf(), source };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let len = f.seek(std::io::SeekFrom::End(0)).map_err(io)?;
    f.rewind().map_err(io)?;
    let mut r = Reader { inner: BufReader::with_capacity(1 << 16, f), pos: 0, len };
    read(&mut r).map_err(|e| match e {
        ParseError::Io(source) => Error::Io { path: path.to_path_buf(), source },
        ParseError::Bad(reason) => Error::NotGguf { path: path.to_path_buf(), reason },
    })
}

fn parse<R: Read>(r: &mut Reader<R>, opts: ReadOptions) -> std::result::Result<GgufFile, ParseError> {
    let magic = r.bytes::<4>()?;
    if &magic != b"GGUF" {
        return bad(format!("magic is {:?}, expected \"GGUF\"", String::from_utf8_lossy(&magic)));
    }
    let version = r.u32()?;
    if !(2..=3).contains(&version) {
        return bad(format!("unsupported GGUF version {version} (2 and 3 are read)"));
    }
    let n_tensors = r.u64()?;
    let n_kv = r.u64()?;
    // A key-value pair takes at least 8 (key length) + 4 (type) + 1 bytes; a tensor info
    // at least 8 + 4 + 4 + 8.
    if n_kv.checked_mul(13).is_none_or(|n| n > r.remaining()) {
        return bad(format!("{n_kv} metadata entries cannot fit the file"));
    }
    if n_tensors.checked_mul(24).is_none_or(|n| n > r.remaining()) {
        return bad(format!("{n_tensors} tensors cannot fit the file"));
    }
    let mut metadata = Vec::with_capacity(n_kv.min(4096) as usize);
    let mut value_types = Vec::with_capacity(n_kv.min(4096) as usize);
    let mut seen = BTreeMap::new();
    for i in 0..n_kv {
        let key = r.string("key")?;
        let key = String::from_utf8(key).map_err(|_| ParseError::Bad(format!("metadata key {i} is not UTF-8")))?;
        let raw_type = r.u32()?;
        let t = ValueType::from_u32(raw_type)
            .ok_or_else(|| ParseError::Bad(format!("metadata {key:?} has unknown value type {raw_type}")))?;
        let value = r.value(t, opts, 0)?;
        if seen.insert(key.clone(), ()).is_some() {
            return bad(format!("metadata key {key:?} appears twice"));
        }
        metadata.push((key, value));
        value_types.push(t);
    }
    let metadata_end = r.pos;
    let mut tensors = Vec::with_capacity(n_tensors.min(65_536) as usize);
    for i in 0..n_tensors {
        let name = String::from_utf8(r.string("tensor name")?)
            .map_err(|_| ParseError::Bad(format!("tensor {i} name is not UTF-8")))?;
        let n_dims = r.u32()?;
        if n_dims > 8 {
            return bad(format!("tensor {name:?} has {n_dims} dimensions"));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(r.u64()?);
        }
        let ggml_type = r.u32()?;
        let offset = r.u64()?;
        tensors.push(TensorInfo { name, dims, ggml_type, offset });
    }
    let alignment =
        metadata.iter().find(|(k, _)| k == "general.alignment").and_then(|(_, v)| v.as_u64()).unwrap_or(32).max(1);
    let data_offset = r.pos.div_ceil(alignment).saturating_mul(alignment);
    if opts.check_tensor_bounds {
        for t in &tensors {
            let end = t.n_bytes().and_then(|n| data_offset.checked_add(t.offset)?.checked_add(n));
            match end {
                Some(end) if end <= r.len => {}
                Some(end) => {
                    return bad(format!(
                        "tensor {:?} ends at byte {end}, past the end of the {}-byte file (truncated?)",
                        t.name, r.len
                    ))
                }
                None if ggml_type_block(t.ggml_type).is_none() => {
                    return bad(format!("tensor {:?} has unknown type {}", t.name, t.ggml_type))
                }
                None => return bad(format!("tensor {:?} has an impossible size", t.name)),
            }
        }
    }
    Ok(GgufFile { version, metadata, value_types, tensors, data_offset, metadata_end, file_size: r.len })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        Writer::new()
            .meta_str("general.architecture", "llama")
            .meta_str("general.name", "tiny test")
            .meta_u32("llama.block_count", 2)
            .meta_u32("llama.context_length", 4096)
            .meta("general.file_type", Value::UInt(1))
            .meta("llama.rope.freq_base", Value::Float(10000.0))
            .meta("tokenizer.ggml.add_bos_token", Value::Bool(true))
            .meta(
                "tokenizer.ggml.tokens",
                Value::Array {
                    elem: ValueType::String,
                    len: 3,
                    values: Some(vec![Value::String("a".into()), Value::String("b".into()), Value::String("ü".into())]),
                },
            )
            .meta(
                "tokenizer.ggml.scores",
                Value::Array {
                    elem: ValueType::F32,
                    len: 2,
                    values: Some(vec![Value::Float(0.5), Value::Float(-1.0)]),
                },
            )
            .tensor_f32("token_embd.weight", &[4, 3], &[0.0; 12])
            .tensor_f32("blk.0.attn_q.weight", &[4, 4], &[1.0; 16])
            .tensor("blk.1.ffn_up.weight", &[32, 2], 8, vec![0u8; 68])
            .to_bytes()
    }

    #[test]
    fn round_trip() {
        let bytes = sample();
        let f = GgufFile::from_bytes(&bytes, ReadOptions::default()).unwrap();
        assert_eq!(f.version, 3);
        assert_eq!(f.architecture(), Some("llama"));
        assert_eq!(f.arch_u64("block_count"), Some(2));
        assert_eq!(f.get("llama.rope.freq_base").and_then(Value::as_f64), Some(10000.0));
        assert_eq!(f.get("tokenizer.ggml.add_bos_token"), Some(&Value::Bool(true)));
        match f.get("tokenizer.ggml.tokens") {
            Some(Value::Array { elem: ValueType::String, len: 3, values: Some(v) }) => {
                assert_eq!(v[2].as_str(), Some("ü"))
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(f.tensors.len(), 3);
        assert_eq!(f.tensors[1].name, "blk.0.attn_q.weight");
        assert_eq!(f.tensors[1].layer(), Some(0));
        assert_eq!(f.tensors[0].layer(), None);
        assert_eq!(f.tensors[2].n_bytes(), Some(68));
        assert_eq!(f.tensor_bytes(), 48 + 64 + 68);
        assert_eq!(f.n_params(), 12 + 16 + 64);
        assert_eq!(f.data_offset % 32, 0);
        assert!(f.data_offset < bytes.len() as u64);
    }

    #[test]
    fn long_arrays_are_summarised() {
        let f = GgufFile::from_bytes(&sample(), ReadOptions { max_array_len: 2, ..Default::default() }).unwrap();
        assert!(matches!(f.get("tokenizer.ggml.tokens"), Some(Value::Array { len: 3, values: None, .. })));
        assert!(matches!(f.get("tokenizer.ggml.scores"), Some(Value::Array { len: 2, values: Some(_), .. })));
        // Tensor infos after the skipped array are still read correctly.
        assert_eq!(f.tensors.len(), 3);
    }

    #[test]
    fn truncation_at_every_header_offset_is_an_error() {
        let bytes = sample();
        let ok_from = (0..=bytes.len())
            .find(|&cut| GgufFile::from_bytes(&bytes[..cut], ReadOptions::header_only()).is_ok())
            .unwrap();
        // Every cut inside the header fails; the header ends within the padding before the data.
        for cut in 0..ok_from {
            assert!(GgufFile::from_bytes(&bytes[..cut], ReadOptions::header_only()).is_err(), "cut {cut}");
        }
        // With the default bounds check, any cut into the tensor data is an error too.
        for cut in [ok_from, bytes.len() - 1] {
            let e = GgufFile::from_bytes(&bytes[..cut], ReadOptions::default()).unwrap_err();
            assert!(e.contains("past the end"), "{e}");
        }
        let full = GgufFile::from_bytes(&bytes, ReadOptions::default()).unwrap();
        assert!(ok_from as u64 <= full.data_offset && full.data_offset - (ok_from as u64) < 32);
        assert!(ok_from > 100);
    }

    fn header(version: u32, n_tensors: u64, n_kv: u64) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend_from_slice(&version.to_le_bytes());
        b.extend_from_slice(&n_tensors.to_le_bytes());
        b.extend_from_slice(&n_kv.to_le_bytes());
        b
    }

    fn kv(b: &mut Vec<u8>, key: &[u8], t: u32) {
        b.extend_from_slice(&(key.len() as u64).to_le_bytes());
        b.extend_from_slice(key);
        b.extend_from_slice(&t.to_le_bytes());
    }

    #[test]
    fn hostile_headers_are_errors_without_huge_allocations() {
        let err = |b: &[u8]| GgufFile::from_bytes(b, ReadOptions::default()).unwrap_err();
        assert!(err(b"GGML\x03\0\0\0").contains("magic"));
        assert!(err(&header(1, 0, 0)).contains("version"));
        assert!(err(&header(4, 0, 0)).contains("version"));
        assert!(err(&header(3, 0, 1 << 60)).contains("metadata entries"));
        assert!(err(&header(3, u64::MAX, 0)).contains("tensors"));

        // An array claiming 2^60 elements.
        let mut b = header(3, 0, 1);
        kv(&mut b, b"big", 9);
        b.extend_from_slice(&4u32.to_le_bytes());
        b.extend_from_slice(&(1u64 << 60).to_le_bytes());
        assert!(err(&b).contains("does not fit"));

        // A string longer than the file.
        let mut b = header(3, 0, 1);
        kv(&mut b, b"s", 8);
        b.extend_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(err(&b).contains("past the end"));

        // A key longer than the file, a non-UTF-8 key, an unknown value type, a bad bool.
        let mut b = header(3, 0, 1);
        b.extend_from_slice(&u64::MAX.to_le_bytes());
        b.extend_from_slice(&[0; 16]);
        assert!(err(&b).contains("past the end"));
        let mut b = header(3, 0, 1);
        kv(&mut b, b"\xff\xfe", 4);
        b.extend_from_slice(&7u32.to_le_bytes());
        assert!(err(&b).contains("not UTF-8"));
        let mut b = header(3, 0, 1);
        kv(&mut b, b"k", 99);
        b.extend_from_slice(&[0; 16]);
        assert!(err(&b).contains("unknown value type"));
        let mut b = header(3, 0, 1);
        kv(&mut b, b"k", 7);
        b.push(9);
        assert!(err(&b).contains("bool"));

        // Duplicate keys, too many dimensions, nested arrays too deep.
        let mut b = header(3, 0, 2);
        for _ in 0..2 {
            kv(&mut b, b"k", 4);
            b.extend_from_slice(&1u32.to_le_bytes());
        }
        assert!(err(&b).contains("twice"));
        let mut b = header(3, 1, 0);
        b.extend_from_slice(&1u64.to_le_bytes());
        b.push(b't');
        b.extend_from_slice(&99u32.to_le_bytes());
        b.extend_from_slice(&[0; 64]);
        assert!(err(&b).contains("dimensions"));
        let mut b = header(3, 0, 1);
        kv(&mut b, b"deep", 9);
        for _ in 0..4 {
            b.extend_from_slice(&9u32.to_le_bytes());
            b.extend_from_slice(&1u64.to_le_bytes());
        }
        b.extend_from_slice(&[0; 32]);
        assert!(err(&b).contains("nested"));
    }

    #[test]
    fn random_mutations_never_panic() {
        let base = sample();
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..3000 {
            let mut b = base.clone();
            for _ in 0..(next() % 8 + 1) {
                let i = (next() as usize) % b.len();
                b[i] = next() as u8;
            }
            let cut = (next() as usize) % (b.len() + 1);
            let _ = GgufFile::from_bytes(&b[..cut], ReadOptions::default());
        }
    }

    #[test]
    fn type_table_matches_ggml() {
        for t in 0..40u32 {
            let Some((block, size)) = ggml_type_block(t) else { continue };
            // SAFETY: plain queries on a known type id.
            let (b, s) = unsafe { (llama_cpp_sys_2::ggml_blck_size(t as _), llama_cpp_sys_2::ggml_type_size(t as _)) };
            assert_eq!((block, size), (b as u64, s as u64), "type {t} ({})", ggml_type_name(t));
            // SAFETY: ggml returns a static NUL-terminated name for a known type id.
            let c = unsafe { std::ffi::CStr::from_ptr(llama_cpp_sys_2::ggml_type_name(t as _)) };
            assert!(c.to_string_lossy().eq_ignore_ascii_case(ggml_type_name(t)), "type {t}: {c:?}");
        }
    }
}
