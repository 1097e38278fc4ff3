//! Devices on other machines: llama.cpp's RPC backend.
//!
//! A machine runs [`RpcServer`] (`rocm-llama rpc-server`) to offer one of its devices; a process
//! names such servers in [`LoadConfig::rpc`](crate::LoadConfig::rpc), and llama.cpp spreads the
//! model's layers over the remote devices (first) and the local ones, as it does over local
//! GPUs. [`devices`] lists what the servers offer, and [`LoadConfig::fit`](crate::LoadConfig::fit)
//! plans over them with [`FitOptions::rpc`](crate::FitOptions::rpc).
//!
//! **The protocol has no authentication and no encryption**: anyone who reaches a server's
//! port can run code on its device and read what it holds. A server binds to `127.0.0.1`
//! unless told otherwise; run one on another address only inside a network you trust (a
//! private link, a VPN, an SSH tunnel).
//!
//! ggml's own client ends the whole process when a server fails. Here ggml reaches every
//! server through a relay in this process (`link`), so an unreachable server, a server
//! that stops or answers with garbage is an [`Error::Rpc`] within the answer time limit
//! ([`LoadConfig::rpc_timeout`](crate::LoadConfig::rpc_timeout), default 30 s): from
//! [`Model::load`](crate::Model::load) when it happens there, otherwise from the next
//! [`Context::decode`](crate::Context::decode) of every context of that model.

mod answers;
mod front;
mod guard;
mod link;
mod peer;
mod wire;
mod worker;

use std::ffi::{c_char, c_void, CString};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use llama_cpp_sys_2 as sys;

use crate::devices::{BackendDevice, DeviceKind, RemoteDevice};
use crate::{Error, Result};

pub(crate) use link::Link;
pub use worker::worker_init;

/// How long a server may take to answer one command before it counts as failed (unless
/// [`LoadConfig::rpc_timeout`](crate::LoadConfig::rpc_timeout) says otherwise). A prompt's
/// whole computation on the remote device happens inside one such wait.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// The port `rpc-server` listens on by default (llama.cpp's).
pub const DEFAULT_PORT: u16 = 50052;

/// Every link this process opened, failed ones included (their devices stay in ggml's
/// registry, which cannot forget a backend).
static LINKS: Mutex<Vec<Arc<Link>>> = Mutex::new(Vec::new());

type AddServerFn = unsafe extern "C" fn(*const c_char) -> sys::ggml_backend_reg_t;
type StartServerFn = unsafe extern "C" fn(*const c_char, *const c_char, usize, usize, *mut sys::ggml_backend_dev_t);

/// Whether this build includes ggml's RPC backend (llama.cpp built with `GGML_RPC=ON`, as
/// this crate's own `.cargo/config.toml` does).
pub fn available() -> bool {
    rpc_reg().is_some()
}

fn rpc_reg() -> Option<sys::ggml_backend_reg_t> {
    crate::init::init();
    // SAFETY: a registry lookup by a NUL-terminated name.
    let reg = unsafe { sys::ggml_backend_reg_by_name(c"RPC".as_ptr()) };
    (!reg.is_null()).then_some(reg)
}

/// One of the RPC backend's functions, which its registry hands out by name.
fn rpc_fn(name: &std::ffi::CStr) -> Result<*mut c_void> {
    let reg = rpc_reg().ok_or_else(|| Error::Rpc {
        endpoint: String::new(),
        reason: "this build of llama.cpp has no RPC backend (build it with GGML_RPC=ON)".into(),
    })?;
    // SAFETY: `reg` is the registered RPC backend; the name is NUL-terminated.
    let f = unsafe { sys::ggml_backend_reg_get_proc_address(reg, name.as_ptr()) };
    if f.is_null() {
        return Err(Error::Rpc {
            endpoint: String::new(),
            reason: format!("the RPC backend does not offer {}", name.to_string_lossy()),
        });
    }
    Ok(f)
}

