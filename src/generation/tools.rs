//! Tool calls in a model's reply. Each family writes them its own way; [`ToolCallStream`]
//! knows the formats of the families people run (written from each format's documentation)
//! and reads them as the reply streams, so a client sees each call's name as soon as it is
//! written and its arguments piece by piece:
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
//! - Functionary v3.1 (and Llama 3.1's custom-tool form): `<function=NAME>{...}</function>`;
//!   Functionary v3.2: `>>>NAME\n{...}` (`>>>all` introduces text), where the reply writes the
//!   `>>>` (the first one is in v3.2's generation prompt, which this reader does not see);
//! - any model: a reply that starts with a JSON call (`{"name", "arguments"}`, a list of them,
//!   or `{"tool_calls": [...]}`), possibly in a ```json fence; this is also what a forced call
//!   (`tool_choice` required or named) is constrained to ([`forced_call_schema`]).
//!
//! [`parse_tool_calls`] reads a finished reply with the same machine, so a reply split into
//! calls whole and streamed gives the same calls.
//!
//! A call counts once its name is written and its arguments have begun (or its object has
//! closed): from then on it is streamed, and if the model's JSON breaks off later the call
//! keeps the arguments written so far (OpenAI's API says the same of its models: arguments
//! are not always valid JSON). Text that only looked like the start of a call (a marker
//! followed by something else) stays text. The arguments are the model's own JSON text with
//! the white space outside strings removed; arguments given as a JSON string are that
//! string's content.

use serde_json::{json, Value};

/// One call the model asked for.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ToolCall {
    /// The function's name.
    pub name: String,
    /// Its arguments as JSON text (as OpenAI's `function.arguments` carries them).
    pub arguments: String,
}

/// What a piece of a streamed reply adds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolEvent {
    /// Text outside any call.
    Content(String),
    /// A call begins: its name is known.
    CallStart {
        /// Which call, counted from 0 over the reply.
        index: usize,
        /// The function's name.
        name: String,
    },
    /// More of a call's arguments (the pieces joined are its arguments).
    Arguments {
        /// Which call.
        index: usize,
        /// The next piece of its JSON text.
        text: String,
    },
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
    let mut s = ToolCallStream::new();
    let mut events = s.push(reply);
    events.extend(s.finish());
    let (text, calls) = gather(events);
    if calls.is_empty() {
        return (reply.to_string(), calls);
    }
    (text.trim().to_string(), calls)
}

/// The text and the calls of a reply's events, joined.
pub fn gather(events: impl IntoIterator<Item = ToolEvent>) -> (String, Vec<ToolCall>) {
    let (mut text, mut calls) = (String::new(), Vec::<ToolCall>::new());
    for e in events {
        match e {
            ToolEvent::Content(t) => text.push_str(&t),
            ToolEvent::CallStart { name, .. } => calls.push(ToolCall { name, arguments: String::new() }),
            ToolEvent::Arguments { index, text: t } => {
                if let Some(c) = calls.get_mut(index) {
                    c.arguments.push_str(&t);
                }
            }
        }
    }
    (text, calls)
}

/// Reads tool calls out of a reply as it streams: text outside calls passes through (held
/// back only while it could be the start of a call), calls come out as their name and their
/// arguments in pieces.
///
/// ```
/// use rocm_llama::tools::{ToolCallStream, ToolEvent};
/// let mut s = ToolCallStream::new();
/// let mut events = s.push("Checking.<tool_c");
/// events.extend(s.push("all>{\"name\": \"get_weather\", \"arguments\": {\"ci"));
/// events.extend(s.push("ty\": \"Oslo\"}}</tool_call>"));
/// events.extend(s.finish());
/// assert_eq!(events, [
///     ToolEvent::Content("Checking.".into()),
///     ToolEvent::CallStart { index: 0, name: "get_weather".into() },
///     ToolEvent::Arguments { index: 0, text: "{\"ci".into() },
///     ToolEvent::Arguments { index: 0, text: "ty\":\"Oslo\"}".into() },
/// ]);
/// ```
#[derive(Debug, Clone, Default)]
pub struct ToolCallStream {
    /// Nothing but white space seen yet: a reply that is a JSON call may still begin.
    started: bool,
    /// Text not yet passed on (it may be the start of a marker).
    held: String,
    /// The call section being read, from its marker on.
    section: Option<(Format, String)>,
    /// The calls of the current section passed on so far, with the arguments sent.
    sent: Vec<String>,
    /// Calls of earlier sections.
    base: usize,
}

