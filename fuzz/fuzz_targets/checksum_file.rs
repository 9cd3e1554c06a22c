//! Checksum files (`*SUMS`: bare hash, GNU and BSD lines), matched against an image URL the
//! input also chooses.
#![no_main]

use libfuzzer_sys::fuzz_target;

// The harness lives in the library (rivet::fuzzing) so the corpus replays on stable too.
fuzz_target!(|data: &[u8]| rivet::fuzzing::checksum_file(data));
