//! The Helm chart, as a platform team meets it: lint and render it with their values, install it,
//! and check that the RBAC it grants is what the operator needs and nothing more — by asking the
//! API server (`kubectl auth can-i`) and by running the operator with nothing but the chart's
//! ServiceAccount.
//!
//! The last test also calls the REST API of that operator (`POST .../rotate` as a CI
//! ServiceAccount), so the chart's TokenReview/SubjectAccessReview rules are exercised end to end.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::api::ListParams;
use kube::{Api, ResourceExt};
use oauthapp_operator::model::crd::OAuthApp;
use oauthapp_operator::model::secret;
use serde::Deserialize;
use serde_json::Value;

use crate::support::*;

const WAIT: Duration = Duration::from_secs(60);
const CHART: &str = "charts/oauthapp-operator";
/// The release name every test installs; cluster-scoped names also carry the release namespace.
const RELEASE: &str = "oauthapp-operator";
/// The chart's ServiceAccount for release `RELEASE`.
const SA: &str = "oauthapp-operator";

const NAMESPACED_TLS_VALUES: &str = "charts/oauthapp-operator/ci/namespaced-tls-values.yaml";
const CERT_MANAGER_VALUES: &str = "charts/oauthapp-operator/ci/cert-manager-values.yaml";

// --- helm and kubectl ----------------------------------------------------------------------------

/// Runs the pinned helm against the test cluster ([`ControlPlane::helm`]).
fn helm(args: &[&str]) -> Output {
    control_plane().helm(args)
}

fn helm_ok(args: &[&str]) -> String {
    let out = helm(args);
    assert!(
        out.status.success(),
        "helm {args:?} failed: {}{}",
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

/// `helm template` into namespace `oauthapp-system`: the rendered text and its documents.
fn render(extra: &[&str]) -> (String, Vec<Value>) {
    let mut args = vec!["template", RELEASE, CHART, "--namespace", "oauthapp-system"];
    args.extend_from_slice(extra);
    let text = helm_ok(&args);
    let docs = serde_norway::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).expect("rendered YAML parses"))
        .filter(|v| !v.is_null())
        .collect();
    (text, docs)
}

/// `helm install` of the chart into `ns` (the fixture has installed the CRD already).
fn install(ns: &str, extra: &[&str]) {
    let mut args = vec!["install", RELEASE, CHART, "--namespace", ns];
    args.extend_from_slice(extra);
    helm_ok(&args);
}

/// `kubectl auth can-i` as `user`: true for yes, false for no; panics on anything else.
fn can_i(user: &str, ns: Option<&str>, verb: &str, resource: &str, subresource: Option<&str>) -> bool {
    let mut args = vec!["auth", "can-i", verb, resource, "--as", user];
    if let Some(ns) = ns {
        args.extend(["--namespace", ns]);
    }
    if let Some(sub) = subresource {
        args.extend(["--subresource", sub]);
    }
    let out = control_plane().kubectl(&args);
    match stdout(&out).trim() {
        "yes" => true,
        "no" => false,
        other => panic!("kubectl {args:?}: unexpected answer {other:?}: {}", stderr(&out)),
    }
}

fn operator_sa(release_ns: &str) -> String {
    format!("system:serviceaccount:{release_ns}:{SA}")
}

// --- rendered objects ------------------------------------------------------------------------------

fn kind_of(doc: &Value) -> &str {
    doc["kind"].as_str().unwrap_or_default()
}

fn name_of(doc: &Value) -> &str {
    doc["metadata"]["name"].as_str().unwrap_or_default()
}

fn all<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| kind_of(d) == kind).collect()
}

fn one<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found = all(docs, kind);
    assert_eq!(
        found.len(),
        1,
        "exactly one {kind} expected, found {}",
        found.len()
    );
    found[0]
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect())
        .unwrap_or_default()
}

/// The operator container of the Deployment.
fn container(docs: &[Value]) -> &Value {
    &one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
}

fn args(docs: &[Value]) -> Vec<String> {
    strings(&container(docs)["args"])
}

/// Whether a (Cluster)Role has a rule granting `verb` on `resource` of `group`.
fn grants(role: &Value, group: &str, resource: &str, verb: &str) -> bool {
    role["rules"].as_array().into_iter().flatten().any(|rule| {
        strings(&rule["apiGroups"]).iter().any(|g| g == group)
            && strings(&rule["resources"]).iter().any(|r| r == resource)
            && strings(&rule["verbs"]).iter().any(|v| v == verb || v == "*")
    })
}

/// The verbs a (Cluster)Role grants on `resource` of `group`.
fn verbs_on(role: &Value, group: &str, resource: &str) -> Vec<String> {
    let mut verbs: Vec<String> = role["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|rule| {
            strings(&rule["apiGroups"]).iter().any(|g| g == group)
                && strings(&rule["resources"]).iter().any(|r| r == resource)
        })
        .flat_map(|rule| strings(&rule["verbs"]))
        .collect();
    verbs.sort();
    verbs
}

