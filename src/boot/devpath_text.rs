//! A load option as `efibootmgr -v` prints it after the label: the device path in efivar's text
//! form, then the optional data.
//!
//! IPA's `clean_uefi_nvram` matches its regexes against exactly that text (the `path` group of
//! `efi_utils._ENTRY_LABEL` over `efibootmgr -v` output), and only sees entries whose text starts
//! with one of `BBS|HD|FvFile|FvVol|PciRoot|VenMsg|VenHw|UsbClass` followed by `(`. So rivet
//! renders the nodes those patterns meet in efivar 38+'s format (libefivar of IPA's CentOS
//! Stream 9 ramdisk, and current): `HD(1,GPT,<guid>,0x800,0x100000)/\EFI\BOOT\BOOTX64.EFI`.
//! (efivar 37, Debian 12, writes the file node as `File(\EFI\...)`; both forms match IPA's default
//! patterns.) Node kinds rivet does not name get efivar's generic `Path(type,subtype,hex)` form.

use super::load_option::{utf16z, HardDrive, LoadOption, Node, PartitionSignature};

/// The first node names IPA's `_ENTRY_LABEL` regex accepts; other entries are invisible to it.
const IPA_VISIBLE_PREFIXES: [&str; 8] = [
    "BBS", "HD", "FvFile", "FvVol", "PciRoot", "VenMsg", "VenHw", "UsbClass",
];

/// The device path text plus the optional data, as IPA's regex captures it.
pub fn render(option: &LoadOption) -> String {
    let mut out = render_path(option);
    out.push_str(&render_optional_data(&option.optional_data));
    out
}

/// True when IPA's `get_boot_records` would list an entry with this rendered path.
pub fn visible_to_ipa(text: &str) -> bool {
    IPA_VISIBLE_PREFIXES
        .iter()
        .any(|p| text.strip_prefix(p).is_some_and(|r| r.starts_with('(')))
}

/// The device path alone: nodes joined by `/`, instances by `,`, up to End Entire.
pub fn render_path(option: &LoadOption) -> String {
    let mut out = String::new();
    let mut first = true;
    for node in option.nodes() {
        let Ok(node) = node else {
            // efivar prints what it could format before a broken node.
            break;
        };
        if node.is_end_entire() {
            break;
        }
        if node.kind == 0x7f {
            out.push(',');
            first = true;
            continue;
        }
        if !first {
            out.push('/');
        }
        first = false;
        out.push_str(&render_node(&node));
    }
    out
}

fn render_node(n: &Node<'_>) -> String {
    let d = n.data;
    let named = match (n.kind, n.subtype) {
        (1, 1) if d.len() >= 2 => Some(format!("Pci(0x{:x},0x{:x})", d[1], d[0])),
        (1, 4) => vendor("VenHw", d),
        (2, 1) if d.len() >= 8 => Some(acpi(u32_at(d, 0), u32_at(d, 4))),
        (3, 2) if d.len() >= 4 => Some(format!("Scsi({},{})", u16_at(d, 0), u16_at(d, 2))),
        (3, 5) if d.len() >= 2 => Some(format!("Usb({},{})", d[0], d[1])),
        (3, 10) => vendor("VenMsg", d),
        (3, 11) if d.len() >= 33 => {
            let len = if d[32] < 2 { 6 } else { 32 };
            Some(format!("MAC({},{})", hex(&d[..len]), d[32]))
        }
        (3, 15) if d.len() >= 7 => Some(format!(
            "UsbClass({:x},{:x},{},{})",
            u16_at(d, 0),
            u16_at(d, 2),
            d[5],
            d[6]
        )),
        (3, 18) if d.len() >= 6 => Some(format!(
            "Sata({},{},{})",
            u16_at(d, 0),
            u16_at(d, 2),
            u16_at(d, 4)
        )),
        (3, 23) if d.len() >= 12 => Some(format!(
            "NVMe(0x{:x},{})",
            u32_at(d, 0),
            d[4..12]
                .iter()
                .map(|b| format!("{b:02X}"))
                .collect::<Vec<_>>()
                .join("-")
        )),
        (3, 24) => Some(format!("Uri({})", String::from_utf8_lossy(d))),
        (4, 1) => hard_drive(d),
        (4, 2) if d.len() >= 20 => Some(format!(
            "CDROM({},0x{:x},0x{:x})",
            u32_at(d, 0),
            u64_at(d, 4),
            u64_at(d, 12)
        )),
        (4, 3) => vendor("VenMedia", d),
        (4, 4) => Some(utf16z(d)),
        (4, 5) => guid_node("Media", d),
        (4, 6) => guid_node("FvFile", d),
        (4, 7) => guid_node("FvVol", d),
        (4, 8) if d.len() >= 20 => Some(format!(
            "Offset(0x{:x},0x{:x})",
            u64_at(d, 4),
            u64_at(d, 12)
        )),
        (5, 1) if d.len() >= 4 => Some(bbs(d)),
        _ => None,
    };
    named.unwrap_or_else(|| generic(n))
}

