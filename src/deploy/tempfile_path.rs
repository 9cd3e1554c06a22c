//! The temp-file path: download to a local file (hashing as it lands), verify, inspect, then
//! `qemu-img convert` onto the disk (IPA's only path for non-raw images). Used for formats
//! that cannot stream and qcow2 layouts that need random access; the disk is not touched
//! before the digest matched and the inspector passed.
//!
//! The copy is an anonymous file (`O_TMPFILE`, or created and unlinked at once): it has no
//! name from the start, so it disappears with its last descriptor on every way out, SIGTERM
//! and SIGKILL included; qemu-img reads it as `/proc/<pid>/fd/<n>`. Named copies an older
//! rivet left (`rivet-image-*`) are removed at start-up ([`remove_leftovers`]).

use std::io::{Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use super::decode::WritePath;
use super::pipeline::{checksum_error, finish_disk, write_error, Written};
use crate::disk::device::Target;
use crate::errors::{AgentError, Result};
use crate::image::checksum::{Expected, Hasher};
use crate::image::fetch::{ImageDownload, Sink};
use crate::image::format::convert;
use crate::image::format::inspect::{self, Format, INSPECT_LEN, TAIL_LEN};
use crate::image::info::ImageInfo;

use super::pipeline::DeployOptions;

struct FileSink<'a> {
    file: &'a mut std::fs::File,
    path: &'a Path,
    hasher: Hasher,
    image_id: &'a str,
}

impl FileSink<'_> {
    fn io(&self, e: std::io::Error) -> AgentError {
        let msg = format!(
            "Unable to write image to {}. Error: {e}",
            self.path.display()
        );
        if e.raw_os_error() == Some(libc::ENOSPC) {
            AgentError::out_of_space(self.image_id, msg)
        } else {
            AgentError::download(self.image_id, msg)
        }
    }
}

impl Sink for FileSink<'_> {
    fn expect_len(&mut self, _len: u64) -> Result<()> {
        Ok(())
    }

    fn data(&mut self, bytes: Bytes) -> Result<()> {
        self.hasher.update(&bytes);
        self.file.write_all(&bytes).map_err(|e| self.io(e))
    }

    fn reset(&mut self) -> Result<()> {
        self.hasher.reset();
        self.file.set_len(0).map_err(|e| self.io(e))?;
        self.file.rewind().map_err(|e| self.io(e))
    }
}

/// The first [`INSPECT_LEN`] and the last [`TAIL_LEN`] bytes of the file (fewer if shorter).
fn head_and_tail(f: &std::fs::File) -> std::io::Result<(Vec<u8>, Vec<u8>)> {
    use std::os::unix::fs::FileExt;
    let len = f.metadata()?.len();
    let read = |at: u64, n: u64| -> std::io::Result<Vec<u8>> {
        let mut buf = vec![0u8; n as usize];
        f.read_exact_at(&mut buf, at)?;
        Ok(buf)
    };
    let head = read(0, len.min(INSPECT_LEN as u64))?;
    let tail_len = len.min(TAIL_LEN as u64);
    let tail = read(len - tail_len, tail_len)?;
    Ok((head, tail))
}

/// The prefix of the named copies older versions of rivet made.
const LEFTOVER_PREFIX: &str = "rivet-image-";

/// Removes the copies a previous run left in `dir` (files named `rivet-image-*`); returns how
/// many. Called once at start-up by `rivet serve` and `rivet deploy`.
pub(crate) fn remove_leftovers(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name();
        let stale = name.to_string_lossy().starts_with(LEFTOVER_PREFIX)
            && e.file_type().is_ok_and(|t| t.is_file());
        if !stale {
            continue;
        }
        match std::fs::remove_file(e.path()) {
            Ok(()) => {
                tracing::warn!(path = %e.path().display(), "removed an image copy a previous run left");
                removed += 1;
            }
            Err(err) => {
                tracing::warn!(path = %e.path().display(), "cannot remove a leftover image copy: {err}")
            }
        }
    }
    removed
}

