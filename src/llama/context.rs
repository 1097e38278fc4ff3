//! [`Context`]: the KV cache and compute state for decoding with a [`Model`].

use std::ffi::c_void;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use llama_cpp_sys_2 as sys;

use crate::accounting::MemoryBreakdown;
use crate::adapter::{ControlVector, LoraAdapter};
use crate::batch::{Batch, Pos, SeqId};
use crate::error::{Error, Result};
use crate::model::Model;
use crate::sampler::Sampler;
use crate::threads::CoreWatch;
use crate::vocab::Token;

/// Whether `samplers` holds a chain for sequence `seq`.
fn attached(samplers: &[Option<Sampler<'_>>], seq: SeqId) -> bool {
    usize::try_from(seq).ok().and_then(|s| samplers.get(s)).is_some_and(Option::is_some)
}

/// What one batch index of the last decode produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Output {
    /// Nothing (not marked for output).
    None,
    /// A row of logits.
    Logits,
    /// A token picked by the device sampler of this sequence.
    Sampled(SeqId),
}

/// When to use flash attention (`llama_flash_attn_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub enum FlashAttention {
    /// llama.cpp decides per device (the default).
    #[default]
    Auto,
    /// Always.
    On,
    /// Never.
    Off,
}

impl std::str::FromStr for FlashAttention {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(FlashAttention::Auto),
            "on" | "true" | "1" => Ok(FlashAttention::On),
            "off" | "false" | "0" => Ok(FlashAttention::Off),
            other => Err(Error::invalid("flash_attention", format!("must be auto, on or off, not {other:?}"))),
        }
    }
}

/// Element type of the K or V cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub enum KvType {
    /// 32-bit floats.
    F32,
    /// 16-bit floats (the default).
    #[default]
    F16,
    /// bfloat16.
    BF16,
    /// 8-bit blocks.
    Q8_0,
    /// 4-bit blocks.
    Q4_0,
    /// 4-bit blocks with offset.
    Q4_1,
    /// 5-bit blocks.
    Q5_0,
    /// 5-bit blocks with offset.
    Q5_1,
    /// 4-bit non-linear.
    Iq4Nl,
}

impl KvType {
    /// The ggml type id (`ggml_type`).
    pub(crate) fn ggml(self) -> sys::ggml_type {
        match self {
            KvType::F32 => sys::GGML_TYPE_F32,
            KvType::F16 => sys::GGML_TYPE_F16,
            KvType::BF16 => sys::GGML_TYPE_BF16,
            KvType::Q8_0 => sys::GGML_TYPE_Q8_0,
            KvType::Q4_0 => sys::GGML_TYPE_Q4_0,
            KvType::Q4_1 => sys::GGML_TYPE_Q4_1,
            KvType::Q5_0 => sys::GGML_TYPE_Q5_0,
            KvType::Q5_1 => sys::GGML_TYPE_Q5_1,
            KvType::Iq4Nl => sys::GGML_TYPE_IQ4_NL,
        }
    }

    /// Whether this is a block-quantized type (which needs flash attention for V).
    pub fn is_quantized(self) -> bool {
        !matches!(self, KvType::F32 | KvType::F16 | KvType::BF16)
    }
}

impl std::str::FromStr for KvType {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "f32" => KvType::F32,
            "f16" => KvType::F16,
            "bf16" => KvType::BF16,
            "q8_0" => KvType::Q8_0,
            "q4_0" => KvType::Q4_0,
            "q4_1" => KvType::Q4_1,
            "q5_0" => KvType::Q5_0,
            "q5_1" => KvType::Q5_1,
            "iq4_nl" => KvType::Iq4Nl,
            other => return Err(Error::invalid("KV cache type", format!("unknown type {other:?}"))),
        })
    }
}

pub use crate::threads::default_threads;

/// Settings for [`Context::new`].
///
/// ```
/// use rocm_llama::{ContextConfig, FlashAttention, KvType};
///
/// let config = ContextConfig::default()
///     .n_ctx(8192)
///     .n_batch(1024)
///     .flash_attention(FlashAttention::On)
///     .type_k(KvType::Q8_0)
///     .type_v(KvType::Q8_0);
/// assert_eq!(config.n_ctx, Some(8192));
/// ```
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct ContextConfig {
    /// Total context length in tokens, shared by all sequences (`None`: the model's trained length).
    pub n_ctx: Option<u32>,
    /// Most tokens one `decode` call may take (default 512).
    pub n_batch: u32,
    /// Most tokens computed at once inside a decode (default 512).
    pub n_ubatch: u32,
    /// Number of sequences (default 1).
    pub n_seq_max: u32,
    /// Threads for single-token decoding (default: [`default_threads`], the cores other
    /// processes leave free, followed while the context decodes: see [`crate::threads`]).
    pub threads: Option<u32>,
    /// Threads for prompt processing (default: same as `threads`).
    pub threads_batch: Option<u32>,
    /// Flash attention.
    pub flash_attention: FlashAttention,
    /// K cache element type.
    pub type_k: KvType,
    /// V cache element type (quantized types need flash attention).
    pub type_v: KvType,
    /// Also compute embeddings.
    pub embeddings: bool,
    /// How embeddings are pooled per sequence (default: what the model declares).
    pub pooling: Pooling,
    /// Keep the KV cache on the GPU (default true).
    pub offload_kqv: bool,
    /// One KV buffer shared by all sequences (default true; helps shared prefixes).
    pub kv_unified: bool,
    /// On models with sliding-window layers (gemma 2 and 3, ...), give those layers a full
    /// context of cells (default true, as llama.cpp's own default). Off, they keep only the
    /// last window of positions plus one batch, much less memory at long contexts, but a
    /// cached prompt can then be reused only up to a window behind its newest position.
    pub swa_full: bool,
}

