//! The `rivet` binary as a person (or a script) runs it.

mod common;

use std::process::{Command, Output};

use common::{bytes, sha256, Route, Server};

fn rivet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rivet"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn last_stderr_line(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr)
        .lines()
        .last()
        .unwrap_or("")
        .to_string()
}

#[test]
fn deploy_with_flags_succeeds_and_says_so() {
    let s = Server::start();
    let data = bytes(3 << 20, 31);
    let url = s.route(
        "/os.img",
        Route::Bytes {
            data: data.clone(),
            ranges: true,
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("disk");
    let o = rivet(&[
        "deploy",
        "--url",
        &url,
        "--device",
        t.to_str().unwrap(),
        "--os-hash-algo",
        "sha256",
        "--os-hash-value",
        &sha256(&data),
        "--retries",
        "1",
        "--verify-readback",
        "--no-partition-check",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains(&format!(
            "rivet: image os.img written to {} and verified: 3145728 bytes",
            t.display()
        )),
        "{out}"
    );
    assert_eq!(std::fs::read(&t).unwrap(), *data);
}

#[test]
fn deploy_with_image_info_json_as_ironic_sends_it() {
    let s = Server::start();
    let data = bytes(2 << 20, 32);
    let url = s.route(
        "/os.img",
        Route::Bytes {
            data: data.clone(),
            ranges: false,
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("disk");
    let info = dir.path().join("info.json");
    std::fs::write(
        &info,
        serde_json::json!({"id": "4f2c-glance-id", "urls": [url], "disk_format": "raw",
            "container_format": "bare", "stream_raw_images": true, "checksum": sha256(&data),
            "node_uuid": "1be26c0b-03f2-4d2e-ae87-c02d7f33c123", "image_type": "whole-disk-image",
            "some_future_key": [1, 2]})
        .to_string(),
    )
    .unwrap();
    let o = rivet(&[
        "deploy",
        "--image-info",
        info.to_str().unwrap(),
        "--device",
        t.to_str().unwrap(),
        "--no-partition-check",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("image 4f2c-glance-id written"));
    assert_eq!(std::fs::read(&t).unwrap(), *data);

    // Without --no-partition-check the CLI applies the agent's rule: an image that leaves no
    // partition table fails, and the disk's table areas are wiped.
    let o = rivet(&[
        "deploy",
        "--image-info",
        info.to_str().unwrap(),
        "--device",
        t.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.trim_end().ends_with(
            "rivet: DeploymentError: Unable to find a valid partition table on the disk after \
             writing the image. The image may be corrupted or it uses a different sector size \
             than the device. Error: no GPT or MBR found"
        ),
        "{err}"
    );
    assert!(std::fs::read(&t).unwrap()[..1 << 20]
        .iter()
        .all(|&b| b == 0));
}

#[test]
fn failures_exit_non_zero_with_one_line_naming_the_error() {
    let s = Server::start();
    let data = bytes(2 << 20, 33);
    let url = s.route(
        "/os.img",
        Route::Bytes {
            data: data.clone(),
            ranges: false,
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("disk");
    let t = t.to_str().unwrap();
    let o = rivet(&[
        "deploy",
        "--url",
        &url,
        "--device",
        t,
        "--checksum",
        &"f".repeat(64),
        "--retries",
        "0",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let line = last_stderr_line(&o);
    assert!(
        line.starts_with(
            "rivet: ImageChecksumError: Image failed to verify against checksum. location: "
        ),
        "{line}"
    );

    let o = rivet(&[
        "deploy",
        "--url",
        &s.url("/nope"),
        "--device",
        t,
        "--checksum",
        &"f".repeat(64),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let line = last_stderr_line(&o);
    assert!(line.starts_with("rivet: ImageDownloadFatalError: Download of image nope failed: Received status code 404"), "{line}");

    let o = rivet(&[
        "deploy",
        "--url",
        &url,
        "--device",
        t,
        "--checksum",
        &"f".repeat(32),
    ]);
    let line = last_stderr_line(&o);
    assert!(
        line.contains("rivet: InvalidCommandParamsError: Image checksum is not available"),
        "{line}"
    );

    let o = rivet(&[
        "deploy",
        "--url",
        &url,
        "--device",
        t,
        "--checksum",
        &"f".repeat(64),
        "--disk-format",
        "qcow2",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        last_stderr_line(&o),
        "rivet: InvalidImage: Security: Expected format was qcow2, but image was actually raw"
    );
}

#[test]
fn malformed_image_info_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("info.json");
    let d = dir.path().join("disk");
    std::fs::write(&f, "{\"id\": \"x\", \"urls\": [").unwrap();
    let o = rivet(&[
        "deploy",
        "--image-info",
        f.to_str().unwrap(),
        "--device",
        d.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        last_stderr_line(&o).contains("is not JSON"),
        "{}",
        last_stderr_line(&o)
    );
    std::fs::write(
        &f,
        "{\"id\": \"x\", \"urls\": \"http://a/b\", \"checksum\": \"x\"}",
    )
    .unwrap();
    let o = rivet(&[
        "deploy",
        "--image-info",
        f.to_str().unwrap(),
        "--device",
        d.to_str().unwrap(),
    ]);
    assert_eq!(
        last_stderr_line(&o),
        "rivet: InvalidCommandParamsError: Image 'urls' must be a list with at least one element."
    );
    assert!(!d.exists(), "nothing may be created for a refused request");
}

#[test]
fn the_demo_runs_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let o = rivet(&[
        "demo",
        "--dir",
        dir.path().to_str().unwrap(),
        "--size-mib",
        "8",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("written to") && out.contains("and verified"),
        "{out}"
    );
    assert!(out.contains("backup GPT: Moved"), "{out}");
    let img = std::fs::read(dir.path().join("sample.img")).unwrap();
    let disk = std::fs::read(dir.path().join("disk.img")).unwrap();
    assert_eq!(disk.len(), img.len() * 2);
    assert_eq!(
        &disk[2 << 20..img.len() - (1 << 20)],
        &img[2 << 20..img.len() - (1 << 20)]
    );
}

/// A ramdisk without a CA bundle: plain http still works, and an https server is trusted
/// through --cafile alone (rustls' system roots are empty here: SSL_CERT_FILE/SSL_CERT_DIR
/// point at nothing).
#[test]
fn no_system_ca_certificates_is_not_fatal() {
    let s = Server::start();
    let data = bytes(1 << 20, 35);
    let url = s.route(
        "/os.img",
        Route::Bytes {
            data: data.clone(),
            ranges: false,
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("certs");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::write(empty.join("none.pem"), "").unwrap();
    let t = dir.path().join("disk");
    let o = Command::new(env!("CARGO_BIN_EXE_rivet"))
        .args(["deploy", "--url", &url, "--device", t.to_str().unwrap()])
        .args([
            "--checksum",
            &sha256(&data),
            "--retries",
            "0",
            "--no-partition-check",
        ])
        .env("SSL_CERT_FILE", empty.join("none.pem"))
        .env("SSL_CERT_DIR", &empty)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("no CA certificates on this system"), "{err}");
    assert_eq!(std::fs::read(&t).unwrap(), *data);
}

/// `rivet demo` takes the streaming path `rivet deploy` takes (not the temp-file path).
#[test]
fn the_demo_streams_like_deploy() {
    let dir = tempfile::tempdir().unwrap();
    let o = rivet(&[
        "demo",
        "--size-mib",
        "8",
        "--dir",
        dir.path().to_str().unwrap(),
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.contains("path: Raw"), "{out}");
}
