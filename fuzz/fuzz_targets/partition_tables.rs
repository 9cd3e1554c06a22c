//! GPT and MBR reading behind the bounds, and what rivet does with a table afterwards (the
//! config drive's partition, the backup GPT moved to the end of a larger disk).
#![no_main]

use libfuzzer_sys::fuzz_target;

// The harness lives in the library (rivet::fuzzing) so the corpus replays on stable too.
fuzz_target!(|data: &[u8]| rivet::fuzzing::partition_tables(data));
