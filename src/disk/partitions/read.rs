//! The one partition-table reader: deploy (root uuid, config drive, kernel sync), the boot code
//! (the ESP and its Hard Drive node) and erase (the partitions to wipe, the guarded types) all
//! read a table here, through [`super::bounds`], so a hostile table is refused the same way
//! everywhere and every caller sees the same [`Table`].

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use super::bounds;
use super::TableError;

/// The EFI System Partition type GUID.
pub const ESP_TYPE_GUID: uuid::Uuid = uuid::uuid!("c12a7328-f81f-11d2-ba4b-00a0c93ec93b");
/// The MBR partition type of an ESP.
pub const ESP_MBR_TYPE: u8 = 0xef;
/// GPT attribute bit 2: legacy BIOS bootable.
const GPT_LEGACY_BOOTABLE: u64 = 1 << 2;

/// Which partition table a disk has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableKind {
    /// GUID partition table.
    Gpt,
    /// DOS/MBR table.
    Mbr,
}

/// A partition's type, as its table records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartType {
    /// A GPT partition type GUID.
    Gpt(uuid::Uuid),
    /// An MBR system id.
    Mbr(u8),
}

/// One used partition, in bytes from the start of the disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// Partition number (1-based; MBR logical partitions are 5 and up).
    pub number: u32,
    /// First byte.
    pub start: u64,
    /// Length in bytes.
    pub size: u64,
    /// Its type.
    pub kind: PartType,
    /// GPT unique partition GUID, when GPT.
    pub guid: Option<uuid::Uuid>,
    /// GPT partition name (empty for MBR).
    pub name: String,
    /// MBR boot flag (0x80), or GPT's legacy BIOS bootable attribute.
    pub bootable: bool,
}

impl Part {
    /// True for an EFI System Partition (the GPT type GUID, or MBR type 0xEF), which is what
    /// parted's `esp` flag (and `boot` on GPT) reports.
    pub fn is_esp(&self) -> bool {
        match self.kind {
            PartType::Gpt(t) => t == ESP_TYPE_GUID,
            PartType::Mbr(t) => t == ESP_MBR_TYPE,
        }
    }
}

/// The partitions of a disk, with its table kind, logical sector size and disk identifiers.
#[derive(Debug, Clone)]
pub struct Table {
    /// GPT or MBR.
    pub kind: TableKind,
    /// Logical sector size the table uses.
    pub sector: u64,
    /// Used entries, by number.
    pub parts: Vec<Part>,
    /// The GPT disk GUID, when GPT.
    pub disk_guid: Option<uuid::Uuid>,
    /// The MBR disk signature (bytes 440-443, little-endian), when MBR.
    pub mbr_signature: Option<u32>,
}

impl Table {
    /// A partition's PARTUUID as lsblk/blkid print it: the lowercase GPT GUID, or
    /// `<disk signature>-<number>` (hex) on MBR.
    pub fn partuuid(&self, p: &Part) -> String {
        match (p.guid, self.mbr_signature) {
            (Some(g), _) => g.to_string(),
            (None, sig) => format!("{:08x}-{:02x}", sig.unwrap_or(0), p.number),
        }
    }
}

/// Which logical sector sizes a table is looked for at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sectors {
    /// Not known (an image, or any disk): a GPT at 512 bytes, else at 4096; an MBR at 512.
    Probe,
    /// The device's logical sector size only, for the GPT and the MBR (what firmware sees).
    Exactly(u64),
    /// The device's size first, then the other of 512 and 4096; a GPT out of bounds at one
    /// size is logged and skipped (erase wipes what it can find), an MBR is read at this size.
    Prefer(u64),
}

/// Reads the partition table, if any. A table out of [`bounds`] is an error, not "no table".
pub fn read_table(file: &File) -> Result<Option<Table>, TableError> {
    let mut f = file;
    read_table_from(&mut f)
}

/// [`read_table`] from anything readable (a disk, an image in memory).
#[doc(hidden)]
pub fn read_table_from<R: Read + Seek>(f: &mut R) -> Result<Option<Table>, TableError> {
    read_table_with(f, Sectors::Probe)
}

/// Reads the GPT (at the sizes `sectors` says), else the MBR; `Ok(None)` when there is none.
pub fn read_table_with<R: Read + Seek>(
    f: &mut R,
    sectors: Sectors,
) -> Result<Option<Table>, TableError> {
    let gpt = match sectors {
        Sectors::Probe => bounds::find_gpt(f)?,
        Sectors::Exactly(ss) => bounds::read_gpt(f, ss)?,
        Sectors::Prefer(ss) => {
            let other = if ss == 512 { 4096 } else { 512 };
            gpt_or_warn(f, ss).or_else(|| gpt_or_warn(f, other))
        }
    };
    if let Some(gpt) = gpt {
        return Ok(Some(from_gpt(&gpt)));
    }
    let ss = match sectors {
        Sectors::Probe => 512,
        Sectors::Exactly(ss) | Sectors::Prefer(ss) => ss,
    };
    f.seek(SeekFrom::Start(0))?;
    Ok(bounds::read_mbr(f, ss)?.map(|mbr| from_mbr(&mbr, ss)))
}

