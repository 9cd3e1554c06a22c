//! Makes the kernel's partition list of a whole disk equal a given table, as `partprobe` and
//! `partx -u` do.
//!
//! Why: after a table is written the kernel must see it (so `/dev/sdaN` exist for the config
//! drive, a partition image, or a bootloader step). `BLKRRPART` is the simple way, but it
//! fails where partition scanning is off (loop devices attached without `-P`: `EINVAL`) or
//! while any partition is open (`EBUSY`). Then each partition is changed on its own with
//! `BLKPG`, which works in both cases for the partitions that are not in use.
//!
//! Whatever the path, the kernel's list is read back from sysfs at the end and compared with
//! the table, so a caller learns when the kernel did not take it.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// sysfs gives partition start and size in these units, whatever the logical block size.
const SYSFS_SECTOR: u64 = 512;

// From linux/fs.h and linux/blkpg.h (the libc crate has neither):
// BLKRRPART = _IO(0x12, 95), BLKPG = _IO(0x12, 105).
const BLKRRPART: libc::c_ulong = 0x125f;
const BLKPG: libc::c_ulong = 0x1269;
const BLKPG_ADD_PARTITION: libc::c_int = 1;
const BLKPG_DEL_PARTITION: libc::c_int = 2;
const BLKPG_RESIZE_PARTITION: libc::c_int = 3;
const BLKPG_DEVNAMELTH: usize = 64;
const BLKPG_VOLNAMELTH: usize = 64;

/// `struct blkpg_ioctl_arg` of linux/blkpg.h.
#[repr(C)]
struct BlkpgIoctlArg {
    op: libc::c_int,
    flags: libc::c_int,
    datalen: libc::c_int,
    data: *mut libc::c_void,
}

/// `struct blkpg_partition` of linux/blkpg.h: start and length in bytes; the names are
/// ignored by the kernel.
#[repr(C)]
struct BlkpgPartition {
    start: libc::c_longlong,
    length: libc::c_longlong,
    pno: libc::c_int,
    devname: [libc::c_char; BLKPG_DEVNAMELTH],
    volname: [libc::c_char; BLKPG_VOLNAMELTH],
}

/// One partition as the kernel knows it: its number and its extent in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct KernelPart {
    /// Partition number (1 for `sda1`, `nvme0n1p1`, `loop0p1`).
    pub number: u32,
    /// Offset from the start of the disk, in bytes.
    pub start: u64,
    /// Length in bytes.
    pub size: u64,
}

/// How the kernel's list was brought in line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMethod {
    /// Not a block device (a regular file standing in for a disk): nothing to do.
    NotBlockDevice,
    /// `BLKRRPART` re-read the table and the kernel's list already matched.
    Reread,
    /// Partitions were deleted, resized and added one by one with `BLKPG`.
    Blkpg,
}

/// What [`sync_kernel_partitions`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncReport {
    /// The path taken.
    pub method: SyncMethod,
    /// Why `BLKRRPART` did not do the whole job (its error, or "list differs"), if it didn't.
    pub reread_error: Option<String>,
    /// Partitions deleted, by number (including moved ones, which are then re-added).
    pub deleted: Vec<u32>,
    /// Partitions resized in place.
    pub resized: Vec<u32>,
    /// Partitions added (new or moved).
    pub added: Vec<u32>,
}

