//! Devices on other machines: llama.cpp's RPC backend.
//!
//! A machine runs [`Server`] (`rocm-llama rpc-server`) to offer one of its devices; a process
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

mod link;
mod peer;
mod wire;

use std::ffi::{c_char, c_void, CString};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use llama_cpp_sys_2 as sys;

use crate::devices::{BackendDevice, DeviceKind};
use crate::{Error, Result};

pub(crate) use link::Link;

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
    let bad = |why: &str| Error::InvalidConfig(format!("RPC server `{endpoint}`: {why} (expected HOST:PORT)"));
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
    let mut links = LINKS.lock().unwrap_or_else(|e| e.into_inner());
    let mut out = Vec::with_capacity(endpoints.len());
    for endpoint in endpoints {
        if out.iter().any(|l: &Arc<Link>| &l.remote == endpoint) {
            return Err(Error::InvalidConfig(format!("RPC server {endpoint} is named twice")));
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

/// The link a ggml device belongs to, when it is a remote one.
pub(crate) fn link_of_device(dev: sys::ggml_backend_dev_t) -> Option<Arc<Link>> {
    let links = LINKS.lock().unwrap_or_else(|e| e.into_inner());
    links.iter().find(|l| l.devices.lock().unwrap_or_else(|e| e.into_inner()).contains(&(dev as usize))).cloned()
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
pub(crate) fn load_devices(links: &[Arc<Link>]) -> Option<Vec<sys::ggml_backend_dev_t>> {
    if links.is_empty() && !any_attached() {
        return None;
    }
    let mut list: Vec<sys::ggml_backend_dev_t> = Vec::new();
    for link in links {
        list.extend(
            link.devices.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|&d| d as sys::ggml_backend_dev_t),
        );
    }
    let local = crate::devices::backend_devices_unmeasured();
    for d in crate::devices::offload_devices(&local) {
        // SAFETY: `index` came from the registry, which only grows.
        list.push(unsafe { sys::ggml_backend_dev_get(d.index) });
    }
    list.push(std::ptr::null_mut());
    Some(list)
}

/// Settings of an RPC [`Server`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerConfig {
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
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig { host: "127.0.0.1".into(), port: DEFAULT_PORT, device: None, threads: None, cache_dir: None }
    }
}

crate::config::setters!(ServerConfig {
    host: String,
    port: u16,
} optional {
    device: usize,
    threads: u32,
    cache_dir: PathBuf,
});

/// One local device offered to RPC clients (ggml's `ggml_backend_rpc_start_server`).
///
/// ```no_run
/// # fn main() -> rocm_llama::Result<()> {
/// use rocm_llama::rpc::{Server, ServerConfig};
///
/// let server = Server::new(&ServerConfig::default().port(50052))?;
/// eprintln!("offering {} on {}", server.device().name, server.endpoint());
/// server.run()?; // serves until the process ends
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Server {
    endpoint: String,
    device: BackendDevice,
    threads: u32,
    cache_dir: Option<CString>,
}

impl Server {
    /// Checks the settings (the device exists, the address is free, the cache folder can be
    /// made) without serving yet.
    pub fn new(config: &ServerConfig) -> Result<Server> {
        let endpoint = format!("{}:{}", config.host, config.port);
        check_endpoint(&endpoint)?;
        rpc_fn(c"ggml_backend_rpc_start_server")?;
        let local: Vec<BackendDevice> = crate::devices::backend_devices()
            .into_iter()
            .filter(|d| d.remote.is_none() && d.backend != "RPC")
            .collect();
        let device = match config.device {
            Some(i) => local.get(i).cloned().ok_or_else(|| {
                let names: Vec<String> = local.iter().enumerate().map(|(i, d)| format!("{i}: {}", d.name)).collect();
                Error::InvalidConfig(format!("device {i} does not exist (this build has {})", names.join(", ")))
            })?,
            None => crate::devices::offload_devices(&local)
                .first()
                .map(|d| (*d).clone())
                .or_else(|| local.iter().find(|d| d.kind == DeviceKind::Cpu).cloned())
                .ok_or_else(|| Error::InvalidConfig("this build has no device to offer".into()))?,
        };
        // ggml reports a port it cannot take only on stderr; find out here.
        TcpListener::bind((config.host.as_str(), config.port))
            .map_err(|e| Error::Rpc { endpoint: endpoint.clone(), reason: format!("cannot listen there: {e}") })?;
        let cache_dir = match &config.cache_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir).map_err(|source| Error::Io { path: dir.clone(), source })?;
                let s = dir
                    .to_str()
                    .ok_or_else(|| Error::InvalidConfig(format!("cache folder {} is not UTF-8", dir.display())))?;
                Some(crate::error::c_string("cache folder", s)?)
            }
            None => None,
        };
        let threads = config.threads.unwrap_or_else(crate::threads::available_threads).max(1);
        Ok(Server { endpoint, device, threads, cache_dir })
    }

    /// The device offered.
    pub fn device(&self) -> &BackendDevice {
        &self.device
    }

    /// `HOST:PORT`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Serves clients one at a time until the process ends. Returns only when ggml cannot
    /// start (the address was taken in the meantime, the device cannot start).
    pub fn run(self) -> Result<()> {
        let start = rpc_fn(c"ggml_backend_rpc_start_server")?;
        // SAFETY: the RPC backend hands out `ggml_backend_rpc_start_server` under this name
        // with this signature (ggml-rpc.h).
        let start: StartServerFn = unsafe { std::mem::transmute::<*mut c_void, StartServerFn>(start) };
        let endpoint = crate::error::c_string("RPC endpoint", &self.endpoint)?;
        // SAFETY: the index came from the registry, which only grows.
        let mut dev = unsafe { sys::ggml_backend_dev_get(self.device.index) };
        let cache = self.cache_dir.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
        // SAFETY: valid C strings and one device that outlive the call; ggml serves until it
        // fails to listen or to start the device.
        unsafe { start(endpoint.as_ptr(), cache, self.threads as usize, 1, &mut dev) };
        Err(Error::Rpc {
            endpoint: self.endpoint,
            reason: "the server stopped (it could not listen there or could not start the device; see above)".into(),
        })
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
            assert!(matches!(check_endpoint(bad), Err(Error::InvalidConfig(_))), "{bad}");
        }
    }
}
