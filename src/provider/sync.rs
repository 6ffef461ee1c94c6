//! An app with `spec.providerRef`, kept registered at its provider: the rotation's push (before
//! the Secret write) and the reconcile-time check that converges the provider to the Secret.

use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::runtime::events::EventType;
use kube::{Api, Client, ResourceExt};
use tracing::{info, warn};

use super::keycloak::Keycloak;
use super::{DesiredClient, Grace, Holds, IdentityProvider, Previous, ProviderError, Pushed, Put};
use crate::model::crd::{CLIENT_SECRET_KEY, OAuthApp};
use crate::model::provider::OAuthProvider;
use crate::model::record::annotations;
use crate::model::secret::ClientSecret;
use crate::runtime::context::Context;
use crate::runtime::error::Error;
use crate::runtime::providers::CHECK_INTERVAL;
use crate::runtime::providers::{Checked, State};
use crate::runtime::writes::{self, app_key};

use crate::model::status::{PROVIDER_SYNCED, SYNCED, SYNCED_WITHOUT_GRACE};
/// `ProviderSynced=True`: the provider holds the secret, but its realm has no client scope of
/// some of the app's `spec.scopes` (named in the message); the next check assigns them once they
/// exist.
pub const SYNCED_WITHOUT_SCOPES: &str = "SyncedWithoutScopes";
/// The Warning Event when an app's scopes are missing in its provider's realm.
pub const PROVIDER_SCOPES_MISSING: &str = "ProviderScopesMissing";
/// The words of a `ProviderSynced` message that say the previous secret was not kept.
const NO_ROTATION_POLICY: &str = "the realm has no client policy with the secret-rotation executor";
/// The first retry after a failed check; doubling up to [`CHECK_INTERVAL`].
const FIRST_RETRY: Duration = Duration::from_secs(5);

/// After a provider was found unreachable, calls to it fail at once for this long: a provider
/// that hangs (each request up to its timeout) holds at most one controller worker at a time,
/// not one per app, and apps without a provider never wait for workers behind it.
const UNREACHABLE_HOLD: Duration = Duration::from_secs(10);

/// `call` on the provider `namespace/name`, unless it was found unreachable less than
/// [`UNREACHABLE_HOLD`] ago (then that error again, with no request).
pub(super) async fn guarded<T>(
    state: &State,
    namespace: &str,
    name: &str,
    call: impl Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    let key = format!("{namespace}/{name}");
    let now = Instant::now();
    let held = state
        .lock(now)
        .unreachable
        .get(&key)
        .filter(|(until, _, _)| now < *until)
        .map(|(_, url, detail)| (url.clone(), detail.clone()));
    // The same error, word for word: a condition message that changed with every look would
    // write the status, and so bring the app back at once, on every look.
    if let Some((url, detail)) = held {
        return Err(ProviderError::Unreachable { url, detail }.into());
    }
    let result = call.await;
    let now = Instant::now();
    let mut inner = state.lock(now);
    match &result {
        Err(Error::Provider(ProviderError::Unreachable { url, detail })) => {
            inner
                .unreachable
                .insert(key, (now + UNREACHABLE_HOLD, url.clone(), detail.clone()));
        }
        _ => {
            inner.unreachable.remove(&key);
        }
    }
    result
}

impl State {
    /// Whether calls to the provider `namespace/name` are held (it was found unreachable less
    /// than [`UNREACHABLE_HOLD`] ago).
    fn held(&self, namespace: &str, name: &str) -> bool {
        let now = Instant::now();
        self.lock(now)
            .unreachable
            .get(&format!("{namespace}/{name}"))
            .is_some_and(|(until, _, _)| now < *until)
    }
}

/// When to retry a rotation of `app` that failed at its provider: 5 s after the first failure,
/// doubling up to 5 min, so that a provider that is down costs no new secret (and hash) per app
/// every few seconds. A new request (a new annotation value) still runs at once.
/// `key`: the app's `namespace/name`.
pub fn retry_after_push_failure(ctx: &Context, key: &str) -> Duration {
    let failures = ctx
        .providers
        .lock(Instant::now())
        .push_failures
        .get(key)
        .map(|(n, _)| *n)
        .unwrap_or(1);
    retry_after(failures)
}

/// The provider an app names, connected with its credentials (read from the provider's Secret).
pub async fn connect(client: &Client, namespace: &str, name: &str) -> Result<Keycloak, Error> {
    let providers: Api<OAuthProvider> = Api::namespaced(client.clone(), namespace);
    let provider = providers
        .get_opt(name)
        .await?
        .ok_or_else(|| ProviderError::NotFound(format!("{namespace}/{name}")))?;
    connect_to(client, &provider).await
}

