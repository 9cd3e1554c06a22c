//! `ImageDownload`: fetching an image over HTTP(S) (or `file://`), as IPA does and better
//! (docs/data-path.md#downloads).
//!
//! - `urls` are tried in order; each gets `retries + 1` attempts in ONE loop (IPA nests two).
//! - 4xx answers are fatal at once (`ImageDownloadFatalError`); 5xx and transport errors retry.
//! - `max_duration` is terminal (`ImageDownloadTimeoutError`), measured from the first request.
//! - A body cut short is resumed with `Range` + `If-Range` when the server advertised
//!   `Accept-Ranges: bytes` and a validator (ETag or Last-Modified); the consumer then simply
//!   receives the rest. Otherwise the download restarts from byte 0 and the consumer is told to
//!   [`Sink::reset`] first.
//! - A body shorter than `Content-Length` is never a success.
//!
//! The bytes are handed to a [`Sink`] as the `Bytes` the HTTP stack produced: no copy here.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::StatusCode;

use super::http::{auth_header, build_client, error_chain, read_body, BodyError};
pub use super::http::{fetch_bytes, ClientError, FetchError};
use super::info::ImageInfo;
use crate::errors::{AgentError, Result};
use stream::Cursor;

/// The largest checksum file accepted: a `*SUMS` file of a whole distribution release is a
/// few KiB; anything past this is not a checksum file (or never ends).
pub const MAX_CHECKSUM_FILE: usize = 4 << 20;

/// Download settings that come from the agent's configuration (docs/config.md#options).
#[derive(Debug, Clone)]
pub struct FetchConfig {
    /// `image_download_connection_retries`: extra attempts per URL.
    pub retries: u32,
    /// `image_download_connection_retry_interval`.
    pub retry_interval: Duration,
    /// `image_download_connection_timeout`: connect timeout and longest stall between chunks.
    pub connection_timeout: Duration,
    /// `image_download_max_duration`; `None` = unlimited.
    pub max_duration: Option<Duration>,
    /// `insecure`: do not verify the server's certificate.
    pub insecure: bool,
    /// `cafile`: PEM bundle of trusted CAs (added to the platform's).
    pub cafile: Option<PathBuf>,
    /// `certfile`: client certificate (PEM), used with `keyfile`.
    pub certfile: Option<PathBuf>,
    /// `keyfile`: client key (PEM), used with `certfile`.
    pub keyfile: Option<PathBuf>,
    /// `tls_min_version`: `"1.2"` (default) or `"1.3"`.
    pub tls_min_version: crate::config::TlsVersion,
    /// Config-level `image_server_auth_strategy` (`noauth` or `http_basic`).
    pub auth_strategy: crate::config::AuthStrategy,
    /// Config-level `image_server_user`.
    pub auth_user: Option<String>,
    /// Config-level `image_server_password`.
    pub auth_password: Option<String>,
    /// `md5_enabled`: whether a 32-character checksum may be md5.
    pub md5_enabled: bool,
    /// When the whole operation (a deploy: config drive, checksum file, image) must be over:
    /// set by [`FetchConfig::starting_now`]; `None`: each download counts `max_duration` from
    /// its own start.
    pub deadline: Option<Instant>,
}

impl Default for FetchConfig {
    fn default() -> Self {
        FetchConfig {
            retries: 9,
            retry_interval: Duration::from_secs(10),
            connection_timeout: Duration::from_secs(60),
            max_duration: None,
            insecure: false,
            cafile: None,
            certfile: None,
            keyfile: None,
            tls_min_version: crate::config::TlsVersion::V12,
            auth_strategy: crate::config::AuthStrategy::Noauth,
            auth_user: None,
            auth_password: None,
            md5_enabled: false,
            deadline: None,
        }
    }
}

impl FetchConfig {
    /// The same settings, with `max_duration` counted from now for everything fetched with
    /// them (the deploy orchestrator calls this once, at its start).
    pub fn starting_now(&self) -> FetchConfig {
        FetchConfig {
            deadline: self
                .deadline
                .or_else(|| self.max_duration.map(|d| Instant::now() + d)),
            ..self.clone()
        }
    }

    /// How long may still be spent (`None`: no limit).
    pub fn time_left(&self) -> Option<Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }
}

