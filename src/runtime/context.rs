//! State shared by the controller and the REST API of one operator process.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use kube::Client;
use kube::runtime::events::{Recorder, Reporter};

impl Context {
    /// The key that signs rotation records. The controller starts and the REST API rotates only
    /// once it is loaded, so this fails only on a bug.
    pub fn record_key(&self) -> Result<RecordKey, Error> {
        self.record_key
            .get()
            .ok_or_else(|| Error::Internal("the rotation-record signing key is not loaded yet".into()))
    }

    /// A recorder for one Event. Each Event is its own: a shared `Recorder` would fold a second
    /// rotation within minutes into the first one's series and lose its note (hint, trigger,
    /// caller), which the audit trail needs.
    pub fn recorder(&self) -> Recorder {
        Recorder::new(self.client.clone(), self.reporter.clone())
    }
}

use crate::model::record::{KeyCell, RecordKey};
use crate::model::status::ContentCheck;
use crate::runtime::error::Error;
use crate::runtime::hasher::Hasher;
use crate::runtime::metrics::Metrics;

pub struct Context {
    pub client: Client,
    pub hasher: Hasher,
    /// Signs the rotation records on Secrets, and checks them before they are believed (loaded
    /// in the background at start).
    pub record_key: KeyCell,
    /// Who publishes the operator's Events.
    pub reporter: Reporter,
    pub metrics: Arc<Metrics>,
    /// Serializes work on one app inside this process (controller and API alike). Across
    /// processes, resourceVersion preconditions do the same job.
    pub locks: AppLocks,
    /// Content checks already made, so an unchanged Secret is verified once.
    pub verified: VerifiedCache,
    /// This process's own writes that the watches may not have shown yet.
    pub own_writes: OwnWrites,
    /// Test-only fault injection (`OAUTHAPP_FAILPOINT`), e.g. `pause-after-secret-write`. Read
    /// only in builds with the `failpoints` feature (the integration tests'); None otherwise.
    pub failpoint: Option<String>,
    /// Work that outlives the request that started it (Events being published): a shutdown
    /// waits for it, within its timeout, so an audit Event is not lost to a SIGTERM.
    pub background: tokio_util::task::TaskTracker,
    /// Turns of the Events published in the background
    /// ([`crate::runtime::writes::EVENTS_IN_FLIGHT`] at once).
    pub event_turns: Arc<tokio::sync::Semaphore>,
    /// Whether the controller may write (closed while this replica does not lead).
    pub leadership: crate::runtime::leader::Leadership,
    /// The operator-wide limit on scheduled rotations (`--max-scheduled-rotations-per-second`).
    pub scheduled_rotations: crate::runtime::scheduled::ScheduledRotations,
    /// Records re-signed with a new key of the ring, at most [`RESIGNS_PER_SECOND`]: a new key
    /// moves every record over in the background, never as a burst of writes.
    pub resigns: governor::DefaultDirectRateLimiter,
    /// The brake on mass repair (crate::runtime::repairs).
    pub repairs: crate::runtime::repairs::RepairBrake,
    /// Repairs start in turn, at most `--max-repairs-per-second`.
    pub repair_turns: crate::runtime::scheduled::ScheduledRotations,
    /// This installation (`<namespace>/<record key Secret>`): recorded on every app it manages;
    /// an app recorded for another is left alone.
    pub installation: String,
    /// The newest rotation of each deleted app's name (crate::runtime::ledger).
    pub ledger: Arc<crate::runtime::ledger::Ledger>,
    /// What this process knows of its apps' identity providers (checks, backoffs, providers
    /// found unreachable).
    pub providers: Arc<crate::runtime::providers::State>,
}

/// Repairs started per second at most, by default.
pub const DEFAULT_REPAIRS_PER_SECOND: f64 = 5.0;

/// Records re-signed per second at most, operator-wide, after a new key joins the ring.
pub const RESIGNS_PER_SECOND: std::num::NonZeroU32 = std::num::NonZeroU32::new(10).unwrap();

