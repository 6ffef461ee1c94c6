//! The route handlers: I/O around the shared pieces (the watch caches for lookups, the
//! authenticator for reviews, `rotation::rotate` for every new secret).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, ObjectMeta, Preconditions, PropagationPolicy};
use kube::{Api, ResourceExt};
use serde::Deserialize;
use tracing::{debug, info, warn};

use super::auth::{Access, Caller};
use super::error::{ApiError, RestErrorResponse};
use super::model::{CreateOAuthApp, CreatedOAuthApp, OAuthAppId, OAuthAppList, OAuthAppView, RotatedSecret};
use super::{Commitment, Shared};
use crate::model::crd::{OAuthApp, OAuthAppSpec, RotationTrigger};
use crate::rotation::{self, Rotated};
use crate::runtime::cached::CachedApp;
use crate::runtime::error::{Error, redact};
use crate::runtime::writes;

/// The OpenAPI tag of every operation.
pub const TAG: &str = "OAuth Apps";

/// SubjectAccessReviews in flight at once for one list request.
const LIST_REVIEWS_IN_FLIGHT: usize = 8;

/// How often creating an app tries provisioning its first secret when a concurrent writer
/// (another replica's controller) wins a race.
const CREATE_PROVISION_ATTEMPTS: usize = 6;
/// The wait before the second try; doubled before each one after (25 ms to 400 ms: 775 ms in
/// all). The leader's controller writes the Secret, then the status: a try made between the two
/// loses again, so the tries are spread over the leader's whole rotation (tens of ms on a quiet
/// cluster), not made back to back.
const CREATE_PROVISION_BACKOFF: std::time::Duration = std::time::Duration::from_millis(25);
/// Tries at deleting an app a REST create could not answer with a secret for.
const WITHDRAW_ATTEMPTS: usize = 8;

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
        let uuid = crate::model::id::decode(&id).map_err(|e| ApiError::bad_request(e.to_string()))?;
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
    /// The most apps one page holds (default 100, at most 1000).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// The `continue` token of the previous page (opaque), to get the next one.
    #[serde(rename = "continue")]
    pub continue_token: Option<String>,
}

/// Default and largest `limit` of a list page.
const LIST_LIMIT_DEFAULT: u32 = 100;
const LIST_LIMIT_MAX: u32 = 1000;
/// SubjectAccessReviews one list request may cost (one per namespace, plus the cluster-wide
/// one); a page that runs out ends early, with a `continue` token.
const LIST_MAX_REVIEWS: usize = 32;

/// Where a list page ended: everything up to `(namespace, name)` is done, or the whole of
/// `namespace` when `name` is None. The `continue` token is its JSON, hex-encoded.
#[derive(serde::Serialize, Deserialize, Debug, PartialEq, Eq)]
struct ListPosition {
    #[serde(rename = "ns")]
    namespace: String,
    #[serde(rename = "n", default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
}

