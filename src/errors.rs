//! IPA's error types, in one place.
//!
//! Every error rivet reports to Ironic is one of IPA's "REST errors": it has a class name
//! (`type`), an HTTP-ish `code`, a fixed `message` per class and free-text `details`. Ironic
//! reads `details` first (then `message`), and matches on the class name in a few places, so
//! the names and messages here are wire-visible and copied from IPA 13.0.0 (SPEC §3).

use std::fmt;

/// An error as IPA reports it: one variant per IPA exception class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentError {
    /// `RESTError`: the base class, used raw for checksum set-up failures (SPEC §7.2).
    RestError(String),
    /// `InvalidContentError`: a request body that could not be understood.
    InvalidContent(String),
    /// `InvalidCommandError`: bad command name, unknown command.
    InvalidCommand(String),
    /// `InvalidCommandParamsError`: the validator refused the parameters.
    InvalidCommandParams(String),
    /// `RequestedObjectNotFoundError`: unknown extension or command id.
    NotFound {
        /// The kind of object ("Extension", "Command Result").
        kind: String,
        /// The id that was asked for.
        id: String,
    },
    /// `CommandExecutionError`: any failure that is not one of the typed ones.
    CommandExecution(String),
    /// `AgentIsBusy`: a command is still running.
    AgentIsBusy(String),
    /// `ImageDownloadError` (and its subclasses, see [`DownloadKind`]).
    ImageDownload {
        /// Which subclass of `ImageDownloadError` this is.
        kind: DownloadKind,
        /// Image id (or URL / reference, as IPA passes it).
        image_id: String,
        /// The cause (IPA's `secondary_message`).
        msg: String,
    },
    /// `ImageDownloadTimeoutError`: `image_download_max_duration` exceeded. Terminal.
    ImageDownloadTimeout {
        /// Image id.
        image_id: String,
        /// The configured maximum, in seconds.
        secs: u64,
    },
    /// `ImageChecksumError`: the digest of the image does not match.
    ImageChecksum {
        /// Where the image was written (device or path).
        location: String,
        /// Image id.
        image_id: String,
        /// The digest computed over the bytes received.
        actual: String,
        /// The digest Ironic asked for.
        expected: String,
    },
    /// `ImageWriteError`: writing to the device failed.
    ImageWrite(String),
    /// `SystemRebootError`: reboot/poweroff and the sysrq fallback failed.
    SystemReboot(String),
    /// `DeploymentError`: config drive, partition table checks.
    Deployment(String),
    /// `InvalidImage`: the format inspector refused the image.
    InvalidImage(String),
    /// `DeviceNotFound`: no disk to deploy onto.
    DeviceNotFound(String),
    /// `ClockSyncError`.
    ClockSync(String),
    /// `HardwareManagerMethodNotFound`: a deploy step nobody implements.
    HardwareManagerMethodNotFound(String),
    /// `VersionMismatch`: Ironic's hardware manager versions differ from ours.
    VersionMismatch(String),
    /// `CleaningError`: a clean step failed.
    Cleaning(String),
    /// `ServicingError`: a service step failed.
    Servicing(String),
    /// `BlockDeviceEraseError`: erasing one or more disks failed.
    BlockDeviceErase(String),
    /// `ProtectedDeviceError`: a disk holds a shared file system; cleaning stops.
    ProtectedDevice {
        /// The device.
        device: String,
        /// What was found on it (GPFS, VMFS, gfs2, ...).
        what: String,
    },
    /// `IncompatibleHardwareMethodError`: the step does not apply to this hardware.
    IncompatibleHardwareMethod(String),
}

impl fmt::Display for AgentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.message(), self.details())
    }
}

impl std::error::Error for AgentError {}

/// The subclasses of IPA's `ImageDownloadError`, which differ only in whether a retry helps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownloadKind {
    /// `ImageDownloadError`: retried.
    Retryable,
    /// `ImageDownloadFatalError`: a 4xx answer; never retried.
    Fatal,
    /// `ImageDownloadOutofSpaceError`: the target is full; never retried.
    OutOfSpace,
}

