//! `POST /v1/chat/completions`: a conversation through the chat template, each reply read as
//! it streams by a [`ReplyReader`]: reasoning apart (`reasoning_content`), tool calls out
//! (`tool_calls`, each call's name as soon as it is written and its arguments in pieces).
//! Ollama's `/api/chat` reads its replies with the same reader.

use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::openai::{self, ApiError, ChatRequest};
use super::{choice_options, choices, collect_all, fields, now, options, parse, sse, sum_usage, AppState, Piece};
use crate::chat::{ChatMessage, ChatOptions, ChatTemplate};
use crate::generate::Summary;
use crate::logprobs::TokenLogprobs;
use crate::reasoning::{Part, ReasoningSplitter};
use crate::tools::{ToolCall, ToolCallStream, ToolEvent};

/// What a piece of a reply adds, read: reasoning, answer text and tool-call events.
#[derive(Debug, Default)]
pub(super) struct ReplyDelta {
    pub(super) reasoning: String,
    pub(super) content: String,
    /// Only [`ToolEvent::CallStart`] and [`ToolEvent::Arguments`].
    pub(super) calls: Vec<ToolEvent>,
}

impl ReplyDelta {
    fn is_empty(&self) -> bool {
        self.reasoning.is_empty() && self.content.is_empty() && self.calls.is_empty()
    }
}

/// One reply read as it streams: the reasoning apart when `split` is given (`Some(open)`:
/// whether the prompt already opened it), tool calls read when tools were given.
pub(super) struct ReplyReader {
    reasoning: Option<ReasoningSplitter>,
    tools: Option<ToolCallStream>,
    calls: usize,
}

impl ReplyReader {
    pub(super) fn new(split: Option<bool>, tools: bool) -> Self {
        ReplyReader { reasoning: split.map(ReasoningSplitter::new), tools: tools.then(ToolCallStream::new), calls: 0 }
    }

    pub(super) fn push(&mut self, text: &str) -> ReplyDelta {
        let parts = match &mut self.reasoning {
            Some(s) => s.push(text),
            None => vec![Part::Content(text.to_string())],
        };
        self.read(parts, false)
    }

    pub(super) fn finish(&mut self) -> ReplyDelta {
        let parts = self.reasoning.as_mut().map(ReasoningSplitter::finish).unwrap_or_default();
        self.read(parts, true)
    }

    /// How many tool calls the reply has begun so far.
    pub(super) fn calls(&self) -> usize {
        self.calls
    }

    fn read(&mut self, parts: Vec<Part>, end: bool) -> ReplyDelta {
        let mut d = ReplyDelta::default();
        let mut events = Vec::new();
        for p in parts {
            match (p, &mut self.tools) {
                (Part::Reasoning(t), _) => d.reasoning.push_str(&t),
                (Part::Content(t), Some(s)) => events.extend(s.push(&t)),
                (Part::Content(t), None) => d.content.push_str(&t),
            }
        }
        if let (true, Some(s)) = (end, &mut self.tools) {
            events.extend(s.finish());
        }
        for e in events {
            match e {
                ToolEvent::Content(t) => d.content.push_str(&t),
                ToolEvent::CallStart { .. } => {
                    self.calls += 1;
                    d.calls.push(e);
                }
                ToolEvent::Arguments { .. } => d.calls.push(e),
            }
        }
        d
    }

    /// A whole reply read: its reasoning, its text (trimmed when it holds calls) and its calls.
    pub(super) fn whole(text: &str, split: Option<bool>, tools: bool) -> (String, String, Vec<ToolCall>) {
        let mut r = ReplyReader::new(split, tools);
        let mut d = r.push(text);
        let end = r.finish();
        d.reasoning.push_str(&end.reasoning);
        d.content.push_str(&end.content);
        d.calls.extend(end.calls);
        let (_, calls) = crate::tools::gather(d.calls);
        let content = if calls.is_empty() { d.content } else { d.content.trim().to_string() };
        (d.reasoning, content, calls)
    }
}

