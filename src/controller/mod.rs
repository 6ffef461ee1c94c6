//! The reconcile loop: plan (pure) → write Secret → write status → event.
//!
//! Decisions are first made from the watch caches; only when the cached view says something
//! must be written does the reconciler take the app's lock, re-read the app and its Secret from
//! the API server and plan again on that fresh view. A stale cache therefore never causes a
//! write — it costs at most two GETs — and the steady state makes no requests at all.
//!
//! Lives here: the work queue ([`queue`]) and the slots namespaces share ([`shares`]), the
//! planner ([`plan`]: pure), this reconcile loop, and rollout restarts ([`restart`]).
//!
//! May use: [`crate::model`], [`crate::runtime`], [`crate::provider`], [`crate::rotation`].

pub mod plan;
pub mod queue;
pub mod restart;
pub mod shares;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Secret;
use kube::api::ObjectMeta;
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};
use tracing::{debug, info, warn};

use crate::model::crd::{OAuthApp, OAuthAppStatus, RotationTrigger};
use crate::model::{record, status};
use crate::rotation;
use crate::runtime::cached::{CachedApp, CachedSecret, ControlledBy};
use crate::runtime::context::Context;
use crate::runtime::error::Error;
use crate::runtime::metrics::ReasonLabels;
use crate::runtime::scheduled::{ScheduledRotations, Turn};
use crate::runtime::store::Store;
use crate::runtime::watches::{Change, ScopeCaches, Watches};
use crate::runtime::writes::{self, app_key};
use plan::{SecretView, Step};
use queue::{Action, AppKey, Trigger};
use tokio_util::sync::CancellationToken;

/// How the controller runs.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Every app is looked at again after this long even without a change.
    pub resync: Duration,
    /// Apps reconciled at the same time.
    pub concurrency: u16,
    /// Of those, at most this many of one namespace (see [`shares`]).
    pub namespace_concurrency: u16,
}

/// After a failed reconcile, the app is retried after this long.
const ERROR_REQUEUE: Duration = Duration::from_secs(5);
/// A conflicting foreign Secret is not watched; look again after this long.
const CONFLICT_REQUEUE: Duration = Duration::from_secs(30);
/// A held repair looks again this often (a release is seen within it).
const REPAIR_HELD_REQUEUE: Duration = Duration::from_secs(5);
/// After a write, or while the caches lag this process's own writes, look again after this long
/// at the latest (the writes' watch events normally bring the app back first).
const LAGGING_REQUEUE: Duration = Duration::from_secs(2);
/// How long a Secret may be ahead of its app's status before the status is completed from it
/// (see [`status_write_in_flight`]). `rotated-at` has whole seconds: the wait is 4 to 5 s.
const REPAIR_GRACE: Duration = Duration::from_secs(5);
/// Attempts one reconcile makes when its writes lose resourceVersion races, before it yields.
const MAX_STEPS: usize = 8;

/// An app whose client id another app holds looks again after this long (the id passes on
/// when the holder is deleted; the look is a cache read, no request).
const CLIENT_ID_REQUEUE: Duration = Duration::from_secs(5);

/// One watched scope (a namespace, or the whole cluster): its Secret cache and the context.
pub struct Scope {
    ctx: Arc<Context>,
    watches: Arc<Watches>,
    apps: Store<CachedApp>,
    secrets: Store<CachedSecret>,
    resync: Duration,
    /// Reconcile slots shared between namespaces.
    shares: shares::NamespaceShares,
}

/// Runs the controller on the shared watches until `shutdown` is cancelled. Every app is
/// reconciled once at start (the change streams only carry what happens from now on).
pub async fn run(ctx: Arc<Context>, watches: Arc<Watches>, settings: Settings, shutdown: CancellationToken) {
    // Subscribe to changes once the caches hold everything, then look at everything once: no
    // app can fall between the first list and the subscription.
    tokio::select! {
        _ = async { watches.wait_until_ready().await; ctx.record_key.wait().await } => {}
        _ = shutdown.cancelled() => return,
    }
    let mut runs = Vec::new();
    for caches in &watches.scopes {
        tokio::spawn(crate::provider::controller::run(
            ctx.clone(),
            caches.namespace.clone(),
            shutdown.clone(),
        ));
        let (resync_all, resync_all_rx) = futures::channel::mpsc::unbounded::<()>();
        let _ = resync_all.unbounded_send(());
        tokio::spawn(resync_every(
            settings.resync,
            resync_all.clone(),
            shutdown.clone(),
        ));
        // One namespace watched: its share is the whole.
        let per_namespace = match caches.namespace {
            Some(_) => u16::MAX,
            None => settings.namespace_concurrency,
        };
        let (shares, unparked) = shares::NamespaceShares::new(usize::from(per_namespace));
        let triggers = triggers(caches, resync_all_rx, unparked);
        let scope = Arc::new(Scope {
            ctx: ctx.clone(),
            watches: watches.clone(),
            apps: caches.apps.clone(),
            secrets: caches.secrets.clone(),
            resync: settings.resync,
            shares,
        });
        info!(
            namespace = caches.namespace.as_deref().unwrap_or("<all>"),
            "starting controller"
        );
        // Every app, for a look at all of them: a pointer each, its key made as it starts.
        let store = caches.apps.clone();
        let all = move || store.state();
        runs.push(queue::run(
            triggers,
            all,
            usize::from(settings.concurrency),
            move |key| {
                let scope = scope.clone();
                async move {
                    // An app gone from the cache since it was triggered: nothing to do.
                    let Some(cached) = scope.apps.lookup(key.namespace(), key.name()) else {
                        return Action::await_change();
                    };
                    match reconcile(&cached, &scope).await {
                        Ok(action) => action,
                        Err(e) => error_policy(&cached, &e, &scope),
                    }
                }
            },
            shutdown.clone(),
        ));
        // Keep the sender alive as long as the controller runs.
        std::mem::forget(resync_all);
    }
    futures::future::join_all(runs).await;
    info!("controller stopped");
}

