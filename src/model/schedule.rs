//! Rotation windows: `spec.rotation.schedule` (a 5-field cron expression) in
//! `spec.rotation.timeZone`, and the operator-wide limit on scheduled rotations.
//!
//! Cron expressions are parsed and searched by `croner` (its jiff backend), in a jiff time zone
//! from the IANA database (the system's copy when there is one, else the copy built into the
//! binary: the image is FROM scratch). Across daylight saving time changes, croner follows
//! Vixie cron: a fixed time in a skipped hour (spring forward) runs once at the first minute after
//! the gap, a fixed time in a repeated hour (fall back) runs once, at its first occurrence;
//! wildcard and step minutes/hours skip the gap and run in both passes of a repeated hour.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use jiff::Timestamp;
use jiff::tz::TimeZone;

/// The default of `--max-scheduled-rotations-per-second`.
pub const DEFAULT_MAX_PER_SECOND: f64 = 20.0;

/// The time zone of a schedule without `spec.rotation.timeZone`.
pub const DEFAULT_TIME_ZONE: &str = "UTC";

/// A parsed `spec.rotation.schedule` in its time zone.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: Cron,
    tz: TimeZone,
}

/// Why a schedule that passed the API server's validation cannot be used. The message is for
/// the app's Ready condition and a Warning Event: it names the field and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("spec.rotation.schedule {expr:?} is not a 5-field cron expression: {reason}")]
    Cron { expr: String, reason: String },
    #[error(
        "spec.rotation.timeZone {tz:?} is not a time zone of the IANA database (e.g. Europe/Berlin, America/New_York, UTC)"
    )]
    TimeZone { tz: String },
    #[error("spec.rotation.schedule {expr:?} never matches a time (e.g. February 30)")]
    NeverMatches { expr: String },
    #[error(
        "spec.rotation.schedule {expr:?} may rotate more than once an hour: its minute field must be one minute (e.g. \"30 * * * *\"), as spec.rotation.interval is at least 1h"
    )]
    TooOften { expr: String },
}

/// Whether the minute field of a 5-field cron expression names exactly one minute (0 to 59):
/// then it matches at most once an hour, daylight saving time included (a repeated hour's two
/// passes are an hour apart). The CRD's CEL rule on `spec.rotation.schedule` is the same check.
pub fn at_most_hourly(expr: &str) -> bool {
    expr.split_whitespace().next().is_some_and(|minute| {
        minute.len() <= 2
            && minute.bytes().all(|b| b.is_ascii_digit())
            && minute.parse::<u8>().is_ok_and(|m| m < 60)
    })
}

impl Schedule {
    /// Parses a 5-field cron expression (minute, hour, day of month, month, day of week; like a
    /// Kubernetes CronJob) and an IANA time zone name (None: UTC).
    pub fn parse(expr: &str, time_zone: Option<&str>) -> Result<Self, ScheduleError> {
        let tz_name = time_zone.unwrap_or(DEFAULT_TIME_ZONE);
        let tz = jiff::tz::db()
            .get(tz_name)
            .map_err(|_| ScheduleError::TimeZone { tz: tz_name.into() })?;
        // `@daily` and friends are refused too: the CRD documents 5 fields.
        if expr.split_whitespace().count() != 5 {
            return Err(ScheduleError::Cron {
                expr: expr.into(),
                reason: "it must have exactly 5 fields (minute hour day-of-month month day-of-week)".into(),
            });
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            .build()
            .parse(expr)
            .map_err(|e| ScheduleError::Cron {
                expr: expr.into(),
                reason: e.to_string(),
            })?;
        Ok(Self { cron, tz })
    }

    /// [`Schedule::parse`] of an app's `spec.rotation.schedule`: refused when it may rotate more
    /// than once an hour ([`at_most_hourly`]), the floor `spec.rotation.interval` has too. An app
    /// stored before the CRD had that rule is told so, and rotated on request only until fixed.
    pub fn parse_for_app(expr: &str, time_zone: Option<&str>) -> Result<Self, ScheduleError> {
        let schedule = Self::parse(expr, time_zone)?;
        if !at_most_hourly(expr) {
            return Err(ScheduleError::TooOften { expr: expr.into() });
        }
        Ok(schedule)
    }

    /// The first time of the schedule strictly after `after`.
    pub fn next_after(&self, after: Timestamp) -> Result<Timestamp, ScheduleError> {
        self.cron
            .find_next_occurrence(&after.to_zoned(self.tz.clone()), false)
            .map(|z| z.timestamp())
            .map_err(|_| ScheduleError::NeverMatches {
                expr: self.cron.pattern.to_string(),
            })
    }
}

/// The next scheduled rotation of an app last rotated at `last_rotation`: the first time of the
/// schedule after it. When that is in the past (the operator was down, or the app waited its
/// turn), the app is due now, once: the rotation it makes moves `last_rotation` to now, and the
/// next time to the first slot after now. Missed slots are never replayed one by one.
pub fn next_rotation(schedule: &Schedule, last_rotation: Timestamp) -> Result<Timestamp, ScheduleError> {
    schedule.next_after(last_rotation)
}

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

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    fn next(expr: &str, tz: Option<&str>, after: &str) -> Timestamp {
        Schedule::parse(expr, tz)
            .expect("schedule")
            .next_after(ts(after))
            .expect("next")
    }

