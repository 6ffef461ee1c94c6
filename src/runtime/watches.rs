//! The watch caches every replica keeps: OAuthApps (with an index by uid, for the REST API's
//! id lookups) and the operator's Secrets (metadata only: decisions need annotations, and the
//! plaintext stays out of long-lived memory).
//!
//! One watch per kind and scope feeds both the REST API (every replica) and the controller (the
//! leader only), which subscribes to the change stream while it runs.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, RwLock};

use futures::{Stream, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ObjectMeta, PartialObjectMeta};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::model::crd::OAuthApp;
use crate::model::managed::{MANAGED_BY, MANAGED_BY_LABEL};
use crate::runtime::cached::{CachedApp, CachedSecret};
use crate::runtime::store::{self, Keyed, Store};

/// What the cached copy of an app keeps of its metadata: managedFields and labels are dropped
/// (they can outweigh the rest of an object, and nothing here reads them), and so are the
/// annotations of others (a `kubectl apply`'s last-applied-configuration holds the whole
/// object again): the operator reads only its own, under [`OWN_ANNOTATION_PREFIX`], of at most
/// [`MAX_APP_ANNOTATION`] bytes. Status
/// writes send the cached copy back, but the API server keeps everything but the status there.
pub fn strip_app(app: &mut OAuthApp) {
    let meta = &mut app.metadata;
    meta.managed_fields = None;
    meta.labels = None;
    if let Some(annotations) = &mut meta.annotations {
        annotations.retain(|k, v| k.starts_with(OWN_ANNOTATION_PREFIX) && v.len() <= MAX_APP_ANNOTATION);
        if annotations.is_empty() {
            meta.annotations = None;
        }
    }
}

/// What the cached copy of a Secret's metadata keeps: not its managedFields, uid,
/// creationTimestamp or type fields (`PartialObjectMetadata`, the same for all; nothing reads them
/// from the cache, and a write built from the cached copy is conditional on its resourceVersion,
/// which is kept). A Secret an OAuthApp controls keeps its rotation record (each value of at
/// most [`MAX_RECORD_VALUE`], the history [`MAX_OWN_VALUE`]), the managed-by label, and the rest
/// of its labels and annotations (the spec's, others') while they weigh at most
/// [`MAX_OTHERS_KEPT`] in all: a write built from the cache keeps them. Past that they are
/// dropped and the copy is marked [`TRIMMED`]: a write of such a Secret reads it afresh first, and
/// a tenant who makes its own Secrets weigh costs the cache nothing more. Any other Secret with the operator's label
/// (anyone who may create a Secret can add it) keeps only what the operator reads of it: its
/// `oauthapp.io/` annotations of at most [`MAX_OWN_VALUE`] bytes each (a record to adopt), the
/// managed-by label, and its references to OAuthApps. The operator writes such a Secret only
/// from a fresh read (adoption), never from the cache, so a Secret that only carries the label
/// costs its name, namespace and version.
pub fn strip_secret(secret: &mut PartialObjectMeta<Secret>) {
    secret.types = None;
    let meta = &mut secret.metadata;
    meta.managed_fields = None;
    meta.uid = None;
    meta.creation_timestamp = None;
    let is_app = |r: &k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference| {
        r.kind == "OAuthApp" && r.api_version.starts_with("oauthapp.io/")
    };
    let controlled = meta
        .owner_references
        .iter()
        .flatten()
        .any(|r| r.controller == Some(true) && is_app(r));
    if controlled {
        trim_controlled(meta);
        return;
    }
    meta.finalizers = None;
    if let Some(refs) = &mut meta.owner_references {
        refs.retain(is_app);
        refs.truncate(4);
    }
    if let Some(labels) = &mut meta.labels {
        labels.retain(|k, _| k == MANAGED_BY_LABEL);
    }
    if let Some(annotations) = &mut meta.annotations {
        annotations.retain(|k, v| k.starts_with(OWN_ANNOTATION_PREFIX) && v.len() <= MAX_OWN_VALUE);
    }
}

/// The longest `oauthapp.io/` annotation value kept of a Secret no app controls: more than any
/// record the operator writes holds (a history of 20 rotations is some 8 KiB).
pub const MAX_OWN_VALUE: usize = 16 * 1024;

/// The longest value of a record annotation but the history kept of a Secret an app controls:
/// the operator writes none longer (the longest, a rotate token, is at most 1 KiB).
pub const MAX_RECORD_VALUE: usize = 2 * 1024;

/// What the labels and annotations of a Secret an app controls, beyond its record and the
/// managed-by label, may weigh (keys and values) and still be cached.
pub const MAX_OTHERS_KEPT: usize = 8 * 1024;

/// Marks a cached Secret whose other labels and annotations were dropped ([`strip_secret`]):
/// never written to the API server (a write of such a Secret starts from a fresh read).
pub const TRIMMED: &str = "oauthapp.io/cached-without-others";

/// Whether the cached copy `meta` lacks labels or annotations the Secret has ([`TRIMMED`]).
pub fn is_trimmed(meta: &ObjectMeta) -> bool {
    meta.annotations.as_ref().is_some_and(|a| a.contains_key(TRIMMED))
}

/// [`strip_secret`] of a Secret an app controls.
fn trim_controlled(meta: &mut ObjectMeta) {
    use crate::model::record::{Record, annotations};
    let record_value_fits = |k: &str, v: &str| match k {
        annotations::HISTORY | annotations::SPEC_METADATA_KEYS => v.len() <= MAX_OWN_VALUE,
        _ => v.len() <= MAX_RECORD_VALUE,
    };
    let is_record = |k: &str| Record::KEYS.contains(&k) || k == annotations::SPEC_METADATA_KEYS;
    let mut trimmed = false;
    let mut others = 0;
    if let Some(ann) = &mut meta.annotations {
        let before = ann.len();
        ann.retain(|k, v| !is_record(k) || record_value_fits(k, v));
        trimmed |= ann.len() != before;
        others += ann
            .iter()
            .filter(|(k, _)| !is_record(k))
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>();
    }
    if let Some(labels) = &meta.labels {
        others += labels
            .iter()
            .filter(|(k, _)| *k != MANAGED_BY_LABEL)
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>();
    }
    if others > MAX_OTHERS_KEPT {
        trimmed = true;
        if let Some(labels) = &mut meta.labels {
            labels.retain(|k, _| k == MANAGED_BY_LABEL);
        }
        if let Some(ann) = &mut meta.annotations {
            ann.retain(|k, _| is_record(k));
        }
    }
    if trimmed {
        meta.annotations
            .get_or_insert_default()
            .insert(TRIMMED.into(), String::new());
    }
}

