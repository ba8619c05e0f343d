//! The replicated state: topology and FQDN bindings, changed only by the pure `apply`.

pub mod changelog;
mod command;
mod edits;
pub mod history;
pub mod names;
mod node_admin;
pub mod revocations;

use std::collections::BTreeMap;
use std::sync::Arc;

pub use command::BatchSummary;
pub use command::Command;
pub use command::ObjectKind;
pub use command::Response;
pub use command::StateError;
use history::History;
use history::Record;
use history::Stamp;
use lbfleet_proto::Fqdn;
pub use node_admin::AdminState;
use revocations::RevocationTarget;
use revocations::Revocations;
use serde::Deserialize;
use serde::Serialize;

/// HAProxy container name used when a cluster names none.
pub const DEFAULT_HAPROXY_CONTAINER: &str = "hosting-haproxy";
/// Where the FQDN map lives inside the HAProxy container.
pub const DEFAULT_MAP_PATH: &str = "/var/lib/haproxy/maps/fqdn-to-shard.map";

/// The whole replicated state of one coordinator group.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub clusters: BTreeMap<String, Cluster>,
    pub hosts: BTreeMap<String, Host>,
    pub shards: BTreeMap<String, Shard>,
    pub nodes: BTreeMap<String, BackendNode>,
    pub revocations: Revocations,
    /// Who changed what, and when: bounded, and replicated like the rest.
    pub history: History,
}

/// A load-balanced cluster: its config and its FQDN -> shard bindings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cluster {
    pub name: String,
    pub config: ClusterConfig,
    pub bindings: BTreeMap<Fqdn, String>,
}

/// What the agent and the config template need to know about a cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterConfig {
    pub haproxy_container: String,
    pub map_path: String,
}

/// A Docker host whose agent serves its cluster's load balancer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Host {
    pub id: String,
    pub cluster: String,
    pub address: String,
    /// Overrides the cluster's container name (several hosts may share one Docker engine).
    pub haproxy_container: Option<String>,
}

/// A group of nodes behind one HAProxy backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    pub name: String,
    pub cluster: String,
    pub lb_backend: String,
}

/// A backend server (nginx) of a shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendNode {
    pub name: String,
    pub shard: String,
    pub host: String,
    pub address: String,
    pub container: Option<String>,
    /// HAProxy's `id` for the server, fixed when the node is added (see `next_server_id`).
    pub server_id: u32,
    pub admin: AdminState,
}

impl State {
    /// Applies one command; on error the state is unchanged. A `Conditional` command is checked
    /// against version 0: use [`State::apply_at`] where the version is known.
    pub fn apply(&mut self, cmd: &Command) -> Result<Response, StateError> {
        self.apply_at(cmd, 0)
    }

    /// Applies one command to the state at `version` (the log index applied last); its changes
    /// are recorded in the history at `version + 1`, the index of the entry that carries it.
    pub fn apply_at(&mut self, cmd: &Command, version: u64) -> Result<Response, StateError> {
        self.apply_stamped(cmd, version, &Stamp::unattributed(version + 1))
    }

    fn apply_stamped(&mut self, cmd: &Command, version: u64, stamp: &Stamp) -> Result<Response, StateError> {
        match cmd {
            Command::By { by, at_unix_ms, command } => {
                let stamp = Stamp { version: stamp.version, at_unix_ms: *at_unix_ms, by: Arc::from(by.as_str()) };
                self.apply_stamped(command, version, &stamp)
            }
            // Each command succeeds or fails on its own, as if it had its own entry.
            Command::Group(commands) => {
                Ok(Response::Group(commands.iter().map(|c| self.apply_stamped(c, version, stamp)).collect()))
            }
            // A refused command still takes its log entry: the state is then at the next version,
            // which is the one to retry with.
            Command::Conditional { if_version, command } => match version != *if_version {
                true => Err(StateError::Stale { if_version: *if_version, current: version + 1 }),
                false => self.apply_stamped(command, version, stamp),
            },
            Command::BindBatch { cluster, entries } => self.bind_batch(cluster, entries, stamp),
            command => {
                let response = self.apply_one(command, version, stamp)?;
                for record in history::records_of(self, stamp, command, &response) {
                    self.history.push(record);
                }
                Ok(response)
            }
        }
    }

