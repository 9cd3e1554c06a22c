//! Compressed images (gzip, xz, zstd): which compression the first bytes show, and push-style
//! decompressors that take the downloaded bytes in whatever chunks the network delivers and
//! hand out the image inside in large owned buffers (docs/data-path.md#compressed-images).
//!
//! Why push-style: the download may restart from byte 0 (`reset`) or continue after a Range
//! resume; a decompressor fed the continued bytes simply keeps its state, and one that must
//! start again is dropped and built anew. No reader thread is parked on a pipe.
//!
//! The crates, all well kept and already in wide use:
//! - gzip: `flate2` (on zlib-rs, pure Rust) for raw deflate; the gzip member framing (header,
//!   CRC-32 and length trailer) is read here so that concatenated members, a truncated member
//!   and bytes after the last member are each decided explicitly, not by a reader's heuristics;
//! - xz: `liblzma` (bindings to xz-utils' liblzma, the reference implementation): its plain
//!   decoder on one thread, its multi-threaded decoder on several, where an xz file made of
//!   several blocks (`xz -T0`, or `--block-size`) decodes on several cores; a single-block
//!   file decodes on one, as the format requires;
//! - zstd: `zstd` (bindings to the reference libzstd). libzstd has no parallel decoder, so a
//!   file of several frames (`pzstd`) is cut at frame boundaries here and its frames decoded on
//!   several threads; one big frame (what `zstd` writes) streams through libzstd on one.
//!
//! The rules, the same for the three: concatenated members/streams/frames are one image; a
//! stream that ends in the middle is [`CompressError::Truncated`]; anything after the last
//! complete member other than what the format itself allows (xz stream padding, zstd skippable
//! frames) is [`CompressError::TrailingGarbage`]. Nothing here knows about disks: the caller
//! bounds the output (a compression bomb) and applies the format rules to the image inside.

use std::io;

use bytes::Bytes;

/// Bytes needed to recognise every compression here.
pub(crate) const MAGIC_LEN: usize = 6;
/// Size of the buffers handed out (and so of the chunks the next stage receives).
pub(crate) const CHUNK: usize = 1 << 20;
/// Memory beyond which an xz stream is refused (its dictionary alone; `xz -9` needs 65 MiB).
pub(crate) const XZ_MEMLIMIT: u64 = 1 << 30;
/// A gzip header longer than this (file name and comment) is refused, not buffered.
const GZIP_HEADER_MAX: usize = 64 << 10;

/// A compression rivet decompresses while streaming.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// RFC 1952 gzip (one or more members).
    Gzip,
    /// xz (one or more streams, with stream padding between them).
    Xz,
    /// Zstandard (one or more frames, skippable frames included).
    Zstd,
}

impl Codec {
    /// Its usual name.
    pub fn name(self) -> &'static str {
        match self {
            Codec::Gzip => "gzip",
            Codec::Xz => "xz",
            Codec::Zstd => "zstd",
        }
    }
}

impl std::fmt::Display for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The compression `head` (the first [`MAGIC_LEN`] bytes, or the whole file if shorter)
/// starts with, if any. Magic numbers only: a raw disk starts with boot code or zeros, never
/// with these.
pub(crate) fn detect(head: &[u8]) -> Option<Codec> {
    match head {
        [0x1f, 0x8b, 0x08, ..] => Some(Codec::Gzip),
        [0xfd, b'7', b'z', b'X', b'Z', 0x00, ..] => Some(Codec::Xz),
        [0x28, 0xb5, 0x2f, 0xfd, ..] => Some(Codec::Zstd),
        // A skippable frame first (pzstd writes one before its frames).
        [m, 0x2a, 0x4d, 0x18, ..] if m & 0xf0 == 0x50 => Some(Codec::Zstd),
        _ => None,
    }
}

/// Why a compressed stream could not be decoded.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CompressError {
    /// The stream ended in the middle of a member/stream/frame.
    #[error("the {0} stream is truncated")]
    Truncated(Codec),
    /// Bytes follow the last complete member that are not another member.
    #[error("unexpected data after the end of the {0} stream")]
    TrailingGarbage(Codec),
    /// The stream is not valid.
    #[error("the {codec} stream is corrupt: {why}")]
    Corrupt {
        /// Which compression.
        codec: Codec,
        /// What the decoder said.
        why: String,
    },
    /// The next stage refused the output (it stopped, or the image is too big).
    #[error(transparent)]
    Output(#[from] io::Error),
}

fn corrupt(codec: Codec, why: impl std::fmt::Display) -> CompressError {
    CompressError::Corrupt {
        codec,
        why: why.to_string(),
    }
}

