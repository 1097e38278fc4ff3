//! Decode and prefill speed through the library, on the test model or the GGUF named by
//! `ROCM_LLAMA_BENCH_MODEL`.
//!
//!   cargo bench --bench decode
//!   ROCM_LLAMA_BENCH_MODEL=/models/llama3-8b-q4_k_m.gguf cargo bench --bench decode -- --quick
//!
//! `decode_step`: one token through `Context::decode` plus a greedy pick (what generation
//! does per token). `prefill/N`: an N-token prompt chunk. Both for flash attention off and on.

use std::path::PathBuf;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rocm_llama::{Batch, Context, ContextConfig, FlashAttention, LoadConfig, Model, Sampler};

fn model_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ROCM_LLAMA_BENCH_MODEL").or_else(|| std::env::var_os("ROCM_LLAMA_TEST_MODEL")) {
        return Some(PathBuf::from(p));
    }
    let p = PathBuf::from(std::env::var_os("HOME")?).join(".cache/rocm-llama/gemma-3-270m-q4_k_m.gguf");
    p.is_file().then_some(p)
}

fn benches(c: &mut Criterion) {
    let Some(path) = model_path() else {
        eprintln!("SKIPPED: no model (set ROCM_LLAMA_BENCH_MODEL or run scripts/test-model.sh)");
        return;
    };
    let model = Model::load(&path, &LoadConfig::default()).expect("model loads");
    let vocab = model.vocab();
    let prompt: Vec<i32> = vocab.tokenize(&"The history of the river is long. ".repeat(40), true, false).unwrap();

    for fa in [FlashAttention::Off, FlashAttention::On] {
        let cfg = ContextConfig::default().n_ctx(2048).flash_attention(fa);
        let mut ctx = Context::new(&model, &cfg).expect("context");
        let mut sampler = Sampler::greedy(&model).unwrap();
        let mut batch = Batch::new(512, 1).unwrap();

        let mut group = c.benchmark_group(format!("fa_{fa:?}").to_lowercase());
        group.measurement_time(Duration::from_secs(5)).sample_size(20);

        // Decode: a 64-token prompt, then single tokens; the cache is trimmed back so every
        // step runs at the same depth.
        batch.add_sequence(&prompt[..64], 0, 0, true).unwrap();
        ctx.decode(&batch).unwrap();
        let mut token = sampler.sample(&ctx, 63).unwrap();
        group.throughput(Throughput::Elements(1));
        group.bench_function("decode_step", |b| {
            b.iter(|| {
                ctx.seq_remove(Some(0), 64..).unwrap();
                batch.clear();
                batch.add(token, 64, &[0], true).unwrap();
                ctx.decode(&batch).unwrap();
                token = sampler.sample(&ctx, 0).unwrap();
            })
        });

        for n in [128usize, 512] {
            let n = n.min(prompt.len());
            group.throughput(Throughput::Elements(n as u64));
            group.bench_with_input(BenchmarkId::new("prefill", n), &n, |b, &n| {
                b.iter(|| {
                    ctx.clear_memory();
                    batch.clear();
                    batch.add_sequence(&prompt[..n], 0, 0, true).unwrap();
                    ctx.decode(&batch).unwrap();
                })
            });
        }
        group.finish();
    }
}

criterion_group!(decode, benches);
criterion_main!(decode);
