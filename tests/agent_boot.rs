//! `image.install_bootloader`, `rescue.finalize_rescue`, `system.lockdown` and the service
//! steps, driven by Ironic's own `AgentClient` against `rivet serve`. The UEFI variables go to
//! a directory standing in for efivarfs (`--efivars-dir`, a setting: the machine counts as
//! booted in UEFI mode when it exists) and are checked byte for byte against the UEFI
//! specification's EFI_LOAD_OPTION layout.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::esp::{gpt_disk, have, make_esp, mbr_disk, ESP_LBAS, ESP_START_LBA};
use common::{ironic_python, AgentProc};
use serde_json::Value;

const TOKEN: &str = "boot-token-0123456789abcdef0123456789abcdef";
const GLOBAL: &str = "8be4df61-93ca-11d2-aa0d-00e098032b8c";

fn drive(py: &str, agent: &AgentProc, args: &[&str]) -> (i32, Value, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ironic/drive_steps.py");
    let out = Command::new(py)
        .arg(script)
        .args(["--agent-url", &agent.url(), "--token", TOKEN])
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: Value =
        serde_json::from_str(stdout.lines().last().unwrap_or("{}")).unwrap_or(Value::Null);
    let diag = format!(
        "{stdout}\n{}\n--- agent log ---\n{}",
        String::from_utf8_lossy(&out.stderr),
        agent.log_text()
    );
    (out.status.code().unwrap_or(-1), v, diag)
}

/// A variable's bytes (attributes word included), if it exists.
fn var(dir: &Path, name: &str) -> Option<Vec<u8>> {
    std::fs::read(dir.join(format!("{name}-{GLOBAL}"))).ok()
}

fn u16s(b: &[u8]) -> Vec<u16> {
    b.chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect()
}

/// An EFI_LOAD_OPTION read by the UEFI specification (2.10, 3.1.3), independently of rivet's
/// own decoder: (attributes, description, HD node fields, file path).
struct Parsed {
    var_attributes: u32,
    option_attributes: u32,
    description: String,
    part_number: u32,
    part_start: u64,
    part_size: u64,
    signature: [u8; 16],
    mbr_type: u8,
    sig_type: u8,
    file: String,
}

