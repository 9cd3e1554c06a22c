//! Partition type codes rivet writes and looks for (GPT type GUIDs, MBR system ids).

/// What a partition is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PartKind {
    /// EFI system partition.
    Esp,
    /// BIOS boot partition (GRUB's core image on GPT disks).
    BiosBoot,
    /// Linux swap.
    Swap,
    /// A Linux file system (root, ephemeral).
    Linux,
    /// A config drive (FAT type on MBR, Linux data on GPT, as IPA).
    ConfigDrive,
}

/// EFI System partition.
pub(crate) const GPT_ESP: &str = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b";
/// BIOS boot partition.
pub(crate) const GPT_BIOS_BOOT: &str = "21686148-6449-6e6f-744e-656564454649";
/// Linux swap.
pub(crate) const GPT_LINUX_SWAP: &str = "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f";
/// Linux file system data.
pub(crate) const GPT_LINUX_DATA: &str = "0fc63daf-8483-4772-8e79-3d69d8477de4";

/// MBR system id of an EFI system partition.
pub(crate) const MBR_ESP: u8 = 0xef;

impl PartKind {
    /// The GPT partition type GUID.
    pub(crate) fn gpt_type(self) -> &'static str {
        match self {
            PartKind::Esp => GPT_ESP,
            PartKind::BiosBoot => GPT_BIOS_BOOT,
            PartKind::Swap => GPT_LINUX_SWAP,
            PartKind::Linux | PartKind::ConfigDrive => GPT_LINUX_DATA,
        }
    }

    /// The MBR system id.
    pub(crate) fn mbr_type(self) -> u8 {
        match self {
            PartKind::Esp => MBR_ESP,
            PartKind::Swap => 0x82,
            PartKind::ConfigDrive => 0x0c,
            PartKind::Linux | PartKind::BiosBoot => 0x83,
        }
    }
}
