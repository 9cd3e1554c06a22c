//! Brings the interfaces of the current network namespace down with rivet's lockdown code
//! (`rivet::system::netif`), to try it by hand inside a namespace made for the purpose:
//!
//! ```text
//! ip netns add demo && ip -n demo link add name va type veth peer name vb
//! ip -n demo link set va up
//! ip netns exec demo target/debug/examples/netif_down [--ipa] [--log FILE]
//! ```
//!
//! It refuses to run in the machine's own namespace, or in the one of the process that started
//! it (so it must be started straight through `ip netns exec`, not from a shell already inside).
//! `--ipa` takes IPA's selection (NICs, bonds, VLANs) instead of every interface but `lo`;
//! `--log FILE` only records what it would do. `RIVET_FORBID_POWER` makes it refuse.

use std::process::ExitCode;

use rivet::system::netif::{self, Selection};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let selection = if args.iter().any(|a| a == "--ipa") {
        Selection::Ipa
    } else {
        Selection::AllButLoopback
    };
    let log = args
        .iter()
        .position(|a| a == "--log")
        .and_then(|i| args.get(i + 1))
        .map(std::path::PathBuf::from);
    let parent = format!("/proc/{}/ns/net", std::os::unix::process::parent_id());
    let parent_ns = std::fs::read_link(&parent)
        .map(|l| l.to_string_lossy().into_owned())
        .unwrap_or_default();
    if parent_ns.is_empty() {
        eprintln!("netif_down: cannot read {parent}; refusing");
        return ExitCode::FAILURE;
    }
    if let Err(e) = netif::require_private_netns(&[parent_ns]) {
        eprintln!("netif_down: {e}");
        return ExitCode::FAILURE;
    }
    let guard = match log {
        Some(file) => netif::guard(rivet::config::PowerBackendKind::Log, Some(file)),
        None => netif::guard(rivet::config::PowerBackendKind::System, None),
    };

    match netif::interfaces_down(&*guard, selection) {
        Ok(r) => {
            println!("downed: {:?}", r.downed);
            println!("already down: {:?}", r.already_down);
            println!("failed: {:?}", r.failed);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("netif_down: {e}");
            ExitCode::FAILURE
        }
    }
}
