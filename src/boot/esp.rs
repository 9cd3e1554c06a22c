//! The EFI System Partition: finding it on the disk, and finding the boot loaders on it, read
//! natively with `fatfs` straight from the disk (no partition device node, no mount, no vfat
//! driver), where IPA runs parted/sgdisk/lsblk, mounts it and walks it with `os.walk`.
//!
//! IPA's rules (`efi_utils.manage_uefi`, `_get_efi_bootloaders`, `_run_efibootmgr`):
//! - the ESP is the first partition flagged `esp` (GPT type C12A7328-..., MBR type 0xEF); only if
//!   there is none, the partition matching `efi_system_part_uuid` (filesystem UUID, PARTUUID or
//!   label, as `partition_utils.get_partition` matches lsblk's output);
//! - the walk is top-down, each directory's files before its subdirectories, in directory order;
//!   a file counts when its lower-cased name is in [`BOOTLOADERS_EFI`] (every file on a vfat
//!   mount is executable, so IPA's `X_OK` test passes for all of them);
//! - the first `*.csv` found wins alone (its first two fields give the loader, relative to the
//!   CSV's directory, and the label); otherwise every `.efi` found, labelled `ironic1`, `ironic2`...
//!   in walk order. Note `shimx64.efi`/`grubx64.efi` are not in IPA's list: only a CSV reaches them.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use super::error::{BootError, CsvError};
use super::partitions::{read_partitions, Partition};
use super::window::PartitionWindow;

/// IPA's `BOOTLOADERS_EFI`: the file names (lower case) that mark a boot loader or a CSV.
pub const BOOTLOADERS_EFI: [&str; 13] = [
    "bootx64.csv",
    "bootaa64.csv",
    "boot.csv",
    "bootia32.efi",
    "bootx64.efi",
    "bootia64.efi",
    "bootarm.efi",
    "bootaa64.efi",
    "bootriscv32.efi",
    "bootriscv64.efi",
    "bootriscv128.efi",
    "grubaa64.efi",
    "winload.efi",
];

/// Directory depth the walk gives up at (a damaged FAT can loop; real ESPs are 2-3 deep).
const MAX_DEPTH: usize = 32;

/// A boot loader to register: the entry's label and the loader's path on the ESP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loader {
    /// `ironic<N>`, or the CSV's label.
    pub label: String,
    /// The path with backslashes and a leading backslash (`\EFI\BOOT\BOOTX64.EFI`).
    pub path: String,
}

type Fat = fatfs::FileSystem<PartitionWindow>;

fn open_fat(disk: &Path, part: &Partition) -> io::Result<Fat> {
    let file = File::open(disk)?;
    let reader = PartitionWindow::read_only(file, part.offset(), part.len());
    fatfs::FileSystem::new(reader, fatfs::FsOptions::new())
}

/// IPA's text when a disk has no ESP and no ESP UUID was recorded.
pub fn no_esp_message(disk: &Path) -> String {
    format!(
        "No EFI partition could be detected on device {} and EFI partition UUID has not been \
         recorded during deployment (which is often the case for whole disk images). Are you \
         using a UEFI-compatible image?",
        disk.display()
    )
}

/// Finds the ESP: the first ESP-typed partition, else the one `esp_uuid` names.
pub fn find_esp(disk: &Path, esp_uuid: Option<&str>) -> Result<Partition, BootError> {
    let parts = read_partitions(disk)?;
    if let Some(p) = parts.iter().find(|p| p.is_esp()) {
        tracing::debug!(
            "found EFI partition {} on {}",
            p.hd.partition_number,
            disk.display()
        );
        return Ok(p.clone());
    }
    let Some(uuid) = esp_uuid.filter(|u| !u.is_empty()) else {
        return Err(BootError::DeviceNotFound(no_esp_message(disk)));
    };
    for p in &parts {
        if partition_has_id(disk, p, uuid) {
            return Ok(p.clone());
        }
    }
    Err(BootError::DeviceNotFound(format!(
        "No partition with UUID {uuid} found on device {}",
        disk.display()
    )))
}

/// Whether `id` is the partition's PARTUUID, or its FAT volume serial (`XXXX-XXXX`, as blkid
/// prints a vfat UUID) or label: the three columns IPA compares in lsblk's output.
fn partition_has_id(disk: &Path, p: &Partition, id: &str) -> bool {
    if p.partuuid().eq_ignore_ascii_case(id) {
        return true;
    }
    let Ok(fs) = open_fat(disk, p) else {
        return false;
    };
    let serial = fs.volume_id();
    if format!("{:04X}-{:04X}", serial >> 16, serial & 0xffff).eq_ignore_ascii_case(id) {
        return true;
    }
    let label = match fs.read_volume_label_from_root_dir() {
        Ok(Some(l)) => l,
        _ => fs.volume_label(),
    };
    let label = label.trim_end();
    !label.is_empty() && label != "NO NAME" && label == id
}

/// The loaders on the ESP, as IPA finds and labels them; empty for an ESP without any (IPA's
/// "Empty EFI partition detected").
pub fn find_loaders(disk: &Path, esp: &Partition) -> Result<Vec<Loader>, BootError> {
    let esp_err = |source| BootError::Esp {
        disk: disk.to_path_buf(),
        partition: esp.hd.partition_number,
        source,
    };
    let fs = open_fat(disk, esp).map_err(esp_err)?;
    let mut efis = Vec::new();
    if let Some(csv) = walk(&fs.root_dir(), "", 0, &mut efis).map_err(esp_err)? {
        tracing::debug!("a CSV file has been identified as a bootloader hint: {csv}");
        let mut bytes = Vec::new();
        fs.root_dir()
            .open_file(&csv)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(esp_err)?;
        let loader = loader_from_csv(&csv, &bytes).map_err(|reason| BootError::InvalidCsv {
            disk: disk.to_path_buf(),
            path: csv.clone(),
            reason,
        })?;
        return Ok(vec![loader]);
    }
    Ok(efis
        .iter()
        .enumerate()
        .map(|(i, p)| Loader {
            label: format!("ironic{}", i + 1),
            path: esp_path(p),
        })
        .collect())
}