/// An app of a look at every app ([`queue::Trigger::All`]), as the cache lists it.
impl From<Arc<CachedApp>> for AppKey {
    fn from(app: Arc<CachedApp>) -> Self {
        AppKey::new(app.namespace(), app.name())
    }
}

/// What brings an app of a scope to the queue: a change of it or of its Secret, a resync of
/// every app (`resync_all`), an app whose namespace's share has room again (`unparked`).
fn triggers(
    caches: &ScopeCaches,
    resync_all: futures::channel::mpsc::UnboundedReceiver<()>,
    unparked: impl Stream<Item = AppKey> + Send + 'static,
) -> impl Stream<Item = Trigger<AppKey>> + Send + 'static {
    let apps = caches.app_changes().map(|change| match change {
        Change::Object(app) => Some(Trigger::One(AppKey::new(app.namespace(), app.name()))),
        // Changes were dropped while this controller lagged: look at everything.
        Change::Missed => Some(Trigger::All),
    });
    let secrets = caches.secret_changes().map(|change| match change {
        // A Secret maps to its app by its controller reference, or, without one (a
        // retained or restored Secret), by the app name its record names.
        Change::Object(secret) => secret_owner(&secret).map(Trigger::One),
        Change::Missed => Some(Trigger::All),
    });
    futures::stream::select_all([
        apps.boxed(),
        secrets.boxed(),
        resync_all.map(|()| Some(Trigger::All)).boxed(),
        unparked.map(|app| Some(Trigger::One(app))).boxed(),
    ])
    .filter_map(futures::future::ready)
}

async fn reconcile(cached: &CachedApp, scope: &Scope) -> Result<Action, Error> {
    let ctx = &scope.ctx;
    let Some(_slot) = scope.shares.enter(cached.namespace(), cached.name()) else {
        // Its namespace holds its share of the slots: reconciled when one of them ends.
        ctx.metrics.reconciles_deferred.inc();
        return Ok(Action::await_change());
    };
    let started = Instant::now();
    ctx.metrics.reconciles.inc();
    let result = reconcile_app(&cached.app(), scope).await;
    ctx.metrics
        .reconcile_duration
        .observe(started.elapsed().as_secs_f64());
    result
}

fn error_policy(cached: &CachedApp, error: &Error, scope: &Scope) -> Action {
    let key = format!("{}/{}", cached.namespace(), cached.name());
    scope
        .ctx
        .metrics
        .reconcile_errors
        .get_or_create(&ReasonLabels {
            reason: error.reason(),
        })
        .inc();
    warn!(app = %key, reason = error.reason(), error = %error, "reconcile failed; retrying");
    match error {
        // Backs off while the app's identity provider refuses or cannot be reached.
        Error::Provider(_) => {
            Action::requeue(crate::provider::sync::retry_after_push_failure(&scope.ctx, &key))
        }
        _ => Action::requeue(ERROR_REQUEUE),
    }
}

async fn reconcile_app(app: &OAuthApp, scope: &Scope) -> Result<Action, Error> {
    let ctx = &scope.ctx;
    // An app with a provider holds its finalizer before anything is written there; a deleted
    // one has its client deleted, then lets go (crate::provider::finalizer).
    let finalized;
    let app = match crate::provider::finalizer::step(app) {
        crate::provider::finalizer::Step::None if app.metadata.deletion_timestamp.is_none() => app,
        _ => match crate::provider::finalizer::apply(ctx, app).await? {
            Some(written) => {
                finalized = written;
                &finalized
            }
            None => return Ok(Action::await_change()),
        },
    };
    let ns = app.namespace().unwrap_or_default();
    let secret_name = app.secret_name();
    let cached_meta = scope.secrets.lookup(&ns, &secret_name).map(|s| s.metadata());
    let now = Timestamp::now();
    let view = cached_meta
        .as_ref()
        .map(|meta| secret_view(ctx, app, meta, cached_check(ctx, meta), now))
        .transpose()?;
    // A cache still showing the version our own last write replaced lags that write, and a
    // rotation in progress in this process (the REST API's) is about to write: either way the
    // write's watch event brings the app back, so no fresh reads now (the two lag checks both
    // run: each forgets a caught-up entry).
    let key = app_key(app);
    if let Some(other) = status::managed_elsewhere(&ctx.installation, app, cached_meta.as_ref()) {
        return leave_alone(ctx, app, &other).await;
    }
    let lags = writes::caches_lag(ctx, app, cached_meta.as_ref());
    if !scope
        .watches
        .owns_client_id(app, ctx.record_key.released_client_id().as_deref())
    {
        if app
            .ready_condition()
            .is_some_and(|c| c.reason == status::reasons::CLIENT_ID_CONFLICT)
        {
            return Ok(Action::requeue(CLIENT_ID_REQUEUE));
        }
        return converge(scope, app, false, false, false).await;
    }
    let step = plan::plan(app, view, now);
    if !matches!(step, Step::Rotate(RotationTrigger::Schedule)) {
        ctx.scheduled_rotations.cancel(&key);
    }
    if !is_repair(&step) {
        ctx.repairs.forget(&key);
    }
    match step {
        Step::Done { requeue_after } if app.spec.provider_ref.is_some() && !lags => {
            check_provider(scope, app, requeue_after).await
        }
        Step::Done { requeue_after } => Ok(requeue(requeue_after, scope.resync)),
        _ if lags || ctx.locks.is_held(&key) => Ok(Action::requeue(LAGGING_REQUEUE)),
        Step::WriteStatus(_) | Step::Verify
            if cached_meta
                .as_ref()
                .is_some_and(|meta| status_write_in_flight(app, meta, now)) =>
        {
            Ok(Action::requeue(REPAIR_GRACE))
        }
        // A foreign Secret is not in the (label-filtered) cache, so an app in conflict always
        // looks due a rotation from it, as does one whose Secret is refused: no secret is hashed
        // ahead for those.
        step => write_planned(scope, app, &key, step).await,
    }
}

