//! The REST API, as automation meets it: real ServiceAccount tokens, RBAC Roles made with
//! kubectl, one operator process per test (acting as admin), one namespace per test.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};
use oauthapp_operator::api::{CreatedOAuthApp, OAuthAppList, OAuthAppView, RestErrorResponse, RotatedSecret};
use oauthapp_operator::model::crd::OAuthApp;
use oauthapp_operator::model::{id, secret};
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::support::*;

const WAIT: Duration = Duration::from_secs(60);
const ROTATER_RULES: &str = r#"
- apiGroups: ["oauthapp.io"]
  resources: ["oauthapps"]
  verbs: ["get"]
- apiGroups: ["oauthapp.io"]
  resources: ["oauthapps/rotate"]
  verbs: ["create"]
"#;
/// May rotate, but not see the app: the REST API treats its id as unknown.
const ROTATE_ONLY_RULES: &str = r#"
- apiGroups: ["oauthapp.io"]
  resources: ["oauthapps/rotate"]
  verbs: ["create"]
"#;
const READ_RULES: &str = r#"
- apiGroups: ["oauthapp.io"]
  resources: ["oauthapps"]
  verbs: ["get", "list"]
"#;
const ALL_RULES: &str = r#"
- apiGroups: ["oauthapp.io"]
  resources: ["oauthapps", "oauthapps/rotate"]
  verbs: ["get", "list", "create", "delete"]
"#;

/// An HTTP client (rustls with ring, for the HTTPS test; no aws-lc).
fn http() -> reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            install_ring();
            reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .expect("http client")
        })
        .clone()
}

fn install_ring() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A test namespace with its own operator and admin clients.
struct Setup {
    ns: String,
    client: Client,
    apps: Api<OAuthApp>,
    secrets: Api<Secret>,
    operator: Operator,
    base: String,
}

async fn setup(test: &str, args: &[&str]) -> Setup {
    setup_with_env(test, args, &[]).await
}

/// [`setup`], the operator started with `env` too (a failpoint).
async fn setup_with_env(test: &str, args: &[&str], env: &[(&str, &str)]) -> Setup {
    let ns = namespace(test);
    let client = admin_client().await;
    let operator = Operator::start(&control_plane().kubeconfig, &ns, args, env);
    let base = format!("http://127.0.0.1:{}", operator.api_port);
    wait_ready(&operator).await;
    Setup {
        apps: Api::namespaced(client.clone(), &ns),
        secrets: Api::namespaced(client.clone(), &ns),
        client,
        ns,
        operator,
        base,
    }
}

async fn wait_ready(operator: &Operator) {
    eventually("the operator's /readyz", WAIT, || async {
        http_get(operator.admin_port, "/readyz").await
    })
    .await;
}

/// What a call answered: status, headers and body.
struct Answer {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn json<T: serde::de::DeserializeOwned>(&self) -> T {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {}: body is not the expected JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The `{code, message}` of an error answer, after checking its status.
    fn error(&self, status: StatusCode, code: &str) -> RestErrorResponse {
        assert_eq!(
            self.status,
            status,
            "body: {}",
            String::from_utf8_lossy(&self.body)
        );
        let e: RestErrorResponse = self.json();
        assert_eq!(serde_json::to_value(e.code).expect("code"), code, "{}", e.message);
        e
    }
}

impl Setup {
    /// Calls the API; `token` None sends no Authorization header.
    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> Answer {
        call(&self.base, method, path, token, body).await
    }

    async fn rotate(&self, id: &str, token: &str) -> Answer {
        self.call(
            Method::POST,
            &format!("/api/v1/oauth-apps/{id}/rotate"),
            Some(token),
            None,
        )
        .await
    }

    /// `kubectl apply` of a manifest, as a user would.
    fn apply(&self, ns: &str, manifest: &str) {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("manifest.yaml");
        std::fs::write(&file, manifest).expect("write manifest");
        control_plane().kubectl_ok(&["apply", "-n", ns, "-f", file.to_str().expect("utf-8")]);
    }

    /// An app named `name` in `ns`, created with kubectl; waits until it is Ready.
    async fn app(&self, ns: &str, name: &str) -> (OAuthApp, Secret) {
        self.apply(
            ns,
            &format!(
                "apiVersion: oauthapp.io/v1alpha1\nkind: OAuthApp\nmetadata:\n  name: {name}\nspec:\n  redirectUris: [\"https://{name}.example.com/cb\"]\n"
            ),
        );
        settled(&self.client, ns, name).await
    }

    /// A ServiceAccount in this namespace with a Role of `rules` in `role_ns`; its token.
    fn caller(&self, sa: &str, role_ns: &str, rules: &str) -> String {
        let token = service_account_token_for(&self.ns, sa);
        self.grant(sa, role_ns, rules);
        token
    }

    /// A Role of `rules` in `role_ns`, bound to ServiceAccount `sa` of this namespace.
    fn grant(&self, sa: &str, role_ns: &str, rules: &str) {
        if rules.is_empty() {
            return;
        }
        self.apply(
            role_ns,
            &format!(
                "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata:\n  name: {sa}-{ns}\nrules:{rules}\n---\n\
                 apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata:\n  name: {sa}-{ns}\n\
                 roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: {sa}-{ns}}}\n\
                 subjects: [{{kind: ServiceAccount, name: {sa}, namespace: {ns}}}]\n",
                ns = self.ns
            ),
        );
    }

    async fn events(&self, app: &str) -> Vec<(String, String)> {
        let events: Api<Event> = Api::namespaced(self.client.clone(), &self.ns);
        events
            .list(&ListParams::default())
            .await
            .expect("list events")
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(app))
            .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
            .collect()
    }
}

