//! `kubectl oauthapp`, as a platform team uses it: the built plugin binary, run with a kubeconfig
//! against the real control plane, next to an operator process.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use oauthapp_operator::model::crd::OAuthApp;
use serde_json::Value;

use crate::support::*;

const WAIT: Duration = Duration::from_secs(90);

/// Runs the plugin with `kubeconfig`, `stdin` piped in.
fn plugin_as(kubeconfig: &Path, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kubectl-oauthapp"))
        .env("KUBECONFIG", kubeconfig)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kubectl-oauthapp");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("wait for kubectl-oauthapp")
}

/// Runs the plugin as cluster admin.
fn plugin(args: &[&str]) -> Output {
    plugin_as(&control_plane().kubeconfig, args, "")
}

fn app_manifest(name: &str, labels: &str) -> String {
    format!(
        "apiVersion: oauthapp.io/v1alpha1\nkind: OAuthApp\nmetadata: {{name: {name}, labels: {{{labels}}}}}\nspec:\n  redirectUris: [\"https://{name}.example.com/cb\"]\n"
    )
}

fn apply(ns: &str, manifest: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("app.yaml");
    std::fs::write(&file, manifest).expect("write manifest");
    control_plane().kubectl_ok(&["apply", "-n", ns, "-f", file.to_str().expect("utf-8")]);
}

/// Waits until app `name` is Ready with `count` rotations.
async fn ready_with(apps: &Api<OAuthApp>, name: &str, count: i64) -> OAuthApp {
    eventually(
        &format!("app {name} Ready with rotationCount {count}"),
        WAIT,
        || async {
            let app = apps.get_opt(name).await.ok()??;
            let ready = app.ready_condition().is_some_and(|c| c.status == "True");
            (ready && app.status.as_ref()?.rotation_count == count).then_some(app)
        },
    )
    .await
}

async fn client_secret(ns: &str, app: &str) -> String {
    let secrets: Api<Secret> = Api::namespaced(admin_client().await, ns);
    let secret = secrets
        .get(&format!("{app}-oauth-client"))
        .await
        .expect("the app's Secret");
    let bytes = secret.data.expect("data")["client_secret"].0.clone();
    String::from_utf8(bytes).expect("utf-8")
}

fn status_of(app: &OAuthApp) -> &oauthapp_operator::model::crd::OAuthAppStatus {
    app.status.as_ref().expect("status")
}

#[tokio::test]
async fn rotate_prints_the_new_hint_and_verify_tells_the_new_secret_from_the_old() {
    let ns = namespace("plugin-rotate");
    let cp = control_plane();
    let _operator = Operator::start(&cp.kubeconfig, &ns, &[], &[]);
    let apps: Api<OAuthApp> = Api::namespaced(admin_client().await, &ns);
    apply(&ns, &app_manifest("billing", ""));
    ready_with(&apps, "billing", 1).await;
    let old_secret = client_secret(&ns, "billing").await;

    let out = plugin(&["rotate", "billing", "-n", &ns]);
    assert!(
        out.status.success(),
        "rotate failed: {}{}",
        stdout(&out),
        stderr(&out)
    );
    // The operator had acted when the plugin returned: the status is already the new one.
    let app = apps.get("billing").await.expect("app");
    let status = status_of(&app);
    assert_eq!(status.rotation_count, 2);
    let text = stdout(&out);
    let line = text.lines().nth(1).expect("one line for the app");
    for expected in [
        ns.as_str(),
        "billing",
        "rotated",
        status.client_secret_hint.as_deref().expect("hint"),
        status.rotation_id.as_deref().expect("rotation id"),
        "Annotation",
        // No grace period: the replaced secret is invalid at once.
        "invalid",
    ] {
        assert!(line.contains(expected), "{expected:?} missing in {text}");
    }

    // verify reads the secret from stdin and needs no access to Secrets: a ServiceAccount that
    // may only get OAuthApps runs it.
    cp.kubectl_ok(&[
        "create",
        "role",
        "app-reader",
        "-n",
        &ns,
        "--verb=get",
        "--resource=oauthapps",
    ]);
    cp.kubectl_ok(&[
        "create",
        "rolebinding",
        "app-reader",
        "-n",
        &ns,
        "--role=app-reader",
        &format!("--serviceaccount={ns}:support"),
    ]);
    let reader = service_account_kubeconfig(&ns, "support");
    assert_eq!(
        stdout(&cp.kubectl_as(&reader, &["auth", "can-i", "get", "secrets", "-n", &ns])).trim(),
        "no"
    );
    let new_secret = client_secret(&ns, "billing").await;
    let right = plugin_as(&reader, &["verify", "billing"], &format!("{new_secret}\n"));
    assert_eq!(
        right.status.code(),
        Some(0),
        "{}{}",
        stdout(&right),
        stderr(&right)
    );
    assert!(
        stdout(&right).starts_with("match: current client secret"),
        "{}",
        stdout(&right)
    );
    let wrong = plugin_as(&reader, &["verify", "billing"], &old_secret);
    assert_eq!(
        wrong.status.code(),
        Some(1),
        "{}{}",
        stdout(&wrong),
        stderr(&wrong)
    );
    assert!(stdout(&wrong).starts_with("no match"), "{}", stdout(&wrong));
    // Nothing the plugin prints holds a secret.
    for out in [&right, &wrong] {
        let all = format!("{}{}", stdout(out), stderr(out));
        assert!(!all.contains(&new_secret) && !all.contains(&old_secret), "{all}");
    }
}

