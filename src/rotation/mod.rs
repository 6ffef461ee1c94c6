//! The one `rotate()` that every trigger uses (annotation, REST API, schedule, self-repair), and
//! the other writes of the reconcile loop. Write order and preconditions (DESIGN.md, invariant 1):
//! the Secret first, then the status, each with the resourceVersion it was read at; a conflict
//! is re-read, never overwritten.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::ObjectMeta;
use kube::runtime::events::EventType;
use kube::{Api, Resource, ResourceExt};
use tracing::{info, warn};

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

async fn rotate_inner(
    ctx: &Context,
    app: &OAuthApp,
    current: Option<ObjectMeta>,
    planned: Planned<'_>,
    generated: Option<(ClientSecret, String)>,
    commit: impl FnOnce() -> bool,
    secret_written: impl FnOnce(),
) -> Result<Rotated, Error> {
    let Planned {
        trigger,
        detail: caller,
        grace,
    } = planned;
    let ns = app.namespace().unwrap_or_default();
    let name = app.name_any();
    if let Some(installation) = status::managed_elsewhere(&ctx.installation, app, current.as_ref()) {
        return Err(Error::ManagedElsewhere {
            app: name,
            installation,
        });
    }
    let key = ctx.record_key()?;
    let retired = ctx.ledger.get(&ns, &name);
    let judged = current.as_ref().map(|meta| {
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
    if let Some(meta) = &current
        && (judged == Some(Verdict::NotOurs)
            || (judged == Some(Verdict::Adopt) && trigger == RotationTrigger::Created))
    {
        return Err(Error::SecretConflict {
            secret: meta.name.clone().unwrap_or_default(),
            app: name,
        });
    }
    // The id is made once: kept from the status, or proven by the Secret's record.
    let app_id =
        record::kept_app_id(app, current.as_ref(), &key).ok_or_else(|| Error::MissingUid(name.clone()))?;
    let client_id = app.spec.client_id.clone().unwrap_or_else(|| app_id.clone());
    // A Secret ahead of the status holds a rotation whose status write has not landed: another
    // replica is between its two writes (or crashed there; the controller completes the status).
    // Replacing that secret now could let the other writer's status write land afterwards and
    // confirm a secret that is no longer in the Secret (invariant 7), so a requested rotation
    // waits for the status instead. Repairs (a missing or altered secret) go ahead.
    if let Some(meta) = &current
        && matches!(
            trigger,
            RotationTrigger::Api | RotationTrigger::Annotation | RotationTrigger::Schedule
        )
        && status::secret_ahead_of_status(app, meta)
    {
        return Err(Error::StaleView(app_key(app)));
    }

    let (secret, hash) = match generated {
        Some(generated) => generated,
        None => ctx.hasher.generate(&app.namespace().unwrap_or_default()).await?,
    };
    let hint = secret.hint();
    let rotation_id = uuid::Uuid::from_u128(rand::random()).simple().to_string();
    // Whole seconds, as the API server stores times (see status::status_from_secret).
    let now = Timestamp::from_second(Timestamp::now().as_second()).unwrap_or_else(|_| Timestamp::now());
    // What the replaced Secret says counts only when the operator wrote it.
    let believed = current.as_ref().filter(|_| {
        matches!(
            judged,
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
        .max(retired.as_ref().map_or(0, |r| r.count));
    // With a grace period, the replaced secret stays valid until now + grace; a previous secret
    // it still carried is dropped (at most two are valid).
    let dropped = replaced
        .as_ref()
        .and_then(|r| r.previous.clone())
        .filter(|p| p.valid_at(now));
    let previous = grace.zip(replaced.as_ref()).map(|(grace, r)| record::Previous {
        rotation_id: r.rotation_id.clone(),
        hash: r.hash.clone(),
        hint: r.hint.clone(),
        expires_at: (now + grace).to_string(),
    });
    let uid = app
        .metadata
        .uid
        .clone()
        .ok_or_else(|| Error::MissingUid(name.clone()))?;
    let newest = RotationHistoryEntry {
        rotation_id: rotation_id.clone(),
        hint: hint.clone(),
        trigger,
        time: Time(now),
        username: caller
            .filter(|_| trigger == RotationTrigger::Api)
            .map(str::to_string),
    };
    let history = status::history_after(app, newest, replaced.as_ref());
    let record = Record {
        app_uid: uid,
        client_id: client_id.clone(),
        namespace: ns.clone(),
        app_name: Some(name.clone()),
        app_id: Some(app_id.clone()),
        installation: installation(ctx),
        rotation_id: rotation_id.clone(),
        hash: hash.clone(),
        hint: hint.clone(),
        rotated_at: now.to_string(),
        count: previous_count.saturating_add(1),
        trigger: trigger.as_str().to_string(),
        // Any new secret satisfies a pending rotate request: record the current annotation
        // value (or keep the last one recorded, so that value never rotates again).
        observed_rotate_token: status::observed_rotate_token(app, believed),
        previous: previous.clone(),
        history: Record::history_value(&history),
    };
    let ours = record.to_annotations(&key);

    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    // A cached copy without the Secret's other labels and annotations: the write starts from a
    // fresh read of the same version, so that it keeps them.
    let current = match current {
        Some(meta) if crate::runtime::watches::is_trimmed(&meta) => {
            let name = meta.name.clone().unwrap_or_default();
            match secrets.get_metadata_opt(&name).await.map_err(Error::Kube)? {
                Some(fresh) if fresh.metadata.resource_version == meta.resource_version => {
                    Some(fresh.metadata)
                }
                _ => return Err(Error::StaleView(app_key(app))),
            }
        }
        current => current,
    };
    let existed = current.is_some();
    let replaced = current
        .as_ref()
        .and_then(|meta| meta.resource_version.clone())
        .unwrap_or_default();
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
    ann.extend(ours);
    object.data = Some(BTreeMap::from([
        (CLIENT_ID_KEY.to_string(), ByteString(client_id.into_bytes())),
        (
            CLIENT_SECRET_KEY.to_string(),
            ByteString(secret.expose().as_bytes().to_vec()),
        ),
    ]));
    object.string_data = None;
    object.type_ = Some("Opaque".into());
    let secret_name = object.name_any();
    #[cfg(feature = "failpoints")]
    if let Some(d) = ctx
        .failpoint
        .as_deref()
        .and_then(|f| f.strip_prefix("pause-before-secret-write="))
    {
        let d = crate::model::status::parse_interval(d).and_then(|d| std::time::Duration::try_from(d).ok());
        tokio::time::sleep(d.unwrap_or_default()).await;
    }
    if !commit() {
        return Err(Error::Internal(format!(
            "the rotation of {} was abandoned before its Secret write",
            app_key(app)
        )));
    }
    // The app's identity provider gets the new secret before the Secret does (src/provider):
    // it accepts it as soon as anyone can read it. A failure there fails the rotation here,
    // with nothing written.
    let grace_expiry = previous
        .as_ref()
        .zip(grace)
        .map(|(p, g)| (p.rotation_id.as_str(), now + g));
    let pushed = crate::provider::sync::push_rotation(
        ctx,
        app,
        &record.client_id,
        &secret,
        &rotation_id,
        grace_expiry,
    )
    .await?;
    let app = pushed.as_ref().unwrap_or(app);
    ctx.leadership.check()?;
    let written = if existed {
        secrets.replace(&secret_name, &post_params(), &object).await
    } else {
        secrets.create(&post_params(), &object).await
    };
    // The Secret object holds the plaintext: drop our copy as soon as it is written.
    drop(object);
    let written = written.map_err(|e| match secret_write_error(app, &secret_name, e) {
        // The Secret changed since it was read, or one was created meanwhile: nothing is written.
        Error::Conflict(key) => Error::StaleView(key),
        e => e,
    })?;
    ctx.metrics.writes.inc();
    secret_written();
    let secret_key = format!("{ns}/{}", written.name_any());
    ctx.own_writes.put(format!("Secret {secret_key}"), &replaced);
    if let Some(rv) = written.resource_version() {
        ctx.verified.put(
            &secret_key,
            &rv,
            &hash,
            crate::runtime::context::content_digest(written.data.as_ref()),
            ContentCheck {
                secret_ok: true,
                client_id_ok: true,
            },
        );
    }

    #[cfg(feature = "failpoints")]
    if let Some(pause) = ctx
        .failpoint
        .as_deref()
        .and_then(|f| f.strip_prefix("pause-after-secret-write"))
    {
        warn!(app = %app_key(app), "failpoint pause-after-secret-write: the Secret is written, the status is not");
        // `=<duration>` pauses that long; bare, for ever.
        match pause
            .strip_prefix('=')
            .and_then(crate::model::status::parse_interval)
        {
            Some(d) => tokio::time::sleep(std::time::Duration::try_from(d).unwrap_or_default()).await,
            None => std::future::pending::<()>().await,
        }
    }

    let app = match write_status_for_secret(ctx, app, &written, &rotation_id).await {
        Ok(app) => app,
        // Someone replaced the Secret after this write: the new secret is no longer in it.
        Err(e) if e.is_conflict() => return Err(e),
        Err(e) => {
            return Err(Error::StatusPending {
                app: app_key(app),
                source: Box::new(e),
                written: Box::new(Written(Rotated {
                    secret,
                    hint,
                    rotation_id,
                    app: app.clone(),
                })),
            });
        }
    };
    info!(
        app = %app_key(&app),
        trigger = trigger.as_str(),
        rotation_id = %rotation_id,
        hint = %hint,
        detail = caller.unwrap_or("-"),
        "rotated client secret"
    );
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
        RotationTrigger::SecretMissing => format!("Secret {} was deleted", written.name_any()),
        RotationTrigger::SecretDrift => format!(
            "Secret {}: {}",
            written.name_any(),
            caller.unwrap_or(record::Drift::Mismatch.describe())
        ),
    };
    // The answer (an API caller waits for it) does not wait for the audit Event: one API
    // round-trip less per rotation.
    publish_in_background(
        ctx,
        &app,
        type_,
        reason,
        format!(
            "Generated a new client secret ({hint}), trigger {}: {cause}",
            trigger.as_str()
        ),
    );
    if let Some(dropped) = dropped {
        let why = match &previous {
            Some(_) => "a new rotation within the grace period replaced it (at most two secrets are valid)",
            None => "the rotation invalidated every earlier secret",
        };
        publish_in_background(
            ctx,
            &app,
            EventType::Normal,
            "PreviousSecretRevoked",
            format!(
                "Previous secret {} retired before its expiry {}: {why}",
                dropped.hint, dropped.expires_at
            ),
        );
    }
    Ok(Rotated {
        secret,
        hint,
        rotation_id,
        app,
    })
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
