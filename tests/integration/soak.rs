//! `make soak` (issue 16, part 5): a bounded run with faults at random. Not part of `make test`:
//! the test is `#[ignore]`d and `make soak` runs it alone (`--ignored --exact`).
//!
//! 50 apps in 5 namespaces, two operator replicas (leader election), each reaching the API server
//! through its own Toxiproxy proxy. For `SOAK_SECONDS` (default 600): rotations by annotation and
//! by the REST API (a ServiceAccount token with RBAC, sent to either replica) and on a schedule;
//! Toxiproxy faults (latency, timeout, reset_peer, bandwidth, down) switched on and off at random
//! on either replica's connection; one kill -9 of the leader, which is then started again. The
//! random choices come from one seed (printed; `SOAK_SEED` replays them; the timing of the machine
//! is not replayed).
//!
//! The soak watches every Secret itself (a direct connection, no proxy), so it sees every
//! rotation: each new `oauthapp.io/rotation-id` with its trigger, the `oauthapp.io/rotate` value it
//! records and its plaintext. At the end it checks, and writes to `bench/results/soak.{md,json}`:
//! - every Secret verifies against its status with an independent argon2 implementation;
//! - each annotation value written was acted on exactly once;
//! - the rotations done equal the requests that succeeded (defined in [`Tally`]);
//! - no plaintext the soak saw (every version of every Secret, every REST answer) is in any
//!   operator log;
//! - each replica's RSS is flat over the last half of the run (defined in [`RssVerdict`]).
//!
//! Scheduled rotations: the CRD refuses a `spec.rotation.interval` under 1h, which a 10-minute run
//! never reaches. The soak's own control plane gets the CRD with that one CEL floor lowered to 1m
//! (the operator does not check the floor itself) and gives 10 apps `SOAK_INTERVAL` (default 2m).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::{Api, Client, ResourceExt};
use oauthapp_operator::model::crd::{CLIENT_SECRET_KEY, OAuthApp, ROTATE_ANNOTATION};
use oauthapp_operator::model::record::annotations;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::faults::{Toxiproxy, apiserver_address, kubeconfig_via};
use crate::support::*;

const NAMESPACES: usize = 5;
const APPS_PER_NAMESPACE: usize = 10;
/// Per namespace: apps 0–1 rotate on their schedule only, 2–5 by annotation only, 6–9 by REST
/// only. Kept apart because a new secret records the annotation's current value whatever made
/// it, so a REST or scheduled rotation would satisfy a pending annotation value.
fn load_of(index: usize) -> Load {
    match index {
        0..=1 => Load::Schedule,
        2..=5 => Load::Annotation,
        _ => Load::Rest,
    }
}
const LEASE_DURATION: &str = "10s";
const LEASE_NAMESPACE: &str = "soak-system";
/// Toxiproxy's faults, drawn uniformly.
const FAULT_KINDS: [&str; 5] = ["latency", "timeout", "reset_peer", "bandwidth", "down"];
/// RSS is sampled this often.
const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// One argon2id hash's memory (19456 KiB, the default), the slack of the flatness check: the
/// hasher keeps one such block per worker (2 on this machine) once used, and the second is
/// allocated the first time two hashes overlap, which may first happen in the last half.
const RSS_SLACK_KIB: u64 = 20 * 1024;
const CONVERGE: Duration = Duration::from_secs(300);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Load {
    Schedule,
    Annotation,
    Rest,
}

#[derive(Clone, Debug)]
struct App {
    ns: String,
    name: String,
    load: Load,
    id: String,
}

impl App {
    fn key(&self) -> String {
        format!("{}/{}", self.ns, self.name)
    }
    fn secret_key(&self) -> String {
        format!("{}/{}-oauth-client", self.ns, self.name)
    }
}

/// One rotation as the soak's own Secret watch saw it.
#[derive(Clone, Debug)]
struct Rotation {
    id: String,
    trigger: String,
    token: Option<String>,
    rotated_at: Option<Timestamp>,
    count: Option<i64>,
    secret: Option<String>,
}

/// What the Secret watches saw: every rotation of every Secret, in order, and every plaintext.
#[derive(Default)]
struct Seen {
    rotations: HashMap<String, Vec<Rotation>>,
    plaintexts: HashSet<String>,
    /// Watches that had to relist (410 Gone): a rotation may have been missed there.
    gaps: Vec<String>,
    /// A rotation id that came back after another one (must not happen).
    reverted: Vec<String>,
}

impl Seen {
    fn record(&mut self, ns: &str, s: &Secret) {
        let secret = s
            .data
            .as_ref()
            .and_then(|d| d.get(CLIENT_SECRET_KEY))
            .map(|b| String::from_utf8_lossy(&b.0).into_owned());
        if let Some(p) = &secret {
            self.plaintexts.insert(p.clone());
        }
        let ann = s.annotations();
        let Some(id) = ann.get(annotations::ROTATION_ID) else {
            return;
        };
        let key = format!("{ns}/{}", s.name_any());
        let list = self.rotations.entry(key.clone()).or_default();
        if list.last().is_some_and(|r| &r.id == id) {
            return;
        }
        if list.iter().any(|r| &r.id == id) {
            self.reverted.push(format!("{key}: {id}"));
            return;
        }
        list.push(Rotation {
            id: id.clone(),
            trigger: ann.get(annotations::TRIGGER).cloned().unwrap_or_default(),
            token: ann.get(annotations::OBSERVED_ROTATE_TOKEN).cloned(),
            rotated_at: ann.get(annotations::ROTATED_AT).and_then(|t| t.parse().ok()),
            count: ann.get(annotations::ROTATION_COUNT).and_then(|c| c.parse().ok()),
            secret,
        });
    }
}

/// What a REST rotation request got.
#[derive(Clone, Debug)]
enum Outcome {
    Code(u16),
    /// The connection was refused (the replica was restarting): nothing was sent.
    Refused,
    /// Sent, but no answer came (timeout, connection cut): it may have been applied.
    Broken,
}

#[derive(Clone, Debug)]
struct Answer {
    app: String,
    outcome: Outcome,
    secret: Option<String>,
}

#[derive(Clone, Debug)]
struct Fault {
    replica: usize,
    kind: &'static str,
    stream: &'static str,
    attributes: Value,
    from_s: f64,
    to_s: f64,
}

#[derive(Clone, Debug)]
struct Sample {
    t_s: f64,
    replica: usize,
    pid: u32,
    rss_kib: u64,
    leader: Option<bool>,
}

/// What the load and the faults did, as the soak recorded it.
#[derive(Default)]
struct Ledger {
    /// Annotation values the API server accepted, per app key, in order.
    written: HashMap<String, Vec<String>>,
    annotation_refused: usize,
    answers: Vec<Answer>,
    faults: Vec<Fault>,
    samples: Vec<Sample>,
    kill: Option<Value>,
    /// Replicas that exited by themselves (and were started again).
    exits: Vec<Value>,
}

struct Replicas {
    live: Vec<Operator>,
    retired: Vec<Operator>,
    /// How to start replica `i` (again): its kubeconfig goes through its own proxy.
    cp: ControlPlane,
    kubeconfigs: Vec<PathBuf>,
    watch_list: String,
    args: Vec<String>,
}

impl Replicas {
    fn start(&self, replica: usize) -> Operator {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        Operator::start_on(&self.cp, &self.kubeconfigs[replica], &self.watch_list, &args, &[])
    }

    /// Kills replica `replica` (kill -9; nothing if it has exited) and starts it again.
    fn restart(&mut self, replica: usize) -> (u32, u32) {
        let old_pid = self.live[replica].pid();
        self.live[replica].kill9();
        let restarted = self.start(replica);
        let new_pid = restarted.pid();
        let old = std::mem::replace(&mut self.live[replica], restarted);
        self.retired.push(old);
        (old_pid, new_pid)
    }
}

