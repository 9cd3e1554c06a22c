//! Image formats with the real `qemu-img`: qcow2 variants streamed onto loop devices (compared
//! with `qemu-img convert -O raw` byte for byte, old data zeroed), the spill and fallback
//! paths, the temp-file path for vmdk, and hostile images refused with nothing written.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::{loop_devices_available, sha256, LoopDev, Route, Server};
use rivet::deploy::decode::{FormatPolicy, WritePath};
use rivet::deploy::pipeline::{write_image_to_path, DeployOptions, Written};
use rivet::errors::Result;
use rivet::image::fetch::FetchConfig;
use rivet::image::info::ImageInfo;
use serde_json::json;

const MIB: usize = 1 << 20;

fn qemu_img(args: &[&str]) {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img");
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A sparse raw disk: pseudo-random data in scattered places (some compressible), zeros
/// elsewhere. No partition table, so the device can be compared bit for bit.
fn sparse_raw(dir: &Path, size: usize, seed: u64) -> (PathBuf, Vec<u8>) {
    let mut img = vec![0u8; size];
    let rnd = common::bytes(size, seed);
    let mut at = 0usize;
    let mut k = seed as usize;
    while at < size {
        k = k
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let len = 4096 * (1 + (k >> 33) % 200);
        let end = (at + len).min(size);
        match (k >> 20) % 4 {
            0 | 1 => img[at..end].copy_from_slice(&rnd[at..end]),
            2 => img[at..end].fill(0x5a), // compressible
            _ => {}                       // hole
        }
        at = end + 4096 * ((k >> 40) % 300);
    }
    let p = dir.join(format!("src-{seed}.raw"));
    std::fs::write(&p, &img).unwrap();
    (p, img)
}

fn cfg() -> FetchConfig {
    FetchConfig {
        retries: 0,
        retry_interval: Duration::from_millis(10),
        ..FetchConfig::default()
    }
}

fn deploy_file(
    s: &Server,
    file: &Path,
    target: &Path,
    policy: FormatPolicy,
) -> (Result<Written>, String) {
    let data = Arc::new(std::fs::read(file).unwrap());
    let name = format!("/{}", file.file_name().unwrap().to_string_lossy());
    let url = s.route(
        &name,
        Route::Bytes {
            data: data.clone(),
            ranges: true,
        },
    );
    let info = ImageInfo::from_value(
        &json!({"id": name.trim_start_matches('/'), "urls": [url], "os_hash_algo": "sha256", "os_hash_value": sha256(&data)}),
        false,
    )
    .unwrap();
    let opts = DeployOptions {
        policy,
        ..DeployOptions::default()
    };
    (
        write_image_to_path(&info, target, &cfg(), &opts, Arc::default()),
        url,
    )
}

fn policy() -> FormatPolicy {
    FormatPolicy::default()
}

#[test]
fn qcow2_variants_stream_onto_a_loop_device_bit_for_bit() {
    if !loop_devices_available("qcow2_variants") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (raw, img) = sparse_raw(dir.path(), 24 * MIB, 7);
    let s = Server::start();
    let variants: &[(&str, &[&str])] = &[
        ("default", &["-O", "qcow2"]),
        ("zlib", &["-O", "qcow2", "-c"]),
        (
            "zstd",
            &["-O", "qcow2", "-c", "-o", "compression_type=zstd"],
        ),
        ("ooo", &["-O", "qcow2", "-W"]),
        ("c4k", &["-O", "qcow2", "-o", "cluster_size=4096"]),
        ("c2m", &["-O", "qcow2", "-o", "cluster_size=2M"]),
        ("v2", &["-O", "qcow2", "-o", "compat=0.10"]),
        ("v2zlib", &["-O", "qcow2", "-o", "compat=0.10", "-c"]),
    ];
    for (name, opts) in variants {
        let q = dir.path().join(format!("{name}.qcow2"));
        let mut args = vec!["convert", "-f", "raw"];
        args.extend_from_slice(opts);
        args.push(raw.to_str().unwrap());
        args.push(q.to_str().unwrap());
        qemu_img(&args);
        // Reference: qemu-img's own conversion back to raw.
        let back = dir.path().join(format!("{name}.back.raw"));
        qemu_img(&[
            "convert",
            "-f",
            "qcow2",
            "-O",
            "raw",
            q.to_str().unwrap(),
            back.to_str().unwrap(),
        ]);
        let reference = std::fs::read(&back).unwrap();
        assert!(reference == img, "{name}: qemu-img round trip differs");

        let dev = LoopDev::new(dir.path(), &format!("{name}.disk"), 32 * MIB as u64, 0xAA);
        let (r, _) = deploy_file(&s, &q, &dev.dev, policy());
        let d = r.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(d.path, WritePath::Qcow2Stream, "{name}");
        assert_eq!(d.bytes, img.len() as u64, "{name}");
        let on_disk = dev.read();
        let first_diff = on_disk[..img.len()]
            .iter()
            .zip(&reference)
            .position(|(a, b)| a != b);
        assert_eq!(
            first_diff, None,
            "{name}: device differs from qemu-img convert -O raw"
        );
        // Past the virtual size: the old data, but for the end-of-disk table area we clear.
        assert!(
            on_disk[img.len()..31 * MIB].iter().all(|&b| b == 0xAA),
            "{name}: wrote past the image"
        );
    }
}

#[test]
fn qcow2_onto_a_regular_file_and_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let (raw, img) = sparse_raw(dir.path(), 6 * MIB, 8);
    let q = dir.path().join("cli.qcow2");
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        "-c",
        raw.to_str().unwrap(),
        q.to_str().unwrap(),
    ]);
    let s = Server::start();
    let data = Arc::new(std::fs::read(&q).unwrap());
    let url = s.route(
        "/cli.qcow2",
        Route::Bytes {
            data: data.clone(),
            ranges: false,
        },
    );
    let target = dir.path().join("disk.img");
    std::fs::write(&target, vec![0xEEu8; 8 * MIB]).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_rivet"))
        .args([
            "deploy",
            "--url",
            &url,
            "--device",
            target.to_str().unwrap(),
            "--os-hash-algo",
            "sha256",
            "--os-hash-value",
            &sha256(&data),
            "--retries",
            "0",
            "--no-partition-check",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("converting qcow2 to raw while it streams"),
        "{err}"
    );
    let on_disk = std::fs::read(&target).unwrap();
    assert!(on_disk[..img.len()] == img[..]);
    // --disk-format that disagrees with the bytes is refused, nothing written.
    std::fs::write(&target, vec![0xEEu8; 8 * MIB]).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_rivet"))
        .args([
            "deploy",
            "--url",
            &url,
            "--device",
            target.to_str().unwrap(),
            "--checksum",
            &sha256(&data),
            "--retries",
            "0",
            "--disk-format",
            "vmdk",
        ])
        .output()
        .unwrap();
    let line = String::from_utf8_lossy(&out.stderr)
        .lines()
        .last()
        .unwrap_or("")
        .to_string();
    assert_eq!(
        line,
        "rivet: InvalidImage: Security: Expected format was vmdk, but image was actually qcow2"
    );
    assert!(std::fs::read(&target).unwrap().iter().all(|&b| b == 0xEE));
}

