//! Many concurrent generations on one model: [`Engine`] and its [`Engine`].
//!
//! One worker thread owns the [`Context`], the [`Batch`](crate::Batch) and every sequence (an actor, like
//! TGI's router). Handles only send commands. Each step builds one batch holding one decode
//! token for every running sequence plus prefill chunks of waiting prompts, within `n_batch`
//! tokens, so a long new prompt never stalls running sequences for more than one chunk.
//! Requests join between steps and leave as soon as they finish; a finished sequence's KV
//! cells stay in its slot so a later prompt with the same prefix skips recomputing it, and a
//! prefix one slot holds or is computing reaches the others by a copy on the device
//! ([`EngineConfig::prefix_sharing`]).

mod stream;
mod worker;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::Sender;

#[cfg(feature = "async")]
pub use stream::AsyncTokenStream;
pub use stream::TokenStream;
use worker::{Command, Job, SlotAction, SlotJob, Worker};

use crate::chat::{ChatMessage, ChatTemplate};
use crate::context::{AbortHandle, Context, ContextConfig, FlashAttention, KvType};
use crate::embed::EmbedConfig;
use crate::error::{Error, Result};
use crate::generate::GenerateOptions;
use crate::model::Model;
use crate::vocab::Token;

/// Settings for [`Engine::start`].
///
/// ```
/// use rocm_llama::{EngineConfig, FlashAttention};
///
/// let config = EngineConfig::default().n_seq_max(16).n_ctx_per_seq(4096).flash_attention(FlashAttention::On);
/// assert_eq!(config.queue_capacity, 64);
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct EngineConfig {
    /// Sequences decoded together (slots), default 8.
    pub n_seq_max: u32,
    /// Context length of each slot, default 2048.
    pub n_ctx_per_seq: u32,
    /// Token budget of one step (decode tokens plus prefill chunks), default 512.
    pub n_batch: u32,
    /// Requests that may wait for a slot when every slot is busy; beyond it `generate`
    /// returns [`Error::Busy`]. The engine takes `n_seq_max + queue_capacity` requests at
    /// once. Default 64.
    pub queue_capacity: usize,
    /// CPU threads (default: the cores this process may use).
    pub threads: Option<u32>,
    /// Flash attention.
    pub flash_attention: FlashAttention,
    /// One KV buffer shared by all slots (`kv_unified`), default off: each slot gets a KV
    /// buffer of its own, which attention over many independent sequences reads faster
    /// (llama.h advises it unless sequences share a large prefix). Prefix sharing works
    /// either way: with a buffer per slot a shared prefix is copied on the device (the whole
    /// slot's buffer, then cut), in a unified buffer the cells are shared without a copy.
    pub kv_unified: bool,
    /// Full-size caches for sliding-window layers ([`ContextConfig::swa_full`], default true).
    pub swa_full: bool,
    /// Compute a prompt prefix once for all slots (default on). A new request starts from
    /// the longest prefix of its prompt that any slot holds (its own slot, an idle one, or one
    /// generating right now), copied on the device instead of computed; requests that share
    /// a prefix that a slot is still computing wait for it in their slots and copy it when it
    /// is done, while unrelated requests go on. Tokens decide every match: a request receives
    /// only cells of its own prompt's prefix. Off, a request reuses only what its own slot
    /// holds. [`reproducible`](Self::reproducible) turns all reuse off.
    pub prefix_sharing: bool,
    /// Give every request exactly the tokens it would get alone, whatever else the engine
    /// serves (default off). llama.cpp's arithmetic is not batch-invariant: the kernels it
    /// picks, and so the last bits of a sequence's logits, depend on how many tokens share a
    /// decode. With this on, each sequence decodes in a batch of its own (prompts in chunks
    /// of `n_batch`, as alone), and a prompt reuses (from its slot or another) only whole
    /// `n_batch` chunks of cells that were computed as a prompt from position 0: cells a
    /// request alone would compute in chunks of the same shapes, so prefix sharing keeps
    /// working. Costs the throughput that batching gives; needs `kv_unified` off. On the CPU,
    /// load the model with `cpu_repack(false)` as well (see the README's section on
    /// determinism).
    pub reproducible: bool,
    /// KV cache element type of K (llama.cpp's `-ctk`), default F16.
    pub type_k: KvType,
    /// KV cache element type of V (`-ctv`), default F16.
    pub type_v: KvType,
    /// A control vector every request is generated under, over these layers (llama.cpp's
    /// `--control-vector`; applied to the engine's context once, at start).
    pub control_vector: Option<(crate::adapter::ControlVector, std::ops::RangeInclusive<u32>)>,
    /// The most tokens a decode step holds when requests with
    /// [speculative decoding](crate::GenerateOptions::speculation) add their guesses, default
    /// 32: the guesses share what the step's decode tokens leave, so with many sequences
    /// decoding there are none, and a step that computes a prompt has none either. Guesses
    /// help one stream or a few, where a decode costs about the same for one token as for a
    /// few dozen; a full batch is never slowed by them. (A reproducible engine decodes each
    /// sequence alone and gives its guesses the room a [`Generation`](crate::Generation) does.)
    pub draft_step_tokens: usize,
    /// The draft model requests with [`Speculation::Draft`](crate::Speculation::Draft) guess
    /// with (llama-server's `--model-draft`): the engine keeps a context of it with a sequence
    /// per slot. A request naming another draft model is refused. Not with `reproducible`.
    pub draft: Option<crate::draft::DraftModel>,
    /// Run the model (and the draft model) once over two tokens before taking requests
    /// ([`Context::warm_up`](crate::context::Context::warm_up)), default on: the first
    /// request then does not wait for the backends' first-use work (on Vulkan, compiling the
    /// compute pipelines). llama-server's `--no-warmup` turns it off.
    pub warmup: bool,
}

