//! The operator-wide limit on scheduled rotations (`--max-scheduled-rotations-per-second`),
//! shared fairly between namespaces. When an app's schedule makes it due is the model's
//! (`crate::model::schedule`); when its turn comes is this.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The default of `--max-scheduled-rotations-per-second`.
pub const DEFAULT_MAX_PER_SECOND: f64 = 20.0;

/// Whether a scheduled rotation may start now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    /// Go ahead (the app's turn came, or the rotation is not a scheduled one).
    Now,
    /// Look again after this long: scheduled rotations ahead of it take the earlier slots.
    Wait(Duration),
}

/// The operator-wide limit on scheduled rotations (`--max-scheduled-rotations-per-second`),
/// shared fairly between namespaces.
///
/// Turns are `1/rate` apart. Apps waiting for one are served namespace by namespace in turn
/// (round robin; within a namespace, in the order they first asked), so a namespace with a
/// hundred apps due delays another namespace's app by one turn, not a hundred. An app asking is
/// told when its turn comes at the earliest (its place in that order, from the next free turn);
/// the reconciler does not block on it: the app is requeued to that time and asks again, so
/// controller workers stay free for requested rotations (annotation, REST), which never come
/// here. A newcomer of another namespace may move others' turns later; they are told so when
/// they ask again. An app that does not come back for its turn (deleted, or its reconcile
/// failing) is passed over after [`ABSENT`] and forgotten after [`STALE`].
pub struct ScheduledRotations {
    spacing: Duration,
    state: Mutex<Slots>,
    metrics: Option<std::sync::Arc<crate::runtime::metrics::Metrics>>,
}

#[derive(Default)]
struct Slots {
    /// When the last turn was given.
    last_turn: Option<Instant>,
    /// Apps (by key, `namespace/name`) waiting for a turn.
    waiting: HashMap<String, Waiting>,
    /// Numbers the apps in the order they first asked.
    asked: u64,
    /// Turns given so far, and the number of the last one each namespace with apps waiting got:
    /// a namespace just served goes after the others in the next round.
    turns: u64,
    served: HashMap<String, (u64, Instant)>,
}

struct Waiting {
    namespace: String,
    /// When it first asked (in [`Slots::asked`]): its place in its namespace's line.
    since: u64,
    /// The time it was told to come back.
    told: Instant,
}

/// An app not back this long after the time it was told is passed over until it asks again
/// (it keeps its place in its namespace's line).
const ABSENT: Duration = Duration::from_secs(2);

/// A reservation not used this long after its time is forgotten (its app was deleted, or its
/// reconcile kept failing before the rotation): it stops counting as waiting.
const STALE: Duration = Duration::from_secs(60);

impl ScheduledRotations {
    /// At most `per_second` scheduled rotations start per second (at least one a day).
    pub fn new(per_second: f64, metrics: Option<std::sync::Arc<crate::runtime::metrics::Metrics>>) -> Self {
        let per_second = if per_second.is_finite() {
            per_second.max(1.0 / 86_400.0)
        } else {
            1.0e9
        };
        Self {
            spacing: Duration::from_secs_f64(1.0 / per_second),
            state: Mutex::new(Slots::default()),
            metrics,
        }
    }

