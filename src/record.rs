//! The rotation record the operator keeps on each app's Secret, and the signature that makes it
//! trustworthy.
//!
//! The Secret is the source of truth for the current secret: after a crash between the Secret
//! write and the status write, the status is completed from the Secret's annotations (DESIGN.md,
//! invariant 2). Whoever may write that Secret may also write its annotations, so the record is
//! only believed when it carries an HMAC-SHA256 signature made with a key that only the operator
//! holds ([`RecordKey`]), when its hash uses the operator's own argon2 parameters and when it was
//! not made in the future. Anything else is drift: the app gets a new secret (trigger
//! `SecretDrift`), never a status copied from an unsigned record.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};
use sha2::Sha256;

use crate::crd::{OAuthApp, RotationHistoryEntry, RotationTrigger};
use crate::secret::HashParams;

/// Annotations the operator keeps on every Secret it writes (invariant 1 of DESIGN.md).
pub mod annotations {
    /// Unique id of the secret in the Secret; `status.rotationId` follows it.
    pub const ROTATION_ID: &str = "oauthapp.io/rotation-id";
    /// argon2id PHC hash of `client_secret`.
    pub const HASH: &str = "oauthapp.io/client-secret-hash";
    /// Non-secret hint of `client_secret`.
    pub const HINT: &str = "oauthapp.io/client-secret-hint";
    /// What generated this secret.
    pub const TRIGGER: &str = "oauthapp.io/rotation-trigger";
    /// When this secret was generated (RFC 3339).
    pub const ROTATED_AT: &str = "oauthapp.io/rotated-at";
    /// How many secrets the app has had, this one included.
    pub const ROTATION_COUNT: &str = "oauthapp.io/rotation-count";
    /// The `oauthapp.io/rotate` value this secret satisfied (for exactly-once after a crash).
    pub const OBSERVED_ROTATE_TOKEN: &str = "oauthapp.io/observed-rotate-token";
    /// The secret this one replaced, while it stays valid (`spec.rotation.gracePeriod`): its
    /// rotation id, hash, hint and expiry. Part of the signed record, so that it survives a
    /// crash between the Secret and status writes like the current secret does.
    pub const PREVIOUS_ROTATION_ID: &str = "oauthapp.io/previous-rotation-id";
    pub const PREVIOUS_HASH: &str = "oauthapp.io/previous-client-secret-hash";
    pub const PREVIOUS_HINT: &str = "oauthapp.io/previous-client-secret-hint";
    pub const PREVIOUS_EXPIRES_AT: &str = "oauthapp.io/previous-expires-at";
    /// The last rotations, newest first, this one included (JSON, `status.history`'s entries):
    /// part of the signed record, so the history is rebuilt from the Secret like the rest of
    /// the status. Rotation ids, hints, triggers, times and REST callers only: nothing secret.
    pub const HISTORY: &str = "oauthapp.io/rotation-history";
    /// The operator's signature over the record (`v1.` + base64url of an HMAC-SHA256).
    pub const SIGNATURE: &str = "oauthapp.io/record-signature";
    /// The keys of `spec.secret.labels` and `spec.secret.annotations` last written to the
    /// Secret (JSON), so that a key dropped from the spec is dropped from the Secret too.
    /// Absent when the spec has none. Not part of the signed record: it only ever removes
    /// labels and annotations that are not the operator's.
    pub const SPEC_METADATA_KEYS: &str = "oauthapp.io/spec-metadata-keys";
}

/// How far in the future a record's `rotated-at` may be (clock skew between replicas and the
/// API server) before the record counts as forged.
pub const MAX_CLOCK_SKEW: SignedDuration = SignedDuration::from_secs(60);

/// The signature format's version prefix.
const SIGNATURE_PREFIX: &str = "v1.";

/// The bytes the key Secret must hold at least.
pub const KEY_LEN: usize = 32;

/// The data key of the record key in its Secret.
pub const KEY_DATA_KEY: &str = "hmac-key";

