//! [`DbError`]: every way the database layer fails, sorted so the CLI can pick
//! an exit code (69 unreachable, 78 bad configuration) and loops can tell a
//! transient failure (retry) from a real one.

use sqlx::migrate::MigrateError;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// Connection refused, timed out, or the host does not resolve.
    #[error("database unreachable: {0}")]
    Unreachable(String),
    /// Unknown scheme or malformed URL.
    #[error("bad database URL: {0}")]
    BadUrl(String),
    /// Wrong credentials or no rights on the database.
    #[error("database access denied: {0}")]
    AccessDenied(String),
    /// The server answered but has no database of that name (MySQL error 1049).
    #[error(
        "database `{name}` does not exist on the server: create it (e.g. `CREATE DATABASE \
         `{name}`` as a user allowed to), then run `flotilla db upgrade`"
    )]
    UnknownDatabase { name: String },
    #[error(
        "database schema is not current (at {}, this binary needs {latest}): run `flotilla db upgrade`",
        current.map_or_else(|| "none".to_string(), |c| c.to_string())
    )]
    SchemaNotCurrent { current: Option<i64>, latest: i64 },
    #[error(
        "database schema version {current} is newer than this binary knows ({latest}): upgrade flotilla"
    )]
    SchemaNewer { current: i64, latest: i64 },
    #[error("database error: {0}")]
    Sqlx(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] MigrateError),
    /// A statement (or a whole transaction) did not answer within its
    /// deadline: the connection may have gone silent without an error. Its
    /// outcome is unknown, so whatever is retried must be safe to replay.
    #[error("database did not answer within {0:?}")]
    Timeout(std::time::Duration),
    /// A write transaction was found ended before its `COMMIT` although no
    /// statement failed (a Galera node aborted it without telling the
    /// client): nothing after the end changed, and it may simply run again.
    #[error("the database ended the transaction without an error; running it again")]
    TransactionEnded,
    /// The claim procedures (`claims::procedures`) could not be created:
    /// the user may not create routines here. The store falls back to the
    /// one-trip scripts.
    #[error("cannot create the claim procedures: {0}")]
    NoProcedures(String),
    #[error("{0}")]
    Other(String),
}

/// MySQL server error numbers worth naming.
mod mysql_codes {
    pub const ACCESS_DENIED: u16 = 1045;
    /// MariaDB: the account authenticates another way (e.g. unix_socket).
    pub const ACCESS_DENIED_NO_PASSWORD: u16 = 1698;
    pub const DB_ACCESS_DENIED: u16 = 1044;
    pub const TABLE_ACCESS_DENIED: u16 = 1142;
    pub const SPECIFIC_ACCESS_DENIED: u16 = 1227;
    pub const ROUTINE_ACCESS_DENIED: u16 = 1370;
    pub const UNKNOWN_DATABASE: u16 = 1049;
    pub const LOCK_WAIT_TIMEOUT: u16 = 1205;
    /// Also what Galera answers when certification aborts a transaction
    /// (a conflicting write set from another node), at `COMMIT` or at any
    /// statement of a transaction another node's write set pre-empted.
    pub const DEADLOCK: u16 = 1213;
    /// Galera: "WSREP has not yet prepared node for application use", while
    /// a node is not part of the primary component (joining, rejoining,
    /// cut off); nothing was done.
    pub const WSREP_NOT_READY: u16 = 1047;
    /// "Failed to read auto-increment value from storage engine": InnoDB's
    /// answer when an `INSERT ... SELECT` (a build's number is the
    /// builder's highest + 1) loses a deadlock or times out waiting for the
    /// table's auto-increment lock; seen with eight masters starting builds
    /// at once (`master/tests/claim_race.rs`).
    pub const AUTOINC_READ_FAILED: u16 = 1467;
    pub const SERVER_SHUTDOWN: u16 = 1053;
    pub const TOO_MANY_CONNECTIONS: u16 = 1040;
    pub const DUP_ENTRY: u16 = 1062;
    /// Syntax the server does not accept.
    pub const PARSE_ERROR: u16 = 1064;
    pub const WRONG_USAGE: u16 = 1221;
    pub const NOT_SUPPORTED_YET: u16 = 1235;
    pub const NO_SUCH_FUNCTION: u16 = 1305;
    pub const NO_SUCH_FUNCTION_NAMED: u16 = 1630;
}

