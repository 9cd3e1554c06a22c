//! The standby extension's commands (SPEC §6): `prepare_image`, `run_image`, `power_off`,
//! `sync`, `get_partition_uuids`, `execute_bootc_install`.

use std::path::Path;
use std::sync::Arc;

use serde_json::{json, Value};

use super::power::PowerAction;
use super::Agent;
use crate::deploy::bootc::{self, BootcRequest};
use crate::deploy::configdrive_write;
use crate::deploy::decode::{FormatPolicy, WritePath};
use crate::deploy::partition_image;
use crate::deploy::pipeline::{self, DeployOptions};
use crate::disk::table;
use crate::errors::AgentError;
use crate::image::fetch::Progress;
use crate::image::info::ImageInfo;

/// `_validate_image_info`, run inside the request (400 on failure).
pub fn validate_image_info(info: &Value, md5_enabled: bool) -> Result<(), AgentError> {
    if info.is_null() {
        return Err(AgentError::InvalidCommandParams(
            "prepare_image() missing required argument 'image_info'".into(),
        ));
    }
    ImageInfo::from_value(info, md5_enabled).map(|_| ())
}

/// `prepare_image`: writes the image to the install disk, checks the partition table, and
/// returns IPA's message (`image (<id>) written to device <dev> root_uuid=<uuid>`).
pub fn prepare_image(
    agent: &Arc<Agent>,
    info: Value,
    configdrive: Option<String>,
    progress: &Arc<Progress>,
) -> Result<String, AgentError> {
    let cfg = agent.fetch_config()?;
    let info = ImageInfo::from_value(&info, cfg.md5_enabled)?;
    let configdrive = configdrive.or_else(|| info.configdrive.clone());
    let device = agent.root_device()?;
    tracing::info!(image = %info.id, device = %device.display(), "prepare_image");

    let settings = agent.settings();
    let opts = DeployOptions {
        policy: FormatPolicy {
            disk_format: info.disk_format.clone(),
            permitted: settings.list("permitted_image_formats"),
            deep: !settings
                .bool("disable_deep_image_inspection")
                .unwrap_or(false),
            // IPA streams only raw images with stream_raw_images; rivet streams qcow2 too,
            // and keeps IPA's cache path when Ironic turns streaming off for raw.
            stream: info.stream_raw_images || !matches!(info.disk_format.as_deref(), Some("raw")),
            ..FormatPolicy::default()
        },
        tmp_dir: settings.get("image_tmp_dir").map(Into::into),
        ..DeployOptions::default()
    };

    if info.is_partition_image() {
        // Partition images carry their config drive inside the layout.
        let node = agent.node().unwrap_or_else(|| json!({}));
        let r = partition_image::deploy(
            &info,
            &node,
            &device,
            configdrive.as_deref(),
            &cfg,
            &opts,
            Arc::clone(progress),
        )?;
        agent.standby().partition_uuids = Some(r.uuids.clone());
        validate_partitioning(&device)?;
        let mut msg = format!(
            "image ({}) written to device {} root_uuid={}",
            info.id,
            device.display(),
            r.root_uuid.as_deref().unwrap_or("None")
        );
        if info.deploy_boot_mode.as_deref() == Some("uefi") {
            if let Some(e) = &r.efi_uuid {
                msg.push_str(&format!(" efi_system_partition_uuid={e}"));
            }
        }
        return Ok(msg);
    }

    let cached = agent.standby().cached_image_id.clone();
    if cached.as_deref() != Some(info.id.as_str()) {
        let done = pipeline::write_image(&info, &device, &cfg, &opts, Arc::clone(progress))?;
        tracing::info!(
            "image {} written to {} in {:.1} s ({:?})",
            info.id,
            device.display(),
            done.elapsed.as_secs_f64(),
            done.path
        );
        let mut st = agent.standby();
        st.partition_uuids = Some(json!({}));
        // As IPA: only the cache (temp-file) path remembers the image; streaming never does.
        st.cached_image_id = (done.path == WritePath::TempFile).then(|| info.id.clone());
    }
    validate_partitioning(&device)?;
    if let Some(cd) = configdrive.as_deref().filter(|c| !c.is_empty()) {
        write_config_drive(agent, info.node_label(), &device, cd)?;
    }
    let root_uuid = root_uuid(&device);
    {
        let mut st = agent.standby();
        let mut uuids = st.partition_uuids.take().unwrap_or_else(|| json!({}));
        if let (Some(u), Some(o)) = (&root_uuid, uuids.as_object_mut()) {
            o.insert("root uuid".into(), json!(u));
        }
        st.partition_uuids = Some(uuids);
    }
    Ok(format!(
        "image ({}) written to device {} root_uuid={}",
        info.id,
        device.display(),
        root_uuid.as_deref().unwrap_or("None")
    ))
}