/// A read piece as an OpenAI chat delta: `reasoning_content`, `content` and `tool_calls` (a
/// call's first entry carries its id, type and name; its arguments follow in pieces).
fn openai_delta(d: &ReplyDelta, call_id: &dyn Fn(usize) -> String) -> Value {
    let mut out = serde_json::Map::new();
    if !d.reasoning.is_empty() {
        out.insert("reasoning_content".into(), d.reasoning.clone().into());
    }
    if !d.content.is_empty() {
        out.insert("content".into(), d.content.clone().into());
    }
    let mut entries: Vec<Value> = Vec::new();
    for e in &d.calls {
        match e {
            ToolEvent::CallStart { index, name } => entries.push(json!({
                "index": index, "id": call_id(*index), "type": "function",
                "function": {"name": name, "arguments": ""},
            })),
            ToolEvent::Arguments { index, text } => match entries.last_mut() {
                Some(last) if last["index"] == json!(index) => {
                    let joined = format!("{}{text}", last["function"]["arguments"].as_str().unwrap_or_default());
                    last["function"]["arguments"] = joined.into();
                }
                _ => entries.push(json!({"index": index, "function": {"arguments": text}})),
            },
            ToolEvent::Content(_) => {}
        }
    }
    if !entries.is_empty() {
        out.insert("tool_calls".into(), entries.into());
    }
    Value::Object(out)
}

/// A whole reply as an OpenAI assistant message, and whether it holds calls.
fn openai_message(text: &str, split: Option<bool>, tools: bool, call_id: &dyn Fn(usize) -> String) -> (Value, bool) {
    let (reasoning, content, calls) = ReplyReader::whole(text, split, tools);
    let mut m = json!({"role": "assistant", "content": content});
    if !reasoning.is_empty() {
        m["reasoning_content"] = reasoning.into();
    }
    if calls.is_empty() {
        return (m, false);
    }
    if m["content"] == "" {
        m["content"] = Value::Null;
    }
    m["tool_calls"] = calls
        .iter()
        .enumerate()
        .map(|(k, c)| json!({"id": call_id(k), "type": "function", "function": {"name": c.name, "arguments": c.arguments}}))
        .collect();
    (m, true)
}

/// Whether the conversation's generation prompt already opens the reasoning (a template that
/// ends it with `<think>`, as DeepSeek R1's and Qwen 3's do): then the reply starts inside it.
/// Rendered only when the template mentions `<think>` at all.
pub(super) async fn thinking_opened(
    state: &Arc<AppState>,
    template: &ChatTemplate,
    messages: &[ChatMessage],
    chat: &ChatOptions,
) -> bool {
    let source = match template {
        ChatTemplate::Model => state.engine.model().chat_template(),
        ChatTemplate::Jinja(s) => Some(s.clone()),
        _ => None,
    };
    if !source.is_some_and(|s| s.contains("<think>")) {
        return false;
    }
    let (state, template, messages, chat) = (state.clone(), template.clone(), messages.to_vec(), chat.clone());
    tokio::task::spawn_blocking(move || {
        template.prompt_with(state.engine.model(), &messages, &chat).is_ok_and(|p| p.trim_end().ends_with("<think>"))
    })
    .await
    .unwrap_or(false)
}

