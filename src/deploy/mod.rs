//! Deploying an image: one orchestrator for every front-end.
//!
//! `rivet deploy` and the agent's `standby.prepare_image` / `deploy.write_image` build a
//! [`DeployRequest`] from the same typed settings ([`DeployRequest::new`]) and call [`run`];
//! everything a deploy does is decided here, once: whole disk or partition image, the format
//! policy, the image itself ([`pipeline`]), the partition-table check, the config drive, the
//! root uuid. A failure after the first write wipes the disk's table areas through one guard
//! owned by the target ([`crate::disk::device::WipeOnFailure`]). See `docs/data-path.md`.

pub(crate) mod bootc;
pub(crate) mod bootc_pull;
pub(crate) mod configdrive_write;
pub mod decode;
pub(crate) mod decompress;
pub(crate) mod partition_image;
pub mod pipeline;
pub(crate) mod tempfile_path;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::config::Settings;
use crate::disk::device::Target;
use crate::disk::partitions::{self, Part};
use crate::errors::AgentError;
use crate::image::fetch::{FetchConfig, Progress};
use crate::image::info::ImageInfo;
use decode::FormatPolicy;
pub use pipeline::{DeployOptions, Written};

/// Everything one deploy needs.
#[derive(Debug, Clone)]
pub struct DeployRequest {
    /// What to deploy (Ironic's `image_info`).
    pub info: ImageInfo,
    /// The install disk (or a regular file standing in for one).
    pub device: PathBuf,
    /// How to download.
    pub fetch: FetchConfig,
    /// How to write (format policy, temp dir, O_DIRECT, read-back).
    pub opts: DeployOptions,
    /// A config drive to write after the image (gzip+base64 text or an http(s) URL).
    pub configdrive: Option<String>,
    /// Always rebuild the config drive as vfat.
    pub config_drive_rebuild: bool,
    /// The node Ironic described (boot mode and disk label of partition images).
    pub node: Value,
    /// The image the disk already holds from IPA's cache path: not written again.
    pub cached_image_id: Option<String>,
    /// Fail when the written disk holds no partition table (IPA's `_validate_partitioning`;
    /// the CLI can turn it off for images that are a bare file system or raw data).
    pub require_partition_table: bool,
    /// Accept `file://` image URLs. Only the CLI sets it (the operator is the one asking);
    /// through the agent's API only http and https are accepted, as from IPA.
    pub allow_file_urls: bool,
}

impl DeployRequest {
    /// A request for `info` onto `device` under `settings`: the one place the format policy
    /// and the write options are derived from settings.
    pub fn new(info: ImageInfo, device: PathBuf, settings: &Settings) -> DeployRequest {
        let policy = FormatPolicy {
            disk_format: info.disk_format.clone(),
            permitted: settings.permitted_image_formats.0.clone(),
            deep: !settings.disable_deep_image_inspection,
            // IPA streams only raw images with stream_raw_images; rivet streams qcow2 too,
            // and keeps IPA's cache path when Ironic turns streaming off for raw.
            stream: info.stream_raw_images || !matches!(info.disk_format.as_deref(), Some("raw")),
            ..FormatPolicy::default()
        };
        let configdrive = info.configdrive.clone();
        DeployRequest {
            info,
            device,
            fetch: settings.fetch_config(),
            opts: DeployOptions {
                policy,
                tmp_dir: settings.image_tmp_dir.clone(),
                decompress: decode::DecompressLimits::new(
                    settings.decompress_threads,
                    settings.decompress_memory_mib.0,
                ),
                ..DeployOptions::default()
            },
            configdrive,
            config_drive_rebuild: settings.config_drive_rebuild,
            node: json!({}),
            cached_image_id: None,
            require_partition_table: true,
            allow_file_urls: false,
        }
    }
}