impl ListPosition {
    fn encode(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        json.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn decode(token: &str) -> Result<Self, ApiError> {
        let invalid = || ApiError::bad_request("the continue token is not one this API gave out");
        if !token.len().is_multiple_of(2) || token.len() > 2048 {
            return Err(invalid());
        }
        let bytes = (0..token.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(token.get(i..i + 2).unwrap_or("zz"), 16))
            .collect::<Result<Vec<u8>, _>>()
            .map_err(|_| invalid())?;
        serde_json::from_slice(&bytes).map_err(|_| invalid())
    }

    /// Whether app `(namespace, name)` comes after this position.
    fn before(&self, namespace: &str, name: &str) -> bool {
        match namespace.cmp(self.namespace.as_str()) {
            std::cmp::Ordering::Greater => true,
            std::cmp::Ordering::Less => false,
            std::cmp::Ordering::Equal => self.name.as_deref().is_some_and(|n| name > n),
        }
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CreateQuery {
    /// The namespace to create the app in.
    #[param(min_length = 1, max_length = 63, pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")]
    pub namespace: String,
}

/// The rotate endpoint's query.
#[derive(Deserialize, utoipa::IntoParams, Default)]
#[into_params(parameter_in = Query)]
pub struct RotateQuery {
    /// Invalidate the previous secret at once, whatever `spec.rotation.gracePeriod` says (the
    /// secret leaked). Default false.
    #[serde(default)]
    pub revoke_previous: bool,
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
    params(("id" = OAuthAppId, Path, description = "OAuth app ID"), RotateQuery),
    responses(
        (status = 200, description = "Rotated secret", body = RotatedSecret),
        (status = 400, description = "Malformed id", body = RestErrorResponse),
        (status = 401, description = "Unauthorized"),
        (status = 403, description = "The caller may get the app but not create oauthapps/rotate on it", body = RestErrorResponse),
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
    Extension(commitment): Extension<Commitment>,
    AppUid(uid): AppUid,
    QueryParams(query): QueryParams<RotateQuery>,
) -> Result<Response, ApiError> {
    let app = api.app_for(&caller, &uid, "create", Some("rotate")).await?;
    // An app that asks for a client id another app holds gets no secret (ClientIdConflict): a
    // rotation here would give it one, and make it look like the holder while the holder has
    // no status yet (just created, restored, or in conflict over its Secret).
    if !api
        .watches
        .owns_client_id(&app, api.ctx.record_key.released_client_id().as_deref())
    {
        return Err(ApiError::conflict(format!(
            "OAuthApp {}/{} asks for a client id (spec.clientId) that another app holds (Ready=False, reason ClientIdConflict): it is not rotated",
            app.namespace().unwrap_or_default(),
            app.name_any()
        )));
    }
    let (ns, name, secret_name) = (
        app.namespace().unwrap_or_default(),
        app.name_any(),
        app.secret_name(),
    );
    let rotated = api
        .rotate_locked(
            ns,
            name,
            uid.clone(),
            secret_name,
            caller.username.clone(),
            commitment,
            move |_| (RotationTrigger::Api, query.revoke_previous),
        )
        .await?
        .map_err(|e| ApiError::from_rotation("rotating a client secret", e))?;
    if query.revoke_previous {
        api.verify_answers.forget_app(&uid);
    }
    Ok(secret_response(
        StatusCode::OK,
        &RotatedSecret {
            client_secret: rotated.secret.expose().to_string(),
            client_secret_hint: rotated.hint.clone(),
        },
    ))
}

/// Retire the previous secret
///
/// Invalidates the app's previous secret (kept valid after a rotation by
/// `spec.rotation.gracePeriod`) before its expiry. Authorized like rotate. Answers 204 whether or
/// not there was one.
#[utoipa::path(
    delete,
    path = "/api/v1/oauth-apps/{id}/previous-secret",
    operation_id = "revoke_previous_secret",
    tag = TAG,
    params(("id" = OAuthAppId, Path, description = "OAuth app ID")),
    responses(
        (status = 204, description = "Only the current secret is valid"),
        (status = 400, description = "Malformed id", body = RestErrorResponse),
        (status = 401, description = "Unauthorized", body = RestErrorResponse),
        (status = 403, description = "The caller may get the app but not create oauthapps/rotate on it", body = RestErrorResponse),
        (status = 404, description = "Not found", body = RestErrorResponse),
        (status = 409, description = "A concurrent rotation or change of the app won; retry", body = RestErrorResponse),
        (status = 429, description = "Too many requests", body = RestErrorResponse),
        (status = 500, description = "Internal error", body = RestErrorResponse),
        (status = 503, description = "The Kubernetes API server is unavailable; retry", body = RestErrorResponse),
    ),
    security(("bearer_auth" = []))
)]
pub async fn revoke_previous_secret(
    State(api): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    AppUid(uid): AppUid,
) -> Result<StatusCode, ApiError> {
    let app = api.app_for(&caller, &uid, "create", Some("rotate")).await?;
    let (ns, name) = (app.namespace().unwrap_or_default(), app.name_any());
    let key = format!("{ns}/{name}");
    let _guard = tokio::time::timeout(rotation::LOCK_WAIT, api.ctx.locks.lock(&key))
        .await
        .map_err(|_| {
            ApiError::conflict(format!(
                "a rotation of OAuthApp {key} is still running; retry the request"
            ))
        })?;
    let apps: Api<OAuthApp> = Api::namespaced(api.ctx.client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(api.ctx.client.clone(), &ns);
    let fresh = apps
        .get_opt(&name)
        .await
        .map_err(|e| ApiError::from_kube("reading an OAuthApp", &e))?
        .filter(|a| a.uid().as_deref() == Some(uid.as_str()))
        .ok_or_else(|| ApiError::not_found("no OAuthApp has this id"))?;
    let Some(secret) = secrets
        .get_opt(&fresh.secret_name())
        .await
        .map_err(|e| ApiError::from_kube("reading a Secret", &e))?
    else {
        return Ok(StatusCode::NO_CONTENT);
    };
    // The REST API's writes are not the leader's to fence (crate::runtime::leader).
    let retired =
        crate::runtime::leader::exempt_if(true, rotation::revoke_previous(&api.ctx, &fresh, secret))
            .await
            .map_err(|e| ApiError::from_rotation("retiring the previous secret", e))?;
    api.verify_answers.forget_app(&uid);
    if retired {
        info!(app = %key, caller = %caller.username, "previous client secret retired through the REST API");
    }
    Ok(StatusCode::NO_CONTENT)
}

/// List OAuth apps
///
/// The OAuth apps in every namespace where the caller may `list` oauthapps, ordered by namespace
/// and resource name, a page at a time: `limit` and `continue` as in Kubernetes lists.
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
    let limit = query.limit.unwrap_or(LIST_LIMIT_DEFAULT);
    if !(1..=LIST_LIMIT_MAX).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and {LIST_LIMIT_MAX}"
        )));
    }
    let limit = limit as usize;
    let after = query
        .continue_token
        .as_deref()
        .map(ListPosition::decode)
        .transpose()?;
    let namespaces = listed(&api, query.namespace.as_deref(), after.as_ref());
    let mut reviews = 0;
    // One review when the caller may list everywhere (a ClusterRole binding): reviews per
    // namespace only for the others, a few at a time, as far as the page needs.
    let cluster_wide = namespaces.len() > 1 && {
        reviews += 1;
        let everywhere = Access {
            verb: "list",
            namespace: "",
            name: None,
            subresource: None,
        };
        api.auth.allowed(&caller, everywhere).await?
    };
    let mut verdicts: Vec<bool> = Vec::new();
    let mut data: Vec<OAuthAppView> = Vec::new();
    let mut last: Option<ListPosition> = None;
    let mut next = None;
    'namespaces: for (i, (ns, apps)) in namespaces.iter().enumerate() {
        if data.len() >= limit {
            next = last.take();
            break;
        }
        if !cluster_wide && i >= verdicts.len() {
            let budget = LIST_MAX_REVIEWS.saturating_sub(reviews);
            if budget == 0 {
                // Out of reviews: the next page starts with this namespace.
                next = i.checked_sub(1).map(|p| ListPosition {
                    namespace: namespaces[p].0.clone(),
                    name: None,
                });
                break;
            }
            let batch = &namespaces[i..(i + budget.min(LIST_REVIEWS_IN_FLIGHT)).min(namespaces.len())];
            reviews += batch.len();
            verdicts.extend(may_list(&api, &caller, batch).await?);
        }
        if !cluster_wide && !verdicts[i] {
            last = Some(ListPosition {
                namespace: ns.clone(),
                name: None,
            });
            continue;
        }
        for app in apps {
            if data.len() >= limit {
                next = last.take();
                break 'namespaces;
            }
            data.push(OAuthAppView::of(&app.app()));
            last = Some(ListPosition {
                namespace: ns.clone(),
                name: Some(app.name().to_string()),
            });
        }
    }
    Ok(Json(OAuthAppList {
        data,
        continue_token: next.map(|p| p.encode()),
    }))
}

