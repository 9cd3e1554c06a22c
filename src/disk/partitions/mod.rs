//! Partition tables: the one home for reading them, making them, adding the config drive's
//! partition, moving the backup GPT, the MBR signature and the check after a write. Natively
//! (gptman/mbrman) where IPA runs sgdisk/parted/hexdump. Everything is by byte offset on the
//! whole disk: no partition device nodes are needed (loop devices without `-P` make none).
//!
//! - [`read_table`]: what is on the disk ([`Table`], [`Part`]), the one reader (deploy, boot
//!   and erase all read tables through it);
//! - [`bounds`]: every table is checked on its raw bytes before gptman or mbrman reads it;
//! - [`edit`]: a partition added at the end of the free space (config drives);
//! - [`create`]: a new table from a plan (partition images);
//! - [`gpt`]: the backup header moved to the end of a larger disk;
//! - [`kernel`]: the kernel's partition list made equal to the table (BLKRRPART, else BLKPG);
//! - [`types`]: partition type codes.

pub mod bounds;
pub(crate) mod create;
pub(crate) mod edit;
pub(crate) mod gpt;
pub mod kernel;
mod read;
pub(crate) mod types;

pub use bounds::TableError;
pub use edit::{add_end_partition, LayoutError};
pub use gpt::{relocate_backup_gpt, GptFix};
pub use read::{
    read_table, read_table_from, read_table_with, Part, PartType, Sectors, Table, TableKind,
    ESP_MBR_TYPE, ESP_TYPE_GUID,
};

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;

/// Formats a GUID stored as gptman keeps it (mixed-endian, as on disk).
pub fn guid_string(g: &[u8; 16]) -> String {
    format!(
        "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
        g[3], g[2], g[1], g[0], g[5], g[4], g[7], g[6], g[8], g[9], g[10], g[11], g[12], g[13], g[14], g[15]
    )
}

/// A UUID as gptman stores a GUID (mixed-endian, as on disk).
pub fn uuid_to_guid(u: &uuid::Uuid) -> [u8; 16] {
    let b = u.as_bytes();
    [
        b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9], b[10], b[11], b[12], b[13],
        b[14], b[15],
    ]
}

/// Everything rivet does with a partition table read from untrusted bytes, on a copy in
/// memory: read it (as after a write, for the root uuid, the config drive, the boot code),
/// add the config drive's partition, move the backup GPT as to a disk twice the size. The
/// fuzz targets' entry point (`fuzz/`): none of it may panic or allocate without bound.
#[doc(hidden)]
pub fn exercise(data: &[u8]) {
    let mut c = std::io::Cursor::new(data.to_vec());
    let _ = read_table_from(&mut c);
    let _ = bounds::read_gpt(&mut c, 4096);
    let _ = bounds::read_mbr(&mut c, 4096);
    let _ = edit::add_end_in(&mut c.clone(), 1 << 20);
    let _ = edit::add_end_in(&mut c, 4096);
    let mut grown = data.to_vec();
    grown.resize(data.len() * 2 + 8192, 0);
    let _ = gpt::relocate_in(&mut std::io::Cursor::new(grown));
}

/// The MBR disk signature (bytes 440–443, little-endian) as IPA reports a whole-disk image's
/// `root uuid`: `0x%08x`, as `hexdump -s 440 -n 4 -e '"0x%08x"'` prints it.
pub fn mbr_signature(file: &File) -> io::Result<String> {
    let mut b = [0u8; 4];
    file.read_exact_at(&mut b, 440)?;
    Ok(format!("0x{:08x}", u32::from_le_bytes(b)))
}

/// Reads the whole first sector (for tests and diagnostics).
pub fn read_sector0(file: &mut File) -> io::Result<[u8; 512]> {
    let mut b = [0u8; 512];
    file.seek(SeekFrom::Start(0))?;
    file.read_exact(&mut b)?;
    Ok(b)
}

/// `_validate_partitioning`: after an image is written the disk must hold a readable partition
/// table with at least one partition (read natively instead of `parted`). A table out of
/// [`bounds`] is refused as an unsafe image (`InvalidImage`).
pub fn check_after_write(device: &std::path::Path) -> Result<(), crate::errors::AgentError> {
    use crate::errors::AgentError;
    let no_table = |why: &dyn std::fmt::Display| {
        AgentError::Deployment(format!(
            "Unable to find a valid partition table on the disk after writing the image. \
             The image may be corrupted or it uses a different sector size than the device. \
             Error: {why}"
        ))
    };
    let f = File::open(device)
        .map_err(|e| no_table(&format!("cannot open {}: {e}", device.display())))?;
    let table = match read_table(&f) {
        Ok(t) => t.ok_or_else(|| no_table(&"no GPT or MBR found"))?,
        Err(e @ TableError::OutOfBounds(_)) => return Err(unsafe_table(device, &e)),
        Err(e) => return Err(no_table(&e)),
    };
    if table.parts.is_empty() {
        return Err(AgentError::Deployment(format!(
            "No partitions found on the device {} after writing the image.",
            device.display()
        )));
    }
    Ok(())
}

/// IPA's error for an image whose partition table is refused by [`bounds`].
pub fn unsafe_table(device: &std::path::Path, e: &TableError) -> crate::errors::AgentError {
    crate::errors::AgentError::InvalidImage(format!(
        "Security: Image failed safety check: {e} (written to {})",
        device.display()
    ))
}

/// Makes the kernel's partition list of `disk` equal the table on it, as `partprobe` does
/// (BLKRRPART, else BLKPG add/resize/delete: devices without partition scanning, busy disks).
/// Logged, never fatal: the data on the disk is already right.
pub fn tell_kernel(disk: &File, path: &std::path::Path) {
    let parts: Vec<kernel::KernelPart> = match read_table(disk) {
        Ok(t) => t
            .map(|t| t.parts)
            .unwrap_or_default()
            .iter()
            .map(|p| kernel::KernelPart {
                number: p.number,
                start: p.start,
                size: p.size,
            })
            .collect(),
        Err(e) => {
            tracing::warn!("cannot read the partition table of {}: {e}", path.display());
            return;
        }
    };
    match kernel::sync_kernel_partitions(disk, path, &parts) {
        Ok(r) => tracing::debug!(?r, "kernel partition list of {} updated", path.display()),
        Err(e) => tracing::warn!(
            "the kernel's partitions of {} may be stale: {e}",
            path.display()
        ),
    }
}
