//! The `OAuthApp` custom resource (`oauthapp.io/v1alpha1`): the operator's API.
//!
//! Every field carries a doc comment: they become the descriptions that `kubectl explain` prints.
//! Validation that the API server can do (formats, sizes, immutability) is expressed here as
//! OpenAPI constraints and CEL rules, so a bad spec is refused at `kubectl apply` time with a
//! message that says what is wrong, instead of surfacing later as a failed reconcile.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use serde::{Deserialize, Serialize};

/// API group of the custom resource.
pub const GROUP: &str = "oauthapp.io";
/// Field manager and event reporter name.
pub const MANAGER: &str = "oauthapp-operator";
/// Annotation whose every new value requests exactly one rotation.
pub const ROTATE_ANNOTATION: &str = "oauthapp.io/rotate";
/// With value `true` next to a new `oauthapp.io/rotate` value: that rotation invalidates the
/// previous secret at once, whatever `spec.rotation.gracePeriod` says (this secret leaked).
pub const ROTATE_REVOKE_ANNOTATION: &str = "oauthapp.io/rotate-revoke";
/// Set to `status.previousSecret.rotationId`: retires that previous secret now, before its
/// expiry (the kubectl equivalent of `DELETE /api/v1/oauth-apps/{id}/previous-secret`).
pub const REVOKE_PREVIOUS_ANNOTATION: &str = "oauthapp.io/revoke-previous";
/// Accepts the app's Secret as it is when its rotation record cannot be verified (signed by a
/// key the operator does not hold, no status to check it against): valued with that record's
/// rotation id. The operator then checks the Secret's plaintext against the record's hash and,
/// if it matches, signs the record with its own key: no new secret. Only editors may set it
/// (the admission policy lets rotators change the rotate annotation alone).
pub const ACCEPT_SECRET_ANNOTATION: &str = "oauthapp.io/accept-secret";
/// Keys of the generated Secret.
pub const CLIENT_ID_KEY: &str = "client_id";
/// Key of the plaintext client secret in the generated Secret.
pub const CLIENT_SECRET_KEY: &str = "client_secret";
/// The smallest `spec.rotation.interval` the API server accepts.
pub const MIN_ROTATION_INTERVAL: &str = "1h";

/// An OAuth application whose client credentials the operator owns.
///
/// The operator writes the plaintext `client_id` and `client_secret` into a Secret in the same
/// namespace, and records an argon2id hash and a short hint of the secret in `status`, so that
/// whoever verifies client credentials needs read access to OAuthApps only, never to Secrets.
/// Annotate with `oauthapp.io/rotate=<new value>` to rotate the secret.
// kube-derive expands each printcolumn into attributes clippy sees as duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "oauthapp.io",
    version = "v1alpha1",
    kind = "OAuthApp",
    plural = "oauthapps",
    singular = "oauthapp",
    shortname = "oapp",
    category = "oauth",
    namespaced,
    status = "OAuthAppStatus",
    derive = "Default",
    derive = "PartialEq",
    doc = "An OAuth application whose client secret the operator generates, stores in a Secret and rotates.",
    printcolumn(name = "App ID", type_ = "string", json_path = ".status.appId"),
    printcolumn(name = "Client ID", type_ = "string", json_path = ".status.clientId"),
    printcolumn(name = "Hint", type_ = "string", json_path = ".status.clientSecretHint"),
    printcolumn(
        name = "Last Rotation",
        type_ = "date",
        json_path = ".status.lastRotationTime"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    // The default Secret name, `<name>-oauth-client`, must fit in 253 characters.
    validation = Rule::new(
        "self.metadata.name.size() <= 240 || (has(self.spec.secret) && has(self.spec.secret.name))"
    ).message("metadata.name may be at most 240 characters unless spec.secret.name is set: the Secret is named <metadata.name>-oauth-client")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(
    "has(self.clientId) == has(oldSelf.clientId) && (!has(self.clientId) || self.clientId == oldSelf.clientId)"
).message("spec.clientId is immutable: it is fixed when the app is created"))]
#[x_kube(validation = Rule::new(
    "(has(self.secret) && has(self.secret.name)) == (has(oldSelf.secret) && has(oldSelf.secret.name)) && (!has(self.secret) || !has(self.secret.name) || self.secret.name == oldSelf.secret.name)"
).message("spec.secret.name is immutable: it is fixed when the app is created"))]
pub struct OAuthAppSpec {
    /// Human-readable name of the application, for people; not used by the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 200))]
    pub display_name: Option<String>,

