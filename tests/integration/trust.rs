//! Trust boundaries, tried as a tenant with ordinary rights in their own namespace would: a
//! Secret writer cannot make the operator hash with their parameters, publish a hash it did not
//! compute or stop the schedule, and nobody can take another app's client id.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use oauthapp_operator::model::crd::OAuthApp;
use oauthapp_operator::model::secret::{self, ClientSecret, HashParams};
use serde_json::json;

use crate::support::*;

const WAIT: Duration = Duration::from_secs(90);
/// The chart's memory limit for one operator pod.
const CHART_MEMORY_LIMIT_KIB: u64 = 256 * 1024;

fn app_manifest(name: &str, client_id: Option<&str>) -> String {
    let client_id = client_id.map_or(String::new(), |c| format!("  clientId: {c}\n"));
    format!(
        "apiVersion: oauthapp.io/v1alpha1\nkind: OAuthApp\nmetadata:\n  name: {name}\nspec:\n  redirectUris: [\"https://{name}.example.com/cb\"]\n{client_id}"
    )
}

fn apply(ns: &str, manifest: &str) -> std::process::Output {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("app.yaml");
    std::fs::write(&file, manifest).expect("write manifest");
    control_plane().kubectl(&["apply", "-n", ns, "-f", file.to_str().expect("utf-8")])
}

fn plaintext(secret: &Secret) -> String {
    let data = secret.data.as_ref().expect("secret data");
    String::from_utf8(data.get("client_secret").expect("client_secret").0.clone()).expect("utf-8")
}

/// A ServiceAccount `tenant` in `ns` that may read and write Secrets there, and nothing else.
async fn tenant(ns: &str) -> Client {
    let cp = control_plane();
    cp.kubectl_ok(&[
        "create",
        "role",
        "secret-writer",
        "-n",
        ns,
        "--verb=get,list,patch,update",
        "--resource=secrets",
    ]);
    cp.kubectl_ok(&[
        "create",
        "rolebinding",
        "tenant-secret-writer",
        "-n",
        ns,
        "--role=secret-writer",
        &format!("--serviceaccount={ns}:tenant"),
    ]);
    service_account_client(ns, "tenant").await
}

/// Waits until the app is Ready, its status describes its Secret, and it has had `count`
/// secrets; returns both.
pub(crate) async fn settled(
    apps: &Api<OAuthApp>,
    secrets: &Api<Secret>,
    name: &str,
    count: i64,
) -> (OAuthApp, Secret) {
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

async fn events(client: &Client, ns: &str, app: &str) -> Vec<(String, String, String)> {
    events_about(client, ns, app).await
}

/// The peak resident set of a process (VmHWM), in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

/// The operator's default parameters, as the status must show them.
fn our_params(hash: &str) -> bool {
    secret::uses_params(hash, &HashParams::default())
}

#[tokio::test]
async fn a_hash_string_with_huge_parameters_in_a_secret_is_drift_never_computed() {
    let ns = namespace("trust-huge-params");
    let admin = admin_client().await;
    let operator = Operator::start(&control_plane().kubeconfig, &ns, &[], &[]);
    let apps: Api<OAuthApp> = Api::namespaced(admin.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &ns);
    assert!(apply(&ns, &app_manifest("victim", None)).status.success());
    let (_, before) = settled(&apps, &secrets, "victim", 1).await;

    // Attack A: a tenant who may patch Secrets in their own namespace asks for 2 GiB and 32
    // passes on 64 lanes.
    let tenant_secrets: Api<Secret> = Api::namespaced(tenant(&ns).await, &ns);
    let huge = "$argon2id$v=19$m=2097152,t=32,p=64$c29tZXNhbHRzb21lc2FsdA$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g";
    tenant_secrets
        .patch(
            "victim-oauth-client",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"oauthapp.io/client-secret-hash": huge}}})),
        )
        .await
        .expect("the tenant may patch their Secret");

    // The app is repaired with a new secret of the operator's making, at its parameters.
    let (app, after) = settled(&apps, &secrets, "victim", 2).await;
    let status = app.status.clone().expect("status");
    assert_eq!(
        status.last_rotation_trigger.map(|t| t.as_str()),
        Some("SecretDrift")
    );
    let hash = status.client_secret_hash.expect("hash");
    assert!(our_params(&hash), "{hash}");
    assert_ne!(plaintext(&after), plaintext(&before));
    assert!(secret::verify(&plaintext(&after), &hash).expect("PHC"));
    // The Warning names the reason, and the operator never took the memory.
    let note = eventually("a SecretRepaired Warning naming the parameters", WAIT, || async {
        events(&admin, &ns, "victim")
            .await
            .into_iter()
            .find(|(t, r, _)| t == "Warning" && r == "SecretRepaired")
            .map(|(_, _, note)| note)
    })
    .await;
    assert!(note.contains("argon2id parameters"), "{note}");
    let peak = peak_rss_kib(operator.pid());
    assert!(
        peak < CHART_MEMORY_LIMIT_KIB,
        "peak RSS {peak} KiB, over the chart's limit of {CHART_MEMORY_LIMIT_KIB} KiB"
    );
    assert!(
        !operator.log_text().contains(&plaintext(&after)),
        "the plaintext reached the log"
    );
}

