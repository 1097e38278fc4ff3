//! LoRA adapters and control vectors: changes to a model's weights or activations that a
//! context applies at decode time, without another copy of the model.
//!
//! A [`LoraAdapter`] is loaded once per model (`llama_adapter_lora_init`) and applied by any
//! number of contexts of that model, each with its own scale ([`Context::set_lora`]). A
//! [`ControlVector`] adds a direction to the hidden state of chosen layers
//! ([`Context::set_control_vector`]).
//!
//! llama.cpp aborts the process on some malformed adapter files (a metadata value of another
//! type than it reads, tensors of more than two dimensions reach its matrix product), and on
//! the others only logs why it failed. So every file is read and checked here first, against
//! the model's own tensors, and refused with an [`Error::Adapter`] that says why.
//!
//! [`Context::set_lora`]: crate::Context::set_lora
//! [`Context::set_control_vector`]: crate::Context::set_control_vector

use std::collections::HashMap;
use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::Arc;

use crate::gguf::{GgufFile, ReadOptions, Value, ValueType};
use crate::model::Model;
use crate::{sys, Error, Result};

/// The tensor types an adapter's A and B may have (F32, F16, BF16, Q8_0): what LoRA
/// converters write, and what ggml's matrix product takes on every backend.
const ADAPTER_TYPES: [u32; 4] = [0, 1, 30, 8];

/// A LoRA adapter loaded for one model. Cheap to clone (the weights are shared); it keeps its
/// model alive, and is freed when the last clone, and every context it was set on, are gone.
///
/// ```no_run
/// # fn main() -> rocm_llama::Result<()> {
/// use rocm_llama::{Context, ContextConfig, LoadConfig, LoraAdapter, Model};
/// let model = std::sync::Arc::new(Model::load("model.gguf", &LoadConfig::default())?);
/// let adapter = LoraAdapter::load(&model, "adapter.gguf")?;
/// let mut ctx = Context::new(&model, &ContextConfig::default())?;
/// ctx.set_lora(&[(adapter, 0.8)])?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct LoraAdapter {
    inner: Arc<LoraInner>,
}

struct LoraInner {
    ptr: NonNull<sys::llama_adapter_lora>,
    /// Dropped after the adapter is freed (fields drop after `drop`).
    model: Arc<Model>,
    path: PathBuf,
    alpha: Option<f32>,
    rank: u64,
    weights: usize,
}

// SAFETY: an adapter is not changed after loading; contexts on other threads only read its
// tensors while they decode, and it is freed once, by the last owner.
unsafe impl Send for LoraInner {}
// SAFETY: as above; `&LoraInner` gives no way to change it.
unsafe impl Sync for LoraInner {}

impl Drop for LoraInner {
    fn drop(&mut self) {
        // SAFETY: made by `llama_adapter_lora_init`, freed once, before its model (the
        // `Arc` in `model` is released after this).
        unsafe { sys::llama_adapter_lora_free(self.ptr.as_ptr()) };
    }
}

impl LoraAdapter {
    /// Loads the LoRA adapter at `path` for `model`. A file that is not a LoRA adapter, one
    /// made for another architecture or other tensor shapes, an activated LoRA (aLoRA, not
    /// supported), or a model loaded without weights is an [`Error::Adapter`] (or
    /// [`Error::InvalidState`]) saying why.
    pub fn load(model: &Arc<Model>, path: impl AsRef<Path>) -> Result<LoraAdapter> {
        let path = path.as_ref();
        if model.is_vocab_only() {
            return Err(Error::InvalidState(
                "the model was loaded with vocab_only: it has no weights for an adapter to change".into(),
            ));
        }
        let checked = check_lora(model, path)?;
        let c_path = CString::new(path.to_string_lossy().as_bytes())
            .map_err(|e| Error::NulByte { what: "adapter path", offset: e.nul_position() })?;
        crate::init::init();
        let (raw, log) = crate::init::capture_log(|| {
            // SAFETY: the model is alive (borrowed); the path is a NUL-terminated string. The file
            // was checked above for everything llama.cpp asserts on while loading.
            unsafe { sys::llama_adapter_lora_init(model.as_ptr(), c_path.as_ptr()) }
        });
        let ptr = NonNull::new(raw).ok_or_else(|| Error::Adapter {
            path: path.to_path_buf(),
            reason: crate::error::llama_reason(&log).unwrap_or_else(|| "llama.cpp could not load it".into()),
        })?;
        Ok(LoraAdapter {
            inner: Arc::new(LoraInner {
                ptr,
                model: model.clone(),
                path: path.to_path_buf(),
                alpha: checked.alpha,
                rank: checked.rank,
                weights: checked.weights,
            }),
        })
    }

