//! The route handlers: I/O around the shared pieces (the watch caches for lookups, the
//! authenticator for reviews, `rotation::rotate` for every new secret).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::{Extension, Json};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, ObjectMeta, Preconditions, PropagationPolicy};
use kube::{Api, ResourceExt};
use serde::Deserialize;
use tracing::info;

use super::Shared;
use super::auth::{Access, Caller};
use super::error::{ApiError, RestErrorResponse};
use super::model::{CreateOAuthApp, CreatedOAuthApp, OAuthAppId, OAuthAppList, OAuthAppView, RotatedSecret};
use crate::crd::{OAuthApp, OAuthAppSpec, RotationTrigger};
use crate::error::{Error, redact};
use crate::rotation::{self, Rotated};

/// The OpenAPI tag of every operation.
pub const TAG: &str = "OAuth Apps";

/// SubjectAccessReviews in flight at once for one list request.
const LIST_REVIEWS_IN_FLIGHT: usize = 8;

/// How often creating an app retries provisioning its first secret when a concurrent writer
/// (another replica's controller) wins a race.
const CREATE_PROVISION_ATTEMPTS: usize = 4;

/// The longest resource name whose Secret name (`<name>-oauth-client`) is still valid.
const MAX_RESOURCE_NAME_LEN: usize = 253 - "-oauth-client".len();

/// The `{id}` path segment, decoded (`app_…` or a bare UUID); 400 when malformed.
pub struct AppUid(pub String);

impl<S: Send + Sync> FromRequestParts<S> for AppUid {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(id) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::bad_request(e.body_text()))?;
        let uuid = crate::id::decode(&id).map_err(|e| ApiError::bad_request(e.to_string()))?;
        Ok(Self(uuid.to_string()))
    }
}

/// A JSON body whose rejections are JSON errors too (400; 413 past the body limit; 415 without
/// a JSON content type).
pub struct Body<T>(pub T);

impl<T, S> FromRequest<S> for Body<T>
where
    Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Self(v)),
            // A body that is JSON but not the expected shape is a 400 like any other bad body.
            Err(e) if e.status() == StatusCode::UNPROCESSABLE_ENTITY => {
                Err(ApiError::bad_request(redact(&e.body_text())))
            }
            Err(e) => Err(ApiError::new(e.status(), redact(&e.body_text()))),
        }
    }
}

/// Query parameters whose rejections are JSON errors (400).
pub struct QueryParams<T>(pub T);

impl<T, S> FromRequestParts<S> for QueryParams<T>
where
    Query<T>: FromRequestParts<S, Rejection = QueryRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(v)) => Ok(Self(v)),
            Err(e) => Err(ApiError::bad_request(redact(&e.body_text()))),
        }
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only the apps of this namespace.
    pub namespace: Option<String>,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CreateQuery {
    /// The namespace to create the app in.
    #[param(min_length = 1, max_length = 63, pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")]
    pub namespace: String,
}

/// Rotate client secret
///
/// Generate a new client secret for an OAuth app. The old secret is
/// immediately invalidated.
#[utoipa::path(
    post,
    path = "/api/v1/oauth-apps/{id}/rotate",
    operation_id = "rotate_client_secret",
    tag = TAG,
    params(("id" = OAuthAppId, Path, description = "OAuth app ID")),
    responses(
        (status = 200, description = "Rotated secret", body = RotatedSecret),
        (status = 400, description = "Malformed id", body = RestErrorResponse),
        (status = 401, description = "Unauthorized"),
        (status = 403, description = "The caller may not create oauthapps/rotate in the app's namespace", body = RestErrorResponse),
        (status = 404, description = "Not found"),
        (status = 409, description = "A concurrent rotation or change of the app won; retry", body = RestErrorResponse),
        (status = 429, description = "Too many requests", body = RestErrorResponse),
        (status = 500, description = "Internal error", body = RestErrorResponse),
        (status = 503, description = "The Kubernetes API server is unavailable; retry", body = RestErrorResponse),
    ),
    security(("bearer_auth" = []))
)]
pub async fn rotate_client_secret(
    State(api): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    AppUid(uid): AppUid,
) -> Result<Json<RotatedSecret>, ApiError> {
    let app = api.lookup(&uid)?;
    let (ns, name, secret_name) = (
        app.namespace().unwrap_or_default(),
        app.name_any(),
        app.secret_name(),
    );
    api.auth
        .authorize(
            &caller,
            Access {
                verb: "create",
                namespace: &ns,
                name: Some(&name),
                subresource: Some("rotate"),
            },
        )
        .await?;
    let rotated = api
        .rotate_locked(ns, name, uid, secret_name, caller.username.clone(), |_| {
            RotationTrigger::Api
        })
        .await?
        .map_err(|e| ApiError::from_rotation("rotating a client secret", e))?;
    Ok(Json(RotatedSecret {
        client_secret: rotated.secret.expose().to_string(),
        client_secret_hint: rotated.hint,
    }))
}

