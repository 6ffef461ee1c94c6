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
use crate::model::crd::GROUP;

/// Tokens longer than this are refused without a review (service account tokens are ~1 KiB).
const MAX_TOKEN_LEN: usize = 8 * 1024;
/// Answers kept per cache (callers, refused tokens, access reviews). Past it, expired answers
/// go first, then the oldest; refused tokens have a cache of their own, so a flood of bad tokens
/// never evicts a known caller.
const MAX_ENTRIES: usize = 10_000;
/// How long a caller whose answer expired is still "known": its next review is a renewal, which
/// takes from the renewal bucket (that unknown tokens cannot drain), not the unknown-token ones.
const KNOWN_FOR: Duration = Duration::from_secs(3600);

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

/// Which bucket a TokenReview takes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Review {
    /// The token authenticated before and its answer expired.
    Renewal,
    /// A token not seen (recently), or refused before.
    Unknown,
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
    /// Audiences a token must be meant for (`--api-audiences`); empty: the API server's own.
    audiences: Vec<String>,
    tokens: TtlCache<Caller>,
    /// Tokens the API server refused: kept apart, so they never push a known caller out.
    refused: Mutex<HashMap<Key, Instant>>,
    ttl: Duration,
    access: TtlCache<bool>,
}

impl Authenticator {
    pub fn new(client: Client, ttl: Duration, audiences: Vec<String>) -> Self {
        Self {
            client,
            audiences,
            tokens: TtlCache::new(ttl),
            refused: Mutex::new(HashMap::new()),
            ttl,
            access: TtlCache::new(ttl),
        }
    }

