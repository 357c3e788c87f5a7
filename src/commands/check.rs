//! `flotilla check --config FILE`: everything a master and the gateway check
//! in the cluster file before they start (syntax, unknown keys, references
//! between sections, timings, cron expressions and time zones, TLS pairs),
//! without a database or any other process. Exit 0 when the file is good,
//! 78 with the file, key and line when it is not.

use super::load_config;
use crate::cli::CheckArgs;
use crate::exit::Exit;

pub fn run(a: CheckArgs) -> Exit {
    let config = match load_config(&a.config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if let Err(code) = super::servers::gateway_options(&config) {
        return code;
    }
    // Passwords named by `password_env` are read by masters when they start;
    // a missing variable here is worth saying but the file itself is fine.
    for w in &config.workers {
        if let Err(e) = w.resolve_password() {
            eprintln!("flotilla: note: {e} (a master needs it set)");
        }
    }
    println!(
        "{}: ok ({} workers, {} builders, {} schedulers, {} change sources)",
        a.config.display(),
        config.workers.len(),
        config.builders.len(),
        config.schedulers.len(),
        config.change_sources.len()
    );
    Exit::Ok
}
