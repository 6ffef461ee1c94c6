//! The cached form of an operator Secret: what [`crate::runtime::watches::strip_secret`] keeps of
//! its metadata, stored compactly. A `PartialObjectMeta<Secret>` costs some 4 KiB in the cache at a
//! dozen record annotations (an `ObjectMeta` of 424 bytes, a B-tree node per map of 11 slots
//! whatever it holds, and two allocations per annotation); this form costs about a quarter of that:
//! the keys the operator writes (its record's, its label) and the OAuthApp owner reference's kind
//! and apiVersion are shared static strings, and every other string of the Secret sits in one
//! buffer, referred to by offsets. Nothing is lost: [`CachedSecret::metadata`] gives back the
//! stripped metadata as it came, which is what the planner reads, once per reconcile.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::num::NonZeroU32;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, OwnerReference, Time};
use kube::api::{ObjectMeta, PartialObjectMeta};
use kube::runtime::reflector::{Lookup, ObjectRef};
use kube::runtime::watcher;

use crate::model::crd::{
    OAuthApp, OAuthAppSpec, OAuthAppStatus, PreviousSecret, RolloutRestarts, RotationHistoryEntry,
    RotationTrigger,
};
use crate::model::record::{Record, annotations};
use crate::model::status::reasons;

/// The strings every operator Secret and app repeats, shared by all: the record's keys
/// ([`Record::KEYS`]), then these.
const OTHERS: [&str; 24] = [
    annotations::SPEC_METADATA_KEYS,
    crate::runtime::watches::TRIMMED,
    crate::model::managed::MANAGED_BY_LABEL,
    crate::model::managed::MANAGED_BY,
    "OAuthApp",
    "oauthapp.io/v1alpha1",
    "",
    // An app's status.
    "Ready",
    "True",
    "False",
    "Unknown",
    crate::model::status::CONSUMERS_RESTARTED,
    crate::model::status::PROVIDER_SYNCED,
    crate::model::status::SYNCED,
    crate::model::status::SYNCED_WITHOUT_GRACE,
    crate::model::status::MANAGED_ELSEWHERE,
    reasons::SECRET_READY,
    reasons::SECRET_CONFLICT,
    reasons::CLIENT_ID_CONFLICT,
    reasons::SECRET_REJECTED,
    reasons::RECORD_UNVERIFIABLE,
    reasons::REPAIR_HELD,
    reasons::REPAIR_BACKOFF,
    reasons::INVALID_SCHEDULE,
];

/// The index of `s` among the shared strings ([`known`]).
fn known_index(s: &str) -> Option<u8> {
    Record::KEYS
        .iter()
        .chain(OTHERS.iter())
        .position(|k| *k == s)
        .map(|i| i as u8)
}

/// The shared string of this index.
fn known(i: u8) -> &'static str {
    let i = usize::from(i);
    Record::KEYS
        .get(i)
        .copied()
        .unwrap_or_else(|| OTHERS[i - Record::KEYS.len()])
}

/// A string of a cached Secret or app, in 8 bytes (and 8 as an `Option`): one of the shared ones
/// ([`known`]; `start` is [`Str::KNOWN`] and `end` its index + 1), or the range `start..end` of
/// its buffer ([`Text`]; never empty: the empty string is a shared one, so `end` is never 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Str {
    start: u32,
    end: NonZeroU32,
}

impl Str {
    const KNOWN: u32 = u32::MAX;

    fn known(i: u8) -> Str {
        Str {
            start: Self::KNOWN,
            end: NonZeroU32::MIN.saturating_add(u32::from(i)),
        }
    }

    fn is_known(self) -> bool {
        self.start == Self::KNOWN
    }
}

/// Collects an object's strings into one buffer.
#[derive(Default)]
struct Buffer(String);

/// An object's strings, collected by a [`Buffer`].
#[derive(Clone, Debug)]
struct Text(Box<str>);

impl Text {
    fn get(&self, s: Str) -> &str {
        if s.is_known() {
            // The index was a u8 (Str::known).
            return known((s.end.get() - 1) as u8);
        }
        &self.0[s.start as usize..s.end.get() as usize]
    }
}

impl From<Buffer> for Text {
    fn from(buf: Buffer) -> Self {
        Self(buf.0.into_boxed_str())
    }
}

/// A watch event of `A`, in the cached form `B`.
fn cached_event<A, B: From<A>>(event: watcher::Event<A>) -> watcher::Event<B> {
    match event {
        watcher::Event::Apply(a) => watcher::Event::Apply(a.into()),
        watcher::Event::Delete(a) => watcher::Event::Delete(a.into()),
        watcher::Event::InitApply(a) => watcher::Event::InitApply(a.into()),
        watcher::Event::Init => watcher::Event::Init,
        watcher::Event::InitDone => watcher::Event::InitDone,
    }
}

