//! The kernel's partition list of a real loop device made equal to a table with
//! `rivet::disk::partitions::kernel`: without partition scanning (BLKRRPART refused, BLKPG used) and with it.
//! Tables are written with `sgdisk` and read back with `sfdisk -J`; the kernel's view is read
//! with `lsblk` (sysfs), not with the code under test. Root only.

mod common;

use std::fs::File;
use std::path::Path;
use std::process::Command;

use common::{loop_devices_available, LoopDev};
use rivet::disk::partitions::kernel::{sync_kernel_partitions, KernelPart, SyncMethod};

const MIB: u64 = 1 << 20;

/// A loop device and an open descriptor on it. On drop the kernel's partitions are deleted
/// first: a loop device without partition scanning keeps them after it is detached.
struct Disk {
    file: File,
    dev: LoopDev,
}

impl Disk {
    fn new(dir: &Path) -> Disk {
        Disk::open(LoopDev::new(dir, "disk.img", 64 * MIB, 0))
    }

    /// Attached with `-P`: the kernel scans partitions and BLKRRPART is accepted.
    fn with_scanning(dir: &Path) -> Disk {
        let backing = dir.join("scan.img");
        std::fs::write(&backing, vec![0u8; (32 * MIB) as usize]).unwrap();
        let dev = run(
            "losetup",
            &["-f", "--show", "-P", backing.to_str().unwrap()],
        );
        Disk::open(LoopDev {
            dev: dev.trim().into(),
            backing,
        })
    }

    fn open(dev: LoopDev) -> Disk {
        let file = File::options()
            .read(true)
            .write(true)
            .open(&dev.dev)
            .unwrap();
        Disk { file, dev }
    }

    fn sync(&self, parts: &[KernelPart]) -> rivet::disk::partitions::kernel::SyncReport {
        sync_kernel_partitions(&self.file, &self.dev.dev, parts).unwrap()
    }

    fn name(&self) -> String {
        self.dev
            .dev
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned()
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        let _ = sync_kernel_partitions(&self.file, &self.dev.dev, &[]);
    }
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The table on the disk, by `sfdisk -J`, and the partition names (GPT labels).
fn table(dev: &Path) -> (Vec<KernelPart>, Vec<String>) {
    let v: serde_json::Value =
        serde_json::from_str(&run("sfdisk", &["-J", dev.to_str().unwrap()])).unwrap();
    let pt = &v["partitiontable"];
    let sector = pt["sectorsize"].as_u64().unwrap_or(512);
    let mut parts = Vec::new();
    let mut names = Vec::new();
    for p in pt["partitions"].as_array().unwrap() {
        let node = p["node"].as_str().unwrap();
        // The number is the trailing digits of the node name (/dev/loop0p1 -> 1).
        let digits: String = node
            .chars()
            .rev()
            .take_while(char::is_ascii_digit)
            .collect();
        let number: u32 = digits.chars().rev().collect::<String>().parse().unwrap();
        parts.push(KernelPart {
            number,
            start: p["start"].as_u64().unwrap() * sector,
            size: p["size"].as_u64().unwrap() * sector,
        });
        names.push(p["name"].as_str().unwrap_or("").to_string());
    }
    (parts, names)
}

/// The kernel's partitions of the disk as lsblk shows them: (name, start bytes, size bytes),
/// by name (lsblk lists them in sysfs order, which a moved partition changes).
fn kernel_view(dev: &Path) -> Vec<(String, u64, u64)> {
    let out = run(
        "lsblk",
        &["-rnbo", "NAME,START,SIZE", dev.to_str().unwrap()],
    );
    let mut view: Vec<_> = out
        .lines()
        .skip(1) // the disk itself
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (
                f[0].to_string(),
                f[1].parse::<u64>().unwrap() * 512,
                f[2].parse().unwrap(),
            )
        })
        .collect();
    view.sort();
    view
}

fn expected(disk: &str, parts: &[KernelPart]) -> Vec<(String, u64, u64)> {
    parts
        .iter()
        .map(|p| (format!("{disk}p{}", p.number), p.start, p.size))
        .collect()
}

