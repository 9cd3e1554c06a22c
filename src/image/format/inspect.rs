//! The format inspector: what an image really is, decided from its first bytes, and whether it
//! is safe to hand to a converter (docs/data-path.md#formats).
//!
//! Why this exists: `qemu-img` follows pointers that an image carries — a qcow2 backing file or
//! external data file, a VMDK descriptor naming extent files — so a crafted image can make the
//! converter read files on the agent (the config drive, `/etc/shadow`) and write them to the
//! disk (Ironic bug 2071740). IPA therefore runs oslo.utils' `format_inspector` over every
//! image it does not trust, and refuses what it cannot vouch for.
//!
//! Why it is hand-written: the format crates parse a format you already know; none sniffs ten
//! formats at once with oslo's notion of a match, and none applies oslo's safety rules or gives
//! IPA's verdicts. The rules are small, so they live here, std only, over a byte slice: rivet
//! keeps the first [`INSPECT_LEN`] bytes of the image (while streaming, or from the temp file)
//! and decides from those alone. The name or Content-Type of the image never counts.
//!
//! As oslo does:
//! - every format is probed on its own; `raw` is what is left when nothing else matches;
//! - two or more matches are refused: one header hiding behind another (an ISO that also
//!   carries a boot MBR — "hybrid" ISOs — is the common honest case, and is refused too);
//! - `gpt` means "has an MBR boot signature and is not a FAT boot sector", so a plain MBR disk
//!   is `gpt` as well; its safety check is the MBR partition-entry sanity check;
//! - qcow2: version 2 or 3, no backing file, no external data file bit, no unknown incompatible
//!   feature bits (extended L2 counts as unknown, as in oslo); vmdk: only `monolithicSparse`
//!   and `streamOptimized`, descriptor lines of known kinds, extents without `/`; a footer
//!   ("grain directory at end") must agree with the header; qed is always refused; luks must
//!   be version 1; vhd, vhdx, vdi and iso have nothing to check.
//!
//! Where rivet is stricter than oslo, on purpose:
//! - a magic number followed by too few bytes for its header is "Unable to safety check" (oslo
//!   falls back to raw for some formats and to an error for others);
//! - qcow2 also refuses encryption, the external-data-file header extension, a cluster size
//!   outside 512 B..2 MiB, a virtual size over 2^55, and an L1 table too small for the virtual
//!   size or larger than qemu's limit (32 MiB of entries);
//! - a VMDK text descriptor file is always refused: alone it is never a usable image, and
//!   every extent it names is another file on the agent. A sparse VMDK whose descriptor is not
//!   at sector 1, or whose version is unknown, is refused (oslo drops to raw); its extents
//!   must be `SPARSE` (the sparse file itself) or `ZERO` (no file), never FLAT/VMFS/....
//!
//! The contract on `head`: it holds the first `min(INSPECT_LEN, image size)` bytes, so a head
//! shorter than [`INSPECT_LEN`] is the whole image. One check needs the *end* of the image (the
//! VMDK footer); for images longer than the head, callers run [`check_tail`] once the image is
//! complete and before converting it.

use std::fmt;

use crate::errors::AgentError;

/// How many leading bytes of an image the inspector looks at: enough for every header it knows,
/// including the largest VMDK descriptor qemu accepts (1 MiB − 1 at offset 512) and the ISO 9660
/// volume descriptor at 32 KiB, so that a full head never leaves a decision open.
pub(crate) const INSPECT_LEN: usize = (1 << 20) + 512;

/// How many trailing bytes of an image [`check_tail`] needs (VMDK footer marker, footer, and
/// end-of-stream marker, one sector each).
pub(crate) const TAIL_LEN: usize = 3 * 512;

const MSG_UNABLE: &str = "Security: Unable to safety check image";
const MSG_MULTIPLE: &str = "Security: Image matched multiple potential formats";
const MSG_UNSAFE: &str = "Security: Image failed safety check";

