//! `system.lockdown`'s last step, for real, inside network namespaces made for the test: a veth
//! pair with 192.0.2.x addresses is up, rivet's `system` guard brings the interfaces down, and
//! `ip -j -n NS link` (not the code under test) shows them down. With `RIVET_FORBID_POWER` set,
//! the same code refuses and nothing changes. Root only.
//!
//! The real code never runs in this process: the test binary re-runs itself under
//! `ip netns exec NS` (the child test [`lockdown_child`]), and that child refuses unless it is
//! in a network namespace other than PID 1's, and in the one named by the parent.

mod common;

use std::collections::BTreeMap;
use std::process::Command;

use rivet::system::netif::{self, Selection};

/// Set (to the namespace's name) only in the child's environment.
const CHILD_VAR: &str = "RIVET_NETNS_LOCKDOWN_CHILD";
/// The parent's own network namespace (`net:[N]`), which the child must not be in.
const PARENT_NS_VAR: &str = "RIVET_NETNS_LOCKDOWN_PARENT";
/// `ipa` or `all`: which interfaces the child takes down.
const SELECTION_VAR: &str = "RIVET_NETNS_LOCKDOWN_SELECTION";

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A network namespace holding a veth pair (rv0 192.0.2.1/24, rv1 192.0.2.2/24) and lo, all
/// up; deleted (with its interfaces) on drop, also when the test fails.
struct Netns {
    name: String,
}

impl Netns {
    fn new(tag: &str) -> Netns {
        let name = format!("rivet-test-{}-{tag}", std::process::id());
        run("ip", &["netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "add", "rv0", "type", "veth", "peer", "name", "rv1"]);
        ns.ip(&["addr", "add", "192.0.2.1/24", "dev", "rv0"]);
        ns.ip(&["addr", "add", "192.0.2.2/24", "dev", "rv1"]);
        for dev in ["lo", "rv0", "rv1"] {
            ns.ip(&["link", "set", dev, "up"]);
        }
        ns
    }

    fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Interface name -> administratively up, as `ip -j link` reports it.
    fn up(&self) -> BTreeMap<String, bool> {
        let v: serde_json::Value = serde_json::from_str(&self.ip(&["-j", "link"])).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|l| {
                let flags = l["flags"].as_array().unwrap();
                let up = flags.iter().any(|f| f == "UP");
                (l["ifname"].as_str().unwrap().to_string(), up)
            })
            .collect()
    }

    /// Runs [`lockdown_child`] inside the namespace; its `LOCKDOWN ...` line.
    fn lockdown(&self, selection: &str, forbid: bool) -> String {
        let exe = std::env::current_exe().unwrap();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name])
            .arg(exe)
            .args([
                "lockdown_child",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_VAR, &self.name)
            .env(PARENT_NS_VAR, netif::current_netns().unwrap())
            .env(SELECTION_VAR, selection);
        if forbid {
            cmd.env(netif::FENCE_VAR, "1");
        } else {
            cmd.env_remove(netif::FENCE_VAR);
        }
        let out = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "child failed: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // libtest prints the test's name first, on the same line.
        stdout
            .lines()
            .find_map(|l| l.find("LOCKDOWN ").map(|at| l[at..].to_string()))
            .unwrap_or_else(|| panic!("no LOCKDOWN line in {stdout}"))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// What `Netns::up` shows right after `Netns::new`.
fn all_up() -> BTreeMap<String, bool> {
    ["lo", "rv0", "rv1"]
        .iter()
        .map(|n| (n.to_string(), true))
        .collect()
}

#[test]
fn lockdown_brings_every_interface_but_lo_down_in_a_namespace() {
    if !common::root_available("lockdown_brings_every_interface_down", "network namespaces") {
        return;
    }
    let ns = Netns::new("down");
    assert_eq!(ns.up(), all_up());
    assert_eq!(
        ns.lockdown("all", false),
        "LOCKDOWN downed=rv0,rv1 already= failed="
    );
    let after = ns.up();
    assert_eq!(
        (after["rv0"], after["rv1"], after["lo"]),
        (false, false, true)
    );
    // Again: nothing left to do.
    assert_eq!(
        ns.lockdown("all", false),
        "LOCKDOWN downed= already=rv0,rv1 failed="
    );
}

#[test]
fn lockdown_is_refused_while_the_fence_is_set() {
    if !common::root_available(
        "lockdown_is_refused_while_the_fence_is_set",
        "network namespaces",
    ) {
        return;
    }
    let ns = Netns::new("fenced");
    let line = ns.lockdown("all", true);
    assert!(line.starts_with("LOCKDOWN error="), "{line}");
    assert!(line.contains("RIVET_FORBID_POWER"), "{line}");
    assert_eq!(ns.up(), all_up());
}

#[test]
fn ipa_selection_leaves_veth_alone() {
    if !common::root_available("ipa_selection_leaves_veth_alone", "network namespaces") {
        return;
    }
    // IPA's list_interfaces() takes NICs, bonds and VLANs only; a veth is none of them.
    let ns = Netns::new("ipa");
    assert_eq!(
        ns.lockdown("ipa", false),
        "LOCKDOWN downed= already= failed="
    );
    assert_eq!(ns.up(), all_up());
}

/// Not a test on its own: does nothing unless started by [`Netns::lockdown`].
#[test]
fn lockdown_child() {
    let Ok(expected) = std::env::var(CHILD_VAR) else {
        return;
    };
    // Belt and braces: never in the machine's own namespace, only in the parent's.
    let parent = std::env::var(PARENT_NS_VAR).unwrap();
    netif::require_private_netns(&[parent]).unwrap();
    let here = run(
        "ip",
        &["netns", "identify", &std::process::id().to_string()],
    );
    assert_eq!(
        here.trim(),
        expected,
        "not in the namespace the parent made"
    );
    let selection = match std::env::var(SELECTION_VAR).as_deref() {
        Ok("ipa") => Selection::Ipa,
        _ => Selection::AllButLoopback,
    };
    let guard = netif::guard(rivet::config::PowerBackendKind::System, None);
    match netif::interfaces_down(&*guard, selection) {
        Ok(r) => {
            let failed: Vec<String> = r.failed.iter().map(|(n, e)| format!("{n}:{e}")).collect();
            println!(
                "LOCKDOWN downed={} already={} failed={}",
                r.downed.join(","),
                r.already_down.join(","),
                failed.join(",")
            );
        }
        Err(e) => println!("LOCKDOWN error={e}"),
    }
}
