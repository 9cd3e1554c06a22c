//! IPA's `partition_utils.get_partition(device, uuid)`: the partition of the install disk whose
//! file system UUID, PARTUUID or label is `uuid` (the columns IPA reads from lsblk, in that
//! order). The partition table is read natively; the file system's UUID, label and type come
//! from `blkid -p` probing the partition's byte range of the disk (`--offset/--size`), so no
//! partition device node is needed to find it.

use std::path::Path;

use crate::boot::partitions::{read_partitions, Partition};
use crate::errors::AgentError;
use crate::external;

/// What `blkid -p` says of a partition's content.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Probe {
    /// The file system UUID (`UUID`).
    pub uuid: Option<String>,
    /// The file system label (`LABEL`).
    pub label: Option<String>,
    /// The file system type (`TYPE`), e.g. `ext4`, `vfat`.
    pub fstype: Option<String>,
}

impl Probe {
    /// Parses `blkid -o export` output.
    pub(crate) fn parse(text: &str) -> Probe {
        let mut p = Probe::default();
        for line in text.lines() {
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            let v = Some(v.trim().to_string()).filter(|v| !v.is_empty());
            match k.trim() {
                "UUID" => p.uuid = v,
                "LABEL" => p.label = v,
                "TYPE" => p.fstype = v,
                _ => {}
            }
        }
        p
    }
}

/// Probes partition `part` of `disk` (empty when blkid finds nothing).
pub(crate) fn probe(disk: &Path, part: &Partition) -> Probe {
    let (off, size) = (part.offset().to_string(), part.len().to_string());
    let disk = disk.display().to_string();
    let args = ["-p", "-o", "export", "-O", &off, "-S", &size, &disk];
    match external::run("blkid", &args) {
        Ok(out) => Probe::parse(&out),
        Err(e) => {
            tracing::debug!("blkid found nothing at offset {off} of {disk}: {e}");
            Probe::default()
        }
    }
}

/// The partition whose UUID, PARTUUID or label is `uuid`, and what blkid says of it.
/// Errors: IPA's `DeviceNotFound` "No partition with UUID <uuid> found on device <dev>".
pub(crate) fn get_partition(disk: &Path, uuid: &str) -> Result<(Partition, Probe), AgentError> {
    let parts = read_partitions(disk).map_err(|e| e.into_install_error(disk))?;
    for p in parts {
        let probe = probe(disk, &p);
        let same = |v: &Option<String>| v.as_deref().is_some_and(|v| v.eq_ignore_ascii_case(uuid));
        if same(&probe.uuid) || p.partuuid().eq_ignore_ascii_case(uuid) || same(&probe.label) {
            tracing::debug!(
                "Partition {uuid} found on device {}: number {}",
                disk.display(),
                p.hd.partition_number
            );
            return Ok((p, probe));
        }
    }
    let msg = format!(
        "No partition with UUID {uuid} found on device {}",
        disk.display()
    );
    tracing::error!("{msg}");
    Err(AgentError::DeviceNotFound(msg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blkid_export_is_parsed() {
        let p =
            Probe::parse("DEVNAME=/dev/loop0\nUUID=ab-cd\nBLOCK_SIZE=4096\nTYPE=ext4\nLABEL=\n");
        assert_eq!(p.uuid.as_deref(), Some("ab-cd"));
        assert_eq!(p.fstype.as_deref(), Some("ext4"));
        assert_eq!(p.label, None, "an empty label is no label");
    }
}