    /// Applies a command that changes one thing (the history is recorded by the caller).
    fn apply_one(&mut self, cmd: &Command, version: u64, stamp: &Stamp) -> Result<Response, StateError> {
        match cmd {
            Command::CreateCluster { name, haproxy_container } => self.create_cluster(name, haproxy_container),
            Command::AddHost { id, cluster, address, haproxy_container } => {
                self.add_host(id, cluster, address, haproxy_container)
            }
            Command::CreateShard { name, cluster } => self.create_shard(name, cluster),
            Command::AddNode { name, shard, host, address, container } => {
                self.add_node(name, shard, host, address, container)
            }
            Command::RemoveNode { name } => self.remove_node(name),
            Command::Bind { fqdn, shard, cluster } => self.bind(fqdn, shard, cluster.as_deref()),
            Command::Unbind { fqdn, cluster } => self.unbind(fqdn, cluster.as_deref()),
            Command::Revoke { target, at } => self.revoke(target, *at),
            Command::Unrevoke { target } => match self.revocations.unrevoke(target) {
                Some(_) => Ok(Response::Unrevoked { target: target.clone() }),
                None => Err(not_found(ObjectKind::Revocation, &target.to_string())),
            },
            Command::RemoveHost { id } => self.remove_host(id),
            Command::DeleteShard { name, move_to } => self.delete_shard(name, move_to.as_deref()),
            Command::DeleteCluster { name } => self.delete_cluster(name),
            Command::SetCluster { name, haproxy_container } => self.set_cluster(name, haproxy_container),
            Command::SetHost { id, haproxy_container } => self.set_host(id, haproxy_container),
            Command::SetNode { name, address } => self.set_node(name, address),
            Command::SetNodeState { name, state } => self.set_node_state(name, *state),
            Command::SetHistoryLimit { limit } => {
                Ok(Response::HistoryLimitSet { limit: *limit, previous: self.history.set_limit(*limit) })
            }
            // apply_stamped takes these apart before it gets here.
            Command::By { .. } | Command::Group(_) | Command::Conditional { .. } | Command::BindBatch { .. } => {
                self.apply_stamped(cmd, version, stamp)
            }
        }
    }

    /// The cluster's host view: the container name a host's agent should drive.
    pub fn haproxy_container_of(&self, host: &Host) -> String {
        host.haproxy_container.clone().unwrap_or_else(|| {
            self.clusters
                .get(&host.cluster)
                .map(|c| c.config.haproxy_container.clone())
                .unwrap_or_else(|| DEFAULT_HAPROXY_CONTAINER.to_string())
        })
    }

    fn create_cluster(&mut self, name: &str, haproxy_container: &Option<String>) -> Result<Response, StateError> {
        names::object_name("cluster name", name)?;
        if let Some(container) = haproxy_container {
            names::container_name("haproxy container", container)?;
        }
        if self.clusters.contains_key(name) {
            return Err(already_exists(ObjectKind::Cluster, name));
        }
        let haproxy_container = haproxy_container.clone().unwrap_or_else(|| DEFAULT_HAPROXY_CONTAINER.to_string());
        self.clusters.insert(
            name.to_string(),
            Cluster {
                name: name.to_string(),
                config: ClusterConfig {
                    haproxy_container: haproxy_container.clone(),
                    map_path: DEFAULT_MAP_PATH.to_string(),
                },
                bindings: BTreeMap::new(),
            },
        );
        Ok(Response::ClusterCreated { name: name.to_string(), haproxy_container })
    }

