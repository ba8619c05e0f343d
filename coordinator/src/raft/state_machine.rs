//! The openraft state machine: a thin wrapper that calls `State::apply` and persists snapshots in sled.
//!
//! The applied state lives in memory; on start-up it is restored from the last snapshot and
//! openraft re-applies the committed log entries after it.

use std::io::Cursor;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::RwLock;
use std::sync::RwLockReadGuard;

use openraft::storage::RaftStateMachine;
use openraft::storage::Snapshot;
use openraft::EntryPayload;
use openraft::ErrorSubject;
use openraft::ErrorVerb;
use openraft::OptionalSend;
use openraft::RaftSnapshotBuilder;
use openraft::SnapshotMeta;
use openraft::StoredMembership;
use serde::Deserialize;
use serde::Serialize;
use tokio::sync::watch;

use super::codec;
use super::durable::DurableDb;
use super::log_store::io_error;
use super::CommandResult;
use super::Entry;
use super::LogId;
use super::Member;
use super::NodeId;
use super::StorageError;
use super::TypeConfig;
use crate::state::changelog::ChangeLog;
use crate::state::State;

const CURRENT_SNAPSHOT: &[u8] = b"current";
/// The first bytes of a Raft snapshot's data, before its format number.
const SNAPSHOT_MAGIC: &[u8; 4] = b"LBRS";
/// How a Raft snapshot's data encodes the state. Format 1 (no magic, no history) predates the
/// replicated history; a state encodes differently with every new field, so each is a new format.
pub const SNAPSHOT_FORMAT: u32 = 2;

/// Why a Raft snapshot's data is not a state this release reads.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotDataError {
    /// Data of a release that kept no history (format 1), or not a snapshot at all.
    #[error(
        "Raft snapshot in format 1 or unknown (lbfleet {} reads format {SNAPSHOT_FORMAT}): restore the group from a \
         `snapshot save` file of this release, or give this node an empty data dir",
        env!("CARGO_PKG_VERSION")
    )]
    Unversioned,
    /// Data in a format this release does not read.
    #[error("Raft snapshot format {found} is not readable by lbfleet {} (it reads format {SNAPSHOT_FORMAT})", env!("CARGO_PKG_VERSION"))]
    UnsupportedFormat { found: u32 },
    /// The format is right but the state does not decode.
    #[error("Raft snapshot state does not decode: {0}")]
    Decode(#[source] postcard::Error),
}

/// A state as Raft snapshots carry it: magic, format (big-endian), postcard.
pub fn encode_state(state: &State) -> Result<Vec<u8>, postcard::Error> {
    let mut bytes = SNAPSHOT_MAGIC.to_vec();
    bytes.extend_from_slice(&SNAPSHOT_FORMAT.to_be_bytes());
    postcard::to_extend(state, bytes)
}

/// Reads what [`encode_state`] wrote, refusing other formats by name.
pub fn decode_state(bytes: &[u8]) -> Result<State, SnapshotDataError> {
    let Some(rest) = bytes.strip_prefix(SNAPSHOT_MAGIC.as_slice()) else {
        return Err(SnapshotDataError::Unversioned);
    };
    let (format, payload) = rest.split_at_checked(4).ok_or(SnapshotDataError::Unversioned)?;
    let format = u32::from_be_bytes(format.try_into().unwrap_or_default());
    if format != SNAPSHOT_FORMAT {
        return Err(SnapshotDataError::UnsupportedFormat { found: format });
    }
    codec::decode(payload).map_err(SnapshotDataError::Decode)
}

/// The applied state and the log position it reflects.
#[derive(Debug, Default)]
pub struct Applied {
    pub state: State,
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership<NodeId, Member>,
    /// Recent changes, for agent deltas.
    pub changes: ChangeLog,
}

impl Applied {
    /// The state's version: the index of the last applied log entry.
    pub fn version(&self) -> u64 {
        self.last_applied.map(|id| id.index).unwrap_or(0)
    }
}

/// Read access to the applied state for the API, and a watch on its version.
pub struct SharedState {
    applied: RwLock<Applied>,
    version: watch::Sender<u64>,
    /// Snapshots this node built since it started (not those it installed), for the metrics.
    snapshots_built: AtomicU64,
}

impl SharedState {
    /// A read guard on the applied state; hold it briefly.
    pub fn read(&self) -> RwLockReadGuard<'_, Applied> {
        self.applied.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A shared state holding `applied`, without storage behind it.
    #[cfg(test)]
    pub(crate) fn for_tests(applied: Applied) -> Arc<SharedState> {
        let (version, _) = watch::channel(applied.version());
        Arc::new(SharedState { applied: RwLock::new(applied), version, snapshots_built: AtomicU64::new(0) })
    }

