//! The REST API's errors: every error answer is JSON `{code, message}` (the seed's
//! `RestErrorResponse`), whatever produced it — a handler, an extractor, the router (404, 405),
//! a body limit (413), a panic (500) or an unreachable API server (503).
//!
//! The seed's `ErrorCode` enum has seven values and the rotate operation references it, so it is
//! kept exactly; HTTP statuses without a code of their own map to the closest one: 405, 413 and
//! 415 to `BAD_REQUEST` (the request is wrong), 503 to `INTERNAL_SERVER_ERROR` (the server cannot
//! answer now; `Retry-After` says when to try again).
//!
//! Messages never carry a token or a client secret: tokens never enter an error, and text that
//! comes from the API server passes through [`redact`].

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tracing::{error, warn};
use utoipa::ToSchema;

use crate::runtime::error::{Error, redact};

// The seed's `ErrorCode` (no doc comment: the seed's schema has no description).
#[derive(Serialize, Deserialize, ToSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    BadRequest,
    NotFound,
    Conflict,
    Forbidden,
    Unauthorized,
    TooManyRequests,
    InternalServerError,
}

impl ErrorCode {
    /// The code for an HTTP status that has no error of its own in the seed.
    pub fn for_status(status: StatusCode) -> Self {
        match status {
            StatusCode::UNAUTHORIZED => Self::Unauthorized,
            StatusCode::FORBIDDEN => Self::Forbidden,
            StatusCode::NOT_FOUND => Self::NotFound,
            StatusCode::CONFLICT => Self::Conflict,
            StatusCode::TOO_MANY_REQUESTS => Self::TooManyRequests,
            s if s.is_client_error() => Self::BadRequest,
            _ => Self::InternalServerError,
        }
    }
}

// The seed's `RestErrorResponse` (no doc comments: the seed's schema has no descriptions).
#[derive(Serialize, Deserialize, ToSchema, Clone, Debug, PartialEq, Eq)]
pub struct RestErrorResponse {
    pub code: ErrorCode,
    pub message: String,
}

/// An error answer of the REST API.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
    /// Seconds for `Retry-After` (429 and 503).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            code: ErrorCode::for_status(status),
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, message)
    }

    pub fn too_many_requests(message: impl Into<String>, retry_after_secs: u64) -> Self {
        Self {
            retry_after: Some(retry_after_secs.max(1)),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, message)
        }
    }

    /// A failure whose details are in the operator's log, not in the answer.
    /// The same answer, with `suffix` added to its message (what became of the request).
    pub fn with_suffix(mut self, suffix: &str) -> Self {
        self.message.push_str(suffix);
        self
    }

    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error; the operator's log has the details",
        )
    }

    /// The Kubernetes API server cannot be reached (or the caches are not synced yet).
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self {
            retry_after: Some(1),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
        }
    }

    /// Maps a failed Kubernetes call made with the operator's own identity: unreachable or
    /// overloaded → 503, anything else → 500 (logged, never shown).
    pub fn from_kube(what: &str, e: &kube::Error) -> Self {
        if is_unavailable(e) {
            warn!(error = %redact(&e.to_string()), "{what}: Kubernetes API server unavailable");
            Self::unavailable("the Kubernetes API server is unavailable; retry later")
        } else {
            error!(error = %redact(&e.to_string()), "{what} failed");
            Self::internal()
        }
    }

    /// Maps an error of `rotation::rotate` (and the reads around it).
    pub fn from_rotation(what: &str, e: Error) -> Self {
        if let Error::StatusPending { source, .. } = e {
            return Self::from_rotation(what, *source);
        }
        match &e {
            Error::NotFound(_) => Self::not_found(e.to_string()),
            Error::SecretConflict { .. }
            | Error::ManagedElsewhere { .. }
            | Error::SecretRejected { .. }
            | Error::Conflict(_)
            | Error::StaleView(_) => Self::conflict(e.to_string()),
            _ if e.is_conflict() => {
                Self::conflict("the OAuthApp was changed concurrently; retry the request")
            }
            Error::Kube(kube::Error::Api(s)) if s.code == 404 => {
                Self::not_found("the OAuthApp no longer exists")
            }
            Error::Kube(k) => Self::from_kube(what, k),
            // Nothing was rotated: the identity provider did not take the new secret.
            Error::Provider(p) => Self::unavailable(format!(
                "{what} failed at the identity provider, nothing was rotated or revoked: {p}"
            )),
            _ => {
                error!(error = %e, reason = e.reason(), "{what} failed");
                Self::internal()
            }
        }
    }
}

