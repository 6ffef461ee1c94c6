//! Follows the OAuthApps of a namespace through a watch (no polling): each app's current
//! `status.rotationId`, whether it is Ready, and when this process saw its last change.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use futures::StreamExt;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use oauthapp_operator::model::crd::OAuthApp;
use tokio::sync::watch;

#[derive(Clone, Debug)]
pub struct AppState {
    pub app_id: Option<String>,
    pub rotation_id: Option<String>,
    pub ready: bool,
    /// When the watch delivered the event that set `rotation_id`.
    pub seen_at: Instant,
}

#[derive(Default)]
pub struct State {
    pub apps: HashMap<String, AppState>,
    pub ready: usize,
    pub synced: bool,
}

pub struct Tracker {
    state: Arc<Mutex<State>>,
    changes: watch::Receiver<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Tracker {
    pub fn start(client: Client, ns: &str) -> Tracker {
        let api: Api<OAuthApp> = Api::namespaced(client, ns);
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
                    watcher::Event::Apply(app) | watcher::Event::InitApply(app) => {
                        let status = app.status.clone().unwrap_or_default();
                        let ready = status.rotation_id.is_some()
                            && status
                                .conditions
                                .iter()
                                .any(|c| c.type_ == "Ready" && c.status == "True");
                        let rotation_id = status.rotation_id;
                        let previous = s.apps.get(&app.name_any()).cloned();
                        let seen_at = match &previous {
                            Some(p) if p.rotation_id == rotation_id => p.seen_at,
                            _ => now,
                        };
                        let was_ready = previous.is_some_and(|p| p.ready);
                        match (was_ready, ready) {
                            (false, true) => s.ready += 1,
                            (true, false) => s.ready -= 1,
                            _ => {}
                        }
                        s.apps.insert(
                            app.name_any(),
                            AppState {
                                app_id: status.app_id,
                                rotation_id,
                                ready,
                                seen_at,
                            },
                        );
                    }
                    watcher::Event::Delete(app) => {
                        if s.apps.remove(&app.name_any()).is_some_and(|p| p.ready) {
                            s.ready -= 1;
                        }
                    }
                    watcher::Event::InitDone => s.synced = true,
                    watcher::Event::Init => {}
                }
                drop(s);
                tx.send_modify(|n| *n += 1);
            }
        });
        Tracker { state, changes, task }
    }

    pub fn get(&self, name: &str) -> Option<AppState> {
        self.lock().apps.get(name).cloned()
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until `done` holds for the tracked state, and returns what it returns.
    pub async fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        done: impl FnMut(&State) -> Option<T>,
    ) -> anyhow::Result<T> {
        wait_on(&self.state, &self.changes, "the watch", what, timeout, done).await
    }
}

/// Waits until `done` holds for `state`, looking again at each signal on `changes` (sent by the
/// watch task that keeps `state`), and returns what it returns; `source` names that watch.
pub async fn wait_on<S, T>(
    state: &Mutex<S>,
    changes: &watch::Receiver<u64>,
    source: &str,
    what: &str,
    timeout: Duration,
    mut done: impl FnMut(&S) -> Option<T>,
) -> anyhow::Result<T> {
    let mut changes = changes.clone();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        changes.borrow_and_update();
        if let Some(v) = done(&state.lock().unwrap_or_else(|e| e.into_inner())) {
            return Ok(v);
        }
        match tokio::time::timeout_at(deadline, changes.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => bail!("{source} ended while waiting for {what}"),
            Err(_) => bail!("timed out after {timeout:?} waiting for {what}"),
        }
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.task.abort();
    }
}
