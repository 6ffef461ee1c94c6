//! Tenants share one operator: each test plays an attack by a tenant with ordinary rights (its
//! own namespace, its own ServiceAccounts, tokens the API server accepts) and measures the
//! victim, another tenant.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};
use oauthapp_operator::model::crd::OAuthApp;

use crate::support::*;

const WAIT: Duration = Duration::from_secs(60);

/// Cheap argon2 parameters, where hashing is not what a test measures.
const CHEAP_HASHES: [&str; 4] = ["--hash-memory-kib", "1024", "--hash-iterations", "1"];

const VERIFIER_RULES: &str =
    "- apiGroups: [oauthapp.io]\n  resources: [oauthapps/verify]\n  verbs: [create]\n";

/// ServiceAccount `sa` in `ns`, bound to a Role of `rules` there if any; a token for it.
fn caller(ns: &str, sa: &str, rules: &str) -> String {
    let cp = control_plane();
    cp.kubectl_ok(&["create", "serviceaccount", sa, "-n", ns]);
    if !rules.is_empty() {
        cp.apply_ok(
            ns,
            &format!(
                "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata:\n  name: {sa}\nrules:\n{rules}---\n\
                 apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata:\n  name: {sa}\n\
                 roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: {sa}}}\n\
                 subjects: [{{kind: ServiceAccount, name: {sa}, namespace: {ns}}}]\n"
            ),
        );
    }
    service_account_token(ns, sa)
}

/// A verify call: its status code and JSON body (None when the operator did not answer).
async fn verify(port: u16, token: &str, client_id: &str, secret: &str) -> Option<(u16, serde_json::Value)> {
    let body = serde_json::json!({"client_id": client_id, "client_secret": secret}).to_string();
    let (code, text) =
        http_request_with_body(port, "POST", "/api/v1/oauth-apps/verify", token, Some(&body)).await?;
    Some((
        code,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
    ))
}

/// A secret of the right shape that is no app's.
fn wrong_secret() -> String {
    oauthapp_operator::model::secret::ClientSecret::generate()
        .expect("random")
        .expose()
        .to_string()
}

/// Writes `plaintext` into `secret` (tenant A's app's Secret, as read) as another writer would:
/// a replace, conditional on the version read.
async fn write_client_secret(
    secrets: &Api<Secret>,
    mut secret: Secret,
    plaintext: &str,
) -> kube::Result<Secret> {
    secret.metadata.managed_fields = None;
    secret.data.get_or_insert_default().insert(
        "client_secret".into(),
        k8s_openapi::ByteString(plaintext.as_bytes().to_vec()),
    );
    secrets
        .replace("portal-oauth-client", &Default::default(), &secret)
        .await
}

/// Tenant A's app, Ready: its client id and its plaintext secret.
async fn tenant_app(ns: &str) -> (String, String) {
    let client = admin_client().await;
    let apps: Api<OAuthApp> = Api::namespaced(client.clone(), ns);
    let secrets: Api<Secret> = Api::namespaced(client, ns);
    control_plane().apply_ok(
        ns,
        "apiVersion: oauthapp.io/v1alpha1\nkind: OAuthApp\nmetadata:\n  name: portal\nspec:\n  redirectUris: [\"https://portal.example.com/cb\"]\n",
    );
    let client_id = eventually("tenant A's app Ready", WAIT, || async {
        let app = apps.get_opt("portal").await.ok()??;
        let ready = app.ready_condition().is_some_and(|c| c.status == "True");
        ready.then(|| app.status.and_then(|s| s.client_id)).flatten()
    })
    .await;
    let secret = secrets.get("portal-oauth-client").await.expect("Secret");
    let plaintext = String::from_utf8(secret.data.expect("data")["client_secret"].0.clone()).expect("utf-8");
    (client_id, plaintext)
}

async fn wait_ready(operator: &Operator) {
    eventually("the operator's /readyz", WAIT, || async {
        http_get(operator.admin_port, "/readyz").await
    })
    .await;
}

