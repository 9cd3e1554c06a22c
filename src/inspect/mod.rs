//! In-band inspection: the hardware inventory Ironic's `agent` inspect interface (and
//! Metal3) ask the ramdisk for, and the POST that delivers it before lookup (SPEC: IPA 13's
//! `inspector.inspect`, `hardware.list_hardware_info`; LIFECYCLE §5.3).
//!
//! The collectors read the machine where the kernel publishes it (sysfs, procfs, the DMI
//! tables, `getifaddrs`, ethtool's permanent address); only the BMC needs a tool
//! (`ipmitool`). Every collector reads through a [`Machine`], so the same code runs on this
//! machine and on recorded trees in tests. The disk list is the deploy's own
//! ([`crate::disk::root::list_devices`]) and `root_disk` is the deploy's choice.
//!
//! - [`model`]: the wire shapes (IPA's field names, order and types);
//! - [`machine`]: where things are read from;
//! - `net`, `disks`, `cpu`, `dmi`, `bmc`, `lldp`, `pci`: the collectors;
//! - [`settings`]: the collector list and callback URL setting types;
//! - [`callback`]: the POST with IPA's retries, and the agent's inspection step.

mod bmc;
pub mod callback;
mod cpu;
mod disks;
mod dmi;
mod error;
mod lldp;
pub mod machine;
pub mod model;
mod net;
mod pci;
pub mod settings;

use std::time::Duration;

pub use machine::Machine;
pub use model::{Disk, InspectionData, Inventory};
pub use settings::{CallbackUrls, Collector, Collectors, DEFAULT_COLLECTORS};

use crate::agent::log::LogBuffer;
use crate::config::Settings;

/// What the collectors are told (from the settings).
#[derive(Debug, Clone)]
pub struct Options {
    /// `agent_skip_bmc_detect`: report no BMC without asking.
    pub skip_bmc: bool,
    /// `collect_lldp`: fill `interfaces[].lldp`.
    pub collect_lldp: bool,
    /// How long to wait for LLDP frames.
    pub lldp_timeout: Duration,
    /// `root_device`: the deploy's fixed install disk, if configured.
    pub root_device: Option<String>,
    /// How long to wait for the PXE interface's DHCP address (0: not at all).
    pub dhcp_wait: Duration,
    /// Wait for every interface's address, not only the PXE one.
    pub dhcp_all_interfaces: bool,
}

impl Options {
    /// The options the settings give.
    pub fn from_settings(s: &Settings) -> Options {
        Options {
            skip_bmc: s.agent_skip_bmc_detect,
            collect_lldp: s.collect_lldp,
            lldp_timeout: s.lldp_timeout.0,
            root_device: s.root_device.as_ref().map(|p| p.display().to_string()),
            dhcp_wait: s.inspection_dhcp_wait_timeout.0,
            dhcp_all_interfaces: s.inspection_dhcp_all_interfaces,
        }
    }

    /// Nothing slow: no BMC, no LLDP, no DHCP wait (tests, `poll.get_hardware_info`).
    pub fn quick() -> Options {
        Options {
            skip_bmc: true,
            collect_lldp: false,
            lldp_timeout: Duration::ZERO,
            root_device: None,
            dhcp_wait: Duration::ZERO,
            dhcp_all_interfaces: false,
        }
    }
}

/// The inventory and the deploy's root disk; `failures` gets what could not be read (IPA's
/// accumulated failures, which become the POST's `error`).
pub fn inventory(
    m: &Machine,
    opts: &Options,
    lldp: Option<&model::LldpMap>,
    failures: &mut Vec<String>,
) -> (Inventory, Option<Disk>) {
    let mut fail = |what: &str, e: error::CollectError| failures.push(format!("{what}: {e}"));
    let interfaces = net::interfaces(m, lldp).unwrap_or_else(|e| {
        fail("network interfaces", e);
        vec![]
    });
    let cpu = cpu::cpu(m).unwrap_or_else(|e| {
        fail("cpu", e);
        model::Cpu {
            model_name: String::new(),
            frequency: String::new(),
            count: 0,
            architecture: m.arch().unwrap_or_default(),
            flags: vec![],
            socket_count: 0,
        }
    });
    let memory = cpu::memory(m).unwrap_or_else(|e| {
        fail("memory", e);
        model::Memory {
            total: None,
            physical_mb: None,
        }
    });
    let (disks, root_disk) = disks::disks(m, opts.root_device.as_deref());
    let bmc = bmc::detect(m, opts.skip_bmc);
    let inv = Inventory {
        interfaces,
        cpu,
        disks,
        memory,
        bmc_address: bmc.v4,
        bmc_v6address: bmc.v6,
        system_vendor: dmi::system_vendor(m),
        boot: model::Boot {
            current_boot_mode: if m.path("/sys/firmware/efi").is_dir() {
                "uefi".into()
            } else {
                "bios".into()
            },
            pxe_interface: bootif(m),
        },
        hostname: m.hostname(),
        bmc_mac: bmc.mac,
    };
    (inv, root_disk)
}

