//! The shared fixture: one real control plane per test run, a fresh namespace per test, clients
//! acting as admin or as a ServiceAccount with a real TokenRequest token, and operator processes.
//!
//! Nothing is left running when the run ends, however it ends: the control plane's watchdog
//! (tests/controlplane/up.sh --owner-pid) stops it, and the operator processes this fixture starts,
//! as soon as this test process is gone — after a panic, an interrupt or a SIGKILL alike.

#![allow(dead_code)]

use std::{
    fs,
    future::Future,
    io::Write,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use kube::{
    Client, Config,
    config::{KubeConfigOptions, Kubeconfig},
};

/// The repo root (where Cargo.toml is).
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub struct ControlPlane {
    pub dir: PathBuf,
    pub kubeconfig: PathBuf,
    pub bin_dir: PathBuf,
}

static CONTROL_PLANE: OnceLock<ControlPlane> = OnceLock::new();

/// The control plane of this test run, started on first use (and the OAuthApp CRD installed).
pub fn control_plane() -> &'static ControlPlane {
    CONTROL_PLANE.get_or_init(|| {
        start_control_plane(std::env::temp_dir().join(format!("oauthapp-it-{}", std::process::id())))
    })
}

/// A control plane of one test's own, for tests that disrupt it (restarting kube-apiserver).
/// Stopped when dropped (and by the watchdog if the run dies first).
pub struct PrivateControlPlane(pub ControlPlane);

impl PrivateControlPlane {
    pub fn start(name: &str) -> PrivateControlPlane {
        Self::start_with(name, &[])
    }

    /// Like [`PrivateControlPlane::start`], with more `up.sh` flags (e.g. `--audit`).
    pub fn start_with(name: &str, flags: &[&str]) -> PrivateControlPlane {
        let dir = std::env::temp_dir().join(format!("oauthapp-it-{}-{name}", std::process::id()));
        PrivateControlPlane(start_control_plane_with(dir, flags))
    }
}

impl Drop for PrivateControlPlane {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("tests/controlplane/down.sh"))
            .arg("--dir")
            .arg(&self.0.dir)
            .arg("--purge")
            .stderr(Stdio::null())
            .status();
    }
}

fn start_control_plane(dir: PathBuf) -> ControlPlane {
    start_control_plane_with(dir, &[])
}