/// In sync here: the app's identity provider is checked (at a bounded rate); the app looks
/// again at the earlier of its next step (`requeue_after`) and the next check.
async fn check_provider(
    scope: &Scope,
    app: &OAuthApp,
    requeue_after: Option<SignedDuration>,
) -> Result<Action, Error> {
    let check = crate::provider::sync::check_app(&scope.ctx, app).await?;
    let requeue_after = match (
        requeue_after,
        check.and_then(|d| SignedDuration::try_from(d).ok()),
    ) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    Ok(requeue(requeue_after, scope.resync))
}

/// A step the cached view says must be written: it waits for its turn (a scheduled rotation's
/// slot, a repair's brake), then is made on a fresh view ([`converge`]).
async fn write_planned(scope: &Scope, app: &OAuthApp, key: &str, step: Step) -> Result<Action, Error> {
    let ctx = &scope.ctx;
    // A scheduled rotation waits its turn without holding a worker: requeued to its slot.
    if let Turn::Wait(wait) = turn(&ctx.scheduled_rotations, key, &step, Instant::now()) {
        return Ok(Action::requeue(wait));
    }
    let in_conflict = app.ready_condition().is_some_and(|c| {
        c.reason == status::reasons::SECRET_CONFLICT || c.reason == status::reasons::SECRET_REJECTED
    });
    let repair = is_repair(&step) && !in_conflict;
    // A writer that fights the operator: its repairs back off (before the brake counts them).
    if matches!(step, Step::Drift(_))
        && !in_conflict
        && let Some(wait) = drift_backed_off(ctx, app).await?
    {
        return Ok(wait);
    }
    if repair && let Some(wait) = repair_gate(ctx, app, key, &scope.watches).await? {
        return Ok(wait);
    }
    converge(
        scope,
        app,
        matches!(step, Step::Rotate(_) | Step::Drift(_)) && !in_conflict,
        matches!(step, Step::Rotate(RotationTrigger::Schedule)),
        repair,
    )
    .await
}

/// A repair: a new secret because the Secret is gone or not what the operator wrote.
fn is_repair(step: &Step) -> bool {
    matches!(
        step,
        Step::Drift(_) | Step::Rotate(RotationTrigger::SecretMissing)
    )
}

/// Whether the repair of `app` may start now: in its turn (`--max-repairs-per-second`), and while
/// the brake on mass repair lets it (crate::runtime::repairs). Otherwise when to look again; a held
/// app is marked `Ready=False, reason=RepairHeld` (its status otherwise kept).
async fn repair_gate(
    ctx: &Context,
    app: &OAuthApp,
    key: &str,
    watches: &Watches,
) -> Result<Option<Action>, Error> {
    if let Turn::Wait(wait) = ctx.repair_turns.turn(key, Instant::now()) {
        return Ok(Some(Action::requeue(wait)));
    }
    let release = ctx.record_key.release();
    let apps = watches.apps().len();
    if ctx.repairs.admit(key, Instant::now(), apps, release.as_deref())
        == crate::runtime::repairs::Admission::Go
    {
        return Ok(None);
    }
    // A conflict (a stale view) is written at the next look.
    mark_not_ready(
        ctx,
        app,
        status::repair_held_status(app, Timestamp::now()),
        status::reasons::REPAIR_HELD,
    )
    .await?;
    Ok(Some(Action::requeue(REPAIR_HELD_REQUEUE)))
}

/// When the repair for drift of `app` must wait ([`status::drift_backoff`]): says so in its
/// status (`RepairBackoff`, and a Warning Event the first time) and looks again at its time.
async fn drift_backed_off(ctx: &Context, app: &OAuthApp) -> Result<Option<Action>, Error> {
    let now = Timestamp::now();
    let Some(next) = status::drift_backoff(app, now) else {
        return Ok(None);
    };
    // A conflict (a stale view) is written at the next look.
    mark_not_ready(
        ctx,
        app,
        status::repair_backoff_status(app, next, now),
        status::reasons::REPAIR_BACKOFF,
    )
    .await?;
    let wait = Duration::try_from(next.duration_since(now)).unwrap_or_default();
    Ok(Some(Action::requeue(wait.max(Duration::from_secs(1)))))
}

