//! The engine's worker thread: slots, the scheduler, batched decode and parallel sampling.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Receiver, TryRecvError};

use super::stream::EventSender;
use super::{EngineConfig, SharedStats};
use crate::adapter::LoraKey;
use crate::batch::{Batch, SeqId};
use crate::context::Context;
use crate::embed::{EmbedConfig, Embedder};
use crate::error::{Error, Result};
use crate::generate::{CancelToken, Event, StopReason};
use crate::request::{cancelled_before_start, Accepted, Request, RequestSpec, SeqCache};
use crate::sampler::SamplingParams;
use crate::vocab::Token;

/// One request's place in the engine's admission count (`in_flight`), held from
/// `generate` until the request ends; released once, by [`Permit::release`] or on drop.
pub(crate) struct Permit(Option<Arc<SharedStats>>);

impl Permit {
    /// Takes a place when fewer than `limit` requests are in flight.
    pub(crate) fn acquire(stats: &Arc<SharedStats>, limit: usize) -> Option<Permit> {
        stats
            .in_flight
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < limit).then_some(n + 1))
            .ok()
            .map(|_| Permit(Some(stats.clone())))
    }

    fn release(&mut self) {
        if let Some(stats) = self.0.take() {
            stats.in_flight.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.release();
    }
}

/// A request on its way to a slot.
pub(crate) struct Job {
    pub(crate) id: u64,
    pub(crate) events: EventSender,
    /// Cancelled by this request's stream (drop or `cancel`).
    pub(crate) cancel: CancelToken,
    /// The caller's own token from its options, which other requests may share.
    pub(crate) caller_cancel: Option<CancelToken>,
    pub(crate) permit: Permit,
    pub(crate) submitted: Instant,
}

/// A request as the caller submits it: its job, and what it asks for, resolved on the
/// caller's thread. At admission the spec moves into the slot's [`Request`].
pub(crate) struct Submission {
    pub(crate) job: Job,
    pub(crate) spec: RequestSpec,
}

impl Job {
    /// Cancelled through its stream or through the caller's own token in the options.
    fn cancelled(&self) -> bool {
        self.cancel.is_cancelled() || self.caller_cancel.as_ref().is_some_and(CancelToken::is_cancelled)
    }

    /// Sends the request's last event, after giving its place back, so a caller that sees the
    /// end can submit again at once.
    fn end(&mut self, last: Result<Event>) {
        self.permit.release();
        let _ = self.events.send(last);
    }
}

/// An embedding request: texts already tokenized and checked on the caller's thread.
pub(crate) struct EmbedJob {
    pub(crate) inputs: Vec<Vec<Token>>,
    /// The embedder's settings (pooling, normalisation from the caller; sizes from the engine).
    pub(crate) config: EmbedConfig,
    pub(crate) reply: crossbeam_channel::Sender<Result<Vec<Vec<f32>>>>,
}

/// An embedding request in progress: one decode of it per engine step.
struct EmbedWork {
    job: EmbedJob,
    done: Vec<Vec<f32>>,
}

/// Something done to one slot's KV state between steps.
pub(crate) enum SlotAction {
    List,
    Save(std::path::PathBuf),
    Restore(std::path::PathBuf),
    Erase,
}

pub(crate) enum SlotReply {
    List(Vec<super::SlotInfo>),
    File(super::SlotFile),
    Erased(usize),
}

pub(crate) struct SlotJob {
    pub(crate) id: usize,
    pub(crate) action: SlotAction,
    pub(crate) reply: crossbeam_channel::Sender<Result<SlotReply>>,
}

/// What handles send to the worker.
pub(crate) enum Command {
    Submit(Box<Submission>),
    Embed(Box<EmbedJob>),
    Slot(Box<SlotJob>),
    Shutdown,
}

/// A running request inside a slot.
struct Active<'m> {
    job: Job,
    request: Request<'m>,
    /// Prompt tokens already in the KV cache (from the slot cache or computed).
    prefilled: usize,
    /// A sampled token that still has to be decoded.
    pending: Option<Token>,
    /// Batch index whose logits belong to this sequence in the current step.
    output: Option<i32>,
    /// What sampling decided this step (set on a sampling thread, read by the worker).
    outcome: Option<Result<Option<StopReason>>>,
    /// Set while the request waits for another slot to finish computing the prefix they
    /// share; its own prompt is not computed meanwhile.
    wait: Option<Wait>,
    /// The request's tracing span.
    span: tracing::Span,
    /// Of the generated tokens, how many the engine's counters already hold.
    counted: usize,
    /// Of the speculative counts, those the engine's counters already hold.
    counted_drafts: crate::speculative::DraftCounts,
    /// With speculative decoding: the prompt and the tokens accepted so far (what guesses
    /// come from), the guess decoded after `pending` this step, and after sampling, how many
    /// leading cells of the sequence stand (the rest held guessed tokens not confirmed).
    history: Vec<Token>,
    guess: Vec<Token>,
    keep: Option<usize>,
}

/// What a waiting request waits for: slot `donor`, while it runs request `donor_job`, to hold
/// the first `upto` tokens of the waiting prompt.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Wait {
    donor: usize,
    donor_job: u64,
    upto: usize,
}

/// Where a new request's prompt prefix comes from.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Source {
    /// What its own slot holds (possibly nothing).
    Own,
    /// The first `len` tokens another slot holds, copied now.
    Copy { from: usize, len: usize },
    /// A prefix another slot is still computing: copied when it is done.
    Wait(Wait),
}

/// With a KV buffer per slot, a copy moves a whole slot's buffer: below this many tokens
/// gained, computing them costs less than the copy.
const MIN_COPY_TOKENS: usize = 64;

struct Slot<'m> {
    seq: SeqId,
    /// The settings of the sampler chain attached to this sequence on the device, if any. It
    /// stays attached between requests: a request with the same settings resets and reuses
    /// it, since every change makes llama.cpp plan its graph again.
    device_sampler: Option<SamplingParams>,
    /// Tokens in this sequence's KV cells, in order.
    cached: SeqCache,
    /// Of `cached`, the leading cells computed as one prompt, in chunks of the engine's
    /// `n_batch` from position 0: what a reproducible engine may reuse, since a request
    /// alone would compute them in chunks of the same shapes.
    prompt_cells: usize,
    active: Option<Active<'m>>,
}

