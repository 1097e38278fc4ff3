//! Every top-level field of every request body, read or refused. A body is checked against its
//! route's table before it is parsed: a field the table does not know, or one it refuses with
//! a value that would change the output, is a 400 that names it. So no field that changes the
//! output is ever dropped without a word, and the docs' table (docs/server.md) is this one.

use serde_json::Value;

use super::openai::ApiError;

/// What the server does with a field.
#[derive(Clone, Copy)]
pub(crate) enum Handling {
    /// Read: it does what OpenAI's or llama-server's documentation says.
    Read,
    /// Accepted; it changes nothing in the output (the reason says why, in the docs' table).
    #[cfg_attr(not(test), allow(dead_code))]
    Ignored(&'static str),
    /// Refused with a 400 naming it unless its value is neutral (null, false, 0, empty, or
    /// `1` for counts), with the reason.
    Refused(&'static str),
}

/// One field of a route's body.
pub(crate) type Field = (&'static str, Handling);

use Handling::{Ignored, Read, Refused};

/// The fields every generating route shares (OpenAI's and llama-server's names).
const SAMPLING: &[Field] = &[
    ("model", Ignored("any name is served by the one model, which the response names")),
    ("stream", Read),
    ("stream_options", Read),
    ("max_tokens", Read),
    ("n_predict", Read),
    ("temperature", Read),
    ("top_p", Read),
    ("top_k", Read),
    ("min_p", Read),
    ("typical_p", Read),
    ("repeat_penalty", Read),
    ("repeat_last_n", Read),
    ("frequency_penalty", Read),
    ("presence_penalty", Read),
    ("dry_multiplier", Read),
    ("dry_base", Read),
    ("dry_allowed_length", Read),
    ("dry_penalty_last_n", Read),
    ("dry_sequence_breakers", Read),
    ("seed", Read),
    ("n", Read),
    ("stop", Read),
    ("ignore_eos", Read),
    ("logit_bias", Read),
    ("grammar", Read),
    ("json_schema", Read),
    ("response_format", Read),
    ("n_probs", Read),
    ("user", Ignored("an end-user id for the caller's own records")),
    ("store", Ignored("nothing is stored")),
    ("metadata", Ignored("nothing is stored")),
    ("service_tier", Ignored("one tier")),
    ("cache_prompt", Ignored("prompt prefixes are always reused when the tokens match; the output is the same")),
    ("best_of", Refused("use n")),
    ("id_slot", Refused("the engine picks the slot holding the longest prefix of the prompt")),
    ("return_tokens", Refused("not yet supported")),
    ("samplers", Refused("the sampler order is fixed: grammar, logit bias, penalties, DRY, top-k, typical, top-p, min-p, temperature")),
    ("mirostat", Refused("mirostat is not supported")),
    ("mirostat_tau", Refused("mirostat is not supported")),
    ("mirostat_eta", Refused("mirostat is not supported")),
    ("xtc_probability", Refused("XTC is not supported")),
    ("xtc_threshold", Refused("XTC is not supported")),
    ("top_n_sigma", Refused("top-n-sigma is not supported")),
    ("dynatemp_range", Refused("dynamic temperature is not supported")),
    ("dynatemp_exponent", Refused("dynamic temperature is not supported")),
    ("min_keep", Refused("not supported")),
    ("n_keep", Refused("a prompt longer than the context is refused, never cut")),
    ("n_discard", Refused("a prompt longer than the context is refused, never cut")),
    ("n_indent", Refused("not supported")),
    ("t_max_predict_ms", Refused("not supported: use max_tokens")),
    ("t_max_prompt_ms", Refused("not supported")),
    ("timings_per_token", Refused("not supported: every final chunk carries timings")),
    ("post_sampling_probs", Refused("not supported: log-probabilities are of the raw logits")),
    ("return_progress", Refused("not supported")),
    ("lora", Read),
    ("speculative.n_max", Read),
    ("speculative.n_min", Read),
    ("speculative.p_min", Read),
    ("image_data", Refused("multimodal input is not supported")),
    ("multimodal_data", Refused("multimodal input is not supported")),
    ("prediction", Refused("predicted outputs are not supported")),
    ("audio", Refused("audio output is not supported")),
    ("modalities", Refused("only text output is supported")),
];

/// `POST /v1/chat/completions`: the shared fields and these.
const CHAT_ONLY: &[Field] = &[
    ("messages", Read),
    ("max_completion_tokens", Read),
    ("logprobs", Read),
    ("top_logprobs", Read),
    ("tools", Read),
    ("tool_choice", Read),
    ("chat_template_kwargs", Read),
    ("parallel_tool_calls", Ignored("every call the model writes is returned; a forced call is one call")),
    ("functions", Refused("deprecated by OpenAI: use tools")),
    ("function_call", Refused("deprecated by OpenAI: use tool_choice")),
    ("reasoning_effort", Refused("not supported: set the template's variables with chat_template_kwargs")),
    ("reasoning_format", Read),
    ("web_search_options", Refused("web search is not supported")),
];

/// `POST /v1/completions`: the shared fields and these.
const COMPLETION_ONLY: &[Field] =
    &[("prompt", Read), ("logprobs", Read), ("echo", Read), ("suffix", Refused("fill-in-the-middle is not supported"))];

/// `POST /v1/embeddings`.
pub(crate) const EMBEDDINGS: &[Field] = &[
    ("input", Read),
    ("model", Ignored("any name is served by the one model, which the response names")),
    ("encoding_format", Read),
    ("dimensions", Read),
    ("user", Ignored("an end-user id for the caller's own records")),
];

/// llama-server's `POST /completion`: the shared fields and these.
const COMPLETION_NATIVE: &[Field] = &[("prompt", Read)];

const TOKENIZE: &[Field] = &[("content", Read), ("add_special", Read), ("parse_special", Read), ("with_pieces", Read)];

const DETOKENIZE: &[Field] = &[("tokens", Read)];

const APPLY_TEMPLATE: &[Field] = &[("messages", Read), ("tools", Read), ("chat_template_kwargs", Read)];

const RERANK: &[Field] = &[
    ("query", Read),
    ("documents", Read),
    ("top_n", Read),
    ("return_documents", Read),
    ("model", Ignored("any name is served by the one model, which the response names")),
    ("user", Ignored("an end-user id for the caller's own records")),
];

const KEEP_ALIVE: Field = ("keep_alive", Ignored("the model stays loaded for as long as the server runs"));
const OLLAMA_MODEL: Field = ("model", Ignored("any name is served by the one model, which the response names"));

/// Ollama's `POST /api/chat`.
const OLLAMA_CHAT: &[Field] = &[
    OLLAMA_MODEL,
    ("messages", Read),
    ("tools", Read),
    ("format", Read),
    ("options", Read),
    ("stream", Read),
    KEEP_ALIVE,
    ("think", Read),
];

/// Ollama's `POST /api/generate`.
const OLLAMA_GENERATE: &[Field] = &[
    OLLAMA_MODEL,
    ("prompt", Read),
    ("system", Read),
    ("raw", Read),
    ("format", Read),
    ("options", Read),
    ("stream", Read),
    KEEP_ALIVE,
    ("suffix", Refused("fill-in-the-middle is not supported")),
    ("images", Refused("multimodal input is not supported")),
    ("template", Refused("the template is the server's (--chat-template)")),
    ("context", Refused("deprecated by Ollama: send the conversation to /api/chat")),
    ("think", Read),
];

/// Ollama's `POST /api/embed` and `/api/embeddings`.
const OLLAMA_EMBED: &[Field] =
    &[OLLAMA_MODEL, ("input", Read), ("truncate", Read), ("dimensions", Read), ("options", Read), KEEP_ALIVE];
const OLLAMA_EMBEDDINGS: &[Field] = &[OLLAMA_MODEL, ("prompt", Read), ("options", Read), KEEP_ALIVE];
const OLLAMA_SHOW: &[Field] = &[
    OLLAMA_MODEL,
    ("name", Ignored("the one served model is shown")),
    ("verbose", Ignored("every field is always given")),
];

/// A route's table.
#[derive(Clone, Copy)]
pub(crate) enum Route {
    Chat,
    Completions,
    Embeddings,
    Completion,
    Tokenize,
    Detokenize,
    ApplyTemplate,
    Rerank,
    OllamaChat,
    OllamaGenerate,
    OllamaEmbed,
    OllamaEmbeddings,
    OllamaShow,
}

/// Every route with a table, in the docs' order.
#[cfg(test)]
pub(crate) const ROUTES: [Route; 13] = [
    Route::Chat,
    Route::Completions,
    Route::Embeddings,
    Route::Completion,
    Route::Tokenize,
    Route::Detokenize,
    Route::ApplyTemplate,
    Route::Rerank,
    Route::OllamaChat,
    Route::OllamaGenerate,
    Route::OllamaEmbed,
    Route::OllamaEmbeddings,
    Route::OllamaShow,
];

impl Route {
    /// Every field of the route, the route's own first.
    pub(crate) fn fields(self) -> Vec<Field> {
        match self {
            Route::Chat => CHAT_ONLY.iter().chain(SAMPLING).copied().collect(),
            Route::Completions => COMPLETION_ONLY.iter().chain(SAMPLING).copied().collect(),
            Route::Embeddings => EMBEDDINGS.to_vec(),
            Route::Completion => COMPLETION_NATIVE.iter().chain(SAMPLING).copied().collect(),
            Route::Tokenize => TOKENIZE.to_vec(),
            Route::Detokenize => DETOKENIZE.to_vec(),
            Route::ApplyTemplate => APPLY_TEMPLATE.to_vec(),
            Route::Rerank => RERANK.to_vec(),
            Route::OllamaChat => OLLAMA_CHAT.to_vec(),
            Route::OllamaGenerate => OLLAMA_GENERATE.to_vec(),
            Route::OllamaEmbed => OLLAMA_EMBED.to_vec(),
            Route::OllamaEmbeddings => OLLAMA_EMBEDDINGS.to_vec(),
            Route::OllamaShow => OLLAMA_SHOW.to_vec(),
        }
    }

    pub(crate) fn path(self) -> &'static str {
        match self {
            Route::Chat => "/v1/chat/completions",
            Route::Completions => "/v1/completions",
            Route::Embeddings => "/v1/embeddings",
            Route::Completion => "/completion",
            Route::Tokenize => "/tokenize",
            Route::Detokenize => "/detokenize",
            Route::ApplyTemplate => "/apply-template",
            Route::Rerank => "/rerank",
            Route::OllamaChat => "/api/chat",
            Route::OllamaGenerate => "/api/generate",
            Route::OllamaEmbed => "/api/embed",
            Route::OllamaEmbeddings => "/api/embeddings",
            Route::OllamaShow => "/api/show",
        }
    }
}

/// A value that asks for nothing: null, false, 0, 1 (a count of one), an empty string, list or
/// object.
fn neutral(v: &Value) -> bool {
    match v {
        Value::Null | Value::Bool(false) => true,
        Value::Number(n) => n.as_f64().is_some_and(|x| x == 0.0 || x == 1.0),
        Value::String(s) => s.is_empty() || s == "text",
        Value::Array(a) => a.is_empty() || a.iter().all(|x| x == "text"),
        Value::Object(o) => o.is_empty(),
        Value::Bool(true) => false,
    }
}

/// Checks `body` (already JSON) against `route`'s table: an object whose every field is known
/// and not refused. A body that is not JSON is left to the parser's error.
pub(crate) fn check(body: &[u8], route: Route) -> Result<(), ApiError> {
    check_against(body, &route.fields(), route.path())
}

/// [`check`] against any table; `what` names where the fields are (a route, `options`).
pub(crate) fn check_against(body: &[u8], fields: &[Field], what: &str) -> Result<(), ApiError> {
    let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(body) else { return Ok(()) };
    for (key, value) in &map {
        match fields.iter().find(|(name, _)| name == key) {
            None => {
                return Err(ApiError::invalid_field(
                    format!("unrecognized field {key:?} in {what} (see docs/server.md)"),
                    key,
                ))
            }
            Some((name, Refused(why))) if !neutral(value) => {
                return Err(ApiError::invalid_field(format!("{name:?} is not supported here: {why}"), name))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// The docs' table of `route`'s fields (Markdown rows).
#[cfg(test)]
pub(crate) fn markdown(route: Route) -> String {
    table(&format!("`{}` field", route.path()), &route.fields())
}

/// A Markdown table of `fields` under the heading `title`.
#[cfg(test)]
pub(crate) fn table(title: &str, fields: &[Field]) -> String {
    let mut out = format!("| {title} | handling |\n|---|---|\n");
    for &(name, handling) in fields {
        let h = match handling {
            Read => "read".to_string(),
            Ignored(why) => format!("accepted, changes nothing: {why}"),
            Refused(why) => format!("400 unless null/false/0: {why}"),
        };
        out.push_str(&format!("| `{name}` | {h} |\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_and_refused_fields_are_named() {
        let err = check(br#"{"messages": [], "frobnicate": 1}"#, Route::Chat).unwrap_err();
        assert_eq!(err.status, axum::http::StatusCode::BAD_REQUEST);
        assert!(err.message.contains("frobnicate"), "{}", err.message);
        let err = check(br#"{"prompt": "x", "mirostat": 2}"#, Route::Completions).unwrap_err();
        assert!(err.message.contains("mirostat"), "{}", err.message);
        // Neutral values of refused fields, and ignored fields, pass.
        check(br#"{"prompt": "x", "mirostat": 0, "best_of": 1, "suffix": null, "user": "u"}"#, Route::Completions)
            .unwrap();
        // A field of one route is unknown on another.
        assert!(check(br#"{"input": "x", "temperature": 1}"#, Route::Embeddings).is_err());
        assert!(check(br#"{"prompt": "x", "messages": []}"#, Route::Completions).is_err());
    }

    #[test]
    fn no_field_is_listed_twice() {
        for route in ROUTES {
            let fields = route.fields();
            for (i, (name, _)) in fields.iter().enumerate() {
                assert!(!fields[..i].iter().any(|(n, _)| n == name), "{name} twice in {}", route.path());
            }
        }
    }

    /// docs/server.md holds these tables, as generated (`ROCM_LLAMA_BLESS_DOCS=1 cargo test
    /// the_docs_table` writes them there between the two markers).
    #[test]
    fn the_docs_table_is_this_table() {
        const START: &str = "<!-- request fields: generated from src/server/fields.rs -->\n";
        const END: &str = "<!-- end of request fields -->";
        let tables: String = ROUTES
            .iter()
            .map(|&r| markdown(r))
            .chain([table("Ollama `options` key", super::super::ollama::OPTIONS)])
            .collect::<Vec<_>>()
            .join("\n");
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/server.md");
        let doc = std::fs::read_to_string(path).unwrap();
        let (Some(a), Some(b)) = (doc.find(START), doc.find(END)) else { panic!("docs/server.md lacks the markers") };
        let current = &doc[a + START.len()..b];
        if std::env::var_os("ROCM_LLAMA_BLESS_DOCS").is_some() {
            std::fs::write(path, format!("{}{tables}{}", &doc[..a + START.len()], &doc[b..])).unwrap();
            return;
        }
        assert!(
            current == tables,
            "docs/server.md's field tables are stale: ROCM_LLAMA_BLESS_DOCS=1 cargo test the_docs_table"
        );
    }
}