/// Whether `step` may start now. Only scheduled rotations (`spec.rotation.interval` or
/// `schedule`) take a turn under `--max-scheduled-rotations-per-second`; anything else (requested
/// rotations, repairs) goes at once and frees a turn its app held.
fn turn(limit: &ScheduledRotations, key: &str, step: &Step, now: Instant) -> Turn {
    if matches!(step, Step::Rotate(RotationTrigger::Schedule)) {
        limit.turn(key, now)
    } else {
        limit.cancel(key);
        Turn::Now
    }
}

/// The Secret holds a rotation that the status does not show yet and was written moments ago:
/// most likely another replica's REST API is between its two writes, and its status write
/// lands within milliseconds. Completing the status from the Secret now (an argon2 verify, two
/// GETs and a status write racing that replica's) is the repair for a writer that crashed, so
/// it waits [`REPAIR_GRACE`] first.
fn status_write_in_flight(app: &OAuthApp, secret: &ObjectMeta, now: Timestamp) -> bool {
    if !status::secret_ahead_of_status(app, secret) {
        return false;
    }
    let grace = SignedDuration::try_from(REPAIR_GRACE).unwrap_or(SignedDuration::ZERO);
    secret
        .annotations
        .as_ref()
        .and_then(|a| a.get(record::annotations::ROTATED_AT))
        .and_then(|t| t.parse::<Timestamp>().ok())
        .is_some_and(|at| now.duration_since(at).abs() < grace)
}

/// The content check made at the version of the cached Secret's metadata `meta`, if one was
/// (no read, no hash).
fn cached_check(ctx: &Context, meta: &ObjectMeta) -> Option<status::ContentCheck> {
    let hash = meta.annotations.as_ref()?.get(record::annotations::HASH)?;
    let (ns, name) = (meta.namespace.as_deref(), meta.name.as_deref());
    let key = format!("{}/{}", ns.unwrap_or_default(), name.unwrap_or_default());
    ctx.verified
        .get(&key, meta.resource_version.as_deref().unwrap_or_default(), hash)
}

/// What the planner sees of a Secret: its metadata, the content check at this version if one
/// was made, and whether its rotation record is the operator's.
fn secret_view<'a>(
    ctx: &Context,
    app: &OAuthApp,
    meta: &'a ObjectMeta,
    check: Option<status::ContentCheck>,
    now: Timestamp,
) -> Result<SecretView<'a>, Error> {
    let key = ctx.record_key()?;
    let retired = ctx.ledger.get(
        app.metadata.namespace.as_deref().unwrap_or_default(),
        app.metadata.name.as_deref().unwrap_or_default(),
    );
    let record = crate::model::record::judge(app, meta, &key, ctx.hasher.trusted(), now, retired.as_ref());
    Ok(SecretView {
        meta,
        check,
        record,
        resign: record == crate::model::record::Verdict::Signed
            && (!crate::model::record::signed_by_newest(app, meta, &key) || !names_installation(ctx, meta)),
        kept_id: crate::model::record::proven_app_id(app, meta, &key),
    })
}

/// Whether the Secret's record names this installation (records written before 0.2.0 name
/// none: re-signed, at the bounded rate, to claim them).
fn names_installation(ctx: &Context, meta: &ObjectMeta) -> bool {
    ctx.installation.is_empty()
        || meta
            .annotations
            .as_ref()
            .and_then(|a| a.get(record::annotations::INSTALLATION))
            .is_some_and(|i| *i == ctx.installation)
}

/// An app with something due before the next resync is looked at then; any other waits for a
/// change or for [`resync_every`]: one timer for every app, where a requeue per app would hold
/// an entry per app in the controller's queue (~0.6 KiB each).
fn requeue(after: Option<SignedDuration>, resync: Duration) -> Action {
    match after.and_then(|d| Duration::try_from(d).ok()) {
        Some(after) if after < resync => Action::requeue(after.max(Duration::from_millis(100))),
        _ => Action::await_change(),
    }
}

/// Asks for a look at every app each `resync`, until `shutdown`.
async fn resync_every(
    resync: Duration,
    resync_all: futures::channel::mpsc::UnboundedSender<()>,
    shutdown: CancellationToken,
) {
    // As a requeue, at most every 100 ms (an interval of zero is no interval).
    let resync = resync.max(Duration::from_millis(100));
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + resync, resync);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticks.tick() => {
                if resync_all.unbounded_send(()).is_err() {
                    return;
                }
            }
        }
    }
}

