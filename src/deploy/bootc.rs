//! `execute_bootc_install` (docs/agent-api.md#bootc): a bootable container image installed with podman and
//! `bootc install to-disk`, as IPA does it, with the pull secret kept away from the install
//! container (LP 2155826): it lives in a private file only while `podman pull` runs.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine;
use serde_json::{json, Value};

use crate::errors::AgentError;

/// What to install, and how.
#[derive(Debug, Clone)]
pub(crate) struct BootcRequest {
    /// `image_source` as Ironic sends it (`oci://registry/repo:tag`).
    pub image_source: String,
    /// The install device.
    pub device: PathBuf,
    /// Size of the device in bytes.
    pub device_bytes: u64,
    /// Base64 of the registry secret, as Ironic sends `oci_pull_secret`.
    pub pull_secret: Option<String>,
    /// `instance_info.bootc_authorized_keys`.
    pub authorized_keys: Option<String>,
    /// `instance_info.bootc_tpm2_luks`.
    pub tpm2_luks: bool,
    /// Where `01-ipa.conf` goes (normally `/etc/containers/containers.conf.d`).
    pub containers_conf_dir: PathBuf,
}

impl BootcRequest {
    /// Reads the bootc settings of a node's `instance_info`.
    pub(crate) fn with_instance_info(mut self, instance_info: &Value) -> Self {
        self.authorized_keys = instance_info
            .get("bootc_authorized_keys")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned);
        self.tpm2_luks = match instance_info.get("bootc_tpm2_luks") {
            Some(Value::Bool(b)) => *b,
            Some(Value::String(s)) => crate::config::parse_bool(s).unwrap_or(false),
            _ => false,
        };
        self
    }
}

/// `oci://quay.io/org/img:tag` → `quay.io/org/img:tag` (scheme dropped, tag or digest kept),
/// and the registry host.
pub(crate) fn image_reference(source: &str) -> (String, String) {
    let rest = source.split_once("://").map(|(_, r)| r).unwrap_or(source);
    let netloc = rest.split('/').next().unwrap_or("").to_string();
    (rest.to_string(), netloc)
}

/// Whether SELinux is on (`getenforce` says Enforcing or Permissive); off when it can't tell.
fn selinux_enabled() -> bool {
    Command::new("getenforce")
        .output()
        .map(|o| {
            let s = String::from_utf8_lossy(&o.stdout);
            s.starts_with("Enforcing") || s.starts_with("Permissive")
        })
        .unwrap_or(false)
}

/// A private directory holding the registry auth file, removed (with the file) on drop.
struct AuthFile {
    dir: tempfile::TempDir,
    path: PathBuf,
}

fn write_auth_file(secret_b64: &str, netloc: &str) -> Result<AuthFile, AgentError> {
    let fail = |e: String| AgentError::ImageDownload {
        kind: crate::errors::DownloadKind::Fatal,
        image_id: netloc.to_string(),
        msg: format!("Cannot prepare the pull secret: {e}"),
    };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(secret_b64.trim())
        .map_err(|e| fail(format!("not base64: {e}")))?;
    let auth = String::from_utf8(decoded).map_err(|e| fail(e.to_string()))?;
    let dir = tempfile::Builder::new()
        .prefix("ipa-container-auth-")
        .tempdir()
        .map_err(|e| fail(e.to_string()))?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))
        .map_err(|e| fail(e.to_string()))?;
    let mut f = tempfile::Builder::new()
        .prefix("ipa-container-auth-")
        .suffix(".json")
        .permissions(std::fs::Permissions::from_mode(0o600))
        .tempfile_in(dir.path())
        .map_err(|e| fail(e.to_string()))?;
    let body = json!({"auths": {netloc: {"auth": auth}}});
    f.write_all(body.to_string().as_bytes())
        .map_err(|e| fail(e.to_string()))?;
    let (_, path) = f.keep().map_err(|e| fail(e.to_string()))?;
    Ok(AuthFile { dir, path })
}

impl Drop for AuthFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_dir(self.dir.path());
    }
}

/// The argv of the install run (after `podman`), exactly as IPA builds it.
pub(crate) fn run_args(
    req: &BootcRequest,
    reference: &str,
    selinux: bool,
    keys_file: Option<&Path>,
) -> Vec<String> {
    let root_mb = (req.device_bytes >> 20).saturating_sub(768);
    let mut a: Vec<String> = [
        "--log-level=debug",
        "run",
        "--rm",
        "--privileged",
        "--pid=host",
        "--pull=never",
        "-v",
        "/var/lib/containers:/var/lib/containers",
        "-v",
        "/dev:/dev",
    ]
    .map(String::from)
    .to_vec();
    if keys_file.is_some() {
        a.extend(["-v", "/tmp:/tmp"].map(String::from));
    }
    if selinux {
        a.extend(["--security-opt", "label=type:unconfined_t"].map(String::from));
    }
    a.push(reference.to_string());
    a.extend(
        [
            "bootc",
            "install",
            "to-disk",
            "--wipe",
            "--skip-fetch-check",
        ]
        .map(String::from),
    );
    a.push(format!("--root-size={root_mb}M"));
    if req.tpm2_luks {
        a.push("--block-setup=tpm2-luks".into());
    }
    if let Some(k) = keys_file {
        a.push(format!("--root-ssh-authorized-keys={}", k.display()));
    }
    if !selinux {
        a.push("--disable-selinux".into());
    }
    a.push(req.device.display().to_string());
    a
}

