//! Keycloak: a realm's clients through the admin REST API, with a service account's token
//! (client credentials grant at `{url}/realms/{realm}/protocol/openid-connect/token`).
//!
//! Grace periods use Keycloak's client secret rotation (preview feature `client-secret-rotation` up
//! to 26.7): where a realm's client policy applies the `secret-rotation` executor to the client,
//! the client attributes `client.secret.rotated` and `client.secret.rotated.expiration.time` hold a
//! second secret that authenticates until that time, and a PUT of the client may set them. Where no
//! such policy applies, Keycloak drops those attributes silently: the put reports that the grace
//! was not kept. (Measured on 26.7.3; a PUT of `secret` alone never moves the old secret to
//! "rotated", only `POST .../client-secret` does, with a secret Keycloak generates.)
//!
//! `spec.scopes` become optional client scopes of the client, after the secret:
//! `PUT`/`DELETE .../clients/{id}/optional-client-scopes/{scope id}`, the ids from the realm's
//! `GET .../client-scopes` (both allowed to `manage-clients` alone). Measured on 26.7.3: the
//! client representation's `optionalClientScopes` is ignored on PUT, and on POST it replaces the
//! realm's default scopes, so neither is used.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Map, Value, json};

use super::{DesiredClient, Holds, IdentityProvider, OwnedClient, Previous, ProviderError, Pushed, Put};

/// The client attribute that marks a client the operator created, valued `<namespace>/<app>`.
pub const OWNER_ATTRIBUTE: &str = "oauthapp.io/owner";
/// The client attribute that names the app's Secret.
pub const SECRET_ATTRIBUTE: &str = "oauthapp.io/secret";
/// The client attribute that lists the optional client scopes the operator assigned for the app's
/// `spec.scopes` (space-separated): only those are ever taken off the client again.
pub const SCOPES_ATTRIBUTE: &str = "oauthapp.io/scopes";
/// The scope every OpenID Connect client may request: not a client scope in Keycloak.
const OPENID: &str = "openid";
/// Clients listed per request when looking for the operator's.
const PAGE: usize = 500;
const ROTATED: &str = "client.secret.rotated";
const ROTATED_CREATED: &str = "client.secret.rotated.creation.time";
const ROTATED_EXPIRES: &str = "client.secret.rotated.expiration.time";
const SECRET_EXPIRES: &str = "client.secret.expiration.time";
/// How far out the current secret's expiry at Keycloak is put (ten years, in seconds).
const NO_EXPIRY: i64 = 10 * 365 * 24 * 3600;
/// Each request gives up after this long (the provider counts as unreachable).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// One Keycloak realm, with the service account's credentials.
pub struct Keycloak {
    http: reqwest::Client,
    url: String,
    realm: String,
    client_id: String,
    client_secret: String,
}

impl std::fmt::Debug for Keycloak {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keycloak({}, realm {})", self.url, self.realm)
    }
}

impl Keycloak {
    /// A Keycloak realm at `url` (no trailing slash needed), with a service account's credentials;
    /// its https certificate checked against the system's roots and the PEM CAs in `ca_bundle`.
    pub fn new(
        url: &str,
        realm: &str,
        client_id: String,
        client_secret: String,
        ca_bundle: Option<&str>,
    ) -> Result<Self, ProviderError> {
        // reqwest is built without a TLS crypto provider of its own: the process's (ring).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let url = url.trim_end_matches('/').to_string();
        let mut builder = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(REQUEST_TIMEOUT);
        if let Some(pem) = ca_bundle {
            builder = builder.tls_certs_merge(ca_certificates(&url, pem)?);
        }
        let http = builder.build().map_err(|e| ProviderError::Unreachable {
            url: url.clone(),
            detail: format!("no HTTP client: {e}"),
        })?;
        Ok(Keycloak {
            http,
            url,
            realm: realm.to_string(),
            client_id,
            client_secret,
        })
    }

