//! Changing and removing topology: each edit is checked against what depends on it, so the
//! state never holds a binding to a missing shard or a node of a missing host.

use lbfleet_proto::Fqdn;

use super::names;
use super::not_found;
use super::ObjectKind;
use super::Response;
use super::State;
use super::StateError;

/// How many names an "in use" error lists before it says how many more there are.
const NAMES_SHOWN: usize = 5;

impl State {
    /// Removes an LB host; refused while backend nodes name it.
    pub(super) fn remove_host(&mut self, id: &str) -> Result<Response, StateError> {
        let cluster = self.hosts.get(id).ok_or_else(|| not_found(ObjectKind::Host, id))?.cluster.clone();
        let nodes: Vec<&str> = self.nodes.values().filter(|n| n.host == id).map(|n| n.name.as_str()).collect();
        if !nodes.is_empty() {
            return Err(in_use(ObjectKind::Host, id, &format!("it has nodes {}; remove them first", shown(&nodes))));
        }
        self.hosts.remove(id);
        Ok(Response::HostRemoved { id: id.to_string(), cluster })
    }

    /// Deletes a shard with no nodes. Its bindings are refused unless `move_to` names another
    /// shard of the same cluster, which then takes them all in this one change.
    pub(super) fn delete_shard(&mut self, name: &str, move_to: Option<&str>) -> Result<Response, StateError> {
        let cluster = self.shard(name)?.cluster.clone();
        let nodes: Vec<&str> = self.nodes.values().filter(|n| n.shard == name).map(|n| n.name.as_str()).collect();
        if !nodes.is_empty() {
            let reason = format!("it has nodes {}; remove them first", shown(&nodes));
            return Err(in_use(ObjectKind::Shard, name, &reason));
        }
        let bound: Vec<Fqdn> = self
            .cluster(&cluster)?
            .bindings
            .iter()
            .filter(|(_, shard)| shard.as_str() == name)
            .map(|(fqdn, _)| fqdn.clone())
            .collect();
        if let Some(target) = move_to {
            let target_cluster = &self.shard(target)?.cluster;
            if target == name {
                return Err(StateError::Invalid {
                    field: "--move-to".into(),
                    value: target.into(),
                    reason: "is the shard being deleted".into(),
                });
            }
            if target_cluster != &cluster {
                return Err(StateError::WrongCluster {
                    kind: ObjectKind::Shard,
                    name: target.to_string(),
                    expected: cluster,
                    actual: target_cluster.clone(),
                });
            }
        } else if !bound.is_empty() {
            let fqdns: Vec<&str> = bound.iter().map(Fqdn::as_str).collect();
            let reason =
                format!("{} FQDNs are bound to it ({}); move them with --move-to SHARD", bound.len(), shown(&fqdns));
            return Err(in_use(ObjectKind::Shard, name, &reason));
        }
        if let Some(target) = move_to {
            let bindings = &mut self.cluster_mut(&cluster)?.bindings;
            for fqdn in &bound {
                bindings.insert(fqdn.clone(), target.to_string());
            }
        }
        self.shards.remove(name);
        let moved_to = move_to.filter(|_| !bound.is_empty()).map(str::to_string);
        Ok(Response::ShardDeleted { name: name.to_string(), cluster, moved: bound, moved_to })
    }

    /// Deletes a cluster that has no hosts, shards or bindings left.
    pub(super) fn delete_cluster(&mut self, name: &str) -> Result<Response, StateError> {
        let cluster = self.cluster(name)?;
        let hosts: Vec<&str> = self.hosts.values().filter(|h| h.cluster == name).map(|h| h.id.as_str()).collect();
        let shards: Vec<&str> = self.shards.values().filter(|s| s.cluster == name).map(|s| s.name.as_str()).collect();
        let mut left = Vec::new();
        if !hosts.is_empty() {
            left.push(format!("hosts {}", shown(&hosts)));
        }
        if !shards.is_empty() {
            left.push(format!("shards {}", shown(&shards)));
        }
        if !cluster.bindings.is_empty() {
            left.push(format!("{} bindings", cluster.bindings.len()));
        }
        if !left.is_empty() {
            let reason = format!("it still has {}; remove them first", left.join(", "));
            return Err(in_use(ObjectKind::Cluster, name, &reason));
        }
        self.clusters.remove(name);
        Ok(Response::ClusterDeleted { name: name.to_string() })
    }

    /// Changes the HAProxy container a cluster's hosts drive (hosts with their own keep theirs).
    pub(super) fn set_cluster(&mut self, name: &str, haproxy_container: &str) -> Result<Response, StateError> {
        names::container_name("haproxy container", haproxy_container)?;
        self.cluster_mut(name)?.config.haproxy_container = haproxy_container.to_string();
        Ok(Response::ClusterChanged { name: name.to_string() })
    }

    /// Gives a host its own HAProxy container, or (`None`) makes it use its cluster's again.
    pub(super) fn set_host(&mut self, id: &str, haproxy_container: &Option<String>) -> Result<Response, StateError> {
        if let Some(container) = haproxy_container {
            names::container_name("haproxy container", container)?;
        }
        let host = self.hosts.get_mut(id).ok_or_else(|| not_found(ObjectKind::Host, id))?;
        host.haproxy_container = haproxy_container.clone();
        Ok(Response::HostChanged { id: id.to_string(), cluster: host.cluster.clone() })
    }

    /// Changes the address HAProxy connects to for a node.
    pub(super) fn set_node(&mut self, name: &str, address: &str) -> Result<Response, StateError> {
        names::server_address("node address", address)?;
        let node = self.nodes.get_mut(name).ok_or_else(|| not_found(ObjectKind::Node, name))?;
        node.address = address.to_string();
        Ok(Response::NodeChanged { name: name.to_string(), shard: node.shard.clone() })
    }
}

fn in_use(kind: ObjectKind, name: &str, reason: &str) -> StateError {
    StateError::InUse { kind, name: name.to_string(), reason: reason.to_string() }
}

/// The first few names, and how many more there are.
fn shown(names: &[&str]) -> String {
    let mut text = names.iter().take(NAMES_SHOWN).copied().collect::<Vec<_>>().join(", ");
    if names.len() > NAMES_SHOWN {
        text.push_str(&format!(" and {} more", names.len() - NAMES_SHOWN));
    }
    text
}
