//! Operations: leader election and failover, an API server that goes away and comes back,
//! metrics that move, and a bounded shutdown.

use std::time::{Duration, Instant};

use k8s_openapi::api::events::v1::Event;
use kube::Api;
use oauthapp_operator::model::crd::OAuthApp;

use crate::support::*;

const WAIT: Duration = Duration::from_secs(90);

const DEMO: &str = "apiVersion: oauthapp.io/v1alpha1\nkind: OAuthApp\nmetadata: {name: demo}\nspec:\n  redirectUris: [\"https://demo.example.com/cb\"]\n";

fn apply(cp: &ControlPlane, ns: &str, manifest: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("app.yaml");
    std::fs::write(&file, manifest).expect("write manifest");
    cp.kubectl_ok(&["apply", "-n", ns, "-f", file.to_str().expect("utf-8")]);
}

/// Waits until the app is Ready with `count` rotations; returns it.
async fn rotated(apps: &Api<OAuthApp>, count: i64) -> OAuthApp {
    eventually(
        &format!("app demo Ready with rotationCount {count}"),
        WAIT,
        || async {
            let app = apps.get_opt("demo").await.ok()??;
            let ready = app.ready_condition().is_some_and(|c| c.status == "True");
            (ready && app.status.as_ref()?.rotation_count == count).then_some(app)
        },
    )
    .await
}

async fn leader_gauge(op: &Operator) -> Option<f64> {
    op.metric("oauthapp_leader").await
}

#[tokio::test]
async fn when_the_leader_is_killed_the_standby_takes_over_and_finishes_the_rotation() {
    let ns = namespace("failover");
    let cp = control_plane();
    let apps: Api<OAuthApp> = Api::namespaced(admin_client().await, &ns);
    let args = [
        "--leader-elect",
        "--lease-namespace",
        ns.as_str(),
        "--lease-duration",
        "4s",
    ];
    let mut first = Operator::start(&cp.kubeconfig, &ns, &args, &[]);
    let mut second = Operator::start(&cp.kubeconfig, &ns, &args, &[]);

    // Exactly one leads; the other only serves.
    let (leader_is_first, _) = eventually("one leader", WAIT, || async {
        let (a, b) = (leader_gauge(&first).await?, leader_gauge(&second).await?);
        match (a, b) {
            (1.0, 0.0) => Some((true, ())),
            (0.0, 1.0) => Some((false, ())),
            _ => None,
        }
    })
    .await;
    apply(cp, &ns, DEMO);
    rotated(&apps, 1).await;
    let (leader, standby) = if leader_is_first {
        (&mut first, &mut second)
    } else {
        (&mut second, &mut first)
    };
    assert_eq!(
        standby.metric("oauthapp_reconciles_total").await,
        Some(0.0),
        "only the leader reconciles"
    );
    let holder = lease_holder(cp, &ns);
    assert!(
        holder.ends_with(&format!("-{}", leader.pid())),
        "lease holder {holder} is the leader"
    );

    leader.kill9();
    let killed_at = Instant::now();
    cp.kubectl_ok(&[
        "annotate",
        "oauthapp",
        "demo",
        "-n",
        &ns,
        "oauthapp.io/rotate=failover",
        "--overwrite",
    ]);
    let app = rotated(&apps, 2).await;
    assert_eq!(
        app.status.and_then(|s| s.observed_rotate_token).as_deref(),
        Some("failover")
    );
    assert_eq!(leader_gauge(standby).await, Some(1.0), "the standby leads now");
    eprintln!(
        "failover: rotation completed {:?} after the leader was killed (lease 4s)",
        killed_at.elapsed()
    );
}

