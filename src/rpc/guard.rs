//! What `rpc-server`'s front checks before a command reaches ggml's server.
//!
//! ggml's server trusts its client: a length it is sent becomes an allocation (2^63 bytes
//! ends the process with an uncaught `length_error`), a tensor that points outside its buffer
//! trips a `GGML_ASSERT`, a graph node with id 0 or listed twice is dereferenced or hashed out
//! of bounds, and the graph reader recurses as deep as a chain of sources goes. Every such
//! case is refused here, against what the front knows of the connection: the buffers ggml
//! handed out to this client (pointer, base, size). What cannot be checked without
//! re-implementing ggml (whether an operation's shapes fit together) is left to the worker
//! process, whose end does not end the server (see `front`).
//!
//! All structures are packed little-endian, as ggml's `#pragma pack(1)` writes them.

use std::collections::{HashMap, HashSet};

use llama_cpp_sys_2 as sys;

use super::wire::*;

/// The largest graph a client may send (a graph of a large model is a few MB: about 300
/// bytes per tensor).
pub const MAX_GRAPH_BYTES: u64 = 256 << 20;
/// How deep ggml's graph reader may recurse (it builds a tensor's sources before the
/// tensor). Graphs in execution order, as ggml's client sends them, stay within a few levels.
pub const MAX_GRAPH_DEPTH: usize = 10_000;
/// The most elements a tensor may have (ggml asserts they fit in an `i64`).
const MAX_ELEMENTS: u128 = 1 << 62;

/// Bytes before the data of a `set_tensor`: tensor, cache flag, offset.
pub const SET_TENSOR_HEADER: usize = TENSOR_LEN + 1 + 8;

/// The fields of a serialized tensor that the checks read.
#[derive(Debug, Clone, Copy)]
struct Tensor {
    id: u64,
    ty: u32,
    buffer: u64,
    ne: [u32; 4],
    nb: [u32; 4],
    op: u32,
    src: [u64; MAX_SRC],
    view_src: u64,
    data: u64,
}

impl Tensor {
    fn parse(b: &[u8]) -> Tensor {
        let quad = |at: usize| std::array::from_fn(|i| u32_at(b, at + 4 * i));
        Tensor {
            id: u64_at(b, TENSOR_ID),
            ty: u32_at(b, TENSOR_TYPE),
            buffer: u64_at(b, TENSOR_BUFFER),
            ne: quad(TENSOR_NE),
            nb: quad(TENSOR_NB),
            op: u32_at(b, TENSOR_OP),
            src: std::array::from_fn(|i| u64_at(b, TENSOR_SRC + 8 * i)),
            view_src: u64_at(b, TENSOR_VIEW_SRC),
            data: u64_at(b, TENSOR_DATA),
        }
    }

    /// `ggml_nbytes`, without its wrap-around.
    fn nbytes(&self, blck: u128, type_size: u128) -> u128 {
        if self.ne.contains(&0) {
            return 0;
        }
        let ne = self.ne.map(u128::from);
        let nb = self.nb.map(u128::from);
        let (mut n, first) = if blck == 1 { (type_size, 0) } else { (ne[0] * nb[0] / blck, 1) };
        for i in first..4 {
            n += (ne[i] - 1) * nb[i];
        }
        n
    }
}

/// A buffer ggml allocated for this client: its handle's start and length on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub base: u64,
    pub size: u64,
}

/// The buffers one client holds, by the handle ggml gave it.
#[derive(Debug, Default)]
pub struct Buffers(HashMap<u64, Span>);

impl Buffers {
    pub fn insert(&mut self, handle: u64, span: Span) {
        self.0.insert(handle, span);
    }

    pub fn remove(&mut self, handle: u64) {
        self.0.remove(&handle);
    }

    /// The size of the largest buffer (what one `set_tensor` can carry at most).
    pub fn largest(&self) -> u64 {
        self.0.values().map(|s| s.size).max().unwrap_or(0)
    }

