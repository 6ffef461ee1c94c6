//! The JSON the REST API speaks. `OAuthApp` keeps Meteroid's field names where the meaning is
//! the same; `OAuthAppId`, `RotatedSecret`, `RestErrorResponse` and `ErrorCode` are the seed's
//! schemas, exactly (so they carry no doc comments of their own: those would become
//! descriptions the seed does not have).

use kube::ResourceExt;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::model::crd::OAuthApp;
use crate::model::record;

// The seed's `OAuthAppId`: `app_` + base62 of the resource's uid (see `crate::model::id`); a bare UUID
// is accepted too.
#[derive(Serialize, Deserialize, ToSchema, Clone, Debug, PartialEq, Eq)]
#[schema(value_type = String, format = "MeteroidId", examples("app_7n42DGM5Tflk9n8mt7Fhc7"))]
pub struct OAuthAppId(pub String);

/// Result of rotating a client secret
#[derive(Serialize, Deserialize, ToSchema, Clone, PartialEq, Eq)]
pub struct RotatedSecret {
    pub client_secret: String,
    pub client_secret_hint: String,
}

// The plaintext is zeroed when the answer is dropped.
impl Drop for RotatedSecret {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.client_secret);
    }
}

// Never print the secret.
impl std::fmt::Debug for RotatedSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RotatedSecret")
            .field("client_secret_hint", &self.client_secret_hint)
            .finish_non_exhaustive()
    }
}

/// An OAuth application (an `OAuthApp` resource).
#[derive(Serialize, Deserialize, ToSchema, Clone, Debug, PartialEq, Eq)]
#[schema(as = OAuthApp)]
pub struct OAuthAppView {
    /// The app id: `app_` + base62 of the resource's uid.
    pub id: OAuthAppId,
    /// Display name (`spec.displayName`), or the resource name.
    pub name: String,
    /// The OAuth client id written to the Secret.
    pub client_id: String,
    /// A short, non-secret hint of the current client secret; null until the first one exists.
    pub client_secret_hint: Option<String>,
    /// Redirect URIs the authorization server may send the user back to.
    pub redirect_uris: Vec<String>,
    /// OAuth scopes the application may request.
    pub scopes: Vec<String>,
    /// True when its Secret holds the secret its status describes: the app is Ready, or only
    /// its schedule is unusable (Ready=False, reason InvalidSchedule, the secret still works).
    pub is_active: bool,
    /// When the resource was created (RFC 3339).
    #[schema(format = DateTime)]
    pub created_at: String,
    /// When the secret was last rotated, or the resource created (RFC 3339).
    #[schema(format = DateTime)]
    pub updated_at: String,
    /// The Kubernetes namespace of the resource.
    pub namespace: String,
    /// The Kubernetes name of the resource (`metadata.name`).
    pub resource_name: String,
    /// When the current secret was generated (RFC 3339); null until the first one exists.
    #[schema(format = DateTime)]
    pub last_rotated_at: Option<String>,
    /// The hint of the previous secret while it is still valid (`spec.rotation.gracePeriod`);
    /// absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_client_secret_hint: Option<String>,
    /// When the previous secret stops being valid (RFC 3339); absent without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    pub previous_secret_expires_at: Option<String>,
}

impl OAuthAppView {
    pub fn of(app: &OAuthApp) -> Self {
        let status = app.status.clone().unwrap_or_default();
        let created_at = app
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.to_string())
            .unwrap_or_default();
        let last_rotated_at = status.last_rotation_time.as_ref().map(|t| t.0.to_string());
        Self {
            id: OAuthAppId(
                status
                    .app_id
                    .clone()
                    .or_else(|| record::app_id(app))
                    .unwrap_or_default(),
            ),
            name: app
                .spec
                .display_name
                .clone()
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| app.name_any()),
            client_id: status
                .client_id
                .clone()
                .or_else(|| record::client_id(app))
                .unwrap_or_default(),
            client_secret_hint: status.client_secret_hint.clone(),
            redirect_uris: app.spec.redirect_uris.clone(),
            scopes: app.spec.scopes.clone(),
            is_active: app.ready_condition().is_some_and(|c| {
                c.status == "True" || c.reason == crate::model::status::reasons::INVALID_SCHEDULE
            }),
            updated_at: last_rotated_at.clone().unwrap_or_else(|| created_at.clone()),
            created_at,
            namespace: app.namespace().unwrap_or_default(),
            resource_name: app.name_any(),
            last_rotated_at,
            previous_client_secret_hint: status
                .previous_secret
                .as_ref()
                .map(|p| p.client_secret_hint.clone()),
            previous_secret_expires_at: status
                .previous_secret
                .as_ref()
                .map(|p| p.expires_at.0.to_string()),
        }
    }
}