impl Context {
    pub fn new(client: Client, hasher: Hasher, metrics: Arc<Metrics>, instance: String) -> Self {
        let reporter = Reporter {
            controller: crate::model::crd::MANAGER.into(),
            instance: Some(instance),
        };
        let scheduled_rotations = crate::runtime::scheduled::ScheduledRotations::new(
            crate::runtime::scheduled::DEFAULT_MAX_PER_SECOND,
            Some(metrics.clone()),
        );
        Self {
            reporter,
            client,
            hasher,
            record_key: KeyCell::default(),
            metrics,
            locks: AppLocks::default(),
            verified: VerifiedCache::default(),
            own_writes: OwnWrites::default(),
            failpoint: failpoint_from_env(),
            background: tokio_util::task::TaskTracker::new(),
            event_turns: Arc::new(tokio::sync::Semaphore::new(
                crate::runtime::writes::EVENTS_IN_FLIGHT,
            )),
            leadership: crate::runtime::leader::Leadership::default(),
            scheduled_rotations,
            resigns: governor::RateLimiter::direct(governor::Quota::per_second(RESIGNS_PER_SECOND)),
            repairs: crate::runtime::repairs::RepairBrake::new(
                crate::runtime::repairs::BrakeSettings::default(),
            ),
            repair_turns: crate::runtime::scheduled::ScheduledRotations::new(
                DEFAULT_REPAIRS_PER_SECOND,
                None,
            ),
            installation: String::new(),
            ledger: Arc::default(),
            providers: Arc::default(),
        }
    }

    /// The installation this process belongs to (the caches keep its name once:
    /// [`crate::runtime::cached::share_installation`]).
    pub fn with_installation(mut self, installation: String) -> Self {
        crate::runtime::cached::share_installation(&installation);
        self.installation = installation;
        self
    }

    /// Repairs start at most `per_second`, in turn, and the brake holds them past `brake`.
    pub fn with_repairs(mut self, per_second: f64, brake: crate::runtime::repairs::BrakeSettings) -> Self {
        self.repair_turns = crate::runtime::scheduled::ScheduledRotations::new(per_second, None);
        self.repairs = crate::runtime::repairs::RepairBrake::new(brake);
        self
    }

    /// At most `per_second` scheduled rotations start per second, operator-wide.
    pub fn with_max_scheduled_rotations_per_second(mut self, per_second: f64) -> Self {
        self.scheduled_rotations =
            crate::runtime::scheduled::ScheduledRotations::new(per_second, Some(self.metrics.clone()));
        self
    }
}

#[cfg(feature = "failpoints")]
fn failpoint_from_env() -> Option<String> {
    std::env::var("OAUTHAPP_FAILPOINT").ok().filter(|v| !v.is_empty())
}

#[cfg(not(feature = "failpoints"))]
fn failpoint_from_env() -> Option<String> {
    None
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

    /// True while a task of this process holds the app's lock (a rotation is being written).
    pub fn is_held(&self, key: &str) -> bool {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.get(key)
            .and_then(Weak::upgrade)
            .is_some_and(|lock| lock.try_lock().is_err())
    }
}

/// Remembers, per Secret, the resourceVersion, the hash and a digest of the content
/// ([`content_digest`]) at which its content was checked. A new version with the same content (a
/// label, an annotation, a tool's tracking mark) needs no new argon2 check.
/// Bounded by the operator's Secrets that exist: [`VerifiedCache::forget_deleted`] drops the
/// others.
///
/// Every Secret the operator writes has an entry until a restart (its write was its check), so
/// an entry is kept small and in the map's own table, with no allocation of its own: 40 bytes,
/// where the Secret's name and version as strings and two full digests took some 160 (16 MiB
/// at 100,000 apps).
#[derive(Default)]
pub struct VerifiedCache(Mutex<Verified>);

#[derive(Default)]
struct Verified {
    /// By [`Verified::slot`] of the Secret's `namespace/name`.
    checks: HashMap<u64, Checked>,
    /// Keys the slots: names are chosen by tenants, so none collide on purpose. Two Secrets
    /// that do share a slot only take turns in it: an entry answers only for its own
    /// resourceVersion and hash, which no other Secret has.
    slots: std::hash::RandomState,
}

/// One check. `checked` is a SHA-256 over the PHC string and the content together, truncated
/// to 128 bits: finding other content (or another PHC string) with the same 128 bits to pass a
/// check it did not have is beyond reach. `hash_tag` (32 bits of the PHC string's) is a
/// consistency check at the same version only: a resourceVersion names one state of one
/// object, so the version is what binds a check to its content there.
struct Checked {
    version: u64,
    checked: [u8; 16],
    hash_tag: u32,
    version_digest: bool,
    check: ContentCheck,
}

