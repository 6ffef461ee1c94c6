//! The cached form of the operator's Secrets and apps ([`crate::runtime::watches`]): each object
//! packed into one buffer, its name, namespace and resourceVersion first (the store's key, read
//! on every lookup), then its fields, each string in the form that takes the least room:
//! - one of the strings every object repeats ([`OTHERS`], the record's keys), or the
//!   installation this operator runs as ([`share_installation`]): a byte;
//! - the same as a string the object held before it (the rotation id, the hint and the time in
//!   the record's history and again on their own; an app's client id that is its id): two bytes;
//! - the binary form of what the operator writes: a rotation id (32 hex digits), a uid, an app
//!   id, a time, an argon2 PHC string, a MAC after its head (`v1.…`, `s2.<key id>.…`): 16 to 50
//!   bytes where the text takes 20 to 97;
//! - else the text.
//!
//! Decisions read the objects whole ([`CachedSecret::metadata`], [`CachedApp::app`], once per
//! reconcile or request), which unpacks them. An object is cached packed only when it unpacks
//! to exactly what it was made of, checked as it goes in; one that would not (none the API
//! server sends) is kept as it came. So the cache loses nothing, whatever a tenant writes.
//!
//! An app and its Secret cost 772 bytes here (counted at 100,000 apps by `oauthapp-cache-bytes`
//! in `make bench-scale`), where the API objects cost 8,800 and the previous form of this cache
//! (strings in one buffer, the structs' fixed parts as they were) 1,743.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::OnceLock;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, OwnerReference, Time};
use kube::api::{ObjectMeta, PartialObjectMeta};
use kube::runtime::reflector::{Lookup, ObjectRef};
use kube::runtime::watcher;
use serde::{Deserialize, Serialize};

use crate::model::crd::{
    OAuthApp, OAuthAppSpec, OAuthAppStatus, PreviousSecret, RotationHistoryEntry, RotationTrigger,
};
use crate::model::record::{Record, annotations};
use crate::model::status::reasons;

/// The strings every operator Secret and app repeats, shared by all: the record's keys
/// ([`Record::KEYS`]), then these.
const OTHERS: [&str; 30] = [
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
    // The record's trigger.
    "Created",
    "Annotation",
    "Api",
    "Schedule",
    "SecretMissing",
    "SecretDrift",
];

/// The index of `s` among the shared strings ([`known`]).
fn known_index(s: &str) -> Option<u8> {
    Record::KEYS
        .iter()
        .chain(OTHERS.iter())
        .position(|k| *k == s)
        .map(|i| i as u8)
}

/// The shared string of this index ("" for none: never written, see [`known_index`]).
fn known(i: u8) -> &'static str {
    let i = usize::from(i);
    Record::KEYS
        .get(i)
        .or_else(|| OTHERS.get(i.wrapping_sub(Record::KEYS.len())))
        .copied()
        .unwrap_or_default()
}

static INSTALLATION: OnceLock<Box<str>> = OnceLock::new();

/// Tells the caches the installation this operator runs as (`status.installation` of every
/// app, the record's `oauthapp.io/installation`), so that they keep it once rather than twice
/// per app. The first call counts; an object cached before it keeps the text.
pub fn share_installation(installation: &str) {
    if !installation.is_empty() {
        let _ = INSTALLATION.set(installation.into());
    }
}

fn shared_installation() -> Option<&'static str> {
    INSTALLATION.get().map(|s| &**s)
}

/// Messages the operator writes, each around one string of the object (`{}`): the message is
/// kept as its index and that string's.
const MESSAGES: [(&str, &str); 1] = [("Secret ", " holds the current client secret")];

/// A string of a cached object, in the form that takes the least room (the module's doc).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
enum V<'a> {
    Known(u8),
    Installation,
    /// The object's `n`th string, counted from its name, namespace and resourceVersion (0, 1,
    /// 2) in the order they are packed.
    Same(u16),
    /// [`MESSAGES`]`[i]` around the object's `n`th string.
    Message(u8, u16),
    Text(#[serde(borrow)] Cow<'a, str>),
    /// 32 lowercase hex digits (a rotation id).
    Hex([u8; 16]),
    /// A lowercase hyphenated UUID (a uid).
    Uuid([u8; 16]),
    /// An app id ([`crate::model::id`]).
    AppId([u8; 16]),
    /// RFC 3339 in whole seconds, UTC.
    Time(i64),
    /// `$argon2id$v=19$m=…,t=…,p=…$<salt>$<hash>`.
    Phc {
        m: u32,
        t: u32,
        p: u32,
        #[serde(borrow)]
        salt: Cow<'a, [u8]>,
        #[serde(borrow)]
        hash: Cow<'a, [u8]>,
    },
    /// `<head>.<unpadded base64url>`: a record's signature or seal.
    Mac {
        #[serde(borrow)]
        head: Cow<'a, str>,
        #[serde(borrow)]
        mac: Cow<'a, [u8]>,
    },
    /// A history (the record's annotation): the JSON of these entries.
    History(#[serde(borrow)] Vec<EntryBody<'a>>),
}

/// A rotation in a history (the record's, the status's). This and the bodies below are read
/// from the packed buffer and may borrow from it (`'de: 'a`).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(bound(deserialize = "'de: 'a"))]
struct EntryBody<'a> {
    rotation_id: V<'a>,
    hint: V<'a>,
    trigger: RotationTrigger,
    time: V<'a>,
    username: Option<V<'a>>,
}

/// The text of a form that needs nothing else of its object.
fn render(v: &V<'_>) -> Option<String> {
    Some(match v {
        V::Text(t) => t.to_string(),
        V::Hex(b) => format!("{:032x}", u128::from_be_bytes(*b)),
        V::Uuid(b) => uuid::Uuid::from_bytes(*b).hyphenated().to_string(),
        V::AppId(b) => crate::model::id::encode(uuid::Uuid::from_bytes(*b)),
        V::Time(s) => Timestamp::from_second(*s).ok()?.to_string(),
        V::Phc { m, t, p, salt, hash } => format!(
            "$argon2id$v=19$m={m},t={t},p={p}${}${}",
            STANDARD_NO_PAD.encode(salt),
            STANDARD_NO_PAD.encode(hash)
        ),
        V::Mac { head, mac } => format!("{head}.{}", URL_SAFE_NO_PAD.encode(mac)),
        _ => return None,
    })
}

/// The binary form of `s`, if one gives `s` back exactly.
fn binary(s: &str) -> Option<V<'static>> {
    let form = match s.len() {
        32 => V::Hex(u128::from_str_radix(s, 16).ok()?.to_be_bytes()),
        36 => V::Uuid(uuid::Uuid::try_parse(s).ok()?.into_bytes()),
        20 if s.ends_with('Z') => V::Time(s.parse::<Timestamp>().ok()?.as_second()),
        _ if s.starts_with("app_") => V::AppId(crate::model::id::decode(s).ok()?.into_bytes()),
        _ if s.starts_with('$') => phc(s)?,
        _ => {
            let (head, mac) = s.rsplit_once('.')?;
            if mac.len() < 16 {
                return None;
            }
            V::Mac {
                head: Cow::Owned(head.to_string()),
                mac: Cow::Owned(URL_SAFE_NO_PAD.decode(mac).ok()?),
            }
        }
    };
    (render(&form).as_deref() == Some(s)).then_some(form)
}

