//! Config drives (docs/data-path.md#config-drive): the `configdrive` argument turned into image bytes (IPA's
//! `get_configdrive`, §10.1), checked without mounting, and rebuilt as vfat where an ISO 9660
//! image will not do (4K-sector disks, `config_drive_rebuild`, §10.2 step 5).
//!
//! This module does no HTTP and no disk I/O: [`materialise`] takes the fetcher as a parameter,
//! and writing the partition is the caller's job.
//!
//! Where rivet differs from IPA:
//! - base64 is decoded exactly as Python's `base64.b64decode` does (non-alphabet characters
//!   skipped, padding required, data after a complete pad sequence ignored), so the errors read
//!   the same: `... malformed. Error: Incorrect padding.` (`Error` is the class name Python
//!   prints for `binascii.Error`);
//! - a downloaded body that already is an ISO 9660 or vfat image, or holds not a single base64
//!   character, is taken as the image as is (IPA would try to base64-decode an image, which
//!   usually fails and then takes it as is; rivet decides by the magic instead of by chance);
//! - the decompressed size is capped at 64 MiB while decompressing (past it the rest is only
//!   counted, up to 4 GiB, to report the size), so a gzip bomb cannot exhaust memory.

mod error;
pub(crate) mod iso9660;

use std::io::{self, Cursor, Read, Write};

use crate::errors::AgentError;
use error::Base64Error;
pub(crate) use error::{DriveError, FetchFailure, RebuildError};

/// `MAX_CONFIG_DRIVE_SIZE_MB`: config drives larger than 64 MiB are refused.
pub(crate) const MAX_CONFIG_DRIVE_SIZE: u64 = 64 << 20;

const MIB: u64 = 1 << 20;

/// Past [`MAX_CONFIG_DRIVE_SIZE`], decompressed bytes are only counted, up to this many.
const COUNT_LIMIT: u64 = 4 << 30;

/// The label a config drive carries (compared case-insensitively).
const LABEL: &str = "config-2";

/// The vfat label [`rebuild_vfat`] writes, as `mkfs -t vfat -n CONFIG-2` does.
const VFAT_LABEL: &[u8; 11] = b"CONFIG-2   ";

/// Logical sector size of the vfat [`rebuild_vfat`] makes: 4096 mounts on 4K-sector disks
/// (where a 512-byte-sector FAT does not) as well as on 512-byte ones.
const VFAT_SECTOR: u16 = 4096;

/// Smallest vfat image [`rebuild_vfat`] makes when the partition allows it: big enough that
/// the cluster count sits well inside FAT16's range.
const MIN_VFAT: u64 = 32 << 20;

/// What kind of file system image a config drive is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DriveKind {
    /// ISO 9660 (what Nova and Ironic build: `genisoimage -R -J -V config-2`).
    Iso9660,
    /// FAT12/16/32.
    Vfat,
    /// Anything else.
    Unknown,
}

/// Turns the `configdrive` argument into the image bytes (docs/data-path.md#config-drive).
///
/// `configdrive` is either an `http://` / `https://` URL (case-insensitive), fetched with
/// `fetch`, or the image itself, gzipped and base64-encoded. `fetch` must use the agent's TLS
/// settings and `image_download_connection_timeout`, no proxy and no authentication, and
/// return `Err` for a transport error or an HTTP status >= 400.
///
/// Errors are `DeploymentError`s with IPA's texts; an empty decoded string gives an empty
/// image, as in IPA (Ironic never sends one: an empty `configdrive` means none).
pub(crate) fn materialise(
    node: &str,
    configdrive: &str,
    fetch: &dyn Fn(&str) -> Result<Vec<u8>, FetchFailure>,
) -> Result<Vec<u8>, AgentError> {
    let image = if is_http_url(configdrive) {
        let data = fetch(configdrive).map_err(|e| {
            AgentError::Deployment(format!(
                "Can't download the configdrive content for node {node} from '{configdrive}'. Reason: {e}"
            ))
        })?;
        from_download(node, data)?
    } else {
        from_string(node, configdrive)?
    };
    if image.len() as u64 > MAX_CONFIG_DRIVE_SIZE {
        return Err(too_big(node, image.len() as u64));
    }
    Ok(image)
}