impl Buffer {
    /// Strings are looked for in a buffer up to this long (an operator Secret's is some 700
    /// bytes, an app's some 500).
    const SHARED_UP_TO: usize = 8 << 10;

    fn put_opt(&mut self, s: Option<&str>) -> Option<Str> {
        s.map(|s| self.put(s))
    }

    fn put(&mut self, s: &str) -> Str {
        if let Some(i) = known_index(s) {
            return Str::known(i);
        }
        // A string the buffer holds already, alone or inside another (an app's id that is also
        // its client id, a rotation id or hint that is also in the history), is kept once. Only
        // in a buffer of ordinary size: each look reads the buffer through.
        let start = match (self.0.len() <= Self::SHARED_UP_TO)
            .then(|| self.0.find(s))
            .flatten()
        {
            Some(at) => at,
            None => {
                let at = self.0.len();
                self.0.push_str(s);
                at
            }
        };
        // A Secret's or app's metadata is at most 1.5 MiB: offsets fit in u32. `s` is not empty
        // (the empty string is a shared one).
        Str {
            start: start as u32,
            end: NonZeroU32::new((start + s.len()) as u32).unwrap_or(NonZeroU32::MIN),
        }
    }
}

/// A reference to the Secret's owner, as the API server has it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Owner {
    api_version: Str,
    kind: Str,
    name: Str,
    uid: Str,
    controller: Option<bool>,
    block_owner_deletion: Option<bool>,
}

/// What a Secret's controller reference names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlledBy<'a> {
    /// The OAuthApp of this name.
    App(&'a str),
    /// Something else.
    Other,
    /// Nothing controls it.
    Nothing,
}

/// An operator Secret in the watch cache ([`crate::runtime::watches`]): name, namespace and
/// resourceVersion, then the labels, annotations and owner references kept of it.
#[derive(Clone, Debug)]
pub struct CachedSecret {
    text: Text,
    name: Str,
    namespace: Str,
    resource_version: Str,
    labels: Box<[(Str, Str)]>,
    annotations: Box<[(Str, Str)]>,
    owners: Box<[Owner]>,
    /// Whatever else the stripped metadata holds (a deletionTimestamp, finalizers): rare.
    rest: Option<Box<ObjectMeta>>,
}

impl From<PartialObjectMeta<Secret>> for CachedSecret {
    fn from(secret: PartialObjectMeta<Secret>) -> Self {
        let mut meta = secret.metadata;
        let mut buf = Buffer::default();
        let name = buf.put(meta.name.take().as_deref().unwrap_or_default());
        let namespace = buf.put(meta.namespace.take().as_deref().unwrap_or_default());
        let resource_version = buf.put(meta.resource_version.take().as_deref().unwrap_or_default());
        // The long values first, so that a short one inside them (the rotation id, hint and time
        // in the record's history) is kept once. No allocation but the pairs' own (short-lived
        // ones between the cached objects would leave the heap fragmented).
        let mut pairs = |map: Option<BTreeMap<String, String>>| -> Box<[(Str, Str)]> {
            let map = map.unwrap_or_default();
            let mut pairs: Box<[(Str, Str)]> = map.keys().map(|k| (buf.put(k), Str::known(0))).collect();
            for long in [true, false] {
                for (v, (_, at)) in map.values().zip(pairs.iter_mut()) {
                    if (v.len() >= Self::LONG_VALUE) == long {
                        *at = buf.put(v);
                    }
                }
            }
            pairs
        };
        let labels = pairs(meta.labels.take());
        let annotations = pairs(meta.annotations.take());
        let owners = meta
            .owner_references
            .take()
            .iter()
            .flatten()
            .map(|r| Owner {
                api_version: buf.put(&r.api_version),
                kind: buf.put(&r.kind),
                name: buf.put(&r.name),
                uid: buf.put(&r.uid),
                controller: r.controller,
                block_owner_deletion: r.block_owner_deletion,
            })
            .collect();
        let rest = (meta != ObjectMeta::default()).then(|| Box::new(meta));
        Self {
            text: buf.into(),
            name,
            namespace,
            resource_version,
            labels,
            annotations,
            owners,
            rest,
        }
    }
}

impl CachedSecret {
    /// Values at least this long go into the buffer first (the record's hash, seal, signature
    /// and history; not its rotation id, hint or time).
    const LONG_VALUE: usize = 40;

    fn str(&self, s: Str) -> &str {
        self.text.get(s)
    }

