//! The agent's readiness (`/readyz`): HAProxy answers its runtime API within a short bound, and
//! the version the agent applied is the one it acknowledged, with nothing failing.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::MutexGuard;
use std::time::Duration;

use tokio::time::Instant;

use crate::haproxy::Haproxy;

/// How long HAProxy's runtime API gets to answer a readiness check.
pub const HAPROXY_ANSWER_BOUND: Duration = Duration::from_secs(2);
/// How long an applied version may stay unacknowledged before the agent says it is not ready:
/// beyond the coalesced reload's wait (`reload_min_interval`), a map file write takes this at most.
const ACK_GRACE: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Inner {
    driver: Option<Haproxy>,
    applied: u64,
    acked: u64,
    /// Since when `acked < applied`.
    behind_since: Option<Instant>,
    apply_error: Option<String>,
    file_error: Option<String>,
}

/// What readiness is computed from, updated by the applier and the session.
#[derive(Clone)]
pub struct ReadyState {
    inner: Arc<Mutex<Inner>>,
    grace: Duration,
}

impl ReadyState {
    /// `reload_min_interval` is added to the grace an unacknowledged version gets.
    pub fn new(reload_min_interval: Duration) -> ReadyState {
        ReadyState { inner: Arc::default(), grace: ACK_GRACE + reload_min_interval }
    }

    /// Whether the state can be read at all: the systemd watchdog's liveness check (a lock held
    /// forever would wedge readiness and the applier alike).
    pub async fn responsive(&self) -> bool {
        let state = self.clone();
        tokio::task::spawn_blocking(move || drop(state.lock())).await.is_ok()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The applier holds `version` and drives HAProxy with `driver`; `error` is its last failure.
    pub fn applied(&self, version: u64, driver: Option<Haproxy>, error: Option<String>) {
        let mut inner = self.lock();
        if driver.is_some() {
            inner.driver = driver;
        }
        inner.applied = version;
        inner.apply_error = error;
        let behind = inner.acked < version;
        if !behind {
            inner.behind_since = None;
        } else if inner.behind_since.is_none() {
            inner.behind_since = Some(Instant::now());
        }
    }

    /// The agent acknowledged `version` to the coordinator.
    pub fn acked(&self, version: u64) {
        let mut inner = self.lock();
        inner.acked = inner.acked.max(version);
        inner.file_error = None;
        if inner.acked >= inner.applied {
            inner.behind_since = None;
        }
    }

    /// The map file could not be written (cleared by the next acknowledgement).
    pub fn file_failed(&self, error: String) {
        self.lock().file_error = Some(error);
    }

    /// Ready, with why; or not, with why not.
    pub async fn check(&self) -> Result<String, String> {
        let (driver, applied, acked, behind_since, error) = {
            let inner = self.lock();
            let error = inner.apply_error.clone().or_else(|| inner.file_error.clone());
            (inner.driver.clone(), inner.applied, inner.acked, inner.behind_since, error)
        };
        let Some(driver) = driver else {
            return Err("no state from the coordinator applied yet".into());
        };
        match tokio::time::timeout(HAPROXY_ANSWER_BOUND, driver.show_info()).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => return Err(format!("HAProxy does not answer: {error}")),
            Err(_) => return Err(format!("HAProxy did not answer within {HAPROXY_ANSWER_BOUND:?}")),
        }
        if let Some(error) = error {
            return Err(format!("version {applied}: {error}"));
        }
        verdict(applied, acked, behind_since.map(|since| since.elapsed()), self.grace)
    }
}

/// Whether `applied` is acknowledged, given how long it has not been (`behind_for`).
fn verdict(applied: u64, acked: u64, behind_for: Option<Duration>, grace: Duration) -> Result<String, String> {
    match behind_for {
        Some(behind) if acked < applied && behind > grace => Err(format!(
            "version {applied} applied but not acknowledged for {:.0}s (acknowledged: {acked})",
            behind.as_secs_f64()
        )),
        _ => Ok(format!("HAProxy answers; version {applied} applied, {acked} acknowledged")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unacknowledged_version_is_tolerated_for_the_grace_only() {
        let grace = Duration::from_secs(12);
        assert!(verdict(5, 5, None, grace).is_ok());
        assert!(verdict(6, 5, Some(Duration::from_secs(1)), grace).is_ok());
        let err = verdict(6, 5, Some(Duration::from_secs(13)), grace).unwrap_err();
        assert_eq!(err, "version 6 applied but not acknowledged for 13s (acknowledged: 5)");
    }

    #[tokio::test]
    async fn nothing_applied_is_not_ready() {
        let state = ReadyState::new(Duration::ZERO);
        assert_eq!(state.check().await.unwrap_err(), "no state from the coordinator applied yet");
        state.applied(3, None, None);
        state.acked(3);
        assert!(state.lock().behind_since.is_none());
    }
}
