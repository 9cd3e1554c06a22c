//! Lookup and heartbeat against an HTTP server that plays the Ironic API and records exactly
//! what the agent sends (paths, query, headers, body, timing).

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::AgentProc;
use serde_json::{json, Value};

const NODE: &str = "1be26c0b-03f2-4d2e-ae87-c02d7f33c123";
const TOKEN: &str = "lookup-token-0123456789abcdef0123456789";

#[derive(Clone, Debug)]
struct Req {
    method: String,
    target: String,
    headers: HashMap<String, String>,
    body: Value,
    at: Instant,
}

/// A fake Ironic API: `GET /`, `GET /v1/lookup` (404 for the first `lookup_misses` calls),
/// `POST /v1/heartbeat/<uuid>` (202).
fn fake_ironic(lookup_misses: usize) -> (u16, Arc<Mutex<Vec<Req>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let seen: Arc<Mutex<Vec<Req>>> = Arc::default();
    let s = seen.clone();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            let mut r = BufReader::new(c.try_clone().unwrap());
            let mut out = c;
            let mut line = String::new();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                continue;
            }
            let mut parts = line.split_whitespace();
            let method = parts.next().unwrap_or("").to_string();
            let target = parts.next().unwrap_or("").to_string();
            let mut headers = HashMap::new();
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                    break;
                }
                if let Some((k, v)) = h.split_once(':') {
                    headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
                }
            }
            let len: usize = headers
                .get("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let mut body = vec![0u8; len];
            r.read_exact(&mut body).unwrap();
            let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let req = Req {
                method: method.clone(),
                target: target.clone(),
                headers,
                body,
                at: Instant::now(),
            };
            let lookups = {
                let mut g = s.lock().unwrap();
                g.push(req);
                g.iter()
                    .filter(|r| r.target.starts_with("/v1/lookup"))
                    .count()
            };
            let (status, body) = if target == "/" {
                (
                    "200 OK",
                    json!({"default_version": {"id": "v1", "version": "1.115"}}).to_string(),
                )
            } else if target.starts_with("/v1/lookup") && lookups <= lookup_misses {
                (
                    "404 Not Found",
                    json!({"error_message": "Node not found"}).to_string(),
                )
            } else if target.starts_with("/v1/lookup") {
                ("200 OK", json!({
                    "node": {"uuid": NODE, "properties": {"root_device": {"name": "/dev/sda"}},
                             "instance_info": {}, "driver_internal_info": {}, "links": []},
                    "config": {"heartbeat_timeout": 300, "agent_token": TOKEN, "agent_token_required": true,
                               "agent_md5_checksum_enable": true, "permitted_image_formats": ["raw", "qcow2"],
                               "disable_deep_image_inspection": false}}).to_string())
            } else if method == "POST" && target.starts_with("/v1/heartbeat/") {
                ("202 Accepted", String::new())
            } else {
                ("404 Not Found", "{}".to_string())
            };
            let _ = write!(out, "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
        }
    });
    (port, seen)
}

