//! (feature `server`) An OpenAI-compatible HTTP API on the [engine](crate::engine): axum on
//! tokio. `rocm-llama serve` runs it; [`router`] gives the routes to mount in a program's own
//! axum application.
//!
//! Routes: `POST /v1/chat/completions`, `POST /v1/completions` (streamed as server-sent
//! events or whole), `POST /v1/embeddings`, `GET /v1/models`, `GET /health`, `GET /metrics`,
//! and llama-server's `GET /slots` and `POST /slots/{id}?action=save|restore|erase`. A request the
//! engine's queue cannot take is answered 503 with `Retry-After` at once; a client that goes
//! away cancels its generation at the engine's next step (its stream is dropped).

mod listen;
mod metrics;
mod openai;
mod slots;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::{self, Stream, StreamExt};
use serde_json::{json, Value};

pub use listen::{serve, ConnectionLimits};

use crate::chat::{ChatOptions, ChatTemplate};
use crate::embed::{EmbedConfig, Pooling};
use crate::engine::{AsyncTokenStream, Engine};
use crate::generate::{Event, GenerateOptions, Summary};
use crate::logprobs::TokenLogprobs;
use crate::sampler::SamplingParams;
use openai::{ApiError, ChatRequest, Common, CompletionRequest, EmbeddingRequest};

/// Settings for [`router`].
///
/// ```
/// use rocm_llama::server::ServerConfig;
///
/// let config = ServerConfig::default().model_name("gemma-3-270m").api_key("secret".to_string());
/// assert_eq!(config.retry_after_s, 1);
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServerConfig {
    /// The model id the API reports and accepts (requests naming another model get 404).
    pub model_name: String,
    /// Requests must carry `Authorization: Bearer KEY` (`/health` excepted).
    pub api_key: Option<String>,
    /// `Retry-After` seconds on a 503 when the queue is full (default 1).
    pub retry_after_s: u32,
    /// Pooling for `/v1/embeddings` (default: what the model declares).
    pub pooling: Pooling,
    /// The folder where `POST /slots/{id}?action=save|restore` keeps slot files (llama-server's
    /// `--slot-save-path`); without it those actions answer 501.
    pub slot_save_path: Option<std::path::PathBuf>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            model_name: "model".into(),
            api_key: None,
            retry_after_s: 1,
            pooling: Pooling::Model,
            slot_save_path: None,
        }
    }
}

crate::config::setters!(ServerConfig {
    retry_after_s: u32,
    pooling: Pooling,
} optional {
    api_key: String,
    slot_save_path: std::path::PathBuf,
});

impl ServerConfig {
    /// Sets [`model_name`](Self::model_name).
    #[must_use]
    pub fn model_name(mut self, name: impl Into<String>) -> Self {
        self.model_name = name.into();
        self
    }
}

struct AppState {
    engine: Engine,
    config: ServerConfig,
    next_id: AtomicU64,
    metrics: metrics::Metrics,
}

/// The routes, serving `engine`.
pub fn router(engine: Engine, config: ServerConfig) -> Router {
    let state = Arc::new(AppState { engine, config, next_id: AtomicU64::new(1), metrics: metrics::Metrics::new() });
    let api = Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/models", get(models))
        .route("/slots", get(slots::list))
        .route("/slots/{id}", post(slots::action))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_key));
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .merge(api)
        .fallback(not_found)
        .with_state(state)
}

async fn require_key(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    if let Some(key) = &state.config.api_key {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(key.as_str()) {
            let mut e = ApiError::new(StatusCode::UNAUTHORIZED, "invalid_request_error", "invalid or missing API key");
            e.code = Some("invalid_api_key");
            return e.into_response();
        }
    }
    next.run(request).await
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "invalid_request_error", "no such route")
}

