//! One request's state from prompt to summary, shared by [`Generation`](crate::Generation)
//! and the engine's worker: the prompt checks, the sampler, the streaming detokenizer, the
//! stop-string matcher, counts and timers, and prompt-prefix reuse against the tokens a
//! sequence already holds in the KV cache. Both paths drive it the same way:
//! [`SeqCache::reuse`] before the prompt is computed, [`Request::accept`] for every sampled
//! token, [`Request::tail`] and [`Request::summary`] at the end.

use std::time::{Duration, Instant};

use super::options::{GenerateOptions, StopMatcher, StopReason, Summary};
use crate::adapter::{LoraAdapter, LoraKey};
use crate::batch::SeqId;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::logprobs::TokenLogprobs;
use crate::memory::prefix_intact;
use crate::model::Model;
use crate::sampler::{Sampler, SamplingParams};
use crate::vocab::{Detokenizer, Token, Vocab};

/// Checks a prompt before anything is computed: not empty, every token in the vocabulary,
/// and room left in a sequence of `n_ctx_seq` cells for at least one generated token.
pub(crate) fn check_prompt(vocab: Vocab<'_>, prompt: &[Token], n_ctx_seq: u32) -> Result<()> {
    if prompt.is_empty() {
        return Err(Error::Tokenize("the prompt is empty".into()));
    }
    for &t in prompt {
        vocab.check(t)?;
    }
    if prompt.len() >= n_ctx_seq as usize {
        return Err(Error::ContextOverflow { needed: prompt.len() + 1, n_ctx: n_ctx_seq });
    }
    Ok(())
}

