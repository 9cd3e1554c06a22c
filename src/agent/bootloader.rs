//! The `image` extension: `install_bootloader`, as IPA 13 does it: boot entries for the
//! loaders on the install disk's ESP, written natively (see [`crate::boot`]); when none is
//! found and Ironic enabled `enable_bios_bootloader_install`, the image's own GRUB2
//! ([`crate::boot::grub`]); with it disabled, IPA's CVE-2026-43003 refusal.

use std::path::Path;

use serde_json::Value;

use super::Agent;
use crate::boot::{self, VarStore};
use crate::errors::AgentError;

/// IPA's refusal of legacy BIOS bootloaders (its CVE-2026-43003 mitigation).
const BIOS_DISABLED: &str = "Install of legacy BIOS bootloaders disabled by \
     CONF.enable_bios_bootloader_install as part of CVE-2026-43003 mitigation.";

/// The parameters the conductor sends.
#[derive(Debug, Default)]
pub(crate) struct InstallBootloader {
    /// The MBR signature of a whole-disk image (`0x1a2b3c4d`), a root fs uuid, or none.
    pub root_uuid: Option<String>,
    /// The ESP's uuid, when the conductor knows it (partition images).
    pub efi_system_part_uuid: Option<String>,
    /// ppc64 only; ignored with a warning, as IPA.
    pub prep_boot_part_uuid: Option<String>,
    /// `uefi` or `bios`: informational here, as in IPA outside software RAID.
    pub target_boot_mode: Option<String>,
    /// Overrides the `ignore_bootloader_failure` setting.
    pub ignore_bootloader_failure: Option<bool>,
}

/// `image.install_bootloader`.
pub(crate) fn install_bootloader(
    agent: &Agent,
    p: &InstallBootloader,
) -> Result<Value, AgentError> {
    let device = agent.root_device()?;
    let settings = agent.settings();
    let ignore = p
        .ignore_bootloader_failure
        .unwrap_or(settings.ignore_bootloader_failure);
    if p.prep_boot_part_uuid.is_some() {
        tracing::warn!("PReP partition support is deprecated: ignoring prep_boot_part_uuid");
    }
    match efi_setup(&device, &settings.efivars_dir, p) {
        Ok(true) => return Ok(Value::Null),
        Ok(false) => {}
        Err(e) if ignore => tracing::error!("Error setting up bootloader. Error {e}"),
        Err(e) => return Err(e),
    }
    if matches!(p.root_uuid.as_deref(), None | Some("0x00000000")) {
        tracing::info!(
            "Not using grub2-install since root UUID is not provided. Assuming a whole disk image"
        );
        return Ok(Value::Null);
    }
    let e = if settings.enable_bios_bootloader_install {
        tracing::debug!("Using grub2-install to set up boot files");
        let req = boot::grub::Grub2Request {
            device: &device,
            root_uuid: p.root_uuid.as_deref().unwrap_or_default(),
            efi_system_part_uuid: p.efi_system_part_uuid.as_deref(),
            efivars_dir: &settings.efivars_dir,
        };
        match boot::grub::install_grub2(&req) {
            Ok(()) => return Ok(Value::Null),
            Err(e) => e,
        }
    } else {
        AgentError::InvalidImage(BIOS_DISABLED.into())
    };
    tracing::error!("{e}");
    if ignore {
        return Ok(Value::Null);
    }
    Err(e)
}

/// IPA's `_efi_boot_setup`: `Ok(true)` when boot entries were written, `Ok(false)` when the
/// machine did not boot in UEFI mode or the ESP holds no loader.
fn efi_setup(device: &Path, efivars: &Path, p: &InstallBootloader) -> Result<bool, AgentError> {
    let uefi = efivars.is_dir();
    if let Some(target) = p.target_boot_mode.as_deref() {
        let current = if uefi { "uefi" } else { "bios" };
        if target != current {
            tracing::warn!("target boot mode {target} differs from the current one ({current})");
        }
    }
    if !uefi {
        return Ok(false);
    }
    let store = VarStore::open(efivars).map_err(|e| e.into_install_error(device))?;
    let entries = boot::install_entries(device, p.efi_system_part_uuid.as_deref(), &store)
        .map_err(|e| e.into_install_error(device))?;
    if entries.is_empty() {
        tracing::warn!("Empty EFI partition detected.");
        return Ok(false);
    }
    for e in &entries {
        tracing::info!(
            "UEFI boot entry Boot{:04X} \"{}\" -> {} on partition {}",
            e.number,
            e.label,
            e.loader,
            e.partition
        );
    }
    // The kernel must see the partitions the entries name (ESP and root) after a deploy.
    if let Ok(f) = std::fs::File::open(device) {
        crate::disk::partitions::tell_kernel(&f, device);
    }
    Ok(true)
}