impl ToolCallStream {
    /// A reader for one reply.
    pub fn new() -> Self {
        Self::default()
    }

    /// What `piece` adds (possibly nothing while a marker or a call's name is being written).
    pub fn push(&mut self, piece: &str) -> Vec<ToolEvent> {
        match &mut self.section {
            Some((_, text)) => text.push_str(piece),
            None => self.held.push_str(piece),
        }
        let mut out = Vec::new();
        self.run(false, &mut out);
        out
    }

    /// What is still held when the reply ends.
    pub fn finish(&mut self) -> Vec<ToolEvent> {
        let mut out = Vec::new();
        self.run(true, &mut out);
        let rest = std::mem::take(&mut self.held);
        if !rest.is_empty() {
            out.push(ToolEvent::Content(rest));
        }
        out
    }

    fn run(&mut self, at_end: bool, out: &mut Vec<ToolEvent>) {
        loop {
            if let Some((format, text)) = self.section.take() {
                let scan = scan_section(&text, format, at_end);
                self.send(&scan.calls, out);
                match scan.outcome {
                    Outcome::More => {
                        self.section = Some((format, text));
                        return;
                    }
                    Outcome::Done(end) => {
                        self.base += self.sent.len();
                        self.sent.clear();
                        self.held = text[end..].to_string();
                    }
                    Outcome::NotCalls => {
                        let skip = format.marker().len();
                        if skip > 0 {
                            out.push(ToolEvent::Content(text[..skip].to_string()));
                        }
                        self.held = text[skip..].to_string();
                    }
                }
                self.started = true;
                continue;
            }
            if !self.started {
                let t = self.held.trim_start();
                if t.is_empty() || (FENCE.starts_with(t) && !at_end) {
                    return;
                }
                self.started = true;
                if t.starts_with(['{', '[']) || t.starts_with(FENCE) {
                    let lead = self.held.len() - t.len();
                    let text = self.held.split_off(lead);
                    self.take_held(out);
                    self.section = Some((Format::Json, text));
                    continue;
                }
            }
            let first =
                MARKERS.iter().filter_map(|&f| Some((self.held.find(f.marker())?, f))).min_by_key(|(at, _)| *at);
            match first {
                Some((at, format)) => {
                    let text = self.held.split_off(at);
                    self.take_held(out);
                    self.section = Some((format, text));
                }
                None => {
                    let keep = if at_end {
                        0
                    } else {
                        MARKERS.iter().map(|f| partial_suffix(&self.held, f.marker())).max().unwrap_or(0)
                    };
                    let rest = self.held.split_off(self.held.len() - keep);
                    self.take_held(out);
                    self.held = rest;
                    return;
                }
            }
        }
    }

    /// Passes the held text on as content.
    fn take_held(&mut self, out: &mut Vec<ToolEvent>) {
        let t = std::mem::take(&mut self.held);
        if !t.is_empty() {
            out.push(ToolEvent::Content(t));
        }
    }

    /// The events that bring the calls passed on up to `calls`.
    fn send(&mut self, calls: &[ToolCall], out: &mut Vec<ToolEvent>) {
        for (j, c) in calls.iter().enumerate() {
            let index = self.base + j;
            if j == self.sent.len() {
                out.push(ToolEvent::CallStart { index, name: c.name.clone() });
                self.sent.push(String::new());
            }
            let sent = &mut self.sent[j];
            // Arguments only grow; a scan that cut them shorter (JSON that broke off) adds nothing.
            if c.arguments.len() > sent.len() && c.arguments.starts_with(sent.as_str()) {
                out.push(ToolEvent::Arguments { index, text: c.arguments[sent.len()..].to_string() });
                *sent = c.arguments.clone();
            }
        }
    }
}

/// How many bytes at the end of `s` are a proper prefix of `tag` (a tag that may be starting).
pub(crate) fn partial_suffix(s: &str, tag: &str) -> usize {
    (1..tag.len())
        .rev()
        .find(|&n| s.len() >= n && s.is_char_boundary(s.len() - n) && tag.starts_with(&s[s.len() - n..]))
        .unwrap_or(0)
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

const FENCE: &str = "```";

/// The call formats, each known by the marker its section starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Hermes,
    Mistral,
    DeepSeek,
    CommandR,
    PythonTag,
    FunctionTag,
    Functionary,
    /// A reply that starts with JSON (no marker).
    Json,
}

