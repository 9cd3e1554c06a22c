//! Compressed images with the real compressors (`gzip`, `xz -T0` with several blocks, `zstd`,
//! `pzstd` with several frames)
//! and `qemu-img`, served over HTTP and streamed onto loop devices, read back bit for bit:
//! raw, qcow2 and GPT inside; truncated streams, trailing garbage, a bomb, a refused format
//! inside, a declared/actual mismatch, and a connection cut in the middle of the compressed
//! stream and resumed with a Range request.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::{loop_devices_available, sha256, LoopDev, Route, Server};
use rivet::deploy::decode::{Codec, DecompressLimits, FormatPolicy, WritePath};
use rivet::deploy::pipeline::{write_image_to_path, DeployOptions, Written};
use rivet::errors::{AgentError, Result};
use rivet::image::fetch::FetchConfig;
use rivet::image::info::ImageInfo;
use serde_json::json;

const MIB: usize = 1 << 20;

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().expect(cmd);
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn tools_available(test: &str) -> bool {
    for t in ["gzip", "xz", "zstd", "pzstd", "qemu-img"] {
        if Command::new(t).arg("--version").output().is_err() {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("{test}: {t} is missing");
            }
            eprintln!("SKIPPED {test}: {t} is missing");
            return false;
        }
    }
    loop_devices_available(test)
}

/// A disk image that compresses: random runs, repeated bytes and zeros.
fn image(dir: &Path, size: usize, seed: u64) -> (PathBuf, Vec<u8>) {
    let rnd = common::bytes(size, seed);
    let mut img = vec![0u8; size];
    for (i, chunk) in img.chunks_mut(64 << 10).enumerate() {
        let at = i * (64 << 10);
        match i % 4 {
            0 => chunk.copy_from_slice(&rnd[at..at + chunk.len()]),
            1 => chunk.fill(0x5a),
            _ => {}
        }
    }
    let p = dir.join(format!("img-{seed}.raw"));
    std::fs::write(&p, &img).unwrap();
    (p, img)
}

/// Compresses `src` with the real tool; returns the compressed file.
fn compress(src: &Path, how: &str) -> PathBuf {
    let s = src.to_str().unwrap();
    let (cmd, args, ext): (&str, Vec<&str>, &str) = match how {
        "gz" => ("gzip", vec!["-k", "-f", "-6", s], "gz"),
        // Several blocks, so the multi-threaded decoder has something to share out.
        "xz" => (
            "xz",
            vec!["-k", "-f", "-T0", "--block-size=1MiB", "-3", s],
            "xz",
        ),
        "zst" => ("zstd", vec!["-q", "-f", "-T0", s], "zst"),
        // Several frames (2 MiB each at -1), each behind a skippable frame: decoded apart.
        "pzst" => {
            let out = format!("{s}.pzst");
            run("pzstd", &["-q", "-f", "-p", "2", "-1", s, "-o", &out]);
            return PathBuf::from(out);
        }
        other => panic!("{other}"),
    };
    run(cmd, &args);
    PathBuf::from(format!("{s}.{ext}"))
}

fn cfg() -> FetchConfig {
    FetchConfig {
        retries: 2,
        retry_interval: Duration::from_millis(10),
        ..FetchConfig::default()
    }
}

/// Serves `data` with `route` and deploys it onto `target`.
fn deploy(
    s: &Server,
    name: &str,
    data: Arc<Vec<u8>>,
    route: Route,
    target: &Path,
    policy: FormatPolicy,
    disk_format: Option<&str>,
) -> Result<Written> {
    let url = s.route(&format!("/{name}"), route);
    let mut v = json!({"id": name, "urls": [url], "os_hash_algo": "sha256",
                       "os_hash_value": sha256(&data)});
    if let Some(f) = disk_format {
        v["disk_format"] = json!(f);
    }
    let info = ImageInfo::from_value(&v, false).unwrap();
    let opts = DeployOptions {
        policy: FormatPolicy {
            disk_format: disk_format.map(String::from),
            ..policy
        },
        // Two threads whatever this machine has: xz blocks and zstd frames decoded apart.
        decompress: DecompressLimits {
            threads: 2,
            memory: 32 << 20,
        },
        ..DeployOptions::default()
    };
    write_image_to_path(&info, target, &cfg(), &opts, Arc::default())
}

fn bytes_route(data: &Arc<Vec<u8>>) -> Route {
    Route::Bytes {
        data: data.clone(),
        ranges: true,
    }
}

fn read(p: &Path) -> Arc<Vec<u8>> {
    Arc::new(std::fs::read(p).unwrap())
}

