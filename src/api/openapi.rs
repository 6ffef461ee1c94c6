//! The OpenAPI 3.1 document of the REST API, generated from the handlers and types.
//! `docs/openapi.json` holds a copy; tests check it is current and that the rotate operation is
//! the seed's (`../shared/seed/rotate-client-secret.openapi.md`, with a copy under
//! `tests/fixtures/`).

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::error::{ErrorCode, RestErrorResponse};
use super::model::{
    CreateOAuthApp, CreatedOAuthApp, MatchedSecret, OAuthAppId, OAuthAppList, OAuthAppView, RotatedSecret,
    VerifyRequest, VerifyResult,
};
use super::{handlers, verify};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "oauthapp-operator",
        description = "Rotate, list, get, create and delete the OAuth applications (`OAuthApp` resources) \
            of a Kubernetes cluster. Callers authenticate with a Kubernetes bearer token; RBAC on \
            `oauthapps` and `oauthapps/rotate` (group `oauthapp.io`) decides what they may do.",
        license(name = "Apache-2.0", identifier = "Apache-2.0")
    ),
    paths(
        handlers::list_oauth_apps,
        handlers::create_oauth_app,
        handlers::get_oauth_app,
        handlers::delete_oauth_app,
        handlers::rotate_client_secret,
        handlers::revoke_previous_secret,
        verify::verify_client_credentials,
    ),
    components(schemas(
        OAuthAppId,
        RotatedSecret,
        RestErrorResponse,
        ErrorCode,
        OAuthAppView,
        OAuthAppList,
        CreateOAuthApp,
        CreatedOAuthApp,
        VerifyRequest,
        VerifyResult,
        MatchedSecret
    )),
    modifiers(&BearerAuth),
    tags((name = handlers::TAG, description = "Manage OAuth applications and rotate their client secrets"))
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer_auth",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The OpenAPI document as pretty JSON (what `GET /api-docs/openapi.json` serves and
/// `oauthapp-operator openapi` prints), with a final newline.
pub fn openapi_json() -> String {
    let mut json = ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    json.push('\n');
    json
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use serde_json::Value;

    use super::*;

    const ROTATE: &str = "/api/v1/oauth-apps/{id}/rotate";
    const SEED_SCHEMAS: [&str; 4] = ["OAuthAppId", "RotatedSecret", "RestErrorResponse", "ErrorCode"];

    fn ours() -> Value {
        serde_json::from_str(&openapi_json()).expect("the document is JSON")
    }

    /// The OpenAPI YAML block of a seed page, as JSON.
    fn seed(path: &Path) -> Value {
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let start = text.find("````yaml").expect("a ````yaml block");
        let body = &text[start..];
        let body = &body[body.find('\n').expect("newline") + 1..];
        let end = body.find("\n````").expect("the end of the yaml block");
        serde_norway::from_str(&body[..end]).expect("the seed's YAML parses")
    }

    fn seeds() -> Vec<(PathBuf, Value)> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut paths = vec![root.join("tests/fixtures/rotate-client-secret.openapi.md")];
        // CI has ../shared beside the repo; compare with the original too when it is there.
        let shared = root.join("../shared/seed/rotate-client-secret.openapi.md");
        if shared.exists() {
            paths.push(shared);
        }
        paths.into_iter().map(|p| (p.clone(), seed(&p))).collect()
    }

    #[test]
    fn the_rotate_operation_is_the_seeds() {
        let ours = ours();
        assert_eq!(ours["openapi"], "3.1.0");
        for (path, seed) in seeds() {
            let theirs = &seed["paths"][ROTATE]["post"];
            let mine = &ours["paths"][ROTATE]["post"];
            let keys = theirs.as_object().expect("seed operation").keys();
            for key in keys.filter(|k| *k != "responses" && *k != "parameters") {
                assert_eq!(mine[key], theirs[key], "{key} differs from {}", path.display());
            }
            // The seed's parameters, identical and first; ours adds only optional query
            // parameters (`revoke_previous`), which no seed client sends.
            let their_params = theirs["parameters"].as_array().expect("seed parameters");
            let my_params = mine["parameters"].as_array().expect("parameters");
            assert_eq!(&my_params[..their_params.len()], their_params.as_slice());
            for extra in &my_params[their_params.len()..] {
                assert_eq!(extra["in"], "query", "{extra}");
                assert_ne!(extra["required"], true, "{extra}");
            }
            // The seed's responses, identical; ours adds only error answers the seed lacks.
            let their_responses = theirs["responses"].as_object().expect("seed responses");
            for (status, response) in their_responses {
                assert_eq!(
                    &mine["responses"][status],
                    response,
                    "response {status} differs from {}",
                    path.display()
                );
            }
            for (status, response) in mine["responses"].as_object().expect("responses") {
                if !their_responses.contains_key(status) {
                    assert!(
                        ["400", "403", "409", "500", "503"].contains(&status.as_str()),
                        "unexpected extra response {status}"
                    );
                    assert_eq!(
                        response["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/RestErrorResponse"
                    );
                }
            }
            for name in SEED_SCHEMAS {
                assert_eq!(
                    ours["components"]["schemas"][name],
                    seed["components"]["schemas"][name],
                    "schema {name} differs from {}",
                    path.display()
                );
            }
            assert_eq!(
                ours["components"]["securitySchemes"]["bearer_auth"],
                seed["components"]["securitySchemes"]["bearer_auth"]
            );
        }
    }

    #[test]
    fn the_committed_document_is_current() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.json");
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == openapi_json(),
            "docs/openapi.json is out of date; regenerate it with `make openapi`"
        );
    }

    #[test]
    fn every_operation_is_tagged_secured_and_answers_errors_as_json() {
        let ours = ours();
        for (path, item) in ours["paths"].as_object().expect("paths") {
            for (method, op) in item.as_object().expect("path item") {
                assert_eq!(op["tags"], serde_json::json!(["OAuth Apps"]), "{method} {path}");
                assert_eq!(
                    op["security"],
                    serde_json::json!([{"bearer_auth": []}]),
                    "{method} {path}"
                );
                for status in ["401", "429", "500"] {
                    assert!(
                        op["responses"].get(status).is_some(),
                        "{method} {path} lacks {status}"
                    );
                }
            }
        }
    }
}
