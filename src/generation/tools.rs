//! Tool calls in a model's reply. Each family writes them its own way; [`parse_tool_calls`]
//! knows the formats of the families people run (written from each format's documentation):
//!
//! - Hermes, Qwen 2.5 and 3: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, one
//!   block per call;
//! - Mistral: `[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]`, or the newer
//!   `[TOOL_CALLS]name[ARGS]{...}`;
//! - Llama 3.1 to 3.3: `<|python_tag|>` followed by a call, or a reply that is only
//!   `{"name": ..., "parameters": {...}}` (several separated by `;`);
//! - DeepSeek V3 and R1: `<｜tool▁calls▁begin｜>` blocks of
//!   `<｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME` and the arguments in a json fence;
//! - Command-R: `Action: ```json [{"tool_name": ..., "parameters": {...}}]````;
//! - any model: a reply that is only a JSON call (`{"name", "arguments"}`, a list of them, or
//!   `{"tool_calls": [...]}`), possibly in a ```json fence; this is also what a forced call
//!   (`tool_choice` required or named) is constrained to ([`forced_call_schema`]).

use serde_json::{json, Value};

/// One call the model asked for.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ToolCall {
    /// The function's name.
    pub name: String,
    /// Its arguments as JSON text (as OpenAI's `function.arguments` carries them).
    pub arguments: String,
}

/// Splits a finished reply into its text (what is left around the calls, trimmed) and the
/// tool calls it holds, in order. A reply without a recognised call comes back whole with no
/// calls.
///
/// ```
/// use rocm_llama::tools::parse_tool_calls;
/// let (text, calls) = parse_tool_calls("<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>");
/// assert_eq!(text, "");
/// assert_eq!(calls[0].name, "get_weather");
/// assert_eq!(calls[0].arguments, r#"{"city":"Oslo"}"#);
/// ```
pub fn parse_tool_calls(reply: &str) -> (String, Vec<ToolCall>) {
    for parse in [hermes, mistral, deepseek, command_r, python_tag, whole_json] {
        if let Some((text, calls)) = parse(reply) {
            if !calls.is_empty() {
                return (text.trim().to_string(), calls);
            }
        }
    }
    (reply.to_string(), Vec::new())
}

/// A JSON Schema whose every instance is one call to one of `tools` (OpenAI's list of
/// `{"type": "function", "function": {name, parameters}}`), or to the one named `only`: the
/// grammar a forced call (`tool_choice` required or named) is sampled under. `None` when no
/// tool matches.
pub fn forced_call_schema(tools: &Value, only: Option<&str>) -> Option<Value> {
    let branches: Vec<Value> = tools
        .as_array()?
        .iter()
        .filter_map(|t| {
            let f = t.get("function").unwrap_or(t);
            let name = f.get("name")?.as_str()?;
            if only.is_some_and(|o| o != name) {
                return None;
            }
            let params = f.get("parameters").cloned().unwrap_or_else(|| json!({"type": "object"}));
            Some(json!({
                "type": "object",
                "properties": {"name": {"const": name}, "arguments": params},
                "required": ["name", "arguments"],
            }))
        })
        .collect();
    match branches.len() {
        0 => None,
        1 => branches.into_iter().next(),
        _ => Some(json!({ "anyOf": branches })),
    }
}

/// A call from a JSON object in any of the shapes above: `name` (or `tool_name`, or
/// `function.name`) and `arguments` (or `parameters`), an object or JSON text.
fn call_from(v: &Value) -> Option<ToolCall> {
    let f = v.get("function").filter(|f| f.is_object()).unwrap_or(v);
    let name = f.get("name").or_else(|| f.get("tool_name"))?.as_str()?.to_string();
    let args = f.get("arguments").or_else(|| f.get("parameters")).cloned().unwrap_or_else(|| json!({}));
    let arguments = match args {
        Value::String(s) => s,
        other => other.to_string(),
    };
    Some(ToolCall { name, arguments })
}

/// Calls from a JSON value: one call, a list of calls, or `{"tool_calls": [...]}`.
fn calls_from(v: &Value) -> Option<Vec<ToolCall>> {
    match v {
        Value::Array(a) => a.iter().map(call_from).collect(),
        Value::Object(o) if o.contains_key("tool_calls") => calls_from(&o["tool_calls"]),
        Value::Object(_) => call_from(v).map(|c| vec![c]),
        _ => None,
    }
}

