//! Random drivers against the two servers a network peer reaches: `rpc-server` (random
//! command streams in llama.cpp's RPC protocol, built around the buffers the server hands
//! out) and `serve` (request bodies mutated from valid ones, in JSON and in bytes). Each runs
//! for `ROCM_LLAMA_FUZZ_SECS` (15 s by default, as in CI) from `ROCM_LLAMA_FUZZ_BASE_SEED`;
//! the server must outlive every input, and `serve` must never answer 500. The report goes to
//! stdout and to `$ROCM_LLAMA_FUZZ_OUT/<target>.json` when that is set.
//!
//!   ROCM_LLAMA_FUZZ_SECS=600 cargo test --release --test fuzz_wire -- --nocapture --test-threads=1

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::rng::Rng;
use serde_json::{json, Value};

fn fuzz_secs() -> u64 {
    std::env::var("ROCM_LLAMA_FUZZ_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(15)
}

fn base_seed() -> u64 {
    std::env::var("ROCM_LLAMA_FUZZ_BASE_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(1)
}

fn report(target: &str, fields: Value) {
    let mut all = json!({"target": target, "seconds": fuzz_secs(), "base_seed": base_seed()});
    all.as_object_mut().unwrap().extend(fields.as_object().unwrap().clone());
    println!("fuzz report: {all}");
    if let Some(dir) = std::env::var_os("ROCM_LLAMA_FUZZ_OUT") {
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::write(std::path::Path::new(&dir).join(format!("{target}.json")), all.to_string());
    }
}

/// A child process killed when dropped, its stderr kept.
struct Server {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Server {
    fn spawn(args: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_rocm-llama"))
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (stderr, sink) = (child.stderr.take().unwrap(), Arc::clone(&log));
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        Server { child, log }
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    fn wait_for_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let log = self.log.lock().unwrap().clone();
            if log.contains(needle) {
                return log;
            }
            assert!(Instant::now() < deadline, "no `{needle}` in the log: {log}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------- RPC

/// A buffer the server handed out: handle, base, size.
type Buf = (u64, u64, u64);

/// A serialized tensor (ggml's packed `rpc_tensor`): sound (a small F32 matrix inside a
/// buffer of the client's, an operation on tensors of the same command) most of the time, else
/// with any field at an edge.
fn rpc_tensor(rng: &mut Rng, bufs: &[Buf]) -> Vec<u8> {
    if rng.chance(80) {
        return sound_tensor(rng, bufs);
    }
    wild_tensor(rng, bufs)
}

fn sound_tensor(rng: &mut Rng, bufs: &[Buf]) -> Vec<u8> {
    let ne = [1 + rng.below(16) as u32, 1 + rng.below(4) as u32, 1, 1];
    let bytes = u64::from(ne[0] * ne[1] * 4);
    let (handle, data) = match bufs.iter().filter(|b| b.2 >= bytes).nth(rng.below(bufs.len() as u64 + 1) as usize) {
        Some(&(handle, base, size)) => (handle, base + rng.below((size - bytes) / 4 + 1) * 4),
        None => (0, 0),
    };
    let mut t = (1 + rng.below(8)).to_le_bytes().to_vec();
    t.extend(0u32.to_le_bytes()); // F32
    t.extend(handle.to_le_bytes());
    let nb = [4, 4 * ne[0], 4 * ne[0] * ne[1], 4 * ne[0] * ne[1]];
    ne.iter().chain(&nb).for_each(|v| t.extend(v.to_le_bytes()));
    let op: u32 = if rng.chance(50) { 0 } else { rng.below(100) as u32 };
    t.extend(op.to_le_bytes());
    t.extend([0u8; 64]);
    t.extend(16i32.to_le_bytes());
    for i in 0..10 {
        let src = if i < 2 && op != 0 { 1 + rng.below(8) } else { 0 };
        t.extend(src.to_le_bytes());
    }
    t.extend([0u8; 16]);
    t.extend(data.to_le_bytes());
    t.extend([0u8; 64 + 4]);
    t
}

fn wild_tensor(rng: &mut Rng, bufs: &[Buf]) -> Vec<u8> {
    let (handle, base, size) = match rng.below(10) {
        0..=5 if !bufs.is_empty() => bufs[rng.below(bufs.len() as u64) as usize],
        6 | 7 => (0, 0, 0),
        _ => (rng.next(), rng.next(), rng.below(1 << 20)),
    };
    let ty: u32 = if rng.chance(75) { 0 } else { rng.below(48) as u32 };
    let ne: [u32; 4] = std::array::from_fn(|_| match rng.below(10) {
        0..=5 => 1,
        6..=8 => 1 + rng.below(64) as u32,
        _ => rng.edgy_u32(1 << 16),
    });
    let mut nb = [4u32; 4];
    for i in 1..4 {
        nb[i] = nb[i - 1].saturating_mul(ne[i - 1]);
    }
    if rng.chance(15) {
        nb[rng.below(4) as usize] = rng.edgy_u32(64);
    }
    let data = match rng.below(10) {
        0..=6 => base.wrapping_add(rng.below(size.max(1)) & !3),
        7 => base.wrapping_add(size),
        8 => 0,
        _ => rng.next(),
    };
    let mut t = (1 + rng.below(8)).to_le_bytes().to_vec();
    t.extend(ty.to_le_bytes());
    t.extend(handle.to_le_bytes());
    ne.iter().chain(&nb).for_each(|v| t.extend(v.to_le_bytes()));
    let op: u32 = if rng.chance(40) { 0 } else { rng.below(106) as u32 };
    t.extend(op.to_le_bytes());
    (0..16).for_each(|_| t.extend(rng.edgy_i32(4).to_le_bytes()));
    t.extend(if rng.chance(60) { 16i32 } else { rng.edgy_i32(16) }.to_le_bytes());
    for i in 0..10 {
        let src = if i < 3 && rng.chance(50) { 1 + rng.below(8) } else { 0 };
        t.extend(src.to_le_bytes());
    }
    let view = if rng.chance(10) { 1 + rng.below(8) } else { 0 };
    t.extend(view.to_le_bytes());
    t.extend(rng.below(256).to_le_bytes());
    t.extend(data.to_le_bytes());
    t.extend([b'f'; 64]); // a name without its NUL
    t.extend(rng.edgy_i32(2).to_le_bytes());
    debug_assert_eq!(t.len(), 296);
    t
}

/// One random command: its number, payload, and the length of the answer when the server
/// answers it.
fn rpc_command(rng: &mut Rng, bufs: &[Buf]) -> (u8, Vec<u8>, Option<usize>) {
    let device = |rng: &mut Rng| if rng.chance(90) { 0u32 } else { rng.edgy_u32(2) };
    let known = |rng: &mut Rng| {
        if !bufs.is_empty() && rng.chance(80) {
            bufs[rng.below(bufs.len() as u64) as usize].0
        } else {
            rng.next()
        }
    };
    let edgy_u64 = |rng: &mut Rng, near: u64| match rng.below(6) {
        0 => 0,
        1 => u64::MAX,
        2 => 1 << 63,
        _ => rng.below(near + 1),
    };
    let mut p = Vec::new();
    let (cmd, answer) = match rng.below(20) {
        0..=3 => {
            p.extend(device(rng).to_le_bytes());
            p.extend(if rng.chance(90) { rng.below(1 << 16) } else { edgy_u64(rng, 1 << 24) }.to_le_bytes());
            (0, Some(16))
        }
        4..=6 => {
            p.extend(rpc_tensor(rng, bufs));
            p.push(0);
            p.extend(edgy_u64(rng, 256).to_le_bytes());
            p.extend(rng.bytes(256));
            (6, None)
        }
        7 => {
            p.extend(rpc_tensor(rng, bufs));
            p.extend(edgy_u64(rng, 256).to_le_bytes());
            let size = edgy_u64(rng, 4096);
            p.extend(size.to_le_bytes());
            (8, usize::try_from(size).ok().filter(|&n| n <= 1 << 20))
        }
        8..=11 => {
            let n_tensors = 1 + rng.below(6) as usize;
            let mut tensors: Vec<Vec<u8>> = (0..n_tensors).map(|_| rpc_tensor(rng, bufs)).collect();
            let mut nodes: Vec<u64> = (0..rng.below(4)).map(|_| rng.below(9)).collect();
            if rng.chance(80) {
                // In execution order, as ggml's client sends them: ids 1..=n, sources among the
                // tensors before, the operations as nodes.
                nodes.clear();
                for (i, t) in tensors.iter_mut().enumerate() {
                    t[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
                    for s in 0..10 {
                        let at = 124 + 8 * s;
                        if t[at..at + 8] != [0; 8] {
                            let src = if i == 0 { 0 } else { 1 + rng.below(i as u64) };
                            t[at..at + 8].copy_from_slice(&src.to_le_bytes());
                        }
                    }
                    t[204..212].copy_from_slice(&[0; 8]);
                    if t[52..56] != [0; 4] {
                        nodes.push(i as u64 + 1);
                    }
                }
            }
            p.extend(device(rng).to_le_bytes());
            p.extend((nodes.len() as u32).to_le_bytes());
            nodes.iter().for_each(|n| p.extend(n.to_le_bytes()));
            p.extend((n_tensors as u32).to_le_bytes());
            tensors.iter().for_each(|t| p.extend(t));
            (10, None)
        }
        12 => {
            p.extend(known(rng).to_le_bytes());
            (3, Some(8))
        }
        13 => {
            p.extend(known(rng).to_le_bytes());
            (4, None)
        }
        14 => {
            p.extend(known(rng).to_le_bytes());
            p.push(rng.next() as u8);
            (5, None)
        }
        15 => {
            p.extend(rpc_tensor(rng, bufs));
            p.extend(rpc_tensor(rng, bufs));
            (9, Some(1))
        }
        16 => {
            p.extend(device(rng).to_le_bytes());
            (0..11).for_each(|_| p.extend(rpc_tensor(rng, bufs)));
            (13, Some(8))
        }
        17 => {
            p.extend(rpc_tensor(rng, bufs));
            p.extend(edgy_u64(rng, 64).to_le_bytes());
            p.extend(edgy_u64(rng, 64).to_le_bytes());
            p.push(rng.next() as u8);
            (17, None)
        }
        18 => {
            let cmd = [1u8, 2, 11, 12, 15, 16][rng.below(6) as usize];
            if cmd == 12 {
                p.extend(rpc_tensor(rng, bufs));
            } else if cmd != 15 {
                p.extend(device(rng).to_le_bytes());
            }
            (cmd, [(1, 8), (2, 8), (11, 16), (15, 4)].iter().find(|c| c.0 == cmd).map(|c| c.1))
        }
        _ if rng.chance(20) => {
            p = rng.bytes(64);
            (rng.next() as u8, None)
        }
        _ => {
            p.extend(device(rng).to_le_bytes());
            (11, Some(16))
        }
    };
    if rng.chance(2) && !p.is_empty() {
        let at = rng.below(p.len() as u64) as usize;
        p[at] ^= 1 << rng.below(8);
    }
    (cmd, p, answer)
}

/// One connection's worth of random commands; returns how many were sent. The server may
/// close the connection at any point (a refusal, a worker ggml ended): then the episode ends.
fn rpc_episode(endpoint: &str, rng: &mut Rng, commands: usize) -> usize {
    let Ok(mut conn) = TcpStream::connect(endpoint) else { return 0 };
    conn.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let greeting =
        if rng.chance(97) { [&[14u8][..], &24u64.to_le_bytes(), &[0u8; 24]].concat() } else { rng.bytes(40) };
    if conn.write_all(&greeting).is_err() {
        return 0;
    }
    let answer = |conn: &mut TcpStream| -> Option<Vec<u8>> {
        let mut len = [0u8; 8];
        conn.read_exact(&mut len).ok()?;
        let len = u64::from_le_bytes(len);
        let mut payload = vec![0u8; usize::try_from(len).ok().filter(|&n| n <= 1 << 20)?];
        conn.read_exact(&mut payload).ok()?;
        Some(payload)
    };
    if answer(&mut conn).is_none() {
        return 0;
    }
    let mut bufs: Vec<Buf> = Vec::new();
    for sent in 0..commands {
        let (cmd, payload, expects) = if sent < 2 {
            // Buffers first, so that later commands have somewhere to point.
            let size = [64u64, 4096, 65536][rng.below(3) as usize];
            (0, [&0u32.to_le_bytes()[..], &size.to_le_bytes()].concat(), Some(16))
        } else {
            rpc_command(rng, &bufs)
        };
        let len = if rng.chance(1) { rng.next() } else { payload.len() as u64 };
        let message = [&[cmd][..], &len.to_le_bytes(), &payload].concat();
        if conn.write_all(&message).is_err() {
            return sent;
        }
        if expects.is_some() {
            let Some(a) = answer(&mut conn) else { return sent + 1 };
            if cmd == 0 && a.len() == 16 && a[..8] != [0; 8] {
                let handle = u64::from_le_bytes(a[..8].try_into().unwrap());
                let size = u64::from_le_bytes(a[8..].try_into().unwrap());
                let get_base = [&[3u8][..], &8u64.to_le_bytes(), &handle.to_le_bytes()].concat();
                if conn.write_all(&get_base).is_err() {
                    return sent + 1;
                }
                let Some(base) = answer(&mut conn) else { return sent + 1 };
                if let Ok(base) = base.try_into() {
                    bufs.push((handle, u64::from_le_bytes(base), size));
                }
            }
        }
    }
    commands
}

#[test]
fn rpc_server_outlives_random_command_streams() {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let endpoint = format!("127.0.0.1:{port}");
    let mut server = Server::spawn(&[
        "rpc-server",
        "--port",
        &port.to_string(),
        "-t",
        "1",
        "--timeout",
        "2",
        "--max-clients",
        "16",
        "-v",
    ]);
    server.wait_for_log("offering");
    let deadline = Instant::now() + Duration::from_secs(fuzz_secs());
    let (mut episodes, mut commands, mut seed) = (0u64, 0u64, base_seed());
    while Instant::now() < deadline {
        let mut rng = Rng::new(seed);
        commands += rpc_episode(&endpoint, &mut rng, 40) as u64;
        episodes += 1;
        seed += 1;
        assert!(server.alive(), "rpc-server ended after seed {}: {}", seed - 1, server.log.lock().unwrap());
    }
    // Sound after all that: a client is greeted and answered.
    let mut probe = TcpStream::connect(&endpoint).unwrap();
    probe.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    probe.write_all(&[&[14u8][..], &24u64.to_le_bytes(), &[0u8; 24], &[15], &0u64.to_le_bytes()].concat()).unwrap();
    let mut answers = [0u8; 8 + 28 + 8 + 4];
    probe.read_exact(&mut answers).unwrap();
    assert_eq!(u32::from_le_bytes(answers[44..].try_into().unwrap()), 1, "one device");
    let log = server.log.lock().unwrap().clone();
    let refused = log.matches("dropped: refused").count();
    let worker_ends = log.matches("the worker ended").count();
    if std::env::var_os("ROCM_LLAMA_FUZZ_LOG").is_some() {
        println!("{log}");
    }
    report(
        "rpc-server",
        json!({"episodes": episodes, "commands": commands, "refused": refused, "workers_ended_by_ggml": worker_ends, "server_deaths": 0}),
    );
}

// ---------------------------------------------------------------- HTTP

/// Valid requests the mutations start from.
fn seed_requests() -> Vec<(&'static str, Value)> {
    vec![
        ("/v1/completions", json!({"model": "m", "prompt": "Once upon a time", "max_tokens": 4, "temperature": 0})),
        ("/v1/completions", json!({"prompt": ["a", "b"], "max_tokens": 2, "stream": true, "logprobs": 2, "seed": 3})),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
                   "max_tokens": 4, "top_p": 0.9, "stop": ["\n"]}),
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "List"}], "max_tokens": 4, "stream": true,
                   "response_format": {"type": "json_schema", "json_schema": {"schema":
                       {"type": "object", "properties": {"a": {"type": "array", "items": {"type": "integer"}}}}}}}),
        ),
        ("/v1/embeddings", json!({"input": ["one text", "another"], "model": "m"})),
        ("/v1/completions", json!({"prompt": "x", "max_tokens": 3, "logit_bias": {"1": 5}, "n": 2, "echo": true})),
        (
            "/v1/completions",
            json!({"prompt": [[2, 818], [2, 8858]], "max_tokens": 2, "top_k": 5, "min_p": 0.1, "typical_p": 0.9,
                   "repeat_penalty": 1.1, "repeat_last_n": 16, "dry_multiplier": 0.5, "dry_sequence_breakers": ["\n"],
                   "n_predict": 3, "n_probs": 2, "logit_bias": [[5, false], ["the", 1.5]]}),
        ),
        ("/v1/completions", json!({"prompt": "a", "max_tokens": 4, "grammar": "root ::= \"yes\" | \"no\""})),
        ("/v1/embeddings", json!({"input": [[2, 818]], "dimensions": 8, "encoding_format": "base64"})),
        ("/completion", json!({"prompt": "Once", "n_predict": 3, "stream": true, "temperature": 0.5})),
        ("/tokenize", json!({"content": "Hello world", "add_special": true, "with_pieces": true})),
        ("/detokenize", json!({"tokens": [2, 818, 8858]})),
        ("/apply-template", json!({"messages": [{"role": "user", "content": "Hi"}]})),
        ("/rerank", json!({"query": "q", "documents": ["a", {"text": "b"}], "top_n": 1, "return_documents": true})),
        (
            "/api/chat",
            json!({"model": "m", "messages": [{"role": "user", "content": "Hi"}], "options": {"num_predict": 3}}),
        ),
        (
            "/api/generate",
            json!({"model": "m", "prompt": "Once", "raw": true, "stream": false, "format": "json",
                                 "options": {"num_predict": 4, "top_k": 3, "num_ctx": 64}}),
        ),
        ("/api/embed", json!({"model": "m", "input": ["a", "b"], "truncate": false, "dimensions": 4})),
        ("/api/show", json!({"model": "m"})),
        ("/slots/0?action=save", json!({"filename": "fuzz.bin"})),
        ("/slots/1?action=restore", json!({"filename": "fuzz.bin"})),
        ("/slots/1?action=erase", json!({})),
    ]
}

