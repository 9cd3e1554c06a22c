//! One device being erased: what it is (kernel name, number, sysfs directory, size, sector
//! size) and the exclusive handle every write goes through.
//!
//! The device is looked up by its number, not its name: the erase tests run in a mount
//! namespace whose `/dev` holds a few hand-made nodes, and a ramdisk's names can differ.
//! Opening with O_EXCL makes the kernel refuse if anything holds the device or one of its
//! partitions (a mounted filesystem, swap, device-mapper, md), and keeps others out while we
//! write.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::error::DeviceError;
use super::kernel;

/// What a block device is, found without opening it for writing.
#[derive(Debug, Clone)]
pub(crate) struct DeviceInfo {
    /// The path the caller named (`/dev/sda`).
    pub path: PathBuf,
    /// Kernel name (`sda`, `nvme0n1`, `loop3`).
    pub kname: String,
    /// `(major, minor)`.
    pub dev: (u32, u32),
    /// `/sys/dev/block/M:m`, resolved.
    pub sysfs: PathBuf,
}

impl DeviceInfo {
    /// Looks the block device up by the number of its node.
    pub(super) fn lookup(path: &Path) -> Result<DeviceInfo, DeviceError> {
        let meta = std::fs::metadata(path).map_err(|e| DeviceError::new(path, "stat", e))?;
        if !meta.file_type().is_block_device() {
            return Err(DeviceError::other(path, "checking", "not a block device"));
        }
        let dev = kernel::dev_pair(meta.rdev());
        let sysfs = kernel::sysfs_dir(dev)
            .map_err(|e| DeviceError::new(path, "finding the sysfs entry of", e))?;
        let kname = sysfs
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(DeviceInfo {
            path: path.to_path_buf(),
            kname,
            dev,
            sysfs,
        })
    }

    /// The kernel's name for partition `n` of this disk, in the caller's directory
    /// (`/dev/sda1`, `/dev/nvme0n1p1`, `/dev/loop0p1`), as IPA names partitions.
    pub(super) fn partition_name(&self, n: u32) -> String {
        let base = self
            .path
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.kname.clone());
        let sep = if base.ends_with(|c: char| c.is_ascii_digit()) {
            "p"
        } else {
            ""
        };
        let dir = self.path.parent().unwrap_or(Path::new("/dev"));
        dir.join(format!("{base}{sep}{n}")).display().to_string()
    }

    /// NVMe namespace (IPA: the name starts with `/dev/nvme`).
    pub(super) fn is_nvme(&self) -> bool {
        self.kname.starts_with("nvme")
    }
}

/// Opens a device read-only, without claiming it (for probing).
pub(crate) fn open_read(path: &Path) -> Result<File, DeviceError> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| DeviceError::new(path, "opening", e))
}

/// A device opened for erasing: claimed exclusively, with its size and sector size.
#[derive(Debug)]
pub(crate) struct Disk {
    /// What it is.
    pub info: DeviceInfo,
    /// Read-write, O_EXCL: the claim lasts as long as this handle.
    pub file: File,
    /// Size in bytes.
    pub size: u64,
    /// Logical sector size.
    pub sector: u64,
}

impl Disk {
    /// Claims the device (O_EXCL): EBUSY means something uses it or one of its partitions.
    pub(super) fn open(info: &DeviceInfo) -> Result<Disk, DeviceError> {
        let path = &info.path;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_EXCL | libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| {
                let op = if e.raw_os_error() == Some(libc::EBUSY) {
                    "opening exclusively (it or one of its partitions is in use)"
                } else {
                    "opening exclusively"
                };
                DeviceError::new(path, op, e)
            })?;
        let size =
            kernel::size_bytes(&file).map_err(|e| DeviceError::new(path, "BLKGETSIZE64 on", e))?;
        let sector =
            kernel::logical_sector(&file).map_err(|e| DeviceError::new(path, "BLKSSZGET on", e))?;
        Ok(Disk {
            info: info.clone(),
            file,
            size,
            sector,
        })
    }

    /// A second descriptor on the same device for O_DIRECT writes. It does not claim the
    /// device: our O_EXCL handle already does, and a second exclusive open would fail.
    pub(super) fn open_direct(&self) -> Result<File, DeviceError> {
        use std::os::fd::AsRawFd;
        let proc_path = format!("/proc/self/fd/{}", self.file.as_raw_fd());
        OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT | libc::O_CLOEXEC)
            .open(&proc_path)
            .map_err(|e| DeviceError::new(&self.info.path, "opening (O_DIRECT)", e))
    }

    /// The device path, for errors and logs.
    pub(super) fn path(&self) -> &Path {
        &self.info.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(path: &str) -> DeviceInfo {
        DeviceInfo {
            path: PathBuf::from(path),
            kname: String::new(),
            dev: (0, 0),
            sysfs: PathBuf::new(),
        }
    }

    #[test]
    fn partition_names_follow_the_kernel() {
        assert_eq!(info("/dev/sda").partition_name(2), "/dev/sda2");
        assert_eq!(info("/dev/nvme0n1").partition_name(1), "/dev/nvme0n1p1");
        assert_eq!(info("/dev/loop7").partition_name(3), "/dev/loop7p3");
    }

    #[test]
    fn a_regular_file_is_refused() {
        let f = tempfile::NamedTempFile::new().unwrap();
        let e = DeviceInfo::lookup(f.path()).unwrap_err();
        assert!(e.to_string().contains("not a block device"), "{e}");
    }
}
