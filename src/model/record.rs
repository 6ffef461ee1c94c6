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

use crate::model::crd::{OAuthApp, RotationHistoryEntry, RotationTrigger};
use crate::model::secret::HashParams;

/// Annotations the operator keeps on every Secret it writes (invariant 1 of DESIGN.md).
/// On the record key Secret (`--record-key-secret`): a new value releases held repairs
/// (`crate::runtime::repairs`).
pub const RELEASE_REPAIRS_ANNOTATION: &str = "oauthapp.io/release-repairs";

/// The annotation on the record key Secret by which a person passes a reserved client id on:
/// while its value is a client id, that id's reservation for the namespace of its last holder
/// (`crate::runtime::ledger::Ledger::reserved_for`) is set aside, and the oldest claimant in any
/// namespace may take it.
pub const RELEASE_CLIENT_ID_ANNOTATION: &str = "oauthapp.io/release-client-id";

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
    /// The app's kept id (`status.appId`): made once, at the first secret, never derived again.
    pub const APP_ID: &str = "oauthapp.io/app-id";
    /// The name of the app the record belongs to (a retained Secret has no ownerReference).
    pub const APP_NAME: &str = "oauthapp.io/app-name";
    /// The installation that manages the app (`<namespace>/<record key Secret>`).
    pub const INSTALLATION: &str = "oauthapp.io/installation";
    /// The operator's seal over the record and the app's identity (namespace, name, kept id,
    /// installation), not its uid: it lets a restored or re-created app adopt its Secret.
    /// `s2.<key id>.<mac>`. [`SIGNATURE`] stays, bound to the uid, for replicas of 0.1.0.
    pub const SEAL: &str = "oauthapp.io/record-seal";
}

/// How far in the future a record's `rotated-at` may be (clock skew between replicas and the
/// API server) before the record counts as forged.
pub const MAX_CLOCK_SKEW: SignedDuration = SignedDuration::from_secs(60);

/// The signature format's version prefix: `v2.<key id>.<mac>`.
const SIGNATURE_PREFIX: &str = "v2.";
/// Format 1, before the key ring: `v1.<mac>`, by the one key there was. Still verified.
const SIGNATURE_PREFIX_V1: &str = "v1.";
/// The seal's format ([`annotations::SEAL`]): `s2.<key id>.<mac>`.
const SEAL_PREFIX: &str = "s2.";

/// The bytes the key Secret must hold at least.
pub const KEY_LEN: usize = 32;

/// The data key of the record key in its Secret.
pub const KEY_DATA_KEY: &str = "hmac-key";

/// What the operator wrote about the secret in a Secret, bound to one app and client id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    pub app_uid: String,
    pub client_id: String,
    /// The Secret's namespace (sealed, not written: the Secret has it).
    pub namespace: String,
    /// The app's name, kept id and installation (sealed); None in records written before 0.2.0.
    pub app_name: Option<String>,
    pub app_id: Option<String>,
    pub installation: Option<String>,
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
            namespace: meta.namespace.clone().unwrap_or_default(),
            app_name: get(annotations::APP_NAME),
            app_id: get(annotations::APP_ID),
            installation: get(annotations::INSTALLATION),
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
    pub const KEYS: [&'static str; 17] = [
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
        if let (Some(name), Some(id)) = (&self.app_name, &self.app_id) {
            ann.insert(annotations::APP_NAME.into(), name.clone());
            ann.insert(annotations::APP_ID.into(), id.clone());
            if let Some(installation) = &self.installation {
                ann.insert(annotations::INSTALLATION.into(), installation.clone());
            }
            ann.insert(annotations::SEAL.into(), key.seal(self));
        }
        ann
    }

    /// The sealed message: the record bound to the app's identity (namespace, name, kept id,
    /// installation) instead of its uid. None without an identity (a record of 0.1.0).
    fn seal_message(&self) -> Option<Vec<u8>> {
        let fields = serde_json::json!([
            "oauthapp.io/rotation-record/sealed/v1",
            self.namespace,
            self.app_name.as_ref()?,
            self.app_id.as_ref()?,
            self.installation,
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
            self.history,
        ]);
        Some(fields.to_string().into_bytes())
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

/// The operator's signing keys (a ring): 32 random bytes each, kept in Secrets of the
/// operator's own namespace. The newest signs; every one verifies. A signature names its key
/// (`v2.<key id>.<mac>`), so a record signed by a key the ring does not hold is told apart from
/// a forgery by a key it does hold ([`KeyCheck`]).
#[derive(Clone)]
pub struct RecordKey(Arc<Vec<RingKey>>);

/// One key of the ring: its id (derived from its bytes) and its bytes.
struct RingKey {
    id: String,
    bytes: Vec<u8>,
}

impl fmt::Debug for RecordKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "RecordKey(signing {}, {} keys, <redacted>)",
            self.signing_id(),
            self.0.len()
        )
    }
}

/// What a signature says about a record, to the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyCheck {
    /// Made by a key of the ring; `newest`: by the one that signs now.
    Valid { newest: bool },
    /// Not a signature of this record by the key it names (or malformed): forged or altered.
    Invalid,
    /// Made by a key the ring does not hold (a key since lost or replaced, or from a
    /// format-1 signature no key of the ring makes): neither proven nor disproven.
    UnknownKey,
}
/// The key ring once it is loaded: the REST API serves (503 for rotations) and the controller
/// waits while the API server cannot be reached at start, instead of the process exiting.
#[derive(Debug)]
pub struct KeyCell {
    ring: tokio::sync::watch::Sender<Option<RecordKey>>,
    /// Why no ring is loaded, while the operator waits for a person (signed records exist that
    /// no key it could load verifies).
    waiting: std::sync::Mutex<Option<String>>,
    /// The repair release value on the record key Secret, as last read.
    release: std::sync::Mutex<Option<String>>,
    /// The client id a person released on the record key Secret, as last read.
    released_client_id: std::sync::Mutex<Option<String>>,
}

impl Default for KeyCell {
    fn default() -> Self {
        Self {
            ring: tokio::sync::watch::channel(None).0,
            waiting: std::sync::Mutex::default(),
            release: std::sync::Mutex::default(),
            released_client_id: std::sync::Mutex::default(),
        }
    }
}

/// How often every replica reads the key ring again (a key added or retired is seen without a
/// restart).
pub const KEY_POLL: std::time::Duration = std::time::Duration::from_secs(10);

impl KeyCell {
    /// The ring, once loaded.
    pub fn get(&self) -> Option<RecordKey> {
        self.ring.borrow().clone()
    }

    pub fn set(&self, key: RecordKey) {
        self.ring.send_replace(Some(key));
    }

