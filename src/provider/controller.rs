//! The OAuthProvider controller: authenticates to each provider with its credentials and says
//! so in its `Ready` condition. Runs where the app controller runs (the leader).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use k8s_openapi::api::core::v1::Secret;
use kube::Resource;
use kube::runtime::events::{Event, EventType};

use super::IdentityProvider;
use super::keycloak::Keycloak;
use crate::model::crd::{MANAGER, OAuthApp};
use crate::model::provider::{ClientDeletionPolicy, OAuthProvider, OAuthProviderStatus};
use crate::runtime::context::Context;
use crate::runtime::error::Error;

/// A Ready provider is checked again after this long.
const RECHECK: Duration = Duration::from_secs(60);
/// A provider that is not Ready is checked again after this long.
const RETRY: Duration = Duration::from_secs(10);

/// Runs until `shutdown`: every OAuthProvider in `namespace` (None: all).
pub async fn run(ctx: Arc<Context>, namespace: Option<String>, shutdown: CancellationToken) {
    let api: Api<OAuthProvider> = match &namespace {
        Some(ns) => Api::namespaced(ctx.client.clone(), ns),
        None => Api::all(ctx.client.clone()),
    };
    info!(
        namespace = namespace.as_deref().unwrap_or("<all>"),
        "starting OAuthProvider controller"
    );
    Controller::new(api, watcher::Config::default())
        .graceful_shutdown_on(async move { shutdown.cancelled().await })
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                debug!(error = %crate::runtime::error::redact(&e.to_string()), "OAuthProvider reconcile stream");
            }
        })
        .await;
}

async fn reconcile(provider: Arc<OAuthProvider>, ctx: Arc<Context>) -> Result<Action, Error> {
    let was_ready = provider
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status == "True");
    let checked = async {
        let kc = super::sync::connect_to(&ctx.client, &provider).await?;
        kc.authenticate().await?;
        Ok::<_, Error>(kc)
    }
    .await;
    let (status, reason, message, again) = match checked {
        Ok(kc) => {
            sweep(&ctx, &provider, &kc).await?;
            (
                "True",
                "Authenticated",
                format!(
                    "authenticated to realm {} at {} with the service account",
                    provider.spec.keycloak.realm, provider.spec.keycloak.url
                ),
                RECHECK,
            )
        }
        Err(Error::Provider(e)) => ("False", e.reason(), e.to_string(), RETRY),
        Err(e) => return Err(e),
    };
    if status == "True" && !was_ready {
        // Back (or new): the apps it held need not wait out their backoff. Before `Ready` is
        // written, so that a failure here is tried again by the next look.
        let retried = super::sync::retry_held_apps(&ctx, &provider).await?;
        if retried > 0 {
            info!(provider = %provider.name_any(), apps = retried, "the provider authenticates again; retrying the apps it held");
        }
    }
    write_ready(&ctx, &provider, status, reason, message).await?;
    Ok(Action::requeue(again))
}

