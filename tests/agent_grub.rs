//! `image.install_bootloader`'s GRUB2 path (IPA's `_install_grub2`, with
//! `enable_bios_bootloader_install` on), driven by Ironic's own `AgentClient` against
//! `rivet serve` in a private mount namespace whose `/dev` holds only the test's loop device
//! and its two partitions.
//!
//! Everything is real but grub: a GPT disk on a loop device with an empty ESP (mkfs.vfat) and
//! an ext4 root (mkfs.ext4 -d) holding a static busybox as `/bin/sh`; rivet mounts the root,
//! binds /dev, /proc, /run, mounts a sysfs, and chroots into it. `grub(2)-install` and
//! `grub(2)-mkconfig` are stand-in shell scripts that log their argv and environment inside the
//! root file system and write the files the real ones would. The ESP is read back with mtools,
//! the root file system with debugfs, the boot entries from the efivarfs stand-in directory.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::disks::add_kernel_partition;
use common::esp::{have, make_esp, place, run, MIB};
use common::{ironic_python, loop_devices_available, AgentProc, LoopDev};
use serde_json::Value;

const TOKEN: &str = "grub-token-0123456789abcdef0123456789abcdef";
const GLOBAL: &str = "8be4df61-93ca-11d2-aa0d-00e098032b8c";
const ROOT_UUID: &str = "6a1e5b0c-2f3d-4e5f-8a9b-0c1d2e3f4a5b";
const ESP_UUID: &str = "1234-ABCD";
const ESP_START: u64 = MIB;
const ESP_SIZE: u64 = 32 * MIB;
const ROOT_START: u64 = ESP_START + ESP_SIZE;
const ROOT_SIZE: u64 = 40 * MIB;
const DISK_SIZE: u64 = ROOT_START + ROOT_SIZE + MIB;

/// The stand-in for `<bin>-install`: logs, then writes what grub-install writes under
/// /boot/efi (UEFI) or nothing (BIOS: it checks the disk node is there); fails when the root
/// has /grub-fail.
fn grub_install(bin: &str) -> String {
    format!(
        r#"#!/bin/sh
blk=no; [ -b "$1" ] && blk=yes
proc=no; [ -r /proc/self/mountinfo ] && proc=yes
sys=no; [ -d /sys/class/block ] && sys=yes
echo "{bin}-install [$*] blockdev=$blk proc=$proc sys=$sys PATH=$PATH" >> /var/log/grub.log
if [ -e /grub-fail ]; then echo "stand-in grub failed" >&2; exit 1; fi
case "$1" in
  --removable) mkdir -p /boot/efi/EFI/BOOT && echo "MZ removable" > /boot/efi/EFI/BOOT/BOOTX64.EFI ;;
  "") mkdir -p /boot/efi/EFI/debian && echo "MZ grub" > /boot/efi/EFI/debian/grubx64.efi ;;
esac
"#
    )
}

/// The stand-in for `<bin>-mkconfig -o <file>`.
fn grub_mkconfig(bin: &str) -> String {
    format!(
        r##"#!/bin/sh
echo "{bin}-mkconfig [$*] GRUB_DISABLE_OS_PROBER=$GRUB_DISABLE_OS_PROBER GRUB_SAVEDEFAULT=$GRUB_SAVEDEFAULT" >> /var/log/grub.log
mkdir -p "$(dirname "$2")"
echo "# made by the stand-in {bin}-mkconfig" > "$2"
"##
    )
}

#[derive(Default)]
struct Image {
    bin: &'static str,
    efi_assets: bool,
    grub_fails: bool,
    /// `etc/fstab` is a symlink to `/etc/fstab.real` (to be resolved inside the image).
    fstab_symlink: bool,
    /// `run` is a symlink to `/` (a mount point that must be refused).
    run_symlink: bool,
}

