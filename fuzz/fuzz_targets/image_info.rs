//! `image_info` JSON as the conductor sends it: IPA's validation, the typed model, the URL
//! schemes, and the choice of checksum (with checksum files never fetched).
#![no_main]

use libfuzzer_sys::fuzz_target;
use rivet::errors::AgentError;
use rivet::image::checksum::resolve;
use rivet::image::info::{check_url_schemes, ImageInfo};

fuzz_target!(|data: &[u8]| {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    for md5 in [false, true] {
        let Ok(info) = ImageInfo::from_value(&v, md5) else {
            continue;
        };
        let _ = check_url_schemes(&info, info.configdrive.as_deref(), false);
        let _ = info.is_partition_image();
        let mut no_fetch = |u: &str| Err(AgentError::download(u, "not fetched"));
        let _ = resolve(&info, md5, &mut no_fetch);
    }
});