/// OpenAI's `tool_choice` against `tools`: the tools the template renders, and the JSON schema a
/// forced call is sampled under. `none` renders no tools (so no call), `auto` (the default)
/// lets the model choose, `required` forces one call to any tool, and
/// `{"type": "function", "function": {"name": N}}` forces a call to N.
fn tool_choice(tools: Option<Value>, choice: Option<&Value>) -> Result<(Option<Value>, Option<Value>), ApiError> {
    let bad = |m: String| ApiError::invalid(m, "tool_choice");
    let forced = |tools: &Option<Value>, only: Option<&str>| {
        let t = tools.as_ref().ok_or_else(|| bad("a forced tool call needs tools".into()))?;
        crate::tools::forced_call_schema(t, only)
            .ok_or_else(|| bad(format!("no tool {}", only.map_or("at all".into(), |n| format!("named {n:?}")))))
    };
    match choice {
        None | Some(Value::Null) => Ok((tools, None)),
        Some(Value::String(s)) if s == "auto" => Ok((tools, None)),
        Some(Value::String(s)) if s == "none" => Ok((None, None)),
        Some(Value::String(s)) if s == "required" => {
            let schema = forced(&tools, None)?;
            Ok((tools, Some(schema)))
        }
        Some(v) => match v.pointer("/function/name").and_then(Value::as_str) {
            Some(name) => {
                let schema = forced(&tools, Some(name))?;
                Ok((tools, Some(schema)))
            }
            None => Err(bad(format!("expected \"none\", \"auto\", \"required\" or a named function, not {v}"))),
        },
    }
}