/// An image format, named as oslo.utils' format inspector (and so IPA and Ironic) names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Nothing else matched: the bytes are the disk.
    Raw,
    /// A disk with an MBR boot signature (protective MBR of a GPT disk, or a plain MBR disk).
    Gpt,
    /// QEMU copy-on-write v2/v3.
    Qcow2,
    /// VMware VMDK (sparse extent with embedded descriptor, or a text descriptor file).
    Vmdk,
    /// Microsoft VHD (qemu's "vpc"), dynamic: footer copy at offset 0.
    Vhd,
    /// Microsoft VHDX.
    Vhdx,
    /// VirtualBox VDI.
    Vdi,
    /// QEMU enhanced disk (always refused).
    Qed,
    /// ISO 9660 / UDF.
    Iso,
    /// LUKS encrypted volume.
    Luks,
}

impl Format {
    /// Every format, in the order [`Format::from_name`] looks them up.
    pub const ALL: [Format; 10] = [
        Format::Raw,
        Format::Gpt,
        Format::Qcow2,
        Format::Vmdk,
        Format::Vhd,
        Format::Vhdx,
        Format::Vdi,
        Format::Qed,
        Format::Iso,
        Format::Luks,
    ];

    /// The name IPA reports and compares with `disk_format` and `permitted_image_formats`.
    pub fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Gpt => "gpt",
            Format::Qcow2 => "qcow2",
            Format::Vmdk => "vmdk",
            Format::Vhd => "vhd",
            Format::Vhdx => "vhdx",
            Format::Vdi => "vdi",
            Format::Qed => "qed",
            Format::Iso => "iso",
            Format::Luks => "luks",
        }
    }

    /// The format with this exact (lower-case) name, if rivet knows it.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|f| f.name() == name)
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the inspector found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Inspection {
    /// The detected (or, for trusted raw/gpt, declared) format.
    pub format: Format,
    /// The disk size the image describes, when its header says so; `None` for raw and gpt
    /// (the size is the file's) and for formats whose size is not read here (vhdx, qed, luks).
    pub virtual_size: Option<u64>,
}

/// Detects the format of `head` (the first bytes of the image; shorter than [`INSPECT_LEN`]
/// only when that is the whole image) and runs oslo's safety checks, as IPA's deep inspection
/// does. Errors are `InvalidImage` with IPA's texts.
pub(crate) fn inspect(head: &[u8]) -> Result<Inspection, AgentError> {
    let found = detect(head);
    // Checked first: a format whose header is cut short could be anything, so neither "one
    // match" nor "several matches" can be trusted.
    if found.iter().any(|c| c.verdict == Verdict::Truncated) {
        return Err(invalid(MSG_UNABLE));
    }
    match found.as_slice() {
        [] => Ok(Inspection {
            format: Format::Raw,
            virtual_size: None,
        }),
        [one] if one.verdict == Verdict::Safe => Ok(one.inspection()),
        [_] => Err(invalid(MSG_UNSAFE)),
        _ => Err(invalid(MSG_MULTIPLE)),
    }
}

