//! The status an app should have: derived from its Secret's record (`status_from_secret`), the
//! Ready condition's reasons and the statuses that say why an app is not Ready, its history,
//! its rollout restarts and its next scheduled rotation. Both the planner
//! (`crate::controller::plan`) and the rotation (`crate::rotation`) build statuses from these.
//!
//! The Secret is the source of truth for the current secret; the status is derived from the
//! Secret's annotations, so a crash between the Secret write and the status write converges by
//! re-deriving the status — never by generating another secret.

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, Time};

use crate::model::crd::{
    DEFAULT_HISTORY_LIMIT, OAuthApp, OAuthAppStatus, RestartTarget, RolloutRestarts, RotationHistoryEntry,
    RotationTrigger,
};
use crate::model::managed::annotations_of;
use crate::model::record::{annotations, app_id, client_id};

/// The condition an installation puts on an app another installation manages.
pub const MANAGED_ELSEWHERE: &str = "ManagedElsewhere";

/// The app's condition: whether the provider holds what the Secret holds.
pub const PROVIDER_SYNCED: &str = "ProviderSynced";
/// `ProviderSynced=True`: the provider holds the current secret (and the previous one, with a
/// grace period, where it can).
pub const SYNCED: &str = "Synced";
/// `ProviderSynced=True`, with a grace period the provider did not keep: only the current secret
/// works there.
pub const SYNCED_WITHOUT_GRACE: &str = "SyncedWithoutGrace";

/// The Ready condition's reasons.
pub mod reasons {
    /// Secret and status agree.
    pub const SECRET_READY: &str = "SecretReady";
    /// A Secret of the same name exists and the app does not own it.
    pub const SECRET_CONFLICT: &str = "SecretConflict";
    /// Another app claimed the same client id first.
    pub const CLIENT_ID_CONFLICT: &str = "ClientIdConflict";
    /// The API server refuses the Secret the spec asks for (422).
    pub const SECRET_REJECTED: &str = "SecretRejected";
    /// The Secret's record is signed by a key the operator does not hold and there is no status
    /// to check it against (a restore without the key): nothing is rotated until the key is
    /// back or a person decides.
    pub const RECORD_UNVERIFIABLE: &str = "RecordUnverifiable";
    /// The app needs a repair (its Secret is gone or altered), and the brake on mass repair
    /// holds it: too many apps needed one at once (crate::runtime::repairs).
    pub const REPAIR_HELD: &str = "RepairHeld";
    /// The Secret was altered again right after a repair for drift (another writer fights the
    /// operator, e.g. a GitOps tool re-applying `client_secret`): repairs back off
    /// ([`super::drift_backoff`]).
    pub const REPAIR_BACKOFF: &str = "RepairBackoff";
    /// `spec.rotation.schedule` or `timeZone` passed the API server's validation but cannot be
    /// used (an unknown time zone, a date that never comes): no scheduled rotation until fixed.
    pub const INVALID_SCHEDULE: &str = "InvalidSchedule";
}

/// The result of checking a Secret's content against its own hash annotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentCheck {
    /// `client_secret` verifies against the `client-secret-hash` annotation.
    pub secret_ok: bool,
    /// `client_id` is the app's client id.
    pub client_id_ok: bool,
}

/// How long the secret a rotation by `trigger` replaces stays valid: `spec.rotation.gracePeriod`
/// for routine rotations (annotation, REST API, schedule) unless the request revokes it
/// (`revoke`, or on an annotation rotation `oauthapp.io/rotate-revoke` valued with the rotate
/// token it goes with: that rotation only; `"true"`, the older form, revokes at every annotation
/// rotation while it is there); None for repairs, revocations and a zero grace period.
pub fn grace_for(app: &OAuthApp, trigger: RotationTrigger, revoke: bool) -> Option<SignedDuration> {
    let routine = matches!(
        trigger,
        RotationTrigger::Annotation | RotationTrigger::Api | RotationTrigger::Schedule
    );
    let revoke_annotation = app.annotation(crate::model::crd::ROTATE_REVOKE_ANNOTATION);
    let revoked = revoke
        || (trigger == RotationTrigger::Annotation
            && revoke_annotation.is_some_and(|v| {
                v == "true" || Some(v) == app.annotation(crate::model::crd::ROTATE_ANNOTATION)
            }));
    if !routine || revoked {
        return None;
    }
    let grace = parse_interval(app.spec.rotation.as_ref()?.grace_period.as_deref()?)?;
    (grace > SignedDuration::ZERO).then_some(grace)
}

