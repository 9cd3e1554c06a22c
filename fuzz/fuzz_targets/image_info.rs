//! `image_info` JSON as the conductor sends it: IPA's validation, the typed model, the URL
//! schemes, and the choice of checksum (with checksum files never fetched).
#![no_main]

use libfuzzer_sys::fuzz_target;

// The harness lives in the library (rivet::fuzzing) so the corpus replays on stable too.
fuzz_target!(|data: &[u8]| rivet::fuzzing::image_info(data));
