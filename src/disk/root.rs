//! Choosing the install disk (docs/agent-api.md#root-device): candidate disks from sysfs, Ironic's root device hints
//! with oslo's operators, `skip_block_devices`, and IPA's default (smallest disk ≥ 4 GiB).

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::errors::AgentError;

/// A disk the agent could install onto.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BlockDevice {
    /// `/dev/<kname>`.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Spinning disk.
    pub rotational: bool,
    /// Model string.
    pub model: String,
    /// Vendor string.
    pub vendor: String,
    /// Serial number.
    pub serial: String,
    /// World-wide name.
    pub wwn: String,
    /// SCSI host:channel:target:lun.
    pub hctl: String,
    /// `/dev/disk/by-path/...` link, when there is one.
    pub by_path: String,
    /// Transport (`sata`, `nvme`, `usb`, ...).
    pub tran: String,
}

const HINTS: &[&str] = &[
    "size",
    "model",
    "wwn",
    "serial",
    "vendor",
    "wwn_with_extension",
    "wwn_vendor_extension",
    "name",
    "rotational",
    "hctl",
    "by_path",
    "tran",
];

/// Root device hints that cannot be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct HintError(String);

/// The disks the agent works with: exactly `only` (the `block_devices` setting, e.g.
/// `/dev/loop3`) when it is not empty, whatever their kind; else every whole disk of the
/// machine ([`list_devices`]).
pub(crate) fn list_allowed(sys_block: &Path, only: &[String]) -> Vec<BlockDevice> {
    if only.is_empty() {
        return list_devices(sys_block);
    }
    let by_path = by_path_links(Path::new("/dev/disk/by-path"));
    let mut out: Vec<BlockDevice> = only
        .iter()
        .filter_map(|d| {
            let kname = d.trim_start_matches("/dev/");
            let dir = sys_block.join(kname);
            dir.is_dir().then(|| read_device(&dir, kname, &by_path))
        })
        .collect();
    out.sort_by(|a, b| (a.size, &a.name).cmp(&(b.size, &b.name)));
    out
}

/// Disks under `sys_block` (normally `/sys/block`): whole disks only, no loop, ram, zram,
/// device-mapper, md, optical or floppy devices.
pub(crate) fn list_devices(sys_block: &Path) -> Vec<BlockDevice> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(sys_block) else {
        return out;
    };
    let by_path = by_path_links(Path::new("/dev/disk/by-path"));
    for e in entries.flatten() {
        let kname = e.file_name().to_string_lossy().into_owned();
        if ["loop", "ram", "zram", "dm-", "md", "sr", "fd", "nbd"]
            .iter()
            .any(|p| kname.starts_with(p))
        {
            continue;
        }
        out.push(read_device(&e.path(), &kname, &by_path));
    }
    out.sort_by(|a, b| (a.size, &a.name).cmp(&(b.size, &b.name)));
    out
}

/// One disk's identity, from its sysfs directory.
fn read_device(dir: &Path, kname: &str, by_path: &[(String, String)]) -> BlockDevice {
    {
        let read = |rel: &str| {
            std::fs::read_to_string(dir.join(rel))
                .map(|s| s.trim().to_string())
                .unwrap_or_default()
        };
        let sectors: u64 = read("size").parse().unwrap_or(0);
        let hctl = std::fs::read_dir(dir.join("device/scsi_device"))
            .ok()
            .and_then(|mut d| d.next())
            .and_then(|d| d.ok())
            .map(|d| d.file_name().to_string_lossy().into_owned())
            .unwrap_or_default();
        let tran = if kname.starts_with("nvme") {
            "nvme".to_string()
        } else {
            String::new()
        };
        let name = format!("/dev/{kname}");
        BlockDevice {
            by_path: by_path
                .iter()
                .find(|(_, target)| *target == name)
                .map(|(link, _)| link.clone())
                .unwrap_or_default(),
            name,
            size: sectors * 512,
            rotational: read("queue/rotational") == "1",
            model: read("device/model"),
            vendor: read("device/vendor"),
            serial: {
                let s = read("device/serial");
                if s.is_empty() {
                    read("serial")
                } else {
                    s
                }
            },
            wwn: {
                let w = read("wwid");
                if w.is_empty() {
                    read("device/wwid")
                } else {
                    w
                }
            },
            hctl,
            tran,
        }
    }
}

fn by_path_links(dir: &Path) -> Vec<(String, String)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return vec![];
    };
    entries
        .flatten()
        .filter_map(|e| {
            let target = std::fs::canonicalize(e.path()).ok()?;
            Some((e.path().display().to_string(), target.display().to_string()))
        })
        .collect()
}

