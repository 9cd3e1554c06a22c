//! Boot entries in NVRAM: registering the ESP's loaders (IPA's `_run_efibootmgr`, i.e.
//! `efibootmgr -b N -B` then `efibootmgr -c -d <disk> -p <n> -w -L <label> -l <loader>` per
//! loader) and removing entries by pattern (IPA's `clean_uefi_nvram` / `clean_boot_records`).
//!
//! efibootmgr's rules, kept here: a new entry takes the lowest free `Boot####` number and is put
//! first in `BootOrder` (so with several loaders the last one registered boots first, as in IPA);
//! deleting an entry also takes it out of `BootOrder`, and an emptied `BootOrder` is deleted.

use regex::{Regex, RegexBuilder};
use serde_json::Value;

use super::devpath_text;
use super::efivars::{VarStore, NV_BS_RT};
use super::error::{BootError, LoadOptionError};
use super::esp::Loader;
use super::load_option::{HardDrive, LoadOption};

/// IPA's `DEFAULT_CLEAN_UEFI_NVRAM_MATCH_PATTERNS`, matched case-insensitively against the
/// entry's device path text (see [`devpath_text`]), not its label.
pub const DEFAULT_CLEAN_UEFI_NVRAM_MATCH_PATTERNS: [&str; 3] =
    [r"^HD\(", r"shim.*\.efi", r"grub.*\.efi"];

/// An entry rivet registered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootEntry {
    /// Its `Boot####` number.
    pub number: u16,
    /// Its label (description).
    pub label: String,
    /// The loader's path on the ESP (`\EFI\BOOT\BOOTX64.EFI`).
    pub loader: String,
    /// The ESP's partition number.
    pub partition: u32,
}

/// A `Boot####` variable found in NVRAM.
#[derive(Debug, Clone)]
pub struct NvramEntry {
    /// Its number.
    pub number: u16,
    /// Its file name in the variable store.
    pub file_name: String,
    /// Its content, or why it could not be decoded.
    pub option: Result<LoadOption, LoadOptionError>,
}

impl NvramEntry {
    /// The label, when the entry could be decoded.
    pub fn label(&self) -> Option<&str> {
        self.option.as_ref().ok().map(|o| o.description.as_str())
    }
}

/// An entry `clean_uefi_nvram` removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemovedEntry {
    /// Its number.
    pub number: u16,
    /// Its label.
    pub label: String,
    /// Its device path text, as the patterns saw it.
    pub path: String,
    /// The pattern that matched.
    pub pattern: String,
}

/// Every `Boot####` variable, by number.
pub fn read_entries(vars: &VarStore) -> Result<Vec<NvramEntry>, BootError> {
    let mut out = Vec::new();
    for (number, file_name) in vars.boot_numbers()? {
        let Some((_, data)) = vars.read_boot_file(&file_name)? else {
            continue;
        };
        out.push(NvramEntry {
            number,
            file_name,
            option: LoadOption::decode(&data),
        });
    }
    Ok(out)
}

/// Deletes an entry and takes its number out of `BootOrder` (`efibootmgr -b N -B`).
pub fn remove_entry(vars: &VarStore, entry: &NvramEntry) -> Result<(), BootError> {
    if !vars.delete_boot_file(&entry.file_name)? {
        return Ok(());
    }
    if let Some((order, attrs)) = vars.boot_order()? {
        if order.contains(&entry.number) {
            let kept: Vec<u16> = order.into_iter().filter(|&n| n != entry.number).collect();
            vars.set_boot_order(&kept, attrs)?;
        }
    }
    Ok(())
}

/// Writes `option` as a new entry with the lowest free number and puts it first in `BootOrder`
/// (any stale copy of that number in the order is dropped).
pub fn add_entry(vars: &VarStore, option: &LoadOption) -> Result<u16, BootError> {
    let taken: Vec<u16> = vars.boot_numbers()?.into_iter().map(|(n, _)| n).collect();
    let number = (0..=u16::MAX)
        .find(|n| taken.binary_search(n).is_err())
        .ok_or(BootError::NoFreeBootNumber)?;
    vars.write_boot(number, option)?;
    let (order, attrs) = vars.boot_order()?.unwrap_or((Vec::new(), NV_BS_RT));
    let mut new_order = Vec::with_capacity(order.len() + 1);
    new_order.push(number);
    new_order.extend(order.into_iter().filter(|&n| n != number));
    vars.set_boot_order(&new_order, attrs)?;
    Ok(number)
}

