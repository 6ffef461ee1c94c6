//! Consumers follow a rotation: each `spec.rolloutRestartTargets` entry is restarted exactly once
//! per rotation, and kube-controller-manager's deployment controller shows it as one new
//! ReplicaSet revision. The operator runs as the chart's ServiceAccount with the chart's RBAC;
//! the API server's audit log counts what it asked for.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::ReplicaSet;
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};
use oauthapp_operator::model::crd::OAuthApp;

use crate::support::*;

const WAIT: Duration = Duration::from_secs(120);
const SA: &str = "oauthapp-operator";

/// Installs the chart (RBAC for `watched` only, no cluster-scoped roles for people) into
/// `release_ns` of `cp`, with the pinned helm.
fn install_chart(cp: &ControlPlane, release_ns: &str, watched: &str) {
    let out = cp.helm(&[
        "install",
        "oauthapp-operator",
        "charts/oauthapp-operator",
        "--namespace",
        release_ns,
        "--skip-crds",
        "--set",
        &format!("watchNamespaces={{{watched}}}"),
        "--set",
        "rbac.userRoles.create=false",
        "--set",
        "rotatorPolicy.enabled=false",
        "--set",
        "restartTargetsPolicy.enabled=false",
        "--set",
        "replicaCount=1",
    ]);
    assert!(out.status.success(), "helm install: {}", stderr(&out));
}

/// A Deployment with no replicas: the deployment controller still makes a ReplicaSet for each
/// template, which is all this test looks at (no kubelet needed).
fn deployment(name: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {name}\nspec:\n  replicas: 0\n  selector:\n    matchLabels: {{app: {name}}}\n  template:\n    metadata:\n      labels: {{app: {name}}}\n    spec:\n      containers:\n      - name: consumer\n        image: consumer:1\n"
    )
}

/// The ReplicaSets of Deployment `name`: revision → the template's `oauthapp.io/restarted-for`.
async fn revisions(client: &Client, ns: &str, name: &str) -> BTreeMap<i64, Option<String>> {
    let sets: Api<ReplicaSet> = Api::namespaced(client.clone(), ns);
    sets.list(&ListParams::default().labels(&format!("app={name}")))
        .await
        .expect("list replicasets")
        .items
        .into_iter()
        .filter_map(|rs| {
            let revision = rs
                .annotations()
                .get("deployment.kubernetes.io/revision")?
                .parse()
                .ok()?;
            let restarted_for = rs
                .spec
                .template
                .and_then(|t| t.metadata)
                .and_then(|m| m.annotations)
                .and_then(|a| a.get("oauthapp.io/restarted-for").cloned());
            Some((revision, restarted_for))
        })
        .collect()
}

fn rotation_id(app: &OAuthApp) -> Option<String> {
    app.status.as_ref()?.rotation_id.clone()
}

fn consumers_condition(app: &OAuthApp) -> Option<(String, String, String)> {
    app.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "ConsumersRestarted")
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

fn annotate(cp: &ControlPlane, ns: &str, key: &str, value: &str) {
    cp.kubectl_ok(&[
        "annotate",
        "oauthapp",
        "web-client",
        "-n",
        ns,
        &format!("{key}={value}"),
        "--overwrite",
    ]);
}

/// Audited requests by the operator's ServiceAccount received at or after `since`.
fn requests_since(cp: &ControlPlane, user: &str, since: Timestamp) -> Vec<AuditRequest> {
    audit_requests(cp, user)
        .into_iter()
        .filter(|r| r.stage == "ResponseComplete" && r.received >= since)
        .collect()
}

/// Patches of Deployments that were applied (a missing target's 404 changes nothing).
fn patches_of(requests: &[AuditRequest]) -> usize {
    requests
        .iter()
        .filter(|r| r.verb == "patch" && r.resource == "deployments" && r.code == 200)
        .count()
}

fn start_operator(cp: &ControlPlane, kubeconfig: &Path, ns: &str, release_ns: &str) -> Operator {
    Operator::start_on(cp, kubeconfig, ns, &["--record-key-namespace", release_ns], &[])
}

