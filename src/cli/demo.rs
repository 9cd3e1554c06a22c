//! `rivet demo`: a sample image served on loopback and deployed into a file, through the same
//! orchestrator as `rivet deploy`.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::config::Settings;
use crate::deploy::{self, DeployRequest};
use crate::image::info::ImageInfo;

/// Flags of `rivet demo`.
#[derive(Args)]
pub(super) struct DemoArgs {
    /// Directory for the sample image and the target file (default: a new temporary one).
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Size of the sample image in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 64)]
    size_mib: u64,
}

/// `rivet demo`.
pub(super) fn demo(a: DemoArgs) -> anyhow::Result<()> {
    let dir = match &a.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("rivet-demo-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir)?;
    let size = a.size_mib.max(4) << 20;
    let image = dir.join("sample.img");
    println!(
        "rivet demo: making a {} MiB sample GPT image at {}",
        size >> 20,
        image.display()
    );
    crate::demo::sample_image(&image, size, 0x5eed)?;
    let server = crate::demo::FileServer::start(&dir)?;
    let url = server.url("sample.img");
    let disk = dir.join("disk.img");
    // A "disk" twice the image's size, so the backup GPT must move to its end.
    std::fs::File::create(&disk)?.set_len(size * 2)?;
    let digest = {
        let mut h = crate::image::checksum::Algorithm::Sha256.hasher();
        h.update(&std::fs::read(&image)?);
        h.hex_digest()
    };
    println!(
        "rivet demo: serving it at {url}; deploying into {}",
        disk.display()
    );
    let info = ImageInfo::from_value(
        &serde_json::json!({"id": "sample", "urls": [url], "disk_format": "raw", "stream_raw_images": true,
                            "os_hash_algo": "sha256", "os_hash_value": digest}),
        false,
    )?;
    let mut settings = Settings::defaults()?;
    settings.image_download_connection_retries = 2;
    settings.image_download_connection_retry_interval = crate::config::Secs(Duration::from_secs(1));
    let req = DeployRequest::new(info, disk, &settings);
    let done = super::progress::with_progress(|p| deploy::run(&req, p))?;
    super::deploy::report(&req.info, &done);
    if let Some(w) = &done.written {
        println!("rivet demo: backup GPT: {:?}; path: {:?}", w.gpt, w.path);
    }
    if a.dir.is_none() {
        std::fs::remove_dir_all(&dir)?;
    }
    Ok(())
}
