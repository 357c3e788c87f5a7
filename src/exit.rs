//! Exit codes of the contract, and the mapping from library errors to them
//! (the only place that mapping is made).

use flotilla_master::db::DbError;

pub const OK: i32 = 0;
/// The thing asked for failed (a build that was waited for did not succeed, an unknown builder).
pub const FAILED: i32 = 1;
/// Bad command line (also what clap uses).
pub const USAGE: i32 = 2;
/// A required service (database, gateway, API) is unreachable after retries.
pub const UNAVAILABLE: i32 = 69;
/// Internal error.
pub const SOFTWARE: i32 = 70;
/// The API refused the admin token.
pub const NO_PERMISSION: i32 = 77;
/// Bad configuration.
pub const CONFIG: i32 = 78;

/// Prints one line for a database error and returns its exit code.
pub fn db_error(context: &str, e: &DbError) -> i32 {
    eprintln!("flotilla: {context}: {e}");
    match e {
        DbError::Unreachable(_) => UNAVAILABLE,
        DbError::BadUrl(_)
        | DbError::AccessDenied(_)
        | DbError::UnknownDatabase { .. }
        | DbError::SchemaNotCurrent { .. }
        | DbError::SchemaNewer { .. } => CONFIG,
        e if e.is_transient() => UNAVAILABLE,
        _ => FAILED,
    }
}