/// A resourceVersion as a check keeps it, and whether that is a digest: the API server's are
/// decimal numbers (etcd revisions), kept as such (`false`); any other as a keyed 64-bit digest
/// (`true`; equal to another only by chance, one in 2^64). Two fields of [`Checked`]
/// (`version`, `version_digest`), so that they pack with the others.
type Version = (u64, bool);

impl Verified {
    /// The keyed 64-bit hash of `text`.
    fn keyed(&self, text: &str) -> u64 {
        use std::hash::{BuildHasher, Hasher};
        let mut h = self.slots.build_hasher();
        h.write(text.as_bytes());
        h.finish()
    }

    fn slot(&self, key: &str) -> u64 {
        self.keyed(key)
    }

    fn version(&self, resource_version: &str) -> Version {
        match resource_version.parse::<u64>() {
            Ok(n) if n.to_string() == resource_version => (n, false),
            _ => (self.keyed(resource_version), true),
        }
    }
}

/// 32 bits of the PHC string a check was made against.
fn hash_tag(hash: &str) -> u32 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(hash.as_bytes());
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// What a check remembers of the PHC string and the content ([`content_digest`]) it was made
/// of: one digest of both (length-prefixed PHC string, then the content's digest).
fn checked_digest(hash: &str, content: &[u8; 32]) -> [u8; 16] {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new()
        .chain_update((hash.len() as u64).to_be_bytes())
        .chain_update(hash.as_bytes())
        .chain_update(content)
        .finalize();
    let mut out = [0; 16];
    out.copy_from_slice(&digest[..16]);
    out
}

/// A SHA-256 over a Secret's `client_id` and `client_secret` (length-prefixed): what a content
/// check looks at. Never the plaintext itself; a 256-bit random secret cannot be found from it.
pub fn content_digest(
    data: Option<&std::collections::BTreeMap<String, k8s_openapi::ByteString>>,
) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut digest = Sha256::new();
    for key in [
        crate::model::crd::CLIENT_ID_KEY,
        crate::model::crd::CLIENT_SECRET_KEY,
    ] {
        let value = data.and_then(|d| d.get(key)).map(|b| b.0.as_slice());
        match value {
            Some(v) => {
                digest.update([1]);
                digest.update((v.len() as u64).to_be_bytes());
                digest.update(v);
            }
            None => digest.update([0]),
        }
    }
    digest.finalize().into()
}

impl VerifiedCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, Verified> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The check made at this exact version and hash.
    pub fn get(&self, key: &str, resource_version: &str, hash: &str) -> Option<ContentCheck> {
        let map = self.lock();
        let version = map.version(resource_version);
        map.checks
            .get(&map.slot(key))
            .filter(|c| (c.version, c.version_digest) == version && c.hash_tag == hash_tag(hash))
            .map(|c| c.check)
    }

    /// The check made of the same content and hash at another version; remembered for
    /// `resource_version` too.
    pub fn get_same_content(
        &self,
        key: &str,
        resource_version: &str,
        hash: &str,
        content: &[u8; 32],
    ) -> Option<ContentCheck> {
        let mut map = self.lock();
        let (slot, version) = (map.slot(key), map.version(resource_version));
        let checked = map
            .checks
            .get_mut(&slot)
            .filter(|c| c.checked == checked_digest(hash, content))?;
        checked.hash_tag = hash_tag(hash);
        (checked.version, checked.version_digest) = version;
        Some(checked.check)
    }

    pub fn put(&self, key: &str, resource_version: &str, hash: &str, content: [u8; 32], check: ContentCheck) {
        let mut map = self.lock();
        let (slot, version) = (map.slot(key), map.version(resource_version));
        map.checks.insert(
            slot,
            Checked {
                version: version.0,
                version_digest: version.1,
                checked: checked_digest(hash, &content),
                hash_tag: hash_tag(hash),
                check,
            },
        );
    }

    pub fn forget(&self, key: &str) {
        let mut map = self.lock();
        let slot = map.slot(key);
        map.checks.remove(&slot);
    }

    /// Keeps only the checks of the Secrets `live` (each `namespace/name`).
    pub fn retain<S: AsRef<str>>(&self, live: impl IntoIterator<Item = S>) {
        let mut map = self.lock();
        let keep: std::collections::HashSet<u64> = live.into_iter().map(|k| map.slot(k.as_ref())).collect();
        map.checks.retain(|slot, _| keep.contains(slot));
        if crate::runtime::store::worth_shrinking(map.checks.len(), map.checks.capacity()) {
            let len = map.checks.len();
            map.checks.shrink_to(len * 2);
        }
    }

    /// Forgets the check of every Secret the watches see deleted (with its app, or alone),
    /// until `shutdown`: so this cache holds at most one entry per operator Secret that exists.
    /// After a relist or a lag (deletions may have been missed), keeps only the Secrets cached.
    pub async fn forget_deleted(
        &self,
        watches: &crate::runtime::watches::Watches,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        use futures::StreamExt;

        let cached = |key: &str| {
            let (ns, name) = key.split_once('/').unwrap_or(("", key));
            watches
                .scopes
                .iter()
                .any(|scope| scope.secrets.lookup(ns, name).is_some())
        };
        let mut changes = futures::stream::select_all(
            watches
                .scopes
                .iter()
                .map(|scope| Box::pin(scope.secret_changes())),
        );
        loop {
            let change = tokio::select! {
                () = shutdown.cancelled() => return,
                change = changes.next() => change,
            };
            match change {
                None => return,
                Some(crate::runtime::watches::Change::Missed) => self.retain(
                    watches
                        .secrets()
                        .iter()
                        .map(|secret| format!("{}/{}", secret.namespace(), secret.name())),
                ),
                Some(crate::runtime::watches::Change::Object(secret)) => {
                    let key = format!("{}/{}", secret.namespace(), secret.name());
                    // A delete event leaves the object out of the cache (applied first).
                    if !cached(&key) {
                        self.forget(&key);
                    }
                }
            }
        }
    }
}

