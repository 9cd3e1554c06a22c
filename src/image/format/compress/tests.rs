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

/// Feeds `input` in chunks of `step` bytes and returns the output, decoded with one thread and
/// with two: both must agree (xz: plain or multi-threaded decoder; zstd: streamed or frames).
fn run(input: &[u8], step: usize) -> Result<Vec<u8>, CompressError> {
    let one = run_threads(input, step, 1);
    let two = run_threads(input, step, 2);
    match (&one, &two) {
        (Ok(a), Ok(b)) => assert!(a == b, "one and two threads decode differently"),
        (Err(a), Err(b)) => assert_eq!(
            std::mem::discriminant(a),
            std::mem::discriminant(b),
            "one thread: {a}; two: {b}"
        ),
        _ => panic!("one thread: {one:?}; two: {two:?}"),
    }
    two
}

fn run_threads(input: &[u8], step: usize, threads: usize) -> Result<Vec<u8>, CompressError> {
    let codec = detect(input).expect("compressed");
    run_into(&mut *inflater(codec, lim(threads))?, input, step)
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
    let n = decompress_file(Codec::Zstd, &mut &c[..], &mut out, 300_000, lim(1)).unwrap();
    assert_eq!((n, out), (300_000, d));
    let e =
        decompress_file(Codec::Zstd, &mut &c[..], &mut Vec::new(), 299_999, lim(1)).unwrap_err();
    assert!(matches!(e, CompressError::Output(ref io) if io.raw_os_error() == Some(libc::ENOSPC)));
}

/// Frames as `pzstd` writes them: each chunk its own frame, behind a skippable frame holding
/// its compressed size. Mixed on purpose: one-shot frames (with their content size), streamed
/// frames (without), checksummed ones.
fn pzst(d: &[u8], chunk: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, c) in d.chunks(chunk).enumerate() {
        let frame = match i % 3 {
            0 => zstd::bulk::compress(c, 3).unwrap(),
            1 => zst(c),
            _ => {
                let mut e = zstd::stream::Encoder::new(Vec::new(), 1).unwrap();
                e.include_checksum(true).unwrap();
                e.write_all(c).unwrap();
                e.finish().unwrap()
            }
        };
        out.extend_from_slice(&[0x50, 0x2a, 0x4d, 0x18, 4, 0, 0, 0]);
        out.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        out.extend_from_slice(&frame);
    }
    out
}

fn lim(threads: usize) -> Limits {
    Limits {
        threads,
        memory: 32 << 20,
    }
}

