//! The framing of ggml's RPC protocol (major version 7), as far as the relay needs it: which
//! commands get an answer and how long that answer must be, and the greeting.
//!
//! A request is `command (1 byte) | length (u64 LE) | payload`; an answer, when the command
//! has one, is `length (u64 LE) | payload`. The client always knows the answer's length in
//! advance, so the relay can check every answer and, once a server is gone, make up answers of
//! the right shape.

/// The protocol major version this build's llama.cpp speaks (`RPC_PROTO_MAJOR_VERSION`).
pub const PROTO_MAJOR: u8 = 7;

/// `RPC_CMD_HELLO`, the first command on every connection.
pub const CMD_HELLO: u8 = 14;
/// One past the last command number the protocol knows.
pub const CMD_COUNT: u8 = 19;

/// Bytes of the greeting's request (`conn_caps`) and answer (version, padding, `conn_caps`).
pub const HELLO_REQUEST_LEN: usize = 24;
pub const HELLO_ANSWER_LEN: usize = 4 + HELLO_REQUEST_LEN;

/// Bytes of a serialized tensor (`rpc_tensor`: ids, type, shape, strides, op, parameters,
/// flags, sources, view, data pointer, name, use count).
pub const TENSOR_LEN: usize = 296;
/// Offsets inside a serialized tensor (packed): id, type, buffer handle, `ne` and `nb` (four
/// `u32` each), operation, sources (`GGML_MAX_SRC` ids), view source, data pointer.
pub(crate) const TENSOR_ID: usize = 0;
pub(crate) const TENSOR_TYPE: usize = 8;
pub(crate) const TENSOR_BUFFER: usize = 12;
pub(crate) const TENSOR_NE: usize = 20;
pub(crate) const TENSOR_NB: usize = 36;
pub(crate) const TENSOR_OP: usize = 52;
pub(crate) const TENSOR_SRC: usize = 124;
pub(crate) const TENSOR_VIEW_SRC: usize = 204;
pub(crate) const TENSOR_DATA: usize = 220;
/// Sources a tensor names (`GGML_MAX_SRC`).
pub(crate) const MAX_SRC: usize = 10;

/// Command numbers (ggml-rpc.cpp's `rpc_cmd`).
pub(crate) const CMD_ALLOC_BUFFER: u8 = 0;
pub(crate) const CMD_GET_ALIGNMENT: u8 = 1;
pub(crate) const CMD_GET_MAX_SIZE: u8 = 2;
pub(crate) const CMD_BUFFER_GET_BASE: u8 = 3;
pub(crate) const CMD_FREE_BUFFER: u8 = 4;
pub(crate) const CMD_BUFFER_CLEAR: u8 = 5;
pub(crate) const CMD_SET_TENSOR: u8 = 6;
pub(crate) const CMD_SET_TENSOR_HASH: u8 = 7;
pub(crate) const CMD_GET_TENSOR: u8 = 8;
pub(crate) const CMD_COPY_TENSOR: u8 = 9;
pub(crate) const CMD_GRAPH_COMPUTE: u8 = 10;
pub(crate) const CMD_GET_DEVICE_MEMORY: u8 = 11;
pub(crate) const CMD_INIT_TENSOR: u8 = 12;
pub(crate) const CMD_GET_ALLOC_SIZE: u8 = 13;
pub(crate) const CMD_DEVICE_COUNT: u8 = 15;
pub(crate) const CMD_GRAPH_RECOMPUTE: u8 = 16;
pub(crate) const CMD_MEMSET_TENSOR: u8 = 17;

/// A readable name for a command number, for error messages.
pub fn command_name(cmd: u8) -> &'static str {
    const NAMES: [&str; CMD_COUNT as usize] = [
        "alloc_buffer",
        "get_alignment",
        "get_max_size",
        "buffer_get_base",
        "free_buffer",
        "buffer_clear",
        "set_tensor",
        "set_tensor_hash",
        "get_tensor",
        "copy_tensor",
        "graph_compute",
        "get_device_memory",
        "init_tensor",
        "get_alloc_size",
        "hello",
        "device_count",
        "graph_recompute",
        "memset_tensor",
        "none",
    ];
    NAMES.get(cmd as usize).copied().unwrap_or("unknown")
}

