//! The temp-file path, for what cannot stream (vmdk and the other formats qemu-img reads, or a
//! qcow2 whose layout needs random access): `qemu-img convert` from a verified, inspected local
//! copy, as IPA does (docs/data-path.md#finishing-the-disk), with its memory limit and retries.

use std::path::Path;
use std::process::Command;

use crate::errors::AgentError;

/// IPA's `image_convert_memory_limit` (MiB of address space for qemu-img).
pub(crate) const MEMORY_LIMIT_MIB: u64 = 2048;
/// IPA's `image_convert_attempts`.
pub(crate) const ATTEMPTS: u32 = 3;

/// Converts `src` (of the inspected format `format`) onto `dst`. A block device gets IPA's
/// options (`-O host_device -t directsync -S 0 -W`); a regular file gets raw output through
/// the page cache (files on tmpfs refuse O_DIRECT).
pub(crate) fn qemu_img_convert(
    src: &Path,
    format: &str,
    dst: &Path,
    dst_is_block: bool,
) -> Result<(), AgentError> {
    let mut args: Vec<String> = vec!["convert".into()];
    if dst_is_block {
        args.extend(["-O", "host_device", "-t", "directsync"].map(String::from));
    } else {
        args.extend(["-O", "raw", "-t", "writeback"].map(String::from));
    }
    args.extend(["-S", "0", "-W", "-f", format].map(String::from));
    args.push(src.display().to_string());
    args.push(dst.display().to_string());
    let use_prlimit = which("prlimit");
    let mut last = None;
    for attempt in 1..=ATTEMPTS {
        let mut cmd = if use_prlimit {
            let mut c = Command::new("prlimit");
            c.arg(format!("--as={}", MEMORY_LIMIT_MIB << 20))
                .arg("qemu-img");
            c
        } else {
            Command::new("qemu-img")
        };
        cmd.args(&args);
        tracing::info!(attempt, "running qemu-img {}", args.join(" "));
        cmd.env("MALLOC_ARENA_MAX", "3");
        let failure = match crate::external::run_command(&mut cmd, "qemu-img") {
            Ok(_) => return Ok(()),
            Err(f) => f,
        };
        let err = failure.image_write(dst);
        let memory = failure.stderr.contains("Resource temporarily unavailable")
            || failure.stderr.contains("Cannot allocate memory");
        if !memory || attempt == ATTEMPTS {
            return Err(err);
        }
        tracing::warn!("qemu-img ran out of memory; retrying");
        rustix::fs::sync();
        last = Some(err);
    }
    Err(last.unwrap_or_else(|| AgentError::ImageWrite("qemu-img convert failed".into())))
}

/// The virtual size qemu-img reports for an inspected file.
pub(crate) fn virtual_size(src: &Path, format: &str) -> Result<u64, AgentError> {
    let out = Command::new("qemu-img")
        .args(["info", "--output=json", "-f", format])
        .arg(src)
        .env("LC_ALL", "C")
        .output()
        .map_err(|e| {
            AgentError::InvalidImage(format!("Security: Unable to safety check image ({e})"))
        })?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|_| AgentError::InvalidImage("Security: Unable to safety check image".into()))?;
    v.get("virtual-size")
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| AgentError::InvalidImage("Security: Unable to safety check image".into()))
}

fn which(cmd: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(cmd).is_file()))
        .unwrap_or(false)
}
