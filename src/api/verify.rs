//! `POST /api/v1/oauth-apps/verify`: client credentials checked against an app's status hashes,
//! for authorization servers and gateways that may not read Secrets.
//!
//! Nothing in an answer tells a caller that an app exists: an unknown client id, and one in a
//! namespace where the caller may not `create oauthapps/verify`, get `{"valid": false}` like a
//! wrong secret, after the same work (a hash against a dummy). A positive answer is remembered
//! briefly, keyed on the app, the matched secret's rotation id and a SHA-256 of the presented
//! secret (never the plaintext); a rotation, an expiry or a revocation changes what is looked up,
//! so a secret that is no longer valid never verifies from the cache.
//!
//! Tenants cannot lock each other out: an app's verification bucket is taken only by callers
//! allowed to verify it. Unknown ids and apps the caller may not verify take from the caller's
//! bucket for those and from one for them in all, which bounds the dummy hashes they cost. A
//! `client_id` that cannot be one is refused (400) before any lookup or limiter.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::{Extension, Json};
use jiff::Timestamp;
use kube::ResourceExt;
use sha2::{Digest, Sha256};

use super::Shared;
use super::auth::{Access, Caller};
use super::error::{ApiError, RestErrorResponse};
use super::handlers::{Body, TAG};
use super::model::{MatchedSecret, VerifyRequest, VerifyResult};
use crate::model::crd::OAuthApp;
use crate::runtime::metrics::ResultLabels;

/// How long a positive answer is remembered.
const ANSWER_TTL: Duration = Duration::from_secs(10);
/// Positive answers remembered at most; past it the oldest half is forgotten.
const MAX_ANSWERS: usize = 10_000;

/// (app uid, rotation id of the matched secret, SHA-256 of the presented secret).
type AnswerKey = (String, String, [u8; 32]);

/// Positive answers, briefly. Bounded by [`MAX_ANSWERS`].
#[derive(Default)]
pub struct AnswerCache(Mutex<HashMap<AnswerKey, Instant>>);

impl AnswerCache {
    fn hit(&self, key: &AnswerKey) -> bool {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.get(key).is_some_and(|at| at.elapsed() < ANSWER_TTL)
    }

    /// Forgets every answer about app `uid` (its previous secret was just retired here).
    pub fn forget_app(&self, uid: &str) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|(app, _, _), _| app != uid);
    }

    fn remember(&self, key: AnswerKey) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_ANSWERS {
            map.retain(|_, at| at.elapsed() < ANSWER_TTL);
            if map.len() >= MAX_ANSWERS {
                let mut ages: Vec<Instant> = map.values().copied().collect();
                ages.sort();
                let cut = ages[ages.len() / 2];
                map.retain(|_, at| *at > cut);
            }
        }
        map.insert(key, Instant::now());
    }
}

/// The secrets of `app` valid now: (which, its rotation id, its hash, its expiry).
fn valid_secrets(app: &OAuthApp, now: Timestamp) -> Vec<(MatchedSecret, String, String, Option<String>)> {
    let Some(status) = app.status.as_ref() else {
        return Vec::new();
    };
    let mut secrets = Vec::new();
    if let (Some(rotation), Some(hash)) = (&status.rotation_id, &status.client_secret_hash) {
        secrets.push((MatchedSecret::Current, rotation.clone(), hash.clone(), None));
    }
    if let Some(p) = status.previous_secret.as_ref().filter(|p| now < p.expires_at.0) {
        secrets.push((
            MatchedSecret::Previous,
            p.rotation_id.clone(),
            p.client_secret_hash.clone(),
            Some(p.expires_at.0.to_string()),
        ));
    }
    secrets
}

