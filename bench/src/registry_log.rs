//! Registry requests per run, counted from the basic registry's own log.
//!
//! distribution logs every request once in Apache combined format (gorilla's logging handler
//! wraps the whole router, so 401s, 404s and unknown routes are logged too):
//!
//! ```text
//! 127.0.0.1 - - [24/Nov/2026:15:26:18 +0000] "PUT /v2/bench/x/manifests/t5 HTTP/1.1" 201 0 "" "docker/20.10.24 ..."
//! ```
//!
//! The user agent tells who sent it: `pushfleet/...` is the worker's own registry client
//! (preflight, verify), `docker/...` the daemon pushing on someone's behalf. A run is framed by
//! two marker requests (`GET /v2/pushfleet-bench-marker/<token>-start/tags/list`, answered
//! 401 and logged like any other); the lines between them that name one of the run's
//! repositories, or `/v2/` itself, are the run's. Lines naming another repository are counted
//! as *foreign*: someone else used the registry during the run, and the run's `GET /v2/` count
//! (which names no repository) may include theirs.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// Who sent a request, from its user agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Client {
    /// The worker's own registry client (`pushfleet/...`).
    Worker,
    /// The Docker daemon (`docker/...`).
    Daemon,
    /// Anything else.
    Other,
}

impl Client {
    fn of(user_agent: &str) -> Self {
        if user_agent.starts_with("pushfleet/") {
            Client::Worker
        } else if user_agent.starts_with("docker/") {
            Client::Daemon
        } else {
            Client::Other
        }
    }

    /// The short name used in tables.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Client::Worker => "worker",
            Client::Daemon => "daemon",
            Client::Other => "other",
        }
    }
}

/// What a request was, by method and route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Kind {
    /// `GET /v2/`: the version check and auth challenge.
    Ping,
    /// A token request (a token service; the basic registry has none).
    Token,
    /// `HEAD /v2/<repo>/manifests/<ref>`.
    ManifestHead,
    /// `GET /v2/<repo>/manifests/<ref>`.
    ManifestGet,
    /// `PUT /v2/<repo>/manifests/<ref>`.
    ManifestPut,
    /// `HEAD /v2/<repo>/blobs/<digest>`.
    BlobHead,
    /// `GET /v2/<repo>/blobs/<digest>`.
    BlobGet,
    /// `POST /v2/<repo>/blobs/uploads/` (an upload session, or a cross-repository mount).
    UploadPost,
    /// `PATCH` of an upload session (a chunk).
    UploadPatch,
    /// `PUT` of an upload session (completes a blob).
    UploadPut,
    /// `DELETE` of an upload session.
    UploadDelete,
    /// Anything else.
    Other,
}

impl Kind {
    /// Every kind, in table order.
    pub(crate) const ALL: [Kind; 12] = [
        Kind::Ping,
        Kind::Token,
        Kind::ManifestHead,
        Kind::ManifestGet,
        Kind::ManifestPut,
        Kind::BlobHead,
        Kind::BlobGet,
        Kind::UploadPost,
        Kind::UploadPatch,
        Kind::UploadPut,
        Kind::UploadDelete,
        Kind::Other,
    ];

    /// The column name.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Ping => "GET /v2/",
            Kind::Token => "token",
            Kind::ManifestHead => "HEAD manifest",
            Kind::ManifestGet => "GET manifest",
            Kind::ManifestPut => "PUT manifest",
            Kind::BlobHead => "HEAD blob",
            Kind::BlobGet => "GET blob",
            Kind::UploadPost => "POST upload",
            Kind::UploadPatch => "PATCH upload",
            Kind::UploadPut => "PUT upload",
            Kind::UploadDelete => "DELETE upload",
            Kind::Other => "other",
        }
    }

    /// Whether this is part of an authentication handshake (`GET /v2/` or a token request).
    pub(crate) fn is_auth(self) -> bool {
        matches!(self, Kind::Ping | Kind::Token)
    }
}

/// One request line of the combined log.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Line<'a> {
    method: &'a str,
    /// The request target, query included.
    uri: &'a str,
    /// The response status (0 when unreadable).
    status: u16,
    user_agent: &'a str,
}

