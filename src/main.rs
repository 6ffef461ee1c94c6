//! `oauthapp-operator`: CLI, telemetry and wiring. Everything else lives in the library.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use oauthapp_operator::api::{self, ApiConfig, ApiState};
use oauthapp_operator::controller::{self, Settings};
use oauthapp_operator::model::secret::HashParams;
use oauthapp_operator::runtime::admin::{self, AdminState};
use oauthapp_operator::runtime::context::Context;
use oauthapp_operator::runtime::hasher::Hasher;
use oauthapp_operator::runtime::leader;
use oauthapp_operator::runtime::metrics::Metrics;
use oauthapp_operator::runtime::watches::Watches;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Print a CustomResourceDefinition (YAML): OAuthApp's, or the one named.
    Crd {
        /// Which CRD (default: oauthapps).
        #[arg(value_enum, default_value = "oauthapps")]
        name: CrdName,
    },
    /// Print the REST API's OpenAPI document (JSON).
    Openapi,
}

#[derive(Clone, Copy, ValueEnum)]
enum CrdName {
    Oauthapps,
    Oauthproviders,
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
    /// Of those, at most this many of one namespace (default: half of --concurrency), so that
    /// a namespace with a storm of changes leaves the other slots to other namespaces. Watching
    /// a single namespace, it is --concurrency.
    #[arg(long, env = "OAUTHAPP_NAMESPACE_CONCURRENCY")]
    namespace_concurrency: Option<u16>,
    /// argon2id memory cost in KiB for new hashes.
    #[arg(long, env = "OAUTHAPP_HASH_MEMORY_KIB", default_value_t = HashParams::default().m_cost_kib)]
    hash_memory_kib: u32,
    /// argon2id iterations for new hashes.
    #[arg(long, env = "OAUTHAPP_HASH_ITERATIONS", default_value_t = HashParams::default().t_cost)]
    hash_iterations: u32,
    /// argon2id lanes for new hashes.
    #[arg(long, env = "OAUTHAPP_HASH_PARALLELISM", default_value_t = HashParams::default().p_cost)]
    hash_parallelism: u32,
    /// argon2id parameters of an earlier configuration whose hashes keep verifying, as
    /// `m=KIB,t=ITERATIONS,p=LANES`, several separated by `;`. New hashes use the parameters
    /// above; an app's hash moves to them at its next rotation. A hash with parameters neither
    /// here nor above is drift, and is never computed.
    #[arg(long, env = "OAUTHAPP_HASH_ACCEPT_PARAMS", value_delimiter = ';', value_parser = oauthapp_operator::model::secret::parse_params)]
    hash_accept_params: Vec<HashParams>,
    /// Hashes computed at the same time (default: the number of CPUs).
    #[arg(long, env = "OAUTHAPP_HASH_WORKERS")]
    hash_workers: Option<usize>,
    /// Ready (secret, hash) pairs kept in memory, computed ahead when the hash workers are idle
    /// (with two workers or more, by a thread at idle CPU priority, SCHED_IDLE), so that a
    /// rotation need not hash on its request's path (0: none). The plaintexts are never written
    /// anywhere and are zeroized when dropped.
    #[arg(long, env = "OAUTHAPP_HASH_POOL", default_value_t = oauthapp_operator::runtime::hasher::DEFAULT_POOL)]
    hash_pool: usize,
    /// Repairs (a Secret gone or altered: SecretMissing, SecretDrift) started per second at
    /// most, in turn: never all at once.
    #[arg(long, env = "OAUTHAPP_MAX_REPAIRS_PER_SECOND", default_value_t = oauthapp_operator::runtime::context::DEFAULT_REPAIRS_PER_SECOND, value_parser = parse_rate)]
    max_repairs_per_second: f64,
    /// The brake on mass repair: once more than this share of the apps were repaired within
    /// `--repair-brake-window` (and at least `--repair-brake-min`), further repairs are held
    /// until a person releases them (a new value of the annotation oauthapp.io/release-repairs
    /// on the record key Secret).
    #[arg(long, env = "OAUTHAPP_REPAIR_BRAKE_SHARE", default_value_t = 0.1)]
    repair_brake_share: f64,
    /// Repairs within the window that never engage the brake, whatever the share.
    #[arg(long, env = "OAUTHAPP_REPAIR_BRAKE_MIN", default_value_t = 5)]
    repair_brake_min: usize,
    /// The brake's window.
    #[arg(long, env = "OAUTHAPP_REPAIR_BRAKE_WINDOW", default_value = "5m", value_parser = parse_duration)]
    repair_brake_window: Duration,
    /// Verify answers 503 (retry) instead of from its cache once the operator's view of the
    /// apps may be older than this: their watch has failed (the API server unreachable from
    /// this replica) and not shown a change or completed a relist since. A failed watch is
    /// started afresh every 5 s. A watch that stalls without an error is ended by the API
    /// server's watch timeout (about 5 minutes) and counts from there.
    #[arg(long, env = "OAUTHAPP_VERIFY_MAX_STALENESS", default_value = "60s", value_parser = parse_duration)]
    verify_max_staleness: Duration,
    /// Read the initial state of the watches as a stream of events (the WatchList feature,
    /// Kubernetes 1.32 and later): a relist never holds a page of whole objects. `false` for an
    /// API server without it: pages of whole objects instead.
    #[arg(long, env = "OAUTHAPP_STREAMING_LISTS", default_value_t = true, action = clap::ArgAction::Set)]
    streaming_lists: bool,
    /// Log format.
    #[arg(long, env = "OAUTHAPP_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Run the controller only while holding a Lease (for more than one replica). The REST API
    /// is served by every replica either way.
    #[arg(long, env = "OAUTHAPP_LEADER_ELECT", default_value_t = false)]
    leader_elect: bool,
    /// Name of the leader-election Lease.
    #[arg(long, env = "OAUTHAPP_LEASE_NAME", default_value = "oauthapp-operator")]
    lease_name: String,
    /// Namespace of the leader-election Lease (default: POD_NAMESPACE, else `default`).
    #[arg(long, env = "OAUTHAPP_LEASE_NAMESPACE")]
    lease_namespace: Option<String>,
    /// How long a leader's Lease is valid without renewal; a standby takes over after it, and a
    /// leader that could not renew stops acting a sixth of it before.
    #[arg(long, env = "OAUTHAPP_LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    lease_duration: Duration,
    /// PEM certificate chain for the REST API (HTTPS); re-read when the file changes.
    #[arg(long, env = "OAUTHAPP_TLS_CERT_FILE", requires = "tls_key_file")]
    tls_cert_file: Option<std::path::PathBuf>,
    /// PEM private key for the REST API.
    #[arg(long, env = "OAUTHAPP_TLS_KEY_FILE", requires = "tls_cert_file")]
    tls_key_file: Option<std::path::PathBuf>,
    /// Requests per second one caller may make to the REST API.
    #[arg(long, env = "OAUTHAPP_RATE_LIMIT_PER_CALLER", default_value_t = 10.0)]
    rate_limit_per_caller: f64,
    /// Burst allowed per caller above the rate.
    #[arg(long, env = "OAUTHAPP_RATE_LIMIT_PER_CALLER_BURST", default_value_t = 20)]
    rate_limit_per_caller_burst: u32,
    /// Requests per second the REST API accepts in all from authenticated callers; as many
    /// TokenReviews of tokens not seen recently are allowed besides.
    #[arg(long, env = "OAUTHAPP_RATE_LIMIT_GLOBAL", default_value_t = 100.0)]
    rate_limit_global: f64,
    /// Burst allowed in all above the global rate.
    #[arg(long, env = "OAUTHAPP_RATE_LIMIT_GLOBAL_BURST", default_value_t = 200)]
    rate_limit_global_burst: u32,
    /// How long TokenReview and SubjectAccessReview answers are reused.
    #[arg(long, env = "OAUTHAPP_AUTH_CACHE_TTL", default_value = "10s", value_parser = parse_duration)]
    auth_cache_ttl: Duration,
    /// Name of the Secret that holds the key signing the rotation records on app Secrets; created
    /// on first start if absent. Only the operator may read it.
    #[arg(
        long,
        env = "OAUTHAPP_RECORD_KEY_SECRET",
        default_value = "oauthapp-operator-record-key"
    )]
    record_key_secret: String,
    /// Namespace of that Secret (default: POD_NAMESPACE, else `default`).
    #[arg(long, env = "OAUTHAPP_RECORD_KEY_NAMESPACE")]
    record_key_namespace: Option<String>,
    /// Audiences a REST API bearer token must be meant for (comma-separated), e.g.
    /// `oauthapp-operator` for `kubectl create token NAME --audience oauthapp-operator`; empty:
    /// any token the API server accepts for its own audience.
    #[arg(long, env = "OAUTHAPP_API_AUDIENCES", value_delimiter = ',')]
    api_audiences: Vec<String>,
    /// A REST API request that takes longer is answered 503 (one whose answer carries a secret
    /// already written is always answered with it).
    #[arg(long, env = "OAUTHAPP_API_REQUEST_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    api_request_timeout: Duration,
    /// How long a client of either listener (REST API, admin) gets to send a request's headers.
    #[arg(long, env = "OAUTHAPP_HEADER_READ_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    header_read_timeout: Duration,
    /// A connection to either listener with no request in progress for this long is closed.
    #[arg(long, env = "OAUTHAPP_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    idle_timeout: Duration,
    /// Connections open at once on each listener; past it, the oldest one without a request in
    /// progress is closed to make room.
    #[arg(long, env = "OAUTHAPP_MAX_CONNECTIONS", default_value_t = 1000)]
    max_connections: usize,
    /// Scheduled rotations (spec.rotation.schedule or interval) started per second at most,
    /// operator-wide; those over the limit wait their turn, in order. Requested rotations
    /// (annotation, REST API) never wait for it.
    #[arg(long, env = "OAUTHAPP_MAX_SCHEDULED_ROTATIONS_PER_SECOND", default_value_t = oauthapp_operator::runtime::scheduled::DEFAULT_MAX_PER_SECOND, value_parser = parse_rate)]
    max_scheduled_rotations_per_second: f64,
    /// How long SIGTERM waits for in-flight work before exiting.
    #[arg(long, env = "OAUTHAPP_SHUTDOWN_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    shutdown_timeout: Duration,
}