/// Checks a server's address: `HOST:PORT`, an IPv4 address or a host name (ggml's RPC
/// splits at the first colon, so IPv6 literals cannot be written).
pub fn check_endpoint(endpoint: &str) -> Result<()> {
    let bad = |why: &str| Error::invalid("RPC server address", format!("`{endpoint}`: {why} (expected HOST:PORT)"));
    let (host, port) = endpoint.rsplit_once(':').ok_or_else(|| bad("no port"))?;
    if host.is_empty() {
        return Err(bad("no host"));
    }
    if host.contains(':') || host.starts_with('[') {
        return Err(bad("IPv6 addresses are not supported by ggml's RPC; use an IPv4 address or a host name"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(bad("the port must be a number from 1 to 65535")),
    }
}

/// Reaches each server (through a new link, or the one already open to it) and registers
/// its devices with ggml. Returns the links in the order given.
pub(crate) fn attach(endpoints: &[String], timeout: Duration) -> Result<Vec<Arc<Link>>> {
    if endpoints.is_empty() {
        return Ok(Vec::new());
    }
    for e in endpoints {
        check_endpoint(e)?;
    }
    let add_server = rpc_fn(c"ggml_backend_rpc_add_server")?;
    // SAFETY: the RPC backend hands out `ggml_backend_rpc_add_server` under this name with
    // this signature (ggml-rpc.h).
    let add_server: AddServerFn = unsafe { std::mem::transmute::<*mut c_void, AddServerFn>(add_server) };
    crate::devices::set_remote_lookup(remote_device);
    let mut links = LINKS.lock().unwrap_or_else(|e| e.into_inner());
    let mut out = Vec::with_capacity(endpoints.len());
    for endpoint in endpoints {
        if out.iter().any(|l: &Arc<Link>| &l.remote == endpoint) {
            return Err(Error::invalid("RPC servers", format!("{endpoint} is named twice")));
        }
        if let Some(link) = links.iter().rev().find(|l| &l.remote == endpoint && l.failure().is_none()) {
            link.set_timeout(timeout);
            out.push(Arc::clone(link));
            continue;
        }
        let rpc_err = |reason: String| Error::Rpc { endpoint: endpoint.clone(), reason };
        let link = Link::open(endpoint, timeout).map_err(rpc_err)?;
        let local = CString::new(link.local.to_string()).expect("a socket address has no NUL");
        // SAFETY: a NUL-terminated `host:port`; ggml reaches the relay, which is listening.
        let reg = unsafe { add_server(local.as_ptr()) };
        links.push(Arc::clone(&link));
        if reg.is_null() {
            return Err(rpc_err(link.failure().unwrap_or_else(|| "the server offers no device".into())));
        }
        // SAFETY: `reg` is the backend ggml just made for this server; registering it adds
        // its devices to the global list (done once per link).
        let devices = unsafe {
            sys::ggml_backend_register(reg);
            (0..sys::ggml_backend_reg_dev_count(reg)).map(|i| sys::ggml_backend_reg_dev_get(reg, i) as usize).collect()
        };
        *link.devices.lock().unwrap_or_else(|e| e.into_inner()) = devices;
        if let Some(reason) = link.failure() {
            return Err(rpc_err(reason));
        }
        out.push(link);
    }
    Ok(out)
}

/// `Err` naming the first of these servers that failed.
pub(crate) fn check(links: &[Arc<Link>]) -> Result<()> {
    match links.iter().find_map(|l| l.failure().map(|reason| (l, reason))) {
        Some((link, reason)) => Err(Error::Rpc { endpoint: link.remote.clone(), reason }),
        None => Ok(()),
    }
}

/// Whether any server was ever attached in this process (then a load names its devices
/// itself, so that one model's servers are not used by another).
pub(crate) fn any_attached() -> bool {
    !LINKS.lock().unwrap_or_else(|e| e.into_inner()).is_empty()
}

/// The server a ggml device lives on, when it is a remote one (the lookup `devices` uses).
fn remote_device(dev: sys::ggml_backend_dev_t) -> Option<RemoteDevice> {
    let links = LINKS.lock().unwrap_or_else(|e| e.into_inner());
    let link = links.iter().find(|l| l.devices.lock().unwrap_or_else(|e| e.into_inner()).contains(&(dev as usize)))?;
    Some(RemoteDevice { server: link.remote.clone(), failed: link.failure().is_some() })
}

/// Names remote buffers by their server rather than by the relay ggml talks to
/// (`RPC0[127.0.0.1:LOCAL]` becomes `RPC0[HOST:PORT]`).
pub(crate) fn name_buffers(memory: &mut crate::MemoryBreakdown) {
    let links = LINKS.lock().unwrap_or_else(|e| e.into_inner());
    if links.is_empty() {
        return;
    }
    for buf in memory.weights.iter_mut().chain(memory.kv.iter_mut()).chain(memory.compute.iter_mut()) {
        for link in links.iter() {
            let local = format!("[{}]", link.local);
            if buf.name.contains(&local) {
                buf.name = buf.name.replace(&local, &format!("[{}]", link.remote));
            }
        }
    }
}

/// The devices these servers offer, with their memory (asked of each server now).
///
/// ```no_run
/// # fn main() -> rocm_llama::Result<()> {
/// for d in rocm_llama::rpc::devices(&["192.168.1.20:50052".to_string()], rocm_llama::rpc::DEFAULT_TIMEOUT)? {
///     println!("{} on {}: {} of {} bytes free", d.name, d.remote.as_deref().unwrap_or("?"), d.free, d.total);
/// }
/// # Ok(())
/// # }
/// ```
pub fn devices(endpoints: &[String], timeout: Duration) -> Result<Vec<BackendDevice>> {
    let links = attach(endpoints, timeout)?;
    let all = crate::devices::backend_devices();
    // Failed links' devices are not listed, so a server's name picks its live devices.
    let out = links
        .iter()
        .flat_map(|l| all.iter().filter(move |d| d.remote.as_deref() == Some(l.remote.as_str())).cloned())
        .collect();
    check(&links)?;
    Ok(out)
}

/// The ggml devices a model loads onto: these servers' devices (first, as llama.cpp orders
/// them), then the local GPUs llama.cpp would pick. `None` when no server was ever attached
/// in this process: llama.cpp's own default then gives the same list.
pub(crate) fn load_devices(links: &[Arc<Link>], local: Option<&[usize]>) -> Option<Vec<sys::ggml_backend_dev_t>> {
    if links.is_empty() && !any_attached() && local.is_none() {
        return None;
    }
    let mut list: Vec<sys::ggml_backend_dev_t> = Vec::new();
    for link in links {
        list.extend(
            link.devices.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|&d| d as sys::ggml_backend_dev_t),
        );
    }
    let local: Vec<usize> = match local {
        Some(picked) => picked.to_vec(),
        None => crate::devices::offload_devices(&crate::devices::backend_devices_unmeasured())
            .iter()
            .map(|d| d.index)
            .collect(),
    };
    for index in local {
        // SAFETY: `index` came from the registry, which only grows.
        list.push(unsafe { sys::ggml_backend_dev_get(index) });
    }
    list.push(std::ptr::null_mut());
    Some(list)
}

/// Settings of an RPC [`RpcServer`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RpcServerConfig {
    /// The address to listen on (default `127.0.0.1`: this machine only). Anything else
    /// lets whoever reaches the port use the device: see the module's documentation.
    pub host: String,
    /// The port (default 50052).
    pub port: u16,
    /// The local device to offer, by its index among the non-remote devices in
    /// [`backend_devices`](crate::devices::backend_devices) order (`None`: the first GPU, or
    /// the CPU when there is none).
    pub device: Option<usize>,
    /// CPU threads, when the device is the CPU (default: the cores this process may use).
    pub threads: Option<u32>,
    /// A folder where the server keeps large tensors it was sent, by hash, so that a client
    /// loading the same model again sends only hashes (`None`: no cache).
    pub cache_dir: Option<PathBuf>,
    /// Clients served at once, each by a worker process of its own (default 4); more are
    /// turned away.
    pub max_clients: usize,
    /// The longest a client may take to greet, and to send the rest of a command it began
    /// (default 30 s).
    pub timeout: Duration,
    /// The longest a client may stay silent between commands (`None`, the default: as long as
    /// it likes; ggml's client keeps its connection while the model is loaded).
    pub idle_timeout: Option<Duration>,
}