/// The cached apps a list may show, by namespace in order, each namespace's by name: those in
/// `namespace` (all when None) after the position `after`.
fn listed(
    api: &Shared,
    namespace: Option<&str>,
    after: Option<&ListPosition>,
) -> Vec<(String, Vec<Arc<CachedApp>>)> {
    let mut by_namespace: BTreeMap<String, Vec<Arc<CachedApp>>> = BTreeMap::new();
    for app in api.watches.apps() {
        let (ns, name) = (app.namespace(), app.name());
        if namespace.is_none_or(|q| q == ns) && after.is_none_or(|p| p.before(ns, name)) {
            by_namespace.entry(ns.to_string()).or_default().push(app);
        }
    }
    by_namespace
        .into_iter()
        .map(|(ns, mut apps)| {
            apps.sort_by(|a, b| a.name().cmp(b.name()));
            (ns, apps)
        })
        .collect()
}

/// Whether `caller` may list apps in each namespace of `batch` (SubjectAccessReviews, a few at
/// a time).
async fn may_list(
    api: &Shared,
    caller: &Caller,
    batch: &[(String, Vec<Arc<CachedApp>>)],
) -> Result<Vec<bool>, ApiError> {
    let batch: Vec<String> = batch.iter().map(|(ns, _)| ns.clone()).collect();
    let answers: Vec<Result<bool, ApiError>> = futures::stream::iter(batch)
        .map(|ns| async move {
            let list = Access {
                verb: "list",
                namespace: &ns,
                name: None,
                subresource: None,
            };
            api.auth.allowed(caller, list).await
        })
        .buffered(LIST_REVIEWS_IN_FLIGHT)
        .collect()
        .await;
    answers.into_iter().collect()
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
        (status = 404, description = "No app has this id, or the caller may not get it", body = RestErrorResponse),
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
    let app = api.app_for(&caller, &uid, "get", None).await?;
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
        (status = 415, description = "The body is not sent as application/json", body = RestErrorResponse),
        (status = 429, description = "Too many requests", body = RestErrorResponse),
        (status = 500, description = "Internal error", body = RestErrorResponse),
        (status = 503, description = "The Kubernetes API server is unavailable; retry", body = RestErrorResponse),
    ),
    security(("bearer_auth" = []))
)]
pub async fn create_oauth_app(
    State(api): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Extension(commitment): Extension<Commitment>,
    QueryParams(query): QueryParams<CreateQuery>,
    Body(body): Body<CreateOAuthApp>,
) -> Result<Response, ApiError> {
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
    let app = new_app(&ns, body)?;
    let resource_name = app.name_any();
    let (created, mut guard) = create_armed(&api, app).await?;
    let uid = created.uid().unwrap_or_default();
    info!(app = %format!("{ns}/{resource_name}"), caller = %caller.username, "created OAuthApp through the REST API");
    let provisioned = api
        .provision_created(&ns, &resource_name, &uid, &created, &caller, commitment)
        .await;
    let withdrawal = guard.0.take();
    let rotated = match provisioned {
        Ok(rotated) => rotated,
        Err(e) => {
            // In a task of its own: a timeout that drops this request now (its rotation never
            // committed) must not cut the withdrawal short and leave the app behind.
            let kept = match withdrawal {
                Some(w) => !tokio::spawn(w.run()).await.unwrap_or(false),
                None => false,
            };
            return Err(if kept {
                e.with_suffix(&format!(
                    "; OAuthApp {ns}/{resource_name} was created without a secret anyone has seen, \
                     and could not be removed: rotate or delete it"
                ))
            } else {
                e.with_suffix("; the app was not kept: create it again")
            });
        }
    };
    Ok(secret_response(
        StatusCode::CREATED,
        &CreatedOAuthApp {
            app: OAuthAppView::of(&rotated.app),
            client_secret: rotated.secret.expose().to_string(),
        },
    ))
}

