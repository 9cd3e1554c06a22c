//! The erase engine on real loop devices, each run of it confined to a private mount
//! namespace whose /dev holds only the test's own loop devices (`PrivateDev`), through the
//! `erase_probe` example (the lead will switch these to `rivet serve` and the clean API).
//!
//! Partitions are reached by byte range (the kernel here parses no partition tables):
//! filesystems are made on loop devices over ranges of the disk's backing file, and
//! checked the same way afterwards with `blkid -p`.

mod common;

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

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

fn run(cmd: &str, args: &[&str]) -> std::process::Output {
    Command::new(cmd)
        .args(args)
        .env("LVM_SUPPRESS_FD_WARNINGS", "1")
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"))
}

fn ok(cmd: &str, args: &[&str]) {
    let o = run(cmd, args);
    assert!(
        o.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// What `blkid -p` finds on a device, or None.
fn blkid(dev: &Path) -> Option<String> {
    let o = run("blkid", &["-p", "-o", "export", &dev.display().to_string()]);
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
}

fn sfdisk(dev: &Path, script: &str) {
    use std::io::Write;
    let mut c = Command::new("sfdisk")
        .args(["-q", "--no-reread", "--no-tell-kernel"])
        .arg(dev)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(c.wait().unwrap().success(), "sfdisk {script}");
}

/// The disk's cached blocks are dropped, so it sees what range devices wrote.
fn flush(dev: &Path) {
    ok("blockdev", &["--flushbufs", &dev.display().to_string()]);
}

/// Adds a kernel partition (BLKPG) so the kernel's view has something to drop.
fn add_kernel_partition(disk: &Path, pno: i32, start: u64, len: u64) {
    #[repr(C)]
    struct Part {
        start: i64,
        length: i64,
        pno: i32,
        devname: [u8; 64],
        volname: [u8; 64],
    }
    #[repr(C)]
    struct Arg {
        op: i32,
        flags: i32,
        datalen: i32,
        data: *mut Part,
    }
    let f = std::fs::File::open(disk).unwrap();
    let mut p = Part {
        start: start as i64,
        length: len as i64,
        pno,
        devname: [0; 64],
        volname: [0; 64],
    };
    let mut a = Arg {
        op: 1,
        flags: 0,
        datalen: std::mem::size_of::<Part>() as i32,
        data: &mut p,
    };
    // SAFETY: BLKPG reads both structs, alive for the call.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), 0x1269, &mut a as *mut Arg) };
    assert_eq!(rc, 0, "BLKPG add: {}", std::io::Error::last_os_error());
}

fn kernel_partitions(disk: &Path) -> Vec<String> {
    let name = disk.file_name().unwrap().to_string_lossy().into_owned();
    std::fs::read_dir(format!("/sys/block/{name}"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&name) && n != &name)
        .collect()
}

/// Makes `mk` on a range of the disk's backing file and returns what blkid saw there.
fn make_fs(disk: &LoopDev, start: u64, size: u64, mk: &[&str]) -> String {
    let r = LoopDev::over_range(&disk.backing, start, size);
    let mut args: Vec<String> = mk[1..].iter().map(|s| s.to_string()).collect();
    args.push(r.dev.display().to_string());
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    ok(mk[0], &argv);
    let seen = blkid(&r.dev).unwrap_or_default();
    assert!(seen.contains("TYPE="), "{mk:?} left no signature: {seen}");
    seen
}

/// Asserts blkid finds nothing on the disk nor on any old partition range.
fn assert_clean(disk: &LoopDev, ranges: &[(u64, u64)]) {
    assert_eq!(blkid(&disk.dev), None, "signature left on the disk");
    for &(start, size) in ranges {
        let r = LoopDev::over_range(&disk.backing, start, size);
        assert_eq!(blkid(&r.dev), None, "signature left at {start}+{size}");
    }
}

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("rivet-erase")
        .tempdir_in("/var/tmp")
        .unwrap()
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

/// A mounted ext4 on a kernel partition; unmounted and removed on drop.
struct Mounted {
    point: PathBuf,
    part: PathBuf,
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = run("umount", &[&self.point.display().to_string()]);
        let _ = std::fs::remove_file(&self.part);
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
        part: part.clone(),
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
