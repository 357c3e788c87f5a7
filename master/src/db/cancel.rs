//! Connections a cancelled operation leaves behind.
//!
//! A database future dropped part way — by a deadline (`within`), by an HTTP
//! client that went away, by a shutdown — may leave its connection inside a
//! transaction the server still holds open: `BEGIN` sent but its answer not
//! read (so the client does not know it is in a transaction), or a one-trip
//! script stopped by an error before its `COMMIT`. The pool would hand that
//! connection out again, and every later autocommit statement on it would
//! run inside the forgotten transaction: never committed, its row locks held
//! for as long as the connection keeps being used.
//!
//! Every pooled operation therefore carries a [`Guard`]; one dropped before
//! it was disarmed notes the moment. For a short while after, every
//! connection that comes back to the pool is rolled back first (the pool's
//! `after_release`). A dropped operation releases its connection at once,
//! so the poisoned one is among them; when nothing is cancelled, releases
//! cost nothing extra.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long after a cancellation released connections are rolled back.
const WINDOW: Duration = Duration::from_secs(5);

fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

/// Milliseconds since `base()` of the latest cancellation, plus one (0: none).
static LAST: AtomicU64 = AtomicU64::new(0);

/// Marks one database operation; dropped armed, it counts as cancelled.
#[derive(Debug)]
pub(crate) struct Guard {
    armed: bool,
}

impl Guard {
    pub(crate) fn arm() -> Guard {
        base();
        Guard { armed: true }
    }

    pub(crate) fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if self.armed {
            noted();
        }
    }
}

/// Note that an operation may have left a connection mid-transaction.
pub(crate) fn noted() {
    let ms = base().elapsed().as_millis() as u64 + 1;
    LAST.fetch_max(ms, Ordering::SeqCst);
}

/// Whether a connection released now must be rolled back first.
pub(crate) fn recently() -> bool {
    let last = LAST.load(Ordering::SeqCst);
    last != 0 && (base().elapsed().as_millis() as u64) < last + WINDOW.as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_armed_guard_opens_the_window() {
        Guard::arm().disarm();
        let before = recently();
        drop(Guard::arm());
        assert!(recently());
        let _ = before;
    }
}