/// Where decompressed bytes go: full buffers of [`CHUNK`] bytes (the last one shorter), owned,
/// so the next stage takes them without a copy.
pub(crate) struct Output<'a> {
    buf: Vec<u8>,
    emit: &'a mut dyn FnMut(Bytes) -> io::Result<()>,
    total: u64,
}

impl<'a> Output<'a> {
    /// Output handed to `emit`.
    pub(crate) fn new(emit: &'a mut dyn FnMut(Bytes) -> io::Result<()>) -> Self {
        Output {
            buf: Vec::with_capacity(CHUNK),
            emit,
            total: 0,
        }
    }

    /// Bytes produced so far.
    pub(crate) fn total(&self) -> u64 {
        self.total + self.buf.len() as u64
    }

    /// The buffer to decode into, with room in it.
    fn room(&mut self) -> io::Result<&mut Vec<u8>> {
        if self.buf.len() == self.buf.capacity() {
            self.flush()?;
        }
        Ok(&mut self.buf)
    }

    /// Hands out what is buffered.
    pub(crate) fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let full = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.total += full.len() as u64;
        (self.emit)(Bytes::from(full))
    }

    /// Hands out a whole decoded piece (a zstd frame decoded apart) after what is buffered,
    /// in views of at most [`CHUNK`] bytes of the same allocation: no copy.
    fn put(&mut self, mut piece: Bytes) -> io::Result<()> {
        self.flush()?;
        while !piece.is_empty() {
            let view = piece.split_to(piece.len().min(CHUNK));
            self.total += view.len() as u64;
            (self.emit)(view)?;
        }
        Ok(())
    }
}

/// A decompressor fed the compressed bytes in order.
pub(crate) trait Inflate: Send {
    /// The next compressed bytes.
    fn feed(&mut self, input: &[u8], out: &mut Output<'_>) -> Result<(), CompressError>;
    /// The end of the compressed bytes: flushes the rest and checks the stream ended cleanly.
    /// Does not flush `out` itself.
    fn finish(&mut self, out: &mut Output<'_>) -> Result<(), CompressError>;
}

/// Threads and memory a decompressor may use to decode parts of a file at once (settings
/// `decompress_threads`, `decompress_memory_mib`; `rivet::deploy::decode::DecompressLimits`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Threads decoding at once (xz blocks, zstd frames); 1 decodes on the stage's own thread.
    pub threads: usize,
    /// Bytes held for that (xz: liblzma's threading memory limit; zstd: frames in flight and
    /// decoded frames not yet written); past it, fewer threads work.
    pub memory: u64,
}

impl Limits {
    /// From the settings: `auto` is one thread fewer than the CPUs (at least one), since the
    /// download, the hash and the disk writer need a CPU too; on 2 CPUs a deploy is already
    /// CPU-bound with one decoding thread (bench/RESULTS.md).
    pub fn new(threads: crate::config::Threads, memory_mib: u64) -> Self {
        let threads = match threads {
            crate::config::Threads::Count(n) => usize::from(n),
            crate::config::Threads::Auto => std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .saturating_sub(1)
                .max(1),
        };
        Limits {
            threads,
            memory: memory_mib << 20,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits::new(crate::config::Threads::Auto, 32)
    }
}

/// A decompressor for `codec`.
pub(crate) fn inflater(codec: Codec, limits: Limits) -> Result<Box<dyn Inflate>, CompressError> {
    Ok(match codec {
        Codec::Gzip => Box::new(gzip::Gzip::new()),
        Codec::Xz => Box::new(xz::Xz::new(limits)?),
        Codec::Zstd => Box::new(zstd_frames::Zstd::new(limits)?),
    })
}

/// Decompresses a whole file into `dst` (the temp-file path, for images that cannot stream).
/// Returns the decompressed length; fails past `limit` bytes.
pub(crate) fn decompress_file(
    codec: Codec,
    src: &mut dyn io::Read,
    dst: &mut dyn io::Write,
    limit: u64,
    limits: Limits,
) -> Result<u64, CompressError> {
    let mut inf = inflater(codec, limits)?;
    let mut emit = |b: Bytes| dst.write_all(&b);
    let mut out = Output::new(&mut emit);
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        inf.feed(&buf[..n], &mut out)?;
        if out.total() > limit {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC).into());
        }
    }
    inf.finish(&mut out)?;
    out.flush()?;
    if out.total() > limit {
        return Err(io::Error::from_raw_os_error(libc::ENOSPC).into());
    }
    Ok(out.total())
}

mod gzip;
mod xz;
mod zstd_frames;
mod zstd_scan;

#[cfg(test)]
mod tests;
