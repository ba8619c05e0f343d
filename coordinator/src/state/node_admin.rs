//! A node's administrative state and its HAProxy server id: what lets an operator take a node
//! out of service gently, and keeps consistent hashing stable while nodes come and go.

use std::fmt;

use lbfleet_proto::pb;
use serde::Deserialize;
use serde::Serialize;

use super::not_found;
use super::ObjectKind;
use super::Response;
use super::State;
use super::StateError;

/// What HAProxy should do with a node's server, applied by the agents through the runtime API.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminState {
    /// Takes new requests.
    #[default]
    Ready,
    /// Finishes the requests it has and takes no new ones.
    Drain,
    /// Out of service: no requests, no health checks.
    Maint,
}

impl AdminState {
    /// The word HAProxy's runtime API and the agents' reports use for it.
    pub fn as_str(self) -> &'static str {
        match self {
            AdminState::Ready => "ready",
            AdminState::Drain => "drain",
            AdminState::Maint => "maint",
        }
    }
}

impl fmt::Display for AdminState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<AdminState> for pb::AdminState {
    fn from(state: AdminState) -> pb::AdminState {
        match state {
            AdminState::Ready => pb::AdminState::AdminReady,
            AdminState::Drain => pb::AdminState::AdminDrain,
            AdminState::Maint => pb::AdminState::AdminMaint,
        }
    }
}

impl From<pb::AdminState> for AdminState {
    fn from(state: pb::AdminState) -> AdminState {
        match state {
            pb::AdminState::AdminReady => AdminState::Ready,
            pb::AdminState::AdminDrain => AdminState::Drain,
            pb::AdminState::AdminMaint => AdminState::Maint,
        }
    }
}

impl State {
    /// The server id a new node of `shard` gets: one above the highest its current nodes hold.
    /// Ids are never changed afterwards, so the others keep their place on the hash ring.
    pub(super) fn next_server_id(&self, shard: &str) -> u32 {
        let highest = self.nodes.values().filter(|n| n.shard == shard).map(|n| n.server_id).max().unwrap_or(0);
        highest.saturating_add(1).max(1)
    }

    /// Sets a node's admin state; the agents of its cluster apply it without a reload.
    pub(super) fn set_node_state(&mut self, name: &str, state: AdminState) -> Result<Response, StateError> {
        let node = self.nodes.get_mut(name).ok_or_else(|| not_found(ObjectKind::Node, name))?;
        let previous = std::mem::replace(&mut node.admin, state);
        Ok(Response::NodeStateSet { name: name.to_string(), shard: node.shard.clone(), state, previous })
    }
}
