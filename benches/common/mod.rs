//! The model benches run on: `ROCM_LLAMA_BENCH_MODEL` when set, else a `tiny` synthetic
//! model (llama architecture, a few MB) written on the fly into the target folder.

use std::path::PathBuf;

pub fn model_path() -> PathBuf {
    if let Some(p) = std::env::var_os("ROCM_LLAMA_BENCH_MODEL") {
        return PathBuf::from(p);
    }
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-models");
    let path = dir.join("tiny-q4_k_m.gguf");
    if !path.exists() {
        let shape = rocm_llama::synth::find_shape("tiny").expect("tiny shape");
        rocm_llama::synth::synth(
            shape,
            rocm_llama::synth::SynthType::Q4KM,
            &path,
            rocm_llama::default_threads(),
            1,
            None,
            &|_| {},
        )
        .expect("synthesize the tiny bench model");
    }
    path
}
