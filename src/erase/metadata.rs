//! IPA's `destroy_disk_metadata` for one disk and its partitions: after it, nothing that
//! `blkid -p` / `wipefs` recognises is left on the disk or on any of its old partitions,
//! the partition table (both GPT copies, the MBR) is gone, and the kernel has dropped its
//! partitions.
//!
//! # Native zeroing instead of `wipefs`
//! IPA runs `wipefs --force --all` on each partition and the disk, two `dd`s over the first
//! and last 33 sectors (5 on 4K-sector disks), `sgdisk -Z` and waits on `fuser`. rivet zeroes
//! fixed areas instead, with BLKZEROOUT (guaranteed zeroes, offloaded to the device when it
//! can): the first and the last 8 MiB of the disk and of every partition (all of it when
//! smaller). That is one ioctl per area, needs no util-linux in the ramdisk, and covers
//! every place libblkid probes for a signature; the farthest from either end are:
//! - from the start: MBR and GPT header/entries (≤ 33 sectors: 16.5 KiB, or 5 × 4 KiB);
//!   LVM2 label (sectors 0–3); md 1.1 (0) and 1.2 (4 KiB); ext2/3/4, f2fs, hfs+, minix,
//!   erofs (1 KiB); vfat/exfat/ntfs boot sectors and backups (≤ 6 KiB); xfs (0); swap
//!   (page size − 10, pages up to 64 KiB); btrfs primary superblock, gfs2, reiserfs
//!   (64 KiB); iso9660/UDF (32 KiB on, UDF anchor at sector 256: ≤ 1 MiB); ZFS labels L0/L1
//!   (first 512 KiB); UFS (≤ 256 KiB); bcache (4 KiB); LUKS1 (0) and LUKS2 secondary headers
//!   (16 KiB … 4 MiB); VMFS volume and filesystem headers (1 MiB, 2 MiB);
//! - from the end: backup GPT (33 / 5 sectors); md 0.90 (last 64 KiB-aligned 64 KiB:
//!   ≤ 128 KiB) and 1.0 (8–12 KiB); ZFS L2/L3 (≤ 768 KiB); UDF anchors (last sector and
//!   256 before it); nilfs2 backup, DRBD (last few KiB); firmware-RAID anchors (DDF, Intel
//!   IMSM, LSI, NVIDIA, VIA, SiI, JMicron, Adaptec, HighPoint; Promise FastTrack is the
//!   deepest at 3087 sectors ≈ 1.5 MiB).
//!
//! 8 MiB at each end leaves twice the margin over the deepest (LUKS2 at 4 MiB + 4 KiB). As
//! with wipefs, nothing deeper is removed: ext4's and btrfs's backup superblocks (64 MiB
//! and beyond) stay; blkid does not probe them. What wipefs erases (the magic bytes) is a
//! subset of what is zeroed here. Partition *contents* found by range (not by device node)
//! means this works where the kernel has no partition devices.
//!
//! Partitions come from the on-disk table and from the kernel (sysfs); MBR logical
//! partitions (and their EBRs, in the extended partition's head) are included.
//!
//! Afterwards the kernel's view is refreshed: BLKRRPART, then a BLKPG delete of every
//! partition it still has (devices without partition scanning reject BLKRRPART). IPA's wait
//! on `fuser` is not needed: we hold the disk with O_EXCL throughout.

use std::sync::atomic::AtomicBool;

use super::device::Disk;
use super::error::DeviceError;
use super::kernel;
use super::parts::Partition;

/// Zeroed at each end of the disk and of each partition.
pub(crate) const AREA: u64 = 8 << 20;

/// What one metadata erase did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct WipeReport {
    /// Merged `[start, end)` byte ranges zeroed.
    pub ranges: Vec<(u64, u64)>,
    /// Kernel partitions removed with BLKPG (after BLKRRPART did not remove them).
    pub deleted: Vec<u32>,
    /// Whether BLKRRPART succeeded.
    pub reread: bool,
}

/// IPA's GPT area: 33 sectors at 512 bytes, 5 at 4 KiB (other sizes: the 16 KiB of entries
/// plus the header).
fn gpt_sectors(sector: u64) -> u64 {
    match sector {
        512 => 33,
        4096 => 5,
        s => (16384 + s).div_ceil(s) + 1,
    }
}

