//! The shape of the cluster file: one struct per section, defaults included.
//!
//! Every struct denies unknown fields, so a misspelt key is an error that
//! names it (and its line) instead of a setting silently ignored.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::duration::Dur;

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    #[serde(default)]
    pub database: DatabaseConfig,
    #[serde(default)]
    pub cluster: ClusterTimings,
    #[serde(default)]
    pub gateway: GatewayConfig,
    #[serde(default)]
    pub api: ApiConfig,
    #[serde(default)]
    pub hooks: HooksConfig,
    #[serde(default)]
    pub workers: Vec<WorkerConfig>,
    #[serde(default)]
    pub builders: Vec<BuilderConfig>,
    #[serde(default)]
    pub schedulers: Vec<SchedulerConfig>,
    /// `[[change_sources]]`: pollers that turn new commits into changes.
    #[serde(default)]
    pub change_sources: Vec<ChangeSourceConfig>,
    /// `[retention]`: how long the janitor keeps old data.
    #[serde(default)]
    pub retention: RetentionConfig,
    /// `[[reporters]]`: commit statuses and build documents sent out.
    #[serde(default)]
    pub reporters: Vec<super::reporters::ReporterConfig>,
    /// `[secrets]`: where `${secret:NAME}` references are looked up.
    #[serde(default)]
    pub secrets: SecretsConfig,
}

/// `[secrets]`: the providers asked, in order, for a secret's value.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SecretsConfig {
    #[serde(default)]
    pub providers: Vec<SecretProvider>,
}

/// One `[[secrets.providers]]` entry.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum SecretProvider {
    /// Secret `NAME` is the master's environment variable `prefix` + `NAME`.
    Env {
        #[serde(default)]
        prefix: String,
    },
    /// Secret `NAME` is the content of the file `path/NAME`.
    Files { path: String },
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    #[serde(default = "default_db_url")]
    pub url: String,
    /// Connections each master keeps open.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
}

fn default_db_url() -> String {
    "sqlite://flotilla.sqlite".to_owned()
}

