//! Model inventory: [`scan`] a folder of GGUF files into one [`ModelEntry`] per model
//! (split shards grouped), and [`resolve`] a `--model` argument that is a path or a name.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::error::{Error, Result};
use crate::gguf::{ggml_type_name, GgufFile, Value};

/// rocm-llama's cache folder: `ROCM_LLAMA_CACHE`, else `~/.cache/rocm-llama` (the current
/// folder when there is no home).
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("ROCM_LLAMA_CACHE").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/rocm-llama")).unwrap_or_else(|| PathBuf::from("."))
}

/// The model folder: `ROCM_MODEL_DIR`, else [`cache_dir`].
pub fn model_dir() -> PathBuf {
    match std::env::var_os("ROCM_MODEL_DIR").filter(|d| !d.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => cache_dir(),
    }
}

/// What one model file (or set of shards) holds.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ModelEntry {
    /// Name used by `--model`: the file name without `.gguf` and shard suffix.
    pub name: String,
    /// The first (or only) file.
    pub path: PathBuf,
    /// All shard files, in order.
    pub shards: Vec<PathBuf>,
    /// Total size of the files in bytes.
    pub size_bytes: u64,
    /// Newest modification time of the files.
    #[serde(serialize_with = "ser_time")]
    pub modified: Option<SystemTime>,
    /// The metadata, or why it could not be read.
    pub info: std::result::Result<ModelSummary, String>,
}

fn ser_time<S: serde::Serializer>(t: &Option<SystemTime>, s: S) -> std::result::Result<S::Ok, S::Error> {
    match t.and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok()) {
        Some(d) => s.serialize_u64(d.as_secs()),
        None => s.serialize_none(),
    }
}

/// Metadata of a model, from its GGUF header.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ModelSummary {
    /// `general.architecture`.
    pub architecture: String,
    /// `general.name`.
    pub display_name: Option<String>,
    /// Parameters (elements of all tensors, over all shards read).
    pub n_params: u64,
    /// Quantization from `general.file_type` (e.g. `Q4_K_M`).
    pub file_type: Option<String>,
    /// The tensor type holding the most bytes (e.g. `Q4_K`).
    pub dominant_type: Option<String>,
    /// Trained context length.
    pub context_length: Option<u64>,
    /// Embedding size.
    pub embedding_length: Option<u64>,
    /// Layers.
    pub block_count: Option<u64>,
    /// Attention heads.
    pub head_count: Option<u64>,
    /// KV heads.
    pub head_count_kv: Option<u64>,
    /// Vocabulary size.
    pub vocab_size: Option<u64>,
    /// Whether the file carries a chat template.
    pub has_chat_template: bool,
    /// The built-in template family it matches (`gemma`, `chatml`, `llama3`, ...).
    pub chat_template_family: Option<String>,
    /// Whether the file's template renders a plain conversation with rocm-llama's Jinja
    /// engine (`None` without a template).
    pub chat_template_renders: Option<bool>,
    /// Why it does not render.
    pub chat_template_error: Option<String>,
    /// `general.license`.
    pub license: Option<String>,
}

/// `general.file_type` (llama.cpp's `llama_ftype`) as the usual quantization label.
pub fn file_type_name(ftype: u64) -> Option<&'static str> {
    Some(match ftype {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        19 => "IQ2_XXS",
        20 => "IQ2_XS",
        21 => "Q2_K_S",
        22 => "IQ3_XS",
        23 => "IQ3_XXS",
        24 => "IQ1_S",
        25 => "IQ4_NL",
        26 => "IQ3_S",
        27 => "IQ3_M",
        28 => "IQ2_S",
        29 => "IQ2_M",
        30 => "IQ4_XS",
        31 => "IQ1_M",
        32 => "BF16",
        36 => "TQ1_0",
        37 => "TQ2_0",
        38 => "MXFP4_MOE",
        _ => return None,
    })
}

/// The built-in template family whose markers a chat template contains.
pub fn template_family(template: &str) -> Option<&'static str> {
    let has = |m: &str| template.contains(m);
    Some(if has("<start_of_turn>") {
        "gemma"
    } else if has("<|start_header_id|>") && has("<|eot_id|>") {
        "llama3"
    } else if has("<|im_start|>") {
        "chatml"
    } else if has("[INST]") && has("[SYSTEM_PROMPT]") {
        "mistral-v7"
    } else if has("[INST]") {
        "llama2"
    } else if has("<|assistant|>") && has("<|end|>") {
        "phi3"
    } else if has("<|assistant|>") {
        "zephyr"
    } else {
        return None;
    })
}

