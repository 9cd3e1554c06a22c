//! Disks with real file systems for the erase tests: partition tables written with sfdisk,
//! file systems made on loop devices over byte ranges of the backing file (the kernel here
//! parses no partition tables), and `blkid -p` to see what is left.

use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;

use super::LoopDev;

pub fn run(cmd: &str, args: &[&str]) -> std::process::Output {
    Command::new(cmd)
        .args(args)
        .env("LVM_SUPPRESS_FD_WARNINGS", "1")
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"))
}

pub fn ok(cmd: &str, args: &[&str]) {
    let o = run(cmd, args);
    assert!(
        o.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

pub fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// What `blkid -p` finds on a device, or None.
pub fn blkid(dev: &Path) -> Option<String> {
    let o = run("blkid", &["-p", "-o", "export", &dev.display().to_string()]);
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
}

pub fn sfdisk(dev: &Path, script: &str) {
    use std::io::Write;
    let mut c = Command::new("sfdisk")
        .args(["-q", "--no-reread", "--no-tell-kernel"])
        .arg(dev)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(c.wait().unwrap().success(), "sfdisk {script}");
}

/// The disk's cached blocks are dropped, so it sees what range devices wrote.
pub fn flush(dev: &Path) {
    ok("blockdev", &["--flushbufs", &dev.display().to_string()]);
}

/// Adds a kernel partition (BLKPG) so the kernel's view has something to drop.
pub fn add_kernel_partition(disk: &Path, pno: i32, start: u64, len: u64) {
    #[repr(C)]
    struct Part {
        start: i64,
        length: i64,
        pno: i32,
        devname: [u8; 64],
        volname: [u8; 64],
    }
    #[repr(C)]
    struct Arg {
        op: i32,
        flags: i32,
        datalen: i32,
        data: *mut Part,
    }
    let f = std::fs::File::open(disk).unwrap();
    let mut p = Part {
        start: start as i64,
        length: len as i64,
        pno,
        devname: [0; 64],
        volname: [0; 64],
    };
    let mut a = Arg {
        op: 1,
        flags: 0,
        datalen: std::mem::size_of::<Part>() as i32,
        data: &mut p,
    };
    // SAFETY: BLKPG reads both structs, alive for the call.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), 0x1269, &mut a as *mut Arg) };
    let err = std::io::Error::last_os_error();
    assert_eq!(
        rc,
        0,
        "BLKPG add {pno} to {}: {err}; kernel partitions: {:?}",
        disk.display(),
        kernel_partitions(disk)
    );
}

pub fn kernel_partitions(disk: &Path) -> Vec<String> {
    let name = disk.file_name().unwrap().to_string_lossy().into_owned();
    std::fs::read_dir(format!("/sys/block/{name}"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&name) && n != &name)
        .collect()
}

/// Makes `mk` on a range of the disk's backing file and returns what blkid saw there.
pub fn make_fs(disk: &LoopDev, start: u64, size: u64, mk: &[&str]) -> String {
    let r = LoopDev::over_range(&disk.backing, start, size);
    let mut args: Vec<String> = mk[1..].iter().map(|s| s.to_string()).collect();
    args.push(r.dev.display().to_string());
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    ok(mk[0], &argv);
    let seen = blkid(&r.dev).unwrap_or_default();
    assert!(seen.contains("TYPE="), "{mk:?} left no signature: {seen}");
    seen
}

/// Asserts blkid finds nothing on the disk nor on any old partition range.
pub fn assert_clean(disk: &LoopDev, ranges: &[(u64, u64)]) {
    assert_eq!(blkid(&disk.dev), None, "signature left on the disk");
    for &(start, size) in ranges {
        let r = LoopDev::over_range(&disk.backing, start, size);
        assert_eq!(blkid(&r.dev), None, "signature left at {start}+{size}");
    }
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("rivet-erase")
        .tempdir_in("/var/tmp")
        .unwrap()
}
