//! What an app's Secret looks like besides its secret: the operator's label, the controller
//! owner reference, and the labels and annotations `spec.secret` asks for (and the record of
//! which keys came from the spec, so that a key dropped from the spec is dropped from the
//! Secret).

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::model::crd::OAuthApp;
use crate::model::record::annotations;

/// Labels on every Secret the operator writes; the operator watches only Secrets that carry them.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY: &str = crate::model::crd::MANAGER;

/// True when `meta` has a controller ownerReference to this app (by uid).
pub fn is_controlled_by(meta: &ObjectMeta, app: &OAuthApp) -> bool {
    crate::model::record::controlled_by(meta, app)
}

/// The Secret's ownerReferences follow `spec.secret.deletionPolicy`: with `Delete`, a
/// controller reference to the app (the Secret goes with it); with `Retain`, none to any app
/// of this name (the Secret stays, to be adopted). Others' references are left alone.
pub fn owner_in_sync(app: &OAuthApp, meta: &ObjectMeta) -> bool {
    let ours = |r: &&k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference| {
        r.kind == "OAuthApp" && Some(r.name.as_str()) == app.metadata.name.as_deref()
    };
    let refs: Vec<_> = meta.owner_references.iter().flatten().filter(ours).collect();
    match app.deletion_policy() {
        crate::model::crd::DeletionPolicy::Delete => refs.len() == 1 && is_controlled_by(meta, app),
        crate::model::crd::DeletionPolicy::Retain => refs.is_empty(),
    }
}

/// Puts the ownerReferences `spec.secret.deletionPolicy` asks for on `meta` ([`owner_in_sync`]).
pub fn apply_owner(app: &OAuthApp, meta: &mut ObjectMeta) {
    use kube::Resource as _;
    let name = app.metadata.name.clone();
    let mut refs: Vec<_> = meta
        .owner_references
        .take()
        .unwrap_or_default()
        .into_iter()
        .filter(|r| !(r.kind == "OAuthApp" && Some(&r.name) == name.as_ref()))
        .collect();
    if app.deletion_policy() == crate::model::crd::DeletionPolicy::Delete {
        refs.extend(app.controller_owner_ref(&()));
    }
    meta.owner_references = (!refs.is_empty()).then_some(refs);
}

pub fn annotations_of(meta: &ObjectMeta) -> BTreeMap<String, String> {
    meta.annotations.clone().unwrap_or_default()
}

/// The labels the Secret must carry: the user's (`spec.secret.labels`) and the operator's.
pub fn desired_secret_labels(app: &OAuthApp) -> BTreeMap<String, String> {
    let mut labels = app
        .spec
        .secret
        .as_ref()
        .map(|s| s.labels.clone())
        .unwrap_or_default();
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
    labels
}

/// The user's annotations for the Secret (`spec.secret.annotations`).
pub fn desired_secret_annotations(app: &OAuthApp) -> BTreeMap<String, String> {
    app.spec
        .secret
        .as_ref()
        .map(|s| s.annotations.clone())
        .unwrap_or_default()
}

/// The label and annotation keys the spec puts on the Secret (the value of
/// [`annotations::SPEC_METADATA_KEYS`]).
#[derive(Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
struct SpecMetadataKeys {
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    labels: BTreeSet<String>,
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    annotations: BTreeSet<String>,
}

impl SpecMetadataKeys {
    fn of(app: &OAuthApp) -> Self {
        let spec = app.spec.secret.as_ref();
        Self {
            labels: spec
                .map(|s| s.labels.keys().cloned().collect())
                .unwrap_or_default(),
            annotations: spec
                .map(|s| s.annotations.keys().cloned().collect())
                .unwrap_or_default(),
        }
    }

    /// What the Secret says was applied; an unreadable value counts as nothing.
    fn recorded(meta: &ObjectMeta) -> Self {
        meta.annotations
            .as_ref()
            .and_then(|a| a.get(annotations::SPEC_METADATA_KEYS))
            .and_then(|v| serde_json::from_str(v).ok())
            .unwrap_or_default()
    }

    /// The annotation's value; None when there is nothing to record.
    fn value(&self) -> Option<String> {
        if self.labels.is_empty() && self.annotations.is_empty() {
            return None;
        }
        serde_json::to_string(self).ok()
    }
}

/// Every desired label and annotation is on the Secret, and none that the spec set before and
/// no longer does (others' additions are left alone).
pub fn secret_metadata_in_sync(app: &OAuthApp, meta: &ObjectMeta) -> bool {
    let labels = meta.labels.clone().unwrap_or_default();
    let ann = annotations_of(meta);
    desired_secret_labels(app)
        .iter()
        .all(|(k, v)| labels.get(k) == Some(v))
        && desired_secret_annotations(app)
            .iter()
            .all(|(k, v)| ann.get(k) == Some(v))
        && ann.get(annotations::SPEC_METADATA_KEYS) == SpecMetadataKeys::of(app).value().as_ref()
        && owner_in_sync(app, meta)
}

/// Puts the spec's labels and annotations on the Secret's metadata and removes those the spec
/// set before and has since dropped; what others added is left alone.
pub fn apply_secret_metadata(app: &OAuthApp, meta: &mut ObjectMeta) {
    let before = SpecMetadataKeys::recorded(meta);
    let now = SpecMetadataKeys::of(app);
    let labels = meta.labels.get_or_insert_with(BTreeMap::new);
    for dropped in before.labels.difference(&now.labels) {
        if dropped != MANAGED_BY_LABEL {
            labels.remove(dropped);
        }
    }
    labels.extend(desired_secret_labels(app));
    let ann = meta.annotations.get_or_insert_with(BTreeMap::new);
    for dropped in before.annotations.difference(&now.annotations) {
        if !dropped.starts_with("oauthapp.io/") {
            ann.remove(dropped);
        }
    }
    ann.extend(desired_secret_annotations(app));
    match now.value() {
        Some(v) => ann.insert(annotations::SPEC_METADATA_KEYS.into(), v),
        None => ann.remove(annotations::SPEC_METADATA_KEYS),
    };
    apply_owner(app, meta);
}
