//! Rendering a model's own chat template with a Jinja engine (minijinja), the way the
//! Hugging Face tokenizers render it: blocks trimmed (`trim_blocks`, `lstrip_blocks`),
//! Python's string and dict methods (`.strip()`, `.items()`, `.get()`), `raise_exception`,
//! `strftime_now`, and `tojson` as Python's `json.dumps` writes it.

use std::time::{SystemTime, UNIX_EPOCH};

use minijinja::value::{Kwargs, Value};
use minijinja::{Environment, ErrorKind, UndefinedBehavior};

use super::{ChatMessage, ChatOptions};
use crate::error::{Error, Result};

/// Work a template may do in one render (minijinja's fuel: about one unit per instruction).
/// A conversation of thousands of messages under a large template uses well under a tenth of
/// it; a template that loops without end stops here with an error.
const FUEL: u64 = 50_000_000;
/// The longest prompt a template may render (bytes).
const MAX_OUTPUT: usize = 64 << 20;

/// The tokens a template sees besides the conversation.
#[derive(Debug, Clone, Default)]
pub(crate) struct Specials {
    pub(crate) bos: String,
    pub(crate) eos: String,
}

/// Renders `source` (named `name` in errors) for `messages`.
pub(crate) fn render(
    name: &str,
    source: &str,
    messages: &[ChatMessage],
    options: &ChatOptions,
    specials: &Specials,
) -> Result<String> {
    render_with(name, source, messages, options, specials, true)
}

/// [`render`], with every value the template makes bounded or (`bounded` false, for tests
/// that compare the two) as minijinja alone renders it.
fn render_with(
    name: &str,
    source: &str,
    messages: &[ChatMessage],
    options: &ChatOptions,
    specials: &Specials,
    bounded: bool,
) -> Result<String> {
    let env = if bounded { environment() } else { unbounded_environment() };
    let fail = |e: minijinja::Error| template_error(name, &e);
    // Every `~`, `+` and `*` bounded (see `bounded`): lines stay where they were, so errors
    // still name the template's own line.
    let source = without_generation_tags(source);
    let source = if bounded { super::bounded::rewrite(&source) } else { source.into_owned() };
    let template = env.template_from_named_str(name, &source).map_err(fail)?;
    let mut context = serde_json::Map::new();
    context.insert("messages".into(), serde_json::to_value(messages).map_err(|e| Error::ChatTemplate(e.to_string()))?);
    context.insert("add_generation_prompt".into(), options.add_generation_prompt.into());
    context.insert("bos_token".into(), specials.bos.clone().into());
    context.insert("eos_token".into(), specials.eos.clone().into());
    if let Some(tools) = options.tool_list() {
        context.insert("tools".into(), tools.clone());
    }
    for (key, value) in &options.kwargs {
        if matches!(key.as_str(), "messages" | "add_generation_prompt" | "bos_token" | "eos_token" | "tools") {
            return Err(Error::ChatTemplate(format!(
                "template variable {key:?} is set from the conversation and options, not from kwargs"
            )));
        }
        context.insert(key.clone(), value.clone());
    }
    let out = template.render(Value::from_serialize(&context)).map_err(fail)?;
    if out.len() > MAX_OUTPUT {
        return Err(Error::ChatTemplate(format!("{name} rendered {} bytes, more than a prompt can be", out.len())));
    }
    Ok(out)
}

/// Checks that `source` parses, without rendering it.
pub(crate) fn check(name: &str, source: &str) -> Result<()> {
    environment()
        .template_from_named_str(name, &without_generation_tags(source))
        .map(|_| ())
        .map_err(|e| template_error(name, &e))
}

fn environment() -> Environment<'static> {
    let mut env = unbounded_environment();
    // Every value a template makes is bounded (see `bounded`).
    env.add_function(super::bounded::OP, super::bounded::op);
    env.add_filter("join", super::bounded::join);
    env.add_filter("replace", super::bounded::replace);
    env.add_filter("indent", super::bounded::indent);
    env.add_filter("format", super::bounded::format);
    env.set_unknown_method_callback(super::bounded::method);
    env
}

