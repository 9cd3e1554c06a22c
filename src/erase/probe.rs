//! What must stop or skip an erase, read from the device itself rather than from `lsblk`
//! (which needs udev's database, absent in a minimal ramdisk):
//!
//! - shared-disk filesystems (IPA's `safety_check_block_device`): the IBM GPFS and VMware
//!   VMFS GPT partition types, the VMFS MBR type 0xfb, and a gfs2 superblock;
//! - Linux software-RAID members (IPA's `_is_linux_raid_member`), which IPA skips silently:
//!   an md superblock in any of its four places, on the disk or on one of its partitions,
//!   or an md array holding the device.
//!
//! IPA reads these through `lsblk` on the device it is about to erase. For `erase_devices`
//! (whole disks only) that never sees the partition types, and its `fstype` key is never
//! asked for, so its gfs2 check cannot fire; rivet checks the disk *and* every partition, and
//! compares GUIDs without regard to case (lsblk prints them in lower case, IPA's table has
//! them in upper case).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::parts::{PartType, Partition};

const GUARDED_GPT: [(uuid::Uuid, &str); 2] = [
    (
        uuid::uuid!("37AFFC90-EF7D-4E96-91C3-2D7AE055B174"),
        "IBM GPFS Partition",
    ),
    (
        uuid::uuid!("AA31E02A-400F-11DB-9590-000C2911D1B8"),
        "VMware VMFS Partition (GPT)",
    ),
];
const VMFS_MBR: (u8, &str) = (0xfb, "VMware VMFS Partition (MBR)");
const GFS2: &str = "Red Hat Global File System 2";

/// A range of the disk to look at: the disk itself or one partition.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Area {
    /// First byte.
    pub start: u64,
    /// Length.
    pub size: u64,
}

fn read_at(f: &File, off: u64, len: usize) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, off).ok()?;
    Some(buf)
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// gfs2: superblock at 64 KiB: meta header magic 0x01161970, type 1 (superblock), then
/// `sb_fs_format` 1801/1802, as libblkid checks it.
pub(crate) fn has_gfs2(f: &File, area: Area) -> bool {
    if area.size < (64 << 10) + 512 {
        return false;
    }
    let Some(b) = read_at(f, area.start + (64 << 10), 512) else {
        return false;
    };
    be32(&b, 0) == 0x0116_1970 && be32(&b, 4) == 1 && matches!(be32(&b, 24), 1801 | 1802)
}

/// What IPA's `_check_for_special_partitions_filesystems` would call this partition type.
pub(crate) fn guarded_type(kind: Option<PartType>) -> Option<&'static str> {
    match kind? {
        PartType::Gpt(g) => GUARDED_GPT
            .iter()
            .find(|(id, _)| *id == g)
            .map(|(_, what)| *what),
        PartType::Mbr(t) if t == VMFS_MBR.0 => Some(VMFS_MBR.1),
        _ => None,
    }
}

/// The first protected thing on the disk or its partitions: `(partition number or None for
/// the disk, what)`.
pub(crate) fn protected(
    f: &File,
    disk_size: u64,
    parts: &[Partition],
) -> Option<(Option<u32>, &'static str)> {
    if has_gfs2(
        f,
        Area {
            start: 0,
            size: disk_size,
        },
    ) {
        return Some((None, GFS2));
    }
    for p in parts {
        if let Some(what) = guarded_type(p.kind) {
            return Some((Some(p.number), what));
        }
        if has_gfs2(
            f,
            Area {
                start: p.start,
                size: p.size,
            },
        ) {
            return Some((Some(p.number), GFS2));
        }
    }
    None
}

const MD_MAGIC: u32 = 0xa92b_4efc;

/// An md superblock in `area`: 0.90 (64 KiB-aligned, last 64 KiB; either byte order), 1.0
/// (8 KiB from the end, 4 KiB-aligned), 1.1 (start), 1.2 (4 KiB).
pub(crate) fn has_md_superblock(f: &File, area: Area) -> bool {
    let magic_at = |off: u64, v1: bool| -> bool {
        let Some(b) = read_at(f, area.start + off, 8) else {
            return false;
        };
        if v1 {
            le32(&b, 0) == MD_MAGIC && le32(&b, 4) == 1
        } else {
            le32(&b, 0) == MD_MAGIC || be32(&b, 0) == MD_MAGIC
        }
    };
    let size = area.size;
    if size >= 128 << 10 {
        let off090 = (size & !((64 << 10) - 1)) - (64 << 10);
        if magic_at(off090, false) {
            return true;
        }
    }
    if size >= 16 << 10 {
        let off10 = ((size >> 9) - 16) & !7;
        if magic_at(off10 << 9, true) {
            return true;
        }
    }
    size >= 8 << 10 && (magic_at(0, true) || magic_at(4096, true))
}

