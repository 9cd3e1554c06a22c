//! Checksums: the algorithms IPA accepts, the choice of algorithm and expected value from
//! `image_info` (docs/image-info.md#checksums), and checksum files given by URL (docs/image-info.md#checksums).
//!
//! Differences from IPA, on purpose (see docs/image-info.md#checksums): hex is compared case-insensitively; a
//! checksum-file entry matches on the basename of its name, so `./img` and `/srv/img` match
//! `img`; names are compared literally, never as a regex; an unknown `os_hash_algo` with a
//! checksum URL falls back to typing the fetched value by its length instead of failing later.

use std::fmt;

use digest::DynDigest;

use super::info::{is_http_url, ImageInfo};
use crate::errors::{AgentError, Result};

/// A hash algorithm, named as Python's `hashlib` names it (which is what Glance sends).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// MD5 (legacy; gated by `md5_enabled` when typed by length).
    Md5,
    /// SHA-1.
    Sha1,
    /// SHA-224.
    Sha224,
    /// SHA-256.
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
    /// SHA3-224.
    Sha3_224,
    /// SHA3-256.
    Sha3_256,
    /// SHA3-384.
    Sha3_384,
    /// SHA3-512.
    Sha3_512,
    /// BLAKE2b with a 64-byte digest (`hashlib.blake2b`).
    Blake2b,
    /// BLAKE2s with a 32-byte digest (`hashlib.blake2s`).
    Blake2s,
}

impl Algorithm {
    /// Looks an algorithm up by its hashlib name (case-insensitive; `-` and `_` alike).
    pub fn from_name(name: &str) -> Option<Self> {
        let n = name.trim().to_ascii_lowercase().replace('-', "_");
        Some(match n.as_str() {
            "md5" => Algorithm::Md5,
            "sha1" => Algorithm::Sha1,
            "sha224" => Algorithm::Sha224,
            "sha256" => Algorithm::Sha256,
            "sha384" => Algorithm::Sha384,
            "sha512" => Algorithm::Sha512,
            "sha3_224" => Algorithm::Sha3_224,
            "sha3_256" => Algorithm::Sha3_256,
            "sha3_384" => Algorithm::Sha3_384,
            "sha3_512" => Algorithm::Sha3_512,
            "blake2b" => Algorithm::Blake2b,
            "blake2s" => Algorithm::Blake2s,
            _ => return None,
        })
    }

    /// IPA's rule for a bare checksum: 128 hex → sha512, 64 → sha256, 32 → md5 (if enabled).
    ///
    /// The error text is IPA's `ValueError` message.
    pub fn from_hex_len(
        value: &str,
        md5_enabled: bool,
    ) -> std::result::Result<Self, UnknownAlgorithm> {
        match value.trim().len() {
            128 => Ok(Algorithm::Sha512),
            64 => Ok(Algorithm::Sha256),
            32 if md5_enabled => Ok(Algorithm::Md5),
            32 => Err(UnknownAlgorithm::Md5Disabled),
            n => Err(UnknownAlgorithm::Length(n)),
        }
    }

    /// The hashlib name.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Md5 => "md5",
            Algorithm::Sha1 => "sha1",
            Algorithm::Sha224 => "sha224",
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha384 => "sha384",
            Algorithm::Sha512 => "sha512",
            Algorithm::Sha3_224 => "sha3_224",
            Algorithm::Sha3_256 => "sha3_256",
            Algorithm::Sha3_384 => "sha3_384",
            Algorithm::Sha3_512 => "sha3_512",
            Algorithm::Blake2b => "blake2b",
            Algorithm::Blake2s => "blake2s",
        }
    }

    /// A fresh streaming hasher for this algorithm.
    pub fn hasher(self) -> Hasher {
        let inner: Box<dyn DynDigest + Send> = match self {
            Algorithm::Md5 => Box::new(md5::Md5::default()),
            Algorithm::Sha1 => Box::new(sha1::Sha1::default()),
            Algorithm::Sha224 => Box::new(sha2::Sha224::default()),
            Algorithm::Sha256 => Box::new(sha2::Sha256::default()),
            Algorithm::Sha384 => Box::new(sha2::Sha384::default()),
            Algorithm::Sha512 => Box::new(sha2::Sha512::default()),
            Algorithm::Sha3_224 => Box::new(sha3::Sha3_224::default()),
            Algorithm::Sha3_256 => Box::new(sha3::Sha3_256::default()),
            Algorithm::Sha3_384 => Box::new(sha3::Sha3_384::default()),
            Algorithm::Sha3_512 => Box::new(sha3::Sha3_512::default()),
            Algorithm::Blake2b => Box::new(blake2::Blake2b512::default()),
            Algorithm::Blake2s => Box::new(blake2::Blake2s256::default()),
        };
        Hasher { algo: self, inner }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a bare checksum's algorithm cannot be told from its length (IPA's `ValueError` texts).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnknownAlgorithm {
    /// 32 hex digits, but MD5 is not enabled.
    #[error("MD5 support is disabled, and support will be removed in a 2024 version of Ironic.")]
    Md5Disabled,
    /// A length that is none of md5's, sha256's or sha512's.
    #[error(
        "Unable to identify checksum algorithm: a checksum of {0} characters is not md5 (32), \
         sha256 (64) or sha512 (128)"
    )]
    Length(usize),
}

