//! JSON Schema to a GBNF grammar, so that sampling can only produce JSON the schema accepts
//! ([`GenerateOptions::json_schema`](crate::GenerateOptions::json_schema)).
//!
//! Supported: `type` (one or a list) of object, array, string, integer, number, boolean and
//! null; `properties` and `required` (properties in their order, optional ones may be left
//! out; no other properties are written); `items`, `prefixItems`, `minItems`, `maxItems`;
//! `enum` and `const`; `minLength` and `maxLength`; string `format` date, time, date-time,
//! uuid, email and ipv4; integer `minimum`, `maximum` and their exclusive forms; number bounds
//! when they are integers and the minimum is at least 0; `anyOf` (and `oneOf` whose branches
//! are of different types); local `$ref`s into `$defs` or `definitions` (recursion too);
//! `{}` or `true` for any JSON value. Anything else (`pattern`, `not`, `allOf`, remote `$ref`s,
//! unknown formats, other bounds) is an [`Error::JsonSchema`] naming where it is, never
//! silently dropped.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::Value;

use crate::error::{Error, Result};

/// Integers without bounds are written with at most this many digits (JSON numbers past 2^53
/// lose precision in most readers anyway).
const MAX_DIGITS: u32 = 15;
/// Fraction digits of a bounded number.
const FRACTION_DIGITS: u32 = 6;
/// Schemas nested deeper than this are refused (the converter recurses once per level).
pub const MAX_DEPTH: usize = 64;
/// The largest `minItems`, `maxItems`, `minLength` or `maxLength` accepted: llama.cpp's grammar
/// writes out one rule per repetition, refuses a minimum above 2,000 and reads a larger
/// maximum as none at all (which would let more through than the schema allows).
pub const MAX_REPEAT: u64 = 2000;
/// The largest grammar a schema may become, in bytes.
pub const MAX_GRAMMAR_BYTES: usize = 1 << 20;

/// The GBNF grammar (root rule `root`) that generates exactly JSON texts valid under `schema`
/// (within the supported subset above).
///
/// ```
/// let schema = serde_json::json!({
///     "type": "object",
///     "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer", "minimum": 0, "maximum": 150}},
///     "required": ["name"]
/// });
/// let grammar = rocm_llama::schema::to_grammar(&schema)?;
/// assert!(grammar.starts_with("root ::="));
/// # Ok::<(), rocm_llama::Error>(())
/// ```
///
/// Every sub-schema becomes a rule of its own that its parent names, so the grammar grows in
/// proportion to the schema (an array's items appear twice in its rule, which doubled the text
/// per level of nesting when they were written out in place). Schemas nested deeper than
/// [`MAX_DEPTH`], counts above [`MAX_REPEAT`] and grammars over [`MAX_GRAMMAR_BYTES`] are
/// errors.
pub fn to_grammar(schema: &Value) -> Result<String> {
    let mut c = Converter {
        root: schema,
        rules: BTreeMap::new(),
        refs: BTreeMap::new(),
        named: BTreeMap::new(),
        depth: 0,
        bytes: 0,
    };
    let body = c.visit(schema, "#")?;
    let mut out = format!("root ::= {body}\n");
    for (name, rule) in &c.rules {
        let _ = writeln!(out, "{name} ::= {rule}");
    }
    out.push_str(COMMON_RULES);
    if out.len() > MAX_GRAMMAR_BYTES {
        return Err(Error::JsonSchema(format!(
            "the schema makes a grammar of {} bytes, more than the {MAX_GRAMMAR_BYTES} accepted",
            out.len()
        )));
    }
    Ok(out)
}

/// Rules every grammar may use.
const COMMON_RULES: &str = r#"ws ::= " "?
json-char ::= [^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4})
json-string ::= "\"" json-char* "\""
json-number ::= "-"? ("0" | [1-9] [0-9]{0,15}) ("." [0-9]{1,15})? ([eE] [-+]? [0-9]{1,3})?
json-value ::= json-object | json-array | json-string | json-number | "true" | "false" | "null"
json-object ::= "{" ws (json-string ":" ws json-value ("," ws json-string ":" ws json-value)*)? "}"
json-array ::= "[" ws (json-value ("," ws json-value)*)? "]"
"#;

