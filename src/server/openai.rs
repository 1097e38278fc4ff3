//! The OpenAI API's request and response shapes that the server reads and writes, and its
//! error object.

use std::borrow::Cow;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::chat::ChatMessage;
use crate::error::{Error, ErrorClass};
use crate::generate::{StopReason, Summary};

/// `stop`: one string or a list.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum Stop {
    One(String),
    Many(Vec<String>),
}

/// The sampling and length fields both endpoints share (the table in `fields.rs` lists them
/// with the rest; a field there marked read is read here).
#[derive(Debug, Deserialize, Default)]
pub(crate) struct Common {
    #[serde(default)]
    pub(crate) stream: bool,
    pub(crate) stream_options: Option<StreamOptions>,
    pub(crate) max_tokens: Option<u32>,
    pub(crate) max_completion_tokens: Option<u32>,
    /// llama-server's name for max_tokens (-1: no limit but the context).
    pub(crate) n_predict: Option<i64>,
    pub(crate) temperature: Option<f32>,
    pub(crate) top_p: Option<f32>,
    pub(crate) top_k: Option<i32>,
    pub(crate) min_p: Option<f32>,
    pub(crate) typical_p: Option<f32>,
    pub(crate) repeat_penalty: Option<f32>,
    pub(crate) repeat_last_n: Option<i32>,
    pub(crate) frequency_penalty: Option<f32>,
    pub(crate) presence_penalty: Option<f32>,
    pub(crate) dry_multiplier: Option<f32>,
    pub(crate) dry_base: Option<f32>,
    pub(crate) dry_allowed_length: Option<i32>,
    pub(crate) dry_penalty_last_n: Option<i32>,
    pub(crate) dry_sequence_breakers: Option<Vec<String>>,
    pub(crate) stop: Option<Stop>,
    pub(crate) seed: Option<i64>,
    pub(crate) n: Option<u32>,
    /// llama-server's extension: never end at an end-of-generation token.
    #[serde(default)]
    pub(crate) ignore_eos: bool,
    /// OpenAI's `{"token id": bias}`, or llama-server's `[[id or text, bias or false], ...]`.
    pub(crate) logit_bias: Option<Value>,
    /// A GBNF grammar (llama-server's extension).
    pub(crate) grammar: Option<String>,
    /// A JSON schema the output must match (llama-server's extension).
    pub(crate) json_schema: Option<Value>,
    pub(crate) response_format: Option<Value>,
    /// llama-server's top log-probabilities per token.
    pub(crate) n_probs: Option<u32>,
    /// llama-server's per-request adapter scales: `[{"id": N, "scale": S}, ...]`.
    pub(crate) lora: Option<Value>,
    /// llama-server's per-request speculative draft lengths (when `serve` speculates; 0 turns
    /// it off for the request).
    #[serde(rename = "speculative.n_max")]
    pub(crate) speculative_n_max: Option<i64>,
    #[serde(rename = "speculative.n_min")]
    pub(crate) speculative_n_min: Option<i64>,
    /// The draft model's least probability for a guessed token (with `serve -md`).
    #[serde(rename = "speculative.p_min")]
    pub(crate) speculative_p_min: Option<f32>,
}

#[derive(Debug, Deserialize, Default)]
pub(crate) struct StreamOptions {
    #[serde(default)]
    pub(crate) include_usage: bool,
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Deserialize)]
pub(crate) struct ChatRequest {
    pub(crate) messages: Vec<Value>,
    #[serde(flatten)]
    pub(crate) common: Common,
    #[serde(default)]
    pub(crate) logprobs: bool,
    pub(crate) top_logprobs: Option<u32>,
    pub(crate) tools: Option<Value>,
    pub(crate) tool_choice: Option<Value>,
    /// llama-server's: `auto` (default) or `deepseek` put `<think>` reasoning in
    /// `reasoning_content`; `none` leaves it in the content.
    pub(crate) reasoning_format: Option<String>,
    pub(crate) chat_template_kwargs: Option<serde_json::Map<String, Value>>,
}

/// `POST /v1/completions`.
#[derive(Debug, Deserialize)]
pub(crate) struct CompletionRequest {
    pub(crate) prompt: Value,
    #[serde(flatten)]
    pub(crate) common: Common,
    /// Legacy completions: the number of top log-probabilities per token.
    pub(crate) logprobs: Option<u32>,
    /// The prompt's text before the completion in each choice.
    #[serde(default)]
    pub(crate) echo: bool,
}

