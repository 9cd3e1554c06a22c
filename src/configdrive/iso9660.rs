//! Reading an ISO 9660 image (a config drive) from memory, without mounting it.
//!
//! Only what a config drive needs: the primary volume descriptor's label, and every regular file
//! with its contents. Names come from Rock Ridge (`NM` entries, as `genisoimage -R` writes them),
//! else from the Joliet tree (`genisoimage -J` without `-R`), else from the plain ISO names
//! (`META_DAT.JSO;1` -> `meta_dat.jso`).
//!
//! The input is untrusted: every read is bounds-checked, the tree depth, the number of records,
//! the directory bytes scanned and the file bytes copied are all bounded, so a hostile image can
//! neither panic nor loop nor exhaust memory.

/// ISO 9660 sectors (and volume descriptors) are always 2048 bytes.
const SECTOR: usize = 2048;
/// The volume descriptor set starts at sector 16.
const FIRST_DESCRIPTOR: usize = 16;
/// Volume descriptors looked at before giving up on a terminator.
const MAX_DESCRIPTORS: usize = 64;
/// Deepest directory nesting followed (a config drive needs 3).
const MAX_DEPTH: usize = 16;
/// Directory records parsed in all, over the whole walk.
const MAX_ENTRIES: usize = 100_000;
/// Directory bytes scanned in all (directories visited through loops count each time).
const MAX_DIR_BYTES: u64 = 256 << 20;
/// File bytes copied out in all (extents shared by several files count each time).
const MAX_FILE_BYTES: u64 = 256 << 20;
/// SUSP continuation areas (`CE`) followed per directory record.
const MAX_CONTINUATIONS: usize = 16;
/// SUSP entries read in all.
const MAX_SUSP_ENTRIES: usize = 1_000_000;

/// Directory record flag: the record is a directory.
const FLAG_DIRECTORY: u8 = 0x02;
/// Directory record flag: an associated file (resource fork); not part of the tree.
const FLAG_ASSOCIATED: u8 = 0x04;
/// Directory record flag: the file continues in the next record.
const FLAG_MULTI_EXTENT: u8 = 0x80;

/// What is malformed (or past rivet's bounds) in an ISO 9660 image.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum IsoError {
    /// No primary volume descriptor.
    #[error("not an ISO 9660 image: no primary volume descriptor")]
    NotIso,
    /// A logical block size that is not a power of two in 512..=2048.
    #[error("unsupported logical block size {0}")]
    BlockSize(usize),
    /// The volume descriptor's root directory record cannot be parsed.
    #[error("malformed root directory record")]
    BadRoot,
    /// An extent that lies (partly) outside the image.
    #[error("extent at block {lba} ({len} bytes) lies outside the image")]
    OutsideImage {
        /// Its first logical block.
        lba: u32,
        /// Its length in bytes.
        len: u32,
    },
    /// Directories nested deeper than [`MAX_DEPTH`].
    #[error("directories nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
    /// More than [`MAX_DIR_BYTES`] of directories scanned.
    #[error("too much directory data (a directory loop?)")]
    TooMuchDirectoryData,
    /// More than [`MAX_ENTRIES`] directory records.
    #[error("more than {MAX_ENTRIES} directory records")]
    TooManyRecords,
    /// A record longer than what is left of its directory.
    #[error("directory record runs past its directory")]
    RecordOverrun,
    /// A record too short for its fields.
    #[error("malformed directory record")]
    BadRecord,
    /// A file in several extents.
    #[error("multi-extent files are not supported")]
    MultiExtent,
    /// A name that is empty, `.`, `..` or has a `/` or NUL.
    #[error("unusable file name {0:?}")]
    BadName(String),
    /// A relocated directory whose `.` record cannot be read.
    #[error("malformed relocated directory")]
    BadRelocated,
    /// More than [`MAX_FILE_BYTES`] of files copied.
    #[error("too much file data")]
    TooMuchFileData,
    /// More than [`MAX_SUSP_ENTRIES`] SUSP entries.
    #[error("more than {MAX_SUSP_ENTRIES} SUSP entries")]
    TooManySuspEntries,
}

/// `len` bytes of `b` from `start`, or `None` when any of it lies outside.
fn slice(b: &[u8], start: usize, len: usize) -> Option<&[u8]> {
    b.get(start..start.checked_add(len)?)
}

/// Little-endian u16 at `off`.
fn le16(b: &[u8], off: usize) -> Option<u16> {
    let s = slice(b, off, 2)?;
    Some(u16::from_le_bytes([s[0], s[1]]))
}

