//! The finalizer that deletes an app's client at its identity provider before the app is gone.
//!
//! An app with `spec.providerRef` carries [`FINALIZER`] from its first reconcile, before anything
//! is written at the provider, so no client exists for an app that could vanish without the
//! operator seeing it. When the app is deleted, the operator deletes its client (the one it
//! created for that app, nothing else), then removes the finalizer; the Secret goes after, by
//! garbage collection. The client is kept, and the finalizer removed at once, when the app's
//! Secret is kept (`spec.secret.deletionPolicy: Retain`: the same app applied again finds both),
//! when the provider keeps clients (`spec.deletionPolicy: Retain` on the OAuthProvider), and when
//! the OAuthProvider no longer exists (there is nowhere to delete at).
//!
//! While the provider cannot be reached or refuses, the app stays (`Terminating`) with
//! `ProviderSynced=False` and the reason, and the deletion is retried with the provider's
//! backoff. Someone who gives up on that provider removes the finalizer by hand
//! (`kubectl patch oauthapp NAME --type=json -p '[{"op":"remove","path":"/metadata/finalizers/0"}]'`);
//! the provider's own look ([`super::controller`]) then deletes the client once the app and its
//! Secret are both gone, as it does for an app deleted before its finalizer was added.

use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};
use tracing::{info, warn};

use super::{IdentityProvider, OwnedClient};
use crate::model::crd::{DeletionPolicy, MANAGER, OAuthApp};
use crate::model::provider::{ClientDeletionPolicy, OAuthProvider};
use crate::runtime::context::Context;
use crate::runtime::error::Error;
use crate::runtime::writes::app_key;

/// The finalizer on an app with a provider.
pub const FINALIZER: &str = "oauthapp.io/provider-client";

/// What the finalizer of an app asks for now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing: the app is as it should be.
    None,
    /// The app names a provider and is not being deleted: it gets the finalizer before its client
    /// is written.
    Add,
    /// The app no longer names a provider: the finalizer goes, the client is left alone.
    Drop,
    /// The app is being deleted: its client is deleted (unless kept), then the finalizer goes.
    Release,
}

/// Whether `app` carries the finalizer.
pub fn holds(app: &OAuthApp) -> bool {
    app.finalizers().iter().any(|f| f == FINALIZER)
}

/// What the finalizer of `app` asks for.
pub fn step(app: &OAuthApp) -> Step {
    let deleting = app.metadata.deletion_timestamp.is_some();
    match (deleting, holds(app), app.spec.provider_ref.is_some()) {
        (true, true, _) => Step::Release,
        (false, false, true) => Step::Add,
        (false, true, false) => Step::Drop,
        _ => Step::None,
    }
}

/// Does what [`step`] asks. Some(app): the app as the API server now has it, for the reconcile
/// to go on with; None: the app is being deleted and the reconcile is over (its finalizer is
/// released, or it was not ours to hold).
pub async fn apply(ctx: &Context, app: &OAuthApp) -> Result<Option<OAuthApp>, Error> {
    match step(app) {
        Step::None if app.metadata.deletion_timestamp.is_some() => Ok(None),
        Step::None => Ok(Some(app.clone())),
        Step::Add => {
            let mut finalizers = app.finalizers().to_vec();
            finalizers.push(FINALIZER.to_string());
            write(ctx, app, finalizers).await.map(Some)
        }
        Step::Drop => write(ctx, app, without(app)).await.map(Some),
        Step::Release => {
            delete_client(ctx, app).await?;
            write(ctx, app, without(app)).await?;
            ctx.providers.forget_app(&app_key(app));
            Ok(None)
        }
    }
}

fn without(app: &OAuthApp) -> Vec<String> {
    app.finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect()
}

/// Writes the app's finalizers: a merge patch conditional on the app's resourceVersion, so that
/// a finalizer someone else added or removed meanwhile is never lost (a conflict is retried by
/// the reconcile, with the app's next version).
async fn write(ctx: &Context, app: &OAuthApp, finalizers: Vec<String>) -> Result<OAuthApp, Error> {
    ctx.leadership.check()?;
    let api: Api<OAuthApp> = Api::namespaced(ctx.client.clone(), &app.namespace().unwrap_or_default());
    let patch = serde_json::json!({
        "metadata": {
            "resourceVersion": app.resource_version(),
            "finalizers": finalizers,
        }
    });
    let written = api
        .patch(
            &app.name_any(),
            &PatchParams::apply(MANAGER),
            &Patch::Merge(&patch),
        )
        .await?;
    ctx.metrics.writes.inc();
    Ok(written)
}