/// How many leading tokens `a` and `b` share.
pub(crate) fn common_prefix(a: &[Token], b: &[Token]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// The tokens known to sit in one sequence's KV cells, in order: what a later prompt with
/// the same start can skip.
#[derive(Debug, Default, Clone)]
pub(crate) struct SeqCache {
    tokens: Vec<Token>,
    /// The adapters the cells were computed under: a prompt under another set shares nothing.
    lora: LoraKey,
}

impl SeqCache {
    pub(crate) fn tokens(&self) -> &[Token] {
        &self.tokens
    }

    pub(crate) fn len(&self) -> usize {
        self.tokens.len()
    }

    /// How many leading tokens `prompt`, to be computed under the adapters `lora`, shares
    /// with the cache (none when the cache was computed under another set).
    pub(crate) fn common_prefix(&self, prompt: &[Token], lora: &LoraKey) -> usize {
        if *lora != self.lora {
            return 0;
        }
        common_prefix(&self.tokens, prompt)
    }

    /// Records tokens a successful decode put into the sequence.
    pub(crate) fn extend(&mut self, tokens: &[Token]) {
        self.tokens.extend_from_slice(tokens);
    }

    /// Forgets the tokens after the first `len` (their cells were removed).
    pub(crate) fn truncate(&mut self, len: usize) {
        self.tokens.truncate(len);
    }

    /// Forgets everything (the cells were freed, or changed by something that does not
    /// report here).
    pub(crate) fn clear(&mut self) {
        self.tokens.clear();
    }

    /// Prepares sequence `seq` for `prompt`: keeps the longest cached prefix it shares (never
    /// the prompt's last token, whose logits must be computed again) and removes every cell
    /// after it, keeping at most `limit` tokens. Returns how many prompt tokens are reused.
    /// Starts over with an empty sequence when llama.cpp cannot cut the sequence there
    /// (recurrent models) or what is left no longer holds what the next position attends to
    /// (see [`prefix_intact`](crate::memory::prefix_intact)).
    pub(crate) fn reuse(
        &mut self,
        ctx: &mut Context<'_>,
        seq: SeqId,
        prompt: &[Token],
        lora: &LoraKey,
        limit: usize,
    ) -> Result<usize> {
        let common = self.common_prefix(prompt, lora).min(prompt.len().saturating_sub(1)).min(limit);
        let reused = common > 0 && ctx.seq_remove(Some(seq), common as i32..)? && prefix_intact(ctx, seq, common)?;
        if reused {
            self.tokens.truncate(common);
            Ok(common)
        } else {
            ctx.seq_remove(Some(seq), ..)?;
            self.tokens.clear();
            self.lora = lora.clone();
            Ok(0)
        }
    }

    /// Makes `self` (sequence `dst`) hold the first `len` tokens of `src_cache` (sequence
    /// `src`), copied on the device, where llama.cpp keeps the cells: a whole-sequence copy then
    /// a cut when each sequence has a KV buffer of its own (the data moves at the next decode,
    /// before that decode's own work), the cells shared without a copy in a unified buffer.
    /// Returns the tokens that `dst` holds afterwards: `len`, or 0 when the copy could not be
    /// cut there (then `dst` is empty).
    pub(crate) fn copy_from(
        &mut self,
        ctx: &mut Context<'_>,
        dst: SeqId,
        src: SeqId,
        src_cache: &SeqCache,
        len: usize,
    ) -> Result<usize> {
        let len = len.min(src_cache.len());
        ctx.seq_remove(Some(dst), ..)?;
        self.tokens.clear();
        if len == 0 || src == dst {
            return Ok(0);
        }
        if ctx.kv_unified {
            ctx.seq_copy(src, dst, ..len as i32)?;
        } else {
            ctx.seq_copy(src, dst, ..)?;
            if !ctx.seq_remove(Some(dst), len as i32..)? {
                ctx.seq_remove(Some(dst), ..)?;
                return Ok(0);
            }
        }
        if ctx.seq_pos_max(dst)? != Some(len as i32 - 1) || !prefix_intact(ctx, dst, len)? {
            ctx.seq_remove(Some(dst), ..)?;
            return Ok(0);
        }
        self.tokens.extend_from_slice(&src_cache.tokens[..len]);
        self.lora = src_cache.lora.clone();
        Ok(len)
    }
}

/// What [`Request::accept`] made of a sampled token.
pub(crate) enum Accepted {
    /// An end-of-generation token: nothing to emit; finish with [`StopReason::Eos`].
    EndOfGeneration,
    /// A generated token with the text it releases; `stop` when the request ends with it.
    Token { id: Token, text: String, stop: Option<StopReason> },
}

/// A generation request resolved once, on the caller's thread, into what every later stage
/// only reads: the checked prompt, the final sampling settings (the caller's, with the grammar
/// of its JSON schema), the stops and the limits. The engine's worker and the sampler placement
/// (device or host, and the host fallback) build from this and nothing else, so no copy of the
/// settings can disagree with another, and no conversion runs on the engine's thread.
#[derive(Debug, Clone)]
pub(crate) struct RequestSpec {
    pub(crate) prompt: Vec<Token>,
    /// The chain to run, grammar included.
    pub(crate) sampling: SamplingParams,
    pub(crate) max_tokens: usize,
    pub(crate) stop: Vec<String>,
    /// Log-probabilities to report with each token (0: none), at most the vocabulary.
    pub(crate) n_probs: usize,
    /// The adapters to decode under (`None`: a context's as they are; the engine: none),
    /// each checked to belong to the model, with a finite scale.
    pub(crate) lora: Option<Vec<(LoraAdapter, f32)>>,
    /// `lora`'s key (none given: no adapters).
    pub(crate) lora_key: LoraKey,
    /// Speculative decoding, where the runner supports it.
    pub(crate) speculation: Option<crate::speculative::Speculation>,
}

impl RequestSpec {
    /// Checks `prompt` for a sequence of `n_ctx_seq` cells ([`check_prompt`]), turns a JSON
    /// schema into its grammar, and builds the chain once, so a bad grammar or setting fails
    /// here. Returns the spec with that chain.
    pub(crate) fn resolve<'m>(
        model: &'m Model,
        prompt: Vec<Token>,
        opts: &GenerateOptions,
        n_ctx_seq: u32,
    ) -> Result<(RequestSpec, Sampler<'m>)> {
        check_prompt(model.vocab(), &prompt, n_ctx_seq)?;
        for (a, scale) in opts.lora.iter().flatten() {
            if !a.belongs_to(model) {
                return Err(Error::invalid("lora", format!("{} was loaded for another model", a.path().display())));
            }
            if !scale.is_finite() {
                return Err(Error::invalid("lora scale", format!("{scale} is not finite")));
            }
        }
        if let Some(s) = &opts.speculation {
            s.check()?;
            if let crate::speculative::Speculation::Draft { draft, .. } = s {
                if !draft.drafts_for(model) {
                    return Err(Error::invalid("speculation", "the draft model was checked for another target model"));
                }
            }
            if model.is_recurrent() {
                return Err(Error::Unsupported(
                    "speculative decoding on a recurrent or hybrid model: its sequences cannot be cut back \
                     when a guess is wrong"
                        .into(),
                ));
            }
        }
        let sampling = match &opts.json_schema {
            None => opts.sampling.clone(),
            Some(_) if opts.sampling.grammar.is_some() => {
                return Err(Error::invalid("json_schema", "give a grammar or a JSON schema, not both"))
            }
            Some(schema) => opts.sampling.clone().grammar(crate::schema::to_grammar(schema)?),
        };
        let sampler = sampling.build(model)?;
        let spec = RequestSpec {
            prompt,
            sampling,
            max_tokens: opts.max_tokens,
            stop: opts.stop.clone(),
            n_probs: opts.n_probs.min(model.vocab().n_tokens().max(0) as usize),
            lora: opts.lora.clone(),
            lora_key: LoraKey::of(opts.lora.as_deref().unwrap_or_default()),
            speculation: opts.speculation.clone(),
        };
        Ok((spec, sampler))
    }
}