/// `provider`, connected with its credentials.
pub async fn connect_to(client: &Client, provider: &OAuthProvider) -> Result<Keycloak, Error> {
    let namespace = provider.namespace().unwrap_or_default();
    let kc = &provider.spec.keycloak;
    let reference = &kc.credentials_secret_ref;
    let missing = |what: String| ProviderError::CredentialsMissing {
        provider: format!("{namespace}/{}", provider.name_any()),
        what,
    };
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let secret = secrets
        .get_opt(&reference.name)
        .await?
        .ok_or_else(|| missing(format!("Secret {} not found", reference.name)))?;
    let data = secret.data.unwrap_or_default();
    let value = |key: &str| {
        data.get(key)
            .and_then(|b| String::from_utf8(b.0.clone()).ok())
            .filter(|v| !v.is_empty())
            .ok_or_else(|| missing(format!("Secret {} has no key {key}", reference.name)))
    };
    let client_id = value(reference.client_id_key())?;
    let client_secret = value(reference.client_secret_key())?;
    Ok(Keycloak::new(
        &kc.url,
        &kc.realm,
        client_id,
        client_secret,
        kc.ca_bundle.as_deref(),
    )?)
}

/// The client `app` wants at its provider, with `client_id`.
pub fn desired(app: &OAuthApp, client_id: &str) -> DesiredClient {
    DesiredClient {
        client_id: client_id.to_string(),
        name: app.spec.display_name.clone(),
        redirect_uris: app.spec.redirect_uris.clone(),
        scopes: app.spec.scopes.clone(),
        owner: app_key(app),
        secret_name: app.secret_name(),
    }
}

/// The rotation's provider write, right before its Secret write: the provider gets `secret`
/// (and the replaced one until `grace`'s expiry: `(its rotation id, expiry)`). None when the app
/// has no provider. Some(app): the app with `ProviderSynced` set for the rotation, for the
/// status write that follows the Secret's (no write of its own). A failure writes
/// `ProviderSynced=False` (when it changes) and fails the rotation: nothing else is written.
pub async fn push_rotation(
    ctx: &Context,
    app: &OAuthApp,
    client_id: &str,
    secret: &ClientSecret,
    rotation_id: &str,
    grace: Option<(&str, Timestamp)>,
) -> Result<Option<OAuthApp>, Error> {
    let Some(reference) = &app.spec.provider_ref else {
        return Ok(None);
    };
    let ns = app.namespace().unwrap_or_default();
    let previous = match grace {
        Some((replaced, _)) => plaintext_of(ctx, app, replaced).await?,
        None => None,
    };
    let with_grace = grace.is_some() && previous.is_some();
    let previous = match grace.zip(previous.as_deref()) {
        Some(((_, expires), previous)) => Previous::Until(Grace {
            previous,
            expires_at: expires.as_second(),
        }),
        None => Previous::Drop,
    };
    // A failure without a request (the provider held) does not lengthen the backoff: only
    // attempts that reached for the provider count.
    let held = ctx.providers.held(&ns, &reference.name);
    let result = guarded(&ctx.providers, &ns, &reference.name, async {
        let provider = connect(&ctx.client, &ns, &reference.name).await?;
        ctx.leadership.check()?;
        Ok::<_, Error>(
            provider
                .put_client(&desired(app, client_id), secret.expose(), &previous)
                .await?,
        )
    })
    .await;
    let key = app_key(app);
    match result {
        Ok(pushed) => {
            info!(app = %key, provider = %reference.name, created = (pushed.put == Put::Created), "the identity provider holds the new secret");
            if let Some(e) = &pushed.scopes_failed {
                warn!(app = %key, provider = %reference.name, reason = e.reason(), error = %e, "the identity provider holds the new secret, but the app's scopes could not be set there; the next check sets them");
            }
            note_push(ctx, app, key, rotation_id, &pushed);
            // Tests: a crash between the provider write and the Secret write.
            #[cfg(feature = "failpoints")]
            if ctx.failpoint.as_deref() == Some("pause-after-provider-push") {
                warn!(app = %app_key(app), "failpoint pause-after-provider-push: the provider holds the new secret, the Secret does not");
                std::future::pending::<()>().await;
            }
            let grace_lost = with_grace && !pushed.grace_kept;
            Ok(Some(pushed_condition(
                ctx,
                app,
                &reference.name,
                rotation_id,
                grace_lost,
                &pushed,
            )))
        }
        Err(e) => {
            note_push_failure(ctx, key, held, &e);
            if let Error::Provider(pe) = &e {
                mark_unsynced(ctx, app, &reference.name, pe).await;
            }
            Err(e)
        }
    }
}

/// Remembers a push that reached the provider: no failures in a row, and the rotation in sync
/// there unless its scopes failed (then the app's next look checks it at once).
fn note_push(ctx: &Context, app: &OAuthApp, key: String, rotation_id: &str, pushed: &Pushed) {
    let now = Instant::now();
    let mut state = ctx.providers.lock(now);
    state.push_failures.remove(&key);
    if pushed.scopes_failed.is_some() {
        state.checked.remove(&key);
    } else {
        state.checked.insert(
            key,
            Checked {
                rotation_id: checked_version(rotation_id, app),
                at: now,
                failures: 0,
            },
        );
    }
}

