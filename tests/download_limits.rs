//! Limits on every network read besides the image itself: a checksum file has a size bound;
//! the checksum file and a config drive given by URL have a stall timeout and count against
//! `image_download_max_duration`. Run through `rivet deploy`.

mod common;

use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{bytes, sha256, Route, Server};

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
