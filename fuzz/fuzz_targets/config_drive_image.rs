//! Config drive images as rivet reads them back without mounting: ISO 9660 (volume label,
//! directory walk) and vfat (label, openstack/ metadata), and the kind sniffing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rivet::configdrive::{self, iso9660};

fuzz_target!(|data: &[u8]| {
    let _ = configdrive::kind(data);
    let _ = configdrive::label(data);
    let _ = configdrive::check(data);
    let _ = iso9660::volume_label(data);
    if let Ok(files) = iso9660::list_files(data) {
        let total: usize = files.iter().map(|(_, b)| b.len()).sum();
        assert!(total <= data.len() * 64 + (1 << 20), "{total}");
    }
});
