//! `execute_bootc_install` with the REAL podman (Debian's 4.3, runc) and a REAL registry
//! (`docker-registry`, the OCI distribution registry) on 127.0.0.1 with htpasswd basic auth.
//! What is still a stand-in: `bootc` itself (not packaged in Debian 12): a shell script in
//! the test image that records its argv, and whether rivet's pull secret can still be seen from
//! inside the container (through `/proc/<agent pid>/root`, the LP 2155826 path), onto the
//! target loop device and writes a GPT there. A recording wrapper (tests/stubs/real-podman)
//! sits in front of the real podman only to log its argv.
//!
//! Podman is set up for the sandbox through its own files (CONTAINERS_CONF: runc, explicit
//! ulimits, host network; CONTAINERS_REGISTRIES_CONF: the loopback registry without TLS;
//! CONTAINERS_STORAGE_CONF: per-test run root), never through rivet's argv. The agent runs in a
//! private mount namespace whose /dev holds only the test's loop device (so the privileged
//! `-v /dev:/dev` container sees that device and nothing else) and whose /var/lib/containers
//! (IPA's bind-mounted store) is a per-test directory.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use common::{free_port, loop_devices_available, sh_env, AgentProc, LoopDev};
use serde_json::{json, Value};

const T: &str = "bootc-real-token-0123456789abcdef0123";
const DISK: u64 = 1 << 30;
/// Where the stand-in bootc writes its record (partition 2 of the GPT it lays down).
const MARK_SECTOR: u64 = 4096;

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// The pull secret as Ironic sends it (ironic/drivers/modules/agent.py, AgentBootcDeploy):
/// the node's `image_pull_secret` (here a registry `auth` value, base64 of user:password) is
/// taken as the password and base64-encoded once more.
fn ironic_secret(user: &str, password: &str) -> String {
    b64(&b64(&format!("{user}:{password}")))
}

/// The test's own podman (building, pushing, the anonymous pull check), in a private mount
/// namespace so that no mount of its store can outlive it on the host.
fn podman(args: &[&str], env: &[(String, String)]) -> (bool, String) {
    let mut a = vec!["--mount", "--propagation", "private", "--", "podman"];
    a.extend(args);
    sh_env("unshare", &a, env)
}

fn which(tool: &str) -> Option<String> {
    let (ok, out) = sh_env("sh", &["-c", &format!("command -v {tool}")], &[]);
    ok.then(|| out.trim().to_string())
}

/// True when this machine can run the real test; else says why (a failure in CI).
fn available(test: &str) -> bool {
    if !loop_devices_available(test) {
        return false;
    }
    let tools = ["podman", "runc", "docker-registry", "htpasswd", "sgdisk"];
    let missing: Vec<&str> = tools.into_iter().filter(|t| which(t).is_none()).collect();
    // The test image's rootfs is a static busybox (Debian's busybox-static), nothing else.
    let busybox = sh_env("ldd", &["/bin/busybox"], &[])
        .1
        .contains("not a dynamic executable");
    if missing.is_empty() && busybox {
        return true;
    }
    let why = format!(
        "missing {missing:?} (busybox-static present: {busybox}); scripts/test.sh installs them"
    );
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: {why}");
    }
    eprintln!("SKIPPED {test}: {why}");
    false
}

/// A docker-registry on 127.0.0.1 with htpasswd auth and storage in `dir`; killed on drop.
struct Registry {
    child: Child,
    port: u16,
}