/// Picks the install disk among `devices` (sorted by size, then name), as IPA does.
pub(crate) fn select(
    devices: &[BlockDevice],
    hints: Option<&Value>,
    skip: &[Value],
) -> Result<PathBuf, AgentError> {
    let usable: Vec<&BlockDevice> = devices
        .iter()
        .filter(|d| !skip.iter().any(|s| matches_hints(d, s).unwrap_or(false)))
        .collect();
    match hints.filter(|h| h.as_object().is_some_and(|o| !o.is_empty())) {
        None => usable
            .iter()
            .find(|d| d.size >= 4 << 30)
            .map(|d| PathBuf::from(&d.name))
            .ok_or_else(|| {
                AgentError::DeviceNotFound(
                    "No suitable device was found for deployment - root device hints were not \
                     provided and all found block devices are smaller than 4294967296B."
                        .into(),
                )
            }),
        Some(h) => {
            for d in &usable {
                match matches_hints(d, h) {
                    Ok(true) => return Ok(PathBuf::from(&d.name)),
                    Ok(false) => {}
                    Err(e) => {
                        return Err(AgentError::DeviceNotFound(format!(
                            "No devices could be found using the root device hints {h} because \
                             they failed to validate. Error: {e}"
                        )))
                    }
                }
            }
            Err(AgentError::DeviceNotFound(format!(
                "No suitable device was found for deployment using these hints {h}"
            )))
        }
    }
}