#[tokio::test]
async fn with_a_grace_period_rotate_keeps_the_previous_secret_and_revoke_previous_does_not() {
    let ns = namespace("plugin-grace");
    let cp = control_plane();
    let _operator = Operator::start(&cp.kubeconfig, &ns, &[], &[]);
    let apps: Api<OAuthApp> = Api::namespaced(admin_client().await, &ns);
    apply(
        &ns,
        "apiVersion: oauthapp.io/v1alpha1\nkind: OAuthApp\nmetadata: {name: billing}\nspec:\n  redirectUris: [\"https://billing.example.com/cb\"]\n  rotation: {gracePeriod: 600s}\n",
    );
    ready_with(&apps, "billing", 1).await;
    let first = client_secret(&ns, "billing").await;
    // A revoke annotation left from an earlier incident must not make a routine rotation revoke.
    cp.kubectl_ok(&[
        "annotate",
        "oauthapps",
        "billing",
        "-n",
        &ns,
        "oauthapp.io/rotate-revoke=true",
    ]);

    let out = plugin(&["rotate", "billing", "-n", &ns]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let app = apps.get("billing").await.expect("app");
    let annotations = app.metadata.annotations.clone().unwrap_or_default();
    assert!(
        !annotations.contains_key("oauthapp.io/rotate-revoke"),
        "{annotations:?}"
    );
    let status = status_of(&app);
    assert_eq!(status.rotation_count, 2);
    let previous = status
        .previous_secret
        .clone()
        .expect("the first secret stays valid");
    let expires = previous.expires_at.0.to_string();
    let text = stdout(&out);
    assert!(
        text.lines().next().is_some_and(|h| h.ends_with("PREVIOUS")),
        "{text}"
    );
    assert!(
        text.lines()
            .nth(1)
            .is_some_and(|l| l.ends_with(&format!("valid until {expires}"))),
        "{text}"
    );
    let second = client_secret(&ns, "billing").await;

    // verify says which secret matched; both pass.
    let old = plugin_as(&cp.kubeconfig, &["verify", "billing", "-n", &ns], &first);
    assert_eq!(old.status.code(), Some(0), "{}{}", stdout(&old), stderr(&old));
    assert!(
        stdout(&old).starts_with(&format!("match: previous, valid until {expires}")),
        "{}",
        stdout(&old)
    );
    assert!(
        stdout(&old).contains(&previous.client_secret_hint),
        "{}",
        stdout(&old)
    );
    let new = plugin_as(&cp.kubeconfig, &["verify", "billing", "-n", &ns], &second);
    assert_eq!(new.status.code(), Some(0), "{}{}", stdout(&new), stderr(&new));
    assert!(stdout(&new).starts_with("match: current"), "{}", stdout(&new));

    // status: the expiry in the table's last column, and the previous hint in the detail.
    let out = plugin(&["status", "-n", &ns]);
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].ends_with("PREVIOUS EXPIRES"), "{text}");
    assert!(lines[1].ends_with(&format!("   {expires}")), "{text}");
    let out = plugin(&["status", "billing", "-n", &ns]);
    let text = stdout(&out);
    assert!(
        text.contains(&format!(
            "Previous secret: {}, valid until {expires}",
            previous.client_secret_hint
        )),
        "{text}"
    );

    // --revoke-previous: the replaced secret is invalid at once, and so is the older one.
    let out = plugin(&["rotate", "billing", "-n", &ns, "--revoke-previous"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let text = stdout(&out);
    assert!(
        text.lines().nth(1).is_some_and(|l| l.ends_with("   revoked")),
        "{text}"
    );
    let app = apps.get("billing").await.expect("app");
    assert_eq!(status_of(&app).rotation_count, 3);
    assert_eq!(status_of(&app).previous_secret, None);
    let third = client_secret(&ns, "billing").await;
    for stale in [&first, &second] {
        let out = plugin_as(&cp.kubeconfig, &["verify", "billing", "-n", &ns], stale);
        assert_eq!(out.status.code(), Some(1), "{}{}", stdout(&out), stderr(&out));
        assert!(stdout(&out).starts_with("no match"), "{}", stdout(&out));
    }
    let current = plugin_as(&cp.kubeconfig, &["verify", "billing", "-n", &ns], &third);
    assert_eq!(current.status.code(), Some(0), "{}", stderr(&current));
    // No previous secret: the table's expiry column is empty.
    let out = plugin(&["status", "-n", &ns]);
    let text = stdout(&out);
    assert!(
        text.lines().nth(1).is_some_and(|l| l.ends_with("   True")),
        "{text}"
    );
    for secret in [&first, &second, &third] {
        assert!(!text.contains(secret.as_str()), "{text}");
    }
}

#[tokio::test]
async fn rotate_by_selector_rotates_each_matching_app_in_every_namespace_exactly_once() {
    let (ns_a, ns_b) = (namespace("plugin-bulk-a"), namespace("plugin-bulk-b"));
    let cp = control_plane();
    let both = format!("{ns_a},{ns_b}");
    let _operator = Operator::start(&cp.kubeconfig, &both, &[], &[]);
    // A label value of this test's own: -A also sees other tests' namespaces.
    let team = format!("payments-{ns_a}");
    let team = &team[..team.len().min(63)];
    let client = admin_client().await;
    let (apps_a, apps_b): (Api<OAuthApp>, Api<OAuthApp>) = (
        Api::namespaced(client.clone(), &ns_a),
        Api::namespaced(client, &ns_b),
    );
    apply(&ns_a, &app_manifest("checkout", &format!("team: {team}")));
    apply(&ns_a, &app_manifest("catalog", "team: other"));
    apply(&ns_b, &app_manifest("refunds", &format!("team: {team}")));
    apply(&ns_b, &app_manifest("ledger", &format!("team: {team}")));
    for (apps, name) in [
        (&apps_a, "checkout"),
        (&apps_a, "catalog"),
        (&apps_b, "refunds"),
        (&apps_b, "ledger"),
    ] {
        ready_with(apps, name, 1).await;
    }

    let out = plugin(&[
        "rotate",
        "-l",
        &format!("team={team}"),
        "-A",
        "--concurrency",
        "2",
    ]);
    assert!(
        out.status.success(),
        "rotate failed: {}{}",
        stdout(&out),
        stderr(&out)
    );
    let text = stdout(&out);
    assert_eq!(text.lines().count(), 4, "a header and one line per app: {text}");
    for (apps, name) in [(&apps_a, "checkout"), (&apps_b, "refunds"), (&apps_b, "ledger")] {
        let app = apps.get(name).await.expect("app");
        let status = status_of(&app);
        assert_eq!(status.rotation_count, 2, "{name} rotated exactly once");
        let hint = status.client_secret_hint.as_deref().expect("hint");
        assert!(
            text.lines()
                .any(|l| l.contains(name) && l.contains(hint) && l.contains("rotated")),
            "{name}: {text}"
        );
    }
    let untouched = apps_a.get("catalog").await.expect("app");
    assert_eq!(
        status_of(&untouched).rotation_count,
        1,
        "an app the selector does not match"
    );
    assert!(!text.contains("catalog"), "{text}");
}

#[tokio::test]
async fn rotate_times_out_with_a_clear_message_when_no_operator_acts() {
    let ns = namespace("plugin-timeout");
    let cp = control_plane();
    let mut operator = Operator::start(&cp.kubeconfig, &ns, &[], &[]);
    let apps: Api<OAuthApp> = Api::namespaced(admin_client().await, &ns);
    apply(&ns, &app_manifest("billing", ""));
    ready_with(&apps, "billing", 1).await;
    operator.kill9();

    let out = plugin(&["rotate", "billing", "-n", &ns, "--timeout", "3s"]);
    assert_eq!(out.status.code(), Some(1), "{}{}", stdout(&out), stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("{ns}/billing: timed out after 3s")),
        "{err}"
    );
    assert!(err.contains("Is the operator running?"), "{err}");
    assert!(err.contains("1 of 1 rotations did not complete"), "{err}");
    assert!(stdout(&out).contains("timeout"), "{}", stdout(&out));
    let app = apps.get("billing").await.expect("app");
    assert_eq!(status_of(&app).rotation_count, 1, "nothing rotated it");

    // The request stays: an operator that comes back rotates once.
    let _operator = Operator::start(&cp.kubeconfig, &ns, &[], &[]);
    ready_with(&apps, "billing", 2).await;
}

