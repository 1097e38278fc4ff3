//! `rocm-llama serve` end to end: over plain HTTP/1.1 (a client of std's TcpStream) routes,
//! errors, streaming, a full queue, a client that goes away, a storm of 300 streams cut at
//! random points, SIGTERM; and through clients no one here wrote: the `openai` Python package
//! (`tests/openai_client.py`) and curl.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(extra: &[&str]) -> Option<Server> {
        Some(Server::start_model(&common::model_path()?, extra))
    }

    fn start_model(model: &std::path::Path, extra: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_rocm-llama"))
            .args(["serve", "--port", "0", "--threads", "1", "--no-progress", "-c", "512", "--model"])
            .arg(model)
            .args(extra)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let port = loop {
            let line = lines.next().expect("serve printed its address").unwrap();
            if let Some(rest) = line.split("http://127.0.0.1:").nth(1) {
                break rest.split('/').next().unwrap().parse().unwrap();
            }
        };
        // Keep draining its log so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Server { child, port }
    }

    /// One request; the status, the headers (lower-case names) and the body.
    fn request(&self, method: &str, path: &str, key: Option<&str>, body: &str) -> (u16, String, String) {
        let mut s = self.send(method, path, key, body);
        let mut raw = String::new();
        s.read_to_string(&mut raw).unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
            unchunk(body)
        } else {
            body.to_string()
        };
        (status, head.to_ascii_lowercase(), body)
    }

    fn send(&self, method: &str, path: &str, key: Option<&str>, body: &str) -> TcpStream {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        let auth = key.map(|k| format!("Authorization: Bearer {k}\r\n")).unwrap_or_default();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        s
    }

    fn json(&self, path: &str, key: Option<&str>, body: &str) -> (u16, serde_json::Value) {
        let (status, _, body) = self.request("POST", path, key, body);
        (status, serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}")))
    }

    fn health(&self) -> serde_json::Value {
        serde_json::from_str(&self.request("GET", "/health", None, "").2).unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn unchunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    out
}

