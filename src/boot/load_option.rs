//! `EFI_LOAD_OPTION`, the content of a `Boot####` variable (UEFI 2.10 §3.1.3), and the two
//! device path nodes rivet writes (§10.3.5.1 Hard Drive, §10.3.5.4 File Path).
//!
//! Layout: `Attributes: u32`, `FilePathListLength: u16`, `Description` (UTF-16LE, NUL-terminated),
//! `FilePathList` (`FilePathListLength` bytes of device path nodes), then optional data up to the
//! end of the variable. Every integer is little-endian. What rivet writes is what
//! `efibootmgr -c -d <disk> -p <n> -L <label> -l <loader>` writes: an active option whose path is
//! `HD(...)` / `File(...)` / End Entire, with no optional data.
//!
//! Decoding keeps the device path as raw bytes and walks it on demand, so an entry written by
//! firmware or another tool (any node types, even a broken path) still yields its description.

use super::error::LoadOptionError;

/// `LOAD_OPTION_ACTIVE`: the boot manager may use the option.
pub const LOAD_OPTION_ACTIVE: u32 = 0x0000_0001;

/// Device path node type: media.
pub const MEDIA_DEVICE_PATH: u8 = 0x04;
/// Media subtype: hard drive (a partition).
pub const MEDIA_HARDDRIVE_DP: u8 = 0x01;
/// Media subtype: file path.
pub const MEDIA_FILEPATH_DP: u8 = 0x04;
/// Device path node type: end of path.
pub const END_DEVICE_PATH_TYPE: u8 = 0x7f;
/// End subtype: end of the whole device path.
pub const END_ENTIRE_DEVICE_PATH_SUBTYPE: u8 = 0xff;
/// End subtype: end of this instance, another follows.
pub const END_INSTANCE_DEVICE_PATH_SUBTYPE: u8 = 0x01;

/// The Hard Drive node's fixed length: 4 header + 4 + 8 + 8 + 16 + 1 + 1.
pub const HARDDRIVE_NODE_LEN: usize = 42;

/// `MBRType`: legacy PC-AT MBR.
pub const MBR_TYPE_PCAT: u8 = 0x01;
/// `MBRType`: GUID partition table.
pub const MBR_TYPE_GPT: u8 = 0x02;
/// `SignatureType`: 32-bit MBR disk signature (bytes 440-443 of LBA 0).
pub const SIGNATURE_TYPE_MBR: u8 = 0x01;
/// `SignatureType`: the GPT partition's unique GUID.
pub const SIGNATURE_TYPE_GUID: u8 = 0x02;

/// What identifies the partition in a Hard Drive node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionSignature {
    /// The GPT partition's unique GUID, in EFI's on-disk byte order (the first three fields
    /// little-endian: gptman's `unique_partition_guid` as it is).
    Gpt([u8; 16]),
    /// The MBR disk signature (little-endian at byte 440 of the disk).
    Mbr(u32),
}

impl PartitionSignature {
    /// The signature as lsblk/blkid print a PARTUUID (`xxxxxxxx-...` for GPT; the MBR form
    /// needs the partition number, see [`crate::disk::partitions::Table::partuuid`]).
    pub fn gpt_uuid(&self) -> Option<uuid::Uuid> {
        match self {
            PartitionSignature::Gpt(b) => Some(uuid::Uuid::from_bytes_le(*b)),
            PartitionSignature::Mbr(_) => None,
        }
    }
}

/// A Hard Drive media device path node: where the ESP is on its disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HardDrive {
    /// The partition number (1-based; MBR logical partitions are 5 and up).
    pub partition_number: u32,
    /// The first LBA of the partition, in the disk's logical blocks.
    pub start_lba: u64,
    /// The partition's size in logical blocks.
    pub size_lba: u64,
    /// The partition (GPT) or disk (MBR) signature.
    pub signature: PartitionSignature,
}

