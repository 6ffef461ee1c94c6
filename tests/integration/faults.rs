//! Faults, injected with Toxiproxy (tests/toxiproxy/build.sh builds the pinned server) between
//! each operator process and the API server: a leader cut off from the API server, and what the
//! API server's audit log says each replica wrote.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use kube::Api;
use oauthapp_operator::model::crd::OAuthApp;
use serde_json::{Value, json};

use crate::support::*;

const WAIT: Duration = Duration::from_secs(120);

/// A Toxiproxy server of one test's own, driven by its HTTP API; killed when dropped.
pub(crate) struct Toxiproxy {
    child: Child,
    api: String,
    http: reqwest::Client,
}

impl Toxiproxy {
    pub(crate) async fn start(cp: &ControlPlane) -> Toxiproxy {
        let out = Command::new(repo().join("tests/toxiproxy/build.sh"))
            .stderr(Stdio::inherit())
            .output()
            .expect("run tests/toxiproxy/build.sh");
        assert!(out.status.success(), "tests/toxiproxy/build.sh failed");
        let bin = PathBuf::from(stdout(&out).trim());
        let port = free_port();
        let log = std::fs::File::create(cp.dir.join(format!("toxiproxy-{port}.log"))).expect("toxiproxy log");
        let child = Command::new(bin)
            .args(["-host", "127.0.0.1", "-port", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log)
            .spawn()
            .expect("start toxiproxy-server");
        cp.adopt(child.id());
        let proxy = Toxiproxy {
            child,
            api: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
        };
        eventually("toxiproxy answers", WAIT, || async {
            let r = proxy
                .http
                .get(format!("{}/version", proxy.api))
                .send()
                .await
                .ok()?;
            r.status().is_success().then_some(())
        })
        .await;
        proxy
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self.http.request(method.clone(), format!("{}{path}", self.api));
        if let Some(body) = body {
            req = req.json(&body);
        }
        let r = req.send().await.expect("toxiproxy API");
        let status = r.status();
        let text = r.text().await.unwrap_or_default();
        assert!(status.is_success(), "toxiproxy {method} {path}: {status} {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    /// A proxy from a free loopback port to `upstream`; returns the port.
    pub(crate) async fn proxy(&self, name: &str, upstream: &str) -> u16 {
        let port = free_port();
        self.call(
            reqwest::Method::POST,
            "/proxies",
            Some(json!({"name": name, "listen": format!("127.0.0.1:{port}"), "upstream": upstream, "enabled": true})),
        )
        .await;
        port
    }

    /// `down`: the proxy stops listening and drops every connection (or comes back).
    pub(crate) async fn set_enabled(&self, name: &str, enabled: bool) {
        self.call(
            reqwest::Method::POST,
            &format!("/proxies/{name}"),
            Some(json!({"enabled": enabled})),
        )
        .await;
    }
}

impl Drop for Toxiproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The API server's address (host:port) in a kubeconfig.
pub(crate) fn apiserver_address(kubeconfig: &Path) -> String {
    let text = std::fs::read_to_string(kubeconfig).expect("read kubeconfig");
    let server = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: "))
        .expect("a server in the kubeconfig");
    server.trim_start_matches("https://").to_string()
}

/// A copy of the admin kubeconfig whose server is `127.0.0.1:port` (a Toxiproxy listener; TLS
/// passes through it, and the serving certificate covers 127.0.0.1).
pub(crate) fn kubeconfig_via(cp: &ControlPlane, port: u16, name: &str) -> PathBuf {
    let text = std::fs::read_to_string(&cp.kubeconfig).expect("read kubeconfig");
    let upstream = apiserver_address(&cp.kubeconfig);
    let path = cp.dir.join(format!("{name}.kubeconfig"));
    std::fs::write(&path, text.replace(&upstream, &format!("127.0.0.1:{port}"))).expect("write kubeconfig");
    path
}

/// One write request as the audit log shows it.
#[derive(Debug)]
struct Write {
    user_agent: String,
    verb: String,
    resource: String,
    name: String,
    code: i64,
    received: Timestamp,
}

fn audit_writes(cp: &ControlPlane) -> Vec<Write> {
    let text = std::fs::read_to_string(cp.dir.join("logs/audit.log")).unwrap_or_default();
    text.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter_map(|e| {
            let object = &e["objectRef"];
            let sub = object["subresource"].as_str().unwrap_or("");
            Some(Write {
                user_agent: e["userAgent"].as_str().unwrap_or("").to_string(),
                verb: e["verb"].as_str()?.to_string(),
                resource: format!(
                    "{}{}{sub}",
                    object["resource"].as_str()?,
                    if sub.is_empty() { "" } else { "/" }
                ),
                name: object["name"].as_str().unwrap_or("").to_string(),
                code: e["responseStatus"]["code"].as_i64().unwrap_or(0),
                received: e["requestReceivedTimestamp"].as_str()?.parse().ok()?,
            })
        })
        .collect()
}

fn app_manifest(name: &str) -> String {
    format!(
        "apiVersion: oauthapp.io/v1alpha1\nkind: OAuthApp\nmetadata: {{name: {name}}}\nspec:\n  redirectUris: [\"https://{name}.example.com/cb\"]\n"
    )
}

fn annotate(cp: &ControlPlane, ns: &str, app: &str, value: &str) {
    cp.kubectl_ok(&[
        "annotate",
        "oauthapp",
        app,
        "-n",
        ns,
        &format!("oauthapp.io/rotate={value}"),
        "--overwrite",
    ]);
}

/// Waits until every app is Ready with `count` rotations (and `token` observed, when given).
async fn all_rotated(apps: &Api<OAuthApp>, names: &[String], count: i64, token: Option<&str>) {
    for name in names {
        eventually(
            &format!("{name} Ready with rotationCount {count}"),
            WAIT,
            || async {
                let app = apps.get_opt(name).await.ok()??;
                let status = app.status.as_ref()?;
                let ready = app.ready_condition().is_some_and(|c| c.status == "True");
                (ready
                    && status.rotation_count == count
                    && (token.is_none() || status.observed_rotate_token.as_deref() == token))
                    .then_some(())
            },
        )
        .await;
    }
}

#[tokio::test]
async fn a_leader_cut_off_from_the_api_server_steps_down_and_never_acts_again_without_the_lease() {
    let private = PrivateControlPlane::start_with("faults-leader", &["--audit"]);
    let cp = &private.0;
    let ns = cp.namespace("leader-cut");
    let apps: Api<OAuthApp> = Api::namespaced(client_from(&cp.kubeconfig).await, &ns);
    let toxiproxy = Toxiproxy::start(cp).await;
    let upstream = apiserver_address(&cp.kubeconfig);
    const LEASE: Duration = Duration::from_secs(6);
    let args = [
        "--leader-elect",
        "--lease-namespace",
        ns.as_str(),
        "--lease-duration",
        "6s",
    ];
    let mut replicas = Vec::new();
    for name in ["replica-a", "replica-b"] {
        let port = toxiproxy.proxy(name, &upstream).await;
        let kubeconfig = kubeconfig_via(cp, port, name);
        replicas.push((name, Operator::start_on(cp, &kubeconfig, &ns, &args, &[])));
    }
    let leader_index = eventually("one leader", WAIT, || async {
        let a = replicas[0].1.metric("oauthapp_leader").await?;
        let b = replicas[1].1.metric("oauthapp_leader").await?;
        match (a, b) {
            (1.0, 0.0) => Some(0),
            (0.0, 1.0) => Some(1),
            _ => None,
        }
    })
    .await;
    let (leader_proxy, leader) = (replicas[leader_index].0, &replicas[leader_index].1);
    let standby = &replicas[1 - leader_index].1;

    let names: Vec<String> = (0..4).map(|i| format!("app-{i}")).collect();
    for name in &names {
        cp.apply_ok(&ns, &app_manifest(name));
    }
    all_rotated(&apps, &names, 1, None).await;

    // Cut the leader off. Its admin server is not behind the proxy: it still answers.
    toxiproxy.set_enabled(leader_proxy, false).await;
    let cut_at = Instant::now();
    let cut = Timestamp::now();
    for name in &names {
        annotate(cp, &ns, name, "during-cut");
    }
    eventually("the cut-off leader steps down", LEASE + WAIT, || async {
        (leader.metric("oauthapp_leader").await? == 0.0).then_some(())
    })
    .await;
    let stepped_down = cut_at.elapsed();
    eventually("the standby leads", LEASE + WAIT, || async {
        (standby.metric("oauthapp_leader").await? == 1.0).then_some(())
    })
    .await;
    let taken_over = cut_at.elapsed();
    all_rotated(&apps, &names, 2, Some("during-cut")).await;
    let rotated = cut_at.elapsed();
    assert!(
        leader.log_text().contains("stepping down"),
        "the old leader says why it stopped"
    );

    // Heal. The old leader rejoins as a standby: its REST API works again (its rotations are
    // not the leader's and need no Lease), its controller does not.
    toxiproxy.set_enabled(leader_proxy, true).await;
    let token = rotator_token(cp, &ns);
    let rest_app = &names[0];
    let app_id = apps
        .get(rest_app)
        .await
        .expect("get app")
        .status
        .and_then(|s| s.app_id)
        .expect("an appId");
    let path = format!("/api/v1/oauth-apps/{app_id}/rotate");
    eventually("a REST rotation through the old leader", WAIT, || async {
        let (code, _) = http_request(leader.api_port, "POST", &path, &token).await?;
        (code == 200).then_some(())
    })
    .await;
    for name in &names {
        annotate(cp, &ns, name, "after-heal");
    }
    let mut expected = vec![3; names.len()];
    expected[0] = 4;
    for (name, count) in names.iter().zip(&expected) {
        all_rotated(&apps, std::slice::from_ref(name), *count, Some("after-heal")).await;
    }
    assert_eq!(
        leader.metric("oauthapp_leader").await,
        Some(0.0),
        "the old leader stays a standby"
    );
    assert_eq!(standby.metric("oauthapp_leader").await, Some(1.0));
    let holder = lease_holder(cp, &ns);
    assert!(
        holder.ends_with(&format!("-{}", standby.pid())),
        "the Lease is the new leader's: {holder}"
    );

    // The API server's count: no Secret or OAuthApp write by the old leader since the cut, but
    // the REST rotation asked of it.
    let old = format!("-{})", leader.pid());
    let new = format!("-{})", standby.pid());
    let writes = audit_writes(cp);
    let by_old: Vec<&Write> = writes
        .iter()
        .filter(|w| w.user_agent.ends_with(&old) && w.received > cut)
        .filter(|w| w.resource.starts_with("secrets") || w.resource.starts_with("oauthapps"))
        .collect();
    let rest_secret = format!("{rest_app}-oauth-client");
    let unexpected: Vec<_> = by_old
        .iter()
        .filter(|w| w.name != *rest_app && w.name != rest_secret)
        .collect();
    assert!(
        unexpected.is_empty(),
        "writes by the old leader after it was cut off: {unexpected:#?}"
    );
    assert!(
        by_old.iter().any(|w| w.name == rest_secret && w.code == 200),
        "the REST rotation through the old leader is in the audit log: {by_old:#?}"
    );
    let by_new = writes
        .iter()
        .filter(|w| w.user_agent.ends_with(&new) && w.resource == "secrets" && w.verb == "update")
        .count();
    assert!(
        by_new >= 2 * names.len(),
        "the new leader rotated: {by_new} Secret updates"
    );
    eprintln!(
        "leader cut off (lease {LEASE:?}): stepped down after {stepped_down:?}, standby led after {taken_over:?}, \
         {} apps rotated after {rotated:?}; old leader's writes after the cut: {} (REST only), audited writes in all: {}",
        names.len(),
        by_old.len(),
        writes.len()
    );
}

impl Toxiproxy {
    /// Adds a toxic to proxy `proxy`.
    pub(crate) async fn toxic(&self, proxy: &str, name: &str, kind: &str, stream: &str, attributes: Value) {
        self.call(
            reqwest::Method::POST,
            &format!("/proxies/{proxy}/toxics"),
            Some(json!({"name": name, "type": kind, "stream": stream, "toxicity": 1.0, "attributes": attributes})),
        )
        .await;
    }

    pub(crate) async fn remove_toxic(&self, proxy: &str, name: &str) {
        self.call(
            reqwest::Method::DELETE,
            &format!("/proxies/{proxy}/toxics/{name}"),
            None,
        )
        .await;
    }
}

/// A ServiceAccount that may rotate through the REST API in `ns` (get the app, create
/// oauthapps/rotate: the chart's oauthapp-rotator), and a token for it.
fn rotator_token(cp: &ControlPlane, ns: &str) -> String {
    cp.kubectl_ok(&["create", "serviceaccount", "ci", "-n", ns]);
    cp.kubectl_ok(&[
        "create",
        "role",
        "reader",
        "-n",
        ns,
        "--verb=get",
        "--resource=oauthapps",
    ]);
    cp.kubectl_ok(&[
        "create",
        "rolebinding",
        "ci-reader",
        "-n",
        ns,
        "--role=reader",
        "--serviceaccount",
        &format!("{ns}:ci"),
    ]);
    cp.kubectl_ok(&[
        "create",
        "role",
        "rotator",
        "-n",
        ns,
        "--verb=create",
        "--resource=oauthapps/rotate",
    ]);
    cp.kubectl_ok(&[
        "create",
        "rolebinding",
        "ci-rotator",
        "-n",
        ns,
        "--role=rotator",
        "--serviceaccount",
        &format!("{ns}:ci"),
    ]);
    cp.kubectl_ok(&["create", "token", "ci", "-n", ns, "--duration=1h"])
        .trim()
        .to_string()
}

/// One REST rotation: the status code, `Retry-After`, and the secret of a 200.
async fn rest_rotate(port: u16, app_id: &str, token: &str) -> (u16, Option<String>, Option<String>) {
    let r = reqwest::Client::new()
        .post(format!(
            "http://127.0.0.1:{port}/api/v1/oauth-apps/{app_id}/rotate"
        ))
        .bearer_auth(token)
        .send()
        .await
        .expect("REST API answers");
    let code = r.status().as_u16();
    let retry_after = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body: Value = r.json().await.unwrap_or(Value::Null);
    (
        code,
        retry_after,
        body["client_secret"].as_str().map(str::to_string),
    )
}

/// The app's Secret's `client_secret` verifies against the status hash (argon2), once the
/// operator has converged: a Secret written when the API server lost etcd (the write's answer
/// lost with it) has its status completed from it after the repair grace. Returns the secret.
async fn secret_matches_status(cp: &ControlPlane, apps: &Api<OAuthApp>, ns: &str, name: &str) -> String {
    eventually(
        &format!("the Secret of {name} to verify against its status"),
        WAIT,
        || async {
            let hash = apps.get(name).await.ok()?.status?.client_secret_hash?;
            let secret = secret_of(cp, ns, name);
            oauthapp_operator::model::secret::verify(&secret, &hash)
                .ok()?
                .then_some(secret)
        },
    )
    .await
}

/// The plaintext `client_secret` of the app's Secret, as `kubectl get` shows it.
fn secret_of(cp: &ControlPlane, ns: &str, name: &str) -> String {
    let encoded = cp.kubectl_ok(&[
        "get",
        "secret",
        &format!("{name}-oauth-client"),
        "-n",
        ns,
        "-o",
        "jsonpath={.data.client_secret}",
    ]);
    let out = Command::new("base64")
        .arg("-d")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write as _;
            child.stdin.take().expect("stdin").write_all(encoded.as_bytes())?;
            child.wait_with_output()
        })
        .expect("base64 -d");
    String::from_utf8(out.stdout).expect("utf-8 secret")
}

#[tokio::test]
async fn with_300ms_of_latency_every_rotation_happens_once_and_rest_answers_200_409_or_503() {
    let cp = control_plane();
    let ns = namespace("faults-latency");
    let apps: Api<OAuthApp> = Api::namespaced(admin_client().await, &ns);
    let toxiproxy = Toxiproxy::start(cp).await;
    let port = toxiproxy
        .proxy("operator", &apiserver_address(&cp.kubeconfig))
        .await;
    let kubeconfig = kubeconfig_via(cp, port, &format!("latency-{ns}"));
    toxiproxy
        .toxic(
            "operator",
            "slow",
            "latency",
            "downstream",
            json!({"latency": 300, "jitter": 0}),
        )
        .await;
    let operator = Operator::start_on(cp, &kubeconfig, &ns, &[], &[]);
    let token = rotator_token(cp, &ns);
    let names: Vec<String> = (0..3).map(|i| format!("slow-{i}")).collect();
    for name in &names {
        cp.apply_ok(&ns, &app_manifest(name));
    }
    all_rotated(&apps, &names, 1, None).await;
    for name in &names {
        annotate(cp, &ns, name, "slow-1");
    }
    all_rotated(&apps, &names, 2, Some("slow-1")).await;

    // Four REST rotations of each app at once.
    let mut calls = Vec::new();
    for name in &names {
        let app_id = apps
            .get(name)
            .await
            .expect("get app")
            .status
            .and_then(|s| s.app_id)
            .expect("appId");
        for _ in 0..4 {
            let (app_id, token, name) = (app_id.clone(), token.clone(), name.clone());
            let port = operator.api_port;
            calls.push(tokio::spawn(async move {
                (name, rest_rotate(port, &app_id, &token).await)
            }));
        }
    }
    let mut answers = std::collections::BTreeMap::<u16, usize>::new();
    let mut ok_secrets = std::collections::HashMap::<String, Vec<String>>::new();
    for call in calls {
        let (name, (code, retry_after, secret)) = call.await.expect("call");
        *answers.entry(code).or_default() += 1;
        assert!(matches!(code, 200 | 409 | 503), "REST answered {code} for {name}");
        if code == 503 {
            assert!(retry_after.is_some(), "a 503 carries Retry-After");
        }
        if code == 200 {
            ok_secrets
                .entry(name)
                .or_default()
                .push(secret.expect("a 200 carries the secret"));
        }
    }
    assert!(
        answers.get(&200).copied().unwrap_or(0) >= names.len(),
        "some rotations succeed: {answers:?}"
    );
    // Exactly once: each 200 is one rotation, nothing else rotated, and the last 200 of each
    // app is the secret in its Secret (none lost).
    for name in &names {
        let oks = ok_secrets.get(name).map_or(0, Vec::len) as i64;
        let app = apps.get(name).await.expect("get app");
        assert_eq!(
            app.status.as_ref().map(|s| s.rotation_count),
            Some(2 + oks),
            "{name}: one rotation per 200 ({answers:?})"
        );
        let secret = secret_matches_status(cp, &apps, &ns, name).await;
        if oks > 0 {
            assert!(
                ok_secrets[name].contains(&secret),
                "{name}: the Secret holds a secret a 200 returned"
            );
        }
    }
    // Re-applying the annotation (Argo CD, Flux) rotates nothing, latency or not.
    for name in &names {
        annotate(cp, &ns, name, "slow-1");
    }
    let counts: Vec<i64> = futures::future::join_all(names.iter().map(|n| apps.get(n)))
        .await
        .into_iter()
        .map(|a| a.expect("get app").status.map_or(0, |s| s.rotation_count))
        .collect();
    eprintln!("300 ms latency: REST answers {answers:?}; rotation counts {counts:?}");
}

/// A kubeconfig for ServiceAccount `sa` of `ns` (cluster-admin), through `127.0.0.1:port`.
fn operator_kubeconfig(cp: &ControlPlane, ns: &str, sa: &str, port: u16) -> PathBuf {
    cp.kubectl_ok(&["create", "serviceaccount", sa, "-n", ns]);
    cp.kubectl_ok(&[
        "create",
        "clusterrolebinding",
        &format!("{ns}-{sa}"),
        "--clusterrole=cluster-admin",
        "--serviceaccount",
        &format!("{ns}:{sa}"),
    ]);
    let token = cp
        .kubectl_ok(&["create", "token", sa, "-n", ns, "--duration=1h"])
        .trim()
        .to_string();
    let text = std::fs::read_to_string(&cp.kubeconfig).expect("read kubeconfig");
    let ca = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("certificate-authority-data: "))
        .expect("a CA in the kubeconfig");
    let path = cp.dir.join(format!("{ns}-{sa}.kubeconfig"));
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:{port}\n    certificate-authority-data: {ca}\nusers:\n- name: {sa}\n  user:\n    token: {token}\ncontexts:\n- name: c\n  context: {{cluster: c, user: {sa}}}\ncurrent-context: c\n"
        ),
    )
    .expect("write kubeconfig");
    path
}

