//! Soft state about the agents whose streams this node serves: not in the Raft log.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::MutexGuard;
use std::time::Duration;
use std::time::Instant;

use futures::future::join_all;
use lbfleet_proto::pb;
use tokio::sync::mpsc;
use tokio::sync::oneshot;
use tokio::sync::watch;

/// How long `bind --verify` waits for a host's own probe before asking it for one, and between asks.
const PROBE_GRACE: Duration = Duration::from_secs(1);

/// A request for an agent's report, answered through `reply`.
pub struct ReportAsk {
    pub include_map: bool,
    /// FQDNs the agent should probe end to end now (`bind --verify`).
    pub probe_fqdns: Vec<String>,
    pub reply: oneshot::Sender<pb::AgentReport>,
}

/// What this node knows about one agent.
struct AgentEntry {
    cluster: String,
    /// Identifies the stream, so a stale stream's end does not disconnect its successor.
    session: u64,
    connected: bool,
    acked: u64,
    nacked: Option<(u64, String)>,
    /// NACKs received since this node started, for the metrics.
    nacks: u64,
    last_seen: Instant,
    report: Option<pb::AgentReport>,
    asks: Option<mpsc::Sender<ReportAsk>>,
}

/// The agents of every stream this node serves or served.
pub struct AgentRegistry {
    node_id: u64,
    agents: Mutex<HashMap<String, AgentEntry>>,
    next_session: Mutex<u64>,
    /// Bumped on every acknowledgement, for waiters.
    acks: watch::Sender<u64>,
}

/// Identifies one registered stream.
#[derive(Debug, Clone)]
pub struct SessionHandle {
    pub host: String,
    pub session: u64,
}

impl AgentRegistry {
    /// An empty registry of node `node_id`.
    pub fn new(node_id: u64) -> AgentRegistry {
        AgentRegistry {
            node_id,
            agents: Mutex::new(HashMap::new()),
            next_session: Mutex::new(0),
            acks: watch::channel(0).0,
        }
    }

    fn agents(&self) -> MutexGuard<'_, HashMap<String, AgentEntry>> {
        self.agents.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers a new stream for `host`, replacing any older one.
    pub fn connect(&self, host: &str, cluster: &str, asks: mpsc::Sender<ReportAsk>) -> SessionHandle {
        let session = {
            let mut next = self.next_session.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            *next += 1;
            *next
        };
        let mut agents = self.agents();
        let entry = agents.entry(host.to_string()).or_insert_with(|| AgentEntry {
            cluster: cluster.to_string(),
            session,
            connected: true,
            acked: 0,
            nacked: None,
            nacks: 0,
            last_seen: Instant::now(),
            report: None,
            asks: None,
        });
        entry.cluster = cluster.to_string();
        entry.session = session;
        entry.connected = true;
        entry.last_seen = Instant::now();
        entry.asks = Some(asks);
        SessionHandle { host: host.to_string(), session }
    }

    /// Marks the stream closed, unless a newer stream of the same host replaced it.
    pub fn disconnect(&self, handle: &SessionHandle) {
        if let Some(entry) = self.agents().get_mut(&handle.host) {
            if entry.session == handle.session {
                entry.connected = false;
                entry.asks = None;
            }
        }
        self.acks.send_modify(|n| *n += 1);
    }

    /// Runs `update` on the entry of a live session.
    fn with_entry(&self, handle: &SessionHandle, update: impl FnOnce(&mut AgentEntry)) {
        if let Some(entry) = self.agents().get_mut(&handle.host) {
            if entry.session == handle.session {
                entry.last_seen = Instant::now();
                update(entry);
            }
        }
    }

    /// Any message from the agent proves it alive.
    pub fn seen(&self, handle: &SessionHandle) {
        self.with_entry(handle, |_| {});
    }

    /// The agent applied `version`.
    pub fn ack(&self, handle: &SessionHandle, version: u64) {
        self.with_entry(handle, |entry| {
            entry.acked = entry.acked.max(version);
            if entry.nacked.as_ref().is_some_and(|(v, _)| *v <= version) {
                entry.nacked = None;
            }
        });
        self.acks.send_modify(|n| *n += 1);
    }

    /// The agent could not apply `version`.
    pub fn nack(&self, handle: &SessionHandle, version: u64, error: String) {
        self.with_entry(handle, |entry| {
            entry.nacked = Some((version, error));
            entry.nacks += 1;
        });
        self.acks.send_modify(|n| *n += 1);
    }

