//! The writes every part of the operator makes the same way: an app's status (conditional on
//! the app's resourceVersion, noted so the caches' lag is known), Events, and the key an app is
//! locked and logged by.

use std::future::Future;
use std::sync::Arc;

use kube::api::{ObjectMeta, PostParams};
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};
use tokio::sync::Semaphore;
use tracing::warn;

use crate::model::crd::{MANAGER, OAuthApp, OAuthAppStatus};
use crate::model::status;
use crate::runtime::context::Context;
use crate::runtime::error::{Error, is_status};

pub fn post_params() -> PostParams {
    PostParams {
        dry_run: false,
        field_manager: Some(MANAGER.into()),
    }
}

/// Whether the watch caches lag this process's own last write of `app` or of its Secret
/// (`secret`: the cached Secret's metadata, None when the cache has none). Both are checked,
/// whatever the first says: each forgets an entry its cache has caught up with.
pub fn caches_lag(ctx: &Context, app: &OAuthApp, secret: Option<&ObjectMeta>) -> bool {
    let app_lags = ctx.own_writes.lagging(
        &format!("OAuthApp {}", app_key(app)),
        &app.resource_version().unwrap_or_default(),
    );
    let secret_lags = ctx.own_writes.lagging(
        &format!(
            "Secret {}/{}",
            app.namespace().unwrap_or_default(),
            app.secret_name()
        ),
        secret
            .and_then(|m| m.resource_version.as_deref())
            .unwrap_or_default(),
    );
    app_lags || secret_lags
}

/// `namespace/name` of an app, the key of its lock.
pub fn app_key(app: &OAuthApp) -> String {
    format!("{}/{}", app.namespace().unwrap_or_default(), app.name_any())
}

/// A failed conditional write of the app's Secret or status: a 409 (a concurrent writer won)
/// is [`Error::Conflict`].
pub fn write_error(app: &OAuthApp, e: kube::Error) -> Error {
    if is_status(&e, 409) {
        Error::Conflict(app_key(app))
    } else {
        Error::Kube(e)
    }
}

/// Replaces the app's status (conditional on the app's resourceVersion).
pub async fn write_status(ctx: &Context, app: &OAuthApp, status: OAuthAppStatus) -> Result<OAuthApp, Error> {
    let apps: Api<OAuthApp> = Api::namespaced(ctx.client.clone(), &app.namespace().unwrap_or_default());
    let mut object = app.clone();
    object.status = Some(status);
    // Managed fields are not ours to send back.
    object.metadata.managed_fields = None;
    ctx.leadership.check()?;
    let written = apps
        .replace_status(&app.name_any(), &post_params(), &object)
        .await
        .map_err(|e| {
            // The app went away between the read and this write.
            if is_status(&e, 404) {
                Error::NotFound(app_key(app))
            } else {
                write_error(app, e)
            }
        })?;
    ctx.metrics.writes.inc();
    ctx.own_writes.put(
        format!("OAuthApp {}", app_key(app)),
        &app.resource_version().unwrap_or_default(),
    );
    if let Some(message) = status::newly_not_ready(app, &written, status::reasons::INVALID_SCHEDULE) {
        warn!(app = %app_key(app), "{message}");
        publish_in_background(
            ctx,
            app,
            EventType::Warning,
            status::reasons::INVALID_SCHEDULE,
            message,
        );
    }
    Ok(written)
}

/// An Event of the reconcile about an app.
fn reconcile_event(type_: EventType, reason: &str, note: String) -> Event {
    Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: "Reconcile".into(),
        secondary: None,
    }
}

/// Publishes an Event about the app; a failure is logged, never fatal.
pub async fn publish(ctx: &Context, app: &OAuthApp, type_: EventType, reason: &str, note: String) {
    let event = reconcile_event(type_, reason, note);
    if let Err(e) = ctx.recorder().publish(&event, &app.object_ref(&())).await {
        warn!(app = %app_key(app), reason, error = %crate::runtime::error::redact(&e.to_string()), "failed to publish event");
    }
}

/// Events published at the same time, at most. A publish holds a request to the API server and
/// its buffers; an Event waiting for its turn holds only itself (a few hundred bytes). Unbounded,
/// a burst of Events (a first provisioning, a mass rotation) would have as many requests in
/// flight as Events not yet published, against an API server that is already the bottleneck.
pub const EVENTS_IN_FLIGHT: usize = 8;

/// Publishes an Event about the app from a task of its own (tracked by `ctx.background`, which a
/// shutdown waits for), at most [`EVENTS_IN_FLIGHT`] at once, in the order they came; a failure
/// is logged, never fatal.
pub fn publish_in_background(
    ctx: &Context,
    app: &OAuthApp,
    type_: EventType,
    reason: &'static str,
    note: String,
) {
    let recorder = ctx.recorder();
    let reference = app.object_ref(&());
    let key = app_key(app);
    let event = reconcile_event(type_, reason, note);
    spawn_in_turn(&ctx.background, ctx.event_turns.clone(), move || async move {
        if let Err(e) = recorder.publish(&event, &reference).await {
            warn!(app = %key, reason, error = %crate::runtime::error::redact(&e.to_string()), "failed to publish event");
        }
    });
}

/// Runs the future `work` makes on `tracker` once `turns` has a permit for it. The future is
/// made (and allocated) only then, so that a task waiting for its turn holds `work` alone, not
/// the future's state (a request's, for an Event).
fn spawn_in_turn<F>(
    tracker: &tokio_util::task::TaskTracker,
    turns: Arc<Semaphore>,
    work: impl FnOnce() -> F + Send + 'static,
) where
    F: Future<Output = ()> + Send + 'static,
{
    tracker.spawn(in_turn(turns, work));
}

async fn in_turn<F>(turns: Arc<Semaphore>, work: impl FnOnce() -> F + Send + 'static)
where
    F: Future<Output = ()> + Send + 'static,
{
    // Closed only if the semaphore is, which nothing does.
    let Ok(_turn) = turns.acquire_owned().await else {
        return;
    };
    Box::pin(work()).await;
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn work_runs_at_most_as_many_at_once_as_there_are_turns() {
        let tracker = tokio_util::task::TaskTracker::new();
        let turns = Arc::new(Semaphore::new(3));
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(AtomicUsize::new(0));
        for _ in 0..50 {
            let (running, most, done) = (running.clone(), most.clone(), done.clone());
            spawn_in_turn(&tracker, turns.clone(), move || async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                for _ in 0..5 {
                    tokio::task::yield_now().await;
                }
                running.fetch_sub(1, Ordering::SeqCst);
                done.fetch_add(1, Ordering::SeqCst);
            });
        }
        tracker.close();
        tracker.wait().await;
        assert_eq!(done.load(Ordering::SeqCst), 50, "every piece of work ran");
        assert_eq!(most.load(Ordering::SeqCst), 3, "three at once, never more");
    }

    #[test]
    fn what_waits_for_a_turn_does_not_hold_the_work_s_state() {
        let turns = Arc::new(Semaphore::new(1));
        // Work whose future keeps 64 KiB across an await, as a request's buffers would.
        let waiting = in_turn(turns, || async {
            let buffer = [1u8; 65536];
            tokio::task::yield_now().await;
            std::hint::black_box(buffer);
        });
        let size = std::mem::size_of_val(&waiting);
        assert!(size < 1024, "a waiting task holds {size} bytes");
    }
}
