//! The plugin's I/O: reads and patches `OAuthApp`s (and lists Events) through the caller's
//! kubeconfig. Never reads Secrets: `verify` works from the status hash alone.

use std::time::Duration;

use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::Event;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::wait::await_condition;
use kube::{Api, Client};
use serde::Serialize;

use super::{AppRow, FindKey, previous_kept_until, rotate_nonce, rotate_patch, rotation_done};
use crate::model::crd::{OAuthApp, ROTATE_ANNOTATION};

/// Why a command failed as a whole (per-app failures of `rotate` are results, not errors).
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("{what}: {source}")]
    Kube {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("{0}")]
    Usage(String),
}

fn kube_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> PluginError {
    let what = what.into();
    move |source| PluginError::Kube { what, source }
}

/// Where to look: one namespace, or all (`-A`).
#[derive(Debug, Clone)]
pub enum Scope {
    Namespace(String),
    All,
}

impl Scope {
    fn api(&self, client: &Client) -> Api<OAuthApp> {
        match self {
            Scope::Namespace(ns) => Api::namespaced(client.clone(), ns),
            Scope::All => Api::all(client.clone()),
        }
    }
}

/// The apps in `scope` that match `selector` (all of them without one), sorted by namespace and
/// name.
pub async fn list(
    client: &Client,
    scope: &Scope,
    selector: Option<&str>,
) -> Result<Vec<OAuthApp>, PluginError> {
    let mut params = ListParams::default();
    if let Some(selector) = selector {
        params = params.labels(selector);
    }
    let mut apps = scope
        .api(client)
        .list(&params)
        .await
        .map_err(kube_err("listing OAuthApps"))?
        .items;
    apps.sort_by(|a, b| {
        (&a.metadata.namespace, &a.metadata.name).cmp(&(&b.metadata.namespace, &b.metadata.name))
    });
    Ok(apps)
}

/// One app, by name.
pub async fn get(client: &Client, namespace: &str, name: &str) -> Result<OAuthApp, PluginError> {
    Api::<OAuthApp>::namespaced(client.clone(), namespace)
        .get(name)
        .await
        .map_err(kube_err(format!("getting OAuthApp {namespace}/{name}")))
}

/// How one app's rotation ended.
#[derive(Serialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
pub struct RotateOutcome {
    pub namespace: String,
    pub name: String,
    /// `rotated`, `requested` (with `--wait=false`), `timeout` or `failed`.
    pub result: &'static str,
    pub hint: Option<String>,
    pub rotation_id: Option<String>,
    pub trigger: Option<String>,
    /// Whether the replaced secret stays valid (`spec.rotation.gracePeriod`); unknown without
    /// waiting.
    pub previous_kept: Option<bool>,
    /// Until when it stays valid.
    pub previous_expires_at: Option<String>,
    pub error: Option<String>,
}

impl RotateOutcome {
    pub fn ok(&self) -> bool {
        matches!(self.result, "rotated" | "requested")
    }

    fn failed(namespace: &str, name: &str, result: &'static str, error: String) -> RotateOutcome {
        RotateOutcome {
            namespace: namespace.to_string(),
            name: name.to_string(),
            result,
            hint: None,
            rotation_id: None,
            trigger: None,
            previous_kept: None,
            previous_expires_at: None,
            error: Some(error),
        }
    }
}

/// Options of `rotate`.
#[derive(Debug, Clone)]
pub struct RotateOptions {
    pub wait: bool,
    pub timeout: Duration,
    pub concurrency: usize,
    /// Invalidate each app's previous secret at once (`oauthapp.io/rotate-revoke` valued with the rotation's nonce: that rotation only).
    pub revoke_previous: bool,
}

/// Requests a rotation of each app (a fresh `oauthapp.io/rotate` value, by merge patch, see
/// [`rotate_patch`]) and, with
/// `wait`, waits until the operator has acted on it. At most `concurrency` apps at a time; the
/// outcomes come back in the order of `apps`.
pub async fn rotate(
    client: &Client,
    apps: Vec<(String, String)>,
    options: &RotateOptions,
) -> Vec<RotateOutcome> {
    stream::iter(apps)
        .map(|(namespace, name)| async move { rotate_one(client, &namespace, &name, options).await })
        .buffered(options.concurrency.max(1))
        .collect()
        .await
}

