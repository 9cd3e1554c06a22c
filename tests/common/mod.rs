//! Test support: a fault-injecting HTTP/1.1 server on 127.0.0.1, images and loop devices.
//!
//! The server is hand-written on purpose: the faults we need (a connection cut after N bytes, a
//! body shorter than its Content-Length, a stall) are things a well-behaved server library
//! will not do.
#![allow(dead_code)]

pub mod disks;
pub mod esp;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How the server answers one path.
#[derive(Clone)]
pub enum Route {
    /// 200 with the bytes; `ranges` adds Accept-Ranges + ETag and honours `Range`.
    Bytes { data: Arc<Vec<u8>>, ranges: bool },
    /// The first `times` requests get Content-Length of the whole body but the connection is
    /// cut after `after` bytes; later requests are served as `Bytes`.
    CutAfter {
        data: Arc<Vec<u8>>,
        after: usize,
        times: usize,
        ranges: bool,
    },
    /// Answer with these statuses first, then serve the bytes.
    StatusThen {
        statuses: Vec<u16>,
        data: Arc<Vec<u8>>,
    },
    /// Always this status.
    Status(u16),
    /// Send `after` bytes then stall for `secs` before closing.
    Stall {
        data: Arc<Vec<u8>>,
        after: usize,
        secs: u64,
    },
    /// Always claim the full length but send only `send` bytes and close.
    Short { data: Arc<Vec<u8>>, send: usize },
    /// 302 to another path.
    Redirect(String),
    /// Requires `Authorization: <expected>` else 401.
    Auth {
        expected: String,
        data: Arc<Vec<u8>>,
    },
    /// Serve the bytes without a Content-Length (chunked end by close).
    NoLength { data: Arc<Vec<u8>> },
    /// Advertise ranges, cut the first answer after `after` bytes, then answer every range
    /// request with 416 (and plain requests in full).
    Cut416 { data: Arc<Vec<u8>>, after: usize },
    /// No Content-Length and a body that never ends: `chunk` again and again until the client
    /// goes away (or `max_secs` pass).
    Endless { chunk: Arc<Vec<u8>>, max_secs: u64 },
    /// The file changes between requests: the first answer is `old`, cut after `after` bytes,
    /// with Accept-Ranges and the extra header lines `first` (e.g. `ETag: "v1"\r\n`); every
    /// later answer is `new` with the header lines `later`, honouring Range and ignoring
    /// If-Range (a server that does not implement it).
    Swap {
        old: Arc<Vec<u8>>,
        new: Arc<Vec<u8>>,
        after: usize,
        first: String,
        later: String,
    },
    /// `body` (already encoded) with `Content-Encoding: <encoding>`; the first `cut_times`
    /// answers are cut after half the body.
    Encoded {
        body: Arc<Vec<u8>>,
        encoding: String,
        cut_times: usize,
    },
    /// Claim the full length, then send one byte every `every_ms` (never a stall long enough
    /// for a stall timeout, yet the body takes `data.len() * every_ms` to arrive).
    Trickle { data: Arc<Vec<u8>>, every_ms: u64 },
}

/// One request the server saw.
#[derive(Clone, Debug)]
pub struct Seen {
    pub path: String,
    pub headers: HashMap<String, String>,
}

/// The server. Dropping it leaves the thread blocked in accept; the process ends soon anyway.
pub struct Server {
    pub port: u16,
    /// Body bytes sent by `Bytes`, `CutAfter`, `StatusThen`, `Short` and `Stall` answers.
    pub served: Arc<std::sync::atomic::AtomicU64>,
    routes: Arc<Mutex<HashMap<String, Route>>>,
    counts: Arc<Mutex<HashMap<String, usize>>>,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl Server {
    pub fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let routes: Arc<Mutex<HashMap<String, Route>>> = Arc::default();
        let counts: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let served: Arc<std::sync::atomic::AtomicU64> = Arc::default();
        let (r, c, s, b) = (routes.clone(), counts.clone(), seen.clone(), served.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (r, c, s, b) = (r.clone(), c.clone(), s.clone(), b.clone());
                std::thread::spawn(move || {
                    SERVED.with(|x| *x.borrow_mut() = Some(b));
                    let _ = handle(conn, &r, &c, &s);
                });
            }
        });
        Server {
            port,
            served,
            routes,
            counts,
            seen,
        }
    }

    pub fn route(&self, path: &str, route: Route) -> String {
        self.routes.lock().unwrap().insert(path.to_string(), route);
        self.url(path)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// How many requests reached `path`.
    pub fn hits(&self, path: &str) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.path == path)
            .count()
    }

    pub fn requests(&self, path: &str) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.path == path)
            .cloned()
            .collect()
    }
}

