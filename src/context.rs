//! State shared by the controller and the REST API of one operator process.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use kube::Client;
use kube::runtime::events::{Recorder, Reporter};

impl Context {
    /// A recorder for one Event. Each Event is its own: a shared `Recorder` would fold a second
    /// rotation within minutes into the first one's series and lose its note (hint, trigger,
    /// caller), which the audit trail needs.
    pub fn recorder(&self) -> Recorder {
        Recorder::new(self.client.clone(), self.reporter.clone())
    }
}

use crate::controller::plan::ContentCheck;
use crate::hasher::Hasher;
use crate::metrics::Metrics;

pub struct Context {
    pub client: Client,
    pub hasher: Hasher,
    /// Who publishes the operator's Events.
    pub reporter: Reporter,
    pub metrics: Arc<Metrics>,
    /// Serializes work on one app inside this process (controller and API alike). Across
    /// processes, resourceVersion preconditions do the same job.
    pub locks: AppLocks,
    /// Content checks already made, so an unchanged Secret is verified once.
    pub verified: VerifiedCache,
    /// Test-only fault injection (`OAUTHAPP_FAILPOINT`), e.g. `pause-after-secret-write`.
    pub failpoint: Option<String>,
}

impl Context {
    pub fn new(client: Client, hasher: Hasher, metrics: Arc<Metrics>, instance: String) -> Self {
        let reporter = Reporter {
            controller: crate::crd::MANAGER.into(),
            instance: Some(instance),
        };
        Self {
            reporter,
            client,
            hasher,
            metrics,
            locks: AppLocks::default(),
            verified: VerifiedCache::default(),
            failpoint: std::env::var("OAUTHAPP_FAILPOINT").ok().filter(|v| !v.is_empty()),
        }
    }
}

/// One async mutex per app key, created on demand and dropped when nobody holds it.
#[derive(Default)]
pub struct AppLocks(Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>);

impl AppLocks {
    pub async fn lock(&self, key: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
            match map.get(key).and_then(Weak::upgrade) {
                Some(lock) => lock,
                None => {
                    if map.len() >= 1024 {
                        map.retain(|_, w| w.strong_count() > 0);
                    }
                    let lock = Arc::new(tokio::sync::Mutex::new(()));
                    map.insert(key.to_string(), Arc::downgrade(&lock));
                    lock
                }
            }
        };
        lock.lock_owned().await
    }
}

/// Remembers, per Secret, the resourceVersion and hash at which its content was checked.
#[derive(Default)]
pub struct VerifiedCache(Mutex<HashMap<String, (String, String, ContentCheck)>>);

impl VerifiedCache {
    pub fn get(&self, key: &str, resource_version: &str, hash: &str) -> Option<ContentCheck> {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.get(key)
            .filter(|(rv, h, _)| rv == resource_version && h == hash)
            .map(|(_, _, c)| *c)
    }

    pub fn put(&self, key: &str, resource_version: &str, hash: &str, check: ContentCheck) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.insert(
            key.to_string(),
            (resource_version.to_string(), hash.to_string(), check),
        );
    }

    pub fn forget(&self, key: &str) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_app_is_locked_at_a_time_and_others_are_not_blocked() {
        let locks = AppLocks::default();
        let held = locks.lock("ns/a").await;
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), locks.lock("ns/a"))
                .await
                .is_err()
        );
        let _other = locks.lock("ns/b").await;
        drop(held);
        let _again = locks.lock("ns/a").await;
    }

    #[test]
    fn a_check_counts_only_for_the_same_version_and_hash() {
        let cache = VerifiedCache::default();
        let ok = ContentCheck {
            secret_ok: true,
            client_id_ok: true,
        };
        cache.put("ns/s", "10", "h1", ok);
        assert_eq!(cache.get("ns/s", "10", "h1"), Some(ok));
        assert_eq!(cache.get("ns/s", "11", "h1"), None);
        assert_eq!(cache.get("ns/s", "10", "h2"), None);
    }
}
