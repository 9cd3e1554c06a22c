//! Partition images (`image_type: partition`, docs/data-path.md#partition-images): IPA's layout (ESP or BIOS boot,
//! ephemeral, swap, config drive, root last), made natively; the image written into the root
//! partition through the normal pipeline; file systems made with the standard mkfs tools.
//!
//! mkfs and the image writer want a block device per partition: the kernel's partition node
//! when it made one (real ramdisks), else a loop device over the partition's byte range.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{json, Map, Value};

use super::pipeline::{self, DeployOptions};
use crate::disk::device::open_exclusive;
use crate::disk::partitions::{self, create::NewPart, types::PartKind};
use crate::errors::AgentError;
use crate::external::{self, ToolFailure};
use crate::image::fetch::{FetchConfig, Progress};
use crate::image::info::ImageInfo;

const MIB: u64 = 1 << 20;

/// `uefi` or `bios`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BootMode {
    /// UEFI: an EFI system partition, and always GPT.
    Uefi,
    /// Legacy BIOS.
    Bios,
}

/// IPA's order: secure boot → uefi; `instance_info.deploy_boot_mode` >
/// `properties.capabilities.boot_mode` > `driver_internal_info.deploy_boot_mode` > image_info's
/// `deploy_boot_mode` > how this machine booted.
pub(crate) fn boot_mode(node: &Value, info: &ImageInfo) -> BootMode {
    let caps = |v: Option<&Value>, key: &str| -> Option<String> {
        match v? {
            Value::Object(o) => o.get(key).map(|x| match x {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            }),
            // Capabilities may also come as "k1:v1,k2:v2".
            Value::String(s) => s.split(',').find_map(|kv| {
                let (k, v) = kv.split_once(':')?;
                (k.trim() == key).then(|| v.trim().to_string())
            }),
            _ => None,
        }
    };
    if caps(node.pointer("/instance_info/capabilities"), "secure_boot").as_deref() == Some("true") {
        return BootMode::Uefi;
    }
    let pick = node
        .pointer("/instance_info/deploy_boot_mode")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .or_else(|| caps(node.pointer("/properties/capabilities"), "boot_mode"))
        .or_else(|| {
            node.pointer("/driver_internal_info/deploy_boot_mode")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .or_else(|| info.deploy_boot_mode.clone());
    match pick.as_deref() {
        Some("uefi") => BootMode::Uefi,
        Some(_) => BootMode::Bios,
        None if Path::new("/sys/firmware/efi").exists() => BootMode::Uefi,
        None => BootMode::Bios,
    }
}

/// uefi → gpt; else the `disk_label` capability (instance_info over properties) or
/// image_info's, `gpt` or the default `msdos`.
pub(crate) fn disk_label_gpt(node: &Value, info: &ImageInfo, mode: BootMode) -> bool {
    if mode == BootMode::Uefi {
        return true;
    }
    let from = |p: &str| -> Option<String> {
        let v = node.pointer(p)?;
        match v {
            Value::Object(o) => o
                .get("disk_label")
                .and_then(Value::as_str)
                .map(str::to_owned),
            Value::String(s) => s.split(',').find_map(|kv| {
                let (k, v) = kv.split_once(':')?;
                (k.trim() == "disk_label").then(|| v.trim().to_string())
            }),
            _ => None,
        }
    };
    let label = from("/instance_info/capabilities")
        .or_else(|| from("/properties/capabilities"))
        .or_else(|| info.disk_label.clone());
    label.as_deref() == Some("gpt")
}

/// One planned partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Planned {
    /// `efi system partition`, `bios`, `ephemeral`, `swap`, `configdrive`, `root`.
    pub role: &'static str,
    /// 1-based number.
    pub number: u32,
    /// First byte.
    pub start: u64,
    /// Bytes.
    pub size: u64,
}

impl Planned {
    /// The partition as the table writer takes it.
    fn new_part(&self, mode: BootMode) -> NewPart {
        let kind = match self.role {
            "efi system partition" => PartKind::Esp,
            "bios" => PartKind::BiosBoot,
            "swap" => PartKind::Swap,
            "configdrive" => PartKind::ConfigDrive,
            _ => PartKind::Linux,
        };
        NewPart {
            number: self.number,
            start: self.start,
            size: self.size,
            kind,
            name: self.role.to_string(),
            bootable: self.role == "root" && mode == BootMode::Bios,
        }
    }
}

/// IPA's layout: contiguous from 1 MiB, root last.
pub(crate) fn plan(
    info: &ImageInfo,
    mode: BootMode,
    gpt: bool,
    configdrive_mb: u64,
) -> Vec<Planned> {
    let mut sizes: Vec<(&'static str, u64)> = Vec::new();
    if mode == BootMode::Uefi {
        sizes.push(("efi system partition", 550));
    } else if gpt {
        sizes.push(("bios", 1));
    }
    let eph = info.ephemeral_mb.unwrap_or(0);
    if eph > 0 {
        sizes.push(("ephemeral", eph));
    }
    let swap = info.swap_mb.unwrap_or(0);
    if swap > 0 {
        sizes.push(("swap", swap));
    }
    if configdrive_mb > 0 {
        sizes.push(("configdrive", configdrive_mb));
    }
    sizes.push(("root", root_mb(info)));
    let mut at = MIB;
    sizes
        .into_iter()
        .enumerate()
        .map(|(i, (role, mb))| {
            let p = Planned {
                role,
                number: i as u32 + 1,
                start: at,
                size: mb * MIB,
            };
            at += mb * MIB;
            p
        })
        .collect()
}

fn root_mb(info: &ImageInfo) -> u64 {
    info.root_mb.or(info.root_gb.map(|g| g * 1024)).unwrap_or(0)
}

/// The name IPA gives partition `n` of `dev` (`<dev><n>`, or `<dev>p<n>` after a digit).
pub(crate) fn partition_path(dev: &Path, n: u32) -> PathBuf {
    let d = dev.display().to_string();
    if d.ends_with(|c: char| c.is_ascii_digit()) {
        PathBuf::from(format!("{d}p{n}"))
    } else {
        PathBuf::from(format!("{d}{n}"))
    }
}

/// A block device for one partition: the kernel's node, or a loop device over its byte range
/// (detached on drop).
pub(crate) struct PartDev {
    /// The device to use.
    pub path: PathBuf,
    looped: bool,
}

impl PartDev {
    /// Opens partition `p` of `disk`.
    pub(crate) fn open(disk: &Path, p: &Planned) -> Result<PartDev, ToolFailure> {
        let node = partition_path(disk, p.number);
        if node_matches(&node, p) {
            return Ok(PartDev {
                path: node,
                looped: false,
            });
        }
        let (start, size) = (p.start.to_string(), p.size.to_string());
        let disk = disk.display().to_string();
        let args = ["-f", "--show", "-o", &start, "--sizelimit", &size, &disk];
        let path = PathBuf::from(external::run("losetup", &args)?);
        Ok(PartDev { path, looped: true })
    }
}

/// Whether `node` is the kernel's device for exactly this partition. A node can be stale (left
/// by an older table, or by a kernel that re-read the table before we wrote ours): its start
/// and size in sysfs must be ours, or the loop device is used instead.
fn node_matches(node: &Path, p: &Planned) -> bool {
    let is_block = std::fs::metadata(node)
        .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_block_device(&m.file_type()));
    let Some(name) = node.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    let read = |f: &str| -> Option<u64> {
        std::fs::read_to_string(format!("/sys/class/block/{name}/{f}"))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    is_block && read("start") == Some(p.start / 512) && read("size") == Some(p.size / 512)
}

impl Drop for PartDev {
    fn drop(&mut self) {
        if self.looped {
            if let Err(e) = external::run("losetup", &[std::path::Path::new("-d"), &self.path]) {
                tracing::warn!("could not detach {}: {e}", self.path.display());
            }
        }
    }
}

fn run(dev: &Path, cmd: &str, args: &[&str]) -> Result<(), AgentError> {
    external::run(cmd, args)
        .map(drop)
        .map_err(|f| f.image_write(dev))
}

fn blkid(dev: &Path, tag: &str) -> Option<String> {
    let dev = dev.display().to_string();
    let v = external::run("blkid", &["-p", "-s", tag, "-o", "value", &dev]).ok()?;
    (!v.is_empty()).then_some(v)
}

/// What a partition-image deploy produced: IPA's `get_partition_uuids` dict and the root UUID.
pub(crate) struct PartitionResult {
    /// `{"partitions": {...}, "root uuid": ..., "efi system partition uuid": ...}`.
    pub uuids: Value,
    /// Root file system UUID (or PARTUUID).
    pub root_uuid: Option<String>,
    /// ESP UUID, for UEFI.
    pub efi_uuid: Option<String>,
}

/// Deploys a partition image onto `device`.
pub(crate) fn deploy(
    info: &ImageInfo,
    node: &Value,
    device: &Path,
    configdrive: Option<&str>,
    cfg: &FetchConfig,
    opts: &DeployOptions,
    progress: Arc<Progress>,
) -> Result<PartitionResult, AgentError> {
    let mode = boot_mode(node, info);
    let gpt = disk_label_gpt(node, info, mode);
    let root = root_mb(info);
    // The size check comes before anything is written (IPA's message).
    if let Some(size) = pipeline::probe_virtual_size(info, cfg)? {
        let mb = size.div_ceil(MIB);
        if mb > root {
            return Err(AgentError::InvalidCommandParams(format!(
                "Root partition is too small for requested image. Image virtual size: {mb} MB, Root size: {root} MB"
            )));
        }
    }
    let cd = match configdrive {
        Some(c) if !c.is_empty() => Some(super::configdrive_write::materialise(
            info.node_label(),
            c,
            cfg,
        )?),
        _ => None,
    };
    let cd_mb = cd
        .as_ref()
        .map(|c| (c.len() as u64).div_ceil(MIB).max(1))
        .unwrap_or(0);
    let parts = plan(info, mode, gpt, cd_mb);
    let disk = open_exclusive(device).map_err(|e| {
        AgentError::DeviceNotFound(format!("Cannot open {}: {e}", device.display()))
    })?;
    let end = parts.last().map(|p| p.start + p.size).unwrap_or(0);
    let disk_len = std::io::Seek::seek(&mut &disk, std::io::SeekFrom::End(0)).unwrap_or(0);
    if end + MIB > disk_len {
        return Err(AgentError::ImageWrite(format!(
            "Writing image to device {} failed: the partitions need {} MiB but the disk has {} MiB",
            device.display(),
            (end + MIB) / MIB,
            disk_len / MIB
        )));
    }
    let partuuids = if info.preserve_ephemeral {
        // Nothing is repartitioned: the existing table must be the one this request implies,
        // or the root image would land beside the partition the table describes.
        let existing = partitions::read_table(&disk)
            .ok()
            .flatten()
            .map(|t| t.parts)
            .unwrap_or_default();
        for p in &parts {
            let same = existing
                .iter()
                .any(|e| e.number == p.number && e.start == p.start && e.size == p.size);
            if !same {
                return Err(AgentError::Deployment(format!(
                    "Cannot preserve the ephemeral partition on {}: the existing partition {} ({}) does not match the requested layout",
                    device.display(),
                    p.number,
                    p.role
                )));
            }
        }
        existing
            .into_iter()
            .map(|e| e.guid.map(|g| g.to_string()))
            .collect()
    } else {
        let table: Vec<NewPart> = parts.iter().map(|p| p.new_part(mode)).collect();
        partitions::create::write_new_table(&disk, &table, gpt).map_err(|e| {
            AgentError::Deployment(format!(
                "Disk partitioning failed on device {}. Error: {e}",
                device.display()
            ))
        })?
    };
    partitions::tell_kernel(&disk, device);
    drop(disk);

    let find = |role: &str| parts.iter().find(|p| p.role == role);
    let root_p =
        find("root").ok_or_else(|| AgentError::Deployment("no root partition planned".into()))?;
    let root_dev = PartDev::open(device, root_p).map_err(|e| {
        tracing::error!("root partition device: {e}");
        AgentError::Deployment(format!(
            "Root device '{}' not found",
            partition_path(device, root_p.number).display()
        ))
    })?;
    pipeline::write_image_to_path(info, &root_dev.path, cfg, opts, progress)?;

    let mut efi_uuid = None;
    for p in &parts {
        let mk = |args: Vec<String>, cmd: &str| -> Result<(), AgentError> {
            let d = PartDev::open(device, p).map_err(|e| {
                tracing::error!("{} partition device: {e}", p.role);
                AgentError::Deployment(format!(
                    "'{}' device '{}' not found",
                    p.role,
                    partition_path(device, p.number).display()
                ))
            })?;
            let mut a: Vec<String> = args;
            a.push(d.path.display().to_string());
            let refs: Vec<&str> = a.iter().map(String::as_str).collect();
            run(device, cmd, &refs)
        };
        match p.role {
            "efi system partition" => {
                // -I: a loop device over the partition may look like a whole disk to mkfs.vfat.
                mk(
                    vec!["-I".into(), "-n".into(), "efi-part".into()],
                    "mkfs.vfat",
                )?;
                let d =
                    PartDev::open(device, p).map_err(|e| AgentError::Deployment(e.to_string()))?;
                efi_uuid = blkid(&d.path, "UUID");
            }
            "swap" => mk(vec!["-L".into(), "swap1".into()], "mkswap")?,
            "ephemeral" if !info.preserve_ephemeral => {
                let fmt = info
                    .ephemeral_format
                    .clone()
                    .unwrap_or_else(|| "ext4".into());
                let mut a = vec![];
                if fmt == "ext3" || fmt == "ext4" {
                    a.push("-F".to_string());
                }
                a.extend(["-L".to_string(), "ephemeral0".to_string()]);
                mk(a, &format!("mkfs.{fmt}"))?;
            }
            "configdrive" => {
                if let Some(data) = &cd {
                    let f = OpenOptions::new()
                        .write(true)
                        .open(device)
                        .map_err(|e| AgentError::Deployment(e.to_string()))?;
                    std::os::unix::fs::FileExt::write_all_at(&f, data, p.start)
                        .and_then(|()| f.sync_data())
                        .map_err(|e| {
                            AgentError::Deployment(format!(
                                "Failed to write the config drive to {}: {e}",
                                device.display()
                            ))
                        })?;
                }
            }
            _ => {}
        }
    }
    let root_uuid = blkid(&root_dev.path, "UUID")
        .or_else(|| partuuids.get(root_p.number as usize - 1).cloned().flatten());
    let mut names = Map::new();
    for p in &parts {
        let key = match p.role {
            "efi system partition" => "efi system partition",
            "bios" => "bios boot",
            r => r,
        };
        names.insert(
            key.into(),
            json!(partition_path(device, p.number).display().to_string()),
        );
    }
    let uuids = json!({
        "partitions": names,
        "root uuid": root_uuid,
        "efi system partition uuid": efi_uuid,
    });
    Ok(PartitionResult {
        uuids,
        root_uuid,
        efi_uuid,
    })
}
