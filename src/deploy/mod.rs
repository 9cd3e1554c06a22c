//! Deploying an image: the data path from the network to the disk.

pub mod bootc;
pub mod configdrive_write;
pub mod decode;
pub mod partition_image;
pub mod pipeline;
pub mod tempfile_path;