pub(crate) struct Worker<'m> {
    ctx: Context<'m>,
    batch: Batch,
    slots: Vec<Slot<'m>>,
    queue: VecDeque<Submission>,
    stats: Arc<SharedStats>,
    n_batch: usize,
    n_ctx_per_seq: usize,
    /// Each sequence in a batch of its own, prefixes reused in whole chunks of prompt cells
    /// (`EngineConfig::reproducible`).
    reproducible: bool,
    /// Prefixes travel between slots (`EngineConfig::prefix_sharing`).
    sharing: bool,
    /// Reused prefixes are cut to a multiple of this (`n_batch` when reproducible, else 1).
    align: usize,
    /// The fewest tokens a copy from another slot must gain.
    min_copy: usize,
    /// The most tokens a step with speculative guesses decodes (`EngineConfig::draft_step_tokens`).
    draft_step_tokens: usize,
    /// The draft model's context, a sequence per slot (`EngineConfig::draft`).
    drafter: Option<crate::draft::Drafter>,
    /// Threads that sample many sequences at once (none on a single CPU, or when the pool
    /// could not start: then one thread samples them all).
    pool: Option<rayon::ThreadPool>,
    /// The context for embedding requests, made on the first one (and again when a request
    /// asks for another pooling): its own small KV cache beside the generation context's.
    embedder: Option<Embedder<'m>>,
    embeds: VecDeque<EmbedWork>,
    shutting_down: bool,
}

impl<'m> Worker<'m> {
    pub(crate) fn new(mut ctx: Context<'m>, config: &EngineConfig, stats: Arc<SharedStats>) -> Result<Self> {
        let n_batch = ctx.n_batch() as usize;
        let slots = (0..config.n_seq_max as SeqId)
            .map(|seq| Slot { seq, device_sampler: None, cached: SeqCache::default(), prompt_cells: 0, active: None })
            .collect();
        let min_copy = if ctx.kv_unified { 1 } else { MIN_COPY_TOKENS };
        let mut drafter = match &config.draft {
            Some(d) => Some(crate::draft::Drafter::new(
                d,
                config.n_seq_max,
                config.n_ctx_per_seq,
                n_batch as u32,
                ctx.threads().0,
            )?),
            None => None,
        };
        // Both models once before the first request (EngineConfig::warmup), so that it does
        // not wait for the backend's first-use work.
        if config.warmup {
            ctx.warm_up()?;
            if let Some(drafter) = &mut drafter {
                drafter.warm_up()?;
            }
        }
        Ok(Worker {
            batch: Batch::new(n_batch, 1)?,
            ctx,
            slots,
            queue: VecDeque::new(),
            stats,
            n_batch,
            n_ctx_per_seq: config.n_ctx_per_seq as usize,
            reproducible: config.reproducible,
            sharing: config.prefix_sharing,
            align: if config.reproducible { n_batch.max(1) } else { 1 },
            min_copy,
            draft_step_tokens: config.draft_step_tokens,
            drafter,
            pool: sampling_pool(config.n_seq_max as usize),
            embedder: None,
            embeds: VecDeque::new(),
            shutting_down: false,
        })
    }