/// Client credentials to check (`POST /api/v1/oauth-apps/verify`).
#[derive(Deserialize, ToSchema, Clone)]
pub struct VerifyRequest {
    /// The OAuth client id: an app id, or a `spec.clientId`.
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = r"^(app_[A-Za-z0-9]{1,22}|[A-Za-z0-9][A-Za-z0-9._:-]{0,127})$"
    )]
    pub client_id: String,
    /// The client secret presented by the client.
    #[schema(min_length = 1, max_length = 256)]
    pub client_secret: String,
}

// The presented secret is zeroed when the request is dropped, and never printed.
impl Drop for VerifyRequest {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.client_secret);
    }
}

impl std::fmt::Debug for VerifyRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyRequest")
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

/// Which of an app's secrets matched.
#[derive(Serialize, Deserialize, ToSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MatchedSecret {
    /// The current secret.
    Current,
    /// The previous secret, within its grace period.
    Previous,
}

/// The answer of a verification: `{"valid": false}`, or which secret of which app matched.
#[derive(Serialize, Deserialize, ToSchema, Clone, Debug, PartialEq, Eq)]
pub struct VerifyResult {
    /// True when the secret is one of the app's valid secrets.
    pub valid: bool,
    /// The app the client id belongs to (only when valid).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_id: Option<String>,
    /// The namespace of that app (only when valid): a verifier serving several namespaces can
    /// pin a client id to the one it belongs in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Which secret matched (only when valid).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<MatchedSecret>,
    /// When the matched secret stops being valid (RFC 3339): null for the current secret; only
    /// when valid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<Option<String>>,
}

impl VerifyResult {
    pub fn invalid() -> Self {
        Self {
            valid: false,
            app_id: None,
            namespace: None,
            secret: None,
            expires_at: None,
        }
    }
}

/// One page of the apps the caller may list, ordered by namespace and resource name.
#[derive(Serialize, Deserialize, ToSchema, Clone, Debug, PartialEq, Eq)]
#[schema(as = OAuthAppList)]
pub struct OAuthAppList {
    pub data: Vec<OAuthAppView>,
    /// The `continue` token for the next page (opaque); absent on the last page. A page may
    /// hold fewer than `limit` apps, even none, and still have a next one.
    #[serde(rename = "continue", default, skip_serializing_if = "Option::is_none")]
    pub continue_token: Option<String>,
}

/// A new OAuth application.
#[derive(Serialize, Deserialize, ToSchema, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CreateOAuthApp {
    /// Name of the application. Without `resource_name` it is also the resource name
    /// (`metadata.name`), and must be a valid one: lowercase letters, digits, `-` and `.`,
    /// starting and ending with a letter or digit.
    #[schema(min_length = 1, max_length = 240)]
    pub name: String,
    /// The resource name (`metadata.name`); `name` then becomes the display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(
        min_length = 1,
        max_length = 240,
        pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
    )]
    pub resource_name: Option<String>,
    /// Redirect URIs: absolute https URLs, or http on localhost or 127.0.0.1.
    pub redirect_uris: Vec<String>,
    /// OAuth scopes the application may request.
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
}