/// Renders a short conversation with `template` (with a system turn, then without one for
/// templates that refuse it); `Ok` when either renders.
pub fn template_renders(template: &str) -> std::result::Result<(), String> {
    use crate::chat::{render_jinja, ChatMessage, ChatOptions};
    let turns = [ChatMessage::user("Hi!"), ChatMessage::assistant("Hello."), ChatMessage::user("2+2?")];
    let with_system: Vec<ChatMessage> =
        std::iter::once(ChatMessage::system("Be brief.")).chain(turns.iter().cloned()).collect();
    let options = ChatOptions::default();
    render_jinja(template, &with_system, &options, "", "")
        .or_else(|_| render_jinja(template, &turns, &options, "", ""))
        .map(|_| ())
        .map_err(|e| e.to_string())
}

impl ModelSummary {
    /// Summarises a parsed header (`extra` = further shards' headers, for tensor counts).
    pub fn from_gguf(f: &GgufFile, extra: &[GgufFile]) -> ModelSummary {
        let arch = f.architecture().unwrap_or("unknown").to_string();
        let mut by_type: BTreeMap<u32, u64> = BTreeMap::new();
        for t in f.tensors.iter().chain(extra.iter().flat_map(|e| e.tensors.iter())) {
            if t.dims.len() >= 2 {
                *by_type.entry(t.ggml_type).or_default() += t.n_bytes().unwrap_or(0);
            }
        }
        let template = f.get_str("tokenizer.chat_template");
        let renders = template.map(template_renders);
        ModelSummary {
            display_name: f.get_str("general.name").map(String::from),
            n_params: f.n_params() + extra.iter().map(|e| e.n_params()).sum::<u64>(),
            file_type: f.get_u64("general.file_type").and_then(file_type_name).map(String::from),
            dominant_type: by_type.iter().max_by_key(|(_, b)| **b).map(|(t, _)| ggml_type_name(*t).to_string()),
            context_length: f.arch_u64("context_length"),
            embedding_length: f.arch_u64("embedding_length"),
            block_count: f.arch_u64("block_count"),
            head_count: f.arch_u64("attention.head_count"),
            head_count_kv: f.arch_u64("attention.head_count_kv"),
            vocab_size: match f.get("tokenizer.ggml.tokens") {
                Some(Value::Array { len, .. }) => Some(*len),
                _ => f.arch_u64("vocab_size"),
            },
            has_chat_template: template.is_some(),
            chat_template_family: template.and_then(template_family).map(String::from),
            chat_template_renders: renders.as_ref().map(Result::is_ok),
            chat_template_error: renders.and_then(Result::err),
            license: f.get_str("general.license").map(String::from),
            architecture: arch,
        }
    }

    /// A quantization label: the file type, else the dominant tensor type.
    pub fn quantization(&self) -> String {
        self.file_type.clone().or_else(|| self.dominant_type.clone()).unwrap_or_else(|| "?".into())
    }
}

/// Splits `name-00001-of-00003.gguf` into (`name`, 1, 3).
pub fn shard_parts(file_name: &str) -> Option<(&str, u32, u32)> {
    let stem = file_name.strip_suffix(".gguf")?;
    let (rest, total) = stem.rsplit_once("-of-")?;
    let (base, index) = rest.rsplit_once('-')?;
    if index.len() != 5 || total.len() != 5 {
        return None;
    }
    let (index, total) = (index.parse().ok()?, total.parse().ok()?);
    (index >= 1 && index <= total).then_some((base, index, total))
}

/// The file name of shard `index` of `total`.
pub fn shard_name(base: &str, index: u32, total: u32) -> String {
    format!("{base}-{index:05}-of-{total:05}.gguf")
}

fn collect(dir: &Path, depth: u32, out: &mut Vec<PathBuf>, problems: &mut Vec<ModelEntry>) {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            problems.push(ModelEntry {
                name: dir.display().to_string(),
                path: dir.to_path_buf(),
                shards: vec![],
                size_bytes: 0,
                modified: None,
                info: Err(format!("cannot read folder: {e}")),
            });
            return;
        }
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() && depth < 3 && !e.file_name().to_string_lossy().starts_with('.') {
            collect(&p, depth + 1, out, problems);
        } else if p.extension().is_some_and(|x| x.eq_ignore_ascii_case("gguf")) {
            out.push(p);
        }
    }
}