/// `POST /v1/embeddings`.
#[derive(Debug, Deserialize)]
pub(crate) struct EmbeddingRequest {
    pub(crate) input: Value,
    pub(crate) encoding_format: Option<String>,
    /// Keep the first this many dimensions (normalised again), as OpenAI's text-embedding-3.
    pub(crate) dimensions: Option<u32>,
}

/// An OpenAI message (content a string, a list of parts or null) as a chat message.
pub(crate) fn chat_message(v: Value) -> Result<ChatMessage, ApiError> {
    let Value::Object(mut o) = v else { return Err(ApiError::invalid("each message must be an object", "messages")) };
    let role = match o.remove("role") {
        Some(Value::String(r)) => r,
        _ => return Err(ApiError::invalid("a message has no role", "messages")),
    };
    let content = match o.remove("content") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s,
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for p in parts {
                match (p.get("type").and_then(Value::as_str), p.get("text").and_then(Value::as_str)) {
                    (Some("text"), Some(t)) => text.push_str(t),
                    _ => return Err(ApiError::invalid("only text content parts are supported", "messages")),
                }
            }
            text
        }
        Some(_) => {
            return Err(ApiError::invalid("a message's content must be a string or a list of parts", "messages"))
        }
    };
    let mut m = ChatMessage::new(role, content);
    m.extra = o;
    Ok(m)
}

/// OpenAI's `finish_reason`.
pub(crate) fn finish_reason(reason: &StopReason) -> &'static str {
    match reason {
        StopReason::MaxTokens | StopReason::ContextFull => "length",
        _ => "stop",
    }
}

/// llama-server's `timings`.
pub(crate) fn timings(s: &Summary) -> Value {
    let ttft_ms = s.time_to_first_token.as_secs_f64() * 1e3;
    let total_ms = s.total_time.as_secs_f64() * 1e3;
    let mut t = json!({
        "prompt_n": s.prompt_tokens - s.cached_prompt_tokens,
        "prompt_ms": ttft_ms,
        "prompt_per_second": s.prefill_tokens_per_s,
        "predicted_n": s.generated_tokens,
        "predicted_ms": (total_ms - ttft_ms).max(0.0),
        "predicted_per_second": s.decode_tokens_per_s,
        "cache_n": s.cached_prompt_tokens,
    });
    // As llama-server: the speculative counts when the request speculated.
    if s.draft_tokens > 0 {
        t["draft_n"] = json!(s.draft_tokens);
        t["draft_n_accepted"] = json!(s.draft_tokens_accepted);
    }
    t
}