crate::config::setters!(EngineConfig {
    n_seq_max: u32,
    n_ctx_per_seq: u32,
    n_batch: u32,
    queue_capacity: usize,
    flash_attention: FlashAttention,
    kv_unified: bool,
    swa_full: bool,
    prefix_sharing: bool,
    reproducible: bool,
    type_k: KvType,
    type_v: KvType,
    draft_step_tokens: usize,
    warmup: bool,
} optional {
    threads: u32,
    control_vector: (crate::adapter::ControlVector, std::ops::RangeInclusive<u32>),
    draft: crate::draft::DraftModel,
});

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            n_seq_max: 8,
            n_ctx_per_seq: 2048,
            n_batch: 512,
            queue_capacity: 64,
            threads: None,
            flash_attention: FlashAttention::Auto,
            kv_unified: false,
            swa_full: true,
            prefix_sharing: true,
            reproducible: false,
            type_k: KvType::F16,
            type_v: KvType::F16,
            control_vector: None,
            draft_step_tokens: 32,
            draft: None,
            warmup: true,
        }
    }
}

/// Counters of a running engine, from [`Engine::stats`].
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct EngineStats {
    /// Sequences generating now.
    pub running: usize,
    /// Requests waiting for a slot.
    pub queued: usize,
    /// Requests finished (any stop reason).
    pub completed: u64,
    /// Tokens generated since start.
    pub generated_tokens: u64,
    /// Prompt tokens computed since start.
    pub prompt_tokens_computed: u64,
    /// Prompt tokens not computed since start: reused from the request's own slot or copied
    /// from another's.
    pub prompt_tokens_cached: u64,
    /// Of `prompt_tokens_cached`, those copied from another slot.
    pub prompt_tokens_shared: u64,
    /// Requests that reused a cached prefix (from any slot).
    pub prompt_cache_hits: u64,
    /// Prefix copies from one slot to another.
    pub prefix_copies: u64,
    /// Requests that waited for another slot to finish computing the prefix they share
    /// instead of computing it themselves.
    pub prefix_waits: u64,
    /// KV cells held by running sequences.
    pub kv_cells_used: usize,
    /// KV cells kept for prefix reuse by idle slots.
    pub kv_cells_cached: usize,
    /// Generated tokens per second of busy engine time.
    pub tokens_per_s: f64,
    /// Decode steps run since start.
    pub steps: u64,
    /// Seconds the worker was busy (steps, admission and bookkeeping included).
    pub busy_s: f64,
    /// Of `busy_s`, seconds in llama.cpp's decode until its outputs were ready (the GPU's
    /// share on a GPU build).
    pub decode_s: f64,
    /// Of `busy_s`, seconds sampling on the host and handing tokens to the streams.
    pub sample_s: f64,
    /// Of `steps`, those that computed prompt tokens (alone or beside decode tokens).
    pub prompt_steps: u64,
    /// Of `decode_s`, the seconds of those steps.
    pub prompt_decode_s: f64,
    /// Compute graphs llama.cpp reused from the step before instead of building them again
    /// (its `n_reused` counter); a decode step whose batch has the shape of the last one
    /// reuses its graph.
    pub graphs_reused: u64,
    /// Texts embedded since start ([`Engine::embed`]).
    pub texts_embedded: u64,
    /// Tokens guessed by speculative decoding and decoded for checking, since start.
    pub draft_tokens: u64,
    /// Of `draft_tokens`, those the model's own picks confirmed.
    pub draft_tokens_accepted: u64,
}

