//! The control plane itself: what every other test relies on.

use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, ListParams, ObjectMeta, PostParams},
};

use crate::support::*;

#[tokio::test]
async fn the_api_server_is_the_pinned_version_and_lists_namespaces() {
    let client = admin_client().await;
    let version = client.apiserver_version().await.expect("GET /version");
    assert_eq!(version.git_version, "v1.37.2");
    let namespaces = Api::<Namespace>::all(client)
        .list(&ListParams::default())
        .await
        .expect("list");
    let names: Vec<_> = namespaces.iter().map(|n| n.name_any()).collect();
    assert!(names.contains(&"default".to_string()), "namespaces: {names:?}");
    assert!(
        names.contains(&"kube-system".to_string()),
        "namespaces: {names:?}"
    );
}

#[tokio::test]
async fn a_service_account_token_authenticates_and_rbac_governs_it() {
    let ns = namespace("rbac");
    let cp = control_plane();
    let sa_kubeconfig = service_account_kubeconfig(&ns, "reader");

    // Authenticated as the ServiceAccount: `auth whoami` goes through a real TokenReview path.
    let whoami = cp.kubectl_as(
        &sa_kubeconfig,
        &["auth", "whoami", "-o", "jsonpath={.status.userInfo.username}"],
    );
    assert!(whoami.status.success(), "whoami: {}", stderr(&whoami));
    assert_eq!(stdout(&whoami), format!("system:serviceaccount:{ns}:reader"));

    // No RoleBinding yet: RBAC denies.
    let client = client_from(&sa_kubeconfig).await;
    let cms: Api<ConfigMap> = Api::namespaced(client, &ns);
    let denied = cms
        .list(&ListParams::default())
        .await
        .expect_err("RBAC must deny");
    match denied {
        kube::Error::Api(s) => assert_eq!(s.code, 403, "{s:?}"),
        other => panic!("expected 403, got {other:?}"),
    }

    // Grant list on configmaps: now allowed.
    cp.kubectl_ok(&[
        "create",
        "role",
        "cm-reader",
        "-n",
        &ns,
        "--verb=list",
        "--resource=configmaps",
    ]);
    cp.kubectl_ok(&[
        "create",
        "rolebinding",
        "cm-reader",
        "-n",
        &ns,
        "--role=cm-reader",
        &format!("--serviceaccount={ns}:reader"),
    ]);
    let listed = eventually(
        "RBAC to allow the ServiceAccount",
        Duration::from_secs(30),
        || {
            let cms = cms.clone();
            async move { cms.list(&ListParams::default()).await.ok() }
        },
    )
    .await;
    assert!(
        listed
            .items
            .iter()
            .all(|c| c.namespace().as_deref() == Some(ns.as_str()))
    );
    // Still denied for what the Role does not grant.
    let can_delete = cp.kubectl_as(
        &sa_kubeconfig,
        &["auth", "can-i", "delete", "configmaps", "-n", &ns],
    );
    assert_eq!(stdout(&can_delete).trim(), "no");
}

#[tokio::test]
async fn an_object_whose_owner_is_deleted_is_garbage_collected() {
    let ns = namespace("gc");
    let cms: Api<ConfigMap> = Api::namespaced(admin_client().await, &ns);
    let owner = cms
        .create(
            &PostParams::default(),
            &ConfigMap {
                metadata: ObjectMeta {
                    name: Some("owner".into()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .expect("create owner");
    let child = ConfigMap {
        metadata: ObjectMeta {
            name: Some("child".into()),
            owner_references: Some(vec![OwnerReference {
                api_version: "v1".into(),
                kind: "ConfigMap".into(),
                name: owner.name_any(),
                uid: owner.uid().expect("uid"),
                ..Default::default()
            }]),
            ..Default::default()
        },
        ..Default::default()
    };
    cms.create(&PostParams::default(), &child)
        .await
        .expect("create child");
    cms.delete("owner", &DeleteParams::background())
        .await
        .expect("delete owner");
    eventually(
        "the child to be garbage-collected",
        Duration::from_secs(60),
        || {
            let cms = cms.clone();
            async move { matches!(cms.get_opt("child").await, Ok(None)).then_some(()) }
        },
    )
    .await;
}

#[tokio::test]
async fn a_custom_resource_definition_becomes_established() {
    let cp = control_plane();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("widgets.yaml");
    std::fs::write(
        &file,
        r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.test.oauthapp.io}
spec:
  group: test.oauthapp.io
  names: {kind: Widget, plural: widgets, singular: widget}
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec: {type: object, properties: {size: {type: integer, minimum: 1}}}
"#,
    )
    .expect("write CRD");
    cp.kubectl_ok(&["apply", "-f", file.to_str().expect("utf-8")]);
    cp.kubectl_ok(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/widgets.test.oauthapp.io",
    ]);
    let ns = namespace("crd");
    let widget = dir.path().join("w.yaml");
    std::fs::write(
        &widget,
        "apiVersion: test.oauthapp.io/v1\nkind: Widget\nmetadata: {name: w}\nspec: {size: 0}\n",
    )
    .expect("write widget");
    let rejected = cp.kubectl(&["apply", "-n", &ns, "-f", widget.to_str().expect("utf-8")]);
    assert!(!rejected.status.success(), "size 0 violates minimum 1");
    assert!(stderr(&rejected).contains("spec.size"), "{}", stderr(&rejected));
}
