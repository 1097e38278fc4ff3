//! `rocm-llama bench`: llama-bench-style measurements through this library, each beside a
//! raw-FFI baseline run in the same process on the same model and settings.
//!
//! - `pp<N>`: prefill of N tokens (mean ± stddev over repetitions), at several KV depths.
//! - `tg<N>`: N single-token decode steps with a greedy pick.
//! - `ttft`: time to first token for an N-token prompt.
//! - overhead: the same pp/tg through plain `llama_decode` calls, and the host time per
//!   decode step that the library adds.
//! - concurrency: aggregate decode tokens/s of N sequences through the engine (default
//!   sampling) against N sequences decoded together with plain `llama_decode` and arg-max.
//!
//! Embeddings and classification have their own run in [`embed`] (`rocm-llama bench-embed`).

pub mod embed;
mod raw;

use std::sync::Arc;
use std::time::Instant;

use llama_cpp_sys_2 as sys;

use crate::batch::Batch;
use crate::context::{Context, ContextConfig, FlashAttention, KvType};
use crate::engine::{Engine, EngineConfig};
use crate::error::{Error, Result};
use crate::generate::{Event, GenerateOptions};
use crate::model::Model;
use crate::sampler::SamplingParams;
pub use raw::RawBatch;

/// What to measure.
///
/// ```
/// use rocm_llama::bench::BenchConfig;
///
/// let config = BenchConfig::default().n_prompt(vec![512]).n_gen(64).repetitions(5).concurrency(vec![]);
/// assert_eq!(config.n_gen, 64);
/// ```
#[derive(Debug, Clone, serde::Serialize)]
#[non_exhaustive]
pub struct BenchConfig {
    /// Prompt lengths for `pp` and `ttft`; a 0 is skipped (as llama-bench's `-p 0`).
    pub n_prompt: Vec<usize>,
    /// Tokens for `tg`; 0 skips it.
    pub n_gen: usize,
    /// KV depths at which `pp` of the first prompt length is repeated.
    pub depths: Vec<usize>,
    /// Repetitions of each test (after one warm-up).
    pub repetitions: usize,
    /// Flash attention settings to compare.
    pub flash_attention: Vec<FlashAttention>,
    /// KV cache type.
    pub kv_type: KvType,
    /// Concurrency levels for the engine test (empty: skip it).
    pub concurrency: Vec<usize>,
    /// Prompt tokens per sequence in the concurrency test.
    pub concurrent_prompt: usize,
    /// Generated tokens per sequence in the concurrency test.
    pub concurrent_gen: usize,
    /// Threads (default: the cores this process may use).
    pub threads: Option<u32>,
    /// Logical batch size.
    pub n_batch: u32,
    /// One KV buffer for all sequences in the concurrency test (raw and engine), as
    /// llama-batched-bench's `-kvu`; default off, as there (and as the engine's default).
    pub kv_unified: bool,
    /// Where the engine's requests sample in the concurrency test.
    pub placement: crate::sampler::SamplerPlacement,
    /// Greedy requests in the concurrency test instead of the default sampling chain.
    pub greedy: bool,
    /// The engine's reproducible mode in the concurrency test
    /// ([`EngineConfig::reproducible`]); the raw baseline stays batched.
    pub reproducible: bool,
    /// Every sequence of the concurrency test has the same prompt, as llama-batched-bench's
    /// `-pps`: the raw loop computes it once and copies it to every sequence; the engine gets
    /// N requests with that prompt and shares it its own way (one computes, the others wait
    /// and copy).
    pub shared_prompt: bool,
    /// LoRA adapter sets for the engine's requests in the concurrency test: request `i` runs
    /// under set `i % len` (empty: none). One set measures an adapter's cost; several measure
    /// mixing them, as the engine decodes each set apart (the raw baseline runs without).
    #[serde(serialize_with = "lora_sets")]
    pub lora_sets: Vec<Vec<(crate::adapter::LoraAdapter, f32)>>,
    /// Speculative decoding for the copy test: `tg{n} copy` generates `n_gen` greedy tokens
    /// after a prompt that repeats a run of tokens (a reply that copies from its prompt), with
    /// and without it (none: no copy test).
    #[serde(serialize_with = "speculation_name")]
    pub speculation: Option<crate::speculative::Speculation>,
}

/// The speculation in a report, as its settings read (a draft model by its path).
fn speculation_name<S: serde::Serializer>(
    spec: &Option<crate::speculative::Speculation>,
    ser: S,
) -> std::result::Result<S::Ok, S::Error> {
    use serde::Serialize;
    spec.as_ref().map(|s| format!("{s:?}")).serialize(ser)
}

/// The adapter sets in a report: each adapter's path and scale.
fn lora_sets<S: serde::Serializer>(
    sets: &[Vec<(crate::adapter::LoraAdapter, f32)>],
    ser: S,
) -> std::result::Result<S::Ok, S::Error> {
    use serde::Serialize;
    let named: Vec<Vec<(String, f32)>> = sets
        .iter()
        .map(|set| set.iter().map(|(a, scale)| (a.path().display().to_string(), *scale)).collect())
        .collect();
    named.serialize(ser)
}