/// Brings one app to its desired state, under the app's lock.
///
/// When the cache already says a rotation is due (`rotation_expected`), it is made from the
/// caches first, with no read ([`rotate_from_cache`]); anything else, or a rotation whose
/// conditional write finds the cache behind, is planned again on fresh reads of the app and its
/// Secret. The new secret is hashed (or taken from the pool) while those reads are in flight (it
/// does not depend on them); it is dropped unused if the fresh view decides otherwise. A
/// scheduled rotation starts only with its turn: `scheduled_turn` when the cached view already
/// took it.
async fn converge(
    scope: &Scope,
    cached: &OAuthApp,
    rotation_expected: bool,
    mut scheduled_turn: bool,
    mut repair_admitted: bool,
) -> Result<Action, Error> {
    let (ctx, watches, resync) = (&*scope.ctx, &*scope.watches, scope.resync);
    let key = app_key(cached);
    let _guard = ctx.locks.lock(&key).await;
    if rotation_expected && let Some(done) = rotate_from_cache(scope, cached, scheduled_turn).await? {
        return Ok(done);
    }
    let mut generated: Option<rotation::Generated> = None;
    for _ in 0..MAX_STEPS {
        let Some((app, secret)) = read_fresh(ctx, cached, rotation_expected, &mut generated).await? else {
            return Ok(Action::await_change());
        };
        if let Some(other) =
            status::managed_elsewhere(&ctx.installation, &app, secret.as_ref().map(|s| &s.metadata))
        {
            return leave_alone(ctx, &app, &other).await;
        }
        if !watches.owns_client_id(&app, ctx.record_key.released_client_id().as_deref()) {
            // Another app claimed this client id first: no Secret for this one.
            let status = status::client_id_conflict_status(&app, Timestamp::now());
            if !mark_not_ready(ctx, &app, status, status::reasons::CLIENT_ID_CONFLICT).await? {
                continue;
            }
            return Ok(Action::requeue(CLIENT_ID_REQUEUE));
        }
        let step = plan_fresh(ctx, &app, secret.as_ref()).await?;
        let turns = Turns {
            scheduled: &mut scheduled_turn,
            repair: &mut repair_admitted,
        };
        if let Some(wait) = wait_for_turn(ctx, watches, &key, &app, &step, turns).await? {
            return Ok(wait);
        }
        let written = match apply(scope, &key, &app, secret, step, &mut generated).await? {
            Applied::Wrote(written) => written,
            Applied::Return(action) => return Ok(action),
            Applied::Again => continue,
        };
        match written {
            // The write's own watch events bring the app back for its next step, if any (the
            // cache-lag checks in `reconcile_app` keep that from re-reading too early): no
            // confirming re-read here.
            Ok(()) => return Ok(Action::requeue(LAGGING_REQUEUE)),
            // Someone else wrote first: read again and plan again.
            Err(e) if e.is_conflict() => debug!(app = %key, "write conflict; re-reading"),
            Err(Error::SecretConflict { .. }) => continue,
            // The spec asks for a Secret the API server refuses: say so, and wait for a change.
            Err(Error::SecretRejected { message, .. }) => {
                let status = status::rejected_status(&app, &message, Timestamp::now());
                if !mark_not_ready(ctx, &app, status, status::reasons::SECRET_REJECTED).await? {
                    continue;
                }
                return Ok(Action::requeue(CONFLICT_REQUEUE.min(resync)));
            }
            Err(e) => return Err(e),
        }
    }
    // Lost MAX_STEPS races in a row (heavy contention): look again soon.
    Ok(Action::requeue(Duration::from_secs(1)))
}

/// The app and its Secret, read fresh (None: the app is gone). Both reads at once, and, when a
/// rotation is expected and no secret is made yet, the new secret's hash alongside (into
/// `generated`).
async fn read_fresh(
    ctx: &Context,
    cached: &OAuthApp,
    rotation_expected: bool,
    generated: &mut Option<rotation::Generated>,
) -> Result<Option<(OAuthApp, Option<Secret>)>, Error> {
    let ns = cached.namespace().unwrap_or_default();
    let apps: Api<OAuthApp> = Api::namespaced(ctx.client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    // The Secret's name is fixed when the app is created (CEL).
    let secret_name = cached.secret_name();
    let hashing = async {
        let started = Instant::now();
        match rotation_expected && generated.is_none() {
            // A failed hash is made again, and reported, by rotate_with itself.
            true => ctx.hasher.generate(&ns).await.ok().map(|g| (g, started)),
            false => None,
        }
    };
    let name = cached.name_any();
    let (app, secret, hashed) = futures::join!(apps.get_opt(&name), secrets.get_opt(&secret_name), hashing);
    if generated.is_none() {
        *generated = hashed;
    }
    let Some(app) = app? else {
        return Ok(None);
    };
    let secret = if app.secret_name() == secret_name {
        secret?
    } else {
        secrets.get_opt(&app.secret_name()).await?
    };
    Ok(Some((app, secret)))
}

/// The planner's step on a fresh view, its content check made when it asks for one (a verify
/// is never the answer).
async fn plan_fresh(ctx: &Context, app: &OAuthApp, secret: Option<&Secret>) -> Result<Step, Error> {
    let mut check = None;
    loop {
        let now = Timestamp::now();
        let view = secret
            .map(|s| secret_view(ctx, app, &s.metadata, check, now))
            .transpose()?;
        match plan::plan(app, view, now) {
            Step::Verify => match secret {
                Some(s) => check = Some(rotation::check_content(ctx, app, s).await?),
                None => return Ok(Step::Done { requeue_after: None }),
            },
            step => return Ok(step),
        }
    }
}

/// The turns a reconcile has taken: a scheduled rotation's, a repair's.
struct Turns<'a> {
    scheduled: &'a mut bool,
    repair: &'a mut bool,
}