/// efivar's fallbacks for node kinds it cannot (or rivet does not) name.
fn generic(n: &Node<'_>) -> String {
    let label = match n.kind {
        1 => "HardwarePath",
        2 => "AcpiPath",
        3 => "Msg",
        4 => "MediaPath",
        5 => "BbsPath",
        _ => return format!("Path({},{},{})", n.kind, n.subtype, hex(n.data)),
    };
    format!("{label}({},{})", n.subtype, hex(n.data))
}

fn hard_drive(d: &[u8]) -> Option<String> {
    let hd = HardDrive::from_node_data(d)?;
    let part = hd.partition_number;
    let (start, size) = (hd.start_lba, hd.size_lba);
    Some(match hd.signature {
        PartitionSignature::Mbr(s) => format!("HD({part},MBR,0x{s:x},0x{start:x},0x{size:x})"),
        PartitionSignature::Gpt(g) => {
            let g = uuid::Uuid::from_bytes_le(g);
            format!("HD({part},GPT,{g},0x{start:x},0x{size:x})")
        }
    })
}

fn acpi(hid: u32, uid: u32) -> String {
    match hid {
        0x0a03_41d0 => format!("PciRoot(0x{uid:x})"),
        0x0a08_41d0 => format!("PcieRoot(0x{uid:x})"),
        _ => format!("Acpi(0x{hid:08x},0x{uid:x})"),
    }
}

fn bbs(d: &[u8]) -> String {
    const TYPES: [&str; 7] = ["", "Floppy", "HD", "CDROM", "PCMCIA", "USB", "Network"];
    let kind = u16_at(d, 0);
    let status = u16_at(d, 2);
    let desc: String = d[4..]
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| char::from(c))
        .collect();
    match TYPES.get(usize::from(kind)) {
        Some(t) if kind > 0 => format!("BBS({t},{desc},0x{status:x})"),
        _ => format!("BBS({kind},{desc},0x{status:x})"),
    }
}

fn vendor(label: &str, d: &[u8]) -> Option<String> {
    let g = guid(d)?;
    Some(if d.len() > 16 {
        format!("{label}({g},{})", hex(&d[16..]))
    } else {
        format!("{label}({g})")
    })
}

fn guid_node(label: &str, d: &[u8]) -> Option<String> {
    guid(d).map(|g| format!("{label}({g})"))
}

fn guid(d: &[u8]) -> Option<uuid::Uuid> {
    let b: [u8; 16] = d.get(..16)?.try_into().ok()?;
    Some(uuid::Uuid::from_bytes_le(b))
}

