//! Agent settings, the IPA way: every option has one name (`image_download_connection_timeout`)
//! and can come from four places, later winning:
//!
//! 1. the kernel command line (`/proc/cmdline`): `ipa-<name-with-dashes>=value`;
//! 2. the config file (`/etc/rivet/rivet.toml`): `name = value`;
//! 3. the environment: `RIVET_<NAME>`;
//! 4. command-line flags of `rivet serve`: `--<name-with-dashes> value`.
//!
//! The table [`OPTIONS`] is the single list: it makes the flags, their `--help` and defaults.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::image::fetch::FetchConfig;

/// One option: name, default (`None`: unset), help text.
pub struct OptionSpec {
    /// Name, with underscores (IPA's oslo.config name where IPA has one).
    pub name: &'static str,
    /// Default value as text, if any.
    pub default: Option<&'static str>,
    /// What it does.
    pub help: &'static str,
    /// A switch: `--name` alone means true.
    pub switch: bool,
}

const fn opt(name: &'static str, default: Option<&'static str>, help: &'static str) -> OptionSpec {
    OptionSpec {
        name,
        default,
        help,
        switch: false,
    }
}

const fn switch(name: &'static str, default: &'static str, help: &'static str) -> OptionSpec {
    OptionSpec {
        name,
        default: Some(default),
        help,
        switch: true,
    }
}

