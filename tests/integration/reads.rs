//! What a rotation asks of the API server. From watch caches that are current, a rotation makes
//! its two writes (the Secret, then the status) and reads nothing; from a cache behind the API
//! server, its conditional Secret write is refused (409), it reads fresh and rotates from that,
//! and nothing another writer put in the Secret is lost. The API server's audit log counts the
//! requests of the operator's ServiceAccount.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use oauthapp_operator::model::crd::{CLIENT_SECRET_KEY, OAuthApp};

use crate::support::*;

const WAIT: Duration = Duration::from_secs(120);
const SA: &str = "operator";
const FOREIGN: &str = "example.com/owner-note";

fn app_manifest(name: &str) -> String {
    format!("apiVersion: oauthapp.io/v1alpha1\nkind: OAuthApp\nmetadata:\n  name: {name}\nspec: {{}}\n")
}

fn rotation_id(app: &OAuthApp) -> Option<String> {
    app.status.as_ref()?.rotation_id.clone()
}

/// The operator's requests on apps and Secrets in `ns` (verb, resource, code) received at or
/// after `since`, in the order the API server received them.
fn app_and_secret_requests(
    cp: &ControlPlane,
    user: &str,
    ns: &str,
    since: Timestamp,
) -> Vec<(String, String, i64)> {
    let mut requests: Vec<AuditRequest> = audit_requests(cp, user)
        .into_iter()
        .filter(|r| r.stage == "ResponseComplete" && r.received >= since && r.namespace == ns)
        .filter(|r| r.resource == "oauthapps" || r.resource == "secrets")
        .collect();
    requests.sort_by_key(|r| r.received);
    requests
        .into_iter()
        .map(|r| (r.verb, r.resource, r.code))
        .collect()
}

fn count(requests: &[(String, String, i64)], verb: &str, resource: &str) -> usize {
    requests
        .iter()
        .filter(|(v, r, _)| v == verb && r == resource)
        .count()
}

/// The status and body of `POST /api/v1/oauth-apps/{id}/rotate`.
async fn rotate(operator: &Operator, app: &OAuthApp, token: &str) -> (u16, String) {
    let uid = uuid::Uuid::parse_str(&app.uid().expect("uid")).expect("uuid");
    let id = oauthapp_operator::model::id::encode(uid);
    http_request(
        operator.api_port,
        "POST",
        &format!("/api/v1/oauth-apps/{id}/rotate"),
        token,
    )
    .await
    .expect("rotate answered")
}

async fn ready(apps: &Api<OAuthApp>, name: &str) -> OAuthApp {
    eventually("the app Ready", WAIT, || async {
        let app = apps.get(name).await.ok()?;
        (app.ready_condition()?.status == "True").then_some(app)
    })
    .await
}

/// Adds an annotation of someone else's to the app's Secret, as `kubectl annotate` would.
async fn annotate_secret(secrets: &Api<Secret>, name: &str, value: &str) {
    let patch = serde_json::json!({"metadata": {"annotations": {FOREIGN: value}}});
    secrets
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("annotate the Secret");
}

