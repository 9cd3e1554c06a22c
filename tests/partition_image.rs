//! Partition images through the agent API onto loop devices: IPA's layouts (uefi/gpt and
//! bios/msdos with swap and ephemeral, a config drive partition), the image in the root
//! partition, file systems made, read back with sfdisk/blkid over each partition's range.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use common::{loop_devices_available, sha256, AgentProc, LoopDev, Route, Server};
use serde_json::{json, Value};

const MIB: u64 = 1 << 20;
const T: &str = "partition-token-0123456789abcdef01234567";

fn post(port: u16, body: &Value) -> Value {
    common::post_command(port, T, body)
}

fn sh(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// An ext4 file system image with one file.
fn ext4_image(dir: &Path, mb: u64) -> (Vec<u8>, String) {
    let p = dir.join("root.ext4");
    std::fs::File::create(&p)
        .unwrap()
        .set_len(mb * MIB)
        .unwrap();
    let out = sh(
        "mkfs.ext4",
        &["-q", "-F", "-L", "rootfs", p.to_str().unwrap()],
    );
    let uuid = sh(
        "blkid",
        &["-p", "-s", "UUID", "-o", "value", p.to_str().unwrap()],
    )
    .trim()
    .to_string();
    assert!(!uuid.is_empty(), "{out}");
    (std::fs::read(&p).unwrap(), uuid)
}

fn parts(dev: &Path) -> (String, Vec<(u64, u64, String)>) {
    let v: Value = serde_json::from_str(&sh("sfdisk", &["-J", dev.to_str().unwrap()])).unwrap();
    let label = v["partitiontable"]["label"].as_str().unwrap().to_string();
    let ps = v["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["start"].as_u64().unwrap() * 512,
                p["size"].as_u64().unwrap() * 512,
                p["type"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    (label, ps)
}

fn blkid_of(dev: &Path, start: u64, size: u64) -> String {
    let l = LoopDev::over_range(dev, start, size);
    sh("blkid", &["-p", "-o", "export", l.dev.to_str().unwrap()])
}

#[test]
fn partition_images_in_both_boot_modes() {
    if !loop_devices_available("partition_images") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (img, fs_uuid) = ext4_image(dir.path(), 16);
    let img = Arc::new(img);
    let s = Server::start();
    let url = s.route(
        "/root.ext4",
        Route::Bytes {
            data: img.clone(),
            ranges: false,
        },
    );
    let cd = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/configdrive.b64"),
    )
    .unwrap();

    for (mode, label) in [("uefi", "gpt"), ("bios", "dos")] {
        let dev = LoopDev::new(dir.path(), &format!("disk-{mode}"), 1024 * MIB, 0);
        let agent = AgentProc::start(
            dir.path(),
            &[
                "--agent-token",
                T,
                "--root-device",
                dev.dev.to_str().unwrap(),
            ],
        );
        let info = json!({"id": "part", "urls": [url], "checksum": sha256(&img), "disk_format": "raw",
            "image_type": "partition", "root_mb": 64, "swap_mb": 16, "ephemeral_mb": 32, "ephemeral_format": "ext4",
            "preserve_ephemeral": false, "deploy_boot_mode": mode, "disk_label": if mode == "bios" { "msdos" } else { "gpt" },
            "node_uuid": "1be26c0b-03f2-4d2e-ae87-c02d7f33c123"});
        let v = post(
            agent.port,
            &json!({"name": "standby.prepare_image", "params": {"image_info": info, "configdrive": cd}}),
        );
        assert_eq!(
            v["command_status"],
            "SUCCEEDED",
            "{mode}: {v}\n{}",
            agent.log_text()
        );
        let msg = v["command_result"]["result"].as_str().unwrap();
        assert!(
            msg.starts_with(&format!(
                "prepare_image: image (part) written to device {} root_uuid={fs_uuid}",
                dev.dev.display()
            )),
            "{msg}"
        );
        assert_eq!(
            msg.contains("efi_system_partition_uuid="),
            mode == "uefi",
            "{msg}"
        );
        let (l, ps) = parts(&dev.dev);
        assert_eq!(l, label, "{mode}");
        // uefi: ESP, ephemeral, swap, configdrive, root; bios+msdos: ephemeral, swap, configdrive, root.
        let roles: Vec<&str> = if mode == "uefi" {
            vec!["esp", "eph", "swap", "cd", "root"]
        } else {
            vec!["eph", "swap", "cd", "root"]
        };
        assert_eq!(ps.len(), roles.len(), "{mode}: {ps:?}");
        assert_eq!(ps[0].0, MIB, "{mode}: partitions start at 1 MiB");
        for w in ps.windows(2) {
            assert_eq!(w[0].0 + w[0].1, w[1].0, "{mode}: partitions are contiguous");
        }
        let root = ps.last().unwrap();
        assert_eq!(root.1, 64 * MIB);
        let b = blkid_of(&dev.dev, root.0, root.1);
        assert!(
            b.contains(&format!("UUID={fs_uuid}")) && b.contains("TYPE=ext4"),
            "{mode}: {b} {ps:?} {}",
            agent.log_text()
        );
        let off = usize::try_from(root.0).unwrap();
        assert!(
            dev.read()[off..off + img.len()] == img[..],
            "{mode}: root partition differs from the image"
        );
        let idx = |r: &str| roles.iter().position(|x| *x == r).unwrap();
        let swap = ps[idx("swap")].clone();
        assert!(
            blkid_of(&dev.dev, swap.0, swap.1).contains("TYPE=swap"),
            "{mode}"
        );
        let eph = ps[idx("eph")].clone();
        let b = blkid_of(&dev.dev, eph.0, eph.1);
        assert!(
            b.contains("TYPE=ext4") && b.contains("LABEL=ephemeral0"),
            "{mode}: {b}"
        );
        let cdp = ps[idx("cd")].clone();
        assert!(
            blkid_of(&dev.dev, cdp.0, cdp.1).contains("LABEL=config-2"),
            "{mode}"
        );
        if mode == "uefi" {
            let esp = ps[0].clone();
            assert_eq!(esp.1, 550 * MIB);
            let b = blkid_of(&dev.dev, esp.0, esp.1);
            assert!(
                b.contains("TYPE=vfat") && b.contains("LABEL=efi-part"),
                "{b}"
            );
        }
        let v = post(
            agent.port,
            &json!({"name": "standby.get_partition_uuids", "params": {}}),
        );
        let r = &v["command_result"];
        assert_eq!(r["root uuid"], fs_uuid.as_str());
        let p = dev.dev.display().to_string();
        assert_eq!(r["partitions"]["root"], format!("{p}p{}", roles.len()));
        assert_eq!(
            r["efi system partition uuid"].is_string(),
            mode == "uefi",
            "{r}"
        );
    }
}

#[test]
fn a_root_partition_too_small_is_refused_before_anything_is_written() {
    if !loop_devices_available("partition_too_small") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (img, _) = ext4_image(dir.path(), 20);
    let img = Arc::new(img);
    let s = Server::start();
    let url = s.route(
        "/root.ext4",
        Route::Bytes {
            data: img.clone(),
            ranges: false,
        },
    );
    let dev = LoopDev::new(dir.path(), "disk", 256 * MIB, 0x5A);
    let agent = AgentProc::start(
        dir.path(),
        &[
            "--agent-token",
            T,
            "--root-device",
            dev.dev.to_str().unwrap(),
        ],
    );
    let info = json!({"id": "part", "urls": [url], "checksum": sha256(&img), "image_type": "partition",
        "root_mb": 10, "swap_mb": 0, "ephemeral_mb": 0, "deploy_boot_mode": "bios"});
    let v = post(
        agent.port,
        &json!({"name": "standby.prepare_image", "params": {"image_info": info}}),
    );
    assert_eq!(v["command_status"], "FAILED");
    assert_eq!(v["command_error"]["type"], "InvalidCommandParamsError");
    assert_eq!(v["command_error"]["details"], "Root partition is too small for requested image. Image virtual size: 20 MB, Root size: 10 MB");
    assert!(
        dev.read().iter().all(|&b| b == 0x5A),
        "something was written"
    );
}
