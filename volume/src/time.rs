//! The UTC timestamp the scripts write (`date +%Y-%m-%d %T %Z` in a UTC container): DynamoDB's `start_time` and
//! `end_time`, and the banner the supervisor writes into a child's log before each attempt. One formatter for
//! both binaries, with no time-zone database.

use std::time::{SystemTime, UNIX_EPOCH};

/// `%Y-%m-%d %H:%M:%S UTC` of a Unix time.
pub fn utc_timestamp(unix_secs: i64) -> String {
    let (year, month, day) = civil(unix_secs.div_euclid(86_400));
    let secs = unix_secs.rem_euclid(86_400);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC", secs / 3600, secs % 3600 / 60, secs % 60)
}

/// RFC 3339 in UTC with milliseconds (`2026-12-02T05:35:46.123Z`) of a Unix time in milliseconds: the stamp of a
/// log line.
pub fn rfc3339_millis(unix_ms: i64) -> String {
    let secs = unix_ms.div_euclid(1000);
    let (year, month, day) = civil(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    let ms = unix_ms.rem_euclid(1000);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{ms:03}Z", s / 3600, s % 3600 / 60, s % 60)
}

/// The Unix time now, in milliseconds (0 on a clock before 1970).
pub fn unix_now_millis() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// (year, month, day) of a count of days since 1970-01-01.
fn civil(days: i64) -> (i64, i64, i64) {
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
    (year, month, day)
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

    #[test]
    fn log_stamps_are_rfc3339_with_milliseconds() {
        assert_eq!(rfc3339_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_millis(1_710_925_321_007), "2024-03-20T09:02:01.007Z");
        assert_eq!(rfc3339_millis(951_825_600_999), "2000-02-29T12:00:00.999Z");
    }
}
