//! The errors IPA's erase steps raise, as the conductor sees them (class name, fixed message,
//! free-text details), plus the internal per-device error they are built from.
//!
//! The details texts are IPA 13's own (hardware.py, errors.py), because operators and the
//! conductor's `last_error` show them verbatim.

use std::io;
use std::path::{Path, PathBuf};

/// An erase step failure, one variant per IPA exception class that can end an erase step.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EraseError {
    /// `BlockDeviceEraseError`: the details say which device and why.
    #[error("{0}")]
    BlockDeviceErase(String),
    /// `ProtectedDeviceError` (a `CleaningError`): a shared-disk filesystem or partition type.
    #[error("protected {what} on {device}")]
    ProtectedDevice {
        /// The disk or partition (`/dev/sda1`) holding it.
        device: String,
        /// What was found (`VMware VMFS Partition (GPT)`, ...).
        what: &'static str,
    },
    /// `HardwareManagerMethodNotFound`: IPA's `IncompatibleHardwareMethodError` from the only
    /// hardware manager (secure erase failed without fallback, or the overwrite failed) turns
    /// into this on the wire; `cause` keeps the reason for rivet's own log.
    #[error("{cause}")]
    MethodNotFound {
        /// Always `erase_block_device` here.
        method: &'static str,
        /// IPA's `IncompatibleHardwareMethodError` text (logged, not sent).
        cause: String,
    },
}

/// The conductor sees IPA's classes and texts; they are written once, in
/// [`crate::errors::AgentError`].
impl From<EraseError> for crate::errors::AgentError {
    fn from(e: EraseError) -> Self {
        use crate::errors::AgentError;
        match e {
            EraseError::BlockDeviceErase(d) => AgentError::BlockDeviceErase(d),
            EraseError::ProtectedDevice { device, what } => AgentError::ProtectedDevice {
                device,
                what: what.to_string(),
            },
            // IPA's IncompatibleHardwareMethodError from the only manager reaches the wire as
            // HardwareManagerMethodNotFound; the cause stays in rivet's log.
            EraseError::MethodNotFound { method, cause } => {
                tracing::error!("{method}: {cause}");
                AgentError::HardwareManagerMethodNotFound(format!(
                    "Could not find method: {method}"
                ))
            }
        }
    }
}

impl EraseError {
    /// IPA's `details`, as the conductor will see them.
    pub fn details(&self) -> String {
        crate::errors::AgentError::from(self.clone()).details()
    }

    /// IPA's failure of `erase_block_device` that ends in `HardwareManagerMethodNotFound`.
    pub(crate) fn incompatible(cause: impl Into<String>) -> Self {
        EraseError::MethodNotFound {
            method: "erase_block_device",
            cause: cause.into(),
        }
    }
}

/// A system call or tool that failed on one device, with what rivet was doing.
#[derive(Debug, thiserror::Error)]
#[error("{op} {}: {source}", device.display())]
pub struct DeviceError {
    /// The device (or partition range) it failed on.
    pub device: PathBuf,
    /// What was being done ("zeroing", "writing random data to", ...).
    pub op: String,
    /// The cause.
    #[source]
    pub source: io::Error,
}

impl DeviceError {
    pub(crate) fn new(device: &Path, op: impl Into<String>, source: io::Error) -> Self {
        DeviceError {
            device: device.to_path_buf(),
            op: op.into(),
            source,
        }
    }

    /// A failure that is not an `errno` (refusals by the safety checks, cancellation).
    pub(crate) fn other(device: &Path, op: impl Into<String>, why: impl Into<String>) -> Self {
        Self::new(device, op, io::Error::other(why.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protected_device_text_is_ipas() {
        let e = EraseError::ProtectedDevice {
            device: "/dev/sda1".into(),
            what: "Red Hat Global File System 2",
        };
        let a = crate::errors::AgentError::from(e.clone());
        assert_eq!(a.type_name(), "ProtectedDeviceError");
        assert_eq!(a.message(), "Protected device located, cleaning aborted.");
        assert_eq!(
            e.details(),
            "Protected Red Hat Global File System 2 located on device /dev/sda1. This volume \
             or contents may be a shared block device. Please consult your storage \
             administrator, and restart cleaning after either detaching the volumes, or \
             instructing IPA to not protect contents. See Ironic Python Agent documentation \
             for more information."
        );
    }

    #[test]
    fn method_not_found_hides_the_cause_like_ipa() {
        let e = EraseError::incompatible(
            "Unable to erase block device /dev/sda: device is unsupported.",
        );
        assert_eq!(
            crate::errors::AgentError::from(e.clone()).type_name(),
            "HardwareManagerMethodNotFound"
        );
        assert_eq!(e.details(), "Could not find method: erase_block_device");
    }
}