/// A JSON value at an edge of what a field might take.
fn edge_value(rng: &mut Rng) -> Value {
    match rng.below(16) {
        0 => Value::Null,
        1 => json!(-1),
        2 => json!(0),
        3 => json!(u64::MAX),
        4 => json!(i64::MIN),
        5 => json!(1e308),
        6 => json!(""),
        7 => json!("\u{0}"),
        8 => json!("x".repeat(rng.below(20_000) as usize)),
        9 => json!(true),
        10 => json!([]),
        11 => json!({}),
        12 => {
            let mut v = json!(1);
            for _ in 0..rng.below(300) {
                v = json!([v]);
            }
            v
        }
        13 => json!(rng.text(40)),
        14 => json!(rng.f32() as f64),
        _ => json!(rng.edgy(8)),
    }
}

/// Fields of the OpenAI and llama-server requests, to add with edge values.
const FIELDS: [&str; 25] = [
    "max_tokens",
    "n",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "seed",
    "stop",
    "stream",
    "logprobs",
    "top_logprobs",
    "presence_penalty",
    "frequency_penalty",
    "repeat_penalty",
    "logit_bias",
    "grammar",
    "response_format",
    "messages",
    "prompt",
    "input",
    "model",
    "echo",
    "stream_options",
    "tools",
    "filename",
];

