//! Inspection against the real Ironic API (PyPI ironic 39.0.0, from the venv of
//! `tests/ironic/setup.sh`): API and conductor in one process (`ironic`, rpc_transport=none,
//! sqlite, noauth), `fake-hardware` nodes with the `agent` inspect interface, and
//! `[inspector]` hooks at their defaults (ramdisk-error, validate-interfaces, ports,
//! architecture). Only `require_managed_boot` is off, because the fake boot interface cannot
//! boot a ramdisk: the inspection is "unmanaged", as with an external PXE environment.
//!
//! 1. rivet's inventory of the recorded server (NVMe/SAS/SATA, Intel+Broadcom NICs, BOOTIF)
//!    is POSTed with rivet's client: Ironic answers the node uuid, stores the inventory
//!    unchanged, sets `cpu_arch`, adds the PXE port and marks the known port non-PXE.
//! 2. `rivet serve` inspects this machine, then looks up with the uuid Ironic answered (its
//!    lookup MACs are deliberately wrong, so only the uuid can find the node; the node has
//!    fast track on, so lookup is allowed after inspection) and heartbeats (Ironic answers
//!    202; the fake deploy interface then ignores it).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rivet::inspect::callback::{Callback, Retry};
use rivet::inspect::{self, Collector, Machine, Options};
use serde_json::{json, Value};