    pub(crate) fn run(&mut self, rx: Receiver<Command>) {
        loop {
            let idle = self.queue.is_empty() && self.embeds.is_empty() && self.slots.iter().all(|s| s.active.is_none());
            if idle {
                match rx.recv() {
                    Ok(cmd) => self.command(cmd),
                    Err(_) => self.shutting_down = true,
                }
            }
            loop {
                match rx.try_recv() {
                    Ok(cmd) => self.command(cmd),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        self.shutting_down = true;
                        break;
                    }
                }
            }
            if self.shutting_down {
                self.fail_all();
                return;
            }
            let t0 = Instant::now();
            // Embedding requests take one decode per step beside generation, so neither
            // starves the other.
            self.embed_step();
            self.step();
            self.stats.busy_ns.fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
            self.publish();
        }
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Submit(submission) => self.queue.push_back(*submission),
            Command::Embed(job) => self.embeds.push_back(EmbedWork { job: *job, done: Vec::new() }),
            Command::Slot(job) => {
                let answer = self.slot_action(job.id, job.action);
                let _ = job.reply.send(answer);
            }
            Command::Shutdown => self.shutting_down = true,
        }
    }

    /// Lists, saves, restores or erases a slot's KV state. Runs between steps, when no copy
    /// between slots is pending (each is applied by the decode of the step that planned it).
    fn slot_action(&mut self, id: usize, action: SlotAction) -> Result<SlotReply> {
        let n_ctx = self.n_ctx_per_seq as u32;
        if let SlotAction::List = action {
            let slots = self
                .slots
                .iter()
                .map(|s| super::SlotInfo {
                    id: s.seq as u32,
                    n_ctx,
                    is_processing: s.active.is_some(),
                    cached_tokens: s.cached.len(),
                })
                .collect();
            return Ok(SlotReply::List(slots));
        }
        let slot = &mut self.slots[id];
        if slot.active.is_some() {
            return Err(Error::SlotBusy { slot: id as u32 });
        }
        match action {
            SlotAction::List => Err(Error::Engine("a slot list names no slot".into())),
            SlotAction::Save(path) => {
                let bytes = crate::seq_state::save(&self.ctx, slot.seq, slot.cached.tokens(), &path)?;
                Ok(SlotReply::File(super::SlotFile { tokens: slot.cached.len(), bytes }))
            }
            SlotAction::Restore(path) => {
                slot.cached.clear();
                slot.prompt_cells = 0;
                let tokens = crate::seq_state::load(&mut self.ctx, slot.seq, &path)?;
                slot.cached.extend(&tokens);
                let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                self.publish();
                Ok(SlotReply::File(super::SlotFile { tokens: tokens.len(), bytes }))
            }
            SlotAction::Erase => {
                let n = slot.cached.len();
                self.ctx.seq_remove(Some(slot.seq), ..)?;
                slot.cached.clear();
                slot.prompt_cells = 0;
                self.publish();
                Ok(SlotReply::Erased(n))
            }
        }
    }

    /// One decode of the oldest embedding request; answers it when it is complete.
    fn embed_step(&mut self) {
        let Some(work) = self.embeds.front_mut() else { return };
        if self.embedder.as_ref().is_none_or(|e| e.config() != &work.job.config) {
            self.embedder = None;
            match Embedder::new(self.ctx.model(), &work.job.config).and_then(|e| e.require_pooled().map(|()| e)) {
                Ok(e) => self.embedder = Some(e),
                Err(e) => {
                    let _ = work.job.reply.send(Err(e));
                    self.embeds.pop_front();
                    return;
                }
            }
        }
        let Some(embedder) = self.embedder.as_mut() else { return };
        let start = work.done.len();
        let n = embedder.fitting(&work.job.inputs[start..]);
        match embedder.embed_chunk(&work.job.inputs[start..start + n]) {
            Ok(vectors) => {
                work.done.extend(vectors);
                self.stats.texts_embedded.fetch_add(n as u64, Ordering::Relaxed);
                if work.done.len() == work.job.inputs.len() {
                    let done = std::mem::take(&mut work.done);
                    let _ = work.job.reply.send(Ok(done));
                    self.embeds.pop_front();
                }
            }
            Err(e) => {
                let _ = work.job.reply.send(Err(e));
                self.embeds.pop_front();
            }
        }
    }

    fn fail_all(&mut self) {
        for work in self.embeds.drain(..) {
            let _ = work.job.reply.send(Err(Error::Cancelled));
        }
        for Submission { mut job, .. } in self.queue.drain(..) {
            self.stats.queued.fetch_sub(1, Ordering::SeqCst);
            job.end(Err(Error::Cancelled));
        }
        for slot in &mut self.slots {
            if let Some(mut a) = slot.active.take() {
                a.job.end(Err(Error::Cancelled));
            }
        }
        self.publish();
    }

    fn publish(&self) {
        let running = self.slots.iter().filter(|s| s.active.is_some()).count();
        let used: usize = self.slots.iter().filter(|s| s.active.is_some()).map(|s| s.cached.len()).sum();
        let cached: usize = self.slots.iter().filter(|s| s.active.is_none()).map(|s| s.cached.len()).sum();
        self.stats.running.store(running, Ordering::Relaxed);
        self.stats.kv_used.store(used, Ordering::Relaxed);
        self.stats.kv_cached.store(cached, Ordering::Relaxed);
    }

    /// Moves waiting requests into free slots, each with the longest prefix of its prompt that
    /// any slot holds or is computing (see [`plan`](Self::plan)).
    fn admit(&mut self) {
        while let Some(submission) = self.queue.pop_front() {
            self.stats.queued.fetch_sub(1, Ordering::SeqCst);
            let Submission { mut job, spec } = submission;
            if job.cancelled() {
                let summary = cancelled_before_start(spec.prompt.len(), job.submitted);
                job.end(Ok(Event::Done(summary)));
                continue;
            }
            let free: Vec<usize> = (0..self.slots.len()).filter(|&i| self.slots[i].active.is_none()).collect();
            if free.is_empty() {
                self.queue.push_front(Submission { job, spec });
                self.stats.queued.fetch_add(1, Ordering::SeqCst);
                break;
            }
            // The spec was checked and its chain built once on the caller's thread (a bad
            // grammar failed there); the chain is built again here for this thread's borrow of
            // the model, from the same spec.
            let mut request = match spec.sampling.build(self.ctx.model()) {
                Ok(sampler) => Request::new(self.ctx.model(), spec, sampler, job.submitted),
                Err(e) => {
                    job.end(Err(e));
                    continue;
                }
            };
            let (best, source) = self.plan(&request.spec.prompt, &request.spec.lora_key, &free);
            let seq = self.slots[best].seq;
            if let Err(e) = place_sampler(&mut self.ctx, &mut self.slots[best], &mut request) {
                job.end(Err(e));
                continue;
            }
            let mut wait = None;
            let common = match source {
                Source::Own => {
                    // A cache that cannot be cut is dropped and the prompt computed whole.
                    let limit = self.reusable(best, &request.spec.prompt, &request.spec.lora_key);
                    let slot = &mut self.slots[best];
                    let (prompt, lora) = (&request.spec.prompt, &request.spec.lora_key);
                    let got = slot.cached.reuse(&mut self.ctx, seq, prompt, lora, limit).unwrap_or_else(|_| {
                        slot.cached.clear();
                        0
                    });
                    slot.prompt_cells = got;
                    got
                }
                Source::Copy { from, len } => {
                    let got = self.copy_prefix(from, best, len);
                    request.shared = got;
                    got
                }
                Source::Wait(w) => {
                    // The slot's old cells are of no use to it: the prefix will come whole.
                    let slot = &mut self.slots[best];
                    if self.ctx.seq_remove(Some(seq), ..).is_ok() {
                        slot.cached.clear();
                        slot.prompt_cells = 0;
                    }
                    self.stats.prefix_waits.fetch_add(1, Ordering::Relaxed);
                    wait = Some(w);
                    0
                }
            };
            request.cached = common;
            if common > 0 {
                self.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
                self.stats.prompt_cached.fetch_add(common as u64, Ordering::Relaxed);
            }
            let span = tracing::debug_span!(
                "request",
                id = job.id,
                seq,
                prompt_tokens = request.spec.prompt.len(),
                cached = common,
                shared = request.shared,
            );
            tracing::debug!(parent: &span, queued_ms = job.submitted.elapsed().as_secs_f64() * 1e3, ?wait, "admitted");
            let history = if request.spec.speculation.is_some() { request.spec.prompt.clone() } else { Vec::new() };
            self.slots[best].active = Some(Active {
                history,
                guess: Vec::new(),
                keep: None,
                counted_drafts: Default::default(),
                request,
                prefilled: common,
                pending: None,
                output: None,
                outcome: None,
                wait,
                span,
                counted: 0,
                job,
            });
        }
    }

    /// Picks a free slot for `prompt` and where its prefix comes from. Prefixes are matched
    /// by comparing tokens (never the prompt's last token, whose logits must be computed):
    /// - the free slot holding the longest prefix keeps it (among equals, the one holding
    ///   least), unless
    /// - another slot holds a longer one (by at least `min_copy` tokens): it is copied into the
    ///   free slot holding least, or
    /// - a slot still computing its own prompt will hold a longer one still: the request
    ///   waits for it in the free slot holding least.
    fn plan(&self, prompt: &[Token], lora: &LoraKey, free: &[usize]) -> (usize, Source) {
        let usable = prompt.len().saturating_sub(1);
        let held = |i: usize| self.reusable(i, prompt, lora);
        let own = free
            .iter()
            .copied()
            .max_by_key(|&i| (held(i), std::cmp::Reverse(self.slots[i].cached.len())))
            .unwrap_or(free[0]);
        if !self.sharing {
            return (own, Source::Own);
        }
        let emptiest = free.iter().copied().min_by_key(|&i| self.slots[i].cached.len()).unwrap_or(own);
        let mut now = (held(own), None);
        let mut later = (0, None);
        for (i, slot) in self.slots.iter().enumerate() {
            let Some(a) = slot.active.as_ref() else { continue };
            let h = held(i);
            if h > now.0 {
                now = (h, Some(i));
            }
            if a.prefilled < a.request.spec.prompt.len() && a.request.spec.lora_key == *lora {
                let will = self.aligned(crate::request::common_prefix(&a.request.spec.prompt, prompt).min(usable));
                if will > later.0 {
                    later = (will, Some((i, a.job.id)));
                }
            }
        }
        if let (will, Some((donor, donor_job))) = later {
            if will >= now.0 + self.min_copy && will >= held(own) + self.min_copy {
                return (emptiest, Source::Wait(Wait { donor, donor_job, upto: will }));
            }
        }
        match now {
            (len, Some(from)) if len >= held(own) + self.min_copy => (emptiest, Source::Copy { from, len }),
            _ => (own, Source::Own),
        }
    }

    /// How many leading tokens of `prompt` slot `i` can give it: those they share, never the
    /// prompt's last token (its logits must be computed), and in a reproducible engine only
    /// whole `n_batch` chunks of cells computed as a prompt (see [`Slot::prompt_cells`]).
    fn reusable(&self, i: usize, prompt: &[Token], lora: &LoraKey) -> usize {
        let slot = &self.slots[i];
        let common = slot.cached.common_prefix(prompt, lora).min(prompt.len().saturating_sub(1));
        if self.reproducible {
            self.aligned(common.min(slot.prompt_cells))
        } else {
            common
        }
    }

    /// `len` cut down to a multiple of the alignment.
    fn aligned(&self, len: usize) -> usize {
        len - len % self.align
    }

    /// Copies the first `len` tokens slot `from` holds into slot `to`, counted; returns the
    /// tokens `to` holds afterwards (0 when the copy failed: then `to` is empty).
    fn copy_prefix(&mut self, from: usize, to: usize, len: usize) -> usize {
        let (src, dst) = (self.slots[from].seq, self.slots[to].seq);
        let mut cache = std::mem::take(&mut self.slots[to].cached);
        let got = match cache.copy_from(&mut self.ctx, dst, src, &self.slots[from].cached, len) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!("prefix copy from sequence {src} to {dst} failed: {e}");
                let _ = self.ctx.seq_remove(Some(dst), ..);
                cache.clear();
                0
            }
        };
        self.slots[to].cached = cache;
        self.slots[to].prompt_cells = got;
        if got > 0 {
            self.stats.prefix_copies.fetch_add(1, Ordering::Relaxed);
            self.stats.prompt_shared.fetch_add(got as u64, Ordering::Relaxed);
        }
        got
    }

    /// Ends the waits that can end: the donor holds the prefix now (it is copied), or the
    /// donor no longer runs the request it waited for (cancelled or failed: the best prefix
    /// any slot holds is copied, and the rest computed).
    fn resolve_waits(&mut self) {
        for w in 0..self.slots.len() {
            let Some(a) = self.slots[w].active.as_ref() else { continue };
            let Some(wait) = a.wait else { continue };
            let (prompt, lora) = (&a.request.spec.prompt, &a.request.spec.lora_key);
            let donor = &self.slots[wait.donor];
            let ready = self.reusable(wait.donor, prompt, lora) >= wait.upto;
            let donor_on_it = donor.active.as_ref().is_some_and(|d| d.job.id == wait.donor_job);
            if !ready && donor_on_it {
                continue;
            }
            let (from, len) = (0..self.slots.len())
                .filter(|&i| i != w)
                .map(|i| (i, self.reusable(i, prompt, lora)))
                .max_by_key(|&(i, len)| (len, i == wait.donor))
                .unwrap_or((w, 0));
            let got = if len >= self.min_copy { self.copy_prefix(from, w, len) } else { 0 };
            if let Some(a) = self.slots[w].active.as_mut() {
                a.wait = None;
                a.prefilled = got;
                a.request.cached = got;
                a.request.shared = got;
                tracing::debug!(parent: &a.span, shared = got, from_seq = from, "prefix arrived");
            }
            if got > 0 {
                self.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
                self.stats.prompt_cached.fetch_add(got as u64, Ordering::Relaxed);
            }
        }
    }

    fn step(&mut self) {
        // Cancelled requests leave before the batch is built.
        for slot in &mut self.slots {
            if slot.active.as_ref().is_some_and(|a| a.job.cancelled()) {
                if let Some(a) = slot.active.take() {
                    finish(a, StopReason::Cancelled, &self.stats, slot.cached.len());
                }
            }
        }
        self.resolve_waits();
        self.admit();
        // llama.cpp applies adapters to a whole context, not per sequence: requests under
        // different LoRA sets get a decode each (every set every step, in the order their
        // requests came), each under its own set. One set, the usual case, is one decode.
        let mut sets: Vec<(LoraKey, Vec<(crate::adapter::LoraAdapter, f32)>)> = Vec::new();
        for a in self.slots.iter().filter_map(|s| s.active.as_ref()) {
            if !sets.iter().any(|(k, _)| *k == a.request.spec.lora_key) {
                sets.push((a.request.spec.lora_key.clone(), a.request.spec.lora.clone().unwrap_or_default()));
            }
        }
        for (key, set) in sets {
            if LoraKey::of(self.ctx.lora()) != key {
                if let Err(e) = self.ctx.set_lora(&set) {
                    self.fail_set(&key, &e);
                    continue;
                }
            }
            let in_set: Vec<bool> =
                self.slots.iter().map(|s| s.active.as_ref().is_some_and(|a| a.request.spec.lora_key == key)).collect();
            if self.reproducible {
                // One batch per sequence, shaped as it would be if the sequence ran alone.
                for i in (0..self.slots.len()).filter(|&i| in_set[i]) {
                    let only: Vec<bool> = (0..self.slots.len()).map(|j| j == i).collect();
                    self.decode_and_sample(&only);
                }
            } else {
                self.decode_and_sample(&in_set);
            }
        }
    }

    /// Ends the requests under the LoRA set `key` with `e` (the set could not be applied).
    fn fail_set(&mut self, key: &LoraKey, e: &Error) {
        for slot in &mut self.slots {
            if slot.active.as_ref().is_some_and(|a| a.request.spec.lora_key == *key) {
                if let Some(mut a) = slot.active.take() {
                    a.job.end(Err(Error::Engine(format!("the request's LoRA adapters could not be applied: {e}"))));
                    release(&self.stats, slot.cached.len(), true);
                }
            }
        }
    }

    /// One decode of the running sequences `in_step` marks, with prefill chunks, then
    /// sampling of every sequence that produced logits, in five phases.
    fn decode_and_sample(&mut self, in_step: &[bool]) {
        self.batch.clear();
        let budget = self.add_decode_tokens(in_step);
        let prompt_tokens = self.add_prefill_chunks(in_step, budget);
        if self.batch.is_empty() {
            return;
        }
        if !self.decode_batch(prompt_tokens) {
            return;
        }
        let t_sample = Instant::now();
        self.record_batch();
        self.sample_outputs();
        self.stats.sample_ns.fetch_add(t_sample.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }

    /// Phase 1: one decode token for every running sequence that has one (its last sampled
    /// token), followed by its speculative guess where it asks for one and the step has room
    /// (see [`draft_room`](Self::draft_room)). Returns the batch budget left.
    fn add_decode_tokens(&mut self, in_step: &[bool]) -> usize {
        let mut budget = self.n_batch;
        let per_seq = self.draft_room(in_step);
        let n_ctx = self.n_ctx_per_seq;
        for (_, slot) in self.slots.iter_mut().enumerate().filter(|(i, _)| in_step[*i]) {
            let Some(a) = slot.active.as_mut() else { continue };
            a.output = None;
            a.guess.clear();
            let Some(t) = a.pending else { continue };
            if budget == 0 {
                continue;
            }
            let pos = slot.cached.len() as i32;
            let Ok(i) = self.batch.add(t, pos, &[slot.seq], true) else { continue };
            a.output = Some(i);
            budget -= 1;
            let Some(spec) = a.request.spec.speculation.as_ref().filter(|_| per_seq > 0) else { continue };
            // Each guessed token takes a cell, and the budget's last token needs no guess
            // after it: the same room a Generation gives its guesses.
            let ctx_room = n_ctx.saturating_sub(pos as usize + 2);
            let budget_room = a.request.spec.max_tokens.saturating_sub(a.request.generated + 1);
            let limit = per_seq.min(budget).min(ctx_room).min(budget_room);
            let mut guess = spec.guess(self.drafter.as_mut(), slot.seq, &a.history, limit);
            for (k, &g) in guess.iter().enumerate() {
                if self.batch.add(g, pos + 1 + k as i32, &[slot.seq], true).is_err() {
                    // Cannot happen within the budget; a guess cut short is still a guess.
                    guess.truncate(k);
                    break;
                }
            }
            budget -= guess.len();
            a.guess = guess;
        }
        budget
    }

    /// How many guessed tokens each speculating sequence of this step may add. A reproducible
    /// engine decodes each sequence alone, as a [`Generation`](crate::Generation) would, and
    /// gives it the same room (the batch). Otherwise guesses never slow anything down: none
    /// while a prompt waits to be computed (its tokens come first), and all of them within
    /// `draft_step_tokens` with the step's decode tokens, shared evenly, so a step with many
    /// sequences decoding has none.
    fn draft_room(&self, in_step: &[bool]) -> usize {
        let mut decoding = 0;
        let mut speculating = 0;
        for a in self.slots.iter().enumerate().filter(|(i, _)| in_step[*i]).filter_map(|(_, s)| s.active.as_ref()) {
            if a.pending.is_some() {
                decoding += 1;
                speculating += usize::from(a.request.spec.speculation.is_some());
            } else if a.wait.is_none() && a.prefilled < a.request.spec.prompt.len() && !self.reproducible {
                return 0;
            }
        }
        if speculating == 0 {
            0
        } else if self.reproducible {
            usize::MAX
        } else {
            self.draft_step_tokens.saturating_sub(decoding) / speculating
        }
    }

    /// Phase 2: prefill chunks of waiting prompts with the `budget` left: the prompts closest
    /// to their first token first, so a short prompt never waits for a long one's prefill and
    /// equal prompts finish one after another instead of all at the end. Returns the prompt
    /// tokens added.
    fn add_prefill_chunks(&mut self, in_step: &[bool], budget: usize) -> usize {
        let waiting: Vec<(usize, usize, u64)> = self
            .slots
            .iter()
            .enumerate()
            .filter(|(i, _)| in_step[*i])
            .filter_map(|(i, slot)| {
                let a = slot.active.as_ref()?;
                let left = a.request.spec.prompt.len().saturating_sub(a.prefilled);
                (a.pending.is_none() && a.wait.is_none() && left > 0).then_some((i, left, a.job.id))
            })
            .collect();
        let shares = prefill_shares(&waiting.iter().map(|&(_, left, id)| (left, id)).collect::<Vec<_>>(), budget);
        let prompt_tokens: usize = shares.iter().sum();
        for (&(i, _, _), take) in waiting.iter().zip(shares) {
            if take == 0 {
                continue;
            }
            let slot = &mut self.slots[i];
            let Some(a) = slot.active.as_mut() else { continue };
            let chunk = &a.request.spec.prompt[a.prefilled..a.prefilled + take];
            let last = a.prefilled + take == a.request.spec.prompt.len();
            if self.batch.add_sequence(chunk, a.prefilled as i32, slot.seq, last).is_ok() && last {
                a.output = Some(self.batch.len() as i32 - 1);
            }
        }
        prompt_tokens
    }

    /// Phase 3: the decode, waited for (so the time splits into decode and sampling), and its
    /// counters. A failure fails the batch's sequences; returns whether it succeeded.
    fn decode_batch(&mut self, prompt_tokens: usize) -> bool {
        let t_decode = Instant::now();
        if let Err(e) = self.ctx.decode(&self.batch) {
            self.fail_batch(&e);
            return false;
        }
        self.ctx.synchronize();
        let decode_ns = t_decode.elapsed().as_nanos() as u64;
        self.stats.steps.fetch_add(1, Ordering::Relaxed);
        self.stats.decode_ns.fetch_add(decode_ns, Ordering::Relaxed);
        if prompt_tokens > 0 {
            self.stats.prompt_steps.fetch_add(1, Ordering::Relaxed);
            self.stats.prompt_decode_ns.fetch_add(decode_ns, Ordering::Relaxed);
        }
        self.stats.graphs_reused.store(self.ctx.perf().n_reused.max(0) as u64, Ordering::Relaxed);
        true
    }

    /// Phase 4: records what the decode put into each sequence's cells: the slot caches, and
    /// the prompt progress of requests still prefilling.
    fn record_batch(&mut self) {
        let tokens = self.batch.tokens().to_vec();
        let mut k = 0;
        let n = tokens.len();
        let seq_of: Vec<SeqId> = (0..n).map(|i| self.batch.seq_ids(i).map(|s| s[0]).unwrap_or(-1)).collect();
        while k < n {
            let seq = seq_of[k];
            let slot = &mut self.slots[seq as usize];
            let mut j = k;
            while j < n && seq_of[j] == seq {
                j += 1;
            }
            let contiguous = slot.prompt_cells == slot.cached.len();
            slot.cached.extend(&tokens[k..j]);
            if let Some(a) = slot.active.as_mut() {
                if a.pending.take().is_none() {
                    if contiguous {
                        slot.prompt_cells = slot.cached.len();
                    }
                    a.prefilled += j - k;
                    self.stats.prompt_computed.fetch_add((j - k) as u64, Ordering::Relaxed);
                }
            }
            k = j;
        }
    }

    /// Phase 5: samples every sequence that produced logits, in parallel across cores (with
    /// many sequences and a large vocabulary this host work would otherwise serialize between
    /// decode steps), then ends the requests that finished or failed.
    fn sample_outputs(&mut self) {
        let Worker { ctx, slots, stats, n_ctx_per_seq, pool, .. } = self;
        // As many sampling threads as llama.cpp's: the cores free of other work.
        let sample_threads = ctx.threads().0 as usize;
        let work = gather_picks(ctx, slots);
        let n_ctx = *n_ctx_per_seq;
        let sample = |slot: &mut Slot<'m>, pick: Pick<'_>| {
            let n_cached = slot.cached.len();
            let Some(a) = slot.active.as_mut() else { return };
            a.request.prefilled();
            let outcome = sample_one(a, pick, n_cached, n_ctx);
            a.outcome = Some(outcome);
        };
        let threads = sample_threads.min(work.len()).max(1);
        match pool.as_ref().filter(|_| threads > 1) {
            // The pool's threads stay alive between steps (spawning a thread per chunk every
            // step cost about as much as sampling a few sequences).
            Some(pool) => {
                let per = work.len().div_ceil(threads);
                let mut chunks: Vec<Vec<(&mut Slot<'m>, Pick<'_>)>> = Vec::with_capacity(threads);
                let mut rest = work;
                while !rest.is_empty() {
                    let tail = rest.split_off(per.min(rest.len()));
                    chunks.push(std::mem::replace(&mut rest, tail));
                }
                pool.scope(|s| {
                    for chunk in chunks {
                        s.spawn(|_| {
                            for (slot, row) in chunk {
                                sample(slot, row);
                            }
                        });
                    }
                });
            }
            None => {
                for (slot, row) in work {
                    sample(slot, row);
                }
            }
        }
        drop_wrong_guesses(ctx, slots);
        settle_outcomes(slots, stats);
    }

    /// A decode failed: fail only the sequences in this batch, free their cells, keep serving.
    /// "No KV slot" (llama.cpp restored the cache) fails only the newest of them; the others
    /// retry in the next step.
    fn fail_batch(&mut self, e: &Error) {
        let mut seqs: Vec<SeqId> = (0..self.batch.len()).filter_map(|i| self.batch.seq_ids(i).map(|s| s[0])).collect();
        seqs.dedup();
        if matches!(e, Error::NoKvSlot) && seqs.len() > 1 {
            let newest =
                seqs.iter().copied().max_by_key(|&s| self.slots[s as usize].active.as_ref().map_or(0, |a| a.job.id));
            tracing::warn!(
                "no KV slot for a batch of {} sequences: failing the newest, deferring the rest",
                seqs.len()
            );
            seqs = newest.into_iter().collect();
        } else {
            tracing::warn!("decode failed, failing the {} sequences in this batch: {e}", seqs.len());
        }
        for seq in seqs {
            let slot = &mut self.slots[seq as usize];
            let _ = self.ctx.seq_remove(Some(seq), ..);
            let cells = slot.cached.len();
            slot.cached.clear();
            slot.prompt_cells = 0;
            if let Some(mut a) = slot.active.take() {
                release(&self.stats, cells, false);
                // A lost RPC server keeps its type: callers tell it from a local failure.
                let err = match e {
                    Error::Rpc { endpoint, reason } => {
                        Error::Rpc { endpoint: endpoint.clone(), reason: reason.clone() }
                    }
                    _ => Error::Engine(format!("decode failed: {e}")),
                };
                a.job.end(Err(err));
            }
        }
    }
}

