//! `rivet deploy`: its flags, mapped onto the same typed settings the agent uses, then the one
//! deploy orchestrator ([`crate::deploy::run`]).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use crate::config::Settings;
use crate::deploy::{self, DeployRequest, Deployed};
use crate::image::checksum::url_basename;
use crate::image::info::ImageInfo;

/// Flags of `rivet deploy`. Options that are also agent settings default to the settings
/// (kernel command line, `rivet.toml`, `RIVET_*`), so both front-ends share one set of defaults.
#[derive(Args)]
pub(super) struct DeployArgs {
    /// Image URL (http, https or file); repeat to give mirrors, tried in order.
    #[arg(
        long = "url",
        value_name = "URL",
        required_unless_present = "image_info"
    )]
    urls: Vec<String>,
    /// IPA's `image_info` dict as JSON, exactly as Ironic sends it (replaces the image flags).
    #[arg(long, value_name = "FILE.json", conflicts_with_all = ["urls", "checksum", "os_hash_algo", "os_hash_value", "image_id"])]
    image_info: Option<PathBuf>,
    /// Target: a block device, or a regular file (created if missing).
    #[arg(long, value_name = "PATH")]
    device: PathBuf,
    /// Hash algorithm of `--os-hash-value` (md5, sha1, sha224, sha256, sha384, sha512, sha3_*,
    /// blake2b, blake2s).
    #[arg(long, value_name = "ALGO", requires = "os_hash_value")]
    os_hash_algo: Option<String>,
    /// Expected digest in hex, or the URL of a checksum file.
    #[arg(long, value_name = "HEX|URL", requires = "os_hash_algo")]
    os_hash_value: Option<String>,
    /// Legacy checksum: hex typed by its length (128 sha512, 64 sha256, 32 md5 with --md5),
    /// or the URL of a checksum file.
    #[arg(long, value_name = "HEX|URL")]
    checksum: Option<String>,
    /// Disk format Ironic would declare (raw, qcow2, ...); detected from the bytes when absent,
    /// and a mismatch with the bytes is refused.
    #[arg(long, value_name = "FORMAT")]
    disk_format: Option<String>,
    /// Formats allowed (setting permitted_image_formats; default raw,gpt,qcow2).
    #[arg(long, value_name = "LIST")]
    permitted_image_formats: Option<String>,
    /// Threads decompressing a compressed image: auto (one fewer than the CPUs) or 1-64
    /// (setting decompress_threads).
    #[arg(long, value_name = "auto|N")]
    decompress_threads: Option<String>,
    /// MiB the decompressor may hold to decode on several threads (setting
    /// decompress_memory_mib; default 32).
    #[arg(long, value_name = "MIB")]
    decompress_memory_mib: Option<String>,
    /// Directory for the temporary copy of images that cannot stream (setting image_tmp_dir).
    #[arg(long, value_name = "DIR")]
    tmp_dir: Option<PathBuf>,
    /// Convert qcow2 through a temporary file and qemu-img, as IPA does, instead of while it
    /// streams (for comparison).
    #[arg(long)]
    temp_file: bool,
    /// Image id used in messages (default: the file name of the first URL).
    #[arg(long, value_name = "ID")]
    image_id: Option<String>,
    /// Allow a 32-character checksum to mean md5 (setting md5_enabled).
    #[arg(long)]
    md5: bool,
    /// Do not verify the server's TLS certificate (setting insecure).
    #[arg(long)]
    insecure: bool,
    /// PEM file of CAs to trust (in addition to the system's).
    #[arg(long, value_name = "FILE")]
    cafile: Option<PathBuf>,
    /// Client certificate (PEM), with --keyfile.
    #[arg(long, value_name = "FILE", requires = "keyfile")]
    certfile: Option<PathBuf>,
    /// Client key (PEM), with --certfile.
    #[arg(long, value_name = "FILE", requires = "certfile")]
    keyfile: Option<PathBuf>,
    /// Proxy for http and https image URLs.
    #[arg(long, value_name = "URL")]
    proxy: Option<String>,
    /// Hosts that bypass --proxy (comma-separated).
    #[arg(long, value_name = "HOSTS")]
    no_proxy: Option<String>,
    /// Extra attempts per URL after a failed one (setting image_download_connection_retries;
    /// default 9).
    #[arg(long, value_name = "N")]
    retries: Option<u32>,
    /// Seconds between attempts (setting image_download_connection_retry_interval; default 10).
    #[arg(long, value_name = "SECS")]
    retry_interval: Option<f64>,
    /// Connect timeout, and the longest wait for the next chunk, in seconds (setting
    /// image_download_connection_timeout; default 60).
    #[arg(long, value_name = "SECS")]
    connection_timeout: Option<f64>,
    /// Give up after this many seconds in all; 0: never (setting image_download_max_duration).
    #[arg(long, value_name = "SECS")]
    max_duration: Option<f64>,
    /// After writing, read the image back from the device and hash it again.
    #[arg(long)]
    verify_readback: bool,
    /// Write through the page cache instead of O_DIRECT.
    #[arg(long)]
    no_direct: bool,
    /// Accept an image that leaves no partition table on the disk (a bare file system, raw
    /// data); by default that fails the deploy, as in IPA.
    #[arg(long)]
    no_partition_check: bool,
    /// Config drive to write after the image: gzip+base64 text, an http(s) URL, or @FILE
    /// holding either.
    #[arg(long, value_name = "STR|URL|@FILE")]
    configdrive: Option<String>,
    /// Always rebuild the config drive as vfat (setting config_drive_rebuild).
    #[arg(long)]
    config_drive_rebuild: bool,
}