async fn call(
    base: &str,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<serde_json::Value>,
) -> Answer {
    let mut request = http().request(method, format!("{base}{path}"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("the API answers");
    Answer {
        status: response.status(),
        headers: response.headers().clone(),
        body: response.bytes().await.expect("body").to_vec(),
    }
}

/// Waits until app `ns/name` is Ready and its status describes the Secret it names.
async fn settled(client: &Client, ns: &str, name: &str) -> (OAuthApp, Secret) {
    let apps: Api<OAuthApp> = Api::namespaced(client.clone(), ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    eventually(
        &format!("OAuthApp {ns}/{name} to be Ready and in sync with its Secret"),
        WAIT,
        || async {
            let app = apps.get_opt(name).await.ok()??;
            let status = app.status.clone()?;
            let ready = app.ready_condition().is_some_and(|c| c.status == "True");
            let secret = secrets.get_opt(status.secret_name.as_deref()?).await.ok()??;
            let in_sync = secret.annotations().get("oauthapp.io/rotation-id") == status.rotation_id.as_ref()
                && secret.resource_version() == status.secret_resource_version;
            (ready && in_sync).then_some((app, secret))
        },
    )
    .await
}

fn plaintext(secret: &Secret) -> String {
    let data = secret.data.as_ref().expect("secret data");
    String::from_utf8(data.get("client_secret").expect("client_secret").0.clone()).expect("utf-8")
}

fn hash_of(app: &OAuthApp) -> String {
    app.status
        .as_ref()
        .and_then(|s| s.client_secret_hash.clone())
        .expect("status hash")
}

fn rotation_count(app: &OAuthApp) -> i64 {
    app.status.as_ref().map(|s| s.rotation_count).unwrap_or_default()
}

fn app_id(app: &OAuthApp) -> String {
    let uid = uuid::Uuid::parse_str(&app.uid().expect("uid")).expect("uuid");
    id::encode(uid)
}

fn verifies(plain: &str, app: &OAuthApp) -> bool {
    secret::verify(plain, &hash_of(app)).expect("a valid PHC hash")
}

#[tokio::test]
async fn rotating_returns_a_secret_that_is_in_the_secret_and_verifies_against_the_status() {
    let s = setup("api-rotate", &[]).await;
    let (app, before) = s.app(&s.ns, "billing").await;
    let old = plaintext(&before);
    let token = s.caller("rotater", &s.ns, ROTATER_RULES);

    let answer = s.rotate(&app_id(&app), &token).await;
    assert_eq!(
        answer.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    assert_eq!(
        answer.headers["cache-control"], "no-store",
        "a secret is never cached"
    );
    let rotated: RotatedSecret = answer.json();

    // Invariant 7: a 200 means the returned secret is in the Secret and its hash in the status.
    let app_now = s.apps.get("billing").await.expect("app");
    let secret_now = s.secrets.get("billing-oauth-client").await.expect("secret");
    assert!(
        plaintext(&secret_now) == rotated.client_secret,
        "the Secret holds the returned secret"
    );
    assert!(
        verifies(&rotated.client_secret, &app_now),
        "the returned secret verifies against the status"
    );
    assert!(
        !verifies(&old, &app_now),
        "the previous secret no longer verifies"
    );
    assert_eq!(
        Some(rotated.client_secret_hint.clone()),
        secret::hint(&rotated.client_secret)
    );
    let status = app_now.status.clone().expect("status");
    assert_eq!(
        status.client_secret_hint.as_deref(),
        Some(rotated.client_secret_hint.as_str())
    );
    assert_eq!(status.rotation_count, rotation_count(&app) + 1);
    assert_eq!(status.last_rotation_trigger.map(|t| t.as_str()), Some("Api"));

    // Audit: an Event names the trigger and the caller; the log names the caller, never the secret.
    let caller = format!("system:serviceaccount:{}:rotater", s.ns);
    // The history, newest first, names the REST caller; it holds no hash and no secret.
    let history: Vec<_> = status
        .history
        .iter()
        .map(|e| (e.rotation_id.as_str(), e.trigger.as_str(), e.username.as_deref()))
        .collect();
    assert_eq!(
        history,
        [
            (
                status.rotation_id.as_deref().expect("rotation id"),
                "Api",
                Some(caller.as_str())
            ),
            (
                app.status
                    .as_ref()
                    .and_then(|s| s.rotation_id.as_deref())
                    .expect("first id"),
                "Created",
                None
            ),
        ]
    );
    assert_eq!(status.history[0].hint, rotated.client_secret_hint);
    let history_json = serde_json::to_string(&status.history).expect("history json");
    assert!(
        !history_json.contains("argon2") && !history_json.contains(&rotated.client_secret),
        "{history_json}"
    );
    let events = eventually("a SecretRotated event naming the caller", WAIT, || async {
        let events = s.events("billing").await;
        events
            .iter()
            .any(|(reason, note)| reason == "SecretRotated" && note.contains("Api") && note.contains(&caller))
            .then_some(events)
    })
    .await;
    assert!(
        events
            .iter()
            .all(|(_, note)| !note.contains(&rotated.client_secret))
    );
    let log = s.operator.log_text();
    assert!(log.contains(&caller), "the operator's log names the caller");
    assert!(
        !log.contains(&rotated.client_secret) && !log.contains(&old),
        "no secret in the log"
    );
    assert!(!log.contains(&token), "no token in the log");
    assert!(log.contains("plain HTTP"), "serving without TLS is warned about");
}

#[tokio::test]
async fn callers_need_a_valid_token_and_rbac_and_ids_are_checked() {
    let s = setup("api-auth", &[]).await;
    let (app, _) = s.app(&s.ns, "portal").await;
    let id = app_id(&app);

    let none = s.rotate_without_token(&id).await;
    none.error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    assert_eq!(none.headers["www-authenticate"], "Bearer");
    s.rotate(&id, "garbage")
        .await
        .error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED");

    // A caller who may not get the app is told exactly what an unknown id tells: nothing about
    // the app, its namespace or its name. So is one who may rotate it but not see it.
    let nobody = s.caller("nobody", &s.ns, "");
    let blind = s.caller("blind", &s.ns, ROTATE_ONLY_RULES);
    let unknown_id = id::encode(uuid::Uuid::from_u128(rand_u128()));
    let unknown = s.rotate(&unknown_id, &nobody).await;
    let unknown_error = unknown.error(StatusCode::NOT_FOUND, "NOT_FOUND");
    for (token, path, method) in [
        (&nobody, format!("/api/v1/oauth-apps/{id}/rotate"), Method::POST),
        (&nobody, format!("/api/v1/oauth-apps/{id}"), Method::GET),
        (&nobody, format!("/api/v1/oauth-apps/{id}"), Method::DELETE),
        (&blind, format!("/api/v1/oauth-apps/{id}/rotate"), Method::POST),
    ] {
        let hidden = s.call(method.clone(), &path, Some(token), None).await;
        assert_eq!(
            hidden.body, unknown.body,
            "{method} {path}: the same body as an unknown id"
        );
        assert_eq!(hidden.error(StatusCode::NOT_FOUND, "NOT_FOUND"), unknown_error);
    }
    assert!(!unknown_error.message.contains(&s.ns) && !unknown_error.message.contains("portal"));
    // Reading is not rotating: a reader may get the app, not rotate it.
    let reader = s.caller("reader", &s.ns, READ_RULES);
    let got = s
        .call(
            Method::GET,
            &format!("/api/v1/oauth-apps/{id}"),
            Some(&reader),
            None,
        )
        .await;
    assert_eq!(got.status, StatusCode::OK);
    let view: OAuthAppView = got.json();
    assert_eq!(view.id.0, id);
    assert!(
        !String::from_utf8_lossy(&got.body).contains("client_secret\""),
        "get never shows a secret"
    );
    // One who may get it but not rotate it is told so.
    let denied = s
        .rotate(&id, &reader)
        .await
        .error(StatusCode::FORBIDDEN, "FORBIDDEN");
    assert!(denied.message.contains("oauthapps/rotate"), "{}", denied.message);
    assert!(!denied.message.contains(&reader), "no token in messages");

    let rotater = s.caller("rotater", &s.ns, ROTATER_RULES);
    let unknown = id::encode(uuid::Uuid::from_u128(rand_u128()));
    s.rotate(&unknown, &rotater)
        .await
        .error(StatusCode::NOT_FOUND, "NOT_FOUND");
    s.rotate("app_!!", &rotater)
        .await
        .error(StatusCode::BAD_REQUEST, "BAD_REQUEST");
    s.rotate("not-an-id", &rotater)
        .await
        .error(StatusCode::BAD_REQUEST, "BAD_REQUEST");
    let by_uuid = s.rotate(&app.uid().expect("uid"), &rotater).await;
    assert_eq!(by_uuid.status, StatusCode::OK, "a bare UUID works too");
    let rotated: RotatedSecret = by_uuid.json();
    assert!(verifies(
        &rotated.client_secret,
        &s.apps.get("portal").await.expect("app")
    ));

    // Every other error is JSON too.
    s.call(Method::GET, "/api/v1/nope", Some(&rotater), None)
        .await
        .error(StatusCode::NOT_FOUND, "NOT_FOUND");
    let wrong_method = s
        .call(
            Method::PUT,
            &format!("/api/v1/oauth-apps/{id}/rotate"),
            Some(&rotater),
            None,
        )
        .await;
    wrong_method.error(StatusCode::METHOD_NOT_ALLOWED, "BAD_REQUEST");
    let too_big = json!({"name": "x".repeat(70 * 1024), "redirect_uris": []});
    s.call(
        Method::POST,
        &format!("/api/v1/oauth-apps?namespace={}", s.ns),
        Some(&rotater),
        Some(too_big),
    )
    .await
    .error(StatusCode::PAYLOAD_TOO_LARGE, "BAD_REQUEST");

    // The document needs no token, and is the one the code generates.
    let doc = s.call(Method::GET, "/api-docs/openapi.json", None, None).await;
    assert_eq!(doc.status, StatusCode::OK);
    assert_eq!(
        String::from_utf8_lossy(&doc.body),
        oauthapp_operator::api::openapi_json()
    );

    // /metrics counts every answer by route template (never the id), method and code.
    let rotate_answers = |code: u16| {
        format!(
            r#"oauthapp_api_requests_total{{route="/api/v1/oauth-apps/{{id}}/rotate",method="POST",code="{code}"}}"#
        )
    };
    for (code, n) in [(200, 1.0), (400, 2.0), (401, 2.0), (403, 1.0), (404, 4.0)] {
        assert_eq!(s.operator.metric(&rotate_answers(code)).await, Some(n), "{code}");
    }
    assert_eq!(
        s.operator
            .metric(r#"oauthapp_api_requests_total{route="unmatched",method="GET",code="404"}"#)
            .await,
        Some(1.0)
    );
    let metrics = s.operator.metrics().await.expect("metrics");
    assert!(!metrics.contains(&id), "no id in the metrics");
    assert!(
        metrics.contains(
            r#"oauthapp_api_request_duration_seconds_count{route="/api/v1/oauth-apps/{id}/rotate"}"#
        ),
        "{metrics}"
    );
}

impl Setup {
    async fn rotate_without_token(&self, id: &str) -> Answer {
        self.call(
            Method::POST,
            &format!("/api/v1/oauth-apps/{id}/rotate"),
            None,
            None,
        )
        .await
    }
}

fn rand_u128() -> u128 {
    use std::hash::{BuildHasher, Hasher};
    let state = std::collections::hash_map::RandomState::new();
    let (mut a, mut b) = (state.build_hasher(), state.build_hasher());
    a.write_u8(1);
    b.write_u8(2);
    (u128::from(a.finish()) << 64) | u128::from(b.finish())
}

#[tokio::test]
async fn a_rotation_another_replica_is_still_writing_is_answered_409_not_rotated_over() {
    // This replica only serves the REST API: the Lease it would lead by is someone else's for an
    // hour, so nothing here completes a status but the replica that wrote the Secret.
    let lease_ns = namespace("api-inflight-lease");
    let leases: Api<Lease> = Api::namespaced(admin_client().await, &lease_ns);
    let mut held = Lease::default();
    held.metadata.name = Some("oauthapp-operator".into());
    held.spec = Some(LeaseSpec {
        holder_identity: Some("someone-else".into()),
        lease_duration_seconds: Some(3600),
        renew_time: Some(MicroTime(jiff::Timestamp::now())),
        ..Default::default()
    });
    leases
        .create(&Default::default(), &held)
        .await
        .expect("create the Lease");
    let s = setup(
        "api-inflight",
        &["--leader-elect", "--lease-namespace", &lease_ns],
    )
    .await;
    assert_eq!(s.operator.metric("oauthapp_leader").await, Some(0.0), "a standby");

    // The other replica writes the app's first Secret and stops dead before the status write.
    let mut writer = Operator::start(
        &control_plane().kubeconfig,
        &s.ns,
        &[],
        &[("OAUTHAPP_FAILPOINT", "pause-after-secret-write")],
    );
    s.apply(
        &s.ns,
        "apiVersion: oauthapp.io/v1alpha1\nkind: OAuthApp\nmetadata: {name: portal}\nspec: {}\n",
    );
    let written = eventually("the writer's Secret", WAIT, || async {
        s.secrets.get_opt("portal-oauth-client").await.ok()?
    })
    .await;
    let app = s.apps.get("portal").await.expect("app");
    assert!(
        app.status.and_then(|st| st.rotation_id).is_none(),
        "the status lags"
    );

    // A rotation requested meanwhile is a 409: replacing the Secret now could let the writer's
    // status write confirm a secret that is no longer there.
    let rotater = s.caller("rotater", &s.ns, ROTATER_RULES);
    let id = app_id(&s.apps.get("portal").await.expect("app"));
    let answer = eventually("the standby to know the app", WAIT, || async {
        let answer = s.rotate(&id, &rotater).await;
        (answer.status != StatusCode::NOT_FOUND).then_some(answer)
    })
    .await;
    let conflict = answer.error(StatusCode::CONFLICT, "CONFLICT");
    assert!(conflict.message.contains("retry"), "{}", conflict.message);
    let secret = s.secrets.get("portal-oauth-client").await.expect("secret");
    assert_eq!(
        secret.resource_version(),
        written.resource_version(),
        "the Secret is untouched"
    );

    // The writer dies; a replica that leads completes the status from its Secret, and then the
    // same request succeeds.
    writer.kill9();
    let _leader = Operator::start(&control_plane().kubeconfig, &s.ns, &[], &[]);
    let (repaired, _) = settled(&s.client, &s.ns, "portal").await;
    assert_eq!(
        repaired.status.as_ref().and_then(|st| st.rotation_id.as_deref()),
        written
            .annotations()
            .get("oauthapp.io/rotation-id")
            .map(String::as_str),
        "the status follows the written Secret: no second secret"
    );
    let answer = s.rotate(&id, &rotater).await;
    assert_eq!(answer.status, StatusCode::OK);
    let rotated: RotatedSecret = answer.json();
    let (after, secret) = settled(&s.client, &s.ns, "portal").await;
    assert_eq!(plaintext(&secret), rotated.client_secret);
    assert!(verifies(&rotated.client_secret, &after));
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = setup("api-slow", &["--header-read-timeout", "2s"]).await;
    let mut slow = tokio::net::TcpStream::connect(("127.0.0.1", s.operator.api_port))
        .await
        .expect("connect");
    slow.write_all(b"GET /api/v1/oauth-apps HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    // The server closes the connection once its header-read timeout passes.
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(Duration::from_secs(2) + WAIT, slow.read(&mut buf))
        .await
        .expect("the server closes a connection whose headers never end");
    assert!(
        matches!(closed, Ok(0) | Err(_)),
        "closed, not answered: {closed:?}"
    );
    // Meanwhile everyone else is served.
    let doc = s.call(Method::GET, "/api-docs/openapi.json", None, None).await;
    assert_eq!(doc.status, StatusCode::OK);
}

#[tokio::test]
async fn concurrent_rotations_serialize_and_every_200_is_one_rotation() {
    let s = Arc::new(setup("api-concurrent", &[]).await);
    let (app, _) = s.app(&s.ns, "busy").await;
    let before = rotation_count(&app);
    let id = app_id(&app);
    let tokens: Vec<String> = (0..4)
        .map(|i| s.caller(&format!("caller{i}"), &s.ns, ROTATER_RULES))
        .collect();

    let calls = (0..40).map(|i| {
        let (s, id, token) = (s.clone(), id.clone(), tokens[i % 4].clone());
        tokio::spawn(async move { s.rotate(&id, &token).await })
    });
    let answers: Vec<Answer> = futures::future::join_all(calls)
        .await
        .into_iter()
        .map(|r| r.expect("task"))
        .collect();

    let mut ok = Vec::new();
    for a in &answers {
        match a.status {
            StatusCode::OK => ok.push(a.json::<RotatedSecret>().client_secret.clone()),
            StatusCode::CONFLICT => {
                a.error(StatusCode::CONFLICT, "CONFLICT");
            }
            StatusCode::TOO_MANY_REQUESTS => {
                a.error(StatusCode::TOO_MANY_REQUESTS, "TOO_MANY_REQUESTS");
            }
            other => panic!("unexpected {other}: {}", String::from_utf8_lossy(&a.body)),
        }
    }
    let count = |code: StatusCode| answers.iter().filter(|a| a.status == code).count();
    eprintln!(
        "40 concurrent rotations: {} × 200, {} × 409, {} × 429",
        ok.len(),
        count(StatusCode::CONFLICT),
        count(StatusCode::TOO_MANY_REQUESTS)
    );
    assert!(!ok.is_empty(), "some rotations succeed");
    assert_eq!(
        ok.iter().collect::<BTreeSet<_>>().len(),
        ok.len(),
        "every 200 has its own secret"
    );

    let (after, secret) = settled(&s.client, &s.ns, "busy").await;
    assert_eq!(
        rotation_count(&after) - before,
        ok.len() as i64,
        "rotationCount grew by exactly the number of 200s"
    );
    let current = plaintext(&secret);
    assert!(verifies(&current, &after), "the Secret and the status agree");
    assert!(
        ok.contains(&current),
        "the Secret holds the secret of one of the 200s"
    );
}

#[tokio::test]
async fn a_caller_over_its_rate_limit_gets_429_and_others_are_not_affected() {
    // Per caller: a burst of 3, then one request per 100 s. In all: a burst of 12, and as many
    // token reviews.
    let s = setup(
        "api-ratelimit",
        &[
            "--rate-limit-per-caller",
            "0.01",
            "--rate-limit-per-caller-burst",
            "3",
            "--rate-limit-global",
            "0.01",
            "--rate-limit-global-burst",
            "12",
        ],
    )
    .await;
    let alice = s.caller("alice", &s.ns, READ_RULES);
    let bob = s.caller("bob", &s.ns, READ_RULES);

    let mut statuses = Vec::new();
    let mut refused = None;
    for _ in 0..5 {
        let a = s
            .call(Method::GET, "/api/v1/oauth-apps", Some(&alice), None)
            .await;
        statuses.push(a.status.as_u16());
        if a.status == StatusCode::TOO_MANY_REQUESTS {
            refused = Some(a);
        }
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429], "a burst of 3, then 429");
    let refused = refused.expect("a 429");
    refused.error(StatusCode::TOO_MANY_REQUESTS, "TOO_MANY_REQUESTS");
    let retry_after: u64 = refused.headers["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("Retry-After is whole seconds");
    assert!(retry_after >= 1, "Retry-After {retry_after}");

    let b = s.call(Method::GET, "/api/v1/oauth-apps", Some(&bob), None).await;
    assert_eq!(b.status, StatusCode::OK, "bob has his own bucket");

    // A flood of tokens nobody knows: each costs a TokenReview, and those take from buckets of
    // their own: one per client address (as large as a caller's: alice's and bob's first calls,
    // from this address too, used 2 of 3), and one in all (as large as the global one).
    let mut flood = Vec::new();
    for i in 0..12 {
        let a = s
            .call(
                Method::GET,
                "/api/v1/oauth-apps",
                Some(&format!("garbage-{i}")),
                None,
            )
            .await;
        flood.push(a.status.as_u16());
    }
    assert_eq!(flood[..1], [401; 1], "1 review left for this address: a 401");
    assert_eq!(flood[1..], [429; 11], "then its reviews are rate-limited");
    // The flood did not touch the global bucket: bob, whose token is known, is still served.
    let b = s.call(Method::GET, "/api/v1/oauth-apps", Some(&bob), None).await;
    assert_eq!(
        b.status,
        StatusCode::OK,
        "a known caller is not locked out by the flood"
    );
}

#[tokio::test]
async fn list_shows_only_the_apps_of_namespaces_the_caller_may_list() {
    let other = namespace("api-list-other");
    let s = setup(
        "api-list",
        &["--watch-namespaces", &other, "--auth-cache-ttl", "1s"],
    )
    .await;
    s.app(&s.ns, "a1").await;
    s.app(&s.ns, "a2").await;
    let (b1, _) = s.app(&other, "b1").await;
    let token = s.caller("lister", &s.ns, READ_RULES);

    let names = |answer: &Answer| -> Vec<(String, String)> {
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "{}",
            String::from_utf8_lossy(&answer.body)
        );
        let list: OAuthAppList = answer.json();
        list.data
            .into_iter()
            .map(|a| (a.namespace, a.resource_name))
            .collect()
    };
    let listed = names(
        &s.call(Method::GET, "/api/v1/oauth-apps", Some(&token), None)
            .await,
    );
    assert_eq!(
        listed,
        [(s.ns.clone(), "a1".to_string()), (s.ns.clone(), "a2".to_string())]
    );
    s.call(
        Method::GET,
        &format!("/api/v1/oauth-apps/{}", app_id(&b1)),
        Some(&token),
        None,
    )
    .await
    .error(StatusCode::NOT_FOUND, "NOT_FOUND");

    // Granted list in the other namespace: its apps appear once the cached review expires.
    s.grant("lister", &other, READ_RULES);
    let listed = eventually("the other namespace's app in the list", WAIT, || async {
        let listed = names(
            &s.call(Method::GET, "/api/v1/oauth-apps", Some(&token), None)
                .await,
        );
        (listed.len() == 3).then_some(listed)
    })
    .await;
    assert!(listed.contains(&(other.clone(), "b1".to_string())), "{listed:?}");
    let only_other = names(
        &s.call(
            Method::GET,
            &format!("/api/v1/oauth-apps?namespace={other}"),
            Some(&token),
            None,
        )
        .await,
    );
    assert_eq!(only_other, [(other.clone(), "b1".to_string())]);
    // The earlier "no" to `get` is cached too, for its own second.
    let view: OAuthAppView = eventually("get to be allowed in the other namespace", WAIT, || async {
        let path = format!("/api/v1/oauth-apps/{}", app_id(&b1));
        let answer = s.call(Method::GET, &path, Some(&token), None).await;
        (answer.status == StatusCode::OK).then(|| answer.json())
    })
    .await;
    assert_eq!(view.resource_name, "b1");
    assert!(view.is_active);
    assert_eq!(view.redirect_uris, ["https://b1.example.com/cb"]);
    assert_eq!(
        view.client_secret_hint,
        b1.status.as_ref().and_then(|st| st.client_secret_hint.clone())
    );

    // A caller bound to a ClusterRole lists everywhere (one review, not one per namespace).
    let auditor = service_account_token_for(&s.ns, "auditor");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("cluster-lister.yaml");
    std::fs::write(
        &file,
        format!(
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {{name: auditor-{ns}}}\n\
             rules: [{{apiGroups: [oauthapp.io], resources: [oauthapps], verbs: [list]}}]\n---\n\
             apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {{name: auditor-{ns}}}\n\
             roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: auditor-{ns}}}\n\
             subjects: [{{kind: ServiceAccount, name: auditor, namespace: {ns}}}]\n",
            ns = s.ns
        ),
    )
    .expect("write");
    control_plane().kubectl_ok(&["apply", "-f", file.to_str().expect("utf-8")]);
    let everything = names(
        &s.call(Method::GET, "/api/v1/oauth-apps", Some(&auditor), None)
            .await,
    );
    assert_eq!(
        everything,
        [
            (s.ns.clone(), "a1".to_string()),
            (s.ns.clone(), "a2".to_string()),
            (other.clone(), "b1".to_string())
        ]
        .into_iter()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn create_shows_the_secret_once_and_delete_garbage_collects_the_secret() {
    let s = setup("api-create", &[]).await;
    let token = s.caller("admin", &s.ns, ALL_RULES);
    let create = |body: serde_json::Value| {
        let (s, token) = (&s, token.clone());
        async move {
            s.call(
                Method::POST,
                &format!("/api/v1/oauth-apps?namespace={}", s.ns),
                Some(&token),
                Some(body),
            )
            .await
        }
    };
    let body = json!({
        "name": "Billing portal",
        "resource_name": "billing",
        "redirect_uris": ["https://billing.example.com/cb"],
        "scopes": ["invoices:read"],
    });
    let answer = create(body.clone()).await;
    assert_eq!(
        answer.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    assert_eq!(
        answer.headers["cache-control"], "no-store",
        "a secret is never cached"
    );
    let created: CreatedOAuthApp = answer.json();
    assert_eq!(created.app.name, "Billing portal");
    assert_eq!(created.app.resource_name, "billing");
    assert_eq!(created.app.namespace, s.ns);
    assert_eq!(created.app.scopes, ["invoices:read"]);
    assert!(created.app.is_active);
    let (app, secret) = settled(&s.client, &s.ns, "billing").await;
    assert_eq!(created.app.id.0, app_id(&app));
    assert!(
        plaintext(&secret) == created.client_secret,
        "the shown secret is the Secret's"
    );
    assert!(verifies(&created.client_secret, &app));
    assert_eq!(
        created.app.client_secret_hint,
        secret::hint(&created.client_secret)
    );

    // Shown once: reading the app shows the hint, never the secret.
    let id = created.app.id.0.clone();
    let got = eventually("the new app in the operator's cache", WAIT, || async {
        let a = s
            .call(
                Method::GET,
                &format!("/api/v1/oauth-apps/{id}"),
                Some(&token),
                None,
            )
            .await;
        (a.status == StatusCode::OK).then_some(a)
    })
    .await;
    assert!(!String::from_utf8_lossy(&got.body).contains(&created.client_secret));

    // Refusals.
    create(body.clone()).await.error(StatusCode::CONFLICT, "CONFLICT");
    let bad_uri = create(json!({"name": "ftp", "redirect_uris": ["ftp://x.example.com/cb"]}))
        .await
        .error(StatusCode::BAD_REQUEST, "BAD_REQUEST");
    assert!(
        bad_uri.message.contains("redirect URI"),
        "the API server's message: {}",
        bad_uri.message
    );
    create(json!({"name": "Not A Name", "redirect_uris": []}))
        .await
        .error(StatusCode::BAD_REQUEST, "BAD_REQUEST");
    create(json!({"name": "x", "redirect_uris": [], "surprise": 1}))
        .await
        .error(StatusCode::BAD_REQUEST, "BAD_REQUEST");
    s.call(
        Method::POST,
        "/api/v1/oauth-apps",
        Some(&token),
        Some(body.clone()),
    )
    .await
    .error(StatusCode::BAD_REQUEST, "BAD_REQUEST");
    s.call(
        Method::POST,
        "/api/v1/oauth-apps?namespace=default",
        Some(&token),
        Some(body),
    )
    .await
    .error(StatusCode::FORBIDDEN, "FORBIDDEN");

    // Delete: 204, the app is gone and its Secret garbage-collected.
    let deleted = s
        .call(
            Method::DELETE,
            &format!("/api/v1/oauth-apps/{id}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(
        deleted.status,
        StatusCode::NO_CONTENT,
        "{}",
        String::from_utf8_lossy(&deleted.body)
    );
    eventually("the app and its Secret to be gone", WAIT, || async {
        let app = s.apps.get_opt("billing").await.ok()?;
        let secret = s.secrets.get_opt("billing-oauth-client").await.ok()?;
        (app.is_none() && secret.is_none()).then_some(())
    })
    .await;
    eventually("the deleted app to leave the cache", WAIT, || async {
        let a = s
            .call(
                Method::DELETE,
                &format!("/api/v1/oauth-apps/{id}"),
                Some(&token),
                None,
            )
            .await;
        (a.status == StatusCode::NOT_FOUND).then_some(())
    })
    .await;
}

/// A serving certificate for 127.0.0.1 signed by `ca`: (cert PEM, key PEM, cert DER).
fn serving_cert(ca: &rcgen::Issuer<'_, rcgen::KeyPair>) -> (String, String, Vec<u8>) {
    let key = rcgen::KeyPair::generate().expect("key");
    let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .expect("params");
    let cert = params.signed_by(&key, ca).expect("sign");
    (cert.pem(), key.serialize_pem(), cert.der().to_vec())
}

/// The certificate the server presents on a TLS connection that trusts `ca_der`.
async fn peer_certificate(port: u16, ca_der: &[u8]) -> Option<Vec<u8>> {
    install_ring();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca_der.to_vec().into()).ok()?;
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    let name = rustls::pki_types::ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
    let tls = connector.connect(name, tcp).await.ok()?;
    Some(tls.get_ref().1.peer_certificates()?.first()?.to_vec())
}

#[tokio::test]
async fn https_is_served_and_a_renewed_certificate_is_picked_up_without_a_restart() {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let ca_cert = ca_params.self_signed(&ca_key).expect("CA");
    let ca_der = ca_cert.der().to_vec();
    let ca = rcgen::Issuer::new(ca_params, ca_key);

    let dir = tempfile::tempdir().expect("tempdir");
    let (cert_file, key_file) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let (cert_a, key_a, der_a) = serving_cert(&ca);
    std::fs::write(&cert_file, cert_a).expect("write");
    std::fs::write(&key_file, key_a).expect("write");

    let ns = namespace("api-tls");
    let operator = Operator::start(
        &control_plane().kubeconfig,
        &ns,
        &[
            "--tls-cert-file",
            cert_file.to_str().expect("utf-8"),
            "--tls-key-file",
            key_file.to_str().expect("utf-8"),
        ],
        &[],
    );
    wait_ready(&operator).await;
    let port = operator.api_port;
    let served = eventually("the API to answer TLS", WAIT, || peer_certificate(port, &ca_der)).await;
    assert!(served == der_a, "the configured certificate is served");

    // A real HTTPS call, trusting only the CA.
    install_ring();
    let https = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_der(&ca_der).expect("CA")])
        .build()
        .expect("client");
    let doc = https
        .get(format!("https://127.0.0.1:{port}/api-docs/openapi.json"))
        .send()
        .await
        .expect("HTTPS answers");
    assert_eq!(doc.status(), StatusCode::OK);
    let denied = https
        .post(format!("https://127.0.0.1:{port}/api/v1/oauth-apps/app_0/rotate"))
        .send()
        .await
        .expect("HTTPS answers");
    assert_eq!(denied.status(), StatusCode::UNAUTHORIZED);
    // No plain HTTP on the TLS port.
    assert!(http_get(port, "/api-docs/openapi.json").await.is_none());

    // Renewal: new files, same paths; the new certificate is served without a restart.
    let (cert_b, key_b, der_b) = serving_cert(&ca);
    std::fs::write(&key_file, key_b).expect("write");
    std::fs::write(&cert_file, cert_b).expect("write");
    eventually("the renewed certificate to be served", WAIT, || async {
        (peer_certificate(port, &ca_der).await? == der_b).then_some(())
    })
    .await;
    // The log line follows the swap, so it may trail the first handshake by a moment.
    let log = eventually("the reload to be logged", WAIT, || async {
        let log = operator.log_text();
        log.contains("TLS certificate reloaded").then_some(log)
    })
    .await;
    assert!(!log.contains("plain HTTP"), "no plain-HTTP warning with TLS");
}

#[tokio::test]
async fn an_unreachable_api_server_is_a_503_that_says_when_to_retry() {
    // The operator's kubeconfig points at a port where nothing listens.
    let ns = namespace("api-unreachable");
    let cp = control_plane();
    let kubeconfig = cp.dir.join(format!("unreachable-{ns}.kubeconfig"));
    let server = cp.kubectl_ok(&[
        "config",
        "view",
        "--minify",
        "-o",
        "jsonpath={.clusters[0].cluster.server}",
    ]);
    let dead = format!("https://127.0.0.1:{}", free_port());
    let raw = cp.kubectl_ok(&["config", "view", "--raw", "--minify"]);
    assert!(raw.contains(server.trim()), "the kubeconfig names its server");
    std::fs::write(&kubeconfig, raw.replace(server.trim(), &dead)).expect("write kubeconfig");
    let mut operator = Operator::start(
        &kubeconfig,
        &ns,
        &["--leader-elect", "--lease-namespace", &ns],
        &[],
    );
    let base = format!("http://127.0.0.1:{}", operator.api_port);
    let token = service_account_token_for(&ns, "caller");

    let answer = eventually("the API to answer", WAIT, || async {
        let request = http()
            .post(format!("{base}/api/v1/oauth-apps/app_0/rotate"))
            .bearer_auth(&token);
        let response = request.send().await.ok()?;
        let status = response.status();
        let retry_after = response.headers().get("retry-after").cloned();
        let body = response.bytes().await.ok()?.to_vec();
        Some((status, retry_after, body))
    })
    .await;
    let (status, retry_after, body) = answer;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert!(retry_after.is_some(), "a 503 says when to retry");
    let error: RestErrorResponse = serde_json::from_slice(&body).expect("a JSON error");
    assert_eq!(
        serde_json::to_value(error.code).expect("code"),
        "INTERNAL_SERVER_ERROR"
    );
    assert!(!error.message.contains(&token));
    assert!(error.message.contains("unavailable"), "{}", error.message);
    // Leader election cannot read its Lease either: it stands by and retries, it does not exit.
    eventually("the Lease retries in the log", WAIT, || async {
        operator
            .log_text()
            .contains("cannot read or create the leader-election Lease; standing by")
            .then_some(())
    })
    .await;
    assert!(operator.running(), "the operator is still running");
}

/// A token of ServiceAccount `sa` (created if missing) in `ns`.
fn service_account_token_for(ns: &str, sa: &str) -> String {
    let cp = control_plane();
    if !cp
        .kubectl(&["get", "serviceaccount", sa, "-n", ns])
        .status
        .success()
    {
        cp.kubectl_ok(&["create", "serviceaccount", sa, "-n", ns]);
    }
    service_account_token(ns, sa)
}

#[tokio::test]
async fn certificate_files_that_do_not_load_stop_the_operator_with_an_error() {
    let ns = namespace("api-bad-tls");
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert_file, key_file) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert_file, "not a certificate").expect("write");
    std::fs::write(&key_file, "not a key").expect("write");
    let mut operator = Operator::start(
        &control_plane().kubeconfig,
        &ns,
        &[
            "--tls-cert-file",
            cert_file.to_str().expect("utf-8"),
            "--tls-key-file",
            key_file.to_str().expect("utf-8"),
        ],
        &[],
    );
    eventually("the operator to give up on its REST API", WAIT, || async {
        operator
            .log_text()
            .contains("the REST API server failed; stopping the operator")
            .then_some(())
    })
    .await;
    // Already exiting on its own: a SIGTERM'd healthy operator would exit 0.
    let status = operator.terminate(WAIT).expect("the operator exits");
    assert_eq!(status.code(), Some(1), "a start-up failure is a non-zero exit");
}

/// CPU time (user + system) of process `pid` so far, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // After the command: state is field 3, utime 14 and stime 15 (1-based, from the pid).
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    field(14) + field(15)
}

/// Resident set size of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn clock_ticks_per_second() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100)
}