/// The condition type that tells whether `spec.rolloutRestartTargets` follow the current rotation.
pub const CONSUMERS_RESTARTED: &str = "ConsumersRestarted";

/// The `spec.rolloutRestartTargets` not yet restarted for the current rotation (as the status
/// shows it). The first secret of an app restarts nothing: no consumer had an older one.
pub fn pending_restarts(app: &OAuthApp) -> Vec<RestartTarget> {
    let Some(status) = app.status.as_ref() else {
        return Vec::new();
    };
    let Some(rotation_id) = status.rotation_id.as_deref() else {
        return Vec::new();
    };
    if matches!(
        status.last_rotation_trigger,
        None | Some(RotationTrigger::Created)
    ) {
        return Vec::new();
    }
    let done: &[RestartTarget] = match &status.rollout_restarts {
        Some(r) if r.rotation_id == rotation_id => &r.targets,
        _ => &[],
    };
    app.spec
        .rollout_restart_targets
        .iter()
        .filter(|t| !done.contains(t))
        .cloned()
        .collect()
}

/// The status after restarting `restarted` for the current rotation, with `failed` (target and
/// why) still to do: the restart record, and `ConsumersRestarted` True, or False with `reason`.
pub fn restarts_status(
    app: &OAuthApp,
    restarted: &[RestartTarget],
    failed: &[(RestartTarget, String)],
    reason: &str,
    now: Timestamp,
) -> OAuthAppStatus {
    let mut status = app.status.clone().unwrap_or_default();
    let rotation_id = status.rotation_id.clone().unwrap_or_default();
    let mut targets = match status.rollout_restarts.take() {
        Some(r) if r.rotation_id == rotation_id => r.targets,
        _ => Vec::new(),
    };
    for t in restarted {
        if !targets.contains(t) {
            targets.push(t.clone());
        }
    }
    targets.sort();
    let (state, reason, message) = if failed.is_empty() {
        let all = app
            .spec
            .rollout_restart_targets
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        (
            "True",
            "Restarted",
            format!("{all} restarted for rotation {rotation_id}"),
        )
    } else {
        let why = failed
            .iter()
            .map(|(t, why)| format!("{t}: {why}"))
            .collect::<Vec<_>>()
            .join("; ");
        (
            "False",
            reason,
            format!("not yet restarted for rotation {rotation_id} (retried with backoff): {why}"),
        )
    };
    let condition = condition(
        &status,
        CONSUMERS_RESTARTED,
        app.metadata.generation,
        state,
        reason,
        message,
        now,
    );
    status.conditions.retain(|c| c.type_ != CONSUMERS_RESTARTED);
    status.conditions.push(condition);
    status.rollout_restarts = Some(Box::new(RolloutRestarts { rotation_id, targets }));
    status
}

/// How many rotations `status.history` keeps (`spec.rotation.historyLimit`, default 5, at most 20).
pub fn history_limit(app: &OAuthApp) -> usize {
    app.spec
        .rotation
        .as_ref()
        .and_then(|r| r.history_limit)
        .map_or(DEFAULT_HISTORY_LIMIT, |n| usize::from(n).clamp(1, 20))
}

