//! Deploying an image: the data path from the network to the disk.

pub mod pipeline;
