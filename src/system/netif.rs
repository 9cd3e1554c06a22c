//! Bringing network interfaces down, for `system.lockdown`.
//!
//! IPA 13's `system.lockdown` marks the agent locked down and stops serving the API; when the
//! API loop has ended the agent brings every interface of `netutils.list_interfaces()` down
//! (`ip link set IFACE down`, a failure only logged), then idles forever. This module is that
//! last step. It lists the interfaces from `/sys/class/net` and clears `IFF_UP` natively with
//! `SIOCGIFFLAGS`/`SIOCSIFFLAGS`: two ioctls on a datagram socket do exactly what
//! `ip link set down` does for this, with no netlink message building and no extra crate.
//!
//! Taking a machine off the network is as drastic as powering it off, so it sits behind the
//! same fence as the power backends: a [`DownGuard`] either records only (`log`) or acts
//! (`system`), and `system` refuses while `RIVET_FORBID_POWER` is set.

use crate::config::PowerBackendKind;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// The environment variable that forbids the `system` guard to act (shared with the power
/// backends, and set by the test harness).
pub const FENCE_VAR: &str = "RIVET_FORBID_POWER";

/// Where the kernel lists the interfaces of the current network namespace.
pub const SYS_CLASS_NET: &str = "/sys/class/net";

/// A refusal or failure of the lockdown as a whole (one interface failing is not one: IPA
/// logs it and goes on, see [`LockdownReport::failed`]).
#[derive(Debug, thiserror::Error)]
pub enum NetifError {
    /// The `system` guard is fenced off.
    #[error("refusing to bring network interfaces down: {FENCE_VAR} is set")]
    Forbidden,
    /// [`require_private_netns`] found the initial network namespace (or could not tell).
    #[error("refusing to bring network interfaces down outside a private network namespace: {0}")]
    NotPrivateNamespace(String),
    /// The interface list could not be read.
    #[error("cannot list network interfaces in {path}: {source}")]
    List {
        /// The directory read.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
}

/// Which interfaces a lockdown takes down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selection {
    /// What IPA's `netutils.list_interfaces()` returns: devices with a `device` link (NICs),
    /// bonds (a `bonding` directory) and VLANs (named `PARENT.NUMBER`). Leaves out `lo`,
    /// bridges, veth, tun and the like. What a drop-in agent does.
    Ipa,
    /// Every interface but `lo`.
    AllButLoopback,
}

/// The names of the interfaces under `sys_class_net` chosen by `selection`, sorted.
pub fn list_interfaces(
    sys_class_net: &Path,
    selection: Selection,
) -> Result<Vec<String>, NetifError> {
    let list_err = |source| NetifError::List {
        path: sys_class_net.to_path_buf(),
        source,
    };
    let mut names = Vec::new();
    for entry in std::fs::read_dir(sys_class_net).map_err(list_err)? {
        let name = entry
            .map_err(list_err)?
            .file_name()
            .to_string_lossy()
            .into_owned();
        let dir = sys_class_net.join(&name);
        let chosen = match selection {
            Selection::AllButLoopback => name != "lo",
            Selection::Ipa => {
                is_vlan_name(&name) || dir.join("device").exists() || dir.join("bonding").exists()
            }
        };
        if chosen {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// IPA's VLAN test: what follows the first `.` is a non-empty run of digits.
fn is_vlan_name(name: &str) -> bool {
    name.split_once('.')
        .is_some_and(|(_, id)| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()))
}

/// How interfaces are brought down, and whether they may be.
pub trait DownGuard: Send + Sync {
    /// The guard's name (`log`, `system`), as the power backend's.
    fn name(&self) -> &'static str;
    /// Asked once, before any interface is touched: an error refuses the whole lockdown.
    fn permit(&self) -> Result<(), NetifError>;
    /// Brings `iface` down (or records that it would). `Ok(false)`: it was already down.
    fn set_down(&self, iface: &str) -> io::Result<bool>;
}

/// Records what it would do (in the log, and in a file when given); never touches the network.
pub struct LogGuard {
    /// A file to append `ip link set IFACE down` lines to.
    pub file: Option<PathBuf>,
}

impl DownGuard for LogGuard {
    fn name(&self) -> &'static str {
        "log"
    }

    fn permit(&self) -> Result<(), NetifError> {
        Ok(())
    }

    fn set_down(&self, iface: &str) -> io::Result<bool> {
        tracing::warn!("lockdown guard 'log': would run `ip link set {iface} down` now");
        if let Some(path) = &self.file {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?;
            writeln!(f, "ip link set {iface} down")?;
        }
        Ok(true)
    }
}

/// Really brings interfaces down, unless `RIVET_FORBID_POWER` is set.
pub struct SystemGuard;

impl DownGuard for SystemGuard {
    fn name(&self) -> &'static str {
        "system"
    }

    fn permit(&self) -> Result<(), NetifError> {
        if std::env::var_os(FENCE_VAR).is_some() {
            return Err(NetifError::Forbidden);
        }
        Ok(())
    }

    fn set_down(&self, iface: &str) -> io::Result<bool> {
        // Checked again here: set_down is public and could be called without permit().
        if std::env::var_os(FENCE_VAR).is_some() {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                NetifError::Forbidden,
            ));
        }
        clear_up_flag(iface)
    }
}