/// Whether `step` must wait before it is made (Some: requeue so). A scheduled rotation takes
/// its turn (due by the schedule on the fresh view only: the cached one said otherwise); a
/// writer that fights the operator has its repairs backed off; a repair starts in its turn, and
/// only while the brake on mass repair lets it.
async fn wait_for_turn(
    ctx: &Context,
    watches: &Watches,
    key: &str,
    app: &OAuthApp,
    step: &Step,
    turns: Turns<'_>,
) -> Result<Option<Action>, Error> {
    // The app looks again at its turn if it is later (the lock is not held meanwhile).
    if matches!(step, Step::Rotate(RotationTrigger::Schedule)) && !*turns.scheduled {
        if let Turn::Wait(wait) = ctx.scheduled_rotations.turn(key, Instant::now()) {
            return Ok(Some(Action::requeue(wait)));
        }
        *turns.scheduled = true;
    }
    if matches!(step, Step::Drift(_))
        && let Some(wait) = drift_backed_off(ctx, app).await?
    {
        return Ok(Some(wait));
    }
    if is_repair(step) {
        if !*turns.repair {
            if let Some(wait) = repair_gate(ctx, app, key, watches).await? {
                return Ok(Some(wait));
            }
            *turns.repair = true;
        }
    } else {
        ctx.repairs.forget(key);
    }
    Ok(None)
}

/// What making a step came to.
enum Applied {
    /// A write was made (or failed: the write's error).
    Wrote(Result<(), Error>),
    /// Done with this reconcile: this is what comes next.
    Return(Action),
    /// The view was stale: read again and plan again.
    Again,
}

/// Makes `step` on the fresh view (`app`, `secret`); a rotation uses the secret made while
/// reading, if one was (`generated`).
// Long: one arm per step of the planner, each a call or two: the table of what each step writes.
async fn apply(
    scope: &Scope,
    key: &str,
    app: &OAuthApp,
    secret: Option<Secret>,
    step: Step,
    generated: &mut Option<rotation::Generated>,
) -> Result<Applied, Error> {
    let (ctx, resync) = (&*scope.ctx, scope.resync);
    let wrote = match step {
        Step::Done { requeue_after } => return Ok(Applied::Return(requeue(requeue_after, resync))),
        Step::Verify => unreachable_step(),
        Step::Rotate(trigger) => rotation::rotate_with(
            ctx,
            app,
            secret.map(|s| s.metadata),
            trigger,
            None,
            generated.take(),
        )
        .await
        .map(|_| ()),
        Step::Drift(drift) => {
            warn!(app = %key, reason = drift.describe(), "the Secret is not what the operator wrote; replacing it");
            rotation::rotate_with(
                ctx,
                app,
                secret.map(|s| s.metadata),
                RotationTrigger::SecretDrift,
                Some(drift.describe()),
                generated.take(),
            )
            .await
            .map(|_| ())
        }
        Step::RevokePrevious => match secret {
            Some(s) => rotation::revoke_previous(ctx, app, s).await.map(|_| ()),
            None => Ok(()),
        },
        Step::SyncSecret => match secret {
            Some(s) => rotation::sync_secret(ctx, app, s).await.map(|_| ()),
            None => Ok(()),
        },
        Step::RestartConsumers(targets) => {
            match crate::controller::restart::restart_consumers(ctx, app, targets).await {
                // Some targets could not be restarted: try again after the backoff.
                Ok(Some(wait)) => return Ok(Applied::Return(Action::requeue(wait.min(resync)))),
                result => result.map(|_| ()),
            }
        }
        Step::WriteStatus(status) => write_derived_status(ctx, key, app, *status).await,
        Step::Conflict(status) => {
            return not_ready(ctx, app, *status, status::reasons::SECRET_CONFLICT, resync).await;
        }
        Step::Hold(status) => {
            return not_ready(ctx, app, *status, status::reasons::RECORD_UNVERIFIABLE, resync).await;
        }
        // Nothing is adopted before the ledger is read: a copy of a retired secret must
        // not pass for the app's own.
        Step::Adopt if !ctx.ledger.is_loaded() => {
            return Ok(Applied::Return(Action::requeue(LAGGING_REQUEUE)));
        }
        Step::Adopt => match secret {
            Some(s) => rotation::adopt(ctx, app, s).await,
            None => Ok(()),
        },
        Step::Resign => {
            use governor::clock::Clock as _;
            if let Err(not_until) = ctx.resigns.check() {
                let wait = not_until.wait_time_from(governor::clock::DefaultClock::default().now());
                return Ok(Applied::Return(Action::requeue(
                    wait.max(std::time::Duration::from_millis(100)),
                )));
            }
            match secret {
                Some(s) => rotation::sync_secret(ctx, app, s).await.map(|_| ()),
                None => Ok(()),
            }
        }
    };
    Ok(Applied::Wrote(wrote))
}

/// Reports the app not Ready for `reason` (this status), then looks again after a while; a
/// stale view reads again.
async fn not_ready(
    ctx: &Context,
    app: &OAuthApp,
    status: OAuthAppStatus,
    reason: &'static str,
    resync: Duration,
) -> Result<Applied, Error> {
    if !mark_not_ready(ctx, app, status, reason).await? {
        return Ok(Applied::Again);
    }
    Ok(Applied::Return(Action::requeue(CONFLICT_REQUEUE.min(resync))))
}

