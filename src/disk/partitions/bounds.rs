//! Bounds on partition tables, checked on the raw bytes before gptman or mbrman sees them.
//!
//! Both crates trust what they read. A GPT header with a valid CRC that claims 2^32 entries
//! makes gptman reserve memory for all of them (the allocation fails and the process aborts,
//! with no error line); an entry size other than 128 trips one of its assertions; an MBR whose
//! used entries all start at LBA 0, or an EBR chain whose LBAs overflow 32 bits, panics mbrman.
//! A table comes from an image, so from whoever made the image: every read (the one table
//! reader, `read_table_with`, and the editors) goes through [`find_gpt`], [`read_gpt`] and
//! [`read_mbr`] here, which check what the crate would act on and only then call it.
//!
//! What is checked, per header the crate would accept (right signature, revision and CRC;
//! a damaged copy is skipped by the crate and so here):
//! - the header size (92 bytes up to one sector, as UEFI requires);
//! - the entry size (128, the only one the crate reads correctly, and the kernel's rule);
//! - the entry count (1 to [`MAX_GPT_ENTRIES`], a 2 MiB array);
//! - the array's location: after the protective MBR and the primary header, inside the disk;
//! - the used entries, when the array's CRC holds: `1 <= first <= last < disk sectors`.
//!
//! For an MBR: used entries start after sector 0, and the chain of extended boot records is at
//! most [`MAX_LOGICAL`] long, inside the disk, with sums that fit 32 bits.

use std::io::{self, Read, Seek, SeekFrom};

/// The most GPT entries accepted (sgdisk makes 128; 16384 entries is a 2 MiB array).
pub const MAX_GPT_ENTRIES: u32 = 16384;
/// The only GPT entry size accepted.
pub const GPT_ENTRY_SIZE: u32 = 128;
/// The longest chain of logical partitions accepted (the kernel stops at 256 partitions).
pub const MAX_LOGICAL: usize = 128;

/// Why a partition table could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    /// Reading the disk failed.
    #[error("cannot read the partition table: {0}")]
    Io(#[from] io::Error),
    /// The table is out of the bounds above: refused before any library read it.
    #[error("the partition table is out of bounds: {0}")]
    OutOfBounds(String),
}

impl From<TableError> for io::Error {
    fn from(e: TableError) -> io::Error {
        match e {
            TableError::Io(e) => e,
            other => io::Error::new(io::ErrorKind::InvalidData, other),
        }
    }
}

fn oob(msg: String) -> TableError {
    TableError::OutOfBounds(msg)
}

fn le32(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(x)
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

/// The CRC-32 GPT uses (IEEE, as zlib's).
fn crc32(b: &[u8]) -> u32 {
    crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC).checksum(b)
}

fn read_at<R: Read + Seek>(r: &mut R, at: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut b = vec![0u8; len];
    r.seek(SeekFrom::Start(at))?;
    r.read_exact(&mut b)?;
    Ok(b)
}

/// The length of what `r` reads (a disk or an image).
fn length<R: Seek>(r: &mut R) -> io::Result<u64> {
    r.seek(SeekFrom::End(0))
}

/// What one header location held.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    /// No `EFI PART` signature there.
    Nothing,
    /// A header the library would refuse, or one within bounds.
    Fine,
}