/// Whether process `pid` (a child of this one) has exited: gone, or a zombie not yet reaped.
fn exited(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status")).map_or(true, |s| {
        s.lines()
            .any(|l| l.starts_with("State:") && l.contains("Z (zombie)"))
    })
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v.parse().unwrap_or_else(|_| panic!("{name}={v} does not parse")),
        Err(_) => default,
    }
}

/// Sleeps `d` unless `stop` fires first; true when stopped.
async fn sleep_or_stop(d: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = stop.cancelled() => true,
        _ = tokio::time::sleep(d) => false,
    }
}

fn ms(rng: &mut StdRng, from: u64, to: u64) -> Duration {
    Duration::from_millis(rng.random_range(from..=to))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the soak: `make soak` (about 10 minutes)"]
async fn soak_with_random_faults() {
    let seconds: u64 = env_or("SOAK_SECONDS", 600);
    let seed: u64 = env_or("SOAK_SEED", rand::random());
    let interval: String = env_or("SOAK_INTERVAL", "2m".to_string());
    let interval_d = oauthapp_operator::model::status::parse_interval(&interval)
        .expect("SOAK_INTERVAL is a duration like 2m");
    let duration = Duration::from_secs(seconds);
    eprintln!(
        "soak: seed {seed} (SOAK_SEED={seed} replays its choices), {seconds} s, schedule every {interval}"
    );
    let mut rng = StdRng::seed_from_u64(seed);
    let started_at = Timestamp::now();

    let private = PrivateControlPlane::start("soak");
    let cp = &private.0;
    lower_the_interval_floor(cp);
    let admin = client_from(&cp.kubeconfig).await;
    let namespaces: Vec<String> = (0..NAMESPACES)
        .map(|i| cp.namespace(&format!("soak-{i}")))
        .collect();
    cp.namespace(LEASE_NAMESPACE);
    let token = rest_client_token(cp, &namespaces, seconds);

    // The soak's own view of every Secret, from before the first app exists.
    let seen = Arc::new(Mutex::new(Seen::default()));
    let watching = CancellationToken::new();
    let mut watches = Vec::new();
    for ns in &namespaces {
        watches.push(tokio::spawn(watch_secrets(
            admin.clone(),
            ns.clone(),
            seen.clone(),
            watching.clone(),
        )));
    }

    // Two replicas, each behind its own proxy.
    let toxiproxy = Arc::new(Toxiproxy::start(cp).await);
    let upstream = apiserver_address(&cp.kubeconfig);
    let watch_list = namespaces.join(",");
    let args = [
        "--leader-elect",
        "--lease-namespace",
        LEASE_NAMESPACE,
        "--lease-duration",
        LEASE_DURATION,
    ];
    let proxies = ["replica-a", "replica-b"];
    let mut kubeconfigs = Vec::new();
    let mut live = Vec::new();
    for name in proxies {
        let port = toxiproxy.proxy(name, &upstream).await;
        let kubeconfig = kubeconfig_via(cp, port, &format!("soak-{name}"));
        live.push(Operator::start_on(cp, &kubeconfig, &watch_list, &args, &[]));
        kubeconfigs.push(kubeconfig);
    }
    let replicas = Arc::new(Mutex::new(Replicas {
        live,
        retired: Vec::new(),
        cp: ControlPlane {
            dir: cp.dir.clone(),
            kubeconfig: cp.kubeconfig.clone(),
            bin_dir: cp.bin_dir.clone(),
        },
        kubeconfigs,
        watch_list: watch_list.clone(),
        args: args.iter().map(|a| a.to_string()).collect(),
    }));

    // 50 apps, all with their first secret before the clock starts.
    let mut apps = Vec::new();
    for ns in &namespaces {
        let api: Api<OAuthApp> = Api::namespaced(admin.clone(), ns);
        for i in 0..APPS_PER_NAMESPACE {
            let name = format!("app-{i}");
            let load = load_of(i);
            let mut spec = json!({"redirectUris": [format!("https://{name}.{ns}.example.com/cb")]});
            if load == Load::Schedule {
                spec["rotation"] = json!({"interval": interval});
            }
            let app: OAuthApp = serde_json::from_value(json!({
                "apiVersion": "oauthapp.io/v1alpha1", "kind": "OAuthApp",
                "metadata": {"name": name}, "spec": spec,
            }))
            .expect("an OAuthApp");
            // The lowered CRD may take a moment to apply: a refused create changed nothing.
            eventually(&format!("{ns}/{name} created"), CONVERGE, || async {
                match api.create(&PostParams::default(), &app).await {
                    Ok(_) => Some(()),
                    Err(kube::Error::Api(e)) if e.code == 409 => Some(()),
                    Err(_) => None,
                }
            })
            .await;
            apps.push(App {
                ns: ns.clone(),
                name,
                load,
                id: String::new(),
            });
        }
    }
    for app in &mut apps {
        let api: Api<OAuthApp> = Api::namespaced(admin.clone(), &app.ns);
        app.id = eventually(
            &format!("{} Ready with its first secret", app.key()),
            CONVERGE,
            || async {
                let a = api.get(&app.name).await.ok()?;
                let ready = a.ready_condition().is_some_and(|c| c.status == "True");
                let s = a.status?;
                (ready && s.rotation_count == 1).then_some(s.app_id?)
            },
        )
        .await;
    }
    let apps = Arc::new(apps);
    eprintln!("soak: {} apps Ready; load and faults for {seconds} s", apps.len());

    // The run.
    let t0 = Instant::now();
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let stop = CancellationToken::new();
    let mut tasks = Vec::new();
    for (replica, proxy) in proxies.iter().enumerate() {
        tasks.push(tokio::spawn(inject_faults(
            toxiproxy.clone(),
            replica,
            proxy.to_string(),
            StdRng::seed_from_u64(rng.random()),
            t0,
            ledger.clone(),
            stop.clone(),
        )));
    }
    tasks.push(tokio::spawn(annotate_at_random(
        admin.clone(),
        apps.clone(),
        seen.clone(),
        StdRng::seed_from_u64(rng.random()),
        ledger.clone(),
        stop.clone(),
    )));
    for _ in 0..2 {
        tasks.push(tokio::spawn(rotate_over_rest(
            replicas.clone(),
            apps.clone(),
            token.clone(),
            StdRng::seed_from_u64(rng.random()),
            ledger.clone(),
            stop.clone(),
        )));
    }
    let sampling = CancellationToken::new();
    let sampler = tokio::spawn(sample(replicas.clone(), t0, ledger.clone(), sampling.clone()));

    // One leader kill, a quarter to a third of the way in, so the restarted replica has a first
    // half to compare its last half with.
    let kill_at = duration.mul_f64(rng.random_range(0.25..0.35));
    tokio::time::sleep(kill_at).await;
    let kill = kill_the_leader(&replicas, t0).await;
    eprintln!("soak: {kill}");
    ledger.lock().expect("ledger").kill = Some(kill);
    tokio::time::sleep(duration.saturating_sub(t0.elapsed())).await;
    stop.cancel();
    sampling.cancel();
    for task in tasks {
        task.await.expect("a load or fault task");
    }
    sampler.await.expect("the sampler");
    let ran_for = t0.elapsed();
    eprintln!("soak: load and faults stopped after {ran_for:?}; faults healed; converging");

    // The end: no more schedules, then every app settles.
    for app in apps.iter().filter(|a| a.load == Load::Schedule) {
        let api: Api<OAuthApp> = Api::namespaced(admin.clone(), &app.ns);
        api.patch(
            &app.name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"rotation": null}})),
        )
        .await
        .expect("drop the schedule");
    }
    let converged_in = Instant::now();
    let unsettled = settle(&admin, &apps, &seen, &ledger).await;
    let converged_in = converged_in.elapsed();
    watching.cancel();
    for w in watches {
        w.await.expect("a Secret watch");
    }

    let report = check(&admin, &apps, &seen, &ledger, &replicas, &interval_d, seconds).await;
    let mut report = report;
    report["seed"] = json!(seed);
    report["started_at"] = json!(started_at.to_string());
    report["duration_seconds"] = json!(seconds);
    report["ran_seconds"] = json!(round1(ran_for.as_secs_f64()));
    report["schedule_interval"] = json!(interval);
    report["lease_duration"] = json!(LEASE_DURATION);
    report["operator_build"] =
        json!("debug (the integration tests' build, cargo test --features failpoints; no failpoint set)");
    report["converged"] = json!({"ok": unsettled.is_empty(), "seconds": round1(converged_in.as_secs_f64()), "unsettled": unsettled});
    let checks_ok = report["checks"]
        .as_object()
        .expect("checks")
        .values()
        .all(|c| c["ok"] == json!(true));
    let pass = checks_ok && unsettled.is_empty();
    report["verdict"] = json!(if pass { "pass" } else { "fail" });
    write_results(&report);
    eprintln!(
        "soak: {} — bench/results/soak.md",
        if pass { "PASS" } else { "FAIL" }
    );
    assert!(
        pass,
        "the soak failed: {}",
        serde_json::to_string_pretty(&report).unwrap_or_default()
    );
}

