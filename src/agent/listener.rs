//! The API's connections, plain and TLS alike: how many, and for how long a client may take to
//! send a request.
//!
//! Anyone can connect to the agent before any token is checked, so connections are what an
//! attacker (or a broken client) spends: without limits a few hundred idle sockets exhausted the
//! process's descriptors and then nobody, Ironic included, got an answer. Here:
//! - the TLS handshake and the request head must each arrive within `request_timeout` (hyper's
//!   header timer also runs while a kept-alive connection waits for its next request), and the
//!   body within `request_timeout` after its head; past that the connection is closed;
//! - at most `max_connections` are open; when a new one arrives at the limit, the oldest
//!   connection not in the middle of a request is closed for it (an idle socket yields to a
//!   client that has something to say; a request being served is never cut);
//! - the descriptor limit is raised to the hard limit at start-up ([`raise_nofile_limit`]).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;

/// The largest request body accepted (axum's default limit, kept).
const MAX_BODY: usize = 2 << 20;

/// How the API treats its connections.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// The longest a TLS handshake, a request head, or a body after its head may take.
    pub request_timeout: Duration,
    /// Connections open at once.
    pub max_connections: usize,
}

/// Raises the soft limit on open descriptors to the hard limit (as far as the kernel allows),
/// so the API's bound on connections, not the descriptor limit, is what a flood meets first.
/// Returns the soft limit in force afterwards.
pub(crate) fn raise_nofile_limit() -> Option<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let now = getrlimit(Resource::Nofile);
    let hard = match now.maximum {
        Some(h) => h,
        // No hard limit: the kernel's own ceiling.
        None => std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse().ok())?,
    };
    if now.current.is_some_and(|c| c >= hard) {
        return now.current;
    }
    let raised = Rlimit {
        current: Some(hard),
        maximum: now.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => {
            tracing::info!("open file limit raised from {:?} to {hard}", now.current);
            Some(hard)
        }
        Err(e) => {
            tracing::warn!("cannot raise the open file limit to {hard}: {e}");
            now.current
        }
    }
}

/// One open connection, as the accept loop sees it.
struct Conn {
    id: u64,
    /// A request is being read or answered: never closed for a newcomer.
    busy: AtomicBool,
    /// Closes the connection.
    close: tokio::sync::Notify,
}

/// The open connections, oldest first.
#[derive(Default)]
struct Conns {
    open: Mutex<VecDeque<Arc<Conn>>>,
}

impl Conns {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Arc<Conn>>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes room for one more (closing the oldest idle one at the limit) and registers it;
    /// `None` when every slot is serving a request.
    fn admit(&self, id: u64, max: usize) -> Option<Arc<Conn>> {
        let mut open = self.lock();
        if open.len() >= max {
            let idle = open.iter().position(|c| !c.busy.load(Ordering::SeqCst))?;
            if let Some(old) = open.remove(idle) {
                old.close.notify_one();
            }
        }
        let c = Arc::new(Conn {
            id,
            busy: AtomicBool::new(false),
            close: tokio::sync::Notify::new(),
        });
        open.push_back(Arc::clone(&c));
        Some(c)
    }

    fn remove(&self, id: u64) {
        self.lock().retain(|c| c.id != id);
    }
}

/// The router as hyper calls it, marking the connection busy while a request is served.
#[derive(Clone)]
struct Tracked {
    inner: TowerToHyperService<Router>,
    conn: Arc<Conn>,
}

impl hyper::service::Service<hyper::Request<hyper::body::Incoming>> for Tracked {
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Self::Error>> + Send>>;

    fn call(&self, req: hyper::Request<hyper::body::Incoming>) -> Self::Future {
        self.conn.busy.store(true, Ordering::SeqCst);
        let fut = self.inner.call(req);
        let conn = Arc::clone(&self.conn);
        Box::pin(async move {
            let r = fut.await;
            conn.busy.store(false, Ordering::SeqCst);
            r
        })
    }
}