/// Little-endian u32 at `off` (the little-endian half of ISO 9660's both-endian fields).
fn le32(b: &[u8], off: usize) -> Option<u32> {
    let s = slice(b, off, 4)?;
    Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

/// The volume descriptors, from sector 16 up to (not including) the set terminator.
fn descriptors(img: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    for i in 0..MAX_DESCRIPTORS {
        let Some(d) = slice(img, (FIRST_DESCRIPTOR + i) * SECTOR, SECTOR) else {
            break;
        };
        if !d[1..].starts_with(b"CD001") || d[0] == 255 {
            break;
        }
        out.push(d);
    }
    out
}

/// The primary volume descriptor (type 1, version 1).
fn primary(img: &[u8]) -> Option<&[u8]> {
    descriptors(img)
        .into_iter()
        .find(|d| d[0] == 1 && d[6] == 1)
}

/// The Joliet supplementary volume descriptor (type 2 with a UCS-2 escape sequence).
fn joliet(img: &[u8]) -> Option<&[u8]> {
    descriptors(img).into_iter().find(|d| {
        d[0] == 2 && d[88] == b'%' && d[89] == b'/' && matches!(d[90], b'@' | b'C' | b'E')
    })
}

/// The primary volume descriptor's volume identifier (bytes 40..72), trimmed of spaces: a config
/// drive's is `config-2`. `None` when the image has no primary volume descriptor.
pub(crate) fn volume_label(img: &[u8]) -> Option<String> {
    let raw = slice(primary(img)?, 40, 32)?;
    let label = String::from_utf8_lossy(raw);
    Some(label.trim_matches([' ', '\0']).to_string())
}

/// Every regular file of the image, as (`path/relative/to/root`, contents), in directory order.
///
/// Directories themselves (and so empty ones) are not listed. Errors say what is malformed.
pub(crate) fn list_files(img: &[u8]) -> Result<Vec<(String, Vec<u8>)>, IsoError> {
    let pvd = primary(img).ok_or(IsoError::NotIso)?;
    let plain = walk(img, pvd, Names::RockRidge)?;
    if plain.rock_ridge_seen {
        return Ok(plain.out);
    }
    // No Rock Ridge: the Joliet tree, when there is a readable one, has the real names.
    if let Some(svd) = joliet(img) {
        if let Ok(w) = walk(img, svd, Names::Joliet) {
            return Ok(w.out);
        }
    }
    Ok(plain.out)
}

/// Where file names come from during a walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Names {
    /// The primary tree: Rock Ridge `NM` names, else the ISO names lower-cased.
    RockRidge,
    /// A Joliet tree: UCS-2 (big-endian) names.
    Joliet,
}

/// One directory record.
struct Record<'a> {
    /// First logical block of the extent.
    extent: u32,
    /// Data length in bytes.
    len: u32,
    /// File flags.
    flags: u8,
    /// File identifier, as recorded.
    name: &'a [u8],
    /// System use area (SUSP / Rock Ridge entries), possibly empty.
    system_use: &'a [u8],
}

/// Parses one directory record; `r` is exactly the record (`r[0]` bytes).
fn parse_record(r: &[u8]) -> Option<Record<'_>> {
    let name_len = usize::from(*r.get(32)?);
    let name = slice(r, 33, name_len)?;
    // A padding byte follows an identifier of even length.
    let su_start = 33 + name_len + usize::from(name_len.is_multiple_of(2));
    Some(Record {
        extent: le32(r, 2)?,
        len: le32(r, 10)?,
        flags: *r.get(25)?,
        name,
        system_use: r.get(su_start..).unwrap_or(&[]),
    })
}

/// What the SUSP / Rock Ridge entries of one record say.
#[derive(Debug, Default)]
struct RockRidge {
    /// The `NM` name (all `NM` entries concatenated), if any.
    name: Option<String>,
    /// An `NM` entry flagged CURRENT or PARENT (`.` / `..`).
    special: bool,
    /// `RE`: a directory relocated here; its real place is the `CL` record that points at it.
    relocated: bool,
    /// `CL`: a placeholder for a directory relocated to this block.
    child: Option<u32>,
}

/// The state of one walk over a directory tree.
struct Walker<'a> {
    img: &'a [u8],
    /// Logical block size (PVD bytes 128..130).
    block: usize,
    names: Names,
    /// SUSP `SP` LEN_SKP: bytes to skip at the start of each system use area.
    su_skip: usize,
    /// Whether any Rock Ridge / SUSP entry was found.
    rock_ridge_seen: bool,
    entries: usize,
    susp_entries: usize,
    dir_bytes: u64,
    file_bytes: u64,
    out: Vec<(String, Vec<u8>)>,
}

