//! The BMC's addresses, as IPA 13 finds them: only when an IPMI device node exists, by
//! asking `ipmitool` about LAN channels 1 to 11 (the ones that can carry a LAN). The kernel
//! has no file for this, so this is the one collector that runs a tool. Its output is
//! parsed here rather than through a shell pipeline.

use std::net::IpAddr;
use std::os::unix::fs::FileTypeExt;

use super::machine::Machine;
use crate::external;

/// What is known of the BMC.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Bmc {
    pub(crate) v4: Option<String>,
    pub(crate) v6: Option<String>,
    pub(crate) mac: Option<String>,
}

/// Asks the BMC, unless told not to or there is no IPMI device (then everything is null, as
/// IPA reports it).
pub(crate) fn detect(m: &Machine, skip: bool) -> Bmc {
    if skip {
        tracing::info!("skipping BMC detection as requested");
        return Bmc::default();
    }
    if !m.is_live() || !ipmi_device_exists(m) {
        return Bmc::default();
    }
    let lan = |channel: u8, v6: bool, extra: &[&str]| -> Option<String> {
        let c = channel.to_string();
        let mut args = vec![if v6 { "lan6" } else { "lan" }, "print", c.as_str()];
        args.extend_from_slice(extra);
        match external::run("ipmitool", &args) {
            Ok(out) => Some(out),
            Err(e) if e.rc == -1 => {
                tracing::warn!("cannot get BMC address: {}", e.stderr);
                None
            }
            // "Invalid channel" and the like: this channel has no LAN.
            Err(_) => Some(String::new()),
        }
    };
    let mut bmc = Bmc::default();
    for channel in 1..=11u8 {
        let Some(out) = lan(channel, false, &[]) else {
            return Bmc::default();
        };
        let Some((ip, mac)) = parse_lan_print(&out) else {
            continue;
        };
        let v6 = lan(channel, true, &[]).and_then(|o| parse_lan6_print(&o));
        if bmc.v4.is_none() && ip != "0.0.0.0" {
            bmc.v4 = Some(ip.clone());
        }
        if bmc.v6.is_none() {
            bmc.v6 = v6.clone();
        }
        if bmc.mac.is_none() && (ip != "0.0.0.0" || v6.is_some()) && mac != "00:00:00:00:00:00" {
            bmc.mac = Some(mac);
        }
    }
    // IPA's answers for a BMC that is there but has no address.
    bmc.v4.get_or_insert_with(|| "0.0.0.0".into());
    bmc.v6.get_or_insert_with(|| "::/0".into());
    bmc
}

/// `/dev/ipmi*`, `/dev/ipmi/*`, `/dev/ipmidev/*`: is any a character device?
fn ipmi_device_exists(m: &Machine) -> bool {
    let is_char = |rel: String| {
        std::fs::metadata(m.path(&rel)).is_ok_and(|md| md.file_type().is_char_device())
    };
    m.list("/dev")
        .into_iter()
        .filter(|n| n.starts_with("ipmi"))
        .any(|n| is_char(format!("/dev/{n}")))
        || ["/dev/ipmi", "/dev/ipmidev"]
            .iter()
            .any(|d| m.list(d).into_iter().any(|n| is_char(format!("{d}/{n}"))))
}

/// `ipmitool lan print N`: the `IP Address` and `MAC Address` lines, when both are valid.
pub(crate) fn parse_lan_print(out: &str) -> Option<(String, String)> {
    let field = |name: &str| {
        out.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == name).then(|| v.trim().to_string())
        })
    };
    let ip = field("IP Address")?;
    ip.parse::<IpAddr>().ok()?;
    let mac = field("MAC Address")?.to_lowercase();
    let ok = mac.len() == 17
        && mac
            .split(':')
            .all(|b| b.len() == 2 && b.bytes().all(|c| c.is_ascii_hexdigit()));
    ok.then_some((ip, mac))
}

/// `ipmitool lan6 print N`: the first active, enabled address that is neither unset
/// (`::`) nor link-local, without its prefix length.
pub(crate) fn parse_lan6_print(out: &str) -> Option<String> {
    let mut blocks: Vec<Vec<(String, String)>> = Vec::new();
    for line in out.lines() {
        if line.starts_with("IPv6 ") && line.trim_end().ends_with(':') {
            let dynamic = line.contains("Dynamic");
            blocks.push(vec![(
                "kind".into(),
                if dynamic { "dynamic" } else { "static" }.into(),
            )]);
        } else if let (Some(b), Some((k, v))) = (blocks.last_mut(), line.split_once(':')) {
            if line.starts_with(char::is_whitespace) {
                b.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
    }
    blocks.iter().find_map(|b| {
        let get = |k: &str| b.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        let enabled = match get("kind") {
            Some("dynamic") => matches!(get("Source/Type"), Some("DHCPv6" | "SLAAC")),
            _ => get("Enabled") == Some("yes"),
        };
        let addr = get("Address")?.split('/').next()?.to_string();
        let ip: std::net::Ipv6Addr = addr.parse().ok()?;
        let usable = get("Status") == Some("active")
            && enabled
            && !ip.is_unspecified()
            && (ip.segments()[0] & 0xffc0) != 0xfe80;
        usable.then_some(addr)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAN: &str = "Set in Progress         : Set Complete\n\
        IP Address Source       : DHCP Address\n\
        IP Address              : 10.0.0.42\n\
        Subnet Mask             : 255.255.255.0\n\
        MAC Address             : 3C:EC:EF:01:02:03\n";

    #[test]
    fn lan_print() {
        assert_eq!(
            parse_lan_print(LAN),
            Some(("10.0.0.42".into(), "3c:ec:ef:01:02:03".into()))
        );
        assert_eq!(parse_lan_print("Invalid channel 5\n"), None);
        assert_eq!(
            parse_lan_print("IP Address : x\nMAC Address : 00:11:22:33:44:55\n"),
            None
        );
    }

    #[test]
    fn lan6_print() {
        let out = "IPv6 Dynamic Address 0:\n\
            \x20   Source/Type:    SLAAC\n\
            \x20   Address:        fe80::1/64\n\
            \x20   Status:         active\n\
            IPv6 Dynamic Address 1:\n\
            \x20   Source/Type:    DHCPv6\n\
            \x20   Address:        2001:db8::42/64\n\
            \x20   Status:         active\n\
            IPv6 Static Address 0:\n\
            \x20   Enabled:        yes\n\
            \x20   Address:        ::/0\n\
            \x20   Status:         disabled\n";
        assert_eq!(parse_lan6_print(out).as_deref(), Some("2001:db8::42"));
        assert_eq!(parse_lan6_print("IPv6 Static Address 0:\n    Enabled: no\n    Address: 2001:db8::1/64\n    Status: active\n"), None);
    }

    #[test]
    fn no_device_no_bmc() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("dev")).unwrap();
        std::fs::write(dir.path().join("dev/ipmi0"), "").unwrap();
        let m = Machine::recorded(dir.path());
        assert!(
            !ipmi_device_exists(&m),
            "a regular file is not an IPMI device"
        );
        assert_eq!(detect(&m, false), Bmc::default());
    }
}
