//! Ctrl-C and SIGTERM, one way for every subcommand: `start` (first thing in `main`, before
//! any thread) blocks both in every thread and gives them to one thread of their own, which
//! waits for them with `sigwait` and asks the handler the running command set what a signal
//! means. Without a handler, a signal ends the process at once (130 for Ctrl-C, 143 for
//! SIGTERM, as a shell reports them). Because the thread is an ordinary thread, handlers may
//! lock, print and cancel; none runs inside a signal handler.

use std::sync::Mutex;

/// Which signal arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Interrupt,
    Terminate,
}

impl Signal {
    pub fn name(self) -> &'static str {
        match self {
            Signal::Interrupt => "Ctrl-C",
            Signal::Terminate => "SIGTERM",
        }
    }

    /// The exit status a shell shows for a process this signal ended.
    fn status(self) -> i32 {
        match self {
            Signal::Interrupt => 130,
            Signal::Terminate => 143,
        }
    }
}

/// What a handler makes of a signal.
pub enum Action {
    /// The handler dealt with it (a reply cancelled, a server told to drain).
    Handled,
    /// End the process now with this status.
    Exit(i32),
}

type Handler = Box<dyn FnMut(Signal) -> Action + Send>;

static HANDLER: Mutex<Option<Handler>> = Mutex::new(None);

/// Sets what a signal means from now on (replacing any handler set before).
pub fn on_signal(handler: impl FnMut(Signal) -> Action + Send + 'static) {
    *HANDLER.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Box::new(handler));
}

/// Blocks SIGINT and SIGTERM in this thread (so in every thread started after it) and starts
/// the thread that takes them. Call before any other thread exists.
#[cfg(unix)]
pub fn start() {
    // SAFETY: dispositions and masks set at start-up, before any other thread; the set is a
    // plain value initialised by sigemptyset.
    let set = unsafe {
        // A shell starts background jobs with SIGINT ignored, and an ignored signal never
        // reaches sigwait: take both back to their default first.
        libc::signal(libc::SIGINT, libc::SIG_DFL);
        libc::signal(libc::SIGTERM, libc::SIG_DFL);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    let spawned = std::thread::Builder::new().name("signals".into()).spawn(move || loop {
        let mut sig: libc::c_int = 0;
        // SAFETY: waits for the signals blocked above; `set` and `sig` are live locals.
        if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
            continue;
        }
        let signal = if sig == libc::SIGTERM { Signal::Terminate } else { Signal::Interrupt };
        let action = match HANDLER.lock().unwrap_or_else(std::sync::PoisonError::into_inner).as_mut() {
            Some(handler) => handler(signal),
            None => Action::Exit(signal.status()),
        };
        if let Action::Exit(status) = action {
            exit_now(status);
        }
    });
    if spawned.is_err() {
        // Without the thread the signals would stay blocked: give them back their default.
        // SAFETY: unblocks the same set in this (still the only) thread.
        unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) };
    }
}

#[cfg(not(unix))]
pub fn start() {}

/// Ends the process with `status`, without running C++ static destructors while llama.cpp's
/// or ggml's threads may still use what they destroy. Stdout is not flushed here (the thread
/// writing a reply may hold its lock); the commands flush what they write as they write it.
pub fn exit_now(status: i32) -> ! {
    // SAFETY: `_exit` ends the process at once.
    unsafe { libc::_exit(status) }
}

/// The default for a signal: the status a shell expects.
pub fn default_exit(signal: Signal) -> Action {
    Action::Exit(signal.status())
}
