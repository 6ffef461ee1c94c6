//! Apps registered in a real Keycloak (tests/keycloak/build.sh, started once per run on loopback):
//! Keycloak's own token endpoint says whether a secret works (a client_credentials grant with the
//! app's client id and secret).
//!
//! Keycloak is started on first use, in a process group of its own, with a watchdog that kills
//! that group as soon as this test process is gone (a panic, an interrupt or a SIGKILL alike).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};
use oauthapp_operator::model::crd::{OAuthApp, PreviousSecret};
use oauthapp_operator::model::provider::OAuthProvider;
use serde_json::{Value, json};

use crate::support::*;

const WAIT: Duration = Duration::from_secs(90);
const ADMIN: &str = "admin";
const ADMIN_PASSWORD: &str = "keycloak-it-admin";

pub struct KeycloakServer {
    pub url: String,
    /// The CA (PEM) of its https certificate; None for the plain http fixture.
    pub ca_pem: Option<String>,
}

impl KeycloakServer {
    /// An HTTP client for it (trusting only its CA when it has one).
    fn http(&self) -> reqwest::Client {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = reqwest::Client::builder();
        if let Some(pem) = &self.ca_pem {
            builder = builder
                .tls_certs_only(reqwest::Certificate::from_pem_bundle(pem.as_bytes()).expect("CA pem"));
        }
        builder.build().expect("http client")
    }
}

static KEYCLOAK: OnceLock<KeycloakServer> = OnceLock::new();

/// The Keycloak of this test run, started on first use.
pub fn keycloak() -> &'static KeycloakServer {
    KEYCLOAK.get_or_init(start_keycloak)
}

/// The directory of the Keycloak called `name` in this test process: its log, and its database
/// when it keeps one in files.
fn keycloak_dir(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("oauthapp-it-{}-{name}", std::process::id()))
}

/// A Keycloak started with `args` (after `start-dev`; they name its database, `--db=dev-mem` or
/// files), in a process group of its own that a watchdog kills once this test process is gone:
/// (process group, log file). A Keycloak started again under the same name appends to its log.
fn spawn_keycloak(name: &str, args: &[&str]) -> (u32, PathBuf) {
    let out = Command::new(repo().join("tests/keycloak/build.sh"))
        .stderr(Stdio::inherit())
        .output()
        .expect("run tests/keycloak/build.sh");
    assert!(out.status.success(), "tests/keycloak/build.sh failed");
    let home = PathBuf::from(stdout(&out).trim());
    let dir = keycloak_dir(name);
    std::fs::create_dir_all(&dir).expect("keycloak dir");
    let log = dir.join("keycloak.log");
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .expect("keycloak log");
    let mut cmd = Command::new(home.join("bin/kc.sh"));
    cmd.arg("start-dev")
        .args(args)
        .arg("--features=client-secret-rotation")
        .env("KC_BOOTSTRAP_ADMIN_USERNAME", ADMIN)
        .env("KC_BOOTSTRAP_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .env("JAVA_OPTS_KC_HEAP", "-Xms64m -Xmx512m")
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().expect("log handle"))
        .stderr(log_file);
    // Its own process group: kc.sh runs java as a child, so the group is what is killed.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let child = cmd.spawn().expect("start kc.sh");
    let group = child.id();
    // Kills the group once this test process is gone, however it ends (started in the
    // background by a shell that returns at once).
    let watchdog = Command::new("bash")
        .args([
            "-c",
            r#"setsid bash -c 'while kill -0 "$1" 2>/dev/null; do sleep 1; done; kill -KILL -- -"$2" 2>/dev/null' keycloak-watchdog "$1" "$2" </dev/null >/dev/null 2>&1 &"#,
            "keycloak-watchdog-start",
            &std::process::id().to_string(),
            &group.to_string(),
        ])
        .status()
        .expect("start the keycloak watchdog");
    assert!(watchdog.success(), "the keycloak watchdog did not start");
    std::mem::forget(child);
    (group, log)
}

fn start_keycloak() -> KeycloakServer {
    let port = free_port();
    let started = Instant::now();
    let (_, log) = spawn_keycloak(
        "keycloak",
        &[
            "--db=dev-mem",
            "--http-host",
            "127.0.0.1",
            "--http-port",
            &port.to_string(),
        ],
    );
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(240);
    while http_status(port, "/realms/master") != Some(200) {
        assert!(
            Instant::now() < deadline,
            "Keycloak did not answer on {url} within 240 s; its log: {}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    eprintln!(
        "keycloak: ready on {url} after {:?} (log: {})",
        started.elapsed(),
        log.display()
    );
    KeycloakServer { url, ca_pem: None }
}

/// The status code of a GET on loopback, None when nothing answers.
fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

/// Keycloak's admin API, as the bootstrap admin, for one realm.
struct Realm {
    http: reqwest::Client,
    base: String,
    name: String,
}

impl Realm {
    /// A new realm with a service account client (`oauthapp-operator`) that holds the
    /// realm-management role manage-clients: the credentials an OAuthProvider names.
    async fn create(server: &KeycloakServer, name: &str) -> (Realm, String) {
        let realm = Realm {
            http: server.http(),
            base: server.url.clone(),
            name: name.to_string(),
        };
        realm
            .admin(
                reqwest::Method::POST,
                "/admin/realms",
                Some(json!({"realm": name, "enabled": true})),
            )
            .await;
        let sa_secret = format!("sa-{}", uuid_like());
        realm
            .admin(
                reqwest::Method::POST,
                &realm.path("/clients"),
                Some(json!({
                    "clientId": "oauthapp-operator",
                    "secret": sa_secret,
                    "publicClient": false,
                    "serviceAccountsEnabled": true,
                    "standardFlowEnabled": false,
                })),
            )
            .await;
        realm.manage_clients(reqwest::Method::POST).await;
        (realm, sa_secret)
    }

    /// Gives (POST) or takes (DELETE) the realm-management role manage-clients to the service
    /// account of client `oauthapp-operator`.
    async fn manage_clients(&self, method: reqwest::Method) {
        let sa = self
            .client("oauthapp-operator")
            .await
            .expect("service account client");
        let user = self
            .admin(
                reqwest::Method::GET,
                &self.path(&format!(
                    "/clients/{}/service-account-user",
                    sa["id"].as_str().expect("id")
                )),
                None,
            )
            .await;
        let management = self.client("realm-management").await.expect("realm-management");
        let management_id = management["id"].as_str().expect("id").to_string();
        let role = self
            .admin(
                reqwest::Method::GET,
                &self.path(&format!("/clients/{management_id}/roles/manage-clients")),
                None,
            )
            .await;
        self.admin(
            method,
            &self.path(&format!(
                "/users/{}/role-mappings/clients/{management_id}",
                user["id"].as_str().expect("user id")
            )),
            Some(json!([role])),
        )
        .await;
    }

    fn path(&self, rest: &str) -> String {
        format!("/admin/realms/{}{rest}", self.name)
    }

    async fn admin_token(&self) -> String {
        let response = self
            .http
            .post(format!(
                "{}/realms/master/protocol/openid-connect/token",
                self.base
            ))
            .form(&[
                ("grant_type", "password"),
                ("client_id", "admin-cli"),
                ("username", ADMIN),
                ("password", ADMIN_PASSWORD),
            ])
            .send()
            .await
            .expect("admin token request");
        let body: Value = response.json().await.expect("admin token json");
        body["access_token"]
            .as_str()
            .expect("admin access_token")
            .to_string()
    }

    /// An admin API call that must succeed; its JSON answer (Null when empty).
    async fn admin(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let token = self.admin_token().await;
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(body) = &body {
            request = request.json(body);
        }
        let response = request.send().await.expect("admin request");
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        assert!(status.is_success(), "{method} {path}: HTTP {status}: {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    /// The representation of the client with `client_id`, if any.
    async fn client(&self, client_id: &str) -> Option<Value> {
        let found = self
            .admin(
                reqwest::Method::GET,
                &self.path(&format!("/clients?clientId={client_id}&search=false")),
                None,
            )
            .await;
        found.as_array()?.first().cloned()
    }

    /// Changes the client with `client_id` as someone would in the admin console.
    async fn edit_client(&self, client_id: &str, edit: impl FnOnce(&mut Value)) {
        let mut client = self.client(client_id).await.expect("client");
        edit(&mut client);
        let id = client["id"].as_str().expect("id").to_string();
        self.admin(
            reqwest::Method::PUT,
            &self.path(&format!("/clients/{id}")),
            Some(client),
        )
        .await;
    }

    /// Keycloak's answer to a client_credentials grant: the HTTP status and the `error` field.
    async fn token(&self, client_id: &str, secret: &str) -> (u16, String) {
        let response = self
            .http
            .post(format!(
                "{}/realms/{}/protocol/openid-connect/token",
                self.base, self.name
            ))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", client_id),
                ("client_secret", secret),
            ])
            .send()
            .await
            .expect("token request");
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        let error = body["error"].as_str().unwrap_or_default().to_string();
        if status == 200 {
            assert!(body["access_token"].is_string(), "200 without a token: {body}");
        }
        (status, error)
    }

    /// A client scope `name` in the realm, as an admin makes one (OpenID Connect, its name in the
    /// token's `scope`).
    async fn create_scope(&self, name: &str) {
        self.admin(
            reqwest::Method::POST,
            &self.path("/client-scopes"),
            Some(json!({"name": name, "protocol": "openid-connect",
                "attributes": {"include.in.token.scope": "true"}})),
        )
        .await;
    }

    /// The optional client scopes of the client with `client_id`, by name, sorted.
    async fn optional_scopes(&self, client_id: &str) -> Vec<String> {
        let client = self.client(client_id).await.expect("client");
        let mut names: Vec<String> = client["optionalClientScopes"]
            .as_array()
            .expect("optionalClientScopes")
            .iter()
            .filter_map(|n| n.as_str().map(str::to_string))
            .collect();
        names.sort_unstable();
        names
    }

    /// Assigns (PUT) or takes off (DELETE) the realm's client scope `scope` as an optional scope
    /// of the client with `client_id`, as someone would in the admin console.
    async fn optional_scope(&self, method: reqwest::Method, client_id: &str, scope: &str) {
        let client = self.client(client_id).await.expect("client");
        let scopes = self
            .admin(reqwest::Method::GET, &self.path("/client-scopes"), None)
            .await;
        let scope_id = scopes
            .as_array()
            .expect("scopes")
            .iter()
            .find(|s| s["name"] == scope)
            .and_then(|s| s["id"].as_str())
            .expect("scope id")
            .to_string();
        self.admin(
            method,
            &self.path(&format!(
                "/clients/{}/optional-client-scopes/{scope_id}",
                client["id"].as_str().expect("id")
            )),
            None,
        )
        .await;
    }

    /// A client_credentials grant asking for `scope`: the HTTP status, and the scopes of the
    /// access token's `scope` claim (empty without a token).
    async fn token_scopes(&self, client_id: &str, secret: &str, scope: &str) -> (u16, Vec<String>) {
        let response = self
            .http
            .post(format!(
                "{}/realms/{}/protocol/openid-connect/token",
                self.base, self.name
            ))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", client_id),
                ("client_secret", secret),
                ("scope", scope),
            ])
            .send()
            .await
            .expect("token request");
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        let Some(token) = body["access_token"].as_str() else {
            return (status, Vec::new());
        };
        // The claim itself, from the JWT's payload (not the response's echo of it).
        let payload = token.split('.').nth(1).expect("a JWT");
        let claims: Value = serde_json::from_slice(
            &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload)
                .expect("base64url payload"),
        )
        .expect("JSON claims");
        let scopes = claims["scope"]
            .as_str()
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_string)
            .collect();
        (status, scopes)
    }

    /// A client policy that applies Keycloak's secret-rotation executor to every confidential
    /// client of the realm (the preview feature client-secret-rotation).
    async fn enable_secret_rotation(&self) {
        self.admin(
            reqwest::Method::PUT,
            &self.path("/client-policies/profiles"),
            Some(json!({"profiles": [{
                "name": "rotation",
                "description": "keeps a rotated secret",
                "executors": [{"executor": "secret-rotation", "configuration": {
                    "expiration-period": "3600",
                    "rotated-expiration-period": "600",
                    "remaining-rotation-period": "60"
                }}]
            }]})),
        )
        .await;
        self.admin(
            reqwest::Method::PUT,
            &self.path("/client-policies/policies"),
            Some(json!({"policies": [{
                "name": "rotation",
                "enabled": true,
                "conditions": [{"condition": "client-access-type", "configuration": {"type": ["confidential"]}}],
                "profiles": ["rotation"]
            }]})),
        )
        .await;
    }
}