fn parse(b: &[u8]) -> Parsed {
    let le32 = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
    let le64 = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
    let var_attributes = le32(0);
    let o = 4; // the option itself follows efivarfs's attribute word
    let option_attributes = le32(o);
    let path_len = u16::from_le_bytes([b[o + 4], b[o + 5]]) as usize;
    let mut at = o + 6;
    let mut desc = Vec::new();
    loop {
        let c = u16::from_le_bytes([b[at], b[at + 1]]);
        at += 2;
        if c == 0 {
            break;
        }
        desc.push(c);
    }
    let paths = &b[at..at + path_len];
    // Hard Drive Media Device Path: type 4, subtype 1, length 42.
    assert_eq!(
        (paths[0], paths[1]),
        (4, 1),
        "first node is not a hard drive node"
    );
    assert_eq!(u16::from_le_bytes([paths[2], paths[3]]), 42);
    let h = at;
    // File Path Media Device Path: type 4, subtype 4, then the End Entire node.
    let f = &paths[42..];
    assert_eq!((f[0], f[1]), (4, 4), "second node is not a file path node");
    let flen = u16::from_le_bytes([f[2], f[3]]) as usize;
    let file: Vec<u16> = u16s(&f[4..flen])
        .into_iter()
        .take_while(|&c| c != 0)
        .collect();
    assert_eq!(
        &f[flen..flen + 4],
        &[0x7f, 0xff, 4, 0],
        "no End Entire node"
    );
    assert_eq!(42 + flen + 4, path_len, "FilePathListLength");
    Parsed {
        var_attributes,
        option_attributes,
        description: String::from_utf16(&desc).unwrap(),
        part_number: le32(h + 4),
        part_start: le64(h + 8),
        part_size: le64(h + 16),
        signature: b[h + 24..h + 40].try_into().unwrap(),
        mbr_type: b[h + 40],
        sig_type: b[h + 41],
        file: String::from_utf16(&file).unwrap(),
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    vars: PathBuf,
    disk: PathBuf,
}

fn setup(files: &[(&str, &[u8])], esp_type: &str) -> (Setup, uuid::Uuid) {
    let dir = tempfile::tempdir().unwrap();
    let esp = make_esp(dir.path(), "esp.img", files, "1234ABCD");
    let (disk, guid) = gpt_disk(dir.path(), &esp, esp_type);
    let vars = dir.path().join("efivars");
    std::fs::create_dir_all(&vars).unwrap();
    (
        Setup {
            vars,
            disk,
            _dir: dir,
        },
        guid,
    )
}

fn agent(s: &Setup, efivars: bool) -> AgentProc {
    let missing = s.vars.with_extension("absent");
    let vars = if efivars { &s.vars } else { &missing };
    AgentProc::start(
        s._dir.path(),
        &[
            "--agent-token",
            TOKEN,
            "--root-device",
            s.disk.to_str().unwrap(),
            "--efivars-dir",
            vars.to_str().unwrap(),
        ],
    )
}

fn tools(test: &str) -> Option<String> {
    if !have(test, &["mkfs.vfat", "mmd", "mcopy", "sgdisk", "sfdisk"]) {
        assert!(
            std::env::var("CI").is_err(),
            "{test}: CI must have the ESP tools"
        );
        return None;
    }
    ironic_python(test)
}

fn install(py: &str, a: &AgentProc, root_uuid: Option<&str>) -> (i32, Value, String) {
    let mut args = vec!["--scenario", "install_bootloader"];
    if let Some(r) = root_uuid {
        args.extend(["--root-uuid", r]);
    }
    drive(py, a, &args)
}

#[test]
fn uefi_entries_for_the_fallback_loader_replace_their_label_and_boot_first() {
    let Some(py) = tools("uefi_fallback") else {
        return;
    };
    let (s, guid) = setup(
        &[("EFI/BOOT/BOOTX64.EFI", b"MZ loader")],
        "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
    );
    // Something the firmware had before: a PXE entry first in BootOrder.
    let mut pxe = vec![7, 0, 0, 0, 1, 0, 0, 0, 4, 0];
    pxe.extend("PXE\0".encode_utf16().flat_map(u16::to_le_bytes));
    pxe.extend([0x7f, 0xff, 4, 0]);
    std::fs::write(s.vars.join(format!("Boot0000-{GLOBAL}")), &pxe).unwrap();
    std::fs::write(
        s.vars.join(format!("BootOrder-{GLOBAL}")),
        [7, 0, 0, 0, 0, 0],
    )
    .unwrap();

    let a = agent(&s, true);
    for round in 0..2 {
        let (rc, v, diag) = install(&py, &a, Some("0x1a2b3c4d"));
        assert_eq!(rc, 0, "round {round}: {diag}");
        assert_eq!(v["final"]["command_status"], "SUCCEEDED", "{diag}");
    }
    let boots: Vec<String> = std::fs::read_dir(&s.vars)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("Boot0"))
        .collect();
    assert_eq!(
        boots.len(),
        2,
        "one PXE entry and one ironic1, never a duplicate: {boots:?}"
    );
    let e = parse(&var(&s.vars, "Boot0001").expect("Boot0001"));
    assert_eq!(
        e.var_attributes, 7,
        "NON_VOLATILE | BOOTSERVICE_ACCESS | RUNTIME_ACCESS"
    );
    assert_eq!(e.option_attributes, 1, "LOAD_OPTION_ACTIVE");
    assert_eq!(e.description, "ironic1");
    assert_eq!(e.part_number, 1);
    assert_eq!(e.part_start, ESP_START_LBA);
    assert_eq!(e.part_size, ESP_LBAS);
    assert_eq!(
        e.signature,
        guid.to_bytes_le(),
        "GPT partition GUID, mixed-endian"
    );
    assert_eq!((e.mbr_type, e.sig_type), (2, 2), "GPT, GUID signature");
    assert_eq!(e.file, "\\EFI\\BOOT\\BOOTX64.EFI");
    let order = var(&s.vars, "BootOrder").unwrap();
    assert_eq!(u16s(&order[4..]), vec![1, 0], "the new entry boots first");
}

#[test]
fn a_csv_names_the_loader_and_its_label() {
    let Some(py) = tools("uefi_csv") else { return };
    let csv: Vec<u8> = [0xff, 0xfe]
        .into_iter()
        .chain(
            "shimx64.efi,Debian GNU/Linux,,This is the boot entry for Debian\n"
                .encode_utf16()
                .flat_map(u16::to_le_bytes),
        )
        .collect();
    let (s, _) = setup(
        &[
            ("EFI/debian/BOOTX64.CSV", &csv),
            ("EFI/debian/shimx64.efi", b"MZ shim"),
            ("EFI/BOOT/BOOTX64.EFI", b"MZ fallback"),
        ],
        "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
    );
    let a = agent(&s, true);
    let (rc, v, diag) = install(&py, &a, Some("0x1a2b3c4d"));
    assert_eq!(
        (rc, &v["final"]["command_status"]),
        (0, &Value::from("SUCCEEDED")),
        "{diag}"
    );
    let e = parse(&var(&s.vars, "Boot0000").expect("Boot0000"));
    assert_eq!(e.description, "Debian GNU/Linux");
    assert_eq!(e.file, "\\EFI\\debian\\shimx64.efi");
}

