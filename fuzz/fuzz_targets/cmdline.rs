//! The kernel command line: `ipa-*` words parsed, then typed as settings the way start-up
//! does (unknown names ignored, bad values an error, never a panic).
#![no_main]

use libfuzzer_sys::fuzz_target;

// The harness lives in the library (rivet::fuzzing) so the corpus replays on stable too.
fuzz_target!(|data: &[u8]| rivet::fuzzing::cmdline(data));
