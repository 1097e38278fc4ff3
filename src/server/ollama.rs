//! Ollama's API, so Ollama's clients and UIs work unchanged: `POST /api/chat`,
//! `/api/generate` (streamed as NDJSON unless `"stream": false`), `/api/embed` and the older
//! `/api/embeddings`, `GET /api/tags`, `POST /api/show`, `GET /api/ps`, `GET /api/version`.
//! Sampling comes in Ollama's `options` (its Modelfile parameter names); every option and
//! every field is read, accepted as changing nothing, or refused, as on the other routes.
//! Replies are read by the chat route's reader: `tool_calls` on `/api/chat`, and with `think`
//! the reasoning in `thinking`. Errors are Ollama's `{"error": "..."}`.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream::StreamExt;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::chat::ReplyReader;
use super::fields::{self, Handling, Route};
use super::openai::{self, ApiError, Common};
use super::{collect, options, parse, AppState};
use crate::chat::{ChatMessage, ChatOptions};
use crate::generate::{Event, GenerateOptions, StopReason, Summary};
use crate::tools::ToolCall;

/// An error in Ollama's shape: its status and `{"error": message}`.
pub(super) struct OllamaError(ApiError);

impl From<ApiError> for OllamaError {
    fn from(e: ApiError) -> Self {
        OllamaError(e)
    }
}

impl IntoResponse for OllamaError {
    fn into_response(self) -> Response {
        (self.0.status, Json(json!({"error": self.0.message}))).into_response()
    }
}

type Result<T> = std::result::Result<T, OllamaError>;

/// Ollama's `options` (Modelfile parameters): what each does here.
pub(super) const OPTIONS: &[fields::Field] = &[
    ("num_predict", Handling::Read),
    ("temperature", Handling::Read),
    ("top_k", Handling::Read),
    ("top_p", Handling::Read),
    ("min_p", Handling::Read),
    ("typical_p", Handling::Read),
    ("repeat_last_n", Handling::Read),
    ("repeat_penalty", Handling::Read),
    ("presence_penalty", Handling::Read),
    ("frequency_penalty", Handling::Read),
    ("seed", Handling::Read),
    ("stop", Handling::Read),
    ("num_ctx", Handling::Ignored("the context of each slot is the server's (-c)")),
    ("num_batch", Handling::Ignored("the batch is the server's (-b)")),
    ("num_gpu", Handling::Ignored("layers are placed when the server loads the model (-ngl)")),
    ("main_gpu", Handling::Ignored("devices are chosen when the server loads the model")),
    ("use_mmap", Handling::Ignored("the model is loaded once by the server")),
    ("num_thread", Handling::Ignored("threads are the server's (-t)")),
    ("num_keep", Handling::Ignored("a prompt longer than the context is refused, never cut")),
    ("low_vram", Handling::Ignored("memory is planned when the server loads the model")),
    ("mirostat", Handling::Refused("mirostat is not supported")),
    ("mirostat_tau", Handling::Refused("mirostat is not supported")),
    ("mirostat_eta", Handling::Refused("mirostat is not supported")),
    ("penalize_newline", Handling::Refused("not supported")),
    ("tfs_z", Handling::Refused("tail-free sampling is not supported")),
];

/// Ollama's `options` and `format` as the library's options.
fn generate_options(
    state: &AppState,
    opts: Option<&Map<String, Value>>,
    format: Option<&Value>,
) -> Result<GenerateOptions> {
    let opts = opts.cloned().unwrap_or_default();
    let body = serde_json::to_vec(&opts).unwrap_or_default();
    fields::check_against(&body, OPTIONS, "options")?;
    // The names Ollama shares with llama-server's read the same way; num_predict is
    // n_predict (-1 and -2: until the end of generation or of the context).
    let mut c: Common = serde_json::from_value(Value::Object(
        opts.into_iter().map(|(k, v)| (if k == "num_predict" { "n_predict".to_string() } else { k }, v)).collect(),
    ))
    .map_err(|e| ApiError::invalid(format!("options: {e}"), "options"))?;
    if c.n_predict.is_some_and(|n| n < 0) {
        c.n_predict = Some(-1);
    }
    let mut o = options(&c, 0, state.engine.model().vocab(), &state.lora, state.config.speculation.as_ref())?;
    match format {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s.is_empty() => {}
        Some(Value::String(s)) if s == "json" => o = o.json_schema(json!({"type": "object"})),
        Some(schema @ Value::Object(_)) => o = o.json_schema(schema.clone()),
        Some(other) => {
            return Err(
                ApiError::invalid(format!("format must be \"json\" or a JSON schema, not {other}"), "format").into()
            )
        }
    }
    Ok(o)
}

