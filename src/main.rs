//! `flotilla`: the one binary. Thin on purpose: it parses the command line,
//! loads the cluster file and starts the component asked for; everything
//! else lives in the library crates.

mod cli;
mod client;
mod commands;
mod exit;
mod signals;
mod telemetry;

use clap::Parser;

use crate::exit::Exit;

fn main() {
    let cli = cli::Cli::parse();
    telemetry::init(cli.log_json);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("flotilla: cannot start the async runtime: {e}");
            std::process::exit(Exit::Software.code());
        }
    };
    let code = runtime.block_on(commands::dispatch(cli));
    // Background tasks (pools, links) must not keep the process alive past its answer.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    std::process::exit(code.code());
}
