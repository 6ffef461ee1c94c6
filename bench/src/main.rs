//! `make bench`: how fast and how small the operator is, and how little it asks of the API server,
//! measured on a real local control plane with the release build. Writes
//! `bench/results/latest.json` and `bench/results/latest.md`.
//!
//! Every run measures its own floors (one argon2id hash; one write round-trip from a plain kube
//! client), so the results are ratios that survive a noisy machine. The phases:
//!
//! 1. REST rotate latency, one call at a time;
//! 2. annotation-to-rotation latency (annotate, then see `status.rotationId` change on a watch);
//! 3. throughput: 16 concurrent callers on distinct apps;
//! 6. `POST /api/v1/oauth-apps/verify`: latency uncached (a different wrong but well-formed
//!    secret per call, so every call hashes) and cached (the same right secret again and again),
//!    and uncached throughput with 16 concurrent callers;
//! 5. phases 1 and 2 again with two replicas, the REST calls going to the standby;
//! 4. scale: provision N apps (10,000), restart the operator, idle window (writes, CPU, RSS).
//!
//! Phase 4 runs last so that its 10,000 apps do not weigh on the latency phases.
//!
//! Environment: `BENCH_QUICK=1` (a smoke run: everything shorter and smaller), `BENCH_APPS`,
//! `BENCH_CALLS`, `BENCH_THROUGHPUT_SECS`, `BENCH_IDLE_SECS` (default 300), `BENCH_OPERATOR`
//! (the operator binary; default target/release/oauthapp-operator), `BENCH_OUT` (default
//! bench/results), `BENCH_SCALE_ONLY=1` (phase 4 alone, `make bench-scale`: its figures in
//! `scale-<apps>.md`), `BENCH_HASH_WORKERS` (the operator's `--hash-workers`; default one per
//! core, the operator's own default; `make bench-scale` passes the chart's `hashing.workers`).

#![recursion_limit = "512"]

mod cluster;
mod floors;
mod operator;
mod peer;
mod report;
mod secrets;
mod tracker;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use oauthapp_operator::model::crd::{
    CLIENT_ID_KEY, CLIENT_SECRET_KEY, OAuthApp, OAuthAppSpec, ROTATE_ANNOTATION,
};
use oauthapp_operator::model::secret::{ClientSecret, HashParams};
use serde_json::json;

use cluster::ControlPlane;
use floors::Floors;
use operator::Operator;
use report::{Report, Stats};
use secrets::SecretWatch;
use tracker::Tracker;

/// Apps the latency and throughput phases rotate (one per throughput caller).
const LATENCY_APPS: usize = 16;
/// Creates in flight while provisioning the scale phase's apps.
const CREATES_IN_FLIGHT: usize = 48;
/// Floor samples are taken after every this many latency calls (outside the timed calls).
const FLOOR_EVERY: usize = 4;
/// Calls or rotations before each timed series, not counted (connections, caches, allocator).
const WARMUP: usize = 5;

pub struct Settings {
    pub quick: bool,
    /// Phase 4 alone (`BENCH_SCALE_ONLY`): its figures go to `scale-<apps>.md`.
    pub scale_only: bool,
    pub calls: usize,
    pub throughput_secs: u64,
    pub apps: usize,
    pub idle_secs: u64,
    pub floor_samples: usize,
    pub operator: PathBuf,
    pub out: PathBuf,
    pub hash: HashParams,
    /// The operator's `--hash-workers` (`BENCH_HASH_WORKERS`; default: one per core, as the
    /// operator's own default).
    pub hash_workers: usize,
}

fn env_num<T: std::str::FromStr>(name: &str, default: T) -> anyhow::Result<T> {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v
            .parse()
            .map_err(|_| anyhow::anyhow!("{name}={v} is not a number")),
        _ => Ok(default),
    }
}

