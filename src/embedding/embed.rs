//! Embeddings and reranking: many texts packed into each decode as separate sequences, one
//! pooled vector each (or one row per token without pooling).
//!
//! An [`Embedder`] owns a context made for embeddings. Each decode takes as many whole texts
//! as fit into its token budget (`n_batch`) and sequence count (`n_seq_max`), so a text's
//! vector never depends on which texts it was packed with beyond floating-point rounding
//! (tested: the same text alone and inside a batch agree to a cosine of 1 - 1e-5 on the CPU).

use llama_cpp_sys_2 as sys;

use crate::batch::{Batch, SeqId};
use crate::context::{Context, ContextConfig, FlashAttention};
use crate::error::{Error, Result};
use crate::model::Model;
use crate::vocab::Token;

pub use crate::context::Pooling;

/// Settings for an [`Embedder`].
///
/// ```
/// use rocm_llama::{EmbedConfig, Pooling};
///
/// let config = EmbedConfig::default().pooling(Pooling::Mean).normalize(false).n_seq_max(128);
/// assert_eq!(config.n_batch, 2048);
/// ```
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct EmbedConfig {
    /// How token rows are pooled (default: what the model declares).
    pub pooling: Pooling,
    /// Scale each pooled vector to unit length (L2; default true). Rank scores are never
    /// scaled.
    pub normalize: bool,
    /// Cut texts longer than `n_batch` tokens to that length instead of failing (default
    /// false).
    pub truncate: bool,
    /// Tokens per decode, also the longest text (default 2048).
    pub n_batch: u32,
    /// Texts per decode (default 64).
    pub n_seq_max: u32,
    /// Threads (default: the cores other processes leave free).
    pub threads: Option<u32>,
    /// Flash attention.
    pub flash_attention: FlashAttention,
}

impl Default for EmbedConfig {
    fn default() -> Self {
        EmbedConfig {
            pooling: Pooling::Model,
            normalize: true,
            truncate: false,
            n_batch: 2048,
            n_seq_max: 64,
            threads: None,
            flash_attention: FlashAttention::Auto,
        }
    }
}

crate::config::setters!(EmbedConfig {
    pooling: Pooling,
    normalize: bool,
    truncate: bool,
    n_batch: u32,
    n_seq_max: u32,
    flash_attention: FlashAttention,
} optional {
    threads: u32,
});

/// Turns texts into vectors with one model. Owns its context (`embeddings` on).
///
/// ```
/// # fn main() -> rocm_llama::Result<()> {
/// use rocm_llama::{EmbedConfig, Embedder, LoadConfig, Model, Pooling};
///
/// let model = Model::load(rocm_llama::synth::tiny_model()?, &LoadConfig::default())?;
/// let mut embedder = Embedder::new(&model, &EmbedConfig::default().pooling(Pooling::Mean))?;
/// let vectors = embedder.embed(&["a first text", "and a second one"])?;
/// assert_eq!(vectors.len(), 2);
/// assert_eq!(vectors[0].len(), embedder.dimension());
/// # Ok(())
/// # }
/// ```
pub struct Embedder<'m> {
    ctx: Context<'m>,
    batch: Batch,
    config: EmbedConfig,
    pooling: Pooling,
}

impl<'m> Embedder<'m> {
    /// Makes the context. Rank pooling needs a model with a classifier head; a model that
    /// declares no pooling gives token rows only ([`token_embeddings`](Self::token_embeddings))
    /// unless the config picks a pooling.
    pub fn new(model: &'m Model, config: &EmbedConfig) -> Result<Embedder<'m>> {
        if model.is_vocab_only() {
            return Err(Error::InvalidState("the model was loaded without weights (vocab_only)".into()));
        }
        if config.n_batch == 0 || config.n_seq_max == 0 {
            return Err(Error::invalid("n_batch", "n_batch and n_seq_max must be at least 1"));
        }
        if config.pooling == Pooling::Rank && !has_classifier(model) {
            return Err(Error::embedding(
                "rank pooling needs a classifier head (cls.* tensors), which this model does not have",
            ));
        }
        // Each decode computes whole texts in one micro-batch (pooling is per micro-batch)
        // and the cache is emptied after it, so it needs room for one batch only.
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
        let pooling = ctx.pooling();
        Ok(Embedder { batch: Batch::new(config.n_batch as usize, 1)?, ctx, config: config.clone(), pooling })
    }

    /// The pooling applied (the model's own when the config left it to the model).
    pub fn pooling(&self) -> Pooling {
        self.pooling
    }

    /// The length of each vector: `n_embd_out`, or the classifier's `n_cls_out` with rank
    /// pooling. Wraps `llama_model_n_embd_out` / `llama_model_n_cls_out`.
    pub fn dimension(&self) -> usize {
        let model = self.ctx.model();
        // SAFETY: plain queries on a live model.
        unsafe {
            if self.pooling == Pooling::Rank {
                sys::llama_model_n_cls_out(model.raw()) as usize
            } else {
                usize::try_from(sys::llama_model_n_embd_out(model.raw())).unwrap_or(0)
            }
        }
    }

    /// The settings.
    pub fn config(&self) -> &EmbedConfig {
        &self.config
    }

    /// The context (for its model, thread counts and counters).
    pub fn context(&self) -> &Context<'m> {
        &self.ctx
    }