    fn map_of(&self, pairs: &[(Str, Str)]) -> Option<BTreeMap<String, String>> {
        (!pairs.is_empty()).then(|| {
            pairs
                .iter()
                .map(|(k, v)| (self.str(*k).to_string(), self.str(*v).to_string()))
                .collect()
        })
    }

    /// The metadata as [`crate::runtime::watches::strip_secret`] left it.
    pub fn metadata(&self) -> ObjectMeta {
        let mut meta = self.rest.as_deref().cloned().unwrap_or_default();
        let some = |s: &str| (!s.is_empty()).then(|| s.to_string());
        meta.name = some(self.name());
        meta.namespace = some(self.namespace());
        meta.resource_version = some(self.resource_version());
        meta.labels = self.map_of(&self.labels);
        meta.annotations = self.map_of(&self.annotations);
        meta.owner_references = (!self.owners.is_empty()).then(|| {
            self.owners
                .iter()
                .map(|o| OwnerReference {
                    api_version: self.str(o.api_version).to_string(),
                    kind: self.str(o.kind).to_string(),
                    name: self.str(o.name).to_string(),
                    uid: self.str(o.uid).to_string(),
                    controller: o.controller,
                    block_owner_deletion: o.block_owner_deletion,
                })
                .collect()
        });
        meta
    }

    pub fn name(&self) -> &str {
        self.str(self.name)
    }

    pub fn namespace(&self) -> &str {
        self.str(self.namespace)
    }

    pub fn resource_version(&self) -> &str {
        self.str(self.resource_version)
    }

    /// The value of the annotation `key`.
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations
            .iter()
            .find(|(k, _)| self.str(*k) == key)
            .map(|(_, v)| self.str(*v))
    }

    /// What controls this Secret (its controller reference).
    pub fn controller(&self) -> ControlledBy<'_> {
        match self.owners.iter().find(|o| o.controller == Some(true)) {
            Some(o)
                if self.str(o.kind) == "OAuthApp" && self.str(o.api_version).starts_with("oauthapp.io/") =>
            {
                ControlledBy::App(self.str(o.name))
            }
            Some(_) => ControlledBy::Other,
            None => ControlledBy::Nothing,
        }
    }

    /// A watch event of stripped Secret metadata, in this form.
    pub fn event(event: watcher::Event<PartialObjectMeta<Secret>>) -> watcher::Event<Self> {
        cached_event(event)
    }
}

impl Lookup for CachedSecret {
    type DynamicType = ();

    fn kind(_: &()) -> Cow<'_, str> {
        "Secret".into()
    }

    fn group(_: &()) -> Cow<'_, str> {
        "".into()
    }

    fn version(_: &()) -> Cow<'_, str> {
        "v1".into()
    }

    fn plural(_: &()) -> Cow<'_, str> {
        "secrets".into()
    }

    fn name(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed(CachedSecret::name(self)))
    }

    fn namespace(&self) -> Option<Cow<'_, str>> {
        let ns = CachedSecret::namespace(self);
        (!ns.is_empty()).then_some(Cow::Borrowed(ns))
    }

    fn resource_version(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed(CachedSecret::resource_version(self)))
    }

    fn uid(&self) -> Option<Cow<'_, str>> {
        None
    }

    /// The store's key: name and namespace only (the version would be one more copy per
    /// Secret, and a key does not compare it).
    fn to_object_ref(&self, _: ()) -> ObjectRef<Self> {
        let r = ObjectRef::new(CachedSecret::name(self));
        match Lookup::namespace(self) {
            Some(ns) => r.within(&ns),
            None => r,
        }
    }
}

/// An app in the watch cache ([`crate::runtime::watches`]): what [`crate::runtime::watches::strip_app`] keeps of
/// it, with its status's strings in one buffer, referred to by offsets, and its metadata but
/// the name and namespace there too (no `ObjectMeta`: 360 bytes for two strings). An
/// `OAuthApp` costs some 2.4 KiB in the cache, most of it fixed-size parts (its status 360
/// bytes, a condition 128, a history entry 96) and a box per string. The controller's queue
/// ([`crate::controller::queue`]) keys apps by name and namespace; [`CachedApp::app`] gives back
/// the app as it came, which the planner and the REST API read, once per reconcile or request.
#[derive(Clone, Debug)]
pub struct CachedApp {
    text: Text,
    name: Str,
    namespace: Str,
    uid: Str,
    resource_version: Str,
    generation: Option<i64>,
    created: Option<Time>,
    deleted: Option<Time>,
    /// Whatever else the stripped metadata holds (the operator's annotations, finalizers,
    /// owner references): rare.
    rest: Option<Box<ObjectMeta>>,
    spec: Spec,
    status: Option<Box<Status>>,
}