#[tokio::test]
async fn a_flood_of_bad_tokens_never_locks_out_a_known_caller() {
    // Answers kept 2 s. Reviews of unknown tokens: 10/s in all, 5/s per client address.
    const TTL: Duration = Duration::from_secs(2);
    let s = Arc::new(
        setup(
            "api-flood",
            &[
                "--auth-cache-ttl",
                "2s",
                "--rate-limit-global",
                "10",
                "--rate-limit-global-burst",
                "10",
                "--rate-limit-per-caller",
                "5",
                "--rate-limit-per-caller-burst",
                "5",
            ],
        )
        .await,
    );
    let (app, _) = s.app(&s.ns, "target").await;
    let id = app_id(&app);
    let known = s.caller("known", &s.ns, ROTATER_RULES);
    // The caller is known before the flood starts (RBAC may take a moment to see the binding).
    eventually("a first rotation by the known caller", WAIT, || async {
        (s.rotate(&id, &known).await.status == StatusCode::OK).then_some(())
    })
    .await;

    // The flood: 8 loopback addresses, each sending a random token every 40 ms (200/s in all,
    // 20 times the review rate), for 6 times the TTL.
    let flood_for = TTL * 6;
    let stop = std::time::Instant::now() + flood_for;
    let pid = s.operator.pid();
    let cpu_before = cpu_ticks(pid);
    let started = std::time::Instant::now();
    let workers: Vec<_> = (0..8u8)
        .map(|w| {
            let base = s.base.clone();
            tokio::spawn(async move {
                install_ring();
                let client = reqwest::Client::builder()
                    .local_address(std::net::IpAddr::from([127, 0, 0, 2 + w]))
                    .timeout(Duration::from_secs(30))
                    .build()
                    .expect("client");
                let mut statuses: Vec<u16> = Vec::new();
                while std::time::Instant::now() < stop {
                    let token = format!("flood-{:032x}", rand_u128());
                    let answer = client
                        .get(format!("{base}/api/v1/oauth-apps"))
                        .bearer_auth(&token)
                        .send()
                        .await;
                    statuses.push(answer.map_or(0, |a| a.status().as_u16()));
                    tokio::time::sleep(Duration::from_millis(40)).await;
                }
                statuses
            })
        })
        .collect();
    // Meanwhile, the known caller rotates once a second (whether or not its previous call has
    // been answered), and the operator's RSS is sampled.
    let mut calls = Vec::new();
    let mut max_rss = 0;
    while std::time::Instant::now() < stop {
        let tick = tokio::time::Instant::now() + Duration::from_secs(1);
        let (s, id, known) = (s.clone(), id.clone(), known.clone());
        calls.push(tokio::spawn(async move {
            let answer = s.rotate(&id, &known).await;
            if !matches!(answer.status, StatusCode::OK | StatusCode::CONFLICT) {
                eprintln!(
                    "known caller got {}: {}",
                    answer.status,
                    String::from_utf8_lossy(&answer.body)
                );
            }
            answer.status.as_u16()
        }));
        max_rss = max_rss.max(rss_kib(pid));
        tokio::time::sleep_until(tick).await;
    }
    let mut answers = Vec::new();
    for call in calls {
        answers.push(call.await.expect("known caller"));
    }
    let mut flood: BTreeMap<u16, usize> = BTreeMap::new();
    for worker in workers {
        for status in worker.await.expect("flood worker") {
            *flood.entry(status).or_default() += 1;
        }
    }
    let wall = started.elapsed();
    let cpu = (cpu_ticks(pid) - cpu_before) as f64 / clock_ticks_per_second() as f64;
    let sent: usize = flood.values().sum();
    let mut known_counts: BTreeMap<u16, usize> = BTreeMap::new();
    for a in &answers {
        *known_counts.entry(*a).or_default() += 1;
    }
    eprintln!(
        "flood figures: {sent} flood requests in {:.1}s ({flood:?}); known caller answers {known_counts:?}; \
         operator CPU {cpu:.2}s ({:.0}% of one core), max RSS {} MiB",
        wall.as_secs_f64(),
        100.0 * cpu / wall.as_secs_f64(),
        max_rss / 1024
    );
    assert!(answers.len() >= 10, "the known caller kept calling: {answers:?}");
    assert!(
        answers.iter().all(|a| *a == 200 || *a == 409),
        "the known caller gets only 200 and 409 throughout: {answers:?}"
    );
    assert!(
        flood.keys().all(|k| *k == 401 || *k == 429),
        "the flood gets 401 or 429: {flood:?}"
    );
    assert!(
        flood.get(&429).is_some_and(|n| *n > sent / 2),
        "the flood was mostly refused unreviewed: {flood:?}"
    );
}