fn phc(s: &str) -> Option<V<'static>> {
    let rest = s.strip_prefix("$argon2id$v=19$m=")?;
    let (params, rest) = rest.split_once('$')?;
    let (salt, hash) = rest.split_once('$')?;
    let (m, params) = params.split_once(",t=")?;
    let (t, p) = params.split_once(",p=")?;
    Some(V::Phc {
        m: m.parse().ok()?,
        t: t.parse().ok()?,
        p: p.parse().ok()?,
        salt: Cow::Owned(STANDARD_NO_PAD.decode(salt).ok()?),
        hash: Cow::Owned(STANDARD_NO_PAD.decode(hash).ok()?),
    })
}

/// Packs an object's strings, in order ([`Dec`] reads them back in the same order).
struct Enc<'a> {
    seen: Vec<Cow<'a, str>>,
}

impl<'a> Enc<'a> {
    fn new(head: [&'a str; 3]) -> Self {
        Self {
            seen: head.into_iter().map(Cow::Borrowed).collect(),
        }
    }

    fn v(&mut self, s: &'a str) -> V<'a> {
        self.put(Cow::Borrowed(s))
    }

    fn opt(&mut self, s: Option<&'a str>) -> Option<V<'a>> {
        s.map(|s| self.v(s))
    }

    fn time(&mut self, t: &Time) -> V<'a> {
        self.put(Cow::Owned(t.0.to_string()))
    }

    fn put(&mut self, s: Cow<'a, str>) -> V<'a> {
        let v = self.form(&s);
        self.seen.push(s);
        v
    }

    fn same(&self, s: &str) -> Option<u16> {
        self.seen
            .iter()
            .position(|seen| seen == s)
            .and_then(|k| u16::try_from(k).ok())
    }

    fn form(&mut self, s: &Cow<'a, str>) -> V<'a> {
        if let Some(i) = known_index(s) {
            return V::Known(i);
        }
        if shared_installation() == Some(&**s) {
            return V::Installation;
        }
        if s.len() > 2
            && let Some(k) = self.same(s)
        {
            return V::Same(k);
        }
        for (i, (pre, post)) in MESSAGES.iter().enumerate() {
            if let Some(k) = s
                .strip_prefix(pre)
                .and_then(|rest| rest.strip_suffix(post))
                .and_then(|within| self.same(within))
            {
                return V::Message(i as u8, k);
            }
        }
        if let Some(history) = self.history(s) {
            return history;
        }
        if let Some(form) = binary(s) {
            return form;
        }
        V::Text(match s {
            Cow::Borrowed(b) => Cow::Borrowed(b),
            Cow::Owned(o) => Cow::Owned(o.clone()),
        })
    }

    /// A history's JSON as its entries, when they give the JSON back exactly.
    fn history(&mut self, s: &str) -> Option<V<'a>> {
        if !s.starts_with("[{") {
            return None;
        }
        let entries: Vec<RotationHistoryEntry> = serde_json::from_str(s).ok()?;
        if serde_json::to_string(&entries).ok()? != s {
            return None;
        }
        Some(V::History(self.entries(entries)))
    }

    fn entries(&mut self, entries: Vec<RotationHistoryEntry>) -> Vec<EntryBody<'a>> {
        let mut bodies = Vec::with_capacity(entries.len());
        for e in entries {
            let rotation_id = self.put(Cow::Owned(e.rotation_id));
            let hint = self.put(Cow::Owned(e.hint));
            let time = self.time(&e.time);
            let username = e.username.map(|u| self.put(Cow::Owned(u)));
            bodies.push(EntryBody {
                rotation_id,
                hint,
                trigger: e.trigger,
                time,
                username,
            });
        }
        bodies
    }
}

/// Reads an object's strings back, in the order [`Enc`] packed them.
struct Dec {
    seen: Vec<String>,
}

impl Dec {
    fn new(head: [&str; 3]) -> Self {
        Self {
            seen: head.into_iter().map(str::to_string).collect(),
        }
    }

    fn s(&mut self, v: &V<'_>) -> String {
        let s = match v {
            V::Known(i) => known(*i).to_string(),
            V::Installation => shared_installation().unwrap_or_default().to_string(),
            V::Same(k) => self.seen.get(usize::from(*k)).cloned().unwrap_or_default(),
            V::Message(i, k) => {
                let (pre, post) = MESSAGES.get(usize::from(*i)).copied().unwrap_or_default();
                let within = self.seen.get(usize::from(*k)).map_or("", String::as_str);
                format!("{pre}{within}{post}")
            }
            V::History(entries) => {
                let entries = self.entries(entries);
                serde_json::to_string(&entries).unwrap_or_default()
            }
            other => render(other).unwrap_or_default(),
        };
        self.seen.push(s.clone());
        s
    }

    fn opt(&mut self, v: &Option<V<'_>>) -> Option<String> {
        v.as_ref().map(|v| self.s(v))
    }

    fn time(&mut self, v: &V<'_>) -> Time {
        Time(self.s(v).parse().unwrap_or_default())
    }

    fn entries(&mut self, entries: &[EntryBody<'_>]) -> Vec<RotationHistoryEntry> {
        let mut out = Vec::with_capacity(entries.len());
        for e in entries {
            let rotation_id = self.s(&e.rotation_id);
            let hint = self.s(&e.hint);
            let time = self.time(&e.time);
            let username = self.opt(&e.username);
            out.push(RotationHistoryEntry {
                rotation_id,
                hint,
                trigger: e.trigger,
                time,
                username,
            });
        }
        out
    }
}

/// An object packed: its namespace, name and resourceVersion, then its body (postcard).
#[derive(Clone, Debug)]
struct Packed {
    buf: Box<[u8]>,
    namespace: u16,
    name: u16,
    version: u16,
}

impl Packed {
    fn new(head: [&str; 3], body: &impl Serialize) -> Option<Packed> {
        let [namespace, name, version] = head.map(|s| u16::try_from(s.len()).ok());
        let buf = postcard::to_extend(body, head.concat().into_bytes()).ok()?;
        Some(Packed {
            buf: buf.into_boxed_slice(),
            namespace: namespace?,
            name: name?,
            version: version?,
        })
    }

    fn text(&self, from: u16, len: u16) -> &str {
        let from = usize::from(from);
        self.buf
            .get(from..from + usize::from(len))
            .and_then(|b| std::str::from_utf8(b).ok())
            .unwrap_or_default()
    }

    fn namespace(&self) -> &str {
        self.text(0, self.namespace)
    }

    fn name(&self) -> &str {
        self.text(self.namespace, self.name)
    }

    fn version(&self) -> &str {
        self.text(self.namespace + self.name, self.version)
    }

    fn head(&self) -> [&str; 3] {
        [self.namespace(), self.name(), self.version()]
    }

    /// The packed fields, past the head.
    fn body_bytes(&self) -> Option<&[u8]> {
        let at = usize::from(self.namespace) + usize::from(self.name) + usize::from(self.version);
        self.buf.get(at..)
    }

    fn body<'a, T: Deserialize<'a>>(&'a self) -> Option<T> {
        postcard::from_bytes(self.body_bytes()?).ok()
    }

    fn dec(&self) -> Dec {
        Dec::new(self.head())
    }
}

fn some(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

/// What the metadata of a cached Secret keeps beyond its name, namespace, resourceVersion,
/// labels, annotations and owners (or of an app, beyond the fields [`AppBody`] has): for
/// most objects, nothing. Every field named: one added to `ObjectMeta` fails to compile here.
fn rest_of(meta: &ObjectMeta, app: bool) -> Option<String> {
    let rest = ObjectMeta {
        annotations: if app { meta.annotations.clone() } else { None },
        creation_timestamp: if app {
            None
        } else {
            meta.creation_timestamp.clone()
        },
        deletion_grace_period_seconds: meta.deletion_grace_period_seconds,
        deletion_timestamp: if app {
            None
        } else {
            meta.deletion_timestamp.clone()
        },
        finalizers: meta.finalizers.clone(),
        generate_name: meta.generate_name.clone(),
        generation: if app { None } else { meta.generation },
        labels: if app { meta.labels.clone() } else { None },
        managed_fields: meta.managed_fields.clone(),
        name: None,
        namespace: None,
        owner_references: if app { meta.owner_references.clone() } else { None },
        resource_version: None,
        self_link: meta.self_link.clone(),
        uid: if app { None } else { meta.uid.clone() },
    };
    (rest != ObjectMeta::default())
        .then(|| serde_json::to_string(&rest).ok())
        .flatten()
}

fn rest_from(json: Option<&str>) -> ObjectMeta {
    json.and_then(|j| serde_json::from_str(j).ok())
        .unwrap_or_default()
}

fn head_of(meta: &ObjectMeta) -> [&str; 3] {
    [
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default(),
        meta.resource_version.as_deref().unwrap_or_default(),
    ]
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

type Pairs<'a> = Option<Vec<(V<'a>, V<'a>)>>;

/// A Secret's body: what its metadata holds past its head.
#[derive(Serialize, Deserialize)]
#[serde(bound(deserialize = "'de: 'a"))]
struct SecretBody<'a> {
    labels: Pairs<'a>,
    annotations: Pairs<'a>,
    owners: Option<Vec<OwnerBody<'a>>>,
    #[serde(borrow)]
    rest: Option<Cow<'a, str>>,
}

#[derive(Serialize, Deserialize)]
#[serde(bound(deserialize = "'de: 'a"))]
struct OwnerBody<'a> {
    api_version: V<'a>,
    kind: V<'a>,
    name: V<'a>,
    uid: V<'a>,
    controller: Option<bool>,
    block_owner_deletion: Option<bool>,
}

fn pack_pairs<'a>(enc: &mut Enc<'a>, map: &'a Option<BTreeMap<String, String>>) -> Pairs<'a> {
    map.as_ref()
        .map(|map| map.iter().map(|(k, v)| (enc.v(k), enc.v(v))).collect())
}

fn unpack_pairs(dec: &mut Dec, pairs: &Pairs<'_>) -> Option<BTreeMap<String, String>> {
    pairs.as_ref().map(|pairs| {
        pairs
            .iter()
            .map(|(k, v)| {
                let k = dec.s(k);
                (k, dec.s(v))
            })
            .collect()
    })
}

fn pack_secret(meta: &ObjectMeta) -> Option<Packed> {
    let head = head_of(meta);
    let mut enc = Enc::new(head);
    let labels = pack_pairs(&mut enc, &meta.labels);
    let annotations = pack_pairs(&mut enc, &meta.annotations);
    let owners = meta.owner_references.as_ref().map(|refs| {
        refs.iter()
            .map(|r| OwnerBody {
                api_version: enc.v(&r.api_version),
                kind: enc.v(&r.kind),
                name: enc.v(&r.name),
                uid: enc.v(&r.uid),
                controller: r.controller,
                block_owner_deletion: r.block_owner_deletion,
            })
            .collect()
    });
    let rest = rest_of(meta, false);
    let body = SecretBody {
        labels,
        annotations,
        owners,
        rest: rest.as_deref().map(Cow::Borrowed),
    };
    Packed::new(head, &body)
}

fn unpack_secret(packed: &Packed) -> ObjectMeta {
    let Some(body) = packed.body::<SecretBody>() else {
        return ObjectMeta::default();
    };
    let mut dec = packed.dec();
    let labels = unpack_pairs(&mut dec, &body.labels);
    let annotations = unpack_pairs(&mut dec, &body.annotations);
    let owner_references = body.owners.as_ref().map(|owners| {
        owners
            .iter()
            .map(|o| {
                let api_version = dec.s(&o.api_version);
                let kind = dec.s(&o.kind);
                let name = dec.s(&o.name);
                let uid = dec.s(&o.uid);
                OwnerReference {
                    api_version,
                    kind,
                    name,
                    uid,
                    controller: o.controller,
                    block_owner_deletion: o.block_owner_deletion,
                }
            })
            .collect()
    });
    let [namespace, name, version] = packed.head();
    ObjectMeta {
        name: some(name.to_string()),
        namespace: some(namespace.to_string()),
        resource_version: some(version.to_string()),
        labels,
        annotations,
        owner_references,
        ..rest_from(body.rest.as_deref())
    }
}

/// What a Secret's controller reference names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlledBy {
    /// The OAuthApp of this name.
    App(String),
    /// Something else.
    Other,
    /// Nothing controls it.
    Nothing,
}

impl ControlledBy {
    /// What controls the Secret of this metadata (its controller reference).
    pub fn of(meta: &ObjectMeta) -> Self {
        match meta
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true))
        {
            Some(o) if o.kind == "OAuthApp" && o.api_version.starts_with("oauthapp.io/") => {
                ControlledBy::App(o.name.clone())
            }
            Some(_) => ControlledBy::Other,
            None => ControlledBy::Nothing,
        }
    }
}