    fn unreachable(&self, e: reqwest::Error) -> ProviderError {
        // The error and its causes (reqwest's own text is only "error sending request"), without
        // the URL (the variant names it once).
        let e = e.without_url();
        let mut detail = e.to_string();
        let mut tls = false;
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            detail.push_str(": ");
            detail.push_str(&cause.to_string());
            tls |= is_tls_error(cause);
            source = cause.source();
        }
        let url = self.url.clone();
        let detail = crate::runtime::error::redact(&detail);
        if tls {
            ProviderError::Tls { url, detail }
        } else {
            ProviderError::Unreachable { url, detail }
        }
    }

    /// An access token for the service account.
    async fn token(&self) -> Result<String, ProviderError> {
        let url = format!("{}/realms/{}/protocol/openid-connect/token", self.url, self.realm);
        let response = self
            .http
            .post(&url)
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", self.client_id.as_str()),
                ("client_secret", self.client_secret.as_str()),
            ])
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            return body["access_token"].as_str().map(str::to_string).ok_or_else(|| {
                ProviderError::Rejected {
                    url: self.url.clone(),
                    detail: "the token endpoint answered without an access_token".into(),
                }
            });
        }
        Err(self.answer_error(status, &body, "token request"))
    }

    /// The error for a non-success answer to `what`.
    fn answer_error(&self, status: reqwest::StatusCode, body: &Value, what: &str) -> ProviderError {
        let said = ["error", "errorMessage", "error_description"]
            .iter()
            .filter_map(|k| body[*k].as_str())
            .collect::<Vec<_>>()
            .join(": ");
        let said: String = said.chars().take(200).collect();
        let detail = crate::runtime::error::redact(&format!("{what}: HTTP {status} {said}"));
        let url = self.url.clone();
        match status.as_u16() {
            // The admin API with a valid token: the account lacks the role.
            403 if what != "token request" => ProviderError::Forbidden { url, detail },
            // 400 invalid_client / unauthorized_client from the token endpoint: bad credentials.
            400 | 401 | 403 => ProviderError::Unauthorized { url, detail },
            404 if what == "token request" => ProviderError::Unauthorized {
                url,
                detail: format!("{detail} (does the realm exist?)"),
            },
            s if s >= 500 || s == 429 => ProviderError::Unreachable { url, detail },
            _ => ProviderError::Rejected { url, detail },
        }
    }

    fn clients_url(&self) -> String {
        format!("{}/admin/realms/{}/clients", self.url, self.realm)
    }

    /// `GET .../clients` with `query`: Keycloak's JSON answer.
    async fn list_clients(
        &self,
        token: &str,
        query: &[(&str, &str)],
        what: &str,
    ) -> Result<Value, ProviderError> {
        self.get_json(
            self.http.get(self.clients_url()).bearer_auth(token).query(query),
            what,
        )
        .await
    }

    /// Sends `request`: Keycloak's JSON answer, or the error for its status.
    async fn get_json(&self, request: reqwest::RequestBuilder, what: &str) -> Result<Value, ProviderError> {
        let response = request.send().await.map_err(|e| self.unreachable(e))?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            return Err(self.answer_error(status, &body, what));
        }
        Ok(body)
    }

    /// Sends `request`, whose answer has no body to read: Ok(true) on success, Ok(false) when
    /// Keycloak answered `unless` (an answer that is no error here), else the error.
    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        what: &str,
        unless: Option<reqwest::StatusCode>,
    ) -> Result<bool, ProviderError> {
        let response = request.send().await.map_err(|e| self.unreachable(e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(true);
        }
        if Some(status) == unless {
            return Ok(false);
        }
        let body: Value = response.json().await.unwrap_or(Value::Null);
        Err(self.answer_error(status, &body, what))
    }

    /// The representation of the client with `client_id`, if there is one.
    async fn find(&self, token: &str, client_id: &str) -> Result<Option<Map<String, Value>>, ProviderError> {
        let body = self
            .list_clients(
                token,
                &[("clientId", client_id), ("search", "false")],
                "client lookup",
            )
            .await?;
        Ok(body
            .as_array()
            .and_then(|clients| clients.iter().find(|c| c["clientId"].as_str() == Some(client_id)))
            .and_then(|c| c.as_object().cloned()))
    }

    /// `found` is the operator's client for `desired`, or a conflict.
    fn owned<'a>(
        &self,
        desired: &DesiredClient,
        found: &'a Map<String, Value>,
    ) -> Result<&'a str, ProviderError> {
        let owner = found
            .get("attributes")
            .and_then(|a| a.get(OWNER_ATTRIBUTE))
            .and_then(Value::as_str);
        if owner != Some(desired.owner.as_str()) {
            return Err(ProviderError::ClientConflict {
                client_id: desired.client_id.clone(),
            });
        }
        found
            .get("id")
            .and_then(Value::as_str)
            .ok_or_else(|| ProviderError::Rejected {
                url: self.url.clone(),
                detail: "a client representation without an id".into(),
            })
    }

    async fn send_json(
        &self,
        method: reqwest::Method,
        url: &str,
        token: &str,
        body: &Value,
        what: &str,
    ) -> Result<(), ProviderError> {
        self.send_json_unless(method, url, token, body, what, None)
            .await
            .map(|_| ())
    }

    /// [`Self::send_json`], with `unless` an answer that is no error: Ok(false) when Keycloak
    /// gave it, Ok(true) on success.
    async fn send_json_unless(
        &self,
        method: reqwest::Method,
        url: &str,
        token: &str,
        body: &Value,
        what: &str,
        unless: Option<reqwest::StatusCode>,
    ) -> Result<bool, ProviderError> {
        let request = self.http.request(method, url).bearer_auth(token).json(body);
        self.send(request, what, unless).await
    }

    /// A request without a body (a scope assigned or taken off a client).
    async fn send_empty(
        &self,
        method: reqwest::Method,
        url: &str,
        token: &str,
        what: &str,
    ) -> Result<(), ProviderError> {
        let request = self.http.request(method, url).bearer_auth(token);
        self.send(request, what, None).await.map(|_| ())
    }

    /// The realm's OpenID Connect client scopes, name → id (`GET .../client-scopes`: the role
    /// `manage-clients` may list them, measured on 26.7.3).
    async fn realm_scopes(&self, token: &str) -> Result<BTreeMap<String, String>, ProviderError> {
        let url = format!("{}/admin/realms/{}/client-scopes", self.url, self.realm);
        let body = self
            .get_json(self.http.get(url).bearer_auth(token), "client scope list")
            .await?;
        Ok(realm_scopes(&body))
    }

    /// After the client `desired` holds its secret: its optional client scopes made the app's
    /// `spec.scopes` (those the realm has; the others are returned), taking off only the ones the
    /// operator assigned before ([`SCOPES_ATTRIBUTE`], updated when it changes). `recorded`: that
    /// attribute before the put; with it and `spec.scopes` both empty, no request at all.
    async fn put_scopes(
        &self,
        token: &str,
        desired: &DesiredClient,
        recorded: &[String],
    ) -> Result<Vec<String>, ProviderError> {
        if desired.scopes.is_empty() && recorded.is_empty() {
            return Ok(Vec::new());
        }
        let Some(mut found) = self.find(token, &desired.client_id).await? else {
            return Ok(Vec::new());
        };
        let id = self.owned(desired, &found)?.to_string();
        let realm = self.realm_scopes(token).await?;
        let plan = scope_plan(&found, &desired.scopes, &realm);
        let url = |name: &str| {
            format!(
                "{}/{id}/optional-client-scopes/{}",
                self.clients_url(),
                realm.get(name).map(String::as_str).unwrap_or_default()
            )
        };
        for name in &plan.add {
            self.send_empty(reqwest::Method::PUT, &url(name), token, "client scope assignment")
                .await?;
        }
        for name in &plan.remove {
            self.send_empty(reqwest::Method::DELETE, &url(name), token, "client scope removal")
                .await?;
        }
        if plan.recorded != recorded_scopes(&found) {
            // The client as Keycloak has it (its secret, and a rotated one, sent back as they
            // are), with the attribute alone changed. Its scope lists are left out: a PUT ignores
            // them (measured on 26.7.3), and they predate the assignments above.
            found.remove("optionalClientScopes");
            found.remove("defaultClientScopes");
            let attributes = found
                .entry("attributes")
                .or_insert_with(|| json!({}))
                .as_object_mut();
            if let Some(attributes) = attributes {
                attributes.insert(SCOPES_ATTRIBUTE.into(), json!(plan.recorded.join(" ")));
            }
            let client_url = format!("{}/{id}", self.clients_url());
            self.send_json(
                reqwest::Method::PUT,
                &client_url,
                token,
                &Value::Object(found),
                "client update",
            )
            .await?;
        }
        Ok(plan.missing)
    }
}

