//! rivet's settings, typed and parsed once at start-up.
//!
//! Every option has one name (IPA's oslo.config name where IPA has one), one type, one default
//! and one help text, all in the table below; the same table makes `rivet serve --help` and the
//! flags. Values come from four sources, later winning (see [`sources`]):
//!
//! 1. the kernel command line (`/proc/cmdline`): `ipa-<name-with-dashes>=value`;
//! 2. the config file (`/etc/rivet/rivet.toml`): `name = value`;
//! 3. the environment: `RIVET_<NAME>`;
//! 4. command-line flags: `--<name-with-dashes> value`.
//!
//! A bad value, or an unknown key in the file, is an error naming the key and the source.
//! Unknown `ipa-*` words on the kernel command line are ignored (IPA has options rivet does
//! not). Ironic's lookup answer can override a few settings; those are typed here too
//! ([`Settings::apply_lookup_config`]). See `docs/config.md`.

mod sources;
mod value;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

pub use sources::{env_name, parse_cmdline};
pub use value::{
    parse_bool, AuthStrategy, Curve, List, Mib, PowerBackendKind, Scheme, Secs, SettingValue,
    Threads, TlsVersion,
};

use crate::image::fetch::FetchConfig;
use crate::inspect::{CallbackUrls, Collectors};

/// One option as the flag table and `--help` see it.
pub struct OptionSpec {
    /// Name, with underscores.
    pub name: &'static str,
    /// Default value as text (`None`: unset).
    pub default: Option<&'static str>,
    /// What it does.
    pub help: &'static str,
    /// A switch: `--name` alone means true.
    pub switch: bool,
}

/// A setting that could not be understood.
#[derive(Debug, thiserror::Error)]
#[error("invalid setting {name}={value:?} (from {source_name}): {why}")]
pub struct SettingError {
    /// The option (or `config` for the file itself).
    pub name: String,
    /// The text given.
    pub value: String,
    /// Where it came from: `kernel command line`, the file's path, `RIVET_X`, `--flag`, ...
    pub source_name: String,
    /// What was wrong.
    pub why: String,
}