    /// Redirect URIs the authorization server may send the user back to. Each must be an
    /// absolute https URL, or an http URL on localhost or 127.0.0.1 (for development).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 2048)))]
    #[x_kube(validation = Rule::new(
        "self.all(u, isURL(u) && (url(u).getScheme() == 'https' || (url(u).getScheme() == 'http' && (url(u).getHostname() == 'localhost' || url(u).getHostname() == '127.0.0.1'))))"
    ).message("every redirect URI must be an absolute https URL, or http on localhost or 127.0.0.1"))]
    pub redirect_uris: Vec<String>,

    /// OAuth scopes the application may request (RFC 6749 scope tokens, e.g. `invoices:read`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 64),
        inner(length(min = 1, max = 128), regex(pattern = r"^[\x21\x23-\x5B\x5D-\x7E]+$"))
    )]
    pub scopes: Vec<String>,

    /// The OAuth client id written to the Secret. Defaults to the app id (`status.appId`).
    /// Immutable: it is fixed when the app is created. It may not start with `app_` (reserved
    /// for generated ids), and it is unique across the watched namespaces: an app that asks for
    /// an id another app claimed first gets no Secret (Ready=False, reason ClientIdConflict).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128), regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9._:-]*$"))]
    #[x_kube(validation = Rule::new("!self.startsWith('app_')").message(
        "spec.clientId may not start with app_: that prefix is reserved for generated ids"
    ))]
    pub client_id: Option<String>,

    /// Where and how the credentials Secret is written.
    // Boxed, as `rotation`, `status.previousSecret` and `status.rolloutRestarts`: absent from most
    // apps, and inline each would weigh on every cached app (~0.3 KiB together).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<Box<SecretSpec>>,

    /// Scheduled rotation. Absent: the secret rotates only on request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation: Option<Box<RotationSpec>>,

    /// Workloads in the app's namespace that read the Secret and must restart to pick up a new
    /// secret. After each rotation that replaces a secret, each gets exactly one rollout restart:
    /// the operator sets its pod template annotation `oauthapp.io/restarted-for` to the rotation
    /// id. A missing target, or one the operator may not patch, does not hold the rotation back:
    /// the app gets `ConsumersRestarted=False` and the restart is retried with backoff.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["kind", "name"]))]
    pub rollout_restart_targets: Vec<RestartTarget>,

    /// The OAuthProvider (in this namespace) the app is registered in as a confidential client:
    /// its client id, redirect URIs and display name, and its current secret, which the provider
    /// gets before the Secret does. Absent: the app is known to no identity provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_ref: Option<crate::model::provider::ProviderRef>,
}

/// A workload restarted after each rotation (`kubectl rollout restart`, keyed by rotation id).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "camelCase")]
pub struct RestartTarget {
    /// The workload's kind (group `apps`).
    pub kind: RestartKind,
    /// The workload's name, in the app's namespace.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub name: String,
}

impl std::fmt::Display for RestartTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.kind.as_str(), self.name)
    }
}

/// The kinds of workload a rotation can restart.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash,
)]
pub enum RestartKind {
    Deployment,
    StatefulSet,
    DaemonSet,
}

impl RestartKind {
    /// The kind's name, as in `kind:`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deployment => "Deployment",
            Self::StatefulSet => "StatefulSet",
            Self::DaemonSet => "DaemonSet",
        }
    }
}

/// The pod template annotation a rollout restart sets: the rotation id it restarts for. The id,
/// not a time, so that restarting twice for one rotation changes nothing.
pub const RESTARTED_FOR_ANNOTATION: &str = "oauthapp.io/restarted-for";