/// The app with its `ProviderSynced` condition after a push (`grace_lost`: the rotation asked
/// for a grace period the provider did not keep): True, or False when the secret is there and
/// the scopes are not (the next check sets them).
fn pushed_condition(
    ctx: &Context,
    app: &OAuthApp,
    provider: &str,
    rotation_id: &str,
    grace_lost: bool,
    pushed: &Pushed,
) -> OAuthApp {
    let mut synced = app.clone();
    let status = synced.status.get_or_insert_with(Default::default);
    let (synced_status, reason, message) = match &pushed.scopes_failed {
        Some(e) => (
            "False",
            e.reason(),
            format!(
                "OAuthProvider {provider} holds the secret of rotation {rotation_id}, but the app's scopes could not be set: {e}"
            ),
        ),
        None => {
            let (reason, message) =
                synced_condition(provider, rotation_id, grace_lost, &pushed.missing_scopes);
            warn_missing_scopes(ctx, app, provider, &pushed.missing_scopes);
            ("True", reason, message)
        }
    };
    set_condition(
        &mut status.conditions,
        app.metadata.generation,
        synced_status,
        reason,
        message,
    );
    synced
}

/// Remembers a failed push. The app is checked again after any failed rotation: the provider
/// may hold a secret that did not reach the Secret (a Secret write that failed after the push).
/// A failure without a request (`held`: the provider was held) neither lengthens the backoff
/// nor may land late.
fn note_push_failure(ctx: &Context, key: String, held: bool, e: &Error) {
    let now = Instant::now();
    let mut state = ctx.providers.lock(now);
    state.checked.remove(&key);
    if !held {
        state.may_land_late(&key, e, now);
    }
    if matches!(e, Error::Provider(_)) && !held {
        let (n, at) = state.push_failures.entry(key).or_insert((0, now));
        *n = n.saturating_add(1);
        *at = now;
    }
}

/// A revocation of the previous secret, at the provider before the Secret's record says so: the
/// client keeps `current` alone (the Secret's current secret), so that when the revocation
/// answers, the previous secret no longer works anywhere. None to do when the app has no
/// provider. A failure writes `ProviderSynced=False` (when it changes) and fails the revocation:
/// the Secret still keeps the previous secret valid, and the request is retried (the annotation)
/// or answered with an error (the REST API). A crash after this write leaves the provider ahead
/// of the Secret, which the retried request (or the reconcile-time check, once the previous
/// secret expires) brings back together.
pub async fn push_revocation(ctx: &Context, app: &OAuthApp, current: &str) -> Result<(), Error> {
    let Some(reference) = &app.spec.provider_ref else {
        return Ok(());
    };
    let ns = app.namespace().unwrap_or_default();
    let client_id = app
        .status
        .as_ref()
        .and_then(|s| s.client_id.clone())
        .unwrap_or_default();
    let result = guarded(&ctx.providers, &ns, &reference.name, async {
        let provider = connect(&ctx.client, &ns, &reference.name).await?;
        ctx.leadership.check()?;
        provider
            .put_client(&desired(app, &client_id), current, &Previous::Drop)
            .await?;
        Ok::<_, Error>(())
    })
    .await;
    match &result {
        Ok(()) => {
            info!(app = %app_key(app), provider = %reference.name, "the identity provider no longer takes the previous secret");
            writes::publish_in_background(
                ctx,
                app,
                EventType::Normal,
                "ProviderPreviousSecretRevoked",
                format!(
                    "OAuthProvider {} no longer takes the previous secret of client {client_id}: revoked on request",
                    reference.name
                ),
            );
        }
        Err(e) => {
            let now = Instant::now();
            ctx.providers.lock(now).may_land_late(&app_key(app), e, now);
            if let Error::Provider(pe) = e {
                mark_unsynced(ctx, app, &reference.name, pe).await;
            }
        }
    }
    result
}

/// `ProviderSynced=False` reasons that are the provider's, not the app's: once the provider
/// authenticates again, an app held by one of them is retried at once.
const PROVIDER_LEVEL_REASONS: &[&str] = &[
    "ProviderNotFound",
    "CredentialsMissing",
    "Unreachable",
    "TLSHandshakeFailed",
    "InvalidCABundle",
    "Unauthorized",
    "Forbidden",
];

/// `ProviderSynced=False`: the provider authenticates again and the app's sync is retried now.
pub const RETRYING: &str = "Retrying";

/// The apps that `provider` held (`ProviderSynced=False` for one of the provider's own reasons),
/// retried at once now that it authenticates again (called when its `Ready` turns True): their
/// backoff starts over, and `ProviderSynced` says so (reason [`RETRYING`]), a status write that
/// brings each app to the controller now rather than at the end of a backoff of up to 5 min.
/// Returns how many apps it retried.
pub async fn retry_held_apps(ctx: &Context, provider: &OAuthProvider) -> Result<usize, Error> {
    let ns = provider.namespace().unwrap_or_default();
    let name = provider.name_any();
    ctx.providers
        .lock(Instant::now())
        .unreachable
        .remove(&format!("{ns}/{name}"));
    let apps: Api<OAuthApp> = Api::namespaced(ctx.client.clone(), &ns);
    let mut retried = 0;
    for app in apps.list(&Default::default()).await? {
        if app.spec.provider_ref.as_ref().map(|r| r.name.as_str()) != Some(name.as_str()) {
            continue;
        }
        let held = provider_condition(&app)
            .is_some_and(|c| c.status == "False" && PROVIDER_LEVEL_REASONS.contains(&c.reason.as_str()));
        if !held {
            continue;
        }
        ctx.providers.forget_app(&app_key(&app));
        write_condition(
            ctx,
            &app,
            "False",
            RETRYING,
            format!("OAuthProvider {name} authenticates again; the app's sync is retried now"),
        )
        .await?;
        retried += 1;
    }
    Ok(retried)
}

