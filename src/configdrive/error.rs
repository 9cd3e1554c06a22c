//! The errors of config drive handling: decoding the `configdrive` argument, checking an
//! image, rebuilding it as vfat. Their texts are what the conductor sees in IPA's messages.

use std::io;

use super::iso9660::IsoError;
use super::LABEL;

/// What a config drive fetcher gives back when it fails: any error, shown to the conductor
/// as the reason (the fetcher is a parameter, so this module does no HTTP).
pub(crate) type FetchFailure = Box<dyn std::error::Error + Send + Sync>;

/// Why `base64.b64decode` would fail, in Python's words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Base64Error {
    /// A last quad with a single character; the count is Python's.
    #[error(
        "Invalid base64-encoded string: number of data characters ({0}) cannot be 1 more than \
         a multiple of 4"
    )]
    OneTooMany(usize),
    /// A last quad that is incomplete.
    #[error("Incorrect padding")]
    IncorrectPadding,
}

/// Why an image is not a usable config drive ([`check`]).
#[derive(Debug, thiserror::Error)]
pub(crate) enum DriveError {
    /// The label is not `config-2`.
    #[error("the {kind} image is labelled {label:?}, not \"{LABEL}\"")]
    WrongLabel {
        /// "ISO 9660" or "vfat".
        kind: &'static str,
        /// The label found.
        label: String,
    },
    /// Neither `openstack/` nor `ec2/` at the root.
    #[error("the {0} image has no openstack/ or ec2/ directory")]
    NoMetadata(&'static str),
    /// The ISO 9660 tree cannot be read.
    #[error(transparent)]
    Iso(#[from] IsoError),
    /// The FAT file system cannot be read.
    #[error("unreadable vfat image: {0}")]
    Vfat(#[source] io::Error),
    /// No known file system.
    #[error("neither an ISO 9660 nor a vfat image")]
    Unknown,
}

/// Why [`rebuild_vfat`] could not make a vfat image.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RebuildError {
    /// The ISO 9660 tree cannot be read.
    #[error(transparent)]
    Iso(#[from] IsoError),
    /// The partition is too small for the files.
    #[error(
        "a partition of {size} bytes is too small for a vfat config drive with {payload} bytes \
         of files"
    )]
    TooSmall {
        /// The partition's size.
        size: u64,
        /// The bytes of the files.
        payload: u64,
    },
    /// An image that does not fit in memory.
    #[error("{0} bytes is too large")]
    TooLarge(u64),
    /// Formatting failed.
    #[error("cannot format a {bytes}-byte vfat image: {source}")]
    Format {
        /// The image's size.
        bytes: u64,
        /// The cause.
        source: io::Error,
    },
    /// The new file system cannot be opened.
    #[error("cannot open the new vfat image: {0}")]
    Open(#[source] io::Error),
    /// Writing a file (or its directory) failed.
    #[error("cannot write {path} into the vfat image: {source}")]
    Write {
        /// The file's path in the image.
        path: String,
        /// The cause.
        source: io::Error,
    },
    /// Flushing the file system failed.
    #[error("cannot finish the vfat image: {0}")]
    Finish(#[source] io::Error),
}
