//! The model inventory over a folder of GGUF files written by the test itself, malformed
//! files, and the real test model.

mod common;

use std::path::{Path, PathBuf};

use rocm_llama::gguf::{Value, ValueType, Writer};
use rocm_llama::inventory::{resolve, scan};

fn folder(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("rocm-llama-models-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn tiny(arch: &str, name: &str, template: Option<&str>) -> Writer {
    let mut w = Writer::new()
        .meta_str("general.architecture", arch)
        .meta_str("general.name", name)
        .meta_str("general.license", "apache-2.0")
        .meta_u32("general.file_type", 7)
        .meta_u32(&format!("{arch}.context_length"), 8192)
        .meta_u32(&format!("{arch}.embedding_length"), 64)
        .meta_u32(&format!("{arch}.block_count"), 2)
        .meta_u32(&format!("{arch}.attention.head_count"), 4)
        .meta_u32(&format!("{arch}.attention.head_count_kv"), 2)
        .meta(
            "tokenizer.ggml.tokens",
            Value::Array {
                elem: ValueType::String,
                len: 5,
                values: Some((0..5).map(|i| Value::String(format!("t{i}"))).collect()),
            },
        )
        .tensor("token_embd.weight", &[64, 5], 8, vec![0; 5 * 2 * 34])
        .tensor("blk.0.attn_q.weight", &[64, 64], 8, vec![0; 64 * 2 * 34])
        .tensor("blk.1.attn_q.weight", &[64, 64], 8, vec![0; 64 * 2 * 34]);
    if let Some(t) = template {
        w = w.meta_str("tokenizer.chat_template", t);
    }
    w
}

#[test]
fn scan_lists_models_groups_shards_and_reports_bad_files() {
    let d = folder("scan");
    tiny("qwen3", "Tiny Qwen", Some("{{ '<|im_start|>' + m.role }}")).write_to(d.join("tiny-qwen-q8_0.gguf")).unwrap();
    std::fs::create_dir_all(d.join("sub")).unwrap();
    tiny("llama", "Tiny Llama", None).write_to(d.join("sub/tiny-llama.gguf")).unwrap();
    for i in 1..=2 {
        tiny("gemma3", "Split", Some("<start_of_turn>"))
            .write_to(d.join(format!("split-{i:05}-of-00002.gguf")))
            .unwrap();
    }
    tiny("llama", "Lonely", None).write_to(d.join("partial-00001-of-00003.gguf")).unwrap();
    std::fs::write(d.join("notes.gguf"), "not a model").unwrap();
    let good = tiny("llama", "x", None).to_bytes();
    std::fs::write(d.join("truncated.gguf"), &good[..good.len() / 3]).unwrap();
    std::fs::write(d.join("readme.txt"), "ignored").unwrap();

    let entries = scan(&d);
    let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["notes", "partial", "split", "tiny-llama", "tiny-qwen-q8_0", "truncated"]);
    let by = |n: &str| entries.iter().find(|e| e.name == n).unwrap();

    let q = by("tiny-qwen-q8_0").info.as_ref().unwrap();
    assert_eq!(q.architecture, "qwen3");
    assert_eq!(q.display_name.as_deref(), Some("Tiny Qwen"));
    assert_eq!(q.file_type.as_deref(), Some("Q8_0"));
    assert_eq!(q.dominant_type.as_deref(), Some("Q8_0"));
    assert_eq!((q.context_length, q.embedding_length, q.block_count), (Some(8192), Some(64), Some(2)));
    assert_eq!((q.head_count, q.head_count_kv, q.vocab_size), (Some(4), Some(2), Some(5)));
    assert!(q.has_chat_template);
    assert_eq!(q.chat_template_family.as_deref(), Some("chatml"));
    assert_eq!(q.license.as_deref(), Some("apache-2.0"));
    assert_eq!(q.n_params, 64 * 5 + 2 * 64 * 64);

    let split = by("split");
    assert_eq!(split.shards.len(), 2);
    assert_eq!(split.size_bytes, split.shards.iter().map(|p| std::fs::metadata(p).unwrap().len()).sum::<u64>());
    assert_eq!(split.info.as_ref().unwrap().chat_template_family.as_deref(), Some("gemma"));
    assert!(by("partial").info.as_ref().unwrap_err().contains("1 of 3 shards"));
    assert!(by("notes").info.as_ref().unwrap_err().contains("not a valid GGUF"));
    assert!(by("truncated").info.is_err());
    assert!(by("tiny-llama").path.ends_with("sub/tiny-llama.gguf"));
    assert!(by("tiny-llama").modified.is_some());
}

#[test]
fn model_names_resolve_to_files() {
    let d = folder("resolve");
    tiny("llama", "a", None).write_to(d.join("llama-3-8b-q4_k_m.gguf")).unwrap();
    tiny("llama", "b", None).write_to(d.join("llama-3-8b-q8_0.gguf")).unwrap();
    tiny("qwen3", "c", None).write_to(d.join("Qwen3-8B.gguf")).unwrap();
    assert_eq!(resolve("llama-3-8b-q8_0", &d).unwrap(), d.join("llama-3-8b-q8_0.gguf"));
    assert_eq!(resolve("qwen3-8b", &d).unwrap(), d.join("Qwen3-8B.gguf"));
    assert_eq!(resolve("qwen", &d).unwrap(), d.join("Qwen3-8B.gguf"));
    let e = resolve("llama-3", &d).unwrap_err().to_string();
    assert!(e.contains("several") && e.contains("q4_k_m") && e.contains("q8_0"), "{e}");
    assert!(resolve("mistral", &d).is_err());
    let path = d.join("Qwen3-8B.gguf");
    assert_eq!(resolve(path.to_str().unwrap(), Path::new("/nonexistent")).unwrap(), path);
}

#[test]
fn the_real_model_is_listed() {
    let Some(path) = common::model_path() else { return };
    let d = folder("real");
    std::os::unix::fs::symlink(&path, d.join("gemma-3-270m-q4_k_m.gguf")).unwrap();
    let entries = scan(&d);
    assert_eq!(entries.len(), 1);
    let info = entries[0].info.as_ref().unwrap();
    assert_eq!(info.architecture, "gemma3");
    assert_eq!(info.file_type.as_deref(), Some("Q4_K_M"));
    assert_eq!(info.block_count, Some(18));
    assert_eq!(info.vocab_size, Some(262_144));
    assert_eq!(entries[0].size_bytes, std::fs::metadata(&path).unwrap().len());
}
