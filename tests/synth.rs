//! Synthetic models: the tiny shapes of each family are written, quantized by llama.cpp,
//! loaded and decoded; a real tokenizer carries over into one.

mod common;

use rocm_llama::gguf::GgufFile;
use rocm_llama::synth::{find_shape, synth, SynthType, Tokenizer};
use rocm_llama::{ChatMessage, ChatTemplate, Context, ContextConfig, GenerateOptions, LoadConfig, Model};

/// A file in this process's folder for `test` (each test its own: one checks its folder for
/// leftovers while others write).
fn out_in(test: &str, name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("rocm-llama-synth-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

fn out(name: &str) -> std::path::PathBuf {
    out_in("models", name)
}

#[test]
fn tiny_models_of_each_family_load_and_generate() {
    for (shape, ty) in [
        ("tiny", SynthType::Q4KM),
        ("tiny", SynthType::F16),
        ("tiny-qwen3", SynthType::Q8_0),
        ("tiny-gemma3", SynthType::Q4_0),
    ] {
        let s = find_shape(shape).unwrap();
        let path = out(&format!("{shape}-{ty:?}.gguf"));
        synth(s, ty, &path, 2, 42, None, &|_| {}).unwrap();
        let f = GgufFile::open(&path).unwrap();
        assert_eq!(f.architecture(), Some(s.arch));
        assert_eq!(f.arch_u64("block_count"), Some(s.n_layer));
        // No temporary F16 file is left behind.
        let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp."))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");

        let model = Model::load(&path, &LoadConfig::default()).unwrap();
        assert_eq!(model.n_layer() as u64, s.n_layer);
        assert_eq!(model.vocab().n_tokens() as u64, s.n_vocab);
        let mut ctx = Context::new(&model, &ContextConfig::default().n_ctx(256).threads(1)).unwrap();
        let (_, summary) = ctx.generate("t1 t2 t3", &GenerateOptions::greedy(8)).unwrap().collect_text().unwrap();
        assert!(summary.prompt_tokens > 1, "{shape}: {summary:?}");
        let _ = std::fs::remove_file(&path);
    }
}

#[test]
fn quantized_tiny_is_smaller_than_f16() {
    let s = find_shape("tiny").unwrap();
    let (a, b) = (out_in("sizes", "size-f16.gguf"), out_in("sizes", "size-q4.gguf"));
    synth(s, SynthType::F16, &a, 2, 1, None, &|_| {}).unwrap();
    synth(s, SynthType::Q4_0, &b, 2, 1, None, &|_| {}).unwrap();
    let (fa, fb) = (std::fs::metadata(&a).unwrap().len(), std::fs::metadata(&b).unwrap().len());
    assert!(fb * 2 < fa, "q4_0 {fb} vs f16 {fa}");
}

#[test]
fn a_real_tokenizer_carries_over() {
    let real = require_model!();
    let tokenizer = Tokenizer::from_gguf(real.path()).unwrap();
    assert_eq!(tokenizer.n_tokens(), real.vocab().n_tokens() as u64);

    // Alone it is a few MB and reads back the same.
    let alone = out_in("tokenizer", "gemma3-tokenizer.gguf");
    tokenizer.write_to(&alone).unwrap();
    let size = std::fs::metadata(&alone).unwrap().len();
    assert!(size < 16 << 20, "{size} bytes");
    assert_eq!(Tokenizer::from_gguf(&alone).unwrap(), tokenizer);
    // A weights-only file has none to give.
    let weights = out_in("tokenizer", "no-tokenizer.gguf");
    rocm_llama::gguf::Writer::new().meta_str("general.architecture", "llama").write_to(&weights).unwrap();
    assert!(matches!(Tokenizer::from_gguf(&weights), Err(rocm_llama::Error::NotGguf { .. })));

    // A small gemma3 model written with it tokenizes, detokenizes and formats chats like the
    // real model.
    let path = out_in("tokenizer", "tiny-gemma3-real-tokenizer.gguf");
    let from_file = Tokenizer::from_gguf(&alone).unwrap();
    synth(find_shape("tiny-gemma3").unwrap(), SynthType::Q4_0, &path, 2, 7, Some(&from_file), &|_| {}).unwrap();
    let synthetic = Model::load(&path, &LoadConfig::default()).unwrap();
    let (a, b) = (real.vocab(), synthetic.vocab());
    assert_eq!(a.n_tokens(), b.n_tokens());
    assert_eq!((a.bos(), a.eos(), a.add_bos()), (b.bos(), b.eos(), b.add_bos()));
    for text in [
        "The quick brown fox jumps over the lazy dog.",
        "Grüße, 世界! 🦀 fn main() { println!(\"{}\", 1 + 2); }",
        "<start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n",
        "   spaces\tand\nnewlines  ",
    ] {
        let ids = a.tokenize(text, true, true).unwrap();
        assert_eq!(ids, b.tokenize(text, true, true).unwrap(), "{text:?}");
        assert_eq!(a.detokenize(&ids, false, true).unwrap(), b.detokenize(&ids, false, true).unwrap());
    }
    assert_eq!(ChatTemplate::Model.source(&synthetic).unwrap(), ChatTemplate::Model.source(real).unwrap());
    let messages = [ChatMessage::system("Be brief."), ChatMessage::user("Hello?")];
    assert_eq!(
        ChatTemplate::Model.prompt(&synthetic, &messages).unwrap(),
        ChatTemplate::Model.prompt(real, &messages).unwrap()
    );
    let _ = std::fs::remove_file(&path);
}