/// A record's installation, signature and seal ([`CachedSecret::record_marks`]).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RecordMarks<'a> {
    pub installation: Option<Cow<'a, str>>,
    pub signature: Option<Cow<'a, str>>,
    pub seal: Option<Cow<'a, str>>,
}

#[derive(Clone, Debug)]
enum SecretForm {
    Packed(Packed),
    /// Metadata that would not pack to itself (none seen).
    Whole(Box<ObjectMeta>),
}

/// An operator Secret in the watch cache ([`crate::runtime::watches`]): the metadata
/// [`crate::runtime::watches::strip_secret`] kept of it, packed.
#[derive(Clone, Debug)]
pub struct CachedSecret(SecretForm);

impl From<PartialObjectMeta<Secret>> for CachedSecret {
    fn from(secret: PartialObjectMeta<Secret>) -> Self {
        let meta = secret.metadata;
        match pack_secret(&meta) {
            Some(packed) if unpack_secret(&packed) == meta => Self(SecretForm::Packed(packed)),
            _ => Self(SecretForm::Whole(Box::new(meta))),
        }
    }
}

impl CachedSecret {
    /// The metadata as [`crate::runtime::watches::strip_secret`] left it.
    pub fn metadata(&self) -> ObjectMeta {
        match &self.0 {
            SecretForm::Packed(p) => unpack_secret(p),
            SecretForm::Whole(meta) => meta.as_ref().clone(),
        }
    }

