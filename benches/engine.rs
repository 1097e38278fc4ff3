//! Aggregate generation throughput through the engine at 1..32 concurrent sequences, beside
//! a raw batched-decode baseline in the same run: the same sequences decoded together with
//! plain `llama_decode` calls and greedy picks, no engine.
//!
//!   cargo bench --bench engine                       # the tiny synthetic model
//!   ROCM_LLAMA_BENCH_MODEL=~/.cache/rocm-llama/gemma-3-270m-q4_k_m.gguf cargo bench --bench engine
//!
//! Each iteration: N prompts of PROMPT_TOKENS tokens, GEN_TOKENS generated per sequence,
//! prefill included on both sides; throughput counts generated tokens.

#[path = "common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput};
use rocm_llama::bench::RawBatch;
use rocm_llama::{sys, Engine, EngineConfig, GenerateOptions, LoadConfig, Model};

const PROMPT_TOKENS: usize = 16;
const GEN_TOKENS: usize = 16;
const N_CTX_PER_SEQ: u32 = 64;
const N_BATCH: u32 = 512;
const LEVELS: [usize; 6] = [1, 2, 4, 8, 16, 32];

/// N distinct prompts of exactly PROMPT_TOKENS tokens (BOS + ids from the vocabulary's middle).
fn prompts(model: &Model, n: usize) -> Vec<Vec<i32>> {
    let bos = model.vocab().bos().unwrap_or(1);
    // Ids from the vocabulary's middle, whatever its size (the tiny model has 4096).
    let span = (model.vocab().n_tokens() as usize).saturating_sub(400).max(1);
    (0..n)
        .map(|s| {
            let mut t = vec![bos];
            t.extend((1..PROMPT_TOKENS).map(|j| 300 + ((s * 7919 + j * 104_729) % span) as i32));
            t
        })
        .collect()
}

/// The baseline: raw llama.cpp calls only.
fn raw_batched(model: &Model, prompts: &[Vec<i32>]) -> Duration {
    let n = prompts.len();
    // SAFETY: plain FFI on a live model; every pointer below is checked or sized by us.
    unsafe {
        let mut p = sys::llama_context_default_params();
        p.n_ctx = N_CTX_PER_SEQ * n as u32;
        p.n_batch = N_BATCH;
        p.n_ubatch = N_BATCH;
        p.n_seq_max = n as u32;
        let threads = rocm_llama::default_threads() as i32;
        p.n_threads = threads;
        p.n_threads_batch = threads;
        let ctx = sys::llama_init_from_model(model.as_ptr(), p);
        assert!(!ctx.is_null());
        let n_vocab = model.vocab().n_tokens() as usize;
        let mut batch = RawBatch::new(N_BATCH as usize).unwrap();
        let start = Instant::now();
        // Prefill in chunks of n_batch, logits on each prompt's last token.
        let mut flat: Vec<(i32, i32, i32, bool)> = Vec::new();
        for (s, t) in prompts.iter().enumerate() {
            for (j, &tok) in t.iter().enumerate() {
                flat.push((tok, j as i32, s as i32, j + 1 == t.len()));
            }
        }
        let mut last_index = vec![0i32; n];
        for chunk in flat.chunks(N_BATCH as usize) {
            batch.clear();
            for &(tok, pos, seq, logits) in chunk {
                let i = batch.push(tok, pos, seq, logits).unwrap();
                if logits {
                    last_index[seq as usize] = i;
                }
            }
            batch.decode(ctx).unwrap();
        }
        let mut next = vec![0i32; n];
        for step in 0..GEN_TOKENS {
            for s in 0..n {
                let row = std::slice::from_raw_parts(sys::llama_get_logits_ith(ctx, last_index[s]), n_vocab);
                next[s] = row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i as i32).unwrap();
            }
            if step + 1 == GEN_TOKENS {
                break;
            }
            batch.clear();
            for s in 0..n {
                last_index[s] = batch.push(next[s], (PROMPT_TOKENS + step) as i32, s as i32, true).unwrap();
            }
            batch.decode(ctx).unwrap();
        }
        let elapsed = start.elapsed();
        drop(batch);
        sys::llama_free(ctx);
        elapsed
    }
}

fn through_engine(model: &Arc<Model>, prompts: &[Vec<i32>]) -> Duration {
    let n = prompts.len();
    let config = EngineConfig::default()
        .n_seq_max(n as u32)
        .n_ctx_per_seq(N_CTX_PER_SEQ)
        .n_batch(N_BATCH)
        .queue_capacity(n.max(1));
    let handle = Engine::start(model.clone(), config).unwrap();
    // Greedy, so the work matches the baseline token for token.
    let opts = GenerateOptions::greedy(GEN_TOKENS);
    let start = Instant::now();
    let streams: Vec<_> = prompts.iter().map(|p| handle.generate_tokens(p.clone(), &opts).unwrap()).collect();
    for s in streams {
        s.collect_text().unwrap();
    }
    start.elapsed()
}

fn benches(c: &mut Criterion) {
    let path = common::model_path();
    let model = Arc::new(Model::load(&path, &LoadConfig::default()).expect("model loads"));
    let mut group = c.benchmark_group("aggregate");
    group.sampling_mode(SamplingMode::Flat).sample_size(10).warm_up_time(Duration::from_secs(1));
    for n in LEVELS {
        let prompts = prompts(&model, n);
        group.throughput(Throughput::Elements((n * GEN_TOKENS) as u64));
        group.bench_with_input(BenchmarkId::new("raw_batched", n), &n, |b, _| {
            b.iter_custom(|iters| (0..iters).map(|_| raw_batched(&model, &prompts)).sum())
        });
        group.bench_with_input(BenchmarkId::new("engine", n), &n, |b, _| {
            b.iter_custom(|iters| (0..iters).map(|_| through_engine(&model, &prompts)).sum())
        });
    }
    group.finish();
}

criterion_group!(engine, benches);
criterion_main!(engine);
