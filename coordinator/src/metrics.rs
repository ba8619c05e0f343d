//! The coordinator's Prometheus metrics. Writes and log entries are counted where the group
//! commit handles them; Raft's figures and the agents' are read from their owners at scrape
//! time, so they cannot drift from what `lbfleet status` shows. No label takes an FQDN: `host`
//! and `cluster` are bounded by the fleet's size, `kind` and `result` by the code.

use std::fmt;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::EncodeMetric;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::exponential_buckets;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use prometheus_client::registry::Unit;
use tonic::Status;

use crate::agents::registry::AgentRegistry;
use crate::raft::state_machine::SharedState;
use crate::raft::CommandResult;
use crate::raft::Raft;
use crate::state::Command;

/// Labels of a write: what it was and how it ended.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WriteLabels {
    kind: &'static str,
    result: &'static str,
}

/// Labels of an LB host's agent.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HostLabels {
    host: String,
    cluster: String,
}

/// Latency of client writes by kind and result, and commands per log entry.
#[derive(Debug, Clone)]
pub struct WriteMetrics {
    duration: Family<WriteLabels, Histogram>,
    entry_commands: Histogram,
}

impl Default for WriteMetrics {
    fn default() -> WriteMetrics {
        WriteMetrics {
            // 0.5 ms to 16 s: a group commit on a fast disk up to a write that waited out an election.
            duration: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.000_5, 2.0, 16))),
            // 1 to 1024 commands, the most the group commit folds into one entry.
            entry_commands: Histogram::new(exponential_buckets(1.0, 2.0, 11)),
        }
    }
}

impl WriteMetrics {
    /// Starts timing the write of `command`.
    pub fn start(&self, command: &Command) -> WriteTimer<'_> {
        WriteTimer { metrics: self, kind: command_kind(command), started: Instant::now() }
    }

    /// One log entry committed by the group commit, carrying `commands` client commands.
    pub fn entry(&self, commands: usize) {
        self.entry_commands.observe(commands as f64);
    }

    fn register(&self, registry: &mut Registry) {
        registry.register_with_unit(
            "lbfleet_write_duration",
            "Client writes on the leader, from submission to their result, by command kind and result \
             (ok: applied; refused: committed but refused by the state, e.g. an unknown shard; failed: not committed)",
            Unit::Seconds,
            self.duration.clone(),
        );
        registry.register(
            "lbfleet_group_commit_entry_commands",
            "Client commands per Raft log entry committed by the group commit",
            self.entry_commands.clone(),
        );
    }
}

/// A write being timed; `finish` records it.
pub struct WriteTimer<'a> {
    metrics: &'a WriteMetrics,
    kind: &'static str,
    started: Instant,
}

impl WriteTimer<'_> {
    /// Records the write's latency under its kind and the result it had.
    pub fn finish(self, result: &Result<(u64, CommandResult), Status>) {
        let result = match result {
            Ok((_, Ok(_))) => "ok",
            Ok((_, Err(_))) => "refused",
            Err(_) => "failed",
        };
        let labels = WriteLabels { kind: self.kind, result };
        self.metrics.duration.get_or_create(&labels).observe(self.started.elapsed().as_secs_f64());
    }
}

/// The `kind` label of a command; a conditional write counts as the command it carries.
pub fn command_kind(command: &Command) -> &'static str {
    match command {
        Command::CreateCluster { .. } => "create_cluster",
        Command::AddHost { .. } => "add_host",
        Command::CreateShard { .. } => "create_shard",
        Command::AddNode { .. } => "add_node",
        Command::RemoveNode { .. } => "remove_node",
        Command::Bind { .. } => "bind",
        Command::Unbind { .. } => "unbind",
        Command::BindBatch { .. } => "bind_batch",
        Command::Group(_) => "group",
        Command::Revoke { .. } => "revoke",
        Command::Unrevoke { .. } => "unrevoke",
        Command::RemoveHost { .. } => "remove_host",
        Command::DeleteShard { .. } => "delete_shard",
        Command::DeleteCluster { .. } => "delete_cluster",
        Command::SetCluster { .. } => "set_cluster",
        Command::SetHost { .. } => "set_host",
        Command::SetNode { .. } => "set_node",
        Command::SetNodeState { .. } => "set_node_state",
        Command::SetHistoryLimit { .. } => "set_history_limit",
        // The caller and the condition wrap a command; it is counted as what it does.
        Command::Conditional { command, .. } | Command::By { command, .. } => command_kind(command),
    }
}

