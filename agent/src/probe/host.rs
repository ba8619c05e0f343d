//! The host-level checks: the HAProxy container runs, its admin socket answers, its frontends
//! listen. Made at each report from what the report asks Docker and HAProxy anyway.

use lbfleet_proto::pb;

use crate::haproxy::FrontendStat;

/// A passed check at `at_unix_ms`.
pub fn passed(at_unix_ms: i64) -> pb::ProbeResult {
    pb::ProbeResult { ok: true, error: String::new(), at_unix_ms }
}

/// A failed check, with why.
pub fn failed(error: impl Into<String>, at_unix_ms: i64) -> pb::ProbeResult {
    pb::ProbeResult { ok: false, error: error.into(), at_unix_ms }
}

/// The container check from Docker's answer: found and running.
pub fn container(name: &str, found: Option<bool>, running: bool, at: i64) -> pb::ProbeResult {
    match (found, running) {
        (None, _) => failed("Docker engine not reachable", at),
        (Some(false), _) => failed(format!("container {name} not found"), at),
        (Some(true), false) => failed(format!("container {name} is not running"), at),
        (Some(true), true) => passed(at),
    }
}

/// The frontends check: at least one frontend, every one `OPEN`.
pub fn frontends(frontends: &[FrontendStat], at: i64) -> pb::ProbeResult {
    if frontends.is_empty() {
        return failed("HAProxy has no frontend", at);
    }
    let closed: Vec<String> =
        frontends.iter().filter(|f| f.status != "OPEN").map(|f| format!("{} is {}", f.name, f.status)).collect();
    if closed.is_empty() {
        passed(at)
    } else {
        failed(format!("frontend {}", closed.join(", ")), at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_frontend_must_listen() {
        let open = FrontendStat { name: "http".into(), status: "OPEN".into() };
        let stopped = FrontendStat { name: "stats".into(), status: "STOP".into() };
        assert!(frontends(std::slice::from_ref(&open), 1).ok);
        let result = frontends(&[open, stopped], 1);
        assert_eq!((result.ok, result.error.as_str()), (false, "frontend stats is STOP"));
        assert_eq!(frontends(&[], 1).error, "HAProxy has no frontend");
        assert_eq!(container("lb", Some(true), false, 1).error, "container lb is not running");
        assert!(container("lb", Some(true), true, 1).ok);
        assert!(!container("lb", None, false, 1).ok);
    }
}
