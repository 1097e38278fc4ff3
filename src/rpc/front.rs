//! `rpc-server`'s front: what clients reach instead of ggml's server.
//!
//! ggml's server ends its process on a malformed command and serves one client at a time
//! (an idle one blocks everyone). The front listens on the server's address and gives each
//! client a worker process of its own (`worker`), which runs ggml's server on a loopback port
//! for that client only. Between the two it reads every command: it answers the greeting
//! itself, refuses what `guard` finds malformed (the connection closes, as ggml's own
//! server closes it), bounds every length by what the client holds, and passes the rest on.
//! A worker that ends anyway (an operation whose shapes do not fit, which only ggml can tell)
//! closes its client's connection; the server and other clients go on.
//!
//! Clients are served at the same time, each by its own worker, up to a limit; a client that
//! stops in the middle of a command is dropped after the time limit; a client idle between
//! commands is dropped only when an idle limit is set (ggml's client keeps its connection
//! for as long as the model is loaded).

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::guard::{self, Buffers, Span};
use super::wire::*;
use super::worker::{WorkerSpec, WORKER_ENV};

/// Chunk of a streamed `set_tensor` or `get_tensor`.
const CHUNK: usize = 1 << 20;

/// How the front serves.
#[derive(Debug, Clone)]
pub(crate) struct FrontConfig {
    /// Limit on the greeting and on each read inside a command.
    pub(crate) timeout: Duration,
    /// Limit between commands (`None`: none).
    pub(crate) idle_timeout: Option<Duration>,
    /// Clients served at once; more are turned away.
    pub(crate) max_clients: usize,
    /// What every worker is started with (its port is chosen per worker).
    pub(crate) worker: WorkerSpec,
    /// The protocol version the workers speak (from a first worker).
    pub(crate) version: (u8, u8, u8),
}