    /// What `deserialize_tensor` in ggml's server asserts or divides by: a known type with a
    /// block size, an element count that fits, rows of whole blocks, and, for a tensor in a
    /// buffer, a buffer of this client's and data inside it.
    // ggml's enums are `u32` here and `i32` under MSVC.
    #[allow(clippy::unnecessary_cast)]
    fn check_tensor(&self, t: &Tensor) -> Result<(), String> {
        if t.ty >= sys::GGML_TYPE_COUNT as u32 {
            return Err(format!("tensor type {} does not exist", t.ty));
        }
        // SAFETY: the type is below GGML_TYPE_COUNT, so both lookups are in ggml's table.
        let (blck, type_size) = unsafe { (sys::ggml_blck_size(t.ty as _), sys::ggml_type_size(t.ty as _)) };
        if blck <= 0 || type_size == 0 {
            return Err(format!("tensor type {} is no longer supported", t.ty));
        }
        if t.op >= sys::GGML_OP_COUNT as u32 {
            return Err(format!("operation {} does not exist", t.op));
        }
        let elements: u128 = t.ne.iter().map(|&n| u128::from(n)).product();
        if elements > MAX_ELEMENTS {
            return Err(format!("a tensor of {elements} elements"));
        }
        if t.ne[0] as i64 % blck != 0 {
            return Err(format!("a row of {} elements is not whole blocks of {blck}", t.ne[0]));
        }
        if t.buffer == 0 {
            return Ok(());
        }
        let span = self.span(t.buffer)?;
        let bytes = t.nbytes(blck as u128, type_size as u128);
        let (data, base) = (u128::from(t.data), u128::from(span.base));
        if data < base || data + bytes > base + u128::from(span.size) {
            return Err(format!(
                "tensor data at {:#x} ({bytes} bytes) is outside its buffer [{:#x}, +{})",
                t.data, span.base, span.size
            ));
        }
        Ok(())
    }

    fn span(&self, handle: u64) -> Result<Span, String> {
        self.0.get(&handle).copied().ok_or_else(|| format!("buffer {handle:#x} is not one of this client's"))
    }

    /// A region of a tensor's buffer, `offset` bytes past its data, must lie inside the
    /// buffer (ggml's server checks this too, but only after the tensor itself).
    fn check_region(&self, t: &Tensor, offset: u64, size: u64) -> Result<(), String> {
        if t.buffer == 0 {
            return Err("the tensor is in no buffer".into());
        }
        let span = self.span(t.buffer)?;
        let start = u128::from(t.data) + u128::from(offset);
        if start < u128::from(span.base) || start + u128::from(size) > u128::from(span.base) + u128::from(span.size) {
            return Err(format!("{size} bytes at {start:#x} are outside the tensor's buffer"));
        }
        Ok(())
    }
}

/// The exact request length of commands whose request has a fixed size.
fn fixed_len(cmd: u8) -> Option<u64> {
    let t = TENSOR_LEN as u64;
    Some(match cmd {
        CMD_ALLOC_BUFFER => 12,
        CMD_GET_ALIGNMENT | CMD_GET_MAX_SIZE | CMD_GET_DEVICE_MEMORY | CMD_GRAPH_RECOMPUTE => 4,
        CMD_BUFFER_GET_BASE | CMD_FREE_BUFFER => 8,
        CMD_BUFFER_CLEAR => 9,
        CMD_SET_TENSOR_HASH | CMD_GET_TENSOR => t + 16,
        CMD_COPY_TENSOR => 2 * t,
        CMD_INIT_TENSOR => t,
        CMD_GET_ALLOC_SIZE => 4 + t * (1 + MAX_SRC as u64),
        CMD_MEMSET_TENSOR => t + 17,
        CMD_DEVICE_COUNT => 0,
        _ => return None,
    })
}

/// Whether a request of this command and length may be read at all: a known command, the
/// exact length of fixed-size ones, and a bound on the others (a `set_tensor` no longer than
/// this client's largest buffer, a graph of at most [`MAX_GRAPH_BYTES`]).
pub fn check_length(cmd: u8, len: u64, buffers: &Buffers) -> Result<(), String> {
    let name = command_name(cmd);
    if let Some(want) = fixed_len(cmd) {
        return if len == want { Ok(()) } else { Err(format!("{name} request of {len} bytes (it has {want})")) };
    }
    match cmd {
        CMD_SET_TENSOR => {
            let most = SET_TENSOR_HEADER as u64 + buffers.largest();
            if buffers.largest() == 0 {
                return Err(format!("set_tensor request of {len} bytes from a client that holds no buffer"));
            }
            if len < SET_TENSOR_HEADER as u64 || len > most {
                return Err(format!(
                    "set_tensor request of {len} bytes (between {SET_TENSOR_HEADER} and {most} for this client's \
                     buffers)"
                ));
            }
            Ok(())
        }
        CMD_GRAPH_COMPUTE if len > MAX_GRAPH_BYTES => {
            Err(format!("a graph of {len} bytes (at most {MAX_GRAPH_BYTES})"))
        }
        CMD_GRAPH_COMPUTE => Ok(()),
        CMD_HELLO => Err("a second greeting".into()),
        c => Err(format!("command {c} ({name}) is not served")),
    }
}