#[test]
fn an_empty_esp_succeeds_only_without_a_root_signature() {
    let Some(py) = tools("uefi_empty") else {
        return;
    };
    let (s, _) = setup(&[], "C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
    let a = agent(&s, true);
    let (rc, v, diag) = install(&py, &a, Some("0x00000000"));
    assert_eq!(
        (rc, &v["final"]["command_status"]),
        (0, &Value::from("SUCCEEDED")),
        "{diag}"
    );
    assert_eq!(
        std::fs::read_dir(&s.vars).unwrap().count(),
        0,
        "nothing written"
    );
    let (_, v, diag) = install(&py, &a, Some("0x1a2b3c4d"));
    let err = &v["final"]["command_error"];
    assert_eq!(v["final"]["command_status"], "FAILED", "{diag}");
    assert_eq!(err["type"], "InvalidImage", "{diag}");
    assert_eq!(
        err["details"],
        "Install of legacy BIOS bootloaders disabled by CONF.enable_bios_bootloader_install \
         as part of CVE-2026-43003 mitigation."
    );
}

#[test]
fn a_disk_without_an_esp_is_device_not_found() {
    let Some(py) = tools("uefi_no_esp") else {
        return;
    };
    let (s, _) = setup(&[("EFI/BOOT/BOOTX64.EFI", b"MZ")], "8300");
    let a = agent(&s, true);
    let (_, v, diag) = install(&py, &a, Some("0x1a2b3c4d"));
    assert_eq!(v["final"]["command_status"], "FAILED", "{diag}");
    assert_eq!(
        v["final"]["command_error"]["type"], "DeviceNotFound",
        "{diag}"
    );
    assert!(
        v["final"]["command_error"]["details"]
            .as_str()
            .unwrap()
            .starts_with("No EFI partition could be detected"),
        "{diag}"
    );
}

#[test]
fn an_mbr_disk_gets_an_entry_with_its_signature() {
    let Some(py) = tools("uefi_mbr") else { return };
    let (mut s, _) = setup(
        &[("EFI/BOOT/BOOTX64.EFI", b"MZ")],
        "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
    );
    let esp = s._dir.path().join("esp.img");
    s.disk = mbr_disk(s._dir.path(), "mbr.img", &esp, 0x1a2b3c4d);
    let a = agent(&s, true);
    let (rc, v, diag) = install(&py, &a, Some("0x1a2b3c4d"));
    assert_eq!(
        (rc, &v["final"]["command_status"]),
        (0, &Value::from("SUCCEEDED")),
        "{diag}"
    );
    let e = parse(&var(&s.vars, "Boot0000").expect("Boot0000"));
    assert_eq!((e.mbr_type, e.sig_type), (1, 1), "MBR, 32-bit signature");
    assert_eq!(&e.signature[..4], &0x1a2b3c4du32.to_le_bytes());
    assert!(e.signature[4..].iter().all(|&b| b == 0));
}

#[test]
fn without_uefi_only_a_zero_signature_succeeds() {
    let Some(py) = tools("bios_mode") else { return };
    let (s, _) = setup(
        &[("EFI/BOOT/BOOTX64.EFI", b"MZ")],
        "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
    );
    let a = agent(&s, false);
    let (rc, v, diag) = install(&py, &a, Some("0x00000000"));
    assert_eq!(
        (rc, &v["final"]["command_status"]),
        (0, &Value::from("SUCCEEDED")),
        "{diag}"
    );
    let (_, v, diag) = install(&py, &a, None);
    assert_eq!(v["final"]["command_status"], "SUCCEEDED", "{diag}");
    let (_, v, diag) = install(&py, &a, Some("0x1a2b3c4d"));
    assert_eq!(
        v["final"]["command_error"]["type"], "InvalidImage",
        "{diag}"
    );
}

#[test]
fn finalize_rescue_writes_the_password_and_stops_the_agent() {
    let Some(py) = ironic_python("finalize_rescue") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (pw, marker) = (dir.path().join("rescue/pw"), dir.path().join("rescued"));
    let mut a = AgentProc::start(
        dir.path(),
        &[
            "--agent-token",
            TOKEN,
            "--rescue-password-file",
            pw.to_str().unwrap(),
            "--rescue-marker",
            marker.to_str().unwrap(),
        ],
    );
    let hash = "$6$rounds=5000$salt$hashedpassword";
    let (rc, v, diag) = drive(
        &py,
        &a,
        &["--scenario", "finalize_rescue", "--rescue-password", hash],
    );
    assert_eq!(rc, 0, "{diag}");
    assert_eq!(v["final"]["command_status"], "SUCCEEDED", "{diag}");
    assert_eq!(std::fs::read_to_string(&pw).unwrap(), hash);
    assert!(marker.exists());
    // The agent stops serving and exits, leaving the machine to the rescue user.
    let status = wait_exit(&mut a.child, 15).unwrap_or_else(|| panic!("still running: {diag}"));
    assert!(status.success(), "{}", a.log_text());
    // Started again on a rescued machine, it stays quiet: no API.
    let port = common::free_port();
    let mut again = Command::new(env!("CARGO_BIN_EXE_rivet"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--cmdline",
            "/dev/null",
        ])
        .args([
            "--config",
            "/dev/null",
            "--rescue-marker",
            marker.to_str().unwrap(),
        ])
        .env("RIVET_FORBID_POWER", "1")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(1));
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    assert!(
        again.try_wait().unwrap().is_none(),
        "it idles instead of exiting"
    );
    let _ = again.kill();
    let _ = again.wait();
}