/// A GPT at `ss`, an out-of-bounds one logged and taken as none.
fn gpt_or_warn<R: Read + Seek>(f: &mut R, ss: u64) -> Option<gptman::GPT> {
    bounds::read_gpt(f, ss).unwrap_or_else(|e| {
        tracing::warn!("partition table not read: {e}");
        None
    })
}

fn from_gpt(gpt: &gptman::GPT) -> Table {
    let ss = gpt.sector_size;
    let parts = gpt
        .iter()
        .filter(|(_, p)| p.is_used())
        .map(|(n, p)| Part {
            number: n,
            start: p.starting_lba * ss,
            size: (p.ending_lba + 1).saturating_sub(p.starting_lba) * ss,
            kind: PartType::Gpt(uuid::Uuid::from_bytes_le(p.partition_type_guid)),
            guid: Some(uuid::Uuid::from_bytes_le(p.unique_partition_guid)),
            name: p.partition_name.as_str().to_string(),
            bootable: p.attribute_bits & GPT_LEGACY_BOOTABLE != 0,
        })
        .collect();
    Table {
        kind: TableKind::Gpt,
        sector: ss,
        parts,
        disk_guid: Some(uuid::Uuid::from_bytes_le(gpt.header.disk_guid)),
        mbr_signature: None,
    }
}

fn from_mbr(mbr: &mbrman::MBR, ss: u64) -> Table {
    let parts = mbr
        .iter()
        .filter(|(_, p)| p.is_used())
        .map(|(n, p)| Part {
            number: n as u32,
            start: u64::from(p.starting_lba) * ss,
            size: u64::from(p.sectors) * ss,
            kind: PartType::Mbr(p.sys),
            guid: None,
            name: String::new(),
            bootable: p.boot == mbrman::BOOT_ACTIVE,
        })
        .collect();
    Table {
        kind: TableKind::Mbr,
        sector: ss,
        parts,
        disk_guid: None,
        mbr_signature: Some(u32::from_le_bytes(mbr.header.disk_signature)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// A GPT image at `ss` with one named ESP (bootable) at LBA 64..=127.
    fn gpt_image(ss: u64) -> Vec<u8> {
        let mut c = Cursor::new(vec![0u8; 8 << 20]);
        let mut gpt = gptman::GPT::new_from(&mut c, ss, [7; 16]).unwrap();
        gpt[1] = gptman::GPTPartitionEntry {
            partition_type_guid: ESP_TYPE_GUID.to_bytes_le(),
            unique_partition_guid: [9; 16],
            starting_lba: 64,
            ending_lba: 127,
            attribute_bits: GPT_LEGACY_BOOTABLE,
            partition_name: "EFI".into(),
        };
        gptman::GPT::write_protective_mbr_into(&mut c, ss).unwrap();
        gpt.write_into(&mut c).unwrap();
        c.into_inner()
    }

    #[test]
    fn gpt_carries_everything_the_callers_need() {
        let t = read_table_from(&mut Cursor::new(gpt_image(512)))
            .unwrap()
            .unwrap();
        assert_eq!((t.kind, t.sector), (TableKind::Gpt, 512));
        assert_eq!(t.disk_guid, Some(uuid::Uuid::from_bytes_le([7; 16])));
        assert_eq!(t.mbr_signature, None);
        let p = &t.parts[0];
        assert_eq!((p.number, p.start, p.size), (1, 64 * 512, 64 * 512));
        assert!(p.is_esp() && p.bootable);
        assert_eq!(p.name, "EFI");
        assert_eq!(
            t.partuuid(p),
            uuid::Uuid::from_bytes_le([9; 16]).to_string()
        );
    }

    #[test]
    fn sector_sizes_are_looked_at_as_asked() {
        let img = gpt_image(4096);
        let read = |s| read_table_with(&mut Cursor::new(&img), s).unwrap();
        assert_eq!(read(Sectors::Probe).unwrap().sector, 4096);
        assert_eq!(read(Sectors::Prefer(512)).unwrap().sector, 4096);
        assert_eq!(
            read(Sectors::Exactly(4096)).unwrap().parts[0].start,
            64 * 4096
        );
        // At 512 only the protective MBR is seen.
        let t = read(Sectors::Exactly(512)).unwrap();
        assert_eq!(t.kind, TableKind::Mbr);
        assert_eq!(t.parts[0].kind, PartType::Mbr(0xee));
    }

    #[test]
    fn mbr_signature_type_and_boot_flag() {
        let mut c = Cursor::new(vec![0u8; 4 << 20]);
        let mut mbr = mbrman::MBR::new_from(&mut c, 512, [0x78, 0x56, 0x34, 0x12]).unwrap();
        mbr[2] = mbrman::MBRPartitionEntry {
            boot: mbrman::BOOT_ACTIVE,
            first_chs: mbrman::CHS::empty(),
            sys: ESP_MBR_TYPE,
            last_chs: mbrman::CHS::empty(),
            starting_lba: 2048,
            sectors: 2048,
        };
        mbr.write_into(&mut c).unwrap();
        let t = read_table_from(&mut c).unwrap().unwrap();
        assert_eq!(t.mbr_signature, Some(0x1234_5678));
        let p = &t.parts[0];
        assert_eq!((p.number, p.start, p.guid), (2, 2048 * 512, None));
        assert!(p.is_esp() && p.bootable);
        assert_eq!(t.partuuid(p), "12345678-02");
    }
}