impl AgentError {
    /// IPA's class name, sent as `command_error.type`.
    pub fn type_name(&self) -> &'static str {
        match self {
            AgentError::RestError(_) => "RESTError",
            AgentError::InvalidContent(_) => "InvalidContentError",
            AgentError::InvalidCommand(_) => "InvalidCommandError",
            AgentError::InvalidCommandParams(_) => "InvalidCommandParamsError",
            AgentError::NotFound { .. } => "RequestedObjectNotFoundError",
            AgentError::CommandExecution(_) => "CommandExecutionError",
            AgentError::AgentIsBusy(_) => "AgentIsBusy",
            AgentError::ImageDownload { kind, .. } => match kind {
                DownloadKind::Retryable => "ImageDownloadError",
                DownloadKind::Fatal => "ImageDownloadFatalError",
                DownloadKind::OutOfSpace => "ImageDownloadOutofSpaceError",
            },
            AgentError::ImageDownloadTimeout { .. } => "ImageDownloadTimeoutError",
            AgentError::ImageChecksum { .. } => "ImageChecksumError",
            AgentError::ImageWrite(_) => "ImageWriteError",
            AgentError::SystemReboot(_) => "SystemRebootError",
            AgentError::Deployment(_) => "DeploymentError",
            AgentError::InvalidImage(_) => "InvalidImage",
            AgentError::DeviceNotFound(_) => "DeviceNotFound",
            AgentError::ClockSync(_) => "ClockSyncError",
            AgentError::HardwareManagerMethodNotFound(_) => "HardwareManagerMethodNotFound",
            AgentError::VersionMismatch(_) => "VersionMismatch",
            AgentError::Cleaning(_) => "CleaningError",
            AgentError::Servicing(_) => "ServicingError",
            AgentError::BlockDeviceErase(_) => "BlockDeviceEraseError",
            AgentError::ProtectedDevice { .. } => "ProtectedDeviceError",
            AgentError::IncompatibleHardwareMethod(_) => "IncompatibleHardwareMethodError",
        }
    }

    /// IPA's `code` for the class (also the HTTP status of a synchronous failure).
    pub fn code(&self) -> u16 {
        match self {
            AgentError::InvalidContent(_)
            | AgentError::InvalidCommand(_)
            | AgentError::InvalidCommandParams(_) => 400,
            AgentError::NotFound { .. } | AgentError::DeviceNotFound(_) => 404,
            AgentError::AgentIsBusy(_) | AgentError::VersionMismatch(_) => 409,
            AgentError::ImageDownloadTimeout { .. } => 408,
            _ => 500,
        }
    }

    /// IPA's fixed `message` of the class.
    pub fn message(&self) -> &'static str {
        match self {
            AgentError::RestError(_) => "An error occurred",
            AgentError::InvalidContent(_) => "Invalid request body",
            AgentError::InvalidCommand(_) => "Invalid command",
            AgentError::InvalidCommandParams(_) => "Invalid command parameters",
            AgentError::NotFound { .. } => "Not found",
            AgentError::CommandExecution(_) => "Command execution failed",
            AgentError::AgentIsBusy(_) => "Agent is busy",
            AgentError::ImageDownload { .. } => "Error downloading image",
            AgentError::ImageDownloadTimeout { .. } => "Image download timeout",
            AgentError::ImageChecksum { .. } => "Error verifying image checksum",
            AgentError::ImageWrite(_) => "Error writing image to device",
            AgentError::SystemReboot(_) => "Error rebooting system",
            AgentError::Deployment(_) => "Deploy step failed",
            AgentError::InvalidImage(_) => "The provided image is not valid for use",
            AgentError::DeviceNotFound(_) => {
                "Error finding the disk or partition device to deploy the image onto"
            }
            AgentError::ClockSync(_) => "Error syncing system clock",
            AgentError::HardwareManagerMethodNotFound(_) => {
                "No HardwareManager found to handle method"
            }
            AgentError::VersionMismatch(_) => {
                "Hardware managers version mismatch, reload agent with correct version"
            }
            AgentError::Cleaning(_) => "Clean step failed",
            AgentError::Servicing(_) => "Service step failed",
            AgentError::BlockDeviceErase(_) => "Error erasing block device",
            AgentError::ProtectedDevice { .. } => "Protected device located, cleaning aborted.",
            AgentError::IncompatibleHardwareMethod(_) => {
                "HardwareManager method is not compatible with hardware"
            }
        }
    }

    /// IPA's `details`: the free text of this error (the class message is [`Self::message`];
    /// `Display` joins the two as IPA's `str()` does).
    pub fn details(&self) -> String {
        match self {
            AgentError::RestError(d)
            | AgentError::InvalidContent(d)
            | AgentError::InvalidCommand(d)
            | AgentError::InvalidCommandParams(d)
            | AgentError::CommandExecution(d)
            | AgentError::ImageWrite(d)
            | AgentError::SystemReboot(d)
            | AgentError::Deployment(d)
            | AgentError::InvalidImage(d)
            | AgentError::DeviceNotFound(d)
            | AgentError::ClockSync(d)
            | AgentError::HardwareManagerMethodNotFound(d)
            | AgentError::VersionMismatch(d)
            | AgentError::Cleaning(d)
            | AgentError::Servicing(d)
            | AgentError::BlockDeviceErase(d)
            | AgentError::IncompatibleHardwareMethod(d) => d.clone(),
            AgentError::ProtectedDevice { device, what } => format!(
                "Protected {what} located on device {device}. This volume or contents may be a \
                 shared block device. Please consult your storage administrator, and restart \
                 cleaning after either detaching the volumes, or instructing IPA to not protect \
                 contents. See Ironic Python Agent documentation for more information."
            ),
            AgentError::AgentIsBusy(cmd) => format!("executing command {cmd}"),
            AgentError::NotFound { kind, id } => format!("{kind} with id {id} not found."),
            AgentError::ImageDownload { image_id, msg, .. } => {
                format!("Download of image {image_id} failed: {msg}")
            }
            AgentError::ImageDownloadTimeout { image_id, secs } => format!(
                "Download of image {image_id} failed: Download exceeded max allowed time \
                 ({secs} seconds)"
            ),
            AgentError::ImageChecksum {
                location,
                image_id,
                actual,
                expected,
            } => format!(
                "Image failed to verify against checksum. location: {location}; image ID: \
                 {image_id}; image checksum: {actual}; verification checksum: {expected}"
            ),
        }
    }

    /// Whether a download attempt that failed with this error may be tried again.
    pub fn is_retryable_download(&self) -> bool {
        matches!(
            self,
            AgentError::ImageDownload {
                kind: DownloadKind::Retryable,
                ..
            } | AgentError::ImageChecksum { .. }
        )
    }

    /// Shorthand for a retryable `ImageDownloadError`.
    pub fn download(image_id: impl Into<String>, msg: impl fmt::Display) -> Self {
        AgentError::ImageDownload {
            kind: DownloadKind::Retryable,
            image_id: image_id.into(),
            msg: msg.to_string(),
        }
    }

    /// Shorthand for `ImageDownloadFatalError` (4xx: never retried).
    pub fn download_fatal(image_id: impl Into<String>, msg: impl fmt::Display) -> Self {
        AgentError::ImageDownload {
            kind: DownloadKind::Fatal,
            image_id: image_id.into(),
            msg: msg.to_string(),
        }
    }

    /// Shorthand for `ImageDownloadOutofSpaceError` (target full: never retried).
    pub fn out_of_space(image_id: impl Into<String>, msg: impl fmt::Display) -> Self {
        AgentError::ImageDownload {
            kind: DownloadKind::OutOfSpace,
            image_id: image_id.into(),
            msg: msg.to_string(),
        }
    }
}

/// The result type of everything that can fail the way IPA reports failures.
pub type Result<T, E = AgentError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn details_strip_the_class_message() {
        let e = AgentError::download("img", "boom");
        assert_eq!(e.type_name(), "ImageDownloadError");
        assert_eq!(e.message(), "Error downloading image");
        assert_eq!(e.details(), "Download of image img failed: boom");
        assert_eq!(e.code(), 500);
    }

    #[test]
    fn timeout_is_408_and_not_a_download_error() {
        let e = AgentError::ImageDownloadTimeout {
            image_id: "x".into(),
            secs: 5,
        };
        assert_eq!(e.code(), 408);
        assert!(!e.is_retryable_download());
        assert_eq!(
            e.details(),
            "Download of image x failed: Download exceeded max allowed time (5 seconds)"
        );
    }

    #[test]
    fn checksum_error_names_location_then_id() {
        let e = AgentError::ImageChecksum {
            location: "/dev/sda".into(),
            image_id: "abc".into(),
            actual: "11".into(),
            expected: "22".into(),
        };
        assert_eq!(e.details(), "Image failed to verify against checksum. location: /dev/sda; image ID: abc; image checksum: 11; verification checksum: 22");
    }
}
