//! The one `rotate()` that every trigger uses (annotation, REST API, schedule, self-repair), and
//! the other writes of the reconcile loop. Write order and preconditions (DESIGN.md, invariant 1):
//! the Secret first, then the status, each with the resourceVersion it was read at; a conflict
//! is re-read, never overwritten.
//!
//! A rotation is a sequence of steps, each a function below `rotate_inner`: decide, build the
//! record, the Secret object, the provider push, write the Secret, write the status, tell.
//!
//! May use: [`crate::model`], [`crate::runtime`], [`crate::provider`].

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::ObjectMeta;
use kube::runtime::events::EventType;
use kube::{Api, Resource, ResourceExt};
use tracing::info;

use crate::model::crd::{CLIENT_ID_KEY, CLIENT_SECRET_KEY, OAuthApp, RotationHistoryEntry, RotationTrigger};
use crate::model::record::{self, Record, RecordKey, Verdict, annotations};
use crate::model::secret::ClientSecret;
use crate::model::status::ContentCheck;
use crate::model::{managed, status};
use crate::runtime::context::Context;
use crate::runtime::error::Error;
use crate::runtime::writes::{app_key, post_params, publish_in_background, write_error, write_status};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// How many times a status write is retried after a resourceVersion conflict.
const STATUS_WRITE_ATTEMPTS: usize = 8;

pub use crate::model::rotated::{Rotated, Written};

/// Replaces the app's secret. The caller holds the app's lock and passes the app and its
/// Secret's metadata (`current`: None when there is none), from fresh reads or from the watch
/// caches: a rotation replaces the Secret's data whole, so it needs none of it. Both writes are
/// conditional on the resourceVersions passed, so a concurrent writer, or a cache behind the API
/// server, makes this fail with [`Error::StaleView`] (read fresh and plan again) instead of
/// overwriting anything. `detail` is who asked (a REST API caller) or why (what was wrong with a
/// drifted Secret), for the log and the Event.
pub async fn rotate(
    ctx: &Context,
    app: &OAuthApp,
    current: Option<ObjectMeta>,
    trigger: RotationTrigger,
    caller: Option<&str>,
) -> Result<Rotated, Error> {
    rotate_with(ctx, app, current, trigger, caller, None).await
}

/// A new secret and its hash, generated (from `.1` on) before the fresh reads that decide on
/// the rotation: the REST API hashes while it reads, one round-trip less per call. The new
/// secret does not depend on what the reads return; an unused one is simply dropped.
pub type Generated = ((ClientSecret, String), Instant);

/// [`rotate`], with the new secret already generated when `generated` is set.
pub async fn rotate_with(
    ctx: &Context,
    app: &OAuthApp,
    current: Option<ObjectMeta>,
    trigger: RotationTrigger,
    caller: Option<&str>,
    generated: Option<Generated>,
) -> Result<Rotated, Error> {
    rotate_committing(
        ctx,
        app,
        current,
        Cause {
            trigger,
            detail: caller,
            revoke_previous: false,
        },
        generated,
        || true,
    )
    .await
}

/// What a rotation is for: its trigger, who asked or what was wrong (`detail`, for the log and
/// the Event), and whether the replaced secret is invalid at once whatever
/// `spec.rotation.gracePeriod` says (`?revoke_previous=true`).
pub struct Cause<'a> {
    pub trigger: RotationTrigger,
    pub detail: Option<&'a str>,
    pub revoke_previous: bool,
}

/// [`rotate_with`] for `cause`, asking `commit` right before the Secret write is sent (the point
/// of no return): when it answers false, the rotation stops there, having written nothing.
pub async fn rotate_committing(
    ctx: &Context,
    app: &OAuthApp,
    current: Option<ObjectMeta>,
    cause: Cause<'_>,
    generated: Option<Generated>,
    commit: impl FnOnce() -> bool,
) -> Result<Rotated, Error> {
    let started = generated.as_ref().map_or_else(Instant::now, |(_, at)| *at);
    let generated = generated.map(|(g, _)| g);
    // A rotation has happened once its Secret is written (the old secret is invalid from then
    // on), so it is counted there, before the status write: whoever sees the new status also
    // sees it counted. A failure after that point is the status's, repaired by a reconcile.
    let mut counted = false;
    let Cause {
        trigger,
        detail,
        revoke_previous,
    } = cause;
    let planned = Planned {
        trigger,
        detail,
        grace: status::grace_for(app, trigger, revoke_previous),
    };
    // Fenced unless the caller runs it exempt (the REST API does, whatever the trigger: a
    // create's first secret is `Created`; crate::runtime::leader).
    let result = rotate_inner(ctx, app, current, planned, generated, commit, || {
        counted = true;
        ctx.metrics.rotation(trigger, "success", Some(started.elapsed()));
    })
    .await;
    match &result {
        Err(e) if !counted && e.is_conflict() => ctx.metrics.rotation(trigger, "conflict", None),
        Err(_) if !counted => ctx.metrics.rotation(trigger, "error", None),
        _ => {}
    }
    result
}

/// A rotation as decided: its trigger, `detail`, and how long the replaced secret stays valid
/// (`grace`; None: invalid at once).
struct Planned<'a> {
    trigger: RotationTrigger,
    detail: Option<&'a str>,
    grace: Option<jiff::SignedDuration>,
}

