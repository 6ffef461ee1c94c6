//! The bench's own control plane (tests/controlplane/up.sh in a temporary directory, stopped by
//! its watchdog when this process is gone however it ends), kubectl, and the objects every phase
//! needs: the CRD, namespaces, a ServiceAccount allowed to rotate, its token.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

pub struct ControlPlane {
    pub dir: PathBuf,
    pub kubeconfig: PathBuf,
    pub bin_dir: PathBuf,
    repo: PathBuf,
}

impl ControlPlane {
    /// Starts a control plane in a fresh temporary directory and installs the OAuthApp CRD.
    pub fn up(repo: &Path) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("oauthapp-bench-{}", std::process::id()));
        let out = Command::new(repo.join("tests/controlplane/up.sh"))
            .arg("--dir")
            .arg(&dir)
            .arg("--owner-pid")
            .arg(std::process::id().to_string())
            .stderr(Stdio::inherit())
            .output()
            .context("running tests/controlplane/up.sh")?;
        // From here on, Drop stops whatever was started.
        let mut cp = ControlPlane {
            dir,
            kubeconfig: PathBuf::new(),
            bin_dir: PathBuf::new(),
            repo: repo.to_path_buf(),
        };
        if !out.status.success() {
            bail!("tests/controlplane/up.sh failed: {}", out.status);
        }
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some(v) = line.strip_prefix("export KUBECONFIG=") {
                cp.kubeconfig = PathBuf::from(v);
            } else if let Some(v) = line.strip_prefix("export PATH=") {
                cp.bin_dir = PathBuf::from(v.trim_end_matches(":$PATH"));
            }
        }
        if cp.kubeconfig.as_os_str().is_empty() || cp.bin_dir.as_os_str().is_empty() {
            bail!("up.sh did not print KUBECONFIG and PATH");
        }
        let crd = repo.join("crds/oauthapps.oauthapp.io.yaml");
        cp.kubectl(&["apply", "--server-side", "-f", &crd.to_string_lossy()])?;
        cp.kubectl(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/oauthapps.oauthapp.io",
        ])?;
        Ok(cp)
    }

    /// Runs kubectl as admin; its stdout, or an error with its stderr.
    pub fn kubectl(&self, args: &[&str]) -> anyhow::Result<String> {
        self.kubectl_stdin(args, None)
    }

    pub fn kubectl_stdin(&self, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
        let mut child = Command::new(self.bin_dir.join("kubectl"))
            .env("KUBECONFIG", &self.kubeconfig)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting kubectl")?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(input.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "kubectl {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// An admin kube client.
    pub async fn client(&self) -> anyhow::Result<Client> {
        let kc = Kubeconfig::read_from(&self.kubeconfig)?;
        let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
        Ok(Client::try_from(config)?)
    }

    /// A namespace with ServiceAccount `bench`, allowed everything on oauthapps (rotate and
    /// verify included: `create oauthapps/verify` is what the chart's `oauthapp-verifier` role
    /// grants), and a token for it (TokenRequest, 2 h).
    pub fn namespace_with_caller(&self, ns: &str) -> anyhow::Result<String> {
        self.kubectl(&["create", "namespace", ns])?;
        self.kubectl_stdin(
            &["apply", "-f", "-"],
            Some(&format!(
                r#"apiVersion: v1
kind: ServiceAccount
metadata: {{name: bench, namespace: {ns}}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: bench-rotator, namespace: {ns}}}
rules:
- apiGroups: [oauthapp.io]
  resources: [oauthapps, oauthapps/rotate, oauthapps/verify]
  verbs: [get, list, watch, create, update, patch, delete]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: bench-rotator, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: bench-rotator}}
subjects: [{{kind: ServiceAccount, name: bench, namespace: {ns}}}]
"#
            )),
        )?;
        Ok(self
            .kubectl(&["create", "token", "bench", "-n", ns, "--duration=2h"])?
            .trim()
            .to_string())
    }

    /// Records the PID of a process the bench started, so the watchdog stops it too.
    pub fn adopt(&self, pid: u32) {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("extra.pids"))
        {
            let _ = writeln!(f, "{pid}");
        }
    }

    /// The PID of a control-plane process (`kube-apiserver`, `etcd`), from up.sh's records.
    pub fn pid_of(&self, name: &str) -> Option<u32> {
        std::fs::read_to_string(self.dir.join(format!("{name}.pid")))
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = Command::new(self.repo.join("tests/controlplane/down.sh"))
            .arg("--dir")
            .arg(&self.dir)
            .arg("--purge")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