/// The resident set of a process now, and its peak so far (VmRSS, VmHWM), in KiB.
fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} in /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Tenant B knows tenant A's client id (client ids are not secret) and has two ServiceAccounts
/// with no roles. They send verify for A's client id at 10/s each, with the operator's default
/// limits. A's verifier, which may verify A's app, presents a wrong secret every second and the
/// right one every 11 s (past the cache of positive answers): it is never answered 429, and
/// every answer is right.
#[tokio::test]
async fn a_tenant_that_knows_another_tenants_client_id_cannot_lock_it_out_of_verify() {
    let (ns_a, ns_b) = (namespace("tenants-lockout-a"), namespace("tenants-lockout-b"));
    let watched = format!("{ns_a},{ns_b}");
    let operator = Operator::start(&control_plane().kubeconfig, &watched, &[], &[]);
    wait_ready(&operator).await;
    let (client_id, secret) = tenant_app(&ns_a).await;
    let verifier = caller(&ns_a, "gateway", VERIFIER_RULES);
    let attackers = [caller(&ns_b, "b1", ""), caller(&ns_b, "b2", "")];
    let port = operator.api_port;

    const SECONDS: u64 = 25;
    let mut flood = Vec::new();
    for token in attackers {
        let client_id = client_id.clone();
        flood.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            let mut codes = std::collections::BTreeMap::<u16, u32>::new();
            for _ in 0..SECONDS * 10 {
                tick.tick().await;
                if let Some((code, body)) = verify(port, &token, &client_id, &wrong_secret()).await {
                    assert!(body["valid"] != true, "an attacker's guess verified");
                    *codes.entry(code).or_default() += 1;
                }
            }
            codes
        }));
    }
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut answered = 0;
    for second in 0..SECONDS {
        tick.tick().await;
        let (presented, valid) = if second % 11 == 0 {
            (secret.clone(), true)
        } else {
            (wrong_secret(), false)
        };
        let (code, body) = verify(port, &verifier, &client_id, &presented)
            .await
            .expect("the operator answers");
        assert_eq!(
            code, 200,
            "second {second}: tenant A's verifier was refused: {body}"
        );
        assert_eq!(body["valid"], valid, "second {second}: {body}");
        answered += 1;
    }
    let mut attacker_codes = std::collections::BTreeMap::<u16, u32>::new();
    for task in flood {
        for (code, n) in task.await.expect("attacker task") {
            *attacker_codes.entry(code).or_default() += n;
        }
    }
    assert_eq!(answered, SECONDS);
    // The attack ran: its requests were answered (some refused, on B's own buckets).
    let sent: u32 = attacker_codes.values().sum();
    assert!(
        sent as u64 >= SECONDS * 10,
        "the attack sent {sent} requests: {attacker_codes:?}"
    );
    assert!(
        attacker_codes.keys().all(|c| [200, 429].contains(c)),
        "{attacker_codes:?}"
    );
    eprintln!("attackers' answers by status: {attacker_codes:?}");
}

/// A flood of verify calls with client ids no client can have (60 KiB each) from ten
/// ServiceAccounts of one tenant, at the global limit, and of distinct unknown ids of the right
/// shape: each long one is refused with 400 before any lookup or limiter, and the operator's
/// memory stays within a bound.
#[tokio::test]
async fn a_flood_of_client_ids_that_cannot_be_one_is_refused_and_holds_no_memory() {
    let ns = namespace("tenants-flood");
    let operator = Operator::start(&control_plane().kubeconfig, &ns, &CHEAP_HASHES, &[]);
    wait_ready(&operator).await;
    tenant_app(&ns).await;
    let port = operator.api_port;
    let tokens: Vec<String> = (0..10).map(|i| caller(&ns, &format!("flood-{i}"), "")).collect();
    let (_, peak_before) = rss_kib(operator.pid());

    const ROUNDS: usize = 200;
    let mut flood = Vec::new();
    for (i, token) in tokens.into_iter().enumerate() {
        flood.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            let mut codes = std::collections::BTreeMap::<(bool, u16), u32>::new();
            for round in 0..ROUNDS {
                tick.tick().await;
                // Mostly ids far too long, each new; every fifth a distinct unknown id that
                // could be one.
                let long = round % 5 != 0;
                let id = if long {
                    format!("{i}-{round}-{}", "x".repeat(60 * 1024))
                } else {
                    format!("unknown-{i}-{round}-{}", "y".repeat(100))
                };
                if let Some((code, body)) = verify(port, &token, &id, &wrong_secret()).await {
                    if long && code == 400 {
                        assert_eq!(body["code"], "BAD_REQUEST", "{body}");
                        assert!(
                            body["message"].as_str().is_some_and(|m| m.contains("client_id")),
                            "{body}"
                        );
                    }
                    *codes.entry((long, code)).or_default() += 1;
                }
            }
            codes
        }));
    }
    let mut codes = std::collections::BTreeMap::<(bool, u16), u32>::new();
    for task in flood {
        for (key, n) in task.await.expect("flood task") {
            *codes.entry(key).or_default() += n;
        }
    }
    let (_, peak_after) = rss_kib(operator.pid());
    eprintln!(
        "answers (long id?, status): {codes:?}; peak RSS {peak_before} KiB before, {peak_after} KiB after"
    );
    // Long ids are refused as such (or by the callers' own request buckets), never looked up.
    for (&(long, code), n) in &codes {
        let expected: &[u16] = if long { &[400, 429] } else { &[200, 429] };
        assert!(
            expected.contains(&code),
            "{n} answers {code} for long={long}: {codes:?}"
        );
    }
    let refused_as_malformed = codes.get(&(true, 400)).copied().unwrap_or(0);
    assert!(refused_as_malformed >= 1000, "{codes:?}");
    // 1,000+ ids of 60 KiB would hold 60+ MiB if kept; the flood may cost the buffers in flight.
    assert!(
        peak_after <= peak_before + 32 * 1024,
        "the operator's peak RSS grew from {peak_before} KiB to {peak_after} KiB"
    );
}

