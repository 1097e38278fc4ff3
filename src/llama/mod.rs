//! The safe llama.cpp layer: one module per llama.cpp concept, each owning type wrapping one C
//! handle. Everything above it (generation, the engine, embeddings, the server) reaches llama.cpp
//! through these types; nothing in this layer knows about them.

pub mod adapter;
pub mod batch;
pub(crate) mod checksum;
pub mod context;
pub(crate) mod gbnf;
pub mod init;
pub mod memory;
pub mod model;
pub mod sampler;
pub(crate) mod seq_state;
pub mod threads;
pub mod vocab;