impl Default for RpcServerConfig {
    fn default() -> Self {
        RpcServerConfig {
            host: "127.0.0.1".into(),
            port: DEFAULT_PORT,
            device: None,
            threads: None,
            cache_dir: None,
            max_clients: 4,
            timeout: DEFAULT_TIMEOUT,
            idle_timeout: None,
        }
    }
}

crate::config::setters!(RpcServerConfig {
    host: String,
    port: u16,
    max_clients: usize,
    timeout: Duration,
} optional {
    device: usize,
    threads: u32,
    cache_dir: PathBuf,
    idle_timeout: Duration,
});

/// One local device offered to RPC clients over llama.cpp's RPC protocol.
///
/// ggml's own server ends its process on a malformed command and serves one client at a time.
/// This one checks every command before ggml sees it (lengths, buffers, tensors, graphs:
/// what ggml asserts on is refused and the connection closed) and runs ggml's server for each
/// client in a worker process of its own, so that what no check catches ends that worker,
/// not the server, and so that clients are served side by side. Workers are this program run
/// again: a program that runs an `RpcServer` calls [`worker_init`] first thing in `main`.
///
/// ```no_run
/// # fn main() -> rocm_llama::Result<()> {
/// use rocm_llama::rpc::{RpcServer, RpcServerConfig};
///
/// rocm_llama::rpc::worker_init(); // first thing in main
/// let server = RpcServer::new(&RpcServerConfig::default().port(50052))?;
/// eprintln!("offering {} on {}", server.device().name, server.endpoint());
/// server.run()?; // serves until the process ends
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct RpcServer {
    endpoint: String,
    device: BackendDevice,
    listener: TcpListener,
    front: front::FrontConfig,
}

