//! A soak under faults: a few hundred deploys through one `rivet serve` onto a loop device,
//! from a server that injects a fault chosen at random (fixed seed) into most of them: a cut
//! (with and without ranges), a stall, 5xx answers, a body shorter than announced, a wrong
//! checksum, a hostile partition table.
//!
//! Every deploy must end one of two ways: SUCCEEDED with the image on the disk bit for bit, or
//! FAILED with one of IPA's errors and no bootable table (the table areas hold either the
//! pattern laid before the deploy, untouched, or zeros, wiped: never part of an image). Over
//! the run the agent's RSS, descriptors and threads must stay flat, and `GET /v1/commands`
//! must stay serialisable. Bounded to a few minutes; the counts are printed at the end.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{loop_devices_available, post_command, sha256, AgentProc, LoopDev, Route, Server};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

const T: &str = "token-for-the-soak-0123456789abcdef";
const MIB: usize = 1 << 20;
const DISK: usize = 8 * MIB;
const DEPLOYS: usize = 300;
const TIME_BUDGET: Duration = Duration::from_secs(150);
/// Laid over both table areas before each deploy: no boot signature, no table.
const PATTERN: u8 = 0xA5;

const IPA_ERRORS: &[&str] = &[
    "ImageDownloadError",
    "ImageDownloadTimeoutError",
    "ImageChecksumError",
    "InvalidImage",
    "ImageWriteError",
    "DeploymentError",
];

/// A raw image of `len` bytes: a random window of `pool` with an MBR holding one Linux
/// partition (a window, not fresh random bytes: generating megabytes per deploy in a debug
/// build cost more than the deploy).
fn mbr_image(rng: &mut impl Rng, pool: &[u8], len: usize) -> Vec<u8> {
    let at = rng.random_range(0..=pool.len() - len);
    let mut img = pool[at..at + len].to_vec();
    img[440..444].copy_from_slice(&rng.random::<u32>().to_le_bytes());
    img[446..510].fill(0);
    img[446 + 4] = 0x83;
    img[446 + 8..446 + 12].copy_from_slice(&1u32.to_le_bytes());
    img[446 + 12..446 + 16].copy_from_slice(&((len / 512 - 1) as u32).to_le_bytes());
    img[510] = 0x55;
    img[511] = 0xAA;
    img
}

/// An MBR image whose partition starts over the boot record (refused by the bounds).
fn hostile_image(rng: &mut impl Rng, pool: &[u8], len: usize) -> Vec<u8> {
    let mut img = mbr_image(rng, pool, len);
    img[446 + 8..446 + 12].fill(0);
    img
}

/// The agent's resident memory (KiB), descriptors and threads.
fn usage(pid: u32) -> (u64, usize, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let count = |d: String| std::fs::read_dir(d).map(|r| r.count()).unwrap_or(0);
    (
        rss,
        count(format!("/proc/{pid}/fd")),
        count(format!("/proc/{pid}/task")),
    )
}

/// `GET /v1/commands`: must answer and parse, every record with IPA's five keys.
fn command_list(port: u16) -> usize {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET /v1/commands/?agent_token={T} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut r = String::new();
    s.read_to_string(&mut r).unwrap();
    assert!(r.starts_with("HTTP/1.1 200"), "{}", &r[..r.len().min(200)]);
    let v: Value = serde_json::from_str(r.split_once("\r\n\r\n").unwrap().1).unwrap();
    let list = v["commands"].as_array().unwrap();
    assert!(list.iter().all(|c| c.as_object().unwrap().len() == 5));
    list.len()
}

/// The faults, with their weights out of 100.
const KINDS: &[(&str, u32)] = &[
    ("none", 25),
    ("cut", 15),
    ("stall", 10),
    ("5xx", 15),
    ("short", 10),
    ("wrong-checksum", 15),
    ("hostile-table", 10),
];