/// IPA's whole rule (`get_and_validate_image_format`, docs/data-path.md#formats). `disk_format` is Ironic's
/// (may be `None`, empty or `"unknown"`), `permitted` is `permitted_image_formats`, `deep` is
/// `!disable_deep_image_inspection`.
///
/// - `deep` and Ironic says `raw` or `gpt`: IPA trusts it without looking. rivet looks: bytes
///   that are clearly a container format (qcow2, vmdk, vhd, vhdx, vdi, qed) are refused as a
///   mismatch; anything else is written byte for byte (never through qemu-img), so it cannot
///   make the agent read other files. Raw and gpt are interchangeable here: the declared one
///   is returned, with no virtual size (the size is the file's).
/// - `deep` otherwise: [`inspect`], then the detected format must be in `permitted`, then it
///   must equal `disk_format` unless that is unset, empty or `unknown` (IPA's order).
/// - not `deep`: IPA asks `qemu-img info` and checks nothing. rivet detects the format from
///   the bytes the same way but skips every check (truncation, several matches, safety,
///   `permitted`, `disk_format`); with several matches it takes the most specific one (a
///   container format before iso, iso before gpt).
pub(crate) fn check(
    head: &[u8],
    disk_format: Option<&str>,
    permitted: &[String],
    deep: bool,
) -> Result<Inspection, AgentError> {
    if !deep {
        return Ok(detect(head)
            .first()
            .map(Candidate::inspection)
            .unwrap_or(Inspection {
                format: Format::Raw,
                virtual_size: None,
            }));
    }
    // IPA trusts a declared raw/gpt image without looking. rivet looks anyway: bytes that are
    // clearly another format (a qcow2 labelled raw) are refused; bytes the inspector cannot
    // classify safely (a hybrid ISO, junk after a magic) are raw bytes and written as such.
    // ISO and LUKS contents are raw bytes too (hybrid installers, encrypted disks).
    if let Some(declared @ ("raw" | "gpt")) = disk_format {
        let as_declared = Inspection {
            format: if declared == "gpt" {
                Format::Gpt
            } else {
                Format::Raw
            },
            virtual_size: None,
        };
        return match inspect(head) {
            Ok(f)
                if matches!(
                    f.format,
                    Format::Qcow2
                        | Format::Vmdk
                        | Format::Vhd
                        | Format::Vhdx
                        | Format::Vdi
                        | Format::Qed
                ) =>
            {
                Err(AgentError::InvalidImage(format!(
                    "Security: Expected format was {declared}, but image was actually {}",
                    f.format.name()
                )))
            }
            Ok(_) => Ok(as_declared),
            Err(e) => {
                tracing::info!(
                    "declared {declared}; the inspector says: {e}; writing it as raw bytes"
                );
                Ok(as_declared)
            }
        };
    }
    let found = inspect(head)?;
    let name = found.format.name();
    if !permitted.iter().any(|p| p.as_str() == name) {
        return Err(AgentError::InvalidImage(format!(
            "Security: Detected image format was {name}, but only {} are allowed",
            permitted.join(", ")
        )));
    }
    if let Some(expected) = disk_format {
        if !expected.is_empty() && expected != "unknown" && expected != name {
            return Err(AgentError::InvalidImage(format!(
                "Security: Expected format was {expected}, but image was actually {name}"
            )));
        }
    }
    Ok(found)
}

/// The one check that needs the end of the image: a VMDK whose grain directory is "at end"
/// (streamOptimized, as exported in OVAs) has a footer that qemu prefers over the header, so
/// the footer must agree with the header that [`inspect`] checked. `head` is the image's head
/// as given to [`inspect`], `tail` its last [`TAIL_LEN`] bytes (or more). For any other image
/// this does nothing; calling it when the head already held the whole image is harmless.
pub(crate) fn check_tail(head: &[u8], tail: &[u8]) -> Result<(), AgentError> {
    if !head.starts_with(VMDK_MAGIC) || le_u64(head, 56) != Some(VMDK_GD_AT_END) {
        return Ok(());
    }
    match vmdk_footer_verdict(head, tail) {
        Verdict::Safe => Ok(()),
        Verdict::Unsafe => Err(invalid(MSG_UNSAFE)),
        Verdict::Truncated => Err(invalid(MSG_UNABLE)),
    }
}

fn invalid(msg: &str) -> AgentError {
    AgentError::InvalidImage(msg.to_string())
}

/// One format's opinion of the head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// It matches and passes its safety checks.
    Safe,
    /// It matches and fails a safety check.
    Unsafe,
    /// Its magic matches but the data ends before its header does.
    Truncated,
}

/// A format whose magic matched.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    format: Format,
    virtual_size: Option<u64>,
    verdict: Verdict,
}

impl Candidate {
    fn new(format: Format, virtual_size: Option<u64>, verdict: Verdict) -> Option<Self> {
        Some(Candidate {
            format,
            virtual_size,
            verdict,
        })
    }