fn uuid_like() -> String {
    format!("{:032x}", rand::random::<u128>())
}

fn plaintext(secret: &Secret) -> String {
    String::from_utf8(secret.data.as_ref().expect("data")["client_secret"].0.clone()).expect("utf-8")
}

fn client_id_of(secret: &Secret) -> String {
    String::from_utf8(secret.data.as_ref().expect("data")["client_id"].0.clone()).expect("utf-8")
}

/// One test's namespace, realm, credentials Secret and OAuthProvider `kc`, and an operator.
struct Setup {
    ns: String,
    /// The Keycloak's URL, and its CA when it serves https.
    url: String,
    ca_pem: Option<String>,
    realm: Realm,
    sa_secret: String,
    apps: Api<OAuthApp>,
    secrets: Api<Secret>,
    providers: Api<OAuthProvider>,
    client: kube::Client,
    operator: Operator,
}

async fn setup(test: &str, env: &[(&str, &str)]) -> Setup {
    setup_on(keycloak(), test, env).await
}

/// [`setup`] with the realm in `server`; the provider `kc` trusts its CA, if any.
async fn setup_on(server: &KeycloakServer, test: &str, env: &[(&str, &str)]) -> Setup {
    let ns = namespace(test);
    let (realm, sa_secret) = Realm::create(server, &ns).await;
    let client = admin_client().await;
    let s = Setup {
        apps: Api::namespaced(client.clone(), &ns),
        secrets: Api::namespaced(client.clone(), &ns),
        providers: Api::namespaced(client.clone(), &ns),
        client,
        operator: Operator::start(&control_plane().kubeconfig, &ns, &[], env),
        url: server.url.clone(),
        ca_pem: server.ca_pem.clone(),
        ns,
        realm,
        sa_secret,
    };
    s.credentials("kc-credentials", &s.sa_secret.clone());
    s.provider_trusting("kc", "kc-credentials", s.ca_pem.as_deref());
    s
}

impl Setup {
    fn credentials(&self, name: &str, secret: &str) {
        control_plane().kubectl_ok(&[
            "-n",
            &self.ns,
            "create",
            "secret",
            "generic",
            name,
            "--from-literal=client_id=oauthapp-operator",
            &format!("--from-literal=client_secret={secret}"),
        ]);
    }

    fn provider(&self, name: &str, credentials: &str) {
        self.provider_trusting(name, credentials, None);
    }

    /// Provider `name` with the credentials in Secret `credentials`, trusting `ca_bundle`.
    fn provider_trusting(&self, name: &str, credentials: &str, ca_bundle: Option<&str>) {
        let mut keycloak = json!({
            "url": self.url,
            "realm": self.realm.name,
            "credentialsSecretRef": {"name": credentials},
        });
        if let Some(pem) = ca_bundle {
            keycloak["caBundle"] = json!(pem);
        }
        let provider = json!({
            "apiVersion": "oauthapp.io/v1alpha1",
            "kind": "OAuthProvider",
            "metadata": {"name": name},
            "spec": {"keycloak": keycloak},
        });
        control_plane().apply_ok(&self.ns, &provider.to_string());
    }

    fn app(&self, name: &str, provider: &str, extra: &str) {
        control_plane().apply_ok(
            &self.ns,
            &format!(
                "apiVersion: oauthapp.io/v1alpha1\nkind: OAuthApp\nmetadata:\n  name: {name}\nspec:\n  displayName: App {name}\n  redirectUris: [\"https://{name}.example.com/cb\"]\n  providerRef: {{name: {provider}}}\n{extra}"
            ),
        );
    }

    fn rotate(&self, name: &str, value: &str) {
        control_plane().kubectl_ok(&[
            "-n",
            &self.ns,
            "annotate",
            "oauthapp",
            name,
            &format!("oauthapp.io/rotate={value}"),
            "--overwrite",
        ]);
    }

    /// The opening of most tests: app `name` registered in provider `kc` (`extra`: more lines of
    /// its spec), once it has its first secret, at Keycloak too: (the app, its client id, the
    /// secret in its Secret).
    async fn provisioned(&self, name: &str, extra: &str) -> (OAuthApp, String, String) {
        self.app(name, "kc", extra);
        let (app, secret) = self.settled(name, 1, "Synced").await;
        (app, client_id_of(&secret), plaintext(&secret))
    }

    /// App `name` with `spec.rotation.gracePeriod: grace`, in a realm whose secret-rotation
    /// policy keeps a rotated secret, rotated once: both its secrets get tokens at Keycloak.
    /// (client id, first secret, second secret, `status.previousSecret`).
    async fn rotated_with_grace(&self, name: &str, grace: &str) -> (String, String, String, PreviousSecret) {
        self.realm.enable_secret_rotation().await;
        let (_, client_id, first) = self
            .provisioned(name, &format!("  rotation:\n    gracePeriod: {grace}\n"))
            .await;
        self.rotate(name, "one");
        let (app, secret) = self.settled(name, 2, "Synced").await;
        let second = plaintext(&secret);
        let previous = app
            .status
            .and_then(|s| s.previous_secret)
            .expect("status.previousSecret");
        assert_eq!(self.realm.token(&client_id, &second).await, (200, String::new()));
        assert_eq!(
            self.realm.token(&client_id, &first).await,
            (200, String::new()),
            "previous secret within grace"
        );
        (client_id, first, second, *previous)
    }

    /// The app once it is Ready with `count` secrets, its status describing its Secret, and
    /// `ProviderSynced` in `reason`; with its Secret.
    async fn settled(&self, name: &str, count: i64, reason: &str) -> (OAuthApp, Secret) {
        eventually(
            &format!("{name}: rotation {count}, ProviderSynced {reason}"),
            WAIT,
            || self.settled_now(name, count, reason),
        )
        .await
    }

    /// [`Setup::settled`], looked at once.
    async fn settled_now(&self, name: &str, count: i64, reason: &str) -> Option<(OAuthApp, Secret)> {
        let app = self.apps.get_opt(name).await.ok()??;
        let status = app.status.clone()?;
        let secret = self.secrets.get_opt(&app.secret_name()).await.ok()??;
        let ready = app.ready_condition().is_some_and(|c| c.status == "True");
        let in_sync = secret.annotations().get("oauthapp.io/rotation-id") == status.rotation_id.as_ref();
        let synced = provider_synced(&app).is_some_and(|(_, r, _)| r == reason);
        (ready && in_sync && synced && status.rotation_count == count).then_some((app, secret))
    }

    /// The provider's Ready condition once it has `reason`: (status, message).
    async fn provider_ready(&self, name: &str, reason: &str) -> (String, String) {
        eventually(
            &format!("OAuthProvider {name} Ready reason {reason}"),
            WAIT,
            || async {
                let provider = self.providers.get_opt(name).await.ok()??;
                let status = provider.status?;
                let c = status.conditions.into_iter().find(|c| c.type_ == "Ready")?;
                (c.reason == reason && status.observed_generation == provider.metadata.generation)
                    .then_some((c.status, c.message))
            },
        )
        .await
    }
}

/// `ProviderSynced` of the app: (status, reason, message).
fn provider_synced(app: &OAuthApp) -> Option<(String, String, String)> {
    app.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "ProviderSynced")
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

#[tokio::test]
async fn a_new_app_gets_a_token_with_its_secret_and_after_a_rotation_only_the_new_secret_works() {
    let s = setup("kc-rotate", &[]).await;
    let (_, message) = s.provider_ready("kc", "Authenticated").await;
    assert!(!message.contains(&s.sa_secret), "{message}");

    let (app, client_id, first) = s.provisioned("billing", "").await;
    assert_eq!(s.realm.token(&client_id, &first).await, (200, String::new()));
    // The client as the app describes it, marked as the operator's.
    let client = s
        .realm
        .client(&client_id)
        .await
        .expect("the app's client at Keycloak");
    assert_eq!(client["name"], "App billing");
    assert_eq!(client["redirectUris"], json!(["https://billing.example.com/cb"]));
    assert_eq!(client["publicClient"], false);
    assert_eq!(
        client["attributes"]["oauthapp.io/owner"],
        format!("{}/billing", s.ns)
    );
    let (status, _, message) = provider_synced(&app).expect("condition");
    assert_eq!(status, "True");
    let rotation_id = app
        .status
        .as_ref()
        .and_then(|s| s.rotation_id.clone())
        .expect("rotation id");
    assert!(message.contains(&rotation_id), "{message}");

    let rotated_at = Instant::now();
    s.rotate("billing", "one");
    let (_, secret) = s.settled("billing", 2, "Synced").await;
    let second = plaintext(&secret);
    assert_ne!(first, second);
    eprintln!(
        "rotation to settled, Keycloak included: {:?}",
        rotated_at.elapsed()
    );
    // No grace period: Keycloak refuses the old secret at once and takes the new one.
    let (status, error) = s.realm.token(&client_id, &first).await;
    assert_eq!(status, 401, "old secret: {error}");
    // Keycloak 26.7 answers a wrong client secret with `unauthorized_client` (not invalid_client).
    assert_eq!(error, "unauthorized_client");
    assert_eq!(s.realm.token(&client_id, &second).await, (200, String::new()));

    // A new redirect URI in the spec reaches Keycloak, the secret untouched.
    control_plane().kubectl_ok(&[
        "-n",
        &s.ns,
        "patch",
        "oauthapp",
        "billing",
        "--type=merge",
        "-p",
        r#"{"spec":{"redirectUris":["https://billing.example.com/cb","https://billing.example.com/cb2"]}}"#,
    ]);
    eventually("Keycloak has the new redirect URI", WAIT, || async {
        let client = s.realm.client(&client_id).await?;
        let uris = client["redirectUris"].as_array()?.len();
        (uris == 2).then_some(())
    })
    .await;
    assert_eq!(s.realm.token(&client_id, &second).await, (200, String::new()));
    event_seen(&s, "billing", "Normal", "ProviderClientUpdated").await;

    // Nothing the operator logged, and no Event, holds a secret or the service account's.
    let log = s.operator.log_text();
    for plain in [&first, &second, &s.sa_secret] {
        assert!(!log.contains(plain.as_str()), "the operator logged a secret");
    }
    for (_, _, note) in events_about(&s.client, &s.ns, "billing").await {
        assert!(!note.contains(&first) && !note.contains(&second), "{note}");
    }
}