/// One slot of an engine, from [`Engine::slots`].
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct SlotInfo {
    /// The slot's number (its sequence id).
    pub id: u32,
    /// Its context length.
    pub n_ctx: u32,
    /// Whether a request runs in it now.
    pub is_processing: bool,
    /// Tokens its KV cells hold (a finished request's, kept for prefix reuse).
    pub cached_tokens: usize,
}

/// What a slot's save or restore moved, from [`Engine::save_slot`] and
/// [`Engine::restore_slot`].
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct SlotFile {
    /// Tokens saved or restored.
    pub tokens: usize,
    /// Bytes written or read.
    pub bytes: u64,
}

#[derive(Default)]
pub(crate) struct SharedStats {
    /// Requests accepted and not yet finished (waiting or running): what admission counts.
    /// Each request holds one through its [`worker::Permit`].
    pub(crate) in_flight: AtomicUsize,
    pub(crate) running: AtomicUsize,
    pub(crate) queued: AtomicUsize,
    pub(crate) completed: AtomicU64,
    pub(crate) generated: AtomicU64,
    pub(crate) prompt_computed: AtomicU64,
    pub(crate) prompt_cached: AtomicU64,
    pub(crate) prompt_shared: AtomicU64,
    pub(crate) cache_hits: AtomicU64,
    pub(crate) prefix_copies: AtomicU64,
    pub(crate) prefix_waits: AtomicU64,
    pub(crate) kv_used: AtomicUsize,
    pub(crate) kv_cached: AtomicUsize,
    pub(crate) busy_ns: AtomicU64,
    pub(crate) steps: AtomicU64,
    pub(crate) decode_ns: AtomicU64,
    pub(crate) sample_ns: AtomicU64,
    pub(crate) prompt_steps: AtomicU64,
    pub(crate) prompt_decode_ns: AtomicU64,
    pub(crate) graphs_reused: AtomicU64,
    pub(crate) texts_embedded: AtomicU64,
    pub(crate) draft_tokens: AtomicU64,
    pub(crate) draft_accepted: AtomicU64,
}

struct HandleInner {
    tx: Sender<Command>,
    model: Arc<Model>,
    stats: Arc<SharedStats>,
    config: EngineConfig,
    worker: Mutex<Option<JoinHandle<()>>>,
    stopped: AtomicBool,
    next_id: AtomicU64,
    abort: AbortHandle,
}

impl HandleInner {
    fn shutdown(&self) {
        if !self.stopped.swap(true, Ordering::SeqCst) {
            let _ = self.tx.send(Command::Shutdown);
        }
        let worker = self.worker.lock().map(|mut w| w.take()).unwrap_or(None);
        if let Some(w) = worker {
            // The worker never panics on request input; if it did, there is nothing to resume.
            let _ = w.join();
        }
    }
}

