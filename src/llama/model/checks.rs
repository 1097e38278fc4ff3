//! What is checked in a model file before llama.cpp reads it: anything on which llama.cpp
//! would abort the process (an assert, an uncaught C++ exception) or hang, rather than return
//! an error, is refused here as [`Error::NotGguf`] with the reason.

use std::io::Read;
use std::path::Path;

use crate::error::{Error, Result};

/// The GGUF magic bytes.
const GGUF_MAGIC: &[u8; 4] = b"GGUF";

/// Checks that `path` is a readable file that starts like a GGUF, before llama.cpp sees it.
pub(crate) fn check_gguf_header(path: &Path) -> Result<()> {
    let io = |source| Error::Io { path: path.to_path_buf(), source };
    let meta = std::fs::metadata(path).map_err(io)?;
    if !meta.is_file() {
        return Err(Error::NotGguf { path: path.to_path_buf(), reason: "not a regular file".into() });
    }
    let mut head = [0u8; 8];
    let mut f = std::fs::File::open(path).map_err(io)?;
    let mut got = 0;
    while got < head.len() {
        match f.read(&mut head[got..]).map_err(io)? {
            0 => break,
            n => got += n,
        }
    }
    if got < head.len() {
        return Err(Error::NotGguf { path: path.to_path_buf(), reason: format!("only {got} bytes long") });
    }
    if &head[..4] != GGUF_MAGIC {
        return Err(Error::NotGguf {
            path: path.to_path_buf(),
            reason: format!("magic is {:?}, expected \"GGUF\"", String::from_utf8_lossy(&head[..4])),
        });
    }
    let version = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    if !(2..=3).contains(&version) {
        return Err(Error::NotGguf { path: path.to_path_buf(), reason: format!("unsupported GGUF version {version}") });
    }
    Ok(())
}

/// llama.cpp's bound on `block_count` (`LLAMA_MAX_LAYERS`), which it asserts on.
pub const MAX_LAYERS: u64 = 512;

/// Vocabularies longer than this are refused before llama.cpp reads them (the largest
/// published ones hold about 260,000 tokens).
pub const MAX_VOCAB: u64 = 1 << 22;

