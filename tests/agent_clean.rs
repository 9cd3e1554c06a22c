//! The `clean` extension end to end: `rivet serve`, confined to the test's own loop devices
//! (`--block-devices` and a private `/dev`), driven by Ironic's own `AgentClient` with
//! `get_clean_steps` and `execute_clean_step`, polled as the conductor polls.

mod common;

use std::path::Path;

use common::disks::{assert_clean, blkid, flush, make_fs, run, sfdisk, tempdir};
use common::{ironic_python, loop_devices_available, AgentProc, LoopDev};
use serde_json::{json, Value};

const MIB: u64 = 1 << 20;
const TOKEN: &str = "clean-token-0123456789abcdef0123456789abcdef";

/// What Ironic 39's `agent_add_clean_params` puts in driver_internal_info.
fn ironic_defaults() -> Value {
    json!({"agent_erase_devices_iterations": 1, "agent_erase_devices_zeroize": true,
           "agent_continue_if_secure_erase_failed": false,
           "agent_continue_if_ata_erase_failed": false,
           "agent_enable_nvme_secure_erase": true, "agent_enable_ata_secure_erase": true,
           "disk_erasure_concurrency": 4, "agent_erase_skip_read_only": false})
}

fn clean(py: &str, a: &AgentProc, step: &str, dii: &Value, properties: &Value) -> (Value, String) {
    clean_args(py, a, step, dii, properties, &[])
}

fn clean_args(
    py: &str,
    a: &AgentProc,
    step: &str,
    dii: &Value,
    properties: &Value,
    extra: &[&str],
) -> (Value, String) {
    let (dii, properties) = (dii.to_string(), properties.to_string());
    let mut args = vec!["--scenario", "clean", "--step", step, "--dii", &dii];
    args.extend(["--properties", &properties, "--timeout", "300"]);
    args.extend(extra);
    let (_, v, diag) = common::drive_steps(py, a, TOKEN, &args);
    (v, diag)
}

/// A GPT disk holding vfat, ext4, swap and an LVM physical volume; returns the ranges.
fn gpt_with_filesystems(dir: &Path) -> (LoopDev, Vec<(u64, u64)>) {
    let disk = LoopDev::sparse(dir, "gpt.img", 160 * MIB, &[]);
    sfdisk(
        &disk.dev,
        "label: gpt\nsize=33MiB\nsize=32MiB\nsize=16MiB\nsize=32MiB\n",
    );
    let parts: [(u64, u64, &[&str]); 4] = [
        (1, 33, &["mkfs.vfat"]),
        (34, 32, &["mkfs.ext4", "-q", "-F"]),
        (66, 16, &["mkswap"]),
        (82, 32, &["pvcreate", "-ff", "-y"]),
    ];
    let mut ranges = vec![];
    for (start, size, mk) in parts {
        make_fs(&disk, start * MIB, size * MIB, mk);
        ranges.push((start * MIB, size * MIB));
    }
    flush(&disk.dev);
    (disk, ranges)
}

/// An MBR disk with one ext4 partition.
fn mbr_with_ext4(dir: &Path) -> (LoopDev, Vec<(u64, u64)>) {
    let disk = LoopDev::sparse(dir, "mbr.img", 48 * MIB, &[]);
    sfdisk(&disk.dev, "label: dos\nstart=2048, size=32MiB, type=83\n");
    make_fs(&disk, MIB, 32 * MIB, &["mkfs.ext4", "-q", "-F"]);
    flush(&disk.dev);
    (disk, vec![(MIB, 32 * MIB)])
}

fn filled(dir: &Path, name: &str, size: u64, byte: u8, losetup: &[&str]) -> LoopDev {
    let l = LoopDev::sparse(dir, name, size, losetup);
    std::fs::write(&l.backing, vec![byte; size as usize]).unwrap();
    flush(&l.dev);
    l
}

