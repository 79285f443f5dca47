//! Downloading a model's files from a Hugging Face-style hub
//! (`{hub}/{id}/resolve/main/{file}`), each checked against the checksum the
//! hub states for it: the SHA-256 in `X-Linked-Etag` (files kept in Git LFS,
//! like the weights; stated on the redirect, which is why redirects are
//! followed here and not by the client), or the Git blob SHA-1 in `ETag` for
//! small files. The weights must come with a checksum; a file whose bytes
//! do not match is refused.
//!
//! Files land in a scratch directory beside the target, which is renamed into
//! place once every file is there: a model directory is whole or absent.
//! Each pull has its own scratch directory, so two processes fetching the
//! same model at once (two clients each starting engram) do not mix their
//! files; the first to finish wins, and the other keeps its copy.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sha1::Sha1;
use sha2::{Digest, Sha256};

use super::model::{OPTIONAL_FILES, REQUIRED_FILES};

/// Where models come from unless configured (`ENGRAM_MODEL_HUB_URL` or `HF_ENDPOINT`).
pub const DEFAULT_HUB: &str = "https://huggingface.co";

/// Redirects followed per file (the hub sends LFS files to a CDN).
const MAX_REDIRECTS: usize = 5;

/// Bytes done and, when the hub said, bytes in all, for one file.
pub type Progress<'a> = &'a (dyn Fn(&str, u64, Option<u64>) + Send + Sync);

#[derive(Clone)]
pub struct Hub {
    base: String,
    client: reqwest::Client,
    /// Sent as a bearer token to the hub's own host, never after a redirect
    /// to another (the CDN's signed URLs need none, and must not see it).
    token: Option<String>,
}

/// What a file was checked against.
enum Checksum {
    Sha256(String),
    GitBlobSha1(String),
}

impl Hub {
    pub fn new(base: &str, token: Option<String>) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(60))
            .user_agent(concat!("engram/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            client,
            token,
        })
    }

    /// A GET (or HEAD) of `url`, with the token when `url` is on the hub's host.
    fn request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let request = self.client.request(method, url);
        let same_host = |a: &str, b: &str| match (reqwest::Url::parse(a), reqwest::Url::parse(b)) {
            (Ok(a), Ok(b)) => a.origin() == b.origin(),
            _ => false,
        };
        match &self.token {
            Some(token) if same_host(url, &self.base) => request.bearer_auth(token),
            _ => request,
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn url(&self, id: &str, file: &str) -> String {
        format!("{}/{id}/resolve/main/{file}", self.base)
    }

    /// Whether the hub answers for `id` at all, within `wait`: a quick look
    /// before choosing to fetch, not a download.
    pub async fn reachable(&self, id: &str, wait: Duration) -> Result<(), String> {
        let url = self.url(id, "config.json");
        let response = tokio::time::timeout(wait, self.request(reqwest::Method::HEAD, &url).send())
            .await
            .map_err(|_| format!("{} did not answer within {wait:?}", self.base))?
            .map_err(|e| describe(&e, &self.base))?;
        let status = response.status();
        if status.is_success() || status.is_redirection() {
            Ok(())
        } else if status == reqwest::StatusCode::UNAUTHORIZED && self.token.is_none() {
            Err(format!(
                "{url} answered {status}: a gated or private model needs HF_TOKEN"
            ))
        } else {
            Err(format!("{url} answered {status}"))
        }
    }

    /// Downloads model `id` into `dir` (which must not exist yet), checking
    /// every file; optional files the hub does not have are skipped.
    pub async fn pull(&self, id: &str, dir: &Path, progress: Progress<'_>) -> Result<(), String> {
        let parent = dir.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        remove_abandoned_scratch(dir);
        let scratch = scratch_dir(dir);
        let result = self.pull_into(id, &scratch, progress).await;
        if let Err(e) = result {
            let _ = std::fs::remove_dir_all(&scratch);
            return Err(e);
        }
        match std::fs::rename(&scratch, dir) {
            Ok(()) => Ok(()),
            // Another pull finished first: its copy stands.
            Err(_) if dir.is_dir() => {
                let _ = std::fs::remove_dir_all(&scratch);
                Ok(())
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&scratch);
                Err(format!("cannot move the model into {}: {e}", dir.display()))
            }
        }
    }

    async fn pull_into(&self, id: &str, dir: &Path, progress: Progress<'_>) -> Result<(), String> {
        for (file, required) in REQUIRED_FILES
            .iter()
            .map(|f| (*f, true))
            .chain(OPTIONAL_FILES.iter().map(|f| (*f, false)))
        {
            let path = dir.join(file);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
            }
            let fetched = self.fetch(id, file, &path, progress).await?;
            if !fetched && required {
                return Err(format!(
                    "{} has no {file} for {id}: is the id right, and is it a \
                     sentence-transformers model?",
                    self.base
                ));
            }
        }
        Ok(())
    }

    /// Fetches one file to `path`; `Ok(false)` when the hub has no such file.
    async fn fetch(
        &self,
        id: &str,
        file: &str,
        path: &Path,
        progress: Progress<'_>,
    ) -> Result<bool, String> {
        let mut url = self.url(id, file);
        let mut checksum = None;
        let mut response = None;
        for _ in 0..=MAX_REDIRECTS {
            let r = self
                .request(reqwest::Method::GET, &url)
                .send()
                .await
                .map_err(|e| describe(&e, &self.base))?;
            // The first statement of a checksum wins: the hub's, before any CDN.
            if checksum.is_none() {
                checksum = stated_checksum(r.headers());
            }
            if r.status().is_redirection() {
                let location = r
                    .headers()
                    .get(reqwest::header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| format!("{url} redirected without a location"))?;
                url = r
                    .url()
                    .join(location)
                    .map_err(|e| format!("{url} redirected to {location}: {e}"))?
                    .to_string();
                continue;
            }
            response = Some(r);
            break;
        }
        let Some(mut response) = response else {
            return Err(format!("{url}: more than {MAX_REDIRECTS} redirects"));
        };
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(false);
        }
        if status == reqwest::StatusCode::UNAUTHORIZED && self.token.is_none() {
            return Err(format!(
                "{url} answered {status}: a gated or private model needs HF_TOKEN"
            ));
        }
        if !status.is_success() {
            return Err(format!("{url} answered {status}"));
        }
        if file == "model.safetensors" && checksum.is_none() {
            return Err(format!(
                "{url} states no checksum (X-Linked-Etag) for the weights; refusing them"
            ));
        }
        let total = response.content_length();
        let mut out = std::fs::File::create(path)
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        let mut sha256 = Sha256::new();
        let mut sha1 = Sha1::new();
        if let Some(Checksum::GitBlobSha1(_)) = checksum {
            // A Git blob's id hashes a header with the length first.
            let len = total.ok_or_else(|| format!("{url} sent no length"))?;
            sha1.update(format!("blob {len}\0").as_bytes());
        }
        let mut done = 0u64;
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| format!("downloading {url}: {}", describe(&e, &self.base)))?
        {
            use std::io::Write;
            out.write_all(&chunk)
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            sha256.update(&chunk);
            sha1.update(&chunk);
            done += chunk.len() as u64;
            progress(file, done, total);
        }
        out.sync_all()
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        let (expected, got) = match &checksum {
            Some(Checksum::Sha256(expected)) => (expected.clone(), hex(&sha256.finalize())),
            Some(Checksum::GitBlobSha1(expected)) => (expected.clone(), hex(&sha1.finalize())),
            None => return Ok(true),
        };
        if expected != got {
            return Err(format!(
                "{file} of {id} is corrupt: its checksum is {got}, {} states {expected}; \
                 nothing was kept, try again",
                self.base
            ));
        }
        Ok(true)
    }
}