    fn inspection(&self) -> Inspection {
        Inspection {
            format: self.format,
            virtual_size: self.virtual_size,
        }
    }
}

type Probe = fn(&[u8]) -> Option<Candidate>;

/// Every non-raw format that matches, most specific first (the order the non-deep path picks
/// from): container formats, then iso, then the MBR/GPT check that a hybrid ISO also passes.
fn detect(head: &[u8]) -> Vec<Candidate> {
    const PROBES: [Probe; 9] = [
        probe_qcow2,
        probe_vmdk,
        probe_vhd,
        probe_vhdx,
        probe_vdi,
        probe_qed,
        probe_luks,
        probe_iso,
        probe_gpt,
    ];
    PROBES.iter().filter_map(|probe| probe(head)).collect()
}

// ---- little helpers: reads that return None instead of panicking on short input ----

fn bytes<const N: usize>(h: &[u8], at: usize) -> Option<[u8; N]> {
    h.get(at..at.checked_add(N)?)?.try_into().ok()
}

fn be_u16(h: &[u8], at: usize) -> Option<u16> {
    bytes::<2>(h, at).map(u16::from_be_bytes)
}

/// A big-endian u32 at `at`, `None` past the end (shared with the qcow2 streamer).
pub(super) fn be_u32(h: &[u8], at: usize) -> Option<u32> {
    bytes::<4>(h, at).map(u32::from_be_bytes)
}

/// A big-endian u64 at `at`, `None` past the end (shared with the qcow2 streamer).
pub(super) fn be_u64(h: &[u8], at: usize) -> Option<u64> {
    bytes::<8>(h, at).map(u64::from_be_bytes)
}

fn le_u16(h: &[u8], at: usize) -> Option<u16> {
    bytes::<2>(h, at).map(u16::from_le_bytes)
}

fn le_u32(h: &[u8], at: usize) -> Option<u32> {
    bytes::<4>(h, at).map(u32::from_le_bytes)
}

fn le_u64(h: &[u8], at: usize) -> Option<u64> {
    bytes::<8>(h, at).map(u64::from_le_bytes)
}

/// The verdict of a rule function that returns `None` when it ran out of bytes.
fn or_truncated(v: Option<Verdict>) -> Verdict {
    v.unwrap_or(Verdict::Truncated)
}

// ---- qcow2 (big-endian header; docs/interop/qcow2.txt in qemu) ----

const QCOW2_MAGIC: &[u8] = b"QFI\xfb";
const QCOW2_V2_HEADER_LEN: usize = 72;
const QCOW2_V3_MIN_HEADER_LEN: u32 = 104;
/// Incompatible feature bits a converter may meet safely: dirty (0), corrupt (1), compression
/// type (3). Bit 2 is the external data file; bit 4 (extended L2) and above are refused as
/// unknown, as oslo does (rivet's qcow2 streamer does not do extended L2 either).
const QCOW2_INCOMPAT_SAFE: u64 = 0b1011;
const QCOW2_EXT_END: u32 = 0;
/// Header extension "external data file name" ("DATA").
const QCOW2_EXT_DATA_FILE: u32 = 0x4441_5441;
const QCOW2_MIN_CLUSTER_BITS: u32 = 9;
const QCOW2_MAX_CLUSTER_BITS: u32 = 21;
const QCOW2_MAX_VIRTUAL_SIZE: u64 = 1 << 55;
/// qemu's QCOW_MAX_L1_SIZE (32 MiB) in 8-byte entries.
const QCOW2_MAX_L1_ENTRIES: u64 = (32 << 20) / 8;

fn probe_qcow2(h: &[u8]) -> Option<Candidate> {
    if !h.starts_with(QCOW2_MAGIC) {
        return None;
    }
    Candidate::new(Format::Qcow2, be_u64(h, 24), or_truncated(qcow2_rules(h)))
}