/// A running digest over the bytes of an image.
pub struct Hasher {
    algo: Algorithm,
    inner: Box<dyn DynDigest + Send>,
}

impl Hasher {
    /// Feeds bytes.
    pub fn update(&mut self, data: &[u8]) {
        self.inner.update(data);
    }

    /// Starts over (a download that restarts from byte 0).
    pub fn reset(&mut self) {
        self.inner.reset();
    }

    /// The algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algo
    }

    /// The lowercase hex digest of everything fed so far.
    pub fn hex_digest(self) -> String {
        hex(&self.inner.finalize())
    }
}

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    use fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// What the image must hash to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    /// The algorithm.
    pub algo: Algorithm,
    /// The expected digest, lowercase hex.
    pub hex: String,
}

impl Expected {
    /// Compares a computed digest, case-insensitively.
    pub fn matches(&self, actual_hex: &str) -> bool {
        self.hex.eq_ignore_ascii_case(actual_hex.trim())
    }
}

/// Decides the algorithm and the expected digest for an image (docs/image-info.md#checksums), fetching checksum
/// files with `fetch_text` when a value is an http(s) URL.
pub fn resolve(
    info: &ImageInfo,
    md5_enabled: bool,
    fetch_text: &mut dyn FnMut(&str) -> Result<String>,
) -> Result<Expected> {
    let first_url = info.urls.first().map(String::as_str).unwrap_or("");
    let given_algo = info.os_hash_algo.as_deref().filter(|a| !a.is_empty());
    if let (Some(algo), Some(value)) = (
        given_algo.and_then(Algorithm::from_name),
        info.os_hash_value.as_deref().filter(|v| !v.is_empty()),
    ) {
        let hex = if is_http_url(value) {
            let text = fetch_text(value)?;
            parse_checksum_file(&text, value, first_url)?
        } else {
            value.trim().to_string()
        };
        return Ok(Expected {
            algo,
            hex: hex.to_ascii_lowercase(),
        });
    }
    if let Some(checksum) = info.checksum.as_deref().filter(|c| !c.is_empty()) {
        let value = if is_http_url(checksum) {
            let text = fetch_text(checksum)?;
            parse_checksum_file(&text, checksum, first_url)?
        } else {
            checksum.trim().to_string()
        };
        let algo = Algorithm::from_hex_len(&value, md5_enabled).map_err(|e| {
            AgentError::RestError(format!(
                "Unable to proceed with image {} as the checksum indicator has been used but \
                 the algorithm could not be identified. Error: {e}",
                info.id
            ))
        })?;
        if let Some(given) = given_algo {
            if given.to_ascii_lowercase() != algo.name() {
                tracing::warn!(
                    image = %info.id,
                    "os_hash_algo {given} was given but the checksum looks like {algo}; using {algo}"
                );
            }
        }
        return Ok(Expected {
            algo,
            hex: value.to_ascii_lowercase(),
        });
    }
    Err(AgentError::RestError(format!(
        "Unable to verify image {} with available checksums. Please make sure the specified \
         'os_hash_algo' (currently {}) is supported by this ramdisk, or provide a md5 checksum \
         via the 'checksum' field",
        info.id,
        given_algo.unwrap_or("None")
    )))
}

