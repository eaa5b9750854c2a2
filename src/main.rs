//! The `gatehouse` command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use gatehouse::{telemetry, Application, Settings};
use indicatif::{ProgressBar, ProgressStyle};
use store::EventStore;

/// Gatehouse: the system of record and gateway of the developer portal.
#[derive(Debug, Parser)]
#[command(name = "gatehouse", version, about)]
struct Cli {
    /// A TOML settings file (environment variables `GATEHOUSE_*` override it).
    #[arg(long, global = true, env = "GATEHOUSE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the HTTP API and the projectors.
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Inspect or rebuild projections (read models).
    Projections {
        #[command(subcommand)]
        command: ProjectionsCommand,
    },
    /// Export and verify the tamper-evident audit log (docs/AUDIT.md).
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// The secrets key ring: which keys stored secrets use, key rotation, new keys (docs/OPERATIONS.md).
    Secrets {
        #[command(subcommand)]
        command: SecretsCommand,
    },
    /// Tokens of the local development issuer.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Run a workspace agent: dial out to the gateway and serve terminals (docs/OPERATIONS.md).
    Agent {
        /// The gateway's base URL (http://, https://, ws:// or wss://).
        #[arg(long, env = "GATEHOUSE_AGENT_SERVER")]
        server: String,
        /// The agent token an admin minted (`POST /api/v1/agent-tokens`).
        #[arg(long, env = "GATEHOUSE_AGENT_TOKEN", hide_env_values = true)]
        token: String,
        /// The workspace this agent serves (default: the `WORKSPACE_ID` tag, else the host name).
        #[arg(long, env = "GATEHOUSE_AGENT_WORKSPACE")]
        workspace: Option<String>,
        /// A tag to announce, KEY=VALUE; repeatable. The workspace's discovery tags (`RDE_OWNER_EMAIL`,
        /// `RDE_DISPLAY_NAME`, `BLUEPRINT_KEY`, `BLUEPRINT_PROJECT_ID`) come from the agent token, not from here.
        #[arg(long = "tag", value_parser = parse_tag)]
        tags: Vec<(String, String)>,
        /// The shell to run in each terminal.
        #[arg(long, env = "GATEHOUSE_AGENT_SHELL", default_value = "/bin/sh")]
        shell: String,
        /// A PEM bundle of CA certificates to trust for `https://`/`wss://` besides the Mozilla roots (a private CA
        /// that signed the gateway's certificate).
        #[arg(long, env = "GATEHOUSE_AGENT_CA_FILE")]
        ca_file: Option<std::path::PathBuf>,
        /// The workspace's directory: where terminals and the dev server start (default: `$HOME`).
        #[arg(long, env = "GATEHOUSE_AGENT_DIR")]
        dir: Option<std::path::PathBuf>,
        /// The workspace's dev server, run with `sh -c` in `--dir` while the agent runs (with `DEV_PORT` from the
        /// environment); ended with the agent.
        #[arg(long, env = "GATEHOUSE_AGENT_DEV_COMMAND")]
        dev_command: Option<String>,
    },
}

fn parse_tag(raw: &str) -> Result<(String, String), String> {
    match raw.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => Ok((key.trim().to_string(), value.to_string())),
        _ => Err(format!("{raw:?} is not KEY=VALUE")),
    }
}

/// What `gatehouse agent` is asked to run.
struct AgentArgs {
    server: String,
    token: String,
    workspace: Option<String>,
    tags: Vec<(String, String)>,
    shell: String,
    ca_file: Option<std::path::PathBuf>,
    dir: Option<std::path::PathBuf>,
    dev_command: Option<String>,
}

/// The workspace's dev server: its own process group, so that ending it ends what it started (`npm` and its
/// children); ended (SIGTERM, then SIGKILL after 5 s) when the agent stops for any reason. Its output goes to the
/// agent's standard error, which the local control plane points at the workspace's log; a log that passes
/// [`MAX_DEV_LOG_BYTES`] starts afresh, so a noisy dev server cannot fill the disk.
struct DevServer {
    child: std::process::Child,
}

