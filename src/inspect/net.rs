//! Network interfaces, as IPA 13's `list_network_interfaces` reports them: the interfaces
//! of `netutils.list_interfaces()` (NICs, bonds, VLANs), each with its permanent MAC
//! (`SIOCETHTOOL`/`ETHTOOL_GPERMADDR`, else the current one), its first IPv4 and IPv6
//! address (`getifaddrs`, psutil's order), carrier, PCI ids, bus address and driver from
//! sysfs. Also IPA's wait for DHCP before inspection.

use std::ffi::CStr;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use super::error::CollectError;
use super::machine::{non_empty, IfAddr, Machine};
use super::model::{Interface, LldpMap};
use crate::system::netif::{list_interfaces, Selection};

/// The interfaces of `m`. `lldp`: the LLDP data collected for them, when LLDP is on.
pub(crate) fn interfaces(
    m: &Machine,
    lldp: Option<&LldpMap>,
) -> Result<Vec<Interface>, CollectError> {
    let names = list_interfaces(&m.path("/sys/class/net"), Selection::Ipa)?;
    let addrs = m.if_addrs();
    let mut out = Vec::new();
    for name in names {
        let Some(mac) = mac_address(m, &name) else {
            tracing::warn!("no hardware manager was able to handle interface {name}");
            continue;
        };
        if mac.starts_with("fa:") {
            // IPA's rule: a locally assigned address here hints at a misconfiguration (an
            // in-band BMC connection); the interface is left out.
            tracing::warn!("interface {name}: ignoring locally assigned MAC address {mac}");
            continue;
        }
        let dir = format!("/sys/class/net/{name}");
        out.push(Interface {
            ipv4_address: first_addr(&addrs, &name, false),
            ipv6_address: first_addr(&addrs, &name, true),
            has_carrier: m.read(&format!("{dir}/carrier")).as_deref() == Some("1"),
            lldp: lldp.map(|l| l.get(&name).cloned().unwrap_or_default()),
            vendor: m.read(&format!("{dir}/device/vendor")),
            product: m.read(&format!("{dir}/device/device")),
            client_id: None,
            biosdevname: None,
            speed_mbps: m
                .read(&format!("{dir}/speed"))
                .and_then(|s| s.parse::<i64>().ok())
                .filter(|s| *s > 0)
                .map(|s| s as u64),
            pci_address: m.link_name(&format!("{dir}/device")),
            driver: m.link_name(&format!("{dir}/device/driver")),
            mac_address: mac,
            name,
        });
    }
    Ok(out)
}

/// The permanent address when the driver reports a non-zero one, else the current one.
fn mac_address(m: &Machine, name: &str) -> Option<String> {
    m.perm_addr(name)
        .or_else(|| m.read(&format!("/sys/class/net/{name}/address")))
        .map(|s| s.to_lowercase())
        .and_then(non_empty)
}

/// The first address of one family, as psutil prints it (a link-local IPv6 address carries
/// `%<interface>`, which Ironic strips).
fn first_addr(addrs: &[IfAddr], name: &str, v6: bool) -> Option<String> {
    addrs
        .iter()
        .filter(|a| a.name == name && a.ip.is_ipv6() == v6)
        .map(|a| match a.ip {
            IpAddr::V6(ip) if (ip.segments()[0] & 0xffc0) == 0xfe80 => format!("{ip}%{name}"),
            ip => ip.to_string(),
        })
        .next()
}

/// Every IPv4/IPv6 address of every interface, from `getifaddrs(3)` (the kernel's netlink
/// dump, in its order).
pub(crate) fn getifaddrs() -> Vec<IfAddr> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list head we free below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        tracing::warn!("getifaddrs failed: {}", std::io::Error::last_os_error());
        return vec![];
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs built, alive until freeifaddrs.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let name = unsafe { CStr::from_ptr(ifa.ifa_name) }
            .to_string_lossy()
            .into_owned();
        // SAFETY: ifa_addr points at a sockaddr whose family says which struct it is.
        let ip = unsafe {
            match i32::from((*ifa.ifa_addr).sa_family) {
                libc::AF_INET => {
                    let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                    Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                        sin.sin_addr.s_addr,
                    ))))
                }
                libc::AF_INET6 => {
                    let sin6 = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                    Some(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)))
                }
                _ => None,
            }
        };
        if let Some(ip) = ip {
            out.push(IfAddr { name, ip });
        }
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    out
}