/// What the operator wrote about the secret in a Secret, bound to one app and client id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub app_uid: String,
    pub client_id: String,
    pub rotation_id: String,
    pub hash: String,
    pub hint: String,
    pub rotated_at: String,
    pub count: i64,
    pub trigger: String,
    pub observed_rotate_token: Option<String>,
    pub previous: Option<Previous>,
    /// The history annotation's value, as written and signed (JSON; None in records written
    /// before the history existed).
    pub history: Option<String>,
}

/// The secret a record's secret replaced, valid until `expires_at` (RFC 3339).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Previous {
    pub rotation_id: String,
    pub hash: String,
    pub hint: String,
    pub expires_at: String,
}

impl Previous {
    /// When it expires; None when unreadable (then it is not valid).
    pub fn expiry(&self) -> Option<Timestamp> {
        self.expires_at.parse().ok()
    }

    /// Still valid at `now`.
    pub fn valid_at(&self, now: Timestamp) -> bool {
        self.expiry().is_some_and(|at| now < at)
    }
}

impl Record {
    /// The record in `meta`'s annotations for the app `app_uid` with `client_id`; None when the
    /// rotation id or the hash is missing.
    pub fn from_annotations(app_uid: &str, client_id: &str, meta: &ObjectMeta) -> Option<Self> {
        let ann = meta.annotations.as_ref()?;
        let get = |k: &str| ann.get(k).cloned();
        Some(Self {
            app_uid: app_uid.to_string(),
            client_id: client_id.to_string(),
            rotation_id: get(annotations::ROTATION_ID)?,
            hash: get(annotations::HASH)?,
            hint: get(annotations::HINT).unwrap_or_default(),
            rotated_at: get(annotations::ROTATED_AT).unwrap_or_default(),
            count: get(annotations::ROTATION_COUNT)
                .and_then(|c| c.parse().ok())
                .unwrap_or(0),
            trigger: get(annotations::TRIGGER).unwrap_or_default(),
            observed_rotate_token: get(annotations::OBSERVED_ROTATE_TOKEN),
            previous: (|| {
                Some(Previous {
                    rotation_id: get(annotations::PREVIOUS_ROTATION_ID)?,
                    hash: get(annotations::PREVIOUS_HASH)?,
                    hint: get(annotations::PREVIOUS_HINT)?,
                    expires_at: get(annotations::PREVIOUS_EXPIRES_AT)?,
                })
            })(),
            history: get(annotations::HISTORY),
        })
    }

    /// This record's rotation as a history entry (`username`: who asked, for REST rotations).
    pub fn entry(&self, username: Option<String>) -> Option<RotationHistoryEntry> {
        Some(RotationHistoryEntry {
            rotation_id: self.rotation_id.clone(),
            hint: self.hint.clone(),
            trigger: RotationTrigger::parse(&self.trigger)?,
            time: Time(self.rotated_at.parse().ok()?),
            username,
        })
    }

    /// The rotations this record remembers, newest first: its history, or only its own rotation
    /// for a record written before the history existed.
    pub fn history_entries(&self) -> Vec<RotationHistoryEntry> {
        match &self.history {
            Some(json) => serde_json::from_str(json).unwrap_or_default(),
            None => self.entry(None).into_iter().collect(),
        }
    }

    /// The history annotation's value for `entries` (newest first).
    pub fn history_value(entries: &[RotationHistoryEntry]) -> Option<String> {
        serde_json::to_string(entries).ok()
    }

    /// Every annotation a record may write: a new record replaces them all.
    pub const KEYS: [&'static str; 13] = [
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
    ];

