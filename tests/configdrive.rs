//! Config drives on loop devices, read back with real tools through loop devices over each
//! partition's byte range (this kernel makes no partition nodes and mounts no iso9660/vfat):
//! `sgdisk`, `sfdisk -J`, `blkid`, `isoinfo`, `mtype`.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use base64::Engine;
use common::{gpt_image, loop_devices_available, sh, sha256, LoopDev, Route, Server};

const MIB: u64 = 1 << 20;

fn fixture_b64() -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/configdrive.b64"),
    )
    .unwrap()
}

/// Deploys `image` (served over HTTP) with `--configdrive` onto `dev` through the CLI.
fn deploy(
    dev: &Path,
    image: &Arc<Vec<u8>>,
    configdrive: &str,
    extra: &[&str],
) -> (bool, String, String) {
    let s = Server::start();
    let url = s.route(
        "/disk.img",
        Route::Bytes {
            data: image.clone(),
            ranges: false,
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let cd = dir.path().join("cd.txt");
    std::fs::write(&cd, configdrive).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_rivet"))
        .args([
            "deploy",
            "--url",
            &url,
            "--device",
            dev.to_str().unwrap(),
            "--checksum",
            &sha256(image),
            "--retries",
            "0",
        ])
        .arg("--configdrive")
        .arg(if configdrive.starts_with("http") {
            configdrive.to_string()
        } else {
            format!("@{}", cd.display())
        })
        .args(extra)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .last()
            .unwrap_or("")
            .to_string(),
    )
}

/// (start, size) in bytes of each partition, from `sfdisk -J`.
fn partitions(dev: &Path) -> Vec<(u64, u64)> {
    let (ok, out) = sh("sfdisk", &["-J", dev.to_str().unwrap()]);
    assert!(ok, "sfdisk -J: {out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let ss = v["partitiontable"]["sectorsize"].as_u64().unwrap_or(512);
    v["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["start"].as_u64().unwrap() * ss,
                p["size"].as_u64().unwrap() * ss,
            )
        })
        .collect()
}

fn blkid(dev: &Path) -> String {
    sh("blkid", &["-p", "-o", "export", dev.to_str().unwrap()]).1
}

#[test]
fn gpt_image_smaller_than_the_disk_gets_a_config_drive_at_the_end() {
    if !loop_devices_available("configdrive_gpt") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let image = Arc::new(gpt_image(dir.path(), 24 * MIB, 71));
    let dev = LoopDev::new(dir.path(), "disk", 256 * MIB, 0);
    let (ok, out, err) = deploy(&dev.dev, &image, &fixture_b64(), &[]);
    assert!(ok, "{out}{err}");
    let (ok, v) = sh("sgdisk", &["-v", dev.dev.to_str().unwrap()]);
    assert!(ok && v.contains("No problems found"), "{v}");
    let parts = partitions(&dev.dev);
    assert_eq!(parts.len(), 2, "{parts:?}");
    let (start, size) = parts[1];
    assert_eq!(size, 64 * MIB);
    assert!(start + size <= 256 * MIB && start > 24 * MIB);
    let p = LoopDev::over_range(&dev.dev, start, size);
    let b = blkid(&p.dev);
    assert!(
        b.contains("TYPE=iso9660") && b.contains("LABEL=config-2"),
        "{b}"
    );
    let (ok, info) = sh("isoinfo", &["-d", "-i", p.dev.to_str().unwrap()]);
    assert!(ok && info.contains("Volume id: config-2"), "{info}");
    let (ok, meta) = sh(
        "isoinfo",
        &[
            "-R",
            "-x",
            "/openstack/latest/meta_data.json",
            "-i",
            p.dev.to_str().unwrap(),
        ],
    );
    assert!(ok && meta.contains("uuid"), "{meta}");

    // The kernel sees what rivet wrote, although this loop device has no partition scanning
    // (BLKPG, as partprobe): lsblk lists the image's partition and the config drive. lsblk
    // takes labels from udev, which does not run here, so the label is read through the
    // kernel's new partition node instead.
    let name = dev.dev.file_name().unwrap().to_str().unwrap().to_string();
    let (ok, listed) = sh(
        "lsblk",
        &["-rnbo", "NAME,START,SIZE,LABEL", dev.dev.to_str().unwrap()],
    );
    assert!(ok, "{listed}");
    let rows: Vec<Vec<&str>> = listed.lines().map(|l| l.split(' ').collect()).collect();
    let row = |n: u32| rows.iter().find(|r| r[0] == format!("{name}p{n}"));
    assert!(row(1).is_some(), "{listed}");
    let cd = row(2).unwrap_or_else(|| panic!("{listed}"));
    assert_eq!(cd[1].parse::<u64>().unwrap() * 512, start, "{listed}");
    assert_eq!(cd[2].parse::<u64>().unwrap(), size, "{listed}");
    let node = format!("/dev/{name}p2");
    let b = blkid(Path::new(&node));
    assert!(b.contains("LABEL=config-2"), "{node}: {b}");
}