/// The plaintext of the Secret's current secret when it is rotation `rotation_id`, read fresh
/// (None: the Secret is missing or holds another rotation). A rotation with grace reads the
/// secret it replaces; a check, the one the status names (a status that lags the Secret, or
/// the other way, is the planner's to repair first).
async fn plaintext_of(ctx: &Context, app: &OAuthApp, rotation_id: &str) -> Result<Option<String>, Error> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &app.namespace().unwrap_or_default());
    let Some(secret) = secrets.get_opt(&app.secret_name()).await? else {
        return Ok(None);
    };
    if secret
        .annotations()
        .get(annotations::ROTATION_ID)
        .map(String::as_str)
        != Some(rotation_id)
    {
        return Ok(None);
    }
    Ok(plaintext(&secret))
}

fn plaintext(secret: &Secret) -> Option<String> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(CLIENT_SECRET_KEY))
        .and_then(|b| String::from_utf8(b.0.clone()).ok())
}

/// The reconcile-time check of an app with a provider, in its steady state: at most every
/// [`CHECK_INTERVAL`] (sooner after a change of rotation or a failure), the provider's client is
/// compared with the Secret's current secret and, if it differs or is missing, set back to it:
/// no new rotation. Some(wait): when to look again.
pub async fn check_app(ctx: &Context, app: &OAuthApp) -> Result<Option<Duration>, Error> {
    let Some(reference) = &app.spec.provider_ref else {
        return Ok(None);
    };
    let Some(rotation_id) = app.status.as_ref().and_then(|s| s.rotation_id.clone()) else {
        return Ok(None);
    };
    let key = app_key(app);
    let (spec_changed, wait) = when_to_check(ctx, app, &key, &rotation_id);
    if let Some(wait) = wait {
        return Ok(Some(wait));
    }
    let _guard = ctx.locks.lock(&key).await;
    let ns = app.namespace().unwrap_or_default();
    let Some(current) = plaintext_of(ctx, app, &rotation_id).await? else {
        return Ok(Some(FIRST_RETRY));
    };
    let client_id = app
        .status
        .as_ref()
        .and_then(|s| s.client_id.clone())
        .unwrap_or_default();
    let wanted = desired(app, &client_id);
    let previous_valid = app
        .status
        .as_ref()
        .and_then(|s| s.previous_secret.as_ref())
        .is_some_and(|p| p.expires_at.0 > Timestamp::now());
    let outcome = guarded(&ctx.providers, &ns, &reference.name, async {
        let provider = connect(&ctx.client, &ns, &reference.name).await?;
        let (holds, missing) = provider.holds(&wanted, &current, previous_valid).await?;
        // A hand-changed or missing client gets the current secret alone, and so does one that
        // still takes a previous secret the app has retired; one whose description alone changed
        // keeps a previous secret it holds (a grace period running).
        let previous = match holds {
            Holds::Same => None,
            Holds::Outdated => Some(Previous::Keep),
            Holds::Other | Holds::Missing | Holds::PreviousRetired => Some(Previous::Drop),
        };
        let missing = match previous {
            Some(previous) => {
                ctx.leadership.check()?;
                let pushed = provider.put_client(&wanted, &current, &previous).await?;
                // No rotation to spare here: the check fails, and is retried.
                if let Some(e) = pushed.scopes_failed {
                    return Err(e.into());
                }
                pushed.missing_scopes
            }
            None => missing,
        };
        Ok::<_, Error>((holds, missing))
    })
    .await;
    drop(current);
    match outcome {
        Ok((holds, missing)) => {
            let found = Found {
                provider: &reference.name,
                rotation_id: &rotation_id,
                client_id: &client_id,
                holds,
                missing,
                spec_changed,
            };
            in_sync(ctx, app, &key, found).await
        }
        Err(Error::Provider(pe)) => {
            mark_unsynced(ctx, app, &reference.name, &pe).await;
            Ok(Some(retry_after(note_failed_check(ctx, key, pe))))
        }
        Err(e) => Err(e),
    }
}

