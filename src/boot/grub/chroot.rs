//! The deployed image's root file system mounted on a temporary directory with `/dev`, `/proc`,
//! `/run` bound and a `sysfs` mounted in it (IPA's `_mount_for_chroot`), so that grub's tools
//! run in it with `chroot`; a guard ([`Chroot`]) unmounts everything in reverse order on every
//! exit path (lazily when a mount stays busy) and removes the directory once it is empty.
//!
//! The mounts are made with the `mount(2)` syscall (rustix), not the `mount` tool: the guard
//! then knows exactly what it mounted and where, failures carry the errno, and the ramdisk
//! needs no util-linux `mount`. The file system type the syscall wants comes from blkid, which
//! found the partition anyway ([`super::locate`]).
//!
//! The image is untrusted: its directories are walked component by component and a symlink on
//! the way to a mount point is refused (else `/dev -> /somewhere` would mount over a directory of
//! the ramdisk); its files are opened with `openat2(RESOLVE_IN_ROOT)` so that their symlinks
//! resolve inside the image.

use std::fs::File;
use std::path::{Component, Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::mount::{MountFlags, UnmountFlags};

use super::GrubError;
use crate::deploy::partition_image::PartDev;
use crate::external;

/// IPA's `BIND_MOUNTS`.
pub(crate) const BIND_MOUNTS: [&str; 3] = ["/dev", "/proc", "/run"];

/// A mounted root file system and what is mounted inside it.
pub(crate) struct Chroot {
    root: PathBuf,
    /// Mount points, in the order they were mounted.
    mounts: Vec<PathBuf>,
    /// The root partition's device (a loop device over its range is detached after the
    /// unmount: fields drop after [`Drop::drop`]).
    part: PartDev,
}

fn io_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> GrubError + 'a {
    move |source| GrubError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

impl Chroot {
    /// Mounts `part` (a file system of type `fstype`) on a new temporary directory.
    pub(crate) fn mount_root(part: PartDev, fstype: &str) -> Result<Chroot, GrubError> {
        let tmp = tempfile::Builder::new()
            .prefix("rivet-grub-")
            .tempdir()
            .map_err(io_err("create", &std::env::temp_dir()))?;
        let mut me = Chroot {
            root: tmp.keep(),
            mounts: Vec::new(),
            part,
        };
        rustix::mount::mount(&me.part.path, &me.root, fstype, MountFlags::empty(), None).map_err(
            |e| GrubError::Io {
                action: "mount",
                path: me.part.path.clone(),
                source: e.into(),
            },
        )?;
        me.mounts.push(me.root.clone());
        tracing::debug!(
            "mounted {} on {}",
            me.part.path.display(),
            me.root.display()
        );
        Ok(me)
    }

    /// The mounted root.
    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// IPA's `_mount_for_chroot`: binds `/dev`, `/proc`, `/run` and mounts a sysfs on `/sys`.
    pub(crate) fn mount_for_chroot(&mut self) -> Result<(), GrubError> {
        for fs in BIND_MOUNTS {
            let target = self.dir_inside(fs)?;
            rustix::mount::mount_bind(fs, &target).map_err(|e| GrubError::Io {
                action: "bind-mount",
                path: target.clone(),
                source: e.into(),
            })?;
            self.mounts.push(target);
        }
        let sys = self.dir_inside("/sys")?;
        rustix::mount::mount("none", &sys, "sysfs", MountFlags::empty(), None).map_err(|e| {
            GrubError::Io {
                action: "mount sysfs on",
                path: sys.clone(),
                source: e.into(),
            }
        })?;
        self.mounts.push(sys);
        Ok(())
    }

    /// Mounts an empty tmpfs on `rel` inside the root (made if missing); returns its path.
    pub(crate) fn mount_tmpfs(&mut self, rel: &str) -> Result<PathBuf, GrubError> {
        let target = self.dir_inside(rel)?;
        rustix::mount::mount(
            "rivet-esp",
            &target,
            "tmpfs",
            MountFlags::NOSUID,
            c"mode=0700",
        )
        .map_err(|e| GrubError::Io {
            action: "mount a tmpfs on",
            path: target.clone(),
            source: e.into(),
        })?;
        self.mounts.push(target.clone());
        Ok(target)
    }

    /// The directory `rel` inside the root, made if missing; a symlink on the way is refused.
    pub(crate) fn dir_inside(&self, rel: &str) -> Result<PathBuf, GrubError> {
        let mut at = self.root.clone();
        for c in Path::new(rel).components() {
            let Component::Normal(name) = c else {
                continue;
            };
            at.push(name);
            match std::fs::symlink_metadata(&at) {
                Ok(m) if m.file_type().is_dir() => {}
                Ok(_) => {
                    return Err(GrubError::Io {
                        action: "use",
                        path: at,
                        source: std::io::Error::other(
                            "not a directory (or a symlink) in the image",
                        ),
                    })
                }
                Err(_) => std::fs::create_dir(&at).map_err(io_err("create", &at))?,
            }
        }
        Ok(at)
    }

    /// Whether `rel` is a directory of the image, without following a symlink on the way.
    pub(crate) fn is_dir_inside(&self, rel: &str) -> bool {
        let mut at = self.root.clone();
        Path::new(rel).components().all(|c| match c {
            Component::Normal(name) => {
                at.push(name);
                std::fs::symlink_metadata(&at).is_ok_and(|m| m.file_type().is_dir())
            }
            _ => true,
        })
    }

    /// Opens the image's file `rel` with its symlinks resolved inside the image.
    pub(crate) fn open_inside(&self, rel: &str, flags: OFlags) -> std::io::Result<File> {
        let dir = File::open(&self.root)?;
        let fd = rustix::fs::openat2(
            &dir,
            rel.trim_start_matches('/'),
            flags | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        )?;
        Ok(File::from(fd))
    }

    /// Whether the image has a regular file `rel` (symlinks resolved inside the image).
    pub(crate) fn has_file(&self, rel: &str) -> bool {
        self.open_inside(rel, OFlags::PATH)
            .and_then(|f| f.metadata())
            .is_ok_and(|m| m.is_file())
    }

    /// IPA's `chroot <root> /bin/sh -c "<script>"` with exactly the environment `env`.
    pub(crate) fn run(&self, script: &str, env: &[(&str, &str)]) -> Result<String, GrubError> {
        let mut c = Command::new("chroot");
        c.arg(&self.root)
            .args(["/bin/sh", "-c", script])
            .env_clear()
            .envs(env.iter().copied());
        tracing::debug!("running in the chroot: {script}");
        external::run_command(&mut c, "chroot").map_err(|f| GrubError::Command {
            cmd: format!("chroot {} /bin/sh -c \"{script}\"", self.root.display()),
            rc: f.rc,
            stdout: f.stdout,
            stderr: f.stderr,
        })
    }
}

/// Unmounts `path`: three tries a second apart (IPA's `attempts=3, delay_on_retry`), then a
/// lazy unmount. True when it is no longer mounted here.
fn unmount(path: &Path) -> bool {
    for attempt in 0..3 {
        match rustix::mount::unmount(path, UnmountFlags::empty()) {
            Ok(()) => return true,
            Err(e) => {
                tracing::warn!("Unable to umount {}. Error: {e}", path.display());
                if attempt < 2 {
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        }
    }
    match rustix::mount::unmount(path, UnmountFlags::DETACH) {
        Ok(()) => true,
        Err(e) => {
            tracing::error!("lazy unmount of {} failed: {e}", path.display());
            false
        }
    }
}

impl Drop for Chroot {
    fn drop(&mut self) {
        tracing::debug!("Executing _install_grub2 clean-up.");
        let mut all = true;
        while let Some(m) = self.mounts.pop() {
            all &= unmount(&m);
        }
        // Only an empty directory is removed: never a recursive delete near a mount.
        if all {
            if let Err(e) = std::fs::remove_dir(&self.root) {
                tracing::warn!("cannot remove {}: {e}", self.root.display());
            }
        } else {
            tracing::warn!(
                "{} left in place: something is still mounted",
                self.root.display()
            );
        }
    }
}
