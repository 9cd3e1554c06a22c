//! Limits on every network read besides the image itself: a checksum file has a size bound;
//! the checksum file and a config drive given by URL have a stall timeout and count against
//! `image_download_max_duration`. Run through `rivet deploy`.

mod common;

use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{bytes, gpt_image, sha256, Route, Server};

fn deploy(args: &[&str]) -> (Output, Duration) {
    let t = Instant::now();
    let o = Command::new(env!("CARGO_BIN_EXE_rivet"))
        .arg("deploy")
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    (o, t.elapsed())
}

fn last_line(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr)
        .lines()
        .last()
        .unwrap_or("")
        .to_string()
}

/// An image on the server and a device path for it.
fn image(s: &Server, dir: &std::path::Path) -> (Arc<Vec<u8>>, String, String) {
    let data = bytes(1 << 20, 71);
    let url = s.route(
        "/os.img",
        Route::Bytes {
            data: data.clone(),
            ranges: false,
        },
    );
    let dev = dir.join("disk").display().to_string();
    (data, url, dev)
}

#[test]
fn checksum_files_larger_than_4_mib_are_refused() {
    let s = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let (data, url, dev) = image(&s, dir.path());
    // 64 MiB of comments, then the right line: no real *SUMS file looks like this.
    let mut big = "# padding padding padding padding padding padding padding padding\n"
        .repeat((64 << 20) / 66)
        .into_bytes();
    big.extend(format!("{}  os.img\n", sha256(&data)).bytes());
    let sums = s.route(
        "/SHA256SUMS",
        Route::Bytes {
            data: Arc::new(big),
            ranges: false,
        },
    );
    let endless = s.route(
        "/ENDLESS",
        Route::Endless {
            chunk: Arc::new(b"# more\n".repeat(4096)),
            max_secs: 60,
        },
    );
    for checksum in [sums, endless] {
        let (o, took) = deploy(&[
            "--url",
            &url,
            "--device",
            &dev,
            "--checksum",
            &checksum,
            "--retries",
            "0",
            "--no-partition-check",
        ]);
        let line = last_line(&o);
        assert!(!o.status.success(), "{checksum}: {line}");
        assert!(
            line.starts_with("rivet: ImageDownloadError: ") && line.contains("larger than 4 MiB"),
            "{checksum}: {line}"
        );
        assert!(took < Duration::from_secs(20), "{checksum}: {took:?}");
    }
}

#[test]
fn a_stalled_checksum_file_times_out() {
    let s = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let (data, url, dev) = image(&s, dir.path());
    let sums = s.route(
        "/SHA256SUMS",
        Route::Stall {
            data: Arc::new(format!("{}  os.img\n", sha256(&data)).into_bytes()),
            after: 5,
            secs: 30,
        },
    );
    let (o, took) = deploy(&[
        "--url",
        &url,
        "--device",
        &dev,
        "--checksum",
        &sums,
        "--retries",
        "0",
        "--connection-timeout",
        "1",
        "--no-partition-check",
    ]);
    let line = last_line(&o);
    assert!(!o.status.success(), "{line}");
    assert!(line.contains("Timed out reading"), "{line}");
    assert!(took < Duration::from_secs(10), "{took:?}");
}

#[test]
fn a_trickling_checksum_file_counts_against_the_max_duration() {
    let s = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let (data, url, dev) = image(&s, dir.path());
    // 76 bytes at 5 bytes a second: 15 s, never a 1 s stall.
    let sums = s.route(
        "/SHA256SUMS",
        Route::Trickle {
            data: Arc::new(format!("{}  os.img\n", sha256(&data)).into_bytes()),
            every_ms: 200,
        },
    );
    let (o, took) = deploy(&[
        "--url",
        &url,
        "--device",
        &dev,
        "--checksum",
        &sums,
        "--retries",
        "0",
        "--connection-timeout",
        "1",
        "--max-duration",
        "2",
        "--no-partition-check",
    ]);
    let line = last_line(&o);
    assert!(!o.status.success(), "{line}");
    assert!(
        line.starts_with("rivet: ImageDownloadTimeoutError: ")
            && line.contains("max allowed time (2 seconds)"),
        "{line}"
    );
    assert!(took < Duration::from_secs(8), "{took:?}");
}

#[test]
fn a_trickling_config_drive_counts_against_the_max_duration() {
    let s = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let img = Arc::new(gpt_image(dir.path(), 4 << 20, 72));
    let url = s.route(
        "/os.img",
        Route::Bytes {
            data: img.clone(),
            ranges: false,
        },
    );
    let cd = s.route(
        "/configdrive",
        Route::Trickle {
            data: Arc::new(vec![b'A'; 100]),
            every_ms: 200,
        },
    );
    let dev = dir.path().join("disk").display().to_string();
    let (o, took) = deploy(&[
        "--url",
        &url,
        "--device",
        &dev,
        "--checksum",
        &sha256(&img),
        "--configdrive",
        &cd,
        "--connection-timeout",
        "1",
        "--max-duration",
        "2",
    ]);
    let line = last_line(&o);
    assert!(!o.status.success(), "{line}");
    assert!(
        line.starts_with("rivet: DeploymentError: Can't download the configdrive content")
            && line.contains("image_download_max_duration"),
        "{line}"
    );
    assert!(took < Duration::from_secs(8), "{took:?}");
}
