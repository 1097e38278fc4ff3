//! `pull` against a small HTTP server on 127.0.0.1 that this test starts: a full download,
//! a resume after the server cuts the connection, a checksum mismatch, split shards.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rocm_llama::pull::{pull, PullOptions};
use rocm_llama::Error;
use sha2::{Digest, Sha256};

#[derive(Clone, Default)]
struct Files {
    /// path -> (bytes, etag sha256 to announce)
    files: HashMap<String, (Vec<u8>, Option<String>)>,
    /// path -> (Location, etag sha256 to announce on the redirect)
    redirects: HashMap<String, (String, Option<String>)>,
}

struct Server {
    port: u16,
    /// Cut the body of the next N responses after this many bytes.
    cut_after: Arc<Mutex<Option<(usize, usize)>>>,
    requests: Arc<Mutex<Vec<String>>>,
    served: Arc<AtomicUsize>,
}

fn handle(mut s: TcpStream, files: &Files, cut: &Mutex<Option<(usize, usize)>>, log: &Mutex<Vec<String>>) {
    let mut reader = BufReader::new(s.try_clone().unwrap());
    let mut first = String::new();
    if reader.read_line(&mut first).is_err() {
        return;
    }
    let mut range_start = None;
    let mut auth = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
            range_start = v.trim().trim_end_matches('-').parse::<usize>().ok();
        }
        if line.to_ascii_lowercase().starts_with("authorization:") {
            auth = format!(" auth={}", line.split_once(':').map(|(_, v)| v.trim()).unwrap_or_default());
        }
    }
    let path = first.split_whitespace().nth(1).unwrap_or("/").to_string();
    log.lock().unwrap().push(format!("{path} {range_start:?}{auth}"));
    if let Some((location, etag)) = files.redirects.get(&path) {
        let mut head =
            format!("HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n");
        if let Some(e) = etag {
            head.push_str(&format!("X-Linked-ETag: \"{e}\"\r\n"));
        }
        head.push_str("\r\n");
        let _ = s.write_all(head.as_bytes());
        return;
    }
    let Some((body, etag)) = files.files.get(&path) else {
        let _ = s.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
    };
    let start = range_start.unwrap_or(0).min(body.len());
    let part = &body[start..];
    let mut head = if range_start.is_some() {
        format!("HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {start}-{}/{}\r\n", body.len() - 1, body.len())
    } else {
        "HTTP/1.1 200 OK\r\n".to_string()
    };
    head.push_str(&format!("Content-Length: {}\r\nConnection: close\r\n", part.len()));
    if let Some(e) = etag {
        head.push_str(&format!("X-Linked-ETag: \"{e}\"\r\n"));
    }
    head.push_str("\r\n");
    let _ = s.write_all(head.as_bytes());
    let mut cut = cut.lock().unwrap();
    match cut.as_mut() {
        Some((n, after)) if *n > 0 => {
            *n -= 1;
            let _ = s.write_all(&part[..(*after).min(part.len())]);
            // Drop the connection mid-body.
        }
        _ => {
            let _ = s.write_all(part);
        }
    }
    let _ = s.flush();
}

fn serve(files: Files) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let cut_after = Arc::new(Mutex::new(None));
    let requests = Arc::new(Mutex::new(Vec::new()));
    let served = Arc::new(AtomicUsize::new(0));
    let (c, r, n) = (cut_after.clone(), requests.clone(), served.clone());
    std::thread::spawn(move || {
        // Bounded: the test process ends it; each connection is handled in turn.
        for stream in listener.incoming().take(200) {
            let Ok(s) = stream else { continue };
            handle(s, &files, &c, &r);
            n.fetch_add(1, Ordering::SeqCst);
        }
    });
    Server { port, cut_after, requests, served }
}

fn sha(b: &[u8]) -> String {
    Sha256::digest(b).iter().map(|x| format!("{x:02x}")).collect()
}

fn payload(n: usize, seed: u8) -> Vec<u8> {
    let mut b = b"GGUF\x03\0\0\0".to_vec();
    b.extend((0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)));
    b
}

fn dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("rocm-llama-pull-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn options(d: &std::path::Path, port: u16) -> PullOptions {
    PullOptions::new(d).hf_endpoint(format!("http://127.0.0.1:{port}")).hf_token(None)
}