/// A tenant (or a Reloader, a sync tool, Argo CD's tracking annotation) edits the labels of an
/// app's Secret 20 times: the operator follows each new version (its status names it) without
/// an argon2 check, since the data did not change. A change of the data is checked (one hash)
/// and repaired.
#[tokio::test]
async fn edits_of_a_secret_that_leave_its_data_alone_cost_no_hash() {
    let ns = namespace("tenants-labels");
    let operator = Operator::start(&control_plane().kubeconfig, &ns, &[], &[]);
    wait_ready(&operator).await;
    tenant_app(&ns).await;
    let client = admin_client().await;
    let apps: Api<OAuthApp> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client, &ns);
    let caught_up = |rv: String| {
        let apps = apps.clone();
        async move {
            eventually("the status to name the Secret's version", WAIT, || async {
                let app = apps.get("portal").await.ok()?;
                let status = app.status?;
                let ready = app.metadata.name.is_some()
                    && status
                        .conditions
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True");
                (ready && status.secret_resource_version.as_deref() == Some(rv.as_str())).then_some(status)
            })
            .await
        }
    };
    let before = secrets.get("portal-oauth-client").await.expect("Secret");
    caught_up(before.metadata.resource_version.clone().expect("rv")).await;
    let checks = operator
        .metric("oauthapp_secret_content_checks_total")
        .await
        .expect("the content checks metric");
    for i in 0..20 {
        control_plane().kubectl_ok(&[
            "label",
            "secret",
            "portal-oauth-client",
            "-n",
            &ns,
            &format!("touched={i}"),
            "--overwrite",
        ]);
    }
    let labelled = secrets.get("portal-oauth-client").await.expect("Secret");
    let status = caught_up(labelled.metadata.resource_version.clone().expect("rv")).await;
    assert_eq!(status.rotation_count, 1, "no rotation");
    assert_eq!(labelled.data, before.data, "the data is unchanged");
    assert_eq!(
        operator.metric("oauthapp_secret_content_checks_total").await,
        Some(checks),
        "a label edit cost an argon2 check"
    );

    // The data itself changed: checked (one hash), drift, a new secret.
    write_client_secret(&secrets, labelled.clone(), &wrong_secret())
        .await
        .expect("replace the Secret");
    eventually("the drift to be repaired", WAIT, || async {
        let status = apps.get("portal").await.ok()?.status?;
        (status.rotation_count == 2).then_some(())
    })
    .await;
    assert!(
        operator.metric("oauthapp_secret_content_checks_total").await >= Some(checks + 1.0),
        "the changed data was checked"
    );
}

const ROTATER_RULES: &str = "- apiGroups: [oauthapp.io]\n  resources: [oauthapps]\n  verbs: [get]\n- apiGroups: [oauthapp.io]\n  resources: [oauthapps/rotate]\n  verbs: [create]\n";

