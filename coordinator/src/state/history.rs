//! The replicated history: who changed what, and when, one record per change as applied.
//!
//! Records are written by `apply` from what the log entry carries (the caller's identity and
//! the leader's clock when it took the write), so every node keeps the same history and a
//! snapshot carries it. Its length is bounded by a replicated limit; the oldest records go first.

use std::collections::HashSet;
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
#[serde(from = "Stored")]
pub struct History {
    records: VecDeque<Record>,
    limit: u64,
}

/// A history as encoded (the same fields): decoding gives every name its own allocation.
#[derive(Deserialize)]
struct Stored {
    records: VecDeque<Record>,
    limit: u64,
}

impl From<Stored> for History {
    /// Shares each name among the records again, as applying them did.
    fn from(stored: Stored) -> History {
        let mut names: HashSet<Arc<str>> = HashSet::new();
        let mut share = |name: &mut Arc<str>| match names.get(&**name) {
            Some(shared) => *name = shared.clone(),
            None => {
                names.insert(name.clone());
            }
        };
        let mut records = stored.records;
        for record in &mut records {
            share(&mut record.by);
            for name in [&mut record.cluster, &mut record.shard, &mut record.previous].into_iter().flatten() {
                share(name);
            }
        }
        History { records, limit: stored.limit }
    }
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
            // The address and the host's own container are both optional: say what was given.
            let address = (!address.is_empty()).then(|| format!("address {address}"));
            let container = haproxy_container.as_ref().map(|c| format!("haproxy container {c}"));
            let detail: Vec<String> = address.into_iter().chain(container).collect();
            record(Action::AddHost).in_cluster(cluster).about(id).detail(format_args!("{}", detail.join(", ")))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::revocations::RevocationTarget;
    use crate::state::StateError;

    fn fqdn(s: &str) -> Fqdn {
        Fqdn::parse(s).unwrap()
    }

    fn by(who: &str, at_unix_ms: i64, command: Command) -> Command {
        Command::By { by: who.into(), at_unix_ms, command: Box::new(command) }
    }

    /// Applies each command at the version after the last one recorded: every command of these
    /// tests that succeeds records something, so this numbers them as the log would.
    fn run(state: &mut State, commands: &[Command]) -> Vec<Result<Response, StateError>> {
        commands
            .iter()
            .map(|command| {
                let version = state.history.records().last().map_or(0, |r| r.version);
                state.apply_at(command, version)
            })
            .collect()
    }

    fn topology() -> Vec<Command> {
        vec![
            by("admin:ops", 1_000, Command::CreateCluster { name: "eu".into(), haproxy_container: None }),
            by("admin:ops", 1_001, Command::CreateShard { name: "a".into(), cluster: "eu".into() }),
            by("admin:ops", 1_002, Command::CreateShard { name: "b".into(), cluster: "eu".into() }),
            by(
                "admin:ops",
                1_003,
                Command::AddHost {
                    id: "lb-1".into(),
                    cluster: "eu".into(),
                    address: "10.0.0.1".into(),
                    haproxy_container: None,
                },
            ),
            by(
                "admin:ops",
                1_004,
                Command::AddNode {
                    name: "a-1".into(),
                    shard: "a".into(),
                    host: "lb-1".into(),
                    address: "10.0.1.1:80".into(),
                    container: None,
                },
            ),
        ]
    }

    fn lines(state: &State) -> Vec<String> {
        state
            .history
            .records()
            .map(|r| {
                let name = |v: &Option<Arc<str>>| v.as_deref().unwrap_or("").to_string();
                format!(
                    "{} {} {} {} | {} {} {} {} | {} | {}",
                    r.version,
                    r.at_unix_ms,
                    r.by,
                    r.action,
                    name(&r.cluster),
                    r.fqdn.as_ref().map_or("", Fqdn::as_str),
                    name(&r.shard),
                    name(&r.previous),
                    r.subject.as_deref().unwrap_or(""),
                    r.detail.as_deref().unwrap_or(""),
                )
            })
            .collect()
    }