/// Whether the spec changed since this rotation was last found in sync (the same rotation
/// under another generation: a client that differs is an update, not someone's change at the
/// provider), and how long to wait before checking (None: now).
fn when_to_check(ctx: &Context, app: &OAuthApp, key: &str, rotation_id: &str) -> (bool, Option<Duration>) {
    let condition_true = provider_condition(app).is_some_and(|c| c.status == "True");
    let version = checked_version(rotation_id, app);
    let now = Instant::now();
    let state = ctx.providers.lock(now);
    let spec_changed = state.checked.get(key).is_some_and(|c| {
        let (rotation, generation) = rotation_and_generation(&c.rotation_id);
        (rotation, generation) != rotation_and_generation(&version) && rotation == rotation_id
    });
    let late = state.late_write_possible(key, now);
    (
        spec_changed,
        wait_before_check(&state.checked, key, &version, condition_true, late, now),
    )
}

/// What a check found at the provider: what it held (before the put, if one was made), the
/// scopes its realm lacks, and whether the spec changed since the last check of this rotation.
struct Found<'a> {
    provider: &'a str,
    rotation_id: &'a str,
    client_id: &'a str,
    holds: Holds,
    missing: Vec<String>,
    spec_changed: bool,
}

/// After a check that left the provider in sync: remembers it, says what was put back (an
/// Event), and writes `ProviderSynced=True`. Answers when to look again.
async fn in_sync(
    ctx: &Context,
    app: &OAuthApp,
    key: &str,
    found: Found<'_>,
) -> Result<Option<Duration>, Error> {
    let now = Instant::now();
    ctx.providers.lock(now).checked.insert(
        key.to_string(),
        Checked {
            rotation_id: checked_version(found.rotation_id, app),
            at: now,
            failures: 0,
        },
    );
    let hint = app
        .status
        .as_ref()
        .and_then(|s| s.client_secret_hint.clone())
        .unwrap_or_default();
    let restored = provider_event(found.holds, found.spec_changed, found.client_id, &hint);
    if let Some((reason, what)) = restored {
        let type_ = if matches!(reason, "ProviderClientUpdated" | "ProviderPreviousSecretRevoked") {
            info!(app = %key, provider = %found.provider, "the identity provider: {what}");
            EventType::Normal
        } else {
            warn!(app = %key, provider = %found.provider, "the identity provider {what}");
            EventType::Warning
        };
        writes::publish_in_background(
            ctx,
            app,
            type_,
            reason,
            format!("OAuthProvider {} {what}", found.provider),
        );
    }
    // The grace a rotation gave is kept by the provider as it was; only a restored
    // client loses it (said here).
    let grace_dropped = provider_condition(app)
        .filter(|c| {
            c.status == "True"
                && matches!(
                    found.holds,
                    Holds::Same | Holds::Outdated | Holds::PreviousRetired
                )
        })
        .is_some_and(|c| {
            c.reason == SYNCED_WITHOUT_GRACE
                || (c.reason == SYNCED_WITHOUT_SCOPES && c.message.contains(NO_ROTATION_POLICY))
        });
    warn_missing_scopes(ctx, app, found.provider, &found.missing);
    let (reason, message) =
        synced_condition(found.provider, found.rotation_id, grace_dropped, &found.missing);
    write_condition(ctx, app, "True", reason, message).await?;
    let late = ctx
        .providers
        .lock(Instant::now())
        .late_write_possible(key, Instant::now());
    Ok(Some(if late { FIRST_RETRY } else { CHECK_INTERVAL }))
}

/// The Event for what a check put back at the provider (None: it held what the app holds).
fn provider_event(
    holds: Holds,
    spec_changed: bool,
    client_id: &str,
    hint: &str,
) -> Option<(&'static str, String)> {
    match holds {
        Holds::Same => None,
        Holds::PreviousRetired => Some((
            "ProviderPreviousSecretRevoked",
            format!(
                "no longer takes the previous secret of client {client_id}: the app keeps none valid (revoked, or expired), only its current secret ({hint})"
            ),
        )),
        Holds::Missing => Some((
            "ProviderSecretRestored",
            format!(
                "had no client {client_id}; created it with the Secret's current secret ({hint}), no new secret"
            ),
        )),
        Holds::Other => Some((
            "ProviderSecretRestored",
            format!(
                "held another secret for client {client_id}; set back to the Secret's current secret ({hint}), no new secret"
            ),
        )),
        Holds::Outdated if spec_changed => Some((
            "ProviderClientUpdated",
            format!("client {client_id} updated to the app's name, redirect URIs and scopes"),
        )),
        Holds::Outdated => Some((
            "ProviderClientRestored",
            format!(
                "had another name, other redirect URIs or other scopes for client {client_id}; set back to the app's"
            ),
        )),
    }
}

/// Notes a failed check of the app `key` (and a write that may land late); answers the
/// failures in a row.
fn note_failed_check(ctx: &Context, key: String, pe: ProviderError) -> u32 {
    let now = Instant::now();
    let mut state = ctx.providers.lock(now);
    state.may_land_late(&key, &Error::Provider(pe), now);
    let entry = state.checked.entry(key).or_insert(Checked {
        rotation_id: String::new(),
        at: now,
        failures: 0,
    });
    entry.rotation_id.clear();
    // The backoff runs from this failure.
    entry.at = now;
    entry.failures = entry.failures.saturating_add(1);
    entry.failures
}