/// A request from its prompt to its summary.
pub(crate) struct Request<'m> {
    pub(crate) spec: RequestSpec,
    /// The chain when it runs on the host; `None` when it runs inside the decode graph,
    /// attached to the request's sequence in the context.
    pub(crate) sampler: Option<Sampler<'m>>,
    detok: Detokenizer<'m>,
    stops: StopMatcher,
    vocab: Vocab<'m>,
    /// Prompt tokens not computed: reused from the sequence's cache or copied from another's.
    pub(crate) cached: usize,
    /// Of `cached`, the tokens copied from another sequence (an engine's other slot).
    pub(crate) shared: usize,
    /// Tokens generated (an end-of-generation token is not counted).
    pub(crate) generated: usize,
    /// Speculative decoding's counts.
    pub(crate) drafts: crate::speculative::DraftCounts,
    /// When the caller handed the request over: time to first token and total time count
    /// from here.
    pub(crate) submitted: Instant,
    /// When its prompt started being computed: prefill speed counts from here.
    pub(crate) started: Instant,
    prefill_done: Option<Instant>,
    first_token: Option<Instant>,
    /// The log-probabilities of the token sampled last, until its event takes them.
    logprobs: Option<TokenLogprobs>,
}

impl<'m> Request<'m> {
    /// The request for `spec`, sampling with `sampler` (built from `spec.sampling`).
    pub(crate) fn new(model: &'m Model, spec: RequestSpec, sampler: Sampler<'m>, submitted: Instant) -> Self {
        let vocab = model.vocab();
        Request {
            stops: StopMatcher::new(&spec.stop),
            spec,
            sampler: Some(sampler),
            detok: vocab.detokenizer(false),
            vocab,
            cached: 0,
            shared: 0,
            generated: 0,
            drafts: Default::default(),
            submitted,
            started: submitted,
            prefill_done: None,
            first_token: None,
            logprobs: None,
        }
    }

    /// Whether this request's chain goes to the device: its placement prefers it and every
    /// stage can run there.
    pub(crate) fn wants_device(&self) -> bool {
        self.spec.sampling.placement.prefers_device()
            && self.spec.n_probs == 0
            // Speculation checks each guessed position's pick on the host.
            && self.spec.speculation.is_none()
            && self.sampler.as_ref().is_some_and(Sampler::runs_on_device)
    }

    /// Moves the chain onto the device for sequence `seq` when [`wants_device`]. Returns
    /// whether it runs there now; when llama.cpp will not take it, the request samples on
    /// the host with a chain built again from the same spec.
    ///
    /// [`wants_device`]: Request::wants_device
    pub(crate) fn try_device(&mut self, ctx: &mut Context<'m>, seq: SeqId) -> Result<bool> {
        if !self.wants_device() {
            return Ok(false);
        }
        let Some(chain) = self.sampler.take() else { return Ok(true) };
        match ctx.set_device_sampler(seq, chain) {
            Ok(()) => Ok(true),
            Err(e) => {
                tracing::debug!("sampling on the host: {e}");
                self.sampler = Some(self.spec.sampling.build(ctx.model())?);
                Ok(false)
            }
        }
    }

    /// Picks the next token from batch index `index` of the last decode: on the host from its
    /// logits, or the token the device sampler picked.
    pub(crate) fn sample(&mut self, ctx: &mut Context<'m>, index: i32) -> Result<Token> {
        let t = match self.sampler.as_mut() {
            Some(s) => s.sample(ctx, index)?,
            None => ctx.sampled_token(index)?,
        };
        if self.spec.n_probs > 0 {
            self.note_logprobs(ctx.logits(index)?, t)?;
        }
        Ok(t)
    }