/// List OAuth apps
///
/// The OAuth apps in every namespace where the caller may `list` oauthapps.
#[utoipa::path(
    get,
    path = "/api/v1/oauth-apps",
    operation_id = "list_oauth_apps",
    tag = TAG,
    params(ListQuery),
    responses(
        (status = 200, description = "The apps the caller may list", body = OAuthAppList),
        (status = 400, description = "Malformed query", body = RestErrorResponse),
        (status = 401, description = "Unauthorized", body = RestErrorResponse),
        (status = 429, description = "Too many requests", body = RestErrorResponse),
        (status = 500, description = "Internal error", body = RestErrorResponse),
        (status = 503, description = "The Kubernetes API server is unavailable; retry", body = RestErrorResponse),
    ),
    security(("bearer_auth" = []))
)]
pub async fn list_oauth_apps(
    State(api): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    QueryParams(query): QueryParams<ListQuery>,
) -> Result<Json<OAuthAppList>, ApiError> {
    api.ready()?;
    let mut by_namespace: BTreeMap<String, Vec<Arc<OAuthApp>>> = BTreeMap::new();
    for app in api.watches.apps() {
        let ns = app.namespace().unwrap_or_default();
        if query.namespace.as_ref().is_none_or(|q| *q == ns) {
            by_namespace.entry(ns).or_default().push(app);
        }
    }
    let mut namespaces: Vec<String> = by_namespace.keys().cloned().collect();
    // One review when the caller may list everywhere (a ClusterRole binding): reviews per
    // namespace only for the others.
    if namespaces.len() > 1 {
        let everywhere = Access {
            verb: "list",
            namespace: "",
            name: None,
            subresource: None,
        };
        if api.auth.allowed(&caller, everywhere).await? {
            namespaces.clear();
        }
    }
    let cluster_wide = namespaces.is_empty();
    let caller = &caller;
    let api_ref = &api;
    let verdicts: Vec<(String, Result<bool, ApiError>)> = futures::stream::iter(namespaces)
        .map(|ns| async move {
            let allowed = api_ref
                .auth
                .allowed(
                    caller,
                    Access {
                        verb: "list",
                        namespace: &ns,
                        name: None,
                        subresource: None,
                    },
                )
                .await;
            (ns, allowed)
        })
        .buffer_unordered(LIST_REVIEWS_IN_FLIGHT)
        .collect()
        .await;
    let mut allowed = BTreeSet::new();
    for (ns, verdict) in verdicts {
        if verdict? {
            allowed.insert(ns);
        }
    }
    let mut data: Vec<OAuthAppView> = by_namespace
        .into_iter()
        .filter(|(ns, _)| cluster_wide || allowed.contains(ns))
        .flat_map(|(_, apps)| apps)
        .map(|app| OAuthAppView::of(&app))
        .collect();
    data.sort_by(|a, b| (&a.namespace, &a.resource_name).cmp(&(&b.namespace, &b.resource_name)));
    Ok(Json(OAuthAppList { data }))
}

