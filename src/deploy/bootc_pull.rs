//! `podman pull` for `execute_bootc_install` (docs/bootc.md), on any podman.
//!
//! IPA runs `podman pull [--authfile=F] --retry-delay=5s REF`: podman 5 then retries transient
//! failures itself, 5 s apart. Older podman (4.3, Debian 12's) refuses the flag ("unknown flag")
//! and every bootc deploy would fail at the pull. So rivet asks `podman pull --help` once whether
//! the flag exists; when it does the argv is IPA's, when it does not the flag is dropped and
//! rivet re-runs a failed pull itself (podman 4.3 still retries inside each run, 1 s apart),
//! a bounded number of times, 5 s apart, and only for failures that can pass (not a refused
//! login or a missing image).

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// IPA's delay between pull retries.
pub(crate) const RETRY_DELAY: Duration = Duration::from_secs(5);
/// Runs of `podman pull` when rivet does the retrying (the first and two more).
pub(crate) const ATTEMPTS: u32 = 3;
/// No new attempt starts after this long.
pub(crate) const BUDGET: Duration = Duration::from_secs(600);

/// Whether this podman knows `podman pull --retry-delay`; asked once per process.
pub(crate) fn knows_retry_delay() -> bool {
    static KNOWS: OnceLock<bool> = OnceLock::new();
    *KNOWS.get_or_init(|| {
        let known = Command::new("podman")
            .args(["pull", "--help"])
            .env("LC_ALL", "C")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains("--retry-delay"))
            // If podman cannot even say, keep IPA's argv: the pull reports the real error.
            .unwrap_or(true);
        tracing::info!("podman pull --retry-delay supported: {known}");
        known
    })
}

/// The argv (after `podman`) of one pull: IPA's, without `--retry-delay` for an older podman.
pub(crate) fn pull_args(
    authfile: Option<&Path>,
    reference: &str,
    retry_delay: bool,
) -> Vec<String> {
    let mut a = vec!["pull".to_string()];
    if let Some(f) = authfile {
        a.push(format!("--authfile={}", f.display()));
    }
    if retry_delay {
        a.push(format!("--retry-delay={}s", RETRY_DELAY.as_secs()));
    }
    a.push(reference.to_string());
    a
}

/// Failures another run cannot fix: the registry refused the credentials, the image or
/// repository does not exist, or podman refused its arguments.
pub(crate) fn is_permanent(stderr: &str) -> bool {
    const PERMANENT: [&str; 8] = [
        "unauthorized",
        "authentication required",
        "denied",
        "manifest unknown",
        "name unknown",
        "not found",
        "invalid reference format",
        "unknown flag",
    ];
    let s = stderr.to_ascii_lowercase();
    PERMANENT.iter().any(|p| s.contains(p))
}

/// Why a `podman pull` failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PullError {
    /// podman ran and failed: its trimmed stderr, which IPA puts in its error as it is.
    #[error("{stderr}")]
    Failed {
        /// What podman printed.
        stderr: String,
    },
    /// podman could not be started.
    #[error("cannot run podman: {0}")]
    Spawn(#[source] std::io::Error),
}

/// Calls `attempt` until it succeeds, fails permanently, `attempts` runs are spent or the
/// `budget` is over, sleeping `delay` between runs. The last error on failure.
pub(crate) fn with_retries<E: std::fmt::Display>(
    attempts: u32,
    delay: Duration,
    budget: Duration,
    mut attempt: impl FnMut() -> Result<(), E>,
) -> Result<(), E> {
    let start = Instant::now();
    let mut n = 0;
    loop {
        n += 1;
        let err = match attempt() {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if n >= attempts || is_permanent(&err.to_string()) || start.elapsed() + delay > budget {
            return Err(err);
        }
        tracing::warn!(
            "podman pull failed (attempt {n} of {attempts}), retrying in {delay:?}: {err}"
        );
        std::thread::sleep(delay);
    }
}

/// One `podman pull`; its trimmed stderr (or why it could not start) on failure.
fn pull_once(args: &[String]) -> Result<(), PullError> {
    tracing::info!("running podman {}", args.join(" "));
    match Command::new("podman")
        .args(args)
        .env("LC_ALL", "C")
        .stdin(std::process::Stdio::null())
        .output()
    {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(PullError::Failed {
            stderr: String::from_utf8_lossy(&o.stderr).trim().to_string(),
        }),
        Err(e) => Err(PullError::Spawn(e)),
    }
}

/// Pulls `reference` as IPA does, retrying as described in the module doc.
pub(crate) fn pull(authfile: Option<&Path>, reference: &str) -> Result<(), PullError> {
    if knows_retry_delay() {
        // podman retries by itself; one run, exactly IPA's.
        return pull_once(&pull_args(authfile, reference, true));
    }
    let args = pull_args(authfile, reference, false);
    with_retries(ATTEMPTS, RETRY_DELAY, BUDGET, || pull_once(&args))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv_with_and_without_the_flag() {
        let f = Path::new("/tmp/a.json");
        assert_eq!(
            pull_args(Some(f), "r/i:1", true).join(" "),
            "pull --authfile=/tmp/a.json --retry-delay=5s r/i:1"
        );
        assert_eq!(pull_args(None, "r/i:1", false).join(" "), "pull r/i:1");
    }

    #[test]
    fn transient_failures_are_retried_a_bounded_number_of_times() {
        let mut n = 0;
        let r: Result<(), String> = with_retries(3, Duration::ZERO, BUDGET, || {
            n += 1;
            Err("dial tcp 127.0.0.1:1: connect: connection refused".into())
        });
        assert_eq!(n, 3);
        assert!(r.unwrap_err().contains("connection refused"));

        let mut n = 0;
        let r: Result<(), String> = with_retries(3, Duration::ZERO, BUDGET, || {
            n += 1;
            if n < 2 {
                Err("EOF".into())
            } else {
                Ok(())
            }
        });
        assert_eq!((n, r), (2, Ok(())));
    }

    #[test]
    fn permanent_failures_and_the_budget_stop_at_once() {
        let mut n = 0;
        let r: Result<(), String> = with_retries(3, Duration::ZERO, BUDGET, || {
            n += 1;
            Err("reading manifest 1 in r/i: unauthorized: authentication required".into())
        });
        assert_eq!(n, 1);
        assert!(r.is_err());
        let mut n = 0;
        let _: Result<(), String> =
            with_retries(3, Duration::from_secs(5), Duration::from_secs(1), || {
                n += 1;
                Err("i/o timeout".into())
            });
        assert_eq!(n, 1);
        assert!(is_permanent("manifest unknown: manifest unknown"));
        assert!(!is_permanent("connect: connection refused"));
    }
}
