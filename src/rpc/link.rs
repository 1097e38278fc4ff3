//! The relay that keeps a lost server from killing this process.
//!
//! ggml's RPC client aborts the whole process when a server fails to answer
//! (`GGML_ABORT("Remote RPC server crashed or returned malformed response")`), and it waits
//! forever on a server that stops answering. So ggml never talks to a server directly: each
//! server gets a [`Link`], a listener on `127.0.0.1` that ggml connects to instead, and a
//! thread per connection that passes every command on, with a time limit on each answer and a
//! check of each answer's length. When the server closes, resets, times out or answers with
//! the wrong length, the link records why, and from then on answers ggml itself with
//! stand-ins of the right shape ([`wire::stand_in_answer`]): ggml's call finishes (with
//! meaningless numbers, no buffer from an allocation), and the model that uses the link
//! returns [`Error::Rpc`](crate::Error::Rpc) from its next call and every call after. A failed
//! link stays failed; the next load with the same server makes a new one.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::answers::AnswerCheck;
use super::wire;

/// Requests up to this size are read whole before they go on; larger ones (weights in
/// `set_tensor`, large graphs) are passed on in chunks of this size.
const CHUNK: usize = 1 << 20;
/// The longest a connection attempt waits, whatever the answer time limit.
const CONNECT_LIMIT: Duration = Duration::from_secs(10);

/// One server as this process reaches it (see the module's documentation).
pub(crate) struct Link {
    /// The server as the caller named it (`HOST:PORT`).
    pub(crate) remote: String,
    addrs: Vec<SocketAddr>,
    /// Where ggml connects: the relay's own listener.
    pub(crate) local: SocketAddr,
    /// The server's protocol version, from the first greeting.
    version: (u8, u8, u8),
    timeout_ms: AtomicU64,
    failed: AtomicBool,
    failure: Mutex<Option<String>>,
    /// ggml's devices for this server (`ggml_backend_dev_t` as addresses), once registered.
    pub(crate) devices: Mutex<Vec<usize>>,
    /// What the server said so far (on any of ggml's connections), against which its next
    /// answers are checked.
    told: Mutex<AnswerCheck>,
}

impl Link {
    /// Reaches the server once (connect, greeting, version), then starts the relay's
    /// listener. `Err` says why the server cannot be used.
    pub(crate) fn open(remote: &str, timeout: Duration) -> Result<Arc<Link>, String> {
        let addrs: Vec<SocketAddr> = remote
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve the address: {e}"))?
            .filter(SocketAddr::is_ipv4)
            .collect();
        if addrs.is_empty() {
            return Err("the name has no IPv4 address (ggml's RPC connects over IPv4)".into());
        }
        let (stream, version) = connect(&addrs, timeout)?;
        drop(stream);
        let listener =
            TcpListener::bind(("127.0.0.1", 0)).map_err(|e| format!("cannot open the relay's local listener: {e}"))?;
        let local = listener.local_addr().map_err(|e| format!("the relay's local listener: {e}"))?;
        let link = Arc::new(Link {
            remote: remote.to_string(),
            addrs,
            local,
            version,
            timeout_ms: AtomicU64::new(millis(timeout)),
            failed: AtomicBool::new(false),
            failure: Mutex::new(None),
            devices: Mutex::new(Vec::new()),
            told: Mutex::new(AnswerCheck::default()),
        });
        let accepting = Arc::clone(&link);
        std::thread::Builder::new()
            .name("rpc-relay".into())
            .spawn(move || {
                for client in listener.incoming().flatten() {
                    // Only ggml's client in this process: a stranger on loopback could
                    // otherwise hold the server or send commands ggml never would.
                    if !super::peer::is_this_process(&client, local) {
                        tracing::warn!(
                            "rpc: refused a connection to the relay from {:?}: not this process",
                            client.peer_addr().ok()
                        );
                        continue;
                    }
                    let link = Arc::clone(&accepting);
                    let spawned = std::thread::Builder::new().name("rpc-relay-conn".into()).spawn(move || {
                        relay(&link, client);
                    });
                    if let Err(e) = spawned {
                        tracing::warn!("rpc: cannot start a relay thread: {e}");
                    }
                }
            })
            .map_err(|e| format!("cannot start the relay thread: {e}"))?;
        tracing::debug!("rpc: {remote} (protocol {}.{}.{}) relayed through {local}", version.0, version.1, version.2);
        Ok(link)
    }