/// A created OAuth application and its first client secret: the only time the secret is shown.
#[derive(Serialize, Deserialize, ToSchema, Clone, PartialEq, Eq)]
pub struct CreatedOAuthApp {
    pub app: OAuthAppView,
    /// The client secret. It is not shown again: store it now, or rotate to get a new one.
    pub client_secret: String,
}

// The plaintext is zeroed when the answer is dropped.
impl Drop for CreatedOAuthApp {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.client_secret);
    }
}

// Never print the secret.
impl std::fmt::Debug for CreatedOAuthApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedOAuthApp")
            .field("app", &self.app)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
    use kube::api::ObjectMeta;

    use super::*;
    use crate::model::crd::{OAuthAppSpec, OAuthAppStatus};

    fn app() -> OAuthApp {
        let created: jiff::Timestamp = "2026-11-01T10:00:00Z".parse().expect("time");
        OAuthApp {
            metadata: ObjectMeta {
                name: Some("billing-portal".into()),
                namespace: Some("team-a".into()),
                uid: Some("ffffffff-ffff-ffff-ffff-ffffffffffff".into()),
                creation_timestamp: Some(Time(created)),
                ..Default::default()
            },
            spec: OAuthAppSpec {
                redirect_uris: vec!["https://billing.example.com/cb".into()],
                scopes: vec!["invoices:read".into()],
                ..Default::default()
            },
            status: None,
        }
    }

    #[test]
    fn a_new_app_shows_its_id_and_creation_time() {
        let view = OAuthAppView::of(&app());
        assert_eq!(view.id.0, "app_7n42DGM5Tflk9n8mt7Fhc7");
        assert_eq!(view.client_id, "app_7n42DGM5Tflk9n8mt7Fhc7");
        assert_eq!(view.name, "billing-portal");
        assert_eq!(view.resource_name, "billing-portal");
        assert_eq!(view.namespace, "team-a");
        assert!(!view.is_active);
        assert_eq!(view.client_secret_hint, None);
        assert_eq!(view.created_at, "2026-11-01T10:00:00Z");
        assert_eq!(view.updated_at, view.created_at);
        assert_eq!(view.last_rotated_at, None);
    }

    #[test]
    fn a_rotated_app_shows_its_hint_display_name_and_rotation_time() {
        let mut app = app();
        app.spec.display_name = Some("Billing portal".into());
        let rotated: jiff::Timestamp = "2026-11-26T19:00:00Z".parse().expect("time");
        app.status = Some(OAuthAppStatus {
            client_id: Some("billing".into()),
            client_secret_hint: Some("oas_AbCd...Xz12".into()),
            last_rotation_time: Some(Time(rotated)),
            conditions: vec![Condition {
                type_: "Ready".into(),
                status: "True".into(),
                last_transition_time: Time(rotated),
                message: String::new(),
                observed_generation: None,
                reason: "SecretReady".into(),
            }],
            ..Default::default()
        });
        let view = OAuthAppView::of(&app);
        let mut unusable_schedule = app.clone();
        if let Some(c) = unusable_schedule
            .status
            .as_mut()
            .and_then(|s| s.conditions.first_mut())
        {
            c.status = "False".into();
            c.reason = "InvalidSchedule".into();
        }
        assert!(
            OAuthAppView::of(&unusable_schedule).is_active,
            "an unusable schedule leaves the secret working"
        );
        let mut conflict = unusable_schedule.clone();
        if let Some(c) = conflict.status.as_mut().and_then(|s| s.conditions.first_mut()) {
            c.reason = "SecretConflict".into();
        }
        assert!(!OAuthAppView::of(&conflict).is_active);
        assert_eq!(view.name, "Billing portal");
        assert_eq!(view.resource_name, "billing-portal");
        assert_eq!(view.client_id, "billing");
        assert!(view.is_active);
        assert_eq!(view.client_secret_hint.as_deref(), Some("oas_AbCd...Xz12"));
        assert_eq!(view.updated_at, "2026-11-26T19:00:00Z");
        assert_eq!(view.last_rotated_at.as_deref(), Some("2026-11-26T19:00:00Z"));
    }
}