impl HardDrive {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&[MEDIA_DEVICE_PATH, MEDIA_HARDDRIVE_DP]);
        out.extend_from_slice(&(HARDDRIVE_NODE_LEN as u16).to_le_bytes());
        out.extend_from_slice(&self.partition_number.to_le_bytes());
        out.extend_from_slice(&self.start_lba.to_le_bytes());
        out.extend_from_slice(&self.size_lba.to_le_bytes());
        let (sig, mbr_type, sig_type) = match self.signature {
            PartitionSignature::Gpt(g) => (g, MBR_TYPE_GPT, SIGNATURE_TYPE_GUID),
            PartitionSignature::Mbr(s) => {
                let mut b = [0u8; 16];
                b[..4].copy_from_slice(&s.to_le_bytes());
                (b, MBR_TYPE_PCAT, SIGNATURE_TYPE_MBR)
            }
        };
        out.extend_from_slice(&sig);
        out.extend_from_slice(&[mbr_type, sig_type]);
    }

    /// Reads a Hard Drive node's body (the 38 bytes after its header). `None` for a signature
    /// type other than MBR or GUID (e.g. 0, "no signature").
    pub fn from_node_data(d: &[u8]) -> Option<HardDrive> {
        if d.len() != HARDDRIVE_NODE_LEN - 4 {
            return None;
        }
        let mut sig = [0u8; 16];
        sig.copy_from_slice(&d[20..36]);
        let signature = match d[37] {
            SIGNATURE_TYPE_GUID => PartitionSignature::Gpt(sig),
            SIGNATURE_TYPE_MBR => PartitionSignature::Mbr(le_u32(&sig[..4])),
            _ => return None,
        };
        Some(HardDrive {
            partition_number: le_u32(&d[0..4]),
            start_lba: le_u64(&d[4..12]),
            size_lba: le_u64(&d[12..20]),
            signature,
        })
    }
}

/// One device path node, borrowed from its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Node<'a> {
    /// The node type (1 hardware, 2 ACPI, 3 messaging, 4 media, 5 BIOS, 0x7f end).
    pub kind: u8,
    /// The subtype.
    pub subtype: u8,
    /// The node's bytes after its 4-byte header.
    pub data: &'a [u8],
}

impl Node<'_> {
    /// True for End Entire (the path stops there).
    pub fn is_end_entire(&self) -> bool {
        self.kind == END_DEVICE_PATH_TYPE && self.subtype == END_ENTIRE_DEVICE_PATH_SUBTYPE
    }
}

/// Walks device path nodes until End Entire or the end of the bytes.
pub struct Nodes<'a> {
    bytes: &'a [u8],
    pos: usize,
    done: bool,
}

impl<'a> Iterator for Nodes<'a> {
    type Item = Result<Node<'a>, LoadOptionError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.pos >= self.bytes.len() {
            return None;
        }
        let rest = &self.bytes[self.pos..];
        let len = if rest.len() >= 4 {
            usize::from(u16::from_le_bytes([rest[2], rest[3]]))
        } else {
            0
        };
        if len < 4 || len > rest.len() {
            self.done = true;
            return Some(Err(LoadOptionError::BadNode(self.pos)));
        }
        let node = Node {
            kind: rest[0],
            subtype: rest[1],
            data: &rest[4..len],
        };
        self.pos += len;
        self.done = node.is_end_entire();
        Some(Ok(node))
    }
}

/// A decoded (or to be encoded) `EFI_LOAD_OPTION`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadOption {
    /// `LOAD_OPTION_*` bits.
    pub attributes: u32,
    /// The label shown by the boot menu (efibootmgr's `-L`).
    pub description: String,
    /// The raw `FilePathList`.
    pub device_path: Vec<u8>,
    /// Bytes after the path (boot arguments for the loader); empty for what rivet writes.
    pub optional_data: Vec<u8>,
}

