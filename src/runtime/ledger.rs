//! What the operator remembers of apps that went away: for each namespace and name, the newest
//! rotation it saw before the app was deleted. An app re-created under that name may adopt a
//! Secret left behind (a retained Secret, a restore); a Secret whose record is older than what
//! the ledger remembers is a copy written back, and its secret was retired: it is drift, never
//! adopted (DESIGN.md, invariant 9).
//!
//! The memory must be one the namespace cannot edit: a ConfigMap in the operator's own
//! namespace (`<record key Secret>-retired`), written only by the operator. Bounded: at most
//! [`MAX_ENTRIES`] names, each kept [`TTL`] at most, the oldest dropped first. Every replica
//! notes the deletions its watch sees and merges them in (the higher rotation count wins, so
//! replicas writing at once lose nothing); every replica reads it back.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::{Client, ResourceExt};
use sha2::{Digest as _, Sha256};
use tokio_util::sync::CancellationToken;

use crate::model::crd::OAuthApp;
use crate::model::record::Retired;

/// Names remembered at most (about 75 bytes each: well inside a ConfigMap's 1 MiB).
pub const MAX_ENTRIES: usize = 8192;
/// How long a deleted app's name is remembered: longer than backups are commonly kept.
pub const TTL: Duration = Duration::from_secs(400 * 24 * 3600);
/// How often the ledger is read back (and pending notes written).
const POLL: Duration = Duration::from_secs(2);

/// One remembered name: its last rotation count and id, when it was noted (Unix seconds) and,
/// for an app that held a `spec.clientId`, that client id's reservation for its namespace (both
/// as digests).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    count: i64,
    rotation_id: String,
    at: i64,
    reserves: Option<(String, String)>,
}

impl Entry {
    fn parse(s: &str) -> Option<Self> {
        let mut parts = s.split(' ');
        let mut entry = Self {
            count: parts.next()?.parse().ok()?,
            rotation_id: parts.next()?.to_string(),
            at: parts.next()?.parse().ok()?,
            reserves: None,
        };
        if let Some(client_id) = parts.next() {
            entry.reserves = Some((client_id.to_string(), parts.next()?.to_string()));
        }
        parts.next().is_none().then_some(entry)
    }

    fn render(&self) -> String {
        match &self.reserves {
            Some((client_id, namespace)) => {
                format!(
                    "{} {} {} {client_id} {namespace}",
                    self.count, self.rotation_id, self.at
                )
            }
            None => format!("{} {} {}", self.count, self.rotation_id, self.at),
        }
    }

    /// Whether `self` is newer than `other` (a higher count; the same count noted later).
    fn newer_than(&self, other: &Entry) -> bool {
        (self.count, self.at) > (other.count, other.at)
    }
}

/// A client id kept for the namespace of its last holder ([`Ledger::reserved_for`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reservation {
    /// The namespace, as [`digest`]`("namespace", …)`; empty: no namespace (nobody gets the id).
    pub namespace: String,
    /// The holder, as [`key`]`(namespace, name)`: of the claimants in that namespace, an app of
    /// its name (re-created, restored) gets the id; another app of the namespace only once the
    /// reservation is [`HOLDER_NAME_FIRST`] old and no app of that name asks for it.
    pub holder: String,
    /// When the holder was deleted (Unix seconds).
    pub since: i64,
}

/// How long after its holder's deletion a reserved client id waits for an app of the holder's
/// name (a restore, a GitOps re-creation: all of a namespace's apps come back within it, in no
/// particular order) before another app of the namespace may take it.
pub const HOLDER_NAME_FIRST: Duration = Duration::from_secs(120);

impl Reservation {
    /// Whether an app of the namespace with another name than the holder's may take the id at
    /// `now` (Unix seconds).
    pub fn open_to_the_namespace(&self, now: i64) -> bool {
        now.saturating_sub(self.since) >= HOLDER_NAME_FIRST.as_secs() as i64
    }
}

/// The ledger of one installation.
#[derive(Default)]
pub struct Ledger {
    entries: Mutex<BTreeMap<String, Entry>>,
    /// Noted here and not yet written.
    pending: Mutex<BTreeMap<String, Entry>>,
    loaded: AtomicBool,
}