/// One rotation, step by step: decide whether it may run on what is known, make the secret and
/// build its record, put both into the Secret object, push the secret to the app's identity
/// provider, write the Secret, write the status, tell (log and Event). Each step is a function
/// below, in that order.
async fn rotate_inner(
    ctx: &Context,
    app: &OAuthApp,
    current: Option<ObjectMeta>,
    planned: Planned<'_>,
    generated: Option<(ClientSecret, String)>,
    commit: impl FnOnce() -> bool,
    secret_written: impl FnOnce(),
) -> Result<Rotated, Error> {
    let decided = decide(ctx, app, current.as_ref(), planned.trigger)?;
    let (secret, hash) = match generated {
        Some(generated) => generated,
        None => ctx.hasher.generate(&app.namespace().unwrap_or_default()).await?,
    };
    let built = build_record(ctx, app, current.as_ref(), &decided, &planned, &secret, hash)?;
    let current = untrimmed(ctx, app, current).await?;
    // Some (the version replaced, possibly unknown) when a Secret exists; None: one is created.
    let replaced = current
        .as_ref()
        .map(|meta| meta.resource_version.clone().unwrap_or_default());
    let object = secret_object(app, current, &built, &decided.key, &secret);
    pause_before_secret_write(ctx).await;
    if !commit() {
        return Err(Error::Internal(format!(
            "the rotation of {} was abandoned before its Secret write",
            app_key(app)
        )));
    }
    let pushed = push_to_provider(ctx, app, &built, &secret, planned.grace).await?;
    let app = pushed.as_ref().unwrap_or(app);
    let written = write_secret(ctx, app, object, replaced, &built.record.hash).await?;
    secret_written();
    pause_after_secret_write(ctx, app).await;
    let rotated = write_rotation_status(ctx, app, &written, secret, &built).await?;
    tell(ctx, &rotated.app, &planned, &built, &written.name_any());
    Ok(rotated)
}

/// What a rotation establishes before it makes a secret: the record key it signs with, the
/// ledger's memory of an earlier app of the name, how the replaced Secret's record is judged,
/// and the app's ids.
struct Decided {
    key: RecordKey,
    retired: Option<record::Retired>,
    judged: Option<Verdict>,
    app_id: String,
    client_id: String,
}

/// Step 1: whether this rotation may run on what is known of the app and its Secret
/// (`current`), and what it establishes before it does.
fn decide(
    ctx: &Context,
    app: &OAuthApp,
    current: Option<&ObjectMeta>,
    trigger: RotationTrigger,
) -> Result<Decided, Error> {
    let ns = app.namespace().unwrap_or_default();
    let name = app.name_any();
    if let Some(installation) = status::managed_elsewhere(&ctx.installation, app, current) {
        return Err(Error::ManagedElsewhere {
            app: name,
            installation,
        });
    }
    let key = ctx.record_key()?;
    let retired = ctx.ledger.get(&ns, &name);
    let judged = current.map(|meta| {
        record::judge(
            app,
            meta,
            &key,
            ctx.hasher.trusted(),
            Timestamp::now(),
            retired.as_ref(),
        )
    });
    // Not this app's Secret; or one it adopts (the controller does), which a first secret must
    // not replace.
    if let Some(meta) = current
        && (judged == Some(Verdict::NotOurs)
            || (judged == Some(Verdict::Adopt) && trigger == RotationTrigger::Created))
    {
        return Err(Error::SecretConflict {
            secret: meta.name.clone().unwrap_or_default(),
            app: name,
        });
    }
    // The id is made once: kept from the status, or proven by the Secret's record.
    let app_id = record::kept_app_id(app, current, &key).ok_or_else(|| Error::MissingUid(name.clone()))?;
    let client_id = app.spec.client_id.clone().unwrap_or_else(|| app_id.clone());
    // A Secret ahead of the status holds a rotation whose status write has not landed: another
    // replica is between its two writes (or crashed there; the controller completes the status).
    // Replacing that secret now could let the other writer's status write land afterwards and
    // confirm a secret that is no longer in the Secret (invariant 7), so a requested rotation
    // waits for the status instead. Repairs (a missing or altered secret) go ahead.
    if let Some(meta) = current
        && matches!(
            trigger,
            RotationTrigger::Api | RotationTrigger::Annotation | RotationTrigger::Schedule
        )
        && status::secret_ahead_of_status(app, meta)
    {
        return Err(Error::StaleView(app_key(app)));
    }
    Ok(Decided {
        key,
        retired,
        judged,
        app_id,
        client_id,
    })
}

/// The new record and what goes with it: when it was made (whole seconds), and the previous
/// secret it drops early, if any (for the Event).
struct Built {
    record: Record,
    now: Timestamp,
    dropped: Option<record::Previous>,
}

/// Step 2: the record of the new secret (`hash` is its hash): counted on from everything known
/// of the name, carrying the replaced secret as the previous one while a grace period runs, and
/// the history with the new rotation first.
fn build_record(
    ctx: &Context,
    app: &OAuthApp,
    current: Option<&ObjectMeta>,
    decided: &Decided,
    planned: &Planned<'_>,
    secret: &ClientSecret,
    hash: String,
) -> Result<Built, Error> {
    let uid = app
        .metadata
        .uid
        .clone()
        .ok_or_else(|| Error::MissingUid(app.name_any()))?;
    let rotation_id = uuid::Uuid::from_u128(rand::random()).simple().to_string();
    // Whole seconds, as the API server stores times (see status::status_from_secret).
    let now = Timestamp::from_second(Timestamp::now().as_second()).unwrap_or_else(|_| Timestamp::now());
    Ok(new_record(
        app,
        current,
        decided,
        planned,
        Fresh {
            uid,
            installation: installation(ctx),
            rotation_id,
            hint: secret.hint(),
            hash,
            now,
        },
    ))
}

/// What is new in a rotation's record: made here, not derived from the app.
struct Fresh {
    uid: String,
    installation: Option<String>,
    rotation_id: String,
    hint: String,
    hash: String,
    now: Timestamp,
}

