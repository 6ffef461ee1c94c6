//! The controller, as a user meets it: apply an OAuthApp, read the Secret, annotate to rotate,
//! break things and watch them heal. Each test runs its own operator process on its own namespace.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client, ResourceExt};
use oauthapp_operator::model::crd::{OAuthApp, OAuthAppSpec, SecretSpec};
use oauthapp_operator::model::{record, secret};

use crate::support::*;

const WAIT: Duration = Duration::from_secs(60);

/// A test namespace with its own operator (acting as admin) and typed clients.
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

impl Setup {
    /// `kubectl apply` of a manifest, as a user would.
    fn apply(&self, manifest: &str) {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("app.yaml");
        std::fs::write(&file, manifest).expect("write manifest");
        control_plane().kubectl_ok(&["apply", "-n", &self.ns, "-f", file.to_str().expect("utf-8")]);
    }

    fn kubectl(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", self.ns.as_str()];
        all.extend_from_slice(args);
        control_plane().kubectl_ok(&all)
    }

    async fn app(&self, name: &str) -> OAuthApp {
        self.apps.get(name).await.expect("get app")
    }

    async fn secret(&self, name: &str) -> Option<Secret> {
        self.secrets.get_opt(name).await.expect("get secret")
    }

    /// Waits until the app is Ready and its status describes the Secret it names; returns both.
    async fn settled(&self, name: &str) -> (OAuthApp, Secret) {
        eventually(
            &format!("OAuthApp {name} to be Ready and in sync with its Secret"),
            WAIT,
            || async {
                let app = self.apps.get_opt(name).await.ok()??;
                let status = app.status.clone()?;
                let ready = app.ready_condition().is_some_and(|c| c.status == "True");
                let secret = self
                    .secrets
                    .get_opt(status.secret_name.as_deref()?)
                    .await
                    .ok()??;
                let in_sync = secret.annotations().get("oauthapp.io/rotation-id")
                    == status.rotation_id.as_ref()
                    && secret.resource_version() == status.secret_resource_version;
                (ready && in_sync).then_some((app, secret))
            },
        )
        .await
    }

    /// Every Event about the app (events.k8s.io/v1), as (type, reason, note).
    async fn events(&self, app: &str) -> Vec<(String, String, String)> {
        events_about(&self.client, &self.ns, app).await
    }

    /// Rewrites the app's Secret record with `change`, signed with the operator's key, as only
    /// someone who may read that key could.
    async fn resign_record(&self, app: &OAuthApp, change: impl FnOnce(&mut record::Record)) {
        let keys: Api<Secret> = Api::namespaced(self.client.clone(), "default");
        let key = keys
            .get("oauthapp-operator-record-key")
            .await
            .expect("the record key Secret");
        let key = record::RecordKey::from_bytes(&key.data.expect("data")["hmac-key"].0).expect("key");
        let secret_name = app.secret_name();
        let secret = self.secret(&secret_name).await.expect("Secret");
        let client_id = record::client_id(app).expect("client id");
        let mut rec =
            record::Record::from_annotations(&app.uid().expect("uid"), &client_id, &secret.metadata)
                .expect("a record");
        change(&mut rec);
        self.secrets
            .patch(
                &secret_name,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(
                    serde_json::json!({"metadata": {"annotations": rec.to_annotations(&key)}}),
                ),
            )
            .await
            .expect("patch the record");
    }

    /// Waits until the operator has finished `n` reconciles (counted by its /metrics).
    async fn reconciled_at_least(&self, n: f64) {
        eventually(&format!("{n} reconciles"), WAIT, || async {
            let done = self
                .operator
                .metric("oauthapp_reconcile_duration_seconds_count")
                .await?;
            (done >= n).then_some(())
        })
        .await;
    }
}

fn plaintext(secret: &Secret) -> String {
    let data = secret.data.as_ref().expect("secret data");
    String::from_utf8(data.get("client_secret").expect("client_secret").0.clone()).expect("utf-8")
}

