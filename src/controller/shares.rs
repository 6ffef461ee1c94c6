//! Reconcile slots shared between namespaces.
//!
//! The controller runs at most `--concurrency` reconciles at once and starts waiting ones in
//! the order they were triggered. A namespace that triggers a thousand (a tool touching every
//! Secret, a mass drift) would hold every slot, and another namespace's annotation would wait
//! for all thousand. So a namespace holds at most `per_namespace` slots: a reconcile beyond its
//! namespace's share gives its slot back at once and waits, parked, in its namespace's line; it
//! is triggered again when one of its namespace's reconciles ends. The other slots stay free for
//! other namespaces, whose reconciles start after at most the ones already started.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;

use futures::channel::mpsc::{UnboundedReceiver, UnboundedSender, unbounded};

use super::queue::AppKey;

#[derive(Default)]
struct Share {
    /// Reconciles of the namespace running now.
    running: usize,
    /// Apps waiting for a slot, in the order they came (each once).
    parked: VecDeque<AppKey>,
    parked_names: HashSet<String>,
}

pub struct NamespaceShares {
    per_namespace: usize,
    state: Mutex<HashMap<String, Share>>,
    /// Triggers the controller's reconcile of a parked app (`queue::Trigger::One`).
    unpark: UnboundedSender<AppKey>,
}

/// A running reconcile's slot in its namespace's share; given back when dropped.
pub struct Slot<'a> {
    shares: &'a NamespaceShares,
    namespace: String,
}

impl NamespaceShares {
    /// Shares of at most `per_namespace` slots (at least one), and the stream of parked apps to
    /// reconcile again.
    pub fn new(per_namespace: usize) -> (Self, UnboundedReceiver<AppKey>) {
        let (unpark, parked) = unbounded();
        let shares = Self {
            per_namespace: per_namespace.max(1),
            state: Mutex::default(),
            unpark,
        };
        (shares, parked)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Share>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A slot for `app`'s reconcile if its namespace has one free; else `app` is parked (once,
    /// however often it is triggered meanwhile) until one of its namespace's reconciles ends.
    pub fn enter(&self, namespace: &str, name: &str) -> Option<Slot<'_>> {
        let mut state = self.lock();
        let share = state.entry(namespace.to_string()).or_default();
        if share.running < self.per_namespace {
            share.running += 1;
            return Some(Slot {
                shares: self,
                namespace: namespace.to_string(),
            });
        }
        if share.parked_names.insert(name.to_string()) {
            share.parked.push_back(AppKey::new(namespace, name));
        }
        None
    }

    /// Apps parked now, in all namespaces.
    pub fn parked(&self) -> usize {
        self.lock().values().map(|s| s.parked.len()).sum()
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut state = self.shares.lock();
        let Some(share) = state.get_mut(&self.namespace) else {
            return;
        };
        share.running = share.running.saturating_sub(1);
        if let Some(next) = share.parked.pop_front() {
            share.parked_names.remove(next.name());
            // The controller is gone when this fails (shutdown): nothing to trigger.
            let _ = self.shares.unpark.unbounded_send(next);
        }
        if share.running == 0 && share.parked.is_empty() {
            state.remove(&self.namespace);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    fn app(namespace: &str, name: &str) -> (String, String) {
        (namespace.to_string(), name.to_string())
    }

    fn enter<'a>(shares: &'a NamespaceShares, (namespace, name): &(String, String)) -> Option<Slot<'a>> {
        shares.enter(namespace, name)
    }

    #[tokio::test]
    async fn a_busy_namespace_leaves_the_other_slots_to_other_namespaces() {
        let (shares, mut parked) = NamespaceShares::new(2);
        let storm: Vec<_> = (0..5).map(|i| app("storm", &format!("s{i}"))).collect();
        let first = enter(&shares, &storm[0]);
        let second = enter(&shares, &storm[1]);
        assert!(first.is_some() && second.is_some());
        for app in &storm[2..] {
            assert!(enter(&shares, app).is_none(), "past the namespace's share");
        }
        // Triggered again while parked: parked once.
        assert!(enter(&shares, &storm[2]).is_none());
        assert_eq!(shares.parked(), 3);
        // Another namespace is not held back by the storm's line.
        let quiet = enter(&shares, &app("quiet", "q"));
        assert!(quiet.is_some());
        drop(quiet);
        assert_eq!(shares.parked(), 3);
        // The storm's next app is triggered when one of the storm's reconciles ends.
        drop(first);
        assert_eq!(parked.next().await, Some(AppKey::new("storm", "s2")));
        let third = enter(&shares, &storm[2]);
        assert!(third.is_some());
        assert_eq!(shares.parked(), 2);
    }

    #[test]
    fn a_namespace_with_nothing_running_or_parked_is_forgotten() {
        let (shares, _parked) = NamespaceShares::new(1);
        drop(enter(&shares, &app("a", "x")));
        assert!(shares.lock().is_empty());
    }
}
