//! `lbfleet coordinator restore`: a new single-node group whose state is a snapshot file.
//!
//! The data dir is seeded the way a node that installed the snapshot from a leader would hold
//! it: the state machine at the restored version, this node as the only voter, the log purged
//! up to that version. `coordinator run` on it then elects the node at once; other nodes join
//! with `lbfleet members add`, which sends them the snapshot.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::io;
use std::io::Cursor;
use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::path::PathBuf;

use lbfleet_proto::members::check_address;
use lbfleet_proto::process::merge_settings;
use lbfleet_proto::process::ConfigError;
use openraft::storage::RaftLogStorage;
use openraft::storage::RaftStateMachine;
use openraft::CommittedLeaderId;
use openraft::Membership;
use openraft::SnapshotMeta;
use openraft::StoredMembership;

use super::config::CoordinatorSettings;
use super::server::SLED_DIR;
use crate::raft::durable::DurableDb;
use crate::raft::log_store::LogStore;
use crate::raft::state_machine;
use crate::raft::state_machine::StateMachineStore;
use crate::raft::LogId;
use crate::raft::Member;
use crate::raft::NodeId;
use crate::snapshot_file;
use crate::snapshot_file::SnapshotFileError;
use crate::snapshot_file::SnapshotHeader;
use crate::state::State;

/// The restored group's versions start this far above the snapshot's. Agents keep the version
/// they last applied, from the old group; were the new group to reuse those numbers, it could
/// send an agent a delta computed against another history. Above every version the old group
/// can have reached (10^12 log entries), every agent is sent its full state instead. The
/// snapshot's version stays readable in the low digits.
pub const RESTORED_VERSION_GAP: u64 = 1_000_000_000_000;

/// Where the sled database is built before it is moved into place, so a data dir never holds
/// half a restore under the name `coordinator run` opens.
const STAGING_DIR: &str = "sled.restoring";

/// `lbfleet coordinator restore`.
#[derive(Debug, Clone, clap::Args)]
pub struct RestoreArgs {
    /// The snapshot file, as written by `lbfleet snapshot save`.
    #[arg(long)]
    pub from: PathBuf,
    /// The node's TOML config file, as for `coordinator run`: node_id, data_dir, advertise and listen are read from it (flags win).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// This node's Raft id in the new group.
    #[arg(long)]
    pub node_id: Option<NodeId>,
    /// The new group's data dir; it must be empty or not exist yet.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// The address the node will advertise when run (`coordinator run --advertise`): its member address.
    #[arg(long)]
    pub advertise: Option<String>,
    /// The node's listen address (`coordinator run --listen`): its member address when no advertise address is given.
    #[arg(long)]
    pub listen: Option<String>,
}

/// The node a restore creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreTarget {
    pub node_id: NodeId,
    pub data_dir: PathBuf,
    /// The node's member address in the new group.
    pub address: String,
}

impl RestoreArgs {
    /// Lays the flags over the config file and checks that they name a node and its address.
    pub fn resolve(&self) -> Result<RestoreTarget, ConfigError> {
        let flags = CoordinatorSettings {
            node_id: self.node_id,
            data_dir: self.data_dir.clone(),
            advertise: self.advertise.clone(),
            listen: self.listen.clone(),
            ..CoordinatorSettings::default()
        };
        let settings = merge_settings(self.config.as_deref(), flags)?;
        let node_id = settings.node_id.ok_or(ConfigError::Missing { field: "node_id" })?;
        let data_dir = settings.data_dir.ok_or(ConfigError::Missing { field: "data_dir" })?;
        let address = match (settings.advertise, settings.listen) {
            (Some(advertise), _) => advertise,
            (None, Some(listen)) => match listen.parse::<SocketAddr>() {
                Ok(bound) if !bound.ip().is_unspecified() && bound.port() != 0 => listen,
                _ => {
                    return Err(ConfigError::Invalid {
                        field: "advertise",
                        value: String::new(),
                        reason: format!(
                            "listen {listen:?} is not an address peers can use; give the advertise address"
                        ),
                    })
                }
            },
            (None, None) => return Err(ConfigError::Missing { field: "advertise" }),
        };
        check_address("advertise", &address)?;
        Ok(RestoreTarget { node_id, data_dir, address })
    }
}

/// What a restore did.
#[derive(Debug)]
pub struct Restored {
    /// What the snapshot file says about itself.
    pub header: SnapshotHeader,
    /// The new group's version of the snapshot's state.
    pub version: u64,
}

