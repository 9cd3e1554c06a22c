//! The `rivet` command: `deploy` an image to a disk, or run the `demo`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use rivet::deploy::pipeline::{self, DeployOptions, Deployed};
use rivet::errors::AgentError;
use rivet::image::checksum::url_basename;
use rivet::image::fetch::{FetchConfig, Progress};
use rivet::image::info::ImageInfo;

/// rivet: deploys OS images to bare-metal disks, as ironic-python-agent's standby extension
/// does, only faster and safer.
#[derive(Parser)]
#[command(version, propagate_version = true)]
struct Cli {
    /// Log level filter (e.g. `info`, `debug`, `rivet=trace`); also `RUST_LOG`.
    #[arg(long, global = true, env = "RIVET_LOG", default_value = "info")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once, at start-up
enum Command {
    /// Download an image, verify its checksum while it streams, and write it to a device.
    ///
    /// Exit status 0 only when the image was written and verified. On failure, one line names
    /// IPA's error type and the cause, and the disk's partition tables are wiped if writing had
    /// begun, so a half-written disk cannot boot.
    Deploy(DeployArgs),
    /// Deploy a generated sample image from a loopback HTTP server into a regular file: the
    /// whole path of `deploy` with nothing else at hand.
    Demo(DemoArgs),
    /// Run the agent: IPA's REST API for the Ironic conductor, plus lookup and heartbeats when
    /// an Ironic API URL is configured.
    ///
    /// Every option can also come from the kernel command line (`ipa-<option>=VALUE`, e.g.
    /// `ipa-api-url=`), the config file (`option = VALUE` in TOML) or the environment
    /// (`RIVET_<OPTION>`); later sources win: kernel command line, file, environment, flags.
    Serve(ServeArgs),
}

/// `rivet serve` options: generated from the one table in `rivet::config::OPTIONS`.
struct ServeArgs {
    flags: std::collections::BTreeMap<String, String>,
}

impl clap::FromArgMatches for ServeArgs {
    fn from_arg_matches(m: &clap::ArgMatches) -> Result<Self, clap::Error> {
        let mut flags = std::collections::BTreeMap::new();
        for o in rivet::config::OPTIONS {
            if m.value_source(o.name) == Some(clap::parser::ValueSource::CommandLine) {
                if let Some(v) = m.get_one::<String>(o.name) {
                    flags.insert(o.name.to_string(), v.clone());
                }
            }
        }
        Ok(ServeArgs { flags })
    }