#[tokio::test]
async fn wrong_or_missing_credentials_make_the_provider_not_ready_and_hold_its_apps_but_no_other() {
    let s = setup("kc-unauthorized", &[]).await;
    s.credentials("kc-wrong", "not-the-secret");
    s.provider("wrong", "kc-wrong");
    s.provider("nocreds", "does-not-exist");
    let (status, message) = s.provider_ready("wrong", "Unauthorized").await;
    assert_eq!(status, "False");
    assert!(!message.contains("not-the-secret"), "{message}");
    let (status, message) = s.provider_ready("nocreds", "CredentialsMissing").await;
    assert_eq!(status, "False");
    assert!(message.contains("does-not-exist"), "{message}");

    // An app registered with the wrong credentials gets no secret anywhere (the rotation fails
    // before the Secret write) and says why; an app without a provider is not held back.
    s.app("held", "wrong", "");
    control_plane().apply_ok(
        &s.ns,
        "apiVersion: oauthapp.io/v1alpha1\nkind: OAuthApp\nmetadata:\n  name: plain\nspec:\n  redirectUris: [\"https://plain.example.com/cb\"]\n",
    );
    let plain = eventually("the app without a provider is Ready", WAIT, || async {
        let app = s.apps.get_opt("plain").await.ok()??;
        app.ready_condition()
            .is_some_and(|c| c.status == "True")
            .then_some(app)
    })
    .await;
    assert!(provider_synced(&plain).is_none());
    let (_, reason, message) = eventually("held: ProviderSynced=False", WAIT, || async {
        let app = s.apps.get_opt("held").await.ok()??;
        provider_synced(&app).filter(|(status, _, _)| status == "False")
    })
    .await;
    assert_eq!(reason, "Unauthorized", "{message}");
    assert!(!message.contains("not-the-secret"), "{message}");
    eventually("a ProviderSyncFailed Warning Event", WAIT, || async {
        let events = events_about(&s.client, &s.ns, "held").await;
        events
            .iter()
            .any(|(t, r, note)| {
                t == "Warning" && r == "ProviderSyncFailed" && !note.contains("not-the-secret")
            })
            .then_some(())
    })
    .await;
    assert!(
        s.secrets
            .get_opt("held-oauth-client")
            .await
            .expect("get")
            .is_none(),
        "a rotation that Keycloak refused wrote a Secret"
    );
    assert!(!s.operator.log_text().contains("not-the-secret"));
}

#[tokio::test]
async fn a_client_of_that_id_the_operator_did_not_create_is_a_conflict_and_is_left_alone() {
    let s = setup("kc-conflict", &[]).await;
    s.realm
        .admin(
            reqwest::Method::POST,
            &s.realm.path("/clients"),
            Some(json!({"clientId": "taken", "secret": "theirs", "publicClient": false, "serviceAccountsEnabled": true})),
        )
        .await;
    s.app("claimer", "kc", "  clientId: taken\n");
    let (_, reason, message) = eventually("claimer: ProviderSynced=False", WAIT, || async {
        let app = s.apps.get_opt("claimer").await.ok()??;
        provider_synced(&app).filter(|(status, _, _)| status == "False")
    })
    .await;
    assert_eq!(reason, "ClientConflict", "{message}");
    assert_eq!(s.realm.token("taken", "theirs").await, (200, String::new()));
    assert!(
        s.secrets
            .get_opt("claimer-oauth-client")
            .await
            .expect("get")
            .is_none()
    );
}

#[tokio::test]
async fn a_secret_or_redirect_uri_changed_at_keycloak_is_set_back_without_a_rotation() {
    let s = setup("kc-drift", &[]).await;
    let (_, client_id, current) = s.provisioned("drifty", "").await;
    // Someone sets another secret in Keycloak's admin API.
    s.realm
        .edit_client(&client_id, |c| c["secret"] = json!("changed-by-hand"))
        .await;
    assert_eq!(s.realm.token(&client_id, &current).await.0, 401);
    // A restarted operator checks every app with a provider once (what a kill -9 between the
    // Keycloak write and the Secret write needs): Keycloak gets the Secret's secret back.
    let mut s = s;
    s.operator.kill9();
    let restarted = Instant::now();
    s.operator = Operator::start(&control_plane().kubeconfig, &s.ns, &[], &[]);
    eventually("Keycloak takes the Secret's secret again", WAIT, || async {
        (s.realm.token(&client_id, &current).await.0 == 200).then_some(())
    })
    .await;
    eprintln!("set back after a restart in {:?}", restarted.elapsed());
    assert_eq!(s.realm.token(&client_id, "changed-by-hand").await.0, 401);
    let (app, _) = s.settled("drifty", 1, "Synced").await;
    assert_eq!(app.status.expect("status").rotation_count, 1, "no new rotation");
    let reasons = event_seen(&s, "drifty", "Warning", "ProviderSecretRestored").await;
    assert!(reasons.iter().all(|(_, _, note)| !note.contains(&current)));

    // Someone adds a redirect URI in Keycloak: the next look (here: after a restart) sets the
    // app's back, and the secret is untouched.
    s.realm
        .edit_client(&client_id, |c| {
            c["redirectUris"] = json!(["https://drifty.example.com/cb", "https://evil.example.com/cb"])
        })
        .await;
    s.operator.kill9();
    s.operator = Operator::start(&control_plane().kubeconfig, &s.ns, &[], &[]);
    eventually("Keycloak has the app's redirect URIs again", WAIT, || async {
        let client = s.realm.client(&client_id).await?;
        (client["redirectUris"] == json!(["https://drifty.example.com/cb"])).then_some(())
    })
    .await;
    assert_eq!(s.realm.token(&client_id, &current).await, (200, String::new()));
    event_seen(&s, "drifty", "Warning", "ProviderClientRestored").await;
}

fn names(v: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
    v.sort_unstable();
    v
}

#[tokio::test]
async fn an_apps_scopes_are_optional_client_scopes_that_its_token_may_ask_for() {
    let s = setup("kc-scopes", &[]).await;
    for scope in ["invoices:read", "invoices:write"] {
        s.realm.create_scope(scope).await;
    }
    let (_, client_id, secret) = s
        .provisioned(
            "scoped",
            "  scopes: [\"invoices:read\", \"invoices:write\", openid]\n",
        )
        .await;
    let client = s.realm.client(&client_id).await.expect("client");
    // The app's scopes as optional scopes, next to the realm's defaults (kept).
    assert_eq!(
        s.realm.optional_scopes(&client_id).await,
        names(&[
            "address",
            "invoices:read",
            "invoices:write",
            "microprofile-jwt",
            "offline_access",
            "organization",
            "phone"
        ])
    );
    assert!(
        client["defaultClientScopes"]
            .as_array()
            .expect("defaults")
            .contains(&json!("profile")),
        "{client}"
    );
    assert_eq!(
        client["attributes"]["oauthapp.io/scopes"], "invoices:read invoices:write",
        "the operator's own"
    );
    let (status, scopes) = s.realm.token_scopes(&client_id, &secret, "invoices:read").await;
    assert_eq!(status, 200);
    assert!(scopes.contains(&"invoices:read".to_string()), "{scopes:?}");
    assert!(
        !scopes.contains(&"invoices:write".to_string()),
        "optional: only when asked, {scopes:?}"
    );
    let (status, scopes) = s
        .realm
        .token_scopes(&client_id, &secret, "invoices:read invoices:write")
        .await;
    assert_eq!(status, 200);
    assert!(scopes.contains(&"invoices:write".to_string()), "{scopes:?}");
    // A scope the app does not list is refused.
    s.realm.create_scope("payroll").await;
    assert_eq!(s.realm.token_scopes(&client_id, &secret, "payroll").await.0, 400);
}

#[tokio::test]
async fn a_scope_missing_in_the_realm_is_named_and_the_secret_works_until_it_is_created() {
    let s = setup("kc-scopes-missing", &[]).await;
    s.realm.create_scope("reports").await;
    s.app("partial", "kc", "  scopes: [reports, \"ledger:read\"]\n");
    let (app, secret) = s.settled("partial", 1, "SyncedWithoutScopes").await;
    let (client_id, current) = (client_id_of(&secret), plaintext(&secret));
    let (status, _, message) = provider_synced(&app).expect("condition");
    assert_eq!(status, "True", "the client holds the secret");
    assert!(
        message.contains("no client scope ledger:read of spec.scopes"),
        "{message}"
    );
    assert!(message.contains("create them in the realm"), "{message}");
    assert!(!message.contains(&current), "{message}");
    assert_eq!(s.realm.token(&client_id, &current).await, (200, String::new()));
    let (_, scopes) = s.realm.token_scopes(&client_id, &current, "reports").await;
    assert!(
        scopes.contains(&"reports".to_string()),
        "the realm's scope is assigned: {scopes:?}"
    );
    let events = event_seen(&s, "partial", "Warning", "ProviderScopesMissing").await;
    assert!(
        events
            .iter()
            .any(|(_, r, note)| r == "ProviderScopesMissing" && note.contains("ledger:read")),
        "{events:?}"
    );

    // Created in the realm: the next check (here: after a restart) assigns it, no new secret.
    s.realm.create_scope("ledger:read").await;
    let mut s = s;
    s.operator.kill9();
    let restarted = Instant::now();
    s.operator = Operator::start(&control_plane().kubeconfig, &s.ns, &[], &[]);
    let (_, secret) = s.settled("partial", 1, "Synced").await;
    eprintln!(
        "a scope created in the realm assigned {:?} after a restart",
        restarted.elapsed()
    );
    assert_eq!(plaintext(&secret), current, "no new rotation");
    let (status, scopes) = s.realm.token_scopes(&client_id, &current, "ledger:read").await;
    assert_eq!(status, 200);
    assert!(scopes.contains(&"ledger:read".to_string()), "{scopes:?}");
}

#[tokio::test]
async fn a_scope_dropped_from_the_app_leaves_the_client_and_one_taken_off_by_hand_is_set_back() {
    let s = setup("kc-scopes-drift", &[]).await;
    for scope in ["a", "b", "by-hand"] {
        s.realm.create_scope(scope).await;
    }
    let (_, client_id, current) = s.provisioned("shifty", "  scopes: [a, b]\n").await;
    // Someone adds a scope the app never listed.
    s.realm
        .optional_scope(reqwest::Method::PUT, &client_id, "by-hand")
        .await;
    control_plane().kubectl_ok(&[
        "-n",
        &s.ns,
        "patch",
        "oauthapp",
        "shifty",
        "--type=merge",
        "-p",
        r#"{"spec":{"scopes":["a"]}}"#,
    ]);
    let optional = eventually("b leaves the client", WAIT, || async {
        let optional = s.realm.optional_scopes(&client_id).await;
        (!optional.contains(&"b".to_string())).then_some(optional)
    })
    .await;
    for kept in ["a", "by-hand", "address", "phone"] {
        assert!(optional.contains(&kept.to_string()), "{kept} kept: {optional:?}");
    }
    event_seen(&s, "shifty", "Normal", "ProviderClientUpdated").await;
    let client = s.realm.client(&client_id).await.expect("client");
    assert_eq!(client["attributes"]["oauthapp.io/scopes"], "a");
    assert_eq!(s.realm.token_scopes(&client_id, &current, "b").await.0, 400);

    // Someone takes a off by hand: the next check (after a restart) sets it back.
    s.realm
        .optional_scope(reqwest::Method::DELETE, &client_id, "a")
        .await;
    assert_eq!(s.realm.token_scopes(&client_id, &current, "a").await.0, 400);
    let mut s = s;
    s.operator.kill9();
    let restarted = Instant::now();
    s.operator = Operator::start(&control_plane().kubeconfig, &s.ns, &[], &[]);
    eventually("a is an optional scope again", WAIT, || async {
        s.realm
            .optional_scopes(&client_id)
            .await
            .contains(&"a".to_string())
            .then_some(())
    })
    .await;
    eprintln!(
        "a scope taken off by hand set back {:?} after a restart",
        restarted.elapsed()
    );
    let (status, scopes) = s.realm.token_scopes(&client_id, &current, "a").await;
    assert_eq!(status, 200);
    assert!(scopes.contains(&"a".to_string()), "{scopes:?}");
    assert!(
        s.realm
            .optional_scopes(&client_id)
            .await
            .contains(&"by-hand".to_string())
    );
    let events = event_seen(&s, "shifty", "Warning", "ProviderClientRestored").await;
    assert!(
        events
            .iter()
            .any(|(_, r, note)| r == "ProviderClientRestored" && note.contains("scopes")),
        "{events:?}"
    );
    let (app, _) = s.settled("shifty", 1, "Synced").await;
    assert_eq!(app.status.expect("status").rotation_count, 1, "no new rotation");
}

