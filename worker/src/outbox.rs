//! The queue of messages from the worker to the gateway.
//!
//! It is bounded, so a command producing output faster than the gateway
//! takes it is slowed down (its pipe fills and it blocks) instead of growing
//! the worker's memory. Once the connection is gone, sends fail at once
//! instead of waiting for room that will never come.

use flotilla_proto::v1::WorkerMessage;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Messages buffered towards the gateway (at most ~64 KiB each).
pub(crate) const OUTBOX_CAPACITY: usize = 64;

/// Cloneable sending side of one connection's outgoing stream.
#[derive(Clone, Debug)]
pub(crate) struct Outbox {
    tx: mpsc::Sender<WorkerMessage>,
    closed: CancellationToken,
}

impl Outbox {
    pub fn new(tx: mpsc::Sender<WorkerMessage>, closed: CancellationToken) -> Self {
        Self { tx, closed }
    }

    /// Queues `msg`, waiting for room; false if the connection is gone.
    pub async fn send(&self, msg: WorkerMessage) -> bool {
        tokio::select! {
            biased;
            _ = self.closed.cancelled() => false,
            r = self.tx.send(msg) => r.is_ok(),
        }
    }

    /// Queues `msg` only if there is room right now.
    pub fn try_send(&self, msg: WorkerMessage) -> bool {
        !self.closed.is_cancelled() && self.tx.try_send(msg).is_ok()
    }
}
