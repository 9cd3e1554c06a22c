//! What the agent's API refuses or survives: URL schemes other than http(s) in `image_info`
//! (before any byte is read), connections that never finish a request (closed, bounded, and
//! the descriptor limit raised at start-up), and `proxies: null` (accepted, as IPA).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{sha256, AgentProc};
use serde_json::{json, Value};

const T: &str = "token-for-the-api-hardening-tests-0123456789";

/// One HTTP/1.1 request; (status, JSON body or Null).
fn http(port: u16, method: &str, path: &str, body: &str) -> (u16, Value) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let text = resp.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    (status, serde_json::from_str(text).unwrap_or(Value::Null))
}

fn post(port: u16, body: &Value) -> (u16, Value) {
    http(
        port,
        "POST",
        &format!("/v1/commands/?wait=true&agent_token={T}"),
        &body.to_string(),
    )
}

fn commands(port: u16) -> Vec<Value> {
    let (st, v) = http(port, "GET", &format!("/v1/commands/?agent_token={T}"), "");
    assert_eq!(st, 200, "{v}");
    v["commands"].as_array().unwrap().clone()
}

#[test]
fn only_http_and_https_urls_through_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, b"the ramdisk's private key").unwrap();
    let disk = dir.path().join("disk");
    std::fs::write(&disk, vec![0x5Au8; 4 << 20]).unwrap();
    let a = AgentProc::start(
        dir.path(),
        &["--agent-token", T, "--root-device", disk.to_str().unwrap()],
    );
    let file_url = format!("file://{}", secret.display());
    let digest = sha256(b"the ramdisk's private key");
    let wrong = "0".repeat(64);
    let cases = [
        (
            json!({"id": "a", "urls": [file_url], "checksum": digest}),
            None,
            "scheme 'file'",
        ),
        (
            json!({"id": "b", "urls": [file_url], "checksum": wrong}),
            None,
            "scheme 'file'",
        ),
        (
            json!({"id": "c", "urls": ["ftp://h/x.img"], "checksum": wrong}),
            None,
            "scheme 'ftp'",
        ),
        (
            json!({"id": "d", "urls": ["/etc/shadow"], "checksum": wrong}),
            None,
            "not an http",
        ),
        (
            json!({"id": "e", "urls": ["http://127.0.0.1:9/x"], "os_hash_algo": "sha256",
                   "os_hash_value": format!("file://{}", secret.display())}),
            None,
            "'os_hash_value' is a URL with the scheme 'file'",
        ),
        (
            json!({"id": "f", "urls": ["http://127.0.0.1:9/x"], "checksum": wrong}),
            Some(file_url.clone()),
            "'configdrive' is a URL with the scheme 'file'",
        ),
    ];
    for (info, configdrive, why) in cases {
        let mut params = json!({"image_info": info});
        if let Some(cd) = configdrive {
            params["configdrive"] = json!(cd);
        }
        let (st, v) = post(
            a.port,
            &json!({"name": "standby.prepare_image", "params": params}),
        );
        assert_eq!(st, 400, "{v}");
        let text = v["faultstring"].as_str().unwrap();
        assert!(
            text.starts_with("Invalid command parameters: ") && text.contains(why),
            "{text}"
        );
        assert!(!text.contains(&digest), "{text}");
    }
    assert!(commands(a.port).is_empty(), "a command ran");
    // The deploy step validates the same way (inside the command, as IPA).
    let (_, v) = post(
        a.port,
        &json!({"name": "deploy.execute_deploy_step", "params": {"step":
            {"step": "write_image", "interface": "deploy", "args":
                {"image_info": {"id": "g", "urls": [file_url], "checksum": wrong}}}}}),
    );
    assert_eq!(v["command_status"], "FAILED", "{v}");
    assert_eq!(
        v["command_error"]["type"], "InvalidCommandParamsError",
        "{v}"
    );
    assert!(
        std::fs::read(&disk).unwrap().iter().all(|&b| b == 0x5A),
        "the disk was written"
    );
}

/// True when the server closes the connection (after an answer, if any) within `limit`.
fn closed_within(s: &mut TcpStream, limit: Duration) -> (bool, String) {
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while start.elapsed() < limit {
        s.set_read_timeout(Some(
            limit
                .saturating_sub(start.elapsed())
                .max(Duration::from_millis(10)),
        ))
        .unwrap();
        match s.read(&mut buf) {
            Ok(0) => return (true, String::from_utf8_lossy(&got).into_owned()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return (true, String::from_utf8_lossy(&got).into_owned())
            }
            Err(_) => break,
        }
    }
    (false, String::from_utf8_lossy(&got).into_owned())
}