#[test]
fn full_download_from_a_url_and_from_hf() {
    let body = payload(300_000, 1);
    let mut files = Files::default();
    files.files.insert("/models/small.gguf".into(), (body.clone(), None));
    files.files.insert("/org/repo/resolve/main/tiny.gguf".into(), (body.clone(), Some(sha(&body))));
    let server = serve(files);
    let d = dir("full");
    let seen = Arc::new(AtomicUsize::new(0));
    let s2 = seen.clone();
    let o = options(&d, server.port).progress(Arc::new(move |p: &rocm_llama::pull::Progress| {
        assert!(p.total == Some(300_008) && p.done <= 300_008);
        s2.fetch_add(1, Ordering::SeqCst);
    }) as Arc<rocm_llama::pull::DownloadProgressFn>);
    let got = pull(&format!("http://127.0.0.1:{}/models/small.gguf", server.port), &o).unwrap();
    assert_eq!(got, vec![d.join("small.gguf")]);
    assert_eq!(std::fs::read(&got[0]).unwrap(), body);
    assert!(seen.load(Ordering::SeqCst) > 0);
    // Hugging Face source through HF_ENDPOINT, verified against the announced sha256.
    let got = pull("hf:org/repo/tiny.gguf", &o).unwrap();
    assert_eq!(std::fs::read(&got[0]).unwrap(), body);
    // Nothing temporary is left behind.
    let names: Vec<String> =
        std::fs::read_dir(&d).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
    assert!(names.iter().all(|n| !n.ends_with(".part")), "{names:?}");
    // A second pull finds the file and does not download again.
    let before = server.served.load(Ordering::SeqCst);
    pull("hf:org/repo/tiny.gguf", &o).unwrap();
    assert_eq!(server.served.load(Ordering::SeqCst), before);
    // A missing file is an HTTP error.
    assert!(matches!(pull("hf:org/repo/missing.gguf", &o), Err(Error::Download { .. })));
}

#[test]
fn a_cut_connection_is_resumed() {
    let body = payload(2_000_000, 7);
    let mut files = Files::default();
    files.files.insert("/org/repo/resolve/main/big.gguf".into(), (body.clone(), Some(sha(&body))));
    let server = serve(files);
    *server.cut_after.lock().unwrap() = Some((2, 700_000));
    let d = dir("resume");
    let got = pull("hf:org/repo/big.gguf", &options(&d, server.port)).unwrap();
    assert_eq!(std::fs::read(&got[0]).unwrap(), body);
    let reqs = server.requests.lock().unwrap().clone();
    assert_eq!(reqs.len(), 3, "{reqs:?}");
    assert!(reqs[1].ends_with("Some(700000)") && reqs[2].ends_with("Some(1400000)"), "{reqs:?}");
}

#[test]
fn a_checksum_mismatch_is_an_error_and_leaves_no_file() {
    let body = payload(100_000, 3);
    let mut files = Files::default();
    files.files.insert("/org/repo/resolve/main/bad.gguf".into(), (body.clone(), Some(sha(b"something else"))));
    files.files.insert("/plain/ok.gguf".into(), (body.clone(), None));
    let server = serve(files);
    let d = dir("mismatch");
    let r = pull("hf:org/repo/bad.gguf", &options(&d, server.port));
    assert!(matches!(r, Err(Error::ChecksumMismatch { .. })), "{r:?}");
    assert_eq!(std::fs::read_dir(&d).unwrap().count(), 0);
    // A sha256 given by the caller is checked too.
    let mut o = options(&d, server.port).sha256("00".repeat(32));
    let r = pull(&format!("http://127.0.0.1:{}/plain/ok.gguf", server.port), &o);
    assert!(matches!(r, Err(Error::ChecksumMismatch { .. })), "{r:?}");
    assert_eq!(std::fs::read_dir(&d).unwrap().count(), 0);
    o.sha256 = Some(sha(&body));
    assert!(pull(&format!("http://127.0.0.1:{}/plain/ok.gguf", server.port), &o).is_ok());
}

#[test]
fn shards_of_a_split_model_come_together() {
    let mut files = Files::default();
    for i in 1..=3 {
        files.files.insert(format!("/org/repo/resolve/main/m-{i:05}-of-00003.gguf"), (payload(10_000, i as u8), None));
    }
    let server = serve(files);
    let d = dir("shards");
    let got = pull("hf:org/repo/m-00001-of-00003.gguf", &options(&d, server.port)).unwrap();
    assert_eq!(got.len(), 3);
    for (i, p) in got.iter().enumerate() {
        assert_eq!(std::fs::read(p).unwrap(), payload(10_000, i as u8 + 1));
    }
    // The inventory groups them into one (unreadable: they are not real GGUF) model.
    let entries = rocm_llama::inventory::scan(&d);
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].shards.len(), 3);
    assert!(entries[0].info.is_err());
}