    /// Samples from a logits row on the host (the engine's sampling threads).
    pub(crate) fn sample_logits(&mut self, row: &[f32]) -> Result<Token> {
        let s = self
            .sampler
            .as_mut()
            .ok_or_else(|| Error::Internal("logits for a request sampled on the device".into()))?;
        let t = s.sample_logits(row)?;
        if self.spec.n_probs > 0 {
            self.note_logprobs(row, t)?;
        }
        Ok(t)
    }

    fn note_logprobs(&mut self, row: &[f32], t: Token) -> Result<()> {
        self.logprobs = Some(crate::logprobs::logprobs(&self.vocab, row, t, self.spec.n_probs)?);
        Ok(())
    }

    /// The log-probabilities of the token sampled last, once.
    pub(crate) fn take_logprobs(&mut self) -> Option<TokenLogprobs> {
        self.logprobs.take()
    }

    /// Whether `max_tokens` are out (`max_tokens: 0` computes and caches the prompt and
    /// generates nothing).
    pub(crate) fn budget_spent(&self) -> bool {
        self.generated >= self.spec.max_tokens
    }

    /// Marks the end of the prompt's computation (the first logits are ready).
    pub(crate) fn prefilled(&mut self) {
        self.prefill_done.get_or_insert_with(Instant::now);
    }

    /// Takes a sampled token that would be decoded at position `next_pos` of a sequence of
    /// `n_ctx_seq` cells: counts it, turns it into text held back while it could still start
    /// a stop string, and says whether the request ends here.
    pub(crate) fn accept(&mut self, id: Token, next_pos: usize, n_ctx_seq: usize) -> Result<Accepted> {
        self.first_token.get_or_insert_with(Instant::now);
        if self.vocab.is_eog(id) {
            return Ok(Accepted::EndOfGeneration);
        }
        self.generated += 1;
        let piece = self.detok.push(id)?;
        let (text, hit) = self.stops.push(&piece);
        let stop = if let Some(s) = hit {
            Some(StopReason::StopString(s))
        } else if self.budget_spent() {
            Some(StopReason::MaxTokens)
        } else if next_pos + 1 >= n_ctx_seq {
            Some(StopReason::ContextFull)
        } else {
            None
        };
        Ok(Accepted::Token { id, text, stop })
    }

    /// The text still held when the request ends for `reason` (nothing after a stop string,
    /// which is never part of the output). A second call returns nothing.
    pub(crate) fn tail(&mut self, reason: &StopReason) -> String {
        if matches!(reason, StopReason::StopString(_)) {
            return String::new();
        }
        let rest = self.detok.finish();
        let (mut text, _) = self.stops.push(&rest);
        text.push_str(&self.stops.flush());
        text
    }

    /// Counts and timings, as of now.
    pub(crate) fn summary(&self, stop_reason: StopReason) -> Summary {
        let now = Instant::now();
        let prefill_done = self.prefill_done.unwrap_or(now);
        let first = self.first_token.unwrap_or(now);
        let prefill_secs = prefill_done.saturating_duration_since(self.started).as_secs_f64();
        let decode_secs = (now - first).as_secs_f64();
        let computed = self.spec.prompt.len().saturating_sub(self.cached);
        Summary {
            stop_reason,
            prompt_tokens: self.spec.prompt.len(),
            cached_prompt_tokens: self.cached,
            shared_prompt_tokens: self.shared,
            generated_tokens: self.generated,
            time_to_first_token: first.saturating_duration_since(self.submitted),
            prefill_tokens_per_s: if prefill_secs > 0.0 { computed as f64 / prefill_secs } else { 0.0 },
            decode_tokens_per_s: if decode_secs > 0.0 && self.generated > 1 {
                (self.generated - 1) as f64 / decode_secs
            } else {
                0.0
            },
            total_time: now - self.submitted,
            draft_tokens: self.drafts.drafted,
            draft_tokens_accepted: self.drafts.accepted,
        }
    }
}

/// The summary of a request cancelled before it started.
pub(crate) fn cancelled_before_start(prompt_tokens: usize, submitted: Instant) -> Summary {
    Summary {
        stop_reason: StopReason::Cancelled,
        prompt_tokens,
        cached_prompt_tokens: 0,
        shared_prompt_tokens: 0,
        generated_tokens: 0,
        time_to_first_token: Duration::ZERO,
        prefill_tokens_per_s: 0.0,
        decode_tokens_per_s: 0.0,
        total_time: submitted.elapsed(),
        draft_tokens: 0,
        draft_tokens_accepted: 0,
    }
}
