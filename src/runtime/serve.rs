//! Serving a router on a listener, with the limits every listener of the operator has (the REST
//! API and the admin server alike): a header-read timeout, an idle timeout and a cap on open
//! connections.
//!
//! At the cap, a new connection first closes the oldest connection that is not in the middle of
//! a request (one that has not finished sending its request headers: a slow or silent client,
//! or an idle keep-alive); only when every open connection is busy with a request is the new one
//! closed instead. So slow clients can never keep a well-behaved one out: a kubelet probe or a
//! scrape from a fresh connection takes the place of the oldest slow one.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tracing::debug;

/// The address a request came from (in every request's extensions).
#[derive(Clone, Copy, Debug)]
pub struct ClientAddr(pub SocketAddr);

/// Limits of one listener (`--header-read-timeout`, `--idle-timeout`, `--max-connections`).
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    /// A client gets this long to send a request's headers.
    pub header_read_timeout: Duration,
    /// A connection with no request in progress for this long is closed.
    pub idle_timeout: Duration,
    /// Connections open at once (at least 1).
    pub max_connections: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_connections: 1000,
        }
    }
}

/// One open connection, as the cap sees it.
struct Conn {
    /// Requests in progress (headers read, answer not yet returned).
    busy: AtomicUsize,
    /// When the last request ended (or the connection was accepted), in ms since `epoch`.
    last_active_ms: AtomicU64,
    close: CancellationToken,
}

/// The open connections, by accept order (oldest first).
struct Registry {
    epoch: Instant,
    conns: Mutex<BTreeMap<u64, Arc<Conn>>>,
}

impl Registry {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Registers connection `id`; at the cap, closes the oldest one without a request in
    /// progress to make room, or answers None (every connection is busy: refuse the new one).
    fn admit(&self, id: u64, max: usize) -> Option<Arc<Conn>> {
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        if conns.len() >= max.max(1) {
            let victim = conns
                .iter()
                .find(|(_, c)| c.busy.load(Ordering::Acquire) == 0)
                .map(|(id, _)| *id)?;
            if let Some(c) = conns.remove(&victim) {
                c.close.cancel();
            }
        }
        let conn = Arc::new(Conn {
            busy: AtomicUsize::new(0),
            last_active_ms: AtomicU64::new(self.now_ms()),
            close: CancellationToken::new(),
        });
        conns.insert(id, conn.clone());
        Some(conn)
    }

    fn remove(&self, id: u64) {
        self.conns.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.conns.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// Marks a request in progress on its connection, until dropped.
struct Busy {
    conn: Arc<Conn>,
    registry: Arc<Registry>,
}

impl Busy {
    fn new(conn: Arc<Conn>, registry: Arc<Registry>) -> Self {
        conn.busy.fetch_add(1, Ordering::AcqRel);
        Self { conn, registry }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.conn
            .last_active_ms
            .store(self.registry.now_ms(), Ordering::Release);
        self.conn.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serves `app` (HTTP/1.1) on every connection `listener` accepts, within `limits`, until
/// `shutdown`; then lets the open connections finish their requests.
pub async fn serve<L>(
    mut listener: L,
    app: Router,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
) -> io::Result<()>
where
    L: axum::serve::Listener<Addr = SocketAddr>,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    // Without a timer, hyper's header-read timeout is silently off.
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let registry = Arc::new(Registry {
        epoch: Instant::now(),
        conns: Mutex::new(BTreeMap::new()),
    });
    let mut next_id: u64 = 0;
    loop {
        let (io, peer) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => break,
        };
        next_id += 1;
        let id = next_id;
        let Some(conn) = registry.admit(id, limits.max_connections) else {
            debug!(%peer, "connection cap reached and every connection is busy: closing the new one");
            continue;
        };
        let (app, requests_conn, requests_registry) = (app.clone(), conn.clone(), registry.clone());
        let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
            let busy = Busy::new(requests_conn.clone(), requests_registry.clone());
            request.extensions_mut().insert(ClientAddr(peer));
            let app = app.clone();
            async move {
                let response = app.oneshot(request.map(axum::body::Body::new)).await;
                drop(busy);
                Ok::<_, Infallible>(response.unwrap_or_else(|never| match never {}))
            }
        });
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(io), service));
        let (registry, idle_timeout) = (registry.clone(), limits.idle_timeout);
        tokio::spawn(async move {
            tokio::select! {
                ended = connection => {
                    if let Err(e) = ended {
                        debug!(%peer, error = %e, "connection ended with an error");
                    }
                }
                () = conn.close.cancelled() => debug!(%peer, "connection closed to make room under the cap"),
                () = idle(&conn, &registry, idle_timeout) => debug!(%peer, "idle connection closed"),
            }
            registry.remove(id);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Returns once `conn` has had no request in progress for `timeout`.
async fn idle(conn: &Conn, registry: &Registry, timeout: Duration) {
    let check = (timeout / 4).max(Duration::from_millis(100));
    loop {
        tokio::time::sleep(check).await;
        let quiet_ms = registry
            .now_ms()
            .saturating_sub(conn.last_active_ms.load(Ordering::Acquire));
        if conn.busy.load(Ordering::Acquire) == 0 && Duration::from_millis(quiet_ms) >= timeout {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> Arc<Registry> {
        Arc::new(Registry {
            epoch: Instant::now(),
            conns: Mutex::new(BTreeMap::new()),
        })
    }

    #[test]
    fn at_the_cap_the_oldest_connection_without_a_request_makes_room() {
        let r = registry();
        let first = r.admit(1, 3).expect("room");
        let second = r.admit(2, 3).expect("room");
        let _busy = Busy::new(first.clone(), r.clone());
        let _third = r.admit(3, 3).expect("room");
        let fourth = r.admit(4, 3).expect("the oldest idle one makes room");
        assert!(!first.close.is_cancelled(), "a connection in a request is kept");
        assert!(
            second.close.is_cancelled(),
            "the oldest one without a request goes"
        );
        assert_eq!(r.len(), 3);
        drop(fourth);
    }

    #[test]
    fn when_every_connection_is_busy_the_new_one_is_refused() {
        let r = registry();
        let a = r.admit(1, 2).expect("room");
        let b = r.admit(2, 2).expect("room");
        let (_x, _y) = (Busy::new(a.clone(), r.clone()), Busy::new(b.clone(), r.clone()));
        assert!(r.admit(3, 2).is_none());
        assert!(!a.close.is_cancelled() && !b.close.is_cancelled());
    }
}