/// Refuses to run against an OAuthApp CRD older than this version: the API server would prune
/// the fields it lacks from every status write (a write loop, and e.g. a previous secret's
/// grace period silently lost). On one, it logs why, records it in `refused` and stops the
/// operator. Retried with a growing pause while the API server cannot be reached; without the
/// right to read CRDs it says so and checks nothing.
async fn check_installed_crd(
    client: kube::Client,
    refused: Arc<std::sync::OnceLock<String>>,
    shutdown: CancellationToken,
) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let crds: kube::Api<CustomResourceDefinition> = kube::Api::all(client);
    let name = oauthapp_operator::model::crd::CRD_NAME;
    let version = env!("CARGO_PKG_VERSION");
    let mut pause = Duration::from_millis(500);
    let why = loop {
        match crds.get_opt(name).await {
            Ok(Some(crd)) => {
                let missing = serde_json::to_value(&crd)
                    .map(|v| oauthapp_operator::model::crd::missing_fields(&v))
                    .unwrap_or_default();
                if missing.is_empty() {
                    return;
                }
                break format!(
                    "the installed CustomResourceDefinition {name} is older than this operator ({version}): it lacks {}. \
                     Apply the CRD of this version first (`kubectl apply --server-side -f crds/{name}.yaml`; \
                     `helm upgrade` does not upgrade the chart's crds/), then start the operator",
                    missing.join(", ")
                );
            }
            Err(kube::Error::Api(s)) if s.code == 403 => {
                warn!(
                    "may not read CustomResourceDefinition {name}: not checking that it has the fields this version writes"
                );
                return;
            }
            // Not installed (yet), or the API server cannot be reached: look again.
            other => {
                match other {
                    Ok(_) => {
                        warn!(retry_in = ?pause, "the CustomResourceDefinition {name} is not installed: apply crds/{name}.yaml of this version ({version})")
                    }
                    Err(e) => {
                        warn!(error = %e, retry_in = ?pause, "cannot read CustomResourceDefinition {name} yet")
                    }
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(Duration::from_secs(30));
            }
        }
    };
    tracing::error!("{why}");
    let _ = refused.set(why);
    shutdown.cancel();
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    oauthapp_operator::model::status::parse_interval(s)
        .and_then(|d| Duration::try_from(d).ok())
        .ok_or_else(|| format!("`{s}` is not a duration like 30s, 10m or 1h30m"))
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        _ => Err(format!(
            "`{s}` is not a positive number (per second), e.g. 20 or 0.5"
        )),
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd { name } => {
            let yaml = match name {
                CrdName::Oauthapps => oauthapp_operator::model::crd::crd_yaml()?,
                CrdName::Oauthproviders => oauthapp_operator::model::provider::crd_yaml()?,
            };
            print!("{yaml}");
            Ok(())
        }
        Command::Openapi => {
            print!("{}", api::openapi_json());
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
    let instance = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| format!("pid-{}", std::process::id()));
    let instance = format!("{instance}-{}", std::process::id());
    let client = kube_client(&instance).await?;
    let metrics = Arc::new(Metrics::new());
    let ctx = context(&args, &client, &instance, &metrics)?;
    let background = ctx.background.clone();
    let shutdown = CancellationToken::new();
    // The CRD is checked in the background, retried while the API server cannot be reached (the
    // operator serves meanwhile, as it does whenever the API server is away); an older CRD stops
    // the operator with the reason.
    let crd_refused: Arc<std::sync::OnceLock<String>> = Arc::default();
    tokio::spawn(check_installed_crd(
        client.clone(),
        crd_refused.clone(),
        shutdown.clone(),
    ));
    tokio::spawn(watch_signals(shutdown.clone(), args.shutdown_timeout));
    let watches = Watches::start_with_ledger(
        client.clone(),
        &args.watch_namespaces,
        shutdown.clone(),
        Some(ctx.ledger.clone()),
        args.streaming_lists,
    );
    spawn_keepers(&args, &ctx, &client, &watches, &shutdown);
    let servers = serve(&args, &ctx, &watches, &metrics, &shutdown).await?;
    let settings = Settings {
        resync: args.resync_interval,
        concurrency: args.concurrency,
        namespace_concurrency: match args.concurrency {
            0 => args.namespace_concurrency.unwrap_or(u16::MAX),
            all => args.namespace_concurrency.unwrap_or(all / 2).clamp(1, all),
        },
    };
    if args.leader_elect {
        let namespace = args
            .lease_namespace
            .clone()
            .or_else(|| std::env::var("POD_NAMESPACE").ok())
            .unwrap_or_else(|| "default".into());
        let config = leader::LeaseConfig {
            name: args.lease_name.clone(),
            namespace,
            identity: instance,
            duration: args.lease_duration,
        };
        let run_controller = |stop| controller::run(ctx.clone(), watches.clone(), settings.clone(), stop);
        leader::lead(
            client.clone(),
            config,
            &ctx.leadership,
            &metrics,
            run_controller,
            shutdown.clone(),
        )
        .await?;
    } else {
        metrics.leader.set(1);
        controller::run(ctx, watches, settings, shutdown.clone()).await;
    }
    // The controller has stopped (SIGTERM): let the servers drain, then the Events they and the
    // controller are still publishing, within the timeout.
    shutdown.cancel();
    drain(servers, background, args.shutdown_timeout, &crd_refused).await
}