/// The scratch directory this pull into `dir` fills first: its own, by
/// process and a random part.
fn scratch_dir(dir: &Path) -> PathBuf {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dir.with_file_name(format!(
        ".{name}.partial-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ))
}

/// Removes the scratch directories of pulls into `dir` whose process is
/// gone (killed mid-download). Where there is no `/proc` to ask, none is
/// removed: a live pull's files are never touched.
fn remove_abandoned_scratch(dir: &Path) {
    let proc = Path::new("/proc");
    let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) else {
        return;
    };
    if !proc.is_dir() {
        return;
    }
    let prefix = format!(".{}.partial-", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = file_name
            .strip_prefix(&prefix)
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        if !pid.is_empty() && !proc.join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn stated_checksum(headers: &reqwest::header::HeaderMap) -> Option<Checksum> {
    let value = |name: &str| {
        headers.get(name).and_then(|v| v.to_str().ok()).map(|v| {
            v.trim_start_matches("W/")
                .trim_matches('"')
                .to_ascii_lowercase()
        })
    };
    let is_hex = |v: &str, len: usize| v.len() == len && v.bytes().all(|b| b.is_ascii_hexdigit());
    if let Some(v) = value("x-linked-etag").filter(|v| is_hex(v, 64)) {
        return Some(Checksum::Sha256(v));
    }
    match value("etag") {
        Some(v) if is_hex(&v, 64) => Some(Checksum::Sha256(v)),
        Some(v) if is_hex(&v, 40) => Some(Checksum::GitBlobSha1(v)),
        _ => None,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A request error in words a user can act on (offline, refused, timed out),
/// ending with its root cause (a DNS failure, a refused connection), which
/// the client's own message leaves out.
fn describe(e: &reqwest::Error, base: &str) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(source) = cause.source() {
        cause = source;
    }
    let why = if std::ptr::addr_eq(cause, e) {
        e.to_string()
    } else {
        cause.to_string()
    };
    if e.is_connect() {
        format!("cannot reach {base} (offline?): {why}")
    } else if e.is_timeout() {
        format!("{base} timed out: {why}")
    } else {
        format!("{base}: {why}")
    }
}
