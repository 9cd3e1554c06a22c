//! The temp-file path: download to a local file (hashing as it lands), verify, inspect, then
//! `qemu-img convert` onto the disk (IPA's only path for non-raw images). The file is removed
//! whatever happens. Used for formats that cannot stream and qcow2 layouts that need random
//! access; the disk is not touched before the digest matched and the inspector passed.

use std::io::{Seek, Write};
use std::path::Path;
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
fn head_and_tail(path: &Path) -> std::io::Result<(Vec<u8>, Vec<u8>)> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path)?;
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
    let dir = opts.tmp_dir.clone().unwrap_or_else(std::env::temp_dir);
    let tmp = tempfile::Builder::new()
        .prefix("rivet-image-")
        .tempfile_in(&dir)
        .map_err(|e| {
            AgentError::download(
                &info.id,
                format!(
                    "Unable to create a temporary file in {}: {e}",
                    dir.display()
                ),
            )
        })?;
    let path = tmp.path().to_owned();
    tracing::info!(
        path = %path.display(),
        format = hint.map(Format::name).unwrap_or("not yet known"),
        "temp-file path: downloading to a local copy"
    );
    let mut file = tmp.reopen().map_err(|e| write_error(info, &path, &e))?;
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
    let (head, tail) = head_and_tail(&path).map_err(|e| write_error(info, &path, &e))?;
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
    let gpt = finish_disk(target, size).map_err(|e| write_error(info, target.path(), &e))?;
    tracing::info!(image = %info.id, bytes = size, "image converted by qemu-img and written");
    drop(tmp); // removes the copy
    Ok(Written {
        url,
        bytes: size,
        algo: expected.algo,
        digest,
        gpt,
        path: WritePath::TempFile,
    })
}
