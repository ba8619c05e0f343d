//! The typed commands of the replicated log, their responses and their errors.

use std::fmt;

use lbfleet_proto::Fqdn;
use lbfleet_proto::FqdnError;
use serde::Deserialize;
use serde::Serialize;

use super::revocations::unix_time;
use super::revocations::RevocationTarget;
use super::AdminState;

/// One entry of the Raft log's application payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Creates a cluster; `haproxy_container` defaults to `hosting-haproxy`.
    CreateCluster { name: String, haproxy_container: Option<String> },
    /// Registers a Docker host whose agent serves the cluster's load balancer.
    AddHost { id: String, cluster: String, address: String, haproxy_container: Option<String> },
    /// Creates a shard; its LB backend becomes `shard-{name}`.
    CreateShard { name: String, cluster: String },
    /// Adds a backend server (an nginx node) to a shard.
    AddNode { name: String, shard: String, host: String, address: String, container: Option<String> },
    /// Removes a backend server.
    RemoveNode { name: String },
    /// Binds an FQDN to a shard, moving it if it was bound elsewhere in the cluster.
    Bind { fqdn: Fqdn, shard: String, cluster: Option<String> },
    /// Removes an FQDN's binding.
    Unbind { fqdn: Fqdn, cluster: Option<String> },
    /// Many binds in one log entry; entries that cannot apply are skipped and reported.
    BindBatch { cluster: String, entries: Vec<(Fqdn, String)> },
    /// Independent commands from concurrent clients, committed as one log entry (group commit).
    Group(Vec<Command>),
    /// Refuses a host's or one certificate's connections from now on; `at` is the Unix time it was asked.
    Revoke { target: RevocationTarget, at: u64 },
    /// Lifts a revocation.
    Unrevoke { target: RevocationTarget },
    /// Removes an LB host that no node names.
    RemoveHost { id: String },
    /// Deletes a shard without nodes; its bindings move to `move_to`, or the delete is refused.
    DeleteShard { name: String, move_to: Option<String> },
    /// Deletes an empty cluster.
    DeleteCluster { name: String },
    /// Changes a cluster's HAProxy container.
    SetCluster { name: String, haproxy_container: String },
    /// Sets or (`None`) clears a host's own HAProxy container.
    SetHost { id: String, haproxy_container: Option<String> },
    /// Changes a node's address.
    SetNode { name: String, address: String },
    /// Drains a node, puts it in maintenance, or makes it ready again.
    SetNodeState { name: String, state: AdminState },
    /// `command`, applied only to the state at version `if_version` (optimistic concurrency:
    /// the caller computed it from that version).
    Conditional { if_version: u64, command: Box<Command> },
    /// `command` as the caller `by` (its certificate's identity, e.g. `admin:alice`) asked it, taken
    /// by the leader at `at_unix_ms`: fixed in the entry, so every node records the same history.
    By { by: String, at_unix_ms: i64, command: Box<Command> },
    /// Sets how many changes the history keeps (the oldest go first); 0 keeps none.
    SetHistoryLimit { limit: u64 },
}

impl Command {
    /// The command itself, without the caller and time it carries.
    pub fn inner(&self) -> &Command {
        match self {
            Command::By { command, .. } => command.inner(),
            command => command,
        }
    }
}

/// What a successfully applied command did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    ClusterCreated {
        name: String,
        haproxy_container: String,
    },
    HostAdded {
        id: String,
        cluster: String,
    },
    ShardCreated {
        name: String,
        lb_backend: String,
    },
    NodeAdded {
        name: String,
        shard: String,
    },
    NodeRemoved {
        name: String,
        shard: String,
    },
    Bound {
        cluster: String,
        fqdn: Fqdn,
        shard: String,
        previous: Option<String>,
    },
    Unbound {
        cluster: String,
        fqdn: Fqdn,
        shard: String,
    },
    Batch(BatchSummary),
    /// One result per command of a `Group`, in order.
    Group(Vec<Result<Response, StateError>>),
    /// A Raft-internal entry (blank or membership) that changes no topology.
    Noop,
    /// A revocation in force since `at` (earlier than asked when it was revoked already).
    Revoked {
        target: RevocationTarget,
        at: u64,
    },
    Unrevoked {
        target: RevocationTarget,
    },
    HostRemoved {
        id: String,
        cluster: String,
    },
    /// `moved` went to `moved_to` in the same change.
    ShardDeleted {
        name: String,
        cluster: String,
        moved: Vec<Fqdn>,
        moved_to: Option<String>,
    },
    ClusterDeleted {
        name: String,
    },
    ClusterChanged {
        name: String,
    },
    HostChanged {
        id: String,
        cluster: String,
    },
    NodeChanged {
        name: String,
        shard: String,
    },
    /// A node's admin state is now `state` (it was `previous`).
    NodeStateSet {
        name: String,
        shard: String,
        state: AdminState,
        previous: AdminState,
    },
    /// The history keeps at most `limit` changes now (it kept `previous`).
    HistoryLimitSet {
        limit: u64,
        previous: u64,
    },
}

