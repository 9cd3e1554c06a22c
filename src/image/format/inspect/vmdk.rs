//! VMDK rules of the inspector (sparse extent header, embedded descriptor, footer).

use super::*;

// ---- vmdk (little-endian sparse extent header; VMware "Virtual Disk Format 1.1") ----

pub(super) const VMDK_MAGIC: &[u8] = b"KDMV";
pub(super) const VMDK_SPARSE_HEADER_LEN: usize = 64;
/// qemu and oslo only accept an embedded descriptor at sector 1 ...
pub(super) const VMDK_DESC_SECTOR: u64 = 1;
pub(super) const VMDK_DESC_OFFSET: usize = 512;
/// ... of at most 1 MiB − 1.
pub(super) const VMDK_DESC_MAX: usize = (1 << 20) - 1;
/// `gdOffset` meaning "the grain directory is given by the footer at the end of the file".
pub(super) const VMDK_GD_AT_END: u64 = u64::MAX;
pub(super) const VMDK_MARKER_FOOTER: u32 = 3;
/// Longest createType oslo reads; anything longer is "format not found".
pub(super) const VMDK_MAX_TYPE_LEN: usize = 64;

pub(super) fn probe_vmdk(h: &[u8]) -> Option<Candidate> {
    if h.starts_with(VMDK_MAGIC) {
        let virtual_size = le_u64(h, 12).and_then(|sectors| sectors.checked_mul(512));
        return Candidate::new(
            Format::Vmdk,
            virtual_size,
            or_truncated(vmdk_sparse_rules(h)),
        );
    }
    // oslo's test for a text descriptor file: the first sector is all printable ASCII or
    // whitespace, and the text names a createType.
    let first = &h[..h.len().min(512)];
    if first.len() < 4 || !first.iter().all(|&b| is_text_byte(b)) {
        return None;
    }
    let desc = until_nul(&h[..h.len().min(VMDK_DESC_MAX)]);
    find_ignore_case(desc, b"createtype=\"")?;
    // A descriptor file holds no data: every extent is another file on the agent.
    Candidate::new(Format::Vmdk, None, Verdict::Unsafe)
}

pub(super) fn vmdk_sparse_rules(h: &[u8]) -> Option<Verdict> {
    use Verdict::{Safe, Unsafe};
    if h.len() < VMDK_SPARSE_HEADER_LEN {
        return None;
    }
    let version = le_u32(h, 4)?;
    let desc_sector = le_u64(h, 28)?;
    let desc_sectors = le_u64(h, 36)?;
    let gd_offset = le_u64(h, 56)?;
    if !(1..=3).contains(&version) || desc_sector != VMDK_DESC_SECTOR {
        return Some(Unsafe);
    }
    let desc_len = usize::try_from(desc_sectors.saturating_mul(512))
        .unwrap_or(usize::MAX)
        .min(VMDK_DESC_MAX);
    let region = h.get(VMDK_DESC_OFFSET..)?;
    let region = &region[..region.len().min(desc_len)];
    // The embedded descriptor is NUL-padded; oslo cuts it at the first NUL as well.
    let desc = match region.iter().position(|&b| b == 0) {
        Some(nul) => &region[..nul],
        None if region.len() == desc_len => region,
        None => return None,
    };
    if !vmdk_descriptor_safe(desc) {
        return Some(Unsafe);
    }
    // The footer lives at the end of the image: checkable here only when the head is the
    // whole image, otherwise by check_tail.
    if gd_offset == VMDK_GD_AT_END && h.len() < INSPECT_LEN {
        return Some(vmdk_footer_verdict(h, h));
    }
    Some(Safe)
}

/// oslo's descriptor rules (case-insensitive): createType monolithicSparse or streamOptimized;
/// every line blank, a comment, a `ddb` entry, a `key=value` header field or an extent; at
/// least one extent; no `/` in an extent line. rivet adds: extents are SPARSE or ZERO.
pub(super) fn vmdk_descriptor_safe(desc: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(desc) else {
        return false;
    };
    if !text.is_ascii() {
        return false;
    }
    let text = text.to_ascii_lowercase();
    if !matches!(
        vmdk_create_type(&text),
        Some("monolithicsparse" | "streamoptimized")
    ) {
        return false;
    }
    let mut extents = 0usize;
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with("ddb") {
            continue;
        }
        if let Some((key, _)) = line.split_once('=') {
            if !key.contains(' ') {
                continue;
            }
        }
        let mut words = line.split_whitespace();
        if !matches!(words.next(), Some("rw" | "rdonly" | "noaccess")) {
            return false;
        }
        // access, sectors, type, then (for file-backed types) "file name" and offset
        if line.contains('/') || !matches!(words.nth(1), Some("sparse" | "zero")) {
            return false;
        }
        extents += 1;
    }
    extents > 0
}

pub(super) fn vmdk_create_type(lower: &str) -> Option<&str> {
    const KEY: &str = "createtype=\"";
    let start = lower.find(KEY)? + KEY.len();
    let rest = &lower[start..];
    let end = rest.find('"')?;
    (end < VMDK_MAX_TYPE_LEN).then(|| &rest[..end])
}

/// The last three sectors of a footer-carrying VMDK: a footer marker, a copy of the header that
/// must name the same descriptor and a real grain directory, and the end-of-stream marker.
pub(super) fn vmdk_footer_verdict(head: &[u8], tail: &[u8]) -> Verdict {
    let Some(start) = tail.len().checked_sub(TAIL_LEN) else {
        return Verdict::Truncated;
    };
    let (marker, rest) = tail[start..].split_at(512);
    let (footer, eos) = rest.split_at(512);
    let same = |a: usize, b: usize| head.get(a..b).is_some() && head.get(a..b) == footer.get(a..b);
    // magic + version, then descriptor sector + length
    if !same(0, 8) || !same(28, 44) || le_u64(footer, 56) == Some(VMDK_GD_AT_END) {
        return Verdict::Unsafe;
    }
    let marker_ok = le_u32(marker, 8) == Some(0)
        && le_u32(marker, 12) == Some(VMDK_MARKER_FOOTER)
        && marker[16..].iter().all(|&b| b == 0);
    // end-of-stream: value 0, size 0, type 0, padding: all zero
    if !marker_ok || eos.iter().any(|&b| b != 0) {
        return Verdict::Unsafe;
    }
    Verdict::Safe
}

/// Python's `isprintable() or isspace()` for one ASCII character.
pub(super) fn is_text_byte(b: u8) -> bool {
    matches!(b, 0x20..=0x7e | b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | 0x1c..=0x1f)
}

pub(super) fn until_nul(b: &[u8]) -> &[u8] {
    match b.iter().position(|&c| c == 0) {
        Some(nul) => &b[..nul],
        None => b,
    }
}

pub(super) fn find_ignore_case(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len())
        .position(|w| w.eq_ignore_ascii_case(needle))
}
