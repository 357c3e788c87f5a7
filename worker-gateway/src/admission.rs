//! Slowing down failed registrations.
//!
//! Every refused `Register` (wrong password, unknown name, a name whose live
//! session answered its probe) counts against the worker name and against
//! the peer's IP address. A new attempt under either key that has failed
//! recently is held back before the gateway does anything with it, with a
//! delay that doubles with each failure of the burst (up to
//! [`MAX_HOLD`]). A burst is logged once, when it starts, and summed up
//! when the next one starts; every failure is counted in
//! `flotilla_gateway_auth_failures_total`. Nothing here ever touches a live
//! session: throttling only delays the newcomer.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;
use tracing::warn;

/// The first failure of a burst is not delayed; the next ones wait this
/// long, doubled for each further failure.
const FIRST_HOLD: Duration = Duration::from_millis(200);
/// The longest a newcomer is held back.
pub(crate) const MAX_HOLD: Duration = Duration::from_secs(10);
/// A failure this long after the previous one starts a new burst.
const BURST_GAP: Duration = Duration::from_secs(60);
/// Failures an address may have in a burst before its attempts are held:
/// many honest workers can share one address (NAT, one host), and one
/// hostile name must not slow them all down at once.
const ADDR_FREE_FAILURES: u32 = 20;
/// Above this many tracked keys, quiet ones are forgotten.
const PRUNE_ABOVE: usize = 4096;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Key {
    Name(String),
    Addr(IpAddr),
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Key::Name(n) => write!(f, "worker name {n:?}"),
            Key::Addr(a) => write!(f, "address {a}"),
        }
    }
}

struct Burst {
    failures: u32,
    last: Instant,
    /// Attempts held back wait their turn: concurrent attempts under one
    /// key are spaced out, not released together.
    next_at: Instant,
}

/// Failure bookkeeping shared by all sessions of one gateway.
#[derive(Default)]
pub(crate) struct Throttle {
    bursts: Mutex<HashMap<Key, Burst>>,
}

fn keys(name: &str, addr: Option<IpAddr>) -> impl Iterator<Item = Key> {
    std::iter::once(Key::Name(name.to_owned())).chain(addr.map(Key::Addr))
}

fn hold_for_key(key: &Key, failures: u32) -> Duration {
    match key {
        Key::Name(_) => hold_for(failures),
        Key::Addr(_) => hold_for(failures.saturating_sub(ADDR_FREE_FAILURES)),
    }
}

fn hold_for(failures: u32) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    let doublings = (failures - 1).min(16);
    (FIRST_HOLD * 2u32.pow(doublings)).min(MAX_HOLD)
}

impl Throttle {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Burst>> {
        self.bursts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How long an attempt by `name` from `addr` must wait before it is
    /// looked at (zero when neither has failed recently). Takes the
    /// attempt's turn: the next one under the same key waits longer.
    pub fn hold(&self, name: &str, addr: Option<IpAddr>) -> Duration {
        let now = Instant::now();
        let mut bursts = self.lock();
        let mut wait = Duration::ZERO;
        for k in keys(name, addr) {
            let Some(b) = bursts.get_mut(&k) else {
                continue;
            };
            if now.duration_since(b.last) >= BURST_GAP {
                continue;
            }
            let step = hold_for_key(&k, b.failures);
            let turn = (b.last + step).max(b.next_at).max(now);
            b.next_at = turn + step;
            wait = wait.max(turn.saturating_duration_since(now));
        }
        wait.min(MAX_HOLD)
    }

    /// Records a refused attempt; logs the start of a burst.
    pub fn failed(&self, name: &str, addr: Option<IpAddr>, reason: &str) {
        metrics::counter!("flotilla_gateway_auth_failures_total").increment(1);
        let now = Instant::now();
        let mut bursts = self.lock();
        if bursts.len() > PRUNE_ABOVE {
            bursts.retain(|_, b| now.duration_since(b.last) < BURST_GAP);
        }
        for key in keys(name, addr) {
            let burst = bursts.entry(key.clone()).or_insert(Burst {
                failures: 0,
                last: now,
                next_at: now,
            });
            if burst.failures > 0 && now.duration_since(burst.last) >= BURST_GAP {
                if burst.failures > 1 {
                    warn!(%key, failures = burst.failures, "previous burst of refused registrations ended");
                }
                burst.failures = 0;
            }
            burst.failures += 1;
            burst.last = now;
            if burst.failures == 1 {
                warn!(%key, reason, "registration refused; further refusals for this key are slowed down and counted (flotilla_gateway_auth_failures_total), not logged");
            }
        }
    }

    /// A successful registration clears its name's record (the address may
    /// still be guessing other names, so it keeps its own).
    pub fn succeeded(&self, name: &str) {
        self.lock().remove(&Key::Name(name.to_owned()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_double_per_failure_up_to_the_maximum() {
        assert_eq!(hold_for(0), Duration::ZERO);
        assert_eq!(hold_for(1), FIRST_HOLD);
        assert_eq!(hold_for(2), FIRST_HOLD * 2);
        assert_eq!(hold_for(40), MAX_HOLD);
    }

    #[tokio::test]
    async fn failures_slow_the_name_and_the_address_and_success_clears_the_name() {
        let t = Throttle::default();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(t.hold("w", Some(ip)), Duration::ZERO);
        for _ in 0..3 {
            t.failed("w", Some(ip), "wrong password");
        }
        assert!(t.hold("w", None) > Duration::from_millis(500));
        // A few failures do not hold the address's other names back...
        assert_eq!(t.hold("other", Some(ip)), Duration::ZERO);
        for _ in 0..ADDR_FREE_FAILURES {
            t.failed("w", Some(ip), "wrong password");
        }
        // ...many do.
        assert!(t.hold("other", Some(ip)) > Duration::ZERO);
        assert_eq!(t.hold("other", None), Duration::ZERO);
        // Concurrent attempts under one name are spaced out.
        let first = t.hold("w", None);
        let second = t.hold("w", None);
        assert!(second > first || second == MAX_HOLD, "{first:?} {second:?}");
        t.succeeded("w");
        assert_eq!(t.hold("w", None), Duration::ZERO);
    }
}
