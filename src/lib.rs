//! # rocm-llama
//!
//! llama.cpp inside your process, through safe Rust types: no subprocess, no HTTP, no IPC.
//! Built for AMD RDNA3 GPUs through HIP (RX 7800 XT = gfx1101, RX 7900 XTX = gfx1100), NVIDIA
//! through CUDA, and any CPU.
//!
//! ```
//! use rocm_llama::{Context, ContextConfig, Event, GenerateOptions, LoadConfig, Model};
//!
//! # fn main() -> rocm_llama::Result<()> {
//! # let path = rocm_llama::synth::tiny_model()?;
//! # /*
//! let path = "gemma-3-270m-q4_k_m.gguf";
//! # */
//! let model = Model::load(&path, &LoadConfig::default())?;
//! let mut ctx = Context::new(&model, &ContextConfig::default().n_ctx(4096))?;
//! let opts = GenerateOptions::greedy(40);
//! for event in ctx.generate("The three longest rivers in the world are", &opts)? {
//!     match event? {
//!         Event::Token { text, .. } | Event::Text(text) => print!("{text}"),
//!         Event::Done(summary) => eprintln!("\n{:.1} tokens/s", summary.decode_tokens_per_s),
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! The guides are in the repository's `docs/` folder (library, engine, server, command line,
//! models, GPUs, RPC, performance, safety and testing); this page and the modules' pages are the
//! reference.
//!
//! Modules follow llama.cpp's concepts: [`init`] (process-wide init and logging),
//! [`model`], [`vocab`], [`context`], [`batch`], [`memory`] (KV cache per sequence),
//! [`sampler`], [`chat`], [`generate`] (one generation on a context), [`session`] (a
//! conversation that reuses its cached prompt) and [`engine`] (many requests batched on one
//! model). Around them: [`gguf`] headers, [`devices`](mod@devices), memory [`accounting`] and [`fit`].
//! The tools behind feature `tools` (on by default, with the binary) are `inventory`,
//! `pull`, `synth` and `bench`; a library user who wants only the core turns default
//! features off.
//!
//! Nothing a caller passes in can make llama.cpp assert and kill the process: token ids,
//! sequence ids, positions, batch sizes, prompt lengths, NUL bytes and malformed files are
//! checked in Rust first and returned as [`Error`]s.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs, clippy::undocumented_unsafe_blocks)]

// The tree is the architecture: one private folder per layer, lowest first (the safe llama.cpp
// layer; model files; generation; embeddings), then the engine, the server and the benchmarks.
// Their modules are re-exported here, so paths stay `rocm_llama::context`, `rocm_llama::engine`,
// ... The exact rule (each module's layer, none naming a higher one, no import circles) is
// tests/layers.rs.
mod llama;
pub use llama::{adapter, batch, context, init, memory, model, sampler, threads, vocab};
pub(crate) use llama::{checksum, gbnf, seq_state};

mod files;
pub use files::{accounting, fit, gguf};
#[cfg(feature = "tools")]
pub use files::{inventory, pull, synth};

pub mod devices;
pub mod rpc;

mod generation;
pub(crate) use generation::request;
pub use generation::{chat, draft, generate, logprobs, reasoning, schema, session, speculative, tools};

mod embedding;
pub use embedding::{classify, embed};

pub mod engine;

#[cfg(feature = "tools")]
pub mod bench;
#[cfg(feature = "server")]
pub mod server;

// Crate-wide: the error type, the settings macro, what this build holds.
mod build_info;
mod config;
mod error;

pub use accounting::{process_memory, MemoryBreakdown, ProcessMemory};
pub use adapter::{ControlVector, LoraAdapter};
pub use batch::{Batch, Pos, SeqId};
pub use build_info::{build_info, BuildInfo};
pub use chat::{
    apply_template, builtin_templates, check_jinja, template_for_architecture, ChatMessage, ChatOptions, ChatTemplate,
    TemplateSource,
};
pub use classify::{Classification, Classifier, ClassifyConfig};
pub use context::{AbortHandle, Context, ContextConfig, FlashAttention, KvType};
pub use devices::{available, devices, DeviceReport};
pub use draft::DraftModel;
pub use embed::{EmbedConfig, Embedder, Pooling};
#[cfg(feature = "async")]
pub use engine::AsyncTokenStream;
pub use engine::{Engine, EngineConfig, EngineStats, SlotFile, SlotInfo, TokenStream};
pub use error::{Error, ErrorClass, Result};
pub use fit::{FitOptions, FitPlan};
pub use generate::{CancelToken, Event, GenerateOptions, Generation, StopReason, Summary};
pub use logprobs::{TokenLogprobs, TopLogprob};
pub use model::{GpuLayers, LoadConfig, Model, ModelInfo, SplitMode};
pub use sampler::{Sampler, SamplerBuilder, SamplerPlacement, SamplingParams};
pub use session::Session;
pub use speculative::Speculation;
pub use threads::{available_threads, default_threads};
pub use vocab::{Detokenizer, Token, Vocab};

/// The raw llama.cpp bindings, for anything this crate does not wrap.
pub use llama_cpp_sys_2 as sys;

/// The README's and the docs pages' examples compile (and those not marked `no_run` run) as doc
/// tests.
#[cfg(doctest)]
mod doc_pages {
    #[doc = include_str!("../README.md")]
    pub struct Readme;
    #[doc = include_str!("../docs/library.md")]
    pub struct Library;
    #[doc = include_str!("../docs/engine.md")]
    pub struct Engine;
    #[doc = include_str!("../docs/server.md")]
    pub struct Server;
    #[doc = include_str!("../docs/cli.md")]
    pub struct Cli;
    #[doc = include_str!("../docs/models.md")]
    pub struct Models;
    #[doc = include_str!("../docs/gpus.md")]
    pub struct Gpus;
    #[doc = include_str!("../docs/rpc.md")]
    pub struct Rpc;
    #[doc = include_str!("../docs/performance.md")]
    pub struct Performance;
    #[doc = include_str!("../docs/testing.md")]
    pub struct Testing;
}