/// Where the temp-file path keeps its copy: `image_tmp_dir`, else the system's temp dir.
pub(crate) fn tmp_dir(configured: Option<&Path>) -> PathBuf {
    configured
        .map(Path::to_path_buf)
        .unwrap_or_else(std::env::temp_dir)
}

/// What qemu-img opens: this process's descriptor of a nameless file.
fn fd_path(file: &std::fs::File) -> PathBuf {
    PathBuf::from(format!(
        "/proc/{}/fd/{}",
        std::process::id(),
        file.as_raw_fd()
    ))
}

/// Deploys `info` through a temporary copy. `hint` is the format the stream showed, if a
/// streaming attempt came first.
pub(super) fn deploy(
    dl: &mut ImageDownload,
    info: &ImageInfo,
    target: &Arc<Target>,
    expected: &Expected,
    opts: &DeployOptions,
    hint: Option<Format>,
) -> Result<Written> {
    let dir = tmp_dir(opts.tmp_dir.as_deref());
    let mut file = tempfile::tempfile_in(&dir).map_err(|e| {
        AgentError::download(
            &info.id,
            format!(
                "Unable to create a temporary file in {}: {e}",
                dir.display()
            ),
        )
    })?;
    let path = fd_path(&file);
    tracing::info!(
        dir = %dir.display(),
        format = hint.map(Format::name).unwrap_or("not yet known"),
        "temp-file path: downloading to a local copy"
    );
    let mut sink = FileSink {
        file: &mut file,
        path: &path,
        hasher: expected.algo.hasher(),
        image_id: &info.id,
    };
    let url = dl.run(&mut sink)?;
    let digest = std::mem::replace(&mut sink.hasher, expected.algo.hasher()).hex_digest();
    file.flush().map_err(|e| write_error(info, &path, &e))?;
    if !expected.matches(&digest) {
        return Err(checksum_error(info, &path, &digest, expected));
    }
    // A compressed copy: the inspector and qemu-img see the image inside (nameless too).
    let (file, path) = match super::decompress::unpack_file(
        &path,
        &dir,
        target.capacity(),
        &info.id,
        opts.decompress,
    )? {
        Some(inner) => {
            let p = fd_path(&inner);
            (inner, p)
        }
        None => (file, path),
    };
    let (head, tail) = head_and_tail(&file).map_err(|e| write_error(info, &path, &e))?;
    let p = &opts.policy;
    let found = inspect::check(&head, p.disk_format.as_deref(), &p.permitted, p.deep)?;
    // What only the end of the file can tell (a VMDK footer qemu-img would prefer over the
    // header just checked), before qemu-img sees the file.
    if p.deep {
        inspect::check_tail(&head, &tail)?;
    }
    let format = match found.format {
        Format::Gpt => Format::Raw, // qemu-img has no "gpt" driver: a GPT disk is raw
        f => f,
    };
    // qemu-img names VHD's driver "vpc".
    let qemu_format = match format {
        Format::Vhd => "vpc",
        f => f.name(),
    };
    let size = convert::virtual_size(&path, qemu_format)?;
    if let Some(cap) = target.capacity().filter(|&c| size > c) {
        return Err(AgentError::out_of_space(
            &info.id,
            format!(
                "Unable to write image to device {}. Error: the image is {size} bytes but the \
                 device holds only {cap} bytes",
                target.path().display()
            ),
        ));
    }
    // qemu-img writes behind the target's back: from here on the disk counts as written.
    target.mark_touched();
    convert::qemu_img_convert(&path, qemu_format, target.path(), target.is_block())?;
    let gpt = finish_disk(info, target, size)?;
    tracing::info!(image = %info.id, bytes = size, "image converted by qemu-img and written");
    drop(file); // the copy's last descriptor: its space is freed
    Ok(Written {
        url,
        bytes: size,
        algo: expected.algo,
        digest,
        gpt,
        path: WritePath::TempFile,
    })
}
