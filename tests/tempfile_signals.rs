//! The temp-file path leaves nothing behind: not when the agent is killed by SIGTERM in the
//! middle of a download, and files an older run left are removed at start-up.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{gpt_image, post_command, sha256, AgentProc, Route, Server};
use serde_json::json;

const T: &str = "token-for-the-tempfile-tests-0123456789";

fn leftovers(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("rivet-image-"))
        .collect()
}

#[test]
fn sigterm_during_the_temp_file_path_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let img = Arc::new(gpt_image(dir.path(), 8 << 20, 101));
    let s = Server::start();
    let url = s.route(
        "/os.img",
        Route::Stall {
            data: img.clone(),
            after: 4 << 20,
            secs: 30,
        },
    );
    let disk = dir.path().join("disk");
    std::fs::write(&disk, vec![0u8; 16 << 20]).unwrap();
    let mut agent = AgentProc::start(
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
    // Raw without stream_raw_images: IPA's cache path, through a temporary copy.
    let info = json!({"id": "img", "urls": [url], "checksum": sha256(&img),
                      "disk_format": "raw", "stream_raw_images": false});
    let body = json!({"name": "standby.prepare_image", "params": {"image_info": info}});
    let port = agent.port;
    std::thread::spawn(move || {
        // Never answered: the agent is killed first.
        let _ = std::panic::catch_unwind(|| post_command(port, T, &body));
    });
    // Until the download is in the middle of the copy.
    let start = Instant::now();
    while !agent.log_text().contains("temp-file path: downloading") {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{}",
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    let st = Command::new("kill")
        .args(["-TERM", &agent.pid().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    agent.child.wait().unwrap();
    assert_eq!(
        leftovers(&tmp),
        Vec::<String>::new(),
        "a partial copy was left"
    );
}

#[test]
fn files_an_earlier_run_left_are_removed_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    std::fs::write(tmp.join("rivet-image-a1b2c3"), vec![1u8; 4096]).unwrap();
    std::fs::write(tmp.join("unrelated"), b"keep").unwrap();
    let _agent = AgentProc::start(
        dir.path(),
        &["--agent-token", T, "--image-tmp-dir", tmp.to_str().unwrap()],
    );
    assert_eq!(leftovers(&tmp), Vec::<String>::new());
    assert!(tmp.join("unrelated").exists());
    // rivet deploy does the same.
    std::fs::write(tmp.join("rivet-image-d4e5f6"), vec![1u8; 4096]).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_rivet"))
        .args(["deploy", "--url", "http://127.0.0.1:9/x", "--checksum"])
        .arg("0".repeat(64))
        .args(["--retries", "0", "--device"])
        .arg(dir.path().join("disk"))
        .arg("--tmp-dir")
        .arg(&tmp)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert_eq!(leftovers(&tmp), Vec::<String>::new());
}
