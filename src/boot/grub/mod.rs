//! IPA 13's `_install_grub2`: the bootloader of a partition image installed from the image
//! itself, taken by `image.install_bootloader` when Ironic enables
//! `enable_bios_bootloader_install`, `root_uuid` names a partition, and the UEFI entry set-up
//! found no loader (or the machine booted in BIOS mode).
//!
//! As IPA: the root partition (found by UUID, PARTUUID or label) is mounted with `/dev`, `/proc`,
//! `/run` and `/sys` in it ([`chroot`]); if the image carries `/boot/efi/EFI`, that tree goes
//! into the ESP with `grub.cfg`/`grubenv` beside each loader directory, boot entries are
//! registered, the ESP goes into the image's fstab, and that is all ([`assets`]). Otherwise
//! the image's own `grub-install` runs in the chroot: twice for UEFI (normal, then
//! `--removable`; failures only warned), once onto the disk for BIOS; then `grub-mkconfig`.
//! After a UEFI grub-install rivet also registers the loaders natively (IPA leaves that to
//! grub-install, whose efibootmgr finds no efivarfs in the chroot).
//!
//! Deviations, because rivet's ramdisk has no vfat driver: the ESP is never mounted. Assets are
//! written into it with fatfs ([`crate::boot::esp_write`]); for `grub-install` a tmpfs holding a
//! copy of the ESP is mounted on the image's `/boot/efi`, and what grub wrote there is copied
//! into the ESP afterwards. IPA's `mount -a -t vfat` in the chroot (the image's own vfat fstab
//! entries) is therefore skipped. Software RAID (md holders, `prepare_boot_partitions_for_softraid`,
//! dracut's `rd.md.uuid`) is not implemented.

mod assets;
pub(crate) mod chroot;
pub(crate) mod locate;

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::boot::partitions::{read_partitions, Partition};
use crate::deploy::partition_image::{PartDev, Planned};
use crate::disk::partitions::{PartType, ESP_TYPE_GUID};
use crate::errors::AgentError;
use chroot::Chroot;
use locate::Probe;

/// Why the GRUB2 installation failed (reported as IPA's `CommandExecutionError`).
#[derive(Debug, thiserror::Error)]
pub(crate) enum GrubError {
    /// A command in the chroot failed (the text of oslo's `ProcessExecutionError`).
    #[error(
        "Unexpected error while running command.\nCommand: {cmd}\nExit code: {rc}\n\
         Stdout: {}\nStderr: {}", quoted(.stdout), quoted(.stderr)
    )]
    Command {
        /// The command line, as IPA's shell sees it.
        cmd: String,
        /// Its exit code (-1: could not start, or killed).
        rc: i32,
        /// What it printed.
        stdout: String,
        /// What it complained.
        stderr: String,
    },
    /// A mount, a directory or a file could not be made, read or written.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// On what.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// An error IPA raises as it is (the ESP's `DeviceNotFound`).
    #[error("{0}")]
    Agent(AgentError),
}

/// Python's `repr` of a short string, as oslo prints stdout/stderr.
fn quoted(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// The request: IPA's `_install_grub2(device, root_uuid, efi_system_part_uuid)`.
#[derive(Debug, Clone)]
pub struct Grub2Request<'a> {
    /// The install disk.
    pub device: &'a Path,
    /// The root file system's UUID, PARTUUID or label.
    pub root_uuid: &'a str,
    /// The ESP's, for UEFI.
    pub efi_system_part_uuid: Option<&'a str>,
    /// The efivarfs directory (UEFI mode when it exists), for the entries.
    pub efivars_dir: &'a Path,
}

