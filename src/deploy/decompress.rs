//! The decompression stage: a compressed image (gzip, xz, zstd, recognised by its first bytes)
//! is decompressed on its own thread, between the download and the decode stage, so the
//! network, the hash, the decompressor, the decoder and the disk each run on their own thread
//! (docs/data-path.md#compressed-images):
//!
//! ```text
//! download ──► FanOut ──► hash thread
//!                   └──► rivet-decode: sniff ──(compressed)──► decompress ──Bytes──►
//!                                                   rivet-image: Decoder (raw/qcow2, format rules) ──► DiskWriter
//! ```
//!
//! An uncompressed image skips the extra thread: the decode thread runs the decoder itself,
//! as before. The decoder sees only the image inside, so the format rules, the inspector and
//! the size checks apply to it. The announced length of the download is the compressed size
//! and is not passed on. A Range resume continues the same compressed bytes, so the
//! decompressor keeps its state; a restart from byte 0 drops it and sniffs again.

use std::io;
use std::sync::mpsc::{self, Receiver, SyncSender};

use bytes::Bytes;

use super::decode::{DecodeError, Decoder, DecompressLimits, WritePath};
use super::pipeline::Msg;
use crate::disk::writer::DiskWriter;
use crate::errors::AgentError;
use crate::image::format::compress::{self, Codec, CompressError, Inflate, Output, MAGIC_LEN};

/// Decompressed chunks (of [`compress::CHUNK`] bytes) in flight to the decoder.
const QUEUE: usize = 4;

/// What the decode thread needs to bound and name the image.
pub(crate) struct Bound {
    /// The device's size: the decompressed image may not be larger.
    pub capacity: Option<u64>,
    /// For messages.
    pub device: String,
    /// For messages.
    pub image_id: String,
    /// Threads and memory the decompressor may use.
    pub limits: DecompressLimits,
}

type Outcome = Result<(DiskWriter, WritePath), DecodeError>;

/// The decode thread's body: sniffs the first bytes; an uncompressed image goes to `d` on
/// this thread, a compressed one is decompressed here and decoded on another.
pub(crate) fn route(d: Decoder, rx: Receiver<Msg>, bound: Bound) -> Outcome {
    let mut rx = rx.into_iter();
    let (codec, seen) = sniff(&mut rx);
    match codec {
        None => super::pipeline::write_loop(d, seen.into_iter().chain(rx)),
        Some(codec) => Inflating::run(d, codec, seen, rx, &bound),
    }
}

/// Reads messages until the first [`MAGIC_LEN`] bytes are known (or the download ended);
/// returns the compression and the messages read, to be replayed.
fn sniff(rx: &mut impl Iterator<Item = Msg>) -> (Option<Codec>, Vec<Msg>) {
    let mut head = Vec::with_capacity(MAGIC_LEN);
    let mut seen = Vec::new();
    for m in rx.by_ref() {
        match &m {
            Msg::Data(b) => {
                let take = (MAGIC_LEN - head.len()).min(b.len());
                head.extend_from_slice(&b[..take]);
            }
            Msg::Reset => {
                head.clear();
                seen.clear();
            }
            Msg::Len(_) => {}
        }
        seen.push(m);
        if head.len() >= MAGIC_LEN {
            break;
        }
    }
    (compress::detect(&head), seen)
}

/// A compressed image being decompressed, with the decoder on its own thread.
struct Inflating {
    tx: SyncSender<Option<Msg>>,
    limits: DecompressLimits,
    decoder: std::thread::JoinHandle<Outcome>,
}

