//! Hostile tables: each of these aborted or panicked the process when handed to gptman or
//! mbrman directly.

use std::io::Cursor;

use super::*;
use crate::disk::partitions::read_table_from;

const MIB: usize = 1 << 20;

fn gpt_disk(len: usize, ss: u64) -> Vec<u8> {
    let mut c = Cursor::new(vec![0u8; len]);
    let mut g = gptman::GPT::new_from(&mut c, ss, [9; 16]).unwrap();
    g[1] = gptman::GPTPartitionEntry {
        partition_type_guid: [1; 16],
        unique_partition_guid: [2; 16],
        starting_lba: g.header.first_usable_lba,
        ending_lba: g.header.first_usable_lba + 7,
        attribute_bits: 0,
        partition_name: "p".into(),
    };
    g.write_into(&mut c).unwrap();
    gptman::GPT::write_protective_mbr_into(&mut c, ss).unwrap();
    c.into_inner()
}

/// Changes the header at `lba` and gives it a valid CRC again.
fn patch_header(img: &mut [u8], ss: usize, lba: usize, f: impl Fn(&mut [u8])) {
    let h = &mut img[lba * ss..lba * ss + 92];
    f(h);
    h[16..20].fill(0);
    let crc = crc32(h);
    h[16..20].copy_from_slice(&crc.to_le_bytes());
}

fn both_headers(img: &mut [u8], ss: usize, f: impl Fn(&mut [u8])) {
    let last = img.len() / ss - 1;
    patch_header(img, ss, 1, &f);
    patch_header(img, ss, last, &f);
}

fn refused(img: Vec<u8>, what: &str) {
    let e = read_table_from(&mut Cursor::new(img)).unwrap_err();
    assert!(
        matches!(&e, TableError::OutOfBounds(m) if m.contains(what)),
        "{e}"
    );
}

#[test]
fn a_sane_gpt_reads() {
    let img = gpt_disk(4 * MIB, 512);
    let t = read_table_from(&mut Cursor::new(img)).unwrap().unwrap();
    assert_eq!(t.parts.len(), 1);
    let img = gpt_disk(8 * MIB, 4096);
    let t = read_table_from(&mut Cursor::new(img)).unwrap().unwrap();
    assert_eq!(t.sector, 4096);
}

#[test]
fn absurd_entry_counts_are_refused() {
    let mut img = gpt_disk(4 * MIB, 512);
    both_headers(&mut img, 512, |h| {
        h[80..84].copy_from_slice(&u32::MAX.to_le_bytes())
    });
    refused(img, "4294967295 partition entries");
    let mut img = gpt_disk(4 * MIB, 512);
    both_headers(&mut img, 512, |h| h[80..84].fill(0));
    refused(img, "0 partition entries");
}

#[test]
fn entry_sizes_other_than_128_are_refused() {
    let mut img = gpt_disk(4 * MIB, 512);
    both_headers(&mut img, 512, |h| {
        h[84..88].copy_from_slice(&256u32.to_le_bytes())
    });
    refused(img, "entries of 256 bytes");
}

#[test]
fn arrays_outside_the_disk_are_refused() {
    let mut img = gpt_disk(4 * MIB, 512);
    both_headers(&mut img, 512, |h| {
        h[72..80].copy_from_slice(&(1u64 << 60).to_le_bytes())
    });
    refused(img, "beyond any disk");
    let mut img = gpt_disk(4 * MIB, 512);
    both_headers(&mut img, 512, |h| {
        h[72..80].copy_from_slice(&8190u64.to_le_bytes())
    });
    refused(img, "outside the 4194304-byte disk");
    let mut img = gpt_disk(4 * MIB, 512);
    both_headers(&mut img, 512, |h| {
        h[72..80].copy_from_slice(&1u64.to_le_bytes())
    });
    refused(img, "protective MBR");
}

#[test]
fn header_sizes_beyond_the_sector_are_refused() {
    let mut img = gpt_disk(4 * MIB, 512);
    // The CRC covers the claimed size: set it by hand over those bytes.
    img[512 + 12..512 + 16].copy_from_slice(&600u32.to_le_bytes());
    refused(img, "header size of 600 bytes");
}

