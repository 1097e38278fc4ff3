//! Embeddings, reranking and classification on the real test model (and the tiny synthetic
//! reranker): packed against alone, against llama.cpp's own llama-embedding tool, shared
//! prefixes against separate prompts, and bad input.

mod common;

use rocm_llama::embed::cosine;
use rocm_llama::{Classifier, ClassifyConfig, EmbedConfig, Embedder, Error, LoadConfig, Model, Pooling};

const TEXTS: [&str; 6] = [
    "The cat sat on the mat.",
    "Rust is a systems programming language focused on safety.",
    "Paris is the capital of France.",
    "hi",
    "A much longer text about GPUs: the RX 7900 XTX has 24 GB of memory and 96 compute units, \
     and it runs large language models through HIP.",
    "Ein deutscher Satz, damit nicht alles Englisch ist.",
];

fn embed_config(pooling: Pooling) -> EmbedConfig {
    EmbedConfig::default().pooling(pooling).threads(1).n_batch(512)
}

#[test]
fn a_text_gets_the_same_vector_alone_and_packed_with_others() {
    let model = require_model!();
    for pooling in [Pooling::Mean, Pooling::Last, Pooling::Cls] {
        let mut embedder = Embedder::new(model, &embed_config(pooling)).unwrap();
        assert_eq!(embedder.pooling(), pooling);
        let packed = embedder.embed(&TEXTS).unwrap();
        assert_eq!(packed.len(), TEXTS.len());
        for (text, v) in TEXTS.iter().zip(&packed) {
            assert_eq!(v.len(), embedder.dimension());
            let norm: f64 = v.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
            assert!((norm - 1.0).abs() < 1e-4, "normalised: {norm}");
            let alone = embedder.embed(&[text]).unwrap();
            // The same weights and tokens; only the batch shape differs, and with it the CPU
            // kernels' rounding: llama.cpp's own llama-embedding gives a text alone and packed
            // with these others vectors that agree to 0.9982..0.9999 (measured 2026-11-29, see
            // the test against it), so the same bound holds here.
            let c = cosine(v, &alone[0]);
            assert!(c > 0.998, "{pooling}: {text:?}: cosine {c} alone against packed");
        }
        // And across decodes: a small n_seq_max splits the same texts into several.
        let mut small = Embedder::new(model, &embed_config(pooling).n_seq_max(2)).unwrap();
        let split = small.embed(&TEXTS).unwrap();
        for (a, b) in packed.iter().zip(&split) {
            assert!(cosine(a, b) > 0.998);
        }
    }
}