/// The most a workspace's log holds before it starts afresh.
const MAX_DEV_LOG_BYTES: u64 = 8 * 1024 * 1024;

impl DevServer {
    fn start(command: &str, dir: Option<&std::path::Path>) -> anyhow::Result<Self> {
        use std::os::fd::AsFd as _;
        use std::os::unix::process::CommandExt as _;
        let mut process = std::process::Command::new("sh");
        process
            .arg("-c")
            .arg(command)
            .env_remove("GATEHOUSE_AGENT_TOKEN")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        process.process_group(0);
        if let Some(dir) = dir {
            process.current_dir(dir);
        }
        let mut child = process.spawn().context("cannot start the dev server")?;
        let log = std::io::stderr().as_fd().try_clone_to_owned().context("the agent's standard error")?;
        let log = std::sync::Arc::new(std::sync::Mutex::new(std::fs::File::from(log)));
        if let Some(out) = child.stdout.take() {
            forward(out, log.clone());
        }
        if let Some(err) = child.stderr.take() {
            forward(err, log);
        }
        tracing::info!(pid = child.id(), port = std::env::var("DEV_PORT").ok(), "started the dev server");
        Ok(Self { child })
    }
}

/// Copies the dev server's output into the log, starting the log afresh when it passes [`MAX_DEV_LOG_BYTES`] (when
/// the log is a file; a terminal is written to as it is).
fn forward(mut from: impl std::io::Read + Send + 'static, log: std::sync::Arc<std::sync::Mutex<std::fs::File>>) {
    use std::io::Write as _;
    std::thread::spawn(move || {
        let mut buffer = [0u8; 16 * 1024];
        loop {
            let read = match from.read(&mut buffer) {
                Ok(0) | Err(_) => return,
                Ok(read) => read,
            };
            let Ok(mut file) = log.lock() else { return };
            if file.metadata().is_ok_and(|meta| meta.is_file() && meta.len() > MAX_DEV_LOG_BYTES)
                && file.set_len(0).is_ok()
            {
                let _ = writeln!(file, "--- gatehouse: the log passed {MAX_DEV_LOG_BYTES} bytes and starts afresh");
            }
            let _ = file.write_all(&buffer[..read]);
        }
    });
}

