//! Shared setup for the end-to-end tests: the real test model.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::OnceLock;

use rocm_llama::{Context, ContextConfig, LoadConfig, Model};

/// The test model's path: `ROCM_LLAMA_TEST_MODEL`, else the cache that
/// `scripts/test-model.sh` fills. `None` (with a message) only when it is really absent
/// outside CI; under CI (`CI` set) a missing model fails the test.
pub fn model_path() -> Option<PathBuf> {
    let path = std::env::var_os("ROCM_LLAMA_TEST_MODEL").map(PathBuf::from).or_else(|| {
        let home = std::env::var_os("HOME")?;
        let cache = std::env::var_os("ROCM_LLAMA_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(home).join(".cache/rocm-llama"));
        Some(cache.join("gemma-3-270m-q4_k_m.gguf"))
    })?;
    if path.is_file() {
        return Some(path);
    }
    if std::env::var_os("CI").is_some() {
        panic!("test model missing at {} under CI: run scripts/test-model.sh", path.display());
    }
    eprintln!(
        "SKIPPED: test model not found at {} (run scripts/test-model.sh or set ROCM_LLAMA_TEST_MODEL)",
        path.display()
    );
    None
}

/// The test model, loaded once per test binary (models are Sync).
pub fn model() -> Option<&'static Model> {
    static MODEL: OnceLock<Option<Model>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            let path = model_path()?;
            Some(Model::load(&path, &LoadConfig::default()).expect("the test model loads"))
        })
        .as_ref()
}

/// A small context with one thread, so tests running in parallel never oversubscribe the
/// cores (llama.cpp's spinning thread pools slow down badly when they do).
pub fn config() -> ContextConfig {
    ContextConfig::default().n_ctx(1024).threads(1)
}

pub fn context(model: &Model) -> Context<'_> {
    Context::new(model, &config()).expect("context")
}

/// Returns early from a test when the model is absent (never under CI).
#[macro_export]
macro_rules! require_model {
    () => {
        match common::model() {
            Some(m) => m,
            None => return,
        }
    };
}
