//! Conversions between protobuf messages and domain types, all in one place.
//!
//! Requests are validated here, at the edge, before anything reaches the log.

use lbfleet_proto::identity::normalize_serial;
use lbfleet_proto::pb;
use lbfleet_proto::pb::command::Kind as PbKind;
use lbfleet_proto::Fqdn;
use tonic::Status;

use crate::raft::state_machine::Applied;
use crate::state::names;
use crate::state::revocations::RevocationTarget;
use crate::state::revocations::Revocations;
use crate::state::AdminState;
use crate::state::BatchSummary;
use crate::state::Cluster;
use crate::state::Command;
use crate::state::Response;
use crate::state::StateError;

/// Turns a wire command into a domain command, refusing malformed input.
pub fn command_from_pb(command: Option<pb::Command>) -> Result<Command, Status> {
    let kind = command.and_then(|c| c.kind).ok_or_else(|| Status::invalid_argument("request carries no command"))?;
    let command = match kind {
        PbKind::CreateCluster(c) => {
            Command::CreateCluster { name: c.name, haproxy_container: non_empty(c.haproxy_container) }
        }
        PbKind::AddHost(h) => Command::AddHost {
            id: h.id,
            cluster: h.cluster,
            address: h.address,
            haproxy_container: non_empty(h.haproxy_container),
        },
        PbKind::SetNodeState(n) => Command::SetNodeState { name: n.name, state: admin_state(n.state)? },
        PbKind::CreateShard(s) => Command::CreateShard { name: s.name, cluster: s.cluster },
        PbKind::AddNode(n) => Command::AddNode {
            name: n.name,
            shard: n.shard,
            host: n.host,
            address: n.address,
            container: non_empty(n.container),
        },
        PbKind::RemoveNode(n) => Command::RemoveNode { name: n.name },
        PbKind::Bind(b) => Command::Bind { fqdn: fqdn(&b.fqdn)?, shard: b.shard, cluster: non_empty(b.cluster) },
        PbKind::Unbind(u) => Command::Unbind { fqdn: fqdn(&u.fqdn)?, cluster: non_empty(u.cluster) },
        PbKind::BindBatch(batch) => {
            let mut entries = Vec::with_capacity(batch.entries.len());
            for entry in batch.entries {
                entries.push((fqdn(&entry.fqdn)?, entry.shard));
            }
            Command::BindBatch { cluster: batch.cluster, entries }
        }
        PbKind::Revoke(r) => Command::Revoke { target: revocation_target(r.host, r.serial)?, at: unix_now() },
        PbKind::Unrevoke(u) => Command::Unrevoke { target: revocation_target(u.host, u.serial)? },
        PbKind::RemoveHost(h) => Command::RemoveHost { id: h.id },
        PbKind::DeleteShard(d) => Command::DeleteShard { name: d.name, move_to: non_empty(d.move_to) },
        PbKind::DeleteCluster(d) => Command::DeleteCluster { name: d.name },
        PbKind::SetCluster(c) => Command::SetCluster { name: c.name, haproxy_container: c.haproxy_container },
        PbKind::SetHost(h) => Command::SetHost { id: h.id, haproxy_container: non_empty(h.haproxy_container) },
        PbKind::SetNode(n) => Command::SetNode { name: n.name, address: n.address },
        PbKind::SetHistoryLimit(l) => Command::SetHistoryLimit { limit: l.limit },
    };
    precheck(&command).map_err(state_error_to_status)?;
    Ok(command)
}

/// The name checks `apply` makes too, answered before the command costs a log entry.
fn precheck(command: &Command) -> Result<(), StateError> {
    match command {
        Command::CreateCluster { name, .. } => names::object_name("cluster name", name),
        Command::AddHost { id, .. } => names::object_name("host id", id),
        Command::CreateShard { name, .. } => names::object_name("shard name", name),
        Command::AddNode { name, address, .. } => {
            names::object_name("node name", name)?;
            names::server_address("node address", address)
        }
        Command::SetNode { address, .. } => names::server_address("node address", address),
        Command::SetCluster { haproxy_container, .. } => names::container_name("haproxy container", haproxy_container),
        _ => Ok(()),
    }
}

/// The revocations in force, for status.
pub fn revocations(revocations: &Revocations) -> Vec<pb::Revocation> {
    revocations
        .list()
        .map(|(target, revoked_at)| match target {
            RevocationTarget::Host(host) => pb::Revocation { host, serial: String::new(), revoked_at },
            RevocationTarget::Serial(serial) => pb::Revocation { host: String::new(), serial, revoked_at },
        })
        .collect()
}

/// Exactly one of a host and a serial; the serial in the form certificates are matched by.
fn revocation_target(host: String, serial: String) -> Result<RevocationTarget, Status> {
    match (host.is_empty(), serial.is_empty()) {
        (false, true) => Ok(RevocationTarget::Host(host)),
        (true, false) => normalize_serial(&serial).map(RevocationTarget::Serial).ok_or_else(|| {
            Status::invalid_argument(format!(
                "invalid certificate serial {serial:?}: give it in hex, e.g. 5f:3a:0c or 5f3a0c"
            ))
        }),
        _ => Err(Status::invalid_argument("name either a host or a certificate serial")),
    }
}