#[test]
fn mbr_images_and_their_limits() {
    if !loop_devices_available("configdrive_mbr") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mk_mbr = |name: &str, script: &str| {
        let p = dir.path().join(name);
        std::fs::File::create(&p)
            .unwrap()
            .set_len(32 * MIB)
            .unwrap();
        let mut c = Command::new("sfdisk")
            .arg("-q")
            .arg(&p)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        c.stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        assert!(c.wait().unwrap().success());
        Arc::new(std::fs::read(&p).unwrap())
    };
    let one = mk_mbr("one.img", "label: dos\nstart=2048, size=20480, type=83\n");
    let dev = LoopDev::new(dir.path(), "disk", 128 * MIB, 0);
    let (ok, out, err) = deploy(&dev.dev, &one, &fixture_b64(), &[]);
    assert!(ok, "{out}{err}");
    let parts = partitions(&dev.dev);
    assert_eq!(parts.len(), 2, "{parts:?}");
    assert_eq!(parts[1], (64 * MIB, 64 * MIB));
    let p = LoopDev::over_range(&dev.dev, parts[1].0, parts[1].1);
    assert!(blkid(&p.dev).contains("LABEL=config-2"));
    drop(p);
    // Four primaries already: IPA's error.
    let four = mk_mbr(
        "four.img",
        "label: dos\nstart=2048, size=2048\nstart=4096, size=2048\nstart=6144, size=2048\nstart=8192, size=2048\n",
    );
    let dev = LoopDev::new(dir.path(), "disk4", 128 * MIB, 0);
    let (ok, _, err) = deploy(&dev.dev, &four, &fixture_b64(), &[]);
    assert!(!ok);
    assert_eq!(
        err,
        format!("rivet: DeploymentError: Config drive cannot be created for node local. Disk ({}) uses MBR partitioning and already has 4 primary partitions.", dev.dev.display())
    );
}

#[test]
fn an_existing_config_2_partition_is_reused() {
    if !loop_devices_available("configdrive_reuse") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // An image that already has a config-2 partition: made by a first deploy on a small disk.
    let small = LoopDev::new(dir.path(), "small", 128 * MIB, 0);
    let base = Arc::new(gpt_image(dir.path(), 24 * MIB, 72));
    assert!(deploy(&small.dev, &base, &fixture_b64(), &[]).0);
    let old = partitions(&small.dev);
    assert_eq!(old.len(), 2);
    let image = Arc::new(small.read());
    drop(small);
    // A second config drive with other content, built here with genisoimage.
    let tree = dir.path().join("tree/openstack/latest");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("meta_data.json"), "{\"uuid\": \"second\"}").unwrap();
    let iso = dir.path().join("second.iso");
    let (ok, out) = sh(
        "genisoimage",
        &[
            "-quiet",
            "-o",
            iso.to_str().unwrap(),
            "-V",
            "config-2",
            "-R",
            "-J",
            dir.path().join("tree").to_str().unwrap(),
        ],
    );
    assert!(ok, "{out}");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &std::fs::read(&iso).unwrap()).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(gz.finish().unwrap());
    // On a bigger disk the existing partition is reused, not a new one made at the end.
    let dev = LoopDev::new(dir.path(), "big", 256 * MIB, 0);
    let (ok, out, err) = deploy(&dev.dev, &image, &b64, &[]);
    assert!(ok, "{out}{err}");
    let now = partitions(&dev.dev);
    assert_eq!(now, old, "the config-2 partition was not reused");
    let p = LoopDev::over_range(&dev.dev, now[1].0, now[1].1);
    let (_, meta) = sh(
        "isoinfo",
        &[
            "-R",
            "-x",
            "/openstack/latest/meta_data.json",
            "-i",
            p.dev.to_str().unwrap(),
        ],
    );
    assert!(meta.contains("second"), "{meta}");
}

#[test]
fn vfat_rebuild_is_readable_with_mtools() {
    if !loop_devices_available("configdrive_vfat") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let image = Arc::new(gpt_image(dir.path(), 24 * MIB, 73));
    let dev = LoopDev::new(dir.path(), "disk", 128 * MIB, 0);
    let (ok, out, err) = deploy(
        &dev.dev,
        &image,
        &fixture_b64(),
        &["--config-drive-rebuild"],
    );
    assert!(ok, "{out}{err}");
    let parts = partitions(&dev.dev);
    let p = LoopDev::over_range(&dev.dev, parts[1].0, parts[1].1);
    let b = blkid(&p.dev);
    assert!(
        b.contains("TYPE=vfat") && b.contains("LABEL=CONFIG-2"),
        "{b}"
    );
    let (ok, meta) = sh(
        "mtype",
        &[
            "-i",
            p.dev.to_str().unwrap(),
            "::/openstack/latest/meta_data.json",
        ],
    );
    assert!(ok && meta.contains("uuid"), "{meta}");
}

#[test]
fn bad_config_drives_fail_clearly_before_anything_is_written() {
    if !loop_devices_available("configdrive_errors") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let image = Arc::new(gpt_image(dir.path(), 24 * MIB, 74));
    let dev = LoopDev::new(dir.path(), "disk", 256 * MIB, 0);
    let (ok, _, err) = deploy(&dev.dev, &image, "not base64!!", &[]);
    assert!(!ok);
    assert!(err.starts_with("rivet: DeploymentError: Config drive for node local is not base64 encoded or the content is malformed."), "{err}");
    // Oversized: 65 MiB of zeros, gzipped.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &vec![0u8; 65 * MIB as usize]).unwrap();
    let big = base64::engine::general_purpose::STANDARD.encode(gz.finish().unwrap());
    let (ok, _, err) = deploy(&dev.dev, &image, &big, &[]);
    assert!(!ok);
    assert_eq!(err, "rivet: DeploymentError: Config drive size exceeds maximum limit of 64MiB. Size of the given config drive is 65 MiB for node local.");
    // A URL that 404s.
    let s = Server::start();
    let url = s.route("/cd", Route::Status(404));
    let (ok, _, err) = deploy(&dev.dev, &image, &url, &[]);
    assert!(!ok);
    assert!(err.starts_with(&format!("rivet: DeploymentError: Can't download the configdrive content for node local from '{url}'.")), "{err}");
    // Each was refused before the image was written: the disk is exactly as it was.
    assert!(dev.read().iter().all(|&b| b == 0), "nothing may be written");
}
