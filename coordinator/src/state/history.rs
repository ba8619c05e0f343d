//! The replicated history: who changed what, and when, one record per change as applied.
//!
//! Records are written by `apply` from what the log entry carries (the caller's identity and
//! the leader's clock when it took the write), so every node keeps the same history and a
//! snapshot carries it. Its length is bounded by a replicated limit; the oldest records go first.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;

use lbfleet_proto::Fqdn;
use serde::Deserialize;
use serde::Serialize;

use super::AdminState;
use super::Command;
use super::Response;
use super::State;

/// Records kept unless `SetHistoryLimit` says otherwise.
pub const DEFAULT_LIMIT: u64 = 100_000;

/// Who asked for the changes of one log entry's command, when, and at which version.
#[derive(Debug, Clone)]
pub struct Stamp {
    /// The log index that carries the change.
    pub version: u64,
    /// When the leader took the write, Unix ms; 0 when the entry does not say.
    pub at_unix_ms: i64,
    /// The caller's identity, e.g. `admin:alice`; empty when the entry does not say.
    pub by: Arc<str>,
}

impl Stamp {
    /// A change the log entry names no caller for (entries written before callers were recorded).
    pub fn unattributed(version: u64) -> Stamp {
        Stamp { version, at_unix_ms: 0, by: Arc::from("") }
    }
}

/// What a record says was done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    Bind,
    Move,
    Unbind,
    CreateCluster,
    DeleteCluster,
    SetCluster,
    AddHost,
    RemoveHost,
    SetHost,
    CreateShard,
    DeleteShard,
    AddNode,
    RemoveNode,
    SetNode,
    NodeState(AdminState),
    Revoke,
    Unrevoke,
    SetHistoryLimit,
}

impl Action {
    /// The word operators read, as `HistoryRecord.action` carries it.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Bind => "bind",
            Action::Move => "move",
            Action::Unbind => "unbind",
            Action::CreateCluster => "create cluster",
            Action::DeleteCluster => "delete cluster",
            Action::SetCluster => "set cluster",
            Action::AddHost => "add host",
            Action::RemoveHost => "remove host",
            Action::SetHost => "set host",
            Action::CreateShard => "create shard",
            Action::DeleteShard => "delete shard",
            Action::AddNode => "add node",
            Action::RemoveNode => "remove node",
            Action::SetNode => "set node",
            Action::NodeState(AdminState::Drain) => "drain node",
            Action::NodeState(AdminState::Maint) => "maint node",
            Action::NodeState(AdminState::Ready) => "ready node",
            Action::Revoke => "revoke",
            Action::Unrevoke => "unrevoke",
            Action::SetHistoryLimit => "set history limit",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One change. Names are shared `Arc<str>`s: the records of one batch hold one copy of its
/// cluster, caller and shards, so a full history costs little beside the bindings themselves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub version: u64,
    pub at_unix_ms: i64,
    pub by: Arc<str>,
    pub action: Action,
    pub cluster: Option<Arc<str>>,
    pub fqdn: Option<Fqdn>,
    pub shard: Option<Arc<str>>,
    /// The shard before a move or an unbind.
    pub previous: Option<Arc<str>>,
    /// The object of a topology change: a cluster, host, shard or node name, a certificate.
    pub subject: Option<Box<str>>,
    pub detail: Option<Box<str>>,
}

impl Record {
    /// A record of `action` with only the stamp set.
    pub fn new(stamp: &Stamp, action: Action) -> Record {
        Record {
            version: stamp.version,
            at_unix_ms: stamp.at_unix_ms,
            by: stamp.by.clone(),
            action,
            cluster: None,
            fqdn: None,
            shard: None,
            previous: None,
            subject: None,
            detail: None,
        }
    }

    /// A binding change: `bind` when `previous` is `None`, else `move` from it.
    pub fn binding(
        stamp: &Stamp,
        cluster: Arc<str>,
        fqdn: Fqdn,
        shard: Arc<str>,
        previous: Option<Arc<str>>,
    ) -> Record {
        let action = if previous.is_some() { Action::Move } else { Action::Bind };
        Record { cluster: Some(cluster), fqdn: Some(fqdn), shard: Some(shard), previous, ..Record::new(stamp, action) }
    }

    fn in_cluster(self, cluster: &str) -> Record {
        Record { cluster: Some(Arc::from(cluster)), ..self }
    }

    fn about(self, subject: impl fmt::Display) -> Record {
        Record { subject: Some(subject.to_string().into_boxed_str()), ..self }
    }

    fn detail(self, detail: impl fmt::Display) -> Record {
        Record { detail: Some(detail.to_string().into_boxed_str()), ..self }
    }
}

/// The kept records, oldest first, and how many may be kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    records: VecDeque<Record>,
    limit: u64,
}

impl Default for History {
    fn default() -> History {
        History { records: VecDeque::new(), limit: DEFAULT_LIMIT }
    }
}

impl History {
    /// Keeps `record`, dropping the oldest beyond the limit.
    pub fn push(&mut self, record: Record) {
        self.records.push_back(record);
        self.trim();
    }

    /// Sets how many records are kept; returns the limit before.
    pub fn set_limit(&mut self, limit: u64) -> u64 {
        let previous = std::mem::replace(&mut self.limit, limit);
        self.trim();
        previous
    }

    /// How many records may be kept.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// How many records are kept.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether no record is kept.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The kept records, oldest first.
    pub fn records(&self) -> impl DoubleEndedIterator<Item = &Record> + ExactSizeIterator {
        self.records.iter()
    }

