//! A brake on mass repair (DESIGN.md, invariant 9). A repair (`SecretMissing`, `SecretDrift`)
//! replaces a credential the operator believes is broken. One app at a time that is right; many at
//! once means something else went wrong (a restore in the wrong order, a sync tool, a bug in the
//! operator itself), and replacing them all would break every client. So repairs are spread out (at
//! most `--max-repairs-per-second`, in turn, like scheduled rotations), and once more than a share
//! of the apps (`--repair-brake-share`, at least `--repair-brake-min`) were repaired within
//! `--repair-brake-window`, further repairs are held until a person releases them: a new value of
//! the annotation [`RELEASE_REPAIRS_ANNOTATION`] on the record key Secret. Held apps are
//! `Ready=False, reason=RepairHeld`; `oauthapp_repairs_held` counts them.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::model::record::RELEASE_REPAIRS_ANNOTATION;

/// The brake's settings.
#[derive(Debug, Clone, Copy)]
pub struct BrakeSettings {
    /// The share of apps whose repair within `window` engages the brake.
    pub share: f64,
    /// Repairs that never engage it, whatever the share (small installations).
    pub min: usize,
    pub window: Duration,
}

impl Default for BrakeSettings {
    fn default() -> Self {
        Self {
            share: 0.1,
            min: 5,
            window: Duration::from_secs(300),
        }
    }
}

/// Whether a repair may go ahead now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Go,
    /// The brake is engaged: the repair waits for a person.
    Held,
}

#[derive(Default)]
struct State {
    /// When the repairs within the window were admitted.
    recent: VecDeque<Instant>,
    engaged: bool,
    /// Apps whose repair is held now.
    held: HashSet<String>,
    /// The release annotation's value: first as seen at start, then as last acted on.
    release_seen: Option<Option<String>>,
    /// After a release, the brake does not engage again before this.
    released_until: Option<Instant>,
}

pub struct RepairBrake {
    settings: BrakeSettings,
    state: Mutex<State>,
}

impl RepairBrake {
    pub fn new(settings: BrakeSettings) -> Self {
        Self {
            settings,
            state: Mutex::default(),
        }
    }

    /// Repairs admitted within a window before the brake engages, with `apps` apps watched.
    pub fn limit(&self, apps: usize) -> usize {
        ((self.settings.share * apps as f64).ceil() as usize).max(self.settings.min)
    }

    /// Asks whether app `key` may be repaired now, with `apps` apps watched and `release` the
    /// release annotation's value now. A repair admitted counts in the window.
    pub fn admit(&self, key: &str, now: Instant, apps: usize, release: Option<&str>) -> Admission {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.observe_release(&mut s, now, release);
        let window = self.settings.window;
        while s
            .recent
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= window)
        {
            s.recent.pop_front();
        }
        let released = s.released_until.is_some_and(|until| now < until);
        if !s.engaged && !released && s.recent.len() >= self.limit(apps) {
            s.engaged = true;
            tracing::error!(
                repairs = s.recent.len(),
                window = ?window,
                apps,
                "more apps needed a repair at once than the brake allows: further repairs are held until a person releases them \
                 (a new value of the annotation {RELEASE_REPAIRS_ANNOTATION} on the record key Secret)"
            );
        }
        if s.engaged {
            s.held.insert(key.to_string());
            return Admission::Held;
        }
        s.held.remove(key);
        s.recent.push_back(now);
        Admission::Go
    }

    /// A new release value (not the one seen first) releases the brake for a window.
    fn observe_release(&self, s: &mut State, now: Instant, release: Option<&str>) {
        let value = release.map(str::to_string);
        match &s.release_seen {
            None => s.release_seen = Some(value),
            Some(seen) if *seen != value => {
                s.release_seen = Some(value);
                if s.engaged {
                    tracing::warn!(held = s.held.len(), "repairs released by a person");
                }
                s.engaged = false;
                s.held.clear();
                s.recent.clear();
                s.released_until = Some(now + self.settings.window);
            }
            Some(_) => {}
        }
    }

    /// An app no longer needs its held repair (it was deleted, or its Secret came back).
    pub fn forget(&self, key: &str) {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .held
            .remove(key);
    }

    pub fn held(&self) -> usize {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).held.len()
    }

    pub fn engaged(&self) -> bool {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).engaged
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn brake(share: f64, min: usize) -> RepairBrake {
        RepairBrake::new(BrakeSettings {
            share,
            min,
            window: Duration::from_secs(300),
        })
    }

    #[test]
    fn a_few_repairs_go_and_many_at_once_are_held() {
        let b = brake(0.1, 3);
        let t = Instant::now();
        assert_eq!(b.limit(10), 3, "the minimum");
        assert_eq!(b.limit(1000), 100, "the share");
        for i in 0..3 {
            assert_eq!(b.admit(&format!("a{i}"), t, 10, None), Admission::Go);
        }
        assert_eq!(b.admit("a3", t, 10, None), Admission::Held);
        assert_eq!(b.admit("a4", t, 10, None), Admission::Held);
        assert!(b.engaged());
        assert_eq!(b.held(), 2);
        // Held for good, even after the window: only a person releases it.
        let later = t + Duration::from_secs(3600);
        assert_eq!(b.admit("a3", later, 10, None), Admission::Held);
    }

    #[test]
    fn repairs_spread_over_more_than_the_window_never_engage_it() {
        let b = brake(0.1, 2);
        let t = Instant::now();
        for i in 0..10u64 {
            let at = t + Duration::from_secs(200 * i);
            assert_eq!(
                b.admit(&format!("a{i}"), at, 10, None),
                Admission::Go,
                "repair {i}"
            );
        }
        assert!(!b.engaged());
    }

    #[test]
    fn a_new_release_value_lets_held_repairs_go_for_a_window() {
        let b = brake(0.1, 1);
        let t = Instant::now();
        assert_eq!(b.admit("a", t, 10, Some("v1")), Admission::Go);
        assert_eq!(b.admit("b", t, 10, Some("v1")), Admission::Held);
        // The value seen at start releases nothing; a new one does.
        assert_eq!(b.admit("b", t, 10, Some("v1")), Admission::Held);
        assert_eq!(b.admit("b", t, 10, Some("v2")), Admission::Go);
        assert_eq!(b.admit("c", t, 10, Some("v2")), Admission::Go);
        assert_eq!(b.held(), 0);
        assert!(!b.engaged());
        // After that window, many at once engage it again.
        let later = t + Duration::from_secs(301);
        assert_eq!(b.admit("d", later, 10, Some("v2")), Admission::Go);
        assert_eq!(b.admit("e", later, 10, Some("v2")), Admission::Held);
    }
}
