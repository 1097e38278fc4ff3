//! Shared setup for the end-to-end tests: the real test model.
#![allow(dead_code)]

pub mod rng;

use std::path::PathBuf;
use std::sync::OnceLock;

use rocm_llama::{Context, ContextConfig, LoadConfig, Model};

/// CMake on PATH (a build prerequisite), for the preflight tests; `None` with a message
/// where it is missing outside CI.
pub fn cmake() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    let found = std::env::split_paths(&path).map(|d| d.join("cmake")).find(|p| p.is_file());
    if found.is_none() {
        assert!(std::env::var_os("CI").is_none(), "cmake is missing under CI (scripts/dev/setup.sh installs it)");
        eprintln!("SKIPPED: no cmake on PATH");
    }
    found
}

/// The test model's path: `ROCM_LLAMA_TEST_MODEL`, else the cache that
/// `scripts/test/model.sh` fills. `None` (with a message) only when it is really absent
/// outside CI; under CI (`CI` set) a missing model fails the test.
pub fn model_path() -> Option<PathBuf> {
    let path = std::env::var_os("ROCM_LLAMA_TEST_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| rocm_llama::inventory::cache_dir().join("gemma-3-270m-q4_k_m.gguf"));
    if path.is_file() {
        return Some(path);
    }
    if std::env::var_os("CI").is_some() {
        panic!("test model missing at {} under CI: run scripts/test/model.sh", path.display());
    }
    eprintln!(
        "SKIPPED: test model not found at {} (run scripts/test/model.sh or set ROCM_LLAMA_TEST_MODEL)",
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

/// The folder of published chat templates (`ROCM_LLAMA_TEST_TEMPLATES`, else fetched once by
/// scripts/test/templates.sh).
pub fn templates_dir() -> PathBuf {
    fetched("ROCM_LLAMA_TEST_TEMPLATES", "test/templates.sh")
}

/// The folder of llama.cpp's tokenizer test vocabularies with their reference tokenizations
/// (`ROCM_LLAMA_TEST_VOCABS`, else extracted once by scripts/test/vocabs.sh).
pub fn vocabs_dir() -> PathBuf {
    fetched("ROCM_LLAMA_TEST_VOCABS", "test/vocabs.sh")
}

/// llama.cpp's own `llama-embedding` tool built from the pinned source
/// (`ROCM_LLAMA_LLAMA_EMBEDDING`, else built once by scripts/test/llama-embedding.sh).
pub fn llama_embedding_tool() -> PathBuf {
    fetched("ROCM_LLAMA_LLAMA_EMBEDDING", "test/llama-embedding.sh")
}

/// Test data of other projects: the path in `var` when set, else what `scripts/{script}`
/// fetches or builds (once, into the cache) and prints.
/// The script runs once per test binary (the tests of a binary run side by side and would
/// each start it), and takes a lock so concurrent binaries wait for one fetch.
fn fetched(var: &str, script: &str) -> PathBuf {
    if let Ok(path) = std::env::var(var) {
        return PathBuf::from(path);
    }
    static DONE: std::sync::Mutex<Vec<(String, PathBuf)>> = std::sync::Mutex::new(Vec::new());
    let mut done = DONE.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((_, path)) = done.iter().find(|(s, _)| s == script) {
        return path.clone();
    }
    let path = format!("{}/scripts/{script}", env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new("bash").arg(&path).output().expect("bash runs the fetch script");
    assert!(out.status.success(), "{path} failed: {}", String::from_utf8_lossy(&out.stderr));
    let found = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    done.push((script.to_string(), found.clone()));
    found
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

/// Greedy reference decode of `prompt` with a plain context, one token at a time: each
/// generated token with the gap between its logit and the runner-up's.
pub fn greedy_reference(model: &Model, prompt: &str, n: usize) -> Vec<(i32, f32)> {
    let vocab = model.vocab();
    let tokens = vocab.tokenize(prompt, true, true).unwrap();
    // Room for the prompt and the reply; a long prompt goes in chunks of one batch.
    let n_ctx = (tokens.len() + n + 1).next_multiple_of(256).max(1024) as u32;
    let mut ctx = Context::new(model, &config().n_ctx(n_ctx)).expect("context");
    let mut batch = rocm_llama::Batch::new(512, 1).unwrap();
    for (k, chunk) in tokens.chunks(512).enumerate() {
        batch.clear();
        let last_chunk = (k + 1) * 512 >= tokens.len();
        batch.add_sequence(chunk, (k * 512) as i32, 0, last_chunk).unwrap();
        ctx.decode(&batch).unwrap();
    }
    let mut last = batch.len() as i32 - 1;
    let mut out = Vec::new();
    for step in 0..n {
        let pos = (tokens.len() + step) as i32;
        let logits = ctx.logits(last).unwrap();
        let (mut best, mut second) = ((0usize, f32::MIN), f32::MIN);
        for (i, &l) in logits.iter().enumerate() {
            if l > best.1 {
                second = best.1;
                best = (i, l);
            } else if l > second {
                second = l;
            }
        }
        let t = best.0 as i32;
        out.push((t, best.1 - second));
        if vocab.is_eog(t) {
            break;
        }
        batch.clear();
        batch.add(t, pos, &[0], true).unwrap();
        ctx.decode(&batch).unwrap();
        last = 0;
    }
    out
}

/// The largest logit change measured between batch shapes of the same sequence on the CPU
/// backend (0.92, see `tests/model.rs`), with headroom.
pub const KERNEL_NOISE: f32 = 1.5;

/// Checks greedy `got` tokens against the reference: equal, except that the two may part at
/// a near tie (the reference's top two logits closer than [`KERNEL_NOISE`]), where ggml's
/// batch-shape-dependent kernels can legitimately pick the other token; after that point
/// the continuations are not compared. A real mix-up (wrong positions, sequences leaking
/// into each other) changes tokens with clear margins and fails.
pub fn assert_greedy_matches(reference: &[(i32, f32)], got: &[i32], what: &str) {
    for (k, (&(want, margin), &have)) in reference.iter().zip(got).enumerate() {
        if want != have {
            assert!(
                margin < KERNEL_NOISE,
                "{what}: token {k} is {have}, reference {want} with a clear margin of {margin:.3}"
            );
            return;
        }
    }
    // No divergence: the same tokens, the reference possibly ending with the EOG token that
    // the generation does not report.
    assert!(
        got.len() == reference.len() || got.len() + 1 == reference.len(),
        "{what}: {} tokens vs {} in the reference",
        got.len(),
        reference.len()
    );
}

/// Runs `body` in a child process (this test binary again, with `ROCM_LLAMA_CHILD_CASE`
/// naming the test), so that an abort, a stack overflow or a segfault fails this one test with
/// the signal that killed the child instead of taking the whole test binary down. `case` is
/// the test function's name.
pub fn in_child(case: &str, body: impl FnOnce()) {
    if std::env::var("ROCM_LLAMA_CHILD_CASE").as_deref() == Ok(case) {
        body();
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(exe)
        .args([case, "--exact", "--nocapture", "--test-threads=1"])
        .env("ROCM_LLAMA_CHILD_CASE", case)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    #[cfg(unix)]
    if let Some(sig) = std::os::unix::process::ExitStatusExt::signal(&out.status) {
        panic!("case {case} killed its process with signal {sig}\nstdout:\n{stdout}\nstderr:\n{stderr}");
    }
    assert!(out.status.success(), "case {case} failed ({:?})\nstdout:\n{stdout}\nstderr:\n{stderr}", out.status);
    assert!(stdout.contains("1 passed"), "case {case} did not run in the child:\n{stdout}");
}

/// A stream's token ids and its summary (panics on an error event or a missing summary).
pub fn tokens_of(stream: rocm_llama::TokenStream) -> (Vec<i32>, rocm_llama::Summary) {
    let mut ids = Vec::new();
    for ev in stream {
        match ev.unwrap() {
            rocm_llama::Event::Token { id, .. } => ids.push(id),
            rocm_llama::Event::Text(_) => {}
            rocm_llama::Event::Done(s) => return (ids, s),
        }
    }
    panic!("stream ended without a summary");
}