crate::config::setters!(BenchConfig {
    n_prompt: Vec<usize>,
    n_gen: usize,
    depths: Vec<usize>,
    repetitions: usize,
    flash_attention: Vec<FlashAttention>,
    kv_type: KvType,
    concurrency: Vec<usize>,
    concurrent_prompt: usize,
    concurrent_gen: usize,
    n_batch: u32,
    kv_unified: bool,
    placement: crate::sampler::SamplerPlacement,
    greedy: bool,
    reproducible: bool,
    shared_prompt: bool,
    lora_sets: Vec<Vec<(crate::adapter::LoraAdapter, f32)>>,
} optional {
    threads: u32,
    speculation: crate::speculative::Speculation,
});

impl Default for BenchConfig {
    fn default() -> Self {
        BenchConfig {
            n_prompt: vec![512, 2048],
            n_gen: 128,
            depths: vec![0, 4096],
            repetitions: 3,
            flash_attention: vec![FlashAttention::Off, FlashAttention::On],
            kv_type: KvType::F16,
            concurrency: vec![1, 2, 4, 8, 16, 32, 64],
            concurrent_prompt: 128,
            concurrent_gen: 128,
            threads: None,
            n_batch: 2048,
            kv_unified: false,
            placement: crate::sampler::SamplerPlacement::Host,
            greedy: false,
            reproducible: false,
            shared_prompt: false,
            lora_sets: Vec::new(),
            speculation: None,
        }
    }
}

/// One measured test.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Measurement {
    /// `pp512`, `tg128`, `ttft512`, `raw pp512`, ...
    pub test: String,
    /// Flash attention setting.
    pub flash_attention: FlashAttention,
    /// KV depth before the test.
    pub depth: usize,
    /// Mean (tokens/s, or ms for ttft).
    pub mean: f64,
    /// Sample standard deviation.
    pub stddev: f64,
    /// `tok/s` or `ms`.
    pub unit: &'static str,
    /// Every repetition.
    pub runs: Vec<f64>,
}

/// One concurrency level.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ConcurrencyRow {
    /// Sequences.
    pub sequences: usize,
    /// Raw batched decode, no sampling (what llama.cpp's batched-bench measures as S_TG),
    /// tokens/s.
    pub raw_tokens_per_s: f64,
    /// Raw: prefill of every prompt plus the whole decode loop, ms (batched-bench's T).
    pub raw_total_ms: f64,
    /// Raw batched decode with a serial arg-max per sequence on the host, tokens/s.
    pub raw_greedy_tokens_per_s: f64,
    /// Through the engine with default sampling, generated tokens/s (decode phase).
    pub engine_tokens_per_s: f64,
    /// engine / raw.
    pub ratio: f64,
    /// Mean time to first token through the engine, ms.
    pub engine_ttft_ms: f64,
    /// Median time to first token through the engine, ms.
    pub engine_ttft_median_ms: f64,
    /// Longest time to first token through the engine, ms.
    pub engine_ttft_max_ms: f64,
    /// Through the engine, from submitting every request to the last token, ms.
    pub engine_total_ms: f64,
    /// The engine's decode steps in that run.
    pub engine_steps: u64,
    /// Of the engine worker's busy time: the share in llama.cpp's decode until its outputs
    /// were ready, and the share sampling and handing tokens out (the rest is scheduling).
    pub engine_decode_share: f64,
    /// See `engine_decode_share`.
    pub engine_sample_share: f64,
    /// Busy time per step, ms.
    pub engine_step_ms: f64,
    /// Time in decode per step that computed no prompt tokens, ms (compare with the raw
    /// loop's step, `sequences / raw_tokens_per_s`).
    pub engine_decode_only_step_ms: f64,
    /// Of `engine_steps`, those that computed prompt tokens (beside decode tokens or alone).
    pub engine_prompt_steps: u64,
    /// Time in decode per step with prompt tokens, ms.
    pub engine_prompt_step_ms: f64,
    /// Of the engine's `engine_steps`, the graphs llama.cpp reused instead of building them
    /// again (a step with prompt tokens can run several graphs).
    pub engine_graphs_reused: u64,
    /// Prompt tokens the engine computed.
    pub engine_prompt_computed: u64,
    /// Prompt tokens the engine took from a request's own slot.
    pub engine_prompt_own_slot: u64,
    /// Prompt tokens the engine copied from another slot.
    pub engine_prompt_other_slot: u64,
    /// The raw loop's decode steps.
    pub raw_steps: u64,
    /// Of `raw_steps`, those whose graph llama.cpp reused.
    pub raw_graphs_reused: u64,
}

/// Everything one bench run measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchReport {
    /// Model description.
    pub model: String,
    /// The settings.
    pub config: BenchConfig,
    /// Library measurements and their raw baselines.
    pub measurements: Vec<Measurement>,
    /// Host time the library adds per decode step, microseconds (library tg step − raw tg step).
    pub host_overhead_us: Vec<(FlashAttention, f64)>,
    /// The engine against raw batched decode.
    pub concurrency: Vec<ConcurrencyRow>,
    /// Peak GPU memory of this process (llama.cpp buffers), bytes.
    pub peak_device_bytes: u64,
    /// What the model and one bench context held.
    pub memory: crate::accounting::MemoryBreakdown,
    /// Whether the model's output layer is on a GPU (where `SamplerPlacement::Device` samples
    /// inside the decode graph).
    pub output_on_gpu: bool,
}