/// Parses a combined-format line; `None` for logrus lines and anything else.
fn parse_line(line: &str) -> Option<Line<'_>> {
    if line.starts_with("time=") {
        return None;
    }
    let (_, rest) = line.split_once("] \"")?;
    let (request, rest) = rest.split_once('"')?;
    let mut parts = request.split(' ');
    let method = parts.next()?;
    let uri = parts.next()?;
    let status = rest
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    // The user agent is the last quoted field.
    let rest = rest.trim_end().strip_suffix('"')?;
    let (_, user_agent) = rest.rsplit_once('"')?;
    Some(Line {
        method,
        uri,
        status,
        user_agent,
    })
}

/// The repository a `/v2/` path names, and the kind of request; `(None, Ping)` for `/v2/`.
fn classify<'a>(method: &str, uri: &'a str) -> (Option<&'a str>, Kind) {
    let path = uri.split_once('?').map_or(uri, |(p, _)| p);
    if path == "/v2/" || path == "/v2" {
        return (
            None,
            if method == "GET" {
                Kind::Ping
            } else {
                Kind::Other
            },
        );
    }
    let Some(rest) = path.strip_prefix("/v2/") else {
        let kind = if path.contains("token") {
            Kind::Token
        } else {
            Kind::Other
        };
        return (None, kind);
    };
    for (marker, route) in [
        ("/manifests/", "manifests"),
        ("/blobs/uploads", "uploads"),
        ("/blobs/", "blobs"),
        ("/tags/", "tags"),
    ] {
        if let Some((repo, _)) = rest.split_once(marker) {
            let kind = match (route, method) {
                ("manifests", "HEAD") => Kind::ManifestHead,
                ("manifests", "GET") => Kind::ManifestGet,
                ("manifests", "PUT") => Kind::ManifestPut,
                ("blobs", "HEAD") => Kind::BlobHead,
                ("blobs", "GET") => Kind::BlobGet,
                ("uploads", "POST") => Kind::UploadPost,
                ("uploads", "PATCH") => Kind::UploadPatch,
                ("uploads", "PUT") => Kind::UploadPut,
                ("uploads", "DELETE") => Kind::UploadDelete,
                _ => Kind::Other,
            };
            return (Some(repo), kind);
        }
    }
    (None, Kind::Other)
}

/// The requests of one run, by client and kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RequestCounts {
    /// Requests per (client, kind).
    pub(crate) by: BTreeMap<(Client, Kind), u64>,
    /// Responses with a 5xx status, per client.
    pub(crate) server_errors: BTreeMap<Client, u64>,
    /// Requests between the markers that named another repository (someone else's traffic).
    pub(crate) foreign: u64,
}

impl RequestCounts {
    /// All requests of `client` (all clients when `None`).
    pub(crate) fn total(&self, client: Option<Client>) -> u64 {
        self.by
            .iter()
            .filter(|((c, _), _)| client.is_none_or(|want| *c == want))
            .map(|(_, n)| n)
            .sum()
    }

    /// Requests of `kind` from `client` (all clients when `None`).
    pub(crate) fn of(&self, client: Option<Client>, kind: Kind) -> u64 {
        self.by
            .iter()
            .filter(|((c, k), _)| *k == kind && client.is_none_or(|want| *c == want))
            .map(|(_, n)| n)
            .sum()
    }

    /// 5xx responses to `client` (all clients when `None`).
    pub(crate) fn server_errors(&self, client: Option<Client>) -> u64 {
        self.server_errors
            .iter()
            .filter(|(c, _)| client.is_none_or(|want| **c == want))
            .map(|(_, n)| n)
            .sum()
    }

    /// Authentication handshakes (`GET /v2/` and token requests) of `client`.
    pub(crate) fn auth(&self, client: Option<Client>) -> u64 {
        Kind::ALL
            .iter()
            .filter(|k| k.is_auth())
            .map(|k| self.of(client, *k))
            .sum()
    }
}

