//! Waiting on a condition instead of sleeping a fixed time.

use std::future::Future;
use std::time::Duration;
use std::time::Instant;

/// How often a condition is checked again.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Checks `probe` until it returns `Some`, failing with `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return Ok(value);
        }
        anyhow::ensure!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}