/// The longest `oauthapp.io/` annotation value kept of an app (a rotate token, an accepted
/// rotation id): a longer one is not read, as if absent.
pub const MAX_APP_ANNOTATION: usize = 1024;

/// The prefix of every annotation the operator reads on an app.
pub const OWN_ANNOTATION_PREFIX: &str = "oauthapp.io/";

/// Change notifications kept for a subscriber that lags; beyond this it is told to resync.
const CHANGE_BUFFER: usize = 1024;

/// A change seen by a watch, or a notice that some may have been missed (the subscriber
/// lagged, or the watch relisted): the subscriber should look at everything.
pub enum Change<K> {
    Object(Arc<K>),
    Missed,
}

// Not derived: that would ask `K: Clone`, and only the `Arc` is cloned.
impl<K> Clone for Change<K> {
    fn clone(&self) -> Self {
        match self {
            Self::Object(obj) => Self::Object(obj.clone()),
            Self::Missed => Self::Missed,
        }
    }
}

/// The writers of a scope's two caches (its apps, its Secrets).
type ScopeWriters = (store::Writer<CachedApp>, store::Writer<CachedSecret>);

/// What every watch pump of a process shares: the client, whether lists stream, the shutdown,
/// and the count of caches synced.
struct Pumps {
    client: Client,
    streaming: bool,
    shutdown: CancellationToken,
    ready: Arc<watch::Sender<usize>>,
}

/// The caches of one watched scope (a namespace, or the whole cluster).
#[derive(Clone)]
pub struct ScopeCaches {
    pub namespace: Option<String>,
    pub apps: Store<CachedApp>,
    pub secrets: Store<CachedSecret>,
    app_changes: broadcast::Sender<Change<CachedApp>>,
    secret_changes: broadcast::Sender<Change<CachedSecret>>,
}

impl ScopeCaches {
    /// Empty caches of the scope `namespace` (None: every namespace), and their writers.
    fn new(namespace: Option<String>) -> (Self, ScopeWriters) {
        let (apps, app_writer) = store::store::<CachedApp>();
        let (secrets, secret_writer) = store::store::<CachedSecret>();
        let (app_changes, _) = broadcast::channel(CHANGE_BUFFER);
        let (secret_changes, _) = broadcast::channel(CHANGE_BUFFER);
        let caches = ScopeCaches {
            namespace,
            apps,
            secrets,
            app_changes,
            secret_changes,
        };
        (caches, (app_writer, secret_writer))
    }

    /// Every later change of an app in this scope.
    pub fn app_changes(&self) -> impl Stream<Item = Change<CachedApp>> + Send + 'static {
        changes(self.app_changes.subscribe())
    }

    /// Every later change of an operator Secret in this scope.
    pub fn secret_changes(&self) -> impl Stream<Item = Change<CachedSecret>> + Send + 'static {
        changes(self.secret_changes.subscribe())
    }
}

