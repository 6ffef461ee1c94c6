//! The results: `latest.json` (every figure, for tools) and `latest.md` (a table a person reads:
//! each figure, its goal, and whether it is met). Goals are recorded, never enforced.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

use crate::Settings;

/// The app count the idle RSS per app is extrapolated to.
const EXTRAPOLATE_APPS: usize = 100_000;
/// Latency p50 goal: within this factor of floor_hash + 2 × floor_write.
const LATENCY_FACTOR: f64 = 1.3;
/// Throughput and provisioning goal: this share of the hashing bound.
const HASHING_SHARE: f64 = 0.8;
const RESTART_READY_GOAL_S: f64 = 20.0;
/// Uncached verify p50 goal: within this factor of floor_hash (a verification is one hash).
const VERIFY_HASH_FACTOR: f64 = 1.2;
/// Cached verify p50 goal.
const VERIFY_CACHED_GOAL_MS: f64 = 1.0;
const RSS_GOAL_MIB: f64 = 64.0;
/// Idle RSS goal at the scale phase's apps (and no more than the peer's).
const IDLE_RSS_GOAL_MIB: f64 = 48.0;
/// Heap bytes per app in the two watch caches (the scale issue's goal).
const CACHE_BYTES_GOAL: u64 = 1000;
/// REST rotate p50 goal with a warm pool: within this factor of 2 × floor_write.
const POOL_LATENCY_FACTOR: f64 = 1.3;
/// Operator CPU per rotation under load: within this factor of floor_hash.
const CPU_HASH_FACTOR: f64 = 1.1;

#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    pub n: usize,
    pub p50: f64,
    pub p99: f64,
    pub mean: f64,
    pub min: f64,
    pub max: f64,
}

impl Stats {
    /// Nearest-rank percentiles of `samples`.
    pub fn of(samples: &[f64]) -> Stats {
        let mut v = samples.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        if n == 0 {
            return Stats::default();
        }
        let rank = |q: f64| v[((q * n as f64).ceil() as usize).clamp(1, n) - 1];
        Stats {
            n,
            p50: rank(0.50),
            p99: rank(0.99),
            mean: v.iter().sum::<f64>() / n as f64,
            min: v[0],
            max: v[n - 1],
        }
    }

    fn json(&self) -> Value {
        json!({"n": self.n, "p50": r2(self.p50), "p99": r2(self.p99), "mean": r2(self.mean),
               "min": r2(self.min), "max": r2(self.max)})
    }
}

pub struct Machine {
    pub cores: usize,
    pub memory_gib: f64,
    pub cpu_model: String,
    pub kernel: String,
}

#[derive(Default)]
pub struct Versions {
    pub operator_commit: String,
    pub kubernetes: String,
    pub etcd: String,
    pub rustc: String,
}

/// One goal: the figure, what it must reach, whether it does.
struct Goal {
    key: &'static str,
    label: String,
    value: String,
    goal: String,
    met: Option<bool>,
}

#[derive(Default)]
pub struct Report {
    pub machine: Machine,
    pub versions: Versions,
    pub settings: BTreeMap<&'static str, Value>,
    pub started: String,
    pub hash_m_kib: u32,
    pub hash_t: u32,
    pub hash_p: u32,
    pub hash_workers: usize,

    pub floor_hash: Stats,
    pub floor_hash_start: Stats,
    pub floor_write_start: Stats,
    pub floor_write: Stats,
    pub floor_secret_write: Stats,
    pub floor_status_write: Stats,

    pub rest: Stats,
    pub rest_operator_mean_ms: f64,
    /// API server requests per REST rotation, by verb and resource (the server's counters).
    pub rest_requests_per_rotation: BTreeMap<String, f64>,
    pub annotation: Stats,
    pub annotation_patch: Stats,
    pub annotation_operator_mean_ms: f64,
    pub annotation_requests_per_rotation: BTreeMap<String, f64>,
    pub provision_requests_per_app: BTreeMap<String, f64>,

    pub throughput_per_s: f64,
    pub throughput_ok: usize,
    pub throughput_failed: usize,
    pub throughput_operator_mean_ms: f64,
    /// CPU cores each process used during the throughput window.
    pub throughput_cpu: BTreeMap<String, f64>,

    pub rest_standby: Stats,
    pub rest_standby_requests_per_rotation: BTreeMap<String, f64>,
    /// Writes the leader made while the standby served the REST rotations.
    pub rest_standby_leader_writes: f64,
    pub annotation_standby: Stats,

    /// POST /api/v1/oauth-apps/verify, one at a time, a different wrong secret each call.
    pub verify: Stats,
    /// The same, the same right secret each call (answered from the operator's memory).
    pub verify_cached: Stats,
    pub verify_throughput_per_s: f64,
    pub verify_throughput_ok: usize,
    pub verify_throughput_failed: usize,
    /// CPU cores each process used during the verify throughput window.
    pub verify_throughput_cpu: BTreeMap<String, f64>,

    pub apps: usize,
    pub create_all_s: f64,
    pub provision_s: f64,
    pub provision_writes: f64,
    pub rss_provision_mib: f64,
    pub restart_ready_s: f64,
    pub restart_writes: f64,
    pub idle_secs: u64,
    pub idle_writes: f64,
    pub idle_reconciles: f64,
    pub idle_cpu_percent: f64,
    pub rss_restarted_mib: f64,
    pub rss_idle_mib: f64,
    /// The operator's RSS with its watches synced and no app yet.
    pub rss_empty_mib: f64,
    /// Of that, the file-backed pages (its binary's code and read-only data).
    pub rss_empty_file_mib: f64,
    /// The idle RSS, anonymous (heap, stacks) and file-backed.
    pub rss_idle_anon_mib: f64,
    pub rss_idle_file_mib: f64,
    /// Heap bytes per app in the operator's two watch caches, counted by `oauthapp-cache-bytes`
    /// (dhat) on the scale phase's apps and Secrets: the app cache, the Secret cache.
    pub cache_bytes_per_app: Option<(u64, u64)>,

