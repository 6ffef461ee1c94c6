//! What should happen to an app now: a pure function of the app, its Secret's metadata and the
//! clock. The reconciler and the REST API only do the I/O around these decisions.
//!
//! The Secret is the source of truth for the current secret; the status is derived from the
//! Secret's annotations (`status_from_secret`), so a crash between the Secret write and the
//! status write converges by re-deriving the status — never by generating another secret.

use std::collections::{BTreeMap, BTreeSet};

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, Time};

use crate::model::crd::{
    DEFAULT_HISTORY_LIMIT, OAuthApp, OAuthAppStatus, RestartTarget, RolloutRestarts, RotationHistoryEntry,
    RotationTrigger,
};

pub use crate::model::record::{Drift, Verdict, annotations, app_id, client_id};

/// Labels on every Secret the operator writes; the operator watches only Secrets that carry them.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY: &str = crate::model::crd::MANAGER;

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

/// The next step toward the desired state.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Generate a new secret and write it (Secret first, then status).
    Rotate(RotationTrigger),
    /// The Secret is not what the operator wrote: replace it (trigger `SecretDrift`), saying why.
    Drift(Drift),
    /// Retire the previous secret now (`oauthapp.io/revoke-previous`): rewrite the Secret's
    /// record without it, then the status. The current secret stays.
    RevokePrevious,
    /// The Secret changed since it was last verified: check its content (costly: argon2).
    Verify,
    /// Rewrite the Secret's labels, annotations or `client_id` without changing the secret.
    SyncSecret,
    /// Restart these `spec.rolloutRestartTargets` for the current rotation (they have not been
    /// yet), then record it in the status.
    RestartConsumers(Vec<RestartTarget>),
    /// Write this status (derived from the Secret); no new secret.
    WriteStatus(Box<OAuthAppStatus>),
    /// A Secret of the same name exists and is not ours: leave it alone, report it.
    Conflict(Box<OAuthAppStatus>),
    /// The Secret's record can be neither believed nor disproven: hold, report it (this
    /// status, Ready=False, `RecordUnverifiable`), write nothing to the Secret.
    Hold(Box<OAuthAppStatus>),
    /// The Secret is this app's from before a restore or re-creation ([`Verdict::Adopt`]), its
    /// content verified: set its ownerReference, re-sign its record for this app, rebuild the
    /// status from it. No new secret.
    Adopt,
    /// Everything agrees, and the record is signed by an older key of the ring: re-sign it
    /// with the newest, changing nothing else (at a bounded rate).
    Resign,
    /// Nothing to write; look again after this long (a scheduled rotation) if set.
    Done { requeue_after: Option<SignedDuration> },
}

/// The result of checking a Secret's content against its own hash annotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentCheck {
    /// `client_secret` verifies against the `client-secret-hash` annotation.
    pub secret_ok: bool,
    /// `client_id` is the app's client id.
    pub client_id_ok: bool,
}

/// What the planner knows about the Secret.
#[derive(Debug, Clone)]
pub struct SecretView<'a> {
    pub meta: &'a ObjectMeta,
    /// The content check at the Secret's current resourceVersion, if one was made.
    pub check: Option<ContentCheck>,
    /// Whether the record in its annotations is believed ([`crate::model::record::verdict`]).
    pub record: Verdict,
    /// A believed record signed by an older key of the ring ([`crate::model::record::signed_by_newest`]).
    pub resign: bool,
    /// The app id the Secret's record proves ([`crate::model::record::proven_app_id`]): the id a
    /// restored or re-created app keeps.
    pub kept_id: Option<String>,
}

/// Decides the next step for `app` given its Secret (None: there is none).
pub fn plan(app: &OAuthApp, secret: Option<SecretView<'_>>, now: Timestamp) -> Step {
    if app.metadata.deletion_timestamp.is_some() {
        // The Secret goes with the app (ownerReference); nothing to keep in sync.
        return Step::Done { requeue_after: None };
    }
    let status = app.status.clone().unwrap_or_default();
    let Some(secret) = secret else {
        return Step::Rotate(if status.rotation_id.is_none() {
            RotationTrigger::Created
        } else {
            RotationTrigger::SecretMissing
        });
    };
    if secret.record == Verdict::NotOurs {
        return Step::Conflict(Box::new(conflict_status(app, now)));
    }
    let ann = annotations_of(secret.meta);
    // A record the operator did not write (unsigned, foreign hash parameters, from the future) is
    // never believed, and its hash never verified: the secret is replaced.
    if let Verdict::Drift(drift) = secret.record {
        return Step::Drift(drift);
    }
    // Neither believed nor disproven (a key the operator does not hold, no status): never
    // rotated over, never copied into the status.
    if secret.record == Verdict::Unverifiable {
        return Step::Hold(Box::new(unverifiable_status(app, now)));
    }
    let Some(rotation_id) = ann.get(annotations::ROTATION_ID) else {
        return Step::Drift(Drift::Stripped);
    };

    // Content: trusted when the status recorded this exact resourceVersion as verified. A
    // legacy record is re-signed only once its content has been verified.
    let trusted = status.rotation_id.as_deref() == Some(rotation_id.as_str())
        && status.secret_resource_version.is_some()
        && status.secret_resource_version == secret.meta.resource_version
        && secret.record == Verdict::Signed;
    if !trusted {
        match secret.check {
            None => return Step::Verify,
            Some(ContentCheck { secret_ok: false, .. }) => return Step::Drift(Drift::Mismatch),
            Some(_) => {}
        }
    }
    if secret.record == Verdict::Adopt {
        return Step::Adopt;
    }
    if matches!(secret.record, Verdict::Legacy | Verdict::Accepted) {
        return Step::SyncSecret;
    }

    // A Secret ahead of the status (its writer crashed, or another replica is between its two
    // writes): the status is completed from it before anything else, never rotated over.
    if secret_ahead_of_status(app, secret.meta) {
        return Step::WriteStatus(Box::new(status_from_secret(
            app,
            secret.meta,
            secret.kept_id.as_deref(),
            now,
        )));
    }

    // Exactly once per annotation value: compare with what the Secret (the source of truth)
    // says was acted on, so a crash before the status write cannot cause a second rotation.
    if let Some(token) = app.rotate_token()
        && ann.get(annotations::OBSERVED_ROTATE_TOKEN).map(String::as_str) != Some(token)
    {
        return Step::Rotate(RotationTrigger::Annotation);
    }

    let previous = crate::model::record::Record::from_annotations("", "", secret.meta)
        .and_then(|r| r.previous)
        .filter(|p| p.valid_at(now));
    if let Some(p) = &previous
        && app.annotation(crate::model::crd::REVOKE_PREVIOUS_ANNOTATION) == Some(p.rotation_id.as_str())
    {
        return Step::RevokePrevious;
    }

    let rotated_at = ann
        .get(annotations::ROTATED_AT)
        .and_then(|t| t.parse::<Timestamp>().ok());
    // An unusable schedule rotates nothing; the status says why (Ready=False, InvalidSchedule).
    let next_rotation = next_rotation_time(app, rotated_at).ok().flatten();
    if let Some(next) = next_rotation
        && now >= next
    {
        return Step::Rotate(RotationTrigger::Schedule);
    }
    // The status drops the previous secret at its expiry: look again then (a timer, no poll).
    let next_look = [next_rotation, previous.and_then(|p| p.expiry())]
        .into_iter()
        .flatten()
        .min();

    if !secret_metadata_in_sync(app, secret.meta) || secret.check.is_some_and(|c| !c.client_id_ok) {
        return Step::SyncSecret;
    }

    let desired = status_from_secret(app, secret.meta, secret.kept_id.as_deref(), now);
    if Some(&desired) != app.status.as_ref() {
        return Step::WriteStatus(Box::new(desired));
    }
    if secret.resign {
        return Step::Resign;
    }
    let pending = pending_restarts(app);
    if !pending.is_empty() {
        return Step::RestartConsumers(pending);
    }
    Step::Done {
        requeue_after: next_look.map(|next| now.duration_until(next)),
    }
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
            && revoke_annotation
                .is_some_and(|v| v == "true" || Some(v) == app.annotation(crate::model::crd::ROTATE_ANNOTATION)));
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