/// The history a rotation's record carries: its own entry, then what the replaced record (or,
/// without a believed one, the status) remembers, cut to `spec.rotation.historyLimit`.
pub fn history_after(
    app: &OAuthApp,
    newest: RotationHistoryEntry,
    replaced: Option<&crate::model::record::Record>,
) -> Vec<RotationHistoryEntry> {
    let older = match replaced {
        Some(r) => r.history_entries(),
        None => app.status.as_ref().map(|s| s.history.clone()).unwrap_or_default(),
    };
    let id = newest.rotation_id.clone();
    let mut history = vec![newest];
    history.extend(older.into_iter().filter(|e| e.rotation_id != id));
    history.truncate(history_limit(app));
    history
}

/// The Secret holds a rotation (by its `rotation-id`) that the app's status does not show: its
/// writer has not written the status yet, or crashed before it could.
pub fn secret_ahead_of_status(app: &OAuthApp, secret: &ObjectMeta) -> bool {
    secret
        .annotations
        .as_ref()
        .and_then(|a| a.get(annotations::ROTATION_ID))
        .is_some_and(|id| app.status.as_ref().and_then(|s| s.rotation_id.as_ref()) != Some(id))
}

/// The `oauthapp.io/rotate` value a new secret records as acted on: the annotation's current
/// value; when the annotation is gone, the last value recorded (on the Secret being replaced, or
/// in the status when there is no Secret), so that re-adding an old value rotates nothing.
pub fn observed_rotate_token(app: &OAuthApp, replaced: Option<&ObjectMeta>) -> Option<String> {
    app.rotate_token()
        .map(str::to_string)
        .or_else(|| annotations_of(replaced?).remove(annotations::OBSERVED_ROTATE_TOKEN))
        .or_else(|| app.status.as_ref()?.observed_rotate_token.clone())
}

/// When the next scheduled rotation of an app last rotated at `rotated_at` is due:
/// `spec.rotation.interval` after it, or the first time of `spec.rotation.schedule` after it
/// (in the past when a time was missed: then it is due now, once; see
/// [`crate::model::schedule::next_rotation`]). None: no scheduled rotation. Err: a schedule the
/// operator cannot use.
pub fn next_rotation_time(
    app: &OAuthApp,
    rotated_at: Option<Timestamp>,
) -> Result<Option<Timestamp>, crate::model::schedule::ScheduleError> {
    let Some(rotation) = app.spec.rotation.as_ref() else {
        return Ok(None);
    };
    if let Some(expr) = rotation.schedule.as_deref() {
        let schedule = crate::model::schedule::Schedule::parse_for_app(expr, rotation.time_zone.as_deref())?;
        return rotated_at
            .map(|at| crate::model::schedule::next_rotation(&schedule, at))
            .transpose();
    }
    Ok(rotation
        .interval
        .as_deref()
        .and_then(parse_interval)
        .zip(rotated_at)
        .and_then(|(interval, at)| at.checked_add(interval).ok()))
}

/// Parses `spec.rotation.interval` (`720h`, `36h30m`, `90m`; the CRD's pattern). None when it
/// does not parse, which the API server's validation already prevents.
pub fn parse_interval(s: &str) -> Option<SignedDuration> {
    let mut total: i64 = 0;
    let mut digits = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let n: i64 = digits.parse().ok()?;
        digits.clear();
        let unit = match c {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return None,
        };
        total = total.checked_add(n.checked_mul(unit)?)?;
    }
    if !digits.is_empty() || s.is_empty() {
        return None;
    }
    Some(SignedDuration::from_secs(total))
}