/// Lists the models in `dir` (and up to three folder levels below): one entry per model,
/// shards grouped, sorted by name. A file that cannot be read is listed with its reason;
/// it never stops the scan.
pub fn scan(dir: &Path) -> Vec<ModelEntry> {
    let mut files = Vec::new();
    let mut entries = Vec::new();
    collect(dir, 0, &mut files, &mut entries);
    files.sort();
    // Group shards by (folder, base name).
    // (folder, base name) -> [(shard index, shard count, file)]
    type Shards = Vec<(u32, u32, PathBuf)>;
    let mut groups: BTreeMap<(PathBuf, String), Shards> = BTreeMap::new();
    for f in files {
        let file_name = f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let folder = f.parent().map(Path::to_path_buf).unwrap_or_default();
        let (base, index, total) = match shard_parts(&file_name) {
            Some((b, i, t)) => (b.to_string(), i, t),
            None => (file_name.trim_end_matches(".gguf").trim_end_matches(".GGUF").to_string(), 1, 1),
        };
        groups.entry((folder, base)).or_default().push((index, total, f));
    }
    for ((_, name), mut shards) in groups {
        shards.sort();
        let paths: Vec<PathBuf> = shards.iter().map(|s| s.2.clone()).collect();
        let metas: Vec<Option<std::fs::Metadata>> = paths.iter().map(|p| std::fs::metadata(p).ok()).collect();
        let size_bytes = metas.iter().flatten().map(|m| m.len()).sum();
        let modified = metas.iter().flatten().filter_map(|m| m.modified().ok()).max();
        let expected = shards[0].1;
        let info = if shards.len() as u32 != expected || shards.iter().enumerate().any(|(i, s)| s.0 != i as u32 + 1) {
            Err(format!("split model is incomplete: {} of {expected} shards present", shards.len()))
        } else {
            match GgufFile::open(&paths[0]) {
                Ok(first) => {
                    let rest: Vec<GgufFile> = paths[1..].iter().filter_map(|p| GgufFile::open(p).ok()).collect();
                    Ok(ModelSummary::from_gguf(&first, &rest))
                }
                Err(e) => Err(e.to_string()),
            }
        };
        entries.push(ModelEntry { name, path: paths[0].clone(), shards: paths, size_bytes, modified, info });
    }
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    entries
}

/// Turns a `--model` argument into a file: an existing path as is, else an inventory name in
/// `dir` (exact, then case-insensitive, then a unique prefix).
pub fn resolve(arg: &str, dir: &Path) -> Result<PathBuf> {
    let p = Path::new(arg);
    if p.is_file() {
        return Ok(p.to_path_buf());
    }
    // Something exists there but is no file: say what it is rather than "no such file".
    if let Ok(meta) = std::fs::metadata(p) {
        let what = if meta.is_dir() { "a directory" } else { "not a regular file (a device, a pipe or a socket)" };
        return Err(Error::NotGguf { path: p.to_path_buf(), reason: format!("{what}, not a GGUF model file") });
    }
    let entries = scan(dir);
    let pick = |pred: &dyn Fn(&ModelEntry) -> bool| entries.iter().filter(|e| pred(e)).collect::<Vec<_>>();
    let lower = arg.to_lowercase();
    for matches in [
        pick(&|e| e.name == arg),
        pick(&|e| e.name.to_lowercase() == lower),
        pick(&|e| e.name.to_lowercase().starts_with(&lower)),
    ] {
        match matches.len() {
            0 => continue,
            1 => return Ok(matches[0].path.clone()),
            _ => {
                let names: Vec<&str> = matches.iter().map(|e| e.name.as_str()).collect();
                return Err(Error::invalid(
                    "model name",
                    format!("{arg:?} matches several models: {}", names.join(", ")),
                ));
            }
        }
    }
    Err(Error::Io {
        path: p.to_path_buf(),
        source: std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("no such file, and no model of that name in {} (see `rocm-llama models`)", dir.display()),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_or_a_device_is_named_as_such() {
        let empty = std::env::temp_dir().join(format!("rocm-llama-resolve-{}", std::process::id()));
        std::fs::create_dir_all(&empty).unwrap();
        let dir = std::env::temp_dir();
        let err = resolve(dir.to_str().unwrap(), &empty).unwrap_err().to_string();
        assert!(err.contains("a directory"), "{err}");
        if Path::new("/dev/zero").exists() {
            let err = resolve("/dev/zero", &empty).unwrap_err().to_string();
            assert!(err.contains("not a regular file"), "{err}");
        }
        let err = resolve("/nonexistent/model.gguf", &empty).unwrap_err().to_string();
        assert!(err.contains("no such file"), "{err}");
    }

    #[test]
    fn shard_names() {
        assert_eq!(shard_parts("llama-3-8b-q4_k_m-00001-of-00003.gguf"), Some(("llama-3-8b-q4_k_m", 1, 3)));
        assert_eq!(shard_parts("x-00003-of-00003.gguf"), Some(("x", 3, 3)));
        assert_eq!(shard_parts("x-00004-of-00003.gguf"), None);
        assert_eq!(shard_parts("x-1-of-3.gguf"), None);
        assert_eq!(shard_parts("plain.gguf"), None);
        assert_eq!(shard_name("m", 2, 12), "m-00002-of-00012.gguf");
    }

    #[test]
    fn families_and_file_types() {
        assert_eq!(template_family("{{ '<start_of_turn>user' }}"), Some("gemma"));
        assert_eq!(template_family("<|im_start|>"), Some("chatml"));
        assert_eq!(template_family("<|start_header_id|> <|eot_id|>"), Some("llama3"));
        assert_eq!(template_family("{{ x }}"), None);
        assert_eq!(file_type_name(15), Some("Q4_K_M"));
        assert_eq!(file_type_name(999), None);
    }
}