#[tokio::test]
async fn watches_resume_after_reset_peer_and_a_throttling_api_server_gets_a_bounded_request_rate() {
    let private = PrivateControlPlane::start_with("faults-throttle", &["--audit"]);
    let cp = &private.0;
    let ns = cp.namespace("throttle");
    let apps: Api<OAuthApp> = Api::namespaced(client_from(&cp.kubeconfig).await, &ns);
    let toxiproxy = Toxiproxy::start(cp).await;
    let port = toxiproxy
        .proxy("operator", &apiserver_address(&cp.kubeconfig))
        .await;
    let kubeconfig = operator_kubeconfig(cp, &ns, "operator", port);
    let user = format!("system:serviceaccount:{ns}:operator");
    let operator = Operator::start_on(cp, &kubeconfig, &ns, &[], &[]);
    let names: Vec<String> = (0..5).map(|i| format!("app-{i}")).collect();
    for name in &names {
        cp.apply_ok(&ns, &app_manifest(name));
    }
    all_rotated(&apps, &names, 1, None).await;

    // reset_peer: every connection that carries data is reset. Touching an app and a Secret
    // sends an event down each watch, which resets it.
    let before_reset = Timestamp::now();
    toxiproxy
        .toxic(
            "operator",
            "reset",
            "reset_peer",
            "downstream",
            json!({"timeout": 0}),
        )
        .await;
    cp.kubectl_ok(&["label", "oauthapp", "app-0", "-n", &ns, "touched=1"]);
    cp.kubectl_ok(&["annotate", "secret", "app-0-oauth-client", "-n", &ns, "touched=1"]);
    eventually("both watches were reset", WAIT, || async {
        let ended = |resource: &str| {
            audit_requests(cp, &user).iter().any(|r| {
                r.verb == "watch"
                    && r.resource == resource
                    && r.stage == "ResponseComplete"
                    && r.at > before_reset
            })
        };
        (ended("oauthapps") && ended("secrets")).then_some(())
    })
    .await;
    toxiproxy.remove_toxic("operator", "reset").await;
    let healed = Timestamp::now();
    for name in &names {
        annotate(cp, &ns, name, "after-reset");
    }
    all_rotated(&apps, &names, 2, Some("after-reset")).await;
    cp.kubectl_ok(&["delete", "secret", "app-1-oauth-client", "-n", &ns]);
    all_rotated(&apps, &names[1..2], 3, None).await;
    let lists: Vec<String> = audit_requests(cp, &user)
        .iter()
        .filter(|r| r.verb == "list" && r.received > before_reset)
        .map(|r| r.resource.clone())
        .collect();
    // A watch resumes from its last resourceVersion: no relist of everything.
    assert!(lists.len() <= 2, "relists after the reset: {lists:?}");
    eprintln!("reset_peer: watches resumed; lists since the reset: {lists:?} (healed at {healed})");

    // 429s from API Priority and Fairness: a priority level with no seats for the operator.
    let apf = format!(
        "apiVersion: flowcontrol.apiserver.k8s.io/v1\nkind: PriorityLevelConfiguration\nmetadata: {{name: {ns}}}\nspec:\n  type: Limited\n  limited:\n    nominalConcurrencyShares: 0\n    lendablePercent: 0\n    borrowingLimitPercent: 0\n    limitResponse: {{type: Reject}}\n---\napiVersion: flowcontrol.apiserver.k8s.io/v1\nkind: FlowSchema\nmetadata: {{name: {ns}}}\nspec:\n  priorityLevelConfiguration: {{name: {ns}}}\n  matchingPrecedence: 50\n  distinguisherMethod: {{type: ByUser}}\n  rules:\n  - subjects: [{{kind: ServiceAccount, serviceAccount: {{name: operator, namespace: {ns}}}}}]\n    resourceRules: [{{verbs: [\"*\"], apiGroups: [\"*\"], resources: [\"*\"], namespaces: [\"*\"], clusterScope: true}}]\n    nonResourceRules: [{{verbs: [\"*\"], nonResourceURLs: [\"*\"]}}]\n"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("apf.yaml");
    std::fs::write(&file, apf).expect("write APF");
    let file = file.to_str().expect("utf-8").to_string();
    cp.kubectl_ok(&["apply", "-f", &file]);
    // That level still admits one request at a time: hold its seat with a request of the
    // operator's own identity whose body trickles in at 1 KB/s, so every other one gets a 429.
    let token = cp
        .kubectl_ok(&["create", "token", "operator", "-n", &ns, "--duration=1h"])
        .trim()
        .to_string();
    let body = dir.path().join("seat.json");
    std::fs::write(
        &body,
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "seat"}, "data": {"x": "a".repeat(90_000)}})
            .to_string(),
    )
    .expect("write body");
    // Three, in case the level is given more than one seat meanwhile; extra ones get a 429.
    let mut seats = Vec::new();
    for _ in 0..3 {
        let seat = Command::new("curl")
            .args([
                "-sS",
                "--http1.1",
                "-o",
                "/dev/null",
                "--limit-rate",
                "1000",
                "-X",
                "POST",
            ])
            .arg("--cacert")
            .arg(cp.dir.join("pki/ca.crt"))
            .args(["-H", &format!("Authorization: Bearer {token}")])
            .args(["-H", "Content-Type: application/json"])
            .arg("--data-binary")
            .arg(format!("@{}", body.display()))
            .arg(format!(
                "https://{}/api/v1/namespaces/{ns}/configmaps",
                apiserver_address(&cp.kubeconfig)
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start curl");
        cp.adopt(seat.id());
        seats.push(seat);
    }
    eventually("the operator's priority level is full", WAIT, || async {
        let out = cp.kubectl_as(&kubeconfig, &["get", "oauthapps", "-n", &ns]);
        (!out.status.success() && stderr(&out).contains("TooManyRequests")).then_some(())
    })
    .await;
    let throttled_from = Timestamp::now();
    for name in &names {
        annotate(cp, &ns, name, "during-429");
    }
    // The measurement window: 30 s of throttling.
    const OUTAGE: Duration = Duration::from_secs(30);
    tokio::time::sleep(OUTAGE).await;
    let window_end = Timestamp::now();
    for mut seat in seats {
        let _ = seat.kill();
        let _ = seat.wait();
    }
    cp.kubectl_ok(&["delete", "-f", &file]);
    let recovering = Instant::now();
    for (i, name) in names.iter().enumerate() {
        // app-1 had one more: its deleted Secret.
        let count = if i == 1 { 4 } else { 3 };
        all_rotated(&apps, std::slice::from_ref(name), count, Some("during-429")).await;
    }
    let recovered = recovering.elapsed();
    let in_window: Vec<AuditRequest> = audit_requests(cp, &user)
        .into_iter()
        .filter(|r| r.received >= throttled_from && r.received <= window_end && r.stage != "ResponseStarted")
        .filter(|r| r.user_agent.starts_with("oauthapp-operator/"))
        .collect();
    let rejected = in_window.iter().filter(|r| r.code == 429).count();
    let mut kinds = std::collections::BTreeMap::<String, usize>::new();
    for r in &in_window {
        *kinds
            .entry(format!("{} {} {}", r.verb, r.resource, r.code))
            .or_default() += 1;
    }
    eprintln!("429 window by request: {kinds:?}");
    let secs = window_end.duration_since(throttled_from).as_secs_f64();
    let rate = in_window.len() as f64 / secs;
    eprintln!(
        "429 for {secs:.1} s: {} requests ({rejected} rejected), {rate:.2}/s with {} apps waiting; recovered in {recovered:?}",
        in_window.len(),
        names.len()
    );
    // Bounded: kube's client retries a 429 after Retry-After (1 s), with jitter, and a failed
    // reconcile waits 5 s; no hot loop. The bound: 2 requests/s per app waiting, plus 2 watches.
    let bound = 2.0 * names.len() as f64 + 2.0;
    assert!(rate <= bound, "{rate:.2} requests/s under 429 (bound {bound})");
    assert!(rejected > 0, "the API server did throttle");
    assert_eq!(
        operator.metric("oauthapp_leader").await,
        Some(1.0),
        "the operator rode it out"
    );
}

#[tokio::test]
async fn etcd_killed_under_load_and_restarted_loses_no_rotation_and_applies_none_twice() {
    let private = PrivateControlPlane::start("faults-etcd");
    let cp = &private.0;
    let ns = cp.namespace("etcd");
    let apps: Api<OAuthApp> = Api::namespaced(client_from(&cp.kubeconfig).await, &ns);
    let operator = Operator::start_on(cp, &cp.kubeconfig, &ns, &[], &[]);
    let token = rotator_token(cp, &ns);
    let names: Vec<String> = (0..3).map(|i| format!("app-{i}")).collect();
    for name in &names {
        cp.apply_ok(&ns, &app_manifest(name));
    }
    all_rotated(&apps, &names, 1, None).await;

    // Load: each app rotated through the REST API, one call at a time, until told to stop.
    let stop = tokio_util::sync::CancellationToken::new();
    let failures = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut loads = Vec::new();
    for name in &names {
        let app_id = apps
            .get(name)
            .await
            .expect("get app")
            .status
            .and_then(|s| s.app_id)
            .expect("appId");
        let (token, stop, failures, port) =
            (token.clone(), stop.clone(), failures.clone(), operator.api_port);
        loads.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            let mut pace = tokio::time::interval(Duration::from_millis(400));
            while !stop.is_cancelled() {
                pace.tick().await;
                let answer = rest_rotate(port, &app_id, &token).await;
                if answer.0 != 200 {
                    failures.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                answers.push(answer);
            }
            answers
        }));
    }
    eventually("rotations under load", WAIT, || async {
        let count = apps.get("app-0").await.ok()?.status?.rotation_count;
        (count >= 3).then_some(())
    })
    .await;
    cp.component("etcd", "stop");
    let killed = Instant::now();
    // Restarted once the API server itself reports etcd gone (rotations past their Secret write
    // wait for the outcome of that write, so REST answers alone do not tell).
    eventually("the API server to feel etcd gone", WAIT, || async {
        let out = cp.kubectl(&["get", "--raw", "/readyz/etcd"]);
        (!out.status.success()).then_some(())
    })
    .await;
    cp.component("etcd", "start");
    let down_for = killed.elapsed();
    // Rotations go on after the restart, annotation ones included.
    let after = apps
        .get("app-0")
        .await
        .ok()
        .and_then(|a| a.status)
        .map_or(0, |s| s.rotation_count);
    eventually("REST rotations after the restart", WAIT, || async {
        let count = apps.get("app-0").await.ok()?.status?.rotation_count;
        (count >= after + 2).then_some(())
    })
    .await;
    stop.cancel();
    let mut answers = Vec::new();
    for load in loads {
        answers.push(load.await.expect("load task"));
    }
    let mut codes = std::collections::BTreeMap::<u16, usize>::new();
    let mut ambiguous_applied = 0;
    for (name, answers) in names.iter().zip(&answers) {
        let oks: Vec<&String> = answers
            .iter()
            .filter(|a| a.0 == 200)
            .filter_map(|a| a.2.as_ref())
            .collect();
        // A 5xx (the REST API's 30 s request timeout while etcd was away) or a 409 does not say
        // whether the rotation was applied; a 429 or 404 says it was not.
        let ambiguous = |a: &(u16, Option<String>, Option<String>)| a.0 >= 500 || a.0 == 409;
        for a in answers {
            *codes.entry(a.0).or_default() += 1;
        }
        // Converged first: a rotation whose answer was lost with etcd may still be completing.
        let secret = secret_matches_status(cp, &apps, &ns, name).await;
        let count = apps
            .get(name)
            .await
            .expect("get app")
            .status
            .map_or(0, |s| s.rotation_count);
        let unsure = answers.iter().filter(|a| ambiguous(a)).count() as i64;
        let oks_count = oks.len() as i64;
        assert!(
            (1 + oks_count..=1 + oks_count + unsure).contains(&count),
            "{name}: every 200 applied, none twice: rotationCount {count}, {oks_count} answered 200, {unsure} unsure"
        );
        ambiguous_applied += count - 1 - oks_count;
        let last_ok = answers.iter().rposition(|a| a.0 == 200);
        if let Some(last_ok) = last_ok
            && !answers[last_ok + 1..].iter().any(ambiguous)
        {
            assert_eq!(
                oks.last().map(|s| s.as_str()),
                Some(secret.as_str()),
                "{name}: the last 200's secret is in the Secret"
            );
        }
    }
    let counts: Vec<i64> = futures::future::join_all(names.iter().map(|n| apps.get(n)))
        .await
        .into_iter()
        .map(|a| a.expect("get app").status.map_or(0, |s| s.rotation_count))
        .collect();
    for name in &names {
        annotate(cp, &ns, name, "after-etcd");
    }
    for (name, count) in names.iter().zip(&counts) {
        all_rotated(&apps, std::slice::from_ref(name), count + 1, Some("after-etcd")).await;
    }
    assert!(
        operator.metric("oauthapp_leader").await == Some(1.0),
        "the same operator process is still running and leading"
    );
    eprintln!(
        "etcd killed for {down_for:?} under REST load: answers {codes:?}; rotations applied without a 200: {ambiguous_applied}"
    );
}