fn is_hex_digest(s: &str) -> bool {
    matches!(s.len(), 32 | 64 | 128) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The last path segment of a URL's path (query and fragment ignored).
pub fn url_basename(url: &str) -> String {
    let path = match url::Url::parse(url) {
        Ok(u) => u.path().to_string(),
        Err(_) => url.split(['?', '#']).next().unwrap_or("").to_string(),
    };
    path.rsplit('/').next().unwrap_or("").to_string()
}

fn basename(name: &str) -> &str {
    name.rsplit('/').next().unwrap_or(name)
}

/// Finds the digest for the image at `image_url` in a checksum file's text (docs/image-info.md#checksums).
///
/// Accepts a bare hash, GNU lines (`hash  name`, `hash *name`), BSD lines
/// (`ALGO (name) = hash`) and `#` comments. Names match by basename, literally.
pub fn parse_checksum_file(text: &str, checksum_url: &str, image_url: &str) -> Result<String> {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if lines.is_empty() {
        return Err(AgentError::download(checksum_url, "Empty checksum file"));
    }
    if lines.len() == 1 && !lines[0].contains(char::is_whitespace) {
        if is_hex_digest(lines[0]) {
            return Ok(lines[0].to_string());
        }
        return Err(AgentError::download(
            checksum_url,
            format!(
                "Invalid checksum file (No valid checksum found) ['{}']",
                lines[0]
            ),
        ));
    }
    let wanted = url_basename(image_url);
    for line in lines.iter().filter(|l| !l.starts_with('#')) {
        if let Some(hash) = match_line(line, &wanted) {
            return Ok(hash.to_string());
        }
    }
    Err(AgentError::download(
        checksum_url,
        format!("Checksum file does not contain name {wanted}"),
    ))
}

/// Returns the digest of `line` if the line is about the file `wanted`.
fn match_line<'a>(line: &'a str, wanted: &str) -> Option<&'a str> {
    // BSD / CentOS style: `SHA256 (name) = hash`.
    if let (Some(open), Some(close)) = (line.find(" ("), line.rfind(") = ")) {
        if open < close {
            let name = &line[open + 2..close];
            let hash = line[close + 4..].trim();
            return (basename(name) == wanted && is_hex_digest(hash)).then_some(hash);
        }
    }
    // GNU style: `hash  name` or `hash *name` (binary mode marker).
    let (hash, rest) = line.split_once(char::is_whitespace)?;
    let name = rest.trim_start().trim_start_matches('*');
    (is_hex_digest(hash) && basename(name) == wanted).then_some(hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    const URL: &str = "http://example.com/path/image.img?x=1";

    #[test]
    fn known_vectors() {
        let mut h = Algorithm::Sha256.hasher();
        h.update(b"abc");
        assert_eq!(
            h.hex_digest(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let mut h = Algorithm::Md5.hasher();
        h.update(b"abc");
        assert_eq!(h.hex_digest(), "900150983cd24fb0d6963f7d28e17f72");
        let mut h = Algorithm::Sha512.hasher();
        h.update(b"ab");
        h.reset();
        h.update(b"abc");
        assert!(h.hex_digest().starts_with("ddaf35a193617aba"));
        for name in [
            "sha1", "sha224", "sha384", "sha3_256", "SHA3-512", "blake2b", "blake2s",
        ] {
            assert!(Algorithm::from_name(name).is_some(), "{name}");
        }
        assert_eq!(Algorithm::from_name("whirlpool"), None);
    }

    #[test]
    fn length_rule() {
        assert_eq!(
            Algorithm::from_hex_len(&"a".repeat(128), false),
            Ok(Algorithm::Sha512)
        );
        assert_eq!(
            Algorithm::from_hex_len(&"a".repeat(64), false),
            Ok(Algorithm::Sha256)
        );
        assert_eq!(
            Algorithm::from_hex_len(&"a".repeat(32), true),
            Ok(Algorithm::Md5)
        );
        assert!(Algorithm::from_hex_len(&"a".repeat(32), false)
            .unwrap_err()
            .to_string()
            .starts_with("MD5 support is disabled"));
        assert!(Algorithm::from_hex_len("abc", true).is_err());
    }

    #[test]
    fn checksum_files() {
        let h64 = "A".repeat(64);
        let h32 = "b".repeat(32);
        let h128 = "c".repeat(128);
        let ok = |text: &str| parse_checksum_file(text, "http://c/sums", URL).unwrap();
        assert_eq!(ok(&format!("{h64}\n")), h64);
        assert_eq!(
            ok(&format!("# c\n{h32}  other.img\n{h64}  image.img\n")),
            h64
        );
        assert_eq!(ok(&format!("{h128} *image.img")), h128);
        assert_eq!(ok(&format!("{h64}  ./image.img\n{h32}  x")), h64);
        assert_eq!(ok(&format!("{h64}  /srv/images/image.img")), h64);
        assert_eq!(
            ok(&format!("SHA256 (image.img) = {h64}\nMD5 (x) = {h32}")),
            h64
        );
        assert_eq!(ok(&format!("SHA512 (./image.img) = {h128}")), h128);
    }

    #[test]
    fn checksum_file_errors() {
        let err = |text: &str| parse_checksum_file(text, "http://c/sums", URL).unwrap_err();
        let e = err("\n  \n");
        assert_eq!(e.type_name(), "ImageDownloadError");
        assert_eq!(
            e.details(),
            "Download of image http://c/sums failed: Empty checksum file"
        );
        assert!(err("invalid")
            .details()
            .ends_with("Invalid checksum file (No valid checksum found) ['invalid']"));
        let h = "a".repeat(64);
        assert!(err(&format!("{h}  image-img\n{h}  imageXimg"))
            .details()
            .ends_with("Checksum file does not contain name image.img"));
        // A regex would let '.' match any char; we compare literally.
        assert!(err(&format!("{h}  imageximg\n{h} b"))
            .details()
            .contains("does not contain"));
    }

    fn info(algo: Option<&str>, value: Option<&str>, checksum: Option<&str>) -> ImageInfo {
        ImageInfo {
            id: "fake_id".into(),
            urls: vec![URL.into()],
            os_hash_algo: algo.map(Into::into),
            os_hash_value: value.map(Into::into),
            checksum: checksum.map(Into::into),
            ..Default::default()
        }
    }

    fn no_fetch(_: &str) -> Result<String> {
        panic!("no fetch expected")
    }

    #[test]
    fn resolution_order() {
        let h = "ab".repeat(32);
        let e = resolve(
            &info(Some("sha256"), Some(&h.to_uppercase()), None),
            false,
            &mut no_fetch,
        )
        .unwrap();
        assert_eq!(
            e,
            Expected {
                algo: Algorithm::Sha256,
                hex: h.clone()
            }
        );
        assert!(e.matches(&h.to_uppercase()));
        // Unknown algo, md5 checksum allowed.
        let m = "cd".repeat(16);
        let e = resolve(
            &info(Some("whirlpool"), Some("x"), Some(&m)),
            true,
            &mut no_fetch,
        )
        .unwrap();
        assert_eq!(e.algo, Algorithm::Md5);
        // Unknown algo and nothing else.
        let err = resolve(
            &info(Some("whirlpool"), Some("x"), None),
            true,
            &mut no_fetch,
        )
        .unwrap_err();
        assert_eq!(err.type_name(), "RESTError");
        assert!(err.to_string().starts_with(
            "An error occurred: Unable to verify image fake_id with available checksums."
        ));
        assert!(err.details().contains("(currently whirlpool)"));
        // md5 by length when disabled.
        let err = resolve(&info(None, None, Some(&m)), false, &mut no_fetch).unwrap_err();
        assert!(err
            .details()
            .contains("algorithm could not be identified. Error: MD5 support is disabled"));
    }

    #[test]
    fn resolution_fetches_urls() {
        let h = "ef".repeat(64);
        let mut calls = vec![];
        let mut fetch = |u: &str| {
            calls.push(u.to_string());
            Ok(format!("{h}  image.img\n"))
        };
        let e = resolve(
            &info(None, None, Some("http://c/SHA512SUMS")),
            false,
            &mut fetch,
        )
        .unwrap();
        assert_eq!(e.algo, Algorithm::Sha512);
        let e = resolve(
            &info(Some("sha512"), Some("https://c/S"), None),
            false,
            &mut fetch,
        )
        .unwrap();
        assert_eq!(e.hex, h);
        assert_eq!(calls, vec!["http://c/SHA512SUMS", "https://c/S"]);
    }

    #[test]
    fn basenames() {
        assert_eq!(url_basename("http://h/a/b/c.qcow2?sig=1#f"), "c.qcow2");
        assert_eq!(url_basename("http://h"), "");
    }
}
