//! # rocm-llama
//!
//! llama.cpp inside your process, through safe Rust types: no subprocess, no HTTP, no IPC.
//! Built for AMD RDNA3 GPUs through HIP (RX 7800 XT = gfx1101, RX 7900 XTX = gfx1100), NVIDIA
//! through CUDA, and any CPU.
//!
//! ```
//! use rocm_llama::{ChatMessage, ChatTemplate, Context, ContextConfig, Event, GenerateOptions, LoadConfig, Model};
//!
//! # fn main() -> rocm_llama::Result<()> {
//! # let path = rocm_llama::synth::tiny_model()?;
//! # /*
//! let path = "gemma-3-270m-q4_k_m.gguf";
//! # */
//! let model = Model::load(&path, &LoadConfig::default())?;
//! let mut ctx = Context::new(&model, &ContextConfig::default().n_ctx(4096))?;
//! let messages = [ChatMessage::user("Name three rivers.")];
//! let opts = GenerateOptions::greedy(64).stop("\n\n");
//! for event in ctx.chat(&messages, &ChatTemplate::Model, &opts)? {
//!     match event? {
//!         Event::Token { text, .. } | Event::Text(text) => print!("{text}"),
//!         Event::Done(summary) => eprintln!("\n{:.1} tokens/s", summary.decode_tokens_per_s),
//!     }
//! }
//! # Ok(())
//! # }
//! ```
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

// llama.cpp's concepts, in the order a program meets them.
pub mod batch;
pub mod chat;
mod checksum;
pub mod classify;
mod config;
pub mod context;
pub mod embed;
pub mod engine;
mod error;
mod gbnf;
pub mod generate;
pub mod init;
pub mod logprobs;
pub mod memory;
pub mod model;
mod request;
pub mod sampler;
pub mod schema;
mod seq_state;
pub mod session;
pub mod threads;
pub mod vocab;

// What the core needs around llama.cpp: GGUF headers, GPUs and memory, fitting a model to them.
pub mod accounting;
mod build_info;
pub mod devices;
pub mod fit;
pub mod gguf;
pub mod rpc;

// Tools (feature `tools`, on in the binary): inventory, downloads, synthetic models, benchmarks.
#[cfg(feature = "tools")]
pub mod bench;
#[cfg(feature = "tools")]
pub mod inventory;
#[cfg(feature = "tools")]
pub mod pull;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "tools")]
pub mod synth;

pub use accounting::{process_memory, MemoryBreakdown, ProcessMemory};
pub use batch::{Batch, Pos, SeqId};
pub use build_info::{build_info, BuildInfo};
pub use chat::{
    apply_template, builtin_templates, check_jinja, template_for_architecture, ChatMessage, ChatOptions, ChatTemplate,
    TemplateSource,
};
pub use classify::{Classification, Classifier, ClassifyConfig};
pub use context::{AbortHandle, Context, ContextConfig, FlashAttention, KvType};
pub use devices::{available, devices, DeviceReport};
pub use embed::{EmbedConfig, Embedder, Pooling};
#[cfg(feature = "async")]
pub use engine::AsyncTokenStream;
pub use engine::{Engine, EngineConfig, EngineHandle, EngineStats, SlotFile, SlotInfo, TokenStream};
pub use error::{Error, Result};
pub use fit::{FitOptions, FitPlan};
pub use generate::{CancelToken, Event, GenerateOptions, Generation, StopReason, Summary};
pub use logprobs::{TokenLogprobs, TopLogprob};
pub use model::{GpuLayers, LoadConfig, Model, ModelInfo, SplitMode};
pub use sampler::{Sampler, SamplerBuilder, SamplerPlacement, SamplingParams};
pub use session::Session;
pub use threads::{available_threads, default_threads};
pub use vocab::{Detokenizer, Token, Vocab};

/// The raw llama.cpp bindings, for anything this crate does not wrap.
pub use llama_cpp_sys_2 as sys;

/// The README's examples compile as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
