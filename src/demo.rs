//! `rivet demo`: the whole deploy on a machine with nothing at hand — no spare disk, no image
//! server. It makes a sample GPT disk image, serves it over HTTP on 127.0.0.1, and deploys it
//! into a regular file larger than the image, through exactly the path `rivet deploy` takes.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Writes a sample disk image of `size` bytes (a multiple of 1 MiB, at least 4 MiB): a GPT
/// with one partition, filled with pseudo-random data in which about 30% of the 1 MiB blocks
/// are zero, as real images have. The same `seed` gives the same bytes.
pub fn sample_image(path: &Path, size: u64, seed: u64) -> std::io::Result<()> {
    const MIB: u64 = 1 << 20;
    if size < 4 * MIB || !size.is_multiple_of(MIB) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "sample images are whole MiB, at least 4 MiB",
        ));
    }
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    f.set_len(size)?;
    let mut state = seed | 1;
    let mut block = vec![0u8; MIB as usize];
    for i in 1..size / MIB - 1 {
        state = xorshift(state);
        if state % 10 < 3 {
            continue; // a zero region
        }
        for word in block.chunks_exact_mut(8) {
            state = xorshift(state);
            word.copy_from_slice(&state.to_le_bytes());
        }
        f.write_all_at(&block, i * MIB)?;
    }
    let mut gpt =
        gptman::GPT::new_from(&mut f, 512, guid(&mut state)).map_err(std::io::Error::other)?;
    let last = gpt.header.last_usable_lba;
    gpt[1] = gptman::GPTPartitionEntry {
        // Linux filesystem data
        partition_type_guid: [
            0xaf, 0x3d, 0xc6, 0x0f, 0x83, 0x84, 0x72, 0x47, 0x8e, 0x79, 0x3d, 0x69, 0xd8, 0x47,
            0x7d, 0xe4,
        ],
        unique_partition_guid: guid(&mut state),
        starting_lba: 2048,
        ending_lba: last,
        attribute_bits: 0,
        partition_name: "root".into(),
    };
    gpt.write_into(&mut f).map_err(std::io::Error::other)?;
    gptman::GPT::write_protective_mbr_into(&mut f, 512).map_err(std::io::Error::other)?;
    // A disk signature, so `root uuid` has something to report.
    state = xorshift(state);
    f.write_all_at(&(state as u32).to_le_bytes(), 440)?;
    f.sync_all()
}

fn xorshift(mut x: u64) -> u64 {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

fn guid(state: &mut u64) -> [u8; 16] {
    let mut g = [0u8; 16];
    for half in g.chunks_exact_mut(8) {
        *state = xorshift(*state);
        half.copy_from_slice(&state.to_le_bytes());
    }
    g
}

/// A small HTTP/1.1 file server on 127.0.0.1 for one directory: `GET` and `HEAD`, with
/// `Content-Length`, `Accept-Ranges`, `ETag` and single `Range` requests. Good enough to serve
/// an image to rivet; not a general web server.
pub struct FileServer {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FileServer {
    /// Serves `root` on an ephemeral port of 127.0.0.1.
    pub fn start(root: &Path) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let root = root.to_path_buf();
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("rivet-demo-http".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if flag.load(Ordering::Relaxed) {
                        break;
                    }
                    if let Ok(c) = conn {
                        let root = root.clone();
                        std::thread::spawn(move || {
                            if let Err(e) = serve(c, &root) {
                                tracing::debug!("demo server: {e}");
                            }
                        });
                    }
                }
            })?;
        Ok(FileServer {
            port,
            stop,
            thread: Some(thread),
        })
    }

    /// The URL of a file in the served directory.
    pub fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/{name}", self.port)
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(stream: TcpStream, root: &Path) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let target = parts.next().unwrap_or("/").to_string();
        let mut range = None;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("range") {
                    range = v
                        .trim()
                        .strip_prefix("bytes=")
                        .and_then(|r| r.strip_suffix('-'))
                        .and_then(|r| r.parse::<u64>().ok());
                }
            }
        }
        let name = target
            .trim_start_matches('/')
            .split('?')
            .next()
            .unwrap_or("");
        let path: PathBuf = root.join(name);
        let file = if name.is_empty() || name.contains("..") {
            None
        } else {
            std::fs::File::open(&path).ok()
        };
        let Some(mut file) = file else {
            out.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found")?;
            continue;
        };
        let len = file.metadata()?.len();
        let from = range.filter(|&r| r < len).unwrap_or(0);
        let status = if from > 0 {
            format!(
                "206 Partial Content\r\nContent-Range: bytes {from}-{}/{len}",
                len - 1
            )
        } else {
            "200 OK".to_string()
        };
        write!(
            out,
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nAccept-Ranges: bytes\r\nETag: \"{len}\"\r\n\r\n",
            len - from
        )?;
        if method == "GET" {
            std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(from))?;
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = file.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                out.write_all(&buf[..n])?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_images_are_gpt_and_deterministic() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        sample_image(&a, 8 << 20, 42).unwrap();
        sample_image(&b, 8 << 20, 42).unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        let mut f = std::fs::File::open(&a).unwrap();
        let gpt = gptman::GPT::find_from(&mut f).unwrap();
        assert_eq!(gpt[1].starting_lba, 2048);
        assert!(sample_image(&a, 3 << 20, 1).is_err());
    }
}