/// `{"status": "ok", ...}`, or 503 with `"status": "error"` and the reason once an RPC server
/// holding part of the model has failed (every generation would fail: a load balancer should
/// send the traffic elsewhere).
async fn health(State(state): State<Arc<AppState>>) -> Response {
    let s = state.engine.stats();
    match state.engine.model().check_remote() {
        Ok(()) => Json(json!({"status": "ok", "slots_running": s.running, "queued": s.queued})).into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "error", "error": e.to_string(), "slots_running": s.running, "queued": s.queued})),
        )
            .into_response(),
    }
}

async fn metrics_text(State(state): State<Arc<AppState>>) -> Response {
    let body = state.metrics.render(&state.engine.stats());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

async fn models(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({"object": "list", "data": [{
        "id": state.config.model_name, "object": "model", "created": now(), "owned_by": "rocm-llama",
    }]}))
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Parses a JSON body into `T`, answering a malformed one with a 400 error object.
fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::invalid(format!("malformed request body: {e}"), "body"))
}

impl AppState {
    fn check_model(&self, model: Option<&str>) -> Result<(), ApiError> {
        match model {
            Some(m) if m != self.config.model_name => {
                let mut e = ApiError::new(
                    StatusCode::NOT_FOUND,
                    "invalid_request_error",
                    format!("the model {m:?} does not exist; this server serves {:?}", self.config.model_name),
                );
                e.param = Some("model");
                e.code = Some("model_not_found");
                Err(e)
            }
            _ => Ok(()),
        }
    }

    /// The request's `n` generations, each started by `start`; the first refusal answers
    /// for all (the ones already started are cancelled as they drop).
    ///
    /// Rendering a chat template and tokenizing a prompt are CPU work that grows with the
    /// request, so `start` runs on tokio's blocking pool, never on the async workers that
    /// answer every other connection (four requests of 10,000 messages once held up
    /// `/health` for 17 s).
    async fn start(
        &self,
        common: &Common,
        start: impl Fn() -> crate::Result<crate::TokenStream> + Send + 'static,
    ) -> Result<Vec<AsyncTokenStream>, ApiError> {
        let n = choices(common)?;
        let made = tokio::task::spawn_blocking(move || {
            (0..n).map(|_| start().map(|s| s.into_async())).collect::<Result<Vec<_>, _>>()
        })
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", e.to_string()))?;
        made.map_err(|e| self.reject(e))
    }

    /// A request's error, counting rejections for a full queue.
    fn reject(&self, e: crate::Error) -> ApiError {
        if matches!(e, crate::Error::Busy { .. }) {
            self.metrics.rejected.fetch_add(1, Ordering::Relaxed);
        }
        ApiError::from_error(e, self.config.retry_after_s)
    }

    fn id(&self, prefix: &str) -> String {
        format!("{prefix}-{}", self.next_id.fetch_add(1, Ordering::Relaxed))
    }
}

/// The generation options both endpoints share.
fn options(c: &Common, n_probs: usize) -> Result<GenerateOptions, ApiError> {
    let mut sampling = SamplingParams::default();
    if let Some(t) = c.temperature {
        if !(0.0..=2.0).contains(&t) {
            return Err(ApiError::invalid("temperature must be between 0 and 2", "temperature"));
        }
        sampling = sampling.temperature(t);
    }
    if let Some(p) = c.top_p {
        if !(0.0..=1.0).contains(&p) {
            return Err(ApiError::invalid("top_p must be between 0 and 1", "top_p"));
        }
        sampling = sampling.top_p(p);
    }
    if let Some(s) = c.seed {
        sampling = sampling.seed((s as u64 & 0xffff_ffff) as u32);
    }
    if let Some(f) = c.frequency_penalty {
        sampling = sampling.frequency_penalty(f);
    }
    if let Some(p) = c.presence_penalty {
        sampling = sampling.presence_penalty(p);
    }
    sampling = sampling.ignore_eos(c.ignore_eos);
    let mut o = GenerateOptions::default().sampling(sampling).n_probs(n_probs);
    if let Some(m) = c.max_completion_tokens.or(c.max_tokens) {
        o = o.max_tokens(m as usize);
    }
    if let Some(stop) = &c.stop {
        let stops = match stop {
            openai::Stop::One(s) => vec![s.clone()],
            openai::Stop::Many(v) => v.clone(),
        };
        if stops.len() > 4 {
            return Err(ApiError::invalid("at most 4 stop sequences", "stop"));
        }
        o = o.stops(stops.into_iter().filter(|s| !s.is_empty()));
    }
    Ok(o)
}

