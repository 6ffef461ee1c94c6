//! The REST API (`--api-addr`): rotate, list, get, create and delete OAuthApps, authenticated by
//! TokenReview and authorized by SubjectAccessReview. Served on every replica (it reads the
//! watch caches every replica keeps, and writes through `rotation::rotate` under the app's
//! lock and resourceVersion preconditions, so it need not be the leader).
//!
//! A request passes, in order: the request timeout, authentication (TokenReview, cached; a token
//! not seen recently takes from the token-review bucket first), the global and the per-caller
//! rate limits, then the handler (id lookup in the cache, SubjectAccessReview, the operation).
//! Every error answer is JSON `{code, message}` (see [`error`]).
//!
//! May use: [`crate::model`], [`crate::runtime`], and [`crate::rotation`] (the controller only
//! through `rotate()`).

mod auth;
mod error;
mod handlers;
mod limit;
mod model;
mod openapi;
mod tls;
mod verify;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{Method, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio_util::sync::CancellationToken;
use tower_http::catch_panic::CatchPanicLayer;
use tracing::{debug, error, info, warn};

pub use auth::Caller;
pub use error::{ApiError, ErrorCode, RestErrorResponse};
pub use limit::InvalidRate;
pub use model::{CreateOAuthApp, CreatedOAuthApp, OAuthAppId, OAuthAppList, OAuthAppView, RotatedSecret};
pub use openapi::openapi_json;
pub use tls::ReloadingCert;

use crate::runtime::context::Context;
use crate::runtime::watches::Watches;

/// The largest request body accepted (413 beyond).
pub const BODY_LIMIT: usize = 64 * 1024;
/// The default of `--api-request-timeout`: a request that takes longer is answered 503 (the API
/// server is too slow to be useful), unless its answer carries a secret already written.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How often idle callers' rate-limit buckets are forgotten.
const FORGET_IDLE_CALLERS: Duration = Duration::from_secs(60);

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
    /// Audiences a bearer token must be meant for (TokenReview `audiences`); empty: any token the
    /// API server accepts for its own audience.
    pub audiences: Vec<String>,
    /// A request that takes longer is answered 503, unless it is past its point of no return.
    pub request_timeout: Duration,
    /// Header-read and idle timeouts, and the connection cap.
    pub connections: crate::runtime::serve::ConnectionLimits,
    /// Verify answers 503 once the operator's view of the apps may be older than this (their
    /// watch has been failing that long).
    pub verify_max_staleness: Duration,
}

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub ctx: Arc<Context>,
    pub watches: Arc<Watches>,
}

/// The handlers' state: the shared pieces plus the API's own.
struct Shared {
    ctx: Arc<Context>,
    watches: Arc<Watches>,
    auth: auth::Authenticator,
    limits: limit::RateLimits,
    request_timeout: Duration,
    /// Positive verification answers, briefly.
    verify_answers: verify::AnswerCache,
    verify_max_staleness: Duration,
}

/// The API's routes and middleware; fails on rate limits that cannot be token buckets.
pub fn router(state: ApiState, config: &ApiConfig) -> Result<Router, InvalidRate> {
    Ok(router_with(Arc::new(shared(state, config)?)))
}

fn shared(state: ApiState, config: &ApiConfig) -> Result<Shared, InvalidRate> {
    Ok(Shared {
        auth: auth::Authenticator::new(
            state.ctx.client.clone(),
            config.auth_cache_ttl,
            config.audiences.clone(),
        ),
        request_timeout: config.request_timeout,
        limits: limit::RateLimits::new(
            config.rate_global,
            config.burst_global,
            config.rate_per_caller,
            config.burst_per_caller,
        )?,
        ctx: state.ctx,
        watches: state.watches,
        verify_answers: verify::AnswerCache::default(),
        verify_max_staleness: config.verify_max_staleness,
    })
}

fn router_with(shared: Arc<Shared>) -> Router {
    let authenticated = Router::new()
        .route(
            "/api/v1/oauth-apps",
            get(handlers::list_oauth_apps).post(handlers::create_oauth_app),
        )
        .route(
            "/api/v1/oauth-apps/{id}",
            get(handlers::get_oauth_app).delete(handlers::delete_oauth_app),
        )
        .route(
            "/api/v1/oauth-apps/{id}/rotate",
            post(handlers::rotate_client_secret),
        )
        .route(
            "/api/v1/oauth-apps/{id}/previous-secret",
            axum::routing::delete(handlers::revoke_previous_secret),
        )
        .route(
            "/api/v1/oauth-apps/verify",
            post(verify::verify_client_credentials),
        )
        .route_layer(middleware::from_fn_with_state(shared.clone(), authenticate))
        .route_layer(middleware::from_fn_with_state(shared.clone(), request_timeout));
    with_error_handling(
        Router::new()
            .route("/api-docs/openapi.json", get(openapi_document))
            .route_layer(middleware::from_fn_with_state(shared.clone(), global_limit))
            .merge(authenticated)
            .with_state(shared.clone()),
    )
    .layer(middleware::from_fn_with_state(shared, observe_request))
}