impl DeployArgs {
    /// The flags that are settings, by setting name.
    fn setting_flags(&self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        let mut put = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                m.insert(k.to_string(), v);
            }
        };
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
        let on = |b: bool| b.then(|| "true".to_string());
        put(
            "permitted_image_formats",
            self.permitted_image_formats.clone(),
        );
        put("image_tmp_dir", path(&self.tmp_dir));
        put("decompress_threads", self.decompress_threads.clone());
        put("decompress_memory_mib", self.decompress_memory_mib.clone());
        put("md5_enabled", on(self.md5));
        put("insecure", on(self.insecure));
        put("cafile", path(&self.cafile));
        put("certfile", path(&self.certfile));
        put("keyfile", path(&self.keyfile));
        put(
            "image_download_connection_retries",
            self.retries.map(|n| n.to_string()),
        );
        put(
            "image_download_connection_retry_interval",
            self.retry_interval.map(|s| s.to_string()),
        );
        put(
            "image_download_connection_timeout",
            self.connection_timeout.map(|s| s.to_string()),
        );
        put(
            "image_download_max_duration",
            self.max_duration.map(|s| s.to_string()),
        );
        put("config_drive_rebuild", on(self.config_drive_rebuild));
        m
    }

    fn image_info(&self, md5: bool) -> anyhow::Result<ImageInfo> {
        if let Some(path) = &self.image_info {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let value: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", path.display()))?;
            return Ok(ImageInfo::from_value(&value, md5)?);
        }
        let first = self.urls.first().map(String::as_str).unwrap_or("");
        let id = self
            .image_id
            .clone()
            .unwrap_or_else(|| match url_basename(first) {
                s if s.is_empty() => "image".to_string(),
                s => s,
            });
        let mut v = serde_json::json!({"id": id, "urls": self.urls, "stream_raw_images": true});
        let o = v.as_object_mut().context("image_info is an object")?;
        let mut put = |k: &str, val: &Option<String>| {
            if let Some(x) = val {
                o.insert(k.into(), x.clone().into());
            }
        };
        put("disk_format", &self.disk_format);
        put("checksum", &self.checksum);
        if self.os_hash_algo.is_some() && self.os_hash_value.is_some() {
            put("os_hash_algo", &self.os_hash_algo);
            put("os_hash_value", &self.os_hash_value);
        }
        if let Some(p) = &self.proxy {
            o.insert("proxies".into(), serde_json::json!({"http": p, "https": p}));
            if let Some(np) = &self.no_proxy {
                o.insert("no_proxy".into(), np.clone().into());
            }
        }
        Ok(ImageInfo::from_value(&v, md5)?)
    }

    fn configdrive(&self) -> anyhow::Result<Option<String>> {
        Ok(match self.configdrive.as_deref() {
            Some(s) if s.starts_with('@') => Some(
                std::fs::read_to_string(&s[1..])
                    .with_context(|| format!("cannot read {}", &s[1..]))?,
            ),
            other => other.map(str::to_owned),
        })
    }
}

/// `rivet deploy`.
pub(super) fn deploy(a: DeployArgs) -> anyhow::Result<()> {
    let settings = Settings::load(&a.setting_flags(), &super::serve::rivet_env())?;
    let tmp = crate::deploy::tempfile_path::tmp_dir(settings.image_tmp_dir.as_deref());
    crate::deploy::tempfile_path::remove_leftovers(&tmp);
    let info = a.image_info(settings.md5_enabled)?;
    let mut req = DeployRequest::new(info, a.device.clone(), &settings);
    if let Some(cd) = a.configdrive()? {
        req.configdrive = Some(cd);
    }
    req.opts.verify_readback = a.verify_readback;
    req.opts.direct_io = !a.no_direct;
    req.require_partition_table = !a.no_partition_check;
    req.allow_file_urls = true;
    if a.temp_file {
        req.opts.policy.stream = false;
    }
    let done = super::progress::with_progress(|p| deploy::run(&req, p))?;
    report(&req.info, &done);
    Ok(())
}

/// Prints what a deploy did, one line per part.
pub(super) fn report(info: &ImageInfo, d: &Deployed) {
    if let Some(w) = &d.written {
        let secs = d.elapsed.as_secs_f64().max(1e-9);
        println!(
            "rivet: image {} written to {} and verified: {} bytes from {} in {:.2} s ({:.0} MB/s), {} {} ({:?})",
            info.id,
            d.device.display(),
            w.bytes,
            w.url,
            secs,
            w.bytes as f64 / 1e6 / secs,
            w.algo,
            w.digest,
            w.path
        );
    }
    if info.is_partition_image() {
        println!(
            "rivet: partition image {} written to {}: {}",
            info.id,
            d.device.display(),
            d.partition_uuids
        );
    }
    if let Some(part) = &d.config_drive {
        println!(
            "rivet: config drive written to partition {} of {} (bytes {}..{})",
            part.number,
            d.device.display(),
            part.start,
            part.start + part.size
        );
    }
}
