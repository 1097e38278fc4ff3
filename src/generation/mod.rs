//! One generation on a context: a request's life from prompt to summary, chat templates, JSON
//! schemas as grammars, log-probabilities, and the `Session` that keeps a conversation's cache.
//! Built on the llama.cpp layer; the engine runs the same `request` state for many slots.

pub mod chat;
pub mod draft;
pub mod generate;
pub mod logprobs;
mod options;
pub mod reasoning;
pub(crate) mod request;
pub mod schema;
pub mod session;
pub mod speculative;
pub mod tools;
