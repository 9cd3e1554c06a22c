//! A real `rivet serve`, driven by Ironic's own `AgentClient` (the `ironic` package from PyPI,
//! in the venv made by `tests/ironic/setup.sh`), deploying onto a real loop device.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use common::{
    gpt_image, ironic_python, loop_devices_available, sha256, AgentProc, LoopDev, Route, Server,
};

const MIB: u64 = 1 << 20;
const TOKEN: &str = "0123456789abcdef0123456789abcdef-rivet";

/// Runs one scenario of `tests/ironic/drive_agent.py`; returns (exit code, stdout JSON line).
fn drive(py: &str, agent: &AgentProc, args: &[&str]) -> (i32, serde_json::Value, String) {
    drive_url(py, agent, &agent.url(), args)
}

fn drive_url(
    py: &str,
    agent: &AgentProc,
    url: &str,
    args: &[&str],
) -> (i32, serde_json::Value, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ironic/drive_agent.py");
    let out = Command::new(py)
        .arg(script)
        .args([
            "--agent-url",
            url,
            "--token",
            TOKEN,
            "--timeout",
            "120",
            "--poll-interval",
            "0.3",
        ])
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let line = stdout.lines().last().unwrap_or("{}");
    let v = serde_json::from_str(line).unwrap_or(serde_json::Value::Null);
    (
        out.status.code().unwrap_or(-1),
        v,
        format!("{stdout}\n{stderr}\nagent log:\n{}", agent.log_text()),
    )
}

