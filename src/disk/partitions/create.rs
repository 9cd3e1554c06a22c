//! A new partition table from a plan (partition images), replacing whatever was on the disk.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::FileExt;

use super::types::PartKind;
use super::{guid_string, uuid_to_guid};

const MIB: u64 = 1 << 20;

/// One partition of a new table, in bytes from the start of the disk.
#[derive(Debug, Clone)]
pub(crate) struct NewPart {
    /// Partition number (1-based).
    pub number: u32,
    /// First byte (a multiple of the sector size).
    pub start: u64,
    /// Length in bytes.
    pub size: u64,
    /// Its type.
    pub kind: PartKind,
    /// GPT partition name.
    pub name: String,
    /// MBR active flag.
    pub bootable: bool,
}

/// Writes a GPT (or an MBR) holding `parts`, after zeroing the table areas at both ends.
/// Returns each partition's unique GUID (GPT) in order, `None` for MBR.
pub(crate) fn write_new_table(
    disk: &File,
    parts: &[NewPart],
    gpt: bool,
) -> io::Result<Vec<Option<String>>> {
    let mut f = disk;
    let len = f.seek(SeekFrom::End(0))?;
    // The table must use the disk's logical sector size, or firmware and kernel won't read it.
    let ss = rustix::fs::ioctl_blksszget(disk)
        .map(u64::from)
        .unwrap_or(512);
    if !gpt && ss != 512 {
        return Err(io::Error::other(format!(
            "an msdos label on a {ss}-byte-sector disk is not supported"
        )));
    }
    let zeros = vec![0u8; MIB as usize];
    disk.write_all_at(&zeros, 0)?;
    disk.write_all_at(&zeros, len - MIB)?;
    if gpt {
        let mut g = gptman::GPT::new_from(&mut f, ss, *uuid::Uuid::new_v4().as_bytes())
            .map_err(io::Error::other)?;
        let mut ids = Vec::new();
        for p in parts {
            let ty: uuid::Uuid = p.kind.gpt_type().parse().map_err(io::Error::other)?;
            g[p.number] = gptman::GPTPartitionEntry {
                partition_type_guid: uuid_to_guid(&ty),
                unique_partition_guid: uuid_to_guid(&uuid::Uuid::new_v4()),
                starting_lba: p.start / ss,
                ending_lba: (p.start + p.size) / ss - 1,
                attribute_bits: 0,
                partition_name: p.name.as_str().into(),
            };
            ids.push(Some(guid_string(&g[p.number].unique_partition_guid)));
        }
        g.write_into(&mut f).map_err(io::Error::other)?;
        gptman::GPT::write_protective_mbr_into(&mut f, ss).map_err(io::Error::other)?;
        f.sync_data()?;
        Ok(ids)
    } else {
        let mut m = mbrman::MBR::new_from(&mut f, 512, *b"rivt").map_err(io::Error::other)?;
        for p in parts {
            m[p.number as usize] = mbrman::MBRPartitionEntry {
                boot: if p.bootable {
                    mbrman::BOOT_ACTIVE
                } else {
                    mbrman::BOOT_INACTIVE
                },
                first_chs: mbrman::CHS::empty(),
                sys: p.kind.mbr_type(),
                last_chs: mbrman::CHS::empty(),
                starting_lba: u32::try_from(p.start / 512).map_err(io::Error::other)?,
                sectors: u32::try_from(p.size / 512).map_err(io::Error::other)?,
            };
        }
        m.write_into(&mut f).map_err(io::Error::other)?;
        f.sync_data()?;
        Ok(vec![None; parts.len()])
    }
}
