//! Lengths the database columns hold, checked before anything is written:
//! a value too long for its column is the client's mistake (400), never a
//! database error (a 500 under MySQL's strict mode, silent truncation
//! elsewhere). The numbers are the columns' sizes in characters.

use super::error::ApiError;
use crate::db::NewChange;

/// `branch`, `revision`, `project`, `codebase`, `author`, `category`.
pub const NAME: usize = 255;
/// `repository`.
pub const REPOSITORY: usize = 512;
/// A buildset's `reason`.
pub const REASON: usize = 1024;

/// 400 when `value` is longer than `max` characters.
pub fn check(field: &str, value: Option<&str>, max: usize) -> Result<(), ApiError> {
    match value {
        Some(v) if v.chars().count() > max => Err(ApiError::BadRequest(format!(
            "{field} is longer than {max} characters"
        ))),
        _ => Ok(()),
    }
}

/// Every bounded field of a change.
pub fn check_change(c: &NewChange) -> Result<(), ApiError> {
    check("author", Some(&c.author), NAME)?;
    check("branch", c.branch.as_deref(), NAME)?;
    check("revision", c.revision.as_deref(), NAME)?;
    check("repository", Some(&c.repository), REPOSITORY)?;
    check("project", Some(&c.project), NAME)?;
    check("codebase", Some(&c.codebase), NAME)?;
    check("category", c.category.as_deref(), NAME)
}
