//! The bodies of the clean (and service) steps: disk erasure through [`crate::erase`], the
//! kernel's pstore, UEFI boot entries through [`crate::boot`], software RAID.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{json, Value};

use super::super::Agent;
use crate::boot::{self, VarStore};
use crate::disk::root;
use crate::erase::{self, EraseOptions, EraseProgress};
use crate::errors::AgentError;
use crate::image::fetch::Progress;

/// The disks an erase step works on: the agent's disks (the `block_devices` setting, or every
/// whole disk), minus those the node's `skip_block_devices` names by root device hints.
fn erasable(agent: &Agent, node: &Value) -> Vec<PathBuf> {
    let skip: Vec<Value> = node
        .pointer("/properties/skip_block_devices")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    agent
        .disks()
        .into_iter()
        .filter(|d| {
            let skipped = skip
                .iter()
                .any(|s| root::matches_hints(d, s).unwrap_or(false));
            if skipped {
                tracing::info!(device = %d.name, "skipped: listed in skip_block_devices");
            }
            !skipped
        })
        .map(|d| PathBuf::from(d.name))
        .collect()
}

/// The erase steps; `None` when `name` is not one.
pub(super) fn erase(
    agent: &Agent,
    name: &str,
    node: &Value,
    _progress: &Arc<Progress>,
) -> Option<Result<Value, AgentError>> {
    let info = node
        .get("driver_internal_info")
        .cloned()
        .unwrap_or_else(|| json!({}));
    let opts = EraseOptions::from_driver_internal_info(&info, true);
    let devices = || erasable(agent, node);
    let progress = EraseProgress::default();
    let r = match name {
        "erase_devices" => {
            erase::erase_devices(&devices(), &opts, &progress).map(|report| report.clean_result())
        }
        "erase_devices_metadata" => {
            erase::erase_devices_metadata(&devices(), &opts, &progress).map(|()| Value::Null)
        }
        "erase_devices_express" => {
            erase::erase_devices_express(&devices(), &opts, &progress).map(|()| Value::Null)
        }
        _ => return None,
    };
    Some(r.map_err(AgentError::from))
}

/// IPA's `erase_pstore`: removes the kernel's saved crash records from the pstore file
/// system, wherever `mounts` (a `/proc/mounts` table) says it is mounted.
pub(super) fn erase_pstore(mounts: &Path) -> Result<Value, AgentError> {
    let table = std::fs::read_to_string(mounts).unwrap_or_default();
    let Some(dir) = table.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (_, at, kind) = (f.next()?, f.next()?, f.next()?);
        (kind == "pstore").then(|| PathBuf::from(at))
    }) else {
        tracing::debug!("No pstore found");
        return Ok(Value::Null);
    };
    tracing::info!("Cleaning up pstore in {}", dir.display());
    let fail = |e: std::io::Error| {
        AgentError::Cleaning(format!(
            "Unexpected exception performing clean step erase_pstore. OSError: {e}"
        ))
    };
    for e in std::fs::read_dir(&dir).map_err(fail)? {
        let p = e.map_err(fail)?.path();
        if p.is_dir() {
            std::fs::remove_dir_all(&p).map_err(fail)?;
        } else {
            std::fs::remove_file(&p).map_err(fail)?;
        }
    }
    Ok(Value::Null)
}

/// IPA's `clean_uefi_nvram`: removes the boot entries matching `match_patterns` (IPA's
/// defaults when absent). The result is null, as IPA's.
pub(super) fn clean_uefi_nvram(
    agent: &Agent,
    match_patterns: Option<&Value>,
) -> Result<Value, AgentError> {
    let dir = agent.settings().efivars_dir;
    let store = VarStore::open(&dir).map_err(|e| nvram_error(e, &dir))?;
    let removed =
        boot::clean_uefi_nvram(&store, match_patterns).map_err(|e| nvram_error(e, &dir))?;
    for r in &removed {
        tracing::info!("removed UEFI boot entry {r:?}");
    }
    Ok(Value::Null)
}

fn nvram_error(e: boot::BootError, dir: &Path) -> AgentError {
    if e.is_rest_error() {
        return e.into();
    }
    AgentError::Cleaning(format!(
        "Unexpected exception performing clean step clean_uefi_nvram. {e} ({})",
        dir.display()
    ))
}

/// IPA's `delete_configuration` of the generic manager: stops every software RAID device
/// and clears its members' superblocks. Nothing to do when there is none.
pub(super) fn delete_configuration(agent: &Agent, _node: &Value) -> Result<Value, AgentError> {
    let arrays: Vec<String> = std::fs::read_dir("/sys/block")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("md"))
                .collect()
        })
        .unwrap_or_default();
    let allowed = agent.settings().block_devices.0;
    for md in arrays {
        let dev = format!("/dev/{md}");
        // With block_devices set, an array counts only when it is named there.
        if !allowed.is_empty() && !allowed.contains(&dev) {
            continue;
        }
        let members: Vec<String> = std::fs::read_dir(format!("/sys/block/{md}/slaves"))
            .map(|d| {
                d.flatten()
                    .map(|e| format!("/dev/{}", e.file_name().to_string_lossy()))
                    .collect()
            })
            .unwrap_or_default();
        tracing::info!(array = %dev, ?members, "deleting software RAID");
        let fail = |f: crate::external::ToolFailure| AgentError::Cleaning(f.to_string());
        crate::external::run("mdadm", &["--stop", &dev]).map_err(fail)?;
        for m in &members {
            crate::external::run("mdadm", &["--zero-superblock", m]).map_err(fail)?;
        }
    }
    Ok(Value::Null)
}

/// IPA's `create_configuration` of the generic manager: nothing to do without a
/// `target_raid_config`; building software RAID from one is not implemented in rivet, and
/// says so instead of pretending.
pub(super) fn create_configuration(node: &Value) -> Result<Value, AgentError> {
    let wanted = node
        .get("target_raid_config")
        .filter(|c| c.as_object().is_some_and(|o| !o.is_empty()));
    match wanted {
        None => {
            tracing::debug!("No target_raid_config found");
            Ok(json!({}))
        }
        Some(c) => Err(AgentError::Cleaning(format!(
            "rivet cannot create the software RAID configuration {c}: building software RAID \
             is not implemented"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pstore_records_are_removed_where_it_is_mounted() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("pstore");
        std::fs::create_dir_all(store.join("sub")).unwrap();
        std::fs::write(store.join("dmesg-efi-1"), "oops").unwrap();
        std::fs::write(store.join("sub/x"), "y").unwrap();
        let mounts = dir.path().join("mounts");
        std::fs::write(
            &mounts,
            format!(
                "proc /proc proc rw 0 0\npstore {} pstore rw 0 0\n",
                store.display()
            ),
        )
        .unwrap();
        assert_eq!(erase_pstore(&mounts).unwrap(), Value::Null);
        assert_eq!(std::fs::read_dir(&store).unwrap().count(), 0);
        // No pstore mounted: nothing to do.
        std::fs::write(&mounts, "proc /proc proc rw 0 0\n").unwrap();
        assert_eq!(erase_pstore(&mounts).unwrap(), Value::Null);
    }

    #[test]
    fn create_configuration_without_a_target_is_a_no_op() {
        assert_eq!(create_configuration(&json!({})).unwrap(), json!({}));
        let e = create_configuration(&json!({"target_raid_config": {"logical_disks": [
            {"size_gb": "MAX", "raid_level": "1", "controller": "software"}]}}))
        .unwrap_err();
        assert_eq!(e.type_name(), "CleaningError");
    }
}