/// The Secret that holds the app's plaintext credentials (keys `client_id` and `client_secret`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(
    "(has(self.labels) ? self.labels.map(k, size(k) + size(self.labels[k])).sum() : 0) + (has(self.annotations) ? self.annotations.map(k, size(k) + size(self.annotations[k])).sum() : 0) <= 65536"
).message("spec.secret.labels and annotations may hold at most 64 KiB in all (keys and values)"))]
pub struct SecretSpec {
    /// Name of the Secret. Default: `<metadata.name>-oauth-client`. Immutable once the app exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub name: Option<String>,

    /// Labels copied onto the Secret (for example for Reloader or a secret-sync tool). Keys and
    /// values follow the Kubernetes label syntax (values at most 63 characters).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend(
        "maxProperties" = 64,
        "additionalProperties" = {
            "type": "string",
            "maxLength": 63,
            "pattern": "^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
        }
    ))]
    #[x_kube(validation = Rule::new("self.all(k, !k.startsWith('oauthapp.io/'))")
        .message("labels under oauthapp.io/ are reserved for the operator"))]
    #[x_kube(validation = Rule::new(QUALIFIED_KEYS)
        .message("label keys must be qualified names: an optional DNS-subdomain prefix and '/', then at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"))]
    pub labels: BTreeMap<String, String>,

    /// Annotations copied onto the Secret. Keys follow the Kubernetes annotation key syntax;
    /// values are at most 16 KiB, and labels and annotations together at most 64 KiB.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend(
        "maxProperties" = 64,
        "additionalProperties" = {"type": "string", "maxLength": 16384}
    ))]
    #[x_kube(validation = Rule::new("self.all(k, !k.startsWith('oauthapp.io/'))")
        .message("annotations under oauthapp.io/ are reserved for the operator"))]
    #[x_kube(validation = Rule::new(QUALIFIED_KEYS)
        .message("annotation keys must be qualified names: an optional DNS-subdomain prefix and '/', then at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"))]
    pub annotations: BTreeMap<String, String>,

    /// What happens to the Secret when the app is deleted. `Delete` (default): it is deleted
    /// with the app (an ownerReference). `Retain`: it stays, with its rotation record, and the
    /// same app applied again (a GitOps tool's delete and create, Argo CD `Replace=true` with
    /// `Force=true`, Flux's force) adopts it: same app id, client id, secret and history. A
    /// retained Secret carries no ownerReference; delete it by hand when the app is gone for good.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_policy: Option<DeletionPolicy>,
}

/// `spec.secret.deletionPolicy`.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeletionPolicy {
    /// The Secret is deleted with the app (garbage collection, by its ownerReference).
    #[default]
    Delete,
    /// The Secret outlives the app, to be adopted by the app applied again.
    Retain,
}

/// CEL: every key of the map is a qualified name (`[prefix/]name`), as label and annotation
/// keys must be; otherwise the API server refuses every write of the Secret.
const QUALIFIED_KEYS: &str = r"self.all(k, k.size() <= 317 && k.matches('^([a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9]$') && (!k.contains('/') || k.indexOf('/') <= 253))";

/// Scheduled rotation of the client secret, and how long a replaced secret stays valid.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.interval) || !has(self.schedule)")
    .message("spec.rotation.interval and spec.rotation.schedule are alternatives: set at most one"))]
#[x_kube(validation = Rule::new("!has(self.timeZone) || has(self.schedule)")
    .message("spec.rotation.timeZone applies only to spec.rotation.schedule"))]