impl Registry {
    fn start(dir: &Path, user: &str, password: &str) -> Registry {
        let port = free_port();
        let (ok, pw) = sh_env("htpasswd", &["-Bbn", user, password], &[]);
        assert!(ok, "htpasswd: {pw}");
        std::fs::write(dir.join("htpasswd"), pw.trim()).unwrap();
        std::fs::create_dir_all(dir.join("registry")).unwrap();
        let yml = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: 127.0.0.1:{port}\nauth:\n  htpasswd:\n    realm: rivet-test\n    path: {}\n",
            dir.join("registry").display(),
            dir.join("htpasswd").display()
        );
        std::fs::write(dir.join("registry.yml"), yml).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.join("registry.yml"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("registry.log")).unwrap())
            .spawn()
            .unwrap();
        let r = Registry { child, port };
        let until = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < until, "docker-registry did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        r
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Podman's own configuration for this sandbox, in `dir`; the environment that selects it.
/// `graphroot` is the store path (IPA's /var/lib/containers/storage inside the agent's
/// namespace, a plain directory for the test's own podman).
fn podman_env(dir: &Path, name: &str, port: u16, graphroot: &str) -> Vec<(String, String)> {
    let d = dir.join(name);
    std::fs::create_dir_all(d.join("run")).unwrap();
    std::fs::create_dir_all(d.join("tmp")).unwrap();
    let conf = format!(
        "[containers]\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=1000:1000\"]\nnetns = \"host\"\n\
         [engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n\
         events_logfile_path = \"{0}/run/events.log\"\ntmp_dir = \"{0}/run/libpod\"\n",
        d.display()
    );
    let registries = format!(
        "unqualified-search-registries = []\n[[registry]]\nlocation = \"127.0.0.1:{port}\"\ninsecure = true\n"
    );
    let storage = format!(
        "[storage]\ndriver = \"overlay\"\ngraphroot = \"{graphroot}\"\nrunroot = \"{}/run/storage\"\n",
        d.display()
    );
    let files = [
        ("CONTAINERS_CONF", "containers.conf", conf),
        ("CONTAINERS_REGISTRIES_CONF", "registries.conf", registries),
        ("CONTAINERS_STORAGE_CONF", "storage.conf", storage),
    ];
    let mut env: Vec<(String, String)> = files
        .into_iter()
        .map(|(var, file, text)| {
            std::fs::write(d.join(file), text).unwrap();
            (var.to_string(), d.join(file).display().to_string())
        })
        .collect();
    // No stored login of this machine may help a pull: an empty auth file of the test's own.
    std::fs::write(d.join("no-auth.json"), "{\"auths\": {}}").unwrap();
    env.push((
        "REGISTRY_AUTH_FILE".into(),
        d.join("no-auth.json").display().to_string(),
    ));
    env.push(("TMPDIR".into(), d.join("tmp").display().to_string()));
    env
}

/// What the test image's `bootc` does: lay down a GPT (made with sgdisk for this disk size),
/// then write a record of its argv and of what it could see of the pull secret.
fn bootc_script(agent_pid: u32, agent_tmp: &Path, fail: bool) -> String {
    if fail {
        return "#!/bin/sh\necho 'bootc: boom' >&2\nexit 1\n".into();
    }
    let tail = DISK / 512 - 33;
    format!(
        "#!/bin/sh\nfor dev in \"$@\"; do :; done\n\
         dd if=/gpt-head.bin of=\"$dev\" bs=512 conv=notrunc 2>/dev/null || exit 3\n\
         dd if=/gpt-tail.bin of=\"$dev\" bs=512 seek={tail} conv=notrunc 2>/dev/null || exit 3\n\
         r=/proc/{agent_pid}/root{tmp}\n\
         if ls \"$r\" >/dev/null 2>&1; then v=readable; else v=unreadable; fi\n\
         if ls \"$r\" 2>/dev/null | grep -q ipa-container-auth; then s=present; else s=gone; fi\n\
         {{ echo RIVET-BOOTC-MARKER; echo \"proc:$v\"; echo \"secret:$s\"; for a in \"$@\"; do echo \"arg:$a\"; done; echo END; }} >/rec\n\
         dd if=/rec of=\"$dev\" bs=512 seek={MARK_SECTOR} conv=notrunc 2>/dev/null || exit 3\n\
         sync\n",
        tmp = agent_tmp.display()
    )
}

/// Builds `tag` with `podman import` from a busybox rootfs holding `bootc`, pushes it with
/// credentials (an anonymous push is refused), and removes it from the build store.
fn build_and_push(dir: &Path, env: &[(String, String)], reference: &str, bootc: &str) {
    let root = dir.join(format!("rootfs-{}", reference.rsplit(':').next().unwrap()));
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("usr/bin")).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for t in ["sh", "dd", "ls", "grep", "echo", "sync", "cat"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(t)).unwrap();
    }
    std::fs::write(root.join("usr/bin/bootc"), bootc).unwrap();
    let sparse = dir.join("gpt-model.img");
    std::fs::File::create(&sparse)
        .unwrap()
        .set_len(DISK)
        .unwrap();
    let (ok, out) = sh_env(
        "sgdisk",
        &[
            "-o",
            "-n",
            "1:2048:+1M",
            "-t",
            "1:ef00",
            "-n",
            "2:4096:+4M",
            sparse.to_str().unwrap(),
        ],
        &[],
    );
    assert!(ok, "sgdisk: {out}");
    let model = std::fs::read(&sparse).unwrap();
    std::fs::write(root.join("gpt-head.bin"), &model[..34 * 512]).unwrap();
    std::fs::write(root.join("gpt-tail.bin"), &model[model.len() - 33 * 512..]).unwrap();
    let tar = dir.join("rootfs.tar");
    let (ok, out) = sh_env(
        "chmod",
        &["755", root.join("usr/bin/bootc").to_str().unwrap()],
        &[],
    );
    assert!(ok, "{out}");
    let (ok, out) = sh_env(
        "tar",
        &[
            "-C",
            root.to_str().unwrap(),
            "-cf",
            tar.to_str().unwrap(),
            ".",
        ],
        &[],
    );
    assert!(ok, "tar: {out}");
    let (ok, out) = podman(&["import", tar.to_str().unwrap(), reference], env);
    assert!(ok, "podman import: {out}");
    let (ok, out) = podman(&["push", reference], env);
    assert!(
        !ok && out.contains("authentication required"),
        "anonymous push: {out}"
    );
    let (ok, out) = podman(&["push", "--creds", "tuser:tpass", reference], env);
    assert!(ok, "podman push: {out}");
    let (ok, out) = podman(&["rmi", reference], env);
    assert!(ok, "podman rmi: {out}");
}

