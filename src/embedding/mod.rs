//! Embeddings, reranking and classification: contexts made for pooled outputs, and labels scored
//! by log-likelihood after a shared prompt.

pub mod classify;
pub mod embed;