/// The app a create asks for, in namespace `ns`: `name` is its resource name, unless
/// `resource_name` is given (then `name` is its display name).
fn new_app(ns: &str, body: CreateOAuthApp) -> Result<OAuthApp, ApiError> {
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
    Ok(OAuthApp {
        metadata: ObjectMeta {
            name: Some(resource_name),
            namespace: Some(ns.to_string()),
            ..Default::default()
        },
        spec: OAuthAppSpec {
            display_name,
            redirect_uris: body.redirect_uris,
            scopes: body.scopes.unwrap_or_default(),
            ..Default::default()
        },
        status: None,
    })
}

/// Creates `app` and hands it back with its withdrawal armed. The create runs in a task of its
/// own: a request dropped while the create is on its way (a timeout, a client gone) drops that
/// answer unread, and with it the guard, which withdraws the app. From here on, an app whose
/// secret this request does not answer with is withdrawn: nobody would ever see that secret.
async fn create_armed(api: &Arc<Shared>, app: OAuthApp) -> Result<(OAuthApp, WithdrawOnDrop), ApiError> {
    let (ns, resource_name) = (app.namespace().unwrap_or_default(), app.name_any());
    let apps: Api<OAuthApp> = Api::namespaced(api.ctx.client.clone(), &ns);
    let creating = {
        let (api, ns, name) = (api.clone(), ns.clone(), resource_name.clone());
        tokio::spawn(async move {
            let created = apps.create(&writes::post_params(), &app).await?;
            #[cfg(feature = "failpoints")]
            if let Some(d) = api
                .ctx
                .failpoint
                .as_deref()
                .and_then(|f| f.strip_prefix("pause-after-create="))
                .and_then(crate::model::status::parse_interval)
                .and_then(|d| Duration::try_from(d).ok())
            {
                tokio::time::sleep(d).await;
            }
            let guard = WithdrawOnDrop(Some(Withdrawal {
                api,
                ns,
                name,
                uid: created.uid().unwrap_or_default(),
            }));
            Ok::<_, kube::Error>((created, guard))
        })
    };
    creating
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "the create task failed");
            ApiError::internal()
        })?
        .map_err(|e| match &e {
            kube::Error::Api(s) if s.code == 409 => ApiError::conflict(format!(
                "an OAuthApp named {resource_name} already exists in namespace {ns}"
            )),
            kube::Error::Api(s) if s.code == 400 || s.code == 422 => ApiError::bad_request(s.message.clone()),
            // When every namespace is watched, a namespace that does not exist gets this far.
            kube::Error::Api(s) if s.code == 404 => ApiError::not_found(format!("namespace {ns} not found")),
            _ => ApiError::from_kube("creating an OAuthApp", &e),
        })
}

