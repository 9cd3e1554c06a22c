//! The deploy extension: `get_deploy_steps` and `execute_deploy_step` (SPEC §5.2, §16.6).
//!
//! rivet presents itself as IPA's generic hardware manager, version 1.2, so that the
//! conductor's stored `hardware_manager_version` round-trips unchanged.

use std::sync::Arc;

use serde_json::{json, Value};

use super::{standby, Agent};
use crate::errors::AgentError;
use crate::image::fetch::Progress;

/// Class name the steps are listed under.
pub const MANAGER: &str = "GenericHardwareManager";
/// Name and version Ironic stores and sends back as `deploy_version`.
pub const MANAGER_NAME: &str = "generic_hardware_manager";
/// See [`MANAGER_NAME`].
pub const MANAGER_VERSION: &str = "1.2";

fn step(name: &str, argsinfo: Value) -> Value {
    json!({"step": name, "priority": 0, "interface": "deploy", "reboot_requested": false,
           "abortable": false, "argsinfo": argsinfo})
}

/// `get_deploy_steps`: the steps rivet can run (the conductor drives them; priority 0), in
/// the shape of SPEC §16.6 (IPA 13 itself leaves `argsinfo`/`abortable` out of these two;
/// Ironic accepts both).
pub fn get_deploy_steps() -> Value {
    let arg = |d: &str, required: bool| json!({"description": d, "required": required});
    json!({
        "deploy_steps": {MANAGER: [
            step("write_image", json!({
                "image_info": arg("Ironic's image_info dict: the image to write.", true),
                "configdrive": arg("Config drive: gzip+base64 text or a URL.", false),
            })),
            step("execute_bootc_install", json!({
                "image_source": arg("The OCI image reference (oci://...).", true),
                "configdrive": arg("Config drive: gzip+base64 text or a URL.", false),
                "oci_pull_secret": arg("Base64 registry credentials for the pull.", false),
            })),
        ]},
        "hardware_manager_version": {MANAGER_NAME: MANAGER_VERSION},
    })
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

/// `execute_deploy_step`: checks the hardware manager version, then runs the step.
pub fn execute_deploy_step(
    agent: &Arc<Agent>,
    step: Value,
    node: &Value,
    deploy_version: &Value,
    progress: &Arc<Progress>,
) -> Result<Value, AgentError> {
    agent.cache_node(node);
    let ours = json!({MANAGER_NAME: MANAGER_VERSION});
    if !deploy_version.is_null() && *deploy_version != ours {
        return Err(AgentError::VersionMismatch(format!(
            "Current versions: {}, versions used by ironic: {}",
            py_repr(&ours),
            py_repr(deploy_version)
        )));
    }
    let Some(name) = step.get("step").and_then(Value::as_str) else {
        return Err(AgentError::CommandExecution(format!(
            "Malformed deploy_step, no \"step\" key: {step}"
        )));
    };
    let args = step.get("args").cloned().unwrap_or_else(|| json!({}));
    let arg = |k: &str| args.get(k).cloned().unwrap_or(Value::Null);
    let string_arg = |k: &str| -> Result<Option<String>, AgentError> {
        match arg(k) {
            Value::Null => Ok(None),
            Value::String(s) => Ok(Some(s)),
            other => Err(AgentError::Deployment(format!(
                "Unexpected exception performing deploy step {name}. TypeError: '{k}' must be \
                 a string, not {other}"
            ))),
        }
    };
    let result = match name {
        "write_image" => {
            let info = arg("image_info");
            standby::validate_image_info(&info, agent.settings().md5_enabled)?;
            let msg = standby::prepare_image(agent, info, string_arg("configdrive")?, progress)?;
            json!({"result": format!("prepare_image: {msg}")})
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
            json!({"result": format!("execute_bootc_install: {msg}")})
        }
        other => {
            return Err(AgentError::HardwareManagerMethodNotFound(format!(
                "Could not find method: {other}"
            )))
        }
    };
    Ok(json!({"deploy_result": result, "deploy_step": step}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_have_ironics_shape() {
        let s = get_deploy_steps();
        let steps = s["deploy_steps"]["GenericHardwareManager"]
            .as_array()
            .unwrap();
        assert!(steps
            .iter()
            .any(|x| x["step"] == "write_image" && x["interface"] == "deploy"));
        assert_eq!(
            s["hardware_manager_version"],
            json!({"generic_hardware_manager": "1.2"})
        );
    }

    #[test]
    fn repr_is_pythonic() {
        assert_eq!(
            py_repr(&json!({"generic_hardware_manager": "1.1"})),
            "{'generic_hardware_manager': '1.1'}"
        );
    }
}
