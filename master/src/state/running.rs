//! The builds this master runs now, and stopping them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use super::MasterState;

/// Why a build was stopped before its steps ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AbortReason {
    /// The claim is no longer ours (renewal found it gone, or we were fenced): write no outcome.
    LostClaim,
    /// This master is shutting down: the request goes back to the queue.
    Shutdown,
    /// The worker went away: the request goes back to the queue.
    WorkerLost,
    /// A user stopped the build: it ends `cancelled`.
    Stopped,
}

/// A build this master runs now.
#[derive(Debug)]
pub(crate) struct RunningBuild {
    pub request_id: i64,
    pub cancel: CancellationToken,
    pub reason: Arc<Mutex<Option<AbortReason>>>,
}

impl MasterState {
    /// Request ids of the builds running here.
    pub fn running_requests(&self) -> Vec<i64> {
        self.lock_running().values().map(|b| b.request_id).collect()
    }

    pub fn running_count(&self) -> usize {
        self.lock_running().len()
    }

    pub(crate) fn lock_running(&self) -> std::sync::MutexGuard<'_, HashMap<i64, RunningBuild>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stops the builds of these requests (or all, for `None`) for `reason`.
    pub fn abort_builds(&self, requests: Option<&[i64]>, reason: AbortReason) {
        for b in self.lock_running().values() {
            if requests.is_none_or(|r| r.contains(&b.request_id)) {
                let mut slot = b.reason.lock().unwrap_or_else(|e| e.into_inner());
                slot.get_or_insert(reason);
                b.cancel.cancel();
            }
        }
    }
}
