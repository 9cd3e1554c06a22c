//! The image pipeline against a real HTTP server on 127.0.0.1 with injected faults, writing to
//! regular files (the block-device cases are in `loopdev.rs`).

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{bytes, digest, sha256, Route, Server};
use rivet::deploy::pipeline::{write_image_to_path, DeployOptions, Written};
use rivet::errors::{AgentError, Result};
use rivet::image::fetch::{FetchConfig, Progress};
use rivet::image::info::ImageInfo;
use serde_json::{json, Value};

const MIB: usize = 1 << 20;

fn cfg() -> FetchConfig {
    FetchConfig {
        retries: 2,
        retry_interval: Duration::from_millis(20),
        connection_timeout: Duration::from_secs(3),
        ..FetchConfig::default()
    }
}

fn info(v: Value) -> ImageInfo {
    ImageInfo::from_value(&v, true).unwrap()
}

fn sha_info(urls: &[String], data: &[u8]) -> ImageInfo {
    info(
        json!({"id": "img-1", "urls": urls, "os_hash_algo": "sha256", "os_hash_value": sha256(data)}),
    )
}

fn run(i: &ImageInfo, target: &Path, c: &FetchConfig) -> (Result<Written>, Arc<Progress>) {
    let p = Arc::new(Progress::default());
    (
        write_image_to_path(i, target, c, &DeployOptions::default(), p.clone()),
        p,
    )
}

fn err(r: Result<Written>) -> AgentError {
    match r {
        Ok(d) => panic!("expected a failure, got {d:?}"),
        Err(e) => e,
    }
}

fn assert_image(target: &Path, data: &[u8]) {
    let on_disk = std::fs::read(target).unwrap();
    assert!(on_disk.len() >= data.len(), "target shorter than the image");
    assert!(
        on_disk[..data.len()] == data[..],
        "target differs from the image"
    );
}