/// The ledger's key for an app name: a digest (fixed length, a valid ConfigMap key).
pub fn key(namespace: &str, name: &str) -> String {
    let digest = Sha256::new_with_prefix(b"oauthapp.io/ledger\0")
        .chain_update(namespace.as_bytes())
        .chain_update(b"/")
        .chain_update(name.as_bytes())
        .finalize();
    URL_SAFE_NO_PAD.encode(&digest[..16])
}

/// A digest of a client id or a namespace for a reservation (fixed length, no spaces).
pub fn digest(kind: &str, value: &str) -> String {
    let digest = Sha256::new_with_prefix(b"oauthapp.io/ledger\0")
        .chain_update(kind.as_bytes())
        .chain_update(b"\0")
        .chain_update(value.as_bytes())
        .finalize();
    URL_SAFE_NO_PAD.encode(&digest[..16])
}

/// The ConfigMap that keeps the ledger of the installation whose record key is `key_secret`.
pub fn configmap_name(key_secret: &str) -> String {
    format!("{key_secret}-retired")
}

fn now_secs() -> i64 {
    jiff::Timestamp::now().as_second()
}

impl Ledger {
    /// Whether the ledger has been read once (until then nothing is adopted).
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// Notes a deleted app's last rotation, as its last cached status shows it, and, when it held a
    /// `spec.clientId`, that the id stays reserved for its namespace: an app of another namespace
    /// that asks for it does not get it without a person
    /// ([`RELEASE_CLIENT_ID_ANNOTATION`](crate::model::record::RELEASE_CLIENT_ID_ANNOTATION)); an
    /// app of the same namespace (re-created, restored) does.
    pub fn note(&self, app: &OAuthApp) {
        let Some(status) = app.status.as_ref() else {
            return;
        };
        let Some(rotation_id) = status.rotation_id.clone() else {
            return;
        };
        let namespace = app.metadata.namespace.as_deref().unwrap_or_default();
        let key = key(namespace, app.metadata.name.as_deref().unwrap_or_default());
        let reserves = app
            .spec
            .client_id
            .as_deref()
            .filter(|id| status.client_id.as_deref() == Some(*id))
            .map(|id| (digest("client-id", id), digest("namespace", namespace)));
        let entry = Entry {
            count: status.rotation_count,
            rotation_id,
            at: now_secs(),
            reserves,
        };
        merge(
            &mut self.entries.lock().unwrap_or_else(|e| e.into_inner()),
            &key,
            &entry,
        );
        merge(
            &mut self.pending.lock().unwrap_or_else(|e| e.into_inner()),
            &key,
            &entry,
        );
    }