/// Why a restore was refused or failed. The data dir is left as it was found.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The snapshot file cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    /// The snapshot file is refused.
    #[error("{}: {source}", path.display())]
    File { path: PathBuf, source: SnapshotFileError },
    /// The version after the gap does not fit.
    #[error("{}: version {version} is too large to restore", path.display())]
    Version { path: PathBuf, version: u64 },
    /// The data dir already holds something: a restore never writes over data.
    #[error("data dir {} is not empty (it holds {entry:?}); restore into a new or empty directory", path.display())]
    NotEmpty { path: PathBuf, entry: String },
    /// The data dir cannot be read or created.
    #[error("data dir {}: {source}", path.display())]
    DataDir { path: PathBuf, source: io::Error },
    /// The new database could not be written.
    #[error("cannot write the restored state into {}: {source}", path.display())]
    Storage { path: PathBuf, source: Box<dyn std::error::Error + Send + Sync> },
}

/// Verifies the snapshot file `from`, then creates the node's data dir holding its state.
pub async fn restore(from: &Path, target: &RestoreTarget) -> Result<Restored, RestoreError> {
    let bytes = std::fs::read(from).map_err(|source| RestoreError::Read { path: from.into(), source })?;
    let snapshot = snapshot_file::decode(&bytes).map_err(|source| RestoreError::File { path: from.into(), source })?;
    drop(bytes);
    let version = snapshot
        .header
        .version
        .checked_add(RESTORED_VERSION_GAP)
        .ok_or(RestoreError::Version { path: from.into(), version: snapshot.header.version })?;

    let data_dir = &target.data_dir;
    let created = prepare_data_dir(data_dir)?;
    let staging = data_dir.join(STAGING_DIR);
    let seeded = seed(&staging, target, version, &snapshot.state)
        .await
        .map_err(|source| RestoreError::Storage { path: staging.clone(), source })
        .and_then(|()| {
            let data_dir_error = |source| RestoreError::DataDir { path: data_dir.clone(), source };
            std::fs::rename(&staging, data_dir.join(SLED_DIR)).map_err(data_dir_error)?;
            std::fs::File::open(data_dir).and_then(|dir| dir.sync_all()).map_err(data_dir_error)
        });
    if let Err(error) = seeded {
        let _ = std::fs::remove_dir_all(&staging);
        if created {
            let _ = std::fs::remove_dir(data_dir);
        }
        return Err(error);
    }
    Ok(Restored { header: snapshot.header, version })
}

/// Refuses a data dir that holds anything; creates a missing one. Whether it was created.
fn prepare_data_dir(path: &Path) -> Result<bool, RestoreError> {
    let error = |source| RestoreError::DataDir { path: path.into(), source };
    match std::fs::read_dir(path) {
        Ok(mut entries) => match entries.next() {
            None => Ok(false),
            Some(Ok(entry)) => {
                Err(RestoreError::NotEmpty { path: path.into(), entry: entry.file_name().to_string_lossy().into() })
            }
            Some(Err(source)) => Err(error(source)),
        },
        Err(source) if source.kind() == io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(path).map_err(error)?;
            Ok(true)
        }
        Err(source) => Err(error(source)),
    }
}