/// A squatter in tenant B asks for tenant A's `spec.clientId`: it sits in ClientIdConflict, and
/// B's rotator cannot give it a secret through the REST API (409 with the reason), so it never
/// looks like the holder. A's verifier learns from each answer which namespace the client id
/// belongs to.
#[tokio::test]
async fn a_squatter_on_another_tenants_client_id_cannot_be_rotated_into_holding_it() {
    let (ns_a, ns_b) = (namespace("tenants-squat-a"), namespace("tenants-squat-b"));
    let operator = Operator::start(&control_plane().kubeconfig, &format!("{ns_a},{ns_b}"), &[], &[]);
    wait_ready(&operator).await;
    let client = admin_client().await;
    let holder = |name: &str| {
        format!(
            "apiVersion: oauthapp.io/v1alpha1\nkind: OAuthApp\nmetadata:\n  name: {name}\nspec:\n  clientId: billing-portal\n  redirectUris: [\"https://{name}.example.com/cb\"]\n"
        )
    };
    control_plane().apply_ok(&ns_a, &holder("portal"));
    let a_apps: Api<OAuthApp> = Api::namespaced(client.clone(), &ns_a);
    eventually("the holder Ready", WAIT, || async {
        let app = a_apps.get_opt("portal").await.ok()??;
        app.ready_condition()
            .is_some_and(|c| c.status == "True")
            .then_some(())
    })
    .await;
    control_plane().apply_ok(&ns_b, &holder("squatter"));
    let b_apps: Api<OAuthApp> = Api::namespaced(client.clone(), &ns_b);
    let squatter = eventually("the squatter in ClientIdConflict", WAIT, || async {
        let app = b_apps.get_opt("squatter").await.ok()??;
        app.ready_condition()
            .is_some_and(|c| c.status == "False" && c.reason == "ClientIdConflict")
            .then_some(app)
    })
    .await;
    let id = oauthapp_operator::model::id::encode(
        squatter
            .metadata
            .uid
            .as_deref()
            .expect("uid")
            .parse()
            .expect("a uuid"),
    );
    let rotater = caller(&ns_b, "rotater", ROTATER_RULES);
    let (code, body) = http_request(
        operator.api_port,
        "POST",
        &format!("/api/v1/oauth-apps/{id}/rotate"),
        &rotater,
    )
    .await
    .expect("the operator answers");
    assert_eq!(code, 409, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(body["code"], "CONFLICT", "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("ClientIdConflict")),
        "{body}"
    );
    let status = b_apps
        .get("squatter")
        .await
        .expect("squatter")
        .status
        .unwrap_or_default();
    assert_eq!(
        (status.rotation_count, status.client_id),
        (0, None),
        "no secret given"
    );
    let b_secrets: Api<Secret> = Api::namespaced(client.clone(), &ns_b);
    assert!(
        b_secrets
            .get_opt("squatter-oauth-client")
            .await
            .expect("get")
            .is_none()
    );

    // The holder's secret verifies, and the answer names the holder's namespace.
    let a_secrets: Api<Secret> = Api::namespaced(client, &ns_a);
    let secret = a_secrets.get("portal-oauth-client").await.expect("Secret");
    let plaintext = String::from_utf8(secret.data.expect("data")["client_secret"].0.clone()).expect("utf-8");
    let verifier = caller(&ns_a, "gateway", VERIFIER_RULES);
    let (code, answer) = verify(operator.api_port, &verifier, "billing-portal", &plaintext)
        .await
        .expect("the operator answers");
    assert_eq!(code, 200);
    assert_eq!(answer["valid"], true, "{answer}");
    assert_eq!(answer["namespace"], ns_a.as_str(), "{answer}");
}

/// A writer that fights the operator (a GitOps tool re-applying its own `client_secret`, once a
/// second for 40 s): the operator repairs the first drift at once, then backs off (30 s, then
/// twice the gap), so the fight costs a few rotations, not forty; the app says why in its Ready
/// condition, and its history shows the repairs.
#[tokio::test]
async fn a_writer_that_fights_the_operator_gets_repairs_that_back_off() {
    let ns = namespace("tenants-fight");
    let operator = Operator::start(&control_plane().kubeconfig, &ns, &CHEAP_HASHES, &[]);
    wait_ready(&operator).await;
    tenant_app(&ns).await;
    let client = admin_client().await;
    let apps: Api<OAuthApp> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client, &ns);
    let theirs = wrong_secret();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut writes = 0;
    for _ in 0..40 {
        tick.tick().await;
        let secret = secrets.get("portal-oauth-client").await.expect("Secret");
        let current = secret
            .data
            .as_ref()
            .and_then(|d| d.get("client_secret"))
            .map(|b| b.0.clone());
        if current.as_deref() == Some(theirs.as_bytes()) {
            continue;
        }
        if write_client_secret(&secrets, secret, &theirs).await.is_ok() {
            writes += 1;
        }
    }
    let app = apps.get("portal").await.expect("app");
    let status = app.status.clone().expect("status");
    let repairs = status.rotation_count - 1;
    eprintln!("the writer wrote {writes} times; the operator repaired {repairs} times");
    assert!(writes >= 2, "the writer fought: {writes} writes");
    assert!((1..=3).contains(&repairs), "{repairs} repairs in 40 s");
    assert!(
        status
            .history
            .iter()
            .take(repairs as usize)
            .all(|e| e.trigger.as_str() == "SecretDrift"),
        "{:?}",
        status.history
    );
    let ready = app.ready_condition().expect("Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "RepairBackoff"),
        "{}",
        ready.message
    );
    assert!(ready.message.contains("another writer"), "{}", ready.message);
    // The repairs held back are not counted by the brake on mass repair: it stays off, and
    // every other app's repairs go on.
    assert_eq!(operator.metric("oauthapp_repair_brake_engaged").await, Some(0.0));
    assert_eq!(operator.metric("oauthapp_repairs_held").await, Some(0.0));
}