fn stats(runs: &[f64]) -> (f64, f64) {
    let n = runs.len() as f64;
    let mean = runs.iter().sum::<f64>() / n;
    let var = if runs.len() > 1 { runs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
    (mean, var.sqrt())
}

/// Deterministic prompt tokens (ids from the vocabulary's middle, BOS first).
fn tokens(model: &Model, n: usize, salt: usize) -> Vec<i32> {
    let v = model.vocab();
    let span = (v.n_tokens() as usize).saturating_sub(2000).max(1);
    let mut t = vec![v.bos().unwrap_or(1)];
    t.extend((1..n).map(|i| 1000 + ((i * 7919 + salt * 104_729) % span) as i32));
    t.truncate(n.max(1));
    t
}

/// The index of the first largest value: a greedy pick straight from a logits row, as the
/// raw baselines do it.
pub fn argmax(row: &[f32]) -> i32 {
    crate::sampler::first_max(row).unwrap_or(0) as i32
}

/// Prefill of `prompt` at positions `depth..` through the library; returns seconds.
fn lib_prefill(ctx: &mut Context<'_>, batch: &mut Batch, prompt: &[i32], depth: usize) -> Result<f64> {
    let n_batch = ctx.n_batch() as usize;
    let t = Instant::now();
    for (k, chunk) in prompt.chunks(n_batch).enumerate() {
        batch.clear();
        batch.add_sequence(chunk, (depth + k * n_batch) as i32, 0, (k + 1) * n_batch >= prompt.len())?;
        ctx.decode(batch)?;
    }
    // `decode` returns once the work is queued on an asynchronous backend (a GPU, an RPC
    // server); the clock stops when it is done, as llama-bench's does.
    ctx.synchronize();
    Ok(t.elapsed().as_secs_f64())
}

/// The same through plain llama.cpp calls on the context's raw pointer.
fn raw_prefill(ctx: &mut Context<'_>, raw: &mut RawBatch, prompt: &[i32], depth: usize, n_batch: usize) -> Result<f64> {
    // SAFETY: used only below, while `ctx` is not otherwise borrowed.
    let c = unsafe { ctx.as_ptr() };
    let t = Instant::now();
    for (k, chunk) in prompt.chunks(n_batch).enumerate() {
        raw.clear();
        for (i, &tok) in chunk.iter().enumerate() {
            raw.push(tok, (depth + k * n_batch + i) as i32, 0, i + 1 == chunk.len())?;
        }
        // SAFETY: `ctx` is live and exclusively borrowed; every id comes from `tokens` (in
        // the vocabulary), one sequence, positions continuing the cached depth.
        unsafe { raw.decode(c)? };
    }
    // SAFETY: a live context.
    unsafe { sys::llama_synchronize(c) };
    Ok(t.elapsed().as_secs_f64())
}

/// Runs the whole bench on `model`; `progress` hears each step.
pub fn run(shared: &Arc<Model>, cfg: &BenchConfig, progress: &dyn Fn(&str)) -> Result<BenchReport> {
    let model: &Model = shared;
    if cfg.repetitions == 0 {
        return Err(Error::invalid("repetitions", "bench needs at least one repetition"));
    }
    let prompts: Vec<usize> = cfg.n_prompt.iter().copied().filter(|&n| n > 0).collect();
    let single_stream = !prompts.is_empty() || cfg.n_gen > 0;
    if !single_stream && cfg.concurrency.iter().all(|&n| n == 0) {
        return Err(Error::invalid(
            "bench settings",
            "nothing to measure: every prompt length, the generated tokens and the concurrency levels are 0",
        ));
    }
    let first_prompt = prompts.first().copied().unwrap_or(0);
    let max_prompt = prompts.iter().copied().max().unwrap_or(0);
    let max_depth = cfg.depths.iter().copied().max().unwrap_or(0);
    let n_ctx =
        (max_prompt.max(first_prompt + max_depth).max(max_depth + 16) + cfg.n_gen + 16).next_multiple_of(256) as u32;
    let mut measurements = Vec::new();
    let mut host_overhead_us = Vec::new();
    let mut memory = model.memory().clone();
    let push = |m: &mut Vec<Measurement>, test: String, fa, depth, unit, runs: Vec<f64>| {
        let (mean, stddev) = stats(&runs);
        m.push(Measurement { test, flash_attention: fa, depth, mean, stddev, unit, runs });
    };
    for &fa in cfg.flash_attention.iter().filter(|_| single_stream) {
        let mut cc = ContextConfig::default().n_ctx(n_ctx).n_batch(cfg.n_batch).flash_attention(fa);
        cc.n_ubatch = 512.min(cfg.n_batch);
        cc.type_k = cfg.kv_type;
        cc.type_v = cfg.kv_type;
        if let Some(t) = cfg.threads {
            cc = cc.threads(t);
        }
        let mut ctx = Context::new(model, &cc)?;
        if memory.kv.is_empty() {
            memory.merge(ctx.memory_usage());
        }
        let n_batch = ctx.n_batch() as usize;
        let mut batch = Batch::new(n_batch, 1)?;
        let mut raw_batch = RawBatch::new(n_batch)?;

        for &np in &prompts {
            let prompt = tokens(model, np, np);
            {
                let label = "pp";
                let depths = if np == first_prompt { cfg.depths.clone() } else { vec![0] };
                for depth in depths {
                    progress(&format!("{label}{np} depth {depth}, flash attention {fa:?}"));
                    let fill = tokens(model, depth, 7);
                    let (mut lib, mut raw) = (Vec::new(), Vec::new());
                    for rep in 0..=cfg.repetitions {
                        ctx.clear_memory();
                        if depth > 0 {
                            lib_prefill(&mut ctx, &mut batch, &fill, 0)?;
                        }
                        let s = lib_prefill(&mut ctx, &mut batch, &prompt, depth)?;
                        ctx.clear_memory();
                        if depth > 0 {
                            lib_prefill(&mut ctx, &mut batch, &fill, 0)?;
                        }
                        let r = raw_prefill(&mut ctx, &mut raw_batch, &prompt, depth, n_batch)?;
                        if rep > 0 {
                            lib.push(np as f64 / s);
                            raw.push(np as f64 / r);
                        }
                    }
                    push(&mut measurements, format!("pp{np}"), fa, depth, "tok/s", lib);
                    push(&mut measurements, format!("raw pp{np}"), fa, depth, "tok/s", raw);
                }
            }
            // Time to first token: prefill plus one greedy pick.
            progress(&format!("ttft{np}, flash attention {fa:?}"));
            let mut ttft = Vec::new();
            for rep in 0..=cfg.repetitions {
                ctx.clear_memory();
                let t = Instant::now();
                lib_prefill(&mut ctx, &mut batch, &prompt, 0)?;
                let _first = argmax(ctx.logits(batch.len() as i32 - 1)?);
                if rep > 0 {
                    ttft.push(t.elapsed().as_secs_f64() * 1e3);
                }
            }
            push(&mut measurements, format!("ttft{np}"), fa, 0, "ms", ttft);
        }

        // Token generation after a short prompt at each KV depth (as llama-bench's -d applies
        // to every test), library vs raw.
        for &depth in cfg.depths.iter().filter(|_| cfg.n_gen > 0) {
            progress(&format!("tg{} depth {depth}, flash attention {fa:?}", cfg.n_gen));
            let prompt = tokens(model, 16, 3);
            let fill = tokens(model, depth, 7);
            let start = depth + prompt.len();
            // Empties the cache and computes the fill and the prompt; returns the first token.
            let prepare = |ctx: &mut Context<'_>, batch: &mut Batch| -> Result<i32> {
                ctx.clear_memory();
                if depth > 0 {
                    lib_prefill(ctx, batch, &fill, 0)?;
                }
                lib_prefill(ctx, batch, &prompt, depth)?;
                Ok(argmax(ctx.logits(batch.len() as i32 - 1)?))
            };
            // The library with greedy sampling inside the decode graph: only the token comes back.
            let mut device = Vec::new();
            for rep in 0..=cfg.repetitions {
                let mut tok = prepare(&mut ctx, &mut batch)?;
                ctx.set_device_sampler(0, crate::sampler::Sampler::greedy(model)?)?;
                let t = Instant::now();
                for i in 0..cfg.n_gen {
                    batch.clear();
                    batch.add(tok, (start + i) as i32, &[0], true)?;
                    ctx.decode(&batch)?;
                    tok = ctx.sampled_token(0)?;
                }
                let s = t.elapsed().as_secs_f64();
                ctx.clear_device_sampler(0)?;
                if rep > 0 {
                    device.push(cfg.n_gen as f64 / s);
                }
            }
            push(&mut measurements, format!("tg{} device", cfg.n_gen), fa, depth, "tok/s", device);
            let (mut lib, mut raw, mut lib_step, mut raw_step) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for rep in 0..=cfg.repetitions {
                let mut tok = prepare(&mut ctx, &mut batch)?;
                let t = Instant::now();
                for i in 0..cfg.n_gen {
                    batch.clear();
                    batch.add(tok, (start + i) as i32, &[0], true)?;
                    ctx.decode(&batch)?;
                    tok = argmax(ctx.logits(0)?);
                }
                let s = t.elapsed().as_secs_f64();
                let mut tok = prepare(&mut ctx, &mut batch)?;
                // SAFETY: used only below, while `ctx` is not otherwise borrowed.
                let c = unsafe { ctx.as_ptr() };
                let n_vocab = model.vocab().n_tokens() as usize;
                let t = Instant::now();
                for i in 0..cfg.n_gen {
                    raw_batch.clear();
                    raw_batch.push(tok, (start + i) as i32, 0, true)?;
                    // SAFETY: as in `raw_prefill`; the token was picked from the logits, so it
                    // is in the vocabulary; logits of index 0 exist after a decode that
                    // succeeded.
                    tok = unsafe {
                        raw_batch.decode(c)?;
                        argmax(std::slice::from_raw_parts(sys::llama_get_logits_ith(c, 0), n_vocab))
                    };
                }
                let r = t.elapsed().as_secs_f64();
                if rep > 0 {
                    lib.push(cfg.n_gen as f64 / s);
                    raw.push(cfg.n_gen as f64 / r);
                    lib_step.push(s / cfg.n_gen as f64);
                    raw_step.push(r / cfg.n_gen as f64);
                }
            }
            push(&mut measurements, format!("tg{}", cfg.n_gen), fa, depth, "tok/s", lib);
            push(&mut measurements, format!("raw tg{}", cfg.n_gen), fa, depth, "tok/s", raw);
            if depth == cfg.depths[0] {
                let (ls, _) = stats(&lib_step);
                let (rs, _) = stats(&raw_step);
                host_overhead_us.push((fa, (ls - rs) * 1e6));
            }
        }
    }

    // The copy test: greedy generation after a prompt that repeats a run of random tokens
    // (the reply can copy the rest of the run), through `Context::generate_tokens`, without and
    // with the speculation asked for. Decode speed from the first token on, as the summary
    // reports it; the share of guessed tokens confirmed beside it.
    if let (Some(spec), true) = (&cfg.speculation, cfg.n_gen > 0) {
        let run_len = (cfg.n_gen + 16).min(2048);
        let run = tokens(model, run_len, 11);
        let mut prompt = run.clone();
        prompt.extend_from_slice(&run[..16]);
        let n_ctx = (prompt.len() + cfg.n_gen + 16).next_multiple_of(256) as u32;
        for &fa in &cfg.flash_attention {
            progress(&format!("tg{} copy, flash attention {fa:?}", cfg.n_gen));
            let mut cc = ContextConfig::default().n_ctx(n_ctx).n_batch(cfg.n_batch).flash_attention(fa);
            cc.type_k = cfg.kv_type;
            cc.type_v = cfg.kv_type;
            if let Some(t) = cfg.threads {
                cc = cc.threads(t);
            }
            let mut ctx = Context::new(model, &cc)?;
            let mut greedy = crate::GenerateOptions::greedy(cfg.n_gen);
            greedy.sampling.ignore_eos = true;
            let (mut plain, mut with, mut confirmed) = (Vec::new(), Vec::new(), Vec::new());
            for rep in 0..=cfg.repetitions {
                let (_, a) = ctx.generate_tokens(prompt.clone(), &greedy)?.collect_text()?;
                let opts = greedy.clone().speculation(spec.clone());
                let (_, b) = ctx.generate_tokens(prompt.clone(), &opts)?.collect_text()?;
                if rep > 0 {
                    plain.push(a.decode_tokens_per_s);
                    with.push(b.decode_tokens_per_s);
                    confirmed.push(100.0 * b.draft_tokens_accepted as f64 / b.draft_tokens.max(1) as f64);
                }
            }
            push(&mut measurements, format!("tg{} copy", cfg.n_gen), fa, 0, "tok/s", plain);
            push(&mut measurements, format!("tg{} copy spec", cfg.n_gen), fa, 0, "tok/s", with);
            push(&mut measurements, format!("tg{} copy spec confirmed", cfg.n_gen), fa, 0, "%", confirmed);
        }
    }

    let mut concurrency = Vec::new();
    for &n in &cfg.concurrency {
        progress(&format!("{n} concurrent sequences"));
        let fa = *cfg.flash_attention.last().unwrap_or(&FlashAttention::Auto);
        let raw_run = raw_batched(model, cfg, n, fa, false)?;
        let (raw, raw_total) = (raw_run.tokens_per_s, raw_run.total_s);
        let raw_greedy = raw_batched(model, cfg, n, fa, true)?.tokens_per_s;
        let e = through_engine(shared, cfg, n, fa)?;
        concurrency.push(ConcurrencyRow {
            sequences: n,
            raw_tokens_per_s: raw,
            raw_total_ms: raw_total * 1e3,
            raw_greedy_tokens_per_s: raw_greedy,
            engine_tokens_per_s: e.tokens_per_s,
            ratio: if raw > 0.0 { e.tokens_per_s / raw } else { 0.0 },
            engine_ttft_ms: e.ttft_mean_ms,
            engine_ttft_median_ms: e.ttft_median_ms,
            engine_ttft_max_ms: e.ttft_max_ms,
            engine_total_ms: e.total_ms,
            engine_steps: e.stats.steps,
            engine_decode_share: share(e.stats.decode_s, e.stats.busy_s),
            engine_sample_share: share(e.stats.sample_s, e.stats.busy_s),
            engine_step_ms: if e.stats.steps > 0 { e.stats.busy_s * 1e3 / e.stats.steps as f64 } else { 0.0 },
            engine_decode_only_step_ms: {
                let steps = e.stats.steps.saturating_sub(e.stats.prompt_steps);
                if steps > 0 {
                    (e.stats.decode_s - e.stats.prompt_decode_s) * 1e3 / steps as f64
                } else {
                    0.0
                }
            },
            engine_prompt_steps: e.stats.prompt_steps,
            engine_prompt_step_ms: if e.stats.prompt_steps > 0 {
                e.stats.prompt_decode_s * 1e3 / e.stats.prompt_steps as f64
            } else {
                0.0
            },
            engine_graphs_reused: e.stats.graphs_reused,
            engine_prompt_computed: e.stats.prompt_tokens_computed,
            engine_prompt_own_slot: e.stats.prompt_tokens_cached - e.stats.prompt_tokens_shared,
            engine_prompt_other_slot: e.stats.prompt_tokens_shared,
            raw_steps: raw_run.steps,
            raw_graphs_reused: raw_run.graphs_reused,
        });
    }
    Ok(BenchReport {
        model: model.description(),
        config: cfg.clone(),
        measurements,
        host_overhead_us,
        concurrency,
        peak_device_bytes: crate::accounting::process_memory().peak_device_bytes,
        memory,
        output_on_gpu: model.output_on_gpu(),
    })
}