/// SQLite primary result codes worth naming.
mod sqlite_codes {
    pub const BUSY: i64 = 5;
    pub const LOCKED: i64 = 6;
    pub const CONSTRAINT: i64 = 19;
}

impl DbError {
    /// Worth retrying the same operation: the connection dropped, the pool was
    /// exhausted, or the database chose this transaction as a deadlock victim.
    pub fn is_transient(&self) -> bool {
        match self {
            DbError::Unreachable(_) | DbError::Timeout(_) | DbError::TransactionEnded => true,
            DbError::Sqlx(e) => sqlx_is_transient(e),
            DbError::Migrate(MigrateError::Execute(e)) => sqlx_is_transient(e),
            _ => false,
        }
    }

    /// The server has no routine of that name (1305): a procedure not yet
    /// created in this database.
    pub fn is_missing_routine(&self) -> bool {
        self.server_code() == Some(mysql_codes::NO_SUCH_FUNCTION)
    }

    /// The MySQL server's error number, when the database answered with one.
    fn server_code(&self) -> Option<u16> {
        let DbError::Sqlx(sqlx::Error::Database(d)) = self else {
            return None;
        };
        mysql_code(d.as_ref())
    }

    /// The user lacks a privilege for the statement (database, table,
    /// routine, or a global one).
    pub fn is_access_denied(&self) -> bool {
        self.server_code().is_some_and(|c| {
            matches!(
                c,
                mysql_codes::DB_ACCESS_DENIED
                    | mysql_codes::TABLE_ACCESS_DENIED
                    | mysql_codes::SPECIFIC_ACCESS_DENIED
                    | mysql_codes::ROUTINE_ACCESS_DENIED
            )
        })
    }

    /// The server does not understand a statement (syntax, an unsupported
    /// construct, a missing function): a server older or other than the ones
    /// the statement was written for, not a passing failure.
    pub fn is_unsupported_sql(&self) -> bool {
        self.server_code().is_some_and(|c| {
            matches!(
                c,
                mysql_codes::PARSE_ERROR
                    | mysql_codes::WRONG_USAGE
                    | mysql_codes::NOT_SUPPORTED_YET
                    | mysql_codes::NO_SUCH_FUNCTION
                    | mysql_codes::NO_SUCH_FUNCTION_NAMED
            )
        })
    }

    /// The database aborted a transaction over locks (deadlock victim, lock
    /// wait timeout, Galera certification failure, SQLite busy) or refused it
    /// while its Galera node was not ready: it was rolled back (or never
    /// began) and may simply run again.
    pub fn is_lock_conflict(&self) -> bool {
        self.conflict_reason().is_some()
    }

