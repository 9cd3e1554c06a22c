//! `Content-Encoding`: rivet asks for `identity`; a server that encodes all the same with gzip
//! or deflate is decoded transparently, as IPA's client does (the checksum is of the image);
//! a body cut mid-way restarts from byte 0 (ranges of an encoded body mean nothing to the
//! decoder); any other coding is refused by name.

mod common;

use std::io::Write;
use std::process::{Command, Output};
use std::sync::Arc;

use common::{gpt_image, sha256, Route, Server};

fn deploy(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rivet"))
        .arg("deploy")
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn zlib(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

#[test]
fn gzip_and_deflate_bodies_are_decoded_and_the_image_lands_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let img = Arc::new(gpt_image(dir.path(), 6 << 20, 91));
    let s = Server::start();
    let sums = s.route(
        "/SHA256SUMS",
        Route::Encoded {
            body: Arc::new(gzip(format!("{}  os.img\n", sha256(&img)).as_bytes())),
            encoding: "gzip".into(),
            cut_times: 0,
        },
    );
    let cases = [
        ("gzip", gzip(&img), 0),
        ("deflate", zlib(&img), 0),
        ("gzip", gzip(&img), 1), // cut once: restarted from byte 0
    ];
    for (i, (encoding, body, cut_times)) in cases.into_iter().enumerate() {
        let url = s.route(
            &format!("/{i}/os.img"),
            Route::Encoded {
                body: Arc::new(body),
                encoding: encoding.into(),
                cut_times,
            },
        );
        let disk = dir.path().join(format!("disk{i}"));
        std::fs::write(&disk, vec![0u8; 8 << 20]).unwrap();
        let o = deploy(&[
            "--url",
            &url,
            "--device",
            disk.to_str().unwrap(),
            "--checksum",
            &sums,
            "--retries",
            "2",
            "--retry-interval",
            "0",
        ]);
        assert!(
            o.status.success(),
            "{encoding}/{cut_times}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let on_disk = std::fs::read(&disk).unwrap();
        // The image, up to the backup GPT moved to the end of the larger disk.
        assert!(on_disk[..446] == img[..446] && on_disk[1 << 20..5 << 20] == img[1 << 20..5 << 20]);
        assert_eq!(s.hits(&format!("/{i}/os.img")), 1 + cut_times);
    }
    for seen in s.seen.lock().unwrap().iter() {
        assert_eq!(
            seen.headers.get("accept-encoding").map(String::as_str),
            Some("identity"),
            "{}",
            seen.path
        );
    }
}

#[test]
fn other_codings_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let img = Arc::new(gpt_image(dir.path(), 4 << 20, 92));
    let s = Server::start();
    let url = s.route(
        "/os.img",
        Route::Encoded {
            body: img.clone(),
            encoding: "br".into(),
            cut_times: 0,
        },
    );
    let disk = dir.path().join("disk");
    let o = deploy(&[
        "--url",
        &url,
        "--device",
        disk.to_str().unwrap(),
        "--checksum",
        &sha256(&img),
        "--retries",
        "3",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    let last = err.lines().last().unwrap_or("");
    assert!(!o.status.success());
    assert!(
        last.starts_with("rivet: ImageDownloadFatalError: ")
            && last.contains("Content-Encoding: br"),
        "{last}"
    );
    assert_eq!(s.hits("/os.img"), 1, "not retried");
}
