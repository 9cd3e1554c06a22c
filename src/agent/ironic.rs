//! Talking to Ironic (docs/agent-api.md#lookup-and-heartbeat): API version discovery, lookup with IPA's backoff, the
//! configuration Ironic returns, and heartbeats on IPA's schedule (plus the forced one after
//! every async command).

use std::net::{IpAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, CONTENT_TYPE};
use serde_json::{json, Value};

use super::Agent;

/// Lookup needs 1.62 (agent token); heartbeats send at most 1.68 (`agent_verify_ca`).
const LOOKUP_VERSION: (u32, u32) = (1, 62);
const HEARTBEAT_VERSION: (u32, u32) = (1, 68);
const FALLBACK_VERSION: (u32, u32) = (1, 31);

/// Why talking to Ironic stopped.
#[derive(Debug, thiserror::Error)]
pub enum IronicError {
    /// Lookup never succeeded within `lookup_timeout` (IPA's `LookupNodeError`).
    #[error("Lookup of the node failed for {0} seconds: {1}")]
    Lookup(u64, String),
    /// A setting needed to talk to Ironic is wrong.
    #[error("{0}")]
    Config(String),
    /// The HTTP client cannot be built from the TLS settings.
    #[error(transparent)]
    Client(#[from] crate::image::http::ClientError),
    /// The `config` of the lookup answer has a bad setting.
    #[error(transparent)]
    Setting(#[from] crate::config::SettingError),
}

/// Why one request reached none of the API URLs.
#[derive(Debug, thiserror::Error)]
enum SendError {
    /// The agent has no API URL at all.
    #[error("no API URL")]
    NoUrl,
    /// The last URL tried did not answer.
    #[error("{url}: {source}")]
    Unreachable {
        /// The API URL.
        url: String,
        /// The transport error.
        source: reqwest::Error,
    },
}

/// Why one lookup did not give an answer.
#[derive(Debug, thiserror::Error)]
enum LookupFailure {
    /// No API URL answered.
    #[error(transparent)]
    Send(#[from] SendError),
    /// Ironic answered with a status other than 200.
    #[error("status {status}: {text}")]
    Status {
        /// The HTTP status.
        status: u16,
        /// The body of the answer.
        text: String,
    },
    /// The answer is not JSON.
    #[error("invalid lookup answer: {0}")]
    InvalidAnswer(#[source] reqwest::Error),
}

/// The Ironic API client of one agent.
pub struct Ironic {
    urls: Vec<String>,
    client: reqwest::Client,
    request_id: Option<String>,
    version: (u32, u32),
    timeout: Duration,
}

fn version_header(v: (u32, u32)) -> HeaderValue {
    HeaderValue::from_str(&format!("{}.{}", v.0, v.1)).unwrap_or(HeaderValue::from_static("1.31"))
}

fn parse_version(s: &str) -> Option<(u32, u32)> {
    let (a, b) = s.split_once('.')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

impl Ironic {
    /// A client for the `api_url` list of the agent's settings; `None` when standalone.
    pub fn new(agent: &Agent) -> Result<Option<Ironic>, IronicError> {
        let s = agent.settings();
        let urls: Vec<String> = s
            .api_url
            .0
            .iter()
            .map(|u| u.trim_end_matches('/').to_string())
            .collect();
        if urls.is_empty() {
            return Ok(None);
        }
        let fetch = s.fetch_config();
        let timeout = s.http_request_timeout.0;
        let client = crate::image::http::build_client(&fetch, &Default::default(), None)?;
        Ok(Some(Ironic {
            urls,
            client,
            request_id: s.global_request_id.clone(),
            version: FALLBACK_VERSION,
            timeout,
        }))
    }

    fn headers(&self, version: Option<(u32, u32)>) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert(ACCEPT, HeaderValue::from_static("application/json"));
        if let Some(v) = version {
            h.insert("X-OpenStack-Ironic-API-Version", version_header(v));
        }
        if let Some(id) = self
            .request_id
            .as_deref()
            .and_then(|i| HeaderValue::from_str(i).ok())
        {
            h.insert("X-OpenStack-Request-ID", id);
        }
        h
    }

    /// Sends a request to each API URL in turn until one answers; the one that answered
    /// moves to the front.
    async fn send(
        &mut self,
        build: impl Fn(&reqwest::Client, &str) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, SendError> {
        let mut last = SendError::NoUrl;
        for i in 0..self.urls.len() {
            match build(&self.client, &self.urls[i])
                .timeout(self.timeout)
                .send()
                .await
            {
                Ok(r) => {
                    if i > 0 {
                        let u = self.urls.remove(i);
                        self.urls.insert(0, u);
                    }
                    return Ok(r);
                }
                Err(source) => {
                    last = SendError::Unreachable {
                        url: self.urls[i].clone(),
                        source,
                    }
                }
            }
        }
        Err(last)
    }

    /// `GET /`: the newest API version Ironic offers (1.31 when it cannot be learnt).
    pub async fn discover_version(&mut self) -> (u32, u32) {
        let h = self.headers(None);
        let v = match self
            .send(|c, u| c.get(format!("{u}/")).headers(h.clone()))
            .await
        {
            Ok(r) => r.json::<Value>().await.ok().and_then(|v| {
                v.pointer("/default_version/version")
                    .and_then(Value::as_str)
                    .and_then(parse_version)
            }),
            Err(e) => {
                tracing::warn!("cannot reach Ironic for version discovery: {e}");
                None
            }
        };
        self.version = v.unwrap_or(FALLBACK_VERSION);
        self.version
    }

    fn capped(&self, cap: (u32, u32)) -> (u32, u32) {
        self.version.min(cap)
    }

    /// One lookup: `GET /v1/lookup?addresses=...[&node_uuid=...]`.
    async fn lookup_once(
        &mut self,
        addresses: &str,
        node_uuid: Option<&str>,
    ) -> Result<Value, LookupFailure> {
        let h = self.headers(Some(self.capped(LOOKUP_VERSION)));
        let mut q = vec![("addresses", addresses.to_string())];
        if let Some(n) = node_uuid {
            q.push(("node_uuid", n.to_string()));
        }
        let r = self
            .send(|c, u| c.get(format!("{u}/v1/lookup")).query(&q).headers(h.clone()))
            .await?;
        let status = r.status().as_u16();
        if status != 200 {
            let text = r.text().await.unwrap_or_default();
            return Err(LookupFailure::Status { status, text });
        }
        r.json::<Value>()
            .await
            .map_err(LookupFailure::InvalidAnswer)
    }

    /// Lookup with IPA's backoff until `timeout`.
    pub async fn lookup(
        &mut self,
        agent: &Agent,
        addresses: &str,
        timeout: Duration,
        interval: Duration,
    ) -> Result<Value, IronicError> {
        let start = Instant::now();
        let node_uuid = agent.settings().node_uuid;
        let mut wait = interval.max(Duration::from_millis(100));
        let mut conflicts = 0usize;
        loop {
            match self.lookup_once(addresses, node_uuid.as_deref()).await {
                Ok(v) if v.get("node").is_some() => return Ok(v),
                Ok(v) => tracing::warn!("lookup answer without a node: {v}"),
                Err(msg @ LookupFailure::Status { status: 409, .. }) => {
                    let extra = [5u64, 10, 30][conflicts.min(2)];
                    conflicts += 1;
                    tracing::warn!("lookup: node locked ({msg}); waiting {extra} s more");
                    tokio::time::sleep(Duration::from_secs(extra)).await;
                }
                Err(msg) => tracing::warn!("lookup failed: {msg}"),
            }
            if start.elapsed() >= timeout {
                return Err(IronicError::Lookup(
                    timeout.as_secs(),
                    "no node found".into(),
                ));
            }
            // Random exponential backoff, capped at 60 s.
            let jitter: f64 = rand::rng().random_range(0.5..1.5);
            tokio::time::sleep(
                wait.mul_f64(jitter)
                    .min(timeout.saturating_sub(start.elapsed())),
            )
            .await;
            wait = (wait * 2).min(Duration::from_secs(60));
        }
    }

    /// One heartbeat; true on 202.
    pub async fn heartbeat(&mut self, node_uuid: &str, body: &Value) -> bool {
        let h = self.headers(Some(self.capped(HEARTBEAT_VERSION)));
        let res = self
            .send(|c, u| {
                c.post(format!("{u}/v1/heartbeat/{node_uuid}"))
                    .headers(h.clone())
                    .json(body)
            })
            .await;
        match res {
            Ok(r) if r.status().as_u16() == 202 => true,
            Ok(r) => {
                let status = r.status().as_u16();
                let text = r.text().await.unwrap_or_default();
                if status == 409 {
                    tracing::warn!("heartbeat conflict (HeartbeatConflictError): {text}");
                } else {
                    tracing::error!("heartbeat failed (HeartbeatError): Error {status}: {text}");
                }
                false
            }
            Err(e) => {
                tracing::error!("heartbeat failed (HeartbeatConnectionError): {e}");
                false
            }
        }
    }

    /// The first API URL (for finding the advertise address).
    pub fn first_url(&self) -> &str {
        self.urls.first().map(String::as_str).unwrap_or("")
    }

    /// The API version in use.
    pub fn version(&self) -> (u32, u32) {
        self.version
    }
}

/// MAC addresses of the machine's NICs (sysfs), skipping loopback and all-zero addresses.
pub(crate) fn nic_macs() -> Vec<String> {
    let mut macs: Vec<String> = std::fs::read_dir("/sys/class/net")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name() != "lo")
        .filter_map(|e| std::fs::read_to_string(e.path().join("address")).ok())
        .map(|m| m.trim().to_lowercase())
        .filter(|m| !m.is_empty() && m != "00:00:00:00:00:00")
        .collect();
    macs.sort();
    macs.dedup();
    macs
}

/// The local address used to reach `url`'s host (what `ip route get` would say); no packet
/// is sent.
pub(crate) fn local_address_towards(url: &str) -> Option<IpAddr> {
    let u = url::Url::parse(url).ok()?;
    let port = u.port_or_known_default().unwrap_or(80);
    let host = u.host_str()?.trim_matches(['[', ']']).to_string();
    let target = std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port))
        .ok()?
        .next()?;
    let bind = if target.is_ipv6() {
        "[::]:0"
    } else {
        "0.0.0.0:0"
    };
    let s = UdpSocket::bind(bind).ok()?;
    s.connect(target).ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_unspecified()).then_some(ip)
}

/// Applies the `config` part of a lookup answer to the agent.
pub(crate) fn apply_lookup(agent: &Agent, answer: &Value) -> Result<(), IronicError> {
    if let Some(node) = answer.get("node") {
        agent.cache_node(node);
    }
    let cfg = answer.get("config").cloned().unwrap_or_else(|| json!({}));
    match cfg.get("agent_token").and_then(Value::as_str) {
        Some("******") if !agent.has_token() => {
            return Err(IronicError::Config(
                "Ironic says the agent token was already handed out, and this agent has none: \
                 refusing to serve"
                    .into(),
            ))
        }
        Some(t) if t != "******" && t.len() >= 32 => agent.set_token(t),
        Some(t) if t != "******" => {
            tracing::warn!("ignoring an agent token shorter than 32 characters")
        }
        _ => {}
    }
    if let Some(c) = cfg.get("agent_containers").filter(|v| !v.is_null()) {
        // Container-based steps are not implemented: say so now, refuse them when asked.
        tracing::warn!("Ironic sent agent_containers ({c}); rivet runs no container steps");
    }
    match cfg.as_object() {
        Some(map) => agent
            .update_settings(|s| s.apply_lookup_config(map))
            .map_err(IronicError::from),
        None => Ok(()),
    }
}

/// The address to advertise: `advertise_host`, else the local address that reaches Ironic.
pub(crate) fn advertise_host(agent: &Agent, ironic: &Ironic) -> Result<String, IronicError> {
    match agent.settings().advertise_host {
        Some(h) => Ok(h),
        None => local_address_towards(ironic.first_url())
            .map(|ip| ip.to_string())
            .ok_or_else(|| IronicError::Config("cannot find an address to advertise".into())),
    }
}

/// Lookup, then heartbeats until the process ends (the API is already serving). Returns only
/// on a fatal error. `verify_ca` is the auto-TLS certificate, sent as `agent_verify_ca`.
pub(crate) async fn run(
    agent: Arc<Agent>,
    mut ironic: Ironic,
    verify_ca: Option<String>,
) -> Result<(), IronicError> {
    let s = agent.settings();
    let addresses = match &s.lookup_addresses.0 {
        l if l.is_empty() => nic_macs(),
        l => l.clone(),
    }
    .join(",");
    let (timeout, interval) = (s.lookup_timeout.0, s.lookup_interval.0);
    let answer = ironic.lookup(&agent, &addresses, timeout, interval).await?;
    apply_lookup(&agent, &answer)?;
    let node_uuid = answer
        .pointer("/node/uuid")
        .and_then(Value::as_str)
        .ok_or_else(|| IronicError::Config("lookup answer has no node uuid".into()))?
        .to_string();
    tracing::info!(node = %node_uuid, "lookup succeeded");

    let s = agent.settings();
    let host = advertise_host(&agent, &ironic)?;
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host
    };
    let port = s.advertise_port;
    // Served over TLS means advertised as https, whatever the setting says.
    let proto = match agent.scheme() {
        crate::config::Scheme::Https => "https",
        crate::config::Scheme::Http => s.advertise_protocol.as_str(),
    };
    let callback_url = format!("{proto}://{host}:{port}");

