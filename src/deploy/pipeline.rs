//! The whole data path of a raw image, in one place:
//!
//! ```text
//! HTTP body (ImageDownload: retries, Range resume) ──Bytes──► hash thread ──► digest
//!                                                  └─Bytes──► decode thread ──► I/O thread ──► disk
//! ```
//! The decode thread sniffs the format from the first bytes: raw goes to the disk as it is,
//! qcow2 is converted on the fly; what cannot stream takes the temp-file path
//! ([`super::tempfile_path`]).
//! The network, the hash and the disk each run on their own thread, joined by bounded queues
//! of reference-counted `Bytes` (no copy of the payload between stages), so a deploy takes as
//! long as its slowest stage, not the sum of them. The first MiB of the disk is written only
//! after the digest matched; any failure after writing began wipes both partition-table areas.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::decode::{DecodeError, Decoder, FormatPolicy, WritePath};
use crate::disk::device::Target;
use crate::disk::table::{self, GptFix};
use crate::disk::writer::DiskWriter;
use crate::errors::{AgentError, Result};
use crate::image::checksum::{self, Algorithm, Expected};
use crate::image::fetch::{FetchConfig, ImageDownload, Progress, Sink};
use crate::image::info::ImageInfo;

/// Chunks in flight between the network and each consumer. hyper hands out chunks of up to
/// ~400 KiB, so this is a few MiB: small enough that the hash thread reads the bytes while they
/// are still in cache (SHA-256 runs at 2.0 GB/s on cache-hot data here, 1.2 GB/s from RAM).
const QUEUE: usize = 8;

/// How to write.
#[derive(Debug, Clone)]
pub struct DeployOptions {
    /// Read the written range back from the device and hash it again.
    pub verify_readback: bool,
    /// Use `O_DIRECT` for bulk writes to block devices.
    pub direct_io: bool,
    /// Format rules.
    pub policy: FormatPolicy,
    /// Where the temp-file path keeps its copy (default: the system's temp dir, as IPA).
    pub tmp_dir: Option<PathBuf>,
}

impl Default for DeployOptions {
    fn default() -> Self {
        DeployOptions {
            verify_readback: false,
            direct_io: true,
            policy: FormatPolicy::default(),
            tmp_dir: None,
        }
    }
}

/// What a successful deploy did.
#[derive(Debug, Clone)]
pub struct Deployed {
    /// The target written.
    pub device: PathBuf,
    /// The URL the image came from.
    pub url: String,
    /// Image size in bytes.
    pub bytes: u64,
    /// The algorithm used for verification.
    pub algo: Algorithm,
    /// The verified digest.
    pub digest: String,
    /// What happened to the backup GPT.
    pub gpt: GptFix,
    /// How the image reached the disk.
    pub path: WritePath,
    /// Wall time of the whole deploy.
    pub elapsed: Duration,
}

enum Msg {
    Data(Bytes),
    /// The server announced the length of the download.
    Len(u64),
    Reset,
}

/// The size the image will have on disk, learnt from its first bytes and length before
/// anything is written: a raw image's length, a qcow2's virtual size; `None` when unknown
/// (other formats are measured by qemu-img later).
pub fn probe_virtual_size(info: &ImageInfo, cfg: &FetchConfig) -> Result<Option<u64>> {
    let dl = ImageDownload::new(info, cfg, Arc::default())?;
    let Some((total, head)) = dl.probe(crate::image::format::qcow2::HEADER_PEEK) else {
        return Ok(None);
    };
    if head.starts_with(b"QFI\xfb") {
        return Ok(crate::image::format::qcow2::Header::parse(&head)
            .ok()
            .map(|h| h.virtual_size));
    }
    let raw = matches!(
        info.disk_format.as_deref(),
        None | Some("raw" | "gpt" | "unknown")
    );
    Ok(total.filter(|_| raw))
}

/// What one pass produced.
pub(super) struct Written {
    pub(super) url: String,
    pub(super) bytes: u64,
    pub(super) digest: String,
    pub(super) gpt: GptFix,
    pub(super) path: WritePath,
}

