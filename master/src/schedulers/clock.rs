//! The time schedulers go by. In a running cluster that is the database's
//! clock (masters' own clocks drift); tests inject a manual clock to make a
//! nightly scheduler reach its time without waiting for it.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};

use crate::db::{DbError, Store};

#[derive(Clone, Debug, Default)]
pub enum Clock {
    /// `NOW()` of the shared database.
    #[default]
    Database,
    /// A time set by hand (tests).
    Manual(Arc<Mutex<DateTime<Utc>>>),
}

impl Clock {
    pub fn manual(start: DateTime<Utc>) -> Clock {
        Clock::Manual(Arc::new(Mutex::new(start)))
    }

    /// Moves a manual clock; a database clock ignores it.
    pub fn set(&self, t: DateTime<Utc>) {
        if let Clock::Manual(m) = self {
            *m.lock().unwrap_or_else(|e| e.into_inner()) = t;
        }
    }

    pub async fn now(&self, store: &Store) -> Result<DateTime<Utc>, DbError> {
        match self {
            Clock::Database => store.db_now().await,
            Clock::Manual(m) => Ok(*m.lock().unwrap_or_else(|e| e.into_inner())),
        }
    }
}