/// The hub redirects downloads to another host (a CDN) and announces the sha256 only on the
/// redirect: the checksum is still checked, and the token goes to the hub alone.
#[test]
fn a_redirected_download_is_checked_and_keeps_the_token_at_the_hub() {
    let body = payload(200_000, 5);
    // The "CDN" is a second server on another port: another origin.
    let mut cdn_files = Files::default();
    cdn_files.files.insert("/blob/good".into(), (body.clone(), None));
    cdn_files.files.insert("/blob/bad".into(), (payload(200_000, 6), None));
    let cdn = serve(cdn_files);
    let mut hub_files = Files::default();
    hub_files.redirects.insert(
        "/org/repo/resolve/main/good.gguf".into(),
        (format!("http://127.0.0.1:{}/blob/good", cdn.port), Some(sha(&body))),
    );
    hub_files.redirects.insert(
        "/org/repo/resolve/main/bad.gguf".into(),
        (format!("http://127.0.0.1:{}/blob/bad", cdn.port), Some(sha(&body))),
    );
    // A relative redirect on the hub itself.
    hub_files.redirects.insert("/org/repo/resolve/main/moved.gguf".into(), ("/files/moved.gguf".into(), None));
    hub_files.files.insert("/files/moved.gguf".into(), (body.clone(), Some(sha(&body))));
    let hub = serve(hub_files);
    let d = dir("redirect");
    let o = options(&d, hub.port).hf_token("secret-token".to_string());

    let got = pull("hf:org/repo/good.gguf", &o).unwrap();
    assert_eq!(std::fs::read(&got[0]).unwrap(), body);
    let hub_log = hub.requests.lock().unwrap().clone();
    let cdn_log = cdn.requests.lock().unwrap().clone();
    assert!(hub_log[0].ends_with("auth=Bearer secret-token"), "{hub_log:?}");
    assert!(cdn_log.iter().all(|r| !r.contains("auth=")), "the token leaked to another host: {cdn_log:?}");

    // The CDN serves other bytes than the hub announced: a mismatch, no file left.
    let r = pull("hf:org/repo/bad.gguf", &o);
    assert!(matches!(r, Err(Error::ChecksumMismatch { .. })), "{r:?}");
    assert!(!d.join("bad.gguf").exists());

    let got = pull("hf:org/repo/moved.gguf", &o).unwrap();
    assert_eq!(std::fs::read(&got[0]).unwrap(), body);
    let hub_log = hub.requests.lock().unwrap().clone();
    assert!(hub_log.iter().any(|r| r.starts_with("/files/moved.gguf") && r.contains("auth=Bearer")), "{hub_log:?}");
}

/// `hf:ORG/REPO:QUANT` reads the repository's file list and fetches the matching file.
#[test]
fn a_quantization_tag_picks_the_file() {
    let body = payload(50_000, 9);
    let mut files = Files::default();
    let list = r#"{"id":"org/repo","siblings":[{"rfilename":"README.md"},{"rfilename":"m-Q8_0.gguf"},{"rfilename":"m-Q4_K_M.gguf"}]}"#;
    files.files.insert("/api/models/org/repo".into(), (list.as_bytes().to_vec(), None));
    files.files.insert("/org/repo/resolve/main/m-Q4_K_M.gguf".into(), (body.clone(), Some(sha(&body))));
    files.files.insert("/org/repo/resolve/main/m-Q8_0.gguf".into(), (payload(50_000, 10), None));
    let server = serve(files);
    let d = dir("quant");
    let o = options(&d, server.port);
    // No tag: Q4_K_M.
    let got = pull("hf:org/repo", &o).unwrap();
    assert_eq!(got, vec![d.join("m-Q4_K_M.gguf")]);
    assert_eq!(std::fs::read(&got[0]).unwrap(), body);
    let got = pull("hf:org/repo:q8_0", &o).unwrap();
    assert_eq!(got, vec![d.join("m-Q8_0.gguf")]);
    let r = pull("hf:org/repo:Q6_K", &o);
    assert!(matches!(&r, Err(Error::Download { reason, .. }) if reason.contains("no Q6_K file")), "{r:?}");
}
