//! UEFI boot entries end to end: real vfat ESPs (mkfs.vfat + mtools) inside real GPT/MBR disk
//! images (sgdisk/sfdisk), registered into a temporary efivarfs-like directory and read back;
//! and efibootmgr creating the same entry from a loop device (libefivar honours
//! `EFIVARFS_PATH`). Tools that are missing make a test skip with a printed reason.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use rivet::boot::efivars::{boot_name, VarStore, EFI_GLOBAL_GUID, NV_BS_RT};
use rivet::boot::entries::read_entries;
use rivet::boot::load_option::{HardDrive, LoadOption, PartitionSignature};
use rivet::boot::{devpath_text, install_entries, BootError};

mod common;

use common::esp::{gpt_disk, have, make_esp, mbr_disk, run, ESP_LBAS, ESP_START_LBA};

fn var_file(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}-{EFI_GLOBAL_GUID}"))
}

fn entry(vars: &VarStore, n: u16) -> LoadOption {
    let v = vars.read(&boot_name(n)).unwrap().unwrap();
    assert_eq!(v.attributes, NV_BS_RT);
    LoadOption::decode(&v.data).unwrap()
}

fn order(vars: &VarStore) -> Vec<u16> {
    vars.boot_order()
        .unwrap()
        .map(|(o, _)| o)
        .unwrap_or_default()
}

/// An entry firmware made: an HTTP boot, Uri(http://192.0.2.1/boot.efi).
fn foreign_entry() -> LoadOption {
    let mut p = vec![3, 24, 29, 0];
    p.extend_from_slice(b"http://192.0.2.1/boot.efi");
    p.extend_from_slice(&[0x7f, 0xff, 4, 0]);
    LoadOption {
        attributes: 1,
        description: "UEFI HTTP".into(),
        device_path: p,
        optional_data: vec![],
    }
}

fn other_hd() -> HardDrive {
    HardDrive {
        partition_number: 1,
        start_lba: 34,
        size_lba: 1000,
        signature: PartitionSignature::Gpt([7; 16]),
    }
}

