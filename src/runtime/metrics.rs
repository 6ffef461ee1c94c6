//! Prometheus metrics (prefix `oauthapp_`). No per-object labels: cardinality stays bounded
//! whatever the number of apps.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, text::encode};
use prometheus_client::metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram};
use prometheus_client::registry::Registry;

use crate::model::crd::RotationTrigger;
use crate::runtime::cached::CachedApp;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RotationLabels {
    pub trigger: &'static str,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

/// The results of `POST /api/v1/oauth-apps/verify`, each with a zero from the start.
pub const VERIFICATION_RESULTS: [&str; 4] = ["current", "previous", "invalid", "unknown"];

/// A rollout restart of a consumer: the workload's kind and the result.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RestartLabels {
    pub kind: &'static str,
    pub result: &'static str,
}

/// The results of a rollout restart, each with a zero from the start.
pub const RESTART_RESULTS: [&str; 4] = ["restarted", "not_found", "forbidden", "error"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

/// A REST API request: its route template (never the path itself, which holds ids), method and
/// status code.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: String,
    pub method: String,
    pub code: u16,
}

/// A REST API route template.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReadyLabels {
    pub ready: &'static str,
}

/// The reasons `oauthapp_apps_not_ready{reason}` counts by: the Ready reasons that need someone
/// to act, and `Other` for any reason not listed (so the label stays a fixed, small set).
pub const NOT_READY_REASONS: [&str; 7] = [
    crate::model::status::reasons::SECRET_CONFLICT,
    crate::model::status::reasons::RECORD_UNVERIFIABLE,
    crate::model::status::reasons::REPAIR_HELD,
    crate::model::status::reasons::REPAIR_BACKOFF,
    crate::model::status::reasons::SECRET_REJECTED,
    // A client id another app already uses (issue 9).
    "ClientIdConflict",
    "Other",
];

/// The `reason` label for a Ready=False condition's reason: itself when listed, else `Other`.
pub fn not_ready_reason(reason: &str) -> &'static str {
    NOT_READY_REASONS
        .iter()
        .find(|r| **r == reason)
        .copied()
        .unwrap_or("Other")
}

/// The app gauges, counted from a set of apps.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct AppCounts {
    pub ready: i64,
    pub not_ready: i64,
    pub unknown: i64,
    /// Ready=False apps by reason, in the order of [`NOT_READY_REASONS`].
    pub not_ready_by_reason: [i64; NOT_READY_REASONS.len()],
    /// Apps whose `status.nextRotationTime` is before `now`.
    pub rotation_overdue: i64,
}

impl AppCounts {
    pub fn of<'a>(apps: impl IntoIterator<Item = &'a CachedApp>, now: jiff::Timestamp) -> AppCounts {
        let mut counts = AppCounts::default();
        for app in apps {
            match app.ready().as_ref().map(|(s, r)| (&**s, &**r)) {
                Some(("True", _)) => counts.ready += 1,
                Some(("False", reason)) => {
                    counts.not_ready += 1;
                    let reason = not_ready_reason(reason);
                    if let Some(i) = NOT_READY_REASONS.iter().position(|r| *r == reason) {
                        counts.not_ready_by_reason[i] += 1;
                    }
                }
                _ => counts.unknown += 1,
            }
            if app.next_rotation_time().is_some_and(|t| t.0 < now) {
                counts.rotation_overdue += 1;
            }
        }
        counts
    }
}