impl LoadOption {
    /// An active option booting `file` (backslashes; forward slashes are turned, as efivar
    /// does) from the partition `hd`: `HD(...)/File(...)`, as `efibootmgr -c` makes it.
    pub fn hard_drive_file(
        description: &str,
        hd: &HardDrive,
        file: &str,
    ) -> Result<LoadOption, LoadOptionError> {
        let mut path = Vec::with_capacity(HARDDRIVE_NODE_LEN + 8 + 2 * file.len());
        hd.encode(&mut path);
        let name: Vec<u16> = file
            .replace('/', "\\")
            .encode_utf16()
            .chain(std::iter::once(0))
            .collect();
        let len = 4 + 2 * name.len();
        let len16 = u16::try_from(len).map_err(|_| LoadOptionError::NodeTooLong(len))?;
        path.extend_from_slice(&[MEDIA_DEVICE_PATH, MEDIA_FILEPATH_DP]);
        path.extend_from_slice(&len16.to_le_bytes());
        path.extend(name.iter().flat_map(|c| c.to_le_bytes()));
        path.extend_from_slice(&[END_DEVICE_PATH_TYPE, END_ENTIRE_DEVICE_PATH_SUBTYPE, 4, 0]);
        if path.len() > usize::from(u16::MAX) {
            return Err(LoadOptionError::NodeTooLong(path.len()));
        }
        Ok(LoadOption {
            attributes: LOAD_OPTION_ACTIVE,
            description: description.to_string(),
            device_path: path,
            optional_data: Vec::new(),
        })
    }

    /// The variable's bytes (without the 4-byte efivarfs attribute prefix).
    pub fn encode(&self) -> Vec<u8> {
        let desc: Vec<u16> = self.description.encode_utf16().chain([0]).collect();
        let mut out = Vec::with_capacity(
            6 + 2 * desc.len() + self.device_path.len() + self.optional_data.len(),
        );
        out.extend_from_slice(&self.attributes.to_le_bytes());
        // hard_drive_file bounds the path; a decoded path came from a u16 length.
        let path_len = u16::try_from(self.device_path.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&path_len.to_le_bytes());
        out.extend(desc.iter().flat_map(|c| c.to_le_bytes()));
        out.extend_from_slice(&self.device_path[..usize::from(path_len)]);
        out.extend_from_slice(&self.optional_data);
        out
    }

    /// Parses a `Boot####` variable's data. Only the header and the description must be well
    /// formed; the device path is checked when it is walked.
    pub fn decode(bytes: &[u8]) -> Result<LoadOption, LoadOptionError> {
        if bytes.len() < 6 {
            return Err(LoadOptionError::Truncated(bytes.len()));
        }
        let attributes = le_u32(&bytes[0..4]);
        let path_len = usize::from(u16::from_le_bytes([bytes[4], bytes[5]]));
        let mut desc = Vec::new();
        let mut pos = 6;
        loop {
            let Some(pair) = bytes.get(pos..pos + 2) else {
                return Err(LoadOptionError::UnterminatedDescription);
            };
            pos += 2;
            match u16::from_le_bytes([pair[0], pair[1]]) {
                0 => break,
                c => desc.push(c),
            }
        }
        let Some(device_path) = bytes.get(pos..pos + path_len) else {
            return Err(LoadOptionError::Truncated(bytes.len()));
        };
        Ok(LoadOption {
            attributes,
            description: String::from_utf16_lossy(&desc),
            device_path: device_path.to_vec(),
            optional_data: bytes[pos + path_len..].to_vec(),
        })
    }

    /// True when `LOAD_OPTION_ACTIVE` is set.
    pub fn is_active(&self) -> bool {
        self.attributes & LOAD_OPTION_ACTIVE != 0
    }

