//! Test and bench driver of `rivet::erase` until the `clean` extension exists: runs one erase
//! step on the devices named on the command line and prints one JSON line.
//!
//! ```text
//! erase_probe STEP [OPTIONS] DEVICE...
//!   STEP: devices (erase_devices) | metadata (erase_devices_metadata) | express
//!   --iterations N   random passes (1)         --no-zeroize      no zero pass
//!   --zero-writes    zero pass by writes, never BLKZEROOUT
//!   --concurrency N  devices at once (4)       --skip-read-only  skip read-only devices
//!   --no-secure-erase  no NVMe/ATA secure erase  --no-guard      no GPFS/VMFS/gfs2 check
//! ```
//! Output: `{"ok":true,"seconds":..,"bytes":..,"result":..}` or
//! `{"ok":false,"type":..,"message":..,"details":..}` (exit code 1). Logs go to stderr.
//! It erases whatever it is given: run it only on devices made for that (the tests run it in
//! a mount namespace whose /dev holds nothing else).
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Instant;

use rivet::erase::{self, EraseError, EraseOptions, EraseProgress, ZeroMethod};
use serde_json::{json, Value};

fn usage() -> ! {
    eprintln!("usage: erase_probe devices|metadata|express [options] DEVICE...");
    std::process::exit(2)
}

fn parse(args: &[String]) -> (String, EraseOptions, Vec<PathBuf>) {
    let Some(step) = args.first() else { usage() };
    let mut o = EraseOptions::default();
    let mut devs = Vec::new();
    let mut it = args[1..].iter();
    let num = |v: Option<&String>| {
        v.and_then(|s| s.parse::<u32>().ok())
            .unwrap_or_else(|| usage())
    };
    while let Some(a) = it.next() {
        match a.as_str() {
            "--iterations" => o.iterations = num(it.next()),
            "--concurrency" => o.concurrency = num(it.next()) as usize,
            "--no-zeroize" => o.zeroize = false,
            "--zero-writes" => o.zero_method = ZeroMethod::Write,
            "--skip-read-only" => o.skip_read_only = true,
            "--no-secure-erase" => {
                o.enable_ata_secure_erase = false;
                o.enable_nvme_secure_erase = false;
            }
            "--no-guard" => o.guard_special_filesystems = false,
            s if s.starts_with("--") => usage(),
            d => devs.push(PathBuf::from(d)),
        }
    }
    (step.clone(), o, devs)
}

fn failure(e: &EraseError) -> Value {
    let e = rivet::errors::AgentError::from(e.clone());
    json!({"ok": false, "type": e.type_name(), "code": e.code(), "message": e.message(), "details": e.details()})
}

fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (step, opts, devs) = parse(&args);
    let progress = EraseProgress::default();
    let t = Instant::now();
    let result =
        match step.as_str() {
            "devices" => erase::erase_devices(&devs, &opts, &progress).map(|r| {
                let methods: serde_json::Map<String, Value> = r
                    .devices
                    .iter()
                    .map(|(d, m)| (d.clone(), json!(format!("{m:?}"))))
                    .collect();
                json!({"result": r.clean_result(), "methods": methods})
            }),
            "metadata" => erase::erase_devices_metadata(&devs, &opts, &progress)
                .map(|()| json!({"result": null})),
            "express" => erase::erase_devices_express(&devs, &opts, &progress)
                .map(|()| json!({"result": null})),
            _ => usage(),
        };
    let out = match result {
        Ok(mut v) => {
            v["ok"] = json!(true);
            v["seconds"] = json!(t.elapsed().as_secs_f64());
            v["bytes"] = json!(progress.done.load(Ordering::Relaxed));
            v
        }
        Err(e) => failure(&e),
    };
    println!("{out}");
    if out["ok"] != json!(true) {
        std::process::exit(1);
    }
}
