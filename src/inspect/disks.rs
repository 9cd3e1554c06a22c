//! Disks, as IPA 13's `list_block_devices` reports them, built on the deploy's own disk list
//! ([`crate::disk::root::list_devices`]) so that inspection and deploy see the same disks and
//! pick the same root disk. Each disk gets the fields IPA takes from `lsblk` and udev:
//! udev's database (`/run/udev/data/b<major>:<minor>`) for serial and WWNs, the
//! `/dev/disk/by-path` links, sector sizes from the queue, and lsblk's transport rules.

use std::collections::HashMap;

use super::machine::{non_empty, Machine};
use super::model::Disk;
use crate::disk::root::{self, BlockDevice};

/// The disks of `m` (size 0 left out, as IPA does), sorted by name, and the one the deploy
/// would install onto without hints: `root_device` when configured, else IPA's
/// smallest-disk-of-4-GiB rule over the same list.
pub(crate) fn disks(m: &Machine, root_device: Option<&str>) -> (Vec<Disk>, Option<Disk>) {
    let devices = root::list_devices(&m.path("/sys/block"));
    let by_path = by_path_links(m);
    let chosen = match root_device {
        Some(d) => Some(d.to_string()),
        None => root::select(&devices, None, &[])
            .ok()
            .map(|p| p.display().to_string()),
    };
    let mut disks: Vec<Disk> = devices
        .iter()
        .filter(|d| d.size > 0)
        .map(|d| describe(m, d, &by_path))
        .collect();
    disks.sort_by(|a, b| a.name.cmp(&b.name));
    let root_disk = chosen.and_then(|c| disks.iter().find(|d| d.name == c).cloned());
    (disks, root_disk)
}

/// One disk with the fields IPA reports.
fn describe(m: &Machine, d: &BlockDevice, by_path: &HashMap<String, String>) -> Disk {
    let kname = d.name.trim_start_matches("/dev/");
    let sys = format!("/sys/block/{kname}");
    let udev = udev_properties(m, &sys);
    let prop = |k: &str| udev.get(k).cloned().and_then(non_empty);
    let sector = |f: &str| {
        m.read(&format!("{sys}/queue/{f}"))
            .and_then(|s| s.parse().ok())
    };
    Disk {
        name: d.name.clone(),
        model: non_empty(d.model.clone()),
        size: d.size,
        rotational: d.rotational,
        // lsblk's WWN is udev's (with extension first); the deploy's list adds sysfs' wwid.
        wwn: prop("ID_WWN_WITH_EXTENSION")
            .or_else(|| prop("ID_WWN"))
            .or_else(|| non_empty(d.wwn.clone())),
        // lsblk's SERIAL (udev's SCSI serial or short serial, else sysfs), then udev's
        // long serial, as IPA falls back to it.
        serial: prop("ID_SCSI_SERIAL")
            .or_else(|| prop("ID_SERIAL_SHORT"))
            .or_else(|| non_empty(d.serial.clone()))
            .or_else(|| prop("ID_SERIAL")),
        vendor: m.read(&format!("{sys}/device/vendor")),
        wwn_with_extension: prop("ID_WWN_WITH_EXTENSION"),
        wwn_vendor_extension: prop("ID_WWN_VENDOR_EXTENSION"),
        hctl: non_empty(d.hctl.clone()),
        by_path: by_path.get(&d.name).cloned(),
        logical_sectors: sector("logical_block_size"),
        physical_sectors: sector("physical_block_size"),
        tran: transport(m, kname),
    }
}

/// `/dev/disk/by-path/*` → device, resolved textually (the links are relative), under the
/// root.
fn by_path_links(m: &Machine) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for link in m.list("/dev/disk/by-path") {
        let Ok(target) = std::fs::read_link(m.path(&format!("/dev/disk/by-path/{link}"))) else {
            continue;
        };
        let Some(dev) = target.file_name() else {
            continue;
        };
        let dev = format!("/dev/{}", dev.to_string_lossy());
        // Several links may name one disk; keep the first in name order, as a stable choice.
        out.entry(dev)
            .or_insert_with(|| format!("/dev/disk/by-path/{link}"));
    }
    out
}

/// udev's properties of a block device (`E:` lines of its database entry).
pub(crate) fn udev_properties(m: &Machine, sys: &str) -> HashMap<String, String> {
    let Some(dev) = m.read(&format!("{sys}/dev")) else {
        return HashMap::new();
    };
    m.read(&format!("/run/udev/data/b{dev}"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("E:"))
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// lsblk's TRAN column: the SCSI host's transport class (spi, fc/fcoe, sas, iscsi), USB in
/// the device path, the SCSI driver's name for (S)ATA, else the kernel name.
fn transport(m: &Machine, kname: &str) -> Option<String> {
    let dev = format!("/sys/block/{kname}/device");
    let host = m
        .list(&format!("{dev}/scsi_device"))
        .first()
        .and_then(|hctl| hctl.split(':').next().map(|h| format!("host{h}")));
    let host_is = |class: &str| {
        host.as_ref()
            .is_some_and(|h| m.path(&format!("/sys/class/{class}_host/{h}")).exists())
    };
    let host_attr = |class: &str, attr: &str| {
        host.as_ref()
            .and_then(|h| m.read(&format!("/sys/class/{class}_host/{h}/{attr}")))
    };
    let t = if host.is_none() {
        None
    } else if host_is("spi") {
        Some("spi")
    } else if host_is("fc") {
        let name = host_attr("fc", "symbolic_name")?;
        Some(if name.contains(" over ") {
            "fcoe"
        } else {
            "fc"
        })
    } else if host_is("sas") || m.path(&format!("{dev}/sas_device")).exists() {
        Some("sas")
    } else if m.path(&format!("{dev}/ieee1394_id")).exists() {
        Some("sbp")
    } else if host_is("iscsi") {
        Some("iscsi")
    } else if device_path(m, &dev).contains("usb") {
        Some("usb")
    } else if host_is("scsi") {
        let proc_name = host_attr("scsi", "proc_name")?;
        if proc_name.starts_with("ahci") || proc_name.starts_with("sata") {
            Some("sata")
        } else if proc_name.contains("ata") {
            Some("ata")
        } else {
            None
        }
    } else {
        None
    };
    let t = t.or(if kname.starts_with("nvme") {
        Some("nvme")
    } else if kname.starts_with("vd") {
        Some("virtio")
    } else if kname.starts_with("mmcblk") {
        Some("mmc")
    } else {
        None
    });
    t.map(str::to_string)
}

/// Where `device` points in sysfs (the bus path a USB disk hangs under), as text.
fn device_path(m: &Machine, dev: &str) -> String {
    std::fs::read_link(m.path(dev))
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}