/// [`build_record`]'s pure part.
fn new_record(
    app: &OAuthApp,
    current: Option<&ObjectMeta>,
    decided: &Decided,
    planned: &Planned<'_>,
    fresh: Fresh,
) -> Built {
    let Fresh {
        uid,
        installation,
        rotation_id,
        hint,
        hash,
        now,
    } = fresh;
    // What the replaced Secret says counts only when the operator wrote it.
    let believed = current.filter(|_| {
        matches!(
            decided.judged,
            Some(Verdict::Signed | Verdict::Legacy | Verdict::Accepted | Verdict::Adopt)
        )
    });
    let replaced = believed.and_then(|meta| Record::from_annotations("", "", meta));
    // Counted on from everything known of the name, the ledger's memory of an earlier app of
    // it included: a record of that app is always older than this one.
    let previous_count = app
        .status
        .as_ref()
        .map_or(0, |s| s.rotation_count)
        .max(replaced.as_ref().map_or(0, |r| r.count))
        .max(decided.retired.as_ref().map_or(0, |r| r.count));
    // With a grace period, the replaced secret stays valid until now + grace; a previous secret
    // it still carried is dropped (at most two are valid).
    let dropped = replaced
        .as_ref()
        .and_then(|r| r.previous.clone())
        .filter(|p| p.valid_at(now));
    let previous = planned
        .grace
        .zip(replaced.as_ref())
        .map(|(grace, r)| record::Previous {
            rotation_id: r.rotation_id.clone(),
            hash: r.hash.clone(),
            hint: r.hint.clone(),
            expires_at: (now + grace).to_string(),
        });
    let newest = RotationHistoryEntry {
        rotation_id: rotation_id.clone(),
        hint: hint.clone(),
        trigger: planned.trigger,
        time: Time(now),
        username: planned
            .detail
            .filter(|_| planned.trigger == RotationTrigger::Api)
            .map(str::to_string),
    };
    let history = status::history_after(app, newest, replaced.as_ref());
    let record = Record {
        app_uid: uid,
        client_id: decided.client_id.clone(),
        namespace: app.namespace().unwrap_or_default(),
        app_name: Some(app.name_any()),
        app_id: Some(decided.app_id.clone()),
        installation,
        rotation_id,
        hash,
        hint,
        rotated_at: now.to_string(),
        count: previous_count.saturating_add(1),
        trigger: planned.trigger.as_str().to_string(),
        // Any new secret satisfies a pending rotate request: record the current annotation
        // value (or keep the last one recorded, so that value never rotates again).
        observed_rotate_token: status::observed_rotate_token(app, believed),
        previous,
        history: Record::history_value(&history),
    };
    Built { record, now, dropped }
}

/// Step 3a: the Secret's metadata to write over. A cached copy without the Secret's other
/// labels and annotations is read fresh at the same version, so that the write keeps them; a
/// newer version means the view is stale.
async fn untrimmed(
    ctx: &Context,
    app: &OAuthApp,
    current: Option<ObjectMeta>,
) -> Result<Option<ObjectMeta>, Error> {
    match current {
        Some(meta) if crate::runtime::watches::is_trimmed(&meta) => {
            let secrets: Api<Secret> =
                Api::namespaced(ctx.client.clone(), &app.namespace().unwrap_or_default());
            let name = meta.name.clone().unwrap_or_default();
            match secrets.get_metadata_opt(&name).await.map_err(Error::Kube)? {
                Some(fresh) if fresh.metadata.resource_version == meta.resource_version => {
                    Ok(Some(fresh.metadata))
                }
                _ => Err(Error::StaleView(app_key(app))),
            }
        }
        current => Ok(current),
    }
}

/// Step 3b: the Secret object to write: the current one's metadata (or a new Secret's) with the
/// desired labels and annotations and the signed record, and the new secret as its data, whole.
fn secret_object(
    app: &OAuthApp,
    current: Option<ObjectMeta>,
    built: &Built,
    key: &RecordKey,
    secret: &ClientSecret,
) -> Secret {
    let mut object = match current {
        // The data and type are set whole below; the API server keeps the managedFields a
        // cached copy no longer has.
        Some(metadata) => Secret {
            metadata,
            ..Default::default()
        },
        None => new_secret(app),
    };
    apply_desired_metadata(app, &mut object.metadata);
    let ann = object.metadata.annotations.get_or_insert_with(BTreeMap::new);
    ann.retain(|k, _| !Record::KEYS.contains(&k.as_str()));
    ann.extend(built.record.to_annotations(key));
    object.data = Some(BTreeMap::from([
        (
            CLIENT_ID_KEY.to_string(),
            ByteString(built.record.client_id.clone().into_bytes()),
        ),
        (
            CLIENT_SECRET_KEY.to_string(),
            ByteString(secret.expose().as_bytes().to_vec()),
        ),
    ]));
    object.string_data = None;
    object.type_ = Some("Opaque".into());
    object
}

/// Step 4: the app's identity provider gets the new secret before the Secret does
/// (src/provider): it accepts it as soon as anyone can read it. A failure there fails the
/// rotation here, with nothing written. Some: the app with its `ProviderSynced` condition.
async fn push_to_provider(
    ctx: &Context,
    app: &OAuthApp,
    built: &Built,
    secret: &ClientSecret,
    grace: Option<jiff::SignedDuration>,
) -> Result<Option<OAuthApp>, Error> {
    let grace_expiry = built
        .record
        .previous
        .as_ref()
        .zip(grace)
        .map(|(p, g)| (p.rotation_id.as_str(), built.now + g));
    crate::provider::sync::push_rotation(
        ctx,
        app,
        &built.record.client_id,
        secret,
        &built.record.rotation_id,
        grace_expiry,
    )
    .await
}

