//! Refusals before any byte is written: a device that holds a mounted filesystem (on itself,
//! a partition, or anything stacked on them), or the device the agent itself runs from.
//!
//! IPA has no such check (shred happily overwrites a disk whose partition is mounted); rivet
//! refuses with a message naming the mount point. Mounts are matched by device number from
//! `/proc/self/mountinfo` (names differ between namespaces and ramdisks), against the disk,
//! its kernel partitions and, recursively, their sysfs holders (dm, md). The exclusive open
//! that follows (see `device`) catches what is in use without a mount (swap, an assembled
//! array, a device-mapper table).

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::device::DeviceInfo;
use super::kernel;

/// Why a device must not be erased.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refusal {
    /// A filesystem on it (or on something built on it) is mounted.
    #[error("{device} holds a mounted filesystem ({source_dev} on {mount_point})")]
    Mounted {
        /// The device asked for.
        device: PathBuf,
        /// The mounted device's `M:m`.
        source_dev: String,
        /// Where it is mounted.
        mount_point: String,
    },
    /// The agent's root filesystem or executable lives on it.
    #[error("{device} holds the filesystem the agent runs from ({what})")]
    AgentDevice {
        /// The device asked for.
        device: PathBuf,
        /// `/` or the executable.
        what: String,
    },
}

/// One line of mountinfo: the device number and the mount point.
fn mounts(mountinfo: &str) -> Vec<((u32, u32), String)> {
    mountinfo
        .lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let dev = kernel::parse_dev(f.nth(2)?)?;
            let mp = f.nth(1)?.replace("\\040", " ");
            Some((dev, mp))
        })
        .collect()
}

/// The device numbers of the disk, its partitions and everything stacked on them.
pub(crate) fn device_family(info: &DeviceInfo) -> HashSet<(u32, u32)> {
    let mut out = HashSet::from([info.dev]);
    let mut todo: Vec<PathBuf> = vec![info.sysfs.clone()];
    for p in kernel::kernel_partitions(&info.sysfs) {
        out.insert(p.dev);
        todo.push(info.sysfs.join(&p.name));
    }
    let mut seen = HashSet::new();
    while let Some(dir) = todo.pop() {
        if !seen.insert(dir.clone()) || seen.len() > 4096 {
            continue;
        }
        for h in kernel::holders(&dir) {
            if let Some(d) = std::fs::read_to_string(h.join("dev"))
                .ok()
                .and_then(|s| kernel::parse_dev(&s))
            {
                out.insert(d);
            }
            todo.push(h);
        }
    }
    out
}

fn dev_of(path: &Path) -> Option<(u32, u32)> {
    std::fs::metadata(path)
        .ok()
        .map(|m| kernel::dev_pair(m.dev()))
}

/// Refuses a device in use by a mount or by the agent itself.
pub(crate) fn check_not_in_use(info: &DeviceInfo) -> Result<(), Refusal> {
    let family = device_family(info);
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let all = mounts(&mountinfo);
    for (what, dev) in [
        ("/", dev_of(Path::new("/"))),
        (
            "the agent's executable",
            dev_of(Path::new("/proc/self/exe")),
        ),
    ] {
        if dev.is_some_and(|d| family.contains(&d)) {
            return Err(Refusal::AgentDevice {
                device: info.path.clone(),
                what: what.to_string(),
            });
        }
    }
    if let Some((dev, mp)) = all.iter().find(|(d, _)| family.contains(d)) {
        return Err(Refusal::Mounted {
            device: info.path.clone(),
            source_dev: format!("{}:{}", dev.0, dev.1),
            mount_point: mp.clone(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mountinfo() {
        let text = "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n\
                    42 27 259:0 / /tmp/a\\040b rw,relatime - ext4 /dev/loop0p1 rw\n";
        assert_eq!(
            mounts(text),
            vec![
                ((254, 0), "/".to_string()),
                ((259, 0), "/tmp/a b".to_string())
            ]
        );
    }

    #[test]
    fn the_root_device_is_refused() {
        // Whatever / is mounted from here: if it is a block device, it must be refused.
        let Some(root) = dev_of(Path::new("/")) else {
            return;
        };
        let Ok(sysfs) = kernel::sysfs_dir(root) else {
            return;
        };
        let info = DeviceInfo {
            path: PathBuf::from("/dev/root-under-test"),
            kname: String::new(),
            dev: root,
            sysfs,
        };
        assert!(matches!(
            check_not_in_use(&info),
            Err(Refusal::AgentDevice { .. })
        ));
    }
}