    /// The repair release value on the record key Secret, as last read.
    pub fn release(&self) -> Option<String> {
        self.release.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The client id a person released to another namespace (the annotation
    /// [`RELEASE_CLIENT_ID_ANNOTATION`] on the record key Secret), as last read.
    pub fn released_client_id(&self) -> Option<String> {
        self.released_client_id
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Why no key is loaded, when the operator holds for a person.
    pub fn waiting(&self) -> Option<String> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set_waiting(&self, why: Option<String>) {
        *self.waiting.lock().unwrap_or_else(|e| e.into_inner()) = why;
    }

    /// Resolves once the ring is loaded.
    pub async fn wait(&self) -> RecordKey {
        let mut rx = self.ring.subscribe();
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

    /// Loads the ring from `namespace` (the default key Secret is `name`), then reads it again
    /// every [`KEY_POLL`], for ever. With no key at all, a new one is made only when
    /// `signed_records` finds no Secret with a signed record: otherwise a key was lost (or is
    /// not restored yet), a new one would strand every record, and the operator waits for a
    /// person, saying why (log, `/readyz`, `oauthapp_record_key_missing`). Failures to reach
    /// the API server are retried with a growing pause (up to 30 s).
    pub async fn load<F, Fut>(&self, client: Client, namespace: &str, name: &str, signed_records: F)
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<usize, kube::Error>>,
    {
        let mut pause = std::time::Duration::from_millis(200);
        let mut last = String::new();
        loop {
            let wait = match RecordKey::load_ring(client.clone(), namespace, name).await {
                Ok(Some(Ring {
                    key: ring,
                    fingerprint,
                    release,
                    released_client_id,
                })) => {
                    *self.release.lock().unwrap_or_else(|e| e.into_inner()) = release;
                    *self.released_client_id.lock().unwrap_or_else(|e| e.into_inner()) = released_client_id;
                    if fingerprint != last {
                        tracing::info!(
                            keys = ring.0.len(),
                            signing = ring.signing_id(),
                            "loaded the record key ring"
                        );
                        self.set(ring);
                        self.set_waiting(None);
                        last = fingerprint;
                    }
                    pause = KEY_POLL;
                    KEY_POLL
                }
                Ok(None) if self.get().is_some() => {
                    tracing::warn!(
                        namespace,
                        "every record key Secret is gone: signing with the keys in memory; restore them (a restart would wait for them)"
                    );
                    KEY_POLL
                }
                Ok(None) => match signed_records().await {
                    Ok(0) => match RecordKey::create_secret(client.clone(), namespace, name).await {
                        Ok(()) => continue,
                        Err(e) => {
                            tracing::warn!(error = %crate::runtime::error::redact(&e.to_string()), retry_in = ?pause, "creating the record signing key failed");
                            pause
                        }
                    },
                    Ok(n) => {
                        let why = format!(
                            "no record signing key in namespace {namespace}, and {n} app Secrets carry records signed by one: \
                             restore the key Secret {name} from a backup, or make a new key (kubectl oauthapp key rotate); \
                             nothing is rotated meanwhile"
                        );
                        if self.waiting().as_deref() != Some(why.as_str()) {
                            tracing::error!("{why}");
                        }
                        self.set_waiting(Some(why));
                        KEY_POLL.min(pause)
                    }
                    Err(e) => {
                        tracing::warn!(error = %crate::runtime::error::redact(&e.to_string()), retry_in = ?pause, "cannot look for signed records");
                        pause
                    }
                },
                Err(e) => {
                    tracing::warn!(error = %crate::runtime::error::redact(&e.to_string()), retry_in = ?pause, "the record key ring is not loaded; rotations wait for it");
                    pause
                }
            };
            tokio::time::sleep(wait).await;
            pause = (pause * 2).min(std::time::Duration::from_secs(30));
        }
    }
}

/// Why a record key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
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
    /// A ring of one key, from its bytes; None when shorter than [`KEY_LEN`].
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        Self::ring(vec![bytes.to_vec()])
    }

    /// A ring of `keys`, the newest (the one that signs) first; None when empty or when a key
    /// is shorter than [`KEY_LEN`].
    pub fn ring(keys: Vec<Vec<u8>>) -> Option<Self> {
        if keys.is_empty() || keys.iter().any(|k| k.len() < KEY_LEN) {
            return None;
        }
        let mut ring: Vec<RingKey> = Vec::with_capacity(keys.len());
        for bytes in keys {
            let id = key_id(&bytes);
            if !ring.iter().any(|k| k.id == id) {
                ring.push(RingKey { id, bytes });
            }
        }
        Some(Self(Arc::new(ring)))
    }

    /// A fresh key from the OS random source.
    pub fn generate() -> Result<Self, KeyError> {
        Self::from_bytes(&random_key()?).ok_or(KeyError::Random)
    }

    /// The id of the key that signs.
    pub fn signing_id(&self) -> &str {
        &self.0[0].id
    }

    /// The ids of every key of the ring, the signing one first.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|k| k.id.as_str())
    }

    fn mac(key: &RingKey) -> Hmac<Sha256> {
        // HMAC takes keys of any length: this cannot fail.
        <Hmac<Sha256> as KeyInit>::new_from_slice(&key.bytes).expect("HMAC accepts any key length")
    }

    /// The format-2 MAC: over the format, the key id and the record.
    fn mac_v2(key: &RingKey, record: &Record) -> Hmac<Sha256> {
        let mut mac = Self::mac(key);
        mac.update(SIGNATURE_PREFIX.as_bytes());
        mac.update(key.id.as_bytes());
        mac.update(b".");
        mac.update(&record.message());
        mac
    }

    /// The signature annotation's value for `record`, by the newest key. A ring of one key signs
    /// in format 1 (`v1.<mac>`, the format of 0.1.0): its one key is the only one that can have
    /// made it, and a replica of 0.1.0 running beside this one (a rolling upgrade, a downgrade)
    /// still believes it. Once the ring holds several keys, signatures name theirs (format 2).
    pub fn sign(&self, record: &Record) -> String {
        if self.0.len() == 1 {
            let mut mac = Self::mac(&self.0[0]);
            mac.update(&record.message());
            return format!(
                "{SIGNATURE_PREFIX_V1}{}",
                URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
            );
        }
        let key = &self.0[0];
        let tag = Self::mac_v2(key, record).finalize().into_bytes();
        format!("{SIGNATURE_PREFIX}{}.{}", key.id, URL_SAFE_NO_PAD.encode(tag))
    }

    /// The seal annotation's value for `record` (with its identity), by the newest key:
    /// `s2.<key id>.<mac>`. Empty for a record without an identity (never written).
    pub fn seal(&self, record: &Record) -> String {
        let Some(message) = record.seal_message() else {
            return String::new();
        };
        let key = &self.0[0];
        let tag = Self::seal_mac(key, &message).finalize().into_bytes();
        format!("{SEAL_PREFIX}{}.{}", key.id, URL_SAFE_NO_PAD.encode(tag))
    }

    fn seal_mac(key: &RingKey, message: &[u8]) -> Hmac<Sha256> {
        let mut mac = Self::mac(key);
        mac.update(SEAL_PREFIX.as_bytes());
        mac.update(key.id.as_bytes());
        mac.update(b".");
        mac.update(message);
        mac
    }

    /// What `seal` says about `record` and its identity (constant-time comparison).
    pub fn check_seal(&self, record: &Record, seal: &str) -> KeyCheck {
        let Some((id, encoded)) = seal.strip_prefix(SEAL_PREFIX).and_then(|r| r.split_once('.')) else {
            return KeyCheck::Invalid;
        };
        let Some(position) = self.0.iter().position(|k| k.id == id) else {
            return KeyCheck::UnknownKey;
        };
        let (Ok(tag), Some(message)) = (URL_SAFE_NO_PAD.decode(encoded), record.seal_message()) else {
            return KeyCheck::Invalid;
        };
        if Self::seal_mac(&self.0[position], &message)
            .verify_slice(&tag)
            .is_ok()
        {
            KeyCheck::Valid {
                newest: position == 0,
            }
        } else {
            KeyCheck::Invalid
        }
    }

    /// What `signature` says about `record` (constant-time comparisons).
    pub fn check(&self, record: &Record, signature: &str) -> KeyCheck {
        if let Some(rest) = signature.strip_prefix(SIGNATURE_PREFIX) {
            let Some((id, encoded)) = rest.split_once('.') else {
                return KeyCheck::Invalid;
            };
            let Some(position) = self.0.iter().position(|k| k.id == id) else {
                return KeyCheck::UnknownKey;
            };
            let Ok(tag) = URL_SAFE_NO_PAD.decode(encoded) else {
                return KeyCheck::Invalid;
            };
            return if Self::mac_v2(&self.0[position], record).verify_slice(&tag).is_ok() {
                KeyCheck::Valid {
                    newest: position == 0,
                }
            } else {
                KeyCheck::Invalid
            };
        }
        // Format 1 (`v1.<mac>`, before the ring): it names no key, so any key of the ring may
        // have made it, and none of them making it proves nothing.
        let Some(Ok(tag)) = signature
            .strip_prefix(SIGNATURE_PREFIX_V1)
            .map(|e| URL_SAFE_NO_PAD.decode(e))
        else {
            return KeyCheck::Invalid;
        };
        let message = record.message();
        if self.0.iter().any(|key| {
            let mut mac = Self::mac(key);
            mac.update(&message);
            mac.verify_slice(&tag).is_ok()
        }) {
            // The format a ring of one key signs in.
            KeyCheck::Valid {
                newest: self.0.len() == 1,
            }
        } else {
            KeyCheck::UnknownKey
        }
    }

    /// Whether `signature` looks made in the format and by the key this ring signs with now (a
    /// cheap look at its prefix, no verification: for counting records left to re-sign).
    pub fn looks_current(&self, signature: &str) -> bool {
        let by_newest = signature.starts_with(&format!("{SIGNATURE_PREFIX}{}.", self.0[0].id));
        by_newest || (self.0.len() == 1 && signature.starts_with(SIGNATURE_PREFIX_V1))
    }

    /// Whether `signature` is a signature of `record` by a key of the ring.
    pub fn verifies(&self, record: &Record, signature: &str) -> bool {
        matches!(self.check(record, signature), KeyCheck::Valid { .. })
    }

    /// The ring kept in `namespace`: the Secrets in the ring's slots ([`key_slots`] of `name`),
    /// newest first (by creation time, then name), and a fingerprint of what was read (names and
    /// resourceVersions) to tell a change. None when no slot holds a key. A Secret without a
    /// usable key is left out, with a warning. Slots are fixed names so that the operator's
    /// Role can name them (RBAC cannot limit `list` to some Secrets).
    pub async fn load_ring(client: Client, namespace: &str, name: &str) -> Result<Option<Ring>, KeyError> {
        let secrets: Api<Secret> = Api::namespaced(client, namespace);
        let mut found: Vec<Secret> = Vec::new();
        for slot in key_slots(name) {
            let read = secrets.get_opt(&slot).await.map_err(|source| KeyError::Kube {
                namespace: namespace.to_string(),
                name: slot.clone(),
                source,
            })?;
            found.extend(read);
        }
        found.sort_by(|a, b| {
            let created = |s: &Secret| s.metadata.creation_timestamp.as_ref().map(|t| t.0);
            created(b)
                .cmp(&created(a))
                .then_with(|| b.name_any().cmp(&a.name_any()))
        });
        let mut keys = Vec::new();
        let mut fingerprint = String::new();
        for secret in &found {
            let bytes = secret
                .data
                .as_ref()
                .and_then(|d| d.get(KEY_DATA_KEY))
                .map(|b| b.0.clone())
                .unwrap_or_default();
            if bytes.len() < KEY_LEN {
                tracing::warn!(secret = %format!("{namespace}/{}", secret.name_any()), "holds no `{KEY_DATA_KEY}` of at least {KEY_LEN} bytes; not a record key");
                continue;
            }
            fingerprint.push_str(&format!(
                "{}@{};",
                secret.name_any(),
                secret.resource_version().unwrap_or_default()
            ));
            keys.push(bytes);
        }
        let first = found.iter().find(|s| s.metadata.name.as_deref() == Some(name));
        let release = first.and_then(|s| s.annotations().get(RELEASE_REPAIRS_ANNOTATION).cloned());
        let released_client_id =
            first.and_then(|s| s.annotations().get(RELEASE_CLIENT_ID_ANNOTATION).cloned());
        Ok(Self::ring(keys).map(|key| Ring {
            key,
            fingerprint,
            release,
            released_client_id,
        }))
    }

    /// Creates the key Secret `namespace/name` with a fresh key. A replica that starts at the
    /// same time may create it first: that is no error (read the ring again).
    pub async fn create_secret(client: Client, namespace: &str, name: &str) -> Result<(), KeyError> {
        let secrets: Api<Secret> = Api::namespaced(client, namespace);
        let secret = key_secret(namespace, name, random_key()?);
        let params = PostParams {
            dry_run: false,
            field_manager: Some(crate::model::crd::MANAGER.into()),
        };
        match secrets.create(&params, &secret).await {
            Ok(created) => {
                tracing::info!(secret = %format!("{namespace}/{}", created.name_any()), "created a record signing key");
                Ok(())
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
            Err(source) => Err(KeyError::Kube {
                namespace: namespace.to_string(),
                name: name.to_string(),
                source,
            }),
        }
    }
}

/// How many Secrets the operator wrote (its label) in `namespaces` (all when empty) carry a
/// signed record: metadata only, paged.
/// Records that name another installation are not counted: they are that one's, signed by its
/// key, and say nothing of a key this installation lost.
pub async fn count_signed_records(
    client: Client,
    namespaces: Vec<String>,
    installation: String,
) -> Result<usize, kube::Error> {
    let scopes: Vec<Api<Secret>> = if namespaces.is_empty() {
        vec![Api::all(client)]
    } else {
        namespaces
            .iter()
            .map(|ns| Api::namespaced(client.clone(), ns))
            .collect()
    };
    let mut n = 0;
    for secrets in scopes {
        let mut params = kube::api::ListParams::default()
            .labels(&format!(
                "app.kubernetes.io/managed-by={}",
                crate::model::crd::MANAGER
            ))
            .limit(500);
        loop {
            let page = secrets.list_metadata(&params).await?;
            n += page
                .items
                .iter()
                .filter(|s| s.annotations().contains_key(annotations::SIGNATURE))
                .filter(|s| {
                    s.annotations()
                        .get(annotations::INSTALLATION)
                        .is_none_or(|i| *i == installation)
                })
                .count();
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(token) => params = params.continue_token(&token),
                None => break,
            }
        }
    }
    Ok(n)
}

/// The ring as read: the keys, a fingerprint of the Secrets read, and the repair release value
/// on the first one ([`RELEASE_REPAIRS_ANNOTATION`]).
pub struct Ring {
    pub key: RecordKey,
    pub fingerprint: String,
    pub release: Option<String>,
    /// [`RELEASE_CLIENT_ID_ANNOTATION`] on the first one.
    pub released_client_id: Option<String>,
}

/// How many keys the ring may hold.
pub const KEY_SLOTS: usize = 8;

/// The names of the ring's Secrets: `name` (the first key, made by the operator), then
/// `name-2` to `name-8` (made by a person, to add a key).
pub fn key_slots(name: &str) -> Vec<String> {
    std::iter::once(name.to_string())
        .chain((2..=KEY_SLOTS).map(|i| format!("{name}-{i}")))
        .collect()
}

/// The label on every Secret of the key ring.
pub const KEY_LABEL: (&str, &str) = ("app.kubernetes.io/component", "record-key");

/// A new key's bytes (32, from the OS random source), for a new Secret of the ring.
pub fn new_key_bytes() -> Result<Vec<u8>, KeyError> {
    random_key()
}

/// 32 bytes from the OS random source.
fn random_key() -> Result<Vec<u8>, KeyError> {
    use rand::TryRng as _;
    let mut bytes = vec![0u8; KEY_LEN];
    rand::rngs::SysRng
        .try_fill_bytes(&mut bytes)
        .map_err(|_| KeyError::Random)?;
    Ok(bytes)
}

/// A key's id: 8 characters of base64url of a SHA-256 of it. Public (it names the key in
/// signatures and metrics); tells nothing of the key.
pub fn key_id(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    let digest = Sha256::new_with_prefix(b"oauthapp.io/record-key-id\0")
        .chain_update(bytes)
        .finalize();
    URL_SAFE_NO_PAD.encode(&digest[..6])
}

/// The Secret that keeps one key of the ring (immutable: a key never changes; a new one is a
/// new Secret).
pub fn key_secret(namespace: &str, name: &str, key: Vec<u8>) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            labels: Some(BTreeMap::from([(KEY_LABEL.0.to_string(), KEY_LABEL.1.to_string())])),
            annotations: Some(BTreeMap::from([(
                "oauthapp.io/purpose".to_string(),
                "A key that signs or verifies the rotation records oauthapp-operator keeps on app Secrets. Back it up; without it, a restore of app Secrets needs a person (see docs/backup-restore-upgrade.md).".to_string(),
            )])),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(KEY_DATA_KEY.to_string(), ByteString(key))])),
        immutable: Some(true),
        type_: Some("Opaque".into()),
        ..Default::default()
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
    /// A genuine record older than the one the status shows: a copy written back.
    Stale,
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
            Self::Stale => {
                "its rotation record is older than the status shows (an earlier copy written back; its secret was retired)"
            }
        }
    }
}

