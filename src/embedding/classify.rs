//! Batch classification by likelihood: every label scored for every text by the
//! log-probability of the label's tokens after the text's prompt.
//!
//! The prompt is computed once per text. Its tokens belong to one sequence per label at
//! once, so the labels branch from the same KV cells (what `seq_cp` would share, without the
//! copy), and a label's own tokens follow in its sequence; as many texts as fit go into each
//! decode. What every text's prompt starts with (an instruction before `{text}`, few-shot
//! examples, a chat template's header) is computed once per call, in a sequence of its own,
//! and reaches each label's sequence the way the engine shares a prefix between slots
//! (`SeqCache::copy_from`: the cells shared, nothing computed again). [`Classifier::classify_separately`] scores each label with its own full prompt
//! instead: the naive way, kept as the reference the shared way is tested and measured
//! against.

use crate::batch::{Batch, SeqId};
use crate::chat::{ChatMessage, ChatOptions, ChatTemplate};
use crate::context::{Context, ContextConfig, FlashAttention};
use crate::error::{Error, Result};
use crate::model::Model;
use crate::request::SeqCache;
use crate::vocab::Token;

/// The fewest leading tokens all prompts must share for them to be computed once.
const MIN_SHARED: usize = 16;

/// Settings for a [`Classifier`].
///
/// ```
/// use rocm_llama::ClassifyConfig;
///
/// let config = ClassifyConfig::default()
///     .template("Review: {text}\nIs this review positive or negative? Answer:")
///     .n_seq_max(128);
/// assert!(!config.chat);
/// ```
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct ClassifyConfig {
    /// The prompt, with `{text}` where the text goes and optionally `{labels}` (the labels
    /// joined by ", "). Default: `"{text}\nCategory ({labels}):"`.
    pub template: String,
    /// Put the filled template into the model's chat template as a user message and score
    /// the labels as the start of the assistant's reply (default false).
    pub chat: bool,
    /// Text between the prompt and each label (default: one space, or nothing with `chat`).
    pub label_prefix: Option<String>,
    /// Tokens per decode, also the longest prompt plus label (default 2048).
    pub n_batch: u32,
    /// Sequences per decode: each text takes one per label (default 256, llama.cpp's most).
    pub n_seq_max: u32,
    /// Threads (default: the cores other processes leave free).
    pub threads: Option<u32>,
    /// Flash attention.
    pub flash_attention: FlashAttention,
}

impl Default for ClassifyConfig {
    fn default() -> Self {
        ClassifyConfig {
            template: "{text}\nCategory ({labels}):".into(),
            chat: false,
            label_prefix: None,
            n_batch: 2048,
            n_seq_max: 256,
            threads: None,
            flash_attention: FlashAttention::Auto,
        }
    }
}

crate::config::setters!(ClassifyConfig {
    chat: bool,
    n_batch: u32,
    n_seq_max: u32,
    flash_attention: FlashAttention,
} optional {
    label_prefix: String,
    threads: u32,
});

impl ClassifyConfig {
    /// Sets [`template`](Self::template).
    #[must_use]
    pub fn template(mut self, template: impl Into<String>) -> Self {
        self.template = template.into();
        self
    }
}

/// One text's result.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Classification {
    /// Index of the most likely label.
    pub label: usize,
    /// Each label's probability, normalised over the labels (sums to 1).
    pub probs: Vec<f64>,
    /// Each label's log-likelihood: the sum of its tokens' log-probabilities after the
    /// prompt.
    pub logprobs: Vec<f64>,
}

impl Classification {
    fn from_logprobs(logprobs: Vec<f64>) -> Classification {
        let max = logprobs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let exps: Vec<f64> = logprobs.iter().map(|&l| (l - max).exp()).collect();
        let sum: f64 = exps.iter().sum();
        let probs: Vec<f64> = exps.iter().map(|e| e / sum).collect();
        // The first of equal maxima, so ties resolve the same way every time.
        let label = logprobs.iter().enumerate().fold(0, |best, (i, &l)| if l > logprobs[best] { i } else { best });
        Classification { label, probs, logprobs }
    }
}

