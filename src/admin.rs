//! The admin server (`--admin-addr`): `/healthz`, `/readyz` (once every watch has synced) and
//! `/metrics` (Prometheus text), apart from the REST API so probes and scrapes need no token.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::metrics::{Metrics, NOT_READY_REASONS, ReadyLabels, ReasonLabels, not_ready_reason};
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
    let (mut ready, mut not_ready, mut unknown, mut overdue) = (0, 0, 0, 0);
    let mut by_reason = [0i64; NOT_READY_REASONS.len()];
    let now = jiff::Timestamp::now();
    for app in s.watches.apps() {
        match app.ready_condition() {
            Some(c) if c.status == "True" => ready += 1,
            Some(c) if c.status == "False" => {
                not_ready += 1;
                let reason = not_ready_reason(&c.reason);
                if let Some(i) = NOT_READY_REASONS.iter().position(|r| *r == reason) {
                    by_reason[i] += 1;
                }
            }
            _ => unknown += 1,
        }
        let next = app.status.as_ref().and_then(|st| st.next_rotation_time.as_ref());
        if next.is_some_and(|t| t.0 < now) {
            overdue += 1;
        }
    }
    for (reason, count) in NOT_READY_REASONS.into_iter().zip(by_reason) {
        s.metrics
            .apps_not_ready
            .get_or_create(&ReasonLabels { reason })
            .set(count);
    }
    s.metrics.apps_rotation_overdue.set(overdue);
    s.metrics
        .apps
        .get_or_create(&ReadyLabels { ready: "true" })
        .set(ready);
    s.metrics
        .apps
        .get_or_create(&ReadyLabels { ready: "false" })
        .set(not_ready);
    s.metrics
        .apps
        .get_or_create(&ReadyLabels { ready: "unknown" })
        .set(unknown);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.render(),
    )
}
