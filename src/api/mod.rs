//! The REST API (`--api-addr`): rotate, list, get, create and delete OAuthApps, authenticated by
//! TokenReview and authorized by SubjectAccessReview. Served on every replica.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio_util::sync::CancellationToken;

use crate::context::Context;
use crate::watches::Watches;

/// Settings of the REST API, from the command line.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    pub addr: SocketAddr,
    /// PEM certificate chain and key; plain HTTP when absent.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// Requests per second allowed per caller (token bucket), and the burst.
    pub rate_per_caller: f64,
    pub burst_per_caller: u32,
    /// Requests per second allowed in all, and the burst.
    pub rate_global: f64,
    pub burst_global: u32,
    /// How long TokenReview and SubjectAccessReview answers are reused.
    pub auth_cache_ttl: Duration,
}

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub ctx: Arc<Context>,
    pub watches: Arc<Watches>,
}

/// The API's routes.
pub fn router(_state: ApiState, _config: &ApiConfig) -> Router {
    Router::new()
}

/// Serves the API until `shutdown` is cancelled.
pub async fn serve(state: ApiState, config: ApiConfig, shutdown: CancellationToken) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.addr).await?;
    let app = router(state, &config);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await?;
    Ok(())
}
