//! (feature `server`) An OpenAI-compatible HTTP API on the [engine](crate::engine): axum on
//! tokio. `rocm-llama serve` runs it; [`router`] gives the routes to mount in a program's own
//! axum application.
//!
//! Routes: `POST /v1/chat/completions`, `POST /v1/completions` (streamed as server-sent
//! events or whole), `POST /v1/embeddings`, `GET /v1/models`, `GET /health`, `GET /metrics`,
//! and llama-server's `GET /slots`, `POST /slots/{id}?action=save|restore|erase`,
//! `/completion`, `/tokenize`, `/detokenize`, `/apply-template`, `/rerank` (and aliases),
//! `/props`, `/v1/models/{id}` and `/lora-adapters`, and Ollama's `/api/*`. Every body field is read or refused
//! (`fields`). A request the
//! engine's queue cannot take is answered 503 with `Retry-After` at once; a client that goes
//! away cancels its generation at the engine's next step (its stream is dropped).

mod chat;
mod fields;
mod listen;
mod llama_server;
mod lora;
mod metrics;
mod ollama;
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

use crate::chat::ChatTemplate;
use crate::embed::{EmbedConfig, Pooling};
use crate::engine::{AsyncTokenStream, Engine};
use crate::generate::{Event, GenerateOptions, Summary};
use crate::logprobs::TokenLogprobs;
use crate::sampler::SamplingParams;
use crate::speculative::Speculation;
use crate::vocab::{Token, Vocab};
use openai::{ApiError, Common, CompletionRequest, EmbeddingRequest};

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
    /// The model id the API reports (`--alias`); requests may name any model, and are
    /// answered by this one under this name.
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
    /// How `/v1/chat/completions` renders conversations (llama-server's `--chat-template`):
    /// the model's own template by default.
    pub chat_template: ChatTemplate,
    /// Template variables every chat request gets (llama-server's `--chat-template-kwargs`);
    /// a request's own `chat_template_kwargs` override them one by one.
    pub chat_template_kwargs: serde_json::Map<String, Value>,
    /// LoRA adapters served (`serve --lora`), each with the scale requests get unless they
    /// name their own (`lora` field) or `POST /lora-adapters` changes it; a request's adapters
    /// are numbered by their place here.
    pub lora: Vec<(crate::adapter::LoraAdapter, f32)>,
    /// Speculative decoding for every request (`serve --spec-type`), which a request's
    /// `speculative.n_max` and `speculative.n_min` tune; none by default.
    pub speculation: Option<Speculation>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            model_name: "model".into(),
            api_key: None,
            retry_after_s: 1,
            pooling: Pooling::Model,
            slot_save_path: None,
            chat_template: ChatTemplate::Model,
            chat_template_kwargs: serde_json::Map::new(),
            lora: Vec::new(),
            speculation: None,
        }
    }
}