fn choices(c: &Common) -> Result<usize, ApiError> {
    match c.n.unwrap_or(1) {
        n @ 1..=16 => Ok(n as usize),
        _ => Err(ApiError::invalid("n must be between 1 and 16", "n")),
    }
}

/// What one choice produced, collected.
#[derive(Default)]
struct Collected {
    text: String,
    logprobs: Vec<(String, TokenLogprobs)>,
    summary: Option<Summary>,
}

/// Every generation of a whole (not streamed) answer, in order, each one's summary counted
/// in the metrics; the first failure answers for all.
async fn collect_all(state: &AppState, streams: Vec<AsyncTokenStream>, retry: u32) -> Result<Vec<Collected>, ApiError> {
    let mut out = Vec::with_capacity(streams.len());
    for s in streams {
        out.push(collect(s).await.map_err(|e| ApiError::from_error(e, retry))?);
    }
    out.iter().filter_map(|c| c.summary.as_ref()).for_each(|s| state.metrics.finished(s));
    Ok(out)
}

async fn collect(mut stream: AsyncTokenStream) -> Result<Collected, crate::Error> {
    let mut c = Collected::default();
    while let Some(event) = stream.next().await {
        match event? {
            Event::Token { text, logprobs, id } => {
                if let Some(lp) = logprobs {
                    let piece =
                        lp.top.iter().find(|t| t.id == id).map(|t| t.text.clone()).unwrap_or_else(|| text.clone());
                    c.logprobs.push((piece, lp));
                }
                c.text.push_str(&text);
            }
            Event::Text(text) => c.text.push_str(&text),
            Event::Done(summary) => c.summary = Some(summary),
        }
    }
    Ok(c)
}

/// OpenAI's chat `logprobs.content` entries.
fn chat_logprobs(items: &[(String, TokenLogprobs)], top: usize) -> Value {
    let entry = |text: &str, logprob: f32| json!({"token": text, "logprob": logprob, "bytes": text.as_bytes()});
    Value::Array(
        items
            .iter()
            .map(|(text, lp)| {
                let mut e = entry(text, lp.logprob);
                e["top_logprobs"] = Value::Array(lp.top.iter().take(top).map(|t| entry(&t.text, t.logprob)).collect());
                e
            })
            .collect(),
    )
}

/// OpenAI's `usage`: the prompt once (every choice decodes the same prompt), the choices'
/// tokens together, and how many prompt tokens came from the KV cache (OpenAI's
/// `prompt_tokens_details.cached_tokens`, of the first choice).
fn sum_usage(summaries: &[&Summary]) -> Value {
    let prompt = summaries.first().map_or(0, |s| s.prompt_tokens);
    let cached = summaries.first().map_or(0, |s| s.cached_prompt_tokens);
    let completion: usize = summaries.iter().map(|s| s.generated_tokens).sum();
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    })
}