    /// The caller behind the request's `Authorization: Bearer` token; 401 without a valid one.
    /// A review the cache cannot answer first passes `before_review`, told whether it renews a
    /// known caller's answer or reviews an unknown token (each has its own rate limit).
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
        before_review: impl FnOnce(Review) -> Result<(), ApiError>,
    ) -> Result<Caller, ApiError> {
        let token = bearer_token(headers)?;
        let key: Key = Sha256::digest(token.as_bytes()).into();
        let refused = || ApiError::unauthorized("the bearer token is not valid (TokenReview rejected it)");
        if self.was_refused(&key) {
            return Err(refused());
        }
        let caller = self
            .tokens
            .get_or_fetch(key, |renewal| async move {
                before_review(if renewal { Review::Renewal } else { Review::Unknown })?;
                self.review_token(token).await
            })
            .await?;
        match caller {
            Some(caller) => Ok(caller),
            None => {
                self.refuse(key);
                Err(refused())
            }
        }
    }

    fn was_refused(&self, key: &Key) -> bool {
        let refused = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        refused.get(key).is_some_and(|at| at.elapsed() < self.ttl)
    }

    /// Remembers a refused token for the TTL; bounded by [`MAX_ENTRIES`] (expired ones go
    /// first; if all are fresh, all go: they are only refusals, cheap to learn again).
    fn refuse(&self, key: Key) {
        let mut refused = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        if refused.len() >= MAX_ENTRIES {
            let ttl = self.ttl;
            refused.retain(|_, at| at.elapsed() < ttl);
            if refused.len() >= MAX_ENTRIES {
                refused.clear();
            }
        }
        refused.insert(key, Instant::now());
    }

    async fn review_token(&self, token: &str) -> Result<Option<Caller>, ApiError> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_string(),
                audiences: (!self.audiences.is_empty()).then(|| self.audiences.clone()),
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
        // The API server answers with the requested audiences the token is meant for: at least
        // one of ours, or it is not for us.
        if !self.audiences.is_empty()
            && !status
                .audiences
                .unwrap_or_default()
                .iter()
                .any(|a| self.audiences.contains(a))
        {
            debug!("TokenReview: token not meant for our audiences");
            return Ok(None);
        }
        Ok(Some(Caller {
            username: user.username.clone().unwrap_or_default(),
            identity: identity_key(&user)?,
            user,
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
        let allowed = self
            .access
            .get_or_fetch(key, |_| async {
                self.review_access(caller, access).await.map(Some)
            })
            .await?;
        Ok(allowed.unwrap_or(false))
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

/// The digest of a whole identity, the caller part of access-review keys. An identity that
/// cannot be serialized fails closed (500): it never falls back to a key others could share.
fn identity_key(user: &UserInfo) -> Result<Key, ApiError> {
    let bytes = serde_json::to_vec(user).map_err(|e| {
        tracing::error!(error = %e, "cannot serialize a TokenReview's user info");
        ApiError::internal()
    })?;
    Ok(Sha256::digest(bytes).into())
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

/// Answers kept for a while; concurrent misses for one key share one fetch. A fetch answers
/// `Some` (kept for the TTL) or `None` (not kept); a failed fetch is not kept either, except that
/// a key whose earlier answer expired stays known (its next fetch is still a renewal).
/// At most [`MAX_ENTRIES`] keys: when full, answers older than [`KNOWN_FOR`] and fetches that
/// never finished go first, then the oldest answers.
struct TtlCache<V> {
    ttl: Duration,
    entries: Mutex<HashMap<Key, Slot<V>>>,
}

struct Slot<V> {
    created: Instant,
    value: Arc<OnceCell<V>>,
    /// An earlier answer for this key was kept: the current fetch renews it.
    renewal: bool,
}

impl<V: Clone> TtlCache<V> {
    fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The cached answer for `key`, or `fetch(renewal)`'s.
    async fn get_or_fetch<F, Fut>(&self, key: Key, fetch: F) -> Result<Option<V>, ApiError>
    where
        F: FnOnce(bool) -> Fut,
        Fut: Future<Output = Result<Option<V>, ApiError>>,
    {
        let (cell, renewal) = {
            let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            match entries.get_mut(&key) {
                Some(slot) if !slot.value.initialized() => (slot.value.clone(), slot.renewal),
                Some(slot) if slot.created.elapsed() < self.ttl => return Ok(slot.value.get().cloned()),
                Some(slot) => {
                    *slot = Slot {
                        created: Instant::now(),
                        value: Arc::new(OnceCell::new()),
                        renewal: true,
                    };
                    (slot.value.clone(), true)
                }
                None => {
                    if entries.len() >= MAX_ENTRIES {
                        make_room(&mut entries);
                    }
                    let value = Arc::new(OnceCell::new());
                    entries.insert(
                        key,
                        Slot {
                            created: Instant::now(),
                            value: value.clone(),
                            renewal: false,
                        },
                    );
                    (value, false)
                }
            }
        };
        let answer = cell
            .get_or_try_init(|| async {
                match fetch(renewal).await {
                    Ok(Some(v)) => Ok(v),
                    Ok(None) => Err(None),
                    Err(e) => Err(Some(e)),
                }
            })
            .await
            .cloned();
        match answer {
            Ok(v) => Ok(Some(v)),
            Err(failed) => {
                let refused = failed.is_none();
                let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(slot) = entries.get(&key)
                    && Arc::ptr_eq(&slot.value, &cell)
                    && !cell.initialized()
                    && (refused || !slot.renewal)
                {
                    entries.remove(&key);
                }
                failed.map_or(Ok(None), Err)
            }
        }
    }
}

/// Drops fetches that never finished and answers older than [`KNOWN_FOR`]; then, while more
/// than 90 % full, the oldest answers.
fn make_room<V>(entries: &mut HashMap<Key, Slot<V>>) {
    entries.retain(|_, s| s.value.initialized() && s.created.elapsed() < KNOWN_FOR);
    let keep = MAX_ENTRIES * 9 / 10;
    if entries.len() > keep {
        let mut ages: Vec<(Instant, Key)> = entries.iter().map(|(k, s)| (s.created, *k)).collect();
        ages.sort_unstable();
        for (_, key) in ages.into_iter().take(entries.len() - keep) {
            entries.remove(&key);
        }
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
    async fn a_burst_of_misses_fetches_once_and_the_answer_expires_into_a_renewal() {
        let cache = TtlCache::<u32>::new(Duration::from_millis(200));
        let fetches = AtomicUsize::new(0);
        let fetch = |renewal: bool| {
            let fetches = &fetches;
            async move {
                fetches.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
                Ok(Some(if renewal { 8 } else { 7 }))
            }
        };
        let answers = futures::future::join_all((0..10).map(|_| cache.get_or_fetch([1; 32], fetch))).await;
        assert!(answers.iter().all(|a| matches!(a, Ok(Some(7)))));
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
        tokio::time::sleep(Duration::from_millis(250)).await;
        let renewed = cache.get_or_fetch([1; 32], fetch).await.expect("fetch");
        assert_eq!(
            renewed,
            Some(8),
            "an expired answer is fetched again, as a renewal"
        );
        assert_eq!(fetches.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_failed_fetch_is_not_kept_but_a_failed_renewal_stays_a_renewal() {
        let cache = TtlCache::<u32>::new(Duration::from_millis(100));
        let failed = cache
            .get_or_fetch([2; 32], |_| async { Err(ApiError::unavailable("down")) })
            .await;
        assert!(failed.is_err());
        let first = cache.get_or_fetch([2; 32], |renewal| async move { Ok(Some(u32::from(renewal))) });
        assert_eq!(
            first.await.ok(),
            Some(Some(0)),
            "a failed first fetch left nothing behind"
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
        let failed = cache
            .get_or_fetch([2; 32], |_| async { Err(ApiError::too_many_requests("busy", 1)) })
            .await;
        assert!(failed.is_err());
        let again = cache.get_or_fetch([2; 32], |renewal| async move { Ok(Some(u32::from(renewal))) });
        assert_eq!(
            again.await.ok(),
            Some(Some(1)),
            "still a renewal after a failed one"
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
        let refused = cache.get_or_fetch([2; 32], |_| async { Ok(None) }).await;
        assert_eq!(refused.ok(), Some(None));
        let unknown = cache.get_or_fetch([2; 32], |renewal| async move { Ok(Some(u32::from(renewal))) });
        assert_eq!(
            unknown.await.ok(),
            Some(Some(0)),
            "a refused renewal forgets the key"
        );
    }

    #[tokio::test]
    async fn refused_tokens_never_push_known_callers_out() {
        let cache = TtlCache::<u32>::new(Duration::from_secs(60));
        cache
            .get_or_fetch([3; 32], |_| async { Ok(Some(1)) })
            .await
            .expect("known");
        for i in 0..(MAX_ENTRIES as u32 * 2) {
            let mut key = [0; 32];
            key[..4].copy_from_slice(&i.to_be_bytes());
            key[31] = 0xff;
            let refused = cache.get_or_fetch(key, |_| async { Ok(None) }).await;
            assert_eq!(refused.ok(), Some(None));
        }
        let cached = cache.get_or_fetch([3; 32], |_| async { Ok(Some(99)) }).await;
        assert_eq!(cached.ok(), Some(Some(1)), "the known answer is still cached");
        assert!(
            cache.entries.lock().expect("lock").len() <= 1,
            "refusals are not kept here"
        );
    }

    #[tokio::test]
    async fn the_answer_caches_are_bounded() {
        let cache = TtlCache::<u32>::new(Duration::from_secs(60));
        for i in 0..(MAX_ENTRIES as u32 + 100) {
            let mut key = [0; 32];
            key[..4].copy_from_slice(&i.to_be_bytes());
            cache
                .get_or_fetch(key, |_| async { Ok(Some(1)) })
                .await
                .expect("fetch");
        }
        assert!(cache.entries.lock().expect("lock").len() <= MAX_ENTRIES);
    }

    #[test]
    fn the_refused_cache_is_bounded() {
        // A client that is never used: no request is sent.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let _enter = rt.enter();
        let client =
            Client::try_from(kube::Config::new("http://127.0.0.1:1".parse().expect("uri"))).expect("client");
        let auth = Authenticator::new(client, Duration::from_secs(60), vec![]);
        for i in 0..(MAX_ENTRIES as u32 + 5) {
            let mut key = [0; 32];
            key[..4].copy_from_slice(&i.to_be_bytes());
            auth.refuse(key);
        }
        assert!(auth.refused.lock().expect("lock").len() <= MAX_ENTRIES);
    }
}
