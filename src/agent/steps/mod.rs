//! Steps: the `deploy`, `clean` and `service` extensions share one shape (see
//! `docs/agent-api.md#steps`): `get_<phase>_steps` lists what rivet can run, and
//! `execute_<phase>_step` checks the hardware manager version, runs the step by name with
//! its `args`, and answers `{"<phase>_result": ..., "<phase>_step": <the step as received>}`.
//!
//! rivet presents itself as IPA's generic hardware manager, version 1.2, so that the
//! conductor's stored `hardware_manager_version` round-trips unchanged. As in IPA, any step
//! rivet implements can be run in any phase; the lists say which ones each phase offers.

mod clean;
mod list;

use std::sync::Arc;

use serde_json::{json, Value};

use super::{standby, Agent};
use crate::errors::AgentError;
use crate::image::fetch::Progress;

pub(crate) use list::MANAGER;

/// Name and version Ironic stores and sends back as `<phase>_version`.
pub(crate) const MANAGER_NAME: &str = "generic_hardware_manager";
/// See [`MANAGER_NAME`].
pub(crate) const MANAGER_VERSION: &str = "1.2";

/// Which extension asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// `deploy.*`.
    Deploy,
    /// `clean.*`.
    Clean,
    /// `service.*`.
    Service,
}

impl Phase {
    /// `deploy`, `clean`, `service`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Phase::Deploy => "deploy",
            Phase::Clean => "clean",
            Phase::Service => "service",
        }
    }

    /// The version parameter of `execute_<phase>_step`.
    pub(crate) fn version_param(self) -> &'static str {
        match self {
            Phase::Deploy => "deploy_version",
            Phase::Clean => "clean_version",
            Phase::Service => "service_version",
        }
    }
}

/// `get_<phase>_steps`.
pub(crate) fn get_steps(agent: &Agent, phase: Phase, node: &Value) -> Value {
    agent.cache_node(node);
    json!({
        format!("{}_steps", phase.name()): {MANAGER: list::steps(phase)},
        "hardware_manager_version": {MANAGER_NAME: MANAGER_VERSION},
    })
}

/// `execute_<phase>_step`: checks the hardware manager version, then runs the step.
pub(crate) fn execute_step(
    agent: &Arc<Agent>,
    phase: Phase,
    step: Value,
    node: &Value,
    version: &Value,
    progress: &Arc<Progress>,
) -> Result<Value, AgentError> {
    agent.cache_node(node);
    let ours = json!({MANAGER_NAME: MANAGER_VERSION});
    if !version.is_null() && *version != ours {
        return Err(AgentError::VersionMismatch(format!(
            "Current versions: {}, versions used by ironic: {}",
            py_repr(&ours),
            py_repr(version)
        )));
    }
    let Some(name) = step.get("step").and_then(Value::as_str) else {
        // IPA raises a plain ValueError here, outside the step's own error wrapping: the
        // command runner turns it into CommandExecutionError.
        let what = phase.name();
        return Err(AgentError::CommandExecution(format!(
            "Malformed {what}_step, no \"step\" key: {step}"
        )));
    };
    let args = step.get("args").cloned().unwrap_or_else(|| json!({}));
    tracing::info!(phase = phase.name(), step = name, "running step");
    let result = run(agent, phase, name, &args, node, progress)?;
    Ok(json!({
        format!("{}_result", phase.name()): result,
        format!("{}_step", phase.name()): step,
    }))
}

/// The phase's error for a failure that is not one of the typed ones (IPA's wrapping of
/// non-REST exceptions).
fn unexpected(phase: Phase, msg: String) -> AgentError {
    match phase {
        Phase::Deploy => AgentError::Deployment(msg),
        Phase::Clean => AgentError::Cleaning(msg),
        Phase::Service => AgentError::Servicing(msg),
    }
}

/// Runs one step by name.
fn run(
    agent: &Arc<Agent>,
    phase: Phase,
    name: &str,
    args: &Value,
    node: &Value,
    progress: &Arc<Progress>,
) -> Result<Value, AgentError> {
    let arg = |k: &str| args.get(k).cloned().unwrap_or(Value::Null);
    let string_arg = |k: &str| -> Result<Option<String>, AgentError> {
        match arg(k) {
            Value::Null => Ok(None),
            Value::String(s) => Ok(Some(s)),
            other => Err(unexpected(
                phase,
                format!(
                    "Unexpected exception performing {} step {name}. TypeError: '{k}' must be \
                     a string, not {other}",
                    phase.name()
                ),
            )),
        }
    };
    match name {
        "write_image" => {
            let info = arg("image_info");
            let configdrive = string_arg("configdrive")?;
            let md5 = agent.settings().md5_enabled;
            standby::validate_image_info(&info, configdrive.as_deref(), md5)?;
            let msg = standby::prepare_image(agent, info, configdrive, progress)?;
            Ok(json!({"result": format!("prepare_image: {msg}")}))
        }
        "execute_bootc_install" => {
            let instance_info = node
                .get("instance_info")
                .cloned()
                .unwrap_or_else(|| json!({}));
            let msg = standby::execute_bootc_install(
                agent,
                string_arg("image_source")?.as_deref(),
                &instance_info,
                string_arg("oci_pull_secret")?,
                string_arg("configdrive")?,
            )?;
            Ok(json!({"result": format!("execute_bootc_install: {msg}")}))
        }
        "erase_pstore" => clean::erase_pstore(std::path::Path::new("/proc/self/mounts")),
        "clean_uefi_nvram" => clean::clean_uefi_nvram(agent, args.get("match_patterns")),
        "delete_configuration" => clean::delete_configuration(agent, node),
        "create_configuration" => clean::create_configuration(node),
        other => clean::erase(agent, other, node, progress).unwrap_or_else(|| {
            Err(AgentError::HardwareManagerMethodNotFound(format!(
                "Could not find method: {other}"
            )))
        }),
    }
}

/// Python's repr of a small dict of strings, for IPA's VersionMismatch text.
fn py_repr(v: &Value) -> String {
    match v {
        Value::Object(o) => {
            let items: Vec<String> = o
                .iter()
                .map(|(k, v)| format!("'{k}': {}", py_repr(v)))
                .collect();
            format!("{{{}}}", items.join(", "))
        }
        Value::String(s) => format!("'{s}'"),
        Value::Null => "None".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repr_is_pythonic() {
        assert_eq!(
            py_repr(&json!({"generic_hardware_manager": "1.1"})),
            "{'generic_hardware_manager': '1.1'}"
        );
    }
}
