//! llama-server's own routes, in its shapes: `POST /completion` (its native generation, whole or
//! streamed), `/tokenize`, `/detokenize`, `/apply-template`, `/rerank` (also `/v1/rerank`,
//! `/reranking`, `/v1/reranking`: Jina's and Cohere's shape), `GET /props` and
//! `GET /v1/models/{id}`. Where llama-server and OpenAI differ, these follow llama-server.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::Event as SseEvent;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};

use super::fields::{self, Route};
use super::openai::{self, ApiError, Common};
use super::{choices, collect, now, options, parse, prompts, sse_response, AppState, Prompt};
use crate::chat::ChatOptions;
use crate::generate::{Event, StopReason, Summary};
use crate::vocab::Token;

/// llama-server's `stop_type`.
fn stop_type(reason: &StopReason) -> &'static str {
    match reason {
        StopReason::Eos => "eos",
        StopReason::StopString(_) => "word",
        StopReason::MaxTokens | StopReason::ContextFull => "limit",
        StopReason::Cancelled => "none",
    }
}

/// The fields of `/completion`'s last object (and its whole answer).
fn completion_end(state: &AppState, content: String, s: &Summary) -> Value {
    json!({
        "content": content,
        "stop": true,
        "model": state.config.model_name,
        "tokens_predicted": s.generated_tokens,
        "tokens_evaluated": s.prompt_tokens,
        "tokens_cached": s.cached_prompt_tokens,
        "stop_type": stop_type(&s.stop_reason),
        "stopping_word": match &s.stop_reason { StopReason::StopString(w) => w.as_str(), _ => "" },
        "truncated": false,
        "timings": openai::timings(s),
    })
}

#[derive(Deserialize)]
struct CompletionBody {
    prompt: Value,
    #[serde(flatten)]
    common: Common,
}

/// `POST /completion`: one prompt (a string or token ids), llama-server's sampling fields;
/// streamed as `data: {"content": ..., "stop": false}` events and a last one with
/// `"stop": true` and the timings.
pub(super) async fn completion(
    State(state): State<Arc<AppState>>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    state.metrics.completions.fetch_add(1, Ordering::Relaxed);
    fields::check(&body, Route::Completion)?;
    let req: CompletionBody = parse(&body)?;
    let mut list = prompts(&req.prompt)?;
    if list.len() != 1 || choices(&req.common)? != 1 {
        return Err(ApiError::invalid(
            "/completion takes one prompt and n = 1 (use /v1/completions for more)",
            "prompt",
        ));
    }
    let prompt = list.remove(0);
    let opts = options(&req.common, 0, state.engine.model().vocab(), &state.lora, state.config.speculation.as_ref())?;
    let engine = state.engine.clone();
    let mut streams = state
        .start(1, move |_| match &prompt {
            Prompt::Text(t) => engine.generate(t, &opts),
            Prompt::Tokens(ids) => engine.generate_tokens(ids.clone(), &opts),
        })
        .await
        .map_err(|e| e.prompt_param("prompt"))?;
    let stream = streams.remove(0);
    if req.common.stream {
        let events = stream.filter_map(move |event| {
            let out = match event {
                Ok(Event::Token { text, .. } | Event::Text(text)) => {
                    (!text.is_empty()).then(|| json!({"content": text, "stop": false}))
                }
                Ok(Event::Done(summary)) => {
                    state.metrics.finished(&summary);
                    Some(completion_end(&state, String::new(), &summary))
                }
                Err(e) => Some(ApiError::from_error(e, 1).body()),
            };
            std::future::ready(out.map(|v| Ok(SseEvent::default().data(v.to_string()))))
        });
        return Ok(sse_response(events));
    }
    let c = collect(stream).await.map_err(|e| ApiError::from_error(e, state.config.retry_after_s))?;
    let summary = c.summary.ok_or_else(|| ApiError::from_error(crate::Error::Cancelled, 1))?;
    state.metrics.finished(&summary);
    Ok(Json(completion_end(&state, c.text, &summary)).into_response())
}

#[derive(Deserialize)]
struct TokenizeBody {
    content: String,
    #[serde(default)]
    add_special: bool,
    #[serde(default = "yes")]
    parse_special: bool,
    #[serde(default)]
    with_pieces: bool,
}