/// llama-server's `reasoning_format`: `auto` (the default) and `deepseek` put `<think>`
/// reasoning in `reasoning_content`, `none` leaves it in the content.
fn splits_reasoning(format: Option<&str>) -> Result<bool, ApiError> {
    match format {
        None | Some("auto" | "deepseek") => Ok(true),
        Some("none") => Ok(false),
        Some(other) => Err(ApiError::invalid(
            format!("reasoning_format must be \"auto\", \"deepseek\" or \"none\", not {other:?}"),
            "reasoning_format",
        )),
    }
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

pub(super) async fn chat_completions(
    State(state): State<Arc<AppState>>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    state.metrics.chat.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    fields::check(&body, fields::Route::Chat)?;
    let req: ChatRequest = parse(&body)?;
    if req.messages.is_empty() {
        return Err(ApiError::invalid("messages must not be empty", "messages"));
    }
    let messages = req.messages.into_iter().map(openai::chat_message).collect::<Result<Vec<_>, _>>()?;
    let top = if req.logprobs { req.top_logprobs.unwrap_or(0).min(20) as usize } else { 0 };
    let mut opts = options(
        &req.common,
        if req.logprobs { top.max(1) } else { 0 },
        state.engine.model().vocab(),
        &state.lora,
        state.config.speculation.as_ref(),
    )?;
    let (tools, forced) = tool_choice(req.tools, req.tool_choice.as_ref())?;
    if let Some(schema) = forced {
        if opts.json_schema.is_some() || opts.sampling.grammar.is_some() {
            return Err(ApiError::invalid(
                "a forced tool call (tool_choice) cannot be combined with response_format or a grammar",
                "tool_choice",
            ));
        }
        opts = opts.json_schema(schema);
    }
    let mut chat = ChatOptions::default().tools(tools);
    chat.kwargs = state.config.chat_template_kwargs.clone();
    chat.kwargs.extend(req.chat_template_kwargs.unwrap_or_default());
    let read_calls = chat.tool_list().is_some();
    let split = splits_reasoning(req.reasoning_format.as_deref())?;
    let template = state.config.chat_template.clone();
    let open = split && thinking_opened(&state, &template, &messages, &chat).await;
    let split = split.then_some(open);
    opts = opts.chat(chat);
    let retry = state.config.retry_after_s;
    let engine = state.engine.clone();
    let n = choices(&req.common)?;
    let streams = state.start(n, move |i| engine.chat(&messages, &template, &choice_options(&opts, i))).await?;
    let id = state.id("chatcmpl");
    let model = state.config.model_name.clone();
    let created = now();
    let call_ids = {
        let id = id.clone();
        move |i: usize| {
            let id = id.clone();
            move |k: usize| format!("call_{id}_{i}_{k}")
        }
    };
    if req.common.stream {
        let include_usage = req.common.stream_options.as_ref().is_some_and(|o| o.include_usage);
        let chunk = move |choices: Value, usage: Option<Value>| {
            let mut c = json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model, "choices": choices});
            if let Some(u) = usage {
                c["usage"] = u;
            }
            c
        };
        let readers: Vec<Mutex<ReplyReader>> =
            (0..n).map(|_| Mutex::new(ReplyReader::new(split, read_calls))).collect();
        return Ok(sse(state.clone(), streams, include_usage, n, move |index, piece| {
            let mut reader = readers[index].lock().unwrap_or_else(PoisonError::into_inner);
            match piece {
                Piece::Start => Some(chunk(
                    json!([{"index": index, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]),
                    None,
                )),
                Piece::Text(text, lp) => {
                    let d = reader.push(&text);
                    if d.is_empty() && lp.is_none() {
                        return None;
                    }
                    let mut choice =
                        json!({"index": index, "delta": openai_delta(&d, &call_ids(index)), "finish_reason": null});
                    if let Some(lp) = lp {
                        choice["logprobs"] = json!({"content": chat_logprobs(&[lp], top)});
                    }
                    Some(chunk(json!([choice]), None))
                }
                Piece::End(summary) => {
                    let d = reader.finish();
                    let finish =
                        if reader.calls() > 0 { "tool_calls" } else { openai::finish_reason(&summary.stop_reason) };
                    let mut c = chunk(
                        json!([{"index": index, "delta": openai_delta(&d, &call_ids(index)), "finish_reason": finish}]),
                        None,
                    );
                    c["timings"] = openai::timings(summary);
                    Some(c)
                }
                Piece::Usage(usage) => Some(chunk(json!([]), Some(usage))),
            }
        }));
    }
    let out = collect_all(&state, streams, retry).await?;
    let summaries: Vec<(usize, &Summary)> =
        out.iter().enumerate().filter_map(|(i, c)| Some((i, c.summary.as_ref()?))).collect();
    let usage = sum_usage(&summaries, n);
    let timings = summaries.first().map(|(_, s)| openai::timings(s)).unwrap_or(Value::Null);
    let choices: Vec<Value> = out
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let (message, has_calls) = openai_message(&c.text, split, read_calls, &call_ids(i));
            let finish = c.summary.as_ref().map(|s| openai::finish_reason(&s.stop_reason));
            json!({
                "index": i,
                "message": message,
                "finish_reason": if has_calls { Some("tool_calls") } else { finish },
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A reply with reasoning and a call, read piece by piece, gives the same message as read
    /// whole, and its deltas join to it.
    #[test]
    fn streamed_deltas_join_to_the_whole_message() {
        let reply = "<think>The user wants weather.</think>\nOn it.<tool_call>{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}</tool_call>";
        let id = |k: usize| format!("call_{k}");
        let (whole, has_calls) = openai_message(reply, Some(false), true, &id);
        assert!(has_calls);
        let mut r = ReplyReader::new(Some(false), true);
        let mut deltas: Vec<Value> = reply.chars().map(|ch| openai_delta(&r.push(&ch.to_string()), &id)).collect();
        deltas.push(openai_delta(&r.finish(), &id));
        let (mut reasoning, mut content, mut args) = (String::new(), String::new(), String::new());
        let mut names = Vec::new();
        for d in &deltas {
            reasoning.push_str(d["reasoning_content"].as_str().unwrap_or_default());
            content.push_str(d["content"].as_str().unwrap_or_default());
            for c in d["tool_calls"].as_array().into_iter().flatten() {
                if let Some(n) = c["function"]["name"].as_str() {
                    names.push((c["id"].clone(), n.to_string()));
                }
                args.push_str(c["function"]["arguments"].as_str().unwrap_or_default());
            }
        }
        assert_eq!(reasoning, whole["reasoning_content"]);
        assert_eq!(content.trim(), whole["content"]);
        assert_eq!(names, [(whole["tool_calls"][0]["id"].clone(), "get_weather".to_string())]);
        assert_eq!(args, whole["tool_calls"][0]["function"]["arguments"]);
        assert_eq!(r.calls(), 1);
    }
}