async fn chat_completions(State(state): State<Arc<AppState>>, body: axum::body::Bytes) -> Result<Response, ApiError> {
    state.metrics.chat.fetch_add(1, Ordering::Relaxed);
    let req: ChatRequest = parse(&body)?;
    state.check_model(req.common.model.as_deref())?;
    if req.messages.is_empty() {
        return Err(ApiError::invalid("messages must not be empty", "messages"));
    }
    let messages = req.messages.into_iter().map(openai::chat_message).collect::<Result<Vec<_>, _>>()?;
    let top = if req.logprobs { req.top_logprobs.unwrap_or(0).min(20) as usize } else { 0 };
    let mut opts = options(&req.common, if req.logprobs { top.max(1) } else { 0 })?;
    let mut chat = ChatOptions::default().tools(req.tools);
    if let Some(k) = req.chat_template_kwargs {
        chat.kwargs = k;
    }
    opts = opts.chat(chat);
    if let Some(format) = &req.response_format {
        match format.get("type").and_then(Value::as_str) {
            Some("text") | None => {}
            Some("json_object") => opts = opts.json_schema(json!({"type": "object"})),
            Some("json_schema") => {
                let schema = format
                    .pointer("/json_schema/schema")
                    .cloned()
                    .ok_or_else(|| ApiError::invalid("json_schema.schema is missing", "response_format"))?;
                opts = opts.json_schema(schema);
            }
            Some(other) => {
                return Err(ApiError::invalid(format!("unknown response_format type {other:?}"), "response_format"))
            }
        }
    }
    let retry = state.config.retry_after_s;
    let engine = state.engine.clone();
    let streams = state.start(&req.common, move || engine.chat(&messages, &ChatTemplate::Model, &opts)).await?;
    let id = state.id("chatcmpl");
    let model = state.config.model_name.clone();
    let created = now();
    if req.common.stream {
        let include_usage = req.common.stream_options.as_ref().is_some_and(|o| o.include_usage);
        let chunk = move |choices: Value, usage: Option<Value>| {
            let mut c = json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model, "choices": choices});
            if let Some(u) = usage {
                c["usage"] = u;
            }
            c
        };
        return Ok(sse(state.clone(), streams, include_usage, top, move |index, piece| match piece {
            Piece::Start => chunk(
                json!([{"index": index, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]),
                None,
            ),
            Piece::Text(text, lp) => {
                let mut choice = json!({"index": index, "delta": {"content": text}, "finish_reason": null});
                if let Some(lp) = lp {
                    choice["logprobs"] = json!({"content": lp});
                }
                chunk(json!([choice]), None)
            }
            Piece::End(summary) => {
                let mut c = chunk(
                    json!([{"index": index, "delta": {}, "finish_reason": openai::finish_reason(&summary.stop_reason)}]),
                    None,
                );
                c["timings"] = openai::timings(summary);
                c
            }
            Piece::Usage(usage) => chunk(json!([]), Some(usage)),
        }));
    }
    let out = collect_all(&state, streams, retry).await?;
    let summaries: Vec<&Summary> = out.iter().filter_map(|c| c.summary.as_ref()).collect();
    let usage = sum_usage(&summaries);
    let timings = summaries.first().map(|s| openai::timings(s)).unwrap_or(Value::Null);
    let choices: Vec<Value> = out
        .iter()
        .enumerate()
        .map(|(i, c)| {
            json!({
                "index": i,
                "message": {"role": "assistant", "content": c.text},
                "finish_reason": c.summary.as_ref().map(|s| openai::finish_reason(&s.stop_reason)),
                "logprobs": if req.logprobs { json!({"content": chat_logprobs(&c.logprobs, top)}) } else { Value::Null },
            })
        })
        .collect();
    Ok(Json(json!({
        "id": id, "object": "chat.completion", "created": created, "model": model,
        "choices": choices, "usage": usage, "timings": timings,
    }))
    .into_response())
}

