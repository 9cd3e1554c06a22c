//! Command names → bodies: which extension has which command, sync or async, with which
//! parameters, and the validators that run inside the request (SPEC §1, §2, §6).

use std::sync::Arc;

use serde_json::{Map, Value};

use super::commands::{Outcome, Prepared};
use super::{deploy_steps, log, standby, Agent};
use crate::errors::AgentError;

/// Resolves `<extension>.<command>` with its params to something the engine can run.
///
/// Errors are the synchronous HTTP errors IPA gives: 400 bad name, 404 unknown extension,
/// 400 unknown command, 400 invalid parameters.
pub fn resolve(
    agent: &Arc<Agent>,
    name: &str,
    params: Map<String, Value>,
) -> Result<Prepared, AgentError> {
    let Some((ext, cmd)) = name.split_once('.') else {
        return Err(AgentError::InvalidCommand(
            "Command name must be of the form <extension>.<name>".into(),
        ));
    };
    let unknown = || AgentError::InvalidCommand(format!("Unknown command: {cmd}"));
    let a = Arc::clone(agent);
    match ext {
        "standby" => match cmd {
            "prepare_image" => {
                let p = Params::new(cmd, params, &["image_info", "configdrive"])?;
                let (info, md5) = (p.get("image_info"), a.settings().md5_enabled);
                standby::validate_image_info(&info, md5)?;
                let configdrive = p.opt_string("configdrive")?;
                Ok(Prepared::Async(Box::new(move |progress| {
                    standby::prepare_image(&a, info, configdrive, progress).map(Outcome::Text)
                })))
            }
            "run_image" | "power_off" => {
                Params::new(cmd, params, &[])?;
                let action = if cmd == "run_image" {
                    super::power::PowerAction::Reboot
                } else {
                    super::power::PowerAction::PowerOff
                };
                Ok(Prepared::Async(Box::new(move |_| {
                    standby::shutdown(&a, action).map(|()| Outcome::Null)
                })))
            }
            "sync" => {
                Params::new(cmd, params, &[])?;
                Ok(Prepared::Sync(Box::new(move |_| {
                    standby::sync().map(|()| Outcome::Null)
                })))
            }
            "get_partition_uuids" => {
                Params::new(cmd, params, &[])?;
                Ok(Prepared::Sync(Box::new(move |_| {
                    Ok(Outcome::Json(standby::partition_uuids(&a)))
                })))
            }
            "execute_bootc_install" => {
                let p = Params::new(
                    cmd,
                    params,
                    &[
                        "image_source",
                        "instance_info",
                        "pull_secret",
                        "configdrive",
                    ],
                )?;
                let source = p.opt_string("image_source")?;
                let secret = p.opt_string("pull_secret")?;
                let configdrive = p.opt_string("configdrive")?;
                let instance_info = p.get("instance_info");
                Ok(Prepared::Async(Box::new(move |_| {
                    standby::execute_bootc_install(
                        &a,
                        source.as_deref(),
                        &instance_info,
                        secret,
                        configdrive,
                    )
                    .map(Outcome::Text)
                })))
            }
            _ => Err(unknown()),
        },
        "deploy" => match cmd {
            "get_deploy_steps" => {
                let p = Params::new(cmd, params, &["node", "ports"])?;
                let node = p.get("node");
                Ok(Prepared::Sync(Box::new(move |_| {
                    a.cache_node(&node);
                    Ok(Outcome::Json(deploy_steps::get_deploy_steps()))
                })))
            }
            "execute_deploy_step" => {
                let p = Params::new(cmd, params, &["step", "node", "ports", "deploy_version"])?;
                let (step, node, version) = (p.get("step"), p.get("node"), p.get("deploy_version"));
                Ok(Prepared::Async(Box::new(move |progress| {
                    deploy_steps::execute_deploy_step(&a, step, &node, &version, progress)
                        .map(Outcome::Json)
                })))
            }
            _ => Err(unknown()),
        },
        "log" => match cmd {
            "collect_system_logs" => {
                Params::new(cmd, params, &[])?;
                Ok(Prepared::Sync(Box::new(move |_| {
                    log::collect_system_logs(&a.logs).map(Outcome::Json)
                })))
            }
            _ => Err(unknown()),
        },
        _ => Err(AgentError::NotFound {
            kind: "Extension".into(),
            id: ext.into(),
        }),
    }
}

/// A command's parameters, checked against the names the command takes.
struct Params(Map<String, Value>);

impl Params {
    /// Refuses parameters the command does not take, as Python refuses unexpected keyword
    /// arguments (IPA then fails with a raw `TypeError`; we answer a clean 400).
    fn new(cmd: &str, params: Map<String, Value>, allowed: &[&str]) -> Result<Self, AgentError> {
        if let Some(k) = params.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(AgentError::InvalidCommandParams(format!(
                "{cmd}() got an unexpected keyword argument '{k}'"
            )));
        }
        Ok(Params(params))
    }

    fn get(&self, k: &str) -> Value {
        self.0.get(k).cloned().unwrap_or(Value::Null)
    }

    fn opt_string(&self, k: &str) -> Result<Option<String>, AgentError> {
        match self.0.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(AgentError::InvalidCommandParams(format!(
                "'{k}' must be a string"
            ))),
        }
    }
}