impl Drop for HandleInner {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A continuous-batching engine: one worker thread that owns the context and serves every
/// request in shared decode steps. The value is a handle: clone it freely (it is Send +
/// Sync); when the last clone is dropped the engine shuts down (as with
/// [`shutdown`](Engine::shutdown)).
#[derive(Clone)]
pub struct Engine {
    inner: Arc<HandleInner>,
}

impl Engine {
    /// Spawns the worker thread, which creates the context (and warms it up, see
    /// [`EngineConfig::warmup`]). Returns once the context exists,
    /// or with the error that prevented it.
    ///
    /// ```
    /// # fn main() -> rocm_llama::Result<()> {
    /// use std::sync::Arc;
    /// use rocm_llama::{Engine, EngineConfig, GenerateOptions, LoadConfig, Model};
    ///
    /// let model = Arc::new(Model::load(rocm_llama::synth::tiny_model()?, &LoadConfig::default())?);
    /// let engine = Engine::start(model, EngineConfig::default().n_seq_max(4).n_ctx_per_seq(256))?;
    /// // Four requests decoded together; each stream is read on its own thread.
    /// let streams: Vec<_> =
    ///     (0..4).map(|i| engine.generate(&format!("t{i} t2"), &GenerateOptions::greedy(8))).collect::<Result<_, _>>()?;
    /// let threads: Vec<_> = streams.into_iter().map(|s| std::thread::spawn(move || s.collect_text())).collect();
    /// for t in threads {
    ///     let (_text, summary) = t.join().expect("no panic")?;
    ///     assert!(summary.generated_tokens <= 8);
    /// }
    /// engine.shutdown();
    /// # Ok(())
    /// # }
    /// ```
    pub fn start(model: Arc<Model>, config: EngineConfig) -> Result<Engine> {
        if config.n_ctx_per_seq < 16 || config.n_batch == 0 || config.queue_capacity == 0 {
            return Err(Error::invalid("engine config", "n_ctx_per_seq >= 16, n_batch >= 1 and queue_capacity >= 1"));
        }
        if config.reproducible && config.kv_unified {
            return Err(Error::invalid(
                "kv_unified",
                "reproducible needs kv_unified off: in one shared KV buffer a sequence's attention spans other \
                 sequences' cells",
            ));
        }
        if let Some(draft) = &config.draft {
            if config.reproducible {
                return Err(Error::invalid(
                    "draft",
                    "a reproducible engine cannot use a draft model: its guesses, and so the batch shapes, depend \
                     on what the draft's context computed before",
                ));
            }
            if !draft.drafts_for(&model) {
                return Err(Error::invalid("draft", "the draft model was checked for another target model"));
            }
        }
        let n_ctx = config
            .n_ctx_per_seq
            .checked_mul(config.n_seq_max)
            .ok_or_else(|| Error::invalid("n_ctx_per_seq", "n_ctx_per_seq x n_seq_max overflows"))?;
        let mut ctx_config = ContextConfig::default()
            .n_ctx(n_ctx)
            .n_seq_max(config.n_seq_max)
            .n_batch(config.n_batch)
            .flash_attention(config.flash_attention)
            .kv_unified(config.kv_unified)
            .swa_full(config.swa_full)
            .threads(config.threads);
        ctx_config.type_k = config.type_k;
        ctx_config.type_v = config.type_v;
        let (tx, rx) = crossbeam_channel::unbounded();
        let (ready_tx, ready_rx) = crossbeam_channel::bounded::<Result<AbortHandle>>(1);
        let stats = Arc::new(SharedStats::default());
        let worker = {
            let model = model.clone();
            let stats = stats.clone();
            let config = config.clone();
            std::thread::Builder::new()
                .name("rocm-llama-engine".into())
                .spawn(move || {
                    let made = Context::new(&model, &ctx_config).and_then(|mut c| {
                        if let Some((vector, layers)) = &config.control_vector {
                            c.set_control_vector(Some((vector, layers.clone())))?;
                        }
                        Ok(c)
                    });
                    let ctx = match made {
                        Ok(c) => c,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let abort = ctx.abort_handle();
                    let mut worker = match Worker::new(ctx, &config, stats) {
                        Ok(w) => w,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(abort));
                    worker.run(rx);
                })
                .map_err(|source| Error::Thread { what: "engine", source })?
        };
        let abort = match ready_rx.recv() {
            Ok(Ok(abort)) => abort,
            Ok(Err(e)) => {
                let _ = worker.join();
                return Err(e);
            }
            Err(_) => {
                let _ = worker.join();
                return Err(Error::ContextCreate("the engine thread exited during start-up".into()));
            }
        };
        Ok(Engine {
            inner: Arc::new(HandleInner {
                tx,
                model,
                stats,
                config,
                worker: Mutex::new(Some(worker)),
                stopped: AtomicBool::new(false),
                next_id: AtomicU64::new(1),
                abort,
            }),
        })
    }
}

impl Engine {
    /// Queues a text prompt (tokenized on the caller's thread, with BOS and control tokens
    /// parsed). Errors at once: [`Error::Busy`] when the queue is full,
    /// [`Error::ContextOverflow`] when the prompt cannot fit a slot, a bad grammar or
    /// sampling setting, or [`Error::Cancelled`] after shutdown.
    pub fn generate(&self, prompt: &str, options: &GenerateOptions) -> Result<TokenStream> {
        let tokens = self.inner.model.vocab().tokenize(prompt, true, true)?;
        self.generate_tokens(tokens, options)
    }