fn sorted(verbs: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = verbs.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

// --- lint, render, schema ----------------------------------------------------------------------------

#[test]
fn helm_lint_passes_with_default_and_non_default_values() {
    for values in [None, Some(NAMESPACED_TLS_VALUES), Some(CERT_MANAGER_VALUES)] {
        let mut args = vec!["lint", "--strict", CHART];
        if let Some(v) = values {
            args.extend(["--values", v]);
        }
        let out = helm_ok(&args);
        assert!(out.contains("0 chart(s) failed"), "{out}");
    }
}

#[test]
fn default_values_render_a_leader_elected_cluster_wide_operator_with_restricted_pods() {
    let (text, docs) = render(&[]);

    let deployment = one(&docs, "Deployment");
    assert_eq!(deployment["spec"]["replicas"], 2);
    let args = args(&docs);
    for flag in [
        "run",
        "--leader-elect",
        "--lease-namespace=oauthapp-system",
        "--lease-name=oauthapp-operator",
        "--api-addr=0.0.0.0:8080",
        "--admin-addr=0.0.0.0:9090",
        "--hash-memory-kib=19456",
        "--hash-iterations=2",
        "--hash-parallelism=1",
        "--hash-workers=4",
        "--hash-pool=8",
        "--rate-limit-per-caller=10",
        "--rate-limit-global=100",
        "--max-scheduled-rotations-per-second=20",
    ] {
        assert!(args.contains(&flag.to_string()), "{flag} missing from {args:?}");
    }
    assert!(
        !args.iter().any(|a| a.starts_with("--watch-namespaces")),
        "{args:?}"
    );
    assert!(
        !args.iter().any(|a| a.starts_with("--tls-")),
        "no TLS by default: {args:?}"
    );
    assert!(
        !args.iter().any(|a| a.starts_with("--api-audiences")),
        "any audience the kube-apiserver accepts by default: {args:?}"
    );

    let c = container(&docs);
    let env_field = |name: &str| {
        c["env"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["name"] == name)
            .map(|e| e["valueFrom"]["fieldRef"]["fieldPath"].clone())
    };
    assert_eq!(env_field("POD_NAME"), Some(Value::from("metadata.name")));
    assert_eq!(
        env_field("POD_NAMESPACE"),
        Some(Value::from("metadata.namespace"))
    );
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["port"], "metrics");
    assert_eq!(c["resources"]["requests"]["cpu"], "50m");
    assert_eq!(c["resources"]["requests"]["memory"], "64Mi");
    assert_eq!(c["resources"]["limits"]["memory"], "256Mi");

    // The restricted Pod Security Standard.
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
    let sc = &c["securityContext"];
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));

    let service = one(&docs, "Service");
    let ports: Vec<(String, i64)> = service["spec"]["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap_or_default().to_string(),
                p["port"].as_i64().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        ports,
        vec![("http".to_string(), 8080), ("metrics".to_string(), 9090)]
    );
    assert_eq!(one(&docs, "PodDisruptionBudget")["spec"]["minAvailable"], 1);
    for kind in ["NetworkPolicy", "ServiceMonitor", "Certificate"] {
        assert!(all(&docs, kind).is_empty(), "no {kind} by default");
    }

    // Cluster-wide mode: the work rules in a ClusterRole, and they are exactly the API calls the
    // operator's code makes (a verb it needs and lacks fails
    // `the_operator_rotates_on_annotation_and_rest_with_nothing_but_the_charts_rbac`):
    let work = all(&docs, "ClusterRole")
        .into_iter()
        .find(|r| grants(r, "", "secrets", "get"))
        .expect("a ClusterRole for Secrets");
    let calls: [(&str, &str, &[&str]); 11] = [
        // watches.rs: list+watch (metadata watch); rotation.rs: get_opt, create, replace.
        ("", "secrets", &["get", "list", "watch", "create", "update"]),
        // watches.rs: list+watch; controller and API: get_opt; api/handlers.rs: create, delete.
        (
            "oauthapp.io",
            "oauthapps",
            &["get", "list", "watch", "create", "delete", "patch"],
        ),
        // provider/finalizer.rs: the admission policy asks the operator's finalizer patch for
        // update on this virtual subresource.
        ("oauthapp.io", "oauthapps/spec", &["update"]),
        // rotation.rs write_status: replace_status.
        ("oauthapp.io", "oauthapps/status", &["update"]),
        // The Secret's ownerReference sets blockOwnerDeletion.
        ("oauthapp.io", "oauthapps/finalizers", &["update"]),
        // provider/controller.rs: the watch; provider/sync.rs connect: get_opt.
        ("oauthapp.io", "oauthproviders", &["get", "list", "watch"]),
        // provider/controller.rs write_ready: a merge patch of the status.
        ("oauthapp.io", "oauthproviders/status", &["patch"]),
        // rotation.rs publish: a new Recorder per Event, so always a create, never a series patch.
        ("events.k8s.io", "events", &["create"]),
        // restart.rs: a merge patch of the pod template (rolloutRestart.enabled, the default).
        ("apps", "deployments", &["patch"]),
        ("apps", "statefulsets", &["patch"]),
        ("apps", "daemonsets", &["patch"]),
    ];
    for (group, resource, verbs) in calls {
        assert_eq!(
            verbs_on(work, group, resource),
            sorted(verbs),
            "{group}/{resource}"
        );
    }
    let granted: usize = work["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .map(|r| strings(&r["resources"]).len())
        .sum();
    assert_eq!(
        granted, 13,
        "no rule beyond the calls above (oauthapps appears three times)"
    );
    // The only Role touching Secrets reads the record key ring's Secrets, in the release
    // namespace, and no other.
    let key_role = all(&docs, "Role")
        .into_iter()
        .find(|r| name_of(r).ends_with("-record-key"))
        .expect("the record key Role");
    assert_eq!(key_role["metadata"]["namespace"], "oauthapp-system");
    for rule in key_role["rules"].as_array().expect("rules") {
        let resources = strings(&rule["resources"]);
        if resources == ["configmaps"] {
            // The ledger of deleted apps: created, then read and updated by its name only.
            match strings(&rule["verbs"]).as_slice() {
                [v] if v == "create" => {}
                [g, u] if g == "get" && u == "update" => assert_eq!(
                    strings(&rule["resourceNames"]),
                    [oauthapp_operator::runtime::ledger::configmap_name(
                        "oauthapp-operator-record-key"
                    )]
                ),
                other => panic!("record key Role grants {other:?} on ConfigMaps"),
            }
            continue;
        }
        assert_eq!(resources, ["secrets"]);
        match strings(&rule["verbs"]).as_slice() {
            [v] if v == "get" => {
                assert_eq!(
                    strings(&rule["resourceNames"]),
                    oauthapp_operator::model::record::key_slots("oauthapp-operator-record-key")
                )
            }
            [v] if v == "create" => {}
            other => panic!("record key Role grants {other:?}"),
        }
    }
    let env = container(&docs)["env"].as_array().expect("env").clone();
    assert!(
        env.iter().any(
            |e| e["name"] == "OAUTHAPP_RECORD_KEY_SECRET" && e["value"] == "oauthapp-operator-record-key"
        )
    );
    // No role for people reads Secrets.
    for role in all(&docs, "ClusterRole")
        .into_iter()
        .filter(|r| ["oauthapp-viewer", "oauthapp-rotator", "oauthapp-editor"].contains(&name_of(r)))
    {
        assert!(
            role["rules"]
                .as_array()
                .into_iter()
                .flatten()
                .all(|r| !strings(&r["resources"]).iter().any(|x| x == "secrets")),
            "{} touches Secrets",
            name_of(role)
        );
    }
    let lease_role = all(&docs, "Role")
        .into_iter()
        .find(|r| name_of(r).ends_with("-leader-election"))
        .expect("the leader-election Role");
    assert_eq!(lease_role["metadata"]["namespace"], "oauthapp-system");
    assert_eq!(
        verbs_on(lease_role, "coordination.k8s.io", "leases"),
        sorted(&["create", "get", "list", "watch", "update", "patch"])
    );

    // People's roles, aggregated into view and edit.
    let viewer = all(&docs, "ClusterRole")
        .into_iter()
        .find(|r| name_of(r) == "oauthapp-viewer")
        .expect("oauthapp-viewer");
    assert_eq!(
        viewer["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"],
        "true"
    );
    let rotator = all(&docs, "ClusterRole")
        .into_iter()
        .find(|r| name_of(r) == "oauthapp-rotator")
        .expect("oauthapp-rotator");
    assert_eq!(
        rotator["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"],
        "true"
    );
    assert!(grants(rotator, "oauthapp.io", "oauthapps/rotate", "create"));
    assert!(grants(rotator, "oauthapp.io", "oauthapps", "patch"));
    assert!(!grants(rotator, "oauthapp.io", "oauthapps/spec", "update"));
    let editor = all(&docs, "ClusterRole")
        .into_iter()
        .find(|r| name_of(r) == "oauthapp-editor")
        .expect("oauthapp-editor");
    assert_eq!(
        editor["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"],
        "true"
    );
    assert!(grants(editor, "oauthapp.io", "oauthapps/spec", "update"));
    // The admission policies that keep a rotator to rotation and restart targets to what their
    // requester may patch, on by default, each bound.
    let policies = all(&docs, "ValidatingAdmissionPolicy");
    let bound: Vec<&str> = all(&docs, "ValidatingAdmissionPolicyBinding")
        .iter()
        .map(|b| b["spec"]["policyName"].as_str().unwrap_or_default())
        .collect();
    let mut names: Vec<&str> = policies.iter().map(|p| name_of(p)).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "oauthapp-restart-targets-patchable",
            "oauthapp-rotator-only-rotates"
        ]
    );
    for policy in policies {
        assert_eq!(policy["spec"]["failurePolicy"], "Fail");
        assert!(
            bound.contains(&name_of(policy)),
            "{} is not bound",
            name_of(policy)
        );
    }

    // Every object carries the app.kubernetes.io labels.
    for doc in &docs {
        let labels = &doc["metadata"]["labels"];
        for key in [
            "app.kubernetes.io/name",
            "app.kubernetes.io/instance",
            "app.kubernetes.io/managed-by",
        ] {
            assert!(
                labels[key].is_string(),
                "{} {} lacks {key}",
                kind_of(doc),
                name_of(doc)
            );
        }
    }

    // A comment on every RBAC rule: in the rendered YAML, the line before each rule is one.
    let lines: Vec<&str> = text.lines().collect();
    let mut rules = 0;
    for (i, line) in lines.iter().enumerate() {
        if line.trim_start().starts_with("- apiGroups:") {
            rules += 1;
            assert!(
                i > 0 && lines[i - 1].trim_start().starts_with('#'),
                "RBAC rule without a comment at rendered line {}: {line}",
                i + 1
            );
        }
    }
    assert!(rules >= 12, "only {rules} rules found");
}

