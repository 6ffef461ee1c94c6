//! Identity providers that apps are registered in (`spec.providerRef` → an `OAuthProvider`).
//!
//! The seam is [`IdentityProvider`]: what the rest of the operator needs from any provider
//! (authenticate, put a client with a given secret, say whether it holds a given secret). Keycloak
//! is the one implementation ([`keycloak`]); Ory Hydra would be another (its admin API sets
//! `client_secret` on PUT, but keeps no second secret, so no grace period there).
//!
//! The order that keeps the Secret the source of truth: a rotation puts the new secret at the
//! provider *before* it writes the Secret ([`sync::push_rotation`], called from
//! `rotation::rotate_inner` right before the Secret write). A failure there fails the rotation
//! with nothing written (the reconcile retries it, the REST API answers 503). A crash between the
//! two writes leaves the provider ahead of the Secret; the reconcile-time check
//! ([`sync::check_app`]) puts the Secret's secret back at the provider, without a new rotation.
//!
//! May use: [`crate::model`], [`crate::runtime`].

pub mod controller;
pub mod finalizer;
pub mod keycloak;
pub mod sync;

use std::future::Future;

/// A client as the app wants it at the provider. Never holds a secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredClient {
    /// The OAuth client id (the app's).
    pub client_id: String,
    /// Shown by the provider (`spec.displayName`).
    pub name: Option<String>,
    /// `spec.redirectUris`.
    pub redirect_uris: Vec<String>,
    /// `spec.scopes`: the scopes the app may request (in Keycloak, optional client scopes of the
    /// client, taken from the realm's client scopes by name).
    pub scopes: Vec<String>,
    /// Who owns the client at the provider: `<namespace>/<app name>`. A client with this id that
    /// does not carry this owner was not created by the operator for this app.
    pub owner: String,
    /// The app's Secret: a client whose app and Secret are both gone is deleted (an app deleted
    /// with `spec.secret.deletionPolicy: Retain` keeps its Secret, and its client).
    pub secret_name: String,
}

/// A client at the provider that the operator created for an app: its client id, its owner
/// (`<namespace>/<app>`) and the app's Secret name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnedClient {
    pub client_id: String,
    pub owner: String,
    pub secret_name: String,
}

/// The secret a rotation replaced, valid at the provider until `expires_at` (unix seconds):
/// `spec.rotation.gracePeriod`.
pub struct Grace<'a> {
    pub previous: &'a str,
    pub expires_at: i64,
}

/// What becomes of a second (previous) secret the provider may hold, on a put.
pub enum Previous<'a> {
    /// None is valid any more: only `secret` works.
    Drop,
    /// Left as it is (a put that changes the client's description, not its secret).
    Keep,
    /// The replaced secret, valid until its expiry.
    Until(Grace<'a>),
}

/// What a provider did with a put.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Put {
    /// The client did not exist; it was created holding the secret.
    Created,
    /// The client existed; it now holds the secret.
    Updated,
}

/// What a put did: created or updated, whether the provider kept the previous secret (false
/// only for [`Previous::Until`] where it did not), and the app's scopes the provider has none of
/// (the client holds the secret all the same).
#[derive(Debug)]
pub struct Pushed {
    pub put: Put,
    pub grace_kept: bool,
    pub missing_scopes: Vec<String>,
    /// The scopes could not be set (the secret was put before): a rotation is not failed for
    /// it (a retried rotation would make another secret); the next check sets them.
    pub scopes_failed: Option<ProviderError>,
}

/// Whether a provider's client holds the app's current secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Holds {
    /// The client exists and its current secret is the one asked about.
    Same,
    /// The client exists with another secret.
    Other,
    /// The client holds the secret, but its name, redirect URIs or scopes are not the app's.
    Outdated,
    /// The client holds the secret, and also a previous one that still authenticates, while the
    /// app keeps none (revoked early, or a rotation without a grace period).
    PreviousRetired,
    /// No client has this id.
    Missing,
}

pub use crate::runtime::error::ProviderError;

/// What the operator needs from an identity provider. Implementations hold their own
/// credentials and never put them, or a client secret, into an error.
pub trait IdentityProvider {
    /// Authenticates with the provider's credentials (the OAuthProvider's `Ready`).
    fn authenticate(&self) -> impl Future<Output = Result<(), ProviderError>> + Send;

    /// Creates the client, or updates the one the operator created for this app, so that its
    /// current secret is `secret` and the rest is `desired`. With [`Previous::Until`], the
    /// replaced secret stays valid until its expiry where the provider can keep two
    /// ([`Pushed::grace_kept`] false: it did not). The secret is put first; a scope the provider
    /// does not have is no error, it is named in [`Pushed::missing_scopes`], and a failure to set
    /// the scopes after the secret is in [`Pushed::scopes_failed`].
    fn put_client(
        &self,
        desired: &DesiredClient,
        secret: &str,
        previous: &Previous<'_>,
    ) -> impl Future<Output = Result<Pushed, ProviderError>> + Send;

    /// The clients the operator created for apps in `namespace`.
    fn owned_clients(
        &self,
        namespace: &str,
    ) -> impl Future<Output = Result<Vec<OwnedClient>, ProviderError>> + Send;

    /// Deletes a client the operator created (Ok when it is gone already).
    fn delete_client(&self, client: &OwnedClient) -> impl Future<Output = Result<(), ProviderError>> + Send;

    /// Whether the client holds `secret` as its current secret; with `previous_valid` false, also
    /// whether it still takes a previous secret (the app has none valid). With it, the app's
    /// scopes the provider has none of (they count as described: nothing to set back).
    fn holds(
        &self,
        desired: &DesiredClient,
        secret: &str,
        previous_valid: bool,
    ) -> impl Future<Output = Result<(Holds, Vec<String>), ProviderError>> + Send;
}
