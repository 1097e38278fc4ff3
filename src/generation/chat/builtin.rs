//! llama.cpp's built-in chat formats (`llama_chat_apply_template`): a fixed list recognised
//! by name, or by marker strings in a template's source. Not a Jinja engine: rocm-llama uses
//! them only for model files that carry no template of their own, or when asked by name.

use std::ffi::{c_char, CStr};

use llama_cpp_sys_2 as sys;

use super::ChatMessage;
use crate::error::{c_string, Error, Result};

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
