//! The EvalAI request budget of one submission.
//!
//! EvalAI throttles each host token to 60 requests in any 60 s (a sliding window, shared by every concurrent
//! submission, spec section 5). Upstream's logcopy spends 12 a minute per submission and ignores the 429s that
//! follow. We cap our own submission at `rpm` requests in any 60 s with the same sliding window, so our own
//! traffic alone can never be throttled, and a 429 from the server pauses every request until its Retry-After.

use std::collections::VecDeque;
use std::time::Duration;
use tokio::time::Instant;

const WINDOW: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct Budget {
    per_window: usize,
    sent: VecDeque<Instant>,
    paused_until: Option<Instant>,
}

impl Budget {
    pub fn new(rpm: u32) -> Self {
        Budget { per_window: rpm.max(1) as usize, sent: VecDeque::new(), paused_until: None }
    }

    fn expire(&mut self, now: Instant) {
        while self.sent.front().is_some_and(|t| *t + WINDOW <= now) {
            self.sent.pop_front();
        }
    }

    /// The earliest instant at which `n` requests fit in the window (and no pause is in force).
    pub fn ready_at(&mut self, now: Instant, n: usize) -> Instant {
        self.expire(now);
        let n = n.clamp(1, self.per_window);
        let by_window = if self.sent.len() + n <= self.per_window {
            now
        } else {
            // The request that must leave the window first to make room for `n`.
            self.sent[self.sent.len() + n - self.per_window - 1] + WINDOW
        };
        by_window.max(self.paused_until.unwrap_or(now))
    }

    /// Records a request sent at `now`.
    pub fn spend(&mut self, now: Instant) {
        self.expire(now);
        self.sent.push_back(now);
    }

    /// Takes the whole window as spent at `now` (a sink that restarts knows nothing of what was sent before).
    pub fn spend_all(&mut self, now: Instant) {
        self.expire(now);
        while self.sent.len() < self.per_window {
            self.sent.push_back(now);
        }
    }

    /// The server said 429: nothing is sent before `until`.
    pub fn pause_until(&mut self, until: Instant) {
        self.paused_until = Some(self.paused_until.map_or(until, |p| p.max(until)));
    }

    /// Requests allowed in any 60 s.
    pub fn limit(&self) -> usize {
        self.per_window
    }

    /// Requests sent in the last 60 s.
    pub fn used(&mut self, now: Instant) -> usize {
        self.expire(now);
        self.sent.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn never_more_than_rpm_in_any_window() {
        let t0 = Instant::now();
        let mut b = Budget::new(6);
        for i in 0..6 {
            let t = t0 + Duration::from_secs(i);
            assert_eq!(b.ready_at(t, 1), t);
            b.spend(t);
        }
        // The 7th waits until the first leaves the window.
        let t = t0 + Duration::from_secs(10);
        assert_eq!(b.ready_at(t, 1), t0 + WINDOW);
        // A GET+PUT pair waits for two to leave.
        assert_eq!(b.ready_at(t, 2), t0 + Duration::from_secs(61));
        assert_eq!(b.used(t0 + Duration::from_secs(60)), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_pauses_everything() {
        let t0 = Instant::now();
        let mut b = Budget::new(60);
        b.pause_until(t0 + Duration::from_secs(37));
        assert_eq!(b.ready_at(t0, 1), t0 + Duration::from_secs(37));
        b.pause_until(t0 + Duration::from_secs(5));
        assert_eq!(b.ready_at(t0, 1), t0 + Duration::from_secs(37), "a shorter pause does not cut a longer one");
        assert_eq!(b.ready_at(t0 + Duration::from_secs(40), 1), t0 + Duration::from_secs(40));
    }

    #[tokio::test(start_paused = true)]
    async fn a_restart_waits_a_full_window() {
        let t0 = Instant::now();
        let mut b = Budget::new(6);
        b.spend(t0);
        b.spend_all(t0 + Duration::from_secs(5));
        assert_eq!(b.used(t0 + Duration::from_secs(5)), 6);
        assert_eq!(b.ready_at(t0 + Duration::from_secs(5), 2), t0 + Duration::from_secs(65));
    }
}