fn changes<K: Send + Sync + 'static>(
    rx: broadcast::Receiver<Change<K>>,
) -> impl Stream<Item = Change<K>> + Send {
    futures::stream::unfold(rx, |mut rx| async move {
        match rx.recv().await {
            Ok(change) => Some((change, rx)),
            Err(broadcast::error::RecvError::Lagged(_)) => Some((Change::Missed, rx)),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    })
}

/// All watched scopes, their readiness, the uid index and the client id claims.
pub struct Watches {
    pub scopes: Vec<ScopeCaches>,
    index: RwLock<UidIndex>,
    client_ids: RwLock<ClientIds>,
    ready: watch::Receiver<usize>,
    /// Kept app ids (as UUIDs) that are not their app's uid (an adopted app's), to that uid.
    kept_ids: RwLock<HashMap<String, String>>,
    /// Deleted apps' last rotations are noted here (crate::runtime::ledger).
    ledger: Option<Arc<crate::runtime::ledger::Ledger>>,
    /// Per scope (by index), since when its app watch has failed with no complete view since.
    app_watch_failing: std::sync::Mutex<HashMap<usize, std::time::Instant>>,
}

impl Watches {
    /// Starts the watches (in background tasks, until `shutdown`) for `namespaces` (empty: all).
    pub fn start(client: Client, namespaces: &[String], shutdown: CancellationToken) -> Arc<Watches> {
        Self::start_with_ledger(client, namespaces, shutdown, None, true)
    }

    /// [`Watches::start`], noting every deleted app's last rotation in `ledger`; the initial
    /// state comes as a stream of watch events (`streaming`, Kubernetes 1.32 and later) or, for
    /// an API server without it, in pages of whole objects.
    pub fn start_with_ledger(
        client: Client,
        namespaces: &[String],
        shutdown: CancellationToken,
        ledger: Option<Arc<crate::runtime::ledger::Ledger>>,
        streaming: bool,
    ) -> Arc<Watches> {
        let scopes: Vec<Option<String>> = if namespaces.is_empty() {
            vec![None]
        } else {
            namespaces.iter().cloned().map(Some).collect()
        };
        let (ready_tx, ready_rx) = watch::channel(0usize);
        let (caches, writers): (Vec<_>, Vec<_>) = scopes.into_iter().map(ScopeCaches::new).unzip();
        let watches = Arc::new(Watches {
            scopes: caches,
            index: RwLock::new(UidIndex::default()),
            client_ids: RwLock::default(),
            ready: ready_rx,
            kept_ids: RwLock::default(),
            ledger,
            app_watch_failing: std::sync::Mutex::default(),
        });
        let pumps = Pumps {
            client,
            streaming,
            shutdown,
            ready: Arc::new(ready_tx),
        };
        for (index, writers) in writers.into_iter().enumerate() {
            watches.watch_scope(index, writers, &pumps);
        }
        watches
    }

    /// Starts the two watches of the scope `index` (its apps, its operator Secrets), each
    /// filling its cache through `writers` and forwarding its changes.
    fn watch_scope(self: &Arc<Self>, index: usize, writers: ScopeWriters, pumps: &Pumps) {
        let Pumps {
            client,
            streaming,
            shutdown,
            ready,
        } = pumps;
        let streaming = *streaming;
        let initial = move |config: watcher::Config| {
            if streaming {
                config.streaming_lists()
            } else {
                config.any_semantic()
            }
        };
        let scope = &self.scopes[index];
        let (app_writer, secret_writer) = writers;
        let (apps_api, secrets_api): (Api<OAuthApp>, Api<PartialObjectMeta<Secret>>) = match &scope.namespace
        {
            Some(ns) => (
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
            ),
            None => (Api::all(client.clone()), Api::all(client.clone())),
        };
        let selector = format!("{MANAGED_BY_LABEL}={MANAGED_BY}");
        // Streaming lists (the API server sends the initial state as watch events): a relist
        // never holds a page of whole objects (up to 500, each up to 1.5 MiB) before they
        // are stripped.
        let app_config = initial(watcher::Config::default());
        let app_events = move || {
            watcher(apps_api.clone(), app_config.clone())
                .default_backoff()
                .modify(strip_app)
                .map_ok(CachedApp::event)
        };
        let secret_config = initial(watcher::Config::default().labels(&selector));
        let secret_events = move || {
            let events = watcher(secrets_api.clone(), secret_config.clone())
                .default_backoff()
                .modify(strip_secret);
            #[cfg(feature = "failpoints")]
            let events = failpoints::stale_secret_cache(events);
            events.map_ok(CachedSecret::event)
        };
        let w = self.clone();
        let tx = scope.app_changes.clone();
        let store = scope.apps.clone();
        let ns = scope.namespace.clone();
        let health = self.clone();
        tokio::spawn(pump(
            app_writer,
            app_events,
            shutdown.clone(),
            ready.clone(),
            "OAuthApp",
            move |ev| {
                w.on_app_event(ev, &store, ns.as_deref());
                forward(ev, &store, &tx)
            },
            move |current| health.app_view(index, current),
        ));
        let tx = scope.secret_changes.clone();
        let store = scope.secrets.clone();
        tokio::spawn(pump(
            secret_writer,
            secret_events,
            shutdown.clone(),
            ready.clone(),
            "Secret",
            move |ev| forward(ev, &store, &tx),
            |_| {},
        ));
    }

    fn app_view(&self, scope: usize, current: bool) {
        let mut failing = self.app_watch_failing.lock().unwrap_or_else(|e| e.into_inner());
        if current {
            failing.remove(&scope);
        } else {
            failing.entry(scope).or_insert_with(std::time::Instant::now);
        }
    }

    /// How long the operator's view of some apps may have been behind the API server: since
    /// an app watch failed, until it shows a change again or completes a relist. None while
    /// every app watch works.
    pub fn apps_stale_for(&self) -> Option<std::time::Duration> {
        let failing = self.app_watch_failing.lock().unwrap_or_else(|e| e.into_inner());
        failing.values().map(std::time::Instant::elapsed).max()
    }

    /// True once every watch has completed its first list.
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow() >= 2 * self.scopes.len()
    }

    /// Resolves once every watch has completed its first list.
    pub async fn wait_until_ready(&self) {
        let mut rx = self.ready.clone();
        let want = 2 * self.scopes.len();
        let _ = rx.wait_for(|n| *n >= want).await;
    }

    /// The app whose id is this UUID's (its kept id: the one its status keeps, else its uid's),
    /// from the cache.
    pub fn find(&self, id: &str) -> Option<Arc<OAuthApp>> {
        let uid = self
            .kept_ids
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
            .unwrap_or_else(|| id.to_string());
        self.find_by_uid(&uid)
            .filter(|app| id_uuid(app).as_deref() == Some(id))
    }

    /// The app with this uid, from the cache.
    fn find_by_uid(&self, uid: &str) -> Option<Arc<OAuthApp>> {
        let cached = self.index.read().unwrap_or_else(|e| e.into_inner()).get(uid)?;
        (cached.uid().as_deref() == Some(uid)).then(|| Arc::new(cached.app()))
    }

    /// The app whose client id is `client_id` (its status shows it: the holder), from the cache.
    /// `released`: the client id a person released ([`crate::model::record::RELEASE_CLIENT_ID_ANNOTATION`]).
    pub fn find_by_client_id(&self, client_id: &str, released: Option<&str>) -> Option<Arc<OAuthApp>> {
        let found = if client_id.starts_with("app_") {
            self.find(&crate::model::id::decode(client_id).ok()?.to_string())
        } else {
            let claims = self.client_ids.read().unwrap_or_else(|e| e.into_inner());
            let uid = claims
                .owner(client_id, || self.reserved_for(client_id, released))?
                .to_string();
            drop(claims);
            self.find_by_uid(&uid)
        };
        found.filter(|app| app.status.as_ref().and_then(|s| s.client_id.as_deref()) == Some(client_id))
    }

    /// Every cached app, in its cached form ([`CachedApp::app`] gives the app).
    pub fn apps(&self) -> Vec<Arc<CachedApp>> {
        self.scopes.iter().flat_map(|s| s.apps.state()).collect()
    }

    /// Every cached Secret (the operator's), across scopes.
    pub fn secrets(&self) -> Vec<Arc<CachedSecret>> {
        self.scopes.iter().flat_map(|s| s.secrets.state()).collect()
    }

    /// The cache of the scope that holds `namespace`, if it is watched.
    pub fn scope_of(&self, namespace: &str) -> Option<&ScopeCaches> {
        self.scopes
            .iter()
            .find(|s| s.namespace.is_none() || s.namespace.as_deref() == Some(namespace))
    }

    /// Whether `app` may use its client id: it asks for none (a generated id is unique), or it
    /// is the first claimant of its `spec.clientId` across every watched scope. While no app
    /// holds the id, and it is reserved for the namespace of its last holder (the ledger), only
    /// claimants of that namespace count, unless `released` (a person's act) names it.
    pub fn owns_client_id(&self, app: &OAuthApp, released: Option<&str>) -> bool {
        let (Some(id), Some(uid)) = (app.spec.client_id.as_deref(), app.meta().uid.as_deref()) else {
            return true;
        };
        let claims = self.client_ids.read().unwrap_or_else(|e| e.into_inner());
        claims.owner(id, || self.reserved_for(id, released)) == Some(uid)
    }

    fn reserved_for(
        &self,
        client_id: &str,
        released: Option<&str>,
    ) -> Option<crate::runtime::ledger::Reservation> {
        self.ledger.as_ref()?.reserved_for(client_id, released)
    }

    fn on_app_event(
        &self,
        event: &watcher::Event<CachedApp>,
        store: &Store<CachedApp>,
        namespace: Option<&str>,
    ) {
        let mut index = self.index.write().unwrap_or_else(|e| e.into_inner());
        let mut claims = self.client_ids.write().unwrap_or_else(|e| e.into_inner());
        let mut kept = self.kept_ids.write().unwrap_or_else(|e| e.into_inner());
        match event {
            watcher::Event::Apply(cached) | watcher::Event::InitApply(cached) => {
                let app = &cached.app();
                if let (Some(id), Some(uid)) = (id_uuid(app), app.meta().uid.clone()) {
                    kept.retain(|_, u| u != &uid);
                    if id != uid {
                        kept.insert(id, uid.clone());
                    }
                }
                // The store's copy (a relist's objects reach it at its end: indexed then).
                if let watcher::Event::Apply(_) = event
                    && let Some(stored) = store.lookup(cached.namespace(), cached.name())
                {
                    index.insert(stored);
                }
                claims.put(app);
            }
            watcher::Event::Delete(cached) => {
                let app = &cached.app();
                if let Some(uid) = app.meta().uid.as_deref() {
                    index.remove(uid);
                    claims.remove(uid);
                    kept.retain(|_, u| u != uid);
                }
                if let Some(ledger) = &self.ledger {
                    ledger.note(app);
                }
            }
            // A relist may have dropped apps without a Delete (or replaced one by a namesake):
            // keep only what the store has, by uid.
            watcher::Event::InitDone => {
                index.retain(|app| namespace.is_some_and(|ns| app.namespace() != ns));
                for app in store.state() {
                    index.insert(app);
                }
                claims.retain(|uid| index.contains(uid));
                kept.retain(|_, uid| index.contains(uid));
            }
            watcher::Event::Init => {}
        }
    }
}