/// Whether a device satisfies every hint of `hints`.
pub(crate) fn matches_hints(d: &BlockDevice, hints: &Value) -> Result<bool, HintError> {
    let Some(obj) = hints.as_object() else {
        return Err(HintError("root device hints must be a dictionary".into()));
    };
    for (key, want) in obj {
        if !HINTS.contains(&key.as_str()) {
            return Err(HintError(format!(
                "The hints \"{key}\" are invalid. Valid hints are: \"{}\"",
                HINTS.join(", ")
            )));
        }
        let want_s = match want {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let ok = match key.as_str() {
            "size" => {
                let gib = d.size as f64 / (1u64 << 30) as f64;
                match_number(gib, &want_s)?
            }
            "rotational" => {
                let w = crate::config::parse_bool(&want_s).ok_or_else(|| {
                    HintError(format!("rotational hint {want_s} is not a boolean"))
                })?;
                w == d.rotational
            }
            k => {
                let have = match k {
                    "model" => &d.model,
                    "wwn" | "wwn_with_extension" | "wwn_vendor_extension" => &d.wwn,
                    "serial" => &d.serial,
                    "vendor" => &d.vendor,
                    "name" => &d.name,
                    "hctl" => &d.hctl,
                    "by_path" => &d.by_path,
                    _ => &d.tran,
                };
                match_string(have, &want_s)
            }
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

/// oslo's normalisation: lowercase, trimmed, URL-quoted (so comparisons are exact and
/// case-insensitive).
fn norm(s: &str) -> String {
    let s = s.trim().to_lowercase();
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"/_.-~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out.to_lowercase()
}

fn match_string(have: &str, want: &str) -> bool {
    let w = want.trim();
    let have = norm(have);
    if let Some(rest) = w.strip_prefix("<or>") {
        return rest
            .split("<or>")
            .any(|alt| match_string_op(&have, alt.trim()));
    }
    match_string_op(&have, w)
}

fn match_string_op(have: &str, w: &str) -> bool {
    for (op, f) in [
        ("s==", (|a: &str, b: &str| a == b) as fn(&str, &str) -> bool),
        ("s!=", |a, b| a != b),
        ("s<=", |a, b| a <= b),
        ("s>=", |a, b| a >= b),
        ("s<", |a, b| a < b),
        ("s>", |a, b| a > b),
        ("<in>", |a, b| a.contains(b)),
    ] {
        if let Some(v) = w.strip_prefix(op) {
            return f(have, &norm(v));
        }
    }
    if let Some(v) = w.strip_prefix("<all-in>") {
        return v.split_whitespace().all(|p| have.contains(&norm(p)));
    }
    have == norm(w)
}

fn match_number(have: f64, want: &str) -> Result<bool, HintError> {
    let w = want.trim();
    if let Some(rest) = w.strip_prefix("<or>") {
        for alt in rest.split("<or>") {
            if match_number(have, alt)? {
                return Ok(true);
            }
        }
        return Ok(false);
    }
    let (op, num) = ["==", "!=", "<=", ">=", "<", ">", "="]
        .iter()
        .find_map(|op| w.strip_prefix(op).map(|n| (*op, n.trim())))
        .unwrap_or(("==", w));
    let n: i64 = num.parse().map_err(|_| {
        HintError(format!(
            "Root device hint \"size\" is not an integer: {want}"
        ))
    })?;
    if n <= 0 {
        return Err(HintError(format!(
            "Root device hint \"size\" must be positive: {want}"
        )));
    }
    let n = n as f64;
    Ok(match op {
        "==" => have == n,
        "!=" => have != n,
        "<=" => have <= n,
        ">=" | "=" => have >= n,
        "<" => have < n,
        _ => have > n,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn disks() -> Vec<BlockDevice> {
        vec![
            BlockDevice {
                name: "/dev/sdb".into(),
                size: 2 << 30,
                model: "Tiny".into(),
                ..Default::default()
            },
            BlockDevice {
                name: "/dev/sda".into(),
                size: 10 << 30,
                model: "Samsung SSD 870".into(),
                serial: "S5ABC".into(),
                rotational: false,
                hctl: "0:0:0:0".into(),
                ..Default::default()
            },
            BlockDevice {
                name: "/dev/sdc".into(),
                size: 40 << 30,
                vendor: "ATA".into(),
                rotational: true,
                ..Default::default()
            },
        ]
    }

    fn pick(h: Value) -> Result<PathBuf, AgentError> {
        select(&disks(), Some(&h), &[])
    }

    #[test]
    fn no_hints_picks_the_smallest_disk_of_4_gib() {
        assert_eq!(
            select(&disks(), None, &[]).unwrap(),
            PathBuf::from("/dev/sda")
        );
        let small = vec![disks()[0].clone()];
        let e = select(&small, None, &[]).unwrap_err();
        assert_eq!(e.type_name(), "DeviceNotFound");
        assert!(e.details().ends_with("smaller than 4294967296B."));
        let skip = [json!({"name": "/dev/sda"})];
        assert_eq!(
            select(&disks(), None, &skip).unwrap(),
            PathBuf::from("/dev/sdc")
        );
    }

    #[test]
    fn operators() {
        assert_eq!(
            pick(json!({"size": 40})).unwrap(),
            PathBuf::from("/dev/sdc")
        );
        assert_eq!(
            pick(json!({"size": ">= 5"})).unwrap(),
            PathBuf::from("/dev/sda")
        );
        assert_eq!(
            pick(json!({"model": "samsung ssd 870"})).unwrap(),
            PathBuf::from("/dev/sda")
        );
        assert_eq!(
            pick(json!({"model": "<in> ssd"})).unwrap(),
            PathBuf::from("/dev/sda")
        );
        assert_eq!(
            pick(json!({"vendor": "<or> foo <or> ata"})).unwrap(),
            PathBuf::from("/dev/sdc")
        );
        assert_eq!(
            pick(json!({"rotational": true})).unwrap(),
            PathBuf::from("/dev/sdc")
        );
        assert_eq!(
            pick(json!({"name": "/dev/SDA"})).unwrap(),
            PathBuf::from("/dev/sda")
        );
        assert_eq!(
            pick(json!({"serial": "s== s5abc", "hctl": "0:0:0:0"})).unwrap(),
            PathBuf::from("/dev/sda")
        );
        let e = pick(json!({"name": "sda"})).unwrap_err();
        assert!(e
            .details()
            .starts_with("No suitable device was found for deployment using these hints"));
        let e = pick(json!({"colour": "red"})).unwrap_err();
        assert!(
            e.details().contains("failed to validate"),
            "{}",
            e.details()
        );
        assert!(pick(json!({"size": "abc"})).is_err());
    }

    #[test]
    fn sysfs_listing_skips_virtual_devices() {
        let dir = tempfile::tempdir().unwrap();
        for (name, size) in [
            ("sda", "20971520"),
            ("loop0", "100"),
            ("nvme0n1", "8388608"),
        ] {
            let d = dir.path().join(name);
            std::fs::create_dir_all(d.join("queue")).unwrap();
            std::fs::write(d.join("size"), size).unwrap();
            std::fs::write(d.join("queue/rotational"), "0").unwrap();
        }
        let list = list_devices(dir.path());
        let names: Vec<_> = list.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, vec!["/dev/nvme0n1", "/dev/sda"]);
        assert_eq!(list[1].size, 10 << 30);
        assert_eq!(list[0].tran, "nvme");
    }
}
