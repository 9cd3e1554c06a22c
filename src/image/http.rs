//! HTTP client plumbing shared by image downloads, checksum files and config drives: the
//! client with its TLS settings and per-request proxies, the auth header in IPA's order, and
//! whole-body fetches of small resources.

use std::time::{Duration, Instant};

use base64::Engine;
use futures_util::StreamExt;
use reqwest::header::HeaderValue;

use super::fetch::FetchConfig;
use super::info::ImageInfo;
use crate::errors::{AgentError, Result};

/// The error and its causes on one line (reqwest hides the useful part in `source()`).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// IPA's order: the conductor's Authorization header, then basic auth from `image_info`, then
/// basic auth from the agent's configuration.
pub(crate) fn auth_header(info: &ImageInfo, cfg: &FetchConfig) -> Result<Option<HeaderValue>> {
    let b64 = base64::engine::general_purpose::STANDARD;
    if let Some(enc) = info
        .image_request_authorization
        .as_deref()
        .filter(|s| !s.is_empty())
    {
        let raw = b64.decode(enc.trim()).map_err(|e| {
            AgentError::download(
                &info.id,
                format!("image_request_authorization is not base64: {e}"),
            )
        })?;
        let v = HeaderValue::from_bytes(&raw).map_err(|e| {
            AgentError::download(&info.id, format!("Invalid Authorization header: {e}"))
        })?;
        return Ok(Some(v));
    }
    let (user, password) = if info.image_server_auth_strategy.as_deref() == Some("http_basic") {
        (&info.image_server_user, &info.image_server_password)
    } else if cfg.auth_strategy == crate::config::AuthStrategy::HttpBasic {
        (&cfg.auth_user, &cfg.auth_password)
    } else {
        return Ok(None);
    };
    let missing: Vec<&str> = [("user", user), ("password", password)]
        .into_iter()
        .filter(|(_, v)| v.as_deref().unwrap_or("").is_empty())
        .map(|(k, _)| k)
        .collect();
    if !missing.is_empty() {
        let list = missing
            .iter()
            .map(|k| format!("'{k}'"))
            .collect::<Vec<_>>()
            .join(", ");
        return Err(AgentError::download(
            &info.id,
            format!("Missing [{list}] fields from HTTP(S) basic auth config"),
        ));
    }
    let token = b64.encode(format!(
        "{}:{}",
        user.as_deref().unwrap_or(""),
        password.as_deref().unwrap_or("")
    ));
    HeaderValue::from_str(&format!("Basic {token}"))
        .map(Some)
        .map_err(|e| AgentError::download(&info.id, format!("Invalid credentials: {e}")))
}

/// Builds the HTTP client for one image: TLS settings and per-request proxies.
///
/// Proxies live in the client, not in the process environment (IPA writes `no_proxy` into the
/// environment for good); environment proxies still apply when `image_info` gives none.
pub(crate) fn build_client(
    cfg: &FetchConfig,
    proxies: &std::collections::BTreeMap<String, String>,
    no_proxy: Option<&str>,
) -> std::result::Result<reqwest::Client, ClientError> {
    let mut roots = Vec::new();
    if let Some(ca) = &cfg.cafile {
        let pem = std::fs::read(ca).map_err(|source| ClientError::Read {
            what: "cafile",
            path: ca.clone(),
            source,
        })?;
        roots = reqwest::Certificate::from_pem_bundle(&pem).map_err(|source| {
            ClientError::InvalidCafile {
                path: ca.clone(),
                source,
            }
        })?;
    }
    let b = configure(cfg, proxies, no_proxy)?.tls_certs_merge(roots.clone());
    match b.build() {
        Ok(c) => Ok(c),
        // A ramdisk without a CA bundle must still reach plain-http servers, insecure ones
        // and those a cafile vouches for: then only the cafile's roots are trusted.
        Err(e) if error_chain(&e).contains("No CA certificates") => {
            tracing::warn!(
                "no CA certificates on this system: trusting only the cafile's ({})",
                roots.len()
            );
            configure(cfg, proxies, no_proxy)?
                .tls_certs_only(roots)
                .build()
                .map_err(ClientError::Build)
        }
        Err(e) => Err(ClientError::Build(e)),
    }
}

