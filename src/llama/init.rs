//! Process-wide llama.cpp initialisation and logging.
//!
//! llama.cpp's backend is initialised once per process through a [`Once`] and never freed:
//! models and contexts may outlive any guard object a caller could hold, and
//! `llama_backend_free` only tears down state that a process exit releases anyway
//! (the same choice git2-rs makes for libgit2).
//!
//! llama.cpp and ggml log through one callback, which this module routes to [`tracing`]
//! under the target `llama_cpp`: errors as `error`, warnings as `warn`, information as
//! `debug` and debug output as `trace`. Nothing is printed unless the program installs a
//! subscriber and enables that target.

use std::cell::RefCell;
use std::ffi::{c_char, c_void, CStr};
use std::sync::Once;

use llama_cpp_sys_2 as sys;

static INIT: Once = Once::new();

thread_local! {
    /// Log lines captured on this thread by [`capture_log`].
    static CAPTURE: RefCell<Option<Vec<String>>> = const { RefCell::new(None) };
    /// A panic of the tracing subscriber inside the log callback during [`capture_log`],
    /// resumed once the C call has returned.
    static PANIC: RefCell<Option<Box<dyn std::any::Any + Send>>> = const { RefCell::new(None) };
}

/// Runs `f` and returns the llama.cpp log lines it produced on this thread, whatever the
/// tracing level. llama.cpp logs synchronously on the calling thread while it loads models
/// and creates contexts; this is how its own memory accounting ("model buffer size",
/// "KV buffer size", "compute buffer size") is read.
///
/// A panic of a tracing subscriber while llama.cpp logs during `f` is caught in the callback
/// and resumed here, after `f` has returned (whatever `f` returned is then leaked).
pub(crate) fn capture_log<T>(f: impl FnOnce() -> T) -> (T, Vec<String>) {
    let outer = CAPTURE.with(|c| c.borrow_mut().replace(Vec::new()));
    let out = f();
    let lines = CAPTURE.with(|c| std::mem::replace(&mut *c.borrow_mut(), outer)).unwrap_or_default();
    if let Some(payload) = PANIC.with(|p| p.borrow_mut().take()) {
        std::mem::forget(out);
        std::panic::resume_unwind(payload);
    }
    (out, lines)
}

/// Initialises llama.cpp's backends (idempotent, thread-safe).
///
/// Every constructor in this crate calls it; calling it yourself is only needed before using
/// raw `llama_cpp_sys_2` functions. Wraps `llama_log_set` and `llama_backend_init`.
pub fn init() {
    INIT.call_once(|| {
        // SAFETY: `log_callback` is a valid `extern "C"` function for the whole process
        // lifetime and ignores its user-data pointer, which may therefore be null.
        unsafe { sys::llama_log_set(Some(log_callback), std::ptr::null_mut()) };
        // SAFETY: called exactly once per process, guarded by `INIT`.
        unsafe { sys::llama_backend_init() };
    });
}

/// The log levels of ggml, as plain integers so they match any bindgen enum repr
/// (unsigned on Linux, signed on Windows).
#[allow(clippy::unnecessary_cast)]
fn level_of(level: u32) -> tracing::Level {
    match level {
        x if x == sys::GGML_LOG_LEVEL_ERROR as u32 => tracing::Level::ERROR,
        x if x == sys::GGML_LOG_LEVEL_WARN as u32 => tracing::Level::WARN,
        x if x == sys::GGML_LOG_LEVEL_INFO as u32 => tracing::Level::DEBUG,
        _ => tracing::Level::TRACE,
    }
}

unsafe extern "C" fn log_callback(level: sys::ggml_log_level, text: *const c_char, _user: *mut c_void) {
    // A panic must never unwind into C: catch it; inside `capture_log` it is resumed after the
    // C call returns, elsewhere it is dropped with its message.
    let caught = std::panic::catch_unwind(|| {
        if text.is_null() {
            return;
        }
        // SAFETY: llama.cpp passes a NUL-terminated string valid for this call.
        let msg = unsafe { CStr::from_ptr(text) }.to_string_lossy();
        let msg = msg.trim_end();
        if msg.is_empty() {
            return;
        }
        CAPTURE.with(|c| {
            if let Ok(mut c) = c.try_borrow_mut() {
                if let Some(lines) = c.as_mut() {
                    lines.push(msg.to_string());
                }
            }
        });
        #[allow(clippy::unnecessary_cast)]
        let level = level as u32;
        match level_of(level) {
            tracing::Level::ERROR => tracing::error!(target: "llama_cpp", "{msg}"),
            tracing::Level::WARN => tracing::warn!(target: "llama_cpp", "{msg}"),
            tracing::Level::DEBUG => tracing::debug!(target: "llama_cpp", "{msg}"),
            _ => tracing::trace!(target: "llama_cpp", "{msg}"),
        }
    });
    if let Err(payload) = caught {
        let capturing = CAPTURE.with(|c| c.try_borrow().map(|c| c.is_some()).unwrap_or(false));
        if capturing {
            PANIC.with(|p| {
                if let Ok(mut p) = p.try_borrow_mut() {
                    p.get_or_insert(payload);
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_is_idempotent() {
        init();
        init();
    }

    #[test]
    #[allow(clippy::unnecessary_cast)]
    fn log_levels_map() {
        assert_eq!(level_of(sys::GGML_LOG_LEVEL_ERROR as u32), tracing::Level::ERROR);
        assert_eq!(level_of(sys::GGML_LOG_LEVEL_WARN as u32), tracing::Level::WARN);
        assert_eq!(level_of(sys::GGML_LOG_LEVEL_INFO as u32), tracing::Level::DEBUG);
        assert_eq!(level_of(sys::GGML_LOG_LEVEL_CONT as u32), tracing::Level::TRACE);
    }

    #[test]
    fn callback_survives_null_and_text() {
        // SAFETY: the callback accepts a null text and a valid C string.
        unsafe {
            log_callback(sys::GGML_LOG_LEVEL_WARN, std::ptr::null(), std::ptr::null_mut());
            log_callback(sys::GGML_LOG_LEVEL_INFO, c"hello\n".as_ptr(), std::ptr::null_mut());
        }
    }
}