#[test]
fn routes_errors_and_streaming() {
    let Some(server) = Server::start(&["--api-key", "k1", "--pooling", "mean", "--alias", "gemma"]) else { return };
    let key = Some("k1");
    assert_eq!(server.health()["status"], "ok");
    let (status, _, _) = server.request("GET", "/v1/models", None, "");
    assert_eq!(status, 401);
    let (status, _, body) = server.request("GET", "/v1/models", key, "");
    assert_eq!(status, 200);
    assert!(body.contains("\"gemma\""), "{body}");

    let chat = r#"{"messages":[{"role":"user","content":"Say hello."}],"max_tokens":8,"temperature":0}"#;
    let (status, v) = server.json("/v1/chat/completions", key, chat);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["usage"]["completion_tokens"], 8);
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    // Greedy is deterministic: the same request, the same text.
    let (_, again) = server.json("/v1/chat/completions", key, chat);
    assert_eq!(again["choices"][0]["message"], v["choices"][0]["message"]);
    // OpenAI's cached_tokens: none the first time; the second time the slot that served the
    // first held the whole prompt, and all but its last token (whose logits are needed) reuse it.
    assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 0, "{v}");
    let prompt_tokens = again["usage"]["prompt_tokens"].as_u64().unwrap();
    assert_eq!(again["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64(), Some(prompt_tokens - 1), "{again}");

    // Streamed completion: chunks, the usage chunk, then [DONE].
    let (status, head, body) = server.request(
        "POST",
        "/v1/completions",
        key,
        r#"{"prompt":"The capital of France is","max_tokens":5,"temperature":0,"stream":true,"stream_options":{"include_usage":true}}"#,
    );
    assert_eq!(status, 200);
    assert!(head.contains("text/event-stream"), "{head}");
    let events: Vec<&str> = body.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
    assert_eq!(events.last(), Some(&"[DONE]"));
    let chunks: Vec<serde_json::Value> =
        events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    assert_eq!(chunks.last().unwrap()["usage"]["completion_tokens"], 5);
    let text: String = chunks.iter().filter_map(|c| c["choices"][0]["text"].as_str()).collect();
    assert!(!text.is_empty());

    // JSON schema output.
    let (status, v) = server.json(
        "/v1/chat/completions",
        key,
        r#"{"messages":[{"role":"user","content":"Give a name."}],"max_tokens":40,"response_format":{"type":"json_schema","json_schema":{"name":"n","schema":{"type":"object","properties":{"name":{"type":"string","maxLength":10}},"required":["name"]}}}}"#,
    );
    assert_eq!(status, 200, "{v}");
    if v["choices"][0]["finish_reason"] == "stop" {
        let content: serde_json::Value =
            serde_json::from_str(v["choices"][0]["message"]["content"].as_str().unwrap()).unwrap();
        assert!(content["name"].is_string());
    }
    // Log-probabilities.
    let (_, v) = server.json(
        "/v1/chat/completions",
        key,
        r#"{"messages":[{"role":"user","content":"Hi"}],"max_tokens":3,"temperature":0,"logprobs":true,"top_logprobs":2}"#,
    );
    let content = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(content.len(), 3);
    assert!(content[0]["logprob"].as_f64().unwrap() <= 0.0);
    assert_eq!(content[0]["top_logprobs"].as_array().unwrap().len(), 2);

    // Embeddings.
    let (status, v) = server.json("/v1/embeddings", key, r#"{"input":["a text","another"]}"#);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["data"].as_array().unwrap().len(), 2);

    // Prometheus metrics, without the key like /health.
    let (status, head, metrics) = server.request("GET", "/metrics", None, "");
    assert_eq!(status, 200);
    assert!(head.contains("text/plain"), "{head}");
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name) && !l.starts_with('#'))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from\n{metrics}"))
    };
    assert!(value("rocm_llama_requests_total{route=\"chat_completions\"}") >= 4.0);
    assert!(value("rocm_llama_generated_tokens_total") >= 16.0);
    assert!(value("rocm_llama_time_to_first_token_seconds_count") >= 4.0);
    assert_eq!(value("rocm_llama_texts_embedded_total"), 2.0);
    assert_eq!(value("rocm_llama_requests_running"), 0.0);

    // Errors: OpenAI-style objects with the right status.
    let (status, v) = server.json("/v1/chat/completions", key, "not json");
    assert_eq!((status, v["error"]["type"].as_str()), (400, Some("invalid_request_error")));
    // Any model name is served by the one model, which the response names (as llama-server).
    let (status, v) = server.json(
        "/v1/chat/completions",
        key,
        r#"{"model":"gpt-4o","messages":[{"role":"user","content":"x"}],"max_tokens":1}"#,
    );
    assert_eq!(status, 200, "{v}");
    assert_ne!(v["model"], "gpt-4o");
    let long = "word ".repeat(2000);
    let (status, v) = server.json("/v1/completions", key, &format!(r#"{{"prompt":"{long}"}}"#));
    assert_eq!(status, 400, "{v}");
    let (status, v) = server.json(
        "/v1/chat/completions",
        key,
        r#"{"messages":[{"role":"user","content":"x"}],"response_format":{"type":"json_schema","json_schema":{"schema":{"type":"object","patternProperties":{"a":{}}}}}}"#,
    );
    assert_eq!((status, v["error"]["param"].as_str()), (400, Some("response_format")), "{v}");
    let (status, _) =
        server.json("/v1/chat/completions", key, r#"{"messages":[{"role":"user","content":"x"}],"temperature":7}"#);
    assert_eq!(status, 400);
    // A NUL byte in a chat message is the client's error (it was a 500; a plain prompt
    // passes to the tokenizer by length and takes it).
    for body in [
        r#"{"messages":[{"role":"user","content":"a\u0000b"}]}"#,
        r#"{"messages":[{"role":"us\u0000er","content":"x"}]}"#,
    ] {
        let (status, v) = server.json("/v1/chat/completions", key, body);
        assert_eq!(status, 400, "{body}: {v}");
    }
    // llama-server's ignore_eos: read (a wrong type is a 400), and a run goes to its budget.
    let (status, _) = server.json("/v1/completions", key, r#"{"prompt":"Hi","ignore_eos":"yes"}"#);
    assert_eq!(status, 400);
    let (status, v) =
        server.json("/v1/completions", key, r#"{"prompt":"Hi","max_tokens":12,"ignore_eos":true,"seed":4}"#);
    assert_eq!((status, v["usage"]["completion_tokens"].as_u64()), (200, Some(12)), "{v}");
}

#[test]
fn a_full_queue_answers_503_and_a_client_that_leaves_frees_its_slot() {
    let Some(server) = Server::start(&["--parallel", "1", "--queue", "1", "--no-warmup"]) else { return };
    // One long streamed request holds the only slot.
    // A schema keeps it from ending early: no end of generation before a 300-character string.
    let long = r#"{"messages":[{"role":"user","content":"Write."}],"max_tokens":400,"stream":true,"response_format":{"type":"json_schema","json_schema":{"schema":{"type":"object","properties":{"a":{"type":"string","minLength":300}},"required":["a"]}}}}"#;
    let mut holder = server.send("POST", "/v1/chat/completions", None, long);
    let mut first = [0u8; 256];
    let _ = holder.read(&mut first).unwrap();
    // A second one waits in the one place of the queue; a third finds no room.
    let waiting = server.send("POST", "/v1/chat/completions", None, long);
    let t = Instant::now();
    let in_flight = |h: serde_json::Value| h["slots_running"].as_u64().unwrap() + h["queued"].as_u64().unwrap();
    while in_flight(server.health()) != 2 {
        assert!(t.elapsed() < Duration::from_secs(10), "the second request never queued");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (status, head, body) = server.request("POST", "/v1/completions", None, r#"{"prompt":"x","max_tokens":2}"#);
    assert_eq!(status, 503, "{body}");
    assert!(head.contains("retry-after"), "{head}");
    assert_eq!(in_flight(server.health()), 2);
    // The clients go away: their requests are cancelled at the engine's next step.
    drop(holder);
    drop(waiting);
    let t = Instant::now();
    while in_flight(server.health()) != 0 {
        assert!(t.elapsed() < Duration::from_secs(10), "the slot stayed busy after the client left");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, _, _) = server.request("POST", "/v1/completions", None, r#"{"prompt":"x","max_tokens":2}"#);
    assert_eq!(status, 200);
    let metrics = server.request("GET", "/metrics", None, "").2;
    assert!(metrics.lines().any(|l| l == "rocm_llama_requests_rejected_total 1"), "{metrics}");
}

#[cfg(unix)]
#[test]
fn sigterm_drains_and_exits_zero() {
    let Some(mut server) = Server::start(&[]) else { return };
    let (status, _, _) = server.request("POST", "/v1/completions", None, r#"{"prompt":"x","max_tokens":2}"#);
    assert_eq!(status, 200);
    let pid = server.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let t = Instant::now();
    let code = loop {
        if let Some(code) = server.child.try_wait().unwrap() {
            break code;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "serve did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(code.success(), "{code:?}");
}

/// A Python that has the package `module` (pip's `package`): `ROCM_LLAMA_PYTHON`, else
/// `python3`. Under CI (`scripts/test/run.sh` installs the package) its absence fails;
/// elsewhere the test skips.
fn python_with(module: &str, package: &str) -> Option<String> {
    let python = std::env::var("ROCM_LLAMA_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&python).args(["-c", &format!("import {module}")]).output().is_ok_and(|o| o.status.success());
    if ok {
        return Some(python);
    }
    if std::env::var_os("CI").is_some() {
        panic!("{python} lacks the {package} package under CI (scripts/test/run.sh installs it)");
    }
    eprintln!("SKIPPED: {python} has no {package} package (pip install {package})");
    None
}

#[test]
fn the_openai_python_package_and_curl_speak_to_it() {
    let Some(python) = python_with("openai", "openai") else { return };
    let Some(_) = common::model_path() else { return };
    // Qwen 2.5's published template renders tools (the test model has no template).
    let template = common::templates_dir().join("Qwen-Qwen2.5-7B-Instruct.jinja");
    let flags = ["--api-key", "sekrit", "--parallel", "4", "--pooling", "mean", "--chat-template"];
    let server = Server::start(&[&flags[..], &[template.to_str().unwrap()]].concat()).unwrap();
    let base = format!("http://127.0.0.1:{}/v1", server.port);
    let out = Command::new(&python)
        .args([concat!(env!("CARGO_MANIFEST_DIR"), "/tests/openai_client.py"), &base, "sekrit"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("all openai checks passed"), "{stdout}");

    // curl: a streamed chat ends with [DONE]; the key is required; models lists the model.
    let curl = |args: &[&str]| {
        let out = Command::new("curl").args(["-sS", "--max-time", "120"]).args(args).output().expect("curl runs");
        assert!(out.status.success(), "curl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let body = r#"{"messages":[{"role":"user","content":"Say hello."}],"max_tokens":8,"stream":true}"#;
    let url = format!("{base}/chat/completions");
    let sse =
        curl(&["-N", "-H", "Authorization: Bearer sekrit", "-H", "Content-Type: application/json", "-d", body, &url]);
    let events: Vec<&str> = sse.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
    assert_eq!(events.last(), Some(&"[DONE]"), "{sse}");
    assert!(events.len() > 2, "{sse}");
    for e in &events[..events.len() - 1] {
        let v: serde_json::Value = serde_json::from_str(e).unwrap_or_else(|err| panic!("{err}: {e}"));
        assert_eq!(v["object"], "chat.completion.chunk");
    }
    let code = curl(&["-o", "/dev/null", "-w", "%{http_code}", &format!("{base}/models")]);
    assert_eq!(code, "401");
    // curl on llama-server's own routes, as its README shows them.
    let root = format!("http://127.0.0.1:{}", server.port);
    let auth = ["-H", "Authorization: Bearer sekrit", "-H", "Content-Type: application/json"];
    let tokens = curl(&[&auth[..], &["-d", r#"{"content": "The river"}"#, &format!("{root}/tokenize")]].concat());
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&tokens).unwrap()["tokens"],
        serde_json::json!([818, 8858]),
        "{tokens}"
    );
    let body = r#"{"prompt": "The river", "n_predict": 4, "stream": true}"#;
    let sse = curl(&[&["-N"][..], &auth[..], &["-d", body, &format!("{root}/completion")]].concat());
    let last = sse.lines().filter_map(|l| l.strip_prefix("data: ")).next_back().unwrap();
    assert_eq!(serde_json::from_str::<serde_json::Value>(last).unwrap()["stop"], true, "{sse}");
    let models = curl(&["-H", "Authorization: Bearer sekrit", &format!("{base}/models")]);
    let v: serde_json::Value = serde_json::from_str(&models).unwrap();
    assert_eq!(v["data"].as_array().map(Vec::len), Some(1), "{models}");
}

/// A gauge or counter's value from the Prometheus text.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

/// The server process's resident memory in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Waits until nothing runs, nothing waits and no KV cell is held; the metrics then.
fn wait_idle(server: &Server, what: &str) -> String {
    let t = Instant::now();
    loop {
        let m = server.request("GET", "/metrics", None, "").2;
        let busy = metric(&m, "rocm_llama_requests_running")
            + metric(&m, "rocm_llama_queue_depth")
            + metric(&m, "rocm_llama_kv_cells_used");
        if busy == 0.0 {
            return m;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "{what}: still busy a minute later:\n{m}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Streams cut after a random number of events (zero: while still queued), `n` of them,
/// `at_once` at a time.
fn cut_streams(server: &Server, n: usize, at_once: usize, seed: u64) {
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for worker in 0..at_once {
            let next = &next;
            s.spawn(move || {
                let mut state = seed ^ (worker as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
                    state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                    let keep = (state >> 33) % 24;
                    let chat = (state >> 20) & 1 == 0;
                    let (path, body) = if chat {
                        (
                            "/v1/chat/completions",
                            r#"{"messages":[{"role":"user","content":"Tell a story."}],"max_tokens":64,"stream":true}"#,
                        )
                    } else {
                        ("/v1/completions", r#"{"prompt":"Once upon a time","max_tokens":64,"stream":true}"#)
                    };
                    let stream = server.send("POST", path, None, body);
                    let mut reader = BufReader::new(stream);
                    let mut events = 0;
                    let mut line = String::new();
                    while events < keep {
                        line.clear();
                        match reader.read_line(&mut line) {
                            Ok(0) | Err(_) => break,
                            Ok(_) if line.starts_with("data: ") => events += 1,
                            Ok(_) => {}
                        }
                    }
                    // Dropping the reader closes the connection mid-stream.
                }
            });
        }
    });
}

#[test]
fn a_disconnect_storm_leaves_no_slot_or_kv_cell_in_use_and_memory_flat() {
    let Some(server) = Server::start(&["--parallel", "8", "--queue", "512"]) else { return };
    // A first round brings every slot, buffer and thread to its working size.
    cut_streams(&server, 48, 16, 1);
    wait_idle(&server, "after the warm-up");
    let before = rss_kib(server.child.id());
    cut_streams(&server, 300, 32, 2);
    let m = wait_idle(&server, "after the storm");
    let after = rss_kib(server.child.id());
    // Streams cut before their request was read never reach the server; most do.
    let requests = metric(&m, "rocm_llama_requests_total{route=\"chat_completions\"}")
        + metric(&m, "rocm_llama_requests_total{route=\"completions\"}");
    assert!(requests >= 300.0, "{m}");
    assert!(metric(&m, "rocm_llama_requests_completed_total") >= 250.0, "{m}");
    assert_eq!(metric(&m, "rocm_llama_requests_rejected_total"), 0.0, "{m}");
    eprintln!("resident memory: {before} KiB before the storm, {after} KiB after");
    assert!(after < before + 64 * 1024, "resident memory grew from {before} KiB to {after} KiB over 300 cut streams");
    // And it still answers.
    let (status, _, _) = server.request("POST", "/v1/completions", None, r#"{"prompt":"x","max_tokens":2}"#);
    assert_eq!(status, 200);
}

/// Issue 26: slow and idle clients (slowloris) held connections as long as they liked, and
/// enough of them made the server unreachable. Silent, half-sent and idle keep-alive
/// connections are closed after `--timeout`, a body that does not arrive is a 408, and
/// connections over `--max-connections` are closed at once, without starving the next client
/// once the others are gone.
#[test]
fn slow_and_idle_clients_cannot_hold_the_server() {
    let Some(server) = Server::start(&["--timeout", "1", "--max-connections", "3"]) else { return };
    let connect = || {
        let s = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
        // A generous bound for the assertions below: far above the 1-2 s limits, so a busy
        // machine cannot fail the test, while a server that never closes still does.
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        s
    };
    let closed = |mut s: TcpStream| -> String {
        let mut got = Vec::new();
        match s.read_to_end(&mut got) {
            Ok(_) => String::from_utf8_lossy(&got).into_owned(),
            // Closed with our request unread: the kernel answers with a reset.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => String::from_utf8_lossy(&got).into_owned(),
            Err(e) => panic!("still open: {e}"),
        }
    };
    assert_eq!(closed(connect()), "", "a connection that sends nothing");
    let mut half = connect();
    half.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n").unwrap();
    assert_eq!(closed(half), "", "headers never finished");
    let mut idle = connect();
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert!(closed(idle).starts_with("HTTP/1.1 200"), "answered, then closed when idle");
    let mut slow = connect();
    slow.write_all(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{").unwrap();
    assert!(closed(slow).starts_with("HTTP/1.1 408"), "a body that never arrives");
    // Three held open (each has sent a byte), on a server whose time limit they stay well
    // within: a fourth, with a whole request, is closed unanswered.
    drop(server);
    let Some(server) = Server::start(&["--timeout", "600", "--max-connections", "3"]) else { return };
    let connect = || {
        let s = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        s
    };
    let health = |mut s: TcpStream| {
        s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        closed(s)
    };
    let held: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut s = connect();
            s.write_all(b"G").unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(health(connect()), "", "over the connection limit");
    drop(held);
    // Their slots free as the server sees them go.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if health(connect()).starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the server never took connections again");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// llama-server's slot routes: `GET /slots`, and a slot's KV state saved to
/// `--slot-save-path`, erased, restored and reused by the next request with the same start;
/// the wrong names, numbers, files and a busy slot are 4xx answers, and without the folder
/// saving is 501.
#[test]
fn slots_are_listed_saved_erased_and_restored() {
    let dir = std::env::temp_dir().join(format!("rocm-llama-slots-{}", std::process::id()));
    let Some(server) = Server::start(&["--parallel", "2", "--slot-save-path", dir.to_str().unwrap()]) else {
        return;
    };
    let slots = |server: &Server| -> Vec<serde_json::Value> {
        let (status, _, body) = server.request("GET", "/slots", None, "");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str::<serde_json::Value>(&body).unwrap().as_array().unwrap().clone()
    };
    let prompt =
        r#"{"prompt": "The rivers of Europe include the Danube, the Rhine and", "max_tokens": 4, "temperature": 0}"#;
    let (status, first) = server.json("/v1/completions", None, prompt);
    assert_eq!(status, 200, "{first}");
    let listed = slots(&server);
    assert_eq!(listed.len(), 2);
    let held = listed.iter().find(|s| s["cached_tokens"].as_u64().unwrap() > 0).expect("a slot holds the request");
    let (id, n) = (held["id"].as_u64().unwrap(), held["cached_tokens"].as_u64().unwrap());
    assert_eq!(held["is_processing"], false);

    let (status, saved) = server.json(&format!("/slots/{id}?action=save"), None, r#"{"filename": "rivers.bin"}"#);
    assert_eq!(status, 200, "{saved}");
    assert_eq!(saved["n_saved"], n);
    assert_eq!(saved["n_written"].as_u64().unwrap(), std::fs::metadata(dir.join("rivers.bin")).unwrap().len());
    let (status, erased) = server.json(&format!("/slots/{id}?action=erase"), None, "");
    assert_eq!((status, erased["n_erased"].as_u64()), (200, Some(n)));
    assert!(slots(&server).iter().all(|s| s["cached_tokens"] == 0));
    let (status, restored) = server.json(&format!("/slots/{id}?action=restore"), None, r#"{"filename": "rivers.bin"}"#);
    assert_eq!(status, 200, "{restored}");
    assert_eq!(restored["n_restored"], n);
    assert_eq!(slots(&server)[id as usize]["cached_tokens"], n);
    // The same request again starts from the restored cells.
    let (_, again) = server.json("/v1/completions", None, prompt);
    let usage = &again["usage"];
    assert_eq!(
        usage["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap() + 1,
        usage["prompt_tokens"].as_u64().unwrap(),
        "{again}"
    );
    assert_eq!(again["choices"][0]["text"], first["choices"][0]["text"]);

    std::fs::write(dir.join("junk.bin"), b"not a slot").unwrap();
    for (path, body, want) in [
        ("/slots/0?action=save", r#"{"filename": "../escape.bin"}"#, 400),
        ("/slots/0?action=save", r#"{"filename": ".hidden"}"#, 400),
        ("/slots/0?action=save", r#"{"name": "x.bin"}"#, 400),
        ("/slots/0?action=fly", "", 400),
        ("/slots/zero?action=erase", "", 400),
        ("/slots/7?action=erase", "", 404),
        ("/slots/0?action=restore", r#"{"filename": "missing.bin"}"#, 404),
        ("/slots/0?action=restore", r#"{"filename": "junk.bin"}"#, 400),
    ] {
        let (status, body) = server.json(path, None, body);
        assert_eq!(status, want, "{path}: {body}");
        assert!(body["error"]["message"].is_string(), "{path}: {body}");
    }
    assert!(!dir.join("../escape.bin").exists());

    // A slot serving a request is not touched.
    let mut stream = server.send(
        "POST",
        "/v1/completions",
        None,
        r#"{"prompt": "Count: one, two,", "max_tokens": 400, "stream": true, "ignore_eos": true}"#,
    );
    let start = Instant::now();
    let busy = loop {
        if let Some(s) = slots(&server).iter().find(|s| s["is_processing"] == true) {
            break s["id"].as_u64().unwrap();
        }
        assert!(start.elapsed() < Duration::from_secs(60), "the request never reached a slot");
        std::thread::sleep(Duration::from_millis(5));
    };
    let (status, body) = server.json(&format!("/slots/{busy}?action=save"), None, r#"{"filename": "busy.bin"}"#);
    assert_eq!(status, 409, "{body}");
    let _ = stream.write_all(b"");
    drop(stream);

    // Without --slot-save-path, saving is not offered.
    let plain = Server::start(&[]).unwrap();
    let (status, body) = plain.json("/slots/0?action=save", None, r#"{"filename": "x.bin"}"#);
    assert_eq!(status, 501, "{body}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 29: every field read or refused, prompts and inputs in every shape OpenAI takes,
/// seeded `n` choices that differ, streamed legacy log-probabilities.
#[test]
fn every_field_is_read_or_refused_and_every_prompt_shape_is_taken() {
    let Some(server) = Server::start(&["--pooling", "mean"]) else { return };
    let post = |path: &str, body: serde_json::Value| server.json(path, None, &body.to_string());
    // Unknown and refused fields are 400s that name them; neutral values pass.
    let (status, v) = post("/v1/completions", serde_json::json!({"prompt": "x", "max_tokens": 1, "frobnicate": 1}));
    assert_eq!((status, v["error"]["param"].as_str()), (400, Some("frobnicate")), "{v}");
    let (status, v) = post("/v1/completions", serde_json::json!({"prompt": "x", "max_tokens": 1, "mirostat": 2}));
    assert_eq!((status, v["error"]["param"].as_str()), (400, Some("mirostat")), "{v}");
    let (status, v) =
        post("/v1/completions", serde_json::json!({"prompt": "x", "max_tokens": 1, "mirostat": 0, "user": "u"}));
    assert_eq!(status, 200, "{v}");

    // top_k 1 at a high temperature is greedy whatever the seed (it was dropped once).
    let text = |seed: u32| {
        let (status, v) = post(
            "/v1/completions",
            serde_json::json!({"prompt": "The river", "max_tokens": 8, "temperature": 1.5, "top_k": 1, "seed": seed}),
        );
        assert_eq!(status, 200, "{v}");
        v["choices"][0]["text"].as_str().unwrap().to_string()
    };
    assert_eq!(text(1), text(2));
    // A grammar (llama-server's field) is obeyed.
    let (_, v) = post(
        "/v1/completions",
        serde_json::json!({"prompt": "Answer:", "max_tokens": 8, "grammar": "root ::= \"yes\" | \"no\""}),
    );
    assert!(["yes", "no"].contains(&v["choices"][0]["text"].as_str().unwrap()), "{v}");
    // A logit bias is obeyed: ban the greedy choice and the reply changes.
    let greedy = |bias: serde_json::Value| {
        let (status, v) = post(
            "/v1/completions",
            serde_json::json!({"prompt": "The river", "max_tokens": 1, "temperature": 0, "logit_bias": bias, "logprobs": 1}),
        );
        assert_eq!(status, 200, "{v}");
        v["choices"][0]["logprobs"]["tokens"][0].as_str().unwrap().to_string()
    };
    let first = greedy(serde_json::json!({}));
    let ids =
        rocm_llama::Model::load(common::model_path().unwrap(), &rocm_llama::LoadConfig::default().vocab_only(true))
            .unwrap()
            .vocab()
            .tokenize(&first, false, true)
            .unwrap();
    assert_ne!(greedy(serde_json::json!({ ids[0].to_string(): -100 })), first);

    // Prompts: text, texts, token ids, lists of token ids; n choices each, indexed prompt by
    // prompt; seeded choices differ (seed + i) and repeat.
    let many = serde_json::json!({"prompt": ["One", "Two"], "n": 2, "max_tokens": 6, "temperature": 1.0, "seed": 5});
    let (status, a) = post("/v1/completions", many.clone());
    assert_eq!(status, 200, "{a}");
    let texts: Vec<&str> = a["choices"].as_array().unwrap().iter().map(|c| c["text"].as_str().unwrap()).collect();
    assert_eq!(texts.len(), 4);
    assert_ne!(texts[0], texts[1], "seeded choices of one prompt differ");
    let (_, b) = post("/v1/completions", many);
    assert_eq!(a["choices"], b["choices"], "and repeat with the same seed");
    assert!(a["usage"]["prompt_tokens"].as_u64().unwrap() >= 4, "both prompts counted: {a}");
    let (status, v) =
        post("/v1/completions", serde_json::json!({"prompt": [2, 818, 8858], "max_tokens": 2, "echo": true}));
    assert_eq!(status, 200, "{v}");
    assert!(v["choices"][0]["text"].as_str().unwrap().starts_with("The river"), "echo of a token prompt: {v}");
    let (status, v) = post("/v1/completions", serde_json::json!({"prompt": [[2, 818], [2, 8858]], "max_tokens": 2}));
    assert_eq!((status, v["choices"].as_array().map(Vec::len)), (200, Some(2)), "{v}");
    let (status, _) = post("/v1/completions", serde_json::json!({"prompt": [2, "x"], "max_tokens": 2}));
    assert_eq!(status, 400);
    let (status, _) = post("/v1/completions", serde_json::json!({"prompt": [999_999_999], "max_tokens": 2}));
    assert_eq!(status, 400);

    // Streamed legacy log-probabilities are filled.
    let (_, _, body) = server.request(
        "POST",
        "/v1/completions",
        None,
        &serde_json::json!({"prompt": "The river", "max_tokens": 3, "logprobs": 2, "stream": true}).to_string(),
    );
    let with_lp = body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .filter(|c| c["choices"][0]["logprobs"]["tokens"].is_array())
        .count();
    assert!(with_lp >= 3, "{body}");

    // Embeddings of token ids (LangChain's default), and dimensions.
    let (status, v) = post("/v1/embeddings", serde_json::json!({"input": [[2, 818], [2, 8858]]}));
    assert_eq!((status, v["data"].as_array().map(Vec::len)), (200, Some(2)), "{v}");
    let (status, v) = post("/v1/embeddings", serde_json::json!({"input": "The river", "dimensions": 8}));
    assert_eq!(status, 200, "{v}");
    let e: Vec<f64> = v["data"][0]["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    assert_eq!(e.len(), 8);
    assert!((e.iter().map(|x| x * x).sum::<f64>() - 1.0).abs() < 1e-3, "normalised again");
    let (status, _) = post("/v1/embeddings", serde_json::json!({"input": "x", "dimensions": 0}));
    assert_eq!(status, 400);
}

/// llama-server's own command line works: -np, -a, -ctk/-ctv, --chat-template with a
/// built-in name and --chat-template-kwargs, and the flags that are always on here (--jinja,
/// --embeddings, --metrics, -cb) accepted.
#[test]
fn llama_server_flags_are_taken() {
    let flags = ["-np", "2", "-a", "served", "-ctk", "q8_0", "-ctv", "q8_0", "--jinja", "--embeddings", "--metrics"];
    let flags = [&flags[..], &["-cb", "--chat-template", "chatml"]].concat();
    let Some(server) = Server::start(&flags) else { return };
    // Variables a built-in format cannot take are refused at start, not on every request.
    let out = Command::new(env!("CARGO_BIN_EXE_rocm-llama"))
        .args(["serve", "--port", "0", "--chat-template", "chatml", "--chat-template-kwargs", r#"{"x": 1}"#, "-m"])
        .arg(common::model_path().unwrap())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("built-in format takes no template variables"));
    let (status, v) = server.json(
        "/v1/chat/completions",
        None,
        r#"{"model":"anything","messages":[{"role":"user","content":"Hi"}],"max_tokens":2}"#,
    );
    assert_eq!((status, v["model"].as_str()), (200, Some("served")), "{v}");
    let (_, _, slots) = server.request("GET", "/slots", None, "");
    let slots: serde_json::Value = serde_json::from_str(&slots).unwrap();
    assert_eq!(slots.as_array().map(Vec::len), Some(2), "{slots}");
}

/// llama-server's own routes in its shapes: /completion (whole and streamed), /tokenize,
/// /detokenize, /apply-template, /props, /v1/models/{id}, and /rerank (with its aliases) on a
/// reranker.
#[test]
fn llama_server_routes_answer_in_its_shapes() {
    let Some(server) = Server::start(&["-a", "served"]) else { return };
    let post = |path: &str, body: serde_json::Value| server.json(path, None, &body.to_string());
    let (status, v) = post("/tokenize", serde_json::json!({"content": "The river", "add_special": true}));
    assert_eq!((status, &v["tokens"]), (200, &serde_json::json!([2, 818, 8858])), "{v}");
    let (_, v) = post("/tokenize", serde_json::json!({"content": "The river", "with_pieces": true}));
    assert_eq!(v["tokens"][1], serde_json::json!({"id": 8858, "piece": " river"}), "{v}");
    let (status, v) = post("/detokenize", serde_json::json!({"tokens": [818, 8858]}));
    assert_eq!((status, v["content"].as_str()), (200, Some("The river")), "{v}");
    let (status, _) = post("/detokenize", serde_json::json!({"tokens": [-1]}));
    assert_eq!(status, 400);
    let (status, v) =
        post("/apply-template", serde_json::json!({"messages": [{"role": "user", "content": "Hi there"}]}));
    assert_eq!(status, 200, "{v}");
    assert!(v["prompt"].as_str().unwrap().contains("Hi there"), "{v}");

    // /completion, whole: llama-server's fields; greedy, so the same as /v1/completions.
    let body = serde_json::json!({"prompt": "The river", "n_predict": 6, "temperature": 0});
    let (status, whole) = post("/completion", body.clone());
    assert_eq!(status, 200, "{whole}");
    assert_eq!((whole["stop"].as_bool(), whole["tokens_predicted"].as_u64()), (Some(true), Some(6)), "{whole}");
    assert_eq!(whole["stop_type"], "limit");
    let (_, v1) =
        post("/v1/completions", serde_json::json!({"prompt": "The river", "max_tokens": 6, "temperature": 0}));
    assert_eq!(whole["content"], v1["choices"][0]["text"]);
    // Streamed: content pieces, then the last object with stop and timings.
    let mut streamed = body;
    streamed["stream"] = true.into();
    let (_, _, text) = server.request("POST", "/completion", None, &streamed.to_string());
    let events: Vec<serde_json::Value> =
        text.lines().filter_map(|l| l.strip_prefix("data: ")).map(|d| serde_json::from_str(d).unwrap()).collect();
    let last = events.last().unwrap();
    assert_eq!(last["stop"], true, "{text}");
    assert!(last["timings"]["predicted_n"].as_u64().is_some(), "{last}");
    let joined: String = events.iter().filter(|e| e["stop"] == false).map(|e| e["content"].as_str().unwrap()).collect();
    assert_eq!(joined, whole["content"].as_str().unwrap());

    let (status, _, props) = server.request("GET", "/props", None, "");
    let props: serde_json::Value = serde_json::from_str(&props).unwrap();
    assert_eq!((status, props["model_alias"].as_str()), (200, Some("served")), "{props}");
    assert!(props["default_generation_settings"]["params"]["top_k"].as_i64().is_some(), "{props}");
    let (status, _, model) = server.request("GET", "/v1/models/gpt-4o", None, "");
    assert_eq!(status, 200);
    assert!(model.contains("\"served\""), "{model}");
    // Reranking needs a reranker: this base model has no classifier head, a clear 400.
    let (status, v) = post("/rerank", serde_json::json!({"query": "q", "documents": ["a"]}));
    assert_eq!(status, 400, "{v}");
    drop(server);

    // On a reranker: scores best first, top_n, documents back when asked, every alias.
    let reranker = rocm_llama::synth::tiny_reranker().unwrap();
    let server = Server::start_model(&reranker, &[]);
    let docs = ["t1 t2", "t3 t4 t5", "t6"];
    let (status, v) = server.json(
        "/v1/rerank",
        None,
        &serde_json::json!({"query": "t1 t2 t3", "documents": docs, "top_n": 2, "return_documents": true}).to_string(),
    );
    assert_eq!(status, 200, "{v}");
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    assert!(results[0]["relevance_score"].as_f64() >= results[1]["relevance_score"].as_f64());
    let i = results[0]["index"].as_u64().unwrap() as usize;
    assert_eq!(results[0]["document"]["text"], docs[i]);
    for alias in ["/rerank", "/reranking", "/v1/reranking"] {
        let (status, v) =
            server.json(alias, None, &serde_json::json!({"query": "q", "documents": [{"text": "t1"}]}).to_string());
        assert_eq!(status, 200, "{alias}: {v}");
    }
}

/// Ollama's API through the `ollama` Python package: chat and generate, whole and streamed as
/// NDJSON, Ollama's option names, a format schema, tool calls parsed (whole and streamed),
/// embed, list, ps, show, and its errors.
#[test]
fn the_ollama_python_package_speaks_to_it() {
    let Some(python) = python_with("ollama", "ollama") else { return };
    let Some(_) = common::model_path() else { return };
    let template = common::templates_dir().join("Qwen-Qwen2.5-7B-Instruct.jinja");
    let server = Server::start(&["--pooling", "mean", "--chat-template", template.to_str().unwrap()]).unwrap();
    let base = format!("http://127.0.0.1:{}", server.port);
    let out = Command::new(&python)
        .args([concat!(env!("CARGO_MANIFEST_DIR"), "/tests/ollama_client.py"), &base])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("all ollama checks passed"), "{stdout}");
    // The stream is NDJSON: one object per line, the last one done.
    let (_, head, body) = server.request(
        "POST",
        "/api/generate",
        None,
        r#"{"model": "m", "prompt": "The river", "raw": true, "options": {"num_predict": 3}}"#,
    );
    assert!(head.contains("application/x-ndjson"), "{head}");
    let lines: Vec<serde_json::Value> = body.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.last().unwrap()["done"], true, "{body}");
    let (_, _, version) = server.request("GET", "/api/version", None, "");
    assert!(version.contains("\"version\""), "{version}");
}

/// Ollama's `think` on `/api/chat` and `/api/generate`: with a template whose generation prompt
/// opens the reasoning (as Qwen 3's does), `think: true` puts the reply in `thinking`; unset, it
/// stays in the content as the model wrote it; `false` reaches the template as
/// `enable_thinking: false`, which closes the reasoning; a bad value is a 400.
#[test]
fn ollama_think_separates_the_reasoning() {
    let Some(_) = common::model_path() else { return };
    let template = std::env::temp_dir().join(format!("rocm-llama-think-{}.jinja", std::process::id()));
    std::fs::write(
        &template,
        "{% for m in messages %}{{ m.content }}\n{% endfor %}\
         {% if enable_thinking is defined and not enable_thinking %}<think></think>{% else %}<think>{% endif %}",
    )
    .unwrap();
    let server = Server::start(&["--chat-template", template.to_str().unwrap()]).unwrap();
    let ask = |route: &str, think: serde_json::Value| {
        let mut body =
            serde_json::json!({"model": "any", "stream": false, "options": {"num_predict": 8, "temperature": 0}});
        if route == "/api/chat" {
            body["messages"] = serde_json::json!([{"role": "user", "content": "The river"}]);
        } else {
            body["prompt"] = "The river".into();
        }
        if !think.is_null() {
            body["think"] = think;
        }
        let (status, _, body) = server.request("POST", route, None, &body.to_string());
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let answer = if route == "/api/chat" { &v["message"] } else { &v };
        let text = answer[if route == "/api/chat" { "content" } else { "response" }].as_str().unwrap().to_string();
        (text, answer["thinking"].as_str().map(str::to_string))
    };
    for route in ["/api/chat", "/api/generate"] {
        let (plain, none) = ask(route, serde_json::Value::Null);
        assert!(!plain.is_empty() && none.is_none(), "{route}: {plain:?}");
        let (text, thinking) = ask(route, true.into());
        assert_eq!((text.as_str(), thinking.as_deref()), ("", Some(plain.as_str())), "{route}");
        let (closed, none) = ask(route, false.into());
        assert!(!closed.is_empty() && none.is_none(), "{route}: {closed:?}");
        let (status, _, _) = server.request(
            "POST",
            route,
            None,
            r#"{"prompt": "x", "messages": [{"role": "user", "content": "x"}], "think": 3}"#,
        );
        assert_eq!(status, 400, "{route}");
    }
    let _ = std::fs::remove_file(&template);
}

/// Tool calls (issue 29): with Qwen 2.5's published template, `tool_choice: "required"` and a
/// named function come back as valid parsed calls whose arguments match the parameters
/// (forced through a grammar), whole and streamed in OpenAI's shape; `none` renders no tools.
#[test]
fn forced_tool_calls_come_back_parsed() {
    let Some(_) = common::model_path() else { return };
    let template = common::templates_dir().join("Qwen-Qwen2.5-7B-Instruct.jinja");
    let server = Server::start(&["--chat-template", template.to_str().unwrap()]).unwrap();
    let tools = serde_json::json!([
        {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
         "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}}, "required": ["city"]}}},
        {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}},
    ]);
    let ask = |choice: serde_json::Value, stream: bool| {
        let body = serde_json::json!({"messages": [{"role": "user", "content": "What is the weather in Oslo?"}],
            "tools": tools, "tool_choice": choice, "max_tokens": 64, "temperature": 0, "stream": stream});
        server.request("POST", "/v1/chat/completions", None, &body.to_string())
    };
    for choice in
        [serde_json::json!("required"), serde_json::json!({"type": "function", "function": {"name": "get_weather"}})]
    {
        let (status, _, body) = ask(choice.clone(), false);
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let c = &v["choices"][0];
        assert_eq!(c["finish_reason"], "tool_calls", "{v}");
        let call = &c["message"]["tool_calls"][0];
        assert_eq!(call["type"], "function");
        assert!(call["id"].as_str().is_some_and(|id| !id.is_empty()));
        let name = call["function"]["name"].as_str().unwrap();
        let args: serde_json::Value = serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
        match name {
            "get_weather" => assert!(args["city"].is_string(), "{args}"),
            "get_time" => assert!(args.is_object() && choice == "required", "{v}"),
            other => panic!("unknown tool {other}"),
        }
        // Streamed: the same call, its arguments in pieces that join to the whole.
        let (_, _, sse) = ask(choice, true);
        let chunks: Vec<serde_json::Value> = sse
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter(|d| *d != "[DONE]")
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        let deltas: Vec<&serde_json::Value> =
            chunks.iter().filter_map(|c| c["choices"][0]["delta"]["tool_calls"].get(0)).collect();
        assert_eq!(deltas[0]["function"]["name"], name, "{sse}");
        let joined: String = deltas.iter().filter_map(|d| d["function"]["arguments"].as_str()).collect();
        assert_eq!(joined, call["function"]["arguments"].as_str().unwrap());
        assert_eq!(chunks.last().unwrap()["choices"][0]["finish_reason"], "tool_calls");
    }
    // A named function that does not exist, and a forced call beside a schema, are 400s.
    let (status, _, _) = ask(serde_json::json!({"type": "function", "function": {"name": "nope"}}), false);
    assert_eq!(status, 400);
    // auto, with a reply the grammar makes a Hermes call followed by more text: streamed as it
    // is written, so the call's chunks come before the text after it, its name first and
    // its arguments in several chunks (a reader that waited for the whole reply would send
    // the text first).
    let body = serde_json::json!({"messages": [{"role": "user", "content": "What is the weather in Oslo?"}],
        "tools": tools, "max_tokens": 200, "stream": true,
        "grammar": "root ::= \"Checking.<tool_call>\\n{\\\"name\\\": \\\"get_weather\\\", \\\"arguments\\\": {\\\"city\\\": \\\"Oslo\\\", \\\"note\\\": \\\"\" [a-z]{30} \"\\\"}}\\n</tool_call>\\nDone\" [a-z ]{20}"});
    let (status, _, sse) = server.request("POST", "/v1/chat/completions", None, &body.to_string());
    assert_eq!(status, 200, "{sse}");
    let deltas: Vec<serde_json::Value> = sse
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str::<serde_json::Value>(d).unwrap()["choices"][0]["delta"].clone())
        .collect();
    let first_call = deltas.iter().position(|d| d["tool_calls"][0]["function"]["name"] == "get_weather").expect(&sse);
    let after_text = first_call
        + deltas[first_call..].iter().position(|d| d["content"].as_str().is_some_and(|c| !c.is_empty())).expect(&sse);
    let arg_chunks = deltas[first_call..after_text].iter().filter(|d| d["tool_calls"].is_array()).count();
    assert!(first_call < after_text && arg_chunks >= 5, "call at {first_call}, text at {after_text}: {sse}");
    let joined: String = deltas.iter().filter_map(|d| d["tool_calls"][0]["function"]["arguments"].as_str()).collect();
    let args: serde_json::Value = serde_json::from_str(&joined).unwrap();
    assert_eq!(args["city"], "Oslo");
    assert_eq!(args["note"].as_str().map(str::len), Some(30), "{joined}");
    // none: the tools are not rendered, the reply is text.
    let (status, _, body) = ask(serde_json::json!("none"), false);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status, 200, "{v}");
    assert!(v["choices"][0]["message"]["tool_calls"].is_null(), "{v}");
}

/// LangChain's `langchain-openai` (ChatOpenAI invoke, stream, bind_tools with a forced tool,
/// with_structured_output; OpenAIEmbeddings sending token ids), as LangChain users run it.
#[test]
fn langchain_openai_speaks_to_it() {
    let Some(python) = python_with("langchain_openai", "langchain-openai") else { return };
    let Some(_) = common::model_path() else { return };
    let template = common::templates_dir().join("Qwen-Qwen2.5-7B-Instruct.jinja");
    let server = Server::start(&["--pooling", "mean", "--chat-template", template.to_str().unwrap()]).unwrap();
    let base = format!("http://127.0.0.1:{}/v1", server.port);
    let out = Command::new(&python)
        .args([concat!(env!("CARGO_MANIFEST_DIR"), "/tests/langchain_client.py"), &base])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("all langchain checks passed"), "{stdout}");
}

/// A thinking model's `<think>` reasoning goes to `reasoning_content`, whole and streamed
/// (llama-server's and DeepSeek's shape); `reasoning_format: "none"` leaves it in the content.
/// The reply is forced with a grammar, so any model writes it.
#[test]
fn reasoning_goes_to_reasoning_content() {
    let Some(server) = Server::start(&[]) else { return };
    let ask = |extra: serde_json::Value| {
        let mut body = serde_json::json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 64,
            "grammar": "root ::= \"<think>plan it</think>\\n\\nthe answer\""});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        server.request("POST", "/v1/chat/completions", None, &body.to_string())
    };
    let (status, _, body) = ask(serde_json::json!({}));
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status, 200, "{v}");
    let m = &v["choices"][0]["message"];
    assert_eq!((m["reasoning_content"].as_str(), m["content"].as_str()), (Some("plan it"), Some("the answer")), "{v}");
    let (_, _, sse) = ask(serde_json::json!({"stream": true}));
    let (mut reasoning, mut content) = (String::new(), String::new());
    for d in sse.lines().filter_map(|l| l.strip_prefix("data: ")).filter(|d| *d != "[DONE]") {
        let c: serde_json::Value = serde_json::from_str(d).unwrap();
        let delta = &c["choices"][0]["delta"];
        reasoning += delta["reasoning_content"].as_str().unwrap_or("");
        content += delta["content"].as_str().unwrap_or("");
    }
    assert_eq!((reasoning.as_str(), content.as_str()), ("plan it", "the answer"), "{sse}");
    let (_, _, body) = ask(serde_json::json!({"reasoning_format": "none"}));
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "<think>plan it</think>\n\nthe answer", "{v}");
    let (status, _, _) = ask(serde_json::json!({"reasoning_format": "other"}));
    assert_eq!(status, 400);
}

/// `serve --lora` / `--lora-scaled`: `GET /lora-adapters` lists them with their scales, a
/// request's `lora` picks its own scales (unnamed adapters 0), `POST /lora-adapters` sets what
/// requests without one get, and bad ids or shapes are 400s. Compared through the top
/// log-probabilities of a greedy token (raw logits), on the tiny synthetic model.
#[test]
fn lora_adapters_are_served_per_request() {
    use rocm_llama::synth::{self, LoraSpec};
    let dir = std::env::temp_dir().join(format!("rocm-llama-server-lora-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let shape = synth::find_shape("tiny").unwrap();
    let mut files = Vec::new();
    for seed in [7, 8] {
        let path = dir.join(format!("adapter-{seed}.gguf"));
        synth::lora_writer(shape, &LoraSpec { seed, ..LoraSpec::default() }).unwrap().write_to(&path).unwrap();
        files.push(path.to_string_lossy().to_string());
    }
    let model = synth::tiny_model().unwrap();
    let scaled = format!("{}:0.5", files[1]);
    let server = Server::start_model(&model, &["--lora", &files[0], "--lora-scaled", &scaled]);
    let (status, _, listing) = server.request("GET", "/lora-adapters", None, "");
    assert_eq!(status, 200, "{listing}");
    let listing: serde_json::Value = serde_json::from_str(&listing).unwrap();
    assert_eq!(listing[0]["path"], files[0].as_str(), "{listing}");
    assert_eq!((listing[0]["scale"].as_f64(), listing[1]["scale"].as_f64()), (Some(1.0), Some(0.5)), "{listing}");

    // The top log-probabilities of the first generated token under a request's `lora`.
    let top = |lora: Option<serde_json::Value>| -> String {
        let mut body = serde_json::json!({
            "prompt": [1, 300, 301, 302, 303], "max_tokens": 1, "temperature": 0, "logprobs": 5,
        });
        if let Some(l) = lora {
            body["lora"] = l;
        }
        let (status, v) = server.json("/v1/completions", None, &body.to_string());
        assert_eq!(status, 200, "{v}");
        v["choices"][0]["logprobs"]["top_logprobs"][0].to_string()
    };
    let none = top(Some(serde_json::json!([])));
    let first = top(Some(serde_json::json!([{"id": 0, "scale": 1.0}])));
    let served = top(None);
    assert_ne!(none, first, "adapter 0 changed nothing");
    assert_ne!(served, first, "the served set (0 at 1, 1 at 0.5) is adapter 0 alone");
    assert_eq!(top(Some(serde_json::json!([{"id": 0, "scale": 0.0}]))), none, "scale 0 is no adapter");
    // POST sets the scales of requests without a `lora` field.
    let (status, v) = server.json("/lora-adapters", None, r#"[{"id": 0, "scale": 1.0}]"#);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v[1]["scale"].as_f64(), Some(0.0), "an adapter left out goes to 0: {v}");
    assert_eq!(top(None), first);
    for bad in [r#"[{"id": 2, "scale": 1}]"#, r#"{"id": 0}"#, r#"[{"id": -1}]"#, r#"[{"id": 0, "scale": "x"}]"#] {
        let (status, v) = server.json("/lora-adapters", None, bad);
        assert_eq!(status, 400, "POST {bad}: {v}");
        let body = format!(r#"{{"prompt": "a", "max_tokens": 1, "lora": {bad}}}"#);
        let (status, v) = server.json("/v1/completions", None, &body);
        assert_eq!(status, 400, "lora {bad}: {v}");
    }
    // A file that is no adapter: serve refuses to start, naming it.
    let out = Command::new(env!("CARGO_BIN_EXE_rocm-llama"))
        .args(["serve", "--port", "0", "--no-progress", "--model"])
        .arg(&model)
        .args(["--lora"])
        .arg(&model)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("not a LoRA adapter"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A prompt whose reply copies from it.
const COPY: &str = "Paragraph: The old lighthouse stood on the northern cliff, its white tower cracked by a hundred \
                    winters. Every evening the keeper climbed the narrow stairs to light the lamp.\nThe same \
                    paragraph, copied exactly:\nParagraph: The old lighthouse stood on the northern cliff,";

/// A greedy `/completion` of `n` tokens after COPY, with the body fields `extra`; asserts a 200.
fn greedy_copy(server: &Server, n: u32, extra: serde_json::Value) -> serde_json::Value {
    let mut body = serde_json::json!({"prompt": COPY, "n_predict": n, "temperature": 0});
    body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    let (status, v) = server.json("/completion", None, &body.to_string());
    assert_eq!(status, 200, "{v}");
    v
}

/// `serve --spec-type ngram-simple`: a request that copies from its prompt confirms guesses
/// (`timings.draft_n_accepted`, `/metrics`) and gets the text it gets without speculation
/// (`speculative.n_max: 0`, greedy); bad lengths are a 400.
#[test]
fn serve_speculates_by_prompt_lookup() {
    let Some(server) = Server::start(&["--spec-type", "ngram-simple", "-np", "2"]) else { return };
    let ask = |extra: serde_json::Value| greedy_copy(&server, 32, extra);
    let spec = ask(serde_json::json!({}));
    let plain = ask(serde_json::json!({"speculative.n_max": 0}));
    assert!(spec["timings"]["draft_n_accepted"].as_u64().unwrap_or(0) > 10, "{spec}");
    assert!(spec["timings"]["draft_n"].as_u64() >= spec["timings"]["draft_n_accepted"].as_u64(), "{spec}");
    assert!(plain["timings"].get("draft_n").is_none(), "{plain}");
    assert_eq!(spec["content"], plain["content"]);
    let short = ask(serde_json::json!({"speculative.n_max": 2, "speculative.n_min": 2}));
    assert_eq!(short["content"], plain["content"]);
    for bad in [r#""speculative.n_max": 300"#, r#""speculative.n_max": 2, "speculative.n_min": 3"#] {
        let body = format!(r#"{{"prompt": "a", "n_predict": 1, {bad}}}"#);
        let (status, v) = server.json("/completion", None, &body);
        assert_eq!(status, 400, "{bad}: {v}");
    }
    let (_, _, metrics) = server.request("GET", "/metrics", None, "");
    let accepted: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("rocm_llama_draft_tokens_accepted_total "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(accepted > 10, "{metrics}");
}

/// `serve -md FILE` (the test model drafting for itself, `--draft-p-min 0`): the greedy text
/// is the text without speculation, and the target confirms most guesses.
#[test]
fn serve_speculates_with_a_draft_model() {
    let Some(model) = common::model_path() else { return };
    let draft = model.to_str().unwrap().to_string();
    let server =
        Server::start_model(&model, &["-md", &draft, "-ngld", "all", "--draft-p-min", "0", "--draft-max", "6"]);
    // COPY: a prompt without near ties in its greedy reply ("The capital of France is" has one
    // at its 12th token, where batch shapes may pick either).
    let ask = |extra: serde_json::Value| greedy_copy(&server, 24, extra);
    let spec = ask(serde_json::json!({}));
    let plain = ask(serde_json::json!({"speculative.n_max": 0}));
    assert!(spec["timings"]["draft_n_accepted"].as_u64().unwrap_or(0) > 10, "{spec}");
    assert_eq!(spec["content"], plain["content"]);
    // A draft that refuses every guess: p_min 1 (no pick is certain), still the same text.
    let none = ask(serde_json::json!({"speculative.p_min": 1.0}));
    assert_eq!(none["content"], plain["content"]);
    let (status, v) = server.json("/completion", None, r#"{"prompt": "a", "speculative.p_min": 2}"#);
    assert_eq!(status, 400, "{v}");
}