/// An error answered as OpenAI's error object.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) message: String,
    pub(crate) kind: &'static str,
    pub(crate) param: Option<Cow<'static, str>>,
    pub(crate) code: Option<&'static str>,
    pub(crate) retry_after: Option<u32>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into(), kind, param: None, code: None, retry_after: None }
    }

    pub(crate) fn invalid(message: impl Into<String>, param: &'static str) -> ApiError {
        ApiError {
            param: Some(Cow::Borrowed(param)),
            ..ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
        }
    }

    /// A 400 naming a field of the request body by its name as sent.
    pub(crate) fn invalid_field(message: impl Into<String>, field: &str) -> ApiError {
        ApiError {
            param: Some(Cow::Owned(field.to_string())),
            ..ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
        }
    }

    /// A library error of a request, mapped to its status by its class: the client's mistake
    /// (an invalid argument, something this model cannot do) is a 400, a full queue or memory a
    /// 503 with `Retry-After`, a missing remote device or a shutdown a 503, and a fault of the
    /// server's own (a state it should not be in, an internal error) a 500, never a 400.
    pub(crate) fn from_error(e: Error, retry_after: u32) -> ApiError {
        let message = e.to_string();
        match (&e, e.class()) {
            (Error::ContextOverflow { .. }, _) => ApiError {
                code: Some("context_length_exceeded"),
                param: Some(Cow::Borrowed("messages")),
                ..ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
            },
            (Error::JsonSchema(_), _) => ApiError {
                param: Some(Cow::Borrowed("response_format")),
                ..ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
            },
            (Error::Busy { .. }, _) => ApiError {
                retry_after: Some(retry_after),
                code: Some("server_busy"),
                ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", message)
            },
            // The model's remote device is gone: nothing this server can do until it is
            // restarted with the RPC server back.
            (Error::Rpc { .. }, _) => ApiError {
                code: Some("rpc_server_failed"),
                ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", message)
            },
            (Error::Cancelled, _) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", "the server is shutting down")
            }
            (_, ErrorClass::InvalidArgument) => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
            }
            (_, ErrorClass::Unsupported) => ApiError {
                code: Some("unsupported"),
                ..ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
            },
            (_, ErrorClass::ResourceExhausted) => ApiError {
                retry_after: Some(retry_after),
                code: Some("resource_exhausted"),
                ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", message)
            },
            (_, ErrorClass::Unavailable | ErrorClass::Cancelled) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", message)
            }
            (_, ErrorClass::InvalidState | ErrorClass::Internal) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
            }
        }
    }

    /// The same error naming `param` instead of `messages` when the prompt was too long (the
    /// legacy completions endpoint has no messages).
    pub(crate) fn prompt_param(mut self, param: &'static str) -> ApiError {
        if self.code == Some("context_length_exceeded") {
            self.param = Some(Cow::Borrowed(param));
        }
        self
    }

    pub(crate) fn body(&self) -> Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, axum::Json(self.body())).into_response();
        if let Some(s) = self.retry_after {
            if let Ok(v) = axum::http::HeaderValue::from_str(&s.to_string()) {
                r.headers_mut().insert(axum::http::header::RETRY_AFTER, v);
            }
        }
        r
    }
}
/// An embedding as OpenAI's `encoding_format: "base64"` carries it: the little-endian bytes
/// of its `f32`s in standard base64 with padding.
pub(crate) fn base64_f32(v: &[f32]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for group in bytes.chunks(3) {
        let n = group.iter().enumerate().fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for k in 0..4 {
            if k <= group.len() {
                out.push(ALPHABET[(n >> (18 - 6 * k) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_statuses_by_class() {
        let status = |e: Error| ApiError::from_error(e, 7);
        // The client's mistakes.
        let e = status(Error::invalid("n_batch", "must be at least 1"));
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(status(Error::InvalidToken { token: -1, n_vocab: 10 }).status, StatusCode::BAD_REQUEST);
        let e = status(Error::Unsupported("shifting".into()));
        assert_eq!((e.status, e.code), (StatusCode::BAD_REQUEST, Some("unsupported")));
        // The server's own faults are never the client's.
        for e in [
            Error::InvalidState("a context without embeddings".into()),
            Error::Internal("a bug".into()),
            Error::Decode(-3),
            Error::Engine("decode failed".into()),
            Error::NoOutput { index: 3 },
        ] {
            let text = e.to_string();
            let e = status(e);
            assert_eq!(e.status, StatusCode::INTERNAL_SERVER_ERROR, "{text}");
            assert_eq!(e.kind, "server_error");
        }
        // Exhausted: come back later.
        for e in [Error::Busy { queue_capacity: 4 }, Error::DoesNotFit("KV".into()), Error::NoKvSlot] {
            let e = status(e);
            assert_eq!((e.status, e.retry_after), (StatusCode::SERVICE_UNAVAILABLE, Some(7)));
        }
        let e = status(Error::Rpc { endpoint: "h:1".into(), reason: "gone".into() });
        assert_eq!((e.status, e.retry_after), (StatusCode::SERVICE_UNAVAILABLE, None));
        // A prompt too long names the field the endpoint has.
        let long = || Error::ContextOverflow { needed: 9, n_ctx: 8 };
        assert_eq!(status(long()).param.as_deref(), Some("messages"));
        assert_eq!(status(long()).prompt_param("prompt").param.as_deref(), Some("prompt"));
        assert_eq!(status(Error::invalid("x", "y")).prompt_param("prompt").param, None);
    }

    #[test]
    fn base64_embeddings_match_pythons_struct_and_base64() {
        // python3: base64.b64encode(struct.pack('<3f', 1.0, -2.5, 0.1))
        assert_eq!(base64_f32(&[1.0]), "AACAPw==");
        assert_eq!(base64_f32(&[1.0, 2.0]), "AACAPwAAAEA=");
        assert_eq!(base64_f32(&[1.0, -2.5, 0.1]), "AACAPwAAIMDNzMw9");
        assert_eq!(base64_f32(&[]), "");
    }
}
