//! The install target: a block device (or a regular file standing in for one).
//!
//! A whole disk is opened with `O_EXCL`, so the kernel refuses if it or one of its partitions
//! is mounted or held (IPA's `fuser` check cannot work where root cannot read `/proc/1/fd`).
//! Bulk writes go through a second descriptor opened with `O_DIRECT` where the device takes it,
//! so the page cache neither slows the copy nor holds gigabytes of dirty pages.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Bytes at the start and at the end of a disk that hold partition tables (MBR, GPT and its
/// backup) and boot code: wiped on failure, held back until the image is verified.
pub(crate) const TABLE_AREA: u64 = 1 << 20;

/// Opens a whole disk read-write with `O_EXCL`: the kernel refuses while the disk or one of
/// its partitions is mounted or held. The one place rivet claims a disk.
pub(crate) fn open_exclusive(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_EXCL | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| annotate(e, path, "cannot open the device exclusively"))
}

/// Wipes the target's partition-table areas when dropped, unless [`WipeOnFailure::disarm`]
/// was called: armed by the first write to the target (its `touched` flag), disarmed by the
/// caller once the whole deploy finished. Every error exit, early returns and panics included,
/// leaves a disk that cannot boot a half-written image; a refusal before the first write
/// loses nothing.
pub struct WipeOnFailure<'a> {
    target: &'a Target,
    finished: bool,
}

impl WipeOnFailure<'_> {
    /// The deploy finished: keep what was written.
    pub fn disarm(mut self) {
        self.finished = true;
    }
}

impl Drop for WipeOnFailure<'_> {
    fn drop(&mut self) {
        if self.finished || !self.target.touched() {
            return;
        }
        tracing::warn!(
            "wiping the partition tables of {}",
            self.target.path().display()
        );
        if let Err(e) = self.target.wipe_tables() {
            tracing::error!("could not wipe {}: {e}", self.target.path().display());
        }
    }
}

/// An opened install target.
#[derive(Debug)]
pub struct Target {
    path: PathBuf,
    file: File,
    direct: Option<File>,
    block: bool,
    capacity: Option<u64>,
    sector_size: u64,
    /// Set (never cleared) once anything was written: what a failure must then wipe.
    touched: std::sync::atomic::AtomicBool,
}

