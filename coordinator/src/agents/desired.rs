//! What a host's agent should apply: its full desired state, or the delta since a version.

use lbfleet_proto::names;
use lbfleet_proto::pb;

use crate::raft::state_machine::Applied;
use crate::state::Host;
use crate::state::State;

/// The HAProxy backend of a shard (`shard-NAME`).
fn backend_of(state: &State, shard: &str) -> String {
    state.shards.get(shard).map(|s| s.lb_backend.clone()).unwrap_or_else(|| names::lb_backend(shard))
}

/// Everything `haproxy.cfg` is rendered from, for `host`.
pub fn topology(state: &State, host: &Host) -> pb::AgentTopology {
    let cluster = state.clusters.get(&host.cluster);
    let backends = state
        .shards
        .values()
        .filter(|shard| shard.cluster == host.cluster)
        .map(|shard| pb::BackendSpec {
            name: shard.lb_backend.clone(),
            servers: state
                .nodes
                .values()
                .filter(|node| node.shard == shard.name)
                .map(|node| pb::ServerSpec {
                    name: node.name.clone(),
                    address: node.address.clone(),
                    id: node.server_id,
                    admin: pb::AdminState::from(node.admin).into(),
                })
                .collect(),
        })
        .collect();
    pb::AgentTopology {
        container: state.haproxy_container_of(host),
        map_path: cluster.map(|c| c.config.map_path.clone()).unwrap_or_default(),
        backends,
    }
}

/// The whole desired state of `host` at the applied version.
pub fn full_state(applied: &Applied, host: &Host) -> pb::FullState {
    let state = &applied.state;
    let map = state
        .clusters
        .get(&host.cluster)
        .map(|cluster| {
            cluster
                .bindings
                .iter()
                .map(|(fqdn, shard)| pb::MapEntry { fqdn: fqdn.to_string(), backend: backend_of(state, shard) })
                .collect()
        })
        .unwrap_or_default();
    pb::FullState { version: applied.version(), topology: Some(topology(state, host)), map }
}

/// The changes for `host` after `from_version`, up to the applied version; `None` when they are
/// no longer retained (the agent then needs the full state).
pub fn delta(applied: &Applied, host: &Host, from_version: u64) -> Option<pb::Delta> {
    let changes = applied.changes.since(&host.cluster, from_version)?;
    let mut upserts = Vec::new();
    let mut removals = Vec::new();
    for (fqdn, shard) in changes.bindings {
        match shard {
            Some(shard) => {
                upserts.push(pb::MapEntry { fqdn: fqdn.into_string(), backend: backend_of(&applied.state, &shard) })
            }
            None => removals.push(fqdn.into_string()),
        }
    }
    let topology = changes.topology_changed.then(|| topology(&applied.state, host));
    Some(pb::Delta { from_version, version: applied.version(), upserts, removals, topology })
}

#[cfg(test)]
mod tests {
    use lbfleet_proto::Fqdn;

    use super::*;
    use crate::state::AdminState;
    use crate::state::Command;

    fn applied() -> Applied {
        let mut applied = Applied::default();
        let commands = [
            Command::CreateCluster { name: "c".into(), haproxy_container: Some("lb".into()) },
            Command::AddHost { id: "h".into(), cluster: "c".into(), address: "h".into(), haproxy_container: None },
            Command::CreateShard { name: "web".into(), cluster: "c".into() },
            Command::AddNode {
                name: "web-0".into(),
                shard: "web".into(),
                host: "h".into(),
                address: "n0:80".into(),
                container: None,
            },
            Command::AddNode {
                name: "web-1".into(),
                shard: "web".into(),
                host: "h".into(),
                address: "n1:80".into(),
                container: None,
            },
            Command::SetNodeState { name: "web-0".into(), state: AdminState::Drain },
            Command::Bind { fqdn: Fqdn::parse("a.com").unwrap(), shard: "web".into(), cluster: None },
            Command::Bind { fqdn: Fqdn::parse("b.com").unwrap(), shard: "web".into(), cluster: None },
            Command::Unbind { fqdn: Fqdn::parse("a.com").unwrap(), cluster: None },
        ];
        for (i, command) in commands.iter().enumerate() {
            let Applied { state, changes, .. } = &mut applied;
            let response = state.apply(command).unwrap();
            changes.record(i as u64 + 1, state, command, &response);
            applied.last_applied = Some(openraft::LogId::new(openraft::CommittedLeaderId::new(1, 1), i as u64 + 1));
        }
        applied
    }

    #[test]
    fn full_state_carries_map_and_backends() {
        let applied = applied();
        let full = full_state(&applied, &applied.state.hosts["h"]);
        assert_eq!(full.version, 9);
        assert_eq!(full.map, vec![pb::MapEntry { fqdn: "b.com".into(), backend: "shard-web".into() }]);
        let topology = full.topology.unwrap();
        assert_eq!(topology.container, "lb");
        assert_eq!(topology.backends[0].name, "shard-web");
        assert_eq!(topology.backends[0].servers[0].address, "n0:80");
        let servers: Vec<(&str, u32, i32)> =
            topology.backends[0].servers.iter().map(|s| (s.name.as_str(), s.id, s.admin)).collect();
        let (drain, ready) = (pb::AdminState::AdminDrain as i32, pb::AdminState::AdminReady as i32);
        assert_eq!(servers, [("web-0", 1, drain), ("web-1", 2, ready)]);
    }

    #[test]
    fn delta_is_the_net_change() {
        let applied = applied();
        let host = &applied.state.hosts["h"];
        let delta = delta(&applied, host, 6).unwrap();
        assert_eq!(delta.upserts, vec![pb::MapEntry { fqdn: "b.com".into(), backend: "shard-web".into() }]);
        assert_eq!(delta.removals, vec!["a.com".to_string()]);
        assert!(delta.topology.is_none());
        assert!(super::delta(&applied, host, 3).unwrap().topology.is_some());
        // The drain at version 6 reaches an agent at 5 as a new topology.
        let drained = super::delta(&applied, host, 5).unwrap().topology.expect("the drain changed the topology");
        assert_eq!(drained.backends[0].servers[0].admin, pb::AdminState::AdminDrain as i32);
    }
}