    /// Why the server can no longer be used, once it cannot.
    pub(crate) fn failure(&self) -> Option<String> {
        if !self.failed.load(Ordering::Acquire) {
            return None;
        }
        self.failure.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Sets the time limit on each answer from now on.
    pub(crate) fn set_timeout(&self, timeout: Duration) {
        self.timeout_ms.store(millis(timeout), Ordering::Relaxed);
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms.load(Ordering::Relaxed))
    }

    /// Records the first reason the server failed.
    fn fail(&self, reason: String) {
        let mut failure = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        if failure.is_none() {
            tracing::warn!("rpc: server {} failed: {reason}", self.remote);
            *failure = Some(reason);
        }
        self.failed.store(true, Ordering::Release);
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// Connects to the first address that answers and greets the server: its protocol version.
fn connect(addrs: &[SocketAddr], timeout: Duration) -> Result<(TcpStream, (u8, u8, u8)), String> {
    let mut last = String::new();
    for addr in addrs {
        match TcpStream::connect_timeout(addr, timeout.min(CONNECT_LIMIT)) {
            Ok(mut stream) => {
                let setup = stream
                    .set_nodelay(true)
                    .and_then(|_| stream.set_read_timeout(Some(timeout)))
                    .and_then(|_| stream.set_write_timeout(Some(timeout)));
                setup.map_err(|e| format!("cannot set up the connection: {e}"))?;
                let version = greet(&mut stream, timeout)?;
                return Ok((stream, version));
            }
            Err(e) => last = format!("cannot connect: {}", describe(&e, "connect", timeout)),
        }
    }
    Err(last)
}

/// Sends the greeting and reads the server's version.
fn greet(stream: &mut TcpStream, timeout: Duration) -> Result<(u8, u8, u8), String> {
    let not_rpc = |e: &io::Error| {
        format!(
            "{} at the RPC greeting (not a llama.cpp RPC server, or one busy with another client)",
            describe(e, "hello", timeout)
        )
    };
    stream.write_all(&wire::hello_request()).map_err(|e| not_rpc(&e))?;
    let mut len = [0u8; 8];
    stream.read_exact(&mut len).map_err(|e| not_rpc(&e))?;
    let len = u64::from_le_bytes(len);
    let mut payload = vec![0u8; if len == wire::HELLO_ANSWER_LEN as u64 { wire::HELLO_ANSWER_LEN } else { 0 }];
    stream.read_exact(&mut payload).map_err(|e| not_rpc(&e))?;
    wire::parse_hello_answer(len, &payload)
}

/// An I/O error in words a user can act on.
fn describe(e: &io::Error, what: &str, timeout: Duration) -> String {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            format!("no answer to {what} within {:.1} s", timeout.as_secs_f64())
        }
        io::ErrorKind::UnexpectedEof => format!("the server closed the connection during {what}"),
        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => {
            format!("the connection was reset during {what} (the server stopped?)")
        }
        io::ErrorKind::ConnectionRefused => "connection refused (no server on that port?)".to_string(),
        _ => format!("{what}: {e}"),
    }
}

