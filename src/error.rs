//! The crate's one error type.

use std::path::PathBuf;

/// Every failure this crate reports. Each variant is one class of failure; new ones may be
/// added, so match with a wildcard arm.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be opened or read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The file is not a GGUF model that can be loaded safely: wrong magic, too short, or
    /// contents on which llama.cpp would abort (the reason says which).
    #[error("{path}: not a valid GGUF model ({reason})")]
    NotGguf {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// A LoRA adapter or control vector file that cannot serve this model: malformed, made
    /// for another architecture or other shapes, or of a kind not supported (the reason says
    /// which).
    #[error("{path}: cannot be used as an adapter for this model ({reason})")]
    Adapter {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// llama.cpp could not load the model (truncated or unsupported file, out of memory).
    /// The details are in the `llama_cpp` tracing target.
    #[error("llama.cpp failed to load model {path}: {reason}")]
    ModelLoad {
        /// The file.
        path: PathBuf,
        /// llama.cpp's own reason when it logged one, else a summary of the usual ones.
        reason: String,
    },
    /// The progress callback asked to stop the load.
    #[error("model load cancelled by the progress callback")]
    LoadCancelled,
    /// llama.cpp could not create a context (usually out of memory).
    #[error("llama.cpp failed to create a context: {0}")]
    ContextCreate(String),
    /// An argument or setting the caller gave is out of its range or malformed: fix the input.
    #[error("invalid {what}: {reason}")]
    InvalidArgument {
        /// Which argument or setting (`n_batch`, `main_gpu`, `position range`, ...).
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The call does not fit the state of what it was called on (a context made without
    /// embeddings, a model loaded without weights, a save whose token record does not match
    /// the cells): the calling program must change, not its input.
    #[error("{0}")]
    InvalidState(String),
    /// This model, build or setup cannot do what was asked (a memory that cannot shift
    /// positions, a partial copy between separate KV buffers, a build without any device).
    #[error("not supported: {0}")]
    Unsupported(String),
    /// A fault inside rocm-llama itself (a bug): please report it.
    #[error("internal error: {0}")]
    Internal(String),
    /// A model file lacks something this needs (an architecture key, a head count).
    #[error("the model file lacks {0}")]
    InvalidModel(String),
    /// A llama.cpp call that does not report why returned its failure value.
    #[error("{call} failed: {reason}")]
    Llama {
        /// The C function.
        call: &'static str,
        /// What is known about it.
        reason: String,
    },
    /// Sampling could not pick a token (no logits, or a chain that selects none).
    #[error("sampling: {0}")]
    Sampling(String),
    /// Memory for a host-side buffer could not be allocated.
    #[error("out of memory: {0}")]
    OutOfMemory(String),
    /// A thread could not be started.
    #[error("cannot start the {what} thread: {source}")]
    Thread {
        /// Which thread.
        what: &'static str,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A string passed to C contains a NUL byte.
    #[error("{what} contains a NUL byte at offset {offset}")]
    NulByte {
        /// Which argument.
        what: &'static str,
        /// Byte offset of the NUL.
        offset: usize,
    },
    /// A token id outside the vocabulary.
    #[error("token id {token} is outside the vocabulary (0..{n_vocab})")]
    InvalidToken {
        /// The token id.
        token: i32,
        /// The vocabulary size.
        n_vocab: i32,
    },
    /// A sequence id outside `0..n_seq_max`.
    #[error("sequence id {seq_id} is outside 0..{n_seq_max}")]
    InvalidSeqId {
        /// The sequence id.
        seq_id: i32,
        /// The number of sequences allowed.
        n_seq_max: u32,
    },
    /// A position is negative or past the context.
    #[error("position {pos} is outside 0..{n_ctx}")]
    InvalidPosition {
        /// The position.
        pos: i32,
        /// The context length per sequence.
        n_ctx: u32,
    },
    /// The batch already holds as many tokens as it was created for.
    #[error("batch is full ({capacity} tokens)")]
    BatchFull {
        /// Tokens the batch can hold.
        capacity: usize,
    },
    /// The batch holds more tokens than the context's `n_batch`, or none.
    #[error("batch of {n_tokens} tokens does not fit the context's n_batch of {n_batch} (and must not be empty)")]
    BatchSize {
        /// Tokens in the batch.
        n_tokens: usize,
        /// The context's logical batch size.
        n_batch: u32,
    },
    /// A prompt (or prompt plus generation) longer than the context.
    #[error("{needed} tokens do not fit a context of {n_ctx} tokens")]
    ContextOverflow {
        /// Tokens needed.
        needed: usize,
        /// Tokens available per sequence.
        n_ctx: u32,
    },
    /// `llama_decode` returned 1: no KV cache slot for the batch.
    #[error("no KV cache slot for the batch (reduce the batch or raise the context)")]
    NoKvSlot,
    /// `llama_decode` was aborted by the abort callback (returned 2).
    #[error("decode aborted")]
    Aborted,
    /// `llama_decode` rejected the batch (returned -1); the text is llama.cpp's reason (e.g.
    /// positions that do not continue what the sequence's cache holds).
    #[error("llama.cpp rejected the batch: {0}")]
    InvalidBatch(String),
    /// `llama_decode` failed with a fatal error (returned below -1 or another code).
    #[error("llama_decode failed with code {0}")]
    Decode(i32),
    /// Logits or embeddings were asked for a batch index that produced no output.
    #[error("batch index {index} produced no output (set `logits` when adding it)")]
    NoOutput {
        /// The batch index.
        index: i32,
    },
    /// Text could not be tokenized or detokenized.
    #[error("tokenizer: {0}")]
    Tokenize(String),
    /// A GBNF grammar failed to parse.
    #[error("grammar rejected by llama.cpp: {0}")]
    Grammar(String),
    /// A JSON Schema the grammar converter cannot turn into a grammar (where, and why).
    #[error("JSON schema {0}")]
    JsonSchema(String),
    /// Embeddings, reranking or classification cannot do what was asked (empty or
    /// over-long input, a pooling the model cannot give, labels that tokenize to nothing).
    #[error("embedding{}: {reason}", .text.map(|i| format!(" of text {i}")).unwrap_or_default())]
    Embedding {
        /// Which of the caller's texts (documents for reranking), counted from 0, when the
        /// error belongs to one.
        text: Option<usize>,
        /// What is wrong.
        reason: String,
    },
    /// A chat template is missing or not supported.
    #[error("chat template: {0}")]
    ChatTemplate(String),
    /// Work was cancelled (or the engine shut down before finishing it).
    #[error("cancelled")]
    Cancelled,
    /// The engine's queue is full; try again later.
    #[error("engine busy: {queue_capacity} requests already queued")]
    Busy {
        /// The queue's capacity.
        queue_capacity: usize,
    },
    /// No HIP runtime library could be opened.
    #[error("HIP runtime unavailable: {0}")]
    HipUnavailable(String),
    /// A HIP runtime call failed (no GPU, no permission on /dev/kfd, ...).
    #[error("{call} failed with HIP error {code}: {message}")]
    Hip {
        /// The HIP function.
        call: &'static str,
        /// Its `hipError_t`.
        code: i32,
        /// `hipGetErrorString`.
        message: String,
    },
    /// A download failed.
    #[error("download of {url} failed: {reason}")]
    Download {
        /// What was fetched.
        url: String,
        /// Why it failed.
        reason: String,
    },
    /// A downloaded file's sha256 is not the expected one (the file was removed).
    #[error("sha256 mismatch for {url}: expected {expected}, got {actual}")]
    ChecksumMismatch {
        /// What was fetched.
        url: String,
        /// The expected digest.
        expected: String,
        /// The digest of what arrived.
        actual: String,
    },
    /// An engine slot is serving a request, so its KV state cannot be saved, restored or
    /// erased now.
    #[error("slot {slot} is busy with a request; try again when it is idle")]
    SlotBusy {
        /// The slot.
        slot: u32,
    },
    /// A saved KV state (`Session::save`, a server slot's file) cannot be used here: written
    /// for another model or another llama.cpp, cut short, changed since it was written, or not
    /// such a file. Nothing was loaded.
    #[error("{path}: {reason}")]
    StateFile {
        /// The file.
        path: PathBuf,
        /// Why it cannot be loaded.
        reason: String,
    },
    /// Nothing fits the memory available.
    #[error("does not fit: {0}")]
    DoesNotFit(String),
    /// The engine failed this request (e.g. a decode error in its batch); the engine keeps serving.
    #[error("engine: {0}")]
    Engine(String),

    /// An RPC server (a remote device) cannot be reached, stopped answering, or answered
    /// with something that is not the RPC protocol. A model that used it keeps returning
    /// this; load it again once the server is back.
    #[error("RPC server {endpoint}: {reason}")]
    Rpc {
        /// `HOST:PORT` as given (empty when the RPC backend itself is missing).
        endpoint: String,
        /// What went wrong.
        reason: String,
    },
}

/// What a caller can do about an [`Error`]: its class. [`Error::class`] gives it; `serve`
/// maps it to an HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorClass {
    /// The input is wrong (an argument, a setting, a token, a file's contents, a template, a
    /// schema, a prompt too long): change it and call again.
    InvalidArgument,
    /// The call does not fit the state of the object: the program must change.
    InvalidState,
    /// This model, build or setup cannot do it.
    Unsupported,
    /// Memory, KV cells, queue places or time ran out: try later or ask for less.
    ResourceExhausted,
    /// Something outside the process (a file system, a download, a GPU runtime, an RPC
    /// server) failed or is missing.
    Unavailable,
    /// The work was cancelled or aborted.
    Cancelled,
    /// A fault inside llama.cpp or rocm-llama that no input explains.
    Internal,
}

impl Error {
    /// An [`Error::InvalidArgument`] naming the argument.
    pub(crate) fn invalid(what: &'static str, reason: impl Into<String>) -> Error {
        Error::InvalidArgument { what, reason: reason.into() }
    }

    /// An [`Error::Embedding`] that belongs to no one text.
    pub(crate) fn embedding(reason: impl Into<String>) -> Error {
        Error::Embedding { text: None, reason: reason.into() }
    }

    /// The class of this error: what a caller can do about it.
    ///
    /// ```
    /// use rocm_llama::{Batch, ErrorClass};
    /// let err = Batch::new(0, 1).unwrap_err();
    /// assert_eq!(err.class(), ErrorClass::InvalidArgument);
    /// ```
    pub fn class(&self) -> ErrorClass {
        use ErrorClass as C;
        match self {
            Error::InvalidArgument { .. }
            | Error::NotGguf { .. }
            | Error::Adapter { .. }
            | Error::InvalidModel(_)
            | Error::NulByte { .. }
            | Error::InvalidToken { .. }
            | Error::InvalidSeqId { .. }
            | Error::InvalidPosition { .. }
            | Error::BatchFull { .. }
            | Error::BatchSize { .. }
            | Error::ContextOverflow { .. }
            | Error::InvalidBatch(_)
            | Error::Tokenize(_)
            | Error::Grammar(_)
            | Error::JsonSchema(_)
            | Error::Embedding { .. }
            | Error::ChatTemplate(_)
            | Error::Sampling(_)
            | Error::StateFile { .. }
            | Error::ModelLoad { .. }
            | Error::ChecksumMismatch { .. } => C::InvalidArgument,
            Error::InvalidState(_) | Error::NoOutput { .. } | Error::SlotBusy { .. } => C::InvalidState,
            Error::Unsupported(_) => C::Unsupported,
            Error::OutOfMemory(_)
            | Error::NoKvSlot
            | Error::Busy { .. }
            | Error::DoesNotFit(_)
            | Error::ContextCreate(_)
            | Error::Thread { .. } => C::ResourceExhausted,
            Error::Io { .. }
            | Error::Download { .. }
            | Error::HipUnavailable(_)
            | Error::Hip { .. }
            | Error::Rpc { .. } => C::Unavailable,
            Error::Cancelled | Error::Aborted | Error::LoadCancelled => C::Cancelled,
            Error::Llama { .. } | Error::Decode(_) | Error::Engine(_) | Error::Internal(_) => C::Internal,
        }
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Maps a `llama_decode` return code to `Ok` or the error it stands for; `log` is what
    /// llama.cpp logged during the call, which holds its reason for a rejected batch.
    pub(crate) fn check_decode(code: i32, log: &[String]) -> Result<()> {
        match code {
            0 => Ok(()),
            1 => Err(Error::NoKvSlot),
            2 => Err(Error::Aborted),
            -1 => Err(Error::InvalidBatch(llama_reason(log).unwrap_or_else(|| "no reason logged".into()))),
            other => Err(Error::Decode(other)),
        }
    }
}

/// llama.cpp's reason from the log lines of one failed call: the first line that reads as an
/// error (the root cause; the lines after it report the failure travelling up the call
/// chain), with llama.cpp's `function: ` prefix and line breaks folded into one line.
pub(crate) fn llama_reason(log: &[String]) -> Option<String> {
    let line = log
        .iter()
        .find(|l| {
            let l = l.to_ascii_lowercase();
            ["error", "failed", "invalid", "inconsistent", "not allowed", "not continuous", "required", "exceed"]
                .iter()
                .any(|w| l.contains(w))
        })
        .or_else(|| log.last())?;
    let folded = line.split_whitespace().collect::<Vec<_>>().join(" ");
    // "llama_batch_allocr::init: the tokens ..." -> "the tokens ..."
    let text = match folded.split_once(": ") {
        Some((head, rest)) if !head.contains(' ') => rest.to_string(),
        _ => folded,
    };
    (!text.is_empty()).then_some(text)
}

/// Turns a Rust string into a C string, or `Error::NulByte` naming `what`.
pub(crate) fn c_string(what: &'static str, s: &str) -> Result<std::ffi::CString> {
    std::ffi::CString::new(s).map_err(|e| Error::NulByte { what, offset: e.nul_position() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_codes_map_to_errors() {
        assert!(Error::check_decode(0, &[]).is_ok());
        assert!(matches!(Error::check_decode(1, &[]), Err(Error::NoKvSlot)));
        assert!(matches!(Error::check_decode(2, &[]), Err(Error::Aborted)));
        assert!(matches!(Error::check_decode(-1, &[]), Err(Error::InvalidBatch(r)) if r == "no reason logged"));
        assert!(matches!(Error::check_decode(-3, &[]), Err(Error::Decode(-3))));
        assert!(matches!(Error::check_decode(7, &[]), Err(Error::Decode(7))));
        let log = vec![
            "decode: something routine".to_string(),
            "init: the tokens of sequence 0 in the input batch have inconsistent sequence positions:\n - X = 4\n - Y = 0"
                .to_string(),
            "decode: failed to initialize batch".to_string(),
            "llama_decode: failed to decode, ret = -1".to_string(),
        ];
        // The root cause comes first; the lines after it only report the failure upwards.
        let r = llama_reason(&log).unwrap();
        assert_eq!(
            r,
            "the tokens of sequence 0 in the input batch have inconsistent sequence positions: - X = 4 - Y = 0"
        );
    }

    #[test]
    fn nul_bytes_are_errors() {
        let err = c_string("path", "a\0b").unwrap_err();
        assert!(matches!(err, Error::NulByte { what: "path", offset: 1 }));
        assert!(c_string("path", "ab").is_ok());
    }
}