    /// The file it was loaded from.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// `adapter.lora.alpha`, when the file gives one: the scale applied is then
    /// `scale * alpha / rank`, else `scale`.
    pub fn alpha(&self) -> Option<f32> {
        self.inner.alpha
    }

    /// The rank of its first weight (all of a converter's weights share it).
    pub fn rank(&self) -> u64 {
        self.inner.rank
    }

    /// How many of the model's weights it changes.
    pub fn n_weights(&self) -> usize {
        self.inner.weights
    }

    /// Whether it was loaded for `model`.
    pub(crate) fn belongs_to(&self, model: &Model) -> bool {
        std::ptr::eq(self.inner.model.raw(), model.raw())
    }

    pub(crate) fn raw(&self) -> *mut sys::llama_adapter_lora {
        self.inner.ptr.as_ptr()
    }

    /// Whether two handles are the same loaded adapter.
    pub fn same(&self, other: &LoraAdapter) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

impl std::fmt::Debug for LoraAdapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoraAdapter")
            .field("path", &self.inner.path)
            .field("alpha", &self.inner.alpha)
            .field("rank", &self.inner.rank)
            .field("weights", &self.inner.weights)
            .finish()
    }
}

/// What tells one set of adapters with their scales from another (adapters at scale 0 left
/// out, order ignored, as llama.cpp applies them): KV cells computed under one set are only
/// valid under the same set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub(crate) struct LoraKey(Vec<(usize, u32)>);

impl LoraKey {
    pub(crate) fn of(set: &[(LoraAdapter, f32)]) -> LoraKey {
        let mut key: Vec<(usize, u32)> =
            set.iter().filter(|(_, s)| *s != 0.0).map(|(a, s)| (a.raw() as usize, s.to_bits())).collect();
        key.sort_unstable();
        LoraKey(key)
    }
}

/// What the checks learned of a LoRA file.
struct CheckedLora {
    alpha: Option<f32>,
    rank: u64,
    weights: usize,
}

