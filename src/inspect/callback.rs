//! Delivering the inventory: IPA 13's `call_inspector` (POST to the callback URL, no API
//! version header, so Ironic answers `{"uuid": ...}`; retried on connection errors, 5xx and
//! 409 with tenacity's exponential wait), and the agent's inspection step, run before lookup
//! (the node uuid Ironic answers is then sent with lookup).

use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, CONTENT_TYPE};
use serde_json::Value;

use super::{collect, InspectionData, Machine, Options, DEFAULT_COLLECTORS};
use crate::agent::Agent;
use crate::config::Settings;

/// IPA's `InspectionError`: inspection could not deliver its data.
#[derive(Debug, thiserror::Error)]
pub enum InspectionError {
    /// The callback answered with an error (after the retries, for 5xx and 409).
    #[error("error {status}: {body}")]
    Status {
        /// HTTP status.
        status: u16,
        /// The answer's body.
        body: String,
    },
    /// No callback URL could be reached.
    #[error("cannot reach the inspection callback {url}: {cause}")]
    Connection {
        /// The last URL tried.
        url: String,
        /// Why.
        cause: String,
    },
    /// The HTTP client could not be built (TLS files).
    #[error("cannot set up the inspection client: {0}")]
    Client(#[source] crate::image::fetch::ClientError),
    /// The inspection data could not be serialized.
    #[error("cannot set up the inspection client: {0}")]
    Serialize(#[source] serde_json::Error),
}

/// tenacity's `wait_exponential(multiplier, min, max)` with `stop_after_attempt(attempts)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Retry {
    /// Attempts in all.
    pub attempts: u32,
    /// Shortest wait.
    pub min: Duration,
    /// Longest wait.
    pub max: Duration,
    /// The wait after attempt n is `multiplier * 2^(n-1)`, clamped to [min, max].
    pub multiplier: f64,
}

impl Retry {
    /// IPA 13's: 5 attempts, 1.5 × 2ⁿ seconds between 5 and 30 (waits 5, 5, 6, 12 s).
    pub const IPA: Retry = Retry {
        attempts: 5,
        min: Duration::from_secs(5),
        max: Duration::from_secs(30),
        multiplier: 1.5,
    };

    /// The wait after failed attempt `n` (1-based).
    pub fn wait(&self, n: u32) -> Duration {
        let secs = self.multiplier * 2f64.powi(n.saturating_sub(1).min(62) as i32);
        Duration::from_secs_f64(secs.min(self.max.as_secs_f64())).max(self.min)
    }
}

/// The inspection endpoint(s) and how to talk to them.
pub struct Callback {
    urls: Vec<String>,
    client: reqwest::Client,
    headers: HeaderMap,
    timeout: Duration,
    retry: Retry,
}

impl Callback {
    /// A client for `urls` with the settings' TLS options, request id and timeout.
    pub fn new(urls: Vec<String>, s: &Settings, retry: Retry) -> Result<Callback, InspectionError> {
        let client = crate::image::http::build_client(&s.fetch_config(), &Default::default(), None)
            .map_err(InspectionError::Client)?;
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        if let Some(id) = s
            .global_request_id
            .as_deref()
            .and_then(|i| HeaderValue::from_str(i).ok())
        {
            headers.insert("X-OpenStack-Request-ID", id);
        }
        Ok(Callback {
            urls,
            client,
            headers,
            timeout: s.http_request_timeout.0,
            retry,
        })
    }