/// Step 5: writes the Secret (`replaced`: the version it replaces; None: it creates one), fenced
/// by the leader Lease, and notes the write: the caches' lag, and the content check it makes
/// needless (the operator wrote what `hash` is the hash of). The object, which holds the
/// plaintext, is dropped as soon as it is sent.
async fn write_secret(
    ctx: &Context,
    app: &OAuthApp,
    object: Secret,
    replaced: Option<String>,
    hash: &str,
) -> Result<Secret, Error> {
    let ns = app.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let secret_name = object.name_any();
    ctx.leadership.check()?;
    let written = if replaced.is_some() {
        secrets.replace(&secret_name, &post_params(), &object).await
    } else {
        secrets.create(&post_params(), &object).await
    };
    drop(object);
    let written = written.map_err(|e| match secret_write_error(app, &secret_name, e) {
        // The Secret changed since it was read, or one was created meanwhile: nothing is written.
        Error::Conflict(key) => Error::StaleView(key),
        e => e,
    })?;
    ctx.metrics.writes.inc();
    let secret_key = format!("{ns}/{}", written.name_any());
    ctx.own_writes
        .put(format!("Secret {secret_key}"), &replaced.unwrap_or_default());
    if let Some(rv) = written.resource_version() {
        ctx.verified.put(
            &secret_key,
            &rv,
            hash,
            crate::runtime::context::content_digest(written.data.as_ref()),
            ContentCheck {
                secret_ok: true,
                client_id_ok: true,
            },
        );
    }
    Ok(written)
}

/// Step 6: the status that describes the written Secret. Someone who replaced the Secret since
/// is a conflict (the new secret is no longer in it); any other failure leaves the rotation
/// written and its status pending ([`Error::StatusPending`]: the reconcile completes it from the
/// Secret).
async fn write_rotation_status(
    ctx: &Context,
    app: &OAuthApp,
    written: &Secret,
    secret: ClientSecret,
    built: &Built,
) -> Result<Rotated, Error> {
    let rotation_id = built.record.rotation_id.clone();
    let hint = built.record.hint.clone();
    match write_status_for_secret(ctx, app, written, &rotation_id).await {
        Ok(app) => Ok(Rotated {
            secret,
            hint,
            rotation_id,
            app,
        }),
        Err(e) if e.is_conflict() => Err(e),
        Err(e) => Err(Error::StatusPending {
            app: app_key(app),
            source: Box::new(e),
            written: Box::new(Written(Rotated {
                secret,
                hint,
                rotation_id,
                app: app.clone(),
            })),
        }),
    }
}

/// The test builds' `pause-before-secret-write=<duration>` failpoint.
async fn pause_before_secret_write(ctx: &Context) {
    #[cfg(feature = "failpoints")]
    if let Some(d) = ctx
        .failpoint
        .as_deref()
        .and_then(|f| f.strip_prefix("pause-before-secret-write="))
    {
        let d = status::parse_interval(d).and_then(|d| std::time::Duration::try_from(d).ok());
        tokio::time::sleep(d.unwrap_or_default()).await;
    }
    #[cfg(not(feature = "failpoints"))]
    let _ = ctx;
}

/// The test builds' `pause-after-secret-write[=<duration>]` failpoint: the Secret is written,
/// the status is not (bare: for ever).
async fn pause_after_secret_write(ctx: &Context, app: &OAuthApp) {
    #[cfg(feature = "failpoints")]
    if let Some(pause) = ctx
        .failpoint
        .as_deref()
        .and_then(|f| f.strip_prefix("pause-after-secret-write"))
    {
        tracing::warn!(app = %app_key(app), "failpoint pause-after-secret-write: the Secret is written, the status is not");
        match pause.strip_prefix('=').and_then(status::parse_interval) {
            Some(d) => tokio::time::sleep(std::time::Duration::try_from(d).unwrap_or_default()).await,
            None => std::future::pending::<()>().await,
        }
    }
    #[cfg(not(feature = "failpoints"))]
    let _ = (ctx, app);
}

/// Step 7: says what happened: the log line, the audit Event (in the background: an API caller
/// waits for the answer, not for the Event) and, when a previous secret was retired early,
/// an Event for that.
fn tell(ctx: &Context, app: &OAuthApp, planned: &Planned<'_>, built: &Built, secret_name: &str) {
    let record = &built.record;
    info!(
        app = %app_key(app),
        trigger = planned.trigger.as_str(),
        rotation_id = %record.rotation_id,
        hint = %record.hint,
        detail = planned.detail.unwrap_or("-"),
        "rotated client secret"
    );
    for (type_, reason, note) in events(planned, built, secret_name) {
        publish_in_background(ctx, app, type_, reason, note);
    }
}

