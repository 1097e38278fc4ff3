//! Loading a GGUF model: [`Model`] and its [`LoadConfig`].

use std::ffi::{c_char, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::Arc;

use llama_cpp_sys_2 as sys;

use crate::accounting::MemoryBreakdown;
use crate::error::{c_string, Error, Result};
use crate::vocab::{Token, Vocab};

mod checks;

use checks::{check_contents, check_gguf_header};
pub use checks::{MAX_LAYERS, MAX_VOCAB};

/// How many of the model's layers to place on the GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GpuLayers {
    /// Every layer (the default; a CPU-only build simply keeps them on the CPU).
    #[default]
    All,
    /// At most this many layers; `Count(0)` keeps the whole model on the CPU.
    Count(u32),
}

/// How a model is spread over several GPUs (`llama_split_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SplitMode {
    /// Everything on `main_gpu`.
    None,
    /// Whole layers (and their KV cache) per GPU.
    #[default]
    Layer,
    /// Rows of each weight across GPUs.
    Row,
}

/// llama.cpp's reason for a failed load from its log ("error loading model: ..."), with the
/// GGUF reader's own messages before it (ggml's reader logs only errors, and the loader's
/// line then says no more than "failed to load model": the cause, such as "tensor
/// 'blk.17.attn_q.weight' has offset 243077282, expected 243077120", is in the reader's), or the
/// usual suspects when it gave none.
fn load_failure_reason(log: &[String]) -> String {
    const MARK: &str = "error loading model:";
    const GGUF_READER: &str = "gguf_init_from_file_impl:";
    let reason = log
        .iter()
        .rev()
        .find_map(|l| l.find(MARK).map(|i| l[i + MARK.len()..].trim().to_string()))
        .filter(|r| !r.is_empty());
    let causes: Vec<&str> = log.iter().filter_map(|l| l.strip_prefix(GGUF_READER)).map(str::trim).collect();
    match (reason, causes.is_empty()) {
        (Some(reason), true) => reason,
        (Some(reason), false) => format!("{reason}: {}", causes.join("; ")),
        (None, false) => causes.join("; "),
        (None, true) => {
            "truncated, unsupported architecture or out of memory (the llama_cpp tracing target has details)".into()
        }
    }
}

/// A load-progress callback: called with 0.0..=1.0; return `false` to cancel the load.
pub type LoadProgressFn = dyn Fn(f32) -> bool + Send + Sync;

/// Settings for [`Model::load`].
///
/// ```
/// use rocm_llama::{GpuLayers, LoadConfig, SplitMode};
///
/// let config = LoadConfig::default()
///     .gpu_layers(GpuLayers::Count(20))
///     .split_mode(SplitMode::None)
///     .main_gpu(1)
///     .with_progress(|fraction| {
///         eprint!("\r{:.0}%", fraction * 100.0);
///         true
///     });
/// assert_eq!(config.gpu_layers, GpuLayers::Count(20));
/// ```
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct LoadConfig {
    /// Layers to offload to the GPU (default: all).
    pub gpu_layers: GpuLayers,
    /// The GPU that holds the model when `split_mode` is [`SplitMode::None`] (default 0).
    pub main_gpu: u32,
    /// How to use several GPUs.
    pub split_mode: SplitMode,
    /// Memory-map the file (`None`: llama.cpp decides).
    pub use_mmap: Option<bool>,
    /// Called as the weights load; returning `false` cancels with [`Error::LoadCancelled`].
    /// A panic in it stops the load and resumes in [`Model::load`]'s caller once llama.cpp has
    /// returned.
    pub progress: Option<Arc<LoadProgressFn>>,
    /// Let the CPU backend repack weights into its faster interleaved layouts
    /// (`use_extra_bufts`, default true; llama.cpp's `--no-repack` turns it off). Repacked
    /// matrix kernels pick different code paths for different batch sizes, but so do the plain
    /// ones: with repacking off, a sequence's greedy tokens still changed beside other
    /// requests in a test here. For output that does not depend on batch shapes, use
    /// [`EngineConfig::reproducible`](crate::EngineConfig::reproducible).
    pub cpu_repack: Option<bool>,
    /// Load the vocabulary, chat templates and metadata only, no weights (llama.cpp's
    /// `vocab_only`): tokenizing, detokenizing and rendering templates cost no weight memory.
    /// Such a model cannot make a [`Context`](crate::Context).
    pub vocab_only: bool,
    /// RPC servers (`HOST:PORT`, see [`crate::rpc`]) whose devices take part in the layer
    /// split, before the local GPUs, in shares of their free memory (default: none).
    pub rpc: Vec<String>,
    /// The local GPUs to offload to, by llama.cpp device name (`Vulkan0`, `ROCm0,ROCm1`; any
    /// case; llama.cpp's `--device`), or `["none"]` for none. Empty (the default): llama.cpp's
    /// own choice, every discrete GPU with a card reached through two backends counted once
    /// ([`devices::offload_devices`](crate::devices::offload_devices)). In a `hip,vulkan`
    /// build this is how a card runs on Vulkan instead of HIP. Unknown names, the CPU, or two
    /// names of one card are refused ([`devices::pick_devices`](crate::devices::pick_devices)).
    pub devices: Vec<String>,
    /// How long an RPC server may take to answer one command before the model counts it as
    /// failed (default [`rpc::DEFAULT_TIMEOUT`](crate::rpc::DEFAULT_TIMEOUT), 30 s).
    pub rpc_timeout: Option<std::time::Duration>,
}