/// The cached apps by uid, for the REST API: the store's own copy of each (a pointer), kept as
/// the store changes. An entry is that pointer alone (8 bytes an app, where the uid as a key
/// took 24 more): the table is keyed by a hash of the uid, and an entry answers for the uid its
/// app holds. Uids are the API server's; the hash is keyed all the same.
struct UidIndex {
    table: hashbrown::HashTable<Arc<CachedApp>>,
    hasher: RandomState,
}

impl Default for UidIndex {
    fn default() -> Self {
        Self {
            table: hashbrown::HashTable::new(),
            hasher: RandomState::new(),
        }
    }
}

/// The table's hash of an entry: of the uid its app holds.
fn uid_hash(hasher: &RandomState) -> impl Fn(&Arc<CachedApp>) -> u64 + '_ {
    |app| hasher.hash_one(app.uid().unwrap_or_default())
}

impl UidIndex {
    /// Indexes `app` by its own uid (an app without one is not indexed), in place of the
    /// copy kept before.
    fn insert(&mut self, app: Arc<CachedApp>) {
        let Some(uid) = app.uid() else { return };
        let hash = self.hasher.hash_one(&uid);
        match self
            .table
            .find_mut(hash, |e| e.uid().as_deref() == Some(uid.as_str()))
        {
            Some(found) => *found = app,
            None => {
                self.table.insert_unique(hash, app, uid_hash(&self.hasher));
            }
        }
    }

    fn get(&self, uid: &str) -> Option<Arc<CachedApp>> {
        self.table
            .find(self.hasher.hash_one(uid), |e| e.uid().as_deref() == Some(uid))
            .cloned()
    }

    fn remove(&mut self, uid: &str) {
        if let Ok(found) = self
            .table
            .find_entry(self.hasher.hash_one(uid), |e| e.uid().as_deref() == Some(uid))
        {
            found.remove();
        }
    }

    fn contains(&self, uid: &str) -> bool {
        self.get(uid).is_some()
    }

    /// Keeps the apps for which `keep` holds.
    fn retain(&mut self, mut keep: impl FnMut(&CachedApp) -> bool) {
        self.table.retain(|app| keep(app));
        if store::worth_shrinking(self.table.len(), self.table.capacity()) {
            self.table.shrink_to(self.table.len() * 2, uid_hash(&self.hasher));
        }
    }
}

/// The UUID of an app's id: its kept id (crate::model::record::app_id), as the index keys it.
fn id_uuid(app: &OAuthApp) -> Option<String> {
    let id = crate::model::record::app_id(app)?;
    crate::model::id::decode(&id).ok().map(|u| u.to_string())
}

/// The apps that ask for an explicit `spec.clientId`, by id. Bounded by the number of cached
/// apps: an entry goes with its app.
#[derive(Default)]
struct ClientIds {
    by_id: HashMap<String, HashMap<String, Claim>>,
    id_of: HashMap<String, String>,
}

/// One app's claim on a client id. Claims are ordered: an app that already holds the id (its
/// status shows it, with a secret) before one that does not, then the oldest, then by uid, so
/// every replica picks the same owner and an owner keeps its id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Claim {
    not_holding: bool,
    created: Option<jiff::Timestamp>,
    uid: String,
    namespace: String,
    /// The app's name, as the ledger keys it ([`crate::runtime::ledger::key`]).
    ledger_key: String,
}