#[test]
fn gzip_xz_and_zstd_raw_images_land_bit_for_bit() {
    if !tools_available("compressed_raw") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (raw, img) = image(dir.path(), 12 * MIB, 1);
    let s = Server::start();
    for (how, codec) in [
        ("gz", Codec::Gzip),
        ("xz", Codec::Xz),
        ("zst", Codec::Zstd),
        ("pzst", Codec::Zstd),
    ] {
        let data = read(&compress(&raw, how));
        assert!(
            data.len() < img.len() / 2,
            "{how}: the test image compresses"
        );
        let dev = LoopDev::new(dir.path(), &format!("{how}.disk"), 16 * MIB as u64, 0xAA);
        let name = format!("img.raw.{how}");
        let w = deploy(
            &s,
            &name,
            data.clone(),
            bytes_route(&data),
            &dev.dev,
            FormatPolicy::default(),
            Some("raw"),
        )
        .unwrap_or_else(|e| panic!("{how}: {e}"));
        assert_eq!(
            w.path,
            WritePath::Decompressed {
                codec,
                qcow2: false
            },
            "{how}"
        );
        assert_eq!(w.bytes, img.len() as u64, "{how}");
        assert_eq!(
            w.digest,
            sha256(&data),
            "{how}: the digest is of the downloaded bytes"
        );
        let on_disk = dev.read();
        assert!(on_disk[..img.len()] == img[..], "{how}: device differs");
        assert!(
            on_disk[img.len()..15 * MIB].iter().all(|&b| b == 0xAA),
            "{how}: wrote past"
        );
    }
}

#[test]
fn zstd_qcow2_streams_and_xz_gpt_lands() {
    if !tools_available("compressed_qcow2") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (raw, img) = image(dir.path(), 12 * MIB, 2);
    let q = dir.path().join("img.qcow2");
    run(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "qcow2",
            raw.to_str().unwrap(),
            q.to_str().unwrap(),
        ],
    );
    let data = read(&compress(&q, "zst"));
    let s = Server::start();
    let dev = LoopDev::new(dir.path(), "q.disk", 16 * MIB as u64, 0xAA);
    // Ironic declares the format inside: qcow2.
    let w = deploy(
        &s,
        "img.qcow2.zst",
        data.clone(),
        bytes_route(&data),
        &dev.dev,
        FormatPolicy::default(),
        Some("qcow2"),
    )
    .unwrap();
    assert_eq!(
        w.path,
        WritePath::Decompressed {
            codec: Codec::Zstd,
            qcow2: true
        }
    );
    assert!(dev.read()[..img.len()] == img[..]);

    // A GPT disk inside xz, onto a device of its size.
    let gpt = common::gpt_image(dir.path(), 8 * MIB as u64, 3);
    let g = dir.path().join("gpt.raw");
    std::fs::write(&g, &gpt).unwrap();
    let data = read(&compress(&g, "xz"));
    let dev = LoopDev::new(dir.path(), "g.disk", 8 * MIB as u64, 0xAA);
    let w = deploy(
        &s,
        "gpt.raw.xz",
        data.clone(),
        bytes_route(&data),
        &dev.dev,
        FormatPolicy::default(),
        None,
    )
    .unwrap();
    assert_eq!(
        w.path,
        WritePath::Decompressed {
            codec: Codec::Xz,
            qcow2: false
        }
    );
    assert!(dev.read() == gpt);
}

/// Deploys bytes that must be refused; returns the error and the device afterwards.
fn refused(
    dir: &Path,
    name: &str,
    data: Vec<u8>,
    dev_size: usize,
    policy: FormatPolicy,
    disk_format: Option<&str>,
) -> (AgentError, Vec<u8>) {
    let s = Server::start();
    let dev = LoopDev::new(dir, &format!("{name}.disk"), dev_size as u64, 0xAA);
    let data = Arc::new(data);
    let e = deploy(
        &s,
        name,
        data.clone(),
        bytes_route(&data),
        &dev.dev,
        policy,
        disk_format,
    )
    .expect_err(name);
    (e, dev.read())
}

#[test]
fn broken_streams_are_refused_and_leave_nothing_bootable() {
    if !tools_available("compressed_broken") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (raw, img) = image(dir.path(), 6 * MIB, 4);
    for how in ["gz", "xz", "zst", "pzst"] {
        let c = std::fs::read(compress(&raw, how)).unwrap();
        // Truncated: the digest is of the truncated file, so only the stream can tell.
        let (e, disk) = refused(
            dir.path(),
            &format!("t.{how}"),
            c[..c.len() - 7].to_vec(),
            8 * MIB,
            FormatPolicy::default(),
            None,
        );
        assert_eq!(e.type_name(), "InvalidImage", "{how}: {e}");
        assert!(
            e.to_string().contains("truncated") || format!("{e:?}").contains("truncated"),
            "{how}: {e:?}"
        );
        assert!(
            disk[..MIB] != img[..MIB],
            "{how}: the image's head is on the disk"
        );
        // Trailing garbage.
        let bad = [c.clone(), b"trailing garbage".to_vec()].concat();
        let (e, disk) = refused(
            dir.path(),
            &format!("g.{how}"),
            bad,
            8 * MIB,
            FormatPolicy::default(),
            None,
        );
        assert!(format!("{e:?}").contains("after the end"), "{how}: {e:?}");
        assert!(
            disk[..MIB] != img[..MIB],
            "{how}: the image's head is on the disk"
        );
    }
}

