//! Reading columns the same way from MySQL and SQLite rows ([`DbRow`]) and
//! the id of an inserted row ([`InsertId`]), so row-to-struct conversions are
//! written once.

use chrono::{DateTime, NaiveDateTime, Utc};
use sqlx::Row;

use super::Results;

/// Typed column access shared by both backends' row types.
pub(crate) trait DbRow {
    fn i64(&self, col: &str) -> Result<i64, sqlx::Error>;
    fn opt_i64(&self, col: &str) -> Result<Option<i64>, sqlx::Error>;
    fn string(&self, col: &str) -> Result<String, sqlx::Error>;
    fn opt_string(&self, col: &str) -> Result<Option<String>, sqlx::Error>;
    fn opt_bytes(&self, col: &str) -> Result<Option<Vec<u8>>, sqlx::Error>;
    fn opt_time(&self, col: &str) -> Result<Option<DateTime<Utc>>, sqlx::Error>;

    fn flag(&self, col: &str) -> Result<bool, sqlx::Error> {
        Ok(self.i64(col)? != 0)
    }

    fn time(&self, col: &str) -> Result<DateTime<Utc>, sqlx::Error> {
        self.opt_time(col)?
            .ok_or_else(|| sqlx::Error::ColumnDecode {
                index: col.to_string(),
                source: "unexpected NULL time".into(),
            })
    }

    fn results(&self, col: &str) -> Result<Option<Results>, sqlx::Error> {
        Ok(self.opt_i64(col)?.and_then(Results::from_i64))
    }
}

macro_rules! impl_db_row {
    ($row:ty) => {
        impl DbRow for $row {
            fn i64(&self, col: &str) -> Result<i64, sqlx::Error> {
                self.try_get(col)
            }
            fn opt_i64(&self, col: &str) -> Result<Option<i64>, sqlx::Error> {
                self.try_get(col)
            }
            fn string(&self, col: &str) -> Result<String, sqlx::Error> {
                self.try_get(col)
            }
            fn opt_string(&self, col: &str) -> Result<Option<String>, sqlx::Error> {
                self.try_get(col)
            }
            fn opt_bytes(&self, col: &str) -> Result<Option<Vec<u8>>, sqlx::Error> {
                self.try_get(col)
            }
            fn opt_time(&self, col: &str) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
                Ok(self
                    .try_get::<Option<NaiveDateTime>, _>(col)?
                    .map(|t| t.and_utc()))
            }
        }
    };
}

impl_db_row!(sqlx::mysql::MySqlRow);
impl_db_row!(sqlx::sqlite::SqliteRow);

/// The id the database gave an inserted row.
pub(crate) trait InsertId {
    fn insert_id(&self) -> i64;
}

impl InsertId for sqlx::mysql::MySqlQueryResult {
    fn insert_id(&self) -> i64 {
        i64::try_from(self.last_insert_id()).unwrap_or(i64::MAX)
    }
}

impl InsertId for sqlx::sqlite::SqliteQueryResult {
    fn insert_id(&self) -> i64 {
        self.last_insert_rowid()
    }
}