#[tokio::test]
async fn a_forged_rotation_record_never_reaches_the_status() {
    let ns = namespace("trust-forged-record");
    let admin = admin_client().await;
    let operator = Operator::start(&control_plane().kubeconfig, &ns, &[], &[]);
    let apps: Api<OAuthApp> = Api::namespaced(admin.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &ns);
    assert!(
        apply(
            &ns,
            &format!(
                "{}  rotation:\n    interval: 720h\n",
                app_manifest("victim", None)
            )
        )
        .status
        .success()
    );
    settled(&apps, &secrets, "victim", 1).await;
    let tenant_secrets: Api<Secret> = Api::namespaced(tenant(&ns).await, &ns);

    // Attack B: a chosen secret, a valid hash of it, a new rotation id and a rotated-at far in
    // the future (the schedule would never fire): with weak parameters; with the operator's own
    // parameters; and with the operator's parameters, a plausible time and no signature (only
    // the signature tells that one apart).
    let now = jiff::Timestamp::now().to_string();
    let weak = HashParams {
        m_cost_kib: 8,
        t_cost: 1,
        p_cost: 1,
    };
    let ours = HashParams::default();
    let forgeries = [
        (weak, "2099-01-01T00:00:00Z", false, "argon2id parameters"),
        (ours, "2099-01-01T00:00:00Z", false, "rotated-at is in the future"),
        (ours, now.as_str(), true, "not signed by the operator"),
    ];
    let mut count = 1;
    for (i, (params, rotated_at, unsign, reason)) in forgeries.into_iter().enumerate() {
        let chosen = ClientSecret::generate().expect("secret");
        let forged_hash = secret::hash(chosen.expose(), &params).expect("hash");
        let mut annotations = json!({
            "oauthapp.io/rotation-id": format!("forged{i}"),
            "oauthapp.io/client-secret-hash": forged_hash,
            "oauthapp.io/client-secret-hint": chosen.hint(),
            "oauthapp.io/rotated-at": rotated_at,
            "oauthapp.io/rotation-count": "100",
            "oauthapp.io/rotation-trigger": "Api",
        });
        if unsign {
            annotations["oauthapp.io/record-signature"] = serde_json::Value::Null;
        }
        tenant_secrets
            .patch(
                "victim-oauth-client",
                &PatchParams::default(),
                &Patch::Merge(json!({
                    "metadata": {"annotations": annotations},
                    "stringData": {"client_secret": chosen.expose()},
                })),
            )
            .await
            .expect("the tenant may patch their Secret");

        // Every status seen until the repair lands, and after: never the forged hash.
        count += 1;
        let (app, after) = eventually("the forged Secret to be replaced", WAIT, || async {
            let app = apps.get_opt("victim").await.ok()??;
            let status = app.status.clone()?;
            assert_ne!(
                status.client_secret_hash.as_deref(),
                Some(forged_hash.as_str()),
                "the forged hash reached the status"
            );
            assert_ne!(status.rotation_id.as_deref(), Some(format!("forged{i}").as_str()));
            let secret = secrets.get_opt("victim-oauth-client").await.ok()??;
            let in_sync = secret.annotations().get("oauthapp.io/rotation-id") == status.rotation_id.as_ref()
                && secret.resource_version() == status.secret_resource_version;
            (status.rotation_count == count && in_sync).then_some((app, secret))
        })
        .await;
        let status = app.status.expect("status");
        assert_eq!(
            status.last_rotation_trigger.map(|t| t.as_str()),
            Some("SecretDrift")
        );
        assert!(our_params(status.client_secret_hash.as_deref().expect("hash")));
        assert_ne!(
            plaintext(&after),
            chosen.expose(),
            "the chosen secret was replaced"
        );
        assert_eq!(status.rotation_count, count, "the forged count was not taken");
        let last = status.last_rotation_time.expect("last rotation").0;
        assert!(
            last < jiff::Timestamp::now() + jiff::SignedDuration::from_secs(60),
            "{last}"
        );
        let next = status.next_rotation_time.expect("next rotation").0;
        assert!(
            next < jiff::Timestamp::now() + jiff::SignedDuration::from_hours(721),
            "the schedule still fires: {next}"
        );
        eventually(&format!("a SecretRepaired Warning: {reason}"), WAIT, || async {
            events(&admin, &ns, "victim")
                .await
                .into_iter()
                .any(|(t, r, n)| t == "Warning" && r == "SecretRepaired" && n.contains(reason))
                .then_some(())
        })
        .await;
    }
    drop(operator);
}

