//! Power backends for `run_image` / `power_off` (docs/agent-api.md#standby).
//!
//! `log` only records what it would do: it is the default of `rivet serve` and the one every
//! test uses. `system` really reboots or powers off (`reboot`/`poweroff`, then the sysrq
//! fallback) and must be chosen by name; it also refuses to act while `RIVET_FORBID_POWER` is
//! set in the environment, which the test harness sets, so no test can pick it by accident.

use std::io::Write;
use std::path::PathBuf;
use std::process::Command;

use crate::config::PowerBackendKind;
use crate::errors::AgentError;

/// What to do to the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerAction {
    /// `standby.run_image`.
    Reboot,
    /// `standby.power_off`.
    PowerOff,
}

impl PowerAction {
    /// The command IPA runs for it.
    pub fn command(self) -> &'static str {
        match self {
            PowerAction::Reboot => "reboot",
            PowerAction::PowerOff => "poweroff",
        }
    }

    fn sysrq(self) -> &'static str {
        match self {
            PowerAction::Reboot => "b",
            PowerAction::PowerOff => "o",
        }
    }
}

/// A way to reboot or power off.
pub trait PowerBackend: Send + Sync {
    /// Does it (or records it).
    fn act(&self, action: PowerAction) -> Result<(), AgentError>;
    /// The backend's name (`log`, `system`).
    fn name(&self) -> &'static str;
}

/// Records actions in the log (and in a file, when given). Never touches the machine.
pub(crate) struct LogBackend {
    file: Option<PathBuf>,
}

impl PowerBackend for LogBackend {
    fn act(&self, action: PowerAction) -> Result<(), AgentError> {
        tracing::warn!("power backend 'log': would run `{}` now", action.command());
        if let Some(path) = &self.file {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .and_then(|mut f| writeln!(f, "{}", action.command()).map(|_| f))
                .map_err(|e| {
                    AgentError::SystemReboot(format!("cannot record to {}: {e}", path.display()))
                })?;
            let _ = f.flush();
        }
        Ok(())
    }

    fn name(&self) -> &'static str {
        "log"
    }
}

/// Really reboots or powers off, as IPA does.
pub(crate) struct SystemBackend;

impl PowerBackend for SystemBackend {
    fn act(&self, action: PowerAction) -> Result<(), AgentError> {
        if std::env::var_os("RIVET_FORBID_POWER").is_some() {
            return Err(AgentError::SystemReboot(format!(
                "refusing to {}: RIVET_FORBID_POWER is set",
                action.command()
            )));
        }
        let out = Command::new(action.command()).env("LC_ALL", "C").output();
        let failed = match &out {
            Ok(o) => {
                !o.status.success()
                    || String::from_utf8_lossy(&o.stderr).contains("ignoring request")
            }
            Err(_) => true,
        };
        if !failed {
            return Ok(());
        }
        tracing::warn!("`{}` failed; falling back to sysrq", action.command());
        std::fs::write("/proc/sysrq-trigger", action.sysrq()).map_err(|e| {
            let (rc, stdout, stderr) = match &out {
                Ok(o) => (
                    o.status.code().unwrap_or(-1),
                    String::from_utf8_lossy(&o.stdout).into_owned(),
                    String::from_utf8_lossy(&o.stderr).into_owned(),
                ),
                Err(e) => (-1, String::new(), e.to_string()),
            };
            tracing::error!("sysrq fallback failed: {e}");
            AgentError::SystemReboot(format!(
                "Reboot script failed with exit code {rc}. stdout: {stdout}. stderr: {stderr}."
            ))
        })
    }

    fn name(&self) -> &'static str {
        "system"
    }
}

/// The backend of that kind (the name was checked when the settings were parsed).
pub(crate) fn backend(kind: PowerBackendKind, log_file: Option<PathBuf>) -> Box<dyn PowerBackend> {
    match kind {
        PowerBackendKind::Log => Box::new(LogBackend { file: log_file }),
        PowerBackendKind::System => Box::new(SystemBackend),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_backend_records_and_system_backend_is_fenced() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("power.log");
        let b = backend(PowerBackendKind::Log, Some(f.clone()));
        b.act(PowerAction::PowerOff).unwrap();
        b.act(PowerAction::Reboot).unwrap();
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "poweroff\nreboot\n");
        // SAFETY of the test itself: with the fence set the system backend refuses.
        std::env::set_var("RIVET_FORBID_POWER", "1");
        let e = backend(PowerBackendKind::System, None)
            .act(PowerAction::PowerOff)
            .unwrap_err();
        assert_eq!(e.type_name(), "SystemRebootError");
        assert!(e.details().contains("RIVET_FORBID_POWER"));
    }
}