/// Counters that can be read at any moment, from any thread, while an image moves.
#[derive(Debug, Default)]
pub struct Progress {
    transferred: AtomicU64,
    content_length: AtomicU64,
    written: AtomicU64,
}

impl Progress {
    /// Bytes of the image received so far (a resumed download keeps counting; a restart from
    /// byte 0 starts again).
    pub fn bytes_transferred(&self) -> u64 {
        self.transferred.load(Ordering::Relaxed)
    }

    /// The server-indicated length of the image, when it sent one.
    pub fn content_length(&self) -> Option<u64> {
        match self.content_length.load(Ordering::Relaxed) {
            0 => None,
            n => Some(n),
        }
    }

    /// Bytes written to the target so far.
    pub fn bytes_written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// Records bytes written to the target (the writer calls this).
    pub fn add_written(&self, n: u64) {
        self.written.fetch_add(n, Ordering::Relaxed);
    }

    fn set_transferred(&self, n: u64) {
        self.transferred.store(n, Ordering::Relaxed);
    }

    fn set_content_length(&self, n: Option<u64>) {
        self.content_length.store(n.unwrap_or(0), Ordering::Relaxed);
    }

    fn reset_written(&self) {
        self.written.store(0, Ordering::Relaxed);
    }
}

/// Where downloaded bytes go.
pub trait Sink {
    /// Called once per response with the full image length, when known, before any data.
    /// Refusing here (disk too small) fails the download before a byte is written.
    fn expect_len(&mut self, len: u64) -> Result<()>;
    /// The next bytes of the image, in order.
    fn data(&mut self, bytes: Bytes) -> Result<()>;
    /// The download restarts from byte 0: forget everything received so far.
    fn reset(&mut self) -> Result<()>;
}

/// Downloads one image (and its checksum files) with the settings of one `image_info`.
pub struct ImageDownload {
    info: ImageInfo,
    cfg: FetchConfig,
    client: reqwest::Client,
    auth: Option<HeaderValue>,
    progress: Arc<Progress>,
    rt: tokio::runtime::Runtime,
}

/// How one attempt ended when it did not succeed.
enum Failure {
    /// Try again (same URL while attempts last).
    Retry(String),
    /// Stop everything.
    Stop(AgentError),
}

