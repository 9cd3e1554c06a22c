//! Disk images with an EFI system partition for the boot tests: real vfat file systems made
//! with mkfs.vfat and mtools, inside GPT (sgdisk) or MBR (sfdisk) images.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

pub const MIB: u64 = 1 << 20;
pub const ESP_START_LBA: u64 = 2048;
pub const ESP_LBAS: u64 = 32 * MIB / 512;

pub fn have(test: &str, tools: &[&str]) -> bool {
    for t in tools {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !found {
            eprintln!("SKIPPED {test}: {t} is not installed");
            return false;
        }
    }
    true
}

pub fn run(cmd: &str, args: &[&str], env: &[(&str, &str)]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A 32 MiB FAT image holding `files` (ESP paths with `/`), with the given volume serial.
pub fn make_esp(dir: &Path, name: &str, files: &[(&str, &[u8])], serial: &str) -> PathBuf {
    let img = dir.join(name);
    let img_s = img.to_str().unwrap();
    run(
        "mkfs.vfat",
        &["-C", "-i", serial, "-n", "ESP", img_s, "32768"],
        &[],
    );
    let env = [("MTOOLS_SKIP_CHECK", "1")];
    let mut made: Vec<String> = Vec::new();
    for (path, data) in files {
        let parts: Vec<&str> = path.split('/').collect();
        for i in 1..parts.len() {
            let d = parts[..i].join("/");
            if !made.contains(&d) {
                run("mmd", &["-i", img_s, &format!("::/{d}")], &env);
                made.push(d);
            }
        }
        let src = dir.join("payload");
        fs::write(&src, data).unwrap();
        run(
            "mcopy",
            &["-i", img_s, src.to_str().unwrap(), &format!("::/{path}")],
            &env,
        );
    }
    img
}

/// A 64 MiB GPT disk: partition 1 at LBA 2048 (32 MiB, type `esp_type`) holding `esp`,
/// partition 2 Linux. Returns the disk and partition 1's unique GUID.
pub fn gpt_disk(dir: &Path, esp: &Path, esp_type: &str) -> (PathBuf, uuid::Uuid) {
    let disk = dir.join("gpt.img");
    fs::File::create(&disk).unwrap().set_len(64 * MIB).unwrap();
    let d = disk.to_str().unwrap();
    run(
        "sgdisk",
        &[
            "-n",
            "1:2048:+32M",
            "-t",
            &format!("1:{esp_type}"),
            "-n",
            "2:0:0",
            "-t",
            "2:8300",
            d,
        ],
        &[],
    );
    place(&disk, esp, ESP_START_LBA * 512);
    let info = run("sgdisk", &["-i", "1", d], &[]);
    let guid = info
        .lines()
        .find_map(|l| l.strip_prefix("Partition unique GUID: "))
        .unwrap();
    (disk, uuid::Uuid::parse_str(guid.trim()).unwrap())
}

/// A 64 MiB MBR disk with partition 1 (type 0xEF) at LBA 2048 holding `esp`, signature `sig`.
pub fn mbr_disk(dir: &Path, name: &str, esp: &Path, sig: u32) -> PathBuf {
    let disk = dir.join(name);
    fs::File::create(&disk).unwrap().set_len(64 * MIB).unwrap();
    let mut c = Command::new("sfdisk")
        .args(["-q", disk.to_str().unwrap()])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    c.stdin
        .take()
        .unwrap()
        .write_all(b"label: dos\nstart=2048, size=65536, type=ef\n")
        .unwrap();
    assert!(c.wait().unwrap().success());
    let f = fs::OpenOptions::new().write(true).open(&disk).unwrap();
    f.write_all_at(&sig.to_le_bytes(), 440).unwrap();
    place(&disk, esp, ESP_START_LBA * 512);
    disk
}

pub fn place(disk: &Path, part: &Path, offset: u64) {
    let f = fs::OpenOptions::new().write(true).open(disk).unwrap();
    f.write_all_at(&fs::read(part).unwrap(), offset).unwrap();
}