    /// Annotate → the app's Secret data changed (watch), in the annotation run.
    pub annotation_secret: Stats,
    /// The operator's CPU time over the throughput window ÷ the rotations it made.
    pub operator_cpu_ms_per_rotation: f64,

    /// Whether the peer phase ran (its source was there).
    pub peer_ran: bool,
    pub peer_provision_s: f64,
    pub peer_rss_provision_mib: f64,
    pub peer_regenerate: Stats,
    pub peer_patch: Stats,
    /// The same, each regeneration 100 ms after the last (the peer's client rate limiter idle).
    pub peer_regenerate_paced: Stats,
    pub peer_requests_per_regeneration: BTreeMap<String, f64>,
    pub peer_idle_secs: u64,
    pub peer_idle_cpu_percent: f64,
    pub peer_rss_idle_mib: f64,
    pub peer_rss_peak_mib: f64,

    goals: Vec<Goal>,
}

impl Default for Machine {
    fn default() -> Self {
        Machine::detect()
    }
}

impl Machine {
    pub fn detect() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kib: f64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0.0);
        Machine {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_gib: mem_kib / 1024.0 / 1024.0,
            cpu_model: cpuinfo
                .lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_string())
                .unwrap_or_else(|| "unknown".into()),
            kernel: run(Command::new("uname").arg("-r")),
        }
    }
}