/// A failure to bring the kernel's partition list in line, naming the disk.
#[derive(Debug, thiserror::Error)]
pub enum BlkpgError {
    /// The table itself cannot be given to the kernel.
    #[error("{disk}: invalid partition table for the kernel: {msg}")]
    InvalidTable {
        /// The disk.
        disk: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// sysfs could not be read.
    #[error("{disk}: cannot read the kernel's partitions from {path}: {source}")]
    Sysfs {
        /// The disk.
        disk: PathBuf,
        /// The sysfs path.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// One `BLKPG` request was refused.
    #[error("{disk}: cannot {op} partition {number}: {source}")]
    Ioctl {
        /// The disk.
        disk: PathBuf,
        /// "add", "delete" or "resize".
        op: &'static str,
        /// The partition number.
        number: u32,
        /// The kernel's answer.
        source: io::Error,
    },
    /// Every request succeeded but the kernel's list still differs from the table.
    #[error("{disk}: the kernel's partitions {kernel:?} differ from the table {table:?}")]
    Mismatch {
        /// The disk.
        disk: PathBuf,
        /// What sysfs shows.
        kernel: Vec<KernelPart>,
        /// What was asked for.
        table: Vec<KernelPart>,
    },
}

impl From<BlkpgError> for io::Error {
    fn from(e: BlkpgError) -> io::Error {
        let kind = match &e {
            BlkpgError::InvalidTable { .. } => io::ErrorKind::InvalidInput,
            BlkpgError::Sysfs { source, .. } | BlkpgError::Ioctl { source, .. } => source.kind(),
            BlkpgError::Mismatch { .. } => io::ErrorKind::Other,
        };
        io::Error::new(kind, e)
    }
}

/// Makes the kernel's partitions of the whole disk `disk` (opened from `disk_path`) equal
/// `parts`. `BLKRRPART` first (retried while busy); if it fails, or leaves a list that differs,
/// the difference is applied with `BLKPG`. A regular file is left alone.
pub fn sync_kernel_partitions(
    disk: &File,
    disk_path: &Path,
    parts: &[KernelPart],
) -> Result<SyncReport, BlkpgError> {
    let meta = disk
        .metadata()
        .map_err(|e| sysfs_err(disk_path, disk_path, e))?;
    let mut report = SyncReport {
        method: SyncMethod::NotBlockDevice,
        reread_error: None,
        deleted: Vec::new(),
        resized: Vec::new(),
        added: Vec::new(),
    };
    if !meta.file_type().is_block_device() {
        return Ok(report);
    }
    let wanted = validate(disk_path, parts, logical_block_size(disk))?;
    let sysfs = sysfs_dir(meta.rdev());
    match reread(disk) {
        Ok(()) => {
            let now = read_kernel_parts(disk_path, &sysfs)?;
            if now == wanted {
                report.method = SyncMethod::Reread;
                return Ok(report);
            }
            report.reread_error = Some("re-read table differs from the one given".into());
        }
        Err(e) => report.reread_error = Some(e.to_string()),
    }
    tracing::debug!(
        "{}: BLKRRPART did not do it ({}); using BLKPG",
        disk_path.display(),
        report.reread_error.as_deref().unwrap_or("")
    );
    report.method = SyncMethod::Blkpg;
    let current = read_kernel_parts(disk_path, &sysfs)?;
    for op in plan(&current, &wanted) {
        apply(disk, disk_path, op)?;
        match op {
            Op::Delete(n) => report.deleted.push(n),
            Op::Resize(p) => report.resized.push(p.number),
            Op::Add(p) => report.added.push(p.number),
        }
    }
    crate::disk::device::udev_settle();
    let now = read_kernel_parts(disk_path, &sysfs)?;
    if now != wanted {
        return Err(BlkpgError::Mismatch {
            disk: disk_path.to_path_buf(),
            kernel: now,
            table: wanted,
        });
    }
    Ok(report)
}

/// The kernel name of partition `number` of disk `disk_name`: a `p` goes between when the
/// disk's name ends in a digit (`nvme0n1p1`, `loop0p1`), not otherwise (`sda1`).
pub fn partition_name(disk_name: &str, number: u32) -> String {
    if disk_name.ends_with(|c: char| c.is_ascii_digit()) {
        format!("{disk_name}p{number}")
    } else {
        format!("{disk_name}{number}")
    }
}

/// The partitions the kernel has for the disk whose sysfs directory is `sysfs` (as
/// `/sys/dev/block/MAJ:MIN`), sorted by number. Children with a `partition` file are
/// partitions, whatever their name.
pub fn read_kernel_parts(disk: &Path, sysfs: &Path) -> Result<Vec<KernelPart>, BlkpgError> {
    let entries = std::fs::read_dir(sysfs).map_err(|e| sysfs_err(disk, sysfs, e))?;
    let mut parts = Vec::new();
    for entry in entries {
        let dir = entry.map_err(|e| sysfs_err(disk, sysfs, e))?.path();
        let Some(number) = read_number(&dir.join("partition")) else {
            continue;
        };
        let field = |name: &str| {
            let path = dir.join(name);
            read_number(&path)
                .ok_or_else(|| sysfs_err(disk, &path, io::Error::other("missing or not a number")))
        };
        parts.push(KernelPart {
            number: u32::try_from(number).unwrap_or(u32::MAX),
            start: field("start")? * SYSFS_SECTOR,
            size: field("size")? * SYSFS_SECTOR,
        });
    }
    parts.sort();
    Ok(parts)
}

fn read_number(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn sysfs_dir(rdev: u64) -> PathBuf {
    // The device number leads to the disk whatever path it was opened by (a symlink in
    // /dev/disk/by-*, a node in a private /dev).
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    PathBuf::from(format!("/sys/dev/block/{major}:{minor}"))
}

fn sysfs_err(disk: &Path, path: &Path, source: io::Error) -> BlkpgError {
    BlkpgError::Sysfs {
        disk: disk.to_path_buf(),
        path: path.to_path_buf(),
        source,
    }
}

fn logical_block_size(disk: &File) -> u64 {
    rustix::fs::ioctl_blksszget(disk)
        .map(u64::from)
        .unwrap_or(SYSFS_SECTOR)
}

/// Sorted copy of `parts`, refused when the kernel could not hold it.
fn validate(disk: &Path, parts: &[KernelPart], block: u64) -> Result<Vec<KernelPart>, BlkpgError> {
    let bad = |msg: String| BlkpgError::InvalidTable {
        disk: disk.to_path_buf(),
        msg,
    };
    let mut sorted = parts.to_vec();
    sorted.sort();
    for (i, p) in sorted.iter().enumerate() {
        if p.number == 0 || i64::try_from(p.start.saturating_add(p.size)).is_err() {
            return Err(bad(format!("partition {p:?} is out of range")));
        }
        if p.size == 0 || p.start % block != 0 || p.size % block != 0 {
            return Err(bad(format!(
                "partition {} must be non-empty and aligned to {block} bytes",
                p.number
            )));
        }
        if i > 0 && sorted[i - 1].number == p.number {
            return Err(bad(format!("partition {} appears twice", p.number)));
        }
    }
    Ok(sorted)
}

/// `BLKRRPART`, retried for about two seconds while the disk is busy.
fn reread(disk: &File) -> io::Result<()> {
    let mut attempt = 0;
    loop {
        // SAFETY: BLKRRPART takes no argument; the descriptor is open for the whole call.
        if unsafe { libc::ioctl(disk.as_raw_fd(), BLKRRPART as _, 0) } == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        attempt += 1;
        if err.raw_os_error() != Some(libc::EBUSY) || attempt >= 20 {
            return Err(err);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One `BLKPG` request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Delete(u32),
    Resize(KernelPart),
    Add(KernelPart),
}

/// The requests that turn `current` into `wanted`, in an order the kernel accepts: deletions
/// first (stale and moved partitions), then shrinks, then growths, then additions, so that no
/// step overlaps a partition that a later step removes or shrinks.
fn plan(current: &[KernelPart], wanted: &[KernelPart]) -> Vec<Op> {
    let find = |list: &[KernelPart], n: u32| list.iter().find(|p| p.number == n).copied();
    let mut deletes = Vec::new();
    let mut shrinks = Vec::new();
    let mut grows = Vec::new();
    let mut adds = Vec::new();
    for cur in current {
        match find(wanted, cur.number) {
            None => deletes.push(Op::Delete(cur.number)),
            Some(w) if w.start != cur.start => {
                deletes.push(Op::Delete(cur.number));
                adds.push(Op::Add(w));
            }
            Some(w) if w.size < cur.size => shrinks.push(Op::Resize(w)),
            Some(w) if w.size > cur.size => grows.push(Op::Resize(w)),
            Some(_) => {}
        }
    }
    for w in wanted {
        if find(current, w.number).is_none() {
            adds.push(Op::Add(*w));
        }
    }
    adds.sort_by_key(|op| match op {
        Op::Add(p) => p.number,
        _ => 0,
    });
    [deletes, shrinks, grows, adds].concat()
}

/// Sends one request. A deletion refused as busy is retried briefly (udev may be probing the
/// node); for an addition or a resize, busy means an overlap, which waiting does not cure.
fn apply(disk: &File, disk_path: &Path, op: Op) -> Result<(), BlkpgError> {
    let (code, name, part) = match op {
        Op::Delete(n) => (
            BLKPG_DEL_PARTITION,
            "delete",
            KernelPart {
                number: n,
                start: 0,
                size: 0,
            },
        ),
        Op::Resize(p) => (BLKPG_RESIZE_PARTITION, "resize", p),
        Op::Add(p) => (BLKPG_ADD_PARTITION, "add", p),
    };
    let mut attempt = 0;
    loop {
        match blkpg(disk, code, &part) {
            Ok(()) => {
                tracing::debug!("{}: BLKPG {name} {part:?}", disk_path.display());
                return Ok(());
            }
            Err(e)
                if code == BLKPG_DEL_PARTITION
                    && e.raw_os_error() == Some(libc::EBUSY)
                    && attempt < 10 =>
            {
                attempt += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(source) => {
                return Err(BlkpgError::Ioctl {
                    disk: disk_path.to_path_buf(),
                    op: name,
                    number: part.number,
                    source,
                })
            }
        }
    }
}

fn blkpg(disk: &File, op: libc::c_int, part: &KernelPart) -> io::Result<()> {
    // validate() bounded start+size to i64.
    let mut data = BlkpgPartition {
        start: part.start as libc::c_longlong,
        length: part.size as libc::c_longlong,
        pno: libc::c_int::try_from(part.number)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?,
        devname: [0; BLKPG_DEVNAMELTH],
        volname: [0; BLKPG_VOLNAMELTH],
    };
    let mut arg = BlkpgIoctlArg {
        op,
        flags: 0,
        datalen: std::mem::size_of::<BlkpgPartition>() as libc::c_int,
        data: (&mut data as *mut BlkpgPartition).cast(),
    };
    // SAFETY: `arg` and the partition it points to live across the call and have the layout
    // of linux/blkpg.h; the kernel only reads them.
    let rc = unsafe { libc::ioctl(disk.as_raw_fd(), BLKPG as _, &mut arg as *mut BlkpgIoctlArg) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(number: u32, start: u64, size: u64) -> KernelPart {
        KernelPart {
            number,
            start,
            size,
        }
    }

    #[test]
    fn partition_names_follow_the_kernel() {
        assert_eq!(partition_name("sda", 1), "sda1");
        assert_eq!(partition_name("nvme0n1", 2), "nvme0n1p2");
        assert_eq!(partition_name("loop0", 3), "loop0p3");
        assert_eq!(partition_name("mmcblk0", 1), "mmcblk0p1");
    }

    #[test]
    fn plan_deletes_then_shrinks_then_grows_then_adds() {
        const M: u64 = 1 << 20;
        let current = [
            p(1, M, 8 * M),
            p(2, 9 * M, 16 * M),
            p(3, 25 * M, 8 * M),
            p(4, 40 * M, M),
        ];
        let wanted = [
            p(1, M, 4 * M),
            p(2, 9 * M, 20 * M),
            p(3, 30 * M, 8 * M),
            p(5, 50 * M, M),
        ];
        assert_eq!(
            plan(&current, &wanted),
            vec![
                Op::Delete(3),
                Op::Delete(4),
                Op::Resize(wanted[0]),
                Op::Resize(wanted[1]),
                Op::Add(wanted[2]),
                Op::Add(wanted[3]),
            ]
        );
        assert!(plan(&wanted, &wanted).is_empty());
        assert_eq!(plan(&current, &[]).len(), 4);
    }

    #[test]
    fn tables_the_kernel_cannot_hold_are_refused() {
        let d = Path::new("/dev/x");
        assert!(validate(d, &[p(1, 512, 1024)], 512).is_ok());
        assert!(validate(d, &[p(0, 512, 1024)], 512).is_err());
        assert!(validate(d, &[p(1, 512, 0)], 512).is_err());
        assert!(validate(d, &[p(1, 512, 1024)], 4096).is_err());
        assert!(validate(d, &[p(1, 512, 512), p(1, 4096, 512)], 512).is_err());
        assert!(validate(d, &[p(1, u64::MAX - 511, 512)], 512).is_err());
    }

    #[test]
    fn kernel_partitions_are_read_from_any_child_with_a_partition_file() {
        let dir = tempfile::tempdir().unwrap();
        let add = |name: &str, files: &[(&str, &str)]| {
            let d = dir.path().join(name);
            std::fs::create_dir(&d).unwrap();
            for (f, v) in files {
                std::fs::write(d.join(f), format!("{v}\n")).unwrap();
            }
        };
        add(
            "nvme0n1p2",
            &[("partition", "2"), ("start", "4096"), ("size", "100")],
        );
        add(
            "nvme0n1p1",
            &[("partition", "1"), ("start", "2048"), ("size", "2048")],
        );
        add("queue", &[("rotational", "0")]);
        let parts = read_kernel_parts(Path::new("/dev/nvme0n1"), dir.path()).unwrap();
        assert_eq!(
            parts,
            vec![p(1, 2048 * 512, 2048 * 512), p(2, 4096 * 512, 100 * 512)]
        );
        add("nvme0n1p3", &[("partition", "3"), ("start", "x")]);
        let e = read_kernel_parts(Path::new("/dev/nvme0n1"), dir.path()).unwrap_err();
        assert!(e.to_string().contains("nvme0n1p3/start"), "{e}");
    }

    #[test]
    fn regular_files_are_left_alone() {
        let f = tempfile::NamedTempFile::new().unwrap();
        let r = sync_kernel_partitions(f.as_file(), f.path(), &[p(1, 512, 512)]).unwrap();
        assert_eq!(r.method, SyncMethod::NotBlockDevice);
    }
}