impl std::fmt::Debug for LoadConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadConfig")
            .field("gpu_layers", &self.gpu_layers)
            .field("main_gpu", &self.main_gpu)
            .field("split_mode", &self.split_mode)
            .field("use_mmap", &self.use_mmap)
            .field("progress", &self.progress.is_some())
            .field("cpu_repack", &self.cpu_repack)
            .field("vocab_only", &self.vocab_only)
            .field("rpc", &self.rpc)
            .field("devices", &self.devices)
            .field("rpc_timeout", &self.rpc_timeout)
            .finish()
    }
}

crate::config::setters!(LoadConfig {
    gpu_layers: GpuLayers,
    main_gpu: u32,
    split_mode: SplitMode,
    vocab_only: bool,
    rpc: Vec<String>,
    devices: Vec<String>,
} optional {
    use_mmap: bool,
    progress: Arc<LoadProgressFn>,
    cpu_repack: bool,
    rpc_timeout: std::time::Duration,
});

impl LoadConfig {
    /// Sets a progress callback from a closure (return `false` to cancel).
    #[must_use]
    pub fn with_progress(mut self, f: impl Fn(f32) -> bool + Send + Sync + 'static) -> Self {
        self.progress = Some(Arc::new(f));
        self
    }
}

/// A loaded model: weights, vocabulary and metadata. Wraps `llama_model`.
///
/// A model is immutable once loaded and may be shared between threads (`Arc<Model>`);
/// each thread creates its own [`Context`](crate::Context) from it.
pub struct Model {
    ptr: NonNull<sys::llama_model>,
    path: PathBuf,
    memory: MemoryBreakdown,
    output_on_gpu: bool,
    gpu_layers: u32,
    vocab_only: bool,
    /// The RPC servers the weights went to: every use checks they still answer.
    rpc: Vec<Arc<crate::rpc::Link>>,
    /// The end-of-generation tokens, found on first use (a scan of the vocabulary).
    eog: std::sync::OnceLock<Vec<Token>>,
    /// What tells this model's weights from another's, made on first use.
    fingerprint: std::sync::OnceLock<String>,
}

// SAFETY: llama.cpp never mutates a `llama_model` after `llama_model_load_from_file` returns;
// its documentation and server use one model from many threads, each with its own context.
// Every method here takes `&self` and only reads.
unsafe impl Send for Model {}
// SAFETY: see `Send`: all access after load is read-only.
unsafe impl Sync for Model {}