/// An app a REST create made, to delete unless the create answers with its secret.
struct Withdrawal {
    api: Arc<Shared>,
    ns: String,
    name: String,
    uid: String,
}

impl Withdrawal {
    /// Deletes the app (this uid only), retrying while the API server is unavailable, for at
    /// most [`WITHDRAW_ATTEMPTS`] tries. True when it is gone.
    async fn run(self) -> bool {
        let apps: Api<OAuthApp> = Api::namespaced(self.api.ctx.client.clone(), &self.ns);
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(self.uid.clone()),
                resource_version: None,
            }),
            propagation_policy: Some(PropagationPolicy::Background),
            ..Default::default()
        };
        let key = format!("{}/{}", self.ns, self.name);
        let mut wait = Duration::from_millis(200);
        for _ in 0..WITHDRAW_ATTEMPTS {
            match apps.delete(&self.name, &params).await {
                Ok(_) => {
                    warn!(app = %key, "withdrew an OAuthApp the REST API created but could not answer with a secret for");
                    return true;
                }
                // Gone already, or the name is another app's now.
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => return true,
                Err(e) => {
                    warn!(app = %key, error = %crate::runtime::error::Error::Kube(e), "withdrawing an unanswered OAuthApp failed; retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(2));
                }
            }
        }
        tracing::error!(app = %key, "an OAuthApp the REST API created could not be withdrawn: its first secret was never shown; rotate or delete it");
        false
    }
}