const MARKERS: [Format; 7] = [
    Format::Hermes,
    Format::Mistral,
    Format::DeepSeek,
    Format::CommandR,
    Format::PythonTag,
    Format::FunctionTag,
    Format::Functionary,
];

const DEEPSEEK_CALL: &str = "<｜tool▁call▁begin｜>";
const DEEPSEEK_SEP: &str = "<｜tool▁sep｜>";
const DEEPSEEK_CALL_END: &str = "<｜tool▁call▁end｜>";
const DEEPSEEK_END: &str = "<｜tool▁calls▁end｜>";

impl Format {
    fn marker(self) -> &'static str {
        match self {
            Format::Hermes => "<tool_call>",
            Format::Mistral => "[TOOL_CALLS]",
            Format::DeepSeek => "<｜tool▁calls▁begin｜>",
            Format::CommandR => "Action:",
            Format::PythonTag => "<|python_tag|>",
            Format::FunctionTag => "<function=",
            Format::Functionary => ">>>",
            Format::Json => "",
        }
    }

    /// Reads the section's calls into `calls`; `Ok` where the section ends.
    fn scan(self, c: &mut Cursor<'_>, calls: &mut Vec<CallScan>) -> Scan<()> {
        c.expect(self.marker())?;
        c.ws();
        match self {
            Format::Hermes => {
                fenced(c, |c| calls_value(c, calls))?;
                c.eat("</tool_call>")?;
            }
            Format::Mistral => {
                if c.peek().is_some_and(|ch| ch == '{' || ch == '[') {
                    return calls_value(c, calls);
                }
                // The newer form: NAME[ARGS]{...}, repeated after further marks.
                loop {
                    let name = c.take_while(64, is_name_char)?;
                    c.expect("[ARGS]")?;
                    named_args(c, calls, name)?;
                    c.ws();
                    if !c.eat(self.marker())? {
                        return Ok(());
                    }
                }
            }
            Format::DeepSeek => loop {
                c.ws();
                if c.eat(DEEPSEEK_END)? || !c.eat(DEEPSEEK_CALL)? {
                    return Ok(());
                }
                c.take_until(DEEPSEEK_SEP, 64)?;
                c.expect(DEEPSEEK_SEP)?;
                let name = c.take_while(64, is_name_char)?;
                c.expect("\n")?;
                c.ws();
                fenced(c, |c| named_args(c, calls, name))?;
                c.eat(DEEPSEEK_CALL_END)?;
            },
            Format::CommandR => fenced(c, |c| calls_value(c, calls))?,
            Format::PythonTag => {
                sequence(c, calls)?;
                c.eat("<|eom_id|>")?;
            }
            Format::FunctionTag => {
                let name = c.take_while(64, is_name_char)?;
                c.expect(">")?;
                named_args(c, calls, name)?;
                c.ws();
                c.eat("</function>")?;
            }
            Format::Functionary => {
                let name = c.take_while(64, is_name_char)?;
                c.expect("\n")?;
                if name != "all" {
                    named_args(c, calls, name)?;
                }
            }
            Format::Json => fenced(c, |c| sequence(c, calls))?,
        }
        Ok(())
    }
}

/// Whether `ch` may be in a function's name where a format writes the name bare.
fn is_name_char(ch: char) -> bool {
    ch.is_alphanumeric() || "_-.".contains(ch)
}

/// Why a scan stopped before its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// The text ran out: more may complete it.
    More,
    /// The text at this byte is not what may come here.
    Bad(usize),
}

type Scan<T> = Result<T, Stop>;

/// A call as far as the text has written it.
#[derive(Debug, Default)]
struct CallScan {
    /// Where its JSON starts in the section.
    start: usize,
    name: Option<String>,
    args: Args,
    /// Its object has closed.
    done: bool,
    /// Not a call itself (`{"tool_calls": [...]}` around calls).
    wrapper: bool,
}

#[derive(Debug, Default)]
enum Args {
    #[default]
    None,
    /// JSON text from this byte, to the second if it has ended.
    Raw(usize, Option<usize>),
    /// Given as a (finished) JSON string: its content.
    Text(String),
}

