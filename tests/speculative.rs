//! Speculative decoding (prompt lookup) on the real model: greedy output is the output without
//! it, token for token (up to the near ties where ggml's batch shapes may pick the other
//! token); a session goes on from what a speculative turn left; sampling draws from the model's
//! own distribution at guessed positions.

mod common;

use std::sync::Arc;

use rocm_llama::{
    Context, Engine, EngineConfig, Event, GenerateOptions, LoadConfig, Model, SamplingParams, Session, Speculation,
    Summary,
};

/// A task that copies from its prompt: the paragraph again, as a base model continues it.
const COPY: &str = "Paragraph: The old lighthouse stood on the northern cliff, its white tower \
cracked by a hundred winters. Every evening the keeper climbed the narrow stairs to light the \
lamp, and every morning he wrote the weather in a blue book.\nThe same paragraph, copied \
exactly:\nParagraph: The old lighthouse stood on the northern cliff,";

fn run(ctx: &mut Context<'_>, prompt: &str, opts: &GenerateOptions) -> (Vec<i32>, Summary) {
    let mut ids = Vec::new();
    for e in ctx.generate(prompt, opts).unwrap() {
        match e.unwrap() {
            Event::Token { id, .. } => ids.push(id),
            Event::Done(s) => return (ids, s),
            Event::Text(_) => {}
        }
    }
    unreachable!("no summary")
}

#[test]
fn greedy_with_prompt_lookup_is_greedy_without() {
    let model = require_model!();
    let reference = common::greedy_reference(model, COPY, 48);
    let mut ctx = Context::new(model, &common::config().n_ctx(512)).unwrap();
    let (plain, s) = run(&mut ctx, COPY, &GenerateOptions::greedy(48));
    assert_eq!((s.draft_tokens, s.draft_tokens_accepted), (0, 0));
    common::assert_greedy_matches(&reference, &plain, "without speculation");
    for spec in [Speculation::ngram(), Speculation::Ngram { n_min: 1, n_max: 1, draft_max: 3, draft_min: 0 }] {
        let (ids, s) = run(&mut ctx, COPY, &GenerateOptions::greedy(48).speculation(spec.clone()));
        common::assert_greedy_matches(&reference, &ids, &format!("{spec:?}"));
        assert!(s.draft_tokens_accepted > 10, "{spec:?}: the copy was not guessed: {s:?}");
        assert!(s.draft_tokens_accepted <= s.draft_tokens);
        assert_eq!(s.generated_tokens, ids.len());
    }
    // Nothing to copy: the same text, few or no guesses.
    let prompt = "The weather today";
    let reference = common::greedy_reference(model, prompt, 24);
    let (ids, _) = run(&mut ctx, prompt, &GenerateOptions::greedy(24).speculation(Speculation::ngram()));
    common::assert_greedy_matches(&reference, &ids, "no copy");
    // Bad settings are refused before anything runs.
    let bad = Speculation::Ngram { n_min: 0, n_max: 2, draft_max: 4, draft_min: 0 };
    assert!(ctx.generate(COPY, &GenerateOptions::greedy(4).speculation(bad)).is_err());
}

/// A session's next turn starts from what a speculative turn left in the cache: guessed cells
/// that were not confirmed are gone, so the second turn equals a fresh context's.
#[test]
fn a_session_goes_on_after_a_speculative_turn() {
    let model = require_model!();
    let opts = GenerateOptions::greedy(24).speculation(Speculation::ngram());
    let mut session = Session::new(model, &common::config().n_ctx(512)).unwrap();
    let (first, _) = rocm_llama::generate::collect_events(session.generate(COPY, &opts).unwrap()).unwrap();
    let second_prompt = format!("{COPY}{first} Then again: The old lighthouse");
    let (second, s) = rocm_llama::generate::collect_events(session.generate(&second_prompt, &opts).unwrap()).unwrap();
    assert!(s.cached_prompt_tokens > 0, "{s:?}");
    let mut fresh = Context::new(model, &common::config().n_ctx(512)).unwrap();
    let (want, _) = rocm_llama::generate::collect_events(fresh.generate(&second_prompt, &opts).unwrap()).unwrap();
    assert_eq!(second, want);
}

