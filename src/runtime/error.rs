//! The library's errors. Each has a short fixed `reason()`, used as a metric label and in logs.
//! No error's text contains a client secret: secrets never enter an error, and text that comes
//! from the API server is passed through `redact` in case it echoes a value.

use crate::model::secret::{GenerateError, HashError};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed (other than the cases below).
    #[error("Kubernetes API request failed: {}", redact(&.0.to_string()))]
    Kube(#[source] kube::Error),
    /// The OAuthApp does not exist (or is being deleted).
    #[error("OAuthApp {0} not found")]
    NotFound(String),
    /// The Secret's name is taken by a Secret the app does not own.
    #[error(
        "Secret {secret} exists and is not owned by OAuthApp {app}; delete it, or recreate the app with another spec.secret.name"
    )]
    SecretConflict { secret: String, app: String },
    /// Another installation of the operator manages the app: this one does not rotate it.
    #[error("OAuthApp {app} is managed by the operator installation {installation}; rotate it there")]
    ManagedElsewhere { app: String, installation: String },
    /// The API server refused the app's Secret as invalid (422): the spec asks for something a
    /// Secret cannot hold (e.g. annotations over 256 KiB in all). `message` is the API server's.
    #[error("the API server refused Secret {secret}: {message}")]
    SecretRejected { secret: String, message: String },
    /// Another rotation of the same app won the race (resourceVersion precondition).
    #[error("OAuthApp {0} was rotated or changed concurrently; retry the request")]
    Conflict(String),
    /// What a rotation was decided on is no longer current: its Secret write's resourceVersion
    /// precondition failed (or the Secret showed another writer between its two writes), so
    /// nothing was written. Read fresh and decide again. A conflict too ([`Error::is_conflict`]).
    #[error("OAuthApp {0} was rotated or changed concurrently; retry the request")]
    StaleView(String),
    /// argon2 failed (bad parameters or a malformed stored hash).
    #[error("hashing failed: {0}")]
    Hash(#[from] HashError),
    /// The OS random source failed.
    #[error("generating a secret failed: {0}")]
    Random(#[from] GenerateError),
    /// The app has no uid yet (it was never stored by the API server).
    #[error("OAuthApp {0} has no metadata.uid")]
    MissingUid(String),
    /// A blocking task (hashing) panicked or was cancelled.
    #[error("internal error: {0}")]
    Internal(String),
    /// This replica stepped down (its Lease was not renewed in time): the controller's write
    /// was not made.
    #[error("this replica is no longer the leader; the write was not made")]
    NotLeader,
    /// A rotation wrote its Secret, and then its status write failed (not for a conflict: the
    /// Secret still holds the new secret). The status is completed from the Secret by a
    /// reconcile (invariant 2); `written` carries the new secret for the one caller that may
    /// still be shown it (a REST create). Its text names neither.
    #[error(
        "OAuthApp {app}: the new secret is in its Secret, but the status write failed ({source}); the controller completes the status from the Secret"
    )]
    StatusPending {
        app: String,
        #[source]
        source: Box<Error>,
        written: Box<crate::model::rotated::Written>,
    },
    /// The app's identity provider (`spec.providerRef`) could not be given the new secret, or
    /// checked: a rotation that fails here has written nothing.
    #[error(transparent)]
    Provider(#[from] ProviderError),
}

impl Error {
    /// Every [`Error::reason`], for metrics that want a zero for each (so a dashboard or an alert
    /// sees the series before the first error). A new variant's reason goes here too.
    pub const REASONS: [&'static str; 12] = [
        "ManagedElsewhere",
        "KubeError",
        "NotFound",
        "SecretConflict",
        "SecretRejected",
        "Conflict",
        "HashError",
        "RandomError",
        "MissingUid",
        "Internal",
        "StatusPending",
        "ProviderError",
    ];

    /// A short fixed name for metrics labels and log fields.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube(_) => "KubeError",
            Error::NotFound(_) => "NotFound",
            Error::SecretConflict { .. } => "SecretConflict",
            Error::ManagedElsewhere { .. } => "ManagedElsewhere",
            Error::SecretRejected { .. } => "SecretRejected",
            Error::Conflict(_) | Error::StaleView(_) => "Conflict",
            Error::Hash(_) => "HashError",
            Error::Random(_) => "RandomError",
            Error::MissingUid(_) => "MissingUid",
            Error::Internal(_) => "Internal",
            Error::NotLeader => "NotLeader",
            Error::StatusPending { .. } => "StatusPending",
            Error::Provider(_) => "ProviderError",
        }
    }

    /// True for a 409 from the API server (a failed resourceVersion precondition or AlreadyExists).
    pub fn is_conflict(&self) -> bool {
        matches!(self, Error::Conflict(_) | Error::StaleView(_))
            || matches!(self, Error::Kube(kube::Error::Api(s)) if s.code == 409)
    }
}

impl From<kube::Error> for Error {
    fn from(e: kube::Error) -> Self {
        Error::Kube(e)
    }
}

/// True when `e` is an API answer with HTTP status `code`.
pub fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

