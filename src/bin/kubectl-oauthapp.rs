//! `kubectl oauthapp`: rotate, inspect and verify OAuthApps from kubectl. Uses the current
//! kubeconfig and context, like kubectl. The logic is in `oauthapp_operator::plugin`.

use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand, ValueEnum};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use oauthapp_operator::plugin::commands::{self, RotateOptions, Scope};
use oauthapp_operator::plugin::{self, AppRow, FindKey, MAX_STDIN_BYTES, Verdict};
use serde::Serialize;

/// Rotate, inspect and verify OAuthApp client secrets.
#[derive(Parser, Debug)]
#[command(name = "kubectl oauthapp", bin_name = "kubectl oauthapp", version)]
struct Cli {
    /// Path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config, then in-cluster).
    #[arg(long, global = true)]
    kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use (default: the current context).
    #[arg(long, global = true)]
    context: Option<String>,
    /// The namespace (default: the context's namespace, else `default`).
    #[arg(short, long, global = true)]
    namespace: Option<String>,
    /// Output format: a human-readable table (default), json or yaml.
    #[arg(short, long, global = true)]
    output: Option<Format>,
    #[command(subcommand)]
    command: Command,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum Format {
    Json,
    Yaml,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Rotate the client secret of the named apps, or of every app a selector matches.
    ///
    /// Sets a fresh value of the `oauthapp.io/rotate` annotation on each app and waits until the
    /// operator has acted on it; prints each app's new hint, rotation id, trigger and whether the
    /// previous secret stays valid (`spec.rotation.gracePeriod`). Exits non-zero if any app
    /// failed or timed out.
    Rotate {
        /// Apps to rotate (in the namespace).
        names: Vec<String>,
        /// Rotate every app with these labels (e.g. `team=payments`).
        #[arg(short = 'l', long = "selector")]
        selector: Option<String>,
        /// With --selector: in every namespace.
        #[arg(short = 'A', long = "all-namespaces")]
        all_namespaces: bool,
        /// Wait until the operator has rotated each app.
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        wait: bool,
        /// How long to wait for each app (e.g. `30s`, `2m`).
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        timeout: Duration,
        /// How many apps to rotate at a time.
        #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=64))]
        concurrency: u16,
        /// Invalidate the previous secret at once, whatever `spec.rotation.gracePeriod` says (it
        /// leaked). Sets `oauthapp.io/rotate-revoke` to the rotation's nonce (that rotation only); without it the annotation is removed.
        #[arg(long)]
        revoke_previous: bool,
    },
    /// Show apps: a table, or a detailed view (with recent Events) of one app.
    Status {
        /// One app to show in detail.
        name: Option<String>,
        /// Only apps with these labels.
        #[arg(short = 'l', long = "selector")]
        selector: Option<String>,
        /// Apps in every namespace.
        #[arg(short = 'A', long = "all-namespaces")]
        all_namespaces: bool,
    },
    /// Check a client secret, read from stdin, against the app's status hash (locally).
    ///
    /// Exit 0 when it is the app's current secret, or its previous one before that expires
    /// (`status.previousSecret`); 1 when it is neither; 2 when it cannot be checked.
    /// Needs read access to the OAuthApp only, never to its Secret.
    Verify {
        /// The app.
        name: String,
    },
    /// Print the app id (as the REST API knows the app) of a resource.
    Id {
        /// The app.
        name: String,
    },
    /// Manage the operator's record key ring (run against the operator's namespace, `-n`).
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// Find the resource behind an app id (`app_…`), a uid or a client id, in every namespace
    /// (or only in --namespace).
    Find {
        /// An app id, a resource uid or a client id.
        id: String,
    },
}

#[derive(Subcommand, Debug)]
enum KeyCommand {
    /// Add a new key to the ring: it signs from the operator's next read (within 10 s), every
    /// record is re-signed in the background at a bounded rate (`oauthapp_records_to_resign`
    /// counts those left), and no secret changes. Then retire the old key by deleting its Secret.
    Rotate {
        /// The installation's record key Secret (`--record-key-secret` of the operator).
        #[arg(long, default_value = "oauthapp-operator-record-key")]
        secret: String,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (number, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 30s or 2m"))?;
    match unit {
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("{s:?} is not a duration like 30s or 2m")),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// The client, and the namespace to use when none was given.
async fn connect(cli: &Cli) -> anyhow::Result<(Client, String)> {
    let options = KubeConfigOptions {
        context: cli.context.clone(),
        ..Default::default()
    };
    let config = match (&cli.kubeconfig, &cli.context) {
        (Some(path), _) => {
            let kubeconfig =
                Kubeconfig::read_from(path).with_context(|| format!("reading {}", path.display()))?;
            Config::from_custom_kubeconfig(kubeconfig, &options).await?
        }
        (None, Some(_)) => Config::from_kubeconfig(&options).await?,
        (None, None) => Config::infer().await?,
    };
    let namespace = config.default_namespace.clone();
    Ok((Client::try_from(config)?, namespace))
}

fn print<T: Serialize>(format: Format, value: &T) -> anyhow::Result<()> {
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(value)?),
        Format::Yaml => print!("{}", serde_norway::to_string(value)?),
    }
    Ok(())
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let (client, default_ns) = connect(&cli).await?;
    let namespace = cli.namespace.clone().unwrap_or(default_ns);
    let output = cli.output;
    let scope = |all: bool| {
        if all {
            Scope::All
        } else {
            Scope::Namespace(namespace.clone())
        }
    };
    match cli.command {
        Command::Rotate {
            names,
            selector,
            all_namespaces,
            wait,
            timeout,
            concurrency,
            revoke_previous,
        } => {
            let targets =
                rotation_targets(&client, &namespace, names, selector, scope(all_namespaces)).await?;
            let options = RotateOptions {
                wait,
                timeout,
                concurrency: usize::from(concurrency),
                revoke_previous,
            };
            rotate(&client, targets, &options, output).await
        }
        Command::Status { name: Some(name), .. } => status_one(&client, &namespace, &name, output).await,
        Command::Status {
            name: None,
            selector,
            all_namespaces,
        } => {
            status_list(
                &client,
                &scope(all_namespaces),
                selector.as_deref(),
                all_namespaces,
                output,
            )
            .await
        }
        Command::Verify { name } => verify(&client, &namespace, &name).await,
        Command::Id { name } => id(&client, &namespace, &name, output).await,
        Command::Key {
            command: KeyCommand::Rotate { secret },
        } => key_rotate(&client, &namespace, &secret, output).await,
        Command::Find { id } => {
            let scope = match cli.namespace {
                Some(ns) => Scope::Namespace(ns),
                None => Scope::All,
            };
            find(&client, &scope, &id, output).await
        }
    }
}

/// The apps `kubectl oauthapp rotate` names: by name in `namespace`, or by a label selector in
/// `scope`.
async fn rotation_targets(
    client: &Client,
    namespace: &str,
    names: Vec<String>,
    selector: Option<String>,
    scope: Scope,
) -> anyhow::Result<Vec<(String, String)>> {
    let targets: Vec<(String, String)> = match (names.is_empty(), selector) {
        (false, None) if matches!(scope, Scope::Namespace(_)) => {
            names.into_iter().map(|n| (namespace.to_string(), n)).collect()
        }
        (true, Some(selector)) => commands::list(client, &scope, Some(&selector))
            .await?
            .into_iter()
            .map(|a| {
                (
                    a.metadata.namespace.unwrap_or_default(),
                    a.metadata.name.unwrap_or_default(),
                )
            })
            .collect(),
        _ => bail!("give app names, or -l SELECTOR (with -A for every namespace)"),
    };
    if targets.is_empty() {
        bail!("no OAuthApp matches the selector");
    }
    Ok(targets)
}

/// `kubectl oauthapp rotate`: rotates `targets`, shows each outcome; fails when any did not
/// complete.
async fn rotate(
    client: &Client,
    targets: Vec<(String, String)>,
    options: &RotateOptions,
    output: Option<Format>,
) -> anyhow::Result<ExitCode> {
    let revoke_previous = options.revoke_previous;
    let outcomes = commands::rotate(client, targets, options).await;
    if let Some(format) = output {
        print(format, &outcomes)?;
    } else {
        let rows: Vec<Vec<String>> = outcomes
            .iter()
            .map(|o| {
                let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
                vec![
                    o.namespace.clone(),
                    o.name.clone(),
                    o.result.to_string(),
                    dash(&o.hint),
                    dash(&o.rotation_id),
                    dash(&o.trigger),
                    match (o.previous_kept, &o.previous_expires_at) {
                        (Some(true), Some(t)) => format!("valid until {t}"),
                        (Some(false), _) if revoke_previous => "revoked".to_string(),
                        // No grace period: the replaced secret was invalid at once.
                        (Some(false), _) => "invalid".to_string(),
                        _ => "-".to_string(),
                    },
                ]
            })
            .collect();
        print!(
            "{}",
            plugin::table(
                &[
                    "NAMESPACE",
                    "NAME",
                    "RESULT",
                    "HINT",
                    "ROTATION ID",
                    "TRIGGER",
                    "PREVIOUS"
                ],
                &rows
            )
        );
    }
    let mut failed = 0;
    for o in outcomes.iter().filter(|o| !o.ok()) {
        failed += 1;
        eprintln!(
            "error: {}/{}: {}",
            o.namespace,
            o.name,
            o.error.as_deref().unwrap_or(o.result)
        );
    }
    if failed > 0 {
        eprintln!("{failed} of {} rotations did not complete", outcomes.len());
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// `kubectl oauthapp status NAME`: one app in detail, with its latest Events.
async fn status_one(
    client: &Client,
    namespace: &str,
    name: &str,
    output: Option<Format>,
) -> anyhow::Result<ExitCode> {
    let app = commands::get(client, namespace, name).await?;
    let row = AppRow::of(&app);
    let events = commands::events(client, &app, 10).await;
    if let Some(format) = output {
        #[derive(Serialize)]
        struct Detail<'a> {
            #[serde(flatten)]
            row: &'a AppRow,
            events: &'a [commands::EventLine],
        }
        let events = events.as_deref().unwrap_or_default();
        print(format, &Detail { row: &row, events })?;
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", detail(&app, &row));
    match events {
        Ok(events) if events.is_empty() => println!("Events:          <none>"),
        Ok(events) => {
            println!("Events:");
            let rows: Vec<Vec<String>> = events
                .into_iter()
                .map(|e| vec![e.time, e.type_, e.reason, e.message])
                .collect();
            for line in plugin::table(&["TIME", "TYPE", "REASON", "MESSAGE"], &rows).lines() {
                println!("  {line}");
            }
        }
        Err(e) => println!("Events:          (not shown: {e})"),
    }
    Ok(ExitCode::SUCCESS)
}

/// `kubectl oauthapp status`: the apps in `scope` (matching `selector`) as a table.
async fn status_list(
    client: &Client,
    scope: &Scope,
    selector: Option<&str>,
    all_namespaces: bool,
    output: Option<Format>,
) -> anyhow::Result<ExitCode> {
    let apps = commands::list(client, scope, selector).await?;
    let rows: Vec<AppRow> = apps.iter().map(AppRow::of).collect();
    if let Some(format) = output {
        print(format, &rows)?;
    } else if rows.is_empty() {
        eprintln!("No OAuthApps found.");
    } else {
        print!("{}", plugin::status_table(&rows, all_namespaces));
    }
    Ok(ExitCode::SUCCESS)
}

/// `kubectl oauthapp verify NAME`: whether the secret on stdin is the app's current or previous one.
async fn verify(client: &Client, namespace: &str, name: &str) -> anyhow::Result<ExitCode> {
    let app = commands::get(client, namespace, name).await?;
    if std::io::stdin().is_terminal() {
        eprintln!("Paste the client secret, then press Enter and Ctrl-D:");
    }
    let mut input = String::new();
    std::io::stdin()
        .take(MAX_STDIN_BYTES)
        .read_to_string(&mut input)
        .context("reading the client secret from stdin")?;
    let qualified = format!("{namespace}/{name}");
    let hash = app.status.as_ref().and_then(|s| s.client_secret_hash.as_deref());
    let previous = app.status.as_ref().and_then(|s| s.previous_secret.as_deref());
    let hint = app
        .status
        .as_ref()
        .and_then(|s| s.client_secret_hint.clone())
        .unwrap_or_default();
    let now = jiff::Timestamp::now();
    match plugin::verify(&qualified, input.trim(), hash, previous, now)? {
        Verdict::Current => {
            println!("match: current client secret of {qualified} (hint {hint})");
            Ok(ExitCode::SUCCESS)
        }
        Verdict::Previous { expires_at } => {
            let old_hint = previous
                .map(|p| p.client_secret_hint.as_str())
                .unwrap_or_default();
            println!(
                "match: previous, valid until {expires_at}: the client secret of {qualified} before its last rotation (hint {old_hint}); move clients to the current one (hint {hint})"
            );
            Ok(ExitCode::SUCCESS)
        }
        Verdict::NoMatch { why } => {
            let why = why.map(|w| format!(" ({w})")).unwrap_or_default();
            let which = if previous.is_some_and(|p| now < p.expires_at.0) {
                "neither the current nor the previous"
            } else {
                "not the current"
            };
            println!("no match: {which} client secret of {qualified} (hint {hint}){why}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// `kubectl oauthapp id NAME`: the app's id.
async fn id(
    client: &Client,
    namespace: &str,
    name: &str,
    output: Option<Format>,
) -> anyhow::Result<ExitCode> {
    let app = commands::get(client, namespace, name).await?;
    let row = AppRow::of(&app);
    match output {
        Some(format) => print(format, &IdLine::of(&row))?,
        None => println!("{}", row.app_id.as_deref().unwrap_or("-")),
    }
    Ok(ExitCode::SUCCESS)
}

/// `kubectl oauthapp key rotate`: a new key Secret of the ring.
async fn key_rotate(
    client: &Client,
    namespace: &str,
    secret: &str,
    output: Option<Format>,
) -> anyhow::Result<ExitCode> {
    let added = commands::add_key(client, namespace, secret).await?;
    match output {
        Some(format) => print(format, &added)?,
        None => {
            println!(
                "created key Secret {}/{} (key id {})",
                added.namespace, added.secret, added.key_id
            );
            println!(
                "records are re-signed with it in the background; when oauthapp_records_to_resign is 0 on the \
                 leader, retire the older key(s): kubectl -n {} delete secret {}",
                added.namespace,
                added.older.join(" ")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `kubectl oauthapp find ID`: the apps with this app id, uid or client id.
async fn find(client: &Client, scope: &Scope, id: &str, output: Option<Format>) -> anyhow::Result<ExitCode> {
    let found = commands::find(client, scope, &FindKey::parse(id)).await?;
    let lines: Vec<IdLine> = found.iter().map(|a| IdLine::of(&AppRow::of(a))).collect();
    if let Some(format) = output {
        print(format, &lines)?;
    } else if !lines.is_empty() {
        let rows: Vec<Vec<String>> = lines
            .iter()
            .map(|l| {
                vec![
                    l.namespace.clone(),
                    l.name.clone(),
                    l.app_id.clone().unwrap_or_default(),
                    l.client_id.clone().unwrap_or_default(),
                ]
            })
            .collect();
        print!(
            "{}",
            plugin::table(&["NAMESPACE", "NAME", "APP ID", "CLIENT ID"], &rows)
        );
    }
    if lines.is_empty() {
        eprintln!("no OAuthApp has app id, uid or client id {id:?}");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct IdLine {
    namespace: String,
    name: String,
    app_id: Option<String>,
    client_id: Option<String>,
}

impl IdLine {
    fn of(row: &AppRow) -> IdLine {
        IdLine {
            namespace: row.namespace.clone(),
            name: row.name.clone(),
            app_id: row.app_id.clone(),
            client_id: row.client_id.clone(),
        }
    }
}

/// `spec.rotation` as the detail view shows it: the cron schedule and its time zone, the
/// interval, or `on request`.
fn schedule_text(app: &oauthapp_operator::model::crd::OAuthApp) -> String {
    let rotation = app.spec.rotation.as_ref();
    match (
        rotation.and_then(|r| r.schedule.as_deref()),
        rotation.and_then(|r| r.interval.as_deref()),
    ) {
        (Some(cron), _) => format!(
            "{cron} ({})",
            rotation
                .and_then(|r| r.time_zone.as_deref())
                .unwrap_or(oauthapp_operator::model::schedule::DEFAULT_TIME_ZONE)
        ),
        (None, Some(interval)) => format!("every {interval}"),
        (None, None) => "on request".into(),
    }
}

fn detail(app: &oauthapp_operator::model::crd::OAuthApp, row: &AppRow) -> String {
    let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let ready = match &row.message {
        Some(m) => format!("{}: {m}", row.ready_text()),
        None => row.ready_text(),
    };
    let last = match (&row.last_rotation, &row.trigger) {
        (Some(t), Some(trigger)) => format!("{t} ({trigger})"),
        (t, _) => dash(t),
    };
    [
        ("Name", row.name.clone()),
        ("Namespace", row.namespace.clone()),
        ("App ID", dash(&row.app_id)),
        ("Client ID", dash(&row.client_id)),
        ("Secret", app.secret_name()),
        ("Hint", dash(&row.hint)),
        ("Rotation ID", dash(&row.rotation_id)),
        ("Rotations", row.rotation_count.to_string()),
        ("Last rotation", last),
        ("Schedule", schedule_text(app)),
        ("Next rotation", dash(&row.next_rotation)),
        (
            "Previous secret",
            match (&row.previous_hint, &row.previous_expires_at) {
                (Some(hint), Some(t)) => format!("{hint}, valid until {t}"),
                _ => "-".to_string(),
            },
        ),
        ("Ready", ready),
    ]
    .iter()
    .map(|(k, v)| format!("{:<17}{v}\n", format!("{k}:")))
    .collect()
}