#[test]
fn blkpg_makes_the_kernel_list_equal_the_table_without_partition_scanning() {
    if !loop_devices_available("blkpg_makes_the_kernel_list_equal_the_table") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let disk = Disk::new(dir.path());
    let dev = disk.dev.dev.to_str().unwrap().to_string();
    run(
        "sgdisk",
        &[
            "-o",
            "-n",
            "1:2048:+8M",
            "-c",
            "1:config-2",
            "-n",
            "2:0:+16M",
            "-n",
            "3:0:+8M",
            &dev,
        ],
    );
    let (first, names) = table(&disk.dev.dev);
    assert_eq!(first.len(), 3);
    assert_eq!(names[0], "config-2");
    assert!(
        kernel_view(&disk.dev.dev).is_empty(),
        "no partitions before the sync"
    );

    let r = disk.sync(&first);
    assert_eq!(r.method, SyncMethod::Blkpg, "{r:?}");
    assert!(r.reread_error.unwrap().contains("Invalid argument"));
    assert_eq!(r.added, vec![1, 2, 3]);
    assert_eq!(kernel_view(&disk.dev.dev), expected(&disk.name(), &first));
    assert!(Path::new(&format!("/dev/{}p3", disk.name())).exists());

    // Partition 1 grows in place (into where 2 was), 2 moves, 3 goes.
    run(
        "sgdisk",
        &["-o", "-n", "1:2048:+12M", "-n", "2:40960:+20M", &dev],
    );
    let (second, _) = table(&disk.dev.dev);
    assert_eq!(second[0].size, 12 * MIB);
    assert_eq!(second[1].start, 20 * MIB);
    let r = disk.sync(&second);
    assert_eq!(
        (r.deleted, r.resized, r.added),
        (vec![2, 3], vec![1], vec![2])
    );
    assert_eq!(kernel_view(&disk.dev.dev), expected(&disk.name(), &second));

    // Already equal: nothing to do. Then shrink 1, and empty the list (what Drop does).
    let r = disk.sync(&second);
    assert!(r.deleted.is_empty() && r.resized.is_empty() && r.added.is_empty());
    let shrunk = [
        KernelPart {
            size: 4 * MIB,
            ..second[0]
        },
        second[1],
    ];
    assert_eq!(disk.sync(&shrunk).resized, vec![1]);
    assert_eq!(kernel_view(&disk.dev.dev), expected(&disk.name(), &shrunk));
    assert_eq!(disk.sync(&[]).deleted, vec![1, 2]);
    assert!(kernel_view(&disk.dev.dev).is_empty());

    // Overlapping partitions are the kernel's to refuse; the error names the disk.
    let overlap = [
        first[0],
        KernelPart {
            number: 2,
            start: 4 * MIB,
            size: MIB,
        },
    ];
    let e = sync_kernel_partitions(&disk.file, &disk.dev.dev, &overlap).unwrap_err();
    assert!(e.to_string().contains(&dev), "{e}");
}

#[test]
fn blkrrpart_then_blkpg_with_partition_scanning() {
    if !loop_devices_available("blkrrpart_then_blkpg_with_partition_scanning") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let disk = Disk::with_scanning(dir.path());
    let dev = disk.dev.dev.to_str().unwrap().to_string();
    run("sgdisk", &["-o", "-n", "1:2048:+4M", "-n", "2:0:+4M", &dev]);
    let (parts, _) = table(&disk.dev.dev);
    let r = disk.sync(&parts);
    // BLKRRPART is accepted here. A kernel built without a GPT parser (as on the CI machine)
    // then shows no partitions, and BLKPG finishes the job; with one, the re-read is enough.
    match r.method {
        SyncMethod::Reread => assert!(r.reread_error.is_none()),
        SyncMethod::Blkpg => assert_eq!(
            r.reread_error.as_deref(),
            Some("re-read table differs from the one given")
        ),
        SyncMethod::NotBlockDevice => panic!("{r:?}"),
    }
    assert_eq!(kernel_view(&disk.dev.dev), expected(&disk.name(), &parts));
}
