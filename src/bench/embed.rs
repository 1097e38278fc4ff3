//! `rocm-llama bench-embed`: embeddings through [`Embedder`] against a raw-FFI loop that
//! packs the same texts the same way, and shared-prefix classification against the naive way
//! (each label its own full prompt), in one run on one model.

use std::time::Instant;

use llama_cpp_sys_2 as sys;

use crate::classify::{Classifier, ClassifyConfig};
use crate::context::{Context, ContextConfig, FlashAttention};
use crate::embed::{EmbedConfig, Embedder, Pooling};
use crate::error::{Error, Result};
use crate::model::Model;

/// What to measure.
///
/// ```
/// use rocm_llama::bench::embed::EmbedBenchConfig;
///
/// let config = EmbedBenchConfig::default().batches(vec![1, 64]).classify_texts(0);
/// assert_eq!(config.text_tokens, 32);
/// ```
#[derive(Debug, Clone, serde::Serialize)]
#[non_exhaustive]
pub struct EmbedBenchConfig {
    /// Texts per decode to measure (each its own run).
    pub batches: Vec<usize>,
    /// Texts embedded per run (at least each batch size).
    pub texts: usize,
    /// Tokens per text.
    pub text_tokens: usize,
    /// Pooling for the embedding runs (mean when the model declares none).
    pub pooling: Pooling,
    /// Texts to classify (0 skips classification).
    pub classify_texts: usize,
    /// Labels per text in the classification run.
    pub labels: usize,
    /// Threads (default: the cores this process may use).
    pub threads: Option<u32>,
    /// Flash attention.
    pub flash_attention: FlashAttention,
}

impl Default for EmbedBenchConfig {
    fn default() -> Self {
        EmbedBenchConfig {
            batches: vec![1, 8, 64, 256],
            texts: 256,
            text_tokens: 32,
            pooling: Pooling::Mean,
            classify_texts: 1000,
            labels: 4,
            threads: None,
            flash_attention: FlashAttention::Auto,
        }
    }
}

crate::config::setters!(EmbedBenchConfig {
    batches: Vec<usize>,
    texts: usize,
    text_tokens: usize,
    pooling: Pooling,
    classify_texts: usize,
    labels: usize,
    flash_attention: FlashAttention,
} optional {
    threads: u32,
});

/// One batch size.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EmbedRow {
    /// Texts per decode.
    pub batch: usize,
    /// Texts embedded.
    pub texts: usize,
    /// Through [`Embedder`], texts per second.
    pub texts_per_s: f64,
    /// The raw-FFI loop, texts per second.
    pub raw_texts_per_s: f64,
    /// Library / raw.
    pub ratio: f64,
}

/// The classification run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ClassifyRow {
    /// Texts classified.
    pub texts: usize,
    /// Labels per text.
    pub labels: usize,
    /// Prompt tokens per text (mean).
    pub prompt_tokens: f64,
    /// Shared prefix ([`Classifier::classify`]), texts per second.
    pub shared_texts_per_s: f64,
    /// Each label its own prompt ([`Classifier::classify_separately`]), texts per second.
    pub naive_texts_per_s: f64,
    /// Shared / naive.
    pub speedup: f64,
    /// Texts whose winning label is the same both ways.
    pub same_label: usize,
}

/// Everything one run measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EmbedBenchReport {
    /// Model description.
    pub model: String,
    /// The settings.
    pub config: EmbedBenchConfig,
    /// One row per batch size.
    pub embeddings: Vec<EmbedRow>,
    /// Classification, when asked.
    pub classification: Option<ClassifyRow>,
}

impl EmbedBenchReport {
    /// A plain-text table.
    pub fn table(&self) -> String {
        let mut s = format!("model: {}\n\n", self.model);
        if !self.embeddings.is_empty() {
            s.push_str(&format!(
                "embeddings ({} texts of {} tokens, pooling {})\n{:>6} {:>12} {:>12} {:>7}\n",
                self.config.texts,
                self.config.text_tokens,
                self.config.pooling,
                "batch",
                "texts/s",
                "raw texts/s",
                "ratio"
            ));
            for r in &self.embeddings {
                s.push_str(&format!(
                    "{:>6} {:>12.1} {:>12.1} {:>6.1}%\n",
                    r.batch,
                    r.texts_per_s,
                    r.raw_texts_per_s,
                    r.ratio * 100.0
                ));
            }
        }
        if let Some(c) = &self.classification {
            s.push_str(&format!(
                "\nclassification: {} texts x {} labels, {:.1} prompt tokens each\n  shared prefix {:.1} texts/s, \
                 each label its own prompt {:.1} texts/s: {:.2}x; same winner for {} of {}\n",
                c.texts,
                c.labels,
                c.prompt_tokens,
                c.shared_texts_per_s,
                c.naive_texts_per_s,
                c.speedup,
                c.same_label,
                c.texts
            ));
        }
        s
    }
}