/// What the operator makes of the record on an app's Secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Signed by the operator, with its parameters, not from the future.
    Signed,
    /// Exactly what the status already shows (so the operator computed that hash), unsigned
    /// (written before records were signed) or signed by a key the operator no longer holds:
    /// re-signed once, after its content verifies.
    Legacy,
    /// Not believed.
    Drift(Drift),
    /// What [`Verdict::Unverifiable`] would be, accepted by a person for this very rotation
    /// (`oauthapp.io/accept-secret`): believed once its content verifies against its own hash,
    /// then signed with the operator's key.
    Accepted,
    /// Signed by a key the operator does not hold, and no status to check it against (a
    /// restore without the key): neither believed nor replaced; the app holds
    /// (`RecordUnverifiable`) until the key is back or a person accepts the Secret.
    Unverifiable,
    /// A Secret the app does not control, with the operator's record for an app of this
    /// namespace and name (sealed) and no other live controller: a restore or a re-creation.
    /// Adopted once its content verifies: ownerReference set, record re-signed for this app,
    /// status rebuilt from it. No new secret.
    Adopt,
    /// A Secret that is not this app's: someone else's, or the operator's for another app.
    NotOurs,
}

/// Judges the record on `meta` (the Secret named by the app) for `app`, with nothing
/// remembered of earlier apps of its name ([`judge`]).
pub fn verdict(
    app: &OAuthApp,
    meta: &ObjectMeta,
    key: &RecordKey,
    trusted: &[HashParams],
    now: Timestamp,
) -> Verdict {
    judge(app, meta, key, trusted, now, None)
}