#[test]
fn ironic_agent_client_deploys_through_rivet() {
    if !loop_devices_available("ironic_agent_client") {
        return;
    }
    let Some(py) = ironic_python("ironic_agent_client") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let image = Arc::new(gpt_image(dir.path(), 24 * MIB, 41));
    let s = Server::start();
    let url = s.route(
        "/os.img",
        Route::Bytes {
            data: image.clone(),
            ranges: true,
        },
    );
    let slow = s.route(
        "/slow.img",
        Route::Stall {
            data: image.clone(),
            after: 2 * MIB as usize,
            secs: 3,
        },
    );
    let dev = LoopDev::new(dir.path(), "disk", 128 * MIB, 0x11);
    let power_log = dir.path().join("power.log");
    let agent = AgentProc::start(
        dir.path(),
        &[
            "--root-device",
            dev.dev.to_str().unwrap(),
            "--agent-token",
            TOKEN,
            "--power-log",
            power_log.to_str().unwrap(),
            "--image-download-connection-retries",
            "0",
            "--image-download-connection-timeout",
            "2",
        ],
    );
    let info = |name: &str, v: serde_json::Value| {
        let p = dir.path().join(name);
        std::fs::write(&p, v.to_string()).unwrap();
        p.display().to_string()
    };
    let good = info(
        "good.json",
        serde_json::json!({
        "id": "os-image", "urls": [url], "disk_format": "raw", "container_format": "bare",
        "stream_raw_images": true, "os_hash_algo": "sha256", "os_hash_value": sha256(&image),
        "node_uuid": "1be26c0b-03f2-4d2e-ae87-c02d7f33c123", "image_type": "whole-disk-image"}),
    );

    // get_deploy_steps, validated as agent_base.refresh_steps does.
    let (rc, v, log) = drive(&py, &agent, &["--scenario", "deploy_steps"]);
    assert_eq!(rc, 0, "{log}");
    assert_eq!(v["ok"], true, "{log}");

    // get_partition_uuids before any deploy: {}.
    let (rc, v, log) = drive(&py, &agent, &["--scenario", "partition_uuids"]);
    assert_eq!(rc, 0, "{log}");
    assert_eq!(v["command_result"], serde_json::json!({}), "{log}");

    // write_image through execute_deploy_step, polled to SUCCEEDED as the conductor does.
    let (rc, v, log) = drive(
        &py,
        &agent,
        &["--scenario", "deploy", "--image-info", &good],
    );
    assert_eq!(rc, 0, "{log}");
    let text = v.to_string();
    assert!(
        text.contains("prepare_image: image (os-image) written to device"),
        "{log}"
    );
    let on_disk = dev.read();
    let end = image.len() - 33 * 512;
    assert!(
        on_disk[1024..end] == image[1024..end],
        "the image is not on the device"
    );
    assert_eq!(&on_disk[..446], &image[..446]);

    // get_partition_uuids: the MBR disk signature, as IPA reports whole-disk images.
    let (rc, v, log) = drive(&py, &agent, &["--scenario", "partition_uuids"]);
    assert_eq!(rc, 0, "{log}");
    let sig = u32::from_le_bytes(image[440..444].try_into().unwrap());
    assert_eq!(
        v["command_result"]["root uuid"],
        format!("0x{sig:08x}"),
        "{log}"
    );

    // write_image with a config drive (gzip+base64, as the conductor renders it), then
    // get_partition_uuids.
    let cd = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/configdrive.b64");
    let (rc, v, log) = drive(
        &py,
        &agent,
        &[
            "--scenario",
            "deploy",
            "--image-info",
            &good,
            "--configdrive",
            &format!("@{}", cd.display()),
        ],
    );
    assert_eq!(rc, 0, "{log}");
    assert_eq!(v["command_status"], "SUCCEEDED", "{log}");
    let out = Command::new("sfdisk")
        .arg("-J")
        .arg(&dev.dev)
        .output()
        .unwrap();
    let table: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let parts = table["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(parts.len(), 2, "no config drive partition: {table}");
    let (start, size) = (
        parts[1]["start"].as_u64().unwrap() * 512,
        parts[1]["size"].as_u64().unwrap() * 512,
    );
    let cdp = LoopDev::over_range(&dev.dev, start, size);
    let blkid = Command::new("blkid")
        .args(["-p", "-o", "export"])
        .arg(&cdp.dev)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&blkid.stdout).contains("LABEL=config-2"));
    drop(cdp);
    let (rc, v, log) = drive(&py, &agent, &["--scenario", "partition_uuids"]);
    assert_eq!(rc, 0, "{log}");
    assert_eq!(
        v["command_result"]["root uuid"],
        format!("0x{sig:08x}"),
        "{log}"
    );

    // sync, and power_off on the safe backend.
    let (rc, _, log) = drive(&py, &agent, &["--scenario", "sync"]);
    assert_eq!(rc, 0, "{log}");
    let (rc, _, log) = drive(&py, &agent, &["--scenario", "power_off"]);
    assert_eq!(rc, 0, "{log}");
    for _ in 0..50 {
        if power_log.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(
        std::fs::read_to_string(&power_log).unwrap_or_default(),
        "poweroff\n",
        "{log}"
    );

    // A wrong checksum: FAILED with ImageChecksumError, read by Ironic's get_command_error.
    let bad = info(
        "bad.json",
        serde_json::json!({
        "id": "bad-sum", "urls": [s.url("/os.img")], "disk_format": "raw",
        "os_hash_algo": "sha256", "os_hash_value": "0".repeat(64)}),
    );
    let (rc, v, log) = drive(
        &py,
        &agent,
        &[
            "--scenario",
            "deploy",
            "--image-info",
            &bad,
            "--expect-failure",
            "ImageChecksumError",
        ],
    );
    assert_eq!(rc, 0, "{log}");
    assert!(
        v.to_string()
            .contains("Image failed to verify against checksum"),
        "{log}"
    );

    // Version mismatch: CLEAN_VERSION_MISMATCH with VersionMismatch.
    let (rc, _, log) = drive(
        &py,
        &agent,
        &[
            "--scenario",
            "deploy",
            "--image-info",
            &good,
            "--deploy-version",
            "{\"generic_hardware_manager\": \"0.9\"}",
            "--expect-failure",
            "VersionMismatch",
        ],
    );
    assert_eq!(rc, 0, "{log}");

    // Busy: a second command while write_image runs -> Ironic's AgentInProgress.
    let slow_info = info(
        "slow.json",
        serde_json::json!({
        "id": "slow", "urls": [slow], "disk_format": "raw",
        "os_hash_algo": "sha256", "os_hash_value": sha256(&image)}),
    );
    let (rc, v, log) = drive(
        &py,
        &agent,
        &["--scenario", "busy", "--image-info", &slow_info],
    );
    assert_eq!(rc, 0, "{log}");
    assert!(v.to_string().contains("AgentInProgress"), "{log}");

    // A wrong token: the 401 error Ironic raises (AgentAPIError).
    let (rc, v, log) = drive(&py, &agent, &["--scenario", "bad_token"]);
    assert_eq!(rc, 0, "{log}");
    assert!(v.to_string().contains("401"), "{log}");

    // collect_system_logs after a failure: a gzip+base64 tar with rivet's own log.
    let (rc, v, log) = drive(&py, &agent, &["--scenario", "collect_logs"]);
    assert_eq!(rc, 0, "{log}");
    assert!(v.to_string().contains("rivet.log"), "{log}");
}

/// Ironic's client over HTTPS (its default minimum is TLS 1.3), verifying the agent's
/// certificate as `agent_verify_ca`.
#[test]
fn ironic_agent_client_over_tls() {
    let Some(py) = ironic_python("ironic_agent_client_tls") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (c, k, _) = common::self_signed_files(dir.path());
    let agent = AgentProc::start(
        dir.path(),
        &[
            "--listen-tls",
            "--tls-cert-file",
            c.to_str().unwrap(),
            "--tls-key-file",
            k.to_str().unwrap(),
            "--agent-token",
            TOKEN,
        ],
    );
    let url = format!("https://127.0.0.1:{}", agent.port);
    let (rc, v, log) = drive_url(
        &py,
        &agent,
        &url,
        &["--scenario", "sync", "--verify-ca", c.to_str().unwrap()],
    );
    assert_eq!(rc, 0, "{log}");
    assert_eq!(v["command_status"], "SUCCEEDED", "{log}");
    let (rc, _, log) = drive_url(
        &py,
        &agent,
        &url,
        &[
            "--scenario",
            "deploy_steps",
            "--verify-ca",
            c.to_str().unwrap(),
        ],
    );
    assert_eq!(rc, 0, "{log}");
}
