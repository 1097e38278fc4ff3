//! A prompt prefix computed once for every slot of the engine (`EngineConfig::prefix_sharing`):
//! requests that share a long prefix wait for the one computing it and copy its cells, a
//! request copies from a slot that is generating right now, and the answers are those each
//! request gets alone; in the reproducible mode, token for token.

mod common;

use std::sync::Arc;

use rocm_llama::{Engine, EngineConfig, GenerateOptions, Model, SamplingParams, Summary};

/// Text of at least `n` tokens: numbered notes, so that no two stretches repeat.
fn long_prefix(model: &Model, n: usize) -> String {
    let rivers = ["Nile", "Amazon", "Danube", "Rhine", "Volga", "Mekong", "Niger", "Indus"];
    let mut text = String::from("Field notes on rivers.\n");
    let mut i = 0;
    while model.vocab().tokenize(&text, true, false).unwrap().len() < n {
        let river = rivers[i % rivers.len()];
        text.push_str(&format!("Note {i}: the {river} passes station {} at kilometre {}.\n", i * 7 + 3, i * 13 + 5));
        i += 1;
    }
    text
}

const QUESTIONS: [&str; 8] = [
    "Question: which river passes station 10?",
    "Question: name the longest river above.",
    "Question: how many notes mention the Nile?",
    "Question: what comes after the Danube?",
    "Summary of the notes in one sentence:",
    "The river mentioned most often is",
    "Question: at which kilometre is note 3?",
    "Translate note 1 into French:",
];