impl Inflating {
    fn run(
        d: Decoder,
        codec: Codec,
        seen: Vec<Msg>,
        rx: impl Iterator<Item = Msg>,
        bound: &Bound,
    ) -> Outcome {
        tracing::info!(%codec, "the image is {codec}-compressed: decompressing while it streams");
        let (tx, inner_rx) = mpsc::sync_channel(QUEUE);
        let decoder = std::thread::Builder::new()
            .name("rivet-image".into())
            .spawn(move || decode_loop(d, inner_rx))?;
        let me = Inflating {
            tx,
            limits: bound.limits,
            decoder,
        };
        match me.pump(codec, seen.into_iter().chain(rx), bound) {
            Ok(()) => me.join().map(|(w, path)| {
                let qcow2 = path == WritePath::Qcow2Stream;
                (w, WritePath::Decompressed { codec, qcow2 })
            }),
            Err(e) => {
                // The decoder must not finish an image that is known to be bad: abort it.
                let _ = me.tx.send(None);
                drop(me.tx);
                match me.decoder.join() {
                    // The decoder stopped first (a refused image inside, a write error): that
                    // is the cause, the decompressor's failure to hand it bytes a symptom.
                    Ok(Err(de)) if !is_abort(&de) => Err(de),
                    _ => Err(e),
                }
            }
        }
    }

    fn join(self) -> Outcome {
        drop(self.tx);
        self.decoder
            .join()
            .map_err(|_| DecodeError::Io(io::Error::other("the image decode thread panicked")))?
    }

    /// Decompresses every message's bytes into the decoder's queue.
    fn pump(
        &self,
        codec: Codec,
        msgs: impl Iterator<Item = Msg>,
        bound: &Bound,
    ) -> Result<(), DecodeError> {
        let tx = self.tx.clone();
        let mut emit = move |b: Bytes| {
            tx.send(Some(Msg::Data(b)))
                .map_err(|_| io::Error::other("the image decoder stopped"))
        };
        let mut out = Output::new(&mut emit);
        let mut inf: Option<Box<dyn Inflate>> =
            Some(compress::inflater(codec, self.limits).map_err(refused)?);
        // After a restart from byte 0, the first bytes are sniffed again.
        let mut head: Vec<u8> = Vec::new();
        for m in msgs {
            match m {
                Msg::Data(b) => match &mut inf {
                    Some(i) => {
                        i.feed(&b, &mut out).map_err(|e| self.failed(e))?;
                        check_bound(out.total(), bound)?;
                    }
                    None => {
                        head.extend_from_slice(&b);
                        if head.len() >= MAGIC_LEN {
                            inf = Some(self.restart(codec, &head)?);
                            let h = std::mem::take(&mut head);
                            inf.as_mut()
                                .map_or(Ok(()), |i| i.feed(&h, &mut out))
                                .map_err(|e| self.failed(e))?;
                        }
                    }
                },
                // The compressed length says nothing about the image's size.
                Msg::Len(_) => {}
                Msg::Reset => {
                    tracing::info!(
                        "the download restarts from byte 0: so does the {codec} decoder"
                    );
                    inf = None;
                    head.clear();
                    // Bytes decoded before the restart are stale: dropped with their buffer.
                    drop(out);
                    out = Output::new(&mut emit);
                    self.send(Msg::Reset)?;
                }
            }
        }
        if inf.is_none() && !head.is_empty() {
            inf = Some(self.restart(codec, &head)?);
            let h = std::mem::take(&mut head);
            inf.as_mut()
                .map_or(Ok(()), |i| i.feed(&h, &mut out))
                .map_err(|e| self.failed(e))?;
        }
        match &mut inf {
            Some(i) => i.finish(&mut out).map_err(|e| self.failed(e))?,
            None => return Err(self.failed(CompressError::Truncated(codec))),
        }
        out.flush().map_err(|e| self.failed(e.into()))?;
        check_bound(out.total(), bound)?;
        tracing::info!(%codec, bytes = out.total(), "decompressed");
        Ok(())
    }

    /// A restarted download must be the same kind of file.
    fn restart(&self, codec: Codec, head: &[u8]) -> Result<Box<dyn Inflate>, DecodeError> {
        match compress::detect(head) {
            Some(c) => compress::inflater(c, self.limits).map_err(refused),
            None => Err(refused(CompressError::Corrupt {
                codec,
                why: "the restarted download is no longer compressed".into(),
            })),
        }
    }

    fn send(&self, m: Msg) -> Result<(), DecodeError> {
        self.tx
            .send(Some(m))
            .map_err(|_| DecodeError::Io(io::Error::other("the image decoder stopped")))
    }