#[tokio::test]
async fn a_record_from_before_signatures_is_signed_once_without_a_rotation() {
    let ns = namespace("trust-legacy-record");
    let admin = admin_client().await;
    let mut operator = Operator::start(&control_plane().kubeconfig, &ns, &[], &[]);
    let apps: Api<OAuthApp> = Api::namespaced(admin.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &ns);
    assert!(apply(&ns, &app_manifest("old", None)).status.success());
    let (_, before) = settled(&apps, &secrets, "old", 1).await;
    operator.kill9();

    // The Secret as an operator without signatures wrote it.
    secrets
        .patch(
            "old-oauth-client",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"oauthapp.io/record-signature": null}}})),
        )
        .await
        .expect("strip the signature");
    let _operator = Operator::start(&control_plane().kubeconfig, &ns, &[], &[]);
    let signed = eventually("the record to be signed", WAIT, || async {
        let s = secrets.get_opt("old-oauth-client").await.ok()??;
        s.annotations()
            .contains_key("oauthapp.io/record-signature")
            .then_some(s)
    })
    .await;
    let (app, after) = settled(&apps, &secrets, "old", 1).await;
    assert_eq!(plaintext(&after), plaintext(&before), "no rotation");
    assert_eq!(plaintext(&signed), plaintext(&before));
    assert_eq!(app.status.expect("status").rotation_count, 1);
}

#[tokio::test]
async fn a_client_id_belongs_to_the_first_app_that_claims_it_and_stays_in_its_namespace() {
    let first_ns = namespace("trust-client-id-a");
    let second_ns = namespace("trust-client-id-b");
    let admin = admin_client().await;
    let _operator = Operator::start(
        &control_plane().kubeconfig,
        &format!("{first_ns},{second_ns}"),
        &[],
        &[],
    );

    // Generated ids are reserved.
    let out = apply(
        &first_ns,
        &app_manifest("squatter", Some("app_7n42DGM5Tflk9n8mt7Fhc7")),
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("reserved for generated ids"),
        "{}",
        stderr(&out)
    );

    let first_apps: Api<OAuthApp> = Api::namespaced(admin.clone(), &first_ns);
    let first_secrets: Api<Secret> = Api::namespaced(admin.clone(), &first_ns);
    let second_apps: Api<OAuthApp> = Api::namespaced(admin.clone(), &second_ns);
    let second_secrets: Api<Secret> = Api::namespaced(admin.clone(), &second_ns);
    assert!(
        apply(&first_ns, &app_manifest("portal", Some("shared-portal")))
            .status
            .success()
    );
    settled(&first_apps, &first_secrets, "portal", 1).await;

    // A later app in another namespace asks for the same id: no Secret, a clear condition.
    assert!(
        apply(&second_ns, &app_manifest("impostor", Some("shared-portal")))
            .status
            .success()
    );
    let app = eventually("the later claimant to be refused", WAIT, || async {
        let app = second_apps.get_opt("impostor").await.ok()??;
        let ready = app.ready_condition()?;
        (ready.status == "False" && ready.reason == "ClientIdConflict").then_some(app)
    })
    .await;
    let status = app.status.expect("status");
    assert_eq!(status.client_id, None, "the id is not published twice");
    assert_eq!(status.client_secret_hash, None);
    assert!(
        second_secrets
            .get_opt("impostor-oauth-client")
            .await
            .expect("get")
            .is_none()
    );
    let warning = eventually("a ClientIdConflict Warning", WAIT, || async {
        events(&admin, &second_ns, "impostor")
            .await
            .into_iter()
            .find(|(t, r, _)| t == "Warning" && r == "ClientIdConflict")
    })
    .await;
    assert!(
        !warning.2.contains(&first_ns),
        "the Warning names another namespace: {}",
        warning.2
    );
    assert!(
        warning.2.contains("already claimed by another OAuthApp"),
        "{}",
        warning.2
    );

    // The first app is deleted: the id stays reserved for its namespace. The same app applied
    // again there (a GitOps replace, a restore) gets it back; the impostor does not.
    first_apps
        .delete("portal", &Default::default())
        .await
        .expect("delete");
    assert!(
        apply(&first_ns, &app_manifest("portal", Some("shared-portal")))
            .status
            .success()
    );
    eventually("the re-created holder to get its id back", WAIT, || async {
        let app = first_apps.get_opt("portal").await.ok()??;
        let ready = app.ready_condition().is_some_and(|c| c.status == "True");
        (ready && app.status?.client_id.as_deref() == Some("shared-portal")).then_some(())
    })
    .await;
    let impostor = second_apps.get("impostor").await.expect("impostor");
    assert_eq!(
        impostor.ready_condition().map(|c| c.reason.as_str()),
        Some("ClientIdConflict")
    );

    // Deleted again, the id passes to another namespace only when a person says so, on the
    // record key Secret.
    first_apps
        .delete("portal", &Default::default())
        .await
        .expect("delete");
    annotate_record_key(&["oauthapp.io/release-client-id=shared-portal", "--overwrite"]);
    let (app, secret) = settled(&second_apps, &second_secrets, "impostor", 1).await;
    assert_eq!(
        app.status.expect("status").client_id.as_deref(),
        Some("shared-portal")
    );
    let data = secret.data.expect("data");
    assert_eq!(data["client_id"].0, b"shared-portal");
    annotate_record_key(&["oauthapp.io/release-client-id-"]);
}