/// Walks the tree whose root directory record is in the volume descriptor `desc`.
fn walk<'a>(img: &'a [u8], desc: &'a [u8], names: Names) -> Result<Walker<'a>, IsoError> {
    let block = usize::from(le16(desc, 128).unwrap_or(0));
    if !block.is_power_of_two() || !(512..=SECTOR).contains(&block) {
        return Err(IsoError::BlockSize(block));
    }
    let root = slice(desc, 156, 34)
        .and_then(parse_record)
        .ok_or(IsoError::BadRoot)?;
    let mut w = Walker {
        img,
        block,
        names,
        su_skip: 0,
        rock_ridge_seen: false,
        entries: 0,
        susp_entries: 0,
        dir_bytes: 0,
        file_bytes: 0,
        out: Vec::new(),
    };
    if names == Names::RockRidge {
        // SUSP: the root's "." record starts its system use area with an `SP` entry, which
        // also says how many bytes to skip in every other system use area.
        let dir = w.extent(root.extent, root.len)?;
        let dot = dir
            .first()
            .and_then(|&len| slice(dir, 0, usize::from(len)))
            .and_then(parse_record);
        if let Some(dot) = dot {
            let su = dot.system_use;
            if su.len() >= 7 && su.starts_with(b"SP") && su[4] == 0xBE && su[5] == 0xEF {
                w.su_skip = usize::from(su[6]);
                w.rock_ridge_seen = true;
            }
        }
    }
    w.walk_dir(root.extent, root.len, "", 0)?;
    Ok(w)
}