/// The newest rotation the operator saw of an app of some name before that app went away
/// (crate::runtime::ledger): a Secret brought back with an older record is a copy written back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retired {
    pub count: i64,
    pub rotation_id: String,
}

/// Whether `meta` has a controller ownerReference to this app (by uid).
pub fn controlled_by(meta: &ObjectMeta, app: &OAuthApp) -> bool {
    let Some(uid) = app.metadata.uid.as_deref() else {
        return false;
    };
    meta.owner_references
        .iter()
        .flatten()
        .any(|r| r.controller == Some(true) && r.uid == uid && r.kind == "OAuthApp")
}

/// The uid of the app of this name that `meta`'s controller ownerReference names, when that
/// app is gone (the live app of this name has another uid); Some(None) with no controller at
/// all; None when another object controls the Secret.
fn gone_owner<'a>(meta: &'a ObjectMeta, app: &OAuthApp) -> Option<Option<&'a str>> {
    let controller = meta
        .owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true));
    match controller {
        None => Some(None),
        Some(r)
            if r.kind == "OAuthApp"
                && Some(r.name.as_str()) == app.metadata.name.as_deref()
                && Some(r.uid.as_str()) != app.metadata.uid.as_deref() =>
        {
            Some(Some(r.uid.as_str()))
        }
        Some(_) => None,
    }
}

/// The client id a record for `app` was signed with: `spec.clientId`, or its kept app id.
fn record_client_id(app: &OAuthApp, app_id: Option<&str>) -> Option<String> {
    app.spec.client_id.clone().or_else(|| app_id.map(str::to_string))
}

