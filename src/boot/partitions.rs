//! The partitions of a disk as the boot code needs them: each one with the Hard Drive node
//! that names it, from the one table reader ([`crate::disk::partitions::read_table_with`]).
//!
//! GPT wins over MBR when both are valid, as in efivar (`efibootmgr -d`). The logical sector size
//! is the device's (`BLKSSZGET`) for a block device; for an image file a GPT is looked for at
//! 512 and 4096 and an MBR is read with 512.

use std::fs::File;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use super::error::BootError;
use super::load_option::{HardDrive, PartitionSignature};
use crate::disk::partitions::{read_table_with, Part, Sectors, Table};

/// One used partition, with how firmware names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// The partition as the table has it.
    pub part: Part,
    /// Where it is, as the Hard Drive node says it.
    pub hd: HardDrive,
    /// Its PARTUUID as lsblk prints it.
    partuuid: String,
}

impl Partition {
    fn new(table: &Table, part: &Part) -> Self {
        let ss = table.sector;
        let signature = match part.guid {
            Some(g) => PartitionSignature::Gpt(g.to_bytes_le()),
            None => PartitionSignature::Mbr(table.mbr_signature.unwrap_or(0)),
        };
        Partition {
            hd: HardDrive {
                partition_number: part.number,
                start_lba: part.start / ss,
                size_lba: part.size / ss,
                signature,
            },
            partuuid: table.partuuid(part),
            part: part.clone(),
        }
    }

    /// Its PARTUUID as lsblk prints it (lowercase GUID, or `<disk signature>-<number>`).
    pub fn partuuid(&self) -> &str {
        &self.partuuid
    }

    /// True for an EFI System Partition (the GPT type GUID, or MBR type 0xEF), which is what
    /// parted's `esp` flag (and `boot` on GPT) reports to IPA's `find_efi_partition`.
    pub fn is_esp(&self) -> bool {
        self.part.is_esp()
    }

    /// Its first byte on the disk.
    pub fn offset(&self) -> u64 {
        self.part.start
    }

    /// Its length in bytes.
    pub fn len(&self) -> u64 {
        self.part.size
    }

    /// True for a zero-length partition.
    pub fn is_empty(&self) -> bool {
        self.part.size == 0
    }
}

/// The used partitions of a disk, by number (through the one table reader); empty when it has
/// no table rivet can read.
pub(crate) fn read_partitions(disk: &Path) -> Result<Vec<Partition>, BootError> {
    let mut f = File::open(disk).map_err(|e| BootError::disk(disk, e))?;
    let sectors = match block_sector_size(&f, disk)? {
        Some(ss) => Sectors::Exactly(ss),
        None => Sectors::Probe,
    };
    let table = read_table_with(&mut f, sectors).map_err(|e| BootError::disk(disk, e.into()))?;
    Ok(table
        .map(|t| t.parts.iter().map(|p| Partition::new(&t, p)).collect())
        .unwrap_or_default())
}

/// The logical sector size of a block device; `None` for a regular file.
fn block_sector_size(f: &File, disk: &Path) -> Result<Option<u64>, BootError> {
    let meta = f.metadata().map_err(|e| BootError::disk(disk, e))?;
    if !meta.file_type().is_block_device() {
        return Ok(None);
    }
    rustix::fs::ioctl_blksszget(f)
        .map(|s| Some(u64::from(s)))
        .map_err(|e| BootError::disk(disk, e.into()))
}