/// The MBR disk signature, as IPA's `hexdump` gives it; `None` when unreadable.
fn root_uuid(device: &Path) -> Option<String> {
    let f = std::fs::File::open(device).ok()?;
    table::mbr_disk_signature(&f).ok()
}

/// `_validate_partitioning`: the disk must hold a readable partition table with at least one
/// partition (read natively instead of `parted`).
pub fn validate_partitioning(device: &Path) -> Result<(), AgentError> {
    let mut f = std::fs::File::open(device).map_err(|e| {
        AgentError::Deployment(format!(
            "Unable to find a valid partition table on the disk after writing the image. \
             The image may be corrupted or it uses a different sector size than the device. \
             Error: cannot open {}: {e}",
            device.display()
        ))
    })?;
    let count = match gptman::GPT::find_from(&mut f) {
        Ok(gpt) => gpt.iter().filter(|(_, p)| p.is_used()).count(),
        Err(_) => match mbrman::MBR::read_from(&mut f, 512) {
            Ok(mbr) => mbr.iter().filter(|(_, p)| p.is_used()).count(),
            Err(e) => {
                return Err(AgentError::Deployment(format!(
                    "Unable to find a valid partition table on the disk after writing the \
                     image. The image may be corrupted or it uses a different sector size than \
                     the device. Error: {e}"
                )))
            }
        },
    };
    if count == 0 {
        return Err(AgentError::Deployment(format!(
            "No partitions found on the device {} after writing the image.",
            device.display()
        )));
    }
    Ok(())
}

/// `get_partition_uuids`: the stored dict, or `{}` before any `prepare_image`.
pub fn partition_uuids(agent: &Agent) -> Value {
    match &agent.standby().partition_uuids {
        Some(v) => v.clone(),
        None => {
            tracing::warn!("get_partition_uuids called before prepare_image");
            json!({})
        }
    }
}

/// `sync`: flush file system buffers (`full_sync`).
pub fn sync() -> Result<(), AgentError> {
    rustix::fs::sync();
    // Dropping caches is best effort (not allowed in every container), as IPA logs only.
    if let Err(e) = std::fs::write("/proc/sys/vm/drop_caches", "3") {
        tracing::debug!("drop_caches: {e}");
    }
    Ok(())
}

/// `run_image` / `power_off`: optional clock sync, sync, then the power backend.
pub fn shutdown(agent: &Agent, action: PowerAction) -> Result<(), AgentError> {
    let settings = agent.settings();
    if let Some(ntp) = settings.get("ntp_server") {
        if let Err(e) = sync_clock(ntp) {
            if settings.bool("fail_if_clock_not_set").unwrap_or(false) {
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
        let out = std::process::Command::new(cmd)
            .args(args)
            .output()
            .map_err(|e| AgentError::ClockSync(format!("{cmd}: {e}")))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(AgentError::ClockSync(format!(
                "{cmd} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        }
    };
    if run("chronyc", &["shutdown"]).is_ok() {
        run("chronyd", &["-q", &format!("server {ntp} iburst")])?;
    } else {
        run("ntpdate", &[ntp])?;
    }
    run("hwclock", &["-v", "--systohc"])
}

/// `execute_bootc_install` (SPEC §11): podman pulls the image (with the pull secret in a
/// private file that is gone before the install runs), `bootc install to-disk` writes it, the
/// partition table is checked, then the config drive is written.
pub fn execute_bootc_install(
    agent: &Agent,
    image_source: Option<&str>,
    instance_info: &Value,
    pull_secret: Option<String>,
    configdrive: Option<String>,
) -> Result<String, AgentError> {
    let settings = agent.settings();
    if settings.bool("disable_bootc_deploy").unwrap_or(false) {
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
        containers_conf_dir: settings
            .get("containers_conf_dir")
            .unwrap_or("/etc/containers/containers.conf.d")
            .into(),
    }
    .from_instance_info(instance_info);
    bootc::install(&req)?;
    validate_partitioning(&device)?;
    if let Some(cd) = configdrive.filter(|c| !c.is_empty()) {
        write_config_drive(agent, "local", &device, &cd)?;
    }
    Ok(format!(
        "Container image ({source}) written to device {}",
        device.display()
    ))
}

/// `create_config_drive_partition` for whole-disk images and bootc (SPEC §10.2).
fn write_config_drive(
    agent: &Agent,
    node: &str,
    device: &Path,
    configdrive: &str,
) -> Result<(), AgentError> {
    let rebuild = agent
        .settings()
        .bool("config_drive_rebuild")
        .unwrap_or(false);
    configdrive_write::write_config_drive(
        node,
        device,
        configdrive,
        &agent.fetch_config()?,
        rebuild,
    )
    .map(|_| ())
}