struct ProgressState {
    f: Arc<LoadProgressFn>,
    cancelled: bool,
    /// A panic of the callback, parked here and resumed once llama.cpp has returned (a panic
    /// must not unwind through C).
    panic: Option<Box<dyn std::any::Any + Send>>,
}

unsafe extern "C" fn progress_trampoline(progress: f32, user: *mut c_void) -> bool {
    // SAFETY: `user` is the `ProgressState` that `Model::load` keeps alive across the load call.
    let state = unsafe { &mut *(user as *mut ProgressState) };
    let f = state.f.clone();
    match catch_unwind(AssertUnwindSafe(|| f(progress))) {
        Ok(true) => true,
        Ok(false) => {
            state.cancelled = true;
            false
        }
        // The load stops; `Model::load` resumes the panic after llama.cpp returns.
        Err(payload) => {
            state.panic = Some(payload);
            state.cancelled = true;
            false
        }
    }
}

impl Model {
    /// Loads a GGUF model. Wraps `llama_model_load_from_file`.
    ///
    /// The file is checked first (exists, GGUF magic, version 2 or 3), so a wrong path or a
    /// non-GGUF file is an error rather than a llama.cpp failure.
    ///
    /// ```
    /// # fn main() -> rocm_llama::Result<()> {
    /// use rocm_llama::{LoadConfig, Model};
    ///
    /// let model = Model::load(rocm_llama::synth::tiny_model()?, &LoadConfig::default())?;
    /// assert_eq!(model.architecture(), "llama");
    /// println!("{}: {} layers, {} tokens", model.description(), model.n_layer(), model.vocab().n_tokens());
    /// # Ok(())
    /// # }
    /// ```
    pub fn load(path: impl AsRef<Path>, config: &LoadConfig) -> Result<Model> {
        let path = path.as_ref();
        crate::init::init();
        check_gguf_header(path)?;
        check_contents(path, !config.vocab_only)?;
        // llama.cpp's loader checks tensor data even for the vocabulary alone; a file cut
        // short after its header is read through a copy of the header without tensors.
        let header_copy = if config.vocab_only { checks::header_copy_if_truncated(path)? } else { None };
        let load_path = header_copy.as_ref().map_or(path, |c| c.path());
        let path_str = load_path
            .to_str()
            .ok_or_else(|| Error::invalid("model path", format!("{} is not UTF-8", path.display())))?;
        let c_path = c_string("model path", path_str)?;

        // SAFETY: returns a plain struct by value.
        let mut params = unsafe { sys::llama_model_default_params() };
        params.n_gpu_layers = match config.gpu_layers {
            GpuLayers::All => -1,
            GpuLayers::Count(n) => i32::try_from(n).unwrap_or(i32::MAX),
        };
        let rpc = if config.vocab_only {
            Vec::new()
        } else {
            crate::rpc::attach(&config.rpc, config.rpc_timeout.unwrap_or(crate::rpc::DEFAULT_TIMEOUT))?
        };
        // The local GPUs the caller named, checked before llama.cpp sees them.
        let picked = if config.devices.is_empty() || config.vocab_only {
            None
        } else {
            let registry = crate::devices::backend_devices_unmeasured();
            Some(crate::devices::pick_devices(&registry, &config.devices)?.iter().map(|d| d.index).collect::<Vec<_>>())
        };
        // Named devices when the caller named them or any RPC server is known to this
        // process, so that one model's servers stay out of another's load (a null-terminated
        // list that outlives the load).
        let mut devices = crate::rpc::load_devices(&rpc, picked.as_deref());
        if let Some(list) = devices.as_mut() {
            params.devices = list.as_mut_ptr();
        }
        if config.split_mode == SplitMode::None {
            let n = match &devices {
                Some(list) => list.len() - 1,
                None => crate::devices::offload_devices(&crate::devices::backend_devices_unmeasured()).len(),
            };
            if n > 0 && config.main_gpu as usize >= n {
                return Err(Error::invalid(
                    "main_gpu",
                    format!(
                        "main_gpu {} does not exist: this process has {n} GPU{}",
                        config.main_gpu,
                        if n == 1 { "" } else { "s" }
                    ),
                ));
            }
        }
        params.main_gpu = i32::try_from(config.main_gpu)
            .map_err(|_| Error::invalid("main_gpu", format!("{} is too large", config.main_gpu)))?;
        params.split_mode = match config.split_mode {
            SplitMode::None => sys::LLAMA_SPLIT_MODE_NONE,
            SplitMode::Layer => sys::LLAMA_SPLIT_MODE_LAYER,
            SplitMode::Row => sys::LLAMA_SPLIT_MODE_ROW,
        };
        if let Some(mmap) = config.use_mmap {
            params.load_mode = if mmap { sys::LLAMA_LOAD_MODE_MMAP } else { sys::LLAMA_LOAD_MODE_NONE };
        }
        if let Some(repack) = config.cpu_repack {
            params.use_extra_bufts = repack;
        }
        params.vocab_only = config.vocab_only;
        let mut state = config.progress.clone().map(|f| ProgressState { f, cancelled: false, panic: None });
        if let Some(state) = state.as_mut() {
            params.progress_callback = Some(progress_trampoline);
            params.progress_callback_user_data = state as *mut ProgressState as *mut c_void;
        }

        if !config.vocab_only {
            // The devices this load may reach: the named list, or else every local GPU
            // (llama.cpp's default takes them all, and the first one's host buffers).
            let reach: Vec<sys::ggml_backend_dev_t> = match &devices {
                Some(list) => list.clone(),
                // SAFETY: indices below the registry's count.
                None => (0..unsafe { sys::ggml_backend_dev_count() })
                    .map(|i| unsafe { sys::ggml_backend_dev_get(i) })
                    .collect(),
            };
            crate::init::set_up_devices(&reach);
        }
        let (raw, log) = crate::init::capture_log(|| {
            // SAFETY: `c_path` is a valid C string; `params` is fully initialised; the progress
            // state outlives the call.
            unsafe { sys::llama_model_load_from_file(c_path.as_ptr(), params) }
        });
        if let Some(payload) = state.as_mut().and_then(|s| s.panic.take()) {
            if let Some(ptr) = NonNull::new(raw) {
                // SAFETY: a model llama.cpp just returned and nothing else refers to.
                unsafe { sys::llama_model_free(ptr.as_ptr()) };
            }
            std::panic::resume_unwind(payload);
        }
        drop(devices);
        if let Err(e) = crate::rpc::check(&rpc) {
            if let Some(ptr) = NonNull::new(raw) {
                // SAFETY: a model llama.cpp just returned and nothing else refers to.
                unsafe { sys::llama_model_free(ptr.as_ptr()) };
            }
            return Err(e);
        }
        match NonNull::new(raw) {
            Some(ptr) => {
                let mut memory = MemoryBreakdown::from_log(&log);
                crate::rpc::name_buffers(&mut memory);
                memory.kv.clear();
                memory.compute.clear();
                crate::accounting::account(&memory, true);
                // llama.cpp says so in its load log when it places the output layer on a GPU.
                let output_on_gpu = log.iter().any(|l| l.contains("offloading output layer to GPU"));
                // llama.cpp logs an offload count whenever it could offload (an RPC backend
                // built in is enough); the layers went somewhere only if weights did.
                let on_device = memory.weights.iter().any(|b| !b.is_host());
                let gpu_layers = if on_device { log.iter().find_map(|l| offloaded_layers(l)).unwrap_or(0) } else { 0 };
                Ok(Model {
                    ptr,
                    path: path.to_path_buf(),
                    memory,
                    output_on_gpu,
                    gpu_layers,
                    vocab_only: config.vocab_only,
                    rpc,
                    eog: std::sync::OnceLock::new(),
                    fingerprint: std::sync::OnceLock::new(),
                })
            }
            None if state.is_some_and(|s| s.cancelled) => Err(Error::LoadCancelled),
            None => Err(Error::ModelLoad { path: path.to_path_buf(), reason: load_failure_reason(&log) }),
        }
    }

