//! HTTPS for the REST API: rustls (ring), with a certificate that is re-read when its files
//! change (cert-manager renewals, rotated Secret volumes) — no restart. The files are checked
//! every few seconds; new content that does not load (half-written files, a key that does not
//! match the certificate) is logged and the previous certificate kept.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// How often the certificate files are checked for new content.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(2);
/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; more connections wait to be accepted.
const MAX_HANDSHAKES: usize = 256;
/// Handshakes in progress at once from one client address; a connection past it is closed at
/// once, so idle connections from one address cannot take the slots of everyone else.
pub const MAX_HANDSHAKES_PER_ADDRESS: usize = 16;

/// Handshakes in progress, per client address (only addresses with one are kept).
#[derive(Default)]
struct InFlight(Mutex<HashMap<IpAddr, usize>>);

/// One handshake counted in [`InFlight`]; uncounted when dropped.
struct Counted {
    in_flight: Arc<InFlight>,
    address: IpAddr,
}

impl InFlight {
    fn start(self: &Arc<Self>, address: IpAddr, max: usize) -> Option<Counted> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(address).or_default();
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Counted {
            in_flight: self.clone(),
            address,
        })
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        let mut map = self.in_flight.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.address) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.address);
            }
        }
    }
}

/// The serving certificate, replaced when the files change.
#[derive(Debug)]
pub struct ReloadingCert {
    cert_file: PathBuf,
    key_file: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
    /// The file contents last looked at (loaded or refused), to notice the next change.
    seen: RwLock<(Vec<u8>, Vec<u8>)>,
}

impl ReloadingCert {
    /// Loads the certificate chain and key; fails when they do not load.
    pub fn load(cert_file: &Path, key_file: &Path, provider: Arc<CryptoProvider>) -> io::Result<Self> {
        let (cert_pem, key_pem) = (std::fs::read(cert_file)?, std::fs::read(key_file)?);
        let key = certified_key(&cert_pem, &key_pem, &provider).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} / {}: {e}", cert_file.display(), key_file.display()),
            )
        })?;
        Ok(Self {
            cert_file: cert_file.to_path_buf(),
            key_file: key_file.to_path_buf(),
            provider,
            current: RwLock::new(Arc::new(key)),
            seen: RwLock::new((cert_pem, key_pem)),
        })
    }

    /// Re-reads the files; swaps the certificate when they changed and load. Returns whether it
    /// swapped.
    pub async fn reload_if_changed(&self) -> bool {
        let (cert_file, key_file) = (self.cert_file.clone(), self.key_file.clone());
        let read = tokio::task::spawn_blocking(move || {
            Ok::<_, io::Error>((std::fs::read(cert_file)?, std::fs::read(key_file)?))
        })
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e)));
        let (cert_pem, key_pem) = match read {
            Ok(files) => files,
            Err(e) => {
                debug!(error = %e, "reading the TLS files failed; keeping the current certificate");
                return false;
            }
        };
        {
            let seen = self.seen.read().unwrap_or_else(|e| e.into_inner());
            if seen.0 == cert_pem && seen.1 == key_pem {
                return false;
            }
        }
        let loaded = certified_key(&cert_pem, &key_pem, &self.provider);
        *self.seen.write().unwrap_or_else(|e| e.into_inner()) = (cert_pem, key_pem);
        match loaded {
            Ok(key) => {
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(key);
                info!(cert = %self.cert_file.display(), "TLS certificate reloaded");
                true
            }
            Err(e) => {
                warn!(cert = %self.cert_file.display(), error = %e, "the new TLS files do not load; keeping the previous certificate");
                false
            }
        }
    }

    /// Checks the files every `interval` until `shutdown`.
    pub async fn watch(self: Arc<Self>, interval: Duration, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
            self.reload_if_changed().await;
        }
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

/// A certificate chain and its private key from PEM, checked to belong together.
fn certified_key(cert_pem: &[u8], key_pem: &[u8], provider: &CryptoProvider) -> Result<CertifiedKey, String> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("certificate: {e}"))?;
    if chain.is_empty() {
        return Err("no certificate in the certificate file".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| format!("private key: {e}"))?;
    CertifiedKey::from_der(chain, key, provider).map_err(|e| e.to_string())
}

