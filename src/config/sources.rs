//! Where settings come from, in order (later wins): kernel command line, the TOML file, the
//! environment, flags. Each source gives text; [`Settings::set`] types it.

use std::collections::BTreeMap;
use std::path::Path;

use super::{SettingError, Settings};

impl Settings {
    /// Merges the four sources. `flags` are the options given on the command line (by option
    /// name), `env` the process environment (only `RIVET_<NAME>` of known options are read).
    pub fn load(
        flags: &BTreeMap<String, String>,
        env: &BTreeMap<String, String>,
    ) -> Result<Settings, SettingError> {
        let mut s = Settings::defaults()?;
        // Where to read the lower layers from may itself come from the upper ones.
        let explicit = |name: &str| {
            flags
                .get(name)
                .map(|v| (v.clone(), format!("--{}", name.replace('_', "-"))))
                .or_else(|| {
                    env.get(&env_name(name))
                        .map(|v| (v.clone(), env_name(name)))
                })
        };
        if let Some((v, src)) = explicit("cmdline") {
            s.set("cmdline", &v, &src)?;
        }
        if let Ok(text) = std::fs::read_to_string(&s.cmdline) {
            for (k, v) in parse_cmdline(&text) {
                if !s.set(&k, &v, "the kernel command line")? {
                    tracing::debug!("ignoring unknown kernel parameter ipa-{k}");
                }
            }
        }
        let config_given = explicit("config");
        if let Some((v, src)) = &config_given {
            s.set("config", v, src)?;
        }
        let path = s.config.clone();
        match std::fs::read_to_string(&path) {
            Ok(text) => apply_toml(&mut s, &path, &text)?,
            Err(e) if config_given.is_some() => {
                return Err(SettingError {
                    name: "config".into(),
                    value: path.display().to_string(),
                    source_name: config_given.map(|c| c.1).unwrap_or_default(),
                    why: format!("cannot read it: {e}"),
                })
            }
            Err(_) => {}
        }
        for o in super::OPTIONS {
            let name = env_name(o.name);
            if let Some(v) = env.get(&name) {
                s.set(o.name, v, &name)?;
            }
        }
        for (k, v) in flags {
            let src = format!("--{}", k.replace('_', "-"));
            if !s.set(k, v, &src)? {
                return Err(SettingError {
                    name: k.clone(),
                    value: v.clone(),
                    source_name: src,
                    why: "no such option".into(),
                });
            }
        }
        Ok(s)
    }
}

/// `RIVET_<NAME>`.
pub fn env_name(name: &str) -> String {
    format!("RIVET_{}", name.to_ascii_uppercase())
}

/// `ipa-foo-bar=baz` words of a kernel command line, as `foo_bar = baz`. A bare `ipa-foo`
/// means true.
pub fn parse_cmdline(text: &str) -> BTreeMap<String, String> {
    text.split_whitespace()
        .filter_map(|w| w.strip_prefix("ipa-"))
        .map(|w| match w.split_once('=') {
            Some((k, v)) => (k.replace('-', "_"), v.trim_matches('"').to_string()),
            None => (w.replace('-', "_"), "true".to_string()),
        })
        .collect()
}

/// A JSON or TOML scalar/array as setting text (arrays become comma lists).
pub(super) fn json_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(a) => a
            .iter()
            .map(|x| {
                x.as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| x.to_string())
            })
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    }
}

fn toml_text(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Array(a) => a
            .iter()
            .map(|x| {
                x.as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| x.to_string())
            })
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    }
}

/// The file's keys must all be options: a typo is an error, not a silent default.
fn apply_toml(s: &mut Settings, path: &Path, text: &str) -> Result<(), SettingError> {
    let src = path.display().to_string();
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| SettingError {
        name: "config".into(),
        value: src.clone(),
        source_name: src.clone(),
        why: format!("not valid TOML: {e}"),
    })?;
    for (k, v) in table {
        let name = k.replace('-', "_");
        let text = toml_text(&v);
        if !s.set(&name, &text, &src)? {
            return Err(SettingError {
                name: k,
                value: text,
                source_name: src,
                why: "no such option".into(),
            });
        }
    }
    Ok(())
}