/// Get an OAuth app
#[utoipa::path(
    get,
    path = "/api/v1/oauth-apps/{id}",
    operation_id = "get_oauth_app",
    tag = TAG,
    params(("id" = OAuthAppId, Path, description = "OAuth app ID")),
    responses(
        (status = 200, description = "The app", body = OAuthAppView),
        (status = 400, description = "Malformed id", body = RestErrorResponse),
        (status = 401, description = "Unauthorized", body = RestErrorResponse),
        (status = 403, description = "The caller may not get oauthapps in the app's namespace", body = RestErrorResponse),
        (status = 404, description = "Not found", body = RestErrorResponse),
        (status = 429, description = "Too many requests", body = RestErrorResponse),
        (status = 500, description = "Internal error", body = RestErrorResponse),
        (status = 503, description = "The Kubernetes API server is unavailable; retry", body = RestErrorResponse),
    ),
    security(("bearer_auth" = []))
)]
pub async fn get_oauth_app(
    State(api): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    AppUid(uid): AppUid,
) -> Result<Json<OAuthAppView>, ApiError> {
    let app = api.lookup(&uid)?;
    let (ns, name) = (app.namespace().unwrap_or_default(), app.name_any());
    api.auth
        .authorize(
            &caller,
            Access {
                verb: "get",
                namespace: &ns,
                name: Some(&name),
                subresource: None,
            },
        )
        .await?;
    Ok(Json(OAuthAppView::of(&app)))
}

/// Create an OAuth app
///
/// Creates the `OAuthApp` resource and its first client secret, which this answer shows: the
/// only time it is shown.
#[utoipa::path(
    post,
    path = "/api/v1/oauth-apps",
    operation_id = "create_oauth_app",
    tag = TAG,
    params(CreateQuery),
    request_body = CreateOAuthApp,
    responses(
        (status = 201, description = "The app and its client secret (shown only this once)", body = CreatedOAuthApp),
        (status = 400, description = "Invalid request (the API server's validation message)", body = RestErrorResponse),
        (status = 401, description = "Unauthorized", body = RestErrorResponse),
        (status = 403, description = "The caller may not create oauthapps in the namespace", body = RestErrorResponse),
        (status = 404, description = "The namespace does not exist", body = RestErrorResponse),
        (status = 409, description = "An app of that name exists", body = RestErrorResponse),
        (status = 413, description = "Request body too large", body = RestErrorResponse),
        (status = 429, description = "Too many requests", body = RestErrorResponse),
        (status = 500, description = "Internal error", body = RestErrorResponse),
        (status = 503, description = "The Kubernetes API server is unavailable; retry", body = RestErrorResponse),
    ),
    security(("bearer_auth" = []))
)]
pub async fn create_oauth_app(
    State(api): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    QueryParams(query): QueryParams<CreateQuery>,
    Body(body): Body<CreateOAuthApp>,
) -> Result<(StatusCode, Json<CreatedOAuthApp>), ApiError> {
    let ns = query.namespace;
    if !is_dns_label(&ns) {
        return Err(ApiError::bad_request(format!(
            "namespace {ns:?} is not a valid namespace name"
        )));
    }
    api.auth
        .authorize(
            &caller,
            Access {
                verb: "create",
                namespace: &ns,
                name: None,
                subresource: None,
            },
        )
        .await?;
    if api.watches.scope_of(&ns).is_none() {
        return Err(ApiError::bad_request(format!(
            "namespace {ns} is not watched by this operator (--watch-namespaces)"
        )));
    }
    let (resource_name, display_name) = match body.resource_name {
        Some(resource_name) => (resource_name, Some(body.name)),
        None => (body.name, None),
    };
    if !is_dns_subdomain(&resource_name, MAX_RESOURCE_NAME_LEN) {
        return Err(ApiError::bad_request(format!(
            "{resource_name:?} is not a valid resource name: use lowercase letters, digits, '-' and '.', \
             start and end with a letter or digit, at most {MAX_RESOURCE_NAME_LEN} characters \
             (or give resource_name, and name becomes the display name)"
        )));
    }
    let app = OAuthApp {
        metadata: ObjectMeta {
            name: Some(resource_name.clone()),
            namespace: Some(ns.clone()),
            ..Default::default()
        },
        spec: OAuthAppSpec {
            display_name,
            redirect_uris: body.redirect_uris,
            scopes: body.scopes.unwrap_or_default(),
            ..Default::default()
        },
        status: None,
    };
    let apps: Api<OAuthApp> = Api::namespaced(api.ctx.client.clone(), &ns);
    let created = apps
        .create(&rotation::post_params(), &app)
        .await
        .map_err(|e| match &e {
            kube::Error::Api(s) if s.code == 409 => ApiError::conflict(format!(
                "an OAuthApp named {resource_name} already exists in namespace {ns}"
            )),
            kube::Error::Api(s) if s.code == 400 || s.code == 422 => ApiError::bad_request(s.message.clone()),
            // When every namespace is watched, a namespace that does not exist gets this far.
            kube::Error::Api(s) if s.code == 404 => ApiError::not_found(format!("namespace {ns} not found")),
            _ => ApiError::from_kube("creating an OAuthApp", &e),
        })?;
    let uid = created.uid().unwrap_or_default();
    info!(app = %format!("{ns}/{resource_name}"), caller = %caller.username, "created OAuthApp through the REST API");

    // The first secret, through the one rotate(). If the controller got there first, its secret
    // was never shown to anyone: replace it, so the caller gets one that is valid.
    let mut attempt = 0;
    let rotated = loop {
        attempt += 1;
        let result = api
            .rotate_locked(
                ns.clone(),
                resource_name.clone(),
                uid.clone(),
                created.secret_name(),
                caller.username.clone(),
                |existing| {
                    if existing.is_some() {
                        RotationTrigger::Api
                    } else {
                        RotationTrigger::Created
                    }
                },
            )
            .await;
        match result? {
            Ok(rotated) => break rotated,
            Err(e) if lost_a_race(&e) && attempt < CREATE_PROVISION_ATTEMPTS => continue,
            Err(e) if lost_a_race(&e) => {
                return Err(ApiError::conflict(format!(
                    "OAuthApp {ns}/{resource_name} was created, but its first secret lost a race with a \
                     concurrent writer; rotate it to get a secret"
                )));
            }
            Err(e) => return Err(ApiError::from_rotation("provisioning the first client secret", e)),
        }
    };
    Ok((
        StatusCode::CREATED,
        Json(CreatedOAuthApp {
            app: OAuthAppView::of(&rotated.app),
            client_secret: rotated.secret.expose().to_string(),
        }),
    ))
}

