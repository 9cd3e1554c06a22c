//! Unit tests of `qcow2`.

use super::*;
use std::io::Write;

/// Collects guest writes in memory.
struct Mem(Vec<u8>);

impl GuestSink for Mem {
    fn write_at(&mut self, off: u64, data: &[u8]) -> io::Result<()> {
        let end = off as usize + data.len();
        if self.0.len() < end {
            self.0.resize(end, 0);
        }
        self.0[off as usize..end].copy_from_slice(data);
        Ok(())
    }
}

const C: usize = 512;

/// A tiny v3 image by hand: 64 KiB virtual, 512-byte clusters; header, L1 (2 entries),
/// two L2 tables, then data: plain clusters, a zero-flagged one and a zlib one.
fn tiny() -> (Vec<u8>, Vec<u8>) {
    let vsize = 64 * 1024usize;
    let mut f = vec![0u8; 4 * C];
    f[..4].copy_from_slice(b"QFI\xfb");
    f[4..8].copy_from_slice(&3u32.to_be_bytes());
    f[20..24].copy_from_slice(&9u32.to_be_bytes());
    f[24..32].copy_from_slice(&(vsize as u64).to_be_bytes());
    f[36..40].copy_from_slice(&2u32.to_be_bytes());
    f[40..48].copy_from_slice(&(C as u64).to_be_bytes());
    f[96..100].copy_from_slice(&4u32.to_be_bytes());
    f[100..104].copy_from_slice(&104u32.to_be_bytes());
    // L1 → L2 tables at clusters 2 and 3.
    f[C..C + 8].copy_from_slice(&(2 * C as u64).to_be_bytes());
    f[C + 8..C + 16].copy_from_slice(&(3 * C as u64).to_be_bytes());
    let mut guest = vec![0u8; vsize];
    let mut next = 4 * C;
    let l2 = |f: &mut Vec<u8>, table: usize, idx: usize, entry: u64| {
        let at = table * C + idx * 8;
        f[at..at + 8].copy_from_slice(&entry.to_be_bytes());
    };
    for (table, idx, fill) in [(2usize, 0usize, 1u8), (2, 5, 2), (3, 1, 3), (3, 63, 4)] {
        let g = ((table - 2) * 64 + idx) * C;
        guest[g..g + C].fill(fill);
        f.resize(next + C, fill);
        l2(&mut f, table, idx, next as u64);
        next += C;
    }
    l2(&mut f, 2, 7, (next as u64) | 1); // zero flag: reads as zeros
                                         // A zlib (raw deflate) cluster for guest cluster 9.
    let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(&[9u8; C]).unwrap();
    let z = enc.finish().unwrap();
    let off = next as u64;
    f.extend_from_slice(&z);
    f.resize(next + C, 0);
    l2(&mut f, 2, 9, (1 << 62) | off); // no additional sectors
    guest[9 * C..10 * C].fill(9);
    (f, guest)
}

fn run(file: &[u8], chunk: usize, budget: usize) -> Result<Vec<u8>, Qcow2Error> {
    let mut q = Qcow2Stream::new(file, budget)?;
    let mut m = Mem(Vec::new());
    for c in file.chunks(chunk.max(1)) {
        q.feed(c, &mut m)?;
    }
    let holes = q.finish(&mut m)?;
    for (s, e) in holes {
        m.write_at(s, &vec![0u8; (e - s) as usize])?;
    }
    Ok(m.0)
}

#[test]
fn a_hand_made_image_converts_in_any_chunking() {
    let (file, guest) = tiny();
    for chunk in [1, 7, 512, 4096, file.len()] {
        assert_eq!(run(&file, chunk, 0).unwrap(), guest, "chunk {chunk}");
    }
}

#[test]
fn truncation_is_reported() {
    let (file, _) = tiny();
    let e = run(&file[..file.len() - 600], 512, 0).unwrap_err();
    assert!(matches!(e, Qcow2Error::Truncated(_)), "{e}");
}

/// Random corruption never panics and never holds more than the budget (a fuzz loop
/// without a fuzzer: cargo-fuzz needs a nightly toolchain this project does not have).
#[test]
fn mutated_images_never_panic() {
    let (file, _) = tiny();
    let mut x = 0x9e3779b97f4a7c15u64;
    let mut rnd = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..5000 {
        let mut f = file.clone();
        for _ in 0..(1 + rnd() % 8) {
            let i = (rnd() as usize) % f.len();
            f[i] = rnd() as u8;
        }
        if rnd() % 4 == 0 {
            let cut = (rnd() as usize) % f.len();
            f.truncate(cut);
        }
        let chunk = 1 + (rnd() as usize) % 700;
        if let Ok(out) = run(&f, chunk, 4096) {
            assert!(out.len() <= 64 * 1024, "wrote past the virtual size");
        }
    }
}

mod prop {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// Arbitrary headers (after the magic) and arbitrary table bytes: the header parser
        /// and the streamer never panic, never write past the virtual size, and keep their
        /// memory bounded (the spill budget is 4 KiB here).
        #[test]
        fn headers_and_tables_never_panic(
            header in proptest::collection::vec(any::<u8>(), 0..200),
            body in proptest::collection::vec(any::<u8>(), 0..4096),
            chunk in 1usize..600,
        ) {
            let mut f = b"QFI\xfb".to_vec();
            f.extend_from_slice(&header);
            f.extend_from_slice(&body);
            if let Ok(out) = run(&f, chunk, 4096) {
                let vs = u64::from_be_bytes(f[24..32].try_into().unwrap_or([0; 8]));
                prop_assert!(out.len() as u64 <= vs);
            }
        }

        /// A valid image with arbitrary L1/L2 entries (positions 512..2048 of the tiny image).
        #[test]
        fn tables_of_a_valid_image_never_panic(
            patch in proptest::collection::vec((512usize..2048, any::<u8>()), 1..32),
            chunk in 1usize..2048,
        ) {
            let (mut f, _) = tiny();
            for (at, b) in patch {
                f[at] = b;
            }
            if let Ok(out) = run(&f, chunk, 4096) {
                prop_assert!(out.len() <= 64 * 1024);
            }
        }
    }
}
