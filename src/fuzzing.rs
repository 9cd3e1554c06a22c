//! The fuzz harnesses: one function per parser of untrusted bytes, each taking arbitrary input
//! and exercising the parser the way rivet uses it. Assertions here are invariants the parsers
//! promise (output bounds, guest writes inside the disk); a panic is a bug.
//!
//! Why in the library: the fuzz workspace (`fuzz/`, cargo-fuzz on nightly) calls these, and so
//! does `tests/fuzz_corpus.rs`, which replays the kept corpus on the stable toolchain in every
//! test run. The parsers themselves stay crate-private; this module is their only door out.
//! See docs/fuzzing.md.

use crate::config::{parse_cmdline, Settings};
use crate::configdrive::{self, iso9660, MAX_CONFIG_DRIVE_SIZE};
use crate::errors::AgentError;
use crate::image::checksum::{parse_checksum_file, resolve, url_basename, Algorithm};
use crate::image::format::compress::{self, Output, CHUNK, MAGIC_LEN};
use crate::image::format::inspect;
use crate::image::format::qcow2::{GuestSink, Header, Qcow2Stream};
use crate::image::info::{check_url_schemes, ImageInfo};

/// A harness: arbitrary bytes in, a panic on a bug.
pub type Harness = fn(&[u8]);

/// Every harness by name, as the fuzz targets and the corpus directories are named.
pub const TARGETS: &[(&str, Harness)] = &[
    ("qcow2", qcow2),
    ("partition_tables", partition_tables),
    ("checksum_file", checksum_file),
    ("config_drive_image", config_drive_image),
    ("config_drive_string", config_drive_string),
    ("image_info", image_info),
    ("cmdline", cmdline),
    ("compressed", compressed),
];

/// Every format name the inspector knows, all permitted: the checks themselves are fuzzed.
const ALL_FORMATS: [&str; 9] = [
    "raw", "gpt", "qcow2", "vmdk", "vhd", "vhdx", "vdi", "qed", "iso",
];

/// Where a fuzzed image's guest writes go: nowhere, but each must be inside the virtual disk.
struct Bounded(u64);

impl GuestSink for Bounded {
    fn write_at(&mut self, off: u64, data: &[u8]) -> std::io::Result<()> {
        let end = off.checked_add(data.len() as u64);
        assert!(
            end.is_some_and(|e| e <= self.0),
            "write at {off} past {}",
            self.0
        );
        Ok(())
    }
}

/// One decoding thread or three, as the input chooses: zstd frames stream, or are walked and
/// decoded apart.
fn limits(data: &[u8]) -> compress::Limits {
    compress::Limits {
        threads: if data.len().is_multiple_of(2) { 3 } else { 1 },
        memory: 32 << 20,
    }
}

/// Pieces of a size the input chooses, as the network would cut them.
fn step(data: &[u8]) -> usize {
    1 + usize::from(data.first().copied().unwrap_or(0)) * 61
}

/// qcow2 header and tables: the format inspector's checks, then the streaming converter fed
/// the input in pieces.
pub fn qcow2(data: &[u8]) {
    let all: Vec<String> = ALL_FORMATS.map(String::from).to_vec();
    let _ = inspect::check(data, None, &all, true);
    let _ = inspect::check(data, Some("qcow2"), &all, true);
    let tail = &data[data.len().saturating_sub(inspect::TAIL_LEN)..];
    let _ = inspect::check_tail(data, tail);
    let _ = Header::parse(data);
    let Ok(mut s) = Qcow2Stream::new(data, 1 << 20) else {
        return;
    };
    let mut sink = Bounded(s.header().virtual_size);
    for piece in data.chunks(step(data)) {
        if s.feed(piece, &mut sink).is_err() {
            return;
        }
    }
    let _ = s.finish(&mut sink);
}

/// GPT and MBR reading behind the bounds, and what rivet does with a table afterwards.
pub fn partition_tables(data: &[u8]) {
    crate::disk::partitions::exercise(data);
}