/// Withdraws the app in the background when dropped armed (its request was abandoned).
struct WithdrawOnDrop(Option<Withdrawal>);

impl Drop for WithdrawOnDrop {
    fn drop(&mut self) {
        if let Some(withdrawal) = self.0.take() {
            tokio::spawn(withdrawal.run());
        }
    }
}

impl Shared {
    /// The first secret of app `ns/name` just created (`created`), through the one rotate(). If
    /// the controller got there first, its secret was never shown to anyone: it is replaced, so
    /// the caller gets one that is valid. A rotation whose status write failed after its Secret
    /// write still answers with its secret (the status is completed from the Secret).
    async fn provision_created(
        self: &Arc<Self>,
        ns: &str,
        name: &str,
        uid: &str,
        created: &OAuthApp,
        caller: &Caller,
        commitment: Commitment,
    ) -> Result<rotation::Rotated, ApiError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = self
                .rotate_locked(
                    ns.to_string(),
                    name.to_string(),
                    uid.to_string(),
                    created.secret_name(),
                    caller.username.clone(),
                    commitment.clone(),
                    |existing| {
                        if existing.is_some() {
                            (RotationTrigger::Api, false)
                        } else {
                            (RotationTrigger::Created, false)
                        }
                    },
                )
                .await;
            match result? {
                Ok(rotated) => return Ok(rotated),
                Err(Error::StatusPending { written, source, .. }) => {
                    warn!(app = %format!("{ns}/{name}"), error = %source, "the first secret is written, its status is not yet; answering with it");
                    return Ok(written.0);
                }
                Err(e) if lost_a_race(&e) && attempt < CREATE_PROVISION_ATTEMPTS => {
                    let wait = CREATE_PROVISION_BACKOFF.saturating_mul(1 << (attempt - 1));
                    debug!(app = %format!("{ns}/{name}"), attempt, ?wait, "the first secret lost a race with another writer; trying again");
                    tokio::time::sleep(wait).await;
                    continue;
                }
                Err(e) if lost_a_race(&e) => {
                    return Err(ApiError::conflict(format!(
                        "the first secret of OAuthApp {ns}/{name} lost a race with a concurrent writer \
                         {CREATE_PROVISION_ATTEMPTS} times"
                    )));
                }
                Err(e) => return Err(ApiError::from_rotation("provisioning the first client secret", e)),
            }
        }
    }
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
        (status = 403, description = "The caller may get the app but not delete it", body = RestErrorResponse),
        (status = 404, description = "No app has this id, or the caller may not get it", body = RestErrorResponse),
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
    let app = api.app_for(&caller, &uid, "delete", None).await?;
    let (ns, name) = (app.namespace().unwrap_or_default(), app.name_any());
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
    pub(super) fn ready(&self) -> Result<(), ApiError> {
        if self.watches.is_ready() && self.ctx.record_key.get().is_some() {
            Ok(())
        } else {
            Err(ApiError::unavailable(
                "the operator is starting and its caches are not synced yet; retry shortly",
            ))
        }
    }

    /// The prologue of every `/{id}` route: the app `uid` names (from the watch cache), for a
    /// caller about to `verb` it (or its `subresource`). A caller who may not `get` the app is
    /// told what a caller is told of an id that does not exist (404, the same body), so ids
    /// reveal nothing across namespaces; one who may get it but not do `verb` gets 403.
    pub(super) async fn app_for(
        &self,
        caller: &Caller,
        uid: &str,
        verb: &str,
        subresource: Option<&str>,
    ) -> Result<Arc<OAuthApp>, ApiError> {
        self.ready()?;
        let not_found = || ApiError::not_found("no OAuthApp has this id");
        let app = self.watches.find(uid).ok_or_else(not_found)?;
        let (ns, name) = (app.namespace().unwrap_or_default(), app.name_any());
        let access = |verb, subresource| Access {
            verb,
            namespace: &ns,
            name: Some(&name),
            subresource,
        };
        if !self.auth.allowed(caller, access("get", None)).await? {
            return Err(not_found());
        }
        if verb != "get" || subresource.is_some() {
            self.auth.authorize(caller, access(verb, subresource)).await?;
        }
        Ok(app)
    }

    /// Rotates app `ns/name` (uid `uid`) under its lock, from the watch caches, or from fresh
    /// reads of the app and its Secret when the caches lag this process's own writes or the
    /// rotation's conditional write finds them behind the API server (a conflict: nothing was
    /// written). `trigger` picks the trigger from the Secret found, and whether the rotation
    /// revokes the previous secret at once. The outer error is a failure before `rotate()` (lock
    /// wait, reads), the inner one is `rotate()`'s.
    ///
    /// Runs in its own task. Right before the Secret write it commits `commitment`; if the
    /// request was abandoned first (timed out, or the caller went away: this future is dropped)
    /// the task stops there, having written nothing (counted as a rotation `error`). Once committed, it runs to the end
    /// whatever happens to the request, so nothing cuts a rotation between its two writes, and
    /// the request timeout waits for the answer that carries the new secret.
    #[allow(clippy::too_many_arguments)]
    async fn rotate_locked(
        self: &Arc<Self>,
        ns: String,
        name: String,
        uid: String,
        secret_name: String,
        caller: String,
        commitment: Commitment,
        trigger: impl Fn(Option<&ObjectMeta>) -> (RotationTrigger, bool) + Send + 'static,
    ) -> Result<Result<Rotated, Error>, ApiError> {
        let api = self.clone();
        let commit = commitment.clone();
        let task = tokio::spawn(async move {
            let key = format!("{ns}/{name}");
            let _guard = tokio::time::timeout(rotation::LOCK_WAIT, api.ctx.locks.lock(&key))
                .await
                .map_err(|_| {
                    ApiError::conflict(format!(
                        "another rotation of OAuthApp {key} is still running; retry the request"
                    ))
                })?;
            let mut cached = api.cached_for_rotation(&ns, &name, &uid);
            loop {
                let from_cache = cached.is_some();
                let (app, secret, generated) = match cached.take() {
                    Some((app, secret)) => (app, secret, None),
                    None => api.fresh_for_rotation(&ns, &name, &uid, &secret_name).await?,
                };
                let (trigger, revoke_previous) = trigger(secret.as_ref());
                let cause = rotation::Cause {
                    trigger,
                    detail: Some(&caller),
                    revoke_previous,
                };
                let commit = commit.clone();
                // The REST API's writes are not the leader's to fence, whatever the trigger
                // (crate::runtime::leader): a create's first secret is `Created`.
                let result = crate::runtime::leader::exempt_if(
                    true,
                    rotation::rotate_committing(&api.ctx, &app, secret, cause, generated, move || {
                        commit.commit()
                    }),
                )
                .await;
                match result {
                    // The cache was behind the API server (nothing was written): read fresh.
                    Err(Error::StaleView(_)) if from_cache => continue,
                    result => return Ok(result),
                }
            }
        });
        // Dropped with this future (a timeout, a client gone): the task stops at its point of
        // no return unless it has passed it already.
        let mut abandon = AbandonOnDrop(Some(commitment));
        let ended = task.await;
        // The task ended: nothing left to abandon (a retry may still commit).
        abandon.0 = None;
        ended.map_err(|e| {
            tracing::error!(error = %e, "rotation task failed");
            ApiError::internal()
        })?
    }
}

