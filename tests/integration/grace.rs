//! Zero-downtime rotation, as a platform team uses it: with `spec.rotation.gracePeriod`, a
//! routine rotation keeps the previous secret valid (in `status.previousSecret`) until its
//! expiry; repairs and revocations leave exactly one valid secret.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};
use oauthapp_operator::model::crd::{OAuthApp, OAuthAppStatus};
use oauthapp_operator::model::secret;

use crate::support::*;

const WAIT: Duration = Duration::from_secs(90);

struct Setup {
    ns: String,
    client: Client,
    apps: Api<OAuthApp>,
    secrets: Api<Secret>,
    operator: Operator,
}

async fn setup(test: &str, grace: &str, env: &[(&str, &str)]) -> Setup {
    let ns = namespace(test);
    let client = admin_client().await;
    let operator = Operator::start(&control_plane().kubeconfig, &ns, &[], env);
    let s = Setup {
        apps: Api::namespaced(client.clone(), &ns),
        secrets: Api::namespaced(client.clone(), &ns),
        client,
        ns,
        operator,
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("app.yaml");
    std::fs::write(
        &file,
        format!(
            "apiVersion: oauthapp.io/v1alpha1\nkind: OAuthApp\nmetadata:\n  name: demo\nspec:\n  redirectUris: [\"https://demo.example.com/cb\"]\n  rotation:\n    gracePeriod: {grace}\n"
        ),
    )
    .expect("write manifest");
    s.kubectl(&["apply", "-f", file.to_str().expect("utf-8")]);
    s
}

impl Setup {
    fn kubectl(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", self.ns.as_str()];
        all.extend_from_slice(args);
        control_plane().kubectl_ok(&all)
    }

    /// Waits until the app is Ready with `count` secrets so far and its status describes its
    /// Secret; returns the status and the Secret's plaintext.
    async fn settled(&self, count: i64) -> (OAuthAppStatus, String) {
        eventually(&format!("rotation {count} to settle"), WAIT, || async {
            let app = self.apps.get_opt("demo").await.ok()??;
            let status = app.status.clone()?;
            let secret = self.secrets.get_opt("demo-oauth-client").await.ok()??;
            let ready = app.ready_condition().is_some_and(|c| c.status == "True");
            let in_sync = secret.annotations().get("oauthapp.io/rotation-id") == status.rotation_id.as_ref()
                && secret.resource_version() == status.secret_resource_version;
            (ready && in_sync && status.rotation_count == count).then(|| (status, plaintext(&secret)))
        })
        .await
    }

    fn rotate(&self, value: &str, extra: &[&str]) {
        let token = format!("oauthapp.io/rotate={value}");
        let mut args = vec!["annotate", "oauthapp", "demo", token.as_str()];
        args.extend_from_slice(extra);
        args.push("--overwrite");
        self.kubectl(&args);
    }

    async fn reasons(&self) -> Vec<String> {
        events_about(&self.client, &self.ns, "demo")
            .await
            .into_iter()
            .map(|(_, reason, _)| reason)
            .collect()
    }

    async fn event(&self, reason: &str) {
        eventually(&format!("a {reason} Event"), WAIT, || async {
            self.reasons().await.iter().any(|r| r == reason).then_some(())
        })
        .await;
    }
}

fn plaintext(secret: &Secret) -> String {
    let data = secret.data.as_ref().expect("secret data");
    String::from_utf8(data.get("client_secret").expect("client_secret").0.clone()).expect("utf-8")
}

/// The secrets (of `candidates`) that verify against the status: the current hash, and the
/// previous one while the status shows it.
fn valid(status: &OAuthAppStatus, candidates: &[&str]) -> Vec<String> {
    let mut hashes = vec![status.client_secret_hash.clone().expect("hash")];
    hashes.extend(
        status
            .previous_secret
            .as_ref()
            .map(|p| p.client_secret_hash.clone()),
    );
    candidates
        .iter()
        .filter(|c| hashes.iter().any(|h| secret::verify(c, h).expect("PHC")))
        .map(|c| c.to_string())
        .collect()
}

#[tokio::test]
async fn a_routine_rotation_keeps_the_previous_secret_valid_until_its_expiry() {
    let s = setup("grace-expiry", "12s", &[]).await;
    let (first, old) = s.settled(1).await;
    assert_eq!(first.previous_secret, None);

    s.rotate("routine-1", &[]);
    let (status, new) = s.settled(2).await;
    let previous = status
        .previous_secret
        .clone()
        .expect("the previous secret is kept");
    assert_eq!(Some(previous.rotation_id.clone()), first.rotation_id);
    assert_eq!(
        Some(previous.client_secret_hash.clone()),
        first.client_secret_hash
    );
    assert_eq!(
        Some(previous.client_secret_hint.clone()),
        first.client_secret_hint
    );
    let rotated = status.last_rotation_time.clone().expect("rotated").0;
    assert_eq!(
        previous.expires_at.0,
        rotated + jiff::SignedDuration::from_secs(12)
    );
    // Clients get the new secret; verifiers accept both, as an independent argon2
    // implementation (argon2-cffi) confirms against the status.
    assert_ne!(new, old);
    assert_eq!(valid(&status, &[&old, &new]), [old.clone(), new.clone()]);
    let current_hash = status.client_secret_hash.clone().expect("hash");
    assert!(independently_verifies(&current_hash, &new));
    assert!(!independently_verifies(&current_hash, &old));
    assert!(independently_verifies(&previous.client_secret_hash, &old));
    assert!(!independently_verifies(&previous.client_secret_hash, &new));

    // At the expiry the status drops it (one write, from a timer), and says so.
    let expired = eventually("the previous secret to expire", WAIT, || async {
        let status = s.apps.get("demo").await.ok()?.status?;
        status.previous_secret.is_none().then_some(status)
    })
    .await;
    assert!(
        jiff::Timestamp::now() >= previous.expires_at.0,
        "dropped before its expiry {}",
        previous.expires_at.0
    );
    assert_eq!(expired.rotation_id, status.rotation_id, "no rotation");
    assert_eq!(valid(&expired, &[&old, &new]), vec![new.clone()]);
    s.event("PreviousSecretExpired").await;
    drop(s.operator);
}

#[tokio::test]
async fn at_most_two_secrets_are_valid_and_revocations_and_repairs_leave_one() {
    let s = setup("grace-revoke", "600s", &[]).await;
    let (_, first) = s.settled(1).await;
    s.rotate("a", &[]);
    let (_, second) = s.settled(2).await;
    // A second rotation inside the grace period replaces the previous secret: still two.
    s.rotate("b", &[]);
    let (status, third) = s.settled(3).await;
    assert_eq!(
        valid(&status, &[&first, &second, &third]),
        [second.clone(), third.clone()]
    );
    s.event("PreviousSecretRevoked").await;

    // Retired early by annotation: the current secret stays, alone.
    let previous = status.previous_secret.clone().expect("previous");
    s.kubectl(&[
        "annotate",
        "oauthapp",
        "demo",
        &format!("oauthapp.io/revoke-previous={}", previous.rotation_id),
        "--overwrite",
    ]);
    let status = eventually("the previous secret to be retired", WAIT, || async {
        let status = s.apps.get("demo").await.ok()?.status?;
        status.previous_secret.is_none().then_some(status)
    })
    .await;
    assert_eq!(status.rotation_count, 3, "no rotation");
    assert_eq!(valid(&status, &[&second, &third]), vec![third.clone()]);

    // A rotation that revokes: one valid secret.
    s.rotate("c", &["oauthapp.io/rotate-revoke=true"]);
    let (status, fourth) = s.settled(4).await;
    assert_eq!(status.previous_secret, None);
    assert_eq!(valid(&status, &[&third, &fourth]), vec![fourth.clone()]);

    // A repair (someone edited the Secret): one valid secret, whatever the grace period.
    s.kubectl(&["annotate", "oauthapp", "demo", "oauthapp.io/rotate-revoke-"]);
    s.rotate("d", &[]);
    let (status, fifth) = s.settled(5).await;
    assert!(status.previous_secret.is_some());
    s.kubectl(&[
        "patch",
        "secret",
        "demo-oauth-client",
        "--type=merge",
        "-p",
        r#"{"stringData":{"client_secret":"hand-edited"}}"#,
    ]);
    let (status, sixth) = s.settled(6).await;
    assert_eq!(
        status.last_rotation_trigger.map(|t| t.as_str()),
        Some("SecretDrift")
    );
    assert_eq!(status.previous_secret, None);
    assert_eq!(valid(&status, &[&fifth, &sixth]), vec![sixth.clone()]);
}

#[tokio::test]
async fn a_kill_between_the_writes_keeps_the_previous_secret_until_its_original_expiry() {
    let mut s = setup("grace-crash", "600s", &[]).await;
    let (before, old) = s.settled(1).await;
    s.operator.kill9();
    // This operator stops dead after writing the Secret, before the status: then it is killed.
    s.operator = Operator::start(
        &control_plane().kubeconfig,
        &s.ns,
        &[],
        &[("OAUTHAPP_FAILPOINT", "pause-after-secret-write")],
    );
    s.rotate("crash", &[]);
    let written = eventually("the Secret to be rotated", WAIT, || async {
        let secret = s.secrets.get_opt("demo-oauth-client").await.ok()??;
        let id = secret.annotations().get("oauthapp.io/rotation-id")?.clone();
        (Some(&id) != before.rotation_id.as_ref()).then_some(secret)
    })
    .await;
    let expires_at = written
        .annotations()
        .get("oauthapp.io/previous-expires-at")
        .cloned()
        .expect("the previous secret is in the Secret's record");
    s.operator.kill9();

    s.operator = Operator::start(&control_plane().kubeconfig, &s.ns, &[], &[]);
    let (status, new) = s.settled(2).await;
    assert_eq!(new, plaintext(&written), "no second rotation");
    let previous = status
        .previous_secret
        .clone()
        .expect("the previous secret survived");
    assert_eq!(previous.expires_at.0.to_string(), expires_at);
    assert_eq!(valid(&status, &[&old, &new]), [old.clone(), new.clone()]);
}

#[tokio::test]
async fn a_restart_with_fifty_apps_mid_grace_writes_nothing_until_the_first_expiry() {
    const APPS: usize = 50;
    let ns = namespace("grace-restart");
    let client = admin_client().await;
    let mut operator = Operator::start(&control_plane().kubeconfig, &ns, &[], &[]);
    let apps: Api<OAuthApp> = Api::namespaced(client.clone(), &ns);
    let manifest: String = (0..APPS)
        .map(|i| {
            format!(
                "apiVersion: oauthapp.io/v1alpha1\nkind: OAuthApp\nmetadata:\n  name: app-{i}\nspec:\n  rotation:\n    gracePeriod: 600s\n---\n"
            )
        })
        .collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("apps.yaml");
    std::fs::write(&file, manifest).expect("write manifest");
    control_plane().kubectl_ok(&["apply", "-n", &ns, "-f", file.to_str().expect("utf-8")]);
    let all_at = |count: i64, previous: bool| {
        let apps = apps.clone();
        async move {
            let list = apps.list(&ListParams::default()).await.ok()?;
            let done = list.items.iter().all(|a| {
                a.status
                    .as_ref()
                    .is_some_and(|s| s.rotation_count == count && s.previous_secret.is_some() == previous)
                    && a.ready_condition().is_some_and(|c| c.status == "True")
            });
            (list.items.len() == APPS && done).then_some(list)
        }
    };
    eventually("every app provisioned", WAIT, || all_at(1, false)).await;
    control_plane().kubectl_ok(&[
        "annotate",
        "oauthapp",
        "--all",
        "-n",
        &ns,
        "oauthapp.io/rotate=r1",
    ]);
    let before = eventually("every app rotated, its previous secret kept", WAIT, || {
        all_at(2, true)
    })
    .await;
    operator
        .terminate(Duration::from_secs(30))
        .expect("operator exits on SIGTERM");

    // A new operator looks at every app (and again every second): all are mid-grace, the
    // first expiry is minutes away, so it writes nothing.
    let operator = Operator::start(
        &control_plane().kubeconfig,
        &ns,
        &["--resync-interval", "1s"],
        &[],
    );
    eventually("every app looked at, twice", WAIT, || async {
        let done = operator
            .metric("oauthapp_reconcile_duration_seconds_count")
            .await?;
        (done >= 2.0 * APPS as f64).then_some(())
    })
    .await;
    assert_eq!(operator.metric("oauthapp_api_writes_total").await, Some(0.0));
    let after = apps.list(&ListParams::default()).await.expect("list");
    let versions = |list: &kube::core::ObjectList<OAuthApp>| {
        let mut v: Vec<(String, Option<String>)> = list
            .items
            .iter()
            .map(|a| (a.name_any(), a.resource_version()))
            .collect();
        v.sort();
        v
    };
    assert_eq!(versions(&after), versions(&before), "no status was written");
}
