//! The backup GPT moved to the end of a disk larger than the image (what `sgdisk -e` does).

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};

use super::TableError;

/// What [`relocate_backup_gpt`] found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GptFix {
    /// No GPT on the disk (an MBR image, or none at all).
    NoGpt,
    /// The backup header already sits at the disk's last sector.
    AlreadyAtEnd,
    /// The backup header was moved to the disk's last sector (docs/data-path.md#finishing-the-disk: `sgdisk -e`).
    Moved,
}

/// Moves the backup GPT header and partition array to the end of the disk when the image was
/// smaller than the disk, and widens the usable range, like `sgdisk -e`. A protective MBR is
/// resized to cover the disk; a hybrid MBR is left alone. A table out of
/// [`super::bounds`] is an error ([`TableError::OutOfBounds`]).
pub fn relocate_backup_gpt(file: &File) -> Result<GptFix, TableError> {
    let fix = relocate_in(&mut &*file)?;
    if fix == GptFix::Moved {
        file.sync_data()?;
    }
    Ok(fix)
}

/// [`relocate_backup_gpt`] on anything that reads and writes (a disk, an image in memory).
#[doc(hidden)]
pub(crate) fn relocate_in<F: Read + Write + Seek>(file: &mut F) -> Result<GptFix, TableError> {
    let Some(mut gpt) = super::bounds::find_gpt(file)? else {
        tracing::debug!("no GPT found");
        return Ok(GptFix::NoGpt);
    };
    let ss = gpt.sector_size;
    let last_lba = file.seek(SeekFrom::End(0))? / ss - 1;
    if gpt.header.backup_lba == last_lba {
        return Ok(GptFix::AlreadyAtEnd);
    }
    gpt.header
        .update_from(file, ss)
        .map_err(|e| io::Error::other(format!("cannot resize the GPT header: {e}")))?;
    gpt.write_into(file)
        .map_err(|e| io::Error::other(format!("cannot write the GPT: {e}")))?;
    let mut mbr = [0u8; 512];
    file.seek(SeekFrom::Start(0))?;
    file.read_exact(&mut mbr)?;
    let entries_used = (0..4).filter(|i| mbr[446 + 16 * i + 4] != 0).count();
    if mbr[450] == 0xEE && entries_used == 1 {
        let bootable = mbr[446] == 0x80;
        if bootable {
            gptman::GPT::write_bootable_protective_mbr_into(file, ss)
        } else {
            gptman::GPT::write_protective_mbr_into(file, ss)
        }
        .map_err(|e| io::Error::other(format!("cannot write the protective MBR: {e}")))?;
    }
    file.flush()?;
    Ok(GptFix::Moved)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::partitions::{mbr_signature, read_sector0};

    fn gpt_image(path: &std::path::Path, len: u64) {
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .unwrap();
        f.set_len(len).unwrap();
        let mut gpt = gptman::GPT::new_from(&mut f, 512, [7; 16]).unwrap();
        gpt[1] = gptman::GPTPartitionEntry {
            partition_type_guid: [1; 16],
            unique_partition_guid: [2; 16],
            starting_lba: 2048,
            ending_lba: 4095,
            attribute_bits: 0,
            partition_name: "root".into(),
        };
        gpt.write_into(&mut f).unwrap();
        gptman::GPT::write_protective_mbr_into(&mut f, 512).unwrap();
    }

    #[test]
    fn moves_the_backup_to_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d");
        gpt_image(&p, 4 << 20);
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&p)
            .unwrap();
        assert_eq!(relocate_backup_gpt(&f).unwrap(), GptFix::AlreadyAtEnd);
        f.set_len(16 << 20).unwrap();
        assert_eq!(relocate_backup_gpt(&f).unwrap(), GptFix::Moved);
        let gpt = gptman::GPT::find_from(&mut f).unwrap();
        assert_eq!(gpt.header.backup_lba, (16 << 20) / 512 - 1);
        assert_eq!(gpt[1].starting_lba, 2048);
        let s0 = read_sector0(&mut f).unwrap();
        assert_eq!(
            u32::from_le_bytes(s0[458..462].try_into().unwrap()),
            (16 << 20) / 512 - 1
        );
        assert_eq!(relocate_backup_gpt(&f).unwrap(), GptFix::AlreadyAtEnd);
    }

    #[test]
    fn no_gpt_and_disk_signature() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d");
        let mut data = vec![0u8; 1 << 20];
        data[440..444].copy_from_slice(&0x1a2b3c4du32.to_le_bytes());
        std::fs::write(&p, &data).unwrap();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&p)
            .unwrap();
        assert_eq!(relocate_backup_gpt(&f).unwrap(), GptFix::NoGpt);
        assert_eq!(mbr_signature(&f).unwrap(), "0x1a2b3c4d");
    }
}
