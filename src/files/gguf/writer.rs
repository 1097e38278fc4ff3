//! [`Writer`]: writes GGUF files (version 3) with metadata and tensor data, for test
//! fixtures and synthetic models.

use std::io::Write;

use super::{Value, ValueType};

/// Writes tensor data of a known size into a stream (for data generated on the fly).
pub type Generator = Box<dyn Fn(&mut dyn Write) -> std::io::Result<()> + Send + Sync>;

/// A tensor's data: bytes in memory, or a generator that writes exactly `n_bytes`.
enum Data {
    Bytes(Vec<u8>),
    Generated { n_bytes: u64, generate: Generator },
}

impl Data {
    fn len(&self) -> u64 {
        match self {
            Data::Bytes(b) => b.len() as u64,
            Data::Generated { n_bytes, .. } => *n_bytes,
        }
    }
}

/// Builds a GGUF file: metadata first, then tensors with their data. Data can be generated
/// while the file is written, so files larger than memory can be made.
#[derive(Default)]
pub struct Writer {
    metadata: Vec<(String, Value)>,
    tensors: Vec<(String, Vec<u64>, u32, Data)>,
    alignment: u64,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer").field("metadata", &self.metadata.len()).field("tensors", &self.tensors.len()).finish()
    }
}

impl Writer {
    /// An empty file with the default 32-byte alignment.
    pub fn new() -> Self {
        Writer { alignment: 32, ..Default::default() }
    }

    /// Adds a metadata entry.
    pub fn meta(mut self, key: &str, value: Value) -> Self {
        if key == "general.alignment" {
            if let Some(a) = value.as_u64().filter(|a| *a > 0) {
                self.alignment = a;
            }
        }
        self.metadata.push((key.to_string(), value));
        self
    }

    /// Sets a metadata entry: replaces the value of an existing key in place, or adds it.
    pub fn set_meta(mut self, key: &str, value: Value) -> Self {
        match self.metadata.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => {
                entry.1 = value;
                self
            }
            None => self.meta(key, value),
        }
    }

    /// Adds a string entry.
    pub fn meta_str(self, key: &str, value: &str) -> Self {
        self.meta(key, Value::String(value.to_string()))
    }

    /// Adds a u32 entry.
    pub fn meta_u32(self, key: &str, value: u32) -> Self {
        self.meta(key, Value::UInt(value as u64))
    }

    /// Adds a tensor: name, dimensions (innermost first), ggml type id and its raw data.
    pub fn tensor(mut self, name: &str, dims: &[u64], ggml_type: u32, data: Vec<u8>) -> Self {
        self.tensors.push((name.to_string(), dims.to_vec(), ggml_type, Data::Bytes(data)));
        self
    }

    /// Adds a tensor whose `n_bytes` of data `generate` writes when the file is written.
    pub fn tensor_generated(
        mut self,
        name: &str,
        dims: &[u64],
        ggml_type: u32,
        n_bytes: u64,
        generate: Generator,
    ) -> Self {
        self.tensors.push((name.to_string(), dims.to_vec(), ggml_type, Data::Generated { n_bytes, generate }));
        self
    }

    /// Replaces the tensor `name` (keeping its place) by an F32 one; adds it if there is none.
    pub fn replace_tensor_f32(mut self, name: &str, dims: &[u64], values: &[f32]) -> Self {
        let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        match self.tensors.iter().position(|t| t.0 == name) {
            Some(i) => {
                self.tensors[i] = (name.to_string(), dims.to_vec(), 0, Data::Bytes(data));
                self
            }
            None => self.tensor(name, dims, 0, data),
        }
    }

    /// Adds an F32 tensor.
    pub fn tensor_f32(self, name: &str, dims: &[u64], values: &[f32]) -> Self {
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.tensor(name, dims, 0, data)
    }

    /// The header (metadata and tensor infos, padded to the alignment) and each tensor's
    /// offset in the data section.
    fn header(&self) -> (Vec<u8>, Vec<u64>) {
        let mut out = Vec::new();
        out.extend_from_slice(b"GGUF");
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            put_str(&mut out, k);
            out.extend_from_slice(&type_id(v).to_le_bytes());
            put_value(&mut out, v);
        }
        let align = |n: u64, a: u64| n.div_ceil(a) * a;
        let mut offset = 0u64;
        let mut offsets = Vec::new();
        for (_, _, _, data) in &self.tensors {
            offsets.push(offset);
            offset = align(offset + data.len(), self.alignment);
        }
        for ((name, dims, t, _), off) in self.tensors.iter().zip(&offsets) {
            put_str(&mut out, name);
            out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
            for d in dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&t.to_le_bytes());
            out.extend_from_slice(&off.to_le_bytes());
        }
        let start = align(out.len() as u64, self.alignment);
        out.resize(start as usize, 0);
        (out, offsets)
    }

    /// Writes the whole file to `out`.
    pub fn write(&self, out: &mut dyn Write) -> std::io::Result<()> {
        let (header, offsets) = self.header();
        out.write_all(&header)?;
        let mut pos = 0u64;
        for ((name, _, _, data), off) in self.tensors.iter().zip(&offsets) {
            out.write_all(&vec![0u8; (off - pos) as usize])?;
            let mut counting = Counting { inner: &mut *out, n: 0 };
            match data {
                Data::Bytes(b) => counting.write_all(b)?,
                Data::Generated { generate, .. } => generate(&mut counting)?,
            }
            if counting.n != data.len() {
                return Err(std::io::Error::other(format!(
                    "tensor {name}: generator wrote {} bytes, {} declared",
                    counting.n,
                    data.len()
                )));
            }
            pos = off + data.len();
        }
        Ok(())
    }

    /// The encoded file in memory.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Writing to a Vec cannot fail except through a generator's own error.
        let _ = self.write(&mut out);
        out
    }

    /// Writes the file (streaming; generated tensors never sit in memory whole).
    pub fn write_to(&self, path: impl AsRef<std::path::Path>) -> std::io::Result<()> {
        let f = std::fs::File::create(path)?;
        let mut w = std::io::BufWriter::with_capacity(1 << 22, f);
        self.write(&mut w)?;
        w.flush()?;
        w.into_inner().map_err(|e| e.into_error())?.sync_all()
    }
}

