//! Model files and what they need: GGUF headers, memory accounting and the fit of a model to the
//! devices (core), and the tools around files (feature `tools`): the model folder, downloads and
//! synthetic models.

pub mod accounting;
pub mod fit;
pub mod gguf;
#[cfg(feature = "tools")]
pub mod inventory;
#[cfg(feature = "tools")]
pub mod pull;
#[cfg(feature = "tools")]
pub mod synth;