    /// Formats `messages` with a chat template and queues the assistant's reply.
    pub fn chat(
        &self,
        messages: &[ChatMessage],
        template: &ChatTemplate,
        options: &GenerateOptions,
    ) -> Result<TokenStream> {
        let tokens = template.tokens(&self.inner.model, messages, &options.chat)?;
        self.generate_tokens(tokens, options)
    }

    /// Queues prompt tokens.
    pub fn generate_tokens(&self, tokens: Vec<Token>, options: &GenerateOptions) -> Result<TokenStream> {
        let inner = &self.inner;
        if inner.stopped.load(Ordering::SeqCst) {
            return Err(Error::Cancelled);
        }
        // The prompt checks, the schema's grammar and the chain's build (a bad grammar or
        // setting fails here) run on the caller's thread, never on the engine's.
        let (spec, _chain) =
            crate::request::RequestSpec::resolve(&inner.model, tokens, options, inner.config.n_ctx_per_seq)?;
        if let Some(crate::speculative::Speculation::Draft { draft, .. }) = &spec.speculation {
            if inner.config.draft.as_ref() != Some(draft) {
                return Err(Error::Unsupported(
                    "a draft model other than the engine's (EngineConfig::draft): the engine keeps one draft context"
                        .into(),
                ));
            }
        }
        // Admission counts every request not yet finished against the slots plus the queue:
        // a permit, released when the request ends (or its job is dropped), so the count
        // cannot drift and free slots count at once, before the worker has seen anything.
        let permit =
            worker::Permit::acquire(&inner.stats, inner.config.n_seq_max as usize + inner.config.queue_capacity)
                .ok_or(Error::Busy { queue_capacity: inner.config.queue_capacity })?;
        inner.stats.queued.fetch_add(1, Ordering::SeqCst);
        // The stream cancels a token of its own: dropping one stream must not cancel the
        // caller's token, which other requests made with the same options may share. The
        // worker checks both.
        let cancel = crate::generate::CancelToken::new();
        let (events, stream) = stream::channel(cancel.clone());
        let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
        let job = Job { id, events, cancel, caller_cancel: options.cancel.clone(), permit, submitted: Instant::now() };
        if inner.tx.send(Command::Submit(Box::new(worker::Submission { job, spec }))).is_err() {
            inner.stats.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(Error::Cancelled);
        }
        Ok(stream)
    }

    /// One pooled vector per text, computed by the engine's worker beside generation (one
    /// decode of embeddings per step) in a context of its own on the same model, so
    /// embedding and generation requests share one copy of the weights. From `config` the
    /// engine takes the pooling, normalisation and truncation; the batch size, sequences per
    /// decode (at most 64), threads and flash attention are the engine's. Texts are checked
    /// here first (empty or longer than the engine's `n_batch`: [`Error::Embedding`]).
    /// Blocks until the vectors are ready.
    ///
    /// ```
    /// # fn main() -> rocm_llama::Result<()> {
    /// use std::sync::Arc;
    /// use rocm_llama::{EmbedConfig, Engine, EngineConfig, LoadConfig, Model, Pooling};
    ///
    /// let model = Arc::new(Model::load(rocm_llama::synth::tiny_model()?, &LoadConfig::default())?);
    /// let engine = Engine::start(model, EngineConfig::default().n_ctx_per_seq(256))?;
    /// let vectors = engine.embed(&["one text", "another"], &EmbedConfig::default().pooling(Pooling::Mean))?;
    /// assert_eq!(vectors.len(), 2);
    /// # Ok(())
    /// # }
    /// ```
    pub fn embed<S: AsRef<str>>(&self, texts: &[S], config: &EmbedConfig) -> Result<Vec<Vec<f32>>> {
        let inner = &self.inner;
        if inner.stopped.load(Ordering::SeqCst) {
            return Err(Error::Cancelled);
        }
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let config = self.embed_config(config);
        let inputs = crate::embed::tokenize_texts(&inner.model, texts, &config)?;
        self.submit_embed(inputs, config)
    }