fn replica_name(replica: usize) -> &'static str {
    ["replica-a", "replica-b"][replica]
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// Applies the CRD with the 1h floor of `spec.rotation.interval` lowered to 1m.
fn lower_the_interval_floor(cp: &ControlPlane) {
    let crd = std::fs::read_to_string(repo().join("crds/oauthapps.oauthapp.io.yaml")).expect("read the CRD");
    let floor = "duration(self) >= duration('1h')";
    assert_eq!(crd.matches(floor).count(), 1, "the CRD has one 1h floor");
    let path = cp.dir.join("crd-soak.yaml");
    std::fs::write(&path, crd.replace(floor, "duration(self) >= duration('1m')")).expect("write the CRD");
    cp.kubectl_ok(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        path.to_str().expect("utf-8"),
    ]);
}

/// A ServiceAccount of the soak's REST client, allowed to rotate (get oauthapps, create
/// oauthapps/rotate: the chart's oauthapp-rotator) in the soak's namespaces; a token for it.
fn rest_client_token(cp: &ControlPlane, namespaces: &[String], seconds: u64) -> String {
    let mut manifest = format!(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: soak-client, namespace: {LEASE_NAMESPACE}}}\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {{name: soak-rotator}}\nrules:\n- {{apiGroups: [oauthapp.io], resources: [oauthapps], verbs: [get]}}\n- {{apiGroups: [oauthapp.io], resources: [oauthapps/rotate], verbs: [create]}}\n"
    );
    for ns in namespaces {
        manifest.push_str(&format!(
            "---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: soak-rotator, namespace: {ns}}}\nroleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: soak-rotator}}\nsubjects: [{{kind: ServiceAccount, name: soak-client, namespace: {LEASE_NAMESPACE}}}]\n"
        ));
    }
    let path = cp.dir.join("soak-rbac.yaml");
    std::fs::write(&path, manifest).expect("write RBAC");
    cp.kubectl_ok(&["apply", "-f", path.to_str().expect("utf-8")]);
    let lifetime = (2 * seconds + 1800).max(3600);
    cp.kubectl_ok(&[
        "create",
        "token",
        "soak-client",
        "-n",
        LEASE_NAMESPACE,
        &format!("--duration={lifetime}s"),
    ])
    .trim()
    .to_string()
}

/// Records every version of every Secret in `ns`, resuming from the last resourceVersion.
async fn watch_secrets(client: Client, ns: String, seen: Arc<Mutex<Seen>>, stop: CancellationToken) {
    let api: Api<Secret> = Api::namespaced(client, &ns);
    let relist = |seen: &Arc<Mutex<Seen>>, list: kube::core::ObjectList<Secret>| {
        let mut seen = seen.lock().expect("seen");
        for s in &list.items {
            seen.record(&ns, s);
        }
        list.metadata.resource_version.unwrap_or_default()
    };
    let mut rv = relist(
        &seen,
        api.list(&ListParams::default()).await.expect("list Secrets"),
    );
    while !stop.is_cancelled() {
        let stream = match api.watch(&WatchParams::default().timeout(240), &rv).await {
            Ok(s) => s,
            Err(_) => {
                if sleep_or_stop(Duration::from_secs(1), &stop).await {
                    return;
                }
                continue;
            }
        };
        futures::pin_mut!(stream);
        loop {
            let item = tokio::select! {
                _ = stop.cancelled() => return,
                item = stream.next() => item,
            };
            match item {
                None | Some(Err(_)) => break,
                Some(Ok(WatchEvent::Added(s) | WatchEvent::Modified(s) | WatchEvent::Deleted(s))) => {
                    rv = s.resource_version().unwrap_or(rv);
                    seen.lock().expect("seen").record(&ns, &s);
                }
                Some(Ok(WatchEvent::Bookmark(b))) => rv = b.metadata.resource_version,
                Some(Ok(WatchEvent::Error(status))) => {
                    if status.code == 410 {
                        seen.lock()
                            .expect("seen")
                            .gaps
                            .push(format!("{ns}: {}", status.message));
                        if let Ok(list) = api.list(&ListParams::default()).await {
                            rv = relist(&seen, list);
                        }
                    }
                    break;
                }
            }
        }
    }
}

/// Switches Toxiproxy faults on and off at random on one replica's proxy, one at a time.
async fn inject_faults(
    toxiproxy: Arc<Toxiproxy>,
    replica: usize,
    proxy: String,
    mut rng: StdRng,
    t0: Instant,
    ledger: Arc<Mutex<Ledger>>,
    stop: CancellationToken,
) {
    loop {
        // Every draw before any wait, so a seed gives the same faults whatever the timing.
        let off = ms(&mut rng, 3_000, 20_000);
        let on = ms(&mut rng, 2_000, 15_000);
        let kind = FAULT_KINDS[rng.random_range(0..FAULT_KINDS.len())];
        let stream = if rng.random_bool(0.5) {
            "downstream"
        } else {
            "upstream"
        };
        let attributes = match kind {
            "latency" => {
                json!({"latency": rng.random_range(100..=1500), "jitter": rng.random_range(0..=300)})
            }
            "timeout" => json!({"timeout": rng.random_range(0..=5_000)}),
            "reset_peer" => json!({"timeout": rng.random_range(0..=2_000)}),
            "bandwidth" => json!({"rate": rng.random_range(1..=64)}),
            _ => Value::Null,
        };
        if sleep_or_stop(off, &stop).await {
            return;
        }
        let from_s = t0.elapsed().as_secs_f64();
        if kind == "down" {
            toxiproxy.set_enabled(&proxy, false).await;
        } else {
            toxiproxy
                .toxic(&proxy, "soak", kind, stream, attributes.clone())
                .await;
        }
        let stopped = sleep_or_stop(on, &stop).await;
        if kind == "down" {
            toxiproxy.set_enabled(&proxy, true).await;
        } else {
            toxiproxy.remove_toxic(&proxy, "soak").await;
        }
        ledger.lock().expect("ledger").faults.push(Fault {
            replica,
            kind,
            stream: if kind == "down" { "both" } else { stream },
            attributes,
            from_s,
            to_s: t0.elapsed().as_secs_f64(),
        });
        if stopped {
            return;
        }
    }
}

