//! The steps each phase offers, with IPA 13's priorities, interfaces and flags. A step listed
//! here is one rivet runs (burn-in steps and RAID application are not listed: rivet does not
//! implement them).

use serde_json::{json, Value};

use super::Phase;

/// Class name the steps are listed under.
pub(crate) const MANAGER: &str = "GenericHardwareManager";

fn step(name: &str, priority: u32, interface: &str, abortable: bool) -> Value {
    json!({"step": name, "priority": priority, "interface": interface,
           "reboot_requested": false, "abortable": abortable})
}

fn with_args(mut s: Value, argsinfo: Value) -> Value {
    s["argsinfo"] = argsinfo;
    s
}

fn arg(description: &str, required: bool) -> Value {
    json!({"description": description, "required": required})
}

fn write_image() -> Value {
    with_args(
        step("write_image", 0, "deploy", false),
        json!({
            "image_info": arg("Ironic's image_info dict: the image to write.", true),
            "configdrive": arg("Config drive: gzip+base64 text or a URL.", false),
        }),
    )
}

fn bootc() -> Value {
    with_args(
        step("execute_bootc_install", 0, "deploy", false),
        json!({
            "image_source": arg("The OCI image reference (oci://...).", true),
            "configdrive": arg("Config drive: gzip+base64 text or a URL.", false),
            "oci_pull_secret": arg("Base64 registry credentials for the pull.", false),
        }),
    )
}

fn clean_uefi_nvram(priority: u32) -> Value {
    with_args(
        step("clean_uefi_nvram", priority, "deploy", true),
        json!({"match_patterns": arg(
            "Json blob contains a list of regex patterns where any UEFI NVRAM entry matching \
             that pattern will be deleted. Default value is '[\"^HD\\\\(\", \"shim.*\\\\.efi\", \
             \"grub.*\\\\.efi\"]'",
            false,
        )}),
    )
}

/// The steps of `phase`, in IPA's order.
pub(super) fn steps(phase: Phase) -> Vec<Value> {
    match phase {
        Phase::Deploy => vec![
            step("erase_devices_metadata", 0, "deploy", true),
            clean_uefi_nvram(0),
            write_image(),
            bootc(),
        ],
        Phase::Clean => vec![
            step("erase_devices", 10, "deploy", true),
            step("erase_devices_metadata", 99, "deploy", true),
            step("erase_devices_express", 0, "deploy", true),
            step("erase_pstore", 0, "deploy", true),
            clean_uefi_nvram(0),
            step("delete_configuration", 0, "raid", true),
            step("create_configuration", 0, "raid", true),
        ],
        Phase::Service => vec![
            step("delete_configuration", 0, "raid", true),
            step("create_configuration", 0, "raid", true),
            write_image(),
            bootc(),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_steps_have_ipas_priorities() {
        let s = steps(Phase::Clean);
        let prio = |n: &str| {
            s.iter()
                .find(|x| x["step"] == n)
                .map(|x| x["priority"].clone())
        };
        assert_eq!(prio("erase_devices"), Some(json!(10)));
        assert_eq!(prio("erase_devices_metadata"), Some(json!(99)));
        assert_eq!(prio("erase_devices_express"), Some(json!(0)));
        assert_eq!(prio("clean_uefi_nvram"), Some(json!(0)));
        for x in &s {
            for k in [
                "step",
                "priority",
                "interface",
                "reboot_requested",
                "abortable",
            ] {
                assert!(x.get(k).is_some(), "{x} lacks {k}");
            }
        }
        let raid: Vec<_> = s.iter().filter(|x| x["interface"] == "raid").collect();
        assert_eq!(raid.len(), 2);
    }
}