/// Counts the lines of `text` strictly between the line holding `start` and the one holding
/// `end`, keeping requests to `repositories` and to `/v2/`.
fn count_between(
    text: &str,
    start: &str,
    end: &str,
    repositories: &[String],
) -> Result<RequestCounts> {
    let mut lines = text.lines();
    if !lines.by_ref().any(|l| l.contains(start)) {
        bail!("the start marker {start} is not in the registry log");
    }
    let mut counts = RequestCounts::default();
    let mut ended = false;
    for raw in lines {
        if raw.contains(end) {
            ended = true;
            break;
        }
        let Some(line) = parse_line(raw) else {
            continue;
        };
        let (repo, kind) = classify(line.method, line.uri);
        match repo {
            Some(r) if repositories.iter().any(|mine| mine == r) => {}
            Some(_) => {
                counts.foreign += 1;
                continue;
            }
            None => {}
        }
        let client = Client::of(line.user_agent);
        *counts.by.entry((client, kind)).or_insert(0) += 1;
        if line.status >= 500 {
            *counts.server_errors.entry(client).or_insert(0) += 1;
        }
    }
    if !ended {
        bail!("the end marker {end} is not in the registry log");
    }
    Ok(counts)
}

/// The basic registry's log, read between markers.
#[derive(Debug, Clone)]
pub(crate) struct RegistryLog {
    path: PathBuf,
    base_url: String,
    http: reqwest::Client,
}

/// An open window of the log: where it started and its marker token.
#[derive(Debug, Clone)]
pub(crate) struct Window {
    offset: u64,
    token: String,
}

