//! One function per command; `dispatch` returns the process exit code.

mod check;
mod client_cmds;
mod db;
mod drain_wait;
mod follow;
mod health;
mod janitor;
mod logs;
mod provenance;
mod quickstart;
mod servers;
mod try_cmd;
mod wait;

use std::path::Path;

use flotilla_master::config::ClusterConfig;

use crate::cli::{ApiArg, Cli, Command};
use crate::client::ApiClient;
use crate::exit::Exit;

pub async fn dispatch(cli: Cli) -> Exit {
    // `--api` after the command wins over one before it (or FLOTILLA_API).
    let top = cli.api;
    let api = |a: &ApiArg| ApiClient::new(a.api.as_deref().unwrap_or(&top));
    match cli.command {
        Command::Quickstart(a) => quickstart::run(a).await,
        Command::Db(c) => db::run(c).await,
        Command::Master(a) => servers::master(a).await,
        Command::Gateway(a) => servers::gateway(a).await,
        Command::Worker(a) => servers::worker(a).await,
        Command::Sendchange(a) => client_cmds::sendchange(&api(&a.api), a).await,
        Command::Force(a) => client_cmds::force(&api(&a.api), a).await,
        Command::Status(a) => client_cmds::status(&api(&a.api), a).await,
        Command::Drain(a) if a.wait => {
            drain_wait::run(&api(&a.api), &a.master_name, a.timeout).await
        }
        Command::Drain(a) => client_cmds::drain(&api(&a.api), &a.master_name, true).await,
        Command::Undrain(a) => client_cmds::drain(&api(&a.api), &a.master_name, false).await,
        Command::Try(a) => try_cmd::run(&api(&a.api), a).await,
        Command::Janitor(a) => janitor::run(a).await,
        Command::Check(a) => check::run(a),
        Command::Health(a) => health::run(a.api.api.as_deref().unwrap_or(&top), &a).await,
        Command::Logs(a) => logs::run(&api(&a.api), &a).await,
    }
}

/// Loads the cluster file, printing the error and giving exit 78 on failure.
fn load_config(path: &Path) -> Result<ClusterConfig, Exit> {
    ClusterConfig::load(path).map_err(|e| {
        eprintln!("flotilla: bad configuration: {e}");
        Exit::Config
    })
}
