//! Downloading models: [`pull`] a URL or a Hugging Face file into the model folder, with
//! resume, sha256 verification and an atomic rename at the end.
//!
//! Hand-written on one blocking HTTP client rather than on the `hf-hub` crate: `hf-hub` keeps
//! files in Hugging Face's own cache layout (blobs and symlinks under
//! `~/.cache/huggingface`), while `pull` writes plain files into the model folder that
//! `rocm-llama models` lists, resumes across runs, fetches every shard of a split model and
//! checks each file's sha256 even when the hub redirects the download to a CDN.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::inventory::{shard_name, shard_parts};

/// Where a model comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
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
    /// `hf:ORG/REPO:QUANT` or `hf:ORG/REPO` (quantization `Q4_K_M`): the repository's GGUF
    /// file of that quantization, found in its file list, as llama.cpp's `-hf` does.
    HuggingFaceQuant {
        /// `ORG/REPO`.
        repo: String,
        /// The quantization label, e.g. `Q4_K_M` or `Q8_0` (matched case-insensitively).
        quant: String,
    },
}

/// The quantization `hf:ORG/REPO` without `:QUANT` picks.
pub const DEFAULT_QUANT: &str = "Q4_K_M";

impl Source {
    /// Parses `hf:ORG/REPO/FILE`, `hf:ORG/REPO[:QUANT]` or an `http(s)://` URL.
    pub fn parse(s: &str) -> Result<Source> {
        if let Some(rest) = s.strip_prefix("hf:") {
            let bad =
                || Error::invalid("source", format!("{s:?}: expected hf:ORG/REPO/FILE.gguf or hf:ORG/REPO[:QUANT]"));
            let mut parts = rest.splitn(3, '/');
            let (Some(org), Some(repo)) = (parts.next(), parts.next()) else { return Err(bad()) };
            let file = parts.next();
            let (repo, quant) = match (file, repo.split_once(':')) {
                (None, Some((r, q))) => (r, Some(q)),
                (None, None) => (repo, Some(DEFAULT_QUANT)),
                (Some(_), _) => (repo, None),
            };
            let plain = |p: &str| !p.is_empty() && p != ".." && p != "." && !p.contains(':');
            if !plain(org) || !plain(repo) {
                return Err(bad());
            }
            return match (file, quant) {
                (Some(file), _) if !file.is_empty() && !file.split('/').any(|p| p == ".." || p.is_empty()) => {
                    Ok(Source::HuggingFace { repo: format!("{org}/{repo}"), file: file.to_string() })
                }
                (None, Some(q)) if !q.is_empty() && q.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') => {
                    Ok(Source::HuggingFaceQuant { repo: format!("{org}/{repo}"), quant: q.to_string() })
                }
                _ => Err(bad()),
            };
        }
        if s.starts_with("http://") || s.starts_with("https://") {
            return Ok(Source::Url(s.to_string()));
        }
        Err(Error::invalid("source", format!("{s:?}: a source is an http(s):// URL or hf:ORG/REPO/FILE.gguf")))
    }

    /// The file name the download is saved under (for `hf:ORG/REPO:QUANT`, known only once
    /// the file list is read: the quantization label until then).
    pub fn file_name(&self) -> String {
        let path = match self {
            Source::Url(u) => u.split(['?', '#']).next().unwrap_or(u),
            Source::HuggingFace { file, .. } => file.as_str(),
            Source::HuggingFaceQuant { quant, .. } => quant.as_str(),
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
            Source::HuggingFaceQuant { repo, .. } => format!("{}/api/models/{repo}", hf_endpoint.trim_end_matches('/')),
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
            Source::HuggingFaceQuant { repo, .. } => Source::HuggingFace { repo: repo.clone(), file: name.to_string() },
        }
    }
}