#[tokio::test]
async fn each_rotation_restarts_each_target_once_and_a_missing_target_is_restarted_when_it_appears() {
    let private = PrivateControlPlane::start_with("consumers", &["--audit"]);
    let cp = &private.0;
    let release_ns = cp.namespace("consumers-operator");
    let ns = cp.namespace("consumers");
    install_chart(cp, &release_ns, &ns);
    let kubeconfig = service_account_kubeconfig_on(cp, &release_ns, SA);
    let user = format!("system:serviceaccount:{release_ns}:{SA}");
    let client = client_from(&cp.kubeconfig).await;
    let apps: Api<OAuthApp> = Api::namespaced(client.clone(), &ns);

    for name in ["web", "api"] {
        cp.apply_ok(&ns, &deployment(name));
    }
    // Three targets, `later` not there yet; a grace period, so the old secret still verifies
    // while the pods move to the new one.
    cp.apply_ok(
        &ns,
        "apiVersion: oauthapp.io/v1alpha1\nkind: OAuthApp\nmetadata:\n  name: web-client\nspec:\n  rotation:\n    gracePeriod: 1h\n  rolloutRestartTargets:\n  - {kind: Deployment, name: web}\n  - {kind: Deployment, name: api}\n  - {kind: Deployment, name: later}\n",
    );
    let mut operator = start_operator(cp, &kubeconfig, &ns, &release_ns);
    let first = eventually("the first secret", WAIT, || async {
        let app = apps.get("web-client").await.ok()?;
        let ready = app.ready_condition()?.status == "True";
        ready.then_some(app)
    })
    .await;
    for name in ["web", "api"] {
        eventually("revision 1 of each Deployment", WAIT, || async {
            (revisions(&client, &ns, name).await == BTreeMap::from([(1, None)])).then_some(())
        })
        .await;
    }
    // The first secret restarts nothing: no consumer had an older one.
    assert_eq!(consumers_condition(&first), None);
    assert_eq!(patches_of(&audit_requests(cp, &user)), 0);

    // A rotation: revision 2 of each present target, carrying the rotation id; the missing one
    // is reported, and does not hold the rotation back.
    annotate(cp, &ns, "oauthapp.io/rotate", "r1");
    let app = eventually(
        "ConsumersRestarted=False for the missing target",
        WAIT,
        || async {
            let app = apps.get("web-client").await.ok()?;
            let (status, reason, _) = consumers_condition(&app)?;
            (rotation_id(&app) != rotation_id(&first) && status == "False" && reason == "TargetNotFound")
                .then_some(app)
        },
    )
    .await;
    let r1 = rotation_id(&app).expect("rotation id");
    let (_, _, message) = consumers_condition(&app).expect("condition");
    assert!(message.contains("Deployment/later: not found"), "{message}");
    assert!(
        app.status
            .as_ref()
            .and_then(|s| s.previous_secret.as_ref())
            .is_some(),
        "the restarts begin while the previous secret is still valid"
    );
    for name in ["web", "api"] {
        eventually("revision 2, for the rotation", WAIT, || async {
            (revisions(&client, &ns, name).await == BTreeMap::from([(1, None), (2, Some(r1.clone()))]))
                .then_some(())
        })
        .await;
    }
    eventually("a Warning about the missing target", WAIT, || async {
        events_about(&client, &ns, "web-client")
            .await
            .iter()
            .any(|(t, reason, note)| {
                t == "Warning" && reason == "ConsumerRestartFailed" && note.contains("later")
            })
            .then_some(())
    })
    .await;

    // The target appears: it is restarted for the current rotation (its template does not carry
    // the id yet), on the next retry of the backoff.
    cp.apply_ok(&ns, &deployment("later"));
    eventually(
        "the late target restarted for the current rotation",
        WAIT,
        || async {
            let app = apps.get("web-client").await.ok()?;
            let (status, reason, _) = consumers_condition(&app)?;
            (status == "True" && reason == "Restarted").then_some(())
        },
    )
    .await;
    eventually("revision 2 of the late target", WAIT, || async {
        (revisions(&client, &ns, "later").await == BTreeMap::from([(1, None), (2, Some(r1.clone()))]))
            .then_some(())
    })
    .await;
    let patched_for_r1 = patches_of(&audit_requests(cp, &user));

    // A restarted operator and a no-op change of the app patch nothing and roll out nothing.
    operator.kill9();
    let restarted_at = Timestamp::now();
    operator = start_operator(cp, &kubeconfig, &ns, &release_ns);
    eventually("the restarted operator to be ready", WAIT, || async {
        http_get(operator.admin_port, "/readyz").await
    })
    .await;
    let reconciles = eventually("a first reconcile", WAIT, || async {
        operator
            .metric("oauthapp_reconciles_total")
            .await
            .filter(|n| *n >= 1.0)
    })
    .await;
    annotate(cp, &ns, "example.com/touched", "yes");
    eventually("the no-op change reconciled", WAIT, || async {
        operator
            .metric("oauthapp_reconciles_total")
            .await
            .filter(|n| *n > reconciles)
    })
    .await;
    let after_restart = requests_since(cp, &user, restarted_at);
    assert!(
        after_restart.iter().all(|r| r.verb != "patch"),
        "no patch after a restart or a resync: {after_restart:#?}"
    );
    for name in ["web", "api", "later"] {
        assert_eq!(
            revisions(&client, &ns, name).await.len(),
            2,
            "{name}: no revision 3 without a rotation"
        );
    }

    // A second rotation: revision 3 everywhere, one patch per target. Count everything the
    // operator asked the API server for, from the annotation to the restarts being recorded.
    let asked_at = Timestamp::now();
    annotate(cp, &ns, "oauthapp.io/rotate", "r2");
    let app = eventually("the second rotation's restarts recorded", WAIT, || async {
        let app = apps.get("web-client").await.ok()?;
        let done = app.status.as_ref()?.rollout_restarts.as_ref()?;
        (done.rotation_id != r1
            && Some(&done.rotation_id) == rotation_id(&app).as_ref()
            && done.targets.len() == 3)
            .then_some(app)
    })
    .await;
    let r2 = rotation_id(&app).expect("rotation id");
    let history: Vec<_> = app
        .status
        .as_ref()
        .expect("status")
        .history
        .iter()
        .map(|e| (e.rotation_id.clone(), e.trigger.as_str()))
        .collect();
    for name in ["web", "api", "later"] {
        eventually("revision 3, for the second rotation", WAIT, || async {
            (revisions(&client, &ns, name).await.get(&3) == Some(&Some(r2.clone()))).then_some(())
        })
        .await;
    }
    let requests = requests_since(cp, &user, asked_at);
    assert_eq!(patches_of(&requests), 3, "one patch per target: {requests:#?}");
    assert_eq!(patched_for_r1, 3, "the first rotation patched each target once");
    let mut by_kind: BTreeMap<String, usize> = BTreeMap::new();
    for r in &requests {
        *by_kind.entry(format!("{} {}", r.verb, r.resource)).or_default() += 1;
    }
    eprintln!(
        "API requests by the operator for one rotation with three restart targets: {} {by_kind:?}",
        requests.len()
    );
    // A crash between the Secret write and the status write (so before any restart): the
    // operator that picks up restarts each target once, for that rotation.
    operator.kill9();
    operator = Operator::start_on(
        cp,
        &kubeconfig,
        &ns,
        &["--record-key-namespace", &release_ns],
        &[("OAUTHAPP_FAILPOINT", "pause-after-secret-write")],
    );
    annotate(cp, &ns, "oauthapp.io/rotate", "r3");
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), &ns);
    let r3 = eventually("the third rotation's Secret write", WAIT, || async {
        let secret = secrets.get("web-client-oauth-client").await.ok()?;
        let id = secret.annotations().get("oauthapp.io/rotation-id")?.clone();
        (id != r2).then_some(id)
    })
    .await;
    operator.kill9();
    let crashed_at = Timestamp::now();
    let _operator = start_operator(cp, &kubeconfig, &ns, &release_ns);
    eventually("the third rotation's restarts recorded", WAIT, || async {
        let app = apps.get("web-client").await.ok()?;
        let done = app.status.as_ref()?.rollout_restarts.as_ref()?;
        (done.rotation_id == r3 && done.targets.len() == 3).then_some(())
    })
    .await;
    for name in ["web", "api", "later"] {
        eventually("revision 4, for the third rotation", WAIT, || async {
            let revisions = revisions(&client, &ns, name).await;
            (revisions.len() == 4 && revisions.get(&4) == Some(&Some(r3.clone()))).then_some(())
        })
        .await;
    }
    assert_eq!(patches_of(&requests_since(cp, &user, crashed_at)), 3);

    // The history showed both rotations and the first secret, newest first.
    assert_eq!(
        history,
        [
            (r2, "Annotation"),
            (r1, "Annotation"),
            (rotation_id(&first).expect("first id"), "Created"),
        ]
    );
}