#[test]
fn gpt_fallback_loader_replaces_same_label_and_boots_first() {
    if !have("gpt_fallback", &["mkfs.vfat", "mmd", "mcopy", "sgdisk"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let esp = make_esp(
        dir.path(),
        "esp.img",
        &[
            ("EFI/BOOT/BOOTX64.EFI", b"MZ loader"),
            ("EFI/BOOT/fbx64.efi", b"MZ"),
        ],
        "1234ABCD",
    );
    let (disk, guid) = gpt_disk(dir.path(), &esp, "ef00");
    let vdir = dir.path().join("vars");
    fs::create_dir(&vdir).unwrap();
    let vars = VarStore::open(&vdir).unwrap();
    // firmware state: PXE first, and a stale ironic1 from an earlier deploy
    vars.write_boot(0, &foreign_entry()).unwrap();
    let stale = LoadOption::hard_drive_file("ironic1", &other_hd(), r"\old.efi").unwrap();
    vars.write_boot(1, &stale).unwrap();
    vars.write_boot(
        3,
        &LoadOption {
            description: "other".into(),
            ..stale.clone()
        },
    )
    .unwrap();
    vars.set_boot_order(&[0, 1, 3], NV_BS_RT).unwrap();
    vars.write("BootCurrent", 6, &[0, 0]).unwrap();

    let added = install_entries(&disk, None, &vars).unwrap();
    assert_eq!(added.len(), 1);
    assert_eq!(added[0].label, "ironic1");
    assert_eq!(added[0].loader, r"\EFI\BOOT\BOOTX64.EFI");
    assert_eq!(
        added[0].number, 1,
        "the stale ironic1 was deleted; its number is the lowest free"
    );
    assert_eq!(
        order(&vars),
        vec![1, 0, 3],
        "new entry first, the old one gone from BootOrder"
    );
    let lo = entry(&vars, 1);
    assert_eq!(lo.description, "ironic1");
    assert_eq!(
        lo.hard_drive(),
        Some(HardDrive {
            partition_number: 1,
            start_lba: ESP_START_LBA,
            size_lba: ESP_LBAS,
            signature: PartitionSignature::Gpt(guid.to_bytes_le()),
        })
    );
    assert_eq!(lo.file_path().as_deref(), Some(r"\EFI\BOOT\BOOTX64.EFI"));
    assert_eq!(
        entry(&vars, 0),
        foreign_entry(),
        "foreign entries untouched"
    );

    // again: still exactly one ironic1
    install_entries(&disk, None, &vars).unwrap();
    let labels: Vec<String> = read_entries(&vars)
        .unwrap()
        .iter()
        .filter_map(|e| e.label().map(str::to_string))
        .collect();
    assert_eq!(
        labels.iter().filter(|l| *l == "ironic1").count(),
        1,
        "{labels:?}"
    );
    assert_eq!(order(&vars), vec![1, 0, 3]);
    assert!(!var_file(&vdir, "Boot0002").exists());
}

#[test]
fn csv_wins_over_fallback_loaders() {
    if !have("csv", &["mkfs.vfat", "mmd", "mcopy", "sgdisk"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut csv = vec![0xff, 0xfe];
    csv.extend(
        "shimx64.efi,ubuntu,,This is the boot entry for ubuntu\n"
            .encode_utf16()
            .flat_map(|c| c.to_le_bytes()),
    );
    let esp = make_esp(
        dir.path(),
        "esp.img",
        &[
            ("EFI/BOOT/BOOTX64.EFI", b"MZ"),
            ("EFI/ubuntu/shimx64.efi", b"MZ"),
            ("EFI/ubuntu/grubx64.efi", b"MZ"),
            ("EFI/ubuntu/BOOTX64.CSV", &csv),
        ],
        "0000BEEF",
    );
    let (disk, _) = gpt_disk(dir.path(), &esp, "ef00");
    let vars = VarStore::open(dir.path()).unwrap();
    let added = install_entries(&disk, None, &vars).unwrap();
    assert_eq!(added.len(), 1, "the CSV alone: {added:?}");
    assert_eq!(added[0].label, "ubuntu");
    assert_eq!(added[0].loader, r"\EFI\ubuntu\shimx64.efi");
    assert_eq!(
        entry(&vars, 0).file_path().as_deref(),
        Some(r"\EFI\ubuntu\shimx64.efi")
    );
    assert_eq!(order(&vars), vec![0]);
}

#[test]
fn several_loaders_are_numbered_in_walk_order() {
    if !have("several", &["mkfs.vfat", "mmd", "mcopy", "sgdisk"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let esp = make_esp(
        dir.path(),
        "esp.img",
        &[
            ("EFI/BOOT/BOOTX64.EFI", b"MZ"),
            ("EFI/BOOT/BOOTAA64.EFI", b"MZ"),
        ],
        "11112222",
    );
    let (disk, _) = gpt_disk(dir.path(), &esp, "ef00");
    let vars = VarStore::open(dir.path()).unwrap();
    let added = install_entries(&disk, None, &vars).unwrap();
    let got: Vec<(u16, &str, &str)> = added
        .iter()
        .map(|e| (e.number, e.label.as_str(), e.loader.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            (0, "ironic1", r"\EFI\BOOT\BOOTX64.EFI"),
            (1, "ironic2", r"\EFI\BOOT\BOOTAA64.EFI")
        ]
    );
    // each efibootmgr -c prepends, so IPA leaves the last registered first
    assert_eq!(order(&vars), vec![1, 0]);
}

#[test]
fn empty_esp_changes_nothing() {
    if !have("empty", &["mkfs.vfat", "mmd", "mcopy", "sgdisk"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let esp = make_esp(
        dir.path(),
        "esp.img",
        &[("EFI/README.txt", b"hi")],
        "12345678",
    );
    let (disk, _) = gpt_disk(dir.path(), &esp, "ef00");
    let vdir = dir.path().join("vars");
    fs::create_dir(&vdir).unwrap();
    let vars = VarStore::open(&vdir).unwrap();
    vars.write_boot(0, &foreign_entry()).unwrap();
    vars.set_boot_order(&[0], NV_BS_RT).unwrap();
    let before: Vec<_> = fs::read_dir(&vdir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let disk_before = fs::read(&disk).unwrap();
    assert!(install_entries(&disk, None, &vars).unwrap().is_empty());
    let after: Vec<_> = fs::read_dir(&vdir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(before.len(), after.len());
    assert_eq!(order(&vars), vec![0]);
    assert!(
        fs::read(&disk).unwrap() == disk_before,
        "the disk is only read"
    );
}

#[test]
fn no_esp_type_then_the_recorded_uuid() {
    if !have("uuid", &["mkfs.vfat", "mmd", "mcopy", "sgdisk"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let esp = make_esp(
        dir.path(),
        "esp.img",
        &[("EFI/BOOT/BOOTX64.EFI", b"MZ")],
        "ABCD0123",
    );
    // a FAT partition typed "Microsoft basic data", not ESP
    let (disk, guid) = gpt_disk(dir.path(), &esp, "0700");
    let vars = VarStore::open(dir.path()).unwrap();
    let e = install_entries(&disk, None, &vars).unwrap_err();
    assert!(matches!(e, BootError::DeviceNotFound(_)));
    assert_eq!(
        e.to_string(),
        format!(
            "No EFI partition could be detected on device {} and EFI partition UUID has not been \
             recorded during deployment (which is often the case for whole disk images). Are you \
             using a UEFI-compatible image?",
            disk.display()
        )
    );
    let e = install_entries(&disk, Some("dead-beef"), &vars).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "No partition with UUID dead-beef found on device {}",
            disk.display()
        )
    );
    // blkid's vfat UUID, the PARTUUID, and the label all find it
    for id in ["ABCD-0123".to_string(), guid.to_string(), "ESP".to_string()] {
        let added = install_entries(&disk, Some(&id), &vars).unwrap();
        assert_eq!(added.len(), 1, "{id}");
        assert_eq!(added[0].partition, 1);
    }
    assert_eq!(
        read_entries(&vars).unwrap().len(),
        1,
        "same label each time"
    );
}

#[test]
fn mbr_disk_entry() {
    if !have("mbr", &["mkfs.vfat", "mmd", "mcopy", "sfdisk"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let esp = make_esp(
        dir.path(),
        "esp.img",
        &[("EFI/BOOT/BOOTX64.EFI", b"MZ")],
        "0BADF00D",
    );
    let disk = mbr_disk(dir.path(), "mbr.img", &esp, 0x1a2b_3c4d);
    let vars = VarStore::open(dir.path()).unwrap();
    install_entries(&disk, None, &vars).unwrap();
    let lo = entry(&vars, 0);
    assert_eq!(
        lo.hard_drive(),
        Some(HardDrive {
            partition_number: 1,
            start_lba: ESP_START_LBA,
            size_lba: 65536,
            signature: PartitionSignature::Mbr(0x1a2b_3c4d),
        })
    );
    assert_eq!(
        devpath_text::render(&lo),
        r"HD(1,MBR,0x1a2b3c4d,0x800,0x10000)/\EFI\BOOT\BOOTX64.EFI"
    );
}

/// efibootmgr itself creates the entry (`-c -d <loop> -p 1 -w -L ironic1 -l <loader>`, IPA's
/// arguments) on a read-only loop device over a disk image, and rivet from the same loop
/// device: byte for byte the same variables, for GPT, MBR, and MBR with signature 0.
#[test]
fn efibootmgr_creates_the_same_bytes() {
    if !have(
        "efibootmgr_creates",
        &[
            "mkfs.vfat",
            "mmd",
            "mcopy",
            "sgdisk",
            "sfdisk",
            "efibootmgr",
            "losetup",
        ],
    ) {
        return;
    }
    if run("id", &["-u"], &[]).trim() != "0" {
        eprintln!("SKIPPED efibootmgr_creates: needs root for losetup");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let esp = make_esp(
        dir.path(),
        "esp.img",
        &[("EFI/BOOT/BOOTX64.EFI", b"MZ")],
        "2468ACE0",
    );
    let (gpt, _) = gpt_disk(dir.path(), &esp, "ef00");
    let mbr = mbr_disk(dir.path(), "mbr.img", &esp, 0xcafe_f00d);
    // signature 0: efibootmgr's -w writes none (it ignores the flag), and rivet writes none
    let mbr0 = mbr_disk(dir.path(), "mbr0.img", &esp, 0);
    for disk in [gpt, mbr, mbr0] {
        let ours = dir.path().join("ours");
        let theirs = dir.path().join("theirs");
        for d in [&ours, &theirs] {
            let _ = fs::remove_dir_all(d);
            fs::create_dir(d).unwrap();
        }
        let lo = Loop::attach(&disk);
        // rivet reads the block device too (BLKSSZGET, then the table and the FAT through it)
        install_entries(&lo.0, None, &VarStore::open(&ours).unwrap()).unwrap();
        let env_path = format!("{}/", theirs.display());
        run(
            "efibootmgr",
            &[
                "-v",
                "-c",
                "-d",
                lo.0.to_str().unwrap(),
                "-p",
                "1",
                "-w",
                "-L",
                "ironic1",
                "-l",
                r"\EFI\BOOT\BOOTX64.EFI",
            ],
            &[("EFIVARFS_PATH", &env_path)],
        );
        drop(lo);
        for name in ["Boot0000", "BootOrder"] {
            assert_eq!(
                fs::read(var_file(&ours, name)).unwrap(),
                fs::read(var_file(&theirs, name)).unwrap(),
                "{name} on {}",
                disk.display()
            );
        }
    }
}

/// A loop device over a disk image, detached on drop.
struct Loop(PathBuf);

impl Loop {
    fn attach(file: &Path) -> Loop {
        let out = run(
            "losetup",
            &["-f", "--show", "-r", file.to_str().unwrap()],
            &[],
        );
        Loop(PathBuf::from(out.trim()))
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}