impl Default for ContextConfig {
    fn default() -> Self {
        ContextConfig {
            n_ctx: None,
            n_batch: 512,
            n_ubatch: 512,
            n_seq_max: 1,
            threads: None,
            threads_batch: None,
            flash_attention: FlashAttention::Auto,
            type_k: KvType::F16,
            type_v: KvType::F16,
            embeddings: false,
            pooling: Pooling::Model,
            offload_kqv: true,
            kv_unified: true,
            swa_full: true,
        }
    }
}

crate::config::setters!(ContextConfig {
    n_ubatch: u32,
    n_seq_max: u32,
    flash_attention: FlashAttention,
    type_k: KvType,
    type_v: KvType,
    embeddings: bool,
    pooling: Pooling,
    offload_kqv: bool,
    kv_unified: bool,
    swa_full: bool,
} optional {
    n_ctx: u32,
    threads_batch: u32,
});

impl ContextConfig {
    /// Sets [`n_batch`](Self::n_batch), and lowers [`n_ubatch`](Self::n_ubatch) to it when
    /// it was larger.
    #[must_use]
    pub fn n_batch(mut self, n: u32) -> Self {
        self.n_batch = n;
        self.n_ubatch = self.n_ubatch.min(n);
        self
    }
    /// Sets [`threads`](Self::threads) and [`threads_batch`](Self::threads_batch) (set
    /// `threads_batch` after this to give prompt processing a different count).
    #[must_use]
    pub fn threads(mut self, n: impl Into<Option<u32>>) -> Self {
        self.threads = n.into();
        self.threads_batch = self.threads;
        self
    }

    fn validate(&self, model: &Model) -> Result<()> {
        let bad = |what: &'static str, m: String| Err(Error::invalid(what, m));
        if self.n_batch == 0 || self.n_ubatch == 0 {
            return bad("n_batch", "n_batch and n_ubatch must be at least 1".into());
        }
        if self.n_ubatch > self.n_batch {
            return bad("n_ubatch", format!("n_ubatch {} exceeds n_batch {}", self.n_ubatch, self.n_batch));
        }
        // SAFETY: a pure query.
        let max_seq = unsafe { sys::llama_max_parallel_sequences() } as u32;
        if self.n_seq_max == 0 || self.n_seq_max > max_seq {
            return bad("n_seq_max", format!("n_seq_max must be 1..={max_seq}, got {}", self.n_seq_max));
        }
        if let Some(n) = self.n_ctx {
            if n < 8 {
                return bad("n_ctx", format!("n_ctx {n} is too small (at least 8)"));
            }
        }
        // llama.cpp reserves one output row per sequence inside its logical batch, which it
        // caps at the context length, and asserts (killing the process) when they do not fit.
        let n_ctx = self.n_ctx.unwrap_or_else(|| model.n_ctx_train());
        let effective_batch = self.n_batch.min(n_ctx.max(1));
        if self.n_seq_max > effective_batch {
            return bad(
                "n_seq_max",
                format!(
                    "n_seq_max {} needs a batch of at least as many tokens, but n_batch is {}{}: raise n_batch or \
                 lower n_seq_max",
                    self.n_seq_max,
                    effective_batch,
                    if effective_batch < self.n_batch { format!(" (capped at n_ctx {n_ctx})") } else { String::new() }
                ),
            );
        }
        for t in [self.threads, self.threads_batch].into_iter().flatten() {
            if t == 0 || t > 4096 {
                return bad("threads", format!("thread count {t} must be 1..=4096"));
            }
        }
        if self.type_v.is_quantized() && self.flash_attention == FlashAttention::Off {
            return bad("cache_type_v", "a quantized V cache needs flash attention (auto or on)".into());
        }
        Ok(())
    }
}

/// Decoding state for one model: KV cache, compute buffers, logits. Wraps `llama_context`.
///
/// Borrows its model. Send (move it to a worker thread) but not Sync.
pub struct Context<'m> {
    ptr: NonNull<sys::llama_context>,
    model: &'m Model,
    n_vocab: i32,
    n_ctx: u32,
    n_ctx_seq: u32,
    n_batch: u32,
    n_ubatch: u32,
    n_seq_max: u32,
    /// One KV stream for all sequences (`kv_unified`, or a single sequence).
    pub(crate) kv_unified: bool,
    /// The K cache's element type (shifting positions re-ropes it).
    pub(crate) type_k: KvType,
    /// `outputs[i]`: what batch index `i` of the last successful decode produced.
    outputs: Vec<Output>,
    /// Sampler chains running inside the decode graph, per sequence (llama.cpp keeps
    /// pointers to them, so the context owns them while they are attached; they drop after
    /// the context is freed).
    device_samplers: Vec<Option<Sampler<'m>>>,
    abort: Arc<AtomicBool>,
    embeddings: bool,
    /// The pooling llama.cpp applies (the model's when the config left it open).
    pooling: Pooling,
    memory: MemoryBreakdown,
    /// Thread counts now, and the core watch that moves the ones the caller left unset.
    threads: Threads,
    /// The LoRA adapters set on the context (llama.cpp keeps pointers to them: the context
    /// holds them while they are set, and is freed before they drop).
    lora: Vec<(LoraAdapter, f32)>,
}

/// A context's thread counts, and which of them follow the free cores.
#[derive(Debug)]
struct Threads {
    decode: u32,
    batch: u32,
    follow_decode: bool,
    follow_batch: bool,
    watch: Option<CoreWatch>,
}

// SAFETY: a `llama_context` may be used from any thread as long as only one uses it at a
// time (llama.cpp's threading contract: contexts are not thread-safe, models are). `Context`
// is not `Sync` and every mutating call takes `&mut self`.
unsafe impl Send for Context<'_> {}