/// Checks a whole request (every command but `set_tensor`, whose data is streamed: see
/// [`check_set_tensor`]). The length was checked by [`check_length`].
pub fn check_request(cmd: u8, req: &[u8], buffers: &Buffers) -> Result<(), String> {
    let tensor = |at: usize| Tensor::parse(&req[at..at + TENSOR_LEN]);
    let device = || check_device(u32_at(req, 0));
    match cmd {
        CMD_ALLOC_BUFFER | CMD_GET_ALIGNMENT | CMD_GET_MAX_SIZE | CMD_GET_DEVICE_MEMORY | CMD_GRAPH_RECOMPUTE => {
            device()
        }
        CMD_INIT_TENSOR => buffers.check_tensor(&tensor(0)),
        CMD_GET_TENSOR | CMD_MEMSET_TENSOR => {
            let t = tensor(0);
            buffers.check_tensor(&t)?;
            buffers.check_region(&t, u64_at(req, TENSOR_LEN), u64_at(req, TENSOR_LEN + 8))
        }
        CMD_SET_TENSOR_HASH => buffers.check_tensor(&tensor(0)),
        CMD_COPY_TENSOR => {
            let (src, dst) = (tensor(0), tensor(TENSOR_LEN));
            buffers.check_tensor(&src)?;
            buffers.check_tensor(&dst)
        }
        CMD_GET_ALLOC_SIZE => {
            device()?;
            buffers.check_tensor(&tensor(4))?;
            (0..MAX_SRC)
                .map(|i| tensor(4 + TENSOR_LEN * (1 + i)))
                .filter(|s| s.id != 0)
                .try_for_each(|s| buffers.check_tensor(&s))
        }
        CMD_GRAPH_COMPUTE => check_graph(req, buffers),
        _ => Ok(()),
    }
}

/// Checks the head of a `set_tensor` (tensor, cache flag, offset) that carries `data_len`
/// bytes of data.
pub fn check_set_tensor(header: &[u8], data_len: u64, buffers: &Buffers) -> Result<(), String> {
    let t = Tensor::parse(&header[..TENSOR_LEN]);
    buffers.check_tensor(&t)?;
    buffers.check_region(&t, u64_at(header, TENSOR_LEN + 1), data_len)
}

/// The worker offers one device: number 0.
fn check_device(device: u32) -> Result<(), String> {
    if device == 0 {
        Ok(())
    } else {
        Err(format!("device {device} does not exist (this server offers one device: 0)"))
    }
}

/// `device | n_nodes | node ids | n_tensors | tensors`: exact length, every tensor sound,
/// every node and source id among the tensors, no node twice, and ggml's recursive reader
/// no deeper than [`MAX_GRAPH_DEPTH`].
fn check_graph(req: &[u8], buffers: &Buffers) -> Result<(), String> {
    let len = req.len();
    if len < 8 {
        return Err(format!("a graph of {len} bytes"));
    }
    check_device(u32_at(req, 0))?;
    let n_nodes = u32_at(req, 4) as usize;
    let tensors_at = 8 + 8 * n_nodes + 4;
    if len < tensors_at {
        return Err(format!("a graph of {n_nodes} nodes in {len} bytes"));
    }
    let n_tensors = u32_at(req, tensors_at - 4) as usize;
    if len != tensors_at + TENSOR_LEN * n_tensors {
        return Err(format!("a graph of {n_nodes} nodes and {n_tensors} tensors in {len} bytes"));
    }
    let mut tensors: HashMap<u64, Tensor> = HashMap::with_capacity(n_tensors);
    for i in 0..n_tensors {
        let t = Tensor::parse(&req[tensors_at + TENSOR_LEN * i..][..TENSOR_LEN]);
        if t.id == 0 {
            return Err("a graph tensor with id 0".into());
        }
        buffers.check_tensor(&t)?;
        // ggml keeps the first tensor of an id.
        tensors.entry(t.id).or_insert(t);
    }
    for t in tensors.values() {
        if let Some(id) = t.src.iter().chain([&t.view_src]).find(|&&id| id != 0 && !tensors.contains_key(&id)) {
            return Err(format!("tensor {:#x} names source {id:#x}, which the graph does not hold", t.id));
        }
    }
    let mut seen = HashSet::with_capacity(n_nodes);
    let mut built = HashSet::with_capacity(n_tensors);
    for i in 0..n_nodes {
        let id = u64_at(req, 8 + 8 * i);
        if id == 0 || !tensors.contains_key(&id) {
            return Err(format!("graph node {i} is tensor {id:#x}, which the graph does not hold"));
        }
        if !seen.insert(id) {
            return Err(format!("graph node {i} (tensor {id:#x}) is listed twice"));
        }
        let depth = build_depth(id, &tensors, &mut built);
        if depth > MAX_GRAPH_DEPTH {
            return Err(format!("graph node {i} sits {depth} sources deep (at most {MAX_GRAPH_DEPTH})"));
        }
    }
    Ok(())
}

