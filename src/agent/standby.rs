//! The standby extension's commands (docs/agent-api.md#standby): `prepare_image`, `run_image`, `power_off`,
//! `sync`, `get_partition_uuids`, `execute_bootc_install`.

use std::sync::Arc;

use serde_json::{json, Value};

use super::power::PowerAction;
use super::Agent;
use crate::deploy::bootc::{self, BootcRequest};
use crate::deploy::{self, configdrive_write, DeployRequest};
use crate::disk::device::Target;
use crate::disk::partitions;
use crate::errors::AgentError;
use crate::image::fetch::Progress;
use crate::image::info::ImageInfo;

/// `_validate_image_info`, run inside the request (400 on failure), plus the URL schemes:
/// through the API only http and https, refused before any byte is read.
pub(crate) fn validate_image_info(
    info: &Value,
    configdrive: Option<&str>,
    md5_enabled: bool,
) -> Result<(), AgentError> {
    if info.is_null() {
        return Err(AgentError::InvalidCommandParams(
            "prepare_image() missing required argument 'image_info'".into(),
        ));
    }
    let parsed = ImageInfo::from_value(info, md5_enabled)?;
    let configdrive = configdrive.or(parsed.configdrive.as_deref());
    crate::image::info::check_url_schemes(&parsed, configdrive, false)
}

/// `prepare_image`: writes the image to the install disk through the one deploy orchestrator
/// and returns IPA's message (`image (<id>) written to device <dev> root_uuid=<uuid>`).
pub(crate) fn prepare_image(
    agent: &Arc<Agent>,
    info: Value,
    configdrive: Option<String>,
    progress: &Arc<Progress>,
) -> Result<String, AgentError> {
    let settings = agent.settings();
    let info = ImageInfo::from_value(&info, settings.md5_enabled)?;
    let device = agent.root_device()?;
    let mut req = DeployRequest::new(info, device, &settings);
    if configdrive.is_some() {
        req.configdrive = configdrive;
    }
    req.node = agent.node().unwrap_or_else(|| json!({}));
    req.cached_image_id = agent.standby().cached_image_id.clone();
    let done = deploy::run(&req, Arc::clone(progress))?;
    {
        let mut st = agent.standby();
        st.partition_uuids = Some(done.partition_uuids.clone());
        st.cached_image_id = done.cache_id.clone();
    }
    let info = &req.info;
    let mut msg = format!(
        "image ({}) written to device {} root_uuid={}",
        info.id,
        done.device.display(),
        done.root_uuid.as_deref().unwrap_or("None")
    );
    if info.is_partition_image() && info.deploy_boot_mode.as_deref() == Some("uefi") {
        if let Some(e) = &done.efi_uuid {
            msg.push_str(&format!(" efi_system_partition_uuid={e}"));
        }
    }
    Ok(msg)
}

/// `get_partition_uuids`: the stored dict, or `{}` before any `prepare_image`.
pub(crate) fn partition_uuids(agent: &Agent) -> Value {
    match &agent.standby().partition_uuids {
        Some(v) => v.clone(),
        None => {
            tracing::warn!("get_partition_uuids called before prepare_image");
            json!({})
        }
    }
}

/// `sync`: flush file system buffers (`full_sync`).
pub(crate) fn sync() -> Result<(), AgentError> {
    rustix::fs::sync();
    // Dropping caches is best effort (not allowed in every container), as IPA logs only.
    if let Err(e) = std::fs::write("/proc/sys/vm/drop_caches", "3") {
        tracing::debug!("drop_caches: {e}");
    }
    Ok(())
}

/// `run_image` / `power_off`: optional clock sync, sync, then the power backend.
pub(crate) fn shutdown(agent: &Agent, action: PowerAction) -> Result<(), AgentError> {
    let settings = agent.settings();
    if let Some(ntp) = settings.ntp_server.as_deref() {
        if let Err(e) = sync_clock(ntp) {
            if settings.fail_if_clock_not_set {
                return Err(e);
            }
            tracing::warn!("{e}");
        }
    }
    sync()?;
    agent.power().act(action)
}

fn sync_clock(ntp: &str) -> Result<(), AgentError> {
    let valid = !ntp.is_empty()
        && ntp.len() <= 253
        && ntp
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".:_-".contains(c));
    if !valid {
        return Err(AgentError::ClockSync(format!("Invalid NTP server: {ntp}")));
    }
    let run = |cmd: &str, args: &[&str]| -> Result<(), AgentError> {
        crate::external::run(cmd, args)
            .map(drop)
            .map_err(|f| AgentError::ClockSync(f.to_string()))
    };
    if run("chronyc", &["shutdown"]).is_ok() {
        run("chronyd", &["-q", &format!("server {ntp} iburst")])?;
    } else {
        run("ntpdate", &[ntp])?;
    }
    run("hwclock", &["-v", "--systohc"])
}

/// `execute_bootc_install` (docs/agent-api.md#bootc): podman pulls the image (with the pull secret in a
/// private file that is gone before the install runs), `bootc install to-disk` writes it, the
/// partition table is checked, then the config drive is written.
pub(crate) fn execute_bootc_install(
    agent: &Agent,
    image_source: Option<&str>,
    instance_info: &Value,
    pull_secret: Option<String>,
    configdrive: Option<String>,
) -> Result<String, AgentError> {
    let settings = agent.settings();
    if settings.disable_bootc_deploy {
        return Err(AgentError::CommandExecution(
            "The bootc deploy interface is administratively disable. Deployment cannot proceed."
                .into(),
        ));
    }
    let Some(source) = image_source.filter(|s| !s.is_empty()) else {
        return Err(AgentError::InvalidCommandParams(
            "execute_bootc_install() missing required argument 'image_source'".into(),
        ));
    };
    let device = agent.root_device()?;
    let device_bytes = std::fs::File::open(&device)
        .and_then(|mut f| std::io::Seek::seek(&mut f, std::io::SeekFrom::End(0)))
        .map_err(|e| {
            AgentError::DeviceNotFound(format!("Cannot open {}: {e}", device.display()))
        })?;
    let req = BootcRequest {
        image_source: source.to_string(),
        device: device.clone(),
        device_bytes,
        pull_secret,
        authorized_keys: None,
        tpm2_luks: false,
        containers_conf_dir: settings.containers_conf_dir.clone(),
    }
    .with_instance_info(instance_info);
    bootc::install(&req)?;
    partitions::check_after_write(&device)?;
    if let Some(cd) = configdrive.filter(|c| !c.is_empty()) {
        let target = Target::open(&device, false).map_err(|e| {
            AgentError::DeviceNotFound(format!("Cannot open {}: {e}", device.display()))
        })?;
        let image = configdrive_write::materialise("local", &cd, &settings.fetch_config())?;
        configdrive_write::write_config_drive(
            "local",
            &target,
            image,
            settings.config_drive_rebuild,
        )?;
    }
    Ok(format!(
        "Container image ({source}) written to device {}",
        device.display()
    ))
}
