//! The decode stage, between the network and the disk writer: looks at the first bytes of the
//! image (never its name or Content-Type), applies IPA's format rules, then either writes the
//! bytes as they are (raw, gpt) or converts qcow2 to raw on the fly. Anything else asks the
//! caller for the temp-file path.

use std::io;

use crate::disk::writer::DiskWriter;
use crate::errors::AgentError;
/// The compression of a compressed image ([`WritePath::Decompressed`]).
pub use crate::image::format::compress::Codec;
/// What the decompression stage of a compressed image may use (settings
/// `decompress_threads`, `decompress_memory_mib`).
pub use crate::image::format::compress::Limits as DecompressLimits;
use crate::image::format::inspect::{self, Format, INSPECT_LEN};
use crate::image::format::qcow2::{GuestSink, Qcow2Error, Qcow2Stream};

/// The format rules in force (Ironic's `disk_format`, `permitted_image_formats`,
/// `disable_deep_image_inspection`) and the spill budget of the qcow2 streamer.
#[derive(Debug, Clone)]
pub struct FormatPolicy {
    /// Ironic's `disk_format` (None or `unknown`: detect).
    pub disk_format: Option<String>,
    /// Formats allowed.
    pub permitted: Vec<String>,
    /// `!disable_deep_image_inspection`.
    pub deep: bool,
    /// Bytes a qcow2 stream may hold before its tables arrive.
    pub spill_budget: usize,
    /// Stream the image to the disk (raw as it is, qcow2 converted on the fly); false takes
    /// the temp-file path, as IPA does without `stream_raw_images`.
    pub stream: bool,
}

impl Default for FormatPolicy {
    fn default() -> Self {
        FormatPolicy {
            disk_format: None,
            permitted: vec!["raw".into(), "gpt".into(), "qcow2".into()],
            deep: true,
            spill_budget: 16 << 20,
            stream: true,
        }
    }
}

/// How the image was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WritePath {
    /// Bit for bit.
    Raw,
    /// qcow2 converted while streaming.
    Qcow2Stream,
    /// Downloaded to a temporary file, then `qemu-img convert`.
    TempFile,
    /// A compressed image decompressed while streaming: raw inside, or qcow2 converted.
    Decompressed {
        /// The compression.
        codec: Codec,
        /// The image inside was qcow2 (converted while streaming).
        qcow2: bool,
    },
}

/// Why the decode stage stopped.
#[derive(Debug)]
pub enum DecodeError {
    /// The image was refused (format rules, safety, size).
    Refused(AgentError),
    /// Writing failed.
    Io(io::Error),
    /// The image cannot be streamed: the caller should use the temp-file path.
    Fallback {
        /// The detected format.
        format: Format,
        /// Why.
        why: String,
    },
}

impl From<io::Error> for DecodeError {
    fn from(e: io::Error) -> Self {
        DecodeError::Io(e)
    }
}

enum Stage {
    Sniff(Vec<u8>),
    Raw,
    Qcow2(Box<Qcow2Stream>),
}

/// Bytes in, disk writes out.
pub struct Decoder {
    w: DiskWriter,
    stage: Stage,
    policy: FormatPolicy,
    capacity: Option<u64>,
    device: String,
    image_id: String,
    /// The download's announced length, when the server sent one.
    announced: Option<u64>,
}

impl GuestSink for DiskWriter {
    fn write_at(&mut self, off: u64, data: &[u8]) -> io::Result<()> {
        DiskWriter::write_at(self, off, data)
    }
}

impl Decoder {
    /// A decoder writing through `w` onto a device of `capacity` bytes.
    pub fn new(
        w: DiskWriter,
        policy: FormatPolicy,
        capacity: Option<u64>,
        device: String,
        image_id: String,
    ) -> Self {
        Decoder {
            w,
            stage: Stage::Sniff(Vec::with_capacity(INSPECT_LEN)),
            policy,
            capacity,
            device,
            image_id,
            announced: None,
        }
    }

    /// The server announced the file's length: a raw image longer than the device is refused
    /// before anything is written.
    pub fn expect_len(&mut self, len: u64) {
        self.announced = Some(len);
    }