/// Pulls and installs the image. Errors are IPA's: pull failure and a missing `bootc` are
/// `ImageDownloadError`, an install failure is `ImageWriteError`.
pub(crate) fn install(req: &BootcRequest) -> Result<(), AgentError> {
    let conf = req.containers_conf_dir.join("01-ipa.conf");
    std::fs::create_dir_all(&req.containers_conf_dir)
        .and_then(|()| std::fs::write(&conf, "[engine]\nno_pivot_root = true\n"))
        .map_err(|e| {
            AgentError::CommandExecution(format!("Cannot write {}: {e}", conf.display()))
        })?;
    let (reference, netloc) = image_reference(&req.image_source);

    // Pull on its own, so the run step never sees the credentials.
    {
        let auth = match &req.pull_secret {
            Some(s) if !s.is_empty() => Some(write_auth_file(s, &netloc)?),
            _ => None,
        };
        tracing::info!("pulling {reference}");
        let out = super::bootc_pull::pull(auth.as_ref().map(|a| a.path.as_path()), &reference);
        drop(auth); // the secret is gone before anything else runs
        let failed = out.err();
        if let Some(err) = failed {
            return Err(AgentError::download(
                &reference,
                format!("Failed to pull container image: {err}"),
            ));
        }
    }

    let keys = match &req.authorized_keys {
        Some(k) => {
            let mut f = tempfile::Builder::new()
                .prefix("ipa-bootc-keys-")
                .tempfile_in("/tmp")
                .map_err(|e| {
                    AgentError::CommandExecution(format!("Cannot write the keys file: {e}"))
                })?;
            f.write_all(k.as_bytes()).map_err(|e| {
                AgentError::CommandExecution(format!("Cannot write the keys file: {e}"))
            })?;
            Some(f)
        }
        None => None,
    };
    let selinux = selinux_enabled();
    let args = run_args(req, &reference, selinux, keys.as_ref().map(|f| f.path()));
    tracing::info!("running podman {}", args.join(" "));
    let failure = match crate::external::run("podman", &args) {
        Ok(_) => return Ok(()),
        Err(f) => f,
    };
    if failure.stdout.contains("executable file `bootc` not found")
        || failure.stderr.contains("executable file `bootc` not found")
    {
        return Err(AgentError::download(
            &req.image_source,
            "Container does not contain the required bootc binary and thus cannot be deployed.",
        ));
    }
    Err(failure.image_write(&req.device))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> BootcRequest {
        BootcRequest {
            image_source: "oci://foo.tld/org/img:1".into(),
            device: "/dev/fake".into(),
            device_bytes: 2_000_000_000,
            pull_secret: None,
            authorized_keys: None,
            tpm2_luks: false,
            containers_conf_dir: "/nonexistent".into(),
        }
    }

    #[test]
    fn references_drop_the_scheme() {
        assert_eq!(
            image_reference("oci://quay.io/a/b:tag"),
            ("quay.io/a/b:tag".into(), "quay.io".into())
        );
        assert_eq!(
            image_reference("quay.io/a/b@sha256:ab").0,
            "quay.io/a/b@sha256:ab"
        );
    }

    #[test]
    fn argv_as_ipa_builds_it() {
        let a = run_args(&req(), "foo.tld/org/img:1", false, None);
        assert_eq!(
            a.join(" "),
            "--log-level=debug run --rm --privileged --pid=host --pull=never -v /var/lib/containers:/var/lib/containers -v /dev:/dev foo.tld/org/img:1 bootc install to-disk --wipe --skip-fetch-check --root-size=1139M --disable-selinux /dev/fake"
        );
        let mut r = req();
        r.tpm2_luks = true;
        r.device_bytes = 14_999_999_999;
        let a = run_args(&r, "x", true, Some(Path::new("/tmp/k")));
        assert_eq!(
            a.join(" "),
            "--log-level=debug run --rm --privileged --pid=host --pull=never -v /var/lib/containers:/var/lib/containers -v /dev:/dev -v /tmp:/tmp --security-opt label=type:unconfined_t x bootc install to-disk --wipe --skip-fetch-check --root-size=13537M --block-setup=tpm2-luks --root-ssh-authorized-keys=/tmp/k /dev/fake"
        );
    }

    #[test]
    fn the_auth_file_is_private_and_goes_away() {
        let f = write_auth_file("c2VjcmV0", "foo.tld").unwrap();
        let p = f.path.clone();
        let meta = std::fs::metadata(&p).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let v: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        assert_eq!(v, json!({"auths": {"foo.tld": {"auth": "secret"}}}));
        assert!(p
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("ipa-container-auth-"));
        let dir = p.parent().unwrap().to_owned();
        drop(f);
        assert!(!p.exists() && !dir.exists());
    }

    #[test]
    fn instance_info_settings() {
        let r = req().with_instance_info(
            &json!({"bootc_authorized_keys": "ssh-ed25519 AAA", "bootc_tpm2_luks": "true"}),
        );
        assert_eq!(r.authorized_keys.as_deref(), Some("ssh-ed25519 AAA"));
        assert!(r.tpm2_luks);
    }
}