/// An app's spec in the cache: its JSON, in the app's buffer (some 90 bytes for an app with a
/// redirect URI and a scope, where the struct and its boxes take some 300), read back on
/// [`CachedApp::app`]. A spec whose JSON would not read back (none that serde writes) is kept
/// as it is.
#[derive(Clone, Debug)]
enum Spec {
    Json(Str),
    Kept(Box<OAuthAppSpec>),
}

/// [`OAuthAppStatus`], its strings in the app's buffer.
#[derive(Clone, Debug)]
struct Status {
    app_id: Option<Str>,
    client_id: Option<Str>,
    secret_name: Option<Str>,
    client_secret_hash: Option<Str>,
    client_secret_hint: Option<Str>,
    rotation_id: Option<Str>,
    observed_rotate_token: Option<Str>,
    secret_resource_version: Option<Str>,
    installation: Option<Str>,
    rotation_count: i64,
    observed_generation: Option<i64>,
    last_rotation_time: Option<Time>,
    next_rotation_time: Option<Time>,
    last_rotation_trigger: Option<RotationTrigger>,
    previous_secret: Option<Box<PreviousSecret>>,
    rollout_restarts: Option<Box<RolloutRestarts>>,
    history: Box<[Entry]>,
    conditions: Box<[Cond]>,
}

#[derive(Clone, Debug)]
struct Entry {
    rotation_id: Str,
    hint: Str,
    username: Option<Str>,
    trigger: RotationTrigger,
    time: Time,
}

#[derive(Clone, Debug)]
struct Cond {
    type_: Str,
    status: Str,
    reason: Str,
    message: Str,
    last_transition_time: Time,
    observed_generation: Option<i64>,
}

impl From<OAuthApp> for CachedApp {
    // Long: the cached form field by field, each a line or two.
    fn from(app: OAuthApp) -> Self {
        let mut meta = app.metadata;
        let mut buf = Buffer::default();
        // The long strings first (the spec's JSON, the conditions' messages), so that the
        // shorter ones inside them (a name in a redirect URI, the Secret's name in a message) are
        // kept once (Buffer::put).
        let spec = match serde_json::to_string(&app.spec) {
            Ok(json) if serde_json::from_str::<OAuthAppSpec>(&json).is_ok() => Spec::Json(buf.put(&json)),
            _ => Spec::Kept(Box::new(app.spec)),
        };
        let name = buf.put(meta.name.take().as_deref().unwrap_or_default());
        let namespace = buf.put(meta.namespace.take().as_deref().unwrap_or_default());
        let uid = buf.put(meta.uid.take().as_deref().unwrap_or_default());
        let resource_version = buf.put(meta.resource_version.take().as_deref().unwrap_or_default());
        let generation = meta.generation.take();
        let created = meta.creation_timestamp.take();
        let deleted = meta.deletion_timestamp.take();
        let rest = (meta != ObjectMeta::default()).then(|| Box::new(meta));
        let status = app.status.map(|st| {
            let conditions: Box<[Cond]> = st
                .conditions
                .into_iter()
                .map(|c| Cond {
                    message: buf.put(&c.message),
                    type_: buf.put(&c.type_),
                    status: buf.put(&c.status),
                    reason: buf.put(&c.reason),
                    last_transition_time: c.last_transition_time,
                    observed_generation: c.observed_generation,
                })
                .collect();
            let mut put = |s: &Option<String>| buf.put_opt(s.as_deref());
            let (app_id, client_id, secret_name) =
                (put(&st.app_id), put(&st.client_id), put(&st.secret_name));
            let (client_secret_hash, client_secret_hint) =
                (put(&st.client_secret_hash), put(&st.client_secret_hint));
            let (rotation_id, observed_rotate_token) = (put(&st.rotation_id), put(&st.observed_rotate_token));
            let (secret_resource_version, installation) =
                (put(&st.secret_resource_version), put(&st.installation));
            let history = st
                .history
                .into_iter()
                .map(|e| Entry {
                    rotation_id: buf.put(&e.rotation_id),
                    hint: buf.put(&e.hint),
                    username: buf.put_opt(e.username.as_deref()),
                    trigger: e.trigger,
                    time: e.time,
                })
                .collect();
            Box::new(Status {
                app_id,
                client_id,
                secret_name,
                client_secret_hash,
                client_secret_hint,
                rotation_id,
                observed_rotate_token,
                secret_resource_version,
                installation,
                rotation_count: st.rotation_count,
                observed_generation: st.observed_generation,
                last_rotation_time: st.last_rotation_time,
                next_rotation_time: st.next_rotation_time,
                last_rotation_trigger: st.last_rotation_trigger,
                previous_secret: st.previous_secret,
                rollout_restarts: st.rollout_restarts,
                history,
                conditions,
            })
        });
        Self {
            text: buf.into(),
            name,
            namespace,
            uid,
            resource_version,
            generation,
            created,
            deleted,
            rest,
            spec,
            status,
        }
    }
}