#[test]
fn metadata_then_full_erase_through_ironics_client() {
    if !loop_devices_available("clean_metadata_then_full") {
        return;
    }
    let Some(py) = ironic_python("clean_metadata_then_full") else {
        return;
    };
    let dir = tempdir();
    let (gpt, gpt_ranges) = gpt_with_filesystems(dir.path());
    let (mbr, mbr_ranges) = mbr_with_ext4(dir.path());
    let k4 = filled(
        dir.path(),
        "k4.img",
        16 * MIB,
        0x5a,
        &["--sector-size", "4096"],
    );
    let kept = filled(dir.path(), "kept.img", 8 * MIB, 0xab, &[]);
    let devs = [&*gpt.dev, &*mbr.dev, &*k4.dev, &*kept.dev];
    let a = AgentProc::start_private(dir.path(), &devs, &["--agent-token", TOKEN]);
    let props = json!({"skip_block_devices": [{"name": kept.dev.display().to_string()}]});

    let (v, diag) = clean(
        &py,
        &a,
        "erase_devices_metadata",
        &ironic_defaults(),
        &props,
    );
    assert_eq!(v["ok"], true, "{diag}");
    let prio = |n: &str| {
        v["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["step"] == n)
            .map(|s| s["priority"].clone())
    };
    assert_eq!(
        (prio("erase_devices_metadata"), prio("erase_devices")),
        (Some(json!(99)), Some(json!(10)))
    );
    assert_eq!(v["version"], json!({"generic_hardware_manager": "1.2"}));
    let f = &v["final"];
    assert_eq!(f["command_status"], "SUCCEEDED", "{diag}");
    assert_eq!(f["command_result"]["clean_result"], Value::Null);
    assert_eq!(
        f["command_result"]["clean_step"]["step"],
        "erase_devices_metadata"
    );
    assert_clean(&gpt, &gpt_ranges);
    assert_clean(&mbr, &mbr_ranges);
    // The first and last 5 sectors of the 4K-sector disk are zero.
    let k = k4.read();
    assert!(
        k[..5 * 4096].iter().all(|&b| b == 0) && k[k.len() - 5 * 4096..].iter().all(|&b| b == 0)
    );
    assert!(
        kept.read().iter().all(|&b| b == 0xab),
        "a skipped disk is untouched"
    );

    // Full erase: one random pass, then zeros; every byte of every erased disk reads zero.
    std::fs::write(&mbr.backing, vec![0x77u8; 48 * MIB as usize]).unwrap();
    flush(&mbr.dev);
    let (v, diag) = clean(&py, &a, "erase_devices", &ironic_defaults(), &props);
    let f = &v["final"];
    assert_eq!(f["command_status"], "SUCCEEDED", "{diag}");
    let result = f["command_result"]["clean_result"].as_object().unwrap();
    for d in [&gpt, &mbr, &k4] {
        assert_eq!(
            result.get(&d.dev.display().to_string()),
            Some(&Value::Null),
            "{diag}"
        );
        flush(&d.dev);
        assert!(
            d.read().iter().all(|&b| b == 0),
            "{} not zeroed",
            d.dev.display()
        );
    }
    assert!(!result.contains_key(&kept.dev.display().to_string()));
    assert!(
        kept.read().iter().all(|&b| b == 0xab),
        "a skipped disk is untouched"
    );
    assert_eq!(blkid(&gpt.dev), None);
}

#[test]
fn the_random_pass_really_writes_random_data() {
    if !loop_devices_available("clean_random_pass") {
        return;
    }
    let Some(py) = ironic_python("clean_random_pass") else {
        return;
    };
    let dir = tempdir();
    let d = filled(dir.path(), "r.img", 12 * MIB, 0xaa, &[]);
    let a = AgentProc::start_private(dir.path(), &[&d.dev], &["--agent-token", TOKEN]);
    let mut dii = ironic_defaults();
    dii["agent_erase_devices_zeroize"] = json!(false);
    let (v, diag) = clean(&py, &a, "erase_devices", &dii, &json!({}));
    assert_eq!(v["final"]["command_status"], "SUCCEEDED", "{diag}");
    flush(&d.dev);
    let data = d.read();
    for block in data.chunks(4096) {
        assert!(
            block.iter().any(|&x| x != 0xaa) && block.iter().filter(|&&x| x == 0).count() < 256,
            "a block was not overwritten with random data"
        );
    }
}

#[test]
fn read_only_disks_version_mismatch_and_unknown_steps() {
    if !loop_devices_available("clean_read_only") {
        return;
    }
    let Some(py) = ironic_python("clean_read_only") else {
        return;
    };
    let dir = tempdir();
    let file = dir.path().join("ro.img");
    std::fs::write(&file, vec![0xabu8; 8 * MIB as usize]).unwrap();
    let out = run("losetup", &["-f", "--show", "-r", file.to_str().unwrap()]);
    let ro = LoopDev {
        dev: String::from_utf8(out.stdout).unwrap().trim().into(),
        backing: file.clone(),
    };
    let a = AgentProc::start_private(dir.path(), &[&ro.dev], &["--agent-token", TOKEN]);

    let (v, diag) = clean(&py, &a, "erase_devices", &ironic_defaults(), &json!({}));
    let f = &v["final"];
    assert_eq!(f["command_status"], "FAILED", "{diag}");
    assert_eq!(f["command_error"]["type"], "BlockDeviceEraseError");
    assert_eq!(
        f["command_error"]["details"],
        format!(
            "Failed to invoke erase of device {} as the device is flagged read-only, and the \
             conductor has not signaled this is a permitted case.",
            ro.dev.display()
        )
    );
    let mut dii = ironic_defaults();
    dii["agent_erase_skip_read_only"] = json!(true);
    let (v, diag) = clean(&py, &a, "erase_devices", &dii, &json!({}));
    assert_eq!(v["final"]["command_status"], "SUCCEEDED", "{diag}");
    assert!(std::fs::read(&file).unwrap().iter().all(|&b| b == 0xab));

    let (v, diag) = clean_args(
        &py,
        &a,
        "erase_devices_metadata",
        &ironic_defaults(),
        &json!({}),
        &["--version", r#"{"generic_hardware_manager": "1.0"}"#],
    );
    assert_eq!(
        v["final"]["command_status"], "CLEAN_VERSION_MISMATCH",
        "{diag}"
    );
    assert_eq!(v["final"]["command_error"]["type"], "VersionMismatch");

    let (v, diag) = clean(&py, &a, "burnin_cpu", &ironic_defaults(), &json!({}));
    assert_eq!(v["final"]["command_status"], "FAILED", "{diag}");
    assert_eq!(
        v["final"]["command_error"]["type"],
        "HardwareManagerMethodNotFound"
    );
    assert_eq!(
        v["final"]["command_error"]["details"],
        "Could not find method: burnin_cpu"
    );
}