    pub fn name(&self) -> &str {
        match &self.0 {
            SecretForm::Packed(p) => p.name(),
            SecretForm::Whole(meta) => meta.name.as_deref().unwrap_or_default(),
        }
    }

    pub fn namespace(&self) -> &str {
        match &self.0 {
            SecretForm::Packed(p) => p.namespace(),
            SecretForm::Whole(meta) => meta.namespace.as_deref().unwrap_or_default(),
        }
    }

    pub fn resource_version(&self) -> &str {
        match &self.0 {
            SecretForm::Packed(p) => p.version(),
            SecretForm::Whole(meta) => meta.resource_version.as_deref().unwrap_or_default(),
        }
    }

    /// Its record's installation, signature and seal, for a look at who signed it (the records
    /// a scrape counts as left to re-sign: [`crate::runtime::admin`]), read without unpacking
    /// the Secret where it can be. A signature or seal may come as its head: the text before
    /// its MAC, with the dot (a prefix of the value that ends where a key id would).
    pub fn record_marks(&self) -> RecordMarks<'_> {
        let unpacked = || {
            let mut ann = self.metadata().annotations.unwrap_or_default();
            let mut take = |key| ann.remove(key).map(Cow::Owned);
            RecordMarks {
                installation: take(annotations::INSTALLATION),
                signature: take(annotations::SIGNATURE),
                seal: take(annotations::SEAL),
            }
        };
        let SecretForm::Packed(p) = &self.0 else {
            return unpacked();
        };
        let Some(body) = p.body::<SecretBody>() else {
            return unpacked();
        };
        let mut marks = RecordMarks::default();
        for (k, v) in body.annotations.iter().flatten() {
            let slot = match k {
                V::Known(i) if known(*i) == annotations::INSTALLATION => &mut marks.installation,
                V::Known(i) if known(*i) == annotations::SIGNATURE => &mut marks.signature,
                V::Known(i) if known(*i) == annotations::SEAL => &mut marks.seal,
                _ => continue,
            };
            *slot = Some(match v {
                V::Installation => Cow::Borrowed(shared_installation().unwrap_or_default()),
                V::Known(i) => Cow::Borrowed(known(*i)),
                V::Text(t) => Cow::Owned(t.to_string()),
                V::Mac { head, .. } => Cow::Owned(format!("{head}.")),
                // A form that needs the rest of the Secret.
                _ => return unpacked(),
            });
        }
        marks
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

    /// The store's key: name and namespace only.
    fn to_object_ref(&self, _: ()) -> ObjectRef<Self> {
        let r = ObjectRef::new(CachedSecret::name(self));
        match Lookup::namespace(self) {
            Some(ns) => r.within(&ns),
            None => r,
        }
    }
}

/// An app's body: its uid first ([`CachedApp::uid`] reads it alone), then the rest of what
/// [`crate::runtime::watches::strip_app`] keeps.
#[derive(Serialize, Deserialize)]
#[serde(bound(deserialize = "'de: 'a"))]
struct AppBody<'a> {
    uid: Option<V<'a>>,
    generation: Option<i64>,
    created: Option<V<'a>>,
    deleted: Option<V<'a>>,
    #[serde(borrow)]
    rest: Option<Cow<'a, str>>,
    /// The spec's JSON.
    #[serde(borrow)]
    spec: Cow<'a, str>,
    status: Option<StatusBody<'a>>,
}

/// [`OAuthAppStatus`], field by field.
#[derive(Serialize, Deserialize)]
#[serde(bound(deserialize = "'de: 'a"))]
struct StatusBody<'a> {
    app_id: Option<V<'a>>,
    client_id: Option<V<'a>>,
    secret_name: Option<V<'a>>,
    client_secret_hash: Option<V<'a>>,
    client_secret_hint: Option<V<'a>>,
    rotation_id: Option<V<'a>>,
    observed_rotate_token: Option<V<'a>>,
    secret_resource_version: Option<V<'a>>,
    installation: Option<V<'a>>,
    rotation_count: i64,
    observed_generation: Option<i64>,
    last_rotation_time: Option<V<'a>>,
    next_rotation_time: Option<V<'a>>,
    last_rotation_trigger: Option<RotationTrigger>,
    previous_secret: Option<PreviousBody<'a>>,
    /// `rolloutRestarts`' JSON.
    #[serde(borrow)]
    rollout_restarts: Option<Cow<'a, str>>,
    history: Vec<EntryBody<'a>>,
    conditions: Vec<CondBody<'a>>,
}

#[derive(Serialize, Deserialize)]
#[serde(bound(deserialize = "'de: 'a"))]
struct PreviousBody<'a> {
    rotation_id: V<'a>,
    hash: V<'a>,
    hint: V<'a>,
    expires_at: V<'a>,
}

#[derive(Serialize, Deserialize)]
#[serde(bound(deserialize = "'de: 'a"))]
struct CondBody<'a> {
    type_: V<'a>,
    status: V<'a>,
    reason: V<'a>,
    message: V<'a>,
    time: V<'a>,
    observed_generation: Option<i64>,
}

/// The JSON texts an app's body refers to (they live while it is packed).
struct AppTexts {
    rest: Option<String>,
    spec: String,
    restarts: Option<String>,
}

impl AppTexts {
    fn of(app: &OAuthApp) -> Option<Self> {
        let restarts = app.status.as_ref().and_then(|s| s.rollout_restarts.as_ref());
        Some(Self {
            rest: rest_of(&app.metadata, true),
            spec: serde_json::to_string(&app.spec).ok()?,
            restarts: match restarts {
                Some(r) => Some(serde_json::to_string(r).ok()?),
                None => None,
            },
        })
    }
}