/// Registers each loader on the ESP `esp` (IPA's `_run_efibootmgr`): first deletes every
/// entry carrying the same label (so re-deploying never leaves a duplicate), then adds the new
/// one. Entries are looked up once, before any change, as IPA does. IPA only sees entries whose
/// path text starts with a node it knows (see [`devpath_text::visible_to_ipa`]); rivet removes a
/// same-label entry whatever its path.
pub fn register_loaders(
    vars: &VarStore,
    esp: &HardDrive,
    loaders: &[Loader],
) -> Result<Vec<BootEntry>, BootError> {
    let existing = read_entries(vars)?;
    let mut added = Vec::with_capacity(loaders.len());
    for loader in loaders {
        for old in existing.iter().filter(|e| e.label() == Some(&loader.label)) {
            tracing::debug!(
                "removing Boot{:04X}: same label {}",
                old.number,
                loader.label
            );
            remove_entry(vars, old)?;
        }
        let option =
            LoadOption::hard_drive_file(&loader.label, esp, &loader.path).map_err(|e| {
                BootError::BadVariable {
                    name: loader.label.clone(),
                    reason: e.to_string(),
                }
            })?;
        let number = add_entry(vars, &option)?;
        tracing::info!(
            "added Boot{number:04X} {} for loader {} on partition {}",
            loader.label,
            loader.path,
            esp.partition_number
        );
        added.push(BootEntry {
            number,
            label: loader.label.clone(),
            loader: loader.path.clone(),
            partition: esp.partition_number,
        });
    }
    Ok(added)
}

/// Validates `clean_uefi_nvram`'s `match_patterns` as IPA does: absent or null means the
/// defaults; otherwise a list of strings, each a regex (compiled case-insensitively). Python
/// regex features the `regex` crate lacks (look-around, back-references) are refused too.
pub fn parse_match_patterns(value: Option<&Value>) -> Result<Vec<Regex>, BootError> {
    let owned: Value;
    let value = match value {
        None | Some(Value::Null) => {
            owned = Value::from(DEFAULT_CLEAN_UEFI_NVRAM_MATCH_PATTERNS.to_vec());
            &owned
        }
        Some(v) => v,
    };
    let invalid = || {
        BootError::InvalidCommandParams(format!(
            "The match_patterns must be a list of strings: {}",
            py_repr(value)
        ))
    };
    let Value::Array(items) = value else {
        return Err(invalid());
    };
    items
        .iter()
        .map(|item| {
            let s = item.as_str().ok_or_else(invalid)?;
            RegexBuilder::new(s)
                .case_insensitive(true)
                .build()
                .map_err(|_| invalid())
        })
        .collect()
}

/// Deletes every entry whose device path text one of `patterns` finds (IPA's
/// `clean_boot_records`). The entry the machine booted from (`BootCurrent`) is not spared,
/// exactly as in IPA; entries IPA's listing cannot see, or that cannot be decoded, are kept.
pub fn clean_boot_records(
    vars: &VarStore,
    patterns: &[Regex],
) -> Result<Vec<RemovedEntry>, BootError> {
    let mut removed = Vec::new();
    for entry in read_entries(vars)? {
        let Ok(option) = &entry.option else {
            continue;
        };
        let path = devpath_text::render(option);
        if !devpath_text::visible_to_ipa(&path) {
            continue;
        }
        let Some(pattern) = patterns.iter().find(|p| p.is_match(&path)) else {
            continue;
        };
        tracing::debug!(
            "path {path} matched pattern {}, entry will be deleted: {}",
            pattern.as_str(),
            option.description
        );
        remove_entry(vars, &entry)?;
        removed.push(RemovedEntry {
            number: entry.number,
            label: option.description.clone(),
            path,
            pattern: pattern.as_str().to_string(),
        });
    }
    Ok(removed)
}

/// The `clean_uefi_nvram` step: validate the patterns, then clean. IPA returns None (the step's
/// `clean_result` is null); the removed entries are returned for logging.
pub fn clean_uefi_nvram(
    vars: &VarStore,
    match_patterns: Option<&Value>,
) -> Result<Vec<RemovedEntry>, BootError> {
    let patterns = parse_match_patterns(match_patterns)?;
    clean_boot_records(vars, &patterns)
}

/// Python's `str()` of a JSON value, for IPA's error text (`['^HD\\(', 'x']`).
fn py_repr(v: &Value) -> String {
    match v {
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => py_str_repr(s),
        Value::Array(a) => format!("[{}]", a.iter().map(py_repr).collect::<Vec<_>>().join(", ")),
        Value::Object(o) => format!(
            "{{{}}}",
            o.iter()
                .map(|(k, v)| format!("{}: {}", py_str_repr(k), py_repr(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn py_str_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::from(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn match_patterns_validated_like_ipa() {
        assert_eq!(parse_match_patterns(None).unwrap().len(), 3);
        assert_eq!(parse_match_patterns(Some(&Value::Null)).unwrap().len(), 3);
        assert!(parse_match_patterns(Some(&json!([]))).unwrap().is_empty());
        let re = parse_match_patterns(Some(&json!(["SHIM"]))).unwrap();
        assert!(
            re[0].is_match(r"\EFI\x\shimx64.efi"),
            "case-insensitive search"
        );
        let e = parse_match_patterns(Some(&json!("^HD\\("))).unwrap_err();
        assert_eq!(
            e.to_string(),
            r"The match_patterns must be a list of strings: '^HD\\('"
        );
        let e = parse_match_patterns(Some(&json!(["a", 1, null]))).unwrap_err();
        assert_eq!(
            e.to_string(),
            "The match_patterns must be a list of strings: ['a', 1, None]"
        );
        let e = parse_match_patterns(Some(&json!(["(unclosed"]))).unwrap_err();
        assert!(matches!(e, BootError::InvalidCommandParams(_)));
        assert_eq!(py_repr(&json!({"it's": true})), r#"{"it's": True}"#);
    }
}