/// Accepts clients until the listener fails.
pub(crate) fn serve(listener: TcpListener, config: FrontConfig) -> io::Result<()> {
    let config = Arc::new(config);
    let active = Arc::new(AtomicUsize::new(0));
    loop {
        let client = match listener.accept() {
            Ok((client, _)) => client,
            // Only a listener that is no longer one ends the server.
            Err(e) if e.raw_os_error().is_some_and(|c| [libc::EBADF, libc::EINVAL, libc::ENOTSOCK].contains(&c)) => {
                return Err(e);
            }
            // A client gone before it was accepted, out of descriptors or memory: go on.
            Err(e) => {
                if e.kind() != io::ErrorKind::ConnectionAborted {
                    tracing::warn!("rpc-server: cannot accept a client: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
                continue;
            }
        };
        let peer = client.peer_addr().map_or_else(|_| "?".to_string(), |a| a.to_string());
        if active.fetch_add(1, Ordering::AcqRel) >= config.max_clients {
            active.fetch_sub(1, Ordering::AcqRel);
            tracing::warn!("rpc-server: turned {peer} away: {} clients are being served", config.max_clients);
            continue;
        }
        // Counted out when the closure ends or, if no thread starts, when it is dropped.
        let (config, count) = (Arc::clone(&config), Leaving(Arc::clone(&active)));
        let spawned = std::thread::Builder::new().name("rpc-client".into()).spawn(move || {
            tracing::info!("rpc-server: client {peer} connected");
            let mut session = Session::new(client, &config);
            match session.run() {
                Ok(()) => tracing::info!("rpc-server: client {peer} left"),
                Err(why) => tracing::warn!("rpc-server: client {peer} dropped: {why}"),
            }
            // The worker ends and the place frees before the client sees its connection
            // close, so that a client that reconnects at once finds the place free.
            session.worker = None;
            drop(count);
        });
        if let Err(e) = spawned {
            tracing::warn!("rpc-server: cannot start a thread for a client: {e}");
        }
    }
}

/// Starts a worker and ends it again: whether workers start (the program calls
/// `worker_init`, the device starts), and the protocol version they speak.
pub(crate) fn probe(worker: &WorkerSpec, timeout: Duration) -> Result<(u8, u8, u8), String> {
    Worker::start(worker, timeout).map(|(_, version)| version)
}

/// Counts a client out when its thread ends, however it ends.
struct Leaving(Arc<AtomicUsize>);

impl Drop for Leaving {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One client and, from its first command on, its worker.
struct Session<'a> {
    client: TcpStream,
    config: &'a FrontConfig,
    worker: Option<Worker>,
    buffers: Buffers,
}

impl<'a> Session<'a> {
    fn new(client: TcpStream, config: &'a FrontConfig) -> Session<'a> {
        Session { client, config, worker: None, buffers: Buffers::default() }
    }

    fn run(&mut self) -> Result<(), String> {
        let _ = self.client.set_nodelay(true);
        self.client.set_write_timeout(Some(self.config.timeout)).map_err(|e| e.to_string())?;
        self.client.set_read_timeout(Some(self.config.timeout)).map_err(|e| e.to_string())?;
        let mut head = [0u8; 9];
        read_from_client(&mut self.client, &mut head, "the greeting")?;
        let len = u64_at(&head, 1);
        if head[0] != CMD_HELLO || len != HELLO_REQUEST_LEN as u64 {
            let text = head.iter().all(|b| b.is_ascii_graphic() || *b == b' ');
            return Err(if text {
                format!("it began with text (`{}`), not the RPC greeting", String::from_utf8_lossy(&head))
            } else {
                format!("it began with {} ({len} bytes), not the RPC greeting", command_name(head[0]))
            });
        }
        // The client's transport capabilities: none are offered back, so it stays plain TCP.
        read_from_client(&mut self.client, &mut [0u8; HELLO_REQUEST_LEN], "the greeting")?;
        send_answer(&mut self.client, &hello_answer(self.config.version))?;
        loop {
            self.client.set_read_timeout(self.config.idle_timeout).map_err(|e| e.to_string())?;
            let mut cmd = [0u8; 1];
            match self.client.read(&mut cmd) {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if is_timeout(&e) => return Err("idle for longer than the idle limit".into()),
                Err(e) => return Err(format!("reading a command: {e}")),
            }
            self.client.set_read_timeout(Some(self.config.timeout)).map_err(|e| e.to_string())?;
            self.command(cmd[0])?;
        }
    }

    /// Reads one command, checks it, passes it on and passes its answer back.
    fn command(&mut self, cmd: u8) -> Result<(), String> {
        let name = command_name(cmd);
        let mut len = [0u8; 8];
        read_from_client(&mut self.client, &mut len, name)?;
        let len = u64::from_le_bytes(len);
        guard::check_length(cmd, len, &self.buffers).map_err(|e| format!("refused: {e}"))?;
        let worker = worker_or_start(&mut self.worker, self.config)?;
        let (client, buffers) = (&mut self.client, &mut self.buffers);
        let request = if cmd == CMD_SET_TENSOR {
            let mut header = vec![0u8; guard::SET_TENSOR_HEADER];
            read_from_client(client, &mut header, name)?;
            let data = len - header.len() as u64;
            guard::check_set_tensor(&header, data, buffers).map_err(|e| format!("refused: {e}"))?;
            worker.send(cmd, len, &header)?;
            match copy(client, &mut worker.conn, data) {
                Err(CopyFailed::Read(e)) => return Err(format!("reading {name} data: {e}")),
                Err(CopyFailed::Write(e)) => return Err(worker.ended(name, e)),
                Ok(()) => {}
            }
            header
        } else {
            // At most MAX_GRAPH_BYTES (a graph) or a few KB (everything else).
            let mut request = vec![0u8; len as usize];
            read_from_client(client, &mut request, name)?;
            guard::check_request(cmd, &request, buffers).map_err(|e| format!("refused: {e}"))?;
            worker.send(cmd, len, &request)?;
            request
        };
        let Some(answer_len) = answer_len(cmd, &request)? else {
            if cmd == CMD_FREE_BUFFER {
                buffers.remove(u64_at(&request, 0));
            }
            return Ok(());
        };
        // ggml computes a graph when the next answer is asked for, however long it takes; a
        // client that leaves meanwhile ends its worker.
        wait_for_answer(&worker.conn, client).map_err(|e| format!("{e} while its worker computed {name}"))?;
        let got = worker.answer_len(name)?;
        if got != answer_len as u64 {
            return Err(worker.ended(name, format!("its answer to {name} has {got} bytes, not {answer_len}")));
        }
        if cmd == CMD_GET_TENSOR {
            client.write_all(&got.to_le_bytes()).map_err(|e| format!("writing to the client: {e}"))?;
            return match copy(&mut worker.conn, client, got) {
                Err(CopyFailed::Read(e)) => Err(worker.ended(name, e)),
                Err(CopyFailed::Write(e)) => Err(format!("writing to the client: {e}")),
                Ok(()) => Ok(()),
            };
        }
        let mut answer = vec![0u8; answer_len];
        worker.read(&mut answer, name)?;
        if cmd == CMD_ALLOC_BUFFER {
            let (handle, size) = (u64_at(&answer, 0), u64_at(&answer, 8));
            if handle != 0 {
                let base = worker.buffer_base(handle)?;
                buffers.insert(handle, Span { base, size });
            }
        }
        send_answer(client, &answer)
    }
}

/// The session's worker, started at its first command.
fn worker_or_start<'w>(slot: &'w mut Option<Worker>, config: &FrontConfig) -> Result<&'w mut Worker, String> {
    if slot.is_none() {
        let (worker, version) = Worker::start(&config.worker, config.timeout)?;
        if version != config.version {
            return Err(format!("a worker speaks protocol {version:?}, the first one {:?}", config.version));
        }
        *slot = Some(worker);
    }
    Ok(slot.as_mut().expect("started above"))
}

/// A worker process and the front's connection to its ggml server.
struct Worker {
    child: Child,
    conn: TcpStream,
}

impl Worker {
    /// Starts a worker on a free loopback port and connects to it (a few tries, in case
    /// another program takes the port first).
    fn start(spec: &WorkerSpec, timeout: Duration) -> Result<(Worker, (u8, u8, u8)), String> {
        let mut last = String::new();
        for _ in 0..3 {
            match Worker::try_start(spec, timeout) {
                Ok(worker) => return Ok(worker),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn try_start(spec: &WorkerSpec, timeout: Duration) -> Result<(Worker, (u8, u8, u8)), String> {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free loopback port for a worker: {e}"))?
            .port();
        let exe = std::env::current_exe().map_err(|e| format!("cannot find this program to start a worker: {e}"))?;
        let spec = WorkerSpec { port, ..spec.clone() };
        let mut child = Command::new(exe)
            .env(WORKER_ENV, spec.encode())
            // A worker that ggml aborts should end at once, not attach a debugger for a backtrace.
            .env("GGML_NO_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start a worker: {e}"))?;
        let conn = match connect_to_worker(port, &mut child, timeout) {
            Ok(conn) => conn,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
        };
        let mut worker = Worker { child, conn };
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        if !super::peer::listener_belongs_to(addr, worker.child.id()) {
            return Err(format!("port {port} was taken by another program before the worker listened"));
        }
        // A program that reached the worker's port first would hold it: wait for the greeting
        // only so long.
        worker.conn.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
        let version = worker.greet()?;
        worker.conn.set_read_timeout(None).map_err(|e| e.to_string())?;
        Ok((worker, version))
    }

    /// The greeting: the version the worker speaks.
    fn greet(&mut self) -> Result<(u8, u8, u8), String> {
        self.conn.write_all(&hello_request()).map_err(|e| self.ended("hello", e))?;
        let len = self.answer_len("hello")?;
        let mut payload = vec![0u8; if len == HELLO_ANSWER_LEN as u64 { HELLO_ANSWER_LEN } else { 0 }];
        self.read(&mut payload, "hello")?;
        parse_hello_answer(len, &payload)
    }

    fn send(&mut self, cmd: u8, len: u64, payload: &[u8]) -> Result<(), String> {
        let mut head = [0u8; 9];
        head[0] = cmd;
        head[1..].copy_from_slice(&len.to_le_bytes());
        let sent = self.conn.write_all(&head).and_then(|_| self.conn.write_all(payload));
        sent.map_err(|e| self.ended(command_name(cmd), e))
    }

    fn answer_len(&mut self, what: &str) -> Result<u64, String> {
        let mut len = [0u8; 8];
        self.read(&mut len, what)?;
        Ok(u64::from_le_bytes(len))
    }

    fn read(&mut self, buf: &mut [u8], what: &str) -> Result<(), String> {
        let read = self.conn.read_exact(buf);
        read.map_err(|e| self.ended(what, e))
    }

    /// Asks the worker where a buffer it just allocated starts.
    fn buffer_base(&mut self, handle: u64) -> Result<u64, String> {
        self.send(CMD_BUFFER_GET_BASE, 8, &handle.to_le_bytes())?;
        let len = self.answer_len("buffer_get_base")?;
        if len != 8 {
            return Err(self.ended("buffer_get_base", format!("an answer of {len} bytes")));
        }
        let mut base = [0u8; 8];
        self.read(&mut base, "buffer_get_base")?;
        Ok(u64::from_le_bytes(base))
    }

    /// Why talking to the worker failed: how it ended, when it did; otherwise ggml's server
    /// closed the connection itself (it refuses a handle it does not know that way).
    fn ended(&mut self, what: &str, e: impl std::fmt::Display) -> String {
        // A worker that ggml ended has closed its socket by exiting: its status is near.
        let deadline = Instant::now() + Duration::from_millis(500);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return format!("the worker ended during {what} ({status}): ggml could not serve that command");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        format!("ggml's server refused {what} ({e})")
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Connects to a starting worker's port, waiting for it to listen (device start-up takes
/// up to a few seconds) but at most `limit` plus ten seconds.
fn connect_to_worker(port: u16, child: &mut Child, limit: Duration) -> Result<TcpStream, String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let deadline = Instant::now() + limit + Duration::from_secs(10);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("the worker ended before it listened ({status}; its message is above)"));
        }
        match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            Ok(conn) => {
                let _ = conn.set_nodelay(true);
                return Ok(conn);
            }
            Err(e) if Instant::now() > deadline => return Err(format!("the worker never listened: {e}")),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Waits until the worker has an answer (or closed), or `Err` once the client has gone.
fn wait_for_answer(worker: &TcpStream, client: &TcpStream) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    let mut fds = [
        libc::pollfd { fd: worker.as_raw_fd(), events: libc::POLLIN, revents: 0 },
        libc::pollfd { fd: client.as_raw_fd(), events: libc::POLLRDHUP, revents: 0 },
    ];
    loop {
        // SAFETY: two valid pollfd entries that outlive the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(format!("waiting: {e}"));
        }
        if fds[0].revents != 0 {
            return Ok(());
        }
        if fds[1].revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0 {
            return Err("it left".into());
        }
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}

fn read_from_client(client: &mut TcpStream, buf: &mut [u8], what: &str) -> Result<(), String> {
    client.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => format!("it closed the connection inside {what}"),
        _ if is_timeout(&e) => format!("it stopped sending inside {what}"),
        _ => format!("reading {what}: {e}"),
    })
}

fn send_answer(client: &mut TcpStream, answer: &[u8]) -> Result<(), String> {
    let sent = client.write_all(&(answer.len() as u64).to_le_bytes()).and_then(|_| client.write_all(answer));
    sent.map_err(|e| format!("writing to the client: {e}"))
}

/// Which side of a [`copy`] failed.
enum CopyFailed {
    Read(io::Error),
    Write(io::Error),
}

/// Passes `n` bytes from one connection to the other in chunks.
fn copy(from: &mut TcpStream, to: &mut TcpStream, mut n: u64) -> Result<(), CopyFailed> {
    let mut buf = vec![0u8; CHUNK.min(usize::try_from(n).unwrap_or(CHUNK))];
    while n > 0 {
        let take = usize::try_from(n).unwrap_or(usize::MAX).min(buf.len());
        from.read_exact(&mut buf[..take]).map_err(CopyFailed::Read)?;
        to.write_all(&buf[..take]).map_err(CopyFailed::Write)?;
        n -= take as u64;
    }
    Ok(())
}
