//! NVMe secure erase (IPA's `_nvme_erase`) through the kernel's NVMe admin passthrough
//! (NVME_IOCTL_ADMIN_CMD) on the namespace's block device, where IPA runs `nvme id-ctrl` and
//! `nvme format -s N -f` from nvme-cli.
//!
//! - Identify Controller (opcode 0x06, CNS 1): OACS bit 1 says Format NVM is supported
//!   (else IPA's error); FNA bit 2 says cryptographic erase is supported: SES=2, else SES=1
//!   (user-data erase).
//! - Identify Namespace (CNS 0) gives the current LBA format, metadata setting and
//!   protection information, which the Format keeps (nvme-cli keeps the LBA format too), so
//!   the erase never changes the sector size.
//! - Format NVM (opcode 0x80) on the namespace id, with a one-hour timeout (a user-data
//!   erase of a large drive is slow; the kernel's default admin timeout is 60 s).
//! - Then BLKRRPART, as nvme-cli does, so the kernel re-reads the (now empty) namespace.
//!
//! The commands go through the [`NvmeAdmin`] trait. There is no NVMe device on the machines
//! that run the tests, so the tests drive the logic with a recording fake that serves
//! identify data and records every command (opcode, nsid, cdw10); only [`NvmeDevice`] (a
//! few lines of ioctl) is untested here.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

use super::error::EraseError;

const ADMIN_IDENTIFY: u8 = 0x06;
const ADMIN_FORMAT_NVM: u8 = 0x80;
const OACS_FORMAT: u16 = 1 << 1;
const FNA_CRYPTO_ERASE: u8 = 1 << 2;
/// Timeout of the Format command.
pub(super) const FORMAT_TIMEOUT_MS: u32 = 3_600_000;

/// One admin command: the fields rivet sets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AdminCmd {
    /// Opcode.
    pub opcode: u8,
    /// Namespace id.
    pub nsid: u32,
    /// Command dword 10.
    pub cdw10: u32,
    /// Timeout in ms (0: the driver's default).
    pub timeout_ms: u32,
}

/// A failed admin command.
#[derive(Debug, thiserror::Error)]
pub enum NvmeError {
    /// The ioctl itself failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The controller answered with a non-zero status.
    #[error("NVMe status {0:#x}")]
    Status(u32),
}

/// The admin command layer: the real ioctl, or a fake in tests.
pub trait NvmeAdmin {
    /// The namespace id of the block device (NVME_IOCTL_ID).
    fn namespace_id(&self) -> io::Result<u32>;
    /// Runs `cmd`, with `data` as the data buffer (controller to host for identify).
    fn admin(&self, cmd: &AdminCmd, data: Option<&mut [u8]>) -> Result<u32, NvmeError>;
    /// Asks the kernel to re-read the namespace's partitions.
    fn reread_partitions(&self) -> io::Result<()>;
}

/// `struct nvme_passthru_cmd` of <linux/nvme_ioctl.h> (72 bytes).
#[repr(C)]
#[derive(Default)]
struct PassthruCmd {
    opcode: u8,
    flags: u8,
    rsvd1: u16,
    nsid: u32,
    cdw2: u32,
    cdw3: u32,
    metadata: u64,
    addr: u64,
    metadata_len: u32,
    data_len: u32,
    cdw10: u32,
    cdw11: u32,
    cdw12: u32,
    cdw13: u32,
    cdw14: u32,
    cdw15: u32,
    timeout_ms: u32,
    result: u32,
}

// _IO('N', 0x40) and _IOWR('N', 0x41, struct nvme_passthru_cmd)
const NVME_IOCTL_ID: libc::c_ulong = 0x4e40;
const NVME_IOCTL_ADMIN_CMD: libc::c_ulong = 0xc048_4e41;

/// A real NVMe namespace block device.
pub struct NvmeDevice(File);

impl NvmeDevice {
    /// Opens the namespace block device (read-only is enough for admin passthrough as root).
    pub fn open(path: &Path) -> io::Result<NvmeDevice> {
        Ok(NvmeDevice(File::open(path)?))
    }
}

impl NvmeAdmin for NvmeDevice {
    fn namespace_id(&self) -> io::Result<u32> {
        // SAFETY: NVME_IOCTL_ID takes no argument and returns the id.
        let rc = unsafe { libc::ioctl(self.0.as_raw_fd(), NVME_IOCTL_ID as _) };
        u32::try_from(rc).map_err(|_| io::Error::last_os_error())
    }