    fn update_from_arg_matches(&mut self, m: &clap::ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

impl clap::Args for ServeArgs {
    fn augment_args(mut cmd: clap::Command) -> clap::Command {
        for o in rivet::config::OPTIONS {
            let help = match o.default {
                Some(d) => format!("{} [default: {d}]", o.help),
                None => o.help.to_string(),
            };
            let mut a = clap::Arg::new(o.name)
                .long(o.name.replace('_', "-"))
                .value_name("VALUE")
                .help(help);
            if o.switch {
                a = a.num_args(0..=1).default_missing_value("true");
            }
            cmd = cmd.arg(a);
        }
        cmd
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

#[derive(Args)]
struct DeployArgs {
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
    /// Formats allowed (IPA's permitted_image_formats).
    #[arg(long, value_name = "LIST", default_value = "raw,gpt,qcow2")]
    permitted_image_formats: String,
    /// Directory for the temporary copy of images that cannot stream.
    #[arg(long, value_name = "DIR")]
    tmp_dir: Option<PathBuf>,
    /// Convert qcow2 through a temporary file and qemu-img, as IPA does, instead of while it
    /// streams (for comparison).
    #[arg(long)]
    temp_file: bool,
    /// Image id used in messages (default: the file name of the first URL).
    #[arg(long, value_name = "ID")]
    image_id: Option<String>,
    /// Allow a 32-character checksum to mean md5 (IPA's `md5_enabled`).
    #[arg(long)]
    md5: bool,
    /// Do not verify the server's TLS certificate.
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
    /// Extra attempts per URL after a failed one (IPA's image_download_connection_retries).
    #[arg(long, value_name = "N", default_value_t = 9)]
    retries: u32,
    /// Seconds between attempts.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    retry_interval: f64,
    /// Connect timeout, and the longest wait for the next chunk, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 60.0)]
    connection_timeout: f64,
    /// Give up after this many seconds in all (0: never).
    #[arg(long, value_name = "SECS", default_value_t = 0.0)]
    max_duration: f64,
    /// After writing, read the image back from the device and hash it again.
    #[arg(long)]
    verify_readback: bool,
    /// Write through the page cache instead of O_DIRECT.
    #[arg(long)]
    no_direct: bool,
    /// Config drive to write after the image: gzip+base64 text, an http(s) URL, or @FILE
    /// holding either.
    #[arg(long, value_name = "STR|URL|@FILE")]
    configdrive: Option<String>,
    /// Always rebuild the config drive as vfat (IPA's config_drive_rebuild).
    #[arg(long)]
    config_drive_rebuild: bool,
}

#[derive(Args)]
struct DemoArgs {
    /// Directory for the sample image and the target file (default: a new temporary one).
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Size of the sample image in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 64)]
    size_mib: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cli.log));
    // Every log line also goes to a bounded buffer, for `log.collect_system_logs`.
    let logs = Arc::new(rivet::agent::log::LogBuffer::default());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(rivet::agent::log::TeeWriter(Arc::clone(&logs)))
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let res = match cli.command {
        Command::Deploy(a) => deploy(a),
        Command::Demo(a) => demo(a),
        Command::Serve(a) => serve(a, logs),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            match e.downcast_ref::<AgentError>() {
                Some(ae) => eprintln!("rivet: {}: {}", ae.type_name(), ae.details()),
                None => eprintln!("rivet: error: {e:#}"),
            }
            ExitCode::FAILURE
        }
    }
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

fn deploy(a: DeployArgs) -> anyhow::Result<()> {
    let cfg = FetchConfig {
        retries: a.retries,
        retry_interval: secs(a.retry_interval),
        connection_timeout: secs(a.connection_timeout),
        max_duration: (a.max_duration > 0.0).then(|| secs(a.max_duration)),
        insecure: a.insecure,
        cafile: a.cafile.clone(),
        certfile: a.certfile.clone(),
        keyfile: a.keyfile.clone(),
        md5_enabled: a.md5,
        ..FetchConfig::default()
    };
    let info = match &a.image_info {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let value: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", path.display()))?;
            ImageInfo::from_value(&value, cfg.md5_enabled)?
        }
        None => info_from_flags(&a, cfg.md5_enabled)?,
    };
    let opts = DeployOptions {
        verify_readback: a.verify_readback,
        direct_io: !a.no_direct,
        policy: rivet::deploy::decode::FormatPolicy {
            disk_format: info.disk_format.clone(),
            permitted: a
                .permitted_image_formats
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
            stream: !a.temp_file,
            ..Default::default()
        },
        tmp_dir: a.tmp_dir.clone(),
    };
    let configdrive = match a.configdrive.as_deref() {
        Some(s) if s.starts_with('@') => Some(
            std::fs::read_to_string(&s[1..]).with_context(|| format!("cannot read {}", &s[1..]))?,
        ),
        other => other.map(str::to_owned),
    };
    if info.is_partition_image() {
        let r = rivet::deploy::partition_image::deploy(
            &info,
            &serde_json::json!({}),
            &a.device,
            configdrive.as_deref().map(str::trim),
            &cfg,
            &opts,
            Arc::default(),
        )?;
        println!(
            "rivet: partition image {} written to {}: {}",
            info.id,
            a.device.display(),
            r.uuids
        );
        return Ok(());
    }
    let done = run_with_progress(&info, &a.device, &cfg, &opts)?;
    report(&info, &done);
    if let Some(cd) = configdrive {
        let part = rivet::deploy::configdrive_write::write_config_drive(
            info.node_label(),
            &a.device,
            cd.trim(),
            &cfg,
            a.config_drive_rebuild,
        )?;
        println!(
            "rivet: config drive written to partition {} of {} (bytes {}..{})",
            part.number,
            a.device.display(),
            part.start,
            part.start + part.size
        );
    }
    Ok(())
}

