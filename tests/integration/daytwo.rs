//! Day two: what a platform team does around the operator (a change of its configuration, its
//! key, a restore) never costs a client its credentials (DESIGN.md, invariant 9). Each test
//! plays the event as an SRE would and compares every Secret's data bytes before and after.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use oauthapp_operator::crd::OAuthApp;
use oauthapp_operator::record::RecordKey;

use crate::support::*;
use crate::trust::settled;

const WAIT: Duration = Duration::from_secs(90);

fn app_manifest(name: &str) -> String {
    format!(
        "apiVersion: oauthapp.io/v1alpha1\nkind: OAuthApp\nmetadata:\n  name: {name}\nspec:\n  redirectUris: [\"https://{name}.example.com/cb\"]\n"
    )
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

const KEY_SECRET: &str = "oauthapp-operator-record-key";

/// The record key Secret's bytes.
async fn key_bytes(secrets: &Api<Secret>, name: &str) -> Vec<u8> {
    secrets.get(name).await.expect("key Secret").data.expect("data")["hmac-key"]
        .0
        .clone()
}

/// Every app's record is signed by the newest key of `ring`, in the format `ring` signs in.
async fn all_signed_by(
    apps: &Api<OAuthApp>,
    secrets: &Api<Secret>,
    names: &[String],
    ring: &RecordKey,
) -> bool {
    for name in names {
        let (Ok(app), Ok(secret)) = (
            apps.get(name).await,
            secrets.get(&format!("{name}-oauth-client")).await,
        ) else {
            return false;
        };
        if !oauthapp_operator::record::signed_by_newest(&app, &secret.metadata, ring) {
            return false;
        }
    }
    true
}

/// A key Secret of the ring, made as the README's procedure says (a labelled Secret of 32
/// random bytes in the operator's namespace).
fn make_key(ns: &str, name: &str) -> Vec<u8> {
    // 32 bytes of a fresh client secret's random part: as random as the key needs.
    let secret = oauthapp_operator::secret::ClientSecret::generate().expect("random");
    let bytes = secret.expose().as_bytes()[4..36].to_vec();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("hmac-key");
    std::fs::write(&file, &bytes).expect("write key");
    let cp = control_plane();
    cp.kubectl_ok(&[
        "create",
        "secret",
        "generic",
        name,
        "-n",
        ns,
        &format!("--from-file=hmac-key={}", file.display()),
    ]);
    cp.kubectl_ok(&[
        "label",
        "secret",
        name,
        "-n",
        ns,
        "app.kubernetes.io/component=record-key",
    ]);
    bytes
}

#[tokio::test]
async fn the_record_key_deleted_and_the_operator_restarted_replaces_no_secret() {
    let ns = namespace("daytwo-key-lost");
    let key_ns = control_plane().namespace(&format!("{ns}-key"));
    let client = admin_client().await;
    let apps: Api<OAuthApp> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let keys: Api<Secret> = Api::namespaced(client.clone(), &key_ns);
    let kubeconfig = &control_plane().kubeconfig;
    let names: Vec<String> = (0..3).map(|i| format!("app-{i}")).collect();
    let args = [
        "--record-key-namespace",
        key_ns.as_str(),
        "--resync-interval",
        "1s",
    ];

    let mut operator = Operator::start(kubeconfig, &ns, &args, &[]);
    for name in &names {
        control_plane().apply_ok(&ns, &app_manifest(name));
    }
    for name in &names {
        settled(&apps, &secrets, name, 1).await;
    }
    let before = secret_data(&secrets, &names).await;
    let backup = key_bytes(&keys, KEY_SECRET).await;
    let first = RecordKey::from_bytes(&backup).expect("key");
    assert!(all_signed_by(&apps, &secrets, &names, &first).await);

    // The key Secret is deleted, the operator restarts: it makes no new key (signed records
    // exist that it would strand), rotates nothing, and says why.
    operator
        .terminate(Duration::from_secs(30))
        .expect("the operator exits on SIGTERM");
    control_plane().kubectl_ok(&["delete", "secret", KEY_SECRET, "-n", &key_ns]);
    let mut operator = Operator::start(kubeconfig, &ns, &args, &[]);
    let why = eventually("/readyz to say what it waits for", WAIT, || async {
        let (code, body) = http_request(operator.admin_port, "GET", "/readyz", "").await?;
        (code == 503 && body.contains("restore")).then_some(body)
    })
    .await;
    assert!(why.contains(KEY_SECRET), "{why}");
    eventually("oauthapp_record_key_missing 1", WAIT, || async {
        (operator.metric("oauthapp_record_key_missing").await? == 1.0).then_some(())
    })
    .await;
    assert!(
        keys.get_opt(KEY_SECRET).await.expect("read").is_none(),
        "no new key was made"
    );
    assert_eq!(operator.metric("oauthapp_api_writes_total").await, Some(0.0));
    assert_eq!(
        secret_data(&secrets, &names).await,
        before,
        "no Secret data changed"
    );

    // The key is restored from the backup: the operator goes on, and nothing is replaced.
    let restored = oauthapp_operator::record::key_secret(&key_ns, KEY_SECRET, backup);
    keys.create(&Default::default(), &restored)
        .await
        .expect("restore the key");
    eventually("the operator ready again", WAIT, || async {
        let (code, _) = http_request(operator.admin_port, "GET", "/readyz", "").await?;
        (code == 200).then_some(())
    })
    .await;
    assert_eq!(operator.metric("oauthapp_record_key_missing").await, Some(0.0));
    reconciled_at_least(&operator, 3.0 * names.len() as f64).await;
    assert_eq!(operator.metric("oauthapp_api_writes_total").await, Some(0.0));
    assert_eq!(
        secret_data(&secrets, &names).await,
        before,
        "no Secret data changed"
    );

    // The key is lost for good, and a person makes a new one: each record, which the status
    // shows, is signed with it, and still no secret changes.
    operator
        .terminate(Duration::from_secs(30))
        .expect("the operator exits on SIGTERM");
    control_plane().kubectl_ok(&["delete", "secret", KEY_SECRET, "-n", &key_ns]);
    let new = RecordKey::from_bytes(&make_key(&key_ns, &format!("{KEY_SECRET}-2"))).expect("key");
    let operator = Operator::start(kubeconfig, &ns, &args, &[]);
    eventually("every record signed by the new key", WAIT, || async {
        all_signed_by(&apps, &secrets, &names, &new).await.then_some(())
    })
    .await;
    for name in &names {
        settled(&apps, &secrets, name, 1).await;
    }
    assert_eq!(
        secret_data(&secrets, &names).await,
        before,
        "no Secret data changed"
    );
    drop(operator);
}

#[tokio::test]
async fn a_new_key_re_signs_every_record_and_the_old_one_retires_without_a_new_secret() {
    let ns = namespace("daytwo-key-rotate");
    let key_ns = control_plane().namespace(&format!("{ns}-key"));
    let client = admin_client().await;
    let apps: Api<OAuthApp> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let keys: Api<Secret> = Api::namespaced(client.clone(), &key_ns);
    let kubeconfig = &control_plane().kubeconfig;
    let names: Vec<String> = (0..4).map(|i| format!("app-{i}")).collect();
    let args = [
        "--record-key-namespace",
        key_ns.as_str(),
        "--resync-interval",
        "1s",
    ];

    let mut operator = Operator::start(kubeconfig, &ns, &args, &[]);
    for name in &names {
        control_plane().apply_ok(&ns, &app_manifest(name));
    }
    for name in &names {
        settled(&apps, &secrets, name, 1).await;
    }
    let before = secret_data(&secrets, &names).await;

    // A second key joins the ring: the running operator sees it (no restart), signs with it,
    // and moves every record over in the background, changing no secret.
    let old = key_bytes(&keys, KEY_SECRET).await;
    let new = make_key(&key_ns, &format!("{KEY_SECRET}-2"));
    let ring = RecordKey::ring(vec![new, old]).expect("ring");
    eventually("every record signed by the new key", WAIT, || async {
        all_signed_by(&apps, &secrets, &names, &ring).await.then_some(())
    })
    .await;
    eventually("nothing left to re-sign", WAIT, || async {
        let left = operator.metric("oauthapp_records_to_resign").await?;
        let keys = operator.metric("oauthapp_record_keys").await?;
        (left == 0.0 && keys == 2.0).then_some(())
    })
    .await;
    assert_eq!(
        secret_data(&secrets, &names).await,
        before,
        "no Secret data changed"
    );

    // The old key retires; after a restart the ring holds the new one only, and every app
    // stays as it is.
    keys.delete(KEY_SECRET, &Default::default())
        .await
        .expect("retire the old key");
    operator
        .terminate(Duration::from_secs(30))
        .expect("the operator exits on SIGTERM");
    let operator = Operator::start(kubeconfig, &ns, &args, &[]);
    reconciled_at_least(&operator, 3.0 * names.len() as f64).await;
    assert_eq!(operator.metric("oauthapp_api_writes_total").await, Some(0.0));
    for name in &names {
        settled(&apps, &secrets, name, 1).await;
    }
    assert_eq!(
        secret_data(&secrets, &names).await,
        before,
        "no Secret data changed"
    );
    assert!(
        keys.get_opt(KEY_SECRET).await.expect("read").is_none(),
        "no key made again"
    );
}

#[tokio::test]
async fn a_secret_written_back_from_an_earlier_copy_does_not_bring_back_its_retired_secret() {
    let ns = namespace("daytwo-written-back");
    let client = admin_client().await;
    let apps: Api<OAuthApp> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let _operator = Operator::start(&control_plane().kubeconfig, &ns, &[], &[]);
    control_plane().apply_ok(
        &ns,
        "apiVersion: oauthapp.io/v1alpha1\nkind: OAuthApp\nmetadata:\n  name: portal\nspec:\n  rotation:\n    gracePeriod: 1h\n",
    );
    let (_, first) = settled(&apps, &secrets, "portal", 1).await;
    // A backup of the Secret as it is now (signed, genuine).
    let backup = first.clone();
    let old =
        String::from_utf8(first.data.as_ref().expect("data")["client_secret"].0.clone()).expect("utf-8");
    // Two rotations: the first secret was the previous one for a while, and is retired now.
    for token in ["1", "2"] {
        control_plane().kubectl_ok(&[
            "annotate",
            "oapp",
            "portal",
            "-n",
            &ns,
            &format!("oauthapp.io/rotate={token}"),
            "--overwrite",
        ]);
    }
    let (app, current) = settled(&apps, &secrets, "portal", 3).await;
    let status = app.status.clone().expect("status");
    assert!(
        !oauthapp_operator::secret::verify(&old, status.client_secret_hash.as_deref().expect("hash"))
            .unwrap()
    );
    assert!(
        !oauthapp_operator::secret::verify(
            &old,
            &status.previous_secret.expect("previous").client_secret_hash
        )
        .unwrap()
    );

    // The old copy is written back, signature and all.
    let mut written_back = current.clone();
    written_back.data = backup.data.clone();
    written_back.metadata.annotations = backup.metadata.annotations.clone();
    written_back.metadata.managed_fields = None;
    secrets
        .replace("portal-oauth-client", &Default::default(), &written_back)
        .await
        .expect("write the old copy back");

    // Drift: a new secret, never the old one believed; the retired secret verifies nowhere.
    let (app, repaired) = settled(&apps, &secrets, "portal", 4).await;
    let status = app.status.clone().expect("status");
    assert_eq!(
        status.last_rotation_trigger.map(|t| t.as_str()),
        Some("SecretDrift")
    );
    assert!(
        !oauthapp_operator::secret::verify(&old, status.client_secret_hash.as_deref().expect("hash"))
            .unwrap()
    );
    assert_eq!(status.previous_secret, None, "a repair leaves one valid secret");
    let now =
        String::from_utf8(repaired.data.as_ref().expect("data")["client_secret"].0.clone()).expect("utf-8");
    assert_ne!(now, old);
    eventually("a SecretRepaired Event saying why", WAIT, || async {
        events_about(&client, &ns, "portal")
            .await
            .iter()
            .any(|(_, reason, note)| reason == "SecretRepaired" && note.contains("older than the status"))
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn when_every_secret_is_deleted_at_once_a_few_are_repaired_and_the_rest_wait_for_a_person() {
    let ns = namespace("daytwo-brake");
    let key_ns = control_plane().namespace(&format!("{ns}-key"));
    let client = admin_client().await;
    let apps: Api<OAuthApp> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let names: Vec<String> = (0..10).map(|i| format!("app-{i}")).collect();
    let operator = Operator::start(
        &control_plane().kubeconfig,
        &ns,
        &[
            "--record-key-namespace",
            &key_ns,
            "--repair-brake-share",
            "0.1",
            "--repair-brake-min",
            "3",
            "--max-repairs-per-second",
            "50",
        ],
        &[],
    );
    for name in &names {
        control_plane().apply_ok(&ns, &app_manifest(name));
    }
    for name in &names {
        settled(&apps, &secrets, name, 1).await;
    }

    // Every Secret goes at once (a tenant, a sync tool, a bug): three are repaired, the seven
    // others wait, Ready=False, reason RepairHeld, with their status otherwise kept.
    control_plane().kubectl_ok(&[
        "delete",
        "secret",
        "-n",
        &ns,
        "-l",
        "app.kubernetes.io/managed-by=oauthapp-operator",
    ]);
    let reasons = || async {
        let mut repaired = 0;
        let mut held = 0;
        for app in apps.list(&Default::default()).await.ok()?.items {
            let condition = app.ready_condition()?;
            if condition.status == "True" && app.status.as_ref()?.rotation_count == 2 {
                repaired += 1;
            } else if condition.reason == "RepairHeld" && app.status.as_ref()?.rotation_count == 1 {
                held += 1;
            }
        }
        Some((repaired, held))
    };
    eventually("3 repaired and 7 held", WAIT, || async {
        (reasons().await? == (3, 7)).then_some(())
    })
    .await;
    eventually("the brake's metrics", WAIT, || async {
        let held = operator.metric("oauthapp_repairs_held").await?;
        let engaged = operator.metric("oauthapp_repair_brake_engaged").await?;
        (held == 7.0 && engaged == 1.0).then_some(())
    })
    .await;
    assert_eq!(reasons().await, Some((3, 7)), "still held");

    // A person releases them: every app is repaired, and the brake lets go.
    control_plane().kubectl_ok(&[
        "annotate",
        "secret",
        KEY_SECRET,
        "-n",
        &key_ns,
        "oauthapp.io/release-repairs=1",
        "--overwrite",
    ]);
    for name in &names {
        settled(&apps, &secrets, name, 2).await;
    }
    assert_eq!(operator.metric("oauthapp_repairs_held").await, Some(0.0));
    assert_eq!(operator.metric("oauthapp_repair_brake_engaged").await, Some(0.0));
}

#[tokio::test]
async fn an_operator_started_against_an_older_crd_refuses_and_says_to_apply_the_crd() {
    let private = PrivateControlPlane::start("daytwo-old-crd");
    let cp = &private.0;
    // The CRD as a release before the grace period installed it: no status.previousSecret.
    let mut old: serde_json::Value =
        serde_json::to_value(<oauthapp_operator::crd::OAuthApp as kube::CustomResourceExt>::crd())
            .expect("crd");
    old["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
        .as_object_mut()
        .expect("status properties")
        .remove("previousSecret");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("old-crd.json");
    std::fs::write(&file, old.to_string()).expect("write");
    let replaced = cp.kubectl(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        file.to_str().expect("utf-8"),
    ]);
    assert!(replaced.status.success(), "{}", stderr(&replaced));

    let mut operator = Operator::start_on(cp, &cp.kubeconfig, "default", &[], &[]);
    let status = operator.wait_exit(WAIT).expect("the operator exits by itself");
    assert_eq!(status.code(), Some(1));
    let log = operator.log_text();
    assert!(
        log.contains("lacks status.previousSecret") && log.contains("Apply the CRD of this version"),
        "{log}"
    );

    // With the CRD of this version applied, it starts.
    let crd = repo().join("crds/oauthapps.oauthapp.io.yaml");
    let applied = cp.kubectl(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        crd.to_str().expect("utf-8"),
    ]);
    assert!(applied.status.success(), "{}", stderr(&applied));
    let operator = Operator::start_on(cp, &cp.kubeconfig, "default", &[], &[]);
    eventually("the operator's /readyz", WAIT, || async {
        http_get(operator.admin_port, "/readyz").await
    })
    .await;
}
