//! `ImageInfo`: Ironic's `image_info` dict, exactly as the conductor sends it (docs/image-info.md#fields), and
//! IPA's `_validate_image_info` (docs/image-info.md#validation) with its messages.
//!
//! Validation runs on the raw JSON first because IPA's messages are about JSON shapes ("must be
//! a list", "must be a non-empty string"); only then is the dict turned into the typed model.
//! Unknown keys are ignored, as IPA ignores them.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};
use serde_json::Value;

use crate::errors::{AgentError, Result};

/// One image to deploy, as Ironic describes it.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct ImageInfo {
    /// Image id (Glance UUID or the last path segment of the image source).
    pub id: String,
    /// URLs to try, in order.
    pub urls: Vec<String>,
    /// Legacy checksum (hex, typed by length) or URL of a checksum file.
    pub checksum: Option<String>,
    /// Hash algorithm name, as Python's hashlib spells it.
    pub os_hash_algo: Option<String>,
    /// Expected digest (hex) or URL of a checksum file.
    pub os_hash_value: Option<String>,
    /// Glance/Ironic disk format (`raw`, `qcow2`, ...), may be absent or `unknown`.
    pub disk_format: Option<String>,
    /// Glance container format (`bare`, ...).
    pub container_format: Option<String>,
    /// Stream raw images straight to the disk (Ironic's `[agent]stream_raw_images`).
    #[serde(deserialize_with = "lenient_bool")]
    pub stream_raw_images: bool,
    /// `partition` for partition images; anything else is a whole-disk image.
    pub image_type: Option<String>,
    /// Per-request proxies: scheme (`http`, `https`) → proxy URL. `null`, or a scheme mapped
    /// to `null` or `""`, means none (as in IPA, where requests ignores them).
    #[serde(deserialize_with = "lenient_proxies")]
    pub proxies: BTreeMap<String, String>,
    /// Comma-separated hosts that bypass the proxies.
    pub no_proxy: Option<String>,
    /// Base64 of a full `Authorization` header value (e.g. `Bearer ...`).
    pub image_request_authorization: Option<String>,
    /// `http_basic` or `noauth`.
    pub image_server_auth_strategy: Option<String>,
    /// User for `http_basic`.
    pub image_server_user: Option<String>,
    /// Password for `http_basic`.
    pub image_server_password: Option<String>,
    /// The node being deployed.
    pub node_uuid: Option<String>,
    /// Partition images: kernel image reference.
    pub kernel: Option<String>,
    /// Partition images: ramdisk image reference.
    pub ramdisk: Option<String>,
    /// Partition images: root size in GiB.
    #[serde(deserialize_with = "lenient_u64")]
    pub root_gb: Option<u64>,
    /// Partition images: root size in MiB.
    #[serde(deserialize_with = "lenient_u64")]
    pub root_mb: Option<u64>,
    /// Partition images: swap size in MiB.
    #[serde(deserialize_with = "lenient_u64")]
    pub swap_mb: Option<u64>,
    /// Partition images: ephemeral size in MiB.
    #[serde(deserialize_with = "lenient_u64")]
    pub ephemeral_mb: Option<u64>,
    /// Partition images: file system of the ephemeral partition.
    pub ephemeral_format: Option<String>,
    /// Legacy copy of the `configdrive` argument.
    pub configdrive: Option<String>,
    /// Partition images: keep the ephemeral partition's contents.
    #[serde(deserialize_with = "lenient_bool")]
    pub preserve_ephemeral: bool,
    /// `uefi` or `bios`.
    pub deploy_boot_mode: Option<String>,
    /// `local` or `netboot` (legacy).
    pub boot_option: Option<String>,
    /// `gpt` or `msdos`.
    pub disk_label: Option<String>,
}