    /// POSTs `data`; the node uuid of Ironic's answer (`uuid`, or `node.uuid` from newer
    /// answers) when it has one.
    pub async fn post(&self, data: &InspectionData) -> Result<Option<String>, InspectionError> {
        let body = serde_json::to_vec(data).map_err(InspectionError::Serialize)?;
        let mut attempt = 1;
        loop {
            let res = self.post_once(&body).await;
            let retry = match &res {
                Err(InspectionError::Connection { .. }) => true,
                Err(InspectionError::Status { status, .. }) => *status >= 500 || *status == 409,
                _ => false,
            };
            if !retry || attempt >= self.retry.attempts {
                return res;
            }
            let wait = self.retry.wait(attempt);
            tracing::warn!(
                "inspection callback attempt {attempt} failed ({}); retrying in {:.1} s",
                res.as_ref()
                    .err()
                    .map(|e| e.to_string())
                    .unwrap_or_default(),
                wait.as_secs_f64()
            );
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }

    /// One attempt: each URL in turn until one answers.
    async fn post_once(&self, body: &[u8]) -> Result<Option<String>, InspectionError> {
        let mut last = None;
        for url in &self.urls {
            tracing::info!("posting collected data to {url}");
            let sent = self
                .client
                .post(url)
                .headers(self.headers.clone())
                .body(body.to_vec())
                .timeout(self.timeout)
                .send()
                .await;
            let r = match sent {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!("connection error when accessing {url}: {e}");
                    last = Some(InspectionError::Connection {
                        url: url.clone(),
                        cause: e.to_string(),
                    });
                    continue;
                }
            };
            let status = r.status().as_u16();
            let text = r.text().await.unwrap_or_default();
            if status >= 400 {
                return Err(InspectionError::Status { status, body: text });
            }
            let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            let uuid = v
                .get("uuid")
                .or_else(|| v.pointer("/node/uuid"))
                .and_then(Value::as_str)
                .map(str::to_string);
            return Ok(uuid);
        }
        Err(last.unwrap_or(InspectionError::Connection {
            url: String::new(),
            cause: "no callback URL".into(),
        }))
    }
}

/// Where inspection data goes, when inspection is on: `inspection_callback_url`, else (only
/// when `inspection_collectors` is given) `<api_url>/v1/continue_inspection`, as IPA's
/// `is_enabled`/`_get_urls`.
pub fn callback_urls(s: &Settings) -> Option<Vec<String>> {
    if !s.inspection_callback_url.0.is_empty() {
        return Some(s.inspection_callback_url.0.clone());
    }
    (s.inspection_collectors.is_some() && !s.api_url.0.is_empty()).then(|| {
        s.api_url
            .0
            .iter()
            .map(|u| format!("{}/v1/continue_inspection", u.trim_end_matches('/')))
            .collect()
    })
}

/// The agent's inspection step, before lookup: collects, POSTs, and hands the node uuid to
/// lookup (the `node_uuid` setting). A failure is logged and lookup goes on, as in IPA.
pub async fn run_before_lookup(agent: &Arc<Agent>) -> Option<String> {
    let s = agent.settings();
    let Some(urls) = callback_urls(&s) else {
        tracing::info!("inspection is disabled, skipping");
        return None;
    };
    let collectors = s
        .inspection_collectors
        .as_ref()
        .map(|c| c.0.clone())
        .unwrap_or_else(|| DEFAULT_COLLECTORS.to_vec());
    let names: Vec<&str> = collectors.iter().map(|c| c.name()).collect();
    tracing::info!("inspection is enabled with collectors {names:?}");
    let cb = match Callback::new(urls, &s, Retry::IPA) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("failed to perform inspection: {e}; proceeding with lookup");
            return None;
        }
    };
    let opts = Options::from_settings(&s);
    let logs = Arc::clone(&agent.logs);
    let data = match tokio::task::spawn_blocking(move || {
        collect(&Machine::live(), &collectors, &opts, Some(&logs))
    })
    .await
    {
        Ok(d) => d,
        Err(e) => {
            tracing::error!("inspection collectors failed: {e}");
            return None;
        }
    };
    if let Some(err) = &data.error {
        tracing::error!("{err}");
    }
    match cb.post(&data).await {
        Ok(uuid) => {
            tracing::info!(node = ?uuid, "inspection finished successfully");
            if let Some(u) = &uuid {
                agent.update_settings(|s| s.node_uuid = Some(u.clone()));
            }
            uuid
        }
        Err(e) => {
            tracing::error!("failed to perform inspection: {e}; proceeding with lookup");
            None
        }
    }
}