/// Which prompt sequence `s` of the concurrency test gets: its own, or all the same.
fn prompt_salt(cfg: &BenchConfig, s: usize) -> usize {
    if cfg.shared_prompt {
        11
    } else {
        s + 11
    }
}

fn per_seq_ctx(cfg: &BenchConfig) -> u32 {
    ((cfg.concurrent_prompt + cfg.concurrent_gen + 8) as u32).next_multiple_of(256)
}

/// N sequences decoded together with plain llama.cpp calls, set up as llama-batched-bench
/// does (n_batch 2048, n_ubatch 512, the KV layout of `cfg.kv_unified`): decode-phase
/// tokens/s, and the whole run (prefill plus decode) in seconds. With `pick`, each next token
/// is the arg-max of its logits (a serial host loop, as a simple server would do); without,
/// the same token is fed again (no sampling at all).
fn raw_batched(model: &Model, cfg: &BenchConfig, n: usize, fa: FlashAttention, pick: bool) -> Result<RawRun> {
    let mut cc = ContextConfig::default()
        .n_ctx(per_seq_ctx(cfg) * n as u32)
        .n_seq_max(n as u32)
        .n_batch(cfg.n_batch)
        .kv_unified(cfg.kv_unified)
        .flash_attention(fa);
    cc.n_ubatch = 512.min(cfg.n_batch);
    if let Some(t) = cfg.threads {
        cc = cc.threads(t);
    }
    let mut ctx = Context::new(model, &cc)?;
    let mut batch = Batch::new(ctx.n_batch() as usize, 1)?;
    let prompts: Vec<Vec<i32>> = (0..n).map(|s| tokens(model, cfg.concurrent_prompt, prompt_salt(cfg, s))).collect();
    // Prefill, all prompts packed into batches (timed only for the total); a shared prompt is
    // computed once in sequence 0 and copied to the others.
    let started = Instant::now();
    let mut last = vec![0i32; n];
    let computed = if cfg.shared_prompt { 1 } else { n };
    let flat: Vec<(usize, usize, i32)> = prompts[..computed]
        .iter()
        .enumerate()
        .flat_map(|(s, p)| p.iter().enumerate().map(move |(j, &t)| (s, j, t)))
        .collect();
    for chunk in flat.chunks(ctx.n_batch() as usize) {
        batch.clear();
        for &(s, j, t) in chunk {
            let i = batch.add(t, j as i32, &[s as i32], j + 1 == prompts[s].len())?;
            if j + 1 == prompts[s].len() {
                last[s] = i;
            }
        }
        ctx.decode(&batch)?;
    }
    for s in computed..n {
        ctx.seq_copy(0, s as i32, ..)?;
        last[s] = last[0];
    }
    // The decode loop goes through the checked types (a batch check and a log capture per
    // step: microseconds against a decode's milliseconds).
    let mut next: Vec<i32> = (0..n).map(|s| ctx.logits(last[s]).map(argmax)).collect::<Result<_>>()?;
    let mut step_batch = Batch::new(n, 1)?;
    let reused_before = ctx.perf().n_reused;
    let t = Instant::now();
    for step in 0..cfg.concurrent_gen.saturating_sub(1) {
        step_batch.clear();
        for (s, &tok) in next.iter().enumerate() {
            step_batch.add(tok, (cfg.concurrent_prompt + step) as i32, &[s as i32], true)?;
        }
        ctx.decode(&step_batch)?;
        if pick {
            for (s, tok) in next.iter_mut().enumerate() {
                *tok = argmax(ctx.logits(s as i32)?);
            }
        } else {
            // Wait for the step to finish as a reader of the logits would.
            ctx.synchronize();
        }
    }
    let decode_secs = t.elapsed().as_secs_f64();
    let steps = cfg.concurrent_gen.saturating_sub(1);
    Ok(RawRun {
        tokens_per_s: (n * steps) as f64 / decode_secs,
        total_s: started.elapsed().as_secs_f64(),
        steps: steps as u64,
        graphs_reused: (ctx.perf().n_reused - reused_before).max(0) as u64,
    })
}

