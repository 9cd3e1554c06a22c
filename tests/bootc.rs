//! `execute_bootc_install` through the agent API, with a recorded-call `podman` stand-in on
//! PATH (`tests/stubs/podman`): no container registry can be reached from the test machines.
//! What is real: rivet, its argv building, the pull secret's file and lifetime, the partition
//! check on the device afterwards (the stand-in writes a GPT there with `sgdisk`).

mod common;

use std::path::Path;

use common::AgentProc;
use serde_json::{json, Value};

const T: &str = "bootc-token-0123456789abcdef0123456789";

fn post(port: u16, body: &Value) -> Value {
    common::post_command(port, T, body)
}

fn start(dir: &Path, env: &[(&str, &str)]) -> (AgentProc, std::path::PathBuf, std::path::PathBuf) {
    let stubs = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/stubs");
    let disk = dir.join("disk.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(2_000_000_000)
        .unwrap();
    let log = dir.join("podman.log");
    let conf = dir.join("containers.conf.d");
    let path = format!("{}:{}", stubs.display(), std::env::var("PATH").unwrap());
    let mut vars: Vec<(String, String)> = vec![
        ("PATH".into(), path),
        ("RIVET_PODMAN_LOG".into(), log.display().to_string()),
    ];
    vars.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let agent = AgentProc::start_with_env(
        dir,
        &[
            "--agent-token",
            T,
            "--root-device",
            disk.to_str().unwrap(),
            "--containers-conf-dir",
            conf.to_str().unwrap(),
        ],
        &vars,
    );
    (agent, disk, log)
}

fn step(secret: Option<&str>) -> Value {
    json!({"name": "deploy.execute_deploy_step", "params": {
        "step": {"interface": "deploy", "step": "execute_bootc_install",
                 "args": {"image_source": "oci://foo.tld/org/img:1", "configdrive": null, "oci_pull_secret": secret}},
        "node": {"uuid": "n", "instance_info": {"bootc_authorized_keys": "ssh-ed25519 AAAA test@rivet"}},
        "ports": [], "deploy_version": {"generic_hardware_manager": "1.2"}}})
}

fn calls(log: &Path) -> Vec<Vec<String>> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn bootc_install_pulls_with_a_private_secret_then_installs() {
    let dir = tempfile::tempdir().unwrap();
    let (agent, disk, log) = start(dir.path(), &[]);
    let v = post(agent.port, &step(Some("dXNlcjpwYXNz")));
    assert_eq!(
        v["command_status"],
        "SUCCEEDED",
        "{v}\n{}",
        agent.log_text()
    );
    assert_eq!(
        v["command_result"]["deploy_result"]["result"],
        format!(
            "execute_bootc_install: Container image (oci://foo.tld/org/img:1) written to device {}",
            disk.display()
        )
    );
    let c = calls(&log);
    assert_eq!(c.len(), 2, "{c:?}");
    let authfile = common::ipa_authfile(&c[0]);
    assert_eq!(
        c[0],
        vec![
            "pull".to_string(),
            format!("--authfile={authfile}"),
            "--retry-delay=5s".into(),
            "foo.tld/org/img:1".into()
        ]
    );
    let auth: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("podman.log.auth")).unwrap())
            .unwrap();
    assert_eq!(auth, json!({"auths": {"foo.tld": {"auth": "user:pass"}}}));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("podman.log.authmode"))
            .unwrap()
            .trim(),
        "600"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("podman.log.authatrun"))
            .unwrap()
            .trim(),
        "gone",
        "the secret must be gone before the install runs"
    );
    assert!(!Path::new(&authfile).exists() && !Path::new(&authfile).parent().unwrap().exists());
    let run = c[1].join(" ");
    let keys = c[1]
        .iter()
        .find_map(|a| a.strip_prefix("--root-ssh-authorized-keys="))
        .expect("keys file")
        .to_string();
    assert_eq!(
        run,
        format!("--log-level=debug run --rm --privileged --pid=host --pull=never -v /var/lib/containers:/var/lib/containers -v /dev:/dev -v /tmp:/tmp foo.tld/org/img:1 bootc install to-disk --wipe --skip-fetch-check --root-size=1139M --root-ssh-authorized-keys={keys} --disable-selinux {}", disk.display())
    );
    assert!(
        !run.contains("container-auth") && !run.contains("authfile"),
        "the install container must not see the pull secret"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("containers.conf.d/01-ipa.conf")).unwrap(),
        "[engine]\nno_pivot_root = true\n"
    );
}

#[test]
fn bootc_failures_are_ipas_errors_and_the_secret_still_goes() {
    let dir = tempfile::tempdir().unwrap();
    let (agent, _, log) = start(dir.path(), &[("RIVET_PODMAN_PULL_RC", "125")]);
    let v = post(agent.port, &step(Some("dXNlcjpwYXNz")));
    assert_eq!(v["command_status"], "FAILED");
    assert_eq!(v["command_error"]["type"], "ImageDownloadError");
    assert!(v["command_error"]["details"].as_str().unwrap().starts_with("Download of image foo.tld/org/img:1 failed: Failed to pull container image: Error: initializing source"), "{v}");
    let authfile = calls(&log)[0][1]
        .trim_start_matches("--authfile=")
        .to_string();
    assert!(
        !Path::new(&authfile).exists(),
        "auth file left behind after a failed pull"
    );

    let dir = tempfile::tempdir().unwrap();
    let (agent, _, _) = start(
        dir.path(),
        &[
            ("RIVET_PODMAN_RUN_RC", "127"),
            (
                "RIVET_PODMAN_RUN_STDERR",
                "Error: crun: executable file `bootc` not found in $PATH",
            ),
        ],
    );
    let v = post(agent.port, &step(None));
    assert_eq!(v["command_error"]["type"], "ImageDownloadError");
    assert_eq!(v["command_error"]["details"], "Download of image oci://foo.tld/org/img:1 failed: Container does not contain the required bootc binary and thus cannot be deployed.");

    let dir = tempfile::tempdir().unwrap();
    let (agent, disk, log) = start(
        dir.path(),
        &[
            ("RIVET_PODMAN_RUN_RC", "1"),
            ("RIVET_PODMAN_RUN_STDERR", "boom"),
        ],
    );
    let v = post(agent.port, &step(None));
    assert_eq!(v["command_error"]["type"], "ImageWriteError");
    assert_eq!(
        v["command_error"]["details"],
        format!(
            "Writing image to device {} failed with exit code 1. stdout: . stderr: boom",
            disk.display()
        )
    );
    assert_eq!(
        calls(&log)[0],
        vec!["pull", "--retry-delay=5s", "foo.tld/org/img:1"]
    );
}

/// podman 4.3 (Debian 12) has no `pull --retry-delay`: rivet drops the flag and re-runs a pull
/// that failed for a reason that may pass, 5 s later (docs/bootc.md).
#[test]
fn an_older_podman_gets_no_retry_delay_and_rivet_retries() {
    let dir = tempfile::tempdir().unwrap();
    let (agent, _, log) = start(
        dir.path(),
        &[("RIVET_PODMAN_OLD", "1"), ("RIVET_PODMAN_PULL_FAILS", "1")],
    );
    let t = std::time::Instant::now();
    let v = post(agent.port, &step(None));
    assert_eq!(v["command_status"], "SUCCEEDED", "{v}");
    assert!(t.elapsed() >= std::time::Duration::from_secs(5));
    let c = calls(&log);
    let pull = vec!["pull", "foo.tld/org/img:1"];
    assert_eq!(c[0], pull);
    assert_eq!(c[1], pull);
    assert_eq!(c[2][1], "run");
}