/// Writes a new `oauthapp.io/rotate` value on a random annotation app, one whose previous value
/// has been acted on (the annotation is a level: a value overwritten before it was acted on was
/// never requested).
async fn annotate_at_random(
    client: Client,
    apps: Arc<Vec<App>>,
    seen: Arc<Mutex<Seen>>,
    mut rng: StdRng,
    ledger: Arc<Mutex<Ledger>>,
    stop: CancellationToken,
) {
    let candidates: Vec<&App> = apps.iter().filter(|a| a.load == Load::Annotation).collect();
    let mut n = 0;
    loop {
        let pause = ms(&mut rng, 1_000, 4_000);
        let start = rng.random_range(0..candidates.len());
        if sleep_or_stop(pause, &stop).await {
            return;
        }
        let app = {
            let seen = seen.lock().expect("seen");
            let ledger = ledger.lock().expect("ledger");
            (0..candidates.len())
                .map(|i| candidates[(start + i) % candidates.len()])
                .find(|app| {
                    let Some(last) = ledger.written.get(&app.key()).and_then(|v| v.last()) else {
                        return true;
                    };
                    seen.rotations
                        .get(&app.secret_key())
                        .is_some_and(|rs| rs.iter().any(|r| r.token.as_ref() == Some(last)))
                })
        };
        let Some(app) = app else { continue };
        n += 1;
        let value = format!("soak-{n}");
        let api: Api<OAuthApp> = Api::namespaced(client.clone(), &app.ns);
        let patched = api
            .patch(
                &app.name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"annotations": {ROTATE_ANNOTATION: value}}})),
            )
            .await;
        let mut ledger = ledger.lock().expect("ledger");
        match patched {
            Ok(_) => ledger.written.entry(app.key()).or_default().push(value),
            Err(_) => ledger.annotation_refused += 1,
        }
    }
}