/// The first JSON value at the start of `s` (after spaces) and what follows it.
fn leading_json(s: &str) -> Option<(Value, &str)> {
    let s = s.trim_start();
    let mut it = serde_json::Deserializer::from_str(s).into_iter::<Value>();
    let v = it.next()?.ok()?;
    Some((v, &s[it.byte_offset()..]))
}

/// Strips a ```json (or ```) fence around `s`, if there is one.
fn unfence(s: &str) -> &str {
    let t = s.trim();
    t.strip_prefix("```json").or_else(|| t.strip_prefix("```")).and_then(|r| r.strip_suffix("```")).map_or(t, str::trim)
}

fn hermes(reply: &str) -> Option<(String, Vec<ToolCall>)> {
    const OPEN: &str = "<tool_call>";
    const CLOSE: &str = "</tool_call>";
    if !reply.contains(OPEN) {
        return None;
    }
    let (mut text, mut calls, mut rest) = (String::new(), Vec::new(), reply);
    while let Some(at) = rest.find(OPEN) {
        text.push_str(&rest[..at]);
        let body = &rest[at + OPEN.len()..];
        let (inner, after) = body.split_once(CLOSE).unwrap_or((body, ""));
        calls.extend(calls_from(&serde_json::from_str(unfence(inner)).ok()?)?);
        rest = after;
    }
    text.push_str(rest);
    Some((text, calls))
}

fn mistral(reply: &str) -> Option<(String, Vec<ToolCall>)> {
    const MARK: &str = "[TOOL_CALLS]";
    let at = reply.find(MARK)?;
    let (text, body) = (&reply[..at], &reply[at + MARK.len()..]);
    if let Some((v, _)) = leading_json(body) {
        return Some((text.to_string(), calls_from(&v)?));
    }
    // The newer form: NAME[ARGS]{...}, repeated after further [TOOL_CALLS] marks.
    let mut calls = Vec::new();
    for part in body.split(MARK) {
        let (name, args) = part.split_once("[ARGS]")?;
        let (v, _) = leading_json(args)?;
        calls.push(ToolCall { name: name.trim().to_string(), arguments: v.to_string() });
    }
    Some((text.to_string(), calls))
}

fn deepseek(reply: &str) -> Option<(String, Vec<ToolCall>)> {
    const BEGIN: &str = "<｜tool▁calls▁begin｜>";
    const CALL: &str = "<｜tool▁call▁begin｜>";
    const SEP: &str = "<｜tool▁sep｜>";
    const CALL_END: &str = "<｜tool▁call▁end｜>";
    let at = reply.find(BEGIN)?;
    let mut calls = Vec::new();
    for block in reply[at + BEGIN.len()..].split(CALL).skip(1) {
        let block = block.split(CALL_END).next()?;
        let (_, rest) = block.split_once(SEP)?;
        let (name, args) = rest.split_once('\n').unwrap_or((rest, "{}"));
        let v: Value = serde_json::from_str(unfence(args)).ok()?;
        calls.push(ToolCall { name: name.trim().to_string(), arguments: v.to_string() });
    }
    Some((reply[..at].to_string(), calls))
}

fn command_r(reply: &str) -> Option<(String, Vec<ToolCall>)> {
    let at = reply.find("Action:")?;
    let body = unfence(&reply[at + "Action:".len()..]);
    let v: Value = serde_json::from_str(body).ok()?;
    // Command-R's "directly-answer" tool means a plain answer follows, not a call.
    let calls: Vec<ToolCall> = calls_from(&v)?.into_iter().filter(|c| c.name != "directly-answer").collect();
    Some((reply[..at].to_string(), calls))
}

fn python_tag(reply: &str) -> Option<(String, Vec<ToolCall>)> {
    const TAG: &str = "<|python_tag|>";
    let at = reply.find(TAG)?;
    let calls = semicolon_calls(reply[at + TAG.len()..].trim().trim_end_matches("<|eom_id|>"))?;
    Some((reply[..at].to_string(), calls))
}