impl Drop for DevServer {
    fn drop(&mut self) {
        use nix::sys::signal::{killpg, Signal};
        let Ok(group) = i32::try_from(self.child.id()) else { return };
        let signal = |signal: Signal| {
            let _ = killpg(nix::unistd::Pid::from_raw(group), signal);
        };
        signal(Signal::SIGTERM);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(25));
        }
        signal(Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

async fn agent(args: AgentArgs) -> anyhow::Result<()> {
    let AgentArgs { server, token, workspace, tags, shell, ca_file, dir, dev_command } = args;
    // Shells and git tasks start there whatever their own working directory: hold it as an absolute path.
    let dir = dir.map(|dir| std::path::absolute(&dir).unwrap_or(dir));
    let tls = match &ca_file {
        Some(path) => {
            let pem = std::fs::read(path).with_context(|| format!("cannot read the CA file {}", path.display()))?;
            relay::agent::tls_config(Some(&pem)).with_context(|| format!("cannot use {}", path.display()))?
        }
        None => relay::agent::tls_config(None)?,
    };
    let mut announced = std::collections::BTreeMap::new();
    if let Ok(value) = std::env::var("WORKSPACE_ID") {
        if !value.trim().is_empty() {
            announced.insert("WORKSPACE_ID".to_string(), value);
        }
    }
    for (key, value) in tags {
        if domain::relay::RESERVED_TAGS.contains(&key.as_str()) {
            tracing::warn!(tag = key, "ignored: the workspace's discovery tags come from its agent token");
        } else {
            announced.insert(key, value);
        }
    }
    let workspace = workspace
        .or_else(|| announced.get("WORKSPACE_ID").cloned())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .filter(|workspace| !workspace.trim().is_empty())
        .context("no workspace: pass --workspace or a WORKSPACE_ID tag")?;
    announced.insert("WORKSPACE_ID".into(), workspace.clone());
    let _dev = dev_command.as_deref().map(|command| DevServer::start(command, dir.as_deref())).transpose()?;
    let config = relay::agent::AgentConfig { server, token, workspace, tags: announced, shell, dir, tls };
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        outcome = relay::agent::run(config) => outcome.context("agent stopped"),
        _ = terminate.recv() => {
            tracing::info!("SIGTERM: stopping");
            Ok(())
        }
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}

#[derive(Debug, Subcommand)]
enum SecretsCommand {
    /// List the ring's key ids and, for every stored secret, the key it is under and whether it opens with this
    /// ring. Exits 1 when a secret does not open.
    Status,
    /// Re-encrypt every stored secret under the ring's first key, one event each, while the service runs
    /// (idempotent: run it again after an interruption). Exits 1 when a secret could not be moved.
    Rewrap,
    /// Print a new random key (base64, 32 bytes) for a key file or `GATEHOUSE_SECRETS_KEYS`.
    GenerateKey,
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Print a token for EMAIL, first making EMAIL a member with ROLE (roles come from the roster, not the token).
    Issue {
        /// Whose token.
        #[arg(long)]
        email: String,
        /// admin, member or auditor.
        #[arg(long)]
        role: String,
        /// Lifetime: seconds, or a number with s, m, h or d.
        #[arg(long, default_value = "12h", value_parser = parse_ttl)]
        ttl: Duration,
    },
}

fn parse_ttl(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    let (digits, unit) = raw.split_at(raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len()));
    let value: u64 = digits.parse().map_err(|_| format!("{raw:?} is not a duration like 90s, 30m, 12h or 7d"))?;
    let seconds = match unit {
        "" | "s" => value,
        "m" => value.saturating_mul(60),
        "h" => value.saturating_mul(3600),
        "d" => value.saturating_mul(86_400),
        _ => return Err(format!("{raw:?} is not a duration like 90s, 30m, 12h or 7d")),
    };
    if seconds == 0 || seconds > 90 * 86_400 {
        return Err("a token lives between 1 second and 90 days".into());
    }
    Ok(Duration::from_secs(seconds))
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Write the chained log as NDJSON, ending with a checkpoint signed now (reads the database directly).
    Export {
        /// Export the events after this cursor (the `cursor` of the last event line of a previous export).
        #[arg(long)]
        since: Option<String>,
        /// The file to write; standard output by default.
        #[arg(long)]
        to: Option<PathBuf>,
    },
    /// Verify an export offline: no database, only the file and the public key.
    Verify {
        /// The export.
        #[arg(long)]
        file: PathBuf,
        /// The checkpoint signing key: 64 hex digits (`gatehouse audit public-key`), or a file holding them.
        #[arg(long)]
        public_key: String,
        /// A checkpoint obtained earlier (a file holding one checkpoint line, e.g. from
        /// `/api/v1/audit/checkpoints/latest`): the export must reach it, with the same link.
        #[arg(long)]
        checkpoint: Option<PathBuf>,
    },
    /// Print the checkpoint signing key's public half (hex), creating the key if it does not exist yet.
    PublicKey,
}

#[derive(Debug, Subcommand)]
enum ProjectionsCommand {
    /// List projections and their checkpoints.
    List,
    /// Replay a projection from zero into fresh tables and swap them in; readers keep the old ones meanwhile.
    Rebuild {
        /// The projection's name (see `projections list`).
        name: String,
    },
}

