//! Compressed images: gzip/xz/zstd sniffing, the decoder fed in pieces, the format inside.
#![no_main]

use libfuzzer_sys::fuzz_target;

// The harness lives in the library (rivet::fuzzing) so the corpus replays on stable too.
fuzz_target!(|data: &[u8]| rivet::fuzzing::compressed(data));