    /// Keeps the agent's latest report (without its map, which is only passed on to the asker).
    pub fn report(&self, handle: &SessionHandle, report: &pb::AgentReport) {
        let mut kept = report.clone();
        kept.map.clear();
        kept.has_map = false;
        self.with_entry(handle, |entry| entry.report = Some(kept));
        // `bind --verify` waits for the probes in reports.
        self.acks.send_modify(|n| *n += 1);
    }

    /// How long ago the agent of `handle` last said anything.
    pub fn silent_for(&self, handle: &SessionHandle) -> Option<Duration> {
        self.agents().get(&handle.host).filter(|e| e.session == handle.session).map(|e| e.last_seen.elapsed())
    }

    /// The status of one host's agent, if it ever connected here; `version` is the current state version.
    pub fn status(&self, host: &str, version: u64) -> Option<pb::AgentStatus> {
        self.agents().get(host).map(|entry| self.status_of(host, entry, version))
    }

    /// Every known agent's status.
    pub fn all(&self, version: u64) -> Vec<pb::AgentStatus> {
        let agents = self.agents();
        let mut all: Vec<pb::AgentStatus> =
            agents.iter().map(|(host, entry)| self.status_of(host, entry, version)).collect();
        all.sort_by(|a, b| a.host.cmp(&b.host));
        all
    }

    fn status_of(&self, host: &str, entry: &AgentEntry, version: u64) -> pb::AgentStatus {
        let (nacked_version, nack_error) = entry.nacked.clone().unwrap_or_default();
        pb::AgentStatus {
            host: host.to_string(),
            cluster: entry.cluster.clone(),
            connected: entry.connected,
            acked_version: entry.acked,
            lag: version.saturating_sub(entry.acked),
            nacked_version,
            nack_error,
            last_seen_ms_ago: entry.last_seen.elapsed().as_millis() as u64,
            has_report: entry.report.is_some(),
            report: entry.report.clone(),
            served_by: self.node_id,
        }
    }

    /// Every known host with the NACKs its agent sent to this node since it started.
    pub fn nacks(&self) -> Vec<(String, u64)> {
        let mut nacks: Vec<(String, u64)> = self.agents().iter().map(|(host, e)| (host.clone(), e.nacks)).collect();
        nacks.sort();
        nacks
    }

    /// Waits until every host in `hosts` is connected and acknowledged `version`, or `timeout` passes.
    pub async fn wait_acked(&self, hosts: &[String], version: u64, timeout: Duration) -> (bool, Vec<pb::HostProgress>) {
        self.wait_verified(hosts, version, None, timeout).await
    }

    /// `wait_acked`, and with `verify` (FQDN, shard) until every host also reported an end-to-end
    /// probe of the FQDN at `version` or later served by that shard. A host that acknowledged but
    /// has no such probe after `PROBE_GRACE` (a bind's own probe comes by itself; an unchanged
    /// binding's does not) is asked to probe, again every `PROBE_GRACE` while one fails (a server
    /// still coming up). Returns early, not done, once every host probed and one of them was
    /// answered by another shard: that is no transient.
    pub async fn wait_verified(
        &self,
        hosts: &[String],
        version: u64,
        verify: Option<(&str, &str)>,
        timeout: Duration,
    ) -> (bool, Vec<pb::HostProgress>) {
        let mut changes = self.acks.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        let mut next_ask = tokio::time::Instant::now() + PROBE_GRACE;
        loop {
            let mut progress = self.progress(hosts);
            let acked = |p: &pb::HostProgress| p.connected && p.acked_version >= version;
            let Some((fqdn, shard)) = verify else {
                if progress.iter().all(acked) {
                    return (true, progress);
                }
                if tokio::time::timeout_at(deadline, changes.changed()).await.is_err() {
                    return (false, progress);
                }
                continue;
            };
            self.attach_probes(&mut progress, fqdn, version);
            let served = |p: &pb::HostProgress| p.probe.as_ref().is_some_and(|probe| probe_served(probe, shard));
            if progress.iter().all(|p| acked(p) && served(p)) {
                return (true, progress);
            }
            let wrong_shard =
                |p: &pb::HostProgress| p.probe.as_ref().is_some_and(|probe| probe_wrong_shard(probe, shard));
            if progress.iter().all(|p| acked(p) && p.has_probe) && progress.iter().any(wrong_shard) {
                return (false, progress);
            }
            let now = tokio::time::Instant::now();
            if now >= next_ask {
                next_ask = now + PROBE_GRACE;
                let unserved = progress.iter().filter(|p| acked(p) && !served(p));
                join_all(unserved.map(|p| self.ask_probe(&p.host, fqdn, PROBE_GRACE))).await;
            }
            let wake = deadline.min(next_ask);
            if tokio::time::timeout_at(wake, changes.changed()).await.is_err() && wake >= deadline {
                return (false, progress);
            }
        }
    }