/// Per object (`OAuthApp ns/name` or `Secret ns/name`), the resourceVersion that this
/// process's last write of it replaced (empty for a create).
///
/// Right after a rotation the watch events of the Secret and of the app arrive in either order:
/// one cache still holds the version before our write, and the planner asks for a write that
/// was already made. When a cached object is exactly the version our own successful write
/// replaced, the cache is behind that write, and the write's own watch event (which reconciles
/// the app again) is on its way: no need to take the lock and re-read both objects (two GETs
/// per rotation).
/// An entry counts for [`OWN_WRITE_TTL`] at most: a watch event normally follows a write within
/// milliseconds, and one the cache never shows (the object was deleted, or changed out of the
/// watch's selector, before this process looked) must not hold the app back for good.
#[derive(Default)]
pub struct OwnWrites(Mutex<HashMap<String, (String, Instant)>>);

/// Entries kept before all are dropped (dropping one only costs a re-read).
const MAX_OWN_WRITES: usize = 4096;
/// How long an own write may stay unseen before the cache is taken at its word again.
pub const OWN_WRITE_TTL: Duration = Duration::from_secs(10);

impl OwnWrites {
    /// Records that our write of `object` replaced version `replaced` ("" for a create).
    pub fn put(&self, object: String, replaced: &str) {
        self.put_at(object, replaced, Instant::now());
    }