/// `POST /api/v1/oauth-apps/{id}/rotate` on a random REST app, to a random replica.
async fn rotate_over_rest(
    replicas: Arc<Mutex<Replicas>>,
    apps: Arc<Vec<App>>,
    token: String,
    mut rng: StdRng,
    ledger: Arc<Mutex<Ledger>>,
    stop: CancellationToken,
) {
    let candidates: Vec<&App> = apps.iter().filter(|a| a.load == Load::Rest).collect();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("an HTTP client");
    loop {
        let pause = ms(&mut rng, 2_000, 6_000);
        let app = candidates[rng.random_range(0..candidates.len())];
        let replica = rng.random_range(0..2usize);
        if sleep_or_stop(pause, &stop).await {
            return;
        }
        let port = replicas.lock().expect("replicas").live[replica].api_port;
        let sent = http
            .post(format!(
                "http://127.0.0.1:{port}/api/v1/oauth-apps/{}/rotate",
                app.id
            ))
            .bearer_auth(&token)
            .send()
            .await;
        let (outcome, secret) = match sent {
            Ok(r) => {
                let code = r.status().as_u16();
                match r.json::<Value>().await {
                    Ok(body) => (
                        Outcome::Code(code),
                        body["client_secret"].as_str().map(str::to_string),
                    ),
                    Err(_) if code == 200 => (Outcome::Broken, None),
                    Err(_) => (Outcome::Code(code), None),
                }
            }
            Err(e) if e.is_connect() => (Outcome::Refused, None),
            Err(_) => (Outcome::Broken, None),
        };
        ledger.lock().expect("ledger").answers.push(Answer {
            app: app.key(),
            outcome,
            secret,
        });
    }
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Samples each replica's RSS (/proc/<pid>/status VmRSS) and `oauthapp_leader`; starts a
/// replica that exited by itself again, as a kubelet would (and records why it exited).
async fn sample(
    replicas: Arc<Mutex<Replicas>>,
    t0: Instant,
    ledger: Arc<Mutex<Ledger>>,
    stop: CancellationToken,
) {
    loop {
        let now: Vec<(u32, u16)> = replicas
            .lock()
            .expect("replicas")
            .live
            .iter()
            .map(|o| (o.pid(), o.admin_port))
            .collect();
        for (replica, (pid, admin_port)) in now.into_iter().enumerate() {
            if exited(pid) {
                let mut r = replicas.lock().expect("replicas");
                let log = r.live[replica].log_text();
                let error = log
                    .lines()
                    .find(|l| l.starts_with("Error: "))
                    .unwrap_or("(no Error: line)")
                    .to_string();
                let (_, restarted) = r.restart(replica);
                ledger.lock().expect("ledger").exits.push(json!({
                    "replica": replica_name(replica),
                    "seen_at_seconds": round1(t0.elapsed().as_secs_f64()),
                    "pid": pid,
                    "error": error,
                    "restarted_pid": restarted,
                }));
                continue;
            }
            let leader = tokio::time::timeout(Duration::from_secs(2), http_get(admin_port, "/metrics"))
                .await
                .ok()
                .flatten()
                .and_then(|text| {
                    text.lines()
                        .find_map(|l| l.strip_prefix("oauthapp_leader "))
                        .map(|v| v.trim() == "1")
                });
            if let Some(rss_kib) = rss_kib(pid) {
                ledger.lock().expect("ledger").samples.push(Sample {
                    t_s: t0.elapsed().as_secs_f64(),
                    replica,
                    pid,
                    rss_kib,
                    leader,
                });
            }
        }
        if sleep_or_stop(SAMPLE_EVERY, &stop).await {
            return;
        }
    }
}

/// Kills the replica that leads (kill -9) and starts it again, behind the same proxy.
async fn kill_the_leader(replicas: &Arc<Mutex<Replicas>>, t0: Instant) -> Value {
    let ports: Vec<u16> = replicas
        .lock()
        .expect("replicas")
        .live
        .iter()
        .map(|o| o.admin_port)
        .collect();
    // Faults may leave no leader for a while: wait for exactly one.
    let leader = eventually("one replica leads, to be killed", CONVERGE, || async {
        let mut leading = Vec::new();
        for (i, port) in ports.iter().enumerate() {
            let text = http_get(*port, "/metrics").await?;
            if text.lines().any(|l| l == "oauthapp_leader 1") {
                leading.push(i);
            }
        }
        (leading.len() == 1).then(|| leading[0])
    })
    .await;
    let at_s = t0.elapsed().as_secs_f64();
    let (old_pid, new_pid) = replicas.lock().expect("replicas").restart(leader);
    json!({
        "replica": replica_name(leader),
        "at_seconds": round1(at_s),
        "killed_pid": old_pid,
        "restarted_pid": new_pid,
    })
}

/// Waits until every app is Ready, its status follows the latest rotation the watch saw, and
/// its last annotation value was acted on. Returns the apps that did not get there.
async fn settle(
    admin: &Client,
    apps: &[App],
    seen: &Arc<Mutex<Seen>>,
    ledger: &Arc<Mutex<Ledger>>,
) -> Vec<String> {
    let deadline = Instant::now() + CONVERGE;
    loop {
        let mut unsettled = Vec::new();
        for app in apps {
            let api: Api<OAuthApp> = Api::namespaced(admin.clone(), &app.ns);
            let Ok(a) = api.get(&app.name).await else {
                unsettled.push(format!("{}: no answer", app.key()));
                continue;
            };
            let ready = a.ready_condition().is_some_and(|c| c.status == "True");
            let generation_seen =
                a.status.as_ref().and_then(|s| s.observed_generation) == a.metadata.generation;
            let status = a.status.clone().unwrap_or_default();
            let seen = seen.lock().expect("seen");
            let latest = seen.rotations.get(&app.secret_key()).and_then(|rs| rs.last());
            let count = seen.rotations.get(&app.secret_key()).map_or(0, Vec::len) as i64;
            let last_written = ledger
                .lock()
                .expect("ledger")
                .written
                .get(&app.key())
                .and_then(|v| v.last().cloned());
            let follows =
                latest.map(|r| &r.id) == status.rotation_id.as_ref() && status.rotation_count == count;
            let acted = last_written.is_none() || status.observed_rotate_token == last_written;
            if !(ready && generation_seen && follows && acted) {
                unsettled.push(format!(
                    "{}: ready {ready}, generation observed {generation_seen}, status follows the Secret {follows}, last annotation acted on {acted}",
                    app.key()
                ));
            }
        }
        if unsettled.is_empty() || Instant::now() > deadline {
            return unsettled;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The rotation counts, defined:
/// - requested = annotation values the API server accepted + REST answers 200 + scheduled
///   rotations (a schedule is not a request the soak sends: each one the watch saw counts, and
///   is checked not to come before its interval has passed since the rotation before it);
/// - done = the rotations the Secrets went through after their first secret, i.e. the sum of
///   `status.rotationCount - 1`, which must equal the distinct `oauthapp.io/rotation-id`s the
///   watch saw, numbered 1, 2, 3… by `oauthapp.io/rotation-count`;
/// - done = requested + REST rotations applied without a 200 (a request that got no answer, a
///   409 or a 5xx may have been applied; each such rotation is matched to one such answer);
/// - lost = an annotation value never acted on + a 200 whose secret no rotation of its app had;
/// - double = an annotation value acted on more than once (or a value the soak never wrote) +
///   REST rotations applied without a 200 beyond the answers that may have been applied + a
///   scheduled rotation before its time + any other rotation (a second first secret, a repair).
#[derive(Default)]
struct Tally {
    annotation_written: usize,
    rest_200: usize,
    scheduled: usize,
    applied_without_200: usize,
    done_by_trigger: BTreeMap<String, usize>,
    done: i64,
    lost: Vec<String>,
    double: Vec<String>,
    /// Annotation values lost or acted on twice (in `lost` and `double` too).
    annotation_problems: usize,
}

impl Tally {
    /// Adds one app: the rotations its Secret went through, the annotation values written to
    /// it and the REST answers about it.
    fn add(
        &mut self,
        key: &str,
        rotations: &[Rotation],
        written: &[String],
        answers: &[&Answer],
        interval: &SignedDuration,
    ) {
        for (i, r) in rotations.iter().enumerate() {
            *self.done_by_trigger.entry(r.trigger.clone()).or_default() += 1;
            match r.trigger.as_str() {
                "Created" if i == 0 => {}
                "Annotation" | "Api" => {}
                "Schedule" => {
                    self.scheduled += 1;
                    let due = i
                        .checked_sub(1)
                        .and_then(|p| rotations[p].rotated_at)
                        .and_then(|prev| prev.checked_add(*interval).ok());
                    // rotated-at has second precision in places; allow one second.
                    if let (Some(due), Some(at)) = (due, r.rotated_at)
                        && at < due - SignedDuration::from_secs(1)
                    {
                        self.double
                            .push(format!("{}: scheduled rotation {} at {at}, due {due}", key, r.id));
                    }
                }
                other => self
                    .double
                    .push(format!("{}: unexpected rotation {} by {other}", key, r.id)),
            }
        }

        // Annotation values: each acted on exactly once.
        self.annotation_written += written.len();
        let before = self.lost.len() + self.double.len();
        for v in written {
            let acted = rotations
                .iter()
                .filter(|r| r.trigger == "Annotation" && r.token.as_ref() == Some(v))
                .count();
            match acted {
                0 => self
                    .lost
                    .push(format!("{}: annotation value {v} never acted on", key)),
                1 => {}
                n => self
                    .double
                    .push(format!("{}: annotation value {v} acted on {n} times", key)),
            }
        }
        for r in rotations.iter().filter(|r| r.trigger == "Annotation") {
            if !r.token.as_ref().is_some_and(|t| written.contains(t)) {
                self.double.push(format!(
                    "{}: annotation rotation {} for a value never written ({:?})",
                    key, r.id, r.token
                ));
            }
        }
        self.annotation_problems += self.lost.len() + self.double.len() - before;

        // REST: every 200's secret was a rotation of its app, by the API; any other API
        // rotation is matched to an answer that may have been applied.
        let mut ok_secrets = HashSet::new();
        for a in answers.iter().filter(|a| matches!(a.outcome, Outcome::Code(200))) {
            self.rest_200 += 1;
            match &a.secret {
                Some(s)
                    if rotations
                        .iter()
                        .any(|r| r.trigger == "Api" && r.secret.as_ref() == Some(s)) =>
                {
                    ok_secrets.insert(s.clone());
                }
                Some(_) => self
                    .lost
                    .push(format!("{}: a 200's secret is in no rotation of the app", key)),
                None => self.lost.push(format!("{}: a 200 without a secret", key)),
            }
        }
        let maybe_applied = answers
            .iter()
            .filter(|a| match a.outcome {
                Outcome::Broken => true,
                Outcome::Code(c) => c == 409 || c >= 500,
                Outcome::Refused => false,
            })
            .count();
        let without_200 = rotations
            .iter()
            .filter(|r| r.trigger == "Api" && !r.secret.as_ref().is_some_and(|s| ok_secrets.contains(s)))
            .count();
        self.applied_without_200 += without_200.min(maybe_applied);
        if without_200 > maybe_applied {
            self.double.push(format!(
                "{}: {without_200} REST rotations without a 200, {maybe_applied} answers that may have been applied",
                key
            ));
        }
    }
}

async fn check(
    admin: &Client,
    apps: &[App],
    seen: &Arc<Mutex<Seen>>,
    ledger: &Arc<Mutex<Ledger>>,
    replicas: &Arc<Mutex<Replicas>>,
    interval: &SignedDuration,
    seconds: u64,
) -> Value {
    // Every task has stopped: take what they recorded.
    let seen = std::mem::take(&mut *seen.lock().expect("seen"));
    let ledger = std::mem::take(&mut *ledger.lock().expect("ledger"));
    let mut tally = Tally::default();
    let mut not_verified = Vec::new();
    let mut count_mismatch = Vec::new();

    for app in apps {
        let api: Api<OAuthApp> = Api::namespaced(admin.clone(), &app.ns);
        let secrets: Api<Secret> = Api::namespaced(admin.clone(), &app.ns);
        let status = api
            .get(&app.name)
            .await
            .expect("get app")
            .status
            .unwrap_or_default();
        let secret = secrets
            .get(&format!("{}-oauth-client", app.name))
            .await
            .expect("get Secret");
        let plaintext = secret
            .data
            .as_ref()
            .and_then(|d| d.get(CLIENT_SECRET_KEY))
            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
            .unwrap_or_default();
        let hash = status.client_secret_hash.clone().unwrap_or_default();
        let verifies = {
            let (hash, plaintext) = (hash.clone(), plaintext.clone());
            tokio::task::spawn_blocking(move || independently_verifies(&hash, &plaintext))
                .await
                .expect("argon2-verify.sh")
        };
        if !verifies {
            not_verified.push(app.key());
        }

        let empty = Vec::new();
        let rotations = seen.rotations.get(&app.secret_key()).unwrap_or(&empty);
        let numbered = rotations
            .iter()
            .enumerate()
            .all(|(i, r)| r.count == Some(i as i64 + 1));
        let secret_count = secret
            .annotations()
            .get(annotations::ROTATION_COUNT)
            .and_then(|c| c.parse::<i64>().ok());
        if !numbered
            || status.rotation_count != rotations.len() as i64
            || secret_count != Some(status.rotation_count)
            || rotations.last().and_then(|r| r.secret.as_ref()) != Some(&plaintext)
        {
            count_mismatch.push(format!(
                "{}: status.rotationCount {}, Secret rotation-count {secret_count:?}, {} rotations seen (numbered 1..n: {numbered})",
                app.key(),
                status.rotation_count,
                rotations.len()
            ));
        }
        tally.done += status.rotation_count - 1;
        let written = ledger.written.get(&app.key()).cloned().unwrap_or_default();
        let answers: Vec<&Answer> = ledger.answers.iter().filter(|a| a.app == app.key()).collect();
        tally.add(&app.key(), rotations, &written, &answers, interval);
    }

    let requested = tally.annotation_written + tally.rest_200 + tally.scheduled;
    let counts_ok = tally.done == (requested + tally.applied_without_200) as i64 && count_mismatch.is_empty();

    // Logs: every plaintext the soak saw, in every operator log.
    let mut plaintexts: HashSet<String> = seen.plaintexts.clone();
    plaintexts.extend(ledger.answers.iter().filter_map(|a| a.secret.clone()));
    let logs: Vec<PathBuf> = {
        let replicas = replicas.lock().expect("replicas");
        replicas
            .retired
            .iter()
            .chain(replicas.live.iter())
            .map(|o| o.log.clone())
            .collect()
    };
    let mut log_bytes = 0;
    let mut leaked = 0;
    let mut step_downs = 0;
    for log in &logs {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        log_bytes += text.len();
        leaked += count_plaintexts(&text, &plaintexts);
        step_downs += text.matches("stepping down").count();
    }

    // RSS.
    let rss: Vec<Value> = (0..2)
        .map(|replica| rss_verdict(&ledger.samples, replica, seconds as f64).to_json(replica))
        .collect();
    let rss_ok = rss.iter().all(|r| r["flat"] == json!(true));

    // Faults.
    let mut faults_by_kind = BTreeMap::<&str, usize>::new();
    let mut fault_seconds = BTreeMap::<&str, f64>::new();
    let mut faults_by_replica = [0usize; 2];
    for f in &ledger.faults {
        *faults_by_kind.entry(f.kind).or_default() += 1;
        *fault_seconds.entry(f.kind).or_default() += f.to_s - f.from_s;
        faults_by_replica[f.replica] += 1;
    }
    for v in fault_seconds.values_mut() {
        *v = round1(*v);
    }
    let mut answers = BTreeMap::<String, usize>::new();
    for a in &ledger.answers {
        let key = match a.outcome {
            Outcome::Code(c) => c.to_string(),
            Outcome::Refused => "refused (replica restarting)".to_string(),
            Outcome::Broken => "no answer".to_string(),
        };
        *answers.entry(key).or_default() += 1;
    }
    let mut leader_changes = 0;
    let mut last_leader = None;
    for s in &ledger.samples {
        // A leader is a process: the killed replica's restart is another one.
        if s.leader == Some(true) && last_leader != Some(s.pid) {
            leader_changes += usize::from(last_leader.is_some());
            last_leader = Some(s.pid);
        }
    }

    json!({
        "apps": apps.len(),
        "namespaces": NAMESPACES,
        "apps_by_load": {"schedule": apps.iter().filter(|a| a.load == Load::Schedule).count(),
                         "annotation": apps.iter().filter(|a| a.load == Load::Annotation).count(),
                         "rest": apps.iter().filter(|a| a.load == Load::Rest).count()},
        "faults": {"by_kind": faults_by_kind, "seconds_on_by_kind": fault_seconds,
                   "by_replica": {"replica-a": faults_by_replica[0], "replica-b": faults_by_replica[1]},
                   "leader_kill": ledger.kill.clone(),
                   "list": ledger.faults.iter().map(|f| json!({"replica": replica_name(f.replica), "kind": f.kind, "stream": f.stream, "attributes": f.attributes, "from_s": round1(f.from_s), "to_s": round1(f.to_s)})).collect::<Vec<_>>()},
        "leader_changes_sampled": leader_changes,
        "replica_exits": ledger.exits,
        "step_downs_logged": step_downs,
        "rotations": {
            "requested": {"annotation_values_written": tally.annotation_written, "rest_200": tally.rest_200,
                          "scheduled_observed": tally.scheduled, "total": requested},
            "annotation_writes_refused": ledger.annotation_refused,
            "done": tally.done,
            "done_by_trigger": tally.done_by_trigger,
            "rest_applied_without_200": tally.applied_without_200,
            "lost": tally.lost.len(),
            "double": tally.double.len(),
        },
        "rest_answers": answers,
        "rss_kib": {"replica-a": rss[0], "replica-b": rss[1]},
        "checks": {
            "secrets_verify_independently": {"ok": not_verified.is_empty(), "apps": apps.len(), "failed": not_verified},
            "annotation_values_acted_on_once": {"ok": tally.annotation_problems == 0,
                                                "values": tally.annotation_written},
            "counts_equal_successful_requests": {"ok": counts_ok, "done": tally.done,
                                                 "requested_plus_applied_without_200": requested + tally.applied_without_200,
                                                 "mismatches": count_mismatch},
            "none_lost": {"ok": tally.lost.is_empty(), "detail": tally.lost},
            "none_double": {"ok": tally.double.is_empty(), "detail": tally.double},
            "no_plaintext_in_logs": {"ok": leaked == 0 && !plaintexts.is_empty(), "plaintexts": plaintexts.len(),
                                     "logs": logs.len(), "log_bytes": log_bytes, "found": leaked},
            "rss_flat_over_the_last_half": {"ok": rss_ok},
            "watch_saw_every_rotation": {"ok": seen.gaps.is_empty() && seen.reverted.is_empty(),
                                         "relists": seen.gaps, "reverted": seen.reverted},
        },
    })
}

/// How many of `plaintexts` occur in `text`, as themselves or base64-encoded (a logged Secret
/// object): the 43 random characters of each are looked for in every run of base62 characters,
/// and the base64 of its first 51 bytes in every run of base64 characters.
fn count_plaintexts(text: &str, plaintexts: &HashSet<String>) -> usize {
    use base64::Engine as _;
    const RANDOM: usize = 43;
    const B64: usize = 68;
    let randoms: HashSet<&str> = plaintexts.iter().filter_map(|p| p.get(4..4 + RANDOM)).collect();
    let encoded: HashSet<String> = plaintexts
        .iter()
        .filter(|p| p.len() >= 51)
        .map(|p| base64::engine::general_purpose::STANDARD.encode(&p.as_bytes()[..51]))
        .collect();
    let windows = |is: fn(char) -> bool, width: usize, hit: &dyn Fn(&str) -> bool| {
        text.split(|c: char| !is(c))
            .filter(|run| run.len() >= width)
            .map(|run| {
                (0..=run.len() - width)
                    .filter(|&i| hit(&run[i..i + width]))
                    .count()
            })
            .sum::<usize>()
    };
    windows(|c| c.is_ascii_alphanumeric(), RANDOM, &|w| randoms.contains(w))
        + windows(|c| c.is_ascii_alphanumeric() || c == '+' || c == '/', B64, &|w| {
            encoded.contains(w)
        })
}

/// "Flat", defined: for the process that runs at the end (the restarted one for the killed
/// replica), the largest RSS sampled in the last half of the run is at most 1.1 × the largest
/// sampled in the first half, plus 20 MiB (one argon2 hash's memory: [`RSS_SLACK_KIB`]).
struct RssVerdict {
    peak_kib: u64,
    final_kib: u64,
    first_half_max_kib: u64,
    last_half_max_kib: u64,
    samples: usize,
    pid: u32,
    flat: bool,
    /// (seconds, MiB) every 30 s, every process of the replica.
    series: Vec<(f64, f64)>,
}

impl RssVerdict {
    fn to_json(&self, replica: usize) -> Value {
        json!({
            "replica": replica_name(replica),
            "pid_at_the_end": self.pid,
            "samples": self.samples,
            "peak": self.peak_kib,
            "final": self.final_kib,
            "first_half_max": self.first_half_max_kib,
            "last_half_max": self.last_half_max_kib,
            "limit": (self.first_half_max_kib as f64 * 1.1) as u64 + RSS_SLACK_KIB,
            "flat": self.flat,
            "series_s_mib": self.series.iter().map(|(t, m)| json!([round1(*t), round1(*m)])).collect::<Vec<_>>(),
        })
    }
}

fn rss_verdict(samples: &[Sample], replica: usize, seconds: f64) -> RssVerdict {
    let mine: Vec<&Sample> = samples.iter().filter(|s| s.replica == replica).collect();
    let pid = mine.last().map_or(0, |s| s.pid);
    let max = |it: &mut dyn Iterator<Item = &&Sample>| it.map(|s| s.rss_kib).max().unwrap_or(0);
    let last_process: Vec<&Sample> = mine.iter().copied().filter(|s| s.pid == pid).collect();
    let first = max(&mut last_process.iter().filter(|s| s.t_s < seconds / 2.0));
    let last = max(&mut last_process.iter().filter(|s| s.t_s >= seconds / 2.0));
    RssVerdict {
        peak_kib: max(&mut mine.iter()),
        final_kib: mine.last().map_or(0, |s| s.rss_kib),
        first_half_max_kib: first,
        last_half_max_kib: last,
        samples: mine.len(),
        pid,
        series: mine
            .iter()
            .step_by(6)
            .map(|s| (s.t_s, s.rss_kib as f64 / 1024.0))
            .collect(),
        flat: first > 0 && last > 0 && (last as f64) <= first as f64 * 1.1 + RSS_SLACK_KIB as f64,
    }
}

fn mib(kib: &Value) -> String {
    format!("{:.1}", kib.as_f64().unwrap_or(0.0) / 1024.0)
}

fn write_results(report: &Value) {
    let dir = repo().join("bench/results");
    std::fs::write(
        dir.join("soak.json"),
        serde_json::to_string_pretty(report).expect("json") + "\n",
    )
    .expect("write soak.json");
    let r = &report["rotations"];
    let c = &report["checks"];
    let yes = |v: &Value| if v["ok"] == json!(true) { "yes" } else { "**no**" };
    let mut md = format!(
        "# oauthapp-operator soak (`make soak`)\n\n\
         Run {} · seed **{}** (`SOAK_SEED={}` replays the choices) · {} s of load and faults · \
         {} apps in {} namespaces ({} on a {} schedule, {} rotated by annotation, {} by REST) · \
         two replicas with leader election (lease {}), each behind its own Toxiproxy proxy · \
         operator build: {}\n\n**Verdict: {}**\n\n",
        report["started_at"].as_str().unwrap_or(""),
        report["seed"],
        report["seed"],
        report["duration_seconds"],
        report["apps"],
        report["namespaces"],
        report["apps_by_load"]["schedule"],
        report["schedule_interval"].as_str().unwrap_or(""),
        report["apps_by_load"]["annotation"],
        report["apps_by_load"]["rest"],
        report["lease_duration"].as_str().unwrap_or(""),
        report["operator_build"].as_str().unwrap_or(""),
        report["verdict"].as_str().unwrap_or("").to_uppercase(),
    );
    md.push_str("| check | result | met |\n| --- | --- | --- |\n");
    md.push_str(&format!(
        "| every Secret verifies against its status (argon2-cffi) | {} apps, failed: {} | {} |\n",
        c["secrets_verify_independently"]["apps"],
        c["secrets_verify_independently"]["failed"],
        yes(&c["secrets_verify_independently"])
    ));
    md.push_str(&format!(
        "| each annotation value acted on exactly once | {} values | {} |\n",
        c["annotation_values_acted_on_once"]["values"],
        yes(&c["annotation_values_acted_on_once"])
    ));
    md.push_str(&format!(
        "| rotations done = successful requests | done {} = requested {} + REST applied without a 200 {} | {} |\n",
        r["done"],
        r["requested"]["total"],
        r["rest_applied_without_200"],
        yes(&c["counts_equal_successful_requests"])
    ));
    md.push_str(&format!(
        "| lost | {} | {} |\n| double | {} | {} |\n",
        r["lost"],
        yes(&c["none_lost"]),
        r["double"],
        yes(&c["none_double"])
    ));
    md.push_str(&format!(
        "| no plaintext in any log | {} plaintexts looked for in {} logs ({:.1} MiB), found {} | {} |\n",
        c["no_plaintext_in_logs"]["plaintexts"],
        c["no_plaintext_in_logs"]["logs"],
        c["no_plaintext_in_logs"]["log_bytes"].as_f64().unwrap_or(0.0) / 1048576.0,
        c["no_plaintext_in_logs"]["found"],
        yes(&c["no_plaintext_in_logs"])
    ));
    for name in ["replica-a", "replica-b"] {
        let x = &report["rss_kib"][name];
        md.push_str(&format!(
            "| {name} RSS flat over the last half | last-half max {} MiB ≤ {} MiB (1.1 × first-half max {} MiB + 20 MiB) | {} |\n",
            mib(&x["last_half_max"]),
            mib(&x["limit"]),
            mib(&x["first_half_max"]),
            if x["flat"] == json!(true) { "yes" } else { "**no**" }
        ));
    }
    md.push_str(&format!(
        "| the Secret watch saw every rotation | relists {}, reverted ids {} | {} |\n",
        c["watch_saw_every_rotation"]["relists"],
        c["watch_saw_every_rotation"]["reverted"],
        yes(&c["watch_saw_every_rotation"])
    ));
    md.push_str(&format!(
        "| every app settled after the faults | in {} s; unsettled: {} | {} |\n\n",
        report["converged"]["seconds"],
        report["converged"]["unsettled"],
        yes(&report["converged"])
    ));
    md.push_str(&format!(
        "Faults injected, by kind (count; seconds on): {}; by replica: {}. Leader kill: {}. \
         Leader changes seen by the 5 s sampler: {}; \"stepping down\" in the logs: {}.\n\n",
        report["faults"]["by_kind"]
            .as_object()
            .map(|o| o
                .iter()
                .map(|(k, v)| format!("{k} {v} ({} s)", report["faults"]["seconds_on_by_kind"][k]))
                .collect::<Vec<_>>()
                .join(", "))
            .unwrap_or_default(),
        report["faults"]["by_replica"],
        report["faults"]["leader_kill"],
        report["leader_changes_sampled"],
        report["step_downs_logged"],
    ));
    let exits = report["replica_exits"].as_array().cloned().unwrap_or_default();
    md.push_str(&format!(
        "Replicas that exited by themselves (started again by the soak within 5 s, as a kubelet \
         would): {}{}.\n\n",
        exits.len(),
        exits
            .iter()
            .map(|e| format!(
                "; {} at {} s: {}",
                e["replica"].as_str().unwrap_or(""),
                e["seen_at_seconds"],
                e["error"].as_str().unwrap_or("")
            ))
            .collect::<String>()
    ));
    md.push_str(&format!(
        "Rotations requested: {} annotation values written ({} writes refused), {} REST answers 200, \
         {} scheduled rotations observed. Done, by trigger (the first secrets included): {}. \
         REST answers by code: {}.\n\n",
        r["requested"]["annotation_values_written"],
        r["annotation_writes_refused"],
        r["requested"]["rest_200"],
        r["requested"]["scheduled_observed"],
        r["done_by_trigger"],
        report["rest_answers"],
    ));
    md.push_str("| replica | peak RSS | final RSS |\n| --- | --- | --- |\n");
    for name in ["replica-a", "replica-b"] {
        let x = &report["rss_kib"][name];
        md.push_str(&format!(
            "| {name} | {} MiB | {} MiB |\n",
            mib(&x["peak"]),
            mib(&x["final"])
        ));
    }
    for name in ["replica-a", "replica-b"] {
        let series = report["rss_kib"][name]["series_s_mib"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|p| format!("{}", p[1]))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        md.push_str(&format!("\n{name} RSS every 30 s (MiB): {series}.\n"));
    }
    md.push_str(
        "\nDefinitions (tests/integration/soak.rs): requested = annotation values the API server \
         accepted (a new value is written only once the previous one was acted on) + REST answers \
         200 + scheduled rotations the Secret watch saw; done = the sum of `status.rotationCount - 1`, \
         which must equal the rotations the Secret watch saw; a REST request with no answer, a 409 \
         or a 5xx may have been applied, and each REST rotation without a 200 must match one such \
         answer. Lost = an annotation value never acted on or a 200 whose secret no rotation had; \
         double = a value acted on twice, a REST rotation beyond the answers that could explain it, \
         a scheduled rotation before its interval, any repair. RSS is sampled every 5 s from \
         /proc/<pid>/status; flat = the last half's largest sample of the process running at the \
         end is at most 1.1 × its first half's largest + 20 MiB (the hasher keeps one 19 MiB argon2 block \
         per worker once used; the second appears the first time two hashes overlap). Scheduled rotations run on the \
         soak's own control plane with the CRD's 1h floor of `spec.rotation.interval` lowered to 1m.\n",
    );
    std::fs::write(dir.join("soak.md"), md).expect("write soak.md");
}

#[test]
fn a_plaintext_is_found_in_a_log_as_itself_or_in_base64() {
    use base64::Engine as _;
    let secret = oauthapp_operator::model::secret::ClientSecret::generate().expect("a secret");
    let plaintext = secret.expose().to_string();
    let other = oauthapp_operator::model::secret::ClientSecret::generate()
        .expect("a secret")
        .expose()
        .to_string();
    let plaintexts = HashSet::from([plaintext.clone()]);
    let encoded = base64::engine::general_purpose::STANDARD.encode(&plaintext);
    assert_eq!(
        count_plaintexts(&format!("a line\nrotated {other} hint oas_abcd\n"), &plaintexts),
        0
    );
    assert_eq!(
        count_plaintexts(&format!("x secret={plaintext}, y"), &plaintexts),
        1
    );
    assert_eq!(
        count_plaintexts(&format!("\"client_secret\":\"{encoded}\""), &plaintexts),
        1
    );
    assert_eq!(
        count_plaintexts(&format!("{}\n", &plaintext[4..47]), &plaintexts),
        1
    );
}

#[test]
fn rss_is_flat_unless_the_last_half_grows_past_the_first_by_a_tenth_and_20_mib() {
    let samples = |first: u64, last: u64| {
        vec![
            Sample {
                t_s: 10.0,
                replica: 0,
                pid: 1,
                rss_kib: 500_000,
                leader: None,
            },
            Sample {
                t_s: 20.0,
                replica: 0,
                pid: 2,
                rss_kib: first,
                leader: None,
            },
            Sample {
                t_s: 60.0,
                replica: 0,
                pid: 2,
                rss_kib: last,
                leader: None,
            },
        ]
    };
    let flat = rss_verdict(&samples(100_000, 100_000 + 10_000 + RSS_SLACK_KIB), 0, 100.0);
    assert!(flat.flat);
    assert_eq!(
        (flat.peak_kib, flat.pid),
        (500_000, 2),
        "the peak counts every process; flatness the last"
    );
    assert!(!rss_verdict(&samples(100_000, 100_000 + 10_001 + RSS_SLACK_KIB), 0, 100.0).flat);
    assert!(
        !rss_verdict(&samples(100_000, 0), 1, 100.0).flat,
        "no samples: not flat"
    );
}

#[cfg(test)]
fn rotation(id: &str, trigger: &str, token: Option<&str>, at_s: i64, secret: &str) -> Rotation {
    Rotation {
        id: id.into(),
        trigger: trigger.into(),
        token: token.map(Into::into),
        rotated_at: Some(Timestamp::UNIX_EPOCH + SignedDuration::from_secs(at_s)),
        count: None,
        secret: Some(secret.into()),
    }
}

#[test]
fn the_tally_counts_every_request_once_and_finds_the_lost_and_the_double() {
    let every_2m = SignedDuration::from_mins(2);
    let answer = |outcome, secret: Option<&str>| Answer {
        app: "ns/a".into(),
        outcome,
        secret: secret.map(Into::into),
    };
    let (ok1, ok2, busy) = (
        answer(Outcome::Code(200), Some("s2")),
        answer(Outcome::Code(200), Some("s4")),
        answer(Outcome::Code(503), None),
    );
    let clean = [
        rotation("r1", "Created", None, 0, "s1"),
        rotation("r2", "Api", None, 10, "s2"),
        rotation("r3", "Annotation", Some("v1"), 20, "s3"),
        rotation("r4", "Api", Some("v1"), 30, "s4"),
        rotation("r5", "Api", Some("v1"), 40, "s5"),
        rotation("r6", "Schedule", Some("v1"), 160, "s6"),
    ];
    let mut t = Tally::default();
    t.add("ns/a", &clean, &["v1".into()], &[&ok1, &ok2, &busy], &every_2m);
    assert_eq!(
        (t.lost.len(), t.double.len()),
        (0, 0),
        "{:?} {:?}",
        t.lost,
        t.double
    );
    assert_eq!(
        (
            t.annotation_written,
            t.rest_200,
            t.scheduled,
            t.applied_without_200
        ),
        (1, 2, 1, 1),
        "r5 is the 503 that was applied"
    );

    // The same without the 503: r5 is a REST rotation nobody asked for.
    let mut t = Tally::default();
    t.add("ns/a", &clean, &["v1".into()], &[&ok1, &ok2], &every_2m);
    assert_eq!((t.lost.len(), t.double.len(), t.annotation_problems), (0, 1, 0));

    // A value acted on twice, a value never acted on, a 200 that is in no rotation, a schedule
    // that fired early, a repair.
    let bad = [
        rotation("r1", "Created", None, 0, "s1"),
        rotation("r2", "Annotation", Some("v1"), 10, "s2"),
        rotation("r3", "Annotation", Some("v1"), 20, "s3"),
        rotation("r4", "Schedule", Some("v1"), 100, "s4"),
        rotation("r5", "SecretDrift", Some("v1"), 110, "s5"),
    ];
    let lost_200 = answer(Outcome::Code(200), Some("elsewhere"));
    let mut t = Tally::default();
    t.add("ns/a", &bad, &["v1".into(), "v2".into()], &[&lost_200], &every_2m);
    assert_eq!(t.lost.len(), 2, "{:?}", t.lost);
    assert_eq!(t.double.len(), 3, "{:?}", t.double);
    assert_eq!(t.annotation_problems, 2);
}

#[test]
fn a_child_that_exited_is_told_from_one_that_runs() {
    let mut running = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .expect("sleep");
    let mut done = std::process::Command::new("true").spawn().expect("true");
    assert!(!exited(running.id()));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !exited(done.id()) {
        assert!(Instant::now() < deadline, "`true` has not exited");
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = done.wait();
    assert!(exited(done.id()), "reaped: gone");
    let _ = running.kill();
    let _ = running.wait();
}