impl Settings {
    fn from_env(repo: &Path) -> anyhow::Result<Settings> {
        let quick = std::env::var("BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
        let path = |name: &str, default: PathBuf| {
            std::env::var(name)
                .ok()
                .filter(|v| !v.is_empty())
                .map_or(default, PathBuf::from)
        };
        Ok(Settings {
            quick,
            scale_only: std::env::var("BENCH_SCALE_ONLY").is_ok_and(|v| !v.is_empty() && v != "0"),
            calls: env_num("BENCH_CALLS", if quick { 40 } else { 200 })?,
            throughput_secs: env_num("BENCH_THROUGHPUT_SECS", if quick { 5 } else { 30 })?,
            apps: env_num("BENCH_APPS", if quick { 300 } else { 10_000 })?,
            idle_secs: env_num("BENCH_IDLE_SECS", if quick { 15 } else { 300 })?,
            floor_samples: if quick { 15 } else { 41 },
            operator: path("BENCH_OPERATOR", repo.join("target/release/oauthapp-operator")),
            out: path("BENCH_OUT", repo.join("bench/results")),
            hash: HashParams::default(),
            hash_workers: env_num(
                "BENCH_HASH_WORKERS",
                std::thread::available_parallelism().map_or(1, |n| n.get()),
            )?,
        })
    }

    fn hash_flags(&self) -> Vec<String> {
        vec![
            "--hash-memory-kib".into(),
            self.hash.m_cost_kib.to_string(),
            "--hash-iterations".into(),
            self.hash.t_cost.to_string(),
            "--hash-parallelism".into(),
            self.hash.p_cost.to_string(),
            "--hash-workers".into(),
            self.hash_workers.to_string(),
        ]
    }
}

static STARTED: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

/// A progress line on stderr, with the time since the start.
macro_rules! say {
    ($($arg:tt)*) => {
        eprintln!(
            "bench [{:>6.1}s] {}",
            STARTED.get_or_init(Instant::now).elapsed().as_secs_f64(),
            format!($($arg)*)
        )
    };
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    STARTED.get_or_init(Instant::now);
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("bench/ has a parent")?
        .to_path_buf();
    let settings = Settings::from_env(&repo)?;
    if !settings.operator.is_file() {
        bail!(
            "no operator binary at {}; run `cargo build --release` (make bench does)",
            settings.operator.display()
        );
    }
    tokio::select! {
        result = run(&repo, &settings) => result,
        _ = tokio::signal::ctrl_c() => bail!("interrupted"),
    }
}

async fn run(repo: &Path, settings: &Settings) -> anyhow::Result<()> {
    let mut report = Report::new(repo, settings);
    say!(
        "machine: {} cores, {:.1} GiB, {}",
        report.machine.cores,
        report.machine.memory_gib,
        report.machine.cpu_model
    );
    if settings.scale_only {
        let cp = ControlPlane::up(repo)?;
        let client = cp.client().await?;
        report.versions.kubernetes = client
            .apiserver_version()
            .await
            .map(|v| v.git_version)
            .unwrap_or_default();
        // The hashing bound the provisioning is measured against.
        cp.kubectl(&["create", "namespace", "bench-floor"])?;
        let mut floors = Floors::new(&client, "bench-floor", settings.hash).await?;
        for _ in 0..SCALE_FLOOR_SAMPLES {
            floors.sample().await?;
        }
        report.floor_hash = Stats::of(&floors.hash_ms);
        scale(&cp, &client, settings, &mut report).await?;
        let path = report.write_scale(&settings.out)?;
        say!("wrote {}", path.display());
        say!(
            "scale only: RSS with no app {:.1} MiB; peak {:.1} MiB provisioning, {:.1} MiB after the restart; idle {:.1} MiB ({:.1} anonymous, {:.1} file-backed)",
            report.rss_empty_mib,
            report.rss_provision_mib,
            report.rss_restarted_mib,
            report.rss_idle_mib,
            report.rss_idle_anon_mib,
            report.rss_idle_file_mib
        );
        return Ok(());
    }
    // Built (or found cached) before the control plane starts, so a cold build disturbs nothing.
    let peer_binary = peer::build(repo)?;
    let cp = ControlPlane::up(repo)?;
    let client = cp.client().await?;
    report.versions.kubernetes = client
        .apiserver_version()
        .await
        .map(|v| v.git_version)
        .unwrap_or_default();
    say!("control plane up: Kubernetes {}", report.versions.kubernetes);

    // --- floors -------------------------------------------------------------------------------
    let busy = settle(&cp).await;
    say!("control plane settled ({busy:.2} cores busy)");
    cp.kubectl(&["create", "namespace", "bench-floor"])?;
    let mut floors = Floors::new(&client, "bench-floor", settings.hash).await?;
    for _ in 0..settings.floor_samples {
        floors.sample().await?;
    }
    report.floor_hash_start = Stats::of(&floors.hash_ms);
    report.floor_write_start = Stats::of(&floors.write_ms());
    say!(
        "floors at the start: hash {:.1} ms, write {:.1} ms",
        report.floor_hash_start.p50,
        report.floor_write_start.p50
    );

    // --- 1, 2, 3: one operator ----------------------------------------------------------------
    let ns = "bench-latency";
    let token = cp.namespace_with_caller(ns)?;
    let tracker = Tracker::start(client.clone(), ns);
    let secret_watch = SecretWatch::start(client.clone(), ns, CLIENT_SECRET_KEY);
    let hash_flags = settings.hash_flags();
    let mut op = Operator::start(&cp, &settings.operator, "latency", ns, &hash_flags, &[])?;
    op.wait_ready(Duration::from_secs(60)).await?;
    let names: Vec<String> = (0..LATENCY_APPS).map(|i| format!("lat-{i:02}")).collect();
    create_apps(&client, ns, &names, CREATES_IN_FLIGHT).await?;
    let ids = wait_all_ready(&tracker, &names, Duration::from_secs(120)).await?;
    let http = reqwest::Client::new();

    say!("1. REST rotate latency: {} calls, one at a time", settings.calls);
    let before = op.metrics().await?;
    let window = RequestWindow::open(&client, floors.hash_ms.len()).await;
    report.rest =
        Stats::of(&rest_latency(&http, op.api_port, &token, &ids, settings.calls, &mut floors).await?);
    let after = op.metrics().await?;
    report.rest_operator_mean_ms = mean_rotation_ms(&before, &after);
    report.rest_requests_per_rotation = window
        .per_rotation(&client, floors.hash_ms.len(), (settings.calls + WARMUP) as f64)
        .await;
    say!(
        "   API requests per rotation: {:?}",
        report.rest_requests_per_rotation
    );
    say!(
        "   p50 {:.1} ms, p99 {:.1} ms (operator-side mean {:.1} ms)",
        report.rest.p50,
        report.rest.p99,
        report.rest_operator_mean_ms
    );

    say!("2. annotation-to-rotation latency: {} rotations", settings.calls);
    let before = op.metrics().await?;
    let window = RequestWindow::open(&client, floors.hash_ms.len()).await;
    let (lat, patch, secret_lat) = annotation_latency(
        &client,
        ns,
        (&tracker, &secret_watch),
        &names,
        settings.calls,
        "a",
        &mut floors,
    )
    .await?;
    let after = op.metrics().await?;
    report.annotation = Stats::of(&lat);
    report.annotation_secret = Stats::of(&secret_lat);
    report.annotation_patch = Stats::of(&patch);
    report.annotation_operator_mean_ms = mean_rotation_ms(&before, &after);
    report.annotation_requests_per_rotation = window
        .per_rotation(&client, floors.hash_ms.len(), (settings.calls + WARMUP) as f64)
        .await;
    say!(
        "   API requests per rotation: {:?}",
        report.annotation_requests_per_rotation
    );
    say!(
        "   p50 {:.1} ms, p99 {:.1} ms (Secret data changed: p50 {:.1} ms; the annotate call itself: p50 {:.1} ms)",
        report.annotation.p50,
        report.annotation.p99,
        report.annotation_secret.p50,
        report.annotation_patch.p50
    );

    say!(
        "3. throughput: {} callers on distinct apps for {} s",
        LATENCY_APPS,
        settings.throughput_secs
    );
    let cpu = CpuWindow::open(&cp, &op);
    let before = op.metrics().await?;
    let (ok, failed, window) = throughput(
        &http,
        op.api_port,
        &token,
        &ids,
        Duration::from_secs(settings.throughput_secs),
    )
    .await?;
    let after = op.metrics().await?;
    report.throughput_ok = ok;
    report.throughput_failed = failed;
    report.throughput_per_s = ok as f64 / window;
    report.throughput_operator_mean_ms = mean_rotation_ms(&before, &after);
    report.throughput_cpu = cpu.cores_used(window);
    report.operator_cpu_ms_per_rotation = report
        .throughput_cpu
        .get("operator")
        .map_or(f64::NAN, |cores| cores * window * 1000.0 / ok.max(1) as f64);
    say!(
        "   {:.1} rotations/s ({} failed); hashing bound so far {:.1}/s; CPU cores used: {:?}",
        report.throughput_per_s,
        failed,
        report.machine.cores as f64 * 1000.0 / Stats::of(&floors.hash_ms).p50,
        report.throughput_cpu
    );

    let creds = credentials(&client, ns, &names).await?;
    verify_phase(&cp, &op, &token, &creds, settings, &mut floors, &mut report).await?;
    op.stop(Duration::from_secs(30));
    drop(op);

    // --- 5: leader and standby ----------------------------------------------------------------
    say!("5. two replicas with leader election; REST calls to the standby");
    let lease = ["--leader-elect", "--lease-namespace", ns];
    let mut a = Operator::start(&cp, &settings.operator, "replica-a", ns, &hash_flags, &lease)?;
    let mut b = Operator::start(&cp, &settings.operator, "replica-b", ns, &hash_flags, &lease)?;
    a.wait_ready(Duration::from_secs(60)).await?;
    b.wait_ready(Duration::from_secs(60)).await?;
    let (leader, standby) = wait_for_leader(&a, &b, Duration::from_secs(60)).await?;
    say!("   {} leads, {} stands by", leader.name, standby.name);
    let leader_before = leader.metrics().await?;
    let window = RequestWindow::open(&client, floors.hash_ms.len()).await;
    report.rest_standby =
        Stats::of(&rest_latency(&http, standby.api_port, &token, &ids, settings.calls, &mut floors).await?);
    report.rest_standby_requests_per_rotation = window
        .per_rotation(&client, floors.hash_ms.len(), (settings.calls + WARMUP) as f64)
        .await;
    report.rest_standby_leader_writes = leader.metrics().await?.value("oauthapp_api_writes_total")
        - leader_before.value("oauthapp_api_writes_total");
    say!(
        "   API requests per rotation: {:?}; the leader wrote {} times meanwhile",
        report.rest_standby_requests_per_rotation,
        report.rest_standby_leader_writes
    );
    let (lat, _, _) = annotation_latency(
        &client,
        ns,
        (&tracker, &secret_watch),
        &names,
        settings.calls,
        "s",
        &mut floors,
    )
    .await?;
    report.annotation_standby = Stats::of(&lat);
    say!(
        "   REST via standby p50 {:.1} ms, p99 {:.1} ms; annotation p50 {:.1} ms, p99 {:.1} ms",
        report.rest_standby.p50,
        report.rest_standby.p99,
        report.annotation_standby.p50,
        report.annotation_standby.p99
    );
    a.stop(Duration::from_secs(30));
    b.stop(Duration::from_secs(30));
    drop((a, b));
    drop(tracker);
    drop(secret_watch);
    report.floor_hash = Stats::of(&floors.hash_ms);
    report.floor_write = Stats::of(&floors.write_ms());
    report.floor_secret_write = Stats::of(&floors.secret_ms);
    report.floor_status_write = Stats::of(&floors.status_ms);
    say!(
        "floors over the run: hash {:.1} ms, write {:.1} ms ({} samples)",
        report.floor_hash.p50,
        report.floor_write.p50,
        report.floor_hash.n
    );

    // --- 7: the peer on its own, then 4: our scale phase ---------------------------------------
    match &peer_binary {
        Some(binary) => peer_phase(&cp, &client, binary, settings, &mut report).await?,
        None => say!("7. the peer: skipped (no source; see the line above)"),
    }
    scale(&cp, &client, settings, &mut report).await?;

    report.finish();
    let (json_path, md_path) = report.write(&settings.out)?;
    say!("wrote {} and {}", json_path.display(), md_path.display());
    println!("{}", report.markdown());
    Ok(())
}

/// Hash floor samples of a scale-only run: enough for the median the hashing bound is from.
const SCALE_FLOOR_SAMPLES: usize = 30;

async fn scale(
    cp: &ControlPlane,
    client: &Client,
    settings: &Settings,
    report: &mut Report,
) -> anyhow::Result<()> {
    let n = settings.apps;
    let ns = "bench-scale";
    cp.kubectl(&["create", "namespace", ns])?;
    let tracker = Tracker::start(client.clone(), ns);
    let hash_flags = settings.hash_flags();
    let mut op = Operator::start(cp, &settings.operator, "scale", ns, &hash_flags, &[])?;
    op.wait_ready(Duration::from_secs(60)).await?;
    tracker
        .wait_for("the bench's watch to sync", Duration::from_secs(60), |s| {
            s.synced.then_some(())
        })
        .await?;

    // The operator fills its pool of ready hashes at start and frees the hashing memory once
    // idle: the RSS with no app is read after that (no CPU used for 6 s in a row, past the
    // hasher's 5 s idle release), at most 60 s on.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut quiet = 0;
    while quiet < 6 && Instant::now() < deadline {
        let before = operator::cpu_seconds(op.pid()).unwrap_or(0.0);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let used = operator::cpu_seconds(op.pid()).unwrap_or(0.0) - before;
        quiet = if used < 0.005 { quiet + 1 } else { 0 };
    }
    report.rss_empty_mib = operator::vm_mib(op.pid(), "VmRSS").unwrap_or(f64::NAN);
    report.rss_empty_file_mib = operator::vm_mib(op.pid(), "RssFile").unwrap_or(f64::NAN);
    say!("4. provisioning {n} apps ({CREATES_IN_FLIGHT} creates in flight)");
    let names: Vec<String> = (0..n).map(|i| format!("app-{i:05}")).collect();
    let window = RequestWindow::open(client, 0).await;
    let started = Instant::now();
    let progress = {
        // One line every 30 s, so a long provisioning shows it is moving.
        let state = Arc::new(AtomicUsize::new(0));
        let shown = state.clone();
        let ticker = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(30));
            tick.tick().await;
            loop {
                tick.tick().await;
                say!("   ... {} apps Ready", shown.load(Ordering::Relaxed));
            }
        });
        (state, ticker)
    };
    create_apps(client, ns, &names, CREATES_IN_FLIGHT).await?;
    report.create_all_s = started.elapsed().as_secs_f64();
    let timeout = Duration::from_secs((n as u64 / 2).max(600));
    tracker
        .wait_for("every app to be Ready", timeout, |s| {
            progress.0.store(s.ready, Ordering::Relaxed);
            (s.ready >= n).then_some(())
        })
        .await?;
    progress.1.abort();
    report.provision_s = started.elapsed().as_secs_f64();
    report.provision_requests_per_app = window.per_rotation(client, 0, n as f64).await;
    say!("   API requests per app: {:?}", report.provision_requests_per_app);
    let m = op.metrics().await?;
    report.provision_writes = m.value("oauthapp_api_writes_total");
    report.rss_provision_mib = operator::vm_mib(op.pid(), "VmHWM").unwrap_or(f64::NAN);
    say!(
        "   {n} apps Ready in {:.1} s (creates done at {:.1} s), {:.1} apps/s; {} writes; peak RSS {:.1} MiB",
        report.provision_s,
        report.create_all_s,
        n as f64 / report.provision_s,
        report.provision_writes,
        report.rss_provision_mib
    );

    say!("   restarting the operator");
    op.stop(Duration::from_secs(30));
    drop(op);
    let started = Instant::now();
    let mut op = Operator::start(cp, &settings.operator, "scale-restarted", ns, &hash_flags, &[])?;
    let deadline = started + Duration::from_secs(300);
    loop {
        if let Ok(m) = op.metrics().await
            && m.value("oauthapp_reconcile_duration_seconds_count") >= n as f64
            && m.value("oauthapp_apps{ready=\"true\"}") >= n as f64
        {
            break;
        }
        if Instant::now() > deadline {
            bail!("the restarted operator did not reconcile all {n} apps within 300 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    report.restart_ready_s = started.elapsed().as_secs_f64();
    let at_ready = op.metrics().await?.value("oauthapp_api_writes_total");
    // Writes that trail the last reconcile still count as the restart's.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let m = op.metrics().await?;
    report.restart_writes = m.value("oauthapp_api_writes_total");
    say!(
        "   all {n} reconciled and Ready {:.2} s after the restart; {} writes ({} at that moment)",
        report.restart_ready_s,
        report.restart_writes,
        at_ready
    );

    say!("   idle for {} s", settings.idle_secs);
    let cpu0 = operator::cpu_seconds(op.pid()).context("reading the operator's CPU time")?;
    let writes0 = m.value("oauthapp_api_writes_total");
    let reconciles0 = m.value("oauthapp_reconcile_duration_seconds_count");
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(settings.idle_secs)).await;
    let m = op.metrics().await?;
    let cpu1 = operator::cpu_seconds(op.pid()).context("reading the operator's CPU time")?;
    let idle = t0.elapsed().as_secs_f64();
    report.idle_writes = m.value("oauthapp_api_writes_total") - writes0;
    report.idle_reconciles = m.value("oauthapp_reconcile_duration_seconds_count") - reconciles0;
    report.idle_cpu_percent = 100.0 * (cpu1 - cpu0) / idle;
    report.rss_restarted_mib = operator::vm_mib(op.pid(), "VmHWM").unwrap_or(f64::NAN);
    report.rss_idle_mib = operator::vm_mib(op.pid(), "VmRSS").unwrap_or(f64::NAN);
    report.rss_idle_anon_mib = operator::vm_mib(op.pid(), "RssAnon").unwrap_or(f64::NAN);
    report.rss_idle_file_mib = operator::vm_mib(op.pid(), "RssFile").unwrap_or(f64::NAN);
    say!(
        "   idle: {} writes, {} reconciles, CPU {:.3} %, RSS {:.1} MiB (peak {:.1} MiB)",
        report.idle_writes,
        report.idle_reconciles,
        report.idle_cpu_percent,
        report.rss_idle_mib,
        report.rss_restarted_mib
    );
    op.stop(Duration::from_secs(30));
    report.cache_bytes_per_app = Some(cache_bytes(cp, ns)?);
    say!(
        "   heap bytes per app in the caches: {:?} (apps, Secrets)",
        report.cache_bytes_per_app
    );
    Ok(())
}

/// Runs `oauthapp-cache-bytes` (built beside this binary) on `ns`: the heap bytes per app in
/// the app cache and in the Secret cache.
fn cache_bytes(cp: &ControlPlane, ns: &str) -> anyhow::Result<(u64, u64)> {
    let binary = std::env::current_exe()?.with_file_name("oauthapp-cache-bytes");
    let out = std::process::Command::new(&binary)
        .arg(ns)
        .env("KUBECONFIG", &cp.kubeconfig)
        .output()
        .with_context(|| format!("running {}", binary.display()))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            binary.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let figures: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let field = |k: &str| figures[k].as_u64().with_context(|| format!("{k} in {figures}"));
    Ok((
        field("app_cache_bytes_per_app")?,
        field("secret_cache_bytes_per_app")?,
    ))
}

/// Phase 7: the peer (mittwald's kubernetes-secret-generator) alone on the control plane, on
/// `settings.apps` Secrets of its own: provisioning (each Secret annotated for a generated
/// `password`), regenerate latency (annotate, then see the data change on a watch) with the API
/// server's requests per regeneration, an idle window, and its RSS (idle and peak).
async fn peer_phase(
    cp: &ControlPlane,
    client: &Client,
    binary: &Path,
    settings: &Settings,
    report: &mut Report,
) -> anyhow::Result<()> {
    let n = settings.apps;
    let ns = "bench-peer";
    cp.kubectl(&["create", "namespace", ns])?;
    let watch = SecretWatch::start(client.clone(), ns, peer::KEY);
    watch
        .wait_for("the bench's Secret watch to sync", Duration::from_secs(60), |s| {
            s.synced.then_some(())
        })
        .await?;
    let mut p = peer::Peer::start(cp, binary, "scale", ns)?;
    say!("7. the peer: provisioning {n} annotated Secrets ({CREATES_IN_FLIGHT} creates in flight)");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let names: Vec<String> = (0..n).map(|i| format!("peer-{i:05}")).collect();
    let started = Instant::now();
    let pp = PostParams::default();
    futures::stream::iter(&names)
        .map(|name| {
            let (secrets, pp) = (&secrets, &pp);
            async move {
                let mut s = Secret::default();
                s.metadata.name = Some(name.clone());
                s.metadata.annotations =
                    Some([(peer::AUTOGENERATE.to_string(), peer::KEY.to_string())].into());
                secrets
                    .create(pp, &s)
                    .await
                    .with_context(|| format!("creating Secret {ns}/{name}"))
            }
        })
        .buffer_unordered(CREATES_IN_FLIGHT)
        .try_for_each(|_| async { Ok(()) })
        .await?;
    let timeout = Duration::from_secs((n as u64 / 2).max(600));
    watch
        .wait_for("every Secret to get its password", timeout, |s| {
            (s.with_key >= n).then_some(())
        })
        .await?;
    p.check_alive()?;
    report.peer_provision_s = started.elapsed().as_secs_f64();
    report.peer_rss_provision_mib = operator::vm_mib(p.pid(), "VmHWM").unwrap_or(f64::NAN);
    say!(
        "   {n} Secrets generated in {:.1} s; peak RSS {:.1} MiB",
        report.peer_provision_s,
        report.peer_rss_provision_mib
    );

    say!(
        "   regenerate latency: {} regenerations, one at a time",
        settings.calls
    );
    let window = RequestWindow::open(client, 0).await;
    let (mut times, mut patches) = (Vec::new(), Vec::new());
    let patch = json!({"metadata": {"annotations": {peer::REGENERATE: "yes"}}});
    for i in 0..settings.calls + WARMUP {
        let name = &names[i % LATENCY_APPS.min(n)];
        let before = watch.get(name).map(|s| s.data);
        let started = Instant::now();
        secrets
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        let patched = ms(started.elapsed());
        let changed = watch.changed(name, before, Duration::from_secs(60)).await?;
        if i >= WARMUP {
            times.push(ms(changed.saturating_duration_since(started)));
            patches.push(patched);
        }
    }
    p.check_alive()?;
    report.peer_regenerate = Stats::of(&times);
    report.peer_patch = Stats::of(&patches);
    report.peer_requests_per_regeneration = window
        .per_rotation(client, 0, (settings.calls + WARMUP) as f64)
        .await;
    // The peer's kube client allows itself 20 requests/s (controller-runtime's default QPS, burst
    // 30): back to back, each regeneration above waits for that limiter. Spaced out, the bucket
    // stays full and the regeneration is the peer's own work.
    let mut paced = Vec::new();
    for i in 0..settings.calls + WARMUP {
        tokio::time::sleep(PEER_PACE).await;
        let name = &names[i % LATENCY_APPS.min(n)];
        let before = watch.get(name).map(|s| s.data);
        let started = Instant::now();
        secrets
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        let changed = watch.changed(name, before, Duration::from_secs(60)).await?;
        if i >= WARMUP {
            paced.push(ms(changed.saturating_duration_since(started)));
        }
    }
    report.peer_regenerate_paced = Stats::of(&paced);
    say!(
        "   spaced {} ms apart: p50 {:.1} ms, p99 {:.1} ms",
        PEER_PACE.as_millis(),
        report.peer_regenerate_paced.p50,
        report.peer_regenerate_paced.p99
    );
    say!(
        "   p50 {:.1} ms, p99 {:.1} ms (the annotate call itself: p50 {:.1} ms); API requests per regeneration: {:?}",
        report.peer_regenerate.p50,
        report.peer_regenerate.p99,
        report.peer_patch.p50,
        report.peer_requests_per_regeneration
    );

    report.peer_idle_secs = settings.idle_secs.min(PEER_IDLE_SECS);
    say!("   idle for {} s", report.peer_idle_secs);
    let cpu0 = operator::cpu_seconds(p.pid()).context("reading the peer's CPU time")?;
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(report.peer_idle_secs)).await;
    p.check_alive()?;
    let cpu1 = operator::cpu_seconds(p.pid()).context("reading the peer's CPU time")?;
    report.peer_idle_cpu_percent = 100.0 * (cpu1 - cpu0) / t0.elapsed().as_secs_f64();
    report.peer_rss_idle_mib = operator::vm_mib(p.pid(), "VmRSS").unwrap_or(f64::NAN);
    report.peer_rss_peak_mib = operator::vm_mib(p.pid(), "VmHWM").unwrap_or(f64::NAN);
    say!(
        "   idle: CPU {:.3} %, RSS {:.1} MiB (peak {:.1} MiB)",
        report.peer_idle_cpu_percent,
        report.peer_rss_idle_mib,
        report.peer_rss_peak_mib
    );
    p.stop(Duration::from_secs(30));
    report.peer_ran = true;
    Ok(())
}