/// Lets another thread stop a [`Context::decode`]: the one in progress, or else the next one
/// (CPU backends check the flag between graph nodes). That decode returns [`Error::Aborted`]
/// and the flag clears.
#[derive(Debug, Clone)]
pub struct AbortHandle(Arc<AtomicBool>);

impl AbortHandle {
    /// Requests the abort.
    pub fn abort(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

unsafe extern "C" fn abort_trampoline(data: *mut c_void) -> bool {
    // SAFETY: `data` points into the `Arc<AtomicBool>` the context holds for its whole life.
    let flag = unsafe { &*(data as *const AtomicBool) };
    flag.load(Ordering::Relaxed)
}

impl<'m> Context<'m> {
    /// Creates a context. Wraps `llama_init_from_model`.
    ///
    /// ```
    /// # fn main() -> rocm_llama::Result<()> {
    /// use rocm_llama::{Batch, Context, ContextConfig, LoadConfig, Model};
    ///
    /// let model = Model::load(rocm_llama::synth::tiny_model()?, &LoadConfig::default())?;
    /// let mut ctx = Context::new(&model, &ContextConfig::default().n_ctx(256))?;
    /// let tokens = model.vocab().tokenize("t1 t2 t3", true, false)?;
    /// let mut batch = Batch::new(tokens.len(), 1)?;
    /// batch.add_sequence(&tokens, 0, 0, true)?;
    /// ctx.decode(&batch)?;
    /// let logits = ctx.logits(batch.len() as i32 - 1)?;
    /// assert_eq!(logits.len(), model.vocab().n_tokens() as usize);
    /// # Ok(())
    /// # }
    /// ```
    pub fn new(model: &'m Model, config: &ContextConfig) -> Result<Context<'m>> {
        crate::init::init();
        if model.is_vocab_only() {
            return Err(Error::InvalidState(
                "the model was loaded with vocab_only: it has no weights to decode with".into(),
            ));
        }
        config.validate(model)?;
        model.check_remote()?;
        // SAFETY: returns a plain struct by value.
        let mut p = unsafe { sys::llama_context_default_params() };
        p.n_ctx = config.n_ctx.unwrap_or(0);
        p.n_batch = config.n_batch;
        p.n_ubatch = config.n_ubatch;
        p.n_seq_max = config.n_seq_max;
        let threads = config.threads.unwrap_or_else(default_threads);
        let threads_batch = config.threads_batch.unwrap_or(threads);
        p.n_threads = threads as i32;
        p.n_threads_batch = threads_batch as i32;
        let follow_decode = config.threads.is_none();
        let follow_batch = config.threads_batch.is_none() && config.threads.is_none();
        let threads = Threads {
            decode: threads,
            batch: threads_batch,
            follow_decode,
            follow_batch,
            watch: if follow_decode || follow_batch { CoreWatch::new() } else { None },
        };
        p.flash_attn_type = match config.flash_attention {
            FlashAttention::Auto => sys::LLAMA_FLASH_ATTN_TYPE_AUTO,
            FlashAttention::On => sys::LLAMA_FLASH_ATTN_TYPE_ENABLED,
            FlashAttention::Off => sys::LLAMA_FLASH_ATTN_TYPE_DISABLED,
        };
        p.type_k = config.type_k.ggml();
        p.type_v = config.type_v.ggml();
        p.embeddings = config.embeddings;
        p.pooling_type = config.pooling.raw();
        p.offload_kqv = config.offload_kqv;
        p.kv_unified = config.kv_unified;
        p.swa_full = config.swa_full;
        p.no_perf = false;

        let abort = Arc::new(AtomicBool::new(false));
        p.abort_callback = Some(abort_trampoline);
        p.abort_callback_data = Arc::as_ptr(&abort) as *mut c_void;

        let (raw, log) = crate::init::capture_log(|| {
            // SAFETY: the model pointer is valid for `'m`; params are initialised; the abort
            // flag outlives the context because the context holds the `Arc`.
            unsafe { sys::llama_init_from_model(model.as_ptr(), p) }
        });
        // A server lost while the buffers were made: its error, not a generic one.
        if let Err(e) = model.check_remote() {
            if let Some(ptr) = NonNull::new(raw) {
                // SAFETY: a context llama.cpp just returned and nothing else refers to.
                unsafe { sys::llama_free(ptr.as_ptr()) };
            }
            return Err(e);
        }
        let ptr = NonNull::new(raw).ok_or_else(|| {
            Error::ContextCreate(format!(
                "n_ctx {:?}, n_seq_max {}, flash attention {:?}: {}",
                config.n_ctx,
                config.n_seq_max,
                config.flash_attention,
                crate::error::llama_reason(&log).unwrap_or_else(|| "out of memory or unsupported".into())
            ))
        })?;
        // SAFETY: `ptr` is a live context.
        let (n_ctx, n_ctx_seq, n_batch, n_ubatch, n_seq_max) = unsafe {
            (
                sys::llama_n_ctx(ptr.as_ptr()),
                sys::llama_n_ctx_seq(ptr.as_ptr()),
                sys::llama_n_batch(ptr.as_ptr()),
                sys::llama_n_ubatch(ptr.as_ptr()),
                sys::llama_n_seq_max(ptr.as_ptr()),
            )
        };
        // SAFETY: `ptr` is a live context.
        let pooling = Pooling::from_raw(unsafe { sys::llama_pooling_type(ptr.as_ptr()) });
        let mut memory = MemoryBreakdown::from_log(&log);
        crate::rpc::name_buffers(&mut memory);
        memory.weights.clear();
        crate::accounting::account(&memory, true);
        Ok(Context {
            ptr,
            model,
            memory,
            n_vocab: model.vocab().n_tokens(),
            n_ctx,
            n_ctx_seq,
            n_batch,
            n_ubatch,
            n_seq_max,
            kv_unified: config.kv_unified || n_seq_max == 1,
            type_k: config.type_k,
            outputs: Vec::new(),
            device_samplers: (0..n_seq_max).map(|_| None).collect(),
            abort,
            embeddings: config.embeddings,
            pooling,
            threads,
            lora: Vec::new(),
        })
    }

    /// Applies LoRA adapters, each with its scale, to every later decode of every sequence;
    /// the set replaces the one before, and an empty set removes them. An adapter loaded for
    /// another model, or a scale that is not finite, is an [`Error::InvalidArgument`]. A
    /// scale of 0 is the same as leaving the adapter out. The KV cache is not touched: cells
    /// computed under another set stay as they were.
    ///
    /// Changing the set makes llama.cpp plan its compute graph again at the next decode.
    pub fn set_lora(&mut self, adapters: &[(LoraAdapter, f32)]) -> Result<()> {
        for (a, scale) in adapters {
            if !a.belongs_to(self.model) {
                return Err(Error::invalid(
                    "lora adapter",
                    format!("{} was loaded for another model", a.path().display()),
                ));
            }
            if !scale.is_finite() {
                return Err(Error::invalid("lora scale", format!("{scale} is not finite")));
            }
        }
        let mut ptrs: Vec<*mut sys::llama_adapter_lora> = adapters.iter().map(|(a, _)| a.raw()).collect();
        let mut scales: Vec<f32> = adapters.iter().map(|(_, s)| *s).collect();
        // SAFETY: the adapters belong to this context's model and stay alive while set (the
        // context keeps clones of them below); both arrays hold `len` elements (for 0, Rust's
        // empty vectors give non-null pointers, which llama.cpp does not read).
        unsafe { sys::llama_set_adapters_lora(self.raw(), ptrs.as_mut_ptr(), ptrs.len(), scales.as_mut_ptr()) };
        self.lora = adapters.to_vec();
        Ok(())
    }

    /// The LoRA adapters set on the context, with their scales.
    pub fn lora(&self) -> &[(LoraAdapter, f32)] {
        &self.lora
    }

    /// Adds `vector`'s directions to the hidden state after each layer in `layers` (numbered
    /// as the vector's `direction.N` tensors, from 1) at every later decode, or removes the
    /// control vector with `None`. A range outside `1..=n_layer - 1` or a vector for another
    /// model is an [`Error::InvalidArgument`].
    pub fn set_control_vector(
        &mut self,
        vector: Option<(&ControlVector, std::ops::RangeInclusive<u32>)>,
    ) -> Result<()> {
        let Some((v, layers)) = vector else {
            // SAFETY: a null vector clears the context's control vector.
            unsafe { sys::llama_set_adapter_cvec(self.raw(), std::ptr::null(), 0, 0, -1, -1) };
            return Ok(());
        };
        let n_layer = self.model.n_layer();
        if layers.is_empty() || *layers.start() < 1 || *layers.end() >= n_layer {
            return Err(Error::invalid(
                "control vector layers",
                format!("{layers:?} is not within 1..={}", n_layer - 1),
            ));
        }
        if v.n_embd() != self.model.n_embd() as usize {
            return Err(Error::invalid("control vector", "it was made for a model of another width"));
        }
        let data = v.data();
        // SAFETY: `data` holds `len` floats, n_embd per layer from layer 1; llama.cpp copies
        // them into its own tensors before returning.
        let code = unsafe {
            sys::llama_set_adapter_cvec(
                self.raw(),
                data.as_ptr(),
                data.len(),
                v.n_embd() as i32,
                *layers.start() as i32,
                *layers.end() as i32,
            )
        };
        if code != 0 {
            return Err(Error::Llama { call: "llama_set_adapter_cvec", reason: format!("returned {code}") });
        }
        Ok(())
    }

    /// The raw pointer, for calls this crate does not wrap.
    ///
    /// # Safety
    /// Valid while `self` lives; do not free it, and do not use it while another borrow of
    /// this context is active.
    pub unsafe fn as_ptr(&self) -> *mut sys::llama_context {
        self.ptr.as_ptr()
    }

    pub(crate) fn raw(&self) -> *mut sys::llama_context {
        self.ptr.as_ptr()
    }

    /// The KV cache and compute buffers this context holds, per llama.cpp buffer.
    pub fn memory_usage(&self) -> &MemoryBreakdown {
        &self.memory
    }

    /// The model this context decodes with.
    pub fn model(&self) -> &'m Model {
        self.model
    }

    /// Total context length (all sequences together). Wraps `llama_n_ctx`.
    pub fn n_ctx(&self) -> u32 {
        self.n_ctx
    }

    /// Context length available to one sequence. Wraps `llama_n_ctx_seq`.
    pub fn n_ctx_seq(&self) -> u32 {
        self.n_ctx_seq
    }

    /// Most tokens one decode may take. Wraps `llama_n_batch`.
    pub fn n_batch(&self) -> u32 {
        self.n_batch
    }

    /// Number of sequences. Wraps `llama_n_seq_max`.
    pub fn n_seq_max(&self) -> u32 {
        self.n_seq_max
    }

    /// A handle that aborts a decode in progress from another thread.
    pub fn abort_handle(&self) -> AbortHandle {
        AbortHandle(self.abort.clone())
    }

    /// Changes the thread counts; from then on they stay as set (they no longer follow the
    /// free cores). Wraps `llama_set_n_threads`.
    pub fn set_threads(&mut self, threads: u32, threads_batch: u32) -> Result<()> {
        if threads == 0 || threads_batch == 0 || threads > 4096 || threads_batch > 4096 {
            return Err(Error::invalid("threads", "thread counts must be 1..=4096"));
        }
        self.threads.watch = None;
        self.apply_threads(threads, threads_batch);
        Ok(())
    }

    /// The thread counts in use: (single-token decoding, prompt processing).
    pub fn threads(&self) -> (u32, u32) {
        (self.threads.decode, self.threads.batch)
    }

    fn apply_threads(&mut self, threads: u32, threads_batch: u32) {
        // SAFETY: live context, counts checked by the callers (1..=4096).
        unsafe { sys::llama_set_n_threads(self.raw(), threads as i32, threads_batch as i32) };
        self.threads.decode = threads;
        self.threads.batch = threads_batch;
    }

    /// Every few seconds, moves the thread counts the caller left unset to the cores other
    /// processes leave free (see [`crate::threads`]).
    fn follow_free_cores(&mut self) {
        let t = &mut self.threads;
        let Some(free) = t.watch.as_mut().and_then(|w| w.poll()) else { return };
        let decode = if t.follow_decode { free } else { t.decode };
        let batch = if t.follow_batch { free } else { t.batch };
        if (decode, batch) != (t.decode, t.batch) {
            tracing::debug!(decode, batch, "thread counts follow the free cores");
            self.apply_threads(decode, batch);
        }
    }

    /// Checks a sequence id against `n_seq_max`.
    pub(crate) fn check_seq(&self, seq_id: i32) -> Result<()> {
        if seq_id < 0 || seq_id as u32 >= self.n_seq_max {
            return Err(Error::InvalidSeqId { seq_id, n_seq_max: self.n_seq_max });
        }
        Ok(())
    }

    /// Checks everything llama.cpp would reject or assert on before it sees the batch.
    fn check_batch(&self, batch: &Batch) -> Result<()> {
        let n = batch.len();
        if n == 0 || n > self.n_batch as usize {
            return Err(Error::BatchSize { n_tokens: n, n_batch: self.n_batch });
        }
        for &t in batch.tokens() {
            if !(0..self.n_vocab).contains(&t) {
                return Err(Error::InvalidToken { token: t, n_vocab: self.n_vocab });
            }
        }
        for &p in batch.positions() {
            if p < 0 || p as u32 >= self.n_ctx_seq {
                return Err(Error::InvalidPosition { pos: p, n_ctx: self.n_ctx_seq });
            }
        }
        // Within one batch a sequence's positions must rise: llama.cpp rejects falling ones
        // but takes repeated ones, which corrupt the sequence's cache for later decodes.
        let mut last = vec![-1 as Pos; self.n_seq_max as usize];
        for (i, &p) in batch.positions().iter().enumerate() {
            for &s in batch.seq_ids(i).unwrap_or_default() {
                self.check_seq(s)?;
                let prev = &mut last[s as usize];
                if p <= *prev {
                    return Err(Error::InvalidBatch(format!(
                        "sequence {s} has position {p} after position {prev} in the same batch (positions of a \
                         sequence must rise within a batch)",
                        prev = *prev
                    )));
                }
                *prev = p;
            }
        }
        // A sequence sampled on the device takes one output per decode (llama.cpp's
        // n_outputs_max_per_seq), and an output shared by several sequences must not mix
        // device and host sampling.
        if self.device_samplers.iter().any(Option::is_some) {
            let mut outputs = vec![0u32; self.n_seq_max as usize];
            for (i, &flag) in batch.output_flags().iter().enumerate() {
                if flag == 0 {
                    continue;
                }
                let seqs = batch.seq_ids(i).unwrap_or_default();
                let on_device = seqs.iter().filter(|&&s| self.has_device_sampler(s)).count();
                if on_device > 0 && on_device != seqs.len() {
                    return Err(Error::InvalidBatch(format!(
                        "batch index {i} is an output of sequences sampled on the device and on the host"
                    )));
                }
                for &s in seqs.iter().filter(|&&s| self.has_device_sampler(s)) {
                    outputs[s as usize] += 1;
                    if outputs[s as usize] > 1 {
                        return Err(Error::InvalidBatch(format!(
                            "sequence {s} is sampled on the device, which takes one output per sequence and decode"
                        )));
                    }
                }
            }
        }
        // Non-causal models (embedding encoders) attend over the whole batch at once, which
        // llama.cpp asserts fits into one micro-batch.
        // SAFETY: live context; a plain query.
        if n > self.n_ubatch as usize && !unsafe { sys::llama_get_causal_attn(self.raw()) } {
            return Err(Error::InvalidBatch(format!(
                "this model attends over the whole batch at once (non-causal), so a batch holds at most \
                 n_ubatch = {} tokens, got {n}",
                self.n_ubatch
            )));
        }
        Ok(())
    }

    /// Runs the model over a batch, filling the KV cache and computing the requested outputs.
    /// Wraps `llama_decode`.
    ///
    /// The batch is checked first: empty or larger than `n_batch`, token ids outside the
    /// vocabulary, positions outside the context and sequence ids outside `n_seq_max` are
    /// errors. Return codes map to [`Error::NoKvSlot`] (1), [`Error::Aborted`] (2),
    /// [`Error::InvalidBatch`] (-1) and [`Error::Decode`] (others).
    ///
    /// With part of the model on an RPC server that has failed, this is [`Error::Rpc`]
    /// before llama.cpp is called, or after it returns when the server failed during the
    /// call (its results are then discarded).
    pub fn decode(&mut self, batch: &Batch) -> Result<()> {
        self.check_batch(batch)?;
        self.model.check_remote()?;
        self.follow_free_cores();
        self.outputs.clear();
        // llama.cpp logs its reason for a rejected batch; capture it for the error.
        let (code, log) = crate::init::capture_log(|| {
            // SAFETY: live context; the batch's arrays hold `n_tokens` checked entries and
            // stay alive for the call.
            unsafe { sys::llama_decode(self.raw(), batch.raw()) }
        });
        if code == 2 {
            self.abort.store(false, Ordering::SeqCst);
        }
        self.model.check_remote()?;
        Error::check_decode(code, &log)?;
        // Reuses the vector's capacity: this runs after every decode. An output's sequences
        // agree on device sampling (`check_batch`), so the first one decides.
        let samplers = &self.device_samplers;
        self.outputs.extend(batch.output_flags().iter().enumerate().map(|(i, &flag)| {
            let device_seq = batch.seq_ids(i).unwrap_or_default().first().copied().filter(|&s| attached(samplers, s));
            match (flag != 0, device_seq) {
                (false, _) => Output::None,
                (true, Some(seq)) => Output::Sampled(seq),
                (true, None) => Output::Logits,
            }
        }));
        Ok(())
    }

    /// Whether sequence `seq` has a sampler chain attached to run inside the decode graph.
    pub fn has_device_sampler(&self, seq: SeqId) -> bool {
        attached(&self.device_samplers, seq)
    }

    /// Runs `sampler` inside the decode graph for sequence `seq` (llama.cpp's experimental
    /// backend sampling): from the next decode, an output of `seq` yields a token through
    /// [`sampled_token`](Context::sampled_token) instead of logits. The chain must
    /// [run on the device](Sampler::runs_on_device); the context keeps it until
    /// [`clear_device_sampler`](Context::clear_device_sampler) or its end, and replaces one
    /// attached before. Each change makes llama.cpp plan its graph again at the next decode,
    /// so keep a chain attached across requests where the settings allow
    /// ([`reset_device_sampler`](Context::reset_device_sampler)). Wraps `llama_set_sampler`.
    pub fn set_device_sampler(&mut self, seq: SeqId, sampler: Sampler<'m>) -> Result<()> {
        self.check_seq(seq)?;
        if !sampler.runs_on_device() {
            return Err(Error::Sampling(
                "this chain cannot run on the device (grammar, penalties, DRY or typical stages, or no final \
                 greedy/dist stage)"
                    .into(),
            ));
        }
        // SAFETY: live context and chain; the chain stays alive in `device_samplers` for as long
        // as llama.cpp holds it (until it is replaced, cleared, or the context is freed).
        let (ok, log) =
            crate::init::capture_log(|| unsafe { sys::llama_set_sampler(self.raw(), seq, sampler.as_ptr()) });
        if !ok {
            // llama.cpp did not take it (it keeps no pointer then); the old one is gone too.
            self.device_samplers[seq as usize] = None;
            self.forget_sampled(seq);
            return Err(Error::Sampling(format!(
                "llama.cpp would not run the chain on the device: {}",
                crate::error::llama_reason(&log).unwrap_or_else(|| "no reason given".into())
            )));
        }
        self.device_samplers[seq as usize] = Some(sampler);
        self.forget_sampled(seq);
        Ok(())
    }

    /// Tokens the last decode picked for `seq` belong to a chain that is gone now.
    fn forget_sampled(&mut self, seq: SeqId) {
        for o in &mut self.outputs {
            if *o == Output::Sampled(seq) {
                *o = Output::None;
            }
        }
    }

    /// Stops sampling sequence `seq` on the device: its outputs are logits again. Wraps
    /// `llama_set_sampler` with no sampler.
    pub fn clear_device_sampler(&mut self, seq: SeqId) -> Result<()> {
        self.check_seq(seq)?;
        if self.device_samplers[seq as usize].is_none() {
            return Ok(());
        }
        // SAFETY: live context; a null sampler detaches.
        unsafe { sys::llama_set_sampler(self.raw(), seq, std::ptr::null_mut()) };
        self.device_samplers[seq as usize] = None;
        self.forget_sampled(seq);
        Ok(())
    }

    /// Resets the device sampler of `seq` to its state when built (a dist stage reseeds), so
    /// a new request with the same settings can reuse it without a new graph plan.
    pub fn reset_device_sampler(&mut self, seq: SeqId) -> Result<()> {
        self.check_seq(seq)?;
        match self.device_samplers[seq as usize].as_mut() {
            Some(s) => {
                s.reset();
                Ok(())
            }
            None => Err(Error::Sampling(format!("sequence {seq} has no device sampler"))),
        }
    }

    /// The token the device sampler picked for batch index `index` of the last decode, which
    /// must be an output of a sequence with a device sampler; the chain sees it as accepted.
    /// Wraps `llama_get_sampled_token_ith`.
    pub fn sampled_token(&mut self, index: i32) -> Result<Token> {
        let seq = match usize::try_from(index).ok().and_then(|i| self.outputs.get(i)) {
            Some(&Output::Sampled(seq)) => seq,
            Some(Output::Logits) => {
                return Err(Error::Sampling(format!(
                    "batch index {index} has logits, not a device-sampled token (its sequence has no device sampler)"
                )))
            }
            _ => return Err(Error::NoOutput { index }),
        };
        // SAFETY: live context; `index` is an output of the last decode.
        let t = unsafe { sys::llama_get_sampled_token_ith(self.raw(), index) };
        if !(0..self.n_vocab).contains(&t) {
            return Err(Error::Sampling(format!("the device sampler picked no token for batch index {index}")));
        }
        if let Some(s) = self.device_samplers.get_mut(seq as usize).and_then(Option::as_mut) {
            s.accept_device_token(t);
        }
        Ok(t)
    }

    /// Waits until the work of the last decode has finished on every device (decodes on a
    /// GPU may return before it has). Wraps `llama_synchronize`.
    pub fn synchronize(&mut self) {
        // SAFETY: live context.
        unsafe { sys::llama_synchronize(self.raw()) };
    }

    /// Runs the model once over two tokens in sequence 0 and forgets them: the backends do
    /// their first-use work now instead of in the first real request (ggml's Vulkan backend
    /// compiles the compute pipelines a graph needs the first time it runs, which took 1.3 to
    /// 5 s on an NVIDIA H100; a CUDA or HIP device starts its runtime; a memory-mapped file's
    /// pages are read). llama.cpp's tools do the same unless given `--no-warmup`.
    ///
    /// The tokens are the model's BOS and EOS (whichever it has, else token 0); the last one
    /// computes the output head, unless sequence 0 is sampled on the device (its sampler would
    /// move on). Sequence 0 must be empty; afterwards it is empty again and no output of the
    /// warm-up can be read.
    pub fn warm_up(&mut self) -> Result<()> {
        if self.seq_pos_max(0)?.is_some() {
            return Err(Error::invalid("warm_up", "sequence 0 must be empty (warm a context up before using it)"));
        }
        let vocab = self.model.vocab();
        let mut tokens: Vec<Token> = [vocab.bos(), vocab.eos()].into_iter().flatten().collect();
        if tokens.is_empty() {
            tokens.push(0);
        }
        tokens.truncate(self.n_batch.min(self.n_ctx_seq) as usize);
        let mut batch = Batch::new(tokens.len(), 1)?;
        batch.add_sequence(&tokens, 0, 0, !self.has_device_sampler(0))?;
        let ran = self.decode(&batch);
        self.synchronize();
        // Whatever the decode did, sequence 0 is left as it was found.
        self.seq_remove(Some(0), ..)?;
        self.outputs.clear();
        ran
    }

    fn check_output(&self, index: i32) -> Result<()> {
        match usize::try_from(index).ok().and_then(|i| self.outputs.get(i)) {
            Some(Output::Logits) => Ok(()),
            Some(Output::Sampled(_)) => Err(Error::Sampling(format!(
                "batch index {index} was sampled on the device: read its token with `sampled_token`"
            ))),
            _ => Err(Error::NoOutput { index }),
        }
    }

    /// The logits (one per vocabulary entry) of batch index `index` from the last decode.
    /// Wraps `llama_get_logits_ith`. Indices that produced no output are an error.
    pub fn logits(&self, index: i32) -> Result<&[f32]> {
        self.check_output(index)?;
        // SAFETY: `index` produced output in the last decode, so llama.cpp holds its row.
        let p = unsafe { sys::llama_get_logits_ith(self.raw(), index) };
        if p.is_null() {
            return Err(Error::NoOutput { index });
        }
        // SAFETY: the row holds `n_vocab` floats and lives until the next decode, which needs
        // `&mut self` and so cannot overlap this borrow.
        Ok(unsafe { std::slice::from_raw_parts(p, self.n_vocab as usize) })
    }

    /// The embedding of batch index `index` (contexts made with `embeddings: true`).
    /// Wraps `llama_get_embeddings_ith`.
    pub fn embeddings(&self, index: i32) -> Result<&[f32]> {
        if !self.embeddings {
            return Err(Error::InvalidState("this context was created without embeddings".into()));
        }
        self.check_output(index)?;
        // SAFETY: as for `logits`.
        let p = unsafe { sys::llama_get_embeddings_ith(self.raw(), index) };
        if p.is_null() {
            return Err(Error::NoOutput { index });
        }
        // SAFETY: llama.cpp's embedding rows hold `n_embd_out` floats (which a GGUF may set
        // apart from `n_embd`) and live until the next decode.
        unsafe {
            let n = sys::llama_model_n_embd_out(self.model.raw());
            Ok(std::slice::from_raw_parts(p, usize::try_from(n).unwrap_or(0)))
        }
    }

    /// The pooled embedding of sequence `seq` from the last decode (contexts made with
    /// `embeddings: true` and a pooling other than [`Pooling::None`]): `n_embd_out` floats, or
    /// with [`Pooling::Rank`] the classifier's `n_cls_out` scores. Wraps
    /// `llama_get_embeddings_seq`; a sequence the last decode did not compute is an error.
    pub fn sequence_embedding(&self, seq: SeqId) -> Result<&[f32]> {
        if !self.embeddings {
            return Err(Error::InvalidState("this context was created without embeddings".into()));
        }
        if self.pooling == Pooling::None {
            return Err(Error::InvalidState(
                "this context pools nothing (pooling none): read each token's row with `embeddings`".into(),
            ));
        }
        self.check_seq(seq)?;
        // SAFETY: live context; llama.cpp looks the sequence up and returns null when absent.
        let p = unsafe { sys::llama_get_embeddings_seq(self.raw(), seq) };
        if p.is_null() {
            return Err(Error::InvalidState(format!("sequence {seq} has no embedding from the last decode")));
        }
        // SAFETY: a pooled row holds `n_cls_out` floats for rank pooling and `n_embd_out`
        // otherwise; it lives until the next decode, which needs `&mut self`.
        unsafe {
            let n = if self.pooling == Pooling::Rank {
                sys::llama_model_n_cls_out(self.model.raw()) as usize
            } else {
                usize::try_from(sys::llama_model_n_embd_out(self.model.raw())).unwrap_or(0)
            };
            Ok(std::slice::from_raw_parts(p, n))
        }
    }

    /// The pooling this context applies to embeddings (the model's own when the config
    /// left it to the model). Wraps `llama_pooling_type`.
    pub fn pooling(&self) -> Pooling {
        self.pooling
    }

    /// Whether this context computes embeddings (`ContextConfig::embeddings`).
    pub fn computes_embeddings(&self) -> bool {
        self.embeddings
    }

    /// Whether batch index `index` of the last decode has logits (an output of a sequence
    /// without a device sampler).
    pub fn has_output(&self, index: i32) -> bool {
        self.check_output(index).is_ok()
    }

    /// llama.cpp's timing counters. Wraps `llama_perf_context`.
    pub fn perf(&self) -> sys::llama_perf_context_data {
        // SAFETY: live context.
        unsafe { sys::llama_perf_context(self.raw()) }
    }
}

impl Drop for Context<'_> {
    fn drop(&mut self) {
        // SAFETY: created by `llama_init_from_model`, freed once, before the model (it borrows it).
        unsafe { sys::llama_free(self.ptr.as_ptr()) };
        crate::accounting::account(&self.memory, false);
    }
}

impl std::fmt::Debug for Context<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("n_ctx", &self.n_ctx)
            .field("n_batch", &self.n_batch)
            .field("n_seq_max", &self.n_seq_max)
            .finish()
    }
}