    #[test]
    fn the_next_time_is_the_first_slot_after_the_last_rotation() {
        // Every minute: a rotation at 12:00:00.4 (the 12:00 slot) is next due at 12:01.
        assert_eq!(
            next("* * * * *", None, "2026-11-26T12:00:00.4Z"),
            ts("2026-11-26T12:01:00Z")
        );
        // Exactly on a slot: the next one, never the same one again.
        assert_eq!(
            next("* * * * *", None, "2026-11-26T12:00:00Z"),
            ts("2026-11-26T12:01:00Z")
        );
        // Mondays at 03:00 in Berlin (CET, UTC+1 in November).
        assert_eq!(
            next("0 3 * * 1", Some("Europe/Berlin"), "2026-11-26T12:00:00Z"),
            ts("2026-11-30T02:00:00Z")
        );
        // UTC by default.
        assert_eq!(
            next("30 4 1 * *", None, "2026-11-26T12:00:00Z"),
            ts("2026-12-01T04:30:00Z")
        );
    }

    #[test]
    fn spring_forward_a_slot_in_the_skipped_hour_runs_once_right_after_the_gap() {
        // New York skips 02:00-03:00 on 2026-03-08 (EST -05:00 to EDT -04:00).
        let tz = Some("America/New_York");
        let daily = |after: &str| next("30 2 * * *", tz, after);
        // The day before: 02:30 EST.
        assert_eq!(daily("2026-03-06T08:00:00Z"), ts("2026-03-07T07:30:00Z"));
        // 02:30 does not exist on the 8th: the first minute after the gap, 03:00 EDT, once.
        let in_gap = daily("2026-03-07T07:30:00Z");
        assert_eq!(in_gap, ts("2026-03-08T07:00:00Z"));
        // Then 02:30 EDT the day after; nothing else on the 8th.
        assert_eq!(daily(&in_gap.to_string()), ts("2026-03-09T06:30:00Z"));
        // Hourly: 02:00 does not exist, 01:00 EST is followed by 03:00 EDT, one hour later.
        assert_eq!(
            next("0 * * * *", tz, "2026-03-08T06:00:00Z"),
            ts("2026-03-08T07:00:00Z")
        );
    }

    #[test]
    fn fall_back_a_slot_in_the_repeated_hour_runs_once() {
        // New York repeats 01:00-02:00 on 2026-11-01 (EDT -04:00, then EST -05:00).
        let tz = Some("America/New_York");
        let first = next("30 1 * * *", tz, "2026-10-31T12:00:00Z");
        assert_eq!(first, ts("2026-11-01T05:30:00Z"), "01:30 EDT, the first pass");
        // Rotated at the first 01:30: the second 01:30 (EST, 06:30Z) is not another slot.
        assert_eq!(
            next("30 1 * * *", tz, &first.to_string()),
            ts("2026-11-02T06:30:00Z")
        );
        // Nor when the rotation itself happened a little later, inside the repeated hour.
        assert_eq!(
            next("30 1 * * *", tz, "2026-11-01T05:30:01Z"),
            ts("2026-11-02T06:30:00Z")
        );
    }

