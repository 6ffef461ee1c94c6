//! `oauthapp-operator`: CLI, telemetry and wiring. Everything else lives in the library.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use futures::FutureExt;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use oauthapp_operator::admin::{self, AdminState};
use oauthapp_operator::context::Context;
use oauthapp_operator::controller::{self, Caches, Settings};
use oauthapp_operator::hasher::Hasher;
use oauthapp_operator::metrics::Metrics;
use oauthapp_operator::secret::HashParams;

#[derive(Parser)]
#[command(
    name = "oauthapp-operator",
    version,
    about = "Owns the client secrets of OAuth applications"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the operator: the controller, the REST API and the admin server.
    Run(Box<RunArgs>),
    /// Print the OAuthApp CustomResourceDefinition (YAML).
    Crd,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Namespaces to watch (comma-separated); empty: all namespaces.
    #[arg(long, env = "OAUTHAPP_WATCH_NAMESPACES", value_delimiter = ',')]
    watch_namespaces: Vec<String>,
    /// Address of the REST API.
    #[arg(long, env = "OAUTHAPP_API_ADDR", default_value = "0.0.0.0:8080")]
    api_addr: SocketAddr,
    /// Address of the admin server (/healthz, /readyz, /metrics).
    #[arg(long, env = "OAUTHAPP_ADMIN_ADDR", default_value = "0.0.0.0:9090")]
    admin_addr: SocketAddr,
    /// Look at every app again after this long, even without a change (e.g. 10m, 30s).
    #[arg(long, env = "OAUTHAPP_RESYNC_INTERVAL", default_value = "10m", value_parser = parse_duration)]
    resync_interval: Duration,
    /// Apps reconciled at the same time.
    #[arg(long, env = "OAUTHAPP_CONCURRENCY", default_value_t = 16)]
    concurrency: u16,
    /// argon2id memory cost in KiB for new hashes.
    #[arg(long, env = "OAUTHAPP_HASH_MEMORY_KIB", default_value_t = HashParams::default().m_cost_kib)]
    hash_memory_kib: u32,
    /// argon2id iterations for new hashes.
    #[arg(long, env = "OAUTHAPP_HASH_ITERATIONS", default_value_t = HashParams::default().t_cost)]
    hash_iterations: u32,
    /// argon2id lanes for new hashes.
    #[arg(long, env = "OAUTHAPP_HASH_PARALLELISM", default_value_t = HashParams::default().p_cost)]
    hash_parallelism: u32,
    /// Hashes computed at the same time (default: the number of CPUs).
    #[arg(long, env = "OAUTHAPP_HASH_WORKERS")]
    hash_workers: Option<usize>,
    /// Log format.
    #[arg(long, env = "OAUTHAPP_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    /// How long SIGTERM waits for in-flight work before exiting.
    #[arg(long, env = "OAUTHAPP_SHUTDOWN_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    shutdown_timeout: Duration,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    oauthapp_operator::controller::plan::parse_interval(s)
        .and_then(|d| Duration::try_from(d).ok())
        .ok_or_else(|| format!("`{s}` is not a duration like 30s, 10m or 1h30m"))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => {
            print!("{}", oauthapp_operator::crd::crd_yaml()?);
            Ok(())
        }
        Command::Run(args) => {
            init_tracing(args.log_format);
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(run(*args))
        }
    }
}

fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let client = kube::Client::try_default()
        .await
        .context("no Kubernetes configuration found (in-cluster or KUBECONFIG)")?;
    let params = HashParams {
        m_cost_kib: args.hash_memory_kib,
        t_cost: args.hash_iterations,
        p_cost: args.hash_parallelism,
    };
    // Refuse bad hash parameters at start, not at the first rotation.
    oauthapp_operator::secret::hash("oas_startup_check", &params).context("invalid argon2 parameters")?;
    let workers = args
        .hash_workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let metrics = Arc::new(Metrics::new());
    let instance = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| format!("pid-{}", std::process::id()));
    let ctx = Arc::new(Context::new(
        client,
        Hasher::new(params, workers),
        metrics.clone(),
        instance,
    ));

    let shutdown = CancellationToken::new();
    let ready = Arc::new(AtomicBool::new(false));
    tokio::spawn(watch_signals(shutdown.clone()));

    let admin_listener = tokio::net::TcpListener::bind(args.admin_addr)
        .await
        .with_context(|| format!("binding the admin server to {}", args.admin_addr))?;
    info!(addr = %args.admin_addr, "admin server listening");
    let admin = axum::serve(
        admin_listener,
        admin::router(AdminState {
            metrics,
            ready: ready.clone(),
        }),
    )
    .with_graceful_shutdown(shutdown.clone().cancelled_owned());

    let settings = Settings {
        namespaces: args.watch_namespaces.clone(),
        resync: args.resync_interval,
        concurrency: args.concurrency,
    };
    let stop = shutdown.clone().cancelled_owned().shared();
    let (caches, controller): (Vec<Caches>, _) = controller::build(ctx.clone(), settings, stop);
    let readiness = {
        let ready = ready.clone();
        let caches = caches.clone();
        async move {
            for c in &caches {
                c.wait_until_ready().await;
            }
            ready.store(true, Ordering::Release);
            info!("watches synced; ready");
        }
    };
    tokio::spawn(readiness);
    let admin = tokio::spawn(async move { admin.await });

    controller.await;
    shutdown.cancel();
    match tokio::time::timeout(args.shutdown_timeout, admin).await {
        Ok(_) => info!("stopped"),
        Err(_) => warn!("admin server did not stop within {:?}", args.shutdown_timeout),
    }
    Ok(())
}

async fn watch_signals(shutdown: CancellationToken) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cannot listen for SIGTERM");
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => info!("SIGINT: shutting down"),
    }
    shutdown.cancel();
}