/// True when `meta` has a controller ownerReference to this app (by uid).
pub fn is_controlled_by(meta: &ObjectMeta, app: &OAuthApp) -> bool {
    crate::model::record::controlled_by(meta, app)
}

/// The Secret's ownerReferences follow `spec.secret.deletionPolicy`: with `Delete`, a
/// controller reference to the app (the Secret goes with it); with `Retain`, none to any app
/// of this name (the Secret stays, to be adopted). Others' references are left alone.
fn owner_in_sync(app: &OAuthApp, meta: &ObjectMeta) -> bool {
    let ours = |r: &&k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference| {
        r.kind == "OAuthApp" && Some(r.name.as_str()) == app.metadata.name.as_deref()
    };
    let refs: Vec<_> = meta.owner_references.iter().flatten().filter(ours).collect();
    match app.deletion_policy() {
        crate::model::crd::DeletionPolicy::Delete => refs.len() == 1 && is_controlled_by(meta, app),
        crate::model::crd::DeletionPolicy::Retain => refs.is_empty(),
    }
}

/// Puts the ownerReferences `spec.secret.deletionPolicy` asks for on `meta` ([`owner_in_sync`]).
pub fn apply_owner(app: &OAuthApp, meta: &mut ObjectMeta) {
    use kube::Resource as _;
    let name = app.metadata.name.clone();
    let mut refs: Vec<_> = meta
        .owner_references
        .take()
        .unwrap_or_default()
        .into_iter()
        .filter(|r| !(r.kind == "OAuthApp" && Some(&r.name) == name.as_ref()))
        .collect();
    if app.deletion_policy() == crate::model::crd::DeletionPolicy::Delete {
        refs.extend(app.controller_owner_ref(&()));
    }
    meta.owner_references = (!refs.is_empty()).then_some(refs);
}

fn annotations_of(meta: &ObjectMeta) -> BTreeMap<String, String> {
    meta.annotations.clone().unwrap_or_default()
}

/// The labels the Secret must carry: the user's (`spec.secret.labels`) and the operator's.
pub fn desired_secret_labels(app: &OAuthApp) -> BTreeMap<String, String> {
    let mut labels = app
        .spec
        .secret
        .as_ref()
        .map(|s| s.labels.clone())
        .unwrap_or_default();
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
    labels
}

/// The user's annotations for the Secret (`spec.secret.annotations`).
pub fn desired_secret_annotations(app: &OAuthApp) -> BTreeMap<String, String> {
    app.spec
        .secret
        .as_ref()
        .map(|s| s.annotations.clone())
        .unwrap_or_default()
}

/// The label and annotation keys the spec puts on the Secret (the value of
/// [`annotations::SPEC_METADATA_KEYS`]).
#[derive(Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
struct SpecMetadataKeys {
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    labels: BTreeSet<String>,
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    annotations: BTreeSet<String>,
}

impl SpecMetadataKeys {
    fn of(app: &OAuthApp) -> Self {
        let spec = app.spec.secret.as_ref();
        Self {
            labels: spec
                .map(|s| s.labels.keys().cloned().collect())
                .unwrap_or_default(),
            annotations: spec
                .map(|s| s.annotations.keys().cloned().collect())
                .unwrap_or_default(),
        }
    }

    /// What the Secret says was applied; an unreadable value counts as nothing.
    fn recorded(meta: &ObjectMeta) -> Self {
        meta.annotations
            .as_ref()
            .and_then(|a| a.get(annotations::SPEC_METADATA_KEYS))
            .and_then(|v| serde_json::from_str(v).ok())
            .unwrap_or_default()
    }

    /// The annotation's value; None when there is nothing to record.
    fn value(&self) -> Option<String> {
        if self.labels.is_empty() && self.annotations.is_empty() {
            return None;
        }
        serde_json::to_string(self).ok()
    }
}

/// Every desired label and annotation is on the Secret, and none that the spec set before and
/// no longer does (others' additions are left alone).
fn secret_metadata_in_sync(app: &OAuthApp, meta: &ObjectMeta) -> bool {
    let labels = meta.labels.clone().unwrap_or_default();
    let ann = annotations_of(meta);
    desired_secret_labels(app)
        .iter()
        .all(|(k, v)| labels.get(k) == Some(v))
        && desired_secret_annotations(app)
            .iter()
            .all(|(k, v)| ann.get(k) == Some(v))
        && ann.get(annotations::SPEC_METADATA_KEYS) == SpecMetadataKeys::of(app).value().as_ref()
        && owner_in_sync(app, meta)
}

