//! Times as people read them in the CLI's output and on the status page.

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// How long ago something happened, coarsely: "<1 s", "42 s", "5 min", "3 h", "2 d".
pub fn age(ms: i64) -> String {
    let secs = ms.max(0) / 1000;
    match secs {
        0 => "<1 s".to_string(),
        1..=119 => format!("{secs} s"),
        120..=7_199 => format!("{} min", secs / 60),
        7_200..=172_799 => format!("{} h", secs / 3600),
        _ => format!("{} d", secs / 86_400),
    }
}

/// Now, in Unix milliseconds.
pub fn unix_now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |since| since.as_millis() as i64)
}

/// A Unix time in ms as RFC 3339 UTC to the second; `-` for none (0 or before 1970).
pub fn utc(unix_ms: i64) -> String {
    if unix_ms <= 0 {
        return "-".to_string();
    }
    OffsetDateTime::from_unix_timestamp(unix_ms.div_euclid(1000))
        .ok()
        .and_then(|at| at.format(&Rfc3339).ok())
        .unwrap_or_else(|| format!("{unix_ms} ms after 1970"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_is_rfc3339_to_the_second_and_a_dash_for_none() {
        assert_eq!(utc(1_764_324_000_999), "2025-11-28T10:00:00Z");
        assert_eq!(utc(0), "-");
        assert_eq!(age(119_999), "119 s");
    }
}