/// Writes the status derived from the Secret, and says what it changed that a person should
/// know: a previous secret that expired, a status completed from the Secret (its rotation's own
/// status write was lost).
async fn write_derived_status(
    ctx: &Context,
    key: &str,
    app: &OAuthApp,
    status: OAuthAppStatus,
) -> Result<(), Error> {
    let repaired = app.status.as_ref().and_then(|s| s.rotation_id.clone()) != status.rotation_id
        && app.status.as_ref().is_some_and(|s| s.rotation_id.is_some());
    let rotation_id = status.rotation_id.clone().unwrap_or_default();
    let expired = app
        .status
        .as_ref()
        .and_then(|s| s.previous_secret.clone())
        .filter(|_| status.previous_secret.is_none() && !repaired);
    let result = writes::write_status(ctx, app, status).await;
    if let (Ok(_), Some(expired)) = (&result, expired) {
        info!(app = %key, previous = %expired.rotation_id, "previous client secret expired");
        writes::publish_in_background(
            ctx,
            app,
            EventType::Normal,
            "PreviousSecretExpired",
            format!(
                "Previous secret {} expired at {}; only the current secret is valid",
                expired.client_secret_hint, expired.expires_at.0
            ),
        );
    }
    if result.is_ok() && repaired {
        info!(app = %key, rotation_id = %rotation_id, "status completed from the Secret; no new secret");
        writes::publish(
            ctx,
            app,
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

/// A rotation that the cached view asks for (a requested, scheduled or first secret), made from
/// the watch caches with no read, under the app's lock: the cache is looked at again now that
/// the lock is held (a rotation this process just made is in it, or known to be missing from
/// it). Both writes are conditional on the cached resourceVersions and the rotation replaces
/// the Secret's data whole, so this is the same decision and the same writes as from fresh
/// reads: a cache behind the API server makes the Secret write fail with a conflict (nothing
/// written), and a status write that conflicts is re-read and retried while the Secret still
/// holds this rotation. Some: the rotation is written; None: fresh reads decide (the cache
/// lags, it no longer asks for a rotation, or the write found it behind).
async fn rotate_from_cache(
    scope: &Scope,
    cached: &OAuthApp,
    scheduled_turn: bool,
) -> Result<Option<Action>, Error> {
    let ctx = &*scope.ctx;
    let Some(app) = scope
        .apps
        .lookup(&cached.namespace().unwrap_or_default(), &cached.name_any())
        .map(|a| a.app())
    else {
        return Ok(None);
    };
    let ns = app.namespace().unwrap_or_default();
    let secret_meta = scope
        .secrets
        .lookup(&ns, &app.secret_name())
        .map(|s| s.metadata());
    let key = app_key(&app);
    if writes::caches_lag(ctx, &app, secret_meta.as_ref())
        || app.uid() != cached.uid()
        || !scope
            .watches
            .owns_client_id(&app, ctx.record_key.released_client_id().as_deref())
    {
        return Ok(None);
    }
    let now = Timestamp::now();
    let view = secret_meta
        .as_ref()
        .map(|meta| secret_view(ctx, &app, meta, cached_check(ctx, meta), now))
        .transpose()?;
    let trigger = match plan::plan(&app, view, now) {
        Step::Rotate(RotationTrigger::Schedule) if !scheduled_turn => return Ok(None),
        Step::Rotate(trigger) => trigger,
        _ => return Ok(None),
    };
    let current = secret_meta;
    match rotation::rotate_with(ctx, &app, current, trigger, None, None).await {
        // As after any write: its watch events bring the app back for its next step, if any.
        Ok(_) => Ok(Some(Action::requeue(LAGGING_REQUEUE))),
        Err(e) if e.is_conflict() => {
            debug!(app = %key, "the cache was behind the API server; reading fresh");
            Ok(None)
        }
        // Said on the fresh view: a Secret in the way, or one the API server refuses.
        Err(Error::SecretConflict { .. } | Error::SecretRejected { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The app a Secret's change concerns: its controller (an OAuthApp), or the app its record
/// names (`oauthapp.io/app-name`).
fn secret_owner(secret: &CachedSecret) -> Option<AppKey> {
    let meta = secret.metadata();
    let name = match ControlledBy::of(&meta) {
        ControlledBy::App(app) => app,
        ControlledBy::Other => return None,
        ControlledBy::Nothing => meta.annotations?.remove(record::annotations::APP_NAME)?,
    };
    Some(AppKey::new(secret.namespace(), &name))
}

use crate::model::status::MANAGED_ELSEWHERE;

/// Leaves an app that `other` (another installation) manages alone: no write to its Secret,
/// no repair; says so once, in a `ManagedElsewhere` condition (kept by the managing
/// installation's status writes, which keep conditions they do not own) and an Event.
async fn leave_alone(ctx: &Context, app: &OAuthApp, other: &str) -> Result<Action, Error> {
    let message = format!(
        "managed by the operator installation {other}; this installation ({}), which also watches this namespace, leaves \
         it alone",
        ctx.installation
    );
    let said = app.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == MANAGED_ELSEWHERE && c.message == message)
    });
    if !said && ctx.leadership.check().is_ok() {
        let mut status = app.status.clone().unwrap_or_default();
        status.conditions.retain(|c| c.type_ != MANAGED_ELSEWHERE);
        status
            .conditions
            .push(k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
                type_: MANAGED_ELSEWHERE.into(),
                status: "True".into(),
                reason: "OtherInstallation".into(),
                message: message.clone(),
                observed_generation: app.metadata.generation,
                last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Timestamp::now()),
            });
        match writes::write_status(ctx, app, status).await {
            Ok(_) => {
                info!(app = %app_key(app), installation = other, "{message}");
                writes::publish_in_background(ctx, app, EventType::Normal, "ManagedElsewhere", message);
            }
            Err(e) if e.is_conflict() => return Ok(Action::requeue(LAGGING_REQUEUE)),
            Err(e) => return Err(e),
        }
    }
    Ok(Action::await_change())
}

/// Writes a `Ready=False` status for `reason` unless the app shows it already, with a Warning
/// Event the first time. False when the write lost a race (read again and plan again).
async fn mark_not_ready(
    ctx: &Context,
    app: &OAuthApp,
    status: OAuthAppStatus,
    reason: &'static str,
) -> Result<bool, Error> {
    if app.status.as_ref() == Some(&status) {
        return Ok(true);
    }
    let already = app
        .ready_condition()
        .is_some_and(|c| c.reason == reason && c.status == "False");
    let message = status
        .conditions
        .first()
        .map(|c| c.message.clone())
        .unwrap_or_default();
    match writes::write_status(ctx, app, status).await {
        Ok(_) => {}
        Err(e) if e.is_conflict() => return Ok(false),
        Err(e) => return Err(e),
    }
    if !already {
        warn!(app = %app_key(app), "{message}");
        writes::publish(ctx, app, EventType::Warning, reason, message).await;
    }
    Ok(true)
}

fn unreachable_step() -> Result<(), Error> {
    Err(Error::Internal(
        "planner returned Verify after the content was checked".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::crd::{OAuthAppSpec, OAuthAppStatus};
    use std::collections::BTreeMap;

    #[test]
    fn only_what_is_due_before_the_resync_gets_its_own_requeue() {
        let resync = Duration::from_secs(600);
        assert_eq!(
            requeue(Some(SignedDuration::from_secs(30)), resync),
            Action::requeue(Duration::from_secs(30))
        );
        assert_eq!(
            requeue(Some(SignedDuration::from_millis(1)), resync),
            Action::requeue(Duration::from_millis(100))
        );
        // Later, past, or nothing due: the periodic resync looks again.
        for after in [
            Some(SignedDuration::from_secs(600)),
            Some(SignedDuration::from_secs(3600)),
            Some(SignedDuration::from_secs(-5)),
            None,
        ] {
            assert_eq!(requeue(after, resync), Action::await_change(), "{after:?}");
        }
    }

    fn app_with_rotation(id: &str) -> OAuthApp {
        let mut app = OAuthApp::new("a", OAuthAppSpec::default());
        app.status = Some(OAuthAppStatus {
            rotation_id: Some(id.into()),
            ..Default::default()
        });
        app
    }

    fn secret(rotation_id: &str, rotated_at: Timestamp) -> ObjectMeta {
        ObjectMeta {
            annotations: Some(BTreeMap::from([
                (
                    record::annotations::ROTATION_ID.to_string(),
                    rotation_id.to_string(),
                ),
                (
                    record::annotations::ROTATED_AT.to_string(),
                    rotated_at.to_string(),
                ),
            ])),
            ..Default::default()
        }
    }

    #[test]
    fn only_scheduled_rotations_wait_their_turn_and_requested_ones_never_queue() {
        let limit = ScheduledRotations::new(1.0, None);
        let now = Instant::now();
        let scheduled = Step::Rotate(RotationTrigger::Schedule);
        assert_eq!(turn(&limit, "ns/a", &scheduled, now), Turn::Now);
        for app in ["ns/b", "ns/c", "ns/d"] {
            assert!(
                matches!(turn(&limit, app, &scheduled, now), Turn::Wait(_)),
                "{app}"
            );
        }
        assert_eq!(limit.waiting(), 3);
        // Requested rotations and repairs, on any app, go at once and take no turn, however
        // long the queue.
        for step in [
            Step::Rotate(RotationTrigger::Annotation),
            Step::Rotate(RotationTrigger::Api),
            Step::Rotate(RotationTrigger::Created),
            Step::Rotate(RotationTrigger::SecretMissing),
            Step::Drift(record::Drift::Mismatch),
        ] {
            assert_eq!(turn(&limit, "ns/e", &step, now), Turn::Now, "{step:?}");
        }
        assert_eq!(limit.waiting(), 3);
        // A queued app rotated on request meanwhile gives its turn up; the others keep theirs,
        // in order.
        assert_eq!(
            turn(&limit, "ns/c", &Step::Rotate(RotationTrigger::Annotation), now),
            Turn::Now
        );
        assert_eq!(limit.waiting(), 2);
        let later = now + Duration::from_secs(1);
        assert_eq!(turn(&limit, "ns/b", &scheduled, later), Turn::Now);
        assert!(matches!(turn(&limit, "ns/d", &scheduled, later), Turn::Wait(_)));
    }

    #[test]
    fn only_a_fresh_secret_ahead_of_the_status_waits_for_its_writer() {
        let now = Timestamp::now();
        let app = app_with_rotation("old");
        let ago = |s: i64| now - SignedDuration::from_secs(s);
        assert!(status_write_in_flight(&app, &secret("new", ago(1)), now));
        // A writer that has not completed the status after the grace has crashed: repair.
        assert!(!status_write_in_flight(&app, &secret("new", ago(10)), now));
        // Secret and status agree: nothing in flight.
        assert!(!status_write_in_flight(&app, &secret("old", ago(1)), now));
        assert!(!status_write_in_flight(&app, &ObjectMeta::default(), now));
    }
}
