//! ATA security erase (IPA's `_ata_erase`), by running `hdparm` (and `smartctl` for the
//! pre-check) exactly as IPA does.
//!
//! Why the tools and not SG_IO: the erase itself is one ATA command, but the states around
//! it are not: frozen drives, a password left by an interrupted erase (unlock with `NULL`,
//! then the empty string, for old hdparm versions), SAT translation through SAS HBAs and
//! USB bridges, and a command that may run for hours. hdparm is the reference
//! implementation that IPA's logic and operators' knowledge are built on, it ships in every
//! IPA ramdisk, and its `-I` output is what IPA's state machine reads. rivet reproduces that
//! state machine line for line over the tool's output.
//!
//! One difference: IPA crashes (uncaught OSError) when hdparm is not installed; rivet treats
//! a missing hdparm like a drive without the security feature set, so the overwrite runs.
//!
//! Commands go through [`CommandRunner`]. No ATA drive exists where the tests run, so they
//! use a recording fake that answers `hdparm -I` with scripted security sections.

use std::process::Command;

use super::error::EraseError;

/// What a finished command printed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CmdOutput {
    /// Exit code.
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// Why a command did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CmdError {
    /// The program is not installed.
    #[error("{0}: command not found")]
    NotFound(String),
    /// It ran and failed; IPA's `ProcessExecutionError` text.
    #[error("Unexpected error while running command.\nCommand: {cmd}\nExit code: {}\nStdout: {:?}\nStderr: {:?}", out.code, out.stdout, out.stderr)]
    Failed {
        /// The command line.
        cmd: String,
        /// What it printed.
        out: CmdOutput,
    },
}

/// Runs external programs: the real one, or a fake in tests.
pub trait CommandRunner: Sync {
    /// Runs `program args`; an exit code outside `ok_codes` is [`CmdError::Failed`].
    fn run(&self, program: &str, args: &[&str], ok_codes: &[i32]) -> Result<CmdOutput, CmdError>;
}

/// Runs programs for real, in the C locale (IPA parses English output).
pub struct SystemRunner;

impl CommandRunner for SystemRunner {
    fn run(&self, program: &str, args: &[&str], ok_codes: &[i32]) -> Result<CmdOutput, CmdError> {
        let cmd = format!("{program} {}", args.join(" "));
        let out = Command::new(program)
            .args(args)
            .env("LC_ALL", "C")
            .output()
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => CmdError::NotFound(program.to_string()),
                _ => CmdError::Failed {
                    cmd: cmd.clone(),
                    out: CmdOutput {
                        code: -1,
                        stderr: e.to_string(),
                        ..CmdOutput::default()
                    },
                },
            })?;
        let out = CmdOutput {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        if ok_codes.contains(&out.code) {
            Ok(out)
        } else {
            Err(CmdError::Failed { cmd, out })
        }
    }
}

fn erase_err(msg: String) -> EraseError {
    EraseError::BlockDeviceErase(msg)
}

/// The lines of `hdparm -I`'s "Security:" section, tabs turned into spaces (IPA's
/// `_get_ata_security_lines`). `None` when hdparm is not installed.
fn security_lines(dev: &str, run: &dyn CommandRunner) -> Result<Option<Vec<String>>, EraseError> {
    let out = match run.run("hdparm", &["-I", dev], &[0]) {
        Ok(o) => o.stdout,
        Err(CmdError::NotFound(_)) => return Ok(None),
        Err(e) => {
            return Err(erase_err(format!(
                "Failed to read the ATA security state of {dev}: {e}"
            )))
        }
    };
    let Some((_, after)) = out.split_once("\nSecurity: \n") else {
        return Ok(Some(vec![]));
    };
    Ok(Some(
        after
            .split('\n')
            .take_while(|l| l.starts_with('\t'))
            .map(|l| l.trim().replace('\t', " "))
            .collect(),
    ))
}

/// IPA's `_smartctl_security_check`: false when smartctl cannot query the drive's security
/// over ATA; true when smartctl is not installed.
fn smartctl_allows(dev: &str, run: &dyn CommandRunner) -> bool {
    match run.run("smartctl", &["-d", "ata", dev, "-g", "security"], &[0, 127]) {
        Ok(o) => !o.stdout.contains("Unavailable"),
        Err(CmdError::NotFound(_)) => true,
        Err(e) => {
            tracing::warn!(
                device = dev,
                "smartctl cannot query ATA security; no ATA secure erase"
            );
            tracing::debug!(device = dev, error = %e, "smartctl");
            false
        }
    }
}