/// The guard named like the power backend (`log` or `system`).
pub fn guard(kind: PowerBackendKind, log_file: Option<PathBuf>) -> Box<dyn DownGuard> {
    match kind {
        PowerBackendKind::Log => Box::new(LogGuard { file: log_file }),
        PowerBackendKind::System => Box::new(SystemGuard),
    }
}

/// What a lockdown did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LockdownReport {
    /// Interfaces that were up and are now down (or, for `log`, would be).
    pub downed: Vec<String>,
    /// Interfaces that were already down.
    pub already_down: Vec<String>,
    /// Interfaces that could not be brought down, with the reason (logged, as IPA does).
    pub failed: Vec<(String, String)>,
}

/// IPA's `_lockdown_system`: every interface of `selection` in this network namespace down.
pub fn interfaces_down(
    guard: &dyn DownGuard,
    selection: Selection,
) -> Result<LockdownReport, NetifError> {
    interfaces_down_in(guard, Path::new(SYS_CLASS_NET), selection)
}

/// [`interfaces_down`] with the interfaces listed from `sys_class_net`.
pub fn interfaces_down_in(
    guard: &dyn DownGuard,
    sys_class_net: &Path,
    selection: Selection,
) -> Result<LockdownReport, NetifError> {
    guard.permit()?;
    let names = list_interfaces(sys_class_net, selection)?;
    tracing::info!(
        "locking down: bringing {names:?} down ({} guard)",
        guard.name()
    );
    let mut report = LockdownReport::default();
    for name in names {
        match guard.set_down(&name) {
            Ok(true) => report.downed.push(name),
            Ok(false) => report.already_down.push(name),
            Err(e) => {
                tracing::warn!("could not bring down interface {name}: {e}");
                report.failed.push((name, e.to_string()));
            }
        }
    }
    Ok(report)
}

/// Clears `IFF_UP` on `iface`; `Ok(false)` if it was not set.
fn clear_up_flag(iface: &str) -> io::Result<bool> {
    // SAFETY: ifreq is plain data (a name and a union of integers/addresses); all-zero is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = iface.as_bytes();
    if bytes.is_empty() || bytes.len() >= req.ifr_name.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{iface:?} is not an interface name"),
        ));
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    let sock = control_socket()?;
    // SAFETY: `req` is a valid ifreq for the whole call; SIOCGIFFLAGS writes ifru_flags.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut req) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFFLAGS just filled the flags member of the union.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    if flags & libc::IFF_UP as libc::c_short == 0 {
        return Ok(false);
    }
    req.ifr_ifru.ifru_flags = flags & !(libc::IFF_UP as libc::c_short);
    // SAFETY: as above; SIOCSIFFLAGS reads the name and the flags.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS as _, &req) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(true)
}

