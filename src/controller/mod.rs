//! The reconcile loop: plan (pure) → write Secret → write status → event.
//!
//! Decisions are first made from the watch caches; only when the cached view says something
//! must be written does the reconciler take the app's lock, re-read the app and its Secret from
//! the API server and plan again on that fresh view. A stale cache therefore never causes a
//! write — it costs at most two GETs — and the steady state makes no requests at all.

pub mod plan;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Secret;
use kube::api::PartialObjectMeta;
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::EventType;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use tracing::{debug, info, warn};

use crate::context::Context;
use crate::crd::OAuthApp;
use crate::error::Error;
use crate::metrics::ReasonLabels;
use crate::rotation::{self, app_key};
use plan::{SecretView, Step};

/// How the controller runs.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Namespaces to watch; empty: all namespaces.
    pub namespaces: Vec<String>,
    /// Every app is looked at again after this long even without a change.
    pub resync: Duration,
    /// Apps reconciled at the same time.
    pub concurrency: u16,
}

/// After a failed reconcile, the app is retried after this long.
const ERROR_REQUEUE: Duration = Duration::from_secs(5);
/// A conflicting foreign Secret is not watched; look again after this long.
const CONFLICT_REQUEUE: Duration = Duration::from_secs(30);
/// Writes one reconcile may make before it yields (each followed by a fresh read).
const MAX_STEPS: usize = 8;

/// One watched scope (a namespace, or the whole cluster): its caches and the shared context.
pub struct Scope {
    ctx: Arc<Context>,
    secrets: Store<PartialObjectMeta<Secret>>,
    resync: Duration,
}

/// The caches of one watched scope, for readiness and for the REST API's index.
#[derive(Clone)]
pub struct Caches {
    pub apps: Store<OAuthApp>,
    pub secrets: Store<PartialObjectMeta<Secret>>,
}

impl Caches {
    /// Resolves once both caches have been filled by their first list.
    pub async fn wait_until_ready(&self) {
        // `Store::wait_until_ready` wakes only the most recent waiter of a store, and the
        // controller waits on the apps store too; re-polling on a short timer sidesteps that.
        while tokio::time::timeout(Duration::from_millis(100), self.apps.wait_until_ready())
            .await
            .is_err()
        {}
        while tokio::time::timeout(Duration::from_millis(100), self.secrets.wait_until_ready())
            .await
            .is_err()
        {}
    }
}

/// Builds the controller: the caches of each watched scope (they fill once the returned future
/// runs) and the future that runs it until `shutdown` resolves.
pub fn build(
    ctx: Arc<Context>,
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + Sync + Clone + 'static,
) -> (Vec<Caches>, impl Future<Output = ()>) {
    let mut caches = Vec::new();
    let scopes: Vec<Option<String>> = if settings.namespaces.is_empty() {
        vec![None]
    } else {
        settings.namespaces.iter().cloned().map(Some).collect()
    };
    let mut runs = Vec::new();
    for ns in scopes {
        let (apps_api, secrets_api): (Api<OAuthApp>, Api<PartialObjectMeta<Secret>>) = match &ns {
            Some(ns) => (
                Api::namespaced(ctx.client.clone(), ns),
                Api::namespaced(ctx.client.clone(), ns),
            ),
            None => (Api::all(ctx.client.clone()), Api::all(ctx.client.clone())),
        };
        let (secret_store, secret_writer) = reflector::store();
        let secret_selector = format!("{}={}", plan::MANAGED_BY_LABEL, plan::MANAGED_BY);
        // Metadata only: decisions need the annotations, and the plaintext stays out of the cache.
        let secret_stream = reflector::reflector(
            secret_writer,
            watcher(
                secrets_api,
                watcher::Config::default().labels(&secret_selector).any_semantic(),
            ),
        )
        .touched_objects()
        .default_backoff();
        let controller = Controller::new(apps_api, watcher::Config::default().any_semantic())
            .owns_stream(secret_stream)
            .with_config(ControllerConfig::default().concurrency(settings.concurrency))
            .graceful_shutdown_on(shutdown.clone());
        caches.push(Caches {
            apps: controller.store(),
            secrets: secret_store.clone(),
        });
        let scope = Arc::new(Scope {
            ctx: ctx.clone(),
            secrets: secret_store,
            resync: settings.resync,
        });
        info!(
            namespace = ns.as_deref().unwrap_or("<all>"),
            "starting controller"
        );
        runs.push(controller.run(reconcile, error_policy, scope).for_each(|result| async move {
            match result {
                Ok((obj, _)) => debug!(app = %format!("{}/{}", obj.namespace.unwrap_or_default(), obj.name), "reconciled"),
                Err(e) => debug!(error = %crate::error::redact(&e.to_string()), "reconcile stream"),
            }
        }));
    }
    let run = async move {
        futures::future::join_all(runs).await;
        info!("controller stopped");
    };
    (caches, run)
}

async fn reconcile(app: Arc<OAuthApp>, scope: Arc<Scope>) -> Result<Action, Error> {
    let started = Instant::now();
    let ctx = &scope.ctx;
    ctx.metrics.reconciles.inc();
    let result = reconcile_app(&app, &scope).await;
    ctx.metrics
        .reconcile_duration
        .observe(started.elapsed().as_secs_f64());
    result
}

