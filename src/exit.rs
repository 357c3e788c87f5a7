//! The exit codes of the contract, and the mapping from library errors to
//! them: the one place where a process's exit code is decided. Every
//! command returns an [`Exit`]; `docs/cli.md` lists each code and what it
//! means.

use flotilla_master::db::DbError;
use flotilla_master::master::MasterError;
use flotilla_worker::WorkerError;

use crate::client::ClientError;

/// How a `flotilla` process ends (the codes follow `sysexits.h`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Ok = 0,
    /// The thing asked for failed (a build that was waited for did not
    /// succeed, an unknown builder, a server that stopped on an error).
    Failed = 1,
    /// Bad command line (also what clap uses).
    Usage = 2,
    /// A required service (database, gateway, API) is unreachable after retries.
    Unavailable = 69,
    /// Internal error: the runtime or the signal handlers could not start.
    Software = 70,
    /// Refused credentials: the API refused the token, or the cluster kept
    /// refusing a worker's name, password or protocol version.
    NoPermission = 77,
    /// Bad configuration, a database that is missing, refuses these
    /// credentials or has another schema, or a master name already in use.
    Config = 78,
}

impl Exit {
    /// The process exit status.
    pub fn code(self) -> i32 {
        self as i32
    }
}

impl From<&DbError> for Exit {
    fn from(e: &DbError) -> Exit {
        match e {
            DbError::Unreachable(_) => Exit::Unavailable,
            DbError::BadUrl(_)
            | DbError::AccessDenied(_)
            | DbError::UnknownDatabase { .. }
            | DbError::SchemaNotCurrent { .. }
            | DbError::SchemaNewer { .. } => Exit::Config,
            e if e.is_transient() => Exit::Unavailable,
            _ => Exit::Failed,
        }
    }
}

/// How a master that stopped on an error ends.
impl From<&MasterError> for Exit {
    fn from(e: &MasterError) -> Exit {
        match e {
            MasterError::Config(_) | MasterError::NameInUse(_) => Exit::Config,
            MasterError::Db(DbError::Unreachable(_)) => Exit::Unavailable,
            MasterError::Db(
                DbError::BadUrl(_)
                | DbError::AccessDenied(_)
                | DbError::SchemaNotCurrent { .. }
                | DbError::SchemaNewer { .. },
            ) => Exit::Config,
            _ => Exit::Failed,
        }
    }
}

/// How a worker that stopped on an error ends.
impl From<&WorkerError> for Exit {
    fn from(e: &WorkerError) -> Exit {
        match e {
            WorkerError::Refused { .. } => Exit::NoPermission,
            _ => Exit::Failed,
        }
    }
}

/// How a command whose API call failed ends.
impl From<&ClientError> for Exit {
    fn from(e: &ClientError) -> Exit {
        match e {
            ClientError::Unreachable(_) => Exit::Unavailable,
            ClientError::Unauthorized(_) => Exit::NoPermission,
            ClientError::Status(..) | ClientError::Decode(_) => Exit::Failed,
        }
    }
}

/// Prints one line for a database error and returns its exit code.
pub fn db_error(context: &str, e: &DbError) -> Exit {
    eprintln!("flotilla: {context}: {e}");
    Exit::from(e)
}

/// Prints one line for a failed API call and returns its exit code.
pub fn client_error(e: &ClientError) -> Exit {
    eprintln!("flotilla: {e}");
    Exit::from(e)
}
