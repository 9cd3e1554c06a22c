//! Image formats: the inspector (what an image is, and whether it is safe), qcow2 converted
//! while it streams, and qemu-img for the rest.

pub(crate) mod compress;
pub(crate) mod convert;
pub(crate) mod inspect;
pub(crate) mod qcow2;
