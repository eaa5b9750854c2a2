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
    /// Tokens of the local development issuer.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
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
    let cli = Cli::parse();
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("gatehouse: invalid settings: {error}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(&settings.log, settings.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
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
            Command::Token { command: TokenCommand::Issue { email, role, ttl } } => {
                issue_token(settings, &email, &role, ttl).await
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