impl Shared {
    /// The app and its Secret's metadata as the watch caches hold them, for a rotation under
    /// the app's lock; None when the caches lag this process's own last write of either (they
    /// would only lose the write's race), or no longer show the app.
    fn cached_for_rotation(
        &self,
        ns: &str,
        name: &str,
        uid: &str,
    ) -> Option<(Arc<OAuthApp>, Option<ObjectMeta>)> {
        let app = self
            .watches
            .find(uid)
            .filter(|a| a.name_any() == name && a.metadata.deletion_timestamp.is_none())?;
        let secret = self
            .watches
            .scope_of(ns)?
            .secrets
            .lookup(ns, &app.secret_name())
            .map(|s| s.metadata());
        (!writes::caches_lag(&self.ctx, &app, secret.as_ref())).then_some((app, secret))
    }

    /// Fresh reads of the app and its Secret (both at once: the Secret's name is fixed when the
    /// app is created, by CEL), with a new secret hashed meanwhile (or taken from the pool): it
    /// does not depend on what they return.
    async fn fresh_for_rotation(
        &self,
        ns: &str,
        name: &str,
        uid: &str,
        secret_name: &str,
    ) -> Result<(Arc<OAuthApp>, Option<ObjectMeta>, Option<rotation::Generated>), ApiError> {
        let apps: Api<OAuthApp> = Api::namespaced(self.ctx.client.clone(), ns);
        let secrets: Api<Secret> = Api::namespaced(self.ctx.client.clone(), ns);
        let started = std::time::Instant::now();
        let (fresh, secret, generated) = futures::join!(
            apps.get_opt(name),
            secrets.get_metadata_opt(secret_name),
            self.ctx.hasher.generate(ns)
        );
        let fresh = fresh
            .map_err(|e| ApiError::from_kube("reading an OAuthApp", &e))?
            .filter(|a| a.uid().as_deref() == Some(uid) && a.metadata.deletion_timestamp.is_none())
            .ok_or_else(|| ApiError::not_found(format!("OAuthApp {ns}/{name} no longer exists")))?;
        let secret = if fresh.secret_name() == secret_name {
            secret
        } else {
            secrets.get_metadata_opt(&fresh.secret_name()).await
        }
        .map_err(|e| ApiError::from_kube("reading a Secret", &e))?;
        // A failed hash is made again, and reported, by rotate_with itself.
        let generated = generated.ok().map(|g| (g, started));
        Ok((Arc::new(fresh), secret.map(|s| s.metadata), generated))
    }
}