    #[test]
    fn every_change_is_recorded_with_its_caller_and_time() {
        let mut state = State::default();
        run(&mut state, &topology());
        run(
            &mut state,
            &[
                by("admin:alice", 2_000, Command::Bind { fqdn: fqdn("x.com"), shard: "a".into(), cluster: None }),
                by("admin:bob", 3_000, Command::Bind { fqdn: fqdn("x.com"), shard: "b".into(), cluster: None }),
                by("admin:bob", 3_001, Command::Unbind { fqdn: fqdn("x.com"), cluster: None }),
                by("admin:ops", 4_000, Command::SetNodeState { name: "a-1".into(), state: AdminState::Drain }),
                by("admin:ops", 4_001, Command::SetNode { name: "a-1".into(), address: "10.0.1.2:80".into() }),
                by("admin:ops", 4_002, Command::RemoveNode { name: "a-1".into() }),
                by("admin:ops", 5_000, Command::Revoke { target: RevocationTarget::Host("lb-9".into()), at: 5 }),
                by("admin:ops", 5_001, Command::Unrevoke { target: RevocationTarget::Host("lb-9".into()) }),
                by("admin:ops", 5_002, Command::SetHost { id: "lb-1".into(), haproxy_container: Some("lb".into()) }),
                by("admin:ops", 5_003, Command::SetCluster { name: "eu".into(), haproxy_container: "hp".into() }),
            ],
        );
        assert_eq!(
            lines(&state),
            [
                "1 1000 admin:ops create cluster | eu    | eu | haproxy container hosting-haproxy",
                "2 1001 admin:ops create shard | eu    | a | backend shard-a",
                "3 1002 admin:ops create shard | eu    | b | backend shard-b",
                "4 1003 admin:ops add host | eu    | lb-1 | address 10.0.0.1",
                "5 1004 admin:ops add node | eu  a  | a-1 | address 10.0.1.1:80 on host lb-1",
                "6 2000 admin:alice bind | eu x.com a  |  | ",
                "7 3000 admin:bob move | eu x.com b a |  | ",
                "8 3001 admin:bob unbind | eu x.com  b |  | ",
                "9 4000 admin:ops drain node | eu  a  | a-1 | was ready",
                "10 4001 admin:ops set node | eu  a  | a-1 | address 10.0.1.2:80",
                "11 4002 admin:ops remove node | eu  a  | a-1 | ",
                "12 5000 admin:ops revoke |     | host lb-9 | ",
                "13 5001 admin:ops unrevoke |     | host lb-9 | ",
                "14 5002 admin:ops set host | eu    | lb-1 | haproxy container lb",
                "15 5003 admin:ops set cluster | eu    | eu | haproxy container hp",
            ]
        );
    }

    #[test]
    fn failures_and_changes_that_change_nothing_record_nothing() {
        let mut state = State::default();
        run(&mut state, &topology());
        let before = state.history.len();
        let results = run(
            &mut state,
            &[
                by("admin:alice", 2_000, Command::Bind { fqdn: fqdn("x.com"), shard: "nope".into(), cluster: None }),
                by("admin:alice", 2_001, Command::RemoveHost { id: "lb-1".into() }),
                by("admin:alice", 2_002, Command::SetNodeState { name: "a-1".into(), state: AdminState::Ready }),
            ],
        );
        assert!(results[0].is_err() && results[1].is_err() && results[2].is_ok());
        assert_eq!(state.history.len(), before);
        state
            .apply_at(
                &by("admin:alice", 3_000, Command::Bind { fqdn: fqdn("y.com"), shard: "a".into(), cluster: None }),
                9,
            )
            .unwrap();
        state
            .apply_at(
                &by("admin:alice", 3_001, Command::Bind { fqdn: fqdn("y.com"), shard: "a".into(), cluster: None }),
                10,
            )
            .unwrap();
        assert_eq!(state.history.len(), before + 1, "binding again to the same shard is no change");
        // A refused conditional write records nothing either.
        let stale = Command::Conditional {
            if_version: 3,
            command: Box::new(Command::Unbind { fqdn: fqdn("y.com"), cluster: None }),
        };
        assert!(state.apply_at(&by("admin:alice", 3_002, stale), 11).is_err());
        assert_eq!(state.history.len(), before + 1);
    }

    #[test]
    fn a_group_keeps_each_callers_identity_and_a_batch_records_each_fqdn_that_changed() {
        let mut state = State::default();
        run(&mut state, &topology());
        state.apply_at(&Command::Bind { fqdn: fqdn("same.com"), shard: "a".into(), cluster: None }, 5).unwrap();
        state.apply_at(&Command::Bind { fqdn: fqdn("moved.com"), shard: "a".into(), cluster: None }, 6).unwrap();
        let group = Command::Group(vec![
            by("admin:alice", 10, Command::Bind { fqdn: fqdn("p.com"), shard: "a".into(), cluster: None }),
            by("admin:bob", 11, Command::Bind { fqdn: fqdn("q.com"), shard: "missing".into(), cluster: None }),
            by("admin:bob", 12, Command::Bind { fqdn: fqdn("r.com"), shard: "b".into(), cluster: None }),
        ]);
        state.apply_at(&group, 7).unwrap();
        let batch = Command::BindBatch {
            cluster: "eu".into(),
            entries: vec![
                (fqdn("same.com"), "a".into()),
                (fqdn("moved.com"), "b".into()),
                (fqdn("new.com"), "b".into()),
                (fqdn("lost.com"), "missing".into()),
            ],
        };
        state.apply_at(&by("admin:carol", 20, batch), 8).unwrap();
        let tail: Vec<String> = lines(&state).into_iter().skip(7).collect();
        assert_eq!(
            tail,
            [
                "8 10 admin:alice bind | eu p.com a  |  | ",
                "8 12 admin:bob bind | eu r.com b  |  | ",
                "9 20 admin:carol move | eu moved.com b a |  | ",
                "9 20 admin:carol bind | eu new.com b  |  | ",
            ]
        );
        // An unattributed entry (written before callers were recorded) names nobody.
        assert_eq!(&*state.history.records().nth(5).unwrap().by, "");
    }