#[test]
fn a_bomb_bigger_than_the_device_is_out_of_space() {
    if !tools_available("compressed_bomb") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let z = dir.path().join("zeros.raw");
    std::fs::write(&z, vec![0u8; 64 * MIB]).unwrap();
    for how in ["gz", "zst", "pzst"] {
        let c = std::fs::read(compress(&z, how)).unwrap();
        assert!(c.len() < MIB);
        let (e, disk) = refused(
            dir.path(),
            &format!("bomb.{how}"),
            c,
            8 * MIB,
            FormatPolicy::default(),
            Some("raw"),
        );
        assert_eq!(e.type_name(), "ImageDownloadOutofSpaceError", "{how}: {e}");
        assert!(
            disk[MIB..7 * MIB].iter().all(|&b| b == 0xAA || b == 0),
            "{how}"
        );
    }
}

#[test]
fn the_format_rules_apply_to_the_image_inside() {
    if !tools_available("compressed_rules") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (raw, img) = image(dir.path(), 4 * MIB, 5);
    let v = dir.path().join("img.vmdk");
    run(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "vmdk",
            raw.to_str().unwrap(),
            v.to_str().unwrap(),
        ],
    );
    let vgz = std::fs::read(compress(&v, "gz")).unwrap();
    // vmdk is not permitted: refused before anything is written.
    let (e, disk) = refused(
        dir.path(),
        "img.vmdk.gz",
        vgz.clone(),
        8 * MIB,
        FormatPolicy::default(),
        None,
    );
    assert!(
        e.to_string().contains("vmdk")
            || format!("{e:?}").contains("Detected image format was vmdk"),
        "{e:?}"
    );
    assert!(disk.iter().all(|&b| b == 0xAA), "something was written");
    // Permitted: the temp-file path decompresses its copy and qemu-img converts it.
    let s = Server::start();
    let dev = LoopDev::new(dir.path(), "vmdk-ok.disk", 8 * MIB as u64, 0xAA);
    let data = Arc::new(vgz);
    let permitted = FormatPolicy {
        permitted: vec!["raw".into(), "qcow2".into(), "vmdk".into()],
        ..FormatPolicy::default()
    };
    let w = deploy(
        &s,
        "ok.vmdk.gz",
        data.clone(),
        bytes_route(&data),
        &dev.dev,
        permitted,
        Some("vmdk"),
    )
    .unwrap();
    assert_eq!(w.path, WritePath::TempFile);
    assert!(dev.read()[..img.len()] == img[..]);

    // Declared raw, qcow2 inside: the mismatch is refused, nothing written.
    let q = dir.path().join("img.qcow2");
    run(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "qcow2",
            raw.to_str().unwrap(),
            q.to_str().unwrap(),
        ],
    );
    let qz = std::fs::read(compress(&q, "zst")).unwrap();
    let (e, disk) = refused(
        dir.path(),
        "img.qcow2.zst",
        qz,
        8 * MIB,
        FormatPolicy::default(),
        Some("raw"),
    );
    assert!(
        format!("{e:?}").contains("Expected format was raw, but image was actually qcow2"),
        "{e:?}"
    );
    assert!(disk.iter().all(|&b| b == 0xAA), "something was written");
}

