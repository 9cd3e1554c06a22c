//! A small partition-table adapter for the boot code: what a Hard Drive node needs to know of
//! each partition (number, LBAs, GPT unique GUID or MBR disk signature, type), read natively with
//! gptman/mbrman from a disk or a disk image file, behind the bounds of
//! [`crate::disk::partitions::bounds`] (a hostile table is an error, never a crash).
//!
//! GPT wins over MBR when both are valid, as in efivar (`efibootmgr -d`). The logical sector size
//! is the device's (`BLKSSZGET`) for a block device; for an image file gptman tries 512 and 4096
//! and an MBR is read with 512.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use super::error::BootError;
use super::load_option::{mbr_partuuid, HardDrive, PartitionSignature};
use crate::disk::partitions::{bounds, TableError};

/// The EFI System Partition type GUID.
pub(crate) const ESP_TYPE_GUID: uuid::Uuid = uuid::uuid!("c12a7328-f81f-11d2-ba4b-00a0c93ec93b");
/// The MBR partition type of an ESP.
pub(crate) const ESP_MBR_TYPE: u8 = 0xef;

/// A partition's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartType {
    /// A GPT partition type GUID.
    Gpt(uuid::Uuid),
    /// An MBR system id byte.
    Mbr(u8),
}

/// One used partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// Where it is, as the Hard Drive node says it.
    pub hd: HardDrive,
    /// Its type.
    pub kind: PartType,
    /// The logical sector size its LBAs count in.
    pub sector_size: u64,
}

impl Partition {
    /// True for an EFI System Partition (the GPT type GUID, or MBR type 0xEF), which is what
    /// parted's `esp` flag (and `boot` on GPT) reports to IPA's `find_efi_partition`.
    pub fn is_esp(&self) -> bool {
        match self.kind {
            PartType::Gpt(t) => t == ESP_TYPE_GUID,
            PartType::Mbr(t) => t == ESP_MBR_TYPE,
        }
    }

    /// Its PARTUUID as lsblk prints it (lowercase GUID, or `<disk signature>-<number>`).
    pub fn partuuid(&self) -> String {
        match self.hd.signature {
            PartitionSignature::Gpt(g) => uuid::Uuid::from_bytes_le(g).to_string(),
            PartitionSignature::Mbr(s) => mbr_partuuid(s, self.hd.partition_number),
        }
    }

    /// Its first byte on the disk.
    pub fn offset(&self) -> u64 {
        self.hd.start_lba * self.sector_size
    }

    /// Its length in bytes.
    pub fn len(&self) -> u64 {
        self.hd.size_lba * self.sector_size
    }

    /// True for a zero-length partition.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The used partitions of a disk, by number; empty when it has no table rivet can read.
pub(crate) fn read_partitions(disk: &Path) -> Result<Vec<Partition>, BootError> {
    let mut f = File::open(disk).map_err(|e| BootError::disk(disk, e))?;
    let block_ss = block_sector_size(&f, disk)?;
    let bounded = |e: TableError| BootError::disk(disk, e.into());
    let gpt = match block_ss {
        Some(ss) => bounds::read_gpt(&mut f, ss),
        None => bounds::find_gpt(&mut f),
    }
    .map_err(bounded)?;
    if let Some(gpt) = gpt {
        let ss = gpt.sector_size;
        return Ok(gpt
            .iter()
            .filter(|(_, p)| p.is_used())
            .map(|(n, p)| Partition {
                hd: HardDrive {
                    partition_number: n,
                    start_lba: p.starting_lba,
                    size_lba: (p.ending_lba + 1).saturating_sub(p.starting_lba),
                    signature: PartitionSignature::Gpt(p.unique_partition_guid),
                },
                kind: PartType::Gpt(uuid::Uuid::from_bytes_le(p.partition_type_guid)),
                sector_size: ss,
            })
            .collect());
    }
    f.seek(SeekFrom::Start(0))
        .map_err(|e| BootError::disk(disk, e))?;
    let ss = block_ss.unwrap_or(512);
    let Some(mbr) = bounds::read_mbr(&mut f, ss).map_err(bounded)? else {
        return Ok(Vec::new());
    };
    let signature = u32::from_le_bytes(mbr.header.disk_signature);
    Ok(mbr
        .iter()
        .filter(|(_, p)| p.is_used())
        .map(|(n, p)| Partition {
            hd: HardDrive {
                partition_number: n as u32,
                start_lba: u64::from(p.starting_lba),
                size_lba: u64::from(p.sectors),
                signature: PartitionSignature::Mbr(signature),
            },
            kind: PartType::Mbr(p.sys),
            sector_size: ss,
        })
        .collect())
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