#[tokio::test]
async fn a_rotation_past_its_secret_write_is_answered_with_the_secret_whatever_the_timeout() {
    // Every rotation pauses 8 s after its Secret write; requests time out after 3 s. Hashing is
    // cheap, so a rotation reaches its Secret write well within the timeout.
    let ns = namespace("api-no-lost-answer");
    let client = admin_client().await;
    let operator = Operator::start(
        &control_plane().kubeconfig,
        &ns,
        &[
            "--api-request-timeout",
            "3s",
            "--hash-memory-kib",
            "64",
            "--hash-iterations",
            "1",
        ],
        &[("OAUTHAPP_FAILPOINT", "pause-after-secret-write=8s")],
    );
    wait_ready(&operator).await;
    let s = Setup {
        apps: Api::namespaced(client.clone(), &ns),
        secrets: Api::namespaced(client.clone(), &ns),
        base: format!("http://127.0.0.1:{}", operator.api_port),
        client,
        ns,
        operator,
    };
    let (app, _) = s.app(&s.ns, "slow").await;
    let token = s.caller("rotater", &s.ns, ROTATER_RULES);

    let answer = s.rotate(&app_id(&app), &token).await;
    assert_eq!(
        answer.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    assert_eq!(answer.headers["cache-control"], "no-store");
    let rotated: RotatedSecret = answer.json();
    let secret = s.secrets.get("slow-oauth-client").await.expect("secret");
    assert_eq!(
        plaintext(&secret),
        rotated.client_secret,
        "the answer carries the secret that is in the Secret"
    );
    let (after, _) = settled(&s.client, &s.ns, "slow").await;
    assert!(verifies(&rotated.client_secret, &after));
    assert_eq!(rotation_count(&after), rotation_count(&app) + 1);
}

#[tokio::test]
async fn a_rotation_that_times_out_before_its_secret_write_writes_nothing() {
    // Every rotation pauses 4 s right before its Secret write; requests time out after 2 s.
    let ns = namespace("api-abandoned");
    let client = admin_client().await;
    let operator = Operator::start(
        &control_plane().kubeconfig,
        &ns,
        &[
            "--api-request-timeout",
            "2s",
            "--hash-memory-kib",
            "64",
            "--hash-iterations",
            "1",
        ],
        &[("OAUTHAPP_FAILPOINT", "pause-before-secret-write=4s")],
    );
    wait_ready(&operator).await;
    let s = Setup {
        apps: Api::namespaced(client.clone(), &ns),
        secrets: Api::namespaced(client.clone(), &ns),
        base: format!("http://127.0.0.1:{}", operator.api_port),
        client,
        ns,
        operator,
    };
    let (app, before) = s.app(&s.ns, "late").await;
    let token = s.caller("rotater", &s.ns, ROTATER_RULES);

    let answer = s.rotate(&app_id(&app), &token).await;
    let timed_out = answer.error(StatusCode::SERVICE_UNAVAILABLE, "INTERNAL_SERVER_ERROR");
    assert!(timed_out.message.contains("timed out"), "{}", timed_out.message);
    // The abandoned rotation reaches its point of no return after the pause, and stops there.
    eventually("the abandoned rotation to stop", WAIT, || async {
        let errors = s
            .operator
            .metric(r#"oauthapp_rotations_total{trigger="Api",result="error"}"#)
            .await?;
        (errors >= 1.0).then_some(())
    })
    .await;
    let secret = s.secrets.get("late-oauth-client").await.expect("secret");
    assert_eq!(
        secret.resource_version(),
        before.resource_version(),
        "the Secret was not written"
    );
    assert_eq!(plaintext(&secret), plaintext(&before));
    let now = s.apps.get("late").await.expect("app");
    assert_eq!(rotation_count(&now), rotation_count(&app));
    assert!(
        verifies(&plaintext(&secret), &now),
        "the old secret is still the valid one"
    );
}

#[tokio::test]
async fn with_api_audiences_only_tokens_meant_for_the_operator_are_accepted() {
    let s = setup("api-audience", &["--api-audiences", "oauthapp-operator"]).await;
    let (app, _) = s.app(&s.ns, "aud").await;
    let default_token = s.caller("ci", &s.ns, READ_RULES);
    let path = format!("/api/v1/oauth-apps/{}", app_id(&app));
    let refused = s.call(Method::GET, &path, Some(&default_token), None).await;
    refused.error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED");

    let bound = control_plane()
        .kubectl_ok(&[
            "create",
            "token",
            "ci",
            "-n",
            &s.ns,
            "--audience",
            "oauthapp-operator",
            "--duration=1h",
        ])
        .trim()
        .to_string();
    let accepted = eventually("the audience-bound token to be accepted", WAIT, || async {
        let answer = s.call(Method::GET, &path, Some(&bound), None).await;
        (answer.status == StatusCode::OK).then_some(answer)
    })
    .await;
    let view: OAuthAppView = accepted.json();
    assert_eq!(view.resource_name, "aud");
    // Still refused: the refusal is not because the token was unknown.
    s.call(Method::GET, &path, Some(&default_token), None)
        .await
        .error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
}

/// Opens `n` connections to `port` that send half a request's headers and then nothing.
async fn slow_connections(port: u16, n: usize) -> Vec<tokio::net::TcpStream> {
    use tokio::io::AsyncWriteExt;
    let mut open = Vec::new();
    for _ in 0..n {
        let mut c = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .await
            .expect("write");
        open.push(c);
    }
    open
}

/// How many of `conns` the server has closed.
fn closed(conns: &[tokio::net::TcpStream]) -> usize {
    let mut buf = [0u8; 64];
    conns
        .iter()
        .filter(|c| match c.try_read(&mut buf) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
        })
        .count()
}

#[tokio::test]
async fn slow_clients_never_keep_a_probe_or_a_caller_out() {
    // A cap of 50 connections per listener; timeouts far away, so only the cap closes anything.
    let s = setup(
        "api-slowloris",
        &[
            "--max-connections",
            "50",
            "--header-read-timeout",
            "300s",
            "--idle-timeout",
            "300s",
        ],
    )
    .await;
    let token = s.caller("reader", &s.ns, READ_RULES);
    let admin = slow_connections(s.operator.admin_port, 150).await;
    let api = slow_connections(s.operator.api_port, 150).await;

    // Fresh clients are served on both listeners.
    let health = eventually("/healthz from a fresh connection", WAIT, || async {
        http_get(s.operator.admin_port, "/healthz").await
    })
    .await;
    assert_eq!(health, "ok");
    let listed = s
        .call(Method::GET, "/api/v1/oauth-apps", Some(&token), None)
        .await;
    assert_eq!(
        listed.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&listed.body)
    );
    // Because the oldest slow ones were closed to make room: at most 50 stay open per listener.
    for (name, conns) in [("admin", &admin), ("api", &api)] {
        eventually(
            &format!("the {name} listener to close slow connections past the cap"),
            WAIT,
            || async { (closed(conns) >= 100).then_some(()) },
        )
        .await;
    }
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = setup("api-idle", &["--idle-timeout", "1s"]).await;
    for port in [s.operator.admin_port, s.operator.api_port] {
        let mut c = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        let mut buf = vec![0u8; 4096];
        let n = c.read(&mut buf).await.expect("an answer");
        assert!(n > 0, "answered");
        // Then nothing: the server closes the idle connection.
        let end = tokio::time::timeout(WAIT, async {
            loop {
                match c.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => continue,
                }
            }
        })
        .await;
        assert!(end.is_ok(), "port {port}: an idle connection is closed");
    }
}

