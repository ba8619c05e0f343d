//! Recent changes per cluster, so agents that are a few versions behind get deltas, not full state.
//!
//! Kept in memory beside the applied state (not in snapshots): after a restart or a snapshot
//! install it starts empty, and agents older than what it covers get the full state.

use std::collections::BTreeMap;
use std::collections::HashSet;
use std::collections::VecDeque;
use std::sync::Arc;

use lbfleet_proto::Fqdn;

use super::Command;
use super::Response;
use super::State;

/// Binding changes retained before the oldest are dropped.
pub const DEFAULT_CAPACITY: usize = 2_000_000;

/// One binding change at a version. Cluster and shard names are shared with every other change
/// naming them: a String each would cost more than the FQDN.
#[derive(Debug, Clone)]
struct Change {
    version: u64,
    cluster: Arc<str>,
    fqdn: Fqdn,
    /// `None`: unbound.
    shard: Option<Arc<str>>,
}

/// The net effect on one cluster since some version.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ClusterDelta {
    /// FQDN -> new shard, or `None` when unbound.
    pub bindings: BTreeMap<Fqdn, Option<String>>,
    /// The cluster's topology (nodes, shards, hosts, config) changed.
    pub topology_changed: bool,
}

/// A bounded log of binding and topology changes.
#[derive(Debug)]
pub struct ChangeLog {
    changes: VecDeque<Change>,
    topology: VecDeque<(u64, Arc<str>)>,
    /// One copy of each cluster and shard name the retained changes hold.
    names: Names,
    /// Every change with a version >= this is retained.
    covered_from: u64,
    capacity: usize,
}

impl Default for ChangeLog {
    fn default() -> ChangeLog {
        ChangeLog::new(DEFAULT_CAPACITY)
    }
}

impl ChangeLog {
    /// An empty log retaining at most `capacity` binding changes.
    pub fn new(capacity: usize) -> ChangeLog {
        ChangeLog {
            changes: VecDeque::new(),
            topology: VecDeque::new(),
            names: Names::default(),
            covered_from: 1,
            capacity: capacity.max(1),
        }
    }

    /// Forgets everything: only versions after `version` will be covered.
    pub fn reset(&mut self, version: u64) {
        *self = ChangeLog { covered_from: version + 1, ..ChangeLog::new(self.capacity) };
    }

    /// Records what a successfully applied command changed; `state` is the state after it.
    pub fn record(&mut self, version: u64, state: &State, command: &Command, response: &Response) {
        match (command, response) {
            (Command::Group(commands), Response::Group(results)) => {
                for (command, result) in commands.iter().zip(results) {
                    if let Ok(response) = result {
                        self.record(version, state, command, response);
                    }
                }
            }
            (Command::Conditional { command, .. }, response) | (Command::By { command, .. }, response) => {
                self.record(version, state, command, response)
            }
            (_, Response::Bound { cluster, fqdn, shard, previous }) if previous.as_ref() != Some(shard) => {
                self.push(version, cluster, fqdn.clone(), Some(shard));
            }
            (_, Response::Unbound { cluster, fqdn, .. }) => self.push(version, cluster, fqdn.clone(), None),
            (Command::BindBatch { cluster, entries }, Response::Batch(summary)) => {
                // Skipped entries need not reach the agents; unchanged ones are dropped by the agent,
                // which knows the value it holds.
                let Some(bindings) = state.clusters.get(cluster).map(|c| &c.bindings) else {
                    return;
                };
                let skipped: std::collections::HashSet<&str> =
                    summary.skipped.iter().map(|(fqdn, _)| fqdn.as_str()).collect();
                for (fqdn, shard) in entries {
                    if !skipped.contains(fqdn.as_str()) && bindings.get(fqdn) == Some(shard) {
                        self.push(version, cluster, fqdn.clone(), Some(shard));
                    }
                }
            }
            (Command::CreateCluster { name, .. }, _) => self.topology_changed(version, name),
            (Command::AddHost { cluster, .. }, _) | (Command::CreateShard { cluster, .. }, _) => {
                self.topology_changed(version, cluster)
            }
            (_, Response::HostRemoved { cluster, .. })
            | (_, Response::HostChanged { cluster, .. })
            | (_, Response::ClusterChanged { name: cluster }) => self.topology_changed(version, cluster),
            (_, Response::ShardDeleted { cluster, moved, moved_to, .. }) => {
                for fqdn in moved {
                    self.push(version, cluster, fqdn.clone(), moved_to.as_deref());
                }
                self.topology_changed(version, cluster);
            }
            // An admin state travels in the topology; re-asserting an unchanged one costs the agent
            // nothing (its rendered config is the same) and repairs a server changed behind its back.
            (_, Response::NodeAdded { shard, .. })
            | (_, Response::NodeRemoved { shard, .. })
            | (_, Response::NodeChanged { shard, .. })
            | (_, Response::NodeStateSet { shard, .. }) => {
                if let Some(shard) = state.shards.get(shard) {
                    self.topology_changed(version, &shard.cluster.clone());
                }
            }
            _ => {}
        }
    }