/// `ETHTOOL_GPERMADDR` (linux/ethtool.h) and the size of its answer buffer (`MAX_ADDR_LEN`).
const ETHTOOL_GPERMADDR: u32 = 0x20;
const MAX_ADDR_LEN: usize = 32;

#[repr(C)]
struct EthtoolPermAddr {
    cmd: u32,
    size: u32,
    data: [u8; MAX_ADDR_LEN],
}

/// The permanent hardware address the driver reports, unless it has none (all zeroes, or
/// the ioctl is not supported).
pub(crate) fn ethtool_perm_addr(ifname: &str) -> Option<String> {
    let bytes = ifname.as_bytes();
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if bytes.is_empty() || bytes.len() >= req.ifr_name.len() || bytes.contains(&0) {
        return None;
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    let mut perm = EthtoolPermAddr {
        cmd: ETHTOOL_GPERMADDR,
        size: MAX_ADDR_LEN as u32,
        data: [0; MAX_ADDR_LEN],
    };
    req.ifr_ifru.ifru_data = (&mut perm as *mut EthtoolPermAddr).cast();
    // SAFETY: socket() takes no pointers; a non-negative result is a descriptor we own.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` was just returned by socket() and belongs to nobody else.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: `req` names the interface and points at `perm`, both alive for the call; the
    // kernel writes at most `perm.size` bytes of address.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCETHTOOL as _, &mut req) };
    let len = (perm.size as usize).min(MAX_ADDR_LEN);
    if rc != 0 || perm.data[..len].iter().all(|b| *b == 0) {
        return None;
    }
    Some(
        perm.data[..len]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":"),
    )
}

/// `BOOTIF` as a MAC: pxelinux writes `01-aa-bb-cc-dd-ee-ff` (a hardware type first).
pub(crate) fn normalize_bootif(mac: &str) -> String {
    let mac = match mac.split_once('-') {
        Some((_, rest)) => rest.replace('-', ":"),
        None => mac.to_string(),
    };
    mac.to_lowercase()
}

/// IPA's `wait_for_dhcp`: until the PXE interface (or, with `all`, every interface) has an
/// IPv4 address, at most `timeout`. False when it gave up (inspection goes on anyway).
pub(crate) fn wait_for_dhcp(
    m: &Machine,
    bootif: Option<&str>,
    all: bool,
    timeout: Duration,
) -> bool {
    if timeout.is_zero() {
        return true;
    }
    let pxe_mac = bootif.map(normalize_bootif);
    if pxe_mac.is_none() && !all {
        tracing::warn!("no PXE boot interface known - not waiting for it to get an IP address");
        return false;
    }
    let deadline = Instant::now() + timeout;
    loop {
        let missing: Vec<String> = interfaces(m, None)
            .unwrap_or_default()
            .into_iter()
            .filter(|i| all || Some(&i.mac_address) == pxe_mac.as_ref())
            .filter(|i| i.ipv4_address.is_none())
            .map(|i| i.name)
            .collect();
        if missing.is_empty() {
            return true;
        }
        if Instant::now() >= deadline {
            tracing::warn!(
                "not all network interfaces received IP addresses in {} seconds: {missing:?}",
                timeout.as_secs()
            );
            return false;
        }
        tracing::debug!("still waiting for interfaces {missing:?} to get IP addresses");
        std::thread::sleep(Duration::from_secs(2).min(deadline - Instant::now()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootif_forms() {
        assert_eq!(
            normalize_bootif("01-52-54-00-AB-cd-ef"),
            "52:54:00:ab:cd:ef"
        );
        assert_eq!(normalize_bootif("52:54:00:AB:CD:EF"), "52:54:00:ab:cd:ef");
    }

    #[test]
    fn link_local_carries_the_interface() {
        let addrs = vec![
            IfAddr {
                name: "eth0".into(),
                ip: "fe80::1".parse().unwrap(),
            },
            IfAddr {
                name: "eth0".into(),
                ip: "2001:db8::5".parse().unwrap(),
            },
        ];
        assert_eq!(
            first_addr(&addrs, "eth0", true).as_deref(),
            Some("fe80::1%eth0")
        );
        assert_eq!(first_addr(&addrs, "eth0", false), None);
        assert_eq!(
            first_addr(&addrs[1..], "eth0", true).as_deref(),
            Some("2001:db8::5")
        );
    }

    #[test]
    fn loopback_is_listed_by_getifaddrs() {
        assert!(getifaddrs()
            .iter()
            .any(|a| a.name == "lo" && a.ip == IpAddr::V4(Ipv4Addr::LOCALHOST)));
    }
}