/// Files IPA's log archive has beyond rivet's base set: the journal (its last `journal_lines`
/// lines, or all), rivet's inventory (where IPA puts `lshw -json`), and udev's properties of
/// each block device (`udev/<kname>`, as JSON).
pub fn log_files(journal_lines: Option<u32>) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut args = vec!["--full".to_string(), "--no-pager".into(), "-b".into()];
    if let Some(n) = journal_lines {
        args.extend(["-n".into(), n.to_string()]);
    }
    match crate::external::run("journalctl", &args) {
        Ok(text) => out.push(("journal".into(), text.into_bytes())),
        Err(e) => tracing::debug!("no journal: {e}"),
    }
    let m = Machine::live();
    let inv = super::inventory(&m, &Options::quick(), None, &mut vec![]).0;
    if let Ok(json) = serde_json::to_vec_pretty(&inv) {
        out.push(("inventory".into(), json));
    }
    for kname in m.list("/sys/class/block") {
        let sys = format!("/sys/class/block/{kname}");
        let mut props: std::collections::BTreeMap<String, String> =
            super::disks::udev_properties(&m, &sys)
                .into_iter()
                .collect();
        for line in m.read(&format!("{sys}/uevent")).unwrap_or_default().lines() {
            if let Some((k, v)) = line.split_once('=') {
                props.entry(k.to_string()).or_insert_with(|| v.to_string());
            }
        }
        if let Ok(json) = serde_json::to_vec(&props) {
            out.push((format!("udev/{kname}"), json));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipa_waits() {
        let w: Vec<f64> = (1..=4).map(|n| Retry::IPA.wait(n).as_secs_f64()).collect();
        assert_eq!(w, vec![5.0, 5.0, 6.0, 12.0]);
        assert_eq!(Retry::IPA.wait(10), Duration::from_secs(30));
    }

    #[test]
    fn the_kernel_command_line_turns_inspection_on() {
        let dir = tempfile::tempdir().unwrap();
        let cmdline = dir.path().join("cmdline");
        std::fs::write(
            &cmdline,
            "BOOTIF=01-52-54-00-12-34-56 ipa-api-url=http://10.0.0.1:6385 \
             ipa-inspection-callback-url=http://10.0.0.1:6385/v1/continue_inspection \
             ipa-inspection-collectors=default,pci-devices ipa-collect-lldp=1\n",
        )
        .unwrap();
        let mut flags = std::collections::BTreeMap::new();
        flags.insert("cmdline".to_string(), cmdline.display().to_string());
        flags.insert("config".to_string(), "/dev/null".to_string());
        let s = Settings::load(&flags, &Default::default()).unwrap();
        assert_eq!(
            callback_urls(&s),
            Some(vec![
                "http://10.0.0.1:6385/v1/continue_inspection".to_string()
            ])
        );
        let names: Vec<&str> = s
            .inspection_collectors
            .as_ref()
            .unwrap()
            .0
            .iter()
            .map(|c| c.name())
            .collect();
        assert_eq!(names, ["default", "pci-devices"]);
        assert!(s.collect_lldp);
    }

    #[test]
    fn urls_follow_ipa() {
        let mut s = Settings::defaults().unwrap();
        assert_eq!(callback_urls(&s), None);
        s.set("api_url", "http://ironic:6385/", "t").unwrap();
        assert_eq!(
            callback_urls(&s),
            None,
            "api_url alone does not turn inspection on"
        );
        s.set("inspection_collectors", "default", "t").unwrap();
        assert_eq!(
            callback_urls(&s),
            Some(vec!["http://ironic:6385/v1/continue_inspection".to_string()])
        );
        s.set("inspection_callback_url", "http://x/cb", "t")
            .unwrap();
        assert_eq!(callback_urls(&s), Some(vec!["http://x/cb".to_string()]));
    }
}