macro_rules! settings {
    ($( $(#[doc = $doc:literal])+ $name:ident : $ty:ty = $default:expr; )*) => {
        /// Every setting of rivet, typed. Built by [`Settings::load`] (or
        /// [`Settings::defaults`]); read directly by field.
        #[derive(Debug, Clone)]
        pub struct Settings {
            $( $(#[doc = $doc])+ pub $name: $ty, )*
        }

        /// The table of options: names, defaults, help, in the order `--help` shows them.
        pub const OPTIONS: &[OptionSpec] = &[
            $( OptionSpec {
                name: stringify!($name),
                default: $default,
                help: concat!($($doc),+),
                switch: <$ty as SettingValue>::SWITCH,
            }, )*
        ];

        impl Settings {
            /// Every option at its default.
            pub fn defaults() -> Result<Settings, SettingError> {
                let src = "the built-in defaults";
                Ok(Settings {
                    $( $name: parse_one::<$ty>(stringify!($name), $default.unwrap_or(""), src)?, )*
                })
            }

            /// Sets one option from text. `Ok(false)`: no such option.
            pub fn set(&mut self, name: &str, text: &str, src: &str) -> Result<bool, SettingError> {
                match name {
                    $( stringify!($name) => self.$name = parse_one::<$ty>(name, text, src)?, )*
                    _ => return Ok(false),
                }
                Ok(true)
            }
        }
    };
}

fn parse_one<T: SettingValue>(name: &str, text: &str, src: &str) -> Result<T, SettingError> {
    let text = text.trim();
    T::parse(text).map_err(|why| SettingError {
        name: name.into(),
        value: text.into(),
        source_name: src.into(),
        why: why.into(),
    })
}

settings! {
    /// Address to listen on, HOST:PORT (overrides listen_host/listen_port)
    listen: Option<SocketAddr> = None;
    /// Host to listen on
    listen_host: IpAddr = Some("::");
    /// Port to listen on
    listen_port: u16 = Some("9999");
    /// Seconds a client may take for a TLS handshake, a request head, or a body after its head
    api_request_timeout: Secs = Some("15");
    /// API connections open at once (at the limit the oldest idle one is closed for a new one)
    api_max_connections: u32 = Some("64");
    /// Ironic API URL(s), comma-separated; none = standalone (API only)
    api_url: List = None;
    /// Host to advertise in heartbeats (default: the address used to reach Ironic)
    advertise_host: Option<String> = None;
    /// Port to advertise in heartbeats (IPA's default, whatever port is listened on)
    advertise_port: u16 = Some("9999");
    /// Protocol to advertise (http or https; https is implied by TLS)
    advertise_protocol: Scheme = Some("http");
    /// Agent token (otherwise handed out by Ironic at lookup)
    agent_token: Option<String> = None;
    /// MAC addresses for lookup, comma-separated (default: all NICs from sysfs)
    lookup_addresses: List = None;
    /// Seconds to keep trying lookup before giving up
    lookup_timeout: Secs = Some("600");
    /// Initial seconds between lookup attempts (backs off to 60)
    lookup_interval: Secs = Some("1");
    /// Node UUID to send with lookup
    node_uuid: Option<String> = None;
    /// X-OpenStack-Request-ID sent to Ironic
    global_request_id: Option<String> = None;
    /// Timeout of Ironic API calls, seconds
    http_request_timeout: Secs = Some("30");
    /// Seconds between heartbeats is 0.3-0.6 of this (Ironic can override)
    heartbeat_timeout: Secs = Some("300");
    /// Install device to use, bypassing root device selection
    root_device: Option<PathBuf> = None;
    /// Block devices the agent may list, erase and deploy to, comma-separated (default: every disk)
    block_devices: List = None;
    /// How to reboot/power off: 'log' (only records; safe) or 'system'
    power_backend: PowerBackendKind = Some("log");
    /// File the 'log' power backend appends its actions to
    power_log: Option<PathBuf> = None;
    /// Do not verify TLS certificates (image server, Ironic, config drive)
    insecure: bool = Some("false");
    /// CA bundle (PEM) for outbound TLS
    cafile: Option<PathBuf> = None;
    /// Client certificate (PEM) for outbound TLS
    certfile: Option<PathBuf> = None;
    /// Client key (PEM) for outbound TLS
    keyfile: Option<PathBuf> = None;
    /// Minimum TLS version (1.2 or 1.3; Ironic can override)
    tls_min_version: TlsVersion = Some("1.2");
    /// TLS cipher suites Ironic asks for (recorded; rustls' defaults are used)
    tls_cipher_suites: Option<String> = None;
    /// Connect timeout and longest stall, seconds
    image_download_connection_timeout: Secs = Some("60");
    /// Extra attempts per image URL
    image_download_connection_retries: u32 = Some("9");
    /// Seconds between attempts
    image_download_connection_retry_interval: Secs = Some("10");
    /// Give up downloading after this many seconds (0: never)
    image_download_max_duration: Secs = Some("0");
    /// noauth or http_basic
    image_server_auth_strategy: AuthStrategy = Some("noauth");
    /// User for http_basic
    image_server_user: Option<String> = None;
    /// Password for http_basic
    image_server_password: Option<String> = None;
    /// Allow 32-character checksums to mean md5 (Ironic can override)
    md5_enabled: bool = Some("false");
    /// Image formats allowed (Ironic can override)
    permitted_image_formats: List = Some("raw,gpt,qcow2");
    /// Trust qemu-img instead of inspecting images (Ironic can override)
    disable_deep_image_inspection: bool = Some("false");
    /// Directory for temporary copies of images that cannot stream (default: the system temp dir)
    image_tmp_dir: Option<PathBuf> = None;
    /// Threads decompressing a compressed image (xz blocks, zstd frames); auto: one fewer than the CPUs, as the download, hash and write need one
    decompress_threads: Threads = Some("auto");
    /// MiB the decompressor may hold to decode on several threads (xz blocks, zstd frames in flight)
    decompress_memory_mib: Mib = Some("32");
    /// Serve the API over TLS with tls_cert_file/tls_key_file
    listen_tls: bool = Some("false");
    /// Server certificate (PEM) for listen_tls
    tls_cert_file: Option<PathBuf> = None;
    /// Server key (PEM) for listen_tls
    tls_key_file: Option<PathBuf> = None;
    /// Serve the API over TLS with a self-signed certificate when Ironic supports it (API 1.68)
    enable_auto_tls: bool = Some("true");
    /// Curve of the auto-TLS key (p256 or p384)
    tls_certificate_curve: Curve = Some("p384");
    /// Where the auto-TLS certificate and key are kept
    tls_state_dir: PathBuf = Some("/run/rivet");
    /// NTP server to sync the clock with before reboot/power off
    ntp_server: Option<String> = None;
    /// Fail reboot/power off when the clock sync fails
    fail_if_clock_not_set: bool = Some("false");
    /// Refuse execute_bootc_install
    disable_bootc_deploy: bool = Some("false");
    /// Always rebuild config drives as vfat
    config_drive_rebuild: bool = Some("false");
    /// Where execute_bootc_install writes podman's 01-ipa.conf
    containers_conf_dir: PathBuf = Some("/etc/containers/containers.conf.d");
    /// Install BIOS bootloaders (Ironic's lookup config can enable it)
    enable_bios_bootloader_install: bool = Some("false");
    /// Skip looking for a BMC (Ironic's lookup config can set it)
    agent_skip_bmc_detect: bool = Some("false");
    /// Where to POST the inspection inventory before lookup (comma-separated URLs; IPA's ipa-inspection-callback-url)
    inspection_callback_url: CallbackUrls = None;
    /// Inspection collectors, comma-separated: default, logs, pci-devices, lldp (unset: default,logs; set with api_url: inspect at <api_url>/v1/continue_inspection)
    inspection_collectors: Option<Collectors> = None;
    /// Seconds to wait for the PXE interface's DHCP address before inspecting (0: do not wait)
    inspection_dhcp_wait_timeout: Secs = Some("60");
    /// Wait for every interface's DHCP address before inspecting, not only the PXE one
    inspection_dhcp_all_interfaces: bool = Some("false");
    /// Listen for LLDP on every interface and report it in the inventory
    collect_lldp: bool = Some("false");
    /// Seconds to wait for LLDP frames
    lldp_timeout: Secs = Some("30");
    /// Where UEFI variables are (efivarfs); the machine counts as booted in UEFI mode when
    /// this directory exists (tests point it at a directory standing in for efivarfs)
    efivars_dir: PathBuf = Some("/sys/firmware/efi/efivars");
    /// Let install_bootloader succeed when setting up boot fails (IPA's option)
    ignore_bootloader_failure: bool = Some("false");
    /// Where rescue.finalize_rescue writes the rescue password (hashed)
    rescue_password_file: PathBuf = Some("/etc/ipa-rescue-config/ipa-rescue-password");
    /// The marker file of a rescued machine (the agent then stays quiet at start-up)
    rescue_marker: PathBuf = Some("/etc/.rescued");
    /// Config file (TOML, option = value)
    config: PathBuf = Some("/etc/rivet/rivet.toml");
    /// Kernel command line to read ipa-* options from
    cmdline: PathBuf = Some("/proc/cmdline");
}

impl Settings {
    /// The address to listen on.
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
            .unwrap_or_else(|| SocketAddr::new(self.listen_host, self.listen_port))
    }

    /// The download settings.
    pub fn fetch_config(&self) -> FetchConfig {
        let max = self.image_download_max_duration.0;
        FetchConfig {
            retries: self.image_download_connection_retries,
            retry_interval: self.image_download_connection_retry_interval.0,
            connection_timeout: self.image_download_connection_timeout.0,
            max_duration: (!max.is_zero()).then_some(max),
            insecure: self.insecure,
            cafile: self.cafile.clone(),
            certfile: self.certfile.clone(),
            keyfile: self.keyfile.clone(),
            tls_min_version: self.tls_min_version,
            auth_strategy: self.image_server_auth_strategy,
            auth_user: self.image_server_user.clone(),
            auth_password: self.image_server_password.clone(),
            md5_enabled: self.md5_enabled,
            deadline: None,
        }
    }

    /// Applies the `config` dict of Ironic's lookup answer: the keys rivet honours, typed as
    /// any other source. Keys rivet does not use are ignored, as IPA ignores them.
    pub fn apply_lookup_config(
        &mut self,
        cfg: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), SettingError> {
        const SRC: &str = "Ironic's lookup answer";
        for (from, to) in [
            ("agent_md5_checksum_enable", "md5_enabled"),
            ("permitted_image_formats", "permitted_image_formats"),
            (
                "disable_deep_image_inspection",
                "disable_deep_image_inspection",
            ),
            ("heartbeat_timeout", "heartbeat_timeout"),
            ("tls_min_version", "tls_min_version"),
            ("tls_cipher_suites", "tls_cipher_suites"),
            (
                "enable_bios_bootloader_install",
                "enable_bios_bootloader_install",
            ),
            ("agent_skip_bmc_detect", "agent_skip_bmc_detect"),
        ] {
            if let Some(v) = cfg.get(from).filter(|v| !v.is_null()) {
                self.set(to, &sources::json_text(v), SRC)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
