//! Chat prompts: [`ChatMessage`], [`ChatTemplate`] and [`ChatOptions`].
//!
//! A model's own template (its GGUF's `tokenizer.chat_template`, or a named variant such as
//! `tokenizer.chat_template.tool_use`) is rendered with a Jinja engine as Hugging Face's
//! tokenizers render it (`jinja`: minijinja with Python's string and dict methods). For
//! files without a template, llama.cpp's built-in formats (`builtin`) are the fallback,
//! chosen by architecture ([`template_for_architecture`]) or by name.

mod bounded;
mod builtin;
mod jinja;

pub use builtin::{apply_template, builtin_templates};

use crate::error::{Error, Result};
use crate::model::Model;
use crate::vocab::Token;

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant` (or `tool`, for templates that know it).
    pub role: String,
    /// The text.
    pub content: String,
    /// Further fields templates read (`tool_calls`, `tool_call_id`, `name`,
    /// `reasoning_content`, ...), as JSON, beside `role` and `content`.
    #[serde(flatten, default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl ChatMessage {
    /// A message with any role.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage { role: role.into(), content: content.into(), extra: serde_json::Map::new() }
    }
    /// Adds a field templates read beside `role` and `content` (e.g. `tool_calls`).
    #[must_use]
    pub fn with(mut self, key: impl Into<String>, value: impl Into<serde_json::Value>) -> Self {
        self.extra.insert(key.into(), value.into());
        self
    }
    /// A system message.
    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }
    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }
    /// An assistant message.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

/// Which chat template to format a conversation with.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ChatTemplate {
    /// The model's own template (its `tokenizer.chat_template`), rendered with Jinja; for
    /// files without one, llama.cpp's built-in format for the model's architecture (see
    /// [`template_for_architecture`]).
    #[default]
    Model,
    /// A named template the model file carries besides its default one
    /// (`tokenizer.chat_template.NAME`, e.g. `tool_use`), rendered with Jinja.
    ModelVariant(String),
    /// A Jinja template source of the caller's.
    Jinja(String),
    /// One of llama.cpp's built-in formats by name (`gemma`, `chatml`, `llama3`, ... see
    /// [`builtin_templates`]).
    Builtin(String),
}

/// What a conversation is rendered with besides its messages.
///
/// ```
/// use rocm_llama::ChatOptions;
///
/// let options = ChatOptions::default().kwarg("enable_thinking", false);
/// assert!(options.add_generation_prompt);
/// ```
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct ChatOptions {
    /// End with the opening of the assistant's turn (default true).
    pub add_generation_prompt: bool,
    /// Tool definitions (OpenAI's shape: a list of `{"type": "function", "function": {...}}`),
    /// the template's `tools` variable.
    pub tools: Option<serde_json::Value>,
    /// Further template variables (`enable_thinking`, `reasoning_effort`, ...); Jinja
    /// templates only.
    pub kwargs: serde_json::Map<String, serde_json::Value>,
}

impl Default for ChatOptions {
    fn default() -> Self {
        ChatOptions { add_generation_prompt: true, tools: None, kwargs: serde_json::Map::new() }
    }
}

impl ChatOptions {
    /// The tools, if any: `None` also for a null or an empty list, which clients send to mean
    /// no tools (a template then renders as it would without them).
    pub fn tool_list(&self) -> Option<&serde_json::Value> {
        self.tools.as_ref().filter(|t| !t.is_null() && t.as_array().is_none_or(|a| !a.is_empty()))
    }
}

crate::config::setters!(ChatOptions {
    add_generation_prompt: bool,
} optional {
    tools: serde_json::Value,
});

impl ChatOptions {
    /// Sets one template variable.
    #[must_use]
    pub fn kwarg(mut self, name: impl Into<String>, value: impl Into<serde_json::Value>) -> Self {
        self.kwargs.insert(name.into(), value.into());
        self
    }
}

impl ChatTemplate {
    /// The prompt for `messages` under this template for `model`, ending where the
    /// assistant's reply starts.
    pub fn prompt(&self, model: &Model, messages: &[ChatMessage]) -> Result<String> {
        self.prompt_with(model, messages, &ChatOptions::default())
    }

    /// The prompt for `messages` with `options` (tools, template variables, no generation
    /// prompt). Built-in formats take no tools or variables: asking for them is an error,
    /// never silently ignored.
    pub fn prompt_with(&self, model: &Model, messages: &[ChatMessage], options: &ChatOptions) -> Result<String> {
        match self.source(model)? {
            TemplateSource::Jinja { name, source } => {
                jinja::render(&name, &source, messages, options, &specials(model))
            }
            TemplateSource::Builtin(name) => {
                if options.tool_list().is_some() || !options.kwargs.is_empty() {
                    return Err(Error::ChatTemplate(format!(
                        "llama.cpp's built-in {name:?} format takes no tools or template variables"
                    )));
                }
                apply_template(&name, messages, options.add_generation_prompt)
            }
        }
    }

