//! qcow2 header and tables: the format inspector's checks, then the streaming converter fed
//! the input as a file arriving in pieces. Guest writes must stay inside the virtual size.
#![no_main]

use libfuzzer_sys::fuzz_target;

// The harness lives in the library (rivet::fuzzing) so the corpus replays on stable too.
fuzz_target!(|data: &[u8]| rivet::fuzzing::qcow2(data));
