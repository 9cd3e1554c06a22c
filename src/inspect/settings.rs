//! The inspection settings' own types: the collector list (checked when settings load, so
//! an unknown collector stops the agent at start-up with the option's name and source) and
//! the callback URL list.

use crate::config::SettingValue;

/// One inspection collector (IPA's `ironic_python_agent.inspector.collectors` names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Collector {
    /// The inventory, root disk, boot interface and configuration.
    Default,
    /// gzip+base64 tar of the logs, for Ironic's `ramdisk-error` hook and log storage.
    Logs,
    /// The PCI devices, from sysfs.
    PciDevices,
    /// Raw LLDP TLVs of every interface (`lldp_raw`).
    Lldp,
}

impl Collector {
    /// IPA's name.
    pub fn name(self) -> &'static str {
        match self {
            Collector::Default => "default",
            Collector::Logs => "logs",
            Collector::PciDevices => "pci-devices",
            Collector::Lldp => "lldp",
        }
    }
}

/// IPA's collectors rivet does not have (they need tools or data rivet does not carry).
const NOT_IN_RIVET: &[&str] = &[
    "extra-hardware",
    "dmi-decode",
    "numa-topology",
    "usb-devices",
];

/// `inspection_collectors`: a comma-separated list, in the order they run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collectors(pub Vec<Collector>);

/// IPA's default when inspection is on and no list is given.
pub const DEFAULT_COLLECTORS: &[Collector] = &[Collector::Default, Collector::Logs];

impl SettingValue for Collectors {
    fn parse(text: &str) -> Result<Self, &'static str> {
        let mut out = Vec::new();
        for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let c = match name {
                "default" => Collector::Default,
                "logs" => Collector::Logs,
                "pci-devices" => Collector::PciDevices,
                "lldp" => Collector::Lldp,
                n if NOT_IN_RIVET.contains(&n) => {
                    return Err("names an IPA collector rivet does not have (rivet has \
                                default, logs, pci-devices, lldp)")
                }
                _ => {
                    return Err("unknown inspection collector (known: default, logs, \
                                pci-devices, lldp)")
                }
            };
            out.push(c);
        }
        Ok(Collectors(out))
    }
}

/// `inspection_callback_url`: one or more http(s) URLs, comma-separated, tried in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallbackUrls(pub Vec<String>);

impl SettingValue for CallbackUrls {
    fn parse(text: &str) -> Result<Self, &'static str> {
        let mut out = Vec::new();
        for u in text.split(',').map(str::trim).filter(|u| !u.is_empty()) {
            if u == "mdns" {
                return Err("mdns discovery of the inspection URL is not supported by rivet");
            }
            match url::Url::parse(u) {
                Ok(p) if matches!(p.scheme(), "http" | "https") => out.push(u.to_string()),
                _ => return Err("not an http(s) URL"),
            }
        }
        Ok(CallbackUrls(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collectors_parse_in_order_and_refuse_unknown_names() {
        assert_eq!(
            Collectors::parse("logs, default").unwrap().0,
            vec![Collector::Logs, Collector::Default]
        );
        assert!(Collectors::parse("default,extra-hardware")
            .unwrap_err()
            .contains("rivet does not have"));
        assert!(Collectors::parse("defualt")
            .unwrap_err()
            .starts_with("unknown inspection collector"));
    }

    #[test]
    fn callback_urls() {
        assert_eq!(
            CallbackUrls::parse("http://a:6385/v1/continue_inspection,https://b/x")
                .unwrap()
                .0
                .len(),
            2
        );
        assert!(CallbackUrls::parse("mdns").is_err());
        assert!(CallbackUrls::parse("ftp://x").is_err());
    }
}