enum Outcome {
    /// The section may go on.
    More,
    /// The section ended at this byte; what follows is text again.
    Done(usize),
    /// No call here: the marker was text.
    NotCalls,
}

struct SectionScan {
    calls: Vec<ToolCall>,
    outcome: Outcome,
}

/// The calls of a section as far as it is written, and whether it has ended.
fn scan_section(text: &str, format: Format, at_end: bool) -> SectionScan {
    let mut c = Cursor { s: text, i: 0, depth: 0 };
    let mut scans = Vec::new();
    let result = format.scan(&mut c, &mut scans);
    let stop_at = match result {
        Ok(()) => c.i,
        Err(Stop::More) => text.len(),
        Err(Stop::Bad(at)) => at,
    };
    // The calls that count, in order, up to the first one not yet decided.
    let mut calls = Vec::new();
    let mut undecided = None;
    for s in &scans {
        let skipped = s.wrapper || (s.done && s.name.is_none()) || s.name.as_deref() == Some("directly-answer");
        if skipped {
            continue;
        }
        let arguments = match &s.args {
            Args::Raw(from, to) => Some(compact(&text[*from..to.unwrap_or(stop_at).max(*from)])),
            Args::Text(t) => Some(t.clone()),
            // A call object without arguments: none (a whole-JSON reply must name them, so a
            // JSON answer with a "name" field stays an answer).
            Args::None if s.done && format != Format::Json => Some("{}".to_string()),
            Args::None if s.done => continue,
            Args::None => None,
        };
        match (&s.name, arguments) {
            (Some(name), Some(arguments)) => calls.push(ToolCall { name: name.clone(), arguments }),
            _ => {
                undecided = Some(s.start);
                break;
            }
        }
    }
    // Command-R's "directly-answer" is a call section that says there is no call.
    // So is Functionary's `>>>all` (text follows).
    let declined = scans.iter().any(|s| s.name.as_deref() == Some("directly-answer"))
        || (format == Format::Functionary && result.is_ok());
    let outcome = match result {
        Ok(()) if calls.is_empty() && !declined => Outcome::NotCalls,
        Ok(()) => Outcome::Done(c.i),
        Err(Stop::More) if !at_end => Outcome::More,
        Err(_) if calls.is_empty() => Outcome::NotCalls,
        Err(_) => Outcome::Done(undecided.unwrap_or(stop_at).min(stop_at)),
    };
    SectionScan { calls, outcome }
}

/// JSON text without the white space outside its strings.
fn compact(raw: &str) -> String {
    let (mut out, mut in_string, mut escaped) = (String::with_capacity(raw.len()), false, false);
    for ch in raw.chars() {
        if in_string {
            if escaped {
                escaped = false;
            } else if ch == '\\' {
                escaped = true;
            } else if ch == '"' {
                in_string = false;
            }
        } else if ch == '"' {
            in_string = true;
        } else if ch.is_whitespace() {
            continue;
        }
        out.push(ch);
    }
    out
}

/// `inner`, in a ```json (or ```) fence or not.
fn fenced<'a>(c: &mut Cursor<'a>, inner: impl FnOnce(&mut Cursor<'a>) -> Scan<()>) -> Scan<()> {
    if !c.eat("```json")? {
        c.eat(FENCE)?;
    }
    c.ws();
    inner(c)?;
    c.ws();
    c.eat(FENCE)?;
    Ok(())
}

/// JSON calls separated by `;` (Llama 3.x writes several that way). A value that holds no
/// call means this is not a call section.
fn sequence(c: &mut Cursor<'_>, calls: &mut Vec<CallScan>) -> Scan<()> {
    loop {
        let at = c.i;
        calls_value(c, calls)?;
        if !calls.iter().any(|s| s.name.is_some() && !s.wrapper && !matches!(s.args, Args::None)) {
            return Err(Stop::Bad(at));
        }
        c.ws();
        if !c.eat(";")? {
            return Ok(());
        }
        c.ws();
    }
}

/// A call named before its arguments (Mistral's newer form, DeepSeek's).
fn named_args(c: &mut Cursor<'_>, calls: &mut Vec<CallScan>, name: String) -> Scan<()> {
    let k = calls.len();
    calls.push(CallScan { start: c.i, name: Some(name), ..CallScan::default() });
    c.ws();
    let from = c.i;
    c.peek().ok_or(Stop::More)?;
    calls[k].args = Args::Raw(from, None);
    c.value()?;
    calls[k].args = Args::Raw(from, Some(c.i));
    calls[k].done = true;
    Ok(())
}