/// Rejects files on which llama.cpp would abort (an assert kills the process) rather than
/// return an error: a `block_count` of 0 or above [`MAX_LAYERS`], more next-token layers
/// than blocks, two vocabulary entries with the same text, truncated tensor data, and 1-D
/// norm weights that are not F32 (its CPU kernels assert on them while computing).
///
/// `weights`: whether the tensor data will be read (a vocabulary-only load needs only the
/// header, so a file truncated after it still serves for tokenizing and templates).
pub(crate) fn check_contents(path: &Path, weights: bool) -> Result<()> {
    use crate::gguf::{GgufFile, ReadOptions, Value, ValueType};
    // The header alone: the vocabulary is read once, as raw bytes, below.
    let opts = if weights { ReadOptions::default() } else { ReadOptions::header_only() };
    let file = GgufFile::open_with(path, opts)?;
    let bad = |reason: String| Err(Error::NotGguf { path: path.to_path_buf(), reason });
    if let Some(t) = file.tensors.iter().find(|t| t.dims.len() == 1 && t.name.contains("norm") && t.ggml_type != 0) {
        return bad(format!(
            "1-D tensor {} is {}, but llama.cpp needs norm weights in F32 (it would abort while computing)",
            t.name,
            crate::gguf::ggml_type_name(t.ggml_type)
        ));
    }
    if let Some(arch) = file.architecture() {
        if arch != "clip" {
            if let Some(layers) = file.arch_u64("block_count") {
                if layers == 0 || layers > MAX_LAYERS {
                    return bad(format!("{arch}.block_count is {layers}; llama.cpp takes 1..={MAX_LAYERS} layers"));
                }
                if let Some(nextn) = file.arch_u64("nextn_predict_layers").filter(|&n| n > layers) {
                    return bad(format!("{arch}.nextn_predict_layers {nextn} exceeds block_count {layers}"));
                }
            }
            check_hparams(&file, arch).or_else(bad)?;
        }
    }
    match file.get("tokenizer.ggml.tokens") {
        Some(Value::Array { elem: ValueType::String, len, .. }) if *len > MAX_VOCAB => {
            return bad(format!("the vocabulary has {len} tokens, more than the {MAX_VOCAB} accepted here"));
        }
        Some(Value::Array { elem: ValueType::String, .. }) => {
            // llama.cpp maps each text to its id and asserts that no text appears twice. It
            // reads each text as a C string (up to its first NUL byte) and names an empty one
            // "[EMPTY_<id>]": compare the raw bytes the same way.
            let texts = crate::gguf::string_array_bytes(path, "tokenizer.ggml.tokens", MAX_VOCAB)?.unwrap_or_default();
            let mut seen: std::collections::HashSet<std::borrow::Cow<'_, [u8]>> =
                std::collections::HashSet::with_capacity(texts.len());
            for (i, raw) in texts.iter().enumerate() {
                let text = match raw.iter().position(|&b| b == 0).map_or(&raw[..], |n| &raw[..n]) {
                    [] => std::borrow::Cow::Owned(format!("[EMPTY_{i}]").into_bytes()),
                    t => std::borrow::Cow::Borrowed(t),
                };
                if let Some(first) = seen.replace(text) {
                    return bad(format!(
                        "the vocabulary lists the token text {:?} twice (the second time as id {i}); llama.cpp \
                         needs every token text once (up to its first NUL byte)",
                        String::from_utf8_lossy(&first).chars().take(40).collect::<String>()
                    ));
                }
            }
            // A SentencePiece vocabulary spells text it has no token for as byte tokens, which
            // llama.cpp looks up with a throwing lookup: a byte with neither "<0xXX>" nor a
            // one-byte token aborts the process the first time some text needs it.
            if file.get_str("tokenizer.ggml.model") == Some("llama") {
                for byte in 0..=255u8 {
                    let hex = format!("<0x{byte:02X}>").into_bytes();
                    if !seen.contains(&hex[..]) && (byte == 0 || !seen.contains(&[byte][..])) {
                        return bad(format!(
                            "this SentencePiece vocabulary has no token for byte 0x{byte:02X} (\"<0x{byte:02X}>\"); \
                             llama.cpp would abort when tokenizing text that needs it"
                        ));
                    }
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// llama.cpp's bound on `expert_count` (`LLAMA_MAX_EXPERTS`), which it asserts on.
const MAX_EXPERTS: u64 = 512;

/// The RoPE scaling types llama.cpp knows; any other name fails an assert.
const ROPE_SCALING_TYPES: [&str; 4] = ["none", "linear", "yarn", "longrope"];

/// The hyper-parameters llama.cpp asserts on, divides by or loops on, checked as it would read
/// them (a per-layer array or one value for every layer): expert counts, attention heads,
/// head sizes and RoPE dimensions, norm epsilons, and every floating-point value finite.
fn check_hparams(file: &crate::gguf::GgufFile, arch: &str) -> std::result::Result<(), String> {
    use crate::gguf::Value;
    let key = |suffix: &str| format!("{arch}.{suffix}");
    // Every float under the architecture's keys: a NaN or an infinity is never a setting, and
    // llama.cpp compares some against bounds in asserts (a NaN epsilon fails `eps >= 0`).
    let prefix = format!("{arch}.");
    for (k, v) in &file.metadata {
        let floats: Vec<f64> = match v {
            Value::Float(f) => vec![*f],
            Value::Array { values: Some(values), .. } => {
                values.iter().filter_map(|x| if let Value::Float(f) = x { Some(*f) } else { None }).collect()
            }
            _ => continue,
        };
        if k.starts_with(&prefix) && floats.iter().any(|f| !f.is_finite()) {
            return Err(format!("{k} is not a finite number"));
        }
    }
    for suffix in ["attention.layer_norm_rms_epsilon", "attention.layer_norm_epsilon", "attention.group_norm_epsilon"] {
        if let Some(eps) = file.get(&key(suffix)).and_then(Value::as_f64) {
            if eps < 0.0 {
                return Err(format!("{} is {eps}; llama.cpp needs a norm epsilon of at least 0", key(suffix)));
            }
        }
    }
    if let Some(base) = file.get(&key("rope.freq_base")).and_then(Value::as_f64) {
        if base <= 0.0 {
            return Err(format!("{} is {base}; RoPE needs a positive base frequency", key("rope.freq_base")));
        }
    }
    if let Some(kind) = file.get(&key("rope.scaling.type")) {
        if !kind.as_str().is_some_and(|k| ROPE_SCALING_TYPES.contains(&k)) {
            return Err(format!(
                "{} is {}; llama.cpp knows {}",
                key("rope.scaling.type"),
                kind.display(40),
                ROPE_SCALING_TYPES.join(", ")
            ));
        }
    }

    // Experts, as llama.cpp asserts on them.
    let whole = |suffix: &str| -> std::result::Result<Vec<u64>, String> { per_layer(file, &key(suffix)) };
    let experts = file.get(&key("expert_count")).map(|v| int(v, &key("expert_count"))).transpose()?.unwrap_or(0);
    let used = whole("expert_used_count")?.into_iter().max().unwrap_or(0);
    let groups =
        file.get(&key("expert_group_count")).map(|v| int(v, &key("expert_group_count"))).transpose()?.unwrap_or(0);
    let group_used = file
        .get(&key("expert_group_used_count"))
        .map(|v| int(v, &key("expert_group_used_count")))
        .transpose()?
        .unwrap_or(0);
    if experts > MAX_EXPERTS {
        return Err(format!("{} is {experts}; llama.cpp takes at most {MAX_EXPERTS}", key("expert_count")));
    }
    if experts == 0 && (used > 0 || groups > 0) {
        return Err(format!(
            "{} or {} is set for a model without experts",
            key("expert_used_count"),
            key("expert_group_count")
        ));
    }
    if experts > 0 {
        if used == 0 || used > experts {
            return Err(format!(
                "{} is {used}; with {experts} experts it must be 1..={experts}",
                key("expert_used_count")
            ));
        }
        if groups >= experts || (groups > 1 && (experts % groups != 0 || group_used == 0 || group_used >= groups)) {
            return Err(format!(
                "expert groups ({groups}, {group_used} used) do not fit {experts} experts: llama.cpp needs fewer groups \
                 than experts, dividing them, and 1..groups used"
            ));
        }
    }

    // Attention heads and head sizes (models without attention have no head count).
    let heads = whole("attention.head_count")?;
    if heads.iter().all(|&h| h == 0) {
        return Ok(());
    }
    let heads_kv = match file.get(&key("attention.head_count_kv")) {
        Some(_) => whole("attention.head_count_kv")?,
        None => heads.clone(),
    };
    for (layer, &h) in heads.iter().enumerate() {
        // One value stands for every layer.
        let kv = heads_kv.get(layer).or(heads_kv.first()).copied().unwrap_or(h);
        if h > 0 && (kv == 0 || h % kv != 0) {
            return Err(format!(
                "layer {layer} has {h} attention heads and {kv} KV heads; llama.cpp needs a KV head count that \
                 divides the head count"
            ));
        }
    }
    let n_embd = file.arch_u64("embedding_length").unwrap_or(0);
    let first_heads = heads.iter().copied().find(|&h| h > 0).unwrap_or(1);
    for (size_key, rot_key) in
        [("attention.key_length", "rope.dimension_count"), ("attention.key_length_swa", "rope.dimension_count_swa")]
    {
        let head_size = match file.get(&key(size_key)) {
            Some(v) => int(v, &key(size_key))?,
            None => n_embd / first_heads,
        };
        if head_size == 0 {
            return Err(format!("the attention head size is 0 ({} or embedding_length / head_count)", key(size_key)));
        }
        if let Some(v) = file.get(&key(rot_key)) {
            let dims = int(v, &key(rot_key))?;
            if dims == 0 || dims > head_size || dims % 2 != 0 {
                return Err(format!(
                    "{} is {dims}; RoPE needs an even count of dimensions in 2..={head_size} (the head size)",
                    key(rot_key)
                ));
            }
        }
    }
    if let Some(v) = file.get(&key("attention.value_length")) {
        if int(v, &key("attention.value_length"))? == 0 {
            return Err(format!("{} is 0", key("attention.value_length")));
        }
    }
    Ok(())
}

/// A whole number that fits llama.cpp's 32-bit fields.
fn int(v: &crate::gguf::Value, key: &str) -> std::result::Result<u64, String> {
    match v.as_u64() {
        Some(n) if n <= u64::from(u32::MAX) => Ok(n),
        _ => Err(format!("{key} is {}; expected a whole number of at most {}", v.display(40), u32::MAX)),
    }
}

/// A value llama.cpp reads as one number for every layer or an array with one per layer
/// (missing: empty).
fn per_layer(file: &crate::gguf::GgufFile, key: &str) -> std::result::Result<Vec<u64>, String> {
    use crate::gguf::Value;
    match file.get(key) {
        None => Ok(Vec::new()),
        Some(Value::Array { values: Some(values), .. }) => values.iter().map(|v| int(v, key)).collect(),
        Some(Value::Array { values: None, len, .. }) => Err(format!("{key} has {len} entries, more than layers")),
        Some(v) => Ok(vec![int(v, key)?]),
    }
}

/// A temporary file, removed when dropped.
pub(crate) struct TempCopy(std::path::PathBuf);

impl TempCopy {
    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// When `path`'s tensor data runs past its end but its header is whole: a temporary copy of
/// the header (metadata byte for byte, no tensors), which llama.cpp loads for the vocabulary
/// and templates. `None` for a whole file.
pub(crate) fn header_copy_if_truncated(path: &Path) -> Result<Option<TempCopy>> {
    use crate::gguf::{GgufFile, ReadOptions};
    let file = GgufFile::open_with(path, ReadOptions::header_only())?;
    let whole = file.tensors.iter().all(|t| {
        t.n_bytes()
            .and_then(|n| file.data_offset.checked_add(t.offset)?.checked_add(n))
            .is_some_and(|end| end <= file.file_size)
    });
    if whole {
        return Ok(None);
    }
    let io = |source| Error::Io { path: path.to_path_buf(), source };
    let mut head = vec![0u8; usize::try_from(file.metadata_end).unwrap_or(usize::MAX)];
    std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut head)).map_err(io)?;
    // magic, version, tensor count (u64, now 0), metadata count, metadata.
    head[8..16].copy_from_slice(&0u64.to_le_bytes());
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let copy = std::env::temp_dir().join(format!("rocm-llama-header-{}-{n}.gguf", std::process::id()));
    std::fs::write(&copy, &head).map_err(|source| Error::Io { path: copy.clone(), source })?;
    Ok(Some(TempCopy(copy)))
}