    /// `Err` when an RPC server that holds part of this model has failed
    /// ([`Error::Rpc`]): the model cannot compute any more.
    pub fn check_remote(&self) -> Result<()> {
        crate::rpc::check(&self.rpc)
    }

    /// The RPC servers (`HOST:PORT`) that hold part of this model.
    pub fn rpc_servers(&self) -> Vec<&str> {
        self.rpc.iter().map(|l| l.remote.as_str()).collect()
    }

    /// The raw pointer, for calls this crate does not wrap.
    ///
    /// # Safety
    /// The pointer is valid while `self` lives. The caller must not free it and must not use
    /// it to mutate the model.
    pub unsafe fn as_ptr(&self) -> *mut sys::llama_model {
        self.ptr.as_ptr()
    }

    pub(crate) fn raw(&self) -> *const sys::llama_model {
        self.ptr.as_ptr()
    }

    /// Where the weights are, per llama.cpp buffer (`ROCm0`, `CPU_Mapped`, ...).
    pub fn memory(&self) -> &MemoryBreakdown {
        &self.memory
    }

    /// Whether the output layer (where logits are made, and where a device sampler runs)
    /// sits on a GPU: llama.cpp puts it on the GPU when every layer is offloaded. Read from
    /// where the weights went (`llama_model_n_layer` against the GPU layers the load asked for
    /// would miss a CPU-only build).
    pub fn output_on_gpu(&self) -> bool {
        self.output_on_gpu
    }

