//! The few places where MySQL/MariaDB and SQLite SQL differ, so that each query
//! is written once (see the `with_pool!` macro in [`super`]).
//!
//! Times: MySQL keeps `DATETIME(6)` and compares with `NOW(6)` (sessions are
//! set to UTC); SQLite keeps sortable UTC text `YYYY-MM-DD HH:MM:SS.SSS`, the
//! output of `strftime('%Y-%m-%d %H:%M:%f','now')`. Either way the clock is the
//! database's, never a master's.

use std::time::Duration;

use chrono::{DateTime, Utc};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dialect {
    MySql,
    Sqlite,
}

impl Dialect {
    /// The database's current time.
    pub fn now(self) -> &'static str {
        match self {
            Dialect::MySql => "NOW(6)",
            Dialect::Sqlite => "strftime('%Y-%m-%d %H:%M:%f','now')",
        }
    }

    /// `now - duration`, taking one bound parameter: bind [`Dialect::ago_arg`].
    pub fn now_minus(self) -> &'static str {
        match self {
            Dialect::MySql => "(NOW(6) - INTERVAL ? MICROSECOND)",
            Dialect::Sqlite => "strftime('%Y-%m-%d %H:%M:%f','now',?)",
        }
    }

    /// The parameter for [`Dialect::now_minus`]. Both dialects take a string
    /// (MySQL converts it to a number of microseconds).
    pub fn ago_arg(self, d: Duration) -> String {
        match self {
            Dialect::MySql => d.as_micros().to_string(),
            Dialect::Sqlite => format!("-{}.{:03} seconds", d.as_secs(), d.subsec_millis()),
        }
    }

    /// A bound time parameter normalised to how the column stores it, so that
    /// equality (the compare-and-swap on `claimed_at`) is exact.
    pub fn time_param(self) -> &'static str {
        match self {
            Dialect::MySql => "?",
            Dialect::Sqlite => "strftime('%Y-%m-%d %H:%M:%f',?)",
        }
    }

    /// A time to bind (use with [`Dialect::time_param`] or a plain `?`).
    pub fn time_arg(self, t: DateTime<Utc>) -> String {
        match self {
            Dialect::MySql => t.format("%Y-%m-%d %H:%M:%S%.6f").to_string(),
            Dialect::Sqlite => t.format("%Y-%m-%d %H:%M:%S%.3f").to_string(),
        }
    }

    /// Row-lock suffix for a candidate pick inside a write transaction. SQLite
    /// needs none: `BEGIN IMMEDIATE` already holds the only write lock.
    pub fn skip_locked(self) -> &'static str {
        match self {
            Dialect::MySql => " FOR UPDATE SKIP LOCKED",
            Dialect::Sqlite => "",
        }
    }

    /// A condition for every write of a multi-statement transaction: true
    /// only while the session is inside an explicit transaction. On a Galera
    /// node a transaction has been seen to end without an error to the
    /// client, after which each further statement ran, and committed, on its
    /// own (autocommit); guarded, such a statement changes nothing, and the
    /// check before `COMMIT` (`commit_checked!`) reports the loss so the
    /// transaction runs again. MariaDB's `@@in_transaction`; SQLite needs
    /// none (a statement there cannot outlive its transaction that way).
    pub fn in_tx(self) -> &'static str {
        match self {
            Dialect::MySql => " AND @@in_transaction = 1",
            Dialect::Sqlite => "",
        }
    }

    /// [`Dialect::in_tx`] for an `INSERT ... SELECT` of an aggregate (one row
    /// whatever the `WHERE`): a `HAVING` clause.
    pub fn in_tx_having(self) -> &'static str {
        match self {
            Dialect::MySql => " HAVING @@in_transaction = 1",
            Dialect::Sqlite => "",
        }
    }

    /// [`Dialect::in_tx`] for an `INSERT ... SELECT` of values (the tail of
    /// the `SELECT`).
    pub fn in_tx_select(self) -> &'static str {
        match self {
            Dialect::MySql => " FROM DUAL WHERE @@in_transaction = 1",
            Dialect::Sqlite => "",
        }
    }

    /// Row-lock suffix that waits (a plain `FOR UPDATE`).
    pub fn for_update(self) -> &'static str {
        match self {
            Dialect::MySql => " FOR UPDATE",
            Dialect::Sqlite => "",
        }
    }

    /// `INSERT` that leaves an existing row with the same unique key alone.
    pub fn insert_ignore(self) -> &'static str {
        match self {
            Dialect::MySql => "INSERT IGNORE",
            Dialect::Sqlite => "INSERT OR IGNORE",
        }
    }
}

/// `?, ?, ?` with `n` placeholders (`n` > 0).
pub(crate) fn placeholders(n: usize) -> String {
    let mut s = String::with_capacity(n * 3);
    for i in 0..n {
        if i > 0 {
            s.push_str(", ");
        }
        s.push('?');
    }
    s
}