/// Writes a sled database in `dir` whose state machine holds `state` at `version`, with the
/// target as the only voter, and whose log starts after it.
async fn seed(
    dir: &Path,
    target: &RestoreTarget,
    version: u64,
    state: &State,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let db = DurableDb::open(dir)?;
    let mut log = LogStore::open(&db)?;
    let mut machine = StateMachineStore::open(&db)?;
    // The leader id openraft gives the entry `initialize` writes: no term has been elected yet,
    // so the node's first election starts the new group's term 1.
    let log_id = LogId::new(CommittedLeaderId::default(), version);
    let voters = BTreeSet::from([target.node_id]);
    let nodes = BTreeMap::from([(target.node_id, Member::new(target.address.clone()))]);
    let meta = SnapshotMeta {
        last_log_id: Some(log_id),
        last_membership: StoredMembership::new(Some(log_id), Membership::new(vec![voters], nodes)),
        snapshot_id: format!("restored-{version}"),
    };
    machine.install_snapshot(&meta, Box::new(Cursor::new(state_machine::encode_state(state)?))).await?;
    log.purge(log_id).await?;
    log.save_committed(Some(log_id)).await?;
    db.sync()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> RestoreArgs {
        RestoreArgs {
            from: "s.lbfs".into(),
            config: None,
            node_id: Some(4),
            data_dir: Some("/d".into()),
            advertise: None,
            listen: Some("10.0.0.4:7400".into()),
        }
    }

    #[test]
    fn the_member_address_is_advertise_else_a_usable_listen_address() {
        let target = args().resolve().unwrap();
        assert_eq!(target, RestoreTarget { node_id: 4, data_dir: "/d".into(), address: "10.0.0.4:7400".into() });
        let advertised = RestoreArgs { advertise: Some("c4.example:7400".into()), ..args() };
        assert_eq!(advertised.resolve().unwrap().address, "c4.example:7400");
        let error = RestoreArgs { listen: Some("0.0.0.0:7400".into()), ..args() }.resolve().unwrap_err();
        assert!(error.to_string().contains("give the advertise address"), "{error}");
        let error = RestoreArgs { listen: None, ..args() }.resolve().unwrap_err();
        assert_eq!(error.to_string(), "missing setting advertise (set it in the config file or as --advertise)");
        let error = RestoreArgs { node_id: None, ..args() }.resolve().unwrap_err();
        assert!(error.to_string().contains("--node-id"), "{error}");
    }

    #[test]
    fn the_config_file_of_coordinator_run_serves() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("coordinator.toml");
        std::fs::write(
            &config,
            "node_id = 2\nlisten = \"0.0.0.0:7400\"\nadvertise = \"c2:7400\"\ndata_dir = \"/var/lib/lbfleet\"\n\
             tls_dir = \"/etc/lbfleet/tls\"\nbootstrap = [\"1=c1:7400\", \"2=c2:7400\"]\n",
        )
        .unwrap();
        let from_file = RestoreArgs {
            from: "s.lbfs".into(),
            config: Some(config),
            node_id: None,
            data_dir: None,
            advertise: None,
            listen: None,
        };
        let target = from_file.clone().resolve().unwrap();
        assert_eq!(
            target,
            RestoreTarget { node_id: 2, data_dir: "/var/lib/lbfleet".into(), address: "c2:7400".into() }
        );
        let flagged = RestoreArgs { data_dir: Some("/srv/new".into()), ..from_file };
        assert_eq!(flagged.resolve().unwrap().data_dir, PathBuf::from("/srv/new"));
    }

    fn target(data_dir: &Path) -> RestoreTarget {
        RestoreTarget { node_id: 1, data_dir: data_dir.into(), address: "127.0.0.1:7400".into() }
    }

    #[tokio::test]
    async fn a_data_dir_that_holds_anything_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("s.lbfs");
        std::fs::write(&file, snapshot_file::encode(&State::default(), origin()).unwrap().seal()).unwrap();
        let data_dir = dir.path().join("data");
        std::fs::create_dir(&data_dir).unwrap();
        std::fs::write(data_dir.join("keep"), "x").unwrap();
        let error = restore(&file, &target(&data_dir)).await.unwrap_err();
        assert!(matches!(error, RestoreError::NotEmpty { .. }), "{error}");
        assert!(error.to_string().contains("\"keep\""), "{error}");
        let names: Vec<_> = std::fs::read_dir(&data_dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["keep"]);
    }

    #[tokio::test]
    async fn a_bad_file_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("s.lbfs");
        let mut bytes = snapshot_file::encode(&State::default(), origin()).unwrap().seal();
        bytes.truncate(bytes.len() - 1);
        std::fs::write(&file, bytes).unwrap();
        let data_dir = dir.path().join("data");
        let error = restore(&file, &target(&data_dir)).await.unwrap_err();
        assert!(error.to_string().contains("truncated snapshot"), "{error}");
        assert!(!data_dir.exists());
    }

    #[tokio::test]
    async fn the_data_dir_opens_at_the_restored_version_with_one_voter() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("s.lbfs");
        let mut state = State::default();
        state.apply(&crate::state::Command::CreateCluster { name: "eu".into(), haproxy_container: None }).unwrap();
        std::fs::write(&file, snapshot_file::encode(&state, origin()).unwrap().seal()).unwrap();
        let data_dir = dir.path().join("data");
        let restored = restore(&file, &target(&data_dir)).await.unwrap();
        assert_eq!(restored.version, 41 + RESTORED_VERSION_GAP);
        let names: Vec<_> = std::fs::read_dir(&data_dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, [SLED_DIR]);

        // sled lets go of its lock once its flusher thread notices the database was dropped.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let db = loop {
            match DurableDb::open(&data_dir.join(SLED_DIR)) {
                Ok(db) => break db,
                Err(error) if std::time::Instant::now() > deadline => panic!("{error}"),
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            }
        };
        let mut machine = StateMachineStore::open(&db).unwrap();
        let (applied, membership) = machine.applied_state().await.unwrap();
        assert_eq!(applied.map(|id| id.index), Some(restored.version));
        assert_eq!(membership.membership().voter_ids().collect::<Vec<_>>(), [1]);
        assert_eq!(machine.shared().read().state, state);
        let mut log = LogStore::open(&db).unwrap();
        let log_state = log.get_log_state().await.unwrap();
        assert_eq!(log_state.last_purged_log_id.map(|id| id.index), Some(restored.version));
    }

    fn origin() -> snapshot_file::Origin {
        snapshot_file::Origin { node_id: 1, version: 41, term: 2, members: Vec::new() }
    }
}