/// llama.cpp's `llama-embedding` on `texts` (one decode for all of them).
fn llama_embedding(texts: &[&str], pooling: Pooling) -> Vec<Vec<f32>> {
    let out = std::process::Command::new(common::llama_embedding_tool())
        .arg("-m")
        .arg(common::model_path().unwrap())
        .args(["--pooling", pooling.name(), "--embd-normalize", "2", "--embd-output-format", "json"])
        .args(["-t", "1", "-c", "512", "-b", "512", "-ub", "512"])
        .args(["-p", &texts.join("\n")])
        .output()
        .expect("llama-embedding runs");
    assert!(out.status.success(), "llama-embedding failed: {}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("llama-embedding prints JSON");
    let data = json["data"].as_array().unwrap();
    assert_eq!(data.len(), texts.len());
    data.iter()
        .map(|d| d["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect())
        .collect()
}

#[test]
fn vectors_agree_with_llama_cpps_own_embedding_tool() {
    let model = require_model!();
    for pooling in [Pooling::Mean, Pooling::Last] {
        let mut embedder = Embedder::new(model, &embed_config(pooling)).unwrap();
        let theirs_packed = llama_embedding(&TEXTS, pooling);
        let ours_packed = embedder.embed(&TEXTS).unwrap();
        for (i, text) in TEXTS.iter().enumerate() {
            let theirs_alone = &llama_embedding(&[text], pooling)[0];
            let ours_alone = &embedder.embed(&[text]).unwrap()[0];
            let packed = cosine(&ours_packed[i], &theirs_packed[i]);
            let alone = cosine(ours_alone, theirs_alone);
            // llama.cpp's own floor: the same text alone and packed with the others.
            let floor = cosine(theirs_alone, &theirs_packed[i]);
            eprintln!(
                "{pooling} {i}: ours/theirs packed {packed:.6}, alone {alone:.6}; theirs alone/packed {floor:.6}"
            );
            // Measured on the 2-core CI machine (2026-11-29): mean pooling agrees to 0.9997 or
            // better. One row (last pooling) is more sensitive to the kernels' batch-shape
            // rounding: llama.cpp's own vector of a text alone and packed with the others
            // agree only to 0.9982..0.9994 there, and ours and llama.cpp's to 0.9985..1.
            // With a GPU, ours run on it and the tool on the CPU: on an H100 through Vulkan
            // (2026-12-06) mean pooling agreed to 0.9978 for "hi" (llama.cpp's own floor on
            // the CPU there: 0.9986); last pooling was not reached. A wrong pooling or a
            // missing normalisation is far below either bound.
            let min = match (rocm_llama::available(), pooling) {
                (true, _) => 0.995,
                (false, Pooling::Mean) => 0.999,
                (false, _) => 0.998,
            };
            assert!(packed >= min && alone >= min, "{pooling}: {text:?}: {packed} packed, {alone} alone");
        }
    }
}

#[test]
fn token_rows_without_pooling() {
    let model = require_model!();
    let mut rows = Embedder::new(model, &embed_config(Pooling::None).normalize(false)).unwrap();
    let all = rows.token_embeddings(&TEXTS[..3]).unwrap();
    let mut last = Embedder::new(model, &embed_config(Pooling::Last).normalize(false)).unwrap();
    let pooled = last.embed(&TEXTS[..3]).unwrap();
    for ((text, r), p) in TEXTS.iter().zip(&all).zip(&pooled) {
        assert_eq!(r.len(), rows.tokenize(text).unwrap().len());
        // The last token's row is what last pooling returns.
        assert!(cosine(r.last().unwrap(), p) > 0.998);
    }
    assert!(matches!(rows.embed(&["x"]), Err(Error::Embedding { .. })));
    assert!(matches!(last.token_embeddings(&["x"]), Err(Error::Embedding { .. })));
}

#[test]
fn bad_embedding_input_is_a_clear_error() {
    let model = require_model!();
    // Gemma 3 declares no pooling: asking for pooled vectors from the model's own is an error.
    let mut own = Embedder::new(model, &EmbedConfig::default().threads(1)).unwrap();
    assert_eq!(own.pooling(), Pooling::None);
    let e = own.embed(&["hello"]).unwrap_err().to_string();
    assert!(e.contains("declares no pooling"), "{e}");
    // Rank pooling without a classifier head.
    let e = Embedder::new(model, &embed_config(Pooling::Rank)).err().unwrap().to_string();
    assert!(e.contains("classifier head"), "{e}");
    let mut mean = Embedder::new(model, &embed_config(Pooling::Mean).n_batch(64)).unwrap();
    let e = mean.embed(&["fine", ""]).unwrap_err().to_string();
    assert!(e.contains("text 1") && e.contains("empty"), "{e}");
    let long = "word ".repeat(200);
    let e = mean.embed(&[long.as_str()]).unwrap_err().to_string();
    assert!(e.contains("longer than n_batch"), "{e}");
    let mut cut = Embedder::new(model, &embed_config(Pooling::Mean).n_batch(64).truncate(true)).unwrap();
    assert_eq!(cut.embed(&[long.as_str()]).unwrap().len(), 1);
    // Token ids outside the vocabulary never reach llama.cpp.
    assert!(matches!(mean.embed_tokens(&[vec![1, 99_999_999]], &mut |_, _| {}), Err(Error::InvalidToken { .. })));
    // Nothing is left behind by a failed call: the next one works.
    assert_eq!(mean.embed(&["again"]).unwrap().len(), 1);
}

#[test]
fn rerank_scores_come_back_in_document_order() {
    let path = rocm_llama::synth::tiny_reranker().unwrap();
    let model = Model::load(path, &LoadConfig::default()).unwrap();
    let mut ranker = Embedder::new(&model, &EmbedConfig::default().threads(1)).unwrap();
    assert_eq!(ranker.pooling(), Pooling::Rank);
    assert_eq!(ranker.dimension(), 2);
    let docs = ["t5 t6 t7", "t100 t200", "t9", "t42 t43 t44 t45 t46"];
    let scores = ranker.rerank("t1 t2 t3", &docs).unwrap();
    assert_eq!(scores.len(), docs.len());
    for (doc, &s) in docs.iter().zip(&scores) {
        // Qwen3's rank head ends in a softmax: each score is a probability.
        assert!((0.0..=1.0).contains(&s), "{s}");
        // Packed with the others or alone, the same score: within 1e-4 on the CPU, 1e-3 on a
        // GPU, whose kernels differ by batch shape (2e-4 seen through Vulkan on an H100).
        // Documents leaking into each other move scores far more.
        let alone = ranker.rerank("t1 t2 t3", &[doc]).unwrap()[0];
        let tolerance = if rocm_llama::available() { 1e-3 } else { 1e-4 };
        assert!((alone - s).abs() < tolerance, "{doc}: {alone} alone against {s} packed");
    }
    assert!(matches!(ranker.rerank("", &docs), Err(Error::Embedding { .. })));
    assert!(matches!(ranker.rerank("q", &["ok", ""]), Err(Error::Embedding { text: Some(1), .. })));
    let model_mean = require_model!();
    let mut mean = Embedder::new(model_mean, &embed_config(Pooling::Mean)).unwrap();
    assert!(mean.rerank("q", &["d"]).unwrap_err().to_string().contains("rank pooling"));
}

const REVIEWS: [&str; 5] = [
    "I loved this film, the acting was wonderful.",
    "Terrible service, cold food, never again.",
    "The product arrived on time and works as described.",
    "What a waste of money.",
    "An absolute delight from start to finish!",
];

#[test]
fn shared_prefix_classification_scores_what_separate_prompts_score() {
    let model = require_model!();
    let config = ClassifyConfig::default()
        .template("Review: {text}\nIs this review positive or negative? Answer:")
        .threads(1)
        .n_batch(512);
    // Multi-token labels too, so branches decode their own tokens beside the shared prompt.
    let labels = ["positive", "negative", "mixed feelings", "not a review at all"];
    let mut classifier = Classifier::new(model, &labels, &config).unwrap();
    assert!(classifier.label_tokens().iter().any(|t| t.len() > 1));
    let shared = classifier.classify(&REVIEWS).unwrap();
    // llama.cpp's CPU kernels round differently by a row's place in the batch: the same text
    // scored three times in one batch of separate prompts gives log-probabilities that spread
    // by up to ~0.35 nats (0.17-0.23 for the likely labels; measured 2026-11-29 on the 2-core
    // CI machine). Shared and separate scoring place the same tokens differently, so they
    // differ by that much too; a real fault (a wrong position, a label row read from the wrong
    // sequence) moves log-probabilities by nats.
    let thrice = classifier.classify_separately(&[REVIEWS[2], REVIEWS[2], REVIEWS[2]]).unwrap();
    let spread = (0..labels.len())
        .map(|j| {
            let v: Vec<f64> = thrice.iter().map(|c| c.logprobs[j]).collect();
            v.iter().copied().fold(f64::MIN, f64::max) - v.iter().copied().fold(f64::MAX, f64::min)
        })
        .fold(0.0, f64::max);
    eprintln!("the same text thrice in one batch: log-probabilities spread by {spread:.3} nats");
    assert!(spread < 1.0, "{spread}");
    let separate = classifier.classify_separately(&REVIEWS).unwrap();
    for ((text, a), b) in REVIEWS.iter().zip(&shared).zip(&separate) {
        assert!((a.probs.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        for ((x, y), (p, q)) in a.logprobs.iter().zip(&b.logprobs).zip(a.probs.iter().zip(&b.probs)) {
            assert!((x - y).abs() < 1.0, "{text:?}: log-probability {x} shared against {y} separate");
            assert!((p - q).abs() < 0.06, "{text:?}: probability {p} shared against {q} separate");
        }
        let mut sorted = b.probs.clone();
        sorted.sort_by(|x, y| y.total_cmp(x));
        if sorted[0] - sorted[1] > 0.1 {
            assert_eq!(a.label, b.label, "{text:?}: {:?} against {:?}", a.probs, b.probs);
        }
    }
    // Deterministic: the same call gives the same numbers.
    assert_eq!(classifier.classify(&REVIEWS).unwrap(), shared);
    // Packing several texts per decode or one per decode changes nothing beyond rounding.
    let mut one_by_one = Classifier::new(model, &labels, &config.clone().n_seq_max(4)).unwrap();
    for (a, b) in one_by_one.classify(&REVIEWS).unwrap().iter().zip(&shared) {
        for (p, q) in a.probs.iter().zip(&b.probs) {
            assert!((p - q).abs() < 0.06, "{p} one text per decode against {q} packed");
        }
    }
    // The instruction-tuned model gets the obvious ones right through its chat template.
    let mut chat = Classifier::new(
        model,
        &["positive", "negative"],
        &config.clone().chat(true).template("Is this review positive or negative? Answer with one word.\n\n{text}"),
    )
    .unwrap();
    let r = chat.classify(&[REVIEWS[0], REVIEWS[1]]).unwrap();
    assert_eq!((r[0].label, r[1].label), (0, 1), "{r:?}");
}

/// An instruction before `{text}` (the batch classification this project began with) is
/// computed once per call, not once per text: llama.cpp's prompt-token counter says so, and
/// the scores are those of separate full prompts (within the rounding of batch shapes, see
/// the test above).
#[test]
fn a_shared_instruction_is_computed_once_for_all_texts() {
    let model = require_model!();
    let template = "You label customer reviews for a shop. Read the review below and decide whether the \
                    customer was pleased with what they bought. Reply with one word only.\nReview: {text}\nAnswer:";
    let config = ClassifyConfig::default().template(template).threads(1).n_batch(512).n_seq_max(9);
    let labels = ["positive", "negative"];
    let mut classifier = Classifier::new(model, &labels, &config).unwrap();
    let prompts: Vec<Vec<i32>> = REVIEWS.iter().map(|r| classifier.prompt_tokens(r).unwrap()).collect();
    let shared =
        prompts[1..].iter().map(|p| prompts[0].iter().zip(p).take_while(|(a, b)| a == b).count()).min().unwrap();
    assert!(shared >= 30, "{shared}");
    let extra: usize = classifier.label_tokens().iter().map(|l| l.len() - 1).sum();
    let once = classifier.classify(&REVIEWS).unwrap();
    // A second call computes the instruction again (nothing is kept between calls) and gives
    // the same numbers. Counted over it (llama.cpp reports a count of 0 as 1).
    let before = classifier.context().perf().n_p_eval;
    assert_eq!(classifier.classify(&REVIEWS).unwrap(), once);
    let computed = (classifier.context().perf().n_p_eval - before) as usize;
    let own: usize = prompts.iter().map(|p| p.len() - shared + extra).sum();
    assert_eq!(computed, shared + own, "the instruction ({shared} tokens) once, then each text's own part");
    let separate = classifier.classify_separately(&REVIEWS).unwrap();
    for ((text, a), b) in REVIEWS.iter().zip(&once).zip(&separate) {
        for (p, q) in a.probs.iter().zip(&b.probs) {
            assert!((p - q).abs() < 0.06, "{text:?}: probability {p} with the shared instruction against {q}");
        }
    }
}

#[test]
fn bad_classification_input_is_a_clear_error() {
    let model = require_model!();
    let config = ClassifyConfig::default().threads(1).n_batch(128).n_seq_max(64);
    let err =
        |labels: &[&str], config: &ClassifyConfig| Classifier::new(model, labels, config).err().unwrap().to_string();
    assert!(err(&[], &config).contains("no labels"));
    assert!(err(&["a", " "], &config).contains("label 1 is empty"));
    assert!(err(&["yes", "no", "yes"], &config).contains("twice"));
    assert!(err(&["a", "b"], &config.clone().template("no placeholder")).contains("{text}"));
    assert!(err(&["a", "b", "c"], &config.clone().n_seq_max(2)).contains("n_seq_max"));
    let mut c = Classifier::new(model, &["yes", "no"], &config).unwrap();
    assert!(c.classify(&["fine", ""]).unwrap_err().to_string().contains("text 1"));
    // Which text and which setting, as fields a program can read.
    assert!(matches!(c.classify(&["fine", ""]), Err(Error::Embedding { text: Some(1), .. })));
    let dup = Classifier::new(model, &["yes", "yes"], &config).err().unwrap();
    assert!(matches!(dup, Error::InvalidArgument { what: "labels", .. }), "{dup}");
    let long = "word ".repeat(300);
    assert!(c.classify(&[long.as_str()]).unwrap_err().to_string().contains("n_batch"));
    assert_eq!(c.classify(&["still works"]).unwrap().len(), 1);
}

#[test]
fn embeddings_through_the_engine_share_the_model_with_generation() {
    use rocm_llama::{Engine, EngineConfig, GenerateOptions};
    let model = require_model!();
    let path = common::model_path().unwrap();
    let shared = std::sync::Arc::new(Model::load(&path, &LoadConfig::default()).unwrap());
    let engine =
        Engine::start(shared.clone(), EngineConfig::default().n_seq_max(2).n_ctx_per_seq(512).threads(1)).unwrap();
    // A generation in flight while embeddings are asked for.
    let stream = engine.generate("Once upon a time", &GenerateOptions::greedy(24)).unwrap();
    let config = EmbedConfig::default().pooling(Pooling::Mean);
    let through_engine = engine.embed(&TEXTS, &config).unwrap();
    let (text, summary) = stream.collect_text().unwrap();
    assert!(!text.is_empty() && summary.generated_tokens > 0);
    let mut direct = Embedder::new(model, &embed_config(Pooling::Mean)).unwrap();
    for (a, b) in through_engine.iter().zip(direct.embed(&TEXTS).unwrap()) {
        assert!(cosine(a, &b) > 0.998);
    }
    assert_eq!(engine.stats().texts_embedded, TEXTS.len() as u64);
    // Bad requests fail alone; the engine keeps serving both kinds.
    assert!(engine.embed(&["ok", ""], &config).unwrap_err().to_string().contains("text 1"));
    let e = engine.embed(&["x"], &EmbedConfig::default()).unwrap_err().to_string();
    assert!(e.contains("declares no pooling"), "{e}");
    assert_eq!(engine.embed(&["again"], &config.clone().pooling(Pooling::Last)).unwrap().len(), 1);
    let (_, summary) = engine.generate("And then", &GenerateOptions::greedy(4)).unwrap().collect_text().unwrap();
    assert!(summary.generated_tokens > 0);
    engine.shutdown();
    assert!(matches!(engine.embed(&["late"], &config), Err(Error::Cancelled)));
}