fn client_id(secret: &Secret) -> String {
    let data = secret.data.as_ref().expect("secret data");
    String::from_utf8(data.get("client_id").expect("client_id").0.clone()).expect("utf-8")
}

fn hash_of(app: &OAuthApp) -> String {
    app.status
        .as_ref()
        .and_then(|s| s.client_secret_hash.clone())
        .expect("status hash")
}

fn rotation_count(app: &OAuthApp) -> i64 {
    app.status.as_ref().map(|s| s.rotation_count).unwrap_or_default()
}

const DEMO: &str = r#"apiVersion: oauthapp.io/v1alpha1
kind: OAuthApp
metadata:
  name: demo
spec:
  displayName: Demo portal
  redirectUris: ["https://demo.example.com/callback", "http://localhost:8080/cb"]
  scopes: ["invoices:read"]
"#;

#[tokio::test]
async fn creating_an_app_provisions_a_secret_that_verifies_against_its_status() {
    let s = setup("create", &[]).await;
    s.apply(DEMO);
    let (app, secret) = s.settled("demo").await;
    let status = app.status.clone().expect("status");

    let plain = plaintext(&secret);
    secret::check_format(&plain).expect("well-formed oas_ secret");
    assert!(
        secret::verify(&plain, &hash_of(&app)).expect("valid PHC"),
        "the Secret verifies against the status hash"
    );
    assert!(
        hash_of(&app).starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "{}",
        hash_of(&app)
    );
    assert_eq!(status.client_secret_hint, secret::hint(&plain));
    let uid = uuid::Uuid::parse_str(&app.uid().expect("uid")).expect("uuid");
    assert_eq!(
        status.app_id.as_deref(),
        Some(oauthapp_operator::model::id::encode(uid).as_str())
    );
    assert_eq!(status.client_id, status.app_id, "clientId defaults to the app id");
    assert_eq!(client_id(&secret), status.app_id.clone().expect("app id"));
    assert_eq!(status.secret_name.as_deref(), Some("demo-oauth-client"));
    assert_eq!(status.rotation_count, 1);
    assert_eq!(status.observed_generation, app.metadata.generation);
    let ready = app.ready_condition().expect("Ready");
    assert_eq!(
        (ready.reason.as_str(), ready.observed_generation),
        ("SecretReady", app.metadata.generation)
    );

    // The Secret belongs to the app and carries the operator's label.
    let owner = &secret.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
        ("OAuthApp", app.uid().unwrap().as_str(), Some(true))
    );
    assert_eq!(
        secret
            .labels()
            .get("app.kubernetes.io/managed-by")
            .map(String::as_str),
        Some("oauthapp-operator")
    );

    // kubectl shows the printer columns.
    let table = s.kubectl(&["get", "oapp", "demo"]);
    for column in ["APP ID", "CLIENT ID", "HINT", "LAST ROTATION", "READY", "AGE"] {
        assert!(table.contains(column), "{table}");
    }
    assert!(
        table.contains(status.client_secret_hint.as_deref().expect("hint")),
        "{table}"
    );
    eventually("a SecretCreated event", WAIT, || async {
        s.events("demo")
            .await
            .iter()
            .any(|(t, r, _)| t == "Normal" && r == "SecretCreated")
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn each_new_annotation_value_rotates_exactly_once() {
    let s = setup("annotate", &[]).await;
    s.apply(DEMO);
    let (before, old_secret) = s.settled("demo").await;
    let old_plain = plaintext(&old_secret);

    s.kubectl(&[
        "annotate",
        "oauthapp",
        "demo",
        "oauthapp.io/rotate=2026-11-26",
        "--overwrite",
    ]);
    let (after, new_secret) = eventually("the rotation", WAIT, || async {
        let (app, secret) = s.settled("demo").await;
        (rotation_count(&app) == 2).then_some((app, secret))
    })
    .await;
    let status = after.status.clone().expect("status");
    assert_eq!(status.observed_rotate_token.as_deref(), Some("2026-11-26"));
    assert_eq!(
        status.last_rotation_trigger.map(|t| t.as_str()),
        Some("Annotation")
    );
    let new_plain = plaintext(&new_secret);
    assert_ne!(new_plain, old_plain);
    assert!(secret::verify(&new_plain, &hash_of(&after)).expect("PHC"));
    assert!(
        !secret::verify(&old_plain, &hash_of(&after)).expect("PHC"),
        "the old secret is invalid at once"
    );
    assert_ne!(hash_of(&before), hash_of(&after));

    // The same value again (a GitOps re-apply), and an unrelated label: nothing rotates.
    let reconciles = s
        .operator
        .metric("oauthapp_reconcile_duration_seconds_count")
        .await
        .unwrap_or(0.0);
    s.kubectl(&[
        "annotate",
        "oauthapp",
        "demo",
        "oauthapp.io/rotate=2026-11-26",
        "--overwrite",
    ]);
    s.kubectl(&["label", "oauthapp", "demo", "team=billing"]);
    let labelled = s.app("demo").await;
    s.reconciled_at_least(reconciles + 1.0).await;
    // The label change itself was reconciled (the app's resourceVersion moved past it).
    let (app, secret) = s.settled("demo").await;
    assert_eq!(rotation_count(&app), 2);
    assert_eq!(plaintext(&secret), new_plain);
    assert_eq!(
        app.resource_version(),
        labelled.resource_version(),
        "no status write for an unrelated label"
    );
    let rotated = eventually("the SecretRotated event", WAIT, || async {
        let n = s
            .events("demo")
            .await
            .iter()
            .filter(|(_, r, _)| r == "SecretRotated")
            .count();
        (n > 0).then_some(n)
    })
    .await;
    assert_eq!(rotated, 1);
}

#[tokio::test]
async fn a_restart_and_a_full_resync_write_nothing() {
    let mut s = setup("restart", &[]).await;
    s.apply(DEMO);
    let (app, secret) = s.settled("demo").await;
    s.operator
        .terminate(Duration::from_secs(30))
        .expect("operator exits on SIGTERM");

    // A new operator that resyncs every second: it looks at the app many times.
    s.operator = Operator::start(
        &control_plane().kubeconfig,
        &s.ns,
        &["--resync-interval", "1s"],
        &[],
    );
    s.reconciled_at_least(4.0).await;
    assert_eq!(
        s.operator.metric("oauthapp_api_writes_total").await,
        Some(0.0),
        "no writes in steady state"
    );
    let (app2, secret2) = (
        s.app("demo").await,
        s.secret("demo-oauth-client").await.expect("secret"),
    );
    assert_eq!(app2.resource_version(), app.resource_version());
    assert_eq!(secret2.resource_version(), secret.resource_version());
}

#[tokio::test]
async fn a_kill_between_the_secret_write_and_the_status_write_converges_without_a_second_rotation() {
    let mut s = setup("crash", &[]).await;
    s.apply(DEMO);
    let (before, _) = s.settled("demo").await;
    s.operator
        .terminate(Duration::from_secs(30))
        .expect("operator exits on SIGTERM");

    // This operator stops dead after writing the Secret, before the status: then it is killed.
    s.operator = Operator::start(
        &control_plane().kubeconfig,
        &s.ns,
        &[],
        &[("OAUTHAPP_FAILPOINT", "pause-after-secret-write")],
    );
    s.kubectl(&[
        "annotate",
        "oauthapp",
        "demo",
        "oauthapp.io/rotate=crash",
        "--overwrite",
    ]);
    let written = eventually("the Secret to be rotated", WAIT, || async {
        let secret = s.secret("demo-oauth-client").await?;
        let id = secret.annotations().get("oauthapp.io/rotation-id")?.clone();
        (Some(&id) != before.status.as_ref().and_then(|st| st.rotation_id.as_ref())).then_some(secret)
    })
    .await;
    let status_then = s.app("demo").await.status.expect("status");
    assert_eq!(
        status_then.rotation_id,
        before.status.as_ref().and_then(|st| st.rotation_id.clone()),
        "status lags"
    );
    s.operator.kill9();

    s.operator = Operator::start(&control_plane().kubeconfig, &s.ns, &[], &[]);
    let (app, secret) = s.settled("demo").await;
    let status = app.status.clone().expect("status");
    assert_eq!(
        secret.annotations().get("oauthapp.io/rotation-id"),
        written.annotations().get("oauthapp.io/rotation-id")
    );
    assert_eq!(plaintext(&secret), plaintext(&written), "no second rotation");
    assert_eq!(status.rotation_count, 2);
    assert_eq!(status.observed_rotate_token.as_deref(), Some("crash"));
    // The history is part of the Secret's record: the repaired status has it whole.
    assert_eq!(
        status
            .history
            .iter()
            .map(|e| (e.rotation_id.clone(), e.trigger.as_str()))
            .collect::<Vec<_>>(),
        [
            (status.rotation_id.clone().expect("id"), "Annotation"),
            (
                before
                    .status
                    .as_ref()
                    .and_then(|st| st.rotation_id.clone())
                    .expect("first id"),
                "Created"
            ),
        ]
    );
    assert!(secret::verify(&plaintext(&secret), &hash_of(&app)).expect("PHC"));
    eventually("a StatusRepaired event", WAIT, || async {
        s.events("demo")
            .await
            .iter()
            .any(|(_, r, _)| r == "StatusRepaired")
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_deleted_or_edited_secret_is_replaced_with_a_warning() {
    let s = setup("repair", &[]).await;
    s.apply(DEMO);
    let (_, first) = s.settled("demo").await;

    s.kubectl(&["delete", "secret", "demo-oauth-client"]);
    let (app, second) = eventually("a new Secret", WAIT, || async {
        let (app, secret) = s.settled("demo").await;
        (secret.uid() != first.uid()).then_some((app, secret))
    })
    .await;
    assert_eq!(
        app.status
            .as_ref()
            .and_then(|st| st.last_rotation_trigger)
            .map(|t| t.as_str()),
        Some("SecretMissing")
    );
    assert_ne!(plaintext(&second), plaintext(&first));

    s.kubectl(&[
        "patch",
        "secret",
        "demo-oauth-client",
        "--type=merge",
        "-p",
        r#"{"stringData":{"client_secret":"hand-edited"}}"#,
    ]);
    let (app, third) = eventually("the edited secret to be replaced", WAIT, || async {
        let (app, secret) = s.settled("demo").await;
        (rotation_count(&app) == 3).then_some((app, secret))
    })
    .await;
    assert_eq!(
        app.status
            .as_ref()
            .and_then(|st| st.last_rotation_trigger)
            .map(|t| t.as_str()),
        Some("SecretDrift")
    );
    assert_ne!(plaintext(&third), "hand-edited");
    assert!(secret::verify(&plaintext(&third), &hash_of(&app)).expect("PHC"));
    // The event follows the status write.
    let warnings = eventually("two SecretRepaired warnings", WAIT, || async {
        let warnings: Vec<_> = s
            .events("demo")
            .await
            .into_iter()
            .filter(|(t, r, _)| t == "Warning" && r == "SecretRepaired")
            .collect();
        (warnings.len() >= 2).then_some(warnings)
    })
    .await;
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(
        warnings.iter().any(|(_, _, note)| note.contains("was deleted")),
        "{warnings:?}"
    );
    assert!(
        warnings
            .iter()
            .any(|(_, _, note)| note.contains("no longer matched")),
        "{warnings:?}"
    );
}

#[tokio::test]
async fn a_foreign_secret_in_the_way_is_a_conflict_and_is_left_untouched() {
    let s = setup("conflict", &[]).await;
    s.kubectl(&[
        "create",
        "secret",
        "generic",
        "demo-oauth-client",
        "--from-literal=client_secret=not-yours",
    ]);
    let foreign = s.secret("demo-oauth-client").await.expect("foreign secret");
    s.apply(DEMO);
    let app = eventually("SecretConflict", WAIT, || async {
        let app = s.apps.get_opt("demo").await.ok()??;
        let ready = app.ready_condition()?;
        (ready.status == "False" && ready.reason == "SecretConflict").then_some(app)
    })
    .await;
    let message = &app.ready_condition().expect("Ready").message;
    assert!(
        message.contains("demo-oauth-client") && message.contains("not owned"),
        "{message}"
    );
    eventually("a SecretConflict warning", WAIT, || async {
        s.events("demo")
            .await
            .iter()
            .any(|(t, r, _)| t == "Warning" && r == "SecretConflict")
            .then_some(())
    })
    .await;
    let after = s.secret("demo-oauth-client").await.expect("still there");
    assert_eq!(
        after.resource_version(),
        foreign.resource_version(),
        "the foreign Secret is untouched"
    );
    assert_eq!(plaintext(&after), "not-yours");

    // Once the foreign Secret is gone, the app gets its own.
    s.kubectl(&["delete", "secret", "demo-oauth-client"]);
    let (app, _) = s.settled("demo").await;
    assert_eq!(
        app.status
            .as_ref()
            .and_then(|st| st.last_rotation_trigger)
            .map(|t| t.as_str()),
        Some("Created")
    );
}

#[tokio::test]
async fn deleting_the_app_garbage_collects_its_secret() {
    let s = setup("gc-app", &[]).await;
    s.apply(DEMO);
    s.settled("demo").await;
    s.kubectl(&["delete", "oauthapp", "demo"]);
    eventually("the Secret to be garbage-collected", WAIT, || async {
        s.secrets
            .get_opt("demo-oauth-client")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn the_secrets_labels_and_annotations_follow_the_spec_without_a_rotation() {
    let s = setup("secret-meta", &[]).await;
    let with = |labels: &str, annotations: &str| {
        format!(
            "apiVersion: oauthapp.io/v1alpha1\nkind: OAuthApp\nmetadata: {{name: demo}}\nspec:\n  secret: {{labels: {{{labels}}}, annotations: {{{annotations}}}}}\n"
        )
    };
    s.apply(&with("team: billing, reloader: \"true\"", "owner: alice"));
    let (_, first) = s.settled("demo").await;
    assert_eq!(first.labels().get("team").map(String::as_str), Some("billing"));
    assert_eq!(
        first.annotations().get("owner").map(String::as_str),
        Some("alice")
    );
    // Someone else labels the Secret too; that is theirs to keep.
    s.kubectl(&["label", "secret", "demo-oauth-client", "backup=daily"]);

    // `team` and `owner` leave the spec (a GitOps edit): they leave the Secret, nothing else does.
    s.apply(&with("reloader: \"true\"", ""));
    let secret = eventually("team and owner to leave the Secret", WAIT, || async {
        let secret = s.secret("demo-oauth-client").await?;
        (!secret.labels().contains_key("team") && !secret.annotations().contains_key("owner"))
            .then_some(secret)
    })
    .await;
    assert_eq!(secret.labels().get("reloader").map(String::as_str), Some("true"));
    assert_eq!(secret.labels().get("backup").map(String::as_str), Some("daily"));
    let (app, secret) = s.settled("demo").await;
    assert_eq!(plaintext(&secret), plaintext(&first), "no rotation");
    assert_eq!(rotation_count(&app), 1);
}

#[tokio::test]
async fn a_secret_the_api_server_refuses_is_ready_false_with_its_reason_until_the_spec_is_fixed() {
    let s = setup("secret-rejected", &[]).await;
    // Annotations over 256 KiB in all would be refused on a Secret: the CRD refuses them first
    // (at most 16 KiB a value, 64 KiB in all), so the app never costs the operator their size.
    // (Made through the API: `kubectl apply` would copy them into its own last-applied annotation.)
    let spec = |notes: String| OAuthAppSpec {
        secret: Some(Box::new(SecretSpec {
            annotations: [("notes".to_string(), notes)].into(),
            ..Default::default()
        })),
        ..Default::default()
    };
    let refused = s
        .apps
        .create(
            &Default::default(),
            &OAuthApp::new("huge", spec("x".repeat(300 * 1024))),
        )
        .await
        .expect_err("the API server refuses the app");
    assert!(refused.to_string().contains("16384"), "{refused}");
    let many: std::collections::BTreeMap<String, String> = (0..5)
        .map(|i| (format!("notes-{i}"), "x".repeat(15 * 1024)))
        .collect();
    let too_much = OAuthAppSpec {
        secret: Some(Box::new(SecretSpec {
            annotations: many,
            ..Default::default()
        })),
        ..Default::default()
    };
    let refused = s
        .apps
        .create(&Default::default(), &OAuthApp::new("huge", too_much))
        .await
        .expect_err("the API server refuses the app");
    assert!(refused.to_string().contains("at most 64 KiB in all"), "{refused}");

    // A Secret the API server refuses for another reason (here an admission policy of this
    // namespace): the app says why, and nothing is lost.
    let policy = format!("refuse-secrets-{}", s.ns);
    control_plane().apply_ok(
        "default",
        &format!(
            "apiVersion: admissionregistration.k8s.io/v1\nkind: ValidatingAdmissionPolicy\nmetadata: {{name: {policy}}}\nspec:\n  failurePolicy: Fail\n  matchConstraints:\n    resourceRules:\n    - {{apiGroups: [\"\"], apiVersions: [v1], operations: [CREATE, UPDATE], resources: [secrets]}}\n  validations:\n  - expression: \"!has(object.metadata.annotations) || !('notes' in object.metadata.annotations) || object.metadata.annotations['notes'] != 'refused'\"\n    message: this namespace refuses Secrets noted refused\n---\napiVersion: admissionregistration.k8s.io/v1\nkind: ValidatingAdmissionPolicyBinding\nmetadata: {{name: {policy}}}\nspec:\n  policyName: {policy}\n  validationActions: [Deny]\n  matchResources:\n    namespaceSelector:\n      matchLabels: {{kubernetes.io/metadata.name: {ns}}}\n",
            ns = s.ns
        ),
    );
    let probe = eventually("the admission policy to refuse Secrets", WAIT, || async {
        let secrets: Api<Secret> = Api::namespaced(s.client.clone(), &s.ns);
        let mut probe = Secret::default();
        probe.metadata.name = Some("probe".into());
        probe.metadata.annotations = Some([("notes".to_string(), "refused".to_string())].into());
        let dry = kube::api::PostParams {
            dry_run: true,
            ..Default::default()
        };
        secrets.create(&dry, &probe).await.err()
    })
    .await;
    assert!(
        probe.to_string().contains("refuses Secrets noted refused"),
        "{probe}"
    );
    s.apps
        .create(&Default::default(), &OAuthApp::new("big", spec("refused".into())))
        .await
        .expect("the OAuthApp itself is accepted");
    let ready = eventually("Ready=False, SecretRejected", WAIT, || async {
        let app = s.apps.get_opt("big").await.ok()??;
        let ready = app.ready_condition()?.clone();
        (ready.reason == "SecretRejected").then_some(ready)
    })
    .await;
    assert_eq!(ready.status, "False");
    assert!(
        ready.message.contains("refuses Secrets noted refused"),
        "{}",
        ready.message
    );
    assert!(s.secret("big-oauth-client").await.is_none());
    eventually("a SecretRejected Warning", WAIT, || async {
        s.events("big")
            .await
            .iter()
            .any(|(t, r, _)| t == "Warning" && r == "SecretRejected")
            .then_some(())
    })
    .await;

    // The spec is fixed: the Secret is written and the app is Ready.
    s.kubectl(&[
        "patch",
        "oauthapp",
        "big",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"secret":{"annotations":{"notes":"short"}}}}"#,
    ]);
    let (app, secret) = s.settled("big").await;
    assert_eq!(
        secret.annotations().get("notes").map(String::as_str),
        Some("short")
    );
    assert_eq!(rotation_count(&app), 1);
    control_plane().kubectl_ok(&["delete", "validatingadmissionpolicybinding", &policy]);
    control_plane().kubectl_ok(&["delete", "validatingadmissionpolicy", &policy]);
}

#[tokio::test]
async fn the_schedule_rotates_once_the_interval_has_elapsed() {
    let s = setup("schedule", &[]).await;
    s.apply(&DEMO.replace("  scopes:", "  rotation: {interval: 2h}\n  scopes:"));
    let (app, _) = s.settled("demo").await;
    let status = app.status.clone().expect("status");
    let last = status.last_rotation_time.clone().expect("last rotation").0;
    assert_eq!(
        status.next_rotation_time.expect("next").0,
        last + jiff::SignedDuration::from_hours(2)
    );

    // Pretend the secret is three hours old: the schedule is due. The record is signed, so this
    // takes the operator's key (an admin may read it; the default key Secret is in `default`).
    let three_hours_ago = (jiff::Timestamp::now() - jiff::SignedDuration::from_hours(3)).to_string();
    s.resign_record(&app, |record| record.rotated_at = three_hours_ago)
        .await;
    let (app, _) = eventually("the scheduled rotation", WAIT, || async {
        let (app, secret) = s.settled("demo").await;
        (rotation_count(&app) == 2).then_some((app, secret))
    })
    .await;
    let status = app.status.expect("status");
    assert_eq!(status.last_rotation_trigger.map(|t| t.as_str()), Some("Schedule"));
    let next = status.next_rotation_time.expect("next").0;
    assert!(
        next > jiff::Timestamp::now() + jiff::SignedDuration::from_mins(110),
        "next rotation in ~2h: {next}"
    );
}

#[tokio::test]
async fn invalid_specs_are_rejected_by_the_api_server_with_a_clear_message() {
    let ns = namespace("invalid");
    let cp = control_plane();
    let dir = tempfile::tempdir().expect("tempdir");
    let try_apply = |manifest: &str| {
        let file = dir.path().join("bad.yaml");
        std::fs::write(&file, manifest).expect("write");
        cp.kubectl(&["apply", "-n", &ns, "-f", file.to_str().expect("utf-8")])
    };
    let cases = [
        ("redirectUris: [\"http://example.com/cb\"]", "https URL"),
        ("redirectUris: [\"not a url\"]", "https URL"),
        ("scopes: [\"has space\"]", "spec.scopes[0]"),
        ("rotation: {interval: 30m}", "at least 1h"),
        ("rotation: {interval: soon}", "spec.rotation.interval"),
        ("secret: {labels: {oauthapp.io/x: \"y\"}}", "reserved"),
        ("secret: {labels: {team: \"Team A\"}}", "spec.secret.labels.team"),
        (
            "secret: {labels: {\"bad key!\": x}}",
            "label keys must be qualified names",
        ),
        (
            "secret: {annotations: {\"-bad\": x}}",
            "annotation keys must be qualified names",
        ),
        ("clientId: \"-bad\"", "spec.clientId"),
    ];
    for (spec, expected) in cases {
        let out = try_apply(&format!(
            "apiVersion: oauthapp.io/v1alpha1\nkind: OAuthApp\nmetadata: {{name: bad}}\nspec:\n  {spec}\n"
        ));
        assert!(!out.status.success(), "{spec} must be rejected");
        assert!(stderr(&out).contains(expected), "{spec}: {}", stderr(&out));
    }
    // A name too long for the default Secret name, and the same name with a Secret name set.
    let long = "a".repeat(241);
    let out = try_apply(&format!(
        "apiVersion: oauthapp.io/v1alpha1\nkind: OAuthApp\nmetadata: {{name: {long}}}\nspec: {{}}\n"
    ));
    assert!(!out.status.success(), "a 241-character name must be rejected");
    assert!(
        stderr(&out).contains("at most 240 characters"),
        "{}",
        stderr(&out)
    );
    let out = try_apply(&format!(
        "apiVersion: oauthapp.io/v1alpha1\nkind: OAuthApp\nmetadata: {{name: {long}}}\nspec: {{secret: {{name: long-creds}}}}\n"
    ));
    assert!(out.status.success(), "{}", stderr(&out));
    // Qualified keys with a prefix are fine.
    let out = try_apply(
        "apiVersion: oauthapp.io/v1alpha1\nkind: OAuthApp\nmetadata: {name: prefixed}\nspec:\n  secret: {labels: {reloader.stakater.com/match: \"true\"}, annotations: {example.com/owner: \"Team A\"}}\n",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    // Immutable once set: the client id and the Secret name.
    let ok = try_apply(
        "apiVersion: oauthapp.io/v1alpha1\nkind: OAuthApp\nmetadata: {name: fixed}\nspec:\n  clientId: billing\n  secret: {name: billing-creds}\n",
    );
    assert!(ok.status.success(), "{}", stderr(&ok));
    let changed = try_apply(
        "apiVersion: oauthapp.io/v1alpha1\nkind: OAuthApp\nmetadata: {name: fixed}\nspec:\n  clientId: other\n  secret: {name: billing-creds}\n",
    );
    assert!(
        stderr(&changed).contains("spec.clientId is immutable"),
        "{}",
        stderr(&changed)
    );
    let renamed = try_apply(
        "apiVersion: oauthapp.io/v1alpha1\nkind: OAuthApp\nmetadata: {name: fixed}\nspec:\n  clientId: billing\n  secret: {name: other}\n",
    );
    assert!(
        stderr(&renamed).contains("spec.secret.name is immutable"),
        "{}",
        stderr(&renamed)
    );
    // kubectl explain reads the doc comments.
    let explain = cp.kubectl_ok(&["explain", "oauthapp.spec.rotation.interval"]);
    assert!(explain.contains("at least `1h`"), "{explain}");
}

#[tokio::test]
async fn no_plaintext_secret_reaches_status_events_or_logs() {
    let s = setup("leak", &[]).await;
    s.apply(DEMO);
    let mut seen = BTreeSet::new();
    let (_, secret) = s.settled("demo").await;
    seen.insert(plaintext(&secret));
    s.kubectl(&[
        "annotate",
        "oauthapp",
        "demo",
        "oauthapp.io/rotate=leak",
        "--overwrite",
    ]);
    let (_, secret) = eventually("the rotation", WAIT, || async {
        let (app, secret) = s.settled("demo").await;
        (rotation_count(&app) == 2).then_some((app, secret))
    })
    .await;
    seen.insert(plaintext(&secret));
    s.kubectl(&["delete", "secret", "demo-oauth-client"]);
    let (_, secret) = eventually("the repair", WAIT, || async {
        let (app, secret) = s.settled("demo").await;
        (rotation_count(&app) == 3).then_some((app, secret))
    })
    .await;
    seen.insert(plaintext(&secret));
    assert_eq!(seen.len(), 3);

    let app_yaml = s.kubectl(&["get", "oauthapp", "demo", "-o", "yaml"]);
    let events = s.kubectl(&["get", "events", "-o", "yaml"]);
    let log = s.operator.log_text();
    assert!(log.contains("rotated client secret"), "the log is being captured");
    for plain in &seen {
        for (what, text) in [("status", &app_yaml), ("events", &events), ("operator log", &log)] {
            assert!(
                !text.contains(plain.as_str()),
                "a plaintext secret leaked into the {what}"
            );
            assert!(
                !text.contains(&plain[4..20]),
                "part of a plaintext secret leaked into the {what}"
            );
        }
    }
}

/// The example in `examples/` is valid and becomes Ready.
#[tokio::test]
async fn the_example_app_becomes_ready() {
    let s = setup("example", &[]).await;
    let example =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/oauthapp.yaml"))
            .expect("examples/oauthapp.yaml");
    s.apply(&example);
    let name = s.kubectl(&["get", "oauthapp", "-o", "jsonpath={.items[0].metadata.name}"]);
    s.settled(&name).await;
}
