//! `oauthapp-cache-bytes`: the heap bytes the operator's two watch caches hold per app, counted by
//! a heap profiler (dhat) rather than read off the RSS. It lists the OAuthApps of a namespace and
//! the Secrets the operator manages there from the cluster in `KUBECONFIG`, then puts each one
//! into a cache the way the operator's watches do (`strip_app` / `strip_secret`, the cached form,
//! the operator's `store::Store`), and prints one JSON line: the apps and Secrets cached and the bytes
//! each store holds. `make bench-scale` runs it on the apps it provisioned.
//!
//! Usage: `oauthapp-cache-bytes <namespace> [<installation>]`: the installation the operator
//! runs as (it tells its caches, which keep it once), by default the one of an operator run
//! outside a cluster with the default record key, as `make bench-scale` runs it.

use anyhow::Context as _;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ListParams, ObjectList, PartialObjectMeta};
use kube::runtime::watcher::Event;
use kube::{Api, Client};
use oauthapp_operator::model::crd::OAuthApp;
use oauthapp_operator::runtime::cached::{CachedApp, CachedSecret};
use oauthapp_operator::runtime::watches::{strip_app, strip_secret};

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

/// The operator's label on the Secrets it writes (what its Secret watch selects).
const SELECTOR: &str = "app.kubernetes.io/managed-by=oauthapp-operator";

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let namespace = std::env::args()
        .nth(1)
        .context("usage: oauthapp-cache-bytes <namespace> [<installation>]")?;
    let installation = std::env::args()
        .nth(2)
        .unwrap_or_else(|| "default/oauthapp-operator-record-key".into());
    oauthapp_operator::runtime::cached::share_installation(&installation);
    let _profiler = dhat::Profiler::builder().testing().build();
    let client = Client::try_default().await.context("a client from KUBECONFIG")?;
    let apps: Api<OAuthApp> = Api::namespaced(client.clone(), &namespace);
    let secrets: Api<Secret> = Api::namespaced(client, &namespace);

    // Each object as the JSON the API server sent, so that what is counted below is the cache
    // alone: the text is freed as each object goes in.
    let (apps, secrets) = (&apps, &secrets);
    let app_texts = texts(ListParams::default(), |lp| async move { apps.list(&lp).await })
        .await
        .context("listing the apps")?;
    let selected = ListParams::default().labels(SELECTOR);
    let secret_texts = texts(selected, |lp| async move { secrets.list_metadata(&lp).await })
        .await
        .context("listing the Secrets")?;
    let (n_apps, n_secrets) = (app_texts.len(), secret_texts.len());

    let (app_store, mut app_writer) = oauthapp_operator::runtime::store::store::<CachedApp>();
    let app_bytes = counted(app_texts, |text| {
        let mut app: OAuthApp = serde_json::from_str(text).expect("an app read back");
        strip_app(&mut app);
        app_writer.apply_watcher_event(&Event::Apply(CachedApp::from(app)));
    });
    let (secret_store, mut secret_writer) = oauthapp_operator::runtime::store::store::<CachedSecret>();
    let secret_bytes = counted(secret_texts, |text| {
        let mut secret: PartialObjectMeta<Secret> = serde_json::from_str(text).expect("a Secret read back");
        strip_secret(&mut secret);
        secret_writer.apply_watcher_event(&Event::Apply(CachedSecret::from(secret)));
    });
    anyhow::ensure!(app_store.state().len() == n_apps, "every app in its cache");
    anyhow::ensure!(
        secret_store.state().len() == n_secrets,
        "every Secret in its cache"
    );
    let per_app = |bytes: u64| if n_apps == 0 { 0 } else { bytes / n_apps as u64 };
    println!(
        "{}",
        serde_json::json!({
            "apps": n_apps,
            "secrets": n_secrets,
            "app_cache_bytes": app_bytes,
            "secret_cache_bytes": secret_bytes,
            "app_cache_bytes_per_app": per_app(app_bytes),
            "secret_cache_bytes_per_app": per_app(secret_bytes),
            "bytes_per_app": per_app(app_bytes + secret_bytes),
        })
    );
    Ok(())
}

/// Every object `list` gives for `lp`, page by page (500 a page), as JSON.
async fn texts<T, F, Fut>(lp: ListParams, mut list: F) -> anyhow::Result<Vec<String>>
where
    T: Clone + k8s_openapi::serde::Serialize,
    F: FnMut(ListParams) -> Fut,
    Fut: std::future::Future<Output = kube::Result<ObjectList<T>>>,
{
    let mut texts = Vec::new();
    let mut lp = lp.limit(500);
    loop {
        let page = list(lp.clone()).await?;
        for item in &page.items {
            texts.push(serde_json::to_string(item)?);
        }
        match page.metadata.continue_.filter(|t| !t.is_empty()) {
            Some(token) => lp = lp.continue_token(&token),
            None => return Ok(texts),
        }
    }
}

/// The heap bytes `put` leaves allocated when it is given each of `texts` (the texts freed as it
/// goes: their bytes are added back).
fn counted(texts: Vec<String>, mut put: impl FnMut(&str)) -> u64 {
    let held: usize =
        texts.iter().map(String::capacity).sum::<usize>() + texts.capacity() * std::mem::size_of::<String>();
    let before = dhat::HeapStats::get().curr_bytes;
    for text in texts {
        put(&text);
    }
    let after = dhat::HeapStats::get().curr_bytes;
    (after + held).saturating_sub(before) as u64
}
