//! UEFI boot entries, natively: what IPA does with parted, sgdisk, mount and efibootmgr for
//! `image.install_bootloader` (`efi_utils.manage_uefi`) and for the `clean_uefi_nvram` step.
//!
//! rivet reads the partition table and the ESP's FAT straight from the disk and writes the
//! `Boot####`/`BootOrder` variables through efivarfs, so the ramdisk needs neither efibootmgr
//! nor a vfat driver, and nothing is mounted.
//!
//! - [`load_option`]: the `EFI_LOAD_OPTION` bytes (Hard Drive + File Path nodes);
//! - [`devpath_text`]: a load option as `efibootmgr -v` prints it (what IPA's patterns match);
//! - [`efivars`]: the variable store (efivarfs or a test directory);
//! - [`partitions`]: the partition table, for the Hard Drive node;
//! - [`esp`]: finding the ESP and its loaders (CSV or IPA's fallback list);
//! - [`window`]: a partition's byte range as fatfs reads and writes it (no mount);
//! - [`entries`]: registering loaders without duplicates, and cleaning by pattern;
//! - [`grub`]: IPA's `_install_grub2` (partition images, when Ironic enables it), with
//!   [`esp_write`] writing the ESP natively.

pub mod devpath_text;
pub mod efivars;
pub mod entries;
pub(crate) mod error;
pub mod esp;
pub(crate) mod esp_write;
pub mod grub;
pub mod load_option;
pub(crate) mod partitions;
pub(crate) mod window;

use std::path::Path;

pub use efivars::{VarStore, DEFAULT_EFIVARS_DIR};
pub use entries::{clean_uefi_nvram, BootEntry, RemovedEntry};
pub use error::{BootError, CsvError};

/// Whether this system booted in UEFI mode (IPA's `get_boot_info`: `/sys/firmware/efi` is a
/// directory). When it did not, IPA does nothing for UEFI in `install_bootloader`.
pub fn booted_in_uefi_mode() -> bool {
    Path::new("/sys/firmware/efi").is_dir()
}

/// IPA's `manage_uefi(device, efi_system_part_uuid)`: finds the ESP on `disk` (a disk or a disk
/// image), finds its loaders, and registers one boot entry per loader in `vars`, first in
/// `BootOrder`, replacing any entry with the same label.
///
/// Returns the entries added. An empty list is IPA's `False` ("Empty EFI partition detected"):
/// the ESP has no loader, nothing was changed, and `install_bootloader` goes on to its
/// `root_uuid` check. The disk is only read. (IPA passes `efibootmgr -w`, "write a signature
/// to an MBR disk that has none", but efibootmgr ignores that flag: an MBR disk with signature 0
/// gets `HD(n,MBR,0x0,...)` entries there too, and so it does here.)
///
/// Errors: [`BootError::DeviceNotFound`] with IPA's text when there is no ESP; the other
/// variants become IPA's `CommandExecutionError` through [`BootError::into_install_error`].
pub fn install_entries(
    disk: &Path,
    esp_uuid: Option<&str>,
    vars: &VarStore,
) -> Result<Vec<BootEntry>, BootError> {
    let esp = esp::find_esp(disk, esp_uuid)?;
    let loaders = esp::find_loaders(disk, &esp)?;
    if loaders.is_empty() {
        tracing::warn!("Empty EFI partition detected.");
        return Ok(Vec::new());
    }
    entries::register_loaders(vars, &esp.hd, &loaders)
}
