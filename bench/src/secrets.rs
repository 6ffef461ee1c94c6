//! Follows the Secrets of a namespace through a watch (no polling): a fingerprint of each
//! Secret's data, when this process saw that data change, and how many Secrets hold a given key.
//! Times "annotation → Secret data changed" the same way for the operator and for the peer.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tokio::sync::watch;

#[derive(Clone, Copy, Debug)]
pub struct SecretState {
    /// A fingerprint of the data (every key and value).
    pub data: u64,
    /// When the watch delivered the event that set `data`.
    pub changed_at: Instant,
    /// Whether the data holds the key the watch counts.
    pub has_key: bool,
}

#[derive(Default)]
pub struct State {
    pub secrets: HashMap<String, SecretState>,
    /// Secrets whose data holds the counted key.
    pub with_key: usize,
    pub synced: bool,
}

pub struct SecretWatch {
    state: Arc<Mutex<State>>,
    changes: watch::Receiver<u64>,
    task: tokio::task::JoinHandle<()>,
}

fn fingerprint(secret: &Secret) -> u64 {
    let mut h = DefaultHasher::new();
    if let Some(data) = &secret.data {
        for (k, v) in data {
            k.hash(&mut h);
            v.0.hash(&mut h);
        }
    }
    h.finish()
}

impl SecretWatch {
    /// Watches the Secrets of `ns`, counting those whose data holds `key`.
    pub fn start(client: Client, ns: &str, key: &'static str) -> SecretWatch {
        let api: Api<Secret> = Api::namespaced(client, ns);
        let state = Arc::new(Mutex::new(State::default()));
        let (tx, changes) = watch::channel(0u64);
        let shared = state.clone();
        let task = tokio::spawn(async move {
            let mut events = std::pin::pin!(watcher(api, watcher::Config::default()).default_backoff());
            while let Some(event) = events.next().await {
                let Ok(event) = event else { continue };
                let now = Instant::now();
                let mut s = shared.lock().unwrap_or_else(|e| e.into_inner());
                match event {
                    watcher::Event::Apply(secret) | watcher::Event::InitApply(secret) => {
                        let data = fingerprint(&secret);
                        let has_key = secret.data.as_ref().is_some_and(|d| d.contains_key(key));
                        let previous = s.secrets.get(&secret.name_any()).copied();
                        let changed_at = match previous {
                            Some(p) if p.data == data => p.changed_at,
                            _ => now,
                        };
                        match (previous.is_some_and(|p| p.has_key), has_key) {
                            (false, true) => s.with_key += 1,
                            (true, false) => s.with_key -= 1,
                            _ => {}
                        }
                        s.secrets.insert(
                            secret.name_any(),
                            SecretState {
                                data,
                                changed_at,
                                has_key,
                            },
                        );
                    }
                    watcher::Event::Delete(secret) => {
                        if s.secrets.remove(&secret.name_any()).is_some_and(|p| p.has_key) {
                            s.with_key -= 1;
                        }
                    }
                    watcher::Event::InitDone => s.synced = true,
                    watcher::Event::Init => {}
                }
                drop(s);
                tx.send_modify(|n| *n += 1);
            }
        });
        SecretWatch { state, changes, task }
    }

    pub fn get(&self, name: &str) -> Option<SecretState> {
        self.lock().secrets.get(name).copied()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// When the watch saw `name`'s data differ from `before` (a fingerprint), waiting at most
    /// `timeout`.
    pub async fn changed(
        &self,
        name: &str,
        before: Option<u64>,
        timeout: Duration,
    ) -> anyhow::Result<Instant> {
        self.wait_for("a Secret's data to change", timeout, |s| {
            s.secrets
                .get(name)
                .filter(|x| Some(x.data) != before)
                .map(|x| x.changed_at)
        })
        .await
    }

    /// Waits until `done` holds for the watched state, and returns what it returns.
    pub async fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        done: impl FnMut(&State) -> Option<T>,
    ) -> anyhow::Result<T> {
        crate::tracker::wait_on(
            &self.state,
            &self.changes,
            "the Secret watch",
            what,
            timeout,
            done,
        )
        .await
    }
}

impl Drop for SecretWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}
