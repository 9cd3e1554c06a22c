//! The UEFI half of `_install_grub2`: IPA's `_try_preserve_efi_assets`/`_preserve_efi_assets`
//! (the image's own `/boot/efi/EFI` tree copied into the ESP, then boot entries), and the
//! `grub-install` fallback, both writing the ESP natively with fatfs instead of mounting it
//! (see the module doc of [`super`]).

use std::io::Read;
use std::path::Path;

use rustix::fs::OFlags;

use super::chroot::Chroot;
use super::{configure_grub, Grub2Request, GrubError};
use crate::boot::esp_write::{self, FatRw};
use crate::boot::partitions::Partition;
use crate::boot::{self, VarStore};

/// The image's UEFI assets, relative to its root.
const EFI_ASSETS: &str = "boot/efi/EFI";

fn esp_err(disk: &Path) -> impl FnOnce(std::io::Error) -> GrubError + '_ {
    move |source| GrubError::Io {
        action: "write the EFI system partition of",
        path: disk.to_path_buf(),
        source,
    }
}

/// IPA's `_try_preserve_efi_assets`: true when the image's assets are on the ESP and boot
/// entries for them were written. A failing `grub-mkconfig` is an error, as in IPA.
pub(super) fn try_preserve_efi_assets(
    ch: &Chroot,
    req: &Grub2Request<'_>,
    esp: &Partition,
) -> Result<bool, GrubError> {
    if !ch.is_dir_inside(EFI_ASSETS) {
        return Ok(false);
    }
    if ch.has_file("usr/sbin/grub2-install") || ch.has_file("usr/sbin/grub-install") {
        configure_grub(ch)?;
    }
    tracing::debug!("EFI asset folder detected, attempting to preserve assets.");
    if let Err(e) = preserve_efi_assets(ch, req.device, esp) {
        tracing::debug!("Failed to preserve EFI assets. Error {e}");
        return Ok(false);
    }
    match efi_boot_setup(req) {
        Ok(done) => Ok(done),
        Err(e) => {
            tracing::debug!(
                "Exception encountered while attempting to setup the EFI loader from a root \
                 filesystem. Error: {e}"
            );
            Ok(false)
        }
    }
}

/// IPA's `_preserve_efi_assets`: the image's `boot/efi/EFI` tree into the ESP's `EFI`, and the
/// image's `boot/grub2/grub.cfg` and `grubenv` into each `EFI/<dir>/` that lacks them.
fn preserve_efi_assets(ch: &Chroot, disk: &Path, esp: &Partition) -> Result<(), GrubError> {
    let src = ch.root().join(EFI_ASSETS);
    let fs = esp_write::open_rw(disk, esp).map_err(esp_err(disk))?;
    let n = esp_write::copy_into(&fs, &src, "EFI").map_err(esp_err(disk))?;
    let mut dirs: Vec<String> = std::fs::read_dir(&src)
        .map_err(esp_err(disk))?
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .collect();
    dirs.sort();
    for name in ["grub.cfg", "grubenv"] {
        let Some(data) = image_file(ch, &format!("boot/grub2/{name}")) else {
            continue;
        };
        tracing::debug!("Local Grub2 {name} detected.");
        for d in &dirs {
            let dest = format!("EFI/{d}/{name}");
            if !esp_write::has_file(&fs, &dest) {
                if let Err(e) = write_file(&fs, &dest, &data) {
                    tracing::warn!("Failed to copy {name} file for EFI boot operation. Error {e}");
                }
            }
        }
    }
    fs.unmount().map_err(esp_err(disk))?;
    tracing::debug!(
        "Files preserved to partition {} of {}: {n} files, EFI directories {dirs:?}",
        esp.hd.partition_number,
        disk.display()
    );
    Ok(())
}

/// A regular file of the image (symlinks resolved inside it), if there is one.
fn image_file(ch: &Chroot, rel: &str) -> Option<Vec<u8>> {
    let mut f = ch.open_inside(rel, OFlags::RDONLY).ok()?;
    if !f.metadata().ok()?.is_file() {
        return None;
    }
    let mut data = Vec::new();
    f.read_to_end(&mut data).ok()?;
    Some(data)
}

fn write_file(fs: &FatRw, path: &str, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = fs.root_dir().create_file(path)?;
    f.write_all(data)?;
    f.truncate()?;
    f.flush()
}

/// IPA's `_efi_boot_setup` as called here: boot entries for the loaders on the ESP, when the
/// machine booted in UEFI mode. False in BIOS mode or when the ESP holds no loader.
fn efi_boot_setup(req: &Grub2Request<'_>) -> Result<bool, crate::boot::BootError> {
    if !req.efivars_dir.is_dir() {
        return Ok(false);
    }
    let store = VarStore::open(req.efivars_dir)?;
    let entries = boot::install_entries(req.device, req.efi_system_part_uuid, &store)?;
    for e in &entries {
        tracing::info!(
            "UEFI boot entry Boot{:04X} \"{}\" -> {}",
            e.number,
            e.label,
            e.loader
        );
    }
    Ok(!entries.is_empty())
}

/// The UEFI branch of `_install_grub2`: `<bin>-install` and `<bin>-install --removable` in the
/// chroot (failures only warned, as IPA), with a tmpfs holding a copy of the ESP on the image's
/// `/boot/efi` in place of the vfat mount; what they wrote is then copied into the ESP.
///
/// Then, unlike IPA, the loaders get boot entries natively (failures warned): grub-install's
/// own NVRAM update (efibootmgr in the chroot) finds no efivarfs under the chroot's fresh
/// `/sys`, so in IPA too only the `--removable` fallback path usually makes the disk bootable.
pub(super) fn grub_install_uefi(
    ch: &mut Chroot,
    req: &Grub2Request<'_>,
    esp: &Partition,
    bin: &str,
    path: &str,
) -> Result<(), GrubError> {
    let disk = req.device;
    tracing::warn!(
        "GRUB2 will be installed for UEFI on efi partition {} of {} using the install command \
         which does not place Secure Boot signed binaries.",
        esp.hd.partition_number,
        disk.display()
    );
    let mnt = ch.mount_tmpfs("boot/efi")?;
    {
        let fs = esp_write::open_rw(disk, esp).map_err(esp_err(disk))?;
        esp_write::copy_out(&fs, &mnt).map_err(esp_err(disk))?;
    }
    for extra in ["", " --removable"] {
        if let Err(e) = ch.run(&format!("{bin}-install{extra}"), &[("PATH", path)]) {
            tracing::warn!("Ignoring GRUB2 boot loader installation failure: {e}.");
        }
    }
    let fs = esp_write::open_rw(disk, esp).map_err(esp_err(disk))?;
    let n = esp_write::copy_into(&fs, &mnt, "").map_err(esp_err(disk))?;
    fs.unmount().map_err(esp_err(disk))?;
    tracing::debug!("{n} files of grub-install copied into the ESP");
    match efi_boot_setup(req) {
        Ok(true) => {}
        Ok(false) => tracing::debug!("no UEFI boot entry written after grub-install"),
        Err(e) => tracing::warn!("cannot write UEFI boot entries after grub-install: {e}"),
    }
    Ok(())
}