/// The sampling threads: one per CPU this process may use, at most one per sequence; none
/// when that is one.
fn sampling_pool(n_seq_max: usize) -> Option<rayon::ThreadPool> {
    let n = (crate::threads::available_threads() as usize).min(n_seq_max);
    if n < 2 {
        return None;
    }
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .thread_name(|i| format!("rocm-llama-sample-{i}"))
        .build()
        .map_err(|e| tracing::warn!("no sampling threads ({e}); sampling on the engine's thread"))
        .ok()
}

/// Decides where a newly admitted request samples and sets the slot's sequence up for it:
/// the slot's device chain reused (reset) when the settings match, a new one attached, or
/// none (host sampling).
fn place_sampler<'m>(ctx: &mut Context<'m>, slot: &mut Slot<'m>, request: &mut Request<'m>) -> Result<()> {
    let wanted = request.wants_device();
    let params = &request.spec.sampling;
    if wanted && slot.device_sampler.as_ref() == Some(params) && ctx.has_device_sampler(slot.seq) {
        ctx.reset_device_sampler(slot.seq)?;
        request.sampler = None;
        return Ok(());
    }
    if slot.device_sampler.take().is_some() {
        ctx.clear_device_sampler(slot.seq)?;
    }
    if wanted && request.try_device(ctx, slot.seq)? {
        slot.device_sampler = Some(request.spec.sampling.clone());
    }
    Ok(())
}

