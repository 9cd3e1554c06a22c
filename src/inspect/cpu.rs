//! CPU and memory, as IPA 13 reports them (it asks `lscpu`, psutil and `lshw`; rivet reads
//! what those read): `/proc/cpuinfo`, `/sys/devices/system/cpu`, `/proc/meminfo`, the SMBIOS
//! memory devices and `/sys/devices/system/memory`.

use std::collections::BTreeSet;

use super::dmi;
use super::error::CollectError;
use super::machine::Machine;
use super::model::{Cpu, Memory};

/// The CPU summary. Fails only when `/proc/cpuinfo` cannot be read (IPA fails when `lscpu`
/// does).
pub(crate) fn cpu(m: &Machine) -> Result<Cpu, CollectError> {
    let text =
        std::fs::read_to_string(m.path("/proc/cpuinfo")).map_err(|source| CollectError::Read {
            file: "/proc/cpuinfo",
            source,
        })?;
    let sections: Vec<Vec<(String, String)>> = text
        .split("\n\n")
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            s.lines()
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_string()))
                .collect()
        })
        .collect();
    let first = |key: &str| {
        sections
            .iter()
            .flat_map(|s| s.iter())
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    };
    let flags = first("flags")
        .or_else(|| first("features"))
        .unwrap_or_default();
    let processors = sections
        .iter()
        .filter(|s| s.iter().any(|(k, _)| k == "processor"))
        .count() as u64;
    let count = m
        .read("/sys/devices/system/cpu/present")
        .and_then(|r| cpu_list_len(&r))
        .unwrap_or(processors);
    Ok(Cpu {
        model_name: first("model name").unwrap_or_default(),
        frequency: max_mhz(m).or_else(|| first("cpu mhz")).unwrap_or_default(),
        count,
        architecture: m.arch().unwrap_or_default(),
        flags: flags.split_whitespace().map(str::to_string).collect(),
        socket_count: sockets(m, &sections, count),
    })
}

/// lscpu's `CPU max MHz`: cpufreq's maximum of cpu0 (kHz), printed with four decimals.
fn max_mhz(m: &Machine) -> Option<String> {
    let khz: f64 = m
        .read("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")?
        .parse()
        .ok()?;
    Some(format!("{:.4}", khz / 1000.0))
}

/// The number of CPUs in a kernel CPU list (`0-3,8-11`).
pub(crate) fn cpu_list_len(list: &str) -> Option<u64> {
    let mut n = 0;
    for part in list.split(',').filter(|p| !p.is_empty()) {
        n += match part.split_once('-') {
            Some((a, b)) => b.parse::<u64>().ok()? - a.parse::<u64>().ok()? + 1,
            None => {
                part.parse::<u64>().ok()?;
                1
            }
        };
    }
    Some(n)
}

/// Distinct packages among the CPUs (sysfs topology, else cpuinfo's `physical id`); one
/// when neither says (a machine with CPUs has a socket).
fn sockets(m: &Machine, sections: &[Vec<(String, String)>], count: u64) -> u64 {
    let packages: BTreeSet<String> = m
        .list("/sys/devices/system/cpu")
        .into_iter()
        .filter(|n| {
            n.strip_prefix("cpu")
                .is_some_and(|i| i.parse::<u32>().is_ok())
        })
        .filter_map(|n| {
            m.read(&format!(
                "/sys/devices/system/cpu/{n}/topology/physical_package_id"
            ))
        })
        .filter(|id| id != "-1")
        .collect();
    if !packages.is_empty() {
        return packages.len() as u64;
    }
    let ids: BTreeSet<&String> = sections
        .iter()
        .flat_map(|s| s.iter())
        .filter(|(k, _)| k == "physical id")
        .map(|(_, v)| v)
        .collect();
    match ids.len() {
        0 => u64::from(count > 0),
        n => n as u64,
    }
}

/// `total`: `MemTotal` in bytes (psutil's total); `physical_mb`: the installed memory in MiB
/// (lshw's sum of the SMBIOS memory devices, else the memory blocks the kernel manages,
/// else `MemTotal`).
pub(crate) fn memory(m: &Machine) -> Result<Memory, CollectError> {
    let meminfo =
        std::fs::read_to_string(m.path("/proc/meminfo")).map_err(|source| CollectError::Read {
            file: "/proc/meminfo",
            source,
        })?;
    let total = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024);
    let physical_mb = dmi::smbios_memory_mb(m)
        .or_else(|| memory_blocks_mb(m))
        .or(total.map(|t| t >> 20));
    Ok(Memory { total, physical_mb })
}

/// `/sys/devices/system/memory`: number of `memoryN` blocks × `block_size_bytes` (hex).
fn memory_blocks_mb(m: &Machine) -> Option<u64> {
    let size = u64::from_str_radix(
        m.read("/sys/devices/system/memory/block_size_bytes")?
            .trim_start_matches("0x"),
        16,
    )
    .ok()?;
    let blocks = m
        .list("/sys/devices/system/memory")
        .iter()
        .filter(|n| {
            n.strip_prefix("memory")
                .is_some_and(|i| i.parse::<u64>().is_ok())
        })
        .count() as u64;
    (blocks > 0).then_some((blocks * size) >> 20)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(cpu_list_len("0-3,8-11"), Some(8));
        assert_eq!(cpu_list_len("0"), Some(1));
        assert_eq!(cpu_list_len("0-1"), Some(2));
        assert_eq!(cpu_list_len("x"), None);
    }
}