    fn failed(&self, e: CompressError) -> DecodeError {
        refused(e)
    }
}

/// A compressed stream that is not valid: nothing from it may stay on the disk.
fn refused(e: CompressError) -> DecodeError {
    match e {
        CompressError::Output(io) => DecodeError::Io(io),
        e => {
            tracing::error!("compressed image refused: {e}");
            DecodeError::Refused(AgentError::InvalidImage(format!("Invalid image: {e}")))
        }
    }
}

/// A compression bomb: the image inside is larger than the device. The decoder refuses a raw
/// image that outgrows the device when it writes; this bounds what is decompressed whatever
/// the image inside is (a qcow2 file can exceed its virtual size only by its metadata).
fn check_bound(total: u64, b: &Bound) -> Result<(), DecodeError> {
    match b.capacity {
        Some(cap) if total > cap.saturating_mul(2).saturating_add(64 << 20) => {
            Err(DecodeError::Refused(AgentError::out_of_space(
                &b.image_id,
                format!(
                    "Unable to write image to device {}. Error: the compressed image expands \
                     to more than {total} bytes but the device holds only {cap} bytes",
                    b.device
                ),
            )))
        }
        _ => Ok(()),
    }
}

const ABORTED: &str = "aborted: the compressed stream is bad";

fn is_abort(e: &DecodeError) -> bool {
    matches!(e, DecodeError::Io(io) if io.to_string() == ABORTED)
}

/// The image decoder's thread: decompressed bytes in, disk writes out. `None` aborts.
fn decode_loop(mut d: Decoder, rx: Receiver<Option<Msg>>) -> Outcome {
    for m in rx {
        match m {
            Some(Msg::Data(b)) => d.push(&b)?,
            Some(Msg::Reset) => d.reset(),
            Some(Msg::Len(_)) => {}
            None => return Err(DecodeError::Io(io::Error::other(ABORTED))),
        }
    }
    let (w, path) = d.finish()?;
    Ok((w, path))
}

/// The temp-file path's side: when the verified local copy at `path` is compressed, decompresses
/// it into a nameless file in `dir` (bounded by `capacity`, gone with its descriptor whatever
/// happens) and returns the image inside, for the inspector and qemu-img; `None` when it is not
/// compressed.
pub(super) fn unpack_file(
    path: &std::path::Path,
    dir: &std::path::Path,
    capacity: Option<u64>,
    image_id: &str,
    limits: DecompressLimits,
) -> Result<Option<std::fs::File>, AgentError> {
    use std::io::Read;
    let io_err = |e: io::Error| {
        let msg = format!("Unable to decompress {}. Error: {e}", path.display());
        if e.raw_os_error() == Some(libc::ENOSPC) {
            AgentError::out_of_space(image_id, msg)
        } else {
            AgentError::download(image_id, msg)
        }
    };
    let mut src = std::fs::File::open(path).map_err(io_err)?;
    let mut head = Vec::with_capacity(MAGIC_LEN);
    (&mut src)
        .take(MAGIC_LEN as u64)
        .read_to_end(&mut head)
        .map_err(io_err)?;
    let Some(codec) = compress::detect(&head) else {
        return Ok(None);
    };
    let out = tempfile::tempfile_in(dir).map_err(io_err)?;
    tracing::info!(%codec, dir = %dir.display(), "decompressing the local copy");
    let mut src = std::io::BufReader::new(std::io::Cursor::new(head).chain(src));
    let mut dst = std::io::BufWriter::new(&out);
    let limit = capacity.unwrap_or(u64::MAX);
    match compress::decompress_file(codec, &mut src, &mut dst, limit, limits) {
        Ok(_) => {}
        Err(CompressError::Output(e)) => return Err(io_err(e)),
        Err(e) => {
            return Err(match refused(e) {
                DecodeError::Refused(a) => a,
                _ => AgentError::InvalidImage("Invalid image".into()),
            })
        }
    }
    std::io::Write::flush(&mut dst).map_err(io_err)?;
    drop(dst);
    Ok(Some(out))
}
