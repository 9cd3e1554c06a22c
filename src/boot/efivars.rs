//! UEFI variables through efivarfs (or a plain directory laid out the same way, for tests).
//!
//! A variable is the file `<Name>-<vendor GUID>`; its content is the 4-byte little-endian
//! attribute word followed by the data. Three efivarfs rules shape the writes (and are what
//! libefivar does for efibootmgr): the kernel marks most variable files immutable, so
//! `FS_IMMUTABLE_FL` is cleared before writing or deleting and restored after a write; a variable
//! must be written in a single `write()` (a partial write is an error, not a prefix); and
//! efivarfs replaces the whole variable on each write, so libefivar opens without `O_TRUNC`, while
//! a plain directory needs `O_TRUNC` to lose the old bytes, hence the file system check.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rustix::fs::IFlags;

use super::error::BootError;
use super::load_option::LoadOption;

/// `EFI_GLOBAL_VARIABLE`: the vendor GUID of `Boot####`, `BootOrder`, `BootCurrent`.
pub const EFI_GLOBAL_GUID: &str = "8be4df61-93ca-11d2-aa0d-00e098032b8c";
/// Where the kernel mounts efivarfs.
pub const DEFAULT_EFIVARS_DIR: &str = "/sys/firmware/efi/efivars";
/// `NON_VOLATILE | BOOTSERVICE_ACCESS | RUNTIME_ACCESS`, what efibootmgr gives boot variables.
pub const NV_BS_RT: u32 = 0x7;

const EFIVARFS_MAGIC: u32 = 0xde5e_81e4;

/// A variable's attribute word and data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variable {
    /// `EFI_VARIABLE_*` bits.
    pub attributes: u32,
    /// The value.
    pub data: Vec<u8>,
}

/// The UEFI global variables, read and written as files in an efivarfs-like directory.
#[derive(Debug, Clone)]
pub struct VarStore {
    dir: PathBuf,
    efivarfs: bool,
}

impl VarStore {
    /// The system's variables (`/sys/firmware/efi/efivars`).
    pub fn system() -> Result<VarStore, BootError> {
        VarStore::open(Path::new(DEFAULT_EFIVARS_DIR))
    }

    /// A store over `dir` (efivarfs, or any directory with the same layout).
    pub fn open(dir: &Path) -> Result<VarStore, BootError> {
        if !dir.is_dir() {
            return Err(BootError::NoEfivars(dir.to_path_buf()));
        }
        let efivarfs = rustix::fs::statfs(dir)
            // f_type is a C long whose width varies; the magic is 32 bits.
            .map(|s| s.f_type as u32 == EFIVARFS_MAGIC)
            .unwrap_or(false);
        Ok(VarStore {
            dir: dir.to_path_buf(),
            efivarfs,
        })
    }