    /// The newest rotation remembered of the app `namespace/name`.
    pub fn get(&self, namespace: &str, name: &str) -> Option<Retired> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.get(&key(namespace, name)).map(|e| Retired {
            count: e.count,
            rotation_id: e.rotation_id.clone(),
        })
    }

    /// The highest rotation count remembered of `namespace/name` (a new app of that name counts
    /// on from it, so that a record of the earlier app is always older).
    pub fn count(&self, namespace: &str, name: &str) -> i64 {
        self.get(namespace, name).map_or(0, |r| r.count)
    }

    /// Whom client id `client_id` is reserved for: the namespace of the last app seen holding it
    /// when it was deleted, and that app's name. None: no reservation (or `released` names it: a
    /// person passed it on). Before the ledger is first read, an empty reservation: reserved,
    /// for no namespace, so no claimant that does not hold it yet gets it meanwhile.
    pub fn reserved_for(&self, client_id: &str, released: Option<&str>) -> Option<Reservation> {
        if released == Some(client_id) {
            return None;
        }
        if !self.is_loaded() {
            return Some(Reservation::default());
        }
        let wanted = digest("client-id", client_id);
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .iter()
            .filter_map(|(holder, e)| {
                e.reserves
                    .as_ref()
                    .filter(|(c, _)| *c == wanted)
                    .map(|(_, ns)| (e.at, ns, holder))
            })
            .max()
            .map(|(since, namespace, holder)| Reservation {
                namespace: namespace.clone(),
                holder: holder.clone(),
                since,
            })
    }

    /// How many names are remembered.
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads the ledger back and writes pending notes every [`POLL`], until `shutdown`.
    pub async fn run(&self, client: Client, namespace: String, name: String, shutdown: CancellationToken) {
        let api: Api<ConfigMap> = Api::namespaced(client, &namespace);
        loop {
            if let Err(e) = self.sync(&api, &name).await {
                tracing::warn!(
                    configmap = %format!("{namespace}/{name}"),
                    error = %crate::runtime::error::redact(&e.to_string()),
                    "the ledger of retired records could not be read or written; retrying"
                );
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(POLL) => {}
            }
        }
    }

    /// One read and, with notes pending, one conditional write of the merged ledger.
    async fn sync(&self, api: &Api<ConfigMap>, name: &str) -> Result<(), kube::Error> {
        let read = api.get_opt(name).await?;
        let stored: BTreeMap<String, Entry> = read
            .as_ref()
            .and_then(|cm| cm.data.as_ref())
            .map(|data| {
                data.iter()
                    .filter_map(|(k, v)| Some((k.clone(), Entry::parse(v)?)))
                    .collect()
            })
            .unwrap_or_default();
        {
            let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            for (k, e) in &stored {
                merge(&mut entries, k, e);
            }
            prune(&mut entries, now_secs());
        }
        self.loaded.store(true, Ordering::Release);
        let pending = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        if pending.is_empty() {
            return Ok(());
        }
        let mut merged = stored;
        for (k, e) in &pending {
            merge(&mut merged, k, e);
        }
        prune(&mut merged, now_secs());
        let data = merged.iter().map(|(k, e)| (k.clone(), e.render())).collect();
        let params = PostParams {
            dry_run: false,
            field_manager: Some(crate::model::crd::MANAGER.into()),
        };
        let result = match read {
            Some(mut cm) => {
                cm.data = Some(data);
                cm.metadata.managed_fields = None;
                api.replace(&cm.name_any(), &params, &cm).await.map(|_| ())
            }
            None => api
                .create(
                    &params,
                    &ConfigMap {
                        metadata: ObjectMeta {
                            name: Some(name.to_string()),
                            annotations: Some(BTreeMap::from([(
                                "oauthapp.io/purpose".to_string(),
                                "The newest rotation of each deleted OAuthApp, so that a copy of its Secret written back is never adopted. Written by the operator only.".to_string(),
                            )])),
                            ..Default::default()
                        },
                        data: Some(data),
                        ..Default::default()
                    },
                )
                .await
                .map(|_| ()),
        };
        if result.is_err() {
            // Written at the next look (a conflict: merged with what won).
            let mut back = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            for (k, e) in pending {
                merge(&mut back, &k, &e);
            }
        }
        result
    }
}

fn merge(map: &mut BTreeMap<String, Entry>, key: &str, entry: &Entry) {
    match map.get(key) {
        Some(have) if !entry.newer_than(have) => {}
        _ => {
            map.insert(key.to_string(), entry.clone());
        }
    }
}

