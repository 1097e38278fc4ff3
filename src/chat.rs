//! Chat prompts: [`ChatMessage`] and [`apply_template`] (`llama_chat_apply_template`).
//!
//! llama.cpp recognises a template either by a built-in name (`gemma`, `chatml`,
//! `llama3`, ... — see [`builtin_templates`]) or by tell-tale markers in a model's Jinja
//! template (`<start_of_turn>`, `<|im_start|>`, `<|start_header_id|>`, ...).

use std::ffi::{c_char, CStr};

use llama_cpp_sys_2 as sys;

use crate::error::{c_string, Error, Result};
use crate::model::Model;

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

impl ChatMessage {
    /// A message with any role.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage { role: role.into(), content: content.into() }
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
    /// The model's own template (its `tokenizer.chat_template`); for files without one, the
    /// built-in template of the model's architecture family (see [`template_for_architecture`]).
    #[default]
    Model,
    /// A built-in llama.cpp template by name (`gemma`, `chatml`, `llama3`, ...) or a
    /// template source string.
    Named(String),
}

impl ChatTemplate {
    /// The prompt for `messages` under this template for `model`, ending where the
    /// assistant's reply starts.
    pub fn prompt(&self, model: &Model, messages: &[ChatMessage]) -> Result<String> {
        apply_template(&self.resolve(model)?, messages, true)
    }

    /// The template text to hand to llama.cpp for `model`.
    pub fn resolve(&self, model: &Model) -> Result<String> {
        match self {
            ChatTemplate::Model => model
                .chat_template()
                .or_else(|| template_for_architecture(&model.architecture()).map(String::from))
                .ok_or_else(|| {
                    Error::ChatTemplate(format!(
                        "the model ({}) has no chat template; name a built-in one (e.g. chatml)",
                        model.architecture()
                    ))
                }),
            ChatTemplate::Named(t) => Ok(t.clone()),
        }
    }
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

/// The names of llama.cpp's built-in templates. Wraps `llama_chat_builtin_templates`.
pub fn builtin_templates() -> Vec<String> {
    // SAFETY: a null buffer of length 0 asks only for the count.
    let n = unsafe { sys::llama_chat_builtin_templates(std::ptr::null_mut(), 0) };
    let mut ptrs: Vec<*const c_char> = vec![std::ptr::null(); n.max(0) as usize];
    // SAFETY: `ptrs` has room for `n` pointers.
    let n = unsafe { sys::llama_chat_builtin_templates(ptrs.as_mut_ptr(), ptrs.len()) };
    ptrs.truncate(n.max(0) as usize);
    ptrs.into_iter()
        .filter(|p| !p.is_null())
        // SAFETY: llama.cpp returns static NUL-terminated names.
        .map(|p| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
        .collect()
}

/// Formats `messages` with `template` (a built-in name or template source). With
/// `add_assistant`, the text ends with the opening of the assistant's turn.
/// Wraps `llama_chat_apply_template`; an unrecognised template is [`Error::ChatTemplate`].
pub fn apply_template(template: &str, messages: &[ChatMessage], add_assistant: bool) -> Result<String> {
    let tmpl = c_string("chat template", template)?;
    let owned: Vec<(std::ffi::CString, std::ffi::CString)> = messages
        .iter()
        .map(|m| Ok((c_string("chat role", &m.role)?, c_string("chat message", &m.content)?)))
        .collect::<Result<_>>()?;
    let chat: Vec<sys::llama_chat_message> =
        owned.iter().map(|(r, c)| sys::llama_chat_message { role: r.as_ptr(), content: c.as_ptr() }).collect();
    let total: usize = messages.iter().map(|m| m.content.len() + m.role.len()).sum();
    let mut buf = vec![0u8; (total * 2 + 256).min(i32::MAX as usize)];
    for _ in 0..2 {
        // SAFETY: the strings live in `owned`/`tmpl` for the call; `buf` has room for its length.
        let n = unsafe {
            sys::llama_chat_apply_template(
                tmpl.as_ptr(),
                chat.as_ptr(),
                chat.len(),
                add_assistant,
                buf.as_mut_ptr() as *mut c_char,
                buf.len() as i32,
            )
        };
        if n < 0 {
            let short: String = template.chars().take(60).collect();
            return Err(Error::ChatTemplate(format!("llama.cpp does not recognise the template {short:?}")));
        }
        let n = n as usize;
        if n <= buf.len() {
            buf.truncate(n);
            return String::from_utf8(buf).map_err(|_| Error::ChatTemplate("template produced invalid UTF-8".into()));
        }
        if n > i32::MAX as usize {
            return Err(Error::ChatTemplate("formatted chat is too long".into()));
        }
        buf.resize(n, 0);
    }
    Err(Error::ChatTemplate("llama_chat_apply_template kept asking for more room".into()))
}