/// The length of the answer to `cmd` with this request payload, or `None` for commands the
/// server does not answer. `Err` for a request the relay cannot read (a command number past
/// the protocol's, a `get_tensor` too short to say its size).
pub fn answer_len(cmd: u8, request: &[u8]) -> Result<Option<usize>, String> {
    Ok(match cmd {
        CMD_ALLOC_BUFFER | CMD_GET_DEVICE_MEMORY => Some(16),
        CMD_GET_ALIGNMENT | CMD_GET_MAX_SIZE | CMD_BUFFER_GET_BASE | CMD_GET_ALLOC_SIZE => Some(8),
        CMD_SET_TENSOR_HASH | CMD_COPY_TENSOR => Some(1),
        CMD_DEVICE_COUNT => Some(4),
        CMD_HELLO => Some(HELLO_ANSWER_LEN),
        CMD_GET_TENSOR => {
            // tensor | offset (u64) | size (u64)
            if request.len() != TENSOR_LEN + 16 {
                return Err(format!("get_tensor request of {} bytes", request.len()));
            }
            let size = u64_at(request, TENSOR_LEN + 8);
            Some(usize::try_from(size).map_err(|_| format!("get_tensor of {size} bytes"))?)
        }
        c if c < CMD_COUNT => None,
        c => return Err(format!("unknown command {c}")),
    })
}

/// The answer the relay gives in place of a server that is gone: the right length, and
/// values that make ggml's client fail softly rather than assert (no buffer from an
/// allocation, a non-null base, a power-of-two alignment, no cached tensor, no device).
pub fn stand_in_answer(cmd: u8, request: &[u8], len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    match cmd {
        // alignment 64, any size, base 4096 (ggml asserts a buffer's base is not null).
        CMD_GET_ALIGNMENT => out.copy_from_slice(&64u64.to_le_bytes()),
        CMD_GET_MAX_SIZE => out.copy_from_slice(&u64::MAX.to_le_bytes()),
        CMD_BUFFER_GET_BASE => out.copy_from_slice(&4096u64.to_le_bytes()),
        // At least the tensor's bytes: the largest extent of its shape over its strides.
        CMD_GET_ALLOC_SIZE if request.len() >= 4 + TENSOR_LEN => {
            let tensor = &request[4..];
            let extent = (0..4)
                .map(|i| u64::from(u32_at(tensor, TENSOR_NE + 4 * i)) * u64::from(u32_at(tensor, TENSOR_NB + 4 * i)))
                .max()
                .unwrap_or(0);
            out.copy_from_slice(&extent.to_le_bytes());
        }
        _ => {}
    }
    out
}

/// The greeting the relay sends to a server: no transport capabilities, so the connection
/// stays plain TCP (which the relay can read).
pub fn hello_request() -> Vec<u8> {
    let mut msg = Vec::with_capacity(1 + 8 + HELLO_REQUEST_LEN);
    msg.push(CMD_HELLO);
    msg.extend_from_slice(&(HELLO_REQUEST_LEN as u64).to_le_bytes());
    msg.extend_from_slice(&[0u8; HELLO_REQUEST_LEN]);
    msg
}

