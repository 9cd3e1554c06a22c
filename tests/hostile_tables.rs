//! Images whose partition table is built to hurt its reader (a GPT header with a valid CRC that
//! claims 2^32 entries or 256-byte entries; an MBR whose partition starts over itself): the
//! deploy fails with IPA's `InvalidImage`, the disk's table areas are wiped, and `rivet serve`
//! keeps answering. Before the bounds, the first of these aborted the process (the agent died
//! and the conductor waited forever), the others panicked inside gptman/mbrman.

mod common;

use std::process::Command;
use std::sync::Arc;

use common::{gpt_image, post_command, sha256, AgentProc, Route, Server};
use serde_json::{json, Value};

const T: &str = "token-for-the-hostile-table-tests-0123456789";
const MIB: usize = 1 << 20;

fn crc32(b: &[u8]) -> u32 {
    crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC).checksum(b)
}

/// A 4 MiB GPT image whose two headers (still with valid CRCs) say `field` = `value`.
fn hostile_gpt(dir: &std::path::Path, seed: u64, at: usize, value: u32) -> Arc<Vec<u8>> {
    let mut img = gpt_image(dir, 4 * MIB as u64, seed);
    let last = img.len() / 512 - 1;
    for lba in [1, last] {
        let h = &mut img[lba * 512..lba * 512 + 92];
        h[at..at + 4].copy_from_slice(&value.to_le_bytes());
        h[16..20].fill(0);
        let c = crc32(h);
        h[16..20].copy_from_slice(&c.to_le_bytes());
    }
    Arc::new(img)
}

/// A 2 MiB image whose MBR has one Linux partition starting at sector 0.
fn hostile_mbr() -> Arc<Vec<u8>> {
    let mut img = vec![0u8; 2 * MIB];
    img[446 + 4] = 0x83;
    img[446 + 12..446 + 16].copy_from_slice(&100u32.to_le_bytes());
    img[510] = 0x55;
    img[511] = 0xAA;
    Arc::new(img)
}

fn get_commands(port: u16) -> Value {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    write!(
        s,
        "GET /v1/commands/?agent_token={T} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut r = String::new();
    s.read_to_string(&mut r).unwrap();
    serde_json::from_str(r.split_once("\r\n\r\n").unwrap().1).unwrap()
}

fn table_areas_are_zero(disk: &[u8]) -> bool {
    disk[..MIB].iter().all(|&b| b == 0) && disk[disk.len() - MIB..].iter().all(|&b| b == 0)
}

#[test]
fn prepare_image_refuses_hostile_tables_and_the_agent_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start();
    let cases = [
        ("count", hostile_gpt(dir.path(), 61, 80, u32::MAX), 8 * MIB),
        (
            "count-same-size",
            hostile_gpt(dir.path(), 62, 80, u32::MAX),
            4 * MIB,
        ),
        ("entry-size", hostile_gpt(dir.path(), 63, 84, 256), 8 * MIB),
        ("mbr", hostile_mbr(), 8 * MIB),
    ];
    let disk = dir.path().join("disk.img");
    let agent = AgentProc::start(
        dir.path(),
        &["--agent-token", T, "--root-device", disk.to_str().unwrap()],
    );
    for (name, img, disk_len) in cases {
        std::fs::write(&disk, vec![0x5Au8; disk_len]).unwrap();
        let url = s.route(
            &format!("/{name}"),
            Route::Bytes {
                data: img.clone(),
                ranges: false,
            },
        );
        let info = json!({"id": name, "urls": [url], "os_hash_algo": "sha256",
                          "os_hash_value": sha256(&img)});
        let v = post_command(
            agent.port,
            T,
            &json!({"name": "standby.prepare_image", "params": {"image_info": info}}),
        );
        assert_eq!(v["command_status"], "FAILED", "{name}: {v}");
        assert_eq!(v["command_error"]["type"], "InvalidImage", "{name}: {v}");
        let details = v["command_error"]["details"].as_str().unwrap();
        assert!(details.contains("out of bounds"), "{name}: {details}");
        assert!(
            table_areas_are_zero(&std::fs::read(&disk).unwrap()),
            "{name}: the table areas were not wiped"
        );
        // Still serving, and the list still serialises.
        let all = get_commands(agent.port);
        assert_eq!(
            all["commands"].as_array().unwrap().last().unwrap()["id"],
            v["id"]
        );
    }
    // And a sane image still deploys afterwards.
    let good = Arc::new(gpt_image(dir.path(), 4 * MIB as u64, 64));
    let url = s.route(
        "/good",
        Route::Bytes {
            data: good.clone(),
            ranges: false,
        },
    );
    std::fs::write(&disk, vec![0u8; 8 * MIB]).unwrap();
    let v = post_command(
        agent.port,
        T,
        &json!({"name": "standby.prepare_image", "params": {"image_info":
            {"id": "good", "urls": [url], "checksum": sha256(&good)}}}),
    );
    assert_eq!(v["command_status"], "SUCCEEDED", "{v}");
}

#[test]
fn rivet_deploy_names_the_error_instead_of_aborting() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start();
    let img = hostile_gpt(dir.path(), 65, 80, u32::MAX);
    let url = s.route(
        "/x.img",
        Route::Bytes {
            data: img.clone(),
            ranges: false,
        },
    );
    let disk = dir.path().join("disk");
    std::fs::write(&disk, vec![0x5Au8; 8 * MIB]).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_rivet"))
        .args(["deploy", "--url", &url, "--device", disk.to_str().unwrap()])
        .args(["--os-hash-algo", "sha256", "--os-hash-value", &sha256(&img)])
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    let last = err.lines().last().unwrap_or("");
    assert!(
        last.starts_with("rivet: InvalidImage: ") && last.contains("4294967295 partition entries"),
        "{last}"
    );
    assert!(table_areas_are_zero(&std::fs::read(&disk).unwrap()));
}
