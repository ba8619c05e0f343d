//! Times as people read them in the CLI's output and on the status page.

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