/// Serves one connection from ggml's client until it closes.
fn relay(link: &Link, mut client: TcpStream) {
    let _ = client.set_nodelay(true);
    let mut server = if link.failure().is_some() {
        None
    } else {
        match connect(&link.addrs, link.timeout()) {
            Ok((stream, _)) => Some(stream),
            Err(e) => {
                link.fail(format!("reconnecting: {e}"));
                None
            }
        }
    };
    let mut head = [0u8; 9];
    let mut buf = Vec::new();
    while client.read_exact(&mut head).is_ok() {
        let cmd = head[0];
        let len = u64::from_le_bytes(head[1..].try_into().unwrap_or_default());
        let Ok(len) = usize::try_from(len) else { break };
        if cmd == wire::CMD_HELLO {
            // Every connection starts so; the relay already greeted the server.
            buf.resize(len.min(CHUNK), 0);
            if len > CHUNK || client.read_exact(&mut buf).is_err() {
                break;
            }
            if answer(&mut client, &wire::hello_answer(link.version)).is_err() {
                break;
            }
            continue;
        }
        let answer_len = if len <= CHUNK {
            buf.resize(len, 0);
            if client.read_exact(&mut buf).is_err() {
                break;
            }
            if let Some(s) = server.as_mut() {
                if let Err(e) = s.write_all(&head).and_then(|_| s.write_all(&buf)) {
                    link.fail(describe(&e, wire::command_name(cmd), link.timeout()));
                    server = None;
                }
            }
            wire::answer_len(cmd, &buf)
        } else {
            buf.clear();
            if !pass_on_large(link, &mut client, &mut server, &head, len) {
                break;
            }
            wire::answer_len(cmd, &[])
        };
        let answer_len = match answer_len {
            Ok(n) => n,
            Err(e) => {
                // Cannot happen with the pinned llama.cpp; if it does, the client's answer
                // lengths are unknown, so the server cannot be followed any more.
                link.fail(format!("unreadable request from ggml: {e}"));
                server = None;
                None
            }
        };
        let Some(n) = answer_len else { continue };
        if n > CHUNK {
            // Tensor reads (logits) go on as they arrive instead of whole.
            if stream_answer(link, &mut server, &mut client, cmd, n).is_err() {
                break;
            }
            continue;
        }
        let reply = match server.as_mut().map(|s| read_answer(s, cmd, n, link.timeout())) {
            Some(Ok(reply)) => match link.told.lock().unwrap_or_else(|e| e.into_inner()).check(cmd, &buf, &reply) {
                Ok(()) => reply,
                Err(why) => {
                    link.fail(format!("it answered {} with {why}", wire::command_name(cmd)));
                    server = None;
                    wire::stand_in_answer(cmd, &buf, n)
                }
            },
            Some(Err(reason)) => {
                link.fail(reason);
                server = None;
                wire::stand_in_answer(cmd, &buf, n)
            }
            None => wire::stand_in_answer(cmd, &buf, n),
        };
        if answer(&mut client, &reply).is_err() {
            break;
        }
    }
    if let Some(s) = server {
        let _ = s.shutdown(Shutdown::Both);
    }
}

/// Passes a large request on in chunks; keeps reading it from the client when the server
/// fails part way. `false` when the client is gone.
fn pass_on_large(link: &Link, client: &mut TcpStream, server: &mut Option<TcpStream>, head: &[u8], len: usize) -> bool {
    let cmd = head[0];
    if let Some(s) = server.as_mut() {
        if let Err(e) = s.write_all(head) {
            link.fail(describe(&e, wire::command_name(cmd), link.timeout()));
            *server = None;
        }
    }
    let mut chunk = vec![0u8; CHUNK];
    let mut left = len;
    while left > 0 {
        let n = left.min(CHUNK);
        if client.read_exact(&mut chunk[..n]).is_err() {
            return false;
        }
        if let Some(s) = server.as_mut() {
            if let Err(e) = s.write_all(&chunk[..n]) {
                link.fail(describe(&e, wire::command_name(cmd), link.timeout()));
                *server = None;
            }
        }
        left -= n;
    }
    true
}

/// Passes a large answer on in chunks as it arrives, after checking its length. When the
/// server fails part way, the rest is zeros (the client is owed `n` bytes) and the link is
/// failed. `Err` only when the client is gone.
fn stream_answer(
    link: &Link,
    server: &mut Option<TcpStream>,
    client: &mut TcpStream,
    cmd: u8,
    n: usize,
) -> io::Result<()> {
    let name = wire::command_name(cmd);
    let timeout = link.timeout();
    if let Some(s) = server.as_mut() {
        if let Err(reason) = read_answer_len(s, cmd, n, timeout) {
            link.fail(reason);
            *server = None;
        }
    }
    // Without a server the answer is zeros, written as they are counted (never `n` bytes
    // held at once: `n` is what the request asked for).
    client.write_all(&(n as u64).to_le_bytes())?;
    let mut chunk = vec![0u8; CHUNK];
    let mut left = n;
    while left > 0 {
        let want = left.min(CHUNK);
        let got = match server.as_mut().map(|s| s.read(&mut chunk[..want])) {
            Some(Ok(0)) => Err("the server closed the connection".to_string()),
            Some(Ok(k)) => Ok(k),
            Some(Err(e)) => Err(describe(&e, name, timeout)),
            None => {
                chunk[..want].fill(0);
                Ok(want)
            }
        };
        let k = match got {
            Ok(k) => k,
            Err(reason) => {
                link.fail(format!("{reason} (during {name})"));
                *server = None;
                chunk[..want].fill(0);
                want
            }
        };
        client.write_all(&chunk[..k])?;
        left -= k;
    }
    Ok(())
}