fn main() -> ExitCode {
    // Started by git as its askpass helper during an agent's push (relay::git): answer from the environment git
    // was given for that one push, and nothing else.
    if let Some(answer) = std::env::args().nth(1).and_then(|prompt| relay::git::askpass_answer(&prompt)) {
        println!("{answer}");
        return ExitCode::SUCCESS;
    }
    let cli = Cli::parse();
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("gatehouse: invalid settings: {error}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(&settings.log, settings.log_format);
    // The agent runs on one thread: its work is moving small frames between one WebSocket and its sessions' PTYs, and
    // on one thread a keystroke and its echo never wait for another thread to wake up (ADR 0012).
    let mut builder = if matches!(cli.command, Command::Agent { .. }) {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("gatehouse: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve => serve(settings).await,
            Command::Migrate => migrate(settings).await,
            Command::Projections { command: ProjectionsCommand::List } => list_projections(settings).await,
            Command::Projections { command: ProjectionsCommand::Rebuild { name } } => rebuild(settings, &name).await,
            Command::Audit { command: AuditCommand::Export { since, to } } => {
                audit_export(settings, since.as_deref(), to.as_deref()).await
            }
            Command::Audit { command: AuditCommand::Verify { file, public_key, checkpoint } } => {
                audit_verify(&file, &public_key, checkpoint.as_deref())
            }
            Command::Audit { command: AuditCommand::PublicKey } => {
                let key = settings.audit_key()?;
                println!("{}", key.public_key_hex());
                Ok(())
            }
            Command::Secrets { command } => secrets_command(settings, command).await,
            Command::Token { command: TokenCommand::Issue { email, role, ttl } } => {
                issue_token(settings, &email, &role, ttl).await
            }
            Command::Agent { server, token, workspace, tags, shell, ca_file, dir, dev_command } => {
                agent(AgentArgs { server, token, workspace, tags, shell, ca_file, dir, dev_command }).await
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("gatehouse: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn secrets_command(settings: Settings, command: SecretsCommand) -> anyhow::Result<()> {
    if let SecretsCommand::GenerateKey = command {
        let key = secrets::generate_key().context("cannot generate a key")?;
        println!("{}", key.expose());
        return Ok(());
    }
    let vault = settings.secrets_vault()?;
    let store = open_store(&settings).await?;
    store.check_schema().await?;
    let holders = api::vault::Holders {
        store: store.clone(),
        org: std::sync::Arc::new(store::AggregateRepository::new(store.clone(), ())),
        blueprints: std::sync::Arc::new(store::AggregateRepository::new(store.clone(), ())),
    };
    let outcome = match command {
        SecretsCommand::Status => {
            let secrets = api::vault::inventory(&holders).await?;
            let status = api::vault::status(&vault, &secrets);
            println!("{:<18} {:<8} {:<8} {:>7}", "KEY ID", "PRIMARY", "IN RING", "SECRETS");
            for key in &status.keys {
                let yes_no = |flag: bool| if flag { "yes" } else { "no" };
                println!("{:<18} {:<8} {:<8} {:>7}", key.key_id, yes_no(key.primary), yes_no(key.in_ring), key.secrets);
            }
            println!();
            for secret in &status.secrets {
                let state = match (secret.opens, secret.current) {
                    (false, _) => "DOES NOT OPEN",
                    (true, true) => "current",
                    (true, false) => "to rewrap",
                };
                println!("{:<56} {:<18} {state}", secret.secret, secret.key_id.as_deref().unwrap_or("(damaged)"));
            }
            println!("\n{} secret(s), {} to rewrap", status.secrets.len(), status.to_rewrap);
            let closed = status.secrets.iter().filter(|secret| !secret.opens).count();
            if closed > 0 {
                Err(anyhow::anyhow!("{closed} stored secret(s) do not open with this key ring"))
            } else {
                Ok(())
            }
        }
        SecretsCommand::Rewrap => {
            let metadata = store::EventMetadata::system("secrets rewrap");
            let report = api::vault::rewrap_all(&vault, &holders, None, &metadata).await?;
            println!(
                "primary key {}: {} rewrapped, {} already current, {} superseded, {} failed",
                report.primary_key_id,
                report.rewrapped,
                report.already_current,
                report.superseded,
                report.failed.len()
            );
            for failure in &report.failed {
                println!("failed: {}: {}", failure.secret, failure.reason);
            }
            if report.failed.is_empty() {
                Ok(())
            } else {
                Err(anyhow::anyhow!(
                    "{} secret(s) could not be rewrapped; fix the ring and run it again",
                    report.failed.len()
                ))
            }
        }
        SecretsCommand::GenerateKey => Ok(()),
    };
    store.close().await;
    outcome
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let application = Application::build(&settings).await?;
    application.run_until_stopped().await
}

async fn open_store(settings: &Settings) -> anyhow::Result<EventStore> {
    EventStore::open(&settings.store()).await.context("cannot open the event store")
}

async fn migrate(settings: Settings) -> anyhow::Result<()> {
    let store = open_store(&settings).await?;
    store.migrate().await.context("migration failed")?;
    store.check_schema().await?;
    println!("schema is up to date ({})", store.backend_name());
    store.close().await;
    Ok(())
}

async fn list_projections(settings: Settings) -> anyhow::Result<()> {
    let store = open_store(&settings).await?;
    store.check_schema().await?;
    let checkpoints = projections::checkpoints(&store).await.context("cannot read checkpoints")?;
    for projection in projections::all() {
        match checkpoints.iter().find(|checkpoint| checkpoint.name == projection.name()) {
            Some(checkpoint) => {
                let state = match (&checkpoint.failed_cursor, &checkpoint.last_error) {
                    (Some(at), Some(error)) => format!("FAILED at {at}: {error}"),
                    _ => "ok".into(),
                };
                println!("{}\t{}\t{} events\t{state}", checkpoint.name, checkpoint.cursor, checkpoint.events_applied);
            }
            None => println!("{}\t(not started)", projection.name()),
        }
    }
    store.close().await;
    Ok(())
}

async fn rebuild(settings: Settings, name: &str) -> anyhow::Result<()> {
    let all = projections::all();
    let Some(projection) = all.iter().find(|projection| projection.name() == name) else {
        let known: Vec<_> = all.iter().map(|projection| projection.name()).collect();
        anyhow::bail!("no projection named {name:?} (known: {})", known.join(", "));
    };
    let store = open_store(&settings).await?;
    store.check_schema().await?;
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} events ({per_sec}, eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(format!("rebuilding {name}"));
    bar.enable_steady_tick(Duration::from_millis(200));
    let report = projections::rebuild(&store, projection.as_ref(), &|done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })
    .await
    .with_context(|| format!("rebuild of {name} failed; the old tables are still in use"))?;
    bar.finish_and_clear();
    println!("rebuilt {name}: {} events, checkpoint {}", report.events, report.cursor);
    store.close().await;
    Ok(())
}

async fn audit_export(settings: Settings, since: Option<&str>, to: Option<&std::path::Path>) -> anyhow::Result<()> {
    use std::io::Write;
    let since = since
        .map(|raw| raw.parse::<store::Cursor>().map_err(|_| anyhow::anyhow!("--since {raw:?} is not a cursor")))
        .transpose()?;
    let key = settings.audit_key()?;
    let store = open_store(&settings).await?;
    store.check_schema().await?;
    // Chain whatever the log holds that no running server has chained yet (the projector's lock keeps two
    // chainers from both writing).
    let registry = prometheus::Registry::new();
    let chainer: Vec<std::sync::Arc<dyn projections::Projection>> =
        vec![std::sync::Arc::new(projections::audit_chain::AuditChainProjection)];
    projections::Projector::new(store.clone(), chainer, settings.projector(), &registry)
        .context("projector")?
        .catch_up()
        .await
        .map_err(|error| anyhow::anyhow!("cannot chain the log: {error}"))?;
    let start = projections::audit_chain::export_start(&store, since).await.context("cannot start the export")?;
    let reader = domain::Email::parse("cli@gatehouse.local")?;
    let record = domain::audit_access::RecordRead {
        reader: reader.clone(),
        resource: "gatehouse audit export".into(),
        target: format!("--since {}", since.map(|cursor| cursor.to_string()).unwrap_or_default()),
        items: 0,
    };
    store::AggregateRepository::<domain::audit_access::AuditAccess>::new(store.clone(), ())
        .execute_retrying(reader.as_str(), record, &store::EventMetadata::system("audit-export"), 10)
        .await
        .context("cannot record the export")?;
    let mut out: Box<dyn Write> = match to {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let (lines, mut receiver) = tokio::sync::mpsc::channel(1024);
    let exporter = {
        let store = store.clone();
        tokio::spawn(async move { projections::audit_chain::export(&store, start, &key, lines).await })
    };
    while let Some(line) = receiver.recv().await {
        out.write_all(line.context("export failed")?.as_bytes()).context("cannot write the export")?;
    }
    out.flush().context("cannot write the export")?;
    let exported = exporter.await.context("export task")?;
    if to.is_some() {
        eprintln!("exported {exported} events");
    }
    store.close().await;
    Ok(())
}

fn audit_verify(file: &std::path::Path, public_key: &str, checkpoint: Option<&std::path::Path>) -> anyhow::Result<()> {
    let key_text = match std::fs::read_to_string(public_key) {
        Ok(text) => text,
        Err(_) => public_key.to_string(),
    };
    let key_text = key_text.trim();
    let key = audit::PublicKey::from_hex(key_text)
        .map_err(|_| anyhow::anyhow!("--public-key is neither 64 hex digits nor a file holding them"))?;
    let trusted = match checkpoint {
        Some(path) => {
            let line = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
            let line = line.lines().rev().find(|line| !line.trim().is_empty()).unwrap_or_default();
            Some(audit::Checkpoint::from_line(line).map_err(|error| anyhow::anyhow!("--checkpoint: {error}"))?)
        }
        None => None,
    };
    let opened = std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
    let size = opened.metadata().map(|metadata| metadata.len()).unwrap_or(0);
    let bar = ProgressBar::new(size);
    bar.set_style(
        ProgressStyle::with_template("verifying [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec}, eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let reader = std::io::BufReader::with_capacity(1 << 20, opened);
    let outcome = audit::verify(reader, &key, trusted.as_ref(), |bytes| bar.set_position(bytes));
    bar.finish_and_clear();
    match outcome {
        Ok(report) => {
            println!(
                "ok: {} events (chain index {} to {}), {} checkpoint(s); last checkpoint covers index {}",
                report.events_verified,
                report.first_index,
                report.last_index,
                report.checkpoints_verified,
                report.last_checkpoint.index
            );
            Ok(())
        }
        Err(broken) => anyhow::bail!("verification failed at {broken}"),
    }
}

async fn issue_token(settings: Settings, email: &str, role: &str, ttl: Duration) -> anyhow::Result<()> {
    use domain::roster::{Role, Roster, RosterCommand, ROSTER_ID};
    let email = domain::Email::parse(email).with_context(|| format!("{email:?} is not an email address"))?;
    let Some(role) = Role::parse(role) else { anyhow::bail!("role is one of admin, member, auditor") };
    let Some(issuer) = settings.local_issuer().context("local token issuer")? else {
        anyhow::bail!("the local issuer is disabled (auth_local_issuer = false)");
    };
    let store = open_store(&settings).await?;
    if settings.migrate_on_start {
        store.migrate().await.context("cannot migrate the event store")?;
    }
    store.check_schema().await?;
    let roster = store::AggregateRepository::<Roster>::new(store.clone(), ());
    let metadata = store::EventMetadata::system("token-issue");
    let (state, _) = roster.load(ROSTER_ID).await?;
    let command = match state.member(&email) {
        None => Some(RosterCommand::Invite {
            email: email.clone(),
            role,
            invited_by: domain::Email::parse("cli@gatehouse.local")?,
        }),
        Some(member) if member.role != role => Some(RosterCommand::ChangeRole {
            email: email.clone(),
            role,
            changed_by: domain::Email::parse("cli@gatehouse.local")?,
            if_version: None,
        }),
        Some(_) => None,
    };
    if let Some(command) = command {
        roster.execute_retrying(ROSTER_ID, command, &metadata, 5).await.context("cannot update the roster")?;
    }
    store.close().await;
    println!("{}", issuer.issue(&email, ttl).context("cannot sign the token")?);
    Ok(())
}