    fn admin(&self, cmd: &AdminCmd, data: Option<&mut [u8]>) -> Result<u32, NvmeError> {
        let (addr, len) = match data {
            Some(d) => (
                d.as_mut_ptr() as u64,
                u32::try_from(d.len()).unwrap_or(u32::MAX),
            ),
            None => (0, 0),
        };
        let mut c = PassthruCmd {
            opcode: cmd.opcode,
            nsid: cmd.nsid,
            addr,
            data_len: len,
            cdw10: cmd.cdw10,
            timeout_ms: cmd.timeout_ms,
            ..PassthruCmd::default()
        };
        // SAFETY: the kernel reads the command struct and writes at most `data_len` bytes to
        // `addr`, a buffer borrowed mutably for this whole call; it writes `result` back into
        // the struct, which lives on this stack frame.
        let rc = unsafe {
            libc::ioctl(
                self.0.as_raw_fd(),
                NVME_IOCTL_ADMIN_CMD as _,
                &mut c as *mut PassthruCmd,
            )
        };
        match rc {
            0 => Ok(c.result),
            r if r < 0 => Err(NvmeError::Io(io::Error::last_os_error())),
            r => Err(NvmeError::Status(r as u32)),
        }
    }

    fn reread_partitions(&self) -> io::Result<()> {
        super::kernel::reread_partitions(&self.0)
    }
}

/// The Format NVM cdw10 that keeps the namespace's current format and erases with `ses`.
fn format_cdw10(id_ns: &[u8], ses: u32) -> u32 {
    let flbas = u32::from(id_ns[26]);
    let dps = u32::from(id_ns[29]);
    let lbaf = (flbas & 0xf) | (((flbas >> 5) & 0x3) << 4);
    let mset = (flbas >> 4) & 1;
    let pi = dps & 0x7;
    let pil = (dps >> 3) & 1;
    (lbaf & 0xf) | (mset << 4) | (pi << 5) | (pil << 8) | (ses << 9) | ((lbaf >> 4) << 12)
}

