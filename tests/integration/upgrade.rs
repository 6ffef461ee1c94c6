//! Upgrades and downgrades cost no client its credentials (DESIGN.md, invariant 9). The
//! operator is installed at the previous version (0.1.0, built from this repository's history by
//! tests/tools/previous-operator.sh) with its own chart and CRD, as the chart's ServiceAccount;
//! then upgraded to this code, downgraded and upgraded again, as the CHANGELOG says: the CRD
//! first, `helm upgrade` (or `helm rollback`), and a rolling replacement of the replica, the old
//! and the new one running side by side with rotations in flight.
//!
//! Throughout: no secret replaced except by the rotations asked for, each exactly once; no
//! Secret data changed; no consumer restarted; every app Ready; every current and every
//! previous secret verifies, on every replica that runs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Secret;
use kube::api::ListParams;
use kube::{Api, ResourceExt};
use oauthapp_operator::model::crd::{OAuthApp, RotationTrigger};

use crate::support::*;

const WAIT: Duration = Duration::from_secs(180);
const SA: &str = "oauthapp-operator";
const APPS: usize = 200;
/// Deployments the consumer apps restart on a rotation (none of them is rotated).
const CONSUMERS: usize = 10;
/// Plain apps rotated in each of the three moves, while the old and the new replica both run.
const ROTATED_PER_MOVE: usize = 10;

/// The previous version's directory: its binary, and its source with the chart and the CRD.
fn previous() -> PathBuf {
    let out = Command::new(repo().join("tests/tools/previous-operator.sh"))
        .output()
        .expect("run tests/tools/previous-operator.sh");
    assert!(out.status.success(), "previous-operator.sh: {}", stderr(&out));
    PathBuf::from(stdout(&out).trim())
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Kind {
    /// Rotated once before the upgrade with a 24 h grace period: a previous secret mid-flight.
    Grace,
    /// Restarts a Deployment on each rotation.
    Consumers,
    /// Rotated by a schedule, not due during the test.
    Scheduled,
    /// Nothing special; some of them are rotated during the moves.
    Plain,
}

fn kind(i: usize) -> Kind {
    match i * 4 / APPS {
        0 => Kind::Grace,
        1 => Kind::Consumers,
        2 => Kind::Scheduled,
        _ => Kind::Plain,
    }
}

fn name(i: usize) -> String {
    format!("app-{i:03}")
}

fn manifest(i: usize) -> String {
    let spec = match kind(i) {
        Kind::Grace => "  rotation: {gracePeriod: 24h}\n".to_string(),
        Kind::Consumers => format!(
            "  rolloutRestartTargets:\n  - {{kind: Deployment, name: consumer-{}}}\n",
            i % CONSUMERS
        ),
        Kind::Scheduled => "  rotation: {interval: 720h}\n".to_string(),
        Kind::Plain => String::new(),
    };
    format!(
        "apiVersion: oauthapp.io/v1alpha1\nkind: OAuthApp\nmetadata:\n  name: {n}\nspec:\n  redirectUris: [\"https://{n}.example.com/cb\"]\n{spec}",
        n = name(i)
    )
}

fn deployment(i: usize) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: consumer-{i}\nspec:\n  replicas: 0\n  selector:\n    matchLabels: {{app: consumer-{i}}}\n  template:\n    metadata:\n      labels: {{app: consumer-{i}}}\n    spec:\n      containers:\n      - name: consumer\n        image: consumer:1\n"
    )
}

/// What the test knows of one app: the rotations it has had, its plaintexts, its Secret's data.
#[derive(Clone, Debug)]
struct Known {
    rotations: i64,
    client_id: String,
    app_id: String,
    current: String,
    previous: Option<String>,
    data: BTreeMap<String, Vec<u8>>,
    next_rotation: Option<String>,
}

struct Fleet<'a> {
    cp: &'a ControlPlane,
    ns: String,
    release_ns: String,
    apps: Api<OAuthApp>,
    secrets: Api<Secret>,
    client: kube::Client,
    kubeconfig: PathBuf,
    gateway: String,
    known: Vec<Known>,
}

fn data_of(secret: &Secret) -> BTreeMap<String, Vec<u8>> {
    secret
        .data
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect()
}

fn plaintext(data: &BTreeMap<String, Vec<u8>>) -> String {
    String::from_utf8(data["client_secret"].clone()).expect("utf-8 secret")
}