pub struct RotationSpec {
    /// Time between two scheduled rotations, as a duration of hours, minutes and seconds
    /// (e.g. `720h` or `36h30m`); at least `1h`. Absent (and no `schedule`): no scheduled
    /// rotation. At most one of `interval` and `schedule`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 32), regex(pattern = r"^([0-9]+(h|m|s))+$"))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1h')")
        .message("spec.rotation.interval must be at least 1h"))]
    pub interval: Option<String>,

    /// Rotation window: a cron expression of 5 fields (minute hour day-of-month month
    /// day-of-week, as in a CronJob), e.g. `0 3 * * 1` for Mondays at 03:00 in `timeZone`. Its
    /// minute field is one minute: at most one scheduled rotation an hour.
    /// Scheduled rotations happen only at its times; one missed while the operator was down is
    /// made once when it is back, not once per missed time. At most one of `interval` and
    /// `schedule`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 9, max = 128),
        regex(pattern = r"^ *[0-9A-Za-z*/,?#-]+( +[0-9A-Za-z*/,?#-]+){4} *$")
    )]
    #[x_kube(validation = Rule::new("self.matches('^ *[0-5]?[0-9] ')").message(
        "spec.rotation.schedule may rotate at most once an hour: its minute field must be one minute (e.g. \"30 * * * *\", not \"* * * * *\" or \"*/15 * * * *\"), as spec.rotation.interval is at least 1h"
    ))]
    pub schedule: Option<String>,

    /// The IANA time zone of `schedule` (e.g. `Europe/Berlin`); default `UTC`. Only with
    /// `schedule`. Daylight saving time: a time in a skipped hour runs once, at the first minute
    /// after it; a fixed time in a repeated hour runs once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 64),
        regex(pattern = r"^[A-Za-z0-9_+-]+(/[A-Za-z0-9_+-]+)*$")
    )]
    pub time_zone: Option<String>,

    /// How long the previous secret stays valid after a routine rotation (annotation, REST API,
    /// schedule), so that clients can move to the new one without an outage: verifiers accept
    /// both until then (`status.previousSecret`). At most `720h`; default `0s`: the old secret is
    /// invalid at once. Repairs (`SecretMissing`, `SecretDrift`) and revocations
    /// (`oauthapp.io/rotate-revoke` valued with the rotate token, `?revoke_previous=true`) never keep it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 32), regex(pattern = r"^([0-9]+(h|m|s))+$"))]
    #[x_kube(validation = Rule::new("duration(self) <= duration('720h')")
        .message("spec.rotation.gracePeriod may be at most 720h"))]
    pub grace_period: Option<String>,

    /// How many rotations `status.history` keeps, newest first (default 5, at most 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 20))]
    pub history_limit: Option<u8>,
}

/// `spec.rotation.historyLimit` when it is not set.
pub const DEFAULT_HISTORY_LIMIT: usize = 5;

/// One rotation in `status.history`. Never a hash, never anything secret.
#[derive(Serialize, Deserialize, schemars::JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RotationHistoryEntry {
    /// The rotation's id (`status.rotationId` while it was current).
    pub rotation_id: String,
    /// The non-secret hint of the secret it generated.
    pub hint: String,
    /// What made it happen.
    pub trigger: RotationTrigger,
    /// When it happened.
    pub time: Time,
    /// Who asked, for rotations through the REST API (the caller's Kubernetes username).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
}

/// Which `spec.rolloutRestartTargets` have been restarted for which rotation.
#[derive(Serialize, Deserialize, schemars::JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RolloutRestarts {
    /// The rotation the restarts were for.
    pub rotation_id: String,
    /// The targets restarted for it (or found already restarted for it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<RestartTarget>,
}

/// The secret a rotation replaced, still valid until `expiresAt` (`spec.rotation.gracePeriod`).
#[derive(Serialize, Deserialize, schemars::JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PreviousSecret {
    /// The rotation id of the previous secret.
    pub rotation_id: String,
    /// argon2id hash of the previous secret (PHC string).
    pub client_secret_hash: String,
    /// Its non-secret hint.
    pub client_secret_hint: String,
    /// When it stops being valid.
    pub expires_at: Time,
}

/// What made a rotation happen.
#[derive(Serialize, Deserialize, schemars::JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RotationTrigger {
    /// The first secret of a new app.
    Created,
    /// A new value of the `oauthapp.io/rotate` annotation.
    Annotation,
    /// `POST /api/v1/oauth-apps/{id}/rotate`.
    Api,
    /// `spec.rotation.interval` elapsed, or a time of `spec.rotation.schedule` came.
    Schedule,
    /// The Secret was deleted.
    SecretMissing,
    /// The Secret's `client_secret` no longer matched `status.clientSecretHash`.
    SecretDrift,
}

