//! The install disk: opening it, writing to it, and its partition tables.
//!
//! - [`device`]: the target (exclusive open, O_DIRECT, wipe on failure, rescan);
//! - [`writer`]: the writer stage (held-back head, aligned double-buffered writes);
//! - [`partitions`]: every partition-table read and write;
//! - [`root`]: which disk to install on (root device hints).

pub mod device;
pub mod partitions;
pub mod root;
pub mod writer;