fn qcow2_rules(h: &[u8]) -> Option<Verdict> {
    use Verdict::{Safe, Unsafe};
    let version = be_u32(h, 4)?;
    if version != 2 && version != 3 {
        return Some(Unsafe);
    }
    if h.len() < QCOW2_V2_HEADER_LEN {
        return None;
    }
    let backing_file_offset = be_u64(h, 8)?;
    let cluster_bits = be_u32(h, 20)?;
    let size = be_u64(h, 24)?;
    let crypt_method = be_u32(h, 32)?;
    let l1_size = u64::from(be_u32(h, 36)?);
    // A backing file is read by the converter: the original attack.
    if backing_file_offset != 0 || crypt_method != 0 {
        return Some(Unsafe);
    }
    if !(QCOW2_MIN_CLUSTER_BITS..=QCOW2_MAX_CLUSTER_BITS).contains(&cluster_bits) {
        return Some(Unsafe);
    }
    if size > QCOW2_MAX_VIRTUAL_SIZE {
        return Some(Unsafe);
    }
    // One L1 entry maps one L2 table: cluster_size/8 entries of one cluster each. qemu refuses
    // an L1 table too small for the virtual size, or one over its size limit.
    let cluster_size = 1u64 << cluster_bits;
    let per_l1_entry = cluster_size * (cluster_size / 8);
    let l1_needed = size.div_ceil(per_l1_entry);
    if l1_size < l1_needed || l1_size > QCOW2_MAX_L1_ENTRIES {
        return Some(Unsafe);
    }
    let extensions_at = if version == 2 {
        QCOW2_V2_HEADER_LEN as u64
    } else {
        let incompatible = be_u64(h, 72)?;
        let header_len = be_u32(h, 100)?;
        if incompatible & !QCOW2_INCOMPAT_SAFE != 0 {
            return Some(Unsafe);
        }
        if header_len < QCOW2_V3_MIN_HEADER_LEN || u64::from(header_len) > cluster_size {
            return Some(Unsafe);
        }
        u64::from(header_len)
    };
    // Header extensions fill the rest of the first cluster, up to an end marker. The data file
    // name alone would be ignored without feature bit 2, but nothing honest carries it.
    let mut at = extensions_at;
    while at + 8 <= cluster_size {
        let pos = usize::try_from(at).ok()?;
        let kind = be_u32(h, pos)?;
        let len = u64::from(be_u32(h, pos + 4)?);
        if kind == QCOW2_EXT_END {
            break;
        }
        if kind == QCOW2_EXT_DATA_FILE {
            return Some(Unsafe);
        }
        let next = at + 8 + len.next_multiple_of(8);
        if next > cluster_size {
            // qemu: "header extension too large"
            return Some(Unsafe);
        }
        at = next;
    }
    Some(Safe)
}

// ---- the formats oslo only detects ----

/// Dynamic VHD: a copy of the 512-byte footer at offset 0; size is big-endian at 40.
fn probe_vhd(h: &[u8]) -> Option<Candidate> {
    if !h.starts_with(b"conectix") {
        return None;
    }
    let verdict = if h.len() < 512 {
        Verdict::Truncated
    } else {
        Verdict::Safe
    };
    Candidate::new(Format::Vhd, be_u64(h, 40), verdict)
}

/// VHDX: the file type identifier. Its size sits in a metadata region found through the
/// region table at 192 KiB; nothing here needs it, so it is not read.
fn probe_vhdx(h: &[u8]) -> Option<Candidate> {
    if !h.starts_with(b"vhdxfile") {
        return None;
    }
    Candidate::new(Format::Vhdx, None, Verdict::Safe)
}

/// VDI: signature 0xbeda107f (little-endian) at 0x40 of a 512-byte header; size at 0x170.
fn probe_vdi(h: &[u8]) -> Option<Candidate> {
    if le_u32(h, 0x40) != Some(0xbeda_107f) {
        return None;
    }
    let verdict = if h.len() < 512 {
        Verdict::Truncated
    } else {
        Verdict::Safe
    };
    Candidate::new(Format::Vdi, le_u64(h, 0x170), verdict)
}

