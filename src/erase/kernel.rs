//! The block-layer ioctls the erase engine needs, and what sysfs says a device can do.
//!
//! - BLKZEROOUT: the kernel guarantees that the range reads back as zeroes afterwards. It
//!   uses the device's Write Zeroes / WRITE SAME offload when `queue/write_zeroes_max_bytes`
//!   is non-zero, else it writes zero pages itself (no user-space copies either way).
//! - BLKDISCARD / BLKSECDISCARD: a hint (and, for the secure form, an eMMC/SD secure trim).
//!   Plain discard guarantees nothing about what reads return (`discard_zeroes_data` has read
//!   0 since Linux 4.12), so the erase engine never counts on it for zeroes.
//! - Since Linux 6.17, `queue/write_zeroes_unmap_max_bytes` > 0 says the device can zero by
//!   deallocating (NVMe DEAC, SCSI UNMAP with LBPRZ): a BLKZEROOUT there is as fast as a
//!   discard *and* guaranteed to read back zeroes; that is what express erase may use.
//! - BLKRRPART / BLKPG: how the kernel's partition view follows a wiped table. BLKPG here is
//!   only the delete (a full BLKPG sync lives in `disk`).
//!
//! Each ioctl is one `libc::ioctl` on a descriptor the caller owns for the whole call.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

// _IO(0x12, n) numbers from <linux/fs.h>.
const BLKROGET: libc::c_ulong = 0x125e;
const BLKRRPART: libc::c_ulong = 0x125f;
const BLKPG: libc::c_ulong = 0x1269;
const BLKDISCARD: libc::c_ulong = 0x1277;
const BLKSECDISCARD: libc::c_ulong = 0x127d;
const BLKZEROOUT: libc::c_ulong = 0x127f;
// _IOR(0x12, 114, u64)
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
const BLKPG_DEL_PARTITION: libc::c_int = 2;

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Size of the block device in bytes (BLKGETSIZE64).
pub fn size_bytes(f: &File) -> io::Result<u64> {
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which outlives the call.
    check(unsafe { libc::ioctl(f.as_raw_fd(), BLKGETSIZE64 as _, &mut size as *mut u64) })?;
    Ok(size)
}

/// Logical sector size (BLKSSZGET).
pub fn logical_sector(f: &File) -> io::Result<u64> {
    Ok(u64::from(rustix::fs::ioctl_blksszget(f)?))
}

/// The kernel's read-only flag of the device (BLKROGET).
pub fn read_only(f: &File) -> io::Result<bool> {
    let mut ro: libc::c_int = 0;
    // SAFETY: BLKROGET writes one int through the pointer, which outlives the call.
    check(unsafe { libc::ioctl(f.as_raw_fd(), BLKROGET as _, &mut ro as *mut libc::c_int) })?;
    Ok(ro != 0)
}

fn range_ioctl(f: &File, req: libc::c_ulong, start: u64, len: u64) -> io::Result<()> {
    let range = [start, len];
    // SAFETY: these ioctls read two u64 (start, length) through the pointer, which outlives
    // the call.
    check(unsafe { libc::ioctl(f.as_raw_fd(), req as _, range.as_ptr()) })
}

/// BLKZEROOUT over `[start, start + len)`: reads return zeroes afterwards, guaranteed.
/// Both must be multiples of the logical sector size.
pub fn zero_out(f: &File, start: u64, len: u64) -> io::Result<()> {
    range_ioctl(f, BLKZEROOUT, start, len)
}

/// BLKDISCARD over `[start, start + len)` (a hint; contents afterwards are unspecified).
pub fn discard(f: &File, start: u64, len: u64) -> io::Result<()> {
    range_ioctl(f, BLKDISCARD, start, len)
}

/// BLKSECDISCARD over `[start, start + len)`; EOPNOTSUPP where the device has no secure trim.
pub fn secure_discard(f: &File, start: u64, len: u64) -> io::Result<()> {
    range_ioctl(f, BLKSECDISCARD, start, len)
}

/// BLKRRPART: the kernel drops its partitions of the disk and re-reads the table. EINVAL on
/// devices without partition scanning (loop devices attached without `-P`); EBUSY while a
/// partition is in use.
pub fn reread_partitions(f: &File) -> io::Result<()> {
    // SAFETY: BLKRRPART takes no argument.
    check(unsafe { libc::ioctl(f.as_raw_fd(), BLKRRPART as _, 0) })
}

#[repr(C)]
struct BlkpgPartition {
    start: i64,
    length: i64,
    pno: libc::c_int,
    devname: [u8; 64],
    volname: [u8; 64],
}

#[repr(C)]
struct BlkpgIoctlArg {
    op: libc::c_int,
    flags: libc::c_int,
    datalen: libc::c_int,
    data: *mut BlkpgPartition,
}

/// BLKPG delete of partition `pno` (ENXIO when the kernel has no such partition).
pub fn delete_partition(f: &File, pno: u32) -> io::Result<()> {
    let mut part = BlkpgPartition {
        start: 0,
        length: 0,
        pno: libc::c_int::try_from(pno).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?,
        devname: [0; 64],
        volname: [0; 64],
    };
    let mut arg = BlkpgIoctlArg {
        op: BLKPG_DEL_PARTITION,
        flags: 0,
        datalen: std::mem::size_of::<BlkpgPartition>() as libc::c_int,
        data: &mut part,
    };
    // SAFETY: BLKPG reads the argument struct and the partition struct it points to; both
    // live on this stack frame for the whole call.
    check(unsafe { libc::ioctl(f.as_raw_fd(), BLKPG as _, &mut arg as *mut BlkpgIoctlArg) })
}