impl ClientIds {
    fn put(&mut self, app: &OAuthApp) {
        let (Some(id), Some(uid)) = (app.spec.client_id.clone(), app.meta().uid.clone()) else {
            return;
        };
        let holds = app
            .status
            .as_ref()
            .is_some_and(|s| s.client_id.as_deref() == Some(id.as_str()) && s.rotation_id.is_some());
        let claim = Claim {
            not_holding: !holds,
            created: app.meta().creation_timestamp.as_ref().map(|t| t.0),
            uid: uid.clone(),
            namespace: app.meta().namespace.clone().unwrap_or_default(),
            ledger_key: crate::runtime::ledger::key(
                app.meta().namespace.as_deref().unwrap_or_default(),
                app.meta().name.as_deref().unwrap_or_default(),
            ),
        };
        self.id_of.insert(uid.clone(), id.clone());
        self.by_id.entry(id).or_default().insert(uid, claim);
    }

    fn remove(&mut self, uid: &str) {
        let Some(id) = self.id_of.remove(uid) else {
            return;
        };
        if let Some(claims) = self.by_id.get_mut(&id) {
            claims.remove(uid);
            if claims.is_empty() {
                self.by_id.remove(&id);
            }
        }
    }

    fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        let gone: Vec<String> = self.id_of.keys().filter(|uid| !keep(uid)).cloned().collect();
        for uid in gone {
            self.remove(&uid);
        }
    }

    /// The uid of the app that owns `id`: the one that holds it, else, when the id is
    /// `reserved` for a namespace, the claimant of that namespace with the last holder's name
    /// (or, once the reservation is old enough, the namespace's first claimant); else the first
    /// claimant. None while the id is reserved and no claimant may take it.
    fn owner(
        &self,
        id: &str,
        reserved: impl FnOnce() -> Option<crate::runtime::ledger::Reservation>,
    ) -> Option<&str> {
        let claims = self.by_id.get(id)?;
        let first = claims.values().min()?;
        if !first.not_holding {
            return Some(first.uid.as_str());
        }
        let Some(reservation) = reserved() else {
            return Some(first.uid.as_str());
        };
        // Apps of the namespace re-created at once are not ordered by age (the same second) or
        // by their random uids: the name the id was held under gets it.
        let in_namespace = || {
            claims.values().filter(|c| {
                crate::runtime::ledger::digest("namespace", &c.namespace) == reservation.namespace
            })
        };
        let claim = in_namespace()
            .find(|c| c.ledger_key == reservation.holder)
            .or_else(|| {
                reservation
                    .open_to_the_namespace(jiff::Timestamp::now().as_second())
                    .then(|| in_namespace().min())
                    .flatten()
            });
        claim.map(|c| c.uid.as_str())
    }
}

/// Sends an applied or deleted object to the subscribers (the store's own copy: no duplicate in
/// memory). A (re)list is announced once it is complete, as [`Change::Missed`]: its objects
/// reach the store only then, and what changed while the watch was down (an app created, a
/// Secret deleted) has no event of its own.
fn forward<K>(event: &watcher::Event<K>, store: &Store<K>, tx: &broadcast::Sender<Change<K>>)
where
    K: Keyed + Clone + 'static,
{
    match event {
        watcher::Event::Apply(obj) => {
            let stored = store.lookup(obj.namespace(), obj.name());
            if let Some(stored) = stored {
                let _ = tx.send(Change::Object(stored));
            }
        }
        watcher::Event::Delete(obj) => {
            let _ = tx.send(Change::Object(Arc::new(obj.clone())));
        }
        watcher::Event::InitDone => {
            let _ = tx.send(Change::Missed);
        }
        watcher::Event::Init | watcher::Event::InitApply(_) => {}
    }
}

/// While a watch fails, it is started afresh this often: a relist, which (unlike a watch that
/// resumes quietly) shows when the view is complete again.
const RESTART_FAILED_WATCH: std::time::Duration = std::time::Duration::from_secs(5);

/// Drives one watch (`events` makes its stream): applies its events to the store, then to
/// `on_event`; counts its first complete list toward readiness. `on_view` hears `false` when
/// the watch fails, and `true` once it shows a change or a complete relist again. While it
/// fails, the watch is started afresh every [`RESTART_FAILED_WATCH`].
async fn pump<K, S>(
    mut writer: store::Writer<K>,
    events: impl Fn() -> S + Send,
    shutdown: CancellationToken,
    ready: Arc<watch::Sender<usize>>,
    kind: &'static str,
    mut on_event: impl FnMut(&watcher::Event<K>) + Send,
    mut on_view: impl FnMut(bool) + Send,
) where
    K: Keyed + Clone + 'static,
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send,
{
    let mut stream = Box::pin(events());
    let mut first_done = false;
    // While failing: when to start the watch afresh.
    let mut restart_at: Option<tokio::time::Instant> = None;
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => break,
            next = stream.next() => next,
            () = tokio::time::sleep_until(restart_at.unwrap_or_else(tokio::time::Instant::now)), if restart_at.is_some() => {
                stream = Box::pin(events());
                restart_at = Some(tokio::time::Instant::now() + RESTART_FAILED_WATCH);
                continue;
            }
        };
        match next {
            Some(Ok(event)) => {
                writer.apply_watcher_event(&event);
                on_event(&event);
                if matches!(
                    event,
                    watcher::Event::Apply(_) | watcher::Event::Delete(_) | watcher::Event::InitDone
                ) {
                    restart_at = None;
                    on_view(true);
                }
                if matches!(event, watcher::Event::InitDone) {
                    if first_done {
                        info!(kind, "watch relisted");
                    } else {
                        first_done = true;
                        ready.send_modify(|n| *n += 1);
                    }
                }
            }
            Some(Err(e)) => {
                restart_at.get_or_insert_with(|| tokio::time::Instant::now() + RESTART_FAILED_WATCH);
                on_view(false);
                warn!(kind, error = %crate::runtime::error::redact(&e.to_string()), "watch failed; retrying")
            }
            None => break,
        }
    }
}

/// Test-only faults of the watches (builds with the `failpoints` feature).
#[cfg(feature = "failpoints")]
mod failpoints {
    use std::time::{Duration, Instant};

    use futures::{Stream, StreamExt};

