//! HTTP client plumbing shared by image downloads, checksum files and config drives: the
//! client with its TLS settings and per-request proxies, the auth header in IPA's order, and
//! whole-body fetches of small resources.

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
pub fn build_client(
    cfg: &FetchConfig,
    proxies: &std::collections::BTreeMap<String, String>,
    no_proxy: Option<&str>,
) -> std::result::Result<reqwest::Client, String> {
    let mut b = reqwest::Client::builder()
        .connect_timeout(cfg.connection_timeout)
        .tcp_nodelay(true)
        .tls_version_min(if cfg.tls_min_version == crate::config::TlsVersion::V13 {
            reqwest::tls::Version::TLS_1_3
        } else {
            reqwest::tls::Version::TLS_1_2
        })
        .user_agent(concat!("rivet/", env!("CARGO_PKG_VERSION")));
    if cfg.insecure {
        b = b.tls_danger_accept_invalid_certs(true);
    }
    if let Some(ca) = &cfg.cafile {
        let pem =
            std::fs::read(ca).map_err(|e| format!("Cannot read cafile {}: {e}", ca.display()))?;
        for cert in reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| format!("Invalid cafile {}: {e}", ca.display()))?
        {
            b = b.add_root_certificate(cert);
        }
    }
    match (&cfg.certfile, &cfg.keyfile) {
        (Some(c), Some(k)) => {
            let mut pem = std::fs::read(c)
                .map_err(|e| format!("Cannot read certfile {}: {e}", c.display()))?;
            pem.extend(
                std::fs::read(k)
                    .map_err(|e| format!("Cannot read keyfile {}: {e}", k.display()))?,
            );
            let id = reqwest::Identity::from_pem(&pem)
                .map_err(|e| format!("Invalid client certificate or key: {e}"))?;
            b = b.identity(id);
        }
        (None, None) => {}
        _ => return Err("certfile and keyfile must be given together".into()),
    }
    let no_proxy = no_proxy.and_then(reqwest::NoProxy::from_string);
    for (scheme, target) in proxies {
        let p = match scheme.as_str() {
            "http" => reqwest::Proxy::http(target),
            "https" => reqwest::Proxy::https(target),
            "all" => reqwest::Proxy::all(target),
            _ => continue,
        }
        .map_err(|e| format!("Invalid proxy {target}: {e}"))?;
        b = b.proxy(p.no_proxy(no_proxy.clone()));
    }
    b.build()
        .map_err(|e| format!("Cannot build the HTTP client: {}", error_chain(&e)))
}

/// Fetches a small resource whole (a config drive given by URL): the TLS settings apply, but
/// no proxies and no image auth, as IPA does; at most `limit` bytes are accepted.
pub fn fetch_bytes(
    url: &str,
    cfg: &FetchConfig,
    limit: usize,
) -> std::result::Result<Vec<u8>, String> {
    let client = build_client(cfg, &Default::default(), None)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let resp = tokio::time::timeout(cfg.connection_timeout, client.get(url).send())
            .await
            .map_err(|_| format!("timed out after {:?}", cfg.connection_timeout))?
            .map_err(|e| error_chain(&e))?;
        let status = resp.status();
        if status.as_u16() >= 400 {
            return Err(format!(
                "Got HTTP code {} instead of 200 in response to GET request.",
                status.as_u16()
            ));
        }
        let mut out = Vec::new();
        let mut body = resp.bytes_stream();
        while let Some(chunk) = tokio::time::timeout(cfg.connection_timeout, body.next())
            .await
            .map_err(|_| "timed out reading the body".to_string())?
        {
            let chunk = chunk.map_err(|e| error_chain(&e))?;
            if out.len() + chunk.len() > limit {
                return Err(format!("larger than {limit} bytes"));
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    })
}