async fn completions(State(state): State<Arc<AppState>>, body: axum::body::Bytes) -> Result<Response, ApiError> {
    state.metrics.completions.fetch_add(1, Ordering::Relaxed);
    let req: CompletionRequest = parse(&body)?;
    state.check_model(req.common.model.as_deref())?;
    let prompt = match &req.prompt {
        Value::String(s) => s.clone(),
        Value::Array(a) if a.len() == 1 && a[0].is_string() => a[0].as_str().unwrap_or_default().to_string(),
        _ => return Err(ApiError::invalid("prompt must be a string (or a list of one string)", "prompt")),
    };
    let top = req.logprobs.unwrap_or(0).min(20) as usize;
    let opts = options(&req.common, top)?;
    let retry = state.config.retry_after_s;
    let engine = state.engine.clone();
    let streams = state
        .start(&req.common, move || engine.generate(&prompt, &opts))
        .await
        .map_err(|e| e.prompt_param("prompt"))?;
    let id = state.id("cmpl");
    let model = state.config.model_name.clone();
    let created = now();
    if req.common.stream {
        let include_usage = req.common.stream_options.as_ref().is_some_and(|o| o.include_usage);
        let chunk = move |choices: Value| json!({"id": id, "object": "text_completion", "created": created, "model": model, "choices": choices});
        return Ok(sse(state.clone(), streams, include_usage, top, move |index, piece| match piece {
            Piece::Start => chunk(json!([])),
            Piece::Text(text, _) => {
                chunk(json!([{"index": index, "text": text, "finish_reason": null, "logprobs": null}]))
            }
            Piece::End(summary) => {
                let mut c = chunk(
                    json!([{"index": index, "text": "", "finish_reason": openai::finish_reason(&summary.stop_reason), "logprobs": null}]),
                );
                c["timings"] = openai::timings(summary);
                c
            }
            Piece::Usage(usage) => {
                let mut c = chunk(json!([]));
                c["usage"] = usage;
                c
            }
        }));
    }
    let out = collect_all(&state, streams, retry).await.map_err(|e| e.prompt_param("prompt"))?;
    let summaries: Vec<&Summary> = out.iter().filter_map(|c| c.summary.as_ref()).collect();
    let usage = sum_usage(&summaries);
    let choices: Vec<Value> = out
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let logprobs = (top > 0).then(|| {
                json!({
                    "tokens": c.logprobs.iter().map(|(t, _)| t.clone()).collect::<Vec<_>>(),
                    "token_logprobs": c.logprobs.iter().map(|(_, l)| l.logprob).collect::<Vec<_>>(),
                    "top_logprobs": c.logprobs.iter().map(|(_, l)| l.top.iter().take(top).map(|t| (t.text.clone(), json!(t.logprob))).collect::<serde_json::Map<_, _>>()).collect::<Vec<_>>(),
                })
            });
            json!({
                "index": i, "text": c.text, "logprobs": logprobs,
                "finish_reason": c.summary.as_ref().map(|s| openai::finish_reason(&s.stop_reason)),
            })
        })
        .collect();
    Ok(Json(json!({"id": id, "object": "text_completion", "created": created, "model": model, "choices": choices, "usage": usage}))
        .into_response())
}

/// One piece of a streamed choice.
enum Piece<'a> {
    Start,
    Text(String, Option<Value>),
    End(&'a Summary),
    Usage(Value),
}

