//! Downloading models: [`pull`] a URL or a Hugging Face file into the model folder, with
//! resume, sha256 verification and an atomic rename at the end.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::models::{shard_name, shard_parts};

/// Where a model comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A direct `http(s)://` URL.
    Url(String),
    /// `hf:ORG/REPO/FILE.gguf` (a file of a Hugging Face repository, `main` revision).
    HuggingFace {
        /// `ORG/REPO`.
        repo: String,
        /// Path of the file inside the repository.
        file: String,
    },
}

impl Source {
    /// Parses `hf:ORG/REPO/FILE` or an `http(s)://` URL.
    pub fn parse(s: &str) -> Result<Source> {
        if let Some(rest) = s.strip_prefix("hf:") {
            let mut parts = rest.splitn(3, '/');
            let (Some(org), Some(repo), Some(file)) = (parts.next(), parts.next(), parts.next()) else {
                return Err(Error::InvalidConfig(format!("{s:?}: expected hf:ORG/REPO/FILE.gguf")));
            };
            if org.is_empty() || repo.is_empty() || file.is_empty() || file.split('/').any(|p| p == "..") {
                return Err(Error::InvalidConfig(format!("{s:?}: expected hf:ORG/REPO/FILE.gguf")));
            }
            return Ok(Source::HuggingFace { repo: format!("{org}/{repo}"), file: file.to_string() });
        }
        if s.starts_with("http://") || s.starts_with("https://") {
            return Ok(Source::Url(s.to_string()));
        }
        Err(Error::InvalidConfig(format!("{s:?}: a source is an http(s):// URL or hf:ORG/REPO/FILE.gguf")))
    }

    /// The file name the download is saved under.
    pub fn file_name(&self) -> String {
        let path = match self {
            Source::Url(u) => u.split(['?', '#']).next().unwrap_or(u),
            Source::HuggingFace { file, .. } => file.as_str(),
        };
        path.rsplit('/').next().unwrap_or("model.gguf").to_string()
    }

    /// The download URL; an `hf:` source is resolved against `hf_endpoint`, the hub's address
    /// (what `HF_ENDPOINT` holds for Hugging Face's own tools).
    pub fn url(&self, hf_endpoint: &str) -> String {
        match self {
            Source::Url(u) => u.clone(),
            Source::HuggingFace { repo, file } => {
                format!("{}/{repo}/resolve/main/{file}", hf_endpoint.trim_end_matches('/'))
            }
        }
    }

    /// The same source for another file name in the same place (for the other shards).
    fn with_file_name(&self, name: &str) -> Source {
        match self {
            Source::Url(u) => {
                let base = u.split(['?', '#']).next().unwrap_or(u);
                let dir = base.rsplit_once('/').map(|(d, _)| d).unwrap_or(base);
                Source::Url(format!("{dir}/{name}"))
            }
            Source::HuggingFace { repo, file } => {
                let dir = file.rsplit_once('/').map(|(d, _)| format!("{d}/")).unwrap_or_default();
                Source::HuggingFace { repo: repo.clone(), file: format!("{dir}{name}") }
            }
        }
    }
}

/// Progress of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// The file being written.
    pub file: String,
    /// Bytes on disk so far (resumed bytes included).
    pub done: u64,
    /// Total bytes, when the server says.
    pub total: Option<u64>,
}

/// A progress callback.
pub type ProgressFn = dyn Fn(&Progress) + Send + Sync;

/// Settings for [`pull`].
#[derive(Clone)]
pub struct PullOptions {
    /// The folder to write into.
    pub dir: PathBuf,
    /// The expected sha256 (hex) of the file (single-file models). Hugging Face's
    /// `X-Linked-ETag` is used when this is not given.
    pub sha256: Option<String>,
    /// The hub's address that `hf:` sources resolve against (default: `HF_ENDPOINT`; empty
    /// when that is unset, and then `hf:` sources are an error that says so).
    pub hf_endpoint: String,
    /// How often a broken transfer is resumed before giving up.
    pub retries: u32,
    /// Called as bytes arrive.
    pub progress: Option<Arc<ProgressFn>>,
}

