//! Rotation windows: `spec.rotation.schedule` and `timeZone` on the real control plane, and the
//! operator-wide limit on scheduled rotations (`--max-scheduled-rotations-per-second`).

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use oauthapp_operator::model::crd::OAuthApp;
use oauthapp_operator::model::record;

use crate::support::*;

const WAIT: Duration = Duration::from_secs(60);

struct Setup {
    ns: String,
    client: Client,
    apps: Api<OAuthApp>,
    secrets: Api<Secret>,
    operator: Operator,
}

async fn setup(test: &str, args: &[&str]) -> Setup {
    let ns = namespace(test);
    let client = admin_client().await;
    let operator = Operator::start(&control_plane().kubeconfig, &ns, args, &[]);
    Setup {
        apps: Api::namespaced(client.clone(), &ns),
        secrets: Api::namespaced(client.clone(), &ns),
        client,
        ns,
        operator,
    }
}

fn manifest(name: &str, rotation: &str) -> String {
    format!(
        "apiVersion: oauthapp.io/v1alpha1\nkind: OAuthApp\nmetadata: {{name: {name}}}\nspec:\n  rotation: {rotation}\n"
    )
}

fn count(app: &OAuthApp) -> i64 {
    app.status.as_ref().map_or(0, |s| s.rotation_count)
}

fn ready_reason(app: &OAuthApp) -> Option<(String, String, String)> {
    app.ready_condition()
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

impl Setup {
    fn apply_ok(&self, manifest: &str) {
        control_plane().apply_ok(&self.ns, manifest);
    }

    /// Waits until the app's status describes its Secret (any Ready state) and `until` holds.
    async fn settled_where(
        &self,
        name: &str,
        timeout: Duration,
        until: impl Fn(&OAuthApp) -> bool,
    ) -> (OAuthApp, Secret) {
        eventually(
            &format!("OAuthApp {name} in sync with its Secret"),
            timeout,
            || async {
                let app = self.apps.get_opt(name).await.ok()??;
                let status = app.status.clone()?;
                let secret = self
                    .secrets
                    .get_opt(status.secret_name.as_deref()?)
                    .await
                    .ok()??;
                let in_sync = secret.annotations().get("oauthapp.io/rotation-id")
                    == status.rotation_id.as_ref()
                    && secret.resource_version() == status.secret_resource_version;
                (in_sync && until(&app)).then_some((app, secret))
            },
        )
        .await
    }

    async fn ready(&self, name: &str) -> (OAuthApp, Secret) {
        self.settled_where(name, WAIT, |a| {
            a.ready_condition().is_some_and(|c| c.status == "True")
        })
        .await
    }

    /// Rewrites the app's Secret record with `change`, signed with the operator's key (as only
    /// someone who may read that key could): here, to make a schedule look missed.
    async fn resign_record(&self, app: &OAuthApp, change: impl FnOnce(&mut record::Record)) {
        resign_record(&self.client, &self.secrets, app, change).await
    }
}

/// [`Setup::resign_record`] of an app whose Secrets are `secrets` (also used by keycloak.rs).
pub(crate) async fn resign_record(
    client: &Client,
    secrets: &Api<Secret>,
    app: &OAuthApp,
    change: impl FnOnce(&mut record::Record),
) {
    let keys: Api<Secret> = Api::namespaced(client.clone(), "default");
    let key = keys
        .get("oauthapp-operator-record-key")
        .await
        .expect("the record key Secret");
    let key = record::RecordKey::from_bytes(&key.data.expect("data")["hmac-key"].0).expect("key");
    let secret = secrets.get(&app.secret_name()).await.expect("Secret");
    let client_id = record::client_id(app).expect("client id");
    let mut rec = record::Record::from_annotations(&app.uid().expect("uid"), &client_id, &secret.metadata)
        .expect("a record");
    change(&mut rec);
    secrets
        .patch(
            &app.secret_name(),
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"metadata": {"annotations": rec.to_annotations(&key)}})),
        )
        .await
        .expect("patch the record");
}