/// Verify client credentials
///
/// Checks a client secret against the app's current secret and, within its grace period, its
/// previous one. A wrong secret, an unknown client id and a namespace where the caller may not
/// `create oauthapps/verify` all answer `{"valid": false}`.
#[utoipa::path(
    post,
    path = "/api/v1/oauth-apps/verify",
    operation_id = "verify_client_credentials",
    tag = TAG,
    request_body = VerifyRequest,
    responses(
        (status = 200, description = "Whether the secret is one of the app's valid secrets", body = VerifyResult),
        (status = 400, description = "Malformed body, or a client_id that cannot be a client id", body = RestErrorResponse),
        (status = 401, description = "Unauthorized", body = RestErrorResponse),
        (status = 413, description = "Request body too large", body = RestErrorResponse),
        (status = 415, description = "The body is not sent as application/json", body = RestErrorResponse),
        (status = 429, description = "Too many requests (verifications are limited per caller and per client id; of unknown client ids, per caller and in all)", body = RestErrorResponse),
        (status = 500, description = "Internal error", body = RestErrorResponse),
        (status = 503, description = "The Kubernetes API server is unavailable, or the operator's view of the apps may be stale; retry", body = RestErrorResponse),
    ),
    security(("bearer_auth" = []))
)]
pub async fn verify_client_credentials(
    State(api): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Body(request): Body<VerifyRequest>,
) -> Result<Json<VerifyResult>, ApiError> {
    usable(&api, &request)?;
    let app = permitted_app(&api, &caller, &request.client_id).await?;
    let now = Timestamp::now();
    let candidates = app.as_deref().map(|a| valid_secrets(a, now)).unwrap_or_default();
    let digest: [u8; 32] = Sha256::digest(request.client_secret.as_bytes()).into();
    let uid = app.as_ref().and_then(|a| a.uid()).unwrap_or_default();
    let answer = |which: MatchedSecret, expires_at: Option<String>| VerifyResult {
        valid: true,
        app_id: app.as_deref().and_then(crate::model::record::app_id),
        namespace: app.as_deref().and_then(|a| a.namespace()),
        secret: Some(which),
        expires_at: Some(expires_at),
    };
    for (which, rotation, _, expires_at) in &candidates {
        if api.verify_answers.hit(&(uid.clone(), rotation.clone(), digest)) {
            api.count(result_label(Some(*which)));
            return Ok(Json(answer(*which, expires_at.clone())));
        }
    }
    // Only a caller that may verify the app takes from its client id's bucket: an unknown id,
    // or one of an app the caller may not verify, costs the caller, never the app.
    if app.is_some() {
        api.limits.check_verify(&caller.username, &request.client_id)?;
    } else {
        api.limits.check_verify_unknown(&caller.username)?;
    }
    let hashes = candidates.iter().map(|(_, _, hash, _)| hash.clone()).collect();
    let matches = api
        .ctx
        .hasher
        .verify_all(
            &tenant_of(&caller.username),
            request.client_secret.clone(),
            hashes,
        )
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "verifying client credentials failed");
            ApiError::internal()
        })?;
    let matched = candidates.iter().zip(matches).find(|(_, ok)| *ok).map(|(c, _)| c);
    match matched {
        Some((which, rotation, _, expires_at)) => {
            api.verify_answers.remember((uid, rotation.clone(), digest));
            api.count(result_label(Some(*which)));
            Ok(Json(answer(*which, expires_at.clone())))
        }
        None => {
            api.count(if app.is_some() { "invalid" } else { "unknown" });
            Ok(Json(VerifyResult::invalid()))
        }
    }
}

/// Whether a verification can be answered at all: the caches are synced and not stale (a
/// secret revoked meanwhile must not verify), and `client_id` could be a client id (checked
/// before any lookup, limiter or memory).
fn usable(api: &Shared, request: &VerifyRequest) -> Result<(), ApiError> {
    api.ready()?;
    if let Some(stale) = api.watches.apps_stale_for()
        && stale > api.verify_max_staleness
    {
        return Err(ApiError::unavailable(format!(
            "the operator's view of the apps may be stale (their watch has failed for {}s): retry, or ask another replica",
            stale.as_secs()
        )));
    }
    if !crate::model::crd::could_be_client_id(&request.client_id) {
        return Err(ApiError::bad_request(
            "client_id is not a client id: an app id (app_ and up to 22 letters and digits) or 1 to 128 of [A-Za-z0-9._:-], starting with a letter or digit",
        ));
    }
    Ok(())
}