fn default_max_connections() -> u32 {
    10
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: default_db_url(),
            max_connections: default_max_connections(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterTimings {
    /// How often a master refreshes `masters.last_active`.
    pub heartbeat_interval: Dur,
    /// A master silent this long is dead; its claims go back to the queue.
    pub master_timeout: Dur,
    /// How often a master refreshes `claimed_at` on the requests it holds.
    pub claim_renew_interval: Dur,
    /// A claim not renewed for this long may be taken over.
    pub claim_lease: Dur,
    /// On SIGTERM or drain: how long running builds may finish before they are handed back.
    pub shutdown_grace: Dur,
    /// How often a master looks for new work that no notification told it about.
    pub poll_interval: Dur,
}

impl Default for ClusterTimings {
    fn default() -> Self {
        ClusterTimings {
            heartbeat_interval: Dur::secs(5),
            master_timeout: Dur::secs(30),
            claim_renew_interval: Dur::secs(600),
            claim_lease: Dur::secs(1800),
            shutdown_grace: Dur::secs(300),
            poll_interval: Dur::millis(500),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    #[serde(default = "default_gateway_listen")]
    pub listen: String,
    /// Where masters reach the gateway(s); default `http://` + `listen`.
    #[serde(default)]
    pub urls: Vec<String>,
    /// Where the gateway serves `/metrics` (Prometheus) and `/healthz`; off when unset.
    #[serde(default)]
    pub metrics_listen: Option<String>,
    /// Where unmodified Buildbot workers (msgpack over WebSocket) attach; off when unset.
    #[serde(default)]
    pub buildbot_listen: Option<String>,
    #[serde(default)]
    pub tls_cert: Option<String>,
    #[serde(default)]
    pub tls_key: Option<String>,
    /// CA certificate (PEM) masters trust when they dial an `https://` gateway URL.
    #[serde(default)]
    pub tls_ca: Option<String>,
}

fn default_gateway_listen() -> String {
    "127.0.0.1:9989".to_owned()
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            listen: default_gateway_listen(),
            urls: Vec::new(),
            metrics_listen: None,
            buildbot_listen: None,
            tls_cert: None,
            tls_key: None,
            tls_ca: None,
        }
    }
}

impl GatewayConfig {
    /// The gateway addresses masters dial.
    pub fn master_urls(&self) -> Vec<String> {
        if self.urls.is_empty() {
            vec![format!("http://{}", self.listen)]
        } else {
            self.urls.clone()
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Where a master serves its HTTP API when `--http` is not given.
    #[serde(default = "default_api_listen")]
    pub listen: String,
    /// When set, every POST needs this variable's value as a bearer token (webhooks excepted).
    #[serde(default)]
    pub admin_token_env: Option<String>,
    /// When set, reading the dashboard and the API needs this variable's
    /// value (bearer token, or the password of HTTP basic auth) or the admin
    /// token; health checks, `/metrics` and webhooks stay open.
    #[serde(default)]
    pub read_token_env: Option<String>,
}

fn default_api_listen() -> String {
    "127.0.0.1:8010".to_owned()
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: default_api_listen(),
            admin_token_env: None,
            read_token_env: None,
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HooksConfig {
    #[serde(default)]
    pub github_secret_env: Option<String>,
    #[serde(default)]
    pub gitlab_token_env: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    pub name: String,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub password_env: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BuilderConfig {
    pub name: String,
    #[serde(default)]
    pub workers: Vec<String>,
    #[serde(default)]
    pub steps: Vec<StepConfig>,
    /// Higher runs first when several builders wait for the same worker.
    #[serde(default)]
    pub priority: i32,
    #[serde(default)]
    pub collapse_requests: bool,
    #[serde(default)]
    pub max_concurrent_builds: Option<u32>,
    #[serde(default)]
    pub tags: Vec<String>,
    /// Extra environment for every step of this builder.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StepConfig {
    pub name: String,
    /// What the step does: `shell` (default: run `command`), `git` (check out
    /// the source stamp and apply a try patch), `trigger` (start `schedulers`).
    #[serde(default = "default_step_kind")]
    pub kind: String,
    /// The command of a `shell` step.
    #[serde(default)]
    pub command: Vec<String>,
    /// `git` steps: the repository to check out instead of the source stamp's.
    #[serde(default)]
    pub repository: Option<String>,
    /// `trigger` steps: the triggerable schedulers to start.
    #[serde(default)]
    pub schedulers: Vec<String>,
    /// `trigger` steps: wait for the triggered builds and fail when they fail.
    #[serde(default)]
    pub wait_for_finish: bool,
    #[serde(default)]
    pub timeout: Option<Dur>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Relative to the worker's build directory for this builder.
    #[serde(default)]
    pub workdir: Option<String>,
    #[serde(default = "yes")]
    pub halt_on_failure: bool,
}

fn yes() -> bool {
    true
}

fn default_step_kind() -> String {
    "shell".to_owned()
}

/// The step kinds the cluster file may name.
pub const STEP_KINDS: &[&str] = &["shell", "git", "trigger"];

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SchedulerConfig {
    pub name: String,
    pub kind: String,
    #[serde(default)]
    pub builders: Vec<String>,
    #[serde(default)]
    pub branch: Option<String>,
    #[serde(default)]
    pub branches: Vec<String>,
    #[serde(default)]
    pub tree_stable_timer: Option<Dur>,
    #[serde(default)]
    pub interval: Option<Dur>,
    #[serde(default)]
    pub cron: Option<String>,
    #[serde(default)]
    pub timezone: Option<String>,
    #[serde(default)]
    pub upstream: Option<String>,
    #[serde(default)]
    pub files: Vec<String>,
    #[serde(default)]
    pub priority: i32,
    #[serde(default)]
    pub properties: BTreeMap<String, toml::Value>,
    /// The repository of the source stamps this scheduler makes when no
    /// change names one (periodic, nightly, try).
    #[serde(default)]
    pub repository: Option<String>,
}

/// A change source (`[[change_sources]]`); each runs on one master at a time.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ChangeSourceConfig {
    pub name: String,
    /// Only `git` for now: poll a repository for new commits.
    pub kind: String,
    /// A local path or a URL `git` can fetch from.
    pub repository: String,
    /// Branches to follow; empty means every branch.
    #[serde(default)]
    pub branches: Vec<String>,
    /// How often to poll (default 1 minute).
    #[serde(default)]
    pub poll_interval: Option<Dur>,
    #[serde(default)]
    pub project: String,
    #[serde(default)]
    pub codebase: String,
    #[serde(default)]
    pub category: Option<String>,
}

/// The change source kinds the cluster file may name.
pub const CHANGE_SOURCE_KINDS: &[&str] = &["git"];

/// The scheduler kinds the cluster file may name.
pub const SCHEDULER_KINDS: &[&str] = &[
    "single-branch",
    "any-branch",
    "periodic",
    "nightly",
    "force",
    "try",
    "triggerable",
    "dependent",
];

/// `[retention]`: horizons past which the janitor deletes old data. A
/// horizon left out keeps that data forever; with none set the periodic
/// janitor does nothing.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Step log contents of builds finished longer ago than this.
    pub logs: Option<Dur>,
    /// Builds (with steps and logs) finished longer ago than this.
    pub builds: Option<Dur>,
    /// Completed buildsets, their requests, properties and source stamps.
    pub requests: Option<Dur>,
    /// Changes recorded longer ago than this.
    pub changes: Option<Dur>,
    /// How often the master that owns the janitor runs it.
    pub interval: Dur,
    /// Rows per delete statement.
    pub batch_size: u32,
    /// Pause between batches, so clean-up never crowds out the claim path.
    pub pause: Dur,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            logs: None,
            builds: None,
            requests: None,
            changes: None,
            interval: Dur::secs(3600),
            batch_size: 1000,
            pause: Dur::millis(20),
        }
    }
}

impl RetentionConfig {
    /// Whether any horizon is set.
    pub fn enabled(&self) -> bool {
        self.logs.is_some()
            || self.builds.is_some()
            || self.requests.is_some()
            || self.changes.is_some()
    }
}