fn connect(port: u16, send: &str) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(send.as_bytes()).unwrap();
    s
}

#[test]
fn connections_that_never_finish_a_request_are_closed() {
    let dir = tempfile::tempdir().unwrap();
    let a = AgentProc::start(
        dir.path(),
        &["--agent-token", T, "--api-request-timeout", "1"],
    );
    let limit = Duration::from_secs(5);
    let mut idle = connect(a.port, "");
    let mut head = connect(a.port, "GET /v1/status HTTP/1.1\r\nHost: x\r\n");
    let mut body = connect(
        a.port,
        &format!("POST /v1/commands/?agent_token={T} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{{\"na"),
    );
    let mut kept = connect(a.port, "GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n");
    for (name, s) in [
        ("idle", &mut idle),
        ("head", &mut head),
        ("kept-alive", &mut kept),
    ] {
        let (closed, _) = closed_within(s, limit);
        assert!(closed, "{name} connection still open after {limit:?}");
    }
    let (closed, answer) = closed_within(&mut body, limit);
    assert!(closed, "slow body still open");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    // A complete request still gets its answer.
    let (st, _) = http(a.port, "GET", "/v1/status", "");
    assert_eq!(st, 200);

    // The same over TLS: a client that never starts the handshake.
    let (cert, key, _) = common::self_signed_files(dir.path());
    let b = AgentProc::start(
        dir.path(),
        &[
            "--api-request-timeout",
            "1",
            "--listen-tls",
            "--tls-cert-file",
            cert.to_str().unwrap(),
            "--tls-key-file",
            key.to_str().unwrap(),
        ],
    );
    let mut idle = connect(b.port, "");
    assert!(
        closed_within(&mut idle, limit).0,
        "idle TLS connection still open"
    );
}

#[test]
fn a_flood_of_idle_connections_does_not_starve_the_api() {
    let dir = tempfile::tempdir().unwrap();
    // A low soft limit, as on many systems: the agent raises it to the hard one.
    let a = AgentProc::start_wrapped(
        dir.path(),
        &["prlimit", "--nofile=64:4096", "--"],
        &["--agent-token", T],
    );
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", a.pid())).unwrap();
    let nofile = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .split_whitespace()
        .collect::<Vec<_>>();
    assert_eq!(nofile[3], "4096", "soft limit not raised: {nofile:?}");
    // Nobody needs a token to hold a socket open.
    let flood: Vec<TcpStream> = (0..300).map(|_| connect(a.port, "")).collect();
    let t = Instant::now();
    assert!(commands(a.port).is_empty());
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    // Connections closed for newcomers end as their tasks run: the count settles at the bound.
    let settle = Instant::now();
    let mut fds = a.open_fds();
    while fds >= 64 + 32 && settle.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
        fds = a.open_fds();
    }
    assert!(fds < 64 + 32, "{fds} descriptors open");
    drop(flood);
}

#[test]
fn proxies_null_is_accepted_as_absent() {
    let dir = tempfile::tempdir().unwrap();
    let img = std::sync::Arc::new(common::gpt_image(dir.path(), 4 << 20, 111));
    let s = common::Server::start();
    let url = s.route(
        "/os.img",
        common::Route::Bytes {
            data: img.clone(),
            ranges: false,
        },
    );
    let disk = dir.path().join("disk");
    std::fs::write(&disk, vec![0u8; 8 << 20]).unwrap();
    let a = AgentProc::start(
        dir.path(),
        &["--agent-token", T, "--root-device", disk.to_str().unwrap()],
    );
    for proxies in [json!(null), json!({"http": null, "https": ""})] {
        let (st, v) = post(
            a.port,
            &json!({"name": "standby.prepare_image", "params": {"image_info":
                {"id": "p", "urls": [url], "checksum": sha256(&img), "proxies": proxies,
                 "no_proxy": null}}}),
        );
        assert_eq!(st, 200, "{proxies}: {v}");
        assert_eq!(v["command_status"], "SUCCEEDED", "{proxies}: {v}");
    }
}