/// Everything llama.cpp would abort on, or fail on without saying why to the caller, checked
/// against the model's tensors.
fn check_lora(model: &Model, path: &Path) -> Result<CheckedLora> {
    let bad = |reason: String| Error::Adapter { path: path.to_path_buf(), reason };
    let file = GgufFile::open_with(path, ReadOptions::header_only()).map_err(|e| bad(e.to_string()))?;
    // llama.cpp reads these with typed getters that assert on the type.
    for key in ["general.type", "general.architecture", "adapter.type"] {
        match file.value_type(key) {
            None | Some(ValueType::String) => {}
            Some(t) => return Err(bad(format!("{key} is a {t:?}, not a string"))),
        }
    }
    if let Some(t) = file.value_type("adapter.lora.alpha").filter(|t| *t != ValueType::F32) {
        return Err(bad(format!("adapter.lora.alpha is a {t:?}, not an F32")));
    }
    if file.get("adapter.alora.invocation_tokens").is_some() {
        return Err(bad("activated LoRA (aLoRA) adapters are not supported".into()));
    }
    if file.get_str("general.type") != Some("adapter") || file.get_str("adapter.type") != Some("lora") {
        return Err(bad(format!(
            "not a LoRA adapter (general.type {:?}, adapter.type {:?}; expected \"adapter\" and \"lora\")",
            file.get_str("general.type").unwrap_or(""),
            file.get_str("adapter.type").unwrap_or("")
        )));
    }
    let arch = model.architecture();
    match file.get_str("general.architecture") {
        Some(a) if a == arch => {}
        other => {
            return Err(bad(format!("made for architecture {:?}, the model is {arch:?}", other.unwrap_or("(none)"))))
        }
    }
    let alpha = match file.get("adapter.lora.alpha") {
        Some(Value::Float(a)) if a.is_finite() => Some(*a as f32).filter(|a| *a != 0.0),
        Some(other) => return Err(bad(format!("adapter.lora.alpha is {other:?}"))),
        None => None,
    };
    let base = model_tensor_dims(model.path())?;
    let mut pairs: HashMap<&str, (Option<&crate::gguf::TensorInfo>, Option<&crate::gguf::TensorInfo>)> = HashMap::new();
    for t in &file.tensors {
        if let Some(name) = t.name.strip_suffix(".lora_a") {
            pairs.entry(name).or_default().0 = Some(t);
        } else if let Some(name) = t.name.strip_suffix(".lora_b") {
            pairs.entry(name).or_default().1 = Some(t);
        } else if !t.name.ends_with("_norm.weight") {
            return Err(bad(format!("tensor {} is neither a .lora_a nor a .lora_b", t.name)));
        }
    }
    if pairs.is_empty() {
        return Err(bad("it holds no LoRA weights".into()));
    }
    let mut rank = None;
    for (name, pair) in &pairs {
        let (Some(a), Some(b)) = pair else {
            return Err(bad(format!("{name} has only one of its .lora_a and .lora_b tensors")));
        };
        for t in [a, b] {
            if !ADAPTER_TYPES.contains(&t.ggml_type) {
                return Err(bad(format!(
                    "{} is {}; adapters here take F32, F16, BF16 or Q8_0",
                    t.name,
                    crate::gguf::ggml_type_name(t.ggml_type)
                )));
            }
            if t.dims.len() != 2 || t.dims.contains(&0) {
                return Err(bad(format!("{} has dimensions {:?}; LoRA weights are matrices", t.name, t.dims)));
            }
            let end = t.n_bytes().and_then(|n| file.data_offset.checked_add(t.offset)?.checked_add(n));
            if end.is_none_or(|end| end > file.file_size) {
                return Err(bad(format!("{}'s data runs past the end of the file", t.name)));
            }
        }
        let Some(w) = base.get(*name) else {
            return Err(bad(format!("the model has no tensor {name} (made for another model?)")));
        };
        if w.len() < 2 {
            return Err(bad(format!("{name} is not a matrix in the model")));
        }
        let (a, b) = (&a.dims, &b.dims);
        let fits = if name.ends_with("token_embd.weight") {
            // The embedding's pair is stored the other way round.
            w[0] == b[1] && w[1] == a[1] && a[0] == b[0]
        } else {
            w[0] == a[0] && w[1] == b[1] && a[1] == b[0]
        };
        if !fits {
            return Err(bad(format!(
                "{name}: A {a:?} and B {b:?} do not fit the model's {w:?} (made for another model?)"
            )));
        }
        rank.get_or_insert(if name.ends_with("token_embd.weight") { a[0] } else { a[1] });
    }
    Ok(CheckedLora { alpha, rank: rank.unwrap_or(0), weights: pairs.len() })
}

/// The dimensions of every tensor of the model file at `path`, over all its shards
/// (`NAME-00001-of-0000N.gguf`).
fn model_tensor_dims(path: &Path) -> Result<HashMap<String, Vec<u64>>> {
    let first = GgufFile::open_with(path, ReadOptions::header_only())?;
    let count = first.get_u64("split.count").unwrap_or(1);
    let mut files = vec![first];
    if count > 1 {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let suffix = format!("-00001-of-{count:05}.gguf");
        let Some(prefix) = name.strip_suffix(&suffix) else {
            return Err(Error::NotGguf {
                path: path.to_path_buf(),
                reason: format!("a shard of {count} not named like its first ({suffix})"),
            });
        };
        for i in 2..=count {
            let shard = path.with_file_name(format!("{prefix}-{i:05}-of-{count:05}.gguf"));
            files.push(GgufFile::open_with(&shard, ReadOptions::header_only())?);
        }
    }
    Ok(files.into_iter().flat_map(|f| f.tensors).map(|t| (t.name, t.dims)).collect())
}