/// IPA's `_is_http_url`: starts with `http://` or `https://`, in any case.
fn is_http_url(s: &str) -> bool {
    let b = s.as_bytes();
    [&b"http://"[..], &b"https://"[..]]
        .iter()
        .any(|p| b.len() >= p.len() && b[..p.len()].eq_ignore_ascii_case(p))
}

/// A downloaded body: gzip+base64 text, or an uncompressed image.
fn from_download(node: &str, data: Vec<u8>) -> Result<Vec<u8>, AgentError> {
    if kind(&data) != DriveKind::Unknown {
        return Ok(data);
    }
    match b64decode(&data) {
        Ok(gz) if !gz.is_empty() || data.is_empty() => gunzip(node, &gz),
        Ok(_) => {
            tracing::warn!(
                "Config drive for node {node} is not base64 encoded (no base64 data), assuming binary"
            );
            Ok(data)
        }
        Err(e) => {
            tracing::warn!(
                "Config drive for node {node} is not base64 encoded ({e}), assuming binary"
            );
            Ok(data)
        }
    }
}

/// The `configdrive` string itself: gzip+base64, nothing else.
fn from_string(node: &str, configdrive: &str) -> Result<Vec<u8>, AgentError> {
    let malformed = |cls: &str, err: &str| {
        AgentError::Deployment(format!(
            "Config drive for node {node} is not base64 encoded or the content is malformed. {cls}: {err}."
        ))
    };
    if !configdrive.is_ascii() {
        // What Python's b64decode raises for a str with non-ASCII characters.
        return Err(malformed(
            "ValueError",
            "string argument should contain only ASCII characters",
        ));
    }
    let gz = b64decode(configdrive.as_bytes()).map_err(|e| malformed("Error", &e.to_string()))?;
    gunzip(node, &gz)
}

/// `DeploymentError` for a config drive over 64 MiB; the size is rounded up to whole MiB.
fn too_big(node: &str, bytes: u64) -> AgentError {
    let mib = bytes.div_ceil(MIB);
    AgentError::Deployment(format!(
        "Config drive size exceeds maximum limit of 64MiB. Size of the given config drive is {mib} MiB for node {node}."
    ))
}

/// Decompresses (all members of) a gzip stream, keeping at most 64 MiB + 1 byte.
fn gunzip(node: &str, gz: &[u8]) -> Result<Vec<u8>, AgentError> {
    if gz.is_empty() {
        // Python's gzip module reads an empty stream as empty.
        return Ok(Vec::new());
    }
    let fail = |e: io::Error| {
        AgentError::Deployment(format!(
            "Encountered error while decompressing and writing config drive for node {node}. Error: {e}"
        ))
    };
    let mut decoder = flate2::read::MultiGzDecoder::new(gz);
    let mut image = Vec::new();
    Read::take(&mut decoder, MAX_CONFIG_DRIVE_SIZE + 1)
        .read_to_end(&mut image)
        .map_err(fail)?;
    if image.len() as u64 > MAX_CONFIG_DRIVE_SIZE {
        // Only count the rest, to report the size as IPA does.
        let mut rest = Read::take(&mut decoder, COUNT_LIMIT);
        let counted = io::copy(&mut rest, &mut io::sink()).map_err(fail)?;
        return Err(too_big(node, image.len() as u64 + counted));
    }
    Ok(image)
}

/// The value of one base64 character, `None` outside the standard alphabet.
fn sextet(c: u8) -> Option<u8> {
    match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    }
}