/// Checks the GPT header at `lba` (sectors of `ss` bytes) of a disk of `len` bytes.
fn check_header<R: Read + Seek>(
    r: &mut R,
    len: u64,
    ss: u64,
    lba: u64,
) -> Result<Seen, TableError> {
    let at = lba * ss;
    if at.checked_add(ss).is_none_or(|end| end > len) {
        return Ok(Seen::Nothing);
    }
    let h = read_at(r, at, ss as usize)?;
    if &h[..8] != b"EFI PART" {
        return Ok(Seen::Nothing);
    }
    let here = format!("the GPT header at LBA {lba} ({ss}-byte sectors)");
    if h[8..12] != [0, 0, 1, 0] {
        return Ok(Seen::Fine); // refused by the library for its revision
    }
    let size = le32(&h, 12);
    if !(92..=ss).contains(&u64::from(size)) {
        return Err(oob(format!(
            "{here} claims a header size of {size} bytes (92 to {ss})"
        )));
    }
    let mut copy = h[..size as usize].to_vec();
    copy[16..20].fill(0);
    if crc32(&copy) != le32(&h, 16) {
        return Ok(Seen::Fine); // a damaged copy: skipped by the library (and the kernel)
    }
    let (entries_lba, count, entry_size) = (le64(&h, 72), le32(&h, 80), le32(&h, 84));
    if entry_size != GPT_ENTRY_SIZE {
        return Err(oob(format!(
            "{here} claims entries of {entry_size} bytes (only {GPT_ENTRY_SIZE} is read)"
        )));
    }
    if count == 0 || count > MAX_GPT_ENTRIES {
        return Err(oob(format!(
            "{here} claims {count} partition entries (1 to {MAX_GPT_ENTRIES})"
        )));
    }
    let array = u64::from(count) * u64::from(entry_size);
    let start = entries_lba.checked_mul(ss);
    let end = start.and_then(|s| s.checked_add(array));
    let (Some(start), Some(end)) = (start, end) else {
        return Err(oob(format!(
            "{here} puts its entries at LBA {entries_lba}, beyond any disk"
        )));
    };
    if entries_lba < 2 || end > len {
        return Err(oob(format!(
            "{here} puts {count} entries at bytes {start}..{end}, outside the {len}-byte disk \
             (or over the protective MBR and primary header)"
        )));
    }
    let entries = read_at(r, start, array as usize)?;
    if crc32(&entries) != le32(&h, 88) {
        return Ok(Seen::Fine); // the library skips this copy
    }
    check_entries(&entries, len / ss, &here)?;
    Ok(Seen::Fine)
}

/// Used entries must lie inside the disk, first LBA after the protective MBR.
fn check_entries(entries: &[u8], sectors: u64, here: &str) -> Result<(), TableError> {
    for (i, e) in entries.chunks_exact(GPT_ENTRY_SIZE as usize).enumerate() {
        if e[..16].iter().all(|&b| b == 0) {
            continue; // unused
        }
        let (first, last) = (le64(e, 32), le64(e, 40));
        if first == 0 || first > last || last >= sectors {
            return Err(oob(format!(
                "{here}: partition {} spans LBA {first}..={last}, outside the disk's {sectors} sectors",
                i + 1
            )));
        }
    }
    Ok(())
}

/// Checks both GPT headers the library reads with sector size `ss` (primary at LBA 1, backup
/// at the last LBA). `Ok(true)`: neither location holds a GPT signature.
fn check_gpt_at<R: Read + Seek>(r: &mut R, len: u64, ss: u64) -> Result<bool, TableError> {
    let primary = check_header(r, len, ss, 1)?;
    let backup = match (len / ss).checked_sub(1) {
        Some(last) if last > 1 => check_header(r, len, ss, last)?,
        _ => Seen::Nothing,
    };
    Ok(primary == Seen::Nothing && backup == Seen::Nothing)
}

/// Checks what `gptman::GPT::find_from` would read: 512-byte sectors, then 4096-byte ones
/// when neither 512-byte location holds a signature (the library's own order).
pub fn check_gpt_find<R: Read + Seek>(r: &mut R) -> Result<(), TableError> {
    let len = length(r)?;
    if check_gpt_at(r, len, 512)? {
        check_gpt_at(r, len, 4096)?;
    }
    Ok(())
}

/// Checks what `gptman::GPT::read_from(r, ss)` would read.
pub fn check_gpt_read<R: Read + Seek>(r: &mut R, ss: u64) -> Result<(), TableError> {
    let len = length(r)?;
    check_gpt_at(r, len, ss).map(drop)
}

/// The sector a boot record entry describes: (boot flag, type, first LBA, sectors).
fn mbr_entry(sector: &[u8], i: usize) -> (u8, u8, u32, u32) {
    let e = &sector[446 + 16 * i..462 + 16 * i];
    (e[0], e[4], le32(e, 8), le32(e, 12))
}

/// Whether mbrman takes a boot record: the signature, and boot flags 0x00 or 0x80 in the
/// entries it checks.
fn mbr_accepted(sector: &[u8], entries: usize) -> bool {
    sector[510..512] == [0x55, 0xAA]
        && (0..entries).all(|i| matches!(mbr_entry(sector, i).0, 0x00 | 0x80))
}