/// Delete an OAuth app
///
/// Deletes the `OAuthApp` resource; its Secret is garbage-collected with it.
#[utoipa::path(
    delete,
    path = "/api/v1/oauth-apps/{id}",
    operation_id = "delete_oauth_app",
    tag = TAG,
    params(("id" = OAuthAppId, Path, description = "OAuth app ID")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Malformed id", body = RestErrorResponse),
        (status = 401, description = "Unauthorized", body = RestErrorResponse),
        (status = 403, description = "The caller may not delete oauthapps in the app's namespace", body = RestErrorResponse),
        (status = 404, description = "Not found", body = RestErrorResponse),
        (status = 429, description = "Too many requests", body = RestErrorResponse),
        (status = 500, description = "Internal error", body = RestErrorResponse),
        (status = 503, description = "The Kubernetes API server is unavailable; retry", body = RestErrorResponse),
    ),
    security(("bearer_auth" = []))
)]
pub async fn delete_oauth_app(
    State(api): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    AppUid(uid): AppUid,
) -> Result<StatusCode, ApiError> {
    let app = api.lookup(&uid)?;
    let (ns, name) = (app.namespace().unwrap_or_default(), app.name_any());
    api.auth
        .authorize(
            &caller,
            Access {
                verb: "delete",
                namespace: &ns,
                name: Some(&name),
                subresource: None,
            },
        )
        .await?;
    let apps: Api<OAuthApp> = Api::namespaced(api.ctx.client.clone(), &ns);
    let params = DeleteParams {
        // Only the app this id names: not a newer one that took its name.
        preconditions: Some(Preconditions {
            uid: Some(uid),
            resource_version: None,
        }),
        propagation_policy: Some(PropagationPolicy::Background),
        ..Default::default()
    };
    apps.delete(&name, &params).await.map_err(|e| match &e {
        kube::Error::Api(s) if s.code == 404 || s.code == 409 => {
            ApiError::not_found(format!("OAuthApp {ns}/{name} no longer exists"))
        }
        _ => ApiError::from_kube("deleting an OAuthApp", &e),
    })?;
    info!(app = %format!("{ns}/{name}"), caller = %caller.username, "deleted OAuthApp through the REST API");
    Ok(StatusCode::NO_CONTENT)
}

impl Shared {
    /// 503 until the watch caches have synced (before that, "not found" could be a lie) and the
    /// rotation-record signing key is loaded.
    fn ready(&self) -> Result<(), ApiError> {
        if self.watches.is_ready() && self.ctx.record_key.get().is_some() {
            Ok(())
        } else {
            Err(ApiError::unavailable(
                "the operator is starting and its caches are not synced yet; retry shortly",
            ))
        }
    }

