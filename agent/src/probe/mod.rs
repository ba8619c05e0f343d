//! The agent's own checks of its host, beyond HAProxy's server checks: the container, the admin
//! socket and the frontends (`host`), and end-to-end probes (`http`): one request through this
//! host's HAProxy with a bound FQDN as `Host`, answered by a node of the bound shard. Probes run
//! after a bind is applied (`sample::MAX_BIND_PROBES` at most per delta) and every
//! `probe_interval` for a sample of the map; results go into the agent's reports and metrics.

pub mod host;
pub mod http;
pub mod sample;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::MutexGuard;
use std::time::Duration;
use std::time::SystemTime;

use futures::future::join_all;
use lbfleet_proto::pb;
use tokio::sync::Notify;
use tracing::debug;
use tracing::warn;

use crate::metrics::AgentMetrics;
pub use sample::ProbeTarget;

/// Bound on one end-to-end probe, connection to answer.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// End-to-end probes kept for reports, newest last.
pub const PROBE_WINDOW: usize = 32;

/// Why an end-to-end probe ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Bind,
    Sample,
    /// Asked by the coordinator for `bind --verify`.
    Verify,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::Bind => "bind",
            Trigger::Sample => "sample",
            Trigger::Verify => "verify",
        }
    }
}

#[derive(Default)]
struct Window {
    container: Option<pb::ProbeResult>,
    admin_socket: Option<pb::ProbeResult>,
    frontends: Option<pb::ProbeResult>,
    fqdns: VecDeque<pb::FqdnProbe>,
    total: u64,
    failed: u64,
}

struct Inner {
    address: String,
    metrics: Arc<AgentMetrics>,
    window: Mutex<Window>,
    finished: Notify,
}

/// Runs the probes and keeps their latest results; cheap to clone.
#[derive(Clone)]
pub struct Prober {
    inner: Arc<Inner>,
}

impl Prober {
    /// Probes through HAProxy's frontend at `address` (`host:port`).
    pub fn new(address: String, metrics: Arc<AgentMetrics>) -> Prober {
        Prober { inner: Arc::new(Inner { address, metrics, window: Mutex::default(), finished: Notify::new() }) }
    }

    fn window(&self) -> MutexGuard<'_, Window> {
        self.inner.window.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Probes `targets` in the background, all at once, at state `version`; `finished` fires when
    /// they are all recorded.
    pub fn spawn(&self, targets: Vec<ProbeTarget>, version: u64, trigger: Trigger) {
        if targets.is_empty() {
            return;
        }
        let prober = self.clone();
        tokio::spawn(async move {
            let probes = join_all(targets.iter().map(|target| prober.probe(target, version, trigger))).await;
            for probe in probes {
                prober.record(probe, trigger);
            }
            prober.inner.finished.notify_one();
        });
    }

    /// Fires once after each batch of end-to-end probes is recorded (a permit waits if nobody listens).
    pub async fn finished(&self) {
        self.inner.finished.notified().await
    }

    async fn probe(&self, target: &ProbeTarget, version: u64, trigger: Trigger) -> pb::FqdnProbe {
        let expected = target.expected_shard().to_owned();
        let answer = http::get(&self.inner.address, &target.fqdn, PROBE_TIMEOUT).await;
        judge(&target.fqdn, expected, answer, version, trigger, unix_ms())
    }

    fn record(&self, probe: pb::FqdnProbe, trigger: Trigger) {
        let result = match (probe.ok, probe.served_shard.is_empty()) {
            (true, _) => "ok",
            (false, false) => "wrong_shard",
            (false, true) => "error",
        };
        self.inner.metrics.fqdn_probe(trigger.as_str(), result);
        // Passing probes are routine (a bulk import makes 16 per change); failures are news.
        if probe.ok {
            debug!(fqdn = %probe.fqdn, shard = %probe.served_shard, node = %probe.served_by, version = probe.version, trigger = trigger.as_str(), "probe ok");
        } else {
            warn!(fqdn = %probe.fqdn, expected = %probe.expected_shard, error = %probe.error, version = probe.version, trigger = trigger.as_str(), "probe failed");
        }
        let mut window = self.window();
        window.total += 1;
        window.failed += u64::from(!probe.ok);
        // One entry per FQDN: the newest probe of it replaces older ones, so a bind's probe stays
        // visible through a burst of others.
        window.fqdns.retain(|p| p.fqdn != probe.fqdn);
        if window.fqdns.len() == PROBE_WINDOW {
            window.fqdns.pop_front();
        }
        window.fqdns.push_back(probe);
    }

    /// Records the host-level checks made for a report.
    pub fn host_checks(&self, container: pb::ProbeResult, admin_socket: pb::ProbeResult, frontends: pb::ProbeResult) {
        let metrics = &self.inner.metrics;
        metrics.host_probe("container", container.ok);
        metrics.host_probe("admin_socket", admin_socket.ok);
        metrics.host_probe("frontends", frontends.ok);
        let mut window = self.window();
        window.container = Some(container);
        window.admin_socket = Some(admin_socket);
        window.frontends = Some(frontends);
    }

    /// The latest results, for a report.
    pub fn snapshot(&self) -> pb::HostProbes {
        let window = self.window();
        pb::HostProbes {
            container: window.container.clone(),
            admin_socket: window.admin_socket.clone(),
            frontends: window.frontends.clone(),
            fqdns: window.fqdns.iter().cloned().collect(),
            fqdn_probes: window.total,
            fqdn_probes_failed: window.failed,
        }
    }
}

