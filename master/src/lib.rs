//! The flotilla master.
//!
//! A master is stateless: everything it knows lives in the shared database
//! ([`db`]). Several masters compete for build requests there with
//! compare-and-swap claims renewed on a lease, and each runs the builds it
//! won on workers that the gateway routed to it.
//!
//! From the top of the task tree down; arrows point only down this list
//! (`master/tests/module_graph.rs` checks that no import goes round):
//!
//! - [`master`]: the task tree: starts every task of a running master and stops them in order.
//! - [`runtime`]: the master's own tasks: gateway links, the claim loop, builds, heartbeat, maintenance.
//! - [`http`]: the HTTP API and dashboard.
//! - [`changesource`]: pollers that turn new commits into changes, each on one master.
//! - [`schedulers`]: what turns changes, time and other builds into buildsets, each scheduler on one master.
//! - [`janitor`]: retention: deleting data older than the configured horizons.
//! - [`reporters`]: build starts and ends sent to GitHub, GitLab or any HTTP endpoint, through an outbox.
//! - [`secrets`]: `${secret:NAME}` references, their providers, and masking values in logs.
//! - [`state`]: what the tasks share: identity, liveness, workers, running builds, shutdown.
//! - [`db`]: the schema, migrations and every SQL statement, including the claim protocol.
//! - [`config`]: the cluster TOML file, shared by every master and the gateway.
//! - [`cron`]: cron expressions, parsed with the configuration and evaluated by nightly schedulers.
//! - [`metrics`]: the names and descriptions of every exported metric, and the recorder.

pub mod changesource;
pub mod config;
pub mod cron;
pub mod db;
pub mod http;
pub mod janitor;
pub mod master;
pub mod metrics;
pub mod reporters;
pub mod runtime;
pub mod schedulers;
pub mod secrets;
pub mod state;