fn pick(rng: &mut impl Rng) -> &'static str {
    let mut x = rng.random_range(0..100);
    for (kind, w) in KINDS {
        if x < *w {
            return kind;
        }
        x -= w;
    }
    "none"
}

/// The route that injects `kind` into the download of `img`.
fn route(rng: &mut impl Rng, kind: &str, img: &Arc<Vec<u8>>) -> Route {
    let (len, data) = (img.len(), img.clone());
    match kind {
        "cut" => Route::CutAfter {
            data,
            after: rng.random_range(1..len),
            times: rng.random_range(1..=3),
            ranges: rng.random(),
        },
        "stall" => Route::Stall {
            data,
            after: rng.random_range(0..len),
            secs: 1,
        },
        "5xx" => Route::StatusThen {
            statuses: (0..rng.random_range(1..=3))
                .map(|_| if rng.random() { 500 } else { 503 })
                .collect(),
            data,
        },
        "short" => Route::Short {
            data,
            send: rng.random_range(0..len),
        },
        _ => Route::Bytes {
            data,
            ranges: rng.random(),
        },
    }
}

/// Lays the pattern over both table areas of the disk.
fn lay_pattern(dev: &std::fs::File) {
    let p = vec![PATTERN; MIB];
    dev.write_all_at(&p, 0).unwrap();
    dev.write_all_at(&p, (DISK - MIB) as u64).unwrap();
    dev.sync_all().unwrap();
}

fn check_failure(kind: &str, v: &Value, disk: &[u8]) {
    let ty = v["command_error"]["type"].as_str().unwrap_or("none");
    assert!(IPA_ERRORS.contains(&ty), "{kind}: not an IPA error: {v}");
    for area in [&disk[..MIB], &disk[DISK - MIB..]] {
        let untouched = area.iter().all(|&b| b == PATTERN);
        let wiped = area.iter().all(|&b| b == 0);
        assert!(
            untouched || wiped,
            "{kind}: a table area holds part of an image: {v}"
        );
    }
    assert!(
        disk[510..512] != [0x55, 0xAA],
        "{kind}: a boot signature is left"
    );
}