/// How a sequence's token rows become one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Pooling {
    /// What the model declares (`<arch>.pooling_type`); generative models declare none.
    #[default]
    Model,
    /// No pooling: one row per token.
    None,
    /// The mean of the token rows.
    Mean,
    /// The first token's row (BERT's `[CLS]`).
    Cls,
    /// The last token's row (causal embedding models).
    Last,
    /// A relevance score from the model's classifier head (rerankers).
    Rank,
}

impl Pooling {
    /// Every pooling, for option lists.
    pub const ALL: [Pooling; 6] =
        [Pooling::Model, Pooling::None, Pooling::Mean, Pooling::Cls, Pooling::Last, Pooling::Rank];

    /// The lower-case name (`model`, `none`, `mean`, `cls`, `last`, `rank`).
    pub fn name(self) -> &'static str {
        match self {
            Pooling::Model => "model",
            Pooling::None => "none",
            Pooling::Mean => "mean",
            Pooling::Cls => "cls",
            Pooling::Last => "last",
            Pooling::Rank => "rank",
        }
    }

    pub(crate) fn raw(self) -> std::ffi::c_int {
        match self {
            Pooling::Model => sys::LLAMA_POOLING_TYPE_UNSPECIFIED,
            Pooling::None => sys::LLAMA_POOLING_TYPE_NONE,
            Pooling::Mean => sys::LLAMA_POOLING_TYPE_MEAN,
            Pooling::Cls => sys::LLAMA_POOLING_TYPE_CLS,
            Pooling::Last => sys::LLAMA_POOLING_TYPE_LAST,
            Pooling::Rank => sys::LLAMA_POOLING_TYPE_RANK,
        }
    }

    pub(crate) fn from_raw(v: std::ffi::c_int) -> Pooling {
        match v {
            sys::LLAMA_POOLING_TYPE_MEAN => Pooling::Mean,
            sys::LLAMA_POOLING_TYPE_CLS => Pooling::Cls,
            sys::LLAMA_POOLING_TYPE_LAST => Pooling::Last,
            sys::LLAMA_POOLING_TYPE_RANK => Pooling::Rank,
            _ => Pooling::None,
        }
    }
}

