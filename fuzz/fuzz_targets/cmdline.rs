//! The kernel command line: `ipa-*` words parsed, then typed as settings the way start-up
//! does (unknown names ignored, bad values an error, never a panic).
#![no_main]

use libfuzzer_sys::fuzz_target;
use rivet::config::{parse_cmdline, Settings};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Ok(mut s) = Settings::defaults() else {
        return;
    };
    for (k, v) in parse_cmdline(&text) {
        let _ = s.set(&k, &v, "the kernel command line");
    }
    let _ = s.fetch_config();
    let _ = s.listen_addr();
});