/// `kubectl annotate` of the record key Secret the tests' operators share (in `default`).
fn annotate_record_key(args: &[&str]) {
    let mut annotate = vec![
        "annotate",
        "secret",
        "oauthapp-operator-record-key",
        "-n",
        "default",
    ];
    annotate.extend(args);
    control_plane().kubectl_ok(&annotate);
}

/// Pairs of apps in one namespace: each holder of an explicit client id, and a squatter
/// asking for the same id.
const PAIRS: usize = 6;

/// A namespace holds six apps with explicit client ids, and six squatters on the same ids, in
/// `ClientIdConflict`. Every app is deleted and all twelve are applied again at once, the
/// squatters first (a restore, a GitOps re-creation): apps created in the same second were
/// ordered by their random uids, and a squatter created first was the oldest. Each id goes back
/// to the name that held it (the ledger remembers it), every time.
#[tokio::test]
async fn apps_restored_at_once_give_each_client_id_back_to_the_name_that_held_it() {
    let ns = namespace("trust-restored-ids");
    let admin = admin_client().await;
    let _operator = Operator::start(&control_plane().kubeconfig, &ns, &[], &[]);
    let apps: Api<OAuthApp> = Api::namespaced(admin.clone(), &ns);
    let holders: Vec<String> = (0..PAIRS)
        .map(|i| app_manifest(&format!("portal-{i}"), Some(&format!("kept-{i}"))))
        .collect();
    let squatters: Vec<String> = (0..PAIRS)
        .map(|i| app_manifest(&format!("impostor-{i}"), Some(&format!("kept-{i}"))))
        .collect();
    let holds = |app: &OAuthApp, i: usize| {
        app.ready_condition().is_some_and(|c| c.status == "True")
            && app.status.as_ref().and_then(|s| s.client_id.as_deref()) == Some(format!("kept-{i}").as_str())
    };
    let conflicting = |app: &OAuthApp| {
        app.ready_condition()
            .is_some_and(|c| c.reason == "ClientIdConflict")
    };
    let all_settled = |what: &'static str| {
        let apps = apps.clone();
        async move {
            eventually(what, WAIT, || async {
                let list = apps.list(&Default::default()).await.ok()?;
                let by_name = |name: String| list.items.iter().find(|a| a.name_any() == name);
                let settled = (0..PAIRS).all(|i| {
                    by_name(format!("portal-{i}")).is_some_and(|a| holds(a, i))
                        && by_name(format!("impostor-{i}")).is_some_and(conflicting)
                });
                settled.then_some(())
            })
            .await
        }
    };
    assert!(apply(&ns, &holders.join("---\n")).status.success());
    eventually("the holders to hold their ids", WAIT, || async {
        let list = apps.list(&Default::default()).await.ok()?;
        let held = (0..PAIRS)
            .filter(|i| list.items.iter().any(|a| holds(a, *i)))
            .count();
        (held == PAIRS).then_some(())
    })
    .await;
    assert!(apply(&ns, &squatters.join("---\n")).status.success());
    all_settled("the squatters to be refused").await;

    control_plane().kubectl_ok(&["delete", "oauthapps", "--all", "-n", &ns, "--wait=true"]);
    let again: Vec<String> = squatters.iter().chain(&holders).cloned().collect();
    assert!(apply(&ns, &again.join("---\n")).status.success());
    all_settled("each id back with the name that held it").await;
}