/// The file of `files` (paths in a repository) that holds quantization `quant`: a `.gguf`
/// whose name (or folder) carries the label as a whole word, not a projector (`mmproj`); of
/// a split model, its first shard. Several candidates are an error that lists them.
pub fn pick_quant<'a>(files: &'a [String], quant: &str) -> std::result::Result<&'a str, String> {
    let q = quant.to_ascii_lowercase();
    let word = |name: &str| {
        let name = name.to_ascii_lowercase();
        name.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).any(|w| w == q)
    };
    let mut hits: Vec<&str> = files
        .iter()
        .map(String::as_str)
        .filter(|f| f.to_ascii_lowercase().ends_with(".gguf") && !f.to_ascii_lowercase().contains("mmproj"))
        .filter(|f| word(f))
        .filter(|f| {
            let name = f.rsplit('/').next().unwrap_or(f);
            shard_parts(name).is_none_or(|(_, i, _)| i == 1)
        })
        .collect();
    hits.sort();
    match hits.as_slice() {
        [one] => Ok(one),
        [] => {
            let ggufs: Vec<&str> =
                files.iter().map(String::as_str).filter(|f| f.to_ascii_lowercase().ends_with(".gguf")).collect();
            Err(if ggufs.is_empty() {
                "the repository has no GGUF files".to_string()
            } else {
                format!("no {quant} file; the GGUF files are: {}", ggufs.join(", "))
            })
        }
        many => Err(format!("several {quant} files: {}; name one with hf:ORG/REPO/FILE", many.join(", "))),
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
pub type DownloadProgressFn = dyn Fn(&Progress) + Send + Sync;

/// Hugging Face's hub, where `hf:` sources resolve when `HF_ENDPOINT` is not set.
pub const HF_DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Settings for [`pull`].
///
/// ```
/// use rocm_llama::pull::PullOptions;
///
/// let options = PullOptions::new("/tmp/models").sha256("ab".repeat(32)).retries(2);
/// assert_eq!(options.retries, 2);
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct PullOptions {
    /// The folder to write into.
    pub dir: PathBuf,
    /// The expected sha256 (hex) of the file (single-file models). Hugging Face's
    /// `X-Linked-ETag` is used when this is not given.
    pub sha256: Option<String>,
    /// The hub's address that `hf:` sources resolve against (default: `HF_ENDPOINT`, else
    /// [`HF_DEFAULT_ENDPOINT`]).
    pub hf_endpoint: String,
    /// Sent as `Authorization: Bearer` to the hub (default: `HF_TOKEN`), for gated and
    /// private repositories. Only requests to `hf_endpoint`'s host carry it, never a host
    /// the hub redirects to.
    pub hf_token: Option<String>,
    /// How often a broken transfer is resumed before giving up.
    pub retries: u32,
    /// Called as bytes arrive.
    pub progress: Option<Arc<DownloadProgressFn>>,
}

impl std::fmt::Debug for PullOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PullOptions")
            .field("dir", &self.dir)
            .field("sha256", &self.sha256)
            .field("hf_endpoint", &self.hf_endpoint)
            .field("hf_token", &self.hf_token.as_ref().map(|_| "<set>"))
            .field("retries", &self.retries)
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

crate::config::setters!(PullOptions {
    dir: PathBuf,
    hf_endpoint: String,
    retries: u32,
} optional {
    sha256: String,
    hf_token: String,
    progress: Arc<DownloadProgressFn>,
});

impl PullOptions {
    /// Defaults for `dir`: the endpoint from `HF_ENDPOINT` (else Hugging Face's), the token
    /// from `HF_TOKEN`, five resumes.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        PullOptions {
            dir: dir.into(),
            sha256: None,
            hf_endpoint: env("HF_ENDPOINT").unwrap_or_else(|| HF_DEFAULT_ENDPOINT.to_string()),
            hf_token: env("HF_TOKEN"),
            retries: 5,
            progress: None,
        }
    }
}

