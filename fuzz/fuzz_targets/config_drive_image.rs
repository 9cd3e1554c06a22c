//! Config drive images as rivet reads them back without mounting: ISO 9660 (volume label,
//! directory walk) and vfat (label, openstack/ metadata), and the kind sniffing.
#![no_main]

use libfuzzer_sys::fuzz_target;

// The harness lives in the library (rivet::fuzzing) so the corpus replays on stable too.
fuzz_target!(|data: &[u8]| rivet::fuzzing::config_drive_image(data));