/// What the block layer says the device can do, from `/sys/dev/block/M:m/queue`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueLimits {
    /// `discard_max_bytes`: 0 means no discard at all.
    pub discard_max_bytes: u64,
    /// `discard_granularity`.
    pub discard_granularity: u64,
    /// `write_zeroes_max_bytes`: > 0 means BLKZEROOUT is offloaded to the device.
    pub write_zeroes_max_bytes: u64,
    /// `write_zeroes_unmap_max_bytes` (Linux 6.17+; `None` on older kernels): > 0 means
    /// zeroing by deallocation, as fast as a discard.
    pub write_zeroes_unmap_max_bytes: Option<u64>,
    /// `rotational`.
    pub rotational: bool,
}

impl QueueLimits {
    /// Reads the limits of the device whose sysfs directory is `sysfs`. Partitions have no
    /// `queue/`: their disk's is used.
    pub fn read(sysfs: &Path) -> QueueLimits {
        let q = if sysfs.join("partition").exists() {
            sysfs.join("../queue")
        } else {
            sysfs.join("queue")
        };
        let num = |name: &str| -> Option<u64> {
            std::fs::read_to_string(q.join(name))
                .ok()
                .and_then(|s| s.trim().parse().ok())
        };
        QueueLimits {
            discard_max_bytes: num("discard_max_bytes").unwrap_or(0),
            discard_granularity: num("discard_granularity").unwrap_or(0),
            write_zeroes_max_bytes: num("write_zeroes_max_bytes").unwrap_or(0),
            write_zeroes_unmap_max_bytes: num("write_zeroes_unmap_max_bytes"),
            rotational: num("rotational") == Some(1),
        }
    }

    /// The device zeroes ranges itself (BLKZEROOUT costs no data transfer).
    pub fn zeroout_offloaded(&self) -> bool {
        self.write_zeroes_max_bytes > 0
    }

    /// The device can discard and guarantees zeroes afterwards (deallocating Write Zeroes).
    pub fn discard_zeroes(&self) -> bool {
        self.write_zeroes_unmap_max_bytes.unwrap_or(0) > 0
    }

    /// The device accepts discards at all.
    pub fn discard(&self) -> bool {
        self.discard_max_bytes > 0
    }
}

/// `(major, minor)` of a device number.
pub fn dev_pair(rdev: u64) -> (u32, u32) {
    (libc::major(rdev), libc::minor(rdev))
}

/// The sysfs directory of a block device number (`/sys/dev/block/M:m`, resolved).
pub fn sysfs_dir(dev: (u32, u32)) -> io::Result<PathBuf> {
    std::fs::canonicalize(format!("/sys/dev/block/{}:{}", dev.0, dev.1))
}

/// A partition as the kernel sees it (sysfs), in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelPart {
    /// Kernel name (`sda1`, `loop0p1`).
    pub name: String,
    /// Partition number.
    pub number: u32,
    /// `(major, minor)`.
    pub dev: (u32, u32),
    /// First byte on the disk.
    pub start: u64,
    /// Length in bytes.
    pub size: u64,
}

fn read_trim(p: &Path) -> Option<String> {
    std::fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
}

/// Parses sysfs's `M:m`.
pub fn parse_dev(s: &str) -> Option<(u32, u32)> {
    let (a, b) = s.trim().split_once(':')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// The partitions the kernel currently has for the disk at `sysfs`, by number.
pub fn kernel_partitions(sysfs: &Path) -> Vec<KernelPart> {
    let Ok(entries) = std::fs::read_dir(sysfs) else {
        return vec![];
    };
    let mut out: Vec<KernelPart> = entries
        .flatten()
        .filter_map(|e| {
            let dir = e.path();
            let number = read_trim(&dir.join("partition"))?.parse().ok()?;
            let sectors = |f: &str| -> Option<u64> { read_trim(&dir.join(f))?.parse().ok() };
            Some(KernelPart {
                name: e.file_name().to_string_lossy().into_owned(),
                number,
                dev: parse_dev(&read_trim(&dir.join("dev"))?)?,
                // sysfs counts in 512-byte units whatever the logical sector size.
                start: sectors("start")? * 512,
                size: sectors("size")? * 512,
            })
        })
        .collect();
    out.sort_by_key(|p| p.number);
    out
}

/// Devices stacked on this one (dm, md, ...): the names under `holders/`.
pub fn holders(sysfs: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(sysfs.join("holders"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::canonicalize(e.path()).ok())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blkpg_structs_match_the_kernel_abi() {
        // struct blkpg_partition: 2 × long long, int, 2 × char[64] → 148, padded to 152.
        assert_eq!(std::mem::size_of::<BlkpgPartition>(), 152);
        assert_eq!(std::mem::size_of::<BlkpgIoctlArg>(), 24);
    }

    #[test]
    fn queue_limits_from_a_fake_sysfs() {
        let d = tempfile::tempdir().unwrap();
        let q = d.path().join("queue");
        std::fs::create_dir(&q).unwrap();
        std::fs::write(q.join("discard_max_bytes"), "4096\n").unwrap();
        std::fs::write(q.join("write_zeroes_max_bytes"), "0\n").unwrap();
        let l = QueueLimits::read(d.path());
        assert!(l.discard() && !l.zeroout_offloaded() && !l.discard_zeroes());
        assert_eq!(l.write_zeroes_unmap_max_bytes, None);
        std::fs::write(q.join("write_zeroes_unmap_max_bytes"), "1048576\n").unwrap();
        assert!(QueueLimits::read(d.path()).discard_zeroes());
    }

    #[test]
    fn parses_dev_numbers() {
        assert_eq!(parse_dev("259:3\n"), Some((259, 3)));
        assert_eq!(parse_dev("x"), None);
    }
}