impl RegistryLog {
    /// The log at `path` of the registry at `base_url` (`http://host:port`).
    pub(crate) fn new(path: PathBuf, base_url: String) -> Result<Self> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .user_agent("pushfleet-bench-marker")
            .timeout(Duration::from_secs(10))
            .build()?;
        Ok(Self {
            path,
            base_url,
            http,
        })
    }

    fn marker_path(token: &str, which: &str) -> String {
        format!("/v2/pushfleet-bench-marker/{token}-{which}/tags/list")
    }

    async fn mark(&self, token: &str, which: &str) -> Result<()> {
        let url = format!("{}{}", self.base_url, Self::marker_path(token, which));
        self.http
            .get(&url)
            .send()
            .await
            .with_context(|| format!("marker request {url}"))?;
        Ok(())
    }

    /// Writes the start marker of run `token` and returns its window. Waits a moment after
    /// the marker so that no request of the run can be logged before it.
    pub(crate) async fn begin(&self, token: &str) -> Result<Window> {
        let offset = std::fs::metadata(&self.path)
            .with_context(|| format!("cannot stat {}", self.path.display()))?
            .len();
        self.mark(token, "start").await?;
        tokio::time::sleep(Duration::from_millis(50)).await;
        Ok(Window {
            offset,
            token: token.to_owned(),
        })
    }

    /// Writes the end marker and counts the run's requests to `repositories`. Waits a moment
    /// first, so requests answered just before are logged before the marker.
    pub(crate) async fn end(
        &self,
        window: &Window,
        repositories: &[String],
    ) -> Result<RequestCounts> {
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.mark(&window.token, "end").await?;
        let start = Self::marker_path(&window.token, "start");
        let end = Self::marker_path(&window.token, "end");
        let mut last_error = None;
        for _ in 0..50 {
            let text = self.read_from(window.offset)?;
            match count_between(&text, &start, &end, repositories) {
                Ok(counts) => return Ok(counts),
                Err(e) => last_error = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("registry log not readable")))
            .with_context(|| format!("reading {}", self.path.display()))
    }

    /// The log from byte `offset` on (from the start when the file was truncated since).
    fn read_from(&self, offset: u64) -> Result<String> {
        let mut file = std::fs::File::open(&self.path)
            .with_context(|| format!("cannot open {}", self.path.display()))?;
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(if len >= offset { offset } else { 0 }))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOCKER_UA: &str =
        "docker/20.10.24+dfsg1 go/go1.19.8 os/linux UpstreamClient(Go-http-client/1.1)";

    fn line(method: &str, uri: &str, ua: &str) -> String {
        format!(
            "127.0.0.1 - - [24/Nov/2026:15:26:18 +0000] \"{method} {uri} HTTP/1.1\" 201 0 \"\" \"{ua}\""
        )
    }

    #[test]
    fn combined_lines_are_parsed() {
        let l = line("PUT", "/v2/bench/x/manifests/t5", DOCKER_UA);
        let parsed = parse_line(&l).expect("parsed");
        assert_eq!(parsed.method, "PUT");
        assert_eq!(parsed.uri, "/v2/bench/x/manifests/t5");
        assert_eq!(parsed.user_agent, DOCKER_UA);
        assert_eq!(parsed.status, 201);
        assert_eq!(
            parse_line("time=\"x\" level=info msg=\"response completed\""),
            None
        );
        assert_eq!(parse_line("2026/11/24 14:21:44 http: superfluous"), None);
    }

    #[test]
    fn requests_are_classified() {
        assert_eq!(classify("GET", "/v2/"), (None, Kind::Ping));
        assert_eq!(classify("GET", "/token?scope=x"), (None, Kind::Token));
        let in_repository = [
            ("HEAD", "/v2/bench/a/manifests/t1", Kind::ManifestHead),
            ("PUT", "/v2/bench/a/manifests/t1", Kind::ManifestPut),
            ("HEAD", "/v2/bench/a/blobs/sha256:00", Kind::BlobHead),
            ("POST", "/v2/bench/a/blobs/uploads/", Kind::UploadPost),
            (
                "PATCH",
                "/v2/bench/a/blobs/uploads/u-1?_state=x",
                Kind::UploadPatch,
            ),
            (
                "PUT",
                "/v2/bench/a/blobs/uploads/u-1?_state=x&digest=sha256:0",
                Kind::UploadPut,
            ),
            (
                "DELETE",
                "/v2/bench/a/blobs/uploads/u-1",
                Kind::UploadDelete,
            ),
        ];
        for (method, uri, kind) in in_repository {
            assert_eq!(
                classify(method, uri),
                (Some("bench/a"), kind),
                "{method} {uri}"
            );
        }
    }

    #[test]
    fn only_the_window_and_the_runs_repositories_count() {
        let start = RegistryLog::marker_path("abc", "start");
        let end = RegistryLog::marker_path("abc", "end");
        let text = [
            line("GET", "/v2/", DOCKER_UA),
            line("GET", &start, "pushfleet-bench-marker"),
            line("GET", "/v2/", DOCKER_UA),
            "time=\"x\" level=info msg=\"authorized request\"".to_owned(),
            line("HEAD", "/v2/bench/mine/blobs/sha256:00", DOCKER_UA),
            line("PUT", "/v2/bench/mine/manifests/t1", DOCKER_UA),
            line("HEAD", "/v2/bench/mine/manifests/t1", "pushfleet/0.1.0"),
            line("PUT", "/v2/production/other/manifests/t1", DOCKER_UA),
            line("HEAD", "/v2/bench/mine/manifests/t2", "pushfleet/0.1.0")
                .replace(" 201 ", " 500 "),
            line("GET", &end, "pushfleet-bench-marker"),
            line("GET", "/v2/", DOCKER_UA),
        ]
        .join("\n");
        let counts =
            count_between(&text, &start, &end, &["bench/mine".to_owned()]).expect("counted");
        assert_eq!(counts.total(None), 5);
        assert_eq!(counts.server_errors(Some(Client::Worker)), 1);
        assert_eq!(counts.server_errors(Some(Client::Daemon)), 0);
        assert_eq!(counts.of(Some(Client::Daemon), Kind::Ping), 1);
        assert_eq!(counts.of(Some(Client::Worker), Kind::ManifestHead), 2);
        assert_eq!(counts.auth(None), 1);
        assert_eq!(counts.total(Some(Client::Worker)), 2);
        assert_eq!(counts.foreign, 1);
        assert!(count_between(&text, "nope", &end, &[]).is_err());
        assert!(count_between(&text, &start, "nope", &[]).is_err());
    }
}
