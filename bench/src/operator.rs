//! The release operator as a child process, its admin endpoints, and what /proc says about it.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::cluster::ControlPlane;

pub struct Operator {
    child: Child,
    pub name: String,
    pub api_port: u16,
    pub admin_port: u16,
    pub log: PathBuf,
    http: reqwest::Client,
}

/// Rate limits far above anything the bench sends: the bench measures the operator, not them.
const UNLIMITED: &[&str] = &[
    "--rate-limit-per-caller",
    "1000000",
    "--rate-limit-per-caller-burst",
    "1000000",
    "--rate-limit-global",
    "1000000",
    "--rate-limit-global-burst",
    "1000000",
];

impl Operator {
    /// Starts `binary run` watching `ns`, on free loopback ports, with `RUST_LOG=warn`.
    pub fn start(
        cp: &ControlPlane,
        binary: &Path,
        name: &str,
        ns: &str,
        hash: &[String],
        extra: &[&str],
    ) -> anyhow::Result<Operator> {
        let api_port = free_port()?;
        let admin_port = free_port()?;
        // BENCH_LOG_DIR keeps the operators' logs (the control plane's directory is removed).
        let log = std::env::var_os("BENCH_LOG_DIR")
            .map_or_else(|| cp.dir.clone(), PathBuf::from)
            .join(format!("operator-{name}.log"));
        let log_file = std::fs::File::create(&log)?;
        let child = Command::new(binary)
            .arg("run")
            .args(["--watch-namespaces", ns])
            .args(["--api-addr", &format!("127.0.0.1:{api_port}")])
            .args(["--admin-addr", &format!("127.0.0.1:{admin_port}")])
            .args(UNLIMITED)
            .args(hash)
            .args(extra)
            .env("KUBECONFIG", &cp.kubeconfig)
            .env(
                "RUST_LOG",
                std::env::var("BENCH_OPERATOR_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .env("HOSTNAME", format!("bench-{name}"))
            .env_remove("OAUTHAPP_FAILPOINT")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        cp.adopt(child.id());
        Ok(Operator {
            child,
            name: name.into(),
            api_port,
            admin_port,
            log,
            http: reqwest::Client::new(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin_port)
    }

    /// Waits until /readyz answers 200 (the watches have listed everything).
    pub async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(r) = self.http.get(self.admin_url("/readyz")).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                bail!(
                    "operator {} exited ({status}); see {}",
                    self.name,
                    self.log.display()
                );
            }
            if Instant::now() > deadline {
                bail!("operator {} not ready after {timeout:?}", self.name);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The Prometheus text exposition.
    pub async fn metrics(&self) -> anyhow::Result<Metrics> {
        let text = self
            .http
            .get(self.admin_url("/metrics"))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        Ok(Metrics(text))
    }

    /// Sends SIGTERM and waits for the exit (SIGKILL after `timeout`).
    pub fn stop(&mut self, timeout: Duration) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One scrape of /metrics.
pub struct Metrics(String);

impl Metrics {
    /// The value of the sample named exactly `series` (`name` or `name{labels}`), if present.
    pub fn get(&self, series: &str) -> Option<f64> {
        self.0.lines().find_map(|line| {
            let rest = line.strip_prefix(series)?;
            rest.strip_prefix(' ')?.trim().parse().ok()
        })
    }

    pub fn value(&self, series: &str) -> f64 {
        self.get(series).unwrap_or(0.0)
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// CPU time (user + system) a process has used, in seconds.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15.
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// A `Vm*` line of /proc/PID/status (e.g. `VmHWM`, `VmRSS`), in MiB.
pub fn vm_mib(pid: u32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        let kib: f64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kib / 1024.0)
    })
}
