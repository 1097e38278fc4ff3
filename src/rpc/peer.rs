//! Whether a loopback connection comes from this very process. The relay's listener is on
//! `127.0.0.1`, where any local process can connect; only ggml's client inside this process
//! may use it. TCP has no peer credentials, so on Linux the connecting socket is looked up in
//! the kernel's table of TCP sockets (`/proc/net/tcp`: the socket whose local end is the
//! peer's address and whose remote end is the listener) and its inode sought among this
//! process's open descriptors (`/proc/self/fd`).

use std::net::{SocketAddr, TcpStream};

/// `true` when `conn` (accepted on a listener at `listener`) was opened by this process.
/// Without a readable `/proc` (other systems, or a sandbox that hides it) there is no way to
/// tell, and every connection is taken, as before this check existed (with a warning, once).
pub(crate) fn is_this_process(conn: &TcpStream, listener: SocketAddr) -> bool {
    let Ok(peer) = conn.peer_addr() else { return false };
    if !cfg!(target_os = "linux") {
        return true;
    }
    let table = std::fs::read_to_string(if peer.is_ipv4() { "/proc/net/tcp" } else { "/proc/net/tcp6" });
    let fds = std::fs::read_dir("/proc/self/fd");
    let (Ok(table), Ok(fds)) = (table, fds) else {
        static WARNED: std::sync::Once = std::sync::Once::new();
        WARNED.call_once(|| {
            tracing::warn!("rpc: /proc cannot be read, so the relay cannot tell its own connections from others'")
        });
        return true;
    };
    let Some(inode) = socket_inode(&table, peer, listener) else { return false };
    holds_socket(fds, inode)
}

/// `true` when the socket listening at `addr` (on loopback) is one of process `pid`'s: the
/// front's check that it reached its own worker and not a program that took the port first.
/// As above, `true` where `/proc` cannot be read.
pub(crate) fn listener_belongs_to(addr: SocketAddr, pid: u32) -> bool {
    if !cfg!(target_os = "linux") {
        return true;
    }
    let table = std::fs::read_to_string("/proc/net/tcp");
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"));
    let (Ok(table), Ok(fds)) = (table, fds) else { return true };
    let nowhere = SocketAddr::from(([0, 0, 0, 0], 0));
    let Some(inode) = socket_inode(&table, addr, nowhere) else { return false };
    holds_socket(fds, inode)
}

/// Whether one of these descriptors (a `/proc/PID/fd` listing) is the socket `inode`.
fn holds_socket(fds: std::fs::ReadDir, inode: u64) -> bool {
    let wanted = format!("socket:[{inode}]");
    fds.flatten().any(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| target.as_os_str() == wanted.as_str()))
}

/// The inode of the IPv4 socket in `table` (the text of `/proc/net/tcp`) whose local end is
/// `local` and remote end `remote`.
fn socket_inode(table: &str, local: SocketAddr, remote: SocketAddr) -> Option<u64> {
    let (want_local, want_remote) = (hex_addr(local)?, hex_addr(remote)?);
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode ...
        if fields.len() > 9
            && fields[1].eq_ignore_ascii_case(&want_local)
            && fields[2].eq_ignore_ascii_case(&want_remote)
        {
            fields[9].parse().ok().filter(|&inode| inode != 0)
        } else {
            None
        }
    })
}

/// An IPv4 address as `/proc/net/tcp` writes it: the address as a host-order 32-bit number
/// in hex, a colon, the port in hex.
fn hex_addr(addr: SocketAddr) -> Option<String> {
    match addr {
        SocketAddr::V4(a) => Some(format!("{:08X}:{:04X}", u32::from_ne_bytes(a.ip().octets()), a.port())),
        SocketAddr::V6(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn a_connection_of_this_process_is_recognised_and_one_of_another_is_not() {
        let listener = TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let at = listener.local_addr().unwrap();
        let _near = TcpStream::connect(at).unwrap();
        let (ours, _) = listener.accept().unwrap();
        assert!(is_this_process(&ours, at));
        // Another process: a shell's /dev/tcp connection held open while we look.
        let mut child = std::process::Command::new("bash")
            .arg("-c")
            .arg(format!("exec 3<>/dev/tcp/127.0.0.1/{}; sleep 5", at.port()))
            .spawn()
            .unwrap();
        let (theirs, _) = listener.accept().unwrap();
        let verdict = is_this_process(&theirs, at);
        let _ = child.kill();
        let _ = child.wait();
        assert!(!verdict || !cfg!(target_os = "linux"));
    }

    #[test]
    fn proc_net_tcp_lines_are_read() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   \
                     1: 0100007F:8D87 0100007F:AC02 01 00000000:00000000 00:00000000 00000000     0        0 4242 1 0\n";
        let local: SocketAddr = "127.0.0.1:36231".parse().unwrap();
        let remote: SocketAddr = "127.0.0.1:44034".parse().unwrap();
        assert_eq!(socket_inode(table, local, remote), Some(4242));
        assert_eq!(socket_inode(table, remote, local), None);
    }
}