    /// How many layers llama.cpp put on GPUs, the output layer counted as one (its load log's
    /// `offloaded N/M layers to GPU`); 0 in a build without a GPU backend. What
    /// [`GpuLayers::All`] or a count larger than the model came to.
    pub fn gpu_layers(&self) -> u32 {
        self.gpu_layers
    }

    /// Whether only the vocabulary was loaded ([`LoadConfig::vocab_only`]).
    pub fn is_vocab_only(&self) -> bool {
        self.vocab_only
    }

    /// The file this model was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The tokenizer. Wraps `llama_model_get_vocab`.
    pub fn vocab(&self) -> Vocab<'_> {
        // SAFETY: the model pointer is valid; the vocab lives as long as the model.
        let ptr = unsafe { sys::llama_model_get_vocab(self.raw()) };
        Vocab::new(NonNull::new(ptr as *mut _).expect("llama.cpp returned a null vocab for a loaded model"))
    }

    /// Every end-of-generation token of the vocabulary (EOS, EOT, ...), in id order: those
    /// [`Vocab::is_eog`](crate::Vocab::is_eog) says yes to. Found by one scan on first use.
    pub fn eog_tokens(&self) -> &[Token] {
        self.eog.get_or_init(|| {
            let vocab = self.vocab();
            (0..vocab.n_tokens()).filter(|&t| vocab.is_eog(t)).collect()
        })
    }

    /// A metadata value as a string (`general.architecture`, `general.name`, ...).
    /// Wraps `llama_model_meta_val_str`. Arrays are not returned.
    pub fn meta(&self, key: &str) -> Option<String> {
        let key = c_string("metadata key", key).ok()?;
        read_c_string(|buf, len| {
            // SAFETY: `buf` has room for `len` bytes; the model and key are valid.
            unsafe { sys::llama_model_meta_val_str(self.raw(), key.as_ptr(), buf, len) }
        })
    }

    /// Every scalar metadata entry, in file order. Wraps `llama_model_meta_key_by_index`.
    pub fn meta_all(&self) -> Vec<(String, String)> {
        // SAFETY: the model pointer is valid.
        let n = unsafe { sys::llama_model_meta_count(self.raw()) };
        (0..n.max(0))
            .filter_map(|i| {
                let k = read_c_string(|buf, len| {
                    // SAFETY: index < count; `buf` has room for `len` bytes.
                    unsafe { sys::llama_model_meta_key_by_index(self.raw(), i, buf, len) }
                })?;
                let v = read_c_string(|buf, len| {
                    // SAFETY: as above.
                    unsafe { sys::llama_model_meta_val_str_by_index(self.raw(), i, buf, len) }
                })?;
                Some((k, v))
            })
            .collect()
    }

    /// `general.architecture`, e.g. `gemma3` or `llama`.
    pub fn architecture(&self) -> String {
        self.meta("general.architecture").unwrap_or_default()
    }

    /// `general.name`, when the file has one.
    pub fn name(&self) -> Option<String> {
        self.meta("general.name")
    }

    /// A short description such as `gemma3 270M Q4_K - Medium`. Wraps `llama_model_desc`.
    pub fn description(&self) -> String {
        read_c_string(|buf, len| {
            // SAFETY: `buf` has room for `len` bytes.
            unsafe { sys::llama_model_desc(self.raw(), buf, len) }
        })
        .unwrap_or_default()
    }

    /// Number of parameters. Wraps `llama_model_n_params`.
    pub fn n_params(&self) -> u64 {
        // SAFETY: the model pointer is valid.
        unsafe { sys::llama_model_n_params(self.raw()) }
    }

    /// Size of all tensors in bytes. Wraps `llama_model_size`.
    pub fn size_bytes(&self) -> u64 {
        // SAFETY: the model pointer is valid.
        unsafe { sys::llama_model_size(self.raw()) }
    }

    /// The context length the model was trained with. Wraps `llama_model_n_ctx_train`.
    pub fn n_ctx_train(&self) -> u32 {
        // SAFETY: the model pointer is valid.
        unsafe { sys::llama_model_n_ctx_train(self.raw()) }.max(0) as u32
    }

    /// Embedding size. Wraps `llama_model_n_embd`.
    pub fn n_embd(&self) -> u32 {
        // SAFETY: the model pointer is valid.
        unsafe { sys::llama_model_n_embd(self.raw()) }.max(0) as u32
    }

    /// A short text that tells this model from any other: llama.cpp's description, parameter
    /// and vocabulary counts, the file's size and a hash of 16 slices of 64 KiB spread over
    /// it (weights included, so two fine-tunes of one base differ). Saved KV state carries it,
    /// so state is never loaded into another model. Read from the file once, on first use.
    pub fn fingerprint(&self) -> &str {
        self.fingerprint.get_or_init(|| {
            let file = file_fingerprint(&self.path).unwrap_or_else(|e| format!("unreadable ({e})"));
            format!("{} | {} params | {} tokens | {file}", self.description(), self.n_params(), self.vocab().n_tokens())
        })
    }

    /// The attention window of the model's sliding-window layers, in tokens (0 when every
    /// layer attends to the whole context). Wraps `llama_model_n_swa`.
    pub fn n_swa(&self) -> u32 {
        // SAFETY: the model pointer is valid.
        unsafe { sys::llama_model_n_swa(self.raw()) }.max(0) as u32
    }

    /// Whether some of the model's layers keep a running state instead of a cell per token
    /// (recurrent and hybrid models: Mamba, RWKV, Jamba...): their sequences cannot be cut
    /// back to an earlier position. Wraps `llama_model_is_recurrent` and
    /// `llama_model_is_hybrid`.
    pub fn is_recurrent(&self) -> bool {
        // SAFETY: the model pointer is valid.
        unsafe { sys::llama_model_is_recurrent(self.raw()) || sys::llama_model_is_hybrid(self.raw()) }
    }

    /// Number of layers. Wraps `llama_model_n_layer`.
    pub fn n_layer(&self) -> u32 {
        // SAFETY: the model pointer is valid.
        unsafe { sys::llama_model_n_layer(self.raw()) }.max(0) as u32
    }

    /// Attention heads. Wraps `llama_model_n_head`.
    pub fn n_head(&self) -> u32 {
        // SAFETY: the model pointer is valid.
        unsafe { sys::llama_model_n_head(self.raw()) }.max(0) as u32
    }

    /// Key/value heads. Wraps `llama_model_n_head_kv`.
    pub fn n_head_kv(&self) -> u32 {
        // SAFETY: the model pointer is valid.
        unsafe { sys::llama_model_n_head_kv(self.raw()) }.max(0) as u32
    }

    /// The model's own chat template (Jinja source), if the file has one.
    /// Wraps `llama_model_chat_template`.
    pub fn chat_template(&self) -> Option<String> {
        // SAFETY: the model pointer is valid; a null name asks for the default template.
        let p = unsafe { sys::llama_model_chat_template(self.raw(), std::ptr::null()) };
        if p.is_null() {
            return None;
        }
        // SAFETY: llama.cpp returns a NUL-terminated string owned by the model.
        Some(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
    }

    /// A named chat template the file carries besides its default one
    /// (`tokenizer.chat_template.NAME`, e.g. `tool_use`). Wraps `llama_model_chat_template`.
    pub fn chat_template_named(&self, name: &str) -> Result<Option<String>> {
        let c_name = crate::error::c_string("chat template name", name)?;
        // SAFETY: the model pointer is valid; `c_name` lives for the call.
        let p = unsafe { sys::llama_model_chat_template(self.raw(), c_name.as_ptr()) };
        if p.is_null() {
            return Ok(None);
        }
        // SAFETY: llama.cpp returns a NUL-terminated string owned by the model.
        Ok(Some(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()))
    }

    /// A summary of the metadata above.
    pub fn info(&self) -> ModelInfo {
        ModelInfo {
            architecture: self.architecture(),
            name: self.name(),
            description: self.description(),
            n_params: self.n_params(),
            size_bytes: self.size_bytes(),
            n_ctx_train: self.n_ctx_train(),
            n_embd: self.n_embd(),
            n_layer: self.n_layer(),
            n_head: self.n_head(),
            n_head_kv: self.n_head_kv(),
            n_vocab: self.vocab().n_tokens() as u32,
            has_chat_template: self.chat_template().is_some(),
        }
    }
}