/// Scores fixed labels for many texts with one model. Owns its context.
///
/// ```
/// # fn main() -> rocm_llama::Result<()> {
/// use rocm_llama::{Classifier, ClassifyConfig, LoadConfig, Model};
///
/// let model = Model::load(rocm_llama::synth::tiny_model()?, &LoadConfig::default())?;
/// let mut classifier = Classifier::new(&model, &["yes", "no"], &ClassifyConfig::default())?;
/// let results = classifier.classify(&["is the sky blue?", "is fire cold?"])?;
/// assert_eq!(results.len(), 2);
/// assert!((results[0].probs.iter().sum::<f64>() - 1.0).abs() < 1e-9);
/// # Ok(())
/// # }
/// ```
pub struct Classifier<'m> {
    ctx: Context<'m>,
    batch: Batch,
    labels: Vec<String>,
    label_tokens: Vec<Vec<Token>>,
    config: ClassifyConfig,
}

/// Where one text's scores come from in a decode.
struct Placed {
    /// Batch index of the prompt's last token (its logits predict every label's first token).
    prompt_last: i32,
    /// Per label, the batch indices whose logits predict the label's 2nd, 3rd, ... token.
    label_rows: Vec<Vec<i32>>,
}

impl<'m> Classifier<'m> {
    /// Checks the labels (at least one, none empty, none repeated, each some tokens) and
    /// the template (`{text}` in it), and makes the context.
    pub fn new<S: AsRef<str>>(model: &'m Model, labels: &[S], config: &ClassifyConfig) -> Result<Classifier<'m>> {
        if model.is_vocab_only() {
            return Err(Error::InvalidState("the model was loaded without weights (vocab_only)".into()));
        }
        let labels: Vec<String> = labels.iter().map(|l| l.as_ref().to_string()).collect();
        if labels.is_empty() {
            return Err(Error::invalid("labels", "no labels given"));
        }
        for (i, l) in labels.iter().enumerate() {
            if l.trim().is_empty() {
                return Err(Error::invalid("labels", format!("label {i} is empty")));
            }
            if labels[..i].contains(l) {
                return Err(Error::invalid("labels", format!("label {l:?} appears twice")));
            }
        }
        if !config.template.contains("{text}") {
            return Err(Error::invalid("template", "the classification template has no {text}"));
        }
        if labels.len() > config.n_seq_max as usize {
            return Err(Error::invalid(
                "labels",
                format!(
                    "{} labels need as many sequences per text, but n_seq_max is {}",
                    labels.len(),
                    config.n_seq_max
                ),
            ));
        }
        let prefix = config.label_prefix.clone().unwrap_or_else(|| if config.chat { "" } else { " " }.to_string());
        let vocab = model.vocab();
        let label_tokens = labels
            .iter()
            .map(|l| {
                let t = vocab.tokenize(&format!("{prefix}{l}"), false, false)?;
                if t.is_empty() {
                    return Err(Error::invalid("labels", format!("label {l:?} tokenizes to nothing")));
                }
                Ok(t)
            })
            .collect::<Result<Vec<_>>>()?;
        // Two labels with the same tokens would always tie.
        for (i, t) in label_tokens.iter().enumerate() {
            if let Some(j) = label_tokens[..i].iter().position(|u| u == t) {
                return Err(Error::invalid(
                    "labels",
                    format!("labels {:?} and {:?} tokenize the same", labels[j], labels[i]),
                ));
            }
        }
        let cc = ContextConfig::default()
            .n_ctx(config.n_batch.max(8))
            .n_batch(config.n_batch)
            .n_ubatch(config.n_batch.min(512))
            .n_seq_max(config.n_seq_max)
            .kv_unified(true)
            .flash_attention(config.flash_attention)
            .threads(config.threads);
        let ctx = Context::new(model, &cc)?;
        let batch = Batch::new(config.n_batch as usize, labels.len())?;
        Ok(Classifier { ctx, batch, labels, label_tokens, config: config.clone() })
    }

    /// The labels, in the order of each result's `probs`.
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// Each label's tokens as scored (with the label prefix).
    pub fn label_tokens(&self) -> &[Vec<Token>] {
        &self.label_tokens
    }

    /// The context (for its thread counts and counters).
    pub fn context(&self) -> &Context<'m> {
        &self.ctx
    }

    /// The tokens of `text`'s prompt: the template filled, in the chat template when asked.
    pub fn prompt_tokens(&self, text: &str) -> Result<Vec<Token>> {
        if text.trim().is_empty() {
            return Err(Error::embedding("the text is empty"));
        }
        let filled = self.config.template.replace("{labels}", &self.labels.join(", ")).replace("{text}", text);
        let model = self.ctx.model();
        let tokens = if self.config.chat {
            ChatTemplate::Model.tokens(model, &[ChatMessage::user(filled)], &ChatOptions::default())?
        } else {
            model.vocab().tokenize(&filled, true, false)?
        };
        let longest_label = self.label_tokens.iter().map(Vec::len).max().unwrap_or(0);
        let needed = tokens.len() + self.label_tokens.iter().map(|l| l.len() - 1).sum::<usize>();
        if needed > self.config.n_batch as usize || tokens.len() + longest_label > self.config.n_batch as usize {
            return Err(Error::embedding(format!(
                "a prompt of {} tokens and its labels need {needed} tokens, more than n_batch = {}",
                tokens.len(),
                self.config.n_batch
            )));
        }
        Ok(tokens)
    }