/// A scope added while a grace period runs is assigned with the client's previous secret left
/// as it is: both secrets keep getting tokens, with the new scope.
#[tokio::test]
async fn a_scope_added_while_a_grace_period_runs_leaves_both_secrets_working() {
    let s = setup("kc-scopes-grace", &[]).await;
    s.realm.create_scope("a").await;
    let (client_id, first, second, _) = s.rotated_with_grace("graceful", "5m").await;
    control_plane().kubectl_ok(&[
        "-n",
        &s.ns,
        "patch",
        "oauthapp",
        "graceful",
        "--type=merge",
        "-p",
        r#"{"spec":{"scopes":["a"]}}"#,
    ]);
    eventually("a is an optional scope", WAIT, || async {
        let client = s.realm.client(&client_id).await?;
        (s.realm
            .optional_scopes(&client_id)
            .await
            .contains(&"a".to_string())
            && client["attributes"]["oauthapp.io/scopes"] == "a")
            .then_some(())
    })
    .await;
    for secret in [&first, &second] {
        let (status, scopes) = s.realm.token_scopes(&client_id, secret, "a").await;
        assert_eq!(status, 200, "both secrets within the grace period");
        assert!(scopes.contains(&"a".to_string()), "{scopes:?}");
    }
    let (app, _) = s.settled("graceful", 2, "Synced").await;
    assert_eq!(app.status.expect("status").rotation_count, 2, "no new rotation");
}

#[tokio::test]
async fn a_kill_between_the_keycloak_write_and_the_secret_write_converges_with_one_rotation() {
    let s = setup("kc-kill", &[]).await;
    let (_, client_id, first) = s.provisioned("crashy", "").await;
    // An operator that stops for good right after Keycloak took the new secret.
    let mut s = s;
    s.operator.kill9();
    s.operator = Operator::start(
        &control_plane().kubeconfig,
        &s.ns,
        &[],
        &[("OAUTHAPP_FAILPOINT", "pause-after-provider-push")],
    );
    s.rotate("crashy", "one");
    eventually("Keycloak holds a secret the Secret does not", WAIT, || async {
        (s.realm.token(&client_id, &first).await.0 == 401).then_some(())
    })
    .await;
    assert_eq!(
        plaintext(&s.secrets.get("crashy-oauth-client").await.expect("secret")),
        first
    );
    s.operator.kill9();
    let restarted = Instant::now();
    s.operator = Operator::start(&control_plane().kubeconfig, &s.ns, &[], &[]);
    // The annotation still asks for its rotation: made once, Keycloak and the Secret agreeing.
    let (_, secret) = s.settled("crashy", 2, "Synced").await;
    eprintln!("converged after the restart in {:?}", restarted.elapsed());
    let second = plaintext(&secret);
    assert_ne!(second, first);
    assert_eq!(s.realm.token(&client_id, &second).await, (200, String::new()));
    assert_eq!(s.realm.token(&client_id, &first).await.0, 401);
}

#[tokio::test]
async fn with_a_grace_period_keycloak_takes_both_secrets_until_the_expiry() {
    let s = setup("kc-grace", &[]).await;
    let (client_id, first, second, previous) = s.rotated_with_grace("graceful", "30s").await;
    let expires = previous.expires_at.0;
    // After the expiry, only the new one.
    eventually("the previous secret stops working at Keycloak", WAIT, || async {
        (s.realm.token(&client_id, &first).await.0 == 401).then_some(())
    })
    .await;
    let now = jiff::Timestamp::now();
    assert!(
        now >= expires,
        "the previous secret stopped working at {now}, before its expiry {expires}"
    );
    assert_eq!(s.realm.token(&client_id, &second).await, (200, String::new()));
}

/// With a grace period both secrets get tokens at Keycloak after a rotation; revoking the
/// previous one (`oauthapp.io/revoke-previous`, valued with its rotation id) ends it at Keycloak
/// too, long before its expiry, with no new rotation: the new secret still gets a token.
#[tokio::test]
async fn revoking_the_previous_secret_ends_it_at_keycloak_before_its_expiry() {
    let s = setup("kc-revoke", &[]).await;
    let (client_id, first, second, previous) = s.rotated_with_grace("revoker", "10m").await;

    control_plane().kubectl_ok(&[
        "-n",
        &s.ns,
        "annotate",
        "oauthapp",
        "revoker",
        &format!("oauthapp.io/revoke-previous={}", previous.rotation_id),
        "--overwrite",
    ]);
    let revoked = Instant::now();
    eventually("the app keeps no previous secret", WAIT, || async {
        let app = s.apps.get_opt("revoker").await.ok()??;
        app.status?.previous_secret.is_none().then_some(())
    })
    .await;
    eventually("Keycloak refuses the previous secret", WAIT, || async {
        (s.realm.token(&client_id, &first).await.0 == 401).then_some(())
    })
    .await;
    eprintln!(
        "previous secret refused at Keycloak {:?} after the revoke annotation",
        revoked.elapsed()
    );
    assert!(
        jiff::Timestamp::now() < previous.expires_at.0,
        "refused only at its expiry"
    );
    assert_eq!(s.realm.token(&client_id, &second).await, (200, String::new()));
    let events = event_seen(&s, "revoker", "Normal", "ProviderPreviousSecretRevoked").await;
    assert!(
        events
            .iter()
            .all(|(_, _, note)| !note.contains(&first) && !note.contains(&second))
    );
    let (app, secret) = s.settled("revoker", 2, "Synced").await;
    assert_eq!(plaintext(&secret), second, "no new rotation");
    assert!(app.status.expect("status").previous_secret.is_none());
}

/// `DELETE /api/v1/oauth-apps/{id}/previous-secret` answers only once Keycloak has dropped the
/// previous secret: right after the 204 it is refused there, the current one still works, and
/// nothing was rotated.
#[tokio::test]
async fn a_rest_revocation_answers_once_keycloak_refuses_the_previous_secret() {
    let s = setup("kc-rest-revoke", &[]).await;
    let (client_id, first, second, _) = s.rotated_with_grace("restrevoke", "10m").await;
    let token = admin_token_for_rest(&s.ns);
    let app = s.apps.get("restrevoke").await.expect("app");
    let app_id = app
        .status
        .as_ref()
        .and_then(|s| s.app_id.clone())
        .expect("app id");
    let (code, body) = eventually("the REST API answers", WAIT, || async {
        http_request(
            s.operator.api_port,
            "DELETE",
            &format!("/api/v1/oauth-apps/{app_id}/previous-secret"),
            &token,
        )
        .await
    })
    .await;
    assert_eq!(code, 204, "{body}");
    // No waiting: the answer came after Keycloak's.
    assert_eq!(s.realm.token(&client_id, &first).await.0, 401);
    assert_eq!(s.realm.token(&client_id, &second).await, (200, String::new()));
    let (app, secret) = s.settled("restrevoke", 2, "Synced").await;
    assert_eq!(plaintext(&secret), second, "no new rotation");
    assert!(app.status.expect("status").previous_secret.is_none());
}

#[tokio::test]
async fn with_a_grace_period_and_no_rotation_policy_in_the_realm_the_condition_says_so() {
    let s = setup("kc-nograce", &[]).await;
    let (_, client_id, first) = s
        .provisioned("strict", "  rotation:\n    gracePeriod: 10m\n")
        .await;
    s.rotate("strict", "one");
    let (app, secret) = s.settled("strict", 2, "SyncedWithoutGrace").await;
    let (_, _, message) = provider_synced(&app).expect("condition");
    assert!(message.contains("secret-rotation"), "{message}");
    assert_eq!(
        s.realm.token(&client_id, &plaintext(&secret)).await,
        (200, String::new())
    );
    assert_eq!(s.realm.token(&client_id, &first).await.0, 401);
}

/// A REST rotation's 200 means Keycloak takes the returned secret; it answers 503 and rotates
/// nothing when Keycloak refuses the service account.
#[tokio::test]
async fn a_rest_rotation_answers_200_with_a_secret_keycloak_takes_and_503_when_keycloak_refuses() {
    let s = setup("kc-rest", &[]).await;
    let (app, client_id, initial) = s.provisioned("viarest", "").await;
    let token = admin_token_for_rest(&s.ns);
    let app_id = app
        .status
        .as_ref()
        .and_then(|s| s.app_id.clone())
        .expect("app id");
    let rotate = || async {
        eventually("the REST API answers", WAIT, || async {
            http_request(
                s.operator.api_port,
                "POST",
                &format!("/api/v1/oauth-apps/{app_id}/rotate"),
                &token,
            )
            .await
        })
        .await
    };
    // A 200: the secret it returns works at Keycloak at that moment, with no waiting.
    let (code, body) = rotate().await;
    assert_eq!(code, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).expect("json");
    let returned = answer["client_secret"]
        .as_str()
        .expect("client_secret")
        .to_string();
    assert_eq!(s.realm.token(&client_id, &returned).await, (200, String::new()));
    assert_eq!(s.realm.token(&client_id, &initial).await.0, 401);
    let (_, secret) = s.settled("viarest", 2, "Synced").await;
    let first = plaintext(&secret);
    assert_eq!(first, returned);

    // The service account loses its secret at Keycloak (the credentials Secret stays).
    s.realm
        .edit_client("oauthapp-operator", |c| c["secret"] = json!("rotated-elsewhere"))
        .await;
    let (code, body) = rotate().await;
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("nothing was rotated") && body.contains("refused"),
        "{body}"
    );
    let after = s.secrets.get("viarest-oauth-client").await.expect("secret");
    assert_eq!(plaintext(&after), first, "the Secret was not rotated");
    let app = s.apps.get("viarest").await.expect("app");
    assert_eq!(app.status.as_ref().expect("status").rotation_count, 2);
    let (status, reason, _) = provider_synced(&app).expect("condition");
    assert_eq!((status.as_str(), reason.as_str()), ("False", "Unauthorized"));
}

/// The service account loses the realm-management role manage-clients: Keycloak still gives it
/// a token but its admin API answers 403. The provider says `Ready=False, reason Forbidden`, a
/// rotation is held (`ProviderSynced=False, Forbidden`, the message naming the role; the Secret
/// keeps the old secret); with the role given back the rotation lands, once.
#[tokio::test]
async fn a_service_account_without_manage_clients_holds_rotations_until_the_role_is_back() {
    let s = setup("kc-forbidden", &[]).await;
    let (_, client_id, first) = s.provisioned("guarded", "").await;
    s.realm.manage_clients(reqwest::Method::DELETE).await;
    s.rotate("guarded", "one");
    let (_, reason, message) = eventually("guarded: ProviderSynced=False", WAIT, || async {
        let app = s.apps.get_opt("guarded").await.ok()??;
        provider_synced(&app).filter(|(status, _, _)| status == "False")
    })
    .await;
    assert_eq!(reason, "Forbidden", "{message}");
    assert!(message.contains("manage-clients"), "{message}");
    let (status, message) = s.provider_ready("kc", "Forbidden").await;
    assert_eq!(status, "False");
    assert!(!message.contains(&s.sa_secret), "{message}");
    let held = s.secrets.get("guarded-oauth-client").await.expect("secret");
    assert_eq!(
        plaintext(&held),
        first,
        "the Secret holds a secret Keycloak never took"
    );
    assert_eq!(s.realm.token(&client_id, &first).await, (200, String::new()));

    s.realm.manage_clients(reqwest::Method::POST).await;
    let given_back = Instant::now();
    // The rotation's backoff may have grown meanwhile (up to 5 min).
    let (app, secret) = eventually(
        "guarded: rotation 2, ProviderSynced Synced",
        Duration::from_secs(360),
        || s.settled_now("guarded", 2, "Synced"),
    )
    .await;
    eprintln!(
        "rotation landed {:?} after the role was given back",
        given_back.elapsed()
    );
    assert_eq!(app.status.expect("status").rotation_count, 2);
    let second = plaintext(&secret);
    assert_eq!(s.realm.token(&client_id, &second).await, (200, String::new()));
    assert_eq!(s.realm.token(&client_id, &first).await.0, 401);
    s.provider_ready("kc", "Authenticated").await;
}