/// A server's answer to the greeting: the version it speaks. `Err` describes an answer that
/// is not one.
pub fn parse_hello_answer(len: u64, payload: &[u8]) -> Result<(u8, u8, u8), String> {
    if len != HELLO_ANSWER_LEN as u64 || payload.len() != HELLO_ANSWER_LEN {
        let bytes = len.to_le_bytes();
        let text = bytes.iter().all(|b| b.is_ascii_graphic() || *b == b' ');
        return Err(if text {
            format!(
                "not a llama.cpp RPC server: it answered the greeting with text (`{}...`)",
                String::from_utf8_lossy(&bytes)
            )
        } else {
            format!(
                "not a llama.cpp RPC server: it answered the greeting with a {len}-byte message (an RPC server \
                 answers {HELLO_ANSWER_LEN})"
            )
        });
    }
    let (major, minor, patch) = (payload[0], payload[1], payload[2]);
    if major != PROTO_MAJOR {
        return Err(format!(
            "it speaks RPC protocol {major}.{minor}.{patch}; this build speaks {PROTO_MAJOR}.x (use the same llama.cpp \
             on both sides)"
        ));
    }
    Ok((major, minor, patch))
}

/// The greeting's answer the relay gives its own client: the server's version, no
/// capabilities.
pub fn hello_answer(version: (u8, u8, u8)) -> Vec<u8> {
    let mut out = vec![0u8; HELLO_ANSWER_LEN];
    out[0] = version.0;
    out[1] = version.1;
    out[2] = version.2;
    out
}

pub(crate) fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

pub(crate) fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_have_the_protocols_lengths() {
        assert_eq!(answer_len(CMD_ALLOC_BUFFER, &[0; 12]), Ok(Some(16)));
        assert_eq!(answer_len(CMD_DEVICE_COUNT, &[]), Ok(Some(4)));
        assert_eq!(answer_len(10, &[0; 100]), Ok(None), "graph_compute has no answer");
        assert_eq!(answer_len(6, &[0; 100]), Ok(None), "set_tensor has no answer");
        let mut get = vec![0u8; TENSOR_LEN + 16];
        get[TENSOR_LEN + 8..].copy_from_slice(&1234u64.to_le_bytes());
        assert_eq!(answer_len(CMD_GET_TENSOR, &get), Ok(Some(1234)));
        assert!(answer_len(CMD_GET_TENSOR, &get[1..]).is_err());
        assert!(answer_len(CMD_COUNT, &[]).is_err());
    }

    #[test]
    fn stand_in_answers_fail_softly() {
        assert_eq!(stand_in_answer(CMD_ALLOC_BUFFER, &[0; 12], 16), vec![0; 16], "no buffer");
        assert_eq!(stand_in_answer(CMD_BUFFER_GET_BASE, &[0; 8], 8), 4096u64.to_le_bytes());
        let mut req = vec![0u8; 4 + TENSOR_LEN * 11];
        for (i, (ne, nb)) in [(256u32, 2u32), (8, 512), (1, 4096), (1, 4096)].into_iter().enumerate() {
            req[4 + TENSOR_NE + 4 * i..][..4].copy_from_slice(&ne.to_le_bytes());
            req[4 + TENSOR_NB + 4 * i..][..4].copy_from_slice(&nb.to_le_bytes());
        }
        assert_eq!(stand_in_answer(CMD_GET_ALLOC_SIZE, &req, 8), 4096u64.to_le_bytes());
    }

    #[test]
    fn greeting_answers_are_checked() {
        let mut ok = vec![0u8; HELLO_ANSWER_LEN];
        ok[0] = PROTO_MAJOR;
        assert_eq!(parse_hello_answer(HELLO_ANSWER_LEN as u64, &ok), Ok((PROTO_MAJOR, 0, 0)));
        let http = u64::from_le_bytes(*b"HTTP/1.1");
        assert!(parse_hello_answer(http, &ok).unwrap_err().contains("with text (`HTTP/1.1...`)"));
        assert!(parse_hello_answer(3, &ok[..3]).unwrap_err().contains("3-byte"));
        ok[0] = 3;
        assert!(parse_hello_answer(HELLO_ANSWER_LEN as u64, &ok).unwrap_err().contains("3.0.0"));
        assert_eq!(hello_request().len(), 1 + 8 + HELLO_REQUEST_LEN);
    }
}
