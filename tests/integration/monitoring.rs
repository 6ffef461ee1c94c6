//! Alerts and the dashboard, as a platform team installs them: the chart renders them when asked,
//! and every metric they read is one a running operator exports (a renamed metric fails here, not
//! in someone's dashboard).

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::PostParams;
use oauthapp_operator::model::crd::OAuthApp;
use serde::Deserialize;
use serde_json::Value;

use crate::support::*;

const WAIT: Duration = Duration::from_secs(90);
const MONITORING_VALUES: &str = "charts/oauthapp-operator/ci/monitoring-values.yaml";

/// `helm template` of the chart with `extra` args: its documents.
fn render(extra: &[&str]) -> Vec<Value> {
    let cp = control_plane();
    let out = Command::new(cp.bin("helm"))
        .current_dir(repo())
        .env("HELM_CACHE_HOME", cp.dir.join("helm-monitoring/cache"))
        .env("HELM_CONFIG_HOME", cp.dir.join("helm-monitoring/config"))
        .args([
            "template",
            "oauthapp-operator",
            "charts/oauthapp-operator",
            "--namespace",
            "oauthapp-system",
        ])
        .args(extra)
        .output()
        .expect("run helm");
    assert!(out.status.success(), "helm template failed: {}", stderr(&out));
    serde_norway::Deserializer::from_str(&stdout(&out))
        .map(|doc| Value::deserialize(doc).expect("rendered YAML parses"))
        .filter(|v| !v.is_null())
        .collect()
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

/// The PromQL expressions of the rendered PrometheusRule and dashboard.
fn expressions(docs: &[Value]) -> Vec<String> {
    let rules = of_kind(docs, "PrometheusRule");
    assert_eq!(rules.len(), 1, "one PrometheusRule");
    let mut exprs: Vec<String> = rules[0]["spec"]["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules").iter())
        .map(|r| r["expr"].as_str().expect("expr").to_string())
        .collect();
    let dashboards: Vec<&Value> = of_kind(docs, "ConfigMap")
        .into_iter()
        .filter(|c| c["metadata"]["labels"]["grafana_dashboard"] == "1")
        .collect();
    assert_eq!(dashboards.len(), 1, "one dashboard ConfigMap");
    let json = dashboards[0]["data"]["oauthapp-operator.json"]
        .as_str()
        .expect("dashboard JSON");
    let dashboard: Value = serde_json::from_str(json).expect("the dashboard is JSON");
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            exprs.push(target["expr"].as_str().expect("expr").to_string());
        }
    }
    for var in dashboard["templating"]["list"].as_array().expect("variables") {
        if let Some(q) = var["definition"].as_str() {
            exprs.push(q.to_string());
        }
    }
    exprs
}

/// Every `oauthapp_…` metric name in `expr`.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(at) = rest.find("oauthapp_") {
        let tail = &rest[at..];
        let len = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..len].to_string());
        rest = &tail[len..];
    }
    names
}

/// The series names of the samples in a /metrics text (a counter `x` has samples `x_total`, a
/// histogram `x_bucket`, `x_sum` and `x_count`). prometheus-client leaves out a labelled family
/// with no sample at all, so the operator gives each fixed label value a zero from the start.
fn exported_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