/// The OpenID Connect client scopes in Keycloak's answer to `GET .../client-scopes`: name → id.
pub fn realm_scopes(body: &Value) -> BTreeMap<String, String> {
    body.as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["protocol"].as_str().is_none_or(|p| p == "openid-connect"))
        .filter_map(|s| Some((s["name"].as_str()?.to_string(), s["id"].as_str()?.to_string())))
        .collect()
}

/// The scopes the operator assigned to Keycloak's client `found` ([`SCOPES_ATTRIBUTE`]), sorted.
pub fn recorded_scopes(found: &Map<String, Value>) -> Vec<String> {
    let mut recorded: Vec<String> = found
        .get("attributes")
        .and_then(|a| a.get(SCOPES_ATTRIBUTE))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect();
    recorded.sort_unstable();
    recorded.dedup();
    recorded
}

/// What makes a client's optional client scopes the app's.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScopePlan {
    /// Scopes of the app the client has neither as optional nor as default scope: assigned as
    /// optional.
    pub add: Vec<String>,
    /// Optional scopes the operator assigned that the app no longer lists: taken off.
    pub remove: Vec<String>,
    /// Scopes of the app the realm has no (OpenID Connect) client scope of, in the app's order.
    pub missing: Vec<String>,
    /// [`SCOPES_ATTRIBUTE`] afterwards, sorted: the app's scopes the operator assigned (not those
    /// the client had already, from the realm's defaults or by hand).
    pub recorded: Vec<String>,
}

impl ScopePlan {
    /// Whether the client `found` has the app's scopes already (nothing to do).
    pub fn settled(&self, found: &Map<String, Value>) -> bool {
        self.add.is_empty() && self.remove.is_empty() && self.recorded == recorded_scopes(found)
    }
}