/// With sampling, each token is drawn from the model's own distribution at its position, also
/// where the logits came from a guessed position of a decode: the third token at temperature 0.8 (after the commonest
/// first two, the second of them a confirmed guess) over 600 seeds fits the exact
/// softmax of the logits computed one token at a time (chi-square over the 4 most likely
/// tokens and the rest, 4 degrees of freedom; 18.5 is the 0.1% critical value). Fixed seeds,
/// so the outcome is fixed.
#[test]
fn sampling_at_guessed_positions_draws_from_the_models_distribution() {
    let model = require_model!();
    let vocab = model.vocab();
    let prompt = COPY;
    let temperature = 0.8;
    let params = |seed| SamplingParams::default().temperature(temperature).top_k(0).top_p(1.0).min_p(0.0).seed(seed);
    let mut session = Session::new(model, &common::config().n_ctx(256)).unwrap();
    // Each run: its three tokens and how many guessed tokens were confirmed.
    let runs = three_token_runs(&mut session, prompt, &params, &Speculation::ngram());
    // The commonest first two tokens of the runs that confirmed a guess; the third tokens
    // after them are the draws. The guess
    // after the first token is one token (the budget leaves room for one), the same in every
    // run with that first token: where the second token is that guess, the third was read at
    // the guessed position, and the run confirmed exactly one guessed token.
    // (Whether a run confirmed its guess depends on its first two tokens alone, so choosing
    // among the runs that did selects on those two, never on the third.)
    let mut pairs: Vec<(i32, i32)> = runs.iter().filter(|(_, a)| *a == 1).map(|(ids, _)| (ids[0], ids[1])).collect();
    pairs.sort_unstable();
    let (t0, t1) = pairs.chunk_by(|a, b| a == b).max_by_key(|c| c.len()).map(|c| c[0]).unwrap();
    let kept: Vec<&(Vec<i32>, usize)> = runs.iter().filter(|(ids, _)| ids[0] == t0 && ids[1] == t1).collect();
    assert!(kept.iter().all(|(_, accepted)| *accepted == 1), "the second token was not a confirmed guess");
    let thirds: Vec<i32> = kept.iter().map(|(ids, _)| ids[2]).collect();
    assert!(thirds.len() >= 200, "too few draws after the commonest start: {}", thirds.len());
    // The exact distribution after prompt + t0 t1, one token at a time.
    let mut tokens = vocab.tokenize(prompt, true, true).unwrap();
    tokens.extend([t0, t1]);
    let chi = chi_square(model, &tokens, temperature, &thirds);
    assert!(chi < 18.5, "chi-square {chi}");
}

/// 600 seeded generations of three tokens from `prompt` with `spec`: the runs that gave all
/// three, each with how many guessed tokens were confirmed.
fn three_token_runs(
    session: &mut Session<'_>,
    prompt: &str,
    params: &dyn Fn(u32) -> SamplingParams,
    spec: &Speculation,
) -> Vec<(Vec<i32>, usize)> {
    let mut runs = Vec::new();
    for seed in 0..600 {
        let opts = GenerateOptions::default().max_tokens(3).sampling(params(seed)).speculation(spec.clone());
        let mut ids = Vec::new();
        let mut accepted = 0;
        for e in session.generate(prompt, &opts).unwrap() {
            match e.unwrap() {
                Event::Token { id, .. } => ids.push(id),
                Event::Done(s) => accepted = s.draft_tokens_accepted,
                Event::Text(_) => {}
            }
        }
        if ids.len() == 3 {
            runs.push((ids, accepted));
        }
    }
    runs
}