    /// The annotations that carry this record, its signature included (the app uid and client
    /// id are signed, not written: the Secret's owner and `client_id` key carry them).
    pub fn to_annotations(&self, key: &RecordKey) -> BTreeMap<String, String> {
        let mut ann = BTreeMap::from([
            (annotations::ROTATION_ID.to_string(), self.rotation_id.clone()),
            (annotations::HASH.to_string(), self.hash.clone()),
            (annotations::HINT.to_string(), self.hint.clone()),
            (annotations::TRIGGER.to_string(), self.trigger.clone()),
            (annotations::ROTATED_AT.to_string(), self.rotated_at.clone()),
            (annotations::ROTATION_COUNT.to_string(), self.count.to_string()),
            (annotations::SIGNATURE.to_string(), key.sign(self)),
        ]);
        if let Some(token) = &self.observed_rotate_token {
            ann.insert(annotations::OBSERVED_ROTATE_TOKEN.into(), token.clone());
        }
        if let Some(p) = &self.previous {
            ann.insert(annotations::PREVIOUS_ROTATION_ID.into(), p.rotation_id.clone());
            ann.insert(annotations::PREVIOUS_HASH.into(), p.hash.clone());
            ann.insert(annotations::PREVIOUS_HINT.into(), p.hint.clone());
            ann.insert(annotations::PREVIOUS_EXPIRES_AT.into(), p.expires_at.clone());
        }
        if let Some(history) = &self.history {
            ann.insert(annotations::HISTORY.into(), history.clone());
        }
        ann
    }

    /// The signed message: a JSON array, so that no field can bleed into the next. The history
    /// is appended only when there is one, so records signed before it existed still verify.
    fn message(&self) -> Vec<u8> {
        let mut fields = serde_json::json!([
            "oauthapp.io/rotation-record/v1",
            self.app_uid,
            self.client_id,
            self.rotation_id,
            self.hash,
            self.hint,
            self.rotated_at,
            self.count,
            self.trigger,
            self.observed_rotate_token,
            self.previous
                .as_ref()
                .map(|p| [&p.rotation_id, &p.hash, &p.hint, &p.expires_at]),
        ]);
        if let (Some(history), Some(list)) = (&self.history, fields.as_array_mut()) {
            list.push(serde_json::Value::String(history.clone()));
        }
        fields.to_string().into_bytes()
    }
}

/// The operator's signing key: 32 random bytes kept in a Secret of the operator's own namespace.
#[derive(Clone)]
pub struct RecordKey(Arc<Vec<u8>>);

impl fmt::Debug for RecordKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RecordKey(<redacted>)")
    }
}

/// The key once it is loaded: the REST API serves (503 for rotations) and the controller waits
/// while the API server cannot be reached at start, instead of the process exiting.
#[derive(Debug)]
pub struct KeyCell(tokio::sync::watch::Sender<Option<RecordKey>>);

impl Default for KeyCell {
    fn default() -> Self {
        Self(tokio::sync::watch::channel(None).0)
    }
}

impl KeyCell {
    /// The key, once loaded.
    pub fn get(&self) -> Option<RecordKey> {
        self.0.borrow().clone()
    }

    pub fn set(&self, key: RecordKey) {
        self.0.send_replace(Some(key));
    }

    /// Resolves once the key is loaded.
    pub async fn wait(&self) -> RecordKey {
        let mut rx = self.0.subscribe();
        loop {
            if let Some(key) = rx.borrow_and_update().clone() {
                return key;
            }
            if rx.changed().await.is_err() {
                // The sender lives in the cell itself: not reached while `self` exists.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Loads (or creates) the key from the Secret `namespace/name` into this cell, retrying with
    /// a growing pause (up to 30 s) while the API server cannot be reached or the Secret is
    /// malformed (each failure is logged with what to do).
    pub async fn load(&self, client: Client, namespace: &str, name: &str) {
        let mut pause = std::time::Duration::from_millis(200);
        loop {
            match RecordKey::load_or_create(client.clone(), namespace, name).await {
                Ok(key) => {
                    self.set(key);
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %crate::error::redact(&e.to_string()), retry_in = ?pause, "the rotation-record signing key is not loaded; rotations wait for it");
                }
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(std::time::Duration::from_secs(30));
        }
    }
}

/// Why a record key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "Secret {namespace}/{name} holds no `{KEY_DATA_KEY}` of at least {KEY_LEN} bytes; delete it to have a new key made (every app then gets a new secret once)"
    )]
    Malformed { namespace: String, name: String },
    #[error("the operating system's random number generator failed")]
    Random,
    #[error("reading or creating the record key Secret {namespace}/{name}: {source}")]
    Kube {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
}

impl RecordKey {
    /// A key from its bytes; None when shorter than [`KEY_LEN`].
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        (bytes.len() >= KEY_LEN).then(|| Self(Arc::new(bytes.to_vec())))
    }

