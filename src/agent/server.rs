//! Starting the agent: TLS choice, the listener, the API server and the Ironic loop.
//!
//! Concurrency policy (the one place it is written down):
//! - the async runtime (two worker threads) runs only the HTTP API, lookup and heartbeats:
//!   work that waits on the network and never blocks;
//! - every async command body runs on a thread of its own ([`super::commands`]), so a deploy or
//!   an erase never occupies a runtime thread;
//! - inside a deploy, download, hashing, decoding and disk writes each have their own OS
//!   thread joined by bounded queues (`deploy::pipeline`); the download's HTTP client runs on a
//!   small runtime private to that download (`image::fetch`), never on the API's.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use super::{api, ironic, tls, Agent};
use crate::config::Scheme;

/// Why the agent could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// TLS could not be set up.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// Talking to Ironic failed for good (lookup, configuration).
    #[error(transparent)]
    Ironic(#[from] ironic::IronicError),
    /// `listen_tls` without its files.
    #[error("listen_tls needs tls_cert_file and tls_key_file")]
    TlsFilesMissing,
    /// Auto-TLS needs an IP address to put in the certificate.
    #[error("auto-TLS needs an IP address to advertise, not {0}")]
    NotAnAddress(String),
    /// The listener could not be bound, or serving failed.
    #[error("cannot listen on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
}

/// A running agent API.
pub struct Running {
    /// The address the API listens on.
    pub addr: SocketAddr,
    /// http or https.
    pub scheme: Scheme,
    /// The server task.
    pub server: tokio::task::JoinHandle<std::io::Result<()>>,
    /// The Ironic client, when `api_url` is set (lookup has not happened yet).
    pub ironic: Option<ironic::Ironic>,
    /// The auto-TLS certificate, sent to Ironic as `agent_verify_ca`.
    pub verify_ca: Option<String>,
}

/// Chooses TLS, binds the listener and starts serving the API. Ironic's API version is
/// learnt first, because it decides auto-TLS.
pub async fn start(agent: &Arc<Agent>) -> Result<Running, ServeError> {
    let s = agent.settings();
    let mut api = ironic::Ironic::new(agent)?;
    if let Some(i) = api.as_mut() {
        let v = i.discover_version().await;
        tracing::info!("Ironic API version {}.{}", v.0, v.1);
    }
    let server_tls = if s.listen_tls {
        let (Some(cert), Some(key)) = (&s.tls_cert_file, &s.tls_key_file) else {
            return Err(ServeError::TlsFilesMissing);
        };
        Some(tls::static_tls(cert, key, s.tls_min_version)?)
    } else if let Some(i) = api
        .as_ref()
        .filter(|i| i.version() >= (1, 68) && s.enable_auto_tls)
    {
        let host = ironic::advertise_host(agent, i)?;
        let ip: IpAddr = host
            .trim_matches(['[', ']'])
            .parse()
            .map_err(|_| ServeError::NotAnAddress(host.clone()))?;
        Some(tls::auto_tls(
            ip,
            s.tls_certificate_curve,
            s.tls_min_version,
            Some(&s.tls_state_dir),
        )?)
    } else {
        None
    };
    let addr = s.listen_addr();
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| ServeError::Listen(addr, e))?;
    let bound = listener
        .local_addr()
        .map_err(|e| ServeError::Listen(addr, e))?;
    let scheme = if server_tls.is_some() {
        Scheme::Https
    } else {
        Scheme::Http
    };
    agent.set_scheme(scheme);
    tracing::info!(
        "rivet {} agent API listening on {}://{bound} (power backend: {})",
        super::VERSION,
        scheme.as_str(),
        agent.power().name()
    );
    let app = api::router(Arc::clone(agent));
    let verify_ca = server_tls.as_ref().and_then(|t| t.verify_ca.clone());
    let server = match server_tls {
        Some(t) => tokio::spawn(async move { tls::serve(listener, app, t.config).await }),
        None => tokio::spawn(async move { axum::serve(listener, app).await }),
    };
    Ok(Running {
        addr: bound,
        scheme,
        server,
        ironic: api,
        verify_ca,
    })
}

/// Runs the agent until the server stops: the API, then lookup and heartbeats when an Ironic
/// API URL is configured.
pub async fn run(agent: Arc<Agent>) -> Result<(), ServeError> {
    let r = start(&agent).await?;
    let listen = |e: std::io::Error| ServeError::Listen(r.addr, e);
    match r.ironic {
        Some(i) => {
            if let Err(e) = ironic::run(Arc::clone(&agent), i, r.verify_ca).await {
                r.server.abort();
                return Err(e.into());
            }
        }
        None => tracing::info!("no api_url: running standalone (API only)"),
    }
    match r.server.await {
        Ok(res) => res.map_err(listen),
        Err(e) => Err(listen(std::io::Error::other(e))),
    }
}
