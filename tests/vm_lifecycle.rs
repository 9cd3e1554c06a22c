//! A whole node lifecycle under the real Ironic conductor, with rivet's ramdisk booted in a
//! QEMU/OVMF virtual machine: enroll, manage, inspect (in-band, through rivet's inventory),
//! provide (cleaning), deploy a whole-disk image with a config drive, boot it from disk through
//! the boot entry rivet wrote, undeploy (cleaning), then a qcow2 deploy and a deploy with a
//! wrong checksum. The work is done by `tests/vm/lifecycle.py` (network namespace, dnsmasq,
//! Ironic, the BMC); this test builds the ramdisk from the rivet binary cargo just built, runs
//! it, and prints its phase table.
//!
//! Skips (with the reason) when not root or when QEMU/OVMF are missing. Environment:
//! `RIVET_VM_RAMDISK=DIR` uses a ramdisk already built (`ramdisk/build.sh --out DIR`);
//! `RIVET_VM_UNTIL=heartbeat` stops after the first heartbeat.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

const TEST: &str = "vm_lifecycle";

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Why the test cannot run here, if it cannot.
fn missing() -> Option<String> {
    if !is_root() {
        return Some("needs root (network namespace, tap device, QEMU)".into());
    }
    let mut gone = vec![];
    if !have("qemu-system-x86_64") {
        gone.push("qemu-system-x86_64 (qemu-system-x86)");
    }
    if !Path::new("/usr/share/OVMF/OVMF_CODE_4M.fd").exists() {
        gone.push("/usr/share/OVMF/OVMF_CODE_4M.fd (ovmf)");
    }
    (!gone.is_empty()).then(|| format!("missing {}", gone.join(", ")))
}

fn build_ramdisk(tmp: &Path) -> PathBuf {
    let out = tmp.join("vm-ramdisk");
    let status = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/ramdisk/build.sh"))
        .arg("--out")
        .arg(&out)
        .args([
            "--rivet",
            env!("CARGO_BIN_EXE_rivet"),
            "--level",
            "9",
            "--cache",
        ])
        .arg(tmp.join("vm-debs"))
        .status()
        .expect("run ramdisk/build.sh");
    assert!(status.success(), "ramdisk/build.sh failed ({status})");
    out
}

#[test]
fn vm_lifecycle_under_real_ironic() {
    if let Some(why) = missing() {
        eprintln!("SKIPPED {TEST}: {why}");
        return;
    }
    let Some(python) = common::ironic_python(TEST) else {
        return;
    };
    let venv = Path::new(&python)
        .parent()
        .and_then(Path::parent)
        .expect("RIVET_IRONIC_PYTHON is <venv>/bin/python");
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let ramdisk = match std::env::var_os("RIVET_VM_RAMDISK") {
        Some(d) => PathBuf::from(d),
        None => build_ramdisk(tmp),
    };
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let work = tmp.join(format!("vm-lifecycle-{stamp}"));
    let until = std::env::var("RIVET_VM_UNTIL").unwrap_or_else(|_| "all".into());
    let status = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/vm/lifecycle.py"
        ))
        .arg("--ramdisk")
        .arg(&ramdisk)
        .arg("--venv")
        .arg(venv)
        .arg("--work")
        .arg(&work)
        .args(["--until", &until])
        .status()
        .expect("run tests/vm/lifecycle.py");
    assert!(
        status.success(),
        "the VM lifecycle stopped (see the output above); serial consoles, Ironic's log and \
         events.log are in {}",
        work.display()
    );
}