/// A running Ironic (API + conductor), its process group killed on drop.
struct Ironic {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Ironic {
    fn start(py: &str) -> Ironic {
        let bin = Path::new(py).parent().unwrap().to_path_buf();
        let dir = tempfile::tempdir().unwrap();
        let port = common::free_port();
        let conf = dir.path().join("ironic.conf");
        std::fs::write(&conf, config(dir.path(), port)).unwrap();
        let st = Command::new(bin.join("ironic-dbsync"))
            .args(["--config-file", conf.to_str().unwrap(), "create_schema"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success(), "ironic-dbsync failed");
        let log = std::fs::File::create(dir.path().join("ironic.log")).unwrap();
        let child = Command::new(bin.join("ironic"))
            .args(["--config-file", conf.to_str().unwrap()])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap();
        let me = Ironic { child, port, dir };
        let until = Instant::now() + Duration::from_secs(90);
        while me.req("GET", "/", None).0 != 200 {
            assert!(Instant::now() < until, "Ironic did not start: {}", me.log());
            std::thread::sleep(Duration::from_millis(300));
        }
        me
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn full_log(&self) -> String {
        let text = std::fs::read(self.dir.path().join("ironic.log")).unwrap_or_default();
        String::from_utf8_lossy(&text).into_owned()
    }

    fn log(&self) -> String {
        let text = self.full_log();
        let lines: Vec<&str> = text.lines().filter(|l| !l.contains(" - GET /")).collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    /// One request (latest microversion); status and JSON body (null when none).
    fn req(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return (0, Value::Null);
        };
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let _ = write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
             Accept: application/json\r\nX-OpenStack-Ironic-API-Version: 1.115\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let mut r = Vec::new();
        let _ = s.read_to_end(&mut r);
        let r = String::from_utf8_lossy(&r).to_string();
        let status = r
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let text = r.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
        (status, serde_json::from_str(text).unwrap_or(Value::Null))
    }

    /// A manageable node with one port, moved to `inspect wait`.
    fn node_in_inspect_wait(&self, name: &str, mac: &str, fast_track: bool) -> String {
        let (st, node) = self.req(
            "POST",
            "/v1/nodes",
            Some(
                json!({"name": name, "driver": "fake-hardware", "inspect_interface": "agent",
                        "driver_info": {"fast_track": fast_track}}),
            ),
        );
        assert_eq!(st, 201, "{node}");
        let uuid = node["uuid"].as_str().unwrap().to_string();
        let (st, port) = self.req(
            "POST",
            "/v1/ports",
            Some(json!({"node_uuid": uuid, "address": mac})),
        );
        assert_eq!(st, 201, "{port}");
        for (target, state) in [("manage", "manageable"), ("inspect", "inspect wait")] {
            let path = format!("/v1/nodes/{uuid}/states/provision");
            let (st, v) = self.req("PUT", &path, Some(json!({ "target": target })));
            assert_eq!(st, 202, "{target}: {v}");
            self.wait_node(&uuid, 30, |n| n["provision_state"] == state);
        }
        uuid
    }

    fn node(&self, uuid: &str) -> Value {
        self.req("GET", &format!("/v1/nodes/{uuid}"), None).1
    }

    fn wait_node(&self, uuid: &str, secs: u64, ok: impl Fn(&Value) -> bool) -> Value {
        let until = Instant::now() + Duration::from_secs(secs);
        loop {
            let n = self.node(uuid);
            if ok(&n) {
                return n;
            }
            assert!(
                Instant::now() < until,
                "node {uuid} never got there: {n}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// address → pxe_enabled of the node's ports.
    fn ports(&self, uuid: &str) -> Vec<(String, bool)> {
        let (_, v) = self.req("GET", &format!("/v1/ports/detail?node={uuid}"), None);
        let mut out: Vec<(String, bool)> = v["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["address"].as_str().unwrap().to_string(),
                    p["pxe_enabled"].as_bool().unwrap(),
                )
            })
            .collect();
        out.sort();
        out
    }
}

impl Drop for Ironic {
    fn drop(&mut self) {
        let pgid = self.child.id() as i32;
        // SAFETY: kill takes no pointers; the group is the one this test started.
        unsafe { libc::kill(-pgid, libc::SIGTERM) };
        std::thread::sleep(Duration::from_millis(500));
        // SAFETY: as above.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

fn config(dir: &Path, port: u16) -> String {
    let d = dir.display();
    format!(
        "[DEFAULT]\nauth_strategy = noauth\nrpc_transport = none\nhost = rivet-test\n\
         enabled_hardware_types = fake-hardware\nenabled_boot_interfaces = fake\n\
         enabled_deploy_interfaces = fake\nenabled_inspect_interfaces = agent,no-inspect\n\
         enabled_management_interfaces = fake\nenabled_power_interfaces = fake\n\
         enabled_network_interfaces = noop\nenabled_console_interfaces = no-console\n\
         enabled_raid_interfaces = no-raid\nenabled_vendor_interfaces = no-vendor\n\
         enabled_bios_interfaces = no-bios\nenabled_rescue_interfaces = no-rescue\n\
         enabled_firmware_interfaces = no-firmware\nuse_stderr = true\n\
         [api]\nhost_ip = 127.0.0.1\nport = {port}\n\
         [database]\nconnection = sqlite:///{d}/ironic.sqlite\n\
         [oslo_concurrency]\nlock_path = {d}/locks\n\
         [agent]\ncertificates_path = {d}/certs\n\
         [conductor]\nautomated_clean = false\n\
         [inspector]\nrequire_managed_boot = false\n"
    )
}

fn recorded(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/data/inspect/{name}"))
}

#[test]
fn real_ironic_inspects_from_rivets_inventory() {
    let Some(py) = common::ironic_python("real_ironic_inspects_from_rivets_inventory") else {
        return;
    };
    let t0 = Instant::now();
    let ironic = Ironic::start(&py);
    eprintln!("Ironic up in {:.1} s", t0.elapsed().as_secs_f64());
    recorded_server_gets_ports_and_properties(&ironic);
    agent_inspects_then_looks_up_by_the_answered_uuid(&ironic);
}

fn recorded_server_gets_ports_and_properties(ironic: &Ironic) {
    // The operator enrolled the node with the Broadcom port; BOOTIF names the Intel eno1.
    let uuid = ironic.node_in_inspect_wait("server", "bc:97:e1:5e:0f:a0", false);
    let data = inspect::collect(
        &Machine::recorded(recorded("server")),
        &[Collector::Default],
        &Options::quick(),
        None,
    );
    let mut s = rivet::config::Settings::defaults().unwrap();
    s.set("http_request_timeout", "60", "test").unwrap();
    let cb = Callback::new(
        vec![format!("{}/v1/continue_inspection", ironic.url())],
        &s,
        Retry::IPA,
    )
    .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let answered = rt.block_on(cb.post(&data)).unwrap();
    assert_eq!(answered.as_deref(), Some(uuid.as_str()));
    let node = ironic.wait_node(&uuid, 60, |n| n["provision_state"] == "manageable");
    assert_eq!(node["last_error"], Value::Null, "{node}");
    assert_eq!(node["properties"]["cpu_arch"], "x86_64");
    // ports hook, add_ports=pxe: the BOOTIF port is added as PXE; the existing one stays,
    // no longer PXE (update_pxe_enabled).
    assert_eq!(
        ironic.ports(&uuid),
        [
            ("3c:fd:fe:a1:b2:c0".to_string(), true),
            ("bc:97:e1:5e:0f:a0".to_string(), false),
        ]
    );
    // Ironic stores the inventory as sent (GET /v1/nodes/{uuid}/inventory, API 1.81).
    let (st, stored) = ironic.req("GET", &format!("/v1/nodes/{uuid}/inventory"), None);
    assert_eq!(st, 200, "{stored}");
    assert_eq!(
        stored["inventory"],
        serde_json::to_value(data.inventory.as_ref().unwrap()).unwrap()
    );
    assert_eq!(stored["plugin_data"]["root_disk"]["name"], "/dev/sdc");
    assert_eq!(
        stored["plugin_data"]["boot_interface"],
        "01-3c-fd-fe-a1-b2-c0"
    );
}

fn agent_inspects_then_looks_up_by_the_answered_uuid(ironic: &Ironic) {
    let live = inspect::inventory(&Machine::live(), &Options::quick(), None, &mut vec![]).0;
    let Some(nic) = live.interfaces.first() else {
        eprintln!("SKIPPED agent part: this machine has no NIC for Ironic to find");
        return;
    };
    let uuid = ironic.node_in_inspect_wait("this-machine", &nic.mac_address, true);
    let dir = tempfile::tempdir().unwrap();
    let agent = common::AgentProc::start(
        dir.path(),
        &[
            "--api-url",
            &ironic.url(),
            "--inspection-callback-url",
            &format!("{}/v1/continue_inspection", ironic.url()),
            "--inspection-dhcp-wait-timeout",
            "0",
            // No port has this MAC: only the uuid inspection answered can find the node.
            "--lookup-addresses",
            "00:00:5e:00:53:99",
            "--lookup-interval",
            "0.2",
            "--lookup-timeout",
            "60",
            "--advertise-host",
            "127.0.0.1",
            "--agent-skip-bmc-detect",
            "--tls-state-dir",
            dir.path().to_str().unwrap(),
        ],
    );
    // Lookup by the answered uuid succeeded when rivet heartbeats (it does so only after a
    // lookup); the fake deploy interface then ignores the heartbeat, which Ironic logs.
    let heartbeat = format!("POST /v1/heartbeat/{uuid} - 202");
    let until = Instant::now() + Duration::from_secs(90);
    while !ironic.full_log().contains(&heartbeat) {
        assert!(
            Instant::now() < until,
            "no heartbeat for {uuid}: {}\n{}",
            ironic.log(),
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let node = ironic.wait_node(&uuid, 30, |n| n["provision_state"] == "manageable");
    let log = agent.log_text();
    assert_eq!(node["last_error"], Value::Null, "{node}\n{log}");
    assert_eq!(
        node["properties"]["cpu_arch"].as_str(),
        Some(live.cpu.architecture.as_str())
    );
    assert!(log.contains("inspection finished successfully"), "{log}");
    assert!(log.contains(&uuid), "{log}");
    let macs: Vec<String> = ironic.ports(&uuid).into_iter().map(|p| p.0).collect();
    let live_macs: Vec<String> = live
        .interfaces
        .iter()
        .map(|i| i.mac_address.clone())
        .collect();
    assert!(
        macs.iter().all(|m| live_macs.contains(m)),
        "{macs:?} {live_macs:?}"
    );
    let (_, stored) = ironic.req("GET", &format!("/v1/nodes/{uuid}/inventory"), None);
    let disks: Vec<&str> = stored["inventory"]["disks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    let live_disks: Vec<&str> = live.disks.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(disks, live_disks);
    assert_eq!(
        stored["plugin_data"]["configuration"]["collectors"],
        json!(["default", "logs"])
    );
}