    #[test]
    fn wildcard_and_step_times_skip_the_gap_and_run_in_both_passes_of_a_repeated_hour() {
        let tz = Some("America/New_York");
        // Spring forward: after 01:45 EST comes 03:00 EDT, fifteen real minutes later.
        assert_eq!(
            next("*/15 * * * *", tz, "2026-03-08T06:45:00Z"),
            ts("2026-03-08T07:00:00Z")
        );
        // Fall back: 01:00 EDT (05:00Z), then 01:00 EST (06:00Z), then 02:00 EST.
        let hourly = |after: &str| next("0 * * * *", tz, after);
        assert_eq!(hourly("2026-11-01T04:30:00Z"), ts("2026-11-01T05:00:00Z"));
        assert_eq!(hourly("2026-11-01T05:00:00Z"), ts("2026-11-01T06:00:00Z"));
        assert_eq!(hourly("2026-11-01T06:00:00Z"), ts("2026-11-01T07:00:00Z"));
    }

    #[test]
    fn a_missed_schedule_is_due_once_then_next_after_now() {
        let schedule = Schedule::parse("0 3 * * *", None).expect("schedule");
        // Last rotated a week ago; the operator was down since. Seven slots were missed.
        let last = ts("2026-11-19T03:00:00Z");
        let now = ts("2026-11-26T12:00:00Z");
        let due = next_rotation(&schedule, last).expect("next");
        assert!(due < now, "due: one rotation now");
        // That one rotation moves the last rotation to now: the next is tomorrow's 03:00, not
        // the 20th's (no replay of each missed slot).
        assert_eq!(
            next_rotation(&schedule, now).expect("next"),
            ts("2026-11-27T03:00:00Z")
        );
    }

    #[test]
    fn an_app_schedule_rotates_at_most_once_an_hour() {
        for ok in ["0 3 * * 1", "30 * * * *", "59 9-17 * * MON-FRI", " 5 */2 * * *"] {
            assert!(at_most_hourly(ok), "{ok}");
            Schedule::parse_for_app(ok, None).expect(ok);
        }
        for often in [
            "* * * * *",
            "*/5 * * * *",
            "0,30 * * * *",
            "0-5 3 * * *",
            "60 * * * *",
            "007 * * * *",
        ] {
            assert!(!at_most_hourly(often), "{often}");
        }
        let refused = Schedule::parse_for_app("*/30 9-17 * * MON-FRI", None).expect_err("twice an hour");
        assert_eq!(
            refused,
            ScheduleError::TooOften {
                expr: "*/30 9-17 * * MON-FRI".into()
            }
        );
        assert!(
            refused.to_string().contains("more than once an hour"),
            "{refused}"
        );
    }

    #[test]
    fn bad_schedules_and_time_zones_say_what_is_wrong() {
        for bad in [
            "* * * *",
            "* * * * * *",
            "@daily",
            "61 * * * *",
            "* * * 13 *",
            "x * * * *",
        ] {
            let err = Schedule::parse(bad, None).expect_err(bad);
            assert!(matches!(err, ScheduleError::Cron { .. }), "{bad}: {err}");
            assert!(err.to_string().contains("spec.rotation.schedule"), "{err}");
        }
        let err = Schedule::parse("* * * * *", Some("Mars/Olympus_Mons")).expect_err("tz");
        assert_eq!(
            err,
            ScheduleError::TimeZone {
                tz: "Mars/Olympus_Mons".into()
            }
        );
        assert!(err.to_string().contains("spec.rotation.timeZone"));
        let never = Schedule::parse("0 0 30 2 *", None).expect("parses");
        let err = never.next_after(ts("2026-11-26T12:00:00Z")).expect_err("never");
        assert!(matches!(err, ScheduleError::NeverMatches { .. }), "{err}");
    }

    #[test]
    fn the_time_zone_database_is_built_in_for_images_without_zoneinfo() {
        // The image is FROM scratch: no /usr/share/zoneinfo. jiff's `tzdb-bundle-always` puts a
        // copy in the binary, used when the system has none.
        let bundled = jiff::tz::TimeZoneDatabase::bundled();
        for zone in ["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata"] {
            assert!(bundled.get(zone).is_ok(), "{zone} is not in the bundled database");
        }
    }

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