/// Calls separated by `;` (Llama 3.x writes several that way).
fn semicolon_calls(s: &str) -> Option<Vec<ToolCall>> {
    let mut calls = Vec::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let (v, after) = leading_json(rest)?;
        calls.extend(calls_from(&v)?);
        rest = after.trim_start().trim_start_matches(';').trim_start();
    }
    Some(calls)
}

fn whole_json(reply: &str) -> Option<(String, Vec<ToolCall>)> {
    let body = unfence(reply);
    if !(body.starts_with('{') || body.starts_with('[')) {
        return None;
    }
    Some((String::new(), semicolon_calls(body)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(name: &str, args: &str) -> Vec<ToolCall> {
        vec![ToolCall { name: name.into(), arguments: args.into() }]
    }

    /// Replies written from each family's documented format.
    #[test]
    fn every_family_format_parses() {
        let cases: &[(&str, &str, Vec<ToolCall>)] = &[
            (
                "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>",
                "Let me check.",
                one("get_weather", r#"{"city":"Oslo"}"#),
            ),
            (
                "<tool_call>{\"name\": \"a\", \"arguments\": {}}</tool_call>\n<tool_call>{\"name\": \"b\", \"arguments\": {\"x\": 1}}</tool_call>",
                "",
                vec![ToolCall { name: "a".into(), arguments: "{}".into() }, ToolCall { name: "b".into(), arguments: r#"{"x":1}"#.into() }],
            ),
            ("[TOOL_CALLS][{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}]", "", one("get_weather", r#"{"city":"Oslo"}"#)),
            ("[TOOL_CALLS]get_weather[ARGS]{\"city\": \"Oslo\"}", "", one("get_weather", r#"{"city":"Oslo"}"#)),
            ("<|python_tag|>{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Oslo\"}}<|eom_id|>", "", one("get_weather", r#"{"city":"Oslo"}"#)),
            ("{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Oslo\"}}", "", one("get_weather", r#"{"city":"Oslo"}"#)),
            (
                "{\"name\": \"a\", \"parameters\": {}}; {\"name\": \"b\", \"parameters\": {\"y\": true}}",
                "",
                vec![ToolCall { name: "a".into(), arguments: "{}".into() }, ToolCall { name: "b".into(), arguments: r#"{"y":true}"#.into() }],
            ),
            (
                "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{\"city\": \"Oslo\"}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>",
                "",
                one("get_weather", r#"{"city":"Oslo"}"#),
            ),
            (
                "Action: ```json\n[{\"tool_name\": \"get_weather\", \"parameters\": {\"city\": \"Oslo\"}}]\n```",
                "",
                one("get_weather", r#"{"city":"Oslo"}"#),
            ),
            ("```json\n{\"name\": \"f\", \"arguments\": \"{\\\"q\\\": 1}\"}\n```", "", one("f", r#"{"q": 1}"#)),
            ("{\"tool_calls\": [{\"function\": {\"name\": \"f\", \"arguments\": {}}}]}", "", one("f", "{}")),
        ];
        for (reply, text, calls) in cases {
            assert_eq!(parse_tool_calls(reply), (text.to_string(), calls.clone()), "{reply}");
        }
    }

    #[test]
    fn plain_replies_and_broken_calls_stay_text() {
        for reply in ["Oslo is rainy.", "{\"city\": \"Oslo\"}", "<tool_call>{not json</tool_call>", "[1, 2]", ""] {
            assert_eq!(parse_tool_calls(reply), (reply.to_string(), vec![]), "{reply}");
        }
    }

    #[test]
    fn a_forced_call_schema_names_the_tools() {
        let tools = json!([
            {"type": "function", "function": {"name": "a", "parameters": {"type": "object", "properties": {"x": {"type": "integer"}}}}},
            {"type": "function", "function": {"name": "b"}},
        ]);
        let any = forced_call_schema(&tools, None).unwrap();
        assert_eq!(any["anyOf"].as_array().unwrap().len(), 2);
        let named = forced_call_schema(&tools, Some("b")).unwrap();
        assert_eq!(named["properties"]["name"]["const"], "b");
        assert!(forced_call_schema(&tools, Some("c")).is_none());
        // Its output parses back as a call.
        let (_, calls) = parse_tool_calls(r#"{"name": "a", "arguments": {"x": 3}}"#);
        assert_eq!(calls, one("a", r#"{"x":3}"#));
    }
}