#[test]
fn the_rules_and_the_dashboard_are_rendered_only_when_enabled() {
    let docs = render(&[]);
    assert!(of_kind(&docs, "PrometheusRule").is_empty());
    assert!(of_kind(&docs, "ConfigMap").is_empty());

    let docs = render(&["--values", MONITORING_VALUES]);
    let rule = of_kind(&docs, "PrometheusRule")[0];
    assert_eq!(rule["metadata"]["labels"]["release"], "prometheus");
    let rules = rule["spec"]["groups"][0]["rules"].as_array().expect("rules");
    let alerts: Vec<&str> = rules
        .iter()
        .map(|r| r["alert"].as_str().expect("alert"))
        .collect();
    for alert in [
        "OAuthAppSecretConflict",
        "OAuthAppSecretRejected",
        "OAuthAppClientIdConflict",
        "OAuthAppRotationErrors",
        "OAuthAppOperatorNoLeader",
        "OAuthAppAPIErrors",
        "OAuthAppScheduledRotationsBehind",
        "OAuthAppConsumerRestartsFailing",
    ] {
        assert!(alerts.contains(&alert), "{alert} missing from {alerts:?}");
    }
    // Each alert links to its own section of docs/runbook.md, and has a summary and a description.
    let runbook = std::fs::read_to_string(repo().join("docs/runbook.md")).expect("docs/runbook.md");
    for r in rules {
        let alert = r["alert"].as_str().expect("alert");
        let a = &r["annotations"];
        assert!(a["summary"].as_str().is_some_and(|s| !s.is_empty()), "{alert}");
        assert!(
            a["description"].as_str().is_some_and(|s| !s.is_empty()),
            "{alert}"
        );
        assert_eq!(
            a["runbook_url"],
            format!(
                "https://docs.example.com/oauthapp-operator/runbook.md#{}",
                alert.to_lowercase()
            )
        );
        assert!(
            runbook.contains(&format!("\n## {alert}\n")),
            "no runbook section for {alert}"
        );
        // Only this release's pods: another install's series are not its alerts.
        assert!(
            r["expr"]
                .as_str()
                .expect("expr")
                .contains("namespace=\"oauthapp-system\""),
            "{alert}"
        );
    }

    let dashboard = of_kind(&docs, "ConfigMap")[0];
    assert_eq!(dashboard["metadata"]["labels"]["grafana_dashboard"], "1");
    assert_eq!(dashboard["metadata"]["annotations"]["grafana_folder"], "Platform");
    // The chart ships the dashboard of docs/, for manual import, byte for byte.
    let docs_copy = std::fs::read_to_string(repo().join("docs/grafana-dashboard.json")).expect("docs copy");
    assert_eq!(
        dashboard["data"]["oauthapp-operator.json"]
            .as_str()
            .map(str::trim_end),
        Some(docs_copy.trim_end())
    );
}

#[tokio::test]
async fn every_metric_the_alerts_and_the_dashboard_use_is_exported_by_a_running_operator() {
    let used: BTreeSet<String> = expressions(&render(&["--values", MONITORING_VALUES]))
        .iter()
        .flat_map(|e| metric_names(e))
        .collect();
    assert!(used.len() >= 10, "the expressions read too few metrics: {used:?}");

    // An operator that has done a bit of everything: created a secret, met a foreign Secret
    // (a not-Ready app) and answered a REST request.
    let ns = namespace("monitoring-metrics");
    let cp = control_plane();
    let operator = Operator::start(&cp.kubeconfig, &ns, &[], &[]);
    let client = admin_client().await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let foreign: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "taken-oauth-client"},
        "stringData": {"owner": "someone else"}
    }))
    .expect("Secret");
    secrets
        .create(&PostParams::default(), &foreign)
        .await
        .expect("create foreign Secret");
    let apps: Api<OAuthApp> = Api::namespaced(client, &ns);
    for name in ["demo", "taken"] {
        let app: OAuthApp = serde_json::from_value(serde_json::json!({
            "apiVersion": "oauthapp.io/v1alpha1", "kind": "OAuthApp",
            "metadata": {"name": name}, "spec": {}
        }))
        .expect("OAuthApp");
        apps.create(&PostParams::default(), &app)
            .await
            .expect("create app");
    }
    cp.kubectl_ok(&["create", "serviceaccount", "caller", "-n", &ns]);
    let token = service_account_token(&ns, "caller");
    eventually("a REST answer", WAIT, || async {
        http_get_with_token(operator.api_port, "/api/v1/oauth-apps", &token).await
    })
    .await;

    // Labelled series appear with the events above: poll until all are there, or say which not.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let text = operator.metrics().await.unwrap_or_default();
        let exported = exported_names(&text);
        let missing: Vec<&String> = used.iter().filter(|m| !exported.contains(m.as_str())).collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "used by the alerts or the dashboard but not exported by the operator: {missing:?}\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // And the alerts' gauge counts what it says: the app whose Secret name is taken.
    eventually(
        "oauthapp_apps_not_ready{reason=SecretConflict} 1",
        WAIT,
        || async {
            let n = operator
                .metric(r#"oauthapp_apps_not_ready{reason="SecretConflict"}"#)
                .await?;
            (n == 1.0).then_some(())
        },
    )
    .await;
}
