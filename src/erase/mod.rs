//! Disk erasure for the future `clean` extension: IPA's three erase clean steps.
//!
//! - [`erase_devices`] (IPA `erase_devices`, priority 10 by default): per whole device,
//!   NVMe format (crypto erase when supported) or ATA security erase, else the overwrite
//!   (IPA's `shred`: N random passes, then zeroes), several devices at once up to
//!   `disk_erasure_concurrency`.
//! - [`erase_devices_metadata`] (priority 99): signatures, RAID/LVM labels and partition
//!   tables of each device and its partitions, and the kernel's partitions.
//! - [`erase_devices_express`] (priority 0): NVMe format where possible, else the metadata
//!   erase; never an overwrite.
//!
//! Callers pass whole devices (disks, md arrays, multipath devices) after applying
//! `skip_block_devices`; partitions are found here from the on-disk table and sysfs (IPA
//! lists them with lsblk and sorts them before their disk; the effect is the same).
//!
//! Before anything is written, for every device: shared-disk filesystems stop the step
//! (ProtectedDeviceError); virtual media, RAID members and (for the metadata and express
//! steps) read-only devices are skipped silently, as IPA does; a read-only device fails
//! `erase_devices` unless `agent_erase_skip_read_only`. rivet adds two refusals IPA lacks: a
//! device holding a mounted filesystem, and the device the agent runs from; every write
//! goes through an O_EXCL handle. See `safety`, `probe`, `metadata`, `overwrite`, `nvme`,
//! `ata` and `kernel` for each part, and why it is done the way it is.

mod ata;
mod device;
mod error;
pub mod kernel;
mod metadata;
mod nvme;
mod overwrite;
mod parts;
mod probe;
mod safety;
mod steps;

use serde_json::Value;

pub use ata::{CmdError, CmdOutput, CommandRunner, SystemRunner};
pub use error::{DeviceError, EraseError};
pub use nvme::{AdminCmd, NvmeAdmin, NvmeDevice, NvmeError};
pub use overwrite::{EraseProgress, ZeroMethod};
pub use steps::{
    erase_block_device, erase_devices, erase_devices_express, erase_devices_express_with,
    erase_devices_metadata, erase_devices_with, Tools,
};

/// The erase settings: what Ironic puts in `driver_internal_info` (deploy_utils
/// `agent_add_clean_params`) plus rivet's own knobs. `Default` is what Ironic 39 sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EraseOptions {
    /// `agent_erase_devices_iterations`: random passes of the overwrite.
    pub iterations: u32,
    /// `agent_erase_devices_zeroize`: a final pass of zeroes.
    pub zeroize: bool,
    /// `agent_continue_if_secure_erase_failed` (or the older `..._ata_erase_failed`): a
    /// failed secure erase falls back to the overwrite instead of failing the step.
    pub continue_if_secure_erase_failed: bool,
    /// `agent_enable_nvme_secure_erase`.
    pub enable_nvme_secure_erase: bool,
    /// `agent_enable_ata_secure_erase`.
    pub enable_ata_secure_erase: bool,
    /// `disk_erasure_concurrency`: devices overwritten at once.
    pub concurrency: usize,
    /// `agent_erase_skip_read_only`.
    pub skip_read_only: bool,
    /// IPA's `[DEFAULT]guard_special_filesystems` and `wipe_special_filesystems`: refuse
    /// devices with GPFS/VMFS/gfs2.
    pub guard_special_filesystems: bool,
    /// How the overwrite's zero pass is done (rivet's).
    pub zero_method: ZeroMethod,
    /// Express erase also zeroes a whole non-NVMe device when it can discard with
    /// guaranteed zeroes (rivet's; IPA only erases the metadata there).
    pub express_zeroout: bool,
}

impl Default for EraseOptions {
    fn default() -> Self {
        EraseOptions {
            iterations: 1,
            zeroize: true,
            continue_if_secure_erase_failed: false,
            enable_nvme_secure_erase: true,
            enable_ata_secure_erase: true,
            concurrency: 4,
            skip_read_only: false,
            guard_special_filesystems: true,
            zero_method: ZeroMethod::Auto,
            express_zeroout: true,
        }
    }
}

fn flag(info: &Value, key: &str) -> Option<bool> {
    match info.get(key)? {
        Value::Bool(b) => Some(*b),
        Value::String(s) => match s.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Some(true),
            "false" | "0" | "no" | "off" => Some(false),
            _ => None,
        },
        Value::Number(n) => n.as_u64().map(|n| n != 0),
        _ => None,
    }
}