/// Replaces, removes or adds fields anywhere in `v`.
fn mutate_json(rng: &mut Rng, v: &mut Value, depth: usize) {
    match v {
        Value::Object(map) => {
            let keys: Vec<String> = map.keys().cloned().collect();
            match rng.below(5) {
                0 if !keys.is_empty() => {
                    map.remove(&keys[rng.below(keys.len() as u64) as usize]);
                }
                1 => {
                    map.insert(FIELDS[rng.below(FIELDS.len() as u64) as usize].into(), edge_value(rng));
                }
                _ if !keys.is_empty() => {
                    let key = &keys[rng.below(keys.len() as u64) as usize];
                    let child = map.get_mut(key).unwrap();
                    if depth < 4 && rng.chance(50) {
                        mutate_json(rng, child, depth + 1);
                    } else {
                        *child = edge_value(rng);
                    }
                }
                _ => {}
            }
        }
        Value::Array(items) if !items.is_empty() => {
            let i = rng.below(items.len() as u64) as usize;
            match rng.below(4) {
                0 => {
                    items.remove(i);
                }
                1 => {
                    let copy = items[i].clone();
                    for _ in 0..rng.below(50) {
                        items.push(copy.clone());
                    }
                }
                _ => mutate_json(rng, &mut items[i], depth + 1),
            }
        }
        other => *other = edge_value(rng),
    }
}

