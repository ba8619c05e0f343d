//! The Raft log, vote and committed index, durable in sled.
//!
//! Every write that openraft must be able to rely on after a crash (appended entries,
//! the vote, the purge marker) is flushed to disk before it is acknowledged.

use std::fmt::Debug;
use std::ops::Bound;
use std::ops::RangeBounds;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use openraft::storage::LogFlushed;
use openraft::storage::LogState;
use openraft::storage::RaftLogStorage;
use openraft::AnyError;
use openraft::ErrorSubject;
use openraft::ErrorVerb;
use openraft::OptionalSend;
use openraft::RaftLogReader;
use openraft::StorageIOError;
use openraft::Vote;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::codec;
use super::durable::DurableDb;
use super::Entry;
use super::LogId;
use super::NodeId;
use super::StorageError;
use super::TypeConfig;

const VOTE: &[u8] = b"vote";
const COMMITTED: &[u8] = b"committed";
const LAST_PURGED: &[u8] = b"last_purged";

/// sled-backed log storage; clones share the same trees.
#[derive(Clone)]
pub struct LogStore {
    db: DurableDb,
    log: sled::Tree,
    meta: sled::Tree,
    committed: Arc<AtomicU64>,
}

impl LogStore {
    /// Opens (or creates) the log trees in `db`.
    pub fn open(db: &DurableDb) -> Result<LogStore, sled::Error> {
        Ok(LogStore {
            db: db.clone(),
            log: db.db().open_tree("raft_log")?,
            meta: db.db().open_tree("raft_meta")?,
            committed: Arc::default(),
        })
    }

    /// The last committed index openraft reported, for status displays.
    pub fn committed_index(&self) -> Arc<AtomicU64> {
        self.committed.clone()
    }

    fn flush(&self, subject: ErrorSubject<NodeId>, verb: ErrorVerb) -> Result<(), StorageError> {
        self.db.sync().map_err(|e| io_error(subject, verb, &e))
    }

    fn read_meta<T: DeserializeOwned>(
        &self,
        key: &[u8],
        subject: ErrorSubject<NodeId>,
    ) -> Result<Option<T>, StorageError> {
        let Some(bytes) = self.meta.get(key).map_err(|e| io_error(subject.clone(), ErrorVerb::Read, &e))? else {
            return Ok(None);
        };
        codec::decode(&bytes).map(Some).map_err(|e| io_error(subject, ErrorVerb::Read, &e))
    }

    fn write_meta<T: Serialize>(
        &self,
        key: &[u8],
        value: &T,
        subject: ErrorSubject<NodeId>,
    ) -> Result<(), StorageError> {
        let bytes = codec::encode(value).map_err(|e| io_error(subject.clone(), ErrorVerb::Write, &e))?;
        self.meta.insert(key, bytes).map_err(|e| io_error(subject, ErrorVerb::Write, &e))?;
        Ok(())
    }

    /// Removes every entry whose index is in `range`.
    fn remove_range(&self, range: impl RangeBounds<[u8; 8]>) -> Result<(), StorageError> {
        let mut batch = sled::Batch::default();
        for key in self.log.range(range).keys() {
            batch.remove(key.map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Read, &e))?);
        }
        self.log.apply_batch(batch).map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Delete, &e))?;
        Ok(())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(i) => Bound::Included(i.to_be_bytes()),
            Bound::Excluded(i) => Bound::Excluded(i.to_be_bytes()),
            Bound::Unbounded => Bound::Unbounded,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => Bound::Included(i.to_be_bytes()),
            Bound::Excluded(i) => Bound::Excluded(i.to_be_bytes()),
            Bound::Unbounded => Bound::Unbounded,
        };
        let mut entries = Vec::new();
        for item in self.log.range((start, end)) {
            let (_, bytes) = item.map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Read, &e))?;
            entries.push(codec::decode(&bytes).map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Read, &e))?);
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id: Option<LogId> = self.read_meta(LAST_PURGED, ErrorSubject::Logs)?;
        let last = match self.log.last().map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Read, &e))? {
            Some((_, bytes)) => {
                let entry: Entry =
                    codec::decode(&bytes).map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Read, &e))?;
                Some(entry.log_id)
            }
            None => None,
        };
        Ok(LogState { last_purged_log_id, last_log_id: last.or(last_purged_log_id) })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        self.write_meta(VOTE, vote, ErrorSubject::Vote)?;
        self.flush(ErrorSubject::Vote, ErrorVerb::Write)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        self.read_meta(VOTE, ErrorSubject::Vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.committed.store(committed.map(|c| c.index).unwrap_or(0), Ordering::Relaxed);
        // Not flushed on its own: losing it only means re-applying committed entries at start-up.
        self.write_meta(COMMITTED, &committed, ErrorSubject::Store)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.read_meta::<Option<LogId>>(COMMITTED, ErrorSubject::Store)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = sled::Batch::default();
        for entry in entries {
            let bytes = codec::encode(&entry).map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Write, &e))?;
            batch.insert(&entry.log_id.index.to_be_bytes(), bytes);
        }
        self.log.apply_batch(batch).map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Write, &e))?;
        // Durable before openraft may count these entries towards a quorum.
        callback.log_io_completed(self.db.sync());
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.remove_range(log_id.index.to_be_bytes()..)?;
        self.flush(ErrorSubject::Logs, ErrorVerb::Delete)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // The marker first: a crash in between leaves extra entries, never a hole.
        self.write_meta(LAST_PURGED, &log_id, ErrorSubject::Logs)?;
        self.flush(ErrorSubject::Logs, ErrorVerb::Write)?;
        self.remove_range(..=log_id.index.to_be_bytes())
    }
}

/// Wraps a storage failure for openraft, which stops the node on it.
pub(crate) fn io_error(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
    error: &(impl std::error::Error + 'static),
) -> StorageError {
    StorageIOError::new(subject, verb, AnyError::new(error)).into()
}

#[cfg(test)]
mod tests {
    use openraft::testing::StoreBuilder;
    use openraft::testing::Suite;

    use super::*;
    use crate::raft::state_machine::StateMachineStore;

    struct SledBuilder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for SledBuilder {
        async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError> {
            let dir = tempfile::tempdir().expect("temp dir");
            let db = DurableDb::open(dir.path()).expect("open sled");
            let log = LogStore::open(&db).expect("log trees");
            let sm = StateMachineStore::open(&db).expect("state machine");
            Ok((dir, log, sm))
        }
    }

    /// openraft's own conformance suite for storage implementations.
    #[test]
    fn openraft_storage_suite() -> Result<(), StorageError> {
        Suite::test_all(SledBuilder)
    }
}