/// The 404 fallback, the body limit, panics as 500s, and `{code, message}` for every error.
fn with_error_handling(router: Router) -> Router {
    router
        .fallback(unknown_route)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(CatchPanicLayer::custom(error::panic_response))
        .layer(middleware::from_fn(error::json_errors))
}

/// Serves the API until `shutdown` is cancelled. When it cannot start (address in use, TLS
/// files that do not load, invalid rate limits) it logs why and cancels `shutdown`: an operator
/// without its API stops instead of running half-working.
/// Serves the REST API on `tcp` (bound by the caller before the admin server's `/readyz` can
/// answer, so a ready operator always accepts REST connections).
pub async fn serve(
    tcp: tokio::net::TcpListener,
    state: ApiState,
    config: ApiConfig,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let result = serve_until(tcp, state, &config, shutdown.clone()).await;
    if let Err(e) = &result {
        error!(addr = %config.addr, error = %e, "the REST API server failed; stopping the operator");
        shutdown.cancel();
    }
    result
}

async fn serve_until(
    tcp: tokio::net::TcpListener,
    state: ApiState,
    config: &ApiConfig,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let shared = Arc::new(
        shared(state, config).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?,
    );
    {
        let (shared, shutdown) = (shared.clone(), shutdown.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(FORGET_IDLE_CALLERS);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => shared.limits.forget_idle_callers(),
                }
            }
        });
    }
    let app = router_with(shared);
    match (&config.tls_cert_file, &config.tls_key_file) {
        (Some(cert_file), Some(key_file)) => {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let cert = Arc::new(ReloadingCert::load(cert_file, key_file, provider.clone())?);
            tokio::spawn(cert.clone().watch(tls::RELOAD_INTERVAL, shutdown.clone()));
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls::server_config(cert, provider)?));
            let listener = tls::TlsListener::new(tcp, acceptor, shutdown.clone())?;
            info!(addr = %config.addr, cert = %cert_file.display(), "REST API listening (HTTPS)");
            crate::runtime::serve::serve(listener, app, config.connections, shutdown).await
        }
        _ => {
            warn!(
                addr = %config.addr,
                "REST API listening on plain HTTP: bearer tokens and client secrets cross the network \
                 unencrypted; set --tls-cert-file and --tls-key-file"
            );
            crate::runtime::serve::serve(tcp, app, config.connections, shutdown).await
        }
    }
}

/// The global bucket, for the routes that need no token.
async fn global_limit(State(api): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    match api.limits.check_global() {
        Ok(()) => next.run(request).await,
        Err(e) => e.into_response(),
    }
}

/// Authenticates the caller (a token not seen recently takes from its address's and the
/// unknown-token buckets first; the renewal of a known caller's answer from the renewal bucket),
/// then applies the global bucket and the caller's own; handlers get the [`Caller`].
async fn authenticate(State(api): State<Arc<Shared>>, mut request: Request, next: Next) -> Response {
    let address = request
        .extensions()
        .get::<crate::runtime::serve::ClientAddr>()
        .map(|a| a.0.ip());
    let authenticated = api
        .auth
        .authenticate(request.headers(), |review| match review {
            auth::Review::Renewal => api.limits.check_renewal(),
            auth::Review::Unknown => api.limits.check_review(address),
        })
        .await;
    let caller = match authenticated {
        Ok(caller) => caller,
        Err(e) => return e.into_response(),
    };
    if let Err(e) = api
        .limits
        .check_global()
        .and_then(|()| api.limits.check_caller(&caller.username))
    {
        return e.into_response();
    }
    request.extensions_mut().insert(caller);
    next.run(request).await
}

/// Answers 503 after `--api-request-timeout`, unless the request has passed its point of no
/// return (a Secret write carrying the secret it answers with was sent): then it waits for
/// the answer, which is the only place that secret will ever be shown.
async fn request_timeout(State(api): State<Arc<Shared>>, mut request: Request, next: Next) -> Response {
    let commitment = Commitment::default();
    request.extensions_mut().insert(commitment.clone());
    let answer = next.run(request);
    tokio::pin!(answer);
    tokio::select! {
        response = &mut answer => response,
        () = tokio::time::sleep(api.request_timeout) => {
            if commitment.abandon() {
                warn!("a REST API request timed out");
                ApiError::unavailable("the request timed out waiting for the Kubernetes API server; retry")
                    .into_response()
            } else {
                debug!("a REST API request is past its timeout and its point of no return: answering anyway");
                answer.await
            }
        }
    }
}

/// The point of no return of one request: either the handler commits (right before a write
/// that makes a new secret the only valid one) or the request is abandoned (timed out, or the
/// client went away), never both.
#[derive(Clone, Debug, Default)]
pub struct Commitment(Arc<std::sync::atomic::AtomicU8>);

