//! Collector tests on recorded trees (`tests/data/inspect/<name>/`: sysfs/procfs text files,
//! symlinks as the kernel has them, and `recorded/ifaddrs` for getifaddrs/ethtool answers).

use serde_json::{json, Value};

use super::*;

fn tree(name: &str) -> Machine {
    Machine::recorded(format!(
        "{}/tests/data/inspect/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
}

fn default_data(name: &str) -> (Value, InspectionData) {
    let d = collect(&tree(name), &[Collector::Default], &Options::quick(), None);
    (serde_json::to_value(&d).unwrap(), d)
}

/// The whole POST body of a QEMU VM, field by field as IPA 13 sends it.
#[test]
fn virtio_vm_inventory_is_ipa_shaped() {
    let (v, _) = default_data("virtio-vm");
    let virtio_disk = |name: &str, size: u64, serial: Value, by_path: &str| {
        json!({"name": name, "model": null, "size": size, "rotational": true, "wwn": null,
               "serial": serial, "vendor": "0x1af4", "wwn_with_extension": null,
               "wwn_vendor_extension": null, "hctl": null, "by_path": by_path,
               "logical_sectors": 512, "physical_sectors": 512, "tran": "virtio"})
    };
    let vda = virtio_disk(
        "/dev/vda",
        20 << 30,
        json!("rootdisk"),
        "/dev/disk/by-path/pci-0000:00:04.0",
    );
    let nic = |name: &str, mac: &str, v4: Value, v6: Value, carrier: bool, bus: &str| {
        json!({"name": name, "mac_address": mac, "ipv4_address": v4, "ipv6_address": v6,
               "has_carrier": carrier, "lldp": null, "vendor": "0x1af4", "product": "0x0001",
               "client_id": null, "biosdevname": null, "speed_mbps": null,
               "pci_address": bus, "driver": "virtio_net"})
    };
    let flags = "fpu de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pse36 clflush mmx \
                 fxsr sse sse2 syscall nx lm rep_good nopl cpuid pni vmx cx16 x2apic \
                 hypervisor lahf_lm";
    let expected = json!({
        "inventory": {
            "interfaces": [
                nic("eth0", "52:54:00:12:34:56", json!("192.168.122.50"),
                    json!("fe80::5054:ff:fe12:3456%eth0"), true, "virtio0"),
                nic("eth1", "52:54:00:ab:cd:ef", Value::Null, Value::Null, false, "virtio1"),
            ],
            "cpu": {"model_name": "QEMU Virtual CPU version 2.5+", "frequency": "2894.562",
                    "count": 2, "architecture": "x86_64",
                    "flags": flags.split_whitespace().collect::<Vec<_>>(), "socket_count": 1},
            "disks": [vda.clone(),
                      virtio_disk("/dev/vdb", 1 << 30, Value::Null,
                                  "/dev/disk/by-path/pci-0000:00:05.0")],
            "memory": {"total": 4012532u64 * 1024, "physical_mb": 4096},
            "bmc_address": null,
            "bmc_v6address": null,
            "system_vendor": {"product_name": "Standard PC (Q35 + ICH9, 2009)",
                              "serial_number": "", "manufacturer": "QEMU",
                              "firmware": {"vendor": "SeaBIOS",
                                           "version": "1.16.3-debian-1.16.3-2",
                                           "build_date": "04/01/2014"}},
            "boot": {"current_boot_mode": "bios", "pxe_interface": "01-52-54-00-12-34-56"},
            "hostname": "localhost.localdomain",
        },
        "root_disk": vda,
        "boot_interface": "01-52-54-00-12-34-56",
        "configuration": {"collectors": ["default"],
                          "managers": [{"name": "generic_hardware_manager", "version": "1.2"}]},
        "error": null,
    });
    assert_eq!(v, expected, "{}", serde_json::to_string_pretty(&v).unwrap());
}

#[test]
fn server_interfaces_bonds_vlans_and_two_vendors() {
    let (_, d) = default_data("server");
    let inv = d.inventory.unwrap();
    let names: Vec<&str> = inv.interfaces.iter().map(|i| i.name.as_str()).collect();
    // idrac (a USB NIC with a locally assigned fa: address) is left out, as IPA does; lo too.
    assert_eq!(
        names,
        ["bond0", "bond0.100", "eno1", "eno2", "ens2f0", "ens2f1"]
    );
    let by = |n: &str| inv.interfaces.iter().find(|i| i.name == n).unwrap().clone();
    // eno1 is enslaved: its current address is the bond's, its permanent one is its own.
    assert_eq!(by("eno1").mac_address, "3c:fd:fe:a1:b2:c0");
    assert_eq!(by("bond0").mac_address, "3c:fd:fe:a1:b2:c1");
    assert_eq!(
        (by("eno1").vendor, by("eno1").driver, by("eno1").speed_mbps),
        (Some("0x8086".into()), Some("i40e".into()), Some(10000))
    );
    let bcm = by("ens2f0");
    assert_eq!(
        (
            bcm.vendor.as_deref(),
            bcm.product.as_deref(),
            bcm.pci_address.as_deref()
        ),
        (Some("0x14e4"), Some("0x16d8"), Some("0000:5e:00.0"))
    );
    assert_eq!(bcm.ipv4_address.as_deref(), Some("10.1.0.30"));
    assert_eq!(bcm.ipv6_address.as_deref(), Some("2001:db8::30"));
    assert_eq!(by("bond0.100").ipv4_address.as_deref(), Some("10.1.100.20"));
    assert!(!by("ens2f1").has_carrier);
    assert_eq!(by("ens2f1").speed_mbps, None);
    assert_eq!(inv.boot.current_boot_mode, "uefi");
    assert_eq!(
        inv.boot.pxe_interface.as_deref(),
        Some("01-3c-fd-fe-a1-b2-c0")
    );
    assert_eq!(d.boot_interface, inv.boot.pxe_interface);
}

#[test]
fn server_disks_nvme_sas_sata() {
    let (v, d) = default_data("server");
    let disks = &v["inventory"]["disks"];
    let names: Vec<&str> = disks
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    // md127 and dm-0 are not install targets (the deploy's list leaves them out).
    assert_eq!(names, ["/dev/nvme0n1", "/dev/sda", "/dev/sdb", "/dev/sdc"]);
    let nvme = &disks[0];
    assert_eq!(nvme["tran"], "nvme");
    assert_eq!(nvme["serial"], "S4YNNE0R601234");
    assert_eq!(nvme["wwn"], "eui.36344730526021530025384500000001");
    assert_eq!(nvme["vendor"], Value::Null);
    assert_eq!(nvme["size"], 1875385008u64 * 512);
    let sas = &disks[1];
    assert_eq!(
        (&sas["tran"], &sas["vendor"], &sas["model"], &sas["hctl"]),
        (
            &json!("sas"),
            &json!("SEAGATE"),
            &json!("ST2000NM0135"),
            &json!("0:0:0:0")
        )
    );
    assert_eq!(
        sas["serial"], "ZC20ABCD",
        "udev's SCSI serial comes first, as in lsblk"
    );
    assert_eq!(sas["wwn_with_extension"], "0x5000c500a1b2c3d4");
    assert_eq!(sas["physical_sectors"], 4096);
    assert_eq!(
        sas["by_path"],
        "/dev/disk/by-path/pci-0000:3b:00.0-sas-phy0-lun-0"
    );
    let sata = &disks[3];
    assert_eq!(
        (&sata["tran"], &sata["vendor"]),
        (&json!("sata"), &json!("ATA"))
    );
    assert_eq!(sata["rotational"], false);
    // The deploy's choice without hints: the smallest disk of at least 4 GiB.
    assert_eq!(d.root_disk.unwrap().name, "/dev/sdc");
}

#[test]
fn server_cpu_memory_and_vendor() {
    let (_, d) = default_data("server");
    let inv = d.inventory.unwrap();
    assert_eq!(inv.cpu.count, 8);
    assert_eq!(inv.cpu.socket_count, 2);
    assert_eq!(inv.cpu.frequency, "3000.0000", "lscpu's CPU max MHz");
    assert!(inv.cpu.flags.contains(&"avx512f".to_string()));
    assert_eq!(inv.memory.physical_mb, Some(32768));
    assert_eq!(inv.memory.total, Some(32630064 * 1024));
    assert_eq!(
        inv.system_vendor.product_name, "PowerEdge R640 (SKU=NotProvided;ModelName=PowerEdge R640)",
        "lshw appends the SKU"
    );
    assert_eq!(inv.system_vendor.serial_number, "7XK4Q13");
    assert_eq!(inv.system_vendor.firmware.version, "2.17.1");
}

#[test]
fn machine_without_dmi() {
    let (_, d) = default_data("no-dmi");
    let inv = d.inventory.unwrap();
    assert_eq!(
        inv.system_vendor.product_name,
        "Raspberry Pi 4 Model B Rev 1.4"
    );
    assert_eq!(inv.system_vendor.serial_number, "10000000abcdef01");
    assert_eq!(inv.system_vendor.manufacturer, "");
    assert_eq!(inv.system_vendor.firmware.vendor, "");
    assert_eq!(inv.cpu.architecture, "aarch64");
    assert_eq!(inv.cpu.model_name, "");
    assert_eq!(inv.cpu.flags, ["fp", "asimd", "evtstrm", "crc32", "cpuid"]);
    assert_eq!((inv.cpu.count, inv.cpu.socket_count), (4, 1));
    // No memory blocks in sysfs and no SMBIOS: MemTotal.
    assert_eq!(inv.memory.physical_mb, Some(7998508 / 1024));
    let eth0 = &inv.interfaces[0];
    assert_eq!(eth0.name, "eth0");
    assert_eq!((eth0.vendor.as_ref(), eth0.product.as_ref()), (None, None));
    assert_eq!(eth0.pci_address.as_deref(), Some("fd580000.ethernet"));
    assert_eq!(eth0.speed_mbps, Some(1000));
    assert_eq!(inv.interfaces[1].name, "wlan0");
    let trans: Vec<(&str, Option<&str>)> = inv
        .disks
        .iter()
        .map(|d| (d.name.as_str(), d.tran.as_deref()))
        .collect();
    // zram0 has no size and is not a disk for the deploy.
    assert_eq!(
        trans,
        [
            ("/dev/mmcblk0", Some("mmc")),
            ("/dev/mmcblk0boot0", Some("mmc")),
            ("/dev/sda", Some("usb")),
        ]
    );
    assert_eq!(inv.boot.pxe_interface, None);
    assert_eq!(d.root_disk.unwrap().name, "/dev/mmcblk0");
}

#[test]
fn root_device_setting_is_the_root_disk() {
    let opts = Options {
        root_device: Some("/dev/nvme0n1".into()),
        ..Options::quick()
    };
    let d = collect(&tree("server"), &[Collector::Default], &opts, None);
    assert_eq!(d.root_disk.unwrap().name, "/dev/nvme0n1");
}

#[test]
fn collectors_run_in_order_and_failures_become_the_error() {
    let d = collect(
        &tree("virtio-vm"),
        &[Collector::PciDevices, Collector::Default],
        &Options::quick(),
        None,
    );
    assert_eq!(d.configuration.collectors, ["pci-devices", "default"]);
    assert!(d.inventory.is_some());
    // The recording has no /sys/bus/pci: IPA reports that as the inspection's error.
    let err = d.error.unwrap();
    assert!(
        err.starts_with("The following errors were encountered:\n* Failed to get list of PCI"),
        "{err}"
    );
    // Without the default collector there is no inventory at all (IPA sends none either).
    let d = collect(&tree("virtio-vm"), &[], &Options::quick(), None);
    let v = serde_json::to_value(&d).unwrap();
    assert!(v.get("inventory").is_none() && v.get("root_disk").is_none());
    assert_eq!(v["error"], Value::Null);
}

#[test]
fn pci_devices_collector() {
    let dir = tempfile::tempdir().unwrap();
    let dev = dir.path().join("sys/bus/pci/devices/0000:00:1f.6");
    std::fs::create_dir_all(&dev).unwrap();
    for (f, v) in [
        ("vendor", "0x8086\n"),
        ("device", "0x15bb\n"),
        ("class", "0x020000\n"),
        ("revision", "0x10\n"),
        ("numa_node", "-1\n"),
    ] {
        std::fs::write(dev.join(f), v).unwrap();
    }
    std::fs::create_dir_all(dir.path().join("sys/bus/pci/devices/0000:00:00.0")).unwrap();
    let got = pci::devices(&Machine::recorded(dir.path())).unwrap();
    assert_eq!(
        serde_json::to_value(got).unwrap(),
        json!([{"vendor_id": "8086", "product_id": "15bb", "class": "020000",
                "revision": "10", "bus": "0000:00:1f.6", "numa_node_id": "-1"}])
    );
}

#[test]
fn lldp_setting_fills_every_interface() {
    let mut lldp = model::LldpMap::new();
    lldp.insert("eth0".into(), vec![(1, "0400".into())]);
    let (inv, _) = inventory(
        &tree("virtio-vm"),
        &Options::quick(),
        Some(&lldp),
        &mut vec![],
    );
    assert_eq!(inv.interfaces[0].lldp, Some(vec![(1, "0400".to_string())]));
    assert_eq!(inv.interfaces[1].lldp, Some(vec![]));
    let v = serde_json::to_value(&inv.interfaces[0]).unwrap();
    assert_eq!(v["lldp"], json!([[1, "0400"]]));
}

#[test]
fn dhcp_wait_ends_when_the_pxe_nic_has_an_address() {
    let m = tree("virtio-vm");
    let t = std::time::Duration::from_secs(30);
    assert!(net::wait_for_dhcp(
        &m,
        Some("01-52-54-00-12-34-56"),
        false,
        t
    ));
    // eth1 never gets one: a short wait gives up.
    let short = std::time::Duration::from_millis(10);
    assert!(!net::wait_for_dhcp(&m, None, true, short));
    assert!(
        !net::wait_for_dhcp(&m, None, false, t),
        "no BOOTIF: IPA does not wait"
    );
    assert!(net::wait_for_dhcp(
        &m,
        None,
        false,
        std::time::Duration::ZERO
    ));
}