/// Deletes the clients the operator created in this provider for apps of its namespace whose app
/// and Secret are both gone. An app's finalizer ([`super::finalizer`]) deletes its client before
/// the app goes; this look is what catches the rest: a finalizer removed by hand, an app deleted
/// before its finalizer was added. An app deleted with `Retain` keeps its Secret, and so its
/// client, for the same app applied again. A provider with `spec.deletionPolicy: Retain` keeps
/// every client.
async fn sweep(ctx: &Context, provider: &OAuthProvider, kc: &Keycloak) -> Result<(), Error> {
    if provider.deletion_policy() == ClientDeletionPolicy::Retain {
        return Ok(());
    }
    let ns = provider.namespace().unwrap_or_default();
    let apps: Api<OAuthApp> = Api::namespaced(ctx.client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    for client in kc.owned_clients(&ns).await? {
        let Some(app_name) = client.owner.strip_prefix(&format!("{ns}/")) else {
            continue;
        };
        if apps.get_metadata_opt(app_name).await?.is_some()
            || secrets.get_metadata_opt(&client.secret_name).await?.is_some()
        {
            continue;
        }
        ctx.leadership.check()?;
        kc.delete_client(&client).await?;
        ctx.providers.forget_app(&client.owner);
        info!(provider = %provider.name_any(), client_id = %client.client_id, app = %client.owner, "deleted the client of a deleted app");
        let event = Event {
            type_: EventType::Normal,
            reason: "ClientDeleted".into(),
            note: Some(format!(
                "Deleted client {} of OAuthApp {}: the app and its Secret are gone",
                client.client_id, client.owner
            )),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = ctx.recorder().publish(&event, &provider.object_ref(&())).await {
            warn!(provider = %provider.name_any(), error = %crate::runtime::error::redact(&e.to_string()), "failed to publish event");
        }
    }
    Ok(())
}

fn error_policy(provider: Arc<OAuthProvider>, error: &Error, _ctx: Arc<Context>) -> Action {
    warn!(provider = %provider.name_any(), reason = error.reason(), error = %error, "OAuthProvider reconcile failed; retrying");
    Action::requeue(RETRY)
}

/// The status with `Ready` as given; None when the provider's status already says that.
pub fn ready_status(
    provider: &OAuthProvider,
    status: &str,
    reason: &str,
    message: String,
    now: Timestamp,
) -> Option<OAuthProviderStatus> {
    let old = provider.status.clone().unwrap_or_default();
    let previous = old.conditions.iter().find(|c| c.type_ == "Ready");
    let generation = provider.metadata.generation;
    if previous.is_some_and(|c| {
        c.status == status
            && c.reason == reason
            && c.message == message
            && c.observed_generation == generation
    }) && old.observed_generation == generation
    {
        return None;
    }
    let last_transition_time = match previous {
        Some(c) if c.status == status => c.last_transition_time.clone(),
        _ => Time(Timestamp::from_second(now.as_second()).unwrap_or(now)),
    };
    let mut conditions: Vec<Condition> = old
        .conditions
        .into_iter()
        .filter(|c| c.type_ != "Ready")
        .collect();
    conditions.insert(
        0,
        Condition {
            type_: "Ready".into(),
            status: status.into(),
            reason: reason.into(),
            message,
            observed_generation: generation,
            last_transition_time,
        },
    );
    Some(OAuthProviderStatus {
        observed_generation: generation,
        conditions,
    })
}

async fn write_ready(
    ctx: &Context,
    provider: &OAuthProvider,
    status: &str,
    reason: &str,
    message: String,
) -> Result<(), Error> {
    let Some(new) = ready_status(provider, status, reason, message, Timestamp::now()) else {
        return Ok(());
    };
    ctx.leadership.check()?;
    let api: Api<OAuthProvider> =
        Api::namespaced(ctx.client.clone(), &provider.namespace().unwrap_or_default());
    // The status is the operator's alone: a merge patch of all of it.
    let patch = serde_json::json!({ "status": new });
    api.patch_status(
        &provider.name_any(),
        &PatchParams::apply(MANAGER),
        &Patch::Merge(&patch),
    )
    .await?;
    info!(provider = %provider.name_any(), status, reason, "OAuthProvider Ready");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::provider::OAuthProviderSpec;

    #[test]
    fn the_status_is_written_only_when_ready_changes_and_keeps_its_transition_time() {
        let mut provider = OAuthProvider::new("kc", OAuthProviderSpec::default());
        provider.metadata.generation = Some(1);
        let now = Timestamp::from_second(1_000).expect("time");
        let first = ready_status(&provider, "False", "Unreachable", "down".into(), now).expect("new");
        provider.status = Some(first.clone());
        assert_eq!(
            ready_status(&provider, "False", "Unreachable", "down".into(), now),
            None
        );
        let later = Timestamp::from_second(2_000).expect("time");
        let second = ready_status(&provider, "False", "Unauthorized", "no".into(), later).expect("changed");
        assert_eq!(
            second.conditions[0].last_transition_time,
            first.conditions[0].last_transition_time
        );
        let third = ready_status(&provider, "True", "Authenticated", "ok".into(), later).expect("changed");
        assert_eq!(third.conditions[0].last_transition_time.0, later);
        assert_eq!(third.observed_generation, Some(1));
    }
}