async fn rotate_one(client: &Client, namespace: &str, name: &str, options: &RotateOptions) -> RotateOutcome {
    let api: Api<OAuthApp> = Api::namespaced(client.clone(), namespace);
    let nonce = rotate_nonce();
    let patch = rotate_patch(&nonce, options.revoke_previous);
    if let Err(e) = api
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        return RotateOutcome::failed(namespace, name, "failed", format!("requesting the rotation: {e}"));
    }
    if !options.wait {
        return RotateOutcome {
            namespace: namespace.to_string(),
            name: name.to_string(),
            result: "requested",
            hint: None,
            rotation_id: None,
            trigger: None,
            previous_kept: None,
            previous_expires_at: None,
            error: None,
        };
    }
    let done = {
        let nonce = nonce.clone();
        move |app: Option<&OAuthApp>| app.is_some_and(|a| rotation_done(a, &nonce))
    };
    match tokio::time::timeout(options.timeout, await_condition(api.clone(), name, done)).await {
        Ok(Ok(Some(app))) => {
            let kept_until = previous_kept_until(&app, jiff::Timestamp::now());
            let status = app.status.unwrap_or_default();
            RotateOutcome {
                namespace: namespace.to_string(),
                name: name.to_string(),
                result: "rotated",
                hint: status.client_secret_hint,
                rotation_id: status.rotation_id,
                trigger: status.last_rotation_trigger.map(|t| t.as_str().to_string()),
                previous_kept: Some(kept_until.is_some()),
                previous_expires_at: kept_until,
                error: None,
            }
        }
        Ok(Ok(None)) => RotateOutcome::failed(
            namespace,
            name,
            "failed",
            "the app was deleted while waiting".into(),
        ),
        Ok(Err(e)) => RotateOutcome::failed(namespace, name, "failed", format!("watching the app: {e}")),
        Err(_) => {
            // Say what the app looks like now: a conflict explains a wait better than "timeout".
            let ready = match api.get_opt(name).await {
                Ok(Some(app)) => {
                    let row = AppRow::of(&app);
                    format!("; Ready is {}", row.ready_text())
                }
                _ => String::new(),
            };
            RotateOutcome::failed(
                namespace,
                name,
                "timeout",
                format!(
                    "timed out after {}s waiting for the operator to act on {ROTATE_ANNOTATION}={nonce}{ready}. Is the operator running? The request stays on the app: the operator rotates once when it acts on it",
                    options.timeout.as_secs()
                ),
            )
        }
    }
}

/// One Event about an app, for the detailed `status` view.
#[derive(Serialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
pub struct EventLine {
    pub time: String,
    pub type_: String,
    pub reason: String,
    pub message: String,
}

/// The most recent Events about `app` (newest last), at most `limit`.
pub async fn events(client: &Client, app: &OAuthApp, limit: usize) -> Result<Vec<EventLine>, PluginError> {
    let namespace = app.metadata.namespace.clone().unwrap_or_default();
    let uid = app.metadata.uid.clone().unwrap_or_default();
    let api: Api<Event> = Api::namespaced(client.clone(), &namespace);
    let list = api
        .list(&ListParams::default().fields(&format!("involvedObject.uid={uid}")))
        .await
        .map_err(kube_err("listing Events"))?;
    let mut lines: Vec<(String, EventLine)> = list
        .items
        .into_iter()
        .map(|e| {
            let time = e
                .event_time
                .map(|t| t.0.to_string())
                .or_else(|| e.last_timestamp.map(|t| t.0.to_string()))
                .or_else(|| e.metadata.creation_timestamp.map(|t| t.0.to_string()))
                .unwrap_or_default();
            (
                time.clone(),
                EventLine {
                    time,
                    type_: e.type_.unwrap_or_default(),
                    reason: e.reason.unwrap_or_default(),
                    message: e.message.unwrap_or_default(),
                },
            )
        })
        .collect();
    lines.sort_by(|a, b| a.0.cmp(&b.0));
    let skip = lines.len().saturating_sub(limit);
    Ok(lines.into_iter().skip(skip).map(|(_, l)| l).collect())
}

/// The apps `key` names, in `scope`.
pub async fn find(client: &Client, scope: &Scope, key: &FindKey) -> Result<Vec<OAuthApp>, PluginError> {
    Ok(list(client, scope, None)
        .await?
        .into_iter()
        .filter(|app| key.matches(app))
        .collect())
}

/// What `key rotate` made: the new key Secret, its key id, and the key Secrets already there.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyAdded {
    pub namespace: String,
    pub secret: String,
    pub key_id: String,
    pub older: Vec<String>,
}

/// Adds a key to the record key ring of the installation whose key Secret is
/// `namespace/name`: a new Secret of 32 random bytes in the ring's first free slot (`name`,
/// `name-2` … `name-8`). Being the newest, it signs from the operator's next read of the ring
/// (within 10 s); every record is re-signed in the background, and no secret changes. The
/// older keys stay until a person retires them. Reads the ring's Secrets by name only.
pub async fn add_key(client: &Client, namespace: &str, name: &str) -> Result<KeyAdded, PluginError> {
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), namespace);
    let mut older = Vec::new();
    let mut free = None;
    for slot in crate::model::record::key_slots(name) {
        let found = secrets
            .get_metadata_opt(&slot)
            .await
            .map_err(kube_err(format!("reading Secret {namespace}/{slot}")))?;
        match found {
            Some(_) => older.push(slot),
            None if free.is_none() => free = Some(slot),
            None => {}
        }
    }
    let Some(slot) = free else {
        return Err(PluginError::Usage(format!(
            "the key ring in {namespace} is full ({} keys): retire an old key first (delete its Secret once \
             oauthapp_records_to_resign is 0)",
            older.len()
        )));
    };
    let bytes =
        crate::model::record::new_key_bytes().map_err(|e| PluginError::Usage(format!("no key made: {e}")))?;
    let key_id = crate::model::record::key_id(&bytes);
    let secret = crate::model::record::key_secret(namespace, &slot, bytes);
    secrets
        .create(&Default::default(), &secret)
        .await
        .map_err(kube_err(format!("creating Secret {namespace}/{slot}")))?;
    Ok(KeyAdded {
        namespace: namespace.to_string(),
        secret: slot,
        key_id,
        older,
    })
}
