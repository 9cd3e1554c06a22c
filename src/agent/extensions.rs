//! Command names → bodies: which extension has which command, sync or async, with which
//! parameters, and the validators that run inside the request (docs/agent-api.md#commands, docs/agent-api.md#routes, docs/agent-api.md#standby).

use std::sync::Arc;

use serde_json::{Map, Value};

use super::commands::{Outcome, Prepared};
use super::steps::{self, Phase};
use super::{bootloader, log, standby, system, Agent};
use crate::errors::AgentError;

/// Resolves `<extension>.<command>` with its params to something the engine can run.
///
/// Errors are the synchronous HTTP errors IPA gives: 400 bad name, 404 unknown extension,
/// 400 unknown command, 400 invalid parameters.
pub(crate) fn resolve(
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
                let configdrive = p.opt_string("configdrive")?;
                standby::validate_image_info(&info, configdrive.as_deref(), md5)?;
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
        "deploy" => steps_command(a, Phase::Deploy, cmd, params),
        "clean" => steps_command(a, Phase::Clean, cmd, params),
        "service" => steps_command(a, Phase::Service, cmd, params),
        "image" => match cmd {
            "install_bootloader" => {
                let p = Params::new(
                    cmd,
                    params,
                    &[
                        "root_uuid",
                        "efi_system_part_uuid",
                        "prep_boot_part_uuid",
                        "target_boot_mode",
                        "software_raid",
                        "ignore_bootloader_failure",
                    ],
                )?;
                let req = bootloader::InstallBootloader {
                    root_uuid: p.opt_string("root_uuid")?,
                    efi_system_part_uuid: p.opt_string("efi_system_part_uuid")?,
                    prep_boot_part_uuid: p.opt_string("prep_boot_part_uuid")?,
                    target_boot_mode: p.opt_string("target_boot_mode")?,
                    ignore_bootloader_failure: p.opt_bool("ignore_bootloader_failure")?,
                };
                if p.opt_bool("software_raid")? == Some(true) {
                    tracing::warn!("software_raid requested: rivet sets up the install disk only");
                }
                Ok(Prepared::Async(Box::new(move |_| {
                    bootloader::install_bootloader(&a, &req).map(Outcome::Json)
                })))
            }
            _ => Err(unknown()),
        },
        "system" => match cmd {
            "lockdown" => {
                Params::new(cmd, params, &[])?;
                Ok(Prepared::Sync(Box::new(move |_| {
                    system::lockdown(&a).map(Outcome::Json)
                })))
            }
            _ => Err(unknown()),
        },
        "rescue" => match cmd {
            "finalize_rescue" => {
                let p = Params::new(cmd, params, &["rescue_password", "hashed"])?;
                let password = p.opt_string("rescue_password")?.unwrap_or_default();
                let hashed = p.opt_bool("hashed")?.unwrap_or(false);
                Ok(Prepared::Sync(Box::new(move |_| {
                    system::finalize_rescue(&a, &password, hashed).map(Outcome::Json)
                })))
            }
            _ => Err(unknown()),
        },
        "log" => match cmd {
            "collect_system_logs" => {
                Params::new(cmd, params, &[])?;
                Ok(Prepared::Sync(Box::new(move |_| {
                    let extra = crate::inspect::callback::log_files(None);
                    log::collect_system_logs_with(&a.logs, extra).map(Outcome::Json)
                })))
            }
            _ => Err(unknown()),
        },
        "poll" => match cmd {
            "get_hardware_info" => {
                Params::new(cmd, params, &[])?;
                Ok(Prepared::Sync(Box::new(move |_| {
                    let inv = crate::inspect::hardware_info(&a.settings());
                    serde_json::to_value(inv)
                        .map(Outcome::Json)
                        .map_err(|e| AgentError::CommandExecution(e.to_string()))
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

/// `get_<phase>_steps` (sync) and `execute_<phase>_step` (async) of the three step extensions.
fn steps_command(
    a: Arc<Agent>,
    phase: Phase,
    cmd: &str,
    params: Map<String, Value>,
) -> Result<Prepared, AgentError> {
    let (list, execute) = (
        format!("get_{}_steps", phase.name()),
        format!("execute_{}_step", phase.name()),
    );
    if cmd == list {
        let p = Params::new(cmd, params, &["node", "ports"])?;
        let node = p.get("node");
        return Ok(Prepared::Sync(Box::new(move |_| {
            Ok(Outcome::Json(steps::get_steps(&a, phase, &node)))
        })));
    }
    if cmd == execute {
        let p = Params::new(
            cmd,
            params,
            &["step", "node", "ports", phase.version_param()],
        )?;
        let (step, node, version) = (p.get("step"), p.get("node"), p.get(phase.version_param()));
        if !step.is_object() {
            return Err(AgentError::InvalidCommandParams(format!(
                "{cmd}() requires a 'step' dict"
            )));
        }
        return Ok(Prepared::Async(Box::new(move |progress| {
            steps::execute_step(&a, phase, step, &node, &version, progress).map(Outcome::Json)
        })));
    }
    Err(AgentError::InvalidCommand(format!(
        "Unknown command: {cmd}"
    )))
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

    fn opt_bool(&self, k: &str) -> Result<Option<bool>, AgentError> {
        match self.0.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(Value::String(s)) => crate::config::parse_bool(s).map(Some).ok_or_else(|| {
                AgentError::InvalidCommandParams(format!("'{k}' must be a boolean"))
            }),
            Some(_) => Err(AgentError::InvalidCommandParams(format!(
                "'{k}' must be a boolean"
            ))),
        }
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