/// Every metric the operator exports.
pub struct Metrics {
    registry: Registry,
    /// Rotations by trigger and result (`success`, `conflict`, `error`).
    pub rotations: Family<RotationLabels, Counter>,
    /// Seconds from the start of a rotation (hash included) to its Secret write, the moment the
    /// old secret stops working (the status write follows).
    pub rotation_duration: Histogram,
    /// Reconciliations run.
    pub reconciles: Counter,
    /// Reconciles put off because their namespace held its share of the slots.
    pub reconciles_deferred: Counter,
    /// Seconds per reconciliation.
    pub reconcile_duration: Histogram,
    /// Failed reconciliations by error reason.
    pub reconcile_errors: Family<ReasonLabels, Counter>,
    /// Writes to the API server (Secrets and status), for watching steady-state behaviour.
    pub writes: Counter,
    /// argon2 checks of a Secret's content against its hash (a new version of a Secret whose
    /// data was checked before costs none).
    pub content_checks: Counter,
    /// Apps by Ready condition (`true`, `false`, `unknown`), as seen by the last reconcile of each.
    pub apps: Family<ReadyLabels, Gauge>,
    /// Apps with Ready=False, by reason (one of [`NOT_READY_REASONS`]).
    pub apps_not_ready: Family<ReasonLabels, Gauge>,
    /// Apps whose scheduled rotation (`status.nextRotationTime`) has passed.
    pub apps_rotation_overdue: Gauge,
    /// 1 when this replica leads (runs the controller), else 0.
    pub leader: Gauge,
    /// 1 while no record signing key is loaded because signed records exist that a new key
    /// would strand: the operator waits for a person (restore the key, or make a new one).
    pub record_key_missing: Gauge,
    /// Keys in the record key ring this replica holds.
    pub record_keys: Gauge,
    /// App Secrets whose record is not signed by the ring's newest key (re-signed in the
    /// background after a new key; 0 once done, when the old key may be retired).
    pub records_to_resign: Gauge,
    /// Apps whose repair the brake on mass repair holds now.
    pub repairs_held: Gauge,
    /// Apps in watched namespaces that another installation of the operator manages (left
    /// alone by this one).
    pub apps_managed_elsewhere: Gauge,
    /// Names of deleted apps whose last rotation the ledger remembers.
    pub retired_records: Gauge,
    /// 1 while the brake on mass repair is engaged.
    pub repair_brake_engaged: Gauge,
    /// Unix time of the last successful rotation.
    pub last_rotation_timestamp: Gauge<f64, AtomicU64>,
    /// REST API requests answered, by route, method and status code.
    pub api_requests: Family<RequestLabels, Counter>,
    /// Seconds per REST API request, by route.
    pub api_request_duration: HistogramFamily<RouteLabels>,
    /// Client credential verifications by result ([`VERIFICATION_RESULTS`]).
    pub verifications: Family<ResultLabels, Counter>,
    /// Rollout restarts of `spec.rolloutRestartTargets`, by kind and result ([`RESTART_RESULTS`]).
    pub rollout_restarts: Family<RestartLabels, Counter>,
    /// Scheduled rotations waiting their turn (`--max-scheduled-rotations-per-second`).
    pub scheduled_rotations_waiting: Gauge,
    /// Scheduled rotations that had to wait their turn.
    pub scheduled_rotations_waited: Counter,
}

