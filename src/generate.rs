//! Text generation on one sequence: [`Context::generate`] returns a [`Generation`], an
//! iterator of [`Event`]s that ends with a [`Summary`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::batch::Batch;
use crate::chat::{apply_template, ChatMessage, ChatTemplate};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::sampler::{Sampler, SamplingParams};
use crate::vocab::{Detokenizer, Token};

/// Lets another thread stop a generation; the iterator then ends with
/// [`StopReason::Cancelled`].
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    /// A fresh token.
    pub fn new() -> Self {
        Self::default()
    }
    /// Requests cancellation.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    /// Whether cancellation was requested.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Settings for one generation.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// Most tokens to generate (default 256).
    pub max_tokens: usize,
    /// Strings that end generation; they never appear in the output.
    pub stop: Vec<String>,
    /// How to pick tokens.
    pub sampling: SamplingParams,
    /// Stops the generation from another thread.
    pub cancel: Option<CancelToken>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions { max_tokens: 256, stop: Vec::new(), sampling: SamplingParams::default(), cancel: None }
    }
}

impl GenerateOptions {
    /// Greedy decoding of at most `max_tokens`.
    pub fn greedy(max_tokens: usize) -> Self {
        GenerateOptions { max_tokens, sampling: SamplingParams::greedy(), ..Default::default() }
    }
    /// Adds a stop string.
    pub fn stop(mut self, s: impl Into<String>) -> Self {
        self.stop.push(s.into());
        self
    }
}

/// Why a generation ended.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub enum StopReason {
    /// The model produced an end-of-generation token.
    Eos,
    /// `max_tokens` were generated.
    MaxTokens,
    /// This stop string appeared (it is not part of the output).
    StopString(String),
    /// The [`CancelToken`] fired.
    Cancelled,
    /// The sequence reached the end of the context.
    ContextFull,
}

/// Counts and timings of a finished generation.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Summary {
    /// Why it ended.
    pub stop_reason: StopReason,
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Prompt tokens reused from the cache of an earlier generation (not recomputed).
    pub cached_prompt_tokens: usize,
    /// Tokens generated (an end-of-generation token is not counted).
    pub generated_tokens: usize,
    /// From the first `next()` to the first generated token.
    pub time_to_first_token: Duration,
    /// Prompt tokens computed per second.
    pub prefill_tokens_per_s: f64,
    /// Generated tokens per second after the first.
    pub decode_tokens_per_s: f64,
    /// Wall time of the whole generation.
    pub total_time: Duration,
}

/// One step of a generation.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A generated token and the text it released. Text may be empty (a character split over
    /// tokens, or text held back while it could still start a stop string) or longer than
    /// the token (held text released).
    Token {
        /// The token id.
        id: Token,
        /// Text released at this step.
        text: String,
    },
    /// Held-back text released at the end, with no new token.
    Text(String),
    /// The last event.
    Done(Summary),
}

/// Holds back text that could still turn into a stop string.
#[derive(Debug, Default)]
pub(crate) struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

impl StopMatcher {
    pub(crate) fn new(stops: &[String]) -> Self {
        StopMatcher { stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(), held: String::new() }
    }

    /// Adds text. Returns the text safe to emit, and the stop string if one matched (all
    /// text from the match on is dropped).
    pub(crate) fn push(&mut self, text: &str) -> (String, Option<String>) {
        self.held.push_str(text);
        if self.stops.is_empty() {
            return (std::mem::take(&mut self.held), None);
        }
        let hit =
            self.stops.iter().filter_map(|s| self.held.find(s.as_str()).map(|at| (at, s))).min_by_key(|(at, _)| *at);
        if let Some((at, s)) = hit {
            let s = s.clone();
            let out = self.held[..at].to_string();
            self.held.clear();
            return (out, Some(s));
        }
        // Keep the longest suffix that is a prefix of some stop string.
        let mut keep_from = self.held.len();
        for (i, _) in self.held.char_indices() {
            let tail = &self.held[i..];
            if self.stops.iter().any(|s| s.starts_with(tail)) {
                keep_from = i;
                break;
            }
        }
        let out = self.held[..keep_from].to_string();
        self.held.drain(..keep_from);
        (out, None)
    }