/// The pause before each of the peer's paced regenerations: over 1/20 s, so its client's rate
/// limiter (20 requests/s) never makes one wait.
const PEER_PACE: Duration = Duration::from_millis(100);

/// The peer's idle window at most (its RSS is read at the end).
const PEER_IDLE_SECS: u64 = 120;

/// Waits (at most 60 s) until the control plane has finished starting (its processes use less
/// than 0.1 core over a second), so that the floors are measured on a quiet machine; returns
/// the cores they used in the last second.
async fn settle(cp: &ControlPlane) -> f64 {
    let pids: Vec<u32> = ["kube-apiserver", "etcd", "kube-controller-manager"]
        .iter()
        .filter_map(|name| cp.pid_of(name))
        .collect();
    let used = || pids.iter().filter_map(|p| operator::cpu_seconds(*p)).sum::<f64>();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let before = used();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let busy = used() - before;
        if busy < 0.1 || Instant::now() > deadline {
            return busy;
        }
    }
}

pub(crate) fn rand_u128() -> u128 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    let a = h.finish();
    h.write_u64(a);
    (u128::from(a) << 64) | u128::from(h.finish())
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub(crate) fn new_app(name: &str) -> OAuthApp {
    OAuthApp::new(
        name,
        OAuthAppSpec {
            redirect_uris: vec![format!("https://{name}.bench.example/callback")],
            scopes: vec!["bench:read".into()],
            ..Default::default()
        },
    )
}