    /// A fresh key from the OS random source.
    pub fn generate() -> Result<Self, KeyError> {
        use rand::TryRng as _;
        let mut bytes = vec![0u8; KEY_LEN];
        rand::rngs::SysRng
            .try_fill_bytes(&mut bytes)
            .map_err(|_| KeyError::Random)?;
        Ok(Self(Arc::new(bytes)))
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC takes keys of any length: this cannot fail.
        <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0).expect("HMAC accepts any key length")
    }

    /// The signature annotation's value for `record`.
    pub fn sign(&self, record: &Record) -> String {
        let mut mac = self.mac();
        mac.update(&record.message());
        format!(
            "{SIGNATURE_PREFIX}{}",
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        )
    }

    /// Whether `signature` is this key's signature of `record` (constant-time comparison).
    pub fn verifies(&self, record: &Record, signature: &str) -> bool {
        let Some(encoded) = signature.strip_prefix(SIGNATURE_PREFIX) else {
            return false;
        };
        let Ok(tag) = URL_SAFE_NO_PAD.decode(encoded) else {
            return false;
        };
        let mut mac = self.mac();
        mac.update(&record.message());
        mac.verify_slice(&tag).is_ok()
    }

    /// Reads the key from the Secret `namespace/name`, creating it with a fresh key when absent.
    /// Replicas starting together race to create it: the loser reads the winner's.
    pub async fn load_or_create(client: Client, namespace: &str, name: &str) -> Result<Self, KeyError> {
        let secrets: Api<Secret> = Api::namespaced(client, namespace);
        let kube_error = |source| KeyError::Kube {
            namespace: namespace.to_string(),
            name: name.to_string(),
            source,
        };
        let malformed = || KeyError::Malformed {
            namespace: namespace.to_string(),
            name: name.to_string(),
        };
        for _ in 0..3 {
            if let Some(secret) = secrets.get_opt(name).await.map_err(kube_error)? {
                let bytes = secret
                    .data
                    .as_ref()
                    .and_then(|d| d.get(KEY_DATA_KEY))
                    .map(|b| b.0.as_slice())
                    .unwrap_or_default();
                return Self::from_bytes(bytes).ok_or_else(malformed);
            }
            let key = Self::generate()?;
            let secret = Secret {
                metadata: ObjectMeta {
                    name: Some(name.to_string()),
                    namespace: Some(namespace.to_string()),
                    labels: Some(BTreeMap::from([(
                        "app.kubernetes.io/component".to_string(),
                        "record-key".to_string(),
                    )])),
                    annotations: Some(BTreeMap::from([(
                        "oauthapp.io/purpose".to_string(),
                        "Signs the rotation records oauthapp-operator keeps on app Secrets. Deleting it makes every app get a new secret once.".to_string(),
                    )])),
                    ..Default::default()
                },
                data: Some(BTreeMap::from([(
                    KEY_DATA_KEY.to_string(),
                    ByteString(key.0.as_ref().clone()),
                )])),
                immutable: Some(true),
                type_: Some("Opaque".into()),
                ..Default::default()
            };
            let params = PostParams {
                dry_run: false,
                field_manager: Some(crate::crd::MANAGER.into()),
            };
            match secrets.create(&params, &secret).await {
                Ok(created) => {
                    tracing::info!(secret = %format!("{namespace}/{}", created.name_any()), "created the record signing key");
                    return Ok(key);
                }
                // Another replica created it first: read theirs.
                Err(kube::Error::Api(s)) if s.code == 409 => continue,
                Err(e) => return Err(kube_error(e)),
            }
        }
        Err(malformed())
    }
}