/// Replaces anything shaped like a client secret (`oas_` + 49 base62 characters) with a marker.
pub fn redact(text: &str) -> String {
    const BODY: usize = crate::model::secret::SECRET_LEN - crate::model::secret::SECRET_PREFIX.len();
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find(crate::model::secret::SECRET_PREFIX) {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + crate::model::secret::SECRET_PREFIX.len()..];
        let run = after.bytes().take_while(u8::is_ascii_alphanumeric).count();
        if run >= BODY {
            out.push_str("oas_<redacted>");
            rest = &after[run..];
        } else {
            out.push_str(crate::model::secret::SECRET_PREFIX);
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// What went wrong at (or on the way to) a provider. The text never holds a secret or the
/// provider's credentials; `reason()` is the condition reason.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The OAuthProvider named by `spec.providerRef` does not exist.
    #[error("OAuthProvider {0} not found; create it, or fix spec.providerRef")]
    NotFound(String),
    /// The credentials Secret, or a key in it, is missing.
    #[error(
        "the credentials of OAuthProvider {provider} are missing: {what}; create the Secret or fix spec.keycloak.credentialsSecretRef"
    )]
    CredentialsMissing { provider: String, what: String },
    /// The provider could not be reached (connection refused, timeout, 5xx).
    #[error("identity provider at {url} could not be reached: {detail}; the operator retries")]
    Unreachable { url: String, detail: String },
    /// A TLS connection to the provider failed (most often: its certificate is not trusted).
    #[error(
        "TLS with identity provider at {url} failed: {detail}; if its certificate is issued by a private CA, put that CA in spec.keycloak.caBundle"
    )]
    Tls { url: String, detail: String },
    /// `spec.keycloak.caBundle` holds no usable PEM certificate.
    #[error(
        "spec.keycloak.caBundle of the provider for {url} is not usable: {detail}; put PEM CA certificates there"
    )]
    InvalidCaBundle { url: String, detail: String },
    /// The provider refused the operator's credentials (or they may not manage clients).
    #[error(
        "identity provider at {url} refused the service account: {detail}; check the credentials Secret and that the account has the realm-management role manage-clients"
    )]
    Unauthorized { url: String, detail: String },
    /// The provider took the service account's credentials but refused it the admin API (HTTP
    /// 403: in Keycloak, it lacks the realm-management role `manage-clients`).
    #[error(
        "identity provider at {url} authenticated the service account but does not let it manage clients: {detail}; give it the realm-management role manage-clients in the realm; the operator retries"
    )]
    Forbidden { url: String, detail: String },
    /// A client with the app's client id exists and was not created by the operator for this app.
    #[error(
        "a client with id {client_id} exists at the identity provider and was not created by the operator for this app; delete it there, or choose another spec.clientId"
    )]
    ClientConflict { client_id: String },
    /// The provider answered something else unexpected (a 4xx it should not send).
    #[error("identity provider at {url} refused the request: {detail}")]
    Rejected { url: String, detail: String },
}

impl ProviderError {
    /// The condition (and Event) reason.
    pub fn reason(&self) -> &'static str {
        match self {
            ProviderError::NotFound(_) => "ProviderNotFound",
            ProviderError::CredentialsMissing { .. } => "CredentialsMissing",
            ProviderError::Unreachable { .. } => "Unreachable",
            ProviderError::Tls { .. } => "TLSHandshakeFailed",
            ProviderError::InvalidCaBundle { .. } => "InvalidCABundle",
            ProviderError::Unauthorized { .. } => "Unauthorized",
            ProviderError::Forbidden { .. } => "Forbidden",
            ProviderError::ClientConflict { .. } => "ClientConflict",
            ProviderError::Rejected { .. } => "Rejected",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::secret::ClientSecret;

    #[test]
    fn every_reason_is_listed_in_reasons() {
        let s = String::new;
        for e in [
            Error::NotFound(s()),
            Error::SecretConflict {
                secret: s(),
                app: s(),
            },
            Error::SecretRejected {
                secret: s(),
                message: s(),
            },
            Error::Conflict(s()),
            Error::StaleView(s()),
            Error::Hash(crate::model::secret::HashError::IncompletePhc),
            Error::MissingUid(s()),
            Error::Internal(s()),
        ] {
            assert!(Error::REASONS.contains(&e.reason()), "{}", e.reason());
        }
    }

    #[test]
    fn redact_removes_secrets_and_keeps_the_rest() {
        let s = ClientSecret::generate().expect("secret");
        let text = format!("bad value \"{}\" in data; hint oas_AbCd...Xz12", s.expose());
        let red = redact(&text);
        assert!(!red.contains(s.expose()), "{red}");
        assert_eq!(red, "bad value \"oas_<redacted>\" in data; hint oas_AbCd...Xz12");
    }

    #[test]
    fn errors_name_what_failed_and_what_to_do() {
        let e = Error::SecretConflict {
            secret: "demo-oauth-client".into(),
            app: "demo".into(),
        };
        assert_eq!(e.reason(), "SecretConflict");
        assert!(e.to_string().contains("delete it"), "{e}");
    }
}