    /// The app with this uid, from the watch cache (no API call).
    fn lookup(&self, uid: &str) -> Result<Arc<OAuthApp>, ApiError> {
        self.ready()?;
        self.watches
            .find(uid)
            .ok_or_else(|| ApiError::not_found("no OAuthApp has this id"))
    }

    /// Rotates app `ns/name` (uid `uid`) under its lock, from fresh reads of the app and its
    /// Secret; `trigger` picks the trigger from the Secret found. The outer error is a failure
    /// before `rotate()` (lock wait, reads), the inner one is `rotate()`'s. Runs to the end in
    /// its own task even if the caller goes away, so a dropped connection never cuts a rotation
    /// between its two writes.
    async fn rotate_locked(
        self: &Arc<Self>,
        ns: String,
        name: String,
        uid: String,
        secret_name: String,
        caller: String,
        trigger: impl FnOnce(Option<&Secret>) -> RotationTrigger + Send + 'static,
    ) -> Result<Result<Rotated, Error>, ApiError> {
        let api = self.clone();
        let task = tokio::spawn(async move {
            let key = format!("{ns}/{name}");
            let _guard = tokio::time::timeout(rotation::LOCK_WAIT, api.ctx.locks.lock(&key))
                .await
                .map_err(|_| {
                    ApiError::conflict(format!(
                        "another rotation of OAuthApp {key} is still running; retry the request"
                    ))
                })?;
            let apps: Api<OAuthApp> = Api::namespaced(api.ctx.client.clone(), &ns);
            let secrets: Api<Secret> = Api::namespaced(api.ctx.client.clone(), &ns);
            // Both reads at once (the Secret's name is fixed when the app is created, by CEL),
            // and the new secret hashed meanwhile: it does not depend on what they return.
            let started = std::time::Instant::now();
            let (fresh, secret, generated) = futures::join!(
                apps.get_opt(&name),
                secrets.get_opt(&secret_name),
                api.ctx.hasher.generate()
            );
            let fresh = fresh
                .map_err(|e| ApiError::from_kube("reading an OAuthApp", &e))?
                .filter(|a| {
                    a.uid().as_deref() == Some(uid.as_str()) && a.metadata.deletion_timestamp.is_none()
                })
                .ok_or_else(|| ApiError::not_found(format!("OAuthApp {key} no longer exists")))?;
            let secret = if fresh.secret_name() == secret_name {
                secret
            } else {
                secrets.get_opt(&fresh.secret_name()).await
            }
            .map_err(|e| ApiError::from_kube("reading a Secret", &e))?;
            let trigger = trigger(secret.as_ref());
            // A failed hash is made again, and reported, by rotate_with itself.
            let generated = generated.ok().map(|g| (g, started));
            Ok(rotation::rotate_with(&api.ctx, &fresh, secret, trigger, Some(&caller), generated).await)
        });
        task.await.map_err(|e| {
            tracing::error!(error = %e, "rotation task failed");
            ApiError::internal()
        })?
    }
}

/// A resourceVersion precondition failed: another writer changed the app or its Secret first.
fn lost_a_race(e: &Error) -> bool {
    e.is_conflict() && !matches!(e, Error::SecretConflict { .. })
}

/// An RFC 1123 label (a namespace name): `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters.
fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// An RFC 1123 subdomain (a resource name): dot-separated labels, at most `max` characters.
fn is_dns_subdomain(s: &str, max: usize) -> bool {
    let label = |l: &str| {
        !l.is_empty()
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    s.len() <= max && s.split('.').all(label)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_kubernetes_rules() {
        assert!(is_dns_label("team-a"));
        assert!(!is_dns_label("Team-a"));
        assert!(!is_dns_label("-a"));
        assert!(!is_dns_label(&"a".repeat(64)));
        assert!(is_dns_subdomain("billing.portal-1", MAX_RESOURCE_NAME_LEN));
        assert!(!is_dns_subdomain("billing..portal", MAX_RESOURCE_NAME_LEN));
        assert!(!is_dns_subdomain("Billing portal", MAX_RESOURCE_NAME_LEN));
        assert!(!is_dns_subdomain(&"a".repeat(241), MAX_RESOURCE_NAME_LEN));
    }
}
