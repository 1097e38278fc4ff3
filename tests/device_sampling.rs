//! Sampling inside the decode graph (llama.cpp's backend sampling) against sampling on the
//! host, on the real model. The CPU backend runs device chains too, so these run everywhere.

mod common;

use std::sync::Arc;

use rocm_llama::{
    Batch, Context, Engine, EngineConfig, Error, GenerateOptions, SamplerPlacement, SamplingParams, Session,
};

fn opts(sampling: SamplingParams, n: usize) -> GenerateOptions {
    GenerateOptions::default().max_tokens(n).sampling(sampling)
}

#[test]
fn a_device_chain_gives_tokens_not_logits() {
    let model = require_model!();
    let mut ctx = Context::new(model, &common::config().n_seq_max(2).n_ctx(256)).unwrap();
    let prompt = model.vocab().tokenize("The capital of France is", true, false).unwrap();
    // A chain with a grammar cannot go to the device: a clear error, nothing attached.
    let grammar = SamplingParams::greedy().grammar(r#"root ::= "yes""#.to_string()).build(model).unwrap();
    assert!(!grammar.runs_on_device());
    assert!(matches!(ctx.set_device_sampler(0, grammar), Err(Error::Sampling(_))));
    assert!(!ctx.has_device_sampler(0));

    ctx.set_device_sampler(0, SamplingParams::greedy().build(model).unwrap()).unwrap();
    assert!(ctx.has_device_sampler(0));
    let mut batch = Batch::new(64, 1).unwrap();
    batch.add_sequence(&prompt, 0, 0, true).unwrap();
    batch.add_sequence(&prompt, 0, 1, true).unwrap();
    ctx.decode(&batch).unwrap();
    let (i0, i1) = (prompt.len() as i32 - 1, batch.len() as i32 - 1);
    let on_device = ctx.sampled_token(i0).unwrap();
    // Sequence 1 samples on the host, from logits; greedy agrees.
    let logits = ctx.logits(i1).unwrap();
    let on_host = rocm_llama::bench::argmax(logits);
    assert_eq!(on_device, on_host);
    // A device output has no logits, and a host output no device token.
    assert!(matches!(ctx.logits(i0), Err(Error::Sampling(_))));
    assert!(matches!(ctx.sampled_token(i1), Err(Error::Sampling(_))));
    assert!(matches!(ctx.sampled_token(0), Err(Error::NoOutput { .. })));
    // Two outputs of one device-sampled sequence in one decode are refused before llama.cpp.
    ctx.clear_memory();
    batch.clear();
    batch.add(prompt[0], 0, &[0], true).unwrap();
    batch.add(prompt[1], 1, &[0], true).unwrap();
    assert!(matches!(ctx.decode(&batch), Err(Error::InvalidBatch(_))));
    // Detached, the sequence gives logits again.
    ctx.clear_device_sampler(0).unwrap();
    ctx.decode(&batch).unwrap();
    assert!(ctx.logits(1).is_ok());
}

#[test]
fn greedy_is_the_same_on_the_device_and_on_the_host() {
    let model = require_model!();
    let prompt = "Write a list of fruits: apple, banana,";
    let run = |placement| {
        let mut ctx = common::context(model);
        let sampling = SamplingParams::greedy().placement(placement);
        ctx.generate(prompt, &opts(sampling, 24)).unwrap().collect_text().unwrap()
    };
    let (host, host_summary) = run(SamplerPlacement::Host);
    let (device, device_summary) = run(SamplerPlacement::Device);
    assert_eq!(host, device);
    assert_eq!(host_summary.generated_tokens, device_summary.generated_tokens);
    // After the generation, sequence 0 gives logits again (the chain left with it).
    let mut ctx = common::context(model);
    drop(ctx.generate(prompt, &opts(SamplingParams::greedy().placement(SamplerPlacement::Device), 2)).unwrap());
    assert!(!ctx.has_device_sampler(0));
}

#[test]
fn seeded_device_sampling_is_reproducible_and_sessions_reuse_the_prompt() {
    let model = require_model!();
    let sampling = SamplingParams::default().seed(42).placement(SamplerPlacement::Device);
    let generate = |session: &mut Session| {
        session.generate("Once upon a time", &opts(sampling.clone(), 16)).unwrap().collect_text().unwrap()
    };
    let mut session = Session::from_context(common::context(model));
    let (a, _) = generate(&mut session);
    // The same seed in a fresh session: the same decodes, the same draws.
    let (b, _) = generate(&mut Session::from_context(common::context(model)));
    assert_eq!(a, b);
    // Again in the first session: the prompt comes from its cache, so only the last token is
    // decoded. On the CPU the logits do not depend on that; a GPU's kernels differ by batch
    // shape, which can move a temperature draw across a boundary.
    let (c, second) = generate(&mut session);
    assert!(second.cached_prompt_tokens > 0, "{second:?}");
    if !rocm_llama::available() {
        assert_eq!(a, c);
    }
}

/// Samples `rounds` x 32 first tokens after one prompt (temperature 1.5, no truncation), one
/// seed per draw, on the device or on the host.
fn first_tokens(placement: SamplerPlacement, rounds: u32) -> Vec<i32> {
    let model = common::model().expect("model");
    let n_seq = 32;
    let mut ctx = Context::new(model, &common::config().n_ctx(32 * 16).n_seq_max(n_seq).n_batch(512)).unwrap();
    let prompt = model.vocab().tokenize("My favourite colour is", true, false).unwrap();
    let params = |seed: u32| {
        SamplingParams::default().temperature(1.5).top_k(0).top_p(1.0).min_p(0.0).seed(seed).placement(placement)
    };
    let mut out = Vec::new();
    for round in 0..rounds {
        ctx.clear_memory();
        let mut batch = Batch::new(512, 1).unwrap();
        let mut last = Vec::new();
        let mut host = Vec::new();
        for s in 0..n_seq as i32 {
            let seed = 1000 + round * n_seq + s as u32;
            let chain = params(seed).build(model).unwrap();
            if placement == SamplerPlacement::Device {
                ctx.set_device_sampler(s, chain).unwrap();
            } else {
                host.push(chain);
            }
            batch.add_sequence(&prompt, 0, s, true).unwrap();
            last.push(batch.len() as i32 - 1);
        }
        ctx.decode(&batch).unwrap();
        for (s, &i) in last.iter().enumerate() {
            out.push(match placement {
                SamplerPlacement::Device => ctx.sampled_token(i).unwrap(),
                _ => host[s].sample_logits(ctx.logits(i).unwrap()).unwrap(),
            });
        }
    }
    out
}

/// Pearson's chi-square of `draws` against the exact distribution `p` (over the `k` most
/// likely tokens plus one bin for the rest).
fn chi_square(draws: &[i32], p: &[(i32, f64)]) -> f64 {
    let n = draws.len() as f64;
    let mut rest_expected = 1.0;
    let mut rest_seen = draws.len();
    let mut chi = 0.0;
    for &(token, prob) in p {
        let seen = draws.iter().filter(|&&t| t == token).count();
        rest_seen -= seen;
        rest_expected -= prob;
        chi += (seen as f64 - n * prob).powi(2) / (n * prob);
    }
    chi + (rest_seen as f64 - n * rest_expected).powi(2) / (n * rest_expected)
}

/// The device draws from the same distribution as the host: both samples of 640 draws fit the
/// exact softmax of the logits (chi-square over the 5 most likely tokens and the rest, 5
/// degrees of freedom; 20.5 is the 0.1% critical value). Fixed seeds, so the outcome is fixed.
#[test]
fn device_sampling_draws_from_the_same_distribution() {
    let model = require_model!();
    let mut ctx = common::context(model);
    let prompt = model.vocab().tokenize("My favourite colour is", true, false).unwrap();
    let mut batch = Batch::new(64, 1).unwrap();
    batch.add_sequence(&prompt, 0, 0, true).unwrap();
    ctx.decode(&batch).unwrap();
    let logits = ctx.logits(batch.len() as i32 - 1).unwrap();
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let weights: Vec<f64> = logits.iter().map(|&l| (((l - max) / 1.5) as f64).exp()).collect();
    let total: f64 = weights.iter().sum();
    let mut ranked: Vec<(i32, f64)> = weights.iter().enumerate().map(|(t, w)| (t as i32, w / total)).collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    let top = &ranked[..5];
    assert!(top.iter().map(|t| t.1).sum::<f64>() < 0.95, "the test needs a spread distribution: {top:?}");

    let host = first_tokens(SamplerPlacement::Host, 20);
    let device = first_tokens(SamplerPlacement::Device, 20);
    let (chi_host, chi_device) = (chi_square(&host, top), chi_square(&device, top));
    eprintln!("chi-square over 640 draws: host {chi_host:.2}, device {chi_device:.2}");
    assert!(chi_host < 20.5, "host {chi_host}");
    assert!(chi_device < 20.5, "device {chi_device}");
}

#[test]
fn the_engine_samples_on_the_device_with_the_same_greedy_text() {
    let Some(model) = common::model_path() else { return };
    // Without CPU weight repacking the logits of a sequence do not depend on what else is in
    // the batch, so the same prompt gives the same greedy text in any slot and any step.
    let load = rocm_llama::LoadConfig::default().cpu_repack(false);
    let model = Arc::new(rocm_llama::Model::load(&model, &load).unwrap());
    let engine =
        Engine::start(model, EngineConfig::default().n_seq_max(4).n_ctx_per_seq(256).n_batch(256).threads(1)).unwrap();
    let prompts = ["The capital of France is", "One, two, three,", "Water boils at", "The capital of France is"];
    let run = |placement| -> Vec<Vec<i32>> {
        let streams: Vec<_> = prompts
            .iter()
            .map(|p| engine.generate(p, &opts(SamplingParams::greedy().placement(placement), 12)).unwrap())
            .collect();
        streams.into_iter().map(|s| common::tokens_of(s).0).collect()
    };
    let host = run(SamplerPlacement::Host);
    let device = run(SamplerPlacement::Device);
    // Again on the device: the slots' chains are reset and reused, and prefixes still hit.
    let again = run(SamplerPlacement::Device);
    if !rocm_llama::available() {
        assert_eq!(host, device);
        assert_eq!(again, host);
    }
    // A GPU's kernels depend on the batch's shape, which the engine's steps vary: each run
    // gives the plain greedy decode's tokens up to a near tie (the first prompt has one, 0.008
    // nats, at its 12th token).
    for (k, p) in prompts.iter().enumerate() {
        let reference = common::greedy_reference(engine.model(), p, 12);
        for (what, got) in [("host", &host[k]), ("device", &device[k]), ("device again", &again[k])] {
            common::assert_greedy_matches(&reference, got, &format!("{what}, prompt {k}"));
        }
    }
    assert!(engine.stats().prompt_cache_hits > 0);
    engine.shutdown();
}