fn be64(d: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(d[at..at + 8].try_into().unwrap())
}

/// Moves the first data cluster in front of its L2 table (swapping the two clusters and
/// fixing the L1 and L2 entries), so a streaming reader meets data before its mapping.
fn data_before_l2(q: &Path) -> Vec<u8> {
    let mut d = std::fs::read(q).unwrap();
    let cb = u32::from_be_bytes(d[20..24].try_into().unwrap());
    let c = 1usize << cb;
    let l1 = be64(&d, 40) as usize;
    let l2 = (be64(&d, l1) & 0x00ff_ffff_ffff_fe00) as usize;
    let (slot, data) = (0..c / 8)
        .map(|i| (i, be64(&d, l2 + 8 * i)))
        .find(|(_, e)| e & 0x00ff_ffff_ffff_fe00 != 0)
        .unwrap();
    let data_off = (data & 0x00ff_ffff_ffff_fe00) as usize;
    let (a, b) = (l2, data_off);
    let l2_copy = d[a..a + c].to_vec();
    let data_copy = d[b..b + c].to_vec();
    d[a..a + c].copy_from_slice(&data_copy);
    d[b..b + c].copy_from_slice(&l2_copy);
    // L1 now points at the L2 table's new home; the L2 entry at the data's.
    let l1_flags = be64(&d, l1) & !0x00ff_ffff_ffff_fe00;
    d[l1..l1 + 8].copy_from_slice(&((b as u64) | l1_flags).to_be_bytes());
    let e = data & !0x00ff_ffff_ffff_fe00 | a as u64;
    d[b + 8 * slot..b + 8 * slot + 8].copy_from_slice(&e.to_be_bytes());
    d
}

