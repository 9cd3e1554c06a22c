//! `rivet serve` on the wire: IPA's routes, shapes, status codes and texts, and bad input that
//! must be answered cleanly while the agent keeps serving. A regular file stands in for the
//! install disk, so these need neither root nor Python.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use common::{gpt_image, sha256, AgentProc, Route, Server};
use serde_json::{json, Value};

const T: &str = "secret-token-for-the-api-tests-0123456789";

/// One HTTP/1.1 request; returns (status, JSON body or Null).
fn http(port: u16, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let body = body.unwrap_or("");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status: u16 = resp.split_whitespace().nth(1).unwrap().parse().unwrap();
    let text = resp.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    (status, serde_json::from_str(text).unwrap_or(Value::Null))
}

fn post(a: &AgentProc, query: &str, body: &str) -> (u16, Value) {
    http(
        a.port,
        "POST",
        &format!("/v1/commands/?agent_token={T}{query}"),
        Some(body),
    )
}

fn fault(code: u16, v: &Value, text: &str) {
    assert_eq!(
        v["faultcode"],
        if code >= 500 { "Server" } else { "Client" },
        "{v}"
    );
    assert_eq!(v["faultstring"], text, "{v}");
}

#[test]
fn discovery_routes_have_ipas_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let a = AgentProc::start(dir.path(), &["--agent-token", T]);
    let (st, v) = http(a.port, "GET", "/", None);
    assert_eq!(st, 200);
    assert_eq!(v["name"], "OpenStack Ironic Python Agent API");
    assert_eq!(v["default_version"]["id"], "v1");
    assert_eq!(
        v["versions"][0]["links"][0]["href"],
        format!("http://127.0.0.1:{}/v1", a.port)
    );
    let (st, v) = http(a.port, "GET", "/v1/", None);
    assert_eq!(st, 200);
    assert_eq!(
        v["media_types"][0]["type"],
        "application/vnd.openstack.ironic-python-agent.v1+json"
    );
    assert_eq!(v["commands"][1]["rel"], "bookmark");
    for path in ["/v1/status", "/status"] {
        let (st, v) = http(a.port, "GET", path, None);
        assert_eq!(st, 200);
        assert!(v["started_at"].as_f64().unwrap() > 1.6e9);
        assert!(v["version"].is_string());
    }
    let (st, v) = http(a.port, "GET", "/nope", None);
    assert_eq!(st, 404);
    assert_eq!(v["faultcode"], "Client");
    let (st, _) = http(a.port, "DELETE", "/v1/commands/", None);
    assert_eq!(st, 405);
}

