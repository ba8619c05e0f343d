//! The agent's Prometheus metrics: how fast versions go live, what the runtime API and reloads
//! did, drift, HAProxy's servers, the coordinator stream and the host probes. No label takes an
//! FQDN: their number is unbounded.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::exponential_buckets;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::haproxy::RuntimeChange;
use crate::haproxy::RuntimeReport;
use crate::haproxy::ServerStat;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    /// `runtime`: delta received -> runtime map changed; `file`: delta received -> map file on disk.
    pub stage: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuntimeLabels {
    /// `add`, `set`, `del` (one key each) or `replace` (the whole map).
    pub op: &'static str,
    /// `ok`, `refused` (HAProxy answered with an error) or `error` (no answer).
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    /// What made the reload, as a kind (see `ReloadKind`).
    pub reason: &'static str,
    /// `ok` or `error`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DriftLabels {
    /// `missing`, `wrong`, `extra` or `duplicate` map entries, or `config` (haproxy.cfg).
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServerLabels {
    pub backend: String,
    pub server: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FqdnProbeLabels {
    /// `bind` (right after a bind) or `sample` (the periodic sample).
    pub trigger: &'static str,
    /// `ok`, `wrong_shard` (another shard answered) or `error` (no usable answer).
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CheckLabels {
    /// `container`, `admin_socket` or `frontends`.
    pub check: &'static str,
}

/// Why a reload happened, as a bounded set of kinds (the reload's text reason is in reports and logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadKind {
    /// The topology changed (nodes, shards, addresses).
    Topology,
    /// The first state after the agent started differs from the config HAProxy runs.
    AgentStart,
    /// haproxy.cfg in the container drifted (edited, or an old file after a restart).
    Drift,
}

impl ReloadKind {
    fn label(self) -> &'static str {
        match self {
            ReloadKind::Topology => "topology",
            ReloadKind::AgentStart => "agent_start",
            ReloadKind::Drift => "drift",
        }
    }
}

/// Every metric the agent exports, registered in one registry.
pub struct AgentMetrics {
    registry: Arc<Registry>,
    apply_duration: Family<StageLabels, Histogram>,
    runtime_operations: Family<RuntimeLabels, Counter>,
    reloads: Family<ReloadLabels, Counter>,
    reload_duration: Family<ReloadLabels, Histogram>,
    config_changes: Counter,
    drift_found: Family<DriftLabels, Counter>,
    drift_repairs: Counter,
    map_entries: Gauge,
    state_version: Gauge,
    server_up: Family<ServerLabels, Gauge>,
    server_sessions: Family<ServerLabels, Gauge>,
    connected: Gauge,
    reconnects: Counter,
    fqdn_probes: Family<FqdnProbeLabels, Counter>,
    host_probe_ok: Family<CheckLabels, Gauge>,
}

fn latency_histogram() -> Histogram {
    // 1 ms to ~33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

impl Default for AgentMetrics {
    fn default() -> Self {
        AgentMetrics::new()
    }
}

impl AgentMetrics {
    pub fn new() -> AgentMetrics {
        let mut registry = Registry::default();
        let apply_duration = Family::<StageLabels, Histogram>::new_with_constructor(latency_histogram as fn() -> _);
        let reload_duration = Family::<ReloadLabels, Histogram>::new_with_constructor(latency_histogram as fn() -> _);
        let metrics = AgentMetrics {
            apply_duration: apply_duration.clone(),
            runtime_operations: Family::default(),
            reloads: Family::default(),
            reload_duration: reload_duration.clone(),
            config_changes: Counter::default(),
            drift_found: Family::default(),
            drift_repairs: Counter::default(),
            map_entries: Gauge::default(),
            state_version: Gauge::default(),
            server_up: Family::default(),
            server_sessions: Family::default(),
            connected: Gauge::default(),
            reconnects: Counter::default(),
            fqdn_probes: Family::default(),
            host_probe_ok: Family::default(),
            registry: Arc::default(),
        };
        registry.register(
            "lbfleet_agent_apply_duration_seconds",
            "Time from a delta's arrival until it is in HAProxy's runtime map (stage=runtime) or in the map file on disk (stage=file)",
            apply_duration,
        );
        registry.register(
            "lbfleet_agent_runtime_operations",
            "Runtime API map operations by kind and result",
            metrics.runtime_operations.clone(),
        );
        registry.register(
            "lbfleet_agent_reloads",
            "HAProxy reloads by reason kind and result",
            metrics.reloads.clone(),
        );
        registry.register(
            "lbfleet_agent_reload_duration_seconds",
            "Duration of HAProxy reloads (map file, haproxy -c, reload) by reason kind and result",
            reload_duration,
        );
        registry.register(
            "lbfleet_agent_config_changes",
            "State versions that changed the rendered haproxy.cfg",
            metrics.config_changes.clone(),
        );
        registry.register(
            "lbfleet_agent_drift_found",
            "Differences found between HAProxy and the desired state, by kind (map entries, or the config)",
            metrics.drift_found.clone(),
        );
        registry.register(
            "lbfleet_agent_drift_repairs",
            "Repairs of a drifted runtime map",
            metrics.drift_repairs.clone(),
        );
        registry.register("lbfleet_agent_map_entries", "Entries of the desired FQDN map", metrics.map_entries.clone());
        registry.register("lbfleet_agent_state_version", "The state version held", metrics.state_version.clone());
        registry.register(
            "lbfleet_agent_server_up",
            "1 when HAProxy takes the server as up, 0 otherwise (show stat, at the last report)",
            metrics.server_up.clone(),
        );
        registry.register(
            "lbfleet_agent_server_sessions",
            "Current sessions of the server (show stat scur, at the last report)",
            metrics.server_sessions.clone(),
        );
        registry.register(
            "lbfleet_agent_coordinator_connected",
            "1 while a stream to the coordinator leader is open",
            metrics.connected.clone(),
        );
        registry.register(
            "lbfleet_agent_coordinator_reconnects",
            "Streams to the coordinator opened after the first one",
            metrics.reconnects.clone(),
        );
        registry.register(
            "lbfleet_agent_fqdn_probes",
            "End-to-end probes (one request through this host's HAProxy) by trigger and result",
            metrics.fqdn_probes.clone(),
        );
        registry.register(
            "lbfleet_agent_host_probe_ok",
            "1 when the last host-level check passed, by check",
            metrics.host_probe_ok.clone(),
        );
        AgentMetrics { registry: Arc::new(registry), ..metrics }
    }

    /// The registry, to encode.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The registry, for the operator listener.
    pub fn registry_handle(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    pub fn applied(&self, stage: &'static str, since_received: Duration) {
        self.apply_duration.get_or_create(&StageLabels { stage }).observe(since_received.as_secs_f64());
    }

    /// What `apply_runtime` did with `changes` (`report`), or that the session failed.
    pub fn runtime_applied(&self, changes: &[RuntimeChange], result: Result<&RuntimeReport, ()>) {
        let count = |op: &'static str, result: &'static str, n: usize| {
            if n > 0 {
                self.runtime_operations.get_or_create(&RuntimeLabels { op, result }).inc_by(n as u64);
            }
        };
        match result {
            Ok(report) => {
                count("add", "ok", report.added);
                count("set", "ok", report.set);
                count("del", "ok", report.deleted + report.already_absent);
                for error in &report.errors {
                    let op = error.command.strip_suffix(" map").unwrap_or(error.command);
                    count(
                        if op == "add" {
                            "add"
                        } else if op == "set" {
                            "set"
                        } else {
                            "del"
                        },
                        "refused",
                        1,
                    );
                }
            }
            Err(()) => {
                let of = |f: fn(&RuntimeChange) -> bool| changes.iter().filter(|c| f(c)).count();
                count("add", "error", of(|c| matches!(c, RuntimeChange::Add { .. })));
                count("set", "error", of(|c| matches!(c, RuntimeChange::Set { .. })));
                count("del", "error", of(|c| matches!(c, RuntimeChange::Del { .. })));
            }
        }
    }

    /// A whole-map replacement (`prepare map` .. `commit map`).
    pub fn map_replaced(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.runtime_operations.get_or_create(&RuntimeLabels { op: "replace", result }).inc();
    }

    pub fn reloaded(&self, kind: ReloadKind, ok: bool, took: Duration) {
        let labels = ReloadLabels { reason: kind.label(), result: if ok { "ok" } else { "error" } };
        self.reloads.get_or_create(&labels).inc();
        self.reload_duration.get_or_create(&labels).observe(took.as_secs_f64());
    }

    pub fn config_changed(&self) {
        self.config_changes.inc();
    }

    /// Map drift found (then repaired) by kind.
    pub fn map_drift(&self, missing: u64, wrong: u64, extra: u64, duplicates: u64) {
        for (kind, n) in [("missing", missing), ("wrong", wrong), ("extra", extra), ("duplicate", duplicates)] {
            if n > 0 {
                self.drift_found.get_or_create(&DriftLabels { kind }).inc_by(n);
            }
        }
        self.drift_repairs.inc();
    }

    /// haproxy.cfg drifted from the rendered config.
    pub fn config_drift(&self) {
        self.drift_found.get_or_create(&DriftLabels { kind: "config" }).inc();
    }

    pub fn state(&self, version: u64, map_entries: usize) {
        self.state_version.set(version as i64);
        self.map_entries.set(map_entries as i64);
    }

    /// The servers HAProxy holds now; servers gone since the last call disappear.
    pub fn servers(&self, servers: &[ServerStat]) {
        self.server_up.clear();
        self.server_sessions.clear();
        for server in servers {
            let labels = ServerLabels { backend: server.backend.clone(), server: server.server.clone() };
            self.server_up.get_or_create(&labels).set(i64::from(server.is_up()));
            self.server_sessions.get_or_create(&labels).set(server.sessions as i64);
        }
    }

    /// A stream opened (`reconnect`: not the first) or closed.
    pub fn stream(&self, open: bool, reconnect: bool) {
        self.connected.set(i64::from(open));
        if open && reconnect {
            self.reconnects.inc();
        }
    }

    pub fn fqdn_probe(&self, trigger: &'static str, result: &'static str) {
        self.fqdn_probes.get_or_create(&FqdnProbeLabels { trigger, result }).inc();
    }

    pub fn host_probe(&self, check: &'static str, ok: bool) {
        self.host_probe_ok.get_or_create(&CheckLabels { check }).set(i64::from(ok));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::haproxy::RuntimeCommandError;

    fn text(metrics: &AgentMetrics) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, metrics.registry()).unwrap();
        text
    }

    #[test]
    fn runtime_operations_count_by_kind_and_result() {
        let metrics = AgentMetrics::new();
        let report = RuntimeReport {
            added: 2,
            set: 1,
            deleted: 1,
            errors: vec![RuntimeCommandError { fqdn: "a".into(), command: "set map", message: "no".into() }],
            ..Default::default()
        };
        metrics.runtime_applied(&[], Ok(&report));
        let changes = [RuntimeChange::Del { fqdn: "x".into() }];
        metrics.runtime_applied(&changes, Err(()));
        let text = text(&metrics);
        for line in [
            "lbfleet_agent_runtime_operations_total{op=\"add\",result=\"ok\"} 2",
            "lbfleet_agent_runtime_operations_total{op=\"set\",result=\"ok\"} 1",
            "lbfleet_agent_runtime_operations_total{op=\"set\",result=\"refused\"} 1",
            "lbfleet_agent_runtime_operations_total{op=\"del\",result=\"error\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing in\n{text}");
        }
    }

    #[test]
    fn servers_gone_disappear_and_reloads_carry_a_kind() {
        let metrics = AgentMetrics::new();
        let server = |name: &str, status: &str| ServerStat {
            backend: "shard-web".into(),
            server: name.into(),
            status: status.into(),
            check: String::new(),
            sessions: 4,
            admin: crate::desired::AdminState::Ready,
        };
        metrics.servers(&[server("n0", "UP"), server("n1", "DOWN")]);
        metrics.servers(&[server("n1", "DOWN")]);
        metrics.reloaded(ReloadKind::AgentStart, true, Duration::from_millis(20));
        let text = text(&metrics);
        assert!(!text.contains("server=\"n0\""), "{text}");
        assert!(text.contains("lbfleet_agent_server_up{backend=\"shard-web\",server=\"n1\"} 0"), "{text}");
        assert!(text.contains("lbfleet_agent_server_sessions{backend=\"shard-web\",server=\"n1\"} 4"), "{text}");
        assert!(text.contains("lbfleet_agent_reloads_total{reason=\"agent_start\",result=\"ok\"} 1"), "{text}");
        assert!(text.contains("lbfleet_agent_reload_duration_seconds_count{reason=\"agent_start\",result=\"ok\"} 1"));
    }
}
