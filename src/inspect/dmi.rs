//! System identity and installed memory from the firmware's tables: the kernel's DMI view
//! (`/sys/class/dmi/id`), the raw SMBIOS structures (`/sys/firmware/dmi/tables/DMI`) for the
//! memory devices, and the device tree on machines without DMI. IPA asks `lshw`, which reads
//! the same tables; rivet reproduces what lshw reports (including the SKU it appends to the
//! product name).

use super::machine::Machine;
use super::model::{Firmware, SystemVendor};

/// `system_vendor`: from DMI, else the device tree (model, serial number), else empty
/// strings (IPA's values when lshw finds nothing).
pub(crate) fn system_vendor(m: &Machine) -> SystemVendor {
    let id = |f: &str| {
        m.read(&format!("/sys/class/dmi/id/{f}"))
            .unwrap_or_default()
    };
    if m.path("/sys/class/dmi/id").is_dir() {
        let product = id("product_name");
        let sku = id("product_sku");
        return SystemVendor {
            product_name: if sku.is_empty() {
                product
            } else {
                format!("{product} ({sku})")
            },
            serial_number: id("product_serial"),
            manufacturer: id("sys_vendor"),
            firmware: Firmware {
                vendor: id("bios_vendor"),
                version: id("bios_version"),
                build_date: id("bios_date"),
            },
        };
    }
    // Device-tree strings end with a NUL, which read() keeps: drop it.
    let dt = |f: &str| {
        m.read(&format!("/proc/device-tree/{f}"))
            .map(|s| s.trim_end_matches('\0').to_string())
            .unwrap_or_default()
    };
    SystemVendor {
        product_name: dt("model"),
        serial_number: dt("serial-number"),
        manufacturer: String::new(),
        firmware: Firmware {
            vendor: String::new(),
            version: String::new(),
            build_date: String::new(),
        },
    }
}

/// SMBIOS structure types used here.
const MEMORY_ARRAY: u8 = 16;
const MEMORY_DEVICE: u8 = 17;
const END_OF_TABLE: u8 = 127;
/// Memory array "use" 03h: system memory (not video, flash, NVRAM or cache).
const USE_SYSTEM_MEMORY: u8 = 3;

/// The installed memory in MiB: the sum of the SMBIOS memory devices (type 17) that belong
/// to a system-memory array, as lshw adds up its banks. `None` without a table or devices.
pub(crate) fn smbios_memory_mb(m: &Machine) -> Option<u64> {
    let table = std::fs::read(m.path("/sys/firmware/dmi/tables/DMI")).ok()?;
    sum_memory_devices(&table).map(|bytes| bytes >> 20)
}

/// The formatted part of each structure, in table order: (type, handle, bytes).
fn structures(table: &[u8]) -> Vec<(u8, u16, &[u8])> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos + 4 <= table.len() {
        let (kind, len) = (table[pos], table[pos + 1] as usize);
        if len < 4 || pos + len > table.len() {
            break;
        }
        let handle = u16::from_le_bytes([table[pos + 2], table[pos + 3]]);
        out.push((kind, handle, &table[pos..pos + len]));
        if kind == END_OF_TABLE {
            break;
        }
        // The strings follow the formatted part and end with two NULs.
        let mut end = pos + len;
        while end + 1 < table.len() && !(table[end] == 0 && table[end + 1] == 0) {
            end += 1;
        }
        pos = end + 2;
    }
    out
}

/// Bytes of memory the type-17 structures describe.
fn sum_memory_devices(table: &[u8]) -> Option<u64> {
    let structs = structures(table);
    let system_arrays: Vec<u16> = structs
        .iter()
        .filter(|(k, _, d)| *k == MEMORY_ARRAY && d.len() > 5 && d[5] == USE_SYSTEM_MEMORY)
        .map(|(_, h, _)| *h)
        .collect();
    let mut total = 0u64;
    let mut found = false;
    for (_, _, d) in structs.iter().filter(|(k, _, _)| *k == MEMORY_DEVICE) {
        if d.len() < 0x0e {
            continue;
        }
        let array = u16::from_le_bytes([d[4], d[5]]);
        // 0xFFFE: no array given; keep such devices rather than lose them.
        if array != 0xfffe && !system_arrays.is_empty() && !system_arrays.contains(&array) {
            continue;
        }
        if let Some(bytes) = device_size(d) {
            total += bytes;
            found = true;
        }
    }
    found.then_some(total)
}

/// Size of one memory device: `Size` (MiB, or KiB with bit 15), or `Extended Size` (MiB)
/// when `Size` is 7FFFh. `None`: empty slot or unknown size.
fn device_size(d: &[u8]) -> Option<u64> {
    let size = u16::from_le_bytes([d[0x0c], d[0x0d]]);
    match size {
        0 | 0xffff => None,
        0x7fff if d.len() >= 0x20 => {
            let ext = u32::from_le_bytes([d[0x1c], d[0x1d], d[0x1e], d[0x1f]]) & 0x7fff_ffff;
            Some(u64::from(ext) << 20)
        }
        s if s & 0x8000 != 0 => Some(u64::from(s & 0x7fff) << 10),
        s => Some(u64::from(s) << 20),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One structure: header, formatted bytes, no strings.
    fn structure(kind: u8, handle: u16, body: &[u8]) -> Vec<u8> {
        let mut s = vec![kind, (body.len() + 4) as u8];
        s.extend_from_slice(&handle.to_le_bytes());
        s.extend_from_slice(body);
        s.extend_from_slice(&[0, 0]);
        s
    }

    fn device(array: u16, size: u16, ext: u32) -> Vec<u8> {
        let mut body = vec![0u8; 0x28 - 4];
        body[0..2].copy_from_slice(&array.to_le_bytes());
        body[0x0c - 4..0x0e - 4].copy_from_slice(&size.to_le_bytes());
        body[0x1c - 4..0x20 - 4].copy_from_slice(&ext.to_le_bytes());
        structure(MEMORY_DEVICE, 0x1100, &body)
    }

    #[test]
    fn memory_devices_add_up_like_lshw() {
        let mut array = vec![0u8; 0x17 - 4];
        array[1] = USE_SYSTEM_MEMORY;
        let mut flash = array.clone();
        flash[1] = 7;
        let mut t = structure(MEMORY_ARRAY, 0x1000, &array);
        t.extend(structure(MEMORY_ARRAY, 0x1001, &flash));
        t.extend(device(0x1000, 16384, 0)); // 16 GiB
        t.extend(device(0x1000, 0x7fff, 65536)); // 64 GiB, extended size
        t.extend(device(0x1000, 0, 0)); // empty slot
        t.extend(device(0x1000, 0x8000 | 512, 0)); // 512 KiB
        t.extend(device(0x1001, 8, 0)); // flash: not system memory
        t.extend(structure(END_OF_TABLE, 0xfeff, &[]));
        let bytes = sum_memory_devices(&t).unwrap();
        assert_eq!(bytes, (80u64 << 30) + (512 << 10));
        assert_eq!(bytes >> 20, 81920);
        assert_eq!(sum_memory_devices(&structure(END_OF_TABLE, 0, &[])), None);
    }

    #[test]
    fn strings_are_skipped() {
        let mut t = vec![1u8, 8, 1, 0, 1, 2, 3, 0];
        t.extend_from_slice(b"QEMU\0Standard PC\0\0");
        t.extend(device(0xfffe, 4096, 0));
        assert_eq!(sum_memory_devices(&t), Some(4096 << 20));
    }
}
