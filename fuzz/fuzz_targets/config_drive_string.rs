//! The `configdrive` argument: gzip+base64 text as Ironic sends it, and a body downloaded
//! from a config drive URL (an image as is, or gzip+base64). At most 64 MiB comes out.
#![no_main]

use libfuzzer_sys::fuzz_target;

// The harness lives in the library (rivet::fuzzing) so the corpus replays on stable too.
fuzz_target!(|data: &[u8]| rivet::fuzzing::config_drive_string(data));
