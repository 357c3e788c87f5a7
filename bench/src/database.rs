//! The run's own MariaDB database: uniquely named, migrated to the current
//! schema with the real `Store`, dropped at the end of the run.

use anyhow::Context;
use flotilla_master::db::Store;
use sqlx::mysql::{MySqlConnection, MySqlPool, MySqlPoolOptions};
use sqlx::{Connection, Executor};

#[derive(Debug)]
pub struct BenchDb {
    pub name: String,
    /// `mysql://.../<name>`: what the cluster file and stores connect to.
    pub url: String,
    server: String,
    /// A pool of its own for seeding and checking with raw SQL.
    pub pool: MySqlPool,
}

impl BenchDb {
    pub async fn create(server: &str, scenario: &str) -> anyhow::Result<BenchDb> {
        let server = server.trim_end_matches('/').to_owned();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!("flotilla_bench_{scenario}_{}_{nanos:x}", std::process::id());
        let mut conn = MySqlConnection::connect(&format!("{server}/"))
            .await
            .with_context(|| {
                format!("connect to MariaDB at {server} (run scripts/ensure-mariadb)")
            })?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE `{name}`")))
            .execute(&mut conn)
            .await
            .context("create the benchmark database")?;
        let _ = conn.close().await;
        let url = format!("{server}/{name}");
        let store = Store::connect_with(&url, 2).await?;
        store
            .upgrade()
            .await
            .context("migrate the benchmark database")?;
        store.close().await;
        let pool = MySqlPoolOptions::new()
            .max_connections(4)
            .after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute("SET time_zone = '+00:00'").await?;
                    Ok(())
                })
            })
            .connect(&url)
            .await
            .context("connect to the benchmark database")?;
        Ok(BenchDb {
            name,
            url,
            server,
            pool,
        })
    }

    /// Drops the database; failures are reported, not fatal.
    pub async fn drop_database(&self) {
        self.pool.close().await;
        let dropped = async {
            let mut conn = MySqlConnection::connect(&format!("{}/", self.server)).await?;
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS `{}`",
                self.name
            )))
            .execute(&mut conn)
            .await?;
            conn.close().await
        }
        .await;
        if let Err(e) = dropped {
            eprintln!("flotilla-bench: could not drop database {}: {e}", self.name);
        }
    }

    /// A single number from a query.
    pub async fn scalar(&self, sql: &str) -> anyhow::Result<i64> {
        let v: Option<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
            .fetch_one(&self.pool)
            .await
            .with_context(|| format!("query {sql}"))?;
        Ok(v.unwrap_or(0))
    }
}