    /// Each host's latest probe of `fqdn` made at `version` or later, from its latest report.
    fn attach_probes(&self, progress: &mut [pb::HostProgress], fqdn: &str, version: u64) {
        let agents = self.agents();
        for host in progress {
            let probes = agents.get(&host.host).and_then(|e| e.report.as_ref()).and_then(|r| r.probes.as_ref());
            host.probe = probes.and_then(|probes| {
                probes.fqdns.iter().rev().find(|p| p.fqdn.eq_ignore_ascii_case(fqdn) && p.version >= version).cloned()
            });
            host.has_probe = host.probe.is_some();
        }
    }

    fn progress(&self, hosts: &[String]) -> Vec<pb::HostProgress> {
        let agents = self.agents();
        hosts
            .iter()
            .map(|host| match agents.get(host) {
                Some(entry) => {
                    let (nacked_version, nack_error) = entry.nacked.clone().unwrap_or_default();
                    pb::HostProgress {
                        host: host.clone(),
                        connected: entry.connected,
                        acked_version: entry.acked,
                        nacked_version,
                        nack_error,
                        ..Default::default()
                    }
                }
                None => pb::HostProgress { host: host.clone(), ..Default::default() },
            })
            .collect()
    }

    /// Asks a connected agent for a fresh report; `None` if it is not connected or does not answer in time.
    /// The whole ask is bounded: a session too busy to take the question counts as no answer.
    pub async fn ask_report(&self, host: &str, include_map: bool, timeout: Duration) -> Option<pb::AgentReport> {
        self.ask(host, include_map, Vec::new(), timeout).await
    }

    /// Asks a connected agent to probe `fqdn` end to end now; the result comes in the report the
    /// agent sends when the probe finishes. `false` if the agent did not take the question in time.
    pub async fn ask_probe(&self, host: &str, fqdn: &str, timeout: Duration) -> bool {
        self.ask(host, false, vec![fqdn.to_string()], timeout).await.is_some()
    }

    async fn ask(
        &self,
        host: &str,
        include_map: bool,
        probe_fqdns: Vec<String>,
        timeout: Duration,
    ) -> Option<pb::AgentReport> {
        let asks = self.agents().get(host).and_then(|e| e.asks.clone())?;
        let (reply, answer) = oneshot::channel();
        let ask = async move {
            asks.send(ReportAsk { include_map, probe_fqdns, reply }).await.ok()?;
            answer.await.ok()
        };
        tokio::time::timeout(timeout, ask).await.ok()?
    }
}

/// Whether `probe` found the FQDN served by `shard`.
fn probe_served(probe: &pb::FqdnProbe, shard: &str) -> bool {
    probe.ok && probe.served_shard == shard
}