/// The schedule's contract, checked on one real cron minute: a schedule at a minute of each
/// hour (the next but one, from now), `status.nextRotationTime` is that minute, the rotation
/// happens then (trigger Schedule) and not before, and the next time moves to the same minute of
/// the next hour (at most one scheduled rotation an hour). Waits at most two minutes for it.
#[tokio::test]
async fn a_schedule_rotates_at_its_minute_and_not_before_and_next_an_hour_later() {
    let s = setup("hourly", &[]).await;
    let minute = (Timestamp::now().as_second() / 60 + 2) % 60;
    s.apply_ok(&manifest(
        "hourly",
        &format!("{{schedule: \"{minute} * * * *\"}}"),
    ));
    let (app, _) = s.ready("hourly").await;
    let status = app.status.clone().expect("status");
    assert_eq!(count(&app), 1);
    let created = status.last_rotation_time.clone().expect("last rotation").0;
    let next = status.next_rotation_time.clone().expect("nextRotationTime").0;
    assert_eq!(next.as_second() % 60, 0, "on a minute boundary: {next}");
    assert_eq!(
        (next.as_second() / 60) % 60,
        minute,
        "at minute {minute} of the hour: {next}"
    );
    assert!(
        next > created && next <= created + SignedDuration::from_mins(3),
        "the first such minute after the creation ({created}): {next}"
    );

    let until_due = Duration::try_from(next.duration_since(Timestamp::now())).unwrap_or_default();
    let (app, secret) = s
        .settled_where("hourly", until_due + WAIT, |a| count(a) >= 2)
        .await;
    let status = app.status.clone().expect("status");
    assert_eq!(count(&app), 2, "one rotation for the slot");
    assert_eq!(status.last_rotation_trigger.map(|t| t.as_str()), Some("Schedule"));
    let rotated_at: Timestamp = secret.annotations()["oauthapp.io/rotated-at"]
        .parse()
        .expect("rotated-at");
    assert!(
        rotated_at >= next,
        "not before the slot: rotated at {rotated_at}, slot {next}"
    );
    let after = status.next_rotation_time.expect("nextRotationTime").0;
    assert_eq!(
        after,
        next + SignedDuration::from_hours(1),
        "the same minute an hour later"
    );
}