impl CachedApp {
    fn str(&self, s: Str) -> &str {
        self.text.get(s)
    }

    fn string(&self, s: Option<Str>) -> Option<String> {
        s.map(|s| self.str(s).to_string())
    }

    /// The app as [`crate::runtime::watches::strip_app`] left it.
    pub fn app(&self) -> OAuthApp {
        let mut metadata = self.rest.as_deref().cloned().unwrap_or_default();
        metadata.name = self.string(Some(self.name)).filter(|s| !s.is_empty());
        metadata.namespace = self.string(Some(self.namespace)).filter(|s| !s.is_empty());
        metadata.uid = self.string(Some(self.uid)).filter(|s| !s.is_empty());
        metadata.resource_version = self.string(Some(self.resource_version)).filter(|s| !s.is_empty());
        metadata.generation = self.generation;
        metadata.creation_timestamp = self.created.clone();
        metadata.deletion_timestamp = self.deleted.clone();
        let status = self.status.as_deref().map(|st| OAuthAppStatus {
            app_id: self.string(st.app_id),
            client_id: self.string(st.client_id),
            secret_name: self.string(st.secret_name),
            client_secret_hash: self.string(st.client_secret_hash),
            client_secret_hint: self.string(st.client_secret_hint),
            rotation_id: self.string(st.rotation_id),
            rotation_count: st.rotation_count,
            last_rotation_time: st.last_rotation_time.clone(),
            last_rotation_trigger: st.last_rotation_trigger,
            previous_secret: st.previous_secret.clone(),
            history: st
                .history
                .iter()
                .map(|e| RotationHistoryEntry {
                    rotation_id: self.str(e.rotation_id).to_string(),
                    hint: self.str(e.hint).to_string(),
                    trigger: e.trigger,
                    time: e.time.clone(),
                    username: self.string(e.username),
                })
                .collect(),
            rollout_restarts: st.rollout_restarts.clone(),
            next_rotation_time: st.next_rotation_time.clone(),
            observed_rotate_token: self.string(st.observed_rotate_token),
            secret_resource_version: self.string(st.secret_resource_version),
            observed_generation: st.observed_generation,
            installation: self.string(st.installation),
            conditions: st
                .conditions
                .iter()
                .map(|c| Condition {
                    type_: self.str(c.type_).to_string(),
                    status: self.str(c.status).to_string(),
                    reason: self.str(c.reason).to_string(),
                    message: self.str(c.message).to_string(),
                    last_transition_time: c.last_transition_time.clone(),
                    observed_generation: c.observed_generation,
                })
                .collect(),
        });
        OAuthApp {
            metadata,
            spec: self.spec(),
            status,
        }
    }

    pub fn uid(&self) -> Option<&str> {
        Some(self.str(self.uid)).filter(|u| !u.is_empty())
    }

    pub fn name(&self) -> &str {
        self.str(self.name)
    }

    pub fn namespace(&self) -> &str {
        self.str(self.namespace)
    }

    /// The app's spec, as it came.
    pub fn spec(&self) -> OAuthAppSpec {
        match &self.spec {
            // Read back only what was checked to read back when it was cached.
            Spec::Json(json) => serde_json::from_str(self.str(*json)).unwrap_or_default(),
            Spec::Kept(spec) => spec.as_ref().clone(),
        }
    }

    /// The Ready condition's status and reason.
    pub fn ready(&self) -> Option<(&str, &str)> {
        let st = self.status.as_deref()?;
        let c = st.conditions.iter().find(|c| self.str(c.type_) == "Ready")?;
        Some((self.str(c.status), self.str(c.reason)))
    }

    /// `status.nextRotationTime`.
    pub fn next_rotation_time(&self) -> Option<&Time> {
        self.status.as_deref()?.next_rotation_time.as_ref()
    }

    /// `status.installation`.
    pub fn installation(&self) -> Option<&str> {
        Some(self.str(self.status.as_deref()?.installation?))
    }

    /// A watch event of a stripped app, in this form.
    pub fn event(event: watcher::Event<OAuthApp>) -> watcher::Event<Self> {
        cached_event(event)
    }
}