/// The HTTP client could not be made (a bad TLS file, a bad proxy).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A TLS file cannot be read.
    #[error("Cannot read {what} {}: {source}", path.display())]
    Read {
        /// `cafile`, `certfile` or `keyfile`.
        what: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The CA file holds no usable certificate.
    #[error("Invalid cafile {}: {source}", path.display())]
    InvalidCafile {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        source: reqwest::Error,
    },
    /// The client certificate and key do not make an identity.
    #[error("Invalid client certificate or key: {0}")]
    Identity(#[source] reqwest::Error),
    /// Only one of `certfile` and `keyfile` is set.
    #[error("certfile and keyfile must be given together")]
    HalfIdentity,
    /// A proxy URL reqwest refuses.
    #[error("Invalid proxy {target}: {source}")]
    Proxy {
        /// The proxy URL.
        target: String,
        /// The cause.
        source: reqwest::Error,
    },
    /// reqwest could not build the client (the message has the whole chain of causes).
    #[error("Cannot build the HTTP client: {}", error_chain(.0))]
    Build(#[source] reqwest::Error),
}

/// Everything of the client but its trust roots.
fn configure(
    cfg: &FetchConfig,
    proxies: &std::collections::BTreeMap<String, String>,
    no_proxy: Option<&str>,
) -> std::result::Result<reqwest::ClientBuilder, ClientError> {
    let mut b = reqwest::Client::builder()
        .connect_timeout(cfg.connection_timeout)
        .tcp_nodelay(true)
        // The bytes as stored: the checksum is of them, and ranges mean what they say. A
        // server that encodes anyway is decoded (gzip, deflate): see `image::encoding`.
        .default_headers(reqwest::header::HeaderMap::from_iter([(
            reqwest::header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        )]))
        .tls_version_min(if cfg.tls_min_version == crate::config::TlsVersion::V13 {
            reqwest::tls::Version::TLS_1_3
        } else {
            reqwest::tls::Version::TLS_1_2
        })
        .user_agent(concat!("rivet/", env!("CARGO_PKG_VERSION")));
    if cfg.insecure {
        b = b.tls_danger_accept_invalid_certs(true);
    }
    match (&cfg.certfile, &cfg.keyfile) {
        (Some(c), Some(k)) => {
            let read = |p: &std::path::Path, what: &'static str| {
                std::fs::read(p).map_err(|source| ClientError::Read {
                    what,
                    path: p.to_path_buf(),
                    source,
                })
            };
            let mut pem = read(c, "certfile")?;
            pem.extend(read(k, "keyfile")?);
            let id = reqwest::Identity::from_pem(&pem).map_err(ClientError::Identity)?;
            b = b.identity(id);
        }
        (None, None) => {}
        _ => return Err(ClientError::HalfIdentity),
    }
    let no_proxy = no_proxy.and_then(reqwest::NoProxy::from_string);
    for (scheme, target) in proxies {
        let p = match scheme.as_str() {
            "http" => reqwest::Proxy::http(target),
            "https" => reqwest::Proxy::https(target),
            "all" => reqwest::Proxy::all(target),
            _ => continue,
        }
        .map_err(|source| ClientError::Proxy {
            target: target.clone(),
            source,
        })?;
        b = b.proxy(p.no_proxy(no_proxy.clone()));
    }
    Ok(b)
}

/// Why reading a whole body stopped.
#[derive(Debug)]
pub(crate) enum BodyError {
    /// The body is larger than the limit (announced or received).
    TooLarge(usize),
    /// No byte arrived for this long.
    Stalled(Duration),
    /// The operation's deadline passed.
    Deadline,
    /// The connection failed.
    Transport(reqwest::Error),
    /// The encoded body does not decode.
    Corrupt(std::io::Error),
    /// The server encoded the body in a way rivet does not decode.
    Encoding(super::encoding::UnsupportedEncoding),
}

/// Reads a whole body of at most `limit` bytes (a checksum file, a config drive), refusing a
/// larger one as soon as it is announced or received: never more than `limit` in memory
/// (decoded, when the server encodes it anyway). Each
/// read waits at most `stall`, and none goes past `deadline`.
pub(crate) async fn read_body(
    resp: reqwest::Response,
    limit: usize,
    stall: Duration,
    deadline: Option<Instant>,
) -> Result<Vec<u8>, BodyError> {
    let encoded = resp
        .headers()
        .contains_key(reqwest::header::CONTENT_ENCODING);
    if !encoded && resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(BodyError::TooLarge(limit));
    }
    let mut decoding =
        super::encoding::Decoding::for_response(resp.headers()).map_err(BodyError::Encoding)?;
    let mut out = Vec::new();
    let mut body = resp.bytes_stream();
    let mut keep = |b: bytes::Bytes| {
        if out.len() + b.len() > limit {
            return Err(BodyError::TooLarge(limit));
        }
        out.extend_from_slice(&b);
        Ok(())
    };
    let decoded = |e: super::encoding::DecodeError<BodyError>| match e {
        super::encoding::DecodeError::Sink(e) => e,
        super::encoding::DecodeError::Corrupt(e) => BodyError::Corrupt(e),
    };
    loop {
        let wait = match deadline {
            Some(d) => stall.min(d.saturating_duration_since(Instant::now())),
            None => stall,
        };
        let chunk = match tokio::time::timeout(wait, body.next()).await {
            Ok(Some(chunk)) => chunk.map_err(BodyError::Transport)?,
            Ok(None) => break,
            Err(_) if deadline.is_some_and(|d| Instant::now() >= d) => {
                return Err(BodyError::Deadline)
            }
            Err(_) => return Err(BodyError::Stalled(stall)),
        };
        decoding.push(chunk, &mut keep).map_err(decoded)?;
    }
    decoding.finish(&mut keep).map_err(decoded)?;
    Ok(out)
}

