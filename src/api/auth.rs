//! Who is calling, and may they: a `TokenReview` for the bearer token, a `SubjectAccessReview`
//! for each (verb, namespace, app) the caller asks for. So one RBAC Role governs both
//! `kubectl annotate` and the REST API.
//!
//! Both answers are cached for `ttl` (a burst of calls costs one review, not one per call), and
//! concurrent misses for the same key share one review. Keys are SHA-256 digests: the cache
//! never holds a raw token. Failures to reach the API server are not cached.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, header};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, UserInfo};
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
use kube::api::PostParams;
use kube::{Api, Client};
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;
use tracing::debug;

use super::error::ApiError;
use crate::crd::GROUP;

/// Tokens longer than this are refused without a review (service account tokens are ~1 KiB).
const MAX_TOKEN_LEN: usize = 8 * 1024;
/// Entries kept per cache before expired ones are dropped (and, if still full, all of them).
const MAX_ENTRIES: usize = 10_000;

type Key = [u8; 32];

/// An authenticated caller, as the `TokenReview` described them.
#[derive(Clone, Debug)]
pub struct Caller {
    /// The user name (`system:serviceaccount:NS:NAME` for a ServiceAccount): the rate-limit
    /// key and the name in audit logs and Events.
    pub username: String,
    user: UserInfo,
    /// Digest of the whole identity (name, uid, groups, extra): the caller part of review keys.
    identity: Key,
}

/// What a caller wants to do to OAuthApps: a verb in a namespace, on one app or all of them,
/// optionally on a subresource (`rotate`).
#[derive(Clone, Copy, Debug)]
pub struct Access<'a> {
    pub verb: &'a str,
    pub namespace: &'a str,
    pub name: Option<&'a str>,
    pub subresource: Option<&'a str>,
}

impl Access<'_> {
    fn describe(&self) -> String {
        let resource = match self.subresource {
            Some(sub) => format!("oauthapps/{sub}"),
            None => "oauthapps".into(),
        };
        let target = match self.name {
            Some(name) => format!(" {name}"),
            None => String::new(),
        };
        format!("{} {resource}{target} in namespace {}", self.verb, self.namespace)
    }
}

pub struct Authenticator {
    client: Client,
    tokens: TtlCache<Option<Caller>>,
    access: TtlCache<bool>,
}

impl Authenticator {
    pub fn new(client: Client, ttl: Duration) -> Self {
        Self {
            client,
            tokens: TtlCache::new(ttl),
            access: TtlCache::new(ttl),
        }
    }

    /// The caller behind the request's `Authorization: Bearer` token; 401 without a valid one.
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
        before_review: impl FnOnce() -> Result<(), ApiError>,
    ) -> Result<Caller, ApiError> {
        let token = bearer_token(headers)?;
        let key: Key = Sha256::digest(token.as_bytes()).into();
        let caller = self
            .tokens
            .get_or_fetch(key, || async {
                before_review()?;
                self.review_token(token).await
            })
            .await?;
        caller
            .ok_or_else(|| ApiError::unauthorized("the bearer token is not valid (TokenReview rejected it)"))
    }

    async fn review_token(&self, token: &str) -> Result<Option<Caller>, ApiError> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_string(),
                audiences: None,
            },
            ..Default::default()
        };
        let answer = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| ApiError::from_kube("TokenReview", &e))?;
        let status = answer.status.unwrap_or_default();
        let user = status.user.filter(|_| status.authenticated == Some(true));
        let Some(user) = user.filter(|u| u.username.as_deref().is_some_and(|n| !n.is_empty())) else {
            debug!("TokenReview: token not authenticated");
            return Ok(None);
        };
        let identity = Sha256::digest(serde_json::to_vec(&user).unwrap_or_default()).into();
        Ok(Some(Caller {
            username: user.username.clone().unwrap_or_default(),
            user,
            identity,
        }))
    }

    /// Whether RBAC lets `caller` do `access` (a `SubjectAccessReview`).
    pub async fn allowed(&self, caller: &Caller, access: Access<'_>) -> Result<bool, ApiError> {
        let mut hasher = Sha256::new();
        hasher.update(caller.identity);
        for part in [
            access.verb,
            access.namespace,
            access.name.unwrap_or(""),
            access.subresource.unwrap_or(""),
        ] {
            // Length-prefixed, so no two different accesses hash the same bytes.
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part.as_bytes());
        }
        let key: Key = hasher.finalize().into();
        self.access
            .get_or_fetch(key, || self.review_access(caller, access))
            .await
    }

    /// Like [`Self::allowed`], answering 403 when RBAC says no.
    pub async fn authorize(&self, caller: &Caller, access: Access<'_>) -> Result<(), ApiError> {
        if self.allowed(caller, access).await? {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "{} may not {}",
                caller.username,
                access.describe()
            )))
        }
    }

    async fn review_access(&self, caller: &Caller, access: Access<'_>) -> Result<bool, ApiError> {
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: caller.user.username.clone(),
                uid: caller.user.uid.clone(),
                groups: caller.user.groups.clone(),
                extra: caller.user.extra.clone(),
                resource_attributes: Some(ResourceAttributes {
                    group: Some(GROUP.into()),
                    resource: Some("oauthapps".into()),
                    subresource: access.subresource.map(Into::into),
                    verb: Some(access.verb.into()),
                    namespace: Some(access.namespace.into()),
                    name: access.name.map(Into::into),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let answer = Api::<SubjectAccessReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| ApiError::from_kube("SubjectAccessReview", &e))?;
        let allowed = answer.status.is_some_and(|s| s.allowed);
        debug!(user = %caller.username, access = %access.describe(), allowed, "SubjectAccessReview");
        Ok(allowed)
    }
}

