//! Adding a partition at the end of a disk's free space (the config drive's).

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};

use super::bounds::{self, TableError};
use super::{read_table_from, uuid_to_guid, Part, PartType, TableKind};

/// Why a config drive partition could not be made (the caller words it as IPA does).
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// An MBR disk already has `0` primary partitions (more than 3).
    #[error("{0} primary partitions")]
    TooManyPrimaries(usize),
    /// No room for the partition.
    #[error("{0}")]
    NoSpace(String),
    /// No partition table at all.
    #[error("the disk has no partition table")]
    NoTable,
    /// Reading or writing the table failed.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// The table is out of bounds (see [`super::bounds`]).
    #[error(transparent)]
    Table(#[from] TableError),
}

const MIB: u64 = 1 << 20;

/// Adds a partition of `size` bytes at the end of the free space (GPT: like
/// `sgdisk -n 0:-64MB:0`; MBR: like `parted mkpart primary fat32 -64MiB -0`, with IPA's rule
/// for disks over 2 TiB). Returns it.
pub fn add_end_partition(file: &File, size: u64) -> Result<Part, LayoutError> {
    let part = add_end_in(&mut &*file, size)?;
    file.sync_data()?;
    Ok(part)
}

/// [`add_end_partition`] on anything that reads and writes (a disk, an image in memory).
#[doc(hidden)]
pub(crate) fn add_end_in<F: Read + Write + Seek>(
    f: &mut F,
    size: u64,
) -> Result<Part, LayoutError> {
    let table = read_table_from(f)?.ok_or(LayoutError::NoTable)?;
    let disk = f.seek(SeekFrom::End(0))?;
    match table.kind {
        TableKind::Gpt => {
            let mut gpt = bounds::find_gpt(f)?.ok_or(LayoutError::NoTable)?;
            // gptman's free-space search underflows on overlapping or stray partitions.
            bounds::check_layout(&gpt)?;
            let ss = gpt.sector_size;
            let want = size / ss;
            let (free_start, free_len) = gpt
                .find_free_sectors()
                .into_iter()
                .max_by_key(|(s, _)| *s)
                .ok_or_else(|| LayoutError::NoSpace("no free space on the disk".into()))?;
            let free_end = free_start + free_len; // exclusive, in sectors
            let align = MIB / ss;
            let start = (free_end.saturating_sub(want)) / align * align;
            if start < free_start || free_end - start < want {
                return Err(LayoutError::NoSpace(format!(
                    "the last free space ({} MiB) is smaller than {} MiB",
                    free_len * ss / MIB,
                    size / MIB
                )));
            }
            let n = (1..=gpt.header.number_of_partition_entries)
                .find(|&i| gpt[i].is_unused())
                .ok_or_else(|| LayoutError::NoSpace("the GPT has no free entry".into()))?;
            let id = uuid::Uuid::new_v4();
            // Linux filesystem data
            let linux = uuid::uuid!("0fc63daf-8483-4772-8e79-3d69d8477de4");
            gpt[n] = gptman::GPTPartitionEntry {
                partition_type_guid: uuid_to_guid(&linux),
                unique_partition_guid: uuid_to_guid(&id),
                starting_lba: start,
                ending_lba: start + want - 1,
                attribute_bits: 0,
                partition_name: "config-2".into(),
            };
            gpt.write_into(f).map_err(io::Error::other)?;
            Ok(Part {
                number: n,
                start: start * ss,
                size: want * ss,
                kind: PartType::Gpt(linux),
                guid: Some(id),
                name: "config-2".into(),
                bootable: false,
            })
        }
        TableKind::Mbr => {
            let mut mbr = bounds::read_mbr(f, 512)?.ok_or(LayoutError::NoTable)?;
            let primaries = (1..=4).filter(|&i| mbr[i].is_used()).count();
            if primaries > 3 {
                return Err(LayoutError::TooManyPrimaries(primaries));
            }
            let disk_mib = disk / MIB;
            // IPA: disks over 2 TiB get the config drive just below the 2 TiB MBR limit.
            let (start_mib, end_mib) = if disk_mib > 2_097_152 {
                (2_097_087, 2_097_151)
            } else {
                let start = disk_mib.checked_sub(size / MIB).ok_or_else(|| {
                    LayoutError::NoSpace(format!("the disk is smaller than {} MiB", size / MIB))
                })?;
                (start, disk_mib)
            };
            let (start, end) = (start_mib * MIB / 512, end_mib * MIB / 512); // sectors, end exclusive
            let overlaps = mbr.iter().filter(|(_, p)| p.is_used()).any(|(_, p)| {
                let (s, e) = (
                    u64::from(p.starting_lba),
                    u64::from(p.starting_lba) + u64::from(p.sectors),
                );
                s < end && start < e
            });
            if overlaps {
                return Err(LayoutError::NoSpace(
                    "the end of the disk is already partitioned".into(),
                ));
            }
            let n = (1..=4)
                .find(|&i| mbr[i].is_unused())
                .ok_or(LayoutError::TooManyPrimaries(4))?;
            let (s32, len32) = (
                u32::try_from(start)
                    .map_err(|_| LayoutError::NoSpace("beyond the MBR limit".into()))?,
                u32::try_from(end - start)
                    .map_err(|_| LayoutError::NoSpace("beyond the MBR limit".into()))?,
            );
            let sys = 0x0c; // W95 FAT32 (LBA), what parted writes for "fat32"
            mbr[n] = mbrman::MBRPartitionEntry {
                boot: mbrman::BOOT_INACTIVE,
                first_chs: mbrman::CHS::empty(),
                sys,
                last_chs: mbrman::CHS::empty(),
                starting_lba: s32,
                sectors: len32,
            };
            mbr.write_into(f).map_err(io::Error::other)?;
            Ok(Part {
                number: n as u32,
                start: start * 512,
                size: (end - start) * 512,
                kind: PartType::Mbr(sys),
                guid: None,
                name: String::new(),
                bootable: false,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::partitions::{guid_string, read_table};

    fn disk(len: u64) -> (tempfile::NamedTempFile, File) {
        let t = tempfile::NamedTempFile::new().unwrap();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(t.path())
            .unwrap();
        f.set_len(len).unwrap();
        (t, f)
    }

    #[test]
    fn gpt_config_drive_goes_at_the_end() {
        let (_t, f) = disk(256 * MIB);
        let mut g = gptman::GPT::new_from(&mut &f, 512, [1; 16]).unwrap();
        g[1] = gptman::GPTPartitionEntry {
            partition_type_guid: [2; 16],
            unique_partition_guid: [3; 16],
            starting_lba: 2048,
            ending_lba: 2048 * 50 - 1,
            attribute_bits: 0,
            partition_name: "root".into(),
        };
        g.write_into(&mut &f).unwrap();
        let p = add_end_partition(&f, 64 * MIB).unwrap();
        assert_eq!(p.number, 2);
        assert_eq!(p.size, 64 * MIB);
        assert!(p.start + p.size <= 256 * MIB - 33 * 512);
        assert!(p.start.is_multiple_of(MIB));
        let t = read_table(&f).unwrap().unwrap();
        assert_eq!(t.kind, TableKind::Gpt);
        assert_eq!(t.parts.len(), 2);
        assert_eq!(
            t.parts[1], p,
            "what add_end_partition returns is what is read back"
        );
    }

    #[test]
    fn mbr_rules() {
        let (_t, f) = disk(128 * MIB);
        let mut m = mbrman::MBR::new_from(&mut &f, 512, [1, 2, 3, 4]).unwrap();
        for i in 1..=4 {
            m[i] = mbrman::MBRPartitionEntry {
                boot: 0,
                first_chs: mbrman::CHS::empty(),
                sys: 0x83,
                last_chs: mbrman::CHS::empty(),
                starting_lba: 2048 * i as u32,
                sectors: 2048,
            };
        }
        m.write_into(&mut &f).unwrap();
        assert!(matches!(
            add_end_partition(&f, 64 * MIB),
            Err(LayoutError::TooManyPrimaries(4))
        ));
        m[4] = mbrman::MBRPartitionEntry::empty();
        m.write_into(&mut &f).unwrap();
        let p = add_end_partition(&f, 64 * MIB).unwrap();
        assert_eq!((p.number, p.start, p.size), (4, 64 * MIB, 64 * MIB));
        assert_eq!(read_table(&f).unwrap().unwrap().parts.len(), 4);
    }

    #[test]
    fn guid_text_matches_sgdisk() {
        let u = uuid::uuid!("0fc63daf-8483-4772-8e79-3d69d8477de4");
        assert_eq!(
            guid_string(&uuid_to_guid(&u)),
            "0fc63daf-8483-4772-8e79-3d69d8477de4"
        );
    }
}
