//! The cached form of an operator Secret: what [`crate::watches::strip_secret`] keeps of its
//! metadata, stored compactly. A `PartialObjectMeta<Secret>` costs some 4 KiB in the cache at a
//! dozen record annotations (an `ObjectMeta` of 424 bytes, a B-tree node per map of 11 slots
//! whatever it holds, and two allocations per annotation); this form costs about a quarter of
//! that: the keys the operator writes (its record's, its label) and the OAuthApp owner
//! reference's kind and apiVersion are shared static strings, and every other string of the
//! Secret sits in one buffer, referred to by offsets. Nothing is lost: [`CachedSecret::metadata`]
//! gives back the stripped metadata as it came, which is what the planner reads, once per
//! reconcile.

use std::borrow::Cow;
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{ObjectMeta, PartialObjectMeta};
use kube::runtime::reflector::{Lookup, ObjectRef};
use kube::runtime::watcher;

use crate::record::{Record, annotations};

/// The strings every operator Secret repeats, shared by all.
const KNOWN: [&str; 24] = [
    annotations::APP_ID,
    annotations::APP_NAME,
    annotations::INSTALLATION,
    annotations::SEAL,
    annotations::ROTATION_ID,
    annotations::HASH,
    annotations::HINT,
    annotations::TRIGGER,
    annotations::ROTATED_AT,
    annotations::ROTATION_COUNT,
    annotations::OBSERVED_ROTATE_TOKEN,
    annotations::SIGNATURE,
    annotations::PREVIOUS_ROTATION_ID,
    annotations::PREVIOUS_HASH,
    annotations::PREVIOUS_HINT,
    annotations::PREVIOUS_EXPIRES_AT,
    annotations::HISTORY,
    annotations::SPEC_METADATA_KEYS,
    crate::watches::TRIMMED,
    crate::controller::plan::MANAGED_BY_LABEL,
    crate::controller::plan::MANAGED_BY,
    "OAuthApp",
    "oauthapp.io/v1alpha1",
    "",
];

// Every key a record writes is shared.
const _: () = assert!(Record::KEYS.len() == 17);

/// A string of a cached Secret: one of [`KNOWN`], or a range of its buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Str {
    Known(u8),
    At(u32, u32),
}

/// Collects a Secret's strings into one buffer.
#[derive(Default)]
struct Buffer(String);

impl Buffer {
    fn put(&mut self, s: &str) -> Str {
        if let Some(i) = KNOWN.iter().position(|k| *k == s) {
            return Str::Known(i as u8);
        }
        let start = self.0.len();
        self.0.push_str(s);
        // A Secret's metadata is at most 1.5 MiB: offsets fit in u32.
        Str::At(start as u32, self.0.len() as u32)
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

/// An operator Secret in the watch cache ([`crate::watches`]): name, namespace and
/// resourceVersion, then the labels, annotations and owner references kept of it.
#[derive(Clone, Debug)]
pub struct CachedSecret {
    text: Box<str>,
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
        let mut pairs = |map: Option<BTreeMap<String, String>>| -> Box<[(Str, Str)]> {
            map.iter()
                .flatten()
                .map(|(k, v)| (buf.put(k), buf.put(v)))
                .collect()
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
            text: buf.0.into_boxed_str(),
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
    fn str(&self, s: Str) -> &str {
        match s {
            Str::Known(i) => KNOWN[usize::from(i)],
            Str::At(start, end) => &self.text[start as usize..end as usize],
        }
    }

    fn map_of(&self, pairs: &[(Str, Str)]) -> Option<BTreeMap<String, String>> {
        (!pairs.is_empty()).then(|| {
            pairs
                .iter()
                .map(|(k, v)| (self.str(*k).to_string(), self.str(*v).to_string()))
                .collect()
        })
    }

    /// The metadata as [`crate::watches::strip_secret`] left it.
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
        match event {
            watcher::Event::Apply(s) => watcher::Event::Apply(s.into()),
            watcher::Event::Delete(s) => watcher::Event::Delete(s.into()),
            watcher::Event::InitApply(s) => watcher::Event::InitApply(s.into()),
            watcher::Event::Init => watcher::Event::Init,
            watcher::Event::InitDone => watcher::Event::InitDone,
        }
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
        let known = |t: &Str| matches!(t, Str::Known(_));
        assert!(cached.labels.iter().any(|(k, v)| known(k) && known(v)));
        assert!(cached.annotations.iter().filter(|(k, _)| known(k)).count() == 2);
        let note = cached
            .annotations
            .iter()
            .find(|(k, _)| cached.str(*k) == "example.com/note");
        assert!(!known(&note.unwrap().0));
        assert!(known(&cached.owners[0].kind) && known(&cached.owners[0].api_version));
        // One buffer for the rest: name, namespace, version, the others' keys and values, the
        // owner's name and uid, and the record's values.
        let expected: usize = [
            "billing",
            "team-a",
            "4711",
            "team",
            "billing",
            "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA",
            "r-1",
            "example.com/note",
            "kept",
            "billing",
            "7d1c",
        ]
        .iter()
        .map(|s| s.len())
        .sum();
        assert_eq!(cached.text.len(), expected);
    }

    #[test]
    fn a_secret_another_kind_controls_has_no_controlling_app() {
        let mut secret = stripped();
        let refs = secret.metadata.owner_references.as_mut().unwrap();
        refs[0].kind = "Deployment".into();
        refs[0].api_version = "apps/v1".into();
        assert_eq!(CachedSecret::from(secret).controller(), ControlledBy::Other);
    }
}