impl Target {
    /// Opens `path` for writing an image. Block devices are opened exclusively; a missing or
    /// empty regular file is created and grows with the image (no capacity limit); an existing
    /// regular file of non-zero size counts as a disk of that size.
    pub fn open(path: &Path, use_direct: bool) -> io::Result<Target> {
        let meta = std::fs::metadata(path);
        let block = meta
            .as_ref()
            .map(|m| m.file_type().is_block_device())
            .unwrap_or(false);
        if block {
            let mut file = open_exclusive(path)?;
            let capacity = file.seek(SeekFrom::End(0))?;
            let sector_size = rustix::fs::ioctl_blksszget(&file)
                .map(u64::from)
                .unwrap_or(512);
            // O_EXCL is held by `file`; the direct descriptor shares the claim of this process.
            let direct = if use_direct {
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .custom_flags(libc::O_DIRECT | libc::O_CLOEXEC)
                    .open(path)
                    .map_err(|e| tracing::debug!("O_DIRECT refused on {}: {e}", path.display()))
                    .ok()
            } else {
                None
            };
            Ok(Target {
                path: path.to_owned(),
                file,
                direct,
                block: true,
                capacity: Some(capacity),
                sector_size,
                touched: Default::default(),
            })
        } else {
            if let Ok(m) = &meta {
                if !m.is_file() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!(
                            "{} is neither a block device nor a regular file",
                            path.display()
                        ),
                    ));
                }
            }
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)
                .map_err(|e| annotate(e, path, "cannot open the target file"))?;
            let len = file.metadata()?.len();
            Ok(Target {
                path: path.to_owned(),
                file,
                direct: None,
                block: false,
                capacity: (len > 0).then_some(len),
                sector_size: 512,
                touched: Default::default(),
            })
        }
    }

    /// The path the target was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether this is a block device.
    pub fn is_block(&self) -> bool {
        self.block
    }

    /// Size in bytes, when the target has a fixed size.
    pub fn capacity(&self) -> Option<u64> {
        self.capacity
    }

    /// Logical sector size (512 for files).
    pub fn sector_size(&self) -> u64 {
        self.sector_size
    }

    /// The descriptor for ordinary (page-cache) I/O.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The `O_DIRECT` descriptor, when there is one.
    pub fn direct(&self) -> Option<&File> {
        self.direct.as_ref()
    }

    /// A guard that wipes the tables if the deploy does not finish (see [`WipeOnFailure`]).
    pub fn wipe_on_failure(&self) -> WipeOnFailure<'_> {
        WipeOnFailure {
            target: self,
            finished: false,
        }
    }

    /// Records that the disk has been written to.
    pub fn mark_touched(&self) {
        self.touched
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether anything was written to the disk (by this process, through this target).
    pub fn touched(&self) -> bool {
        self.touched.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Flushes written data to the device.
    pub fn sync(&self) -> io::Result<()> {
        if let Some(d) = &self.direct {
            d.sync_data()?;
        }
        self.file.sync_data()
    }

    /// Zeroes the partition-table areas at both ends, so a half-written disk cannot boot.
    pub fn wipe_tables(&self) -> io::Result<()> {
        let zeros = vec![0u8; TABLE_AREA as usize];
        let end = match self.capacity {
            Some(c) => c,
            None => self.file.metadata()?.len(),
        };
        let head = end.min(TABLE_AREA);
        self.file.write_all_at(&zeros[..head as usize], 0)?;
        if end > TABLE_AREA {
            let start = end.saturating_sub(TABLE_AREA).max(TABLE_AREA);
            self.file
                .write_all_at(&zeros[..(end - start) as usize], start)?;
        }
        self.file.sync_data()
    }

    /// Makes `[start, end)` read as zeros: the device zeroes it itself where it can
    /// (BLKZEROOUT on block devices, a punched hole in files), else zero buffers are written.
    /// Old data must never show through a hole of a sparse image.
    pub fn zero(&self, start: u64, end: u64) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        if end <= start {
            return Ok(());
        }
        self.mark_touched();
        let len = end - start;
        let done = if self.block {
            // BLKZEROOUT = _IO(0x12, 127), argument: [start, len] in bytes.
            const BLKZEROOUT: libc::c_ulong = 0x127f;
            let range = [start, len];
            let aligned =
                start.is_multiple_of(self.sector_size) && len.is_multiple_of(self.sector_size);
            // SAFETY: the ioctl reads two u64 from `range`, which lives across the call.
            aligned
                && unsafe { libc::ioctl(self.file.as_raw_fd(), BLKZEROOUT as _, range.as_ptr()) }
                    == 0
        } else {
            rustix::fs::fallocate(
                &self.file,
                rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
                start,
                len,
            )
            .is_ok()
                && self.file.metadata()?.len() >= end
        };
        if done {
            return Ok(());
        }
        let zeros = vec![0u8; (len.min(4 << 20)) as usize];
        let mut at = start;
        while at < end {
            let n = ((end - at) as usize).min(zeros.len());
            self.file.write_all_at(&zeros[..n], at)?;
            at += n as u64;
        }
        Ok(())
    }

    /// Zeroes the end-of-disk table area beyond an image of `image_len` bytes, so that a
    /// backup GPT left by an earlier image cannot be found (and "restored") later.
    pub fn clear_stale_tail(&self, image_len: u64) -> io::Result<()> {
        let Some(end) = self.capacity else {
            return Ok(());
        };
        let start = end.saturating_sub(TABLE_AREA).max(image_len);
        if start >= end {
            return Ok(());
        }
        let zeros = vec![0u8; (end - start) as usize];
        self.file.write_all_at(&zeros, start)?;
        self.file.sync_data()
    }

    /// Makes the kernel's partition list equal the table now on the disk (BLKRRPART, else
    /// BLKPG, as partprobe). Failures are logged: what was written stays written.
    pub fn rescan(&self) {
        if self.block {
            crate::disk::partitions::tell_kernel(&self.file, &self.path);
        }
    }
}

/// Runs `udevadm settle` when udev is running; quietly does nothing otherwise.
pub(crate) fn udev_settle() {
    if !Path::new("/run/udev/control").exists() {
        return;
    }
    match std::process::Command::new("udevadm")
        .args(["settle", "--timeout=30"])
        .status()
    {
        Ok(s) if !s.success() => tracing::warn!("udevadm settle exited with {s}"),
        Err(e) => tracing::debug!("udevadm settle: {e}"),
        _ => {}
    }
}

fn annotate(e: io::Error, path: &Path, what: &str) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regular_files_stand_in_for_disks() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("disk");
        let t = Target::open(&p, true).unwrap();
        assert!(!t.is_block());
        assert_eq!(t.capacity(), None);
        std::fs::write(&p, vec![7u8; 3 << 20]).unwrap();
        let t = Target::open(&p, true).unwrap();
        assert_eq!(t.capacity(), Some(3 << 20));
        t.wipe_tables().unwrap();
        let data = std::fs::read(&p).unwrap();
        assert!(data[..1 << 20].iter().all(|&b| b == 0));
        assert!(data[1 << 20..2 << 20].iter().all(|&b| b == 7));
        assert!(data[2 << 20..].iter().all(|&b| b == 0));
    }

    #[test]
    fn directories_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let e = Target::open(dir.path(), false).unwrap_err();
        assert!(e
            .to_string()
            .contains("neither a block device nor a regular file"));
    }
}