/// Everything the coordinator exports: the write metrics and the collectors of Raft's and the
/// agents' figures.
pub fn registry(
    writes: &WriteMetrics,
    raft: Raft,
    committed: Arc<AtomicU64>,
    shared: Arc<SharedState>,
    agents: Arc<AgentRegistry>,
) -> Registry {
    let mut registry = Registry::default();
    writes.register(&mut registry);
    registry.register_collector(Box::new(RaftCollector { raft, committed, shared: shared.clone() }));
    registry.register_collector(Box::new(AgentCollector { agents, shared }));
    registry
}

/// Writes one unlabelled gauge.
fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: i64) -> fmt::Result {
    let metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    ConstGauge::new(value).encode(metric)
}

/// Saturates instead of wrapping: log indexes and versions stay far below `i64::MAX`.
fn signed(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Raft's view of this node, read from `raft.metrics()` at every scrape.
struct RaftCollector {
    raft: Raft,
    committed: Arc<AtomicU64>,
    shared: Arc<SharedState>,
}

impl fmt::Debug for RaftCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RaftCollector")
    }
}

impl Collector for RaftCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let metrics = self.raft.metrics().borrow().clone();
        let leader = metrics.current_leader;
        gauge(&mut encoder, "lbfleet_raft_term", "The current Raft term.", signed(metrics.current_term))?;
        gauge(
            &mut encoder,
            "lbfleet_raft_has_leader",
            "1 when this node knows a leader.",
            i64::from(leader.is_some()),
        )?;
        gauge(
            &mut encoder,
            "lbfleet_raft_is_leader",
            "1 when this node is the leader.",
            i64::from(leader == Some(metrics.id)),
        )?;
        if let Some(leader) = leader {
            gauge(
                &mut encoder,
                "lbfleet_raft_leader_id",
                "The node id of the leader this node knows.",
                signed(leader),
            )?;
        }
        gauge(
            &mut encoder,
            "lbfleet_raft_last_log_index",
            "Index of the last entry in this node's log.",
            signed(metrics.last_log_index.unwrap_or(0)),
        )?;
        gauge(
            &mut encoder,
            "lbfleet_raft_commit_index",
            "Index of the last entry this node knows committed.",
            signed(self.committed.load(Ordering::Relaxed)),
        )?;
        gauge(
            &mut encoder,
            "lbfleet_raft_applied_index",
            "Index of the last entry applied to this node's state (the state version).",
            signed(metrics.last_applied.map(|l| l.index).unwrap_or(0)),
        )?;
        gauge(
            &mut encoder,
            "lbfleet_raft_snapshot_index",
            "Index of the last entry in this node's snapshot.",
            signed(metrics.snapshot.map(|l| l.index).unwrap_or(0)),
        )?;
        let built = ConstCounter::new(self.shared.snapshots_built());
        let metric = encoder.encode_descriptor(
            "lbfleet_raft_snapshots_built",
            "Snapshots this node built since it started (not those installed from the leader).",
            None,
            built.metric_type(),
        )?;
        built.encode(metric)
    }
}

/// The agents whose streams this node serves (the leader's), read from the registry at every scrape.
struct AgentCollector {
    agents: Arc<AgentRegistry>,
    shared: Arc<SharedState>,
}

impl fmt::Debug for AgentCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AgentCollector")
    }
}

