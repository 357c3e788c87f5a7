//! The command line (docs/cli.md describes it for users), parsed with clap.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Where client commands find a master when neither `--api` nor `FLOTILLA_API` is given.
pub const DEFAULT_API: &str = "http://127.0.0.1:8010";

/// `--api` for the commands that talk to a master's HTTP API; given after the
/// command, it wins over one given before it.
#[derive(Debug, Args)]
pub struct ApiArg {
    /// Master HTTP API to talk to [env: FLOTILLA_API] [default: http://127.0.0.1:8010].
    #[arg(long = "api", value_name = "URL")]
    pub api: Option<String>,
}

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
    /// Master HTTP API used by client commands (also accepted after the command).
    #[arg(long, env = "FLOTILLA_API", default_value = DEFAULT_API)]
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
    Drain(DrainArgs),
    /// Ask a draining master to take work again.
    Undrain(MasterNameArg),
    /// Run the retention clean-up once.
    Janitor(JanitorArgs),
    /// Validate a cluster file completely, without a database (exit 0 or 78).
    Check(CheckArgs),
    /// Exit 0 if a master (or the gateway's metrics address) is ready to serve.
    Health(HealthArgs),
    /// Print a build's step logs; with --follow, as they are written.
    Logs(LogsArgs),
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
    #[arg(long, value_name = "FILE", conflicts_with = "database_url")]
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
    /// The cluster file.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// Master name; defaults to the host name. Identity is the name plus boot time.
    #[arg(long)]
    pub name: Option<String>,
    /// HTTP API address (default: [api] listen of the cluster file).
    #[arg(long)]
    pub http: Option<String>,
    /// Once listening, write the address bound (`http ADDR`) to this file.
    #[arg(long, value_name = "FILE")]
    pub ready_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct GatewayArgs {
    /// The cluster file.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// Listen address (default: [gateway] listen of the cluster file).
    #[arg(long)]
    pub listen: Option<String>,
    /// Serve Prometheus `/metrics` here (default: [gateway] metrics_listen; off when neither is set).
    #[arg(long)]
    pub metrics: Option<String>,
    /// Once listening, write the addresses bound (`grpc ADDR`, `metrics ADDR`) to this file.
    #[arg(long, value_name = "FILE")]
    pub ready_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Gateway URL, e.g. http://127.0.0.1:9989.
    #[arg(long)]
    pub gateway: String,
    /// The worker's name, as in the cluster file's [[workers]].
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
    /// Stop (exit 77) after the cluster refused this worker's name, password
    /// or protocol version this many times in a row; 0 retries forever.
    #[arg(long, default_value_t = flotilla_worker::GIVE_UP_AFTER_REFUSALS)]
    pub give_up_after_refusals: u32,
}

#[derive(Debug, Args)]
pub struct SendchangeArgs {
    #[command(flatten)]
    pub api: ApiArg,
    /// Repository URL the change belongs to.
    #[arg(long)]
    pub repository: String,
    /// Branch the change was pushed to.
    #[arg(long)]
    pub branch: String,
    /// Revision (commit) of the change.
    #[arg(long)]
    pub revision: String,
    /// Who made the change.
    #[arg(long, default_value = "")]
    pub author: String,
    /// The commit message.
    #[arg(long, default_value = "")]
    pub comments: String,
    /// Changed files, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub files: Vec<String>,
    /// Project name, for schedulers that filter on it.
    #[arg(long, default_value = "")]
    pub project: String,
    /// K=V, repeatable.
    #[arg(long = "property", value_parser = parse_property)]
    pub properties: Vec<(String, String)>,
}

