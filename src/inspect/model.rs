//! The inventory's wire shapes: IPA 13's `serializable_fields`, in IPA's order, with IPA's
//! types. Ironic's inspection hooks (and Metal3) read these names, so a field that IPA sends
//! as `null` is an `Option` here and is always present.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// LLDP TLVs per interface name, as `[type, hex value]` pairs.
pub type LldpMap = BTreeMap<String, Vec<(u8, String)>>;

/// `hardware.list_hardware_info()`: what `inventory` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Inventory {
    /// Network interfaces (`netutils.list_interfaces()` with a usable MAC).
    pub interfaces: Vec<Interface>,
    /// The CPU summary.
    pub cpu: Cpu,
    /// Whole disks, as the deploy sees them.
    pub disks: Vec<Disk>,
    /// Memory.
    pub memory: Memory,
    /// The BMC's IPv4 address: `None` when no BMC can be read, `0.0.0.0` when it has none.
    pub bmc_address: Option<String>,
    /// The BMC's IPv6 address: `None` when no BMC can be read, `::/0` when it has none.
    pub bmc_v6address: Option<String>,
    /// System identity and firmware, from DMI.
    pub system_vendor: SystemVendor,
    /// How the machine booted.
    pub boot: Boot,
    /// The kernel's host name.
    pub hostname: String,
    /// The BMC's MAC address; IPA leaves the key out when it is not known.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub bmc_mac: Option<String>,
}

/// `NetworkInterface`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Interface {
    /// Kernel name.
    pub name: String,
    /// Permanent MAC address (the current one when the driver has none), lower case.
    pub mac_address: String,
    /// First IPv4 address.
    pub ipv4_address: Option<String>,
    /// First IPv6 address (`%<name>` appended to a link-local one, as psutil prints it).
    pub ipv6_address: Option<String>,
    /// Link detected.
    pub has_carrier: bool,
    /// LLDP TLVs as `[type, hex value]` pairs, only when LLDP collection is on.
    pub lldp: Option<Vec<(u8, String)>>,
    /// PCI vendor id (`0x8086`).
    pub vendor: Option<String>,
    /// PCI device id.
    pub product: Option<String>,
    /// DHCP client id (InfiniBand only; IPA 13 never fills it).
    pub client_id: Option<String>,
    /// `biosdevname -i` (rivet does not run it).
    pub biosdevname: Option<String>,
    /// Link speed in Mbit/s.
    pub speed_mbps: Option<u64>,
    /// Bus address of the device (basename of the `device` link).
    pub pci_address: Option<String>,
    /// Kernel driver.
    pub driver: Option<String>,
}

/// `CPU` (its per-core list is not serialized by IPA either).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cpu {
    /// `Model name` as lscpu prints it.
    pub model_name: String,
    /// Maximum (else current) frequency in MHz, as text.
    pub frequency: String,
    /// Number of CPUs.
    pub count: u64,
    /// `uname -m`.
    pub architecture: String,
    /// CPU flags.
    pub flags: Vec<String>,
    /// Number of sockets.
    pub socket_count: u64,
}

/// `BlockDevice`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Disk {
    /// `/dev/<kname>`.
    pub name: String,
    /// Model.
    pub model: Option<String>,
    /// Size in bytes.
    pub size: u64,
    /// Spinning disk.
    pub rotational: bool,
    /// World-wide name.
    pub wwn: Option<String>,
    /// Serial number.
    pub serial: Option<String>,
    /// Vendor (`device/vendor`).
    pub vendor: Option<String>,
    /// udev's `ID_WWN_WITH_EXTENSION`.
    pub wwn_with_extension: Option<String>,
    /// udev's `ID_WWN_VENDOR_EXTENSION`.
    pub wwn_vendor_extension: Option<String>,
    /// SCSI host:channel:target:lun.
    pub hctl: Option<String>,
    /// `/dev/disk/by-path/...`.
    pub by_path: Option<String>,
    /// Logical sector size.
    pub logical_sectors: Option<u64>,
    /// Physical sector size.
    pub physical_sectors: Option<u64>,
    /// Transport, as lsblk names it.
    pub tran: Option<String>,
}

/// `Memory`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Memory {
    /// Usable memory in bytes (`MemTotal`).
    pub total: Option<u64>,
    /// Installed memory in MiB.
    pub physical_mb: Option<u64>,
}

/// `SystemVendorInfo`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SystemVendor {
    /// Product name (with ` (<SKU>)` appended, as lshw does).
    pub product_name: String,
    /// Serial number.
    pub serial_number: String,
    /// Manufacturer.
    pub manufacturer: String,
    /// System firmware.
    pub firmware: Firmware,
}

/// `SystemFirmware`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Firmware {
    /// BIOS vendor.
    pub vendor: String,
    /// BIOS version.
    pub version: String,
    /// BIOS release date.
    pub build_date: String,
}

/// `BootInfo`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Boot {
    /// `uefi` or `bios`.
    pub current_boot_mode: String,
    /// `BOOTIF` from the kernel command line, as given.
    pub pxe_interface: Option<String>,
}

/// What is POSTed to the inspection callback (IPA's `data` dict, in IPA's key order).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InspectionData {
    /// The inventory (only the `default` collector makes one; Ironic requires it).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub inventory: Option<Inventory>,
    /// The disk the deploy would pick without hints; absent when there is none.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub root_disk: Option<Disk>,
    /// `BOOTIF`, again (an old field Ironic still reads).
    pub boot_interface: Option<String>,
    /// Which collectors ran and which hardware manager answered.
    pub configuration: Configuration,
    /// gzip+base64 tar of the logs (the `logs` collector).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub logs: Option<String>,
    /// PCI devices (the `pci-devices` collector).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub pci_devices: Option<Vec<PciDevice>>,
    /// Raw LLDP per interface (the `lldp` collector).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub lldp_raw: Option<LldpMap>,
    /// The collectors' failures, or `None`; a non-null error fails inspection in Ironic.
    pub error: Option<String>,
}

/// `configuration`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Configuration {
    /// Collector names, in the order they ran.
    pub collectors: Vec<String>,
    /// Hardware managers (`get_version()` of each).
    pub managers: Vec<Manager>,
}

/// One hardware manager's name and version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manager {
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
}

/// One entry of the `pci-devices` collector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PciDevice {
    /// Vendor id, hex without `0x`.
    pub vendor_id: String,
    /// Device id, hex without `0x`.
    pub product_id: String,
    /// Class, hex without `0x`.
    pub class: String,
    /// Revision, hex without `0x`.
    pub revision: Option<String>,
    /// Bus address.
    pub bus: String,
    /// NUMA node, as the kernel writes it.
    pub numa_node_id: Option<String>,
}