    fn push(&mut self, version: u64, cluster: &str, fqdn: Fqdn, shard: Option<&str>) {
        let cluster = self.names.get(cluster);
        let shard = shard.map(|shard| self.names.get(shard));
        self.changes.push_back(Change { version, cluster, fqdn, shard });
        while self.changes.len() > self.capacity {
            if let Some(dropped) = self.changes.pop_front() {
                self.covered_from = self.covered_from.max(dropped.version + 1);
                self.names.release(dropped.cluster);
                if let Some(shard) = dropped.shard {
                    self.names.release(shard);
                }
            }
        }
        while self.topology.front().is_some_and(|(v, _)| *v < self.covered_from) {
            if let Some((_, cluster)) = self.topology.pop_front() {
                self.names.release(cluster);
            }
        }
    }

    fn topology_changed(&mut self, version: u64, cluster: &str) {
        let cluster = self.names.get(cluster);
        self.topology.push_back((version, cluster));
    }

    /// Binding changes retained now.
    pub fn len(&self) -> usize {
        self.changes.len()
    }

    /// Whether no binding change is retained.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// Binding changes retained at most.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The net changes to `cluster` after `from_version`, or `None` when the log no longer covers them.
    pub fn since(&self, cluster: &str, from_version: u64) -> Option<ClusterDelta> {
        if from_version + 1 < self.covered_from {
            return None;
        }
        let mut delta = ClusterDelta::default();
        // Changes are in version order, so a binary search finds the first one after `from_version`.
        let start = self.changes.partition_point(|c| c.version <= from_version);
        for change in self.changes.range(start..).filter(|c| &*c.cluster == cluster) {
            delta.bindings.insert(change.fqdn.clone(), change.shard.as_deref().map(str::to_string));
        }
        delta.topology_changed = self.topology.iter().any(|(v, c)| *v > from_version && &**c == cluster);
        Some(delta)
    }
}

/// Interned cluster and shard names: one allocation per name, however many changes hold it.
#[derive(Debug, Default)]
struct Names(HashSet<Arc<str>>);

impl Names {
    /// The shared copy of `name`.
    fn get(&mut self, name: &str) -> Arc<str> {
        if let Some(name) = self.0.get(name) {
            return name.clone();
        }
        let name: Arc<str> = Arc::from(name);
        self.0.insert(name.clone());
        name
    }