/// Why [`fetch_bytes`] got no body.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The HTTP client could not be made from the TLS settings.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The async runtime could not be started.
    #[error("{0}")]
    Runtime(#[source] std::io::Error),
    /// `image_download_max_duration` (seconds) passed.
    #[error("exceeded image_download_max_duration ({0} seconds)")]
    OverDeadline(u64),
    /// No answer within `connection_timeout`.
    #[error("timed out after {0:?}")]
    TimedOut(Duration),
    /// The request failed (the message has the whole chain of causes).
    #[error("{}", error_chain(.0))]
    Request(#[source] reqwest::Error),
    /// An HTTP status of 400 or more.
    #[error("Got HTTP code {0} instead of 200 in response to GET request.")]
    Status(u16),
    /// The body is larger than the limit.
    #[error("larger than {0} bytes")]
    TooLarge(usize),
    /// No data for this long while reading the body.
    #[error("timed out reading the body (no data for {0:?})")]
    Stalled(Duration),
    /// The encoded body does not decode.
    #[error("{0}")]
    Corrupt(#[source] std::io::Error),
    /// The body is encoded in a way rivet does not decode.
    #[error(transparent)]
    Encoding(super::encoding::UnsupportedEncoding),
}

/// Fetches a small resource whole (a config drive given by URL): the TLS settings apply, but
/// no proxies and no image auth, as IPA does; at most `limit` bytes are accepted. The wait for
/// each read is bounded by `connection_timeout`, the whole by `cfg`'s max duration.
pub fn fetch_bytes(
    url: &str,
    cfg: &FetchConfig,
    limit: usize,
) -> std::result::Result<Vec<u8>, FetchError> {
    let cfg = cfg.starting_now();
    let client = build_client(&cfg, &Default::default(), None)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(FetchError::Runtime)?;
    let over = || FetchError::OverDeadline(cfg.max_duration.map(|d| d.as_secs()).unwrap_or(0));
    rt.block_on(async {
        let wait = cfg
            .time_left()
            .map_or(cfg.connection_timeout, |l| l.min(cfg.connection_timeout));
        let resp = match tokio::time::timeout(wait, client.get(url).send()).await {
            Err(_) if cfg.time_left() == Some(Duration::ZERO) => return Err(over()),
            Err(_) => return Err(FetchError::TimedOut(cfg.connection_timeout)),
            Ok(r) => r.map_err(FetchError::Request)?,
        };
        let status = resp.status();
        if status.as_u16() >= 400 {
            return Err(FetchError::Status(status.as_u16()));
        }
        read_body(resp, limit, cfg.connection_timeout, cfg.deadline)
            .await
            .map_err(|e| match e {
                BodyError::TooLarge(n) => FetchError::TooLarge(n),
                BodyError::Stalled(d) => FetchError::Stalled(d),
                BodyError::Deadline => over(),
                BodyError::Transport(t) => FetchError::Request(t),
                BodyError::Corrupt(e) => FetchError::Corrupt(e),
                BodyError::Encoding(e) => FetchError::Encoding(e),
            })
    })
}