/// Anyone who may create a Secret can give it the operator's label. Three hundred such Secrets,
/// no app's, each with 180 KiB of annotations and a hundred labels (some 56 MiB in all), cost a
/// restarted operator almost nothing: its relist streams them one by one (no page of whole
/// objects), and it keeps of each only what it reads. Its peak RSS across the restart stays
/// within a bound.
/// A hundred labels of 60 characters and six annotations of 30 KiB: some 190 KiB of metadata
/// that is not the operator's.
fn heavy_metadata() -> (
    std::collections::BTreeMap<String, String>,
    std::collections::BTreeMap<String, String>,
) {
    let labels = (0..100)
        .map(|l| (format!("bait.example.com/label-{l:03}"), "v".repeat(60)))
        .collect();
    let annotations = (0..6)
        .map(|a| (format!("bait.example.com/note-{a}"), "x".repeat(30 * 1024)))
        .collect();
    (labels, annotations)
}

#[tokio::test]
async fn labelled_secrets_that_are_no_apps_cost_a_restarted_operator_no_memory() {
    use futures::StreamExt;
    let ns = namespace("tenants-inflate");
    let first = Operator::start(&control_plane().kubeconfig, &ns, &CHEAP_HASHES, &[]);
    wait_ready(&first).await;
    tenant_app(&ns).await;
    let client = admin_client().await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let created = futures::stream::iter(0..300)
        .map(|i| {
            let secrets = secrets.clone();
            async move {
                let mut secret = Secret::default();
                secret.metadata.name = Some(format!("bait-{i}"));
                let (mut labels, annotations) = heavy_metadata();
                labels.insert("app.kubernetes.io/managed-by".into(), "oauthapp-operator".into());
                secret.metadata.labels = Some(labels);
                secret.metadata.annotations = Some(annotations);
                secrets.create(&Default::default(), &secret).await.is_ok()
            }
        })
        .buffer_unordered(8)
        .filter(|ok| std::future::ready(*ok))
        .count()
        .await;
    assert_eq!(created, 300);
    drop(first);

    let second = Operator::start(&control_plane().kubeconfig, &ns, &CHEAP_HASHES, &[]);
    wait_ready(&second).await;
    let apps: Api<OAuthApp> = Api::namespaced(client, &ns);
    eventually("the app Ready after the restart", WAIT, || async {
        let app = apps.get("portal").await.ok()?;
        app.ready_condition()
            .is_some_and(|c| c.status == "True")
            .then_some(())
    })
    .await;
    let (_, peak) = rss_kib(second.pid());
    eprintln!("peak RSS after a restart with 300 labelled Secrets of ~190 KiB: {peak} KiB");
    assert!(peak <= 64 * 1024, "the operator's peak RSS was {peak} KiB");
}

/// With `--streaming-lists=false` (an API server without the WatchList feature) the watches
/// list in pages instead, and the operator works as before.
#[tokio::test]
async fn the_watches_also_work_with_paged_lists() {
    let ns = namespace("tenants-paged");
    let operator = Operator::start(
        &control_plane().kubeconfig,
        &ns,
        &["--streaming-lists=false"],
        &[],
    );
    wait_ready(&operator).await;
    let (client_id, secret) = tenant_app(&ns).await;
    let verifier = caller(&ns, "gateway", VERIFIER_RULES);
    let answer = eventually("the secret to verify", WAIT, || async {
        let (_, body) = verify(operator.api_port, &verifier, &client_id, &secret).await?;
        (body["valid"] == true).then_some(body)
    })
    .await;
    assert_eq!(answer["secret"], "current");
}