    /// The prompt's tokens: as [`prompt_with`](Self::prompt_with) renders it, control tokens
    /// parsed, and a BOS added only when the model wants one and the template did not write it.
    pub fn tokens(&self, model: &Model, messages: &[ChatMessage], options: &ChatOptions) -> Result<Vec<Token>> {
        prompt_tokens(model, &self.prompt_with(model, messages, options)?)
    }

    /// What this template is for `model`: a Jinja source (with the name errors give it) or a
    /// built-in format.
    pub fn source(&self, model: &Model) -> Result<TemplateSource> {
        match self {
            ChatTemplate::Model => match model.chat_template() {
                Some(source) => Ok(TemplateSource::Jinja { name: "the model's tokenizer.chat_template".into(), source }),
                None => template_for_architecture(&model.architecture())
                    .map(|n| {
                        tracing::info!(
                            "the model has no chat template: formatting with llama.cpp's built-in {n:?} format"
                        );
                        TemplateSource::Builtin(n.to_string())
                    })
                    .ok_or_else(|| {
                        Error::ChatTemplate(format!(
                            "the model ({}) has no chat template; give one (a Jinja file) or name a built-in format (e.g. chatml)",
                            model.architecture()
                        ))
                    }),
            },
            ChatTemplate::ModelVariant(name) => model
                .chat_template_named(name)?
                .map(|source| TemplateSource::Jinja { name: format!("the model's tokenizer.chat_template.{name}"), source })
                .ok_or_else(|| Error::ChatTemplate(format!("the model has no chat template named {name:?}"))),
            ChatTemplate::Jinja(source) => Ok(TemplateSource::Jinja { name: "the given chat template".into(), source: source.clone() }),
            ChatTemplate::Builtin(name) => {
                if builtin_templates().iter().any(|n| n == name) {
                    Ok(TemplateSource::Builtin(name.clone()))
                } else {
                    Err(Error::ChatTemplate(format!(
                        "{name:?} is not one of llama.cpp's built-in formats ({})",
                        builtin_templates().join(", ")
                    )))
                }
            }
        }
    }
}

/// Where a [`ChatTemplate`] leads for one model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateSource {
    /// Jinja source, and the name errors call it by.
    Jinja {
        /// How errors name the template.
        name: String,
        /// The source.
        source: String,
    },
    /// A built-in llama.cpp format.
    Builtin(String),
}

/// Checks that a Jinja template parses (its syntax only); the error names the line.
pub fn check_jinja(source: &str) -> Result<()> {
    jinja::check("the given chat template", source)
}

/// Renders a Jinja chat template without a model: `bos` and `eos` are the text of the
/// model's BOS and EOS tokens (what `bos_token` and `eos_token` hold in the template).
///
/// ```
/// use rocm_llama::chat::render_jinja;
/// use rocm_llama::{ChatMessage, ChatOptions};
///
/// let template = "{{ bos_token }}{% for m in messages %}<{{ m.role }}>{{ m.content | trim }}{% endfor %}";
/// let out = render_jinja(template, &[ChatMessage::user(" Hi ")], &ChatOptions::default(), "<s>", "</s>")?;
/// assert_eq!(out, "<s><user>Hi");
/// # Ok::<(), rocm_llama::Error>(())
/// ```
pub fn render_jinja(
    source: &str,
    messages: &[ChatMessage],
    options: &ChatOptions,
    bos: &str,
    eos: &str,
) -> Result<String> {
    let specials = jinja::Specials { bos: bos.into(), eos: eos.into() };
    jinja::render("the given chat template", source, messages, options, &specials)
}

/// The text of the model's BOS and EOS tokens, as templates write them.
fn specials(model: &Model) -> jinja::Specials {
    let vocab = model.vocab();
    let piece = |t: Option<Token>| {
        t.and_then(|t| vocab.token_to_bytes(t, true).ok())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    };
    jinja::Specials { bos: piece(vocab.bos()), eos: piece(vocab.eos()) }
}

/// Tokenizes a rendered chat prompt: control tokens parsed; BOS added as the model wants,
/// unless the text already starts with it (Jinja templates usually write `{{ bos_token }}`).
pub(crate) fn prompt_tokens(model: &Model, text: &str) -> Result<Vec<Token>> {
    let vocab = model.vocab();
    let bos = specials(model).bos;
    let add_special = !(vocab.add_bos() && !bos.is_empty() && text.starts_with(&bos));
    vocab.tokenize(text, add_special, true)
}

/// The built-in template for GGUF files of an architecture that carry no template of their own.
pub fn template_for_architecture(arch: &str) -> Option<&'static str> {
    Some(match arch {
        a if a.starts_with("gemma") => "gemma",
        "llama" => "llama3",
        a if a.starts_with("qwen") => "chatml",
        a if a.starts_with("phi3") => "phi3",
        a if a.starts_with("mistral") => "mistral-v7",
        _ => return None,
    })
}