/// A token for a ServiceAccount that may rotate apps in `ns`.
fn admin_token_for_rest(ns: &str) -> String {
    control_plane().kubectl_ok(&["-n", ns, "create", "serviceaccount", "rotator"]);
    control_plane().kubectl_ok(&[
        "-n",
        ns,
        "create",
        "rolebinding",
        "rotator-admin",
        "--clusterrole=cluster-admin",
        &format!("--serviceaccount={ns}:rotator"),
    ]);
    service_account_token(ns, "rotator")
}

/// A Keycloak of one test's own, on a port of its own with its database in files (H2,
/// `--db=dev-file` under [`keycloak_dir`]), so that it can be killed and started again as the
/// same server: realms, clients and secrets kept. Its process group is killed when this value is
/// dropped, however the test ends (and by the watchdog, if the test process goes first).
struct RestartableKeycloak {
    name: String,
    port: u16,
    server: KeycloakServer,
    /// The running process group; None while it is stopped.
    group: Option<u32>,
}

impl RestartableKeycloak {
    async fn start(name: &str) -> RestartableKeycloak {
        let port = free_port();
        let mut kc = RestartableKeycloak {
            name: name.to_string(),
            port,
            server: KeycloakServer {
                url: format!("http://127.0.0.1:{port}"),
                ca_pem: None,
            },
            group: None,
        };
        let took = kc.run().await;
        eprintln!("keycloak ({name}): ready on {} after {took:?}", kc.server.url);
        kc
    }

    /// Starts the process and waits until it answers: how long that took.
    async fn run(&mut self) -> Duration {
        assert!(self.group.is_none(), "Keycloak {} is running already", self.name);
        let started = Instant::now();
        let db = keycloak_dir(&self.name).join("h2/keycloakdb");
        let (group, log) = spawn_keycloak(
            &self.name,
            &[
                "--db=dev-file",
                // WRITE_DELAY=0: every commit on disk at once, so that a kill -9 right after a
                // write keeps it (with H2's default delay a realm made just before was lost).
                &format!(
                    "--db-url=jdbc:h2:file:{};NON_KEYWORDS=VALUE;WRITE_DELAY=0",
                    db.display()
                ),
                "--http-host",
                "127.0.0.1",
                "--http-port",
                &self.port.to_string(),
            ],
        );
        self.group = Some(group);
        let http = self.server.http();
        let master = format!("{}/realms/master", self.server.url);
        eventually(
            &format!("Keycloak {} to answer (log: {})", self.name, log.display()),
            Duration::from_secs(240),
            || async {
                let response = http.get(&master).send().await.ok()?;
                (response.status() == 200).then_some(())
            },
        )
        .await;
        started.elapsed()
    }

    /// Kills it (SIGKILL to its process group) and waits until its port refuses connections.
    async fn kill(&mut self) {
        if let Some(group) = self.group.take() {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{group}")])
                .status();
        }
        let port = self.port;
        eventually("the killed Keycloak's port to refuse", WAIT, || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_err()
                .then_some(())
        })
        .await;
    }
}

impl Drop for RestartableKeycloak {
    fn drop(&mut self) {
        if let Some(group) = self.group.take() {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{group}")])
                .status();
        }
        // Its database (some 70 MB); the log stays, beside the other Keycloaks'.
        let _ = std::fs::remove_dir_all(keycloak_dir(&self.name).join("h2"));
    }
}

/// Keycloak killed during a rotation, then started again (same port, same database): meanwhile
/// the rotation is held, `ProviderSynced=False` with reason `Unreachable`, the Secret still holds
/// the old secret (Keycloak takes a new secret before the Secret does) and an app without a
/// provider rotates; once Keycloak is back the rotation lands, once: the new secret gets a
/// token at Keycloak's token endpoint and the old one is refused.
#[tokio::test]
async fn keycloak_killed_during_a_rotation_holds_it_and_it_lands_once_when_keycloak_is_back() {
    let mut kc = RestartableKeycloak::start("keycloak-restart").await;
    let s = setup_on(&kc.server, "kc-down", &[]).await;
    let (app, client_id, first) = s.provisioned("patient", "").await;
    let first_rotation = app.status.and_then(|s| s.rotation_id).expect("rotation id");
    control_plane().apply_ok(
        &s.ns,
        "apiVersion: oauthapp.io/v1alpha1\nkind: OAuthApp\nmetadata:\n  name: plain\nspec:\n  redirectUris: [\"https://plain.example.com/cb\"]\n",
    );

    // Ready before the kill, so that its Unreachable below is a look made after it.
    s.provider_ready("kc", "Authenticated").await;
    kc.kill().await;
    let killed = Instant::now();
    s.rotate("patient", "one");
    s.rotate("plain", "one");
    let (_, reason, message) = eventually("patient: ProviderSynced=False", WAIT, || async {
        let app = s.apps.get_opt("patient").await.ok()??;
        provider_synced(&app).filter(|(status, _, _)| status == "False")
    })
    .await;
    assert_eq!(reason, "Unreachable", "{message}");
    assert!(!message.contains(&first), "{message}");
    // The provider looks every minute while Ready: its look after the kill.
    s.provider_ready("kc", "Unreachable").await;
    eprintln!("provider Unreachable {:?} after the kill", killed.elapsed());
    // The app without a provider rotated; the held one did not, anywhere.
    eventually("plain rotated", WAIT, || async {
        let plain = s.apps.get_opt("plain").await.ok()??;
        (plain.status?.rotation_count == 2).then_some(())
    })
    .await;
    let app = s.apps.get("patient").await.expect("app");
    let status = app.status.expect("status");
    assert_eq!(status.rotation_count, 1);
    assert_eq!(status.rotation_id.as_deref(), Some(first_rotation.as_str()));
    let held = s.secrets.get("patient-oauth-client").await.expect("secret");
    assert_eq!(
        plaintext(&held),
        first,
        "the Secret holds a secret Keycloak never took"
    );
    assert_eq!(
        held.annotations().get("oauthapp.io/rotation-id"),
        Some(&first_rotation)
    );

    let took = kc.run().await;
    let back = Instant::now();
    eprintln!(
        "keycloak ({}): started again in {took:?}, {:?} after it was killed",
        kc.name,
        killed.elapsed()
    );
    // The realm survived the restart: the old secret still works there.
    assert_eq!(s.realm.token(&client_id, &first).await, (200, String::new()));
    // The provider's backoff may have grown while Keycloak was down: up to CHECK_INTERVAL.
    let (app, secret) = eventually(
        "patient: rotation 2, ProviderSynced Synced",
        Duration::from_secs(360),
        || s.settled_now("patient", 2, "Synced"),
    )
    .await;
    eprintln!(
        "rotation landed {:?} after Keycloak answered again",
        back.elapsed()
    );
    let second = plaintext(&secret);
    assert_ne!(second, first);
    let status = app.status.expect("status");
    assert_eq!(status.rotation_count, 2, "exactly one rotation");
    assert_eq!(status.observed_rotate_token.as_deref(), Some("one"));
    assert_ne!(status.rotation_id.as_deref(), Some(first_rotation.as_str()));
    assert_eq!(
        secret.annotations().get("oauthapp.io/rotation-id"),
        status.rotation_id.as_ref()
    );
    assert_eq!(s.realm.token(&client_id, &second).await, (200, String::new()));
    let (code, error) = s.realm.token(&client_id, &first).await;
    assert_eq!(code, 401, "old secret: {error}");
    // Keycloak 26.7 answers a wrong client secret with `unauthorized_client`.
    assert_eq!(error, "unauthorized_client");
    s.provider_ready("kc", "Authenticated").await;
    let rotated = event_seen(&s, "patient", "Normal", "SecretRotated")
        .await
        .into_iter()
        .filter(|(_, reason, _)| reason == "SecretRotated")
        .count();
    assert_eq!(rotated, 1, "one SecretRotated Event");
    let log = s.operator.log_text();
    assert!(
        !log.contains(&first) && !log.contains(&second),
        "the operator logged a secret"
    );
    drop(s);
    drop(kc);
}

/// A fault-injecting HTTP proxy on loopback in front of a Keycloak: it forwards every request
/// there, or, while refusing, answers each one `503 Service Unavailable` itself.
struct FaultProxy {
    url: String,
    state: std::sync::Arc<ProxyState>,
    task: tokio::task::JoinHandle<()>,
}

struct ProxyState {
    upstream: String,
    http: reqwest::Client,
    refusing: std::sync::atomic::AtomicBool,
    /// While set, the requests whose path holds it are answered 503 (the others forwarded).
    refusing_paths: std::sync::Mutex<Option<String>>,
    /// Requests answered 503.
    refused: std::sync::atomic::AtomicU64,
    /// While set, the requests whose path holds `.0` are forwarded only after `.1` (a slow
    /// Keycloak that still does what it is asked, late).
    slow_paths: std::sync::Mutex<Option<(String, Duration)>>,
    /// Slowed requests forwarded, and answered by Keycloak.
    slowed: std::sync::atomic::AtomicU64,
    /// Slowed requests not yet forwarded.
    waiting: std::sync::atomic::AtomicU64,
    /// While set, a POST whose path ends with it is forwarded twice and the caller gets the
    /// second answer (a create sent again by something on the way, the first answer lost).
    doubled_posts: std::sync::Mutex<Option<String>>,
    /// Second answers that were `409 Conflict` from Keycloak.
    conflicts: std::sync::atomic::AtomicU64,
}