/// The plan that makes Keycloak's client `found` offer the scopes `wanted` (`spec.scopes`) that
/// the realm has (`realm`: name → id), taking off only optional scopes the operator assigned.
/// `openid` is no client scope in Keycloak, and always allowed: never assigned, never missing.
pub fn scope_plan(
    found: &Map<String, Value>,
    wanted: &[String],
    realm: &BTreeMap<String, String>,
) -> ScopePlan {
    let names = |k: &str| -> Vec<&str> {
        found
            .get(k)
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default()
    };
    let optional = names("optionalClientScopes");
    let default = names("defaultClientScopes");
    let before = recorded_scopes(found);
    let mut plan = ScopePlan::default();
    let mut seen = std::collections::BTreeSet::new();
    for scope in wanted {
        if scope == OPENID || !seen.insert(scope.as_str()) {
            continue;
        }
        if !realm.contains_key(scope) {
            plan.missing.push(scope.clone());
        } else if !optional.contains(&scope.as_str()) && !default.contains(&scope.as_str()) {
            plan.add.push(scope.clone());
            plan.recorded.push(scope.clone());
        } else if optional.contains(&scope.as_str()) && before.contains(scope) {
            plan.recorded.push(scope.clone());
        }
    }
    plan.remove = before
        .iter()
        .filter(|s| !seen.contains(s.as_str()) && optional.contains(&s.as_str()) && realm.contains_key(*s))
        .cloned()
        .collect();
    plan.recorded.sort_unstable();
    plan
}

/// The representation of `desired` holding `secret`, on top of `base` (what Keycloak has, or
/// nothing for a new client). Pure, so that what is sent is tested without a Keycloak.
pub fn representation(
    base: Option<&Map<String, Value>>,
    desired: &DesiredClient,
    secret: &str,
    previous: &Previous<'_>,
    now: i64,
) -> Value {
    let mut rep = base.cloned().unwrap_or_default();
    rep.insert("clientId".into(), json!(desired.client_id));
    rep.insert("name".into(), json!(desired.name.clone().unwrap_or_default()));
    rep.insert("redirectUris".into(), json!(desired.redirect_uris));
    rep.insert("publicClient".into(), json!(false));
    rep.insert("clientAuthenticatorType".into(), json!("client-secret"));
    rep.insert("secret".into(), json!(secret));
    rep.insert(
        "standardFlowEnabled".into(),
        json!(!desired.redirect_uris.is_empty()),
    );
    // The client credentials grant: the app (and whoever checks its secret) can get a token.
    rep.insert("serviceAccountsEnabled".into(), json!(true));
    let attributes = rep
        .entry("attributes")
        .or_insert_with(|| json!({}))
        .as_object_mut();
    if let Some(attributes) = attributes {
        attributes.insert(OWNER_ATTRIBUTE.into(), json!(desired.owner));
        attributes.insert(SECRET_ATTRIBUTE.into(), json!(desired.secret_name));
        // The realm's secret-rotation policy puts an expiry on the current secret (its
        // `expiration-period`, set again on every update that leaves it empty): after it, the
        // secret stops authenticating. The operator decides when a secret is replaced, so the
        // expiry is pushed out of reach.
        attributes.insert(SECRET_EXPIRES.into(), json!((now + NO_EXPIRY).to_string()));
        match previous {
            Previous::Until(grace) => {
                attributes.insert(ROTATED.into(), json!(grace.previous));
                attributes.insert(ROTATED_CREATED.into(), json!(now.to_string()));
                attributes.insert(ROTATED_EXPIRES.into(), json!(grace.expires_at.to_string()));
            }
            // A PUT keeps the attributes it leaves out; an empty value removes one.
            Previous::Drop => {
                for k in [ROTATED, ROTATED_CREATED, ROTATED_EXPIRES] {
                    attributes.insert(k.into(), json!(""));
                }
            }
            // Sent back as Keycloak has them.
            Previous::Keep => {}
        }
    }
    Value::Object(rep)
}

impl IdentityProvider for Keycloak {
    async fn authenticate(&self) -> Result<(), ProviderError> {
        let token = self.token().await?;
        // And that the account may manage clients (one client listed): a token alone does not
        // say so.
        self.list_clients(&token, &[("first", "0"), ("max", "1")], "client list")
            .await
            .map(|_| ())
    }

