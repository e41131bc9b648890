//! The UTC timestamp the scripts write (`date +%Y-%m-%d %T %Z` in a UTC container): DynamoDB's `start_time` and
//! `end_time`, and the banner the supervisor writes into a child's log before each attempt. One formatter for
//! both binaries, with no time-zone database.

use std::time::{SystemTime, UNIX_EPOCH};

/// `%Y-%m-%d %H:%M:%S UTC` of a Unix time.
pub fn utc_timestamp(unix_secs: i64) -> String {
    let days = unix_secs.div_euclid(86_400);
    let secs = unix_secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC", secs / 3600, secs % 3600 / 60, secs % 60)
}

/// The Unix time now, in whole seconds (0 on a clock before 1970).
pub fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// [`utc_timestamp`] of now.
pub fn now_utc() -> String {
    utc_timestamp(unix_now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_like_date() {
        assert_eq!(utc_timestamp(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc_timestamp(1_710_925_321), "2024-03-20 09:02:01 UTC");
        assert_eq!(utc_timestamp(951_825_600), "2000-02-29 12:00:00 UTC");
        assert_eq!(utc_timestamp(4_102_444_799), "2099-12-31 23:59:59 UTC");
    }
}