const OPEN: u8 = 0;
const COMMITTED: u8 = 1;
const ABANDONED: u8 = 2;

impl Commitment {
    /// True when the request may pass its point of no return (it was not abandoned).
    pub fn commit(&self) -> bool {
        self.settle(COMMITTED)
    }

    /// True when the request is abandoned (it had not committed).
    pub fn abandon(&self) -> bool {
        self.settle(ABANDONED)
    }

    fn settle(&self, to: u8) -> bool {
        use std::sync::atomic::Ordering::{AcqRel, Acquire};
        match self.0.compare_exchange(OPEN, to, AcqRel, Acquire) {
            Ok(_) => true,
            Err(now) => now == to,
        }
    }
}

/// One debug line per request (method, path, status, duration; never headers or bodies), and
/// the request metrics. Those name the route template, never the path (which holds ids); a path
/// that matches no route counts as `unmatched`.
async fn observe_request(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    let (method, path) = (request.method().clone(), request.uri().path().to_owned());
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |m| m.as_str().to_string());
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    let took = started.elapsed();
    let code = response.status().as_u16();
    let method_label = match method {
        Method::GET | Method::POST | Method::DELETE | Method::PUT | Method::PATCH | Method::HEAD => {
            method.as_str()
        }
        _ => "other",
    };
    shared.ctx.metrics.api_request(&route, method_label, code, took);
    debug!(%method, %path, status = code, took_ms = took.as_millis() as u64, "REST API request");
    response
}

async fn openapi_document() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], openapi_json()).into_response()
}

async fn unknown_route() -> ApiError {
    ApiError::not_found("no such route; the API is described at /api-docs/openapi.json")
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Method, StatusCode};
    use tower::ServiceExt;

    use super::*;

    async fn panics() -> &'static str {
        panic!("a detail that must not leak")
    }

    async fn echo(handlers::Body(v): handlers::Body<serde_json::Value>) -> String {
        v.to_string()
    }

    async fn typed(handlers::Body(v): handlers::Body<CreateOAuthApp>) -> String {
        v.name
    }

    /// Sends a request through the error handling every route gets; the status, the `Allow`
    /// header and the JSON error body.
    async fn send(
        method: Method,
        uri: &str,
        body: Vec<u8>,
    ) -> (StatusCode, Option<String>, RestErrorResponse) {
        let app = with_error_handling(
            Router::new()
                .route("/panic", get(panics))
                .route("/echo", post(echo))
                .route("/typed", post(typed)),
        );
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body))
            .expect("request");
        let response = app.oneshot(request).await.expect("infallible");
        let status = response.status();
        let allow = response
            .headers()
            .get(header::ALLOW)
            .map(|v| v.to_str().expect("ascii").to_string());
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("body");
        let error = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("not a JSON error ({e}): {}", String::from_utf8_lossy(&bytes)));
        (status, allow, error)
    }

    #[test]
    fn a_request_either_commits_or_is_abandoned_never_both() {
        let committed = Commitment::default();
        assert!(committed.commit());
        assert!(committed.commit(), "committing twice is still committed");
        assert!(!committed.abandon(), "a committed request is never abandoned");
        let abandoned = Commitment::default();
        assert!(abandoned.abandon());
        assert!(
            !abandoned.commit(),
            "an abandoned request never passes its point of no return"
        );
    }

    #[tokio::test]
    async fn a_panic_is_a_500_without_detail() {
        let (status, _, error) = send(Method::GET, "/panic", vec![]).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(error.code, ErrorCode::InternalServerError);
        assert!(!error.message.contains("must not leak"), "{}", error.message);
    }

    #[tokio::test]
    async fn an_unknown_route_is_a_json_404() {
        let (status, _, error) = send(Method::GET, "/nope", vec![]).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(error.code, ErrorCode::NotFound);
    }

    #[tokio::test]
    async fn a_wrong_method_is_a_json_405_that_keeps_allow() {
        let (status, allow, error) = send(Method::DELETE, "/echo", vec![]).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(error.code, ErrorCode::BadRequest);
        assert_eq!(allow.as_deref(), Some("POST"));
    }

    #[tokio::test]
    async fn bad_and_oversized_bodies_are_json_errors() {
        let (status, _, error) = send(Method::POST, "/echo", b"{not json".to_vec()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(error.code, ErrorCode::BadRequest);
        let (status, _, error) = send(Method::POST, "/typed", br#"{"name": 1}"#.to_vec()).await;
        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "JSON of the wrong shape is a 400 too"
        );
        assert_eq!(error.code, ErrorCode::BadRequest);
        let big = serde_json::to_vec(&"x".repeat(BODY_LIMIT)).expect("json");
        let (status, _, error) = send(Method::POST, "/echo", big).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(error.code, ErrorCode::BadRequest);
    }
}