impl Drop for Model {
    fn drop(&mut self) {
        // SAFETY: the pointer came from `llama_model_load_from_file` and is freed once; every
        // borrower (`Context<'m>`, `Vocab<'m>`, `Sampler<'m>`) has ended by now.
        unsafe { sys::llama_model_free(self.ptr.as_ptr()) };
        crate::accounting::account(&self.memory, false);
    }
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model").field("path", &self.path).field("description", &self.description()).finish()
    }
}

/// Model metadata, as [`Model::info`] returns it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ModelInfo {
    /// `general.architecture`.
    pub architecture: String,
    /// `general.name`.
    pub name: Option<String>,
    /// llama.cpp's description (type, size, quantization).
    pub description: String,
    /// Parameters.
    pub n_params: u64,
    /// Bytes of tensor data.
    pub size_bytes: u64,
    /// Trained context length.
    pub n_ctx_train: u32,
    /// Embedding size.
    pub n_embd: u32,
    /// Layers.
    pub n_layer: u32,
    /// Attention heads.
    pub n_head: u32,
    /// KV heads.
    pub n_head_kv: u32,
    /// Vocabulary size.
    pub n_vocab: u32,
    /// Whether the file carries a chat template.
    pub has_chat_template: bool,
}

/// Calls a llama.cpp "write a string into buf, return its length" function, growing the
/// buffer when the first try was too small. Negative lengths mean "absent".
pub(crate) fn read_c_string(mut f: impl FnMut(*mut c_char, usize) -> i32) -> Option<String> {
    let mut buf = vec![0u8; 256];
    loop {
        let n = f(buf.as_mut_ptr() as *mut c_char, buf.len());
        if n < 0 {
            return None;
        }
        let n = n as usize;
        if n < buf.len() {
            buf.truncate(n);
            return Some(String::from_utf8_lossy(&buf).into_owned());
        }
        buf.resize(n + 1, 0);
    }
}

