//! `flotilla db upgrade` and `flotilla db status`.

use flotilla_master::db::Store;

use super::load_config;
use crate::cli::{DatabaseArgs, DbCommand};
use crate::exit;

pub async fn run(cmd: DbCommand) -> i32 {
    match cmd {
        DbCommand::Upgrade(a) => upgrade(a).await,
        DbCommand::Status(a) => status(a).await,
    }
}

/// The database URL from `--database-url`, the cluster file, or `FLOTILLA_DATABASE__URL`.
fn database_url(a: &DatabaseArgs) -> Result<String, i32> {
    if let Some(url) = &a.database_url {
        return Ok(url.clone());
    }
    if let Some(path) = &a.config {
        return Ok(load_config(path)?.database.url);
    }
    if let Ok(url) = std::env::var("FLOTILLA_DATABASE__URL") {
        return Ok(url);
    }
    eprintln!("flotilla: give --config FILE or --database-url URL");
    Err(exit::USAGE)
}

pub async fn connect(url: &str) -> Result<Store, i32> {
    Store::connect(url)
        .await
        .map_err(|e| exit::db_error("cannot open the database", &e))
}

async fn upgrade(a: DatabaseArgs) -> i32 {
    let url = match database_url(&a) {
        Ok(u) => u,
        Err(code) => return code,
    };
    let store = match connect(&url).await {
        Ok(s) => s,
        Err(code) => return code,
    };
    let code = match store.upgrade().await {
        Ok(applied) if applied.is_empty() => {
            println!("schema is current; nothing to do");
            exit::OK
        }
        Ok(applied) => {
            let list: Vec<String> = applied.iter().map(i64::to_string).collect();
            println!("applied migrations: {}", list.join(", "));
            exit::OK
        }
        Err(e) => exit::db_error("upgrade failed", &e),
    };
    store.close().await;
    code
}

async fn status(a: DatabaseArgs) -> i32 {
    let url = match database_url(&a) {
        Ok(u) => u,
        Err(code) => return code,
    };
    let store = match connect(&url).await {
        Ok(s) => s,
        Err(code) => return code,
    };
    let code = match store.schema_status().await {
        Ok(s) => {
            let current = s
                .current
                .map_or_else(|| "none".to_owned(), |v| v.to_string());
            println!(
                "schema version: {current} (this binary knows up to {})",
                s.latest
            );
            if s.newer_than_binary {
                println!("the database is NEWER than this binary: upgrade flotilla");
                exit::FAILED
            } else if s.pending.is_empty() {
                println!("pending migrations: none");
                exit::OK
            } else {
                println!("pending migrations:");
                for (v, d) in &s.pending {
                    println!("  {v} {d}");
                }
                println!("run `flotilla db upgrade`");
                exit::FAILED
            }
        }
        Err(e) => exit::db_error("cannot read the schema status", &e),
    };
    store.close().await;
    code
}