/// Why a Secret's record is not believed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drift {
    /// The rotation id or the hash annotation is gone.
    Stripped,
    /// No signature, and the record is not the one the status already shows.
    Unsigned,
    /// A signature that is not the operator's (or a record changed after signing).
    BadSignature,
    /// The hash uses another algorithm, version or parameters than the operator's.
    ForeignParams,
    /// `rotated-at` is in the future.
    FutureRotatedAt,
    /// `client_secret` does not verify against the hash.
    Mismatch,
}

impl Drift {
    /// For Events and logs: what is wrong with the Secret.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Stripped => "its rotation record annotations were removed",
            Self::Unsigned => "its rotation record is not signed by the operator",
            Self::BadSignature => "its rotation record's signature is not the operator's",
            Self::ForeignParams => {
                "its hash does not use the operator's argon2id parameters (it was not verified)"
            }
            Self::FutureRotatedAt => "its rotation record's rotated-at is in the future",
            Self::Mismatch => "its client_secret no longer matched the hash",
        }
    }
}

/// What the operator makes of the record on an app's Secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Signed by the operator, with its parameters, not from the future.
    Signed,
    /// Written before records were signed, and exactly what the status already shows (so the
    /// operator computed that hash): re-signed once, after its content verifies.
    Legacy,
    /// Not believed.
    Drift(Drift),
}

/// Judges the record on `meta` (a Secret the app controls) for `app`.
pub fn verdict(
    app: &OAuthApp,
    meta: &ObjectMeta,
    key: &RecordKey,
    trusted: &[HashParams],
    now: Timestamp,
) -> Verdict {
    let (Some(uid), Some(client_id)) = (app.metadata.uid.as_deref(), client_id(app)) else {
        return Verdict::Drift(Drift::Stripped);
    };
    let Some(record) = Record::from_annotations(uid, &client_id, meta) else {
        return Verdict::Drift(Drift::Stripped);
    };
    if !crate::secret::uses_trusted_params(&record.hash, trusted)
        || record
            .previous
            .as_ref()
            .is_some_and(|p| !crate::secret::uses_trusted_params(&p.hash, trusted))
    {
        return Verdict::Drift(Drift::ForeignParams);
    }
    let rotated_at = record.rotated_at.parse::<Timestamp>().ok();
    if rotated_at.is_some_and(|at| at > now + MAX_CLOCK_SKEW) {
        return Verdict::Drift(Drift::FutureRotatedAt);
    }
    match meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(annotations::SIGNATURE))
    {
        Some(signature) if key.verifies(&record, signature) && rotated_at.is_some() => Verdict::Signed,
        Some(_) => Verdict::Drift(Drift::BadSignature),
        None => {
            let status = app.status.as_ref();
            let shown = status.is_some_and(|s| {
                s.rotation_id.as_deref() == Some(record.rotation_id.as_str())
                    && s.client_secret_hash.as_deref() == Some(record.hash.as_str())
            });
            if shown {
                Verdict::Legacy
            } else {
                Verdict::Drift(Drift::Unsigned)
            }
        }
    }
}

/// The record a legacy (unsigned) Secret is re-signed with: everything from the status, which
/// only the operator writes, so that nothing a Secret writer added is signed.
pub fn record_from_status(app: &OAuthApp) -> Option<Record> {
    let status = app.status.as_ref()?;
    Some(Record {
        app_uid: app.metadata.uid.clone()?,
        client_id: client_id(app)?,
        rotation_id: status.rotation_id.clone()?,
        hash: status.client_secret_hash.clone()?,
        hint: status.client_secret_hint.clone().unwrap_or_default(),
        rotated_at: status
            .last_rotation_time
            .as_ref()
            .map(|t| t.0.to_string())
            .unwrap_or_default(),
        count: status.rotation_count.max(1),
        trigger: status
            .last_rotation_trigger
            .map(|t| t.as_str().to_string())
            .unwrap_or_default(),
        observed_rotate_token: status.observed_rotate_token.clone(),
        previous: status.previous_secret.as_ref().map(|p| Previous {
            rotation_id: p.rotation_id.clone(),
            hash: p.client_secret_hash.clone(),
            hint: p.client_secret_hint.clone(),
            expires_at: p.expires_at.0.to_string(),
        }),
        history: (!status.history.is_empty())
            .then(|| Record::history_value(&status.history))
            .flatten(),
    })
}