/// What the last decode gave each sequence with an output: the token its device sampler
/// picked (read first, while the context is borrowed mutably), else its logits row for the
/// host samplers. A sequence whose output cannot be read fails alone.
fn gather_picks<'s, 'c, 'm>(ctx: &'c mut Context<'m>, slots: &'s mut [Slot<'m>]) -> Vec<(&'s mut Slot<'m>, Pick<'c>)> {
    let mut device_picks: Vec<Option<Result<Token>>> = (0..slots.len()).map(|_| None).collect();
    for (i, slot) in slots.iter_mut().enumerate() {
        let Some(a) = slot.active.as_mut().filter(|a| a.request.sampler.is_none()) else { continue };
        if let Some(index) = a.output.take() {
            device_picks[i] = Some(ctx.sampled_token(index));
        }
    }
    let ctx: &'c Context<'m> = ctx;
    let mut work = Vec::new();
    for (slot, pick) in slots.iter_mut().zip(device_picks) {
        let pick = match pick {
            Some(token) => token.map(Pick::Token),
            None => match slot.active.as_mut().and_then(|a| Some((a.output.take()?, a.guess.len()))) {
                Some((index, 0)) => ctx.logits(index).map(Pick::Logits),
                // The rows of the last sampled token and of each guessed one, in order.
                Some((index, n)) => {
                    (index..=index + n as i32).map(|i| ctx.logits(i)).collect::<Result<_>>().map(Pick::Rows)
                }
                None => continue,
            },
        };
        match pick {
            Ok(pick) => work.push((slot, pick)),
            Err(e) => {
                if let Some(mut a) = slot.active.take() {
                    a.job.end(Err(e));
                }
            }
        }
    }
    work
}