/// The Events a rotation publishes: its own, and one for a previous secret it retired early.
fn events(planned: &Planned<'_>, built: &Built, secret_name: &str) -> Vec<(EventType, &'static str, String)> {
    let trigger = planned.trigger;
    let caller = planned.detail;
    let (type_, reason) = match trigger {
        RotationTrigger::Created => (EventType::Normal, "SecretCreated"),
        RotationTrigger::Annotation | RotationTrigger::Api | RotationTrigger::Schedule => {
            (EventType::Normal, "SecretRotated")
        }
        RotationTrigger::SecretMissing | RotationTrigger::SecretDrift => {
            (EventType::Warning, "SecretRepaired")
        }
    };
    let cause = match trigger {
        RotationTrigger::Created => "first secret of a new app".to_string(),
        RotationTrigger::Annotation => {
            format!("new value of annotation {}", crate::model::crd::ROTATE_ANNOTATION)
        }
        RotationTrigger::Api => format!("REST API request by {}", caller.unwrap_or("an unknown caller")),
        RotationTrigger::Schedule => "spec.rotation.interval elapsed".to_string(),
        RotationTrigger::SecretMissing => format!("Secret {secret_name} was deleted"),
        RotationTrigger::SecretDrift => format!(
            "Secret {secret_name}: {}",
            caller.unwrap_or(record::Drift::Mismatch.describe())
        ),
    };
    let mut events = vec![(
        type_,
        reason,
        format!(
            "Generated a new client secret ({}), trigger {}: {cause}",
            built.record.hint,
            trigger.as_str()
        ),
    )];
    if let Some(dropped) = &built.dropped {
        let why = match &built.record.previous {
            Some(_) => "a new rotation within the grace period replaced it (at most two secrets are valid)",
            None => "the rotation invalidated every earlier secret",
        };
        events.push((
            EventType::Normal,
            "PreviousSecretRevoked",
            format!(
                "Previous secret {} retired before its expiry {}: {why}",
                dropped.hint, dropped.expires_at
            ),
        ));
    }
    events
}

/// Retires the previous secret before its expiry (`oauthapp.io/revoke-previous`, or `DELETE
/// .../previous-secret`): the Secret's record is rewritten without it, then the status. The
/// current secret stays. The caller holds the app's lock and passes fresh reads; both writes
/// are conditional. Ok(false) when there was no valid previous secret.
pub async fn revoke_previous(ctx: &Context, app: &OAuthApp, secret: Secret) -> Result<bool, Error> {
    let now = Timestamp::now();
    let key = ctx.record_key()?;
    if !matches!(
        record::verdict(app, &secret.metadata, &key, ctx.hasher.trusted(), now),
        Verdict::Signed
    ) {
        return Err(Error::Conflict(app_key(app)));
    }
    let uid = app.metadata.uid.clone().unwrap_or_default();
    let Some(mut rec) = Record::from_annotations(&uid, "", &secret.metadata) else {
        return Err(Error::Conflict(app_key(app)));
    };
    identify(ctx, app, &mut rec, &key, Some(&secret.metadata))?;
    let Some(retired) = rec.previous.take().filter(|p| p.valid_at(now)) else {
        return Ok(false);
    };
    // The identity provider first: once this answers, the previous secret works nowhere.
    if let Some(current) = secret
        .data
        .as_ref()
        .and_then(|d| d.get(CLIENT_SECRET_KEY))
        .and_then(|b| std::str::from_utf8(&b.0).ok())
    {
        crate::provider::sync::push_revocation(ctx, app, current).await?;
    }
    let ns = app.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let replaced = secret.resource_version().unwrap_or_default();
    let mut object = secret;
    object.metadata.managed_fields = None;
    let ann = object.metadata.annotations.get_or_insert_with(BTreeMap::new);
    ann.retain(|k, _| !Record::KEYS.contains(&k.as_str()));
    ann.extend(rec.to_annotations(&key));
    let name = object.name_any();
    ctx.leadership.check()?;
    let written = secrets
        .replace(&name, &post_params(), &object)
        .await
        .map_err(|e| secret_write_error(app, &name, e))?;
    drop(object);
    ctx.metrics.writes.inc();
    ctx.own_writes.put(format!("Secret {ns}/{name}"), &replaced);
    if let Some(rv) = written.resource_version() {
        ctx.verified.put(
            &format!("{ns}/{name}"),
            &rv,
            &rec.hash,
            crate::runtime::context::content_digest(written.data.as_ref()),
            ContentCheck {
                secret_ok: true,
                client_id_ok: true,
            },
        );
    }
    let app = write_status_for_secret(ctx, app, &written, &rec.rotation_id).await?;
    info!(app = %app_key(&app), retired = %retired.rotation_id, "previous client secret retired before its expiry");
    publish_in_background(
        ctx,
        &app,
        EventType::Normal,
        "PreviousSecretRevoked",
        format!(
            "Previous secret {} retired before its expiry {}, on request",
            retired.hint, retired.expires_at
        ),
    );
    Ok(true)
}