impl Collector for AgentCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let version = self.shared.read().version();
        let agents = self.agents.all(version);
        let connected = agents.iter().filter(|a| a.connected).count();
        gauge(
            &mut encoder,
            "lbfleet_agents_connected",
            "Agents with an open stream to this node.",
            signed(connected as u64),
        )?;
        let labels = |host: &str, cluster: &str| HostLabels { host: host.to_owned(), cluster: cluster.to_owned() };
        let per_host = [
            ("lbfleet_agent_connected", "1 while the host's agent has an open stream to this node."),
            ("lbfleet_agent_acked_version", "The last state version the host's agent acknowledged."),
            ("lbfleet_agent_lag_versions", "State versions the host's agent has not acknowledged yet."),
        ];
        for (name, help) in per_host {
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for agent in &agents {
                let value = match name {
                    "lbfleet_agent_connected" => i64::from(agent.connected),
                    "lbfleet_agent_acked_version" => signed(agent.acked_version),
                    _ => signed(agent.lag),
                };
                ConstGauge::new(value).encode(metric.encode_family(&labels(&agent.host, &agent.cluster))?)?;
            }
        }
        let mut metric = encoder.encode_descriptor(
            "lbfleet_agent_nacks",
            "Versions the host's agent could not apply (NACKs), since this node started.",
            None,
            MetricType::Counter,
        )?;
        for (host, nacks) in self.agents.nacks() {
            let cluster = agents.iter().find(|a| a.host == host).map(|a| a.cluster.as_str()).unwrap_or_default();
            ConstCounter::new(nacks).encode(metric.encode_family(&labels(&host, cluster))?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use lbfleet_proto::Fqdn;

    use super::*;

    fn encoded(registry: &Registry) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
        text
    }

    fn bind() -> Command {
        Command::Bind { fqdn: Fqdn::parse("www.example.com").unwrap(), shard: "a".into(), cluster: None }
    }

    #[test]
    fn a_write_counts_under_its_kind_and_result() {
        let writes = WriteMetrics::default();
        let mut registry = Registry::default();
        writes.register(&mut registry);
        writes.start(&bind()).finish(&Ok((7, Ok(crate::state::Response::Noop))));
        writes.start(&bind()).finish(&Ok((8, Err(crate::state::StateError::Stale { if_version: 1, current: 2 }))));
        let conditional = Command::Conditional { if_version: 3, command: Box::new(bind()) };
        writes.start(&conditional).finish(&Err(Status::unavailable("no leader")));
        writes.entry(1);
        writes.entry(40);
        let text = encoded(&registry);
        for line in [
            "lbfleet_write_duration_seconds_count{kind=\"bind\",result=\"ok\"} 1",
            "lbfleet_write_duration_seconds_count{kind=\"bind\",result=\"refused\"} 1",
            "lbfleet_write_duration_seconds_count{kind=\"bind\",result=\"failed\"} 1",
            "lbfleet_group_commit_entry_commands_count 2",
            "lbfleet_group_commit_entry_commands_sum 41.0",
            "lbfleet_group_commit_entry_commands_bucket{le=\"64.0\"} 2",
            "lbfleet_group_commit_entry_commands_bucket{le=\"32.0\"} 1",
            "# UNIT lbfleet_write_duration_seconds seconds",
        ] {
            assert!(text.lines().any(|l| l == line), "no line {line:?} in\n{text}");
        }
        assert!(!text.contains("www.example.com"), "an FQDN leaked into a label:\n{text}");
    }

    #[test]
    fn every_command_has_a_snake_case_kind() {
        let kinds = [
            command_kind(&bind()),
            command_kind(&Command::BindBatch { cluster: "c".into(), entries: Vec::new() }),
            command_kind(&Command::Group(Vec::new())),
            command_kind(&Command::SetNodeState { name: "n".into(), state: crate::state::AdminState::Drain }),
        ];
        assert_eq!(kinds, ["bind", "bind_batch", "group", "set_node_state"]);
    }

    #[test]
    fn agents_are_exported_per_host_with_their_nacks() {
        let agents = Arc::new(AgentRegistry::new(1));
        let (tx, _rx) = tokio::sync::mpsc::channel(1);
        let a = agents.connect("lb-a", "web", tx.clone());
        let b = agents.connect("lb-b", "web", tx);
        agents.ack(&a, 5);
        agents.nack(&b, 4, "bad config".into());
        agents.nack(&b, 5, "bad config".into());
        agents.disconnect(&b);
        let shared = SharedState::for_tests(crate::raft::state_machine::Applied::default());
        let mut registry = Registry::default();
        registry.register_collector(Box::new(AgentCollector { agents, shared }));
        let text = encoded(&registry);
        for line in [
            "lbfleet_agents_connected 1",
            "lbfleet_agent_connected{host=\"lb-a\",cluster=\"web\"} 1",
            "lbfleet_agent_connected{host=\"lb-b\",cluster=\"web\"} 0",
            "lbfleet_agent_acked_version{host=\"lb-a\",cluster=\"web\"} 5",
            "lbfleet_agent_nacks_total{host=\"lb-a\",cluster=\"web\"} 0",
            "lbfleet_agent_nacks_total{host=\"lb-b\",cluster=\"web\"} 2",
            "# TYPE lbfleet_agent_nacks counter",
        ] {
            assert!(text.lines().any(|l| l == line), "no line {line:?} in\n{text}");
        }
    }
}