fn api_request_histogram() -> Histogram {
    // From 1 ms (a cached answer) to 30 s (the request timeout); a rotation is ~20 ms.
    Histogram::new([
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ])
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    // Long: one registration per metric, in the order /metrics lists them: a table, not steps.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("oauthapp");
        let rotations = Family::<RotationLabels, Counter>::default();
        // Histogram buckets from 5 ms to ~10 s: a rotation is one argon2 hash and two writes.
        let rotation_duration =
            Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]);
        let reconciles = Counter::default();
        let reconciles_deferred = Counter::default();
        let reconcile_duration = Histogram::new([
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
        ]);
        let reconcile_errors = Family::<ReasonLabels, Counter>::default();
        let writes = Counter::default();
        let content_checks = Counter::default();
        let apps = Family::<ReadyLabels, Gauge>::default();
        let apps_not_ready = Family::<ReasonLabels, Gauge>::default();
        let apps_rotation_overdue = Gauge::default();
        let leader = Gauge::default();
        let record_key_missing = Gauge::default();
        let record_keys = Gauge::default();
        let records_to_resign = Gauge::default();
        let apps_managed_elsewhere = Gauge::default();
        let retired_records = Gauge::default();
        let repairs_held = Gauge::default();
        let repair_brake_engaged = Gauge::default();
        let last_rotation_timestamp = Gauge::<f64, AtomicU64>::default();
        let api_requests = Family::<RequestLabels, Counter>::default();
        let api_request_duration: HistogramFamily<RouteLabels> =
            Family::new_with_constructor(api_request_histogram);
        registry.register(
            "api_requests",
            "REST API requests by route template, method and status code",
            api_requests.clone(),
        );
        registry.register(
            "api_request_duration_seconds",
            "Time to answer a REST API request, by route template",
            api_request_duration.clone(),
        );
        registry.register(
            "rotations",
            "Client secret rotations by trigger and result",
            rotations.clone(),
        );
        registry.register(
            "rotation_duration_seconds",
            "Time to rotate a client secret, hashing included",
            rotation_duration.clone(),
        );
        registry.register("reconciles", "Reconciliations run", reconciles.clone());
        registry.register(
            "reconciles_deferred",
            "Reconciliations put off because their namespace held its share of the slots (--namespace-concurrency)",
            reconciles_deferred.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time per reconciliation",
            reconcile_duration.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Failed reconciliations by reason",
            reconcile_errors.clone(),
        );
        registry.register(
            "api_writes",
            "Writes to the Kubernetes API (Secrets and status)",
            writes.clone(),
        );
        registry.register(
            "secret_content_checks",
            "argon2 checks of an app Secret's content against its hash",
            content_checks.clone(),
        );
        registry.register("apps", "OAuthApps by Ready condition", apps.clone());
        registry.register(
            "apps_not_ready",
            "OAuthApps with Ready=False, by reason",
            apps_not_ready.clone(),
        );
        registry.register(
            "apps_rotation_overdue",
            "OAuthApps whose scheduled rotation time has passed",
            apps_rotation_overdue.clone(),
        );
        registry.register(
            "leader",
            "1 when this replica runs the controller",
            leader.clone(),
        );
        registry.register(
            "record_key_missing",
            "1 while the operator waits for a record signing key (signed records exist that a new key would strand)",
            record_key_missing.clone(),
        );
        registry.register("record_keys", "Keys in the record key ring", record_keys.clone());
        registry.register(
            "records_to_resign",
            "App Secrets whose record is not signed by the newest key of the ring",
            records_to_resign.clone(),
        );
        registry.register(
            "apps_managed_elsewhere",
            "OAuthApps another installation of the operator manages, left alone by this one",
            apps_managed_elsewhere.clone(),
        );
        registry.register(
            "retired_records",
            "Deleted OAuthApps whose last rotation the ledger remembers (a copy of their Secret is never adopted)",
            retired_records.clone(),
        );
        registry.register(
            "repairs_held",
            "OAuthApps whose repair is held by the brake on mass repair",
            repairs_held.clone(),
        );
        registry.register(
            "repair_brake_engaged",
            "1 while the brake on mass repair holds repairs until a person releases them",
            repair_brake_engaged.clone(),
        );
        registry.register(
            "last_rotation_timestamp_seconds",
            "Unix time of the last successful rotation",
            last_rotation_timestamp.clone(),
        );
        for trigger in RotationTrigger::ALL {
            for result in ["success", "conflict", "error"] {
                let _ = rotations.get_or_create(&RotationLabels {
                    trigger: trigger.as_str(),
                    result,
                });
            }
        }
        for reason in crate::runtime::error::Error::REASONS {
            let _ = reconcile_errors.get_or_create(&ReasonLabels { reason });
        }
        for reason in NOT_READY_REASONS {
            let _ = apps_not_ready.get_or_create(&ReasonLabels { reason });
        }
        let verifications = Family::<ResultLabels, Counter>::default();
        registry.register(
            "verifications",
            "Client credential verifications (POST /api/v1/oauth-apps/verify) by result",
            verifications.clone(),
        );
        for result in VERIFICATION_RESULTS {
            let _ = verifications.get_or_create(&ResultLabels { result });
        }
        let rollout_restarts = Family::<RestartLabels, Counter>::default();
        registry.register(
            "rollout_restarts",
            "Rollout restarts of spec.rolloutRestartTargets after rotations, by kind and result",
            rollout_restarts.clone(),
        );
        for kind in ["Deployment", "StatefulSet", "DaemonSet"] {
            for result in RESTART_RESULTS {
                let _ = rollout_restarts.get_or_create(&RestartLabels { kind, result });
            }
        }
        let scheduled_rotations_waiting = Gauge::default();
        registry.register(
            "scheduled_rotations_waiting",
            "Scheduled rotations waiting their turn under --max-scheduled-rotations-per-second",
            scheduled_rotations_waiting.clone(),
        );
        let scheduled_rotations_waited = Counter::default();
        registry.register(
            "scheduled_rotations_waited",
            "Scheduled rotations that had to wait their turn under --max-scheduled-rotations-per-second",
            scheduled_rotations_waited.clone(),
        );
        Self {
            rollout_restarts,
            verifications,
            scheduled_rotations_waiting,
            scheduled_rotations_waited,
            registry,
            rotations,
            rotation_duration,
            reconciles,
            reconciles_deferred,
            reconcile_duration,
            reconcile_errors,
            writes,
            content_checks,
            apps,
            apps_not_ready,
            apps_rotation_overdue,
            leader,
            record_key_missing,
            record_keys,
            records_to_resign,
            repairs_held,
            apps_managed_elsewhere,
            retired_records,
            repair_brake_engaged,
            last_rotation_timestamp,
            api_requests,
            api_request_duration,
        }
    }

    /// Counts one answered REST API request.
    pub fn api_request(&self, route: &str, method: &str, code: u16, took: Duration) {
        self.api_requests
            .get_or_create(&RequestLabels {
                route: route.to_string(),
                method: method.to_string(),
                code,
            })
            .inc();
        self.api_request_duration
            .get_or_create(&RouteLabels {
                route: route.to_string(),
            })
            .observe(took.as_secs_f64());
    }

    pub fn rotation(&self, trigger: RotationTrigger, result: &'static str, took: Option<Duration>) {
        self.rotations
            .get_or_create(&RotationLabels {
                trigger: trigger.as_str(),
                result,
            })
            .inc();
        if let Some(took) = took {
            self.rotation_duration.observe(took.as_secs_f64());
            self.last_rotation_timestamp.set(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs_f64())
                    .unwrap_or_default(),
            );
        }
    }

    /// Sets the app gauges (`oauthapp_apps`, `oauthapp_apps_not_ready`,
    /// `oauthapp_apps_rotation_overdue`).
    pub fn set_app_counts(&self, counts: &AppCounts) {
        for (ready, n) in [
            ("true", counts.ready),
            ("false", counts.not_ready),
            ("unknown", counts.unknown),
        ] {
            self.apps.get_or_create(&ReadyLabels { ready }).set(n);
        }
        for (reason, n) in NOT_READY_REASONS.into_iter().zip(counts.not_ready_by_reason) {
            self.apps_not_ready.get_or_create(&ReasonLabels { reason }).set(n);
        }
        self.apps_rotation_overdue.set(counts.rotation_overdue);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_with_the_prefix_and_total_suffix() {
        let m = Metrics::new();
        m.rotation(RotationTrigger::Api, "success", Some(Duration::from_millis(30)));
        let text = m.render();
        assert!(
            text.contains("oauthapp_rotations_total{trigger=\"Api\",result=\"success\"} 1"),
            "{text}"
        );
        assert!(text.contains("oauthapp_rotations_total{trigger=\"Schedule\",result=\"success\"} 0"));
        assert!(
            text.contains("oauthapp_rotation_duration_seconds_count 1"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn not_ready_reasons_are_a_fixed_set_with_a_zero_for_each() {
        assert_eq!(not_ready_reason("SecretConflict"), "SecretConflict");
        assert_eq!(not_ready_reason("ClientIdConflict"), "ClientIdConflict");
        assert_eq!(not_ready_reason("SomethingNew"), "Other");
        let text = Metrics::new().render();
        assert!(
            text.contains("oauthapp_reconcile_errors_total{reason=\"KubeError\"} 0"),
            "{text}"
        );
        for reason in NOT_READY_REASONS {
            assert!(
                text.contains(&format!("oauthapp_apps_not_ready{{reason=\"{reason}\"}} 0")),
                "{text}"
            );
        }
    }

    #[test]
    fn apps_are_counted_by_ready_reason_and_overdue_schedule() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
        let now = jiff::Timestamp::from_second(1_800_000_000).expect("timestamp");
        let app = |ready: Option<(&str, &str)>, next_in_secs: Option<i64>| {
            let mut app = crate::model::crd::OAuthApp::new("a", Default::default());
            app.status = Some(crate::model::crd::OAuthAppStatus {
                conditions: ready
                    .map(|(status, reason)| Condition {
                        type_: "Ready".into(),
                        status: status.into(),
                        reason: reason.into(),
                        message: String::new(),
                        last_transition_time: Time(now),
                        observed_generation: None,
                    })
                    .into_iter()
                    .collect(),
                next_rotation_time: next_in_secs.map(|s| Time(now + jiff::SignedDuration::from_secs(s))),
                ..Default::default()
            });
            crate::runtime::cached::CachedApp::from(app)
        };
        let apps = [
            app(Some(("True", "SecretReady")), Some(60)),
            app(Some(("True", "SecretReady")), Some(-1)),
            app(Some(("False", "SecretConflict")), Some(-3600)),
            app(Some(("False", "SecretConflict")), None),
            app(Some(("False", "ClientIdConflict")), None),
            app(Some(("False", "SomethingNew")), None),
            app(None, None),
        ];
        let counts = AppCounts::of(&apps, now);
        assert_eq!(
            counts,
            AppCounts {
                ready: 2,
                not_ready: 4,
                unknown: 1,
                not_ready_by_reason: [2, 0, 0, 0, 0, 1, 1],
                rotation_overdue: 2,
            }
        );
        let m = Metrics::new();
        m.set_app_counts(&counts);
        let text = m.render();
        assert!(
            text.contains("oauthapp_apps_not_ready{reason=\"SecretConflict\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("oauthapp_apps_not_ready{reason=\"Other\"} 1"),
            "{text}"
        );
        assert!(text.contains("oauthapp_apps_rotation_overdue 2"), "{text}");
        assert!(text.contains("oauthapp_apps{ready=\"unknown\"} 1"), "{text}");
    }

    #[test]
    fn api_requests_are_counted_by_route_template_method_and_code() {
        let m = Metrics::new();
        let rotate = "/api/v1/oauth-apps/{id}/rotate";
        m.api_request(rotate, "POST", 200, Duration::from_millis(20));
        m.api_request(rotate, "POST", 200, Duration::from_millis(22));
        m.api_request(rotate, "POST", 409, Duration::from_millis(3));
        let text = m.render();
        let line = |code: u16| {
            format!("oauthapp_api_requests_total{{route=\"{rotate}\",method=\"POST\",code=\"{code}\"}}")
        };
        assert!(text.contains(&format!("{} 2", line(200))), "{text}");
        assert!(text.contains(&format!("{} 1", line(409))), "{text}");
        assert!(
            text.contains(&format!(
                "oauthapp_api_request_duration_seconds_count{{route=\"{rotate}\"}} 3"
            )),
            "{text}"
        );
    }
}