/// Chi-square of `draws` against the exact softmax at `temperature` of the logits after
/// `tokens` (computed in one batch): the 4 most likely tokens and the rest, 4 degrees of
/// freedom.
fn chi_square(model: &Model, tokens: &[i32], temperature: f32, draws: &[i32]) -> f64 {
    let mut ctx = Context::new(model, &common::config().n_ctx(256)).unwrap();
    let mut batch = rocm_llama::Batch::new(256, 1).unwrap();
    batch.add_sequence(tokens, 0, 0, true).unwrap();
    ctx.decode(&batch).unwrap();
    let logits = ctx.logits(batch.len() as i32 - 1).unwrap();
    let max = logits.iter().copied().fold(f32::MIN, f32::max);
    let z: f64 = logits.iter().map(|&l| (((l - max) / temperature) as f64).exp()).sum();
    let mut p: Vec<(i32, f64)> =
        logits.iter().enumerate().map(|(i, &l)| (i as i32, (((l - max) / temperature) as f64).exp() / z)).collect();
    p.sort_by(|a, b| b.1.total_cmp(&a.1));
    let top = &p[..4];
    let n = draws.len() as f64;
    let mut chi = 0.0;
    let (mut rest_seen, mut rest_p) = (draws.len(), 1.0);
    for &(t, prob) in top {
        let seen = draws.iter().filter(|&&x| x == t).count();
        rest_seen -= seen;
        rest_p -= prob;
        chi += (seen as f64 - n * prob).powi(2) / (n * prob);
    }
    chi += (rest_seen as f64 - n * rest_p).powi(2) / (n * rest_p).max(1e-9);
    eprintln!("{} draws, top-4 p {:?}, chi-square {chi:.2}", draws.len(), top);
    chi
}

/// Sampling where the model's distribution is spread, through a draft model (the test model
/// drafting for itself, so its one-token guess after the first token is the likeliest second
/// token): "The quick brown fox jumps over the lazy" continues with " dog" (p 0.86), then "."
/// (0.37) among many, then a spread third token (0.34 at most). At temperature 1 over 600
/// seeds, the second tokens after " dog" (read from the first row of a decode that carries a
/// guess) and the third tokens after " dog." (read from the guessed position's row; the guess
/// was "." there) each fit the exact softmax (chi-square, 4 degrees of freedom, 18.5 is the
/// 0.1% critical value). Fixed seeds, so the outcome is fixed.
#[test]
fn sampling_with_a_draft_model_draws_from_the_targets_distribution() {
    use rocm_llama::DraftModel;
    let Some(target) = engine_model() else { return };
    let draft = DraftModel::new(&target, engine_model().unwrap()).unwrap();
    let vocab = target.vocab();
    let prompt = "The quick brown fox jumps over the lazy";
    let params = |seed| SamplingParams::default().temperature(1.0).top_k(0).top_p(1.0).min_p(0.0).seed(seed);
    let spec = Speculation::Draft { draft, draft_max: 4, draft_min: 0, p_min: 0.0 };
    let mut session = Session::new(&target, &common::config().n_ctx(256)).unwrap();
    let runs = three_token_runs(&mut session, prompt, &params, &spec);
    let dog = vocab.tokenize(" dog", false, false).unwrap()[0];
    let dot = vocab.tokenize(".", false, false).unwrap()[0];
    let seconds: Vec<i32> = runs.iter().filter(|(ids, _)| ids[0] == dog).map(|(ids, _)| ids[1]).collect();
    let thirds: Vec<(i32, usize)> =
        runs.iter().filter(|(ids, _)| ids[0] == dog && ids[1] == dot).map(|(ids, a)| (ids[2], *a)).collect();
    assert!(seconds.len() >= 400 && thirds.len() >= 120, "{} and {} draws", seconds.len(), thirds.len());
    // The guess after " dog" was "." (the draft's likeliest), so these thirds were read at the
    // guessed position: each run confirmed exactly that one guessed token.
    assert!(thirds.iter().all(|&(_, a)| a == 1), "the second token was not a confirmed guess");
    let mut tokens = vocab.tokenize(prompt, true, true).unwrap();
    tokens.push(dog);
    let chi = chi_square(&target, &tokens, 1.0, &seconds);
    assert!(chi < 18.5, "second tokens: chi-square {chi}");
    tokens.push(dot);
    let thirds: Vec<i32> = thirds.iter().map(|&(t, _)| t).collect();
    let chi = chi_square(&target, &tokens, 1.0, &thirds);
    assert!(chi < 18.5, "third tokens: chi-square {chi}");
}

