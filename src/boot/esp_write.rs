//! Writing into the EFI System Partition natively with `fatfs`, for the GRUB2 path of
//! `install_bootloader` ([`super::grub`]): where IPA mounts the ESP (vfat) and copies a tree
//! into it with `shutil.copytree`, rivet opens the FAT file system inside the partition's byte
//! range of the disk and writes the files itself. rivet's ramdisk has no vfat driver, so a
//! mount is not an option; this also leaves nothing mounted if the agent dies half-way.
//!
//! Only regular files and directories are copied: a symlink in the deployed image is skipped
//! (FAT has none, and following it would read the ramdisk's files, not the image's).

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;

use super::partitions::Partition;
use super::window::PartitionWindow;

/// Directory depth the copies give up at (real ESP trees are 2-3 deep; a FAT can loop).
const MAX_DEPTH: usize = 32;

/// The FAT file system of an ESP, opened for writing.
pub(crate) type FatRw = fatfs::FileSystem<PartitionWindow>;

/// Opens the FAT file system of partition `part` of `disk` read-write.
pub(crate) fn open_rw(disk: &Path, part: &Partition) -> io::Result<FatRw> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(disk)?;
    let rw = PartitionWindow::read_write(file, part.offset(), part.len());
    fatfs::FileSystem::new(rw, fatfs::FsOptions::new())
}

/// Copies the directory tree `src` (on the host) to `dest` (a `/`-separated path on the FAT,
/// `""` for its root): directories are created or reused, files overwritten. Returns the
/// number of files written.
pub(crate) fn copy_into(fs: &FatRw, src: &Path, dest: &str) -> io::Result<usize> {
    let dir = if dest.is_empty() {
        fs.root_dir()
    } else {
        fs.root_dir().create_dir(dest)?
    };
    copy_dir_into(&dir, src, 0)
}

fn copy_dir_into(
    dir: &fatfs::Dir<'_, PartitionWindow>,
    src: &Path,
    depth: usize,
) -> io::Result<usize> {
    if depth > MAX_DEPTH {
        return Err(io::Error::other(format!(
            "{} is nested too deep",
            src.display()
        )));
    }
    let mut written = 0;
    let mut entries: Vec<_> = std::fs::read_dir(src)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name();
        let Some(name) = name.to_str() else {
            tracing::warn!("skipping {}: not a UTF-8 name", e.path().display());
            continue;
        };
        let kind = e.file_type()?;
        if kind.is_dir() {
            let sub = dir.create_dir(name)?;
            written += copy_dir_into(&sub, &e.path(), depth + 1)?;
        } else if kind.is_file() {
            let mut from = File::open(e.path())?;
            let mut to = dir.create_file(name)?;
            io::copy(&mut from, &mut to)?;
            to.truncate()?;
            to.flush()?;
            written += 1;
        } else {
            tracing::warn!("skipping {}: not a file or a directory", e.path().display());
        }
    }
    Ok(written)
}

/// Copies the whole FAT tree into the host directory `dest` (which exists).
pub(crate) fn copy_out(fs: &FatRw, dest: &Path) -> io::Result<usize> {
    copy_dir_out(&fs.root_dir(), dest, 0)
}

fn copy_dir_out(
    dir: &fatfs::Dir<'_, PartitionWindow>,
    dest: &Path,
    depth: usize,
) -> io::Result<usize> {
    if depth > MAX_DEPTH {
        tracing::warn!("not copying below {}: too deep", dest.display());
        return Ok(0);
    }
    let mut written = 0;
    for entry in dir.iter() {
        let entry = entry?;
        let name = entry.file_name();
        if name == "." || name == ".." || name.contains('/') {
            continue;
        }
        let to = dest.join(&name);
        if entry.is_dir() {
            std::fs::create_dir_all(&to)?;
            written += copy_dir_out(&entry.to_dir(), &to, depth + 1)?;
        } else {
            let mut out = File::create(&to)?;
            io::copy(&mut entry.to_file(), &mut out)?;
            written += 1;
        }
    }
    Ok(written)
}

/// Whether `path` (`/`-separated) exists on the FAT as a file.
pub(crate) fn has_file(fs: &FatRw, path: &str) -> bool {
    fs.root_dir().open_file(path).is_ok()
}