    fn put_at(&self, object: String, replaced: &str, now: Instant) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_OWN_WRITES {
            map.clear();
        }
        map.insert(object, (replaced.to_string(), now));
    }

    /// True when `cached` ("" for none) is the version our last write of `object` replaced, and
    /// that write is recent: the cache lags it. Any other version means the watch has moved on:
    /// the entry goes, as it does once it is older than [`OWN_WRITE_TTL`].
    pub fn lagging(&self, object: &str, cached: &str) -> bool {
        self.lagging_at(object, cached, Instant::now())
    }

    fn lagging_at(&self, object: &str, cached: &str, now: Instant) -> bool {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(object) {
            Some((replaced, at)) if replaced == cached && now.duration_since(*at) < OWN_WRITE_TTL => true,
            Some(_) => {
                map.remove(object);
                false
            }
            None => false,
        }
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
        assert!(locks.is_held("ns/a"));
        assert!(!locks.is_held("ns/c"));
        drop(held);
        assert!(!locks.is_held("ns/a"));
        let _again = locks.lock("ns/a").await;
    }

    #[test]
    fn only_the_version_our_write_replaced_lags_it() {
        let writes = OwnWrites::default();
        assert!(!writes.lagging("OAuthApp ns/a", "10"));
        writes.put("OAuthApp ns/a".into(), "10");
        assert!(writes.lagging("OAuthApp ns/a", "10"));
        assert!(!writes.lagging("OAuthApp ns/b", "10"));
        // The watch showed a newer version: the entry is gone, even for the old version.
        assert!(!writes.lagging("OAuthApp ns/a", "11"));
        assert!(!writes.lagging("OAuthApp ns/a", "10"));
        // A create replaced nothing: a cache without the object lags it.
        writes.put("Secret ns/a".into(), "");
        assert!(writes.lagging("Secret ns/a", ""));
        assert!(!writes.lagging("Secret ns/a", "12"));
    }

    #[test]
    fn an_own_write_the_cache_never_shows_stops_counting_after_a_while() {
        // Our create's watch event was folded away: the Secret was deleted before the cache
        // showed it, so the cache shows "none" again, which is what the create replaced.
        let writes = OwnWrites::default();
        let t0 = Instant::now();
        writes.put_at("Secret ns/a".into(), "", t0);
        assert!(writes.lagging_at("Secret ns/a", "", t0 + OWN_WRITE_TTL / 2));
        assert!(!writes.lagging_at("Secret ns/a", "", t0 + OWN_WRITE_TTL));
        assert!(!writes.lagging_at("Secret ns/a", "", t0), "the entry is gone");
    }

    #[test]
    fn a_check_counts_only_for_the_same_version_and_hash() {
        let cache = VerifiedCache::default();
        let ok = ContentCheck {
            secret_ok: true,
            client_id_ok: true,
        };
        cache.put("ns/s", "10", "h1", [1; 32], ok);
        assert_eq!(cache.get("ns/s", "10", "h1"), Some(ok));
        assert_eq!(cache.get("ns/s", "11", "h1"), None);
        assert_eq!(cache.get("ns/s", "010", "h1"), None, "another version's text");
        assert_eq!(cache.get("ns/s", "10", "h2"), None);
        assert_eq!(cache.get("ns/t", "10", "h1"), None, "another Secret");
        // A version that is not a number counts by its text too.
        cache.put("ns/u", "v-7", "h1", [1; 32], ok);
        assert_eq!(cache.get("ns/u", "v-7", "h1"), Some(ok));
        assert_eq!(cache.get("ns/u", "v-8", "h1"), None);
        assert_eq!(cache.get("ns/u", "7", "h1"), None);
    }

    #[test]
    fn a_check_is_kept_in_the_table_in_40_bytes() {
        // No allocation per entry: the Secret's slot, version and digests are all inline.
        assert!(std::mem::size_of::<(u64, Checked)>() <= 40);
    }

    #[test]
    fn a_new_version_with_the_same_content_needs_no_new_check() {
        let cache = VerifiedCache::default();
        let ok = ContentCheck {
            secret_ok: true,
            client_id_ok: true,
        };
        let data = |secret: &str| {
            std::collections::BTreeMap::from([
                (
                    "client_id".to_string(),
                    k8s_openapi::ByteString(b"portal".to_vec()),
                ),
                (
                    "client_secret".to_string(),
                    k8s_openapi::ByteString(secret.as_bytes().to_vec()),
                ),
            ])
        };
        let content = content_digest(Some(&data("oas_a")));
        cache.put("ns/s", "10", "h1", content, ok);
        // A label edit: version 11, same data.
        assert_eq!(cache.get("ns/s", "11", "h1"), None);
        assert_eq!(cache.get_same_content("ns/s", "11", "h1", &content), Some(ok));
        assert_eq!(
            cache.get("ns/s", "11", "h1"),
            Some(ok),
            "remembered for the new version"
        );
        // Another secret, or another hash, is checked again.
        let other = content_digest(Some(&data("oas_b")));
        assert_ne!(other, content);
        assert_eq!(cache.get_same_content("ns/s", "12", "h1", &other), None);
        assert_eq!(cache.get_same_content("ns/s", "12", "h2", &content), None);
        assert_eq!(cache.get("ns/s", "11", "h2"), None, "another hash at the version");
        assert_ne!(content_digest(None), content);
    }

    #[test]
    fn checks_of_secrets_that_no_longer_exist_are_forgotten() {
        let cache = VerifiedCache::default();
        let ok = ContentCheck {
            secret_ok: true,
            client_id_ok: true,
        };
        cache.put("ns/a", "1", "h", [0; 32], ok);
        cache.put("ns/b", "1", "h", [0; 32], ok);
        cache.retain(["ns/a"]);
        assert_eq!(cache.get("ns/a", "1", "h"), Some(ok));
        assert_eq!(cache.get("ns/b", "1", "h"), None);
        cache.forget("ns/a");
        assert_eq!(cache.get("ns/a", "1", "h"), None);
    }
}
