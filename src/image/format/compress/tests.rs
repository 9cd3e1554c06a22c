use std::io::Write;

use super::*;

fn data(n: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..n)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if i % 3000 < 1000 {
                0
            } else {
                x as u8 & 0x3f
            }
        })
        .collect()
}

fn gz(d: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(d).unwrap();
    e.finish().unwrap()
}

fn xz(d: &[u8]) -> Vec<u8> {
    let mut e = liblzma::write::XzEncoder::new(Vec::new(), 1);
    e.write_all(d).unwrap();
    e.finish().unwrap()
}

fn zst(d: &[u8]) -> Vec<u8> {
    zstd::encode_all(d, 3).unwrap()
}

/// Feeds `input` in chunks of `step` bytes and returns the output.
fn run(input: &[u8], step: usize) -> Result<Vec<u8>, CompressError> {
    let codec = detect(input).expect("compressed");
    let mut inf = inflater(codec)?;
    let mut got = Vec::new();
    let mut emit = |b: Vec<u8>| {
        got.extend_from_slice(&b);
        Ok(())
    };
    let mut out = Output::new(&mut emit);
    for c in input.chunks(step) {
        inf.feed(c, &mut out)?;
    }
    inf.finish(&mut out)?;
    out.flush()?;
    drop(out);
    Ok(got)
}

#[test]
fn detects_the_three_magics_and_nothing_else() {
    assert_eq!(detect(&gz(b"x")), Some(Codec::Gzip));
    assert_eq!(detect(&xz(b"x")), Some(Codec::Xz));
    assert_eq!(detect(&zst(b"x")), Some(Codec::Zstd));
    assert_eq!(detect(&[0x50, 0x2a, 0x4d, 0x18, 0, 0]), Some(Codec::Zstd));
    assert_eq!(detect(b"QFI\xfb\0\0\0\x03"), None);
    assert_eq!(detect(&[0u8; 6]), None);
    assert_eq!(detect(&[0x1f]), None);
}

#[test]
fn round_trips_in_any_chunking() {
    let d = data(3 * CHUNK + 12345);
    for (name, c) in [("gz", gz(&d)), ("xz", xz(&d)), ("zst", zst(&d))] {
        for step in [1usize << 20, 65536, 4099] {
            assert_eq!(run(&c, step).unwrap(), d, "{name} step {step}");
        }
    }
    // One byte at a time through a small image: every header split everywhere.
    let small = data(20000);
    for c in [gz(&small), xz(&small), zst(&small)] {
        assert_eq!(run(&c, 1).unwrap(), small);
    }
}

#[test]
fn concatenated_members_are_one_image() {
    let (a, b) = (data(100_000), data(77_777));
    let whole = [a.clone(), b.clone()].concat();
    assert_eq!(run(&[gz(&a), gz(&b)].concat(), 4096).unwrap(), whole);
    assert_eq!(run(&[zst(&a), zst(&b)].concat(), 4096).unwrap(), whole);
    // xz: stream padding (a multiple of four zero bytes) between streams is allowed.
    let x = [xz(&a), vec![0; 8], xz(&b), vec![0; 4]].concat();
    assert_eq!(run(&x, 4096).unwrap(), whole);
    // zstd: a skippable frame between frames.
    let skip = [&[0x50, 0x2a, 0x4d, 0x18, 3, 0, 0, 0][..], b"abc"].concat();
    assert_eq!(
        run(&[zst(&a), skip, zst(&b)].concat(), 4096).unwrap(),
        whole
    );
}

#[test]
fn a_truncated_stream_is_an_error() {
    let d = data(500_000);
    for c in [gz(&d), xz(&d), zst(&d)] {
        for cut in [c.len() - 1, c.len() - 5, c.len() / 2, 20] {
            let e = run(&c[..cut], 8192).unwrap_err();
            assert!(
                matches!(
                    e,
                    CompressError::Truncated(_) | CompressError::Corrupt { .. }
                ),
                "{e}"
            );
        }
        let e = run(&c[..c.len() - 1], 8192).unwrap_err();
        assert!(matches!(e, CompressError::Truncated(_)), "{e}");
    }
}

#[test]
fn trailing_garbage_is_an_error() {
    let d = data(100_000);
    for c in [gz(&d), xz(&d), zst(&d)] {
        for junk in [&b"garbage!"[..], &[0u8; 3], &[0u8; 512]] {
            let bad = [c.clone(), junk.to_vec()].concat();
            let codec = detect(&c).unwrap();
            // xz allows 4n zero bytes of stream padding; nothing else is allowed anywhere.
            if codec == Codec::Xz && junk.iter().all(|&b| b == 0) && junk.len() % 4 == 0 {
                assert!(run(&bad, 4096).is_ok());
                continue;
            }
            let e = run(&bad, 4096).unwrap_err();
            assert!(
                matches!(e, CompressError::TrailingGarbage(_)),
                "{codec}: {e}"
            );
        }
    }
}

#[test]
fn corrupt_data_is_an_error() {
    let d = data(200_000);
    // (A zstd frame without its optional checksum may decode damaged literals silently: the
    // image's own digest, over the downloaded bytes, is what catches that.)
    for mut c in [gz(&d), xz(&d)] {
        let mid = c.len() / 2;
        c[mid] ^= 0x55;
        c[mid + 1] ^= 0xaa;
        assert!(run(&c, 4096).is_err());
    }
}

#[test]
fn decompress_file_bounds_the_output() {
    let d = data(300_000);
    let c = zst(&d);
    let mut out = Vec::new();
    let n = decompress_file(Codec::Zstd, &mut &c[..], &mut out, 300_000).unwrap();
    assert_eq!((n, out), (300_000, d));
    let e = decompress_file(Codec::Zstd, &mut &c[..], &mut Vec::new(), 299_999).unwrap_err();
    assert!(matches!(e, CompressError::Output(ref io) if io.raw_os_error() == Some(libc::ENOSPC)));
}