    async fn put_client(
        &self,
        desired: &DesiredClient,
        secret: &str,
        previous: &Previous<'_>,
    ) -> Result<Pushed, ProviderError> {
        let token = self.token().await?;
        let now = jiff::Timestamp::now().as_second();
        // The secret first: a scope that cannot be assigned never holds it back.
        let mut looked_again = false;
        let (put, grace_kept, recorded) = loop {
            let Some(found) = self.find(&token, &desired.client_id).await? else {
                let rep = representation(None, desired, secret, previous, now);
                let created = self
                    .send_json_unless(
                        reqwest::Method::POST,
                        &self.clients_url(),
                        &token,
                        &rep,
                        "client create",
                        Some(reqwest::StatusCode::CONFLICT),
                    )
                    .await?;
                if created {
                    break (Put::Created, !matches!(previous, Previous::Until(_)), Vec::new());
                }
                // 409: a client of that id was made since the look-up (a create of ours whose
                // answer was lost, or someone else's). Look once more: ours is updated, another's
                // is a conflict.
                if looked_again {
                    return Err(ProviderError::Rejected {
                        url: self.url.clone(),
                        detail: format!(
                            "client create: HTTP 409 twice for client id {}, which the look-up does not find",
                            desired.client_id
                        ),
                    });
                }
                looked_again = true;
                continue;
            };
            let id = self.owned(desired, &found)?.to_string();
            let rep = representation(Some(&found), desired, secret, previous, now);
            let url = format!("{}/{id}", self.clients_url());
            self.send_json(reqwest::Method::PUT, &url, &token, &rep, "client update")
                .await?;
            let kept = match previous {
                // Keycloak keeps the attributes only where its secret-rotation policy applies.
                Previous::Until(_) => self
                    .find(&token, &desired.client_id)
                    .await?
                    .and_then(|c| c.get("attributes").and_then(|a| a.get(ROTATED)).cloned())
                    .is_some(),
                Previous::Drop | Previous::Keep => true,
            };
            break (Put::Updated, kept, recorded_scopes(&found));
        };
        let (missing_scopes, scopes_failed) = match self.put_scopes(&token, desired, &recorded).await {
            Ok(missing) => (missing, None),
            Err(e) => (Vec::new(), Some(e)),
        };
        Ok(Pushed {
            put,
            grace_kept,
            missing_scopes,
            scopes_failed,
        })
    }

    async fn owned_clients(&self, namespace: &str) -> Result<Vec<OwnedClient>, ProviderError> {
        let token = self.token().await?;
        let prefix = format!("{namespace}/");
        let mut owned = Vec::new();
        for first in (0..).step_by(PAGE) {
            let (first, max) = (first.to_string(), PAGE.to_string());
            let body = self
                .list_clients(
                    &token,
                    &[("first", first.as_str()), ("max", max.as_str())],
                    "client list",
                )
                .await?;
            let page = body.as_array().cloned().unwrap_or_default();
            owned.extend(page.iter().filter_map(|c| {
                let attribute = |k: &str| c["attributes"][k].as_str().map(str::to_string);
                let owner = attribute(OWNER_ATTRIBUTE).filter(|o| o.starts_with(&prefix))?;
                Some(OwnedClient {
                    client_id: c["clientId"].as_str()?.to_string(),
                    owner,
                    secret_name: attribute(SECRET_ATTRIBUTE)?,
                })
            }));
            if page.len() < PAGE {
                break;
            }
        }
        Ok(owned)
    }

    async fn delete_client(&self, client: &OwnedClient) -> Result<(), ProviderError> {
        let token = self.token().await?;
        let Some(found) = self.find(&token, &client.client_id).await? else {
            return Ok(());
        };
        // Only the one the operator created for that app.
        let owner = found
            .get("attributes")
            .and_then(|a| a.get(OWNER_ATTRIBUTE))
            .and_then(Value::as_str);
        if owner != Some(client.owner.as_str()) {
            return Ok(());
        }
        let Some(id) = found.get("id").and_then(Value::as_str) else {
            return Ok(());
        };
        // A 404: gone already.
        let request = self
            .http
            .delete(format!("{}/{id}", self.clients_url()))
            .bearer_auth(&token);
        self.send(request, "client delete", Some(reqwest::StatusCode::NOT_FOUND))
            .await
            .map(|_| ())
    }

    async fn holds(
        &self,
        desired: &DesiredClient,
        secret: &str,
        previous_valid: bool,
    ) -> Result<(Holds, Vec<String>), ProviderError> {
        let token = self.token().await?;
        let Some(found) = self.find(&token, &desired.client_id).await? else {
            return Ok((Holds::Missing, Vec::new()));
        };
        self.owned(desired, &found)?;
        let same = found
            .get("secret")
            .and_then(Value::as_str)
            .is_some_and(|s| constant_time_eq(s.as_bytes(), secret.as_bytes()));
        // The scopes only when the app has some or the operator assigned some: no request else.
        let (scopes_settled, missing) = if desired.scopes.is_empty() && recorded_scopes(&found).is_empty() {
            (true, Vec::new())
        } else {
            let plan = scope_plan(&found, &desired.scopes, &self.realm_scopes(&token).await?);
            (plan.settled(&found), plan.missing)
        };
        let now = jiff::Timestamp::now().as_second();
        let holds = match (same, describes(&found, desired) && scopes_settled) {
            (false, _) => Holds::Other,
            (true, false) => Holds::Outdated,
            (true, true) if !previous_valid && takes_rotated(&found, now) => Holds::PreviousRetired,
            (true, true) => Holds::Same,
        };
        Ok((holds, missing))
    }
}

