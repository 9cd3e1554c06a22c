//! The erase engine on real loop devices, each run of it confined to a private mount
//! namespace whose /dev holds only the test's own loop devices (`PrivateDev`), through the
//! `erase_probe` example (the lead will switch these to `rivet serve` and the clean API).
//!
//! Partitions are reached by byte range (the kernel here parses no partition tables):
//! filesystems are made on loop devices over ranges of the disk's backing file, and
//! checked the same way afterwards with `blkid -p`.

mod common;

use std::path::{Path, PathBuf};

use common::disks::{
    add_kernel_partition, assert_clean, blkid, flush, have, kernel_partitions, make_fs, ok, run,
    sfdisk, tempdir,
};
use common::{example_bin, loop_devices_available, LoopDev, PrivateDev};
use serde_json::Value;

const MIB: u64 = 1 << 20;

fn probe(devs: &[&Path], args: &[&str]) -> Value {
    let bin = example_bin("erase_probe");
    let mut all: Vec<&str> = args.to_vec();
    let names: Vec<String> = devs.iter().map(|d| d.display().to_string()).collect();
    all.extend(names.iter().map(String::as_str));
    let out = PrivateDev::run(devs, &bin, &all);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or("");
    serde_json::from_str(line).unwrap_or_else(|_| {
        panic!(
            "erase_probe {all:?}: no JSON (exit {:?})\nstdout: {stdout}\nstderr: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Deletes the disk's kernel partitions on drop, even when the test failed (a loop device
/// keeps its BLKPG partitions after it is detached). Declare it after the `LoopDev`.
struct DropPartitions(PathBuf);

impl Drop for DropPartitions {
    fn drop(&mut self) {
        let _ = run("partx", &["-d", &self.0.display().to_string()]);
    }
}

#[test]
fn metadata_erase_leaves_nothing_on_a_gpt_disk() {
    if !loop_devices_available("metadata_erase_leaves_nothing_on_a_gpt_disk") {
        return;
    }
    let dir = tempdir();
    let disk = LoopDev::sparse(dir.path(), "gpt.img", 600 * MIB, &[]);
    sfdisk(
        &disk.dev,
        "label: gpt\nsize=33MiB\nsize=32MiB\nsize=16MiB\nsize=32MiB\nsize=320MiB\nsize=128MiB\n",
    );
    let mut fs: Vec<(u64, u64, Vec<&str>)> = vec![
        (1, 33, vec!["mkfs.vfat"]),
        (34, 32, vec!["mkfs.ext4", "-q", "-F"]),
        (66, 16, vec!["mkswap"]),
        (82, 32, vec!["pvcreate", "-ff", "-y"]),
    ];
    if have("mkfs.xfs") {
        fs.push((114, 320, vec!["mkfs.xfs", "-q", "-f"]));
    }
    if have("mkfs.btrfs") {
        fs.push((434, 128, vec!["mkfs.btrfs", "-q", "-f"]));
    }
    let mut ranges = vec![];
    for (start, size, mk) in &fs {
        make_fs(&disk, start * MIB, size * MIB, mk);
        ranges.push((start * MIB, size * MIB));
    }
    flush(&disk.dev);
    let _parts = DropPartitions(disk.dev.clone());
    add_kernel_partition(&disk.dev, 1, MIB, 33 * MIB);
    add_kernel_partition(&disk.dev, 2, 34 * MIB, 32 * MIB);
    assert!(blkid(&disk.dev).unwrap().contains("PTTYPE=gpt"));

    let r = probe(&[&disk.dev], &["metadata"]);
    assert_eq!(r["ok"], true, "{r}");
    assert_clean(&disk, &ranges);
    assert_eq!(
        kernel_partitions(&disk.dev),
        Vec::<String>::new(),
        "kernel partitions left"
    );
}

#[test]
fn express_erase_leaves_nothing_on_an_mbr_disk_with_logical_partitions() {
    if !loop_devices_available("express_erase_leaves_nothing_on_an_mbr_disk") {
        return;
    }
    let dir = tempdir();
    let disk = LoopDev::sparse(dir.path(), "mbr.img", 128 * MIB, &[]);
    sfdisk(
        &disk.dev,
        "label: dos\nsize=32MiB, type=83\ntype=5\nsize=30MiB, type=83\nsize=30MiB, type=82\n",
    );
    let dump =
        String::from_utf8(run("sfdisk", &["-d", &disk.dev.display().to_string()]).stdout).unwrap();
    // Starts and sizes from sfdisk's own dump (sectors): p1, the extended p2, logicals p5, p6.
    let field = |l: &str, key: &str| -> u64 {
        l.split(key)
            .nth(1)
            .unwrap()
            .split(',')
            .next()
            .unwrap()
            .trim()
            .parse::<u64>()
            .unwrap()
            * 512
    };
    let parts: Vec<(u64, u64)> = dump
        .lines()
        .filter(|l| l.contains("start="))
        .map(|l| (field(l, "start="), field(l, "size=")))
        .collect();
    assert_eq!(parts.len(), 4, "{dump}");
    make_fs(&disk, parts[0].0, parts[0].1, &["mkfs.ext4", "-q", "-F"]);
    make_fs(&disk, parts[2].0, parts[2].1, &["mkfs.vfat"]);
    make_fs(&disk, parts[3].0, parts[3].1, &["mkswap"]);
    flush(&disk.dev);
    assert!(blkid(&disk.dev).unwrap().contains("PTTYPE=dos"));

    let r = probe(&[&disk.dev], &["express"]);
    assert_eq!(r["ok"], true, "{r}");
    assert_clean(&disk, &parts);
}

#[test]
fn metadata_erase_on_a_4k_sector_disk() {
    if !loop_devices_available("metadata_erase_on_a_4k_sector_disk") {
        return;
    }
    let dir = tempdir();
    let disk = LoopDev::sparse(dir.path(), "4k.img", 96 * MIB, &["--sector-size", "4096"]);
    let ss = run("blockdev", &["--getss", &disk.dev.display().to_string()]);
    assert_eq!(String::from_utf8_lossy(&ss.stdout).trim(), "4096");
    sfdisk(&disk.dev, "label: gpt\nsize=40MiB\nsize=16MiB\n");
    let ext4 = make_fs(&disk, MIB, 40 * MIB, &["mkfs.ext4", "-q", "-F"]);
    assert!(ext4.contains("ext4"));
    make_fs(&disk, 41 * MIB, 16 * MIB, &["mkswap"]);
    flush(&disk.dev);
    let before = blkid(&disk.dev).unwrap();
    assert!(before.contains("PTTYPE=gpt"), "{before}");

    let r = probe(&[&disk.dev], &["metadata"]);
    assert_eq!(r["ok"], true, "{r}");
    assert_clean(&disk, &[(MIB, 40 * MIB), (41 * MIB, 16 * MIB)]);
    // The backup GPT (last 5 sectors of 4 KiB) is gone too.
    let img = std::fs::read(&disk.backing).unwrap();
    assert!(img[img.len() - 5 * 4096..].iter().all(|&b| b == 0));
}

#[test]
fn read_only_device_fails_unless_skipped() {
    if !loop_devices_available("read_only_device_fails_unless_skipped") {
        return;
    }
    let dir = tempdir();
    let file = dir.path().join("ro.img");
    std::fs::write(&file, vec![0xab; 8 * MIB as usize]).unwrap();
    let ro = LoopDev::sparse(dir.path(), "unused.img", 0, &[]);
    drop(ro);
    let out = run(
        "losetup",
        &["-f", "--show", "-r", &file.display().to_string()],
    );
    let dev = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    let guard = LoopDev {
        dev: dev.clone(),
        backing: file.clone(),
    };

    let r = probe(&[&dev], &["devices"]);
    assert_eq!(r["ok"], false);
    assert_eq!(r["type"], "BlockDeviceEraseError");
    assert_eq!(
        r["details"],
        format!(
            "Failed to invoke erase of device {} as the device is flagged read-only, and the \
             conductor has not signaled this is a permitted case.",
            dev.display()
        )
    );
    let r = probe(&[&dev], &["devices", "--skip-read-only"]);
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["result"][dev.display().to_string()], Value::Null);
    assert_eq!(r["methods"][dev.display().to_string()], "Skipped(ReadOnly)");
    // IPA's metadata step skips read-only devices silently.
    let r = probe(&[&dev], &["metadata"]);
    assert_eq!(r["ok"], true, "{r}");
    assert!(std::fs::read(&file).unwrap().iter().all(|&b| b == 0xab));
    drop(guard);
}

fn filled(dir: &Path, name: &str, size: usize, byte: u8) -> LoopDev {
    let l = LoopDev::sparse(dir, name, size as u64, &[]);
    std::fs::write(&l.backing, vec![byte; size]).unwrap();
    flush(&l.dev);
    l
}

#[test]
fn overwrite_zeroes_everything_on_several_disks() {
    if !loop_devices_available("overwrite_zeroes_everything_on_several_disks") {
        return;
    }
    let dir = tempdir();
    let a_size = 37 * MIB as usize + 1536;
    let a = filled(dir.path(), "a.img", a_size, 0xaa);
    let b = filled(dir.path(), "b.img", 20 * MIB as usize, 0x55);
    let r = probe(&[&a.dev, &b.dev], &["devices", "--concurrency", "2"]);
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["bytes"], 2 * (a_size as u64 + 20 * MIB));
    assert!(a.read().iter().all(|&x| x == 0), "disk a not zeroed");
    assert!(b.read().iter().all(|&x| x == 0), "disk b not zeroed");

    // The zero pass by writes instead of BLKZEROOUT.
    std::fs::write(&a.backing, vec![0xaa; a_size]).unwrap();
    flush(&a.dev);
    let r = probe(
        &[&a.dev],
        &["devices", "--zero-writes", "--iterations", "2"],
    );
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["bytes"], 3 * a_size as u64);
    assert!(a.read().iter().all(|&x| x == 0), "zero writes left data");
}

#[test]
fn random_only_overwrite_leaves_random_data() {
    if !loop_devices_available("random_only_overwrite_leaves_random_data") {
        return;
    }
    let dir = tempdir();
    let size = 9 * MIB as usize + 4096;
    let a = filled(dir.path(), "r.img", size, 0xaa);
    let r = probe(&[&a.dev], &["devices", "--no-zeroize"]);
    assert_eq!(r["ok"], true, "{r}");
    let data = a.read();
    assert_eq!(data.len(), size);
    let zeros = data.iter().filter(|&&x| x == 0).count();
    assert!(zeros < size / 100, "{zeros} zero bytes");
    for block in data.chunks(4096) {
        assert!(
            block.iter().any(|&x| x != 0xaa) && block.iter().any(|&x| x != 0),
            "a block was not overwritten"
        );
    }
}

/// A mounted ext4 on kernel partition 1 of `disk`; unmounted and the partition deleted on
/// drop (a loop device keeps its BLKPG partitions after it is detached).
struct Mounted {
    point: PathBuf,
    disk: PathBuf,
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = run("umount", &[&self.point.display().to_string()]);
        let _ = run(
            "partx",
            &["-d", "--nr", "1", &self.disk.display().to_string()],
        );
    }
}

