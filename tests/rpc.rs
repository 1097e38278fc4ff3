//! Remote devices through llama.cpp's RPC backend, on loopback only: two `rocm-llama
//! rpc-server` processes (each offering its CPU) plus this process's CPU share the real test
//! model's layers. A server killed mid-generation, a wrong port, a listener that is not an
//! RPC server and one that never answers are each an `Error::Rpc`, within the time limit,
//! with this process still working.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rocm_llama::{Context, Engine, EngineConfig, Error, GenerateOptions, GpuLayers, LoadConfig, Model};

/// One `rocm-llama rpc-server` on 127.0.0.1, killed when dropped.
struct RpcServer {
    child: Child,
    endpoint: String,
}

impl RpcServer {
    fn start() -> RpcServer {
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_rocm-llama"))
            .args(["rpc-server", "--port", &port.to_string(), "--threads", "1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("rpc-server starts");
        let endpoint = format!("127.0.0.1:{port}");
        // ggml binds after the start line; wait until the port takes connections.
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(&endpoint).is_err() {
            assert!(Instant::now() < deadline, "rpc-server on {endpoint} never listened");
            std::thread::sleep(Duration::from_millis(50));
        }
        RpcServer { child, endpoint }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RpcServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Greedy token ids of `n` steps on a fresh context.
fn greedy_ids(model: &Model, prompt: &str, n: usize) -> Vec<i32> {
    let mut ctx = Context::new(model, &common::config()).expect("context");
    let events = ctx.generate(prompt, &GenerateOptions::greedy(n)).expect("generation starts");
    events
        .filter_map(|e| match e.expect("generation step") {
            rocm_llama::generate::Event::Token { id, .. } => Some(id),
            _ => None,
        })
        .collect()
}

#[test]
fn layers_split_over_two_servers_and_the_cpu_give_the_local_greedy_output() {
    let Some(path) = common::model_path() else { return };
    let (a, b) = (RpcServer::start(), RpcServer::start());
    let servers = vec![a.endpoint.clone(), b.endpoint.clone()];

    // The remote CPUs compute with plain (not repacked) weights; so does the reference.
    let local = Model::load(&path, &LoadConfig::default().cpu_repack(false)).unwrap();
    let prompt = "The capital of France is";
    let want = greedy_ids(&local, prompt, 32);
    drop(local);

    let devices = rocm_llama::rpc::devices(&servers, rocm_llama::rpc::DEFAULT_TIMEOUT).unwrap();
    let remotes: Vec<_> = devices.iter().filter_map(|d| d.remote.clone()).collect();
    assert_eq!(remotes, servers, "each server offers one device");
    assert!(devices.iter().all(|d| d.total > 0 && d.free > 0), "{devices:?}");

    // 12 of 18 layers remote (split between the servers by free memory), 6 and the input
    // embeddings here.
    let config = LoadConfig::default().cpu_repack(false).gpu_layers(GpuLayers::Count(12)).rpc(servers.clone());
    let model = Model::load(&path, &config).unwrap();
    assert_eq!(model.rpc_servers(), servers);
    let weights: Vec<&str> = model.memory().weights.iter().map(|w| w.name.as_str()).collect();
    for server in &servers {
        assert!(weights.iter().any(|w| w.contains(server.as_str())), "no weights on {server}: {weights:?}");
    }
    assert!(weights.iter().any(|w| w.starts_with("CPU")), "no weights on this CPU: {weights:?}");
    assert_eq!(greedy_ids(&model, prompt, 32), want, "greedy tokens over RPC differ from the local run");

    // fit plans over the remote devices and keeps the servers in the config it returns.
    let (fitted, plan) =
        LoadConfig::fit(&path, &rocm_llama::FitOptions::default().rpc(servers.clone()).max_ctx(2048)).unwrap();
    assert_eq!(fitted.rpc, servers);
    assert!(plan.device.contains("RPC"), "{plan:?}");
}

#[test]
fn a_server_killed_mid_generation_is_an_error_within_the_time_limit() {
    let Some(path) = common::model_path() else { return };
    let mut server = RpcServer::start();
    let limit = Duration::from_secs(10);
    let config = LoadConfig::default().rpc(vec![server.endpoint.clone()]).rpc_timeout(limit);
    let model = Arc::new(Model::load(&path, &config).unwrap());
    let engine =
        Engine::start(Arc::clone(&model), EngineConfig::default().n_seq_max(2).n_ctx_per_seq(1024).threads(1)).unwrap();
    let mut stream = engine.generate("Write a long story about a dragon.", &GenerateOptions::greedy(500)).unwrap();
    for _ in 0..4 {
        stream.next().expect("a token").expect("the server is up");
    }
    server.kill();
    let killed = Instant::now();
    let err = loop {
        match stream.next() {
            Some(Ok(_)) => assert!(killed.elapsed() < limit * 2, "still generating long after the server died"),
            Some(Err(e)) => break e,
            None => panic!("generation ended without noticing the server is gone"),
        }
    };
    assert!(killed.elapsed() < limit * 2, "the error took {:?}", killed.elapsed());
    match &err {
        Error::Rpc { endpoint, reason } => {
            assert_eq!(endpoint, &server.endpoint);
            assert!(!reason.is_empty());
        }
        other => panic!("expected Error::Rpc, got {other:?}"),
    }
    drop(stream);

    // The engine stays up and answers each new request with the error, at once.
    for _ in 0..2 {
        let started = Instant::now();
        let result = engine.generate("hello", &GenerateOptions::greedy(4)).and_then(|s| s.collect_text());
        assert!(matches!(&result, Err(Error::Rpc { .. })), "{result:?}");
        assert!(started.elapsed() < limit);
    }
    let _ = engine.stats();
    engine.shutdown();

    // Every other use of the model says so without reaching llama.cpp.
    assert!(matches!(model.check_remote(), Err(Error::Rpc { .. })));
    assert!(matches!(Context::new(&model, &common::config()), Err(Error::Rpc { .. })));
    // The gone device leaves the device list; a new load says the server is unreachable.
    let listed = rocm_llama::devices::backend_devices();
    assert!(listed.iter().all(|d| d.remote.as_ref() != Some(&server.endpoint)), "{listed:?}");
    let again = Model::load(&path, &config).map(|_| ());
    assert!(matches!(&again, Err(Error::Rpc { reason, .. }) if reason.contains("refused")), "{again:?}");

    // Local work in this process goes on.
    let local = Model::load(&path, &LoadConfig::default()).unwrap();
    assert_eq!(greedy_ids(&local, "Hello", 4).len(), 4);
}

#[test]
fn a_wrong_port_and_listeners_that_are_not_rpc_servers_are_clear_errors() {
    let Some(path) = common::model_path() else { return };
    let load = |endpoint: String, limit: Duration| {
        let started = Instant::now();
        let r = Model::load(&path, &LoadConfig::default().rpc(vec![endpoint.clone()]).rpc_timeout(limit)).map(|_| ());
        (r, started.elapsed())
    };
    let reason_of = |r: rocm_llama::Result<()>, endpoint: &str| match r {
        Err(Error::Rpc { endpoint: e, reason }) => {
            assert_eq!(e, endpoint);
            reason
        }
        other => panic!("expected Error::Rpc for {endpoint}, got {other:?}"),
    };

    // Nothing listens.
    let nobody = format!("127.0.0.1:{}", free_port());
    let (r, _) = load(nobody.clone(), Duration::from_secs(5));
    assert!(reason_of(r, &nobody).contains("connection refused"));

    // An HTTP server.
    let http = TcpListener::bind("127.0.0.1:0").unwrap();
    let http_at = http.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for mut c in http.incoming().flatten() {
            let _ = c.read(&mut [0u8; 64]);
            let _ = c.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
        }
    });
    let (r, _) = load(http_at.clone(), Duration::from_secs(5));
    let reason = reason_of(r, &http_at);
    assert!(reason.contains("not a llama.cpp RPC server") && reason.contains("HTTP/1.1"), "{reason}");

    // A listener that takes the connection and never answers: bounded by the time limit.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_at = silent.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        let held: Vec<TcpStream> = silent.incoming().flatten().collect();
        drop(held);
    });
    let (r, took) = load(silent_at.clone(), Duration::from_secs(1));
    assert!(reason_of(r, &silent_at).contains("no answer"));
    assert!(took < Duration::from_secs(10), "took {took:?}");