/// Everything one test needs; dropped in field order (agent, device, registry, files).
struct Setup {
    agent: AgentProc,
    dev: LoopDev,
    registry: Option<Registry>,
    /// The recording wrapper's log of rivet's podman calls.
    log: PathBuf,
    /// The image reference without scheme (`127.0.0.1:PORT/rivet/bootc:1`).
    reference: String,
    dir: tempfile::TempDir,
}

/// Registry, loop device, agent (in its private namespace), then the images `:1` (the
/// recording bootc) and `:fail` (a bootc that fails), pushed with credentials.
fn setup(extra_agent_args: &[&str]) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let registry = Registry::start(d, "tuser", "tpass");
    let port = registry.port;
    let dev = LoopDev::sparse(d, "disk", DISK, &[]);
    let (agent, log, agent_tmp) = start_agent(d, &dev.dev, port, extra_agent_args);
    let build = podman_env(
        d,
        "build",
        port,
        &d.join("build-store").display().to_string(),
    );
    let reference = format!("127.0.0.1:{port}/rivet/bootc:1");
    let pid = agent.pid();
    build_and_push(d, &build, &reference, &bootc_script(pid, &agent_tmp, false));
    let failing = format!("127.0.0.1:{port}/rivet/bootc:fail");
    build_and_push(d, &build, &failing, &bootc_script(pid, &agent_tmp, true));
    // The registry refuses an anonymous pull, and takes the credentials.
    let (ok, out) = podman(&["pull", &reference], &build);
    assert!(
        !ok && out.contains("unauthorized: authentication required"),
        "{out}"
    );
    let (ok, out) = podman(&["pull", "--creds", "tuser:tpass", &reference], &build);
    assert!(ok, "{out}");
    Setup {
        agent,
        dev,
        registry: Some(registry),
        log,
        reference,
        dir,
    }
}

/// `rivet serve` in a private mount namespace whose /dev holds only `dev` (plus null, zero,
/// urandom and a /dev/shm for podman's locks) and whose /var/lib/containers is a per-test
/// directory ([`AgentProc::start_private_setup`]). Returns the agent, the podman log, its TMPDIR.
fn start_agent(d: &Path, dev: &Path, port: u16, extra: &[&str]) -> (AgentProc, PathBuf, PathBuf) {
    // The mount point of the bind below (podman's usual store path; left empty on the host).
    std::fs::create_dir_all("/var/lib/containers").unwrap();
    let store = d.join("agent-store");
    std::fs::create_dir_all(&store).unwrap();
    let mut env = podman_env(d, "agent", port, "/var/lib/containers/storage");
    let tmp = PathBuf::from(&env.iter().find(|(k, _)| k == "TMPDIR").unwrap().1);
    let log = d.join("podman.log");
    let stubs = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/stubs/real-podman");
    env.push((
        "PATH".into(),
        format!("{}:{}", stubs.display(), std::env::var("PATH").unwrap()),
    ));
    env.push(("RIVET_REAL_PODMAN".into(), which("podman").unwrap()));
    env.push(("RIVET_PODMAN_LOG".into(), log.display().to_string()));
    // podman needs a /dev/shm for its locks; its store is the per-test directory.
    let setup = format!(
        "mkdir /dev/shm\nmount -t tmpfs -o size=16m rivet-test-shm /dev/shm\n\
         mount --bind {} /var/lib/containers\n",
        store.display()
    );
    let conf = d.join("containers.conf.d");
    let devs = dev.display().to_string();
    let mut args = vec!["--agent-token", T, "--root-device", &devs];
    let conf_s = conf.display().to_string();
    args.extend(["--containers-conf-dir", &conf_s]);
    args.extend(extra);
    let agent = AgentProc::start_private_setup(d, &[dev], &[], &setup, &args, &env);
    (agent, log, tmp)
}