#[test]
fn data_before_its_l2_table_spills_then_lands_or_falls_back() {
    let dir = tempfile::tempdir().unwrap();
    let (raw, img) = sparse_raw(dir.path(), 8 * MIB, 9);
    let q = dir.path().join("plain.qcow2");
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        raw.to_str().unwrap(),
        q.to_str().unwrap(),
    ]);
    let swapped = dir.path().join("swapped.qcow2");
    std::fs::write(&swapped, data_before_l2(&q)).unwrap();
    // qemu-img agrees the rewritten image is the same disk.
    let back = dir.path().join("swapped.raw");
    qemu_img(&[
        "convert",
        "-f",
        "qcow2",
        "-O",
        "raw",
        swapped.to_str().unwrap(),
        back.to_str().unwrap(),
    ]);
    assert!(std::fs::read(&back).unwrap() == img);
    let s = Server::start();
    let t = dir.path().join("spill.disk");
    std::fs::write(&t, vec![0xAAu8; 10 * MIB]).unwrap();
    let d = deploy_file(&s, &swapped, &t, policy()).0.unwrap();
    assert_eq!(d.path, WritePath::Qcow2Stream);
    assert!(std::fs::read(&t).unwrap()[..img.len()] == img[..]);
    // With no spill budget the same image takes the temp-file path, and still lands.
    let t = dir.path().join("fallback.disk");
    std::fs::write(&t, vec![0xAAu8; 10 * MIB]).unwrap();
    let d = deploy_file(
        &s,
        &swapped,
        &t,
        FormatPolicy {
            spill_budget: 0,
            ..policy()
        },
    )
    .0
    .unwrap();
    assert_eq!(d.path, WritePath::TempFile);
    assert!(std::fs::read(&t).unwrap()[..img.len()] == img[..]);
}

#[test]
fn vmdk_takes_the_temp_file_path_when_permitted() {
    let dir = tempfile::tempdir().unwrap();
    let (raw, img) = sparse_raw(dir.path(), 4 * MIB, 10);
    let v = dir.path().join("disk.vmdk");
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "vmdk",
        "-o",
        "subformat=streamOptimized",
        raw.to_str().unwrap(),
        v.to_str().unwrap(),
    ]);
    let s = Server::start();
    let t = dir.path().join("disk");
    std::fs::write(&t, vec![0xAAu8; 6 * MIB]).unwrap();
    let e = deploy_file(&s, &v, &t, policy()).0.unwrap_err();
    assert_eq!(e.type_name(), "InvalidImage");
    assert_eq!(
        e.details(),
        "Security: Detected image format was vmdk, but only raw, gpt, qcow2 are allowed"
    );
    let permitted = FormatPolicy {
        permitted: vec!["raw".into(), "qcow2".into(), "vmdk".into()],
        ..policy()
    };
    let tmp_before = std::fs::read_dir(std::env::temp_dir()).unwrap().count();
    let d = deploy_file(&s, &v, &t, permitted).0.unwrap();
    assert_eq!(d.path, WritePath::TempFile);
    assert!(std::fs::read(&t).unwrap()[..img.len()] == img[..]);
    let leftovers = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("rivet-image-"))
        .count();
    assert_eq!(
        leftovers, 0,
        "the temp file must be removed ({tmp_before} entries before)"
    );
}

/// A streamOptimized VMDK (grain directory "at end") of `len` bytes whose footer claims its
/// descriptor at `footer_desc_sector`: header, embedded descriptor, grains, then the footer
/// marker, the footer (a copy of the header, which qemu prefers) and the end-of-stream marker.
fn vmdk_with_footer(len: usize, footer_desc_sector: u64) -> Vec<u8> {
    let put = |b: &mut [u8], at: usize, v: &[u8]| b[at..at + v.len()].copy_from_slice(v);
    let mut h = vec![0u8; 512];
    put(&mut h, 0, b"KDMV");
    put(&mut h, 4, &1u32.to_le_bytes());
    put(&mut h, 12, &2048u64.to_le_bytes());
    put(&mut h, 20, &128u64.to_le_bytes());
    put(&mut h, 28, &1u64.to_le_bytes());
    put(&mut h, 36, &20u64.to_le_bytes());
    put(&mut h, 44, &512u32.to_le_bytes());
    put(&mut h, 56, &u64::MAX.to_le_bytes());
    let desc = "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n\
                createType=\"streamOptimized\"\n\n# Extent description\nRW 2048 SPARSE \"d.vmdk\"\n";
    let mut img = h.clone();
    img.extend_from_slice(desc.as_bytes());
    img.resize(len - 3 * 512, 0);
    let mut marker = vec![0u8; 512];
    put(&mut marker, 0, &1u64.to_le_bytes());
    put(&mut marker, 12, &3u32.to_le_bytes()); // footer marker
    let mut footer = h;
    put(&mut footer, 28, &footer_desc_sector.to_le_bytes());
    put(&mut footer, 56, &40u64.to_le_bytes());
    img.extend_from_slice(&marker);
    img.extend_from_slice(&footer);
    img.extend_from_slice(&[0u8; 512]);
    img
}