#[tokio::test]
async fn the_operator_rides_out_an_api_server_restart() {
    let private = PrivateControlPlane::start("restart");
    let cp = &private.0;
    let ns = cp.namespace("outage");
    let apps: Api<OAuthApp> = Api::namespaced(client_from(&cp.kubeconfig).await, &ns);
    let operator = Operator::start_on(cp, &cp.kubeconfig, &ns, &[], &[]);
    apply(cp, &ns, DEMO);
    rotated(&apps, 1).await;

    cp.apiserver("stop");
    // Meanwhile the process stays up, and the REST API says the API server is unavailable.
    let (code, body) = eventually("a 503 from the REST API", WAIT, || async {
        let answer = http_get_with_token(operator.api_port, "/api/v1/oauth-apps", "some-token").await?;
        (answer.0 == 503).then_some(answer)
    })
    .await;
    assert_eq!(code, 503);
    assert!(body.contains("\"code\""), "a JSON error: {body}");
    assert!(
        operator.metric("oauthapp_reconciles_total").await.is_some(),
        "the admin server still answers"
    );
    cp.apiserver("start");

    cp.kubectl_ok(&[
        "annotate",
        "oauthapp",
        "demo",
        "-n",
        &ns,
        "oauthapp.io/rotate=after-outage",
        "--overwrite",
    ]);
    let app = rotated(&apps, 2).await;
    assert_eq!(
        app.status.and_then(|s| s.observed_rotate_token).as_deref(),
        Some("after-outage")
    );
    // A deleted Secret is noticed too: the watches are back, not just the writes.
    cp.kubectl_ok(&["delete", "secret", "demo-oauth-client", "-n", &ns]);
    rotated(&apps, 3).await;
}

#[tokio::test]
async fn metrics_count_rotations_by_trigger() {
    let ns = namespace("metrics");
    let cp = control_plane();
    let apps: Api<OAuthApp> = Api::namespaced(admin_client().await, &ns);
    let operator = Operator::start(&cp.kubeconfig, &ns, &[], &[]);
    apply(cp, &ns, DEMO);
    rotated(&apps, 1).await;
    let annotation = r#"oauthapp_rotations_total{trigger="Annotation",result="success"}"#;
    assert_eq!(operator.metric(annotation).await, Some(0.0));
    assert_eq!(
        operator
            .metric(r#"oauthapp_rotations_total{trigger="Created",result="success"}"#)
            .await,
        Some(1.0)
    );

    cp.kubectl_ok(&[
        "annotate",
        "oauthapp",
        "demo",
        "-n",
        &ns,
        "oauthapp.io/rotate=m1",
        "--overwrite",
    ]);
    rotated(&apps, 2).await;
    assert_eq!(operator.metric(annotation).await, Some(1.0));
    assert_eq!(
        operator.metric("oauthapp_rotation_duration_seconds_count").await,
        Some(2.0)
    );
    let ready = eventually("the apps gauge", WAIT, || async {
        let v = operator.metric(r#"oauthapp_apps{ready="true"}"#).await?;
        (v == 1.0).then_some(v)
    })
    .await;
    assert_eq!(ready, 1.0);
    assert_eq!(operator.metric("oauthapp_leader").await, Some(1.0));
    let text = operator.metrics().await.expect("metrics");
    assert!(
        text.contains("# TYPE oauthapp_reconcile_duration_seconds histogram"),
        "{text}"
    );
}

#[tokio::test]
async fn sigterm_stops_the_operator_promptly_and_cleanly() {
    let ns = namespace("sigterm");
    let cp = control_plane();
    let apps: Api<OAuthApp> = Api::namespaced(admin_client().await, &ns);
    let mut operator = Operator::start(&cp.kubeconfig, &ns, &[], &[]);
    apply(cp, &ns, DEMO);
    rotated(&apps, 1).await;
    let started = Instant::now();
    let status = operator
        .terminate(Duration::from_secs(25))
        .expect("the operator exits within its drain timeout");
    assert!(status.success(), "exit status {status}");
    eprintln!("sigterm: exited in {:?}", started.elapsed());
    assert!(operator.log_text().contains("stopped"), "it says it stopped");
    // The audit Event of the rotation, published in the background, was not lost to the exit.
    let events: Api<Event> = Api::namespaced(admin_client().await, &ns);
    let reasons: Vec<String> = events
        .list(&Default::default())
        .await
        .expect("list events")
        .items
        .into_iter()
        .filter_map(|e| e.reason)
        .collect();
    assert!(reasons.iter().any(|r| r == "SecretCreated"), "{reasons:?}");
}