/// What a check found in sync: the rotation, the spec (`metadata.generation`) and the previous
/// secret the app keeps valid, so that a change of any of them (a new redirect URI, a previous
/// secret revoked) is checked at once. `<rotation>@<generation>+<previous rotation>`.
fn checked_version(rotation_id: &str, app: &OAuthApp) -> String {
    let previous = app
        .status
        .as_ref()
        .and_then(|s| s.previous_secret.as_ref())
        .map(|p| p.rotation_id.as_str())
        .unwrap_or_default();
    format!(
        "{rotation_id}@{}+{previous}",
        app.metadata.generation.unwrap_or_default()
    )
}

/// The rotation and the generation parts of a [`checked_version`].
fn rotation_and_generation(version: &str) -> (&str, &str) {
    let (rotation, rest) = version.split_once('@').unwrap_or((version, ""));
    (rotation, rest.split('+').next().unwrap_or_default())
}

/// How long before an app is checked again (None: now): `CHECK_INTERVAL` after the last check
/// of this rotation that found it in sync; at once after a change of rotation or a condition
/// that is not True, unless a failed check's backoff still runs.
fn wait_before_check(
    checked: &HashMap<String, Checked>,
    key: &str,
    rotation_id: &str,
    condition_true: bool,
    late_write_possible: bool,
    now: Instant,
) -> Option<Duration> {
    let entry = checked.get(key)?;
    let since = now.saturating_duration_since(entry.at);
    if entry.failures > 0 {
        return retry_after(entry.failures)
            .checked_sub(since)
            .filter(|d| !d.is_zero());
    }
    if entry.rotation_id != rotation_id || !condition_true {
        return None;
    }
    let interval = if late_write_possible {
        FIRST_RETRY
    } else {
        CHECK_INTERVAL
    };
    interval.checked_sub(since).filter(|d| !d.is_zero())
}

/// The wait after `failures` failed checks in a row: 5 s, doubling, at most `CHECK_INTERVAL`.
fn retry_after(failures: u32) -> Duration {
    FIRST_RETRY
        .saturating_mul(1u32 << failures.saturating_sub(1).min(10))
        .min(CHECK_INTERVAL)
}

fn synced_condition(
    provider: &str,
    rotation_id: &str,
    grace_dropped: bool,
    missing_scopes: &[String],
) -> (&'static str, String) {
    let no_grace = format!(
        "{NO_ROTATION_POLICY} for this client (Keycloak's client-secret-rotation feature), so the grace period holds \
         only at this operator's verify endpoint"
    );
    if !missing_scopes.is_empty() {
        let mut message = format!(
            "OAuthProvider {provider} holds the secret of rotation {rotation_id}, but its realm has no client scope {} \
             of spec.scopes: create them in the realm, and the operator's next check assigns them to the client",
            missing_scopes.join(", ")
        );
        if grace_dropped {
            message.push_str(&format!("; nor does it hold the previous secret: {no_grace}"));
        }
        (SYNCED_WITHOUT_SCOPES, message)
    } else if grace_dropped {
        (
            SYNCED_WITHOUT_GRACE,
            format!(
                "OAuthProvider {provider} holds the secret of rotation {rotation_id}, but not the previous one: {no_grace}"
            ),
        )
    } else {
        (
            SYNCED,
            format!("OAuthProvider {provider} holds the secret of rotation {rotation_id}"),
        )
    }
}

/// A Warning Event naming the app's scopes its provider's realm has none of, unless its
/// `ProviderSynced` already names the same ones.
fn warn_missing_scopes(ctx: &Context, app: &OAuthApp, provider: &str, missing: &[String]) {
    if missing.is_empty() {
        return;
    }
    let list = missing.join(", ");
    let said = provider_condition(app).is_some_and(|c| {
        c.reason == SYNCED_WITHOUT_SCOPES && c.message.contains(&format!("no client scope {list} of"))
    });
    if said {
        return;
    }
    warn!(app = %app_key(app), provider, scopes = %list, "the identity provider's realm has no client scope for some of the app's scopes");
    writes::publish_in_background(
        ctx,
        app,
        EventType::Warning,
        PROVIDER_SCOPES_MISSING,
        format!(
            "OAuthProvider {provider} holds the app's secret, but its realm has no client scope {list} of spec.scopes; \
             create them in the realm, and the operator's next check assigns them"
        ),
    );
}

fn provider_condition(app: &OAuthApp) -> Option<&Condition> {
    app.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == PROVIDER_SYNCED))
}

/// Sets `ProviderSynced` in `conditions`, keeping `lastTransitionTime` when its status stays.
fn set_condition(
    conditions: &mut Vec<Condition>,
    generation: Option<i64>,
    status: &str,
    reason: &str,
    message: String,
) {
    let old = conditions.iter().find(|c| c.type_ == PROVIDER_SYNCED);
    let last_transition_time = match old {
        Some(c) if c.status == status => c.last_transition_time.clone(),
        _ => Time(Timestamp::from_second(Timestamp::now().as_second()).unwrap_or_else(|_| Timestamp::now())),
    };
    let condition = Condition {
        type_: PROVIDER_SYNCED.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time,
    };
    conditions.retain(|c| c.type_ != PROVIDER_SYNCED);
    conditions.push(condition);
}