/// The token of an `Authorization: Bearer <token>` header; 401 when there is none.
pub fn bearer_token(headers: &HeaderMap) -> Result<&str, ApiError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer <token> header"))?;
    let value = value
        .to_str()
        .map_err(|_| ApiError::unauthorized("the Authorization header is not valid ASCII"))?;
    let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(ApiError::unauthorized(
            "the Authorization header must be `Bearer <token>`",
        ));
    }
    if token.len() > MAX_TOKEN_LEN {
        return Err(ApiError::unauthorized("the bearer token is too long"));
    }
    Ok(token)
}

/// Answers kept for a while; concurrent misses for one key share one fetch, and a failed fetch
/// is not kept.
struct TtlCache<V> {
    ttl: Duration,
    entries: Mutex<HashMap<Key, Slot<V>>>,
}

struct Slot<V> {
    created: Instant,
    value: Arc<OnceCell<V>>,
}

impl<V: Clone> TtlCache<V> {
    fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    async fn get_or_fetch<F, Fut>(&self, key: Key, fetch: F) -> Result<V, ApiError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, ApiError>>,
    {
        let cell = {
            let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            match entries.get(&key) {
                Some(slot) if slot.created.elapsed() < self.ttl || !slot.value.initialized() => {
                    slot.value.clone()
                }
                _ => {
                    if entries.len() >= MAX_ENTRIES {
                        let ttl = self.ttl;
                        entries.retain(|_, s| s.created.elapsed() < ttl);
                        if entries.len() >= MAX_ENTRIES {
                            entries.clear();
                        }
                    }
                    let value = Arc::new(OnceCell::new());
                    entries.insert(
                        key,
                        Slot {
                            created: Instant::now(),
                            value: value.clone(),
                        },
                    );
                    value
                }
            }
        };
        cell.get_or_try_init(fetch).await.cloned()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::http::HeaderValue;

    use super::*;

    fn headers(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(auth).expect("header"),
        );
        h
    }

    #[test]
    fn only_a_bearer_token_is_accepted() {
        assert_eq!(bearer_token(&headers("Bearer abc")).ok(), Some("abc"));
        assert_eq!(bearer_token(&headers("bearer  abc ")).ok(), Some("abc"));
        assert!(bearer_token(&headers("Basic abc")).is_err());
        assert!(bearer_token(&headers("Bearer ")).is_err());
        assert!(bearer_token(&headers("Bearer")).is_err());
        assert!(bearer_token(&HeaderMap::new()).is_err());
        let long = format!("Bearer {}", "a".repeat(MAX_TOKEN_LEN + 1));
        assert!(bearer_token(&headers(&long)).is_err());
    }

    #[tokio::test]
    async fn a_burst_of_misses_fetches_once_and_the_answer_expires() {
        let cache = TtlCache::<u32>::new(Duration::from_millis(200));
        let fetches = AtomicUsize::new(0);
        let fetch = || async {
            fetches.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok(7)
        };
        let answers = futures::future::join_all((0..10).map(|_| cache.get_or_fetch([1; 32], fetch))).await;
        assert!(answers.iter().all(|a| matches!(a, Ok(7))));
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
        tokio::time::sleep(Duration::from_millis(250)).await;
        cache.get_or_fetch([1; 32], fetch).await.expect("fetch");
        assert_eq!(
            fetches.load(Ordering::SeqCst),
            2,
            "expired answers are fetched again"
        );
    }

    #[tokio::test]
    async fn a_failed_fetch_is_not_kept() {
        let cache = TtlCache::<u32>::new(Duration::from_secs(60));
        let failed = cache
            .get_or_fetch([2; 32], || async { Err(ApiError::unavailable("down")) })
            .await;
        assert!(failed.is_err());
        let ok = cache.get_or_fetch([2; 32], || async { Ok(3) }).await;
        assert_eq!(ok.ok(), Some(3));
    }
}