fn step(source: &str, secret: Option<&str>, configdrive: Option<&str>) -> Value {
    json!({"name": "deploy.execute_deploy_step", "params": {
        "step": {"interface": "deploy", "step": "execute_bootc_install",
                 "args": {"image_source": source, "configdrive": configdrive, "oci_pull_secret": secret}},
        "node": {"uuid": "n", "instance_info": {}},
        "ports": [], "deploy_version": {"generic_hardware_manager": "1.2"}}})
}

/// rivet's podman calls, without its one-time `pull --help` probe (checked on its own).
fn calls(log: &Path) -> Vec<Vec<String>> {
    all_calls(log)
        .into_iter()
        .filter(|c| c != &["pull", "--help"])
        .collect()
}

fn all_calls(log: &Path) -> Vec<Vec<String>> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The stand-in bootc's record on the device.
fn record(dev: &Path) -> Vec<String> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; 64 * 1024];
    std::fs::File::open(dev)
        .unwrap()
        .read_exact_at(&mut buf, MARK_SECTOR * 512)
        .unwrap();
    let text = String::from_utf8_lossy(&buf).to_string();
    let text = text.split("END\n").next().unwrap().to_string();
    text.lines().map(str::to_owned).collect()
}

fn configdrive() -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/configdrive.b64"),
    )
    .unwrap()
}