/// SubjectAccessReviews the API server has answered so far (its own request counter).
fn subject_access_reviews(cp: &ControlPlane) -> f64 {
    cp.kubectl_ok(&["get", "--raw", "/metrics"])
        .lines()
        .filter(|l| {
            l.starts_with("apiserver_request_total{") && l.contains(r#"resource="subjectaccessreviews""#)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn list_pages_through_many_namespaces_at_a_bounded_review_cost() {
    // A control plane of its own: the API server's SubjectAccessReview counter is this test's.
    let private = PrivateControlPlane::start("list-paging");
    let cp = &private.0;
    let namespaces: Vec<String> = (0..30).map(|i| format!("page-{i:02}")).collect();
    for ns in &namespaces {
        cp.kubectl_ok(&["create", "namespace", ns]);
    }
    let mut manifest = String::new();
    manifest += "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: lister, namespace: page-00}\n---\n";
    // The caller may list in 20 of the 30 namespaces.
    let visible: BTreeSet<&String> = namespaces
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 3 != 0)
        .map(|(_, ns)| ns)
        .collect();
    for ns in &visible {
        manifest += &format!(
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {{name: lister, namespace: {ns}}}\n\
             rules: [{{apiGroups: [oauthapp.io], resources: [oauthapps], verbs: [list]}}]\n---\n\
             apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: lister, namespace: {ns}}}\n\
             roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: lister}}\n\
             subjects: [{{kind: ServiceAccount, name: lister, namespace: page-00}}]\n---\n"
        );
    }
    let mut expected = BTreeSet::new();
    for i in 0..250 {
        let ns = &namespaces[i % namespaces.len()];
        manifest += &format!(
            "apiVersion: oauthapp.io/v1alpha1\nkind: OAuthApp\nmetadata: {{name: app-{i:03}, namespace: {ns}}}\nspec: {{}}\n---\n"
        );
        if visible.contains(ns) {
            expected.insert((ns.clone(), format!("app-{i:03}")));
        }
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("apps.yaml");
    std::fs::write(&file, manifest).expect("write");
    let file = file.to_str().expect("utf-8");
    cp.kubectl_ok(&["apply", "-f", file]);
    // The first namespace names the operator's log; the flag takes the others too.
    let others = namespaces[1..].join(",");
    let operator = Operator::start_on(
        cp,
        &cp.kubeconfig,
        &namespaces[0],
        &[
            "--watch-namespaces",
            &others,
            "--hash-memory-kib",
            "64",
            "--hash-iterations",
            "1",
        ],
        &[],
    );
    wait_ready(&operator).await;
    let token = cp
        .kubectl_ok(&["create", "token", "lister", "-n", "page-00", "--duration=1h"])
        .trim()
        .to_string();
    let base = format!("http://127.0.0.1:{}", operator.api_port);

    // Walks every page with limit=40; the apps seen, and the SubjectAccessReviews each page cost.
    let walk = || async {
        let mut seen = Vec::new();
        let mut reviews = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let before = subject_access_reviews(cp);
            let path = match &next {
                Some(token) => format!("/api/v1/oauth-apps?limit=40&continue={token}"),
                None => "/api/v1/oauth-apps?limit=40".to_string(),
            };
            let answer = call(&base, Method::GET, &path, Some(&token), None).await;
            assert_eq!(
                answer.status,
                StatusCode::OK,
                "{}",
                String::from_utf8_lossy(&answer.body)
            );
            reviews.push(subject_access_reviews(cp) - before);
            let page: OAuthAppList = answer.json();
            assert!(page.data.len() <= 40, "a page holds at most limit apps");
            seen.extend(
                page.data
                    .iter()
                    .map(|a| (a.namespace.clone(), a.resource_name.clone())),
            );
            match page.continue_token {
                Some(token) => next = Some(token),
                None => return (seen, reviews),
            }
            assert!(reviews.len() < 100, "the walk ends");
        }
    };
    // Once the operator's caches hold every app, a walk sees exactly the visible ones, once each.
    let (seen, reviews) = eventually("a walk that sees every visible app", WAIT * 2, || async {
        let (seen, reviews) = walk().await;
        (seen.len() >= expected.len()).then_some((seen, reviews))
    })
    .await;
    let unique: BTreeSet<(String, String)> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "no app comes back twice");
    assert_eq!(unique, expected, "every app the caller may see, none it may not");
    eprintln!(
        "list paging: {} pages, SubjectAccessReviews per page {reviews:?}",
        reviews.len()
    );
    assert!(
        reviews.iter().all(|r| *r <= 33.0),
        "at most 32 namespace reviews and the cluster-wide one per page: {reviews:?}"
    );

    // Bad paging parameters are 400s.
    for query in ["limit=0", "limit=1001", "continue=zz", "continue=7b7d"] {
        call(
            &base,
            Method::GET,
            &format!("/api/v1/oauth-apps?{query}"),
            Some(&token),
            None,
        )
        .await
        .error(StatusCode::BAD_REQUEST, "BAD_REQUEST");
    }
    drop(operator);
}