struct Converter<'s> {
    root: &'s Value,
    /// Named rules made so far (for `$ref`s).
    rules: BTreeMap<String, String>,
    /// `$ref` target -> rule name.
    refs: BTreeMap<String, String>,
    /// Rule body -> the name it was given (one rule for equal sub-schemas).
    named: BTreeMap<String, String>,
    /// How deep `visit` is.
    depth: usize,
    /// Bytes of rules made so far.
    bytes: usize,
}

fn unsupported(at: &str, what: impl std::fmt::Display) -> Error {
    Error::JsonSchema(format!("at {at}: {what}"))
}

/// A GBNF string literal for `text`.
fn literal(text: &str) -> String {
    let mut s = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            '\r' => s.push_str("\\r"),
            '\t' => s.push_str("\\t"),
            c => s.push(c),
        }
    }
    s.push('"');
    s
}

/// The JSON text of `v` as a GBNF literal (for `enum` and `const`).
fn json_literal(v: &Value) -> String {
    literal(&v.to_string())
}

impl<'s> Converter<'s> {
    /// The rule for `schema`, by name unless it is a single word.
    fn visit(&mut self, schema: &'s Value, at: &str) -> Result<String> {
        if self.depth >= MAX_DEPTH {
            return Err(unsupported(at, format!("schemas nested deeper than {MAX_DEPTH} levels are not supported")));
        }
        self.depth += 1;
        let body = self.visit_in_place(schema, at);
        self.depth -= 1;
        self.name(body?)
    }

    /// `body` as a named rule (the same name for the same body), or as it is when it is one
    /// word (a rule name or a literal without spaces), which is no longer than a name.
    fn name(&mut self, body: String) -> Result<String> {
        if !body.contains(' ') {
            return Ok(body);
        }
        if let Some(name) = self.named.get(&body) {
            return Ok(name.clone());
        }
        self.bytes += body.len();
        if self.bytes > MAX_GRAMMAR_BYTES {
            return Err(Error::JsonSchema(format!(
                "the schema makes a grammar of more than the {MAX_GRAMMAR_BYTES} bytes accepted"
            )));
        }
        let name = format!("s-{}", self.named.len());
        self.named.insert(body.clone(), name.clone());
        self.rules.insert(name.clone(), body);
        Ok(name)
    }