/// Downloads `info`'s image, verifies it and writes it onto `device` (raw as it is, qcow2
/// converted on the fly, other formats through the temp-file path).
pub fn write_image(
    info: &ImageInfo,
    device: &Path,
    cfg: &FetchConfig,
    opts: &DeployOptions,
    progress: Arc<Progress>,
) -> Result<Deployed> {
    let started = Instant::now();
    let mut dl = ImageDownload::new(info, cfg, progress)?;
    let expected = checksum::resolve(info, cfg.md5_enabled, &mut |u| dl.fetch_text(u))?;
    tracing::info!(image = %info.id, algo = %expected.algo, "expecting digest {}", expected.hex);
    let target =
        Arc::new(Target::open(device, opts.direct_io).map_err(|e| write_error(info, device, &e))?);
    // A checksum mismatch is retried like IPA's outer loop does, sharing the same budget.
    let mut attempt = 0;
    loop {
        match run_once(&mut dl, info, &target, &expected, opts) {
            Err(e @ AgentError::ImageChecksum { .. }) if attempt < cfg.retries => {
                attempt += 1;
                tracing::warn!("{e}; downloading again ({attempt}/{})", cfg.retries);
                std::thread::sleep(cfg.retry_interval);
            }
            Err(e) => return Err(e),
            Ok(w) => {
                return Ok(Deployed {
                    device: device.to_owned(),
                    url: w.url,
                    bytes: w.bytes,
                    algo: expected.algo,
                    digest: w.digest,
                    gpt: w.gpt,
                    path: w.path,
                    elapsed: started.elapsed(),
                })
            }
        }
    }
}

