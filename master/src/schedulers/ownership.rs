//! Which schedulers and change sources this master runs now.
//!
//! Each is an `object_owners` row taken with the same compare-and-swap lease
//! as a build request: claimed when free, renewed by claiming again, and free
//! for another master once ours is inactive or has not renewed for the lease
//! (`master_timeout`). We act only while our last successful claim is more
//! recent than the renewal period, which is well inside the lease, so a
//! master that was paused does not act on an ownership it may have lost.
//! State updates are compare-and-swaps as well, which settles what little
//! overlap remains.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use crate::db::{DbError, MasterId, Store};

#[derive(Debug)]
pub struct Ownership {
    kind: &'static str,
    lease: Duration,
    renew_every: Duration,
    /// Name to when we last claimed it successfully.
    held: HashMap<String, Instant>,
    /// Name to when we last tried and failed: retried after the renewal period.
    refused: HashMap<String, Instant>,
}

impl Ownership {
    pub fn new(kind: &'static str, lease: Duration, heartbeat: Duration) -> Ownership {
        Ownership {
            kind,
            lease,
            renew_every: heartbeat.min(lease / 3),
            held: HashMap::new(),
            refused: HashMap::new(),
        }
    }

    /// Whether this master owns `name` now, claiming or renewing when due.
    pub async fn owns(&mut self, store: &Store, me: MasterId, name: &str) -> Result<bool, DbError> {
        if self
            .held
            .get(name)
            .is_some_and(|t| t.elapsed() < self.renew_every)
        {
            return Ok(true);
        }
        if self
            .refused
            .get(name)
            .is_some_and(|t| t.elapsed() < self.renew_every)
        {
            return Ok(false);
        }
        let had = self.held.remove(name).is_some();
        let won = store.claim_object(me, self.kind, name, self.lease).await?;
        if won {
            if !had {
                tracing::info!(kind = self.kind, name, "this master now runs it");
            }
            self.held.insert(name.to_owned(), Instant::now());
            self.refused.remove(name);
        } else {
            if had {
                tracing::warn!(kind = self.kind, name, "lost ownership to another master");
            }
            self.refused.insert(name.to_owned(), Instant::now());
        }
        Ok(won)
    }

    /// Forgets everything (after a release or a failure to renew).
    pub fn clear(&mut self) {
        if !self.held.is_empty() {
            tracing::info!(
                kind = self.kind,
                count = self.held.len(),
                "gave up ownership"
            );
        }
        self.held.clear();
        self.refused.clear();
    }

    pub fn holds_any(&self) -> bool {
        !self.held.is_empty()
    }
}