fn error_policy(app: Arc<OAuthApp>, error: &Error, scope: Arc<Scope>) -> Action {
    scope
        .ctx
        .metrics
        .reconcile_errors
        .get_or_create(&ReasonLabels {
            reason: error.reason(),
        })
        .inc();
    warn!(app = %app_key(&app), reason = error.reason(), error = %error, "reconcile failed; retrying");
    Action::requeue(ERROR_REQUEUE)
}

async fn reconcile_app(app: &OAuthApp, scope: &Scope) -> Result<Action, Error> {
    let ctx = &scope.ctx;
    let ns = app.namespace().unwrap_or_default();
    let secret_name = app.secret_name();
    let cached = scope.secrets.get(&ObjectRef::new(&secret_name).within(&ns));
    let check = cached.as_ref().and_then(|s| {
        let hash = s.annotations().get(plan::annotations::HASH)?;
        ctx.verified
            .get(&format!("{ns}/{secret_name}"), &s.resource_version()?, hash)
    });
    let view = cached.as_ref().map(|s| SecretView {
        meta: &s.metadata,
        check,
    });
    match plan::plan(app, view, Timestamp::now()) {
        Step::Done { requeue_after } => Ok(requeue(requeue_after, scope.resync)),
        _ => converge(ctx, app, scope.resync).await,
    }
}

fn requeue(after: Option<SignedDuration>, resync: Duration) -> Action {
    let after = after
        .and_then(|d| Duration::try_from(d).ok())
        .map_or(resync, |d| d.min(resync))
        .max(Duration::from_millis(100));
    Action::requeue(after)
}

/// Brings one app to its desired state from fresh reads, under the app's lock.
async fn converge(ctx: &Context, cached: &OAuthApp, resync: Duration) -> Result<Action, Error> {
    let key = app_key(cached);
    let _guard = ctx.locks.lock(&key).await;
    let ns = cached.namespace().unwrap_or_default();
    let apps: Api<OAuthApp> = Api::namespaced(ctx.client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    for _ in 0..MAX_STEPS {
        let Some(app) = apps.get_opt(&cached.name_any()).await? else {
            return Ok(Action::await_change());
        };
        let secret = secrets.get_opt(&app.secret_name()).await?;
        let mut check = None;
        let step = loop {
            let view = secret.as_ref().map(|s| SecretView {
                meta: &s.metadata,
                check,
            });
            match plan::plan(&app, view, Timestamp::now()) {
                Step::Verify => match &secret {
                    Some(s) => check = Some(rotation::check_content(ctx, &app, s).await?),
                    None => break Step::Done { requeue_after: None },
                },
                step => break step,
            }
        };
        let written = match step {
            Step::Done { requeue_after } => return Ok(requeue(requeue_after, resync)),
            Step::Verify => unreachable_step(),
            Step::Rotate(trigger) => rotation::rotate(ctx, &app, secret, trigger, None)
                .await
                .map(|_| ()),
            Step::SyncSecret => match secret {
                Some(s) => rotation::sync_secret(ctx, &app, s).await.map(|_| ()),
                None => Ok(()),
            },
            Step::WriteStatus(status) => {
                let repaired = app.status.as_ref().and_then(|s| s.rotation_id.clone()) != status.rotation_id
                    && app.status.as_ref().is_some_and(|s| s.rotation_id.is_some());
                let rotation_id = status.rotation_id.clone().unwrap_or_default();
                let result = rotation::write_status(ctx, &app, *status).await;
                if result.is_ok() && repaired {
                    info!(app = %key, rotation_id = %rotation_id, "status completed from the Secret; no new secret");
                    rotation::publish(
                        ctx,
                        &app,
                        EventType::Normal,
                        "StatusRepaired",
                        format!(
                            "Status completed from Secret {} (rotation {rotation_id}); no new secret",
                            app.secret_name()
                        ),
                    )
                    .await;
                }
                result.map(|_| ())
            }
            Step::Conflict(status) => {
                let was_conflict = app
                    .ready_condition()
                    .is_some_and(|c| c.reason == plan::reasons::SECRET_CONFLICT && c.status == "False");
                if app.status.as_ref() != Some(&*status) {
                    let message = status
                        .conditions
                        .first()
                        .map(|c| c.message.clone())
                        .unwrap_or_default();
                    match rotation::write_status(ctx, &app, *status).await {
                        Ok(_) => {}
                        Err(e) if e.is_conflict() => continue,
                        Err(e) => return Err(e),
                    }
                    if !was_conflict {
                        warn!(app = %key, "{message}");
                        rotation::publish(
                            ctx,
                            &app,
                            EventType::Warning,
                            plan::reasons::SECRET_CONFLICT,
                            message,
                        )
                        .await;
                    }
                }
                return Ok(Action::requeue(CONFLICT_REQUEUE.min(resync)));
            }
        };
        match written {
            Ok(()) => {}
            // Someone else wrote first: read again and plan again.
            Err(e) if e.is_conflict() => debug!(app = %key, "write conflict; re-reading"),
            Err(Error::SecretConflict { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
    // Not converged within MAX_STEPS writes (heavy contention): look again soon.
    Ok(Action::requeue(Duration::from_secs(1)))
}

fn unreachable_step() -> Result<(), Error> {
    Err(Error::Internal(
        "planner returned Verify after the content was checked".into(),
    ))
}