impl Fleet<'_> {
    fn start_replica(&self, binary: &Path) -> Operator {
        let rns = self.release_ns.as_str();
        let args = [
            "--record-key-namespace",
            rns,
            "--leader-elect",
            "--lease-namespace",
            rns,
            "--hash-memory-kib",
            "1024",
            "--hash-iterations",
            "1",
            // The verify rounds below make 250 calls at a time from one caller.
            "--rate-limit-per-caller",
            "10000",
            "--rate-limit-per-caller-burst",
            "10000",
            "--rate-limit-global",
            "10000",
            "--rate-limit-global-burst",
            "10000",
        ];
        Operator::start_binary(self.cp, binary, &self.kubeconfig, &self.ns, &args, &[])
    }

    /// Every app Ready, in sync with its Secret, with the rotations `expected` gives; the apps
    /// and their Secrets by index. On a timeout, says which app is not and why.
    async fn settled(&self, expected: &[i64]) -> Vec<(OAuthApp, Secret)> {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            match self.state(expected).await {
                Ok(settled) => return settled,
                Err(why) => assert!(
                    std::time::Instant::now() < deadline,
                    "timed out after {WAIT:?} waiting for every app Ready with the rotations asked for: {why}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn state(&self, expected: &[i64]) -> Result<Vec<(OAuthApp, Secret)>, String> {
        let apps = self
            .apps
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?;
        let secrets = self
            .secrets
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?;
        let mut secrets: BTreeMap<String, Secret> =
            secrets.items.into_iter().map(|s| (s.name_any(), s)).collect();
        let mut apps: BTreeMap<String, OAuthApp> =
            apps.items.into_iter().map(|a| (a.name_any(), a)).collect();
        let mut out = Vec::with_capacity(APPS);
        for (i, &rotations) in expected.iter().enumerate() {
            let app = apps
                .remove(&name(i))
                .ok_or_else(|| format!("{} is gone", name(i)))?;
            let status = app.status.clone().unwrap_or_default();
            let secret = status
                .secret_name
                .as_deref()
                .and_then(|n| secrets.remove(n))
                .ok_or_else(|| format!("{} has no Secret in its status", name(i)))?;
            let ready = app.ready_condition().is_some_and(|c| c.status == "True");
            let in_sync = secret.annotations().get("oauthapp.io/rotation-id") == status.rotation_id.as_ref()
                && secret.resource_version() == status.secret_resource_version;
            if !(ready && in_sync && status.rotation_count == rotations) {
                return Err(format!(
                    "{}: ready {ready}, in sync with its Secret {in_sync}, {} rotations of {rotations} (last {:?}); conditions {:?}",
                    name(i),
                    status.rotation_count,
                    status.last_rotation_trigger,
                    status
                        .conditions
                        .iter()
                        .map(|c| format!("{}={} {}: {}", c.type_, c.status, c.reason, c.message))
                        .collect::<Vec<_>>()
                ));
            }
            out.push((app, secret));
        }
        Ok(out)
    }

    /// Waits for the fleet to settle with `rotated` rotated once more than known, checks that
    /// nothing else changed, and learns the new state.
    async fn settle_and_check(&mut self, rotated: &[usize], moment: &str) {
        let mut expected: Vec<i64> = self.known.iter().map(|k| k.rotations).collect();
        for &i in rotated {
            expected[i] += 1;
        }
        let settled = self.settled(&expected).await;
        for (i, (app, secret)) in settled.into_iter().enumerate() {
            let status = app.status.clone().expect("status");
            let known = &mut self.known[i];
            let data = data_of(&secret);
            for condition in &status.conditions {
                assert!(
                    condition.type_ != "ManagedElsewhere" || condition.status != "True",
                    "{moment}: {} is taken for another installation's: {}",
                    name(i),
                    condition.message
                );
            }
            assert_eq!(
                status.client_id.as_ref(),
                Some(&known.client_id),
                "{moment}: {} client id",
                name(i)
            );
            assert_eq!(
                status.app_id.as_ref(),
                Some(&known.app_id),
                "{moment}: {} app id",
                name(i)
            );
            if rotated.contains(&i) {
                assert_eq!(
                    status.last_rotation_trigger,
                    Some(RotationTrigger::Annotation),
                    "{moment}: {} was rotated for the annotation, and only for it",
                    name(i)
                );
                assert_ne!(data, known.data, "{moment}: {} has a new secret", name(i));
                known.rotations += 1;
                known.current = plaintext(&data);
                known.data = data;
            } else {
                assert_eq!(
                    data,
                    known.data,
                    "{moment}: the Secret data of {} changed ({:?})",
                    name(i),
                    status.last_rotation_trigger
                );
            }
            if kind(i) == Kind::Grace {
                assert!(
                    status.previous_secret.is_some(),
                    "{moment}: {} lost its previous secret's grace period",
                    name(i)
                );
            }
            let next = status.next_rotation_time.map(|t| t.0.to_string());
            if kind(i) == Kind::Scheduled {
                assert!(next.is_some(), "{moment}: {} has no next rotation time", name(i));
            }
            assert_eq!(
                next,
                known.next_rotation,
                "{moment}: {} next rotation time",
                name(i)
            );
        }
    }

    /// One verify call to the replica on `port`: the answer's `secret` ("current", "previous"),
    /// or None when it is not valid for the right app.
    async fn verify(&self, port: u16, i: usize, secret: &str) -> Option<String> {
        let known = &self.known[i];
        let body = serde_json::json!({"client_id": known.client_id, "client_secret": secret}).to_string();
        let (code, text) = http_request_with_body(
            port,
            "POST",
            "/api/v1/oauth-apps/verify",
            &self.gateway,
            Some(&body),
        )
        .await?;
        assert_eq!(code, 200, "verify on {port}: {text}");
        let answer: serde_json::Value = serde_json::from_str(&text).expect("verify answers JSON");
        (answer["valid"] == true && answer["app_id"] == known.app_id.as_str())
            .then(|| answer["secret"].as_str().unwrap_or_default().to_string())
    }

    /// Every current and previous secret verifies on each of `replicas`, at the first call. Apps
    /// in `in_flight` (being rotated) are not asked about.
    async fn verify_all(&self, replicas: &[&Operator], in_flight: &[usize], moment: &str) {
        for replica in replicas {
            for i in (0..APPS).filter(|i| !in_flight.contains(i)) {
                let known = &self.known[i];
                assert_eq!(
                    self.verify(replica.api_port, i, &known.current).await.as_deref(),
                    Some("current"),
                    "{moment}: the current secret of {} on the replica at {}",
                    name(i),
                    replica.api_port
                );
                if let Some(previous) = &known.previous {
                    assert_eq!(
                        self.verify(replica.api_port, i, previous).await.as_deref(),
                        Some("previous"),
                        "{moment}: the previous secret of {} on the replica at {}",
                        name(i),
                        replica.api_port
                    );
                }
            }
        }
    }

    /// The just-rotated apps' new secrets verify on `replica` once its cache has them.
    async fn verify_rotated(&self, replica: &Operator, rotated: &[usize], moment: &str) {
        for &i in rotated {
            let current = self.known[i].current.clone();
            eventually(
                &format!("{moment}: the new secret of {} to verify", name(i)),
                WAIT,
                || async {
                    (self.verify(replica.api_port, i, &current).await.as_deref() == Some("current"))
                        .then_some(())
                },
            )
            .await;
        }
    }

    fn annotate_rotate(&self, apps: &[usize], value: &str) {
        for &i in apps {
            self.cp.kubectl_ok(&[
                "annotate",
                "oauthapp",
                &name(i),
                "-n",
                &self.ns,
                &format!("oauthapp.io/rotate={value}"),
                "--overwrite",
            ]);
        }
    }

    /// No consumer was restarted: each Deployment has its first ReplicaSet only, and a template
    /// the operator never touched.
    async fn no_consumer_restarted(&self, moment: &str) {
        let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), &self.ns);
        let sets: Api<ReplicaSet> = Api::namespaced(self.client.clone(), &self.ns);
        for d in 0..CONSUMERS {
            let deployment = deployments
                .get(&format!("consumer-{d}"))
                .await
                .expect("deployment");
            let template = deployment
                .spec
                .template
                .metadata
                .and_then(|m| m.annotations)
                .unwrap_or_default();
            assert!(
                !template.contains_key("oauthapp.io/restarted-for"),
                "{moment}: consumer-{d} was restarted: {template:?}"
            );
            let revisions = sets
                .list(&ListParams::default().labels(&format!("app=consumer-{d}")))
                .await
                .expect("list replicasets")
                .items
                .len();
            assert_eq!(revisions, 1, "{moment}: consumer-{d} has {revisions} ReplicaSets");
        }
    }
}