/// The optional data as efibootmgr 16/17 print it (the versions in IPA's CentOS Stream 9 and
/// Debian 12 ramdisks): each byte outside 32..=127 as `.`. (efibootmgr 18 prints hex instead.)
fn render_optional_data(d: &[u8]) -> String {
    d.iter()
        .map(|&c| {
            if (32..=127).contains(&c) {
                char::from(c)
            } else {
                '.'
            }
        })
        .collect()
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

fn u16_at(d: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([d[at], d[at + 1]])
}

fn u32_at(d: &[u8], at: usize) -> u32 {
    super::load_option::le_u32(&d[at..])
}

fn u64_at(d: &[u8], at: usize) -> u64 {
    super::load_option::le_u64(&d[at..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn option(path: &[u8], optional: &[u8]) -> LoadOption {
        LoadOption {
            attributes: 1,
            description: "x".into(),
            device_path: path.to_vec(),
            optional_data: optional.to_vec(),
        }
    }

    #[test]
    fn hd_file_entry_as_efibootmgr_prints_it() {
        let hd = HardDrive {
            partition_number: 1,
            start_lba: 0x800,
            size_lba: 0x10000,
            signature: PartitionSignature::Gpt(
                uuid::Uuid::parse_str("df674664-9b7a-4a01-9903-65f7a9ba074b")
                    .unwrap()
                    .to_bytes_le(),
            ),
        };
        let lo = LoadOption::hard_drive_file("ironic1", &hd, r"\EFI\BOOT\BOOTX64.EFI").unwrap();
        let text = render(&lo);
        assert_eq!(
            text,
            r"HD(1,GPT,df674664-9b7a-4a01-9903-65f7a9ba074b,0x800,0x10000)/\EFI\BOOT\BOOTX64.EFI"
        );
        assert!(visible_to_ipa(&text));
        let mbr = HardDrive {
            signature: PartitionSignature::Mbr(0xdead_beef),
            ..hd
        };
        let lo = LoadOption::hard_drive_file("ironic1", &mbr, r"\a.efi").unwrap();
        assert_eq!(render(&lo), r"HD(1,MBR,0xdeadbeef,0x800,0x10000)/\a.efi");
    }

    #[test]
    fn firmware_entries() {
        // PciRoot(0x0)/Pci(0x2,0x1)/MAC(525400123456,1)
        let mut p = vec![2, 1, 12, 0, 0xd0, 0x41, 0x03, 0x0a, 0, 0, 0, 0];
        p.extend_from_slice(&[1, 1, 6, 0, 1, 2]);
        let mut mac = vec![3, 11, 37, 0, 0x52, 0x54, 0, 0x12, 0x34, 0x56];
        mac.resize(36, 0);
        mac.push(1);
        p.extend_from_slice(&mac);
        p.extend_from_slice(&[0x7f, 0xff, 4, 0]);
        let text = render(&option(&p, &[]));
        assert_eq!(text, "PciRoot(0x0)/Pci(0x2,0x1)/MAC(525400123456,1)");
        assert!(visible_to_ipa(&text));
        // BBS(HD,Hard disk,0x0) with binary optional data, non-printable bytes as dots
        let mut b = vec![5, 1, 18, 0, 2, 0, 0, 0];
        b.extend_from_slice(b"Hard disk\0");
        b.extend_from_slice(&[0x7f, 0xff, 4, 0]);
        assert_eq!(
            render(&option(&b, &[0, 1, 0xff])),
            "BBS(HD,Hard disk,0x0)..."
        );
        // Uri() entries are not in IPA's list: clean_uefi_nvram never sees them
        let mut u = vec![3, 24, 4 + 18, 0];
        u.extend_from_slice(b"http://192.0.2.1/x");
        u.extend_from_slice(&[0x7f, 0xff, 4, 0]);
        let text = render(&option(&u, b"abc"));
        assert_eq!(text, "Uri(http://192.0.2.1/x)abc");
        assert!(!visible_to_ipa(&text));
        // unknown node type, and a truncated path
        assert_eq!(
            render(&option(&[9, 9, 6, 0, 0xab, 0xcd], &[])),
            "Path(9,9,abcd)"
        );
        assert_eq!(render(&option(&[4, 4, 99, 0], &[])), "");
        assert!(!visible_to_ipa("Hd(1)"));
        assert!(!visible_to_ipa("HDD(1)"));
    }
}
