//! Deploying an image: the data path from the network to the disk.

pub mod bootc;
pub mod decode;
pub mod pipeline;
pub mod tempfile_path;