    /// Snapshots this node built since it started.
    pub fn snapshots_built(&self) -> u64 {
        self.snapshots_built.load(Ordering::Relaxed)
    }

    /// Notifies on every newly applied version.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Applied> {
        self.applied.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, Member>,
    data: Vec<u8>,
}

/// openraft's view of the state machine; clones share the state.
#[derive(Clone)]
pub struct StateMachineStore {
    shared: Arc<SharedState>,
    db: DurableDb,
    snapshots: sled::Tree,
}

impl StateMachineStore {
    /// Opens the snapshot tree in `db` and restores the last snapshot, if any; the agents'
    /// change log keeps its default capacity.
    pub fn open(db: &DurableDb) -> Result<StateMachineStore, StorageError> {
        StateMachineStore::open_with_change_log(db, crate::state::changelog::DEFAULT_CAPACITY)
    }

    /// [`StateMachineStore::open`] with a change log retaining `change_log_capacity` binding changes.
    pub fn open_with_change_log(db: &DurableDb, change_log_capacity: usize) -> Result<StateMachineStore, StorageError> {
        let snapshots =
            db.db().open_tree("snapshots").map_err(|e| io_error(ErrorSubject::Store, ErrorVerb::Read, &e))?;
        let (version, _) = watch::channel(0);
        let applied = Applied { changes: ChangeLog::new(change_log_capacity), ..Applied::default() };
        let store = StateMachineStore {
            shared: Arc::new(SharedState {
                applied: RwLock::new(applied),
                version,
                snapshots_built: AtomicU64::new(0),
            }),
            db: db.clone(),
            snapshots,
        };
        if let Some(snapshot) = store.stored_snapshot()? {
            store.restore(&snapshot)?;
        }
        Ok(store)
    }

    /// The handle the API reads from.
    pub fn shared(&self) -> Arc<SharedState> {
        self.shared.clone()
    }

    fn stored_snapshot(&self) -> Result<Option<StoredSnapshot>, StorageError> {
        let subject = ErrorSubject::Snapshot(None);
        let Some(bytes) =
            self.snapshots.get(CURRENT_SNAPSHOT).map_err(|e| io_error(subject.clone(), ErrorVerb::Read, &e))?
        else {
            return Ok(None);
        };
        codec::decode(&bytes).map(Some).map_err(|e| io_error(subject, ErrorVerb::Read, &e))
    }

    fn save_snapshot(&self, snapshot: &StoredSnapshot) -> Result<(), StorageError> {
        let subject = ErrorSubject::Snapshot(Some(snapshot.meta.signature()));
        let bytes = codec::encode(snapshot).map_err(|e| io_error(subject.clone(), ErrorVerb::Write, &e))?;
        self.snapshots.insert(CURRENT_SNAPSHOT, bytes).map_err(|e| io_error(subject.clone(), ErrorVerb::Write, &e))?;
        self.db.sync().map_err(|e| io_error(subject, ErrorVerb::Write, &e))?;
        Ok(())
    }