/// A VMDK longer than the inspector's head whose footer points at another descriptor: the
/// head passes, the tail must refuse it before qemu-img sees the file, even with vmdk
/// permitted. The same image with an honest footer gets past the check (to qemu-img).
#[test]
fn a_vmdk_footer_hiding_a_hostile_descriptor_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start();
    let t = dir.path().join("disk");
    let permitted = FormatPolicy {
        permitted: vec!["raw".into(), "qcow2".into(), "vmdk".into()],
        ..policy()
    };
    let run = |name: &str, footer_desc_sector: u64| {
        let v = dir.path().join(name);
        std::fs::write(&v, vmdk_with_footer(3 * MIB, footer_desc_sector)).unwrap();
        std::fs::write(&t, vec![0xAAu8; 10 * MIB]).unwrap();
        deploy_file(&s, &v, &t, permitted.clone()).0
    };
    let hostile = run("hostile.vmdk", 2).unwrap_err();
    assert_eq!(hostile.type_name(), "InvalidImage");
    assert_eq!(hostile.details(), "Security: Image failed safety check");
    assert!(
        std::fs::read(&t).unwrap().iter().all(|&b| b == 0xAA),
        "nothing may be written"
    );
    // The same image with an honest footer passes the check and qemu-img converts it.
    let honest = run("honest.vmdk", 1).unwrap();
    assert_eq!(honest.path, WritePath::TempFile);
}

/// Hostile images: each is refused with IPA's message and nothing reaches the disk.
#[test]
fn hostile_images_are_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    let (raw, _) = sparse_raw(dir.path(), 2 * MIB, 11);
    let base = p("base.qcow2");
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        raw.to_str().unwrap(),
        base.to_str().unwrap(),
    ]);
    let good = std::fs::read(&base).unwrap();
    let mut cases: Vec<(&str, Vec<u8>, &str)> = Vec::new();

    qemu_img(&[
        "create",
        "-f",
        "qcow2",
        "-b",
        raw.to_str().unwrap(),
        "-F",
        "raw",
        p("backing.qcow2").to_str().unwrap(),
    ]);
    cases.push((
        "backing file",
        std::fs::read(p("backing.qcow2")).unwrap(),
        "Security: Image failed safety check",
    ));
    qemu_img(&[
        "create",
        "-f",
        "qcow2",
        "-o",
        &format!("data_file={}", p("ext.raw").display()),
        p("datafile.qcow2").to_str().unwrap(),
        "1M",
    ]);
    cases.push((
        "external data file",
        std::fs::read(p("datafile.qcow2")).unwrap(),
        "Security: Image failed safety check",
    ));
    let mut b = good.clone();
    b[79] |= 0x40; // an unknown incompatible feature bit
    cases.push((
        "unknown incompatible bit",
        b,
        "Security: Image failed safety check",
    ));
    let mut b = good.clone();
    b[36..40].copy_from_slice(&(1u32 << 30).to_be_bytes());
    cases.push(("absurd L1 size", b, "Security: Image failed safety check"));
    let mut b = good.clone();
    b[24..32].copy_from_slice(&(1u64 << 60).to_be_bytes());
    cases.push((
        "absurd virtual size",
        b,
        "Security: Image failed safety check",
    ));
    let mut b = b"QFI\xfb".to_vec();
    b.extend(common::bytes(3 * MIB, 12).iter());
    cases.push(("magic only", b, "Security: Image failed safety check"));
    let l1 = be64(&good, 40) as usize;
    let l2 = (be64(&good, l1) & 0x00ff_ffff_ffff_fe00) as usize;
    let last_needed = (0..8192)
        .map(|i| be64(&good, l2 + 8 * i) & 0x00ff_ffff_ffff_fe00)
        .max()
        .unwrap() as usize;
    cases.push((
        "truncated",
        good[..last_needed].to_vec(),
        "Security: Image failed safety check",
    ));
    std::fs::write(p("flat.vmdk"), "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\nRW 4096 FLAT \"/etc/shadow\" 0\n").unwrap();
    cases.push((
        "vmdk flat extent",
        std::fs::read(p("flat.vmdk")).unwrap(),
        "Security:",
    ));
    cases.push((
        "compressed cluster inflating beyond a cluster",
        inflating_bomb(dir.path(), &raw),
        "Security: Image failed safety check",
    ));

    let s = Server::start();
    for (name, bytes, msg) in cases {
        let f = p(&format!("hostile-{}.img", name.replace(' ', "-")));
        std::fs::write(&f, &bytes).unwrap();
        let t = p("target");
        std::fs::write(&t, vec![0x77u8; 4 * MIB]).unwrap();
        let perms = FormatPolicy {
            permitted: vec!["raw".into(), "qcow2".into(), "vmdk".into()],
            ..policy()
        };
        let e = deploy_file(&s, &f, &t, perms).0.unwrap_err();
        assert_eq!(e.type_name(), "InvalidImage", "{name}: {e}");
        assert!(e.details().starts_with(msg), "{name}: {}", e.details());
        // The image's first MiB never lands. A refusal found late in the stream (a truncated
        // file) may have written data clusters: then the table areas are wiped instead.
        let on_disk = std::fs::read(&t).unwrap();
        let head_untouched = on_disk[..MIB].iter().all(|&b| b == 0x77);
        let head_wiped = on_disk[..MIB].iter().all(|&b| b == 0);
        assert!(
            head_untouched || head_wiped,
            "{name}: the image's head was written"
        );
        if name != "truncated" {
            assert!(
                on_disk.iter().all(|&b| b == 0x77),
                "{name}: something was written"
            );
        }
    }
    // A qcow2 declared raw by Ironic is refused, not written as raw bytes.
    let t = p("target");
    std::fs::write(&t, vec![0x77u8; 4 * MIB]).unwrap();
    let e = deploy_file(
        &s,
        &base,
        &t,
        FormatPolicy {
            disk_format: Some("raw".into()),
            ..policy()
        },
    )
    .0
    .unwrap_err();
    assert_eq!(
        e.details(),
        "Security: Expected format was raw, but image was actually qcow2"
    );
    assert!(std::fs::read(&t).unwrap().iter().all(|&b| b == 0x77));
}