impl<'a> Walker<'a> {
    /// The bytes of the extent starting at block `lba`, `len` bytes long.
    fn extent(&self, lba: u32, len: u32) -> Result<&'a [u8], IsoError> {
        let img: &'a [u8] = self.img;
        (lba as usize)
            .checked_mul(self.block)
            .and_then(|start| slice(img, start, len as usize))
            .ok_or(IsoError::OutsideImage { lba, len })
    }

    /// Lists the directory whose extent is at `lba`, recursively; `prefix` is its path with a
    /// trailing `/` (empty for the root).
    fn walk_dir(&mut self, lba: u32, len: u32, prefix: &str, depth: usize) -> Result<(), IsoError> {
        if depth > MAX_DEPTH {
            return Err(IsoError::TooDeep);
        }
        let data = self.extent(lba, len)?;
        self.dir_bytes += u64::from(len);
        if self.dir_bytes > MAX_DIR_BYTES {
            return Err(IsoError::TooMuchDirectoryData);
        }
        // Absolute offset of the extent (checked by `extent`).
        let base = lba as usize * self.block;
        let mut pos = 0usize;
        while pos < data.len() {
            let rec_len = usize::from(data[pos]);
            if rec_len == 0 {
                // Records never cross a sector boundary: the rest of this sector is padding.
                let abs = base + pos;
                pos = (abs / SECTOR + 1) * SECTOR - base;
                continue;
            }
            self.entries += 1;
            if self.entries > MAX_ENTRIES {
                return Err(IsoError::TooManyRecords);
            }
            let raw = slice(data, pos, rec_len).ok_or(IsoError::RecordOverrun)?;
            pos += rec_len;
            let rec = parse_record(raw).ok_or(IsoError::BadRecord)?;
            if matches!(rec.name, [0] | [1]) || rec.flags & FLAG_ASSOCIATED != 0 {
                continue; // "." and "..", resource forks
            }
            if rec.flags & FLAG_MULTI_EXTENT != 0 {
                return Err(IsoError::MultiExtent);
            }
            let rr = match self.names {
                Names::RockRidge => self.rock_ridge(rec.system_use)?,
                Names::Joliet => RockRidge::default(),
            };
            if rr.special || rr.relocated {
                continue;
            }
            let is_dir = rec.flags & FLAG_DIRECTORY != 0 || rr.child.is_some();
            let name = match rr.name {
                Some(name) => name,
                None => self.plain_name(rec.name, is_dir),
            };
            if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
                return Err(IsoError::BadName(name));
            }
            let path = format!("{prefix}{name}");
            if is_dir {
                let (child, child_len) = match rr.child {
                    // The relocated directory's own "." record gives its length.
                    Some(child) => {
                        let dot = self.extent(child, 34)?;
                        let child_len = le32(dot, 10).ok_or(IsoError::BadRelocated)?;
                        (child, child_len)
                    }
                    None => (rec.extent, rec.len),
                };
                self.walk_dir(child, child_len, &format!("{path}/"), depth + 1)?;
            } else {
                self.file_bytes += u64::from(rec.len);
                if self.file_bytes > MAX_FILE_BYTES {
                    return Err(IsoError::TooMuchFileData);
                }
                let contents = self.extent(rec.extent, rec.len)?.to_vec();
                self.out.push((path, contents));
            }
        }
        Ok(())
    }

    /// A name from the record's identifier: Joliet UCS-2, or the ISO name lower-cased; the
    /// `;1` version and a file's trailing `.` (a name without extension) removed.
    fn plain_name(&self, raw: &[u8], is_dir: bool) -> String {
        let mut name = match self.names {
            Names::Joliet => {
                let units: Vec<u16> = raw
                    .chunks_exact(2)
                    .map(|c| u16::from_be_bytes([c[0], c[1]]))
                    .collect();
                String::from_utf16_lossy(&units)
            }
            Names::RockRidge => String::from_utf8_lossy(raw).to_lowercase(),
        };
        if let Some(i) = name.find(';') {
            name.truncate(i);
        }
        if !is_dir && name.ends_with('.') {
            name.pop();
        }
        name
    }

    /// Reads the SUSP entries of a system use area, following `CE` continuation areas.
    fn rock_ridge(&mut self, system_use: &'a [u8]) -> Result<RockRidge, IsoError> {
        let mut out = RockRidge::default();
        let mut name: Option<Vec<u8>> = None;
        let mut area: &'a [u8] = system_use.get(self.su_skip..).unwrap_or(&[]);
        let mut hops = 0;
        loop {
            let mut next: Option<&'a [u8]> = None;
            let mut pos = 0usize;
            while let Some(head) = slice(area, pos, 4) {
                let len = usize::from(head[2]);
                if len < 4 {
                    break;
                }
                let Some(entry) = slice(area, pos, len) else {
                    break;
                };
                pos += len;
                self.susp_entries += 1;
                if self.susp_entries > MAX_SUSP_ENTRIES {
                    return Err(IsoError::TooManySuspEntries);
                }
                match (entry[0], entry[1]) {
                    (b'S', b'T') => break,
                    (b'C', b'E') => next = self.continuation(entry),
                    (b'N', b'M') => {
                        self.rock_ridge_seen = true;
                        let flags = entry.get(4).copied().unwrap_or(0);
                        // CURRENT (2) or PARENT (4): "." or "..".
                        if flags & 0x06 != 0 {
                            out.special = true;
                        }
                        name.get_or_insert_with(Vec::new)
                            .extend_from_slice(entry.get(5..).unwrap_or(&[]));
                    }
                    (b'R', b'E') => out.relocated = true,
                    (b'C', b'L') => out.child = le32(entry, 4),
                    _ => {}
                }
            }
            match next {
                Some(more) if hops < MAX_CONTINUATIONS => {
                    area = more;
                    hops += 1;
                }
                _ => break,
            }
        }
        out.name = name.map(|n| String::from_utf8_lossy(&n).into_owned());
        Ok(out)
    }

    /// The continuation area a `CE` entry points at (block, offset, length).
    fn continuation(&self, entry: &[u8]) -> Option<&'a [u8]> {
        let img: &'a [u8] = self.img;
        let block = le32(entry, 4)? as usize;
        let offset = le32(entry, 12)? as usize;
        let len = le32(entry, 20)? as usize;
        let start = block.checked_mul(self.block)?.checked_add(offset)?;
        slice(img, start, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `genisoimage -V config-2 -R -J` of openstack/latest/{meta_data.json, network_data.json,
    /// user_data}, openstack/content/0000 and ec2/latest/meta-data.json.
    const ISO: &[u8] = include_bytes!("../../tests/data/configdrive.iso");

    const META_DATA: &str = r#"{"uuid": "83679162-1378-4288-a2d4-70e13ec132aa", "hostname": "rivet-test", "name": "rivet-test", "launch_index": 0, "availability_zone": "nova", "public_keys": {"mykey": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHZzZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZ rivet@test"}, "files": [{"path": "/etc/motd", "content_path": "/content/0000"}], "meta": {"role": "webserver"}}"#;

    fn file<'a>(files: &'a [(String, Vec<u8>)], path: &str) -> Option<&'a [u8]> {
        files
            .iter()
            .find(|(p, _)| p == path)
            .map(|(_, d)| d.as_slice())
    }

    #[test]
    fn label_is_config_2() {
        assert_eq!(volume_label(ISO).as_deref(), Some("config-2"));
    }

    #[test]
    fn rock_ridge_names_and_contents() {
        let files = list_files(ISO).unwrap();
        let mut paths: Vec<&str> = files.iter().map(|(p, _)| p.as_str()).collect();
        paths.sort_unstable();
        assert_eq!(
            paths,
            [
                "ec2/latest/meta-data.json",
                "openstack/content/0000",
                "openstack/latest/meta_data.json",
                "openstack/latest/network_data.json",
                "openstack/latest/user_data",
            ]
        );
        assert_eq!(
            file(&files, "openstack/latest/meta_data.json"),
            Some(META_DATA.as_bytes())
        );
        assert_eq!(
            file(&files, "openstack/latest/user_data"),
            Some(&b"#cloud-config\nhostname: rivet-test\n"[..])
        );
        assert_eq!(
            file(&files, "openstack/content/0000"),
            Some(&b"Welcome to rivet\n"[..])
        );
    }

    #[test]
    fn joliet_tree_gives_the_same_names() {
        let svd = joliet(ISO).expect("the fixture has a Joliet tree");
        let w = walk(ISO, svd, Names::Joliet).unwrap();
        assert!(!w.rock_ridge_seen);
        assert_eq!(
            file(&w.out, "openstack/latest/meta_data.json"),
            Some(META_DATA.as_bytes())
        );
    }

    #[test]
    fn plain_iso_names_without_rock_ridge() {
        // Blank every SUSP entry signature (two letters, a length, version 1) past the volume
        // descriptors, so the primary tree reads as plain ISO 9660.
        let mut img = ISO.to_vec();
        for sig in [b"SP", b"RR", b"NM", b"PX", b"TF", b"ER", b"CE", b"SL"] {
            let hits: Vec<usize> = img
                .windows(4)
                .enumerate()
                .skip(18 * SECTOR)
                .filter(|(_, w)| w[..2] == *sig && w[2] >= 4 && w[3] == 1)
                .map(|(i, _)| i)
                .collect();
            for i in hits {
                img[i] = b'X';
            }
        }
        let pvd = primary(&img).unwrap();
        let w = walk(&img, pvd, Names::RockRidge).unwrap();
        assert!(!w.rock_ridge_seen);
        // 8.3 ISO level 1 names, lower-cased, version and trailing dot stripped.
        assert!(w.out.iter().any(|(p, _)| p == "openstac/latest/user_dat"));
        assert!(w.out.iter().any(|(p, _)| p == "openstac/content/0000"));
    }

    #[test]
    fn garbage_never_panics() {
        assert_eq!(volume_label(&[]), None);
        assert!(list_files(&[]).is_err());
        assert!(list_files(&[0u8; 40000]).is_err());
        // Truncations and corruptions of the fixture: errors or partial lists, never panics.
        for cut in [32768, 32800, 34816, 40000, 60000, ISO.len() - 1] {
            let _ = list_files(&ISO[..cut]);
            let _ = volume_label(&ISO[..cut]);
        }
        let mut state = 0x1234_5678u32;
        for _ in 0..200 {
            let mut img = ISO[..64 * 1024].to_vec();
            for _ in 0..64 {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                let at = 16 * SECTOR + (state as usize % (img.len() - 16 * SECTOR));
                img[at] = (state >> 24) as u8;
            }
            let _ = list_files(&img);
        }
    }

    #[test]
    fn directory_loops_are_bounded() {
        // Point every subdirectory record of the root at the root itself.
        let mut img = ISO.to_vec();
        let pvd = primary(&img).unwrap().to_vec();
        let root_lba = le32(&pvd, 156 + 2).unwrap() as usize;
        let root_len = le32(&pvd, 156 + 10).unwrap() as usize;
        let start = root_lba * SECTOR;
        let mut pos = 0;
        while pos < root_len {
            let len = usize::from(img[start + pos]);
            if len == 0 {
                break;
            }
            let rec = start + pos;
            let dot_or_dotdot = img[rec + 32] == 1 && img[rec + 33] <= 1;
            if img[rec + 25] & FLAG_DIRECTORY != 0 && !dot_or_dotdot {
                img[rec + 2..rec + 6].copy_from_slice(&(root_lba as u32).to_le_bytes());
                img[rec + 10..rec + 14].copy_from_slice(&(root_len as u32).to_le_bytes());
            }
            pos += len;
        }
        let err = list_files(&img).unwrap_err().to_string();
        assert!(
            ["deeper", "records", "directory data", "SUSP"]
                .iter()
                .any(|w| err.contains(*w)),
            "{err}"
        );
    }
}