fn run_once(
    dl: &mut ImageDownload,
    info: &ImageInfo,
    target: &Arc<Target>,
    expected: &Expected,
    opts: &DeployOptions,
) -> Result<Written> {
    if !opts.policy.stream {
        // Decided before the first byte: no streaming attempt to throw away.
        return super::tempfile_path::deploy(dl, info, target, expected, opts, None);
    }
    let progress = Arc::clone(dl.progress());
    let (hash_tx, hash_rx) = mpsc::sync_channel(QUEUE);
    let (write_tx, write_rx) = mpsc::sync_channel(QUEUE);
    let hasher = spawn("rivet-hash", {
        let algo = expected.algo;
        move || hash_loop(algo, hash_rx)
    })
    .map_err(|e| write_error(info, target.path(), &e))?;
    let writer = DiskWriter::new(Arc::clone(target), Arc::clone(&progress))
        .map_err(|e| write_error(info, target.path(), &e))?;
    let decoder = Decoder::new(
        writer,
        opts.policy.clone(),
        target.capacity(),
        target.path().display().to_string(),
        info.id.clone(),
    );
    let writer = spawn("rivet-decode", move || write_loop(decoder, write_rx))
        .map_err(|e| write_error(info, target.path(), &e))?;
    // Content-Length can be held against the device only when the bytes are the disk.
    let declared_raw = matches!(opts.policy.disk_format.as_deref(), Some("raw" | "gpt"));

    let mut sink = FanOut {
        hash: hash_tx,
        write: write_tx,
        capacity: target.capacity().filter(|_| declared_raw),
        device: target.path().display().to_string(),
        image_id: info.id.clone(),
        received: 0,
        consumer_gone: false,
    };
    let downloaded = dl.run(&mut sink);
    let consumer_gone = sink.consumer_gone;
    drop(sink);
    // Join both before deciding anything: no stage may outlive the attempt.
    let digest = hasher.join();
    let written = writer.join();

    // Only a disk that was written to needs wiping: a refusal before the first write loses
    // nothing. `touched` is set by the I/O thread itself, whatever the counters say.
    let fail = |e: AgentError| {
        if target.touched() {
            tracing::warn!("wiping the partition tables of {}", target.path().display());
            if let Err(w) = target.wipe_tables() {
                tracing::error!("could not wipe {}: {w}", target.path().display());
            }
        }
        Err(e)
    };
    let (digest, written) = match (digest, written) {
        (Ok(d), Ok(w)) => (d, w),
        (Err(_), _) => return fail(panicked(info, "hash")),
        (_, Err(_)) => return fail(panicked(info, "write")),
    };
    let decode_failure = |e: DecodeError| match e {
        DecodeError::Refused(e) => Err(e),
        DecodeError::Io(io) => Err(write_error(info, target.path(), &io)),
        DecodeError::Fallback { format, why } => Ok((format, why)),
    };
    let fallback = |dl: &mut ImageDownload, format, why: String| {
        tracing::warn!("{why}: falling back to the temp-file path");
        super::tempfile_path::deploy(dl, info, target, expected, opts, Some(format)).or_else(fail)
    };
    let (url, writer, path) = match (downloaded, written) {
        (Err(_), Err(e)) if consumer_gone => match decode_failure(e) {
            Err(e) => return fail(e),
            Ok((format, why)) => return fallback(dl, format, why),
        },
        (Err(e), _) => return fail(e),
        (Ok(_), Err(e)) => match decode_failure(e) {
            Err(e) => return fail(e),
            Ok((format, why)) => return fallback(dl, format, why),
        },
        (Ok(url), Ok((w, path))) => (url, w, path),
    };
    if !expected.matches(&digest) {
        drop(writer);
        return fail(checksum_error(info, target.path(), &digest, expected));
    }
    let bytes = match writer.commit() {
        Ok(b) => b,
        Err(e) => return fail(write_error(info, target.path(), &e)),
    };
    // Only raw bytes can be compared with the download's digest.
    if opts.verify_readback && path == WritePath::Raw {
        let again = readback_digest(target, bytes, expected.algo)
            .map_err(|e| write_error(info, target.path(), &e));
        match again {
            Ok(d) if expected.matches(&d) => tracing::info!("read-back digest matches"),
            Ok(d) => {
                let loc = format!("{} (read back)", target.path().display());
                return fail(checksum_error(info, Path::new(&loc), &d, expected));
            }
            Err(e) => return fail(e),
        }
    }
    let gpt = match finish_disk(target, bytes) {
        Ok(g) => g,
        Err(e) => return fail(write_error(info, target.path(), &e)),
    };
    tracing::info!(
        image = %info.id, device = %target.path().display(), bytes, digest = %digest,
        ?gpt, ?path, "image written and verified"
    );
    Ok(Written {
        url,
        bytes,
        digest,
        gpt,
        path,
    })
}

/// After an image of `bytes` bytes landed: clear a stale backup GPT beyond it, move the
/// image's backup GPT to the end of the disk, and let the kernel re-read the table.
pub(super) fn finish_disk(target: &Target, bytes: u64) -> std::io::Result<GptFix> {
    target.clear_stale_tail(bytes)?;
    let gpt = if target.capacity().is_some_and(|c| c > bytes) {
        // IPA swallows GPT fix failures on this path; so do we, loudly.
        table::relocate_backup_gpt(target.file()).unwrap_or_else(|e| {
            tracing::warn!("could not move the backup GPT to the end of the disk: {e}");
            GptFix::NoGpt
        })
    } else {
        GptFix::AlreadyAtEnd
    };
    target.rescan();
    Ok(gpt)
}

fn spawn<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<JoinHandle<T>> {
    std::thread::Builder::new().name(name.into()).spawn(f)
}

fn hash_loop(algo: Algorithm, rx: Receiver<Msg>) -> String {
    let mut h = algo.hasher();
    for msg in rx {
        match msg {
            Msg::Data(b) => h.update(&b),
            Msg::Reset => h.reset(),
            Msg::Len(_) => {}
        }
    }
    h.hex_digest()
}

