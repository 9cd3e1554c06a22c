//! TLS on the agent's own API (SPEC §2, §4.4): static (`listen_tls` with `tls_cert_file` /
//! `tls_key_file`) or automatic — a self-signed EC certificate for the advertised address,
//! sent to Ironic as `agent_verify_ca` in heartbeats, which Ironic then uses as CA bundle.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{Curve, TlsVersion};

/// A TLS setup for the API.
pub(crate) struct ServerTls {
    /// The rustls configuration.
    pub config: Arc<rustls::ServerConfig>,
    /// The certificate (PEM) to send as `agent_verify_ca` (auto-TLS only).
    pub verify_ca: Option<String>,
}

/// Why the agent's TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    File {
        /// The PEM file.
        path: std::path::PathBuf,
        /// The cause.
        source: rustls::pki_types::pem::Error,
    },
    /// The auto-TLS certificate could not be made.
    #[error("cannot make the agent certificate: {0}")]
    Certificate(#[source] rcgen::Error),
    /// The auto-TLS key could not be used as a private key.
    #[error("cannot make the agent certificate: {0}")]
    PrivateKey(&'static str),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(#[source] rustls::Error),
}

fn server_config(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    min_version: TlsVersion,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = if min_version == TlsVersion::V13 {
        &[&rustls::version::TLS13]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(TlsError::Config)?;
    Ok(Arc::new(cfg))
}

/// `listen_tls`: the certificate chain and key from PEM files.
pub(crate) fn static_tls(
    cert_file: &Path,
    key_file: &Path,
    min_version: TlsVersion,
) -> Result<ServerTls, TlsError> {
    let unreadable = |path: &Path| {
        let path = path.to_owned();
        move |source| TlsError::File { path, source }
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .map_err(unreadable(cert_file))?
        .collect::<Result<_, _>>()
        .map_err(unreadable(cert_file))?;
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(unreadable(key_file))?;
    Ok(ServerTls {
        config: server_config(certs, key, min_version)?,
        verify_ca: None,
    })
}

/// Auto-TLS: a self-signed EC certificate (P-256 or P-384) for `ip`, valid from an hour ago
/// (clock skew) for 30 days, as IPA makes it. Written to `state_dir` when given.
pub(crate) fn auto_tls(
    ip: IpAddr,
    curve: Curve,
    min_version: TlsVersion,
    state_dir: Option<&Path>,
) -> Result<ServerTls, TlsError> {
    let alg = match curve {
        Curve::P256 => &rcgen::PKCS_ECDSA_P256_SHA256,
        Curve::P384 => &rcgen::PKCS_ECDSA_P384_SHA384,
    };
    let key = rcgen::KeyPair::generate_for(alg).map_err(TlsError::Certificate)?;
    let mut params = rcgen::CertificateParams::default();
    let host = rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned();
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        if host.is_empty() {
            ip.to_string()
        } else {
            host
        },
    );
    params.subject_alt_names = vec![rcgen::SanType::IpAddress(ip)];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - Duration::from_secs(3600);
    params.not_after = now + Duration::from_secs(30 * 24 * 3600);
    let cert = params.self_signed(&key).map_err(TlsError::Certificate)?;
    let pem = cert.pem();
    if let Some(dir) = state_dir {
        let written = std::fs::create_dir_all(dir)
            .and_then(|()| std::fs::write(dir.join("agent.crt"), &pem))
            .and_then(|()| std::fs::write(dir.join("agent.key"), key.serialize_pem()));
        if let Err(e) = written {
            tracing::warn!(
                "cannot keep the agent certificate in {}: {e}",
                dir.display()
            );
        }
    }
    let key_der = PrivateKeyDer::try_from(key.serialize_der()).map_err(TlsError::PrivateKey)?;
    Ok(ServerTls {
        config: server_config(vec![cert.der().clone()], key_der, min_version)?,
        verify_ca: Some(pem),
    })
}