#[test]
fn rollout_restarts_can_be_turned_off_and_then_nothing_in_apps_is_granted() {
    let (_, docs) = render(&["--set", "rolloutRestart.enabled=false"]);
    for role in all(&docs, "ClusterRole").into_iter().chain(all(&docs, "Role")) {
        for resource in ["deployments", "statefulsets", "daemonsets"] {
            assert!(
                verbs_on(role, "apps", resource).is_empty(),
                "{} grants {resource}",
                name_of(role)
            );
        }
    }
    // Namespaced: the patch rule is in each watched namespace's Role, nowhere cluster-wide.
    let (_, docs) = render(&["--set", "watchNamespaces={team-a}"]);
    let roles: Vec<_> = all(&docs, "Role")
        .into_iter()
        .filter(|r| grants(r, "apps", "deployments", "patch"))
        .collect();
    assert_eq!(roles.len(), 1);
    assert_eq!(roles[0]["metadata"]["namespace"], "team-a");
    assert!(
        all(&docs, "ClusterRole")
            .into_iter()
            .all(|r| !grants(r, "apps", "deployments", "patch"))
    );
}

#[test]
fn namespaced_values_render_roles_only_in_the_watched_namespaces_and_https_from_a_secret() {
    let (_, docs) = render(&["--values", NAMESPACED_TLS_VALUES]);
    let args = args(&docs);
    assert!(
        args.contains(&"--watch-namespaces=team-a,team-b".to_string()),
        "{args:?}"
    );
    assert!(args.contains(&"--tls-cert-file=/etc/oauthapp-operator/tls/tls.crt".to_string()));
    assert!(args.contains(&"--tls-key-file=/etc/oauthapp-operator/tls/tls.key".to_string()));
    assert!(args.contains(&"--hash-memory-kib=65536".to_string()), "{args:?}");
    assert!(
        args.contains(&"--rate-limit-per-caller=2.5".to_string()),
        "{args:?}"
    );
    assert!(
        args.contains(&"--api-audiences=oauthapp-operator".to_string()),
        "{args:?}"
    );
    assert!(args.contains(&"--max-connections=200".to_string()), "{args:?}");
    assert!(
        args.contains(&"--resync-interval=5m".to_string()),
        "extraArgs: {args:?}"
    );
    assert_eq!(one(&docs, "Deployment")["spec"]["replicas"], 3);

    let pod = &one(&docs, "Deployment")["spec"]["template"]["spec"];
    assert_eq!(pod["volumes"][0]["secret"]["secretName"], "oauthapp-api-tls");
    assert_eq!(
        container(&docs)["volumeMounts"][0]["mountPath"],
        "/etc/oauthapp-operator/tls"
    );
    assert!(
        container(&docs)["image"]
            .as_str()
            .expect("image")
            .contains("@sha256:"),
        "a digest wins over the tag"
    );
    let service = one(&docs, "Service");
    assert_eq!(service["spec"]["ports"][0]["name"], "https");

    // Secrets: Roles in team-a and team-b only; the only ClusterRole is for the reviews.
    let secret_roles: Vec<&str> = all(&docs, "Role")
        .into_iter()
        .filter(|r| grants(r, "", "secrets", "get") && !name_of(r).ends_with("-record-key"))
        .map(|r| r["metadata"]["namespace"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(secret_roles, vec!["team-a", "team-b"]);
    let cluster_roles = all(&docs, "ClusterRole");
    assert_eq!(
        cluster_roles.len(),
        1,
        "userRoles.create=false: only the review ClusterRole"
    );
    assert_eq!(
        verbs_on(cluster_roles[0], "authentication.k8s.io", "tokenreviews"),
        sorted(&["create"])
    );
    assert_eq!(
        verbs_on(cluster_roles[0], "authorization.k8s.io", "subjectaccessreviews"),
        sorted(&["create"])
    );
    assert!(!grants(cluster_roles[0], "", "secrets", "get"));
    let bindings: Vec<&str> = all(&docs, "RoleBinding")
        .into_iter()
        .map(|b| b["metadata"]["namespace"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        bindings,
        vec!["team-a", "team-b", "oauthapp-system", "oauthapp-system"],
        "work roles, the record key, leader election"
    );

    let policy = one(&docs, "NetworkPolicy");
    assert_eq!(
        policy["spec"]["policyTypes"],
        serde_json::json!(["Ingress", "Egress"])
    );
    assert_eq!(policy["spec"]["ingress"][0]["ports"][0]["port"], "api");
    assert_eq!(
        policy["spec"]["ingress"][0]["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        "team-a"
    );
}

#[test]
fn cert_manager_values_render_a_certificate_for_the_service_and_a_service_monitor() {
    let (_, docs) = render(&["--values", CERT_MANAGER_VALUES]);
    let cert = one(&docs, "Certificate");
    let secret_name = cert["spec"]["secretName"].as_str().expect("secretName");
    let pod = &one(&docs, "Deployment")["spec"]["template"]["spec"];
    assert_eq!(
        pod["volumes"][0]["secret"]["secretName"], secret_name,
        "the Deployment mounts what cert-manager writes"
    );
    let dns = strings(&cert["spec"]["dnsNames"]);
    let service = name_of(one(&docs, "Service"));
    assert!(dns.contains(&format!("{service}.oauthapp-system.svc")), "{dns:?}");
    assert!(dns.contains(&"oauthapp.example.com".to_string()), "{dns:?}");
    assert_eq!(cert["spec"]["issuerRef"]["kind"], "ClusterIssuer");
    assert_eq!(cert["spec"]["issuerRef"]["name"], "internal-ca");

    let monitor = one(&docs, "ServiceMonitor");
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "metrics");
    assert_eq!(monitor["metadata"]["labels"]["release"], "prometheus");
    assert_eq!(one(&docs, "Service")["spec"]["ports"][0]["name"], "https");
}

#[test]
fn the_schema_and_the_templates_reject_values_that_cannot_work() {
    let fails = |extra: &[&str], expected: &str| {
        let mut args = vec!["template", RELEASE, CHART];
        args.extend_from_slice(extra);
        let out = helm(&args);
        assert!(!out.status.success(), "helm {args:?} succeeded");
        let err = stderr(&out);
        assert!(
            err.contains(expected),
            "helm {args:?}: expected {expected:?} in: {err}"
        );
    };
    fails(&["--set-string", "replicaCount=two"], "/replicaCount");
    fails(&["--set", "replicaCount=0"], "/replicaCount");
    fails(
        &["--set", "replicas=3"],
        "additional properties 'replicas' not allowed",
    );
    fails(
        &["--set", "hashing.memoryKib=65536"],
        "additional properties 'memoryKib' not allowed",
    );
    fails(
        &["--set", "controller.resyncInterval=10 minutes"],
        "/controller/resyncInterval",
    );
    fails(
        &["--set", "api.tls.enabled=true"],
        "api.tls.secretName is required",
    );
    fails(
        &[
            "--set",
            "api.tls.certManager.enabled=true",
            "--set",
            "api.tls.enabled=true",
        ],
        "issuerRef.name is required",
    );
    fails(
        &["--set", "leaderElection.enabled=false"],
        "needs leaderElection.enabled",
    );
    // The hash workers' memory is counted against the limit: 8 × 19 MiB is more than half of
    // the default 256Mi, and so is the default 4 × 19 MiB of 128Mi, or of 1Gi with 32 workers.
    fails(
        &["--set", "hashing.workers=8"],
        "hashing.workers × memoryKiB (8 × 19456 KiB = 152 MiB) is more than half of resources.limits.memory (256Mi)",
    );
    fails(
        &["--set", "resources.limits.memory=128Mi"],
        "is more than half of resources.limits.memory (128Mi)",
    );
    fails(
        &[
            "--set",
            "resources.limits.memory=1Gi",
            "--set",
            "hashing.workers=32",
        ],
        "(32 × 19456 KiB = 608 MiB)",
    );
    // An earlier configuration's memory counts where it is the larger.
    fails(
        &[
            "--set-json",
            r#"hashing.acceptPrevious=[{"memoryKiB":65536,"iterations":2,"parallelism":1}]"#,
        ],
        "(4 × 65536 KiB = 256 MiB)",
    );
    // Within the bound, or a unit the chart does not read: rendered.
    for ok in [
        &[
            "--set",
            "resources.limits.memory=1Gi",
            "--set",
            "hashing.workers=8",
        ][..],
        &["--set", "resources.limits.memory=268435456"],
        &[
            "--set",
            "resources.limits.memory=300M",
            "--set",
            "hashing.workers=8",
        ],
    ] {
        let mut args = vec!["template", RELEASE, CHART];
        args.extend_from_slice(ok);
        helm_ok(&args);
    }
}

#[test]
fn the_operator_accepts_every_flag_the_chart_renders() {
    for values in [None, Some(NAMESPACED_TLS_VALUES), Some(CERT_MANAGER_VALUES)] {
        let (_, docs) = render(&values.map(|v| vec!["--values", v]).unwrap_or_default());
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_oauthapp-operator"));
        cmd.args(args(&docs));
        for var in container(&docs)["env"].as_array().into_iter().flatten() {
            if let (Some(name), Some(value)) = (var["name"].as_str(), var["value"].as_str()) {
                cmd.env(name, value);
            }
        }
        // No cluster: the process gets past the flags and stops at the missing configuration.
        let nowhere = std::env::temp_dir().join("oauthapp-chart-test-no-such-kubeconfig");
        let out = cmd
            .env("KUBECONFIG", &nowhere)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .output()
            .expect("run oauthapp-operator");
        let err = stderr(&out);
        assert_ne!(out.status.code(), Some(2), "{values:?}: flags rejected: {err}");
        assert!(
            err.contains("no Kubernetes configuration found"),
            "{values:?}: expected to stop at the kubeconfig, got: {err}"
        );
    }
}

#[test]
fn the_pods_pass_the_restricted_pod_security_standard() {
    let ns = namespace("chart-pod-security");
    control_plane().kubectl_ok(&[
        "label",
        "namespace",
        &ns,
        "pod-security.kubernetes.io/enforce=restricted",
    ]);
    // A pod made from the Deployment's template, checked by the PodSecurity admission plugin
    // (a server-side dry run: nothing is created, and there is no kubelet to run it anyway).
    let admitted = |template_spec: &Value| {
        let pod = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "chart-pod"},
            "spec": template_spec,
        });
        let file = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(file.path(), pod.to_string()).expect("write pod");
        control_plane().kubectl(&[
            "create",
            "--dry-run=server",
            "-n",
            &ns,
            "-f",
            file.path().to_str().expect("utf-8"),
        ])
    };
    for values in [None, Some(NAMESPACED_TLS_VALUES), Some(CERT_MANAGER_VALUES)] {
        let (_, docs) = render(&values.map(|v| vec!["--values", v]).unwrap_or_default());
        let spec = &one(&docs, "Deployment")["spec"]["template"]["spec"];
        let out = admitted(spec);
        assert!(out.status.success(), "{values:?}: {}", stderr(&out));
    }
    // The check bites: the same pod without its container securityContext is refused.
    let (_, docs) = render(&[]);
    let mut spec = one(&docs, "Deployment")["spec"]["template"]["spec"].clone();
    spec["containers"][0]
        .as_object_mut()
        .expect("container")
        .remove("securityContext");
    let out = admitted(&spec);
    assert!(
        !out.status.success(),
        "a pod without securityContext was admitted"
    );
    assert!(stderr(&out).contains("violates PodSecurity"), "{}", stderr(&out));
}

