//! The errors of UEFI boot-entry management, named after IPA's exceptions where IPA has one.

use std::io;
use std::path::PathBuf;

use crate::errors::AgentError;

/// Why a load option could not be decoded (firmware and other tools write these too).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadOptionError {
    /// Shorter than the fixed header, or than what its header announces.
    #[error("truncated load option ({0} bytes)")]
    Truncated(usize),
    /// The description has no UTF-16 NUL before the end of the variable.
    #[error("the description is not NUL-terminated")]
    UnterminatedDescription,
    /// A device path node is shorter than its header or runs past the path list.
    #[error("bad device path node at byte {0}")]
    BadNode(usize),
    /// A node would not fit the 16-bit length field.
    #[error("device path node too long ({0} bytes)")]
    NodeTooLong(usize),
}

/// Why a `BOOT*.CSV` file cannot be used (IPA fails on these too).
#[derive(Debug, thiserror::Error)]
pub enum CsvError {
    /// An odd number of bytes after the byte order mark.
    #[error("{0} bytes: not UTF-16")]
    OddLength(usize),
    /// Not valid UTF-16 (a lone surrogate).
    #[error("not UTF-16: {0}")]
    NotUtf16(#[source] std::string::FromUtf16Error),
    /// The first line has no loader and label.
    #[error("fewer than two comma-separated fields")]
    TooFewFields,
}

/// A failure while finding the ESP, reading it, or editing the UEFI variables.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// IPA's `DeviceNotFound`: no ESP on the disk (the text is IPA's).
    #[error("{0}")]
    DeviceNotFound(String),
    /// IPA's `InvalidCommandParamsError` (`clean_uefi_nvram`'s `match_patterns`).
    #[error("{0}")]
    InvalidCommandParams(String),
    /// The disk or its partition table could not be read (or the MBR signature written).
    #[error("cannot read the partition table of {disk}: {source}")]
    Disk {
        /// The disk.
        disk: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The ESP is not a FAT file system rivet can read, or reading a file on it failed.
    #[error("cannot read the EFI system partition {partition} of {disk}: {source}")]
    Esp {
        /// The disk holding the ESP.
        disk: PathBuf,
        /// Its partition number.
        partition: u32,
        /// The cause.
        source: io::Error,
    },
    /// A `BOOT*.CSV` file that IPA would also fail on (not UTF-16, fewer than two fields).
    #[error("invalid boot CSV {path} on {disk}: {reason}")]
    InvalidCsv {
        /// The disk holding the ESP.
        disk: PathBuf,
        /// The CSV's path on the ESP.
        path: String,
        /// What is wrong with it.
        #[source]
        reason: CsvError,
    },
    /// The efivarfs directory is missing: the machine did not boot in UEFI mode, or efivarfs is
    /// not mounted (efibootmgr says "EFI variables are not supported on this system").
    #[error("EFI variables are not supported on this system: {0} is not a directory")]
    NoEfivars(PathBuf),
    /// Reading, writing or deleting a UEFI variable failed.
    #[error("cannot {action} EFI variable {path}: {source}")]
    Variable {
        /// "read", "write" or "delete".
        action: &'static str,
        /// The variable's file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// A variable rivet must understand (BootOrder, a Boot#### it writes) is malformed.
    #[error("malformed EFI variable {name}: {reason}")]
    BadVariable {
        /// The variable name (`BootOrder`, `Boot0003`).
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// All 65536 Boot#### numbers are taken.
    #[error("no free Boot#### variable number")]
    NoFreeBootNumber,
}

impl BootError {
    pub(crate) fn disk(disk: &std::path::Path, source: io::Error) -> Self {
        BootError::Disk {
            disk: disk.to_path_buf(),
            source,
        }
    }
}

impl BootError {
    /// The error `image.install_bootloader` reports, as IPA's `manage_uefi` would:
    /// `DeviceNotFound` keeps its class and text; anything else (IPA: a failing mount or
    /// efibootmgr) is `CommandExecutionError` "Could not configure UEFI boot on device <dev>: ...".
    pub fn into_install_error(self, device: &std::path::Path) -> AgentError {
        match self {
            BootError::DeviceNotFound(m) => AgentError::DeviceNotFound(m),
            BootError::InvalidCommandParams(m) => AgentError::InvalidCommandParams(m),
            other => AgentError::CommandExecution(format!(
                "Could not configure UEFI boot on device {}: {other}",
                device.display()
            )),
        }
    }

    /// True for the errors IPA raises as REST errors (which a clean step passes on as they
    /// are); the others reach the conductor as IPA's `CleaningError` "Unexpected exception
    /// performing clean step clean_uefi_nvram. <class>: <message>".
    pub fn is_rest_error(&self) -> bool {
        matches!(
            self,
            BootError::DeviceNotFound(_) | BootError::InvalidCommandParams(_)
        )
    }
}

/// The REST errors keep IPA's class; the rest become `CommandExecutionError` (prefer
/// [`BootError::into_install_error`], which names the device as IPA does).
impl From<BootError> for AgentError {
    fn from(e: BootError) -> Self {
        match e {
            BootError::DeviceNotFound(m) => AgentError::DeviceNotFound(m),
            BootError::InvalidCommandParams(m) => AgentError::InvalidCommandParams(m),
            other => AgentError::CommandExecution(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_errors_as_ipa_reports_them() {
        let dev = std::path::Path::new("/dev/sda");
        let e = BootError::NoEfivars("/x".into()).into_install_error(dev);
        assert_eq!(
            e.to_string(),
            "Command execution failed: Could not configure UEFI boot on device /dev/sda: \
             EFI variables are not supported on this system: /x is not a directory"
        );
        let e = BootError::DeviceNotFound("No EFI partition".into());
        assert!(e.is_rest_error());
        assert!(matches!(
            e.into_install_error(dev),
            AgentError::DeviceNotFound(_)
        ));
    }
}