/// Puts the spec's labels and annotations on the Secret's metadata and removes those the spec
/// set before and has since dropped; what others added is left alone.
pub fn apply_secret_metadata(app: &OAuthApp, meta: &mut ObjectMeta) {
    let before = SpecMetadataKeys::recorded(meta);
    let now = SpecMetadataKeys::of(app);
    let labels = meta.labels.get_or_insert_with(BTreeMap::new);
    for dropped in before.labels.difference(&now.labels) {
        if dropped != MANAGED_BY_LABEL {
            labels.remove(dropped);
        }
    }
    labels.extend(desired_secret_labels(app));
    let ann = meta.annotations.get_or_insert_with(BTreeMap::new);
    for dropped in before.annotations.difference(&now.annotations) {
        if !dropped.starts_with("oauthapp.io/") {
            ann.remove(dropped);
        }
    }
    ann.extend(desired_secret_annotations(app));
    match now.value() {
        Some(v) => ann.insert(annotations::SPEC_METADATA_KEYS.into(), v),
        None => ann.remove(annotations::SPEC_METADATA_KEYS),
    };
    apply_owner(app, meta);
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
         with the annotation {}=<its rotation id> on this app (see the README)",
        app.secret_name(),
        crate::model::crd::ACCEPT_SECRET_ANNOTATION,
    );
    not_ready_status(app, reasons::RECORD_UNVERIFIABLE, message, now)
}