// --- install and RBAC ------------------------------------------------------------------------------

#[test]
fn a_default_install_is_accepted_and_grants_rights_cluster_wide_and_to_view_and_edit() {
    let release_ns = namespace("chart-default-install");
    let elsewhere = namespace("chart-default-other");
    // Default values, CRDs included: helm leaves the CRD the fixture installed alone. The
    // cluster-scoped objects for people (roles, admission policy) belong to the release of
    // `people_roles_view_rotate_and_edit_and_a_rotator_changes_nothing_but_the_rotate_annotation`.
    install(
        &release_ns,
        &[
            "--set",
            "rbac.userRoles.create=false",
            "--set",
            "rotatorPolicy.enabled=false",
            "--set",
            "restartTargetsPolicy.enabled=false",
        ],
    );
    let cp = control_plane();

    // Every object is there (the pods never start: there is no kubelet).
    let status = helm_ok(&["status", RELEASE, "--namespace", &release_ns]);
    assert!(status.contains("STATUS: deployed"), "{status}");
    let replicas = cp.kubectl_ok(&[
        "get",
        "deployment",
        RELEASE,
        "-n",
        &release_ns,
        "-o",
        "jsonpath={.spec.replicas}",
    ]);
    assert_eq!(replicas, "2");
    for object in [
        "serviceaccount/oauthapp-operator",
        "service/oauthapp-operator",
        "poddisruptionbudget/oauthapp-operator",
        "role/oauthapp-operator-leader-election",
        "rolebinding/oauthapp-operator-leader-election",
    ] {
        cp.kubectl_ok(&["get", object, "-n", &release_ns]);
    }
    for object in [
        format!("clusterrole/oauthapp-operator-{release_ns}"),
        format!("clusterrolebinding/oauthapp-operator-{release_ns}"),
        format!("clusterrole/oauthapp-operator-{release_ns}-auth"),
        format!("clusterrolebinding/oauthapp-operator-{release_ns}-auth"),
    ] {
        cp.kubectl_ok(&["get", &object]);
    }

    // The operator may do its job in any namespace ...
    let sa = operator_sa(&release_ns);
    for ns in [elsewhere.as_str(), "default"] {
        for verb in ["get", "list", "watch", "create", "update"] {
            assert!(
                can_i(&sa, Some(ns), verb, "secrets", None),
                "{verb} secrets in {ns}"
            );
        }
        assert!(
            !can_i(&sa, Some(ns), "patch", "secrets", None),
            "patch secrets in {ns}"
        );
        assert!(!can_i(&sa, Some(ns), "patch", "oauthapps", Some("status")));
        assert!(
            can_i(&sa, Some(ns), "update", "oauthapps", Some("status")),
            "status in {ns}"
        );
        assert!(can_i(&sa, Some(ns), "update", "oauthapps", Some("finalizers")));
        assert!(can_i(&sa, Some(ns), "create", "events.events.k8s.io", None));
        // ... and nothing more.
        assert!(
            !can_i(&sa, Some(ns), "delete", "secrets", None),
            "delete secrets in {ns}"
        );
        assert!(
            !can_i(&sa, Some(ns), "update", "oauthapps", None),
            "update app specs in {ns}"
        );
        assert!(!can_i(&sa, Some(ns), "get", "configmaps", None));
        assert!(!can_i(
            &sa,
            Some(ns),
            "create",
            "leases.coordination.k8s.io",
            None
        ));
    }
    assert!(
        all_namespaces_secrets(&sa),
        "cluster-wide mode lists Secrets across namespaces"
    );
    assert!(can_i(
        &sa,
        None,
        "create",
        "tokenreviews.authentication.k8s.io",
        None
    ));
    assert!(can_i(
        &sa,
        None,
        "create",
        "subjectaccessreviews.authorization.k8s.io",
        None
    ));
    assert!(can_i(
        &sa,
        Some(&release_ns),
        "get",
        "leases.coordination.k8s.io/oauthapp-operator",
        None
    ));
    assert!(!can_i(
        &sa,
        Some(&release_ns),
        "get",
        "leases.coordination.k8s.io/someone-else",
        None
    ));

    // The record key: the operator reads its one Secret in the release namespace.
    assert!(can_i(
        &sa,
        Some(&release_ns),
        "get",
        "secrets/oauthapp-operator-record-key",
        None
    ));
}

