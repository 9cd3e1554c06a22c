//! The `system` and `rescue` extensions: the commands that end the agent's service.
//!
//! - `system.lockdown`: the API stops, heartbeats stop, then every network interface goes down
//!   (through the same guarded backend as power: `log` only records it) and the agent idles
//!   forever, so nothing restarts it (IPA's behaviour for nodes that must not power off).
//! - `rescue.finalize_rescue`: the rescue password is written where the rescue ramdisk's
//!   login reads it, the rescued marker is made, and the agent stops serving and exits.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;

use serde_json::Value;

use super::Agent;
use crate::errors::AgentError;

/// Why the agent stops serving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// `system.lockdown`: interfaces go down afterwards.
    Lockdown,
    /// `rescue.finalize_rescue`: the agent exits, leaving the network up for the rescue user.
    Rescued,
}

/// `system.lockdown`.
pub(crate) fn lockdown(agent: &Agent) -> Result<Value, AgentError> {
    tracing::warn!("lockdown requested: the API stops, then the network interfaces go down");
    agent.request_stop(Stop::Lockdown);
    Ok(Value::Null)
}

/// `rescue.finalize_rescue`.
pub(crate) fn finalize_rescue(
    agent: &Agent,
    password: &str,
    hashed: bool,
) -> Result<Value, AgentError> {
    let s = agent.settings();
    let hash = if hashed {
        password.to_string()
    } else {
        let params = sha_crypt::Sha256Params::new(sha_crypt::ROUNDS_DEFAULT).map_err(|e| {
            AgentError::CommandExecution(format!("cannot hash the rescue password: {e:?}"))
        })?;
        sha_crypt::sha256_simple(password, &params).map_err(|e| {
            AgentError::CommandExecution(format!("cannot hash the rescue password: {e:?}"))
        })?
    };
    let file = &s.rescue_password_file;
    let written = file
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| {
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(file)
        })
        .and_then(|mut f| f.write_all(hash.as_bytes()));
    if let Err(e) = written {
        return Err(AgentError::CommandExecution(format!(
            "Rescue Operation failed when writing the hashed rescue password to the password \
             file. Error {e}"
        )));
    }
    if let Err(e) = std::fs::write(&s.rescue_marker, "") {
        tracing::warn!("Failed to create rescue state file marker: {e}");
    }
    agent.request_stop(Stop::Rescued);
    Ok(Value::Null)
}