/// The status of an app whose repair the brake on mass repair holds.
pub fn repair_held_status(app: &OAuthApp, now: Timestamp) -> OAuthAppStatus {
    let message = format!(
        "Secret {} needs a repair (it is gone or altered), and too many apps needed one at once: repairs are held until \
         a person releases them with a new value of the annotation {} on the record key Secret (see the README)",
        app.secret_name(),
        crate::runtime::repairs::RELEASE_ANNOTATION,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::crd::{OAuthAppSpec, RotationSpec, SecretSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    const UID: &str = "ffffffff-ffff-ffff-ffff-ffffffffffff";

    fn app() -> OAuthApp {
        let mut app = OAuthApp::new("demo", OAuthAppSpec::default());
        app.metadata.namespace = Some("team-a".into());
        app.metadata.uid = Some(UID.into());
        app.metadata.generation = Some(1);
        app
    }

    fn now() -> Timestamp {
        "2026-11-26T12:00:00Z".parse().expect("timestamp")
    }

    fn owned_secret(rotation_id: &str, rv: &str, token: Option<&str>) -> ObjectMeta {
        let mut ann = BTreeMap::from([
            (annotations::ROTATION_ID.to_string(), rotation_id.to_string()),
            (
                annotations::HASH.to_string(),
                "$argon2id$v=19$m=8,t=1,p=1$c2FsdA$aGFzaA".to_string(),
            ),
            (annotations::HINT.to_string(), "oas_AbCd...Xz12".to_string()),
            (annotations::TRIGGER.to_string(), "Created".to_string()),
            (
                annotations::ROTATED_AT.to_string(),
                "2026-11-26T11:00:00Z".to_string(),
            ),
            (annotations::ROTATION_COUNT.to_string(), "1".to_string()),
        ]);
        if let Some(t) = token {
            ann.insert(annotations::OBSERVED_ROTATE_TOKEN.into(), t.into());
        }
        ObjectMeta {
            name: Some("demo-oauth-client".into()),
            resource_version: Some(rv.into()),
            labels: Some(BTreeMap::from([(
                MANAGED_BY_LABEL.to_string(),
                MANAGED_BY.to_string(),
            )])),
            annotations: Some(ann),
            owner_references: Some(vec![OwnerReference {
                api_version: "oauthapp.io/v1alpha1".into(),
                kind: "OAuthApp".into(),
                name: "demo".into(),
                uid: UID.into(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..Default::default()
        }
    }

    /// `kubectl annotate oauthapp … oauthapp.io/rotate=<value> --overwrite`.
    fn request_rotation(app: &mut OAuthApp, value: &str) {
        app.metadata.annotations = Some(BTreeMap::from([(
            "oauthapp.io/rotate".to_string(),
            value.to_string(),
        )]));
    }

    fn view(meta: &ObjectMeta) -> SecretView<'_> {
        SecretView {
            meta,
            check: None,
            record: Verdict::Signed,
            resign: false,
            kept_id: None,
        }
    }

    fn checked(meta: &ObjectMeta, secret_ok: bool) -> SecretView<'_> {
        SecretView {
            meta,
            check: Some(ContentCheck {
                secret_ok,
                client_id_ok: true,
            }),
            record: Verdict::Signed,
            resign: false,
            kept_id: None,
        }
    }

    /// An app whose status was derived from `meta` and stored by the API server (a JSON round
    /// trip: times keep whole seconds) — the steady state.
    fn settled(mut app: OAuthApp, meta: &ObjectMeta) -> OAuthApp {
        let at = now() + SignedDuration::from_millis(1234);
        app.status = Some(status_from_secret(&app, meta, None, at));
        serde_json::from_value(serde_json::to_value(&app).expect("to json")).expect("from json")
    }

    fn with_targets(mut app: OAuthApp, names: &[&str]) -> OAuthApp {
        app.spec.rollout_restart_targets = names
            .iter()
            .map(|n| RestartTarget {
                kind: crate::model::crd::RestartKind::Deployment,
                name: n.to_string(),
            })
            .collect();
        app
    }

    fn rotated(meta: &ObjectMeta, id: &str, trigger: &str) -> ObjectMeta {
        let mut meta = meta.clone();
        let ann = meta.annotations.as_mut().expect("ann");
        ann.insert(annotations::ROTATION_ID.into(), id.into());
        ann.insert(annotations::TRIGGER.into(), trigger.into());
        meta
    }

    #[test]
    fn restart_targets_are_restarted_once_per_rotation_and_never_for_the_first_secret() {
        let first = owned_secret("r1", "10", None);
        let app = settled(with_targets(app(), &["web", "worker"]), &first);
        // The first secret: no consumer had an older one.
        assert_eq!(
            plan(&app, Some(view(&first)), now()),
            Step::Done { requeue_after: None }
        );

        let second = rotated(&first, "r2", "Annotation");
        let app = settled(app, &second);
        let Step::RestartConsumers(targets) = plan(&app, Some(view(&second)), now()) else {
            panic!("expected restarts");
        };
        assert_eq!(
            targets.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
            ["web", "worker"]
        );
        // One is restarted, one is missing: only the missing one is still due, with a False
        // condition that says why.
        let mut app = app;
        app.status = Some(restarts_status(
            &app,
            &targets[..1],
            &[(targets[1].clone(), "not found".into())],
            "TargetNotFound",
            now(),
        ));
        let status = app.status.clone().unwrap();
        let c = status
            .conditions
            .iter()
            .find(|c| c.type_ == CONSUMERS_RESTARTED)
            .expect("condition");
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "TargetNotFound")
        );
        assert!(
            c.message.contains("Deployment/worker: not found"),
            "{}",
            c.message
        );
        assert_eq!(
            plan(&app, Some(view(&second)), now()),
            Step::RestartConsumers(targets[1..].to_vec())
        );
        // Both done: nothing more for r2, whatever happens (a resync, a restart).
        app.status = Some(restarts_status(&app, &targets[1..], &[], "", now()));
        let app = settled(app, &second);
        assert_eq!(
            plan(&app, Some(view(&second)), now()),
            Step::Done { requeue_after: None }
        );
        let c = app
            .status
            .as_ref()
            .unwrap()
            .conditions
            .iter()
            .find(|c| c.type_ == CONSUMERS_RESTARTED)
            .cloned()
            .expect("condition");
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", "Restarted"));
        // A repair of the Secret is a new secret too: restarted again, for r3 only.
        let third = rotated(&first, "r3", "SecretMissing");
        let app = settled(app, &third);
        assert!(matches!(
            plan(&app, Some(view(&third)), now()),
            Step::RestartConsumers(t) if t.len() == 2
        ));
        // A target dropped from the spec is not restarted; without targets, no condition.
        let app = settled(with_targets(app, &[]), &third);
        assert_eq!(
            plan(&app, Some(view(&third)), now()),
            Step::Done { requeue_after: None }
        );
        let status = app.status.unwrap();
        assert!(status.rollout_restarts.is_none());
        assert!(status.conditions.iter().all(|c| c.type_ == "Ready"));
    }

    #[test]
    fn the_history_keeps_the_newest_rotations_up_to_the_limit() {
        let entry = |id: &str, trigger| RotationHistoryEntry {
            rotation_id: id.into(),
            hint: format!("oas_{id}"),
            trigger,
            time: Time(now()),
            username: None,
        };
        let mut app = app();
        assert_eq!(history_limit(&app), 5);
        app.spec.rotation = Some(Box::new(RotationSpec {
            history_limit: Some(3),
            ..Default::default()
        }));
        let mut rec =
            crate::model::record::Record::from_annotations("", "", &owned_secret("r1", "1", None)).unwrap();
        let mut history = Vec::new();
        for i in 2..=5 {
            history = history_after(&app, entry(&format!("r{i}"), RotationTrigger::Api), Some(&rec));
            rec.rotation_id = format!("r{i}");
            rec.history = crate::model::record::Record::history_value(&history);
        }
        assert_eq!(
            history.iter().map(|e| e.rotation_id.as_str()).collect::<Vec<_>>(),
            ["r5", "r4", "r3"]
        );
        // Without a record to go on (the Secret was deleted), the status's history is kept.
        app.status = Some(OAuthAppStatus {
            history: history.clone(),
            ..Default::default()
        });
        let after = history_after(&app, entry("r6", RotationTrigger::SecretMissing), None);
        assert_eq!(
            after.iter().map(|e| e.rotation_id.as_str()).collect::<Vec<_>>(),
            ["r6", "r5", "r4"]
        );
        // The status shows the record's history, cut to the limit.
        let mut meta = owned_secret("r5", "10", None);
        meta.annotations
            .as_mut()
            .unwrap()
            .insert(annotations::HISTORY.into(), rec.history.clone().unwrap());
        app.spec.rotation = Some(Box::new(RotationSpec {
            history_limit: Some(2),
            ..Default::default()
        }));
        let status = status_from_secret(&app, &meta, None, now());
        assert_eq!(
            status
                .history
                .iter()
                .map(|e| e.rotation_id.as_str())
                .collect::<Vec<_>>(),
            ["r5", "r4"]
        );
        let json = serde_json::to_string(&status.history).unwrap();
        assert!(!json.contains("argon2"), "{json}");
    }

    #[test]
    fn a_new_app_gets_its_first_secret() {
        assert_eq!(plan(&app(), None, now()), Step::Rotate(RotationTrigger::Created));
    }

    #[test]
    fn a_deleted_secret_is_replaced_as_missing() {
        let meta = owned_secret("r1", "10", None);
        let app = settled(app(), &meta);
        assert_eq!(
            plan(&app, None, now()),
            Step::Rotate(RotationTrigger::SecretMissing)
        );
    }

    #[test]
    fn a_foreign_secret_is_a_conflict_and_is_never_rotated() {
        let mut meta = owned_secret("r1", "10", None);
        meta.owner_references = None;
        let view = SecretView {
            record: Verdict::NotOurs,
            ..checked(&meta, true)
        };
        match plan(&app(), Some(view), now()) {
            Step::Conflict(status) => {
                let ready = &status.conditions[0];
                assert_eq!(
                    (ready.status.as_str(), ready.reason.as_str()),
                    ("False", "SecretConflict")
                );
                assert!(ready.message.contains("demo-oauth-client"), "{}", ready.message);
            }
            other => panic!("expected a conflict, got {other:?}"),
        }
    }

    #[test]
    fn steady_state_plans_nothing() {
        let meta = owned_secret("r1", "10", None);
        let app = settled(app(), &meta);
        assert_eq!(
            plan(&app, Some(view(&meta)), now()),
            Step::Done { requeue_after: None }
        );
    }

    #[test]
    fn status_lagging_the_secret_is_completed_from_it_without_a_new_secret() {
        // A crash between the Secret write (r2) and the status write: status still says r1.
        let old = owned_secret("r1", "10", None);
        let app = settled(app(), &old);
        let mut new = owned_secret("r2", "11", Some("x"));
        new.annotations
            .as_mut()
            .expect("ann")
            .insert(annotations::ROTATION_COUNT.into(), "2".into());
        let mut app = app;
        request_rotation(&mut app, "x");
        // The Secret changed since the status recorded it: verify first...
        assert_eq!(plan(&app, Some(view(&new)), now()), Step::Verify);
        // ...then the status follows the Secret, and the annotation is not acted on twice.
        match plan(&app, Some(checked(&new, true)), now()) {
            Step::WriteStatus(status) => {
                assert_eq!(status.rotation_id.as_deref(), Some("r2"));
                assert_eq!(status.rotation_count, 2);
                assert_eq!(status.observed_rotate_token.as_deref(), Some("x"));
                assert_eq!(status.secret_resource_version.as_deref(), Some("11"));
            }
            other => panic!("expected a status repair, got {other:?}"),
        }
    }

    #[test]
    fn a_secret_ahead_of_the_status_is_never_rotated_over() {
        // Another replica wrote r2 and its status write is still on the way; meanwhile a new
        // annotation value arrives and the schedule comes due. The status follows r2 first.
        let old = owned_secret("r1", "10", Some("a"));
        let mut app = app();
        app.spec.rotation = Some(Box::new(RotationSpec {
            interval: Some("2h".into()),
            ..Default::default()
        }));
        let mut app = settled(app, &old);
        request_rotation(&mut app, "b");
        let ahead = owned_secret("r2", "11", Some("a"));
        let later: Timestamp = "2026-11-26T14:00:00Z".parse().expect("ts");
        match plan(&app, Some(checked(&ahead, true)), later) {
            Step::WriteStatus(status) => assert_eq!(status.rotation_id.as_deref(), Some("r2")),
            other => panic!("expected the status to follow the Secret first, got {other:?}"),
        }
        // Once it does, the pending request is acted on.
        let app = {
            let mut caught_up = settled(app.clone(), &ahead);
            caught_up.metadata.annotations = app.metadata.annotations.clone();
            caught_up
        };
        assert_eq!(
            plan(&app, Some(view(&ahead)), later),
            Step::Rotate(RotationTrigger::Annotation)
        );
    }

    #[test]
    fn an_edited_client_secret_is_drift() {
        let meta = owned_secret("r1", "10", None);
        let app = settled(app(), &meta);
        let mut edited = meta.clone();
        edited.resource_version = Some("12".into());
        assert_eq!(plan(&app, Some(view(&edited)), now()), Step::Verify);
        assert_eq!(
            plan(&app, Some(checked(&edited, false)), now()),
            Step::Drift(Drift::Mismatch)
        );
    }

    #[test]
    fn a_record_the_operator_did_not_write_is_drift_before_anything_is_verified() {
        let meta = owned_secret("r1", "10", None);
        let app = settled(app(), &meta);
        // Even a Secret ahead of the status (the crash-repair path) is not copied into it.
        let ahead = owned_secret("r2", "11", None);
        for drift in [
            Drift::Unsigned,
            Drift::BadSignature,
            Drift::ForeignParams,
            Drift::FutureRotatedAt,
        ] {
            for secret in [&meta, &ahead] {
                let view = SecretView {
                    meta: secret,
                    check: None,
                    record: Verdict::Drift(drift),
                    resign: false,
                    kept_id: None,
                };
                assert_eq!(plan(&app, Some(view), now()), Step::Drift(drift));
            }
        }
    }

    #[test]
    fn a_legacy_record_is_verified_then_re_signed_without_a_rotation() {
        let meta = owned_secret("r1", "10", None);
        let app = settled(app(), &meta);
        let legacy = |check| SecretView {
            meta: &meta,
            check,
            record: Verdict::Legacy,
            resign: false,
            kept_id: None,
        };
        // Trusted by resourceVersion, yet verified once before it is signed.
        assert_eq!(plan(&app, Some(legacy(None)), now()), Step::Verify);
        let ok = ContentCheck {
            secret_ok: true,
            client_id_ok: true,
        };
        assert_eq!(plan(&app, Some(legacy(Some(ok))), now()), Step::SyncSecret);
        let bad = ContentCheck {
            secret_ok: false,
            ..ok
        };
        assert_eq!(
            plan(&app, Some(legacy(Some(bad))), now()),
            Step::Drift(Drift::Mismatch)
        );
    }

    #[test]
    fn a_secret_stripped_of_its_annotations_is_drift() {
        let mut meta = owned_secret("r1", "10", None);
        meta.annotations = None;
        let app = settled(app(), &owned_secret("r1", "10", None));
        assert_eq!(plan(&app, Some(view(&meta)), now()), Step::Drift(Drift::Stripped));
    }

    #[test]
    fn each_new_annotation_value_rotates_exactly_once() {
        let meta = owned_secret("r1", "10", Some("a"));
        let mut app = settled(app(), &meta);
        request_rotation(&mut app, "a");
        assert_eq!(
            plan(&app, Some(view(&meta)), now()),
            Step::Done { requeue_after: None }
        );
        request_rotation(&mut app, "b");
        assert_eq!(
            plan(&app, Some(view(&meta)), now()),
            Step::Rotate(RotationTrigger::Annotation)
        );
        // Removing the annotation requests nothing.
        app.metadata.annotations = None;
        assert_eq!(
            plan(&app, Some(view(&meta)), now()),
            Step::Done { requeue_after: None }
        );
    }

    #[test]
    fn a_new_secret_keeps_the_last_rotate_value_when_the_annotation_is_gone() {
        let meta = owned_secret("r1", "10", Some("a"));
        let mut app = settled(app(), &meta);
        // The annotation is still there: its value.
        request_rotation(&mut app, "b");
        assert_eq!(observed_rotate_token(&app, Some(&meta)).as_deref(), Some("b"));
        // Removed from the manifest: the value the replaced Secret recorded...
        app.metadata.annotations = None;
        assert_eq!(observed_rotate_token(&app, Some(&meta)).as_deref(), Some("a"));
        // ...or, with the Secret gone, the one in the status.
        assert_eq!(observed_rotate_token(&app, None).as_deref(), Some("a"));
        // And re-adding that old value later requests nothing.
        request_rotation(&mut app, "a");
        assert_eq!(
            plan(&app, Some(view(&meta)), now()),
            Step::Done { requeue_after: None }
        );
        // A new app never had one.
        assert_eq!(observed_rotate_token(&self::app(), None), None);
    }

    #[test]
    fn the_schedule_rotates_when_the_interval_has_elapsed_and_requeues_until_then() {
        let meta = owned_secret("r1", "10", None); // rotated at 11:00
        let mut app = app();
        app.spec.rotation = Some(Box::new(RotationSpec {
            interval: Some("2h".into()),
            ..Default::default()
        }));
        let app = settled(app, &meta);
        assert_eq!(
            app.status.as_ref().and_then(|s| s.next_rotation_time.clone()),
            Some(Time("2026-11-26T13:00:00Z".parse().expect("ts")))
        );
        assert_eq!(
            plan(&app, Some(view(&meta)), now()),
            Step::Done {
                requeue_after: Some(SignedDuration::from_hours(1))
            }
        );
        let later: Timestamp = "2026-11-26T13:00:00Z".parse().expect("ts");
        assert_eq!(
            plan(&app, Some(view(&meta)), later),
            Step::Rotate(RotationTrigger::Schedule)
        );
    }

    fn with_schedule(schedule: &str, time_zone: Option<&str>) -> OAuthApp {
        let mut app = app();
        app.spec.rotation = Some(Box::new(RotationSpec {
            schedule: Some(schedule.into()),
            time_zone: time_zone.map(Into::into),
            ..Default::default()
        }));
        app
    }

    #[test]
    fn a_schedule_rotates_at_its_next_time_after_the_last_rotation_and_requeues_until_then() {
        let meta = owned_secret("r1", "10", None); // rotated at 11:00Z
        // Daily at 13:30 in Berlin (12:30Z in November).
        let app = settled(with_schedule("30 13 * * *", Some("Europe/Berlin")), &meta);
        let next: Timestamp = "2026-11-26T12:30:00Z".parse().expect("ts");
        assert_eq!(
            app.status.as_ref().and_then(|s| s.next_rotation_time.clone()),
            Some(Time(next))
        );
        assert_eq!(
            plan(&app, Some(view(&meta)), now()),
            Step::Done {
                requeue_after: Some(SignedDuration::from_mins(30))
            }
        );
        assert_eq!(
            plan(&app, Some(view(&meta)), next),
            Step::Rotate(RotationTrigger::Schedule)
        );
        // Found days later (the operator was down): due, once.
        let days_later = next + SignedDuration::from_hours(72);
        assert_eq!(
            plan(&app, Some(view(&meta)), days_later),
            Step::Rotate(RotationTrigger::Schedule)
        );
    }

    #[test]
    fn repairs_for_drift_in_a_row_back_off_exponentially_and_start_over_after_a_quiet_spell() {
        let t0 = now();
        let mins = SignedDuration::from_mins;
        let with_history = |entries: &[(RotationTrigger, SignedDuration)]| {
            let mut app = app();
            app.status = Some(OAuthAppStatus {
                history: entries
                    .iter()
                    .map(|(trigger, ago)| RotationHistoryEntry {
                        rotation_id: format!("r{}", ago.as_secs()),
                        hint: "oas_AbCd...Xz12".into(),
                        trigger: *trigger,
                        time: Time(t0 - *ago),
                        username: None,
                    })
                    .collect(),
                ..Default::default()
            });
            app
        };
        use RotationTrigger::{Annotation, Created, SecretDrift};
        let secs = SignedDuration::from_secs;
        // The first two repairs for drift in a row go at once.
        assert_eq!(drift_backoff(&with_history(&[(Annotation, mins(0))]), t0), None);
        assert_eq!(drift_backoff(&with_history(&[]), t0), None);
        assert_eq!(
            drift_backoff(&with_history(&[(SecretDrift, mins(0)), (Created, mins(5))]), t0),
            None
        );
        // The third waits 30 s after the second.
        let twice = with_history(&[(SecretDrift, mins(0)), (SecretDrift, secs(1)), (Created, mins(5))]);
        assert_eq!(drift_backoff(&twice, t0), Some(t0 + DRIFT_BACKOFF_FIRST));
        assert_eq!(
            drift_backoff(&twice, t0 + DRIFT_BACKOFF_FIRST),
            None,
            "its time has come"
        );
        // Then twice the gap between the last two: 60 s, 120 s, ...
        let thrice = with_history(&[
            (SecretDrift, mins(0)),
            (SecretDrift, secs(30)),
            (SecretDrift, secs(31)),
        ]);
        assert_eq!(drift_backoff(&thrice, t0), Some(t0 + mins(1)));
        let more = with_history(&[
            (SecretDrift, mins(0)),
            (SecretDrift, mins(1)),
            (SecretDrift, secs(90)),
        ]);
        assert_eq!(drift_backoff(&more, t0), Some(t0 + mins(2)));
        // ... at most an hour.
        let long = with_history(&[
            (SecretDrift, mins(0)),
            (SecretDrift, mins(40)),
            (SecretDrift, mins(41)),
        ]);
        assert_eq!(drift_backoff(&long, t0), Some(t0 + DRIFT_BACKOFF_MAX));
        // After a quiet spell (more than two hours between the last two), it starts over.
        let quiet = with_history(&[
            (SecretDrift, mins(0)),
            (SecretDrift, mins(180)),
            (SecretDrift, mins(181)),
        ]);
        assert_eq!(drift_backoff(&quiet, t0), None);
        let once = twice.clone();
        // The status while it waits says why, until when, and keeps the rest.
        let status = repair_backoff_status(&once, t0 + DRIFT_BACKOFF_FIRST, t0);
        let ready = &status.conditions[0];
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", reasons::REPAIR_BACKOFF)
        );
        assert!(
            ready.message.contains(&(t0 + DRIFT_BACKOFF_FIRST).to_string()),
            "{}",
            ready.message
        );
        assert_eq!(status.history, once.status.as_ref().expect("status").history);
    }

    #[test]
    fn an_unusable_schedule_is_reported_and_rotates_nothing() {
        let meta = owned_secret("r1", "10", None);
        for app in [
            with_schedule("0 3 * * *", Some("Mars/Olympus_Mons")),
            with_schedule("0 0 30 2 *", None),
            // Stored before the CRD had the floor: more than once an hour.
            with_schedule("* * * * *", None),
        ] {
            let status = status_from_secret(&app, &meta, None, now());
            let ready = &status.conditions[0];
            assert_eq!(
                (ready.status.as_str(), ready.reason.as_str()),
                ("False", reasons::INVALID_SCHEDULE)
            );
            assert!(ready.message.contains("spec.rotation."), "{}", ready.message);
            // Everything verifiers need is still there.
            assert_eq!(status.client_secret_hint.as_deref(), Some("oas_AbCd...Xz12"));
            assert_eq!(status.next_rotation_time, None);
            let app = settled(app, &meta);
            let much_later = now() + SignedDuration::from_hours(24 * 400);
            // Written once; then nothing to do, ever (no retry loop), and no scheduled rotation.
            assert_eq!(
                plan(&app, Some(view(&meta)), much_later),
                Step::Done { requeue_after: None }
            );
        }
    }

    #[test]
    fn user_labels_missing_from_the_secret_are_synced_without_rotating() {
        let meta = owned_secret("r1", "10", None);
        let mut app = app();
        app.spec.secret = Some(Box::new(SecretSpec {
            labels: BTreeMap::from([("reloader".to_string(), "true".to_string())]),
            ..Default::default()
        }));
        let app = settled(app, &meta);
        assert_eq!(plan(&app, Some(view(&meta)), now()), Step::SyncSecret);
    }

    #[test]
    fn labels_and_annotations_dropped_from_the_spec_are_dropped_from_the_secret() {
        let mut meta = owned_secret("r1", "10", None);
        meta.labels
            .get_or_insert_with(BTreeMap::new)
            .insert("someone-else".into(), "x".into());
        let mut app = app();
        app.spec.secret = Some(Box::new(SecretSpec {
            labels: BTreeMap::from([("reloader".into(), "true".into()), ("team".into(), "a".into())]),
            annotations: BTreeMap::from([("note".into(), "n".into())]),
            ..Default::default()
        }));
        apply_secret_metadata(&app, &mut meta);
        let app = settled(app, &meta);
        assert_eq!(
            plan(&app, Some(view(&meta)), now()),
            Step::Done { requeue_after: None }
        );

        // `team` and the annotation leave the spec: the Secret loses them, and only them.
        let mut app = app;
        let secret_spec = app.spec.secret.as_mut().expect("secret spec");
        secret_spec.labels.remove("team");
        secret_spec.annotations.clear();
        assert_eq!(plan(&app, Some(view(&meta)), now()), Step::SyncSecret);
        apply_secret_metadata(&app, &mut meta);
        let labels = meta.labels.clone().unwrap_or_default();
        assert_eq!(labels.get("reloader").map(String::as_str), Some("true"));
        assert_eq!(labels.get("someone-else").map(String::as_str), Some("x"));
        assert_eq!(labels.get(MANAGED_BY_LABEL).map(String::as_str), Some(MANAGED_BY));
        assert!(!labels.contains_key("team"));
        assert!(!annotations_of(&meta).contains_key("note"));
        assert!(
            annotations_of(&meta).contains_key(annotations::HASH),
            "the operator's own annotations stay"
        );
        assert_eq!(
            plan(&app, Some(view(&meta)), now()),
            Step::Done { requeue_after: None }
        );

        // The spec loses its last key: the record goes too, and a plain app needs nothing.
        app.spec.secret = None;
        assert_eq!(plan(&app, Some(view(&meta)), now()), Step::SyncSecret);
        apply_secret_metadata(&app, &mut meta);
        assert!(!annotations_of(&meta).contains_key(annotations::SPEC_METADATA_KEYS));
        assert!(!meta.labels.clone().unwrap_or_default().contains_key("reloader"));
        assert_eq!(
            plan(&app, Some(view(&meta)), now()),
            Step::Done { requeue_after: None }
        );
    }

    #[test]
    fn an_unreadable_key_record_is_rewritten_and_removes_nothing() {
        let mut meta = owned_secret("r1", "10", None);
        meta.annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(annotations::SPEC_METADATA_KEYS.into(), "not json".into());
        let app = settled(app(), &meta);
        assert_eq!(plan(&app, Some(view(&meta)), now()), Step::SyncSecret);
        let labels_before = meta.labels.clone();
        apply_secret_metadata(&app, &mut meta);
        assert_eq!(meta.labels, labels_before);
        assert_eq!(
            plan(&app, Some(view(&meta)), now()),
            Step::Done { requeue_after: None }
        );
    }

    #[test]
    fn a_wrong_client_id_is_synced_without_rotating() {
        let meta = owned_secret("r1", "10", None);
        let mut app = settled(app(), &meta);
        app.status.as_mut().expect("status").secret_resource_version = None;
        let check = ContentCheck {
            secret_ok: true,
            client_id_ok: false,
        };
        assert_eq!(
            plan(
                &app,
                Some(SecretView {
                    meta: &meta,
                    check: Some(check),
                    record: Verdict::Signed,
                    resign: false,
                    kept_id: None,
                }),
                now()
            ),
            Step::SyncSecret
        );
    }

    fn with_grace(grace: &str) -> OAuthApp {
        let mut app = app();
        app.spec.rotation = Some(Box::new(RotationSpec {
            grace_period: Some(grace.into()),
            ..Default::default()
        }));
        app
    }

    #[test]
    fn only_routine_rotations_keep_the_previous_secret_for_the_grace_period() {
        let app = with_grace("20s");
        let twenty = Some(SignedDuration::from_secs(20));
        for trigger in [
            RotationTrigger::Annotation,
            RotationTrigger::Api,
            RotationTrigger::Schedule,
        ] {
            assert_eq!(grace_for(&app, trigger, false), twenty, "{trigger:?}");
            assert_eq!(grace_for(&app, trigger, true), None, "{trigger:?} revoking");
        }
        for trigger in [
            RotationTrigger::Created,
            RotationTrigger::SecretMissing,
            RotationTrigger::SecretDrift,
        ] {
            assert_eq!(grace_for(&app, trigger, false), None, "{trigger:?}");
        }
        assert_eq!(grace_for(&with_grace("0s"), RotationTrigger::Api, false), None);
        assert_eq!(grace_for(&self::app(), RotationTrigger::Api, false), None);
        let mut revoking = app.clone();
        revoking.metadata.annotations = Some(BTreeMap::from([(
            crate::model::crd::ROTATE_REVOKE_ANNOTATION.to_string(),
            "true".to_string(),
        )]));
        assert_eq!(grace_for(&revoking, RotationTrigger::Annotation, false), None);
        assert_eq!(grace_for(&revoking, RotationTrigger::Api, false), twenty);
        // Valued with the rotate token it goes with: that rotation revokes, the next does not.
        let mut once = app.clone();
        once.metadata.annotations = Some(BTreeMap::from([
            (crate::model::crd::ROTATE_ANNOTATION.to_string(), "t1".to_string()),
            (crate::model::crd::ROTATE_REVOKE_ANNOTATION.to_string(), "t1".to_string()),
        ]));
        assert_eq!(grace_for(&once, RotationTrigger::Annotation, false), None);
        once.metadata
            .annotations
            .as_mut()
            .expect("annotations")
            .insert(crate::model::crd::ROTATE_ANNOTATION.to_string(), "t2".to_string());
        assert_eq!(
            grace_for(&once, RotationTrigger::Annotation, false),
            twenty,
            "a later rotation keeps its grace"
        );
    }

    fn with_previous(meta: &mut ObjectMeta, expires_at: Timestamp) {
        let ann = meta.annotations.as_mut().expect("annotations");
        ann.insert(annotations::PREVIOUS_ROTATION_ID.into(), "r0".into());
        ann.insert(
            annotations::PREVIOUS_HASH.into(),
            "$argon2id$v=19$m=8,t=1,p=1$c2FsdA$cHJldg".into(),
        );
        ann.insert(annotations::PREVIOUS_HINT.into(), "oas_Prev...ious".into());
        ann.insert(annotations::PREVIOUS_EXPIRES_AT.into(), expires_at.to_string());
    }

    #[test]
    fn the_previous_secret_shows_until_its_expiry_and_the_status_drops_it_then() {
        let mut meta = owned_secret("r1", "10", None);
        let expiry = now() + SignedDuration::from_secs(20);
        with_previous(&mut meta, expiry);
        let app = settled(with_grace("20s"), &meta);
        let shown = app
            .status
            .as_ref()
            .and_then(|s| s.previous_secret.clone())
            .expect("previous");
        assert_eq!(shown.rotation_id, "r0");
        assert_eq!(shown.expires_at.0, expiry);
        // Steady state: nothing to write, look again at the expiry (a timer, not a poll).
        assert_eq!(
            plan(&app, Some(view(&meta)), now()),
            Step::Done {
                requeue_after: Some(SignedDuration::from_secs(20))
            }
        );
        // At the expiry: one status write, without it.
        match plan(&app, Some(view(&meta)), expiry) {
            Step::WriteStatus(status) => {
                assert_eq!(status.previous_secret, None);
                assert_eq!(status.rotation_id.as_deref(), Some("r1"));
            }
            other => panic!("expected a status write at the expiry, got {other:?}"),
        }
    }

    #[test]
    fn the_revoke_previous_annotation_retires_exactly_that_previous_secret() {
        let mut meta = owned_secret("r1", "10", None);
        with_previous(&mut meta, now() + SignedDuration::from_secs(20));
        let mut app = settled(with_grace("20s"), &meta);
        let ann = |v: &str| {
            Some(BTreeMap::from([(
                crate::model::crd::REVOKE_PREVIOUS_ANNOTATION.to_string(),
                v.to_string(),
            )]))
        };
        app.metadata.annotations = ann("r0");
        assert_eq!(plan(&app, Some(view(&meta)), now()), Step::RevokePrevious);
        // Another value, or a previous secret already expired: nothing to retire.
        app.metadata.annotations = ann("r-other");
        assert!(matches!(plan(&app, Some(view(&meta)), now()), Step::Done { .. }));
        app.metadata.annotations = ann("r0");
        let later = now() + SignedDuration::from_secs(30);
        assert!(!matches!(
            plan(&app, Some(view(&meta)), later),
            Step::RevokePrevious
        ));
    }

    #[test]
    fn a_spec_change_only_updates_observed_generation() {
        let meta = owned_secret("r1", "10", None);
        let mut app = settled(app(), &meta);
        app.metadata.generation = Some(2);
        match plan(&app, Some(view(&meta)), now()) {
            Step::WriteStatus(status) => {
                assert_eq!(status.observed_generation, Some(2));
                assert_eq!(status.conditions[0].observed_generation, Some(2));
                // Ready stayed True: its transition time is kept.
                let before = &app.status.as_ref().expect("status").conditions[0];
                assert_eq!(
                    status.conditions[0].last_transition_time,
                    before.last_transition_time
                );
            }
            other => panic!("expected a status write, got {other:?}"),
        }
    }

    #[test]
    fn status_fields_follow_the_design() {
        let meta = owned_secret("r1", "10", None);
        let app = settled(app(), &meta);
        let status = app.status.expect("status");
        assert_eq!(status.app_id.as_deref(), Some("app_7n42DGM5Tflk9n8mt7Fhc7"));
        assert_eq!(status.client_id.as_deref(), Some("app_7n42DGM5Tflk9n8mt7Fhc7"));
        assert_eq!(status.secret_name.as_deref(), Some("demo-oauth-client"));
        assert_eq!(status.client_secret_hint.as_deref(), Some("oas_AbCd...Xz12"));
        assert_eq!(status.last_rotation_trigger, Some(RotationTrigger::Created));
        assert_eq!(status.conditions[0].reason, "SecretReady");
    }

    #[test]
    fn intervals_parse_like_the_crd_pattern() {
        assert_eq!(parse_interval("720h"), Some(SignedDuration::from_hours(720)));
        assert_eq!(
            parse_interval("36h30m"),
            Some(SignedDuration::from_mins(36 * 60 + 30))
        );
        assert_eq!(parse_interval("90s"), Some(SignedDuration::from_secs(90)));
        for bad in ["", "h", "10", "10d", "1.5h", "-1h", "99999999999999999999h"] {
            assert_eq!(parse_interval(bad), None, "{bad}");
        }
    }
}