/// Writes the status that describes `secret` (which carries `rotation_id`), retrying on
/// conflicts while the Secret still holds that rotation; fails with [`Error::Conflict`] once
/// another rotation has replaced it.
async fn write_status_for_secret(
    ctx: &Context,
    app: &OAuthApp,
    secret: &Secret,
    rotation_id: &str,
) -> Result<OAuthApp, Error> {
    let ns = app.namespace().unwrap_or_default();
    let apps: Api<OAuthApp> = Api::namespaced(ctx.client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let mut app = app.clone();
    for _ in 0..STATUS_WRITE_ATTEMPTS {
        // Always the Secret as written: its content is the one known to be good. A later version
        // (someone changed the Secret meanwhile) is left for the planner to verify.
        // The Secret as written by this process: its app id is the one kept.
        let kept = secret.annotations().get(annotations::APP_ID).cloned();
        let status = status::status_from_secret(&app, &secret.metadata, kept.as_deref(), Timestamp::now());
        match write_status(ctx, &app, status).await {
            Ok(written) => return Ok(written),
            Err(e) if e.is_conflict() => {}
            Err(e) => return Err(e),
        }
        // Someone else changed the app meanwhile: re-read both, and go on only while the
        // Secret still holds this rotation.
        app = apps
            .get_opt(&app.name_any())
            .await?
            .ok_or_else(|| Error::NotFound(app_key(&app)))?;
        let Some(fresh) = secrets.get_opt(&secret.name_any()).await? else {
            return Err(Error::Conflict(app_key(&app)));
        };
        if fresh
            .annotations()
            .get(annotations::ROTATION_ID)
            .map(String::as_str)
            != Some(rotation_id)
        {
            return Err(Error::Conflict(app_key(&app)));
        }
        let recorded = app
            .status
            .as_ref()
            .and_then(|s| s.secret_resource_version.as_deref());
        if app.status.as_ref().and_then(|s| s.rotation_id.as_deref()) == Some(rotation_id)
            && recorded.is_some()
            && (recorded == fresh.metadata.resource_version.as_deref()
                || recorded == secret.metadata.resource_version.as_deref())
        {
            // Another replica completed the status from our Secret already.
            return Ok(app);
        }
    }
    Err(Error::Conflict(app_key(&app)))
}

/// A failed write of the app's Secret: a 422 (the API server finds it invalid, so the spec asks
/// for something a Secret cannot hold) is [`Error::SecretRejected`]; otherwise as [`write_error`].
fn secret_write_error(app: &OAuthApp, secret: &str, e: kube::Error) -> Error {
    match &e {
        kube::Error::Api(status) if status.code == 422 => Error::SecretRejected {
            secret: secret.to_string(),
            message: crate::runtime::error::redact(&status.message),
        },
        _ => write_error(app, e),
    }
}

/// Brings the Secret's labels, annotations and `client_id` in line with the app, keeping the
/// secret itself (conditional on the Secret's resourceVersion).
pub async fn sync_secret(ctx: &Context, app: &OAuthApp, mut secret: Secret) -> Result<Secret, Error> {
    let ns = app.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let key = ctx.record_key()?;
    let kept = record::kept_app_id(app, Some(&secret.metadata), &key);
    let to_sign = record_to_sign(ctx, app, &secret.metadata, &key)?;
    apply_desired_metadata(app, &mut secret.metadata);
    if let Some((record, why)) = to_sign {
        // It replaces every record annotation (none may linger outside the signature).
        let ann = secret.metadata.annotations.get_or_insert_with(BTreeMap::new);
        ann.retain(|k, _| !Record::KEYS.contains(&k.as_str()));
        ann.extend(record.to_annotations(&key));
        info!(app = %app_key(app), key = key.signing_id(), "signed the Secret's rotation record ({why})");
    }
    let client_id = app
        .spec
        .client_id
        .clone()
        .or(kept)
        .ok_or_else(|| Error::MissingUid(app.name_any()))?;
    secret
        .data
        .get_or_insert_with(BTreeMap::new)
        .insert(CLIENT_ID_KEY.into(), ByteString(client_id.into_bytes()));
    let hash = secret
        .annotations()
        .get(annotations::HASH)
        .cloned()
        .unwrap_or_default();
    let replaced = secret.resource_version().unwrap_or_default();
    ctx.leadership.check()?;
    let written = secrets
        .replace(&secret.name_any(), &post_params(), &secret)
        .await
        .map_err(|e| secret_write_error(app, &secret.name_any(), e))?;
    ctx.metrics.writes.inc();
    ctx.own_writes
        .put(format!("Secret {ns}/{}", written.name_any()), &replaced);
    if let Some(rv) = written.resource_version() {
        // The content was checked before this write and the write kept it.
        ctx.verified.put(
            &format!("{ns}/{}", written.name_any()),
            &rv,
            &hash,
            crate::runtime::context::content_digest(written.data.as_ref()),
            ContentCheck {
                secret_ok: true,
                client_id_ok: true,
            },
        );
    }
    info!(app = %app_key(app), secret = %written.name_any(), "synced Secret labels, annotations and client_id");
    Ok(written)
}

/// This installation, as records name it (None when unnamed: a test's bare context).
fn installation(ctx: &Context) -> Option<String> {
    (!ctx.installation.is_empty()).then(|| ctx.installation.clone())
}

/// Binds `record` to `app` as it is now: its uid, namespace, name, kept id, client id and this
/// installation.
fn identify(
    ctx: &Context,
    app: &OAuthApp,
    record: &mut Record,
    key: &RecordKey,
    meta: Option<&ObjectMeta>,
) -> Result<(), Error> {
    let app_id = adopted_or_kept_id(app, meta, key).ok_or_else(|| Error::MissingUid(app.name_any()))?;
    record.app_uid = app
        .metadata
        .uid
        .clone()
        .ok_or_else(|| Error::MissingUid(app.name_any()))?;
    record.client_id = app.spec.client_id.clone().unwrap_or_else(|| app_id.clone());
    record.namespace = app.namespace().unwrap_or_default();
    record.app_name = Some(app.name_any());
    record.app_id = Some(app_id);
    record.installation = installation(ctx);
    Ok(())
}

/// The kept id ([`record::kept_app_id`]), or for a Secret a person accepted as it is
/// (`oauthapp.io/accept-secret`, no key to prove it) the id its record names.
fn adopted_or_kept_id(app: &OAuthApp, meta: Option<&ObjectMeta>, key: &RecordKey) -> Option<String> {
    let accepted = meta
        .and_then(|m| Record::from_annotations("", "", m))
        .filter(|r| record::verdict_is_accepted(app, Some(r)))
        .and_then(|r| r.app_id)
        .filter(|id| crate::model::id::decode(id).is_ok());
    record::status_app_id(app)
        .or(accepted)
        .or_else(|| record::kept_app_id(app, meta, key))
}

/// The record a Secret sync signs with the ring's newest key, bound to the app as it is now, if
/// the Secret does not carry exactly that already, and why. The planner has verified the
/// content first in every case.
fn record_to_sign(
    ctx: &Context,
    app: &OAuthApp,
    meta: &ObjectMeta,
    key: &RecordKey,
) -> Result<Option<(Record, &'static str)>, Error> {
    let uid = app.metadata.uid.clone().unwrap_or_default();
    let retired = ctx
        .ledger
        .get(&app.namespace().unwrap_or_default(), &app.name_any());
    let verdict = record::judge(
        app,
        meta,
        key,
        ctx.hasher.trusted(),
        Timestamp::now(),
        retired.as_ref(),
    );
    let (base, why) = match verdict {
        // Believed: the same record, bound to this app, by the newest key.
        Verdict::Signed => (
            Record::from_annotations(&uid, "", meta),
            "re-signed with the newest key",
        ),
        Verdict::Adopt
            if record::verdict_is_accepted(app, Record::from_annotations("", "", meta).as_ref()) =>
        {
            (
                Record::from_annotations(&uid, "", meta),
                "accepted with oauthapp.io/accept-secret",
            )
        }
        Verdict::Adopt => (
            Record::from_annotations(&uid, "", meta),
            "adopted: its record is the operator's, for an earlier app of this name",
        ),
        // Accepted by a person for this rotation: the record as it is.
        Verdict::Accepted => (
            Record::from_annotations(&uid, "", meta),
            "accepted with oauthapp.io/accept-secret",
        ),
        // Unsigned (from before signatures) or by a key the operator does not hold, and shown
        // by the status: signed from the status, which only the operator writes, so that
        // nothing a Secret writer added is signed.
        Verdict::Legacy => (
            record::record_from_status(app),
            "its record was unsigned, or signed by a key this operator does not hold",
        ),
        _ => (None, ""),
    };
    let Some(mut record) = base else {
        return Ok(None);
    };
    identify(ctx, app, &mut record, key, Some(meta))?;
    let want = record.to_annotations(key);
    let have = meta.annotations.clone().unwrap_or_default();
    let same = Record::KEYS.iter().all(|k| want.get(*k) == have.get(*k));
    Ok((!same).then_some((record, why)))
}

/// Adopts the app's Secret from before a restore or a re-creation ([`Verdict::Adopt`], its
/// content verified by the planner): its ownerReference is set (as `spec.secret.deletionPolicy`
/// asks), its record re-signed for this app, then the status rebuilt from it, the kept app id
/// with it. No new secret. Both writes are conditional.
pub async fn adopt(ctx: &Context, app: &OAuthApp, secret: Secret) -> Result<(), Error> {
    let rotation_id = secret
        .annotations()
        .get(annotations::ROTATION_ID)
        .cloned()
        .unwrap_or_default();
    let written = sync_secret(ctx, app, secret).await?;
    let app = write_status_for_secret(ctx, app, &written, &rotation_id).await?;
    let status = app.status.clone().unwrap_or_default();
    info!(
        app = %app_key(&app),
        app_id = status.app_id.as_deref().unwrap_or("-"),
        rotation_id = %rotation_id,
        "adopted the app's Secret from before its restore or re-creation; no new secret"
    );
    publish_in_background(
        ctx,
        &app,
        EventType::Normal,
        "SecretAdopted",
        format!(
            "Adopted Secret {} (app id {}, rotation {rotation_id}, {} rotations so far): its record is the operator's, for \
             an earlier app of this name; no new secret",
            written.name_any(),
            status.app_id.as_deref().unwrap_or("-"),
            status.rotation_count,
        ),
    );
    Ok(())
}

/// Checks the Secret's `client_secret` against its own hash annotation and its `client_id`
/// against the app's (argon2: off the executor), and remembers the answer for this version.
pub async fn check_content(ctx: &Context, app: &OAuthApp, secret: &Secret) -> Result<ContentCheck, Error> {
    let key = format!("{}/{}", secret.namespace().unwrap_or_default(), secret.name_any());
    let hash = secret
        .annotations()
        .get(annotations::HASH)
        .cloned()
        .unwrap_or_default();
    let rv = secret.resource_version().unwrap_or_default();
    if let Some(check) = ctx.verified.get(&key, &rv, &hash) {
        return Ok(check);
    }
    // A new version whose data is what was checked (a label or annotation changed): no hash.
    let content = crate::runtime::context::content_digest(secret.data.as_ref());
    if let Some(check) = ctx.verified.get_same_content(&key, &rv, &hash, &content) {
        return Ok(check);
    }
    let data = secret.data.clone().unwrap_or_default();
    let plaintext = data
        .get(CLIENT_SECRET_KEY)
        .and_then(|b| String::from_utf8(b.0.clone()).ok())
        .unwrap_or_default();
    let key_ring = ctx.record_key()?;
    let expected = app
        .spec
        .client_id
        .clone()
        .or_else(|| adopted_or_kept_id(app, Some(&secret.metadata), &key_ring));
    let client_id_ok =
        data.get(CLIENT_ID_KEY).map(|b| b.0.as_slice()) == expected.as_deref().map(str::as_bytes);

    let tenant = app.namespace().unwrap_or_default();
    let secret_ok = ctx.hasher.verify(&tenant, plaintext, hash.clone()).await?;
    ctx.metrics.content_checks.inc();
    let check = ContentCheck {
        secret_ok,
        client_id_ok,
    };
    ctx.verified.put(&key, &rv, &hash, content, check);
    Ok(check)
}

/// A new Secret for `app`, owned by it (deleting the app garbage-collects the Secret).
fn new_secret(app: &OAuthApp) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(app.secret_name()),
            namespace: app.namespace(),
            owner_references: app.controller_owner_ref(&()).map(|r| vec![r]),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Sets the desired labels and annotations, drops those the spec dropped; leaves what others added.
fn apply_desired_metadata(app: &OAuthApp, meta: &mut ObjectMeta) {
    managed::apply_secret_metadata(app, meta);
    meta.managed_fields = None;
}

/// How long an API caller waits for a rotation already running on the same app in this
/// process before the request is answered 409.
pub const LOCK_WAIT: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::crd::OAuthAppSpec;

    fn app() -> OAuthApp {
        let mut app = OAuthApp::new("demo", OAuthAppSpec::default());
        app.metadata.namespace = Some("team-a".into());
        app.metadata.uid = Some("ffffffff-ffff-ffff-ffff-ffffffffffff".into());
        app
    }

    fn decided(key: &RecordKey, judged: Option<Verdict>, retired: Option<record::Retired>) -> Decided {
        Decided {
            key: key.clone(),
            retired,
            judged,
            app_id: "app_demo".into(),
            client_id: "app_demo".into(),
        }
    }

    fn fresh(id: &str, now: Timestamp) -> Fresh {
        Fresh {
            uid: "ffffffff-ffff-ffff-ffff-ffffffffffff".into(),
            installation: None,
            rotation_id: id.into(),
            hint: format!("oas_{id}...hint"),
            hash: format!("$argon2id$hash-of-{id}"),
            now,
        }
    }

    fn planned(trigger: RotationTrigger, grace: Option<jiff::SignedDuration>) -> Planned<'static> {
        Planned {
            trigger,
            detail: Some("alice"),
            grace,
        }
    }

    fn meta_of(built: &Built, key: &RecordKey) -> ObjectMeta {
        ObjectMeta {
            name: Some("demo-oauth-client".into()),
            annotations: Some(built.record.to_annotations(key)),
            ..Default::default()
        }
    }

    #[test]
    fn a_record_counts_on_keeps_the_replaced_secret_through_a_grace_period_and_drops_a_third() {
        let key = RecordKey::generate().expect("key");
        let app = app();
        let t0: Timestamp = "2026-12-01T10:00:00Z".parse().expect("time");
        let hour = jiff::SignedDuration::from_hours(1);
        // The first secret: counted on from what the ledger remembers of the name.
        let first = new_record(
            &app,
            None,
            &decided(
                &key,
                None,
                Some(record::Retired {
                    count: 6,
                    rotation_id: "old".into(),
                }),
            ),
            &planned(RotationTrigger::Created, None),
            fresh("r1", t0),
        );
        assert_eq!(first.record.count, 7);
        assert_eq!(first.record.previous, None);
        assert!(first.dropped.is_none());
        // A rotation with a grace period keeps the replaced secret as the previous one.
        let current = meta_of(&first, &key);
        let second = new_record(
            &app,
            Some(&current),
            &decided(&key, Some(Verdict::Signed), None),
            &planned(RotationTrigger::Api, Some(hour)),
            fresh("r2", t0 + jiff::SignedDuration::from_mins(5)),
        );
        assert_eq!(second.record.count, 8);
        let previous = second.record.previous.clone().expect("previous");
        assert_eq!(previous.rotation_id, "r1");
        assert_eq!(previous.hash, first.record.hash);
        assert_eq!(
            previous.expires_at,
            (t0 + jiff::SignedDuration::from_mins(65)).to_string()
        );
        let history = Record::from_annotations("", "", &meta_of(&second, &key))
            .expect("record")
            .history
            .expect("a history");
        assert!(
            history.find("r2").expect("r2") < history.find("r1").expect("r1"),
            "newest first: {history}"
        );
        assert!(
            history.contains("alice"),
            "an API rotation names its caller: {history}"
        );
        // A third within that grace period drops the second's previous secret early, and says so.
        let current = meta_of(&second, &key);
        let third = new_record(
            &app,
            Some(&current),
            &decided(&key, Some(Verdict::Signed), None),
            &planned(RotationTrigger::Annotation, Some(hour)),
            fresh("r3", t0 + jiff::SignedDuration::from_mins(10)),
        );
        assert_eq!(third.dropped.as_ref().map(|p| p.rotation_id.as_str()), Some("r1"));
        assert_eq!(
            third.record.previous.as_ref().map(|p| p.rotation_id.as_str()),
            Some("r2")
        );
        let events = events(
            &planned(RotationTrigger::Annotation, Some(hour)),
            &third,
            "demo-oauth-client",
        );
        let reasons: Vec<&str> = events.iter().map(|(_, reason, _)| *reason).collect();
        assert_eq!(reasons, ["SecretRotated", "PreviousSecretRevoked"]);
        assert!(events[1].2.contains("oas_r1...hint"), "{}", events[1].2);
    }

    #[test]
    fn a_record_the_operator_did_not_write_counts_for_nothing() {
        let key = RecordKey::generate().expect("key");
        let app = app();
        let t0: Timestamp = "2026-12-01T10:00:00Z".parse().expect("time");
        let theirs = new_record(
            &app,
            None,
            &decided(
                &key,
                None,
                Some(record::Retired {
                    count: 41,
                    rotation_id: "x".into(),
                }),
            ),
            &planned(RotationTrigger::Created, None),
            fresh("r1", t0),
        );
        let current = meta_of(&theirs, &key);
        // Judged drift: neither its count nor its secret carries over, whatever the grace.
        let repaired = new_record(
            &app,
            Some(&current),
            &decided(&key, Some(Verdict::Drift(record::Drift::Mismatch)), None),
            &planned(
                RotationTrigger::SecretDrift,
                Some(jiff::SignedDuration::from_hours(1)),
            ),
            fresh("r2", t0),
        );
        assert_eq!(repaired.record.count, 1);
        assert_eq!(repaired.record.previous, None);
        let events = events(
            &planned(RotationTrigger::SecretDrift, None),
            &repaired,
            "demo-oauth-client",
        );
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].0, EventType::Warning);
        assert_eq!(events[0].1, "SecretRepaired");
        assert!(
            events[0].2.contains("Secret demo-oauth-client: alice"),
            "{}",
            events[0].2
        );
    }
}