    #[test]
    fn a_deleted_shards_fqdns_are_recorded_as_moves() {
        let mut state = State::default();
        run(&mut state, &topology()[..3]);
        state.apply_at(&Command::Bind { fqdn: fqdn("x.com"), shard: "a".into(), cluster: None }, 3).unwrap();
        let delete = by("admin:ops", 9, Command::DeleteShard { name: "a".into(), move_to: Some("b".into()) });
        state.apply_at(&delete, 4).unwrap();
        let tail: Vec<String> = lines(&state).into_iter().skip(4).collect();
        assert_eq!(
            tail,
            [
                "5 9 admin:ops delete shard | eu    | a | moved 1 FQDNs to shard b",
                "5 9 admin:ops move | eu x.com b a |  | "
            ]
        );
    }

    #[test]
    fn the_limit_is_replicated_and_drops_the_oldest() {
        let mut state = State::default();
        run(&mut state, &topology());
        assert_eq!(state.history.limit(), DEFAULT_LIMIT);
        let response = state.apply_at(&by("admin:ops", 9, Command::SetHistoryLimit { limit: 3 }), 5).unwrap();
        assert_eq!(response, Response::HistoryLimitSet { limit: 3, previous: DEFAULT_LIMIT });
        assert_eq!(
            lines(&state).last().unwrap(),
            &format!("6 9 admin:ops set history limit |     |  | 3 records (was {DEFAULT_LIMIT})")
        );
        assert_eq!(state.history.records().map(|r| r.version).collect::<Vec<_>>(), [4, 5, 6]);
        state.apply_at(&Command::Bind { fqdn: fqdn("x.com"), shard: "a".into(), cluster: None }, 6).unwrap();
        assert_eq!(state.history.records().map(|r| r.version).collect::<Vec<_>>(), [5, 6, 7]);
        state.apply_at(&Command::SetHistoryLimit { limit: 0 }, 7).unwrap();
        assert!(state.history.is_empty(), "0 keeps none, not even its own record");
        state.apply_at(&Command::Unbind { fqdn: fqdn("x.com"), cluster: None }, 8).unwrap();
        assert!(state.history.is_empty());
    }

    #[test]
    fn the_same_entries_give_every_node_the_same_history() {
        let mut entries = topology();
        entries.push(by("admin:alice", 7, Command::Bind { fqdn: fqdn("x.com"), shard: "a".into(), cluster: None }));
        entries.push(by("admin:ops", 8, Command::SetHistoryLimit { limit: 4 }));
        let replay = || {
            let mut state = State::default();
            for (index, entry) in entries.iter().enumerate() {
                let _ = state.apply_at(entry, index as u64);
            }
            state
        };
        let (one, other) = (replay(), replay());
        assert_eq!(one, other);
        assert_eq!(one.history.len(), 4);
        // And a state that went through a snapshot's encoding goes on the same.
        let mut restored: State = postcard::from_bytes(&postcard::to_allocvec(&one).unwrap()).unwrap();
        let mut continued = one.clone();
        let next = by("admin:bob", 9, Command::Unbind { fqdn: fqdn("x.com"), cluster: None });
        restored.apply_at(&next, 7).unwrap();
        continued.apply_at(&next, 7).unwrap();
        assert_eq!(restored, continued);
        // Decoding shares the names again.
        let ops: Vec<&Arc<str>> =
            restored.history.records().map(|r| &r.by).filter(|by| &***by == "admin:ops").collect();
        assert!(ops.len() >= 2 && ops.windows(2).all(|pair| Arc::ptr_eq(pair[0], pair[1])));
    }

    #[test]
    fn records_stay_small() {
        // 100,000 records must not cost much beside a million bindings: names are shared, and
        // a record holds pointers to them.
        assert!(std::mem::size_of::<Record>() <= 152, "a record takes {} bytes", std::mem::size_of::<Record>());
    }
}
