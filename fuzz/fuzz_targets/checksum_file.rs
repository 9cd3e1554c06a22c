//! Checksum files (`*SUMS`: bare hash, GNU and BSD lines), matched against an image URL the
//! input also chooses.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rivet::image::checksum::{parse_checksum_file, url_basename, Algorithm};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (name, body) = text.split_once('\n').unwrap_or(("x.img", &text));
    let url = format!("http://h/d/{name}");
    let _ = url_basename(&url);
    if let Ok(hex) = parse_checksum_file(body, "http://h/SHA256SUMS", &url) {
        assert!(matches!(hex.len(), 32 | 64 | 128), "{hex}");
        let _ = Algorithm::from_hex_len(&hex, true);
    }
    let _ = Algorithm::from_name(name);
});
