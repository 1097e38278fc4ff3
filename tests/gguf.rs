//! The pure-Rust GGUF reader against the real test model, and the fit estimate against
//! llama.cpp's measured memory breakdown.

mod common;

use rocm_llama::fit::{estimate, plan, FitOptions, ModelShape};
use rocm_llama::gguf::{GgufFile, ReadOptions, Value};
use rocm_llama::{Context, ContextConfig, FlashAttention, LoadConfig};

#[test]
fn reads_the_real_model_like_llama_cpp_does() {
    let model = require_model!();
    let f = GgufFile::open(model.path()).unwrap();
    assert_eq!(f.version, 3);
    assert_eq!(f.architecture(), Some("gemma3"));
    assert_eq!(f.arch_u64("block_count"), Some(model.n_layer() as u64));
    assert_eq!(f.arch_u64("context_length"), Some(model.n_ctx_train() as u64));
    assert_eq!(f.tensor_bytes(), model.size_bytes());
    assert_eq!(f.n_params(), model.n_params());
    match f.get("tokenizer.ggml.tokens") {
        Some(Value::Array { len, values: None, .. }) => assert_eq!(*len, model.vocab().n_tokens() as u64),
        other => panic!("{other:?}"),
    }
    // Every scalar llama.cpp reports, this reader reports with the same text for strings.
    for (k, v) in model.meta_all() {
        if let Some(Value::String(s)) = f.get(&k) {
            assert_eq!(s, &v, "{k}");
        }
    }
    assert!(f.data_offset < f.file_size);
}

#[test]
fn truncated_copies_of_the_real_header_are_errors() {
    let Some(path) = common::model_path() else { return };
    let full = GgufFile::open(&path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let header_end = full.data_offset as usize;
    let step = (header_end / 300).max(1);
    for cut in (0..header_end.saturating_sub(64)).step_by(step) {
        assert!(GgufFile::from_bytes(&bytes[..cut], ReadOptions::default()).is_err(), "cut at {cut}");
    }
    let dir = std::env::temp_dir().join(format!("rocm-llama-gguf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("cut.gguf");
    std::fs::write(&p, &bytes[..header_end / 2]).unwrap();
    assert!(matches!(GgufFile::open(&p), Err(rocm_llama::Error::NotGguf { .. })));
    let _ = std::fs::remove_dir_all(&dir);
}

fn within(estimate: u64, measured: u64, what: &str) {
    let ratio = estimate as f64 / measured as f64;
    assert!((0.9..=1.1).contains(&ratio), "{what}: estimate {estimate} vs measured {measured} ({ratio:.3})");
}

/// The fit estimate agrees with llama.cpp's own accounting within 10% (on several GPUs its
/// compute buffers are an upper bound).
#[test]
fn fit_estimate_matches_the_measured_breakdown() {
    let model = require_model!();
    let shape = ModelShape::from_gguf(&GgufFile::open(model.path()).unwrap()).unwrap();
    assert_eq!(shape.n_layer, 18);
    assert_eq!(shape.kv_bytes_per_token(Default::default(), Default::default()), 18 * 512 * 2);
    let gpus = rocm_llama::devices::devices().split_gpus().len();
    for (n_ctx, fa) in [(1024u32, FlashAttention::Off), (4096, FlashAttention::Off), (4096, FlashAttention::On)] {
        let ctx = Context::new(model, &ContextConfig::default().n_ctx(n_ctx).threads(1).flash_attention(fa)).unwrap();
        let opts = FitOptions::default().flash_attention(fa == FlashAttention::On);
        // The test model is loaded with every layer on the GPU when there is one.
        let gpu_layers = if rocm_llama::available() { shape.n_layer } else { 0 };
        let e = estimate(&shape, gpu_layers, n_ctx, &opts);
        let weights = model.memory().weight_bytes();
        let used = ctx.memory_usage();
        within(e.weights_host + e.weights_device, weights, "weights");
        within(e.kv_host + e.kv_device, used.kv_bytes(), "KV cache");
        if gpus <= 1 {
            within(e.compute, used.compute_bytes(), "compute");
            within(e.total(), weights + used.kv_bytes() + used.compute_bytes(), "total");
        } else {
            // Split over several GPUs, fit counts one GPU's compute buffers on each: an upper
            // bound (each GPU's own buffers are at most that large).
            let (planned, measured) = (gpus as u64 * e.compute, used.compute_bytes());
            assert!(planned >= measured && planned <= gpus as u64 * measured, "compute: {planned} vs {measured}");
        }
    }
}

#[test]
fn fit_plans_for_this_machine() {
    let Some(path) = common::model_path() else { return };
    let (config, p) = LoadConfig::fit(&path, &FitOptions::default()).unwrap();
    assert!(p.n_ctx >= 512 && p.n_ctx <= 32_768, "{p:?}");
    assert!(p.estimate.total() < p.free_bytes);
    // In a CPU build the plan is made against host memory.
    if !rocm_llama::available() {
        assert_eq!(p.device, "CPU");
    }
    // Too little memory is a clear error, not a crash.
    let shape = ModelShape::from_gguf(&GgufFile::open(&path).unwrap()).unwrap();
    assert!(plan(&shape, 100 << 20, false, "CPU", &FitOptions::default()).is_err());
    let model = rocm_llama::Model::load(&path, &config).unwrap();
    assert_eq!(model.n_layer(), 18);
}

#[test]
fn process_memory_counts_models_and_contexts() {
    let model = require_model!();
    let before = rocm_llama::process_memory();
    assert!(before.host_bytes >= model.memory().host_bytes());
    let ctx = Context::new(model, &ContextConfig::default().n_ctx(2048).threads(1)).unwrap();
    let during = rocm_llama::process_memory();
    assert!(during.host_bytes >= ctx.memory_usage().host_bytes());
    assert!(during.peak_device_bytes >= during.device_bytes);
    if rocm_llama::available() {
        // With a GPU the test model and its KV cache live there (every layer by default).
        assert!(model.memory().device_bytes() > 0 && ctx.memory_usage().device_bytes() > 0);
        assert!(during.device_bytes > 0);
    } else {
        assert_eq!(ctx.memory_usage().device_bytes(), 0);
    }
    assert!(ctx.memory_usage().kv_bytes() > 0 && ctx.memory_usage().compute_bytes() > 0);
}