    /// A text's tokens as [`embed`](Self::embed) computes them (the model's special tokens
    /// added); empty text is an error, over-long text one too unless `truncate` is set.
    pub fn tokenize(&self, text: &str) -> Result<Vec<Token>> {
        tokenize_text(self.ctx.model(), text, &self.config)
    }

    fn fit(&self, tokens: Vec<Token>) -> Result<Vec<Token>> {
        fit_tokens(tokens, &self.config)
    }

    /// One pooled vector per text, in order.
    pub fn embed<S: AsRef<str>>(&mut self, texts: &[S]) -> Result<Vec<Vec<f32>>> {
        self.embed_with_progress(texts, &mut |_, _| {})
    }

    /// [`embed`](Self::embed), calling `progress(done, total)` after each decode.
    pub fn embed_with_progress<S: AsRef<str>>(
        &mut self,
        texts: &[S],
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Vec<Vec<f32>>> {
        let inputs = tokenize_texts(self.ctx.model(), texts, &self.config)?;
        self.embed_tokens(&inputs, progress)
    }

    /// One pooled vector per token list (already tokenized; each checked as in
    /// [`tokenize`](Self::tokenize)).
    pub fn embed_tokens(
        &mut self,
        inputs: &[Vec<Token>],
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Vec<Vec<f32>>> {
        self.require_pooled()?;
        let vocab = self.ctx.model().vocab();
        let mut owned = Vec::new();
        for (i, t) in inputs.iter().enumerate() {
            for &tok in t {
                vocab.check(tok).map_err(|e| at_text(i, e))?;
            }
            owned.push(self.fit(t.clone()).map_err(|e| at_text(i, e))?);
        }
        let mut out = Vec::with_capacity(owned.len());
        while out.len() < owned.len() {
            let n = self.fitting(&owned[out.len()..]);
            out.extend(self.embed_chunk(&owned[out.len()..out.len() + n])?);
            progress(out.len(), owned.len());
        }
        Ok(out)
    }

    /// How many of `inputs` (from the first) one decode takes: at least one.
    pub(crate) fn fitting(&self, inputs: &[Vec<Token>]) -> usize {
        let (mut n, mut tokens) = (0, 0);
        for t in inputs {
            if n == self.config.n_seq_max as usize || (n > 0 && tokens + t.len() > self.config.n_batch as usize) {
                break;
            }
            tokens += t.len();
            n += 1;
        }
        n.max(1).min(inputs.len())
    }

    /// One decode of `inputs` (checked, fitting), each its own sequence: their pooled vectors.
    pub(crate) fn embed_chunk(&mut self, inputs: &[Vec<Token>]) -> Result<Vec<Vec<f32>>> {
        self.decode(inputs)?;
        let mut out = Vec::with_capacity(inputs.len());
        for seq in 0..inputs.len() {
            let mut v = self.ctx.sequence_embedding(seq as SeqId)?.to_vec();
            if self.config.normalize && self.pooling != Pooling::Rank {
                l2_normalize(&mut v);
            }
            out.push(v);
        }
        Ok(out)
    }

    fn decode(&mut self, inputs: &[Vec<Token>]) -> Result<()> {
        self.batch.clear();
        // Every token is an output: pooling reads every row (llama.cpp would mark them all
        // itself, with a warning), and without pooling each row is returned.
        for (seq, tokens) in inputs.iter().enumerate() {
            for (pos, &t) in tokens.iter().enumerate() {
                self.batch.add(t, pos as i32, &[seq as SeqId], true)?;
            }
        }
        self.ctx.clear_memory();
        let r = self.ctx.decode(&self.batch);
        if r.is_err() {
            self.ctx.clear_memory();
        }
        r
    }

    /// Each token's row for each text (pooling none): `[text][token][dimension]`.
    pub fn token_embeddings<S: AsRef<str>>(&mut self, texts: &[S]) -> Result<Vec<Vec<Vec<f32>>>> {
        if self.pooling != Pooling::None {
            return Err(Error::embedding(format!(
                "token rows need pooling none; this embedder pools ({})",
                self.pooling
            )));
        }
        let inputs = texts
            .iter()
            .enumerate()
            .map(|(i, t)| self.tokenize(t.as_ref()).map_err(|e| at_text(i, e)))
            .collect::<Result<Vec<_>>>()?;
        let mut out = Vec::with_capacity(inputs.len());
        while out.len() < inputs.len() {
            let chunk = &inputs[out.len()..out.len() + self.fitting(&inputs[out.len()..])];
            self.decode(chunk)?;
            let mut index = 0i32;
            for tokens in chunk {
                let mut rows = Vec::with_capacity(tokens.len());
                for _ in tokens {
                    let mut row = self.ctx.embeddings(index)?.to_vec();
                    if self.config.normalize {
                        l2_normalize(&mut row);
                    }
                    rows.push(row);
                    index += 1;
                }
                out.push(rows);
            }
            self.ctx.clear_memory();
        }
        Ok(out)
    }

    /// Scores each document's relevance to `query` (rank pooling: a reranker model), in
    /// document order. The pair is formatted with the model's rerank template when it has
    /// one (`tokenizer.chat_template.rerank`, with `{query}` and `{document}`), otherwise as
    /// `BOS query EOS SEP document EOS` with the special tokens the model has.
    pub fn rerank<S: AsRef<str>>(&mut self, query: &str, documents: &[S]) -> Result<Vec<f32>> {
        if self.pooling != Pooling::Rank {
            return Err(Error::embedding(format!(
                "reranking needs rank pooling; this embedder pools ({})",
                self.pooling
            )));
        }
        let inputs = rerank_inputs(self.ctx.model(), query, documents, &self.config)?;
        Ok(self.embed_tokens(&inputs, &mut |_, _| {})?.into_iter().map(|v| v.first().copied().unwrap_or(0.0)).collect())
    }

    pub(crate) fn require_pooled(&self) -> Result<()> {
        if self.pooling == Pooling::None {
            return Err(Error::embedding(if self.config.pooling == Pooling::Model {
                "the model declares no pooling (it is not an embedding model): pick one (mean, cls, last) or read \
                 token rows with pooling none"
            } else {
                "pooling none gives one row per token: use token_embeddings"
            }));
        }
        Ok(())
    }
}

/// The tokens of one (query, document) pair for a reranker: the model's rerank template when
/// it has one (`tokenizer.chat_template.rerank`, with `{query}` and `{document}`), otherwise
/// `BOS query EOS SEP document EOS` with the special tokens the model has.
pub(crate) fn rerank_pair(model: &Model, query: &str, document: &str) -> Result<Vec<Token>> {
    let vocab = model.vocab();
    if let Some(template) = model.meta("tokenizer.chat_template.rerank") {
        let text = template.replace("{query}", query).replace("{document}", document);
        return vocab.tokenize(&text, true, true);
    }
    let mut tokens = Vec::new();
    if vocab.add_bos() {
        tokens.extend(vocab.bos());
    }
    tokens.extend(vocab.tokenize(query, false, false)?);
    tokens.extend(vocab.eos());
    tokens.extend(vocab.sep());
    tokens.extend(vocab.tokenize(document, false, false)?);
    tokens.extend(vocab.eos());
    Ok(tokens)
}

/// Every (query, document) pair's tokens for a reranker, checked as texts are (neither may be
/// empty; each pair must fit `n_batch`), errors naming the document.
pub(crate) fn rerank_inputs<S: AsRef<str>>(
    model: &Model,
    query: &str,
    documents: &[S],
    config: &EmbedConfig,
) -> Result<Vec<Vec<Token>>> {
    if query.is_empty() {
        return Err(Error::embedding("the query is empty"));
    }
    documents
        .iter()
        .enumerate()
        .map(|(i, d)| {
            if d.as_ref().is_empty() {
                return Err(at_text(i, Error::embedding("the document is empty")));
            }
            rerank_pair(model, query, d.as_ref()).and_then(|t| fit_tokens(t, config)).map_err(|e| at_text(i, e))
        })
        .collect()
}

/// A text's tokens for embedding under `config` (see [`Embedder::tokenize`]).
pub(crate) fn tokenize_text(model: &Model, text: &str, config: &EmbedConfig) -> Result<Vec<Token>> {
    if text.is_empty() {
        return Err(Error::embedding("the text is empty"));
    }
    fit_tokens(model.vocab().tokenize(text, true, true)?, config)
}

/// Every text's tokens, errors naming the text.
pub(crate) fn tokenize_texts<S: AsRef<str>>(
    model: &Model,
    texts: &[S],
    config: &EmbedConfig,
) -> Result<Vec<Vec<Token>>> {
    texts.iter().enumerate().map(|(i, t)| tokenize_text(model, t.as_ref(), config).map_err(|e| at_text(i, e))).collect()
}

/// Checks token lists given as they are (every id in the vocabulary, the length as
/// [`fit_tokens`] wants), naming the list at fault.
pub(crate) fn check_token_lists(model: &Model, inputs: &[Vec<Token>], config: &EmbedConfig) -> Result<Vec<Vec<Token>>> {
    let vocab = model.vocab();
    inputs
        .iter()
        .enumerate()
        .map(|(i, t)| {
            for &id in t {
                vocab.check(id)?;
            }
            fit_tokens(t.clone(), config).map_err(|e| at_text(i, e))
        })
        .collect()
}

/// Checks a token list's length against `n_batch` (cut to it with `truncate`).
fn fit_tokens(mut tokens: Vec<Token>, config: &EmbedConfig) -> Result<Vec<Token>> {
    let max = config.n_batch as usize;
    if tokens.is_empty() {
        return Err(Error::embedding("the text has no tokens"));
    }
    if tokens.len() > max {
        if !config.truncate {
            return Err(Error::embedding(format!(
                "a text of {} tokens is longer than n_batch = {max} (raise n_batch or set truncate)",
                tokens.len()
            )));
        }
        tokens.truncate(max);
    }
    Ok(tokens)
}

/// Names the text an error belongs to.
fn at_text(i: usize, e: Error) -> Error {
    match e {
        Error::Embedding { text: None, reason } => Error::Embedding { text: Some(i), reason },
        other => other,
    }
}

/// Whether the model's file holds a classifier head (`cls.*` tensors), which rank pooling
/// reads.
fn has_classifier(model: &Model) -> bool {
    crate::gguf::GgufFile::open_with(model.path(), crate::gguf::ReadOptions::header_only())
        .map(|f| f.tensors.iter().any(|t| t.name.starts_with("cls.")))
        .unwrap_or(false)
}

/// Scales `v` to unit length (left alone when it is all zeros).
pub fn l2_normalize(v: &mut [f32]) {
    let norm = v.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>().sqrt();
    if norm > 0.0 {
        for x in v {
            *x = (f64::from(*x) / norm) as f32;
        }
    }
}

/// The cosine of the angle between `a` and `b` (0 when either is all zeros).
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(&x, &y)| f64::from(x) * f64::from(y)).sum();
    let na: f64 = a.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na * nb)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooling_names_round_trip() {
        for p in Pooling::ALL {
            assert_eq!(p.name().parse::<Pooling>().unwrap(), p);
            if p != Pooling::Model {
                assert_eq!(Pooling::from_raw(p.raw()), p);
            }
        }
        assert!("median".parse::<Pooling>().is_err());
    }

    #[test]
    fn normalizing_and_cosine() {
        let mut v = vec![3.0, 4.0];
        l2_normalize(&mut v);
        assert!((v[0] - 0.6).abs() < 1e-6 && (v[1] - 0.8).abs() < 1e-6);
        let mut z = vec![0.0; 3];
        l2_normalize(&mut z);
        assert_eq!(z, vec![0.0; 3]);
        assert!((cosine(&[1.0, 0.0], &[2.0, 0.0]) - 1.0).abs() < 1e-12);
        assert_eq!(cosine(&[1.0, 0.0], &[0.0, 0.0]), 0.0);
    }
}