// Long: the status field by field, in the order its strings are packed (unpack_app's order).
fn pack_app(app: &OAuthApp, texts: &AppTexts) -> Option<Packed> {
    let meta = &app.metadata;
    let head = head_of(meta);
    let mut enc = Enc::new(head);
    let uid = enc.opt(meta.uid.as_deref());
    let created = meta.creation_timestamp.as_ref().map(|t| enc.time(t));
    let deleted = meta.deletion_timestamp.as_ref().map(|t| enc.time(t));
    let status = app.status.as_ref().map(|st| {
        let app_id = enc.opt(st.app_id.as_deref());
        let client_id = enc.opt(st.client_id.as_deref());
        let secret_name = enc.opt(st.secret_name.as_deref());
        let client_secret_hash = enc.opt(st.client_secret_hash.as_deref());
        let client_secret_hint = enc.opt(st.client_secret_hint.as_deref());
        let rotation_id = enc.opt(st.rotation_id.as_deref());
        let observed_rotate_token = enc.opt(st.observed_rotate_token.as_deref());
        let secret_resource_version = enc.opt(st.secret_resource_version.as_deref());
        let installation = enc.opt(st.installation.as_deref());
        let last_rotation_time = st.last_rotation_time.as_ref().map(|t| enc.time(t));
        let next_rotation_time = st.next_rotation_time.as_ref().map(|t| enc.time(t));
        let previous_secret = st.previous_secret.as_deref().map(|p| PreviousBody {
            rotation_id: enc.v(&p.rotation_id),
            hash: enc.v(&p.client_secret_hash),
            hint: enc.v(&p.client_secret_hint),
            expires_at: enc.time(&p.expires_at),
        });
        let history = enc.entries(st.history.clone());
        let conditions = st
            .conditions
            .iter()
            .map(|c| CondBody {
                type_: enc.v(&c.type_),
                status: enc.v(&c.status),
                reason: enc.v(&c.reason),
                message: enc.v(&c.message),
                time: enc.time(&c.last_transition_time),
                observed_generation: c.observed_generation,
            })
            .collect();
        StatusBody {
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
            last_rotation_time,
            next_rotation_time,
            last_rotation_trigger: st.last_rotation_trigger,
            previous_secret,
            rollout_restarts: texts.restarts.as_deref().map(Cow::Borrowed),
            history,
            conditions,
        }
    });
    let body = AppBody {
        uid,
        generation: meta.generation,
        created,
        deleted,
        rest: texts.rest.as_deref().map(Cow::Borrowed),
        spec: Cow::Borrowed(&texts.spec),
        status,
    };
    Packed::new(head, &body)
}

// Long: the status field by field, in the order pack_app packed its strings.
fn unpack_app(packed: &Packed) -> OAuthApp {
    let Some(body) = packed.body::<AppBody>() else {
        return OAuthApp::new(packed.name(), OAuthAppSpec::default());
    };
    let mut dec = packed.dec();
    let uid = dec.opt(&body.uid);
    let created = body.created.as_ref().map(|t| dec.time(t));
    let deleted = body.deleted.as_ref().map(|t| dec.time(t));
    let status = body.status.as_ref().map(|st| {
        let app_id = dec.opt(&st.app_id);
        let client_id = dec.opt(&st.client_id);
        let secret_name = dec.opt(&st.secret_name);
        let client_secret_hash = dec.opt(&st.client_secret_hash);
        let client_secret_hint = dec.opt(&st.client_secret_hint);
        let rotation_id = dec.opt(&st.rotation_id);
        let observed_rotate_token = dec.opt(&st.observed_rotate_token);
        let secret_resource_version = dec.opt(&st.secret_resource_version);
        let installation = dec.opt(&st.installation);
        let last_rotation_time = st.last_rotation_time.as_ref().map(|t| dec.time(t));
        let next_rotation_time = st.next_rotation_time.as_ref().map(|t| dec.time(t));
        let previous_secret = st.previous_secret.as_ref().map(|p| {
            let rotation_id = dec.s(&p.rotation_id);
            let client_secret_hash = dec.s(&p.hash);
            let client_secret_hint = dec.s(&p.hint);
            let expires_at = dec.time(&p.expires_at);
            Box::new(PreviousSecret {
                rotation_id,
                client_secret_hash,
                client_secret_hint,
                expires_at,
            })
        });
        let history = dec.entries(&st.history);
        let conditions = st
            .conditions
            .iter()
            .map(|c| {
                let type_ = dec.s(&c.type_);
                let status = dec.s(&c.status);
                let reason = dec.s(&c.reason);
                let message = dec.s(&c.message);
                let last_transition_time = dec.time(&c.time);
                Condition {
                    type_,
                    status,
                    reason,
                    message,
                    last_transition_time,
                    observed_generation: c.observed_generation,
                }
            })
            .collect();
        OAuthAppStatus {
            app_id,
            client_id,
            secret_name,
            client_secret_hash,
            client_secret_hint,
            rotation_id,
            rotation_count: st.rotation_count,
            last_rotation_time,
            last_rotation_trigger: st.last_rotation_trigger,
            previous_secret,
            history,
            rollout_restarts: st
                .rollout_restarts
                .as_deref()
                .and_then(|j| serde_json::from_str(j).ok()),
            next_rotation_time,
            observed_rotate_token,
            secret_resource_version,
            observed_generation: st.observed_generation,
            installation,
            conditions,
        }
    });
    let [namespace, name, version] = packed.head();
    let metadata = ObjectMeta {
        name: some(name.to_string()),
        namespace: some(namespace.to_string()),
        uid,
        resource_version: some(version.to_string()),
        generation: body.generation,
        creation_timestamp: created,
        deletion_timestamp: deleted,
        ..rest_from(body.rest.as_deref())
    };
    OAuthApp {
        metadata,
        spec: serde_json::from_str(&body.spec).unwrap_or_default(),
        status,
    }
}

/// What the metrics read of every app at each scrape ([`crate::runtime::metrics::AppCounts`],
/// the apps another installation manages), kept beside the packed app so that a scrape does
/// not unpack 100,000 of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Glance {
    /// The Ready condition's status and reason ([`known`]): [`Glance::NONE`] for no Ready
    /// condition, [`Glance::UNPACK`] for one whose strings are not shared ones.
    ready: [u8; 2],
    /// `status.installation`: 0 none, 1 this operator's ([`share_installation`]), 2 another.
    installation: u8,
    /// `status.nextRotationTime` in whole seconds: [`Glance::NO_TIME`] for none,
    /// [`Glance::UNPACK_TIME`] for one with a fraction.
    next_rotation: i64,
}

impl Glance {
    const NONE: u8 = u8::MAX;
    const UNPACK: u8 = u8::MAX - 1;
    const NO_TIME: i64 = i64::MIN;
    const UNPACK_TIME: i64 = i64::MAX;