/// A socket to send interface ioctls through. Any family reaches the device ioctls; AF_INET is
/// the usual one, AF_UNIX serves where IPv4 is compiled out.
fn control_socket() -> io::Result<OwnedFd> {
    let mut last = io::Error::from(io::ErrorKind::Unsupported);
    for family in [libc::AF_INET, libc::AF_UNIX] {
        // SAFETY: socket() takes no pointers; a non-negative result is a descriptor we own.
        let fd = unsafe { libc::socket(family, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd >= 0 {
            // SAFETY: `fd` was just returned by socket() and is owned by nobody else.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        last = io::Error::last_os_error();
    }
    Err(last)
}

/// How `/proc/*/ns/net` names the initial network namespace on kernels that give it a fixed
/// inode (`PROC_NET_INIT_INO` of linux/proc_ns.h, recent kernels); older ones number it like
/// any other.
const INIT_NET_FIXED: &str = "net:[4026531833]";

/// The network namespace of this process, as `/proc/self/ns/net` names it (`net:[N]`).
pub fn current_netns() -> Result<String, NetifError> {
    read_ns_link("/proc/self/ns/net")
}

fn read_ns_link(path: &str) -> Result<String, NetifError> {
    std::fs::read_link(path)
        .map(|l| l.to_string_lossy().into_owned())
        .map_err(|e| NetifError::NotPrivateNamespace(format!("cannot read {path}: {e}")))
}

/// Refuses unless this process is in a network namespace other than the machine's own. For
/// tools and tests that run the `system` guard: they must act only inside a namespace made for
/// them. The machine's own is PID 1's (when `/proc/1` may be read: it may not, even by root,
/// without ptrace rights over PID 1), the fixed-inode initial namespace, and each of `not`
/// (`net:[N]` names, e.g. the namespace of the parent that made this one). When PID 1's cannot
/// be read, `not` must name at least one, or this cannot tell and refuses.
pub fn require_private_netns(not: &[String]) -> Result<(), NetifError> {
    let mine = current_netns()?;
    let mut refused: Vec<String> = not.to_vec();
    refused.push(INIT_NET_FIXED.to_string());
    match read_ns_link("/proc/1/ns/net") {
        Ok(init) => refused.push(init),
        Err(e) if not.is_empty() => return Err(e),
        Err(e) => tracing::debug!("{e}; relying on the namespaces given"),
    }
    if refused.contains(&mine) {
        return Err(NetifError::NotPrivateNamespace(format!(
            "this process is in {mine}, the machine's own"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake /sys/class/net: lo, two NICs, a bond, VLANs, a bridge, a veth, an odd name.
    fn fake_sysfs() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let add = |name: &str, sub: Option<&str>| {
            let d = dir.path().join(name);
            std::fs::create_dir(&d).unwrap();
            if let Some(s) = sub {
                std::fs::create_dir(d.join(s)).unwrap();
            }
        };
        add("lo", None);
        add("eno1", Some("device"));
        add("enp3s0", Some("device"));
        add("bond0", Some("bonding"));
        add("bond0.100", None);
        add("br0", Some("bridge"));
        add("veth1", None);
        add("weird.", None);
        add("weird.x1", None);
        dir
    }

    #[test]
    fn ipa_selection_is_nics_bonds_and_vlans() {
        let sys = fake_sysfs();
        assert_eq!(
            list_interfaces(sys.path(), Selection::Ipa).unwrap(),
            ["bond0", "bond0.100", "eno1", "enp3s0"]
        );
        let all = list_interfaces(sys.path(), Selection::AllButLoopback).unwrap();
        assert_eq!(all.len(), 8);
        assert!(!all.contains(&"lo".to_string()));
        let e = list_interfaces(&sys.path().join("nope"), Selection::Ipa).unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
    }

    #[test]
    fn log_guard_records_and_touches_nothing() {
        let sys = fake_sysfs();
        let out = sys
            .path()
            .join("..")
            .join(format!("lockdown-{}.log", std::process::id()));
        let g = guard(PowerBackendKind::Log, Some(out.clone()));
        let r = interfaces_down_in(&*g, sys.path(), Selection::Ipa).unwrap();
        assert_eq!(r.downed, ["bond0", "bond0.100", "eno1", "enp3s0"]);
        let text = std::fs::read_to_string(&out).unwrap();
        assert_eq!(text.lines().next(), Some("ip link set bond0 down"));
        assert_eq!(text.lines().count(), 4);
    }

    #[test]
    fn system_guard_is_fenced() {
        // Only ever set, never removed: other tests of this process rely on the fence too.
        std::env::set_var(FENCE_VAR, "1");
        // Names no real interface has, so even a broken fence could not touch the machine.
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("rvt-none0/device")).unwrap();
        let e = interfaces_down_in(&SystemGuard, dir.path(), Selection::Ipa).unwrap_err();
        assert!(matches!(e, NetifError::Forbidden));
        assert!(e.to_string().contains("RIVET_FORBID_POWER"), "{e}");
        let e = SystemGuard.set_down("rvt-none0").unwrap_err();
        assert!(e.to_string().contains("RIVET_FORBID_POWER"), "{e}");
    }

    /// A guard that fails on one interface: the others still go down, as in IPA.
    struct Flaky;
    impl DownGuard for Flaky {
        fn name(&self) -> &'static str {
            "flaky"
        }
        fn permit(&self) -> Result<(), NetifError> {
            Ok(())
        }
        fn set_down(&self, iface: &str) -> io::Result<bool> {
            match iface {
                "eno1" => Err(io::Error::other("no such device")),
                "bond0" => Ok(false),
                _ => Ok(true),
            }
        }
    }

    #[test]
    fn one_failure_does_not_stop_the_lockdown() {
        let sys = fake_sysfs();
        let r = interfaces_down_in(&Flaky, sys.path(), Selection::Ipa).unwrap();
        assert_eq!(r.downed, ["bond0.100", "enp3s0"]);
        assert_eq!(r.already_down, ["bond0"]);
        assert_eq!(
            r.failed,
            [("eno1".to_string(), "no such device".to_string())]
        );
    }

    #[test]
    fn this_test_runs_in_the_machines_own_namespace_and_is_refused() {
        let mine = current_netns().unwrap();
        assert!(mine.starts_with("net:["), "{mine}");
        let e = require_private_netns(std::slice::from_ref(&mine)).unwrap_err();
        assert!(e.to_string().contains("machine's own"), "{e}");
    }

    #[test]
    fn bad_names_are_refused_before_any_ioctl() {
        for name in ["", "a-name-longer-than-15", "nul\0"] {
            let e = clear_up_flag(name).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{name:?}");
        }
    }
}