fn info_from_flags(a: &DeployArgs, md5: bool) -> anyhow::Result<ImageInfo> {
    let first = a.urls.first().map(String::as_str).unwrap_or("");
    let id = a
        .image_id
        .clone()
        .unwrap_or_else(|| match url_basename(first) {
            s if s.is_empty() => "image".to_string(),
            s => s,
        });
    let mut v = serde_json::json!({
        "id": id,
        "urls": a.urls,
        "stream_raw_images": true,
    });
    let o = v.as_object_mut().context("image_info is an object")?;
    if let Some(f) = &a.disk_format {
        o.insert("disk_format".into(), f.clone().into());
    }
    if let Some(c) = &a.checksum {
        o.insert("checksum".into(), c.clone().into());
    }
    if let (Some(al), Some(val)) = (&a.os_hash_algo, &a.os_hash_value) {
        o.insert("os_hash_algo".into(), al.clone().into());
        o.insert("os_hash_value".into(), val.clone().into());
    }
    if let Some(p) = &a.proxy {
        o.insert("proxies".into(), serde_json::json!({"http": p, "https": p}));
        if let Some(np) = &a.no_proxy {
            o.insert("no_proxy".into(), np.clone().into());
        }
    }
    Ok(ImageInfo::from_value(&v, md5)?)
}

/// Runs the deploy while showing progress: a bar on a terminal, log lines otherwise.
fn run_with_progress(
    info: &ImageInfo,
    device: &Path,
    cfg: &FetchConfig,
    opts: &DeployOptions,
) -> anyhow::Result<Deployed> {
    let progress = Arc::new(Progress::default());
    // Dropping `done_tx` wakes the watcher at once (no sleeping tick to wait out).
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let watcher = {
        let p = Arc::clone(&progress);
        std::thread::spawn(move || watch(&p, &done_rx))
    };
    let res = pipeline::write_image(info, device, cfg, opts, progress);
    drop(done_tx);
    let _ = watcher.join();
    Ok(res?)
}

/// Waits for one tick; false once the deploy is over.
fn tick(done: &std::sync::mpsc::Receiver<()>) -> bool {
    matches!(
        done.recv_timeout(Duration::from_millis(200)),
        Err(std::sync::mpsc::RecvTimeoutError::Timeout)
    )
}

fn watch(p: &Progress, done: &std::sync::mpsc::Receiver<()>) {
    if std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] [{wide_bar}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        while tick(done) {
            if let Some(len) = p.content_length() {
                bar.set_length(len);
            }
            bar.set_position(p.bytes_transferred());
        }
        bar.finish_and_clear();
    } else {
        let mut last = std::time::Instant::now();
        while tick(done) {
            if last.elapsed() >= Duration::from_secs(5) {
                last = std::time::Instant::now();
                tracing::info!(
                    transferred = p.bytes_transferred(),
                    written = p.bytes_written(),
                    total = ?p.content_length(),
                    "progress"
                );
            }
        }
    }
}

fn report(info: &ImageInfo, d: &Deployed) {
    let secs = d.elapsed.as_secs_f64().max(1e-9);
    println!(
        "rivet: image {} written to {} and verified: {} bytes from {} in {:.2} s ({:.0} MB/s), {} {} ({:?})",
        info.id,
        d.device.display(),
        d.bytes,
        d.url,
        secs,
        d.bytes as f64 / 1e6 / secs,
        d.algo,
        d.digest,
        d.path
    );
}