/// Abandons a request's commitment when dropped while its rotation task still runs (a no-op
/// once it is committed).
struct AbandonOnDrop(Option<Commitment>);

impl Drop for AbandonOnDrop {
    fn drop(&mut self) {
        if let Some(commitment) = &self.0 {
            commitment.abandon();
        }
    }
}

/// A JSON answer that carries a client secret: `Cache-Control: no-store`, and the buffer it is
/// serialized into is zeroed when the last copy of the body is dropped (hyper's own write
/// buffer is out of our hands).
fn secret_response<T: serde::Serialize>(status: StatusCode, body: &T) -> Response {
    // Sized exactly first, so no reallocation leaves a copy behind.
    let mut counter = ByteCounter(0);
    let _ = serde_json::to_writer(&mut counter, body);
    let mut bytes = zeroize::Zeroizing::new(Vec::with_capacity(counter.0));
    if let Err(e) = serde_json::to_writer(&mut *bytes, body) {
        tracing::error!(error = %e, "serializing an answer failed");
        return ApiError::internal().into_response();
    }
    (
        status,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        axum::body::Body::from(axum::body::Bytes::from_owner(bytes)),
    )
        .into_response()
}

/// Counts the bytes written to it.
struct ByteCounter(usize);

impl std::io::Write for ByteCounter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
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
    fn a_continue_token_round_trips_and_orders_apps() {
        let p = ListPosition {
            namespace: "team-a".into(),
            name: Some("billing".into()),
        };
        let token = p.encode();
        assert_eq!(ListPosition::decode(&token).expect("round trip"), p);
        assert!(p.before("team-a", "portal"));
        assert!(!p.before("team-a", "billing"));
        assert!(!p.before("team-a", "api"));
        assert!(p.before("team-b", "a"));
        assert!(!p.before("default", "z"));
        let whole = ListPosition {
            namespace: "team-a".into(),
            name: None,
        };
        assert!(!whole.before("team-a", "zzz"), "the whole namespace is done");
        assert!(whole.before("team-b", "a"));
        for bad in ["", "z", "zz", "7b7d", &"00".repeat(2000)] {
            assert!(ListPosition::decode(bad).is_err(), "{bad:?}");
        }
    }

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