/// The app's id (`app_…`), from its uid.
pub fn app_id(app: &OAuthApp) -> Option<String> {
    let uid = app.metadata.uid.as_deref()?;
    uuid::Uuid::parse_str(uid).ok().map(crate::id::encode)
}

/// The client id written to the Secret: `spec.clientId`, or the app id.
pub fn client_id(app: &OAuthApp) -> Option<String> {
    app.spec.client_id.clone().or_else(|| app_id(app))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{OAuthAppSpec, OAuthAppStatus};

    const UID: &str = "ffffffff-ffff-ffff-ffff-ffffffffffff";
    const FAST: HashParams = HashParams {
        m_cost_kib: 8,
        t_cost: 1,
        p_cost: 1,
    };

    fn key() -> RecordKey {
        RecordKey::from_bytes(&[7u8; KEY_LEN]).unwrap()
    }

    fn app() -> OAuthApp {
        let mut app = OAuthApp::new("demo", OAuthAppSpec::default());
        app.metadata.uid = Some(UID.into());
        app
    }

    fn record(hash: &str, rotated_at: Timestamp) -> Record {
        Record {
            app_uid: UID.into(),
            client_id: client_id(&app()).unwrap(),
            rotation_id: "r1".into(),
            hash: hash.into(),
            hint: "oas_AbCd...Xz12".into(),
            rotated_at: rotated_at.to_string(),
            count: 3,
            trigger: "Annotation".into(),
            observed_rotate_token: Some("t1".into()),
            previous: None,
            history: None,
        }
    }

    fn meta(ann: BTreeMap<String, String>) -> ObjectMeta {
        ObjectMeta {
            annotations: Some(ann),
            ..Default::default()
        }
    }

    fn our_hash() -> String {
        crate::secret::hash("oas_x", &FAST).unwrap()
    }

    #[test]
    fn a_signed_record_round_trips_and_any_changed_field_breaks_the_signature() {
        let now = Timestamp::now();
        let rec = record(&our_hash(), now);
        let ann = rec.to_annotations(&key());
        assert_eq!(
            Record::from_annotations(UID, &rec.client_id, &meta(ann.clone())),
            Some(rec.clone())
        );
        assert_eq!(
            verdict(&app(), &meta(ann.clone()), &key(), &[FAST], now),
            Verdict::Signed
        );

        for (k, v) in [
            (annotations::ROTATION_ID, "r2"),
            (annotations::HINT, "oas_Zzzz...Zzzz"),
            (annotations::ROTATION_COUNT, "4"),
            (annotations::TRIGGER, "Api"),
            (annotations::OBSERVED_ROTATE_TOKEN, "t2"),
            (annotations::ROTATED_AT, "2020-01-01T00:00:00Z"),
        ] {
            let mut changed = ann.clone();
            changed.insert(k.into(), v.into());
            assert_eq!(
                verdict(&app(), &meta(changed), &key(), &[FAST], now),
                Verdict::Drift(Drift::BadSignature),
                "{k} changed"
            );
        }
        // Another key, or the record moved to another app or client id.
        let other = RecordKey::from_bytes(&[8u8; KEY_LEN]).unwrap();
        assert_eq!(
            verdict(&app(), &meta(ann.clone()), &other, &[FAST], now),
            Verdict::Drift(Drift::BadSignature)
        );
        let mut elsewhere = app();
        elsewhere.metadata.uid = Some("00000000-0000-0000-0000-000000000001".into());
        assert_eq!(
            verdict(&elsewhere, &meta(ann.clone()), &key(), &[FAST], now),
            Verdict::Drift(Drift::BadSignature)
        );
        let mut renamed = app();
        renamed.spec.client_id = Some("other".into());
        assert_eq!(
            verdict(&renamed, &meta(ann), &key(), &[FAST], now),
            Verdict::Drift(Drift::BadSignature)
        );
    }

    #[test]
    fn the_previous_secret_is_part_of_the_signed_record() {
        let now = Timestamp::now();
        let mut rec = record(&our_hash(), now);
        rec.previous = Some(Previous {
            rotation_id: "r0".into(),
            hash: our_hash(),
            hint: "oas_Prev...ious".into(),
            expires_at: (now + SignedDuration::from_secs(20)).to_string(),
        });
        let ann = rec.to_annotations(&key());
        assert_eq!(
            Record::from_annotations(UID, &rec.client_id, &meta(ann.clone())),
            Some(rec.clone())
        );
        assert_eq!(
            verdict(&app(), &meta(ann.clone()), &key(), &[FAST], now),
            Verdict::Signed
        );
        // A longer grace, or a previous secret added or removed by hand: not the operator's.
        let mut later = ann.clone();
        later.insert(
            annotations::PREVIOUS_EXPIRES_AT.into(),
            "2099-01-01T00:00:00Z".into(),
        );
        assert_eq!(
            verdict(&app(), &meta(later), &key(), &[FAST], now),
            Verdict::Drift(Drift::BadSignature)
        );
        let mut without = ann.clone();
        for k in [
            annotations::PREVIOUS_ROTATION_ID,
            annotations::PREVIOUS_HASH,
            annotations::PREVIOUS_HINT,
            annotations::PREVIOUS_EXPIRES_AT,
        ] {
            without.remove(k);
        }
        assert_eq!(
            verdict(&app(), &meta(without), &key(), &[FAST], now),
            Verdict::Drift(Drift::BadSignature)
        );
        let previous = rec.previous.unwrap();
        assert!(previous.valid_at(now));
        assert!(!previous.valid_at(now + SignedDuration::from_secs(20)));
    }

    #[test]
    fn the_history_is_signed_and_a_record_without_one_still_verifies() {
        let now = Timestamp::from_second(Timestamp::now().as_second()).unwrap();
        let plain = record(&our_hash(), now);
        // Signed before the history existed: the same message as then, so it still verifies,
        // and its history is its own rotation.
        let ann = plain.to_annotations(&key());
        assert!(!ann.contains_key(annotations::HISTORY));
        assert_eq!(verdict(&app(), &meta(ann), &key(), &[FAST], now), Verdict::Signed);
        let own = plain.history_entries();
        assert_eq!(own.len(), 1);
        assert_eq!(
            (own[0].rotation_id.as_str(), own[0].trigger, own[0].time.0),
            ("r1", RotationTrigger::Annotation, now)
        );

        let entries = vec![
            plain.entry(None).unwrap(),
            RotationHistoryEntry {
                rotation_id: "r0".into(),
                hint: "oas_Old0...0000".into(),
                trigger: RotationTrigger::Api,
                time: Time(now - SignedDuration::from_hours(1)),
                username: Some("alice".into()),
            },
        ];
        let mut rec = plain.clone();
        rec.history = Record::history_value(&entries);
        let ann = rec.to_annotations(&key());
        let read = Record::from_annotations(UID, &rec.client_id, &meta(ann.clone())).unwrap();
        assert_eq!(read.history_entries(), entries);
        assert_eq!(
            verdict(&app(), &meta(ann.clone()), &key(), &[FAST], now),
            Verdict::Signed
        );
        // A history edited (or removed) by hand is not the operator's.
        let mut edited = ann.clone();
        edited.insert(
            annotations::HISTORY.into(),
            Record::history_value(&entries[..1]).unwrap(),
        );
        assert_eq!(
            verdict(&app(), &meta(edited), &key(), &[FAST], now),
            Verdict::Drift(Drift::BadSignature)
        );
        let mut removed = ann;
        removed.remove(annotations::HISTORY);
        assert_eq!(
            verdict(&app(), &meta(removed), &key(), &[FAST], now),
            Verdict::Drift(Drift::BadSignature)
        );
    }

    #[test]
    fn foreign_parameters_and_future_records_are_drift_even_when_signed() {
        let now = Timestamp::now();
        let huge = "$argon2id$v=19$m=2097152,t=32,p=64$c29tZXNhbHRzb21lc2FsdA$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g";
        let ann = record(huge, now).to_annotations(&key());
        assert_eq!(
            verdict(&app(), &meta(ann), &key(), &[FAST], now),
            Verdict::Drift(Drift::ForeignParams)
        );
        let weak = crate::secret::hash(
            "oas_x",
            &HashParams {
                m_cost_kib: 8,
                t_cost: 2,
                p_cost: 1,
            },
        )
        .unwrap();
        let ann = record(&weak, now).to_annotations(&key());
        assert_eq!(
            verdict(&app(), &meta(ann), &key(), &[FAST], now),
            Verdict::Drift(Drift::ForeignParams)
        );

        let future = now + SignedDuration::from_hours(24 * 365);
        let ann = record(&our_hash(), future).to_annotations(&key());
        assert_eq!(
            verdict(&app(), &meta(ann), &key(), &[FAST], now),
            Verdict::Drift(Drift::FutureRotatedAt)
        );
        // Within the allowed skew: believed.
        let skewed = now + SignedDuration::from_secs(30);
        let ann = record(&our_hash(), skewed).to_annotations(&key());
        assert_eq!(verdict(&app(), &meta(ann), &key(), &[FAST], now), Verdict::Signed);
    }

    #[test]
    fn an_unsigned_record_is_legacy_only_when_the_status_already_shows_it() {
        let now = Timestamp::now();
        let hash = our_hash();
        let mut ann = record(&hash, now).to_annotations(&key());
        ann.remove(annotations::SIGNATURE);
        assert_eq!(
            verdict(&app(), &meta(ann.clone()), &key(), &[FAST], now),
            Verdict::Drift(Drift::Unsigned)
        );

        let mut shown = app();
        shown.status = Some(OAuthAppStatus {
            rotation_id: Some("r1".into()),
            client_secret_hash: Some(hash.clone()),
            ..Default::default()
        });
        assert_eq!(
            verdict(&shown, &meta(ann.clone()), &key(), &[FAST], now),
            Verdict::Legacy
        );
        // The status shows another hash: a forged unsigned record.
        let mut forged = shown.clone();
        forged.status.as_mut().unwrap().client_secret_hash = Some(our_hash());
        assert_eq!(
            verdict(&forged, &meta(ann.clone()), &key(), &[FAST], now),
            Verdict::Drift(Drift::Unsigned)
        );
        // Stripped of its hash: nothing to judge.
        ann.remove(annotations::HASH);
        assert_eq!(
            verdict(&shown, &meta(ann), &key(), &[FAST], now),
            Verdict::Drift(Drift::Stripped)
        );
    }

    #[test]
    fn a_legacy_record_is_re_signed_from_the_status_not_from_the_secret() {
        let mut app = app();
        let at = Timestamp::from_second(1_800_000_000).unwrap();
        app.status = Some(OAuthAppStatus {
            rotation_id: Some("r1".into()),
            client_secret_hash: Some("h".into()),
            client_secret_hint: Some("oas_AbCd...Xz12".into()),
            rotation_count: 2,
            last_rotation_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(at)),
            observed_rotate_token: Some("t".into()),
            ..Default::default()
        });
        let rec = record_from_status(&app).unwrap();
        assert_eq!(rec.rotated_at, at.to_string());
        assert_eq!(rec.count, 2);
        assert_eq!(rec.observed_rotate_token.as_deref(), Some("t"));
        let ann = rec.to_annotations(&key());
        assert!(key().verifies(&rec, &ann[annotations::SIGNATURE]));
    }

    #[test]
    fn the_key_is_never_printed() {
        assert_eq!(format!("{:?}", key()), "RecordKey(<redacted>)");
        assert!(RecordKey::from_bytes(&[1u8; KEY_LEN - 1]).is_none());
        let a = RecordKey::generate().unwrap();
        let b = RecordKey::generate().unwrap();
        let rec = record("h", Timestamp::now());
        assert_ne!(a.sign(&rec), b.sign(&rec));
        assert!(!a.verifies(&rec, "v1.not-base64!"));
        assert!(!a.verifies(&rec, &b.sign(&rec)));
    }
}