impl ImageInfo {
    /// Validates a raw `image_info` value as IPA's `_validate_image_info` does, then parses it.
    ///
    /// `md5_enabled` decides whether a 32-character `checksum` counts as usable.
    pub fn from_value(value: &Value, md5_enabled: bool) -> Result<Self> {
        validate(value, md5_enabled)?;
        serde_json::from_value(value.clone()).map_err(|e| {
            AgentError::InvalidCommandParams(format!("Image info has an invalid field: {e}"))
        })
    }

    /// Whether this is a partition image (`image_type == "partition"`).
    pub fn is_partition_image(&self) -> bool {
        self.image_type.as_deref() == Some("partition")
    }

    /// The node id used in messages: `node_uuid`, or `local` as IPA does.
    pub fn node_label(&self) -> &str {
        self.node_uuid.as_deref().unwrap_or("local")
    }
}

/// Whether a string is an http(s) URL (case-insensitive scheme), as IPA tests it.
pub fn is_http_url(s: &str) -> bool {
    let lower = s.get(..8).unwrap_or(s).to_ascii_lowercase();
    lower.starts_with("http://") || lower.starts_with("https://")
}

/// The scheme of something that looks like a URL (`scheme://...`), lowercased.
fn url_scheme(s: &str) -> Option<String> {
    let (scheme, _) = s.trim().split_once("://")?;
    let mut chars = scheme.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    valid.then(|| scheme.to_ascii_lowercase())
}

/// Refuses, before any byte is read, every URL of a deploy whose scheme is not http or https:
/// the image URLs (`file` too when `allow_file`: the CLI, where the operator asks for it; never
/// through the agent's API, where it would write any file of the ramdisk to the disk and leak
/// its digest), checksum-file URLs and a config drive URL (http or https only, everywhere).
pub fn check_url_schemes(
    info: &ImageInfo,
    configdrive: Option<&str>,
    allow_file: bool,
) -> Result<()> {
    let web = |s: &str| matches!(s, "http" | "https");
    for url in &info.urls {
        match url_scheme(url) {
            Some(s) if web(&s) || (allow_file && s == "file") => {}
            Some(s) => {
                return Err(invalid(format!(
                    "Image URL {url} has the scheme '{s}': only http and https are allowed."
                )))
            }
            None => {
                return Err(invalid(format!(
                    "Image URL {url} is not an http or https URL."
                )))
            }
        }
    }
    let values = [
        ("checksum", info.checksum.as_deref()),
        ("os_hash_value", info.os_hash_value.as_deref()),
        ("configdrive", configdrive),
    ];
    for (field, value) in values {
        if let Some(s) = value.and_then(url_scheme).filter(|s| !web(s)) {
            return Err(invalid(format!(
                "Image '{field}' is a URL with the scheme '{s}': only http and https are allowed."
            )));
        }
    }
    Ok(())
}

fn invalid(msg: impl Into<String>) -> AgentError {
    AgentError::InvalidCommandParams(msg.into())
}

fn validate(value: &Value, md5_enabled: bool) -> Result<()> {
    let obj = value
        .as_object()
        .ok_or_else(|| invalid("Image info must be a dictionary."))?;
    for field in ["id", "urls"] {
        if !obj.contains_key(field) {
            return Err(invalid(format!("Image is missing '{field}' field.")));
        }
    }
    match obj.get("urls") {
        Some(Value::Array(urls)) if !urls.is_empty() => {
            if urls.iter().any(|u| !u.is_string()) {
                return Err(invalid("Image 'urls' must be a list of strings."));
            }
        }
        _ => {
            return Err(invalid(
                "Image 'urls' must be a list with at least one element.",
            ))
        }
    }
    if !matches!(obj.get("id"), Some(Value::String(_))) {
        return Err(invalid("Image 'id' must be a string."));
    }

    let mut usable = false;
    match obj.get("checksum") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if !s.is_empty() => {
            usable = is_http_url(s) || s.len() > 32 || md5_enabled;
        }
        Some(_) => return Err(invalid("Image 'checksum' must be a non-empty string.")),
    }
    let algo = obj.get("os_hash_algo");
    let hash_value = obj.get("os_hash_value");
    if algo.is_some() || hash_value.is_some() {
        for (field, v) in [("os_hash_algo", algo), ("os_hash_value", hash_value)] {
            match v {
                Some(Value::String(s)) if !s.is_empty() => {}
                _ => {
                    return Err(invalid(format!(
                        "Image '{field}' must be a non-empty string."
                    )))
                }
            }
        }
        usable = true;
    }
    if !usable {
        return Err(invalid(
            "Image checksum is not available, either the 'checksum' field or the \
             'os_hash_algo' and 'os_hash_value' fields pair must be set for image verification.",
        ));
    }
    Ok(())
}