async fn create_apps(client: &Client, ns: &str, names: &[String], in_flight: usize) -> anyhow::Result<()> {
    let apps: Api<OAuthApp> = Api::namespaced(client.clone(), ns);
    let pp = PostParams::default();
    futures::stream::iter(names)
        .map(|name| {
            let (apps, pp) = (&apps, &pp);
            async move {
                apps.create(pp, &new_app(name))
                    .await
                    .with_context(|| format!("creating OAuthApp {ns}/{name}"))
            }
        })
        .buffer_unordered(in_flight)
        .try_for_each(|_| async { Ok(()) })
        .await
}

/// Waits until every app in `names` is Ready; their app ids, in the same order.
async fn wait_all_ready(
    tracker: &Tracker,
    names: &[String],
    timeout: Duration,
) -> anyhow::Result<Vec<String>> {
    tracker
        .wait_for("the apps to be Ready", timeout, |s| {
            names
                .iter()
                .map(|n| s.apps.get(n).filter(|a| a.ready).and_then(|a| a.app_id.clone()))
                .collect()
        })
        .await
}

/// POST /api/v1/oauth-apps/{id}/rotate; fails unless 200 with a body.
async fn rotate(http: &reqwest::Client, port: u16, token: &str, id: &str) -> anyhow::Result<()> {
    let response = http
        .post(format!("http://127.0.0.1:{port}/api/v1/oauth-apps/{id}/rotate"))
        .bearer_auth(token)
        .send()
        .await?;
    let status = response.status();
    let body = response.bytes().await?;
    if status != reqwest::StatusCode::OK {
        bail!("rotate answered {status}: {}", String::from_utf8_lossy(&body));
    }
    if !body.starts_with(b"{\"client_secret\"") {
        bail!("rotate answered 200 without a secret");
    }
    Ok(())
}