/// Runs the embedding and classification benchmarks; `progress` hears each step.
pub fn run(model: &Model, cfg: &EmbedBenchConfig, progress: &dyn Fn(&str)) -> Result<EmbedBenchReport> {
    if cfg.text_tokens == 0 {
        return Err(Error::invalid("text_tokens", "must be at least 1"));
    }
    let mut embeddings = Vec::new();
    for &batch in &cfg.batches {
        if batch == 0 || batch > 256 {
            return Err(Error::invalid("batch", format!("batch {batch} must be 1..=256 texts")));
        }
        let n = cfg.texts.max(batch);
        let texts: Vec<Vec<i32>> = (0..n).map(|i| super::tokens(model, cfg.text_tokens, i + 101)).collect();
        let n_batch = (batch * cfg.text_tokens) as u32;
        let config = EmbedConfig::default()
            .pooling(cfg.pooling)
            .n_batch(n_batch.max(cfg.text_tokens as u32))
            .n_seq_max(batch as u32)
            .flash_attention(cfg.flash_attention)
            .threads(cfg.threads);
        progress(&format!("embeddings, {batch} texts per decode"));
        let mut embedder = Embedder::new(model, &config)?;
        // One warm-up decode each, then the timed pass.
        embedder.embed_tokens(&texts[..batch], &mut |_, _| {})?;
        let t = Instant::now();
        let ours = embedder.embed_tokens(&texts, &mut |_, _| {})?;
        let lib = t.elapsed().as_secs_f64();
        drop(embedder);
        let (raw, theirs) = raw_embeddings(model, &config, &texts, batch)?;
        // The two loops must compute the same thing for the comparison to mean anything.
        if let Some(c) = ours.iter().zip(&theirs).map(|(a, b)| crate::embed::cosine(a, b)).reduce(f64::min) {
            if c < 0.99 {
                return Err(Error::Internal(format!("the raw loop's vectors differ from the library's (cosine {c})")));
            }
        }
        embeddings.push(EmbedRow {
            batch,
            texts: n,
            texts_per_s: n as f64 / lib,
            raw_texts_per_s: n as f64 / raw,
            ratio: raw / lib,
        });
    }
    let classification = if cfg.classify_texts > 0 { Some(classification(model, cfg, progress)?) } else { None };
    Ok(EmbedBenchReport { model: model.description(), config: cfg.clone(), embeddings, classification })
}

/// The same packing through plain llama.cpp calls: `batch` texts per `llama_decode`, each its
/// own sequence, pooled rows read with `llama_get_embeddings_seq` and normalised. Returns the
/// seconds of the timed pass (after one warm-up decode) and the vectors.
fn raw_embeddings(
    model: &Model,
    config: &EmbedConfig,
    texts: &[Vec<i32>],
    batch: usize,
) -> Result<(f64, Vec<Vec<f32>>)> {
    let cc = ContextConfig::default()
        .n_ctx(config.n_batch.max(8))
        .n_batch(config.n_batch)
        .n_ubatch(config.n_batch)
        .n_seq_max(config.n_seq_max)
        .embeddings(true)
        .pooling(config.pooling)
        .flash_attention(config.flash_attention)
        .threads(config.threads);
    let ctx = Context::new(model, &cc)?;
    // SAFETY: used only below, while `ctx` is not otherwise borrowed.
    let c = unsafe { ctx.as_ptr() };
    // SAFETY: a pure query on a live model.
    let n_embd = unsafe { sys::llama_model_n_embd_out(model.raw()) }.max(0) as usize;
    let mut raw = super::RawBatch::new(config.n_batch as usize)?;
    let mut pass = |chunk: &[Vec<i32>], out: &mut Vec<Vec<f32>>| -> Result<()> {
        raw.clear();
        for (s, t) in chunk.iter().enumerate() {
            for (p, &tok) in t.iter().enumerate() {
                raw.push(tok, p as i32, s as i32, true)?;
            }
        }
        // SAFETY: a live context used by this thread alone; every batch holds at most `n_batch`
        // tokens (push checks) of `n_seq_max` sequences, token ids from the tokenizer,
        // positions from 0 in a cleared memory; the pooled rows are read before the next decode.
        unsafe {
            sys::llama_memory_clear(sys::llama_get_memory(c), true);
            raw.decode(c)?;
            for s in 0..chunk.len() {
                let p = sys::llama_get_embeddings_seq(c, s as i32);
                if p.is_null() {
                    return Err(Error::Internal("raw loop: no pooled row".into()));
                }
                let mut v = std::slice::from_raw_parts(p, n_embd).to_vec();
                crate::embed::l2_normalize(&mut v);
                out.push(v);
            }
        }
        Ok(())
    };
    let mut warm = Vec::new();
    pass(&texts[..batch], &mut warm)?;
    let mut out = Vec::with_capacity(texts.len());
    let t = Instant::now();
    for chunk in texts.chunks(batch) {
        pass(chunk, &mut out)?;
    }
    Ok((t.elapsed().as_secs_f64(), out))
}