    fn restore(&self, snapshot: &StoredSnapshot) -> Result<(), StorageError> {
        let subject = ErrorSubject::Snapshot(Some(snapshot.meta.signature()));
        let state = decode_state(&snapshot.data).map_err(|e| io_error(subject, ErrorVerb::Read, &e))?;
        let mut applied = self.shared.write();
        applied.state = state;
        applied.last_applied = snapshot.meta.last_log_id;
        applied.membership = snapshot.meta.last_membership.clone();
        let version = applied.version();
        applied.changes.reset(version);
        drop(applied);
        self.shared.version.send_replace(version);
        Ok(())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let (meta, data) = {
            let applied = self.shared.read();
            let data = encode_state(&applied.state)
                .map_err(|e| io_error(ErrorSubject::Snapshot(None), ErrorVerb::Write, &e))?;
            let snapshot_id = match applied.last_applied {
                Some(id) => format!("{}-{}", id.leader_id, id.index),
                None => "empty".to_string(),
            };
            let meta = SnapshotMeta {
                last_log_id: applied.last_applied,
                last_membership: applied.membership.clone(),
                snapshot_id,
            };
            (meta, data)
        };
        let stored = StoredSnapshot { meta: meta.clone(), data };
        self.save_snapshot(&stored)?;
        self.shared.snapshots_built.fetch_add(1, Ordering::Relaxed);
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(stored.data)) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = StateMachineStore;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership<NodeId, Member>), StorageError> {
        let applied = self.shared.read();
        Ok((applied.last_applied, applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResult>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut results = Vec::new();
        let version = {
            let mut applied = self.shared.write();
            for entry in entries {
                applied.last_applied = Some(entry.log_id);
                let result = match entry.payload {
                    EntryPayload::Blank => Ok(crate::state::Response::Noop),
                    EntryPayload::Normal(ref command) => {
                        let Applied { state, changes, .. } = &mut *applied;
                        // Versions are log indexes: the state before this entry is at the one before it.
                        let result = state.apply_at(command, entry.log_id.index.saturating_sub(1));
                        if let Ok(response) = &result {
                            changes.record(entry.log_id.index, state, command, response);
                        }
                        result
                    }
                    EntryPayload::Membership(membership) => {
                        applied.membership = StoredMembership::new(Some(entry.log_id), membership);
                        Ok(crate::state::Response::Noop)
                    }
                };
                results.push(result);
            }
            applied.version()
        };
        self.shared.version.send_replace(version);
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Member>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let stored = StoredSnapshot { meta: meta.clone(), data: snapshot.into_inner() };
        self.restore(&stored)?;
        self.save_snapshot(&stored)
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        Ok(self
            .stored_snapshot()?
            .map(|stored| Snapshot { meta: stored.meta, snapshot: Box::new(Cursor::new(stored.data)) }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Command;

    #[test]
    fn snapshot_data_carries_the_history_and_names_its_format() {
        let mut state = State::default();
        let create = Command::CreateCluster { name: "eu".into(), haproxy_container: None };
        let by = Command::By { by: "admin:alice".into(), at_unix_ms: 42, command: Box::new(create) };
        state.apply_at(&by, 0).unwrap();
        let bytes = encode_state(&state).unwrap();
        let decoded = decode_state(&bytes).unwrap();
        assert_eq!(decoded, state);
        assert_eq!(&*decoded.history.records().next().unwrap().by, "admin:alice");

        // Format 1 was the bare state, without magic or history.
        let old = codec::encode(&state.clusters).unwrap();
        let error = decode_state(&old).unwrap_err();
        assert!(matches!(error, SnapshotDataError::Unversioned), "{error}");
        assert!(error.to_string().starts_with("Raft snapshot in format 1 or unknown"), "{error}");
        let mut future = bytes.clone();
        future[4..8].copy_from_slice(&3u32.to_be_bytes());
        assert!(matches!(decode_state(&future).unwrap_err(), SnapshotDataError::UnsupportedFormat { found: 3 }));
        assert!(matches!(decode_state(&bytes[..bytes.len() - 1]).unwrap_err(), SnapshotDataError::Decode(_)));
    }

    /// A cluster and shard (entries 1-2), then three binds (3-5), applied to a new store.
    async fn three_binds(change_log_capacity: Option<usize>) -> (tempfile::TempDir, StateMachineStore) {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = DurableDb::open(dir.path()).expect("open sled");
        let mut store = match change_log_capacity {
            Some(capacity) => StateMachineStore::open_with_change_log(&db, capacity),
            None => StateMachineStore::open(&db),
        }
        .expect("state machine");
        let mut commands = vec![
            Command::CreateCluster { name: "c".into(), haproxy_container: None },
            Command::CreateShard { name: "s".into(), cluster: "c".into() },
        ];
        for name in ["a.com", "b.com", "c.com"] {
            let fqdn = lbfleet_proto::Fqdn::parse(name).unwrap();
            commands.push(Command::Bind { fqdn, shard: "s".into(), cluster: None });
        }
        let leader = openraft::CommittedLeaderId::new(1, 1);
        let entries = commands.into_iter().enumerate().map(|(i, command)| Entry {
            log_id: LogId::new(leader, i as u64 + 1),
            payload: EntryPayload::Normal(command),
        });
        store.apply(entries).await.expect("applied");
        (dir, store)
    }

    #[tokio::test]
    async fn the_change_log_capacity_reaches_the_applied_state() {
        let (_dir, store) = three_binds(Some(2)).await;
        {
            let shared = store.shared();
            let applied = shared.read();
            assert_eq!(applied.version(), 5);
            assert_eq!(applied.changes.capacity(), 2);
            // Two changes kept: the bind at 3 was dropped, so an agent at 2 needs the full state.
            assert!(applied.changes.since("c", 2).is_none(), "an agent behind the log gets the full state");
            assert_eq!(applied.changes.since("c", 3).expect("covered").bindings.len(), 2);
        }

        let (_dir, store) = three_binds(None).await;
        assert_eq!(store.shared().read().changes.since("c", 2).expect("the default keeps all").bindings.len(), 3);
    }
}
