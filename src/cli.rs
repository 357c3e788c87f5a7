//! The command line of CONTRACT.md, parsed with clap.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "flotilla",
    version,
    about = "A continuous-integration build master that scales out",
    long_about = "flotilla runs CI builds across several stateless masters that share one \
                  database and compete for build requests with compare-and-swap claims. \
                  Workers connect through a gRPC gateway that routes each to a live master."
)]
pub struct Cli {
    /// Master HTTP API used by client commands.
    #[arg(
        long,
        global = true,
        env = "FLOTILLA_API",
        default_value = "http://127.0.0.1:8010"
    )]
    pub api: String,
    /// Log as JSON lines.
    #[arg(long, global = true, env = "FLOTILLA_LOG_JSON")]
    pub log_json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Single-machine cluster in one process on the embedded SQLite database.
    Quickstart(QuickstartArgs),
    /// Create, upgrade or inspect the database schema.
    #[command(subcommand)]
    Db(DbCommand),
    /// Run one master.
    Master(MasterArgs),
    /// Run the worker gateway (gRPC).
    Gateway(GatewayArgs),
    /// Run a worker; reconnects with backoff forever.
    Worker(WorkerArgs),
    /// Submit a change; schedulers decide what to build.
    Sendchange(SendchangeArgs),
    /// Request one build now.
    Force(ForceArgs),
    /// Build a local patch on top of a base revision.
    Try(TryArgs),
    /// Cluster state from the API.
    Status(StatusArgs),
    /// Ask a running master to stop taking work, finishing what it runs.
    Drain(MasterNameArg),
    /// Ask a draining master to take work again.
    Undrain(MasterNameArg),
    /// Run the retention clean-up once.
    Janitor(JanitorArgs),
}

#[derive(Debug, Args)]
pub struct QuickstartArgs {
    /// Folder for the sample cluster file, the SQLite database and the worker's files.
    #[arg(long, default_value = "./flotilla-quickstart")]
    pub dir: PathBuf,
    /// Dashboard and API address.
    #[arg(long, default_value = "127.0.0.1:8010")]
    pub http: String,
    /// Gateway address.
    #[arg(long, default_value = "127.0.0.1:9989")]
    pub gateway: String,
    /// Exit after the sample build ends (0 if it succeeded) instead of running until Ctrl-C.
    #[arg(long)]
    pub once: bool,
}

#[derive(Debug, Args)]
pub struct DatabaseArgs {
    /// The cluster file (its [database] url is used).
    #[arg(long, conflicts_with = "database_url")]
    pub config: Option<PathBuf>,
    /// Database URL, e.g. mysql://root@127.0.0.1:3306/flotilla or sqlite://state.sqlite.
    #[arg(long)]
    pub database_url: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Create or upgrade the schema (idempotent; safe when several run at once).
    Upgrade(DatabaseArgs),
    /// Print the schema version and pending migrations; exit 1 if not current.
    Status(DatabaseArgs),
}

#[derive(Debug, Args)]
pub struct MasterArgs {
    #[arg(long)]
    pub config: PathBuf,
    /// Master name; defaults to the host name. Identity is the name plus boot time.
    #[arg(long)]
    pub name: Option<String>,
    /// HTTP API address (default: [api] listen of the cluster file).
    #[arg(long)]
    pub http: Option<String>,
}

#[derive(Debug, Args)]
pub struct GatewayArgs {
    #[arg(long)]
    pub config: PathBuf,
    /// Listen address (default: [gateway] listen of the cluster file).
    #[arg(long)]
    pub listen: Option<String>,
    /// Serve Prometheus `/metrics` here (default: [gateway] metrics_listen; off when neither is set).
    #[arg(long)]
    pub metrics: Option<String>,
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Gateway URL, e.g. http://127.0.0.1:9989.
    #[arg(long)]
    pub gateway: String,
    #[arg(long)]
    pub name: String,
    /// Environment variable holding the worker's password.
    #[arg(long, conflicts_with = "password_file")]
    pub password_env: Option<String>,
    /// File holding the worker's password.
    #[arg(long)]
    pub password_file: Option<PathBuf>,
    /// Folder where builds run.
    #[arg(long)]
    pub basedir: PathBuf,
    /// CA certificate (PEM) to trust for an https:// gateway (default: the system's roots).
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct SendchangeArgs {
    #[arg(long)]
    pub repository: String,
    #[arg(long)]
    pub branch: String,
    #[arg(long)]
    pub revision: String,
    #[arg(long, default_value = "")]
    pub author: String,
    #[arg(long, default_value = "")]
    pub comments: String,
    /// Changed files, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub files: Vec<String>,
    #[arg(long, default_value = "")]
    pub project: String,
    /// K=V, repeatable.
    #[arg(long = "property", value_parser = parse_property)]
    pub properties: Vec<(String, String)>,
}

#[derive(Debug, Args)]
pub struct ForceArgs {
    pub builder: String,
    #[arg(long)]
    pub branch: Option<String>,
    #[arg(long)]
    pub revision: Option<String>,
    #[arg(long)]
    pub repository: Option<String>,
    #[arg(long)]
    pub reason: Option<String>,
    /// K=V, repeatable.
    #[arg(long = "property", value_parser = parse_property)]
    pub properties: Vec<(String, String)>,
    /// Request priority (higher runs first).
    #[arg(long)]
    pub priority: Option<i32>,
    /// Wait for the build, showing progress; exit 1 unless it succeeds.
    #[arg(long)]
    pub wait: bool,
    /// Print exactly {"buildset_id": N, "buildrequest_ids": [N, ...]}.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct TryArgs {
    #[arg(long = "builder", required = true)]
    pub builders: Vec<String>,
    /// The patch, or - for standard input.
    #[arg(long)]
    pub diff: String,
    #[arg(long)]
    pub baserev: Option<String>,
    #[arg(long)]
    pub branch: Option<String>,
    /// Repository to check out (default: the `try` scheduler's).
    #[arg(long)]
    pub repository: Option<String>,
    #[arg(long)]
    pub wait: bool,
}

#[derive(Clone, Copy, Debug, Default, ValueEnum)]
pub enum StatusWhat {
    #[default]
    Masters,
    Builders,
    Requests,
    Builds,
    Workers,
    /// Schedulers and change sources, with the master that runs each.
    Schedulers,
    /// The latest changes.
    Changes,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[arg(value_enum, default_value = "masters")]
    pub what: StatusWhat,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct MasterNameArg {
    pub master_name: String,
}

#[derive(Debug, Args)]
pub struct JanitorArgs {
    #[arg(long)]
    pub dry_run: bool,
    #[arg(long)]
    pub config: Option<PathBuf>,
}

fn parse_property(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected K=V, got {s:?}")),
    }
}