    /// The directory this store works in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of a global variable.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}-{EFI_GLOBAL_GUID}"))
    }

    /// Reads a global variable; `None` when it does not exist.
    pub fn read(&self, name: &str) -> Result<Option<Variable>, BootError> {
        let path = self.path(name);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(var_err("read", path, source)),
        };
        if bytes.len() < 4 {
            return Err(BootError::BadVariable {
                name: name.to_string(),
                reason: format!("{} bytes, shorter than the attribute word", bytes.len()),
            });
        }
        let attributes = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        Ok(Some(Variable {
            attributes,
            data: bytes[4..].to_vec(),
        }))
    }

    /// Creates or replaces a global variable, in one `write()`.
    pub fn write(&self, name: &str, attributes: u32, data: &[u8]) -> Result<(), BootError> {
        let path = self.path(name);
        let mut buf = Vec::with_capacity(4 + data.len());
        buf.extend_from_slice(&attributes.to_le_bytes());
        buf.extend_from_slice(data);
        // Clearing the flag needs only a read-only descriptor; keep it to restore the flag.
        let existing = File::open(&path).ok();
        let mut restore = existing.as_ref().and_then(|f| make_mutable(f, &path));
        let mut opts = OpenOptions::new();
        opts.write(true).mode(0o644);
        if existing.is_none() {
            opts.create_new(true);
        } else if !self.efivarfs {
            opts.truncate(true);
        }
        let file = opts
            .open(&path)
            .map_err(|source| var_err("write", path.clone(), source))?;
        if existing.is_none() {
            // efivarfs may create the file immutable already.
            restore = make_mutable(&file, &path);
        }
        let written = (&file).write(&buf);
        if let Some(flags) = restore {
            let fd = existing.as_ref().unwrap_or(&file);
            if let Err(e) = rustix::fs::ioctl_setflags(fd, flags) {
                tracing::debug!("cannot restore the flags of {}: {e}", path.display());
            }
        }
        match written {
            Ok(n) if n == buf.len() => Ok(()),
            Ok(n) => Err(var_err(
                "write",
                path,
                io::Error::other(format!("short write: {n} of {} bytes", buf.len())),
            )),
            Err(source) => Err(var_err("write", path, source)),
        }
    }

    /// Deletes a variable by its full file name; false when it did not exist.
    fn delete_file(&self, file_name: &str) -> Result<bool, BootError> {
        let path = self.dir.join(file_name);
        match File::open(&path) {
            Ok(f) => {
                let _ = make_mutable(&f, &path);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(_) => {}
        }
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(var_err("delete", path, source)),
        }
    }

    /// Deletes a global variable; false when it did not exist.
    pub fn delete(&self, name: &str) -> Result<bool, BootError> {
        self.delete_file(&format!("{name}-{EFI_GLOBAL_GUID}"))
    }

    /// `BootOrder` and its attributes; `None` when it is not set.
    pub fn boot_order(&self) -> Result<Option<(Vec<u16>, u32)>, BootError> {
        let Some(v) = self.read("BootOrder")? else {
            return Ok(None);
        };
        if v.data.len() % 2 != 0 {
            // efibootmgr reads len/2 entries too; a broken order must not stop a deploy.
            tracing::warn!(
                "BootOrder has an odd length {}; ignoring its last byte",
                v.data.len()
            );
        }
        let order = v
            .data
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        // Some Apple firmware sets bit 31, which the kernel refuses on write (efibootmgr drops it).
        Ok(Some((order, v.attributes & !(1 << 31))))
    }

    /// Writes `BootOrder` with the given attributes; an empty order deletes the variable, as
    /// efibootmgr does.
    pub fn set_boot_order(&self, order: &[u16], attributes: u32) -> Result<(), BootError> {
        if order.is_empty() {
            self.delete("BootOrder")?;
            return Ok(());
        }
        let data: Vec<u8> = order.iter().flat_map(|n| n.to_le_bytes()).collect();
        self.write("BootOrder", attributes, &data)
    }

    /// `BootCurrent`, the entry the firmware booted this time.
    pub fn boot_current(&self) -> Result<Option<u16>, BootError> {
        Ok(self
            .read("BootCurrent")?
            .and_then(|v| <[u8; 2]>::try_from(v.data.as_slice()).ok())
            .map(u16::from_le_bytes))
    }

    /// The `Boot####` variables present, by number, with their file names (old tools wrote
    /// lowercase hex; those are listed too, as efibootmgr does).
    pub fn boot_numbers(&self) -> Result<Vec<(u16, String)>, BootError> {
        let rd = fs::read_dir(&self.dir).map_err(|e| var_err("read", self.dir.clone(), e))?;
        let suffix = format!("-{EFI_GLOBAL_GUID}");
        let mut out = Vec::new();
        for entry in rd {
            let entry = entry.map_err(|e| var_err("read", self.dir.clone(), e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(hex) = name
                .strip_suffix(&suffix)
                .and_then(|n| n.strip_prefix("Boot"))
            else {
                continue;
            };
            if hex.len() == 4 && hex.bytes().all(|c| c.is_ascii_hexdigit()) {
                if let Ok(n) = u16::from_str_radix(hex, 16) {
                    out.push((n, name));
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Reads a `Boot####` variable by its file name: attributes and data.
    pub fn read_boot_file(&self, file_name: &str) -> Result<Option<(u32, Vec<u8>)>, BootError> {
        let path = self.dir.join(file_name);
        match fs::read(&path) {
            Ok(b) if b.len() >= 4 => Ok(Some((
                u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
                b[4..].to_vec(),
            ))),
            Ok(b) => Err(BootError::BadVariable {
                name: file_name.to_string(),
                reason: format!("{} bytes, shorter than the attribute word", b.len()),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(var_err("read", path, source)),
        }
    }

    /// Writes `Boot####` (uppercase hex, as the spec requires) with [`NV_BS_RT`].
    pub fn write_boot(&self, number: u16, option: &LoadOption) -> Result<(), BootError> {
        self.write(&boot_name(number), NV_BS_RT, &option.encode())
    }

    /// Deletes a `Boot####` variable by its file name (see [`VarStore::boot_numbers`]).
    pub fn delete_boot_file(&self, file_name: &str) -> Result<bool, BootError> {
        self.delete_file(file_name)
    }
}

/// `Boot####`, uppercase hex.
pub fn boot_name(number: u16) -> String {
    format!("Boot{number:04X}")
}

fn var_err(action: &'static str, path: PathBuf, source: io::Error) -> BootError {
    BootError::Variable {
        action,
        path,
        source,
    }
}

/// Clears `FS_IMMUTABLE_FL` on an open variable file; returns the original flags when it was
/// set, to restore them. A directory without inode flags (tmpfs, overlay) answers
/// ENOTTY/EOPNOTSUPP: nothing to do there.
fn make_mutable(file: &File, path: &Path) -> Option<IFlags> {
    let flags = match rustix::fs::ioctl_getflags(file) {
        Ok(f) => f,
        Err(e) if e == rustix::io::Errno::NOTTY || e == rustix::io::Errno::OPNOTSUPP => {
            return None
        }
        Err(e) => {
            tracing::debug!("cannot read the flags of {}: {e}", path.display());
            return None;
        }
    };
    if !flags.contains(IFlags::IMMUTABLE) {
        return None;
    }
    if let Err(e) = rustix::fs::ioctl_setflags(file, flags - IFlags::IMMUTABLE) {
        tracing::warn!("cannot clear the immutable flag of {}: {e}", path.display());
        return None;
    }
    Some(flags)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_layout_and_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let vars = VarStore::open(dir.path()).unwrap();
        vars.write("BootOrder", NV_BS_RT, &[1, 0, 0, 0]).unwrap();
        let raw = fs::read(dir.path().join(format!("BootOrder-{EFI_GLOBAL_GUID}"))).unwrap();
        assert_eq!(raw, [7, 0, 0, 0, 1, 0, 0, 0], "attributes LE, then data");
        assert_eq!(vars.boot_order().unwrap(), Some((vec![1, 0], 7)));
        // a shorter value replaces the longer one entirely
        vars.set_boot_order(&[5], 7).unwrap();
        assert_eq!(vars.boot_order().unwrap(), Some((vec![5], 7)));
        vars.set_boot_order(&[], 7).unwrap();
        assert_eq!(vars.boot_order().unwrap(), None);
        assert!(!vars.delete("BootOrder").unwrap());
        assert_eq!(vars.boot_current().unwrap(), None);
        vars.write("BootCurrent", 6, &[0x0a, 0]).unwrap();
        assert_eq!(vars.boot_current().unwrap(), Some(10));
        vars.write("BootOrder", 7, &[3, 0, 9]).unwrap();
        assert_eq!(vars.boot_order().unwrap(), Some((vec![3], 7)));
    }

    #[test]
    fn boot_numbers_lists_only_boot_entries() {
        let dir = tempfile::tempdir().unwrap();
        let vars = VarStore::open(dir.path()).unwrap();
        for name in [
            "Boot000A",
            "Boot0001",
            "BootOrder",
            "BootNext",
            "Boot00ab",
            "Boot12345",
        ] {
            vars.write(name, 7, &[0, 0]).unwrap();
        }
        fs::write(
            dir.path()
                .join("Boot0002-00000000-0000-0000-0000-000000000000"),
            [7, 0, 0, 0],
        )
        .unwrap();
        let nums: Vec<u16> = vars
            .boot_numbers()
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(nums, vec![1, 10, 0xab]);
        assert!(VarStore::open(&dir.path().join("nope")).is_err());
    }
}