/// The Kubernetes client, its user agent naming this instance: the API server's audit log tells
/// the replicas apart by it (the instance is also the Lease holder identity).
async fn kube_client(instance: &str) -> anyhow::Result<kube::Client> {
    let mut config = kube::Config::infer()
        .await
        .context("no Kubernetes configuration found (in-cluster or KUBECONFIG)")?;
    let agent = format!("oauthapp-operator/{} ({instance})", env!("CARGO_PKG_VERSION"));
    config.headers.push((
        axum::http::header::USER_AGENT,
        axum::http::HeaderValue::from_str(&agent).context("the instance name is not a valid header value")?,
    ));
    kube::Client::try_from(config).context("creating the Kubernetes client")
}

/// The process's shared context, as the flags say: the hasher (its parameters refused at
/// start, not at the first rotation), this installation, the limits on scheduled rotations and
/// repairs. The record key is loaded in the background.
fn context(
    args: &RunArgs,
    client: &kube::Client,
    instance: &str,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Arc<Context>> {
    let params = HashParams {
        m_cost_kib: args.hash_memory_kib,
        t_cost: args.hash_iterations,
        p_cost: args.hash_parallelism,
    };
    oauthapp_operator::model::secret::hash("startup-check", &params).context("invalid argon2 parameters")?;
    let workers = args
        .hash_workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let key_namespace = args
        .record_key_namespace
        .clone()
        .or_else(|| std::env::var("POD_NAMESPACE").ok())
        .unwrap_or_else(|| "default".into());
    let ctx = Arc::new(
        Context::new(
            client.clone(),
            Hasher::with_pool(params, workers, args.hash_pool).accepting(&args.hash_accept_params),
            metrics.clone(),
            instance.to_string(),
        )
        .with_installation(format!("{key_namespace}/{}", args.record_key_secret))
        .with_max_scheduled_rotations_per_second(args.max_scheduled_rotations_per_second)
        .with_repairs(
            args.max_repairs_per_second,
            oauthapp_operator::runtime::repairs::BrakeSettings {
                share: args.repair_brake_share,
                min: args.repair_brake_min,
                window: args.repair_brake_window,
            },
        ),
    );
    {
        let (ctx, client, name) = (ctx.clone(), client.clone(), args.record_key_secret.clone());
        let namespaces = args.watch_namespaces.clone();
        tokio::spawn(async move {
            let lister = client.clone();
            let installation = ctx.installation.clone();
            let signed_records = move || {
                oauthapp_operator::model::record::count_signed_records(
                    lister.clone(),
                    namespaces.clone(),
                    installation.clone(),
                )
            };
            ctx.record_key
                .load(client, &key_namespace, &name, signed_records)
                .await
        });
    }
    Ok(ctx)
}

/// The tasks that keep the shared state current while the process runs: the ledger of apps
/// that went away, the forgetting of deleted apps' content checks, and the line that says the
/// watches synced.
fn spawn_keepers(
    args: &RunArgs,
    ctx: &Arc<Context>,
    client: &kube::Client,
    watches: &Arc<Watches>,
    shutdown: &CancellationToken,
) {
    {
        let (ctx, client, shutdown) = (ctx.clone(), client.clone(), shutdown.clone());
        let name = oauthapp_operator::runtime::ledger::configmap_name(&args.record_key_secret);
        let namespace = ctx.installation.split('/').next().unwrap_or_default().to_string();
        tokio::spawn(async move { ctx.ledger.run(client, namespace, name, shutdown).await });
    }
    {
        let (ctx, watches, shutdown) = (ctx.clone(), watches.clone(), shutdown.clone());
        tokio::spawn(async move { ctx.verified.forget_deleted(&watches, shutdown).await });
    }
    {
        let watches = watches.clone();
        tokio::spawn(async move {
            watches.wait_until_ready().await;
            info!("watches synced; ready");
        });
    }
}

/// The admin server's and the REST API's tasks.
struct Servers {
    admin: tokio::task::JoinHandle<std::io::Result<()>>,
    api: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// Binds and serves the admin server and the REST API. The REST API's port is bound first: once
/// /readyz answers, REST connections are accepted.
async fn serve(
    args: &RunArgs,
    ctx: &Arc<Context>,
    watches: &Arc<Watches>,
    metrics: &Arc<Metrics>,
    shutdown: &CancellationToken,
) -> anyhow::Result<Servers> {
    let api_listener = tokio::net::TcpListener::bind(args.api_addr)
        .await
        .with_context(|| format!("binding the REST API to {}", args.api_addr))?;
    let admin_listener = tokio::net::TcpListener::bind(args.admin_addr)
        .await
        .with_context(|| format!("binding the admin server to {}", args.admin_addr))?;
    info!(addr = %args.admin_addr, "admin server listening");
    let connections = oauthapp_operator::runtime::serve::ConnectionLimits {
        header_read_timeout: args.header_read_timeout,
        idle_timeout: args.idle_timeout,
        max_connections: args.max_connections,
    };
    let admin = tokio::spawn(oauthapp_operator::runtime::serve::serve(
        admin_listener,
        admin::router(AdminState {
            metrics: metrics.clone(),
            watches: watches.clone(),
            context: ctx.clone(),
        }),
        connections,
        shutdown.clone(),
    ));
    let api_config = ApiConfig {
        addr: args.api_addr,
        tls_cert_file: args.tls_cert_file.clone(),
        tls_key_file: args.tls_key_file.clone(),
        rate_per_caller: args.rate_limit_per_caller,
        burst_per_caller: args.rate_limit_per_caller_burst,
        rate_global: args.rate_limit_global,
        burst_global: args.rate_limit_global_burst,
        auth_cache_ttl: args.auth_cache_ttl,
        audiences: args
            .api_audiences
            .iter()
            .filter(|a| !a.is_empty())
            .cloned()
            .collect(),
        request_timeout: args.api_request_timeout,
        connections,
        verify_max_staleness: args.verify_max_staleness,
    };
    let api_state = ApiState {
        ctx: ctx.clone(),
        watches: watches.clone(),
    };
    let api = tokio::spawn(api::serve(api_listener, api_state, api_config, shutdown.clone()));
    Ok(Servers { admin, api })
}

/// Waits, within `timeout`, for the servers to drain and the Events still being published to
/// go out; says why the operator stops when the installed CRD refused it.
async fn drain(
    servers: Servers,
    background: tokio_util::task::TaskTracker,
    timeout: Duration,
    crd_refused: &std::sync::OnceLock<String>,
) -> anyhow::Result<()> {
    let drained = tokio::time::timeout(timeout, async {
        let _ = servers.admin.await;
        let served = match servers.api.await {
            Ok(Err(e)) => Err(e),
            Err(e) => {
                warn!(error = %e, "REST API server task failed");
                Ok(())
            }
            Ok(Ok(())) => Ok(()),
        };
        background.close();
        background.wait().await;
        served
    })
    .await;
    if let Some(why) = crd_refused.get() {
        anyhow::bail!("{why}");
    }
    match drained {
        Ok(Ok(())) => info!("stopped"),
        // The REST API could not serve (its address taken, its TLS files unreadable, ...) and
        // stopped the operator: exit non-zero, like any other start-up failure.
        Ok(Err(e)) => return Err(e).context("the REST API server failed"),
        Err(_) => warn!("servers did not drain within {timeout:?}; exiting"),
    }
    Ok(())
}

/// Cancels `shutdown` on SIGTERM or SIGINT, and bounds the shutdown: whatever is still running
/// `timeout` later (a reconcile stuck on an API call, a Lease release that hangs) is cut short
/// by exiting, so the process is gone before the kubelet's own deadline.
async fn watch_signals(shutdown: CancellationToken, timeout: Duration) {
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
    tokio::time::sleep(timeout).await;
    warn!("not stopped within {timeout:?} of the signal; exiting now");
    std::process::exit(1);
}
