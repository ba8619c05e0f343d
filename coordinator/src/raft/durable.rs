//! The sled database with a flush that reaches the disk.
//!
//! sled 0.34 makes its writes durable with `sync_file_range`, which neither flushes the
//! drive's write cache nor file metadata. Acknowledged Raft state must survive power loss,
//! so every flush is followed by `fdatasync` on sled's data file (any descriptor of the
//! file syncs all of its dirty pages).

use std::fs::File;
use std::io;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;

/// A sled database and a handle on its data file for `fdatasync`.
#[derive(Clone)]
pub struct DurableDb {
    db: sled::Db,
    data_file: Arc<File>,
}

/// Why the database could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// sled refused to open its directory.
    #[error("sled: {source}")]
    Sled {
        /// sled's error.
        #[from]
        source: sled::Error,
    },
    /// sled's data file cannot be opened for `fdatasync`.
    #[error("cannot open sled's data file {}: {source}", path.display())]
    DataFile {
        /// The data file.
        path: PathBuf,
        /// The open error.
        source: io::Error,
    },
}

impl DurableDb {
    /// Opens (or creates) the database in `dir`, with a bounded page cache.
    pub fn open(dir: &Path) -> Result<DurableDb, OpenError> {
        let db = sled::Config::new().path(dir).cache_capacity(64 * 1024 * 1024).open()?;
        let path = dir.join("db");
        let data_file = File::open(&path).map_err(|source| OpenError::DataFile { path, source })?;
        Ok(DurableDb { db, data_file: Arc::new(data_file) })
    }

    /// The sled database.
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    /// Writes every pending change to stable storage. Blocking, but short: it is the
    /// commit point of every Raft write and must not wait behind other tasks.
    pub fn sync(&self) -> io::Result<()> {
        self.db.flush().map_err(io::Error::other)?;
        self.data_file.sync_data()
    }
}