impl ImageDownload {
    /// Prepares a download: builds the HTTP client (TLS, proxies) and the auth header.
    pub fn new(info: &ImageInfo, cfg: &FetchConfig, progress: Arc<Progress>) -> Result<Self> {
        let id = info.id.clone();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| AgentError::download(&id, format!("Cannot start the I/O runtime: {e}")))?;
        let client = build_client(cfg, &info.proxies, info.no_proxy.as_deref())
            .map_err(|e| AgentError::download(&id, e))?;
        let auth = auth_header(info, cfg)?;
        Ok(ImageDownload {
            info: info.clone(),
            // max_duration is counted once for every attempt, pass and checksum file (SPEC
            // §7.6), from the deploy's start when the orchestrator set a deadline.
            cfg: cfg.starting_now(),
            client,
            auth,
            progress,
            rt,
        })
    }

    /// The shared progress counters.
    pub fn progress(&self) -> &Arc<Progress> {
        &self.progress
    }

    /// Fetches a small text resource (a checksum file) with the image's auth, proxies and
    /// retries. Errors name the resource's URL, as IPA does.
    pub fn fetch_text(&self, url: &str) -> Result<String> {
        self.rt.block_on(async {
            let mut attempt = 0;
            loop {
                let res = self.text_once(url).await;
                match res {
                    Ok(t) => return Ok(t),
                    Err(Failure::Stop(e)) => return Err(e),
                    Err(Failure::Retry(msg)) if attempt >= self.cfg.retries => {
                        return Err(AgentError::download(url, msg))
                    }
                    Err(Failure::Retry(msg)) => {
                        tracing::warn!(url, "fetching checksum file failed, retrying: {msg}");
                        attempt += 1;
                        self.pause(self.cfg.retry_interval).await?;
                    }
                }
            }
        })
    }

    async fn text_once(&self, url: &str) -> std::result::Result<String, Failure> {
        let too_large = || {
            Failure::Stop(AgentError::download(
                url,
                format!(
                    "Checksum file {url} is larger than 4 MiB ({MAX_CHECKSUM_FILE} bytes): \
                     not a checksum file"
                ),
            ))
        };
        if let Some(path) = file_path(url) {
            use std::io::Read;
            let mut text = Vec::new();
            std::fs::File::open(&path)
                .and_then(|f| f.take(MAX_CHECKSUM_FILE as u64 + 1).read_to_end(&mut text))
                .map_err(|e| Failure::Stop(AgentError::download(url, format!("{path}: {e}"))))?;
            if text.len() > MAX_CHECKSUM_FILE {
                return Err(too_large());
            }
            return Ok(String::from_utf8_lossy(&text).into_owned());
        }
        if self.time_left() == Some(Duration::ZERO) {
            return Err(Failure::Stop(self.timeout_error()));
        }
        let resp = self.send(url, None).await?;
        let status = resp.status();
        if status != StatusCode::OK {
            return Err(status_failure(url, url, resp).await);
        }
        let (stall, deadline) = (self.cfg.connection_timeout, self.cfg.deadline);
        match read_body(resp, MAX_CHECKSUM_FILE, stall, deadline).await {
            Ok(b) => Ok(String::from_utf8_lossy(&b).into_owned()),
            Err(BodyError::TooLarge(_)) => Err(too_large()),
            Err(BodyError::Deadline) => Err(Failure::Stop(self.timeout_error())),
            Err(BodyError::Stalled(d)) => Err(Failure::Retry(format!(
                "Timed out reading {url}: no data for {d:?}"
            ))),
            Err(BodyError::Transport(e)) => Err(Failure::Retry(format!(
                "Error reading {url}: {}",
                error_chain(&e)
            ))),
            Err(BodyError::Corrupt(e)) => Err(Failure::Retry(format!("Error reading {url}: {e}"))),
            Err(BodyError::Encoding(e)) => Err(Failure::Retry(format!("Error reading {url}: {e}"))),
        }
    }

    /// Reads the first `n` bytes of the image and its total length, without downloading the
    /// rest (a `Range` request; a server that ignores it is read only that far). Used to learn
    /// an image's size before anything is written. `None` when no URL answers.
    pub fn probe(&self, n: usize) -> Option<(Option<u64>, Vec<u8>)> {
        self.rt.block_on(async {
            for url in &self.info.urls {
                if let Some(path) = file_path(url) {
                    use std::io::Read;
                    let mut f = std::fs::File::open(&path).ok()?;
                    let len = f.metadata().ok()?.len();
                    let mut head = Vec::with_capacity(n);
                    f.by_ref().take(n as u64).read_to_end(&mut head).ok()?;
                    return Some((Some(len), head));
                }
                let mut req = self
                    .client
                    .get(url)
                    .header(header::RANGE, format!("bytes=0-{}", n.saturating_sub(1)));
                if let Some(auth) = &self.auth {
                    req = req.header(header::AUTHORIZATION, auth.clone());
                }
                let Ok(Ok(resp)) =
                    tokio::time::timeout(self.cfg.connection_timeout, req.send()).await
                else {
                    continue;
                };
                let total = match resp.status().as_u16() {
                    200 => resp.content_length(),
                    206 => resp
                        .headers()
                        .get(header::CONTENT_RANGE)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.rsplit('/').next())
                        .and_then(|t| t.parse().ok()),
                    _ => continue,
                };
                let mut head = Vec::with_capacity(n);
                let mut body = resp.bytes_stream();
                // The probe is a shortcut: it gets one stall timeout in all, never past the
                // operation's deadline (a trickling server cannot hold it for long).
                let until = tokio::time::Instant::now()
                    + self.time_left().map_or(self.cfg.connection_timeout, |l| {
                        l.min(self.cfg.connection_timeout)
                    });
                while head.len() < n {
                    match tokio::time::timeout_at(until, body.next()).await {
                        Ok(Some(Ok(c))) => {
                            head.extend_from_slice(&c[..c.len().min(n - head.len())])
                        }
                        _ => break,
                    }
                }
                return Some((total, head));
            }
            None
        })
    }

    /// Downloads the image into `sink`, trying each URL in turn. Returns the URL that worked.
    pub fn run(&mut self, sink: &mut dyn Sink) -> Result<String> {
        // The deadline is set once, in new(): max_duration covers every attempt and pass
        // (SPEC §7.6), including the pipeline's checksum retries and the temp-file fallback.
        let urls = self.info.urls.clone();
        let mut records = Vec::new();
        let mut dirty = false;
        for url in &urls {
            let url_start = Instant::now();
            let mut cursor = Cursor::default();
            if dirty {
                sink.reset()?;
                self.progress.set_transferred(0);
                self.progress.reset_written();
            }
            let mut attempt = 0u32;
            let outcome = loop {
                let res = self.rt.block_on(self.attempt(url, &mut cursor, sink));
                dirty |= cursor.offset > 0;
                match res {
                    Ok(()) => break Ok(()),
                    Err(Failure::Stop(e)) => return Err(e),
                    Err(Failure::Retry(msg)) => {
                        if attempt >= self.cfg.retries {
                            break Err(msg);
                        }
                        attempt += 1;
                        tracing::warn!(
                            url = %url, attempt, of = self.cfg.retries + 1,
                            "download attempt failed, retrying in {:?}: {msg}", self.cfg.retry_interval
                        );
                        self.rt.block_on(self.pause(self.cfg.retry_interval))?;
                    }
                }
            };
            match outcome {
                Ok(()) => {
                    tracing::info!(
                        url = %url,
                        bytes = self.progress.bytes_transferred(),
                        reported = ?self.progress.content_length(),
                        "image downloaded"
                    );
                    return Ok(url.clone());
                }
                Err(msg) => records.push(format!(
                    "URL: {url}; time: {:.2} seconds. Error: {msg}",
                    url_start.elapsed().as_secs_f64()
                )),
            }
        }
        Err(AgentError::download(&self.info.id, records.join("\n ")))
    }

    /// Sleeps, but never past the max duration.
    async fn pause(&self, d: Duration) -> Result<()> {
        if let Some(left) = self.time_left() {
            if left <= d {
                tokio::time::sleep(left).await;
                return Err(self.timeout_error());
            }
        }
        tokio::time::sleep(d).await;
        Ok(())
    }

    fn time_left(&self) -> Option<Duration> {
        self.cfg.time_left()
    }

    fn timeout_error(&self) -> AgentError {
        AgentError::ImageDownloadTimeout {
            image_id: self.info.id.clone(),
            secs: self.cfg.max_duration.map(|d| d.as_secs()).unwrap_or(0),
        }
    }

    async fn send(
        &self,
        url: &str,
        range: Option<(u64, &HeaderValue)>,
    ) -> std::result::Result<reqwest::Response, Failure> {
        let mut req = self.client.get(url);
        if let Some(auth) = &self.auth {
            req = req.header(header::AUTHORIZATION, auth.clone());
        }
        if let Some((from, validator)) = range {
            req = req
                .header(header::RANGE, format!("bytes={from}-"))
                .header(header::IF_RANGE, validator.clone());
        }
        // The connect timeout is on the client; this bounds the wait for the response head,
        // never past the max duration.
        let wait = match self.time_left() {
            Some(left) => left.min(self.cfg.connection_timeout),
            None => self.cfg.connection_timeout,
        };
        match tokio::time::timeout(wait, req.send()).await {
            Err(_) if self.time_left() == Some(Duration::ZERO) => {
                Err(Failure::Stop(self.timeout_error()))
            }
            Err(_) => Err(Failure::Retry(format!(
                "Timed out waiting for a response from {url}"
            ))),
            Ok(Err(e)) => Err(Failure::Retry(format!(
                "Error connecting to {url}: {}",
                error_chain(&e)
            ))),
            Ok(Ok(resp)) => Ok(resp),
        }
    }

    async fn attempt(
        &self,
        url: &str,
        cur: &mut Cursor,
        sink: &mut dyn Sink,
    ) -> std::result::Result<(), Failure> {
        if self.time_left() == Some(Duration::ZERO) {
            return Err(Failure::Stop(self.timeout_error()));
        }
        if let Some(path) = file_path(url) {
            return self.read_file(url, &path, cur, sink).await;
        }
        let resuming = cur.offset > 0 && cur.validator.is_some();
        let range = match (&cur.validator, resuming) {
            (Some(v), true) => Some((cur.offset, v)),
            _ => None,
        };
        let resp = self.send(url, range).await?;
        let status = resp.status();
        let answered = status == StatusCode::OK
            || (resuming
                && matches!(
                    status,
                    StatusCode::PARTIAL_CONTENT | StatusCode::RANGE_NOT_SATISFIABLE
                ));
        if !answered {
            return Err(status_failure(&self.info.id, url, resp).await);
        }
        let decoding = self.start_response(url, status, resp.headers(), cur, sink)?;
        self.stream_body(url, resp, decoding, cur, sink).await
    }

    /// `file://` URLs: for people with the image at hand (and the demo). Read in 1 MiB chunks.
    async fn read_file(
        &self,
        url: &str,
        path: &str,
        cur: &mut Cursor,
        sink: &mut dyn Sink,
    ) -> std::result::Result<(), Failure> {
        use std::io::Read;
        let stop = |e: std::io::Error| {
            Failure::Stop(AgentError::download_fatal(
                &self.info.id,
                format!("Cannot read {url}: {e}"),
            ))
        };
        let mut f = std::fs::File::open(path).map_err(stop)?;
        let len = f.metadata().map_err(stop)?.len();
        if cur.offset > 0 {
            sink.reset().map_err(Failure::Stop)?;
        }
        cur.offset = 0;
        cur.total = Some(len);
        self.progress.set_content_length(Some(len));
        sink.expect_len(len).map_err(Failure::Stop)?;
        loop {
            let mut buf = vec![0u8; 1 << 20];
            let n = f.read(&mut buf).map_err(stop)?;
            if n == 0 {
                break;
            }
            buf.truncate(n);
            sink.data(Bytes::from(buf)).map_err(Failure::Stop)?;
            cur.offset += n as u64;
            self.progress.set_transferred(cur.offset);
            if self.time_left() == Some(Duration::ZERO) {
                return Err(Failure::Stop(self.timeout_error()));
            }
        }
        Ok(())
    }
}