    /// The rule for `schema` written out (its parts by name).
    fn visit_in_place(&mut self, schema: &'s Value, at: &str) -> Result<String> {
        let obj = match schema {
            Value::Bool(true) => return Ok("json-value".into()),
            Value::Bool(false) => return Err(unsupported(at, "`false` accepts nothing")),
            Value::Object(o) => o,
            _ => return Err(unsupported(at, "a schema must be an object or a boolean")),
        };
        for key in ["pattern", "not", "allOf", "if", "patternProperties", "dependentSchemas", "contains"] {
            if obj.contains_key(key) {
                return Err(unsupported(at, format!("`{key}` is not supported")));
            }
        }
        if let Some(r) = obj.get("$ref") {
            return self.reference(r, at);
        }
        if let Some(c) = obj.get("const") {
            return Ok(json_literal(c));
        }
        if let Some(e) = obj.get("enum") {
            let values = e.as_array().ok_or_else(|| unsupported(at, "`enum` must be a list"))?;
            if values.is_empty() {
                return Err(unsupported(at, "an empty `enum` accepts nothing"));
            }
            return Ok(format!("({})", values.iter().map(json_literal).collect::<Vec<_>>().join(" | ")));
        }
        for key in ["anyOf", "oneOf"] {
            if let Some(branches) = obj.get(key) {
                let list = branches.as_array().ok_or_else(|| unsupported(at, format!("`{key}` must be a list")))?;
                if key == "oneOf" {
                    let types: Vec<Option<&str>> = list.iter().map(|b| b.get("type").and_then(Value::as_str)).collect();
                    let distinct = types.iter().all(Option::is_some)
                        && types.iter().collect::<std::collections::BTreeSet<_>>().len() == types.len();
                    if !distinct {
                        return Err(unsupported(
                            at,
                            "`oneOf` is supported only when its branches have different types",
                        ));
                    }
                }
                let alts = list
                    .iter()
                    .enumerate()
                    .map(|(i, b)| self.visit(b, &format!("{at}/{key}/{i}")))
                    .collect::<Result<Vec<_>>>()?;
                return Ok(format!("({})", alts.join(" | ")));
            }
        }
        match obj.get("type") {
            Some(Value::String(t)) => self.typed(obj, t, at),
            Some(Value::Array(types)) => {
                let alts = types
                    .iter()
                    .map(|t| {
                        let t = t.as_str().ok_or_else(|| unsupported(at, "`type` lists names"))?;
                        self.typed(obj, t, at)
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok(format!("({})", alts.join(" | ")))
            }
            Some(_) => Err(unsupported(at, "`type` must be a name or a list of names")),
            None if obj.contains_key("properties") => self.typed(obj, "object", at),
            None if obj.contains_key("items") || obj.contains_key("prefixItems") => self.typed(obj, "array", at),
            None => Ok("json-value".into()),
        }
    }

    fn reference(&mut self, r: &Value, at: &str) -> Result<String> {
        let target = r.as_str().ok_or_else(|| unsupported(at, "`$ref` must be a string"))?;
        if let Some(name) = self.refs.get(target) {
            return Ok(name.clone());
        }
        let path = target
            .strip_prefix("#/")
            .ok_or_else(|| unsupported(at, format!("only local `$ref`s (#/...) are supported, not {target:?}")))?;
        let mut node = self.root;
        for part in path.split('/') {
            let part = part.replace("~1", "/").replace("~0", "~");
            node = node.get(&part).ok_or_else(|| unsupported(at, format!("`$ref` {target:?} points nowhere")))?;
        }
        let name = format!("ref-{}", self.refs.len());
        self.refs.insert(target.to_string(), name.clone());
        // The name exists before the body is made, so a recursive schema refers to itself.
        let body = self.visit(node, target)?;
        self.rules.insert(name.clone(), body);
        Ok(name)
    }

    fn typed(&mut self, obj: &'s serde_json::Map<String, Value>, t: &str, at: &str) -> Result<String> {
        match t {
            "object" => self.object(obj, at),
            "array" => self.array(obj, at),
            "string" => string(obj, at),
            "integer" => integer(obj, at),
            "number" => number(obj, at),
            "boolean" => Ok(r#"("true" | "false")"#.into()),
            "null" => Ok(r#""null""#.into()),
            other => Err(unsupported(at, format!("unknown type {other:?}"))),
        }
    }

    fn object(&mut self, obj: &'s serde_json::Map<String, Value>, at: &str) -> Result<String> {
        let props = match obj.get("properties") {
            Some(Value::Object(p)) => Some(p),
            Some(_) => return Err(unsupported(at, "`properties` must be an object")),
            None => None,
        };
        let required: Vec<&str> = match obj.get("required") {
            Some(Value::Array(r)) => r.iter().filter_map(Value::as_str).collect(),
            Some(_) => return Err(unsupported(at, "`required` must be a list")),
            None => Vec::new(),
        };
        for r in &required {
            if !props.is_some_and(|p| p.contains_key(*r)) {
                return Err(unsupported(at, format!("required property {r:?} has no schema in `properties`")));
            }
        }
        let Some(props) = props.filter(|p| !p.is_empty()) else {
            // No properties described: any object when others are allowed, else `{}`.
            return Ok(match obj.get("additionalProperties") {
                Some(Value::Bool(false)) => r#""{" ws "}""#.into(),
                _ => "json-object".into(),
            });
        };
        let mut req = Vec::new();
        let mut opt = Vec::new();
        for (key, sub) in props {
            let value = self.visit(sub, &format!("{at}/properties/{key}"))?;
            let pair = format!("{} \":\" ws {value}", literal(&serde_json::to_string(key).unwrap_or_default()));
            if required.contains(&key.as_str()) {
                req.push(pair);
            } else {
                opt.push(pair);
            }
        }
        // Required properties in order, then each optional one or not, in order.
        let body = if req.is_empty() {
            optional_list(self, &opt)?
        } else {
            let mut s = req.join(" \",\" ws ");
            for p in &opt {
                let _ = write!(s, " (\",\" ws {p})?");
            }
            s
        };
        Ok(format!("\"{{\" ws {body} \"}}\""))
    }

    fn array(&mut self, obj: &'s serde_json::Map<String, Value>, at: &str) -> Result<String> {
        let min = count(obj, "minItems", at)?.unwrap_or(0);
        let max = count(obj, "maxItems", at)?;
        if let Some(max) = max {
            if max < min {
                return Err(unsupported(at, format!("maxItems {max} is below minItems {min}")));
            }
        }
        if let Some(Value::Array(prefix)) = obj.get("prefixItems") {
            // A tuple: these items in order (further items are not written).
            let items = prefix
                .iter()
                .enumerate()
                .map(|(i, s)| self.visit(s, &format!("{at}/prefixItems/{i}")))
                .collect::<Result<Vec<_>>>()?;
            if (items.len() as u64) < min || max.is_some_and(|m| (items.len() as u64) > m) {
                return Err(unsupported(at, "prefixItems must fit minItems..maxItems"));
            }
            return Ok(format!("\"[\" ws {} \"]\"", items.join(" \",\" ws ")));
        }
        let item = match obj.get("items") {
            Some(s) => self.visit(s, &format!("{at}/items"))?,
            None => "json-value".into(),
        };
        let more = |n: Option<u64>| match n {
            Some(n) => format!("{{0,{n}}}"),
            None => "*".into(),
        };
        let body = if min == 0 {
            match max {
                Some(0) => String::new(),
                m => format!("({item} (\",\" ws {item}){})?", more(m.map(|m| m - 1))),
            }
        } else {
            let rest = match max {
                Some(m) => format!("{{{},{}}}", min - 1, m - 1),
                None => format!("{{{},}}", min - 1),
            };
            format!("{item} (\",\" ws {item}){rest}")
        };
        Ok(format!("\"[\" ws {body} \"]\""))
    }
}

/// Every way of writing some of `props` in order, comma-separated (none included), in rules
/// that grow in proportion to the number of properties: `tail-i` is "then, optionally, property
/// i, then tail-(i+1)", and the list starts with whichever property comes first.
fn optional_list(c: &mut Converter<'_>, props: &[String]) -> Result<String> {
    let Some(last) = props.last() else { return Ok(String::new()) };
    // tail after the last property: nothing.
    let mut tail = String::new();
    let mut starts = vec![last.clone()];
    for i in (1..props.len()).rev() {
        let body = format!("(\",\" ws {})? {tail}", props[i]);
        tail = c.name(body.trim_end().to_string())?;
        starts.push(format!("{} {tail}", props[i - 1]));
    }
    starts.reverse();
    Ok(format!("({})?", starts.join(" | ")))
}

fn count(obj: &serde_json::Map<String, Value>, key: &str, at: &str) -> Result<Option<u64>> {
    match obj.get(key) {
        None => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if n <= MAX_REPEAT => Ok(Some(n)),
            Some(n) => Err(unsupported(at, format!("`{key}` {n} is above the {MAX_REPEAT} supported"))),
            None => Err(unsupported(at, format!("`{key}` must be a non-negative integer"))),
        },
    }
}

fn string(obj: &serde_json::Map<String, Value>, at: &str) -> Result<String> {
    if let Some(format) = obj.get("format") {
        let f = format.as_str().ok_or_else(|| unsupported(at, "`format` must be a string"))?;
        if obj.contains_key("minLength") || obj.contains_key("maxLength") {
            return Err(unsupported(at, "lengths together with a format are not supported"));
        }
        let body = match f {
            "date" => DATE.to_string(),
            "time" => TIME.to_string(),
            "date-time" => format!("{DATE} \"T\" {TIME}"),
            "uuid" => r#"[0-9a-f]{8} "-" [0-9a-f]{4} "-" [0-9a-f]{4} "-" [0-9a-f]{4} "-" [0-9a-f]{12}"#.into(),
            "email" => r#"[a-z0-9] [a-z0-9._]{0,30} "@" [a-z0-9] [a-z0-9-]{0,30} ("." [a-z]{2,6}){1,2}"#.into(),
            "ipv4" => {
                let octet = int_range(0, 255);
                format!("{octet} \".\" {octet} \".\" {octet} \".\" {octet}")
            }
            other => return Err(unsupported(at, format!("string format {other:?} is not supported"))),
        };
        return Ok(format!("\"\\\"\" {body} \"\\\"\""));
    }
    let min = count(obj, "minLength", at)?.unwrap_or(0);
    let max = count(obj, "maxLength", at)?;
    if max.is_some_and(|m| m < min) {
        return Err(unsupported(at, "maxLength is below minLength"));
    }
    Ok(match (min, max) {
        (0, None) => "json-string".into(),
        (min, None) => format!("\"\\\"\" json-char{{{min},}} \"\\\"\""),
        (min, Some(max)) => format!("\"\\\"\" json-char{{{min},{max}}} \"\\\"\""),
    })
}

/// RFC 3339 full-date: months with their days (29 February left out, so every date written is
/// valid in every year).
const DATE: &str = r#"[0-9]{4} "-" (("01" | "03" | "05" | "07" | "08" | "10" | "12") "-" ("0" [1-9] | [12] [0-9] | "3" [01]) | ("04" | "06" | "09" | "11") "-" ("0" [1-9] | [12] [0-9] | "30") | "02" "-" ("0" [1-9] | "1" [0-9] | "2" [0-8]))"#;
/// RFC 3339 full-time, with its offset.
const TIME: &str = r#"([01] [0-9] | "2" [0-3]) ":" [0-5] [0-9] ":" [0-5] [0-9] ("." [0-9]{1,6})? ("Z" | [-+] ([01] [0-9] | "2" [0-3]) ":" [0-5] [0-9])"#;

/// An integer bound: `minimum`/`maximum` and their exclusive forms, as whole numbers.
fn int_bounds(obj: &serde_json::Map<String, Value>, at: &str) -> Result<(i64, i64)> {
    let limit = 10i64.pow(MAX_DIGITS) - 1;
    let get = |key: &str| -> Result<Option<f64>> {
        match obj.get(key) {
            None => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| unsupported(at, format!("`{key}` must be a number"))),
        }
    };
    let mut lo = -limit;
    let mut hi = limit;
    if let Some(m) = get("minimum")? {
        lo = lo.max(m.ceil() as i64);
    }
    if let Some(m) = get("exclusiveMinimum")? {
        lo = lo.max(m.floor() as i64 + 1);
    }
    if let Some(m) = get("maximum")? {
        hi = hi.min(m.floor() as i64);
    }
    if let Some(m) = get("exclusiveMaximum")? {
        hi = hi.min(m.ceil() as i64 - 1);
    }
    if lo > hi {
        return Err(unsupported(at, "the bounds leave no integer"));
    }
    Ok((lo, hi))
}

fn integer(obj: &serde_json::Map<String, Value>, at: &str) -> Result<String> {
    let (lo, hi) = int_bounds(obj, at)?;
    Ok(int_range(lo, hi))
}

fn number(obj: &serde_json::Map<String, Value>, at: &str) -> Result<String> {
    let bounded = ["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"].iter().any(|k| obj.contains_key(*k));
    if !bounded {
        return Ok("json-number".into());
    }
    let whole = |key: &str| obj.get(key).and_then(Value::as_f64).is_none_or(|v| v.fract() == 0.0);
    if !["minimum", "maximum"].iter().all(|k| whole(k))
        || obj.contains_key("exclusiveMinimum")
        || obj.contains_key("exclusiveMaximum")
        || obj.get("minimum").and_then(Value::as_f64).is_none_or(|m| m < 0.0)
    {
        return Err(unsupported(at, "number bounds are supported as whole inclusive minimum >= 0 and maximum"));
    }
    let (lo, hi) = int_bounds(obj, at)?;
    // Below the maximum any fraction; at the maximum only zeros.
    let fraction = format!("(\".\" [0-9]{{1,{FRACTION_DIGITS}}})?");
    let zeros = format!("(\".\" \"0\"{{1,{FRACTION_DIGITS}}})?");
    if lo == hi {
        return Ok(format!("{} {zeros}", int_range(hi, hi)));
    }
    Ok(format!("({} {fraction} | {} {zeros})", int_range(lo, hi - 1), int_range(hi, hi)))
}

/// Alternatives that write exactly the integers `lo..=hi` in JSON's form (no leading zeros).
fn int_range(lo: i64, hi: i64) -> String {
    let mut alts = Vec::new();
    if lo < 0 {
        // -hi'..-lo' as "-" and the positive range, never "-0".
        let (a, b) = ((-hi.min(-1)) as u64, (-lo) as u64);
        alts.extend(digit_ranges(a, b).into_iter().map(|r| format!("\"-\" {r}")));
    }
    if hi >= 0 {
        alts.extend(digit_ranges(lo.max(0) as u64, hi as u64));
    }
    if alts.len() == 1 {
        alts.remove(0)
    } else {
        format!("({})", alts.join(" | "))
    }
}

/// `lo..=hi` (non-negative) as GBNF sequences: each a shared prefix, one digit range, then
/// any digits.
fn digit_ranges(lo: u64, hi: u64) -> Vec<String> {
    let mut out = Vec::new();
    let mut start = lo;
    while start <= hi {
        // The largest block [start, start + 10^k - 1] aligned on 10^k and inside the range...
        let mut k = 0u32;
        while start % 10u64.pow(k + 1) == 0 && start + 10u64.pow(k + 1) - 1 <= hi && start != 0 {
            k += 1;
        }
        let step = 10u64.pow(k);
        let mut end = start + step - 1;
        // ...then as many such blocks as the digit above allows.
        while end + step <= hi && (end + 1) / step % 10 != 0 {
            end += step;
        }
        let (s, e) = (start.to_string(), end.to_string());
        let fixed = s.len() - k as usize - 1;
        let mut parts = Vec::new();
        if fixed > 0 {
            parts.push(literal(&s[..fixed]));
        }
        let (d1, d2) = (&s[fixed..=fixed], &e[fixed..=fixed]);
        parts.push(if d1 == d2 { literal(d1) } else { format!("[{d1}-{d2}]") });
        if k > 0 {
            parts.push(format!("[0-9]{{{k}}}"));
        }
        out.push(parts.join(" "));
        if end == u64::MAX {
            break;
        }
        start = end + 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every integer the alternatives of `digit_ranges(lo, hi)` write, by brute force over
    /// the patterns (each part a literal, a digit class or `[0-9]{k}`).
    fn expand(pattern: &str) -> Vec<String> {
        let mut prefixes = vec![String::new()];
        for part in pattern.split(' ') {
            let options: Vec<String> = if let Some(lit) = part.strip_prefix('"') {
                vec![lit.trim_end_matches('"').to_string()]
            } else if let Some(k) = part.strip_prefix("[0-9]{") {
                let k: u32 = k.trim_end_matches('}').parse().unwrap();
                (0..10u64.pow(k)).map(|n| format!("{n:0width$}", width = k as usize)).collect()
            } else {
                let (a, b) = (part.as_bytes()[1], part.as_bytes()[3]);
                (a..=b).map(|d| (d as char).to_string()).collect()
            };
            prefixes = prefixes.iter().flat_map(|p| options.iter().map(move |o| format!("{p}{o}"))).collect();
        }
        prefixes
    }

    #[test]
    fn digit_ranges_write_exactly_the_range() {
        for (lo, hi) in
            [(0, 0), (0, 9), (0, 10), (5, 5), (3, 47), (0, 255), (10, 99), (17, 1234), (100, 100), (99, 101), (0, 1000)]
        {
            let written: Vec<String> = digit_ranges(lo, hi).iter().flat_map(|p| expand(p)).collect();
            assert!(written.iter().all(|s| s == "0" || !s.starts_with('0')), "{lo}..={hi}: a leading zero");
            let mut got: Vec<u64> = written.iter().map(|s| s.parse().unwrap()).collect();
            got.sort_unstable();
            let want: Vec<u64> = (lo..=hi).collect();
            assert_eq!(got, want, "{lo}..={hi}: {:?}", digit_ranges(lo, hi));
        }
    }

    /// `levels` arrays, each the items of the one around it.
    fn nested_arrays(levels: usize) -> Value {
        let mut schema = serde_json::json!({"type": "string"});
        for _ in 0..levels {
            schema = serde_json::json!({"type": "array", "items": schema, "minItems": 1});
        }
        schema
    }

    #[test]
    fn grammars_grow_in_proportion_to_the_schema() {
        // Nested arrays doubled the grammar per level when items were written out in place
        // (24 levels: 604 MB); each level is now one small rule.
        let g40 = to_grammar(&nested_arrays(40)).unwrap();
        let g60 = to_grammar(&nested_arrays(60)).unwrap();
        let per_level = (g60.len() - g40.len()) / 20;
        assert!(per_level < 100, "{per_level} bytes per level");
        let m = match to_grammar(&nested_arrays(MAX_DEPTH + 1)) {
            Err(Error::JsonSchema(m)) => m,
            other => panic!("{other:?}"),
        };
        assert!(m.contains("nested deeper"), "{m}");
        // Optional properties: every subset in order, in rules linear in their number.
        let props = |n: usize| -> Value {
            let p: serde_json::Map<String, Value> =
                (0..n).map(|i| (format!("p{i}"), serde_json::json!({"type": "integer"}))).collect();
            serde_json::json!({"type": "object", "properties": p})
        };
        let (g50, g100) = (to_grammar(&props(50)).unwrap(), to_grammar(&props(100)).unwrap());
        assert!(g100.len() < 2 * g50.len() + 2000, "{} then {}", g50.len(), g100.len());
        // Counts past what llama.cpp's grammar honours are refused, not silently unbounded.
        let m = format!("{:?}", to_grammar(&serde_json::json!({"type": "array", "maxItems": 5000})));
        assert!(m.contains("maxItems") && m.contains("2000"), "{m}");
    }

    #[test]
    fn unsupported_keywords_are_errors_that_say_where() {
        let err = |s: Value| match to_grammar(&s) {
            Err(Error::JsonSchema(m)) => m,
            other => panic!("{s}: {other:?}"),
        };
        assert!(err(serde_json::json!({"type": "string", "pattern": "a+"})).contains("`pattern`"));
        let m = err(serde_json::json!({"properties": {"a": {"type": "string", "format": "hostname"}}}));
        assert!(m.contains("#/properties/a") && m.contains("hostname"), "{m}");
        assert!(err(serde_json::json!({"$ref": "other.json#/x"})).contains("local"));
        assert!(err(serde_json::json!({"type": "integer", "minimum": 5, "maximum": 4})).contains("no integer"));
        assert!(err(serde_json::json!({"type": "array", "minItems": 3, "maxItems": 2})).contains("below"));
        assert!(err(serde_json::json!({"enum": []})).contains("empty"));
        assert!(err(serde_json::json!({"type": "object", "required": ["x"]})).contains("\"x\""));
        assert!(err(serde_json::json!({"oneOf": [{"type": "string"}, {"type": "string"}]})).contains("oneOf"));
        assert!(err(serde_json::json!(3)).contains("object or a boolean"));
    }
}
