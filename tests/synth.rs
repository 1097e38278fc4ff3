//! Synthetic models: the tiny shapes of each family are written, quantized by llama.cpp,
//! loaded and decoded.

use rocm_llama::gguf::GgufFile;
use rocm_llama::synth::{find_shape, synth, SynthType};
use rocm_llama::{Context, ContextConfig, GenerateOptions, LoadConfig, Model};

fn out(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("rocm-llama-synth-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
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
        synth(s, ty, &path, 2, 42, &|_| {}).unwrap();
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
    let (a, b) = (out("size-f16.gguf"), out("size-q4.gguf"));
    synth(s, SynthType::F16, &a, 2, 1, &|_| {}).unwrap();
    synth(s, SynthType::Q4_0, &b, 2, 1, &|_| {}).unwrap();
    let (fa, fb) = (std::fs::metadata(&a).unwrap().len(), std::fs::metadata(&b).unwrap().len());
    assert!(fb * 2 < fa, "q4_0 {fb} vs f16 {fa}");
}
