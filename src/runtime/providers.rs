//! What this process remembers about its apps' identity providers (`crate::provider::sync`
//! decides with it): which rotation was last found in sync at the provider, providers found
//! unreachable, failed pushes in a row, and writes that may still land late.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::runtime::error::{Error, ProviderError};

/// An app's client is checked against the provider at most this often (and after every change of
/// its rotation, and once per process start: a crash between the provider write and the Secret
/// write is caught by the restart).
pub const CHECK_INTERVAL: Duration = Duration::from_secs(300);

/// What this operator process remembers about its apps' providers, in memory (a restart checks
/// every app once): owned by its [`Context`](crate::runtime::context::Context), so that two
/// operators in one process (the tests) keep their own. An entry that has not been refreshed for
/// [`FORGET_AFTER`] is dropped: a live app refreshes its entries at least every [`CHECK_INTERVAL`],
/// so only deleted apps (and providers) lose theirs, and the maps stay as large as the apps in use.
#[derive(Default)]
pub struct State {
    pub(crate) inner: Mutex<Inner>,
}

#[derive(Default)]
pub(crate) struct Inner {
    /// Per app (`namespace/name`): the rotation last found in sync at the provider, when, and
    /// the failed checks in a row since.
    pub(crate) checked: HashMap<String, Checked>,
    /// Per provider (`namespace/name`): [`Held`].
    pub(crate) unreachable: HashMap<String, Held>,
    /// Per app (`namespace/name`): rotations in a row that failed at the provider, and when the
    /// last one failed.
    pub(crate) push_failures: HashMap<String, (u32, Instant)>,
    /// When entries were last looked through for [`FORGET_AFTER`].
    pub(crate) pruned: Option<Instant>,
    /// Per app (`namespace/name`): until when a write the operator gave up on (a timeout, a
    /// 5xx) may still land at the provider ([`LATE_WRITE_WINDOW`]); meanwhile the app is checked
    /// every `FIRST_RETRY` (`crate::provider::sync`), not every [`CHECK_INTERVAL`].
    pub(crate) late_writes: HashMap<String, Instant>,
}

/// How long after the operator gave up on a write to a provider (a timeout, a 5xx) that write
/// is watched for: a slow provider may still do it, late, and put back a secret the Secret no
/// longer holds. Such a write is caught by the next check: within `FIRST_RETRY` (5 s, in
/// `crate::provider::sync`) while the window runs, within [`CHECK_INTERVAL`] after it.
pub const LATE_WRITE_WINDOW: Duration = Duration::from_secs(60);

/// An entry not refreshed for this long is forgotten: twice the longest wait between two looks
/// at a live app (a check or a retry), so forgetting never changes what a live app sees.
pub(crate) const FORGET_AFTER: Duration = Duration::from_secs(2 * CHECK_INTERVAL.as_secs());

pub(crate) struct Checked {
    /// [`checked_version`] of the app when it was found in sync.
    pub(crate) rotation_id: String,
    /// When it was found in sync, or when a check last failed.
    pub(crate) at: Instant,
    pub(crate) failures: u32,
}

impl State {
    pub(crate) fn lock(&self, now: Instant) -> std::sync::MutexGuard<'_, Inner> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.prune(now);
        inner
    }

    /// Forgets the app `namespace/name` (its client was deleted with it).
    pub fn forget_app(&self, key: &str) {
        let mut inner = self.lock(Instant::now());
        inner.checked.remove(key);
        inner.push_failures.remove(key);
    }

    /// Entries held (apps and providers), for tests and metrics.
    pub fn len(&self) -> usize {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.checked.len() + inner.unreachable.len() + inner.push_failures.len()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Inner {
    /// Drops the entries not refreshed for [`FORGET_AFTER`]; looks at most once per
    /// [`CHECK_INTERVAL`], so the cost is one pass over the apps every few minutes.
    pub(crate) fn prune(&mut self, now: Instant) {
        if self
            .pruned
            .is_some_and(|at| now.saturating_duration_since(at) < CHECK_INTERVAL)
        {
            return;
        }
        self.pruned = Some(now);
        let fresh = |at: Instant| now.saturating_duration_since(at) < FORGET_AFTER;
        self.checked.retain(|_, c| fresh(c.at));
        self.push_failures.retain(|_, (_, at)| fresh(*at));
        self.unreachable.retain(|_, (until, _, _)| now < *until);
        self.late_writes.retain(|_, until| now < *until);
    }

    /// Notes that a write for `key` may still land late (it failed as unreachable).
    pub(crate) fn may_land_late(&mut self, key: &str, error: &Error, now: Instant) {
        if matches!(error, Error::Provider(ProviderError::Unreachable { .. })) {
            self.late_writes.insert(key.to_string(), now + LATE_WRITE_WINDOW);
        }
    }

    /// Whether a write for `key` may still land late.
    pub(crate) fn late_write_possible(&self, key: &str, now: Instant) -> bool {
        self.late_writes.get(key).is_some_and(|until| now < *until)
    }
}

/// Until when a provider is not called, and the URL and detail of the error that said so.
pub(crate) type Held = (Instant, String, String);