    loop {
        let mut body = json!({"callback_url": callback_url});
        let v = ironic.version();
        if v >= (1, 62) {
            body["agent_token"] = json!(agent.token());
        }
        if v >= (1, 36) {
            body["agent_version"] = json!(super::VERSION);
        }
        if let (true, Some(ca)) = (v >= (1, 68), &verify_ca) {
            body["agent_verify_ca"] = json!(ca);
        }
        let ok = ironic.heartbeat(&node_uuid, &body).await;
        let last = Instant::now();
        let timeout = agent.settings().heartbeat_timeout.0.as_secs_f64();
        let wait = if ok {
            Duration::from_secs_f64(timeout * rand::rng().random_range(0.3..0.6))
        } else {
            Duration::from_secs_f64(5.0 * rand::rng().random_range(1.0..2.0))
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = agent.heartbeat_now.notified() => {
                // Forced heartbeat: at most one per 5 s.
                let since = last.elapsed();
                if since < Duration::from_secs(5) {
                    tokio::time::sleep(Duration::from_secs(5) - since).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse() {
        assert_eq!(parse_version("1.115"), Some((1, 115)));
        assert!((1, 115) > (1, 68));
        assert_eq!(parse_version("x"), None);
    }

    #[test]
    fn loopback_route() {
        assert_eq!(
            local_address_towards("http://127.0.0.1:6385"),
            Some("127.0.0.1".parse().unwrap())
        );
    }
}
