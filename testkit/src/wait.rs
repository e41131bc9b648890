//! Bounded polls: every wait in a test has a deadline, and a missed one names what it waited for.

use std::time::{Duration, Instant};

/// Polls `f` until it returns `Some`, for at most `timeout`; panics naming `what` otherwise. It polls every 25 ms
/// for the first second, then every 100 ms (a long wait should not keep a server busy answering).
pub fn eventually<T>(timeout: Duration, what: &str, f: impl FnMut() -> Option<T>) -> T {
    poll_until(timeout, what, f).unwrap_or_else(|e| panic!("{e}"))
}

/// [`eventually`] for a plain condition.
pub fn eventually_true(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    eventually(timeout, what, || f().then_some(()))
}

/// Polls `cond` until it holds or `timeout` passes; whether it held.
pub fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    poll_until(timeout, "", || cond().then_some(())).is_ok()
}

/// [`eventually`] that gives the miss as an error (benchmarks report it rather than panic).
pub fn poll_until<T>(timeout: Duration, what: &str, f: impl FnMut() -> Option<T>) -> Result<T, String> {
    poll(timeout, what, f, |elapsed| Duration::from_millis(if elapsed < Duration::from_secs(1) { 25 } else { 100 }))
}

/// [`poll_until`] at a fixed pace (a latency benchmark polls every millisecond).
pub fn poll_every<T>(
    timeout: Duration,
    every: Duration,
    what: &str,
    f: impl FnMut() -> Option<T>,
) -> Result<T, String> {
    poll(timeout, what, f, |_| every)
}

fn poll<T>(
    timeout: Duration,
    what: &str,
    mut f: impl FnMut() -> Option<T>,
    pause: impl Fn(Duration) -> Duration,
) -> Result<T, String> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if start.elapsed() >= timeout {
            return Err(format!("timed out after {timeout:?} waiting for: {what}"));
        }
        std::thread::sleep(pause(start.elapsed()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poll_gives_the_value_or_names_what_it_missed() {
        let mut n = 0;
        assert_eq!(
            poll_until(Duration::from_secs(5), "n", || (n > 2).then_some(n).or_else(|| {
                n += 1;
                None
            })),
            Ok(3)
        );
        let missed = poll_until::<()>(Duration::from_millis(60), "the moon", || None).unwrap_err();
        assert!(missed.contains("the moon"), "{missed}");
        assert!(!wait_for(Duration::from_millis(30), || false));
    }
}