/// Counts of what a `BindBatch` did, and every entry it skipped with the reason.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchSummary {
    pub added: u64,
    pub moved: u64,
    pub unchanged: u64,
    pub skipped: Vec<(String, String)>,
}

/// The kinds of objects the state holds, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ObjectKind {
    Cluster,
    Host,
    Shard,
    Node,
    Binding,
    Revocation,
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ObjectKind::Cluster => "cluster",
            ObjectKind::Host => "host",
            ObjectKind::Shard => "shard",
            ObjectKind::Node => "node",
            ObjectKind::Binding => "binding",
            ObjectKind::Revocation => "revocation of",
        })
    }
}

/// Why a command was refused. Refused commands still occupy their log index but change nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum StateError {
    /// The command names an object that does not exist.
    #[error("{kind} {name:?} not found")]
    NotFound { kind: ObjectKind, name: String },
    /// The command creates an object that exists already.
    #[error("{kind} {name:?} already exists")]
    AlreadyExists { kind: ObjectKind, name: String },
    /// A value breaks a naming or format rule; `reason` says which.
    #[error("invalid {field} {value:?}: {reason}")]
    Invalid { field: String, value: String, reason: String },
    /// An FQDN that the FQDN rules refuse reached the state machine.
    #[error(transparent)]
    Fqdn {
        /// What is wrong with it.
        #[from]
        source: FqdnError,
    },
    /// An unbind without a cluster for an FQDN bound in more than one.
    #[error("{fqdn} is bound in several clusters ({}); name one with --cluster", clusters.join(", "))]
    Ambiguous { fqdn: String, clusters: Vec<String> },
    /// A `Conditional` command computed from another version than the state's.
    #[error("the state is at version {current}, not {if_version} as --if-version said: read it again and retry")]
    Stale { if_version: u64, current: u64 },
    /// The object cannot be removed while something depends on it; `reason` says what.
    #[error("{kind} {name:?} is in use: {reason}")]
    InUse { kind: ObjectKind, name: String, reason: String },
    /// Two objects the command links are in different clusters.
    #[error("{kind} {name:?} belongs to cluster {actual:?}, not {expected:?}")]
    WrongCluster { kind: ObjectKind, name: String, expected: String, actual: String },
}

impl fmt::Display for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Response::ClusterCreated { name, haproxy_container } => {
                write!(f, "created cluster {name} (haproxy container {haproxy_container})")
            }
            Response::HostAdded { id, cluster } => write!(f, "added host {id} to cluster {cluster}"),
            Response::ShardCreated { name, lb_backend } => write!(f, "created shard {name} (backend {lb_backend})"),
            Response::NodeAdded { name, shard } => write!(f, "added node {name} to shard {shard}"),
            Response::NodeRemoved { name, shard } => write!(f, "removed node {name} from shard {shard}"),
            Response::Bound { fqdn, shard, previous: None, .. } => write!(f, "bound {fqdn} to shard {shard}"),
            Response::Bound { fqdn, shard, previous: Some(previous), .. } if previous == shard => {
                write!(f, "{fqdn} was already bound to shard {shard}")
            }
            Response::Bound { fqdn, shard, previous: Some(previous), .. } => {
                write!(f, "moved {fqdn} from shard {previous} to shard {shard}")
            }
            Response::Unbound { fqdn, shard, .. } => write!(f, "unbound {fqdn} (was shard {shard})"),
            Response::Batch(summary) => write!(
                f,
                "{} added, {} moved, {} unchanged, {} skipped",
                summary.added,
                summary.moved,
                summary.unchanged,
                summary.skipped.len()
            ),
            Response::Group(results) => write!(f, "{} commands", results.len()),
            Response::Noop => f.write_str("no change"),
            Response::Revoked { target, at } => {
                write!(f, "revoked {target} (since {}): coordinators refuse it and close its stream", unix_time(*at))
            }
            Response::Unrevoked { target } => write!(f, "lifted the revocation of {target}"),
            Response::HostRemoved { id, cluster } => write!(f, "removed host {id} from cluster {cluster}"),
            Response::ShardDeleted { name, moved, moved_to: Some(to), .. } => {
                write!(f, "deleted shard {name}; moved its {} FQDNs to shard {to}", moved.len())
            }
            Response::ShardDeleted { name, .. } => write!(f, "deleted shard {name}"),
            Response::ClusterDeleted { name } => write!(f, "deleted cluster {name}"),
            Response::ClusterChanged { name } => write!(f, "changed cluster {name}"),
            Response::HostChanged { id, .. } => write!(f, "changed host {id}"),
            Response::NodeChanged { name, .. } => write!(f, "changed node {name}"),
            Response::NodeStateSet { name, state, previous, .. } if state == previous => {
                write!(f, "node {name} was already {state}")
            }
            Response::NodeStateSet { name, state, previous, .. } => {
                write!(f, "set node {name} to {state} (was {previous})")
            }
            Response::HistoryLimitSet { limit: 0, .. } => f.write_str("the history keeps no changes now"),
            Response::HistoryLimitSet { limit, previous } => {
                write!(f, "the history keeps the last {limit} changes (it kept {previous})")
            }
        }
    }
}