/// Ten apps whose yearly schedule was missed (their records say they were last rotated two
/// years ago) all become due at once under `--max-scheduled-rotations-per-second 1`: they wait
/// their turn (the queue shows in the metrics), each is caught up exactly once, and an
/// annotation rotation on another app is done while they still wait.
#[tokio::test]
async fn missed_schedules_are_caught_up_once_in_turn_and_requested_rotations_do_not_wait() {
    // Cheap hashes: the resigned records below are verified once each before they are believed,
    // and that work must not hide what is measured here.
    let s = setup(
        "limiter",
        &[
            "--max-scheduled-rotations-per-second",
            "1",
            "--hash-memory-kib",
            "64",
            "--hash-iterations",
            "1",
        ],
    )
    .await;
    let names: Vec<String> = (0..10).map(|i| format!("yearly-{i}")).collect();
    for name in &names {
        s.apply_ok(&manifest(
            name,
            "{schedule: \"0 3 1 1 *\", timeZone: Europe/Berlin}",
        ));
    }
    s.apply_ok(&manifest("asked", "{gracePeriod: 0s}"));
    let mut apps = Vec::new();
    for name in &names {
        apps.push(s.ready(name).await.0);
    }
    s.ready("asked").await;
    assert_eq!(
        s.operator.metric("oauthapp_scheduled_rotations_waiting").await,
        Some(0.0)
    );

    // The operator was "down" for two years: two slots missed per app.
    let two_years_ago = (Timestamp::now() - SignedDuration::from_hours(2 * 366 * 24)).to_string();
    for app in &apps {
        s.resign_record(app, |r| r.rotated_at = two_years_ago.clone())
            .await;
    }
    eventually("scheduled rotations waiting their turn", WAIT, || async {
        let waiting = s.operator.metric("oauthapp_scheduled_rotations_waiting").await?;
        (waiting > 0.0).then_some(())
    })
    .await;

    // A requested rotation meanwhile does not queue behind them.
    control_plane().kubectl_ok(&[
        "annotate",
        "-n",
        &s.ns,
        "oauthapp",
        "asked",
        "oauthapp.io/rotate=now",
    ]);
    let (asked, _) = s
        .settled_where("asked", WAIT, |a| {
            a.status
                .as_ref()
                .and_then(|st| st.observed_rotate_token.as_deref())
                == Some("now")
        })
        .await;
    assert_eq!(count(&asked), 2);
    let still_waiting = s
        .operator
        .metric("oauthapp_scheduled_rotations_waiting")
        .await
        .expect("metric");
    assert!(
        still_waiting > 0.0,
        "the annotation rotation was done while scheduled rotations still waited"
    );

    // Every app is caught up exactly once, by the schedule, and is next due next January.
    let now = Timestamp::now();
    for name in &names {
        let (app, _) = s.settled_where(name, WAIT, |a| count(a) >= 2).await;
        let status = app.status.clone().expect("status");
        assert_eq!(count(&app), 2, "{name}: once, not once per missed slot");
        assert_eq!(status.last_rotation_trigger.map(|t| t.as_str()), Some("Schedule"));
        let next = status.next_rotation_time.expect("next").0;
        assert!(next > now, "{name}: next after now: {next}");
        let civil = next.in_tz("Europe/Berlin").expect("tz");
        assert_eq!(
            (civil.month(), civil.day(), civil.hour(), civil.minute()),
            (1, 1, 3, 0)
        );
    }
    let waited = s
        .operator
        .metric("oauthapp_scheduled_rotations_waited_total")
        .await
        .expect("metric");
    assert!(waited >= 1.0, "some scheduled rotations waited: {waited}");
    eventually("the queue to empty", WAIT, || async {
        let waiting = s.operator.metric("oauthapp_scheduled_rotations_waiting").await?;
        (waiting == 0.0).then_some(())
    })
    .await;
    let scheduled = s
        .operator
        .metric("oauthapp_rotations_total{trigger=\"Schedule\",result=\"success\"}")
        .await
        .expect("metric");
    assert_eq!(scheduled, 10.0);
}

