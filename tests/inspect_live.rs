//! A live collection on this machine, checked against what `lsblk` and `ip` say (tools the
//! collectors do not use): the same disks (whole disks the deploy may use: no loop, ram,
//! zram, device-mapper, md, optical, floppy or nbd devices, none of size 0) and the same NICs
//! (physical Ethernet devices, bonds and VLANs; not loopback, ifb, veth, bridges...) with the
//! same MACs. Prints the inventory.

use std::collections::BTreeMap;
use std::process::Command;

use rivet::inspect::{self, Machine, Options};
use serde_json::Value;

fn run(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn live_inventory_matches_lsblk_and_ip() {
    let (inv, root_disk) =
        inspect::inventory(&Machine::live(), &Options::quick(), None, &mut vec![]);
    println!("{}", serde_json::to_string_pretty(&inv).unwrap());

    let Some(lsblk) = run("lsblk", &["-dnb", "-o", "NAME,SIZE"]) else {
        eprintln!("SKIPPED disk part: no lsblk");
        return;
    };
    let skip = ["loop", "ram", "zram", "dm-", "md", "sr", "fd", "nbd"];
    let mut want_disks: Vec<String> = lsblk
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some((w.next()?.to_string(), w.next()?.parse::<u64>().ok()?))
        })
        .filter(|(n, size)| *size > 0 && !skip.iter().any(|p| n.starts_with(p)))
        .map(|(n, _)| format!("/dev/{n}"))
        .collect();
    want_disks.sort();
    let disks: Vec<String> = inv.disks.iter().map(|d| d.name.clone()).collect();
    assert_eq!(disks, want_disks);
    // The root disk is the deploy's: the smallest disk of at least 4 GiB.
    let want_root = inv
        .disks
        .iter()
        .filter(|d| d.size >= 4 << 30)
        .min_by_key(|d| (d.size, d.name.clone()))
        .map(|d| d.name.clone());
    assert_eq!(root_disk.map(|d| d.name), want_root);

    let Some(links) = run("ip", &["-j", "-d", "link"]) else {
        eprintln!("SKIPPED NIC part: no ip");
        return;
    };
    let links: Vec<Value> = serde_json::from_str(&links).unwrap();
    let want_nics: BTreeMap<String, String> = links
        .iter()
        .filter(|l| l["link_type"] == "ether")
        .filter(|l| match l["linkinfo"]["info_kind"].as_str() {
            None => true,
            Some(kind) => kind == "bond" || kind == "vlan",
        })
        .map(|l| {
            let mac = l["permaddr"].as_str().or(l["address"].as_str()).unwrap();
            (
                l["ifname"].as_str().unwrap().to_string(),
                mac.to_lowercase(),
            )
        })
        .filter(|(_, mac)| !mac.starts_with("fa:"))
        .collect();
    let nics: BTreeMap<String, String> = inv
        .interfaces
        .iter()
        .map(|i| (i.name.clone(), i.mac_address.clone()))
        .collect();
    assert_eq!(nics, want_nics);
    // Addresses as `ip -j addr` has them: each interface's IPv4 is one of its own.
    let addrs: Vec<Value> =
        serde_json::from_str(&run("ip", &["-j", "addr"]).unwrap_or("[]".into())).unwrap();
    for i in &inv.interfaces {
        let Some(v4) = &i.ipv4_address else { continue };
        let own = addrs
            .iter()
            .filter(|a| a["ifname"] == i.name.as_str())
            .flat_map(|a| a["addr_info"].as_array().cloned().unwrap_or_default())
            .any(|a| a["local"] == v4.as_str());
        assert!(own, "{} has no address {v4}", i.name);
    }
    assert!(inv.cpu.count > 0 && !inv.cpu.architecture.is_empty());
    assert!(inv.memory.total.unwrap() > 0 && inv.memory.physical_mb.unwrap() > 0);
}