/// The environment without the bounds on values.
fn unbounded_environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    // As in Jinja2 (what the templates were written against): a variable the template does
    // not get prints as nothing and iterates as empty; its attributes, arithmetic with it and
    // calling it are errors that name the line.
    env.set_undefined_behavior(UndefinedBehavior::Lenient);
    env.set_fuel(Some(FUEL));
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", raise_exception);
    env.add_function("strftime_now", strftime_now);
    env.add_filter("tojson", tojson);
    env.add_filter("length", length);
    env.add_filter("count", length);
    env
}

/// `value | length`: as Jinja2, an undefined value has length 0 (`tools|length` where no
/// tools were given); strings count characters.
fn length(value: Value) -> std::result::Result<Value, minijinja::Error> {
    if value.is_undefined() {
        return Ok(Value::from(0));
    }
    if let Some(s) = value.as_str() {
        return Ok(Value::from(s.chars().count()));
    }
    value.len().map(Value::from).ok_or_else(|| {
        minijinja::Error::new(ErrorKind::InvalidOperation, format!("cannot take the length of a {}", value.kind()))
    })
}

/// Transformers' `{% generation %}` ... `{% endgeneration %}` only marks the assistant's
/// text for training masks; rendering keeps what is inside. minijinja has no such tag, so it
/// becomes an always-true block (whitespace control kept).
fn without_generation_tags(source: &str) -> std::borrow::Cow<'_, str> {
    if !source.contains("generation") {
        return source.into();
    }
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find("{%") {
        // The closing `%}` comes after the opening `{%` (in `{%}` they share the `%`).
        let Some(len) = rest[start + 2..].find("%}").map(|i| i + 2) else { break };
        let tag = &rest[start..start + len + 2];
        let inner = tag[2..len].trim_matches(|c: char| c == '-' || c == '+' || c.is_whitespace());
        out.push_str(&rest[..start]);
        // The keyword is all the tag holds besides its delimiters, which stay as written.
        match inner {
            "generation" => out.push_str(&tag.replacen("generation", "if true", 1)),
            "endgeneration" => out.push_str(&tag.replacen("endgeneration", "endif", 1)),
            _ => out.push_str(tag),
        }
        rest = &rest[start + len + 2..];
    }
    out.push_str(rest);
    out.into()
}

/// `raise_exception(message)`: the template refuses the conversation.
fn raise_exception(message: String) -> std::result::Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, format!("the template raised: {message}")))
}

/// `strftime_now(format)`: the current UTC time in a C `strftime` format.
fn strftime_now(format: String) -> std::result::Result<Value, minijinja::Error> {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    strftime(&format, secs).map(Value::from).map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, e))
}

/// `value | tojson(indent=None)`: JSON as Python's `json.dumps(value, ensure_ascii=False)`
/// writes it (the form templates were written against): `", "` and `": "` between items,
/// keys in their order, non-ASCII kept.
fn tojson(value: Value, kwargs: Kwargs) -> std::result::Result<Value, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    // `sort_keys`, `ensure_ascii` and `separators` are accepted as Python's defaults only.
    let _: Option<bool> = kwargs.get("ensure_ascii")?;
    kwargs.assert_all_used()?;
    let json = serde_json::to_value(&value)
        .map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))?;
    let mut out = String::new();
    write_json(&json, indent, 0, &mut out);
    Ok(Value::from_safe_string(out))
}

fn write_json(v: &serde_json::Value, indent: Option<usize>, depth: usize, out: &mut String) {
    use serde_json::Value as J;
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
    };
    let (item_sep, key_sep) = if indent.is_some() { (",", ": ") } else { (", ", ": ") };
    match v {
        J::Array(items) if !items.is_empty() => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                write_json(item, indent, depth + 1, out);
            }
            newline(out, depth);
            out.push(']');
        }
        J::Object(map) if !map.is_empty() => {
            out.push('{');
            for (i, (k, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                write_json_string(k, out);
                out.push_str(key_sep);
                write_json(item, indent, depth + 1, out);
            }
            newline(out, depth);
            out.push('}');
        }
        J::Array(_) => out.push_str("[]"),
        J::Object(_) => out.push_str("{}"),
        J::String(s) => write_json_string(s, out),
        other => out.push_str(&other.to_string()),
    }
}