#[derive(Debug, Args)]
pub struct ForceArgs {
    #[command(flatten)]
    pub api: ApiArg,
    /// The builder to run (any builder of the cluster file).
    pub builder: String,
    /// Branch to build (FLOTILLA_BRANCH in the steps).
    #[arg(long)]
    pub branch: Option<String>,
    /// Revision to build (FLOTILLA_REVISION in the steps).
    #[arg(long)]
    pub revision: Option<String>,
    /// Repository to check out (FLOTILLA_REPOSITORY in the steps).
    #[arg(long)]
    pub repository: Option<String>,
    /// Why the build was forced (shown with the buildset).
    #[arg(long)]
    pub reason: Option<String>,
    /// K=V, repeatable.
    #[arg(long = "property", value_parser = parse_property)]
    pub properties: Vec<(String, String)>,
    /// Request priority (higher runs first).
    #[arg(long)]
    pub priority: Option<i32>,
    /// Wait for the build, streaming each step's output as it is written; exit 1 unless it succeeds.
    #[arg(long)]
    pub wait: bool,
    /// Print exactly {"buildset_id": N, "buildrequest_ids": [N, ...]} on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct TryArgs {
    #[command(flatten)]
    pub api: ApiArg,
    /// A builder to run the patch on (repeatable).
    #[arg(long = "builder", required = true)]
    pub builders: Vec<String>,
    /// The patch (unified diff, as `git diff` writes it), or - for standard input.
    #[arg(long)]
    pub diff: String,
    /// Revision the patch applies to (default: the branch's head).
    #[arg(long)]
    pub baserev: Option<String>,
    /// Branch the base revision is on.
    #[arg(long)]
    pub branch: Option<String>,
    /// Repository to check out (default: the `try` scheduler's).
    #[arg(long)]
    pub repository: Option<String>,
    /// Wait for the builds, streaming each step's output; exit 0 only if every build succeeded.
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
    /// One build with where it came from (`status build ID`).
    Build,
    /// One buildset: source stamps, changes, reason, properties (`status buildset ID`).
    Buildset,
    Workers,
    /// Schedulers and change sources, with the master that runs each.
    Schedulers,
    /// The latest changes.
    Changes,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub api: ApiArg,
    /// What to list.
    #[arg(value_enum, default_value = "masters")]
    pub what: StatusWhat,
    /// The id, for `build` and `buildset`.
    #[arg(value_name = "ID")]
    pub id: Option<i64>,
    /// Print the API's JSON and nothing else on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct MasterNameArg {
    #[command(flatten)]
    pub api: ApiArg,
    /// The master's name (every active incarnation of that name).
    pub master_name: String,
}

#[derive(Debug, Args)]
pub struct DrainArgs {
    #[command(flatten)]
    pub api: ApiArg,
    /// The master's name (every active incarnation of that name); in a pod, from FLOTILLA_MASTER_NAME.
    #[arg(env = "FLOTILLA_MASTER_NAME")]
    pub master_name: String,
    /// Then wait until the master runs no build (each finished or was handed
    /// back) or has left; exit 1 if --timeout passes first. For a preStop hook.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up after this long, e.g. "5m" (default: wait as long as it takes).
    #[arg(long, value_name = "DURATION", requires = "wait")]
    pub timeout: Option<flotilla_master::config::Dur>,
}

#[derive(Debug, Args)]
pub struct JanitorArgs {
    /// Count what would be deleted, delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// The cluster file (default: ./cluster.toml).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The cluster file to validate.
    #[arg(long, value_name = "FILE", default_value = "cluster.toml")]
    pub config: PathBuf,
}

#[derive(Debug, Args)]
pub struct HealthArgs {
    #[command(flatten)]
    pub api: ApiArg,
    /// Ask only whether the process answers (`/healthz`), not whether it can serve (`/readyz`).
    #[arg(long)]
    pub live: bool,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 5, value_name = "SECONDS")]
    pub timeout: u64,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    #[command(flatten)]
    pub api: ApiArg,
    /// The build's id (as in `flotilla status builds`).
    pub build: i64,
    /// Keep printing output as it is written until the build ends; exit with its result.
    #[arg(long, short)]
    pub follow: bool,
}

fn parse_property(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected K=V, got {s:?}")),
    }
}
