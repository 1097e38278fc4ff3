//! # rocm-llama
//!
//! llama.cpp inside your process, through safe Rust types: no subprocess, no HTTP, no IPC.
//! Built for AMD RDNA3 GPUs through HIP (RX 7800 XT = gfx1101, RX 7900 XTX = gfx1100), NVIDIA
//! through CUDA, and any CPU.
//!
//! ```no_run
//! use rocm_llama::{ChatMessage, ChatTemplate, Context, ContextConfig, Event, GenerateOptions, LoadConfig, Model};
//!
//! # fn main() -> rocm_llama::Result<()> {
//! let model = Model::load("gemma-3-270m-q4_k_m.gguf", &LoadConfig::default())?;
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
//! Modules follow llama.cpp's concepts: [`backend`] (process-wide init and logging),
//! [`model`], [`vocab`], [`context`], [`batch`], [`memory`] (KV cache per sequence),
//! [`sampler`], [`chat`] and [`generate`].
//!
//! Nothing a caller passes in can make llama.cpp assert and kill the process: token ids,
//! sequence ids, positions, batch sizes, prompt lengths, NUL bytes and malformed files are
//! checked in Rust first and returned as [`Error`]s.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs, clippy::undocumented_unsafe_blocks)]

pub mod backend;
pub mod batch;
pub mod bench;
mod build_info;
pub mod chat;
pub mod context;
pub mod devices;
pub mod engine;
mod error;
pub mod fit;
pub mod generate;
pub mod gguf;
pub mod memory;
pub mod model;
pub mod models;
pub mod pull;
pub mod sampler;
pub mod synth;
pub mod vocab;
pub mod vram;

pub use batch::{Batch, Pos, SeqId};
pub use build_info::{build_info, BuildInfo};
pub use chat::{apply_template, builtin_templates, template_for_architecture, ChatMessage, ChatTemplate};
pub use context::{default_threads, AbortHandle, Context, ContextConfig, FlashAttention, KvType};
pub use devices::{available, devices, DeviceReport};
#[cfg(feature = "async")]
pub use engine::AsyncTokenStream;
pub use engine::{Engine, EngineConfig, EngineHandle, EngineStats, TokenStream};
pub use error::{Error, Result};
pub use fit::{FitOptions, FitPlan};
pub use generate::{CancelToken, Event, GenerateOptions, Generation, StopReason, Summary};
pub use model::{GpuLayers, LoadConfig, Model, ModelInfo, SplitMode};
pub use sampler::{Sampler, SamplerBuilder, SamplingParams};
pub use vocab::{Detokenizer, Token, Vocab};
pub use vram::{process_memory, MemoryBreakdown, ProcessMemory};

/// The raw llama.cpp bindings, for anything this crate does not wrap.
pub use llama_cpp_sys_2 as sys;

/// The README's examples compile as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