fn write_json_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A template error as the caller should see it: which template, which line, what.
fn template_error(name: &str, e: &minijinja::Error) -> Error {
    let what = match e.kind() {
        ErrorKind::OutOfFuel => "it ran too long (a loop without end?)".to_string(),
        ErrorKind::UndefinedError => {
            format!("an unknown variable or attribute ({})", e.detail().unwrap_or("undefined"))
        }
        _ => e.detail().map(str::to_string).unwrap_or_else(|| e.kind().to_string()),
    };
    match e.line() {
        Some(line) => Error::ChatTemplate(format!("{name}, line {line}: {what}")),
        None => Error::ChatTemplate(format!("{name}: {what}")),
    }
}

/// Formats `secs` since the Unix epoch (UTC) with the `strftime` directives chat templates use.
fn strftime(format: &str, secs: u64) -> std::result::Result<String, String> {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = ["Thursday", "Friday", "Saturday", "Sunday", "Monday", "Tuesday", "Wednesday"];
    let days = secs / 86_400;
    let (year, month, day) = civil_from_days(days as i64);
    let weekday = DAYS[(days % 7) as usize];
    let (h, m, s) = ((secs % 86_400) / 3600, (secs % 3600) / 60, secs % 60);
    let month_name = MONTHS[(month - 1) as usize];
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", year.rem_euclid(100))),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('-') => match chars.next() {
                Some('d') => out.push_str(&day.to_string()),
                Some('m') => out.push_str(&month.to_string()),
                other => return Err(format!("strftime_now: unsupported directive %-{}", other.unwrap_or(' '))),
            },
            Some('B') => out.push_str(month_name),
            Some('b') => out.push_str(&month_name[..3]),
            Some('A') => out.push_str(weekday),
            Some('a') => out.push_str(&weekday[..3]),
            Some('H') => out.push_str(&format!("{h:02}")),
            Some('M') => out.push_str(&format!("{m:02}")),
            Some('S') => out.push_str(&format!("{s:02}")),
            Some('%') => out.push('%'),
            other => return Err(format!("strftime_now: unsupported directive %{}", other.unwrap_or(' '))),
        }
    }
    Ok(out)
}