/// What one raw batched run measured.
struct RawRun {
    /// Decode-phase tokens/s.
    tokens_per_s: f64,
    /// Prefill and decode, seconds.
    total_s: f64,
    /// Decode steps.
    steps: u64,
    /// Of those, the steps whose compute graph llama.cpp reused.
    graphs_reused: u64,
}

/// What one engine run measured.
struct EngineRun {
    tokens_per_s: f64,
    ttft_mean_ms: f64,
    ttft_median_ms: f64,
    ttft_max_ms: f64,
    total_ms: f64,
    stats: crate::engine::EngineStats,
}

/// `part / whole`, 0 when `whole` is 0.
fn share(part: f64, whole: f64) -> f64 {
    if whole > 0.0 {
        part / whole
    } else {
        0.0
    }
}

/// N requests through the engine with default sampling; decode-phase tokens/s (from the
/// moment every sequence has its first token) and mean time to first token.
fn through_engine(shared: &Arc<Model>, cfg: &BenchConfig, n: usize, fa: FlashAttention) -> Result<EngineRun> {
    let config = EngineConfig::default()
        .kv_unified(cfg.kv_unified)
        .reproducible(cfg.reproducible)
        .n_seq_max(n as u32)
        .n_ctx_per_seq(per_seq_ctx(cfg))
        .n_batch(cfg.n_batch)
        .queue_capacity(n)
        .threads(cfg.threads)
        .flash_attention(fa);
    let handle = Engine::start(shared.clone(), config)?;
    let mut sampling = if cfg.greedy { SamplingParams::greedy() } else { SamplingParams::default().seed(7) };
    // Every sequence generates its full count, as in the raw loop and llama-batched-bench: a
    // request ending early at an end-of-generation token would leave the others to run alone.
    sampling.ignore_eos = true;
    let opts = GenerateOptions::default().max_tokens(cfg.concurrent_gen).sampling(sampling.placement(cfg.placement));
    let start = Instant::now();
    let streams: Vec<_> = (0..n)
        .map(|s| {
            let mut opts = opts.clone();
            if !cfg.lora_sets.is_empty() {
                opts.lora = Some(cfg.lora_sets[s % cfg.lora_sets.len()].clone());
            }
            handle.generate_tokens(tokens(shared, cfg.concurrent_prompt, prompt_salt(cfg, s)), &opts)
        })
        .collect::<Result<_>>()?;
    let per_stream: Vec<Vec<Instant>> = std::thread::scope(|sc| {
        let joins: Vec<_> = streams
            .into_iter()
            .map(|st| {
                sc.spawn(move || {
                    let mut times = Vec::new();
                    for ev in st {
                        match ev {
                            Ok(Event::Token { .. }) => times.push(Instant::now()),
                            Ok(_) => {}
                            Err(_) => break,
                        }
                    }
                    times
                })
            })
            .collect();
        joins.into_iter().map(|j| j.join().unwrap_or_default()).collect()
    });
    let t0 = per_stream.iter().filter_map(|t| t.first().copied()).max().unwrap_or(start);
    let t1 = per_stream.iter().filter_map(|t| t.last().copied()).max().unwrap_or(t0);
    let after: usize = per_stream.iter().map(|t| t.iter().filter(|&&x| x > t0).count()).sum();
    let mut ttft: Vec<f64> =
        per_stream.iter().filter_map(|t| t.first()).map(|f| (*f - start).as_secs_f64() * 1e3).collect();
    ttft.sort_by(f64::total_cmp);
    let secs = (t1 - t0).as_secs_f64();
    Ok(EngineRun {
        tokens_per_s: if secs > 0.0 { after as f64 / secs } else { 0.0 },
        ttft_mean_ms: ttft.iter().sum::<f64>() / n.max(1) as f64,
        ttft_median_ms: ttft.get(ttft.len() / 2).copied().unwrap_or(0.0),
        ttft_max_ms: ttft.last().copied().unwrap_or(0.0),
        total_ms: (t1 - start).as_secs_f64() * 1e3,
        stats: handle.stats(),
    })
}

