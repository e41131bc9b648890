//! Retry delays for remote calls: exponential backoff with full jitter.
//!
//! `backoff` is unmaintained (RUSTSEC-2025-0012); its successor `backon` gives the capped exponential schedule.
//! backon's own jitter adds `[0, d)` on top of `d`; we want *full* jitter, a uniform draw in `[0, d]`, which
//! spreads the retries of many clients best (AWS Architecture Blog, "Exponential Backoff And Jitter").

use backon::{BackoffBuilder, ExponentialBuilder};
use std::time::Duration;

/// The retry policy of one remote call.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub min_delay: Duration,
    pub max_delay: Duration,
    /// Retries after the first try.
    pub max_retries: usize,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { min_delay: Duration::from_millis(500), max_delay: Duration::from_secs(8), max_retries: 4 }
    }
}

impl RetryPolicy {
    /// The delays before each retry, fully jittered.
    pub fn delays(&self) -> impl Iterator<Item = Duration> + use<> {
        ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_max_times(self.max_retries)
            .build()
            .map(|d| d.mul_f64(fastrand::f64()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_are_bounded_by_the_exponential_schedule() {
        let p = RetryPolicy::default();
        for _ in 0..100 {
            let d: Vec<Duration> = p.delays().collect();
            assert_eq!(d.len(), 4);
            let caps = [0.5, 1.0, 2.0, 4.0];
            for (got, cap) in d.iter().zip(caps) {
                assert!(got.as_secs_f64() <= cap + 1e-9, "{got:?} > {cap}");
            }
        }
        // Full jitter: over many draws some delays are far below the cap.
        assert!((0..200).any(|_| p.delays().next().unwrap() < Duration::from_millis(100)));
    }
}