impl RpcServer {
    /// Checks the settings and starts listening: the device exists and starts (a first
    /// worker is started and ended), the address is free, the cache folder can be made.
    pub fn new(config: &RpcServerConfig) -> Result<RpcServer> {
        let endpoint = format!("{}:{}", config.host, config.port);
        check_endpoint(&endpoint)?;
        rpc_fn(c"ggml_backend_rpc_start_server")?;
        if !worker::hooked() {
            return Err(Error::InvalidState(
                "an RPC server runs ggml in worker processes started from this program, which must call \
                 rocm_llama::rpc::worker_init() first thing in main"
                    .into(),
            ));
        }
        if config.max_clients == 0 {
            return Err(Error::invalid("max_clients", "must be at least 1"));
        }
        let local: Vec<BackendDevice> = crate::devices::backend_devices()
            .into_iter()
            .filter(|d| d.remote.is_none() && d.backend != "RPC")
            .collect();
        let device = match config.device {
            Some(i) => local.get(i).cloned().ok_or_else(|| {
                let names: Vec<String> = local.iter().enumerate().map(|(i, d)| format!("{i}: {}", d.name)).collect();
                Error::invalid("device", format!("device {i} does not exist (this build has {})", names.join(", ")))
            })?,
            None => crate::devices::offload_devices(&local)
                .first()
                .map(|d| (*d).clone())
                .or_else(|| local.iter().find(|d| d.kind == DeviceKind::Cpu).cloned())
                .ok_or_else(|| Error::Unsupported("this build has no device to offer".into()))?,
        };
        let listener = TcpListener::bind((config.host.as_str(), config.port))
            .map_err(|e| Error::Rpc { endpoint: endpoint.clone(), reason: format!("cannot listen there: {e}") })?;
        let cache_dir = match &config.cache_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir).map_err(|source| Error::Io { path: dir.clone(), source })?;
                let s = dir
                    .to_str()
                    .ok_or_else(|| Error::invalid("cache folder", format!("{} is not UTF-8", dir.display())))?;
                crate::error::c_string("cache folder", s)?;
                Some(s.to_string())
            }
            None => None,
        };
        let worker = worker::WorkerSpec {
            parent: std::process::id(),
            port: 0,
            device: device.index,
            threads: config.threads.unwrap_or_else(crate::threads::available_threads).max(1),
            cache_dir,
        };
        let version = front::probe(&worker, config.timeout).map_err(|reason| Error::Rpc {
            endpoint: endpoint.clone(),
            reason: format!("the device cannot be served: {reason}"),
        })?;
        let front = front::FrontConfig {
            timeout: config.timeout,
            idle_timeout: config.idle_timeout,
            max_clients: config.max_clients,
            worker,
            version,
        };
        Ok(RpcServer { endpoint, device, listener, front })
    }

    /// The device offered.
    pub fn device(&self) -> &BackendDevice {
        &self.device
    }

    /// `HOST:PORT`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Serves clients until the process ends. Returns only when the listener fails.
    pub fn run(self) -> Result<()> {
        let reason = match front::serve(self.listener, self.front) {
            Ok(()) => "the server stopped".to_string(),
            Err(e) => format!("the listener failed: {e}"),
        };
        Err(Error::Rpc { endpoint: self.endpoint, reason })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_checked() {
        assert!(check_endpoint("127.0.0.1:50052").is_ok());
        assert!(check_endpoint("gpu-box:1").is_ok());
        for bad in ["127.0.0.1", ":50052", "host:0", "host:70000", "host:port", "[::1]:50052", "::1:50052"] {
            assert!(matches!(check_endpoint(bad), Err(Error::InvalidArgument { .. })), "{bad}");
        }
    }
}