    /// The device path's nodes, up to and including End Entire.
    pub fn nodes(&self) -> Nodes<'_> {
        Nodes {
            bytes: &self.device_path,
            pos: 0,
            done: false,
        }
    }

    /// The first Hard Drive node, if the path has one.
    pub fn hard_drive(&self) -> Option<HardDrive> {
        self.nodes()
            .map_while(Result::ok)
            .find(|n| n.kind == MEDIA_DEVICE_PATH && n.subtype == MEDIA_HARDDRIVE_DP)
            .and_then(|n| HardDrive::from_node_data(n.data))
    }

    /// The first File Path node's path, if the path has one.
    pub fn file_path(&self) -> Option<String> {
        self.nodes()
            .map_while(Result::ok)
            .find(|n| n.kind == MEDIA_DEVICE_PATH && n.subtype == MEDIA_FILEPATH_DP)
            .map(|n| utf16z(n.data))
    }
}

/// A NUL-terminated (or not) UTF-16LE string, lossily.
pub(crate) fn utf16z(data: &[u8]) -> String {
    let units: Vec<u16> = data
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&c| c != 0)
        .collect();
    String::from_utf16_lossy(&units)
}

pub(crate) fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

pub(crate) fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u16s(s: &str) -> Vec<u8> {
        s.encode_utf16()
            .chain([0])
            .flat_map(|c| c.to_le_bytes())
            .collect()
    }

    const GUID: &str = "df674664-9b7a-4a01-9903-65f7a9ba074b";

    fn gpt_hd() -> HardDrive {
        HardDrive {
            partition_number: 1,
            start_lba: 0x800,
            size_lba: 0x10000,
            signature: PartitionSignature::Gpt(uuid::Uuid::parse_str(GUID).unwrap().to_bytes_le()),
        }
    }

    /// Every field of an encoded GPT entry, at the offsets the UEFI spec gives.
    #[test]
    fn gpt_entry_layout_field_by_field() {
        let lo =
            LoadOption::hard_drive_file("ironic1", &gpt_hd(), r"\EFI\BOOT\BOOTX64.EFI").unwrap();
        let b = lo.encode();
        assert_eq!(&b[0..4], &[1, 0, 0, 0], "Attributes = LOAD_OPTION_ACTIVE");
        let file = u16s(r"\EFI\BOOT\BOOTX64.EFI");
        let path_len = 42 + 4 + file.len() + 4;
        assert_eq!(
            u16::from_le_bytes([b[4], b[5]]) as usize,
            path_len,
            "FilePathListLength"
        );
        let desc = u16s("ironic1");
        assert_eq!(
            &b[6..6 + desc.len()],
            &desc[..],
            "Description, UTF-16LE + NUL"
        );
        let hd = &b[6 + desc.len()..];
        assert_eq!(
            &hd[0..4],
            &[4, 1, 42, 0],
            "HD node: type 4, subtype 1, length 42"
        );
        assert_eq!(&hd[4..8], &1u32.to_le_bytes(), "PartitionNumber");
        assert_eq!(&hd[8..16], &0x800u64.to_le_bytes(), "PartitionStart");
        assert_eq!(&hd[16..24], &0x10000u64.to_le_bytes(), "PartitionSize");
        // EFI GUID byte order: the first three fields little-endian, the rest as written.
        assert_eq!(
            &hd[24..40],
            &[
                0x64, 0x46, 0x67, 0xdf, 0x7a, 0x9b, 0x01, 0x4a, 0x99, 0x03, 0x65, 0xf7, 0xa9, 0xba,
                0x07, 0x4b
            ],
            "PartitionSignature"
        );
        assert_eq!(hd[40], 2, "MBRType = GPT");
        assert_eq!(hd[41], 2, "SignatureType = GUID");
        let fnode = &hd[42..];
        let flen = 4 + file.len();
        assert_eq!(&fnode[0..2], &[4, 4], "File node: type 4, subtype 4");
        assert_eq!(u16::from_le_bytes([fnode[2], fnode[3]]) as usize, flen);
        assert_eq!(&fnode[4..flen], &file[..], "PathName, UTF-16LE + NUL");
        assert_eq!(
            &fnode[flen..],
            &[0x7f, 0xff, 4, 0],
            "End Entire, and no optional data"
        );
    }

    #[test]
    fn mbr_entry_layout() {
        let hd = HardDrive {
            partition_number: 2,
            start_lba: 2048,
            size_lba: 4096,
            signature: PartitionSignature::Mbr(0x1a2b_3c4d),
        };
        let b = LoadOption::hard_drive_file("ironic1", &hd, "/EFI/BOOT/BOOTX64.EFI")
            .unwrap()
            .encode();
        let n = &b[6 + u16s("ironic1").len()..];
        assert_eq!(&n[0..4], &[4, 1, 42, 0]);
        assert_eq!(&n[4..8], &2u32.to_le_bytes());
        assert_eq!(&n[24..28], &[0x4d, 0x3c, 0x2b, 0x1a], "signature LE");
        assert_eq!(&n[28..40], &[0u8; 12], "the rest of the signature is zero");
        assert_eq!(
            (n[40], n[41]),
            (1, 1),
            "MBRType = PC-AT, SignatureType = MBR"
        );
        // forward slashes are turned into backslashes, as efibootmgr does
        let lo = LoadOption::decode(&b).unwrap();
        assert_eq!(lo.file_path().as_deref(), Some(r"\EFI\BOOT\BOOTX64.EFI"));
    }

    #[test]
    fn round_trip() {
        let lo =
            LoadOption::hard_drive_file("Ubuntu ☃", &gpt_hd(), r"\EFI\ubuntu\shimx64.efi").unwrap();
        let back = LoadOption::decode(&lo.encode()).unwrap();
        assert_eq!(back, lo);
        assert!(back.is_active());
        assert_eq!(back.hard_drive(), Some(gpt_hd()));
        assert_eq!(
            back.file_path().as_deref(),
            Some(r"\EFI\ubuntu\shimx64.efi")
        );
        let kinds: Vec<(u8, u8)> = back
            .nodes()
            .map(|n| n.unwrap())
            .map(|n| (n.kind, n.subtype))
            .collect();
        assert_eq!(kinds, vec![(4, 1), (4, 4), (0x7f, 0xff)]);
    }

    /// Entries made by firmware: other nodes, optional data, even a broken path.
    #[test]
    fn decode_tolerates_foreign_entries() {
        let mut b = vec![1, 0, 0, 0];
        let path = [
            2, 1, 12, 0, 0xd0, 0x41, 0x03, 0x0a, 0, 0, 0, 0, // PciRoot(0x0)
            1, 1, 6, 0, 0, 2, // Pci(0x2,0x0)
            0x7f, 0xff, 4, 0,
        ];
        b.extend_from_slice(&(path.len() as u16).to_le_bytes());
        b.extend(u16s("UEFI PXEv4"));
        b.extend_from_slice(&path);
        b.extend_from_slice(b"opt");
        let lo = LoadOption::decode(&b).unwrap();
        assert_eq!(lo.description, "UEFI PXEv4");
        assert_eq!(lo.optional_data, b"opt");
        assert_eq!(lo.hard_drive(), None);
        assert_eq!(lo.nodes().count(), 3);
        // a node claiming more bytes than there are: the label is still readable
        let mut broken = b.clone();
        broken[6 + u16s("UEFI PXEv4").len() + 2] = 200;
        let lo = LoadOption::decode(&broken).unwrap();
        assert_eq!(lo.description, "UEFI PXEv4");
        assert!(matches!(
            lo.nodes().next(),
            Some(Err(LoadOptionError::BadNode(0)))
        ));
        // no NUL: refused
        assert_eq!(
            LoadOption::decode(&[1, 0, 0, 0, 0, 0, b'a', 0]),
            Err(LoadOptionError::UnterminatedDescription)
        );
        assert_eq!(
            LoadOption::decode(&[1, 0]),
            Err(LoadOptionError::Truncated(2))
        );
    }
}