#[tokio::test]
async fn a_rotation_reads_nothing_from_current_caches_and_reads_fresh_after_a_refused_write() {
    let private = PrivateControlPlane::start_with("reads", &["--audit"]);
    let cp = &private.0;
    let ns = cp.namespace("reads");
    cp.kubectl_ok(&["create", "serviceaccount", SA, "-n", &ns]);
    cp.kubectl_ok(&[
        "create",
        "clusterrolebinding",
        "reads-operator",
        "--clusterrole=cluster-admin",
        &format!("--serviceaccount={ns}:{SA}"),
    ]);
    let kubeconfig = service_account_kubeconfig_on(cp, &ns, SA);
    let user = format!("system:serviceaccount:{ns}:{SA}");
    // The caller of the REST API: the same ServiceAccount (it may do anything).
    let token = cp
        .kubectl_ok(&["create", "token", SA, "-n", &ns, "--duration=1h"])
        .trim()
        .to_string();
    let client = client_from(&cp.kubeconfig).await;
    let apps: Api<OAuthApp> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);

    // 1. Current caches: provisioning, an annotation rotation and a REST rotation read nothing.
    let mut operator = Operator::start_on(cp, &kubeconfig, &ns, &[], &[]);
    eventually("the operator ready", WAIT, || async {
        http_get(operator.admin_port, "/readyz").await
    })
    .await;
    let since = Timestamp::now();
    for name in ["by-annotation", "by-rest", "stale-rest", "stale-annotation"] {
        cp.apply_ok(&ns, &app_manifest(name));
    }
    let mut provisioned = Vec::new();
    for name in ["by-annotation", "by-rest", "stale-rest", "stale-annotation"] {
        provisioned.push(ready(&apps, name).await);
    }
    let before = rotation_id(&provisioned[0]);
    cp.kubectl_ok(&[
        "annotate",
        "oauthapp",
        "by-annotation",
        "-n",
        &ns,
        "oauthapp.io/rotate=r1",
    ]);
    eventually("the annotation rotation", WAIT, || async {
        let app = apps.get("by-annotation").await.ok()?;
        (rotation_id(&app) != before && app.ready_condition()?.status == "True").then_some(())
    })
    .await;
    let (code, body) = rotate(&operator, &provisioned[1], &token).await;
    assert_eq!(code, 200, "{body}");
    eventually("the REST rotation's status", WAIT, || async {
        let app = apps.get("by-rest").await.ok()?;
        (rotation_id(&app) != rotation_id(&provisioned[1])).then_some(())
    })
    .await;
    let requests = app_and_secret_requests(cp, &user, &ns, since);
    assert_eq!(count(&requests, "get", "oauthapps"), 0, "{requests:?}");
    assert_eq!(count(&requests, "get", "secrets"), 0, "{requests:?}");
    // 4 first secrets, then 2 rotations: a Secret write and a status write each.
    assert_eq!(count(&requests, "create", "secrets"), 4, "{requests:?}");
    assert_eq!(count(&requests, "update", "secrets"), 2, "{requests:?}");
    assert_eq!(count(&requests, "update", "oauthapps"), 6, "{requests:?}");
    assert!(
        requests.iter().all(|(_, _, code)| (200..300).contains(code)),
        "{requests:?}"
    );

    // 2. A Secret cache held 20 s behind the API server (a slow watch). Someone annotates two
    // Secrets, then a REST rotation and an annotation rotation come before the cache sees it.
    operator.kill9();
    let operator = Operator::start_on(
        cp,
        &kubeconfig,
        &ns,
        &[],
        &[("OAUTHAPP_FAILPOINT", "stale-secret-cache=20s")],
    );
    eventually("the operator ready", WAIT, || async {
        http_get(operator.admin_port, "/readyz").await
    })
    .await;
    let since = Timestamp::now();
    let (rest_secret_name, annotated_secret_name) =
        (provisioned[2].secret_name(), provisioned[3].secret_name());
    annotate_secret(&secrets, &rest_secret_name, "keep-1").await;
    annotate_secret(&secrets, &annotated_secret_name, "keep-2").await;
    let (code, body) = rotate(&operator, &provisioned[2], &token).await;
    assert_eq!(code, 200, "{body}");
    let answered: serde_json::Value = serde_json::from_str(&body).expect("json");
    let new_secret = answered["client_secret"].as_str().expect("client_secret");
    cp.kubectl_ok(&[
        "annotate",
        "oauthapp",
        "stale-annotation",
        "-n",
        &ns,
        "oauthapp.io/rotate=r1",
    ]);
    let rotated = eventually("the annotation rotation from a stale cache", WAIT, || async {
        let app = apps.get("stale-annotation").await.ok()?;
        (rotation_id(&app) != rotation_id(&provisioned[3]) && app.ready_condition()?.status == "True")
            .then_some(app)
    })
    .await;

    // Both rotations happened once, and kept the other writer's annotation.
    let rest_app = apps.get("stale-rest").await.expect("app");
    let rest_status = rest_app.status.as_ref().expect("status");
    assert_ne!(
        rest_status.rotation_id,
        provisioned[2].status.as_ref().unwrap().rotation_id
    );
    let rest_secret = secrets.get(&rest_secret_name).await.expect("secret");
    assert_eq!(
        rest_secret.data.as_ref().unwrap()[CLIENT_SECRET_KEY].0,
        new_secret.as_bytes(),
        "the Secret holds the secret the caller was given"
    );
    assert!(independently_verifies(
        rest_status.client_secret_hash.as_deref().expect("hash"),
        new_secret
    ));
    assert_eq!(
        rest_secret.annotations().get(FOREIGN).map(String::as_str),
        Some("keep-1")
    );
    let annotated_secret = secrets.get(&annotated_secret_name).await.expect("secret");
    assert_eq!(
        annotated_secret.annotations().get(FOREIGN).map(String::as_str),
        Some("keep-2")
    );
    assert_eq!(rotated.status.as_ref().unwrap().rotation_count, 2);

    // Each rotation: its Secret write refused (409), then fresh reads, then the write again.
    let requests = app_and_secret_requests(cp, &user, &ns, since);
    let refused: Vec<usize> = requests
        .iter()
        .enumerate()
        .filter(|(_, (v, r, code))| v == "update" && r == "secrets" && *code == 409)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(refused.len(), 2, "{requests:?}");
    for at in refused {
        let after = &requests[at + 1..];
        let read = after
            .iter()
            .position(|(v, r, _)| v == "get" && r == "secrets")
            .unwrap_or_else(|| panic!("a fresh read after the refused write: {requests:?}"));
        assert!(
            after[read..]
                .iter()
                .any(|(v, r, code)| v == "update" && r == "secrets" && *code == 200),
            "the write again after the fresh read: {requests:?}"
        );
    }
    assert_eq!(
        requests
            .iter()
            .filter(|(v, r, code)| v == "update" && r == "secrets" && *code == 200)
            .count(),
        2,
        "one Secret write per rotation: {requests:?}"
    );
}