/// Writes `ProviderSynced` when it changes (a conditional status write; a lost race is left to
/// the next look).
async fn write_condition(
    ctx: &Context,
    app: &OAuthApp,
    status: &str,
    reason: &str,
    message: String,
) -> Result<(), Error> {
    if provider_condition(app)
        .is_some_and(|c| c.status == status && c.reason == reason && c.message == message)
    {
        return Ok(());
    }
    let mut new_status = app.status.clone().unwrap_or_default();
    set_condition(
        &mut new_status.conditions,
        app.metadata.generation,
        status,
        reason,
        message,
    );
    match writes::write_status(ctx, app, new_status).await {
        Ok(_) => Ok(()),
        Err(e) if e.is_conflict() => Ok(()),
        Err(e) => Err(e),
    }
}

/// `ProviderSynced=False` for `error`, and a Warning Event when it newly says so; a failure to
/// write it is logged (the caller's error is the one that counts).
pub(super) async fn mark_unsynced(ctx: &Context, app: &OAuthApp, provider: &str, error: &ProviderError) {
    let reason = error.reason();
    let message = format!("OAuthProvider {provider}: {error}");
    warn!(app = %app_key(app), provider, reason, error = %error, "the identity provider does not hold the app's secret");
    let new = !provider_condition(app).is_some_and(|c| c.status == "False" && c.reason == reason);
    if let Err(e) = write_condition(ctx, app, "False", reason, message.clone()).await {
        warn!(app = %app_key(app), error = %e, "could not write the ProviderSynced condition");
    }
    if new {
        writes::publish_in_background(ctx, app, EventType::Warning, "ProviderSyncFailed", message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::providers::{FORGET_AFTER, LATE_WRITE_WINDOW};

    #[test]
    fn failed_checks_back_off_from_five_seconds_to_the_check_interval() {
        assert_eq!(retry_after(1), Duration::from_secs(5));
        assert_eq!(retry_after(2), Duration::from_secs(10));
        assert_eq!(retry_after(4), Duration::from_secs(40));
        assert_eq!(retry_after(30), CHECK_INTERVAL);
    }

    #[test]
    fn an_app_is_checked_at_once_after_a_new_rotation_and_otherwise_at_the_interval() {
        let now = Instant::now();
        let key = "ns-check/app";
        let mut checked = HashMap::new();
        assert_eq!(
            wait_before_check(&checked, key, "r1", true, false, now),
            None,
            "never checked"
        );
        checked.insert(
            key.to_string(),
            Checked {
                rotation_id: "r1".into(),
                at: now,
                failures: 0,
            },
        );
        let wait = wait_before_check(&checked, key, "r1", true, false, now).expect("in sync: waits");
        assert_eq!(wait, CHECK_INTERVAL);
        assert_eq!(
            wait_before_check(&checked, key, "r2", true, false, now),
            None,
            "a new rotation"
        );
        assert_eq!(
            wait_before_check(&checked, key, "r1", false, false, now),
            None,
            "condition not True"
        );
        assert_eq!(
            wait_before_check(&checked, key, "r1", true, false, now + CHECK_INTERVAL),
            None,
            "interval over"
        );
        // A write given up on may still land: checked every FIRST_RETRY meanwhile.
        assert_eq!(
            wait_before_check(&checked, key, "r1", true, true, now),
            Some(FIRST_RETRY)
        );
        assert_eq!(
            wait_before_check(&checked, key, "r1", true, true, now + FIRST_RETRY),
            None
        );
    }

    #[test]
    fn a_write_given_up_as_unreachable_is_watched_for_a_minute_and_no_other() {
        let state = State::default();
        let now = Instant::now();
        let mut inner = state.lock(now);
        let unreachable = Error::Provider(ProviderError::Unreachable {
            url: "http://kc".into(),
            detail: "timed out".into(),
        });
        let refused = Error::Provider(ProviderError::Unauthorized {
            url: "http://kc".into(),
            detail: "401".into(),
        });
        inner.may_land_late("ns/slow", &unreachable, now);
        inner.may_land_late("ns/refused", &refused, now);
        assert!(inner.late_write_possible("ns/slow", now));
        assert!(!inner.late_write_possible("ns/refused", now));
        assert!(!inner.late_write_possible("ns/slow", now + LATE_WRITE_WINDOW));
    }

    #[test]
    fn a_new_condition_keeps_the_others_and_its_transition_time_while_its_status_stays() {
        let mut conditions = vec![Condition {
            type_: "Ready".into(),
            status: "True".into(),
            reason: "SecretReady".into(),
            message: String::new(),
            observed_generation: Some(1),
            last_transition_time: Time(Timestamp::UNIX_EPOCH),
        }];
        set_condition(&mut conditions, Some(1), "False", "Unreachable", "down".into());
        let first = conditions[1].last_transition_time.clone();
        set_condition(&mut conditions, Some(1), "False", "Unauthorized", "no".into());
        assert_eq!(conditions.len(), 2);
        assert_eq!(conditions[0].type_, "Ready");
        assert_eq!(conditions[1].reason, "Unauthorized");
        assert_eq!(conditions[1].last_transition_time, first);
    }

    #[tokio::test]
    async fn a_provider_found_unreachable_is_not_called_again_for_a_while() {
        let calls = std::sync::atomic::AtomicU32::new(0);
        let call = || async {
            calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Err::<(), _>(Error::Provider(ProviderError::Unreachable {
                url: "http://127.0.0.1:1".into(),
                detail: "connection refused".into(),
            }))
        };
        let state = State::default();
        let first = guarded(&state, "ns-guard", "kc", call()).await;
        let second = guarded(&state, "ns-guard", "kc", call()).await;
        assert_eq!(
            calls.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "the second call waits"
        );
        let (Err(Error::Provider(a)), Err(Error::Provider(b))) = (first, second) else {
            panic!("both unreachable");
        };
        assert_eq!((a.reason(), b.reason()), ("Unreachable", "Unreachable"));
        assert_eq!(
            a.to_string(),
            b.to_string(),
            "the held answer says what the call said (a stable condition message)"
        );
        assert!(state.held("ns-guard", "kc"));
        // Another provider is called, and so is this one by another operator's state.
        guarded(&state, "ns-guard", "other", async { Ok(()) })
            .await
            .expect("called");
        guarded(&State::default(), "ns-guard", "kc", async { Ok(()) })
            .await
            .expect("another operator's state holds nothing back");
    }

    #[test]
    fn entries_not_refreshed_for_a_while_are_forgotten_and_live_ones_kept() {
        let state = State::default();
        let start = Instant::now();
        {
            let mut inner = state.lock(start);
            for (key, at) in [("ns/gone", start), ("ns/live", start)] {
                inner.checked.insert(
                    key.into(),
                    Checked {
                        rotation_id: "r1@1".into(),
                        at,
                        failures: 0,
                    },
                );
                inner.push_failures.insert(key.into(), (3, at));
            }
            inner.unreachable.insert(
                "ns/kc".into(),
                (
                    start + UNREACHABLE_HOLD,
                    "http://127.0.0.1:1".into(),
                    "refused".into(),
                ),
            );
        }
        assert_eq!(state.len(), 5);
        // A live app is looked at again within CHECK_INTERVAL: its entries are refreshed.
        let later = start + FORGET_AFTER;
        {
            let mut inner = state.inner.lock().expect("lock");
            inner.checked.get_mut("ns/live").expect("live").at = later - CHECK_INTERVAL;
            inner.push_failures.get_mut("ns/live").expect("live").1 = later - CHECK_INTERVAL;
        }
        let inner = state.lock(later);
        assert_eq!(
            inner.checked.keys().collect::<Vec<_>>(),
            ["ns/live"],
            "the deleted app's check is forgotten"
        );
        assert_eq!(inner.push_failures.keys().collect::<Vec<_>>(), ["ns/live"]);
        assert!(inner.unreachable.is_empty(), "an expired hold is forgotten");
        drop(inner);
        state.forget_app("ns/live");
        assert!(state.is_empty());
    }

    #[test]
    fn missing_scopes_are_named_in_the_condition_and_a_dropped_grace_is_still_said() {
        let (reason, message) = synced_condition("kc", "r1", false, &[]);
        assert_eq!(
            (reason, message.as_str()),
            (SYNCED, "OAuthProvider kc holds the secret of rotation r1")
        );
        let (reason, message) = synced_condition("kc", "r1", true, &[]);
        assert_eq!(reason, SYNCED_WITHOUT_GRACE);
        assert!(message.contains(NO_ROTATION_POLICY), "{message}");
        let missing = vec!["invoices:read".to_string(), "zz".to_string()];
        let (reason, message) = synced_condition("kc", "r1", false, &missing);
        assert_eq!(reason, SYNCED_WITHOUT_SCOPES);
        assert!(
            message.contains("no client scope invoices:read, zz of spec.scopes"),
            "{message}"
        );
        assert!(message.contains("create them in the realm"), "{message}");
        assert!(!message.contains(NO_ROTATION_POLICY), "{message}");
        let (reason, message) = synced_condition("kc", "r1", true, &missing);
        assert_eq!(reason, SYNCED_WITHOUT_SCOPES);
        assert!(message.contains(NO_ROTATION_POLICY), "both said: {message}");
    }

    #[test]
    fn no_provider_error_text_holds_a_secret() {
        let secret = ClientSecret::generate().expect("secret");
        let e = ProviderError::Rejected {
            url: "http://127.0.0.1:1".into(),
            detail: crate::runtime::error::redact(&format!("echoed {}", secret.expose())),
        };
        assert!(!e.to_string().contains(secret.expose()));
    }
}