#[test]
fn a_damaged_hostile_copy_is_skipped_like_the_library_does() {
    let mut img = gpt_disk(4 * MIB, 512);
    // Hostile count without fixing the CRC: the library never reads past the header.
    img[512 + 80..512 + 84].copy_from_slice(&u32::MAX.to_le_bytes());
    let t = read_table_from(&mut Cursor::new(img)).unwrap().unwrap();
    assert_eq!(t.parts.len(), 1, "read from the backup");
}

#[test]
fn partitions_over_lba_0_or_past_the_end_are_refused() {
    for (first, last, what) in [(0u64, 10u64, "LBA 0..=10"), (40, 1 << 40, "outside")] {
        let mut img = gpt_disk(4 * MIB, 512);
        let e = 2 * 512; // entry 1
        img[e + 32..e + 40].copy_from_slice(&first.to_le_bytes());
        img[e + 40..e + 48].copy_from_slice(&last.to_le_bytes());
        let crc = crc32(&img[2 * 512..2 * 512 + 128 * 128]);
        patch_header(&mut img, 512, 1, |h| {
            h[88..92].copy_from_slice(&crc.to_le_bytes())
        });
        refused(img, what);
    }
}

#[test]
fn hostile_4k_tables_are_found_too() {
    let mut img = gpt_disk(8 * MIB, 4096);
    both_headers(&mut img, 4096, |h| {
        h[80..84].copy_from_slice(&u32::MAX.to_le_bytes())
    });
    refused(img, "4096-byte sectors");
    let mut img = gpt_disk(8 * MIB, 4096);
    both_headers(&mut img, 4096, |h| {
        h[84..88].copy_from_slice(&0u32.to_le_bytes())
    });
    let e = read_gpt(&mut Cursor::new(img), 4096).unwrap_err();
    assert!(e.to_string().contains("entries of 0 bytes"), "{e}");
}

fn mbr_entry_at(img: &mut [u8], sector: usize, i: usize, kind: u8, first: u32, len: u32) {
    let e = sector * 512 + 446 + 16 * i;
    img[e] = 0;
    img[e + 4] = kind;
    img[e + 8..e + 12].copy_from_slice(&first.to_le_bytes());
    img[e + 12..e + 16].copy_from_slice(&len.to_le_bytes());
    img[sector * 512 + 510] = 0x55;
    img[sector * 512 + 511] = 0xAA;
}

#[test]
fn mbr_partitions_over_sector_0_are_refused() {
    let mut img = vec![0u8; MIB];
    mbr_entry_at(&mut img, 0, 0, 0x83, 0, 100);
    refused(img, "starts at sector 0");
}

#[test]
fn long_or_overflowing_ebr_chains_are_refused() {
    let mut img = vec![0u8; 2 * MIB];
    mbr_entry_at(&mut img, 0, 0, 0x05, 1, 4000);
    for n in 0..200 {
        // EBR n at sector 1 + n: its logical partition, then the next EBR.
        mbr_entry_at(&mut img, 1 + n, 0, 0x83, 1, 1);
        mbr_entry_at(&mut img, 1 + n, 1, 0x05, n as u32 + 1, 1);
    }
    refused(img, "more than 128 logical partitions");
    let mut img = vec![0u8; MIB];
    mbr_entry_at(&mut img, 0, 0, 0x05, 1, 100);
    mbr_entry_at(&mut img, 1, 0, 0x83, u32::MAX, 1);
    refused(img, "beyond 2^32 sectors");
    // A short chain reads.
    let mut img = vec![0u8; MIB];
    mbr_entry_at(&mut img, 0, 0, 0x05, 1, 100);
    mbr_entry_at(&mut img, 1, 0, 0x83, 1, 10);
    let t = read_table_from(&mut Cursor::new(img)).unwrap().unwrap();
    assert_eq!(t.kind, crate::disk::partitions::TableKind::Mbr);
}

#[test]
fn overlapping_partitions_fail_the_layout_check() {
    let img = gpt_disk(4 * MIB, 512);
    let mut c = Cursor::new(img);
    let mut g = find_gpt(&mut c).unwrap().unwrap();
    check_layout(&g).unwrap();
    g[2] = gptman::GPTPartitionEntry {
        starting_lba: g[1].starting_lba + 2,
        ending_lba: g[1].ending_lba + 2,
        unique_partition_guid: [3; 16],
        ..g[1].clone()
    };
    assert!(check_layout(&g).is_err());
}