/// Server-sent events for `streams` (one per choice, interleaved as their tokens come),
/// each piece shaped by `shape(choice index, piece)`, then usage when asked, then `[DONE]`.
/// Dropping the response (the client went away) drops the streams, which cancels them.
fn sse(
    state: Arc<AppState>,
    streams: Vec<AsyncTokenStream>,
    include_usage: bool,
    top: usize,
    shape: impl Fn(usize, Piece<'_>) -> Value + Send + Sync + 'static,
) -> Response {
    let shape = Arc::new(shape);
    let n = streams.len();
    let starts: Vec<Value> = (0..n).map(|i| shape(i, Piece::Start)).filter(|v| v["choices"] != json!([])).collect();
    let merged = stream::select_all(streams.into_iter().enumerate().map(|(i, s)| s.map(move |e| (i, e))));
    let summaries = Arc::new(std::sync::Mutex::new(Vec::<Summary>::new()));
    let shape2 = shape.clone();
    let sums = summaries.clone();
    let events = merged.filter_map(move |(i, event)| {
        let out = match event {
            Ok(Event::Token { text, logprobs, id }) => {
                let lp = logprobs.map(|lp| {
                    let piece =
                        lp.top.iter().find(|t| t.id == id).map(|t| t.text.clone()).unwrap_or_else(|| text.clone());
                    chat_logprobs(&[(piece, lp)], top)
                });
                (!text.is_empty() || lp.is_some()).then(|| shape2(i, Piece::Text(text, lp)))
            }
            Ok(Event::Text(text)) => (!text.is_empty()).then(|| shape2(i, Piece::Text(text, None))),
            Ok(Event::Done(summary)) => {
                state.metrics.finished(&summary);
                let v = shape2(i, Piece::End(&summary));
                if let Ok(mut s) = sums.lock() {
                    s.push(summary);
                }
                Some(v)
            }
            Err(e) => Some(ApiError::from_error(e, 1).body()),
        };
        std::future::ready(out.map(|v| SseEvent::default().data(v.to_string())))
    });
    let tail = stream::once(async move {
        let usage = summaries.lock().ok().map(|s| sum_usage(&s.iter().collect::<Vec<_>>()));
        match usage {
            Some(u) if include_usage => vec![SseEvent::default().data(shape(0, Piece::Usage(u)).to_string())],
            _ => vec![],
        }
    })
    .flat_map(stream::iter)
    .chain(stream::once(async { SseEvent::default().data("[DONE]") }));
    let all = stream::iter(starts.into_iter().map(|v| SseEvent::default().data(v.to_string())))
        .chain(events)
        .chain(tail)
        .map(Ok::<_, std::convert::Infallible>);
    sse_response(all)
}

fn sse_response(s: impl Stream<Item = Result<SseEvent, std::convert::Infallible>> + Send + 'static) -> Response {
    Sse::new(s).keep_alive(KeepAlive::default()).into_response()
}

async fn embeddings(State(state): State<Arc<AppState>>, body: axum::body::Bytes) -> Result<Response, ApiError> {
    state.metrics.embeddings.fetch_add(1, Ordering::Relaxed);
    let req: EmbeddingRequest = parse(&body)?;
    state.check_model(req.model.as_deref())?;
    // The `openai` Python package asks for base64 unless told otherwise.
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::invalid(
                format!("encoding_format must be \"float\" or \"base64\", not {other:?}"),
                "encoding_format",
            ))
        }
    };
    let texts: Vec<String> = match req.input {
        Value::String(s) => vec![s],
        Value::Array(a) if a.iter().all(Value::is_string) && !a.is_empty() => {
            a.into_iter().map(|v| v.as_str().unwrap_or_default().to_string()).collect()
        }
        _ => return Err(ApiError::invalid("input must be a string or a non-empty list of strings", "input")),
    };
    let engine = state.engine.clone();
    let config = EmbedConfig::default().pooling(state.config.pooling);
    let retry = state.config.retry_after_s;
    // Counting and embedding are CPU work: off the async workers.
    let (counted, vectors) = tokio::task::spawn_blocking(move || {
        let counted: usize =
            texts.iter().map(|t| engine.model().vocab().tokenize(t, true, true).map_or(0, |v| v.len())).sum();
        (counted, engine.embed(&texts, &config))
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", e.to_string()))?;
    let vectors = vectors.map_err(|e| ApiError::from_error(e, retry))?;
    let data: Vec<Value> = vectors
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            let embedding = if base64 { Value::from(openai::base64_f32(&v)) } else { json!(v) };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    Ok(Json(json!({
        "object": "list", "data": data, "model": state.config.model_name,
        "usage": {"prompt_tokens": counted, "total_tokens": counted},
    }))
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_fields_reach_the_sampling_params() {
        let c: Common =
            serde_json::from_str(r#"{"temperature":0.5,"top_p":0.9,"seed":7,"ignore_eos":true,"max_tokens":3}"#)
                .unwrap();
        let o = options(&c, 0).unwrap();
        assert!(o.sampling.ignore_eos);
        assert_eq!((o.sampling.temperature, o.sampling.top_p, o.sampling.seed), (0.5, 0.9, 7));
        assert_eq!(o.max_tokens, 3);
        assert!(!options(&Common::default(), 0).unwrap().sampling.ignore_eos);
    }
}
