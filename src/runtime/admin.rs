//! The admin server (`--admin-addr`): `/healthz`, `/readyz` (once every watch has synced) and
//! `/metrics` (Prometheus text), apart from the REST API so probes and scrapes need no token.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::runtime::context::Context;
use crate::runtime::metrics::{AppCounts, Metrics};
use crate::runtime::watches::Watches;

#[derive(Clone)]
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub watches: Arc<Watches>,
    pub context: Arc<Context>,
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn readyz(State(s): State<AdminState>) -> impl IntoResponse {
    if let Some(why) = s.context.record_key.waiting() {
        (StatusCode::SERVICE_UNAVAILABLE, why)
    } else if s.watches.is_ready() {
        (StatusCode::OK, "ready".to_string())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "waiting for the first sync of the watches".to_string(),
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
    s.metrics.repairs_held.set(s.context.repairs.held() as i64);
    let installation = &s.context.installation;
    s.metrics.apps_managed_elsewhere.set(
        apps.iter()
            .filter(|a| {
                a.installation()
                    .is_some_and(|i| !installation.is_empty() && *i != **installation)
            })
            .count() as i64,
    );
    s.metrics.retired_records.set(s.context.ledger.len() as i64);
    s.metrics
        .repair_brake_engaged
        .set(i64::from(s.context.repairs.engaged()));
    let ring = s.context.record_key.get();
    s.metrics
        .record_key_missing
        .set(i64::from(s.context.record_key.waiting().is_some()));
    s.metrics
        .record_keys
        .set(ring.as_ref().map_or(0, |r| r.ids().count() as i64));
    if let Some(ring) = ring {
        // A cheap look at the signature's format and key id, not a verification.
        let to_resign = s
            .watches
            .secrets()
            .iter()
            .filter(|secret| {
                // Heads of the signature and seal do for this look (record_marks).
                let marks = secret.record_marks();
                // Another installation's Secrets are not this one's to re-sign.
                let elsewhere = marks
                    .installation
                    .is_some_and(|i| !installation.is_empty() && *i != **installation);
                let old_signature = marks.signature.is_some_and(|sig| !ring.looks_current(&sig));
                let old_seal = marks
                    .seal
                    .is_none_or(|seal| !seal.starts_with(&format!("s2.{}.", ring.signing_id())));
                !elsewhere && (old_signature || old_seal)
            })
            .count();
        s.metrics.records_to_resign.set(to_resign as i64);
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.render(),
    )
}
