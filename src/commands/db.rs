//! `flotilla db upgrade` and `flotilla db status`.

use std::time::Duration;

use flotilla_master::db::{DbError, Store};
use tokio::net::TcpStream;

use super::load_config;
use crate::cli::{DatabaseArgs, DbCommand};
use crate::exit::{self, Exit};

pub async fn run(cmd: DbCommand) -> Exit {
    match cmd {
        DbCommand::Upgrade(a) => upgrade(a).await,
        DbCommand::Status(a) => status(a).await,
    }
}

/// The database URL from `--database-url`, the cluster file, or `FLOTILLA_DATABASE__URL`.
fn database_url(a: &DatabaseArgs) -> Result<String, Exit> {
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
    Err(Exit::Usage)
}

/// How long a MySQL/MariaDB server that does not answer is waited for
/// (it may be starting, e.g. under docker-compose).
const REACH_TIMEOUT: Duration = Duration::from_secs(10);
const REACH_ATTEMPT: Duration = Duration::from_secs(2);

/// Opens the database. For a server URL, first makes sure something listens
/// at its host and port, saying at once (not after the whole wait) when it
/// does not, and naming the address in every message.
pub async fn connect(url: &str) -> Result<Store, Exit> {
    if let Some(addr) = server_address(url) {
        reach(&addr).await?;
        return Store::connect(url).await.map_err(|e| match e {
            DbError::Unreachable(m) => exit::db_error(
                "cannot open the database",
                &DbError::Unreachable(format!("{addr}: {m}")),
            ),
            e => exit::db_error(&format!("cannot open the database at {addr}"), &e),
        });
    }
    Store::connect(url)
        .await
        .map_err(|e| exit::db_error("cannot open the database", &e))
}

/// `host:port` of a `mysql://` or `mariadb://` URL (port 3306 when not given).
pub fn server_address(url: &str) -> Option<String> {
    let rest = url
        .strip_prefix("mysql://")
        .or_else(|| url.strip_prefix("mariadb://"))?;
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host_port.is_empty() {
        return Some("localhost:3306".to_owned());
    }
    let has_port = if host_port.starts_with('[') {
        host_port.contains("]:")
    } else {
        host_port.contains(':')
    };
    Some(if has_port {
        host_port.to_owned()
    } else {
        format!("{host_port}:3306")
    })
}

/// Waits up to [`REACH_TIMEOUT`] for a TCP connection to `addr`.
async fn reach(addr: &str) -> Result<(), Exit> {
    let deadline = tokio::time::Instant::now() + REACH_TIMEOUT;
    let mut said = false;
    loop {
        let err = match tokio::time::timeout(REACH_ATTEMPT, TcpStream::connect(addr)).await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {}s", REACH_ATTEMPT.as_secs()),
        };
        if tokio::time::Instant::now() + Duration::from_millis(500) >= deadline {
            return Err(exit::db_error(
                "cannot open the database",
                &DbError::Unreachable(format!(
                    "{addr}: {err} (gave up after {}s)",
                    REACH_TIMEOUT.as_secs()
                )),
            ));
        }
        if !said {
            eprintln!(
                "flotilla: database server {addr} unreachable ({err}); retrying for up to {}s",
                REACH_TIMEOUT.as_secs()
            );
            said = true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn upgrade(a: DatabaseArgs) -> Exit {
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
            Exit::Ok
        }
        Ok(applied) => {
            let list: Vec<String> = applied.iter().map(i64::to_string).collect();
            println!("applied migrations: {}", list.join(", "));
            Exit::Ok
        }
        Err(e) => exit::db_error("upgrade failed", &e),
    };
    store.close().await;
    code
}

async fn status(a: DatabaseArgs) -> Exit {
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
                Exit::Failed
            } else if s.pending.is_empty() {
                println!("pending migrations: none");
                Exit::Ok
            } else {
                println!("pending migrations:");
                for (v, d) in &s.pending {
                    println!("  {v} {d}");
                }
                println!("run `flotilla db upgrade`");
                Exit::Failed
            }
        }
        Err(e) => exit::db_error("cannot read the schema status", &e),
    };
    store.close().await;
    code
}

#[cfg(test)]
mod tests {
    use super::server_address;

    #[test]
    fn server_addresses() {
        let cases = [
            ("mysql://root@127.0.0.1:3306/ci", "127.0.0.1:3306"),
            ("mysql://u:p@db/ci", "db:3306"),
            (
                "mariadb://db.example:3307/ci?ssl-mode=required",
                "db.example:3307",
            ),
            ("mysql://u:p@[::1]:3310/ci", "[::1]:3310"),
            ("mysql://u:p@[::1]/ci", "[::1]:3306"),
        ];
        for (url, want) in cases {
            assert_eq!(server_address(url).as_deref(), Some(want), "{url}");
        }
        assert_eq!(server_address("sqlite://x.sqlite"), None);
    }
}