/// One request to 127.0.0.1:`port`: the status (0 when the connection ended without one, as
/// it may after the time limit here).
fn http_status(port: u16, path: &str, body: &[u8]) -> u16 {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else { return 0 };
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    if s.write_all(head.as_bytes()).and_then(|_| s.write_all(body)).is_err() {
        return 0;
    }
    let mut first = [0u8; 12];
    if s.read_exact(&mut first).is_err() {
        return 0;
    }
    String::from_utf8_lossy(&first[9..12]).parse().unwrap_or(0)
}

#[test]
fn serve_outlives_mutated_request_bodies_and_never_answers_500() {
    let Some(model) = common::model_path() else { return };
    let slot_dir = std::env::temp_dir().join(format!("rocm-llama-fuzz-slots-{}", std::process::id()));
    let mut server = Server::spawn(&[
        "serve",
        "--slot-save-path",
        slot_dir.to_str().unwrap(),
        "--port",
        "0",
        "--threads",
        "1",
        "--no-progress",
        "-c",
        "1024",
        "--parallel",
        "2",
        "--model",
        model.to_str().unwrap(),
    ]);
    let log = server.wait_for_log("http://127.0.0.1:");
    let port: u16 = log
        .split("http://127.0.0.1:")
        .nth(1)
        .unwrap()
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let seeds = seed_requests();
    let deadline = Instant::now() + Duration::from_secs(fuzz_secs());
    let (mut requests, mut seed) = (0u64, base_seed());
    let mut statuses: BTreeMap<u16, u64> = BTreeMap::new();
    let mut five_hundreds = Vec::new();
    while Instant::now() < deadline {
        let mut rng = Rng::new(seed);
        let (path, valid) = &seeds[rng.below(seeds.len() as u64) as usize];
        let mut body = valid.clone();
        for _ in 0..1 + rng.below(3) {
            mutate_json(&mut rng, &mut body, 0);
        }
        let mut bytes = body.to_string().into_bytes();
        if rng.chance(20) && !bytes.is_empty() {
            // Bytes, not JSON: cut, flip, or splice.
            let at = rng.below(bytes.len() as u64) as usize;
            match rng.below(3) {
                0 => bytes.truncate(at),
                1 => bytes[at] ^= 1 << rng.below(8),
                _ => bytes.splice(at..at, rng.bytes(16)).for_each(drop),
            }
        }
        let status = http_status(port, path, &bytes);
        *statuses.entry(status).or_default() += 1;
        if status == 500 {
            five_hundreds.push(seed);
        }
        requests += 1;
        seed += 1;
        assert!(server.alive(), "serve ended after seed {}: {}", seed - 1, server.log.lock().unwrap());
    }
    let statuses: BTreeMap<String, u64> = statuses.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    let _ = std::fs::remove_dir_all(&slot_dir);
    report("serve", json!({"requests": requests, "statuses": statuses, "status_500_seeds": five_hundreds}));
    assert!(five_hundreds.is_empty(), "500 for seeds {five_hundreds:?} (ROCM_LLAMA_FUZZ_BASE_SEED reproduces)");
}