fn yes() -> bool {
    true
}

/// `POST /tokenize`: `{"tokens": [ids]}`, or `[{"id", "piece"}]` with `with_pieces` (a piece
/// that is not UTF-8 on its own comes as its bytes).
pub(super) async fn tokenize(
    State(state): State<Arc<AppState>>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    fields::check(&body, Route::Tokenize)?;
    let req: TokenizeBody = parse(&body)?;
    let engine = state.engine.clone();
    let tokens = tokio::task::spawn_blocking(move || {
        let vocab = engine.model().vocab();
        let ids = vocab.tokenize(&req.content, req.add_special, req.parse_special)?;
        if !req.with_pieces {
            return Ok::<_, crate::Error>(json!(ids));
        }
        let pieces = ids
            .iter()
            .map(|&id| {
                let bytes = vocab.token_to_bytes(id, true)?;
                let piece = match String::from_utf8(bytes) {
                    Ok(s) => json!(s),
                    Err(e) => json!(e.into_bytes()),
                };
                Ok(json!({"id": id, "piece": piece}))
            })
            .collect::<crate::Result<Vec<_>>>()?;
        Ok(Value::Array(pieces))
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", e.to_string()))?
    .map_err(|e| ApiError::from_error(e, 1))?;
    Ok(Json(json!({ "tokens": tokens })).into_response())
}

#[derive(Deserialize)]
struct DetokenizeBody {
    tokens: Vec<i64>,
}

/// `POST /detokenize`: `{"content": text}`; an id outside the vocabulary is a 400.
pub(super) async fn detokenize(
    State(state): State<Arc<AppState>>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    fields::check(&body, Route::Detokenize)?;
    let req: DetokenizeBody = parse(&body)?;
    let vocab = state.engine.model().vocab();
    let ids: Vec<Token> = req
        .tokens
        .iter()
        .map(|&t| {
            i32::try_from(t).map_err(|_| ApiError::invalid(format!("token {t} is outside the vocabulary"), "tokens"))
        })
        .collect::<Result<_, _>>()?;
    for &t in &ids {
        vocab.check(t).map_err(|e| ApiError::invalid(e.to_string(), "tokens"))?;
    }
    let content = vocab.detokenize(&ids, false, true).map_err(|e| ApiError::from_error(e, 1))?;
    Ok(Json(json!({ "content": content })).into_response())
}

#[derive(Deserialize)]
struct ApplyTemplateBody {
    messages: Vec<Value>,
    tools: Option<Value>,
    chat_template_kwargs: Option<serde_json::Map<String, Value>>,
}

/// `POST /apply-template`: `{"prompt": text}`, the conversation as the server's template
/// renders it for `/v1/chat/completions`, without generating.
pub(super) async fn apply_template(
    State(state): State<Arc<AppState>>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    fields::check(&body, Route::ApplyTemplate)?;
    let req: ApplyTemplateBody = parse(&body)?;
    let messages = req.messages.into_iter().map(openai::chat_message).collect::<Result<Vec<_>, _>>()?;
    let mut chat = ChatOptions::default().tools(req.tools);
    chat.kwargs = state.config.chat_template_kwargs.clone();
    chat.kwargs.extend(req.chat_template_kwargs.unwrap_or_default());
    let s = state.clone();
    let prompt =
        tokio::task::spawn_blocking(move || s.config.chat_template.prompt_with(s.engine.model(), &messages, &chat))
            .await
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", e.to_string()))?
            .map_err(|e| ApiError::from_error(e, 1))?;
    Ok(Json(json!({ "prompt": prompt })).into_response())
}

#[derive(Deserialize)]
struct RerankBody {
    query: String,
    documents: Vec<Value>,
    top_n: Option<usize>,
    #[serde(default)]
    return_documents: bool,
}

/// `POST /rerank` and its aliases: `results` of `{index, relevance_score}` (with `document`
/// when `return_documents`), best first, at most `top_n`. Documents are strings or
/// `{"text": ...}` objects. Needs a reranker (a model with a classifier head).
pub(super) async fn rerank(State(state): State<Arc<AppState>>, body: axum::body::Bytes) -> Result<Response, ApiError> {
    state.metrics.embeddings.fetch_add(1, Ordering::Relaxed);
    fields::check(&body, Route::Rerank)?;
    let req: RerankBody = parse(&body)?;
    let documents: Vec<String> = req
        .documents
        .iter()
        .map(|d| match d {
            Value::String(s) => Ok(s.clone()),
            Value::Object(o) => o.get("text").and_then(Value::as_str).map(str::to_string).ok_or(()),
            _ => Err(()),
        })
        .collect::<Result<_, ()>>()
        .map_err(|()| ApiError::invalid("documents must be strings or {\"text\": ...} objects", "documents"))?;
    if documents.is_empty() {
        return Err(ApiError::invalid("documents must not be empty", "documents"));
    }
    let engine = state.engine.clone();
    let (query, docs) = (req.query.clone(), documents.clone());
    let (counted, scores) = tokio::task::spawn_blocking(move || {
        let vocab = engine.model().vocab();
        let counted: usize = docs
            .iter()
            .map(|d| {
                vocab.tokenize(&query, true, true).map_or(0, |q| q.len())
                    + vocab.tokenize(d, false, true).map_or(0, |t| t.len())
            })
            .sum();
        (counted, engine.rerank(&query, &docs))
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", e.to_string()))?;
    let scores = scores.map_err(|e| ApiError::from_error(e, state.config.retry_after_s))?;
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let results: Vec<Value> = order
        .into_iter()
        .take(req.top_n.unwrap_or(usize::MAX))
        .map(|i| {
            let mut r = json!({"index": i, "relevance_score": scores[i]});
            if req.return_documents {
                r["document"] = json!({"text": documents[i]});
            }
            r
        })
        .collect();
    Ok(Json(json!({
        "model": state.config.model_name, "object": "list", "results": results,
        "usage": {"prompt_tokens": counted, "total_tokens": counted},
    }))
    .into_response())
}

/// `GET /props`: the defaults a request gets, the slots, the model, the template.
pub(super) async fn props(State(state): State<Arc<AppState>>) -> Json<Value> {
    let defaults =
        options(&Common::default(), 0, state.engine.model().vocab(), &state.lora, state.config.speculation.as_ref())
            .ok();
    let config = state.engine.config();
    let model = state.engine.model();
    let template = match &state.config.chat_template {
        crate::ChatTemplate::Model => model.chat_template().unwrap_or_default(),
        crate::ChatTemplate::Builtin(name) => name.clone(),
        crate::ChatTemplate::Jinja(source) => source.clone(),
        _ => String::new(),
    };
    Json(json!({
        "default_generation_settings": {
            "n_ctx": config.n_ctx_per_seq,
            "params": defaults.map(|o| json!({
                "n_predict": o.max_tokens,
                "temperature": o.sampling.temperature, "top_k": o.sampling.top_k, "top_p": o.sampling.top_p,
                "min_p": o.sampling.min_p, "typical_p": o.sampling.typical_p,
                "repeat_last_n": o.sampling.penalty_last_n, "repeat_penalty": o.sampling.repeat_penalty,
                "presence_penalty": o.sampling.presence_penalty, "frequency_penalty": o.sampling.frequency_penalty,
                "dry_multiplier": o.sampling.dry_multiplier, "dry_base": o.sampling.dry_base,
                "dry_allowed_length": o.sampling.dry_allowed_length, "dry_penalty_last_n": o.sampling.dry_penalty_last_n,
                "seed": o.sampling.seed,
            })),
        },
        "total_slots": config.n_seq_max,
        "model_alias": state.config.model_name,
        "model_path": model.path().display().to_string(),
        "chat_template": template,
        "modalities": {"vision": false, "audio": false},
        "build_info": format!("rocm-llama {} (llama-cpp-sys-2 {})", env!("CARGO_PKG_VERSION"), crate::build_info().llama_cpp_sys_version),
    }))
}

/// `GET /v1/models/{id}`: the served model, whatever id is asked (any name is served by it).
pub(super) async fn model_info(State(state): State<Arc<AppState>>, Path(_id): Path<String>) -> Json<Value> {
    Json(json!({"id": state.config.model_name, "object": "model", "created": now(), "owned_by": "rocm-llama"}))
}