/// The file's size and a 64-bit hash of 16 slices of 64 KiB at evenly spaced offsets.
fn file_fingerprint(path: &Path) -> std::io::Result<String> {
    use std::io::{Read, Seek, SeekFrom};
    const SLICE: u64 = 64 * 1024;
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    let mut hash = crate::checksum::Checksum::default();
    let mut buf = vec![0u8; SLICE as usize];
    for i in 0..16u64 {
        let at = (len.saturating_sub(SLICE)) / 15 * i;
        f.seek(SeekFrom::Start(at))?;
        let n = f.by_ref().take(SLICE).read(&mut buf)?;
        hash.update(&buf[..n]);
    }
    Ok(format!("{len} bytes, sample hash {:016x}", hash.finish()))
}

/// N of llama.cpp's load line `load_tensors: offloaded N/M layers to GPU`.
fn offloaded_layers(line: &str) -> Option<u32> {
    let rest = line.split_once("offloaded ")?.1;
    let (n, rest) = rest.split_once('/')?;
    rest.contains("layers to GPU").then(|| n.trim().parse().ok())?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_load_names_llama_cpp_s_reason() {
        let log = vec![
            "llama_model_loader: loaded meta data".to_string(),
            "llama_model_load: error loading model: device CUDA0 does not support split buffers\n".to_string(),
            "llama_model_load_from_file_impl: failed to load model".to_string(),
        ];
        assert_eq!(load_failure_reason(&log), "device CUDA0 does not support split buffers");
        assert!(load_failure_reason(&[]).contains("out of memory"));
        // The GGUF reader's cause comes with the loader's generic line.
        let log = vec![
            "gguf_init_from_file_impl: tensor 'blk.17.attn_q.weight' has offset 243077282, expected 243077120".into(),
            "gguf_init_from_file_impl: failed to read tensor data".into(),
            "llama_model_load: error loading model: llama_model_loader: failed to load model from m.gguf".into(),
        ];
        assert_eq!(
            load_failure_reason(&log),
            "llama_model_loader: failed to load model from m.gguf: tensor 'blk.17.attn_q.weight' has offset \
             243077282, expected 243077120; failed to read tensor data"
        );
    }

    fn temp_file(name: &str, bytes: &[u8]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("rocm-llama-model-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn header_check_rejects_non_gguf() {
        let p = temp_file("text.gguf", b"hello world, not a model");
        assert!(matches!(check_gguf_header(&p), Err(Error::NotGguf { .. })));
        let p = temp_file("short.gguf", b"GGU");
        assert!(matches!(check_gguf_header(&p), Err(Error::NotGguf { .. })));
        let p = temp_file("v9.gguf", b"GGUF\x09\0\0\0rest");
        assert!(matches!(check_gguf_header(&p), Err(Error::NotGguf { .. })));
        let p = temp_file("v3.gguf", b"GGUF\x03\0\0\0rest");
        assert!(check_gguf_header(&p).is_ok());
        assert!(matches!(check_gguf_header(Path::new("/nonexistent/x.gguf")), Err(Error::Io { .. })));
        assert!(matches!(check_gguf_header(&std::env::temp_dir()), Err(Error::NotGguf { .. })));
    }

    #[test]
    fn offloaded_layers_come_from_the_load_log() {
        assert_eq!(offloaded_layers("load_tensors: offloaded 19/19 layers to GPU"), Some(19));
        assert_eq!(offloaded_layers("load_tensors: offloaded 0/33 layers to GPU"), Some(0));
        assert_eq!(offloaded_layers("load_tensors: offloading 18 repeating layers to GPU"), None);
        assert_eq!(offloaded_layers("offloaded x/3 layers to GPU"), None);
    }

    #[test]
    fn read_c_string_grows() {
        let text = "x".repeat(1000);
        let got = read_c_string(|buf, len| {
            let n = text.len();
            let copy = n.min(len.saturating_sub(1));
            // SAFETY: test writes within `len`.
            unsafe {
                std::ptr::copy_nonoverlapping(text.as_ptr(), buf as *mut u8, copy);
                *buf.add(copy) = 0;
            }
            n as i32
        });
        assert_eq!(got.as_deref(), Some(text.as_str()));
        assert_eq!(read_c_string(|_, _| -1), None);
    }
}
