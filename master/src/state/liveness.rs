//! What this master knows of its own liveness, by its own clock.
//!
//! The database is the only judge of who is alive, but a master cannot wait
//! for the database to tell it that it is dead: a connection that goes
//! silent without an error never tells anything. So every master keeps, from
//! its monotonic clock, the *send* time of the latest heartbeat the database
//! confirmed, and acts on its age alone:
//!
//! - at `fence_after` (`master_timeout / 2` less a margin) it is **fenced**:
//!   every build it runs is interrupted, it claims and starts nothing, and
//!   its gateway links stop heartbeating (so the gateways fence it too);
//! - other masters declare it dead no earlier than `master_timeout` after
//!   they last saw its `last_active` change, which is after that heartbeat
//!   was sent — so its builds have been stopping for at least
//!   `master_timeout - fence_after` before anyone may claim their requests.
//!
//! The same record says since when the heartbeats have succeeded without a
//! gap, which is what lets a master judge others (see `reaper`).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug)]
pub(crate) struct Liveness {
    /// Age of the latest confirmed heartbeat at which this master fences itself.
    pub fence_after: Duration,
    /// A gap between confirmed heartbeats longer than this breaks "healthy".
    max_gap: Duration,
    beats: Mutex<Beats>,
    fenced: AtomicBool,
}

#[derive(Debug)]
struct Beats {
    /// Send time of the latest heartbeat the database confirmed.
    confirmed: Instant,
    /// Since when confirmed heartbeats have followed each other without a gap.
    healthy_since: Instant,
}

impl Liveness {
    pub fn new(master_timeout: Duration, heartbeat_interval: Duration) -> Liveness {
        let half = master_timeout / 2;
        // Leave room for the interrupt to reach the worker before anyone may
        // claim the request: a tenth of the timeout, at most a second.
        let margin = (master_timeout / 10).min(Duration::from_secs(1));
        let now = Instant::now();
        Liveness {
            fence_after: half.saturating_sub(margin).max(heartbeat_interval),
            max_gap: heartbeat_interval * 2,
            beats: Mutex::new(Beats {
                // Registration itself was a confirmed write.
                confirmed: now,
                healthy_since: now,
            }),
            fenced: AtomicBool::new(false),
        }
    }

    fn beats(&self) -> std::sync::MutexGuard<'_, Beats> {
        self.beats.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The database confirmed a heartbeat sent at `sent`.
    pub fn confirm(&self, sent: Instant) {
        let mut b = self.beats();
        if sent <= b.confirmed {
            return;
        }
        if sent.duration_since(b.confirmed) > self.max_gap {
            b.healthy_since = sent;
        }
        b.confirmed = sent;
    }

    /// A new incarnation starts with a fresh record.
    pub fn reset(&self, sent: Instant) {
        let mut b = self.beats();
        b.confirmed = sent;
        b.healthy_since = sent;
    }

    /// Age of the latest confirmed heartbeat.
    pub fn age(&self) -> Duration {
        self.beats().confirmed.elapsed()
    }

    /// Whether the latest confirmed heartbeat is younger than the fence.
    pub fn fresh(&self) -> bool {
        self.age() < self.fence_after
    }

    /// Since when heartbeats have succeeded without a gap, if they still do
    /// (the latest is no older than the longest allowed gap).
    pub fn healthy_since(&self) -> Option<Instant> {
        let b = self.beats();
        (b.confirmed.elapsed() <= self.max_gap).then_some(b.healthy_since)
    }

    pub fn is_fenced(&self) -> bool {
        self.fenced.load(Ordering::SeqCst)
    }

    /// Sets the fenced flag; true when it changed.
    pub fn set_fenced(&self, fenced: bool) -> bool {
        self.fenced.swap(fenced, Ordering::SeqCst) != fenced
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn fences_by_the_age_of_the_last_confirmed_send() {
        let l = Liveness::new(Duration::from_secs(4), Duration::from_millis(500));
        assert_eq!(l.fence_after, Duration::from_millis(1600));
        assert!(l.fresh());
        let sent = Instant::now();
        tokio::time::advance(Duration::from_millis(1500)).await;
        // Confirmed late: the send time counts, not the answer's.
        l.confirm(sent);
        assert!(l.fresh());
        tokio::time::advance(Duration::from_millis(200)).await;
        assert!(!l.fresh(), "1.7 s since the last confirmed send");
    }

    #[tokio::test(start_paused = true)]
    async fn a_gap_breaks_health() {
        let l = Liveness::new(Duration::from_secs(4), Duration::from_millis(500));
        let start = Instant::now();
        tokio::time::advance(Duration::from_millis(500)).await;
        l.confirm(Instant::now());
        assert_eq!(l.healthy_since(), Some(start));
        tokio::time::advance(Duration::from_millis(1100)).await;
        assert_eq!(l.healthy_since(), None, "no beat for longer than the gap");
        let again = Instant::now();
        l.confirm(again);
        assert_eq!(l.healthy_since(), Some(again));
    }
}
