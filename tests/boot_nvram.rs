//! UEFI variables as firmware leaves them: `clean_uefi_nvram` against IPA's default patterns,
//! efibootmgr (libefivar honours `EFIVARFS_PATH`) reading what rivet writes, and immutable
//! efivarfs-style files. No disk images here (see boot_efi.rs).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use rivet::boot::efivars::{boot_name, VarStore, EFI_GLOBAL_GUID, NV_BS_RT};
use rivet::boot::entries::{clean_uefi_nvram, read_entries, register_loaders};
use rivet::boot::esp::Loader;
use rivet::boot::load_option::{HardDrive, LoadOption, PartitionSignature};
use rivet::boot::{devpath_text, BootError};
use serde_json::json;

fn have(test: &str, tools: &[&str]) -> bool {
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

fn run(cmd: &str, args: &[&str], env: &[(&str, &str)]) -> String {
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

fn var_file(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}-{EFI_GLOBAL_GUID}"))
}

fn order(vars: &VarStore) -> Vec<u16> {
    vars.boot_order()
        .unwrap()
        .map(|(o, _)| o)
        .unwrap_or_default()
}

/// A firmware PXE entry: PciRoot(0x0)/Pci(0x3,0x0)/MAC(525400123456,1).
fn pxe_entry() -> LoadOption {
    let mut p = node(2, 1, &[0xd0, 0x41, 0x03, 0x0a, 0, 0, 0, 0]);
    p.extend(node(1, 1, &[0, 3]));
    let mut mac = vec![0x52, 0x54, 0, 0x12, 0x34, 0x56];
    mac.resize(32, 0);
    mac.push(1);
    p.extend(node(3, 11, &mac));
    p.extend(node(0x7f, 0xff, &[]));
    LoadOption {
        attributes: 1,
        description: "UEFI PXEv4 (MAC:525400123456)".into(),
        device_path: p,
        optional_data: vec![],
    }
}

fn node(kind: u8, sub: u8, data: &[u8]) -> Vec<u8> {
    let mut v = vec![kind, sub];
    v.extend_from_slice(&((data.len() + 4) as u16).to_le_bytes());
    v.extend_from_slice(data);
    v
}

/// NVRAM as firmware and earlier deploys leave it, numbers 0-4:
/// 0 PXE (PciRoot/Pci/MAC), 1 what install_bootloader wrote (HD/File, short form),
/// 2 a full path to shim (PciRoot/Pci/Sata/HD/File), 3 an HTTP boot to grub (Uri),
/// 4 the built-in shell (FvVol/FvFile), with binary optional data.
fn firmware_entries() -> Vec<(u16, LoadOption)> {
    let gpt = HardDrive {
        partition_number: 1,
        start_lba: 2048,
        size_lba: 65536,
        signature: PartitionSignature::Gpt([1; 16]),
    };
    let ironic1 = LoadOption::hard_drive_file("ironic1", &gpt, r"\EFI\BOOT\BOOTX64.EFI").unwrap();
    let mut full = node(2, 1, &[0xd0, 0x41, 0x03, 0x0a, 0, 0, 0, 0]);
    full.extend(node(1, 1, &[2, 0x1f]));
    full.extend(node(3, 18, &[0, 0, 0xff, 0xff, 0, 0]));
    let hd_file = LoadOption::hard_drive_file("x", &gpt, r"\EFI\centos\SHIMX64.EFI").unwrap();
    full.extend_from_slice(&hd_file.device_path);
    let mut uri = node(3, 24, b"http://192.0.2.1/grubx64.efi");
    uri.extend(node(0x7f, 0xff, &[]));
    let mut shell = node(4, 7, &[9; 16]);
    shell.extend(node(4, 6, &[8; 16]));
    shell.extend(node(0x7f, 0xff, &[]));
    let with = |description: &str, device_path: Vec<u8>, optional_data: Vec<u8>| LoadOption {
        attributes: 1,
        description: description.into(),
        device_path,
        optional_data,
    };
    vec![
        (0, pxe_entry()),
        (1, ironic1),
        (2, with("centos", full, vec![])),
        (3, with("HTTP", uri, vec![])),
        (4, with("UEFI Shell", shell, vec![0, 1, 0xfe])),
    ]
}

#[test]
fn clean_uefi_nvram_default_patterns() {
    let dir = tempfile::tempdir().unwrap();
    let vars = VarStore::open(dir.path()).unwrap();
    for (n, lo) in firmware_entries() {
        vars.write_boot(n, &lo).unwrap();
    }
    // 5: undecodable: kept
    vars.write(&boot_name(5), NV_BS_RT, &[1, 0, 0, 0, 0, 0, b'x'])
        .unwrap();
    vars.set_boot_order(&[1, 2, 0, 3, 4, 5], NV_BS_RT).unwrap();
    vars.write("BootCurrent", 6, &[1, 0]).unwrap();

    let removed = clean_uefi_nvram(&vars, None).unwrap();
    let got: Vec<(u16, &str)> = removed
        .iter()
        .map(|r| (r.number, r.pattern.as_str()))
        .collect();
    assert_eq!(got, vec![(1, r"^HD\("), (2, r"shim.*\.efi")]);
    assert_eq!(order(&vars), vec![0, 3, 4, 5]);
    assert!(
        !var_file(dir.path(), "Boot0001").exists(),
        "BootCurrent is not spared, as in IPA"
    );
    assert_eq!(vars.boot_current().unwrap(), Some(1));

    // custom patterns, matched against the path text case-insensitively; [] removes nothing
    assert!(clean_uefi_nvram(&vars, Some(&json!([])))
        .unwrap()
        .is_empty());
    let removed = clean_uefi_nvram(&vars, Some(&json!(["mac\\(5254", "fvfile"]))).unwrap();
    let got: Vec<u16> = removed.iter().map(|r| r.number).collect();
    assert_eq!(got, vec![0, 4]);
    assert_eq!(order(&vars), vec![3, 5]);
    let e = clean_uefi_nvram(&vars, Some(&json!({"a": 1}))).unwrap_err();
    assert!(matches!(e, BootError::InvalidCommandParams(_)));
}

/// libefivar and rivet agree on what rivet wrote: efibootmgr -v lists the same entries, order,
/// labels and device paths (efivar 37 wraps the file node in `File(...)`; rivet prints the
/// efivar 38+ form).
#[test]
fn efibootmgr_reads_our_entries() {
    if !have("efibootmgr_reads", &["efibootmgr"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let vdir = dir.path().to_path_buf();
    let vars = VarStore::open(&vdir).unwrap();
    for (n, lo) in firmware_entries() {
        vars.write_boot(n + 10, &lo).unwrap();
    }
    vars.set_boot_order(&[10], NV_BS_RT).unwrap();
    let esp = HardDrive {
        partition_number: 1,
        start_lba: 0x800,
        size_lba: 0x10000,
        signature: PartitionSignature::Gpt(
            uuid::Uuid::parse_str("dd62ae02-4d98-41b7-93f7-3f89943acf7a")
                .unwrap()
                .to_bytes_le(),
        ),
    };
    let loaders = [
        Loader {
            label: "ironic1".into(),
            path: r"\EFI\BOOT\BOOTX64.EFI".into(),
        },
        Loader {
            label: "ironic2".into(),
            path: r"\EFI\BOOT\BOOTIA32.EFI".into(),
        },
    ];
    register_loaders(&vars, &esp, &loaders).unwrap();
    let env_path = format!("{}/", vdir.display());
    let out = run("efibootmgr", &["-v"], &[("EFIVARFS_PATH", &env_path)]);
    eprintln!("efibootmgr -v:\n{out}");
    let order_line = out.lines().find(|l| l.starts_with("BootOrder: ")).unwrap();
    assert_eq!(order_line, "BootOrder: 0001,0000,000A");
    for e in read_entries(&vars).unwrap() {
        let lo = e.option.unwrap();
        let ours = format!(
            "Boot{:04X}* {}\t{}",
            e.number,
            lo.description,
            devpath_text::render(&lo)
        );
        let theirs = out
            .lines()
            .find(|l| l.starts_with(&format!("Boot{:04X}", e.number)))
            .unwrap();
        assert_eq!(ours, normalise_file_node(theirs), "efibootmgr says:\n{out}");
    }
}

/// efivar 37's `/File(\path)` -> efivar 38's `/\path`.
fn normalise_file_node(line: &str) -> String {
    match line.split_once("/File(") {
        Some((a, b)) => format!("{a}/{}", b.strip_suffix(')').unwrap_or(b)),
        None => line.to_string(),
    }
}

/// Real efivarfs files are immutable: the store clears the flag to write and delete, and
/// restores it after a write. Needs a file system with inode flags and CAP_LINUX_IMMUTABLE.
#[test]
fn immutable_variables_are_written_and_deleted() {
    use rustix::fs::{ioctl_getflags, ioctl_setflags, IFlags};
    let dir = tempfile::tempdir().unwrap();
    let vars = VarStore::open(dir.path()).unwrap();
    vars.set_boot_order(&[1, 2, 3], NV_BS_RT).unwrap();
    let path = var_file(dir.path(), "BootOrder");
    let f = fs::File::open(&path).unwrap();
    let Ok(flags) = ioctl_getflags(&f) else {
        eprintln!(
            "SKIPPED immutable: no inode flags on {}",
            dir.path().display()
        );
        return;
    };
    if ioctl_setflags(&f, flags | IFlags::IMMUTABLE).is_err() {
        eprintln!("SKIPPED immutable: cannot set FS_IMMUTABLE_FL (not root?)");
        return;
    }
    assert!(
        fs::OpenOptions::new().write(true).open(&path).is_err(),
        "really immutable"
    );
    vars.set_boot_order(&[9], NV_BS_RT).unwrap();
    assert_eq!(order(&vars), vec![9]);
    assert!(
        ioctl_getflags(&f).unwrap().contains(IFlags::IMMUTABLE),
        "restored"
    );
    assert!(vars.delete("BootOrder").unwrap());
    assert!(!path.exists());
}
