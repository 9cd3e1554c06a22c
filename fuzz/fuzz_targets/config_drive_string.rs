//! The `configdrive` argument: gzip+base64 text as Ironic sends it, and a body downloaded
//! from a config drive URL (an image as is, or gzip+base64). At most 64 MiB comes out.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rivet::configdrive::{materialise, MAX_CONFIG_DRIVE_SIZE};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(img) = materialise("node", &text, &|_| Err("no fetch".into())) {
        assert!(img.len() as u64 <= MAX_CONFIG_DRIVE_SIZE);
    }
    let body = data.to_vec();
    if let Ok(img) = materialise("node", "http://h/cd", &|_| Ok(body.clone())) {
        assert!(img.len() as u64 <= MAX_CONFIG_DRIVE_SIZE);
    }
});