fn wait_exit(c: &mut std::process::Child, secs: u64) -> Option<std::process::ExitStatus> {
    for _ in 0..secs * 10 {
        if let Some(s) = c.try_wait().unwrap() {
            return Some(s);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    None
}

#[test]
fn lockdown_stops_the_api_and_records_the_interfaces_going_down() {
    let Some(py) = ironic_python("lockdown") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("power.log");
    let mut a = AgentProc::start(
        dir.path(),
        &["--agent-token", TOKEN, "--power-log", log.to_str().unwrap()],
    );
    let (rc, v, diag) = drive(&py, &a, &["--scenario", "lockdown"]);
    assert_eq!(
        (rc, &v["final"]),
        (0, &Value::from("locked down")),
        "{diag}"
    );
    // AgentClient.lockdown returned only once the API stopped answering.
    assert!(std::net::TcpStream::connect(("127.0.0.1", a.port)).is_err());
    // The log backend recorded each interface it would have taken down; nothing was.
    let mut recorded = String::new();
    for _ in 0..50 {
        recorded = std::fs::read_to_string(&log).unwrap_or_default();
        if recorded.contains("down") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let ifaces: Vec<String> = std::fs::read_dir("/sys/class/net")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "lo" && Path::new("/sys/class/net").join(n).join("device").exists())
        .collect();
    for i in &ifaces {
        assert!(
            recorded.contains(&format!("ip link set {i} down")),
            "{recorded}\n{}",
            a.log_text()
        );
        let state = std::fs::read_to_string(format!("/sys/class/net/{i}/operstate")).unwrap();
        assert_ne!(state.trim(), "down", "{i} must stay up on the test machine");
    }
    // It stays alive, locked down, so nothing restarts it.
    assert!(a.child.try_wait().unwrap().is_none(), "{}", a.log_text());
}

#[test]
fn service_steps_list_what_rivet_runs_and_run_it() {
    let Some(py) = ironic_python("service_steps") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let a = AgentProc::start(dir.path(), &["--agent-token", TOKEN]);
    let (rc, v, diag) = drive(
        &py,
        &a,
        &["--scenario", "service", "--step", "create_configuration"],
    );
    assert_eq!(rc, 0, "{diag}");
    let names: Vec<&str> = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"delete_configuration") && names.contains(&"write_image"),
        "{names:?}"
    );
    let f = &v["final"];
    assert_eq!(f["command_name"], "execute_service_step", "{diag}");
    assert_eq!(f["command_status"], "SUCCEEDED", "{diag}");
    assert_eq!(f["command_result"]["service_result"], serde_json::json!({}));
    assert_eq!(
        f["command_result"]["service_step"]["step"],
        "create_configuration"
    );
    // A step rivet does not have: IPA's error, FAILED.
    let (_, v, diag) = drive(&py, &a, &["--scenario", "service", "--step", "burnin_cpu"]);
    assert_eq!(v["final"]["command_status"], "FAILED", "{diag}");
    assert_eq!(
        v["final"]["command_error"]["type"],
        "HardwareManagerMethodNotFound"
    );
    // A version mismatch.
    let (_, v, diag) = drive(
        &py,
        &a,
        &[
            "--scenario",
            "service",
            "--step",
            "create_configuration",
            "--version",
            r#"{"generic_hardware_manager": "1.1"}"#,
        ],
    );
    assert_eq!(
        v["final"]["command_status"], "CLEAN_VERSION_MISMATCH",
        "{diag}"
    );
}