/// The rustls server configuration (HTTP/1.1) around `cert`.
pub fn server_config(cert: Arc<ReloadingCert>, provider: Arc<CryptoProvider>) -> io::Result<ServerConfig> {
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// An `axum::serve` listener that hands out TLS connections. Handshakes run in their own
/// tasks (bounded in number, per client address too, and in time), so a slow client never holds
/// up the others.
pub struct TlsListener {
    connections: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local_addr: SocketAddr,
}

impl TlsListener {
    pub fn new(tcp: TcpListener, acceptor: TlsAcceptor, shutdown: CancellationToken) -> io::Result<Self> {
        Self::with_limits(tcp, acceptor, shutdown, MAX_HANDSHAKES_PER_ADDRESS)
    }

    fn with_limits(
        tcp: TcpListener,
        acceptor: TlsAcceptor,
        shutdown: CancellationToken,
        per_address: usize,
    ) -> io::Result<Self> {
        let local_addr = tcp.local_addr()?;
        let in_flight = Arc::new(InFlight::default());
        let (tx, connections) = mpsc::channel(64);
        let permits = Arc::new(Semaphore::new(MAX_HANDSHAKES));
        tokio::spawn(async move {
            loop {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    return;
                };
                let accepted = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tx.closed() => return,
                    accepted = tcp.accept() => accepted,
                };
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: wait a little instead of spinning.
                        debug!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Some(counted) = in_flight.start(peer.ip(), per_address) else {
                    debug!(%peer, "too many TLS handshakes in progress from this address: connection closed");
                    continue;
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    let _counted = counted;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(Self {
            connections,
            local_addr,
        })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.connections.recv().await {
            Some(connection) => connection,
            // The accept loop has stopped (shutdown): no more connections, ever.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local_addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider() -> Arc<CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    fn self_signed(name: &str) -> (String, String) {
        let cert = rcgen::generate_simple_self_signed(vec![name.to_string()]).expect("certificate");
        (cert.cert.pem(), cert.signing_key.serialize_pem())
    }

    fn served(c: &ReloadingCert) -> Vec<u8> {
        c.current.read().expect("lock").cert[0].to_vec()
    }

    #[tokio::test]
    async fn new_files_replace_the_certificate_and_broken_ones_keep_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert_file, key_file) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        let (cert_a, key_a) = self_signed("a.example");
        std::fs::write(&cert_file, &cert_a).expect("write");
        std::fs::write(&key_file, &key_a).expect("write");
        let c = ReloadingCert::load(&cert_file, &key_file, provider()).expect("loads");
        let first = served(&c);
        assert!(!c.reload_if_changed().await, "unchanged files change nothing");

        // Half a renewal: a new certificate with the old key does not load.
        let (cert_b, key_b) = self_signed("b.example");
        std::fs::write(&cert_file, &cert_b).expect("write");
        assert!(!c.reload_if_changed().await);
        assert_eq!(
            served(&c),
            first,
            "a mismatched pair keeps the previous certificate"
        );

        std::fs::write(&key_file, &key_b).expect("write");
        assert!(c.reload_if_changed().await);
        assert_ne!(served(&c), first);

        std::fs::write(&cert_file, "garbage").expect("write");
        assert!(!c.reload_if_changed().await);
        assert_ne!(served(&c), first, "garbage keeps the current certificate");
    }

    /// Idle connections from one address (that never start a handshake) take at most their
    /// share of the handshake slots: the next one from that address is closed at once, and a
    /// client from another address completes its handshake meanwhile.
    #[tokio::test]
    async fn idle_connections_from_one_address_cannot_take_every_handshake_slot() {
        use tokio::io::AsyncReadExt;
        let (cert_pem, key_pem) = self_signed("localhost");
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert_file, key_file) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        std::fs::write(&cert_file, &cert_pem).expect("write");
        std::fs::write(&key_file, &key_pem).expect("write");
        let cert = Arc::new(ReloadingCert::load(&cert_file, &key_file, provider()).expect("loads"));
        let acceptor = TlsAcceptor::from(Arc::new(server_config(cert, provider()).expect("config")));
        let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = tcp.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        let mut listener = TlsListener::with_limits(tcp, acceptor, shutdown.clone(), 4).expect("listener");

        let mut idle = Vec::new();
        for _ in 0..4 {
            idle.push(TcpStream::connect(addr).await.expect("connect"));
        }
        // The fifth from 127.0.0.1 is closed without a byte.
        let mut fifth = TcpStream::connect(addr).await.expect("connect");
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), fifth.read(&mut buf))
            .await
            .expect("closed at once, not after the handshake timeout");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");

        // A client from 127.0.0.2 gets through.
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind("127.0.0.2:0".parse().expect("addr"))
            .expect("bind 127.0.0.2");
        let stream = socket.connect(addr).await.expect("connect from 127.0.0.2");
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(cert_pem.as_bytes()).expect("pem"))
            .expect("root");
        let client = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        let (handshake, accepted) = tokio::join!(connector.connect(name, stream), async {
            tokio::time::timeout(
                Duration::from_secs(5),
                axum::serve::Listener::accept(&mut listener),
            )
            .await
        });
        handshake.expect("the handshake from another address completes");
        let (_, peer) = accepted.expect("accepted while 127.0.0.1 holds its slots");
        assert_eq!(peer.ip().to_string(), "127.0.0.2");
        drop(idle);
        shutdown.cancel();
    }

    #[test]
    fn files_that_do_not_load_are_refused_at_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert_file, key_file) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        let (cert_a, _) = self_signed("a.example");
        let (_, key_b) = self_signed("b.example");
        std::fs::write(&cert_file, cert_a).expect("write");
        std::fs::write(&key_file, key_b).expect("write");
        let e = ReloadingCert::load(&cert_file, &key_file, provider()).expect_err("mismatch");
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }
}
