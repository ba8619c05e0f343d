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
    /// Opens the snapshot tree in `db` and restores the last snapshot, if any.
    pub fn open(db: &DurableDb) -> Result<StateMachineStore, StorageError> {
        let snapshots =
            db.db().open_tree("snapshots").map_err(|e| io_error(ErrorSubject::Store, ErrorVerb::Read, &e))?;
        let (version, _) = watch::channel(0);
        let store = StateMachineStore {
            shared: Arc::new(SharedState {
                applied: RwLock::new(Applied::default()),
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
        let state: State = codec::decode(&snapshot.data).map_err(|e| io_error(subject, ErrorVerb::Read, &e))?;
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
            let data = codec::encode(&applied.state)
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