fn start_control_plane_with(dir: PathBuf, flags: &[&str]) -> ControlPlane {
    // One start at a time: up.sh picks free ports by binding and releasing them, so two starts
    // at once can pick the same port (seen: "bind: address already in use").
    static STARTING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = STARTING.lock().unwrap_or_else(|e| e.into_inner());
    let out = Command::new(repo().join("tests/controlplane/up.sh"))
        .args(flags)
        .arg("--dir")
        .arg(&dir)
        .arg("--owner-pid")
        .arg(std::process::id().to_string())
        .stderr(Stdio::inherit())
        .output()
        .expect("run tests/controlplane/up.sh");
    assert!(
        out.status.success(),
        "tests/controlplane/up.sh failed: {}",
        out.status
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut kubeconfig = None;
    let mut bin_dir = None;
    for line in stdout.lines() {
        if let Some(v) = line.strip_prefix("export KUBECONFIG=") {
            kubeconfig = Some(PathBuf::from(v));
        } else if let Some(v) = line.strip_prefix("export PATH=") {
            bin_dir = Some(PathBuf::from(v.trim_end_matches(":$PATH")));
        }
    }
    let cp = ControlPlane {
        dir,
        kubeconfig: kubeconfig.expect("up.sh printed KUBECONFIG"),
        bin_dir: bin_dir.expect("up.sh printed PATH"),
    };
    // Both CRDs: the OAuthProvider one too (src/provider), which every operator watches.
    for crd in [
        "crds/oauthapps.oauthapp.io.yaml",
        "crds/oauthproviders.oauthapp.io.yaml",
    ] {
        let crd = repo().join(crd);
        let applied = cp.kubectl(&["apply", "--server-side", "-f", crd.to_str().expect("utf-8 path")]);
        assert!(applied.status.success(), "apply CRD: {}", stderr(&applied));
    }
    // kubectl wait fails at once, instead of waiting, while the CRD has no conditions yet.
    let deadline = Instant::now() + Duration::from_secs(60);
    let established = loop {
        let out = cp.kubectl(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/oauthapps.oauthapp.io",
            "crd/oauthproviders.oauthapp.io",
        ]);
        if out.status.success() || !stderr(&out).contains("accessor error") || Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        established.status.success(),
        "CRD not established: {}",
        stderr(&established)
    );
    cp
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl ControlPlane {
    /// A pinned binary (kubectl, helm, ...) from the control plane's bin directory.
    pub fn bin(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }

    /// Runs kubectl as admin.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_as(&self.kubeconfig, args)
    }

    /// Runs kubectl with the given kubeconfig.
    pub fn kubectl_as(&self, kubeconfig: &Path, args: &[&str]) -> Output {
        Command::new(self.bin("kubectl"))
            .env("KUBECONFIG", kubeconfig)
            .args(args)
            .output()
            .expect("run kubectl")
    }

    /// Runs kubectl as admin and panics with its stderr when it fails.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(out.status.success(), "kubectl {args:?} failed: {}", stderr(&out));
        stdout(&out)
    }

    /// Runs the pinned helm against this control plane, from the repo root, with its own config
    /// and cache directories (nothing from the developer's ~/.config/helm leaks in).
    pub fn helm(&self, args: &[&str]) -> Output {
        let home = self.dir.join("helm");
        Command::new(self.bin("helm"))
            .current_dir(repo())
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_DATA_HOME", home.join("data"))
            .args(args)
            .output()
            .expect("run helm")
    }

    /// `kubectl apply -n ns -f` of `manifest` (written to a temporary file), as admin.
    pub fn apply(&self, ns: &str, manifest: &str) -> Output {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("manifest.yaml");
        fs::write(&file, manifest).expect("write manifest");
        self.kubectl(&["apply", "-n", ns, "-f", file.to_str().expect("utf-8")])
    }

    /// [`ControlPlane::apply`], panicking with kubectl's stderr when it fails.
    pub fn apply_ok(&self, ns: &str, manifest: &str) {
        let out = self.apply(ns, manifest);
        assert!(out.status.success(), "kubectl apply failed: {}", stderr(&out));
    }

    /// Stops (`stop`) or starts again (`start`) this control plane's kube-apiserver.
    pub fn apiserver(&self, action: &str) {
        self.component("kube-apiserver", action);
    }

    /// Kills (`stop`, kill -9) or starts again (`start`) one of this control plane's processes
    /// (`kube-apiserver`, `etcd`) with the same port, flags and data
    /// (tests/controlplane/component.sh).
    pub fn component(&self, name: &str, action: &str) {
        let status = Command::new(repo().join("tests/controlplane/component.sh"))
            .args([name, action])
            .arg("--dir")
            .arg(&self.dir)
            .status()
            .expect("run component.sh");
        assert!(status.success(), "component.sh {name} {action} failed");
    }

    /// Creates a namespace for one test on this control plane.
    pub fn namespace(&self, name: &str) -> String {
        self.kubectl_ok(&["create", "namespace", name]);
        name.to_string()
    }

    /// Records the PID of a process this fixture started, so the watchdog stops it too.
    pub fn adopt(&self, pid: u32) {
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("extra.pids"))
            .expect("open extra.pids");
        writeln!(f, "{pid}").expect("write extra.pids");
    }
}

/// A kube client acting as cluster admin.
pub async fn admin_client() -> Client {
    client_from(&control_plane().kubeconfig).await
}

pub async fn client_from(kubeconfig: &Path) -> Client {
    let kc = Kubeconfig::read_from(kubeconfig).expect("read kubeconfig");
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig to config");
    Client::try_from(config).expect("client")
}

/// A fresh namespace for one test, named after it.
pub fn namespace(test: &str) -> String {
    let suffix: u32 = rand_suffix();
    let mut name: String = test
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    name.truncate(40);
    let name = format!("{}-{suffix:06x}", name.trim_matches('-'));
    control_plane().kubectl_ok(&["create", "namespace", &name]);
    name
}

fn rand_suffix() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    (h.finish() & 0xff_ffff) as u32
}

/// Creates ServiceAccount `sa` in `ns` (if missing), requests a token for it with the
/// TokenRequest API (`kubectl create token`) and writes a kubeconfig that uses it.
pub fn service_account_kubeconfig(ns: &str, sa: &str) -> PathBuf {
    service_account_kubeconfig_on(control_plane(), ns, sa)
}

/// [`service_account_kubeconfig`] on a given control plane.
pub fn service_account_kubeconfig_on(cp: &ControlPlane, ns: &str, sa: &str) -> PathBuf {
    let exists = cp.kubectl(&["get", "serviceaccount", sa, "-n", ns]);
    if !exists.status.success() {
        cp.kubectl_ok(&["create", "serviceaccount", sa, "-n", ns]);
    }
    let token = cp
        .kubectl_ok(&["create", "token", sa, "-n", ns, "--duration=1h"])
        .trim()
        .to_string();
    let server = cp.kubectl_ok(&[
        "config",
        "view",
        "--minify",
        "-o",
        "jsonpath={.clusters[0].cluster.server}",
    ]);
    let ca = cp.kubectl_ok(&[
        "config",
        "view",
        "--raw",
        "--minify",
        "-o",
        "jsonpath={.clusters[0].cluster.certificate-authority-data}",
    ]);
    let path = cp.dir.join(format!("sa-{ns}-{sa}.kubeconfig"));
    let config = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: {sa}\n  user:\n    token: {token}\ncontexts:\n- name: c\n  context: {{cluster: c, user: {sa}, namespace: {ns}}}\ncurrent-context: c\n"
    );
    fs::write(&path, config).expect("write SA kubeconfig");
    path
}