/// Feeds `input` in chunks of `step` bytes into `inf` and returns the output, checking that
/// it comes in views of 1 to [`CHUNK`] bytes.
fn run_into(inf: &mut dyn Inflate, input: &[u8], step: usize) -> Result<Vec<u8>, CompressError> {
    let mut got = Vec::new();
    let mut emit = |b: bytes::Bytes| {
        assert!(
            !b.is_empty() && b.len() <= CHUNK,
            "a view of {} bytes",
            b.len()
        );
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

/// The three ways a zstd file is decoded: frames apart on threads, frames apart until one is
/// too big and then streaming, streaming only (one CPU).
type Make = fn() -> zstd_frames::Zstd;

fn zstd_modes() -> [(&'static str, Make); 3] {
    [
        ("frames", || {
            zstd_frames::Zstd::with(lim(3), 1 << 20).unwrap()
        }),
        ("frames then stream", || {
            zstd_frames::Zstd::with(lim(2), 150_000).unwrap()
        }),
        ("stream", || {
            zstd_frames::Zstd::with(lim(1), 1 << 20).unwrap()
        }),
    ]
}

#[test]
fn zstd_frames_decode_apart_in_order_in_any_chunking() {
    let d = data(5 * CHUNK + 777);
    // 100 KB frames, then one of 2 MB (past the second mode's limit: it streams from there).
    let c = [pzst(&d[..CHUNK], 100_000), pzst(&d[CHUNK..], 2 << 20)].concat();
    for (mode, make) in zstd_modes() {
        for step in [1usize << 20, 65536, 4099, 13] {
            let got = run_into(&mut make(), &c, step).unwrap_or_else(|e| panic!("{mode}: {e}"));
            assert!(got == d, "{mode} step {step}: output differs");
        }
    }
    // Which frames were decoded apart: the 11 small ones, then the first 2 MiB frame is past
    // a 1 MiB limit and the rest streams; under an 8 MiB limit all 14 are.
    for (limit, apart) in [(1usize << 20, 11), (8 << 20, 14)] {
        let mut z = zstd_frames::Zstd::with(lim(2), limit).unwrap();
        let mut sink = |_: bytes::Bytes| Ok(());
        let mut out = Output::new(&mut sink);
        z.feed(&c, &mut out).unwrap();
        z.finish(&mut out).unwrap();
        assert_eq!(z.decoded_apart(), apart, "limit {limit}");
    }
    // The default decoder on this machine takes the same file the same way.
    assert_eq!(run(&c, 65536).unwrap(), d);
}

#[test]
fn zstd_frames_keep_the_end_of_stream_rules() {
    let d = data(600_000);
    let c = pzst(&d, 100_000);
    for (mode, make) in zstd_modes() {
        // Cut inside a frame, inside a frame header, inside the skippable frame, its length.
        for cut in [c.len() - 1, c.len() - 3, c.len() / 2, 20, 10, 6] {
            let e = run_into(&mut make(), &c[..cut], 4096).unwrap_err();
            assert!(
                matches!(e, CompressError::Truncated(Codec::Zstd)),
                "{mode} cut {cut}: {e}"
            );
        }
        for junk in [&b"garbage!"[..], &[0u8; 3], &[0x28, 0xb5, 0x2f, 0xfe]] {
            let bad = [c.clone(), junk.to_vec()].concat();
            let e = run_into(&mut make(), &bad, 4096).unwrap_err();
            assert!(
                matches!(e, CompressError::TrailingGarbage(Codec::Zstd)),
                "{mode} junk {junk:?}: {e}"
            );
        }
        // The start of a magic number at the very end: a frame that never came.
        let bad = [c.clone(), vec![0x28, 0xb5]].concat();
        assert!(matches!(
            run_into(&mut make(), &bad, 4096).unwrap_err(),
            CompressError::Truncated(Codec::Zstd)
        ));
    }
}

#[test]
fn zstd_frames_refuse_corrupt_frames() {
    let d = data(300_000);
    let c = pzst(&d, 100_000);
    // The third frame carries a checksum: damage its payload. (12 bytes of skippable frame
    // before each frame.)
    let first = u32::from_le_bytes(c[8..12].try_into().unwrap()) as usize;
    let second = u32::from_le_bytes(c[12 + first + 8..12 + first + 12].try_into().unwrap());
    let third = 12 + first + 12 + second as usize + 12;
    let mut bad = c.clone();
    bad[third + 500] ^= 0x40;
    bad[third + 501] ^= 0x04;
    for (mode, make) in zstd_modes() {
        let e = run_into(&mut make(), &bad, 8192).unwrap_err();
        assert!(matches!(e, CompressError::Corrupt { .. }), "{mode}: {e}");
    }
    // A reserved block type in a frame's first block header (after the 12-byte skippable
    // frame, the 4-byte magic and a header of 2 to 14 bytes: found by walking it here).
    let mut bad = c.clone();
    let fhd = bad[16];
    let header = 1
        + usize::from(fhd & 0x20 == 0)
        + [usize::from(fhd & 0x20 != 0), 2, 4, 8][usize::from(fhd >> 6)];
    bad[16 + header] |= 0b110;
    let e = run_into(
        &mut zstd_frames::Zstd::with(lim(2), 1 << 20).unwrap(),
        &bad,
        4096,
    )
    .unwrap_err();
    assert!(e.to_string().contains("reserved block type"), "frames: {e}");
}

#[test]
fn a_frame_that_lies_about_its_size_is_refused_without_a_huge_buffer() {
    // A one-shot frame of 100 bytes (single segment, one byte of content size), rewritten to
    // claim another size in an 8-byte field; otherwise intact.
    let d = data(100);
    let f = zstd::bulk::compress(&d, 3).unwrap();
    assert_eq!(
        (f[4] >> 6, f[4] & 0x20),
        (0, 0x20),
        "single segment, 1-byte size"
    );
    let claim = |size: u64| {
        let mut lie = f[..4].to_vec();
        lie.push(f[4] | 0xc0);
        lie.extend_from_slice(&size.to_le_bytes());
        lie.extend_from_slice(&f[6..]);
        lie
    };
    // 1 TiB: past the limit, so it goes to the streaming decoder, whose window limit refuses
    // it; below the limit it is decoded apart into a buffer bounded by its one block (not by
    // the claim), and the size mismatch is refused.
    for size in [1u64 << 40, 500_000] {
        let e = run_into(
            &mut zstd_frames::Zstd::with(lim(2), 1 << 20).unwrap(),
            &claim(size),
            4096,
        )
        .unwrap_err();
        assert!(matches!(e, CompressError::Corrupt { .. }), "{size}: {e}");
    }
    assert_eq!(
        run_into(
            &mut zstd_frames::Zstd::with(lim(2), 1 << 20).unwrap(),
            &claim(100),
            7
        )
        .unwrap(),
        d
    );
}