/// Whether a node of another shard answered `probe`.
fn probe_wrong_shard(probe: &pb::FqdnProbe, shard: &str) -> bool {
    !probe.served_shard.is_empty() && probe.served_shard != shard
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report_with_probe(fqdn: &str, version: u64, served: &str) -> pb::AgentReport {
        let probe = pb::FqdnProbe {
            fqdn: fqdn.into(),
            expected_shard: "web-1".into(),
            served_shard: served.into(),
            ok: served == "web-1",
            version,
            ..Default::default()
        };
        let probes = pb::HostProbes { fqdns: vec![probe], ..Default::default() };
        pb::AgentReport { probes: Some(probes), has_probes: true, ..Default::default() }
    }

    #[tokio::test]
    async fn verify_waits_for_a_probe_at_the_version_from_the_right_shard() {
        let registry = std::sync::Arc::new(AgentRegistry::new(1));
        let (tx, _rx) = mpsc::channel(1);
        let a = registry.connect("a", "c", tx.clone());
        let b = registry.connect("b", "c", tx);
        let hosts = vec!["a".to_string(), "b".to_string()];
        registry.ack(&a, 5);
        registry.ack(&b, 5);
        // An older probe does not count.
        registry.report(&a, &report_with_probe("x.com", 4, "web-1"));
        let verify = Some(("x.com", "web-1"));
        let (done, progress) = registry.wait_verified(&hosts, 5, verify, Duration::from_millis(10)).await;
        assert!(!done && !progress[0].has_probe);
        let waiter = {
            let (registry, hosts) = (registry.clone(), hosts.clone());
            tokio::spawn(async move {
                registry.wait_verified(&hosts, 5, Some(("x.com", "web-1")), Duration::from_secs(5)).await
            })
        };
        registry.report(&a, &report_with_probe("x.com", 5, "web-1"));
        registry.report(&b, &report_with_probe("X.com", 6, "web-1"));
        let (done, progress) = waiter.await.unwrap();
        assert!(done);
        assert_eq!(progress[1].probe.as_ref().unwrap().version, 6);
    }

    #[tokio::test(start_paused = true)]
    async fn verify_asks_a_silent_host_to_probe_and_retries_a_failed_probe() {
        let registry = std::sync::Arc::new(AgentRegistry::new(1));
        let (tx, mut asks) = mpsc::channel(4);
        let a = registry.connect("a", "c", tx);
        registry.ack(&a, 5);
        let waiter = {
            let registry = registry.clone();
            tokio::spawn(async move {
                registry.wait_verified(&["a".to_string()], 5, Some(("x.com", "web-1")), Duration::from_secs(30)).await
            })
        };
        // The binding did not change, so no probe comes by itself: the wait asks for one.
        let ask = asks.recv().await.expect("an ask to probe");
        assert_eq!(ask.probe_fqdns, ["x.com"]);
        let _ = ask.reply.send(pb::AgentReport::default());
        // A probe that no node answered (a server still coming up) is no reason to give up.
        registry.report(&a, &report_with_probe("x.com", 5, ""));
        let ask = asks.recv().await.expect("asked again");
        let _ = ask.reply.send(pb::AgentReport::default());
        registry.report(&a, &report_with_probe("x.com", 5, "web-1"));
        let (done, progress) = waiter.await.unwrap();
        assert!(done, "{progress:?}");
    }

    #[tokio::test]
    async fn verify_ends_early_on_a_wrong_shard() {
        let registry = AgentRegistry::new(1);
        let (tx, _rx) = mpsc::channel(1);
        let a = registry.connect("a", "c", tx);
        registry.ack(&a, 5);
        registry.report(&a, &report_with_probe("x.com", 5, "web-2"));
        let started = Instant::now();
        let (done, progress) =
            registry.wait_verified(&["a".to_string()], 5, Some(("x.com", "web-1")), Duration::from_secs(30)).await;
        assert!(!done && started.elapsed() < Duration::from_secs(5));
        assert_eq!(progress[0].probe.as_ref().unwrap().served_shard, "web-2");
    }

    #[tokio::test]
    async fn wait_returns_when_every_host_acked() {
        let registry = std::sync::Arc::new(AgentRegistry::new(1));
        let (tx, _rx) = mpsc::channel(1);
        let a = registry.connect("a", "c", tx.clone());
        let b = registry.connect("b", "c", tx);
        let hosts = vec!["a".to_string(), "b".to_string()];
        registry.ack(&a, 5);
        let (done, progress) = registry.wait_acked(&hosts, 5, Duration::from_millis(10)).await;
        assert!(!done);
        assert_eq!(progress[1].acked_version, 0);
        let waiter = {
            let registry = registry.clone();
            let hosts = hosts.clone();
            tokio::spawn(async move { registry.wait_acked(&hosts, 5, Duration::from_secs(5)).await })
        };
        registry.ack(&b, 6);
        let (done, _) = waiter.await.unwrap();
        assert!(done);
    }

    #[tokio::test]
    async fn an_ask_no_session_takes_ends_at_its_timeout() {
        let registry = AgentRegistry::new(1);
        // A session that never reads its asks: the first fills the queue, the second cannot be queued.
        let (tx, _rx) = mpsc::channel(1);
        registry.connect("a", "c", tx);
        let started = Instant::now();
        assert!(registry.ask_report("a", false, Duration::from_millis(50)).await.is_none());
        assert!(registry.ask_report("a", false, Duration::from_millis(50)).await.is_none());
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
        assert!(registry.ask_report("unknown", false, Duration::from_secs(5)).await.is_none());
    }

    #[tokio::test]
    async fn stale_session_does_not_disconnect_its_successor() {
        let registry = AgentRegistry::new(1);
        let (tx, _rx) = mpsc::channel(1);
        let old = registry.connect("a", "c", tx.clone());
        let new = registry.connect("a", "c", tx);
        registry.disconnect(&old);
        assert!(registry.status("a", 0).unwrap().connected);
        registry.nack(&new, 3, "bad config".into());
        let status = registry.status("a", 3).unwrap();
        assert_eq!((status.nacked_version, status.nack_error.as_str()), (3, "bad config"));
        registry.disconnect(&new);
        assert!(!registry.status("a", 0).unwrap().connected);
        let (done, progress) = registry.wait_acked(&["missing".to_string()], 1, Duration::from_millis(5)).await;
        assert!(!done && !progress[0].connected);
    }
}
