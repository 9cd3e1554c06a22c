//! `create_config_drive_partition` (docs/data-path.md#config-drive) for whole-disk images and bootc: find the
//! `config-2` partition or make one in the last 64 MiB of free space, write the config drive
//! into it by byte offset, and check it by reading it back — no partition node, no mount.

use std::fs::File;
use std::os::unix::fs::FileExt;

use crate::configdrive::{self, DriveKind};
use crate::disk::device::Target;
use crate::disk::partitions::{self, LayoutError, Part, TableKind};
use crate::errors::AgentError;
use crate::image::fetch::{fetch_bytes, FetchConfig};

/// The partition made for a config drive (IPA: `-64MiB`).
const PARTITION_SIZE: u64 = 64 << 20;

/// The filesystem label of a partition, read from its first bytes: an ISO9660 volume id or a
/// FAT volume label.
pub(crate) fn partition_label(disk: &File, part: &Part) -> Option<String> {
    let mut head = vec![0u8; 34816.min(part.size as usize)];
    disk.read_exact_at(&mut head, part.start).ok()?;
    configdrive::label(&head)
}

/// Decodes a `configdrive` argument, downloading it when it is a URL (the TLS settings of
/// `cfg`, no proxies or image auth, as IPA; a bounded body).
pub(crate) fn materialise(
    node: &str,
    configdrive: &str,
    cfg: &FetchConfig,
) -> Result<Vec<u8>, AgentError> {
    let limit = configdrive::MAX_CONFIG_DRIVE_SIZE as usize * 2;
    configdrive::materialise(node, configdrive, &|url: &str| {
        fetch_bytes(url, cfg, limit).map_err(Into::into)
    })
}

/// Writes a config drive (already decoded by [`materialise`], so a bad one fails before the
/// image is written) onto the target disk for `node`. `rebuild` forces the vfat copy (IPA's
/// `config_drive_rebuild`).
pub(crate) fn write_config_drive(
    node: &str,
    target: &Target,
    image: Vec<u8>,
    rebuild: bool,
) -> Result<Part, AgentError> {
    let dev = target.path().display().to_string();
    let failed = |e: &dyn std::fmt::Display| {
        AgentError::Deployment(format!(
            "Failed to create config drive on disk {dev} for node {node}. Error: {e}"
        ))
    };
    // The target holds the disk exclusively (O_EXCL) for the whole deploy.
    let disk = target.file();
    let tbl = partitions::read_table(disk)
        .map_err(|e| failed(&e))?
        .ok_or_else(|| failed(&"the disk has no partition table"))?;
    let existing: Vec<&Part> = tbl
        .parts
        .iter()
        .filter(|p| partition_label(disk, p).is_some_and(|l| l.eq_ignore_ascii_case("config-2")))
        .collect();
    if existing.len() > 1 {
        return Err(AgentError::Deployment(format!(
            "More than one partition with label \"config-2\" exists on device {dev} for node {node}."
        )));
    }
    target.mark_touched();
    if tbl.kind == TableKind::Gpt {
        partitions::relocate_backup_gpt(disk).map_err(|e| failed(&e))?;
    }
    let part = match existing.first() {
        Some(p) => {
            tracing::info!(partition = p.number, "reusing the existing config-2 partition");
            (*p).clone()
        }
        None => partitions::add_end_partition(disk, PARTITION_SIZE).map_err(|e| match e {
            LayoutError::TooManyPrimaries(n) => AgentError::Deployment(format!(
                "Config drive cannot be created for node {node}. Disk ({dev}) uses MBR partitioning and already has {n} primary partitions."
            )),
            other => failed(&other),
        })?,
    };

    // ISO9660 does not work on 4K-sector disks: IPA then rebuilds the drive as vfat.
    let sector = target.sector_size();
    let data = if (rebuild || sector == 4096) && configdrive::kind(&image) == DriveKind::Iso9660 {
        tracing::info!("rebuilding the config drive as vfat");
        configdrive::rebuild_vfat(&image, part.size.min(PARTITION_SIZE)).map_err(|e| {
            AgentError::Deployment(format!(
                "A failure occurred while attempting to format, copy, and re-create the configuration drive for node {node}. Error: {e}"
            ))
        })?
    } else {
        image
    };
    if data.len() as u64 > part.size {
        return Err(failed(&format!(
            "the config drive ({} bytes) does not fit its partition ({} bytes)",
            data.len(),
            part.size
        )));
    }
    disk.write_all_at(&data, part.start)
        .map_err(|e| failed(&e))?;
    // Clear what an older, larger drive may have left after it.
    let tail = (part.size - data.len() as u64).min(1 << 20) as usize;
    disk.write_all_at(&vec![0u8; tail], part.start + data.len() as u64)
        .map_err(|e| failed(&e))?;
    disk.sync_data().map_err(|e| failed(&e))?;

    let mut back = vec![0u8; data.len()];
    disk.read_exact_at(&mut back, part.start)
        .map_err(|e| failed(&e))?;
    configdrive::check(&back)
        .map_err(|e| failed(&format!("the written config drive does not check out: {e}")))?;
    target.rescan();
    tracing::info!(
        partition = part.number,
        start = part.start,
        "config drive written"
    );
    Ok(part)
}