impl std::fmt::Display for Pooling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Pooling {
    type Err = Error;
    fn from_str(s: &str) -> Result<Pooling> {
        Pooling::ALL.into_iter().find(|p| p.name().eq_ignore_ascii_case(s)).ok_or_else(|| {
            Error::invalid("pooling", format!("unknown pooling {s:?}; known: model, none, mean, cls, last, rank"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_settings() {
        assert_eq!("on".parse::<FlashAttention>().unwrap(), FlashAttention::On);
        assert!("maybe".parse::<FlashAttention>().is_err());
        assert_eq!("Q8_0".parse::<KvType>().unwrap(), KvType::Q8_0);
        assert!("q9".parse::<KvType>().is_err());
        assert!(KvType::Q4_0.is_quantized() && !KvType::F16.is_quantized());
    }

    /// The thread counts follow the cores other processes leave free, read from a scripted
    /// watch (a test must not depend on how busy its machine is); counts the caller set stay.
    #[test]
    fn unset_thread_counts_follow_the_free_cores_and_set_ones_stay() {
        let model = crate::Model::load(crate::synth::tiny_model().unwrap(), &Default::default()).unwrap();
        let tokens = model.vocab().tokenize("t1 t2", true, false).unwrap();
        let mut batch = crate::Batch::new(tokens.len(), 1).unwrap();
        batch.add_sequence(&tokens, 0, 0, true).unwrap();
        let all = crate::threads::available_threads().min(2);
        let mut ctx = Context::new(&model, &ContextConfig::default().n_ctx(64)).unwrap();
        ctx.threads.watch = Some(crate::threads::scripted_watch(2, &[2.0, 0.0]));
        ctx.decode(&batch).unwrap();
        assert_eq!(ctx.threads(), (1, 1), "every core busy elsewhere: one thread");
        ctx.seq_remove(None, ..).unwrap();
        ctx.decode(&batch).unwrap();
        assert_eq!(ctx.threads(), (all, all), "the cores taken back");
        // Set by hand, they stay.
        ctx.set_threads(1, 1).unwrap();
        ctx.seq_remove(None, ..).unwrap();
        ctx.decode(&batch).unwrap();
        assert_eq!(ctx.threads(), (1, 1));
        let fixed = Context::new(&model, &ContextConfig::default().n_ctx(64).threads(all)).unwrap();
        assert!(fixed.threads.watch.is_none());
        assert_eq!(fixed.threads(), (all, all), "a count the caller sets is kept");
    }

    #[test]
    fn default_threads_is_bounded_by_the_machine() {
        let n = default_threads();
        assert!(n >= 1);
        assert!(n as usize <= std::thread::available_parallelism().unwrap().get());
    }
}