    /// Releases whatever is held (the generation ended for another reason).
    pub(crate) fn flush(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

enum Phase {
    Prefill,
    Sample,
    Decode(Token),
    Finish(StopReason),
    Done,
}

/// A running generation on sequence 0 of a [`Context`]. Iterate it for [`Event`]s.
///
/// Created by [`Context::generate`]. The prompt is processed on the first `next()`.
pub struct Generation<'c, 'm> {
    ctx: &'c mut Context<'m>,
    sampler: Sampler<'m>,
    detok: Detokenizer<'m>,
    stops: StopMatcher,
    prompt: Vec<Token>,
    cached: usize,
    pos: i32,
    batch: Batch,
    last_index: i32,
    opts: GenerateOptions,
    phase: Phase,
    generated: usize,
    start: Option<Instant>,
    prefill_done: Option<Instant>,
    first_token: Option<Instant>,
}

impl<'m> Context<'m> {
    /// Generates from a text prompt (tokenized with BOS as the model wants and with control
    /// tokens parsed). Errors at once when the prompt does not fit the context.
    ///
    /// Runs on sequence 0. When the prompt starts with tokens already cached from the last
    /// generation on this context (a chat conversation), only the rest is computed.
    pub fn generate(&mut self, prompt: &str, opts: &GenerateOptions) -> Result<Generation<'_, 'm>> {
        let tokens = self.model().vocab().tokenize(prompt, true, true)?;
        self.generate_tokens(tokens, opts)
    }

    /// Formats `messages` with a chat template and generates the assistant's reply.
    pub fn chat(
        &mut self,
        messages: &[ChatMessage],
        template: &ChatTemplate,
        opts: &GenerateOptions,
    ) -> Result<Generation<'_, 'm>> {
        let tmpl = template.resolve(self.model())?;
        let prompt = apply_template(&tmpl, messages, true)?;
        self.generate(&prompt, opts)
    }

    /// Generates from prompt tokens.
    pub fn generate_tokens(&mut self, prompt: Vec<Token>, opts: &GenerateOptions) -> Result<Generation<'_, 'm>> {
        if prompt.is_empty() {
            return Err(Error::Tokenize("the prompt is empty".into()));
        }
        let vocab = self.model().vocab();
        for &t in &prompt {
            vocab.check(t)?;
        }
        if prompt.len() >= self.n_ctx_seq() as usize {
            return Err(Error::ContextOverflow { needed: prompt.len() + 1, n_ctx: self.n_ctx_seq() });
        }
        let sampler = opts.sampling.build(self.model())?;
        let batch = Batch::new(self.n_batch() as usize, 1)?;
        let detok = vocab.detokenizer(false);
        Ok(Generation {
            ctx: self,
            sampler,
            detok,
            stops: StopMatcher::new(&opts.stop),
            prompt,
            cached: 0,
            pos: 0,
            batch,
            last_index: -1,
            opts: opts.clone(),
            phase: Phase::Prefill,
            generated: 0,
            start: None,
            prefill_done: None,
            first_token: None,
        })
    }
}

/// Joins the text of a stream of events and returns it with the final summary; a stream
/// that ends without one is [`Error::Cancelled`].
pub fn collect_events(events: impl IntoIterator<Item = Result<Event>>) -> Result<(String, Summary)> {
    let mut text = String::new();
    for ev in events {
        match ev? {
            Event::Token { text: t, .. } | Event::Text(t) => text.push_str(&t),
            Event::Done(s) => return Ok((text, s)),
        }
    }
    Err(Error::Cancelled)
}

impl Generation<'_, '_> {
    /// Runs to the end; returns the whole text and the summary.
    pub fn collect_text(self) -> Result<(String, Summary)> {
        collect_events(self)
    }

    /// Computes the prompt, reusing the cached prefix of sequence 0.
    fn prefill(&mut self) -> Result<()> {
        let ctx = &mut *self.ctx;
        let mut common = ctx.seq0_tokens.iter().zip(&self.prompt).take_while(|(a, b)| a == b).count();
        // The last prompt token must be computed again to get its logits.
        common = common.min(self.prompt.len() - 1);
        let saved = std::mem::take(&mut ctx.seq0_tokens);
        let mut reused = common > 0 && ctx.seq_remove(Some(0), common as i32..)?;
        // A sliding-window cache may have dropped early positions: then start over.
        if reused && ctx.seq_pos_min(0)?.is_some_and(|p| p > 0) {
            reused = false;
        }
        if !reused {
            common = 0;
            ctx.seq_remove(Some(0), ..)?;
        }
        drop(saved);
        self.cached = common;
        ctx.seq0_tokens = self.prompt[..common].to_vec();
        let n_batch = ctx.n_batch() as usize;
        let rest = &self.prompt[common..];
        let mut pos = common as i32;
        for (k, chunk) in rest.chunks(n_batch).enumerate() {
            self.batch.clear();
            let last = (k + 1) * n_batch >= rest.len();
            self.batch.add_sequence(chunk, pos, 0, last)?;
            ctx.decode(&self.batch)?;
            ctx.seq0_tokens.extend_from_slice(chunk);
            pos += chunk.len() as i32;
        }
        self.last_index = self.batch.len() as i32 - 1;
        self.pos = pos;
        Ok(())
    }

    fn decode_one(&mut self, token: Token) -> Result<()> {
        self.batch.clear();
        self.batch.add(token, self.pos, &[0], true)?;
        self.ctx.decode(&self.batch)?;
        self.ctx.seq0_tokens.push(token);
        self.pos += 1;
        self.last_index = 0;
        Ok(())
    }

    fn summary(&self, stop_reason: StopReason) -> Summary {
        let now = Instant::now();
        let start = self.start.unwrap_or(now);
        let prefill_done = self.prefill_done.unwrap_or(now);
        let first = self.first_token.unwrap_or(now);
        let prefill_secs = (prefill_done - start).as_secs_f64();
        let decode_secs = (now - first).as_secs_f64();
        let computed = self.prompt.len() - self.cached;
        Summary {
            stop_reason,
            prompt_tokens: self.prompt.len(),
            cached_prompt_tokens: self.cached,
            generated_tokens: self.generated,
            time_to_first_token: first - start,
            prefill_tokens_per_s: if prefill_secs > 0.0 { computed as f64 / prefill_secs } else { 0.0 },
            decode_tokens_per_s: if decode_secs > 0.0 && self.generated > 1 {
                (self.generated - 1) as f64 / decode_secs
            } else {
                0.0
            },
            total_time: now - start,
        }
    }

    fn step(&mut self) -> Result<Option<Event>> {
        loop {
            if self.opts.cancel.as_ref().is_some_and(|c| c.is_cancelled())
                && !matches!(self.phase, Phase::Done | Phase::Finish(_))
            {
                self.phase = Phase::Finish(StopReason::Cancelled);
            }
            match std::mem::replace(&mut self.phase, Phase::Done) {
                Phase::Done => return Ok(None),
                Phase::Prefill => {
                    self.start = Some(Instant::now());
                    self.prefill()?;
                    self.prefill_done = Some(Instant::now());
                    self.phase = Phase::Sample;
                }
                Phase::Decode(t) => {
                    self.decode_one(t)?;
                    self.phase = Phase::Sample;
                }
                Phase::Sample => {
                    // `max_tokens: 0` processes (and caches) the prompt and generates nothing.
                    if self.generated >= self.opts.max_tokens {
                        self.phase = Phase::Finish(StopReason::MaxTokens);
                        continue;
                    }
                    let t = self.sampler.sample(self.ctx, self.last_index)?;
                    if self.first_token.is_none() {
                        self.first_token = Some(Instant::now());
                    }
                    if self.ctx.model().vocab().is_eog(t) {
                        self.phase = Phase::Finish(StopReason::Eos);
                        continue;
                    }
                    self.generated += 1;
                    let piece = self.detok.push(t)?;
                    let (text, hit) = self.stops.push(&piece);
                    self.phase = if let Some(s) = hit {
                        Phase::Finish(StopReason::StopString(s))
                    } else if self.generated >= self.opts.max_tokens {
                        Phase::Finish(StopReason::MaxTokens)
                    } else if self.pos as u32 + 1 >= self.ctx.n_ctx_seq() {
                        Phase::Finish(StopReason::ContextFull)
                    } else {
                        Phase::Decode(t)
                    };
                    return Ok(Some(Event::Token { id: t, text }));
                }
                Phase::Finish(reason) => {
                    let rest = if matches!(reason, StopReason::StopString(_)) {
                        String::new()
                    } else {
                        let tail = self.detok.finish();
                        let (mut text, _) = self.stops.push(&tail);
                        text.push_str(&self.stops.flush());
                        text
                    };
                    if !rest.is_empty() {
                        self.phase = Phase::Finish(reason);
                        // Emit the held text first; the summary follows on the next call.
                        self.detok.finish();
                        self.stops = StopMatcher::new(&[]);
                        return Ok(Some(Event::Text(rest)));
                    }
                    self.phase = Phase::Done;
                    return Ok(Some(Event::Done(self.summary(reason))));
                }
            }
        }
    }
}

impl Iterator for Generation<'_, '_> {
    type Item = Result<Event>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.step() {
            Ok(ev) => ev.map(Ok),
            Err(e) => {
                self.phase = Phase::Done;
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, Option<String>) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut m = StopMatcher::new(&stops);
        let mut out = String::new();
        for p in pieces {
            let (t, hit) = m.push(p);
            out.push_str(&t);
            if hit.is_some() {
                return (out, hit);
            }
        }
        out.push_str(&m.flush());
        (out, None)
    }

    #[test]
    fn stop_string_across_pieces_is_removed() {
        assert_eq!(run(&["END"], &["hello E", "N", "D tail"]), ("hello ".into(), Some("END".into())));
        assert_eq!(run(&["\n\n"], &["a\n", "\nb"]), ("a".into(), Some("\n\n".into())));
    }

    #[test]
    fn partial_match_is_released_when_it_fails() {
        assert_eq!(run(&["END"], &["hello E", "N", "x"]), ("hello ENx".into(), None));
        assert_eq!(run(&["END"], &["EN"]), ("EN".into(), None));
    }

    #[test]
    fn held_text_is_never_emitted_early() {
        let stops = vec!["STOP".to_string()];
        let mut m = StopMatcher::new(&stops);
        assert_eq!(m.push("abcST").0, "abc");
        assert_eq!(m.push("O").0, "");
        let (t, hit) = m.push("P!");
        assert_eq!((t.as_str(), hit.as_deref()), ("", Some("STOP")));
    }

    #[test]
    fn earliest_stop_wins_and_unicode_is_safe() {
        assert_eq!(run(&["b", "a"], &["xaby"]), ("x".into(), Some("a".into())));
        assert_eq!(run(&["é!"], &["café", "?"]), ("café?".into(), None));
        assert_eq!(run(&[], &["plain"]), ("plain".into(), None));
    }
}
