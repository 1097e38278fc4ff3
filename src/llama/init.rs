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
use std::sync::{Mutex, Once};

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
/// Local GPU devices whose backend state has been set up in this process (ggml device pointers).
static SET_UP: Mutex<Vec<usize>> = Mutex::new(Vec::new());

/// Whether `dev` is a GPU of this machine (not the CPU, not a device on an RPC server).
#[allow(clippy::unnecessary_cast)]
fn is_local_gpu(dev: sys::ggml_backend_dev_t) -> bool {
    // SAFETY: `dev` is a registered device (the registry only grows).
    let (kind, reg) = unsafe { (sys::ggml_backend_dev_type(dev), sys::ggml_backend_dev_backend_reg(dev)) };
    let gpu = kind as u32 == sys::GGML_BACKEND_DEVICE_TYPE_GPU as u32
        || kind as u32 == sys::GGML_BACKEND_DEVICE_TYPE_IGPU as u32;
    if !gpu || reg.is_null() {
        return gpu;
    }
    // SAFETY: a registered backend's name is a static NUL-terminated string, or null.
    let name = unsafe { sys::ggml_backend_reg_name(reg) };
    // SAFETY: checked non-null just before.
    name.is_null() || unsafe { CStr::from_ptr(name) }.to_bytes() != b"RPC"
}

/// Sets up each of these local GPU devices' backend state once per process, one device at a
/// time, before a model load can reach it.
///
/// ggml's Vulkan backend creates a device's state the first time anything asks for its buffer
/// types, without a lock: two threads loading models at once each create it, and one frees
/// what the other goes on using (a segfault, seen on an H100 through NVIDIA's Vulkan driver,
/// 2026-12-06). Asking for a device's buffer types here, under one lock, makes that first time
/// happen on one thread; later loads find the state made. It costs what the first load would
/// have spent anyway. RPC devices are left alone: theirs is a connection, set up by
/// [`crate::rpc`].
pub(crate) fn set_up_devices(devices: &[sys::ggml_backend_dev_t]) {
    let mut done = SET_UP.lock().unwrap_or_else(|e| e.into_inner());
    for &dev in devices {
        if dev.is_null() || done.contains(&(dev as usize)) {
            continue;
        }
        if is_local_gpu(dev) {
            // SAFETY: plain queries of a registered local device; the results are the
            // backend's own static buffer types and need no freeing.
            unsafe {
                sys::ggml_backend_dev_buffer_type(dev);
                sys::ggml_backend_dev_host_buffer_type(dev);
            }
        }
        done.push(dev as usize);
    }
}

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
    fn each_device_is_set_up_once_and_nulls_are_skipped() {
        init();
        // SAFETY: indices below the registry's count.
        let n = unsafe { sys::ggml_backend_dev_count() };
        // SAFETY: as above.
        let mut all: Vec<_> = (0..n).map(|i| unsafe { sys::ggml_backend_dev_get(i) }).collect();
        all.push(std::ptr::null_mut());
        set_up_devices(&all);
        set_up_devices(&all);
        let done = SET_UP.lock().unwrap();
        for d in all.iter().filter(|d| !d.is_null()) {
            assert_eq!(done.iter().filter(|&&x| x == *d as usize).count(), 1);
        }
        assert!(!done.contains(&0));
    }

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