impl RotationTrigger {
    /// Every trigger, for metrics that want a zero for each.
    pub const ALL: [RotationTrigger; 6] = [
        Self::Created,
        Self::Annotation,
        Self::Api,
        Self::Schedule,
        Self::SecretMissing,
        Self::SecretDrift,
    ];

    /// The name used in status, Secret annotations, events and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "Created",
            Self::Annotation => "Annotation",
            Self::Api => "Api",
            Self::Schedule => "Schedule",
            Self::SecretMissing => "SecretMissing",
            Self::SecretDrift => "SecretDrift",
        }
    }

    /// Parses [`Self::as_str`]'s output.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// The observed state of an OAuthApp, written only by the operator.
#[derive(Serialize, Deserialize, schemars::JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OAuthAppStatus {
    /// The app id used by the REST API: `app_` + base62 of the resource's uid at its first
    /// secret. Kept from then on (in the Secret's signed record too): an app restored or
    /// re-created with its Secret keeps it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_id: Option<String>,
    /// The OAuth client id written to the Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// Name of the Secret that holds the credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// argon2id hash of the current client secret, as a PHC string. Verify presented client
    /// secrets against it; parameters are read from the string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret_hash: Option<String>,
    /// A short, non-secret hint of the current client secret (prefix, first and last characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret_hint: Option<String>,
    /// Unique id of the current secret; the Secret carries the same id in the annotation
    /// `oauthapp.io/rotation-id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation_id: Option<String>,
    /// How many secrets this app has had, the first one included.
    #[serde(default)]
    pub rotation_count: i64,
    /// When the current secret was generated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rotation_time: Option<Time>,
    /// What generated the current secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rotation_trigger: Option<RotationTrigger>,
    /// The secret the last rotation replaced, while it is still valid (with
    /// `spec.rotation.gracePeriod`). At most two secrets are ever valid: this one and the current.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_secret: Option<Box<PreviousSecret>>,
    /// The last rotations (at most `spec.rotation.historyLimit`), newest first. Rebuilt from the
    /// Secret's signed rotation record, like the rest of this status.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<RotationHistoryEntry>,
    /// The rollout restarts done for the current rotation (`spec.rolloutRestartTargets`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_restarts: Option<Box<RolloutRestarts>>,
    /// When the next scheduled rotation is due (only with `spec.rotation.interval` or
    /// `spec.rotation.schedule`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_rotation_time: Option<Time>,
    /// The last value of the `oauthapp.io/rotate` annotation that was acted on. A rotation is due
    /// when the annotation differs from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_rotate_token: Option<String>,
    /// `resourceVersion` of the Secret when the operator last wrote or verified it; lets a
    /// restarted operator skip re-verifying Secrets nobody has touched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_resource_version: Option<String>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The installation of the operator that manages this app (`<namespace>/<record key
    /// Secret>` of that installation). Another installation that watches the same namespace
    /// leaves the app alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installation: Option<String>,
    /// Current conditions; `Ready` is True when the Secret and this status agree.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

impl OAuthApp {
    /// The name of the Secret this app's credentials live in.
    pub fn secret_name(&self) -> String {
        self.spec
            .secret
            .as_ref()
            .and_then(|s| s.name.clone())
            .unwrap_or_else(|| {
                format!(
                    "{}-oauth-client",
                    self.metadata.name.as_deref().unwrap_or_default()
                )
            })
    }

    /// `spec.secret.deletionPolicy`, `Delete` when unset.
    pub fn deletion_policy(&self) -> DeletionPolicy {
        self.spec
            .secret
            .as_ref()
            .and_then(|s| s.deletion_policy)
            .unwrap_or_default()
    }