/// Drops entries past [`TTL`], then the oldest beyond [`MAX_ENTRIES`].
fn prune(map: &mut BTreeMap<String, Entry>, now: i64) {
    let ttl = i64::try_from(TTL.as_secs()).unwrap_or(i64::MAX);
    map.retain(|_, e| now.saturating_sub(e.at) < ttl);
    if map.len() > MAX_ENTRIES {
        let mut ages: Vec<i64> = map.values().map(|e| e.at).collect();
        ages.sort_unstable();
        let cut = ages[map.len() - MAX_ENTRIES];
        map.retain(|_, e| e.at >= cut);
        while map.len() > MAX_ENTRIES {
            let Some(oldest) = map.iter().min_by_key(|(_, e)| e.at).map(|(k, _)| k.clone()) else {
                break;
            };
            map.remove(&oldest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::crd::{OAuthAppSpec, OAuthAppStatus};

    fn deleted(ns: &str, name: &str, count: i64, rotation_id: &str) -> OAuthApp {
        let mut app = OAuthApp::new(name, OAuthAppSpec::default());
        app.metadata.namespace = Some(ns.into());
        app.status = Some(OAuthAppStatus {
            rotation_id: Some(rotation_id.into()),
            rotation_count: count,
            ..Default::default()
        });
        app
    }

    #[test]
    fn the_newest_rotation_of_a_name_is_remembered_and_an_older_note_changes_nothing() {
        let ledger = Ledger::default();
        ledger.note(&deleted("ns", "a", 3, "r3"));
        ledger.note(&deleted("ns", "a", 2, "r2"));
        assert_eq!(
            ledger.get("ns", "a"),
            Some(Retired {
                count: 3,
                rotation_id: "r3".into()
            })
        );
        assert_eq!(ledger.get("other", "a"), None, "keyed by namespace and name");
        ledger.note(&deleted("ns", "a", 4, "r4"));
        assert_eq!(ledger.count("ns", "a"), 4);
        // An app without a secret leaves nothing to remember.
        ledger.note(&OAuthApp::new("b", OAuthAppSpec::default()));
        assert_eq!(ledger.len(), 1);
    }

    #[test]
    fn a_client_id_is_reserved_for_the_namespace_of_its_deleted_holder_until_released() {
        let ledger = Ledger::default();
        // Before the ledger is read, every id counts as reserved (for no namespace).
        assert_eq!(ledger.reserved_for("billing", None), Some(Reservation::default()));
        ledger.loaded.store(true, Ordering::Release);
        assert_eq!(ledger.reserved_for("billing", None), None);
        let mut holder = OAuthApp::new("portal", OAuthAppSpec::default());
        holder.metadata.namespace = Some("payments".into());
        holder.spec.client_id = Some("billing".into());
        holder.status = Some(crate::model::crd::OAuthAppStatus {
            client_id: Some("billing".into()),
            rotation_id: Some("r1".into()),
            rotation_count: 3,
            ..Default::default()
        });
        ledger.note(&holder);
        assert_eq!(
            ledger.reserved_for("billing", None),
            Some(Reservation {
                namespace: digest("namespace", "payments"),
                holder: key("payments", "portal"),
                since: ledger.entries.lock().unwrap().values().next().unwrap().at,
            })
        );
        assert_eq!(ledger.reserved_for("other", None), None);
        assert_eq!(
            ledger.reserved_for("billing", Some("billing")),
            None,
            "released by a person"
        );
    }

    #[test]
    fn entries_round_trip_and_a_malformed_one_is_ignored() {
        let e = Entry {
            count: 7,
            rotation_id: "0123abcd".into(),
            at: 1_700_000_000,
            reserves: None,
        };
        assert_eq!(Entry::parse(&e.render()), Some(e.clone()));
        let reserving = Entry {
            reserves: Some((digest("client-id", "billing"), digest("namespace", "payments"))),
            ..e
        };
        assert_eq!(Entry::parse(&reserving.render()), Some(reserving));
        for bad in ["", "7", "7 r", "x r 1", "7 r 1 extra", "7 r 1 a b c"] {
            assert_eq!(Entry::parse(bad), None, "{bad:?}");
        }
        // Keys are fixed-length and valid ConfigMap keys, whatever the name.
        let k = key("ns", &"a".repeat(253));
        assert_eq!(k.len(), 22);
        assert!(
            k.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        );
        assert_ne!(key("ns", "a"), key("n", "sa"));
    }

    #[test]
    fn the_ledger_stays_bounded_dropping_the_oldest_and_the_expired() {
        let now = 10_000_000_000;
        let mut map = BTreeMap::new();
        let ttl = i64::try_from(TTL.as_secs()).unwrap();
        map.insert(
            "expired".to_string(),
            Entry {
                count: 1,
                rotation_id: "r".into(),
                at: now - ttl - 1,
                reserves: None,
            },
        );
        for i in 0..(MAX_ENTRIES as i64 + 10) {
            map.insert(
                format!("k{i}"),
                Entry {
                    count: 1,
                    rotation_id: "r".into(),
                    at: now - 1000 + i,
                    reserves: None,
                },
            );
        }
        prune(&mut map, now);
        assert_eq!(map.len(), MAX_ENTRIES);
        assert!(!map.contains_key("expired"));
        assert!(
            !map.contains_key("k0") && !map.contains_key("k9"),
            "the oldest go first"
        );
        assert!(map.contains_key("k10") && map.contains_key(&format!("k{}", MAX_ENTRIES + 9)));
    }
}
