//! Images: Ironic's description of one, fetching it, and checking it.

pub mod checksum;
pub mod encoding;
pub mod fetch;
pub(crate) mod format;
pub(crate) mod http;
pub mod info;