/// QED: "QED\0". oslo bans it outright (nobody supports it, nobody checks it).
fn probe_qed(h: &[u8]) -> Option<Candidate> {
    if !h.starts_with(b"QED\0") {
        return None;
    }
    let verdict = if h.len() < 512 {
        Verdict::Truncated
    } else {
        Verdict::Unsafe
    };
    Candidate::new(Format::Qed, None, verdict)
}

/// LUKS: "LUKS\xba\xbe", big-endian version at 6; the v1 header with its key slots is 592
/// bytes. Only version 1 is accepted, as in oslo (qemu has no LUKS2).
fn probe_luks(h: &[u8]) -> Option<Candidate> {
    if !h.starts_with(b"LUKS\xba\xbe") {
        return None;
    }
    let verdict = match be_u16(h, 6) {
        _ if h.len() < 592 => Verdict::Truncated,
        Some(1) => Verdict::Safe,
        _ => Verdict::Unsafe,
    };
    Candidate::new(Format::Luks, None, verdict)
}

/// ISO 9660 / UDF: a volume descriptor at 32 KiB (after 16 sectors of system area) whose
/// identifier is CD001, NSR02 or NSR03. A primary volume descriptor (type 1) gives the size:
/// block count (LE u32 at +80) times block size (LE u16 at +128).
fn probe_iso(h: &[u8]) -> Option<Candidate> {
    const DESC: usize = 0x8000;
    const DESC_END: usize = DESC + 2048;
    const IDS: [&[u8]; 3] = [b"CD001", b"NSR02", b"NSR03"];
    let id = h.get(DESC + 1..DESC + 6)?;
    if !IDS.contains(&id) {
        return None;
    }
    if h.len() < DESC_END {
        return Candidate::new(Format::Iso, None, Verdict::Truncated);
    }
    let virtual_size = match h.get(DESC).copied() {
        Some(1) => le_u32(h, DESC + 80)
            .zip(le_u16(h, DESC + 128))
            .map(|(blocks, block)| u64::from(blocks) * u64::from(block)),
        _ => None,
    };
    Candidate::new(Format::Iso, virtual_size, Verdict::Safe)
}

/// MBR/GPT as oslo sees it: the boot signature 0x55 0xAA at 510, unless the sector is a FAT
/// boot sector (2 FATs, fixed-disk media byte), which carries the same signature.
fn probe_gpt(h: &[u8]) -> Option<Candidate> {
    let mbr = h.get(..512)?;
    if le_u16(mbr, 510) != Some(0xaa55) {
        return None;
    }
    if mbr[0x10] == 2 && mbr[0x15] == 0xf8 {
        return None;
    }
    let verdict = if mbr_safe(mbr) {
        Verdict::Safe
    } else {
        Verdict::Unsafe
    };
    Candidate::new(Format::Gpt, None, verdict)
}

/// oslo's MBR sanity: boot flags 0x00 or 0x80; at least one partition; a protective (0xEE)
/// entry starts at CHS 0/2/0 and LBA 1 and is the only entry, in slot 0.
fn mbr_safe(mbr: &[u8]) -> bool {
    let mut used = Vec::new();
    let mut protective = false;
    for slot in 0..4 {
        let at = 446 + 16 * slot;
        let Some(entry) = mbr.get(at..at + 16) else {
            return false;
        };
        if entry[0] != 0x00 && entry[0] != 0x80 {
            return false;
        }
        if entry[4] != 0 {
            used.push(slot);
        }
        if entry[4] == 0xee {
            protective = true;
            if entry[1..4] != [0x00, 0x02, 0x00] || le_u32(entry, 8) != Some(1) {
                return false;
            }
        }
    }
    !used.is_empty() && (!protective || used == [0usize])
}

mod vmdk;
use vmdk::*;

#[cfg(test)]
mod tests;