const VERIFIER_RULES: &str = r#"
- apiGroups: ["oauthapp.io"]
  resources: ["oauthapps/verify"]
  verbs: ["create"]
"#;

#[tokio::test]
async fn verify_accepts_the_current_and_the_unexpired_previous_secret_and_reveals_nothing_else() {
    // Callers here poll; the per-caller limit is not what this test is about.
    let s = setup(
        "api-verify",
        &[
            "--rate-limit-per-caller",
            "1000",
            "--rate-limit-per-caller-burst",
            "1000",
        ],
    )
    .await;
    s.apply(
        &s.ns,
        "apiVersion: oauthapp.io/v1alpha1\nkind: OAuthApp\nmetadata:\n  name: portal\nspec:\n  redirectUris: [\"https://portal.example.com/cb\"]\n  rotation:\n    gracePeriod: 12s\n",
    );
    let (app, first) = settled(&s.client, &s.ns, "portal").await;
    let status = app.status.clone().expect("status");
    let (app_id, client_id) = (
        status.app_id.clone().expect("app id"),
        status.client_id.clone().expect("client id"),
    );
    let gateway = s.caller("gateway", &s.ns, VERIFIER_RULES);
    let stranger = s.caller("stranger", &s.ns, "");
    let rotater = s.caller("rotater", &s.ns, ROTATER_RULES);
    let verify = |token: String, client_id: String, secret: String| {
        let base = s.base.clone();
        async move {
            let body = serde_json::json!({"client_id": client_id, "client_secret": secret});
            let answer = call(
                &base,
                Method::POST,
                "/api/v1/oauth-apps/verify",
                Some(&token),
                Some(body),
            )
            .await;
            assert_eq!(
                answer.status,
                StatusCode::OK,
                "{}",
                String::from_utf8_lossy(&answer.body)
            );
            answer.json::<serde_json::Value>()
        }
    };
    let invalid = serde_json::json!({"valid": false});
    let old = plaintext(&first);
    let current = verify(gateway.clone(), client_id.clone(), old.clone()).await;
    assert_eq!(
        current,
        serde_json::json!({"valid": true, "app_id": app_id, "namespace": s.ns, "secret": "current", "expires_at": null})
    );

    // A rotation with a grace period: both verify, the old one as "previous" until its expiry.
    let rotated = s.rotate(&app_id, &rotater).await;
    assert_eq!(rotated.status, StatusCode::OK);
    let new = rotated.json::<serde_json::Value>()["client_secret"]
        .as_str()
        .expect("secret")
        .to_string();
    let (app, _) = settled(&s.client, &s.ns, "portal").await;
    let previous = app
        .status
        .clone()
        .and_then(|st| st.previous_secret)
        .expect("previous");
    let expected_previous = serde_json::json!({
        "valid": true, "app_id": app_id, "namespace": s.ns, "secret": "previous",
        "expires_at": previous.expires_at.0.to_string(),
    });
    let new_answer = eventually("the new secret to verify", WAIT, || async {
        let answer = verify(gateway.clone(), client_id.clone(), new.clone()).await;
        (answer["valid"] == true).then_some(answer)
    })
    .await;
    assert_eq!(new_answer["secret"], "current");
    assert_eq!(
        verify(gateway.clone(), client_id.clone(), old.clone()).await,
        expected_previous
    );
    // Cached now: still the same answer.
    assert_eq!(
        verify(gateway.clone(), client_id.clone(), old.clone()).await,
        expected_previous
    );

    // Wrong secret, unknown client id, a caller without the verb: the same answer.
    let wrong = oauthapp_operator::model::secret::ClientSecret::generate().expect("secret");
    assert_eq!(
        verify(gateway.clone(), client_id.clone(), wrong.expose().to_string()).await,
        invalid
    );
    assert_eq!(
        verify(gateway.clone(), "no-such-client".into(), new.clone()).await,
        invalid
    );
    assert_eq!(
        verify(gateway.clone(), "app_0".into(), new.clone()).await,
        invalid
    );
    assert_eq!(
        verify(stranger.clone(), client_id.clone(), new.clone()).await,
        invalid
    );

    // Retired early through the REST API: the previous secret stops verifying, even from the
    // cache, as soon as the operator's cache shows the retirement.
    let retired = s
        .call(
            Method::DELETE,
            &format!("/api/v1/oauth-apps/{app_id}/previous-secret"),
            Some(&rotater),
            None,
        )
        .await;
    assert_eq!(retired.status, StatusCode::NO_CONTENT);
    let status = s.apps.get("portal").await.expect("app").status.expect("status");
    assert_eq!(status.previous_secret, None);
    eventually(
        "the retired secret to stop verifying",
        Duration::from_secs(5),
        || async { (verify(gateway.clone(), client_id.clone(), old.clone()).await == invalid).then_some(()) },
    )
    .await;
    assert_eq!(
        verify(gateway.clone(), client_id.clone(), new.clone()).await["secret"],
        "current"
    );

    // With revoke_previous, a rotation leaves one valid secret; without, the previous one
    // expires on its own.
    let revoking = s
        .call(
            Method::POST,
            &format!("/api/v1/oauth-apps/{app_id}/rotate?revoke_previous=true"),
            Some(&rotater),
            None,
        )
        .await;
    assert_eq!(revoking.status, StatusCode::OK);
    let (app, _) = settled(&s.client, &s.ns, "portal").await;
    assert_eq!(app.status.expect("status").previous_secret, None);
    let latest = revoking.json::<serde_json::Value>()["client_secret"]
        .as_str()
        .expect("secret")
        .to_string();
    let rotated = s.rotate(&app_id, &rotater).await;
    assert_eq!(rotated.status, StatusCode::OK);
    let (app, _) = settled(&s.client, &s.ns, "portal").await;
    let previous = app.status.and_then(|st| st.previous_secret).expect("previous");
    eventually("the previous secret to verify", WAIT, || async {
        (verify(gateway.clone(), client_id.clone(), latest.clone()).await["secret"] == "previous")
            .then_some(())
    })
    .await;
    eventually("the previous secret to expire", WAIT, || async {
        (verify(gateway.clone(), client_id.clone(), latest.clone()).await == invalid).then_some(())
    })
    .await;
    assert!(jiff::Timestamp::now() >= previous.expires_at.0, "expired early");
    let counts = s.operator.metrics().await.expect("metrics");
    for result in ["current", "previous", "invalid", "unknown"] {
        let line = format!("oauthapp_verifications_total{{result=\"{result}\"}}");
        let n: f64 = counts
            .lines()
            .find_map(|l| l.strip_prefix(&line))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0);
        assert!(n >= 1.0, "{line}: {n}");
    }
}