impl FaultProxy {
    /// A proxy to `upstream` (an http URL on loopback), forwarding.
    async fn start(upstream: &str) -> FaultProxy {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let state = std::sync::Arc::new(ProxyState {
            upstream: upstream.trim_end_matches('/').to_string(),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(10))
                .build()
                .expect("proxy client"),
            refusing: std::sync::atomic::AtomicBool::new(false),
            refusing_paths: std::sync::Mutex::new(None),
            refused: std::sync::atomic::AtomicU64::new(0),
            slow_paths: std::sync::Mutex::new(None),
            slowed: std::sync::atomic::AtomicU64::new(0),
            waiting: std::sync::atomic::AtomicU64::new(0),
            doubled_posts: std::sync::Mutex::new(None),
            conflicts: std::sync::atomic::AtomicU64::new(0),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let router = axum::Router::new()
            .fallback(proxy_forward)
            .with_state(state.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        FaultProxy { url, state, task }
    }

    fn refuse(&self, on: bool) {
        self.state.refusing.store(on, std::sync::atomic::Ordering::SeqCst);
    }

    /// Answers 503 to the requests whose path holds `part` (None: to none of them).
    fn refuse_paths(&self, part: Option<&str>) {
        *self.state.refusing_paths.lock().expect("lock") = part.map(str::to_string);
    }

    fn refused(&self) -> u64 {
        self.state.refused.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Forwards the requests whose path holds `part` only after `delay` (None: none delayed).
    fn slow_paths(&self, slow: Option<(&str, Duration)>) {
        *self.state.slow_paths.lock().expect("lock") = slow.map(|(p, d)| (p.to_string(), d));
    }

    fn slowed(&self) -> u64 {
        self.state.slowed.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn waiting(&self) -> u64 {
        self.state.waiting.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Forwards each POST whose path ends with `suffix` twice (None: none).
    fn double_posts(&self, suffix: Option<&str>) {
        *self.state.doubled_posts.lock().expect("lock") = suffix.map(str::to_string);
    }

    fn conflicts(&self) -> u64 {
        self.state.conflicts.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn proxy_forward(
    axum::extract::State(proxy): axum::extract::State<std::sync::Arc<ProxyState>>,
    request: axum::extract::Request,
) -> axum::response::Response {
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    let path_refused = proxy
        .refusing_paths
        .lock()
        .expect("lock")
        .as_deref()
        .is_some_and(|part| request.uri().path().contains(part));
    if path_refused || proxy.refusing.load(std::sync::atomic::Ordering::SeqCst) {
        proxy.refused.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        return (StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable").into_response();
    }
    let delay = proxy
        .slow_paths
        .lock()
        .expect("lock")
        .as_ref()
        .filter(|(part, _)| request.uri().path().contains(part.as_str()))
        .map(|(_, delay)| *delay);
    let (parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, 16 << 20).await else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let doubled = parts.method == axum::http::Method::POST
        && proxy
            .doubled_posts
            .lock()
            .expect("lock")
            .as_deref()
            .is_some_and(|suffix| parts.uri.path().ends_with(suffix));
    if doubled {
        let _first = forward(&proxy, parts.clone(), body.clone()).await;
        let second = forward(&proxy, parts, body).await;
        if second.status() == StatusCode::CONFLICT {
            proxy.conflicts.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        return second;
    }
    if let Some(delay) = delay {
        // Forwarded late, whether or not the caller still waits: Keycloak does it anyway.
        let (proxy, parts, body) = (proxy.clone(), parts.clone(), body.clone());
        proxy.waiting.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let forwarded = tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let answer = forward(&proxy, parts, body).await;
            proxy.slowed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            proxy.waiting.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            answer
        });
        return forwarded
            .await
            .unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response());
    }
    forward(&proxy, parts, body).await
}

/// `parts` and `body` sent on to the proxy's upstream; its answer.
async fn forward(
    proxy: &ProxyState,
    parts: axum::http::request::Parts,
    body: axum::body::Bytes,
) -> axum::response::Response {
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut upstream = proxy
        .http
        .request(parts.method, format!("{}{path}", proxy.upstream))
        .body(body);
    for (name, value) in &parts.headers {
        if name != header::HOST && name != header::CONTENT_LENGTH {
            upstream = upstream.header(name, value);
        }
    }
    let Ok(answer) = upstream.send().await else {
        return StatusCode::BAD_GATEWAY.into_response();
    };
    let status = answer.status();
    let headers = answer.headers().clone();
    let body = answer.bytes().await.unwrap_or_default();
    let mut response = axum::response::Response::new(axum::body::Body::from(body));
    *response.status_mut() = status;
    for (name, value) in &headers {
        if name != header::TRANSFER_ENCODING && name != header::CONTENT_LENGTH && name != header::CONNECTION {
            response.headers_mut().append(name, value.clone());
        }
    }
    response
}

/// The OAuthProvider `proxied`: the realm of `s`, reached through `proxy`.
fn proxied_provider(s: &Setup, proxy: &FaultProxy) {
    let provider = json!({
        "apiVersion": "oauthapp.io/v1alpha1",
        "kind": "OAuthProvider",
        "metadata": {"name": "proxied"},
        "spec": {"keycloak": {
            "url": proxy.url,
            "realm": s.realm.name,
            "credentialsSecretRef": {"name": "kc-credentials"},
        }},
    });
    control_plane().apply_ok(&s.ns, &provider.to_string());
}

/// Keycloak behind a proxy that is slow with client writes. Within the operator's 5 s per
/// request, a rotation lands once, late. Slower than that, each push gives up while Keycloak
/// still does it, late: the rotation is held (the Secret keeps its secret), and once Keycloak is
/// fast again it lands once, and a stale write that lands after it is set back by the checks that
/// follow a write given up on: Keycloak and the Secret agree, and no secret but the Secret's works.
#[tokio::test]
async fn a_slow_keycloak_delays_a_rotation_and_late_writes_never_outlast_the_convergence() {
    let s = setup("kc-slow", &[]).await;
    let proxy = FaultProxy::start(&s.url).await;
    proxied_provider(&s, &proxy);
    s.app("sluggish", "proxied", "");
    let (_, secret) = s.settled("sluggish", 1, "Synced").await;
    let (client_id, first) = (client_id_of(&secret), plaintext(&secret));
    s.provider_ready("proxied", "Authenticated").await;

    // 2 s per client write: inside the operator's timeout.
    proxy.slow_paths(Some(("/clients/", Duration::from_secs(2))));
    let asked = Instant::now();
    s.rotate("sluggish", "one");
    let (_, secret) = s.settled("sluggish", 2, "Synced").await;
    eprintln!(
        "2 s per client write: the rotation landed {:?} after the annotation",
        asked.elapsed()
    );
    assert!(proxy.slowed() >= 1, "no client write was slowed");
    let second = plaintext(&secret);
    assert_eq!(s.realm.token(&client_id, &second).await, (200, String::new()));
    assert_eq!(s.realm.token(&client_id, &first).await.0, 401);

    // 25 s per client write: the operator gives up after 5 s, Keycloak does it after 25, long
    // after the retry (5-10 s later) has landed.
    proxy.slow_paths(Some(("/clients/", Duration::from_secs(25))));
    let slowed = proxy.slowed();
    s.rotate("sluggish", "two");
    let (_, reason, message) = eventually("sluggish: ProviderSynced=False", WAIT, || async {
        let app = s.apps.get_opt("sluggish").await.ok()??;
        provider_synced(&app).filter(|(status, _, _)| status == "False")
    })
    .await;
    assert_eq!(reason, "Unreachable", "{message}");
    assert!(!message.contains(&second), "{message}");
    // The operator gave up on a write that is still on its way: Keycloak takes it late.
    assert!(proxy.waiting() >= 1, "no client write on its way");
    let held = s.secrets.get("sluggish-oauth-client").await.expect("secret");
    assert_eq!(plaintext(&held), second, "the Secret keeps its secret");
    assert_eq!(
        s.apps
            .get("sluggish")
            .await
            .expect("app")
            .status
            .expect("status")
            .rotation_count,
        2
    );

    // Fast again while that write is still on its way.
    proxy.slow_paths(None);
    let fast = Instant::now();
    let (_, secret) = eventually(
        "sluggish: rotation 3, ProviderSynced Synced",
        Duration::from_secs(360),
        || s.settled_now("sluggish", 3, "Synced"),
    )
    .await;
    let third = plaintext(&secret);
    eprintln!(
        "25 s per client write: the rotation landed {:?} after Keycloak was fast again",
        fast.elapsed()
    );
    eventually("every late write has landed", WAIT, || async {
        (proxy.waiting() == 0).then_some(())
    })
    .await;
    eprintln!("late writes landed at Keycloak: {}", proxy.slowed() - slowed);
    // Whatever landed late, Keycloak comes to take the Secret's secret and no other.
    eventually("Keycloak takes the Secret's secret alone", WAIT, || async {
        let current = s.realm.token(&client_id, &third).await.0 == 200;
        let old = s.realm.token(&client_id, &second).await.0 == 401;
        (current && old).then_some(())
    })
    .await;
    eprintln!(
        "Keycloak and the Secret agree {:?} after Keycloak was fast again",
        fast.elapsed()
    );
    // The stale write did land after the rotation, and was set back (not left for the next
    // five-minute check).
    let restored = event_seen(&s, "sluggish", "Warning", "ProviderSecretRestored").await;
    assert!(
        restored
            .iter()
            .all(|(_, _, note)| !note.contains(&second) && !note.contains(&third)),
        "{restored:?}"
    );
    let app = s.apps.get("sluggish").await.expect("app");
    let status = app.status.expect("status");
    assert_eq!(status.rotation_count, 3, "one rotation per annotation");
    let secret = s.secrets.get("sluggish-oauth-client").await.expect("secret");
    assert_eq!(plaintext(&secret), third, "no new rotation");
    let rotated = event_seen(&s, "sluggish", "Normal", "SecretRotated")
        .await
        .into_iter()
        .filter(|(_, reason, _)| reason == "SecretRotated")
        .count();
    assert_eq!(rotated, 2, "one SecretRotated Event per annotation");
}

/// Keycloak behind a proxy that answers `503` to everything during a rotation: the rotation is
/// held (nothing written, the old secret working), and lands once when the 503s stop.
#[tokio::test]
async fn a_keycloak_answering_503_holds_a_rotation_that_lands_once_when_the_503s_stop() {
    let s = setup("kc-503", &[]).await;
    let proxy = FaultProxy::start(&s.url).await;
    proxied_provider(&s, &proxy);
    s.app("bumpy", "proxied", "");
    let (app, secret) = s.settled("bumpy", 1, "Synced").await;
    let (client_id, first) = (client_id_of(&secret), plaintext(&secret));
    let first_rotation = app.status.and_then(|s| s.rotation_id).expect("rotation id");
    s.provider_ready("proxied", "Authenticated").await;

    proxy.refuse(true);
    s.rotate("bumpy", "one");
    let (_, reason, message) = eventually("bumpy: ProviderSynced=False", WAIT, || async {
        let app = s.apps.get_opt("bumpy").await.ok()??;
        provider_synced(&app).filter(|(status, _, _)| status == "False")
    })
    .await;
    assert_eq!(reason, "Unreachable", "{message}");
    assert!(message.contains("HTTP 503"), "{message}");
    assert!(!message.contains(&first), "{message}");
    // One more call refused after that (a retry, or the provider's look): still held.
    let refused = proxy.refused();
    eventually("another request refused with 503", WAIT, || async {
        (proxy.refused() > refused).then_some(())
    })
    .await;
    let app = s.apps.get("bumpy").await.expect("app");
    let status = app.status.expect("status");
    assert_eq!(status.rotation_count, 1, "no rotation while Keycloak answers 503");
    assert_eq!(status.rotation_id.as_deref(), Some(first_rotation.as_str()));
    let held = s.secrets.get("bumpy-oauth-client").await.expect("secret");
    assert_eq!(plaintext(&held), first, "the Secret keeps the old secret");
    assert_eq!(
        held.annotations().get("oauthapp.io/rotation-id"),
        Some(&first_rotation)
    );
    assert_eq!(s.realm.token(&client_id, &first).await, (200, String::new()));

    proxy.refuse(false);
    let off = Instant::now();
    let refused = proxy.refused();
    let (app, secret) = eventually(
        "bumpy: rotation 2, ProviderSynced Synced",
        Duration::from_secs(360),
        || s.settled_now("bumpy", 2, "Synced"),
    )
    .await;
    eprintln!(
        "503s: {refused} requests refused; the rotation landed {:?} after the 503s stopped",
        off.elapsed()
    );
    let second = plaintext(&secret);
    assert_ne!(second, first);
    let status = app.status.expect("status");
    assert_eq!(status.rotation_count, 2, "exactly one rotation");
    assert_eq!(status.observed_rotate_token.as_deref(), Some("one"));
    assert_eq!(s.realm.token(&client_id, &second).await, (200, String::new()));
    let (code, error) = s.realm.token(&client_id, &first).await;
    assert_eq!(code, 401, "old secret: {error}");
    let rotated = event_seen(&s, "bumpy", "Normal", "SecretRotated")
        .await
        .into_iter()
        .filter(|(_, reason, _)| reason == "SecretRotated")
        .count();
    assert_eq!(rotated, 1, "one SecretRotated Event");
    let log = s.operator.log_text();
    assert!(
        !log.contains(&first) && !log.contains(&second),
        "the operator logged a secret"
    );
}

/// Keycloak's own `409 Conflict` on a client create (the create was sent twice on the way and the
/// first one landed, its answer lost): the operator looks the client up again, finds its own and
/// puts the secret there. No failure is reported, no second secret is made, and the token works.
#[tokio::test]
async fn a_409_from_keycloak_on_a_create_finds_the_operators_client_and_costs_no_rotation() {
    let s = setup("kc-409", &[]).await;
    let proxy = FaultProxy::start(&s.url).await;
    proxied_provider(&s, &proxy);
    s.provider_ready("proxied", "Authenticated").await;
    proxy.double_posts(Some("/clients"));
    let start = Instant::now();
    s.app("twice", "proxied", "");
    let (app, secret) = s.settled("twice", 1, "Synced").await;
    eprintln!(
        "409 on create: settled {:?} after the app was created",
        start.elapsed()
    );
    assert_eq!(proxy.conflicts(), 1, "Keycloak answered the second create 409");
    let (client_id, first) = (client_id_of(&secret), plaintext(&secret));
    assert_eq!(s.realm.token(&client_id, &first).await, (200, String::new()));
    let status = app.status.expect("status");
    assert_eq!(status.rotation_count, 1, "no second secret");
    let events = events_about(&s.client, &s.ns, "twice").await;
    assert!(
        !events.iter().any(|(_, reason, _)| reason == "ProviderSyncFailed"),
        "a 409 on create reported as a failure: {events:?}"
    );
    // A rotation afterwards is an update: the doubled POSTs do not come into it.
    s.rotate("twice", "one");
    let (_, secret) = s.settled("twice", 2, "Synced").await;
    let second = plaintext(&secret);
    assert_eq!(s.realm.token(&client_id, &second).await, (200, String::new()));
    assert_eq!(s.realm.token(&client_id, &first).await.0, 401);
    let log = s.operator.log_text();
    assert!(
        !log.contains(&first) && !log.contains(&second),
        "the operator logged a secret"
    );
}

/// A 503 on the scope requests after Keycloak took a rotation's secret fails no rotation (a retry
/// would make another secret): the rotation lands, `ProviderSynced` says the scopes were not
/// set, and the app's checks set them once Keycloak answers.
#[tokio::test]
async fn a_503_on_the_scopes_after_the_secret_lands_costs_no_second_rotation() {
    let s = setup("kc-503-scopes", &[]).await;
    s.realm.create_scope("a").await;
    let proxy = FaultProxy::start(&s.url).await;
    proxied_provider(&s, &proxy);
    s.app("scoped", "proxied", "  scopes: [a]\n");
    let (_, secret) = s.settled("scoped", 1, "Synced").await;
    let (client_id, first) = (client_id_of(&secret), plaintext(&secret));

    // Scope assignments answered 503; someone takes a off by hand; then a rotation.
    proxy.refuse_paths(Some("/optional-client-scopes/"));
    s.realm
        .optional_scope(reqwest::Method::DELETE, &client_id, "a")
        .await;
    s.rotate("scoped", "one");
    let (app, secret) = eventually("scoped: rotated once, scopes unset", WAIT, || async {
        let app = s.apps.get_opt("scoped").await.ok()??;
        let secret = s.secrets.get_opt("scoped-oauth-client").await.ok()??;
        let (status, _, _) = provider_synced(&app)?;
        (app.status.as_ref()?.rotation_count == 2
            && secret.annotations().get("oauthapp.io/rotation-id")
                == app.status.as_ref()?.rotation_id.as_ref()
            && status == "False")
            .then_some((app, secret))
    })
    .await;
    let second = plaintext(&secret);
    assert_ne!(second, first);
    assert_eq!(s.realm.token(&client_id, &second).await, (200, String::new()));
    let (_, reason, message) = provider_synced(&app).expect("condition");
    assert_eq!(reason, "Unreachable", "{message}");
    assert!(message.contains("HTTP 503"), "{message}");
    // The app's check that follows is refused too (no rotation for it either).
    let refused = proxy.refused();
    assert!(refused > 0);
    eventually("a check's scope request refused", WAIT, || async {
        (proxy.refused() > refused).then_some(())
    })
    .await;
    assert!(
        !s.realm
            .optional_scopes(&client_id)
            .await
            .contains(&"a".to_string())
    );
    let app = s.apps.get("scoped").await.expect("app");
    assert_eq!(app.status.expect("status").rotation_count, 2);

    proxy.refuse_paths(None);
    let off = Instant::now();
    let (app, _) = eventually(
        "scoped: rotation 2, ProviderSynced Synced",
        Duration::from_secs(360),
        || s.settled_now("scoped", 2, "Synced"),
    )
    .await;
    eprintln!(
        "scopes set {:?} after the 503s stopped ({} refused)",
        off.elapsed(),
        proxy.refused()
    );
    assert!(
        s.realm
            .optional_scopes(&client_id)
            .await
            .contains(&"a".to_string())
    );
    assert_eq!(
        app.status.expect("status").rotation_count,
        2,
        "no second rotation"
    );
    let (status, scopes) = s.realm.token_scopes(&client_id, &second, "a").await;
    assert_eq!(status, 200);
    assert!(scopes.contains(&"a".to_string()), "{scopes:?}");
    assert_eq!(s.realm.token(&client_id, &first).await.0, 401);
    let rotated = event_seen(&s, "scoped", "Normal", "SecretRotated")
        .await
        .into_iter()
        .filter(|(_, reason, _)| reason == "SecretRotated")
        .count();
    assert_eq!(rotated, 1, "one SecretRotated Event");
}

/// Deleting an app deletes its client at Keycloak before the app is gone: the app carries the
/// finalizer `oauthapp.io/provider-client`, so when `kubectl delete --wait=true` returns the client
/// is already deleted. An app deleted with `deletionPolicy: Retain` keeps its Secret and its
/// client, for the same app applied again.
#[tokio::test]
async fn a_deleted_app_loses_its_client_unless_its_secret_is_retained() {
    let s = setup("kc-delete", &[]).await;
    s.app("gone", "kc", "");
    s.app("kept", "kc", "  secret:\n    deletionPolicy: Retain\n");
    let (gone, gone_secret) = s.settled("gone", 1, "Synced").await;
    let (_, kept_secret) = s.settled("kept", 1, "Synced").await;
    assert!(
        gone.finalizers()
            .iter()
            .any(|f| f == "oauthapp.io/provider-client"),
        "{:?}",
        gone.finalizers()
    );
    let (gone_id, kept_id) = (client_id_of(&gone_secret), client_id_of(&kept_secret));
    control_plane().kubectl_ok(&["-n", &s.ns, "delete", "oauthapp", "kept", "--wait=true"]);
    let deleting = Instant::now();
    control_plane().kubectl_ok(&["-n", &s.ns, "delete", "oauthapp", "gone", "--wait=true"]);
    eprintln!("app with a provider deleted in {:?}", deleting.elapsed());
    // No waiting: the app was gone only once its client was.
    assert!(
        s.realm.client(&gone_id).await.is_none(),
        "the deleted app's client is still at Keycloak"
    );
    // The retained one still works with its Secret's secret.
    assert!(s.realm.client(&kept_id).await.is_some());
    assert_eq!(
        s.realm.token(&kept_id, &plaintext(&kept_secret)).await,
        (200, String::new())
    );
    assert!(
        s.secrets
            .get_opt(&kept_secret.name_any())
            .await
            .expect("get")
            .is_some(),
        "the retained Secret is kept"
    );
    let events = events_about(&s.client, &s.ns, "kc").await;
    assert!(
        events
            .iter()
            .any(|(_, reason, note)| reason == "ClientDeleted" && note.contains(&gone_id)),
        "{events:?}"
    );
}

/// An app deleted while its Keycloak cannot be reached stays (`Terminating`) with
/// `ProviderSynced=False, reason Unreachable`, its client still at Keycloak; once the provider
/// reaches Keycloak again, the client is deleted and then the app is gone.
#[tokio::test]
async fn an_app_deleted_while_keycloak_is_unreachable_waits_and_its_client_goes_when_keycloak_is_back() {
    let s = setup("kc-delete-down", &[]).await;
    let (_, client_id, _) = s.provisioned("held", "").await;
    let set_url = |url: &str| {
        control_plane().kubectl_ok(&[
            "-n",
            &s.ns,
            "patch",
            "oauthprovider",
            "kc",
            "--type=merge",
            "-p",
            &json!({ "spec": { "keycloak": { "url": url } } }).to_string(),
        ]);
    };
    // A loopback port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead = format!("http://127.0.0.1:{}", closed.local_addr().expect("addr").port());
    drop(closed);
    set_url(&dead);
    s.provider_ready("kc", "Unreachable").await;
    control_plane().kubectl_ok(&["-n", &s.ns, "delete", "oauthapp", "held", "--wait=false"]);
    let app = eventually("the deleted app says Keycloak is unreachable", WAIT, || async {
        let app = s.apps.get_opt("held").await.ok()??;
        let (status, reason, _) = provider_synced(&app)?;
        (status == "False" && reason == "Unreachable").then_some(app)
    })
    .await;
    assert!(app.metadata.deletion_timestamp.is_some());
    assert!(
        s.realm.client(&client_id).await.is_some(),
        "the client is kept while its deletion cannot reach Keycloak"
    );

    set_url(&s.url);
    let back = Instant::now();
    eventually("the app is gone", WAIT, || async {
        s.apps.get_opt("held").await.ok()?.is_none().then_some(())
    })
    .await;
    eprintln!(
        "app gone {:?} after its provider pointed at Keycloak again",
        back.elapsed()
    );
    assert!(
        s.realm.client(&client_id).await.is_none(),
        "the app went before its client"
    );
}

/// A provider with `spec.deletionPolicy: Retain` keeps the clients of deleted apps, even with
/// their Secrets gone: a look of the provider after the deletion (made at once by a change of
/// its spec) leaves the client working. Switched back to `Delete`, its next look deletes it.
#[tokio::test]
async fn a_provider_that_retains_keeps_the_clients_of_deleted_apps() {
    let s = setup("kc-retain", &[]).await;
    let set_spec = |patch: Value| {
        control_plane().kubectl_ok(&[
            "-n",
            &s.ns,
            "patch",
            "oauthprovider",
            "kc",
            "--type=merge",
            "-p",
            &json!({ "spec": patch }).to_string(),
        ]);
    };
    set_spec(json!({"deletionPolicy": "Retain"}));
    let (_, client_id, last) = s.provisioned("spared", "").await;
    control_plane().kubectl_ok(&["-n", &s.ns, "delete", "oauthapp", "spared", "--wait=true"]);
    eventually("the app's Secret is garbage-collected", WAIT, || async {
        s.secrets
            .get_opt("spared-oauth-client")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    // A change of the provider's spec (the default key, spelled out) makes it look now; its
    // observedGeneration says the look came after the deletion.
    set_spec(json!({"keycloak": {"credentialsSecretRef": {"clientIdKey": "client_id"}}}));
    s.provider_ready("kc", "Authenticated").await;
    assert!(
        s.realm.client(&client_id).await.is_some(),
        "a retaining provider deleted a client"
    );
    assert_eq!(s.realm.token(&client_id, &last).await, (200, String::new()));

    let switched = Instant::now();
    set_spec(json!({"deletionPolicy": "Delete"}));
    eventually("the deleted app's client is gone from Keycloak", WAIT, || async {
        s.realm.client(&client_id).await.is_none().then_some(())
    })
    .await;
    eprintln!(
        "client deleted {:?} after the provider stopped retaining",
        switched.elapsed()
    );
    let events = events_about(&s.client, &s.ns, "kc").await;
    assert!(
        events
            .iter()
            .any(|(_, reason, note)| reason == "ClientDeleted" && note.contains(&client_id)),
        "{events:?}"
    );
}

const VERIFIER_RULES: &str =
    "- apiGroups: [oauthapp.io]\n  resources: [oauthapps/verify]\n  verbs: [create]\n";

/// A token for ServiceAccount `verifier` in `ns`, which may `create oauthapps/verify` there.
fn verifier_token(ns: &str) -> String {
    control_plane().kubectl_ok(&["-n", ns, "create", "serviceaccount", "verifier"]);
    control_plane().apply_ok(
        ns,
        &format!(
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata:\n  name: verifier\nrules:\n{VERIFIER_RULES}---\n\
             apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata:\n  name: verifier\n\
             roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: verifier}}\n\
             subjects: [{{kind: ServiceAccount, name: verifier, namespace: {ns}}}]\n"
        ),
    );
    service_account_token(ns, "verifier")
}

/// The operator's verify answer for `secret` of `client_id`, once it answers 200 (a 429 of the
/// per-caller limit, or an operator not yet serving, is asked again).
async fn verified(port: u16, token: &str, client_id: &str, secret: &str) -> Value {
    let body = json!({"client_id": client_id, "client_secret": secret}).to_string();
    eventually("the verify endpoint answers 200", WAIT, || async {
        let (code, text) =
            http_request_with_body(port, "POST", "/api/v1/oauth-apps/verify", token, Some(&body)).await?;
        (code == 200).then(|| serde_json::from_str(&text).expect("verify json"))
    })
    .await
}

/// A well-formed secret that is no app's.
fn stranger_secret() -> String {
    oauthapp_operator::model::secret::ClientSecret::generate()
        .expect("random")
        .expose()
        .to_string()
}

/// An app registered in Keycloak still answers the operator's verify endpoint, and its answer
/// agrees with Keycloak's token endpoint: the current secret valid at both; after a rotation
/// with a grace period the current one and the previous one (until its expiry, which verify
/// reports) at both; a stranger's secret at neither; and once Keycloak refuses the previous
/// secret, verify does too.
#[tokio::test]
async fn verify_agrees_with_keycloak_on_the_current_and_the_previous_secret() {
    let s = setup("kc-verify", &[]).await;
    s.realm.enable_secret_rotation().await;
    let (app, client_id, first) = s
        .provisioned("checked", "  rotation:\n    gracePeriod: 30s\n")
        .await;
    let app_id = app
        .status
        .as_ref()
        .and_then(|s| s.app_id.clone())
        .expect("app id");
    let token = verifier_token(&s.ns);
    let port = s.operator.api_port;

    let answer = verified(port, &token, &client_id, &first).await;
    assert_eq!(
        (&answer["valid"], &answer["secret"], &answer["app_id"]),
        (&json!(true), &json!("current"), &json!(app_id))
    );
    assert_eq!(s.realm.token(&client_id, &first).await, (200, String::new()));
    let wrong = stranger_secret();
    assert_eq!(
        verified(port, &token, &client_id, &wrong).await,
        json!({"valid": false})
    );
    assert_eq!(s.realm.token(&client_id, &wrong).await.0, 401);

    s.rotate("checked", "one");
    let (app, secret) = s.settled("checked", 2, "Synced").await;
    let second = plaintext(&secret);
    let expires = app
        .status
        .as_ref()
        .and_then(|s| s.previous_secret.as_ref())
        .map(|p| p.expires_at.0)
        .expect("status.previousSecret");
    let answer = eventually("verify takes the new secret", WAIT, || async {
        let answer = verified(port, &token, &client_id, &second).await;
        (answer["secret"] == "current").then_some(answer)
    })
    .await;
    assert_eq!(answer["valid"], true);
    let answer = verified(port, &token, &client_id, &first).await;
    assert_eq!(
        (&answer["valid"], &answer["secret"]),
        (&json!(true), &json!("previous"))
    );
    let reported: jiff::Timestamp = answer["expires_at"]
        .as_str()
        .expect("expires_at")
        .parse()
        .expect("an RFC 3339 time");
    assert_eq!(reported.as_second(), expires.as_second());
    assert_eq!(s.realm.token(&client_id, &second).await, (200, String::new()));
    assert_eq!(
        s.realm.token(&client_id, &first).await,
        (200, String::new()),
        "previous secret within grace"
    );
    assert_eq!(
        verified(port, &token, &client_id, &wrong).await,
        json!({"valid": false})
    );
    assert_eq!(s.realm.token(&client_id, &wrong).await.0, 401);

    // Keycloak lets the previous secret go no earlier than its expiry; verify has let it go then.
    eventually("the previous secret stops working at Keycloak", WAIT, || async {
        (s.realm.token(&client_id, &first).await.0 == 401).then_some(())
    })
    .await;
    assert!(jiff::Timestamp::now() >= expires);
    assert_eq!(
        verified(port, &token, &client_id, &first).await,
        json!({"valid": false})
    );
    let answer = verified(port, &token, &client_id, &second).await;
    assert_eq!(
        (&answer["valid"], &answer["secret"]),
        (&json!(true), &json!("current"))
    );
    assert_eq!(s.realm.token(&client_id, &second).await, (200, String::new()));
}

/// The triggers the other tests do not cover land at Keycloak too: a scheduled rotation (the
/// secret made to look older than its interval, as `schedule.rs` does) and a repair of a Secret
/// whose `client_secret` was overwritten (`SecretDrift`). Each ends with the Secret's new secret
/// taking a token at Keycloak and the one it replaced refused, the overwritten value included.
#[tokio::test]
async fn a_scheduled_rotation_and_a_repair_each_land_at_keycloak() {
    let s = setup("kc-triggers", &[]).await;
    let (app, client_id, first) = s.provisioned("timely", "  rotation:\n    interval: 2h\n").await;

    // The secret three hours old: the schedule is due (the record is signed: this takes the
    // operator's key).
    let three_hours_ago = (jiff::Timestamp::now() - jiff::SignedDuration::from_hours(3)).to_string();
    crate::schedule::resign_record(&s.client, &s.secrets, &app, |r| r.rotated_at = three_hours_ago).await;
    let due = Instant::now();
    let (app, secret) = s.settled("timely", 2, "Synced").await;
    eprintln!(
        "scheduled rotation settled, Keycloak included, {:?} after it was due",
        due.elapsed()
    );
    let trigger = |app: &OAuthApp| {
        app.status
            .as_ref()
            .and_then(|s| s.last_rotation_trigger)
            .map(|t| t.as_str())
    };
    assert_eq!(trigger(&app), Some("Schedule"));
    let second = plaintext(&secret);
    assert_ne!(second, first);
    assert_eq!(s.realm.token(&client_id, &second).await, (200, String::new()));
    assert_eq!(s.realm.token(&client_id, &first).await.0, 401);

    // Someone overwrites the Secret's client_secret: a repair with a fresh secret, at Keycloak too.
    let overwritten = stranger_secret();
    s.secrets
        .patch(
            "timely-oauth-client",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"stringData": {"client_secret": overwritten}})),
        )
        .await
        .expect("overwrite client_secret");
    let overwritten_at = Instant::now();
    let (app, secret) = s.settled("timely", 3, "Synced").await;
    eprintln!(
        "repair settled, Keycloak included, {:?} after the overwrite",
        overwritten_at.elapsed()
    );
    assert_eq!(trigger(&app), Some("SecretDrift"));
    let third = plaintext(&secret);
    assert!(third != second && third != overwritten);
    assert_eq!(s.realm.token(&client_id, &third).await, (200, String::new()));
    assert_eq!(s.realm.token(&client_id, &second).await.0, 401);
    assert_eq!(s.realm.token(&client_id, &overwritten).await.0, 401);
}

/// A second Keycloak, serving https only on loopback with a certificate for 127.0.0.1 from a CA
/// made here; its process group is killed when this value is dropped (and by the watchdog, if
/// the test process goes first).
struct HttpsKeycloak {
    server: KeycloakServer,
    group: u32,
    _dir: tempfile::TempDir,
}

impl HttpsKeycloak {
    async fn start() -> HttpsKeycloak {
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "oauthapp-it keycloak CA");
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let ca_pem = ca_params.self_signed(&ca_key).expect("CA").pem();
        let ca = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
            .expect("params")
            .signed_by(&key, &ca)
            .expect("sign");
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert_file, key_file) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        std::fs::write(&cert_file, cert.pem()).expect("write");
        std::fs::write(&key_file, key.serialize_pem()).expect("write");

        let port = free_port();
        let started = Instant::now();
        let (group, log) = spawn_keycloak(
            "keycloak-https",
            &[
                "--db=dev-mem",
                "--http-enabled=false",
                "--http-host",
                "127.0.0.1",
                "--https-port",
                &port.to_string(),
                "--https-certificate-file",
                cert_file.to_str().expect("utf-8"),
                "--https-certificate-key-file",
                key_file.to_str().expect("utf-8"),
            ],
        );
        let https = HttpsKeycloak {
            server: KeycloakServer {
                url: format!("https://127.0.0.1:{port}"),
                ca_pem: Some(ca_pem),
            },
            group,
            _dir: dir,
        };
        let http = https.server.http();
        let master = format!("{}/realms/master", https.server.url);
        eventually(
            &format!("the https Keycloak to answer (log: {})", log.display()),
            Duration::from_secs(240),
            || async {
                let response = http.get(&master).send().await.ok()?;
                (response.status() == 200).then_some(())
            },
        )
        .await;
        eprintln!(
            "keycloak (https): ready on {} after {:?}",
            https.server.url,
            started.elapsed()
        );
        https
    }
}

impl Drop for HttpsKeycloak {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.group)])
            .status();
    }
}