/// `calls` rotations, one at a time, round-robin over the apps; each call's time in ms.
async fn rest_latency(
    http: &reqwest::Client,
    port: u16,
    token: &str,
    ids: &[String],
    calls: usize,
    floors: &mut Floors,
) -> anyhow::Result<Vec<f64>> {
    let mut times = Vec::with_capacity(calls);
    for i in 0..calls + WARMUP {
        let started = Instant::now();
        rotate(http, port, token, &ids[i % ids.len()]).await?;
        if i >= WARMUP {
            times.push(ms(started.elapsed()));
        }
        if i % FLOOR_EVERY == 0 {
            floors.sample().await?;
        }
    }
    Ok(times)
}

/// `n` rotations by annotation, one at a time: from sending the annotate request to seeing
/// `status.rotationId` change on the watch. Also the annotate request's own times.
async fn annotation_latency(
    client: &Client,
    ns: &str,
    (tracker, secrets): (&Tracker, &SecretWatch),
    names: &[String],
    n: usize,
    tag: &str,
    floors: &mut Floors,
) -> anyhow::Result<(Vec<f64>, Vec<f64>, Vec<f64>)> {
    let apps: Api<OAuthApp> = Api::namespaced(client.clone(), ns);
    let (mut times, mut patches, mut secret_times) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for i in 0..n + WARMUP {
        let name = &names[i % names.len()];
        let secret_name = new_app(name).secret_name();
        let before = tracker.get(name).and_then(|a| a.rotation_id);
        let data_before = secrets.get(&secret_name).map(|s| s.data);
        let patch = json!({"metadata": {"annotations": {ROTATE_ANNOTATION: format!("bench-{tag}-{i}")}}});
        let started = Instant::now();
        apps.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        let patched = ms(started.elapsed());
        let data_changed = secrets
            .changed(&secret_name, data_before, Duration::from_secs(60))
            .await?;
        let seen = tracker
            .wait_for("a rotation after an annotation", Duration::from_secs(60), |s| {
                s.apps
                    .get(name)
                    .filter(|a| a.rotation_id != before)
                    .map(|a| a.seen_at)
            })
            .await?;
        if i >= WARMUP {
            times.push(ms(seen.saturating_duration_since(started)));
            secret_times.push(ms(data_changed.saturating_duration_since(started)));
            patches.push(patched);
        }
        if i % FLOOR_EVERY == 0 {
            floors.sample().await?;
        }
    }
    Ok((times, patches, secret_times))
}