fn write_loop(mut d: Decoder, rx: Receiver<Msg>) -> Result<(DiskWriter, WritePath), DecodeError> {
    for msg in rx {
        match msg {
            Msg::Data(b) => d.push(&b)?,
            Msg::Len(n) => d.expect_len(n),
            Msg::Reset => d.reset(),
        }
    }
    d.finish()
}

/// Hashes `len` bytes from the start of the target again, bypassing the page cache when the
/// target allows it, so what is checked is what the device holds.
fn readback_digest(target: &Target, len: u64, algo: Algorithm) -> std::io::Result<String> {
    use std::io::Read;
    let mut f = match target.direct() {
        Some(d) => d.try_clone()?,
        None => target.file().try_clone()?,
    };
    std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(0))?;
    let mut h = algo.hasher();
    // O_DIRECT reads need an aligned buffer and whole sectors; the tail is trimmed after.
    let mut raw = vec![0u8; (4 << 20) + 4096];
    let start = (4096 - raw.as_ptr() as usize % 4096) % 4096;
    let buf = &mut raw[start..start + (4 << 20)];
    let mut left = len;
    while left > 0 {
        let n = f.read(buf)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the device is shorter than the image",
            ));
        }
        let take = (n as u64).min(left) as usize;
        h.update(&buf[..take]);
        left -= take as u64;
    }
    Ok(h.hex_digest())
}

/// Distributes each chunk to the hash and the writer threads (a refcount, not a copy).
struct FanOut {
    hash: SyncSender<Msg>,
    write: SyncSender<Msg>,
    capacity: Option<u64>,
    device: String,
    image_id: String,
    received: u64,
    consumer_gone: bool,
}

impl FanOut {
    fn too_big(&self, len: u64, cap: u64) -> AgentError {
        AgentError::out_of_space(
            &self.image_id,
            format!(
                "Unable to write image to device {}. Error: the image is {len} bytes but the \
                 device holds only {cap} bytes",
                self.device
            ),
        )
    }

    fn send(&mut self, make: impl Fn() -> Msg) -> Result<()> {
        if self.hash.send(make()).is_err() || self.write.send(make()).is_err() {
            self.consumer_gone = true;
            return Err(AgentError::download(&self.image_id, "the writer stopped"));
        }
        Ok(())
    }
}

impl Sink for FanOut {
    fn expect_len(&mut self, len: u64) -> Result<()> {
        match self.capacity {
            Some(cap) if len > cap => Err(self.too_big(len, cap)),
            _ => {
                if self.write.send(Msg::Len(len)).is_err() {
                    self.consumer_gone = true;
                    return Err(AgentError::download(&self.image_id, "the writer stopped"));
                }
                Ok(())
            }
        }
    }

    fn data(&mut self, bytes: Bytes) -> Result<()> {
        let end = self.received + bytes.len() as u64;
        if let Some(cap) = self.capacity.filter(|&c| end > c) {
            return Err(self.too_big(end, cap));
        }
        self.received = end;
        self.send(|| Msg::Data(bytes.clone()))
    }

    fn reset(&mut self) -> Result<()> {
        self.received = 0;
        self.send(|| Msg::Reset)
    }
}

pub(super) fn write_error(info: &ImageInfo, device: &Path, e: &std::io::Error) -> AgentError {
    let msg = format!(
        "Unable to write image to device {}. Error: {e}",
        device.display()
    );
    if e.raw_os_error() == Some(libc::ENOSPC) {
        AgentError::out_of_space(&info.id, msg)
    } else {
        AgentError::download(&info.id, msg)
    }
}

pub(super) fn checksum_error(
    info: &ImageInfo,
    location: &Path,
    actual: &str,
    exp: &Expected,
) -> AgentError {
    AgentError::ImageChecksum {
        location: location.display().to_string(),
        image_id: info.id.clone(),
        actual: actual.to_string(),
        expected: exp.hex.clone(),
    }
}

fn panicked(info: &ImageInfo, stage: &str) -> AgentError {
    AgentError::download(&info.id, format!("the {stage} thread panicked"))
}
