//! Durations in flags and environment variables: `10` (seconds), `1.5`, `250ms`, `10s`, `2m`. Shared by both
//! binaries, so every deadline reads the same way.

use std::time::Duration;

/// Parses `10`, `1.5`, `250ms`, `10s` or `2m`; `None` for anything else (negative, not finite, absurdly large).
pub fn parse(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num.trim().parse().ok()?;
    let secs = v * scale;
    (0.0..1e9).contains(&secs).then(|| Duration::from_secs_f64(secs))
}

/// A clap value parser for durations.
pub fn clap_parser(s: &str) -> Result<Duration, String> {
    parse(s).ok_or_else(|| format!("{s:?} is not a duration (e.g. 10, 250ms, 10s, 2m)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse("10"), Some(Duration::from_secs(10)));
        assert_eq!(parse("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse("2m"), Some(Duration::from_secs(120)));
        for bad in ["", "x", "-1", "inf", "NaN", "1h"] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