/// The record on `meta` with its sealed identity checked for `app` (its namespace and name);
/// None when it has no seal, or one for another app.
fn seal_check(app: &OAuthApp, meta: &ObjectMeta, key: &RecordKey) -> Option<(Record, KeyCheck)> {
    let seal = meta.annotations.as_ref()?.get(annotations::SEAL)?;
    let mut record = Record::from_annotations(app.metadata.uid.as_deref().unwrap_or_default(), "", meta)?;
    if record.app_name.as_deref() != app.metadata.name.as_deref()
        || record.namespace.as_str() != app.metadata.namespace.as_deref().unwrap_or_default()
    {
        return None;
    }
    record.client_id = record_client_id(app, record.app_id.as_deref())?;
    let check = key.check_seal(&record, seal);
    Some((record, check))
}

/// The app id a Secret's record proves for `app`: its sealed app id (a valid seal by a key of
/// the ring), or, for a record of 0.1.0 whose ownerReference still names the app's earlier
/// uid, that uid's id once its signature verifies. None when it proves none.
pub fn proven_app_id(app: &OAuthApp, meta: &ObjectMeta, key: &RecordKey) -> Option<String> {
    if let Some((record, KeyCheck::Valid { .. })) = seal_check(app, meta, key) {
        return record.app_id.filter(|id| crate::model::id::decode(id).is_ok());
    }
    let old_uid = gone_owner(meta, app).flatten()?;
    let id = crate::model::id::encode(uuid::Uuid::parse_str(old_uid).ok()?);
    let record = Record::from_annotations(old_uid, &record_client_id(app, Some(&id))?, meta)?;
    let signature = meta.annotations.as_ref()?.get(annotations::SIGNATURE)?;
    key.verifies(&record, signature).then_some(id)
}

/// The app's kept id, given its Secret: the status's (kept once made), else the one the
/// Secret's record proves ([`proven_app_id`]), else the one its uid makes (a new app).
pub fn kept_app_id(app: &OAuthApp, meta: Option<&ObjectMeta>, key: &RecordKey) -> Option<String> {
    status_app_id(app)
        .or_else(|| meta.and_then(|m| proven_app_id(app, m, key)))
        .or_else(|| uid_app_id(app))
}

/// Judges the record on `meta` (the Secret the app names) for `app`. A Secret the app controls
/// is judged by its record as before; one it does not control is the app's to adopt only when
/// the operator's seal binds its record to this app's namespace and name, nothing else controls
/// it (no controller, or an earlier app of this name that is gone), and `retired` (what the
/// operator remembers of the name) shows nothing newer.
// Long: the verdicts in their order of precedence, a few lines each; split up, the order that
// decides would be spread over functions.
pub fn judge(
    app: &OAuthApp,
    meta: &ObjectMeta,
    key: &RecordKey,
    trusted: &[HashParams],
    now: Timestamp,
    retired: Option<&Retired>,
) -> Verdict {
    let Some(uid) = app.metadata.uid.as_deref() else {
        return Verdict::Drift(Drift::Stripped);
    };
    let controlled = controlled_by(meta, app);
    let status = app.status.as_ref();
    let has_rotation = status.is_some_and(|s| s.rotation_id.is_some());
    if !controlled {
        let Some(old_owner) = gone_owner(meta, app) else {
            return Verdict::NotOurs;
        };
        // Only the operator's own Secrets (its label) are adopted.
        let labelled = meta
            .labels
            .as_ref()
            .and_then(|l| l.get("app.kubernetes.io/managed-by"))
            .is_some_and(|v| v == crate::model::crd::MANAGER);
        if !labelled {
            return Verdict::NotOurs;
        }
        let sealed = seal_check(app, meta, key);
        let Some(app_id) = proven_app_id(app, meta, key) else {
            // A seal by a key the operator does not hold, and nothing to check it against:
            // neither believed nor replaced.
            return match sealed {
                Some((r, KeyCheck::UnknownKey)) if !has_rotation => {
                    if app.annotation(crate::model::crd::ACCEPT_SECRET_ANNOTATION)
                        == Some(r.rotation_id.as_str())
                    {
                        Verdict::Adopt
                    } else {
                        Verdict::Unverifiable
                    }
                }
                _ => Verdict::NotOurs,
            };
        };
        let Some(record) = Record::from_annotations(old_owner.unwrap_or(uid), "", meta) else {
            return Verdict::NotOurs;
        };
        if let Some(v) = untrusted_content(&record, trusted, now) {
            return v;
        }
        return match status {
            // The app's own Secret, its ownerReference lost (or a retained Secret): judged as
            // if controlled; the reference is put back (or kept off) by a sync.
            Some(s) if has_rotation && s.app_id.as_deref() == Some(app_id.as_str()) => {
                if older_than_status(app, &record) {
                    Verdict::Drift(Drift::Stale)
                } else {
                    Verdict::Signed
                }
            }
            // The app has an identity of its own: the Secret is another's.
            _ if has_rotation => Verdict::NotOurs,
            _ if retired.is_some_and(|r| {
                r.count > record.count || (r.count == record.count && r.rotation_id != record.rotation_id)
            }) =>
            {
                Verdict::Drift(Drift::Stale)
            }
            _ => Verdict::Adopt,
        };
    }
    let client_id = record_client_id(app, Some(&kept_app_id(app, Some(meta), key).unwrap_or_default()));
    let Some(client_id) = client_id else {
        return Verdict::Drift(Drift::Stripped);
    };
    let Some(record) = Record::from_annotations(uid, &client_id, meta) else {
        return Verdict::Drift(Drift::Stripped);
    };
    if let Some(v) = untrusted_content(&record, trusted, now) {
        return v;
    }
    let rotated_at = record.rotated_at.parse::<Timestamp>().ok();
    // The status (only the operator writes it) shows this very record.
    let shown = status.is_some_and(|s| {
        s.rotation_id.as_deref() == Some(record.rotation_id.as_str())
            && s.client_secret_hash.as_deref() == Some(record.hash.as_str())
    });
    // A valid seal for this app is as good as the uid signature (which a replica of 0.1.0
    // leaves stale when it rotates, and which the seal does not replace).
    let sealed = matches!(seal_check(app, meta, key), Some((_, KeyCheck::Valid { .. })));
    let signature = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(annotations::SIGNATURE));
    let check = match signature {
        Some(signature) => key.check(&record, signature),
        None if sealed => KeyCheck::Valid { newest: false },
        None => KeyCheck::Invalid,
    };
    let check = match check {
        KeyCheck::Valid { .. } => check,
        _ if sealed => KeyCheck::Valid { newest: false },
        other => other,
    };
    match (signature.is_some() || sealed, check) {
        // A genuine record the status has moved past: an earlier copy written back (a
        // backup, a sync tool, a tenant). Its secret was retired; it never counts again.
        (true, KeyCheck::Valid { .. }) if rotated_at.is_some() && older_than_status(app, &record) => {
            Verdict::Drift(Drift::Stale)
        }
        (true, KeyCheck::Valid { .. }) if rotated_at.is_some() => Verdict::Signed,
        (true, KeyCheck::Valid { .. } | KeyCheck::Invalid) => Verdict::Drift(Drift::BadSignature),
        // Signed by a key this ring does not hold: not drift. What the status shows is
        // re-signed (after its content verifies); a record the status contradicts is not
        // believed; with no status to check it against, the operator holds.
        (true, KeyCheck::UnknownKey) if shown => Verdict::Legacy,
        (true, KeyCheck::UnknownKey) if has_rotation => Verdict::Drift(Drift::BadSignature),
        (true, KeyCheck::UnknownKey)
            if app.annotation(crate::model::crd::ACCEPT_SECRET_ANNOTATION)
                == Some(record.rotation_id.as_str()) =>
        {
            Verdict::Accepted
        }
        (true, KeyCheck::UnknownKey) => Verdict::Unverifiable,
        (false, _) if shown => Verdict::Legacy,
        (false, _) => Verdict::Drift(Drift::Unsigned),
    }
}