    /// `OAUTHAPP_FAILPOINT=stale-secret-cache=<duration>`: every Secret watch event reaches the
    /// cache that long after it arrived (in order), so the cache is behind the API server the
    /// way a slow watch leaves it.
    pub fn stale_secret_cache<S>(events: S) -> futures::stream::BoxStream<'static, S::Item>
    where
        S: Stream + Send + 'static,
        S::Item: Send + 'static,
    {
        let delay = std::env::var("OAUTHAPP_FAILPOINT")
            .ok()
            .and_then(|f| f.strip_prefix("stale-secret-cache=").map(str::to_string))
            .and_then(|d| crate::model::status::parse_interval(&d))
            .and_then(|d| Duration::try_from(d).ok());
        let Some(delay) = delay else {
            return events.boxed();
        };
        tracing::warn!(
            ?delay,
            "failpoint stale-secret-cache: Secret watch events are held back"
        );
        let (tx, rx) = futures::channel::mpsc::unbounded();
        tokio::spawn(async move {
            let mut events = std::pin::pin!(events);
            while let Some(event) = events.next().await {
                if tx.unbounded_send((Instant::now(), event)).is_err() {
                    break;
                }
            }
        });
        rx.then(move |(arrived, event)| async move {
            tokio::time::sleep_until((arrived + delay).into()).await;
            event
        })
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    fn cached_app(namespace: &str, name: &str, uid: &str) -> Arc<CachedApp> {
        let mut app = OAuthApp::new(name, Default::default());
        app.metadata.namespace = Some(namespace.into());
        app.metadata.uid = Some(uid.into());
        Arc::new(CachedApp::from(app))
    }

    #[test]
    fn the_uid_index_finds_each_app_by_its_uid_and_keeps_what_it_is_told_to() {
        let mut index = UidIndex::default();
        let uuid = "0b5f6c1e-8c4d-4c1a-9f3e-2d7a1b6c5e4f";
        let upper = "0B5F6C1E-8C4D-4C1A-9F3E-2D7A1B6C5E40";
        let billing = cached_app("team-a", "billing", uuid);
        index.insert(billing.clone());
        // Not the API server's form: found as given.
        index.insert(cached_app("team-b", "upper", upper));
        index.insert(cached_app("team-c", "plain", "uid-1"));
        // No uid: not indexed.
        index.insert(cached_app("team-c", "none", ""));
        assert_eq!(index.table.len(), 3);
        let found = index.get(uuid).expect("by its uuid");
        assert!(Arc::ptr_eq(&found, &billing), "the store's own copy, no other");
        drop(found);
        assert_eq!(
            index.get(upper).map(|a| a.name().to_string()).as_deref(),
            Some("upper")
        );
        assert_eq!(
            index.get("uid-1").map(|a| a.namespace().to_string()).as_deref(),
            Some("team-c")
        );
        assert!(index.get("0b5f6c1e-8c4d-4c1a-9f3e-2d7a1b6c5e40").is_none());
        // A newer copy replaces the one kept.
        let newer = cached_app("team-a", "billing", uuid);
        index.insert(newer.clone());
        assert!(Arc::ptr_eq(&index.get(uuid).expect("by its uuid"), &newer));
        assert_eq!(Arc::strong_count(&billing), 1, "the older copy is let go");
        index.retain(|app| app.namespace() != "team-c");
        assert!(index.contains(uuid) && index.contains(upper) && !index.contains("uid-1"));
        index.remove(uuid);
        assert!(!index.contains(uuid));
    }

    fn reference(kind: &str, controller: bool) -> OwnerReference {
        OwnerReference {
            api_version: if kind == "OAuthApp" {
                "oauthapp.io/v1alpha1"
            } else {
                "v1"
            }
            .into(),
            kind: kind.into(),
            name: "x".into(),
            uid: "u".into(),
            controller: Some(controller),
            ..Default::default()
        }
    }

    #[test]
    fn a_labelled_secret_no_app_controls_keeps_only_what_the_operator_reads() {
        let secret = |refs: Vec<OwnerReference>| {
            let mut s = PartialObjectMeta::<Secret>::default();
            s.metadata.labels = Some(
                [
                    (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
                    ("big".to_string(), "v".repeat(63)),
                ]
                .into(),
            );
            s.metadata.annotations = Some(
                [
                    ("oauthapp.io/rotation-id".to_string(), "r1".to_string()),
                    ("oauthapp.io/padding".to_string(), "x".repeat(MAX_OWN_VALUE + 1)),
                    ("velero.io/backup".to_string(), "x".repeat(100_000)),
                ]
                .into(),
            );
            s.metadata.finalizers = Some(vec!["example.com/f".into()]);
            s.metadata.owner_references = Some(refs);
            s.metadata.resource_version = Some("9".into());
            s
        };
        // Controlled by an app, with others' labels and annotations past the bound: its record
        // and the managed-by label, marked as trimmed (a write reads it afresh).
        let mut owned = secret(vec![reference("OAuthApp", true)]);
        strip_secret(&mut owned);
        assert_eq!(
            owned.metadata.labels,
            Some([(MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string())].into())
        );
        assert_eq!(
            owned.metadata.annotations,
            Some(
                [
                    ("oauthapp.io/rotation-id".to_string(), "r1".to_string()),
                    (TRIMMED.to_string(), String::new()),
                ]
                .into()
            )
        );
        // Anything else with the label: the managed-by label, small oauthapp.io/ annotations,
        // references to apps; its version.
        let mut bait = secret(vec![reference("ConfigMap", true), reference("OAuthApp", false)]);
        strip_secret(&mut bait);
        let meta = &bait.metadata;
        assert_eq!(
            meta.labels,
            Some([(MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string())].into())
        );
        assert_eq!(
            meta.annotations,
            Some([("oauthapp.io/rotation-id".to_string(), "r1".to_string())].into())
        );
        assert_eq!(meta.finalizers, None);
        assert_eq!(meta.owner_references, Some(vec![reference("OAuthApp", false)]));
        assert_eq!(meta.resource_version.as_deref(), Some("9"));
    }

    #[test]
    fn a_controlled_secret_whose_others_weigh_too_much_is_cached_with_its_record_only() {
        use crate::model::record::annotations;
        let record = |hash: &str| {
            std::collections::BTreeMap::from([
                (annotations::HASH.to_string(), hash.to_string()),
                (annotations::ROTATION_ID.to_string(), "r1".to_string()),
                (annotations::HISTORY.to_string(), "h".repeat(8 * 1024)),
            ])
        };
        let controlled = |labels: &[(&str, String)], annotations: &[(&str, String)], hash: &str| {
            let mut secret = PartialObjectMeta::<Secret>::default();
            let meta = &mut secret.metadata;
            meta.owner_references = Some(vec![reference("OAuthApp", true)]);
            meta.labels = Some(labels.iter().map(|(k, v)| (k.to_string(), v.clone())).collect());
            let mut all = record(hash);
            all.extend(annotations.iter().map(|(k, v)| (k.to_string(), v.clone())));
            meta.annotations = Some(all);
            secret
        };
        let managed = (MANAGED_BY_LABEL, MANAGED_BY.to_string());
        // Light: kept whole, not marked.
        let mut light = controlled(
            &[managed.clone(), ("reloader", "on".into())],
            &[("argocd.argoproj.io/tracking-id", "x".repeat(200))],
            "phc",
        );
        let before = light.metadata.clone();
        strip_secret(&mut light);
        assert_eq!(light.metadata.labels, before.labels);
        assert_eq!(light.metadata.annotations, before.annotations);
        assert!(!is_trimmed(&light.metadata));
        // Heavy: the others go, the record and the managed-by label stay, and the copy says so.
        let mut heavy = controlled(
            &[managed.clone(), ("big", "v".repeat(63))],
            &[("tenant.example.com/blob", "x".repeat(64 * 1024))],
            "phc",
        );
        strip_secret(&mut heavy);
        assert_eq!(
            heavy.metadata.labels,
            Some(
                [managed.clone()]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect()
            )
        );
        let mut expected = record("phc");
        expected.insert(TRIMMED.into(), String::new());
        assert_eq!(heavy.metadata.annotations, Some(expected));
        assert!(is_trimmed(&heavy.metadata));
        // A record value longer than the operator ever writes is not kept either.
        let mut forged = controlled(&[managed], &[], &"p".repeat(64 * 1024));
        strip_secret(&mut forged);
        let kept = forged.metadata.annotations.clone().unwrap_or_default();
        assert!(!kept.contains_key(annotations::HASH));
        assert!(kept.contains_key(annotations::HISTORY) && is_trimmed(&forged.metadata));
    }

    #[test]
    fn the_cached_app_keeps_only_the_operators_annotations() {
        use crate::model::crd::{REVOKE_PREVIOUS_ANNOTATION, ROTATE_ANNOTATION, ROTATE_REVOKE_ANNOTATION};
        use kube::ResourceExt;
        let mut app = OAuthApp::new("a", Default::default());
        let ours = [
            ROTATE_ANNOTATION,
            ROTATE_REVOKE_ANNOTATION,
            REVOKE_PREVIOUS_ANNOTATION,
        ];
        let mut annotations: std::collections::BTreeMap<String, String> =
            ours.iter().map(|k| (k.to_string(), "v".to_string())).collect();
        annotations.insert(
            "kubectl.kubernetes.io/last-applied-configuration".into(),
            "{\"a\": \"whole object\"}".into(),
        );
        app.metadata.annotations = Some(annotations);
        app.metadata.labels = Some([("team".to_string(), "x".to_string())].into());
        app.metadata.managed_fields = Some(vec![Default::default()]);
        app.metadata.resource_version = Some("7".into());
        strip_app(&mut app);
        let kept: Vec<&str> = app.annotations().keys().map(String::as_str).collect();
        let mut expected = ours.to_vec();
        expected.sort_unstable();
        assert_eq!(kept, expected);
        assert_eq!(app.metadata.labels, None);
        assert_eq!(app.metadata.managed_fields, None);
        assert_eq!(app.metadata.resource_version.as_deref(), Some("7"));

        app.metadata.annotations = Some([("other.io/x".to_string(), "y".to_string())].into());
        strip_app(&mut app);
        assert_eq!(app.metadata.annotations, None);
    }

    #[test]
    fn the_cached_secret_keeps_what_decisions_and_writes_need() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
        let owner = OwnerReference {
            api_version: "oauthapp.io/v1alpha1".into(),
            kind: "OAuthApp".into(),
            name: "a".into(),
            uid: "u".into(),
            controller: Some(true),
            ..Default::default()
        };
        let mut secret: PartialObjectMeta<Secret> = PartialObjectMeta {
            types: Some(kube::api::TypeMeta {
                api_version: "meta.k8s.io/v1".into(),
                kind: "PartialObjectMetadata".into(),
            }),
            metadata: kube::api::ObjectMeta {
                name: Some("a-oauth-client".into()),
                namespace: Some("ns".into()),
                resource_version: Some("7".into()),
                uid: Some("3f0e4b1c-0000-0000-0000-000000000000".into()),
                creation_timestamp: Some(Time(jiff::Timestamp::from_second(1).unwrap())),
                managed_fields: Some(vec![Default::default()]),
                labels: Some([(MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string())].into()),
                annotations: Some(
                    [
                        ("oauthapp.io/rotation-id".to_string(), "r".to_string()),
                        ("reloader.example/match".to_string(), "true".to_string()),
                    ]
                    .into(),
                ),
                owner_references: Some(vec![owner.clone()]),
                ..Default::default()
            },
            _phantom: Default::default(),
        };
        let before = secret.metadata.clone();
        strip_secret(&mut secret);
        let meta = &secret.metadata;
        assert_eq!(
            (&meta.uid, &meta.creation_timestamp, &meta.managed_fields),
            (&None, &None, &None)
        );
        assert_eq!(secret.types, None);
        assert_eq!(meta.name, before.name);
        assert_eq!(meta.namespace, before.namespace);
        assert_eq!(meta.resource_version, before.resource_version);
        assert_eq!(meta.labels, before.labels);
        // Others' annotations too: the Secret is written back with them.
        assert_eq!(meta.annotations, before.annotations);
        assert_eq!(meta.owner_references, Some(vec![owner]));
    }

    fn claimant(uid: &str, created: i64, holds: bool) -> OAuthApp {
        let mut app = OAuthApp::new(uid, Default::default());
        app.spec.client_id = Some("shared".into());
        app.metadata.uid = Some(uid.into());
        app.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            jiff::Timestamp::from_second(created).unwrap(),
        ));
        if holds {
            app.status = Some(crate::model::crd::OAuthAppStatus {
                client_id: Some("shared".into()),
                rotation_id: Some("r".into()),
                ..Default::default()
            });
        }
        app
    }

    #[test]
    fn a_client_id_belongs_to_its_holder_then_the_oldest_claimant() {
        let mut ids = ClientIds::default();
        assert_eq!(ids.owner("shared", || None), None);
        ids.put(&claimant("b", 200, false));
        ids.put(&claimant("c", 300, false));
        assert_eq!(ids.owner("shared", || None), Some("b"));
        // An app that holds the id keeps it, even against an older newcomer (one created while
        // this replica's cache lagged, say).
        ids.put(&claimant("c", 300, true));
        ids.put(&claimant("a", 100, false));
        assert_eq!(ids.owner("shared", || None), Some("c"));
        // The holder is deleted: the oldest remaining claimant gets it.
        ids.remove("c");
        assert_eq!(ids.owner("shared", || None), Some("a"));
        ids.retain(|uid| uid != "a");
        assert_eq!(ids.owner("shared", || None), Some("b"));
        ids.remove("b");
        assert_eq!(ids.owner("shared", || None), None);
        assert!(ids.by_id.is_empty() && ids.id_of.is_empty());
    }

    #[test]
    fn a_reserved_client_id_passes_only_within_the_namespace_of_its_last_holder() {
        let in_ns = |uid: &str, created: i64, ns: &str| {
            let mut app = claimant(uid, created, false);
            app.metadata.namespace = Some(ns.into());
            app
        };
        // Deleted long ago: any app of the namespace may take it.
        let payments = || {
            Some(crate::runtime::ledger::Reservation {
                namespace: crate::runtime::ledger::digest("namespace", "payments"),
                holder: crate::runtime::ledger::key("payments", "portal"),
                since: 0,
            })
        };
        let mut ids = ClientIds::default();
        // The holder in `payments` was deleted; a squatter elsewhere, older, asks for the id.
        ids.put(&in_ns("squatter", 100, "other"));
        assert_eq!(ids.owner("shared", payments), None, "reserved: nobody gets it");
        assert_eq!(
            ids.owner("shared", || None),
            Some("squatter"),
            "released by a person"
        );
        // The holder re-created (or restored) in its namespace gets it back.
        ids.put(&in_ns("again", 200, "payments"));
        assert_eq!(ids.owner("shared", payments), Some("again"));
        // Once it holds, the reservation no longer matters.
        let mut holding = claimant("again", 200, true);
        holding.metadata.namespace = Some("payments".into());
        ids.put(&holding);
        let elsewhere = || {
            Some(crate::runtime::ledger::Reservation {
                namespace: "elsewhere".into(),
                holder: String::new(),
                since: 0,
            })
        };
        assert_eq!(ids.owner("shared", elsewhere), Some("again"));
    }

    #[test]
    fn of_apps_restored_in_one_second_the_last_holders_name_gets_its_client_id() {
        let restored = |uid: &str, name: &str| {
            let mut app = claimant(uid, 500, false);
            app.metadata.name = Some(name.into());
            app.metadata.namespace = Some("payments".into());
            app
        };
        let deleted_now = jiff::Timestamp::now().as_second();
        let reserved = || {
            Some(crate::runtime::ledger::Reservation {
                namespace: crate::runtime::ledger::digest("namespace", "payments"),
                holder: crate::runtime::ledger::key("payments", "portal"),
                since: deleted_now,
            })
        };
        let mut ids = ClientIds::default();
        // Restored first: another name of the namespace waits for the holder's name.
        ids.put(&restored("0-squatter", "impostor"));
        assert_eq!(ids.owner("shared", reserved), None);
        // The squatter's uid sorts first; both were created in the same second.
        ids.put(&restored("1-holder", "portal"));
        assert_eq!(ids.owner("shared", reserved), Some("1-holder"));
        // Had the holder's name not come back, the namespace gets it after a while.
        ids.remove("1-holder");
        let long_ago = || {
            Some(crate::runtime::ledger::Reservation {
                since: deleted_now - crate::runtime::ledger::HOLDER_NAME_FIRST.as_secs() as i64,
                ..reserved().unwrap()
            })
        };
        assert_eq!(ids.owner("shared", long_ago), Some("0-squatter"));
        ids.put(&restored("1-holder", "portal"));
        // Without a reservation (released by a person), the usual order.
        assert_eq!(ids.owner("shared", || None), Some("0-squatter"));
    }

    fn app(name: &str, rv: &str) -> OAuthApp {
        let mut app = OAuthApp::new(name, Default::default());
        app.metadata.namespace = Some("ns".into());
        app.metadata.resource_version = Some(rv.into());
        app
    }

    /// Applies each event to a store, forwards it, and returns what the subscribers got: the
    /// name and resourceVersion of each object, "missed" for a notice to look at everything.
    fn forwarded(events: Vec<watcher::Event<OAuthApp>>) -> Vec<String> {
        let (store, mut writer) = store::store::<CachedApp>();
        let (tx, mut rx) = broadcast::channel(16);
        for event in events {
            let event = CachedApp::event(event);
            writer.apply_watcher_event(&event);
            forward(&event, &store, &tx);
        }
        let mut got = Vec::new();
        while let Ok(change) = rx.try_recv() {
            got.push(match change {
                Change::Object(obj) => format!(
                    "{}@{}",
                    obj.app().metadata.name.as_deref().unwrap_or_default(),
                    obj.app().metadata.resource_version.as_deref().unwrap_or_default()
                ),
                Change::Missed => "missed".into(),
            });
        }
        got
    }

    #[test]
    fn a_relist_is_announced_once_complete_not_object_by_object() {
        use watcher::Event::*;
        let got = forwarded(vec![
            Init,
            InitApply(app("a", "1")),
            InitDone,
            Apply(app("a", "2")),
            // The watch broke; what changed meanwhile arrives as a relist: "b" is new, and its
            // objects are in the store only at InitDone.
            Init,
            InitApply(app("a", "3")),
            InitApply(app("b", "4")),
            InitDone,
            Delete(app("a", "3")),
        ]);
        assert_eq!(got, ["missed", "a@2", "missed", "a@3"]);
    }
}
