//! The `OAuthProvider` custom resource (`oauthapp.io/v1alpha1`): an identity provider that apps
//! with `spec.providerRef` are registered in. Every field carries a doc comment (`kubectl explain`).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use serde::{Deserialize, Serialize};

/// An identity provider (today: a Keycloak realm) in which OAuthApps that name it in
/// `spec.providerRef` are registered as confidential clients, their secret kept equal to the
/// one in the app's Secret.
// kube-derive expands each printcolumn into attributes clippy sees as duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "oauthapp.io",
    version = "v1alpha1",
    kind = "OAuthProvider",
    plural = "oauthproviders",
    singular = "oauthprovider",
    category = "oauth",
    namespaced,
    status = "OAuthProviderStatus",
    derive = "Default",
    derive = "PartialEq",
    doc = "An identity provider (a Keycloak realm) that OAuthApps are registered in.",
    printcolumn(name = "URL", type_ = "string", json_path = ".spec.keycloak.url"),
    printcolumn(name = "Realm", type_ = "string", json_path = ".spec.keycloak.realm"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct OAuthProviderSpec {
    /// A Keycloak realm. The only kind of provider so far.
    pub keycloak: KeycloakProvider,

    /// What becomes of the client of a deleted app. `Delete` (the default): the operator deletes
    /// the client once the app and its Secret are both gone (an app with
    /// `spec.secret.deletionPolicy: Retain` keeps its Secret, and so its client). `Retain`: the
    /// operator never deletes a client in this provider; clients of deleted apps stay, holding
    /// their last secret, until someone deletes them there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_policy: Option<ClientDeletionPolicy>,
}

/// `spec.deletionPolicy` of an OAuthProvider.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ClientDeletionPolicy {
    /// The client of a deleted app is deleted before the app is gone (its finalizer), unless the app keeps its Secret (`spec.secret.deletionPolicy: Retain`).
    #[default]
    Delete,
    /// Clients of deleted apps are kept at the provider.
    Retain,
}

impl OAuthProvider {
    /// `spec.deletionPolicy`, `Delete` when unset.
    pub fn deletion_policy(&self) -> ClientDeletionPolicy {
        self.spec.deletion_policy.unwrap_or_default()
    }
}

/// Where a Keycloak realm is, and the service account the operator manages its clients with.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KeycloakProvider {
    /// Base URL of Keycloak, without a trailing path (e.g. `https://sso.example.com`). The
    /// operator calls `<url>/realms/<realm>/protocol/openid-connect/token` and
    /// `<url>/admin/realms/<realm>/clients`. https, or http for a loopback or in-cluster address.
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = Rule::new(
        "isURL(self) && (url(self).getScheme() == 'https' || url(self).getScheme() == 'http')"
    ).message("spec.keycloak.url must be an absolute http or https URL"))]
    pub url: String,

    /// The realm the apps are registered in. The service account below must belong to it.
    #[schemars(length(min = 1, max = 255), regex(pattern = r"^[^/?#]+$"))]
    pub realm: String,

    /// A Secret in this namespace holding the client id and secret of a Keycloak client with a
    /// service account (client credentials grant) that holds the realm-management role
    /// `manage-clients` in this realm. The operator reads it; it never logs or publishes it.
    pub credentials_secret_ref: CredentialsSecretRef,

    /// PEM certificates (one or more `-----BEGIN CERTIFICATE-----` blocks) of the CAs that may
    /// issue Keycloak's https certificate, for a Keycloak behind a private CA. Trusted in
    /// addition to the system's roots, not instead of them. Not secret (a CA certificate), so
    /// inline. When the certificate is not trusted the provider is `Ready=False` with reason
    /// `TLSHandshakeFailed`; a bundle that holds no certificate, reason `InvalidCABundle`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 65536))]
    #[x_kube(validation = Rule::new("self.contains('-----BEGIN CERTIFICATE-----')")
        .message("spec.keycloak.caBundle must hold PEM certificates (-----BEGIN CERTIFICATE-----)"))]
    pub ca_bundle: Option<String>,
}

/// A Secret with the service account's client credentials, and the keys they are under.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsSecretRef {
    /// Name of the Secret, in the OAuthProvider's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key of the service account's client id in the Secret. Default: `client_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub client_id_key: Option<String>,
    /// Key of the service account's client secret in the Secret. Default: `client_secret`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub client_secret_key: Option<String>,
}

impl CredentialsSecretRef {
    /// The key of the client id (`client_id` unless set).
    pub fn client_id_key(&self) -> &str {
        self.client_id_key.as_deref().unwrap_or("client_id")
    }
    /// The key of the client secret (`client_secret` unless set).
    pub fn client_secret_key(&self) -> &str {
        self.client_secret_key.as_deref().unwrap_or("client_secret")
    }
}

/// The observed state of an OAuthProvider, written only by the operator.
#[derive(Serialize, Deserialize, schemars::JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OAuthProviderStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Current conditions. `Ready` is True when the operator could authenticate to the realm
    /// with the service account's credentials; otherwise its reason says why not
    /// (`CredentialsMissing`, `Unreachable`, `TLSHandshakeFailed`, `InvalidCABundle`,
    /// `Unauthorized`, `Forbidden`, `Rejected`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// `spec.providerRef` of an OAuthApp: the OAuthProvider, in the app's namespace, that the app is
/// registered in.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ProviderRef {
    /// Name of the OAuthProvider, in the app's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// The name of the OAuthProvider CRD.
pub const CRD_NAME: &str = "oauthproviders.oauthapp.io";

/// The CustomResourceDefinition as YAML, exactly as `crds/oauthproviders.oauthapp.io.yaml` holds it.
pub fn crd_yaml() -> Result<String, serde_norway::Error> {
    let yaml = serde_norway::to_string(&OAuthProvider::crd())?;
    Ok(format!(
        "# Generated by `oauthapp-operator crd oauthproviders`; do not edit (a test fails when it drifts).\n{yaml}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_crd_files_match_the_code() {
        let generated = crd_yaml().expect("crd yaml");
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        for file in [
            "crds/oauthproviders.oauthapp.io.yaml",
            "charts/oauthapp-operator/crds/oauthproviders.oauthapp.io.yaml",
        ] {
            let on_disk = std::fs::read_to_string(root.join(file)).expect(file);
            assert!(on_disk == generated, "{file} is out of date: run `make crds`");
        }
    }

    #[test]
    fn every_spec_and_status_field_has_a_description() {
        let crd = serde_json::to_value(OAuthProvider::crd()).expect("crd json");
        let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        fn walk(path: &str, node: &serde_json::Value, missing: &mut Vec<String>) {
            let Some(props) = node.get("properties").and_then(|p| p.as_object()) else {
                return;
            };
            for (name, child) in props {
                let path = format!("{path}.{name}");
                if child.get("description").is_none() && !path.contains("conditions") {
                    missing.push(path.clone());
                }
                walk(&path, child, missing);
            }
        }
        let mut missing = Vec::new();
        walk("spec", &schema["properties"]["spec"], &mut missing);
        walk("status", &schema["properties"]["status"], &mut missing);
        assert!(missing.is_empty(), "fields without a doc comment: {missing:?}");
    }

    #[test]
    fn credential_keys_default_to_the_apps_own_secret_keys() {
        let r = CredentialsSecretRef {
            name: "kc".into(),
            ..Default::default()
        };
        assert_eq!(
            (r.client_id_key(), r.client_secret_key()),
            ("client_id", "client_secret")
        );
    }
}