/// Accepts `true`/`false`, the strings Python's `strutils.bool_from_string` knows, or null.
fn lenient_bool<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<bool, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Bool(b) => b,
        Value::String(s) => matches!(
            s.to_ascii_lowercase().as_str(),
            "1" | "t" | "true" | "on" | "y" | "yes"
        ),
        Value::Number(n) => n.as_i64().unwrap_or(0) != 0,
        _ => false,
    })
}

/// Accepts a map of scheme → proxy URL, or null; schemes mapped to null or `""` are dropped.
fn lenient_proxies<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<BTreeMap<String, String>, D::Error> {
    let m = Option::<BTreeMap<String, Option<String>>>::deserialize(d)?;
    Ok(m.unwrap_or_default()
        .into_iter()
        .filter_map(|(k, v)| v.filter(|v| !v.is_empty()).map(|v| (k, v)))
        .collect())
}

/// Accepts an integer or a string of digits (Ironic sends `root_mb` either way), or null.
fn lenient_u64<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<u64>, D::Error> {
    use serde::de::Error;
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        Value::Number(n) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
            .map(Some)
            .ok_or_else(|| D::Error::custom(format!("{n} is not a size"))),
        Value::String(s) if s.trim().is_empty() => Ok(None),
        Value::String(s) => s
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| D::Error::custom(format!("'{s}' is not a size"))),
        other => Err(D::Error::custom(format!("{other} is not a size"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base() -> Value {
        json!({"id": "fake_id", "urls": ["http://example.org"], "node_uuid": "n",
               "image_type": "whole-disk-image", "os_hash_algo": "sha256",
               "os_hash_value": "fake-checksum", "disk_format": "qcow2"})
    }

    fn err(v: &Value, md5: bool) -> String {
        ImageInfo::from_value(v, md5).unwrap_err().details()
    }

    #[test]
    fn accepts_the_fixture_and_ignores_unknown_keys() {
        let mut v = base();
        v["something_new"] = json!({"x": 1});
        v["root_mb"] = json!("10");
        v["stream_raw_images"] = json!(true);
        let info = ImageInfo::from_value(&v, false).unwrap();
        assert_eq!(info.id, "fake_id");
        assert_eq!(info.root_mb, Some(10));
        assert!(info.stream_raw_images);
    }

    #[test]
    fn missing_fields() {
        let mut v = base();
        v.as_object_mut().unwrap().remove("id");
        assert_eq!(err(&v, false), "Image is missing 'id' field.");
        let mut v = base();
        v.as_object_mut().unwrap().remove("urls");
        assert_eq!(err(&v, false), "Image is missing 'urls' field.");
    }

    #[test]
    fn urls_must_be_a_non_empty_list() {
        for bad in [json!("http://x"), json!([])] {
            let mut v = base();
            v["urls"] = bad;
            assert_eq!(
                err(&v, false),
                "Image 'urls' must be a list with at least one element."
            );
        }
    }

    #[test]
    fn checksum_rules() {
        let mut v = base();
        let o = v.as_object_mut().unwrap();
        o.remove("os_hash_algo");
        o.remove("os_hash_value");
        o.insert("checksum".into(), json!("a".repeat(32)));
        assert!(ImageInfo::from_value(&v, true).is_ok());
        assert!(err(&v, false).starts_with("Image checksum is not available"));
        v["checksum"] = json!("a".repeat(64));
        assert!(ImageInfo::from_value(&v, false).is_ok());
        v["checksum"] = json!("http://example.org/SHA256SUMS");
        assert!(ImageInfo::from_value(&v, false).is_ok());
        v["checksum"] = json!("");
        assert_eq!(
            err(&v, false),
            "Image 'checksum' must be a non-empty string."
        );
        v["checksum"] = json!({"a": 1});
        assert_eq!(
            err(&v, false),
            "Image 'checksum' must be a non-empty string."
        );
        v["checksum"] = Value::Null;
        assert!(err(&v, true).starts_with("Image checksum is not available"));
    }

    #[test]
    fn hash_pair_must_be_complete() {
        let mut v = base();
        v.as_object_mut().unwrap().remove("os_hash_value");
        assert_eq!(
            err(&v, false),
            "Image 'os_hash_value' must be a non-empty string."
        );
        let mut v = base();
        v.as_object_mut().unwrap().remove("os_hash_algo");
        assert_eq!(
            err(&v, false),
            "Image 'os_hash_algo' must be a non-empty string."
        );
        let mut v = base();
        v["os_hash_algo"] = json!("md5");
        assert!(ImageInfo::from_value(&v, false).is_ok());
    }

    #[test]
    fn proxies_may_be_null() {
        let mut v = base();
        v["proxies"] = Value::Null;
        assert!(ImageInfo::from_value(&v, false).unwrap().proxies.is_empty());
        v["proxies"] = json!({"http": null, "https": "", "all": "http://p:3128"});
        let p = ImageInfo::from_value(&v, false).unwrap().proxies;
        assert_eq!(p.len(), 1);
        assert_eq!(p["all"], "http://p:3128");
        v["proxies"] = json!("http://p");
        assert!(err(&v, false).contains("invalid field"));
    }

    #[test]
    fn wrong_types_are_reported() {
        let mut v = base();
        v["root_mb"] = json!([1]);
        assert!(err(&v, false).contains("invalid field"));
        assert!(ImageInfo::from_value(&json!([1]), false).is_err());
    }

    #[test]
    fn only_web_schemes_unless_the_cli_allows_files() {
        let mut i = ImageInfo::from_value(&base(), false).unwrap();
        assert!(check_url_schemes(&i, None, false).is_ok());
        assert!(check_url_schemes(&i, Some("H4sIAAAA"), false).is_ok());
        assert!(check_url_schemes(&i, Some("HTTPS://x/cd"), false).is_ok());
        let e = check_url_schemes(&i, Some("file:///etc/shadow"), true).unwrap_err();
        assert_eq!(e.type_name(), "InvalidCommandParamsError");
        assert!(e
            .details()
            .contains("'configdrive' is a URL with the scheme 'file'"));
        i.urls = vec!["http://a/x".into(), "FILE:///etc/shadow".into()];
        let e = check_url_schemes(&i, None, false).unwrap_err();
        assert!(e.details().contains("scheme 'file'"), "{e}");
        assert!(check_url_schemes(&i, None, true).is_ok());
        i.urls = vec!["/etc/shadow".into()];
        assert!(check_url_schemes(&i, None, true).is_err());
        i.urls = vec!["http://a/x".into()];
        i.os_hash_value = Some("ftp://a/SHA256SUMS".into());
        let e = check_url_schemes(&i, None, true).unwrap_err();
        assert!(e.details().contains("'os_hash_value'"), "{e}");
    }

    #[test]
    fn http_url_detection() {
        assert!(is_http_url("HTTPS://x/y"));
        assert!(is_http_url("http://x"));
        assert!(!is_http_url("ftp://x"));
        assert!(!is_http_url("abc"));
    }
}