#[test]
fn hundreds_of_deploys_under_random_faults() {
    if !loop_devices_available("soak") {
        return;
    }
    let started = Instant::now();
    // The loop device's backing file in memory when possible: the deploys' fsyncs are then
    // cheap and the run measures rivet, not the machine's disk.
    let dir = tempfile::tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .unwrap();
    let dev = LoopDev::new(dir.path(), "disk", DISK as u64, 0);
    let mut took: BTreeMap<String, Duration> = BTreeMap::new();
    let devfile = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&dev.dev)
        .unwrap();
    let s = Server::start();
    let agent = AgentProc::start(
        dir.path(),
        &[
            "--agent-token",
            T,
            "--root-device",
            dev.dev.to_str().unwrap(),
            "--image-download-connection-retries",
            "1",
            "--image-download-connection-retry-interval",
            "0",
            "--image-download-connection-timeout",
            "0.5",
            "--image-download-max-duration",
            "10",
        ],
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(14);
    let pool = common::bytes(8 * MIB, 14);
    let mut outcomes: BTreeMap<(String, String), usize> = BTreeMap::new();
    let mut samples = Vec::new();
    let mut image_bytes = 0u64;
    let mut deploys = 0;
    while deploys < DEPLOYS && started.elapsed() < TIME_BUDGET {
        let tg = Instant::now();
        let len = rng.random_range(MIB / 1024..=4 * MIB / 1024) * 1024;
        let kind = pick(&mut rng);
        let img = Arc::new(if kind == "hostile-table" {
            hostile_image(&mut rng, &pool, len)
        } else {
            mbr_image(&mut rng, &pool, len)
        });
        let url = s.route(&format!("/{deploys}/os.img"), route(&mut rng, kind, &img));
        let checksum = if kind == "wrong-checksum" {
            sha256(b"another image")
        } else {
            sha256(&img)
        };
        *took.entry("~gen".into()).or_default() += tg.elapsed();
        let tp = Instant::now();
        lay_pattern(&devfile);
        *took.entry("~pattern".into()).or_default() += tp.elapsed();
        let t0 = Instant::now();
        let v = post_command(
            agent.port,
            T,
            &json!({"name": "standby.prepare_image", "params": {"image_info":
                {"id": format!("soak-{deploys}"), "urls": [url], "checksum": checksum,
                 "disk_format": "raw", "stream_raw_images": true}}}),
        );
        *took.entry(kind.to_string()).or_default() += t0.elapsed();
        let tr = Instant::now();
        let disk = dev.read();
        *took.entry("~read".into()).or_default() += tr.elapsed();
        let status = v["command_status"].as_str().unwrap_or("?");
        match status {
            "SUCCEEDED" => {
                assert!(
                    disk[..len] == img[..],
                    "{kind}: the disk differs from the image"
                );
                image_bytes += len as u64;
            }
            "FAILED" => check_failure(kind, &v, &disk),
            other => panic!("{kind}: command ended {other}: {v}"),
        }
        let ty = v["command_error"]["type"]
            .as_str()
            .unwrap_or("-")
            .to_string();
        let expected = match kind {
            "none" => Some("-"),
            "wrong-checksum" => Some("ImageChecksumError"),
            "hostile-table" => Some("InvalidImage"),
            _ => None,
        };
        if let Some(e) = expected {
            assert_eq!(ty, e, "{kind}: {v}");
        }
        *outcomes
            .entry((kind.to_string(), status.to_string()))
            .or_default() += 1;
        if status == "FAILED" {
            *outcomes.entry(("error".into(), ty)).or_default() += 1;
        }
        deploys += 1;
        let tl = Instant::now();
        assert_eq!(command_list(agent.port), deploys);
        *took.entry("~list".into()).or_default() += tl.elapsed();
        samples.push(usage(agent.pid()));
    }
    let elapsed = started.elapsed();
    // Flat: the last quarter against the first quarter (after a warm-up of 20 deploys).
    let q = (samples.len() - 20) / 4;
    let early = &samples[20..20 + q];
    let late = &samples[samples.len() - q..];
    let max = |s: &[(u64, usize, usize)], f: fn(&(u64, usize, usize)) -> u64| {
        s.iter().map(f).max().unwrap_or(0)
    };
    let (rss0, rss1) = (max(early, |x| x.0), max(late, |x| x.0));
    let (fd0, fd1) = (max(early, |x| x.1 as u64), max(late, |x| x.1 as u64));
    let (th0, th1) = (max(early, |x| x.2 as u64), max(late, |x| x.2 as u64));
    println!(
        "soak: {deploys} deploys in {:.1} s (seed 14)",
        elapsed.as_secs_f64()
    );
    for ((kind, how), n) in &outcomes {
        println!("soak: {kind:>16} {how:<26} {n}");
    }
    for (kind, d) in &took {
        println!("soak: time in {kind:>16} deploys {:.1} s", d.as_secs_f64());
    }
    println!(
        "soak: bytes served {} for {} image bytes on the disk",
        s.served.load(Ordering::Relaxed),
        image_bytes
    );
    println!("soak: RSS {rss0} -> {rss1} KiB, fds {fd0} -> {fd1}, threads {th0} -> {th1}");
    assert!(deploys >= 100, "only {deploys} deploys in the time budget");
    assert!(
        rss1 <= rss0 + rss0 / 2 + 16 * 1024,
        "RSS grew: {rss0} -> {rss1} KiB"
    );
    assert!(fd1 <= fd0 + 4, "descriptors grew: {fd0} -> {fd1}");
    assert!(th1 <= th0 + 4, "threads grew: {th0} -> {th1}");
}