thread_local! {
    /// The serving thread's byte counter (its server's `served`).
    static SERVED: std::cell::RefCell<Option<Arc<std::sync::atomic::AtomicU64>>> =
        const { std::cell::RefCell::new(None) };
}

fn count_served(n: usize) {
    SERVED.with(|x| {
        if let Some(c) = x.borrow().as_ref() {
            c.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        }
    });
}

fn handle(
    stream: TcpStream,
    routes: &Mutex<HashMap<String, Route>>,
    counts: &Mutex<HashMap<String, usize>>,
    seen: &Mutex<Vec<Seen>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    seen.lock().unwrap().push(Seen {
        path: path.clone(),
        headers: headers.clone(),
    });
    let n = {
        let mut c = counts.lock().unwrap();
        let e = c.entry(path.clone()).or_insert(0);
        *e += 1;
        *e
    };
    let route = routes.lock().unwrap().get(&path).cloned();
    let range_from = headers
        .get("range")
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|r| r.parse::<usize>().ok());
    match route {
        None => status(&mut out, 404, "no such route"),
        Some(Route::Status(code)) => status(&mut out, code, "fault injected"),
        Some(Route::Bytes { data, ranges }) => serve(&mut out, &data, ranges, range_from, None),
        Some(Route::CutAfter {
            data,
            after,
            times,
            ranges,
        }) => {
            if n <= times {
                serve(&mut out, &data, ranges, range_from, Some(after))
            } else {
                serve(&mut out, &data, ranges, range_from, None)
            }
        }
        Some(Route::StatusThen { statuses, data }) => match statuses.get(n - 1) {
            Some(&code) => status(&mut out, code, "try again"),
            None => serve(&mut out, &data, false, None, None),
        },
        Some(Route::Stall { data, after, secs }) => {
            write!(
                out,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                data.len()
            )?;
            out.write_all(&data[..after])?;
            count_served(after);
            out.flush()?;
            std::thread::sleep(Duration::from_secs(secs));
            Ok(())
        }
        Some(Route::Short { data, send }) => serve(&mut out, &data, false, None, Some(send)),
        Some(Route::Redirect(to)) => {
            write!(out, "HTTP/1.1 302 Found\r\nLocation: {to}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        }
        Some(Route::Auth { expected, data }) => {
            if headers.get("authorization") == Some(&expected) {
                serve(&mut out, &data, false, None, None)
            } else {
                status(&mut out, 401, "Unauthorized")
            }
        }
        Some(Route::Cut416 { data, after }) => {
            if n == 1 {
                serve(&mut out, &data, true, None, Some(after))
            } else if range_from.is_some() {
                status(&mut out, 416, "Range Not Satisfiable")
            } else {
                serve(&mut out, &data, true, None, None)
            }
        }
        Some(Route::Swap {
            old,
            new,
            after,
            first,
            later,
        }) => {
            if n == 1 {
                write!(
                    out,
                    "HTTP/1.1 200 OK\r\nAccept-Ranges: bytes\r\n{first}Content-Length: {}\r\nConnection: close\r\n\r\n",
                    old.len()
                )?;
                out.write_all(&old[..after])?;
                return Ok(());
            }
            let f = range_from.filter(|&f| f < new.len()).unwrap_or(0);
            let head = if range_from.is_some() {
                format!(
                    "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {f}-{}/{}\r\n",
                    new.len() - 1,
                    new.len()
                )
            } else {
                "HTTP/1.1 200 OK\r\n".to_string()
            };
            write!(
                out,
                "{head}Accept-Ranges: bytes\r\n{later}Content-Length: {}\r\nConnection: close\r\n\r\n",
                new.len() - f
            )?;
            out.write_all(&new[f..])
        }
        Some(Route::Encoded {
            body,
            encoding,
            cut_times,
        }) => {
            write!(
                out,
                "HTTP/1.1 200 OK\r\nContent-Encoding: {encoding}\r\nAccept-Ranges: bytes\r\nETag: \"e1\"\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )?;
            let end = if n <= cut_times {
                body.len() / 2
            } else {
                body.len()
            };
            out.write_all(&body[..end])
        }
        Some(Route::Endless { chunk, max_secs }) => {
            write!(out, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")?;
            let end = std::time::Instant::now() + Duration::from_secs(max_secs);
            while std::time::Instant::now() < end {
                out.write_all(&chunk)?;
            }
            Ok(())
        }
        Some(Route::Trickle { data, every_ms }) => {
            write!(
                out,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                data.len()
            )?;
            for b in data.iter() {
                out.write_all(&[*b])?;
                out.flush()?;
                std::thread::sleep(Duration::from_millis(every_ms));
            }
            Ok(())
        }
        Some(Route::NoLength { data }) => {
            write!(out, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")?;
            out.write_all(&data)
        }
    }
}

fn status(out: &mut TcpStream, code: u16, body: &str) -> std::io::Result<()> {
    write!(
        out,
        "HTTP/1.1 {code} Fault\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn serve(
    out: &mut TcpStream,
    data: &[u8],
    ranges: bool,
    from: Option<usize>,
    cut: Option<usize>,
) -> std::io::Result<()> {
    let extra = if ranges {
        "Accept-Ranges: bytes\r\nETag: \"v1\"\r\n"
    } else {
        ""
    };
    let (start, head) = match from {
        Some(f) if ranges && f < data.len() => (
            f,
            format!(
                "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {f}-{}/{}\r\n",
                data.len() - 1,
                data.len()
            ),
        ),
        _ => (0, "HTTP/1.1 200 OK\r\n".to_string()),
    };
    write!(
        out,
        "{head}{extra}Content-Length: {}\r\nConnection: close\r\n\r\n",
        data.len() - start
    )?;
    let end = match cut {
        Some(c) => (start + c).min(data.len()),
        None => data.len(),
    };
    for chunk in data[start..end].chunks(256 << 10) {
        out.write_all(chunk)?;
        count_served(chunk.len());
    }
    out.flush()?;
    let _ = out.shutdown(std::net::Shutdown::Both);
    Ok(())
}

/// Deterministic pseudo-random bytes.
pub fn bytes(len: usize, seed: u64) -> Arc<Vec<u8>> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    Arc::new(v)
}

/// Runs `cmd` with `args` (and extra environment `env`); whether it succeeded, and its stdout
/// followed by its stderr. Panics when it cannot start.
pub fn sh_env(cmd: &str, args: &[&str], env: &[(String, String)]) -> (bool, String) {
    let out = Command::new(cmd)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// [`sh_env`] without extra environment.
pub fn sh(cmd: &str, args: &[&str]) -> (bool, String) {
    sh_env(cmd, args, &[])
}

pub fn sha256(data: &[u8]) -> String {
    let mut h = rivet::image::checksum::Algorithm::Sha256.hasher();
    h.update(data);
    h.hex_digest()
}

pub fn digest(algo: &str, data: &[u8]) -> String {
    let mut h = rivet::image::checksum::Algorithm::from_name(algo)
        .unwrap()
        .hasher();
    h.update(data);
    h.hex_digest()
}

/// True when tests may use loop devices. Outside CI a non-root run skips with a reason; in CI
/// (CI=true) not being root is a failure, so the real-device tests can't silently vanish.
pub fn loop_devices_available(test: &str) -> bool {
    let root = rustix_is_root();
    if root {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: CI must run as root to use loop devices");
    }
    eprintln!("SKIPPED {test}: needs root for losetup");
    false
}

fn rustix_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

/// A loop device over a backing file; detached and removed on drop.
pub struct LoopDev {
    pub dev: PathBuf,
    pub backing: PathBuf,
}

impl LoopDev {
    pub fn new(dir: &Path, name: &str, size: u64, fill: u8) -> LoopDev {
        let backing = dir.join(name);
        std::fs::write(&backing, vec![fill; size as usize]).unwrap();
        Self::attach(backing, &[])
    }

    /// A loop device over `backing`, with extra `losetup` arguments.
    fn attach(backing: PathBuf, losetup_args: &[&str]) -> LoopDev {
        let out = Command::new("losetup")
            .args(["-f", "--show"])
            .args(losetup_args)
            .arg(&backing)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dev = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
        LoopDev { dev, backing }
    }

    /// A loop device over a byte range of another (how tests read partitions here).
    pub fn over_range(of: &Path, offset: u64, size: u64) -> LoopDev {
        let out = Command::new("losetup")
            .args([
                "-f",
                "--show",
                "-o",
                &offset.to_string(),
                "--sizelimit",
                &size.to_string(),
            ])
            .arg(of)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dev = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
        LoopDev {
            dev,
            backing: PathBuf::new(),
        }
    }

    pub fn read(&self) -> Vec<u8> {
        std::fs::read(&self.dev).unwrap()
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        // Partitions added with BLKPG outlive the detach of a loop device without partition
        // scanning: remove them first, or the next user of this loop number sees them.
        let _ = Command::new("partx")
            .arg("-d")
            .arg(&self.dev)
            .stderr(std::process::Stdio::null())
            .status();
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

/// A GPT disk image of `size` bytes made with the project's sample generator.
pub fn gpt_image(dir: &Path, size: u64, seed: u64) -> Vec<u8> {
    let p = dir.join(format!("gpt-{seed}.img"));
    rivet::demo::sample_image(&p, size, seed).unwrap();
    std::fs::read(p).unwrap()
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `rivet serve`, killed on drop. Always with the `log` power backend and the
/// power fence set, so no test can reboot or power off the machine.
pub struct AgentProc {
    pub child: std::process::Child,
    pub port: u16,
    pub log: PathBuf,
}

impl AgentProc {
    pub fn start(dir: &Path, args: &[&str]) -> AgentProc {
        Self::start_on(dir, free_port(), args)
    }

    pub fn start_on(dir: &Path, port: u16, args: &[&str]) -> AgentProc {
        Self::spawn(dir, port, args, &[])
    }

    pub fn start_with_env(dir: &Path, args: &[&str], env: &[(String, String)]) -> AgentProc {
        Self::spawn(dir, free_port(), args, env)
    }

    /// `rivet serve` started through a wrapper command (e.g. `prlimit --nofile=64:4096 --`).
    pub fn start_wrapped(dir: &Path, wrapper: &[&str], args: &[&str]) -> AgentProc {
        let cmd = match wrapper.split_first() {
            Some((w, rest)) => {
                let mut c = Command::new(w);
                c.args(rest).arg(env!("CARGO_BIN_EXE_rivet"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_rivet")),
        };
        Self::spawn_with(cmd, dir, free_port(), args, &[])
    }

    /// `rivet serve` for tests that erase: `--block-devices` names only `devices`, and the
    /// agent runs in a private mount namespace whose `/dev` holds only their nodes
    /// ([`PrivateDev`]), so no bug can reach another disk.
    pub fn start_private(dir: &Path, devices: &[&Path], args: &[&str]) -> AgentProc {
        let list: Vec<String> = devices.iter().map(|d| d.display().to_string()).collect();
        let mut all = vec!["--block-devices".to_string(), list.join(",")];
        all.extend(args.iter().map(|a| a.to_string()));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        let program = Path::new(env!("CARGO_BIN_EXE_rivet"));
        Self::spawn_with(
            PrivateDev::command(devices, program),
            dir,
            free_port(),
            &all,
            &[],
        )
    }

    /// [`AgentProc::start_private`] with more nodes in the private `/dev` than in
    /// `--block-devices` (`extra_nodes`: partitions the agent opens by name) and extra
    /// environment variables.
    pub fn start_private_with(
        dir: &Path,
        devices: &[&Path],
        extra_nodes: &[&Path],
        args: &[&str],
        env: &[(String, String)],
    ) -> AgentProc {
        Self::start_private_setup(dir, devices, extra_nodes, "", args, env)
    }

    /// [`AgentProc::start_private_with`] that also runs the shell lines `setup` in the
    /// namespace before the agent ([`PrivateDev::command_with`]).
    pub fn start_private_setup(
        dir: &Path,
        devices: &[&Path],
        extra_nodes: &[&Path],
        setup: &str,
        args: &[&str],
        env: &[(String, String)],
    ) -> AgentProc {
        let list: Vec<String> = devices.iter().map(|d| d.display().to_string()).collect();
        let mut all = vec!["--block-devices".to_string(), list.join(",")];
        all.extend(args.iter().map(|a| a.to_string()));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        let nodes: Vec<&Path> = devices.iter().chain(extra_nodes).copied().collect();
        let program = Path::new(env!("CARGO_BIN_EXE_rivet"));
        Self::spawn_with(
            PrivateDev::command_with(&nodes, setup, program),
            dir,
            free_port(),
            &all,
            env,
        )
    }

    fn spawn(dir: &Path, port: u16, args: &[&str], env: &[(String, String)]) -> AgentProc {
        let c = Command::new(env!("CARGO_BIN_EXE_rivet"));
        Self::spawn_with(c, dir, port, args, env)
    }

    fn spawn_with(
        mut cmd: Command,
        dir: &Path,
        port: u16,
        args: &[&str],
        env: &[(String, String)],
    ) -> AgentProc {
        let log = dir.join(format!("agent-{port}.log"));
        let child = cmd
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--power-backend",
                "log",
            ])
            .args(["--cmdline", "/dev/null", "--config", "/dev/null"])
            .args(args)
            .env("RIVET_FORBID_POWER", "1")
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env_remove("RUST_LOG")
            .stderr(std::fs::File::create(&log).unwrap())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let me = AgentProc { child, port, log };
        for _ in 0..100 {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return me;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("rivet serve did not start: {}", me.log_text());
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The agent's process id (through a wrapper that execs, the same process).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// How many descriptors the agent has open.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `--authfile=` path of a recorded `podman pull` argv (its second argument), checked to
/// be named as IPA names its temporary auth file.
pub fn ipa_authfile(pull: &[String]) -> String {
    let authfile = pull[1]
        .strip_prefix("--authfile=")
        .expect("pull uses --authfile")
        .to_string();
    assert!(
        Path::new(&authfile)
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("ipa-container-auth-"),
        "{authfile}"
    );
    authfile
}

/// The Python of the venv holding Ironic's real conductor code (`tests/ironic/setup.sh`), from
/// `RIVET_IRONIC_PYTHON`. Outside CI a missing venv skips with a reason; in CI it fails.
pub fn ironic_python(test: &str) -> Option<String> {
    match std::env::var("RIVET_IRONIC_PYTHON") {
        Ok(p) if Path::new(&p).exists() => Some(p),
        _ if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("{test}: RIVET_IRONIC_PYTHON must point to the Ironic venv in CI (scripts/test.sh sets it)")
        }
        _ => {
            eprintln!(
                "SKIPPED {test}: set RIVET_IRONIC_PYTHON (bash tests/ironic/setup.sh) to run it"
            );
            None
        }
    }
}

/// `POST /v1/commands/?wait=true` with `token`; the JSON answer.
pub fn post_command(port: u16, token: &str, body: &serde_json::Value) -> serde_json::Value {
    use std::io::Read;
    let body = body.to_string();
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "POST /v1/commands/?wait=true&agent_token={token} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut r = String::new();
    s.read_to_string(&mut r).unwrap();
    serde_json::from_str(r.split_once("\r\n\r\n").unwrap().1).unwrap()
}

/// A self-signed certificate for localhost/127.0.0.1, written as c.pem and k.pem in `dir`;
/// returns (certificate path, key path, certificate PEM).
pub fn self_signed_files(dir: &Path) -> (PathBuf, PathBuf, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params
        .subject_alt_names
        .push(rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let cert = params.self_signed(&key).unwrap();
    let (c, k) = (dir.join("c.pem"), dir.join("k.pem"));
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c, k, cert.pem())
}

/// True when running as root, for tests that need it for something other than loop devices
/// (`why`, e.g. network namespaces). Skips with a reason elsewhere; in CI not being root fails.
pub fn root_available(test: &str, why: &str) -> bool {
    if rustix_is_root() {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: CI must run as root for {why}");
    }
    eprintln!("SKIPPED {test}: needs root for {why}");
    false
}

impl LoopDev {
    /// A loop device over a sparse file of `size` bytes, with extra `losetup` arguments
    /// (`--sector-size 4096`, `-r`, ...).
    pub fn sparse(dir: &Path, name: &str, size: u64, losetup_args: &[&str]) -> LoopDev {
        let backing = dir.join(name);
        std::fs::File::create(&backing)
            .unwrap()
            .set_len(size)
            .unwrap();
        Self::attach(backing, losetup_args)
    }
}

/// Runs commands in a private mount namespace whose `/dev` holds only the given block
/// devices (same major:minor, same names) plus null, zero and urandom: whatever a command
/// run there does, it can reach no other disk by name. For the tests that erase.
pub struct PrivateDev;

impl PrivateDev {
    /// A command that runs `program` there (arguments are appended by the caller).
    pub fn command(devices: &[&Path], program: &Path) -> Command {
        Self::command_with(devices, "", program)
    }

    /// [`PrivateDev::command`] that also runs the shell lines `setup` in the namespace once
    /// its `/dev` is made (mounts of the test's own, e.g. a `/dev/shm`).
    pub fn command_with(devices: &[&Path], setup: &str, program: &Path) -> Command {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let mut script = String::from(
            "set -e\nmount -t tmpfs -o mode=0755,size=64k rivet-test-dev /dev\n\
             mknod -m 666 /dev/null c 1 3\nmknod -m 666 /dev/zero c 1 5\n\
             mknod -m 666 /dev/urandom c 1 9\n",
        );
        for d in devices {
            let m = std::fs::metadata(d).unwrap();
            assert!(
                m.file_type().is_block_device(),
                "{} is not a block device",
                d.display()
            );
            let name = d.file_name().unwrap().to_string_lossy();
            assert!(
                name.chars().all(|c| c.is_ascii_alphanumeric()),
                "odd device name {name}"
            );
            script.push_str(&format!(
                "mknod -m 600 /dev/{name} b {} {}\n",
                libc::major(m.rdev()),
                libc::minor(m.rdev())
            ));
        }
        script.push_str(setup);
        script.push_str("exec \"$@\"\n");
        let mut c = Command::new("unshare");
        c.args([
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            &script,
            "sh",
        ])
        .arg(program);
        c
    }

    /// Runs `program args` there and returns its output.
    pub fn run(devices: &[&Path], program: &Path, args: &[&str]) -> std::process::Output {
        Self::command(devices, program).args(args).output().unwrap()
    }
}

/// The path of example `name`, built once per test binary (same profile and target
/// directory as the tests).
pub fn example_bin(name: &str) -> PathBuf {
    static BUILT: Mutex<Vec<String>> = Mutex::new(Vec::new());
    // <target>/<profile>/deps/<test binary>
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
    let path = profile_dir.join("examples").join(name);
    let mut built = BUILT.lock().unwrap();
    if !built.iter().any(|b| b == name) {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "--example", name])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("CARGO_TARGET_DIR", profile_dir.parent().unwrap());
        if profile_dir.file_name().is_some_and(|p| p == "release") {
            cmd.arg("--release");
        }
        let st = cmd.status().unwrap();
        assert!(st.success(), "cargo build --example {name} failed");
        built.push(name.to_string());
    }
    path
}

/// Runs `tests/ironic/drive_steps.py` (Ironic's own AgentClient) against `agent`; returns its
/// exit code, its JSON line and a diagnostic text with the agent's log for assertions.
pub fn drive_steps(
    py: &str,
    agent: &AgentProc,
    token: &str,
    args: &[&str],
) -> (i32, serde_json::Value, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ironic/drive_steps.py");
    let out = Command::new(py)
        .arg(script)
        .args(["--agent-url", &agent.url(), "--token", token])
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v = serde_json::from_str(stdout.lines().last().unwrap_or("{}"))
        .unwrap_or(serde_json::Value::Null);
    let diag = format!(
        "{stdout}\n{}\n--- agent log ---\n{}",
        String::from_utf8_lossy(&out.stderr),
        agent.log_text()
    );
    (out.status.code().unwrap_or(-1), v, diag)
}