/// The byte ranges to zero, merged and sorted, each aligned to the sector size.
pub(crate) fn wipe_ranges(disk_size: u64, sector: u64, parts: &[Partition]) -> Vec<(u64, u64)> {
    let mut raw = Vec::new();
    let gpt = (gpt_sectors(sector) * sector).min(disk_size);
    raw.push((0, gpt));
    raw.push((disk_size - gpt, disk_size));
    for (start, size) in
        std::iter::once((0, disk_size)).chain(parts.iter().map(|p| (p.start, p.size)))
    {
        let end = (start + size).min(disk_size);
        let n = AREA.min(end.saturating_sub(start));
        raw.push((start, start + n));
        raw.push((end - n, end));
    }
    let align_down = |x: u64| x / sector * sector;
    let align_up = |x: u64| x.div_ceil(sector) * sector;
    let mut v: Vec<(u64, u64)> = raw
        .into_iter()
        .map(|(a, b)| (align_down(a), align_up(b).min(disk_size)))
        .filter(|(a, b)| a < b)
        .collect();
    v.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(v.len());
    for (a, b) in v {
        match out.last_mut() {
            Some(last) if a <= last.1 => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

/// Zeroes `[start, end)`: BLKZEROOUT, else O_DIRECT writes of zeroes.
fn zero_range(disk: &Disk, start: u64, end: u64) -> Result<(), DeviceError> {
    match kernel::zero_out(&disk.file, start, end - start) {
        Ok(()) => Ok(()),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EOPNOTSUPP) | Some(libc::EINVAL)
            ) =>
        {
            tracing::debug!(device = %disk.path().display(), error = %e, "BLKZEROOUT refused; writing zeroes");
            write_zeroes(disk, start, end)
        }
        Err(e) => Err(DeviceError::new(
            disk.path(),
            format!("zeroing bytes {start}..{end} of"),
            e,
        )),
    }
}

fn write_zeroes(disk: &Disk, start: u64, end: u64) -> Result<(), DeviceError> {
    use std::os::unix::fs::FileExt;
    let direct = disk.open_direct()?;
    let mut zeros = vec![0u8; super::overwrite::CHUNK + 4096];
    let off = zeros.as_ptr().align_offset(4096);
    let zeros = &mut zeros[off..off + super::overwrite::CHUNK];
    let mut at = start;
    while at < end {
        let n = (end - at).min(zeros.len() as u64) as usize;
        direct.write_all_at(&zeros[..n], at).map_err(|e| {
            DeviceError::new(disk.path(), format!("writing zeroes at byte {at} of"), e)
        })?;
        at += n as u64;
    }
    Ok(())
}

/// Erases the metadata of the disk and of `parts` (see the module doc), then refreshes the
/// kernel's partitions. The caller has done the safety checks.
pub(crate) fn destroy_disk_metadata(
    disk: &Disk,
    parts: &[Partition],
    cancel: &AtomicBool,
) -> Result<WipeReport, DeviceError> {
    let ranges = wipe_ranges(disk.size, disk.sector, parts);
    for &(a, b) in &ranges {
        if cancel.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(DeviceError::other(
                disk.path(),
                "erasing the metadata of",
                "cancelled",
            ));
        }
        zero_range(disk, a, b)?;
    }
    disk.file
        .sync_all()
        .map_err(|e| DeviceError::new(disk.path(), "flushing", e))?;
    let (reread, deleted) = refresh_kernel_partitions(disk)?;
    tracing::info!(device = %disk.path().display(), areas = ranges.len(), reread, ?deleted, "disk metadata destroyed");
    Ok(WipeReport {
        ranges,
        deleted,
        reread,
    })
}

/// BLKRRPART, then BLKPG delete of whatever partitions the kernel still has (the table is
/// gone, so any left are stale).
fn refresh_kernel_partitions(disk: &Disk) -> Result<(bool, Vec<u32>), DeviceError> {
    let reread = match kernel::reread_partitions(&disk.file) {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!(device = %disk.path().display(), error = %e, "BLKRRPART failed; deleting partitions with BLKPG");
            false
        }
    };
    let mut deleted = Vec::new();
    for p in kernel::kernel_partitions(&disk.info.sysfs) {
        match kernel::delete_partition(&disk.file, p.number) {
            Ok(()) => deleted.push(p.number),
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {}
            Err(e) => {
                return Err(DeviceError::new(
                    disk.path(),
                    format!("removing partition {} (BLKPG) of", p.number),
                    e,
                ))
            }
        }
    }
    Ok((reread, deleted))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(start: u64, size: u64) -> Partition {
        Partition {
            number: 1,
            start,
            size,
            kind: None,
        }
    }

    #[test]
    fn small_disk_is_zeroed_whole() {
        assert_eq!(
            wipe_ranges(4 << 20, 512, &[part(1 << 20, 1 << 20)]),
            vec![(0, 4 << 20)]
        );
    }

    #[test]
    fn heads_and_tails_of_disk_and_partitions() {
        let mib = 1u64 << 20;
        let disk = 1024 * mib;
        let parts = [
            part(mib, 100 * mib),
            part(101 * mib, 3 * mib),
            part(200 * mib, 800 * mib),
        ];
        assert_eq!(
            wipe_ranges(disk, 512, &parts),
            vec![
                (0, 9 * mib),            // disk head + partition 1 head
                (93 * mib, 104 * mib),   // partition 1 tail, partition 2 whole
                (200 * mib, 208 * mib),  // partition 3 head
                (992 * mib, 1000 * mib), // partition 3 tail
                (1016 * mib, disk),      // disk tail
            ]
        );
    }

    #[test]
    fn ranges_are_sector_aligned_on_4k_disks() {
        // A partition the kernel reports in 512-byte units, not 4 KiB-aligned.
        let r = wipe_ranges(64 << 20, 4096, &[part(20 * 1024 * 1024 + 512, 30 << 20)]);
        assert!(
            r.iter().all(|(a, b)| a % 4096 == 0 && b % 4096 == 0),
            "{r:?}"
        );
    }

    #[test]
    fn ipa_gpt_area_is_covered() {
        assert_eq!(gpt_sectors(512) * 512, 16896);
        assert_eq!(gpt_sectors(4096) * 4096, 20480);
        let r = wipe_ranges(1 << 30, 512, &[]);
        assert_eq!(r, vec![(0, AREA), ((1 << 30) - AREA, 1 << 30)]);
    }
}