impl PullOptions {
    /// Defaults for `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        PullOptions {
            dir: dir.into(),
            sha256: None,
            hf_endpoint: std::env::var("HF_ENDPOINT").unwrap_or_default(),
            retries: 5,
            progress: None,
        }
    }
}

/// Downloads `source` into `opts.dir`; for the first shard of a split model
/// (`name-00001-of-0000N.gguf`), every shard. Returns the files written (or already there).
pub fn pull(source: &str, opts: &PullOptions) -> Result<Vec<PathBuf>> {
    let src = Source::parse(source)?;
    if matches!(src, Source::HuggingFace { .. }) && opts.hf_endpoint.trim().is_empty() {
        return Err(Error::InvalidConfig(format!(
            "{source:?}: hf: sources need the hub's address: set HF_ENDPOINT (or PullOptions::hf_endpoint)"
        )));
    }
    std::fs::create_dir_all(&opts.dir).map_err(|e| Error::Io { path: opts.dir.clone(), source: e })?;
    let name = src.file_name();
    let files: Vec<(Source, String)> = match shard_parts(&name) {
        Some((base, _, total)) => {
            (1..=total).map(|i| shard_name(base, i, total)).map(|n| (src.with_file_name(&n), n)).collect()
        }
        None => vec![(src.clone(), name)],
    };
    let single = files.len() == 1;
    let mut out = Vec::new();
    for (s, n) in files {
        let expected = if single { opts.sha256.clone() } else { None };
        out.push(fetch(&s.url(&opts.hf_endpoint), &opts.dir.join(&n), expected, opts)?);
    }
    Ok(out)
}

fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// The sha256 in an `X-Linked-ETag`/`ETag` header, when it is one.
fn etag_sha256(resp: &ureq::Response) -> Option<String> {
    let v = resp.header("x-linked-etag").or_else(|| resp.header("etag"))?;
    let v = v.trim().trim_start_matches("W/").trim_matches('"').to_ascii_lowercase();
    (v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit())).then_some(v)
}

