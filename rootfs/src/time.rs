//! RFC 3339 timestamps from `SystemTime`, and the RFC 2822 dates of Debian `Release` files
//! back to seconds, without a date-time dependency.

use std::time::{SystemTime, UNIX_EPOCH};

/// Formats `t` as RFC 3339 UTC with second precision, e.g. `2024-01-01T00:00:00Z`. Times
/// before 1970 are clamped to the epoch.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX / 2);
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Parses an RFC 2822 date in UTC as Debian's `Release` files write it, e.g.
/// `Sat, 11 Jul 2026 10:16:37 UTC` (the weekday is optional; the zone must be `UTC`, `GMT`,
/// `Z`, `+0000` or `-0000`), to seconds since the epoch. `None` for anything else.
pub(crate) fn parse_rfc2822_utc(s: &str) -> Option<u64> {
    let s = s.trim();
    let s = match s.split_once(',') {
        Some((_, rest)) => rest,
        None => s,
    };
    let mut parts = s.split_whitespace();
    let day: u32 = parts.next()?.parse().ok()?;
    let month = parts.next()?;
    let year: i64 = parts.next()?.parse().ok()?;
    let time = parts.next()?;
    let zone = parts.next()?;
    if parts.next().is_some() || !matches!(zone, "UTC" | "GMT" | "Z" | "+0000" | "-0000") {
        return None;
    }
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = u32::try_from(MONTHS.iter().position(|m| m.eq_ignore_ascii_case(month))?).ok()? + 1;
    let mut hms = time.split(':').map(|p| p.parse::<u64>().ok());
    let (h, m, sec) = (hms.next()??, hms.next()??, hms.next()??);
    if hms.next().is_some() || h > 23 || m > 59 || sec > 60 || !(1..=31).contains(&day) {
        return None;
    }
    let days = u64::try_from(days_from_civil(year, month, day)).ok()?;
    Some(days * 86_400 + h * 3600 + m * 60 + sec)
}

/// A proleptic Gregorian (year, month, day) to days since 1970-01-01; Howard Hinnant's
/// algorithm, the inverse of [`civil_from_days`].
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from(if m > 2 { m - 3 } else { m + 9 });
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day); Howard Hinnant's algorithm.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(secs: u64) -> String {
        rfc3339(UNIX_EPOCH + Duration::from_secs(secs))
    }

    #[test]
    fn formats_known_instants() {
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_704_067_199), "2023-12-31T23:59:59Z");
        assert_eq!(at(1_709_210_096), "2024-02-29T12:34:56Z");
        assert_eq!(at(4_107_542_400), "2100-03-01T00:00:00Z");
    }

    #[test]
    fn parses_release_file_dates() {
        let p = parse_rfc2822_utc;
        assert_eq!(p("Sat, 11 Jul 2026 10:16:37 UTC"), Some(1_783_764_997));
        assert_eq!(p("Thu, 29 Feb 2024 12:34:56 UTC"), Some(1_709_210_096));
        assert_eq!(p("1 Jan 1970 00:00:00 +0000"), Some(0));
        assert_eq!(p("Mon, 01 Jan 2024 00:00:00 GMT"), Some(1_704_067_200));
        assert_eq!(p("Sat, 11 Jul 2026 10:16:37 CEST"), None);
        assert_eq!(p("Sat, 11 Foo 2026 10:16:37 UTC"), None);
        assert_eq!(p("Sat, 11 Jul 2026 25:16:37 UTC"), None);
        assert_eq!(p(""), None);
        for secs in [0, 951_782_400, 1_704_067_199, 4_107_542_400] {
            let formatted = at(secs);
            let (date, time) = formatted
                .trim_end_matches('Z')
                .split_once('T')
                .unwrap_or_default();
            let mut ymd = date.split('-');
            let (y, m, d) = (
                ymd.next().unwrap_or(""),
                ymd.next().unwrap_or(""),
                ymd.next().unwrap_or(""),
            );
            let month = [
                "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
            ][m.parse::<usize>().unwrap_or(1) - 1];
            assert_eq!(
                p(&format!("{d} {month} {y} {time} UTC")),
                Some(secs),
                "{formatted}"
            );
        }
    }
}