    /// The turn of app `key` (`namespace/name`) for a scheduled rotation at `now`: joins its
    /// namespace's line the first time it asks, and goes when its place in the round robin
    /// comes. O(apps waiting) per call.
    pub fn turn(&self, key: &str, now: Instant) -> Turn {
        let mut slots = self.state.lock().unwrap_or_else(|e| e.into_inner());
        slots
            .waiting
            .retain(|_, w| now.saturating_duration_since(w.told) < STALE);
        let joined = !slots.waiting.contains_key(key);
        if joined {
            let namespace = key.split_once('/').map_or("", |(ns, _)| ns).to_string();
            slots.asked += 1;
            let since = slots.asked;
            slots.waiting.insert(
                key.to_string(),
                Waiting {
                    namespace,
                    since,
                    told: now,
                },
            );
        }
        let next_free = slots.last_turn.map_or(now, |last| (last + self.spacing).max(now));
        let place = u32::try_from(place_of(&slots, key, now)).unwrap_or(u32::MAX);
        let at = next_free + self.spacing.saturating_mul(place);
        let turn = if at <= now {
            if let Some(w) = slots.waiting.remove(key) {
                slots.turns += 1;
                let turns = slots.turns;
                slots.served.insert(w.namespace, (turns, now));
            }
            slots.last_turn = Some(now);
            // Kept while the namespace has apps waiting, or was served within STALE.
            let Slots { waiting, served, .. } = &mut *slots;
            let busy: std::collections::HashSet<&str> =
                waiting.values().map(|w| w.namespace.as_str()).collect();
            served.retain(|ns, (_, at)| {
                now.saturating_duration_since(*at) < STALE || busy.contains(ns.as_str())
            });
            Turn::Now
        } else {
            if joined && let Some(m) = &self.metrics {
                m.scheduled_rotations_waited.inc();
            }
            if let Some(w) = slots.waiting.get_mut(key) {
                w.told = at;
            }
            Turn::Wait(at - now)
        };
        self.publish(&slots);
        turn
    }

    /// App `key` no longer needs a scheduled rotation (it was rotated otherwise, or deleted):
    /// its slot, if it holds one, stops counting as waiting.
    pub fn cancel(&self, key: &str) {
        let mut slots = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if slots.waiting.remove(key).is_some() {
            self.publish(&slots);
        }
    }

    /// Scheduled rotations waiting their turn.
    pub fn waiting(&self) -> usize {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).waiting.len()
    }

    fn publish(&self, slots: &Slots) {
        if let Some(m) = &self.metrics {
            m.scheduled_rotations_waiting
                .set(i64::try_from(slots.waiting.len()).unwrap_or(i64::MAX));
        }
    }
}