async fn wait_ready(operator: &Operator) {
    eventually("the replica's /readyz", WAIT, || async {
        http_get(operator.admin_port, "/readyz").await
    })
    .await;
}

async fn wait_leading(operator: &Operator) {
    eventually("the replica to lead", WAIT, || async {
        (operator.metric("oauthapp_leader").await? == 1.0).then_some(())
    })
    .await;
}

fn helm_ok(cp: &ControlPlane, args: &[&str]) {
    let out = cp.helm(args);
    assert!(out.status.success(), "helm {args:?}: {}", stderr(&out));
}

/// `helm upgrade` (`chart`) or `helm rollback`, with the values of the install.
fn chart_values(watched: &str) -> Vec<String> {
    [
        "--skip-crds".to_string(),
        "--set".into(),
        format!("watchNamespaces={{{watched}}}"),
        "--set".into(),
        "rbac.userRoles.create=false".into(),
        "--set".into(),
        "rotatorPolicy.enabled=false".into(),
        "--set".into(),
        "replicaCount=1".into(),
    ]
    .to_vec()
}

/// One move from the running replica `from` to a replica of `binary`: it starts beside `from`
/// (a standby: `from` leads), every secret verifies on both, `rotated` are asked for a rotation,
/// `from` is stopped while they are in flight, the new replica takes over and finishes them.
async fn move_to(
    fleet: &mut Fleet<'_>,
    mut from: Operator,
    binary: &Path,
    rotated: &[usize],
    moment: &str,
) -> Operator {
    let to = fleet.start_replica(binary);
    wait_ready(&to).await;
    fleet
        .verify_all(&[&from, &to], &[], &format!("{moment}, side by side"))
        .await;
    fleet.annotate_rotate(rotated, moment);
    fleet
        .verify_all(&[&from, &to], rotated, &format!("{moment}, rotations in flight"))
        .await;
    assert!(
        from.terminate(Duration::from_secs(60)).is_some(),
        "{moment}: the old replica exits on SIGTERM"
    );
    wait_leading(&to).await;
    fleet.settle_and_check(rotated, moment).await;
    fleet.verify_rotated(&to, rotated, moment).await;
    fleet.verify_all(&[&to], &[], &format!("{moment}, after")).await;
    fleet.no_consumer_restarted(moment).await;
    to
}