#[tokio::test]
async fn status_id_and_find_show_what_support_needs() {
    let ns = namespace("plugin-status");
    let cp = control_plane();
    let _operator = Operator::start(&cp.kubeconfig, &ns, &[], &[]);
    let apps: Api<OAuthApp> = Api::namespaced(admin_client().await, &ns);
    apply(&ns, &app_manifest("billing", ""));
    apply(
        &ns,
        "apiVersion: oauthapp.io/v1alpha1\nkind: OAuthApp\nmetadata: {name: portal}\nspec:\n  clientId: portal-web\n  rotation: {interval: 720h}\n",
    );
    let billing = ready_with(&apps, "billing", 1).await;
    let portal = ready_with(&apps, "portal", 1).await;
    let app_id = status_of(&billing).app_id.clone().expect("app id");

    // The table: one line per app, with its ids, hint, trigger, next rotation and Ready.
    let out = plugin(&["status", "-n", &ns]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(
        lines[0].starts_with("NAME ") && lines[0].contains("NEXT ROTATION"),
        "{text}"
    );
    let billing_line = lines[1];
    assert!(billing_line.starts_with("billing "), "{text}");
    for expected in [
        app_id.as_str(),
        status_of(&billing).client_secret_hint.as_deref().expect("hint"),
        "Created",
        "True",
    ] {
        assert!(billing_line.contains(expected), "{expected:?} missing: {text}");
    }
    let portal_line = lines[2];
    let next = status_of(&portal)
        .next_rotation_time
        .as_ref()
        .expect("next rotation")
        .0
        .to_string();
    assert!(
        portal_line.contains("portal-web") && portal_line.contains(&next),
        "{text}"
    );

    // -o json: the same rows, for scripts.
    let out = plugin(&["status", "-n", &ns, "-o", "json"]);
    let rows: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(rows[1]["clientId"], "portal-web");
    assert_eq!(rows[0]["appId"], app_id.as_str());
    assert_eq!(rows[0]["ready"], "True");

    // One app in detail, with its Events.
    let out = plugin(&["status", "billing", "-n", &ns]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains(&format!("App ID:          {app_id}")), "{text}");
    assert!(text.contains("Secret:          billing-oauth-client"), "{text}");
    assert!(text.contains("Ready:           True"), "{text}");
    assert!(text.contains("Schedule:        on request"), "{text}");
    let out = plugin(&["status", "portal", "-n", &ns]);
    assert!(
        stdout(&out).contains("Schedule:        every 720h"),
        "{}",
        stdout(&out)
    );
    assert!(
        text.contains("Events:") && text.contains("SecretCreated"),
        "{text}"
    );

    // id and find map between a resource and its REST id, both ways.
    let out = plugin(&["id", "billing", "-n", &ns]);
    assert_eq!(stdout(&out).trim(), app_id);
    let uid = billing.metadata.uid.clone().expect("uid");
    for key in [app_id.as_str(), uid.as_str()] {
        let out = plugin(&["find", key]);
        assert!(out.status.success(), "{}", stderr(&out));
        let text = stdout(&out);
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(text.contains(&ns) && text.contains("billing"), "{text}");
    }
    let out = plugin(&["find", "portal-web", "-n", &ns, "-o", "json"]);
    let found: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(found[0]["name"], "portal");
    let out = plugin(&["find", "no-such-client", "-n", &ns]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no OAuthApp has"), "{}", stderr(&out));
}

#[tokio::test]
async fn verify_refuses_a_status_hash_it_cannot_trust_and_says_why() {
    // No operator: the status is whatever someone with status access wrote.
    let ns = namespace("plugin-verify-untrusted");
    let cp = control_plane();
    apply(&ns, &app_manifest("billing", ""));
    let generated = oauthapp_operator::model::secret::ClientSecret::generate().expect("a secret");
    let secret = generated.expose();

    let out = plugin_as(&cp.kubeconfig, &["verify", "billing", "-n", &ns], secret);
    assert_eq!(out.status.code(), Some(2), "{}{}", stdout(&out), stderr(&out));
    assert!(
        stderr(&out).contains("has no status.clientSecretHash yet"),
        "{}",
        stderr(&out)
    );

    // A hash that asks argon2 for 4 GiB: refused before any hashing, with the reason.
    let greedy =
        "$argon2id$v=19$m=4194304,t=1,p=1$c2FsdHNhbHRzYWx0c2FsdA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let patch = serde_json::json!({"status": {"clientSecretHash": greedy}}).to_string();
    cp.kubectl_ok(&[
        "patch",
        "oapp",
        "billing",
        "-n",
        &ns,
        "--subresource=status",
        "--type=merge",
        "-p",
        &patch,
    ]);
    let out = plugin_as(&cp.kubeconfig, &["verify", "billing", "-n", &ns], secret);
    assert_eq!(out.status.code(), Some(2), "{}{}", stdout(&out), stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("refusing to verify") && err.contains("m=4194304"),
        "{err}"
    );
}

#[test]
fn kubeconfig_and_context_flags_choose_the_cluster_as_kubectl_does() {
    let ns = namespace("plugin-context");
    let cp = control_plane();
    apply(&ns, &app_manifest("billing", ""));
    // A copy of the kubeconfig whose current context points at nothing.
    let dir = tempfile::tempdir().expect("tempdir");
    let copy = dir.path().join("kubeconfig");
    std::fs::copy(&cp.kubeconfig, &copy).expect("copy kubeconfig");
    let good = stdout(&cp.kubectl_as(&copy, &["config", "current-context"]))
        .trim()
        .to_string();
    let user = stdout(&cp.kubectl_as(&copy, &["config", "view", "-o", "jsonpath={.users[0].name}"]));
    for args in [
        vec!["config", "set-cluster", "nowhere", "--server=https://127.0.0.1:1"],
        vec![
            "config",
            "set-context",
            "nowhere",
            "--cluster=nowhere",
            "--user",
            user.trim(),
        ],
        vec!["config", "use-context", "nowhere"],
    ] {
        let out = cp.kubectl_as(&copy, &args);
        assert!(out.status.success(), "kubectl {args:?}: {}", stderr(&out));
    }
    let elsewhere = Path::new("/nonexistent/kubeconfig");

    // KUBECONFIG points nowhere useful; --kubeconfig and --context pick the working cluster.
    let status = ["status", "-n", ns.as_str()];
    let out = plugin_as(
        elsewhere,
        &[
            &["--kubeconfig", copy.to_str().expect("utf-8"), "--context", &good][..],
            &status,
        ]
        .concat(),
        "",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("billing"), "{}", stdout(&out));
    // The current context of that file is the broken one: without --context, a clear error.
    let out = plugin_as(&copy, &status, "");
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    assert!(
        stderr(&out).starts_with("error: listing OAuthApps"),
        "{}",
        stderr(&out)
    );
}
