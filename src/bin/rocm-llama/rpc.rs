//! `rpc-server`: offers one of this machine's devices to other machines' rocm-llama or
//! llama.cpp (their `--rpc HOST:PORT`).

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use rocm_llama::accounting::gib;
use rocm_llama::rpc::{RpcServer, RpcServerConfig, DEFAULT_PORT};

use crate::AnyResult;

#[derive(Args)]
pub struct RpcServerArgs {
    /// The address to listen on. The RPC protocol has no authentication or encryption:
    /// anything but loopback lets whoever reaches the port use the device.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// The port to listen on.
    #[arg(short, long, default_value_t = DEFAULT_PORT)]
    port: u16,
    /// The device to offer, by its index in `rocm-llama devices` (llama.cpp's list) [default:
    /// the first GPU, or the CPU].
    #[arg(short, long)]
    device: Option<usize>,
    /// CPU threads when the device is the CPU [default: the cores this process may use].
    #[arg(short, long)]
    threads: Option<u32>,
    /// Keep large tensors sent by clients in this folder, by hash, so that loading the same
    /// model again sends only hashes.
    #[arg(short, long)]
    cache: Option<PathBuf>,
    /// Clients served at once, each by a worker process of its own; more are turned away.
    #[arg(long, default_value_t = 4)]
    max_clients: usize,
    /// Seconds a client may take to greet, and to send the rest of a command it began.
    #[arg(long = "timeout", visible_alias = "to", default_value_t = 30)]
    timeout: u64,
    /// Seconds a client may stay silent between commands [default: no limit; llama.cpp
    /// clients keep their connection while the model is loaded].
    #[arg(long)]
    idle_timeout: Option<u64>,
}

/// Whether clients can reach `host` only from this machine.
fn is_loopback(host: &str) -> bool {
    host == "localhost" || host.parse::<std::net::Ipv4Addr>().is_ok_and(|a| a.is_loopback())
}

pub fn rpc_server(args: RpcServerArgs) -> AnyResult<()> {
    let mut config = RpcServerConfig::default().host(args.host.clone()).port(args.port);
    config = config.device(args.device).threads(args.threads).cache_dir(args.cache.clone());
    config = config.max_clients(args.max_clients).timeout(Duration::from_secs(args.timeout.max(1)));
    config = config.idle_timeout(args.idle_timeout.map(|s| Duration::from_secs(s.max(1))));
    let server = RpcServer::new(&config)?;
    let d = server.device();
    eprintln!(
        "rpc-server: offering {} ({}, {} free of {}) on {} (Ctrl-C stops it)",
        d.name,
        d.description,
        gib(d.free),
        gib(d.total),
        server.endpoint()
    );
    if !is_loopback(&args.host) {
        eprintln!(
            "warning: {} is not a loopback address. The RPC protocol has no authentication and no encryption: anyone \
             who reaches this port can run code on this device and read what it holds. Serve only inside a network \
             you trust.",
            args.host
        );
    }
    // A client that leaves while the server writes to it must not end the server (ggml sends
    // without MSG_NOSIGNAL).
    // SAFETY: a disposition set before this command starts any thread of its own.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    // Ctrl-C and SIGTERM end the process at once: ggml's server loop cannot be asked to return.
    crate::signals::on_signal(|signal| {
        eprintln!("rpc-server: stopped ({})", signal.name());
        crate::signals::Action::Exit(0)
    });
    server.run()?;
    Ok(())
}