/// A record whose hashes use parameters the operator does not trust, or made in the future, is
/// never believed, whatever its signature.
fn untrusted_content(record: &Record, trusted: &[HashParams], now: Timestamp) -> Option<Verdict> {
    if !crate::model::secret::uses_trusted_params(&record.hash, trusted)
        || record
            .previous
            .as_ref()
            .is_some_and(|p| !crate::model::secret::uses_trusted_params(&p.hash, trusted))
    {
        return Some(Verdict::Drift(Drift::ForeignParams));
    }
    let rotated_at = record.rotated_at.parse::<Timestamp>().ok();
    if rotated_at.is_some_and(|at| at > now + MAX_CLOCK_SKEW) {
        return Some(Verdict::Drift(Drift::FutureRotatedAt));
    }
    None
}

/// Whether the status shows a later rotation than `record`: more rotations, or `record`'s
/// rotation among those it has passed (its history, newest first, holds the current one first).
pub fn older_than_status(app: &OAuthApp, record: &Record) -> bool {
    let Some(status) = app.status.as_ref() else {
        return false;
    };
    status.rotation_count > record.count
        || (status.rotation_id.as_deref() != Some(record.rotation_id.as_str())
            && status.history.iter().any(|h| h.rotation_id == record.rotation_id))
}

/// Whether `app` accepts `record` as it is (`oauthapp.io/accept-secret` valued with its
/// rotation id) while the app has no status rotation of its own.
pub fn verdict_is_accepted(app: &OAuthApp, record: Option<&Record>) -> bool {
    record.is_some_and(|r| {
        app.annotation(crate::model::crd::ACCEPT_SECRET_ANNOTATION) == Some(r.rotation_id.as_str())
    }) && app.status.as_ref().is_none_or(|s| s.rotation_id.is_none())
}

/// Whether the record on `meta` is signed by the ring's newest key (else a believed record is
/// re-signed with it, at a bounded rate).
pub fn signed_by_newest(app: &OAuthApp, meta: &ObjectMeta, key: &RecordKey) -> bool {
    let (Some(uid), Some(client_id)) = (app.metadata.uid.as_deref(), client_id(app)) else {
        return false;
    };
    let Some(record) = Record::from_annotations(uid, &client_id, meta) else {
        return false;
    };
    let by_newest = |check: KeyCheck| check == KeyCheck::Valid { newest: true };
    let ann = meta.annotations.as_ref();
    ann.and_then(|a| a.get(annotations::SIGNATURE))
        .is_some_and(|sig| by_newest(key.check(&record, sig)))
        && seal_check(app, meta, key).is_some_and(|(_, check)| by_newest(check))
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
        ..Default::default()
    })
}

/// The app's id (`app_…`), from its uid.
pub fn app_id(app: &OAuthApp) -> Option<String> {
    status_app_id(app).or_else(|| uid_app_id(app))
}

/// The id the status keeps once the app has a secret, when it is a well-formed app id (an app
/// without one, waiting to adopt its Secret, has no id to keep yet).
pub fn status_app_id(app: &OAuthApp) -> Option<String> {
    let status = app.status.as_ref()?;
    status.rotation_id.as_ref()?;
    status
        .app_id
        .clone()
        .filter(|id| crate::model::id::decode(id).is_ok())
}

/// The id the app's uid makes (`app_` + base62): a new app's id.
pub fn uid_app_id(app: &OAuthApp) -> Option<String> {
    let uid = app.metadata.uid.as_deref()?;
    uuid::Uuid::parse_str(uid).ok().map(crate::model::id::encode)
}