    /// The next bytes of the downloaded file.
    pub fn push(&mut self, data: &[u8]) -> Result<(), DecodeError> {
        match &mut self.stage {
            Stage::Sniff(buf) => {
                buf.extend_from_slice(data);
                if buf.len() >= INSPECT_LEN {
                    self.decide()?;
                }
                Ok(())
            }
            Stage::Raw => {
                if let Some(e) = self.too_big(self.w.image_len() + data.len() as u64) {
                    return Err(e);
                }
                Ok(self.w.push(data)?)
            }
            Stage::Qcow2(q) => q.feed(data, &mut self.w).map_err(qcow2_error),
        }
    }

    /// The download restarts from byte 0.
    pub fn reset(&mut self) {
        self.w.reset();
        self.stage = Stage::Sniff(Vec::with_capacity(INSPECT_LEN));
    }

    fn too_big(&self, size: u64) -> Option<DecodeError> {
        let cap = self.capacity?;
        (size > cap).then(|| {
            DecodeError::Refused(AgentError::out_of_space(
                &self.image_id,
                format!(
                    "Unable to write image to device {}. Error: the image is {size} bytes but \
                     the device holds only {cap} bytes",
                    self.device
                ),
            ))
        })
    }

    fn decide(&mut self) -> Result<(), DecodeError> {
        let Stage::Sniff(buf) = std::mem::replace(&mut self.stage, Stage::Raw) else {
            return Ok(());
        };
        let p = &self.policy;
        let found = inspect::check(&buf, p.disk_format.as_deref(), &p.permitted, p.deep)
            .map_err(DecodeError::Refused)?;
        match found.format {
            f @ (Format::Raw | Format::Gpt | Format::Qcow2) if !self.policy.stream => {
                return Err(DecodeError::Fallback {
                    format: f,
                    why: "streaming is off (stream_raw_images false, or --temp-file)".into(),
                })
            }
            Format::Raw | Format::Gpt => {
                tracing::info!(
                    format = found.format.name(),
                    "writing the image as it is (raw)"
                );
                if let Some(e) = self.too_big(self.announced.unwrap_or(0).max(buf.len() as u64)) {
                    return Err(e);
                }
                self.w.push(&buf)?;
            }
            Format::Qcow2 => {
                let q = Qcow2Stream::new(&buf, self.policy.spill_budget).map_err(|e| match e {
                    Qcow2Error::NeedsFallback(why) => DecodeError::Fallback {
                        format: Format::Qcow2,
                        why,
                    },
                    other => qcow2_error(other),
                })?;
                if let Some(e) = self.too_big(q.header().virtual_size) {
                    return Err(e);
                }
                tracing::info!(
                    virtual_size = q.header().virtual_size,
                    cluster = 1u64 << q.header().cluster_bits,
                    "converting qcow2 to raw while it streams (no temporary copy)"
                );
                let mut q = Box::new(q);
                q.feed(&buf, &mut self.w).map_err(qcow2_error)?;
                self.stage = Stage::Qcow2(q);
            }
            other => {
                return Err(DecodeError::Fallback {
                    format: other,
                    why: format!("{} images are converted by qemu-img", other.name()),
                })
            }
        }
        Ok(())
    }

    /// The end of the download: zeroes the holes of a sparse image and drains the writer.
    pub fn finish(mut self) -> Result<(DiskWriter, WritePath), DecodeError> {
        if matches!(self.stage, Stage::Sniff(_)) {
            self.decide()?;
        }
        let path = match std::mem::replace(&mut self.stage, Stage::Raw) {
            Stage::Qcow2(q) => {
                let holes = q.finish(&mut self.w).map_err(qcow2_error)?;
                for (s, e) in holes {
                    self.w.zero_range(s, e)?;
                }
                WritePath::Qcow2Stream
            }
            _ => WritePath::Raw,
        };
        self.w.finish()?;
        Ok((self.w, path))
    }
}

fn qcow2_error(e: Qcow2Error) -> DecodeError {
    match e {
        Qcow2Error::Io(e) => DecodeError::Io(e),
        Qcow2Error::NeedsFallback(why) => DecodeError::Fallback {
            format: Format::Qcow2,
            why,
        },
        // IPA's exact text on the wire; the reason goes to the log.
        Qcow2Error::Unsafe(why) => {
            tracing::error!("qcow2 refused: {why}");
            DecodeError::Refused(AgentError::InvalidImage(
                "Security: Image failed safety check".into(),
            ))
        }
        Qcow2Error::Truncated(why) => {
            tracing::error!("qcow2 refused: the image is truncated: {why}");
            DecodeError::Refused(AgentError::InvalidImage(
                "Security: Image failed safety check".into(),
            ))
        }
    }
}