/// (start, size) in sectors of each partition on `dev`, from `sfdisk -J`.
fn partitions(dev: &Path) -> Vec<(u64, u64)> {
    let (ok, out) = sh_env("sfdisk", &["-J", dev.to_str().unwrap()], &[]);
    assert!(ok, "sfdisk -J: {out}");
    let v: Value = serde_json::from_str(&out).unwrap();
    v["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["start"].as_u64().unwrap(), p["size"].as_u64().unwrap()))
        .collect()
}

#[test]
fn real_podman_pulls_with_the_secret_installs_and_adds_the_config_drive() {
    if !available("bootc_real_install") {
        return;
    }
    let Some(py) = common::ironic_python("bootc_real_install") else {
        return;
    };
    let s = setup(&[]);
    let source = format!("oci://{}", s.reference);
    let secret = ironic_secret("tuser", "tpass");
    // Sent as the conductor sends it: Ironic's AgentClient.execute_deploy_step with the step
    // AgentBootcDeploy builds, polled until it is no longer RUNNING.
    let args =
        step(&source, Some(&secret), Some(&configdrive()))["params"]["step"]["args"].to_string();
    let (code, out, diag) = common::drive_steps(
        &py,
        &s.agent,
        T,
        &[
            "--scenario",
            "deploy",
            "--step",
            "execute_bootc_install",
            "--step-args",
            &args,
            "--timeout",
            "300",
        ],
    );
    assert_eq!(code, 0, "{diag}");
    let listed = out["steps"].as_array().unwrap();
    assert!(
        listed
            .iter()
            .any(|st| st["step"] == "execute_bootc_install"),
        "get_deploy_steps lists execute_bootc_install: {listed:?}"
    );
    let v = &out["final"];
    assert_eq!(
        v["command_status"],
        "SUCCEEDED",
        "{v}\n{}",
        s.agent.log_text()
    );
    let dev = s.dev.dev.display().to_string();
    assert_eq!(
        v["command_result"]["deploy_result"]["result"],
        format!("execute_bootc_install: Container image ({source}) written to device {dev}")
    );
    // rivet asked podman once whether it knows --retry-delay; podman 4.3 does not, so the
    // pull is IPA's argv without that flag.
    assert_eq!(all_calls(&s.log)[0], ["pull", "--help"]);
    let c = calls(&s.log);
    assert_eq!(c.len(), 2, "{c:?}");
    let authfile = common::ipa_authfile(&c[0]);
    assert_eq!(
        c[0],
        [
            "pull".to_string(),
            format!("--authfile={authfile}"),
            s.reference.clone()
        ]
    );
    assert!(!Path::new(&authfile).exists());
    assert_eq!(
        c[1].join(" "),
        format!("--log-level=debug run --rm --privileged --pid=host --pull=never -v /var/lib/containers:/var/lib/containers -v /dev:/dev {} bootc install to-disk --wipe --skip-fetch-check --root-size=256M --disable-selinux {dev}", s.reference)
    );
    let at_run = std::fs::read_to_string(s.dir.path().join("podman.log.authatrun")).unwrap();
    assert_eq!(
        at_run.trim(),
        "gone",
        "the secret must be gone before podman run"
    );
    // What the stand-in bootc saw and did, read back from the device.
    let rec = record(&s.dev.dev);
    let mut want: Vec<String> = ["RIVET-BOOTC-MARKER", "proc:readable", "secret:gone"]
        .map(String::from)
        .to_vec();
    want.extend(
        c[1][c[1].iter().position(|a| a == "bootc").unwrap() + 1..]
            .iter()
            .map(|a| format!("arg:{a}")),
    );
    assert_eq!(rec, want, "record on the device");
    // The config drive lands after bootc's partitions, which it leaves alone.
    let parts = partitions(&s.dev.dev);
    assert_eq!(parts.len(), 3, "{parts:?}");
    assert_eq!(parts[1], (MARK_SECTOR, 8192));
    let (start, size) = parts[2];
    assert!(
        start >= MARK_SECTOR + 8192 && start + size <= DISK / 512,
        "{parts:?}"
    );
    let p = LoopDev::over_range(&s.dev.dev, start * 512, size * 512);
    let (_, b) = sh_env(
        "blkid",
        &["-p", "-o", "export", p.dev.to_str().unwrap()],
        &[],
    );
    assert!(
        b.contains("TYPE=iso9660") && b.contains("LABEL=config-2"),
        "{b}"
    );
    drop(p);
    assert_eq!(
        record(&s.dev.dev),
        want,
        "the config drive must not touch bootc's data"
    );
}

fn assert_error(v: &Value, kind: &str, starts: &str, contains: &str) {
    assert_eq!(v["command_status"], "FAILED", "{v}");
    assert_eq!(v["command_error"]["type"], kind, "{v}");
    let d = v["command_error"]["details"].as_str().unwrap();
    assert!(d.starts_with(starts) && d.contains(contains), "{d}");
}

#[test]
fn real_podman_failures_are_ipas_errors() {
    if !available("bootc_real_failures") {
        return;
    }
    let mut s = setup(&[]);
    let port = s.registry.as_ref().unwrap().port;
    let post = |source: &str, secret: Option<&str>| {
        common::post_command(
            s.agent.port,
            T,
            &step(&format!("oci://{source}"), secret, None),
        )
    };
    let pull_failed =
        |r: &str| format!("Download of image {r} failed: Failed to pull container image: ");
    let wrong = ironic_secret("tuser", "wrong");
    let v = post(&s.reference, Some(&wrong));
    assert_error(
        &v,
        "ImageDownloadError",
        &pull_failed(&s.reference),
        "unauthorized: authentication required",
    );
    let v = post(&s.reference, None);
    assert_error(
        &v,
        "ImageDownloadError",
        &pull_failed(&s.reference),
        "unauthorized: authentication required",
    );
    let good = ironic_secret("tuser", "tpass");
    let missing = format!("127.0.0.1:{port}/rivet/nothere:1");
    let v = post(&missing, Some(&good));
    assert_error(
        &v,
        "ImageDownloadError",
        &pull_failed(&missing),
        "manifest unknown",
    );
    // Refusals are not retried: one pull each so far.
    assert_eq!(calls(&s.log).len(), 3, "{:?}", calls(&s.log));

    let failing = format!("127.0.0.1:{port}/rivet/bootc:fail");
    let v = post(&failing, Some(&good));
    let dev = s.dev.dev.display();
    assert_error(
        &v,
        "ImageWriteError",
        &format!("Writing image to device {dev} failed with exit code 1. stdout: "),
        "bootc: boom",
    );

    drop(s.registry.take());
    let before = calls(&s.log).len();
    let t = Instant::now();
    let v = post(&s.reference, Some(&good));
    assert_error(
        &v,
        "ImageDownloadError",
        &pull_failed(&s.reference),
        "connection refused",
    );
    // podman 4.3 retries inside each run; rivet re-runs it twice, 5 s apart.
    assert!(t.elapsed() >= Duration::from_secs(10), "{:?}", t.elapsed());
    assert_eq!(calls(&s.log).len() - before, 3, "{:?}", calls(&s.log));
}

#[test]
fn real_bootc_deploys_disabled_by_configuration() {
    if !available("bootc_real_disabled") {
        return;
    }
    let s = setup(&["--disable-bootc-deploy"]);
    let source = format!("oci://{}", s.reference);
    let v = common::post_command(
        s.agent.port,
        T,
        &step(&source, Some(&ironic_secret("tuser", "tpass")), None),
    );
    assert_error(
        &v,
        "CommandExecutionError",
        "The bootc deploy interface is administratively disable. Deployment cannot proceed.",
        "",
    );
    assert!(calls(&s.log).is_empty(), "podman must not run");
}
