//! The worker process: ggml's RPC server for one client of `rpc-server`'s front.
//!
//! The front runs this very program again with [`WORKER_ENV`] set; [`worker_init`], called
//! first thing in `main`, sees it and becomes ggml's server on a loopback port for the one
//! connection the front makes, and never returns. Whatever ggml does with a command (an
//! assert, a fault) ends this process only; the kernel frees its device memory.

use std::ffi::CString;
use std::sync::atomic::{AtomicBool, Ordering};

use llama_cpp_sys_2 as sys;

/// The variable that makes a run of the program a worker: `PARENT_PID PORT DEVICE THREADS
/// [CACHE_DIR]`, tab-separated.
pub(crate) const WORKER_ENV: &str = "ROCM_LLAMA_RPC_WORKER";

/// Stack of the thread that runs ggml's server: its graph reader recurses once per level of
/// sources, which the front bounds (`guard::MAX_GRAPH_DEPTH`).
const STACK: usize = 64 << 20;

/// Set once [`worker_init`] ran in a process that is not a worker.
static HOOKED: AtomicBool = AtomicBool::new(false);

/// What a worker is asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WorkerSpec {
    pub(crate) parent: u32,
    pub(crate) port: u16,
    /// Index of the device in ggml's registry.
    pub(crate) device: usize,
    pub(crate) threads: u32,
    pub(crate) cache_dir: Option<String>,
}

impl WorkerSpec {
    pub(crate) fn encode(&self) -> String {
        let mut s = format!("{}\t{}\t{}\t{}", self.parent, self.port, self.device, self.threads);
        if let Some(dir) = &self.cache_dir {
            s.push('\t');
            s.push_str(dir);
        }
        s
    }

    fn decode(s: &str) -> Option<WorkerSpec> {
        let mut parts = s.splitn(5, '\t');
        Some(WorkerSpec {
            parent: parts.next()?.parse().ok()?,
            port: parts.next()?.parse().ok()?,
            device: parts.next()?.parse().ok()?,
            threads: parts.next()?.parse().ok()?,
            cache_dir: parts.next().map(str::to_string),
        })
    }
}

/// Call first thing in `main` of a program that runs an RPC [`RpcServer`](super::RpcServer).
///
/// The server runs ggml's code for each client in a process of its own (a worker), so that a
/// malformed command ends that process and not the server; it starts workers by running the
/// same program again with an environment variable set. In such a run this function becomes
/// the worker and never returns; in any other it returns at once. The `rocm-llama` binary
/// calls it.
///
/// ```no_run
/// // The first line of `main`; then the program, which may start an `rpc::RpcServer`.
/// rocm_llama::rpc::worker_init();
/// ```
pub fn worker_init() {
    let Ok(spec) = std::env::var(WORKER_ENV) else {
        HOOKED.store(true, Ordering::Release);
        return;
    };
    let code = match WorkerSpec::decode(&spec) {
        Some(spec) => {
            let reason = run(&spec);
            eprintln!("rpc-server worker: {reason}");
            1
        }
        None => {
            eprintln!("rpc-server worker: {WORKER_ENV} is not a worker's settings: {spec:?}");
            2
        }
    };
    std::process::exit(code);
}

/// Whether [`worker_init`] ran in this process.
pub(crate) fn hooked() -> bool {
    HOOKED.load(Ordering::Acquire)
}

/// Serves until ggml's server returns (it could not listen or start the device); says why.
fn run(spec: &WorkerSpec) -> String {
    // End with the front: its end (even SIGKILL) sends this process SIGKILL.
    // SAFETY: plain syscalls with constant arguments.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        if libc::getppid() as u32 != spec.parent {
            return "the server that started this worker is gone".into();
        }
        // ggml writes to its client without MSG_NOSIGNAL.
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    let start = match super::rpc_fn(c"ggml_backend_rpc_start_server") {
        Ok(f) => f,
        Err(e) => return e.to_string(),
    };
    // SAFETY: the RPC backend hands out `ggml_backend_rpc_start_server` under this name with
    // this signature (ggml-rpc.h).
    let start: super::StartServerFn =
        unsafe { std::mem::transmute::<*mut std::ffi::c_void, super::StartServerFn>(start) };
    // SAFETY: a registry count.
    if spec.device >= unsafe { sys::ggml_backend_dev_count() } {
        return format!("device {} does not exist", spec.device);
    }
    let endpoint = CString::new(format!("127.0.0.1:{}", spec.port)).expect("no NUL in an address");
    let cache = match spec.cache_dir.as_deref().map(CString::new) {
        Some(Ok(c)) => Some(c),
        Some(Err(_)) => return "the cache folder's name holds a NUL".into(),
        None => None,
    };
    let (device, threads) = (spec.device, spec.threads.max(1) as usize);
    let served = std::thread::Builder::new().name("rpc-worker".into()).stack_size(STACK).spawn(move || {
        // SAFETY: the index is below the registry's count, which only grows.
        let mut dev = unsafe { sys::ggml_backend_dev_get(device) };
        let cache = cache.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
        // SAFETY: valid C strings and one device that outlive the call; ggml serves until
        // it fails to listen or to start the device.
        unsafe { start(endpoint.as_ptr(), cache, threads, 1, &mut dev) };
    });
    match served.map(|t| t.join()) {
        Ok(_) => "ggml's server stopped (it could not listen or could not start the device; see above)".into(),
        Err(e) => format!("cannot start the server thread: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_survive_the_environment() {
        let spec = WorkerSpec { parent: 42, port: 5000, device: 1, threads: 8, cache_dir: Some("/tmp/a b\tc".into()) };
        assert_eq!(WorkerSpec::decode(&spec.encode()), Some(spec.clone()));
        let plain = WorkerSpec { cache_dir: None, ..spec };
        assert_eq!(WorkerSpec::decode(&plain.encode()), Some(plain));
        assert_eq!(WorkerSpec::decode("1\t2"), None);
    }
}