/// IPA skips RAID members: an md superblock on the disk or a partition, or an md array
/// among the holders of either.
pub(crate) fn is_linux_raid_member(
    f: &File,
    disk_size: u64,
    parts: &[Partition],
    sysfs: &Path,
) -> bool {
    let md_holder = |dir: &Path| {
        super::kernel::holders(dir).iter().any(|h| {
            h.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("md"))
        })
    };
    if md_holder(sysfs)
        || super::kernel::kernel_partitions(sysfs)
            .iter()
            .any(|p| md_holder(&sysfs.join(&p.name)))
    {
        return true;
    }
    has_md_superblock(
        f,
        Area {
            start: 0,
            size: disk_size,
        },
    ) || parts.iter().any(|p| {
        has_md_superblock(
            f,
            Area {
                start: p.start,
                size: p.size,
            },
        )
    })
}

/// IPA's virtual-media check: the device `/dev/disk/by-label/ir-vfd-dev` points to.
pub(crate) fn is_virtual_media(dev: (u32, u32)) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/dev/disk/by-label/ir-vfd-dev")
        .map(|m| super::kernel::dev_pair(m.rdev()) == dev)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file_with(size: u64, writes: &[(u64, &[u8])]) -> File {
        let mut f = tempfile::tempfile().unwrap();
        f.set_len(size).unwrap();
        for (off, data) in writes {
            f.write_all_at(data, *off).unwrap();
        }
        f.flush().unwrap();
        f
    }

    #[test]
    fn guarded_partition_types() {
        let vmfs = uuid::uuid!("aa31e02a-400f-11db-9590-000c2911d1b8");
        assert_eq!(
            guarded_type(Some(PartType::Gpt(vmfs))),
            Some("VMware VMFS Partition (GPT)")
        );
        let gpfs = uuid::uuid!("37AFFC90-EF7D-4E96-91C3-2D7AE055B174");
        assert_eq!(
            guarded_type(Some(PartType::Gpt(gpfs))),
            Some("IBM GPFS Partition")
        );
        assert_eq!(
            guarded_type(Some(PartType::Mbr(0xfb))),
            Some("VMware VMFS Partition (MBR)")
        );
        assert_eq!(guarded_type(Some(PartType::Mbr(0x83))), None);
        assert_eq!(guarded_type(None), None);
    }

    #[test]
    fn finds_gfs2_on_a_partition() {
        let mut sb = vec![0u8; 28];
        sb[0..4].copy_from_slice(&0x0116_1970u32.to_be_bytes());
        sb[4..8].copy_from_slice(&1u32.to_be_bytes());
        sb[24..28].copy_from_slice(&1801u32.to_be_bytes());
        let f = file_with(4 << 20, &[((1 << 20) + (64 << 10), &sb)]);
        let p = Partition {
            number: 3,
            start: 1 << 20,
            size: 2 << 20,
            kind: None,
        };
        assert_eq!(protected(&f, 4 << 20, &[p]), Some((Some(3), GFS2)));
        assert_eq!(protected(&f, 4 << 20, &[]), None);
    }

    #[test]
    fn finds_md_superblocks_in_all_four_places() {
        let size: u64 = (10 << 20) + 3 * 512;
        let v1 = [0xfc, 0x4e, 0x2b, 0xa9, 1, 0, 0, 0];
        let off090 = (size & !0xffff) - 0x10000;
        let off10 = (((size >> 9) - 16) & !7) << 9;
        for off in [0u64, 4096, off10, off090] {
            let f = file_with(size, &[(off, &v1)]);
            assert!(
                has_md_superblock(&f, Area { start: 0, size }),
                "md at {off}"
            );
        }
        let f = file_with(size, &[(512, &v1)]);
        assert!(!has_md_superblock(&f, Area { start: 0, size }));
    }
}