fn number(info: &Value, key: &str) -> Option<u64> {
    match info.get(key)? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

impl EraseOptions {
    /// The options from a node's `driver_internal_info`, with IPA's fallbacks for missing
    /// keys (notably a concurrency of 1, and the older `agent_continue_if_ata_erase_failed`).
    /// `guard_conf` is the agent's `guard_special_filesystems` setting (IPA default true).
    pub fn from_driver_internal_info(info: &Value, guard_conf: bool) -> EraseOptions {
        let d = EraseOptions::default();
        EraseOptions {
            iterations: number(info, "agent_erase_devices_iterations")
                .map_or(d.iterations, |n| u32::try_from(n).unwrap_or(u32::MAX)),
            zeroize: flag(info, "agent_erase_devices_zeroize").unwrap_or(true),
            continue_if_secure_erase_failed: flag(info, "agent_continue_if_secure_erase_failed")
                .or_else(|| flag(info, "agent_continue_if_ata_erase_failed"))
                .unwrap_or(false),
            enable_nvme_secure_erase: flag(info, "agent_enable_nvme_secure_erase").unwrap_or(true),
            enable_ata_secure_erase: flag(info, "agent_enable_ata_secure_erase").unwrap_or(true),
            concurrency: number(info, "disk_erasure_concurrency")
                .map_or(1, |n| usize::try_from(n).unwrap_or(1).max(1)),
            skip_read_only: flag(info, "agent_erase_skip_read_only").unwrap_or(false),
            guard_special_filesystems: guard_conf
                && flag(info, "wipe_special_filesystems").unwrap_or(true),
            ..d
        }
    }
}

/// Why a device was left alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// IPA's virtual media device (`/dev/disk/by-label/ir-vfd-dev`).
    VirtualMedia,
    /// A Linux software-RAID member.
    RaidMember,
    /// Read-only, and allowed to be skipped.
    ReadOnly,
}

/// How one device was erased.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EraseMethod {
    /// Not erased.
    Skipped(SkipReason),
    /// NVMe Format with this Secure Erase Setting (2 crypto, 1 user data).
    NvmeFormat {
        /// SES.
        ses: u32,
    },
    /// ATA security erase (hdparm).
    AtaSecureErase,
    /// Overwritten.
    Overwrite {
        /// Random passes.
        random_passes: u32,
        /// Followed by zeroes.
        zeroized: bool,
    },
}

/// What `erase_devices` did, per device, in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EraseReport {
    /// Device path as given, and how it was erased.
    pub devices: Vec<(String, EraseMethod)>,
}

impl EraseReport {
    /// IPA's `clean_result`: `{"/dev/sda": null, ...}` (its `erase_block_device` returns
    /// None whatever it did).
    pub fn clean_result(&self) -> Value {
        Value::Object(
            self.devices
                .iter()
                .map(|(d, _)| (d.clone(), Value::Null))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn options_from_ironic_defaults() {
        let info = json!({
            "agent_erase_devices_iterations": 1, "agent_erase_devices_zeroize": true,
            "agent_continue_if_secure_erase_failed": false, "agent_continue_if_ata_erase_failed": false,
            "agent_enable_nvme_secure_erase": true, "agent_enable_ata_secure_erase": true,
            "disk_erasure_concurrency": 4, "agent_erase_skip_read_only": false
        });
        assert_eq!(
            EraseOptions::from_driver_internal_info(&info, true),
            EraseOptions::default()
        );
    }

    #[test]
    fn options_fallbacks_are_ipas() {
        let o = EraseOptions::from_driver_internal_info(
            &json!({"agent_continue_if_ata_erase_failed": true, "wipe_special_filesystems": false,
                    "agent_erase_devices_iterations": "3"}),
            true,
        );
        assert_eq!(o.concurrency, 1);
        assert!(o.continue_if_secure_erase_failed);
        assert!(!o.guard_special_filesystems);
        assert_eq!(o.iterations, 3);
        assert!(
            !EraseOptions::from_driver_internal_info(&json!({}), false).guard_special_filesystems
        );
    }

    #[test]
    fn clean_result_is_ipas_shape() {
        let r = EraseReport {
            devices: vec![
                ("/dev/sda".into(), EraseMethod::AtaSecureErase),
                (
                    "/dev/sdb".into(),
                    EraseMethod::Skipped(SkipReason::RaidMember),
                ),
            ],
        };
        assert_eq!(
            r.clean_result(),
            json!({"/dev/sda": null, "/dev/sdb": null})
        );
    }
}
