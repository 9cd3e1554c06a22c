//! The inspection POST against an HTTP server that plays Ironic and records what arrives:
//! IPA's retries (5xx and 409 retried, other errors not, the next URL on a connection
//! error, a bounded number of attempts), the agent inspecting before lookup and sending the
//! answered uuid with lookup, the body's shape (no microversion header, the `logs` archive),
//! `poll.get_hardware_info` and the start-up refusal of unknown collectors.

mod common;

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use rivet::inspect::callback::{Callback, InspectionError, Retry};
use rivet::inspect::{self, Collector, Machine, Options};
use serde_json::{json, Value};

const NODE: &str = "9b1e3a34-6c1f-4c1e-8a55-3f7d0c2b9e10";
const TOKEN: &str = "inspect-token-0123456789abcdef0123456789";

#[derive(Clone, Debug)]
struct Req {
    method: String,
    target: String,
    headers: HashMap<String, String>,
    body: Value,
}

/// A fake Ironic: `/v1/continue_inspection` answers the statuses queued (then 202 with the
/// compatibility body), lookup and heartbeat succeed.
struct Fake {
    port: u16,
    seen: Arc<Mutex<Vec<Req>>>,
}

impl Fake {
    fn start(inspection_statuses: &[u16]) -> Fake {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let seen: Arc<Mutex<Vec<Req>>> = Arc::default();
        let queue = Arc::new(Mutex::new(
            inspection_statuses
                .iter()
                .copied()
                .collect::<VecDeque<u16>>(),
        ));
        let s = seen.clone();
        std::thread::spawn(move || {
            for c in l.incoming().flatten() {
                let Some(req) = read_request(&c) else {
                    continue;
                };
                s.lock().unwrap().push(req.clone());
                let t = req.target.as_str();
                let (status, body) = if t == "/" {
                    (200, json!({"default_version": {"version": "1.115"}}))
                } else if t.starts_with("/v1/continue_inspection") {
                    match queue.lock().unwrap().pop_front() {
                        Some(st) => (st, json!({"error_message": "try again"})),
                        None => (202, json!({ "uuid": NODE })),
                    }
                } else if t.starts_with("/v1/lookup") {
                    (
                        200,
                        json!({"node": {"uuid": NODE, "properties": {}, "instance_info": {},
                                          "driver_internal_info": {}},
                                 "config": {"heartbeat_timeout": 300, "agent_token": TOKEN}}),
                    )
                } else if t.starts_with("/v1/heartbeat/") {
                    (202, Value::Null)
                } else {
                    (404, json!({}))
                };
                let body = if body.is_null() {
                    String::new()
                } else {
                    body.to_string()
                };
                let mut out = c;
                let _ = write!(
                    out,
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
                     Connection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        Fake { port, seen }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn requests(&self, prefix: &str) -> Vec<Req> {
        let v = self.seen.lock().unwrap();
        v.iter()
            .filter(|r| r.target.starts_with(prefix))
            .cloned()
            .collect()
    }
}

fn read_request(c: &std::net::TcpStream) -> Option<Req> {
    let mut r = BufReader::new(c.try_clone().ok()?);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).ok()? == 0 || h.trim().is_empty() {
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
    r.read_exact(&mut body).ok()?;
    Some(Req {
        method,
        target,
        headers,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    })
}

const FAST: Retry = Retry {
    attempts: 5,
    min: Duration::from_millis(20),
    max: Duration::from_millis(100),
    multiplier: 0.01,
};

fn data() -> inspect::InspectionData {
    let tree = format!(
        "{}/tests/data/inspect/virtio-vm",
        env!("CARGO_MANIFEST_DIR")
    );
    inspect::collect(
        &Machine::recorded(tree),
        &[Collector::Default],
        &Options::quick(),
        None,
    )
}

fn post(urls: Vec<String>, retry: Retry) -> Result<Option<String>, InspectionError> {
    let s = rivet::config::Settings::defaults().unwrap();
    let cb = Callback::new(urls, &s, retry).unwrap();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(cb.post(&data()))
}

#[test]
fn retries_5xx_and_409_then_takes_the_uuid() {
    let fake = Fake::start(&[503, 409, 500]);
    let got = post(vec![fake.url("/v1/continue_inspection")], FAST).unwrap();
    assert_eq!(got.as_deref(), Some(NODE));
    let posts = fake.requests("/v1/continue_inspection");
    assert_eq!(posts.len(), 4);
    let h = &posts[0].headers;
    assert_eq!(posts[0].method, "POST");
    assert_eq!(h["content-type"], "application/json");
    assert_eq!(h["accept"], "application/json");
    // No microversion: Ironic then answers the compatibility body {"uuid": ...}.
    assert!(!h.contains_key("x-openstack-ironic-api-version"));
    assert_eq!(posts[0].body["inventory"]["interfaces"][0]["name"], "eth0");
    assert_eq!(posts[3].body, posts[0].body);
}

#[test]
fn other_errors_are_not_retried_and_retries_are_bounded() {
    let fake = Fake::start(&[400]);
    match post(vec![fake.url("/v1/continue_inspection")], FAST) {
        Err(InspectionError::Status { status: 400, body }) => assert!(body.contains("try again")),
        other => panic!("{other:?}"),
    }
    assert_eq!(fake.requests("/v1/continue_inspection").len(), 1);

    let fake = Fake::start(&[500; 9]);
    let start = Instant::now();
    match post(vec![fake.url("/v1/continue_inspection")], FAST) {
        Err(InspectionError::Status { status: 500, .. }) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(fake.requests("/v1/continue_inspection").len(), 5);
    assert!(
        start.elapsed() >= Duration::from_millis(80),
        "4 waits of at least 20 ms"
    );
}

#[test]
fn a_url_that_refuses_connections_hands_over_to_the_next() {
    let fake = Fake::start(&[]);
    let dead = format!(
        "http://127.0.0.1:{}/v1/continue_inspection",
        common::free_port()
    );
    let got = post(
        vec![dead.clone(), fake.url("/v1/continue_inspection")],
        FAST,
    )
    .unwrap();
    assert_eq!(got.as_deref(), Some(NODE));
    match post(vec![dead], FAST) {
        Err(InspectionError::Connection { .. }) => {}
        other => panic!("{other:?}"),
    }
}

/// `rivet serve`: inspection before lookup, the answered uuid in lookup, then heartbeats.
#[test]
fn agent_inspects_before_lookup_and_looks_up_with_the_uuid() {
    let fake = Fake::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let agent = common::AgentProc::start(
        dir.path(),
        &[
            "--api-url",
            &fake.url(""),
            "--inspection-callback-url",
            &fake.url("/v1/continue_inspection"),
            "--inspection-dhcp-wait-timeout",
            "0",
            "--lookup-addresses",
            "52:54:00:12:34:56",
            "--advertise-host",
            "127.0.0.1",
            "--enable-auto-tls",
            "false",
            "--agent-skip-bmc-detect",
        ],
    );
    let until = Instant::now() + Duration::from_secs(30);
    while fake.requests("/v1/heartbeat").is_empty() {
        assert!(Instant::now() < until, "{}", agent.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    let order: Vec<String> = fake
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.target.split('?').next().unwrap().to_string())
        .collect();
    let pos = |p: &str| order.iter().position(|t| t.starts_with(p)).unwrap();
    assert!(
        pos("/v1/continue_inspection") < pos("/v1/lookup"),
        "{order:?}"
    );
    let lookup = &fake.requests("/v1/lookup")[0];
    assert!(
        lookup.target.ends_with(&format!("&node_uuid={NODE}")),
        "{}",
        lookup.target
    );
    let body = &fake.requests("/v1/continue_inspection")[0].body;
    assert_eq!(
        body["configuration"]["collectors"],
        json!(["default", "logs"])
    );
    assert_eq!(body["error"], Value::Null);
    assert_eq!(body["inventory"]["bmc_address"], Value::Null);
    assert!(body["inventory"]["interfaces"].is_array());
    // The logs collector: gzip+base64 tar with rivet's log and the inventory.
    let raw = base64::engine::general_purpose::STANDARD
        .decode(body["logs"].as_str().unwrap())
        .unwrap();
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(&raw[..]));
    let mut names = Vec::new();
    for e in tar.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().display().to_string();
        if name == "inventory" {
            let mut s = String::new();
            e.read_to_string(&mut s).unwrap();
            let inv: Value = serde_json::from_str(&s).unwrap();
            assert_eq!(inv["interfaces"], body["inventory"]["interfaces"]);
        }
        names.push(name);
    }
    assert!(names.contains(&"rivet.log".to_string()), "{names:?}");
    assert!(names.contains(&"inventory".to_string()), "{names:?}");
}

#[test]
fn poll_get_hardware_info_and_the_log_archive_carry_the_inventory() {
    let dir = tempfile::tempdir().unwrap();
    let a = common::AgentProc::start(dir.path(), &["--agent-token", TOKEN]);
    let r = common::post_command(
        a.port,
        TOKEN,
        &json!({"name": "poll.get_hardware_info", "params": {}}),
    );
    assert_eq!(r["command_status"], "SUCCEEDED", "{r}");
    let inv = &r["command_result"];
    let live = inspect::inventory(&Machine::live(), &Options::quick(), None, &mut vec![]).0;
    let names = |v: &Value, k: &str| -> Vec<String> {
        v[k].as_array()
            .unwrap()
            .iter()
            .map(|x| x["name"].as_str().unwrap().to_string())
            .collect()
    };
    let live_v = serde_json::to_value(&live).unwrap();
    assert_eq!(names(inv, "disks"), names(&live_v, "disks"));
    assert_eq!(names(inv, "interfaces"), names(&live_v, "interfaces"));
    assert_eq!(inv["cpu"]["architecture"], live_v["cpu"]["architecture"]);
    let r = common::post_command(
        a.port,
        TOKEN,
        &json!({"name": "log.collect_system_logs", "params": {}}),
    );
    let raw = base64::engine::general_purpose::STANDARD
        .decode(r["command_result"]["system_logs"].as_str().unwrap())
        .unwrap();
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(&raw[..]));
    let names: Vec<String> = tar
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    assert!(names.contains(&"inventory".to_string()), "{names:?}");
    for d in &live.disks {
        let kname = d.name.trim_start_matches("/dev/");
        assert!(names.contains(&format!("udev/{kname}")), "{names:?}");
    }
}

#[test]
fn unknown_collectors_stop_the_agent_at_start_up() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rivet"))
        .args(["serve", "--cmdline", "/dev/null", "--config", "/dev/null"])
        .args(["--inspection-collectors", "default,hardware-detect"])
        .env("RIVET_FORBID_POWER", "1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("inspection_collectors"), "{err}");
    assert!(err.contains("unknown inspection collector"), "{err}");
    // From the kernel command line, as IPA takes it.
    let dir = tempfile::tempdir().unwrap();
    let cmdline = dir.path().join("cmdline");
    std::fs::write(
        &cmdline,
        "BOOTIF=01-52-54-00-12-34-56 ipa-inspection-collectors=extra-hardware\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rivet"))
        .args(["serve", "--config", "/dev/null", "--cmdline"])
        .arg(&cmdline)
        .env("RIVET_FORBID_POWER", "1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("kernel command line") && err.contains("rivet does not have"),
        "{err}"
    );
}
