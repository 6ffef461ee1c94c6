//! The cached form of an operator Secret: what [`crate::watches::strip_secret`] keeps of its
//! metadata, stored compactly. A `PartialObjectMeta<Secret>` costs some 4 KiB in the cache at a
//! dozen record annotations (an `ObjectMeta` of 424 bytes, a B-tree node per map of 11 slots
//! whatever it holds, and two allocations per annotation); this form costs about a third of
//! that: the keys the operator writes (its record's, its label) and the OAuthApp owner
//! reference's kind and apiVersion are shared static strings, and the rest sit in slices of
//! exactly their length. Nothing is lost: [`CachedSecret::metadata`] gives back the stripped
//! metadata as it came, which is what the planner reads, once per reconcile.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{ObjectMeta, PartialObjectMeta};
use kube::runtime::reflector::{Lookup, ObjectRef};
use kube::runtime::watcher;

use crate::record::{Record, annotations};

/// A string that is either one of the operator's own (a record key, its label, the owner
/// reference's kind), shared, or one of this Secret's, allocated to its length.
#[derive(Clone, PartialEq, Eq)]
pub enum Text {
    Known(&'static str),
    Owned(Box<str>),
}

impl Text {
    fn new(s: String) -> Self {
        match known(&s) {
            Some(k) => Self::Known(k),
            None => Self::Owned(s.into_boxed_str()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Self::Known(s) => s,
            Self::Owned(s) => s,
        }
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

/// The strings every operator Secret repeats.
fn known(s: &str) -> Option<&'static str> {
    const OTHERS: [&str; 7] = [
        annotations::SPEC_METADATA_KEYS,
        crate::watches::TRIMMED,
        crate::controller::plan::MANAGED_BY_LABEL,
        crate::controller::plan::MANAGED_BY,
        "OAuthApp",
        "oauthapp.io/v1alpha1",
        "",
    ];
    Record::KEYS
        .iter()
        .chain(OTHERS.iter())
        .find(|k| **k == s)
        .copied()
}

/// A reference to the Secret's owner, as the API server has it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Owner {
    api_version: Text,
    kind: Text,
    name: Box<str>,
    uid: Box<str>,
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
    name: Box<str>,
    namespace: Box<str>,
    resource_version: Box<str>,
    labels: Box<[(Text, Text)]>,
    annotations: Box<[(Text, Text)]>,
    owners: Box<[Owner]>,
    /// Whatever else the stripped metadata holds (a deletionTimestamp, finalizers): rare.
    rest: Option<Box<ObjectMeta>>,
}

fn pairs(map: Option<BTreeMap<String, String>>) -> Box<[(Text, Text)]> {
    map.into_iter()
        .flatten()
        .map(|(k, v)| (Text::new(k), Text::new(v)))
        .collect()
}

fn map_of(pairs: &[(Text, Text)]) -> Option<BTreeMap<String, String>> {
    (!pairs.is_empty()).then(|| {
        pairs
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), v.as_str().to_string()))
            .collect()
    })
}

impl From<PartialObjectMeta<Secret>> for CachedSecret {
    fn from(secret: PartialObjectMeta<Secret>) -> Self {
        let mut meta = secret.metadata;
        let boxed = |s: Option<String>| s.unwrap_or_default().into_boxed_str();
        let name = boxed(meta.name.take());
        let namespace = boxed(meta.namespace.take());
        let resource_version = boxed(meta.resource_version.take());
        let labels = pairs(meta.labels.take());
        let annotations = pairs(meta.annotations.take());
        let owners = meta
            .owner_references
            .take()
            .into_iter()
            .flatten()
            .map(|r| Owner {
                api_version: Text::new(r.api_version),
                kind: Text::new(r.kind),
                name: r.name.into_boxed_str(),
                uid: r.uid.into_boxed_str(),
                controller: r.controller,
                block_owner_deletion: r.block_owner_deletion,
            })
            .collect();
        let rest = (meta != ObjectMeta::default()).then(|| Box::new(meta));
        Self {
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
    /// The metadata as [`crate::watches::strip_secret`] left it.
    pub fn metadata(&self) -> ObjectMeta {
        let mut meta = self.rest.as_deref().cloned().unwrap_or_default();
        let some = |s: &str| (!s.is_empty()).then(|| s.to_string());
        meta.name = some(&self.name);
        meta.namespace = some(&self.namespace);
        meta.resource_version = some(&self.resource_version);
        meta.labels = map_of(&self.labels);
        meta.annotations = map_of(&self.annotations);
        meta.owner_references = (!self.owners.is_empty()).then(|| {
            self.owners
                .iter()
                .map(|o| OwnerReference {
                    api_version: o.api_version.as_str().to_string(),
                    kind: o.kind.as_str().to_string(),
                    name: o.name.to_string(),
                    uid: o.uid.to_string(),
                    controller: o.controller,
                    block_owner_deletion: o.block_owner_deletion,
                })
                .collect()
        });
        meta
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn resource_version(&self) -> &str {
        &self.resource_version
    }

    /// The value of the annotation `key`.
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations
            .iter()
            .find(|(k, _)| k.as_str() == key)
            .map(|(_, v)| v.as_str())
    }

    /// What controls this Secret (its controller reference).
    pub fn controller(&self) -> ControlledBy<'_> {
        match self.owners.iter().find(|o| o.controller == Some(true)) {
            Some(o)
                if o.kind.as_str() == "OAuthApp" && o.api_version.as_str().starts_with("oauthapp.io/") =>
            {
                ControlledBy::App(&o.name)
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
        Some(Cow::Borrowed(&self.name))
    }

    fn namespace(&self) -> Option<Cow<'_, str>> {
        (!self.namespace.is_empty()).then_some(Cow::Borrowed(&self.namespace))
    }

    fn resource_version(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed(&self.resource_version))
    }

    fn uid(&self) -> Option<Cow<'_, str>> {
        None
    }

    /// The store's key: name and namespace only (the version would be one more copy per
    /// Secret, and a key does not compare it).
    fn to_object_ref(&self, _: ()) -> ObjectRef<Self> {
        let r = ObjectRef::new(&self.name);
        if self.namespace.is_empty() {
            r
        } else {
            r.within(&self.namespace)
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
        let known = |t: &Text| matches!(t, Text::Known(_));
        assert!(cached.labels.iter().any(|(k, v)| known(k) && known(v)));
        assert!(cached.annotations.iter().filter(|(k, _)| known(k)).count() == 2);
        assert!(!known(
            &cached
                .annotations
                .iter()
                .find(|(k, _)| k.as_str() == "example.com/note")
                .unwrap()
                .0
        ));
        assert!(known(&cached.owners[0].kind) && known(&cached.owners[0].api_version));
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
