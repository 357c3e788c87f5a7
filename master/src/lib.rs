//! The flotilla master.
//!
//! A master is stateless: everything it knows lives in the shared database
//! ([`db`]). Several masters compete for build requests there with
//! compare-and-swap claims renewed on a lease, and each runs the builds it
//! won on workers that the gateway routed to it.
//!
//! - [`config`]: the cluster TOML file, shared by every master and the gateway.
//! - [`db`]: the schema, migrations and every SQL statement, including the claim protocol.
//! - [`runtime`]: a running master: gateway links, workers, the claim loop, builds, maintenance.
//! - [`http`]: the HTTP API and dashboard.
//! - [`janitor`]: retention: deleting data older than the configured horizons.
//! - [`metrics`]: the names and descriptions of every exported metric.
//! - [`schedulers`]: what turns changes, time and other builds into buildsets, each scheduler on one master.
//! - [`secrets`]: `${secret:NAME}` references, their providers, and masking values in logs.
//! - [`changesource`]: pollers that turn new commits into changes, each on one master.

pub mod changesource;
pub mod config;
pub mod db;
pub mod http;
pub mod janitor;
pub mod metrics;
pub mod runtime;
pub mod schedulers;
pub mod secrets;
