//! openraft wiring: type config, sled-backed storage and the gRPC transport.

pub mod codec;
pub mod durable;
pub mod log_store;
pub mod network;
pub mod service;
pub mod state_machine;

use std::io::Cursor;

use crate::state::Command;
use crate::state::Response;
use crate::state::StateError;

/// Raft node ids are small integers chosen by the operator.
pub type NodeId = u64;
/// A member's advertised gRPC address.
pub type Member = openraft::BasicNode;
/// The result of applying one command, returned to the client that wrote it.
pub type CommandResult = Result<Response, StateError>;

openraft::declare_raft_types!(
    /// openraft type configuration of the coordinator group.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = NodeId,
        Node = Member,
        SnapshotData = Cursor<Vec<u8>>,
);

/// The Raft handle of this node.
pub type Raft = openraft::Raft<TypeConfig>;
/// A log id of this group.
pub type LogId = openraft::LogId<NodeId>;
/// A log entry of this group.
pub type Entry = openraft::Entry<TypeConfig>;
/// Storage error of this group.
pub type StorageError = openraft::StorageError<NodeId>;