/// A fresh token for ServiceAccount `sa` in `ns`, from the TokenRequest API.
pub fn service_account_token(ns: &str, sa: &str) -> String {
    control_plane()
        .kubectl_ok(&["create", "token", sa, "-n", ns, "--duration=1h"])
        .trim()
        .to_string()
}

/// A kube client acting as ServiceAccount `sa` in `ns`.
pub async fn service_account_client(ns: &str, sa: &str) -> Client {
    client_from(&service_account_kubeconfig(ns, sa)).await
}

/// Polls `check` until it returns Some, and returns that; panics after `timeout` with `what`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A free TCP port on loopback, for a process to bind soon after. It is taken below the
/// kernel's ephemeral range (`ip_local_port_range`, 32768 and up by default): a port from that
/// range can be taken meanwhile by any outgoing connection (seen: an operator failing to bind
/// its admin port while the tests' clients connected to the API server). Each call of this
/// process moves on to the next port, so two of its callers never get the same one.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const COUNT: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    // Runs started one after the other begin at different places.
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7919) % COUNT,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..COUNT {
        let port = (FIRST + NEXT.fetch_add(1, Ordering::SeqCst) % COUNT) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {FIRST}..{}", FIRST + COUNT)
}

/// An operator process (`oauthapp-operator run`) for one test; killed when dropped.
pub struct Operator {
    child: Child,
    pub api_port: u16,
    pub admin_port: u16,
    pub log: PathBuf,
}

impl Operator {
    /// Starts the operator binary with `kubeconfig`, watching only `ns`, with extra args and env.
    pub fn start(kubeconfig: &Path, ns: &str, args: &[&str], env: &[(&str, &str)]) -> Operator {
        Self::start_on(control_plane(), kubeconfig, ns, args, env)
    }

    /// Like [`Operator::start`], on a given control plane.
    pub fn start_on(
        cp: &ControlPlane,
        kubeconfig: &Path,
        ns: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Operator {
        let binary = Path::new(env!("CARGO_BIN_EXE_oauthapp-operator"));
        Self::start_binary(cp, binary, kubeconfig, ns, args, env)
    }

    /// Like [`Operator::start_on`], with another build of the operator (an earlier version).
    /// `ns` is the namespaces to watch, comma-separated; empty: every namespace.
    pub fn start_binary(
        cp: &ControlPlane,
        binary: &Path,
        kubeconfig: &Path,
        ns: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Operator {
        let api_port = free_port();
        let admin_port = free_port();
        let log = cp.dir.join(format!("operator-{ns}-{api_port}.log"));
        let log_file = fs::File::create(&log).expect("create operator log");
        let mut cmd = Command::new(binary);
        cmd.arg("run");
        // No namespace: every namespace, as the chart installs it.
        if !ns.is_empty() {
            cmd.arg("--watch-namespaces").arg(ns);
        }
        cmd.arg("--api-addr")
            .arg(format!("127.0.0.1:{api_port}"))
            .arg("--admin-addr")
            .arg(format!("127.0.0.1:{admin_port}"))
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info,oauthapp_operator=debug")
            .env_remove("OAUTHAPP_FAILPOINT")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("clone log handle"))
            .stderr(log_file);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start oauthapp-operator");
        cp.adopt(child.id());
        Operator {
            child,
            api_port,
            admin_port,
            log,
        }
    }

    /// Sends SIGKILL and waits for the process to be gone.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits (bounded) for the process to exit; returns its exit status.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        self.wait_exit(timeout)
    }

    /// Waits (bounded) for the process to exit by itself; its exit status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Whether the process has not exited.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the operator has logged so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The Prometheus text exposition from the admin server, or None while it does not answer.
    pub async fn metrics(&self) -> Option<String> {
        http_get(self.admin_port, "/metrics").await
    }