/// The test model for an engine (the engines here take an `Arc`), loaded without CPU
/// repacking as a reproducible engine wants (see the README's section on determinism).
fn engine_model() -> Option<Arc<Model>> {
    let path = common::model_path()?;
    Some(Arc::new(Model::load(&path, &LoadConfig::default().cpu_repack(false)).unwrap()))
}

/// The engine speculates per slot: three requests with prompt lookup beside one without, all
/// at once, each get the greedy text (near ties aside), the copying ones confirm most of their
/// guesses, the engine's counters hold the requests' counts, and a slot's next request starts
/// from what a speculative request left (wrong guesses removed): its text is a fresh
/// context's.
#[test]
fn an_engine_speculates_per_slot_and_gives_the_greedy_text() {
    let Some(model) = engine_model() else { return };
    let config = EngineConfig::default().n_seq_max(4).n_ctx_per_seq(512).threads(Some(2)).prefix_sharing(false);
    let engine = Engine::start(model.clone(), config).unwrap();
    let other = "The weather today";
    let copy_reference = common::greedy_reference(&model, COPY, 40);
    let other_reference = common::greedy_reference(&model, other, 24);
    let results: Vec<(usize, Vec<i32>, Summary)> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..4)
            .map(|k| {
                let engine = engine.clone();
                s.spawn(move || {
                    let (prompt, options) = match k {
                        3 => (other, GenerateOptions::greedy(24)),
                        _ => (COPY, GenerateOptions::greedy(40).speculation(Speculation::ngram())),
                    };
                    let (ids, summary) = common::tokens_of(engine.generate(prompt, &options).unwrap());
                    (k, ids, summary)
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let (mut drafted, mut accepted) = (0, 0);
    for (k, ids, s) in &results {
        if *k == 3 {
            common::assert_greedy_matches(&other_reference, ids, "beside the speculating requests");
            assert_eq!((s.draft_tokens, s.draft_tokens_accepted), (0, 0));
        } else {
            common::assert_greedy_matches(&copy_reference, ids, &format!("speculating request {k}"));
            assert!(s.draft_tokens_accepted > 10, "request {k} confirmed few guesses: {s:?}");
            assert!(s.draft_tokens_accepted <= s.draft_tokens);
            assert_eq!(s.generated_tokens, ids.len());
        }
        drafted += s.draft_tokens as u64;
        accepted += s.draft_tokens_accepted as u64;
    }
    let stats = engine.stats();
    assert_eq!((stats.draft_tokens, stats.draft_tokens_accepted), (drafted, accepted));
    assert_eq!(stats.generated_tokens, results.iter().map(|r| r.1.len() as u64).sum::<u64>());
    // The next request on a slot reuses what a speculative one left.
    let (_, ids, _) = &results[0];
    let text = model.vocab().detokenize(ids, false, false).unwrap();
    let next = format!("{COPY}{text} Then again: The old lighthouse");
    let next_reference = common::greedy_reference(&model, &next, 16);
    let before = engine.stats().prompt_tokens_cached;
    let (got, _) = common::tokens_of(engine.generate(&next, &GenerateOptions::greedy(16)).unwrap());
    assert!(engine.stats().prompt_tokens_cached > before, "nothing was reused");
    common::assert_greedy_matches(&next_reference, &got, "after a speculative request");
}

/// A reproducible engine keeps its promise with speculation: a request with prompt lookup
/// (greedy, or sampled with a seed) gets exactly the tokens it got alone, whatever runs beside
/// it, since each sequence decodes alone and its guesses depend on its own tokens only.
#[test]
fn a_reproducible_engine_speculates_reproducibly() {
    let Some(model) = engine_model() else { return };
    let config = EngineConfig::default().n_seq_max(4).n_ctx_per_seq(512).threads(Some(2)).reproducible(true);
    let engine = Engine::start(model.clone(), config).unwrap();
    let options = |k: usize| {
        let o = GenerateOptions::greedy(32).speculation(Speculation::ngram());
        match k {
            0 => o,
            1 => o.sampling(SamplingParams::default().temperature(0.7).seed(5)),
            _ => GenerateOptions::greedy(32),
        }
    };
    let alone: Vec<(Vec<i32>, Summary)> =
        (0..3).map(|k| common::tokens_of(engine.generate(COPY, &options(k)).unwrap())).collect();
    assert!(alone[0].1.draft_tokens_accepted > 10, "{:?}", alone[0].1);
    assert!(alone[1].1.draft_tokens > 0, "{:?}", alone[1].1);
    let together: Vec<(usize, Vec<i32>)> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..6)
            .map(|t| {
                let (engine, options) = (engine.clone(), &options);
                s.spawn(move || (t % 3, common::tokens_of(engine.generate(COPY, &options(t % 3)).unwrap()).0))
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    for (k, ids) in together {
        assert_eq!(ids, alone[k].0, "request {k} beside others");
    }
}

/// The test model drafting for itself (a second load of the same file): the machinery of a
/// draft model, whose guesses the target nearly always confirms. Greedy text is the greedy
/// reference (near ties aside), in a context and in an engine beside another request; a draft
/// of another vocabulary, another engine's draft, and a reproducible engine with a draft are
/// refused with their reasons.
#[test]
fn a_draft_model_guesses_and_the_target_decides() {
    use rocm_llama::{DraftModel, Error};
    let Some(target) = engine_model() else { return };
    let draft_model = engine_model().unwrap();
    let draft = DraftModel::new(&target, draft_model.clone()).unwrap();
    let prompt = "The capital of France is";
    let reference = common::greedy_reference(&target, prompt, 32);
    let mut ctx = Context::new(&target, &common::config().n_ctx(512)).unwrap();
    // Every guess drafted in full (p_min 0): the target confirms nearly all of them.
    let spec = Speculation::Draft { draft: draft.clone(), draft_max: 6, draft_min: 0, p_min: 0.0 };
    let (ids, s) = run(&mut ctx, prompt, &GenerateOptions::greedy(32).speculation(spec.clone()));
    common::assert_greedy_matches(&reference, &ids, "with a draft model");
    assert!(s.draft_tokens_accepted > 20, "{s:?}");
    assert!(s.draft_tokens_accepted <= s.draft_tokens);
    // In an engine that drafts with it, beside a request without speculation.
    let config = EngineConfig::default().n_seq_max(2).n_ctx_per_seq(512).threads(Some(2)).draft(Some(draft.clone()));
    let engine = Engine::start(target.clone(), config.clone()).unwrap();
    let other = "The weather today";
    let other_reference = common::greedy_reference(&target, other, 16);
    let (a, b) = std::thread::scope(|s| {
        let e = engine.clone();
        let spec = spec.clone();
        let a = s.spawn(move || {
            common::tokens_of(e.generate(prompt, &GenerateOptions::greedy(32).speculation(spec)).unwrap())
        });
        let e = engine.clone();
        let b = s.spawn(move || common::tokens_of(e.generate(other, &GenerateOptions::greedy(16)).unwrap()));
        (a.join().unwrap(), b.join().unwrap())
    });
    common::assert_greedy_matches(&reference, &a.0, "engine, with the draft");
    assert!(a.1.draft_tokens_accepted > 10, "{:?}", a.1);
    common::assert_greedy_matches(&other_reference, &b.0, "engine, beside the drafting request");
    assert!(engine.stats().draft_tokens_accepted > 10);
    // Another draft (a third load) is not the engine's.
    let third = DraftModel::new(&target, engine_model().unwrap()).unwrap();
    let refused = engine.generate(prompt, &GenerateOptions::greedy(4).speculation(Speculation::draft_model(third)));
    assert!(matches!(refused, Err(Error::Unsupported(_))), "{:?}", refused.err());
    assert!(Engine::start(target.clone(), config.reproducible(true)).is_err());
    // A draft of another vocabulary.
    let tiny = Arc::new(Model::load(rocm_llama::synth::tiny_model().unwrap(), &LoadConfig::default()).unwrap());
    let err = DraftModel::new(&target, tiny).unwrap_err().to_string();
    assert!(err.contains("vocabulary") || err.contains("token"), "{err}");
    // Bad settings.
    let bad = Speculation::Draft { draft, draft_max: 4, draft_min: 0, p_min: 1.5 };
    assert!(ctx.generate(prompt, &GenerateOptions::greedy(4).speculation(bad)).is_err());
}
