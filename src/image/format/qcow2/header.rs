//! The qcow2 header: parsed and policed before anything else is trusted.

use super::{unsafe_, Qcow2Error};
use crate::image::format::inspect::{be_u32 as be32, be_u64 as be64};

/// The parts of the header that matter.
#[derive(Debug, Clone)]
pub(crate) struct Header {
    /// 2 or 3.
    pub version: u32,
    /// log2 of the cluster size.
    pub cluster_bits: u32,
    /// Size of the virtual disk in bytes.
    pub virtual_size: u64,
    /// Entries in the L1 table.
    pub l1_size: u32,
    /// Where the L1 table is.
    pub l1_offset: u64,
    /// Where the refcount table is.
    pub refcount_offset: u64,
    /// Its length in clusters.
    pub refcount_clusters: u32,
    /// Internal snapshots.
    pub nb_snapshots: u32,
    /// zstd (1) instead of zlib (0) for compressed clusters.
    pub zstd: bool,
}

/// Bytes of the file needed to parse the header (it and its extensions live in cluster 0;
/// the smallest cluster is 512 bytes, and extensions are bounded by the cluster).
pub(crate) const HEADER_PEEK: usize = 4096;

const INCOMPAT_DIRTY: u64 = 1;
const INCOMPAT_CORRUPT: u64 = 2;
const INCOMPAT_DATA_FILE: u64 = 4;
const INCOMPAT_COMPRESSION: u64 = 8;
const INCOMPAT_EXTL2: u64 = 16;

impl Header {
    /// Parses and polices the header. `head` is the start of the file.
    pub(crate) fn parse(head: &[u8]) -> Result<Header, Qcow2Error> {
        let short = || unsafe_("qcow2 header is truncated");
        if head.get(..4) != Some(b"QFI\xfb") {
            return Err(unsafe_("not a qcow2 image"));
        }
        let version = be32(head, 4).ok_or_else(short)?;
        if version != 2 && version != 3 {
            return Err(unsafe_(format!("qcow2 version {version} is not supported")));
        }
        if be64(head, 8).ok_or_else(short)? != 0 {
            return Err(unsafe_("qcow2 image has a backing file"));
        }
        let cluster_bits = be32(head, 20).ok_or_else(short)?;
        if !(9..=21).contains(&cluster_bits) {
            return Err(unsafe_(format!(
                "qcow2 cluster_bits {cluster_bits} out of range"
            )));
        }
        let virtual_size = be64(head, 24).ok_or_else(short)?;
        if virtual_size > 1 << 55 {
            return Err(unsafe_(format!(
                "qcow2 virtual size {virtual_size} is absurd"
            )));
        }
        if be32(head, 32).ok_or_else(short)? != 0 {
            return Err(unsafe_("qcow2 image is encrypted"));
        }
        let l1_size = be32(head, 36).ok_or_else(short)?;
        let cluster = 1u64 << cluster_bits;
        let per_l2 = cluster / 8;
        let needed = virtual_size.div_ceil(cluster * per_l2);
        // qemu sizes L1 to the disk; a much larger one only costs memory to read.
        if u64::from(l1_size) < needed || u64::from(l1_size) > 2 * needed + 8192 {
            return Err(unsafe_(format!(
                "qcow2 L1 size {l1_size} does not fit the virtual size {virtual_size}"
            )));
        }
        let mut zstd = false;
        if version == 3 {
            let incompat = be64(head, 72).ok_or_else(short)?;
            let known = INCOMPAT_DIRTY
                | INCOMPAT_CORRUPT
                | INCOMPAT_DATA_FILE
                | INCOMPAT_COMPRESSION
                | INCOMPAT_EXTL2;
            if incompat & !known != 0 {
                return Err(unsafe_(format!(
                    "qcow2 unknown incompatible features {incompat:#x}"
                )));
            }
            if incompat & INCOMPAT_DATA_FILE != 0 {
                return Err(unsafe_("qcow2 image uses an external data file"));
            }
            if incompat & INCOMPAT_EXTL2 != 0 {
                return Err(unsafe_("qcow2 extended L2 entries are not supported"));
            }
            if incompat & INCOMPAT_CORRUPT != 0 {
                return Err(unsafe_("qcow2 image is marked corrupt"));
            }
            let header_len = be32(head, 100).ok_or_else(short)? as usize;
            if header_len > 104 && incompat & INCOMPAT_COMPRESSION != 0 {
                zstd = match head.get(104).ok_or_else(short)? {
                    0 => false,
                    1 => true,
                    t => return Err(unsafe_(format!("qcow2 compression type {t} unknown"))),
                };
            }
            // Header extensions: refuse an external data file name.
            let mut at = header_len.max(104);
            // Extensions beyond what we peeked at end the walk: cluster 0 is never data.
            while let (Some(kind), Some(len)) = (be32(head, at), be32(head, at + 4)) {
                if kind == 0 {
                    break;
                }
                if kind == 0x4441_5441 {
                    return Err(unsafe_("qcow2 image names an external data file"));
                }
                at += 8 + (len as usize).div_ceil(8) * 8;
            }
        }
        Ok(Header {
            version,
            cluster_bits,
            virtual_size,
            l1_size,
            l1_offset: be64(head, 40).ok_or_else(short)?,
            refcount_offset: be64(head, 48).ok_or_else(short)?,
            refcount_clusters: be32(head, 56).ok_or_else(short)?,
            nb_snapshots: be32(head, 60).ok_or_else(short)?,
            zstd,
        })
    }

    pub(super) fn cluster(&self) -> u64 {
        1 << self.cluster_bits
    }
}