/// Installs GRUB2 from the image (see the module doc). Errors: `DeviceNotFound` when a
/// partition is missing, else IPA's `CommandExecutionError` "Installing GRUB2 boot loader to
/// device <dev> failed with <cause>."
pub fn install_grub2(req: &Grub2Request<'_>) -> Result<(), AgentError> {
    let dev = req.device;
    tracing::debug!("Installing GRUB2 bootloader on device {}", dev.display());
    let (root, probe) = locate::get_partition(dev, req.root_uuid)?;
    if !req.efivars_dir.is_dir() && req.efi_system_part_uuid.is_none() && bootloader_loaded(dev) {
        tracing::info!(
            "Skipping installation of bootloader on device {} as it is already marked bootable.",
            dev.display()
        );
        return Ok(());
    }
    match install(req, &root, &probe) {
        Ok(()) => {
            tracing::info!("GRUB2 successfully installed on {}", dev.display());
            Ok(())
        }
        Err(GrubError::Agent(e)) => Err(e),
        Err(e) => {
            let msg = format!(
                "Installing GRUB2 boot loader to device {} failed with {e}.",
                dev.display()
            );
            tracing::error!("{msg}");
            Err(AgentError::CommandExecution(msg))
        }
    }
}

/// The body of `_install_grub2`, between the mounts and the clean-up (the [`Chroot`] guard).
fn install(req: &Grub2Request<'_>, root: &Partition, probe: &Probe) -> Result<(), GrubError> {
    let dev = req.device;
    let esp = match req.efi_system_part_uuid {
        Some(u) => Some(locate::get_partition(dev, u).map_err(GrubError::Agent)?),
        None => None,
    };
    let fstype = probe.fstype.as_deref().ok_or_else(|| GrubError::Io {
        action: "mount",
        path: dev.to_path_buf(),
        source: std::io::Error::other(format!(
            "partition {} holds no file system blkid knows",
            root.hd.partition_number
        )),
    })?;
    let planned = Planned {
        role: "root",
        number: root.hd.partition_number,
        start: root.offset(),
        size: root.len(),
    };
    let part = PartDev::open(dev, &planned).map_err(|f| GrubError::Command {
        cmd: "losetup".into(),
        rc: f.rc,
        stdout: f.stdout,
        stderr: f.stderr,
    })?;
    let mut ch = Chroot::mount_root(part, fstype)?;
    ch.mount_for_chroot()?;
    if let (Some(esp), Some(uuid)) = (&esp, req.efi_system_part_uuid) {
        if assets::try_preserve_efi_assets(&ch, req, &esp.0)? {
            append_uefi_to_fstab(&ch, esp, uuid);
            return Ok(());
        }
        tracing::debug!(
            "No EFI assets were preserved for setup or the ramdisk was unable to complete the \
             setup. falling back to bootloader installation from deployed image."
        );
    }
    let bin = binary_name(&ch);
    let path = path_variable();
    match &esp {
        Some((esp, _)) => assets::grub_install_uefi(&mut ch, req, esp, bin, &path)?,
        None => {
            tracing::info!("GRUB2 will be installed on disks [{}]", dev.display());
            ch.run(
                &format!("{bin}-install {}", dev.display()),
                &[("PATH", &path)],
            )?;
            tracing::debug!("GRUB2 successfully installed on device {}", dev.display());
        }
    }
    configure_grub(&ch)?;
    if let (Some(esp), Some(uuid)) = (&esp, req.efi_system_part_uuid) {
        append_uefi_to_fstab(&ch, esp, uuid);
    }
    Ok(())
}

/// `grub2` when the image has `usr/sbin/grub2-install`, else `grub`.
fn binary_name(ch: &Chroot) -> &'static str {
    if ch.has_file("usr/sbin/grub2-install") {
        "grub2"
    } else {
        "grub"
    }
}

/// IPA's `_get_path_variable`: the agent's PATH with `/bin:/usr/sbin:/sbin` appended.
fn path_variable() -> String {
    format!(
        "{}:/bin:/usr/sbin:/sbin",
        std::env::var("PATH").unwrap_or_default()
    )
}

/// IPA's `_configure_grub`: `grub(2)-mkconfig -o /boot/grub(2)/grub.cfg` in the chroot.
fn configure_grub(ch: &Chroot) -> Result<(), GrubError> {
    tracing::debug!("Attempting to generate grub Configuration");
    let bin = binary_name(ch);
    let path = path_variable();
    ch.run(
        &format!("{bin}-mkconfig -o /boot/{bin}/grub.cfg"),
        &[
            ("PATH", &path),
            ("GRUB_DISABLE_OS_PROBER", "true"),
            ("GRUB_SAVEDEFAULT", "true"),
        ],
    )?;
    tracing::debug!("Completed basic grub configuration.");
    Ok(())
}

