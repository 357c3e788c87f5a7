//! `flotilla janitor [--dry-run] [--config FILE]`: run the retention
//! clean-up of the `[retention]` section once, straight against the
//! database (masters also run it periodically; this does not need them).

use std::path::PathBuf;

use flotilla_master::db::JanitorCounts;
use flotilla_master::janitor;

use super::load_config;
use crate::cli::JanitorArgs;
use crate::exit::{self, Exit};

/// Where the cluster file is looked for without `--config`.
const DEFAULT_CONFIG: &str = "cluster.toml";

pub async fn run(a: JanitorArgs) -> Exit {
    let path = a.config.unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG));
    let config = match load_config(&path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let retention = &config.retention;
    if !retention.enabled() {
        println!(
            "janitor: {} sets no [retention] horizon (logs, builds, requests, changes); nothing to do",
            path.display()
        );
        return Exit::Ok;
    }
    let store = match super::db::connect(&config.database.url).await {
        Ok(s) => s,
        Err(code) => return code,
    };
    if let Err(e) = store.ensure_current().await {
        return exit::db_error("refusing to clean up", &e);
    }
    let started = std::time::Instant::now();
    let result = janitor::run_once(&store, retention, a.dry_run).await;
    store.close().await;
    match result {
        Ok(n) => {
            print_report(&n, a.dry_run, started.elapsed());
            Exit::Ok
        }
        Err(e) => exit::db_error("janitor", &e),
    }
}

fn print_report(n: &JanitorCounts, dry_run: bool, took: std::time::Duration) {
    let verb = if dry_run { "would delete" } else { "deleted" };
    println!("janitor: {verb}:");
    println!("  log chunks    {}", n.log_chunks);
    println!("  builds        {}", n.builds);
    println!(
        "  buildsets     {} (with their build requests)",
        n.buildsets
    );
    println!("  sourcestamps  {}", n.sourcestamps);
    println!("  changes       {}", n.changes);
    println!(
        "  masters       {} (old inactive incarnations nothing refers to)",
        n.masters
    );
    println!("janitor: {} rows in {:.1?}", n.total(), took);
}