/// Runs kubectl as ServiceAccount `sa` of `ns` (a TokenRequest token).
fn kubectl_as_sa(ns: &str, sa: &str, args: &[&str]) -> Output {
    control_plane().kubectl_as(&service_account_kubeconfig(ns, sa), args)
}

#[tokio::test]
async fn people_roles_view_rotate_and_edit_and_a_rotator_changes_nothing_but_the_rotate_annotation() {
    // This release owns the cluster-scoped objects for people: oauthapp-viewer, -rotator and
    // -editor, and the admission policy.
    let release_ns = namespace("chart-people");
    let elsewhere = namespace("chart-people-apps");
    install(&release_ns, &["--skip-crds"]);
    let cp = control_plane();
    // oauthapp-rotator reaches edit, oauthapp-viewer reaches view (the fixture's
    // kube-controller-manager runs the ClusterRole aggregation controller).
    let editor = format!("editor-{elsewhere}");
    let viewer = format!("viewer-{elsewhere}");
    cp.kubectl_ok(&[
        "create",
        "rolebinding",
        "edit",
        "--clusterrole=edit",
        "--user",
        &editor,
        "-n",
        &elsewhere,
    ]);
    cp.kubectl_ok(&[
        "create",
        "rolebinding",
        "view",
        "--clusterrole=view",
        "--user",
        &viewer,
        "-n",
        &elsewhere,
    ]);
    eventually_sync("edit to include oauthapp-rotator", || {
        can_i(&editor, Some(&elsewhere), "create", "oauthapps", Some("rotate"))
    });
    assert!(
        can_i(&editor, Some(&elsewhere), "patch", "oauthapps", None),
        "edit: annotate"
    );
    assert!(
        !can_i(&editor, Some(&release_ns), "create", "oauthapps", Some("rotate")),
        "only where bound"
    );
    eventually_sync("view to include oauthapp-viewer", || {
        can_i(&viewer, Some(&elsewhere), "list", "oauthapps", None)
    });
    assert!(can_i(&viewer, Some(&elsewhere), "get", "oauthapps", None));
    assert!(
        !can_i(&viewer, Some(&elsewhere), "patch", "oauthapps", None),
        "view: no annotate"
    );
    assert!(
        !can_i(&viewer, Some(&elsewhere), "create", "oauthapps", Some("rotate")),
        "view: no rotate"
    );
    assert!(
        !can_i(&viewer, Some(&elsewhere), "get", "secrets", None),
        "view: no Secrets"
    );

    assert!(!can_i(
        &viewer,
        Some(&elsewhere),
        "update",
        "oauthapps",
        Some("spec")
    ));
    eventually_sync("edit to include oauthapp-editor", || {
        can_i(&editor, Some(&elsewhere), "update", "oauthapps", Some("spec"))
    });

    // A CI account bound to oauthapp-rotator alone, and a developer with the built-in edit.
    for (sa, role) in [("ci", "oauthapp-rotator"), ("dev", "edit")] {
        cp.kubectl_ok(&["create", "serviceaccount", sa, "-n", &elsewhere]);
        cp.kubectl_ok(&[
            "create",
            "rolebinding",
            &format!("{sa}-binding"),
            &format!("--clusterrole={role}"),
            &format!("--serviceaccount={elsewhere}:{sa}"),
            "-n",
            &elsewhere,
        ]);
    }
    let operator = Operator::start(&cp.kubeconfig, &elsewhere, &[], &[]);
    let manifest = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(
        manifest.path(),
        "apiVersion: oauthapp.io/v1alpha1\nkind: OAuthApp\nmetadata:\n  name: portal\nspec:\n  redirectUris: [\"https://portal.example.com/cb\"]\n",
    )
    .expect("write manifest");
    cp.kubectl_ok(&[
        "apply",
        "-n",
        &elsewhere,
        "-f",
        manifest.path().to_str().expect("utf-8"),
    ]);
    let admin = admin_client().await;
    let apps: Api<OAuthApp> = Api::namespaced(admin.clone(), &elsewhere);
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &elsewhere);
    settled(&apps, &secrets, "portal", 1).await;

    // The policy is in force once a server-side dry run of a label change is refused (admission
    // runs on dry runs too; nothing is changed while waiting).
    let refused = |args: &[&str]| {
        let out = kubectl_as_sa(&elsewhere, "ci", args);
        (!out.status.success()).then(|| stderr(&out))
    };
    eventually_sync("the admission policy to be in force", || {
        refused(&[
            "label",
            "oauthapp",
            "portal",
            "-n",
            &elsewhere,
            "probe=1",
            "--dry-run=server",
        ])
        .is_some()
    });

    // The rotator rotates by annotation ...
    let out = kubectl_as_sa(
        &elsewhere,
        "ci",
        &[
            "annotate",
            "oauthapp",
            "portal",
            "-n",
            &elsewhere,
            "oauthapp.io/rotate=ci-1",
            "--overwrite",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    settled(&apps, &secrets, "portal", 2).await;
    // ... with a revocation of the replaced secret, for that rotation only ...
    let out = kubectl_as_sa(
        &elsewhere,
        "ci",
        &[
            "annotate",
            "oauthapp",
            "portal",
            "-n",
            &elsewhere,
            "oauthapp.io/rotate=ci-revoke",
            "oauthapp.io/rotate-revoke=ci-revoke",
            "--overwrite",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    settled(&apps, &secrets, "portal", 3).await;
    // ... and removes it again.
    let out = kubectl_as_sa(
        &elsewhere,
        "ci",
        &[
            "annotate",
            "oauthapp",
            "portal",
            "-n",
            &elsewhere,
            "oauthapp.io/rotate-revoke-",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    // ... and through the REST API.
    let token = service_account_token(&elsewhere, "ci");
    let app_id = apps
        .get("portal")
        .await
        .expect("app")
        .status
        .and_then(|s| s.app_id)
        .expect("app id");
    let (code, _) = eventually("a 200 from the REST rotate", WAIT, || async {
        let answer = http_request(
            operator.api_port,
            "POST",
            &format!("/api/v1/oauth-apps/{app_id}/rotate"),
            &token,
        )
        .await?;
        (answer.0 != 429).then_some(answer)
    })
    .await;
    assert_eq!(code, 200);
    settled(&apps, &secrets, "portal", 4).await;

    // Nothing else: not the spec, not a label, not another annotation.
    let attempts: [&[&str]; 4] = [
        &[
            "patch",
            "oauthapp",
            "portal",
            "-n",
            &elsewhere,
            "--type=merge",
            "-p",
            r#"{"spec":{"redirectUris":["https://attacker.example.net/cb"]}}"#,
        ],
        &["label", "oauthapp", "portal", "-n", &elsewhere, "team=attacker"],
        &[
            "annotate",
            "oauthapp",
            "portal",
            "-n",
            &elsewhere,
            "replicator.example.com/copy-to=elsewhere",
        ],
        &[
            "annotate",
            "oauthapp",
            "portal",
            "-n",
            &elsewhere,
            "oauthapp.io/rotate=ci-2",
            "other=1",
            "--overwrite",
        ],
    ];
    for args in attempts {
        let message = refused(args).unwrap_or_else(|| panic!("the rotator could run {args:?}"));
        assert!(
            message.contains(
                "only the oauthapp.io/rotate and oauthapp.io/rotate-revoke annotations may be changed"
            ),
            "{args:?}: {message}"
        );
    }
    let app = apps.get("portal").await.expect("app");
    assert_eq!(app.spec.redirect_uris, ["https://portal.example.com/cb"]);
    assert!(!app.labels().contains_key("team"));

    // Someone with edit changes the spec.
    let out = kubectl_as_sa(
        &elsewhere,
        "dev",
        &[
            "patch",
            "oauthapp",
            "portal",
            "-n",
            &elsewhere,
            "--type=merge",
            "-p",
            r#"{"spec":{"redirectUris":["https://portal.example.com/new-cb"]}}"#,
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let app = apps.get("portal").await.expect("app");
    assert_eq!(app.spec.redirect_uris, ["https://portal.example.com/new-cb"]);

    // An app editor who may not patch a workload cannot have the operator restart it: the
    // policy asks the authorizer about each target added. One who may patch it (edit) can.
    cp.kubectl_ok(&["create", "serviceaccount", "appdev", "-n", &elsewhere]);
    cp.kubectl_ok(&[
        "create",
        "rolebinding",
        "appdev-binding",
        "--clusterrole=oauthapp-editor",
        &format!("--serviceaccount={elsewhere}:appdev"),
        "-n",
        &elsewhere,
    ]);
    // And view, to read what it patches (view grants no patch on workloads).
    cp.kubectl_ok(&[
        "create",
        "rolebinding",
        "appdev-view",
        "--clusterrole=view",
        &format!("--serviceaccount={elsewhere}:appdev"),
        "-n",
        &elsewhere,
    ]);
    let target = r#"{"spec":{"rolloutRestartTargets":[{"kind":"Deployment","name":"payments-api"}]}}"#;
    // A merge patch of the app as ServiceAccount `sa`, on a server-side dry run or for real.
    let patch_as = |sa: &str, patch: &str, dry_run: bool| {
        let mut args = vec![
            "patch",
            "oauthapp",
            "portal",
            "-n",
            &elsewhere,
            "--type=merge",
            "-p",
            patch,
        ];
        if dry_run {
            args.push("--dry-run=server");
        }
        kubectl_as_sa(&elsewhere, sa, &args)
    };
    eventually_sync("the restart target policy to be in force", || {
        !patch_as("appdev", target, true).status.success()
    });
    let out = patch_as("appdev", target, false);
    assert!(
        !out.status.success(),
        "an editor without patch on the Deployment named it"
    );
    assert!(
        stderr(&out).contains("may name only workloads you may patch in namespace")
            && stderr(&out).contains("added: Deployment/payments-api"),
        "{}",
        stderr(&out)
    );
    assert!(
        apps.get("portal")
            .await
            .expect("app")
            .spec
            .rollout_restart_targets
            .is_empty()
    );
    let out = patch_as("dev", target, false);
    assert!(out.status.success(), "{}", stderr(&out));
    // Already listed, it is not judged again: the editor still changes the rest of the spec.
    let out = patch_as("appdev", r#"{"spec":{"displayName":"Portal"}}"#, false);
    assert!(out.status.success(), "{}", stderr(&out));
    let app = apps.get("portal").await.expect("app");
    assert_eq!(app.spec.rollout_restart_targets.len(), 1);
    assert_eq!(app.spec.display_name.as_deref(), Some("Portal"));
}

/// Polls a blocking check (kubectl) until it holds.
fn eventually_sync(what: &str, check: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + WAIT;
    while !check() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {WAIT:?} waiting for: {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_namespaced_install_grants_secrets_only_in_the_watched_namespace() {
    let release_ns = namespace("chart-namespaced-install");
    let watched = namespace("chart-namespaced-watched");
    let other = namespace("chart-namespaced-other");
    install(
        &release_ns,
        &[
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
            "networkPolicy.enabled=true",
        ],
    );
    let sa = operator_sa(&release_ns);

    for verb in ["get", "list", "watch", "create", "update"] {
        assert!(
            can_i(&sa, Some(&watched), verb, "secrets", None),
            "{verb} secrets in {watched}"
        );
    }
    assert!(!can_i(&sa, Some(&watched), "patch", "secrets", None));
    assert!(can_i(&sa, Some(&watched), "update", "oauthapps", Some("status")));
    assert!(can_i(&sa, Some(&watched), "list", "oauthapps", None));
    assert!(can_i(&sa, Some(&watched), "create", "events.events.k8s.io", None));
    assert!(
        !can_i(&sa, Some(&watched), "delete", "secrets", None),
        "no delete, even where watched"
    );

    for ns in [other.as_str(), release_ns.as_str()] {
        assert!(
            !can_i(&sa, Some(ns), "get", "secrets", None),
            "get secrets in {ns}"
        );
        assert!(
            !can_i(&sa, Some(ns), "list", "secrets", None),
            "list secrets in {ns}"
        );
        assert!(
            !can_i(&sa, Some(ns), "list", "oauthapps", None),
            "list apps in {ns}"
        );
        assert!(!can_i(&sa, Some(ns), "update", "oauthapps", Some("status")));
        assert!(!can_i(&sa, Some(ns), "delete", "secrets", None));
    }
    assert!(!can_i(&sa, Some(&other), "create", "secrets", None));
    // In the release namespace: create the record key, and read that one Secret only.
    assert!(can_i(&sa, Some(&release_ns), "create", "secrets", None));
    assert!(can_i(
        &sa,
        Some(&release_ns),
        "get",
        "secrets/oauthapp-operator-record-key",
        None
    ));
    assert!(
        !all_namespaces_secrets(&sa),
        "namespaced mode cannot list Secrets cluster-wide"
    );

    assert!(can_i(
        &sa,
        None,
        "create",
        "tokenreviews.authentication.k8s.io",
        None
    ));
    assert!(can_i(
        &sa,
        None,
        "create",
        "subjectaccessreviews.authorization.k8s.io",
        None
    ));
    // The Lease lives in the release namespace, whatever is watched.
    assert!(can_i(
        &sa,
        Some(&release_ns),
        "create",
        "leases.coordination.k8s.io",
        None
    ));
    assert!(can_i(
        &sa,
        Some(&release_ns),
        "update",
        "leases.coordination.k8s.io/oauthapp-operator",
        None
    ));
    assert!(!can_i(
        &sa,
        Some(&watched),
        "create",
        "leases.coordination.k8s.io",
        None
    ));

    // Every object was accepted, the NetworkPolicy too.
    control_plane().kubectl_ok(&["get", "networkpolicy", RELEASE, "-n", &release_ns]);
}

/// Whether `user` may list Secrets across all namespaces.
fn all_namespaces_secrets(user: &str) -> bool {
    let out = control_plane().kubectl(&[
        "auth",
        "can-i",
        "list",
        "secrets",
        "--all-namespaces",
        "--as",
        user,
    ]);
    stdout(&out).trim() == "yes"
}

// --- the operator with the chart's RBAC ----------------------------------------------------------------

#[tokio::test]
async fn the_operator_rotates_on_annotation_and_rest_with_nothing_but_the_charts_rbac() {
    let release_ns = namespace("chart-operator");
    let watched = namespace("chart-operator-apps");
    install(
        &release_ns,
        &[
            "--skip-crds",
            "--set",
            &format!("watchNamespaces={{{watched}}}"),
            "--set",
            "rbac.userRoles.create=false",
            "--set",
            "rotatorPolicy.enabled=false",
            "--set",
            "restartTargetsPolicy.enabled=false",
        ],
    );
    // The operator acts as the chart's ServiceAccount, with a TokenRequest token: exactly what a
    // pod of the Deployment would have.
    let kubeconfig: PathBuf = service_account_kubeconfig(&release_ns, SA);
    let operator = Operator::start(
        &kubeconfig,
        &watched,
        &[
            "--leader-elect",
            "--lease-namespace",
            &release_ns,
            "--record-key-namespace",
            &release_ns,
        ],
        &[],
    );

    eventually("the operator to be ready (its watches synced)", WAIT, || async {
        http_get(operator.admin_port, "/readyz").await
    })
    .await;
    let admin = admin_client().await;
    let leases: Api<Lease> = Api::namespaced(admin.clone(), &release_ns);
    eventually(
        "the operator to hold the Lease in the release namespace",
        WAIT,
        || async {
            let lease = leases.get_opt("oauthapp-operator").await.ok()??;
            lease.spec?.holder_identity.filter(|h| !h.is_empty())
        },
    )
    .await;

    let manifest = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(
        manifest.path(),
        "apiVersion: oauthapp.io/v1alpha1\nkind: OAuthApp\nmetadata:\n  name: portal\nspec:\n  redirectUris: [\"https://portal.example.com/cb\"]\n",
    )
    .expect("write manifest");
    control_plane().kubectl_ok(&[
        "apply",
        "-n",
        &watched,
        "-f",
        manifest.path().to_str().expect("utf-8"),
    ]);

    let apps: Api<OAuthApp> = Api::namespaced(admin.clone(), &watched);
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &watched);
    let first = settled(&apps, &secrets, "portal", 1).await;

    control_plane().kubectl_ok(&[
        "annotate",
        "oauthapp",
        "portal",
        "oauthapp.io/rotate=one",
        "-n",
        &watched,
    ]);
    let second = settled(&apps, &secrets, "portal", 2).await;
    assert_ne!(first, second, "the annotation replaced the secret");

    // Events were allowed too (a refused Event is only logged, so look for them).
    let events: Api<Event> = Api::namespaced(admin.clone(), &watched);
    eventually("SecretCreated and SecretRotated events", WAIT, || async {
        let reasons: Vec<String> = events
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .into_iter()
            .filter_map(|e| e.reason)
            .collect();
        (reasons.iter().any(|r| r == "SecretCreated") && reasons.iter().any(|r| r == "SecretRotated"))
            .then_some(())
    })
    .await;

    // The REST API, with the same RBAC: a CI ServiceAccount allowed to rotate in `watched`.
    let cp = control_plane();
    cp.kubectl_ok(&["create", "serviceaccount", "ci", "-n", &watched]);
    cp.kubectl_ok(&[
        "create",
        "role",
        "rotator",
        "-n",
        &watched,
        "--verb=get,create",
        "--resource=oauthapps.oauthapp.io,oauthapps.oauthapp.io/rotate",
    ]);
    cp.kubectl_ok(&[
        "create",
        "rolebinding",
        "ci-rotator",
        "-n",
        &watched,
        "--role=rotator",
        &format!("--serviceaccount={watched}:ci"),
    ]);
    let token = service_account_token(&watched, "ci");
    let app_id = apps
        .get("portal")
        .await
        .expect("app")
        .status
        .and_then(|s| s.app_id)
        .expect("app id");
    let (code, body) = eventually("a 200 from the REST rotate", WAIT, || async {
        let answer = http_request(
            operator.api_port,
            "POST",
            &format!("/api/v1/oauth-apps/{app_id}/rotate"),
            &token,
        )
        .await?;
        (answer.0 == 200).then_some(answer)
    })
    .await;
    assert_eq!(code, 200);
    let rotated: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let third = settled(&apps, &secrets, "portal", 3).await;
    assert_eq!(
        rotated["client_secret"].as_str(),
        Some(third.as_str()),
        "the answer is the Secret's content"
    );

    let log = operator.log_text();
    assert!(
        !log.to_lowercase().contains("forbidden"),
        "the operator was refused something:\n{log}"
    );
}

/// Waits until app `name` is Ready with `rotations` rotations and its Secret verifies against
/// the status hash; returns the plaintext.
async fn settled(apps: &Api<OAuthApp>, secrets: &Api<Secret>, name: &str, rotations: i64) -> String {
    eventually(
        &format!("{name} Ready after {rotations} rotation(s), Secret verifying"),
        WAIT,
        || async {
            let app = apps.get_opt(name).await.ok()??;
            let status = app.status.clone()?;
            let ready = app.ready_condition().is_some_and(|c| c.status == "True");
            if !ready || status.rotation_count != rotations {
                return None;
            }
            let secret = secrets.get_opt(status.secret_name.as_deref()?).await.ok()??;
            let plain = String::from_utf8(secret.data?.get("client_secret")?.0.clone()).ok()?;
            let in_sync = secret
                .metadata
                .annotations
                .as_ref()?
                .get("oauthapp.io/rotation-id")
                == status.rotation_id.as_ref();
            (in_sync && secret::verify(&plain, status.client_secret_hash.as_deref()?).ok()?).then_some(plain)
        },
    )
    .await
}

#[test]
fn the_crate_the_image_and_the_chart_have_one_version_and_the_changelog_names_it() {
    let chart =
        std::fs::read_to_string(repo().join("charts/oauthapp-operator/Chart.yaml")).expect("Chart.yaml");
    let field = |name: &str| {
        chart
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .map(|v| v.trim().trim_matches('"').to_string())
    };
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(field("version").as_deref(), Some(version), "the chart's version");
    assert_eq!(
        field("appVersion").as_deref(),
        Some(version),
        "the chart's appVersion"
    );
    let changelog = std::fs::read_to_string(repo().join("CHANGELOG.md")).expect("CHANGELOG.md");
    assert!(
        changelog.contains(&format!("\n## {version}\n")),
        "CHANGELOG.md has no section for {version}"
    );
}
