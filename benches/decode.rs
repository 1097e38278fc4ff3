//! Decode and prefill through the library beside the same calls made on raw llama.cpp, with
//! flash attention off and on at several KV depths.
//!
//!   cargo bench --bench decode                       # the tiny synthetic model
//!   ROCM_LLAMA_BENCH_MODEL=/models/llama3-8b-q4_k_m.gguf cargo bench --bench decode
//!
//! `decode_step/D`: one token at KV depth D through `Context::decode` plus a greedy pick
//! (what generation does per token); `raw_decode_step/D`: the same with plain `llama_decode`
//! and an arg-max over the logits. `prefill/N`: an N-token prompt chunk.

#[path = "common/mod.rs"]
mod common;

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rocm_llama::bench::{argmax, RawBatch};
use rocm_llama::{sys, Batch, Context, ContextConfig, FlashAttention, LoadConfig, Model, Sampler};

fn benches(c: &mut Criterion) {
    let path = common::model_path();
    let model = Model::load(&path, &LoadConfig::default()).expect("model loads");
    let n_vocab = model.vocab().n_tokens() as usize;
    let bos = model.vocab().bos().unwrap_or(1);
    let prompt: Vec<i32> = std::iter::once(bos).chain((1..4096i32).map(|i| 300 + (i * 7919 % 3000))).collect();

    for fa in [FlashAttention::Off, FlashAttention::On] {
        let cfg = ContextConfig::default().n_ctx(8192).flash_attention(fa);
        let mut ctx = Context::new(&model, &cfg).expect("context");
        let mut sampler = Sampler::greedy(&model).unwrap();
        let mut batch = Batch::new(512, 1).unwrap();
        let mut group = c.benchmark_group(format!("fa_{fa:?}").to_lowercase());
        group.measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1)).sample_size(20);

        for depth in [64usize, 1024, 4096] {
            // Fill the cache to `depth`, then time single steps at that depth (the cache is
            // trimmed back after each so every step runs at the same depth).
            ctx.clear_memory();
            for (k, chunk) in prompt[..depth].chunks(512).enumerate() {
                batch.clear();
                batch.add_sequence(chunk, (k * 512) as i32, 0, true).unwrap();
                ctx.decode(&batch).unwrap();
            }
            let mut token = sampler.sample(&ctx, batch.len() as i32 - 1).unwrap();
            group.throughput(Throughput::Elements(1));
            group.bench_with_input(BenchmarkId::new("decode_step", depth), &depth, |b, &depth| {
                b.iter(|| {
                    ctx.seq_remove(Some(0), depth as i32..).unwrap();
                    batch.clear();
                    batch.add(token, depth as i32, &[0], true).unwrap();
                    ctx.decode(&batch).unwrap();
                    token = sampler.sample(&ctx, 0).unwrap();
                })
            });
            let mut raw = RawBatch::new(1).unwrap();
            group.bench_with_input(BenchmarkId::new("raw_decode_step", depth), &depth, |b, &depth| {
                b.iter(|| {
                    ctx.seq_remove(Some(0), depth as i32..).unwrap();
                    // SAFETY: used only below, while `ctx` is not otherwise borrowed.
                    let c = unsafe { ctx.as_ptr() };
                    raw.clear();
                    raw.push(token, depth as i32, 0, true).unwrap();
                    // SAFETY: the context is live and only this closure uses it while it runs;
                    // the token comes from the vocabulary and continues the sequence; logits
                    // of index 0 exist after a decode that succeeded.
                    unsafe {
                        raw.decode(c).unwrap();
                        token = argmax(std::slice::from_raw_parts(sys::llama_get_logits_ith(c, 0), n_vocab));
                    }
                })
            });
        }

        for n in [128usize, 512] {
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