#[test]
fn a_device_with_a_mounted_partition_is_refused() {
    if !loop_devices_available("a_device_with_a_mounted_partition_is_refused") {
        return;
    }
    let dir = tempdir();
    let disk = LoopDev::sparse(dir.path(), "m.img", 64 * MIB, &[]);
    sfdisk(&disk.dev, "label: gpt\nsize=32MiB\n");
    add_kernel_partition(&disk.dev, 1, MIB, 32 * MIB);
    let part = PathBuf::from(format!("{}p1", disk.dev.display()));
    for _ in 0..50 {
        if part.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    ok("mkfs.ext4", &["-q", "-F", &part.display().to_string()]);
    let point = dir.path().join("mnt");
    std::fs::create_dir(&point).unwrap();
    ok(
        "mount",
        &[&part.display().to_string(), &point.display().to_string()],
    );
    let _m = Mounted {
        point: point.clone(),
        disk: disk.dev.clone(),
    };

    let r = probe(&[&disk.dev], &["devices"]);
    assert_eq!(r["ok"], false, "{r}");
    assert_eq!(r["type"], "BlockDeviceEraseError");
    let details = r["details"].as_str().unwrap();
    assert!(
        details.contains("holds a mounted filesystem")
            && details.contains(&point.display().to_string()),
        "{details}"
    );
    let r = probe(&[&disk.dev], &["metadata"]);
    assert_eq!(r["ok"], false, "{r}");
    let details = r["details"].as_str().unwrap();
    assert!(
        details.starts_with(&format!(
            "Failed to erase the metadata on the device(s): \"{}\": Refusing to erase",
            disk.dev.display()
        )),
        "{details}"
    );
    assert!(
        blkid(&part).unwrap().contains("TYPE=\"ext4\"")
            || blkid(&part).unwrap().contains("TYPE=ext4")
    );
    assert!(
        blkid(&disk.dev).unwrap().contains("PTTYPE=gpt"),
        "table touched"
    );
}

#[test]
fn shared_disk_filesystems_stop_the_step() {
    if !loop_devices_available("shared_disk_filesystems_stop_the_step") {
        return;
    }
    let dir = tempdir();
    let disk = LoopDev::sparse(dir.path(), "vmfs.img", 80 * MIB, &[]);
    sfdisk(
        &disk.dev,
        "label: gpt\nsize=32MiB\nsize=32MiB, type=AA31E02A-400F-11DB-9590-000C2911D1B8\n",
    );
    make_fs(&disk, MIB, 32 * MIB, &["mkfs.ext4", "-q", "-F"]);
    flush(&disk.dev);
    for step in ["metadata", "devices", "express"] {
        let r = probe(&[&disk.dev], &[step]);
        assert_eq!(r["type"], "ProtectedDeviceError", "{step}: {r}");
        assert_eq!(r["message"], "Protected device located, cleaning aborted.");
        let want = format!(
            "Protected VMware VMFS Partition (GPT) located on device {}p2. ",
            disk.dev.display()
        );
        assert!(r["details"].as_str().unwrap().starts_with(&want), "{r}");
    }
    let r = LoopDev::over_range(&disk.backing, MIB, 32 * MIB);
    assert!(blkid(&r.dev).is_some(), "the ext4 was touched");
    let r = probe(&[&disk.dev], &["metadata", "--no-guard"]);
    assert_eq!(r["ok"], true, "{r}");
    assert_clean(&disk, &[(MIB, 32 * MIB), (33 * MIB, 32 * MIB)]);
}

#[test]
fn raid_members_are_skipped() {
    if !loop_devices_available("raid_members_are_skipped") {
        return;
    }
    let dir = tempdir();
    let disk = LoopDev::sparse(dir.path(), "md.img", 64 * MIB, &[]);
    sfdisk(
        &disk.dev,
        "label: gpt\nsize=32MiB, type=A19D880F-05FC-4D3B-A006-743F0F84911E\n",
    );
    // An md 1.2 superblock (magic, major version 1) 4 KiB into the partition.
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&disk.backing)
            .unwrap();
        f.write_all_at(&[0xfc, 0x4e, 0x2b, 0xa9, 1, 0, 0, 0], MIB + 4096)
            .unwrap();
    }
    flush(&disk.dev);
    let r = probe(&[&disk.dev], &["metadata"]);
    assert_eq!(r["ok"], true, "{r}");
    let r = probe(&[&disk.dev], &["devices"]);
    assert_eq!(
        r["methods"][disk.dev.display().to_string()],
        "Skipped(RaidMember)",
        "{r}"
    );
    assert!(
        blkid(&disk.dev).unwrap().contains("PTTYPE=gpt"),
        "a RAID member was wiped"
    );
}