/// Downloads `source` into `opts.dir`; for the first shard of a split model
/// (`name-00001-of-0000N.gguf`), every shard. Returns the files written (or already there).
pub fn pull(source: &str, opts: &PullOptions) -> Result<Vec<PathBuf>> {
    let mut src = Source::parse(source)?;
    if !matches!(src, Source::Url(_)) && opts.hf_endpoint.trim().is_empty() {
        return Err(Error::invalid(
            "hf_endpoint",
            format!("{source:?}: hf: sources need the hub's address: set HF_ENDPOINT (or PullOptions::hf_endpoint)"),
        ));
    }
    let client = Client::new(opts);
    if let Source::HuggingFaceQuant { repo, quant } = &src {
        let files = client.repo_files(&src.url(&opts.hf_endpoint))?;
        let file = pick_quant(&files, quant).map_err(|reason| Error::Download {
            url: src.url(&opts.hf_endpoint),
            reason: format!("{repo}: {reason}"),
        })?;
        src = Source::HuggingFace { repo: repo.clone(), file: file.to_string() };
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
        out.push(client.fetch(&s.url(&opts.hf_endpoint), &opts.dir.join(&n), expected)?);
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

/// `scheme://host:port` of a URL, for deciding where the token may go.
fn origin(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let host = rest.split(['/', '?', '#']).next()?;
    let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
    let port = if host.contains(':') {
        ""
    } else if scheme == "https" {
        ":443"
    } else {
        ":80"
    };
    Some(format!("{}://{}{port}", scheme.to_ascii_lowercase(), host.to_ascii_lowercase()))
}

/// The most redirects one request follows.
const MAX_REDIRECTS: usize = 10;

/// One HTTP agent that follows redirects itself, so that the token goes only to the hub and
/// a checksum the hub announces on its redirect is not lost on the way to the CDN.
struct Client<'o> {
    agent: ureq::Agent,
    opts: &'o PullOptions,
    hub: Option<String>,
}

/// What a request chain ended with, and the sha256 any response on the way announced.
struct Reply {
    resp: ureq::Response,
    sha256: Option<String>,
}

impl<'o> Client<'o> {
    fn new(opts: &'o PullOptions) -> Self {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(30))
            .timeout_read(Duration::from_secs(60))
            .redirects(0)
            .build();
        Client { agent, opts, hub: origin(&opts.hf_endpoint) }
    }

    /// GET `url`, following redirects; `range_from` asks for the bytes from there on.
    #[allow(clippy::result_large_err)] // ureq's own error type, handled at once by the callers
    fn get(&self, url: &str, range_from: u64) -> std::result::Result<Reply, ureq::Error> {
        let mut url = url.to_string();
        let mut sha256 = None;
        let mut hops = 0;
        loop {
            let mut req = self.agent.get(&url);
            if range_from > 0 {
                req = req.set("Range", &format!("bytes={range_from}-"));
            }
            if let (Some(token), Some(hub)) = (&self.opts.hf_token, &self.hub) {
                if origin(&url).as_ref() == Some(hub) {
                    req = req.set("Authorization", &format!("Bearer {}", token.trim()));
                }
            }
            let resp = req.call()?;
            if sha256.is_none() {
                sha256 = etag_sha256(&resp);
            }
            // Not a redirect, or one too many: the caller reports a status other than 2xx.
            if !(300..400).contains(&resp.status()) || resp.status() == 304 || hops == MAX_REDIRECTS {
                return Ok(Reply { resp, sha256 });
            }
            hops += 1;
            let Some(location) = resp.header("location") else { return Ok(Reply { resp, sha256 }) };
            // A relative Location is resolved against the URL that answered.
            url = match url::Url::parse(resp.get_url()).and_then(|base| base.join(location)) {
                Ok(u) => u.to_string(),
                Err(_) => return Ok(Reply { resp, sha256 }),
            };
        }
    }

    /// The paths of every file in a Hugging Face repository (its model API's `siblings`).
    fn repo_files(&self, api_url: &str) -> Result<Vec<String>> {
        let fail = |reason: String| Error::Download { url: api_url.to_string(), reason };
        let reply = self.get(api_url, 0).map_err(|e| fail(http_reason(e)))?;
        if reply.resp.status() != 200 {
            return Err(fail(format!("HTTP {} {}", reply.resp.status(), reply.resp.status_text())));
        }
        let v: serde_json::Value =
            reply.resp.into_json().map_err(|e| fail(format!("the file list is not JSON: {e}")))?;
        let files = v["siblings"]
            .as_array()
            .ok_or_else(|| fail("the answer has no `siblings` list".into()))?
            .iter()
            .filter_map(|f| f["rfilename"].as_str().map(String::from))
            .collect();
        Ok(files)
    }

    fn fetch(&self, url: &str, dest: &Path, expected: Option<String>) -> Result<PathBuf> {
        let opts = self.opts;
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
        let mut expected = expected.map(|e| e.to_ascii_lowercase());
        let mut attempts = 0;
        loop {
            let have = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
            let reply = match self.get(url, have) {
                Ok(r) => r,
                Err(ureq::Error::Status(416, _)) if have > 0 => {
                    // Nothing left to send: the part file is complete.
                    break;
                }
                Err(e @ ureq::Error::Status(..)) => {
                    let _ = std::fs::remove_file(&part);
                    return Err(fail(http_reason(e)));
                }
                Err(e) if attempts < opts.retries => {
                    attempts += 1;
                    tracing::warn!("{url}: {e}; retrying ({attempts}/{})", opts.retries);
                    std::thread::sleep(Duration::from_millis(200 * attempts as u64));
                    continue;
                }
                Err(e) => return Err(fail(e.to_string())),
            };
            let Reply { resp, sha256 } = reply;
            if !(200..300).contains(&resp.status()) {
                return Err(fail(format!("HTTP {} {} (after redirects)", resp.status(), resp.status_text())));
            }
            if expected.is_none() {
                expected = sha256;
            }
            let (mut file, start) = if resp.status() == 206 && have > 0 {
                let f = std::fs::OpenOptions::new().append(true).open(&part).map_err(io(&part))?;
                (f, have)
            } else {
                // A full response (the server ignored the range, or this is the first try).
                (std::fs::File::create(&part).map_err(io(&part))?, 0)
            };
            let total =
                match resp.header("content-range").and_then(|r| r.rsplit('/').next()).and_then(|t| t.parse().ok()) {
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
}

/// An HTTP failure in a few words; 401 and 403 say what to do about them.
fn http_reason(e: ureq::Error) -> String {
    match e {
        ureq::Error::Status(code @ (401 | 403), r) => format!(
            "HTTP {code} {}: a gated or private repository needs a token with access (set HF_TOKEN)",
            r.status_text()
        ),
        ureq::Error::Status(code, r) => format!("HTTP {code} {}", r.status_text()),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_hf_source_without_an_endpoint_says_what_to_set() {
        let o = PullOptions::new(std::env::temp_dir().join("rocm-llama-pull-no-endpoint")).hf_endpoint(String::new());
        let err = pull("hf:org/repo/m.gguf", &o).unwrap_err();
        assert!(matches!(&err, Error::InvalidArgument { reason, .. } if reason.contains("HF_ENDPOINT")), "{err}");
    }

    #[test]
    fn a_quantization_picks_one_file() {
        let files: Vec<String> = [
            "README.md",
            "model-Q4_K_M.gguf",
            "model-Q4_K_S.gguf",
            "model-Q8_0.gguf",
            "mmproj-model-Q8_0.gguf",
            "Q6_K/model-Q6_K-00001-of-00002.gguf",
            "Q6_K/model-Q6_K-00002-of-00002.gguf",
            "model.IQ4_XS.gguf",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(pick_quant(&files, "Q4_K_M"), Ok("model-Q4_K_M.gguf"));
        assert_eq!(pick_quant(&files, "q4_k_m"), Ok("model-Q4_K_M.gguf"));
        // Not the projector, and the first shard of a split model.
        assert_eq!(pick_quant(&files, "Q8_0"), Ok("model-Q8_0.gguf"));
        assert_eq!(pick_quant(&files, "Q6_K"), Ok("Q6_K/model-Q6_K-00001-of-00002.gguf"));
        assert_eq!(pick_quant(&files, "iq4_xs"), Ok("model.IQ4_XS.gguf"));
        // Q4_K is no whole word of any name.
        assert!(pick_quant(&files, "Q4_K").unwrap_err().contains("model-Q4_K_M.gguf"));
        let two = ["a-Q8_0.gguf".to_string(), "b-Q8_0.gguf".to_string()];
        assert!(pick_quant(&two, "Q8_0").unwrap_err().contains("several"));
        assert!(pick_quant(&["x.bin".to_string()], "Q8_0").unwrap_err().contains("no GGUF"));
    }

    #[test]
    fn the_token_goes_to_the_hub_only() {
        assert_eq!(origin("https://huggingface.co/a/b").as_deref(), Some("https://huggingface.co:443"));
        assert_eq!(origin("HTTP://127.0.0.1:8080/x?y").as_deref(), Some("http://127.0.0.1:8080"));
        assert_ne!(origin("https://cdn-lfs.huggingface.co/x"), origin("https://huggingface.co"));
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
        assert_eq!(
            Source::parse("hf:org/repo:q8_0").unwrap(),
            Source::HuggingFaceQuant { repo: "org/repo".into(), quant: "q8_0".into() }
        );
        assert_eq!(
            Source::parse("hf:org/repo").unwrap(),
            Source::HuggingFaceQuant { repo: "org/repo".into(), quant: DEFAULT_QUANT.into() }
        );
        for bad in [
            "hf:org",
            "hf:org/",
            "hf:org/repo:",
            "hf:org/repo:Q4 K",
            "hf:org/repo/../x",
            "hf:org/repo/",
            "ftp://x/y.gguf",
            "model.gguf",
        ] {
            assert!(Source::parse(bad).is_err(), "{bad}");
        }
    }
}