/// What a successful deploy did.
#[derive(Debug, Clone)]
pub struct Deployed {
    /// The install disk.
    pub device: PathBuf,
    /// The image write (`None` when the disk already held the image from the cache path).
    pub written: Option<Written>,
    /// The image id to remember for IPA's cache path (temp-file writes only, as IPA).
    pub cache_id: Option<String>,
    /// What `standby.get_partition_uuids` answers afterwards.
    pub partition_uuids: Value,
    /// The root uuid reported to Ironic: the MBR signature of a whole-disk image, the root
    /// file system's uuid of a partition image.
    pub root_uuid: Option<String>,
    /// The ESP's uuid (partition images in UEFI mode).
    pub efi_uuid: Option<String>,
    /// The config drive's partition, when one was written to a whole-disk image.
    pub config_drive: Option<Part>,
    /// Wall time of the whole deploy.
    pub elapsed: Duration,
}

/// Runs a deploy from start to finish.
pub fn run(req: &DeployRequest, progress: Arc<Progress>) -> Result<Deployed, AgentError> {
    let started = Instant::now();
    // image_download_max_duration covers the whole deploy: config drive, checksum, image.
    let fetch = req.fetch.starting_now();
    let info = &req.info;
    // Before any byte is read.
    crate::image::info::check_url_schemes(info, req.configdrive.as_deref(), req.allow_file_urls)?;
    tracing::info!(image = %info.id, device = %req.device.display(), "deploying");
    if info.is_partition_image() {
        // Partition images carry their config drive inside the layout.
        let r = partition_image::deploy(
            info,
            &req.node,
            &req.device,
            req.configdrive.as_deref(),
            &fetch,
            &req.opts,
            progress,
        )?;
        partitions::check_after_write(&req.device)?;
        return Ok(Deployed {
            device: req.device.clone(),
            written: None,
            cache_id: None,
            partition_uuids: r.uuids,
            root_uuid: r.root_uuid,
            efi_uuid: r.efi_uuid,
            config_drive: None,
            elapsed: started.elapsed(),
        });
    }

    // A bad config drive fails here, before the disk is touched.
    let config_drive_image = match req.configdrive.as_deref().map(str::trim) {
        Some(cd) if !cd.is_empty() => Some(configdrive_write::materialise(
            info.node_label(),
            cd,
            &fetch,
        )?),
        _ => None,
    };
    let target = Arc::new(
        Target::open(&req.device, req.opts.direct_io)
            .map_err(|e| pipeline::write_error(info, &req.device, &e))?,
    );
    let guard = target.wipe_on_failure();
    let written = match &req.cached_image_id {
        Some(id) if *id == info.id => {
            tracing::info!("image {id} is already on the disk (cache path): not writing it again");
            None
        }
        _ => Some(pipeline::write_image(
            info, &target, &fetch, &req.opts, progress,
        )?),
    };
    if req.require_partition_table {
        partitions::check_after_write(&req.device)?;
    }
    let config_drive = match config_drive_image {
        Some(cd) => Some(configdrive_write::write_config_drive(
            info.node_label(),
            &target,
            cd,
            req.config_drive_rebuild,
        )?),
        None => None,
    };
    let root_uuid = partitions::mbr_signature(target.file()).ok();
    guard.disarm();
    if let Some(w) = &written {
        tracing::info!(
            "image {} written to {} in {:.1} s ({:?})",
            info.id,
            req.device.display(),
            started.elapsed().as_secs_f64(),
            w.path
        );
    }

    let mut uuids = json!({});
    if let Some(u) = &root_uuid {
        uuids["root uuid"] = json!(u);
    }
    let cache_id = written
        .as_ref()
        .filter(|w| w.path == decode::WritePath::TempFile)
        .map(|_| info.id.clone())
        .or_else(|| req.cached_image_id.clone().filter(|_| written.is_none()));
    Ok(Deployed {
        device: req.device.clone(),
        written,
        cache_id,
        partition_uuids: uuids,
        root_uuid,
        efi_uuid: None,
        config_drive,
        elapsed: started.elapsed(),
    })
}