crate::config::setters!(ServerConfig {
    retry_after_s: u32,
    pooling: Pooling,
    chat_template: ChatTemplate,
    chat_template_kwargs: serde_json::Map<String, Value>,
    lora: Vec<(crate::adapter::LoraAdapter, f32)>,
} optional {
    api_key: String,
    slot_save_path: std::path::PathBuf,
    speculation: Speculation,
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
    lora: lora::Adapters,
    next_id: AtomicU64,
    metrics: metrics::Metrics,
}

/// The routes, serving `engine`.
pub fn router(engine: Engine, config: ServerConfig) -> Router {
    let state = Arc::new(AppState {
        engine,
        lora: lora::Adapters::new(&config.lora),
        config,
        next_id: AtomicU64::new(1),
        metrics: metrics::Metrics::new(),
    });
    let api = Router::new()
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(llama_server::model_info))
        .route("/completion", post(llama_server::completion))
        .route("/tokenize", post(llama_server::tokenize))
        .route("/detokenize", post(llama_server::detokenize))
        .route("/apply-template", post(llama_server::apply_template))
        .route("/rerank", post(llama_server::rerank))
        .route("/reranking", post(llama_server::rerank))
        .route("/v1/rerank", post(llama_server::rerank))
        .route("/v1/reranking", post(llama_server::rerank))
        .route("/props", get(llama_server::props))
        .route("/api/chat", post(ollama::chat))
        .route("/api/generate", post(ollama::generate))
        .route("/api/embed", post(ollama::embed))
        .route("/api/embeddings", post(ollama::embeddings))
        .route("/api/tags", get(ollama::tags))
        .route("/api/ps", get(ollama::ps))
        .route("/api/show", post(ollama::show))
        .route("/api/version", get(ollama::version))
        .route("/lora-adapters", get(lora::list).post(lora::set))
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
    /// A request's `jobs` generations (choices), each started by `start(choice index)`; the
    /// first refusal answers for all (the ones already started are cancelled as they drop).
    ///
    /// Rendering a chat template and tokenizing a prompt are CPU work that grows with the
    /// request, so `start` runs on tokio's blocking pool, never on the async workers that
    /// answer every other connection (four requests of 10,000 messages once held up
    /// `/health` for 17 s).
    async fn start(
        &self,
        jobs: usize,
        start: impl Fn(usize) -> crate::Result<crate::TokenStream> + Send + 'static,
    ) -> Result<Vec<AsyncTokenStream>, ApiError> {
        let made = tokio::task::spawn_blocking(move || {
            (0..jobs).map(|i| start(i).map(|s| s.into_async())).collect::<Result<Vec<_>, _>>()
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

/// The speculative decoding a request gets: what `serve` was started with, with the request's
/// draft lengths (llama-server's `speculative.n_max` and `speculative.n_min`; `n_max: 0` turns
/// it off for the request) and, with a draft model, its `speculative.p_min`. Without
/// speculation served, the fields change nothing, as in llama-server (nor does `p_min` for
/// n-gram guesses, which have no probabilities).
fn request_speculation(c: &Common, served: Option<&Speculation>) -> Result<Option<Speculation>, ApiError> {
    let Some(served) = served else { return Ok(None) };
    let (max, min) = served.draft_limits();
    let max = match c.speculative_n_max {
        None => max,
        Some(0) => return Ok(None),
        Some(n @ 1..=256) => n as usize,
        Some(_) => return Err(ApiError::invalid("speculative.n_max must be 0 (off) to 256", "speculative.n_max")),
    };
    let min = match c.speculative_n_min {
        None => min.min(max),
        Some(n) if n >= 0 && n as usize <= max => n as usize,
        Some(_) => {
            return Err(ApiError::invalid(
                format!("speculative.n_min must be 0 to speculative.n_max ({max})"),
                "speculative.n_min",
            ))
        }
    };
    let mut spec = served.clone().with_draft_limits(max, min);
    if let (Speculation::Draft { p_min, .. }, Some(p)) = (&mut spec, c.speculative_p_min) {
        if !(0.0..=1.0).contains(&p) {
            return Err(ApiError::invalid("speculative.p_min must be between 0 and 1", "speculative.p_min"));
        }
        *p_min = p;
    }
    Ok(Some(spec))
}

/// The generation options both endpoints share: every field `fields.rs` marks as read for
/// them, mapped onto the library's settings (`vocab` turns `logit_bias` texts into tokens).
fn options(
    c: &Common,
    n_probs: usize,
    vocab: Vocab<'_>,
    lora: &lora::Adapters,
    speculation: Option<&Speculation>,
) -> Result<GenerateOptions, ApiError> {
    let mut sampling = SamplingParams::default();
    let range = |v: f32, lo: f32, hi: f32, name: &'static str| {
        if (lo..=hi).contains(&v) {
            Ok(v)
        } else {
            Err(ApiError::invalid(format!("{name} must be between {lo} and {hi}"), name))
        }
    };
    if let Some(t) = c.temperature {
        sampling.temperature = range(t, 0.0, 2.0, "temperature")?;
    }
    if let Some(p) = c.top_p {
        sampling.top_p = range(p, 0.0, 1.0, "top_p")?;
    }
    if let Some(k) = c.top_k {
        if k < 0 {
            return Err(ApiError::invalid("top_k must be 0 (off) or more", "top_k"));
        }
        sampling.top_k = k;
    }
    if let Some(p) = c.min_p {
        sampling.min_p = range(p, 0.0, 1.0, "min_p")?;
    }
    if let Some(p) = c.typical_p {
        sampling.typical_p = range(p, 0.0, 1.0, "typical_p")?;
    }
    if let Some(r) = c.repeat_penalty {
        sampling.repeat_penalty = range(r, f32::MIN_POSITIVE, 100.0, "repeat_penalty")?;
    }
    if let Some(n) = c.repeat_last_n {
        sampling.penalty_last_n = n;
    }
    if let Some(f) = c.frequency_penalty {
        sampling.frequency_penalty = range(f, -2.0, 2.0, "frequency_penalty")?;
    }
    if let Some(p) = c.presence_penalty {
        sampling.presence_penalty = range(p, -2.0, 2.0, "presence_penalty")?;
    }
    if let Some(m) = c.dry_multiplier {
        sampling.dry_multiplier = range(m, 0.0, 100.0, "dry_multiplier")?;
    }
    if let Some(b) = c.dry_base {
        sampling.dry_base = range(b, 1.0, 100.0, "dry_base")?;
    }
    if let Some(a) = c.dry_allowed_length {
        sampling.dry_allowed_length = a;
    }
    if let Some(n) = c.dry_penalty_last_n {
        sampling.dry_penalty_last_n = n;
    }
    if let Some(b) = &c.dry_sequence_breakers {
        sampling.dry_sequence_breakers = Some(b.clone());
    }
    if let Some(s) = c.seed {
        sampling.seed = (s as u64 & 0xffff_ffff) as u32;
    }
    if let Some(bias) = &c.logit_bias {
        sampling.logit_bias = logit_bias(bias, vocab)?;
    }
    sampling.grammar = c.grammar.clone().filter(|g| !g.is_empty());
    sampling.ignore_eos = c.ignore_eos;
    let mut o =
        GenerateOptions::default().sampling(sampling).n_probs(n_probs.max(c.n_probs.unwrap_or(0).min(20) as usize));
    o.lora = lora.for_request(c.lora.as_ref())?;
    o.speculation = request_speculation(c, speculation)?;
    match (c.max_completion_tokens.or(c.max_tokens), c.n_predict) {
        (Some(m), _) => o = o.max_tokens(m as usize),
        (None, Some(n)) if n >= 0 => o = o.max_tokens(n as usize),
        // -1: until the end of generation or of the context.
        (None, Some(_)) => o = o.max_tokens(usize::MAX),
        (None, None) => {}
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
    if let Some(schema) = &c.json_schema {
        o = o.json_schema(schema.clone());
    }
    if let Some(format) = &c.response_format {
        match format.get("type").and_then(Value::as_str) {
            Some("text") | None => {}
            Some("json_object") => o = o.json_schema(json!({"type": "object"})),
            Some("json_schema") => {
                // OpenAI nests it under json_schema.schema; llama-server also takes `schema`.
                let schema = format
                    .pointer("/json_schema/schema")
                    .or_else(|| format.get("schema"))
                    .cloned()
                    .ok_or_else(|| ApiError::invalid("json_schema.schema is missing", "response_format"))?;
                o = o.json_schema(schema);
            }
            Some(other) => {
                return Err(ApiError::invalid(format!("unknown response_format type {other:?}"), "response_format"))
            }
        }
    }
    if o.json_schema.is_some() && o.sampling.grammar.is_some() {
        return Err(ApiError::invalid(
            "give a grammar or a JSON schema (json_schema, response_format), not both",
            "grammar",
        ));
    }
    Ok(o)
}

/// `logit_bias` as OpenAI sends it (`{"15496": -100}`) or as llama-server takes it
/// (`[[15496, -1.5], ["Hello", false]]`: a text biases each of its tokens, `false` bans).
fn logit_bias(v: &Value, vocab: Vocab<'_>) -> Result<Vec<(Token, f32)>, ApiError> {
    let bad = |why: String| ApiError::invalid(format!("logit_bias: {why}"), "logit_bias");
    let bias_of = |b: &Value| match b {
        Value::Bool(false) => Ok(f32::NEG_INFINITY),
        Value::Number(n) => n
            .as_f64()
            .map(|x| x as f32)
            .filter(|x| x.is_finite())
            .ok_or_else(|| bad(format!("{n} is not a finite bias"))),
        other => Err(bad(format!("a bias is a number or false, not {other}"))),
    };
    let token = |t: i64| {
        let t = i32::try_from(t).map_err(|_| bad(format!("token {t} is outside the vocabulary")))?;
        vocab.check(t).map_err(|e| bad(e.to_string()))?;
        Ok::<_, ApiError>(t)
    };
    let mut out = Vec::new();
    match v {
        Value::Object(map) => {
            for (k, b) in map {
                let id: i64 = k.parse().map_err(|_| bad(format!("{k:?} is not a token id")))?;
                out.push((token(id)?, bias_of(b)?));
            }
        }
        Value::Array(pairs) => {
            for p in pairs {
                let (Some(what), Some(b), 2) = (p.get(0), p.get(1), p.as_array().map_or(0, Vec::len)) else {
                    return Err(bad(format!("each entry is [token or text, bias], not {p}")));
                };
                let b = bias_of(b)?;
                match what {
                    Value::Number(n) => {
                        out.push((token(n.as_i64().ok_or_else(|| bad(format!("{n} is not a token id")))?)?, b))
                    }
                    Value::String(text) => {
                        let ids = vocab.tokenize(text, false, false).map_err(|e| bad(e.to_string()))?;
                        out.extend(ids.into_iter().map(|t| (t, b)));
                    }
                    other => return Err(bad(format!("{other} is neither a token id nor a text"))),
                }
            }
        }
        Value::Null => {}
        other => return Err(bad(format!("expected an object or a list, not {other}"))),
    }
    if out.len() > 1 << 16 {
        return Err(bad("more than 65,536 entries".into()));
    }
    Ok(out)
}

/// The options of choice `i`: with a seed, choice `i` samples with seed + i, so `n` seeded
/// choices differ from each other and each is reproducible.
fn choice_options(opts: &GenerateOptions, i: usize) -> GenerateOptions {
    let mut o = opts.clone();
    if o.sampling.seed != SamplingParams::default().seed {
        o.sampling.seed = o.sampling.seed.wrapping_add(i as u32);
    }
    o
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

/// OpenAI's `usage` of choices given as (choice index, summary), `n` choices per prompt: each
/// prompt once (its `n` choices decode the same prompt; counted from its first), the choices'
/// tokens together, and how many prompt tokens came from the KV cache (OpenAI's
/// `prompt_tokens_details.cached_tokens`).
fn sum_usage(summaries: &[(usize, &Summary)], n: usize) -> Value {
    let firsts = || summaries.iter().filter(|(i, _)| i % n.max(1) == 0).map(|(_, s)| s);
    let prompt: usize = firsts().map(|s| s.prompt_tokens).sum();
    let cached: usize = firsts().map(|s| s.cached_prompt_tokens).sum();
    let completion: usize = summaries.iter().map(|(_, s)| s.generated_tokens).sum();
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    })
}

/// OpenAI's `prompt` in each shape it allows: a string, strings, token ids, or lists of token
/// ids. Several prompts give `n` choices each.
enum Prompt {
    Text(String),
    Tokens(Vec<Token>),
}

fn prompts(v: &Value) -> Result<Vec<Prompt>, ApiError> {
    let bad = || {
        ApiError::invalid(
            "prompt must be a string, a list of strings, a list of token ids or a list of lists of token ids",
            "prompt",
        )
    };
    let ids = |a: &[Value]| -> Result<Vec<Token>, ApiError> {
        a.iter().map(|t| t.as_i64().and_then(|t| i32::try_from(t).ok()).ok_or_else(bad)).collect()
    };
    match v {
        Value::String(s) => Ok(vec![Prompt::Text(s.clone())]),
        Value::Array(a) if a.is_empty() => Err(bad()),
        Value::Array(a) if a.iter().all(Value::is_string) => {
            Ok(a.iter().map(|s| Prompt::Text(s.as_str().unwrap_or_default().to_string())).collect())
        }
        Value::Array(a) if a.iter().all(Value::is_number) => Ok(vec![Prompt::Tokens(ids(a)?)]),
        Value::Array(a) if a.iter().all(Value::is_array) => a
            .iter()
            .map(|p| match p.as_array() {
                Some(p) if !p.is_empty() => ids(p).map(Prompt::Tokens),
                _ => Err(bad()),
            })
            .collect(),
        _ => Err(bad()),
    }
}

/// Legacy completions' `logprobs` object for `items` (token text, log-probabilities), with
/// `text_offset` counted in bytes from `offset`.
fn legacy_logprobs(items: &[(String, TokenLogprobs)], top: usize, offset: usize) -> Value {
    let mut at = offset;
    let offsets: Vec<usize> = items
        .iter()
        .map(|(t, _)| {
            let o = at;
            at += t.len();
            o
        })
        .collect();
    json!({
        "tokens": items.iter().map(|(t, _)| t.clone()).collect::<Vec<_>>(),
        "token_logprobs": items.iter().map(|(_, l)| l.logprob).collect::<Vec<_>>(),
        "top_logprobs": items.iter().map(|(_, l)| l.top.iter().take(top).map(|t| (t.text.clone(), json!(t.logprob))).collect::<serde_json::Map<_, _>>()).collect::<Vec<_>>(),
        "text_offset": offsets,
    })
}

async fn completions(State(state): State<Arc<AppState>>, body: axum::body::Bytes) -> Result<Response, ApiError> {
    state.metrics.completions.fetch_add(1, Ordering::Relaxed);
    fields::check(&body, fields::Route::Completions)?;
    let req: CompletionRequest = parse(&body)?;
    let prompts = prompts(&req.prompt)?;
    let n = choices(&req.common)?;
    if prompts.len() * n > 64 {
        return Err(ApiError::invalid("at most 64 choices (prompts x n) per request", "prompt"));
    }
    let top = req.logprobs.unwrap_or(0).min(20) as usize;
    if req.echo && top > 0 {
        return Err(ApiError::invalid(
            "echo with logprobs is not supported (no log-probabilities of the prompt)",
            "echo",
        ));
    }
    let opts = options(&req.common, top, state.engine.model().vocab(), &state.lora, state.config.speculation.as_ref())?;
    // With echo, each choice starts with its prompt's text.
    let echoes: Vec<String> = if req.echo {
        let vocab = state.engine.model().vocab();
        prompts
            .iter()
            .map(|p| match p {
                Prompt::Text(t) => Ok(t.clone()),
                Prompt::Tokens(ids) => vocab.detokenize(ids, false, false).map_err(|e| ApiError::from_error(e, 1)),
            })
            .collect::<Result<_, _>>()?
    } else {
        Vec::new()
    };
    let retry = state.config.retry_after_s;
    let engine = state.engine.clone();
    let streams = state
        .start(prompts.len() * n, move |i| {
            let o = choice_options(&opts, i % n);
            match &prompts[i / n] {
                Prompt::Text(t) => engine.generate(t, &o),
                Prompt::Tokens(ids) => engine.generate_tokens(ids.clone(), &o),
            }
        })
        .await
        .map_err(|e| e.prompt_param("prompt"))?;
    let id = state.id("cmpl");
    let model = state.config.model_name.clone();
    let created = now();
    if req.common.stream {
        let include_usage = req.common.stream_options.as_ref().is_some_and(|o| o.include_usage);
        let chunk = move |choices: Value| json!({"id": id, "object": "text_completion", "created": created, "model": model, "choices": choices});
        let offsets: Vec<std::sync::atomic::AtomicUsize> = (0..streams.len())
            .map(|i| std::sync::atomic::AtomicUsize::new(echoes.get(i / n).map_or(0, String::len)))
            .collect();
        return Ok(sse(state.clone(), streams, include_usage, n, move |index, piece| {
            Some(match piece {
                Piece::Start => match echoes.get(index / n) {
                    Some(text) => {
                        chunk(json!([{"index": index, "text": text, "finish_reason": null, "logprobs": null}]))
                    }
                    None => chunk(json!([])),
                },
                Piece::Text(text, lp) => {
                    let at = offsets[index].fetch_add(text.len(), Ordering::Relaxed);
                    let lp = lp.map(|lp| legacy_logprobs(&[lp], top, at));
                    chunk(json!([{"index": index, "text": text, "finish_reason": null, "logprobs": lp}]))
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
            })
        }));
    }
    let out = collect_all(&state, streams, retry).await.map_err(|e| e.prompt_param("prompt"))?;
    let summaries: Vec<(usize, &Summary)> =
        out.iter().enumerate().filter_map(|(i, c)| Some((i, c.summary.as_ref()?))).collect();
    let usage = sum_usage(&summaries, n);
    let choices: Vec<Value> = out
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let echo = echoes.get(i / n).map_or("", String::as_str);
            let logprobs = (top > 0).then(|| legacy_logprobs(&c.logprobs, top, 0));
            json!({
                "index": i, "text": format!("{echo}{}", c.text), "logprobs": logprobs,
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
    /// Text, with the log-probabilities of its token (the token's text and them) when asked.
    Text(String, Option<(String, TokenLogprobs)>),
    End(&'a Summary),
    Usage(Value),
}

/// Server-sent events for `streams` (one per choice, interleaved as their tokens come),
/// each piece shaped by `shape(choice index, piece)` (`None`: nothing to send for it), then
/// usage when asked, then `[DONE]`.
/// Dropping the response (the client went away) drops the streams, which cancels them.
fn sse(
    state: Arc<AppState>,
    streams: Vec<AsyncTokenStream>,
    include_usage: bool,
    per_prompt: usize,
    shape: impl Fn(usize, Piece<'_>) -> Option<Value> + Send + Sync + 'static,
) -> Response {
    let shape = Arc::new(shape);
    let n = streams.len();
    let starts: Vec<Value> =
        (0..n).filter_map(|i| shape(i, Piece::Start)).filter(|v| v["choices"] != json!([])).collect();
    let merged = stream::select_all(streams.into_iter().enumerate().map(|(i, s)| s.map(move |e| (i, e))));
    let summaries = Arc::new(std::sync::Mutex::new(Vec::<(usize, Summary)>::new()));
    let shape2 = shape.clone();
    let sums = summaries.clone();
    let events = merged.filter_map(move |(i, event)| {
        let out = match event {
            Ok(Event::Token { text, logprobs, id }) => {
                let lp = logprobs.map(|lp| {
                    let piece =
                        lp.top.iter().find(|t| t.id == id).map(|t| t.text.clone()).unwrap_or_else(|| text.clone());
                    (piece, lp)
                });
                (!text.is_empty() || lp.is_some()).then(|| shape2(i, Piece::Text(text, lp))).flatten()
            }
            Ok(Event::Text(text)) => (!text.is_empty()).then(|| shape2(i, Piece::Text(text, None))).flatten(),
            Ok(Event::Done(summary)) => {
                state.metrics.finished(&summary);
                let v = shape2(i, Piece::End(&summary));
                if let Ok(mut s) = sums.lock() {
                    s.push((i, summary));
                }
                v
            }
            Err(e) => Some(ApiError::from_error(e, 1).body()),
        };
        std::future::ready(out.map(|v| SseEvent::default().data(v.to_string())))
    });
    let tail = stream::once(async move {
        let usage =
            summaries.lock().ok().map(|s| sum_usage(&s.iter().map(|(i, s)| (*i, s)).collect::<Vec<_>>(), per_prompt));
        match usage {
            Some(u) if include_usage => {
                shape(0, Piece::Usage(u)).map(|v| SseEvent::default().data(v.to_string())).into_iter().collect()
            }
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
    fields::check(&body, fields::Route::Embeddings)?;
    let req: EmbeddingRequest = parse(&body)?;
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
    // Every shape OpenAI takes: a string, strings, token ids, lists of token ids (LangChain's
    // OpenAIEmbeddings sends token ids by default).
    let inputs = prompts(&req.input).map_err(|_| {
        ApiError::invalid(
            "input must be a string, a list of strings, a list of token ids or a list of lists of token ids",
            "input",
        )
    })?;
    let n_embd = state.engine.model().n_embd() as usize;
    let dimensions = match req.dimensions {
        None => None,
        Some(d) if (1..=n_embd).contains(&(d as usize)) => Some(d as usize),
        Some(d) => {
            return Err(ApiError::invalid(format!("dimensions must be between 1 and {n_embd}, not {d}"), "dimensions"))
        }
    };
    let engine = state.engine.clone();
    let config = EmbedConfig::default().pooling(state.config.pooling);
    let retry = state.config.retry_after_s;
    // Counting and embedding are CPU work: off the async workers.
    let (counted, vectors) = tokio::task::spawn_blocking(move || {
        let vocab = engine.model().vocab();
        let counted: usize = inputs
            .iter()
            .map(|p| match p {
                Prompt::Text(t) => vocab.tokenize(t, true, true).map_or(0, |v| v.len()),
                Prompt::Tokens(ids) => ids.len(),
            })
            .sum();
        let vectors = if inputs.iter().all(|p| matches!(p, Prompt::Tokens(_))) {
            let ids: Vec<Vec<Token>> =
                inputs.into_iter().filter_map(|p| if let Prompt::Tokens(t) = p { Some(t) } else { None }).collect();
            engine.embed_tokens(&ids, &config)
        } else {
            let texts: Vec<String> =
                inputs.into_iter().filter_map(|p| if let Prompt::Text(t) = p { Some(t) } else { None }).collect();
            engine.embed(&texts, &config)
        };
        (counted, vectors)
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", e.to_string()))?;
    let vectors = vectors.map_err(|e| ApiError::from_error(e, retry))?;
    let data: Vec<Value> = vectors
        .into_iter()
        .enumerate()
        .map(|(i, mut v)| {
            // OpenAI's `dimensions`: the first d values, normalised again.
            if let Some(d) = dimensions.filter(|&d| d < v.len()) {
                v.truncate(d);
                crate::embed::l2_normalize(&mut v);
            }
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

    fn tiny() -> crate::Model {
        let path = crate::synth::tiny_model().unwrap();
        crate::Model::load(&path, &crate::LoadConfig::default().vocab_only(true)).unwrap()
    }

    #[test]
    fn request_fields_reach_the_sampling_params() {
        let model = tiny();
        let vocab = model.vocab();
        let none = lora::Adapters::new(&[]);
        let c: Common =
            serde_json::from_str(r#"{"temperature":0.5,"top_p":0.9,"seed":7,"ignore_eos":true,"max_tokens":3}"#)
                .unwrap();
        let o = options(&c, 0, vocab, &none, None).unwrap();
        assert!(o.sampling.ignore_eos);
        assert_eq!((o.sampling.temperature, o.sampling.top_p, o.sampling.seed), (0.5, 0.9, 7));
        assert_eq!(o.max_tokens, 3);
        assert!(!options(&Common::default(), 0, vocab, &none, None).unwrap().sampling.ignore_eos);
    }

    /// Every field the table marks as read changes the generation's options (those the
    /// handlers read themselves are listed apart and tested through the server).
    #[test]
    fn every_read_field_changes_the_options() {
        let model = tiny();
        let vocab = model.vocab();
        let none = lora::Adapters::new(&[]);
        let by_handler = [
            "messages",
            "prompt",
            "stream",
            "stream_options",
            "n",
            "logprobs",
            "top_logprobs",
            "tools",
            "tool_choice",
            "chat_template_kwargs",
            "echo",
            "reasoning_format",
            // Needs adapters loaded: tests/server.rs serves one.
            "lora",
        ];
        let samples = json!({
            "max_tokens": 3, "max_completion_tokens": 4, "n_predict": 5, "temperature": 0.3, "top_p": 0.5,
            "top_k": 7, "min_p": 0.2, "typical_p": 0.5, "repeat_penalty": 1.2, "repeat_last_n": 32,
            "frequency_penalty": 0.5, "presence_penalty": 0.5, "dry_multiplier": 0.8, "dry_base": 2.0,
            "dry_allowed_length": 3, "dry_penalty_last_n": 16, "dry_sequence_breakers": ["x"], "seed": 7,
            "stop": "x", "ignore_eos": true, "logit_bias": {"5": 2.0}, "grammar": "root ::= \"a\"",
            "json_schema": {"type": "object"}, "response_format": {"type": "json_object"}, "n_probs": 2,
            "speculative.n_max": 5, "speculative.n_min": 1, "speculative.p_min": 0.9,
        });
        // A draft model (the tiny model drafting for itself) reads every speculative field.
        let full = crate::Model::load(crate::synth::tiny_model().unwrap(), &crate::LoadConfig::default()).unwrap();
        let draft = crate::Model::load(crate::synth::tiny_model().unwrap(), &crate::LoadConfig::default()).unwrap();
        let served = Some(Speculation::draft_model(crate::DraftModel::new(&full, Arc::new(draft)).unwrap()));
        let default = format!("{:?}", options(&Common::default(), 0, vocab, &none, served.as_ref()).unwrap());
        for route in [fields::Route::Chat, fields::Route::Completions] {
            for (name, handling) in route.fields() {
                if !matches!(handling, fields::Handling::Read) || by_handler.contains(&name) {
                    continue;
                }
                let value = samples.get(name).unwrap_or_else(|| panic!("no sample value for the read field {name}"));
                let c: Common = serde_json::from_value(json!({ name: value })).unwrap();
                let got = format!("{:?}", options(&c, 0, vocab, &none, served.as_ref()).unwrap());
                assert_ne!(got, default, "{name} changed nothing");
            }
        }
        // llama-server's logit_bias shapes: ids, texts (each of their tokens), false bans.
        let c: Common = serde_json::from_value(json!({"logit_bias": [[5, 1.5], [6, false]]})).unwrap();
        assert_eq!(
            options(&c, 0, vocab, &none, None).unwrap().sampling.logit_bias,
            vec![(5, 1.5), (6, f32::NEG_INFINITY)]
        );
        for bad in [json!({"x": 1}), json!({"999999": 1}), json!([[1]]), json!("no")] {
            let c: Common = serde_json::from_value(json!({"logit_bias": bad})).unwrap();
            assert!(options(&c, 0, vocab, &none, None).is_err(), "{bad}");
        }
    }
}