impl BenchReport {
    /// A terminal table.
    pub fn table(&self) -> String {
        let mut s = format!("model: {}\n", self.model);
        let w = self.measurements.iter().map(|m| m.test.len()).max().unwrap_or(0).max(12);
        if !self.measurements.is_empty() {
            s.push_str(&format!("\n{:<w$} {:<6} {:>6} {:>22}\n", "test", "fa", "depth", "result"));
        }
        for m in &self.measurements {
            s.push_str(&format!(
                "{:<w$} {:<6} {:>6} {:>14.2} ± {:<6.2} {}\n",
                m.test,
                format!("{:?}", m.flash_attention).to_lowercase(),
                m.depth,
                m.mean,
                m.stddev,
                m.unit
            ));
        }
        for (fa, us) in &self.host_overhead_us {
            s.push_str(&format!("host time added per decode step (fa {fa:?}): {us:.1} µs\n"));
        }
        if !self.concurrency.is_empty() {
            s.push_str(&format!(
                "\nKV layout: {}; engine sampling: {}, {}\n{:>5} {:>11} {:>11} {:>13} {:>12} {:>7} {:>11} {:>11} {:>13}\n",
                if self.config.kv_unified { "unified" } else { "one buffer per sequence" },
                format!("{:?}", self.config.placement).to_lowercase(),
                if self.config.greedy { "greedy" } else { "default chain" },
                "seqs",
                "raw tok/s",
                "raw total",
                "raw+argmax",
                "engine tok/s",
                "ratio",
                "engine tot",
                "ttft med",
                "ttft max"
            ));
            for r in &self.concurrency {
                s.push_str(&format!(
                    "{:>5} {:>11.1} {:>9.0}ms {:>13.1} {:>12.1} {:>6.0}% {:>9.0}ms {:>9.1}ms {:>11.1}ms\n",
                    r.sequences,
                    r.raw_tokens_per_s,
                    r.raw_total_ms,
                    r.raw_greedy_tokens_per_s,
                    r.engine_tokens_per_s,
                    r.ratio * 100.0,
                    r.engine_total_ms,
                    r.engine_ttft_median_ms,
                    r.engine_ttft_max_ms
                ));
            }
            for r in &self.concurrency {
                s.push_str(&format!(
                    "engine at {} seqs: {} steps of {:.2} ms: decode {:.0}%, sampling {:.0}%, scheduling {:.0}%; \
                     decode alone (no prompt tokens) {:.2} ms a step, raw {:.2} ms; \
                     {} steps with prompt tokens, {:.2} ms each; graphs reused {} (raw {} of {}); \
                     prompt tokens computed {}, from own slots {}, from other slots {}\n",
                    r.sequences,
                    r.engine_steps,
                    r.engine_step_ms,
                    r.engine_decode_share * 100.0,
                    r.engine_sample_share * 100.0,
                    (1.0 - r.engine_decode_share - r.engine_sample_share).max(0.0) * 100.0,
                    r.engine_decode_only_step_ms,
                    if r.raw_tokens_per_s > 0.0 { r.sequences as f64 * 1e3 / r.raw_tokens_per_s } else { 0.0 },
                    r.engine_prompt_steps,
                    r.engine_prompt_step_ms,
                    r.engine_graphs_reused,
                    r.raw_graphs_reused,
                    r.raw_steps,
                    r.engine_prompt_computed,
                    r.engine_prompt_own_slot,
                    r.engine_prompt_other_slot
                ));
            }
        }
        s.push_str(&format!(
            "\nmemory: {}; peak GPU {}\n",
            self.memory.summary(),
            crate::accounting::gib(self.peak_device_bytes)
        ));
        s
    }