    /// Why the database aborted or refused a transaction that may simply run
    /// again, as the `reason` label of [`crate::metrics::DATABASE_RETRIES`]:
    /// `deadlock` (1213: a deadlock victim, or on Galera a certification
    /// failure), `lock_wait_timeout` (1205), `node_not_ready` (1047, a Galera
    /// node outside the primary component), `autoinc_lock` (1467, the
    /// auto-increment lock lost to a deadlock or a timeout),
    /// `transaction_ended` (found ended before `COMMIT`), `busy` (SQLite).
    pub fn conflict_reason(&self) -> Option<&'static str> {
        if let DbError::TransactionEnded = self {
            return Some("transaction_ended");
        }
        let DbError::Sqlx(sqlx::Error::Database(d)) = self else {
            return None;
        };
        if let Some(code) = mysql_code(d.as_ref()) {
            return match code {
                mysql_codes::DEADLOCK => Some("deadlock"),
                mysql_codes::LOCK_WAIT_TIMEOUT => Some("lock_wait_timeout"),
                mysql_codes::WSREP_NOT_READY => Some("node_not_ready"),
                mysql_codes::AUTOINC_READ_FAILED => Some("autoinc_lock"),
                _ => None,
            };
        }
        match sqlite_code(d.as_ref()) {
            Some(sqlite_codes::BUSY | sqlite_codes::LOCKED) => Some("busy"),
            _ => None,
        }
    }

    /// Sort a connection failure into unreachable / access denied / bad URL.
    pub(crate) fn from_connect(e: sqlx::Error) -> DbError {
        match &e {
            sqlx::Error::Configuration(_) => DbError::BadUrl(e.to_string()),
            sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::PoolTimedOut => {
                DbError::Unreachable(e.to_string())
            }
            sqlx::Error::Database(d) => match mysql_code(d.as_ref()) {
                Some(
                    mysql_codes::ACCESS_DENIED
                    | mysql_codes::ACCESS_DENIED_NO_PASSWORD
                    | mysql_codes::DB_ACCESS_DENIED,
                ) => DbError::AccessDenied(e.to_string()),
                Some(mysql_codes::UNKNOWN_DATABASE) => DbError::UnknownDatabase {
                    name: quoted_name(d.message()).unwrap_or_else(|| d.message().to_owned()),
                },
                Some(mysql_codes::TOO_MANY_CONNECTIONS | mysql_codes::SERVER_SHUTDOWN) => {
                    DbError::Unreachable(e.to_string())
                }
                // SQLite: CANTOPEN (14) and friends mean the path is unusable.
                _ if sqlite_code(d.as_ref()).is_some() => DbError::BadUrl(e.to_string()),
                _ => DbError::Sqlx(e),
            },
            _ => DbError::Sqlx(e),
        }
    }
}

/// The name in a server message such as `Unknown database 'ci'`.
fn quoted_name(message: &str) -> Option<String> {
    let (_, rest) = message.split_once('\'')?;
    let (name, _) = rest.rsplit_once('\'')?;
    Some(name.to_owned())
}

fn sqlx_is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(d) => {
            if let Some(code) = mysql_code(d.as_ref()) {
                return matches!(
                    code,
                    mysql_codes::DEADLOCK
                        | mysql_codes::LOCK_WAIT_TIMEOUT
                        | mysql_codes::WSREP_NOT_READY
                        | mysql_codes::AUTOINC_READ_FAILED
                        | mysql_codes::SERVER_SHUTDOWN
                        | mysql_codes::TOO_MANY_CONNECTIONS
                );
            }
            matches!(
                sqlite_code(d.as_ref()),
                Some(sqlite_codes::BUSY | sqlite_codes::LOCKED)
            )
        }
        _ => false,
    }
}

fn mysql_code(d: &dyn sqlx::error::DatabaseError) -> Option<u16> {
    d.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
        .map(|m| m.number())
}

/// The primary result code (the low byte of an extended code).
fn sqlite_code(d: &dyn sqlx::error::DatabaseError) -> Option<i64> {
    d.try_downcast_ref::<sqlx::sqlite::SqliteError>()?;
    d.code()
        .and_then(|c| c.parse::<i64>().ok())
        .map(|c| c & 0xff)
}

/// A unique-key violation (duplicate entry), on either backend.
pub(crate) fn is_unique_violation(e: &sqlx::Error) -> bool {
    let sqlx::Error::Database(d) = e else {
        return false;
    };
    if let Some(code) = mysql_code(d.as_ref()) {
        return code == mysql_codes::DUP_ENTRY;
    }
    sqlite_code(d.as_ref()) == Some(sqlite_codes::CONSTRAINT)
}
