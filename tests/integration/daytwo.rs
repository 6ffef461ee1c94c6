//! Day two: what a platform team does around the operator (a change of its configuration, its
//! key, a restore) never costs a client its credentials (DESIGN.md, invariant 9). Each test
//! plays the event as an SRE would and compares every Secret's data bytes before and after.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use oauthapp_operator::model::crd::OAuthApp;
use oauthapp_operator::model::record::RecordKey;

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
        if !oauthapp_operator::model::record::signed_by_newest(&app, &secret.metadata, ring) {
            return false;
        }
    }
    true
}

/// A key Secret of the ring, made as docs/day-two.md's procedure says (a labelled Secret of 32
/// random bytes in the operator's namespace).
fn make_key(ns: &str, name: &str) -> Vec<u8> {
    // 32 bytes of a fresh client secret's random part: as random as the key needs.
    let secret = oauthapp_operator::model::secret::ClientSecret::generate().expect("random");
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
    let restored = oauthapp_operator::model::record::key_secret(&key_ns, KEY_SECRET, backup);
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

    // A second key joins the ring (`kubectl oauthapp key rotate`): the running operator sees it
    // (no restart), signs with it, and moves every record over in the background, changing no
    // secret.
    let old = key_bytes(&keys, KEY_SECRET).await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kubectl-oauthapp"))
        .env("KUBECONFIG", kubeconfig)
        .args(["-n", key_ns.as_str(), "key", "rotate", "-o", "json"])
        .output()
        .expect("run kubectl-oauthapp");
    assert!(out.status.success(), "key rotate: {}", stderr(&out));
    let added: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(added["secret"], format!("{KEY_SECRET}-2"), "the first free slot");
    assert_eq!(added["older"], serde_json::json!([KEY_SECRET]));
    let new = key_bytes(&keys, &format!("{KEY_SECRET}-2")).await;
    assert_eq!(
        added["keyId"],
        oauthapp_operator::model::record::key_id(&new),
        "it names the key it made"
    );
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
        !oauthapp_operator::model::secret::verify(&old, status.client_secret_hash.as_deref().expect("hash"))
            .unwrap()
    );
    assert!(
        !oauthapp_operator::model::secret::verify(
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
        !oauthapp_operator::model::secret::verify(&old, status.client_secret_hash.as_deref().expect("hash"))
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
        serde_json::to_value(<oauthapp_operator::model::crd::OAuthApp as kube::CustomResourceExt>::crd())
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

/// An object as Velero (1.15, `velero restore create` with its defaults) puts it back: its
/// `resetMetadataAndStatus` keeps name, namespace, labels and annotations and drops uid,
/// resourceVersion, creationTimestamp, generation and managedFields; ownerReferences are
/// dropped as well (as measured in issue 22), and a custom resource's status is not restored
/// (no `--status-include-resources`).
fn as_velero_restores(object: &impl serde::Serialize) -> serde_json::Value {
    let mut value = serde_json::to_value(object).expect("json");
    let meta = value["metadata"].as_object_mut().expect("metadata");
    meta.retain(|k, _| matches!(k.as_str(), "name" | "namespace" | "labels" | "annotations"));
    if let Some(obj) = value.as_object_mut() {
        obj.remove("status");
    }
    value
}

/// What must survive a restore or re-creation of an app: its identity and its secrets.
#[derive(Debug, PartialEq)]
struct Kept {
    app_id: Option<String>,
    client_id: Option<String>,
    hint: Option<String>,
    rotation_id: Option<String>,
    rotation_count: i64,
    trigger: Option<String>,
    previous: Option<(String, String, jiff::Timestamp)>,
    history: Vec<String>,
    data: BTreeMap<String, Vec<u8>>,
}

fn kept(app: &OAuthApp, secret: &Secret) -> Kept {
    let s = app.status.clone().expect("status");
    Kept {
        app_id: s.app_id,
        client_id: s.client_id,
        hint: s.client_secret_hint,
        rotation_id: s.rotation_id,
        rotation_count: s.rotation_count,
        trigger: s.last_rotation_trigger.map(|t| t.as_str().to_string()),
        previous: s
            .previous_secret
            .map(|p| (p.rotation_id, p.client_secret_hash, p.expires_at.0)),
        history: s.history.iter().map(|h| h.rotation_id.clone()).collect(),
        data: secret
            .data
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect(),
    }
}

fn plaintext_of(secret: &Secret) -> String {
    String::from_utf8(secret.data.as_ref().expect("data")["client_secret"].0.clone()).expect("utf-8")
}

/// Both secrets an app shows still verify: the current one (the Secret's) against the status
/// hash, and `previous` against the previous secret's hash.
fn both_verify(app: &OAuthApp, secret: &Secret, previous: Option<&str>) {
    let status = app.status.as_ref().expect("status");
    assert!(
        oauthapp_operator::model::secret::verify(
            &plaintext_of(secret),
            status.client_secret_hash.as_deref().expect("hash")
        )
        .expect("PHC")
    );
    if let Some(previous) = previous {
        let p = status.previous_secret.as_ref().expect("a previous secret");
        assert!(oauthapp_operator::model::secret::verify(previous, &p.client_secret_hash).expect("PHC"));
    }
}

async fn namespace_gone(ns: &str) {
    eventually(&format!("namespace {ns} deleted"), WAIT, || async {
        let out = control_plane().kubectl(&["get", "namespace", ns]);
        (!out.status.success()).then_some(())
    })
    .await;
}

fn grace_manifest(name: &str, policy: Option<&str>) -> String {
    let policy = policy
        .map(|p| format!("  secret:\n    deletionPolicy: {p}\n"))
        .unwrap_or_default();
    format!(
        "apiVersion: oauthapp.io/v1alpha1\nkind: OAuthApp\nmetadata:\n  name: {name}\nspec:\n  rotation:\n    gracePeriod: 24h\n{policy}"
    )
}

#[tokio::test]
async fn a_velero_restore_of_a_lost_namespace_replaces_no_secret_and_keeps_every_app_id() {
    let ns = namespace("daytwo-velero");
    let client = admin_client().await;
    let apps: Api<OAuthApp> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let operator = Operator::start(&control_plane().kubeconfig, &ns, &[], &[]);
    // Two plain apps, two with a grace period mid-flight (rotated once: two valid secrets).
    let plain: Vec<String> = (0..2).map(|i| format!("plain-{i}")).collect();
    let graced: Vec<String> = (0..2).map(|i| format!("graced-{i}")).collect();
    for name in &plain {
        control_plane().apply_ok(&ns, &app_manifest(name));
    }
    let mut previous = BTreeMap::new();
    for name in &graced {
        control_plane().apply_ok(&ns, &grace_manifest(name, None));
        let (_, first) = settled(&apps, &secrets, name, 1).await;
        previous.insert(name.clone(), plaintext_of(&first));
        control_plane().kubectl_ok(&["annotate", "oapp", name, "-n", &ns, "oauthapp.io/rotate=1"]);
    }
    let mut before = BTreeMap::new();
    let mut backup_secrets = Vec::new();
    let mut backup_apps = Vec::new();
    for name in plain.iter().chain(&graced) {
        let count = if graced.contains(name) { 2 } else { 1 };
        let (app, secret) = settled(&apps, &secrets, name, count).await;
        before.insert(name.clone(), kept(&app, &secret));
        backup_secrets.push(as_velero_restores(&secret));
        backup_apps.push(as_velero_restores(&app));
    }

    // The namespace is lost, then restored the way Velero restores it: the namespace, the
    // Secrets, then the custom resources, each stripped as above.
    control_plane().kubectl_ok(&["delete", "namespace", &ns, "--wait=false"]);
    namespace_gone(&ns).await;
    control_plane().kubectl_ok(&["create", "namespace", &ns]);
    let raw_secrets: Api<kube::api::DynamicObject> =
        Api::namespaced_with(client.clone(), &ns, &kube::api::ApiResource::erase::<Secret>(&()));
    for s in &backup_secrets {
        raw_secrets
            .create(
                &Default::default(),
                &serde_json::from_value(s.clone()).expect("object"),
            )
            .await
            .expect("restore a Secret");
    }
    for a in &backup_apps {
        apps.create(
            &Default::default(),
            &serde_json::from_value(a.clone()).expect("app"),
        )
        .await
        .expect("restore an app");
    }

    // Every app adopts its Secret: same ids, same secrets, same previous secret and expiry,
    // same history; nothing rotated.
    for name in plain.iter().chain(&graced) {
        let want = &before[name];
        let (app, secret) = settled(&apps, &secrets, name, want.rotation_count).await;
        assert_eq!(&kept(&app, &secret), want, "{name}");
        both_verify(&app, &secret, previous.get(name).map(String::as_str));
        assert!(
            plan_controlled(&app, &secret),
            "{name}: the Secret is the restored app's again (ownerReference)"
        );
        eventually(&format!("a SecretAdopted Event for {name}"), WAIT, || async {
            events_about(&client, &ns, name)
                .await
                .iter()
                .any(|(_, reason, _)| reason == "SecretAdopted")
                .then_some(())
        })
        .await;
    }
    // The REST API finds each app by its kept id (its uid changed with the restore).
    control_plane().kubectl_ok(&["create", "serviceaccount", "reader", "-n", &ns]);
    let token = service_account_token(&ns, "reader");
    control_plane().apply_ok(
        &ns,
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata:\n  name: reader\nrules:\n- apiGroups: [oauthapp.io]\n  resources: [oauthapps]\n  verbs: [get, list]\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata:\n  name: reader\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: reader}\nsubjects: [{kind: ServiceAccount, name: reader}]\n",
    );
    for name in plain.iter().chain(&graced) {
        let id = before[name].app_id.clone().expect("app id");
        let app = apps.get(name).await.expect("app");
        assert_ne!(
            oauthapp_operator::model::record::uid_app_id(&app).as_deref(),
            Some(id.as_str()),
            "the uid changed"
        );
        let body = eventually(&format!("GET {id}"), WAIT, || async {
            let (code, body) = http_request(
                operator.api_port,
                "GET",
                &format!("/api/v1/oauth-apps/{id}"),
                &token,
            )
            .await?;
            (code == 200).then_some(body)
        })
        .await;
        assert!(body.contains(&format!("\"name\":\"{name}\"")), "{body}");
    }
    drop(operator);
}

fn plan_controlled(app: &OAuthApp, secret: &Secret) -> bool {
    oauthapp_operator::model::managed::is_controlled_by(&secret.metadata, app)
}

#[tokio::test]
async fn a_gitops_delete_and_create_of_a_retained_app_replaces_no_secret_and_keeps_its_ids() {
    let ns = namespace("daytwo-gitops");
    let client = admin_client().await;
    let apps: Api<OAuthApp> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let _operator = Operator::start(&control_plane().kubeconfig, &ns, &[], &[]);
    let retained = grace_manifest("retained", Some("Retain"));
    let deleted = grace_manifest("deleted", None);
    control_plane().apply_ok(&ns, &retained);
    control_plane().apply_ok(&ns, &deleted);
    let (_, first) = settled(&apps, &secrets, "retained", 1).await;
    let previous = plaintext_of(&first);
    control_plane().kubectl_ok(&["annotate", "oapp", "retained", "-n", &ns, "oauthapp.io/rotate=1"]);
    let (app, secret) = settled(&apps, &secrets, "retained", 2).await;
    let before = kept(&app, &secret);
    assert_eq!(
        secret.metadata.owner_references, None,
        "a retained Secret has no owner"
    );
    let (old_deleted, _) = settled(&apps, &secrets, "deleted", 1).await;

    // What Argo CD's Replace=true with Force=true, or Flux's force, does: delete, then create
    // the same manifest.
    control_plane().kubectl_ok(&["delete", "oapp", "retained", "deleted", "-n", &ns, "--wait=true"]);
    assert!(
        secrets
            .get_opt("retained-oauth-client")
            .await
            .expect("read")
            .is_some(),
        "the retained Secret outlives its app"
    );
    eventually(
        "the Delete policy's Secret collected with its app",
        WAIT,
        || async {
            secrets
                .get_opt("deleted-oauth-client")
                .await
                .ok()?
                .is_none()
                .then_some(())
        },
    )
    .await;
    control_plane().apply_ok(&ns, &retained);
    control_plane().apply_ok(&ns, &deleted);

    let (app, secret) = settled(&apps, &secrets, "retained", 2).await;
    assert_eq!(
        kept(&app, &secret),
        before,
        "same ids, secrets, previous secret, history"
    );
    both_verify(&app, &secret, Some(&previous));
    assert_eq!(secret.metadata.owner_references, None);
    // The Delete policy (the default) keeps today's behaviour: a new app, a new secret (its
    // count goes on from the name's last one, so a copy of the old Secret is always older).
    let (new_deleted, _) = settled(&apps, &secrets, "deleted", 2).await;
    assert_eq!(
        new_deleted
            .status
            .as_ref()
            .and_then(|s| s.last_rotation_trigger)
            .map(|t| t.as_str()),
        Some("Created")
    );
    assert_ne!(
        new_deleted.status.as_ref().and_then(|s| s.app_id.clone()),
        old_deleted.status.as_ref().and_then(|s| s.app_id.clone())
    );
}

#[tokio::test]
async fn a_revoked_secret_never_comes_back_through_a_deleted_and_re_created_app() {
    let ns = namespace("daytwo-revoked");
    let client = admin_client().await;
    let apps: Api<OAuthApp> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let key_ns = control_plane().namespace(&format!("{ns}-key"));
    let args = ["--record-key-namespace", key_ns.as_str()];
    let mut operator = Operator::start(&control_plane().kubeconfig, &ns, &args, &[]);
    let manifest = grace_manifest("portal", Some("Retain"));
    control_plane().apply_ok(&ns, &manifest);
    let (app, backup) = settled(&apps, &secrets, "portal", 1).await;
    let app_id = app.status.as_ref().and_then(|s| s.app_id.clone());
    let leaked = plaintext_of(&backup);
    // The secret leaked: rotated and revoked at once.
    control_plane().kubectl_ok(&[
        "annotate",
        "oapp",
        "portal",
        "-n",
        &ns,
        "oauthapp.io/rotate=leak",
        "oauthapp.io/rotate-revoke=true",
    ]);
    settled(&apps, &secrets, "portal", 2).await;

    // A namespace user deletes the app, and the operator restarts meanwhile (its memory of
    // the app must outlive the process: the ledger in its own namespace).
    control_plane().kubectl_ok(&["delete", "oapp", "portal", "-n", &ns, "--wait=true"]);
    eventually("the ledger to remember the deleted app", WAIT, || async {
        (operator.metric("oauthapp_retired_records").await? >= 1.0).then_some(())
    })
    .await;
    let ledger = oauthapp_operator::runtime::ledger::configmap_name("oauthapp-operator-record-key");
    eventually("the ledger written to its ConfigMap", WAIT, || async {
        let out = control_plane().kubectl(&["get", "configmap", &ledger, "-n", &key_ns, "-o", "json"]);
        let key = oauthapp_operator::runtime::ledger::key(&ns, "portal");
        (out.status.success() && stdout(&out).contains(&key)).then_some(())
    })
    .await;
    operator
        .terminate(Duration::from_secs(30))
        .expect("the operator exits on SIGTERM");
    // The old copy of the Secret (validly sealed, count 1) is written back, and the app made again.
    let mut written_back = secrets.get("portal-oauth-client").await.expect("retained Secret");
    written_back.data = backup.data.clone();
    written_back.metadata.annotations = backup.metadata.annotations.clone();
    written_back.metadata.owner_references = None;
    written_back.metadata.managed_fields = None;
    secrets
        .replace("portal-oauth-client", &Default::default(), &written_back)
        .await
        .expect("write the old copy back");
    let operator = Operator::start(&control_plane().kubeconfig, &ns, &args, &[]);
    control_plane().apply_ok(&ns, &manifest);

    // Never adopted: drift, a new secret (counting on from the remembered rotation); the
    // leaked one verifies nowhere; the app keeps its id.
    let (app, secret) = settled(&apps, &secrets, "portal", 3).await;
    let status = app.status.clone().expect("status");
    assert_eq!(
        status.last_rotation_trigger.map(|t| t.as_str()),
        Some("SecretDrift")
    );
    assert_eq!(status.app_id, app_id, "the app keeps its id");
    assert_eq!(status.previous_secret, None);
    assert_ne!(plaintext_of(&secret), leaked);
    assert!(
        !oauthapp_operator::model::secret::verify(
            &leaked,
            status.client_secret_hash.as_deref().expect("hash")
        )
        .unwrap()
    );
    drop(operator);
}

#[tokio::test]
async fn two_installations_watching_one_namespace_leave_each_others_apps_alone() {
    let ns = namespace("daytwo-two");
    let client = admin_client().await;
    let apps: Api<OAuthApp> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let key_a = control_plane().namespace(&format!("{ns}-a"));
    let key_b = control_plane().namespace(&format!("{ns}-b"));
    let kubeconfig = &control_plane().kubeconfig;
    let a = Operator::start(
        kubeconfig,
        &ns,
        &[
            "--record-key-namespace",
            key_a.as_str(),
            "--resync-interval",
            "2s",
        ],
        &[],
    );
    let names: Vec<String> = (0..3).map(|i| format!("app-{i}")).collect();
    for name in &names {
        control_plane().apply_ok(&ns, &app_manifest(name));
    }
    for name in &names {
        settled(&apps, &secrets, name, 1).await;
    }
    let before = secret_data(&secrets, &names).await;
    let installation_a = format!("{key_a}/{KEY_SECRET}");
    for name in &names {
        let app = apps.get(name).await.expect("app");
        assert_eq!(
            app.status.and_then(|s| s.installation).as_deref(),
            Some(installation_a.as_str())
        );
    }

    // A second installation (another key) watches the same namespace (a migration, or
    // overlapping watchNamespaces), for 60 s, both looking at every app every 2 s.
    let b = Operator::start(
        kubeconfig,
        &ns,
        &[
            "--record-key-namespace",
            key_b.as_str(),
            "--resync-interval",
            "2s",
        ],
        &[],
    );
    eventually(
        "the second installation to report the apps managed elsewhere",
        WAIT,
        || async { (b.metric("oauthapp_apps_managed_elsewhere").await? == names.len() as f64).then_some(()) },
    )
    .await;
    let until = std::time::Instant::now() + Duration::from_secs(60);
    while std::time::Instant::now() < until {
        for name in &names {
            let app = apps.get(name).await.expect("app");
            let status = app.status.clone().expect("status");
            assert_eq!(status.rotation_count, 1, "{name} rotated");
            assert_eq!(status.installation.as_deref(), Some(installation_a.as_str()));
        }
        assert_eq!(
            secret_data(&secrets, &names).await,
            before,
            "no Secret data changed"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    for name in &names {
        let app = apps.get(name).await.expect("app");
        let conditions = app.status.clone().expect("status").conditions;
        let said = conditions
            .iter()
            .find(|c| c.type_ == "ManagedElsewhere")
            .unwrap_or_else(|| panic!("{name}: no ManagedElsewhere condition: {conditions:?}"));
        assert!(said.message.contains(&installation_a), "{}", said.message);
        assert!(
            app.ready_condition().is_some_and(|c| c.status == "True"),
            "{name} still Ready"
        );
    }
    assert_eq!(
        b.metric("oauthapp_api_writes_total")
            .await
            .map(|w| w <= names.len() as f64),
        Some(true)
    );
    drop((a, b));
}