    /// An SVG with two panels: throughput against concurrency (engine and raw), and prefill
    /// tokens/s against KV depth with flash attention off and on.
    pub fn svg(&self) -> String {
        let mut svg = String::from(
            "<svg xmlns='http://www.w3.org/2000/svg' width='900' height='360' font-family='sans-serif' font-size='12'>\n<rect width='900' height='360' fill='white'/>\n",
        );
        // (legend, colour, points)
        type Series<'a> = (&'a str, &'a str, Vec<(f64, f64)>);
        let panel = |svg: &mut String, x0: f64, title: &str, xlabel: &str, series: &[Series<'_>]| {
            let (w, h, top) = (380.0, 260.0, 40.0);
            let xs: Vec<f64> = series.iter().flat_map(|s| s.2.iter().map(|p| p.0)).collect();
            let ys: Vec<f64> = series.iter().flat_map(|s| s.2.iter().map(|p| p.1)).collect();
            let (xmin, xmax) =
                (xs.iter().cloned().fold(f64::MAX, f64::min), xs.iter().cloned().fold(f64::MIN, f64::max));
            let ymax = ys.iter().cloned().fold(0.0, f64::max).max(1.0) * 1.1;
            let fx = |x: f64| x0 + 50.0 + if xmax > xmin { (x - xmin) / (xmax - xmin) * w } else { w / 2.0 };
            let fy = |y: f64| top + h - y / ymax * h;
            svg.push_str(&format!("<text x='{}' y='20' font-weight='bold'>{title}</text>\n", x0 + 50.0));
            svg.push_str(&format!(
                "<line x1='{a}' y1='{t}' x2='{a}' y2='{b}' stroke='black'/><line x1='{a}' y1='{b}' x2='{c}' y2='{b}' stroke='black'/>\n",
                a = x0 + 50.0,
                t = top,
                b = top + h,
                c = x0 + 50.0 + w
            ));
            svg.push_str(&format!("<text x='{}' y='{}'>{xlabel}</text>\n", x0 + 50.0 + w / 2.0 - 40.0, top + h + 35.0));
            for k in 0..=4 {
                let y = ymax * k as f64 / 4.0;
                svg.push_str(&format!(
                    "<text x='{}' y='{}' text-anchor='end'>{:.0}</text>\n",
                    x0 + 45.0,
                    fy(y) + 4.0,
                    y
                ));
            }
            for (i, (name, color, pts)) in series.iter().enumerate() {
                let path: Vec<String> = pts.iter().map(|(x, y)| format!("{:.1},{:.1}", fx(*x), fy(*y))).collect();
                svg.push_str(&format!(
                    "<polyline fill='none' stroke='{color}' stroke-width='2' points='{}'/>\n",
                    path.join(" ")
                ));
                for (x, y) in pts {
                    svg.push_str(&format!("<circle cx='{:.1}' cy='{:.1}' r='3' fill='{color}'/>\n", fx(*x), fy(*y)));
                    if i == 0 {
                        svg.push_str(&format!(
                            "<text x='{:.1}' y='{}' text-anchor='middle'>{x}</text>\n",
                            fx(*x),
                            top + h + 15.0
                        ));
                    }
                }
                svg.push_str(&format!(
                    "<text x='{}' y='{}' fill='{color}'>{name}</text>\n",
                    x0 + 60.0,
                    top + 15.0 + 15.0 * i as f64
                ));
            }
        };
        let conc = |f: fn(&ConcurrencyRow) -> f64| {
            self.concurrency.iter().map(|r| (r.sequences as f64, f(r))).collect::<Vec<_>>()
        };
        panel(
            &mut svg,
            0.0,
            "generated tokens/s vs concurrent sequences",
            "sequences",
            &[
                ("engine", "#d62728", conc(|r| r.engine_tokens_per_s)),
                ("raw batched decode", "#1f77b4", conc(|r| r.raw_tokens_per_s)),
            ],
        );
        let first = self.config.n_prompt.iter().copied().find(|&n| n > 0).unwrap_or(512);
        let pp = |fa: FlashAttention| {
            self.measurements
                .iter()
                .filter(|m| m.test == format!("pp{first}") && m.flash_attention == fa)
                .map(|m| (m.depth as f64, m.mean))
                .collect::<Vec<_>>()
        };
        panel(
            &mut svg,
            450.0,
            &format!("pp{first} tokens/s vs KV depth"),
            "context depth",
            &[
                ("flash attention on", "#2ca02c", pp(FlashAttention::On)),
                ("flash attention off", "#9467bd", pp(FlashAttention::Off)),
            ],
        );
        svg.push_str("</svg>\n");
        svg
    }
}