/// Seconds since 1970, recorded in a revocation's log entry.
fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |since| since.as_secs())
}

/// A wire admin state; a number this build does not know is refused, not read as "ready".
fn admin_state(value: i32) -> Result<AdminState, Status> {
    pb::AdminState::try_from(value).map(AdminState::from).map_err(|_| {
        Status::invalid_argument(format!("unknown node admin state {value}: expected ready, drain or maint"))
    })
}

fn fqdn(input: &str) -> Result<Fqdn, Status> {
    Fqdn::parse(input).map_err(|e| Status::invalid_argument(e.to_string()))
}

fn non_empty(value: String) -> Option<String> {
    (!value.is_empty()).then_some(value)
}

/// Builds the reply to a committed write.
pub fn write_reply(version: u64, response: &Response) -> pb::WriteReply {
    let batch = match response {
        Response::Batch(summary) => Some(batch_to_pb(summary)),
        _ => None,
    };
    let cluster = match response {
        Response::Bound { cluster, .. } | Response::Unbound { cluster, .. } => cluster.clone(),
        _ => String::new(),
    };
    pb::WriteReply { version, message: response.to_string(), batch, cluster }
}

fn batch_to_pb(summary: &BatchSummary) -> pb::BatchSummary {
    pb::BatchSummary {
        added: summary.added,
        moved: summary.moved,
        unchanged: summary.unchanged,
        skipped: summary
            .skipped
            .iter()
            .map(|(fqdn, reason)| pb::Skipped { fqdn: fqdn.clone(), reason: reason.clone() })
            .collect(),
    }
}

/// The one mapping from state errors to gRPC status codes.
pub fn state_error_to_status(error: StateError) -> Status {
    let message = error.to_string();
    match error {
        StateError::NotFound { .. } => Status::not_found(message),
        StateError::AlreadyExists { .. } => Status::already_exists(message),
        StateError::Invalid { .. } | StateError::Fqdn { .. } => Status::invalid_argument(message),
        StateError::Ambiguous { .. }
        | StateError::WrongCluster { .. }
        | StateError::InUse { .. }
        | StateError::Stale { .. } => Status::failed_precondition(message),
    }
}

/// A cluster's full view, optionally limited to one LB host.
pub fn cluster_view(applied: &Applied, cluster: &Cluster, host_filter: Option<&str>) -> pb::ClusterView {
    let state = &applied.state;
    let hosts = state
        .hosts
        .values()
        .filter(|h| h.cluster == cluster.name && host_filter.is_none_or(|f| f == h.id))
        .map(|h| pb::HostView {
            id: h.id.clone(),
            address: h.address.clone(),
            haproxy_container: state.haproxy_container_of(h),
        })
        .collect();
    let shards = state
        .shards
        .values()
        .filter(|s| s.cluster == cluster.name)
        .map(|s| pb::ShardView { name: s.name.clone(), lb_backend: s.lb_backend.clone() })
        .collect();
    let nodes = state
        .nodes
        .values()
        .filter(|n| state.shards.get(&n.shard).is_some_and(|s| s.cluster == cluster.name))
        .map(|n| pb::NodeView {
            name: n.name.clone(),
            shard: n.shard.clone(),
            host: n.host.clone(),
            address: n.address.clone(),
            container: n.container.clone().unwrap_or_default(),
            admin: pb::AdminState::from(n.admin).into(),
            server_id: n.server_id,
        })
        .collect();
    let bindings = cluster
        .bindings
        .iter()
        .map(|(fqdn, shard)| pb::BindEntry { fqdn: fqdn.to_string(), shard: shard.clone() })
        .collect();
    pb::ClusterView {
        version: applied.version(),
        name: cluster.name.clone(),
        haproxy_container: cluster.config.haproxy_container.clone(),
        map_path: cluster.config.map_path.clone(),
        hosts,
        shards,
        nodes,
        bindings,
    }
}

/// One line per cluster for listings.
pub fn cluster_summary(applied: &Applied, cluster: &Cluster) -> pb::ClusterSummary {
    let state = &applied.state;
    let in_cluster = |c: &str| c == cluster.name;
    pb::ClusterSummary {
        name: cluster.name.clone(),
        hosts: state.hosts.values().filter(|h| in_cluster(&h.cluster)).count() as u64,
        shards: state.shards.values().filter(|s| in_cluster(&s.cluster)).count() as u64,
        nodes: state
            .nodes
            .values()
            .filter(|n| state.shards.get(&n.shard).is_some_and(|s| in_cluster(&s.cluster)))
            .count() as u64,
        bindings: cluster.bindings.len() as u64,
    }
}
