//! Reconnection delays: exponential backoff with jitter, bounded.
//!
//! The delay before attempt `n` (0-based) is drawn uniformly from `[base/2, base]`, where
//! `base = min(max, initial * multiplier^n)` ("equal jitter"). The jitter keeps many nodes that
//! lost the same peer at the same moment from retrying it in lockstep; the half that is not
//! random keeps every node from retrying too early. A peer that stays gone is retried at the
//! maximum interval only.

use std::time::Duration;

/// A bounded exponential backoff policy.
#[derive(Clone, Debug, PartialEq)]
pub struct Backoff {
    /// Upper bound of the first delay.
    pub initial: Duration,
    /// Largest delay.
    pub max: Duration,
    /// Growth per attempt (at least 1).
    pub multiplier: f64,
}

impl Default for Backoff {
    /// 100 ms, doubling, at most 10 s.
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
            multiplier: 2.0,
        }
    }
}

impl Backoff {
    /// The bound of attempt `attempt` before jitter.
    pub fn base(&self, attempt: u32) -> Duration {
        let growth = self.multiplier.max(1.0).powi(attempt.min(64) as i32);
        let secs = (self.initial.as_secs_f64() * growth).min(self.max.as_secs_f64());
        Duration::from_secs_f64(secs.max(0.0))
    }

    /// The delay before attempt `attempt`, jittered with `rng`.
    pub fn delay(&self, attempt: u32, rng: &mut fastrand::Rng) -> Duration {
        let base = self.base(attempt);
        let half = base / 2;
        let spread = (base - half).as_nanos() as u64;
        half + Duration::from_nanos(if spread == 0 { 0 } else { rng.u64(0..=spread) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_then_saturates() {
        let b = Backoff::default();
        assert_eq!(b.base(0), Duration::from_millis(100));
        assert_eq!(b.base(1), Duration::from_millis(200));
        assert_eq!(b.base(3), Duration::from_millis(800));
        assert_eq!(b.base(10), Duration::from_secs(10));
        assert_eq!(b.base(u32::MAX), Duration::from_secs(10));
    }

    #[test]
    fn delays_stay_within_half_and_whole_base() {
        let b = Backoff::default();
        let mut rng = fastrand::Rng::with_seed(7);
        for attempt in 0..20 {
            let base = b.base(attempt);
            for _ in 0..50 {
                let d = b.delay(attempt, &mut rng);
                assert!(d >= base / 2 && d <= base, "{d:?} vs {base:?}");
            }
        }
    }

    #[test]
    fn nodes_do_not_retry_in_lockstep() {
        // Many nodes lose the same peer at once: their first retries spread over the window.
        let b = Backoff::default();
        let delays: Vec<Duration> = (0..100)
            .map(|seed| b.delay(4, &mut fastrand::Rng::with_seed(seed)))
            .collect();
        let min = delays.iter().min().unwrap();
        let max = delays.iter().max().unwrap();
        assert!(*max - *min > b.base(4) / 4, "spread {min:?}..{max:?}");
    }
}