struct Counting<'a> {
    inner: &'a mut dyn Write,
    n: u64,
}

impl Write for Counting<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// The type id a value is written with: integers as u32/i32 when they fit, else 64-bit.
fn type_id(v: &Value) -> u32 {
    match v {
        Value::UInt(x) if *x <= u32::MAX as u64 => 4,
        Value::UInt(_) => 10,
        Value::Int(x) if i32::try_from(*x).is_ok() => 5,
        Value::Int(_) => 11,
        Value::Float(_) => 6,
        Value::Bool(_) => 7,
        Value::String(_) => 8,
        Value::Array { .. } => 9,
    }
}

fn elem_id(t: ValueType) -> u32 {
    match t {
        ValueType::U8 => 0,
        ValueType::I8 => 1,
        ValueType::U16 => 2,
        ValueType::I16 => 3,
        ValueType::U32 => 4,
        ValueType::I32 => 5,
        ValueType::F32 => 6,
        ValueType::Bool => 7,
        ValueType::String => 8,
        ValueType::Array => 9,
        ValueType::U64 => 10,
        ValueType::I64 => 11,
        ValueType::F64 => 12,
    }
}

fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::UInt(x) if *x <= u32::MAX as u64 => out.extend_from_slice(&(*x as u32).to_le_bytes()),
        Value::UInt(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Int(x) => match i32::try_from(*x) {
            Ok(x) => out.extend_from_slice(&x.to_le_bytes()),
            Err(_) => out.extend_from_slice(&x.to_le_bytes()),
        },
        Value::Float(x) => out.extend_from_slice(&(*x as f32).to_le_bytes()),
        Value::Bool(b) => out.push(*b as u8),
        Value::String(s) => put_str(out, s),
        Value::Array { elem, values, .. } => {
            let values = values.as_deref().unwrap_or(&[]);
            out.extend_from_slice(&elem_id(*elem).to_le_bytes());
            out.extend_from_slice(&(values.len() as u64).to_le_bytes());
            for x in values {
                put_elem(out, *elem, x);
            }
        }
    }
}

/// Array elements are written with the array's element type, not their own.
fn put_elem(out: &mut Vec<u8>, elem: ValueType, v: &Value) {
    match (elem, v) {
        (ValueType::U8, x) => out.push(x.as_u64().unwrap_or(0) as u8),
        (ValueType::I8, x) => out.push(x.as_f64().unwrap_or(0.0) as i8 as u8),
        (ValueType::U16, x) => out.extend_from_slice(&(x.as_u64().unwrap_or(0) as u16).to_le_bytes()),
        (ValueType::I16, x) => out.extend_from_slice(&(x.as_f64().unwrap_or(0.0) as i16).to_le_bytes()),
        (ValueType::U32, x) => out.extend_from_slice(&(x.as_u64().unwrap_or(0) as u32).to_le_bytes()),
        (ValueType::I32, x) => out.extend_from_slice(&(x.as_f64().unwrap_or(0.0) as i32).to_le_bytes()),
        (ValueType::F32, x) => out.extend_from_slice(&(x.as_f64().unwrap_or(0.0) as f32).to_le_bytes()),
        (ValueType::U64, x) => out.extend_from_slice(&x.as_u64().unwrap_or(0).to_le_bytes()),
        (ValueType::I64, x) => out.extend_from_slice(&(x.as_f64().unwrap_or(0.0) as i64).to_le_bytes()),
        (ValueType::F64, x) => out.extend_from_slice(&x.as_f64().unwrap_or(0.0).to_le_bytes()),
        (ValueType::Bool, Value::Bool(b)) => out.push(*b as u8),
        (ValueType::Bool, _) => out.push(0),
        (ValueType::String, Value::String(s)) => put_str(out, s),
        (ValueType::String, _) => put_str(out, ""),
        (ValueType::Array, v) => put_value(out, v),
    }
}