/// The local path of a `file://` URL.
fn file_path(url: &str) -> Option<String> {
    let u = url::Url::parse(url).ok()?;
    (u.scheme() == "file")
        .then(|| u.to_file_path().ok())
        .flatten()
        .map(|p| p.to_string_lossy().into_owned())
}

/// The text IPA builds for a non-200 answer, and whether it is fatal (4xx) or retryable.
async fn status_failure(id: &str, url: &str, resp: reqwest::Response) -> Failure {
    let status = resp.status();
    let headers = format!("{:?}", resp.headers());
    let body = resp.text().await.unwrap_or_default();
    let body: String = body.chars().take(1024).collect();
    let msg = format!(
        "Received status code {} from {url}, expected 200. Response body: {body} Response headers: {headers}",
        status.as_u16()
    );
    if status.is_client_error() {
        Failure::Stop(AgentError::download_fatal(id, msg))
    } else {
        Failure::Retry(msg)
    }
}

/// A validator for `If-Range`, when the server allows byte ranges at all.
fn resume_validator(h: &HeaderMap) -> Option<HeaderValue> {
    let ranges = h
        .get(header::ACCEPT_RANGES)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("bytes"));
    if !ranges {
        return None;
    }
    // A weak ETag may not be used with If-Range (RFC 9110 §13.1.5); fall back to the date.
    h.get(header::ETAG)
        .filter(|v| !v.as_bytes().starts_with(b"W/"))
        .or_else(|| h.get(header::LAST_MODIFIED))
        .cloned()
}

/// The total length `N` of a `Content-Range: bytes A-B/N` answer.
fn content_range_total(h: &HeaderMap) -> Option<u64> {
    let v = h.get(header::CONTENT_RANGE)?.to_str().ok()?;
    v.rsplit('/').next()?.trim().parse().ok()
}

/// The first byte of a `Content-Range: bytes A-B/N` answer.
fn content_range_start(h: &HeaderMap) -> Option<u64> {
    let v = h.get(header::CONTENT_RANGE)?.to_str().ok()?;
    let rest = v.trim().strip_prefix("bytes ")?;
    rest.split('-').next()?.trim().parse().ok()
}

mod stream;
#[cfg(test)]
mod tests;