fn demo(a: DemoArgs) -> anyhow::Result<()> {
    let tmp;
    let dir = match &a.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            tmp = std::env::temp_dir().join(format!("rivet-demo-{}", std::process::id()));
            std::fs::create_dir_all(&tmp)?;
            tmp
        }
    };
    let size = a.size_mib.max(4) << 20;
    let image = dir.join("sample.img");
    println!(
        "rivet demo: making a {} MiB sample GPT image at {}",
        size >> 20,
        image.display()
    );
    rivet::demo::sample_image(&image, size, 0x5eed)?;
    let server = rivet::demo::FileServer::start(&dir)?;
    let url = server.url("sample.img");
    let disk = dir.join("disk.img");
    // A "disk" twice the image's size, so the backup GPT must move to its end.
    std::fs::File::create(&disk)?.set_len(size * 2)?;
    let digest = {
        let mut h = rivet::image::checksum::Algorithm::Sha256.hasher();
        h.update(&std::fs::read(&image)?);
        h.hex_digest()
    };
    println!(
        "rivet demo: serving it at {url}; deploying into {}",
        disk.display()
    );
    let info = ImageInfo::from_value(
        &serde_json::json!({"id": "sample", "urls": [url], "disk_format": "raw",
                            "os_hash_algo": "sha256", "os_hash_value": digest}),
        false,
    )?;
    let cfg = FetchConfig {
        retries: 2,
        retry_interval: Duration::from_secs(1),
        ..FetchConfig::default()
    };
    let done = run_with_progress(&info, &disk, &cfg, &DeployOptions::default())?;
    report(&info, &done);
    println!(
        "rivet demo: backup GPT: {:?}; path: {:?}",
        done.gpt, done.path
    );
    if a.dir.is_none() {
        std::fs::remove_dir_all(&dir)?;
    }
    Ok(())
}

fn serve(a: ServeArgs, logs: Arc<rivet::agent::log::LogBuffer>) -> anyhow::Result<()> {
    use rivet::agent::{ironic, tls};
    let env: std::collections::BTreeMap<String, String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("RIVET_"))
        .collect();
    let settings = rivet::config::Settings::load(&a.flags, &env)?;
    let addr = settings.listen_addr()?;
    let agent = rivet::agent::Agent::new(settings, logs).map_err(anyhow::Error::msg)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let s = agent.settings();
        // Ironic's API version decides auto-TLS, so it is learnt before serving.
        let mut api = ironic::Ironic::new(&agent)?;
        if let Some(i) = api.as_mut() {
            let v = i.discover_version().await;
            tracing::info!("Ironic API version {}.{}", v.0, v.1);
        }
        let min_tls = s.get("tls_min_version").unwrap_or("1.2").to_string();
        let server_tls = if s.bool("listen_tls")? {
            let (Some(cert), Some(key)) = (s.get("tls_cert_file"), s.get("tls_key_file")) else {
                anyhow::bail!("listen_tls needs tls_cert_file and tls_key_file");
            };
            Some(
                tls::static_tls(cert.as_ref(), key.as_ref(), &min_tls)
                    .map_err(anyhow::Error::msg)?,
            )
        } else if let Some(i) = api
            .as_ref()
            .filter(|i| i.version() >= (1, 68) && s.bool("enable_auto_tls").unwrap_or(true))
        {
            let host = ironic::advertise_host(&agent, i)?;
            let ip: std::net::IpAddr =
                host.trim_matches(['[', ']']).parse().with_context(|| {
                    format!("auto-TLS needs an IP address to advertise, not {host}")
                })?;
            let curve = s.get("tls_certificate_curve").unwrap_or("p384");
            let dir = s.get("tls_state_dir").map(std::path::PathBuf::from);
            agent.set_setting("advertise_protocol", "https");
            Some(tls::auto_tls(ip, curve, &min_tls, dir.as_deref()).map_err(anyhow::Error::msg)?)
        } else {
            None
        };
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        let bound = listener.local_addr()?;
        let scheme = if server_tls.is_some() {
            "https"
        } else {
            "http"
        };
        agent.set_setting("api_scheme", scheme);
        tracing::info!(
            "rivet {} agent API listening on {scheme}://{bound} (power backend: {})",
            rivet::agent::VERSION,
            agent.power().name()
        );
        let app = rivet::agent::api::router(Arc::clone(&agent));
        let verify_ca = server_tls.as_ref().and_then(|t| t.verify_ca.clone());
        let server = match server_tls {
            Some(t) => tokio::spawn(async move { tls::serve(listener, app, t.config).await }),
            None => tokio::spawn(async move { axum::serve(listener, app).await }),
        };
        match api {
            Some(i) => {
                if let Err(e) = ironic::run(Arc::clone(&agent), i, bound.port(), verify_ca).await {
                    server.abort();
                    return Err(anyhow::Error::new(e));
                }
            }
            None => tracing::info!("no api_url: running standalone (API only)"),
        }
        server.await??;
        Ok(())
    })
}