/// Walks `dir` like `os.walk`: collects loader files into `efis`, returns the first CSV.
fn walk<T: fatfs::ReadWriteSeek>(
    dir: &fatfs::Dir<'_, T>,
    prefix: &str,
    depth: usize,
    efis: &mut Vec<String>,
) -> io::Result<Option<String>> {
    let mut subdirs = Vec::new();
    for entry in dir.iter() {
        let entry = entry?;
        let name = entry.file_name();
        if name == "." || name == ".." {
            continue;
        }
        let rel = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}/{name}")
        };
        if entry.is_dir() {
            subdirs.push((rel, entry.to_dir()));
            continue;
        }
        let lower = name.to_lowercase();
        if !BOOTLOADERS_EFI.contains(&lower.as_str()) {
            continue;
        }
        if lower.ends_with(".csv") {
            return Ok(Some(rel));
        }
        efis.push(rel);
    }
    if depth >= MAX_DEPTH {
        tracing::warn!("not walking below {prefix} on the ESP: too deep");
        return Ok(None);
    }
    for (rel, sub) in subdirs {
        if let Some(csv) = walk(&sub, &rel, depth + 1, efis)? {
            return Ok(Some(csv));
        }
    }
    Ok(None)
}

/// `EFI/BOOT/BOOTX64.EFI` -> `\EFI\BOOT\BOOTX64.EFI`.
fn esp_path(rel: &str) -> String {
    format!("\\{}", rel.replace('/', "\\"))
}

/// A `BOOT*.CSV` (shim's fallback list: `loader,label,options,description`, UTF-16) as IPA
/// reads it: the loader is relative to the CSV's directory; options are not used.
pub fn loader_from_csv(csv_path: &str, bytes: &[u8]) -> Result<Loader, CsvError> {
    let text = decode_utf16(bytes)?;
    let mut fields = text.splitn(4, ',');
    let (Some(file), Some(label)) = (fields.next(), fields.next()) else {
        return Err(CsvError::TooFewFields);
    };
    // IPA reads the whole file, so a first line with only two fields would leave the line
    // break in the label; keep to the first line.
    let label = label.lines().next().unwrap_or_default();
    let dir = csv_path.rsplit_once('/').map(|(d, _)| d);
    let rel = match dir {
        Some(d) => format!("{d}/{file}"),
        None => file.to_string(),
    };
    Ok(Loader {
        label: label.to_string(),
        path: esp_path(&rel),
    })
}

/// Python's `utf-16` codec: a BOM picks the byte order (and is dropped), else little-endian.
fn decode_utf16(bytes: &[u8]) -> Result<String, CsvError> {
    let (le, body) = match bytes {
        [0xff, 0xfe, rest @ ..] => (true, rest),
        [0xfe, 0xff, rest @ ..] => (false, rest),
        _ => (true, bytes),
    };
    if body.len() % 2 != 0 {
        return Err(CsvError::OddLength(bytes.len()));
    }
    let units: Vec<u16> = body
        .chunks_exact(2)
        .map(|c| {
            if le {
                u16::from_le_bytes([c[0], c[1]])
            } else {
                u16::from_be_bytes([c[0], c[1]])
            }
        })
        .collect();
    String::from_utf16(&units).map_err(CsvError::NotUtf16)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utf16le(s: &str, bom: bool) -> Vec<u8> {
        let mut v = if bom { vec![0xff, 0xfe] } else { vec![] };
        v.extend(s.encode_utf16().flat_map(|c| c.to_le_bytes()));
        v
    }

    #[test]
    fn csv_like_ipa() {
        let csv = "shimx64.efi,ubuntu,,This is the boot entry for ubuntu\n";
        for bom in [true, false] {
            let l = loader_from_csv("EFI/ubuntu/BOOTX64.CSV", &utf16le(csv, bom)).unwrap();
            assert_eq!(l.label, "ubuntu");
            assert_eq!(l.path, r"\EFI\ubuntu\shimx64.efi");
        }
        let mut be = vec![0xfe, 0xff];
        be.extend(
            "grubx64.efi,Red Hat,x"
                .encode_utf16()
                .flat_map(|c| c.to_be_bytes()),
        );
        let l = loader_from_csv("BOOT.CSV", &be).unwrap();
        assert_eq!(
            (l.label.as_str(), l.path.as_str()),
            ("Red Hat", r"\grubx64.efi")
        );
        let l = loader_from_csv("EFI/x/BOOT.CSV", &utf16le("a.efi,two\r\n", true)).unwrap();
        assert_eq!(l.label, "two");
        assert!(loader_from_csv("BOOT.CSV", &utf16le("only-one-field", true)).is_err());
        assert!(loader_from_csv("BOOT.CSV", b"abc").is_err(), "odd length");
        assert!(
            loader_from_csv("BOOT.CSV", &[0x00, 0xd8, b'a', 0]).is_err(),
            "lone surrogate"
        );
    }
}