/// Deletes the client the operator created for `app` at its provider, unless it is kept (see the
/// module doc). A provider that cannot be reached or refuses fails it, with `ProviderSynced`
/// saying why.
async fn delete_client(ctx: &Context, app: &OAuthApp) -> Result<(), Error> {
    let key = app_key(app);
    let Some(reference) = &app.spec.provider_ref else {
        return Ok(());
    };
    if app.deletion_policy() == DeletionPolicy::Retain {
        info!(app = %key, "app deleted with its Secret retained: its client at the identity provider is kept");
        return Ok(());
    }
    let Some(client_id) = app.status.as_ref().and_then(|s| s.client_id.clone()) else {
        return Ok(());
    };
    let ns = app.namespace().unwrap_or_default();
    let providers: Api<OAuthProvider> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(provider) = providers.get_opt(&reference.name).await? else {
        warn!(app = %key, provider = %reference.name, "app deleted, its OAuthProvider is gone: its client is not deleted anywhere");
        return Ok(());
    };
    if provider.deletion_policy() == ClientDeletionPolicy::Retain {
        info!(app = %key, provider = %reference.name, "app deleted; its provider retains clients: the client is kept");
        return Ok(());
    }
    let owned = OwnedClient {
        client_id: client_id.clone(),
        owner: key.clone(),
        secret_name: app.secret_name(),
    };
    let deleted = super::sync::guarded(&ctx.providers, &ns, &reference.name, async {
        let kc = super::sync::connect_to(&ctx.client, &provider).await?;
        ctx.leadership.check()?;
        Ok::<_, Error>(kc.delete_client(&owned).await?)
    })
    .await;
    if let Err(Error::Provider(e)) = &deleted {
        super::sync::mark_unsynced(ctx, app, &reference.name, e).await;
    }
    deleted?;
    info!(app = %key, provider = %reference.name, client_id = %client_id, "deleted the client of a deleted app");
    let event = Event {
        type_: EventType::Normal,
        reason: "ClientDeleted".into(),
        note: Some(format!(
            "Deleted client {client_id} of OAuthApp {key}: the app is deleted"
        )),
        action: "Delete".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder().publish(&event, &provider.object_ref(&())).await {
        warn!(app = %key, error = %crate::runtime::error::redact(&e.to_string()), "failed to publish event");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::crd::OAuthAppSpec;
    use crate::model::provider::ProviderRef;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn app(provider: bool, finalizer: bool, deleting: bool) -> OAuthApp {
        let mut app = OAuthApp::new("a", OAuthAppSpec::default());
        if provider {
            app.spec.provider_ref = Some(ProviderRef { name: "kc".into() });
        }
        if finalizer {
            app.metadata.finalizers = Some(vec!["example.com/other".into(), FINALIZER.into()]);
        }
        if deleting {
            app.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::UNIX_EPOCH));
        }
        app
    }

    #[test]
    fn an_app_with_a_provider_gets_the_finalizer_and_a_deleted_one_releases_it() {
        assert_eq!(step(&app(true, false, false)), Step::Add);
        assert_eq!(step(&app(true, true, false)), Step::None);
        assert_eq!(step(&app(true, true, true)), Step::Release);
        // A deleted app never gets it again.
        assert_eq!(step(&app(true, false, true)), Step::None);
    }

    #[test]
    fn an_app_without_a_provider_loses_the_finalizer_and_never_gets_it() {
        assert_eq!(step(&app(false, false, false)), Step::None);
        assert_eq!(step(&app(false, true, false)), Step::Drop);
        assert_eq!(step(&app(false, true, true)), Step::Release);
    }

    #[test]
    fn only_the_operators_finalizer_is_removed() {
        assert_eq!(
            without(&app(true, true, true)),
            vec!["example.com/other".to_string()]
        );
    }
}