/// IPA's `_append_uefi_to_fstab`: a `/boot/efi` line for the ESP in the image's `etc/fstab`
/// (when it has one), by `UUID=` when `uuid` is the ESP's file system UUID, by `PARTUUID=` when
/// it is its partition's, unless the same `LABEL=uuid` is there already. Failures are logged.
fn append_uefi_to_fstab(ch: &Chroot, esp: &(Partition, Probe), uuid: &str) {
    let Ok(mut f) = ch.open_inside("etc/fstab", rustix::fs::OFlags::RDWR) else {
        return;
    };
    let label = if esp.1.uuid.as_deref().is_some_and(|u| u.contains(uuid)) {
        "UUID"
    } else if esp.0.partuuid().contains(uuid) {
        "PARTUUID"
    } else {
        tracing::warn!(
            "Falling back to fstab entry addition label of UUID. We could not identify which \
             UUID or PARTUUID identifier label should be used, thus UUID will be used."
        );
        "UUID"
    };
    let mut text = String::new();
    let res = f.read_to_string(&mut text).and_then(|_| {
        if text.contains(&format!("{label}={uuid}")) {
            return Ok(());
        }
        let line = format!("{label}={uuid}\t/boot/efi\tvfat\tumask=0077\t0\t1\n");
        std::io::Write::write_all(&mut f, line.as_bytes())
    });
    match res {
        Ok(()) => tracing::debug!(
            "Added entry to /etc/fstab for EFI partition auto-mount with uuid {uuid}"
        ),
        Err(e) => tracing::debug!("Failed to add entry to /etc/fstab. Error {e}"),
    }
}

/// IPA's `_is_bootloader_loaded` in BIOS mode: a partition flagged bootable (parted's `boot`:
/// the MBR active flag, or a GPT ESP) and sector 0 a boot sector with code. IPA asks `file`
/// whether the first 218 bytes are an executable; rivet approximates that with a non-empty
/// code area before the 0x55AA signature.
fn bootloader_loaded(device: &Path) -> bool {
    let mut sector = [0u8; 512];
    let read = std::fs::File::open(device).and_then(|mut f| f.read_exact(&mut sector));
    if read.is_err() || sector[510..] != [0x55, 0xaa] || sector[..218].iter().all(|&b| b == 0) {
        return false;
    }
    let active = (0..4).any(|i| sector[446 + 16 * i] == 0x80);
    let esp = read_partitions(device)
        .unwrap_or_default()
        .iter()
        .any(|p| p.part.kind == PartType::Gpt(ESP_TYPE_GUID));
    active || esp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_read_as_ipa_reports_them() {
        let e = GrubError::Command {
            cmd: "chroot /tmp/x /bin/sh -c \"grub-install /dev/sda\"".into(),
            rc: 1,
            stdout: String::new(),
            stderr: "it's broken".into(),
        };
        assert_eq!(
            e.to_string(),
            "Unexpected error while running command.\nCommand: chroot /tmp/x /bin/sh -c \
             \"grub-install /dev/sda\"\nExit code: 1\nStdout: ''\nStderr: 'it\\'s broken'"
        );
    }

    #[test]
    fn an_empty_boot_sector_holds_no_bootloader() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d");
        let mut s = vec![0u8; 4096];
        s[510] = 0x55;
        s[511] = 0xaa;
        s[446] = 0x80;
        std::fs::write(&p, &s).unwrap();
        assert!(!bootloader_loaded(&p), "no code");
        s[0] = 0xeb;
        std::fs::write(&p, &s).unwrap();
        assert!(bootloader_loaded(&p), "code and an active partition");
        s[446] = 0;
        std::fs::write(&p, &s).unwrap();
        assert!(!bootloader_loaded(&p), "nothing flagged bootable");
    }
}