/// One call object or a list of them.
fn calls_value(c: &mut Cursor<'_>, calls: &mut Vec<CallScan>) -> Scan<()> {
    match c.peek() {
        None => Err(Stop::More),
        Some('{') => call_object(c, calls),
        Some('[') => call_list(c, calls),
        Some(_) => Err(Stop::Bad(c.i)),
    }
}

fn call_list(c: &mut Cursor<'_>, calls: &mut Vec<CallScan>) -> Scan<()> {
    c.expect("[")?;
    c.ws();
    if c.eat("]")? {
        return Ok(());
    }
    loop {
        c.ws();
        if c.peek() != Some('{') {
            return Err(c.peek().map_or(Stop::More, |_| Stop::Bad(c.i)));
        }
        call_object(c, calls)?;
        c.ws();
        let at = c.i;
        match c.bump() {
            Some(',') => continue,
            Some(']') => return Ok(()),
            Some(_) => return Err(Stop::Bad(at)),
            None => return Err(Stop::More),
        }
    }
}

/// A call object: `name` (or `tool_name`) and `arguments` (or `parameters`), maybe inside
/// `function`; or `{"tool_calls": [...]}` around calls.
fn call_object(c: &mut Cursor<'_>, calls: &mut Vec<CallScan>) -> Scan<()> {
    let k = calls.len();
    calls.push(CallScan { start: c.i, ..CallScan::default() });
    call_fields(c, calls, k)?;
    calls[k].done = true;
    Ok(())
}

fn call_fields(c: &mut Cursor<'_>, calls: &mut Vec<CallScan>, k: usize) -> Scan<()> {
    c.enter()?;
    let r = call_fields_in(c, calls, k);
    c.depth -= 1;
    r
}

fn call_fields_in(c: &mut Cursor<'_>, calls: &mut Vec<CallScan>, k: usize) -> Scan<()> {
    c.expect("{")?;
    c.ws();
    if c.eat("}")? {
        return Ok(());
    }
    loop {
        c.ws();
        let key = c.string()?;
        c.ws();
        c.expect(":")?;
        c.ws();
        let next = c.peek().ok_or(Stop::More)?;
        match (key.as_str(), next) {
            ("name" | "tool_name", '"') => {
                let name = c.string()?;
                calls[k].name.get_or_insert(name);
            }
            // The first arguments count (a second key could only contradict what was sent).
            ("arguments" | "parameters", _) if !matches!(calls[k].args, Args::None) => c.value()?,
            ("arguments" | "parameters", '"') => {
                let text = c.string()?;
                calls[k].args = Args::Text(text);
            }
            ("arguments" | "parameters", _) => {
                let from = c.i;
                calls[k].args = Args::Raw(from, None);
                c.value()?;
                calls[k].args = Args::Raw(from, Some(c.i));
            }
            ("function", '{') => call_fields(c, calls, k)?,
            ("tool_calls", '[') => {
                calls[k].wrapper = true;
                call_list(c, calls)?;
            }
            _ => c.value()?,
        }
        c.ws();
        let at = c.i;
        match c.bump() {
            Some(',') => continue,
            Some('}') => return Ok(()),
            Some(_) => return Err(Stop::Bad(at)),
            None => return Err(Stop::More),
        }
    }
}

/// A place in a section's text.
struct Cursor<'a> {
    s: &'a str,
    i: usize,
    /// Containers open around `i`, bounded so hostile nesting cannot exhaust the stack.
    depth: usize,
}

/// How deeply a call's JSON may nest.
const MAX_DEPTH: usize = 64;