    fn trim(&mut self) {
        let limit = usize::try_from(self.limit).unwrap_or(usize::MAX);
        if self.records.len() > limit {
            self.records.drain(..self.records.len() - limit);
        }
    }
}

/// The records of one applied command other than a batch (which records its own entries as it
/// applies them); `state` is the state after it. Changes that left everything as it was (a bind
/// to the shard already bound, a node set to the state it had) record nothing.
pub fn records_of(state: &State, stamp: &Stamp, command: &Command, response: &Response) -> Vec<Record> {
    let record = |action| Record::new(stamp, action);
    let shard_cluster = |shard: &str| state.shards.get(shard).map(|s| s.cluster.clone());
    let one = match (command, response) {
        (_, Response::Bound { previous: Some(previous), shard, .. }) if previous == shard => return Vec::new(),
        (_, Response::Bound { cluster, fqdn, shard, previous }) => Record::binding(
            stamp,
            cluster.as_str().into(),
            fqdn.clone(),
            shard.as_str().into(),
            previous.as_deref().map(Arc::from),
        ),
        (_, Response::Unbound { cluster, fqdn, shard }) => Record {
            cluster: Some(cluster.as_str().into()),
            fqdn: Some(fqdn.clone()),
            previous: Some(shard.as_str().into()),
            ..record(Action::Unbind)
        },
        (_, Response::ClusterCreated { name, haproxy_container }) => record(Action::CreateCluster)
            .in_cluster(name)
            .about(name)
            .detail(format_args!("haproxy container {haproxy_container}")),
        (_, Response::ClusterDeleted { name }) => record(Action::DeleteCluster).in_cluster(name).about(name),
        (Command::SetCluster { haproxy_container, .. }, Response::ClusterChanged { name }) => {
            record(Action::SetCluster)
                .in_cluster(name)
                .about(name)
                .detail(format_args!("haproxy container {haproxy_container}"))
        }
        (Command::AddHost { address, haproxy_container, .. }, Response::HostAdded { id, cluster }) => {
            let container = haproxy_container.as_ref().map(|c| format!(", haproxy container {c}")).unwrap_or_default();
            record(Action::AddHost).in_cluster(cluster).about(id).detail(format_args!("address {address}{container}"))
        }
        (_, Response::HostRemoved { id, cluster }) => record(Action::RemoveHost).in_cluster(cluster).about(id),
        (Command::SetHost { haproxy_container, .. }, Response::HostChanged { id, cluster }) => {
            let detail = match haproxy_container {
                Some(container) => format!("haproxy container {container}"),
                None => "the cluster's haproxy container".to_string(),
            };
            record(Action::SetHost).in_cluster(cluster).about(id).detail(detail)
        }
        (Command::CreateShard { cluster, .. }, Response::ShardCreated { name, lb_backend }) => {
            record(Action::CreateShard).in_cluster(cluster).about(name).detail(format_args!("backend {lb_backend}"))
        }
        (_, Response::ShardDeleted { name, cluster, moved, moved_to }) => {
            let deleted = record(Action::DeleteShard).in_cluster(cluster).about(name);
            let Some(to) = moved_to else { return vec![deleted] };
            let deleted = deleted.detail(format_args!("moved {} FQDNs to shard {to}", moved.len()));
            // Each moved FQDN is a change of its own: `history --fqdn` must find it.
            let (cluster, from, to): (Arc<str>, Arc<str>, Arc<str>) =
                (cluster.as_str().into(), name.as_str().into(), to.as_str().into());
            let moves = moved
                .iter()
                .map(|fqdn| Record::binding(stamp, cluster.clone(), fqdn.clone(), to.clone(), Some(from.clone())));
            return std::iter::once(deleted).chain(moves).collect();
        }
        (Command::AddNode { host, address, .. }, Response::NodeAdded { name, shard }) => {
            node_record(record(Action::AddNode), shard, shard_cluster(shard))
                .about(name)
                .detail(format_args!("address {address} on host {host}"))
        }
        (_, Response::NodeRemoved { name, shard }) => {
            node_record(record(Action::RemoveNode), shard, shard_cluster(shard)).about(name)
        }
        (Command::SetNode { address, .. }, Response::NodeChanged { name, shard }) => {
            node_record(record(Action::SetNode), shard, shard_cluster(shard))
                .about(name)
                .detail(format_args!("address {address}"))
        }
        (_, Response::NodeStateSet { state: now, previous, .. }) if now == previous => return Vec::new(),
        (_, Response::NodeStateSet { name, shard, state: now, previous }) => {
            node_record(record(Action::NodeState(*now)), shard, shard_cluster(shard))
                .about(name)
                .detail(format_args!("was {previous}"))
        }
        (_, Response::Revoked { target, .. }) => record(Action::Revoke).about(target),
        (_, Response::Unrevoked { target }) => record(Action::Unrevoke).about(target),
        (_, Response::HistoryLimitSet { limit, previous }) => {
            record(Action::SetHistoryLimit).detail(format_args!("{limit} records (was {previous})"))
        }
        // Batches record their own entries; groups, conditions and callers are unwrapped by apply.
        _ => return Vec::new(),
    };
    vec![one]
}

fn node_record(record: Record, shard: &str, cluster: Option<String>) -> Record {
    Record { shard: Some(shard.into()), cluster: cluster.map(Arc::from), ..record }
}