/// A control vector: for some layers, a direction added to the hidden state after that layer
/// (what llama.cpp's `--control-vector` applies), read from a GGUF file of `direction.N`
/// tensors (layers from 1, F32, one value per embedding dimension).
///
/// Several vectors, each with a strength, add up ([`ControlVector::plus`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ControlVector {
    n_embd: usize,
    /// Layer 1's direction first; a layer the file leaves out is zeros.
    data: Vec<f32>,
}

impl ControlVector {
    /// Reads the control vector at `path` for `model`, scaled by `strength`.
    pub fn load(model: &Model, path: impl AsRef<Path>, strength: f32) -> Result<ControlVector> {
        let path = path.as_ref();
        let bad = |reason: String| Error::Adapter { path: path.to_path_buf(), reason };
        if !strength.is_finite() {
            return Err(Error::invalid("control vector strength", format!("{strength} is not finite")));
        }
        let file = GgufFile::open_with(path, ReadOptions::header_only()).map_err(|e| bad(e.to_string()))?;
        let n_embd = model.n_embd() as usize;
        let n_layer = model.n_layer() as usize;
        let mut data = vec![0.0f32; n_embd * n_layer];
        if file.tensors.is_empty() {
            return Err(bad("it holds no direction tensors".into()));
        }
        let mut raw = std::fs::File::open(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
        for t in &file.tensors {
            let layer: usize = t
                .name
                .strip_prefix("direction.")
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| bad(format!("tensor {} is not named direction.LAYER", t.name)))?;
            if layer == 0 || layer >= n_layer {
                return Err(bad(format!(
                    "{} is for layer {layer}; directions go after layers 1..={}",
                    t.name,
                    n_layer - 1
                )));
            }
            if t.ggml_type != 0 || t.dims != [n_embd as u64] {
                return Err(bad(format!(
                    "{} is {} {:?}; it must be F32 [{n_embd}] for this model",
                    t.name,
                    crate::gguf::ggml_type_name(t.ggml_type),
                    t.dims
                )));
            }
            let at = file.data_offset.checked_add(t.offset).filter(|at| at + 4 * n_embd as u64 <= file.file_size);
            let at = at.ok_or_else(|| bad(format!("{}'s data runs past the end of the file", t.name)))?;
            let mut bytes = vec![0u8; 4 * n_embd];
            use std::io::{Read, Seek, SeekFrom};
            raw.seek(SeekFrom::Start(at))
                .and_then(|_| raw.read_exact(&mut bytes))
                .map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
            let dst = &mut data[(layer - 1) * n_embd..layer * n_embd];
            for (d, c) in dst.iter_mut().zip(bytes.chunks_exact(4)) {
                let v = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                if !v.is_finite() {
                    return Err(bad(format!("{} holds a value that is not finite", t.name)));
                }
                *d += v * strength;
            }
        }
        Ok(ControlVector { n_embd, data })
    }

    /// A control vector from directions given in memory: `(layer, direction)`, layers from 1.
    pub fn from_directions(model: &Model, directions: &[(usize, Vec<f32>)]) -> Result<ControlVector> {
        let (n_embd, n_layer) = (model.n_embd() as usize, model.n_layer() as usize);
        let mut data = vec![0.0f32; n_embd * n_layer];
        for (layer, dir) in directions {
            if *layer == 0 || *layer >= n_layer || dir.len() != n_embd || dir.iter().any(|v| !v.is_finite()) {
                return Err(Error::invalid(
                    "control vector direction",
                    format!(
                        "layer {layer} with {} values; layers are 1..={}, {n_embd} finite values each",
                        dir.len(),
                        n_layer - 1
                    ),
                ));
            }
            for (d, v) in data[(layer - 1) * n_embd..layer * n_embd].iter_mut().zip(dir) {
                *d += v;
            }
        }
        Ok(ControlVector { n_embd, data })
    }

    /// This vector plus `other` (both for the same model).
    pub fn plus(mut self, other: &ControlVector) -> Result<ControlVector> {
        if self.n_embd != other.n_embd || self.data.len() != other.data.len() {
            return Err(Error::invalid("control vector", "the two vectors are for different models"));
        }
        for (a, b) in self.data.iter_mut().zip(&other.data) {
            *a += b;
        }
        Ok(self)
    }

    pub(crate) fn n_embd(&self) -> usize {
        self.n_embd
    }

    pub(crate) fn data(&self) -> &[f32] {
        &self.data
    }
}
