//! The heartbeat's own line to the database.
//!
//! A master's heartbeat must never queue behind its other work: not behind a
//! pool exhausted by builds writing logs, not behind a statement that hangs
//! on a silent socket. On MySQL it therefore owns one connection outside the
//! pool, and every beat has a deadline; a beat that misses it drops the
//! connection (closing the socket at once, without waiting on the server)
//! and the next beat dials anew. On SQLite (one process, one file) the pool
//! serves.

use std::time::Duration;

use sqlx::{Connection, MySqlConnection};

use super::{DbError, MasterId, Pool, Store, prepare_mysql_session, within};

/// A master's heartbeat connection.
pub struct HeartbeatLink {
    store: Store,
    conn: Option<MySqlConnection>,
}

impl std::fmt::Debug for HeartbeatLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeartbeatLink")
            .field("connected", &self.conn.is_some())
            .finish()
    }
}

impl HeartbeatLink {
    pub fn new(store: Store) -> HeartbeatLink {
        HeartbeatLink { store, conn: None }
    }

    /// Refresh `last_active` of `me` within `limit` (connecting first when
    /// needed). `Ok(false)`: this incarnation was declared dead.
    pub async fn beat(&mut self, me: MasterId, limit: Duration) -> Result<bool, DbError> {
        let Pool::MySql(pool) = &self.store.pool else {
            return within(limit, self.store.heartbeat(me)).await;
        };
        let opts = pool.connect_options();
        let conn = &mut self.conn;
        let result = within(limit, async move {
            if conn.is_none() {
                let mut c = MySqlConnection::connect_with(&opts)
                    .await
                    .map_err(DbError::from_connect)?;
                prepare_mysql_session(&mut c).await?;
                *conn = Some(c);
            }
            let c = conn.as_mut().expect("connected above");
            let r =
                sqlx::query("UPDATE masters SET last_active = NOW(6) WHERE id = ? AND active = 1")
                    .bind(me)
                    .execute(c)
                    .await?;
            Ok(r.rows_affected() > 0)
        })
        .await;
        if result.is_err() {
            // Whatever state the connection is in, start afresh.
            self.conn = None;
        }
        result
    }
}