/// Every setting of `rivet serve`.
pub const OPTIONS: &[OptionSpec] = &[
    opt(
        "listen",
        None,
        "Address to listen on, HOST:PORT (overrides listen_host/listen_port)",
    ),
    opt("listen_host", Some("::"), "Host to listen on"),
    opt("listen_port", Some("9999"), "Port to listen on"),
    opt(
        "api_url",
        None,
        "Ironic API URL(s), comma-separated; none = standalone (API only)",
    ),
    opt(
        "advertise_host",
        None,
        "Host to advertise in heartbeats (default: the address used to reach Ironic)",
    ),
    opt(
        "advertise_port",
        Some("9999"),
        "Port to advertise in heartbeats",
    ),
    opt(
        "advertise_protocol",
        Some("http"),
        "Protocol to advertise (http or https)",
    ),
    opt(
        "agent_token",
        None,
        "Agent token (otherwise handed out by Ironic at lookup)",
    ),
    opt(
        "lookup_addresses",
        None,
        "MAC addresses for lookup, comma-separated (default: all NICs from sysfs)",
    ),
    opt(
        "lookup_timeout",
        Some("600"),
        "Seconds to keep trying lookup before giving up",
    ),
    opt(
        "lookup_interval",
        Some("1"),
        "Initial seconds between lookup attempts (backs off to 60)",
    ),
    opt("node_uuid", None, "Node UUID to send with lookup"),
    opt(
        "global_request_id",
        None,
        "X-OpenStack-Request-ID sent to Ironic",
    ),
    opt(
        "http_request_timeout",
        Some("30"),
        "Timeout of Ironic API calls, seconds",
    ),
    opt(
        "root_device",
        None,
        "Install device to use, bypassing root device selection",
    ),
    opt(
        "power_backend",
        Some("log"),
        "How to reboot/power off: 'log' (only records; safe) or 'system'",
    ),
    opt(
        "power_log",
        None,
        "File the 'log' power backend appends its actions to",
    ),
    switch(
        "insecure",
        "false",
        "Do not verify TLS certificates (image server, Ironic, config drive)",
    ),
    opt("cafile", None, "CA bundle (PEM) for outbound TLS"),
    opt(
        "certfile",
        None,
        "Client certificate (PEM) for outbound TLS",
    ),
    opt("keyfile", None, "Client key (PEM) for outbound TLS"),
    opt(
        "tls_min_version",
        Some("1.2"),
        "Minimum TLS version (1.2 or 1.3)",
    ),
    opt(
        "image_download_connection_timeout",
        Some("60"),
        "Connect timeout and longest stall, seconds",
    ),
    opt(
        "image_download_connection_retries",
        Some("9"),
        "Extra attempts per image URL",
    ),
    opt(
        "image_download_connection_retry_interval",
        Some("10"),
        "Seconds between attempts",
    ),
    opt(
        "image_download_max_duration",
        Some("0"),
        "Give up downloading after this many seconds (0: never)",
    ),
    opt(
        "image_server_auth_strategy",
        Some("noauth"),
        "noauth or http_basic",
    ),
    opt("image_server_user", None, "User for http_basic"),
    opt("image_server_password", None, "Password for http_basic"),
    switch(
        "md5_enabled",
        "false",
        "Allow 32-character checksums to mean md5 (Ironic can override)",
    ),
    opt(
        "permitted_image_formats",
        Some("raw,gpt,qcow2"),
        "Image formats allowed (Ironic can override)",
    ),
    switch(
        "disable_deep_image_inspection",
        "false",
        "Trust qemu-img instead of inspecting images",
    ),
    opt(
        "image_tmp_dir",
        None,
        "Directory for temporary copies of images that cannot stream (default: the system temp dir)",
    ),
    switch(
        "listen_tls",
        "false",
        "Serve the API over TLS with tls_cert_file/tls_key_file",
    ),
    opt(
        "tls_cert_file",
        None,
        "Server certificate (PEM) for listen_tls",
    ),
    opt("tls_key_file", None, "Server key (PEM) for listen_tls"),
    switch(
        "enable_auto_tls",
        "true",
        "Serve the API over TLS with a self-signed certificate when Ironic supports it (API 1.68)",
    ),
    opt(
        "tls_certificate_curve",
        Some("p384"),
        "Curve of the auto-TLS key (p256 or p384)",
    ),
    opt(
        "tls_state_dir",
        Some("/run/rivet"),
        "Where the auto-TLS certificate and key are kept",
    ),
    opt(
        "ntp_server",
        None,
        "NTP server to sync the clock with before reboot/power off",
    ),
    switch(
        "fail_if_clock_not_set",
        "false",
        "Fail reboot/power off when the clock sync fails",
    ),
    switch(
        "disable_bootc_deploy",
        "false",
        "Refuse execute_bootc_install",
    ),
    switch(
        "config_drive_rebuild",
        "false",
        "Always rebuild config drives as vfat",
    ),
    opt(
        "containers_conf_dir",
        Some("/etc/containers/containers.conf.d"),
        "Where execute_bootc_install writes podman's 01-ipa.conf",
    ),
    opt(
        "config",
        Some("/etc/rivet/rivet.toml"),
        "Config file (TOML, option = value)",
    ),
    opt(
        "cmdline",
        Some("/proc/cmdline"),
        "Kernel command line to read ipa-* options from",
    ),
];

/// Options as text, merged from all sources.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    values: BTreeMap<String, String>,
}

/// A setting that could not be understood.
#[derive(Debug, thiserror::Error)]
#[error("invalid setting {name}={value:?}: {why}")]
pub struct SettingError {
    name: String,
    value: String,
    why: String,
}

impl Settings {
    /// Merges the four sources. `flags` are the options given on the command line.
    pub fn load(
        flags: &BTreeMap<String, String>,
        env: &BTreeMap<String, String>,
    ) -> Result<Settings, SettingError> {
        let mut s = Settings::default();
        for o in OPTIONS {
            if let Some(d) = o.default {
                s.values.insert(o.name.into(), d.into());
            }
        }
        // Where to read the lower layers from may itself come from the upper ones.
        let pick = |name: &str, s: &Settings| -> Option<String> {
            flags
                .get(name)
                .or_else(|| env.get(&env_name(name)))
                .cloned()
                .or_else(|| s.get(name).map(str::to_owned))
        };
        if let Some(path) = pick("cmdline", &s) {
            if let Ok(text) = std::fs::read_to_string(&path) {
                s.values.extend(parse_cmdline(&text));
            }
        }
        if let Some(path) = pick("config", &s) {
            match std::fs::read_to_string(&path) {
                Ok(text) => s.values.extend(parse_toml(&path, &text)?),
                Err(e) if flags.contains_key("config") || env.contains_key(&env_name("config")) => {
                    return Err(SettingError {
                        name: "config".into(),
                        value: path,
                        why: e.to_string(),
                    })
                }
                Err(_) => {}
            }
        }
        for o in OPTIONS {
            if let Some(v) = env.get(&env_name(o.name)) {
                s.values.insert(o.name.into(), v.clone());
            }
        }
        s.values
            .extend(flags.iter().map(|(k, v)| (k.clone(), v.clone())));
        Ok(s)
    }