/// A Keycloak behind a private CA: the provider that trusts that CA (`spec.keycloak.caBundle`)
/// becomes Ready and its app's secret gets a token over https; one without the bundle is
/// `Ready=False` with reason `TLSHandshakeFailed`, its message naming the untrusted certificate
/// and the field that fixes it; its app gets no secret. A bundle without a PEM certificate is
/// refused by the API server.
#[tokio::test]
async fn an_https_keycloak_behind_a_private_ca_is_trusted_with_the_ca_bundle_only() {
    let https = HttpsKeycloak::start().await;
    let started = Instant::now();
    let s = setup_on(&https.server, "kc-https", &[]).await;
    let (status, _) = s.provider_ready("kc", "Authenticated").await;
    assert_eq!(status, "True");
    eprintln!(
        "provider Ready over https {:?} after the realm's setup began",
        started.elapsed()
    );
    s.provider("untrusting", "kc-credentials");
    let (status, message) = s.provider_ready("untrusting", "TLSHandshakeFailed").await;
    assert_eq!(status, "False");
    assert!(
        message.contains("certificate") && message.contains("spec.keycloak.caBundle"),
        "{message}"
    );
    assert!(!message.contains(&s.sa_secret), "{message}");

    let (_, client_id, secret) = s.provisioned("secure", "").await;
    assert!(s.realm.base.starts_with("https://"));
    assert_eq!(s.realm.token(&client_id, &secret).await, (200, String::new()));

    // A bundle without a PEM certificate is refused by the API server.
    let refused = control_plane().apply(
        &s.ns,
        &json!({
            "apiVersion": "oauthapp.io/v1alpha1",
            "kind": "OAuthProvider",
            "metadata": {"name": "junk"},
            "spec": {"keycloak": {
                "url": s.url,
                "realm": s.realm.name,
                "credentialsSecretRef": {"name": "kc-credentials"},
                "caBundle": "not a certificate",
            }},
        })
        .to_string(),
    );
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("spec.keycloak.caBundle must hold PEM certificates"),
        "{}",
        stderr(&refused)
    );

    s.app("doubtful", "untrusting", "");
    let (_, reason, _) = eventually("doubtful: ProviderSynced=False", WAIT, || async {
        let app = s.apps.get_opt("doubtful").await.ok()??;
        provider_synced(&app).filter(|(status, _, _)| status == "False")
    })
    .await;
    assert_eq!(reason, "TLSHandshakeFailed");
    assert!(
        s.secrets
            .get_opt("doubtful-oauth-client")
            .await
            .expect("get")
            .is_none()
    );
    drop(s);
    drop(https);
}

/// Waits until an Event of `type_` and `reason` about app `name` of the setup's namespace is
/// seen; every Event about the app then.
async fn event_seen(s: &Setup, name: &str, type_: &str, reason: &str) -> Vec<(String, String, String)> {
    eventually(
        &format!("a {type_} Event {reason} about {name}"),
        WAIT,
        || async {
            let events = events_about(&s.client, &s.ns, name).await;
            events
                .iter()
                .any(|(t, r, _)| t == type_ && r == reason)
                .then_some(events)
        },
    )
    .await
}