/// A schedule or time zone the API server accepts but the operator cannot use: the app keeps
/// its secret, says why (Ready=False, InvalidSchedule) with one Warning Event, and is Ready
/// again once the spec is fixed.
#[tokio::test]
async fn an_unusable_schedule_or_time_zone_is_reported_and_loses_nothing() {
    // Every app is looked at each second: a retry loop would show as writes.
    let s = setup("bad-schedule", &["--resync-interval", "1s"]).await;
    s.apply_ok(&manifest(
        "mars",
        "{schedule: \"0 3 * * *\", timeZone: Mars/Olympus_Mons}",
    ));
    let invalid =
        |a: &OAuthApp| ready_reason(a).is_some_and(|(st, r, _)| st == "False" && r == "InvalidSchedule");
    let (app, secret) = s.settled_where("mars", WAIT, invalid).await;
    assert_eq!(count(&app), 1, "the secret is provisioned all the same");
    assert!(
        secret
            .data
            .as_ref()
            .is_some_and(|d| d.contains_key("client_secret"))
    );
    let (_, _, message) = ready_reason(&app).expect("Ready");
    assert!(
        message.contains("spec.rotation.timeZone \"Mars/Olympus_Mons\""),
        "{message}"
    );
    assert_eq!(
        app.status.as_ref().and_then(|st| st.next_rotation_time.clone()),
        None
    );
    let warnings = eventually("a Warning Event", WAIT, || async {
        let events = events_about(&s.client, &s.ns, "mars").await;
        let w: Vec<_> = events
            .into_iter()
            .filter(|(t, r, _)| t == "Warning" && r == "InvalidSchedule")
            .collect();
        (!w.is_empty()).then_some(w)
    })
    .await;
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].2.contains("IANA"), "{warnings:?}");
    // Looked at again and again, it writes nothing more.
    let writes = s
        .operator
        .metric("oauthapp_api_writes_total")
        .await
        .expect("writes");
    let reconciles = s
        .operator
        .metric("oauthapp_reconciles_total")
        .await
        .expect("reconciles");
    eventually("three more looks at the app", WAIT, || async {
        let now = s.operator.metric("oauthapp_reconciles_total").await?;
        (now >= reconciles + 3.0).then_some(())
    })
    .await;
    assert_eq!(s.operator.metric("oauthapp_api_writes_total").await, Some(writes));
    assert_eq!(
        events_about(&s.client, &s.ns, "mars")
            .await
            .iter()
            .filter(|(_, r, _)| r == "InvalidSchedule")
            .count(),
        1
    );

    // February 30th passes the pattern and never comes.
    s.apply_ok(&manifest("mars", "{schedule: \"0 0 30 2 *\"}"));
    let (app, _) = s
        .settled_where("mars", WAIT, |a| {
            ready_reason(a).is_some_and(|(_, r, m)| r == "InvalidSchedule" && m.contains("never matches"))
        })
        .await;
    assert_eq!(count(&app), 1);

    // Fixed: Ready, with the true next time.
    s.apply_ok(&manifest(
        "mars",
        "{schedule: \"0 3 * * *\", timeZone: Europe/Berlin}",
    ));
    let (app, _) = s.ready("mars").await;
    let next = app
        .status
        .and_then(|st| st.next_rotation_time)
        .expect("next")
        .0
        .in_tz("Europe/Berlin")
        .expect("tz");
    assert_eq!((next.hour(), next.minute()), (3, 0));
}

#[tokio::test]
async fn the_api_server_refuses_conflicting_or_malformed_schedules() {
    let ns = namespace("schedule-cel");
    let cp = control_plane();
    let try_apply = |rotation: &str| cp.apply(&ns, &manifest("cel", rotation));
    for (rotation, expected) in [
        (
            "{interval: 24h, schedule: \"0 3 * * *\"}",
            "spec.rotation.interval and spec.rotation.schedule are alternatives",
        ),
        (
            "{timeZone: Europe/Berlin}",
            "spec.rotation.timeZone applies only to spec.rotation.schedule",
        ),
        (
            "{interval: 24h, timeZone: UTC}",
            "spec.rotation.timeZone applies only to spec.rotation.schedule",
        ),
        ("{schedule: \"0 3 * *\"}", "spec.rotation.schedule"),
        ("{schedule: \"0 3 * * * *\"}", "spec.rotation.schedule"),
        ("{schedule: \"every day\"}", "spec.rotation.schedule"),
        (
            "{schedule: \"* * * * *\"}",
            "spec.rotation.schedule may rotate at most once an hour",
        ),
        (
            "{schedule: \"*/30 9-17 * * MON-FRI\"}",
            "spec.rotation.schedule may rotate at most once an hour",
        ),
        (
            "{schedule: \"0 3 * * *\", timeZone: \"Europe/Berlin; rm\"}",
            "spec.rotation.timeZone",
        ),
    ] {
        let out = try_apply(rotation);
        assert!(!out.status.success(), "{rotation} must be refused");
        assert!(stderr(&out).contains(expected), "{rotation}: {}", stderr(&out));
    }
    // One of them, or neither (rotation on request only), is fine.
    for rotation in [
        "{schedule: \"0 3 * * 1\", timeZone: America/New_York}",
        "{schedule: \"30 9-17 * * MON-FRI\"}",
        "{interval: 720h, gracePeriod: 1h}",
        "{gracePeriod: 1h}",
    ] {
        let out = try_apply(rotation);
        assert!(out.status.success(), "{rotation}: {}", stderr(&out));
    }
    let explain = cp.kubectl_ok(&["explain", "oauthapp.spec.rotation.schedule"]);
    assert!(explain.contains("cron expression of 5 fields"), "{explain}");
}