/// `poll.get_hardware_info`: this machine's inventory (no LLDP wait, no DHCP wait).
pub fn hardware_info(s: &Settings) -> Inventory {
    let opts = Options {
        collect_lldp: false,
        dhcp_wait: Duration::ZERO,
        ..Options::from_settings(s)
    };
    inventory(&Machine::live(), &opts, None, &mut vec![]).0
}

/// `BOOTIF` from the kernel command line (IPA's `get_agent_params`: `key=value` words).
pub(crate) fn bootif(m: &Machine) -> Option<String> {
    m.read("/proc/cmdline")?
        .split_whitespace()
        .filter_map(|w| w.split_once('='))
        .filter(|(k, _)| *k == "BOOTIF")
        .map(|(_, v)| v.to_string())
        .next_back()
}

/// Runs `collectors` in order, as IPA's `inspect()` does, and builds the POST body. `logs`:
/// rivet's own log, for the `logs` collector.
pub fn collect(
    m: &Machine,
    collectors: &[Collector],
    opts: &Options,
    logs: Option<&LogBuffer>,
) -> InspectionData {
    let mut failures = Vec::new();
    let wants_lldp = collectors.contains(&Collector::Lldp) || opts.collect_lldp;
    let lldp = (wants_lldp && m.is_live()).then(|| {
        let names = crate::system::netif::list_interfaces(
            &m.path("/sys/class/net"),
            crate::system::netif::Selection::Ipa,
        )
        .unwrap_or_default();
        lldp::Listener::open(&names).receive(opts.lldp_timeout)
    });
    let mut data = InspectionData {
        inventory: None,
        root_disk: None,
        boot_interface: None,
        configuration: model::Configuration {
            collectors: collectors.iter().map(|c| c.name().to_string()).collect(),
            managers: vec![model::Manager {
                name: crate::agent::steps::MANAGER_NAME.into(),
                version: crate::agent::steps::MANAGER_VERSION.into(),
            }],
        },
        logs: None,
        pci_devices: None,
        lldp_raw: None,
        error: None,
    };
    for c in collectors {
        match c {
            Collector::Default => {
                let pxe = bootif(m);
                net::wait_for_dhcp(m, pxe.as_deref(), opts.dhcp_all_interfaces, opts.dhcp_wait);
                let per_iface = lldp.as_ref().filter(|_| opts.collect_lldp);
                let (inv, root) = inventory(m, opts, per_iface, &mut failures);
                if root.is_none() {
                    tracing::warn!("no suitable root device detected");
                }
                data.boot_interface = inv.boot.pxe_interface.clone();
                data.inventory = Some(inv);
                data.root_disk = root;
            }
            Collector::Logs => data.logs = logs_archive(logs),
            Collector::PciDevices => match pci::devices(m) {
                Ok(d) => data.pci_devices = Some(d),
                Err(e) => failures.push(format!("Failed to get list of PCI devices: {e}")),
            },
            Collector::Lldp => data.lldp_raw = Some(lldp.clone().unwrap_or_default()),
        }
    }
    data.error = (!failures.is_empty()).then(|| {
        let items: Vec<String> = failures.iter().map(|f| format!("* {f}")).collect();
        format!(
            "The following errors were encountered:\n{}",
            items.join("\n")
        )
    });
    data
}

/// The `logs` collector: the same archive as `log.collect_system_logs`, the journal cut to
/// its last 10000 lines as IPA cuts it. A failure is only logged (IPA's collector reports
/// none).
fn logs_archive(logs: Option<&LogBuffer>) -> Option<String> {
    let empty = LogBuffer::default();
    let extra = callback::log_files(Some(10000));
    match crate::agent::log::collect_system_logs_with(logs.unwrap_or(&empty), extra) {
        Ok(v) => v["system_logs"].as_str().map(str::to_string),
        Err(e) => {
            tracing::warn!("failed to get system logs: {e}");
            None
        }
    }
}

#[cfg(test)]
mod tests;