    /// [`embed`](Self::embed) for texts already tokenized (as OpenAI's `/v1/embeddings` takes
    /// token ids): every id must be in the vocabulary and every list fit `n_batch`.
    pub fn embed_tokens(&self, inputs: &[Vec<Token>], config: &EmbedConfig) -> Result<Vec<Vec<f32>>> {
        if self.inner.stopped.load(Ordering::SeqCst) {
            return Err(Error::Cancelled);
        }
        if inputs.is_empty() {
            return Ok(Vec::new());
        }
        let config = self.embed_config(config);
        let inputs = crate::embed::check_token_lists(&self.inner.model, inputs, &config)?;
        self.submit_embed(inputs, config)
    }

    /// Scores `documents` against `query` with the model's classifier head (rank pooling, as
    /// [`Embedder::rerank`](crate::embed::Embedder::rerank) does), computed by the engine's
    /// worker beside generation. One score per document, in document order; a model without
    /// a classifier head, an empty query or document, or a pair longer than `n_batch` is an
    /// error naming it. Blocks until the scores are ready.
    pub fn rerank<S: AsRef<str>>(&self, query: &str, documents: &[S]) -> Result<Vec<f32>> {
        if self.inner.stopped.load(Ordering::SeqCst) {
            return Err(Error::Cancelled);
        }
        if documents.is_empty() {
            return Ok(Vec::new());
        }
        let config = self.embed_config(&EmbedConfig::default().pooling(crate::embed::Pooling::Rank));
        let inputs = crate::embed::rerank_inputs(&self.inner.model, query, documents, &config)?;
        Ok(self.submit_embed(inputs, config)?.into_iter().map(|v| v.first().copied().unwrap_or(0.0)).collect())
    }

    /// The settings the engine was started with.
    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// The caller's pooling and normalisation with the engine's sizes.
    fn embed_config(&self, config: &EmbedConfig) -> EmbedConfig {
        let c = &self.inner.config;
        config
            .clone()
            .n_batch(c.n_batch)
            .n_seq_max(c.n_seq_max.clamp(1, 64).min(c.n_batch))
            .threads(c.threads)
            .flash_attention(c.flash_attention)
    }

    fn submit_embed(&self, inputs: Vec<Vec<Token>>, config: EmbedConfig) -> Result<Vec<Vec<f32>>> {
        let inner = &self.inner;
        let (reply, answer) = crossbeam_channel::bounded(1);
        if inner.tx.send(Command::Embed(Box::new(worker::EmbedJob { inputs, config, reply }))).is_err() {
            return Err(Error::Cancelled);
        }
        answer.recv().map_err(|_| Error::Cancelled)?
    }

    /// Every slot: whether it serves a request and how many tokens its cells hold.
    pub fn slots(&self) -> Result<Vec<SlotInfo>> {
        match self.slot_job(0, SlotAction::List)? {
            worker::SlotReply::List(slots) => Ok(slots),
            _ => Err(Error::Engine("unexpected reply".into())),
        }
    }

    /// Saves what slot `id` holds (its KV cells and their tokens) to `path`, in the format
    /// of [`Session::save`](crate::Session::save). The slot must be idle
    /// ([`Error::SlotBusy`] otherwise); it keeps its cells.
    pub fn save_slot(&self, id: u32, path: impl AsRef<std::path::Path>) -> Result<SlotFile> {
        match self.slot_job(id, SlotAction::Save(path.as_ref().to_path_buf()))? {
            worker::SlotReply::File(f) => Ok(f),
            _ => Err(Error::Engine("unexpected reply".into())),
        }
    }