/// Checks what `mbrman::MBR::read_from(r, ss)` would read.
pub fn check_mbr<R: Read + Seek>(r: &mut R, ss: u64) -> Result<(), TableError> {
    let len = length(r)?;
    if len < 512 {
        return Ok(());
    }
    let s0 = read_at(r, 0, 512)?;
    if !mbr_accepted(&s0, 4) {
        return Ok(()); // mbrman refuses it
    }
    for i in 0..4 {
        let (_, kind, first, _) = mbr_entry(&s0, i);
        if kind != 0 && first == 0 {
            return Err(oob(format!(
                "MBR partition {} starts at sector 0, over the boot record",
                i + 1
            )));
        }
    }
    let extended =
        (0..4).find(|&i| matches!(mbr_entry(&s0, i).1, 0x05 | 0x0f | 0x85 | 0xc5 | 0xd5));
    match extended {
        Some(i) => check_ebr_chain(r, len, ss, mbr_entry(&s0, i).2),
        None => Ok(()),
    }
}

/// Walks the extended boot records as mbrman does, within bounds.
fn check_ebr_chain<R: Read + Seek>(
    r: &mut R,
    len: u64,
    ss: u64,
    ext_start: u32,
) -> Result<(), TableError> {
    let mut rel: u32 = 0;
    for n in 0.. {
        let at = (u64::from(ext_start) + u64::from(rel)) * ss;
        if at.checked_add(512).is_none_or(|end| end > len) {
            return Ok(()); // mbrman fails to read it: no table
        }
        let ebr = read_at(r, at, 512)?;
        if !mbr_accepted(&ebr, 2) {
            return Ok(()); // the end of the chain, or a table mbrman refuses
        }
        if n >= MAX_LOGICAL {
            return Err(oob(format!(
                "the extended partition chains more than {MAX_LOGICAL} logical partitions"
            )));
        }
        let (_, _, first, _) = mbr_entry(&ebr, 0);
        let (_, _, next, _) = mbr_entry(&ebr, 1);
        let absolute = ext_start.checked_add(rel);
        if absolute.and_then(|a| a.checked_add(first)).is_none() {
            return Err(oob(format!(
                "logical partition {} lies beyond 2^32 sectors",
                n + 5
            )));
        }
        if next == 0 || rel >= next {
            return Ok(()); // the last record, or one mbrman calls inconsistent
        }
        rel = next;
    }
    Ok(())
}

/// `gptman::GPT::find_from` behind the bounds. `Ok(None)`: no GPT the library accepts.
pub fn find_gpt<R: Read + Seek>(r: &mut R) -> Result<Option<gptman::GPT>, TableError> {
    check_gpt_find(r)?;
    Ok(gptman::GPT::find_from(r).ok())
}

/// `gptman::GPT::read_from` behind the bounds. `Ok(None)`: no GPT the library accepts.
pub fn read_gpt<R: Read + Seek>(r: &mut R, ss: u64) -> Result<Option<gptman::GPT>, TableError> {
    check_gpt_read(r, ss)?;
    Ok(gptman::GPT::read_from(r, ss).ok())
}

/// `mbrman::MBR::read_from` behind the bounds. `Ok(None)`: no MBR the library accepts.
pub fn read_mbr<R: Read + Seek>(r: &mut R, ss: u64) -> Result<Option<mbrman::MBR>, TableError> {
    check_mbr(r, ss)?;
    let Ok(ss32) = u32::try_from(ss) else {
        return Ok(None);
    };
    Ok(mbrman::MBR::read_from(r, ss32).ok())
}

/// Whether a GPT's used partitions lie inside its usable range without overlapping, which
/// gptman's free-space search assumes (it underflows otherwise).
pub fn check_layout(gpt: &gptman::GPT) -> Result<(), TableError> {
    let h = &gpt.header;
    if h.first_usable_lba == 0 || h.last_usable_lba == u64::MAX {
        return Err(oob(format!(
            "the GPT's usable range {}..={} is impossible",
            h.first_usable_lba, h.last_usable_lba
        )));
    }
    let mut used: Vec<(u64, u64)> = gpt
        .iter()
        .filter(|(_, p)| p.is_used())
        .map(|(_, p)| (p.starting_lba, p.ending_lba))
        .collect();
    used.sort_unstable();
    let mut floor = h.first_usable_lba;
    for (first, last) in used {
        if first < floor || first > last || last > h.last_usable_lba {
            return Err(oob(format!(
                "a partition at LBA {first}..={last} overlaps another or lies outside the \
                 usable range {}..={}",
                h.first_usable_lba, h.last_usable_lba
            )));
        }
        floor = last + 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
