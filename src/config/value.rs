//! The types a setting can have, and how each is read from text (every source gives text:
//! the kernel command line, the TOML file after flattening, the environment, flags).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// A type a setting can have. `parse` gets the text as given (already trimmed).
pub trait SettingValue: Sized {
    /// Whether `--flag` alone means "true" (booleans only).
    const SWITCH: bool = false;
    /// Reads the text; the error says what was expected.
    fn parse(text: &str) -> Result<Self, &'static str>;
}

impl SettingValue for String {
    fn parse(text: &str) -> Result<Self, &'static str> {
        Ok(text.to_string())
    }
}

/// An empty value means "unset", so a later source can clear an earlier one.
impl<T: SettingValue> SettingValue for Option<T> {
    const SWITCH: bool = T::SWITCH;
    fn parse(text: &str) -> Result<Self, &'static str> {
        if text.is_empty() {
            Ok(None)
        } else {
            T::parse(text).map(Some)
        }
    }
}

impl SettingValue for bool {
    const SWITCH: bool = true;
    fn parse(text: &str) -> Result<Self, &'static str> {
        parse_bool(text).ok_or("not a boolean (1/0, true/false, yes/no, on/off)")
    }
}

macro_rules! numbers {
    ($($t:ty),*) => {$(
        impl SettingValue for $t {
            fn parse(text: &str) -> Result<Self, &'static str> {
                text.parse().map_err(|_| "not a number in range")
            }
        }
    )*};
}
numbers!(u16, u32, u64);

impl SettingValue for PathBuf {
    fn parse(text: &str) -> Result<Self, &'static str> {
        Ok(PathBuf::from(text))
    }
}

impl SettingValue for IpAddr {
    fn parse(text: &str) -> Result<Self, &'static str> {
        text.trim_matches(['[', ']'])
            .parse()
            .map_err(|_| "not an IP address")
    }
}

impl SettingValue for SocketAddr {
    fn parse(text: &str) -> Result<Self, &'static str> {
        text.parse().map_err(|_| "not HOST:PORT")
    }
}

/// A number of seconds (fractions allowed), e.g. `image_download_connection_timeout = 60`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Secs(pub Duration);

impl SettingValue for Secs {
    fn parse(text: &str) -> Result<Self, &'static str> {
        let v: f64 = text.parse().map_err(|_| "not a number of seconds")?;
        if !(0.0..1e9).contains(&v) {
            return Err("out of range (0 to 1e9 seconds)");
        }
        Ok(Secs(Duration::from_secs_f64(v)))
    }
}

/// A number of threads: `auto` (the program decides from the CPUs) or 1 to 64.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Threads {
    /// Decided from the CPUs.
    Auto,
    /// Exactly this many.
    Count(u16),
}

impl SettingValue for Threads {
    fn parse(text: &str) -> Result<Self, &'static str> {
        if text.eq_ignore_ascii_case("auto") {
            return Ok(Threads::Auto);
        }
        match text.parse::<u16>() {
            Ok(n @ 1..=64) => Ok(Threads::Count(n)),
            _ => Err("'auto' or a number of threads from 1 to 64"),
        }
    }
}

/// A size in MiB, 1 to 65536.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mib(pub u64);

impl SettingValue for Mib {
    fn parse(text: &str) -> Result<Self, &'static str> {
        match text.parse::<u64>() {
            Ok(n @ 1..=65536) => Ok(Mib(n)),
            _ => Err("a size in MiB from 1 to 65536"),
        }
    }
}

/// A comma-separated list (a TOML array is joined with commas before it gets here).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct List(pub Vec<String>);

impl SettingValue for List {
    fn parse(text: &str) -> Result<Self, &'static str> {
        Ok(List(
            text.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
        ))
    }
}

/// Declares an enum setting with its accepted spellings.
macro_rules! choice {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $v:ident = $text:literal),* $(,)? } $why:literal) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name { $($(#[$vm])* $v),* }
        impl SettingValue for $name {
            fn parse(text: &str) -> Result<Self, &'static str> {
                match text.to_ascii_lowercase().as_str() {
                    $($text => Ok($name::$v),)*
                    _ => Err($why),
                }
            }
        }
        impl $name {
            /// The spelling used in settings.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$v => $text),* }
            }
        }
    };
}

choice!(
    /// How the machine is rebooted or powered off (and its interfaces taken down).
    PowerBackendKind {
        /// Only records what would be done (safe on any machine).
        Log = "log",
        /// Really does it (refused while `RIVET_FORBID_POWER` is set).
        System = "system",
    } "not one of log, system"
);

choice!(
    /// How the image server authenticates rivet.
    AuthStrategy {
        /// No credentials.
        Noauth = "noauth",
        /// HTTP basic with `image_server_user` / `image_server_password`.
        HttpBasic = "http_basic",
    } "not one of noauth, http_basic"
);

choice!(
    /// The lowest TLS version rivet speaks.
    TlsVersion {
        /// TLS 1.2.
        V12 = "1.2",
        /// TLS 1.3.
        V13 = "1.3",
    } "not one of 1.2, 1.3"
);

choice!(
    /// The curve of the auto-TLS key.
    Curve {
        /// NIST P-256.
        P256 = "p256",
        /// NIST P-384.
        P384 = "p384",
    } "not one of p256, p384"
);

choice!(
    /// The scheme rivet advertises to Ironic.
    Scheme {
        /// Plain HTTP.
        Http = "http",
        /// HTTPS.
        Https = "https",
    } "not one of http, https"
);

/// Python's `strutils.bool_from_string` (strict).
pub fn parse_bool(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "t" | "true" | "on" | "y" | "yes" => Some(true),
        "0" | "f" | "false" | "off" | "n" | "no" => Some(false),
        _ => None,
    }
}