/// Reads the whole body within the timeout before the route sees the request: a body that
/// does not arrive in time gets 408 and the connection is closed.
async fn complete_body(State(timeout): State<Duration>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, MAX_BODY)).await {
        Ok(Ok(bytes)) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Ok(Err(e)) => {
            let too_big = std::error::Error::source(&e)
                .is_some_and(|s| s.to_string().contains("length limit"));
            let status = if too_big {
                StatusCode::PAYLOAD_TOO_LARGE
            } else {
                StatusCode::BAD_REQUEST
            };
            closing(super::api::fault(
                status,
                &format!("{status}: cannot read the request body: {e}"),
            ))
        }
        Err(_) => closing(super::api::fault(
            StatusCode::REQUEST_TIMEOUT,
            &format!("408 Request Timeout: the request body did not arrive within {timeout:?}"),
        )),
    }
}

fn closing(mut r: Response) -> Response {
    r.headers_mut().insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    r.into_response()
}

/// Serves `app` on `listener` (over TLS when `tls` is given) until `stop` resolves; then no
/// connection is accepted, each open one ends after the answer it is writing (hyper's graceful
/// shutdown), and this returns once they are gone (at most `request_timeout` later).
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: Limits,
    stop: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let (stopping_tx, stopping) = tokio::sync::watch::channel(false);
    tokio::pin!(stop);
    let app = app.layer(axum::middleware::from_fn_with_state(
        limits.request_timeout,
        complete_body,
    ));
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let conns = Arc::new(Conns::default());
    let mut next_id = 0u64;
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = &mut stop => {
                stopping_tx.send_replace(true);
                drop(listener);
                let deadline = tokio::time::Instant::now() + limits.request_timeout;
                while !conns.lock().is_empty() && tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                return Ok(());
            }
        };
        let (tcp, peer) = match accepted {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors, or a connection reset before it was accepted: keep
                // serving the connections there are.
                tracing::warn!("cannot accept a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        next_id += 1;
        let Some(conn) = conns.admit(next_id, limits.max_connections) else {
            tracing::warn!(%peer, "every API connection is serving a request: closing the new one");
            continue;
        };
        let service = Tracked {
            inner: TowerToHyperService::new(app.clone()),
            conn: Arc::clone(&conn),
        };
        let (acceptor, conns) = (acceptor.clone(), Arc::clone(&conns));
        let stopping = stopping.clone();
        tokio::spawn(async move {
            let served = async {
                match acceptor {
                    Some(a) => {
                        match tokio::time::timeout(limits.request_timeout, a.accept(tcp)).await {
                            Ok(Ok(io)) => serve_one(io, service, limits, stopping).await,
                            Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
                            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                        }
                    }
                    None => serve_one(tcp, service, limits, stopping).await,
                }
            };
            tokio::select! {
                () = served => {}
                () = conn.close.notified() => {
                    tracing::debug!(%peer, "idle API connection closed for a new one");
                }
            }
            conns.remove(conn.id);
        });
    }
}

async fn serve_one<I>(
    io: I,
    service: Tracked,
    limits: Limits,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    // HTTP/1 only: the protocol sniffing of the auto builder would wait for a first byte
    // without any timer.
    let mut b = Builder::new(TokioExecutor::new()).http1_only();
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.request_timeout);
    let conn = b.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let done = tokio::select! {
        r = conn.as_mut() => Some(r),
        _ = stopping.wait_for(|s| *s) => None,
    };
    let r = match done {
        Some(r) => r,
        // The agent stops: finish the answer being written, keep nothing alive.
        None => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = r {
        tracing::debug!("API connection: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_the_limit_the_oldest_idle_connection_makes_room() {
        let c = Conns::default();
        let a = c.admit(1, 2).unwrap();
        let b = c.admit(2, 2).unwrap();
        a.busy.store(true, Ordering::SeqCst);
        // 1 is busy: 2 is closed for 3.
        let _third = c.admit(3, 2).unwrap();
        let ids: Vec<u64> = c.lock().iter().map(|x| x.id).collect();
        assert_eq!(ids, vec![1, 3]);
        drop(b);
        for x in c.lock().iter() {
            x.busy.store(true, Ordering::SeqCst);
        }
        assert!(c.admit(4, 2).is_none(), "all busy: the newcomer is refused");
    }

    #[test]
    fn the_soft_descriptor_limit_reaches_the_hard_one() {
        let after = raise_nofile_limit();
        let now = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        assert_eq!(after, now.current);
    }
}