    fn add_host(
        &mut self,
        id: &str,
        cluster: &str,
        address: &str,
        haproxy_container: &Option<String>,
    ) -> Result<Response, StateError> {
        names::object_name("host id", id)?;
        if let Some(container) = haproxy_container {
            names::container_name("haproxy container", container)?;
        }
        if address.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(StateError::Invalid {
                field: "host address".into(),
                value: address.into(),
                reason: "must not contain spaces or control characters".into(),
            });
        }
        self.cluster(cluster)?;
        if self.hosts.contains_key(id) {
            return Err(already_exists(ObjectKind::Host, id));
        }
        let host = Host {
            id: id.to_string(),
            cluster: cluster.to_string(),
            address: address.to_string(),
            haproxy_container: haproxy_container.clone(),
        };
        self.hosts.insert(id.to_string(), host);
        Ok(Response::HostAdded { id: id.to_string(), cluster: cluster.to_string() })
    }

    fn create_shard(&mut self, name: &str, cluster: &str) -> Result<Response, StateError> {
        names::object_name("shard name", name)?;
        self.cluster(cluster)?;
        if self.shards.contains_key(name) {
            return Err(already_exists(ObjectKind::Shard, name));
        }
        let lb_backend = lbfleet_proto::names::lb_backend(name);
        let shard = Shard { name: name.to_string(), cluster: cluster.to_string(), lb_backend: lb_backend.clone() };
        self.shards.insert(name.to_string(), shard);
        Ok(Response::ShardCreated { name: name.to_string(), lb_backend })
    }

    fn add_node(
        &mut self,
        name: &str,
        shard: &str,
        host: &str,
        address: &str,
        container: &Option<String>,
    ) -> Result<Response, StateError> {
        names::object_name("node name", name)?;
        names::server_address("node address", address)?;
        if let Some(container) = container {
            names::container_name("node container", container)?;
        }
        let shard_cluster = self.shard(shard)?.cluster.clone();
        let host_cluster = &self.hosts.get(host).ok_or_else(|| not_found(ObjectKind::Host, host))?.cluster;
        if *host_cluster != shard_cluster {
            return Err(StateError::WrongCluster {
                kind: ObjectKind::Host,
                name: host.to_string(),
                expected: shard_cluster,
                actual: host_cluster.clone(),
            });
        }
        if self.nodes.contains_key(name) {
            return Err(already_exists(ObjectKind::Node, name));
        }
        let node = BackendNode {
            name: name.to_string(),
            shard: shard.to_string(),
            host: host.to_string(),
            address: address.to_string(),
            container: container.clone(),
            server_id: self.next_server_id(shard),
            admin: AdminState::Ready,
        };
        self.nodes.insert(name.to_string(), node);
        Ok(Response::NodeAdded { name: name.to_string(), shard: shard.to_string() })
    }

    fn remove_node(&mut self, name: &str) -> Result<Response, StateError> {
        let node = self.nodes.remove(name).ok_or_else(|| not_found(ObjectKind::Node, name))?;
        Ok(Response::NodeRemoved { name: node.name, shard: node.shard })
    }

    fn bind(&mut self, fqdn: &Fqdn, shard: &str, cluster: Option<&str>) -> Result<Response, StateError> {
        let fqdn = revalidate(fqdn)?;
        let shard_cluster = self.shard(shard)?.cluster.clone();
        if let Some(cluster) = cluster {
            if cluster != shard_cluster {
                self.cluster(cluster)?;
                return Err(StateError::WrongCluster {
                    kind: ObjectKind::Shard,
                    name: shard.to_string(),
                    expected: cluster.to_string(),
                    actual: shard_cluster,
                });
            }
        }
        let bindings = &mut self.cluster_mut(&shard_cluster)?.bindings;
        let previous = bindings.insert(fqdn.clone(), shard.to_string());
        Ok(Response::Bound { cluster: shard_cluster, fqdn, shard: shard.to_string(), previous })
    }

    fn unbind(&mut self, fqdn: &Fqdn, cluster: Option<&str>) -> Result<Response, StateError> {
        let fqdn = revalidate(fqdn)?;
        let cluster = match cluster {
            Some(cluster) => self.cluster(cluster)?.name.clone(),
            None => {
                let holders: Vec<String> =
                    self.clusters.values().filter(|c| c.bindings.contains_key(&fqdn)).map(|c| c.name.clone()).collect();
                match holders.as_slice() {
                    [] => return Err(not_found(ObjectKind::Binding, fqdn.as_str())),
                    [one] => one.clone(),
                    _ => return Err(StateError::Ambiguous { fqdn: fqdn.into_string(), clusters: holders }),
                }
            }
        };
        let bindings = &mut self.cluster_mut(&cluster)?.bindings;
        let shard = bindings.remove(&fqdn).ok_or_else(|| not_found(ObjectKind::Binding, fqdn.as_str()))?;
        Ok(Response::Unbound { cluster, fqdn, shard })
    }

    fn bind_batch(&mut self, cluster: &str, entries: &[(Fqdn, String)], stamp: &Stamp) -> Result<Response, StateError> {
        self.cluster(cluster)?;
        let mut summary = BatchSummary::default();
        // Shard lookups are answered once per distinct shard, not once per entry; the answer
        // holds the name the history records share.
        let mut shard_ok: BTreeMap<&str, Result<Arc<str>, StateError>> = BTreeMap::new();
        let cluster_name: Arc<str> = Arc::from(cluster);
        for (fqdn, shard) in entries {
            let verdict = shard_ok.entry(shard.as_str()).or_insert_with(|| match self.shards.get(shard.as_str()) {
                None => Err(not_found(ObjectKind::Shard, shard)),
                Some(s) if s.cluster != cluster => Err(StateError::WrongCluster {
                    kind: ObjectKind::Shard,
                    name: shard.clone(),
                    expected: cluster.to_string(),
                    actual: s.cluster.clone(),
                }),
                Some(_) => Ok(Arc::from(shard.as_str())),
            });
            let shard_name = match verdict {
                Ok(name) => name.clone(),
                Err(error) => {
                    summary.skipped.push((fqdn.to_string(), error.to_string()));
                    continue;
                }
            };
            let fqdn = match revalidate(fqdn) {
                Ok(fqdn) => fqdn,
                Err(error) => {
                    summary.skipped.push((fqdn.to_string(), error.to_string()));
                    continue;
                }
            };
            let bindings = &mut self.cluster_mut(cluster)?.bindings;
            let previous = match bindings.insert(fqdn.clone(), shard.clone()) {
                None => {
                    summary.added += 1;
                    None
                }
                Some(previous) if previous == *shard => {
                    summary.unchanged += 1;
                    continue;
                }
                Some(previous) => {
                    summary.moved += 1;
                    Some(Arc::from(previous.as_str()))
                }
            };
            self.history.push(Record::binding(stamp, cluster_name.clone(), fqdn, shard_name, previous));
        }
        Ok(Response::Batch(summary))
    }

    fn revoke(&mut self, target: &RevocationTarget, at: u64) -> Result<Response, StateError> {
        match target {
            RevocationTarget::Host(host) => names::object_name("host id", host)?,
            RevocationTarget::Serial(serial) => {
                if lbfleet_proto::identity::normalize_serial(serial).as_deref() != Some(serial.as_str()) {
                    return Err(StateError::Invalid {
                        field: "certificate serial".into(),
                        value: serial.clone(),
                        reason: "must be hex digits, as `lbfleet pki` prints them".into(),
                    });
                }
            }
        }
        // A host need not be in the topology: a removed host's certificate must stay refused too.
        let at = self.revocations.revoke(target, at);
        Ok(Response::Revoked { target: target.clone(), at })
    }

    fn cluster(&self, name: &str) -> Result<&Cluster, StateError> {
        self.clusters.get(name).ok_or_else(|| not_found(ObjectKind::Cluster, name))
    }

    fn cluster_mut(&mut self, name: &str) -> Result<&mut Cluster, StateError> {
        self.clusters.get_mut(name).ok_or_else(|| not_found(ObjectKind::Cluster, name))
    }

    fn shard(&self, name: &str) -> Result<&Shard, StateError> {
        self.shards.get(name).ok_or_else(|| not_found(ObjectKind::Shard, name))
    }
}

/// Validates an FQDN again inside `apply`: the log must never hold a name the edge would refuse.
fn revalidate(fqdn: &Fqdn) -> Result<Fqdn, StateError> {
    let parsed = Fqdn::parse(fqdn.as_str())?;
    if parsed != *fqdn {
        return Err(StateError::Invalid {
            field: "FQDN".into(),
            value: fqdn.to_string(),
            reason: format!("not in canonical form (expected {parsed})"),
        });
    }
    Ok(parsed)
}

fn not_found(kind: ObjectKind, name: &str) -> StateError {
    StateError::NotFound { kind, name: name.to_string() }
}

fn already_exists(kind: ObjectKind, name: &str) -> StateError {
    StateError::AlreadyExists { kind, name: name.to_string() }
}

#[cfg(test)]
mod tests;