/// Python's `base64.b64decode(data)` (`binascii.a2b_base64`, not strict): characters outside
/// the alphabet are skipped, `=` ends the data once it completes a quad (anything after is
/// ignored), and a last quad that is incomplete is an error with Python's message.
fn b64decode(data: &[u8]) -> Result<Vec<u8>, Base64Error> {
    let mut out = Vec::with_capacity(data.len() / 4 * 3 + 3);
    let mut quad_pos = 0u8;
    let mut left = 0u8;
    let mut pads = 0u8;
    for &c in data {
        if c == b'=' {
            if quad_pos >= 2 {
                pads += 1;
                if quad_pos + pads >= 4 {
                    return Ok(out);
                }
            }
            continue;
        }
        let Some(v) = sextet(c) else {
            continue;
        };
        pads = 0;
        match quad_pos {
            0 => {
                left = v;
                quad_pos = 1;
            }
            1 => {
                out.push((left << 2) | (v >> 4));
                left = v & 0x0f;
                quad_pos = 2;
            }
            2 => {
                out.push((left << 4) | (v >> 2));
                left = v & 0x03;
                quad_pos = 3;
            }
            _ => {
                out.push((left << 6) | v);
                left = 0;
                quad_pos = 0;
            }
        }
    }
    match quad_pos {
        0 => Ok(out),
        1 => Err(Base64Error::OneTooMany(out.len() / 3 * 4 + 1)),
        _ => Err(Base64Error::IncorrectPadding),
    }
}

/// What kind of image `img` is, from its magic: an ISO 9660 volume descriptor at byte 32768
/// (`CD001` at 32769), or a FAT boot sector (`0x55AA` at 510, `FAT` at 54 or 82).
pub(crate) fn kind(img: &[u8]) -> DriveKind {
    let iso = img
        .get(32768..32774)
        .is_some_and(|d| (d[0] <= 3 || d[0] == 255) && d[1..].starts_with(b"CD001"));
    if iso {
        return DriveKind::Iso9660;
    }
    let fat = img.get(..512).is_some_and(|b| {
        b[510] == 0x55
            && b[511] == 0xAA
            && (b[54..].starts_with(b"FAT") || b[82..].starts_with(b"FAT"))
    });
    if fat {
        DriveKind::Vfat
    } else {
        DriveKind::Unknown
    }
}

/// The file system label at the start of `head` (at least 34 KiB of a partition): an ISO 9660
/// volume id or a FAT volume label; `None` for anything else.
pub(crate) fn label(head: &[u8]) -> Option<String> {
    match kind(head) {
        DriveKind::Iso9660 => iso9660::volume_label(head),
        DriveKind::Vfat => vfat_label(head),
        DriveKind::Unknown => None,
    }
}

/// The label in a FAT boot sector (FAT12/16 at 43, FAT32 at 71), trimmed: the one FAT label
/// reader.
fn vfat_label(img: &[u8]) -> Option<String> {
    let b = img.get(..512)?;
    let at = if b[54..].starts_with(b"FAT") { 43 } else { 71 };
    Some(
        String::from_utf8_lossy(&b[at..at + 11])
            .trim_end()
            .to_string(),
    )
}

/// Checks, without mounting, that `img` is a usable config drive: an ISO 9660 image labelled
/// `config-2` (any case) with an `openstack/` or `ec2/` directory, or a vfat image labelled
/// `config-2` (any case) with one of those directories. The error says what is wrong.
pub(crate) fn check(img: &[u8]) -> Result<(), DriveError> {
    match kind(img) {
        DriveKind::Iso9660 => {
            let label = iso9660::volume_label(img).unwrap_or_default();
            if !label.eq_ignore_ascii_case(LABEL) {
                return Err(DriveError::WrongLabel {
                    kind: "ISO 9660",
                    label,
                });
            }
            let files = iso9660::list_files(img)?;
            let has_metadata = files
                .iter()
                .any(|(p, _)| p.starts_with("openstack/") || p.starts_with("ec2/"));
            if has_metadata {
                Ok(())
            } else {
                Err(DriveError::NoMetadata("ISO 9660"))
            }
        }
        DriveKind::Vfat => {
            let label = vfat_label(img).unwrap_or_default();
            if !label.eq_ignore_ascii_case(LABEL) {
                return Err(DriveError::WrongLabel {
                    kind: "vfat",
                    label,
                });
            }
            if vfat_has_metadata(img)? {
                Ok(())
            } else {
                Err(DriveError::NoMetadata("vfat"))
            }
        }
        DriveKind::Unknown => Err(DriveError::Unknown),
    }
}

