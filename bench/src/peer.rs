//! The peer: mittwald's kubernetes-secret-generator, built by `bench/peer.sh` (pinned, cached
//! outside the repo) and run out of cluster as a child process on the bench's control plane.
//! It regenerates a Secret's generated keys when the Secret is annotated
//! `secret-generator.v1.mittwald.de/regenerate`, and does no hashing.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::cluster::ControlPlane;

/// Asks for a generated `password` key.
pub const AUTOGENERATE: &str = "secret-generator.v1.mittwald.de/autogenerate";
/// Asks for the generated keys to be generated again; the peer removes it when done.
pub const REGENERATE: &str = "secret-generator.v1.mittwald.de/regenerate";
/// The key the peer generates.
pub const KEY: &str = "password";

/// Builds the peer (or finds it cached); `None`, with the script's line on stderr, when its
/// source is absent.
pub fn build(repo: &Path) -> anyhow::Result<Option<PathBuf>> {
    let out = Command::new(repo.join("bench/peer.sh"))
        .stderr(Stdio::inherit())
        .output()
        .context("running bench/peer.sh")?;
    if !out.status.success() {
        bail!("bench/peer.sh failed: {}", out.status);
    }
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    Ok((!path.is_empty()).then(|| PathBuf::from(path)))
}

pub struct Peer {
    child: Child,
    pub log: PathBuf,
}

impl Peer {
    /// Starts the peer watching `ns`, its metrics and health listeners off (the patch's
    /// environment variables), with the admin kubeconfig.
    pub fn start(cp: &ControlPlane, binary: &Path, name: &str, ns: &str) -> anyhow::Result<Peer> {
        let log = std::env::var_os("BENCH_LOG_DIR")
            .map_or_else(|| cp.dir.clone(), PathBuf::from)
            .join(format!("peer-{name}.log"));
        let log_file = std::fs::File::create(&log)?;
        let child = Command::new(binary)
            .arg("--kubeconfig")
            .arg(&cp.kubeconfig)
            .arg("--disable-crd-support")
            .args(["--zap-level", "error"])
            .env("WATCH_NAMESPACE", ns)
            .env("METRICS_BIND_ADDRESS", "0")
            .env("HEALTH_PROBE_BIND_ADDRESS", "0")
            .env("KUBECONFIG", &cp.kubeconfig)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        cp.adopt(child.id());
        Ok(Peer { child, log })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails if the peer has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Ok(Some(status)) = self.child.try_wait() {
            bail!("the peer exited ({status}); see {}", self.log.display());
        }
        Ok(())
    }

    /// Sends SIGTERM and waits for the exit (SIGKILL after `timeout`).
    pub fn stop(&mut self, timeout: Duration) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
