//! Why one inventory collector failed. A failing collector does not stop the inspection: its
//! error is reported in the inspection data's `error`, as IPA reports its collectors'.

use std::io;
use std::path::PathBuf;

use crate::system::netif::NetifError;

/// A collector that could not read what it reads.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CollectError {
    /// A procfs file (named as on a live system) cannot be read.
    #[error("cannot read {file}: {source}")]
    Read {
        /// `/proc/cpuinfo`, `/proc/meminfo`.
        file: &'static str,
        /// The cause.
        source: io::Error,
    },
    /// A sysfs directory cannot be listed.
    #[error("{}: {source}", dir.display())]
    List {
        /// The directory, under the machine's root.
        dir: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The network interfaces cannot be listed.
    #[error(transparent)]
    Interfaces(#[from] NetifError),
}
