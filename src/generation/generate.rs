//! Text generation on one sequence: [`Context::generate`] returns a [`Generation`], an
//! iterator of [`Event`]s that ends with a [`Summary`].

use std::time::Instant;

pub use super::options::{CancelToken, Event, GenerateOptions, StopReason, Summary};
use crate::batch::Batch;
use crate::chat::{ChatMessage, ChatTemplate};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::request::{Accepted, Request, RequestSpec, SeqCache};

/// What a [`Session`](crate::Session) keeps between generations on sequence 0: the tokens its
/// cells hold, and the draft model's context when a turn drafted with one.
#[derive(Default)]
pub(crate) struct SessionCache {
    pub(crate) tokens: SeqCache,
    pub(crate) drafter: Option<crate::draft::Drafter>,
}
use crate::vocab::Token;

enum Phase {
    Prefill,
    Sample,
    Decode(Token),
    Finish(StopReason),
    Done,
}

/// A running generation on sequence 0 of a [`Context`]. Iterate it for [`Event`]s.
///
/// Created by [`Context::generate`] (the whole prompt is computed) or
/// [`Session::generate`](crate::Session::generate) (a cached prefix is reused). The prompt is
/// processed on the first `next()`.
pub struct Generation<'c, 'm> {
    ctx: &'c mut Context<'m>,
    /// What sequence 0 holds, when a [`Session`](crate::Session) keeps track of it.
    cache: Option<&'c mut SessionCache>,
    request: Request<'m>,
    pos: i32,
    batch: Batch,
    last_index: i32,
    cancel: Option<CancelToken>,
    phase: Phase,
    /// With speculative decoding: the prompt and the reply so far (what guesses come from),
    /// and the guess of the last decode with how many of its tokens are confirmed so far.
    history: Vec<Token>,
    guess: Option<(Vec<Token>, usize)>,
    /// The draft model's context, with [`Speculation::Draft`](crate::Speculation::Draft).
    drafter: Option<crate::draft::Drafter>,
}

impl<'m> Context<'m> {
    /// Generates from a text prompt (tokenized with BOS as the model wants and with control
    /// tokens parsed). Errors at once when the prompt does not fit the context.
    ///
    /// Runs on sequence 0, which it empties first: the whole prompt is computed. A
    /// [`Session`](crate::Session) reuses the prompt prefix the previous generation left.
    ///
    /// ```
    /// # fn main() -> rocm_llama::Result<()> {
    /// use rocm_llama::{Context, ContextConfig, Event, GenerateOptions, LoadConfig, Model};
    ///
    /// let model = Model::load(rocm_llama::synth::tiny_model()?, &LoadConfig::default())?;
    /// let mut ctx = Context::new(&model, &ContextConfig::default().n_ctx(256))?;
    /// for event in ctx.generate("t1 t2 t3", &GenerateOptions::greedy(8))? {
    ///     match event? {
    ///         Event::Token { text, .. } | Event::Text(text) => print!("{text}"),
    ///         Event::Done(summary) => assert!(summary.generated_tokens <= 8),
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn generate(&mut self, prompt: &str, opts: &GenerateOptions) -> Result<Generation<'_, 'm>> {
        Generation::from_text(self, None, prompt, opts)
    }

    /// Formats `messages` with a chat template and generates the assistant's reply.
    pub fn chat(
        &mut self,
        messages: &[ChatMessage],
        template: &ChatTemplate,
        opts: &GenerateOptions,
    ) -> Result<Generation<'_, 'm>> {
        Generation::from_chat(self, None, messages, template, opts)
    }

