//! The partitions an erase must reach: those in the on-disk table (any logical sector size,
//! MBR logical partitions included) and those the kernel has (sysfs), which can differ when a
//! table was rewritten without a re-read. The table is read by rivet's one reader,
//! `disk::partitions::read_table_with`, like every table rivet reads: a hostile one is refused
//! before gptman/mbrman see it (then only the kernel's partitions and the disk's ends are erased).

use std::fs::File;
use std::io::{Read, Seek};

use super::kernel::KernelPart;
pub(crate) use crate::disk::partitions::PartType;

/// One partition, in bytes from the start of the disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Partition {
    /// Partition number (the kernel's, for logical MBR partitions 5+).
    pub number: u32,
    /// First byte.
    pub start: u64,
    /// Length in bytes.
    pub size: u64,
    /// Type from the table; `None` for one only the kernel knows (sysfs).
    pub kind: Option<PartType>,
}

/// The table's partitions ([`crate::disk::partitions::read_table_with`], the disk's logical
/// sector size first), `None` when there is no table or it cannot be read.
fn read_table<R: Read + Seek>(r: &mut R, sector: u64) -> Option<Vec<Partition>> {
    use crate::disk::partitions::{read_table_with, Sectors};
    let t = match read_table_with(r, Sectors::Prefer(sector)) {
        Ok(t) => t?,
        Err(e) => {
            tracing::warn!("partition table not read: {e}");
            return None;
        }
    };
    Some(
        t.parts
            .into_iter()
            .map(|p| Partition {
                number: p.number,
                start: p.start,
                size: p.size,
                kind: Some(p.kind),
            })
            .collect(),
    )
}

/// The table's partitions plus any the kernel has that the table does not (by range), each
/// clipped to the disk.
pub(crate) fn all_partitions(
    file: &File,
    sector: u64,
    disk_size: u64,
    kernel: &[KernelPart],
) -> Vec<Partition> {
    let mut f = file;
    let mut parts = read_table(&mut f, sector).unwrap_or_default();
    for k in kernel {
        if !parts.iter().any(|p| p.start == k.start && p.size == k.size) {
            parts.push(Partition {
                number: k.number,
                start: k.start,
                size: k.size,
                kind: None,
            });
        }
    }
    parts.retain(|p| p.start < disk_size && p.size > 0);
    for p in &mut parts {
        p.size = p.size.min(disk_size - p.start);
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// An in-memory GPT disk with partitions `(first_lba, last_lba, type)`.
    fn gpt_disk(size: u64, ss: u64, parts: &[(u64, u64, &str)]) -> Vec<u8> {
        let mut c = Cursor::new(vec![0u8; size as usize]);
        let mut gpt = gptman::GPT::new_from(&mut c, ss, [7; 16]).unwrap();
        for (i, (first, last, ty)) in parts.iter().enumerate() {
            gpt[(i + 1) as u32] = gptman::GPTPartitionEntry {
                partition_type_guid: uuid::Uuid::parse_str(ty).unwrap().to_bytes_le(),
                unique_partition_guid: [i as u8 + 1; 16],
                starting_lba: *first,
                ending_lba: *last,
                attribute_bits: 0,
                partition_name: "p".into(),
            };
        }
        gptman::GPT::write_protective_mbr_into(&mut c, ss).unwrap();
        gpt.write_into(&mut c).unwrap();
        c.into_inner()
    }

    const LINUX: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";

    #[test]
    fn reads_gpt_at_512_and_4096() {
        for ss in [512u64, 4096] {
            let img = gpt_disk(8 << 20, ss, &[(64, 127, LINUX), (128, 255, LINUX)]);
            let parts = read_table(&mut Cursor::new(&img), 512).unwrap();
            assert_eq!(parts.len(), 2);
            assert_eq!(parts[1].start, 128 * ss);
            assert_eq!(parts[1].size, 128 * ss);
            let Some(PartType::Gpt(g)) = parts[0].kind else {
                panic!()
            };
            assert_eq!(g, uuid::Uuid::parse_str(LINUX).unwrap());
        }
    }

    #[test]
    fn reads_the_backup_gpt_when_the_primary_is_damaged() {
        let mut img = gpt_disk(4 << 20, 512, &[(64, 127, LINUX)]);
        img[512..1024].fill(0);
        let parts = read_table(&mut Cursor::new(&img), 512).unwrap();
        assert_eq!(parts.len(), 1);
    }

    #[test]
    fn reads_mbr_with_logical_partitions() {
        let mut c = Cursor::new(vec![0u8; 16 << 20]);
        let mut mbr = mbrman::MBR::new_from(&mut c, 512, [1, 2, 3, 4]).unwrap();
        mbr[1] = mbrman::MBRPartitionEntry {
            boot: mbrman::BOOT_INACTIVE,
            first_chs: mbrman::CHS::empty(),
            sys: 0x83,
            last_chs: mbrman::CHS::empty(),
            starting_lba: 2048,
            sectors: 4096,
        };
        mbr[2] = mbrman::MBRPartitionEntry {
            sys: 0x0f,
            starting_lba: 8192,
            sectors: 16384,
            ..mbr[1]
        };
        mbr.logical_partitions.push(mbrman::LogicalPartition {
            partition: mbrman::MBRPartitionEntry {
                sys: 0xfb,
                starting_lba: 10240,
                sectors: 2048,
                ..mbr[1]
            },
            absolute_ebr_lba: 8192,
            ebr_sectors: None,
            ebr_first_chs: mbrman::CHS::empty(),
            ebr_last_chs: None,
            bootstrap_code: [0; 446],
        });
        mbr.write_into(&mut c).unwrap();
        let parts = read_table(&mut Cursor::new(c.into_inner()), 512).unwrap();
        let numbers: Vec<_> = parts.iter().map(|p| (p.number, p.kind)).collect();
        assert_eq!(
            numbers,
            vec![
                (1, Some(PartType::Mbr(0x83))),
                (2, Some(PartType::Mbr(0x0f))),
                (5, Some(PartType::Mbr(0xfb)))
            ]
        );
        assert_eq!(parts[2].start, 10240 * 512);
    }

    #[test]
    fn no_table_on_a_blank_disk() {
        assert!(read_table(&mut Cursor::new(vec![0u8; 1 << 20]), 512).is_none());
    }
}
