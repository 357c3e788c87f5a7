//! The run's own MariaDB database: a test kit [`TestDb`] (uniquely named,
//! dropped at the end of the run), migrated to the current schema with the
//! real `Store`.

use anyhow::Context;
use flotilla_master::db::Store;
use flotilla_testkit::TestDb;
use sqlx::Executor;
use sqlx::mysql::{MySqlPool, MySqlPoolOptions};

#[derive(Debug)]
pub struct BenchDb {
    pub name: String,
    /// `mysql://.../<name>`: what the cluster file and stores connect to.
    pub url: String,
    /// A pool of its own for seeding and checking with raw SQL.
    pub pool: MySqlPool,
    db: TestDb,
}

impl BenchDb {
    pub async fn create(server: &str, scenario: &str) -> anyhow::Result<BenchDb> {
        let db = TestDb::try_create_on(server, &format!("bench_{scenario}"), "").await?;
        let store = Store::connect_with(&db.url, 2).await?;
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
            .connect(&db.url)
            .await
            .context("connect to the benchmark database")?;
        Ok(BenchDb {
            name: db.name.clone(),
            url: db.url.clone(),
            pool,
            db,
        })
    }

    /// Closes the pool and drops the database.
    pub async fn drop_database(self) {
        self.pool.close().await;
        drop(self.db);
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