/// How deep ggml's `create_node` recurses to build `id` when the tensors in `built` exist
/// already (it builds a tensor, then its sources, then its view source, each once).
fn build_depth(id: u64, tensors: &HashMap<u64, Tensor>, built: &mut HashSet<u64>) -> usize {
    if !built.insert(id) {
        return 0;
    }
    // (tensor, next of its sources to visit: 0..MAX_SRC, then the view source)
    let mut stack = vec![(id, 0usize)];
    let mut deepest = 1;
    while let Some(top) = stack.last_mut() {
        let (at, next) = *top;
        if next > MAX_SRC {
            stack.pop();
            continue;
        }
        top.1 += 1;
        let t = &tensors[&at];
        let child = if next < MAX_SRC { t.src[next] } else { t.view_src };
        if child != 0 && built.insert(child) {
            stack.push((child, 0));
            deepest = deepest.max(stack.len());
        }
    }
    deepest
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A serialized F32 tensor of `ne` elements (one row) at `data` in `buffer`.
    #[allow(clippy::unnecessary_cast)]
    pub(crate) fn tensor(id: u64, buffer: u64, data: u64, ne: u32) -> Vec<u8> {
        let mut t = vec![0u8; TENSOR_LEN];
        t[TENSOR_ID..][..8].copy_from_slice(&id.to_le_bytes());
        t[TENSOR_TYPE..][..4].copy_from_slice(&(sys::GGML_TYPE_F32 as u32).to_le_bytes());
        t[TENSOR_BUFFER..][..8].copy_from_slice(&buffer.to_le_bytes());
        for i in 0..4 {
            let (n, stride) = if i == 0 { (ne, 4) } else { (1, 4 * ne) };
            t[TENSOR_NE + 4 * i..][..4].copy_from_slice(&n.to_le_bytes());
            t[TENSOR_NB + 4 * i..][..4].copy_from_slice(&stride.to_le_bytes());
        }
        t[TENSOR_DATA..][..8].copy_from_slice(&data.to_le_bytes());
        t
    }

    fn set(t: &mut [u8], at: usize, v: u64) {
        t[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }

    fn graph(nodes: &[u64], tensors: &[Vec<u8>]) -> Vec<u8> {
        let mut g = 0u32.to_le_bytes().to_vec();
        g.extend((nodes.len() as u32).to_le_bytes());
        nodes.iter().for_each(|n| g.extend(n.to_le_bytes()));
        g.extend((tensors.len() as u32).to_le_bytes());
        tensors.iter().for_each(|t| g.extend(t));
        g
    }

    fn buffers() -> Buffers {
        let mut b = Buffers::default();
        b.insert(0xb0, Span { base: 0x1000, size: 4096 });
        b
    }

    #[test]
    fn lengths_are_exact_or_bounded_by_what_the_client_holds() {
        let b = buffers();
        assert!(check_length(CMD_ALLOC_BUFFER, 12, &b).is_ok());
        assert!(check_length(CMD_ALLOC_BUFFER, 13, &b).is_err());
        assert!(check_length(CMD_SET_TENSOR, SET_TENSOR_HEADER as u64 + 4096, &b).is_ok());
        let issue = check_length(CMD_SET_TENSOR, 1 << 63, &b).unwrap_err();
        assert!(issue.contains("between 305 and 4401"), "{issue}");
        assert!(check_length(CMD_SET_TENSOR, 1 << 20, &Buffers::default()).is_err(), "no buffer: no data");
        assert!(check_length(CMD_GRAPH_COMPUTE, MAX_GRAPH_BYTES + 1, &b).is_err());
        assert!(check_length(CMD_HELLO, 24, &b).is_err());
        assert!(check_length(18, 0, &b).is_err(), "`none` is no command");
        assert!(check_length(200, 0, &b).is_err());
    }

    #[test]
    fn tensors_outside_their_buffer_or_of_no_type_are_refused() {
        let b = buffers();
        let ok = tensor(1, 0xb0, 0x1000, 1024);
        assert!(check_request(CMD_INIT_TENSOR, &ok, &b).is_ok());
        assert!(check_request(CMD_INIT_TENSOR, &tensor(1, 0xb0, 0x1004, 1024), &b).unwrap_err().contains("outside"));
        assert!(check_request(CMD_INIT_TENSOR, &tensor(1, 0xb0, 0xfff, 1), &b).is_err(), "before the base");
        assert!(check_request(CMD_INIT_TENSOR, &tensor(1, 0xb1, 0x1000, 1), &b).unwrap_err().contains("not one of"));
        assert!(check_request(CMD_INIT_TENSOR, &tensor(1, 0, 0x1000, u32::MAX), &b).is_ok(), "no buffer: no range");
        let mut bad = ok.clone();
        bad[TENSOR_TYPE..][..4].copy_from_slice(&999u32.to_le_bytes());
        assert!(check_request(CMD_INIT_TENSOR, &bad, &b).unwrap_err().contains("type 999"));
        let mut huge = tensor(1, 0, 0, u32::MAX);
        for i in 1..4 {
            huge[TENSOR_NE + 4 * i..][..4].copy_from_slice(&u32::MAX.to_le_bytes());
        }
        assert!(check_request(CMD_INIT_TENSOR, &huge, &b).unwrap_err().contains("elements"));
        // Strides whose products wrap around 64 bits in ggml.
        let mut wraps = tensor(1, 0xb0, 0x1000, 2);
        wraps[TENSOR_NB..][..4].copy_from_slice(&u32::MAX.to_le_bytes());
        for i in 1..4 {
            wraps[TENSOR_NE + 4 * i..][..4].copy_from_slice(&u32::MAX.to_le_bytes());
            wraps[TENSOR_NB + 4 * i..][..4].copy_from_slice(&u32::MAX.to_le_bytes());
        }
        assert!(check_request(CMD_INIT_TENSOR, &wraps, &b).is_err());
        // Regions: get_tensor's offset and size stay inside the buffer.
        let mut get = ok.clone();
        get.extend(0u64.to_le_bytes());
        get.extend(4096u64.to_le_bytes());
        assert!(check_request(CMD_GET_TENSOR, &get, &b).is_ok());
        set(&mut get, TENSOR_LEN + 8, 1 << 40);
        assert!(check_request(CMD_GET_TENSOR, &get, &b).is_err());
        let mut head = ok.clone();
        head.push(0);
        head.extend(4000u64.to_le_bytes());
        assert!(check_set_tensor(&head, 96, &b).is_ok());
        assert!(check_set_tensor(&head, 97, &b).is_err());
    }

    #[test]
    fn graphs_with_missing_repeated_or_zero_nodes_are_refused() {
        let b = buffers();
        let a = tensor(7, 0xb0, 0x1000, 16);
        let mut c = tensor(8, 0xb0, 0x1040, 16);
        set(&mut c, TENSOR_SRC, 7);
        assert!(check_request(CMD_GRAPH_COMPUTE, &graph(&[8], &[a.clone(), c.clone()]), &b).is_ok());
        let zero = check_request(CMD_GRAPH_COMPUTE, &graph(&[0], std::slice::from_ref(&a)), &b).unwrap_err();
        assert!(zero.contains("node 0 is tensor 0x0"), "{zero}");
        assert!(check_request(CMD_GRAPH_COMPUTE, &graph(&[8, 8], &[a.clone(), c.clone()]), &b)
            .unwrap_err()
            .contains("twice"));
        assert!(check_request(CMD_GRAPH_COMPUTE, &graph(&[8], &[c.clone()]), &b).unwrap_err().contains("source 0x7"));
        let mut short = graph(&[8], &[a.clone(), c.clone()]);
        short.pop();
        assert!(check_request(CMD_GRAPH_COMPUTE, &short, &b).is_err());
        let mut many = graph(&[8], &[a, c]);
        many[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(check_request(CMD_GRAPH_COMPUTE, &many, &b).is_err(), "more nodes than bytes");
    }

    #[test]
    fn a_chain_of_sources_deeper_than_the_bound_is_refused_and_execution_order_is_shallow() {
        let b = Buffers::default();
        let n = MAX_GRAPH_DEPTH as u64 + 10;
        let chain: Vec<Vec<u8>> = (1..=n)
            .map(|id| {
                let mut t = tensor(id, 0, 0, 1);
                set(&mut t, TENSOR_SRC, id - 1);
                t
            })
            .collect();
        // The last tensor first: ggml would recurse through the whole chain.
        let deep = check_request(CMD_GRAPH_COMPUTE, &graph(&[n], &chain), &b).unwrap_err();
        assert!(deep.contains("deep"), "{deep}");
        // The same tensors in execution order: each node's source is built already.
        let order: Vec<u64> = (1..=n).collect();
        assert!(check_request(CMD_GRAPH_COMPUTE, &graph(&order, &chain), &b).is_ok());
    }
}
