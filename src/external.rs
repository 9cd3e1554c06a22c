//! Running an external tool (qemu-img, mkfs, losetup, chronyc, ...): one helper that runs it
//! with a C locale and turns a failure into a typed [`ToolFailure`], which each caller maps
//! to the IPA error its step reports (`ImageWriteError`, `DeploymentError`, ...).

use std::ffi::OsStr;
use std::process::Command;

/// A tool that could not be started or exited non-zero.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{cmd} failed with exit code {rc}. stdout: {stdout}. stderr: {stderr}")]
pub(crate) struct ToolFailure {
    /// The program.
    pub cmd: String,
    /// Its exit code; -1 when it could not be started or was killed by a signal.
    pub rc: i32,
    /// What it printed (trimmed).
    pub stdout: String,
    /// What it complained (trimmed; the reason it could not start, when rc is -1).
    pub stderr: String,
}

impl ToolFailure {
    /// IPA's `ImageWriteError` for a tool that failed on `device`.
    pub(crate) fn image_write(&self, device: &std::path::Path) -> crate::errors::AgentError {
        crate::errors::AgentError::ImageWrite(format!(
            "Writing image to device {} failed with exit code {}. stdout: {}. stderr: {}",
            device.display(),
            self.rc,
            self.stdout,
            self.stderr
        ))
    }
}

/// Runs `cmd` with `args` (stdin closed, `LC_ALL=C`) and returns its stdout.
pub(crate) fn run<S: AsRef<OsStr>>(cmd: &str, args: &[S]) -> Result<String, ToolFailure> {
    run_command(Command::new(cmd).args(args), cmd)
}

/// Runs a prepared command (extra environment, a wrapper such as prlimit); `name` is what
/// errors call it.
pub(crate) fn run_command(c: &mut Command, name: &str) -> Result<String, ToolFailure> {
    let out = c
        .env("LC_ALL", "C")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| ToolFailure {
            cmd: name.into(),
            rc: -1,
            stdout: String::new(),
            stderr: format!("cannot run {name}: {e}"),
        })?;
    let text = |b: &[u8]| String::from_utf8_lossy(b).trim().to_string();
    if out.status.success() {
        return Ok(text(&out.stdout));
    }
    Err(ToolFailure {
        cmd: name.into(),
        rc: out.status.code().unwrap_or(-1),
        stdout: text(&out.stdout),
        stderr: text(&out.stderr),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_carry_code_and_output() {
        assert_eq!(run("sh", &["-c", "echo hi"]).unwrap(), "hi");
        let e = run("sh", &["-c", "echo out; echo err >&2; exit 3"]).unwrap_err();
        assert_eq!(
            (e.rc, e.stdout.as_str(), e.stderr.as_str()),
            (3, "out", "err")
        );
        let w = e.image_write(std::path::Path::new("/dev/x"));
        assert_eq!(
            w.details(),
            "Writing image to device /dev/x failed with exit code 3. stdout: out. stderr: err"
        );
        let e = run::<&str>("/nonexistent/tool", &[]).unwrap_err();
        assert_eq!(e.rc, -1);
        assert!(e.stderr.starts_with("cannot run /nonexistent/tool"));
    }
}
