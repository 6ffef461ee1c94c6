//! The admin server (`--admin-addr`): `/healthz`, `/readyz` (once every watch has synced) and
//! `/metrics` (Prometheus text), apart from the REST API so probes and scrapes need no token.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::metrics::{AppCounts, Metrics};
use crate::watches::Watches;

#[derive(Clone)]
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub watches: Arc<Watches>,
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn readyz(State(s): State<AdminState>) -> impl IntoResponse {
    if s.watches.is_ready() {
        (StatusCode::OK, "ready")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "waiting for the first sync of the watches",
        )
    }
}

async fn metrics(State(s): State<AdminState>) -> impl IntoResponse {
    // Apps by Ready condition, counted from the cache at scrape time: always exact, no
    // bookkeeping on deletes.
    let apps = s.watches.apps();
    s.metrics.set_app_counts(&AppCounts::of(
        apps.iter().map(|a| a.as_ref()),
        jiff::Timestamp::now(),
    ));
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.render(),
    )
}