impl crate::runtime::store::Keyed for CachedApp {
    fn namespace(&self) -> &str {
        CachedApp::namespace(self)
    }

    fn name(&self) -> &str {
        CachedApp::name(self)
    }
}

impl crate::runtime::store::Keyed for CachedSecret {
    fn namespace(&self) -> &str {
        CachedSecret::namespace(self)
    }

    fn name(&self) -> &str {
        CachedSecret::name(self)
    }
}

impl Lookup for CachedApp {
    type DynamicType = ();

    fn kind(dt: &()) -> Cow<'_, str> {
        <OAuthApp as kube::Resource>::kind(dt)
    }

    fn group(dt: &()) -> Cow<'_, str> {
        <OAuthApp as kube::Resource>::group(dt)
    }

    fn version(dt: &()) -> Cow<'_, str> {
        <OAuthApp as kube::Resource>::version(dt)
    }

    fn plural(dt: &()) -> Cow<'_, str> {
        <OAuthApp as kube::Resource>::plural(dt)
    }

    fn name(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed(CachedApp::name(self)))
    }

    fn namespace(&self) -> Option<Cow<'_, str>> {
        let ns = CachedApp::namespace(self);
        (!ns.is_empty()).then_some(Cow::Borrowed(ns))
    }

    fn resource_version(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed(self.str(self.resource_version))).filter(|v| !v.is_empty())
    }

    fn uid(&self) -> Option<Cow<'_, str>> {
        CachedApp::uid(self).map(Cow::Borrowed)
    }

    /// The store's key: name and namespace only (the uid and version would be two more copies
    /// per app, and a key does not compare them).
    fn to_object_ref(&self, _: ()) -> ObjectRef<Self> {
        ObjectRef::new(CachedApp::name(self)).within(CachedApp::namespace(self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stripped() -> PartialObjectMeta<Secret> {
        PartialObjectMeta::<Secret> {
            metadata: ObjectMeta {
                name: Some("billing".into()),
                namespace: Some("team-a".into()),
                resource_version: Some("4711".into()),
                labels: Some(BTreeMap::from([
                    ("app.kubernetes.io/managed-by".into(), "oauthapp-operator".into()),
                    ("team".into(), "billing".into()),
                ])),
                annotations: Some(BTreeMap::from([
                    (
                        annotations::HASH.into(),
                        "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
                    ),
                    (annotations::ROTATION_ID.into(), "r-1".into()),
                    ("example.com/note".into(), "kept".into()),
                ])),
                owner_references: Some(vec![OwnerReference {
                    api_version: "oauthapp.io/v1alpha1".into(),
                    kind: "OAuthApp".into(),
                    name: "billing".into(),
                    uid: "7d1c".into(),
                    controller: Some(true),
                    block_owner_deletion: Some(true),
                }]),
                finalizers: Some(vec!["example.com/hold".into()]),
                ..ObjectMeta::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn the_cached_form_gives_back_the_metadata_it_was_made_of() {
        let secret = stripped();
        let cached = CachedSecret::from(secret.clone());
        assert_eq!(cached.metadata(), secret.metadata);
        assert_eq!(cached.annotation(annotations::ROTATION_ID), Some("r-1"));
        assert_eq!(cached.annotation(annotations::SEAL), None);
        assert_eq!(cached.controller(), ControlledBy::App("billing"));
        assert_eq!(cached.resource_version(), "4711");
        let empty = CachedSecret::from(PartialObjectMeta::<Secret>::default());
        assert_eq!(empty.metadata(), ObjectMeta::default());
        assert_eq!(empty.controller(), ControlledBy::Nothing);
    }

    #[test]
    fn the_operators_own_strings_are_shared_not_copied() {
        let cached = CachedSecret::from(stripped());
        let known = |t: &Str| t.is_known();
        assert!(cached.labels.iter().any(|(k, v)| known(k) && known(v)));
        assert!(cached.annotations.iter().filter(|(k, _)| known(k)).count() == 2);
        let note = cached
            .annotations
            .iter()
            .find(|(k, _)| cached.str(*k) == "example.com/note");
        assert!(!known(&note.unwrap().0));
        assert!(known(&cached.owners[0].kind) && known(&cached.owners[0].api_version));
        // One buffer for the rest: name, namespace, version, the others' keys and values, the
        // owner's name and uid, and the record's values; a string repeated, alone or inside
        // another ("billing" as the name, a label value and the owner; the label key "team" in
        // "team-a"), once.
        let distinct = [
            "billing",
            "team-a",
            "4711",
            "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA",
            "r-1",
            "example.com/note",
            "kept",
            "7d1c",
        ];
        for s in distinct {
            assert_eq!(
                cached.text.0.matches(s).count(),
                1,
                "{s} once in {}",
                cached.text.0
            );
        }
        assert_eq!(
            cached.text.0.len(),
            distinct.iter().map(|s| s.len()).sum::<usize>()
        );
        assert_eq!(cached.metadata(), stripped().metadata);
    }

    #[test]
    fn a_string_is_looked_for_only_in_a_buffer_of_ordinary_size() {
        let mut buf = Buffer::default();
        let big = "x".repeat(Buffer::SHARED_UP_TO + 1);
        let first = buf.put(&big);
        let again = buf.put("xx");
        assert_ne!(first, again);
        assert_eq!(buf.0.len(), big.len() + 2);
        let text = Text::from(buf);
        assert_eq!(text.get(again), "xx");
        assert_eq!(text.get(first), big);
    }

    proptest::proptest! {
        /// Strings that repeat and sit inside one another (a small alphabet) read back as they
        /// were put, however they share the buffer.
        #[test]
        fn metadata_with_repeated_strings_reads_back_the_same(
            name in "[ab]{1,6}",
            labels in proptest::collection::btree_map("[ab-]{0,4}", "[ab-]{0,6}", 0..4),
            annotations in proptest::collection::btree_map("[ab/]{0,5}", "[ab]{0,12}", 0..8),
            owner in "[ab]{0,5}",
        ) {
            let meta = ObjectMeta {
                name: Some(name),
                namespace: Some("ab".into()),
                resource_version: Some("ba".into()),
                labels: (!labels.is_empty()).then_some(labels),
                annotations: (!annotations.is_empty()).then_some(annotations),
                owner_references: Some(vec![OwnerReference {
                    api_version: "a/b".into(),
                    kind: "Ab".into(),
                    name: owner,
                    uid: "ab-ba".into(),
                    controller: Some(true),
                    block_owner_deletion: None,
                }]),
                ..ObjectMeta::default()
            };
            let cached = CachedSecret::from(PartialObjectMeta::<Secret> {
                metadata: meta.clone(),
                ..Default::default()
            });
            proptest::prop_assert_eq!(cached.metadata(), meta);
        }
    }

    #[test]
    fn a_str_is_eight_bytes_and_so_is_an_optional_one() {
        assert_eq!(std::mem::size_of::<Str>(), 8);
        assert_eq!(std::mem::size_of::<Option<Str>>(), 8);
        let text = Text::from(Buffer::default());
        for i in 0..(Record::KEYS.len() + OTHERS.len()) as u8 {
            assert_eq!(text.get(Str::known(i)), known(i));
        }
    }

    #[test]
    fn a_secret_another_kind_controls_has_no_controlling_app() {
        let mut secret = stripped();
        let refs = secret.metadata.owner_references.as_mut().unwrap();
        refs[0].kind = "Deployment".into();
        refs[0].api_version = "apps/v1".into();
        assert_eq!(CachedSecret::from(secret).controller(), ControlledBy::Other);
    }

    // Long: a test fixture with every field set, one per line.
    fn full_app() -> OAuthApp {
        use crate::model::crd::{RestartKind, RestartTarget};
        let time = |s: &str| Time(s.parse().unwrap());
        let mut app = OAuthApp::new(
            "billing",
            OAuthAppSpec {
                display_name: Some("Billing".into()),
                redirect_uris: vec!["https://billing.example/cb".into()],
                scopes: vec!["invoices:read".into()],
                client_id: Some("billing-client".into()),
                ..Default::default()
            },
        );
        app.metadata = ObjectMeta {
            name: Some("billing".into()),
            namespace: Some("team-a".into()),
            uid: Some("7d1c".into()),
            resource_version: Some("4711".into()),
            generation: Some(3),
            creation_timestamp: Some(time("2026-01-01T00:00:00Z")),
            deletion_timestamp: Some(time("2026-02-01T00:00:00Z")),
            finalizers: Some(vec!["example.com/hold".into()]),
            annotations: Some(BTreeMap::from([("oauthapp.io/rotate".into(), "t1".into())])),
            ..ObjectMeta::default()
        };
        // Every field, named (no `..Default`): a field added to the status fails to compile
        // here until it is carried by the cached form too.
        app.status = Some(OAuthAppStatus {
            app_id: Some("app_6J8HU4ripkxrTszsb5Huvs".into()),
            client_id: Some("billing-client".into()),
            secret_name: Some("billing-oauth-client".into()),
            client_secret_hash: Some("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into()),
            client_secret_hint: Some("oas_zuUG...fPuW".into()),
            rotation_id: Some("r-2".into()),
            rotation_count: 2,
            last_rotation_time: Some(time("2026-01-02T00:00:00Z")),
            last_rotation_trigger: Some(RotationTrigger::Api),
            previous_secret: Some(Box::new(PreviousSecret {
                rotation_id: "r-1".into(),
                client_secret_hash: "$argon2id$old".into(),
                client_secret_hint: "oas_old...".into(),
                expires_at: time("2026-01-03T00:00:00Z"),
            })),
            history: vec![
                RotationHistoryEntry {
                    rotation_id: "r-2".into(),
                    hint: "oas_zuUG...fPuW".into(),
                    trigger: RotationTrigger::Api,
                    time: time("2026-01-02T00:00:00Z"),
                    username: Some("system:serviceaccount:team-a:ci".into()),
                },
                RotationHistoryEntry {
                    rotation_id: "r-1".into(),
                    hint: "oas_old...".into(),
                    trigger: RotationTrigger::Created,
                    time: time("2026-01-01T00:00:00Z"),
                    username: None,
                },
            ],
            rollout_restarts: Some(Box::new(RolloutRestarts {
                rotation_id: "r-2".into(),
                targets: vec![RestartTarget {
                    kind: RestartKind::Deployment,
                    name: "web".into(),
                }],
            })),
            next_rotation_time: Some(time("2026-03-01T00:00:00Z")),
            observed_rotate_token: Some("t0".into()),
            secret_resource_version: Some("4700".into()),
            observed_generation: Some(3),
            installation: Some("default/oauthapp-operator-record-key".into()),
            conditions: vec![
                Condition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    reason: reasons::SECRET_READY.into(),
                    message: "Secret billing-oauth-client holds the current client secret".into(),
                    last_transition_time: time("2026-01-02T00:00:00Z"),
                    observed_generation: Some(3),
                },
                Condition {
                    type_: "ConsumersRestarted".into(),
                    status: "False".into(),
                    reason: "TargetMissing".into(),
                    message: "Deployment web not found".into(),
                    last_transition_time: time("2026-01-02T00:00:01Z"),
                    observed_generation: None,
                },
            ],
        });
        app
    }

    #[test]
    fn the_cached_app_gives_back_the_app_it_was_made_of() {
        let app = full_app();
        let cached = CachedApp::from(app.clone());
        assert_eq!(cached.app(), app);
        assert_eq!(cached.uid(), Some("7d1c"));
        assert_eq!(cached.ready(), Some(("True", reasons::SECRET_READY)));
        assert_eq!(
            cached.installation(),
            Some("default/oauthapp-operator-record-key")
        );
        assert_eq!(
            cached.next_rotation_time(),
            app.status.as_ref().unwrap().next_rotation_time.as_ref()
        );
        // The cache keys the app by its name and namespace alone.
        assert_eq!((cached.namespace(), cached.name()), ("team-a", "billing"));
        assert_eq!(
            Lookup::to_object_ref(&cached, ()),
            ObjectRef::new("billing").within("team-a")
        );
        // An app without a status, or a fresh one, too.
        let mut bare = OAuthApp::new("bare", OAuthAppSpec::default());
        assert_eq!(CachedApp::from(bare.clone()).app(), bare);
        bare.status = Some(OAuthAppStatus::default());
        assert_eq!(CachedApp::from(bare.clone()).app(), bare);
        assert_eq!(CachedApp::from(bare).ready(), None);
    }

    #[test]
    fn a_spec_with_every_field_set_is_kept_as_json_and_reads_back_the_same() {
        let spec: OAuthAppSpec = serde_json::from_value(serde_json::json!({
            "displayName": "Billing",
            "redirectUris": ["https://billing.example/cb", "https://billing.example/cb2"],
            "scopes": ["invoices:read", "invoices:write"],
            "clientId": "billing-client",
            "secret": {
                "name": "billing-creds",
                "labels": {"team": "a"},
                "annotations": {"note": "n"},
                "deletionPolicy": "Retain"
            },
            "rotation": {
                "interval": "720h",
                "schedule": "0 3 * * 1",
                "timeZone": "Europe/Berlin",
                "gracePeriod": "10m",
                "historyLimit": 5
            },
            "rolloutRestartTargets": [{"kind": "Deployment", "name": "billing"}],
            "providerRef": {"name": "kc"}
        }))
        .expect("a spec with every field");
        let cached = CachedApp::from(OAuthApp::new("billing", spec.clone()));
        assert!(matches!(cached.spec, Spec::Json(_)), "{:?}", cached.spec);
        assert_eq!(cached.spec(), spec);
        assert_eq!(cached.app().spec, spec);
    }
}