    /// Scores every label for every text, in order.
    pub fn classify<S: AsRef<str>>(&mut self, texts: &[S]) -> Result<Vec<Classification>> {
        self.classify_with_progress(texts, &mut |_, _| {})
    }

    /// [`classify`](Self::classify), calling `progress(done, total)` after each decode.
    pub fn classify_with_progress<S: AsRef<str>>(
        &mut self,
        texts: &[S],
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Vec<Classification>> {
        let prompts = self.prompts(texts)?;
        let result = self.classify_prompts(&prompts, progress);
        self.ctx.clear_memory();
        result
    }

    fn classify_prompts(
        &mut self,
        prompts: &[Vec<Token>],
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Vec<Classification>> {
        let n_labels = self.labels.len();
        let extra: usize = self.label_tokens.iter().map(|l| l.len() - 1).sum();
        let n_seq_max = self.config.n_seq_max as usize;
        // The start every prompt shares (never a prompt's last token, whose logits are read),
        // held by the last sequence when a sequence is left for it.
        let common = prompts
            .iter()
            .skip(1)
            .map(|p| crate::request::common_prefix(&prompts[0], p))
            .fold(prompts.first().map_or(0, |p| p.len().saturating_sub(1)), usize::min);
        let shared = if prompts.len() > 1 && common >= MIN_SHARED && n_seq_max > n_labels { common } else { 0 };
        let prefix_seq = (n_seq_max - 1) as SeqId;
        let mut prefix = SeqCache::default();
        self.ctx.clear_memory();
        if shared > 0 {
            self.batch.clear();
            self.batch.add_sequence(&prompts[0][..shared], 0, prefix_seq, false)?;
            self.ctx.decode(&self.batch)?;
            prefix.extend(&prompts[0][..shared]);
        }
        let per_decode_seqs = (n_seq_max - usize::from(shared > 0)) / n_labels;
        // The context has n_batch cells; the shared prefix keeps its own.
        let budget = self.config.n_batch as usize - shared;
        let mut out = Vec::with_capacity(prompts.len());
        while out.len() < prompts.len() {
            // As many texts as the token budget and the sequences allow (at least one).
            let (mut n, mut tokens) = (0, 0);
            for p in &prompts[out.len()..] {
                let own = p.len() - shared + extra;
                if n == per_decode_seqs || (n > 0 && tokens + own > budget) {
                    break;
                }
                tokens += own;
                n += 1;
            }
            let chunk = &prompts[out.len()..out.len() + n];
            self.batch.clear();
            let mut placed = Vec::with_capacity(n);
            for (t, prompt) in chunk.iter().enumerate() {
                let seqs: Vec<SeqId> = (0..n_labels).map(|j| (t * n_labels + j) as SeqId).collect();
                if shared > 0 {
                    for &seq in &seqs {
                        if SeqCache::default().copy_from(&mut self.ctx, seq, prefix_seq, &prefix, shared)? != shared {
                            return Err(Error::embedding("the shared prompt prefix could not be shared"));
                        }
                    }
                }
                let mut prompt_last = 0;
                for (pos, &tok) in prompt.iter().enumerate().skip(shared) {
                    let last = pos + 1 == prompt.len();
                    let i = self.batch.add(tok, pos as i32, &seqs, last)?;
                    if last {
                        prompt_last = i;
                    }
                }
                let mut label_rows = Vec::with_capacity(n_labels);
                for (j, label) in self.label_tokens.iter().enumerate() {
                    let mut rows = Vec::with_capacity(label.len() - 1);
                    for (k, &tok) in label[..label.len() - 1].iter().enumerate() {
                        rows.push(self.batch.add(tok, (prompt.len() + k) as i32, &[seqs[j]], true)?);
                    }
                    label_rows.push(rows);
                }
                placed.push(Placed { prompt_last, label_rows });
            }
            self.ctx.decode(&self.batch)?;
            let mut lse = LogSumExp::default();
            for p in &placed {
                let mut scores = Vec::with_capacity(n_labels);
                for (j, label) in self.label_tokens.iter().enumerate() {
                    let mut lp = lse.logprob(&self.ctx, p.prompt_last, label[0])?;
                    for (k, &row) in p.label_rows[j].iter().enumerate() {
                        lp += lse.logprob(&self.ctx, row, label[k + 1])?;
                    }
                    scores.push(lp);
                }
                out.push(Classification::from_logprobs(scores));
            }
            // This group's sequences go; the shared prefix stays for the next.
            for seq in 0..(n * n_labels) as SeqId {
                self.ctx.seq_remove(Some(seq), ..)?;
            }
            progress(out.len(), prompts.len());
        }
        Ok(out)
    }

    /// The naive way: each label scored with its own full copy of the prompt, nothing
    /// shared (many such sequences still go into each decode). The reference that
    /// [`classify`](Self::classify) is tested and benchmarked against.
    pub fn classify_separately<S: AsRef<str>>(&mut self, texts: &[S]) -> Result<Vec<Classification>> {
        let prompts = self.prompts(texts)?;
        let pairs: Vec<(usize, usize)> =
            (0..prompts.len()).flat_map(|t| (0..self.labels.len()).map(move |j| (t, j))).collect();
        let mut scores = vec![Vec::with_capacity(self.labels.len()); prompts.len()];
        let mut next = 0;
        while next < pairs.len() {
            let (mut n, mut tokens) = (0, 0);
            for &(t, j) in &pairs[next..] {
                let len = prompts[t].len() + self.label_tokens[j].len() - 1;
                if n == self.config.n_seq_max as usize || (n > 0 && tokens + len > self.config.n_batch as usize) {
                    break;
                }
                tokens += len;
                n += 1;
            }
            self.batch.clear();
            let mut rows = Vec::with_capacity(n);
            for (seq, &(t, j)) in pairs[next..next + n].iter().enumerate() {
                let label = &self.label_tokens[j];
                let start = self.batch.len() as i32 + prompts[t].len() as i32 - 1;
                self.batch.add_sequence(&prompts[t], 0, seq as SeqId, true)?;
                for (k, &tok) in label[..label.len() - 1].iter().enumerate() {
                    self.batch.add(tok, (prompts[t].len() + k) as i32, &[seq as SeqId], true)?;
                }
                rows.push(start);
            }
            self.run_decode()?;
            let mut lse = LogSumExp::default();
            for (&(t, j), &start) in pairs[next..next + n].iter().zip(&rows) {
                let label = &self.label_tokens[j];
                let mut lp = 0.0;
                for (k, &tok) in label.iter().enumerate() {
                    lp += lse.logprob(&self.ctx, start + k as i32, tok)?;
                }
                scores[t].push(lp);
            }
            self.ctx.clear_memory();
            next += n;
        }
        Ok(scores.into_iter().map(Classification::from_logprobs).collect())
    }

    fn prompts<S: AsRef<str>>(&self, texts: &[S]) -> Result<Vec<Vec<Token>>> {
        texts
            .iter()
            .enumerate()
            .map(|(i, t)| {
                self.prompt_tokens(t.as_ref()).map_err(|e| match e {
                    Error::Embedding { text: None, reason } => Error::Embedding { text: Some(i), reason },
                    other => other,
                })
            })
            .collect()
    }

    fn run_decode(&mut self) -> Result<()> {
        self.ctx.clear_memory();
        let r = self.ctx.decode(&self.batch);
        if r.is_err() {
            self.ctx.clear_memory();
        }
        r
    }
}

/// Log-probabilities from logit rows, each row's log-sum-exp computed once.
#[derive(Default)]
struct LogSumExp {
    rows: std::collections::HashMap<i32, f64>,
}

impl LogSumExp {
    fn logprob(&mut self, ctx: &Context<'_>, row: i32, token: Token) -> Result<f64> {
        let logits = ctx.logits(row)?;
        let lse = *self.rows.entry(row).or_insert_with(|| log_sum_exp(logits));
        Ok(f64::from(logits[token as usize]) - lse)
    }
}

fn log_sum_exp(row: &[f32]) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = row.iter().map(|&x| f64::from(x - max).exp()).sum();
    f64::from(max) + sum.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probabilities_normalise_over_the_labels() {
        let c = Classification::from_logprobs(vec![-1.0, -2.0, -1.0]);
        assert_eq!(c.label, 0);
        assert!((c.probs.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert!((c.probs[0] - c.probs[2]).abs() < 1e-12);
        assert!(c.probs[0] > c.probs[1]);
        assert!((log_sum_exp(&[0.0, 0.0]) - 2f64.ln()).abs() < 1e-9);
    }
}