/// IPA's `_nvme_erase`: Ok(ses) after a successful format (2 = crypto, 1 = user data).
pub(super) fn nvme_erase(device: &str, nvme: &dyn NvmeAdmin) -> Result<u32, EraseError> {
    let fetch_err = |e: &dyn std::fmt::Display| {
        EraseError::BlockDeviceErase(format!(
            "Failed to fetch NVMe capabilities for device {device}: {e}"
        ))
    };
    let mut id_ctrl = vec![0u8; 4096];
    let identify = AdminCmd {
        opcode: ADMIN_IDENTIFY,
        cdw10: 1,
        ..AdminCmd::default()
    };
    nvme.admin(&identify, Some(&mut id_ctrl))
        .map_err(|e| fetch_err(&e))?;
    if id_ctrl.iter().all(|&b| b == 0) {
        return Err(EraseError::BlockDeviceErase(format!(
            "nvme-cli did not return any information for device: {device}"
        )));
    }
    let oacs = u16::from_le_bytes([id_ctrl[256], id_ctrl[257]]);
    if oacs & OACS_FORMAT == 0 {
        return Err(EraseError::BlockDeviceErase(format!(
            "nvme-cli did not return any supported format modes for device: {device}"
        )));
    }
    let ses = if id_ctrl[524] & FNA_CRYPTO_ERASE != 0 {
        2
    } else {
        1
    };
    let nsid = nvme.namespace_id().map_err(|e| fetch_err(&e))?;
    let mut id_ns = vec![0u8; 4096];
    let identify_ns = AdminCmd {
        opcode: ADMIN_IDENTIFY,
        nsid,
        cdw10: 0,
        ..AdminCmd::default()
    };
    nvme.admin(&identify_ns, Some(&mut id_ns))
        .map_err(|e| fetch_err(&e))?;
    let format = AdminCmd {
        opcode: ADMIN_FORMAT_NVM,
        nsid,
        cdw10: format_cdw10(&id_ns, ses),
        timeout_ms: FORMAT_TIMEOUT_MS,
    };
    tracing::info!(device, ses, "NVMe format");
    nvme.admin(&format, None).map_err(|e| {
        EraseError::BlockDeviceErase(format!("Failed to nvme format device {device}: {e}"))
    })?;
    if let Err(e) = nvme.reread_partitions() {
        tracing::debug!(device, error = %e, "BLKRRPART after NVMe format failed");
    }
    Ok(ses)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::cell::RefCell;

    /// A recording fake controller.
    pub(crate) struct FakeNvme {
        pub oacs: u16,
        pub fna: u8,
        pub flbas: u8,
        pub dps: u8,
        pub format_status: Option<u32>,
        pub identify_fails: bool,
        pub log: RefCell<Vec<AdminCmd>>,
    }

    impl FakeNvme {
        pub(crate) fn new(oacs: u16, fna: u8) -> FakeNvme {
            FakeNvme {
                oacs,
                fna,
                flbas: 0,
                dps: 0,
                format_status: None,
                identify_fails: false,
                log: RefCell::new(vec![]),
            }
        }
    }

    impl NvmeAdmin for FakeNvme {
        fn namespace_id(&self) -> io::Result<u32> {
            Ok(1)
        }
        fn admin(&self, cmd: &AdminCmd, data: Option<&mut [u8]>) -> Result<u32, NvmeError> {
            self.log.borrow_mut().push(*cmd);
            match (cmd.opcode, cmd.cdw10, data) {
                (ADMIN_IDENTIFY, _, _) if self.identify_fails => {
                    Err(NvmeError::Io(io::Error::from_raw_os_error(libc::EINVAL)))
                }
                (ADMIN_IDENTIFY, 1, Some(d)) => {
                    d[256..258].copy_from_slice(&self.oacs.to_le_bytes());
                    d[524] = self.fna;
                    d[0] = 0x86; // vendor id, so the page is not blank
                    Ok(0)
                }
                (ADMIN_IDENTIFY, 0, Some(d)) => {
                    d[26] = self.flbas;
                    d[29] = self.dps;
                    Ok(0)
                }
                (ADMIN_FORMAT_NVM, _, None) => self
                    .format_status
                    .map_or(Ok(0), |s| Err(NvmeError::Status(s))),
                _ => Err(NvmeError::Status(0x1)),
            }
        }
        fn reread_partitions(&self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn passthru_struct_is_72_bytes() {
        assert_eq!(std::mem::size_of::<PassthruCmd>(), 72);
    }

    #[test]
    fn crypto_erase_when_fna_says_so() {
        let fake = FakeNvme::new(0x2, 0x4);
        assert_eq!(nvme_erase("/dev/nvme0n1", &fake), Ok(2));
        let log = fake.log.borrow();
        assert_eq!(log.len(), 3);
        assert_eq!(log[2].opcode, ADMIN_FORMAT_NVM);
        assert_eq!(log[2].nsid, 1);
        assert_eq!(log[2].cdw10, 2 << 9);
        assert_eq!(log[2].timeout_ms, FORMAT_TIMEOUT_MS);
    }

    #[test]
    fn user_data_erase_keeps_the_lba_format() {
        let mut fake = FakeNvme::new(0x2 | 0x8, 0x1);
        fake.flbas = 0x12; // format 2, metadata at the end of the LBA
        fake.dps = 0x9; // PI type 1, first bytes
        assert_eq!(nvme_erase("/dev/nvme0n1", &fake), Ok(1));
        let cdw10 = fake.log.borrow()[2].cdw10;
        assert_eq!(cdw10, 2 | (1 << 4) | (1 << 5) | (1 << 8) | (1 << 9));
    }

    #[test]
    fn no_format_support_is_ipas_error() {
        let fake = FakeNvme::new(0x0, 0x4);
        let e = nvme_erase("/dev/nvme0n1", &fake).unwrap_err();
        assert_eq!(
            e.details(),
            "nvme-cli did not return any supported format modes for device: /dev/nvme0n1"
        );
        assert_eq!(fake.log.borrow().len(), 1, "no format sent");
    }

    #[test]
    fn failures_are_block_device_erase_errors() {
        let mut fake = FakeNvme::new(0x2, 0);
        fake.identify_fails = true;
        let e = nvme_erase("/dev/nvme0n1", &fake).unwrap_err();
        assert!(e
            .details()
            .starts_with("Failed to fetch NVMe capabilities for device /dev/nvme0n1: "));
        let mut fake = FakeNvme::new(0x2, 0);
        fake.format_status = Some(0x4002);
        let e = nvme_erase("/dev/nvme0n1", &fake).unwrap_err();
        assert_eq!(
            e.details(),
            "Failed to nvme format device /dev/nvme0n1: NVMe status 0x4002"
        );
    }
}