    fn of(app: &OAuthApp) -> Self {
        let status = app.status.as_ref();
        let ready = status
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
            .map_or([Self::NONE; 2], |c| {
                match (known_index(&c.status), known_index(&c.reason)) {
                    (Some(s), Some(r)) if s < Self::UNPACK && r < Self::UNPACK => [s, r],
                    _ => [Self::UNPACK; 2],
                }
            });
        let installation = match status.and_then(|s| s.installation.as_deref()) {
            None => 0,
            Some(i) if Some(i) == shared_installation() => 1,
            Some(_) => 2,
        };
        let next_rotation = match status.and_then(|s| s.next_rotation_time.as_ref()) {
            None => Self::NO_TIME,
            Some(t) if t.0.subsec_nanosecond() == 0 && t.0.as_second() != Self::NO_TIME => t.0.as_second(),
            Some(_) => Self::UNPACK_TIME,
        };
        Self {
            ready,
            installation,
            next_rotation,
        }
    }
}

#[derive(Clone, Debug)]
enum AppForm {
    Packed(Packed, Glance),
    /// An app that would not pack to itself (none seen).
    Whole(Box<OAuthApp>),
}

/// An app in the watch cache ([`crate::runtime::watches`]): what
/// [`crate::runtime::watches::strip_app`] keeps of it, packed. The controller's queue
/// ([`crate::controller::queue`]) keys apps by name and namespace; [`CachedApp::app`] gives
/// back the app as it came, which the planner and the REST API read, once per reconcile or
/// request.
#[derive(Clone, Debug)]
pub struct CachedApp(AppForm);

impl From<OAuthApp> for CachedApp {
    fn from(app: OAuthApp) -> Self {
        let packed = AppTexts::of(&app).and_then(|texts| pack_app(&app, &texts));
        match packed {
            Some(packed) if unpack_app(&packed) == app => {
                let glance = Glance::of(&app);
                Self(AppForm::Packed(packed, glance))
            }
            _ => Self(AppForm::Whole(Box::new(app))),
        }
    }
}

impl CachedApp {
    /// The app as [`crate::runtime::watches::strip_app`] left it.
    pub fn app(&self) -> OAuthApp {
        match &self.0 {
            AppForm::Packed(p, _) => unpack_app(p),
            AppForm::Whole(app) => app.as_ref().clone(),
        }
    }

    pub fn uid(&self) -> Option<String> {
        match &self.0 {
            AppForm::Packed(p, _) => {
                let (uid, _) = postcard::take_from_bytes::<Option<V>>(p.body_bytes()?).ok()?;
                p.dec().opt(&uid)
            }
            AppForm::Whole(app) => app.metadata.uid.clone(),
        }
        .filter(|u| !u.is_empty())
    }

    pub fn name(&self) -> &str {
        match &self.0 {
            AppForm::Packed(p, _) => p.name(),
            AppForm::Whole(app) => app.metadata.name.as_deref().unwrap_or_default(),
        }
    }

    pub fn namespace(&self) -> &str {
        match &self.0 {
            AppForm::Packed(p, _) => p.namespace(),
            AppForm::Whole(app) => app.metadata.namespace.as_deref().unwrap_or_default(),
        }
    }

    fn resource_version(&self) -> &str {
        match &self.0 {
            AppForm::Packed(p, _) => p.version(),
            AppForm::Whole(app) => app.metadata.resource_version.as_deref().unwrap_or_default(),
        }
    }

    /// The app's spec, as it came.
    pub fn spec(&self) -> OAuthAppSpec {
        match &self.0 {
            AppForm::Packed(p, _) => p
                .body::<AppBody>()
                .and_then(|b| serde_json::from_str(&b.spec).ok())
                .unwrap_or_default(),
            AppForm::Whole(app) => app.spec.clone(),
        }
    }

    /// The Ready condition's status and reason.
    pub fn ready(&self) -> Option<(Cow<'static, str>, Cow<'static, str>)> {
        let owned = |app: &OAuthApp| {
            let c = app
                .status
                .as_ref()?
                .conditions
                .iter()
                .find(|c| c.type_ == "Ready")?;
            Some((Cow::Owned(c.status.clone()), Cow::Owned(c.reason.clone())))
        };
        match &self.0 {
            AppForm::Packed(_, glance) if glance.ready[0] == Glance::NONE => None,
            AppForm::Packed(p, glance) if glance.ready[0] == Glance::UNPACK => owned(&unpack_app(p)),
            AppForm::Packed(_, glance) => Some((
                Cow::Borrowed(known(glance.ready[0])),
                Cow::Borrowed(known(glance.ready[1])),
            )),
            AppForm::Whole(app) => owned(app),
        }
    }

    /// `status.nextRotationTime`.
    pub fn next_rotation_time(&self) -> Option<Time> {
        let unpacked = |app: &OAuthApp| app.status.as_ref()?.next_rotation_time.clone();
        match &self.0 {
            AppForm::Packed(_, glance) if glance.next_rotation == Glance::NO_TIME => None,
            AppForm::Packed(p, glance) if glance.next_rotation == Glance::UNPACK_TIME => {
                unpacked(&unpack_app(p))
            }
            AppForm::Packed(_, glance) => Timestamp::from_second(glance.next_rotation).ok().map(Time),
            AppForm::Whole(app) => unpacked(app),
        }
    }