#[tokio::test]
async fn an_upgrade_a_downgrade_and_an_upgrade_again_replace_no_secret_and_restart_no_consumer() {
    let previous = previous();
    let previous_bin = previous.join("oauthapp-operator");
    let current_bin = PathBuf::from(env!("CARGO_BIN_EXE_oauthapp-operator"));
    for (binary, version) in [
        (&previous_bin, "0.1.0"),
        (&current_bin, env!("CARGO_PKG_VERSION")),
    ] {
        let out = Command::new(binary).arg("--version").output().expect("--version");
        assert_eq!(
            stdout(&out).trim(),
            format!("oauthapp-operator {version}"),
            "{}",
            binary.display()
        );
    }
    let private = PrivateControlPlane::start("upgrade");
    let cp = &private.0;

    // 0.1.0 as its users installed it: its CRD, its chart.
    let old_crd = previous.join("src/crds/oauthapps.oauthapp.io.yaml");
    cp.kubectl_ok(&["replace", "-f", old_crd.to_str().expect("utf-8 path")]);
    let release_ns = cp.namespace("upgrade-operator");
    let ns = cp.namespace("upgrade");
    let values = chart_values(&ns);
    let values: Vec<&str> = values.iter().map(String::as_str).collect();
    let old_chart = previous.join("src/charts/oauthapp-operator");
    let old_chart = old_chart.to_str().expect("utf-8 path");
    let mut install = vec![
        "install",
        "oauthapp-operator",
        old_chart,
        "--namespace",
        &release_ns,
    ];
    install.extend(&values);
    helm_ok(cp, &install);
    let kubeconfig = service_account_kubeconfig_on(cp, &release_ns, SA);
    let client = client_from(&cp.kubeconfig).await;

    // A caller of verify.
    cp.kubectl_ok(&["create", "serviceaccount", "gateway", "-n", &ns]);
    cp.apply_ok(
        &ns,
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata:\n  name: gateway\nrules:\n- apiGroups: [oauthapp.io]\n  resources: [oauthapps/verify]\n  verbs: [create]\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata:\n  name: gateway\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: gateway}\nsubjects: [{kind: ServiceAccount, name: gateway}]\n",
    );
    let gateway = cp.kubectl_ok(&["create", "token", "gateway", "-n", &ns, "--duration", "2h"]);

    let consumers: Vec<String> = (0..CONSUMERS).map(deployment).collect();
    cp.apply_ok(&ns, &consumers.join("---\n"));
    let manifests: Vec<String> = (0..APPS).map(manifest).collect();
    cp.apply_ok(&ns, &manifests.join("---\n"));

    let mut fleet = Fleet {
        cp,
        ns: ns.clone(),
        release_ns: release_ns.clone(),
        apps: Api::namespaced(client.clone(), &ns),
        secrets: Api::namespaced(client.clone(), &ns),
        client: client.clone(),
        kubeconfig,
        gateway: gateway.trim().to_string(),
        known: Vec::new(),
    };
    let first = fleet.start_replica(&previous_bin);
    wait_leading(&first).await;
    let created = fleet.settled(&[1; APPS]).await;
    fleet.known = created
        .iter()
        .map(|(app, secret)| {
            let status = app.status.clone().expect("status");
            let data = data_of(secret);
            Known {
                rotations: 1,
                client_id: status.client_id.expect("client id"),
                app_id: status.app_id.expect("app id"),
                current: plaintext(&data),
                previous: None,
                data,
                next_rotation: status.next_rotation_time.map(|t| t.0.to_string()),
            }
        })
        .collect();
    // The grace apps get their previous secret, valid for 24 h.
    let grace: Vec<usize> = (0..APPS).filter(|&i| kind(i) == Kind::Grace).collect();
    for &i in &grace {
        fleet.known[i].previous = Some(fleet.known[i].current.clone());
    }
    fleet.annotate_rotate(&grace, "before-upgrade");
    fleet.settle_and_check(&grace, "0.1.0").await;
    eventually("the consumers' first ReplicaSets", WAIT, || async {
        let sets: Api<ReplicaSet> = Api::namespaced(client.clone(), &ns);
        let n = sets.list(&ListParams::default()).await.ok()?.items.len();
        (n == CONSUMERS).then_some(())
    })
    .await;
    fleet.no_consumer_restarted("0.1.0").await;
    fleet.verify_all(&[&first], &[], "0.1.0").await;

    let plain: Vec<usize> = (0..APPS).filter(|&i| kind(i) == Kind::Plain).collect();
    let batches: Vec<&[usize]> = plain.chunks(ROTATED_PER_MOVE).take(3).collect();
    let new_crd = repo().join("crds/oauthapps.oauthapp.io.yaml");
    let new_crd = new_crd.to_str().expect("utf-8 path");

    // The upgrade, as CHANGELOG.md says: the CRD first, then the chart.
    cp.kubectl_ok(&["apply", "--server-side", "--force-conflicts", "-f", new_crd]);
    let mut upgrade = vec![
        "upgrade",
        "oauthapp-operator",
        "charts/oauthapp-operator",
        "--namespace",
        &release_ns,
    ];
    upgrade.extend(&values);
    helm_ok(cp, &upgrade);
    let second = move_to(
        &mut fleet,
        first,
        &current_bin,
        batches[0],
        "upgrade to this version",
    )
    .await;

    // The downgrade: the chart rolled back; the CRD stays (Helm never downgrades crds/).
    helm_ok(
        cp,
        &["rollback", "oauthapp-operator", "1", "--namespace", &release_ns],
    );
    let third = move_to(
        &mut fleet,
        second,
        &previous_bin,
        batches[1],
        "downgrade to 0.1.0",
    )
    .await;

    // And the upgrade again.
    helm_ok(cp, &upgrade);
    let fourth = move_to(&mut fleet, third, &current_bin, batches[2], "upgrade again").await;

    // The last replica repaired nothing: it took no record for drift.
    for trigger in ["SecretDrift", "SecretMissing"] {
        let line = format!("oauthapp_rotations_total{{trigger=\"{trigger}\",result=\"success\"}}");
        assert_eq!(fourth.metric(&line).await, Some(0.0), "{line}");
    }
    drop(fourth);
}
