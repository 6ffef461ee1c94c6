//! Day two: what a platform team does around the operator (a change of its configuration, its
//! key, a restore) never costs a client its credentials (DESIGN.md, invariant 9). Each test
//! plays the event as an SRE would and compares every Secret's data bytes before and after.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};
use oauthapp_operator::crd::OAuthApp;

use crate::support::*;

const WAIT: Duration = Duration::from_secs(90);

fn app_manifest(name: &str) -> String {
    format!(
        "apiVersion: oauthapp.io/v1alpha1\nkind: OAuthApp\nmetadata:\n  name: {name}\nspec:\n  redirectUris: [\"https://{name}.example.com/cb\"]\n"
    )
}

/// Waits until app `name` is Ready, its status describes its Secret, and it has had `count`
/// secrets; returns both.
async fn settled(apps: &Api<OAuthApp>, secrets: &Api<Secret>, name: &str, count: i64) -> (OAuthApp, Secret) {
    eventually(
        &format!("OAuthApp {name} Ready with rotation {count}"),
        WAIT,
        || async {
            let app = apps.get_opt(name).await.ok()??;
            let status = app.status.clone()?;
            let secret = secrets.get_opt(status.secret_name.as_deref()?).await.ok()??;
            let ready = app.ready_condition().is_some_and(|c| c.status == "True");
            let in_sync = secret.annotations().get("oauthapp.io/rotation-id") == status.rotation_id.as_ref()
                && secret.resource_version() == status.secret_resource_version;
            (ready && in_sync && status.rotation_count == count).then_some((app, secret))
        },
    )
    .await
}

/// Every app Secret's data, by name.
async fn secret_data(secrets: &Api<Secret>, names: &[String]) -> BTreeMap<String, BTreeMap<String, Vec<u8>>> {
    let mut out = BTreeMap::new();
    for name in names {
        let secret = secrets
            .get(&format!("{name}-oauth-client"))
            .await
            .expect("secret");
        let data = secret
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect();
        out.insert(name.clone(), data);
    }
    out
}

async fn reconciled_at_least(operator: &Operator, n: f64) {
    eventually(&format!("{n} reconciles"), WAIT, || async {
        let done = operator
            .metric("oauthapp_reconcile_duration_seconds_count")
            .await?;
        (done >= n).then_some(())
    })
    .await;
}

fn hash_of(app: &OAuthApp) -> String {
    app.status
        .as_ref()
        .and_then(|s| s.client_secret_hash.clone())
        .expect("status hash")
}

#[tokio::test]
async fn a_change_of_hash_parameters_replaces_no_secret_while_the_old_ones_are_accepted() {
    let ns = namespace("daytwo-params");
    let client = admin_client().await;
    let apps: Api<OAuthApp> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let kubeconfig = &control_plane().kubeconfig;
    let names: Vec<String> = (0..3).map(|i| format!("app-{i}")).collect();

    let mut first = Operator::start(
        kubeconfig,
        &ns,
        &["--hash-memory-kib", "1024", "--hash-iterations", "1"],
        &[],
    );
    for name in &names {
        control_plane().apply_ok(&ns, &app_manifest(name));
    }
    for name in &names {
        let (app, _) = settled(&apps, &secrets, name, 1).await;
        assert!(hash_of(&app).contains("m=1024,t=1,p=1"), "{}", hash_of(&app));
    }
    let before = secret_data(&secrets, &names).await;
    first
        .terminate(Duration::from_secs(30))
        .expect("the operator exits on SIGTERM");

    // The memory cost is raised, the old parameters accepted (`hashing.acceptPrevious`). The
    // new operator looks at every app several times and writes nothing.
    let second = Operator::start(
        kubeconfig,
        &ns,
        &[
            "--hash-memory-kib",
            "2048",
            "--hash-iterations",
            "1",
            "--hash-accept-params",
            "m=1024,t=1,p=1",
            "--resync-interval",
            "1s",
        ],
        &[],
    );
    reconciled_at_least(&second, 3.0 * names.len() as f64).await;
    assert_eq!(
        second.metric("oauthapp_api_writes_total").await,
        Some(0.0),
        "nothing rewritten"
    );
    assert_eq!(
        secret_data(&secrets, &names).await,
        before,
        "no Secret data changed"
    );
    for name in &names {
        settled(&apps, &secrets, name, 1).await;
    }

    // The next rotation hashes with the new parameters; the others keep their hashes.
    control_plane().kubectl_ok(&["annotate", "oapp", "app-0", "-n", &ns, "oauthapp.io/rotate=1"]);
    let (rotated, _) = settled(&apps, &secrets, "app-0", 2).await;
    assert!(
        hash_of(&rotated).contains("m=2048,t=1,p=1"),
        "{}",
        hash_of(&rotated)
    );
    drop(second);

    // Without the old parameters accepted, their hashes are drift, as documented: the app that
    // still has one gets a new secret, the one already moved keeps its own.
    let third = Operator::start(
        kubeconfig,
        &ns,
        &["--hash-memory-kib", "2048", "--hash-iterations", "1"],
        &[],
    );
    let (repaired, _) = settled(&apps, &secrets, "app-1", 2).await;
    assert_eq!(
        repaired
            .status
            .as_ref()
            .and_then(|s| s.last_rotation_trigger)
            .map(|t| t.as_str()),
        Some("SecretDrift")
    );
    settled(&apps, &secrets, "app-0", 2).await;
    drop(third);
}