#[tokio::test]
async fn every_route_works_on_a_standby_and_every_create_there_answers_its_secret() {
    // Two replicas with leader election, as the chart installs them. The first leads; the
    // second stands by, and every call below goes to it.
    let lease_ns = namespace("api-standby-lease");
    let elect = ["--leader-elect", "--lease-namespace", lease_ns.as_str()];
    let leading = setup("api-standby", &elect).await;
    eventually("the first replica to lead", WAIT, || async {
        (leading.operator.metric("oauthapp_leader").await? == 1.0).then_some(())
    })
    .await;
    let standby = Operator::start(&control_plane().kubeconfig, &leading.ns, &elect, &[]);
    wait_ready(&standby).await;
    let s = Setup {
        ns: leading.ns.clone(),
        client: leading.client.clone(),
        apps: leading.apps.clone(),
        secrets: leading.secrets.clone(),
        base: format!("http://127.0.0.1:{}", standby.api_port),
        operator: standby,
    };
    assert_eq!(s.operator.metric("oauthapp_leader").await, Some(0.0), "a standby");
    let owner = s.caller("owner", &s.ns, ALL_RULES);
    let gateway = s.caller("gateway", &s.ns, VERIFIER_RULES);

    // Creates: each is answered 201 with the secret its Secret holds. The leader's controller
    // sees each new app at once and races the standby for its first secret.
    let mut created = Vec::new();
    for i in 0..6 {
        let answer = s
            .call(
                Method::POST,
                &format!("/api/v1/oauth-apps?namespace={}", s.ns),
                Some(&owner),
                Some(json!({"name": format!("app-{i}"), "redirect_uris": [format!("https://app-{i}.example.com/cb")]})),
            )
            .await;
        assert_eq!(
            answer.status,
            StatusCode::CREATED,
            "create {i} on the standby: {}",
            String::from_utf8_lossy(&answer.body)
        );
        let body: CreatedOAuthApp = answer.json();
        let (app, secret) = settled(&s.client, &s.ns, &format!("app-{i}")).await;
        assert_eq!(body.app.id.0, app_id(&app));
        assert!(
            plaintext(&secret) == body.client_secret,
            "create {i}: the shown secret is the Secret's"
        );
        assert!(verifies(&body.client_secret, &app));
        created.push((app, body.client_secret.clone()));
    }
    assert_eq!(
        s.operator.metric("oauthapp_leader").await,
        Some(0.0),
        "still a standby"
    );

    // Get and list.
    let id0 = app_id(&created[0].0);
    let got = s
        .call(
            Method::GET,
            &format!("/api/v1/oauth-apps/{id0}"),
            Some(&owner),
            None,
        )
        .await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.json::<OAuthAppView>().resource_name, "app-0");
    let listed = eventually("the standby to list all six", WAIT, || async {
        let answer = s
            .call(Method::GET, "/api/v1/oauth-apps", Some(&owner), None)
            .await;
        (answer.status == StatusCode::OK)
            .then(|| answer.json::<OAuthAppList>())
            .filter(|l| l.data.len() == 6)
    })
    .await;
    assert_eq!(listed.data.len(), 6);

    // Rotate with a grace period, verify both secrets, retire the previous one: all on the
    // standby.
    control_plane().kubectl_ok(&[
        "patch",
        "oapp",
        "app-1",
        "-n",
        &s.ns,
        "--type=merge",
        "-p",
        r#"{"spec":{"rotation":{"gracePeriod":"1h"}}}"#,
    ]);
    let id1 = app_id(&created[1].0);
    let old = created[1].1.clone();
    let client_id = created[1]
        .0
        .status
        .as_ref()
        .and_then(|st| st.client_id.clone())
        .expect("client id");
    // The standby's cache may lag the patch: rotate until a rotation carried the grace period.
    let new = eventually(
        "a rotation on the standby that keeps the previous secret",
        WAIT,
        || async {
            let answer = s.rotate(&id1, &owner).await;
            assert_eq!(
                answer.status,
                StatusCode::OK,
                "{}",
                String::from_utf8_lossy(&answer.body)
            );
            let new = answer.json::<RotatedSecret>().client_secret.clone();
            let (app, _) = settled(&s.client, &s.ns, "app-1").await;
            app.status.and_then(|st| st.previous_secret).map(|_| new)
        },
    )
    .await;
    let verify = |secret: String| {
        let (s, gateway, client_id) = (&s, gateway.clone(), client_id.clone());
        async move {
            let answer = s
                .call(
                    Method::POST,
                    "/api/v1/oauth-apps/verify",
                    Some(&gateway),
                    Some(json!({"client_id": client_id, "client_secret": secret})),
                )
                .await;
            assert_eq!(
                answer.status,
                StatusCode::OK,
                "{}",
                String::from_utf8_lossy(&answer.body)
            );
            answer.json::<serde_json::Value>()
        }
    };
    eventually("the standby to verify the new secret", WAIT, || async {
        (verify(new.clone()).await["secret"] == "current").then_some(())
    })
    .await;
    let (app1, _) = settled(&s.client, &s.ns, "app-1").await;
    let previous_rotation = app1
        .status
        .as_ref()
        .and_then(|st| st.previous_secret.clone())
        .expect("previous");
    // The previous secret is the one shown before this rotation, or one from an earlier try.
    if old_is_previous(&old, &previous_rotation.client_secret_hash) {
        assert_eq!(verify(old.clone()).await["secret"], "previous");
    }
    let retired = s
        .call(
            Method::DELETE,
            &format!("/api/v1/oauth-apps/{id1}/previous-secret"),
            Some(&owner),
            None,
        )
        .await;
    assert_eq!(
        retired.status,
        StatusCode::NO_CONTENT,
        "{}",
        String::from_utf8_lossy(&retired.body)
    );
    let (app1, _) = settled(&s.client, &s.ns, "app-1").await;
    assert_eq!(
        app1.status.and_then(|st| st.previous_secret),
        None,
        "retired on the standby"
    );
    assert_eq!(verify(old).await["valid"], false);
    assert_eq!(verify(new).await["secret"], "current");

    // Delete.
    let id2 = app_id(&created[2].0);
    let deleted = s
        .call(
            Method::DELETE,
            &format!("/api/v1/oauth-apps/{id2}"),
            Some(&owner),
            None,
        )
        .await;
    assert_eq!(
        deleted.status,
        StatusCode::NO_CONTENT,
        "{}",
        String::from_utf8_lossy(&deleted.body)
    );
    eventually("app-2 to be gone", WAIT, || async {
        s.apps.get_opt("app-2").await.ok()?.is_none().then_some(())
    })
    .await;
    assert_eq!(
        s.operator.metric("oauthapp_leader").await,
        Some(0.0),
        "every call above was served by a standby"
    );
    assert!(
        !s.operator.log_text().contains("no longer the leader"),
        "no write on the standby was refused by the fence"
    );
    drop(leading);
}

