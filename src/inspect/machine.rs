//! Where the collectors read the machine from: a root directory (`/` on a live machine, a
//! recorded tree in tests) and, on a live machine only, the kernel's answers that are not
//! files (interface addresses from `getifaddrs`, permanent MACs from `SIOCETHTOOL`, `uname`).
//!
//! A recorded tree stands in for those with one text file, `<root>/recorded/ifaddrs`, one
//! `NAME FAMILY VALUE` per line, FAMILY being `inet`, `inet6` or `permaddr`, in the order the
//! kernel gave them.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// The machine being inspected.
#[derive(Debug, Clone)]
pub struct Machine {
    root: PathBuf,
    live: bool,
}

/// One address of one interface, as `getifaddrs` lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IfAddr {
    pub(crate) name: String,
    pub(crate) ip: IpAddr,
}

impl Machine {
    /// This machine, read from `/` and the kernel.
    pub fn live() -> Machine {
        Machine {
            root: PathBuf::from("/"),
            live: true,
        }
    }

    /// A tree recorded from a machine (sysfs/procfs text files under `root`).
    pub fn recorded(root: impl Into<PathBuf>) -> Machine {
        Machine {
            root: root.into(),
            live: false,
        }
    }

    /// Whether this is the running machine.
    pub fn is_live(&self) -> bool {
        self.live
    }

    /// `rel` (an absolute path such as `/sys/block`) under the root.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel.trim_start_matches('/'))
    }

    /// A file's text, trimmed; `None` when it cannot be read.
    pub(crate) fn read(&self, rel: &str) -> Option<String> {
        read_trimmed(&self.path(rel))
    }

    /// The last component of a symbolic link's target (`device/driver` → `e1000e`).
    pub(crate) fn link_name(&self, rel: &str) -> Option<String> {
        let target = std::fs::read_link(self.path(rel)).ok()?;
        target.file_name().map(|n| n.to_string_lossy().into_owned())
    }

    /// Names in a directory, sorted; empty when it cannot be read.
    pub(crate) fn list(&self, rel: &str) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.path(rel))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// Every interface address, in the kernel's order.
    pub(crate) fn if_addrs(&self) -> Vec<IfAddr> {
        if self.live {
            return super::net::getifaddrs();
        }
        self.recorded_lines()
            .into_iter()
            .filter(|(_, family, _)| family == "inet" || family == "inet6")
            .filter_map(|(name, _, value)| {
                Some(IfAddr {
                    name,
                    ip: value.parse().ok()?,
                })
            })
            .collect()
    }

    /// The permanent MAC address of `ifname`, when the driver knows one.
    pub(crate) fn perm_addr(&self, ifname: &str) -> Option<String> {
        if self.live {
            return super::net::ethtool_perm_addr(ifname);
        }
        self.recorded_lines()
            .into_iter()
            .find(|(name, family, _)| name == ifname && family == "permaddr")
            .map(|(_, _, value)| value.to_lowercase())
    }

    /// The machine's architecture (`uname -m`).
    pub(crate) fn arch(&self) -> Option<String> {
        if let Some(a) = self.read("/proc/sys/kernel/arch").filter(|a| !a.is_empty()) {
            return Some(a);
        }
        self.live.then(|| {
            rustix::system::uname()
                .machine()
                .to_string_lossy()
                .into_owned()
        })
    }

    /// The host name (`socket.gethostname()`).
    pub(crate) fn hostname(&self) -> String {
        if let Some(h) = self.read("/proc/sys/kernel/hostname") {
            return h;
        }
        if self.live {
            return rustix::system::uname()
                .nodename()
                .to_string_lossy()
                .into_owned();
        }
        String::new()
    }

    fn recorded_lines(&self) -> Vec<(String, String, String)> {
        std::fs::read_to_string(self.path("/recorded/ifaddrs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                Some((
                    w.next()?.to_string(),
                    w.next()?.to_string(),
                    w.next()?.to_string(),
                ))
            })
            .collect()
    }
}

/// A file's text, trimmed (sysfs values end with a newline, SCSI strings are space-padded).
pub(crate) fn read_trimmed(path: &Path) -> Option<String> {
    std::fs::read(path)
        .ok()
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
}

/// `Some(s)` unless `s` is empty (lsblk prints empty columns as JSON null).
pub(crate) fn non_empty(s: impl Into<String>) -> Option<String> {
    let s = s.into();
    (!s.is_empty()).then_some(s)
}