    /// The value of one of the app's annotations, if set.
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(key))
            .map(String::as_str)
    }

    /// The current value of the rotate annotation, if any.
    pub fn rotate_token(&self) -> Option<&str> {
        self.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ROTATE_ANNOTATION))
            .map(String::as_str)
    }

    /// The Ready condition, if the status has one.
    pub fn ready_condition(&self) -> Option<&Condition> {
        self.status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
    }
}

/// The CustomResourceDefinition as YAML, exactly as `crds/oauthapps.oauthapp.io.yaml` holds it.
pub fn crd_yaml() -> Result<String, serde_norway::Error> {
    let yaml = serde_norway::to_string(&OAuthApp::crd())?;
    Ok(format!(
        "# Generated by `oauthapp-operator crd`; do not edit (a test fails when it drifts).\n{yaml}"
    ))
}

/// The name of the OAuthApp CRD.
pub const CRD_NAME: &str = "oauthapps.oauthapp.io";

/// The fields this version writes that `installed` (a CRD's JSON) does not declare in its
/// served version's schema: each a dotted path (`status.previousSecret`). Fields an older CRD
/// lacks would be pruned by the API server from every status write, a loop of writes in which
/// e.g. a previous secret's grace period is silently lost.
pub fn missing_fields(installed: &serde_json::Value) -> Vec<String> {
    let Ok(ours) = serde_json::to_value(OAuthApp::crd()) else {
        return Vec::new();
    };
    let schema_of = |crd: &serde_json::Value| {
        crd["spec"]["versions"]
            .as_array()
            .and_then(|vs| vs.iter().find(|v| v["name"] == "v1alpha1"))
            .map(|v| v["schema"]["openAPIV3Schema"].clone())
    };
    let (Some(ours), Some(theirs)) = (schema_of(&ours), schema_of(installed)) else {
        return vec!["spec.versions[v1alpha1]".to_string()];
    };
    let mut missing = Vec::new();
    for top in ["spec", "status"] {
        compare(
            &ours["properties"][top],
            &theirs["properties"][top],
            top,
            &mut missing,
        );
    }
    missing
}

/// Appends to `missing` every property of `ours` that `theirs` lacks, two levels deep (objects
/// and the items of arrays), named from `path`.
fn compare(ours: &serde_json::Value, theirs: &serde_json::Value, path: &str, missing: &mut Vec<String>) {
    let Some(props) = ours["properties"].as_object() else {
        if ours["items"].is_object() {
            compare(&ours["items"], &theirs["items"], &format!("{path}[]"), missing);
        }
        return;
    };
    for (name, field) in props {
        let here = format!("{path}.{name}");
        if theirs["properties"].get(name).is_none() {
            missing.push(here);
        } else if path.matches('.').count() < 2 {
            compare(field, &theirs["properties"][name], &here, missing);
        }
    }
}