    /// `status.installation`.
    pub fn installation(&self) -> Option<Cow<'static, str>> {
        let unpacked = |app: &OAuthApp| Some(Cow::Owned(app.status.as_ref()?.installation.clone()?));
        match &self.0 {
            AppForm::Packed(_, glance) if glance.installation == 0 => None,
            AppForm::Packed(_, glance) if glance.installation == 1 => {
                shared_installation().map(Cow::Borrowed)
            }
            AppForm::Packed(p, _) => unpacked(&unpack_app(p)),
            AppForm::Whole(app) => unpacked(app),
        }
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
        Some(Cow::Borrowed(CachedApp::resource_version(self))).filter(|v| !v.is_empty())
    }

    fn uid(&self) -> Option<Cow<'_, str>> {
        CachedApp::uid(self).map(Cow::Owned)
    }

    /// The store's key: name and namespace only.
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

    fn packed(secret: &CachedSecret) -> &Packed {
        match &secret.0 {
            SecretForm::Packed(p) => p,
            SecretForm::Whole(_) => panic!("kept whole"),
        }
    }

    #[test]
    fn the_cached_form_gives_back_the_metadata_it_was_made_of() {
        let secret = stripped();
        let cached = CachedSecret::from(secret.clone());
        packed(&cached);
        assert_eq!(cached.metadata(), secret.metadata);
        let ann = cached.metadata().annotations.unwrap();
        assert_eq!(ann.get(annotations::ROTATION_ID).map(String::as_str), Some("r-1"));
        assert_eq!(ann.get(annotations::SEAL), None);
        assert_eq!(
            ControlledBy::of(&cached.metadata()),
            ControlledBy::App("billing".into())
        );
        assert_eq!(
            (cached.namespace(), cached.name(), cached.resource_version()),
            ("team-a", "billing", "4711")
        );
        let empty = CachedSecret::from(PartialObjectMeta::<Secret>::default());
        assert_eq!(empty.metadata(), ObjectMeta::default());
        assert_eq!(ControlledBy::of(&empty.metadata()), ControlledBy::Nothing);
        // An empty map is not no map.
        let mut bare = stripped();
        bare.metadata.labels = Some(BTreeMap::new());
        let cached = CachedSecret::from(bare.clone());
        packed(&cached);
        assert_eq!(cached.metadata(), bare.metadata);
    }

    /// A Secret as the operator writes it (values from a real one, the record key's MACs
    /// included).
    fn written() -> ObjectMeta {
        let history = r#"[{"rotationId":"e90c4cdb0f4f9b0e1d507e18ce0df875","hint":"oas_oD1e...Hu3P","trigger":"Created","time":"2026-12-07T01:07:09Z"}]"#;
        let hash = "$argon2id$v=19$m=19456,t=2,p=1$bC69pGv/HUaSxkgwPzt+7w$OZAghCSLze7FxaSAy0zmjQlXaRI7JlKhb5VbH0M7SGo";
        ObjectMeta {
            name: Some("app-00001-oauth-client".into()),
            namespace: Some("bench".into()),
            resource_version: Some("228".into()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".into(),
                "oauthapp-operator".into(),
            )])),
            annotations: Some(
                [
                    (annotations::APP_ID, "app_2EsAjL6W9Nm8EZaSRe6FBE"),
                    (annotations::APP_NAME, "app-00001"),
                    (annotations::HASH, hash),
                    (annotations::HINT, "oas_oD1e...Hu3P"),
                    (annotations::INSTALLATION, "default/oauthapp-operator-record-key"),
                    (
                        annotations::SEAL,
                        "s2.Pk-KQmvY.rMUxeLoKZw3VnhEwyCx8TNYCCQblbJHuh7JoY2kzaIo",
                    ),
                    (
                        annotations::SIGNATURE,
                        "v1.UFeMU3MNdSNfLzPQKtKnKIbal1nFwxG91bRqfD5PfQE",
                    ),
                    (annotations::ROTATED_AT, "2026-12-07T01:07:09Z"),
                    (annotations::ROTATION_COUNT, "1"),
                    (annotations::HISTORY, history),
                    (annotations::ROTATION_ID, "e90c4cdb0f4f9b0e1d507e18ce0df875"),
                    (annotations::TRIGGER, "Created"),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ),
            owner_references: Some(vec![OwnerReference {
                api_version: "oauthapp.io/v1alpha1".into(),
                kind: "OAuthApp".into(),
                name: "app-00001".into(),
                uid: "614bde95-0e89-4f9c-8933-12d65abd903a".into(),
                controller: Some(true),
                block_owner_deletion: None,
            }]),
            ..ObjectMeta::default()
        }
    }

    #[test]
    fn a_secret_the_operator_wrote_packs_into_less_than_half_its_text() {
        let meta = written();
        let text: usize = head_of(&meta).iter().map(|s| s.len()).sum::<usize>()
            + meta
                .annotations
                .iter()
                .flatten()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
            + 36
            + 9;
        let cached = CachedSecret::from(PartialObjectMeta::<Secret> {
            metadata: meta.clone(),
            ..Default::default()
        });
        let p = packed(&cached);
        assert_eq!(cached.metadata(), meta);
        // Keys 1 byte each; the hash 50 bytes of its 97; the history's rotation id and time
        // once; MACs in binary; the installation as text (no installation is shared here).
        assert!(
            p.buf.len() * 2 < text,
            "{} bytes packed, {text} as text",
            p.buf.len()
        );
        let body: SecretBody = p.body().unwrap();
        let forms: Vec<&V> = body.annotations.iter().flatten().map(|(_, v)| v).collect();
        assert!(matches!(forms[0], V::AppId(_)), "{forms:?}");
        assert!(matches!(forms[2], V::Phc { .. }), "{forms:?}");
        assert!(matches!(forms[5], V::Mac { .. }), "{forms:?}");
        assert!(matches!(forms[6], V::Mac { .. }), "{forms:?}");
        assert!(matches!(forms[7], V::Time(_)), "{forms:?}");
        assert!(matches!(forms[9], V::History(_)), "{forms:?}");
        assert!(matches!(forms[10], V::Same(_)), "{forms:?}");
        assert!(matches!(forms[11], V::Known(_)), "{forms:?}");
    }

    #[test]
    fn the_record_marks_read_off_the_packed_secret_agree_with_its_annotations() {
        let meta = written();
        let ann = meta.annotations.clone().unwrap();
        let marks = |meta: &ObjectMeta| {
            let cached = CachedSecret::from(PartialObjectMeta::<Secret> {
                metadata: meta.clone(),
                ..Default::default()
            });
            let m = cached.record_marks();
            [m.installation, m.signature, m.seal].map(|m| m.map(|s| s.into_owned()))
        };
        let [installation, signature, seal] = marks(&meta);
        assert_eq!(
            installation.as_deref(),
            ann.get(annotations::INSTALLATION).map(String::as_str)
        );
        // Heads with their dot: prefixes of the values, up to the MAC.
        assert_eq!(signature.as_deref(), Some("v1."));
        assert_eq!(seal.as_deref(), Some("s2.Pk-KQmvY."));
        // Values in no binary form come whole; none at all, none.
        let mut odd = meta.clone();
        let odd_ann = odd.annotations.as_mut().unwrap();
        odd_ann.insert(annotations::SIGNATURE.into(), "unsigned".into());
        odd_ann.remove(annotations::SEAL);
        let [_, signature, seal] = marks(&odd);
        assert_eq!((signature.as_deref(), seal), (Some("unsigned"), None));
    }

    #[test]
    fn a_string_that_only_looks_like_a_binary_form_stays_text() {
        for s in [
            "E90C4CDB0F4F9B0E1D507E18CE0DF875",
            "614BDE95-0E89-4F9C-8933-12D65ABD903A",
            "2026-12-07T01:07:09.5Z",
            "2026-12-07T01:07:09+00:00",
            "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA==$aGFzaA",
            "$argon2id$v=19$m=019456,t=2,p=1$c2FsdA$aGFzaA",
            "$argon2i$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA",
            "v1.UFeMU3MNdSNfLzPQKtKnKIbal1nFwxG91bRqfD5PfQE=",
            "app_not-an-id",
            "[{\"rotationId\": \"r\"}]",
        ] {
            assert!(binary(s).is_none(), "{s}");
            let mut enc = Enc::new(["", "", ""]);
            assert!(matches!(enc.v(s), V::Text(_)), "{s}");
        }
        for s in [
            "e90c4cdb0f4f9b0e1d507e18ce0df875",
            "00000000000000000000000000000000",
            "614bde95-0e89-4f9c-8933-12d65abd903a",
            "1970-01-01T00:00:00Z",
            "$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA",
            "s2.key.AAAAAAAAAAAAAAAAAAAAAA",
        ] {
            let form = binary(s).unwrap_or_else(|| panic!("{s} has a binary form"));
            assert_eq!(render(&form).as_deref(), Some(s));
        }
    }

    #[test]
    fn a_message_around_a_string_of_the_object_is_kept_as_two_references() {
        let mut enc = Enc::new(["team-a", "billing", "1"]);
        let name = enc.v("billing-oauth-client");
        let message = enc.v("Secret billing-oauth-client holds the current client secret");
        let other = enc.v("Secret other holds the current client secret");
        assert!(matches!(name, V::Text(_)));
        assert_eq!(message, V::Message(0, 3));
        assert!(matches!(other, V::Text(_)));
        let mut dec = Dec::new(["team-a", "billing", "1"]);
        assert_eq!(dec.s(&name), "billing-oauth-client");
        assert_eq!(
            dec.s(&message),
            "Secret billing-oauth-client holds the current client secret"
        );
        assert_eq!(dec.s(&other), "Secret other holds the current client secret");
    }

    #[test]
    fn metadata_too_long_to_pack_is_kept_whole() {
        let mut secret = stripped();
        secret.metadata.name = Some("n".repeat(usize::from(u16::MAX) + 1));
        let cached = CachedSecret::from(secret.clone());
        assert!(matches!(cached.0, SecretForm::Whole(_)));
        assert_eq!(cached.metadata(), secret.metadata);
        assert_eq!(cached.name(), secret.metadata.name.as_deref().unwrap());
        let mut app = full_app();
        app.metadata.namespace = Some("n".repeat(usize::from(u16::MAX) + 1));
        let cached = CachedApp::from(app.clone());
        assert!(matches!(cached.0, AppForm::Whole(_)));
        assert_eq!(cached.app(), app);
        assert_eq!(cached.uid().as_deref(), Some("7d1c"));
        assert_eq!(cached.ready().unwrap().1, reasons::SECRET_READY);
    }

    proptest::proptest! {
        /// Strings that repeat and sit inside one another (a small alphabet), or look like a
        /// binary form, read back as they were put.
        #[test]
        fn metadata_with_repeated_strings_reads_back_the_same(
            name in "[ab]{1,6}",
            labels in proptest::collection::btree_map("[ab-]{0,4}", "[ab-]{0,6}", 0..4),
            annotations in proptest::collection::btree_map(
                "[ab/]{0,5}",
                "[ab]{0,12}|[0-9a-f]{32}|[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z|v[0-9]\\.[A-Za-z0-9_-]{16,44}",
                0..8,
            ),
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
    fn every_shared_string_has_its_own_index() {
        let all: Vec<&str> = Record::KEYS.iter().chain(OTHERS.iter()).copied().collect();
        assert!(all.len() < usize::from(Glance::UNPACK));
        for (i, s) in all.iter().enumerate() {
            assert_eq!(known_index(s), Some(i as u8), "{s}");
            assert_eq!(known(i as u8), *s);
        }
        assert_eq!(known(all.len() as u8), "");
    }

    #[test]
    fn a_secret_another_kind_controls_has_no_controlling_app() {
        let mut secret = stripped();
        let refs = secret.metadata.owner_references.as_mut().unwrap();
        refs[0].kind = "Deployment".into();
        refs[0].api_version = "apps/v1".into();
        assert_eq!(
            ControlledBy::of(&CachedSecret::from(secret).metadata()),
            ControlledBy::Other
        );
    }

    // Long: a test fixture with every field set, one per line.
    fn full_app() -> OAuthApp {
        use crate::model::crd::{RestartKind, RestartTarget, RolloutRestarts};
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
                    last_transition_time: time("2026-01-02T00:00:01.5Z"),
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
        assert!(matches!(cached.0, AppForm::Packed(..)), "{cached:?}");
        assert_eq!(cached.app(), app);
        assert_eq!(cached.uid().as_deref(), Some("7d1c"));
        assert_eq!(
            cached.ready(),
            Some(("True".into(), reasons::SECRET_READY.into()))
        );
        assert_eq!(
            cached.installation().as_deref(),
            Some("default/oauthapp-operator-record-key")
        );
        assert_eq!(
            cached.next_rotation_time().as_ref(),
            app.status.as_ref().unwrap().next_rotation_time.as_ref()
        );
        assert_eq!(cached.spec(), app.spec);
        // The cache keys the app by its name and namespace alone.
        assert_eq!((cached.namespace(), cached.name()), ("team-a", "billing"));
        assert_eq!(
            Lookup::to_object_ref(&cached, ()),
            ObjectRef::new("billing").within("team-a")
        );
        assert_eq!(Lookup::resource_version(&cached).as_deref(), Some("4711"));
        // An app without a status, or a fresh one, too.
        let mut bare = OAuthApp::new("bare", OAuthAppSpec::default());
        assert_eq!(CachedApp::from(bare.clone()).app(), bare);
        assert_eq!(CachedApp::from(bare.clone()).uid(), None);
        bare.status = Some(OAuthAppStatus::default());
        assert_eq!(CachedApp::from(bare.clone()).app(), bare);
        assert_eq!(CachedApp::from(bare.clone()).ready(), None);
        assert_eq!(CachedApp::from(bare).next_rotation_time(), None);
    }

    #[test]
    fn what_a_scrape_reads_of_an_app_is_read_without_unpacking_it_and_agrees_with_it() {
        let mut app = full_app();
        let glance = |app: &OAuthApp| match CachedApp::from(app.clone()).0 {
            AppForm::Packed(_, glance) => glance,
            AppForm::Whole(_) => panic!("kept whole"),
        };
        let first = glance(&app);
        assert_eq!(first.installation, 2, "no installation is shared in this test");
        assert_ne!(first.ready[0], Glance::UNPACK);
        // A reason that is not a shared string, and a time with a fraction: read from the
        // packed app.
        let status = app.status.as_mut().unwrap();
        status.conditions[0].reason = "SomethingElse".into();
        status.next_rotation_time = Some(Time("2026-03-01T00:00:00.25Z".parse().unwrap()));
        let second = glance(&app);
        assert_eq!(second.ready, [Glance::UNPACK; 2]);
        assert_eq!(second.next_rotation, Glance::UNPACK_TIME);
        let cached = CachedApp::from(app.clone());
        assert_eq!(cached.ready(), Some(("True".into(), "SomethingElse".into())));
        assert_eq!(
            cached.next_rotation_time(),
            app.status.as_ref().unwrap().next_rotation_time
        );
        app.status.as_mut().unwrap().conditions.clear();
        app.status.as_mut().unwrap().installation = None;
        let cached = CachedApp::from(app);
        assert_eq!(cached.ready(), None);
        assert_eq!(cached.installation(), None);
    }

    #[test]
    fn a_spec_with_every_field_set_reads_back_the_same() {
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
        assert!(matches!(cached.0, AppForm::Packed(..)), "{cached:?}");
        assert_eq!(cached.spec(), spec);
        assert_eq!(cached.app().spec, spec);
    }
}