/// Verify answers from the operator's cache of the apps, which its watch keeps current. When
/// that watch fails (this replica cut off from the API server), a verifier gets answers from the
/// cache for at most `--verify-max-staleness`, then 503 (retry): a secret revoked meanwhile never
/// verifies from a stale view for longer. Back in touch, the watch relists and verify answers
/// again.
#[tokio::test]
async fn verify_answers_503_once_its_view_of_the_apps_may_be_stale() {
    use crate::faults::{Toxiproxy, apiserver_address, kubeconfig_via};
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cp = control_plane();
    let ns = namespace("tenants-stale");
    let toxiproxy = Toxiproxy::start(cp).await;
    let port = toxiproxy
        .proxy("stale-view", &apiserver_address(&cp.kubeconfig))
        .await;
    let kubeconfig = kubeconfig_via(cp, port, "stale-view");
    // Callers' reviews are reused for 5 minutes: what is measured is the view of the apps.
    let operator = Operator::start(
        &kubeconfig,
        &ns,
        &["--verify-max-staleness", "5s", "--auth-cache-ttl", "5m"],
        &[],
    );
    wait_ready(&operator).await;
    let (client_id, secret) = tenant_app(&ns).await;
    let verifier = caller(&ns, "gateway", VERIFIER_RULES);
    let api = operator.api_port;
    // Polled faster than the caller's rate: a 429 is asked again.
    let answer = || async {
        let (code, body) = verify(api, &verifier, &client_id, &secret).await?;
        (code != 429).then_some((code, body))
    };
    eventually("the secret to verify", WAIT, || async {
        let (_, body) = answer().await?;
        (body["valid"] == true).then_some(())
    })
    .await;

    toxiproxy.set_enabled("stale-view", false).await;
    let (code, body) = eventually("verify to answer 503 for a stale view", WAIT, || async {
        let (code, body) = answer().await?;
        if code == 200 {
            // Until then, from the cache: still the right answer.
            assert_eq!(body["valid"], true, "{body}");
            return None;
        }
        Some((code, body))
    })
    .await;
    assert_eq!(code, 503, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("may be stale")),
        "{body}"
    );

    toxiproxy.set_enabled("stale-view", true).await;
    eventually("verify to answer again", WAIT, || async {
        let (code, body) = answer().await?;
        (code == 200 && body["valid"] == true).then_some(())
    })
    .await;
}

/// Waits (up to 5 minutes) until `count` apps of `apps` are Ready.
async fn all_ready(apps: &Api<OAuthApp>, count: usize) {
    eventually("every app Ready", Duration::from_secs(300), || async {
        let list = apps.list(&Default::default()).await.ok()?;
        let ready = list
            .items
            .iter()
            .filter(|a| a.ready_condition().is_some_and(|c| c.status == "True"))
            .count();
        (ready == count).then_some(())
    })
    .await
}

/// Apps in the storming namespace.
const STORM_APPS: usize = 150;

/// How many of the storm's content checks (argon2 hashes) another namespace's rotation may see
/// pass while it waits: the two workers' hashes under way when it comes, one turn of the storm
/// before its own, and what the other worker checks while it hashes and writes. Served in
/// arrival order, it would wait for every check the storm's 20 reconciles (half of
/// `--concurrency 40`) have asked for, or, without shares, for the storm's whole line.
const STORM_CHECKS_PER_ROTATION: f64 = 10.0;

/// Annotates `name` for rotation with `token` and waits for its status to have acted on it:
/// how long that took, and how many content checks the operator made meanwhile.
async fn rotate_and_time(
    apps: &Api<OAuthApp>,
    operator: &Operator,
    name: &str,
    token: &str,
) -> (Duration, f64) {
    let checks = || operator.metric("oauthapp_secret_content_checks_total");
    let before = checks().await.expect("the content checks metric");
    let patch = serde_json::json!({"metadata": {"annotations": {"oauthapp.io/rotate": token}}});
    let started = std::time::Instant::now();
    apps.patch(
        name,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&patch),
    )
    .await
    .expect("annotate the app");
    let deadline = started + WAIT;
    loop {
        let app = apps.get(name).await.expect("the app");
        if app.status.and_then(|s| s.observed_rotate_token).as_deref() == Some(token) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "rotation {token} of {name} not done in {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let took = started.elapsed();
    (took, checks().await.expect("the content checks metric") - before)
}