/// The probe of `fqdn` from its answer: ok when a node of the `expected` shard answered.
fn judge(
    fqdn: &str,
    expected: String,
    answer: Result<http::Answer, http::ProbeError>,
    version: u64,
    trigger: Trigger,
    at_unix_ms: i64,
) -> pb::FqdnProbe {
    let mut probe = pb::FqdnProbe {
        fqdn: fqdn.to_owned(),
        expected_shard: expected,
        version,
        trigger: trigger.as_str().to_owned(),
        at_unix_ms,
        ..Default::default()
    };
    match answer {
        Err(error) => probe.error = error.to_string(),
        Ok(answer) => {
            probe.http_status = u32::from(answer.status);
            probe.served_shard = answer.shard;
            probe.served_by = answer.served_by;
            probe.error = if probe.served_shard.is_empty() {
                format!("HTTP {} without X-Shard: no node of the shard answered", answer.status)
            } else if probe.served_shard != probe.expected_shard {
                format!(
                    "served by shard {} (node {}), expected {}",
                    probe.served_shard,
                    if probe.served_by.is_empty() { "?" } else { &probe.served_by },
                    probe.expected_shard
                )
            } else if answer.status >= 500 {
                format!("HTTP {} from shard {}", answer.status, probe.served_shard)
            } else {
                String::new()
            };
            probe.ok = probe.error.is_empty();
        }
    }
    probe
}

fn unix_ms() -> i64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, shard: &str, node: &str) -> Result<http::Answer, http::ProbeError> {
        Ok(http::Answer { status, shard: shard.into(), served_by: node.into() })
    }

    #[test]
    fn a_probe_passes_only_when_the_bound_shard_answers() {
        let ok = judge("a.com", "web-1".into(), answer(200, "web-1", "n0"), 7, Trigger::Bind, 1);
        assert!(ok.ok && ok.error.is_empty(), "{ok:?}");
        assert_eq!((ok.version, ok.trigger.as_str(), ok.served_by.as_str()), (7, "bind", "n0"));
        let wrong = judge("a.com", "web-1".into(), answer(200, "web-2", "n9"), 7, Trigger::Sample, 1);
        assert!(!wrong.ok);
        assert_eq!(wrong.error, "served by shard web-2 (node n9), expected web-1");
        let none = judge("a.com", "web-1".into(), answer(503, "", ""), 7, Trigger::Bind, 1);
        assert_eq!((none.ok, none.http_status), (false, 503));
        assert!(none.error.contains("without X-Shard"), "{}", none.error);
        let broken = judge("a.com", "web-1".into(), answer(502, "web-1", "n0"), 7, Trigger::Bind, 1);
        assert!(!broken.ok);
        let err = Err(http::ProbeError::Timeout { address: "x:80".into(), after: PROBE_TIMEOUT });
        let silent = judge("a.com", "web-1".into(), err, 7, Trigger::Bind, 1);
        assert!(!silent.ok && silent.error.starts_with("no answer from x:80"), "{silent:?}");
    }

    #[test]
    fn the_window_keeps_the_newest_probe_of_each_fqdn() {
        let prober = Prober::new("127.0.0.1:1".into(), Arc::new(AgentMetrics::new()));
        for i in 0..PROBE_WINDOW + 5 {
            let probe = judge(&format!("f{i}.com"), "s".into(), answer(200, "s", "n"), 1, Trigger::Sample, 1);
            prober.record(probe, Trigger::Sample);
        }
        let wrong = judge("f40.com", "s".into(), answer(200, "t", "n"), 2, Trigger::Bind, 1);
        prober.record(wrong, Trigger::Bind);
        let again = judge("f40.com", "s".into(), answer(200, "s", "n"), 3, Trigger::Bind, 1);
        prober.record(again, Trigger::Bind);
        let snapshot = prober.snapshot();
        assert_eq!(snapshot.fqdns.len(), PROBE_WINDOW);
        assert_eq!((snapshot.fqdn_probes, snapshot.fqdn_probes_failed), (PROBE_WINDOW as u64 + 7, 1));
        let last = snapshot.fqdns.last().unwrap();
        assert_eq!((last.fqdn.as_str(), last.version, last.ok), ("f40.com", 3, true));
        assert_eq!(snapshot.fqdns.iter().filter(|p| p.fqdn == "f40.com").count(), 1);
    }

    #[tokio::test]
    async fn probes_run_through_a_frontend_and_signal_when_done() {
        use tokio::io::AsyncReadExt;
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        // A frontend whose only node belongs to shard web-2, whatever the Host.
        let server = tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                let mut request = [0u8; 1024];
                let _ = socket.read(&mut request).await;
                let answer =
                    "HTTP/1.1 200 OK\r\nX-Shard: web-2\r\nX-Served-By: web-2-node-0\r\nContent-Length: 0\r\n\r\n";
                let _ = socket.write_all(answer.as_bytes()).await;
            }
        });
        let prober = Prober::new(address, Arc::new(AgentMetrics::new()));
        let targets = vec![
            ProbeTarget { fqdn: "a.com".into(), backend: "shard-web-2".into() },
            ProbeTarget { fqdn: "b.com".into(), backend: "shard-web-1".into() },
        ];
        prober.spawn(targets, 9, Trigger::Bind);
        tokio::time::timeout(Duration::from_secs(10), prober.finished()).await.expect("probes finished");
        let snapshot = prober.snapshot();
        let by = |fqdn: &str| snapshot.fqdns.iter().find(|p| p.fqdn == fqdn).cloned().unwrap();
        assert!(by("a.com").ok);
        assert_eq!((by("b.com").ok, by("b.com").served_shard.as_str()), (false, "web-2"));
        server.abort();
    }
}