fn has(lines: &[String], s: &str) -> bool {
    lines.iter().any(|l| l == s)
}

/// Tries to unlock a drive left locked by a failed attempt: password `NULL`, then empty.
fn attempt_unlock(
    dev: &str,
    mut lines: Vec<String>,
    run: &dyn CommandRunner,
) -> Result<Vec<String>, EraseError> {
    for password in ["NULL", ""] {
        if has(&lines, "not locked") {
            break;
        }
        if let Err(e) = run.run(
            "hdparm",
            &["--user-master", "u", "--security-unlock", password, dev],
            &[0],
        ) {
            tracing::info!(device = dev, password, error = %e, "security unlock failed");
        }
        lines = security_lines(dev, run)?.unwrap_or_default();
    }
    Ok(lines)
}

/// IPA's `_ata_erase`: Ok(false) when the drive has no usable security feature set (the
/// caller overwrites instead), Ok(true) after a successful security erase.
pub(super) fn ata_erase(dev: &str, run: &dyn CommandRunner) -> Result<bool, EraseError> {
    let Some(lines) = security_lines(dev, run)? else {
        tracing::warn!(device = dev, "hdparm is not installed; no ATA secure erase");
        return Ok(false);
    };
    // IPA asks smartctl first; the outcome is the same, and this spares a tool run.
    if !has(&lines, "supported") || !smartctl_allows(dev, run) {
        return Ok(false);
    }
    if !has(&lines, "not frozen") {
        return Err(erase_err(format!(
            "Block device {dev} is frozen and cannot be erased"
        )));
    }
    let lines = attempt_unlock(dev, lines, run)?;
    if !has(&lines, "not locked") {
        return Err(erase_err(format!(
            "Block device {dev} already has a security password set"
        )));
    }
    if has(&lines, "not enabled") {
        run.run(
            "hdparm",
            &["--user-master", "u", "--security-set-pass", "NULL", dev],
            &[0],
        )
        .map_err(|e| {
            erase_err(format!(
                "Security password set failed for device {dev}: {e}"
            ))
        })?;
    }
    let option = if has(&lines, "not supported: enhanced erase") {
        "--security-erase"
    } else {
        "--security-erase-enhanced"
    };
    tracing::info!(device = dev, option, "ATA security erase");
    if let Err(e) = run.run("hdparm", &["--user-master", "u", option, "NULL", dev], &[0]) {
        // Unlock, so that the overwrite fallback can write to the drive.
        let _ = attempt_unlock(dev, security_lines(dev, run)?.unwrap_or_default(), run);
        return Err(erase_err(format!("Erase failed for device {dev}: {e}")));
    }
    let lines = security_lines(dev, run)?.unwrap_or_default();
    if !has(&lines, "not enabled") {
        return Err(erase_err(format!(
            "An unknown error occurred erasing block device {dev}"
        )));
    }
    Ok(true)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A recording fake: `hdparm -I` answers come from a queue (the last one repeats),
    /// other commands succeed unless listed in `fail`.
    pub(crate) struct FakeRunner {
        pub identify: Mutex<Vec<String>>,
        pub smartctl: Result<CmdOutput, CmdError>,
        pub fail: Vec<&'static str>,
        pub log: Mutex<Vec<String>>,
    }

    pub(crate) fn hdparm_i(security: &[&str]) -> String {
        let mut s = String::from(
            "\n/dev/sda:\n\nATA device, with non-removable media\n\tModel Number: X\nSecurity: \n",
        );
        for l in security {
            s.push('\t');
            s.push_str(l);
            s.push('\n');
        }
        s.push_str("Logical Unit WWN Device Identifier: 5000\n");
        s
    }

    impl FakeRunner {
        pub(crate) fn new(identify: Vec<String>) -> FakeRunner {
            FakeRunner {
                identify: Mutex::new(identify),
                smartctl: Ok(CmdOutput::default()),
                fail: vec![],
                log: Mutex::new(vec![]),
            }
        }
        pub(crate) fn calls(&self) -> Vec<String> {
            self.log.lock().unwrap().clone()
        }
    }

    impl CommandRunner for FakeRunner {
        fn run(&self, program: &str, args: &[&str], _ok: &[i32]) -> Result<CmdOutput, CmdError> {
            let line = format!("{program} {}", args.join(" "));
            self.log.lock().unwrap().push(line.clone());
            if program == "smartctl" {
                return self.smartctl.clone();
            }
            if self.fail.iter().any(|f| line.contains(f)) {
                return Err(CmdError::Failed {
                    cmd: line,
                    out: CmdOutput {
                        code: 5,
                        stderr: "SG_IO: bad/missing sense data".into(),
                        ..CmdOutput::default()
                    },
                });
            }
            if args.first() == Some(&"-I") {
                let mut q = self.identify.lock().unwrap();
                let out = if q.len() > 1 {
                    q.remove(0)
                } else {
                    q[0].clone()
                };
                return Ok(CmdOutput {
                    stdout: out,
                    ..CmdOutput::default()
                });
            }
            Ok(CmdOutput::default())
        }
    }

    const READY: &[&str] = &[
        "Master password revision code = 65534",
        "\tsupported",
        "not\tenabled",
        "not\tlocked",
        "not\tfrozen",
        "not\texpired: security count",
        "\tsupported: enhanced erase",
    ];
    const DONE: &[&str] = &["\tsupported", "not\tenabled", "not\tlocked", "not\tfrozen"];

    #[test]
    fn parses_the_security_section() {
        let fake = FakeRunner::new(vec![hdparm_i(READY)]);
        let lines = security_lines("/dev/sda", &fake).unwrap().unwrap();
        assert!(
            has(&lines, "supported")
                && has(&lines, "not enabled")
                && has(&lines, "supported: enhanced erase")
        );
        assert!(!lines.iter().any(|l| l.contains("WWN")));
    }

    #[test]
    fn full_erase_sequence_as_ipa() {
        let fake = FakeRunner::new(vec![hdparm_i(READY), hdparm_i(DONE)]);
        assert_eq!(ata_erase("/dev/sda", &fake), Ok(true));
        assert_eq!(
            fake.calls(),
            vec![
                "hdparm -I /dev/sda",
                "smartctl -d ata /dev/sda -g security",
                "hdparm --user-master u --security-set-pass NULL /dev/sda",
                "hdparm --user-master u --security-erase-enhanced NULL /dev/sda",
                "hdparm -I /dev/sda",
            ]
        );
    }

    #[test]
    fn no_security_section_means_overwrite() {
        // What hdparm prints for a loop or virtio disk.
        let fake = FakeRunner::new(vec!["\n/dev/loop0:\n".into()]);
        assert_eq!(ata_erase("/dev/loop0", &fake), Ok(false));
        let mut fake = FakeRunner::new(vec![hdparm_i(READY)]);
        fake.smartctl = Ok(CmdOutput {
            stdout: "ATA Security is:  Unavailable".into(),
            ..CmdOutput::default()
        });
        assert_eq!(ata_erase("/dev/sda", &fake), Ok(false));
    }

    #[test]
    fn frozen_and_locked_drives_fail() {
        let frozen = FakeRunner::new(vec![hdparm_i(&[
            "\tsupported",
            "not\tenabled",
            "not\tlocked",
            "\tfrozen",
        ])]);
        assert_eq!(
            ata_erase("/dev/sda", &frozen).unwrap_err().details(),
            "Block device /dev/sda is frozen and cannot be erased"
        );
        let locked = hdparm_i(&["\tsupported", "\tenabled", "\tlocked", "not\tfrozen"]);
        let fake = FakeRunner::new(vec![locked]);
        assert_eq!(
            ata_erase("/dev/sda", &fake).unwrap_err().details(),
            "Block device /dev/sda already has a security password set"
        );
        let calls = fake.calls();
        assert!(
            calls.contains(&"hdparm --user-master u --security-unlock NULL /dev/sda".to_string())
        );
        assert!(calls.contains(&"hdparm --user-master u --security-unlock  /dev/sda".to_string()));
    }

    #[test]
    fn failed_erase_unlocks_and_reports() {
        let mut fake = FakeRunner::new(vec![hdparm_i(&[
            "\tsupported",
            "not\tenabled",
            "not\tlocked",
            "not\tfrozen",
            "not\tsupported: enhanced erase",
        ])]);
        fake.fail = vec!["--security-erase "];
        let e = ata_erase("/dev/sda", &fake).unwrap_err();
        assert!(
            e.details().starts_with(
                "Erase failed for device /dev/sda: Unexpected error while running command."
            ),
            "{}",
            e.details()
        );
        assert!(fake
            .calls()
            .iter()
            .any(|c| c.contains("--security-erase NULL")));
    }

    #[test]
    fn missing_hdparm_means_overwrite() {
        struct NoTools;
        impl CommandRunner for NoTools {
            fn run(&self, p: &str, _: &[&str], _: &[i32]) -> Result<CmdOutput, CmdError> {
                Err(CmdError::NotFound(p.into()))
            }
        }
        assert_eq!(ata_erase("/dev/sda", &NoTools), Ok(false));
    }
}