/// (year, month 1..=12, day 1..=31) of a day count since 1970-01-01 (the proleptic Gregorian
/// calendar; Howard Hinnant's days-to-civil algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_format_as_strftime_does() {
        // 2026-11-29 12:34:56 UTC was a Sunday.
        let t = 1_795_955_696;
        assert_eq!(strftime("%d %b %Y", t).unwrap(), "29 Nov 2026");
        assert_eq!(strftime("%Y-%m-%d %H:%M:%S", t).unwrap(), "2026-11-29 12:34:56");
        assert_eq!(strftime("%A %B %-d, %y %%", t).unwrap(), "Sunday November 29, 26 %");
        assert_eq!(strftime("%d %b %Y", 0).unwrap(), "01 Jan 1970");
        assert_eq!(strftime("%Y-%m-%d", 951_782_400).unwrap(), "2000-02-29");
        assert!(strftime("%Q", t).is_err());
    }

    #[test]
    fn generation_tags_become_plain_blocks() {
        assert_eq!(without_generation_tags("a{% generation %}b{% endgeneration %}c"), "a{% if true %}b{% endif %}c");
        assert_eq!(
            without_generation_tags("{%- generation -%}x{%- endgeneration %}{% if y %}{% endif %}"),
            "{%- if true -%}x{%- endif %}{% if y %}{% endif %}"
        );
        assert_eq!(without_generation_tags("{{ 'generation' }}"), "{{ 'generation' }}");
        // Found by tests/fuzz.rs: an opening and closing delimiter that share the `%`.
        assert_eq!(without_generation_tags("generation {%}"), "generation {%}");
        assert!(crate::chat::render_jinja("{%} generation", &[], &Default::default(), "", "").is_err());
    }

    #[test]
    fn tojson_writes_what_pythons_json_dumps_writes() {
        let v =
            Value::from_serialize(serde_json::json!({"name": "f", "n": [1, 2.5, true, null], "s": "é\"<\n", "e": {}}));
        let mut out = String::new();
        write_json(&serde_json::to_value(&v).unwrap(), None, 0, &mut out);
        assert_eq!(out, r#"{"name": "f", "n": [1, 2.5, true, null], "s": "é\"<\n", "e": {}}"#);
        out.clear();
        write_json(&serde_json::json!({"a": [1], "b": {}}), Some(2), 0, &mut out);
        assert_eq!(out, "{\n  \"a\": [\n    1\n  ],\n  \"b\": {}\n}");
    }

    /// Issue 26: `~` doubled a 100 MB string until the process died for memory; every value
    /// a template makes is now bounded, and the growing filters and methods with it.
    #[test]
    fn values_that_grow_past_the_bound_are_errors() {
        let render =
            |src: &str| render("t", src, &[ChatMessage::user("hi")], &ChatOptions::default(), &Specials::default());
        let doubling =
            "{% set s = 'x' * 100000000 %}{% for i in range(8) %}{% set s = s ~ s %}{% endfor %}{{ s|length }}";
        let err = render(doubling).unwrap_err().to_string();
        assert!(err.contains("more than the") && err.contains("line 1"), "{err}");
        for src in [
            "{% set s = 'x' * 40000000 %}{{ (s + s)|length }}",
            "{% set s = 'x' * 40000000 %}{{ [s, s]|join|length }}",
            "{% set s = 'x' * 40000000 %}{{ s|replace('x', 'yy')|length }}",
            "{% set s = 'x' * 40000000 %}{{ s.replace('x', 'yy')|length }}",
            "{% set s = 'x\n' * 20000000 %}{{ s|indent(8)|length }}",
            "{{ '%999999999999s'|format('a')|length }}",
            "{% set l = [1] * 100000000 %}{{ l|length }}",
        ] {
            assert!(render(src).is_err_and(|e| e.to_string().contains("more than the")), "{src}");
        }
        // Below the bound, as before.
        assert_eq!(
            render("{{ ('ab' ~ 'c') * 2 }}{{ [1, 2] + [3] }}{{ 'a-b'|replace('-', '+') }}").unwrap(),
            "abcabc[1, 2, 3]a+b"
        );
    }

    /// The bounds change no output: every published template (the test data the other tests
    /// use, when present) renders the same bytes, or fails the same way, with and without them.
    #[test]
    fn bounded_rendering_is_byte_for_byte_the_same_for_published_templates() {
        let Some(dir) = std::env::var_os("ROCM_LLAMA_TEST_TEMPLATES") else {
            assert!(std::env::var_os("CI").is_none(), "CI sets ROCM_LLAMA_TEST_TEMPLATES (scripts/test/run.sh)");
            eprintln!("SKIPPED: ROCM_LLAMA_TEST_TEMPLATES is not set (scripts/test/templates.sh)");
            return;
        };
        let dir = std::path::PathBuf::from(dir);
        let mut files: Vec<std::path::PathBuf> = Vec::new();
        for d in [dir.clone(), dir.join("axolotl")] {
            if let Ok(entries) = std::fs::read_dir(&d) {
                files.extend(
                    entries.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "jinja")),
                );
            }
        }
        assert!(files.len() > 50, "{} templates in {}", files.len(), dir.display());
        let messages = [
            ChatMessage::system("Be brief."),
            ChatMessage::user("What is 2+2?"),
            ChatMessage::assistant("4."),
            ChatMessage::user("And 3+3?"),
        ];
        let specials = Specials { bos: "<s>".into(), eos: "</s>".into() };
        for options in [ChatOptions::default(), ChatOptions::default().kwarg("enable_thinking", false)] {
            for f in &files {
                let source = std::fs::read_to_string(f).unwrap();
                let plain = render_with("t", &source, &messages, &options, &specials, false).map_err(|e| e.to_string());
                let bounded =
                    render_with("t", &source, &messages, &options, &specials, true).map_err(|e| e.to_string());
                assert_eq!(plain, bounded, "{}", f.display());
            }
        }
    }
}
