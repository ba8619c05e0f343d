//! `NodeSessions`: a node's server as every LB host of its cluster holds it right now, from a
//! fresh report of each agent. What `node drain --wait` and `node remove` poll.

use std::time::Duration;

use lbfleet_proto::pb;
use tonic::Status;

use crate::agents::registry::AgentRegistry;
use crate::raft::state_machine::Applied;
use crate::state::ObjectKind;
use crate::state::StateError;

/// How long the agents get when the request names no timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest the agents may be given: a poll, not a wait.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(60);

/// Which server to look for, and on which hosts: read from the applied state, then released
/// before the agents are asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeTarget {
    pub node: String,
    pub backend: String,
    pub desired: pb::AdminState,
    pub hosts: Vec<String>,
}

impl NodeTarget {
    /// The node's backend, admin state and its cluster's LB hosts; not found when there is no such node.
    pub fn of(applied: &Applied, node: &str) -> Result<NodeTarget, Status> {
        let state = &applied.state;
        let not_found = || StateError::NotFound { kind: ObjectKind::Node, name: node.to_string() };
        let found = state.nodes.get(node).ok_or_else(|| super::convert::state_error_to_status(not_found()))?;
        let shard = state.shards.get(&found.shard).ok_or_else(|| {
            Status::internal(format!("node {node:?} names shard {:?}, which does not exist", found.shard))
        })?;
        let hosts = state.hosts.values().filter(|h| h.cluster == shard.cluster).map(|h| h.id.clone()).collect();
        Ok(NodeTarget { node: node.to_string(), backend: shard.lb_backend.clone(), desired: found.admin.into(), hosts })
    }
}

/// The request's timeout for the agents: the default for 0, at most [`MAX_TIMEOUT`].
pub fn agent_timeout(timeout_ms: u64) -> Duration {
    match timeout_ms {
        0 => DEFAULT_TIMEOUT,
        ms => Duration::from_millis(ms).min(MAX_TIMEOUT),
    }
}

/// Asks every host of `target` at once for a fresh report (without its map), each bounded by `timeout`.
pub async fn ask_hosts(agents: &AgentRegistry, target: &NodeTarget, timeout: Duration) -> pb::NodeSessionsReply {
    let asks = target.hosts.iter().map(|host| agents.ask_report(host, false, timeout));
    let reports = futures::future::join_all(asks).await;
    let hosts = target.hosts.iter().zip(reports).map(|(host, report)| host_sessions(host, target, report)).collect();
    pb::NodeSessionsReply { desired: target.desired.into(), backend: target.backend.clone(), hosts }
}

/// One host's row: unanswered, answered without the server, or the server as HAProxy holds it.
fn host_sessions(host: &str, target: &NodeTarget, report: Option<pb::AgentReport>) -> pb::HostSessions {
    let Some(report) = report else {
        return pb::HostSessions { host: host.to_string(), answered: false, ..Default::default() };
    };
    let server = report.servers.into_iter().find(|s| s.backend == target.backend && s.server == target.node);
    match server {
        Some(server) => pb::HostSessions {
            host: host.to_string(),
            answered: true,
            found: true,
            admin: server.admin,
            status: server.status,
            sessions: server.sessions,
        },
        None => pb::HostSessions { host: host.to_string(), answered: true, found: false, ..Default::default() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> NodeTarget {
        NodeTarget {
            node: "web-1-node-0".into(),
            backend: "shard-web-1".into(),
            desired: pb::AdminState::AdminDrain,
            hosts: vec!["lb-a".into()],
        }
    }

    fn server(backend: &str, name: &str, sessions: u64) -> pb::ServerHealth {
        pb::ServerHealth {
            backend: backend.into(),
            server: name.into(),
            status: "DRAIN".into(),
            check: "L4OK".into(),
            sessions,
            admin: "drain".into(),
        }
    }

    #[test]
    fn the_row_is_the_nodes_server_in_the_shards_backend() {
        let report = pb::AgentReport {
            servers: vec![
                // The same server name in another backend is another server.
                server("shard-web-2", "web-1-node-0", 9),
                server("shard-web-1", "web-1-node-1", 8),
                server("shard-web-1", "web-1-node-0", 2),
            ],
            ..Default::default()
        };
        let row = host_sessions("lb-a", &target(), Some(report));
        assert_eq!(
            row,
            pb::HostSessions {
                host: "lb-a".into(),
                answered: true,
                admin: "drain".into(),
                status: "DRAIN".into(),
                sessions: 2,
                found: true
            }
        );
    }

    #[test]
    fn missing_servers_and_silent_agents_say_so() {
        let report = pb::AgentReport { servers: vec![server("shard-web-1", "other", 1)], ..Default::default() };
        let row = host_sessions("lb-a", &target(), Some(report));
        assert!(row.answered && !row.found && row.sessions == 0, "{row:?}");
        let row = host_sessions("lb-a", &target(), None);
        assert!(!row.answered && !row.found, "{row:?}");
    }

    #[test]
    fn timeouts_are_bounded() {
        assert_eq!(agent_timeout(0), DEFAULT_TIMEOUT);
        assert_eq!(agent_timeout(250), Duration::from_millis(250));
        assert_eq!(agent_timeout(u64::MAX), MAX_TIMEOUT);
    }
}