    /// Generates from prompt tokens.
    pub fn generate_tokens(&mut self, prompt: Vec<Token>, opts: &GenerateOptions) -> Result<Generation<'_, 'm>> {
        Generation::new(self, None, prompt, opts)
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

impl<'c, 'm> Generation<'c, 'm> {
    pub(crate) fn new(
        ctx: &'c mut Context<'m>,
        mut cache: Option<&'c mut SessionCache>,
        prompt: Vec<Token>,
        opts: &GenerateOptions,
    ) -> Result<Self> {
        let (spec, sampler) = RequestSpec::resolve(ctx.model(), prompt, opts, ctx.n_ctx_seq())?;
        if let Some(set) = &spec.lora {
            ctx.set_lora(set)?;
        }
        let history = if spec.speculation.is_some() { spec.prompt.clone() } else { Vec::new() };
        let mut request = Request::new(ctx.model(), spec, sampler, Instant::now());
        request.try_device(ctx, 0)?;
        let batch = Batch::new(ctx.n_batch() as usize, 1)?;
        // A session keeps its draft context between turns (a turn with the same draft and
        // context size reuses it, and the draft's cells of the conversation with it).
        let kept = cache.as_deref_mut().and_then(|c| c.drafter.take());
        let drafter = match &request.spec.speculation {
            Some(crate::speculative::Speculation::Draft { draft, .. }) => match kept {
                Some(d) if d.fits(draft, ctx.n_ctx_seq()) => Some(d),
                _ => Some(crate::draft::Drafter::new(draft, 1, ctx.n_ctx_seq(), ctx.n_batch(), ctx.threads().0)?),
            },
            _ => kept,
        };
        Ok(Generation {
            drafter,
            ctx,
            cache,
            request,
            pos: 0,
            batch,
            last_index: -1,
            cancel: opts.cancel.clone(),
            phase: Phase::Prefill,
            history,
            guess: None,
        })
    }

    /// Starts from a text prompt, tokenized with BOS as the model wants and with control
    /// tokens parsed (for [`Context::generate`] and [`Session`](crate::Session)).
    pub(crate) fn from_text(
        ctx: &'c mut Context<'m>,
        cache: Option<&'c mut SessionCache>,
        prompt: &str,
        opts: &GenerateOptions,
    ) -> Result<Self> {
        let tokens = ctx.model().vocab().tokenize(prompt, true, true)?;
        Generation::new(ctx, cache, tokens, opts)
    }

    /// Starts the assistant's reply to `messages` formatted with `template`.
    pub(crate) fn from_chat(
        ctx: &'c mut Context<'m>,
        cache: Option<&'c mut SessionCache>,
        messages: &[ChatMessage],
        template: &ChatTemplate,
        opts: &GenerateOptions,
    ) -> Result<Self> {
        let tokens = template.tokens(ctx.model(), messages, &opts.chat)?;
        Generation::new(ctx, cache, tokens, opts)
    }

    /// Runs to the end; returns the whole text and the summary.
    pub fn collect_text(self) -> Result<(String, Summary)> {
        collect_events(self)
    }

    /// Computes the prompt, reusing what the session's cache of sequence 0 shares with it.
    fn prefill(&mut self) -> Result<()> {
        let ctx = &mut *self.ctx;
        let prompt = &self.request.spec.prompt;
        let lora = crate::adapter::LoraKey::of(ctx.lora());
        let common = match self.cache.as_deref_mut() {
            Some(cache) => cache.tokens.reuse(ctx, 0, prompt, &lora, usize::MAX)?,
            None => {
                ctx.seq_remove(Some(0), ..)?;
                0
            }
        };
        self.request.cached = common;
        let n_batch = ctx.n_batch() as usize;
        let rest = &prompt[common..];
        let mut pos = common as i32;
        for (k, chunk) in rest.chunks(n_batch).enumerate() {
            self.batch.clear();
            let last = (k + 1) * n_batch >= rest.len();
            self.batch.add_sequence(chunk, pos, 0, last)?;
            ctx.decode(&self.batch)?;
            if let Some(cache) = self.cache.as_deref_mut() {
                cache.tokens.extend(chunk);
            }
            pos += chunk.len() as i32;
        }
        self.last_index = self.batch.len() as i32 - 1;
        self.pos = pos;
        Ok(())
    }

    /// Decodes `token` at the next position, with a speculative guess of the tokens after
    /// it when one is asked for and found (each guessed position gives logits to check).
    fn decode_one(&mut self, token: Token) -> Result<()> {
        self.batch.clear();
        self.batch.add(token, self.pos, &[0], true)?;
        let guess = self.guess_after(token);
        for (i, &t) in guess.iter().enumerate() {
            self.batch.add(t, self.pos + 1 + i as i32, &[0], true)?;
        }
        self.ctx.decode(&self.batch)?;
        if !guess.is_empty() {
            self.request.drafts.drafted += guess.len();
            self.guess = Some((guess, 0));
        }
        if let Some(cache) = self.cache.as_deref_mut() {
            cache.tokens.extend(&[token]);
        }
        self.pos += 1;
        self.last_index = 0;
        Ok(())
    }

    fn step(&mut self) -> Result<Option<Event>> {
        loop {
            if self.cancel.as_ref().is_some_and(|c| c.is_cancelled())
                && !matches!(self.phase, Phase::Done | Phase::Finish(_))
            {
                self.phase = Phase::Finish(StopReason::Cancelled);
            }
            match std::mem::replace(&mut self.phase, Phase::Done) {
                Phase::Done => return Ok(None),
                Phase::Prefill => {
                    let now = Instant::now();
                    self.request.submitted = now;
                    self.request.started = now;
                    self.prefill()?;
                    self.request.prefilled();
                    self.phase = Phase::Sample;
                }
                Phase::Decode(t) => {
                    self.decode_one(t)?;
                    self.phase = Phase::Sample;
                }
                Phase::Sample => {
                    if self.request.budget_spent() {
                        self.phase = Phase::Finish(StopReason::MaxTokens);
                        continue;
                    }
                    let t = self.request.sample(self.ctx, self.last_index)?;
                    match self.request.accept(t, self.pos as usize, self.ctx.n_ctx_seq() as usize)? {
                        Accepted::EndOfGeneration => self.phase = Phase::Finish(StopReason::Eos),
                        Accepted::Token { id, text, stop } => {
                            self.phase = match stop {
                                Some(reason) => Phase::Finish(reason),
                                None if self.confirms_guess(id)? => Phase::Sample,
                                None => Phase::Decode(id),
                            };
                            let logprobs = self.request.take_logprobs();
                            return Ok(Some(Event::Token { id, text, logprobs }));
                        }
                    }
                }
                Phase::Finish(reason) => {
                    self.drop_guess()?;
                    let rest = self.request.tail(&reason);
                    if !rest.is_empty() {
                        // Emit the held text first; the summary follows on the next call.
                        self.phase = Phase::Finish(reason);
                        return Ok(Some(Event::Text(rest)));
                    }
                    self.phase = Phase::Done;
                    return Ok(Some(Event::Done(self.request.summary(reason))));
                }
            }
        }
    }
}

impl Generation<'_, '_> {
    /// The guess of the tokens after `token` (already accepted), within the batch, the
    /// context and the tokens still to generate; empty without speculation.
    fn guess_after(&mut self, token: Token) -> Vec<Token> {
        let Some(spec) = &self.request.spec.speculation else { return Vec::new() };
        self.history.push(token);
        // Room: the batch, the context (each guessed token takes a cell) and the budget (the
        // last token of the budget needs no guess after it).
        let batch_room = self.ctx.n_batch() as usize - 1;
        let ctx_room = (self.ctx.n_ctx_seq() as usize).saturating_sub(self.pos as usize + 2);
        let budget_room = self.request.spec.max_tokens.saturating_sub(self.request.generated + 1);
        spec.guess(self.drafter.as_mut(), 0, &self.history, batch_room.min(ctx_room).min(budget_room))
    }

    /// After the pick `id` at a guessed decode: whether it is the next token of the guess, so
    /// the guess's cell already holds it and the next pick reads the following position's
    /// logits with no decode. Otherwise the rest of the guess leaves the KV cache and `id`
    /// is decoded as usual.
    fn confirms_guess(&mut self, id: Token) -> Result<bool> {
        let Some((guess, at)) = self.guess.as_mut() else { return Ok(false) };
        if guess.get(*at) != Some(&id) {
            self.drop_guess()?;
            return Ok(false);
        }
        *at += 1;
        self.request.drafts.accepted += 1;
        self.history.push(id);
        if let Some(cache) = self.cache.as_deref_mut() {
            cache.tokens.extend(&[id]);
        }
        self.pos += 1;
        self.last_index += 1;
        Ok(true)
    }

    /// Removes the cells of guessed tokens not confirmed (none if there is no guess).
    fn drop_guess(&mut self) -> Result<()> {
        if self.guess.take().is_some() {
            self.ctx.seq_remove(Some(0), self.pos..)?;
        }
        Ok(())
    }
}

impl Drop for Generation<'_, '_> {
    /// A chain attached for this generation leaves with it: later decodes on sequence 0
    /// give logits again.
    fn drop(&mut self) {
        if self.request.sampler.is_none() {
            let _ = self.ctx.clear_device_sampler(0);
        }
        // The draft context goes back to the session for its next turn.
        if let Some(cache) = self.cache.as_deref_mut() {
            if self.drafter.is_some() {
                cache.drafter = self.drafter.take();
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