fn p50(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// One namespace rewrites its apps' Secrets at 50/s for 30 s, each write new data: a content
/// check (an argon2 hash each) and drift. Another namespace annotates its app for rotation, on a
/// quiet operator first, then again and again during the storm. The operator watches every
/// namespace, as the chart installs it, with its default hash workers (argon2 made 8 times as
/// costly, and 40 reconcile slots, so that the storm asks for more hashing than the machine has). The storm gets its
/// share, not the whole: at most half the reconcile slots, and hash workers in turn, so each of
/// the other namespace's rotations sees only a handful of the storm's hashes pass while it
/// waits, never the storm's line. Both p50s of annotate → status are reported.
#[tokio::test]
async fn a_namespace_with_a_storm_of_secret_edits_gets_its_share_of_the_hashing_not_the_whole() {
    let private = PrivateControlPlane::start("tenants-storm");
    let cp = &private.0;
    let storm = cp.namespace("storm");
    let victim = cp.namespace("victim");
    let operator = Operator::start_on(
        cp,
        &cp.kubeconfig,
        "",
        &["--hash-iterations", "16", "--concurrency", "40"],
        &[],
    );
    wait_ready(&operator).await;
    let client = client_from(&cp.kubeconfig).await;
    let storm_apps: Api<OAuthApp> = Api::namespaced(client.clone(), &storm);
    let storm_secrets: Api<Secret> = Api::namespaced(client.clone(), &storm);
    let victim_apps: Api<OAuthApp> = Api::namespaced(client.clone(), &victim);
    let app = |name: &str| {
        format!(
            "apiVersion: oauthapp.io/v1alpha1\nkind: OAuthApp\nmetadata:\n  name: {name}\nspec:\n  redirectUris: [\"https://{name}.example.com/cb\"]\n"
        )
    };
    let manifests: Vec<String> = (0..STORM_APPS).map(|i| app(&format!("s{i}"))).collect();
    cp.apply_ok(&storm, &manifests.join("---\n"));
    cp.apply_ok(&victim, &app("portal"));
    all_ready(&storm_apps, STORM_APPS).await;
    all_ready(&victim_apps, 1).await;

    let mut rotations = 0;
    let mut quiet = Vec::new();
    for _ in 0..10 {
        rotations += 1;
        let (took, _) = rotate_and_time(&victim_apps, &operator, "portal", &format!("r{rotations}")).await;
        quiet.push(took);
    }

    let checks_at_start = operator
        .metric("oauthapp_secret_content_checks_total")
        .await
        .expect("the content checks metric");
    let storm_writer = tokio::spawn({
        let secrets = storm_secrets.clone();
        async move {
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut written = 0;
            for i in 0..1500 {
                tick.tick().await;
                let value = k8s_openapi::ByteString(wrong_secret().into_bytes());
                let patch = serde_json::json!({"data": {"client_secret": value}});
                let name = format!("s{}-oauth-client", i % STORM_APPS);
                if secrets
                    .patch(
                        &name,
                        &kube::api::PatchParams::default(),
                        &kube::api::Patch::Merge(&patch),
                    )
                    .await
                    .is_ok()
                {
                    written += 1;
                }
            }
            written
        }
    });
    // The storm's line has formed: more checks asked for than made.
    eventually("the storm's checks to queue up", WAIT, || async {
        let deferred = operator.metric("oauthapp_reconciles_deferred_total").await?;
        (deferred > 0.0).then_some(())
    })
    .await;
    let mut stormy = Vec::new();
    let mut seen = Vec::new();
    let mut pace = tokio::time::interval(Duration::from_secs(2));
    while !storm_writer.is_finished() && stormy.len() < 12 {
        pace.tick().await;
        rotations += 1;
        let (took, checks) =
            rotate_and_time(&victim_apps, &operator, "portal", &format!("r{rotations}")).await;
        stormy.push(took);
        seen.push(checks);
    }
    let written = storm_writer.await.expect("the storm writer");
    let storm_checks = operator
        .metric("oauthapp_secret_content_checks_total")
        .await
        .expect("the content checks metric")
        - checks_at_start;
    let deferred = operator
        .metric("oauthapp_reconciles_deferred_total")
        .await
        .unwrap_or(0.0);
    eprintln!(
        "storm: {written} Secret writes in 30 s, {storm_checks} content checks, {deferred} reconciles deferred; \
         victim annotate → status p50: quiet {:?}, in the storm {:?} ({} samples); storm checks seen per \
         rotation: {seen:?}",
        p50(quiet),
        p50(stormy.clone()),
        stormy.len()
    );
    assert!(written >= 1000, "the storm wrote {written} times");
    assert!(stormy.len() >= 5, "{} rotations during the storm", stormy.len());
    assert!(
        seen.iter().all(|checks| *checks <= STORM_CHECKS_PER_ROTATION),
        "a rotation of another namespace waited for the storm's line: storm checks seen per rotation {seen:?}"
    );
    let status = victim_apps
        .get("portal")
        .await
        .expect("app")
        .status
        .expect("status");
    assert_eq!(
        status.rotation_count,
        1 + rotations,
        "each annotation rotated once"
    );
}

/// A tenant who may edit its own apps' Secrets gives 150 of them some 190 KiB each of labels and
/// annotations (28 MiB in all). The operator caches of each only its record and the managed-by
/// label, so a restart costs it no more memory (peak RSS bound asserted), and a rotation of such
/// an app, from the cache, reads the Secret afresh and keeps what the tenant wrote.
#[tokio::test]
async fn a_tenants_heavy_secrets_cost_a_restarted_operator_no_memory_and_keep_their_metadata() {
    use futures::StreamExt;
    const APPS: usize = 150;
    let ns = namespace("tenants-heavy-own");
    let first = Operator::start(&control_plane().kubeconfig, &ns, &CHEAP_HASHES, &[]);
    wait_ready(&first).await;
    let client = admin_client().await;
    let apps: Api<OAuthApp> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let manifests: Vec<String> = (0..APPS)
        .map(|i| {
            format!(
                "apiVersion: oauthapp.io/v1alpha1\nkind: OAuthApp\nmetadata:\n  name: heavy-{i}\nspec:\n  redirectUris: [\"https://heavy.example.com/cb\"]\n"
            )
        })
        .collect();
    control_plane().apply_ok(&ns, &manifests.join("---\n"));
    all_ready(&apps, APPS).await;
    let weighed = futures::stream::iter(0..APPS)
        .map(|i| {
            let secrets = secrets.clone();
            async move {
                let (labels, annotations) = heavy_metadata();
                let patch = serde_json::json!({"metadata": {"labels": labels, "annotations": annotations}});
                secrets
                    .patch(
                        &format!("heavy-{i}-oauth-client"),
                        &kube::api::PatchParams::default(),
                        &kube::api::Patch::Merge(&patch),
                    )
                    .await
                    .is_ok()
            }
        })
        .buffer_unordered(8)
        .filter(|ok| std::future::ready(*ok))
        .count()
        .await;
    assert_eq!(weighed, APPS);
    drop(first);

    let second = Operator::start(&control_plane().kubeconfig, &ns, &CHEAP_HASHES, &[]);
    wait_ready(&second).await;
    all_ready(&apps, APPS).await;
    let (_, peak) = rss_kib(second.pid());
    eprintln!("peak RSS after a restart with {APPS} app Secrets of ~190 KiB: {peak} KiB");
    assert!(peak <= 64 * 1024, "the operator's peak RSS was {peak} KiB");

    let before = secrets.get("heavy-0-oauth-client").await.expect("Secret");
    let patch = serde_json::json!({"metadata": {"annotations": {"oauthapp.io/rotate": "heavy"}}});
    apps.patch(
        "heavy-0",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&patch),
    )
    .await
    .expect("annotate");
    eventually("the rotation", WAIT, || async {
        let status = apps.get("heavy-0").await.ok()?.status?;
        (status.rotation_count == 2 && status.observed_rotate_token.as_deref() == Some("heavy")).then_some(())
    })
    .await;
    let after = secrets.get("heavy-0-oauth-client").await.expect("Secret");
    assert_ne!(after.data, before.data, "a new secret");
    let (labels, annotations) = heavy_metadata();
    for (k, v) in &labels {
        assert_eq!(after.labels().get(k), Some(v), "label {k} kept");
    }
    for (k, v) in &annotations {
        assert_eq!(after.annotations().get(k), Some(v), "annotation {k} kept");
    }
    assert!(
        !after
            .annotations()
            .contains_key("oauthapp.io/cached-without-others"),
        "the cache's mark never reaches the Secret"
    );
}