    /// Gives back a change's copy; a name no retained change holds any more is forgotten, so
    /// deleted shards and clusters do not accumulate.
    fn release(&mut self, name: Arc<str>) {
        // Held by this set and `name` only.
        if Arc::strong_count(&name) == 2 {
            self.0.remove(&name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fqdn(s: &str) -> Fqdn {
        Fqdn::parse(s).unwrap()
    }

    fn state_with(commands: &[Command], log: &mut ChangeLog) -> State {
        let mut state = State::default();
        for (i, command) in commands.iter().enumerate() {
            if let Ok(response) = state.apply(command) {
                log.record(i as u64 + 1, &state, command, &response);
            }
        }
        state
    }

    fn setup() -> Vec<Command> {
        vec![
            Command::CreateCluster { name: "c".into(), haproxy_container: None },
            Command::CreateShard { name: "s1".into(), cluster: "c".into() },
            Command::CreateShard { name: "s2".into(), cluster: "c".into() },
        ]
    }

    #[test]
    fn net_effect_since_a_version() {
        let mut log = ChangeLog::default();
        let mut commands = setup();
        commands.push(Command::Bind { fqdn: fqdn("a.com"), shard: "s1".into(), cluster: None });
        commands.push(Command::Bind { fqdn: fqdn("b.com"), shard: "s1".into(), cluster: None });
        commands.push(Command::Bind { fqdn: fqdn("a.com"), shard: "s2".into(), cluster: None });
        commands.push(Command::Unbind { fqdn: fqdn("b.com"), cluster: None });
        state_with(&commands, &mut log);
        let delta = log.since("c", 3).unwrap();
        assert_eq!(delta.bindings[&fqdn("a.com")], Some("s2".into()));
        assert_eq!(delta.bindings[&fqdn("b.com")], None);
        assert!(!delta.topology_changed);
        assert!(log.since("c", 0).unwrap().topology_changed);
        assert_eq!(log.since("c", 7).unwrap(), ClusterDelta::default());
    }

    #[test]
    fn a_deleted_shards_bindings_reach_agents_as_moves() {
        let mut log = ChangeLog::default();
        let mut commands = setup();
        commands.push(Command::Bind { fqdn: fqdn("a.com"), shard: "s1".into(), cluster: None });
        commands.push(Command::DeleteShard { name: "s1".into(), move_to: Some("s2".into()) });
        commands.push(Command::SetNode { name: "missing".into(), address: "x:80".into() });
        state_with(&commands, &mut log);
        let delta = log.since("c", 4).unwrap();
        assert_eq!(delta.bindings[&fqdn("a.com")], Some("s2".into()));
        assert!(delta.topology_changed, "the deleted backend must leave haproxy.cfg");
        // A refused edit records nothing.
        assert_eq!(log.since("c", 5).unwrap(), ClusterDelta::default());
    }

    #[test]
    fn an_admin_state_change_reaches_the_nodes_cluster_as_topology() {
        let mut log = ChangeLog::default();
        let mut commands = setup();
        commands.push(Command::CreateCluster { name: "other".into(), haproxy_container: None });
        commands.push(Command::AddHost {
            id: "h".into(),
            cluster: "c".into(),
            address: "h".into(),
            haproxy_container: None,
        });
        commands.push(Command::AddNode {
            name: "n".into(),
            shard: "s1".into(),
            host: "h".into(),
            address: "n:80".into(),
            container: None,
        });
        commands.push(Command::SetNodeState { name: "n".into(), state: crate::state::AdminState::Drain });
        commands.push(Command::SetNodeState { name: "missing".into(), state: crate::state::AdminState::Drain });
        state_with(&commands, &mut log);
        assert!(log.since("c", 6).unwrap().topology_changed, "the drain must reach the agents");
        assert!(!log.since("other", 6).unwrap().topology_changed, "another cluster's agents have nothing to do");
        assert!(!log.since("c", 7).unwrap().topology_changed, "a refused change records nothing");
    }

    #[test]
    fn batches_record_only_what_changed() {
        let mut log = ChangeLog::default();
        let mut commands = setup();
        commands.push(Command::Bind { fqdn: fqdn("same.com"), shard: "s1".into(), cluster: None });
        commands.push(Command::BindBatch {
            cluster: "c".into(),
            entries: vec![
                (fqdn("same.com"), "s1".into()),
                (fqdn("new.com"), "s2".into()),
                (fqdn("lost.com"), "nope".into()),
            ],
        });
        state_with(&commands, &mut log);
        let delta = log.since("c", 4).unwrap();
        assert_eq!(delta.bindings.keys().collect::<Vec<_>>(), [&fqdn("new.com"), &fqdn("same.com")]);
    }

    #[test]
    fn trimmed_history_is_not_covered() {
        let mut log = ChangeLog::new(2);
        let mut commands = setup();
        for name in ["a.com", "b.com", "c.com"] {
            commands.push(Command::Bind { fqdn: fqdn(name), shard: "s1".into(), cluster: None });
        }
        state_with(&commands, &mut log);
        assert!(log.since("c", 3).is_none(), "version 4 was dropped");
        assert_eq!(log.since("c", 4).unwrap().bindings.len(), 2);
        log.reset(6);
        assert!(log.since("c", 5).is_none());
        assert!(log.since("c", 6).unwrap().bindings.is_empty());
    }

    #[test]
    fn names_are_shared_and_forgotten_with_their_last_change() {
        let mut log = ChangeLog::new(3);
        let mut commands = setup();
        commands.push(Command::Bind { fqdn: fqdn("a.com"), shard: "s1".into(), cluster: None });
        for name in ["b.com", "c.com", "d.com"] {
            commands.push(Command::Bind { fqdn: fqdn(name), shard: "s2".into(), cluster: None });
        }
        state_with(&commands, &mut log);
        assert_eq!(log.len(), 3);
        let first = &log.changes[0];
        assert!(Arc::ptr_eq(first.shard.as_ref().unwrap(), log.changes[2].shard.as_ref().unwrap()), "one s2");
        assert!(Arc::ptr_eq(&first.cluster, &log.changes[2].cluster), "one c");
        assert!(log.topology.is_empty(), "the topology changes before the oldest change went too");
        let mut names: Vec<&str> = log.names.0.iter().map(|n| &**n).collect();
        names.sort();
        assert_eq!(names, ["c", "s2"], "s1 left with the bind of a.com");
        log.reset(7);
        assert!(log.names.0.is_empty() && log.is_empty());
    }
}