/// How many waiting apps go before `key` in the round robin: each namespace's present apps in
/// the order they asked; namespaces, in each round, the least recently served first (then by
/// their first app in line). An app told a time more than [`ABSENT`] ago that has not asked
/// again is not counted.
fn place_of(slots: &Slots, key: &str, now: Instant) -> usize {
    let waiting = &slots.waiting;
    let order = |ns: &str, head: u64| (slots.served.get(ns).map_or(0, |(turn, _)| *turn), head);
    let mut lines: HashMap<&str, Vec<(u64, &str)>> = HashMap::new();
    for (k, w) in waiting {
        if k == key || now <= w.told + ABSENT {
            lines
                .entry(w.namespace.as_str())
                .or_default()
                .push((w.since, k.as_str()));
        }
    }
    for line in lines.values_mut() {
        line.sort_unstable();
    }
    let Some(me) = waiting.get(key) else {
        return 0;
    };
    let mine = &lines[me.namespace.as_str()];
    let round = mine.iter().position(|(_, k)| *k == key).unwrap_or(0);
    let my_order = order(&me.namespace, mine[0].0);
    lines
        .iter()
        .map(|(ns, line)| {
            // Every earlier round of each namespace, and this round of those ordered before.
            let ahead_this_round =
                line.len() > round && *ns != me.namespace && order(ns, line[0].0) < my_order;
            line.len().min(round) + usize::from(ahead_this_round)
        })
        .sum()
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheduled_rotations_take_their_turns_in_order() {
        let limit = ScheduledRotations::new(2.0, None); // one every 500 ms
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        assert_eq!(limit.turn("ns/a", t0), Turn::Now);
        assert_eq!(limit.turn("ns/b", t0), Turn::Wait(ms(500)));
        assert_eq!(limit.turn("ns/c", t0 + ms(10)), Turn::Wait(ms(990)));
        assert_eq!(limit.waiting(), 2);
        // Asking again keeps the place; a newcomer queues behind.
        assert_eq!(limit.turn("ns/b", t0 + ms(100)), Turn::Wait(ms(400)));
        assert_eq!(limit.turn("ns/d", t0 + ms(100)), Turn::Wait(ms(1400)));
        // c is not served before b: at 500 ms only b's turn has come.
        assert_eq!(limit.turn("ns/c", t0 + ms(500)), Turn::Wait(ms(500)));
        assert_eq!(limit.turn("ns/b", t0 + ms(500)), Turn::Now);
        assert_eq!(limit.turn("ns/c", t0 + ms(1000)), Turn::Now);
        assert_eq!(limit.turn("ns/d", t0 + ms(1500)), Turn::Now);
        assert_eq!(limit.waiting(), 0);
        // After a quiet spell, the next one goes at once again.
        assert_eq!(limit.turn("ns/a", t0 + ms(5000)), Turn::Now);
    }

    #[test]
    fn namespaces_take_turns_so_a_crowd_in_one_does_not_hold_back_another() {
        let limit = ScheduledRotations::new(1.0, None);
        let t0 = Instant::now();
        let s = Duration::from_secs;
        // A hundred apps of `crowd` are due at once; the first goes, the rest line up.
        assert_eq!(limit.turn("crowd/app-0", t0), Turn::Now);
        for i in 1..100 {
            assert_eq!(limit.turn(&format!("crowd/app-{i}"), t0), Turn::Wait(s(i)));
        }
        // The lone app of `quiet` is due a moment later: `crowd` was just served, so it goes
        // next, not 101st.
        assert_eq!(limit.turn("quiet/lone", t0), Turn::Wait(s(1)));
        // crowd/app-1 was told 1 s; it is told again: one turn later (the lone app takes it).
        assert_eq!(limit.turn("crowd/app-1", t0 + s(1)), Turn::Wait(s(1)));
        assert_eq!(limit.turn("quiet/lone", t0 + s(1)), Turn::Now);
        assert_eq!(limit.turn("crowd/app-1", t0 + s(2)), Turn::Now);
        assert_eq!(limit.turn("crowd/app-2", t0 + s(2)), Turn::Wait(s(1)));
        // Two crowds alternate.
        let limit = ScheduledRotations::new(1.0, None);
        for i in 0..3 {
            limit.turn(&format!("a/{i}"), t0);
            limit.turn(&format!("b/{i}"), t0);
        }
        // a/0 went at once; then b/0, a/1, b/1, a/2, b/2.
        for (i, key) in ["b/0", "a/1", "b/1", "a/2", "b/2"].into_iter().enumerate() {
            assert_eq!(limit.turn(key, t0), Turn::Wait(s(i as u64 + 1)), "{key}");
        }
    }

    #[test]
    fn an_app_that_does_not_come_for_its_turn_is_passed_over() {
        let limit = ScheduledRotations::new(1.0, None);
        let t0 = Instant::now();
        let s = Duration::from_secs;
        assert_eq!(limit.turn("ns/a", t0), Turn::Now);
        assert_eq!(limit.turn("ns/gone", t0), Turn::Wait(s(1)));
        assert_eq!(limit.turn("ns/c", t0), Turn::Wait(s(2)));
        // `gone` never comes back (deleted without a reconcile): c goes once `gone` is absent.
        assert_eq!(limit.turn("ns/c", t0 + s(2)), Turn::Wait(s(1)));
        assert_eq!(limit.turn("ns/c", t0 + s(4)), Turn::Now);
        // `gone` asking again keeps its place at the head of its line.
        assert_eq!(limit.turn("ns/gone", t0 + s(5)), Turn::Now);
    }

    #[test]
    fn a_cancelled_or_forgotten_reservation_stops_counting_as_waiting() {
        let metrics = std::sync::Arc::new(crate::runtime::metrics::Metrics::new());
        let limit = ScheduledRotations::new(1.0, Some(metrics.clone()));
        let t0 = Instant::now();
        assert_eq!(limit.turn("a", t0), Turn::Now);
        assert!(matches!(limit.turn("b", t0), Turn::Wait(_)));
        assert!(matches!(limit.turn("c", t0), Turn::Wait(_)));
        assert_eq!(metrics.scheduled_rotations_waiting.get(), 2);
        assert_eq!(metrics.scheduled_rotations_waited.get(), 2);
        limit.cancel("b");
        assert_eq!(metrics.scheduled_rotations_waiting.get(), 1);
        // c never came back for its slot (deleted): forgotten a minute after it.
        assert!(matches!(limit.turn("d", t0 + Duration::from_secs(70)), Turn::Now));
        assert_eq!(limit.waiting(), 0);
        assert_eq!(metrics.scheduled_rotations_waiting.get(), 0);
    }
}
