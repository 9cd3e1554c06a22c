//! The install disk: opening it, writing to it, and its partition tables.

pub mod blkpg;
pub mod device;
pub mod layout;
pub mod root;
pub mod table;
pub mod writer;
