//! What should happen to an app now: a pure function of the app, its Secret's metadata and the
//! clock. The reconciler and the REST API only do the I/O around these decisions.
//!
//! The Secret is the source of truth for the current secret; the status is derived from the
//! Secret's annotations (`status_from_secret`), so a crash between the Secret write and the
//! status write converges by re-deriving the status — never by generating another secret.

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::model::crd::{OAuthApp, OAuthAppStatus, RestartTarget, RotationTrigger};

use crate::model::managed::{annotations_of, secret_metadata_in_sync};
use crate::model::record::{Drift, Verdict, annotations};
use crate::model::status::{
    ContentCheck, conflict_status, next_rotation_time, pending_restarts, secret_ahead_of_status,
    status_from_secret, unverifiable_status,
};

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

/// What the planner knows about the Secret.
#[derive(Debug, Clone)]
pub struct SecretView<'a> {
    pub meta: &'a ObjectMeta,
    /// The content check at the Secret's current resourceVersion, if one was made.
    pub check: Option<ContentCheck>,
    /// Whether the record in its annotations is believed ([`crate::model::record::verdict`]).
    pub record: Verdict,
    /// A believed record signed by an older key of the ring
    /// ([`crate::model::record::signed_by_newest`]).
    pub resign: bool,
    /// The app id the Secret's record proves ([`crate::model::record::proven_app_id`]): the id a
    /// restored or re-created app keeps.
    pub kept_id: Option<String>,
}

/// Decides the next step for `app` given its Secret (None: there is none).
// Long: the steps in their order of precedence (the order is the decision), read as one table.
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

#[cfg(test)]
mod tests {
    use super::*;
    // The planner's tests cover the status and Secret shapes it decides with.
    use crate::model::crd::{OAuthAppSpec, RotationSpec, SecretSpec};
    use crate::model::crd::{RotationHistoryEntry, RotationTrigger};
    use crate::model::managed::*;
    use crate::model::status::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use std::collections::BTreeMap;

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
    // Long: one scenario, step by step.
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
            (
                crate::model::crd::ROTATE_REVOKE_ANNOTATION.to_string(),
                "t1".to_string(),
            ),
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