fn wait_for(seen: &Mutex<Vec<Req>>, n_heartbeats: usize, secs: u64) -> Vec<Req> {
    let until = Instant::now() + Duration::from_secs(secs);
    loop {
        let v = seen.lock().unwrap().clone();
        if v.iter()
            .filter(|r| r.target.starts_with("/v1/heartbeat"))
            .count()
            >= n_heartbeats
            || Instant::now() > until
        {
            return v;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn lookup_then_heartbeats_as_ipa_sends_them() {
    let (ironic, seen) = fake_ironic(1);
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentProc::start(
        dir.path(),
        &[
            "--api-url",
            &format!("http://127.0.0.1:{ironic}"),
            "--lookup-addresses",
            "52:54:00:12:34:56,52:54:00:ab:cd:ef",
            "--lookup-interval",
            "0.1",
            "--advertise-host",
            "127.0.0.1",
            "--root-device",
            "/nonexistent",
            "--image-download-connection-retries",
            "0",
            "--enable-auto-tls",
            "false",
        ],
    );
    let reqs = wait_for(&seen, 1, 15);
    let log = agent.log_text();
    // 1. Version discovery, without a version header.
    assert_eq!(reqs[0].method, "GET", "{log}");
    assert_eq!(reqs[0].target, "/");
    assert!(!reqs[0]
        .headers
        .contains_key("x-openstack-ironic-api-version"));
    // 2. Lookup (retried after a 404), MACs comma-joined and form-encoded, version 1.62.
    let lookups: Vec<&Req> = reqs
        .iter()
        .filter(|r| r.target.starts_with("/v1/lookup"))
        .collect();
    assert_eq!(lookups.len(), 2, "{reqs:?}");
    for l in &lookups {
        assert_eq!(
            l.target,
            "/v1/lookup?addresses=52%3A54%3A00%3A12%3A34%3A56%2C52%3A54%3A00%3Aab%3Acd%3Aef"
        );
        assert_eq!(l.headers["x-openstack-ironic-api-version"], "1.62");
        assert_eq!(l.headers["accept"], "application/json");
    }
    // 3. Heartbeat: version 1.68, IPA's body.
    let hb: Vec<&Req> = reqs
        .iter()
        .filter(|r| r.target.starts_with("/v1/heartbeat"))
        .collect();
    assert_eq!(hb[0].method, "POST");
    assert_eq!(hb[0].target, format!("/v1/heartbeat/{NODE}"));
    assert_eq!(hb[0].headers["x-openstack-ironic-api-version"], "1.68");
    assert_eq!(hb[0].headers["content-type"], "application/json");
    assert_eq!(
        hb[0].body,
        json!({"callback_url": "http://127.0.0.1:9999", "agent_token": TOKEN, "agent_version": env!("CARGO_PKG_VERSION")})
    );
    // The token handed out at lookup now guards the API.
    let port = agent.port;
    let get = |q: &str| {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(
            s,
            "GET /v1/commands/?agent_token={q} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut r = String::new();
        s.read_to_string(&mut r).unwrap();
        r
    };
    assert!(get(TOKEN).starts_with("HTTP/1.1 200"));
    assert!(get("wrong").starts_with("HTTP/1.1 401"));
    // Lookup's config applies: md5 is now allowed for a 32-character checksum.
    let body = json!({"name": "standby.prepare_image", "params": {"image_info":
        {"id": "m", "urls": ["http://127.0.0.1:9/x"], "checksum": "d41d8cd98f00b204e9800998ecf8427e"}}}).to_string();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "POST /v1/commands/?agent_token={TOKEN} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).unwrap();
    let mut r = String::new();
    s.read_to_string(&mut r).unwrap();
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    // 4. The async command's end forces a heartbeat, no sooner than 5 s after the last one
    //    (the scheduled one would come after 90-180 s with heartbeat_timeout=300).
    let reqs = wait_for(&seen, 2, 12);
    let hb: Vec<&Req> = reqs
        .iter()
        .filter(|r| r.target.starts_with("/v1/heartbeat"))
        .collect();
    assert_eq!(hb.len(), 2, "no forced heartbeat: {}", agent.log_text());
    let gap = hb[1].at - hb[0].at;
    assert!(
        gap >= Duration::from_millis(4900) && gap < Duration::from_secs(9),
        "gap {gap:?}"
    );
}

#[test]
fn without_an_api_url_the_agent_is_standalone() {
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentProc::start(dir.path(), &["--agent-token", TOKEN]);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        agent.log_text().contains("running standalone"),
        "{}",
        agent.log_text()
    );
}

/// With Ironic at API 1.68 or later, the agent serves HTTPS with a fresh self-signed
/// certificate, advertises an https callback and sends the certificate as agent_verify_ca;
/// that certificate really verifies the API.
#[test]
fn auto_tls_sends_its_certificate_and_serves_https() {
    let (ironic, seen) = fake_ironic(0);
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let agent = AgentProc::start_on(
        dir.path(),
        port,
        &[
            "--api-url",
            &format!("http://127.0.0.1:{ironic}"),
            "--lookup-addresses",
            "52:54:00:12:34:56",
            "--advertise-host",
            "127.0.0.1",
            "--advertise-port",
            &port.to_string(),
            "--tls-state-dir",
            dir.path().join("tls").to_str().unwrap(),
        ],
    );
    let reqs = wait_for(&seen, 1, 15);
    let hb = reqs
        .iter()
        .find(|r| r.target.starts_with("/v1/heartbeat"))
        .unwrap_or_else(|| panic!("{}", agent.log_text()));
    assert_eq!(hb.body["callback_url"], format!("https://127.0.0.1:{port}"));
    let pem = hb.body["agent_verify_ca"]
        .as_str()
        .expect("agent_verify_ca")
        .to_string();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("tls/agent.crt")).unwrap(),
        pem
    );
    let status = https_get(&pem, port, "/v1/status");
    assert!(status.contains("started_at"), "{status}");
    // The API's own links follow the scheme it is really served with.
    let root = https_get(&pem, port, "/");
    assert!(
        root.contains(&format!("https://127.0.0.1:{port}/v1")) && !root.contains("http://"),
        "{root}"
    );
}

/// `listen_tls` with a certificate and key given as files.
#[test]
fn static_tls_serves_the_given_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (c, k, cert_pem) = common::self_signed_files(dir.path());
    let agent = AgentProc::start(
        dir.path(),
        &[
            "--listen-tls",
            "--tls-cert-file",
            c.to_str().unwrap(),
            "--tls-key-file",
            k.to_str().unwrap(),
            "--agent-token",
            TOKEN,
        ],
    );
    let root = https_get(&cert_pem, agent.port, "/");
    assert!(
        root.contains(&format!("https://127.0.0.1:{}/v1", agent.port)),
        "{root}"
    );
}

fn https_get(ca_pem: &str, port: u16, path: &str) -> String {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = reqwest::Client::builder()
            .tls_certs_only(reqwest::Certificate::from_pem(ca_pem.as_bytes()).ok())
            .build()
            .unwrap();
        let r = client
            .get(format!("https://127.0.0.1:{port}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.text().await.unwrap()
    })
}