/// The app that holds `client_id`, if the caller may verify it (SubjectAccessReview: create on
/// `oauthapps/verify`); None for an unknown id and for an app the caller may not verify alike.
async fn permitted_app(
    api: &Shared,
    caller: &Caller,
    client_id: &str,
) -> Result<Option<Arc<OAuthApp>>, ApiError> {
    let Some(app) = api
        .watches
        .find_by_client_id(client_id, api.ctx.record_key.released_client_id().as_deref())
    else {
        return Ok(None);
    };
    let (ns, name) = (app.namespace().unwrap_or_default(), app.name_any());
    let access = Access {
        verb: "create",
        namespace: &ns,
        name: Some(&name),
        subresource: Some("verify"),
    };
    Ok(api.auth.allowed(caller, access).await?.then_some(app))
}

/// Whose turn a verification's hash waits for ([`crate::runtime::fair`]): a ServiceAccount's namespace
/// (a tenant's many ServiceAccounts are one tenant), else the user.
fn tenant_of(username: &str) -> String {
    match username
        .strip_prefix("system:serviceaccount:")
        .and_then(|r| r.split_once(':'))
    {
        Some((namespace, _)) => namespace.to_string(),
        None => format!("user:{username}"),
    }
}

fn result_label(which: Option<MatchedSecret>) -> &'static str {
    match which {
        Some(MatchedSecret::Current) => "current",
        Some(MatchedSecret::Previous) => "previous",
        None => "invalid",
    }
}

impl Shared {
    fn count(&self, result: &'static str) {
        self.ctx
            .metrics
            .verifications
            .get_or_create(&ResultLabels { result })
            .inc();
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_tenants_service_accounts_share_one_turn() {
        assert_eq!(tenant_of("system:serviceaccount:team-b:one"), "team-b");
        assert_eq!(tenant_of("system:serviceaccount:team-b:two"), "team-b");
        assert_eq!(tenant_of("alice"), "user:alice");
        assert_eq!(
            tenant_of("system:serviceaccount:team-b"),
            "user:system:serviceaccount:team-b"
        );
    }

    use super::*;
    use crate::model::crd::{OAuthAppSpec, OAuthAppStatus, PreviousSecret};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    #[test]
    fn only_unexpired_secrets_are_candidates() {
        let now = Timestamp::now();
        let mut app = OAuthApp::new("a", OAuthAppSpec::default());
        assert!(valid_secrets(&app, now).is_empty());
        app.status = Some(OAuthAppStatus {
            rotation_id: Some("r2".into()),
            client_secret_hash: Some("h2".into()),
            previous_secret: Some(Box::new(PreviousSecret {
                rotation_id: "r1".into(),
                client_secret_hash: "h1".into(),
                client_secret_hint: "oas_x...y".into(),
                expires_at: Time(now + jiff::SignedDuration::from_secs(5)),
            })),
            ..Default::default()
        });
        let found: Vec<_> = valid_secrets(&app, now)
            .into_iter()
            .map(|(w, r, _, _)| (w, r))
            .collect();
        assert_eq!(
            found,
            [
                (MatchedSecret::Current, "r2".to_string()),
                (MatchedSecret::Previous, "r1".to_string())
            ]
        );
        let later = now + jiff::SignedDuration::from_secs(5);
        assert_eq!(
            valid_secrets(&app, later).len(),
            1,
            "expired: the current secret only"
        );
    }

    #[test]
    fn the_answer_cache_is_bounded_and_keyed_on_the_rotation() {
        let cache = AnswerCache::default();
        let key = |i: usize| (format!("uid{i}"), "r1".to_string(), [0u8; 32]);
        cache.remember(key(0));
        assert!(cache.hit(&key(0)));
        assert!(!cache.hit(&("uid0".to_string(), "r2".to_string(), [0u8; 32])));
        for i in 1..=MAX_ANSWERS + 10 {
            cache.remember(key(i));
        }
        let size = cache.0.lock().unwrap().len();
        assert!(size <= MAX_ANSWERS, "{size}");
        assert!(cache.hit(&key(MAX_ANSWERS + 10)), "the newest stays");
    }
}