/// True when a Kubernetes call failed because the API server could not be reached or asked to
/// come back later (transport errors, 429 and 5xx answers other than 500).
pub fn is_unavailable(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => matches!(s.code, 429 | 502 | 503 | 504),
        kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::ReadEvents(_) => true,
        _ => false,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = RestErrorResponse {
            code: self.code,
            message: redact(&self.message),
        };
        let mut response = (self.status, Json(body)).into_response();
        let headers = response.headers_mut();
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// Turns any error answer that is not JSON yet (axum's own 405, a 413 from a body limit, a 415,
/// ...) into the `{code, message}` shape, keeping its status and other headers (e.g. `Allow`).
pub async fn json_errors(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return response;
    }
    let (mut parts, _) = response.into_parts();
    parts.headers.remove(header::CONTENT_TYPE);
    parts.headers.remove(header::CONTENT_LENGTH);
    let message = match status {
        StatusCode::METHOD_NOT_ALLOWED => "method not allowed on this path".to_string(),
        StatusCode::PAYLOAD_TOO_LARGE => "request body too large".to_string(),
        s => s.canonical_reason().unwrap_or("error").to_lowercase(),
    };
    let mut fresh = ApiError::new(status, message).into_response();
    for (name, value) in parts.headers.iter() {
        fresh.headers_mut().entry(name).or_insert(value.clone());
    }
    fresh
}

/// The answer to a panic in a handler: a 500 with no detail (the panic message could hold
/// anything).
pub fn panic_response(_panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    error!("a REST API handler panicked");
    ApiError::internal().into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_serialize_as_the_seed_spells_them() {
        let all = [
            (ErrorCode::BadRequest, "BAD_REQUEST"),
            (ErrorCode::NotFound, "NOT_FOUND"),
            (ErrorCode::Conflict, "CONFLICT"),
            (ErrorCode::Forbidden, "FORBIDDEN"),
            (ErrorCode::Unauthorized, "UNAUTHORIZED"),
            (ErrorCode::TooManyRequests, "TOO_MANY_REQUESTS"),
            (ErrorCode::InternalServerError, "INTERNAL_SERVER_ERROR"),
        ];
        for (code, name) in all {
            assert_eq!(serde_json::to_value(code).expect("serializes"), name);
        }
    }

    #[test]
    fn statuses_without_a_code_map_to_the_closest() {
        assert_eq!(
            ErrorCode::for_status(StatusCode::METHOD_NOT_ALLOWED),
            ErrorCode::BadRequest
        );
        assert_eq!(
            ErrorCode::for_status(StatusCode::PAYLOAD_TOO_LARGE),
            ErrorCode::BadRequest
        );
        assert_eq!(
            ErrorCode::for_status(StatusCode::SERVICE_UNAVAILABLE),
            ErrorCode::InternalServerError
        );
    }

    #[test]
    fn a_401_asks_for_a_bearer_token_and_a_429_says_when_to_retry() {
        let r = ApiError::unauthorized("no token").into_response();
        assert_eq!(r.headers()[header::WWW_AUTHENTICATE], "Bearer");
        let r = ApiError::too_many_requests("slow down", 0).into_response();
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
    }

    #[tokio::test]
    async fn a_secret_in_a_message_never_reaches_the_body() {
        let s = crate::model::secret::ClientSecret::generate().expect("secret");
        let r = ApiError::bad_request(format!("bad value {}", s.expose())).into_response();
        let body = axum::body::to_bytes(r.into_body(), 1 << 16).await.expect("body");
        let body: RestErrorResponse = serde_json::from_slice(&body).expect("json");
        assert_eq!(body.code, ErrorCode::BadRequest);
        assert!(!body.message.contains(s.expose()), "{}", body.message);
    }
}
