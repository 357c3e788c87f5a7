//! Jittered exponential backoff between reconnection attempts.

use std::time::Duration;

use rand::Rng;

/// First delay after a failure.
pub(crate) const INITIAL_BACKOFF: Duration = Duration::from_millis(100);

/// Doubles from [`INITIAL_BACKOFF`] up to a maximum; each delay is drawn
/// uniformly from the upper half of the current step, so a fleet of workers
/// that lost the gateway at once does not return in lockstep.
#[derive(Debug)]
pub(crate) struct Backoff {
    step: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(max: Duration) -> Self {
        let max = max.max(INITIAL_BACKOFF);
        Self {
            step: INITIAL_BACKOFF,
            max,
        }
    }

    /// Back to the shortest delay (after a successful registration).
    pub fn reset(&mut self) {
        self.step = INITIAL_BACKOFF;
    }

    /// The next delay to wait.
    pub fn next_delay(&mut self) -> Duration {
        let step = self.step;
        self.step = (self.step * 2).min(self.max);
        let half = step / 2;
        half + rand::rng().random_range(Duration::ZERO..=half)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_maximum_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(2));
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(50) && first <= INITIAL_BACKOFF);
        let delays: Vec<_> = (0..10).map(|_| b.next_delay()).collect();
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(2)));
        assert!(delays[9] >= Duration::from_secs(1));
        b.reset();
        assert!(b.next_delay() <= INITIAL_BACKOFF);
    }

    #[test]
    fn a_tiny_maximum_is_respected() {
        let mut b = Backoff::new(Duration::from_millis(1));
        for _ in 0..5 {
            assert!(b.next_delay() <= INITIAL_BACKOFF);
        }
    }
}