fn fetch(url: &str, dest: &Path, expected: Option<String>, opts: &PullOptions) -> Result<PathBuf> {
    let fail = |reason: String| Error::Download { url: url.to_string(), reason };
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |e: std::io::Error| Error::Io { path: path.clone(), source: e }
    };
    let file_name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if dest.exists() {
        if let Some(exp) = &expected {
            let actual = sha256_file(dest).map_err(io(dest))?;
            if &actual != exp {
                return Err(fail(format!(
                    "{} exists with a different sha256 ({actual}); remove it first",
                    dest.display()
                )));
            }
        }
        return Ok(dest.to_path_buf());
    }
    let part = dest.with_file_name(format!(".{file_name}.part"));
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(30))
        .timeout_read(Duration::from_secs(60))
        .build();
    let mut expected = expected.map(|e| e.to_ascii_lowercase());
    let mut attempts = 0;
    loop {
        let have = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
        let mut req = agent.get(url);
        if have > 0 {
            req = req.set("Range", &format!("bytes={have}-"));
        }
        let resp = match req.call() {
            Ok(r) => r,
            Err(ureq::Error::Status(416, _)) if have > 0 => {
                // Nothing left to send: the part file is complete.
                break;
            }
            Err(ureq::Error::Status(code, r)) => {
                let _ = std::fs::remove_file(&part);
                return Err(fail(format!("HTTP {code} {}", r.status_text())));
            }
            Err(e) if attempts < opts.retries => {
                attempts += 1;
                tracing::warn!("{url}: {e}; retrying ({attempts}/{})", opts.retries);
                std::thread::sleep(Duration::from_millis(200 * attempts as u64));
                continue;
            }
            Err(e) => return Err(fail(e.to_string())),
        };
        if expected.is_none() {
            expected = etag_sha256(&resp);
        }
        let (mut file, start) = if resp.status() == 206 && have > 0 {
            let f = std::fs::OpenOptions::new().append(true).open(&part).map_err(io(&part))?;
            (f, have)
        } else {
            // A full response (the server ignored the range, or this is the first try).
            (std::fs::File::create(&part).map_err(io(&part))?, 0)
        };
        let total = match resp.header("content-range").and_then(|r| r.rsplit('/').next()).and_then(|t| t.parse().ok()) {
            Some(t) => Some(t),
            None => resp.header("content-length").and_then(|l| l.parse::<u64>().ok()).map(|l| l + start),
        };
        let mut done = start;
        let mut body = resp.into_reader();
        let mut buf = vec![0u8; 1 << 16];
        let broken = loop {
            match body.read(&mut buf) {
                Ok(0) => break None,
                Ok(n) => {
                    file.write_all(&buf[..n]).map_err(io(&part))?;
                    done += n as u64;
                    if let Some(p) = &opts.progress {
                        p(&Progress { file: file_name.clone(), done, total });
                    }
                }
                Err(e) => break Some(e),
            }
        };
        file.flush().map_err(io(&part))?;
        file.sync_all().map_err(io(&part))?;
        let short = total.is_some_and(|t| done < t);
        match broken {
            None if !short => break,
            reason => {
                if attempts >= opts.retries {
                    return Err(fail(format!(
                        "connection broke after {done} bytes ({}); the partial file is kept for a later resume",
                        reason.map(|e| e.to_string()).unwrap_or_else(|| "short body".into())
                    )));
                }
                attempts += 1;
                tracing::warn!("{url}: transfer broke at {done} bytes; resuming ({attempts}/{})", opts.retries);
            }
        }
    }
    if let Some(exp) = &expected {
        let actual = sha256_file(&part).map_err(io(&part))?;
        if &actual != exp {
            let _ = std::fs::remove_file(&part);
            return Err(Error::ChecksumMismatch { url: url.to_string(), expected: exp.clone(), actual });
        }
    }
    // The final name appears only once the whole file is there.
    std::fs::rename(&part, dest).map_err(io(dest))?;
    if let Ok(d) = std::fs::File::open(dest.parent().unwrap_or(Path::new("."))) {
        let _ = d.sync_all();
    }
    Ok(dest.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_hf_source_without_an_endpoint_says_what_to_set() {
        let mut o = PullOptions::new(std::env::temp_dir().join("rocm-llama-pull-no-endpoint"));
        o.hf_endpoint = String::new();
        let err = pull("hf:org/repo/m.gguf", &o).unwrap_err();
        assert!(matches!(&err, Error::InvalidConfig(m) if m.contains("HF_ENDPOINT")), "{err}");
    }

    #[test]
    fn sources() {
        assert_eq!(
            Source::parse("hf:org/repo/model-q4.gguf").unwrap(),
            Source::HuggingFace { repo: "org/repo".into(), file: "model-q4.gguf".into() }
        );
        let s = Source::parse("hf:org/repo/sub/m-00001-of-00002.gguf").unwrap();
        assert_eq!(s.file_name(), "m-00001-of-00002.gguf");
        assert_eq!(s.url("http://127.0.0.1:9/"), "http://127.0.0.1:9/org/repo/resolve/main/sub/m-00001-of-00002.gguf");
        assert_eq!(
            s.with_file_name("m-00002-of-00002.gguf").url("http://h"),
            "http://h/org/repo/resolve/main/sub/m-00002-of-00002.gguf"
        );
        let u = Source::parse("https://example.org/a/b.gguf?download=1").unwrap();
        assert_eq!(u.file_name(), "b.gguf");
        assert_eq!(u.with_file_name("c.gguf"), Source::Url("https://example.org/a/c.gguf".into()));
        for bad in ["hf:org", "hf:org/repo", "hf:org/repo/../x", "ftp://x/y.gguf", "model.gguf"] {
            assert!(Source::parse(bad).is_err(), "{bad}");
        }
    }
}
