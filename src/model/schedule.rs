//! Rotation windows: `spec.rotation.schedule` (a 5-field cron expression) in
//! `spec.rotation.timeZone`, (the operator-wide limit on scheduled rotations is
//! `crate::runtime::scheduled`).
//!
//! Cron expressions are parsed and searched by `croner` (its jiff backend), in a jiff time zone
//! from the IANA database (the system's copy when there is one, else the copy built into the
//! binary: the image is FROM scratch). Across daylight saving time changes, croner follows
//! Vixie cron: a fixed time in a skipped hour (spring forward) runs once at the first minute after
//! the gap, a fixed time in a repeated hour (fall back) runs once, at its first occurrence;
//! wildcard and step minutes/hours skip the gap and run in both passes of a repeated hour.

use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use jiff::Timestamp;
use jiff::tz::TimeZone;

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
}