/// Scheduled turns are fair between namespaces: a hundred apps of one namespace whose yearly
/// schedule was missed all come due at once under `--max-scheduled-rotations-per-second 1`;
/// an app of another namespace that comes due just after them rotates after a few of them, not
/// after the hundred (about 100 s).
#[tokio::test]
async fn a_hundred_apps_due_in_one_namespace_do_not_hold_back_an_app_of_another() {
    let crowd = namespace("schedule-crowd");
    let quiet = namespace("schedule-quiet");
    let operator = Operator::start(
        &control_plane().kubeconfig,
        &format!("{crowd},{quiet}"),
        &[
            "--max-scheduled-rotations-per-second",
            "1",
            "--hash-memory-kib",
            "64",
            "--hash-iterations",
            "1",
        ],
        &[],
    );
    let client = admin_client().await;
    let yearly = "{schedule: \"0 3 1 1 *\"}";
    let crowd_apps: Api<OAuthApp> = Api::namespaced(client.clone(), &crowd);
    let crowd_secrets: Api<Secret> = Api::namespaced(client.clone(), &crowd);
    let quiet_apps: Api<OAuthApp> = Api::namespaced(client.clone(), &quiet);
    let quiet_secrets: Api<Secret> = Api::namespaced(client.clone(), &quiet);
    let manifests: Vec<String> = (0..100)
        .map(|i| manifest(&format!("app-{i:03}"), yearly))
        .collect();
    control_plane().apply_ok(&crowd, &manifests.join("---\n"));
    control_plane().apply_ok(&quiet, &manifest("lone", yearly));
    let ready = |apps: Api<OAuthApp>, n: usize| async move {
        eventually(&format!("{n} apps Ready"), WAIT, || async {
            let list = apps.list(&Default::default()).await.ok()?.items;
            let ready = list
                .iter()
                .filter(|a| a.ready_condition().is_some_and(|c| c.status == "True"))
                .count();
            (ready == n).then_some(list)
        })
        .await
    };
    let crowd_list = ready(crowd_apps.clone(), 100).await;
    let lone = ready(quiet_apps.clone(), 1).await.remove(0);

    // The operator was "down" for two years: the crowd first, then the lone app.
    let two_years_ago = (Timestamp::now() - SignedDuration::from_hours(2 * 366 * 24)).to_string();
    for app in &crowd_list {
        resign_record(&client, &crowd_secrets, app, |r| {
            r.rotated_at = two_years_ago.clone()
        })
        .await;
    }
    eventually("the crowd waiting its turns", WAIT, || async {
        let waiting = operator.metric("oauthapp_scheduled_rotations_waiting").await?;
        (waiting >= 50.0).then_some(())
    })
    .await;
    resign_record(&client, &quiet_secrets, &lone, |r| {
        r.rotated_at = two_years_ago.clone()
    })
    .await;
    let crowd_rotated_before = eventually("the lone app's scheduled rotation", WAIT, || async {
        let lone = quiet_apps.get("lone").await.ok()?;
        if count(&lone) < 2 {
            return None;
        }
        let crowd_rotated = crowd_apps
            .list(&Default::default())
            .await
            .ok()?
            .items
            .iter()
            .filter(|a| count(a) >= 2)
            .count();
        Some(crowd_rotated)
    })
    .await;
    let status = quiet_apps
        .get("lone")
        .await
        .expect("lone")
        .status
        .expect("status");
    assert_eq!(status.last_rotation_trigger.map(|t| t.as_str()), Some("Schedule"));
    eprintln!("the lone app rotated after {crowd_rotated_before} of the crowd's 100");
    assert!(
        crowd_rotated_before <= 10,
        "the lone app waited behind {crowd_rotated_before} apps of the other namespace"
    );
}