/// RFC 3339 in UTC, as Ollama's `created_at`.
fn timestamp(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_nanos()
    )
}

fn done_reason(r: &StopReason) -> &'static str {
    match r {
        StopReason::MaxTokens | StopReason::ContextFull => "length",
        StopReason::Cancelled => "cancelled",
        _ => "stop",
    }
}

/// The statistics of a last object, in nanoseconds as Ollama counts them.
fn stats(s: &Summary) -> Map<String, Value> {
    let ns = |d: Duration| d.as_nanos() as u64;
    let mut m = Map::new();
    m.insert("done_reason".into(), done_reason(&s.stop_reason).into());
    m.insert("total_duration".into(), ns(s.total_time).into());
    m.insert("load_duration".into(), 0.into());
    m.insert("prompt_eval_count".into(), (s.prompt_tokens - s.cached_prompt_tokens).into());
    m.insert("prompt_eval_duration".into(), ns(s.time_to_first_token).into());
    m.insert("eval_count".into(), s.generated_tokens.into());
    m.insert("eval_duration".into(), ns(s.total_time.saturating_sub(s.time_to_first_token)).into());
    m
}

/// NDJSON: one object per line.
fn ndjson(lines: impl futures_util::Stream<Item = Value> + Send + 'static) -> Response {
    let body = axum::body::Body::from_stream(lines.map(|v| Ok::<_, std::convert::Infallible>(format!("{v}\n"))));
    ([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response()
}

/// One read piece of a reply, or the whole reply, as Ollama's fields: `content` (or
/// `response`), `thinking` and `tool_calls`.
#[derive(Default)]
struct Reply {
    text: String,
    thinking: String,
    calls: Vec<ToolCall>,
}

impl Reply {
    /// Ollama's message (`/api/chat`): role, content, and thinking and tool_calls when there
    /// are any. A call's arguments are an object, as Ollama gives them (arguments that are not
    /// JSON are given as the string the model wrote).
    fn message(&self) -> Value {
        let mut m = json!({"role": "assistant", "content": self.text});
        if !self.thinking.is_empty() {
            m["thinking"] = self.thinking.clone().into();
        }
        if !self.calls.is_empty() {
            m["tool_calls"] = self
                .calls
                .iter()
                .map(|c| {
                    let args =
                        serde_json::from_str::<Value>(&c.arguments).unwrap_or_else(|_| c.arguments.clone().into());
                    json!({"function": {"name": c.name, "arguments": args}})
                })
                .collect();
        }
        m
    }
}

/// How a reply is read: the reasoning apart (`Some(open)`), tool calls out (`tools`).
#[derive(Clone, Copy)]
struct Reading {
    split: Option<bool>,
    tools: bool,
}

/// Ollama's `think`: `true` (or a level, `"low"`, `"medium"`, `"high"`, given to the template
/// as `reasoning_effort`) puts the reasoning in `thinking`; `false` asks the template not to
/// think (`enable_thinking: false`, as Qwen 3's reads it); unset leaves the reply as the model
/// writes it, as Ollama does for clients that do not ask.
fn think(value: Option<&Value>, chat: &mut ChatOptions) -> Result<bool> {
    match value {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(true)) => Ok(true),
        Some(Value::Bool(false)) => {
            chat.kwargs.insert("enable_thinking".into(), false.into());
            Ok(false)
        }
        Some(Value::String(level)) if ["low", "medium", "high"].contains(&level.as_str()) => {
            chat.kwargs.insert("reasoning_effort".into(), level.clone().into());
            Ok(true)
        }
        Some(other) => Err(ApiError::invalid(
            format!("think must be true, false, \"low\", \"medium\" or \"high\", not {other}"),
            "think",
        )
        .into()),
    }
}

/// Streams or collects one generation, read as `reading` says: `shape(reply, None)` makes
/// each streamed object, `shape(reply, Some(summary))` the last one (the whole reply when not
/// streamed; the calls when streamed, once they are complete).
async fn answer(
    state: Arc<AppState>,
    stream: crate::engine::AsyncTokenStream,
    streaming: bool,
    reading: Reading,
    shape: impl Fn(Reply, Option<&Summary>) -> Value + Send + Sync + 'static,
) -> Result<Response> {
    if streaming {
        let mut reader = ReplyReader::new(reading.split, reading.tools);
        let mut events = Vec::new();
        let lines = stream.filter_map(move |event| {
            let out = match event {
                Ok(Event::Token { text, .. } | Event::Text(text)) => {
                    let d = reader.push(&text);
                    events.extend(d.calls);
                    (!d.content.is_empty() || !d.reasoning.is_empty())
                        .then(|| shape(Reply { text: d.content, thinking: d.reasoning, calls: vec![] }, None))
                }
                Ok(Event::Done(summary)) => {
                    state.metrics.finished(&summary);
                    let d = reader.finish();
                    events.extend(d.calls);
                    let (_, calls) = crate::tools::gather(std::mem::take(&mut events));
                    Some(shape(Reply { text: d.content, thinking: d.reasoning, calls }, Some(&summary)))
                }
                Err(e) => Some(json!({"error": e.to_string()})),
            };
            std::future::ready(out)
        });
        return Ok(ndjson(lines));
    }
    let c = collect(stream).await.map_err(|e| ApiError::from_error(e, state.config.retry_after_s))?;
    let summary = c.summary.ok_or_else(|| ApiError::from_error(crate::Error::Cancelled, 1))?;
    state.metrics.finished(&summary);
    let (thinking, text, calls) = ReplyReader::whole(&c.text, reading.split, reading.tools);
    Ok(Json(shape(Reply { text, thinking, calls }, Some(&summary))).into_response())
}

/// The object of a reply: `fields` (the reply's own) beside the model and time, `done`, and
/// the statistics on the last one.
fn object(model: &str, fields: Value, summary: Option<&Summary>) -> Value {
    let mut v = json!({"model": model, "created_at": timestamp(SystemTime::now())});
    if let (Some(o), Value::Object(f)) = (v.as_object_mut(), fields) {
        o.extend(f);
        o.insert("done".into(), summary.is_some().into());
        if let Some(s) = summary {
            o.extend(stats(s));
        }
    }
    v
}

#[derive(Deserialize)]
struct ChatBody {
    messages: Vec<Value>,
    tools: Option<Value>,
    think: Option<Value>,
    format: Option<Value>,
    options: Option<Map<String, Value>>,
    stream: Option<bool>,
}

/// An Ollama message as a chat message: `images` refused, `tool_name` kept for the template.
fn message(v: Value) -> Result<ChatMessage> {
    if v.get("images").is_some_and(|i| !i.is_null() && i.as_array().is_none_or(|a| !a.is_empty())) {
        return Err(ApiError::invalid("images are not supported (no multimodal input)", "messages").into());
    }
    Ok(openai::chat_message(v)?)
}

/// `POST /api/chat`.
pub(super) async fn chat(State(state): State<Arc<AppState>>, body: axum::body::Bytes) -> Result<Response> {
    state.metrics.chat.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    fields::check(&body, Route::OllamaChat)?;
    let req: ChatBody = parse(&body)?;
    let messages = req.messages.into_iter().map(message).collect::<Result<Vec<_>>>()?;
    if messages.is_empty() {
        return Err(ApiError::invalid("messages must not be empty", "messages").into());
    }
    let mut chat = ChatOptions::default().tools(req.tools);
    chat.kwargs = state.config.chat_template_kwargs.clone();
    let split = think(req.think.as_ref(), &mut chat)?;
    let template = state.config.chat_template.clone();
    let split = match split {
        true => Some(super::chat::thinking_opened(&state, &template, &messages, &chat).await),
        false => None,
    };
    let reading = Reading { split, tools: chat.tool_list().is_some() };
    let opts = generate_options(&state, req.options.as_ref(), req.format.as_ref())?.chat(chat);
    let engine = state.engine.clone();
    let mut streams = state.start(1, move |_| engine.chat(&messages, &template, &opts)).await?;
    let model = state.config.model_name.clone();
    answer(state.clone(), streams.remove(0), req.stream.unwrap_or(true), reading, move |reply, summary| {
        object(&model, json!({"message": reply.message()}), summary)
    })
    .await
}

#[derive(Deserialize)]
struct GenerateBody {
    #[serde(default)]
    prompt: String,
    system: Option<String>,
    #[serde(default)]
    raw: bool,
    format: Option<Value>,
    options: Option<Map<String, Value>>,
    stream: Option<bool>,
    think: Option<Value>,
}

/// `POST /api/generate`: the prompt rendered as a user turn through the chat template (with
/// `system`), or as it is with `raw`.
pub(super) async fn generate(State(state): State<Arc<AppState>>, body: axum::body::Bytes) -> Result<Response> {
    state.metrics.completions.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    fields::check(&body, Route::OllamaGenerate)?;
    let req: GenerateBody = parse(&body)?;
    let model = state.config.model_name.clone();
    if req.prompt.is_empty() {
        // Ollama answers an empty prompt at once (it only loads the model).
        return Ok(Json(json!({"model": model, "created_at": timestamp(SystemTime::now()), "response": "", "done": true, "done_reason": "load"})).into_response());
    }
    let mut chat = ChatOptions { kwargs: state.config.chat_template_kwargs.clone(), ..Default::default() };
    let split = think(req.think.as_ref(), &mut chat)?;
    let template = state.config.chat_template.clone();
    let (prompt, raw) = (req.prompt, req.raw);
    let mut messages: Vec<ChatMessage> = req.system.into_iter().map(ChatMessage::system).collect();
    messages.push(ChatMessage::user(prompt.clone()));
    let split = match (split, raw) {
        (false, _) => None,
        (true, true) => Some(false),
        (true, false) => Some(super::chat::thinking_opened(&state, &template, &messages, &chat).await),
    };
    let opts = generate_options(&state, req.options.as_ref(), req.format.as_ref())?.chat(chat);
    let engine = state.engine.clone();
    let mut streams = state
        .start(1, move |_| match raw {
            true => engine.generate(&prompt, &opts),
            false => engine.chat(&messages, &template, &opts),
        })
        .await
        .map_err(|e| e.prompt_param("prompt"))?;
    let reading = Reading { split, tools: false };
    answer(state.clone(), streams.remove(0), req.stream.unwrap_or(true), reading, move |reply, summary| {
        let mut fields = json!({"response": reply.text});
        if !reply.thinking.is_empty() {
            fields["thinking"] = reply.thinking.into();
        }
        object(&model, fields, summary)
    })
    .await
}

#[derive(Deserialize)]
struct EmbedBody {
    input: Option<Value>,
    /// `/api/embeddings`' one text.
    prompt: Option<String>,
    truncate: Option<bool>,
    dimensions: Option<usize>,
    options: Option<Map<String, Value>>,
}

async fn embed_texts(
    state: &Arc<AppState>,
    texts: Vec<String>,
    truncate: bool,
    dimensions: Option<usize>,
) -> Result<(Vec<Vec<f32>>, usize)> {
    let n_embd = state.engine.model().n_embd() as usize;
    if dimensions.is_some_and(|d| d == 0 || d > n_embd) {
        return Err(ApiError::invalid(format!("dimensions must be between 1 and {n_embd}"), "dimensions").into());
    }
    let engine = state.engine.clone();
    let config = crate::embed::EmbedConfig::default().pooling(state.config.pooling).truncate(truncate);
    let (counted, vectors) = tokio::task::spawn_blocking(move || {
        let vocab = engine.model().vocab();
        let counted: usize = texts.iter().map(|t| vocab.tokenize(t, true, true).map_or(0, |v| v.len())).sum();
        (counted, engine.embed(&texts, &config))
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", e.to_string()))?;
    let mut vectors = vectors.map_err(|e| ApiError::from_error(e, state.config.retry_after_s))?;
    if let Some(d) = dimensions {
        for v in &mut vectors {
            if d < v.len() {
                v.truncate(d);
                crate::embed::l2_normalize(v);
            }
        }
    }
    Ok((vectors, counted))
}

/// `POST /api/embed`: `input` a text or texts; `truncate` (default true) cuts a text longer than
/// the batch instead of failing.
pub(super) async fn embed(State(state): State<Arc<AppState>>, body: axum::body::Bytes) -> Result<Response> {
    state.metrics.embeddings.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    fields::check(&body, Route::OllamaEmbed)?;
    let req: EmbedBody = parse(&body)?;
    let body = serde_json::to_vec(&req.options.clone().unwrap_or_default()).unwrap_or_default();
    fields::check_against(&body, OPTIONS, "options")?;
    let texts: Vec<String> = match req.input {
        Some(Value::String(s)) => vec![s],
        Some(Value::Array(a)) if !a.is_empty() && a.iter().all(Value::is_string) => {
            a.into_iter().map(|v| v.as_str().unwrap_or_default().to_string()).collect()
        }
        _ => return Err(ApiError::invalid("input must be a text or a non-empty list of texts", "input").into()),
    };
    let started = std::time::Instant::now();
    let (vectors, counted) = embed_texts(&state, texts, req.truncate.unwrap_or(true), req.dimensions).await?;
    Ok(Json(json!({
        "model": state.config.model_name, "embeddings": vectors,
        "total_duration": started.elapsed().as_nanos() as u64, "load_duration": 0, "prompt_eval_count": counted,
    }))
    .into_response())
}

/// `POST /api/embeddings` (Ollama's older route): `prompt`, one `embedding`.
pub(super) async fn embeddings(State(state): State<Arc<AppState>>, body: axum::body::Bytes) -> Result<Response> {
    state.metrics.embeddings.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    fields::check(&body, Route::OllamaEmbeddings)?;
    let req: EmbedBody = parse(&body)?;
    let text =
        req.prompt.filter(|p| !p.is_empty()).ok_or_else(|| ApiError::invalid("prompt must be a text", "prompt"))?;
    let (mut vectors, _) = embed_texts(&state, vec![text], true, None).await?;
    Ok(Json(json!({ "embedding": vectors.pop().unwrap_or_default() })).into_response())
}

/// The served model as Ollama lists it.
fn model_entry(state: &AppState) -> Value {
    let model = state.engine.model();
    let n = model.n_params() as f64;
    let size = if n >= 1e9 { format!("{:.1}B", n / 1e9) } else { format!("{:.0}M", n / 1e6) };
    let arch = model.meta("general.architecture").unwrap_or_default();
    // The description reads "ARCH SIZE QUANT" ("gemma3 270M Q4_K - Medium").
    let description = model.description();
    let quant = description.splitn(3, ' ').nth(2).unwrap_or_default().to_string();
    json!({
        "name": state.config.model_name,
        "model": state.config.model_name,
        "modified_at": timestamp(std::fs::metadata(model.path()).and_then(|m| m.modified()).unwrap_or(UNIX_EPOCH)),
        "size": model.size_bytes(),
        "digest": model.fingerprint(),
        "details": {
            "parent_model": "", "format": "gguf", "family": arch, "families": [arch],
            "parameter_size": size, "quantization_level": quant,
        },
    })
}

/// `GET /api/tags`: the one served model.
pub(super) async fn tags(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({ "models": [model_entry(&state)] }))
}

/// `GET /api/ps`: the one served model, loaded for as long as the server runs.
pub(super) async fn ps(State(state): State<Arc<AppState>>) -> Json<Value> {
    let mut m = model_entry(&state);
    m["expires_at"] = "9999-12-31T23:59:59Z".into();
    m["size_vram"] = state.engine.model().memory().device_bytes().into();
    Json(json!({ "models": [m] }))
}

/// `POST /api/show`: the served model's details, template and main metadata, whatever name
/// is asked.
pub(super) async fn show(State(state): State<Arc<AppState>>, body: axum::body::Bytes) -> Result<Response> {
    fields::check(&body, Route::OllamaShow)?;
    let entry = model_entry(&state);
    let model = state.engine.model();
    let arch = model.meta("general.architecture").unwrap_or_default();
    let mut info = Map::new();
    info.insert("general.architecture".into(), arch.clone().into());
    info.insert("general.parameter_count".into(), model.n_params().into());
    for key in ["context_length", "embedding_length", "block_count"] {
        if let Some(v) = model.meta(&format!("{arch}.{key}")).and_then(|v| v.parse::<u64>().ok()) {
            info.insert(format!("{arch}.{key}"), v.into());
        }
    }
    Ok(Json(json!({
        "modelfile": "", "parameters": "",
        "template": model.chat_template().unwrap_or_default(),
        "details": entry["details"],
        "model_info": info,
        "capabilities": ["completion", "embedding"],
        "modified_at": entry["modified_at"],
    }))
    .into_response())
}

/// `GET /api/version`: this server's version.
pub(super) async fn version() -> Json<Value> {
    Json(json!({ "version": env!("CARGO_PKG_VERSION") }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000000000Z");
        // 2026-12-05T07:30:00Z
        assert_eq!(timestamp(UNIX_EPOCH + Duration::from_secs(1_796_455_800)), "2026-12-05T07:30:00.000000000Z");
        assert_eq!(timestamp(UNIX_EPOCH + Duration::from_secs(951_782_400)), "2000-02-29T00:00:00.000000000Z");
    }
}