/// One caller per app, each rotating its app back to back for `window`: the rotations that
/// completed within the window, the failed calls, and the window in seconds.
async fn throughput(
    http: &reqwest::Client,
    port: u16,
    token: &str,
    ids: &[String],
    window: Duration,
) -> anyhow::Result<(usize, usize, f64)> {
    let started = Instant::now();
    let deadline = started + window;
    let callers = ids.iter().map(|id| async move {
        let (mut ok, mut failed) = (0usize, 0usize);
        while Instant::now() < deadline {
            let result = rotate(http, port, token, id).await;
            if Instant::now() <= deadline {
                match result {
                    Ok(()) => ok += 1,
                    Err(_) => failed += 1,
                }
            }
        }
        (ok, failed)
    });
    let results = futures::future::join_all(callers).await;
    let ok = results.iter().map(|r| r.0).sum();
    let failed = results.iter().map(|r| r.1).sum();
    Ok((ok, failed, window.as_secs_f64()))
}

/// Each app's client id and current client secret, read from its Secret.
async fn credentials(client: &Client, ns: &str, names: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    let apps: Api<OAuthApp> = Api::namespaced(client.clone(), ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let mut creds = Vec::with_capacity(names.len());
    for name in names {
        let secret = secrets.get(&apps.get(name).await?.secret_name()).await?;
        let key = |key: &str| -> anyhow::Result<String> {
            let bytes = secret
                .data
                .as_ref()
                .and_then(|d| d.get(key))
                .with_context(|| format!("the Secret of {ns}/{name} has no {key}"))?;
            String::from_utf8(bytes.0.clone())
                .with_context(|| format!("the {key} of {ns}/{name} is not UTF-8"))
        };
        creds.push((key(CLIENT_ID_KEY)?, key(CLIENT_SECRET_KEY)?));
    }
    Ok(creds)
}

/// Phase 6: `POST /api/v1/oauth-apps/verify` on the running operator, whose rate limits the
/// bench raised ([`operator`]'s `UNLIMITED`: the verify limits per caller and per client id
/// follow the per-caller flags).
async fn verify_phase(
    cp: &ControlPlane,
    op: &Operator,
    token: &str,
    creds: &[(String, String)],
    settings: &Settings,
    floors: &mut Floors,
    report: &mut Report,
) -> anyhow::Result<()> {
    const UNKNOWN: &str = "oauthapp_verifications_total{result=\"unknown\"}";
    let http = reqwest::Client::new();
    let port = op.api_port;
    say!(
        "6. verify: {} calls uncached (a different wrong secret each), then {} cached (the same right one)",
        settings.calls,
        settings.calls
    );
    let before = op.metrics().await?;
    report.verify = Stats::of(&verify_uncached(&http, port, token, creds, settings.calls, floors).await?);
    let unknown = op.metrics().await?.value(UNKNOWN) - before.value(UNKNOWN);
    if unknown > 0.0 {
        bail!(
            "{unknown} verifications were answered as for an unknown app: may the bench's caller \
             create oauthapps/verify?"
        );
    }
    report.verify_cached = Stats::of(&verify_cached(&http, port, token, &creds[0], settings.calls).await?);
    say!(
        "   uncached p50 {:.1} ms, p99 {:.1} ms (floor_hash so far {:.1} ms); cached p50 {:.2} ms, p99 {:.2} ms",
        report.verify.p50,
        report.verify.p99,
        Stats::of(&floors.hash_ms).p50,
        report.verify_cached.p50,
        report.verify_cached.p99
    );
    say!(
        "   verify throughput: {} callers on distinct apps, uncached, for {} s",
        creds.len(),
        settings.throughput_secs
    );
    let cpu = CpuWindow::open(cp, op);
    let (ok, failed, window) = verify_throughput(
        &http,
        port,
        token,
        creds,
        Duration::from_secs(settings.throughput_secs),
    )
    .await?;
    report.verify_throughput_ok = ok;
    report.verify_throughput_failed = failed;
    report.verify_throughput_per_s = ok as f64 / window;
    report.verify_throughput_cpu = cpu.cores_used(window);
    say!(
        "   {:.1} verifications/s ({} failed); hashing bound so far {:.1}/s; CPU cores used: {:?}",
        report.verify_throughput_per_s,
        failed,
        report.machine.cores as f64 * 1000.0 / Stats::of(&floors.hash_ms).p50,
        report.verify_throughput_cpu
    );
    Ok(())
}

/// A well-formed client secret that is no app's: a verification of it hashes (wrong answers
/// are never remembered) and answers `{"valid": false}`.
fn wrong_secret() -> anyhow::Result<String> {
    let secret = ClientSecret::generate().map_err(|e| anyhow::anyhow!("drawing a secret: {e}"))?;
    Ok(secret.expose().to_owned())
}

/// POST /api/v1/oauth-apps/verify; whether the answer is `valid` (fails unless 200 with it).
async fn verify(
    http: &reqwest::Client,
    port: u16,
    token: &str,
    client_id: &str,
    client_secret: &str,
) -> anyhow::Result<bool> {
    let body = serde_json::to_vec(&json!({"client_id": client_id, "client_secret": client_secret}))?;
    let response = http
        .post(format!("http://127.0.0.1:{port}/api/v1/oauth-apps/verify"))
        .bearer_auth(token)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await?;
    let status = response.status();
    let body = response.bytes().await?;
    if status != reqwest::StatusCode::OK {
        bail!("verify answered {status}: {}", String::from_utf8_lossy(&body));
    }
    let answer: serde_json::Value =
        serde_json::from_slice(&body).context("verify answered 200 without JSON")?;
    answer
        .get("valid")
        .and_then(serde_json::Value::as_bool)
        .context("verify answered 200 without `valid`")
}

/// `calls` verifications, one at a time, round-robin over the apps, each of a different wrong
/// secret (so each one hashes); each call's time in ms.
async fn verify_uncached(
    http: &reqwest::Client,
    port: u16,
    token: &str,
    creds: &[(String, String)],
    calls: usize,
    floors: &mut Floors,
) -> anyhow::Result<Vec<f64>> {
    let mut times = Vec::with_capacity(calls);
    for i in 0..calls + WARMUP {
        let (client_id, _) = &creds[i % creds.len()];
        let wrong = wrong_secret()?;
        let started = Instant::now();
        let valid = verify(http, port, token, client_id, &wrong).await?;
        let elapsed = ms(started.elapsed());
        if valid {
            bail!("a wrong secret verified");
        }
        if i >= WARMUP {
            times.push(elapsed);
        }
        if i % FLOOR_EVERY == 0 {
            floors.sample().await?;
        }
    }
    Ok(times)
}

/// `calls` verifications of one app's right secret, one at a time, after one that the operator
/// remembers (retried until the operator's watch has the app's current hash); each call's time
/// in ms. No floor samples in between: the calls stay well within the answers' 10 s lifetime.
async fn verify_cached(
    http: &reqwest::Client,
    port: u16,
    token: &str,
    (client_id, secret): &(String, String),
    calls: usize,
) -> anyhow::Result<Vec<f64>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !verify(http, port, token, client_id, secret).await? {
        if Instant::now() > deadline {
            bail!("the app's current secret did not verify within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut times = Vec::with_capacity(calls);
    for i in 0..calls + WARMUP {
        let started = Instant::now();
        let valid = verify(http, port, token, client_id, secret).await?;
        let elapsed = ms(started.elapsed());
        if !valid {
            bail!("the app's current secret stopped verifying");
        }
        if i >= WARMUP {
            times.push(elapsed);
        }
    }
    Ok(times)
}

/// One caller per app, each verifying a different wrong secret of its app back to back for
/// `window`: the verifications answered within the window, the failed calls, and the window in
/// seconds.
async fn verify_throughput(
    http: &reqwest::Client,
    port: u16,
    token: &str,
    creds: &[(String, String)],
    window: Duration,
) -> anyhow::Result<(usize, usize, f64)> {
    let deadline = Instant::now() + window;
    let callers = creds.iter().map(|(client_id, _)| async move {
        let (mut ok, mut failed) = (0usize, 0usize);
        while Instant::now() < deadline {
            let wrong = wrong_secret()?;
            let result = verify(http, port, token, client_id, &wrong).await;
            if Instant::now() <= deadline {
                match result {
                    Ok(false) => ok += 1,
                    Ok(true) | Err(_) => failed += 1,
                }
            }
        }
        anyhow::Ok((ok, failed))
    });
    let results = futures::future::try_join_all(callers).await?;
    let ok = results.iter().map(|r| r.0).sum();
    let failed = results.iter().map(|r| r.1).sum();
    Ok((ok, failed, window.as_secs_f64()))
}

/// The CPU time of the operator, the API server, etcd and the bench itself when a measured
/// window opens.
struct CpuWindow {
    before: Vec<(&'static str, Option<u32>, Option<f64>)>,
}

impl CpuWindow {
    fn open(cp: &ControlPlane, op: &Operator) -> CpuWindow {
        let pids = [
            ("operator", Some(op.pid())),
            ("kube-apiserver", cp.pid_of("kube-apiserver")),
            ("etcd", cp.pid_of("etcd")),
            ("bench client", Some(std::process::id())),
        ];
        CpuWindow {
            before: pids
                .into_iter()
                .map(|(name, pid)| (name, pid, pid.and_then(operator::cpu_seconds)))
                .collect(),
        }
    }

    /// The cores each process used over the `window_s` seconds since [`CpuWindow::open`].
    fn cores_used(&self, window_s: f64) -> BTreeMap<String, f64> {
        self.before
            .iter()
            .filter_map(|(name, pid, before)| {
                let after = pid.and_then(operator::cpu_seconds)?;
                Some(((*name).to_string(), (after - (*before)?) / window_s))
            })
            .collect()
    }
}

/// The API server's own request counters (`apiserver_request_total`), by `VERB resource` (and
/// `/subresource`), summed over codes and scopes: what the operator asks of the API server.
async fn api_requests(client: &Client) -> BTreeMap<String, f64> {
    let Ok(request) = http::Request::get("/metrics").body(Vec::new()) else {
        return BTreeMap::new();
    };
    let text = client.request_text(request).await.unwrap_or_default();
    let mut counts = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let label = |key: &str| {
            labels
                .split("\",")
                .filter_map(|kv| kv.split_once('='))
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.trim_matches('"').to_string())
                .unwrap_or_default()
        };
        let (verb, resource, sub) = (label("verb"), label("resource"), label("subresource"));
        let key = if sub.is_empty() {
            format!("{verb} {resource}")
        } else {
            format!("{verb} {resource}/{sub}")
        };
        *counts.entry(key).or_insert(0.0) += value.trim().parse::<f64>().unwrap_or(0.0);
    }
    counts
}

/// The API server's request counts when a measured run starts, and how many floor samples
/// (each one Secret and one status write by the bench itself) had been taken by then.
struct RequestWindow {
    requests: BTreeMap<String, f64>,
    floor_samples: usize,
}

impl RequestWindow {
    async fn open(client: &Client, floor_samples: usize) -> Self {
        Self {
            requests: api_requests(client).await,
            floor_samples,
        }
    }

    /// The requests per rotation since [`RequestWindow::open`], `floor_samples` being the count
    /// of floor samples now.
    async fn per_rotation(
        self,
        client: &Client,
        floor_samples: usize,
        rotations: f64,
    ) -> BTreeMap<String, f64> {
        per_rotation(
            &self.requests,
            &api_requests(client).await,
            rotations,
            floor_samples - self.floor_samples,
        )
    }
}

/// Requests per rotation between two snapshots of [`api_requests`] (WATCH and LIST left out:
/// they are long-lived streams and relists, not per-rotation work; so are the `floor_samples`
/// floor writes the bench itself made meanwhile).
fn per_rotation(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
    rotations: f64,
    floor_samples: usize,
) -> BTreeMap<String, f64> {
    after
        .iter()
        .filter(|(k, _)| !k.starts_with("WATCH") && !k.starts_with("LIST"))
        .filter_map(|(k, a)| {
            let ours = match k.as_str() {
                "PUT secrets" | "PUT oauthapps/status" => floor_samples as f64,
                _ => 0.0,
            };
            let d = a - before.get(k).copied().unwrap_or(0.0) - ours;
            (d > 0.0).then(|| (k.clone(), (d / rotations * 100.0).round() / 100.0))
        })
        .collect()
}

/// The operator-side mean rotation time between two scrapes (its rotation histogram).
fn mean_rotation_ms(before: &operator::Metrics, after: &operator::Metrics) -> f64 {
    let sum = after.value("oauthapp_rotation_duration_seconds_sum")
        - before.value("oauthapp_rotation_duration_seconds_sum");
    let count = after.value("oauthapp_rotation_duration_seconds_count")
        - before.value("oauthapp_rotation_duration_seconds_count");
    if count > 0.0 {
        1000.0 * sum / count
    } else {
        f64::NAN
    }
}

/// Which of two replicas leads (`oauthapp_leader` 1), once exactly one does.
async fn wait_for_leader<'a>(
    a: &'a Operator,
    b: &'a Operator,
    timeout: Duration,
) -> anyhow::Result<(&'a Operator, &'a Operator)> {
    let deadline = Instant::now() + timeout;
    loop {
        let la = a.metrics().await?.value("oauthapp_leader");
        let lb = b.metrics().await?.value("oauthapp_leader");
        match (la == 1.0, lb == 1.0) {
            (true, false) => return Ok((a, b)),
            (false, true) => return Ok((b, a)),
            _ => {}
        }
        if Instant::now() > deadline {
            bail!("no single leader after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
