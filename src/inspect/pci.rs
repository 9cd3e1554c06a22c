//! The `pci-devices` collector: every device of `/sys/bus/pci/devices` with its ids, class,
//! revision and NUMA node, the hex values without their `0x` (IPA 13's
//! `collect_pci_devices_info`).

use super::error::CollectError;
use super::machine::Machine;
use super::model::PciDevice;

/// The PCI devices; an error when the directory cannot be listed.
pub(crate) fn devices(m: &Machine) -> Result<Vec<PciDevice>, CollectError> {
    let dir = m.path("/sys/bus/pci/devices");
    if let Err(source) = std::fs::read_dir(&dir) {
        return Err(CollectError::List { dir, source });
    }
    let mut out = Vec::new();
    for bus in m.list("/sys/bus/pci/devices") {
        let base = format!("/sys/bus/pci/devices/{bus}");
        let hex = |f: &str| {
            m.read(&format!("{base}/{f}"))
                .and_then(|v| v.split_once('x').map(|(_, h)| h.to_string()))
        };
        let (Some(vendor_id), Some(product_id), Some(class)) =
            (hex("vendor"), hex("device"), hex("class"))
        else {
            tracing::warn!("failed to gather vendor id, product id or class of PCI device {bus}");
            continue;
        };
        out.push(PciDevice {
            vendor_id,
            product_id,
            class,
            revision: hex("revision"),
            numa_node_id: m.read(&format!("{base}/numa_node")),
            bus,
        });
    }
    Ok(out)
}