/// Counts what was generated and ends the requests whose sampling finished or failed.
fn settle_outcomes(slots: &mut [Slot<'_>], stats: &SharedStats) {
    for slot in slots.iter_mut() {
        let Some(a) = slot.active.as_mut() else { continue };
        let Some(outcome) = a.outcome.take() else { continue };
        stats.generated.fetch_add((a.request.generated - a.counted) as u64, Ordering::Relaxed);
        a.counted = a.request.generated;
        let drafts = a.request.drafts;
        stats.draft_tokens.fetch_add((drafts.drafted - a.counted_drafts.drafted) as u64, Ordering::Relaxed);
        stats.draft_accepted.fetch_add((drafts.accepted - a.counted_drafts.accepted) as u64, Ordering::Relaxed);
        a.counted_drafts = drafts;
        match outcome {
            Ok(None) => {}
            Ok(Some(reason)) => {
                if let Some(a) = slot.active.take() {
                    finish(a, reason, stats, slot.cached.len());
                }
            }
            Err(e) => {
                if let Some(mut a) = slot.active.take() {
                    release(stats, slot.cached.len(), true);
                    a.job.end(Err(e));
                }
            }
        }
    }
}

/// What a decode gave one sequence: logits to sample on the host, the device's token, or
/// with a speculative guess, the rows of the last sampled token and of each guessed one.
enum Pick<'a> {
    Logits(&'a [f32]),
    Token(Token),
    Rows(Vec<&'a [f32]>),
}

/// Samples the next token for `a` (with a guess, as many as its rows confirm); returns a
/// stop reason when the request is finished. `n_cached` counts the sequence's cells, the
/// guessed ones included.
fn sample_one(a: &mut Active<'_>, pick: Pick<'_>, n_cached: usize, n_ctx: usize) -> Result<Option<StopReason>> {
    let rows = match pick {
        Pick::Token(t) => {
            if a.request.budget_spent() {
                return Ok(Some(StopReason::MaxTokens));
            }
            return take_token(a, t, n_cached, n_ctx);
        }
        Pick::Logits(row) => return sample_row(a, row, n_cached, n_ctx),
        Pick::Rows(rows) => rows,
    };
    // Row k picks the token at the position after guessed token k-1: each pick is the one the
    // model makes without the guess. While picks equal the guess, its cells stand and the
    // next row is read; the first other pick becomes the token to decode next, and the cells
    // after the last confirmed guess are dropped once sampling is done.
    let guess = std::mem::take(&mut a.guess);
    let base = n_cached - guess.len();
    let mut accepted = 0;
    let mut outcome = Ok(None);
    for (k, row) in rows.into_iter().enumerate() {
        outcome = sample_row(a, row, base + k, n_ctx);
        if matches!(outcome, Ok(None)) && a.pending.is_some() && a.pending == guess.get(k).copied() {
            a.pending = None;
            accepted += 1;
            continue;
        }
        break;
    }
    a.request.drafts.drafted += guess.len();
    a.request.drafts.accepted += accepted;
    a.keep = Some(base + accepted);
    outcome
}

/// Samples from one logits row for a token that would be decoded at `next_pos`.
fn sample_row(a: &mut Active<'_>, row: &[f32], next_pos: usize, n_ctx: usize) -> Result<Option<StopReason>> {
    if a.request.budget_spent() {
        return Ok(Some(StopReason::MaxTokens));
    }
    let t = a.request.sample_logits(row)?;
    take_token(a, t, next_pos, n_ctx)
}

/// Takes a sampled token: sends it (with the text it releases) and makes it the token to
/// decode next, unless the request ends with it.
fn take_token(a: &mut Active<'_>, t: Token, next_pos: usize, n_ctx: usize) -> Result<Option<StopReason>> {
    match a.request.accept(t, next_pos, n_ctx)? {
        Accepted::EndOfGeneration => Ok(Some(StopReason::Eos)),
        Accepted::Token { id, text, stop } => {
            if a.request.spec.speculation.is_some() {
                a.history.push(id);
            }
            let logprobs = a.request.take_logprobs();
            if a.job.events.send(Ok(Event::Token { id, text, logprobs })).is_err() {
                // The stream was dropped: treat as a cancel.
                return Ok(Some(StopReason::Cancelled));
            }
            if stop.is_none() {
                a.pending = Some(id);
            }
            Ok(stop)
        }
    }
}

/// Removes the cells of guessed tokens that sampling did not confirm, so the sequence ends at
/// its last accepted token. A sequence that cannot be cut (not expected: speculation is
/// refused for recurrent models) fails alone, its cells freed.
fn drop_wrong_guesses(ctx: &mut Context<'_>, slots: &mut [Slot<'_>]) {
    for slot in slots.iter_mut() {
        let Some(a) = slot.active.as_mut() else { continue };
        let Some(keep) = a.keep.take() else { continue };
        if slot.cached.len() <= keep {
            continue;
        }
        if let Ok(true) = ctx.seq_remove(Some(slot.seq), keep as i32..) {
            slot.cached.truncate(keep);
            slot.prompt_cells = slot.prompt_cells.min(keep);
            continue;
        }
        let _ = ctx.seq_remove(Some(slot.seq), ..);
        slot.cached.clear();
        slot.prompt_cells = 0;
        a.outcome = Some(Err(Error::Engine("the cells of a wrong guess could not be removed".into())));
    }
}

/// Ends a request: releases held text, then the summary. The counters move first, so a
/// caller that sees the summary also sees the slot free in `stats()`.
fn finish(mut a: Active<'_>, reason: StopReason, stats: &SharedStats, kv_cells: usize) {
    let text = a.request.tail(&reason);
    if !text.is_empty() {
        let _ = a.job.events.send(Ok(Event::Text(text)));
    }
    let summary = a.request.summary(reason);
    tracing::debug!(
        parent: &a.span,
        generated = summary.generated_tokens,
        reason = ?summary.stop_reason,
        decode_tokens_per_s = summary.decode_tokens_per_s,
        "finished"
    );
    stats.completed.fetch_add(1, Ordering::SeqCst);
    release(stats, kv_cells, true);
    a.job.end(Ok(Event::Done(summary)));
}

/// Splits `budget` prompt tokens of one step among prompts that still need `waiting[i].0`
/// tokens each (`waiting[i].1` orders them by arrival). Shortest remaining first (ties by
/// arrival), which gets the most requests to their first token soonest; so that a stream of
/// short prompts cannot starve a long one, the oldest waiting prompt is served first with up
/// to a quarter of the budget.
fn prefill_shares(waiting: &[(usize, u64)], budget: usize) -> Vec<usize> {
    let mut give = vec![0usize; waiting.len()];
    let mut budget = budget;
    if let Some(oldest) = (0..waiting.len()).filter(|&i| waiting[i].0 > 0).min_by_key(|&i| waiting[i].1) {
        let take = waiting[oldest].0.min(budget / 4);
        give[oldest] = take;
        budget -= take;
    }
    let mut order: Vec<usize> = (0..waiting.len()).collect();
    order.sort_by_key(|&i| (waiting[i].0 - give[i], waiting[i].1));
    for i in order {
        if budget == 0 {
            break;
        }
        let take = (waiting[i].0 - give[i]).min(budget);
        give[i] += take;
        budget -= take;
    }
    give
}

/// Counts a request out of `running` (its cells kept for reuse, or freed) before its stream
/// hears the end; `publish` later sets the exact figures.
fn release(stats: &SharedStats, kv_cells: usize, keep_cells: bool) {
    let _ = stats.running.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| Some(v.saturating_sub(1)));
    let _ = stats.kv_used.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| Some(v.saturating_sub(kv_cells)));
    if keep_cells {
        stats.kv_cached.fetch_add(kv_cells, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::prefill_shares;

    #[test]
    fn prefill_budget_goes_to_the_prompts_closest_to_their_first_token() {
        // A long prompt first no longer takes the whole step: the short ones finish in it,
        // and the long one (the oldest) keeps a quarter of the budget and the rest.
        assert_eq!(prefill_shares(&[(1000, 1), (10, 2), (10, 3), (10, 4)], 64), vec![34, 10, 10, 10]);
        // Equal prompts finish one after another, oldest first, instead of all at the end.
        assert_eq!(prefill_shares(&[(128, 1), (128, 2), (128, 3)], 256), vec![128, 128, 0]);
        assert_eq!(prefill_shares(&[(128, 3), (128, 2), (128, 1)], 256), vec![0, 128, 128]);
        // A stream of short prompts cannot starve a long one.
        assert_eq!(prefill_shares(&[(500, 1), (20, 2), (20, 3), (20, 4), (20, 5)], 64), vec![16, 20, 20, 8, 0]);
        assert_eq!(prefill_shares(&[(5, 1), (7, 2)], 64), vec![5, 7]);
        assert_eq!(prefill_shares(&[(0, 1), (9, 2)], 4), vec![0, 4]);
        assert_eq!(prefill_shares(&[], 4), Vec::<usize>::new());
        assert_eq!(prefill_shares(&[(3, 1)], 0), vec![0]);
    }
}