#[test]
fn a_connection_cut_mid_stream_resumes_the_decompressor() {
    if !tools_available("compressed_resume") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (raw, img) = image(dir.path(), 12 * MIB, 6);
    let s = Server::start();
    for how in ["gz", "xz", "zst", "pzst"] {
        let data = read(&compress(&raw, how));
        let dev = LoopDev::new(dir.path(), &format!("r.{how}.disk"), 16 * MIB as u64, 0xAA);
        let name = format!("cut.raw.{how}");
        let route = Route::CutAfter {
            data: data.clone(),
            after: data.len() / 2 + 333,
            times: 1,
            ranges: true,
        };
        let w = deploy(
            &s,
            &name,
            data.clone(),
            route,
            &dev.dev,
            FormatPolicy::default(),
            Some("raw"),
        )
        .unwrap_or_else(|e| panic!("{how}: {e}"));
        let reqs = s.requests(&format!("/{name}"));
        assert_eq!(reqs.len(), 2, "{how}: one cut, one resume");
        assert!(
            format!("{:?}", reqs[1]).contains("bytes="),
            "{how}: resumed with a Range: {reqs:?}"
        );
        assert_eq!(w.digest, sha256(&data));
        assert!(
            dev.read()[..img.len()] == img[..],
            "{how}: device differs after resume"
        );

        // A server that refuses the Range request: the download restarts from byte 0, and so
        // do the decompressor and the decoder.
        let dev = LoopDev::new(dir.path(), &format!("r0.{how}.disk"), 16 * MIB as u64, 0xAA);
        let name = format!("restart.raw.{how}");
        let route = Route::Cut416 {
            data: data.clone(),
            after: data.len() / 3 + 77,
        };
        let w = deploy(
            &s,
            &name,
            data.clone(),
            route,
            &dev.dev,
            FormatPolicy::default(),
            Some("raw"),
        )
        .unwrap_or_else(|e| panic!("{how} restart: {e}"));
        assert!(
            s.requests(&format!("/{name}")).len() >= 3,
            "{how}: cut, 416, full again"
        );
        assert_eq!(w.digest, sha256(&data));
        assert!(
            dev.read()[..img.len()] == img[..],
            "{how}: device differs after restart"
        );
    }
}

/// `rivet deploy` of the raw image compressed in `data`, served at `url`, onto the file `target`.
fn cli_deploy(url: &str, target: &Path, data: &[u8], extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_rivet"))
        .args(["deploy", "--url", url, "--device", target.to_str().unwrap()])
        .args(["--os-hash-algo", "sha256", "--os-hash-value", &sha256(data)])
        .args([
            "--disk-format",
            "raw",
            "--retries",
            "0",
            "--no-partition-check",
        ])
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn rivet_deploy_takes_a_compressed_image_onto_a_file() {
    if Command::new("xz").arg("--version").output().is_err() {
        eprintln!("SKIPPED rivet_deploy_compressed: xz is missing");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (raw, img) = image(dir.path(), 6 * MIB, 7);
    let data = read(&compress(&raw, "xz"));
    let s = Server::start();
    let url = s.route("/cli.raw.xz", bytes_route(&data));
    let target = dir.path().join("disk.img");
    std::fs::write(&target, vec![0xEEu8; 8 * MIB]).unwrap();
    let out = cli_deploy(&url, &target, &data, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("xz-compressed: decompressing while it streams"),
        "{err}"
    );
    assert!(std::fs::read(&target).unwrap()[..img.len()] == img[..]);
}

#[test]
fn rivet_deploy_decodes_zstd_frames_on_the_threads_it_is_given() {
    if !tools_available("rivet_deploy_pzstd") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (raw, img) = image(dir.path(), 12 * MIB, 8);
    let data = read(&compress(&raw, "pzst"));
    let s = Server::start();
    let url = s.route("/cli.raw.pzst", bytes_route(&data));
    let target = dir.path().join("disk.img");
    let deploy = |threads: &str| {
        std::fs::write(&target, vec![0xEEu8; 16 * MIB]).unwrap();
        cli_deploy(&url, &target, &data, &["--decompress-threads", threads])
    };
    // How many frames pzstd cut the image into, as zstd itself counts them.
    let list = Command::new("zstd")
        .args(["-lv", dir.path().join("img-8.raw.pzst").to_str().unwrap()])
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    let frames: u32 = list
        .lines()
        .find_map(|l| l.strip_prefix("# Zstandard Frames: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("zstd -lv: {list}"));
    assert!(
        frames > 2,
        "pzstd -1 cuts 12 MiB into several frames: {list}"
    );
    let out = deploy("2");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "zstd frames decoded apart, on several threads frames={frames} threads=2"
        )),
        "{err}"
    );
    assert!(std::fs::read(&target).unwrap()[..img.len()] == img[..]);
    // One thread: libzstd streams the same file.
    let out = deploy("1");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("decoded apart"), "{err}");
    assert!(std::fs::read(&target).unwrap()[..img.len()] == img[..]);
    // A bad value stops rivet before anything is downloaded or written.
    let before = s.requests("/cli.raw.pzst").len();
    let out = deploy("0");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(
            "invalid setting decompress_threads=\"0\" (from --decompress-threads): \
             'auto' or a number of threads from 1 to 64"
        ),
        "{err}"
    );
    assert_eq!(
        s.requests("/cli.raw.pzst").len(),
        before,
        "nothing downloaded"
    );
    assert!(std::fs::read(&target).unwrap().iter().all(|&b| b == 0xEE));
}