#[test]
fn plain_download_lands_bit_for_bit_with_counters() {
    let s = Server::start();
    let data = bytes(5 * MIB + 777, 1);
    let url = s.route(
        "/img",
        Route::Bytes {
            data: data.clone(),
            ranges: true,
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("disk");
    let (r, p) = run(&sha_info(std::slice::from_ref(&url), &data), &t, &cfg());
    let d = r.unwrap();
    assert_eq!(d.bytes, data.len() as u64);
    assert_eq!(d.url, url);
    assert_eq!(d.digest, sha256(&data));
    assert_eq!(p.bytes_transferred(), data.len() as u64);
    assert_eq!(p.content_length(), Some(data.len() as u64));
    assert_eq!(p.bytes_written(), data.len() as u64);
    assert_image(&t, &data);
    assert_eq!(s.hits("/img"), 1);
}

#[test]
fn a_cut_connection_resumes_with_range_and_keeps_the_hash() {
    let s = Server::start();
    let data = bytes(6 * MIB, 2);
    let url = s.route(
        "/img",
        Route::CutAfter {
            data: data.clone(),
            after: 3 * MIB + 5,
            times: 1,
            ranges: true,
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("disk");
    let (r, _) = run(&sha_info(&[url], &data), &t, &cfg());
    r.unwrap();
    assert_image(&t, &data);
    let reqs = s.requests("/img");
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].headers.get("range"), None);
    let range = reqs[1]
        .headers
        .get("range")
        .expect("second request must ask for a range");
    // Everything received before the cut is kept; the server saw at least 1 byte more than 0.
    let from: usize = range
        .trim_start_matches("bytes=")
        .trim_end_matches('-')
        .parse()
        .unwrap();
    assert!(from > 0 && from <= 3 * MIB + 5, "resumed from {from}");
    assert_eq!(
        reqs[1].headers.get("if-range").map(String::as_str),
        Some("\"v1\"")
    );
}

#[test]
fn a_cut_connection_without_range_support_restarts_from_zero() {
    let s = Server::start();
    let data = bytes(4 * MIB, 3);
    let url = s.route(
        "/img",
        Route::CutAfter {
            data: data.clone(),
            after: 2 * MIB,
            times: 1,
            ranges: false,
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("disk");
    let (r, p) = run(&sha_info(&[url], &data), &t, &cfg());
    r.unwrap();
    assert_image(&t, &data);
    let reqs = s.requests("/img");
    assert_eq!(reqs.len(), 2);
    assert!(reqs.iter().all(|r| !r.headers.contains_key("range")));
    assert_eq!(p.bytes_transferred(), data.len() as u64);
}

#[test]
fn server_errors_are_retried_then_succeed() {
    let s = Server::start();
    let data = bytes(2 * MIB, 4);
    let url = s.route(
        "/img",
        Route::StatusThen {
            statuses: vec![503, 503],
            data: data.clone(),
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("disk");
    run(&sha_info(&[url], &data), &t, &cfg()).0.unwrap();
    assert_image(&t, &data);
    assert_eq!(s.hits("/img"), 3);
}

#[test]
fn client_errors_are_fatal_and_never_retried() {
    for code in [404u16, 401, 403] {
        let s = Server::start();
        let url = s.route("/img", Route::Status(code));
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("disk");
        let e = err(run(&sha_info(std::slice::from_ref(&url), b"x"), &t, &cfg()).0);
        assert_eq!(e.type_name(), "ImageDownloadFatalError", "{code}");
        assert!(
            e.details().starts_with(&format!(
                "Download of image img-1 failed: Received status code {code} from {url}, expected 200. Response body: fault injected"
            )),
            "{}",
            e.details()
        );
        assert_eq!(s.hits("/img"), 1, "a {code} must not be retried");
        assert_eq!(std::fs::metadata(&t).unwrap().len(), 0, "nothing written");
    }
}

#[test]
fn persistent_server_errors_use_one_loop_and_report_each_url() {
    let s = Server::start();
    let a = s.route("/a", Route::Status(500));
    let b = s.route("/b", Route::Status(502));
    let dir = tempfile::tempdir().unwrap();
    let e = err(run(
        &sha_info(&[a.clone(), b.clone()], b"x"),
        &dir.path().join("d"),
        &cfg(),
    )
    .0);
    assert_eq!(e.type_name(), "ImageDownloadError");
    // retries=2: three GETs per URL, not nine.
    assert_eq!(s.hits("/a"), 3);
    assert_eq!(s.hits("/b"), 3);
    let d = e.details();
    assert!(
        d.starts_with(&format!("Download of image img-1 failed: URL: {a}; time: ")),
        "{d}"
    );
    assert!(
        d.contains(&format!(
            "Error: Received status code 500 from {a}, expected 200."
        )),
        "{d}"
    );
    assert!(d.contains(&format!("\n URL: {b}; time: ")), "{d}");
    assert!(d.contains("Received status code 502"), "{d}");
}

#[test]
fn a_dead_url_falls_back_to_the_next() {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        format!("http://127.0.0.1:{port}/img")
    };
    let s = Server::start();
    let data = bytes(MIB * 2, 5);
    let good = s.route(
        "/img",
        Route::Bytes {
            data: data.clone(),
            ranges: false,
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("disk");
    let d = run(&sha_info(&[dead.clone(), good.clone()], &data), &t, &cfg())
        .0
        .unwrap();
    assert_eq!(d.url, good);
    assert_image(&t, &data);
    // And a dead URL alone says why.
    let e = err(run(
        &sha_info(std::slice::from_ref(&dead), &data),
        &dir.path().join("x"),
        &cfg(),
    )
    .0);
    assert_eq!(e.type_name(), "ImageDownloadError");
    assert!(
        e.details().contains(&format!("URL: {dead}; time:")),
        "{}",
        e.details()
    );
    assert!(
        e.details().contains("Error connecting to"),
        "{}",
        e.details()
    );
}

#[test]
fn a_stalled_server_times_out() {
    let s = Server::start();
    let data = bytes(2 * MIB, 6);
    let url = s.route(
        "/img",
        Route::Stall {
            data: data.clone(),
            after: MIB + 3,
            secs: 4,
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("disk");
    std::fs::write(&t, vec![0x55u8; 4 * MIB]).unwrap();
    let c = FetchConfig {
        retries: 0,
        connection_timeout: Duration::from_secs(1),
        ..cfg()
    };
    let e = err(run(&sha_info(&[url], &data), &t, &c).0);
    assert_eq!(e.type_name(), "ImageDownloadError");
    assert!(
        e.details()
            .ends_with("Error: Timed out reading next chunk from webserver"),
        "{}",
        e.details()
    );
    // Writing had begun: both table areas are wiped.
    let on_disk = std::fs::read(&t).unwrap();
    assert!(on_disk[..MIB].iter().all(|&b| b == 0));
    assert!(on_disk[3 * MIB..].iter().all(|&b| b == 0));
}

#[test]
fn max_duration_is_terminal() {
    let s = Server::start();
    let data = bytes(2 * MIB, 7);
    let url = s.route(
        "/img",
        Route::Stall {
            data: data.clone(),
            after: 1000,
            secs: 5,
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let c = FetchConfig {
        max_duration: Some(Duration::from_secs(1)),
        ..cfg()
    };
    let started = std::time::Instant::now();
    let e = err(run(&sha_info(&[url], &data), &dir.path().join("d"), &c).0);
    assert_eq!(e.type_name(), "ImageDownloadTimeoutError");
    assert_eq!(e.code(), 408);
    assert_eq!(
        e.details(),
        "Download of image img-1 failed: Download exceeded max allowed time (1 seconds)"
    );
    assert_eq!(s.hits("/img"), 1, "a timeout is not retried");
    assert!(started.elapsed() < Duration::from_secs(4));
}

#[test]
fn a_short_body_is_never_a_success() {
    let s = Server::start();
    let data = bytes(3 * MIB, 8);
    let url = s.route(
        "/img",
        Route::Short {
            data: data.clone(),
            send: 2 * MIB,
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("disk");
    let c = FetchConfig {
        retries: 1,
        ..cfg()
    };
    // Even with a checksum that matches the truncated bytes, a short body fails.
    let short_sum = sha256(&data[..2 * MIB]);
    let i = info(
        json!({"id": "img-1", "urls": [url], "os_hash_algo": "sha256", "os_hash_value": short_sum}),
    );
    let e = err(run(&i, &t, &c).0);
    assert_eq!(e.type_name(), "ImageDownloadError");
    assert_eq!(s.hits("/img"), 2);
    assert!(e.details().contains("bytes"), "{}", e.details());
}

#[test]
fn redirects_are_followed() {
    let s = Server::start();
    let data = bytes(MIB + 1, 9);
    s.route(
        "/real",
        Route::Bytes {
            data: data.clone(),
            ranges: false,
        },
    );
    let url = s.route("/moved", Route::Redirect(s.url("/real")));
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("disk");
    run(&sha_info(&[url], &data), &t, &cfg()).0.unwrap();
    assert_image(&t, &data);
}

#[test]
fn basic_auth_and_conductor_authorization() {
    let s = Server::start();
    let data = bytes(MIB, 10);
    let url = s.route(
        "/img",
        Route::Auth {
            expected: "Basic dXNlcjpwYXNz".into(),
            data: data.clone(),
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let mut v = json!({"id": "img-1", "urls": [url], "os_hash_algo": "sha256", "os_hash_value": sha256(&data),
                       "image_server_auth_strategy": "http_basic", "image_server_user": "user",
                       "image_server_password": "pass"});
    run(&info(v.clone()), &dir.path().join("a"), &cfg())
        .0
        .unwrap();
    v["image_server_password"] = json!("wrong");
    let e = err(run(&info(v.clone()), &dir.path().join("b"), &cfg()).0);
    assert_eq!(e.type_name(), "ImageDownloadFatalError");
    assert!(e.details().contains("Received status code 401"));
    // From the agent's configuration instead.
    let c = FetchConfig {
        auth_strategy: rivet::config::AuthStrategy::HttpBasic,
        auth_user: Some("user".into()),
        auth_password: Some("pass".into()),
        ..cfg()
    };
    run(
        &sha_info(&[s.url("/img")], &data),
        &dir.path().join("c"),
        &c,
    )
    .0
    .unwrap();
    // The conductor's header (base64 of the whole value).
    let bearer = s.route(
        "/oci",
        Route::Auth {
            expected: "Bearer f00".into(),
            data: data.clone(),
        },
    );
    let v = json!({"id": "img-1", "urls": [bearer], "os_hash_algo": "sha256", "os_hash_value": sha256(&data),
                   "image_request_authorization": "QmVhcmVyIGYwMA=="});
    run(&info(v), &dir.path().join("d"), &cfg()).0.unwrap();
}

#[test]
fn checksum_files_in_every_format() {
    let s = Server::start();
    let data = bytes(MIB + 512, 11);
    let url = s.route(
        "/images/disk.img",
        Route::Bytes {
            data: data.clone(),
            ranges: false,
        },
    );
    let h256 = sha256(&data);
    let h512 = digest("sha512", &data);
    let hmd5 = digest("md5", &data);
    let other = "0".repeat(64);
    let files = [
        ("/bare", h256.clone(), "checksum"),
        (
            "/gnu",
            format!("{other}  other.img\n{h256}  disk.img\n"),
            "checksum",
        ),
        (
            "/gnu-bin",
            format!("# comment\n{}  *disk.img\n", h512),
            "checksum",
        ),
        (
            "/gnu-path",
            format!("{}  ./images/disk.img\n", h256.to_uppercase()),
            "checksum",
        ),
        (
            "/bsd",
            format!("SHA256 (other.img) = {other}\nSHA256 (disk.img) = {h256}\n"),
            "checksum",
        ),
        ("/md5", format!("{hmd5}  disk.img\n"), "checksum"),
        (
            "/via-os-hash",
            format!("{h512}  disk.img\n"),
            "os_hash_value",
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (i, (path, text, field)) in files.iter().enumerate() {
        let sums = s.route(
            path,
            Route::Bytes {
                data: Arc::new(text.clone().into_bytes()),
                ranges: false,
            },
        );
        let mut v = json!({"id": "img-1", "urls": [url]});
        v[*field] = json!(sums);
        if *field == "os_hash_value" {
            v["os_hash_algo"] = json!("sha512");
        }
        let t = dir.path().join(format!("t{i}"));
        let c = FetchConfig {
            md5_enabled: *path == "/md5",
            ..cfg()
        };
        let d = run(&info(v.clone()), &t, &c)
            .0
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        if *path == "/md5" {
            // Typed by length, md5 needs md5_enabled.
            let e = err(run(&info(v), &t, &cfg()).0);
            assert!(
                e.details().contains("MD5 support is disabled"),
                "{}",
                e.details()
            );
        }
        assert_image(&t, &data);
        assert_eq!(s.hits(path), if *path == "/md5" { 2 } else { 1 }, "{path}");
        let expected_algo = match *path {
            "/gnu-bin" | "/via-os-hash" => "sha512",
            "/md5" => "md5",
            _ => "sha256",
        };
        assert_eq!(d.algo.name(), expected_algo, "{path}");
    }
}

#[test]
fn checksum_file_errors_are_reported() {
    let s = Server::start();
    let data = bytes(MIB, 12);
    let url = s.route(
        "/disk.img",
        Route::Bytes {
            data: data.clone(),
            ranges: false,
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("/missing", None, "Received status code 404 from"),
        ("/empty", Some(""), "Empty checksum file"),
        (
            "/invalid",
            Some("invalid"),
            "Invalid checksum file (No valid checksum found) ['invalid']",
        ),
        (
            "/other",
            Some("abababababababababababababababababababababababababababababababab  x.img\n"),
            "Checksum file does not contain name disk.img",
        ),
    ];
    for (path, body, msg) in cases {
        let sums = match body {
            Some(b) => s.route(
                path,
                Route::Bytes {
                    data: Arc::new(b.as_bytes().to_vec()),
                    ranges: false,
                },
            ),
            None => s.route(path, Route::Status(404)),
        };
        let v = json!({"id": "img-1", "urls": [url], "checksum": sums});
        let e = err(run(&info(v), &dir.path().join("t"), &cfg()).0);
        assert!(
            e.type_name().starts_with("ImageDownload"),
            "{path}: {}",
            e.type_name()
        );
        assert!(
            e.details()
                .starts_with(&format!("Download of image {sums} failed: ")),
            "{path}: {}",
            e.details()
        );
        assert!(e.details().contains(msg), "{path}: {}", e.details());
        assert_eq!(
            s.hits("/disk.img"),
            0,
            "{path}: the image must not be fetched"
        );
    }
}

#[test]
fn a_wrong_checksum_fails_and_wipes_what_was_written() {
    let s = Server::start();
    let data = bytes(4 * MIB, 13);
    let url = s.route(
        "/img",
        Route::Bytes {
            data: data.clone(),
            ranges: false,
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("disk");
    std::fs::write(&t, vec![0xEEu8; 8 * MIB]).unwrap();
    let wrong = "1".repeat(64);
    let v = json!({"id": "img-1", "urls": [url], "os_hash_algo": "sha256", "os_hash_value": wrong});
    let c = FetchConfig {
        retries: 1,
        ..cfg()
    };
    let e = err(run(&info(v), &t, &c).0);
    assert_eq!(e.type_name(), "ImageChecksumError");
    assert_eq!(
        e.details(),
        format!(
            "Image failed to verify against checksum. location: {}; image ID: img-1; image checksum: {}; verification checksum: {wrong}",
            t.display(),
            sha256(&data)
        )
    );
    assert_eq!(
        s.hits("/img"),
        2,
        "a checksum failure is retried within the budget"
    );
    let on_disk = std::fs::read(&t).unwrap();
    assert!(on_disk[..MIB].iter().all(|&b| b == 0), "head wiped");
    assert!(on_disk[7 * MIB..].iter().all(|&b| b == 0), "tail wiped");
}

#[test]
fn an_image_larger_than_the_target_is_refused_before_writing() {
    let s = Server::start();
    let data = bytes(4 * MIB, 14);
    let url = s.route(
        "/img",
        Route::Bytes {
            data: data.clone(),
            ranges: false,
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("disk");
    std::fs::write(&t, vec![0x77u8; 2 * MIB]).unwrap();
    let e = err(run(&sha_info(&[url], &data), &t, &cfg()).0);
    assert_eq!(e.type_name(), "ImageDownloadOutofSpaceError");
    assert!(
        e.details().contains(&format!(
            "the image is {} bytes but the device holds only {} bytes",
            4 * MIB,
            2 * MIB
        )),
        "{}",
        e.details()
    );
    assert_eq!(s.hits("/img"), 1, "not retried");
    assert!(
        std::fs::read(&t).unwrap().iter().all(|&b| b == 0x77),
        "nothing written, nothing wiped"
    );
    // Without a Content-Length the limit is found while streaming.
    let url = s.route("/nolen", Route::NoLength { data: data.clone() });
    let e = err(run(&sha_info(&[url], &data), &t, &cfg()).0);
    assert_eq!(e.type_name(), "ImageDownloadOutofSpaceError");
}

#[test]
fn other_algorithms_and_file_urls() {
    let data = bytes(3 * MIB + 11, 15);
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.img");
    std::fs::write(&src, &*data).unwrap();
    let url = format!("file://{}", src.display());
    for algo in ["md5", "sha1", "sha384", "sha512", "sha3_256", "blake2b"] {
        let v = json!({"id": "f", "urls": [url], "os_hash_algo": algo, "os_hash_value": digest(algo, &data)});
        let t = dir.path().join(format!("t-{algo}"));
        let d = run(&info(v), &t, &cfg()).0.unwrap();
        assert_eq!(d.algo.name(), algo);
        assert_image(&t, &data);
    }
}

#[test]
fn unknown_algorithm_without_checksum_is_a_rest_error() {
    let v = json!({"id": "fake_id", "urls": ["http://127.0.0.1:9/x"], "os_hash_algo": "whirlpool", "os_hash_value": "ab"});
    let dir = tempfile::tempdir().unwrap();
    let e = err(run(&info(v), &dir.path().join("t"), &cfg()).0);
    assert_eq!(e.type_name(), "RESTError");
    assert!(e.to_string().starts_with(
        "An error occurred: Unable to verify image fake_id with available checksums."
    ));
}

#[test]
fn a_refused_resume_restarts_from_zero() {
    let s = Server::start();
    let data = bytes(4 * MIB, 16);
    let url = s.route(
        "/img",
        Route::Cut416 {
            data: data.clone(),
            after: 3 * MIB,
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("disk");
    run(&sha_info(&[url], &data), &t, &cfg()).0.unwrap();
    assert_image(&t, &data);
    let reqs = s.requests("/img");
    assert_eq!(
        reqs.len(),
        3,
        "cut, 416 to the range request, then a full download"
    );
    assert!(reqs[1].headers.contains_key("range"));
    assert!(!reqs[2].headers.contains_key("range"));
}

#[test]
fn a_failure_after_writing_began_wipes_even_when_the_last_url_failed_early() {
    let s = Server::start();
    let data = bytes(6 * MIB, 17);
    let cut = s.route(
        "/cut",
        Route::CutAfter {
            data: data.clone(),
            after: 5 * MIB,
            times: 9,
            ranges: false,
        },
    );
    let gone = s.route("/gone", Route::Status(404));
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("disk");
    std::fs::write(&t, vec![0xEEu8; 8 * MIB]).unwrap();
    let c = FetchConfig {
        retries: 0,
        ..cfg()
    };
    let e = err(run(&sha_info(&[cut, gone], &data), &t, &c).0);
    assert_eq!(e.type_name(), "ImageDownloadFatalError");
    let on_disk = std::fs::read(&t).unwrap();
    assert!(
        on_disk[..MIB].iter().all(|&b| b == 0),
        "the old head must not survive"
    );
    assert!(
        on_disk[7 * MIB..].iter().all(|&b| b == 0),
        "the old backup table must not survive"
    );
}