/// The status that describes the Secret `meta` (written by the operator) for `app`.
/// Keeps `lastTransitionTime` of a Ready condition that does not change.
// Long: the status field by field from the record, each a line or two.
pub fn status_from_secret(
    app: &OAuthApp,
    meta: &ObjectMeta,
    kept_id: Option<&str>,
    now: Timestamp,
) -> OAuthAppStatus {
    let ann = annotations_of(meta);
    let get = |k: &str| ann.get(k).cloned();
    let rotated_at = get(annotations::ROTATED_AT).and_then(|t| t.parse::<Timestamp>().ok());
    let previous = app.status.clone().unwrap_or_default();
    // Only ever called for a record the operator wrote (signed, or re-signed from the status).
    let secret_name = app.secret_name();
    let record = crate::model::record::Record::from_annotations("", "", meta);
    let record = record.as_ref();
    let next_rotation = next_rotation_time(app, rotated_at);
    let (ready, reason, message) = match &next_rotation {
        Ok(_) => (
            "True",
            reasons::SECRET_READY,
            format!("Secret {secret_name} holds the current client secret"),
        ),
        // The secret is good; the schedule is not: say so until the spec is fixed.
        Err(e) => (
            "False",
            reasons::INVALID_SCHEDULE,
            format!(
                "{e}; no scheduled rotation until it is fixed (Secret {secret_name} holds the current client secret)"
            ),
        ),
    };
    // The id is made once and kept: the status's, else the one the record proves, else the
    // uid's (a new app).
    let app_id = crate::model::record::status_app_id(app)
        .or_else(|| kept_id.map(str::to_string))
        .or_else(|| crate::model::record::uid_app_id(app));
    OAuthAppStatus {
        client_id: app.spec.client_id.clone().or_else(|| app_id.clone()),
        app_id,
        installation: get(annotations::INSTALLATION).or(previous.installation.clone()),
        secret_name: Some(secret_name.clone()),

        client_secret_hash: get(annotations::HASH),
        client_secret_hint: get(annotations::HINT),
        rotation_id: get(annotations::ROTATION_ID),
        rotation_count: get(annotations::ROTATION_COUNT)
            .and_then(|c| c.parse().ok())
            .unwrap_or(1),
        last_rotation_time: rotated_at.map(time),
        last_rotation_trigger: get(annotations::TRIGGER).and_then(|t| RotationTrigger::parse(&t)),
        previous_secret: record
            .and_then(|r| r.previous.clone())
            .filter(|p| p.valid_at(now))
            .and_then(|p| {
                Some(Box::new(crate::model::crd::PreviousSecret {
                    expires_at: time(p.expiry()?),
                    rotation_id: p.rotation_id,
                    client_secret_hash: p.hash,
                    client_secret_hint: p.hint,
                }))
            }),
        history: {
            let mut history = record.map(|r| r.history_entries()).unwrap_or_default();
            history.truncate(history_limit(app));
            history
        },
        // What was restarted for which rotation is the operator's own bookkeeping, kept as is
        // (lost with the status, the restarts are made again: they change nothing the second
        // time, the annotation being the rotation id).
        rollout_restarts: previous
            .rollout_restarts
            .clone()
            .filter(|_| !app.spec.rollout_restart_targets.is_empty()),
        next_rotation_time: next_rotation.ok().flatten().map(time),
        observed_rotate_token: get(annotations::OBSERVED_ROTATE_TOKEN),
        secret_resource_version: meta.resource_version.clone(),
        observed_generation: app.metadata.generation,
        conditions: with_ready(
            app,
            &previous,
            ready_condition(&previous, app.metadata.generation, ready, reason, message, now),
        ),
    }
}

/// The previous status's conditions with `ready` in place of its Ready condition (and without
/// `ConsumersRestarted` once the app has no restart targets).
fn with_ready(app: &OAuthApp, previous: &OAuthAppStatus, ready: Condition) -> Vec<Condition> {
    let mut conditions = vec![ready];
    conditions.extend(
        previous
            .conditions
            .iter()
            .filter(|c| {
                c.type_ != "Ready"
                    && (c.type_ != CONSUMERS_RESTARTED || !app.spec.rollout_restart_targets.is_empty())
            })
            .cloned(),
    );
    conditions
}