#[test]
fn tokens_guard_the_command_routes() {
    let dir = tempfile::tempdir().unwrap();
    let a = AgentProc::start(dir.path(), &["--agent-token", T]);
    for (m, p) in [
        ("GET", "/v1/commands/".to_string()),
        ("GET", "/commands".to_string()),
        ("GET", "/v1/commands/abc?agent_token=wrong".to_string()),
        ("POST", "/v1/commands/?wait=true".to_string()),
        ("POST", format!("/v1/commands/?agent_token={T}x")),
    ] {
        let (st, v) = http(
            a.port,
            m,
            &p,
            Some(r#"{"name": "standby.sync", "params": {}}"#),
        );
        assert_eq!(st, 401, "{m} {p}");
        fault(401, &v, "401 Unauthorized: Token invalid.");
    }
    // No token at all: nothing is accepted.
    let b = AgentProc::start(dir.path(), &[]);
    let (st, _) = http(b.port, "GET", "/v1/commands/?agent_token=", None);
    assert_eq!(st, 401);
}

#[test]
fn bad_requests_get_ipas_answers_and_the_agent_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let a = AgentProc::start(
        dir.path(),
        &["--agent-token", T, "--root-device", "/nonexistent"],
    );
    let (st, v) = post(
        &a,
        "&wait=true",
        r#"{"name": "standby.sync", "params": {}}"#,
    );
    assert_eq!(st, 200);
    assert_eq!(v["command_status"], "SUCCEEDED");
    let first_id = v["id"].as_str().unwrap().to_string();
    let cases: Vec<(&str, u16, &str)> = vec![
        ("{\"name\": ", 400, "400 Bad Request: Failed to decode JSON object: "),
        ("[1, 2]", 400, "400 Bad Request: Missing or invalid name or params"),
        (r#"{"params": {}}"#, 400, "400 Bad Request: Missing or invalid name or params"),
        (r#"{"name": "standby.sync"}"#, 400, "400 Bad Request: Missing or invalid name or params"),
        (r#"{"name": "standby.sync", "params": [1]}"#, 400, "400 Bad Request: Missing or invalid name or params"),
        (r#"{"name": 7, "params": {}}"#, 400, "400 Bad Request: Missing or invalid name or params"),
        (r#"{"name": "sync", "params": {}}"#, 400, "Invalid command: Command name must be of the form <extension>.<name>"),
        (r#"{"name": "nope.sync", "params": {}}"#, 404, "Not found: Extension with id nope not found."),
        (r#"{"name": "standby.nope", "params": {}}"#, 400, "Invalid command: Unknown command: nope"),
        (r#"{"name": "standby.cache_image", "params": {}}"#, 400, "Invalid command: Unknown command: cache_image"),
        (r#"{"name": "standby.sync", "params": {"x": 1}}"#, 400, "Invalid command parameters: sync() got an unexpected keyword argument 'x'"),
        (r#"{"name": "standby.prepare_image", "params": {}}"#, 400, "Invalid command parameters: prepare_image() missing required argument 'image_info'"),
        (r#"{"name": "standby.prepare_image", "params": {"image_info": {"id": "x"}}}"#, 400, "Invalid command parameters: Image is missing 'urls' field."),
        (r#"{"name": "standby.prepare_image", "params": {"image_info": {"id": "x", "urls": "http://a"}}}"#, 400, "Invalid command parameters: Image 'urls' must be a list with at least one element."),
        (r#"{"name": "standby.prepare_image", "params": {"image_info": {"id": "x", "urls": ["http://a"]}}}"#, 400, "Invalid command parameters: Image checksum is not available, either the 'checksum' field or the 'os_hash_algo' and 'os_hash_value' fields pair must be set for image verification."),
        (r#"{"name": "standby.prepare_image", "params": {"image_info": {"id": "x", "urls": ["http://a"], "os_hash_algo": "sha256"}}}"#, 400, "Invalid command parameters: Image 'os_hash_value' must be a non-empty string."),
        (r#"{"name": "standby.prepare_image", "params": {"image_info": {"id": "x", "urls": ["http://a"], "checksum": 5}}}"#, 400, "Invalid command parameters: Image 'checksum' must be a non-empty string."),
        (r#"{"name": "standby.prepare_image", "params": {"image_info": "x"}}"#, 400, "Invalid command parameters: Image info must be a dictionary."),
        (r#"{"name": "standby.prepare_image", "params": {"image_info": {"id": "x", "urls": ["http://a"], "checksum": "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}, "configdrive": 5}}"#, 400, "Invalid command parameters: 'configdrive' must be a string"),
    ];
    for (body, code, text) in cases {
        let (st, v) = post(&a, "", body);
        assert_eq!(st, code, "{body}: {v}");
        assert_eq!(v["faultcode"], "Client", "{body}");
        let fs = v["faultstring"].as_str().unwrap();
        assert!(fs.starts_with(text), "{body}: {fs}");
    }
    // None of those made a record, and the list still serialises.
    let (st, v) = http(
        a.port,
        "GET",
        &format!("/v1/commands/?agent_token={T}"),
        None,
    );
    assert_eq!(st, 200);
    let list = v["commands"].as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["id"], first_id.as_str());
    assert_eq!(list[0].as_object().unwrap().len(), 5);
    let (st, v) = http(
        a.port,
        "GET",
        &format!("/v1/commands/{first_id}?agent_token={T}"),
        None,
    );
    assert_eq!(st, 200);
    assert_eq!(v["command_name"], "sync");
    let (st, v) = http(
        a.port,
        "GET",
        &format!("/v1/commands/zzz?agent_token={T}"),
        None,
    );
    assert_eq!(st, 404);
    fault(404, &v, "Not found: Command Result with id zzz not found.");
}

#[test]
fn deploy_steps_and_their_failures() {
    let dir = tempfile::tempdir().unwrap();
    let a = AgentProc::start(dir.path(), &["--agent-token", T, "--disable-bootc-deploy"]);
    let (st, v) = post(
        &a,
        "&wait=true",
        r#"{"name": "deploy.get_deploy_steps", "params": {"node": {"uuid": "n"}, "ports": []}}"#,
    );
    assert_eq!(st, 200);
    assert_eq!(
        v["command_result"]["hardware_manager_version"],
        json!({"generic_hardware_manager": "1.2"})
    );
    let steps = v["command_result"]["deploy_steps"]["GenericHardwareManager"]
        .as_array()
        .unwrap();
    for s in steps {
        for k in [
            "step",
            "interface",
            "priority",
            "argsinfo",
            "reboot_requested",
            "abortable",
        ] {
            assert!(s.get(k).is_some(), "{s} lacks {k}");
        }
    }
    let run = |step: Value, version: Value| {
        let body = json!({"name": "deploy.execute_deploy_step",
                          "params": {"step": step, "node": {"uuid": "n"}, "ports": [], "deploy_version": version}});
        let (st, v) = post(&a, "&wait=true", &body.to_string());
        assert_eq!(st, 200, "{v}");
        v
    };
    let v = run(
        json!({"interface": "deploy", "step": "erase_everything", "args": {}}),
        Value::Null,
    );
    assert_eq!(v["command_status"], "FAILED");
    assert_eq!(v["command_error"]["type"], "HardwareManagerMethodNotFound");
    assert_eq!(
        v["command_error"]["details"],
        "Could not find method: erase_everything"
    );
    let v = run(json!({"interface": "deploy"}), Value::Null);
    assert_eq!(v["command_error"]["type"], "CommandExecutionError");
    assert!(v["command_error"]["details"]
        .as_str()
        .unwrap()
        .starts_with("Malformed deploy_step, no \"step\" key"));
    let v = run(
        json!({"interface": "deploy", "step": "write_image", "args": {}}),
        json!({"generic_hardware_manager": "1.1"}),
    );
    assert_eq!(v["command_status"], "CLEAN_VERSION_MISMATCH");
    assert_eq!(v["command_result"], Value::Null);
    assert_eq!(v["command_error"]["code"], 409);
    assert_eq!(v["command_error"]["details"], "Current versions: {'generic_hardware_manager': '1.2'}, versions used by ironic: {'generic_hardware_manager': '1.1'}");
    let v = run(
        json!({"interface": "deploy", "step": "write_image", "args": {"image_info": {"id": "x"}}}),
        Value::Null,
    );
    assert_eq!(v["command_status"], "FAILED");
    assert_eq!(v["command_error"]["type"], "InvalidCommandParamsError");
    let v = run(
        json!({"interface": "deploy", "step": "execute_bootc_install", "args": {"image_source": "oci://q/x:1"}}),
        Value::Null,
    );
    assert_eq!(
        v["command_error"]["details"],
        "The bootc deploy interface is administratively disable. Deployment cannot proceed."
    );
    let (_, v) = post(
        &a,
        "&wait=true",
        r#"{"name": "log.collect_system_logs", "params": {}}"#,
    );
    assert_eq!(v["command_status"], "SUCCEEDED");
    assert!(v["command_result"]["system_logs"].as_str().unwrap().len() > 100);
}

#[test]
fn prepare_image_onto_a_file_reports_progress_then_ipas_message() {
    let dir = tempfile::tempdir().unwrap();
    let image = Arc::new(gpt_image(dir.path(), 16 << 20, 51));
    let s = Server::start();
    let url = s.route(
        "/img",
        Route::Stall {
            data: image.clone(),
            after: 6 << 20,
            secs: 2,
        },
    );
    let good = s.route(
        "/good",
        Route::Bytes {
            data: image.clone(),
            ranges: false,
        },
    );
    let disk = dir.path().join("disk.img");
    std::fs::write(&disk, vec![0u8; 32 << 20]).unwrap();
    let a = AgentProc::start(
        dir.path(),
        &[
            "--agent-token",
            T,
            "--root-device",
            disk.to_str().unwrap(),
            "--image-download-connection-retries",
            "0",
            "--image-download-connection-timeout",
            "1",
        ],
    );
    let body = json!({"name": "standby.prepare_image", "params": {"image_info":
        {"id": "slow", "urls": [url], "os_hash_algo": "sha256", "os_hash_value": sha256(&image)}}});
    let (st, v) = post(&a, "", &body.to_string());
    assert_eq!(st, 200);
    assert_eq!(v["command_status"], "RUNNING");
    let id = v["id"].as_str().unwrap().to_string();
    let mut seen_progress = false;
    for _ in 0..40 {
        let (_, v) = http(
            a.port,
            "GET",
            &format!("/v1/commands/{id}?agent_token={T}"),
            None,
        );
        assert_eq!(v.as_object().unwrap().len(), 5);
        if v["command_status"] == "RUNNING" {
            if let Some(n) = v["command_result"]["progress"]["bytes_transferred"].as_u64() {
                assert!(n > 0 && n <= 6 << 20);
                assert_eq!(v["command_result"]["progress"]["total_bytes"], 16 << 20);
                seen_progress = true;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
        if seen_progress {
            break;
        }
    }
    assert!(seen_progress, "no progress while RUNNING");
    // Busy while it runs.
    let (st, v) = post(&a, "", r#"{"name": "standby.sync", "params": {}}"#);
    assert_eq!(st, 409);
    fault(409, &v, "Agent is busy: executing command prepare_image");
    let (_, v) = http(
        a.port,
        "GET",
        &format!("/v1/commands/{id}?agent_token={T}&wait=true"),
        None,
    );
    assert_eq!(v["command_status"], "FAILED");
    assert_eq!(v["command_error"]["type"], "ImageDownloadError");
    assert!(v["command_error"]["details"]
        .as_str()
        .unwrap()
        .contains("Timed out reading next chunk"));

    let body = json!({"name": "standby.prepare_image", "params": {"image_info":
        {"id": "good", "urls": [good], "checksum": sha256(&image)}}});
    let (_, v) = post(&a, "&wait=true", &body.to_string());
    assert_eq!(v["command_status"], "SUCCEEDED", "{v}");
    let sig = u32::from_le_bytes(image[440..444].try_into().unwrap());
    assert_eq!(
        v["command_result"]["result"],
        format!(
            "prepare_image: image (good) written to device {} root_uuid=0x{sig:08x}",
            disk.display()
        )
    );
    let (_, v) = post(
        &a,
        "&wait=true",
        r#"{"name": "standby.get_partition_uuids", "params": {}}"#,
    );
    assert_eq!(
        v["command_result"],
        json!({"root uuid": format!("0x{sig:08x}")})
    );
    // A whole-disk image without a partition table is refused, as IPA does.
    let blank = s.route(
        "/blank",
        Route::Bytes {
            data: Arc::new(vec![0u8; 2 << 20]),
            ranges: false,
        },
    );
    let body = json!({"name": "standby.prepare_image", "params": {"image_info":
        {"id": "blank", "urls": [blank], "checksum": sha256(&vec![0u8; 2 << 20])}}});
    let (_, v) = post(&a, "&wait=true", &body.to_string());
    assert_eq!(v["command_status"], "FAILED");
    assert_eq!(v["command_error"]["type"], "DeploymentError");
    assert!(
        v["command_error"]["details"]
            .as_str()
            .unwrap()
            .starts_with("Unable to find a valid partition table"),
        "{v}"
    );
}

#[test]
fn raw_images_without_stream_raw_images_take_the_cache_path_once() {
    let dir = tempfile::tempdir().unwrap();
    let image = Arc::new(gpt_image(dir.path(), 8 << 20, 52));
    let s = Server::start();
    let url = s.route(
        "/img",
        Route::Bytes {
            data: image.clone(),
            ranges: false,
        },
    );
    let disk = dir.path().join("disk.img");
    std::fs::write(&disk, vec![0u8; 16 << 20]).unwrap();
    let tmp = dir.path().join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let a = AgentProc::start(
        dir.path(),
        &[
            "--agent-token",
            T,
            "--root-device",
            disk.to_str().unwrap(),
            "--image-tmp-dir",
            tmp.to_str().unwrap(),
        ],
    );
    let body = json!({"name": "standby.prepare_image", "params": {"image_info":
        {"id": "cached", "urls": [url], "checksum": sha256(&image), "disk_format": "raw", "stream_raw_images": false}}});
    for _ in 0..2 {
        let (_, v) = post(&a, "&wait=true", &body.to_string());
        assert_eq!(v["command_status"], "SUCCEEDED", "{v}");
        assert!(v["command_result"]["result"]
            .as_str()
            .unwrap()
            .starts_with("prepare_image: image (cached) written to device"));
    }
    assert_eq!(
        s.hits("/img"),
        1,
        "the second prepare_image of the same image must use the cache: {}",
        a.log_text()
    );
    assert!(a.log_text().contains("TempFile"), "{}", a.log_text());
    assert_eq!(
        std::fs::read_dir(&tmp).unwrap().count(),
        0,
        "the temporary copy must be removed"
    );
    let on_disk = std::fs::read(&disk).unwrap();
    assert!(on_disk[(1 << 20)..(7 << 20)] == image[(1 << 20)..(7 << 20)]);
}

#[test]
fn prepare_image_streams_a_qcow2_through_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("disk.raw");
    let image = gpt_image(dir.path(), 16 << 20, 53);
    std::fs::write(&raw, &image).unwrap();
    let q = dir.path().join("disk.qcow2");
    let out = std::process::Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2", "-c"])
        .arg(&raw)
        .arg(&q)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let qdata = Arc::new(std::fs::read(&q).unwrap());
    let s = Server::start();
    let url = s.route(
        "/disk.qcow2",
        Route::Bytes {
            data: qdata.clone(),
            ranges: true,
        },
    );
    let disk = dir.path().join("target.img");
    std::fs::write(&disk, vec![0xA5u8; 32 << 20]).unwrap();
    let a = AgentProc::start(
        dir.path(),
        &["--agent-token", T, "--root-device", disk.to_str().unwrap()],
    );
    let body = json!({"name": "standby.prepare_image", "params": {"image_info":
        {"id": "q", "urls": [url], "disk_format": "qcow2", "stream_raw_images": true,
         "os_hash_algo": "sha256", "os_hash_value": sha256(&qdata)}}});
    let (_, v) = post(&a, "&wait=true", &body.to_string());
    assert_eq!(v["command_status"], "SUCCEEDED", "{v}\n{}", a.log_text());
    assert!(a
        .log_text()
        .contains("converting qcow2 to raw while it streams"));
    let on_disk = std::fs::read(&disk).unwrap();
    // All but the GPT headers, which moved with the backup header.
    assert!(
        on_disk[1024..(15 << 20)] == image[1024..(15 << 20)],
        "the disk is not the image"
    );
    assert!(
        on_disk[(16 << 20)..(31 << 20)].iter().all(|&b| b == 0xA5),
        "wrote past the image"
    );
    // A qcow2 declared raw is refused (IPA would write the qcow2 bytes as they are).
    let body = json!({"name": "standby.prepare_image", "params": {"image_info":
        {"id": "q2", "urls": [s.url("/disk.qcow2")], "disk_format": "raw", "stream_raw_images": true,
         "os_hash_algo": "sha256", "os_hash_value": sha256(&qdata)}}});
    let (_, v) = post(&a, "&wait=true", &body.to_string());
    assert_eq!(v["command_error"]["type"], "InvalidImage");
    assert_eq!(
        v["command_error"]["details"],
        "Security: Expected format was raw, but image was actually qcow2"
    );
}