    /// A setting as text, when set.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// Sets a value (for tests and for settings Ironic sends at lookup).
    pub fn set(&mut self, name: &str, value: &str) {
        self.values.insert(name.into(), value.into());
    }

    /// A boolean setting (Python's `bool_from_string`).
    pub fn bool(&self, name: &str) -> Result<bool, SettingError> {
        match self.get(name) {
            None => Ok(false),
            Some(v) => parse_bool(v).ok_or_else(|| self.bad(name, "not a boolean")),
        }
    }

    /// A number setting.
    pub fn num<T: std::str::FromStr>(&self, name: &str) -> Result<Option<T>, SettingError> {
        self.get(name)
            .map(|v| v.trim().parse().map_err(|_| self.bad(name, "not a number")))
            .transpose()
    }

    /// Seconds, as a duration.
    pub fn secs(&self, name: &str) -> Result<Duration, SettingError> {
        let v: f64 = self.num(name)?.unwrap_or(0.0);
        if !(0.0..1e9).contains(&v) {
            return Err(self.bad(name, "out of range"));
        }
        Ok(Duration::from_secs_f64(v))
    }

    /// A comma-separated list.
    pub fn list(&self, name: &str) -> Vec<String> {
        self.get(name)
            .map(|v| {
                v.split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn bad(&self, name: &str, why: &str) -> SettingError {
        SettingError {
            name: name.into(),
            value: self.get(name).unwrap_or("").into(),
            why: why.into(),
        }
    }

    /// The address to listen on.
    pub fn listen_addr(&self) -> Result<SocketAddr, SettingError> {
        if let Some(l) = self.get("listen") {
            return l.parse().map_err(|_| self.bad("listen", "not HOST:PORT"));
        }
        let host = self.get("listen_host").unwrap_or("::");
        let port: u16 = self.num("listen_port")?.unwrap_or(9999);
        let ip: std::net::IpAddr = host
            .trim_matches(['[', ']'])
            .parse()
            .map_err(|_| self.bad("listen_host", "not an IP address"))?;
        Ok(SocketAddr::new(ip, port))
    }

    /// The download settings.
    pub fn fetch_config(&self) -> Result<FetchConfig, SettingError> {
        let max = self.secs("image_download_max_duration")?;
        Ok(FetchConfig {
            retries: self.num("image_download_connection_retries")?.unwrap_or(9),
            retry_interval: self.secs("image_download_connection_retry_interval")?,
            connection_timeout: self.secs("image_download_connection_timeout")?,
            max_duration: (!max.is_zero()).then_some(max),
            insecure: self.bool("insecure")?,
            cafile: self.get("cafile").map(PathBuf::from),
            certfile: self.get("certfile").map(PathBuf::from),
            keyfile: self.get("keyfile").map(PathBuf::from),
            tls_min_version: self.get("tls_min_version").unwrap_or("1.2").into(),
            auth_strategy: self
                .get("image_server_auth_strategy")
                .unwrap_or("noauth")
                .into(),
            auth_user: self.get("image_server_user").map(Into::into),
            auth_password: self.get("image_server_password").map(Into::into),
            md5_enabled: self.bool("md5_enabled")?,
        })
    }
}

/// `RIVET_<NAME>`.
pub fn env_name(name: &str) -> String {
    format!("RIVET_{}", name.to_ascii_uppercase())
}

/// Python's `strutils.bool_from_string` (strict).
pub fn parse_bool(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "t" | "true" | "on" | "y" | "yes" => Some(true),
        "0" | "f" | "false" | "off" | "n" | "no" => Some(false),
        _ => None,
    }
}

/// `ipa-foo-bar=baz` words of a kernel command line, as `foo_bar = baz`. A bare `ipa-foo`
/// means true.
pub fn parse_cmdline(text: &str) -> BTreeMap<String, String> {
    text.split_whitespace()
        .filter_map(|w| w.strip_prefix("ipa-"))
        .map(|w| match w.split_once('=') {
            Some((k, v)) => (k.replace('-', "_"), v.trim_matches('"').to_string()),
            None => (w.replace('-', "_"), "true".to_string()),
        })
        .collect()
}

fn parse_toml(path: &str, text: &str) -> Result<BTreeMap<String, String>, SettingError> {
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| SettingError {
        name: "config".into(),
        value: path.into(),
        why: e.to_string(),
    })?;
    let mut out = BTreeMap::new();
    for (k, v) in table {
        let s = match v {
            toml::Value::String(s) => s,
            toml::Value::Array(a) => a
                .iter()
                .map(|x| {
                    x.as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| x.to_string())
                })
                .collect::<Vec<_>>()
                .join(","),
            other => other.to_string(),
        };
        out.insert(k.replace('-', "_"), s);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_sources_win() {
        let dir = tempfile::tempdir().unwrap();
        let cmdline = dir.path().join("cmdline");
        std::fs::write(
            &cmdline,
            "BOOT_IMAGE=x ipa-api-url=http://ironic:6385 ipa-insecure=1 \
             ipa-image-download-connection-retries=3 ipa-listen-port=9000 ipa-agent-token=abc",
        )
        .unwrap();
        let conf = dir.path().join("rivet.toml");
        std::fs::write(
            &conf,
            "listen_port = 9100\nlookup_addresses = [\"aa\", \"bb\"]\n",
        )
        .unwrap();
        let mut flags = BTreeMap::new();
        flags.insert("cmdline".to_string(), cmdline.display().to_string());
        flags.insert("config".to_string(), conf.display().to_string());
        flags.insert("agent_token".to_string(), "from-flag".to_string());
        let mut env = BTreeMap::new();
        env.insert("RIVET_LISTEN_PORT".to_string(), "9200".to_string());
        let s = Settings::load(&flags, &env).unwrap();
        assert_eq!(s.get("api_url"), Some("http://ironic:6385"));
        assert!(s.bool("insecure").unwrap());
        assert_eq!(
            s.num::<u32>("image_download_connection_retries").unwrap(),
            Some(3)
        );
        assert_eq!(s.get("listen_port"), Some("9200"));
        assert_eq!(s.get("agent_token"), Some("from-flag"));
        assert_eq!(s.list("lookup_addresses"), vec!["aa", "bb"]);
        assert_eq!(s.listen_addr().unwrap().port(), 9200);
        let f = s.fetch_config().unwrap();
        assert_eq!(f.retries, 3);
        assert!(f.insecure);
        assert_eq!(f.connection_timeout, Duration::from_secs(60));
    }

    #[test]
    fn bad_values_are_named() {
        let mut s = Settings::default();
        s.set("listen_port", "ninety");
        assert_eq!(
            s.listen_addr().unwrap_err().to_string(),
            "invalid setting listen_port=\"ninety\": not a number"
        );
        s.set("insecure", "maybe");
        assert!(s.bool("insecure").is_err());
    }

    #[test]
    fn an_explicit_missing_config_file_is_an_error() {
        let mut flags = BTreeMap::new();
        flags.insert("config".to_string(), "/nonexistent/rivet.toml".to_string());
        flags.insert("cmdline".to_string(), "/nonexistent".to_string());
        assert!(Settings::load(&flags, &BTreeMap::new()).is_err());
    }
}