/// The message of a `Ready=False` condition for `reason` that `written` has and `before` did
/// not: the moment to publish a Warning Event, once.
pub fn newly_not_ready(before: &OAuthApp, written: &OAuthApp, reason: &str) -> Option<String> {
    let is = |app: &OAuthApp| {
        app.ready_condition()
            .filter(|c| c.status == "False" && c.reason == reason)
            .map(|c| c.message.clone())
    };
    match is(before) {
        Some(_) => None,
        None => is(written),
    }
}

/// The status of an app whose Secret name is taken by a Secret it does not own.
pub fn conflict_status(app: &OAuthApp, now: Timestamp) -> OAuthAppStatus {
    let message = format!(
        "Secret {} exists and is not owned by OAuthApp {}; delete it, or recreate the app with another spec.secret.name",
        app.secret_name(),
        app.metadata.name.as_deref().unwrap_or_default()
    );
    not_ready_status(app, reasons::SECRET_CONFLICT, message, now)
}

/// The status of an app whose Secret's record no key of the operator verifies, with no status
/// to check it against.
pub fn unverifiable_status(app: &OAuthApp, now: Timestamp) -> OAuthAppStatus {
    let message = format!(
        "the rotation record on Secret {} is signed by a key this operator does not hold, and there is no status \
         to check it against; nothing is rotated. Restore the record key Secret, or accept the Secret as it is \
         with the annotation {}=<its rotation id> on this app (see docs/day-two.md)",
        app.secret_name(),
        crate::model::crd::ACCEPT_SECRET_ANNOTATION,
    );
    not_ready_status(app, reasons::RECORD_UNVERIFIABLE, message, now)
}

/// The status of an app whose repair the brake on mass repair holds.
pub fn repair_held_status(app: &OAuthApp, now: Timestamp) -> OAuthAppStatus {
    let message = format!(
        "Secret {} needs a repair (it is gone or altered), and too many apps needed one at once: repairs are held until \
         a person releases them with a new value of the annotation {} on the record key Secret (see docs/day-two.md)",
        app.secret_name(),
        crate::model::record::RELEASE_REPAIRS_ANNOTATION,
    );
    not_ready_status(app, reasons::REPAIR_HELD, message, now)
}

/// The wait before the second repair for drift in a row.
pub const DRIFT_BACKOFF_FIRST: SignedDuration = SignedDuration::from_secs(30);
/// The longest wait between repairs for drift.
pub const DRIFT_BACKOFF_MAX: SignedDuration = SignedDuration::from_hours(1);

/// When a repair for drift may start, if not now. The first two repairs for drift in a row go
/// at once (a restore and a tool, two incidents). From the third on another writer is taken to
/// fight the operator (a GitOps or sync tool re-applying its own `client_secret`): the third
/// waits [`DRIFT_BACKOFF_FIRST`] after the second, each later one twice the gap between the last
/// two (exponential, at most [`DRIFT_BACKOFF_MAX`]); a gap longer than twice the maximum starts
/// over. The history in the status is all it needs (three entries): a fight stays visible there,
/// and in the Ready condition while a repair waits.
pub fn drift_backoff(app: &OAuthApp, now: Timestamp) -> Option<Timestamp> {
    let history = &app.status.as_ref()?.history;
    let drift = |i: usize| {
        history
            .get(i)
            .filter(|e| e.trigger == RotationTrigger::SecretDrift)
    };
    let (last, before) = (drift(0)?, drift(1)?);
    let gap = last.time.0.duration_since(before.time.0);
    if gap > DRIFT_BACKOFF_MAX * 2 {
        return None;
    }
    let wait = match drift(2) {
        Some(_) => (gap * 2).clamp(DRIFT_BACKOFF_FIRST, DRIFT_BACKOFF_MAX),
        None => DRIFT_BACKOFF_FIRST,
    };
    let next = last.time.0.checked_add(wait).ok()?;
    (now < next).then_some(next)
}