/// Whether Keycloak's client `found` holds a rotated (previous) secret that still authenticates at
/// `now` (unix seconds): one is set and its expiry, if any, is later.
pub fn takes_rotated(found: &Map<String, Value>, now: i64) -> bool {
    let attribute = |k: &str| {
        found
            .get("attributes")
            .and_then(|a| a.get(k))
            .and_then(Value::as_str)
            .filter(|v| !v.is_empty())
    };
    attribute(ROTATED).is_some()
        && attribute(ROTATED_EXPIRES)
            .and_then(|v| v.parse::<i64>().ok())
            .is_none_or(|expires| expires > now)
}

/// Whether Keycloak's client `found` has the name and redirect URIs the app asks for (its scopes:
/// [`ScopePlan::settled`], which needs the realm's client scopes).
pub fn describes(found: &Map<String, Value>, desired: &DesiredClient) -> bool {
    let name = found.get("name").and_then(Value::as_str).unwrap_or_default();
    let mut uris: Vec<&str> = found
        .get("redirectUris")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut wanted: Vec<&str> = desired.redirect_uris.iter().map(String::as_str).collect();
    uris.sort_unstable();
    wanted.sort_unstable();
    name == desired.name.as_deref().unwrap_or_default() && uris == wanted
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The certificates of a PEM CA bundle; an error when it holds none or one that does not parse.
fn ca_certificates(url: &str, pem: &str) -> Result<Vec<reqwest::Certificate>, ProviderError> {
    let invalid = |detail: String| ProviderError::InvalidCaBundle {
        url: url.to_string(),
        detail,
    };
    let certificates =
        reqwest::Certificate::from_pem_bundle(pem.as_bytes()).map_err(|e| invalid(e.to_string()))?;
    if certificates.is_empty() {
        return Err(invalid("it holds no PEM certificate".into()));
    }
    Ok(certificates)
}

/// A TLS failure (rustls's error, as itself or inside the I/O errors hyper and reqwest pass on,
/// seen nested two deep): the certificate not trusted, a handshake refused.
fn is_tls_error(cause: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause: &(dyn std::error::Error + 'static) = cause;
    loop {
        if cause.is::<rustls::Error>() {
            return true;
        }
        // io::Error's source() skips the error it wraps: look inside it instead.
        match cause.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()) {
            Some(inner) => cause = inner,
            None => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desired() -> DesiredClient {
        DesiredClient {
            client_id: "billing".into(),
            name: Some("Billing".into()),
            redirect_uris: vec!["https://billing.example.com/cb".into()],
            scopes: Vec::new(),
            owner: "team-a/billing".into(),
            secret_name: "billing-oauth-client".into(),
        }
    }

    #[test]
    fn a_ca_bundle_without_a_certificate_is_refused_and_a_pem_ca_is_taken() {
        for bundle in [
            "",
            "not pem at all",
            "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
        ] {
            let e = Keycloak::new(
                "https://127.0.0.1:1",
                "r",
                "sa".into(),
                "very-secret".into(),
                Some(bundle),
            )
            .expect_err(bundle);
            assert_eq!(e.reason(), "InvalidCABundle", "{bundle}: {e}");
            assert!(!e.to_string().contains("very-secret"), "{e}");
        }
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params.self_signed(&key).expect("CA").pem();
        Keycloak::new("https://127.0.0.1:1", "r", "sa".into(), "s".into(), Some(&ca)).expect("a PEM CA");
    }

    /// A TLS server on loopback with a certificate for 127.0.0.1 from a CA made here, answering
    /// every connection's handshake (and nothing more): (its URL, the CA's PEM).
    async fn tls_server() -> (String, String) {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let ca_pem = ca_params.self_signed(&ca_key).expect("CA").pem();
        let ca = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
            .expect("params")
            .signed_by(&key, &ca)
            .expect("sign");
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move { acceptor.accept(tcp).await });
            }
        });
        (format!("https://127.0.0.1:{port}"), ca_pem)
    }

    #[tokio::test]
    async fn an_untrusted_certificate_is_a_tls_failure_and_the_ca_bundle_makes_it_trusted() {
        let (url, ca) = tls_server().await;
        let untrusting = Keycloak::new(&url, "r", "sa".into(), "very-secret".into(), None).expect("client");
        let e = untrusting
            .authenticate()
            .await
            .expect_err("an untrusted certificate");
        assert_eq!(e.reason(), "TLSHandshakeFailed", "{e}");
        assert!(e.to_string().contains("UnknownIssuer"), "{e}");
        // Trusting the CA, the handshake passes: what fails then is the HTTP exchange, not TLS.
        let trusting =
            Keycloak::new(&url, "r", "sa".into(), "very-secret".into(), Some(&ca)).expect("client");
        let e = trusting.authenticate().await.expect_err("no HTTP answer");
        assert_ne!(e.reason(), "TLSHandshakeFailed", "{e}");
        assert!(!e.to_string().contains("very-secret"), "{e}");
    }

    #[test]
    fn a_new_client_is_confidential_marked_and_holds_the_secret() {
        let rep = representation(None, &desired(), "s1", &Previous::Drop, 100);
        assert_eq!(rep["clientId"], "billing");
        assert_eq!(rep["secret"], "s1");
        assert_eq!(rep["publicClient"], false);
        assert_eq!(rep["name"], "Billing");
        assert_eq!(rep["redirectUris"][0], "https://billing.example.com/cb");
        assert_eq!(rep["attributes"][OWNER_ATTRIBUTE], "team-a/billing");
        assert_eq!(rep["attributes"][SECRET_ATTRIBUTE], "billing-oauth-client");
        assert_eq!(rep["attributes"][ROTATED], "");
    }

    #[test]
    fn a_grace_puts_the_replaced_secret_in_rotated_until_its_expiry() {
        let grace = crate::provider::Grace {
            previous: "s1",
            expires_at: 500,
        };
        let rep = representation(None, &desired(), "s2", &Previous::Until(grace), 100);
        assert_eq!(rep["secret"], "s2");
        assert_eq!(rep["attributes"][ROTATED], "s1");
        assert_eq!(rep["attributes"][ROTATED_EXPIRES], "500");
        assert_eq!(rep["attributes"][ROTATED_CREATED], "100");
    }

    #[test]
    fn an_update_keeps_what_keycloak_has_and_clears_a_rotated_secret_and_the_expiry() {
        let base = json!({
            "id": "uuid-1",
            "protocol": "openid-connect",
            "attributes": {ROTATED: "old", ROTATED_EXPIRES: "9", SECRET_EXPIRES: "10", "other": "x"}
        });
        let rep = representation(base.as_object(), &desired(), "s3", &Previous::Drop, 100);
        assert_eq!(rep["id"], "uuid-1");
        assert_eq!(rep["protocol"], "openid-connect");
        assert_eq!(rep["attributes"]["other"], "x");
        for k in [ROTATED, ROTATED_EXPIRES, ROTATED_CREATED] {
            assert_eq!(rep["attributes"][k], "", "{k}");
        }
        assert_eq!(rep["attributes"][SECRET_EXPIRES], (100 + NO_EXPIRY).to_string());
    }

    #[test]
    fn a_put_that_keeps_the_previous_secret_sends_keycloaks_rotated_attributes_back() {
        let base = json!({"attributes": {ROTATED: "old", ROTATED_EXPIRES: "9"}});
        let rep = representation(base.as_object(), &desired(), "s", &Previous::Keep, 100);
        assert_eq!(rep["attributes"][ROTATED], "old");
        assert_eq!(rep["attributes"][ROTATED_EXPIRES], "9");
    }

    #[test]
    fn a_client_describes_the_app_when_its_name_and_redirect_uris_are_the_apps_in_any_order() {
        let mut d = desired();
        d.redirect_uris.push("https://billing.example.com/other".into());
        let rep = representation(None, &d, "s", &Previous::Drop, 1);
        let mut found = rep.as_object().cloned().expect("object");
        assert!(describes(&found, &d));
        found.insert(
            "redirectUris".into(),
            json!([
                "https://billing.example.com/other",
                "https://billing.example.com/cb"
            ]),
        );
        assert!(describes(&found, &d), "order does not count");
        found.insert("redirectUris".into(), json!(["https://evil.example.com/cb"]));
        assert!(!describes(&found, &d));
        let mut renamed = rep.as_object().cloned().expect("object");
        renamed.insert("name".into(), json!("Other"));
        assert!(!describes(&renamed, &d));
    }

    fn realm() -> BTreeMap<String, String> {
        realm_scopes(&json!([
            {"id": "id-a", "name": "a", "protocol": "openid-connect"},
            {"id": "id-b", "name": "b", "protocol": "openid-connect"},
            {"id": "id-old", "name": "old", "protocol": "openid-connect"},
            {"id": "id-hand", "name": "by-hand", "protocol": "openid-connect"},
            {"id": "id-address", "name": "address", "protocol": "openid-connect"},
            {"id": "id-profile", "name": "profile", "protocol": "openid-connect"},
            {"id": "id-saml", "name": "saml-only", "protocol": "saml"},
        ]))
    }

    fn client(optional: &[&str], default: &[&str], recorded: &str) -> Map<String, Value> {
        json!({
            "optionalClientScopes": optional,
            "defaultClientScopes": default,
            "attributes": {SCOPES_ATTRIBUTE: recorded},
        })
        .as_object()
        .cloned()
        .expect("object")
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_realms_scopes_are_its_openid_connect_ones_by_name() {
        let realm = realm();
        assert_eq!(realm["a"], "id-a");
        assert!(!realm.contains_key("saml-only"));
    }

    #[test]
    fn a_new_clients_scopes_are_the_apps_that_the_realm_has_and_the_rest_are_missing() {
        let found = client(&["address"], &["profile"], "");
        let wanted = strings(&["a", "openid", "b", "a", "profile", "address", "zz", "saml-only"]);
        let plan = scope_plan(&found, &wanted, &realm());
        assert_eq!(plan.add, strings(&["a", "b"]));
        assert!(plan.remove.is_empty());
        assert_eq!(
            plan.missing,
            strings(&["zz", "saml-only"]),
            "openid is no client scope"
        );
        assert_eq!(
            plan.recorded,
            strings(&["a", "b"]),
            "the realm's defaults are not the operator's"
        );
        assert!(!plan.settled(&found));
    }

    #[test]
    fn only_scopes_the_operator_assigned_are_taken_off() {
        let found = client(&["a", "old", "address", "by-hand"], &["profile"], "a old");
        let plan = scope_plan(&found, &strings(&["b"]), &realm());
        assert_eq!(plan.add, strings(&["b"]));
        assert_eq!(plan.remove, strings(&["a", "old"]), "address and by-hand stay");
        assert_eq!(plan.recorded, strings(&["b"]));
        // Applied: nothing more to do.
        let done = client(&["b", "address", "by-hand"], &["profile"], "b");
        assert!(scope_plan(&done, &strings(&["b"]), &realm()).settled(&done));
        // No scopes any more: the operator's go, the attribute is emptied.
        let plan = scope_plan(&done, &[], &realm());
        assert_eq!(plan.remove, strings(&["b"]));
        assert!(plan.recorded.is_empty());
    }

    #[test]
    fn a_scope_taken_off_by_hand_is_not_settled_and_a_missing_one_does_not_unsettle() {
        let by_hand = client(&["address"], &["profile"], "b");
        let plan = scope_plan(&by_hand, &strings(&["b"]), &realm());
        assert_eq!(plan.add, strings(&["b"]));
        assert!(!plan.settled(&by_hand));
        let missing = client(&["b"], &[], "b");
        let plan = scope_plan(&missing, &strings(&["b", "zz"]), &realm());
        assert!(plan.settled(&missing), "{plan:?}");
        assert_eq!(plan.missing, strings(&["zz"]));
        // A recorded scope deleted from the realm leaves the attribute.
        let deleted = client(&["b"], &[], "b gone");
        let plan = scope_plan(&deleted, &strings(&["b", "gone"]), &realm());
        assert_eq!(plan.recorded, strings(&["b"]));
        assert!(!plan.settled(&deleted));
        assert!(plan.add.is_empty() && plan.remove.is_empty());
    }

    #[test]
    fn a_rotated_secret_counts_until_its_expiry_and_an_emptied_one_not_at_all() {
        let grace = crate::provider::Grace {
            previous: "s1",
            expires_at: 500,
        };
        let rep = representation(None, &desired(), "s2", &Previous::Until(grace), 100);
        let found = rep.as_object().cloned().expect("object");
        assert!(takes_rotated(&found, 499));
        assert!(!takes_rotated(&found, 500), "expired");
        let rep = representation(Some(&found), &desired(), "s2", &Previous::Drop, 200);
        assert!(!takes_rotated(rep.as_object().expect("object"), 201), "dropped");
    }

    #[test]
    fn a_403_is_forbidden_at_the_admin_api_and_unauthorized_at_the_token_endpoint() {
        let kc = Keycloak::new("http://127.0.0.1:1", "r", "sa".into(), "very-secret".into(), None)
            .expect("client");
        let body = json!({"error": "unknown_error"});
        let forbidden = reqwest::StatusCode::FORBIDDEN;
        let e = kc.answer_error(forbidden, &body, "client lookup");
        assert_eq!(e.reason(), "Forbidden");
        assert!(e.to_string().contains("manage-clients"), "{e}");
        assert_eq!(
            kc.answer_error(forbidden, &body, "token request").reason(),
            "Unauthorized"
        );
        assert_eq!(
            kc.answer_error(reqwest::StatusCode::SERVICE_UNAVAILABLE, &body, "client update")
                .reason(),
            "Unreachable"
        );
    }

    #[test]
    fn the_debug_form_names_no_credentials() {
        let kc = Keycloak::new(
            "http://127.0.0.1:1/",
            "r",
            "sa".into(),
            "very-secret".into(),
            None,
        )
        .expect("client");
        let shown = format!("{kc:?}");
        assert!(!shown.contains("very-secret") && !shown.contains("sa"), "{shown}");
    }
}