/// Whether `plain` is the secret whose hash is `phc`.
fn old_is_previous(plain: &str, phc: &str) -> bool {
    secret::verify(plain, phc).unwrap_or(false)
}

impl Setup {
    /// `POST /api/v1/oauth-apps` of app `name` in this namespace.
    async fn create(&self, name: &str, token: &str) -> Answer {
        let body = json!({"name": name, "redirect_uris": [format!("https://{name}.example.com/cb")]});
        let path = format!("/api/v1/oauth-apps?namespace={}", self.ns);
        self.call(Method::POST, &path, Some(token), Some(body)).await
    }
}

#[tokio::test]
async fn a_create_that_times_out_before_its_first_secret_leaves_no_app_behind() {
    // Every rotation pauses 4 s right before its Secret write; requests time out after 2 s.
    let s = setup_with_env(
        "api-create-withdrawn",
        &["--api-request-timeout", "2s"],
        &[("OAUTHAPP_FAILPOINT", "pause-before-secret-write=4s")],
    )
    .await;
    let owner = s.caller("owner", &s.ns, ALL_RULES);
    let timed_out = s
        .create("late", &owner)
        .await
        .error(StatusCode::SERVICE_UNAVAILABLE, "INTERNAL_SERVER_ERROR");
    assert!(timed_out.message.contains("timed out"), "{}", timed_out.message);
    // Nobody was shown its first secret: the app is removed, and with it any Secret the
    // controller wrote meanwhile.
    eventually("the unanswered app to be withdrawn", WAIT, || async {
        s.apps.get_opt("late").await.ok()?.is_none().then_some(())
    })
    .await;
    eventually(
        "its Secret, if the controller wrote one, to be collected",
        WAIT,
        || async {
            s.secrets
                .get_opt("late-oauth-client")
                .await
                .ok()?
                .is_none()
                .then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn a_create_that_times_out_while_the_app_is_being_created_leaves_no_app_behind() {
    // The app reaches the API server, and the request times out (2 s) before the create's
    // answer is read (3 s later): nobody will see its secret.
    let s = setup_with_env(
        "api-create-in-flight",
        &["--api-request-timeout", "2s"],
        &[("OAUTHAPP_FAILPOINT", "pause-after-create=3s")],
    )
    .await;
    let owner = s.caller("owner", &s.ns, ALL_RULES);
    let timed_out = s
        .create("in-flight", &owner)
        .await
        .error(StatusCode::SERVICE_UNAVAILABLE, "INTERNAL_SERVER_ERROR");
    assert!(timed_out.message.contains("timed out"), "{}", timed_out.message);
    // Withdrawn once its create's answer came back unread (the app was created).
    eventually("the operator to withdraw the unanswered app", WAIT, || async {
        s.operator
            .log_text()
            .contains("withdrew an OAuthApp")
            .then_some(())
    })
    .await;
    assert!(s.apps.get_opt("in-flight").await.expect("get").is_none());
}

#[tokio::test]
async fn a_create_whose_secret_name_is_taken_is_refused_and_leaves_no_app_behind() {
    let s = setup("api-create-taken", &[]).await;
    let owner = s.caller("owner", &s.ns, ALL_RULES);
    control_plane().kubectl_ok(&[
        "create",
        "secret",
        "generic",
        "taken-oauth-client",
        "-n",
        &s.ns,
        "--from-literal=client_secret=mine",
    ]);
    let taken = s.secrets.get("taken-oauth-client").await.expect("secret");
    let conflict = s
        .create("taken", &owner)
        .await
        .error(StatusCode::CONFLICT, "CONFLICT");
    assert!(conflict.message.contains("not kept"), "{}", conflict.message);
    // No app is left in SecretConflict, and the Secret is untouched.
    eventually("the conflicting app to be withdrawn", WAIT, || async {
        s.apps.get_opt("taken").await.ok()?.is_none().then_some(())
    })
    .await;
    let after = s
        .secrets
        .get("taken-oauth-client")
        .await
        .expect("the Secret stays");
    assert_eq!(
        after.resource_version(),
        taken.resource_version(),
        "the Secret is untouched"
    );
}