/// The root file system's tree.
fn rootfs(dir: &Path, img: &Image) -> PathBuf {
    let r = dir.join("rootfs");
    for d in [
        "bin", "usr/sbin", "etc", "var/log", "boot", "dev", "proc", "run", "sys",
    ] {
        std::fs::create_dir_all(r.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", r.join("bin/busybox")).unwrap();
    for applet in ["sh", "mkdir", "echo", "dirname", "cat"] {
        std::os::unix::fs::symlink("busybox", r.join("bin").join(applet)).unwrap();
    }
    let bin = img.bin;
    let exe = |p: PathBuf, text: String| {
        std::fs::write(&p, text).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    exe(r.join(format!("usr/sbin/{bin}-install")), grub_install(bin));
    exe(
        r.join(format!("usr/sbin/{bin}-mkconfig")),
        grub_mkconfig(bin),
    );
    let fstab = if img.fstab_symlink {
        std::os::unix::fs::symlink("/etc/fstab.real", r.join("etc/fstab")).unwrap();
        "etc/fstab.real"
    } else {
        "etc/fstab"
    };
    std::fs::write(
        r.join(fstab),
        format!("UUID={ROOT_UUID}\t/\text4\tdefaults\t0\t1\n"),
    )
    .unwrap();
    if img.run_symlink {
        std::fs::remove_dir(r.join("run")).unwrap();
        std::os::unix::fs::symlink("/", r.join("run")).unwrap();
    }
    if img.grub_fails {
        std::fs::write(r.join("grub-fail"), "").unwrap();
    }
    if img.efi_assets {
        let e = r.join("boot/efi/EFI/debian");
        std::fs::create_dir_all(&e).unwrap();
        std::fs::write(e.join("shimx64.efi"), "MZ shim").unwrap();
        std::fs::write(e.join("grubx64.efi"), "MZ grub").unwrap();
        std::fs::write(e.join("BOOTX64.CSV"), csv()).unwrap();
        std::fs::create_dir_all(r.join("boot/grub2")).unwrap();
        std::fs::write(r.join("boot/grub2/grubenv"), "# GRUB Environment Block\n").unwrap();
    }
    r
}

fn csv() -> Vec<u8> {
    [0xff, 0xfe]
        .into_iter()
        .chain(
            "shimx64.efi,debian,,This is the boot entry for debian\n"
                .encode_utf16()
                .flat_map(u16::to_le_bytes),
        )
        .collect()
}

/// The test's disk: a loop device over a GPT image (ESP + ext4 root), its two partitions added
/// to the kernel (BLKPG: no partition scanning here).
struct Disk {
    // The loop device goes before its backing file's directory.
    lo: LoopDev,
    parts: [PathBuf; 2],
    dir: tempfile::TempDir,
}

fn disk(img: &Image) -> Disk {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let file = d.join("disk.img");
    std::fs::File::create(&file)
        .unwrap()
        .set_len(DISK_SIZE)
        .unwrap();
    let f = file.to_str().unwrap();
    let (s1, e1) = (ESP_START / 512, (ROOT_START / 512) - 1);
    let (s2, e2) = (ROOT_START / 512, (ROOT_START + ROOT_SIZE) / 512 - 1);
    run(
        "sgdisk",
        &[
            "-n",
            &format!("1:{s1}:{e1}"),
            "-t",
            "1:EF00",
            "-n",
            &format!("2:{s2}:{e2}"),
            "-t",
            "2:8300",
            f,
        ],
        &[],
    );
    let esp = make_esp(d, "esp.img", &[], "1234ABCD");
    place(&file, &esp, ESP_START);
    let root = d.join("root.img");
    std::fs::File::create(&root)
        .unwrap()
        .set_len(ROOT_SIZE)
        .unwrap();
    let tree = rootfs(d, img);
    run(
        "mkfs.ext4",
        &["-q", "-F", "-U", ROOT_UUID, "-d", tree.to_str().unwrap()]
            .into_iter()
            .chain([root.to_str().unwrap()])
            .collect::<Vec<_>>(),
        &[],
    );
    place(&file, &root, ROOT_START);
    let lo = LoopDev::over_range(&file, 0, DISK_SIZE);
    // A previous user of this loop number may have left BLKPG partitions behind.
    let _ = Command::new("partx").arg("-d").arg(&lo.dev).output();
    add_kernel_partition(&lo.dev, 1, ESP_START, ESP_SIZE);
    add_kernel_partition(&lo.dev, 2, ROOT_START, ROOT_SIZE);
    let parts = [1, 2].map(|n| PathBuf::from(format!("{}p{n}", lo.dev.display())));
    for p in &parts {
        for _ in 0..50 {
            if p.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
    Disk { lo, parts, dir }
}

impl Disk {
    fn vars(&self) -> PathBuf {
        self.dir.path().join("efivars")
    }

    fn agent_tmp(&self) -> PathBuf {
        self.dir.path().join("agent-tmp")
    }

    /// `rivet serve` with `--enable-bios-bootloader-install <enable>`, UEFI mode when `uefi`.
    fn agent(&self, uefi: bool, enable: bool, extra: &[&str]) -> AgentProc {
        let vars = if uefi {
            std::fs::create_dir_all(self.vars()).unwrap();
            self.vars()
        } else {
            self.dir.path().join("no-efivars")
        };
        std::fs::create_dir_all(self.agent_tmp()).unwrap();
        let mut args = vec![
            "--agent-token",
            TOKEN,
            "--root-device",
            self.lo.dev.to_str().unwrap(),
            "--efivars-dir",
            vars.to_str().unwrap(),
            "--enable-bios-bootloader-install",
            if enable { "true" } else { "false" },
        ];
        args.extend(extra);
        let env = [("TMPDIR".to_string(), self.agent_tmp().display().to_string())];
        let parts: Vec<&Path> = self.parts.iter().map(PathBuf::as_path).collect();
        AgentProc::start_private_with(self.dir.path(), &[&self.lo.dev], &parts, &args, &env)
    }

    /// A file of the root file system, read with debugfs from the root partition.
    fn root_file(&self, path: &str) -> String {
        let out = Command::new("debugfs")
            .args(["-R", &format!("cat {path}")])
            .arg(&self.parts[1])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A file of the ESP, read with mtools through the loop device.
    fn esp_file(&self, path: &str) -> Option<String> {
        let img = format!("{}@@{ESP_START}", self.lo.dev.display());
        let out = Command::new("mtype")
            .args(["-i", &img, &format!("::/{path}")])
            .env("MTOOLS_SKIP_CHECK", "1")
            .output()
            .unwrap();
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The ESP's directory listing (mdir), for diagnostics.
    fn esp_listing(&self) -> String {
        let img = format!("{}@@{ESP_START}", self.lo.dev.display());
        let out = Command::new("mdir")
            .args(["-/", "-b", "-i", &img, "::/"])
            .env("MTOOLS_SKIP_CHECK", "1")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Case (f): nothing of rivet's is mounted in the agent's namespace, its temp dir is gone.
    fn assert_clean(&self, a: &AgentProc) {
        let info = std::fs::read_to_string(format!("/proc/{}/mountinfo", a.pid())).unwrap();
        let tmp = self.agent_tmp().display().to_string();
        assert!(
            !info.contains(&tmp) && !info.contains("rivet-grub-"),
            "left mounted:\n{info}"
        );
        let left: Vec<_> = std::fs::read_dir(self.agent_tmp()).unwrap().collect();
        assert!(left.is_empty(), "temp dir left: {left:?}");
    }
}

fn tools(test: &str) -> Option<String> {
    if !loop_devices_available(test) {
        return None;
    }
    let need = [
        "mkfs.vfat",
        "mmd",
        "mcopy",
        "mtype",
        "mdir",
        "sgdisk",
        "debugfs",
        "unshare",
    ];
    if !have(test, &need) || !Path::new("/bin/busybox").exists() {
        assert!(
            std::env::var("CI").is_err(),
            "{test}: CI must have the tools"
        );
        return None;
    }
    ironic_python(test)
}

fn install(py: &str, a: &AgentProc, efi_uuid: Option<&str>, mode: &str) -> (Value, String) {
    let mut args = vec![
        "--scenario",
        "install_bootloader",
        "--root-uuid",
        ROOT_UUID,
        "--target-boot-mode",
        mode,
    ];
    if let Some(u) = efi_uuid {
        args.extend(["--efi-uuid", u]);
    }
    let (_, v, diag) = common::drive_steps(py, a, TOKEN, &args);
    (v["final"].clone(), diag)
}

/// The UTF-16 text of a Boot#### variable (description and file path), for assertions.
fn boot_var_text(vars: &Path, name: &str) -> String {
    let b = std::fs::read(vars.join(format!("{name}-{GLOBAL}"))).unwrap_or_default();
    let u: Vec<u16> = b
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    String::from_utf16_lossy(&u)
}

#[test]
fn efi_assets_of_the_image_are_preserved_into_the_esp() {
    let Some(py) = tools("grub_efi_assets") else {
        return;
    };
    let img = Image {
        bin: "grub2",
        efi_assets: true,
        grub_fails: false,
        ..Default::default()
    };
    let d = disk(&img);
    let a = d.agent(true, true, &[]);
    let (f, diag) = install(&py, &a, Some(ESP_UUID), "uefi");
    assert_eq!(f["command_status"], "SUCCEEDED", "{diag}");
    d.assert_clean(&a);
    let log = d.root_file("/var/log/grub.log");
    assert_eq!(
        log.trim(),
        "grub2-mkconfig [-o /boot/grub2/grub.cfg] GRUB_DISABLE_OS_PROBER=true GRUB_SAVEDEFAULT=true",
        "only grub2-mkconfig ran, in the chroot\n{diag}"
    );
    let listing = d.esp_listing();
    assert_eq!(
        d.esp_file("EFI/debian/shimx64.efi").as_deref(),
        Some("MZ shim"),
        "{listing}"
    );
    assert_eq!(
        d.esp_file("EFI/debian/grubx64.efi").as_deref(),
        Some("MZ grub")
    );
    assert_eq!(
        d.esp_file("EFI/debian/grub.cfg").as_deref(),
        Some("# made by the stand-in grub2-mkconfig\n"),
        "grub.cfg copied from the image after grub2-mkconfig: {listing}"
    );
    assert_eq!(
        d.esp_file("EFI/debian/grubenv").as_deref(),
        Some("# GRUB Environment Block\n")
    );
    let entry = boot_var_text(&d.vars(), "Boot0000");
    assert!(
        entry.contains("debian") && entry.contains("\\EFI\\debian\\shimx64.efi"),
        "the CSV's entry: {entry:?}\n{diag}"
    );
    let fstab = d.root_file("/etc/fstab");
    assert!(
        fstab.ends_with(&format!(
            "UUID={ESP_UUID}\t/boot/efi\tvfat\tumask=0077\t0\t1\n"
        )),
        "{fstab:?}"
    );
    // A second run adds no second fstab line.
    let (f, diag) = install(&py, &a, Some(ESP_UUID), "uefi");
    assert_eq!(f["command_status"], "SUCCEEDED", "{diag}");
    assert_eq!(d.root_file("/etc/fstab").matches("/boot/efi").count(), 1);
    d.assert_clean(&a);
}

#[test]
fn without_efi_assets_grub_install_runs_twice_in_the_chroot() {
    let Some(py) = tools("grub_uefi_install") else {
        return;
    };
    let img = Image {
        bin: "grub",
        fstab_symlink: true,
        ..Default::default()
    };
    let d = disk(&img);
    let partuuid = run("sgdisk", &["-i", "1", d.lo.dev.to_str().unwrap()], &[])
        .lines()
        .find_map(|l| l.strip_prefix("Partition unique GUID: "))
        .unwrap()
        .trim()
        .to_lowercase();
    let a = d.agent(true, true, &[]);
    let (f, diag) = install(&py, &a, Some(&partuuid), "uefi");
    assert_eq!(f["command_status"], "SUCCEEDED", "{diag}");
    d.assert_clean(&a);
    let log = d.root_file("/var/log/grub.log");
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 3, "{log}\n{diag}");
    assert!(
        lines[0].starts_with("grub-install [] blockdev=no proc=yes sys=yes PATH="),
        "{log}"
    );
    assert!(
        lines[0].ends_with(":/bin:/usr/sbin:/sbin"),
        "IPA's PATH: {log}"
    );
    assert!(lines[1].starts_with("grub-install [--removable] "), "{log}");
    assert_eq!(
        lines[2],
        "grub-mkconfig [-o /boot/grub/grub.cfg] GRUB_DISABLE_OS_PROBER=true GRUB_SAVEDEFAULT=true"
    );
    let listing = d.esp_listing();
    assert_eq!(
        d.esp_file("EFI/debian/grubx64.efi").as_deref(),
        Some("MZ grub\n"),
        "{listing}"
    );
    assert_eq!(
        d.esp_file("EFI/BOOT/BOOTX64.EFI").as_deref(),
        Some("MZ removable\n")
    );
    let entry = boot_var_text(&d.vars(), "Boot0000");
    assert!(
        entry.contains("ironic1") && entry.contains("\\EFI\\BOOT\\BOOTX64.EFI"),
        "{entry:?}\n{diag}"
    );
    // etc/fstab -> /etc/fstab.real resolved inside the image, not in the ramdisk.
    let fstab = d.root_file("/etc/fstab.real");
    assert!(
        fstab.ends_with(&format!(
            "PARTUUID={partuuid}\t/boot/efi\tvfat\tumask=0077\t0\t1\n"
        )),
        "the ESP named by its PARTUUID: {fstab:?}"
    );
}

#[test]
fn bios_grub_install_goes_onto_the_disk_and_failures_are_ipas() {
    let Some(py) = tools("grub_bios") else {
        return;
    };
    let img = Image {
        bin: "grub",
        efi_assets: false,
        grub_fails: false,
        ..Default::default()
    };
    let d = disk(&img);
    {
        let a = d.agent(false, true, &[]);
        let (f, diag) = install(&py, &a, None, "bios");
        assert_eq!(f["command_status"], "SUCCEEDED", "{diag}");
        d.assert_clean(&a);
    }
    let log = d.root_file("/var/log/grub.log");
    let dev = d.lo.dev.display().to_string();
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 2, "{log}");
    assert!(
        lines[0].starts_with(&format!(
            "grub-install [{dev}] blockdev=yes proc=yes sys=yes"
        )),
        "the disk's node is in the chroot's /dev: {log}"
    );
    assert!(lines[1].starts_with("grub-mkconfig [-o /boot/grub/grub.cfg]"));
    // (e) the default: IPA's refusal, nothing run.
    {
        let a = d.agent(false, false, &[]);
        let (f, diag) = install(&py, &a, None, "bios");
        assert_eq!(f["command_error"]["type"], "InvalidImage", "{diag}");
        assert_eq!(
            f["command_error"]["details"],
            "Install of legacy BIOS bootloaders disabled by CONF.enable_bios_bootloader_install \
             as part of CVE-2026-43003 mitigation."
        );
        d.assert_clean(&a);
    }
    assert_eq!(d.root_file("/var/log/grub.log"), log, "nothing ran");
}

#[test]
fn a_failing_grub_install_is_a_command_execution_error_unless_ignored() {
    let Some(py) = tools("grub_bios_fails") else {
        return;
    };
    let img = Image {
        bin: "grub",
        efi_assets: false,
        grub_fails: true,
        ..Default::default()
    };
    let d = disk(&img);
    let dev = d.lo.dev.display().to_string();
    {
        let a = d.agent(false, true, &[]);
        let (f, diag) = install(&py, &a, None, "bios");
        assert_eq!(f["command_status"], "FAILED", "{diag}");
        assert_eq!(
            f["command_error"]["type"], "CommandExecutionError",
            "{diag}"
        );
        let details = f["command_error"]["details"].as_str().unwrap();
        assert!(
            details.starts_with(&format!(
                "Installing GRUB2 boot loader to device {dev} failed with Unexpected error while \
                 running command.\nCommand: chroot "
            )),
            "{details}"
        );
        assert!(
            details.ends_with(&format!(
                "/bin/sh -c \"grub-install {dev}\"\nExit code: 1\nStdout: ''\nStderr: 'stand-in grub failed'."
            )),
            "{details}"
        );
        d.assert_clean(&a);
    }
    {
        let a = d.agent(false, true, &["--ignore-bootloader-failure", "true"]);
        let (f, diag) = install(&py, &a, None, "bios");
        assert_eq!(f["command_status"], "SUCCEEDED", "{diag}");
        d.assert_clean(&a);
    }
    let log = d.root_file("/var/log/grub.log");
    assert_eq!(
        log.lines().count(),
        2,
        "grub-install ran each time, mkconfig never: {log}"
    );
}

#[test]
fn a_symlinked_mount_point_in_the_image_is_refused() {
    let Some(py) = tools("grub_hostile_run") else {
        return;
    };
    let img = Image {
        bin: "grub",
        run_symlink: true,
        ..Default::default()
    };
    let d = disk(&img);
    let a = d.agent(false, true, &[]);
    let (f, diag) = install(&py, &a, None, "bios");
    assert_eq!(
        f["command_error"]["type"], "CommandExecutionError",
        "{diag}"
    );
    let details = f["command_error"]["details"].as_str().unwrap();
    assert!(
        details.contains("/run: not a directory (or a symlink) in the image"),
        "{details}"
    );
    d.assert_clean(&a);
    assert_eq!(d.root_file("/var/log/grub.log"), "", "nothing ran");
}
