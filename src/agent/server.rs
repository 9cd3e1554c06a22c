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

use super::{api, ironic, system, tls, Agent};
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
    // Both servers stop accepting once a command asks the agent to stop (lockdown, rescue);
    // answers already being written still go out.
    let stopping = {
        let a = Arc::clone(agent);
        async move {
            a.stopped().await;
        }
    };
    let server = match server_tls {
        Some(t) => tokio::spawn(async move { tls::serve(listener, app, t.config, stopping).await }),
        None => tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(stopping)
                .await
        }),
    };
    Ok(Running {
        addr: bound,
        scheme,
        server,
        ironic: api,
        verify_ca,
    })
}

/// Runs the agent: the API, then lookup and heartbeats when an Ironic API URL is configured,
/// until a command stops it. After `system.lockdown` the network goes down and this never
/// returns (so nothing restarts the agent); after `rescue.finalize_rescue` it returns.
pub async fn run(agent: Arc<Agent>) -> Result<(), ServeError> {
    let settings = agent.settings();
    if settings.rescue_marker.exists() {
        // A rescued machine keeps its network for the rescue user, and no API.
        tracing::info!("Found rescue state marker file, not serving the API");
        return idle_forever().await;
    }
    let mut r = start(&agent).await?;
    let listen = |e: std::io::Error| ServeError::Listen(r.addr, e);
    let heartbeats = async {
        match r.ironic.take() {
            Some(i) => ironic::run(Arc::clone(&agent), i, r.verify_ca.take()).await,
            None => {
                tracing::info!("no api_url: running standalone (API only)");
                std::future::pending().await
            }
        }
    };
    let why = tokio::select! {
        res = heartbeats => {
            r.server.abort();
            return Err(res.err().map(ServeError::from).unwrap_or_else(|| {
                listen(std::io::Error::other("the Ironic loop ended"))
            }));
        }
        why = agent.stopped() => why,
    };
    // Heartbeats ended with the select; the server drains its last answers.
    match tokio::time::timeout(std::time::Duration::from_secs(10), &mut r.server).await {
        Ok(Ok(res)) => res.map_err(listen)?,
        Ok(Err(e)) => return Err(listen(std::io::Error::other(e))),
        Err(_) => r.server.abort(),
    }
    tracing::info!(?why, "the agent API stopped");
    match why {
        system::Stop::Rescued => Ok(()),
        system::Stop::Lockdown => {
            lock_down(&agent);
            tracing::info!("System locked down, looping forever to avoid a service restart");
            idle_forever().await
        }
    }
}

/// Every network interface down, through the guard of the power backend.
fn lock_down(agent: &Agent) {
    let s = agent.settings();
    let guard = crate::system::netif::guard(s.power_backend, s.power_log.clone());
    match crate::system::netif::interfaces_down(&*guard, crate::system::netif::Selection::Ipa) {
        Ok(r) => tracing::info!(?r, "network interfaces down"),
        Err(e) => tracing::error!("could not take the network interfaces down: {e}"),
    }
}

async fn idle_forever() -> Result<(), ServeError> {
    std::future::pending().await
}