/// Reads the length that starts the server's answer to `cmd`, which must be `n`.
fn read_answer_len(server: &mut TcpStream, cmd: u8, n: usize, timeout: Duration) -> Result<(), String> {
    let name = wire::command_name(cmd);
    let mut len = [0u8; 8];
    server.read_exact(&mut len).map_err(|e| describe(&e, name, timeout))?;
    let len = u64::from_le_bytes(len);
    if len != n as u64 {
        return Err(format!(
            "it answered {name} with {len} bytes where the protocol has {n} (not a matching RPC server?)"
        ));
    }
    Ok(())
}

/// Reads the server's answer to `cmd`, which must be `n` bytes long.
fn read_answer(server: &mut TcpStream, cmd: u8, n: usize, timeout: Duration) -> Result<Vec<u8>, String> {
    read_answer_len(server, cmd, n, timeout)?;
    let name = wire::command_name(cmd);
    let mut reply = vec![0u8; n];
    server.read_exact(&mut reply).map_err(|e| describe(&e, name, timeout))?;
    Ok(reply)
}

/// Sends an answer to ggml's client.
fn answer(client: &mut TcpStream, payload: &[u8]) -> io::Result<()> {
    let len = (payload.len() as u64).to_le_bytes();
    if payload.len() > CHUNK {
        // Tensor reads can be tens of MB: no copy.
        client.write_all(&len)?;
        return client.write_all(payload);
    }
    let mut msg = Vec::with_capacity(8 + payload.len());
    msg.extend_from_slice(&len);
    msg.extend_from_slice(payload);
    client.write_all(&msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link() -> Link {
        Link {
            remote: "test:1".into(),
            addrs: Vec::new(),
            local: SocketAddr::from(([127, 0, 0, 1], 1)),
            version: (wire::PROTO_MAJOR, 0, 0),
            timeout_ms: AtomicU64::new(2_000),
            failed: AtomicBool::new(false),
            failure: Mutex::new(None),
            devices: Mutex::new(Vec::new()),
            told: Mutex::new(AnswerCheck::default()),
        }
    }

    /// Two ends of one loopback connection.
    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let near = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (far, _) = listener.accept().unwrap();
        (near, far)
    }

    /// Relays a `get_tensor` answer of `n` bytes from a server that behaves as `serve` says;
    /// what ggml's side reads (length prefix checked) and the link's failure.
    fn relayed(n: usize, serve: impl FnOnce(TcpStream) + Send + 'static) -> (Vec<u8>, Option<String>) {
        let (server_near, server_far) = pair();
        let (mut client_near, mut client_far) = pair();
        server_near.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        let server = std::thread::spawn(move || serve(server_far));
        let ggml = std::thread::spawn(move || {
            let mut len = [0u8; 8];
            client_far.read_exact(&mut len).unwrap();
            let mut got = vec![0u8; u64::from_le_bytes(len) as usize];
            client_far.read_exact(&mut got).unwrap();
            got
        });
        let link = link();
        let mut server_end = Some(server_near);
        stream_answer(&link, &mut server_end, &mut client_near, wire::CMD_GET_TENSOR, n).unwrap();
        assert_eq!(server_end.is_none(), link.failure().is_some(), "a failed link drops the server");
        server.join().unwrap();
        (ggml.join().unwrap(), link.failure())
    }

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i % 251) as u8).collect()
    }

    #[test]
    fn a_large_answer_passes_on_whole_in_pieces() {
        let n = 3 * CHUNK + 12_345;
        let (got, failure) = relayed(n, move |mut s| {
            s.write_all(&(n as u64).to_le_bytes()).unwrap();
            // In uneven pieces with pauses, as a busy server's socket delivers them.
            for piece in pattern(n).chunks(700_001) {
                s.write_all(piece).unwrap();
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        assert_eq!(failure, None);
        assert!(got == pattern(n), "the bytes changed on the way");
    }

    #[test]
    fn a_wrong_length_fails_the_link_and_ggml_still_gets_its_bytes() {
        let n = 2 * CHUNK;
        let (got, failure) = relayed(n, move |mut s| {
            s.write_all(&(n as u64 + 1).to_le_bytes()).unwrap();
            s.write_all(&pattern(n + 1)).ok();
        });
        assert!(failure.unwrap().contains("not a matching RPC server"));
        assert_eq!(got.len(), n);
        assert!(got.iter().all(|&b| b == 0));
    }

    #[test]
    fn a_server_lost_part_way_fails_the_link_and_the_rest_is_zeros() {
        let n = 2 * CHUNK + 7;
        let sent = CHUNK + 3;
        let (got, failure) = relayed(n, move |mut s| {
            s.write_all(&(n as u64).to_le_bytes()).unwrap();
            s.write_all(&pattern(n)[..sent]).unwrap();
            s.shutdown(Shutdown::Both).unwrap();
        });
        assert!(failure.unwrap().contains("during get_tensor"));
        assert_eq!(got.len(), n);
        assert!(got[..sent] == pattern(n)[..sent]);
        assert!(got[sent..].iter().all(|&b| b == 0));
    }

    #[test]
    fn a_silent_server_is_a_timeout_not_a_hang() {
        let n = 2 * CHUNK;
        let (got, failure) = relayed(n, move |mut s| {
            s.write_all(&(n as u64).to_le_bytes()).unwrap();
            s.write_all(&[1; 100]).unwrap();
            // Then nothing, past the relay's time limit, with the connection open.
            std::thread::sleep(Duration::from_millis(1_500));
        });
        assert!(failure.unwrap().contains("no answer"), "a silent server times out");
        assert_eq!(got.len(), n);
    }

    /// Issue 26: another local process connected to the relay's port and sent a get_tensor
    /// of 2^40 bytes (the relay allocated it and the process aborted), or stayed silent until
    /// the link counted the server as failed. Only this process's connections are relayed.
    #[test]
    fn a_stranger_on_the_relays_port_is_refused_and_never_reaches_the_server() {
        // A stand-in server that greets and counts its connections.
        let server = TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let server_at = server.local_addr().unwrap();
        let connections = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&connections);
        std::thread::spawn(move || {
            for mut conn in server.incoming().flatten() {
                counted.fetch_add(1, Ordering::SeqCst);
                let mut head = [0u8; 9];
                if conn.read_exact(&mut head).is_ok() {
                    let mut rest = vec![0u8; u64::from_le_bytes(head[1..].try_into().unwrap()) as usize];
                    let _ = conn.read_exact(&mut rest);
                    let answer = wire::hello_answer((wire::PROTO_MAJOR, 0, 0));
                    let _ = conn.write_all(&(answer.len() as u64).to_le_bytes()).and_then(|_| conn.write_all(&answer));
                }
            }
        });
        let link = Link::open(&server_at.to_string(), Duration::from_secs(2)).unwrap();
        assert_eq!(connections.load(Ordering::SeqCst), 1, "the greeting at open");
        // A get_tensor of 2^40 bytes from a shell: the relay must drop the connection unread.
        let mut request = vec![wire::CMD_GET_TENSOR];
        request.extend_from_slice(&40u64.to_le_bytes());
        request.extend_from_slice(&[0u8; 32]);
        request.extend_from_slice(&(1u64 << 40).to_le_bytes());
        let escaped: String = request.iter().map(|b| format!("\\x{b:02x}")).collect();
        let out = std::process::Command::new("bash")
            .arg("-c")
            .arg(format!(
                "exec 3<>/dev/tcp/127.0.0.1/{port}; printf '{escaped}' >&3; timeout 5 cat <&3 | wc -c",
                port = link.local.port()
            ))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "0", "the stranger got no answer");
        assert_eq!(connections.load(Ordering::SeqCst), 1, "the stranger never reached the server");
        assert_eq!(link.failure(), None);
        // A connection of this process still goes through.
        let mut ours = TcpStream::connect(link.local).unwrap();
        ours.write_all(&wire::hello_request()).unwrap();
        let mut len = [0u8; 8];
        ours.read_exact(&mut len).unwrap();
        assert_eq!(u64::from_le_bytes(len) as usize, wire::HELLO_ANSWER_LEN);
    }
}