    /// The value of one sample line (`name{labels}`) in /metrics, summed when it appears many times.
    pub async fn metric(&self, prefix: &str) -> Option<f64> {
        let text = self.metrics().await?;
        let mut sum = None;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix(prefix)
                && (rest.starts_with(' ') || rest.starts_with('{'))
            {
                let v: f64 = rest.rsplit(' ').next()?.parse().ok()?;
                sum = Some(sum.unwrap_or(0.0) + v);
            }
        }
        sum
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            // The test failed: show what the operator was doing (the run's files are removed).
            let log = self.log_text();
            let tail: Vec<_> = log.lines().rev().take(60).collect();
            eprintln!("---- operator log ({}), last lines ----", self.log.display());
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// A plain HTTP/1.1 GET on loopback with a bearer token: the status code and the body.
pub async fn http_get_with_token(port: u16, path: &str, token: &str) -> Option<(u16, String)> {
    http_request(port, "GET", path, token).await
}

/// A plain HTTP/1.1 request (no body) on loopback with a bearer token: status code and body.
pub async fn http_request(port: u16, method: &str, path: &str, token: &str) -> Option<(u16, String)> {
    http_request_with_body(port, method, path, token, None).await
}

/// A plain HTTP/1.1 request on loopback with a bearer token and, if given, a JSON body: status
/// code and body.
pub async fn http_request_with_body(
    port: u16,
    method: &str,
    path: &str,
    token: &str,
    json: Option<&str>,
) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    let body = json.unwrap_or_default();
    let content_type = if json.is_some() {
        "Content-Type: application/json\r\n"
    } else {
        ""
    };
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n{content_type}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(request.as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let code = head.split(' ').nth(1)?.parse().ok()?;
    Some((code, body.to_string()))
}

/// A plain HTTP/1.1 GET on loopback; the body when the answer is 200.
pub async fn http_get(port: u16, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.1 200") {
        return None;
    }
    Some(body.to_string())
}

/// Every Event about the object `name` in `ns` (events.k8s.io/v1), as (type, reason, note).
pub async fn events_about(client: &Client, ns: &str, name: &str) -> Vec<(String, String, String)> {
    let events: kube::Api<k8s_openapi::api::events::v1::Event> = kube::Api::namespaced(client.clone(), ns);
    events
        .list(&kube::api::ListParams::default())
        .await
        .expect("list events")
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .map(|e| {
            (
                e.type_.unwrap_or_default(),
                e.reason.unwrap_or_default(),
                e.note.unwrap_or_default(),
            )
        })
        .collect()
}

/// Whether `secret` verifies against the PHC string `hash` by an argon2 implementation
/// independent of the operator's crate (argon2-cffi: `tests/tools/argon2-verify.sh`).
pub fn independently_verifies(hash: &str, secret: &str) -> bool {
    use std::io::Write as _;
    let mut child = Command::new(repo().join("tests/tools/argon2-verify.sh"))
        .arg(hash)
        .stdin(Stdio::piped())
        .spawn()
        .expect("run tests/tools/argon2-verify.sh");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(secret.as_bytes())
        .expect("write the secret");
    let status = child.wait().expect("argon2-verify.sh");
    match status.code() {
        Some(0) => true,
        Some(1) => false,
        other => panic!("argon2-verify.sh failed: {other:?}"),
    }
}

/// The holder identity of the leader-election Lease `oauthapp-operator` in `ns`.
pub fn lease_holder(cp: &ControlPlane, ns: &str) -> String {
    cp.kubectl_ok(&[
        "get",
        "lease",
        "oauthapp-operator",
        "-n",
        ns,
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ])
}

/// One request as the audit log of a control plane started with `--audit` shows it.
#[derive(Debug)]
pub struct AuditRequest {
    pub user_agent: String,
    pub verb: String,
    pub resource: String,
    pub namespace: String,
    pub code: i64,
    pub stage: String,
    pub received: jiff::Timestamp,
    /// When this stage was logged.
    pub at: jiff::Timestamp,
}

pub fn audit_requests(cp: &ControlPlane, user: &str) -> Vec<AuditRequest> {
    let text = std::fs::read_to_string(cp.dir.join("logs/audit.log")).unwrap_or_default();
    text.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|e| e["user"]["username"].as_str() == Some(user))
        .filter_map(|e| {
            Some(AuditRequest {
                user_agent: e["userAgent"].as_str().unwrap_or("").to_string(),
                verb: e["verb"].as_str()?.to_string(),
                resource: e["objectRef"]["resource"].as_str().unwrap_or("").to_string(),
                namespace: e["objectRef"]["namespace"].as_str().unwrap_or("").to_string(),
                code: e["responseStatus"]["code"].as_i64().unwrap_or(0),
                stage: e["stage"].as_str()?.to_string(),
                received: e["requestReceivedTimestamp"].as_str()?.parse().ok()?,
                at: e["stageTimestamp"].as_str()?.parse().ok()?,
            })
        })
        .collect()
}