    /// Replaces what idle slot `id` holds with a file of [`save_slot`](Self::save_slot); a
    /// later request with the same start reuses it. The file must come from an engine of
    /// the same model, llama.cpp and KV layout (`n_seq_max`, `kv_unified`): anything else is
    /// an [`Error::StateFile`] and leaves the slot empty.
    pub fn restore_slot(&self, id: u32, path: impl AsRef<std::path::Path>) -> Result<SlotFile> {
        match self.slot_job(id, SlotAction::Restore(path.as_ref().to_path_buf()))? {
            worker::SlotReply::File(f) => Ok(f),
            _ => Err(Error::Engine("unexpected reply".into())),
        }
    }

    /// Empties idle slot `id`; returns how many tokens it held.
    pub fn erase_slot(&self, id: u32) -> Result<usize> {
        match self.slot_job(id, SlotAction::Erase)? {
            worker::SlotReply::Erased(n) => Ok(n),
            _ => Err(Error::Engine("unexpected reply".into())),
        }
    }

    fn slot_job(&self, id: u32, action: SlotAction) -> Result<worker::SlotReply> {
        let inner = &self.inner;
        if inner.stopped.load(Ordering::SeqCst) {
            return Err(Error::Cancelled);
        }
        if id >= inner.config.n_seq_max {
            return Err(Error::InvalidSeqId {
                seq_id: id.min(i32::MAX as u32) as i32,
                n_seq_max: inner.config.n_seq_max,
            });
        }
        let (reply, answer) = crossbeam_channel::bounded(1);
        if inner.tx.send(Command::Slot(Box::new(SlotJob { id: id as usize, action, reply }))).is_err() {
            return Err(Error::Cancelled);
        }
        answer.recv().map_err(|_| Error::Cancelled)?
    }

    /// A snapshot of the engine's counters.
    pub fn stats(&self) -> EngineStats {
        let s = &self.inner.stats;
        let generated = s.generated.load(Ordering::Relaxed);
        let busy = s.busy_ns.load(Ordering::Relaxed) as f64 / 1e9;
        EngineStats {
            running: s.running.load(Ordering::Relaxed),
            queued: s.queued.load(Ordering::Relaxed),
            completed: s.completed.load(Ordering::Relaxed),
            generated_tokens: generated,
            prompt_tokens_computed: s.prompt_computed.load(Ordering::Relaxed),
            prompt_tokens_cached: s.prompt_cached.load(Ordering::Relaxed),
            prompt_tokens_shared: s.prompt_shared.load(Ordering::Relaxed),
            prompt_cache_hits: s.cache_hits.load(Ordering::Relaxed),
            prefix_copies: s.prefix_copies.load(Ordering::Relaxed),
            prefix_waits: s.prefix_waits.load(Ordering::Relaxed),
            kv_cells_used: s.kv_used.load(Ordering::Relaxed),
            kv_cells_cached: s.kv_cached.load(Ordering::Relaxed),
            tokens_per_s: if busy > 0.0 { generated as f64 / busy } else { 0.0 },
            steps: s.steps.load(Ordering::Relaxed),
            busy_s: busy,
            decode_s: s.decode_ns.load(Ordering::Relaxed) as f64 / 1e9,
            sample_s: s.sample_ns.load(Ordering::Relaxed) as f64 / 1e9,
            prompt_steps: s.prompt_steps.load(Ordering::Relaxed),
            prompt_decode_s: s.prompt_decode_ns.load(Ordering::Relaxed) as f64 / 1e9,
            graphs_reused: s.graphs_reused.load(Ordering::Relaxed),
            texts_embedded: s.texts_embedded.load(Ordering::Relaxed),
            draft_tokens: s.draft_tokens.load(Ordering::Relaxed),
            draft_tokens_accepted: s.draft_accepted.load(Ordering::Relaxed),
        }
    }

    /// Aborts the decode step in progress, or the next one (CPU backends check between graph
    /// nodes). Every sequence in that step's batch fails with [`Error::Engine`] and its KV
    /// cells are freed; queued and later requests are served as usual. For emergency stops
    /// and fault-injection tests.
    pub fn abort_step(&self) {
        self.inner.abort.abort();
    }

    /// The model this engine serves.
    pub fn model(&self) -> &Arc<Model> {
        &self.inner.model
    }

    /// Cancels all work, ends every stream in flight with [`Error::Cancelled`] and joins the
    /// worker thread. Later requests fail with [`Error::Cancelled`].
    pub fn shutdown(&self) {
        self.inner.shutdown();
    }
}