/// The client id written to the Secret: `spec.clientId`, or the app id.
pub fn client_id(app: &OAuthApp) -> Option<String> {
    app.spec.client_id.clone().or_else(|| app_id(app))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::crd::{OAuthAppSpec, OAuthAppStatus};

    const UID: &str = "ffffffff-ffff-ffff-ffff-ffffffffffff";
    const FAST: HashParams = HashParams {
        m_cost_kib: 8,
        t_cost: 1,
        p_cost: 1,
    };

    /// A ring of two keys: it signs in format 2, where a record changed after signing is told
    /// apart from one by an unknown key (format 1 names no key: see
    /// `a_format_1_record_that_no_key_verifies_is_unknown_not_forged`).
    fn key() -> RecordKey {
        RecordKey::ring(vec![[7u8; KEY_LEN].to_vec(), [6u8; KEY_LEN].to_vec()]).unwrap()
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
            ..Default::default()
        }
    }

    /// A Secret the app controls, with these annotations.
    fn meta(ann: BTreeMap<String, String>) -> ObjectMeta {
        use kube::Resource as _;
        ObjectMeta {
            annotations: Some(ann),
            owner_references: app().controller_owner_ref(&()).map(|r| vec![r]),
            ..Default::default()
        }
    }

    fn our_hash() -> String {
        crate::model::secret::hash("oas_x", &FAST).unwrap()
    }

    /// A sealed record of an earlier app `demo` (id `app_id`), on a labelled Secret with no
    /// ownerReference (a restore, or a retained Secret).
    fn sealed_orphan(hash: &str, now: Timestamp, app_id: &str) -> ObjectMeta {
        let mut rec = record(hash, now);
        rec.app_uid = "11111111-1111-1111-1111-111111111111".into();
        rec.namespace = "ns".into();
        rec.app_name = Some("demo".into());
        rec.app_id = Some(app_id.into());
        rec.client_id = app_id.into();
        rec.installation = Some("ops/key".into());
        ObjectMeta {
            namespace: Some("ns".into()),
            annotations: Some(rec.to_annotations(&key())),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_string(),
                crate::model::crd::MANAGER.to_string(),
            )])),
            ..Default::default()
        }
    }

    fn app_in_ns() -> OAuthApp {
        let mut a = app();
        a.metadata.namespace = Some("ns".into());
        a
    }

    #[test]
    // Long: one scenario, step by step.
    fn a_sealed_secret_of_an_earlier_app_of_the_name_is_adopted_unless_something_newer_is_known() {
        let now = Timestamp::now();
        let hash = our_hash();
        let kept =
            &crate::model::id::encode(uuid::Uuid::from_u128(0x1111_2222_3333_4444_5555_6666_7777_8888));
        let orphan = sealed_orphan(&hash, now, kept);
        let kept = kept.as_str();
        let app = app_in_ns();
        assert_eq!(verdict(&app, &orphan, &key(), &[FAST], now), Verdict::Adopt);
        assert_eq!(proven_app_id(&app, &orphan, &key()).as_deref(), Some(kept));
        assert_eq!(kept_app_id(&app, Some(&orphan), &key()).as_deref(), Some(kept));
        // The ledger remembers a later rotation of the name, or another one of the same count:
        // a copy written back, whose secret was retired.
        for retired in [
            Retired {
                count: 4,
                rotation_id: "r9".into(),
            },
            Retired {
                count: 3,
                rotation_id: "r0".into(),
            },
        ] {
            assert_eq!(
                judge(&app, &orphan, &key(), &[FAST], now, Some(&retired)),
                Verdict::Drift(Drift::Stale),
                "{retired:?}"
            );
        }
        let same = Retired {
            count: 3,
            rotation_id: "r1".into(),
        };
        assert_eq!(
            judge(&app, &orphan, &key(), &[FAST], now, Some(&same)),
            Verdict::Adopt
        );

        // The seal binds namespace and name: another app, or the same name elsewhere, is not it.
        let mut other = app_in_ns();
        other.metadata.name = Some("other".into());
        assert_eq!(verdict(&other, &orphan, &key(), &[FAST], now), Verdict::NotOurs);
        let mut moved = app_in_ns();
        moved.metadata.namespace = Some("elsewhere".into());
        assert_eq!(verdict(&moved, &orphan, &key(), &[FAST], now), Verdict::NotOurs);
        // Any sealed field changed: not ours (never adopted, never rotated over).
        for (k, v) in [
            (annotations::APP_ID, "app_1"),
            (annotations::ROTATION_COUNT, "9"),
            (annotations::INSTALLATION, "x/y"),
        ] {
            let mut changed = orphan.clone();
            changed.annotations.as_mut().unwrap().insert(k.into(), v.into());
            assert_eq!(
                verdict(&app, &changed, &key(), &[FAST], now),
                Verdict::NotOurs,
                "{k}"
            );
        }
        // Without the operator's label, or controlled by something else: not ours.
        let mut unlabelled = orphan.clone();
        unlabelled.labels = None;
        assert_eq!(verdict(&app, &unlabelled, &key(), &[FAST], now), Verdict::NotOurs);
        // An app with a secret of its own (another identity) does not take it.
        let mut has_own = app_in_ns();
        has_own.status = Some(OAuthAppStatus {
            rotation_id: Some("own".into()),
            app_id: Some("app_1".into()),
            ..Default::default()
        });
        assert_eq!(verdict(&has_own, &orphan, &key(), &[FAST], now), Verdict::NotOurs);
        // The app's own retained Secret (no ownerReference, its kept id): believed as is.
        let mut retained = app_in_ns();
        retained.status = Some(OAuthAppStatus {
            rotation_id: Some("r1".into()),
            rotation_count: 3,
            app_id: Some(kept.into()),
            ..Default::default()
        });
        assert_eq!(verdict(&retained, &orphan, &key(), &[FAST], now), Verdict::Signed);
        retained.status.as_mut().unwrap().rotation_count = 5;
        assert_eq!(
            verdict(&retained, &orphan, &key(), &[FAST], now),
            Verdict::Drift(Drift::Stale)
        );
        // Restored without the key: held, until a person accepts this very record.
        let lost = RecordKey::from_bytes(&[9u8; KEY_LEN]).unwrap();
        assert_eq!(verdict(&app, &orphan, &lost, &[FAST], now), Verdict::Unverifiable);
        let mut accepted = app_in_ns();
        accepted
            .annotations_mut()
            .insert(crate::model::crd::ACCEPT_SECRET_ANNOTATION.into(), "r1".into());
        assert_eq!(verdict(&accepted, &orphan, &lost, &[FAST], now), Verdict::Adopt);
    }

    #[test]
    // Long: one change per field of the record, each checked.
    fn a_signed_record_round_trips_and_any_changed_field_breaks_the_signature() {
        let now = Timestamp::now();
        let hash = our_hash();
        let rec = record(&hash, now);
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
        // A key the operator does not hold: not drift. With no status to check it against the
        // app holds; shown by the status it is re-signed; contradicted by it, not believed.
        let other = RecordKey::from_bytes(&[8u8; KEY_LEN]).unwrap();
        assert_eq!(
            verdict(&app(), &meta(ann.clone()), &other, &[FAST], now),
            Verdict::Unverifiable
        );
        let mut shown = app();
        shown.status = Some(OAuthAppStatus {
            rotation_id: Some("r1".into()),
            client_secret_hash: Some(hash.clone()),
            ..Default::default()
        });
        assert_eq!(
            verdict(&shown, &meta(ann.clone()), &other, &[FAST], now),
            Verdict::Legacy
        );
        let mut contradicted = shown.clone();
        contradicted.status.as_mut().unwrap().rotation_id = Some("r0".into());
        assert_eq!(
            verdict(&contradicted, &meta(ann.clone()), &other, &[FAST], now),
            Verdict::Drift(Drift::BadSignature)
        );
        // Accepted by a person for this rotation.
        let mut accepted = app();
        accepted
            .annotations_mut()
            .insert(crate::model::crd::ACCEPT_SECRET_ANNOTATION.into(), "r1".into());
        assert_eq!(
            verdict(&accepted, &meta(ann.clone()), &other, &[FAST], now),
            Verdict::Accepted
        );
        accepted
            .annotations_mut()
            .insert(crate::model::crd::ACCEPT_SECRET_ANNOTATION.into(), "r9".into());
        assert_eq!(
            verdict(&accepted, &meta(ann.clone()), &other, &[FAST], now),
            Verdict::Unverifiable
        );
        let mut elsewhere = app();
        elsewhere.metadata.uid = Some("00000000-0000-0000-0000-000000000001".into());
        // The same name with another uid: the app was re-created. Not the operator's Secret
        // (no label): not ours; with the label, the record of 0.1.0 proves itself through the
        // earlier uid its ownerReference names, and the new app adopts it.
        assert_eq!(
            verdict(&elsewhere, &meta(ann.clone()), &key(), &[FAST], now),
            Verdict::NotOurs
        );
        let mut labelled = meta(ann.clone());
        labelled.labels = Some(BTreeMap::from([(
            "app.kubernetes.io/managed-by".to_string(),
            crate::model::crd::MANAGER.to_string(),
        )]));
        assert_eq!(
            verdict(&elsewhere, &labelled, &key(), &[FAST], now),
            Verdict::Adopt
        );
        assert_eq!(
            proven_app_id(&elsewhere, &labelled, &key()),
            uid_app_id(&app()),
            "it keeps the earlier app's id"
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
        let weak = crate::model::secret::hash(
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
        let printed = format!("{:?}", key());
        assert!(
            printed.contains("<redacted>") && !printed.contains("[7"),
            "{printed}"
        );
        assert!(RecordKey::from_bytes(&[1u8; KEY_LEN - 1]).is_none());
        let a = RecordKey::generate().unwrap();
        let b = RecordKey::generate().unwrap();
        let rec = record("h", Timestamp::now());
        assert_ne!(a.sign(&rec), b.sign(&rec));
        assert!(!a.verifies(&rec, "v1.not-base64!"));
        assert!(!a.verifies(&rec, &b.sign(&rec)));
    }

    #[test]
    fn the_newest_key_signs_and_every_key_of_the_ring_verifies() {
        let (old, new) = ([1u8; KEY_LEN], [2u8; KEY_LEN]);
        let rec = record("h", Timestamp::now());
        let before = RecordKey::from_bytes(&old).unwrap();
        let ring = RecordKey::ring(vec![new.to_vec(), old.to_vec()]).unwrap();
        assert_eq!(ring.signing_id(), key_id(&new));
        // A ring of one key signs in format 1 (what 0.1.0 reads); several name their key.
        let by_old = before.sign(&rec);
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&old).unwrap();
        mac.update(&rec.message());
        assert_eq!(
            by_old,
            format!("v1.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
        );
        assert_eq!(before.check(&rec, &by_old), KeyCheck::Valid { newest: true });
        assert!(before.looks_current(&by_old));
        assert_eq!(ring.check(&rec, &by_old), KeyCheck::Valid { newest: false });
        assert!(!ring.looks_current(&by_old));
        let by_ring = ring.sign(&rec);
        assert!(by_ring.starts_with(&format!("v2.{}.", key_id(&new))), "{by_ring}");
        assert_eq!(ring.check(&rec, &by_ring), KeyCheck::Valid { newest: true });
        assert!(ring.looks_current(&by_ring));
        let old_first = RecordKey::ring(vec![old.to_vec(), [9u8; KEY_LEN].to_vec()]).unwrap();
        assert_eq!(
            ring.check(&rec, &old_first.sign(&rec)),
            KeyCheck::Valid { newest: false }
        );
        // A known key's id with a MAC it did not make: forged.
        let forged = format!("v2.{}.{}", key_id(&old), URL_SAFE_NO_PAD.encode([0u8; 32]));
        assert_eq!(ring.check(&rec, &forged), KeyCheck::Invalid);
        assert_eq!(ring.check(&rec, "v2.nokey"), KeyCheck::Invalid);
        assert_eq!(ring.check(&rec, "v9.x"), KeyCheck::Invalid);
        // Keys the ring does not hold: unknown, not forged, in either format.
        let elsewhere = RecordKey::ring(vec![[3u8; KEY_LEN].to_vec(), [4u8; KEY_LEN].to_vec()]).unwrap();
        assert_eq!(ring.check(&rec, &elsewhere.sign(&rec)), KeyCheck::UnknownKey);
        assert_eq!(elsewhere.check(&rec, &by_old), KeyCheck::UnknownKey);
        // Short keys and empty rings are refused; a key given twice counts once.
        assert!(RecordKey::ring(vec![]).is_none());
        assert!(RecordKey::ring(vec![vec![1u8; KEY_LEN - 1]]).is_none());
        assert_eq!(
            RecordKey::ring(vec![old.to_vec(), old.to_vec()])
                .unwrap()
                .ids()
                .count(),
            1
        );
    }

    #[test]
    fn a_genuine_record_the_status_has_passed_is_drift() {
        let now = Timestamp::now();
        let hash = our_hash();
        let ann = record(&hash, now).to_annotations(&key());
        let mut app = app();
        let status = |count: i64, current: &str, history: &[&str]| OAuthAppStatus {
            rotation_id: Some(current.into()),
            client_secret_hash: Some(hash.clone()),
            rotation_count: count,
            history: history
                .iter()
                .map(|id| RotationHistoryEntry {
                    rotation_id: (*id).into(),
                    hint: String::new(),
                    trigger: RotationTrigger::Api,
                    time: Time(now),
                    username: None,
                })
                .collect(),
            ..Default::default()
        };
        // The record (rotation r1, count 1) as the status shows it, or ahead of it: believed.
        app.status = Some(status(1, "r1", &["r1"]));
        assert_eq!(
            verdict(&app, &meta(ann.clone()), &key(), &[FAST], now),
            Verdict::Signed
        );
        app.status = Some(status(0, "r0", &[]));
        assert_eq!(
            verdict(&app, &meta(ann.clone()), &key(), &[FAST], now),
            Verdict::Signed
        );
        // The status has moved on: more rotations, or r1 among those passed.
        app.status = Some(status(2, "r2", &["r2", "r1"]));
        assert_eq!(
            verdict(&app, &meta(ann.clone()), &key(), &[FAST], now),
            Verdict::Drift(Drift::Stale)
        );
        app.status = Some(status(1, "r2", &["r2", "r1"]));
        assert_eq!(
            verdict(&app, &meta(ann), &key(), &[FAST], now),
            Verdict::Drift(Drift::Stale)
        );
    }

    #[test]
    fn a_format_1_record_that_no_key_verifies_is_unknown_not_forged() {
        let now = Timestamp::now();
        let hash = our_hash();
        let single = RecordKey::from_bytes(&[7u8; KEY_LEN]).unwrap();
        let ann = record(&hash, now).to_annotations(&single);
        assert!(ann[annotations::SIGNATURE].starts_with("v1."));
        assert_eq!(
            verdict(&app(), &meta(ann.clone()), &single, &[FAST], now),
            Verdict::Signed
        );
        let mut changed = ann.clone();
        changed.insert(annotations::ROTATION_COUNT.into(), "9".into());
        // No status to check it against: held, never believed nor replaced.
        assert_eq!(
            verdict(&app(), &meta(changed.clone()), &single, &[FAST], now),
            Verdict::Unverifiable
        );
        // A status that shows another rotation contradicts it: not believed.
        let mut app = app();
        app.status = Some(OAuthAppStatus {
            rotation_id: Some("r0".into()),
            client_secret_hash: Some(hash),
            rotation_count: 2,
            ..Default::default()
        });
        assert_eq!(
            verdict(&app, &meta(changed), &single, &[FAST], now),
            Verdict::Drift(Drift::BadSignature)
        );
    }
}