impl<'a> Cursor<'a> {
    fn rest(&self) -> &'a str {
        &self.s[self.i..]
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let ch = self.peek()?;
        self.i += ch.len_utf8();
        Some(ch)
    }

    fn ws(&mut self) {
        let rest = self.rest();
        self.i += rest.len() - rest.trim_start().len();
    }

    /// Takes `lit` if the text goes on with it; `More` while the text ends inside it.
    fn eat(&mut self, lit: &str) -> Scan<bool> {
        let rest = self.rest();
        if rest.starts_with(lit) {
            self.i += lit.len();
            Ok(true)
        } else if lit.starts_with(rest) {
            Err(Stop::More)
        } else {
            Ok(false)
        }
    }

    /// Takes `lit`; where the text leaves it, `Bad` at the first byte that differs, so that
    /// everything before that byte reads the same however the text arrived.
    fn expect(&mut self, lit: &str) -> Scan<()> {
        if self.eat(lit)? {
            return Ok(());
        }
        let same: usize =
            self.rest().chars().zip(lit.chars()).take_while(|(a, b)| a == b).map(|(a, _)| a.len_utf8()).sum();
        Err(Stop::Bad(self.i + same))
    }

    /// The text up to `end` (not taken), at most `limit` bytes of it.
    fn take_until(&mut self, end: &str, limit: usize) -> Scan<&'a str> {
        let rest = self.rest();
        match rest.find(end) {
            Some(at) if at <= limit => {
                self.i += at;
                Ok(&rest[..at])
            }
            Some(_) => Err(Stop::Bad(self.i)),
            // No match can start within the limit any more.
            None if rest.len() >= limit + end.len() => Err(Stop::Bad(self.i)),
            None => Err(Stop::More),
        }
    }

    /// A run of characters that `ok` accepts, at most `limit` bytes, not at the text's end.
    fn take_while(&mut self, limit: usize, ok: impl Fn(char) -> bool) -> Scan<String> {
        let rest = self.rest();
        let n = rest.find(|ch: char| !ok(ch)).ok_or(if rest.len() > limit { Stop::Bad(self.i) } else { Stop::More })?;
        if n == 0 || n > limit {
            return Err(Stop::Bad(self.i));
        }
        self.i += n;
        Ok(rest[..n].to_string())
    }

    /// A JSON string, decoded.
    fn string(&mut self) -> Scan<String> {
        let from = self.i;
        match self.bump() {
            Some('"') => {}
            Some(_) => return Err(Stop::Bad(from)),
            None => return Err(Stop::More),
        }
        let bytes = self.s.as_bytes();
        let mut j = self.i;
        loop {
            match bytes.get(j) {
                None => return Err(Stop::More),
                Some(b'"') => break,
                Some(b'\\') => {
                    // An escape: a known letter, or u and four hex digits.
                    let len = match bytes.get(j + 1) {
                        None => return Err(Stop::More),
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => 2,
                        Some(b'u') => 6,
                        Some(_) => return Err(Stop::Bad(j + 1)),
                    };
                    for k in j + 2..j + len {
                        match bytes.get(k) {
                            None => return Err(Stop::More),
                            Some(b) if b.is_ascii_hexdigit() => {}
                            Some(_) => return Err(Stop::Bad(k)),
                        }
                    }
                    j += len;
                }
                Some(&b) if b < 0x20 => return Err(Stop::Bad(j)),
                Some(_) => j += 1,
            }
        }
        // Only a lone surrogate (\ud800 without its pair) still fails here.
        let decoded = serde_json::from_str::<String>(&self.s[from..=j]).map_err(|_| Stop::Bad(from))?;
        self.i = j + 1;
        Ok(decoded)
    }

    /// Any JSON value, skipped.
    fn value(&mut self) -> Scan<()> {
        self.ws();
        match self.peek() {
            None => Err(Stop::More),
            Some('"') => self.string().map(drop),
            Some(open @ ('{' | '[')) => {
                self.enter()?;
                let r = self.container(open);
                self.depth -= 1;
                r
            }
            Some('t') => self.expect("true"),
            Some('f') => self.expect("false"),
            Some('n') => self.expect("null"),
            Some(ch) if ch == '-' || ch.is_ascii_digit() => {
                let rest = self.rest();
                match rest.find(|ch: char| !(ch.is_ascii_digit() || "+-.eE".contains(ch))) {
                    Some(n) => {
                        self.i += n;
                        Ok(())
                    }
                    None => Err(Stop::More),
                }
            }
            Some(_) => Err(Stop::Bad(self.i)),
        }
    }

    fn enter(&mut self) -> Scan<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(Stop::Bad(self.i));
        }
        Ok(())
    }

    /// An object or a list, from its opening bracket.
    fn container(&mut self, open: char) -> Scan<()> {
        let close = if open == '{' { '}' } else { ']' };
        self.bump();
        self.ws();
        if self.eat(&close.to_string())? {
            return Ok(());
        }
        loop {
            self.ws();
            if open == '{' {
                self.string()?;
                self.ws();
                self.expect(":")?;
            }
            self.value()?;
            self.ws();
            let at = self.i;
            match self.bump() {
                Some(',') => continue,
                Some(ch) if ch == close => return Ok(()),
                Some(_) => return Err(Stop::Bad(at)),
                None => return Err(Stop::More),
            }
        }
    }
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
            ("<function=get_weather>{\"city\": \"Oslo\"}</function>", "", one("get_weather", r#"{"city":"Oslo"}"#)),
            (">>>all\nLet me look.>>>get_weather\n{\"city\": \"Oslo\"}", "Let me look.", one("get_weather", r#"{"city":"Oslo"}"#)),
        ];
        for (reply, text, calls) in cases {
            assert_eq!(parse_tool_calls(reply), (text.to_string(), calls.clone()), "{reply}");
        }
    }

    /// Any cut of a reply into three pieces gives the same text and calls as the whole.
    #[test]
    fn every_cut_gives_the_same_calls() {
        let replies = [
            "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>\nDone.",
            "[TOOL_CALLS]a[ARGS]{\"x\": [1, 2]}[TOOL_CALLS]b[ARGS]{}",
            "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>f\n```json\n{\"s\": \"a } b\"}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>",
            "{\"name\": \"a\", \"parameters\": {\"q\": \"\\u00e9\"}}; {\"name\": \"b\", \"parameters\": {}}",
            "Action: a plan. Action: ```json\n[{\"tool_name\": \"f\", \"parameters\": {\"n\": -1.5e3}}]\n```",
            "<tool_call>{not json</tool_call> and [TOOL_CALLS] neither",
            ">>>all\nFirst.>>>f\n{\"a\": {\"b\": [true, null]}}<function=g>{}</function>",
        ];
        for reply in replies {
            let whole = parse_tool_calls(reply);
            for a in (0..=reply.len()).filter(|&a| reply.is_char_boundary(a)) {
                for b in (a..=reply.len()).filter(|&b| reply.is_char_boundary(b)).step_by(3) {
                    let mut s = ToolCallStream::new();
                    let mut events = s.push(&reply[..a]);
                    events.extend(s.push(&reply[a..b]));
                    events.extend(s.push(&reply[b..]));
                    events.extend(s.finish());
                    let (text, calls) = gather(events);
                    let got = if calls.is_empty() { (text, calls) } else { (text.trim().to_string(), calls) };
                    assert_eq!(got, whole, "{reply:?} cut at {a}, {b}");
                }
            }
        }
    }

    /// A call is passed on while it is written: its name once known, its arguments in pieces,
    /// and the text before it without waiting for the call.
    #[test]
    fn calls_stream_as_they_are_written() {
        let reply =
            "Sure.<tool_call>{\"name\": \"write\", \"arguments\": {\"text\": \"one two three four\"}}</tool_call>";
        let mut s = ToolCallStream::new();
        let mut seen = Vec::new();
        for (at, ch) in reply.char_indices() {
            for e in s.push(&ch.to_string()) {
                seen.push((at, e));
            }
        }
        let name_at = reply.find("\"write\"").unwrap() + "\"write\"".len();
        let args_end = reply.find("}}").unwrap();
        assert!(matches!(&seen[0], (at, ToolEvent::Content(t)) if t == "S" && *at == 0), "{seen:?}");
        let start = seen.iter().find(|(_, e)| matches!(e, ToolEvent::CallStart { .. })).unwrap();
        assert!(start.0 < name_at + 20, "the name came at {}", start.0);
        let pieces: Vec<_> =
            seen.iter().filter(|(at, e)| matches!(e, ToolEvent::Arguments { .. }) && *at < args_end).collect();
        assert!(pieces.len() > 10, "arguments before the call closed: {pieces:?}");
        let (_, calls) = gather(seen.into_iter().map(|(_, e)| e).chain(s.finish()));
        assert_eq!(calls, one("write", r#"{"text":"one two three four"}"#));
    }

    /// Nesting, length and broken JSON cost bounded work and end as text or a call, never a
    /// crash.
    #[test]
    fn hostile_replies_are_bounded() {
        let deep = format!("<tool_call>{{\"name\": \"f\", \"arguments\": {}", "[".repeat(100_000));
        let (_, calls) = parse_tool_calls(&deep);
        assert_eq!(calls[0].name, "f");
        let wide = format!("{{\"name\": \"f\", \"arguments\": {{\"a\": \"{}\"}}}}", "x".repeat(1 << 20));
        assert_eq!(parse_tool_calls(&wide).1[0].arguments.len(), (1 << 20) + 8);
        for reply in [
            "<tool_call>",
            "[TOOL_CALLS]",
            "<|python_tag|>{",
            "```",
            "{\"name\": \"f\"",
            "[TOOL_CALLS]x[ARGS]",
            "\u{ff5c}",
        ] {
            let (text, calls) = parse_tool_calls(reply);
            assert!(calls.is_empty() && text == reply, "{reply:?}");
        }
    }

    /// Replies put together at random from pieces of every format (markers, JSON, prose,
    /// broken bits): read whole and read a character at a time give the same text and calls,
    /// and nothing panics.
    #[test]
    fn random_replies_read_the_same_whole_and_streamed() {
        let pieces = [
            "<tool_call>",
            "</tool_call>",
            "[TOOL_CALLS]",
            "[ARGS]",
            "<|python_tag|>",
            "Action:",
            "```json",
            "```",
            "<｜tool▁calls▁begin｜>",
            "<｜tool▁call▁begin｜>",
            "<｜tool▁sep｜>",
            "<｜tool▁call▁end｜>",
            "<function=",
            ">>>",
            "</function>",
            "{",
            "}",
            "[",
            "]",
            "\"name\"",
            "\"arguments\"",
            ":",
            ",",
            ";",
            "\"f\"",
            "\"a\\\"b\"",
            "\n",
            " ",
            "12",
            "true",
            "nu",
            "é",
            "text",
            "get_w",
            "<",
            ">",
            "\\u00",
        ];
        let calls = [
            "<tool_call>{\"name\": \"f\", \"arguments\": {\"x\": 1}}</tool_call>",
            "[TOOL_CALLS]get_weather[ARGS]{\"a\": \"b c\"}",
            "[TOOL_CALLS][{\"name\": \"f\", \"arguments\": {}}, {\"name\": \"g\", \"arguments\": \"{}\"}]",
            "<|python_tag|>{\"name\": \"g\", \"parameters\": {}}; {\"name\": \"h\", \"parameters\": {}}",
            "<function=g>{\"k\": \"v\"}</function>",
            ">>>f\n{\"a\": 2}",
            "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>f\n```json\n{}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>",
            "Action: ```json\n[{\"tool_name\": \"h\", \"parameters\": {\"b\": null}}]\n```",
            "{\"tool_calls\": [{\"function\": {\"name\": \"f\", \"arguments\": {\"q\": [1, 2]}}}]}",
        ];
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut with_calls = 0;
        for _ in 0..20_000 {
            let n = 1 + next() % 24;
            let mut reply = String::new();
            for _ in 0..n {
                let r = next();
                if r % 3 == 0 {
                    // A whole call in one of the formats, sometimes cut short.
                    let call = calls[(r / 3 % calls.len() as u64) as usize];
                    let cut = if r % 2 == 0 { call.len() } else { (r >> 32) as usize % call.len() };
                    reply.push_str(&call[..call.floor_char_boundary(cut)]);
                } else {
                    reply.push_str(pieces[(r / 3 % pieces.len() as u64) as usize]);
                }
            }
            let whole = parse_tool_calls(&reply);
            let mut s = ToolCallStream::new();
            let mut events = Vec::new();
            for ch in reply.chars() {
                events.extend(s.push(&ch.to_string()));
            }
            events.extend(s.finish());
            let (text, calls) = gather(events);
            with_calls += usize::from(!calls.is_empty());
            let streamed = if calls.is_empty() { (text, calls) } else { (text.trim().to_string(), calls) };
            assert_eq!(streamed, whole, "{reply:?}");
        }
        assert!(with_calls > 2000, "only {with_calls} replies held calls");
    }

    #[test]
    fn plain_replies_and_broken_calls_stay_text() {
        for reply in [
            "Oslo is rainy.",
            "{\"city\": \"Oslo\"}",
            "{\"name\": \"Oslo\", \"population\": 700000}",
            "<tool_call>{not json</tool_call>",
            "[1, 2]",
            "```python\nprint(1)\n```",
            "Action: none needed.",
            "a >>> b, x >>>\n",
            "",
        ] {
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