/// Whether `s` can be a client id at all: a generated one (`app_` and up to 22 base62 digits,
/// [`crate::model::id::encode`]) or one `spec.clientId` allows (1 to 128 characters, `[A-Za-z0-9]` then
/// `[A-Za-z0-9._:-]`). The REST API refuses anything else before any lookup, so that no string
/// a client could not have is looked up, limited or remembered.
pub fn could_be_client_id(s: &str) -> bool {
    if let Some(body) = s.strip_prefix(crate::model::id::PREFIX) {
        return (1..=22).contains(&body.len()) && body.bytes().all(|b| b.is_ascii_alphanumeric());
    }
    let mut bytes = s.bytes();
    (1..=128).contains(&s.len())
        && bytes.next().is_some_and(|b| b.is_ascii_alphanumeric())
        && bytes.all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_a_client_id_can_be_is_one() {
        for n in [0u128, 1, 61, 62, u128::MAX / 3, u128::MAX] {
            let id = crate::model::id::encode(uuid::Uuid::from_u128(n));
            assert!(could_be_client_id(&id), "{id}");
        }
        for id in [
            "billing",
            "a",
            "my.client:v2-prod_x".trim_end_matches("_x"),
            &"a".repeat(128),
        ] {
            assert!(could_be_client_id(id), "{id}");
        }
        let long = "a".repeat(60 * 1024);
        for not in [
            "",
            "app_",
            "app_12345678901234567890123",
            "app_!",
            "-a",
            ".a",
            "a b",
            "é",
            &"a".repeat(129),
            &long,
        ] {
            assert!(!could_be_client_id(not), "{not:.40}");
        }
    }

    #[test]
    fn crd_names_match_the_design() {
        let crd = OAuthApp::crd();
        assert_eq!(crd.metadata.name.as_deref(), Some("oauthapps.oauthapp.io"));
        let names = &crd.spec.names;
        assert_eq!(names.kind, "OAuthApp");
        assert_eq!(names.singular.as_deref(), Some("oauthapp"));
        assert_eq!(names.short_names.as_deref(), Some(&["oapp".to_string()][..]));
        assert_eq!(names.categories.as_deref(), Some(&["oauth".to_string()][..]));
        assert_eq!(crd.spec.scope, "Namespaced");
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        assert!(
            version
                .subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some()
        );
        let columns: Vec<_> = version
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(
            columns,
            ["App ID", "Client ID", "Hint", "Last Rotation", "Ready", "Age"]
        );
    }

    #[test]
    fn every_schema_field_has_a_description() {
        let crd = serde_json::to_value(OAuthApp::crd()).expect("crd serializes");
        let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        let mut missing = Vec::new();
        fn walk(path: &str, node: &serde_json::Value, missing: &mut Vec<String>) {
            if let Some(props) = node.get("properties").and_then(|p| p.as_object()) {
                for (name, child) in props {
                    let here = format!("{path}.{name}");
                    let skip = path.is_empty() && matches!(name.as_str(), "apiVersion" | "kind" | "metadata");
                    if !skip && child.get("description").is_none() && !path.contains("conditions") {
                        missing.push(here.clone());
                    }
                    walk(&here, child, missing);
                }
            }
        }
        walk("", &schema["properties"]["spec"], &mut missing);
        walk("", &schema["properties"]["status"], &mut missing);
        assert!(missing.is_empty(), "fields without a doc comment: {missing:?}");
    }

    #[test]
    fn the_crd_files_match_the_code() {
        let generated = crd_yaml().expect("crd yaml");
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        for file in [
            "crds/oauthapps.oauthapp.io.yaml",
            "charts/oauthapp-operator/crds/oauthapps.oauthapp.io.yaml",
        ] {
            let on_disk = std::fs::read_to_string(root.join(file)).expect(file);
            assert!(on_disk == generated, "{file} is out of date: run `make crds`");
        }
    }

    #[test]
    fn secret_name_defaults_to_the_app_name() {
        let mut app = OAuthApp::new("billing", OAuthAppSpec::default());
        assert_eq!(app.secret_name(), "billing-oauth-client");
        app.spec.secret = Some(Box::new(SecretSpec {
            name: Some("custom".into()),
            ..Default::default()
        }));
        assert_eq!(app.secret_name(), "custom");
    }

    #[test]
    fn triggers_round_trip_through_their_names() {
        for t in RotationTrigger::ALL {
            assert_eq!(RotationTrigger::parse(t.as_str()), Some(t));
            assert_eq!(serde_json::to_value(t).expect("serializes"), t.as_str());
        }
        assert_eq!(RotationTrigger::parse("Nope"), None);
    }

    #[test]
    fn an_older_crd_is_told_by_the_fields_it_lacks() {
        let ours = serde_json::to_value(OAuthApp::crd()).unwrap();
        assert_eq!(missing_fields(&ours), Vec::<String>::new());
        let mut old = ours.clone();
        let status = &mut old["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"];
        status.as_object_mut().unwrap().remove("previousSecret");
        status["history"]["items"]["properties"]
            .as_object_mut()
            .unwrap()
            .remove("username");
        let missing = missing_fields(&old);
        assert!(
            missing.contains(&"status.previousSecret".to_string()),
            "{missing:?}"
        );
        assert!(
            missing.contains(&"status.history[].username".to_string()),
            "{missing:?}"
        );
        assert_eq!(missing.len(), 2, "{missing:?}");
    }
}
