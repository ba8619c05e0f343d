//! The one retry backoff of lbfleet's clients: exponential, capped, with jitter so that many
//! agents or CLIs that lost the same coordinator do not come back in step.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::time::Duration;

/// Delays between attempts: `min`, doubling up to `max`, each stretched by up to half again at random.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// A backoff that starts at `min` and never waits longer than `max` (plus its jitter).
    pub fn new(min: Duration, max: Duration) -> Backoff {
        let max = max.max(min);
        Backoff { min, max, next: min }
    }

    /// The delay before the next attempt; each call doubles the base for the one after.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        base + base.mul_f64(jitter_fraction() / 2.0)
    }

    /// Starts over from `min`, after an attempt that got somewhere.
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

/// A fraction in [0, 1), different on every call; `RandomState` draws fresh keys each time.
fn jitter_fraction() -> f64 {
    let bits = RandomState::new().hash_one(std::time::Instant::now());
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_with_bounded_jitter() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(700));
        let bases = [100, 200, 400, 700, 700];
        for base in bases {
            let delay = backoff.next_delay();
            let base = Duration::from_millis(base);
            assert!(delay >= base && delay <= base + base / 2, "{delay:?} for base {base:?}");
        }
        backoff.reset();
        assert!(backoff.next_delay() < Duration::from_millis(151));
    }

    #[test]
    fn jitter_spreads_delays() {
        let delays: std::collections::BTreeSet<Duration> =
            (0..20).map(|_| Backoff::new(Duration::from_secs(1), Duration::from_secs(1)).next_delay()).collect();
        assert!(delays.len() > 10, "delays barely differ: {delays:?}");
    }
}