/// Checksum files (`*SUMS`): the first line is the image's name, the rest the file.
pub fn checksum_file(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (name, body) = text.split_once('\n').unwrap_or(("x.img", &text));
    let url = format!("http://h/d/{name}");
    let _ = url_basename(&url);
    if let Ok(hex) = parse_checksum_file(body, "http://h/SHA256SUMS", &url) {
        assert!(matches!(hex.len(), 32 | 64 | 128), "{hex}");
        let _ = Algorithm::from_hex_len(&hex, true);
    }
    let _ = Algorithm::from_name(name);
}

/// Config drive images read back without mounting: ISO 9660 and vfat, and the kind sniffing.
pub fn config_drive_image(data: &[u8]) {
    let _ = configdrive::kind(data);
    let _ = configdrive::label(data);
    let _ = configdrive::check(data);
    let _ = iso9660::volume_label(data);
    if let Ok(files) = iso9660::list_files(data) {
        let total: usize = files.iter().map(|(_, b)| b.len()).sum();
        assert!(total <= data.len() * 64 + (1 << 20), "{total}");
    }
}

/// The `configdrive` argument (gzip+base64 text) and a body downloaded from a config drive
/// URL: at most [`MAX_CONFIG_DRIVE_SIZE`] comes out.
pub fn config_drive_string(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(img) = configdrive::materialise("node", &text, &|_| Err("no fetch".into())) {
        assert!(img.len() as u64 <= MAX_CONFIG_DRIVE_SIZE);
    }
    let body = data.to_vec();
    if let Ok(img) = configdrive::materialise("node", "http://h/cd", &|_| Ok(body.clone())) {
        assert!(img.len() as u64 <= MAX_CONFIG_DRIVE_SIZE);
    }
}

/// `image_info` JSON as the conductor sends it: validation, the typed model, the URL schemes,
/// the choice of checksum (checksum files never fetched).
pub fn image_info(data: &[u8]) {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    for md5 in [false, true] {
        let Ok(info) = ImageInfo::from_value(&v, md5) else {
            continue;
        };
        let _ = check_url_schemes(&info, info.configdrive.as_deref(), false);
        let _ = info.is_partition_image();
        let mut no_fetch = |u: &str| Err(AgentError::download(u, "not fetched"));
        let _ = resolve(&info, md5, &mut no_fetch);
    }
}

/// The kernel command line: `ipa-*` words typed as settings the way start-up does.
pub fn cmdline(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Ok(mut s) = Settings::defaults() else {
        return;
    };
    for (k, v) in parse_cmdline(&text) {
        let _ = s.set(&k, &v, "the kernel command line");
    }
    let _ = s.fetch_config();
    let _ = s.listen_addr();
}

/// Output past this is a bomb as far as the harness cares: stop decoding.
const INFLATE_LIMIT: usize = 16 << 20;

/// Compressed images: the magic sniffing, the decoder fed in pieces (as downloaded), its
/// end-of-stream decision, then the inspector on the first decompressed bytes (the format
/// rules apply to the image inside). Output comes in buffers of at most [`CHUNK`] bytes.
pub fn compressed(data: &[u8]) {
    let Some(codec) = compress::detect(&data[..data.len().min(MAGIC_LEN)]) else {
        return;
    };
    let Ok(mut inf) = compress::inflater(codec, limits(data)) else {
        return;
    };
    let mut head: Vec<u8> = Vec::new();
    let mut total = 0usize;
    let mut emit = |b: bytes::Bytes| {
        assert!(
            !b.is_empty() && b.len() <= CHUNK,
            "buffer of {} bytes",
            b.len()
        );
        if head.len() < 1 << 16 {
            head.extend_from_slice(&b[..b.len().min((1 << 16) - head.len())]);
        }
        total += b.len();
        if total > INFLATE_LIMIT {
            return Err(std::io::Error::other("bomb"));
        }
        Ok(())
    };
    let mut out = Output::new(&mut emit);
    for piece in data.chunks(step(data)) {
        if inf.feed(piece, &mut out).is_err() {
            return;
        }
    }
    if inf.finish(&mut out).is_err() || out.flush().is_err() {
        return;
    }
    drop(out);
    let all: Vec<String> = ALL_FORMATS.map(String::from).to_vec();
    let _ = inspect::check(&head, None, &all, true);
}