fn run(cmd: &mut Command) -> String {
    cmd.output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// `GET secrets 1.00, PUT secrets 1.00, ...`
fn mix(requests: &BTreeMap<String, f64>) -> String {
    if requests.is_empty() {
        return "—".into();
    }
    requests
        .iter()
        .map(|(k, v)| format!("{k} {v:.2}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `operator 1.10, kube-apiserver 0.60, ...`
fn cores(used: &BTreeMap<String, f64>) -> String {
    used.iter()
        .map(|(k, v)| format!("{k} {v:.2}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn r2(v: f64) -> Value {
    if v.is_finite() {
        json!((v * 100.0).round() / 100.0)
    } else {
        Value::Null
    }
}

impl Report {
    pub fn new(repo: &Path, settings: &Settings) -> Report {
        let git = |args: &[&str]| run(Command::new("git").arg("-C").arg(repo).args(args));
        let mut commit = git(&["rev-parse", "--short=12", "HEAD"]);
        // The operator binary is built from the work tree: say so when it differs from HEAD.
        if !git(&[
            "status",
            "--porcelain",
            "--untracked-files=no",
            "--",
            "src",
            "Cargo.toml",
            "Cargo.lock",
        ])
        .is_empty()
        {
            commit.push_str("-dirty");
        }
        let versions_env =
            std::fs::read_to_string(repo.join("tests/controlplane/versions.env")).unwrap_or_default();
        let etcd = versions_env
            .lines()
            .find_map(|l| l.strip_prefix("ETCD_VERSION="))
            .unwrap_or_default()
            .trim_matches('"')
            .to_string();
        let settings_json = BTreeMap::from([
            ("quick", json!(settings.quick)),
            ("calls", json!(settings.calls)),
            ("throughput_secs", json!(settings.throughput_secs)),
            ("throughput_callers", json!(crate::LATENCY_APPS)),
            ("verify_throughput_callers", json!(crate::LATENCY_APPS)),
            ("apps", json!(settings.apps)),
            ("idle_secs", json!(settings.idle_secs)),
            ("floor_samples", json!(settings.floor_samples)),
            ("creates_in_flight", json!(crate::CREATES_IN_FLIGHT)),
        ]);
        Report {
            machine: Machine::detect(),
            versions: Versions {
                operator_commit: commit,
                etcd,
                rustc: run(Command::new("rustc").arg("--version")),
                ..Default::default()
            },
            settings: settings_json,
            started: jiff::Timestamp::now()
                .round(jiff::Unit::Second)
                .unwrap_or_default()
                .to_string(),
            hash_m_kib: settings.hash.m_cost_kib,
            hash_t: settings.hash.t_cost,
            hash_p: settings.hash.p_cost,
            hash_workers: settings.hash_workers,
            apps: settings.apps,
            idle_secs: settings.idle_secs,
            ..Default::default()
        }
    }

    /// cores / floor_hash: rotations per second if the machine did nothing but hash.
    pub fn hashing_bound_per_s(&self) -> f64 {
        self.machine.cores as f64 * 1000.0 / self.floor_hash.p50
    }

    fn latency_floor_ms(&self) -> f64 {
        self.floor_hash.p50 + 2.0 * self.floor_write.p50
    }

    fn latency_goal_ms(&self) -> f64 {
        LATENCY_FACTOR * self.latency_floor_ms()
    }

    fn verify_goal_ms(&self) -> f64 {
        VERIFY_HASH_FACTOR * self.floor_hash.p50
    }

    /// Evaluates every goal.
    pub fn finish(&mut self) {
        let goal_ms = self.latency_goal_ms();
        let bound = self.hashing_bound_per_s();
        let mut goals = Vec::new();
        let latency = |key, label: &str, s: &Stats| Goal {
            key,
            label: label.into(),
            value: format!("p50 {:.1} ms · p99 {:.1} ms", s.p50, s.p99),
            goal: format!("p50 ≤ {goal_ms:.1} ms"),
            met: Some(s.p50 <= goal_ms),
        };
        let write = self.floor_write.p50;
        let writes_goal = |key, label: &str, s: &Stats, writes: f64| Goal {
            key,
            label: label.into(),
            value: format!("p50 {:.1} ms · p99 {:.1} ms", s.p50, s.p99),
            goal: format!(
                "p50 ≤ {:.1} ms (1.3 × {writes} × floor_write)",
                POOL_LATENCY_FACTOR * writes * write
            ),
            met: Some(s.p50 <= POOL_LATENCY_FACTOR * writes * write),
        };
        goals.push(writes_goal(
            "rest_rotate_p50_ms",
            "REST rotate, one at a time",
            &self.rest,
            2.0,
        ));
        goals.push(Goal {
            key: "annotation_secret_p50_ms",
            label: "annotate → Secret data changed (watch)".into(),
            value: format!(
                "p50 {:.1} ms · p99 {:.1} ms",
                self.annotation_secret.p50, self.annotation_secret.p99
            ),
            goal: if self.peer_ran {
                format!(
                    "p50 ≤ {:.1} ms (the peer's regenerate p50, spaced out)",
                    self.peer_goal_ms()
                )
            } else {
                "≤ the peer's (not run)".into()
            },
            met: self
                .peer_ran
                .then(|| self.annotation_secret.p50 <= self.peer_goal_ms()),
        });
        goals.push(writes_goal(
            "annotation_rotate_p50_ms",
            "annotate → status.rotationId changes (watch)",
            &self.annotation,
            3.0,
        ));
        if self.peer_ran {
            goals.push(Goal {
                key: "peer_regenerate_p50_ms",
                label: "peer: annotate → Secret data changed (watch), back to back".into(),
                value: format!(
                    "p50 {:.1} ms · p99 {:.1} ms",
                    self.peer_regenerate.p50, self.peer_regenerate.p99
                ),
                goal: "—".into(),
                met: None,
            });
            goals.push(Goal {
                key: "peer_regenerate_paced_p50_ms",
                label: "peer: the same, 100 ms apart (its client's 20 requests/s limiter idle)".into(),
                value: format!(
                    "p50 {:.1} ms · p99 {:.1} ms",
                    self.peer_regenerate_paced.p50, self.peer_regenerate_paced.p99
                ),
                goal: "—".into(),
                met: None,
            });
        }
        goals.push(Goal {
            key: "throughput_rotations_per_s",
            label: format!("throughput, {} callers on distinct apps", crate::LATENCY_APPS),
            value: format!(
                "{:.1} rotations/s ({:.0} % of {bound:.1}/s)",
                self.throughput_per_s,
                100.0 * self.throughput_per_s / bound
            ),
            goal: format!("≥ {:.1}/s (80 % of the hashing bound)", HASHING_SHARE * bound),
            met: Some(self.throughput_per_s >= HASHING_SHARE * bound),
        });
        goals.push(Goal {
            key: "operator_cpu_ms_per_rotation",
            label: "operator CPU per rotation, under the throughput load".into(),
            value: format!(
                "{:.1} ms (floor_hash {:.1} ms)",
                self.operator_cpu_ms_per_rotation, self.floor_hash.p50
            ),
            goal: format!(
                "≤ {:.1} ms ({CPU_HASH_FACTOR} × floor_hash)",
                CPU_HASH_FACTOR * self.floor_hash.p50
            ),
            met: Some(self.operator_cpu_ms_per_rotation <= CPU_HASH_FACTOR * self.floor_hash.p50),
        });
        let provision_rate = self.apps as f64 / self.provision_s;
        goals.push(Goal {
            key: "provision_10k_s",
            label: format!("provision {} apps (create → all Ready)", self.apps),
            value: format!(
                "{:.1} s ({provision_rate:.1} apps/s, {:.0} % of the bound)",
                self.provision_s,
                100.0 * provision_rate / bound
            ),
            goal: format!(
                "≤ {:.1} s (80 % of the hashing bound)",
                self.apps as f64 / (HASHING_SHARE * bound)
            ),
            met: Some(provision_rate >= HASHING_SHARE * bound),
        });
        goals.push(Goal {
            key: "restart_ready_10k_s",
            label: format!("restart → all {} reconciled and Ready", self.apps),
            value: format!("{:.2} s", self.restart_ready_s),
            goal: format!("< {RESTART_READY_GOAL_S:.0} s"),
            met: Some(self.restart_ready_s < RESTART_READY_GOAL_S),
        });
        goals.push(Goal {
            key: "restart_writes_10k",
            label: "API writes during the restart".into(),
            value: format!("{}", self.restart_writes),
            goal: "0".into(),
            met: Some(self.restart_writes == 0.0),
        });
        goals.push(Goal {
            key: "idle_writes",
            label: format!("API writes in {} idle seconds", self.idle_secs),
            value: format!("{}", self.idle_writes),
            goal: "0".into(),
            met: Some(self.idle_writes == 0.0),
        });
        let idle_goal = self.idle_rss_goal_mib();
        goals.push(Goal {
            key: "idle_rss_10k_mib",
            label: format!(
                "operator idle RSS, {} apps (after the restart and the idle window)",
                self.apps
            ),
            value: format!("{:.1} MiB", self.rss_idle_mib),
            goal: if self.peer_ran {
                format!("≤ {idle_goal:.1} MiB (the peer's idle RSS, and ≤ {IDLE_RSS_GOAL_MIB:.0})")
            } else {
                format!("≤ {idle_goal:.1} MiB")
            },
            met: Some(self.rss_idle_mib <= idle_goal),
        });
        if let Some((app, secret)) = self.cache_bytes_per_app {
            goals.push(Goal {
                key: "cache_bytes_per_app",
                label: "heap bytes per app in the caches (apps + Secrets, counted)".into(),
                value: format!("{} ({app} + {secret})", app + secret),
                goal: format!("≤ {CACHE_BYTES_GOAL}"),
                met: Some(app + secret <= CACHE_BYTES_GOAL),
            });
        }
        goals.push(Goal {
            key: "peak_rss_10k_mib",
            label: format!("operator peak RSS, {} apps", self.apps),
            value: format!(
                "{:.1} MiB (provisioning {:.1}, after restart {:.1})",
                self.rss_peak_mib(),
                self.rss_provision_mib,
                self.rss_restarted_mib,
            ),
            goal: format!("≤ {RSS_GOAL_MIB:.0} MiB"),
            met: Some(self.rss_peak_mib() <= RSS_GOAL_MIB),
        });
        goals.push(Goal {
            key: "rss_per_app_bytes",
            label: "idle RSS per app and its Secret (caches)".into(),
            value: format!(
                "{:.0} bytes → {} apps ≈ {:.0} MiB (extrapolated)",
                self.rss_per_app_kib() * 1024.0,
                EXTRAPOLATE_APPS,
                self.rss_extrapolated_mib()
            ),
            goal: "—".into(),
            met: None,
        });
        if self.peer_ran {
            goals.push(Goal {
                key: "peer_idle_rss_10k_mib",
                label: format!(
                    "peer idle RSS, {} Secrets (after {} idle seconds)",
                    self.apps, self.peer_idle_secs
                ),
                value: format!("{:.1} MiB", self.peer_rss_idle_mib),
                goal: "—".into(),
                met: None,
            });
            goals.push(Goal {
                key: "peer_peak_rss_10k_mib",
                label: format!("peer peak RSS, {} Secrets", self.apps),
                value: format!(
                    "{:.1} MiB (provisioning {:.1})",
                    self.peer_rss_peak_mib, self.peer_rss_provision_mib
                ),
                goal: "—".into(),
                met: None,
            });
        }
        goals.push(Goal {
            key: "idle_cpu_percent",
            label: "operator CPU while idle (of one core)".into(),
            value: format!("{:.3} %", self.idle_cpu_percent),
            goal: "—".into(),
            met: None,
        });
        goals.push(latency(
            "rest_rotate_standby_p50_ms",
            "REST rotate sent to the standby replica",
            &self.rest_standby,
        ));
        goals.push(latency(
            "annotation_rotate_standby_p50_ms",
            "annotate → rotationId, two replicas",
            &self.annotation_standby,
        ));
        let verify_goal_ms = self.verify_goal_ms();
        goals.push(Goal {
            key: "verify_p50_ms",
            label: "verify, uncached (a different wrong secret each call), one at a time".into(),
            value: format!("p50 {:.1} ms · p99 {:.1} ms", self.verify.p50, self.verify.p99),
            goal: format!("p50 ≤ {verify_goal_ms:.1} ms ({VERIFY_HASH_FACTOR} × floor_hash)"),
            met: Some(self.verify.p50 <= verify_goal_ms),
        });
        goals.push(Goal {
            key: "verify_cached_p50_ms",
            label: "verify, cached (the same right secret), one at a time".into(),
            value: format!(
                "p50 {:.2} ms · p99 {:.2} ms",
                self.verify_cached.p50, self.verify_cached.p99
            ),
            goal: format!("p50 ≤ {VERIFY_CACHED_GOAL_MS:.0} ms"),
            met: Some(self.verify_cached.p50 <= VERIFY_CACHED_GOAL_MS),
        });
        goals.push(Goal {
            key: "verify_throughput_per_s",
            label: format!(
                "verify throughput, {} callers on distinct apps, uncached",
                crate::LATENCY_APPS
            ),
            value: format!(
                "{:.1} verifications/s ({:.0} % of {bound:.1}/s)",
                self.verify_throughput_per_s,
                100.0 * self.verify_throughput_per_s / bound
            ),
            goal: format!("≥ {:.1}/s (80 % of the hashing bound)", HASHING_SHARE * bound),
            met: Some(self.verify_throughput_per_s >= HASHING_SHARE * bound),
        });
        self.goals = goals;
    }

    /// What one app (with its Secret) adds to the idle operator's RSS after the restart.
    fn rss_per_app_kib(&self) -> f64 {
        (self.rss_idle_mib - self.rss_empty_mib) * 1024.0 / self.apps as f64
    }

    /// Idle RSS extrapolated to [`EXTRAPOLATE_APPS`] apps: the RSS with no app plus the
    /// measured cost per app.
    fn rss_extrapolated_mib(&self) -> f64 {
        self.rss_empty_mib + self.rss_per_app_kib() * EXTRAPOLATE_APPS as f64 / 1024.0
    }

    /// The peer's regenerate p50 on its own ground: spaced out, when measured (else back to
    /// back).
    fn peer_goal_ms(&self) -> f64 {
        if self.peer_regenerate_paced.n > 0 {
            self.peer_regenerate_paced.p50
        } else {
            self.peer_regenerate.p50
        }
    }

    fn idle_rss_goal_mib(&self) -> f64 {
        if self.peer_ran {
            IDLE_RSS_GOAL_MIB.min(self.peer_rss_idle_mib)
        } else {
            IDLE_RSS_GOAL_MIB
        }
    }

    fn rss_peak_mib(&self) -> f64 {
        self.rss_provision_mib.max(self.rss_restarted_mib)
    }

    pub fn json(&self) -> Value {
        let bound = self.hashing_bound_per_s();
        let floor = self.latency_floor_ms();
        json!({
            "started": self.started,
            "machine": {
                "cores": self.machine.cores,
                "memory_gib": r2(self.machine.memory_gib),
                "cpu_model": self.machine.cpu_model,
                "kernel": self.machine.kernel,
            },
            "versions": {
                "operator_commit": self.versions.operator_commit,
                "kubernetes": self.versions.kubernetes,
                "etcd": self.versions.etcd,
                "rustc": self.versions.rustc,
            },
            "argon2": {"algorithm": "argon2id", "m_cost_kib": self.hash_m_kib, "t_cost": self.hash_t,
                       "p_cost": self.hash_p, "hash_workers": self.hash_workers},
            "settings": self.settings,

            "floor_hash_ms": r2(self.floor_hash.p50),
            "floor_write_ms": r2(self.floor_write.p50),
            "floor_secret_write_ms": r2(self.floor_secret_write.p50),
            "floor_status_write_ms": r2(self.floor_status_write.p50),
            "latency_floor_ms": r2(floor),
            "latency_goal_ms": r2(self.latency_goal_ms()),
            "hashing_bound_per_s": r2(bound),

            "rest_rotate_p50_ms": r2(self.rest.p50),
            "rest_rotate_p99_ms": r2(self.rest.p99),
            "annotation_rotate_p50_ms": r2(self.annotation.p50),
            "annotation_rotate_p99_ms": r2(self.annotation.p99),
            "annotation_patch_p50_ms": r2(self.annotation_patch.p50),
            "throughput_rotations_per_s": r2(self.throughput_per_s),
            "provision_10k_s": r2(self.provision_s),
            "restart_ready_10k_s": r2(self.restart_ready_s),
            "restart_writes_10k": self.restart_writes,
            "idle_writes": self.idle_writes,
            "rss_10k_mib": r2(self.rss_peak_mib()),
            "annotation_secret_p50_ms": r2(self.annotation_secret.p50),
            "annotation_secret_p99_ms": r2(self.annotation_secret.p99),
            "idle_rss_10k_mib": r2(self.rss_idle_mib),
            "peak_rss_10k_mib": r2(self.rss_peak_mib()),
            "rss_per_app_bytes": (self.rss_per_app_kib() * 1024.0).round(),
            "rss_100k_extrapolated_mib": r2(self.rss_extrapolated_mib()),
            "operator_cpu_ms_per_rotation": r2(self.operator_cpu_ms_per_rotation),
            "peer_regenerate_p50_ms": self.peer_ran.then(|| r2(self.peer_regenerate.p50)),
            "peer_regenerate_p99_ms": self.peer_ran.then(|| r2(self.peer_regenerate.p99)),
            "peer_regenerate_paced_p50_ms": self.peer_ran.then(|| r2(self.peer_regenerate_paced.p50)),
            "peer_regenerate_paced_p99_ms": self.peer_ran.then(|| r2(self.peer_regenerate_paced.p99)),
            "peer_idle_rss_10k_mib": self.peer_ran.then(|| r2(self.peer_rss_idle_mib)),
            "peer_peak_rss_10k_mib": self.peer_ran.then(|| r2(self.peer_rss_peak_mib)),
            "idle_cpu_percent": (self.idle_cpu_percent * 1000.0).round() / 1000.0,
            "rest_rotate_standby_p50_ms": r2(self.rest_standby.p50),
            "rest_rotate_standby_p99_ms": r2(self.rest_standby.p99),
            "annotation_rotate_standby_p50_ms": r2(self.annotation_standby.p50),
            "annotation_rotate_standby_p99_ms": r2(self.annotation_standby.p99),
            "verify_goal_ms": r2(self.verify_goal_ms()),
            "verify_p50_ms": r2(self.verify.p50),
            "verify_p99_ms": r2(self.verify.p99),
            "verify_cached_p50_ms": r2(self.verify_cached.p50),
            "verify_cached_p99_ms": r2(self.verify_cached.p99),
            "verify_throughput_per_s": r2(self.verify_throughput_per_s),

            "ratios": {
                "rest_rotate_p50_over_floor": r2(self.rest.p50 / floor),
                "annotation_rotate_p50_over_floor": r2(self.annotation.p50 / floor),
                "rest_rotate_standby_p50_over_floor": r2(self.rest_standby.p50 / floor),
                "annotation_rotate_standby_p50_over_floor": r2(self.annotation_standby.p50 / floor),
                "throughput_over_hashing_bound": r2(self.throughput_per_s / bound),
                "provision_over_hashing_bound": r2(self.apps as f64 / self.provision_s / bound),
                "verify_p50_over_floor_hash": r2(self.verify.p50 / self.floor_hash.p50),
                "rest_rotate_p50_over_2_floor_write": r2(self.rest.p50 / (2.0 * self.floor_write.p50)),
                "annotation_rotate_p50_over_3_floor_write": r2(self.annotation.p50 / (3.0 * self.floor_write.p50)),
                "annotation_secret_p50_over_peer_regenerate_p50": self.peer_ran.then(|| r2(self.annotation_secret.p50 / self.peer_goal_ms())),
                "operator_cpu_per_rotation_over_floor_hash": r2(self.operator_cpu_ms_per_rotation / self.floor_hash.p50),
                "verify_throughput_over_hashing_bound": r2(self.verify_throughput_per_s / bound),
            },
            "goals_met": self.goals.iter().filter_map(|g| g.met.map(|m| (g.key, m))).collect::<BTreeMap<_, _>>(),
            "detail": {
                "floor_hash": self.floor_hash.json(),
                "floor_hash_at_start": self.floor_hash_start.json(),
                "floor_write_at_start": self.floor_write_start.json(),
                "floor_write": self.floor_write.json(),
                "floor_secret_write": self.floor_secret_write.json(),
                "floor_status_write": self.floor_status_write.json(),
                "rest_rotate": self.rest.json(),
                "rest_rotate_operator_mean_ms": r2(self.rest_operator_mean_ms),
                "rest_rotate_api_requests_per_rotation": self.rest_requests_per_rotation,
                "annotation_rotate": self.annotation.json(),
                "annotation_patch": self.annotation_patch.json(),
                "annotation_rotate_operator_mean_ms": r2(self.annotation_operator_mean_ms),
                "annotation_rotate_api_requests_per_rotation": self.annotation_requests_per_rotation,
                "provision_api_requests_per_app": self.provision_requests_per_app,
                "throughput_rotations": self.throughput_ok,
                "throughput_failed_calls": self.throughput_failed,
                "throughput_operator_mean_ms": r2(self.throughput_operator_mean_ms),
                "throughput_cpu_cores": self.throughput_cpu.iter().map(|(k, v)| (k.clone(), r2(*v))).collect::<BTreeMap<_, _>>(),
                "rest_rotate_standby": self.rest_standby.json(),
                "rest_rotate_standby_api_requests_per_rotation": self.rest_standby_requests_per_rotation,
                "rest_rotate_standby_leader_writes": self.rest_standby_leader_writes,
                "annotation_rotate_standby": self.annotation_standby.json(),
                "verify": self.verify.json(),
                "verify_cached": self.verify_cached.json(),
                "verify_throughput_calls": self.verify_throughput_ok,
                "verify_throughput_failed_calls": self.verify_throughput_failed,
                "verify_throughput_cpu_cores": self.verify_throughput_cpu.iter().map(|(k, v)| (k.clone(), r2(*v))).collect::<BTreeMap<_, _>>(),
                "apps": self.apps,
                "create_all_s": r2(self.create_all_s),
                "provision_writes": self.provision_writes,
                "rss_provision_mib": r2(self.rss_provision_mib),
                "rss_after_restart_peak_mib": r2(self.rss_restarted_mib),
                "rss_idle_mib": r2(self.rss_idle_mib),
                "rss_no_apps_mib": r2(self.rss_empty_mib),
                "rss_no_apps_file_mib": r2(self.rss_empty_file_mib),
                "rss_idle_anon_mib": r2(self.rss_idle_anon_mib),
                "rss_idle_file_mib": r2(self.rss_idle_file_mib),
                "rss_per_app_kib": r2(self.rss_per_app_kib()),
                "cache_bytes_per_app": self.cache_bytes_per_app.map(|(a, s)| json!({"apps": a, "secrets": s, "total": a + s})),
                "idle_reconciles": self.idle_reconciles,
                "annotation_secret": self.annotation_secret.json(),
                "peer": if self.peer_ran { json!({
                    "name": "mittwald/kubernetes-secret-generator",
                    "secrets": self.apps,
                    "provision_s": r2(self.peer_provision_s),
                    "rss_provision_mib": r2(self.peer_rss_provision_mib),
                    "regenerate": self.peer_regenerate.json(),
                    "regenerate_paced_100ms": self.peer_regenerate_paced.json(),
                    "annotate_patch": self.peer_patch.json(),
                    "api_requests_per_regeneration": self.peer_requests_per_regeneration,
                    "idle_secs": self.peer_idle_secs,
                    "idle_cpu_percent": (self.peer_idle_cpu_percent * 1000.0).round() / 1000.0,
                    "rss_idle_mib": r2(self.peer_rss_idle_mib),
                    "rss_peak_mib": r2(self.peer_rss_peak_mib),
                }) } else { Value::Null },
            },
        })
    }

    /// The run, the machine and the hash parameters: the opening lines of both reports.
    fn header(&self) -> String {
        let (m, v) = (&self.machine, &self.versions);
        format!(
            "Run {} · operator `{}` · Kubernetes {} · etcd {} · {}  \n\
             Machine: {} cores, {:.1} GiB, {} (Linux {})  \n\
             argon2id m={} KiB, t={}, p={}; {} hash workers · {} apps · idle window {} s{}\n\n",
            self.started,
            v.operator_commit,
            v.kubernetes,
            v.etcd,
            v.rustc,
            m.cores,
            m.memory_gib,
            m.cpu_model,
            m.kernel,
            self.hash_m_kib,
            self.hash_t,
            self.hash_p,
            self.hash_workers,
            self.apps,
            self.idle_secs,
            if self.settings.get("quick") == Some(&json!(true)) {
                " · **BENCH_QUICK smoke run: not comparable**"
            } else {
                ""
            }
        )
    }

    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let m = &self.machine;
        md.push_str("# oauthapp-operator benchmarks (`make bench`)\n\n");
        md.push_str(&self.header());
        md.push_str(&format!(
            "Floors, sampled in this run ({} times: at the start on a quiet machine, then between the \
             latency calls): one argon2id hash **{:.1} ms** (`floor_hash_ms`, median; {:.1} ms at the start); \
             one write round-trip from a plain kube client **{:.1} ms** (`floor_write_ms`; Secret replace \
             {:.1} ms, status replace {:.1} ms). Latency goal of the two-replica rows (and of the REST and annotation rows before the pool of ready hashes): p50 ≤ 1.3 × ({:.1} + 2 × {:.1}) = **{:.1} ms**; \
             REST rotate, with the pool: 1.3 × 2 × floor_write = **{:.1} ms**; annotate → status: 1.3 × 3 × floor_write = **{:.1} ms**. \
             Hashing bound: {} cores / floor_hash = **{:.1} rotations/s** (or uncached verifications/s). \
             Verify goal: p50 ≤ 1.2 × {:.1} = **{:.1} ms**.\n\n",
            self.floor_hash.n,
            self.floor_hash.p50,
            self.floor_hash_start.p50,
            self.floor_write.p50,
            self.floor_secret_write.p50,
            self.floor_status_write.p50,
            self.floor_hash.p50,
            self.floor_write.p50,
            self.latency_goal_ms(),
            POOL_LATENCY_FACTOR * 2.0 * self.floor_write.p50,
            POOL_LATENCY_FACTOR * 3.0 * self.floor_write.p50,
            m.cores,
            self.hashing_bound_per_s(),
            self.floor_hash.p50,
            self.verify_goal_ms()
        ));
        md.push_str("| measure | result | goal | met |\n| --- | --- | --- | --- |\n");
        for g in &self.goals {
            let met = match g.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "—",
            };
            md.push_str(&format!(
                "| {} (`{}`) | {} | {} | {met} |\n",
                g.label, g.key, g.value, g.goal
            ));
        }
        md.push_str(&format!(
            "\nDetail: the operator's own mean rotation time (its histogram) was {:.1} ms in the REST run, \
             {:.1} ms in the annotation run and {:.1} ms under the throughput load; the annotate request \
             itself took p50 {:.1} ms (included in the annotation latency). During the throughput \
             window the processes used these CPU cores: {}; during the verify throughput window \
             ({} failed calls): {}. Provisioning made {} API writes; the creates \
             were all accepted after {:.1} s. The idle window saw {} reconciles. Memory: {:.1} MiB \
             with no app ({:.1} MiB of it file-backed: the binary's code and read-only data), {:.1} \
             MiB idle with {} apps after the restart ({:.1} anonymous, {:.1} file-backed; {:.1} KiB \
             per app and its Secret); provisioning adds the hashing workers' argon2 memory ({} × {} KiB).\n\n\
             API server requests (its own counters, WATCH and LIST left out) per REST rotation: {}; \
             per annotation rotation: {}; per provisioned app: {}; per REST rotation served by the \
             standby: {} (the leader wrote {} times meanwhile).\n",
            self.rest_operator_mean_ms,
            self.annotation_operator_mean_ms,
            self.throughput_operator_mean_ms,
            self.annotation_patch.p50,
            cores(&self.throughput_cpu),
            self.verify_throughput_failed,
            cores(&self.verify_throughput_cpu),
            self.provision_writes,
            self.create_all_s,
            self.idle_reconciles,
            self.rss_empty_mib,
            self.rss_empty_file_mib,
            self.rss_idle_mib,
            self.apps,
            self.rss_idle_anon_mib,
            self.rss_idle_file_mib,
            self.rss_per_app_kib(),
            self.hash_workers,
            self.hash_m_kib,
            mix(&self.rest_requests_per_rotation),
            mix(&self.annotation_requests_per_rotation),
            mix(&self.provision_requests_per_app),
            mix(&self.rest_standby_requests_per_rotation),
            self.rest_standby_leader_writes,
        ));
        if self.peer_ran {
            md.push_str(&format!(
                "\nThe peer, mittwald's kubernetes-secret-generator (no hashing, one write), alone on the \
                 same control plane after our latency phases and before our scale phase: {} Secrets \
                 annotated for a generated `password` were all generated {:.1} s after the first create \
                 (RSS peak {:.1} MiB then); regenerate (annotate, then the data changes on a watch) back to \
                 back p50 {:.1} ms, p99 {:.1} ms (the annotate call itself p50 {:.1} ms), 100 ms apart p50 \
                 {:.1} ms, p99 {:.1} ms (back to back, its client's own limit of 20 requests/s, \
                 controller-runtime's default, makes each regeneration wait); API server requests per \
                 regeneration: {}; after {} idle seconds: RSS {:.1} MiB, peak {:.1} MiB, CPU {:.3} %. \
                 Ours: annotate → Secret data changed p50 {:.1} ms, p99 {:.1} ms.\n",
                self.apps,
                self.peer_provision_s,
                self.peer_rss_provision_mib,
                self.peer_regenerate.p50,
                self.peer_regenerate.p99,
                self.peer_patch.p50,
                self.peer_regenerate_paced.p50,
                self.peer_regenerate_paced.p99,
                mix(&self.peer_requests_per_regeneration),
                self.peer_idle_secs,
                self.peer_rss_idle_mib,
                self.peer_rss_peak_mib,
                self.peer_idle_cpu_percent,
                self.annotation_secret.p50,
                self.annotation_secret.p99,
            ));
        } else {
            md.push_str(
                "\nThe peer was not run (no source: `BENCH_PEER_SRC` unset and `../shared/peers` absent).\n",
            );
        }
        md
    }

    /// The scale run alone (`make bench-scale`): `scale-<apps>.md` in `dir`.
    pub fn write_scale(&self, dir: &Path) -> anyhow::Result<PathBuf> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(format!("scale-{}.md", self.apps));
        let tmp = path.with_extension("md.tmp");
        std::fs::write(&tmp, self.scale_markdown())?;
        std::fs::rename(&tmp, &path)?;
        Ok(path)
    }

    fn scale_markdown(&self) -> String {
        let m = &self.machine;
        let n = self.apps as f64;
        let bound = m.cores as f64 * 1000.0 / self.floor_hash.p50;
        let per_app = |mib: f64| (mib - self.rss_empty_mib) * 1024.0 * 1024.0 / n;
        let mut md = String::from("# oauthapp-operator at scale (`make bench-scale`)\n\n");
        md.push_str(&self.header());
        md.push_str("| measure | result |\n| --- | --- |\n");
        let rows = [
            (
                format!("provision {} apps (create → all Ready)", self.apps),
                format!(
                    "{:.1} s, {:.1} apps/s ({:.0} % of the hashing bound: {} cores / one hash {:.1} ms = {:.1}/s)",
                    self.provision_s,
                    n / self.provision_s,
                    100.0 * n / self.provision_s / bound,
                    m.cores,
                    self.floor_hash.p50,
                    bound
                ),
            ),
            (
                "API writes while provisioning".into(),
                format!("{}", self.provision_writes),
            ),
            (
                format!("restart → all {} reconciled and Ready", self.apps),
                format!("{:.2} s, {} writes", self.restart_ready_s, self.restart_writes),
            ),
            (
                format!("idle {} s", self.idle_secs),
                format!(
                    "{} writes, {} reconciles, CPU {:.3} % of a core",
                    self.idle_writes, self.idle_reconciles, self.idle_cpu_percent
                ),
            ),
            ("RSS with no app".into(), format!("{:.1} MiB", self.rss_empty_mib)),
            (
                format!("peak RSS provisioning ({} hash workers)", self.hash_workers),
                format!("{:.1} MiB", self.rss_provision_mib),
            ),
            (
                "peak RSS across the restart".into(),
                format!(
                    "{:.1} MiB ({:.0} bytes per app and its Secret)",
                    self.rss_restarted_mib,
                    per_app(self.rss_restarted_mib)
                ),
            ),
            (
                "idle RSS after the restart".into(),
                format!(
                    "{:.1} MiB ({:.1} anonymous, {:.1} file-backed; {:.0} bytes per app and its Secret)",
                    self.rss_idle_mib,
                    self.rss_idle_anon_mib,
                    self.rss_idle_file_mib,
                    per_app(self.rss_idle_mib)
                ),
            ),
        ];
        for (what, result) in rows {
            md.push_str(&format!("| {what} | {result} |\n"));
        }
        if let Some((app, secret)) = self.cache_bytes_per_app {
            md.push_str(&format!(
                "| heap bytes per app in the caches (counted) | {} ({app} the app cache, {secret} the Secret cache) |\n",
                app + secret
            ));
        }
        md.push_str(
            "\nA memory cgroup (a pod's limit) charges the same pages as the RSS: anonymous memory \
             and the binary's file-backed pages. Per app is (RSS − RSS with no app) / apps. The heap \
             bytes in the caches are counted by `oauthapp-cache-bytes` (a heap profiler), which \
             puts the same apps and Secrets into the operator's two caches the way its watches do.\n",
        );
        md
    }

    /// Writes latest.json and latest.md into `dir` (through temporary files: a run that fails
    /// half-way leaves the previous results whole).
    pub fn write(&self, dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
        std::fs::create_dir_all(dir)?;
        let json_path = dir.join("latest.json");
        let md_path = dir.join("latest.md");
        for (path, text) in [
            (&json_path, serde_json::to_string_pretty(&self.json())? + "\n"),
            (&md_path, self.markdown()),
        ] {
            let tmp = path.with_extension(format!(
                "{}.tmp",
                path.extension().and_then(|e| e.to_str()).unwrap_or("")
            ));
            std::fs::write(&tmp, text)?;
            std::fs::rename(&tmp, path)?;
        }
        Ok((json_path, md_path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(p50: f64, p99: f64) -> Stats {
        Stats {
            n: 1,
            p50,
            p99,
            ..Default::default()
        }
    }

    #[test]
    fn verify_figures_and_goals_are_reported() {
        let mut report = Report {
            machine: Machine {
                cores: 2,
                memory_gib: 1.0,
                cpu_model: "test".into(),
                kernel: "test".into(),
            },
            floor_hash: stats(10.0, 12.0),
            verify: stats(11.5, 20.0),
            verify_cached: stats(1.5, 3.0),
            verify_throughput_per_s: 170.0,
            apps: 1,
            ..Default::default()
        };
        report.finish();
        let json = report.json();
        assert_eq!(json["verify_p50_ms"], json!(11.5));
        assert_eq!(json["verify_p99_ms"], json!(20.0));
        assert_eq!(json["verify_cached_p50_ms"], json!(1.5));
        assert_eq!(json["verify_throughput_per_s"], json!(170.0));
        // p50 11.5 ≤ 1.2 × 10; cached 1.5 > 1 ms; 170/s ≥ 80 % of 2 cores / 10 ms = 160/s.
        assert_eq!(json["goals_met"]["verify_p50_ms"], json!(true));
        assert_eq!(json["goals_met"]["verify_cached_p50_ms"], json!(false));
        assert_eq!(json["goals_met"]["verify_throughput_per_s"], json!(true));
        report.verify = stats(12.5, 20.0);
        report.verify_throughput_per_s = 150.0;
        report.finish();
        let json = report.json();
        assert_eq!(json["goals_met"]["verify_p50_ms"], json!(false));
        assert_eq!(json["goals_met"]["verify_throughput_per_s"], json!(false));
        let md = report.markdown();
        for key in ["verify_p50_ms", "verify_cached_p50_ms", "verify_throughput_per_s"] {
            assert!(md.contains(&format!("(`{key}`)")), "{key} has a row:\n{md}");
        }
    }

    #[test]
    fn peer_figures_and_the_goals_against_them_are_reported() {
        let mut report = Report {
            machine: Machine {
                cores: 2,
                memory_gib: 1.0,
                cpu_model: "test".into(),
                kernel: "test".into(),
            },
            floor_hash: stats(10.0, 12.0),
            floor_write: stats(3.0, 4.0),
            annotation_secret: stats(9.0, 20.0),
            operator_cpu_ms_per_rotation: 10.5,
            apps: 10,
            rss_empty_mib: 10.0,
            rss_idle_mib: 40.0,
            peer_ran: true,
            peer_regenerate: stats(50.0, 55.0),
            peer_regenerate_paced: stats(8.0, 20.0),
            peer_rss_idle_mib: 35.0,
            peer_rss_peak_mib: 36.0,
            ..Default::default()
        };
        report.finish();
        let json = report.json();
        assert_eq!(json["peer_regenerate_p50_ms"], json!(50.0));
        assert_eq!(json["peer_regenerate_p99_ms"], json!(55.0));
        assert_eq!(json["peer_regenerate_paced_p50_ms"], json!(8.0));
        assert_eq!(json["peer_idle_rss_10k_mib"], json!(35.0));
        assert_eq!(json["peer_peak_rss_10k_mib"], json!(36.0));
        assert_eq!(json["annotation_secret_p50_ms"], json!(9.0));
        assert_eq!(json["idle_rss_10k_mib"], json!(40.0));
        assert_eq!(json["operator_cpu_ms_per_rotation"], json!(10.5));
        // 30 MiB over 10 apps: 3 MiB each.
        assert_eq!(json["rss_per_app_bytes"], json!(3.0 * 1024.0 * 1024.0));
        // Against the peer spaced out (8 ms), not back to back (50 ms); idle 40 > 35 (the peer's).
        assert_eq!(json["goals_met"]["annotation_secret_p50_ms"], json!(false));
        assert_eq!(json["goals_met"]["idle_rss_10k_mib"], json!(false));
        // 10.5 ≤ 1.1 × 10.
        assert_eq!(json["goals_met"]["operator_cpu_ms_per_rotation"], json!(true));
        report.rss_idle_mib = 30.0;
        report.finish();
        assert_eq!(report.json()["goals_met"]["idle_rss_10k_mib"], json!(true));

        report.peer_ran = false;
        report.finish();
        let json = report.json();
        assert_eq!(json["peer_regenerate_p50_ms"], Value::Null);
        assert!(json["goals_met"].get("annotation_secret_p50_ms").is_none());
        assert!(report.markdown().contains("The peer was not run"));
    }
}