/// Made-up review texts of varied length, deterministic.
fn review(i: usize) -> String {
    const OPENINGS: [&str; 6] = [
        "I bought this blender last month",
        "The hotel room was on the third floor",
        "Our order arrived two days late",
        "This is the third book I have read by this author",
        "The support team answered my email",
        "We took the night train to Vienna",
    ];
    const MIDDLES: [&str; 5] = [
        "and the first impression was better than I expected",
        "but the instructions were confusing and incomplete",
        "and honestly it did exactly what it promised",
        "although the price seemed high for what you get",
        "and the staff could not have been more helpful",
    ];
    const ENDINGS: [&str; 4] = [
        "I would buy it again.",
        "I will not be coming back.",
        "Overall it was fine, nothing special.",
        "Five stars from our whole family.",
    ];
    format!(
        "{}, {}. {} (review {})",
        OPENINGS[i % OPENINGS.len()],
        MIDDLES[(i / 6) % MIDDLES.len()],
        ENDINGS[(i / 30) % ENDINGS.len()],
        i
    )
}

fn classification(model: &Model, cfg: &EmbedBenchConfig, progress: &dyn Fn(&str)) -> Result<ClassifyRow> {
    const LABELS: [&str; 8] = ["positive", "negative", "neutral", "mixed", "angry", "sarcastic", "spam", "question"];
    if cfg.labels == 0 || cfg.labels > LABELS.len() {
        return Err(Error::invalid("labels", format!("labels must be 1..={}", LABELS.len())));
    }
    let texts: Vec<String> = (0..cfg.classify_texts).map(review).collect();
    let config = ClassifyConfig::default()
        .template("Review: {text}\nWhich of these describes the review: {labels}? Answer:")
        .flash_attention(cfg.flash_attention)
        .threads(cfg.threads);
    let mut classifier = Classifier::new(model, &LABELS[..cfg.labels], &config)?;
    let prompt_tokens = texts.iter().map(|t| classifier.prompt_tokens(t).map(|p| p.len())).sum::<Result<usize>>()?
        as f64
        / texts.len() as f64;
    progress(&format!("classification, {} texts x {} labels, shared prefix", texts.len(), cfg.labels));
    classifier.classify(&texts[..texts.len().min(8)])?;
    let t = Instant::now();
    let shared = classifier.classify(&texts)?;
    let shared_s = t.elapsed().as_secs_f64();
    progress(&format!("classification, {} texts x {} labels, each label its own prompt", texts.len(), cfg.labels));
    let t = Instant::now();
    let naive = classifier.classify_separately(&texts)?;
    let naive_s = t.elapsed().as_secs_f64();
    Ok(ClassifyRow {
        texts: texts.len(),
        labels: cfg.labels,
        prompt_tokens,
        shared_texts_per_s: texts.len() as f64 / shared_s,
        naive_texts_per_s: texts.len() as f64 / naive_s,
        speedup: naive_s / shared_s,
        same_label: shared.iter().zip(&naive).filter(|(a, b)| a.label == b.label).count(),
    })
}