/// Returns once the engine has generated a token or two (its first request is past its prompt).
fn wait_until_generating(handle: &Engine) {
    let start = std::time::Instant::now();
    while handle.stats().generated_tokens < 2 {
        assert!(start.elapsed().as_secs() < 120, "the first request never started generating");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// The number of leading tokens every prompt shares.
fn shared_tokens(model: &Model, prompts: &[String]) -> usize {
    let toks: Vec<Vec<i32>> = prompts.iter().map(|p| model.vocab().tokenize(p, true, true).unwrap()).collect();
    let first = &toks[0];
    toks[1..].iter().map(|t| first.iter().zip(t).take_while(|(a, b)| a == b).count()).min().unwrap()
}

fn engine(model: &Arc<Model>, config: EngineConfig) -> Engine {
    Engine::start(model.clone(), config.n_ctx_per_seq(1280).n_batch(512).threads(Some(2))).unwrap()
}

/// Issue 27, d): 8 requests arriving together behind a 1,000-token prefix compute it once (the
/// engine's counters say so: one request computes its whole prompt, the others only their own
/// part), and each greedy reply equals the reply that request gets alone (up to near ties,
/// see `common::assert_greedy_matches`).
#[test]
fn concurrent_requests_sharing_a_prefix_compute_it_once() {
    let Some(model) = common::model_path().map(|p| Arc::new(Model::load(p, &Default::default()).unwrap())) else {
        return;
    };
    let prefix = long_prefix(&model, 1000);
    let prompts: Vec<String> = QUESTIONS.iter().map(|q| format!("{prefix}{q}")).collect();
    let lens: Vec<usize> = prompts.iter().map(|p| model.vocab().tokenize(p, true, true).unwrap().len()).collect();
    let shared = shared_tokens(&model, &prompts);
    assert!(shared >= 1000, "{shared}");

    let handle = engine(&model, EngineConfig::default().n_seq_max(8));
    let streams: Vec<_> = prompts.iter().map(|p| handle.generate(p, &GenerateOptions::greedy(8)).unwrap()).collect();
    let results: Vec<(Vec<i32>, Summary)> = streams.into_iter().map(common::tokens_of).collect();
    let stats = handle.stats();

    // Computed once: at most one whole prompt plus every other prompt's own part.
    let own: usize = lens.iter().map(|l| l - shared).sum();
    let at_most = (lens.iter().max().unwrap() + own) as u64;
    assert!(
        stats.prompt_tokens_computed <= at_most,
        "computed {} > {at_most}: {stats:?}",
        stats.prompt_tokens_computed
    );
    let from_others: Vec<usize> = results.iter().map(|(_, s)| s.shared_prompt_tokens).collect();
    assert_eq!(from_others.iter().filter(|&&n| n >= shared).count(), 7, "{from_others:?}");
    assert!(stats.prompt_tokens_shared >= 7 * shared as u64, "{stats:?}");
    // Each of the seven copied once, most of them after waiting for the first to compute it.
    assert_eq!(stats.prefix_copies, 7, "{stats:?}");
    assert!(stats.prefix_waits >= 1, "{stats:?}");
    for (_, s) in &results {
        assert_eq!(s.cached_prompt_tokens, s.shared_prompt_tokens, "nothing came from a request's own slot");
    }

    for ((ids, _), prompt) in results.iter().zip(&prompts) {
        let reference = common::greedy_reference(&model, prompt, 8);
        common::assert_greedy_matches(&reference, ids, &prompt[prefix.len()..]);
    }
}

/// A request copies the prefix from a slot that is generating right now; both answers are
/// those each gets alone.
#[test]
fn a_prefix_is_copied_from_a_slot_that_is_generating() {
    let Some(model) = common::model_path().map(|p| Arc::new(Model::load(p, &Default::default()).unwrap())) else {
        return;
    };
    let prefix = long_prefix(&model, 300);
    let (a, b) = (format!("{prefix}{}", QUESTIONS[0]), format!("{prefix}{}", QUESTIONS[1]));
    let shared = shared_tokens(&model, &[a.clone(), b.clone()]);
    let handle = engine(&model, EngineConfig::default().n_seq_max(2));
    let first = handle.generate(&a, &GenerateOptions::greedy(24)).unwrap();
    wait_until_generating(&handle);
    let (ids_b, summary_b) = common::tokens_of(handle.generate(&b, &GenerateOptions::greedy(8)).unwrap());
    let (ids_a, summary_a) = common::tokens_of(first);
    assert_eq!(summary_a.cached_prompt_tokens, 0);
    assert!(summary_b.shared_prompt_tokens >= shared, "{summary_b:?}");
    assert_eq!(handle.stats().prefix_copies, 1);
    common::assert_greedy_matches(&common::greedy_reference(&model, &a, 24), &ids_a, "the generating donor");
    common::assert_greedy_matches(&common::greedy_reference(&model, &b, 8), &ids_b, "the copy");
}

/// In the reproducible mode prefixes are shared too, in whole `n_batch` chunks of cells that
/// were computed as a prompt, so a request's tokens do not change: requests arriving together
/// (greedy and seeded) get exactly what each gets from an engine of its own.
#[test]
fn reproducible_requests_share_prefixes_and_keep_their_tokens() {
    let Some(model) = common::model_path()
        .map(|p| Arc::new(Model::load(p, &rocm_llama::LoadConfig::default().cpu_repack(false)).unwrap()))
    else {
        return;
    };
    let prefix = long_prefix(&model, 600);
    let prompts: Vec<String> = QUESTIONS[..4].iter().map(|q| format!("{prefix}{q}")).collect();
    let config = EngineConfig::default().n_seq_max(4).reproducible(true);
    let options = |i: usize| {
        let mut o = GenerateOptions::greedy(10);
        if i % 2 == 1 {
            o.sampling = SamplingParams::default().temperature(0.9).seed(i as u32 + 1);
        }
        o
    };
    let alone: Vec<Vec<i32>> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| common::tokens_of(engine(&model, config.clone()).generate(p, &options(i)).unwrap()).0)
        .collect();
    let handle = engine(&model, config);
    let streams: Vec<_> = prompts.iter().enumerate().map(|(i, p)| handle.generate(p, &options(i)).unwrap()).collect();
    let together: Vec<(Vec<i32>, Summary)> = streams.into_iter().map(common::tokens_of).collect();
    for (i, (ids, summary)) in together.iter().enumerate() {
        assert_eq!(ids, &alone[i], "{}: {summary:?}", QUESTIONS[i]);
        assert_eq!(summary.shared_prompt_tokens % 512, 0, "whole chunks only");
    }
    assert!(handle.stats().prompt_tokens_shared >= 3 * 512, "{:?}", handle.stats());
}

/// The same copy from a generating slot with one KV buffer for all slots, where the cells are
/// shared rather than copied.
#[test]
fn a_prefix_is_shared_in_a_unified_buffer() {
    let Some(model) = common::model_path().map(|p| Arc::new(Model::load(p, &Default::default()).unwrap())) else {
        return;
    };
    let prefix = long_prefix(&model, 300);
    let (a, b) = (format!("{prefix}{}", QUESTIONS[2]), format!("{prefix}{}", QUESTIONS[3]));
    let shared = shared_tokens(&model, &[a.clone(), b.clone()]);
    let handle = engine(&model, EngineConfig::default().n_seq_max(2).kv_unified(true));
    let first = handle.generate(&a, &GenerateOptions::greedy(16)).unwrap();
    wait_until_generating(&handle);
    let (ids_b, summary_b) = common::tokens_of(handle.generate(&b, &GenerateOptions::greedy(8)).unwrap());
    let (ids_a, _) = common::tokens_of(first);
    assert!(summary_b.shared_prompt_tokens >= shared, "{summary_b:?}");
    common::assert_greedy_matches(&common::greedy_reference(&model, &a, 16), &ids_a, "the donor");
    common::assert_greedy_matches(&common::greedy_reference(&model, &b, 8), &ids_b, "the sharer");
}

/// On a sliding-window model (gemma 3: 512 positions) whose window layers keep only the last
/// window of cells (`swa_full` off), a slot that has gone far past a shared prefix no longer
/// holds the window before the cut (llama.cpp reused those cells): nothing is reused, the
/// prompt is computed, and the reply is still the one the request gets alone. With full-size
/// window caches (the default) the same prefix is reused, and so is, with window-sized caches,
/// a cut within a window of the newest position.
#[test]
fn a_prefix_whose_window_is_gone_is_computed_not_reused() {
    let Some(model) = common::model_path().map(|p| Arc::new(Model::load(p, &Default::default()).unwrap())) else {
        return;
    };
    assert_eq!(model.n_swa(), 512, "the test model's window");
    let prefix = long_prefix(&model, 600);
    // The donor goes 600 tokens past the shared part: with window-sized caches its cells for
    // the first positions now hold later ones.
    let donor = format!("{prefix}{}", long_prefix(&model, 600).replace("Note", "Entry"));
    let b = format!("{prefix}{}", QUESTIONS[4]);
    let reference = common::greedy_reference(&model, &b, 8);
    for swa_full in [false, true] {
        let handle = engine(&model, EngineConfig::default().n_seq_max(2).swa_full(swa_full));
        let (_, first) = common::tokens_of(handle.generate(&donor, &GenerateOptions::greedy(1)).unwrap());
        assert!(first.prompt_tokens > 1150, "{first:?}");
        let (ids, summary) = common::tokens_of(handle.generate(&b, &GenerateOptions::greedy(8)).unwrap());
        if swa_full {
            assert!(summary.cached_prompt_tokens >= 600, "{summary:?}");
        } else {
            assert_eq!(summary.cached_prompt_tokens, 0, "{summary:?}");
        }
        common::assert_greedy_matches(&reference, &ids, &format!("swa_full {swa_full}"));
    }
    // A cut within a window of the newest position is reused even with window-sized caches:
    // the window before it is still there.
    let c = format!("{donor}{}", QUESTIONS[5]);
    let handle = engine(&model, EngineConfig::default().n_seq_max(1).swa_full(false));
    let (_, first) = common::tokens_of(handle.generate(&donor, &GenerateOptions::greedy(1)).unwrap());
    let (ids, summary) = common::tokens_of(handle.generate(&c, &GenerateOptions::greedy(8)).unwrap());
    assert!(summary.cached_prompt_tokens >= first.prompt_tokens - 1, "{summary:?}");
    common::assert_greedy_matches(&common::greedy_reference(&model, &c, 8), &ids, "a cut within the window");
}