/// Whether a vfat image has an `openstack` or `ec2` directory (read from a copy: `fatfs` wants
/// a writable disk).
fn vfat_has_metadata(img: &[u8]) -> Result<bool, DriveError> {
    let fs = fatfs::FileSystem::new(Cursor::new(img.to_vec()), fatfs::FsOptions::new())
        .map_err(DriveError::Vfat)?;
    let root = fs.root_dir();
    let found = root.open_dir("openstack").is_ok() || root.open_dir("ec2").is_ok();
    Ok(found)
}

/// Builds a vfat image labelled `CONFIG-2` holding the files of the ISO 9660 config drive
/// `iso`, natively (what IPA does with a loop mount, `mkfs -t vfat -n CONFIG-2` and a copy).
///
/// Size: the files plus half as much again, a sector per file and 1 MiB for the FATs and
/// directories, at least 32 MiB, but never more than `size` (the partition), in whole MiB.
/// Sectors are 4096 bytes, so the result mounts on 4K-sector disks too. Empty directories of
/// the ISO are not carried over.
pub(crate) fn rebuild_vfat(iso: &[u8], size: u64) -> Result<Vec<u8>, RebuildError> {
    let files = iso9660::list_files(iso)?;
    let payload: u64 = files.iter().map(|(_, d)| d.len() as u64).sum();
    let need = payload + payload / 2 + files.len() as u64 * u64::from(VFAT_SECTOR) + MIB;
    let total = need.max(MIN_VFAT).min(size) / MIB * MIB;
    if total < need {
        return Err(RebuildError::TooSmall { size, payload });
    }
    // A size can be unfortunate for the FAT geometry; a slightly smaller one then does.
    let mut last_err = RebuildError::TooSmall { size, payload };
    for shrink in 0..3 {
        let Some(bytes) = total.checked_sub(shrink * MIB) else {
            break;
        };
        if bytes < need {
            break;
        }
        match build_vfat(&files, bytes) {
            Ok(img) => return Ok(img),
            Err(e) => last_err = e,
        }
    }
    Err(last_err)
}

/// Formats a vfat image of `bytes` bytes and copies `files` into it.
fn build_vfat(files: &[(String, Vec<u8>)], bytes: u64) -> Result<Vec<u8>, RebuildError> {
    let len = usize::try_from(bytes).map_err(|_| RebuildError::TooLarge(bytes))?;
    let mut disk = Cursor::new(vec![0u8; len]);
    let options = fatfs::FormatVolumeOptions::new()
        .bytes_per_sector(VFAT_SECTOR)
        .volume_label(*VFAT_LABEL);
    fatfs::format_volume(&mut disk, options)
        .map_err(|source| RebuildError::Format { bytes, source })?;
    disk.set_position(0);
    let fs =
        fatfs::FileSystem::new(&mut disk, fatfs::FsOptions::new()).map_err(RebuildError::Open)?;
    copy_files(&fs, files)?;
    fs.unmount().map_err(RebuildError::Finish)?;
    Ok(disk.into_inner())
}

/// Writes `files` (paths relative to the root) into `fs`, creating their directories.
fn copy_files<T: fatfs::ReadWriteSeek>(
    fs: &fatfs::FileSystem<T>,
    files: &[(String, Vec<u8>)],
) -> Result<(), RebuildError> {
    let root = fs.root_dir();
    for (path, data) in files {
        let failed = |source: io::Error| RebuildError::Write {
            path: path.clone(),
            source,
        };
        for (i, _) in path.match_indices('/') {
            root.create_dir(&path[..i]).map_err(failed)?;
        }
        let mut file = root.create_file(path).map_err(failed)?;
        file.truncate().map_err(failed)?;
        file.write_all(data).map_err(failed)?;
        file.flush().map_err(failed)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