/// A zlib-compressed qcow2 whose first compressed cluster is replaced by a deflate stream
/// that inflates to twice the cluster size.
fn inflating_bomb(dir: &Path, raw: &Path) -> Vec<u8> {
    use std::io::Write;
    let q = dir.join("bomb-src.qcow2");
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        "-c",
        raw.to_str().unwrap(),
        q.to_str().unwrap(),
    ]);
    let mut d = std::fs::read(&q).unwrap();
    let cb = u32::from_be_bytes(d[20..24].try_into().unwrap());
    let l1 = be64(&d, 40) as usize;
    let l2 = (be64(&d, l1) & 0x00ff_ffff_ffff_fe00) as usize;
    let x = 62 - (cb - 8);
    let entry = (0..(1usize << cb) / 8)
        .map(|i| be64(&d, l2 + 8 * i))
        .find(|e| e & (1 << 62) != 0)
        .unwrap();
    let off = (entry & ((1u64 << x) - 1)) as usize;
    let sectors = ((entry & !(3u64 << 62)) >> x) as usize;
    let room = (sectors + 1) * 512 - (off & 511);
    let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(&vec![0u8; 2 << cb]).unwrap();
    let bomb = enc.finish().unwrap();
    assert!(bomb.len() <= room, "bomb {} > room {room}", bomb.len());
    d[off..off + bomb.len()].copy_from_slice(&bomb);
    d
}

#[test]
fn a_qcow2_larger_than_the_device_is_refused_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let q = dir.path().join("big.qcow2");
    // 64 MiB virtual, almost nothing allocated: the file is tiny, the disk it needs is not.
    qemu_img(&["create", "-f", "qcow2", q.to_str().unwrap(), "64M"]);
    let s = Server::start();
    let t = dir.path().join("small.disk");
    std::fs::write(&t, vec![0x66u8; 32 * MIB]).unwrap();
    let e = deploy_file(&s, &q, &t, policy()).0.unwrap_err();
    assert_eq!(e.type_name(), "ImageDownloadOutofSpaceError");
    assert!(
        e.details().contains(&format!(
            "the image is {} bytes but the device holds only {} bytes",
            64 * MIB,
            32 * MIB
        )),
        "{}",
        e.details()
    );
    assert!(
        std::fs::read(&t).unwrap().iter().all(|&b| b == 0x66),
        "nothing may be written"
    );
}