    // Addresses are checked before anything is sent.
    for bad in ["localhost", "[::1]:50052", "host:0"] {
        let r = Model::load(&path, &LoadConfig::default().rpc(vec![bad.to_string()]));
        assert!(matches!(r, Err(Error::InvalidConfig(_))), "{bad}");
    }
}

#[test]
fn rpc_server_on_the_command_line_says_where_warns_off_loopback_and_stops_on_ctrl_c() {
    use std::io::BufRead;
    let Some(path) = common::model_path() else { return };
    let bin = env!("CARGO_BIN_EXE_rocm-llama");
    let port = free_port();
    let mut server = Command::new(bin)
        .args(["rpc-server", "--port", &port.to_string(), "-t", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(server.stderr.take().unwrap());
    let mut first = String::new();
    stderr.read_line(&mut first).unwrap();
    let endpoint = format!("127.0.0.1:{port}");
    assert!(first.contains("offering CPU") && first.contains(&endpoint) && first.contains("free of"), "{first}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(&endpoint).is_err() {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(50));
    }

    // `devices --rpc` lists the remote device with its memory; `run --rpc` uses it.
    let out = Command::new(bin).args(["devices", "--json", "--rpc", &endpoint]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let remote = report["backend_devices"].as_array().unwrap().iter().find(|d| d["remote"] == endpoint.as_str());
    assert!(remote.is_some_and(|d| d["total"].as_u64() > Some(0)), "{report}");
    let out = Command::new(bin)
        .args(["run", "-m", path.to_str().unwrap(), "--rpc", &endpoint, "-ngl", "6", "--temp", "0", "-n", "4"])
        .args(["--no-progress", "-t", "1", "Hello"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains(&format!("RPC0[{endpoint}]")), "the weights' summary names the server: {err}");

    // Ctrl-C ends it at once with exit code 0.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(server.id() as i32, libc::SIGINT) };
    let status = server.wait().unwrap();
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    assert!(status.success(), "{status:?}: {rest}");
    assert!(rest.contains("stopped (Ctrl-C)"), "{rest}");

    // Another port: off loopback it warns; a port in use is an error at once.
    let mut open = Command::new(bin)
        .args(["rpc-server", "--host", "0.0.0.0", "--port", &free_port().to_string(), "-t", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(open.stderr.take().unwrap()).lines();
    let _start = lines.next().unwrap().unwrap();
    let warning = lines.next().unwrap().unwrap();
    assert!(warning.contains("no authentication") && warning.contains("0.0.0.0"), "{warning}");
    let _ = open.kill();
    let _ = open.wait();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port().to_string();
    let out = Command::new(bin).args(["rpc-server", "--port", &taken_port]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot listen there"));
}

/// One HTTP/1.1 request to 127.0.0.1:`port`; the status and the body.
fn http(port: u16, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    (head.split(' ').nth(1).unwrap().parse().unwrap(), body.to_string())
}

#[test]
fn serve_over_rpc_answers_503_and_reports_unhealthy_once_the_server_is_gone() {
    use std::io::BufRead;
    let Some(path) = common::model_path() else { return };
    let mut rpc = RpcServer::start();
    let mut serve = Command::new(env!("CARGO_BIN_EXE_rocm-llama"))
        .args(["serve", "--port", "0", "-t", "1", "--no-progress", "-c", "512", "--rpc", &rpc.endpoint, "-m"])
        .arg(&path)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(serve.stderr.take().unwrap()).lines();
    let port: u16 = loop {
        let line = lines.next().expect("serve printed its address").unwrap();
        if let Some(rest) = line.split("http://127.0.0.1:").nth(1) {
            break rest.split('/').next().unwrap().parse().unwrap();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let completion = r#"{"prompt":"Hello","max_tokens":4}"#;
    assert_eq!(http(port, "GET", "/health", "").0, 200);
    assert_eq!(http(port, "POST", "/v1/completions", completion).0, 200);

    rpc.kill();
    let (status, body) = http(port, "POST", "/v1/completions", completion);
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("rpc_server_failed") && body.contains(&rpc.endpoint), "{body}");
    let (status, body) = http(port, "GET", "/health", "");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("\"status\":\"error\""), "{body}");
    let _ = serve.kill();
    let _ = serve.wait();
}
