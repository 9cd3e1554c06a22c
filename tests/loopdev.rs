//! Real block devices: images written to loop devices, read back with real tools (`sgdisk`,
//! `blkid`). Needs root (CI runs as root; elsewhere these skip with a printed reason).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{gpt_image, loop_devices_available, sh, sha256, LoopDev, Route, Server};
use rivet::deploy::pipeline::{write_image_to_path, DeployOptions};
use rivet::disk::partitions::GptFix;
use rivet::image::fetch::{FetchConfig, Progress};
use rivet::image::info::ImageInfo;
use serde_json::json;

const MIB: u64 = 1 << 20;

fn cfg() -> FetchConfig {
    FetchConfig {
        retries: 0,
        retry_interval: Duration::from_millis(10),
        ..FetchConfig::default()
    }
}

#[test]
fn a_gpt_image_lands_bit_for_bit_and_its_backup_header_moves_to_the_end() {
    if !loop_devices_available("gpt_image_on_loop") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let image = Arc::new(gpt_image(dir.path(), 24 * MIB, 21));
    let s = Server::start();
    let url = s.route(
        "/disk.img",
        Route::Bytes {
            data: image.clone(),
            ranges: true,
        },
    );
    let dev = LoopDev::new(dir.path(), "backing", 64 * MIB, 0xA5);
    let dev_s = dev.dev.to_str().unwrap();
    // Before: the image alone, as a file, would leave the backup header mid-disk.
    let info = ImageInfo::from_value(
        &json!({"id": "gpt", "urls": [url], "os_hash_algo": "sha256", "os_hash_value": sha256(&image)}),
        false,
    )
    .unwrap();
    let opts = DeployOptions {
        verify_readback: true,
        ..DeployOptions::default()
    };
    let d = write_image_to_path(
        &info,
        &dev.dev,
        &cfg(),
        &opts,
        Arc::new(Progress::default()),
    )
    .unwrap();
    assert_eq!(d.gpt, GptFix::Moved);
    let on_disk = dev.read();
    // Everything but the GPT headers (sector 1, rewritten with the new backup location) and the
    // protective MBR's size field is the image, bit for bit.
    assert_eq!(&on_disk[..446], &image[..446], "boot code");
    assert_eq!(
        &on_disk[1024..image.len() - 33 * 512],
        &image[1024..image.len() - 33 * 512]
    );
    let (ok, out) = sh("sgdisk", &["-v", dev_s]);
    assert!(ok, "{out}");
    assert!(out.contains("No problems found"), "sgdisk -v: {out}");
    assert!(!out.contains("Creating new GPT"), "{out}");
    let (_, out) = sh("sgdisk", &["-p", dev_s]);
    assert!(out.contains("root"), "the partition must survive: {out}");
    let (ok, out) = sh("blkid", &["-p", "-o", "value", "-s", "PTTYPE", dev_s]);
    assert!(ok && out.trim() == "gpt", "blkid: {out}");
}

#[test]
fn a_raw_image_as_large_as_the_device_lands_bit_for_bit() {
    if !loop_devices_available("raw_full_device") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let image = common::bytes(16 * MIB as usize, 22);
    let s = Server::start();
    let url = s.route(
        "/raw",
        Route::Bytes {
            data: image.clone(),
            ranges: false,
        },
    );
    let dev = LoopDev::new(dir.path(), "backing", 16 * MIB, 0);
    let info = ImageInfo::from_value(
        &json!({"id": "raw", "urls": [url], "checksum": sha256(&image)}),
        false,
    )
    .unwrap();
    let d = write_image_to_path(
        &info,
        &dev.dev,
        &cfg(),
        &DeployOptions::default(),
        Arc::default(),
    )
    .unwrap();
    assert_eq!(d.bytes, 16 * MIB);
    assert!(dev.read() == *image);
}

#[test]
fn a_failed_checksum_leaves_no_partition_table_on_the_device() {
    if !loop_devices_available("failed_checksum_on_loop") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let old = gpt_image(dir.path(), 32 * MIB, 23);
    let dev = LoopDev::new(dir.path(), "backing", 32 * MIB, 0);
    std::fs::write(&dev.dev, &old).unwrap();
    let dev_s = dev.dev.to_str().unwrap();
    let (_, before) = sh("blkid", &["-p", "-o", "value", "-s", "PTTYPE", dev_s]);
    assert_eq!(before.trim(), "gpt", "the old disk had a table");

    let new = Arc::new(gpt_image(dir.path(), 24 * MIB, 24));
    let s = Server::start();
    let url = s.route(
        "/new.img",
        Route::Bytes {
            data: new.clone(),
            ranges: false,
        },
    );
    let info = ImageInfo::from_value(
        &json!({"id": "new", "urls": [url], "os_hash_algo": "sha256", "os_hash_value": "0".repeat(64)}),
        false,
    )
    .unwrap();
    let e = write_image_to_path(
        &info,
        &dev.dev,
        &cfg(),
        &DeployOptions::default(),
        Arc::default(),
    )
    .unwrap_err();
    assert_eq!(e.type_name(), "ImageChecksumError");
    assert!(
        e.details()
            .contains(&format!("location: {dev_s}; image ID: new")),
        "{}",
        e.details()
    );
    let (_, out) = sh("sgdisk", &["-p", dev_s]);
    assert!(
        out.contains("Creating new GPT entries"),
        "a partition table survived: {out}"
    );
    let (_, out) = sh("blkid", &["-p", "-o", "value", "-s", "PTTYPE", dev_s]);
    assert_eq!(out.trim(), "", "blkid still sees a table");
}

#[test]
fn a_device_that_is_too_small_is_refused_and_untouched() {
    if !loop_devices_available("too_small_loop") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let image = Arc::new(gpt_image(dir.path(), 24 * MIB, 25));
    let s = Server::start();
    let url = s.route(
        "/big.img",
        Route::Bytes {
            data: image.clone(),
            ranges: false,
        },
    );
    let dev = LoopDev::new(dir.path(), "backing", 8 * MIB, 0x3C);
    let info = ImageInfo::from_value(
        &json!({"id": "big", "urls": [url], "os_hash_algo": "sha256", "os_hash_value": sha256(&image)}),
        false,
    )
    .unwrap();
    let e = write_image_to_path(
        &info,
        &dev.dev,
        &cfg(),
        &DeployOptions::default(),
        Arc::default(),
    )
    .unwrap_err();
    assert_eq!(e.type_name(), "ImageDownloadOutofSpaceError");
    assert!(
        e.details().contains("device holds only 8388608 bytes"),
        "{}",
        e.details()
    );
    assert!(
        dev.read().iter().all(|&b| b == 0x3C),
        "the device was touched"
    );
}

#[test]
fn a_device_in_use_is_refused() {
    if !loop_devices_available("exclusive_open") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let dev = LoopDev::new(dir.path(), "backing", 8 * MIB, 0);
    // Hold the device exclusively, as a mount would.
    use std::os::unix::fs::OpenOptionsExt;
    let _held = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_EXCL)
        .open(&dev.dev)
        .unwrap();
    let info = ImageInfo::from_value(
        &json!({"id": "x", "urls": ["http://127.0.0.1:9/x"], "checksum": "0".repeat(64)}),
        false,
    )
    .unwrap();
    let e = write_image_to_path(
        &info,
        &dev.dev,
        &cfg(),
        &DeployOptions::default(),
        Arc::default(),
    )
    .unwrap_err();
    assert!(
        e.details().contains("cannot open the device exclusively"),
        "{}",
        e.details()
    );
}