/// The status of an app whose repair for drift waits until `next` ([`drift_backoff`]); the rest
/// of the status is kept.
pub fn repair_backoff_status(app: &OAuthApp, next: Timestamp, now: Timestamp) -> OAuthAppStatus {
    let message = format!(
        "Secret {} was altered again after its repair: another writer puts its own client_secret back (a GitOps or sync \
         tool, a backup?). Repairs back off, doubling, up to 1h: the next one is at {next}. Stop that writer; the \
         status's history shows the repairs",
        app.secret_name(),
    );
    not_ready_status(app, reasons::REPAIR_BACKOFF, message, now)
}

/// The status of an app whose client id another app claimed first. It names no other app: the
/// claimant may be in a namespace this app's readers may not see.
pub fn client_id_conflict_status(app: &OAuthApp, now: Timestamp) -> OAuthAppStatus {
    let message = format!(
        "client id {:?} is already claimed by another OAuthApp; choose another spec.clientId (the app gets no Secret until then)",
        client_id(app).unwrap_or_default()
    );
    OAuthAppStatus {
        // Not published while another app holds it: a verifier that looks apps up by client
        // id must find exactly one.
        client_id: None,
        ..not_ready_status(app, reasons::CLIENT_ID_CONFLICT, message, now)
    }
}

/// The status of an app whose Secret the API server refuses (`message`: its reason).
pub fn rejected_status(app: &OAuthApp, message: &str, now: Timestamp) -> OAuthAppStatus {
    let message = format!(
        "the API server refuses Secret {} as spec.secret describes it: {message}",
        app.secret_name()
    );
    not_ready_status(app, reasons::SECRET_REJECTED, message, now)
}

/// The previous status with `Ready=False` for `reason`: everything else stays as it was.
fn not_ready_status(app: &OAuthApp, reason: &str, message: String, now: Timestamp) -> OAuthAppStatus {
    let previous = app.status.clone().unwrap_or_default();
    OAuthAppStatus {
        app_id: app_id(app),
        client_id: client_id(app),
        secret_name: Some(app.secret_name()),
        observed_generation: app.metadata.generation,
        conditions: with_ready(
            app,
            &previous,
            ready_condition(&previous, app.metadata.generation, "False", reason, message, now),
        ),
        ..previous
    }
}

/// A `Time` as the API server stores it: whole seconds. Comparing a status computed here with
/// one read back must not differ in sub-seconds, or every reconcile would write again.
fn time(ts: Timestamp) -> Time {
    Time(Timestamp::from_second(ts.as_second()).unwrap_or(ts))
}

fn ready_condition(
    previous: &OAuthAppStatus,
    generation: Option<i64>,
    status: &str,
    reason: &str,
    message: String,
    now: Timestamp,
) -> Condition {
    condition(previous, "Ready", generation, status, reason, message, now)
}

/// A condition of `type_`, keeping the previous one's `lastTransitionTime` when its status
/// does not change.
fn condition(
    previous: &OAuthAppStatus,
    type_: &str,
    generation: Option<i64>,
    status: &str,
    reason: &str,
    message: String,
    now: Timestamp,
) -> Condition {
    let old = previous.conditions.iter().find(|c| c.type_ == type_);
    let last_transition_time = match old {
        Some(c) if c.status == status => c.last_transition_time.clone(),
        _ => time(now),
    };
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time,
    }
}

/// The other installation that manages `app`, when one does: its status names it, or (no
/// status claim yet) its Secret's record does. This installation (`installation`: its name;
/// empty when installations are not told apart) leaves such an app alone.
pub fn managed_elsewhere(installation: &str, app: &OAuthApp, secret: Option<&ObjectMeta>) -> Option<String> {
    if installation.is_empty() {
        return None;
    }
    let claimed = app
        .status
        .as_ref()
        .and_then(|s| s.installation.clone())
        .or_else(|| {
            secret?
                .annotations
                .as_ref()?
                .get(annotations::INSTALLATION)
                .cloned()
        })?;
    (claimed != installation).then_some(claimed)
}
